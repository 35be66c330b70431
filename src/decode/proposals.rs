//! What auto-labeling's `proposals` labeler stands on: class-agnostic proposals and class descriptors.
//!
//! - A proposal is a query of the decoder in "everything" mode (the generic queries and the point grid's
//!   interactive queries) whose predicted IoU reaches a floor, as a mask on the stride-4 grid; proposals are
//!   taken best predicted IoU first and a mask overlapping a kept one too much is dropped (mask NMS).
//! - A descriptor is the class evidence an exemplar and a proposal share: encoder feature maps averaged
//!   inside the mask, each map's part L2-normalised, the whole L2-normalised again, so that a dot product
//!   of two descriptors is their cosine similarity.

use crate::model::contract::names::MASK_FEAT;
use crate::model::{Features, Letterbox, Queries, Tensor};
use crate::post::mask::grid_masks;
use crate::prompt::memory::normalize;

/// A proposal: its query and its mask on the stride-4 grid (padding cells excluded).
pub struct Proposal {
    /// Index of its query in the frame's decoder output.
    pub query: usize,
    /// `grid_w x grid_h` cells, row-major.
    pub cells: Vec<bool>,
    /// The same cells as bits, for fast overlaps.
    bits: Vec<u64>,
    /// Cells inside the mask.
    pub area: u32,
}

impl Proposal {
    /// Intersection over union of two proposals' grid masks.
    pub fn iou(&self, other: &Proposal) -> f32 {
        let inter: u32 = self
            .bits
            .iter()
            .zip(&other.bits)
            .map(|(a, b)| (a & b).count_ones())
            .sum();
        let union = self.area + other.area - inter;
        if union == 0 {
            0.0
        } else {
            inter as f32 / union as f32
        }
    }
}

/// Which queries become proposals.
#[derive(Debug, Clone, Copy)]
pub struct ProposalRules {
    /// Least predicted IoU.
    pub min_iou: f32,
    /// A mask overlapping a better proposal's by more than this IoU is dropped.
    pub nms_iou: f32,
    /// Most proposals kept.
    pub max: usize,
    /// Least grid cells a mask covers.
    pub min_cells: u32,
}

/// Masks are made in chunks of this many candidates, best predicted IoU first, and no more once `max`
/// proposals are kept: most of the grid's queries repeat a better one and need no mask of their own.
const CHUNK: usize = 32;

/// The proposals of one frame, best predicted IoU first.
pub fn propose(
    q: &Queries,
    mask_feat: &Tensor,
    lb: &Letterbox,
    rules: &ProposalRules,
) -> Vec<Proposal> {
    let mut order: Vec<usize> = (0..q.count)
        .filter(|&i| q.iou[i].is_finite() && q.iou[i] >= rules.min_iou)
        .collect();
    order.sort_by(|&a, &b| q.iou[b].total_cmp(&q.iou[a]).then(a.cmp(&b)));
    let (gh, gw) = (mask_feat.shape[2], mask_feat.shape[3]);
    // Cells whose top-left corner lies on the letterboxed image (the rest is padding).
    let valid = |n: usize, scaled: u32| -> usize {
        ((scaled as usize * n).div_ceil(lb.size.max(1) as usize)).min(n)
    };
    let (vw, vh) = (valid(gw, lb.scaled_w), valid(gh, lb.scaled_h));
    let mut kept: Vec<Proposal> = Vec::new();
    for chunk in order.chunks(CHUNK) {
        if kept.len() >= rules.max {
            break;
        }
        let embeds: Vec<&[f32]> = chunk.iter().map(|&i| q.mask_row(i)).collect();
        for (&query, mut cells) in chunk.iter().zip(grid_masks(mask_feat, &embeds)) {
            let mut bits = vec![0u64; (gw * gh).div_ceil(64)];
            let mut area = 0u32;
            for y in 0..gh {
                for x in 0..gw {
                    let k = y * gw + x;
                    if x >= vw || y >= vh {
                        cells[k] = false;
                    } else if cells[k] {
                        bits[k / 64] |= 1 << (k % 64);
                        area += 1;
                    }
                }
            }
            if area < rules.min_cells.max(1) {
                continue;
            }
            let p = Proposal {
                query,
                cells,
                bits,
                area,
            };
            if kept.iter().all(|k| p.iou(k) <= rules.nms_iou) {
                kept.push(p);
                if kept.len() >= rules.max {
                    break;
                }
            }
        }
    }
    kept
}

/// The encoder outputs a descriptor pools: the model's `classifier.descriptor`, or every 4-d encoder output
/// except `mask_feat`.
pub fn descriptor_maps<'a>(feats: &'a Features, names: &[String]) -> Vec<&'a Tensor> {
    if names.is_empty() {
        feats
            .maps
            .iter()
            .filter(|(n, t)| n != MASK_FEAT && t.shape.len() == 4)
            .map(|(_, t)| t)
            .collect()
    } else {
        names.iter().filter_map(|n| feats.get(n)).collect()
    }
}

