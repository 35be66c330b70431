//! COCO run-length encoding of binary masks: column-major runs starting with background, and the
//! compressed string form that pycocotools writes and reads (`counts` as text).

use serde::{Deserialize, Serialize};

use super::mask::BinaryMask;

/// A mask in COCO's compressed RLE form, as it appears in instances JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskRle {
    /// `[height, width]`, in this order as COCO writes it.
    pub size: [u32; 2],
    /// Column-major run lengths in COCO's compressed string form (pycocotools reads it).
    pub counts: String,
}

/// Column-major run lengths of `mask`, the first run counting background pixels (possibly 0).
pub fn runs(mask: &BinaryMask) -> Vec<u32> {
    let (w, h) = (mask.width as usize, mask.height as usize);
    let mut out = Vec::new();
    let mut current = 0u8;
    let mut run = 0u32;
    for x in 0..w {
        for y in 0..h {
            let v = (mask.data[y * w + x] != 0) as u8;
            if v != current {
                out.push(run);
                run = 0;
                current = v;
            }
            run += 1;
        }
    }
    out.push(run);
    out
}

/// As [`runs`], scanning only the pixels of `bbox` (`xyxy`; every pixel outside it is background).
pub fn runs_in(mask: &BinaryMask, bbox: [u32; 4]) -> Vec<u32> {
    struct Runs {
        out: Vec<u32>,
        current: u8,
        run: u32,
    }
    impl Runs {
        fn add(&mut self, v: u8, n: u32) {
            if n == 0 {
                return;
            }
            if v != self.current {
                self.out.push(self.run);
                self.run = 0;
                self.current = v;
            }
            self.run += n;
        }
    }
    let (w, h) = (mask.width as usize, mask.height as usize);
    let x1 = (bbox[2] as usize).min(w);
    let y1 = (bbox[3] as usize).min(h);
    let x0 = (bbox[0] as usize).min(x1);
    let y0 = (bbox[1] as usize).min(y1);
    let mut r = Runs {
        out: Vec::new(),
        current: 0,
        run: 0,
    };
    r.add(0, (x0 * h) as u32);
    for x in x0..x1 {
        r.add(0, y0 as u32);
        for y in y0..y1 {
            r.add((mask.data[y * w + x] != 0) as u8, 1);
        }
        r.add(0, (h - y1) as u32);
    }
    r.add(0, ((w - x1) * h) as u32);
    r.out.push(r.run);
    r.out
}

/// pycocotools' string form of run lengths: each run, from the third on, as the difference to the run two
/// before it, written in 5-bit groups (0x20 = more follows, 0x10 = sign) offset by ASCII '0'.
pub fn runs_to_string(runs: &[u32]) -> String {
    let mut s = String::new();
    for (i, &r) in runs.iter().enumerate() {
        let mut x = r as i64;
        if i > 2 {
            x -= runs[i - 2] as i64;
        }
        loop {
            let mut c = (x & 0x1f) as u8;
            x >>= 5;
            let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            s.push((c + 48) as char);
            if !more {
                break;
            }
        }
    }
    s
}

