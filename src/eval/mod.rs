//! Built-in evaluation of written outputs against ground truth: DAVIS J&F and COCO mask AP.

pub mod coco;
pub mod davis;
