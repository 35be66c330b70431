//! Visual prompts (masks, boxes, points, scribbles on a reference frame), their file format, and the
//! per-object video memory. Running the prompt encoder is `model/`; matching is `decode/`.

pub mod file;
pub mod memory;
pub mod raster;

pub use file::{ObjectPrompt, PromptFile};
pub use memory::ObjectMemory;
