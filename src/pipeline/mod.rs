//! The dataflow: source -> model (encoder + decoder, parallel workers, batches) -> job step (in the
//! workers for a stateless job, else in frame order) -> sinks, joined by bounded queues and supervised as
//! one set. `job.rs` is the seam a new job plugs into; stats and the report live in `stats.rs`.

pub mod job;
pub mod run;
mod stages;
pub mod stats;
mod supervise;
mod watch;

pub use job::{FrameInput, FrameStep, Job};
pub use run::{run, Pipeline, RunOptions};
pub use stats::RunReport;
