//! Edge-aware mask refinement: the colour guided filter of He, Sun and Tang ("Guided Image Filtering",
//! ECCV 2010 / TPAMI 2013) with the frame as the guide and a binary mask as the input.
//!
//! Masks come from the decoder's stride-4 grid of a 320-pixel model input, upsampled: on a 427x240 frame
//! a grid cell is five pixels wide, so outlines are blocky and miss the object's edges. In every window
//! of `(2r + 1)^2` pixels the filter fits the mask as a linear function of the pixel colours
//! (`q = a . I + b`, ridge `eps`), averages the fits of the windows over each pixel, and thresholds:
//! the outline moves to where the colours change. Windows wholly inside or outside the mask keep it as
//! it is, so the work is done on the mask's box grown by `3r + 1` pixels only (the result is the same as
//! filtering the whole frame, windows clipped at the frame's sides).

use image::RgbImage;

use super::BinaryMask;

/// The fast filter's fits are made with a window of about this many blocks: a radius of `r` pixels
/// takes blocks of `r / FIT_RADIUS` pixels (see [`block_for`]).
pub const FIT_RADIUS: usize = 8;

/// The block side for a window radius of `r` pixels: `r / FIT_RADIUS`, at least 1 (exact).
pub fn block_for(r: usize) -> usize {
    (r / FIT_RADIUS).max(1)
}

/// A filtered mask over a window of the frame: `q` in `[0, 1]`-ish (a linear fit, it may overshoot
/// slightly), 0 everywhere outside the window.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftMask {
    /// Left column of the window in frame pixels.
    pub x0: u32,
    /// Top row of the window in frame pixels.
    pub y0: u32,
    /// Window width.
    pub width: u32,
    /// Window height.
    pub height: u32,
    /// `width * height` filtered values, row-major.
    pub q: Vec<f32>,
}

impl SoftMask {
    /// The filtered value at frame pixel `(x, y)` (0 outside the window).
    pub fn at(&self, x: u32, y: u32) -> f32 {
        if x < self.x0 || y < self.y0 || x >= self.x0 + self.width || y >= self.y0 + self.height {
            return 0.0;
        }
        self.q[((y - self.y0) * self.width + x - self.x0) as usize]
    }

    /// The pixels of a `width x height` frame where the filtered mask exceeds `threshold`.
    pub fn above(&self, threshold: f32, width: u32, height: u32) -> BinaryMask {
        let mut m = BinaryMask::empty(width, height);
        for (y, row) in self.q.chunks_exact(self.width.max(1) as usize).enumerate() {
            let start = (self.y0 as usize + y) * width as usize + self.x0 as usize;
            for (dst, &v) in m.data[start..start + row.len()].iter_mut().zip(row) {
                *dst = (v > threshold) as u8;
            }
        }
        m
    }
}

