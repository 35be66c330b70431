//! One labeled image as the COCO sink and the auto-labeling manifest keep it: enough to write the COCO
//! JSON again, in the same order and with the same ids, whether a run was resumed or not.

use serde::{Deserialize, Serialize};

use super::FrameRecord;
use crate::post::MaskRle;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Index in the source (the COCO image id is `index + 1`).
    pub index: u64,
    pub name: String,
    /// The image file relative to the source folder (the frame name for videos).
    pub file: String,
    pub width: u32,
    pub height: u32,
    pub annotations: Vec<AnnotationRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotationRecord {
    pub category_id: u32,
    pub segmentation: MaskRle,
    pub area: u64,
    /// COCO `[x, y, width, height]` in pixels.
    pub bbox: [u32; 4],
    /// Rounded to 4 decimals, as written.
    pub score: f64,
}

impl ImageRecord {
    /// The record of a finished frame: one annotation per non-empty object mask.
    pub fn of(f: &FrameRecord<'_>) -> Self {
        let annotations = f
            .result
            .objects
            .iter()
            .filter_map(|o| {
                let b = o.box_xyxy?;
                Some(AnnotationRecord {
                    category_id: o.category,
                    segmentation: MaskRle::encode_in(&o.mask, b),
                    area: o.area,
                    bbox: [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    score: round4(o.score),
                })
            })
            .collect();
        ImageRecord {
            index: f.index,
            name: f.name.to_string(),
            file: f.file.unwrap_or(f.name).to_string(),
            width: f.result.width,
            height: f.result.height,
            annotations,
        }
    }
}

pub fn round4(v: f32) -> f64 {
    (v as f64 * 1e4).round() / 1e4
}
