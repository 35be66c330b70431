//! The online target model of video propagation: per object, a logistic regression over the encoder's
//! features on the stride-4 grid (every channel of `mask_feat`, and `feat8` read at the same place),
//! fitted when the object is prompted, on its reference frame and on augmented views of that frame (its
//! mirror image, a zoom-in and a zoom-out). On every later frame its score map says where the object is by
//! appearance alone; `track.rs` joins it with the decoder's referring.
//!
//! This is the idea of FRTM (Robinson et al., CVPR 2020: a small target model fitted online on the
//! reference frame and its augmentations) in its simplest closed form: a linear model fitted by
//! iteratively reweighted least squares, a few milliseconds per frame and about a second per object
//! when it is prompted. Features stay frozen: nothing here needs training data beyond the prompt.

use std::collections::VecDeque;

use image::imageops::{self, FilterType};
use image::{GrayImage, ImageBuffer, Luma, Pixel, RgbImage};

use crate::error::{Error, Result};
use crate::model::contract::names;
use crate::model::{Features, Letterbox, Tensor};
use crate::post::BinaryMask;

/// Newton (IRLS) steps of the fit; it converges in 5-8 on real frames.
const FIT_STEPS: usize = 10;

/// Newton steps of an online update, which starts from the current weights.
const UPDATE_STEPS: usize = 3;

/// Most samples (grid cells over all views) a fit uses: beyond this, background cells are thinned
/// evenly (their weight grows to match), so a fit stays under a second on two cores.
const MAX_SAMPLES: usize = 8192;

/// A cell is a positive sample when at least this share of it is object, a negative when at most
/// `1 - POSITIVE_SHARE`; cells on the object's boundary teach nothing certain and are left out.
const POSITIVE_SHARE: f32 = 0.9;

/// Zoom factors of the augmented views: one crops the centre (objects look larger), one shrinks the
/// frame onto a black canvas of the same size (objects look smaller).
const ZOOM_IN: f32 = 1.25;
const ZOOM_OUT: f32 = 0.75;

/// One object's target model: weights over the feature channels of a grid cell, then a bias; and the
/// samples it was fitted on (the reference views' for good, a few recent frames' for online updates).
#[derive(Debug, Clone)]
pub struct TargetModel {
    weights: Vec<f32>,
    dim: usize,
    reference: Samples,
    recent: VecDeque<Samples>,
}

/// Labelled grid cells: `labels.len()` feature rows of `dim` entries each.
#[derive(Debug, Clone, Default)]
struct Samples {
    rows: Vec<f32>,
    labels: Vec<bool>,
}

impl Samples {
    fn positives(&self) -> usize {
        self.labels.iter().filter(|&&l| l).count()
    }

    fn has_both(&self) -> bool {
        let p = self.positives();
        p > 0 && p < self.labels.len()
    }
}

/// The grid the target model reads: `mask_feat` `[1,M,H,W]` and `feat8` `[1,C,h,w]`, the latter read at
/// the cell of the same place (nearest), so that a cell's feature vector has `M + C` entries.
struct Grid<'a> {
    mask_feat: &'a Tensor,
    feat8: &'a Tensor,
}

impl<'a> Grid<'a> {
    fn of(feats: &'a Features) -> Result<Self> {
        let get = |name: &str| {
            feats
                .get(name)
                .filter(|t| t.shape.len() == 4)
                .ok_or_else(|| Error::Runtime(format!("the encoder gave no 4-d `{name}`")))
        };
        Ok(Grid {
            mask_feat: get(names::MASK_FEAT)?,
            feat8: get("feat8")?,
        })
    }

    fn width(&self) -> usize {
        self.mask_feat.shape[3]
    }

    fn height(&self) -> usize {
        self.mask_feat.shape[2]
    }

    fn dim(&self) -> usize {
        self.mask_feat.shape[1] + self.feat8.shape[1]
    }

    /// The `feat8` cell under grid cell `(x, y)`.
    fn coarse(&self, x: usize, y: usize) -> usize {
        let (cw, ch) = (self.feat8.shape[3], self.feat8.shape[2]);
        let cx = (x * cw / self.width()).min(cw - 1);
        let cy = (y * ch / self.height()).min(ch - 1);
        cy * cw + cx
    }

