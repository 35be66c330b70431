//! DAVIS semi-supervised evaluation of label PNGs: region similarity J (IoU) and boundary accuracy F
//! (boundary F-measure, tolerance ceil(0.008 x diagonal), matched by dilation with a disk), per object
//! mean / recall / decay, first and last frame excluded (Perazzi et al., CVPR 2016; the DAVIS toolkit).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Error;
use crate::palette;

/// Statistics of one measure over a sequence's frames.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stats {
    pub mean: f64,
    /// Share of frames scoring above 0.5.
    pub recall: f64,
    /// Mean of the first quarter of frames minus mean of the last quarter.
    pub decay: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectScore {
    pub sequence: String,
    pub object: u8,
    pub frames: usize,
    pub j: Stats,
    pub f: Stats,
}

#[derive(Debug, Clone, Serialize)]
pub struct DavisReport {
    pub objects: Vec<ObjectScore>,
    /// Per sequence: mean J, mean F, J&F over its objects.
    pub sequences: BTreeMap<String, [f64; 3]>,
    pub j_mean: f64,
    pub f_mean: f64,
    pub jf_mean: f64,
}

/// Jaccard index of two binary masks (1 when both are empty).
pub fn jaccard(pred: &[bool], gt: &[bool]) -> f64 {
    let (mut i, mut u) = (0u64, 0u64);
    for (&p, &g) in pred.iter().zip(gt) {
        i += (p && g) as u64;
        u += (p || g) as u64;
    }
    if u == 0 {
        1.0
    } else {
        i as f64 / u as f64
    }
}

/// One-pixel-wide boundary: pixels that differ from their right, lower or lower-right neighbour
/// (the DAVIS toolkit's `seg2bmap` for same-size maps).
pub fn boundary(seg: &[bool], w: usize, h: usize) -> Vec<bool> {
    let at = |x: usize, y: usize| seg[y * w + x];
    let mut b = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let v = at(x, y);
            let e = if x + 1 < w { at(x + 1, y) } else { false };
            let s = if y + 1 < h { at(x, y + 1) } else { false };
            let se = if x + 1 < w && y + 1 < h {
                at(x + 1, y + 1)
            } else {
                false
            };
            b[y * w + x] = if x + 1 == w && y + 1 == h {
                false
            } else if y + 1 == h {
                v != e
            } else if x + 1 == w {
                v != s
            } else {
                (v != e) || (v != s) || (v != se)
            };
        }
    }
    b
}

fn dilate(b: &[bool], w: usize, h: usize, r: i64) -> Vec<bool> {
    let offsets: Vec<(i64, i64)> = (-r..=r)
        .flat_map(|dy| (-r..=r).map(move |dx| (dx, dy)))
        .filter(|(dx, dy)| dx * dx + dy * dy <= r * r)
        .collect();
    let mut out = vec![false; w * h];
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            if !b[(y * w as i64 + x) as usize] {
                continue;
            }
            for (dx, dy) in &offsets {
                let (nx, ny) = (x + dx, y + dy);
                if nx >= 0 && ny >= 0 && nx < w as i64 && ny < h as i64 {
                    out[(ny * w as i64 + nx) as usize] = true;
                }
            }
        }
    }
    out
}

