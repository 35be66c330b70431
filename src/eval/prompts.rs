//! How well the model segments an instance from one prompt on the same image: for every instance of a
//! COCO file (whose `bbox` is at least `min_size` both ways), a box (the mask's box) or a click (the
//! mask's most interior pixel) becomes the instance's prompt, decoded into its reference mask exactly as
//! `vprompt propagate` decodes a prompt (`decode/reference.rs`, with `focus` as `job.focus`), and the
//! mask is scored by IoU against the instance. The filled box is the baseline. Reading COCO segmentations is `bank::exemplars`; masks are `post/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bank::exemplars::Shape;
use crate::coco;
use crate::decode::reference::reference_mask;
use crate::error::{Error, Result};
use crate::model::{Model, Preprocessor, QueryInput};
use crate::post::distance::most_interior_pixel;
use crate::post::BinaryMask;
use crate::prompt::ObjectPrompt;
use crate::source::read_rgb;
use crate::spec::FocusSpec;

/// The prompt each instance gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptKind {
    /// The tight box of the instance's mask, as one box row (its centre point for a `points` model).
    Box,
    /// One point row at the mask's most interior pixel (maximum of its distance transform).
    Click,
}

/// Which of the file's images, by file name order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    All,
    /// The first half (COCO128's exemplar pool: the 64 names that sort first).
    Pool,
    /// The second half (COCO128's evaluation images).
    Eval,
}

#[derive(Debug, Clone)]
pub struct PromptEvalOptions {
    pub gt: PathBuf,
    pub images: PathBuf,
    pub prompt: PromptKind,
    /// Instances whose `bbox` (else mask box) is narrower or lower than this (pixels) are left out.
    pub min_size: u32,
    pub split: Split,
    /// At most this many images (after the split, in file name order).
    pub limit: Option<usize>,
    /// Looking closer on crops around the prompt (`job.focus`).
    pub focus: FocusSpec,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub size: String,
    pub instances: usize,
    /// Mean IoU of the model's masks; `None` without instances.
    pub miou_model: Option<f64>,
    /// Mean IoU of the filled boxes.
    pub miou_box: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptReport {
    pub gt: String,
    pub prompt: PromptKind,
    pub model: String,
    /// The decoder's query input (`points` or `anchors`): with `points`, a box is sent as its centre.
    pub query_input: String,
    pub split: Split,
    pub min_size: u32,
    /// Whether the prompt was also decoded on crops around it (`--focus on`).
    pub focus: bool,
    pub images: usize,
    /// Images of the split that are not in the images folder (not evaluated).
    pub missing_images: usize,
    /// small (area < 32^2), medium (< 96^2), large, all: by ground-truth mask area.
    pub buckets: Vec<Bucket>,
    /// Every scored instance, in the order evaluated (`--instances` writes them; not in `--json`).
    #[serde(skip)]
    pub instances: Vec<InstanceScore>,
}

/// One scored instance: what it was, the prompt it got and how the answer scored.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceScore {
    /// The image's `file_name`.
    pub file: String,
    pub image_id: u64,
    /// The annotation's `id`, else its index in the file's `annotations`.
    pub annotation: u64,
    pub category_id: u32,
    /// Ground-truth mask area in pixels.
    pub area: u64,
    /// The prompt in image pixels: the click `[x, y]` or the box `[x0, y0, x1, y1]`.
    pub prompt: Vec<f32>,
    /// IoU of the model's mask with the instance (0 when it gave none).
    pub iou: f64,
    /// IoU of the filled box with the instance.
    pub filled_box_iou: f64,
    /// The chosen mask's predicted IoU; absent when the model gave no mask.
    pub pred_iou: Option<f32>,
    /// Pixels in the model's mask.
    pub mask_area: u64,
}

/// COCO's area ranges.
const BUCKETS: [(&str, u64, u64); 3] = [
    ("small", 0, 32 * 32),
    ("medium", 32 * 32, 96 * 96),
    ("large", 96 * 96, u64::MAX),
];

/// Per instance: ground-truth area, model IoU, filled-box IoU.
type Score = (u64, f64, f64);

struct EvalImage {
    id: u64,
    file: String,
    width: u32,
    height: u32,
}

/// The ground truth a prompt evaluation reads: the split's images in file name order, and each image's
/// annotations that are not crowd regions (with their index in the file, for messages).
pub struct GroundTruth {
    images: Vec<EvalImage>,
    anns: BTreeMap<u64, Vec<(usize, coco::Annotation)>>,
}