    /// The feature vector of cell `(x, y)` into `out` (length `dim`).
    fn cell(&self, x: usize, y: usize, out: &mut [f32]) {
        let plane = self.width() * self.height();
        let at = y * self.width() + x;
        let m = self.mask_feat.shape[1];
        for (c, o) in out[..m].iter_mut().enumerate() {
            *o = self.mask_feat.data[c * plane + at];
        }
        let cplane = self.feat8.shape[2] * self.feat8.shape[3];
        let cat = self.coarse(x, y);
        for (c, o) in out[m..].iter_mut().enumerate() {
            *o = self.feat8.data[c * cplane + cat];
        }
    }
}

/// One labelled view for a fit: its features, its object mask in model-input pixels (`S x S`, 1 =
/// object, as `post::mask::mask_to_input` makes it) and its letterbox.
pub struct View<'a> {
    /// The view's encoder outputs (`mask_feat` and `feat8` are read).
    pub feats: &'a Features,
    /// The object mask, `S x S` model-input pixels, row-major: 1 object, 0 background.
    pub input_mask: &'a [f32],
    /// How the view's frame sits in the model input (padding cells are left out of the fit).
    pub lb: &'a Letterbox,
}

impl TargetModel {
    /// Fits the model on labelled views with L2 penalty `l2` on the weights (not the bias). `None` when
    /// the views hold no certain object cell or no certain background cell (an object smaller than a
    /// grid cell, or one that fills the frame). With `learns`, the model keeps its samples (up to 4 views
    /// of the grid, ~20 MB at 320 px) so that `update` can refit; without, it keeps only its weights.
    pub fn fit(views: &[View], l2: f32, learns: bool) -> Result<Option<TargetModel>> {
        let mut reference = Samples::default();
        let mut dim = 0;
        for v in views {
            dim = collect(v, &mut reference)?;
        }
        if !reference.has_both() {
            return Ok(None);
        }
        let weights = fit_logistic(&[(&reference, 1.0)], dim, l2, None, FIT_STEPS);
        if !learns {
            reference = Samples::default();
        }
        Ok(weights.map(|weights| TargetModel {
            weights,
            dim,
            reference,
            recent: VecDeque::new(),
        }))
    }

    /// Learns from a frame labelled by the tracker's own output: its cells join the fit (each recent
    /// frame weighs `recent_weight` of the reference, at most `keep` recent frames, the oldest leaving
    /// first) and the model takes a few Newton steps from where it is. A frame without a certain object
    /// and background cell, or a step that fails, leaves the model as it was; so does any frame for a
    /// model fitted without `learns`.
    pub fn update(&mut self, view: &View, l2: f32, keep: usize, recent_weight: f32) -> Result<()> {
        let mut s = Samples::default();
        if self.reference.labels.is_empty()
            || collect(view, &mut s)? != self.dim
            || !s.has_both()
            || keep == 0
        {
            return Ok(());
        }
        self.recent.push_back(s);
        while self.recent.len() > keep {
            self.recent.pop_front();
        }
        let mut sets = vec![(&self.reference, 1.0)];
        sets.extend(self.recent.iter().map(|r| (r, recent_weight as f64)));
        if let Some(w) = fit_logistic(&sets, self.dim, l2, Some(&self.weights), UPDATE_STEPS) {
            self.weights = w;
        }
        Ok(())
    }

    /// Logits of every grid cell of a frame (`W x H` of `mask_feat`, row-major), and the grid's size.
    pub fn scores(&self, feats: &Features) -> Result<(Vec<f32>, usize, usize)> {
        let grid = Grid::of(feats)?;
        if grid.dim() != self.dim {
            return Err(Error::Runtime(format!(
                "target model: fitted on {} channels, the frame has {}",
                self.dim,
                grid.dim()
            )));
        }
        let (gw, gh) = (grid.width(), grid.height());
        let bias = self.weights[self.dim];
        // Channel-major sums: the fine map as it is, the coarse one per cell and then read per fine cell.
        let plane = gw * gh;
        let m = grid.mask_feat.shape[1];
        let mut out = vec![bias; plane];
        for (c, &w) in self.weights[..m].iter().enumerate() {
            let src = &grid.mask_feat.data[c * plane..(c + 1) * plane];
            out.iter_mut().zip(src).for_each(|(o, s)| *o += w * s);
        }
        let cplane = grid.feat8.shape[2] * grid.feat8.shape[3];
        let mut coarse = vec![0.0f32; cplane];
        for (c, &w) in self.weights[m..grid.dim()].iter().enumerate() {
            let src = &grid.feat8.data[c * cplane..(c + 1) * cplane];
            coarse.iter_mut().zip(src).for_each(|(o, s)| *o += w * s);
        }
        for y in 0..gh {
            for x in 0..gw {
                out[y * gw + x] += coarse[grid.coarse(x, y)];
            }
        }
        Ok((out, gw, gh))
    }
}

