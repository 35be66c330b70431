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

use super::proposals::{cell_weights, describe, descriptor_maps, propose, Proposal, ProposalRules};
use super::referring::{cxcywh_to_xyxy, dot};
use super::track::{FrameObjects, ObjectResult};
use crate::bank::ClassEmbedding;
use crate::error::{Error, Result};
use crate::model::{Features, Letterbox, Model, Queries, QueryAnchor, Tensor};
use crate::post::mask::frame_mask;
use crate::post::nms::nms;
use crate::post::PointGrid;
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
        check_classes(job.labeler.mode, &classes)?;
        Ok(Labeler {
            model,
            classes,
            job,
        })
    }

    /// The decoder's point queries for this labeler: the `proposals` mode reads the grid's queries
    /// (`labeler.grid` per side), the `generic` mode only the generic queries (one point keeps the
    /// interactive half small).
    pub fn anchors(job: &JobSpec) -> Vec<QueryAnchor> {
        match job.labeler.mode {
            LabelerMode::Proposals if job.labeler.grid > 1 => {
                PointGrid::new(job.labeler.grid).anchors()
            }
            _ => vec![QueryAnchor::point(0.5, 0.5)],
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
        // A non-square grid has no square descriptor weights: no proposal is classified.
        let descriptors: Vec<Option<Vec<f32>>> = props
            .iter()
            .map(|p| {
                (mask_feat.shape[2] == side)
                    .then(|| describe(&maps, &cell_weights(p), side))
                    .flatten()
            })
            .collect();
        let kept = classify_proposals(&props, &descriptors, q, &self.classes, &self.job);
        Ok(finish(&self.job, &self.classes, lb, mask_feat, q, kept))
    }

    fn label_generic(
        &self,
        lb: &Letterbox,
        mask_feat: &Tensor,
        q: &Queries,
    ) -> Result<FrameObjects> {
        let cls = &self.model.spec.classifier;
        let generic = self.model.spec.queries.generic.min(q.count);
        let kept = generic_picks(
            q,
            generic,
            &self.classes,
            (cls.logit_scale, cls.logit_bias),
            &self.job,
        );
        Ok(finish(&self.job, &self.classes, lb, mask_feat, q, kept))
    }
}

/// The `proposals` mode classifies by the classes' descriptors (prototypes): a bank without them (all
/// zero, as banks from before descriptors) cannot be used in that mode.
fn check_classes(mode: LabelerMode, classes: &[ClassEmbedding]) -> Result<()> {
    if mode == LabelerMode::Proposals
        && classes
            .iter()
            .any(|c| c.prototype.iter().all(|&v| v == 0.0))
    {
        return Err(Error::Runtime(
            "the bank holds no class descriptors; rebuild it with `vprompt bank build`".into(),
        ));
    }
    Ok(())
}