/// The guided filter of `mask` with `image` (the same size) as the guide, colours scaled to `[0, 1]`:
/// window radius `r` pixels, ridge `eps`. With `step` > 1 it is He and Sun's fast guided filter
/// ("Fast Guided Filter", 2015): the linear fits are made on the guide and the mask averaged over
/// `step x step` blocks (radius `r / step` blocks) and interpolated back to every pixel, where they
/// are applied to the full-resolution guide; the cost falls with `step^2`. `None` when the mask is
/// empty or the sizes differ.
pub fn guided_filter(
    image: &RgbImage,
    mask: &BinaryMask,
    r: usize,
    eps: f32,
    step: usize,
) -> Option<SoftMask> {
    let (fw, fh) = (mask.width as usize, mask.height as usize);
    if image.dimensions() != (mask.width, mask.height) {
        return None;
    }
    let [bx0, by0, bx1, by1] = mask.bbox_xyxy()?;
    let s = step.max(1);
    let rs = (r as f32 / s as f32).round().max(1.0) as usize;
    // Far enough from the mask, every fit is 0: three radii and a block of margin.
    let grow = 3 * rs * s + s + 1;
    // The window, its corner on the block grid.
    let x0 = (bx0 as usize).saturating_sub(grow) / s * s;
    let y0 = (by0 as usize).saturating_sub(grow) / s * s;
    let x1 = (bx1 as usize + grow).min(fw);
    let y1 = (by1 as usize + grow).min(fh);
    let (w, h) = (x1 - x0, y1 - y0);
    // The guide's three channels, full resolution, over the window.
    let raw = image.as_raw();
    let mut chan = vec![vec![0.0f32; w * h]; 3];
    for y in 0..h {
        let src = ((y0 + y) * fw + x0) * 3;
        for x in 0..w {
            for (c, plane) in chan.iter_mut().enumerate() {
                plane[y * w + x] = raw[src + 3 * x + c] as f32 / 255.0;
            }
        }
    }
    // Guide and mask averaged over blocks.
    let (bw, bh) = (w.div_ceil(s), h.div_ceil(s));
    let mut small = vec![vec![0.0f32; bw * bh]; 4];
    let mut count = vec![0.0f32; bw * bh];
    for y in 0..h {
        let row = (y0 + y) * fw + x0;
        for x in 0..w {
            let k = (y / s) * bw + x / s;
            for c in 0..3 {
                small[c][k] += chan[c][y * w + x];
            }
            small[3][k] += (mask.data[row + x] != 0) as u8 as f32;
            count[k] += 1.0;
        }
    }
    for plane in small.iter_mut() {
        plane.iter_mut().zip(&count).for_each(|(v, n)| *v /= n);
    }
    let p = small.pop().unwrap_or_default();
    let guide = small;
    let boxes = BoxMean::new(bw, bh, rs, (x0 / s, y0 / s, fw.div_ceil(s), fh.div_ceil(s)));
    let (a, b) = fits(&guide, &p, &boxes, eps as f64);
    let m_a: Vec<Vec<f32>> = a.iter().map(|c| boxes.mean(c)).collect();
    let m_b = boxes.mean(&b);
    // Back to every pixel: the block fits interpolated between block centres, applied to the guide.
    let taps = |d: usize, n: usize| -> (usize, usize, f32) {
        let t = ((d as f32 + 0.5) / s as f32 - 0.5).max(0.0);
        let i0 = (t.floor() as usize).min(n - 1);
        (i0, (i0 + 1).min(n - 1), t - i0 as f32)
    };
    let cols: Vec<(usize, usize, f32)> = (0..w).map(|x| taps(x, bw)).collect();
    let mut q = vec![0.0f32; w * h];
    for y in 0..h {
        let (r0, r1, ty) = taps(y, bh);
        for (x, &(c0, c1, tx)) in cols.iter().enumerate() {
            let at = |plane: &[f32]| {
                let top = plane[r0 * bw + c0] * (1.0 - tx) + plane[r0 * bw + c1] * tx;
                let bottom = plane[r1 * bw + c0] * (1.0 - tx) + plane[r1 * bw + c1] * tx;
                top * (1.0 - ty) + bottom * ty
            };
            let k = y * w + x;
            q[k] = at(&m_a[0]) * chan[0][k]
                + at(&m_a[1]) * chan[1][k]
                + at(&m_a[2]) * chan[2][k]
                + at(&m_b);
        }
    }
    Some(SoftMask {
        x0: x0 as u32,
        y0: y0 as u32,
        width: w as u32,
        height: h as u32,
        q,
    })
}

