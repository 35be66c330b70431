//! The space-time memory readout of video propagation: an object's mask on a new frame read out of the
//! frames it was seen on, cell by cell of an encoder grid. Every cell of the new frame is compared (cosine
//! of unit feature vectors) with the cells of remembered frames inside a square window around its place;
//! the best `top_k` affinities, softmaxed, average those cells' object shares into the cell's probability.
//!
//! This is the memory read of STM (Oh et al., ICCV 2019) with the top-k filtering of STCN / XMem (Cheng et
//! al., NeurIPS 2021 / ECCV 2022), here over the frozen encoder's features with no learnt key or value
//! projection: the memory holds the reference frame(s) and the last `recent` outputs. It complements the
//! target model (a linear score over the same features) by matching places, not a global appearance.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::contract::names;
use crate::model::{Features, Letterbox, Tensor};
use crate::spec::{ReadoutFeatures, ReadoutSpec};

/// One remembered frame: its cells' unit feature vectors (cell-major, `dim` each; zero outside the
/// letterboxed frame) and their object shares (`None` outside the frame, never matched).
struct Remembered {
    feats: Arc<[f32]>,
    shares: Vec<Option<f32>>,
}

/// A frame on the readout's grid, made once per frame and shared by every object's readout: its cells'
/// unit feature vectors (cell-major, `dim` each; zero outside the letterboxed frame; shared, not copied,
/// by the memories that remember the frame), which cells lie inside the frame, and its letterbox.
pub struct FrameCells {
    gw: usize,
    gh: usize,
    dim: usize,
    feats: Arc<[f32]>,
    inside: Vec<bool>,
    lb: Letterbox,
}

impl FrameCells {
    /// The cells of `feats`' grid `which`, for a frame letterboxed as `lb`.
    pub fn of(which: ReadoutFeatures, feats: &Features, lb: &Letterbox) -> Result<Self> {
        let grid = grid(feats, which)?;
        let (d, gh, gw) = (grid.shape[1], grid.shape[2], grid.shape[3]);
        let plane = gw * gh;
        let stride = (lb.size as usize / gw).max(1);
        let mut out = vec![0.0f32; plane * d];
        let mut inside = vec![false; plane];
        for y in 0..gh {
            for x in 0..gw {
                let at = y * gw + x;
                inside[at] = x * stride < lb.scaled_w as usize && y * stride < lb.scaled_h as usize;
                if !inside[at] {
                    continue;
                }
                let v = &mut out[at * d..(at + 1) * d];
                for (c, o) in v.iter_mut().enumerate() {
                    *o = grid.data[c * plane + at];
                }
                let n = dot(v, v).sqrt();
                if n > 0.0 {
                    v.iter_mut().for_each(|o| *o /= n);
                }
            }
        }
        Ok(FrameCells {
            gw,
            gh,
            dim: d,
            feats: out.into(),
            inside,
            lb: *lb,
        })
    }
}

/// One object's readout memory.
pub struct Readout {
    spec: ReadoutSpec,
    /// Grid width, height and feature length, fixed by the first frame.
    gw: usize,
    gh: usize,
    dim: usize,
    pinned: Vec<Remembered>,
    recent: VecDeque<Remembered>,
}

impl Readout {
    /// A memory holding the reference frame `frame` with the object's model-input mask `input_mask`
    /// (`S x S`, 1 = object).
    pub fn new(spec: ReadoutSpec, frame: &FrameCells, input_mask: &[f32]) -> Self {
        Readout {
            spec,
            gw: frame.gw,
            gh: frame.gh,
            dim: frame.dim,
            pinned: vec![remembered(frame, input_mask)],
            recent: VecDeque::new(),
        }
    }

    /// Adds another reference frame, kept for the whole run.
    pub fn pin(&mut self, frame: &FrameCells, input_mask: &[f32]) -> Result<()> {
        self.check(frame)?;
        self.pinned.push(remembered(frame, input_mask));
        Ok(())
    }

    /// Remembers an output frame (its model-input mask; all zero where the object was not found); the
    /// oldest output is forgotten beyond `recent`.
    pub fn remember(&mut self, frame: &FrameCells, input_mask: &[f32]) -> Result<()> {
        self.check(frame)?;
        if self.spec.recent == 0 {
            return Ok(());
        }
        if self.recent.len() == self.spec.recent {
            self.recent.pop_front();
        }
        self.recent.push_back(remembered(frame, input_mask));
        Ok(())
    }

    /// The object's probability at every model-input pixel of `frame` (`S x S`; 0 in the padding).
    pub fn read(&self, frame: &FrameCells) -> Result<Vec<f32>> {
        self.check(frame)?;
        let cells = self.probabilities(frame);
        let lb = &frame.lb;
        let s = lb.size as usize;
        let mut plane = crate::post::mask::resize_plane(&cells, self.gw, self.gw, self.gh, s, s);
        for y in 0..s {
            for x in 0..s {
                if x >= lb.scaled_w as usize || y >= lb.scaled_h as usize {
                    plane[y * s + x] = 0.0;
                }
            }
        }
        Ok(plane)
    }