/// The inverse of [`runs_to_string`]; `None` for text that is not a valid encoding.
pub fn string_to_runs(s: &str) -> Option<Vec<u32>> {
    let b = s.as_bytes();
    let mut out: Vec<u32> = Vec::new();
    let mut p = 0;
    while p < b.len() {
        let mut x: i64 = 0;
        let mut k = 0;
        loop {
            let c = b.get(p)?.checked_sub(48)? as i64;
            if k > 12 {
                return None;
            }
            x |= (c & 0x1f) << (5 * k);
            p += 1;
            k += 1;
            if c & 0x20 == 0 {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        if out.len() > 2 {
            x += out[out.len() - 2] as i64;
        }
        out.push(u32::try_from(x).ok()?);
    }
    Some(out)
}

impl MaskRle {
    /// The compressed RLE of the whole `mask`.
    pub fn encode(mask: &BinaryMask) -> Self {
        MaskRle {
            size: [mask.height, mask.width],
            counts: runs_to_string(&runs(mask)),
        }
    }

    /// As [`MaskRle::encode`] for a mask known to lie inside `bbox` (`xyxy`): scans only the box.
    pub fn encode_in(mask: &BinaryMask, bbox: [u32; 4]) -> Self {
        MaskRle {
            size: [mask.height, mask.width],
            counts: runs_to_string(&runs_in(mask, bbox)),
        }
    }

    /// Decodes back into a mask; `None` when the runs do not cover exactly `height x width` pixels.
    pub fn decode(&self) -> Option<BinaryMask> {
        let [h, w] = self.size;
        let runs = string_to_runs(&self.counts)?;
        let total: u64 = runs.iter().map(|&r| r as u64).sum();
        if total != h as u64 * w as u64 {
            return None;
        }
        let mut m = BinaryMask::empty(w, h);
        let mut i = 0usize;
        for (k, &r) in runs.iter().enumerate() {
            if k % 2 == 1 {
                for j in i..i + r as usize {
                    let (x, y) = (j / h as usize, j % h as usize);
                    m.data[y * w as usize + x] = 1;
                }
            }
            i += r as usize;
        }
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_a_box_equal_full_runs() {
        let mut m = BinaryMask::empty(7, 5);
        for &(x, y) in &[(1, 0), (1, 1), (2, 4), (3, 4), (4, 2), (5, 0)] {
            m.data[y * 7 + x] = 1;
        }
        let b = m.bbox_xyxy().unwrap();
        assert_eq!(runs_in(&m, b), runs(&m));
        assert_eq!(runs_in(&m, [0, 0, 7, 5]), runs(&m));
        let mut full = BinaryMask::empty(3, 2);
        full.data.iter_mut().for_each(|v| *v = 1);
        assert_eq!(runs_in(&full, [0, 0, 3, 2]), vec![0, 6]);
        assert_eq!(runs_in(&BinaryMask::empty(3, 2), [1, 1, 1, 1]), vec![6]);
    }

    fn mask(w: u32, h: u32, on: &[(u32, u32)]) -> BinaryMask {
        let mut m = BinaryMask::empty(w, h);
        for &(x, y) in on {
            m.data[(y * w + x) as usize] = 1;
        }
        m
    }

    #[test]
    fn runs_are_column_major_starting_with_background() {
        // 3x2 image, pixel (x=0,y=1) and (x=1,y=0) set: column-major order is
        // (0,0)=0 (0,1)=1 (1,0)=1 (1,1)=0 (2,0)=0 (2,1)=0
        let m = mask(3, 2, &[(0, 1), (1, 0)]);
        assert_eq!(runs(&m), vec![1, 2, 3]);
        let full = mask(1, 2, &[(0, 0), (0, 1)]);
        assert_eq!(runs(&full), vec![0, 2]);
    }

    #[test]
    fn string_form_matches_pycocotools() {
        // Each expected string is what pycocotools.mask.encode returned for the same array.
        // [[0,1,0],[1,0,0]] -> b'123'
        assert_eq!(
            MaskRle::encode(&mask(3, 2, &[(0, 1), (1, 0)])).counts,
            "123"
        );
        // 40x1 zeros -> b'X1'
        assert_eq!(MaskRle::encode(&BinaryMask::empty(1, 40)).counts, "X1");
        // 100x100 with ones at rows 40..50, columns 20..30 -> b'ho1:j200000000000000000`i6'
        let mut on = Vec::new();
        for y in 40..50 {
            for x in 20..30 {
                on.push((x, y));
            }
        }
        let rle = MaskRle::encode(&mask(100, 100, &on));
        assert_eq!(rle.counts, "ho1:j200000000000000000`i6");
        assert_eq!(rle.size, [100, 100]);
    }

    #[test]
    fn round_trip_random_masks() {
        let mut seed = 7u64;
        for _ in 0..50 {
            let w = 1 + (seed % 37) as u32;
            let h = 1 + (seed / 37 % 29) as u32;
            let mut m = BinaryMask::empty(w, h);
            for v in m.data.iter_mut() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *v = ((seed >> 33) % 3 == 0) as u8;
            }
            let rle = MaskRle::encode(&m);
            assert_eq!(rle.decode().unwrap(), m);
        }
    }

    #[test]
    fn bad_strings_are_rejected() {
        assert_eq!(
            MaskRle {
                size: [2, 2],
                counts: "5".into()
            }
            .decode(),
            None
        );
        assert_eq!(string_to_runs("\u{1}"), None);
    }
}