/// The descriptor of a mask given as weights on a `side x side` square over the model input (an exemplar's
/// mask at input resolution, or a proposal's cells on the stride-4 grid): every map averaged over the cells
/// under the mask. `None` when the mask is empty or no map is there.
pub fn describe(maps: &[&Tensor], weights: &[f32], side: usize) -> Option<Vec<f32>> {
    if side == 0 || weights.len() != side * side || maps.is_empty() {
        return None;
    }
    let total: f32 = weights.iter().sum();
    if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    let mut out = Vec::new();
    for t in maps {
        let (c, h, w) = (t.shape[1], t.shape[2], t.shape[3]);
        // Each mask cell falls in the map cell under its centre.
        let mut per_cell = vec![0.0f32; h * w];
        for my in 0..side {
            let y = (my * h + h / 2) / side;
            let row = &weights[my * side..(my + 1) * side];
            for (mx, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    per_cell[y.min(h - 1) * w + ((mx * w + w / 2) / side).min(w - 1)] += v;
                }
            }
        }
        let plane = h * w;
        let mut part: Vec<f32> = (0..c)
            .map(|k| {
                let f = &t.data[k * plane..(k + 1) * plane];
                f.iter().zip(&per_cell).map(|(a, b)| a * b).sum::<f32>() / total
            })
            .collect();
        normalize(&mut part);
        out.extend(part);
    }
    normalize(&mut out);
    out.iter().all(|v| v.is_finite()).then_some(out)
}

/// A proposal's grid mask as `describe` weights.
pub fn cell_weights(p: &Proposal) -> Vec<f32> {
    p.cells.iter().map(|&c| if c { 1.0 } else { 0.0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(c: usize, h: usize, w: usize, f: impl Fn(usize, usize, usize) -> f32) -> Tensor {
        let mut data = Vec::with_capacity(c * h * w);
        for k in 0..c {
            for y in 0..h {
                for x in 0..w {
                    data.push(f(k, y, x));
                }
            }
        }
        Tensor::new(vec![1, c, h, w], data)
    }

    #[test]
    fn descriptors_average_the_map_under_the_mask() {
        // Channel 0 is 1 on the left half, channel 1 on the right half of a 2x2 map.
        let t = map(2, 2, 2, |k, _, x| if x == k { 1.0 } else { 0.0 });
        // An 8x8 mask over the left half.
        let w: Vec<f32> = (0..64).map(|i| if i % 8 < 4 { 1.0 } else { 0.0 }).collect();
        let d = describe(&[&t], &w, 8).unwrap();
        assert!((d[0] - 1.0).abs() < 1e-6 && d[1].abs() < 1e-6, "{d:?}");
        // Both halves equally: the channels equal.
        let d = describe(&[&t], &[1.0; 64], 8).unwrap();
        assert!((d[0] - d[1]).abs() < 1e-6);
        // A mask finer than the map, or coarser: the same answer.
        let w2: Vec<f32> = (0..4).map(|i| if i % 2 == 0 { 1.0 } else { 0.0 }).collect();
        let big = map(
            2,
            16,
            16,
            |k, _, x| if (x < 8) == (k == 0) { 1.0 } else { 0.0 },
        );
        let d = describe(&[&big], &w2, 2).unwrap();
        assert!((d[0] - 1.0).abs() < 1e-6, "{d:?}");
        // Two maps: each part weighs the same whatever its scale.
        let loud = map(1, 2, 2, |_, _, _| 100.0);
        let d = describe(&[&t, &loud], &w, 8).unwrap();
        assert!((d[0] - d[2]).abs() < 1e-6, "{d:?}");
        assert!(describe(&[&t], &[0.0; 64], 8).is_none());
        assert!(describe(&[&t], &[1.0; 63], 8).is_none());
    }

    fn queries(ious: &[f32], embeds: &[[f32; 2]]) -> Queries {
        Queries {
            count: ious.len(),
            iou: ious.to_vec(),
            boxes_cxcywh: vec![[0.5; 4]; ious.len()],
            embed: vec![0.0; ious.len()],
            embed_dim: 1,
            mask_embed: embeds.iter().flatten().copied().collect(),
            mask_dim: 2,
        }
    }

    #[test]
    fn proposals_are_deduplicated_best_first_and_cut_at_the_padding() {
        // Channel 0 is +1 on the left half of an 8x8 grid, channel 1 on the top half; both -1 elsewhere.
        let mf = map(2, 8, 8, |k, y, x| {
            let inside = if k == 0 { x < 4 } else { y < 4 };
            if inside {
                1.0
            } else {
                -1.0
            }
        });
        let lb = Letterbox::new(64, 64, 32);
        let q = queries(
            &[0.6, 0.9, 0.8, 0.1],
            &[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]],
        );
        let rules = ProposalRules {
            min_iou: 0.3,
            nms_iou: 0.7,
            max: 10,
            min_cells: 1,
        };
        let p = propose(&q, &mf, &lb, &rules);
        // Query 1 (left half, best) and 2 (top half, IoU 1/3 with it); query 0 repeats 1, query 3 is too weak.
        assert_eq!(p.iter().map(|p| p.query).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(p[0].area, 32);
        assert!((p[0].iou(&p[1]) - 16.0 / 48.0).abs() < 1e-6);
        // A frame half as high as wide: the bottom half of the grid is padding.
        let lb = Letterbox::new(64, 32, 32);
        let p = propose(&q, &mf, &lb, &rules);
        assert_eq!(p[0].area, 16);
        assert!(p[0].cells[7 * 8].eq(&false));
        let one = ProposalRules { max: 1, ..rules };
        assert_eq!(propose(&q, &mf, &lb, &one).len(), 1);
    }
}