impl GroundTruth {
    /// Reads a COCO instances JSON from its bytes (`path` is the name errors give) and keeps `split`.
    pub fn parse(bytes: &[u8], path: &Path, split: Split) -> Result<Self> {
        let gerr = |msg: String| Error::Prompt {
            path: path.to_path_buf(),
            msg,
        };
        let doc = coco::Document::from_slice(bytes).map_err(gerr)?;
        let mut images: Vec<EvalImage> = Vec::new();
        for im in &doc.images {
            let (width, height) = im
                .size()
                .map_err(|e| gerr(format!("{e} ({})", im.file_name)))?;
            images.push(EvalImage {
                id: im.id,
                file: im.file_name.clone(),
                width,
                height,
            });
        }
        images.sort_by(|a, b| a.file.cmp(&b.file));
        let half = images.len() / 2;
        let images: Vec<EvalImage> = match split {
            Split::All => images,
            Split::Pool => images.into_iter().take(half).collect(),
            Split::Eval => images.into_iter().skip(half).collect(),
        };
        let mut anns: BTreeMap<u64, Vec<(usize, coco::Annotation)>> = BTreeMap::new();
        for (k, a) in doc.annotations.into_iter().flatten().enumerate() {
            if a.iscrowd == 0 {
                anns.entry(a.image_id).or_default().push((k, a));
            }
        }
        Ok(GroundTruth { images, anns })
    }
}

/// Runs the evaluation; errors name the COCO file or the image.
pub fn evaluate(model: &Model, opts: &PromptEvalOptions) -> Result<PromptReport> {
    let gerr = |msg: String| Error::Prompt {
        path: opts.gt.clone(),
        msg,
    };
    let GroundTruth { images, anns } =
        GroundTruth::parse(&coco::read(&opts.gt)?, &opts.gt, opts.split)?;
    let (present, missing): (Vec<&EvalImage>, Vec<&EvalImage>) = images
        .iter()
        .partition(|im| opts.images.join(&im.file).is_file());
    let mut present = present;
    if let Some(n) = opts.limit {
        present.truncate(n);
    }
    if present.is_empty() {
        return Err(Error::Prompt {
            path: opts.images.clone(),
            msg: format!(
                "none of the {} images of {} (of its split) is in this folder; give the folder that holds them",
                images.len(),
                opts.gt.display(),
            ),
        });
    }

    let mut pre = Preprocessor::new(&model.spec.input);
    let mut instances: Vec<InstanceScore> = Vec::new();
    for im in &present {
        let path = opts.images.join(&im.file);
        let rgb = read_rgb(&path, crate::spec::RuntimeSpec::default().max_frame_pixels)?;
        if rgb.dimensions() != (im.width, im.height) {
            return Err(Error::Frame {
                frame: path.display().to_string(),
                msg: format!(
                    "the image is {}x{} but {} says {}x{}",
                    rgb.width(),
                    rgb.height(),
                    opts.gt.display(),
                    im.width,
                    im.height
                ),
            });
        }
        // The instances that take part, before the image is encoded.
        let mut gts = Vec::new();
        for (k, a) in anns.get(&im.id).map(Vec::as_slice).unwrap_or(&[]) {
            let Some(shape) = a
                .segmentation()
                .map_err(|e| gerr(format!("annotation {k}: {e}")))?
                .map(Shape::from)
            else {
                continue;
            };
            if let Shape::Runs(_, [h, w]) = &shape {
                if (*w, *h) != (im.width, im.height) {
                    return Err(gerr(format!(
                        "annotation {k}: RLE size {w}x{h} differs from image {}'s {}x{}",
                        im.id, im.width, im.height
                    )));
                }
            }
            // An instance that covers no pixel has nothing to prompt.
            let Ok(gt) = shape.rasterize(im.width, im.height) else {
                continue;
            };
            let Some(b) = gt.bbox_xyxy() else { continue };
            // The size filter reads the annotation's `bbox` (`[x, y, w, h]`), else the mask's box.
            let (bw, bh) = match a.bbox {
                Some([_, _, w, h]) => (w, h),
                None => ((b[2] - b[0]) as f64, (b[3] - b[1]) as f64),
            };
            let min = opts.min_size as f64;
            if bw >= min && bh >= min {
                gts.push((gt, b, a.id.unwrap_or(*k as u64), a.category_id));
            }
        }
        if gts.is_empty() {
            continue;
        }
        let (feats, lb) = model.encode_image(&mut pre, &rgb)?;
        for (gt, b, annotation, category_id) in gts {
            let mut o = ObjectPrompt::at_frame(1, 0);
            let prompt = match opts.prompt {
                PromptKind::Box => {
                    let bf = b.map(|v| v as f32);
                    o.box_xyxy = Some(bf);
                    bf.to_vec()
                }
                PromptKind::Click => {
                    let p = most_interior_pixel(&gt).expect("a mask with a box has a pixel");
                    o.points = vec![[p[0] as f32 + 0.5, p[1] as f32 + 0.5]];
                    o.points[0].to_vec()
                }
            };
            let choice = reference_mask(model, &mut pre, &rgb, &feats, &lb, &o, &opts.focus)?;
            let pred_iou = choice.as_ref().map(|c| c.pred_iou);
            let mask = choice
                .map(|c| c.mask)
                .unwrap_or_else(|| BinaryMask::empty(im.width, im.height));
            instances.push(InstanceScore {
                file: im.file.clone(),
                image_id: im.id,
                annotation,
                category_id,
                area: gt.area(),
                prompt,
                iou: mask.iou(&gt),
                filled_box_iou: filled_box(b, &gt).iou(&gt),
                pred_iou,
                mask_area: mask.area(),
            });
        }
    }
    Ok(PromptReport {
        gt: opts.gt.display().to_string(),
        prompt: opts.prompt,
        model: model.spec.name.clone(),
        query_input: match model.query_input() {
            QueryInput::Points => "points".into(),
            QueryInput::Anchors => "anchors".into(),
        },
        split: opts.split,
        min_size: opts.min_size,
        focus: opts.focus.enabled,
        images: present.len(),
        missing_images: missing.len(),
        buckets: buckets(
            &instances
                .iter()
                .map(|s| (s.area, s.iou, s.filled_box_iou))
                .collect::<Vec<Score>>(),
        ),
        instances,
    })
}

