//! COCO mask AP of predictions against ground truth, by the protocol of pycocotools' COCOeval
//! (iouType `segm`, area range `all`, at most 100 detections per image and class): IoU thresholds
//! 0.50:0.05:0.95, 101 recall points, greedy matching by score, crowd regions ignored. Polygons are
//! rasterised like pycocotools, so the numbers agree with it (CI checks within 1e-3).
//!
//! Predictions are a COCO document (as the `coco` sink writes: images matched to the ground truth by
//! `file_name`) or a plain results list (`image_id` as in the ground truth).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::coco::{self, Segmentation};
use crate::error::Error;
use crate::post::poly::polygons_mask;
use crate::post::rle::runs;

const MAX_DETS: usize = 100;

/// Which categories to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Categories {
    /// Every ground-truth category (COCOeval's default).
    All,
    /// The categories the prediction document lists (for a bank that knows only some classes).
    Pred,
    Ids(Vec<u32>),
}

/// Which images to score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Images {
    /// Every ground-truth image (COCOeval's default: an image without predictions is all misses).
    All,
    /// The ground-truth images the prediction document lists (labeled, with or without detections).
    Pred,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassAp {
    pub id: u32,
    pub name: String,
    /// Ground-truth instances (not crowd) on the scored images.
    pub instances: usize,
    /// `None` when the class has no ground truth on the scored images (COCOeval's -1).
    pub ap: Option<f64>,
    pub ap50: Option<f64>,
    /// Detections of this class on the scored images.
    pub detections: usize,
    /// Those of them on an image that holds no instance of the class (false positives whatever their mask).
    pub absent: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CocoReport {
    pub ap: f64,
    pub ap50: f64,
    pub ap75: f64,
    pub images: usize,
    pub detections: usize,
    /// Detections of a class on an image that holds no instance of it.
    pub absent: usize,
    pub classes: Vec<ClassAp>,
}

struct Region {
    runs: Vec<u32>,
    area: u64,
}

struct Gt {
    region: Region,
    crowd: bool,
}

struct Det {
    region: Region,
    score: f64,
}

/// Per image and class, after matching: for every threshold, whether each detection matched and whether
/// it is ignored (matched to a crowd region).
struct ImageEval {
    scores: Vec<f64>,
    matched: Vec<Vec<bool>>,
    ignored: Vec<Vec<bool>>,
    gt_counted: usize,
}

fn iou_thresholds() -> Vec<f64> {
    let step = (0.95f64 - 0.5) / 9.0;
    let mut t: Vec<f64> = (0..10).map(|i| i as f64 * step + 0.5).collect();
    t[9] = 0.95;
    t
}

fn recall_thresholds() -> Vec<f64> {
    let mut r: Vec<f64> = (0..101).map(|i| i as f64 * 0.01).collect();
    r[100] = 1.0;
    r
}

/// Largest ground-truth image scored, in pixels (as `runtime.max_frame_pixels`' default): each of its
/// polygons is drawn on a mask of this size.
pub const MAX_IMAGE_PIXELS: u64 = 8192 * 8192;

fn region(seg: Segmentation, w: u32, h: u32) -> Result<Region, String> {
    let runs = match seg {
        Segmentation::Runs(r, [rh, rw]) => {
            if (rw, rh) != (w, h) {
                return Err(format!("RLE size {rw}x{rh} is not the image's {w}x{h}"));
            }
            r
        }
        Segmentation::Polygons(p) => runs(&polygons_mask(&p, w, h)),
    };
    let area = runs.iter().skip(1).step_by(2).map(|&r| r as u64).sum();
    Ok(Region { runs, area })
}

/// Pixels in both regions, walking their runs together.
fn intersection(a: &[u32], b: &[u32]) -> u64 {
    let (mut i, mut j) = (0usize, 0usize);
    let (mut ra, mut rb) = (
        a.first().copied().unwrap_or(0),
        b.first().copied().unwrap_or(0),
    );
    let mut inter = 0u64;
    loop {
        let step = ra.min(rb);
        if i % 2 == 1 && j % 2 == 1 {
            inter += step as u64;
        }
        ra -= step;
        rb -= step;
        if ra == 0 {
            i += 1;
            match a.get(i) {
                Some(&r) => ra = r,
                None => break,
            }
        }
        if rb == 0 {
            j += 1;
            match b.get(j) {
                Some(&r) => rb = r,
                None => break,
            }
        }
    }
    inter
}

fn iou(d: &Region, g: &Gt) -> f64 {
    let inter = intersection(&d.runs, &g.region.runs) as f64;
    let denom = if g.crowd {
        d.area as f64
    } else {
        (d.area + g.region.area) as f64 - inter
    };
    if denom > 0.0 {
        inter / denom
    } else {
        0.0
    }
}

fn evaluate_image(gts: &[&Gt], dets: &mut Vec<&Det>, thresholds: &[f64]) -> Option<ImageEval> {
    if gts.is_empty() && dets.is_empty() {
        return None;
    }
    // Detections by score (stable), at most MAX_DETS; ground truth with crowds last (stable).
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    dets.truncate(MAX_DETS);
    let mut order: Vec<usize> = (0..gts.len()).collect();
    order.sort_by_key(|&k| gts[k].crowd);
    let gts: Vec<&Gt> = order.iter().map(|&k| gts[k]).collect();
    let ious: Vec<Vec<f64>> = dets
        .iter()
        .map(|d| gts.iter().map(|g| iou(&d.region, g)).collect())
        .collect();
    let mut matched = vec![vec![false; dets.len()]; thresholds.len()];
    let mut ignored = vec![vec![false; dets.len()]; thresholds.len()];
    for (t, &thr) in thresholds.iter().enumerate() {
        let mut taken = vec![false; gts.len()];
        for d in 0..dets.len() {
            let mut best = thr.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for g in 0..gts.len() {
                if taken[g] && !gts[g].crowd {
                    continue;
                }
                // Past the regular regions once one matched: crowds only if nothing else did.
                if m.is_some_and(|m| !gts[m].crowd) && gts[g].crowd {
                    break;
                }
                if ious[d][g] < best {
                    continue;
                }
                best = ious[d][g];
                m = Some(g);
            }
            if let Some(g) = m {
                ignored[t][d] = gts[g].crowd;
                matched[t][d] = true;
                taken[g] = true;
            }
        }
    }
    Some(ImageEval {
        scores: dets.iter().map(|d| d.score).collect(),
        matched,
        ignored,
        gt_counted: gts.iter().filter(|g| !g.crowd).count(),
    })
}

/// Precision at each recall threshold for one class and one IoU threshold index; `None` without
/// ground truth.
fn precision_curve(evals: &[ImageEval], t: usize, recalls: &[f64]) -> Option<Vec<f64>> {
    let npig: usize = evals.iter().map(|e| e.gt_counted).sum();
    if npig == 0 {
        return None;
    }
    let mut all: Vec<(f64, bool, bool)> = Vec::new();
    for e in evals {
        for d in 0..e.scores.len() {
            all.push((e.scores[d], e.matched[t][d], e.ignored[t][d]));
        }
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0.0f64, 0.0f64);
    let mut rc = Vec::with_capacity(all.len());
    let mut pr = Vec::with_capacity(all.len());
    for &(_, m, ig) in &all {
        if ig {
            // Ignored detections change neither count but keep their place (as in COCOeval).
        } else if m {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        rc.push(tp / npig as f64);
        pr.push(tp / (fp + tp + f64::EPSILON));
    }
    for i in (1..pr.len()).rev() {
        if pr[i] > pr[i - 1] {
            pr[i - 1] = pr[i];
        }
    }
    Some(
        recalls
            .iter()
            .map(|&r| {
                let k = rc.partition_point(|&x| x < r);
                pr.get(k).copied().unwrap_or(0.0)
            })
            .collect(),
    )
}

/// Scores the predictions in the file `pred` against the ground truth in the file `gt`.
pub fn evaluate(
    pred: &Path,
    gt: &Path,
    categories: &Categories,
    images: Images,
) -> Result<CocoReport, Error> {
    let (p, g) = (coco::read(pred)?, coco::read(gt)?);
    evaluate_json((&p, pred), (&g, gt), categories, images)
}

/// Scores predictions against ground truth, each given as its bytes and the file name its errors give.
pub fn evaluate_json(
    (p, pred): (&[u8], &Path),
    (g, gt): (&[u8], &Path),
    categories: &Categories,
    images: Images,
) -> Result<CocoReport, Error> {
    let gerr = |msg: String| Error::Prompt {
        path: gt.to_path_buf(),
        msg,
    };
    let perr = |msg: String| Error::Prompt {
        path: pred.to_path_buf(),
        msg,
    };
    let g = coco::Document::from_slice(g).map_err(gerr)?;
    let p = coco::Predictions::from_slice(p).map_err(perr)?;

    // Ground truth images and categories.
    let mut sizes: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
    let mut by_file: HashMap<&str, u64> = HashMap::new();
    for im in &g.images {
        let (w, h) = im.size().map_err(gerr)?;
        if w as u64 * h as u64 > MAX_IMAGE_PIXELS {
            return Err(gerr(format!(
                "image {} is {w}x{h}, over the {MAX_IMAGE_PIXELS} pixels scored",
                im.id
            )));
        }
        sizes.insert(im.id, (w, h));
        by_file.insert(&im.file_name, im.id);
    }
    let names: BTreeMap<u32, String> = g
        .categories
        .iter()
        .flatten()
        .map(|c| (c.id, c.name.clone()))
        .collect();

    // Predictions: a document (images by file name) or a results list (ground-truth image ids), as
    // annotations on ground-truth image ids (`None`: an image the ground truth does not hold).
    let (pred_anns, pred_images, pred_cats): (Vec<(Option<u64>, &coco::Annotation)>, _, Vec<u32>) =
        match &p {
            coco::Predictions::Results(a) => (
                a.iter().map(|a| (Some(a.image_id), a)).collect(),
                None,
                vec![],
            ),
            coco::Predictions::Document(d) => {
                let mut map: HashMap<u64, u64> = HashMap::new();
                let mut listed = Vec::new();
                for im in &d.images {
                    let Some(&gid) = by_file.get(im.file_name.as_str()) else {
                        return Err(perr(format!(
                            "image {} is not in the ground truth {}",
                            im.file_name,
                            gt.display()
                        )));
                    };
                    map.insert(im.id, gid);
                    listed.push(gid);
                }
                let anns = d
                    .annotations()
                    .map_err(perr)?
                    .iter()
                    .map(|a| (map.get(&a.image_id).copied(), a))
                    .collect();
                let cats = d.categories.iter().flatten().map(|c| c.id).collect();
                (anns, Some(listed), cats)
            }
        };

    let img_ids: Vec<u64> = match (images, &pred_images) {
        (Images::Pred, Some(list)) => {
            let mut v = list.clone();
            v.sort_unstable();
            v.dedup();
            v
        }
        (Images::Pred, None) => {
            let mut v: Vec<u64> = pred_anns.iter().filter_map(|a| a.0).collect();
            v.sort_unstable();
            v.dedup();
            v
        }
        (Images::All, _) => sizes.keys().copied().collect(),
    };
    let cat_ids: Vec<u32> = match categories {
        Categories::All => names.keys().copied().collect(),
        Categories::Pred => {
            if pred_cats.is_empty() {
                return Err(perr(
                    "lists no `categories`; give the category ids to score instead".into(),
                ));
            }
            pred_cats.clone()
        }
        Categories::Ids(v) => v.clone(),
    };
    let wanted_img: std::collections::HashSet<u64> = img_ids.iter().copied().collect();
    let wanted_cat: std::collections::HashSet<u32> = cat_ids.iter().copied().collect();

    let mut gts: HashMap<(u64, u32), Vec<Gt>> = HashMap::new();
    for (k, a) in g.annotations.iter().flatten().enumerate() {
        let (img, cat) = (a.image_id, a.category_id);
        if !wanted_img.contains(&img) || !wanted_cat.contains(&cat) {
            continue;
        }
        let &(w, h) = sizes
            .get(&img)
            .ok_or_else(|| gerr(format!("annotation {k}: image {img} is not listed")))?;
        let seg = a
            .segmentation()
            .map_err(|e| gerr(format!("annotation {k}: {e}")))?
            .ok_or_else(|| gerr(format!("annotation {k} has no segmentation")))?;
        let region = region(seg, w, h).map_err(|e| gerr(format!("annotation {k}: {e}")))?;
        gts.entry((img, cat)).or_default().push(Gt {
            region,
            crowd: a.iscrowd != 0,
        });
    }
    let mut dets: HashMap<(u64, u32), Vec<Det>> = HashMap::new();
    let mut detections = 0usize;
    for (k, &(img, a)) in pred_anns.iter().enumerate() {
        let Some(img) = img else {
            continue; // an image the ground truth does not hold (documents only)
        };
        let cat = a.category_id;
        if !wanted_img.contains(&img) || !wanted_cat.contains(&cat) {
            continue;
        }
        let &(w, h) = sizes.get(&img).ok_or_else(|| {
            perr(format!(
                "result {k}: image_id {img} is not in the ground truth"
            ))
        })?;
        let score = a
            .score
            .ok_or_else(|| perr(format!("result {k} has no score")))?;
        let seg = a
            .segmentation()
            .map_err(|e| perr(format!("result {k}: {e}")))?
            .ok_or_else(|| perr(format!("result {k} has no segmentation")))?;
        let region = region(seg, w, h).map_err(|e| perr(format!("result {k}: {e}")))?;
        dets.entry((img, cat))
            .or_default()
            .push(Det { region, score });
        detections += 1;
    }
    let absent_in = |c: u32| -> (usize, usize) {
        dets.iter()
            .filter(|((_, cat), _)| *cat == c)
            .fold((0, 0), |(n, a), (key, d)| {
                (
                    n + d.len(),
                    a + if gts.contains_key(key) { 0 } else { d.len() },
                )
            })
    };

    let thresholds = iou_thresholds();
    let recalls = recall_thresholds();
    let empty_g: Vec<Gt> = vec![];
    let empty_d: Vec<Det> = vec![];
    let mut classes = Vec::new();
    // precision[t] collects every class's curve at threshold t.
    let mut all_curves: Vec<Vec<Vec<f64>>> = vec![vec![]; thresholds.len()];
    for &c in &cat_ids {
        let mut evals = Vec::new();
        let mut instances = 0;
        for &i in &img_ids {
            let g: Vec<&Gt> = gts.get(&(i, c)).unwrap_or(&empty_g).iter().collect();
            instances += g.iter().filter(|g| !g.crowd).count();
            let mut d: Vec<&Det> = dets.get(&(i, c)).unwrap_or(&empty_d).iter().collect();
            if let Some(e) = evaluate_image(&g, &mut d, &thresholds) {
                evals.push(e);
            }
        }
        let curves: Vec<Option<Vec<f64>>> = (0..thresholds.len())
            .map(|t| precision_curve(&evals, t, &recalls))
            .collect();
        let mean = |cs: &[&Vec<f64>]| -> Option<f64> {
            let n: usize = cs.iter().map(|c| c.len()).sum();
            (n > 0).then(|| cs.iter().flat_map(|c| c.iter()).sum::<f64>() / n as f64)
        };
        let present: Vec<&Vec<f64>> = curves.iter().flatten().collect();
        let (detections, absent) = absent_in(c);
        classes.push(ClassAp {
            id: c,
            name: names.get(&c).cloned().unwrap_or_default(),
            instances,
            ap: mean(&present),
            ap50: curves[0].as_ref().and_then(|c| mean(&[c])),
            detections,
            absent,
        });
        for (t, cv) in curves.into_iter().enumerate() {
            if let Some(cv) = cv {
                all_curves[t].push(cv);
            }
        }
    }
    let mean_of = |ts: &[usize]| -> f64 {
        let vals: Vec<f64> = ts
            .iter()
            .flat_map(|&t| all_curves[t].iter().flatten().copied())
            .collect();
        if vals.is_empty() {
            -1.0
        } else {
            vals.iter().sum::<f64>() / vals.len() as f64
        }
    };
    Ok(CocoReport {
        ap: mean_of(&(0..thresholds.len()).collect::<Vec<_>>()),
        ap50: mean_of(&[0]),
        ap75: mean_of(&[5]),
        images: img_ids.len(),
        detections,
        absent: classes.iter().map(|c| c.absent).sum(),
        classes,
    })
}

impl CocoReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "mask AP {:.4}  AP50 {:.4}  AP75 {:.4}  ({} images, {} detections, {} classes)\n\
             detections of a class the image does not hold: {} ({:.1}%)\n\n\
             | id | class | instances | AP | AP50 | detections | on images without the class |\n\
             |---:|---|---:|---:|---:|---:|---:|\n",
            self.ap,
            self.ap50,
            self.ap75,
            self.images,
            self.detections,
            self.classes.len(),
            self.absent,
            100.0 * self.absent as f64 / self.detections.max(1) as f64
        );
        let f = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        for c in &self.classes {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                c.id,
                c.name,
                c.instances,
                f(c.ap),
                f(c.ap50),
                c.detections,
                c.absent
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_cocoeval_s() {
        let t = iou_thresholds();
        assert_eq!(t[0], 0.5);
        assert_eq!(t[5], 0.75);
        assert_eq!(t.len(), 10);
        assert_eq!(recall_thresholds()[50], 0.5);
    }

    #[test]
    fn run_intersection() {
        // 0 1 1 0 | 1 1 0 0   vs   1 1 0 0 | 1 0 0 0
        assert_eq!(intersection(&[1, 2, 1, 2, 2], &[0, 2, 2, 1, 3]), 2);
        assert_eq!(intersection(&[8], &[0, 8]), 0);
    }

    #[test]
    fn one_perfect_and_one_false_detection() {
        let dir = tempfile::tempdir().unwrap();
        let gt = dir.path().join("gt.json");
        let pred = dir.path().join("pred.json");
        std::fs::write(
            &gt,
            r#"{"images":[{"id":1,"file_name":"a.jpg","width":10,"height":10}],
               "annotations":[{"id":1,"image_id":1,"category_id":1,"iscrowd":0,
                 "segmentation":{"size":[10,10],"counts":[0,50,50]}}],
               "categories":[{"id":1,"name":"x"},{"id":2,"name":"y"}]}"#,
        )
        .unwrap();
        // A perfect match scored below a false positive: precision at every recall = 1/2.
        std::fs::write(
            &pred,
            r#"[{"image_id":1,"category_id":1,"score":0.9,"segmentation":{"size":[10,10],"counts":[50,50]}},
                {"image_id":1,"category_id":1,"score":0.5,"segmentation":{"size":[10,10],"counts":[0,50,50]}},
                {"image_id":1,"category_id":2,"score":0.4,"segmentation":{"size":[10,10],"counts":[0,50,50]}}]"#,
        )
        .unwrap();
        let r = evaluate(&pred, &gt, &Categories::All, Images::All).unwrap();
        assert!((r.ap - 0.5).abs() < 1e-9, "{}", r.ap);
        assert_eq!(r.classes[1].ap, None);
        assert_eq!(r.detections, 3);
        // The class-2 detection is on an image without class 2; the false class-1 one is not.
        assert_eq!((r.classes[0].detections, r.classes[0].absent), (2, 0));
        assert_eq!((r.classes[1].detections, r.classes[1].absent), (1, 1));
        assert_eq!(r.absent, 1);
        assert!(
            r.table().contains("does not hold: 1 (33.3%)"),
            "{}",
            r.table()
        );
    }
}
