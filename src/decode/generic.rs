//! Generic in-context segmentation for the auto-labeling job: every generic query picks its best class
//! from the bank (DINOv's Cg), scored `sigmoid(logit_scale * cos + logit_bias)` times the query's predicted
//! IoU; then a score threshold, per-class box NMS, a cap per image, and masks for the kept queries only.

use std::sync::Arc;

use super::referring::{cxcywh_to_xyxy, dot};
use super::track::{FrameObjects, ObjectResult};
use crate::bank::ClassEmbedding;
use crate::error::{Error, Result};
use crate::model::{Features, Letterbox, Model, Queries};
use crate::post::mask::frame_mask;
use crate::post::nms::nms;
use crate::spec::{GenericScore, JobSpec};

/// Most instances per image (one palette index each in label images).
pub const MAX_DETECTIONS: usize = 255;

/// Labels independent images with the classes of a bank.
pub struct Labeler {
    model: Arc<Model>,
    classes: Vec<ClassEmbedding>,
    job: JobSpec,
}

/// A kept query: index, class position, score.
struct Pick {
    query: usize,
    class: usize,
    score: f32,
}

impl Labeler {
    pub fn new(model: Arc<Model>, classes: Vec<ClassEmbedding>, job: JobSpec) -> Self {
        Labeler {
            model,
            classes,
            job,
        }
    }

    pub fn label(&self, lb: &Letterbox, feats: &Features, q: &Queries) -> Result<FrameObjects> {
        let (w, h) = (lb.frame_w, lb.frame_h);
        let mask_feat = feats
            .get(crate::model::contract::names::MASK_FEAT)
            .ok_or_else(|| Error::Runtime("the encoder gave no `mask_feat`".into()))?;
        let cls = &self.model.spec.classifier;
        let generic = self.model.spec.queries.generic.min(q.count);

        let mut picks: Vec<Pick> = Vec::new();
        for i in 0..generic {
            let e = q.embed_row(i);
            let Some((class, cos)) = self
                .classes
                .iter()
                .enumerate()
                .map(|(k, c)| (k, dot(e, &c.embedding)))
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            else {
                continue;
            };
            let prob = 1.0 / (1.0 + (-(cls.logit_scale * cos + cls.logit_bias)).exp());
            let score = match self.job.generic_score {
                GenericScore::Class => prob,
                GenericScore::ClassXIou => prob * q.iou[i].clamp(0.0, 1.0),
            };
            if score >= self.job.score_threshold && score.is_finite() {
                picks.push(Pick {
                    query: i,
                    class,
                    score,
                });
            }
        }
        picks.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.query.cmp(&b.query)));

        // Box NMS within each class.
        let mut kept: Vec<Pick> = Vec::new();
        for k in 0..self.classes.len() {
            let mine: Vec<&Pick> = picks.iter().filter(|p| p.class == k).collect();
            let boxes: Vec<[f32; 4]> = mine
                .iter()
                .map(|p| cxcywh_to_xyxy(q.boxes_cxcywh[p.query]))
                .collect();
            let scores: Vec<f32> = mine.iter().map(|p| p.score).collect();
            for j in nms(&boxes, &scores, self.job.nms_iou) {
                let p = mine[j];
                kept.push(Pick {
                    query: p.query,
                    class: p.class,
                    score: p.score,
                });
            }
        }
        kept.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.query.cmp(&b.query)));

        // Masks for the kept queries, best first, until the cap.
        let cap = self.job.max_detections.min(MAX_DETECTIONS);
        let n = (w * h) as usize;
        let mut labels = vec![0u8; n];
        let mut objects = Vec::new();
        for p in kept {
            if objects.len() >= cap {
                break;
            }
            let (mask, bbox, area) = frame_mask(mask_feat, q.mask_row(p.query), lb);
            let Some([x0, y0, x1, y1]) = bbox.filter(|_| area > self.job.min_area) else {
                continue;
            };
            let id = objects.len() as u8 + 1;
            // One instance per pixel in label images: the better-scored one keeps it.
            for y in y0 as usize..y1 as usize {
                let span = y * w as usize + x0 as usize..y * w as usize + x1 as usize;
                for (l, &m) in labels[span.clone()].iter_mut().zip(&mask.data[span]) {
                    if m != 0 && *l == 0 {
                        *l = id;
                    }
                }
            }
            objects.push(ObjectResult {
                id,
                category: self.classes[p.class].id,
                box_xyxy: bbox,
                score: p.score,
                pred_iou: q.iou[p.query],
                area,
                mask,
            });
        }
        Ok(FrameObjects {
            width: w,
            height: h,
            labels,
            objects,
        })
    }
}
