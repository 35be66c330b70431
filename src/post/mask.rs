//! Masks from the decoder's mask embeddings: logits on the stride-4 grid, upsampled to the model input,
//! cropped out of the letterbox and resized to the frame. Made only for the queries that are kept.

use crate::model::{Letterbox, Tensor};

/// A binary mask in frame pixels, row-major, 1 = inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryMask {
    /// Width in frame pixels.
    pub width: u32,
    /// Height in frame pixels.
    pub height: u32,
    /// `width * height` values, row-major; non-zero is inside.
    pub data: Vec<u8>,
}

impl BinaryMask {
    /// An all-background mask of `width x height` pixels.
    pub fn empty(width: u32, height: u32) -> Self {
        BinaryMask {
            width,
            height,
            data: vec![0; width as usize * height as usize],
        }
    }

    /// Pixels inside the mask.
    pub fn area(&self) -> u64 {
        self.data.iter().filter(|&&v| v != 0).count() as u64
    }

    /// Tight `xyxy` box in pixel edges (`x1`, `y1` exclusive), `None` when empty.
    pub fn bbox_xyxy(&self) -> Option<[u32; 4]> {
        let w = self.width as usize;
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0u32, 0u32);
        for (i, &v) in self.data.iter().enumerate() {
            if v != 0 {
                let (x, y) = ((i % w) as u32, (i / w) as u32);
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x + 1);
                y1 = y1.max(y + 1);
            }
        }
        (x0 != u32::MAX).then_some([x0, y0, x1, y1])
    }

    /// Intersection over union with another mask of the same size (1 when both are empty).
    pub fn iou(&self, other: &BinaryMask) -> f64 {
        let (mut inter, mut union) = (0u64, 0u64);
        for (a, b) in self.data.iter().zip(&other.data) {
            let (a, b) = (*a != 0, *b != 0);
            inter += (a && b) as u64;
            union += (a || b) as u64;
        }
        if union == 0 {
            1.0
        } else {
            inter as f64 / union as f64
        }
    }
}

/// Mask logits of one query on the stride-4 grid: `mask_embed[q] . mask_feat` (`mask_feat` is `[1,M,H,W]`).
pub fn grid_logits(mask_feat: &Tensor, mask_embed: &[f32]) -> (Vec<f32>, usize, usize) {
    let (m, h, w) = (mask_feat.shape[1], mask_feat.shape[2], mask_feat.shape[3]);
    let plane = h * w;
    let mut out = vec![0.0f32; plane];
    for (c, &e) in mask_embed.iter().enumerate().take(m) {
        let src = &mask_feat.data[c * plane..(c + 1) * plane];
        for (o, s) in out.iter_mut().zip(src) {
            *o += e * s;
        }
    }
    (out, w, h)
}

/// Masks (logit > 0) of several queries on the stride-4 grid, `grid_logits(..) > 0` for each: one matrix
/// product `[queries x M] . [M x cells]` (a cache-blocked, vectorised sgemm) instead of every query
/// reading all of `mask_feat` once. An embedding shorter than `M` counts as zero-padded. The sums are
/// ordered differently from `grid_logits`, so a cell whose logit is within rounding of 0 may differ.
pub fn grid_masks(mask_feat: &Tensor, mask_embeds: &[&[f32]]) -> Vec<Vec<bool>> {
    let (m, h, w) = (mask_feat.shape[1], mask_feat.shape[2], mask_feat.shape[3]);
    let plane = h * w;
    let n = mask_embeds.len();
    if n == 0 || plane == 0 {
        return vec![Vec::new(); n];
    }
    let mut a = vec![0.0f32; n * m];
    for (row, e) in a.chunks_exact_mut(m.max(1)).zip(mask_embeds) {
        for (dst, &v) in row.iter_mut().zip(e.iter()) {
            *dst = v;
        }
    }
    let mut c = vec![0.0f32; n * plane];
    if m > 0 {
        assert!(
            mask_feat.data.len() >= m * plane,
            "mask_feat shape and data disagree"
        );
        // SAFETY: `a` is n x m, `mask_feat.data` holds at least m x plane and `c` is n x plane, all
        // row-major with the strides given; the three do not overlap.
        unsafe {
            matrixmultiply::sgemm(
                n,
                m,
                plane,
                1.0,
                a.as_ptr(),
                m as isize,
                1,
                mask_feat.data.as_ptr(),
                plane as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                plane as isize,
                1,
            );
        }
    }
    c.chunks_exact(plane)
        .map(|row| row.iter().map(|&v| v > 0.0).collect())
        .collect()
}

