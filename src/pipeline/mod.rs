//! The dataflow: source -> model (encoder + decoder, parallel workers, batches) -> track (prompt memory
//! lookup, matching, masks; in frame order) -> sinks, joined by bounded queues. Stats and the report too.

pub mod run;
pub mod stats;

pub use run::{run, RunOptions};
pub use stats::RunReport;