/// Every window's linear fit of `p` on the guide `chan`: `a = (Sigma + eps U)^-1 cov(I, p)` and
/// `b = mean(p) - a . mean(I)`.
fn fits(chan: &[Vec<f32>], p: &[f32], boxes: &BoxMean, eps: f64) -> (Vec<Vec<f32>>, Vec<f32>) {
    let n = p.len();
    let m_i: Vec<Vec<f32>> = chan.iter().map(|c| boxes.mean(c)).collect();
    let m_p = boxes.mean(p);
    let m_ip: Vec<Vec<f32>> = chan.iter().map(|c| boxes.mean(&product(c, p))).collect();
    // The guide's covariance entries rr, rg, rb, gg, gb, bb.
    const PAIRS: [(usize, usize); 6] = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)];
    let m_ii: Vec<Vec<f32>> = PAIRS
        .iter()
        .map(|&(i, j)| boxes.mean(&product(&chan[i], &chan[j])))
        .collect();
    let mut a = vec![vec![0.0f32; n]; 3];
    let mut b = vec![0.0f32; n];
    for k in 0..n {
        let mi = [m_i[0][k] as f64, m_i[1][k] as f64, m_i[2][k] as f64];
        let mp = m_p[k] as f64;
        let cov = [
            m_ip[0][k] as f64 - mi[0] * mp,
            m_ip[1][k] as f64 - mi[1] * mp,
            m_ip[2][k] as f64 - mi[2] * mp,
        ];
        let s = |e: usize| m_ii[e][k] as f64 - mi[PAIRS[e].0] * mi[PAIRS[e].1];
        let (rr, rg, rb, gg, gb, bb) = (s(0) + eps, s(1), s(2), s(3) + eps, s(4), s(5) + eps);
        // The inverse of the symmetric 3x3 matrix through its adjugate.
        let (i_rr, i_rg, i_rb) = (gg * bb - gb * gb, gb * rb - rg * bb, rg * gb - gg * rb);
        let (i_gg, i_gb, i_bb) = (rr * bb - rb * rb, rb * rg - rr * gb, rr * gg - rg * rg);
        let det = rr * i_rr + rg * i_rg + rb * i_rb;
        let ak = if det > 0.0 {
            [
                (i_rr * cov[0] + i_rg * cov[1] + i_rb * cov[2]) / det,
                (i_rg * cov[0] + i_gg * cov[1] + i_gb * cov[2]) / det,
                (i_rb * cov[0] + i_gb * cov[1] + i_bb * cov[2]) / det,
            ]
        } else {
            [0.0; 3]
        };
        for c in 0..3 {
            a[c][k] = ak[c] as f32;
        }
        b[k] = (mp - ak[0] * mi[0] - ak[1] * mi[1] - ak[2] * mi[2]) as f32;
    }
    (a, b)
}

fn product(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x * y).collect()
}

/// Means over `(2r + 1)^2` windows of a `w x h` window of the frame, each window clipped to the frame
/// (not to the `w x h` window: its pixel count is the frame's), by prefix sums in f64 along each axis.
struct BoxMean {
    w: usize,
    h: usize,
    /// Per column: first and one-past-last column of its window, within `0..w`.
    cols: Vec<(usize, usize)>,
    /// Per row, likewise.
    rows: Vec<(usize, usize)>,
    /// Per pixel: 1 / the number of frame pixels in its window.
    inv_count: Vec<f32>,
}

impl BoxMean {
    /// `origin`: the window's `(x0, y0)` in the frame and the frame's `(width, height)`.
    fn new(w: usize, h: usize, r: usize, origin: (usize, usize, usize, usize)) -> Self {
        let (x0, y0, fw, fh) = origin;
        // Range of a window in the frame, and that range cut to the local window.
        let span = |i: usize, off: usize, full: usize, local: usize| {
            let g = off + i;
            let (lo, hi) = (g.saturating_sub(r), (g + r + 1).min(full));
            (
                (hi - lo) as f32,
                (lo.max(off) - off, hi.min(off + local) - off),
            )
        };
        let cols: Vec<(f32, (usize, usize))> = (0..w).map(|x| span(x, x0, fw, w)).collect();
        let rows: Vec<(f32, (usize, usize))> = (0..h).map(|y| span(y, y0, fh, h)).collect();
        let inv_count = rows
            .iter()
            .flat_map(|(ry, _)| cols.iter().map(move |(cx, _)| 1.0 / (ry * cx)))
            .collect();
        BoxMean {
            w,
            h,
            cols: cols.into_iter().map(|c| c.1).collect(),
            rows: rows.into_iter().map(|r| r.1).collect(),
            inv_count,
        }
    }