/// Bilinear resize of a single-channel plane with half-pixel centres (PyTorch's `align_corners=False`).
/// `src` is `sw x sh`, row-major; reads only the top-left `crop_w x crop_h` of it.
pub fn resize_plane(
    src: &[f32],
    sw: usize,
    crop_w: usize,
    crop_h: usize,
    dw: usize,
    dh: usize,
) -> Vec<f32> {
    let fx = crop_w as f32 / dw as f32;
    let fy = crop_h as f32 / dh as f32;
    let taps = |d: usize, f: f32, n: usize| -> (usize, usize, f32) {
        let s = ((d as f32 + 0.5) * f - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, s - i0 as f32)
    };
    let xs: Vec<(usize, usize, f32)> = (0..dw).map(|x| taps(x, fx, crop_w)).collect();
    let mut out = Vec::with_capacity(dw * dh);
    for y in 0..dh {
        let (y0, y1, ty) = taps(y, fy, crop_h);
        let r0 = &src[y0 * sw..];
        let r1 = &src[y1 * sw..];
        for &(x0, x1, tx) in &xs {
            let top = r0[x0] + (r0[x1] - r0[x0]) * tx;
            let bot = r1[x0] + (r1[x1] - r1[x0]) * tx;
            out.push(top + (bot - top) * ty);
        }
    }
    out
}

/// One query's mask logits at model-input resolution (`S x S`).
pub fn input_logits(mask_feat: &Tensor, mask_embed: &[f32], size: u32) -> Vec<f32> {
    let (g, gw, gh) = grid_logits(mask_feat, mask_embed);
    let s = size as usize;
    resize_plane(&g, gw, gw, gh, s, s)
}

/// How little a query's mask depends on where its logits are cut (SAM's stability score, Kirillov et al.
/// 2023): the grid cells with a logit above `+1` over those above `-1`; 0 when none is above `-1`.
pub fn stability(mask_feat: &Tensor, mask_embed: &[f32]) -> f32 {
    let (g, _, _) = grid_logits(mask_feat, mask_embed);
    let loose = g.iter().filter(|&&v| v > -1.0).count();
    let tight = g.iter().filter(|&&v| v > 1.0).count();
    if loose == 0 {
        0.0
    } else {
        tight as f32 / loose as f32
    }
}

/// Model-input logits -> frame-resolution logits (crop the letterboxed area, resize to the frame).
pub fn frame_logits(input_logits: &[f32], lb: &Letterbox) -> Vec<f32> {
    resize_plane(
        input_logits,
        lb.size as usize,
        lb.scaled_w as usize,
        lb.scaled_h as usize,
        lb.frame_w as usize,
        lb.frame_h as usize,
    )
}