/// Boundary F-measure of a predicted mask against ground truth.
pub fn f_measure(pred: &[bool], gt: &[bool], w: usize, h: usize) -> f64 {
    let r = (0.008 * ((w * w + h * h) as f64).sqrt()).ceil() as i64;
    let (pb, gb) = (boundary(pred, w, h), boundary(gt, w, h));
    let (np, ng) = (
        pb.iter().filter(|&&v| v).count(),
        gb.iter().filter(|&&v| v).count(),
    );
    let (precision, recall) = match (np, ng) {
        (0, 0) => (1.0, 1.0),
        (0, _) => (1.0, 0.0),
        (_, 0) => (0.0, 1.0),
        _ => {
            let (pd, gd) = (dilate(&pb, w, h, r), dilate(&gb, w, h, r));
            let pm = pb.iter().zip(&gd).filter(|(a, b)| **a && **b).count();
            let gm = gb.iter().zip(&pd).filter(|(a, b)| **a && **b).count();
            (pm as f64 / np as f64, gm as f64 / ng as f64)
        }
    };
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

/// Mean, recall (> 0.5) and decay over 4 bins, as the DAVIS toolkit computes them.
pub fn stats(values: &[f64]) -> Stats {
    if values.is_empty() {
        return Stats {
            mean: f64::NAN,
            recall: f64::NAN,
            decay: f64::NAN,
        };
    }
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let recall = values.iter().filter(|&&v| v > 0.5).count() as f64 / n as f64;
    // Bin edges: round(linspace(1, n, 5)) - 1; bin i spans ids[i] ..= ids[i+1].
    let ids: Vec<usize> = (0..5)
        .map(|i| (1.0 + (n as f64 - 1.0) * i as f64 / 4.0 + 1e-10).round() as usize - 1)
        .collect();
    let bin_mean = |a: usize, b: usize| {
        let s = &values[a..=b.min(n - 1)];
        s.iter().sum::<f64>() / s.len() as f64
    };
    let decay = bin_mean(ids[0], ids[1]) - bin_mean(ids[3], ids[4]);
    Stats {
        mean,
        recall,
        decay,
    }
}

/// Whether a sequence's ground truth is binary (DAVIS-2016: every frame only 0 and 255, or only 0 and
/// 1), where any non-zero pixel is object 1; otherwise values are object ids and 255 marks void pixels.
fn is_binary(frames: &[palette::Labels]) -> bool {
    let only = |a: u8| {
        frames
            .iter()
            .all(|l| l.data.iter().all(|&v| v == 0 || v == a))
    };
    only(255) || only(1)
}

/// Object ids of `labels` (binary masks become object 1) and its void pixels (255 in multi-object
/// ground truth), which J and F leave out as the DAVIS toolkit does.
fn ids_and_void(labels: palette::Labels, binary: bool) -> (palette::Labels, Vec<bool>) {
    if binary {
        let data = labels.data.iter().map(|&v| (v != 0) as u8).collect();
        let void = vec![false; labels.data.len()];
        (palette::Labels { data, ..labels }, void)
    } else {
        let void = labels.data.iter().map(|&v| v == 255).collect();
        (labels, void)
    }
}

fn png_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::Source {
        source_name: dir.display().to_string(),
        msg: format!("cannot read the folder: {e}"),
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    Ok(files)
}

/// Evaluates one sequence: `gt` and `pred` folders of label PNGs with the same names.
pub fn evaluate_sequence(name: &str, pred: &Path, gt: &Path) -> Result<Vec<ObjectScore>, Error> {
    let files = png_files(gt)?;
    if files.len() < 3 {
        return Err(Error::Source {
            source_name: gt.display().to_string(),
            msg: "needs at least 3 annotated frames (the first and last are excluded)".into(),
        });
    }
    let gts = files
        .iter()
        .map(|f| palette::read(f))
        .collect::<Result<Vec<_>, _>>()?;
    let binary = is_binary(&gts);
    let mut gts = gts.into_iter().map(|g| ids_and_void(g, binary));
    let (first, _) = gts.next().expect("at least 3 frames");
    let mut objects: Vec<u8> = first
        .data
        .iter()
        .copied()
        .filter(|&v| v != 0 && v != 255)
        .collect();
    if first.data.iter().all(|&v| v <= 1) {
        objects = vec![1];
    }
    objects.sort_unstable();
    objects.dedup();
    let mut j: BTreeMap<u8, Vec<f64>> = BTreeMap::new();
    let mut f: BTreeMap<u8, Vec<f64>> = BTreeMap::new();
    for (file, (g, void)) in files[1..files.len() - 1].iter().zip(gts) {
        let pfile = pred.join(file.file_name().unwrap_or_default());
        if !pfile.is_file() {
            return Err(Error::Frame {
                frame: pfile.display().to_string(),
                msg: format!(
                    "prediction missing for ground-truth frame {}",
                    file.display()
                ),
            });
        }
        let p = palette::read(&pfile)?;
        // A binary prediction (0 and 255) of a one-object sequence is that object.
        let one = objects == [1] && (binary || p.data.iter().all(|&v| v == 0 || v == 255));
        let (p, _) = ids_and_void(p, one);
        if (p.width, p.height) != (g.width, g.height) {
            return Err(Error::Frame {
                frame: pfile.display().to_string(),
                msg: format!(
                    "is {}x{} but the ground truth is {}x{}",
                    p.width, p.height, g.width, g.height
                ),
            });
        }
        let (w, h) = (g.width as usize, g.height as usize);
        for &o in &objects {
            let pm: Vec<bool> = p
                .data
                .iter()
                .zip(&void)
                .map(|(&v, &x)| v == o && !x)
                .collect();
            let gm: Vec<bool> = g.data.iter().map(|&v| v == o).collect();
            j.entry(o).or_default().push(jaccard(&pm, &gm));
            f.entry(o).or_default().push(f_measure(&pm, &gm, w, h));
        }
    }
    Ok(objects
        .iter()
        .map(|o| ObjectScore {
            sequence: name.to_string(),
            object: *o,
            frames: j[o].len(),
            j: stats(&j[o]),
            f: stats(&f[o]),
        })
        .collect())
}

/// Evaluates every sequence folder of `gt` (or `gt` itself when it holds PNGs) against `pred`.
pub fn evaluate(pred: &Path, gt: &Path, only: &[String]) -> Result<DavisReport, Error> {
    let mut seqs: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    if png_files(gt)?.is_empty() {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(gt)
            .map_err(|e| Error::Source {
                source_name: gt.display().to_string(),
                msg: format!("cannot read: {e}"),
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            let name = d
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if only.is_empty() || only.contains(&name) {
                seqs.push((name.clone(), pred.join(&name), d));
            }
        }
    } else {
        let name = gt
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        seqs.push((name, pred.to_path_buf(), gt.to_path_buf()));
    }
    if seqs.is_empty() {
        return Err(Error::Source {
            source_name: gt.display().to_string(),
            msg: "no sequence to evaluate (expected PNGs, or folders of PNGs)".into(),
        });
    }
    let mut objects = Vec::new();
    for (name, p, g) in &seqs {
        objects.extend(evaluate_sequence(name, p, g)?);
    }
    let mut sequences = BTreeMap::new();
    for (name, _, _) in &seqs {
        let os: Vec<&ObjectScore> = objects.iter().filter(|o| &o.sequence == name).collect();
        let jm = os.iter().map(|o| o.j.mean).sum::<f64>() / os.len() as f64;
        let fm = os.iter().map(|o| o.f.mean).sum::<f64>() / os.len() as f64;
        sequences.insert(name.clone(), [jm, fm, (jm + fm) / 2.0]);
    }
    let j_mean = objects.iter().map(|o| o.j.mean).sum::<f64>() / objects.len() as f64;
    let f_mean = objects.iter().map(|o| o.f.mean).sum::<f64>() / objects.len() as f64;
    Ok(DavisReport {
        objects,
        sequences,
        j_mean,
        f_mean,
        jf_mean: (j_mean + f_mean) / 2.0,
    })
}

impl DavisReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<16} {:>3} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}\n",
            "sequence", "obj", "J-mean", "J-rec", "J-dec", "F-mean", "F-rec", "F-dec"
        );
        for o in &self.objects {
            s.push_str(&format!(
                "{:<16} {:>3} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4}\n",
                o.sequence,
                o.object,
                o.j.mean,
                o.j.recall,
                o.j.decay,
                o.f.mean,
                o.f.recall,
                o.f.decay
            ));
        }
        s.push_str(&format!(
            "overall: J {:.4}  F {:.4}  J&F {:.4}\n",
            self.j_mean, self.f_mean, self.jf_mean
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_of_a_square() {
        // 4x4 with a 2x2 square at (1,1): boundary marks pixels next to a change to the right/below.
        let mut seg = vec![false; 16];
        for (x, y) in [(1, 1), (2, 1), (1, 2), (2, 2)] {
            seg[y * 4 + x] = true;
        }
        let b = boundary(&seg, 4, 4);
        let on: Vec<usize> = (0..16).filter(|&i| b[i]).collect();
        // The same pixels as the DAVIS toolkit's seg2bmap (tools/crosscheck/davis_jf.py) marks.
        assert_eq!(on, vec![0, 1, 2, 4, 6, 8, 9, 10]);
    }

    #[test]
    fn identical_masks_score_one_and_empty_prediction_zero() {
        let mut gt = vec![false; 100 * 50];
        for y in 10..30 {
            for x in 20..60 {
                gt[y * 100 + x] = true;
            }
        }
        assert_eq!(jaccard(&gt, &gt), 1.0);
        assert_eq!(f_measure(&gt, &gt, 100, 50), 1.0);
        let empty = vec![false; 100 * 50];
        assert_eq!(jaccard(&empty, &gt), 0.0);
        assert_eq!(f_measure(&empty, &gt, 100, 50), 0.0);
        assert_eq!(f_measure(&empty, &empty, 100, 50), 1.0);
    }

    #[test]
    fn shift_within_tolerance_keeps_f_at_one() {
        // diag of 100x50 = 111.8 -> tolerance ceil(0.894) = 1 pixel.
        let mk = |dx: usize| {
            let mut m = vec![false; 100 * 50];
            for y in 10..30 {
                for x in 20 + dx..60 + dx {
                    m[y * 100 + x] = true;
                }
            }
            m
        };
        assert_eq!(f_measure(&mk(1), &mk(0), 100, 50), 1.0);
        assert!(f_measure(&mk(3), &mk(0), 100, 50) < 1.0);
        assert!((jaccard(&mk(1), &mk(0)) - 39.0 / 41.0).abs() < 1e-12);
    }

    #[test]
    fn decay_uses_four_bins() {
        let v: Vec<f64> = (0..8).map(|i| if i < 4 { 1.0 } else { 0.0 }).collect();
        let s = stats(&v);
        assert_eq!(s.mean, 0.5);
        assert_eq!(s.recall, 0.5);
        // ids = round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]: first bin 0..=2 mean 1, last 5..=7 mean 0.
        assert_eq!(s.decay, 1.0);
    }

    /// Ground truth with two objects and a void band (255), and a prediction that paints the void band
    /// as object 1 and misses one row of object 2: the void pixels are left out of J and F (as the DAVIS
    /// toolkit does), so object 1 scores 1.0 and object 2 what its missing row costs; read as pixels of
    /// the background, the band would have cost object 1 too.
    #[test]
    fn void_pixels_are_left_out_of_j_and_f() {
        let tmp = tempfile::tempdir().unwrap();
        let (gt_dir, pred_dir) = (tmp.path().join("gt"), tmp.path().join("pred"));
        std::fs::create_dir_all(&gt_dir).unwrap();
        std::fs::create_dir_all(&pred_dir).unwrap();
        let (w, h) = (40u32, 30u32);
        let mut gt = vec![0u8; (w * h) as usize];
        let mut pred = gt.clone();
        for y in 0..h as usize {
            for x in 0..w as usize {
                let i = y * w as usize + x;
                if (5..15).contains(&x) && (5..25).contains(&y) {
                    gt[i] = 1;
                    pred[i] = 1;
                }
                if (15..18).contains(&x) && (5..25).contains(&y) {
                    gt[i] = 255;
                    pred[i] = 1;
                }
                if (25..35).contains(&x) && (5..25).contains(&y) {
                    gt[i] = 2;
                    pred[i] = if y == 24 { 0 } else { 2 };
                }
            }
        }
        for n in 0..3 {
            let name = format!("{n:05}.png");
            palette::write(&gt_dir.join(&name), w, h, &gt).unwrap();
            palette::write(&pred_dir.join(&name), w, h, &pred).unwrap();
        }
        let scores = evaluate_sequence("void", &pred_dir, &gt_dir).unwrap();
        assert_eq!(scores.len(), 2);
        assert_eq!((scores[0].object, scores[0].frames), (1, 1));
        assert_eq!(scores[0].j.mean, 1.0);
        assert_eq!(scores[0].f.mean, 1.0);
        assert_eq!(scores[1].object, 2);
        assert!(
            (scores[1].j.mean - 190.0 / 200.0).abs() < 1e-12,
            "{:?}",
            scores[1].j
        );
        // Without the void rule the band would be false positives of object 1: J = 200 / 260.
        let band_as_background: Vec<bool> = gt.iter().map(|&v| v == 1).collect();
        let painted: Vec<bool> = pred.iter().map(|&v| v == 1).collect();
        assert!((jaccard(&painted, &band_as_background) - 200.0 / 260.0).abs() < 1e-12);
    }
}
