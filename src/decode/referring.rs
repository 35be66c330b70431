//! Referring selection for one frame: which interactive queries may answer a prompt (predicted IoU above a
//! threshold, box NMS), and how well each answers it (softmax over `logit_scale * cos`).

use crate::model::contract::QuerySpec;
use crate::model::Queries;
use crate::post::nms::nms;

/// Interactive queries that survive the predicted-IoU filter and box NMS, best predicted IoU first.
pub fn candidates(q: &Queries, spec: &QuerySpec, min_iou: f32, nms_iou: f32) -> Vec<usize> {
    let first = spec.generic.min(q.count);
    let pool: Vec<usize> = (first..q.count).filter(|&i| q.iou[i] > min_iou).collect();
    let boxes: Vec<[f32; 4]> = pool
        .iter()
        .map(|&i| cxcywh_to_xyxy(q.boxes_cxcywh[i]))
        .collect();
    let scores: Vec<f32> = pool.iter().map(|&i| q.iou[i]).collect();
    nms(&boxes, &scores, nms_iou)
        .into_iter()
        .map(|k| pool[k])
        .collect()
}

/// A `cxcywh` box as `xyxy`, in the same units.
pub fn cxcywh_to_xyxy(b: [f32; 4]) -> [f32; 4] {
    [
        b[0] - b[2] / 2.0,
        b[1] - b[3] / 2.0,
        b[0] + b[2] / 2.0,
        b[1] + b[3] / 2.0,
    ]
}

/// `(query, probability)` for every candidate, most probable first: softmax over the candidates of
/// `logit_scale * dot(query_embed, prompt)`.
pub fn rank(q: &Queries, cands: &[usize], prompt: &[f32], logit_scale: f32) -> Vec<(usize, f32)> {
    if cands.is_empty() {
        return vec![];
    }
    let logits: Vec<f32> = cands
        .iter()
        .map(|&i| logit_scale * dot(q.embed_row(i), prompt))
        .collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut out: Vec<(usize, f32)> = cands.iter().zip(exps).map(|(&i, e)| (i, e / sum)).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// Dot product over the shorter of `a` and `b` (cosine similarity for L2-normalised vectors).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queries() -> Queries {
        // 1 generic + 3 interactive queries, 2-d embeddings.
        Queries {
            count: 4,
            iou: vec![0.99, 0.9, 0.8, 0.3],
            boxes_cxcywh: vec![
                [0.5, 0.5, 1.0, 1.0],
                [0.2, 0.2, 0.2, 0.2],
                [0.21, 0.2, 0.2, 0.2],
                [0.8, 0.8, 0.1, 0.1],
            ],
            embed: vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0],
            embed_dim: 2,
            mask_embed: vec![0.0; 4],
            mask_dim: 1,
        }
    }

    #[test]
    fn generic_low_iou_and_overlapping_queries_are_dropped() {
        let spec = QuerySpec {
            generic: 1,
            grid: 1,
            levels: 3,
        };
        assert_eq!(candidates(&queries(), &spec, 0.5, 0.7), vec![1]);
        assert_eq!(candidates(&queries(), &spec, 0.5, 0.99), vec![1, 2]);
    }

    #[test]
    fn softmax_ranks_by_similarity() {
        let r = rank(&queries(), &[1, 2], &[0.0, 1.0], 10.0);
        assert_eq!(r[0].0, 2);
        let expect = 1.0 / (1.0 + (-10.0f32).exp());
        assert!((r[0].1 - expect).abs() < 1e-6);
        assert!((r[0].1 + r[1].1 - 1.0).abs() < 1e-6);
    }
}