/// Appends the certain cells of a view to `out` and returns the feature dimension.
fn collect(v: &View, out: &mut Samples) -> Result<usize> {
    let grid = Grid::of(v.feats)?;
    let dim = grid.dim();
    let (gw, gh) = (grid.width(), grid.height());
    let s = v.lb.size as usize;
    let stride = s / gw.max(1);
    if stride == 0 || gh * stride > s || v.input_mask.len() != s * s {
        return Err(Error::Runtime(format!(
            "target model: `mask_feat` grid {gw}x{gh} does not divide the {s} px input"
        )));
    }
    let mut row = vec![0.0f32; dim];
    for y in 0..gh {
        for x in 0..gw {
            // Only cells wholly inside the letterboxed frame: padding is neither object nor scene.
            if (x + 1) * stride > v.lb.scaled_w as usize
                || (y + 1) * stride > v.lb.scaled_h as usize
            {
                continue;
            }
            let mut inside = 0.0f32;
            for yy in y * stride..(y + 1) * stride {
                let r = &v.input_mask[yy * s + x * stride..yy * s + (x + 1) * stride];
                inside += r.iter().sum::<f32>();
            }
            let share = inside / (stride * stride) as f32;
            let label = if share >= POSITIVE_SHARE {
                true
            } else if share <= 1.0 - POSITIVE_SHARE {
                false
            } else {
                continue;
            };
            grid.cell(x, y, &mut row);
            out.rows.extend_from_slice(&row);
            out.labels.push(label);
        }
    }
    Ok(dim)
}

/// L2-penalised logistic regression by Newton steps (IRLS) with a bias appended, over sample sets of
/// given weights: within a set the two classes weigh the same (each half the set's weight per sample
/// on average); past `MAX_SAMPLES` a set's background is thinned evenly. Starts from `init` (or zero)
/// and takes at most `steps`. Returns `dim + 1` weights, `None` when the Hessian is not positive definite.
fn fit_logistic(
    sets: &[(&Samples, f64)],
    dim: usize,
    l2: f32,
    init: Option<&[f32]>,
    steps: usize,
) -> Option<Vec<f32>> {
    // (set, row index, weight, label) of every sample kept.
    let mut kept: Vec<(&Samples, usize, f64, bool)> = Vec::new();
    for &(set, set_weight) in sets {
        let n = set.labels.len();
        let pos = set.positives();
        if pos == 0 || pos == n {
            continue;
        }
        let neg_keep = MAX_SAMPLES.saturating_sub(pos).max(MAX_SAMPLES / 2);
        let neg_step = (n - pos).div_ceil(neg_keep).max(1);
        let first = kept.len();
        let mut seen_neg = 0;
        for (i, &l) in set.labels.iter().enumerate() {
            if l || seen_neg % neg_step == 0 {
                kept.push((set, i, 0.0, l));
            }
            seen_neg += !l as usize;
        }
        let ours = &mut kept[first..];
        let kpos = ours.iter().filter(|k| k.3).count() as f64;
        let total = ours.len() as f64;
        let (wpos, wneg) = (0.5 * total / kpos, 0.5 * total / (total - kpos));
        for k in ours {
            k.2 = set_weight * if k.3 { wpos } else { wneg };
        }
    }
    let d = dim + 1;
    let mut beta: Vec<f64> = match init {
        Some(w) => w.iter().map(|&v| v as f64).collect(),
        None => vec![0.0; d],
    };
    let mut x = vec![0.0f32; d];
    // The Hessian's rank-one terms are summed in f32 (which vectorises twice as wide) over blocks of
    // `FLUSH` samples, and the blocks in f64.
    const FLUSH: usize = 512;
    let mut block = vec![0.0f32; d * d];
    for _ in 0..steps {
        let mut grad = vec![0.0f64; d];
        let mut hess = vec![0.0f64; d * d];
        for (n, &(set, i, w, label)) in kept.iter().enumerate() {
            x[..dim].copy_from_slice(&set.rows[i * dim..(i + 1) * dim]);
            x[dim] = 1.0;
            let z: f64 = x.iter().zip(&beta).map(|(&a, b)| a as f64 * b).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            let g = w * (p - label as u8 as f64);
            let h = (w * p * (1.0 - p)) as f32;
            for a in 0..d {
                grad[a] += g * x[a] as f64;
                let ha = h * x[a];
                let row = &mut block[a * d..a * d + a + 1];
                for (hv, &xb) in row.iter_mut().zip(&x[..=a]) {
                    *hv += ha * xb;
                }
            }
            if (n + 1) % FLUSH == 0 || n + 1 == kept.len() {
                for (t, b) in hess.iter_mut().zip(block.iter_mut()) {
                    *t += *b as f64;
                    *b = 0.0;
                }
            }
        }
        for a in 0..dim {
            grad[a] += l2 as f64 * beta[a];
            hess[a * d + a] += l2 as f64;
        }
        hess[dim * d + dim] += 1e-6;
        let step = cholesky_solve(&mut hess, &grad, d)?;
        let mut largest = 0.0f64;
        for (b, s) in beta.iter_mut().zip(&step) {
            *b -= s;
            largest = largest.max(s.abs());
        }
        if largest < 1e-4 {
            break;
        }
    }
    Some(beta.into_iter().map(|b| b as f32).collect())
}