    /// Per grid cell of `frame` the readout probability (0 outside the frame).
    fn probabilities(&self, frame: &FrameCells) -> Vec<f32> {
        let (q, inside) = (&frame.feats, &frame.inside);
        let (gw, gh, d, r) = (self.gw, self.gh, self.dim, self.spec.radius);
        let k = self.spec.top_k;
        let dot = pick_dot();
        let mut out = vec![0.0f32; gw * gh];
        // The best `k` (affinity, share) pairs so far, highest affinity first.
        let mut best: Vec<(f32, f32)> = Vec::with_capacity(k + 1);
        for y in 0..gh {
            for x in 0..gw {
                let at = y * gw + x;
                if !inside[at] {
                    continue;
                }
                let qv = &q[at * d..(at + 1) * d];
                best.clear();
                let (y0, y1) = (y.saturating_sub(r), (y + r).min(gh - 1));
                let (x0, x1) = (x.saturating_sub(r), (x + r).min(gw - 1));
                for m in self.pinned.iter().chain(&self.recent) {
                    for my in y0..=y1 {
                        for mx in x0..=x1 {
                            let c = my * gw + mx;
                            let Some(share) = m.shares[c] else { continue };
                            let a = dot(qv, &m.feats[c * d..(c + 1) * d]);
                            if best.len() == k && a <= best[k - 1].0 {
                                continue;
                            }
                            let pos = best.partition_point(|&(b, _)| b >= a);
                            best.insert(pos, (a, share));
                            best.truncate(k);
                        }
                    }
                }
                if let Some(&(top, _)) = best.first() {
                    let (mut num, mut den) = (0.0f32, 0.0f32);
                    for &(a, share) in &best {
                        let w = ((a - top) / self.spec.temperature).exp();
                        num += w * share;
                        den += w;
                    }
                    out[at] = num / den;
                }
            }
        }
        out
    }

    /// An error unless `frame` is on the memory's grid.
    fn check(&self, frame: &FrameCells) -> Result<()> {
        if [frame.dim, frame.gh, frame.gw] != [self.dim, self.gh, self.gw] {
            return Err(Error::Runtime(format!(
                "readout: the encoder grid is {:?}, the memory's {:?}",
                [frame.dim, frame.gh, frame.gw],
                [self.dim, self.gh, self.gw]
            )));
        }
        Ok(())
    }
}

/// A frame's cells with the object shares of `input_mask` (model-input pixels).
fn remembered(frame: &FrameCells, input_mask: &[f32]) -> Remembered {
    let all = shares(input_mask, frame.lb.size as usize, frame.gw, frame.gh);
    let shares = all
        .into_iter()
        .zip(&frame.inside)
        .map(|(v, &i)| i.then_some(v))
        .collect();
    Remembered {
        feats: Arc::clone(&frame.feats),
        shares,
    }
}

/// The grid the readout compares: `[1, C, H, W]`.
fn grid(feats: &Features, which: ReadoutFeatures) -> Result<&Tensor> {
    let name = match which {
        ReadoutFeatures::Fine => names::MASK_FEAT,
        ReadoutFeatures::Coarse => "feat8",
    };
    feats
        .get(name)
        .filter(|t| t.shape.len() == 4 && t.shape[0] == 1 && t.shape[2] > 0 && t.shape[3] > 0)
        .ok_or_else(|| Error::Runtime(format!("readout: the encoder gave no 4-d `{name}`")))
}

/// The object share of every cell of a `gw x gh` grid over an `s x s` model-input mask: the mean of the
/// pixels under the cell.
fn shares(mask: &[f32], s: usize, gw: usize, gh: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; gw * gh];
    let mut count = vec![0u32; gw * gh];
    for y in 0..s {
        let cy = (y * gh / s).min(gh - 1);
        for x in 0..s {
            let c = cy * gw + (x * gw / s).min(gw - 1);
            sum[c] += mask[y * s + x];
            count[c] += 1;
        }
    }
    sum.iter()
        .zip(&count)
        .map(|(&v, &n)| if n > 0 { v / n as f32 } else { 0.0 })
        .collect()
}

/// A dot product: the eight-lane loop, compiled for AVX2 where the CPU has it (same lanes, same sums:
/// the results do not depend on the path).
type Dot = fn(&[f32], &[f32]) -> f32;

fn pick_dot() -> Dot {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        return |a, b| {
            // SAFETY: the CPU was checked to have AVX2, the only feature `dot_avx2` is compiled for.
            unsafe { dot_avx2(a, b) }
        };
    }
    dot
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b)
}

