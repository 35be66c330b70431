#![warn(missing_docs)]
//! vprompt: visual in-context prompted segmentation (the DINOv method) as a streaming pipeline.
//!
//! A frame goes `source` -> `model` (letterbox, encoder, decoder) -> `decode` (prompt memory lookup,
//! matching) -> `post` (masks, NMS, RLE) -> `sink`. `spec` reads the YAML that wires it; `pipeline` runs it.

pub mod bank;
#[doc(hidden)]
/// The command line (the `vprompt` binary's; not part of the library's API).
pub mod cli;
pub mod coco;
pub mod decode;
pub mod error;
#[doc(hidden)]
/// Evaluation against ground truth (the CLI's `eval`; public for the fuzz tests, not part of the API).
pub mod eval;
pub mod model;
pub mod palette;
pub mod pipeline;
pub mod post;
pub mod prompt;
pub mod sink;
pub mod source;
pub mod spec;

pub use error::{Error, Result};
pub use pipeline::{run, Job, Pipeline, RunOptions, RunReport};
pub use spec::PipelineSpec;
