//! From decoded queries to objects: DINOv's referring selection (predicted IoU, box NMS, softmax over
//! match scores, top-1), reference masks of prompts decoded where they are, the video tracker that keeps
//! each object's memory, and generic in-context labeling against a prompt bank. Masks are `post/`.

pub mod focus;
pub mod generic;
pub mod proposals;
pub mod readout;
pub mod reference;
pub mod referring;
pub mod target;
pub mod track;

pub use generic::Labeler;
pub use track::{FrameObjects, ObjectResult, Tracker};
