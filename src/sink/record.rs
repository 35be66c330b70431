//! One labeled image as the COCO sink and the auto-labeling manifest keep it: enough to write the COCO
//! JSON again, in the same order and with the same ids, whether a run was resumed or not.

use serde::{Deserialize, Serialize};

use super::FrameRecord;
use crate::post::MaskRle;

/// One image's COCO entry and its annotations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Index in the source (the COCO image id is `index + 1`).
    pub index: u64,
    /// The frame's name: the file stem for images and frame folders, the zero-padded index for videos.
    pub name: String,
    /// The image file relative to the source folder (the frame name for videos).
    pub file: String,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// One annotation per object with a non-empty mask.
    pub annotations: Vec<AnnotationRecord>,
}

/// One COCO annotation: an object's mask, box and score on an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotationRecord {
    /// The object id (propagate) or bank class id (autolabel).
    pub category_id: u32,
    /// The mask as compressed RLE.
    pub segmentation: MaskRle,
    /// Pixels in the mask.
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

/// `v` rounded to 4 decimals, as scores are written.
pub fn round4(v: f32) -> f64 {
    (v as f64 * 1e4).round() / 1e4
}