/// The box `xyxy` (pixel edges) filled, on the mask's frame.
pub fn filled_box(b: [u32; 4], like: &BinaryMask) -> BinaryMask {
    let mut m = BinaryMask::empty(like.width, like.height);
    for y in b[1]..b[3] {
        let row = (y * like.width) as usize;
        m.data[row + b[0] as usize..row + b[2] as usize].fill(1);
    }
    m
}

fn buckets(scores: &[Score]) -> Vec<Bucket> {
    let row = |size: &str, pick: &dyn Fn(u64) -> bool| {
        let mine: Vec<&Score> = scores.iter().filter(|s| pick(s.0)).collect();
        let n = mine.len();
        let mean = |f: &dyn Fn(&Score) -> f64| {
            (n > 0).then(|| mine.iter().map(|s| f(s)).sum::<f64>() / n as f64)
        };
        Bucket {
            size: size.to_string(),
            instances: n,
            miou_model: mean(&|s| s.1),
            miou_box: mean(&|s| s.2),
        }
    };
    let mut out: Vec<Bucket> = BUCKETS
        .iter()
        .map(|&(name, lo, hi)| row(name, &|a| a >= lo && a < hi))
        .collect();
    out.push(row("all", &|_| true));
    out
}

impl PromptReport {
    pub fn table(&self) -> String {
        let f = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        let mut s = format!(
            "{} prompt on {} images of {} (split {}, boxes >= {} px; {} images not found), model {} \
             ({} input)\n\n| size | instances | mIoU model | mIoU filled box |\n|---|---:|---:|---:|\n",
            match self.prompt {
                PromptKind::Box => "box",
                PromptKind::Click => "click",
            },
            self.images,
            self.gt,
            match self.split {
                Split::All => "all",
                Split::Pool => "pool",
                Split::Eval => "eval",
            },
            self.min_size,
            self.missing_images,
            self.model,
            self.query_input
        );
        for b in &self.buckets {
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                b.size,
                b.instances,
                f(b.miou_model),
                f(b.miou_box)
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_coco_areas() {
        let scores = [
            (100, 0.5, 1.0),
            (1023, 0.7, 0.0),
            (1024, 0.2, 0.4),
            (9216, 1.0, 1.0),
        ];
        let b = buckets(&scores);
        let names: Vec<&str> = b.iter().map(|b| b.size.as_str()).collect();
        assert_eq!(names, ["small", "medium", "large", "all"]);
        assert_eq!(b[0].instances, 2);
        assert!((b[0].miou_model.unwrap() - 0.6).abs() < 1e-12);
        assert!((b[0].miou_box.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!((b[1].instances, b[2].instances, b[3].instances), (1, 1, 4));
        assert!((b[3].miou_model.unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(buckets(&[])[3].miou_model, None);
    }

    #[test]
    fn filled_box_covers_its_pixels() {
        let like = BinaryMask::empty(10, 8);
        let m = filled_box([2, 3, 5, 7], &like);
        assert_eq!(m.area(), 12);
        assert_eq!(m.bbox_xyxy(), Some([2, 3, 5, 7]));
    }
}
