//! Built-in evaluation against ground truth: DAVIS J&F and COCO mask AP of written outputs, and the
//! model's masks from one box or click per instance (`prompts`).

pub mod coco;
pub mod davis;
pub mod prompts;
