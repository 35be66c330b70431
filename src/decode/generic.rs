//! The auto-labeling job's labeler, in one of two modes (`job.labeler.mode`):
//! - `proposals` (default): class-agnostic proposals (`proposals.rs`: the decoder's generic and point-grid
//!   queries, predicted-IoU floor, mask NMS), each classified by its descriptor's cosine similarity to the
//!   classes' prototypes: a softmax over `temperature * cos` with a "none of these" entry at
//!   `temperature * background`; a proposal takes its most probable classes, scored probability times its
//!   predicted IoU; per-class mask NMS.
//! - `generic`: every generic query picks its best class from the bank (DINOv's Cg), scored
//!   `sigmoid(logit_scale * cos + logit_bias)` times the query's predicted IoU; per-class box NMS.
//!
//! Both then apply the score threshold and the cap per image, and make masks for the kept queries only.

use std::sync::Arc;

use super::proposals::{cell_weights, describe, descriptor_maps, propose, ProposalRules};
use super::referring::{cxcywh_to_xyxy, dot};
use super::track::{FrameObjects, ObjectResult};
use crate::bank::ClassEmbedding;
use crate::error::{Error, Result};
use crate::model::{Features, Letterbox, Model, Queries, Tensor};
use crate::post::mask::frame_mask;
use crate::post::nms::nms;
use crate::spec::{GenericScore, JobSpec, LabelerMode};

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
    /// Fails when the `proposals` mode meets a bank without class descriptors.
    pub fn new(model: Arc<Model>, classes: Vec<ClassEmbedding>, job: JobSpec) -> Result<Self> {
        if job.labeler.mode == LabelerMode::Proposals
            && classes
                .iter()
                .any(|c| c.prototype.iter().all(|&v| v == 0.0))
        {
            return Err(Error::Runtime(
                "the bank holds no class descriptors; rebuild it with `vprompt bank build`".into(),
            ));
        }
        Ok(Labeler {
            model,
            classes,
            job,
        })
    }

    /// The point grid's side the decoder needs for this labeler: the `proposals` mode reads the grid's
    /// queries, the `generic` mode only the generic queries (one point keeps the interactive half small).
    pub fn grid(job: &JobSpec) -> usize {
        match job.labeler.mode {
            LabelerMode::Proposals => job.labeler.grid,
            LabelerMode::Generic => 1,
        }
    }

    /// Finds and classifies the instances of one image, as `job.labeler.mode` says; masks and boxes in
    /// frame pixels.
    pub fn label(&self, lb: &Letterbox, feats: &Features, q: &Queries) -> Result<FrameObjects> {
        let mask_feat = feats
            .get(crate::model::contract::names::MASK_FEAT)
            .ok_or_else(|| Error::Runtime("the encoder gave no `mask_feat`".into()))?;
        match self.job.labeler.mode {
            LabelerMode::Proposals => self.label_proposals(lb, feats, mask_feat, q),
            LabelerMode::Generic => self.label_generic(lb, mask_feat, q),
        }
    }

    fn label_proposals(
        &self,
        lb: &Letterbox,
        feats: &Features,
        mask_feat: &Tensor,
        q: &Queries,
    ) -> Result<FrameObjects> {
        let l = &self.job.labeler;
        let rules = ProposalRules {
            min_iou: l.min_iou,
            nms_iou: l.nms_iou,
            max: l.max_proposals,
            min_cells: 1,
        };
        let props = propose(q, mask_feat, lb, &rules);
        let maps = descriptor_maps(feats, &self.model.spec.classifier.descriptor);
        let side = mask_feat.shape[3];
        let mut picks: Vec<Pick> = Vec::new();
        for (k, p) in props.iter().enumerate() {
            if mask_feat.shape[2] != side {
                break; // a non-square grid has no square descriptor weights; no proposal is classified
            }
            let Some(d) = describe(&maps, &cell_weights(p), side) else {
                continue;
            };
            let probs = class_probabilities(&d, &self.classes, l.temperature, l.background);
            let quality = match self.job.generic_score {
                GenericScore::Class => 1.0,
                GenericScore::ClassXIou => q.iou[p.query].clamp(0.0, 1.0),
            };
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            for &c in order.iter().take(l.classes_per_proposal) {
                let score = probs[c] * quality;
                if score >= self.job.score_threshold && score.is_finite() {
                    picks.push(Pick {
                        query: k,
                        class: c,
                        score,
                    });
                }
            }
        }
        picks.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.query.cmp(&b.query)));
        // Mask NMS within each class, on the proposals' grid masks.
        let mut kept: Vec<Pick> = Vec::new();
        for p in picks {
            let near = |k: &Pick| {
                k.class == p.class && props[k.query].iou(&props[p.query]) > l.class_nms_iou
            };
            if !kept.iter().any(near) {
                kept.push(p);
            }
        }
        let kept = kept
            .into_iter()
            .map(|p| Pick {
                query: props[p.query].query,
                ..p
            })
            .collect();
        Ok(self.finish(lb, mask_feat, q, kept))
    }

    fn label_generic(
        &self,
        lb: &Letterbox,
        mask_feat: &Tensor,
        q: &Queries,
    ) -> Result<FrameObjects> {
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
        Ok(self.finish(lb, mask_feat, q, kept))
    }

    /// Masks for the kept queries, best first, until the cap; each pixel to the best-scored instance.
    fn finish(
        &self,
        lb: &Letterbox,
        mask_feat: &Tensor,
        q: &Queries,
        mut kept: Vec<Pick>,
    ) -> FrameObjects {
        let (w, h) = (lb.frame_w, lb.frame_h);
        kept.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.query.cmp(&b.query)));
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
        FrameObjects {
            width: w,
            height: h,
            labels,
            objects,
        }
    }
}

/// Each class's probability for a descriptor: a softmax over `temperature * cos(descriptor, prototype)`
/// and, when `background > -1`, a "none of these classes" entry at `temperature * background`.
pub fn class_probabilities(
    descriptor: &[f32],
    classes: &[ClassEmbedding],
    temperature: f32,
    background: f32,
) -> Vec<f32> {
    let mut logits: Vec<f32> = classes
        .iter()
        .map(|c| temperature * dot(descriptor, &c.prototype))
        .collect();
    let with_background = background > -1.0;
    if with_background {
        logits.push(temperature * background);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let n = classes.len();
    exps.into_iter().take(n).map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(id: u32, prototype: Vec<f32>) -> ClassEmbedding {
        ClassEmbedding {
            id,
            name: format!("c{id}"),
            embedding: vec![],
            prototype,
        }
    }

    #[test]
    fn probabilities_follow_similarity_and_leave_room_for_none() {
        let classes = [class(1, vec![1.0, 0.0]), class(2, vec![0.0, 1.0])];
        let p = class_probabilities(&[1.0, 0.0], &classes, 10.0, -1.0);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-6 && p[0] > 0.99, "{p:?}");
        // Halfway between: equal, and with a background at 0.9 both lose to "none".
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let p = class_probabilities(&[h, h], &classes, 10.0, 0.9);
        assert!((p[0] - p[1]).abs() < 1e-6 && p[0] + p[1] < 0.5, "{p:?}");
        // A strong match stays probable next to the background entry.
        let p = class_probabilities(&[1.0, 0.0], &classes, 10.0, 0.5);
        assert!(p[0] > 0.99, "{p:?}");
    }
}