/// Dot product in eight independent lanes (which the compiler keeps in vector registers; a single
/// running sum would serialise every addition), then the remainder.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16 x 16 input, a 4 x 4 `mask_feat` grid with two channels: cells of `object` point one way,
    /// the others another.
    fn frame(object: impl Fn(usize, usize) -> bool) -> (Features, Vec<f32>) {
        let (g, s) = (4usize, 16usize);
        let mut data = vec![0.0f32; 2 * g * g];
        let mut mask = vec![0.0f32; s * s];
        for y in 0..g {
            for x in 0..g {
                let on = object(x, y);
                data[(on as usize) * g * g + y * g + x] = 1.0;
                data[(!on as usize) * g * g + y * g + x] = 0.1;
                if on {
                    for py in y * 4..y * 4 + 4 {
                        for px in x * 4..x * 4 + 4 {
                            mask[py * s + px] = 1.0;
                        }
                    }
                }
            }
        }
        let feats = Features {
            maps: vec![(
                names::MASK_FEAT.to_string(),
                Tensor::new(vec![1, 2, g, g], data),
            )],
        };
        (feats, mask)
    }

    fn cells(feats: &Features, lb: &Letterbox) -> FrameCells {
        FrameCells::of(ReadoutFeatures::Fine, feats, lb).unwrap()
    }

    fn spec() -> ReadoutSpec {
        ReadoutSpec {
            weight: 1.0,
            radius: 1,
            top_k: 3,
            temperature: 0.05,
            ..ReadoutSpec::default()
        }
    }

    #[test]
    fn the_object_is_read_where_its_features_moved_within_the_window() {
        let lb = Letterbox::new(16, 16, 16);
        let (f0, m0) = frame(|x, y| x == 1 && y == 1);
        let r = Readout::new(spec(), &cells(&f0, &lb), &m0);
        // The object moved one cell right: its features match the reference's object cell.
        let (f1, _) = frame(|x, y| x == 2 && y == 1);
        let p = r.probabilities(&cells(&f1, &lb));
        assert!(p[4 + 2] > 0.9, "object cell {}", p[4 + 2]);
        assert!(
            p.iter().enumerate().all(|(i, &v)| i == 6 || v < 0.1),
            "{p:?}"
        );
        // Out of the window (radius 1) the same features find no object cell to match.
        let (f2, _) = frame(|x, y| x == 3 && y == 3);
        let q = cells(&f2, &lb);
        assert!(r.probabilities(&q)[15] < 0.1);
    }

    #[test]
    fn recent_outputs_are_remembered_and_the_oldest_forgotten() {
        let lb = Letterbox::new(16, 16, 16);
        let (f0, m0) = frame(|x, y| x == 0 && y == 0);
        let mut r = Readout::new(
            ReadoutSpec {
                recent: 1,
                ..spec()
            },
            &cells(&f0, &lb),
            &m0,
        );
        // Far from the reference's object, found on an output frame: now it is read there.
        let (f1, m1) = frame(|x, y| x == 3 && y == 3);
        let q = cells(&f1, &lb);
        assert!(r.probabilities(&q)[15] < 0.1);
        r.remember(&cells(&f1, &lb), &m1).unwrap();
        assert!(r.probabilities(&q)[15] > 0.9);
        // A newer output without the object replaces it.
        let (f2, _) = frame(|_, _| false);
        r.remember(&cells(&f2, &lb), &vec![0.0; 256]).unwrap();
        assert_eq!(r.recent.len(), 1);
        assert!(r.probabilities(&q)[15] < 0.1);
    }

    #[test]
    fn padding_cells_are_never_read_or_matched() {
        // A 16 x 8 frame fills the top half of the input; the bottom two grid rows are padding.
        let lb = Letterbox::new(16, 8, 16);
        let (f0, m0) = frame(|_, y| y >= 1);
        let r = Readout::new(spec(), &cells(&f0, &lb), &m0);
        assert!(r.pinned[0].shares[8..].iter().all(Option::is_none));
        let plane = r.read(&cells(&f0, &lb)).unwrap();
        assert!(plane[..8 * 16].iter().any(|&v| v > 0.5));
        assert!(plane[8 * 16..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn a_grid_of_another_size_is_an_error() {
        let lb = Letterbox::new(16, 16, 16);
        let (f0, m0) = frame(|x, _| x == 0);
        let r = Readout::new(spec(), &cells(&f0, &lb), &m0);
        let other = Features {
            maps: vec![(
                names::MASK_FEAT.to_string(),
                Tensor::new(vec![1, 2, 2, 2], vec![0.0; 8]),
            )],
        };
        assert!(r.read(&cells(&other, &lb)).is_err());
    }

    #[test]
    fn the_dot_product_is_the_same_on_every_path() {
        let a: Vec<f32> = (0..131).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..131).map(|i| (i as f32 * 0.11).cos()).collect();
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert_eq!(pick_dot()(&a, &b), dot(&a, &b));
        assert!((dot(&a, &b) as f64 - exact).abs() < 1e-4);
    }
}
