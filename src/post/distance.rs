//! The exact Euclidean distance transform of a mask (Felzenszwalb & Huttenlocher's lower envelope of
//! parabolas, one pass per axis) and the mask's most interior pixel, where a simulated click goes.

use super::BinaryMask;

/// Stands for "no outside pixel on this line yet": larger than any squared distance in a frame, small
/// enough that sums with squared coordinates stay exact in f64.
const FAR: f64 = 1e12;

/// Squared Euclidean distance (in pixels) from every pixel of `mask` to the nearest pixel outside it,
/// row-major; 0 outside. Pixels beyond the frame count as outside, so a mask touching the border is
/// measured to the border.
pub fn distance_to_outside(mask: &BinaryMask) -> Vec<f64> {
    let (w, h) = (mask.width as usize, mask.height as usize);
    // One pixel of outside around the frame.
    let (pw, ph) = (w + 2, h + 2);
    let mut grid = vec![0.0f64; pw * ph];
    for y in 0..h {
        for x in 0..w {
            if mask.data[y * w + x] != 0 {
                grid[(y + 1) * pw + x + 1] = FAR;
            }
        }
    }
    let n = pw.max(ph);
    let mut line = vec![0.0f64; n];
    let mut out = vec![0.0f64; n];
    let mut scratch = Envelope::new(n);
    for x in 0..pw {
        for y in 0..ph {
            line[y] = grid[y * pw + x];
        }
        scratch.transform(&line[..ph], &mut out[..ph]);
        for y in 0..ph {
            grid[y * pw + x] = out[y];
        }
    }
    for y in 0..ph {
        let row = &mut grid[y * pw..(y + 1) * pw];
        line[..pw].copy_from_slice(row);
        scratch.transform(&line[..pw], &mut out[..pw]);
        row.copy_from_slice(&out[..pw]);
    }
    let mut d = vec![0.0f64; w * h];
    for y in 0..h {
        d[y * w..(y + 1) * w].copy_from_slice(&grid[(y + 1) * pw + 1..(y + 1) * pw + 1 + w]);
    }
    d
}

/// The pixel `(x, y)` of `mask` farthest from its outside (the maximum of [`distance_to_outside`]);
/// ties go to the first in row-major order. `None` for an empty mask.
pub fn most_interior_pixel(mask: &BinaryMask) -> Option<[u32; 2]> {
    let d = distance_to_outside(mask);
    let mut best: Option<(usize, f64)> = None;
    for (i, &v) in d.iter().enumerate() {
        if v > 0.0 && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    let w = mask.width as usize;
    best.map(|(i, _)| [(i % w) as u32, (i / w) as u32])
}

/// Buffers of the one-dimensional transform.
struct Envelope {
    /// Positions of the parabolas in the lower envelope.
    v: Vec<usize>,
    /// Boundaries between them.
    z: Vec<f64>,
}

impl Envelope {
    fn new(n: usize) -> Self {
        Envelope {
            v: vec![0; n],
            z: vec![0.0; n + 1],
        }
    }

    /// `out[q] = min_p (q - p)^2 + f[p]`.
    fn transform(&mut self, f: &[f64], out: &mut [f64]) {
        let n = f.len();
        let (v, z) = (&mut self.v, &mut self.z);
        let mut k = 0usize;
        v[0] = 0;
        z[0] = f64::NEG_INFINITY;
        z[1] = f64::INFINITY;
        for q in 1..n {
            let fq = f[q] + (q * q) as f64;
            // z[0] is -inf, so k never goes below 0.
            let s = loop {
                let p = v[k];
                let s = (fq - (f[p] + (p * p) as f64)) / (2.0 * q as f64 - 2.0 * p as f64);
                if s <= z[k] {
                    k -= 1;
                } else {
                    break s;
                }
            };
            k += 1;
            v[k] = q;
            z[k] = s;
            z[k + 1] = f64::INFINITY;
        }
        k = 0;
        for (q, o) in out.iter_mut().enumerate().take(n) {
            while z[k + 1] < q as f64 {
                k += 1;
            }
            let p = v[k];
            let dq = q as f64 - p as f64;
            *o = dq * dq + f[p];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(mask: &BinaryMask) -> Vec<f64> {
        let (w, h) = (mask.width as i64, mask.height as i64);
        let inside = |x: i64, y: i64| {
            x >= 0 && y >= 0 && x < w && y < h && mask.data[(y * w + x) as usize] != 0
        };
        let mut d = vec![0.0; (w * h) as usize];
        for y in 0..h {
            for x in 0..w {
                if !inside(x, y) {
                    continue;
                }
                let mut best = i64::MAX;
                for oy in -1..=h {
                    for ox in -1..=w {
                        if !inside(ox, oy) {
                            best = best.min((ox - x).pow(2) + (oy - y).pow(2));
                        }
                    }
                }
                d[(y * w + x) as usize] = best as f64;
            }
        }
        d
    }

    #[test]
    fn equals_brute_force_on_random_masks() {
        let mut seed = 12345u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (w, h, fill) in [(1, 1, 1), (7, 5, 8), (13, 11, 6), (20, 3, 9), (9, 17, 10)] {
            for _ in 0..5 {
                let mut m = BinaryMask::empty(w, h);
                for v in m.data.iter_mut() {
                    *v = (next() % 10 < fill) as u8;
                }
                assert_eq!(distance_to_outside(&m), brute(&m), "{w}x{h}");
            }
        }
    }

    #[test]
    fn interior_of_a_rectangle_and_ties() {
        // A 5x3 block at (2, 1) in a 10x6 frame: its middle row is farthest, first pixel of it wins.
        let mut m = BinaryMask::empty(10, 6);
        for y in 1..4 {
            for x in 2..7 {
                m.data[y * 10 + x] = 1;
            }
        }
        // Distances on row 2 are 1, 4, 4, 4, 1 (squared): (3, 2) is the first of the maximum.
        assert_eq!(most_interior_pixel(&m), Some([3, 2]));
        assert_eq!(most_interior_pixel(&BinaryMask::empty(4, 4)), None);
        // A mask filling the frame is measured to the frame's border.
        let full = BinaryMask {
            width: 5,
            height: 5,
            data: vec![1; 25],
        };
        assert_eq!(most_interior_pixel(&full), Some([2, 2]));
    }
}
