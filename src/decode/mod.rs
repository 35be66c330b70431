//! From decoded queries to objects: DINOv's referring selection (predicted IoU, box NMS, softmax over
//! match scores, top-1) and the video tracker that keeps each object's memory. Masks are `post/`.

pub mod referring;
pub mod track;

pub use track::{FrameObjects, ObjectResult, Tracker};
