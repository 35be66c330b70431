//! Built-in evaluation of written outputs against ground truth (DAVIS J&F).

pub mod davis;