/// The `proposals` mode's rules: each proposal with a descriptor takes its `classes_per_proposal` most
/// probable classes whose score (probability, times the predicted IoU with `class_x_iou`) is finite and
/// reaches `score_threshold`; best score first, a pick whose proposal overlaps a kept pick of the same
/// class by more than `class_nms_iou` (grid mask IoU) is dropped. Picks name decoder queries.
fn classify_proposals(
    props: &[Proposal],
    descriptors: &[Option<Vec<f32>>],
    q: &Queries,
    classes: &[ClassEmbedding],
    job: &JobSpec,
) -> Vec<Pick> {
    let l = &job.labeler;
    let mut picks: Vec<Pick> = Vec::new();
    for (k, (p, d)) in props.iter().zip(descriptors).enumerate() {
        let Some(d) = d else {
            continue;
        };
        let probs = class_probabilities(d, classes, l.temperature, l.background);
        let quality = match job.generic_score {
            GenericScore::Class => 1.0,
            GenericScore::ClassXIou => q.iou[p.query].clamp(0.0, 1.0),
        };
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        for &c in order.iter().take(l.classes_per_proposal) {
            let score = probs[c] * quality;
            if score >= job.score_threshold && score.is_finite() {
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
        let near =
            |k: &Pick| k.class == p.class && props[k.query].iou(&props[p.query]) > l.class_nms_iou;
        if !kept.iter().any(near) {
            kept.push(p);
        }
    }
    kept.into_iter()
        .map(|p| Pick {
            query: props[p.query].query,
            ..p
        })
        .collect()
}

/// The `generic` mode's rules: each of the first `generic` queries takes its most similar class
/// (embedding dot product; ties to the first class), scored `sigmoid(logit_scale * cos + logit_bias)`,
/// times the predicted IoU with `class_x_iou`; a finite score reaching `score_threshold` is kept; then
/// box NMS at `nms_iou` within each class.
fn generic_picks(
    q: &Queries,
    generic: usize,
    classes: &[ClassEmbedding],
    (logit_scale, logit_bias): (f32, f32),
    job: &JobSpec,
) -> Vec<Pick> {
    let mut picks: Vec<Pick> = Vec::new();
    for i in 0..generic {
        let e = q.embed_row(i);
        let Some((class, cos)) = classes
            .iter()
            .enumerate()
            .map(|(k, c)| (k, dot(e, &c.embedding)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        else {
            continue;
        };
        let prob = 1.0 / (1.0 + (-(logit_scale * cos + logit_bias)).exp());
        let score = match job.generic_score {
            GenericScore::Class => prob,
            GenericScore::ClassXIou => prob * q.iou[i].clamp(0.0, 1.0),
        };
        if score >= job.score_threshold && score.is_finite() {
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
    for k in 0..classes.len() {
        let mine: Vec<&Pick> = picks.iter().filter(|p| p.class == k).collect();
        let boxes: Vec<[f32; 4]> = mine
            .iter()
            .map(|p| cxcywh_to_xyxy(q.boxes_cxcywh[p.query]))
            .collect();
        let scores: Vec<f32> = mine.iter().map(|p| p.score).collect();
        for j in nms(&boxes, &scores, job.nms_iou) {
            let p = mine[j];
            kept.push(Pick {
                query: p.query,
                class: p.class,
                score: p.score,
            });
        }
    }
    kept
}

/// Masks for the kept queries, best first, until the cap (`max_detections`, at most 255); a mask of at
/// most `min_area` pixels is dropped and takes no id; each pixel of the label image goes to the
/// best-scored instance that covers it.
fn finish(
    job: &JobSpec,
    classes: &[ClassEmbedding],
    lb: &Letterbox,
    mask_feat: &Tensor,
    q: &Queries,
    mut kept: Vec<Pick>,
) -> FrameObjects {
    let (w, h) = (lb.frame_w, lb.frame_h);
    kept.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.query.cmp(&b.query)));
    let cap = job.max_detections.min(MAX_DETECTIONS);
    let n = (w * h) as usize;
    let mut labels = vec![0u8; n];
    let mut objects = Vec::new();
    for p in kept {
        if objects.len() >= cap {
            break;
        }
        let (mask, bbox, area) = frame_mask(mask_feat, q.mask_row(p.query), lb);
        let Some([x0, y0, x1, y1]) = bbox.filter(|_| area > job.min_area) else {
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
            category: classes[p.class].id,
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
            embedding: prototype.clone(),
            prototype,
        }
    }

    /// The two classes of the tests: id 7 along the first axis, id 9 along the second.
    fn classes() -> Vec<ClassEmbedding> {
        vec![class(7, vec![1.0, 0.0]), class(9, vec![0.0, 1.0])]
    }

    /// `mask_feat` on an 8x8 grid: channel 0 is +1 on the left half, channel 1 on the top half, -1
    /// elsewhere; a query's mask embedding `[a, b]` picks its region.
    fn mask_feat() -> Tensor {
        let mut data = Vec::new();
        for k in 0..2 {
            for y in 0..8 {
                for x in 0..8 {
                    let inside = if k == 0 { x < 4 } else { y < 4 };
                    data.push(if inside { 1.0 } else { -1.0 });
                }
            }
        }
        Tensor::new(vec![1, 2, 8, 8], data)
    }

    /// Queries with these predicted IoUs, mask embeddings (regions of `mask_feat`), class embeddings
    /// and boxes.
    fn queries(
        iou: &[f32],
        masks: &[[f32; 2]],
        embeds: &[[f32; 2]],
        boxes: &[[f32; 4]],
    ) -> Queries {
        Queries {
            count: iou.len(),
            iou: iou.to_vec(),
            boxes_cxcywh: boxes.to_vec(),
            embed: embeds.iter().flatten().copied().collect(),
            embed_dim: 2,
            mask_embed: masks.iter().flatten().copied().collect(),
            mask_dim: 2,
        }
    }

    const LEFT: [f32; 2] = [1.0, 0.0];
    const TOP: [f32; 2] = [0.0, 1.0];
    /// Both channels: only the top-left quadrant is above zero.
    const CORNER: [f32; 2] = [1.0, 1.0];

    fn pick(query: usize, class: usize, score: f32) -> Pick {
        Pick {
            query,
            class,
            score,
        }
    }

    /// A 64x64 frame on a 32-pixel model input: the 8x8 grid is stride 4.
    fn letterbox() -> Letterbox {
        Letterbox::new(64, 64, 32)
    }

    #[test]
    fn pixels_go_to_the_best_scored_instance_and_small_masks_take_no_id() {
        let q = queries(
            &[0.9; 3],
            &[LEFT, TOP, CORNER],
            &[[0.0; 2]; 3],
            &[[0.5; 4]; 3],
        );
        let job = JobSpec {
            min_area: 1500, // the corner (a quarter of 4096 pixels) is too small, the halves are not
            ..JobSpec::default()
        };
        let kept = vec![pick(0, 0, 0.8), pick(1, 1, 0.9), pick(2, 0, 0.95)];
        let f = finish(&job, &classes(), &letterbox(), &mask_feat(), &q, kept);
        assert_eq!((f.width, f.height), (64, 64));
        // Best first: the top half (0.9) is 1, the left half (0.8) is 2; the corner took no id.
        let got: Vec<(u8, u32, f32)> = f
            .objects
            .iter()
            .map(|o| (o.id, o.category, o.score))
            .collect();
        assert_eq!(got, vec![(1, 9, 0.9), (2, 7, 0.8)]);
        let (top, left) = (&f.objects[0].mask, &f.objects[1].mask);
        let overlap = (0..top.data.len())
            .filter(|&i| top.data[i] != 0 && left.data[i] != 0)
            .count();
        assert!(overlap > 500, "the halves overlap in the corner: {overlap}");
        // Each object keeps its whole mask; the label image gives the overlap to the better one.
        assert_eq!(f.objects[1].area, left.area());
        for (i, &l) in f.labels.iter().enumerate() {
            let want = if top.data[i] != 0 {
                1
            } else if left.data[i] != 0 {
                2
            } else {
                0
            };
            assert_eq!(l, want, "pixel {i}");
        }
    }

    #[test]
    fn the_cap_counts_kept_instances_and_stops_at_255() {
        let q = queries(
            &[0.9; 3],
            &[LEFT, TOP, CORNER],
            &[[0.0; 2]; 3],
            &[[0.5; 4]; 3],
        );
        let one = JobSpec {
            min_area: 1500,
            max_detections: 1,
            ..JobSpec::default()
        };
        // The corner scores best but is too small: it does not use up the cap of one.
        let kept = vec![pick(0, 0, 0.8), pick(1, 1, 0.9), pick(2, 0, 0.95)];
        let f = finish(&one, &classes(), &letterbox(), &mask_feat(), &q, kept);
        assert_eq!(f.objects.len(), 1);
        assert_eq!((f.objects[0].category, f.objects[0].score), (9, 0.9));
        // More than 255 asked: one palette index each, so 255.
        let many = JobSpec {
            min_area: 0,
            max_detections: 1000,
            ..JobSpec::default()
        };
        let kept = (0..300)
            .map(|k| pick(k % 3, 0, 1.0 - k as f32 * 1e-3))
            .collect();
        let f = finish(&many, &classes(), &letterbox(), &mask_feat(), &q, kept);
        assert_eq!(f.objects.len(), MAX_DETECTIONS);
        assert_eq!(f.objects.last().unwrap().id, 255);
    }

    /// Proposals of the test queries: left (IoU 0.9), a repeat of it (0.85, dropped by mask NMS), top
    /// (0.8), the top-left corner (0.7) and a weak one (0.1, under the floor).
    fn proposals() -> (Queries, Vec<Proposal>) {
        let q = queries(
            &[0.9, 0.85, 0.8, 0.7, 0.1],
            &[LEFT, LEFT, TOP, CORNER, TOP],
            &[[0.0; 2]; 5],
            &[[0.5; 4]; 5],
        );
        let rules = ProposalRules {
            min_iou: 0.3,
            nms_iou: 0.7,
            max: 10,
            min_cells: 1,
        };
        let props = propose(&q, &mask_feat(), &letterbox(), &rules);
        assert_eq!(props.iter().map(|p| p.query).collect::<Vec<_>>(), [0, 2, 3]);
        (q, props)
    }

    #[test]
    fn proposals_take_their_likely_classes_above_the_threshold_with_nms_per_class() {
        let (q, props) = proposals();
        let h = std::f32::consts::FRAC_1_SQRT_2;
        // The left half looks like class 7, the top half like 9, the corner like 7 again.
        let d = |v: [f32; 2]| Some(v.to_vec());
        let descriptors = vec![d([1.0, 0.0]), d([0.0, 1.0]), d([1.0, 0.0])];
        let mut job = JobSpec::default();
        job.labeler.classes_per_proposal = 1;
        job.labeler.class_nms_iou = 0.3;
        job.score_threshold = 0.05;
        let picks = classify_proposals(&props, &descriptors, &q, &classes(), &job);
        // The corner overlaps the left half by grid IoU 0.5 > 0.3 and is class 7 too: dropped. The top
        // half overlaps the left by 1/3 but is another class: kept. Picks name decoder queries.
        let got: Vec<(usize, usize)> = picks.iter().map(|p| (p.query, p.class)).collect();
        assert_eq!(got, vec![(0, 0), (2, 1)]);
        // Scores: the class probability times the predicted IoU, best first.
        let p = class_probabilities(&[1.0, 0.0], &classes(), 10.0, 0.5);
        assert!(
            (picks[0].score - p[0] * 0.9).abs() < 1e-6,
            "{}",
            picks[0].score
        );
        // With the default class NMS (0.5) the corner stays; with `class` scores it is the probability.
        job.labeler.class_nms_iou = 0.5;
        job.generic_score = GenericScore::Class;
        let picks = classify_proposals(&props, &descriptors, &q, &classes(), &job);
        assert_eq!(picks.len(), 3);
        assert!((picks[0].score - p[0]).abs() < 1e-6);
        // A threshold above the corner's score (its IoU is 0.7) drops it alone.
        job.generic_score = GenericScore::ClassXIou;
        job.score_threshold = p[0] * 0.75;
        let picks = classify_proposals(&props, &descriptors, &q, &classes(), &job);
        assert_eq!(picks.iter().map(|p| p.query).collect::<Vec<_>>(), [0, 2]);

        // Halfway between the classes: one class per proposal takes the first; two take both.
        let halfway = vec![d([h, h]), None, None];
        job.score_threshold = 0.0;
        let picks = classify_proposals(&props, &halfway, &q, &classes(), &job);
        assert_eq!(picks.iter().map(|p| p.class).collect::<Vec<_>>(), [0]);
        job.labeler.classes_per_proposal = 2;
        let picks = classify_proposals(&props, &halfway, &q, &classes(), &job);
        assert_eq!(
            picks.iter().map(|p| (p.query, p.class)).collect::<Vec<_>>(),
            [(0, 0), (0, 1)]
        );
        // A proposal without a descriptor (an empty mask, a non-square grid) is not classified.
        let none = vec![None, None, None];
        assert!(classify_proposals(&props, &none, &q, &classes(), &job).is_empty());
    }

    #[test]
    fn generic_queries_take_their_best_class_with_box_nms_per_class() {
        let b = [0.3, 0.3, 0.4, 0.4];
        let near = [0.32, 0.3, 0.4, 0.4]; // IoU with `b` about 0.9
        let far = [0.8, 0.8, 0.2, 0.2];
        let q = queries(
            &[0.9, 0.8, 1.0, 0.5, 1.0],
            &[[0.0; 2]; 5],
            &[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0]],
            &[b, near, b, far, far],
        );
        let job = JobSpec {
            score_threshold: 0.05,
            nms_iou: 0.7,
            ..JobSpec::default()
        };
        // Four generic queries: the fifth is an interactive one and takes no part.
        let picks = generic_picks(&q, 4, &classes(), (10.0, -5.0), &job);
        let got: Vec<(usize, usize)> = picks.iter().map(|p| (p.query, p.class)).collect();
        // Query 1 is class 7 on nearly query 0's box, scored lower: dropped. Query 2 has the same box as
        // query 0 but class 9: kept. Query 3 matches nothing (cos 0: sigmoid(-5) < 0.05).
        assert_eq!(got, vec![(0, 0), (2, 1)]);
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert!((picks[0].score - sigmoid(5.0) * 0.9).abs() < 1e-6);
        assert!((picks[1].score - sigmoid(5.0)).abs() < 1e-6);
        // Apart, query 1 stays; with `class` scores the IoU does not count.
        let apart = JobSpec {
            nms_iou: 0.95,
            generic_score: GenericScore::Class,
            ..job.clone()
        };
        let picks = generic_picks(&q, 4, &classes(), (10.0, -5.0), &apart);
        assert_eq!(picks.len(), 3);
        assert!((picks[0].score - sigmoid(5.0)).abs() < 1e-6);
        // No classes: nothing.
        assert!(generic_picks(&q, 4, &[], (10.0, -5.0), &job).is_empty());
    }

    #[test]
    fn the_proposals_mode_needs_class_descriptors() {
        let mut old = classes();
        old[1].prototype = vec![0.0, 0.0];
        let e = check_classes(LabelerMode::Proposals, &old).unwrap_err();
        assert!(
            e.to_string()
                .contains("rebuild it with `vprompt bank build`"),
            "{e}"
        );
        assert!(check_classes(LabelerMode::Generic, &old).is_ok());
        assert!(check_classes(LabelerMode::Proposals, &classes()).is_ok());
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