/// One query's binary mask at frame resolution, equal pixel for pixel to thresholding
/// `frame_logits(input_logits(..))` at 0, but computed only where it can be positive: a bilinear value is a
/// convex combination of its taps, so a frame pixel is inside only if some grid logit under it is
/// positive. Returns the mask, its tight `xyxy` box (`None` when empty) and its area.
pub fn frame_mask(
    mask_feat: &Tensor,
    mask_embed: &[f32],
    lb: &Letterbox,
) -> (BinaryMask, Option<[u32; 4]>, u64) {
    let (fw, fh) = (lb.frame_w as usize, lb.frame_h as usize);
    let mut mask = BinaryMask::empty(lb.frame_w, lb.frame_h);
    let (g, gw, gh) = grid_logits(mask_feat, mask_embed);
    // Grid cells with a positive logit.
    let (mut gx0, mut gy0, mut gx1, mut gy1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..gh {
        for x in 0..gw {
            if g[y * gw + x] > 0.0 {
                gx0 = gx0.min(x);
                gx1 = gx1.max(x);
                gy0 = gy0.min(y);
                gy1 = gy1.max(y);
            }
        }
    }
    if gx0 == usize::MAX {
        return (mask, None, 0);
    }
    let s = lb.size as usize;
    let taps = |d: usize, f: f32, n: usize| -> (usize, usize, f32) {
        let p = ((d as f32 + 0.5) * f - 0.5).max(0.0);
        let i0 = (p.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, p - i0 as f32)
    };
    // Destination pixels (of `n`, sampling a source of `len`) with a tap inside [lo, hi].
    let reach = |n: usize, len: usize, lo: usize, hi: usize| -> Option<(usize, usize)> {
        let f = len as f32 / n as f32;
        let hits: Vec<usize> = (0..n)
            .filter(|&d| {
                let (i0, i1, _) = taps(d, f, len);
                (lo..=hi).contains(&i0) || (lo..=hi).contains(&i1)
            })
            .collect();
        Some((*hits.first()?, *hits.last()?))
    };
    let (sw, sh) = (lb.scaled_w as usize, lb.scaled_h as usize);
    // Model-input pixels (inside the letterboxed frame) that can be positive, then frame pixels.
    let Some((ix0, ix1)) = reach(s, gw, gx0, gx1).map(|(a, b)| (a.min(sw - 1), b.min(sw - 1)))
    else {
        return (mask, None, 0);
    };
    let Some((iy0, iy1)) = reach(s, gh, gy0, gy1).map(|(a, b)| (a.min(sh - 1), b.min(sh - 1)))
    else {
        return (mask, None, 0);
    };
    let (Some((x0, x1)), Some((y0, y1))) = (reach(fw, sw, ix0, ix1), reach(fh, sh, iy0, iy1))
    else {
        return (mask, None, 0);
    };
    // Input-resolution logits over the rows and columns the frame window reads.
    let fxs = sw as f32 / fw as f32;
    let fys = sh as f32 / fh as f32;
    let cols: Vec<(usize, usize, f32)> = (x0..=x1).map(|x| taps(x, fxs, sw)).collect();
    let (cx0, cx1) = (cols[0].0, cols[cols.len() - 1].1);
    let (ry0, ry1) = (taps(y0, fys, sh).0, taps(y1, fys, sh).1);
    let (gfx, gfy) = (gw as f32 / s as f32, gh as f32 / s as f32);
    let iw = cx1 - cx0 + 1;
    let gcols: Vec<(usize, usize, f32)> = (cx0..=cx1).map(|x| taps(x, gfx, gw)).collect();
    let mut input = vec![0.0f32; iw * (ry1 - ry0 + 1)];
    for (r, y) in (ry0..=ry1).enumerate() {
        let (a0, a1, ty) = taps(y, gfy, gh);
        let (g0, g1) = (&g[a0 * gw..], &g[a1 * gw..]);
        for (c, &(b0, b1, tx)) in gcols.iter().enumerate() {
            let top = g0[b0] + (g0[b1] - g0[b0]) * tx;
            let bot = g1[b0] + (g1[b1] - g1[b0]) * tx;
            input[r * iw + c] = top + (bot - top) * ty;
        }
    }
    let (mut bx0, mut by0, mut bx1, mut by1) = (u32::MAX, u32::MAX, 0u32, 0u32);
    let mut area = 0u64;
    for y in y0..=y1 {
        let (a0, a1, ty) = taps(y, fys, sh);
        let (r0, r1) = (&input[(a0 - ry0) * iw..], &input[(a1 - ry0) * iw..]);
        let row = &mut mask.data[y * fw..(y + 1) * fw];
        for (k, &(b0, b1, tx)) in cols.iter().enumerate() {
            let (b0, b1) = (b0 - cx0, b1 - cx0);
            let top = r0[b0] + (r0[b1] - r0[b0]) * tx;
            let bot = r1[b0] + (r1[b1] - r1[b0]) * tx;
            if top + (bot - top) * ty > 0.0 {
                let x = x0 + k;
                row[x] = 1;
                area += 1;
                bx0 = bx0.min(x as u32);
                bx1 = bx1.max(x as u32 + 1);
                by0 = by0.min(y as u32);
                by1 = by1.max(y as u32 + 1);
            }
        }
    }
    let bbox = (area > 0).then_some([bx0, by0, bx1, by1]);
    (mask, bbox, area)
}

/// Pixels whose logit is > 0.
pub fn threshold(logits: &[f32], width: u32, height: u32) -> BinaryMask {
    BinaryMask {
        width,
        height,
        data: logits.iter().map(|&v| (v > 0.0) as u8).collect(),
    }
}

/// A frame-resolution binary mask -> the `S x S` model-input mask (1 inside, 0 outside and in the padding).
/// A model-input pixel is inside when the frame pixel under its centre is.
pub fn mask_to_input(mask: &BinaryMask, lb: &Letterbox) -> Vec<f32> {
    let s = lb.size as usize;
    let mut out = vec![0.0f32; s * s];
    let (sx, sy) = lb.scale();
    for y in 0..lb.scaled_h as usize {
        let fy = (((y as f32 + 0.5) / sy) as u32).min(mask.height - 1) as usize;
        for x in 0..lb.scaled_w as usize {
            let fx = (((x as f32 + 0.5) / sx) as u32).min(mask.width - 1) as usize;
            if mask.data[fy * mask.width as usize + fx] != 0 {
                out[y * s + x] = 1.0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_masks_agree_with_grid_logits() {
        // 3 channels on a 20x30 grid, values of both signs; the last embedding is shorter than the
        // channels (zero-padded).
        let data: Vec<f32> = (0..3 * 600)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let feat = Tensor::new(vec![1, 3, 20, 30], data);
        let embeds: Vec<Vec<f32>> =
            vec![vec![1.0, -0.5, 0.25], vec![-1.0, 0.0, 2.0], vec![0.3, 0.3]];
        let refs: Vec<&[f32]> = embeds.iter().map(|e| e.as_slice()).collect();
        let masks = grid_masks(&feat, &refs);
        for (e, m) in embeds.iter().zip(&masks) {
            let (g, _, _) = grid_logits(&feat, e);
            assert_eq!(m.len(), g.len());
            // Cells whose logit is 0 up to rounding may fall either way; every other cell agrees.
            let decided: Vec<(bool, bool)> = m
                .iter()
                .zip(&g)
                .filter(|(_, v)| v.abs() > 1e-4)
                .map(|(&b, &v)| (b, v > 0.0))
                .collect();
            assert!(decided.len() > 500, "{}", decided.len());
            assert!(decided.iter().all(|(b, expect)| b == expect));
            assert!(m.iter().any(|&v| v) && m.iter().any(|&v| !v));
        }
    }

    #[test]
    fn resize_matches_half_pixel_bilinear() {
        // 2x1 -> 4x1 with align_corners=False gives [a, a+0.25d, a+0.75d, b] (torch.nn.functional.interpolate).
        let out = resize_plane(&[0.0, 4.0], 2, 2, 1, 4, 1);
        assert_eq!(out, vec![0.0, 1.0, 3.0, 4.0]);
    }

    #[test]
    fn stability_is_the_firm_share_of_the_loose_mask() {
        // One channel, embed 1: logits are the feature values. Above -1: 4 cells; above +1: 1.
        let feat = Tensor::new(vec![1, 1, 1, 5], vec![-3.0, -0.5, 0.5, 0.9, 2.0]);
        assert_eq!(stability(&feat, &[1.0]), 0.25);
        // Embed 2: -6, -1, 1, 1.8, 4: above -1 three cells (not -1 itself), above +1 two.
        assert_eq!(stability(&feat, &[2.0]), 2.0 / 3.0);
        let none = Tensor::new(vec![1, 1, 1, 2], vec![-5.0, -2.0]);
        assert_eq!(stability(&none, &[1.0]), 0.0);
    }

    #[test]
    fn logits_are_dot_products() {
        let feat = Tensor::new(vec![1, 2, 1, 2], vec![1.0, 2.0, 10.0, 20.0]);
        let (l, w, h) = grid_logits(&feat, &[1.0, -0.5]);
        assert_eq!((w, h), (2, 1));
        assert_eq!(l, vec![-4.0, -8.0]);
    }

    #[test]
    fn windowed_mask_equals_the_full_computation() {
        // A 3-channel 20x20 grid; queries whose masks are blobs of different sizes, or empty.
        let (gw, gh, m) = (20usize, 20usize, 3usize);
        let mut data = vec![0.0f32; m * gw * gh];
        for y in 0..gh {
            for x in 0..gw {
                let (fx, fy) = (x as f32 / gw as f32, y as f32 / gh as f32);
                data[y * gw + x] = 1.0;
                data[gw * gh + y * gw + x] = -((fx - 0.3).powi(2) + (fy - 0.6).powi(2));
                data[2 * gw * gh + y * gw + x] = ((fx * 9.0).sin() * (fy * 7.0).cos()).abs();
            }
        }
        let feat = Tensor::new(vec![1, m, gh, gw], data);
        for (fw, fh) in [(97u32, 61u32), (40, 90), (80, 80)] {
            let lb = Letterbox::new(fw, fh, 80);
            for embed in [
                [0.02f32, 1.0, 0.0],
                [0.2, 1.0, 0.0],
                [-0.5, 0.0, 0.6],
                [-1.0, 0.0, 0.0],
            ] {
                let full = threshold(&frame_logits(&input_logits(&feat, &embed, 80), &lb), fw, fh);
                let (fast, bbox, area) = frame_mask(&feat, &embed, &lb);
                assert_eq!(fast, full, "{fw}x{fh} {embed:?}");
                assert_eq!(bbox, full.bbox_xyxy());
                assert_eq!(area, full.area());
            }
        }
    }

    #[test]
    fn frame_mask_round_trips_through_model_input() {
        let lb = Letterbox::new(40, 20, 32);
        let mut m = BinaryMask::empty(40, 20);
        for y in 5..15 {
            for x in 10..30 {
                m.data[y * 40 + x] = 1;
            }
        }
        let input = mask_to_input(&m, &lb);
        assert_eq!(input.iter().filter(|&&v| v > 0.0).count(), 16 * 8);
        let logits: Vec<f32> = input.iter().map(|&v| v - 0.5).collect();
        let back = threshold(&frame_logits(&logits, &lb), 40, 20);
        assert!(back.iou(&m) > 0.9, "iou {}", back.iou(&m));
        assert_eq!(m.bbox_xyxy(), Some([10, 5, 30, 15]));
    }
}