    /// The window means of `src` (`w x h`, row-major). Pixels of the frame outside the local window
    /// count as 0 (the callers only filter where they are).
    fn mean(&self, src: &[f32]) -> Vec<f32> {
        let (w, h) = (self.w, self.h);
        // Along rows.
        let mut across = vec![0.0f64; w * h];
        let mut prefix = vec![0.0f64; w.max(h) + 1];
        for y in 0..h {
            let row = &src[y * w..(y + 1) * w];
            for (x, &v) in row.iter().enumerate() {
                prefix[x + 1] = prefix[x] + v as f64;
            }
            for (x, &(lo, hi)) in self.cols.iter().enumerate() {
                across[y * w + x] = prefix[hi] - prefix[lo];
            }
        }
        // Along columns: prefix sums of whole rows.
        let mut rows_prefix = vec![0.0f64; (h + 1) * w];
        for y in 0..h {
            for x in 0..w {
                rows_prefix[(y + 1) * w + x] = rows_prefix[y * w + x] + across[y * w + x];
            }
        }
        let mut out = vec![0.0f32; w * h];
        for (y, &(lo, hi)) in self.rows.iter().enumerate() {
            for x in 0..w {
                let s = rows_prefix[hi * w + x] - rows_prefix[lo * w + x];
                out[y * w + x] = s as f32 * self.inv_count[y * w + x];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random byte.
    fn noise(i: usize) -> u8 {
        ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
    }

    /// The filter written out directly: every window's sums over its clipped pixels, no prefix sums,
    /// no restriction to the mask's surroundings.
    fn brute(image: &RgbImage, mask: &BinaryMask, r: usize, eps: f64) -> Vec<f64> {
        let (w, h) = (mask.width as usize, mask.height as usize);
        let px = |x: usize, y: usize| -> [f64; 3] {
            let p = image.get_pixel(x as u32, y as u32).0;
            [
                p[0] as f64 / 255.0,
                p[1] as f64 / 255.0,
                p[2] as f64 / 255.0,
            ]
        };
        let pv = |x: usize, y: usize| (mask.data[y * w + x] != 0) as u8 as f64;
        let win = |c: usize, n: usize| (c.saturating_sub(r), (c + r + 1).min(n));
        let mut ab = vec![([0.0f64; 3], 0.0f64); w * h];
        for y in 0..h {
            for x in 0..w {
                let ((xl, xh), (yl, yh)) = (win(x, w), win(y, h));
                let cnt = ((xh - xl) * (yh - yl)) as f64;
                let (mut mi, mut mp, mut mip, mut mii) = ([0.0; 3], 0.0, [0.0; 3], [[0.0; 3]; 3]);
                for yy in yl..yh {
                    for xx in xl..xh {
                        let (i, p) = (px(xx, yy), pv(xx, yy));
                        mp += p / cnt;
                        for c in 0..3 {
                            mi[c] += i[c] / cnt;
                            mip[c] += i[c] * p / cnt;
                            for d in 0..3 {
                                mii[c][d] += i[c] * i[d] / cnt;
                            }
                        }
                    }
                }
                let mut s = [[0.0; 3]; 3];
                let mut cov = [0.0; 3];
                for c in 0..3 {
                    cov[c] = mip[c] - mi[c] * mp;
                    for d in 0..3 {
                        s[c][d] = mii[c][d] - mi[c] * mi[d] + if c == d { eps } else { 0.0 };
                    }
                }
                // Gaussian elimination on the 3x3 system.
                let mut m = [
                    [s[0][0], s[0][1], s[0][2], cov[0]],
                    [s[1][0], s[1][1], s[1][2], cov[1]],
                    [s[2][0], s[2][1], s[2][2], cov[2]],
                ];
                for i in 0..3 {
                    for j in i + 1..3 {
                        let f = m[j][i] / m[i][i];
                        let pivot = m[i];
                        for (v, p) in m[j].iter_mut().zip(pivot).skip(i) {
                            *v -= f * p;
                        }
                    }
                }
                let mut a = [0.0; 3];
                for i in (0..3).rev() {
                    let rest: f64 = (i + 1..3).map(|k| m[i][k] * a[k]).sum();
                    a[i] = (m[i][3] - rest) / m[i][i];
                }
                let b = mp - a[0] * mi[0] - a[1] * mi[1] - a[2] * mi[2];
                ab[y * w + x] = (a, b);
            }
        }
        let mut q = vec![0.0; w * h];
        for y in 0..h {
            for x in 0..w {
                let ((xl, xh), (yl, yh)) = (win(x, w), win(y, h));
                let cnt = ((xh - xl) * (yh - yl)) as f64;
                let (mut ma, mut mb) = ([0.0; 3], 0.0);
                for yy in yl..yh {
                    for xx in xl..xh {
                        let (a, b) = ab[yy * w + xx];
                        mb += b / cnt;
                        for c in 0..3 {
                            ma[c] += a[c] / cnt;
                        }
                    }
                }
                let i = px(x, y);
                q[y * w + x] = ma[0] * i[0] + ma[1] * i[1] + ma[2] * i[2] + mb;
            }
        }
        q
    }

    #[test]
    fn agrees_with_the_filter_written_out_on_the_whole_frame() {
        // A noisy 40x30 image, a mask in its middle: the result, computed near the mask only, equals
        // the direct computation over the whole frame everywhere (0 far from the mask).
        let (w, h) = (40u32, 30u32);
        let image = RgbImage::from_fn(w, h, |x, y| {
            let i = (y * w + x) as usize;
            image::Rgb([noise(3 * i), noise(3 * i + 1), noise(3 * i + 2)])
        });
        let mut mask = BinaryMask::empty(w, h);
        for y in 12..18 {
            for x in 17..24 {
                mask.data[(y * w + x) as usize] = 1;
            }
        }
        for r in [1usize, 2] {
            let soft = guided_filter(&image, &mask, r, 1e-2, 1).unwrap();
            assert!(
                soft.width < w && soft.height < h,
                "the window is the mask's surroundings"
            );
            let want = brute(&image, &mask, r, 1e-2);
            for y in 0..h {
                for x in 0..w {
                    let (got, want) = (soft.at(x, y) as f64, want[(y * w + x) as usize]);
                    assert!(
                        (got - want).abs() < 1e-4,
                        "r {r} ({x},{y}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_outline_moves_to_the_colour_edge() {
        // Red left of column 20, blue from it on, a little noise. A mask that stops two pixels past
        // the edge, or two pixels short of it (as an upsampled grid mask does), stops at the edge once
        // refined.
        let (w, h) = (48u32, 32u32);
        let image = RgbImage::from_fn(w, h, |x, y| {
            let n = noise((y * w + x) as usize) / 32;
            if x < 20 {
                image::Rgb([200 + n, 20 + n, 30])
            } else {
                image::Rgb([30, 40 + n, 210 - n])
            }
        });
        for right in [22u32, 18] {
            let mut mask = BinaryMask::empty(w, h);
            for y in 4..28 {
                for x in 6..right {
                    mask.data[(y * w + x) as usize] = 1;
                }
            }
            // Exact, and fast (fits on 2x2 blocks): the same outline.
            for step in [1, 2] {
                let soft = guided_filter(&image, &mask, 8, 1e-4, step).unwrap();
                // Rows a window away from the mask's top and bottom.
                for y in 12..20 {
                    for x in 10..20 {
                        let v = soft.at(x, y);
                        assert!(v > 0.5, "{right}, step {step}: ({x},{y}) {v}");
                    }
                    for x in 20..32 {
                        let v = soft.at(x, y);
                        assert!(v < 0.5, "{right}, step {step}: ({x},{y}) {v}");
                    }
                }
            }
        }
    }

    #[test]
    fn flat_regions_keep_the_mask_and_bad_input_gives_none() {
        let image = RgbImage::from_pixel(60, 40, image::Rgb([90, 90, 90]));
        let mut mask = BinaryMask::empty(60, 40);
        for y in 8..32 {
            for x in 10..50 {
                mask.data[y * 60 + x] = 1;
            }
        }
        for step in [1, 3] {
            let soft = guided_filter(&image, &mask, 1, 1e-4, step).unwrap();
            // Deep inside and far outside nothing changes.
            assert!((soft.at(30, 20) - 1.0).abs() < 1e-5, "step {step}");
            assert_eq!(soft.at(0, 0), 0.0);
        }
        // As a frame mask: the pixels whose filtered value exceeds the threshold, nothing else.
        let soft = guided_filter(&image, &mask, 2, 1e-4, 1).unwrap();
        let m = soft.above(0.5, 60, 40);
        for y in 0..40 {
            for x in 0..60 {
                assert_eq!(m.data[(y * 60 + x) as usize] != 0, soft.at(x, y) > 0.5);
            }
        }
        assert!(guided_filter(&image, &BinaryMask::empty(60, 40), 2, 1e-4, 1).is_none());
        assert!(guided_filter(&image, &BinaryMask::empty(40, 60), 2, 1e-4, 1).is_none());
    }
}