/// Solves `A x = b` for a symmetric positive definite `A` (`d x d`, lower triangle filled), factoring
/// `A` in place; `None` when it is not positive definite.
fn cholesky_solve(a: &mut [f64], b: &[f64], d: usize) -> Option<Vec<f64>> {
    for j in 0..d {
        let mut diag = a[j * d + j];
        for k in 0..j {
            diag -= a[j * d + k] * a[j * d + k];
        }
        if diag <= 0.0 || !diag.is_finite() {
            return None;
        }
        let l = diag.sqrt();
        a[j * d + j] = l;
        for i in j + 1..d {
            let mut v = a[i * d + j];
            for k in 0..j {
                v -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = v / l;
        }
    }
    let mut y = b.to_vec();
    for i in 0..d {
        for k in 0..i {
            y[i] -= a[i * d + k] * y[k];
        }
        y[i] /= a[i * d + i];
    }
    for i in (0..d).rev() {
        for k in i + 1..d {
            y[i] -= a[k * d + i] * y[k];
        }
        y[i] /= a[i * d + i];
    }
    Some(y)
}

/// The augmented views of a reference frame: the mirror image, a centre crop of `1 / ZOOM_IN` of each
/// side, and the frame shrunk by `ZOOM_OUT` onto a black canvas of its own size. They do not depend on
/// the objects, so a frame's views are encoded once for all objects starting on it.
pub fn augmented_frames(frame: &RgbImage) -> Vec<RgbImage> {
    augment(frame)
}

/// An object's mask in each of `augmented_frames`, in the same order.
pub fn augmented_masks(mask: &BinaryMask) -> Vec<BinaryMask> {
    let gray = GrayImage::from_fn(mask.width, mask.height, |x, y| {
        Luma([mask.data[(y * mask.width + x) as usize] * 255])
    });
    augment(&gray)
        .into_iter()
        .map(|g| BinaryMask {
            width: g.width(),
            height: g.height(),
            data: g.pixels().map(|p| (p[0] >= 128) as u8).collect(),
        })
        .collect()
}

/// The one geometry of the augmented views, for frames and masks alike.
fn augment<P>(img: &ImageBuffer<P, Vec<P::Subpixel>>) -> Vec<ImageBuffer<P, Vec<P::Subpixel>>>
where
    P: Pixel + 'static,
{
    let (w, h) = img.dimensions();
    let (cw, ch) = (
        ((w as f32 / ZOOM_IN).round() as u32).max(1),
        ((h as f32 / ZOOM_IN).round() as u32).max(1),
    );
    let (sw, sh) = (
        ((w as f32 * ZOOM_OUT).round() as u32).max(1),
        ((h as f32 * ZOOM_OUT).round() as u32).max(1),
    );
    let mut shrunk = ImageBuffer::new(w, h);
    imageops::overlay(
        &mut shrunk,
        &imageops::resize(img, sw, sh, FilterType::Triangle),
        ((w - sw) / 2) as i64,
        ((h - sh) / 2) as i64,
    );
    vec![
        imageops::flip_horizontal(img),
        imageops::crop_imm(img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image(),
        shrunk,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(mask_feat: Tensor, feat8: Tensor) -> Features {
        Features {
            maps: vec![
                ("feat8".to_string(), feat8),
                (names::MASK_FEAT.to_string(), mask_feat),
            ],
        }
    }

    /// A 16 px input, 4x4 grid: channel 0 of `mask_feat` is 1 where `object` says, 0 elsewhere; channel
    /// 1 is noise-free clutter that does not tell object from scene; `feat8` (2x2) is constant.
    fn scene(object: impl Fn(usize, usize) -> bool) -> (Features, Vec<f32>) {
        let mut mf = vec![0.0f32; 2 * 16];
        let mut mask = vec![0.0f32; 16 * 16];
        for y in 0..4 {
            for x in 0..4 {
                let on = object(x, y);
                mf[y * 4 + x] = on as u8 as f32;
                mf[16 + y * 4 + x] = ((x + y) % 2) as f32;
                if on {
                    for yy in y * 4..y * 4 + 4 {
                        for xx in x * 4..x * 4 + 4 {
                            mask[yy * 16 + xx] = 1.0;
                        }
                    }
                }
            }
        }
        let f = features(
            Tensor::new(vec![1, 2, 4, 4], mf),
            Tensor::new(vec![1, 1, 2, 2], vec![1.0; 4]),
        );
        (f, mask)
    }

    #[test]
    fn fitted_model_finds_the_object_by_its_appearance_elsewhere() {
        let (f, mask) = scene(|x, y| x < 2 && y < 2);
        let lb = Letterbox::new(16, 16, 16);
        let model = TargetModel::fit(
            &[View {
                feats: &f,
                input_mask: &mask,
                lb: &lb,
            }],
            0.1,
            false,
        )
        .unwrap()
        .expect("both classes present");
        // The object moved to the bottom-right corner of the next frame.
        let (g, _) = scene(|x, y| x >= 2 && y >= 2);
        let (s, w, h) = model.scores(&g).unwrap();
        assert_eq!((w, h), (4, 4));
        for y in 0..4 {
            for x in 0..4 {
                assert_eq!(
                    s[y * 4 + x] > 0.0,
                    x >= 2 && y >= 2,
                    "cell {x},{y}: {}",
                    s[y * 4 + x]
                );
            }
        }
    }

    #[test]
    fn padding_cells_and_single_class_views_teach_nothing() {
        // Everything inside the letterboxed frame (the top half) is object: no background sample.
        let (f, mask) = scene(|_, y| y < 2);
        let lb = Letterbox::new(16, 8, 16);
        let fit = TargetModel::fit(
            &[View {
                feats: &f,
                input_mask: &mask,
                lb: &lb,
            }],
            1.0,
            true,
        )
        .unwrap();
        assert!(fit.is_none());
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        // [[4, 2], [2, 3]] x = [2, 1] -> x = [0.5, 0]
        let mut a = vec![4.0, 0.0, 2.0, 3.0];
        let x = cholesky_solve(&mut a, &[2.0, 1.0], 2).unwrap();
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12, "{x:?}");
        let mut bad = vec![1.0, 0.0, 2.0, 1.0];
        assert!(cholesky_solve(&mut bad, &[1.0, 1.0], 2).is_none());
    }

    #[test]
    fn augmented_masks_follow_their_images() {
        // A 20x10 frame whose left 5 columns are red and marked as the object.
        let frame = RgbImage::from_fn(20, 10, |x, _| {
            if x < 5 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let mask = BinaryMask {
            width: 20,
            height: 10,
            data: (0..200).map(|i| (i % 20 < 5) as u8).collect(),
        };
        let views: Vec<(RgbImage, BinaryMask)> = augmented_frames(&frame)
            .into_iter()
            .zip(augmented_masks(&mask))
            .collect();
        assert_eq!(views.len(), 3);
        for (img, m) in &views {
            assert_eq!(img.dimensions(), (m.width, m.height));
            // Object pixels are red, the rest blue or the zoom-out's black border; resampling blends at
            // most one column at the object's edge.
            let wrong = img
                .pixels()
                .zip(&m.data)
                .filter(|(p, &v)| (v == 1) != (p[0] > p[2]))
                .count();
            assert!(wrong <= m.height as usize, "{wrong} pixels disagree");
        }
        // Mirror: the object is now on the right.
        assert_eq!(views[0].1.data[19], 1);
        assert_eq!(views[0].1.data[0], 0);
        // Zoom-in keeps the centre 16x8; zoom-out shrinks to 15x8 on the 20x10 canvas.
        assert_eq!((views[1].1.width, views[1].1.height), (16, 8));
        assert_eq!(views[2].1.data[0], 0);
    }
}
