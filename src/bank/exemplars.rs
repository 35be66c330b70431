//! Exemplars: the labeled examples a prompt bank is built from. Two forms are read:
//! - a COCO instances JSON (masks as polygons or RLE, or boxes only), images found next to it or in a
//!   given folder; category ids and names are kept, so predictions evaluate against the same ids;
//! - a small YAML file: images, each with objects of a named class, prompted by a mask PNG, a box, points
//!   or scribbles (the same fields as a propagate prompt file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::coco::{self, Segmentation};
use crate::error::Error;
use crate::post::poly::{mask_from_runs, polygons_mask};
use crate::post::BinaryMask;
use crate::prompt::file::Scribble;
use crate::prompt::raster::rasterize;
use crate::prompt::ObjectPrompt;

/// Most exemplars one bank is built from (a guard against a wrong file, not a memory need).
pub const MAX_EXEMPLARS: usize = 100_000;

/// Everything a bank is built from.
#[derive(Debug, Clone)]
pub struct ExemplarSet {
    /// The file the exemplars were read from.
    pub file: PathBuf,
    /// `(category id, name)` in id order.
    pub classes: Vec<(u32, String)>,
    /// The images with at least one usable exemplar.
    pub images: Vec<ExemplarImage>,
}

/// One image of an exemplar file and its exemplars.
#[derive(Debug, Clone)]
pub struct ExemplarImage {
    /// The image file, resolved against the images folder.
    pub path: PathBuf,
    /// Expected size `(width, height)`, when the exemplar file states it.
    pub size: Option<(u32, u32)>,
    /// The exemplars on this image.
    pub objects: Vec<ExemplarObject>,
}

/// One exemplar: a class and the prompt that marks it on its image.
#[derive(Debug, Clone)]
pub struct ExemplarObject {
    /// Category id: COCO's `category_id`, or 1.. in the order a YAML's classes first appear.
    pub category: u32,
    /// Where the exemplar came from, for messages and the bank file (`annotation 17`, `object 2`).
    pub origin: String,
    /// The prompt that marks it.
    pub shape: Shape,
}

/// An exemplar's prompt, turned into a mask once its image is read.
#[derive(Debug, Clone)]
pub enum Shape {
    /// COCO polygons, each `[x1, y1, x2, y2, ...]` in image pixels; their union is the mask.
    Polygons(Vec<Vec<f64>>),
    /// Column-major runs and the `[height, width]` they cover.
    Runs(Vec<u32>, [u32; 2]),
    /// `xyxy` in pixels.
    Box([f64; 4]),
    /// A propagate-style prompt: mask PNG, box, points, scribbles.
    Prompt(Box<ObjectPrompt>),
}

impl ExemplarSet {
    /// Reads a COCO JSON (`.json`) or an exemplar YAML (`.yaml`/`.yml`). COCO images resolve against
    /// `images_dir` (default: the JSON's folder).
    pub fn load(path: &Path, images_dir: Option<&Path>) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::Prompt {
            path: path.to_path_buf(),
            msg: format!("cannot read: {e}"),
        })?;
        let set = Self::parse(&bytes, path, images_dir)?;
        for img in &set.images {
            if !img.path.is_file() {
                return Err(Error::Prompt {
                    path: path.to_path_buf(),
                    msg: format!(
                        "image {} not found; give the folder that holds the exemplar images (--exemplar-images)",
                        img.path.display()
                    ),
                });
            }
        }
        Ok(set)
    }

    /// As [`ExemplarSet::load`], from the file's bytes, without looking for the images.
    pub fn parse(bytes: &[u8], path: &Path, images_dir: Option<&Path>) -> Result<Self, Error> {
        let err = |msg: String| Error::Prompt {
            path: path.to_path_buf(),
            msg,
        };
        let is_json = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let set = if is_json {
            let base = images_dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
            parse_coco(bytes, &base).map_err(err)?
        } else {
            let base = path.parent().unwrap_or(Path::new("."));
            parse_yaml(bytes, images_dir.unwrap_or(base)).map_err(err)?
        };
        let count: usize = set.1.iter().map(|i| i.objects.len()).sum();
        if count == 0 {
            return Err(err(
                "holds no usable exemplar (no object with a mask, polygon, box, point or scribble)"
                    .into(),
            ));
        }
        if count > MAX_EXEMPLARS {
            return Err(err(format!(
                "{count} exemplars; at most {MAX_EXEMPLARS} are supported, draw a sample first"
            )));
        }
        Ok(ExemplarSet {
            file: path.to_path_buf(),
            classes: set.0,
            images: set.1,
        })
    }

    /// Number of exemplars over all images.
    pub fn count(&self) -> usize {
        self.images.iter().map(|i| i.objects.len()).sum()
    }
}

impl Shape {
    /// The exemplar as a mask on its `width x height` image; errors say what does not fit.
    pub fn rasterize(&self, width: u32, height: u32) -> Result<BinaryMask, String> {
        let m = match self {
            Shape::Polygons(p) => polygons_mask(p, width, height),
            Shape::Runs(runs, [h, w]) => {
                if (*w, *h) != (width, height) {
                    return Err(format!(
                        "RLE size {w}x{h} differs from the image's {width}x{height}"
                    ));
                }
                mask_from_runs(runs, width, height)
            }
            Shape::Box(b) => {
                let mut m = BinaryMask::empty(width, height);
                let x0 = b[0].floor().clamp(0.0, width as f64) as u32;
                let y0 = b[1].floor().clamp(0.0, height as f64) as u32;
                let x1 = b[2].ceil().clamp(0.0, width as f64) as u32;
                let y1 = b[3].ceil().clamp(0.0, height as f64) as u32;
                for y in y0..y1 {
                    for x in x0..x1 {
                        m.data[(y * width + x) as usize] = 1;
                    }
                }
                m
            }
            Shape::Prompt(o) => rasterize(o, width, height).map_err(|e| e.to_string())?,
        };
        if m.area() == 0 {
            return Err("the exemplar covers no pixel of its image".into());
        }
        Ok(m)
    }
}

type Parsed = (Vec<(u32, String)>, Vec<ExemplarImage>);

impl From<Segmentation> for Shape {
    fn from(s: Segmentation) -> Self {
        match s {
            Segmentation::Polygons(p) => Shape::Polygons(p),
            Segmentation::Runs(runs, size) => Shape::Runs(runs, size),
        }
    }
}

fn parse_coco(bytes: &[u8], base: &Path) -> Result<Parsed, String> {
    let doc = coco::Document::from_slice(bytes)?;
    let names: BTreeMap<u32, String> = doc
        .categories()?
        .iter()
        .map(|c| (c.id, c.name.clone()))
        .collect();
    let mut by_image: BTreeMap<u64, Vec<ExemplarObject>> = BTreeMap::new();
    for (k, a) in doc.annotations.iter().flatten().enumerate() {
        let origin = format!("annotation {}", a.id.unwrap_or(k as u64 + 1));
        if a.iscrowd != 0 {
            continue;
        }
        if !names.contains_key(&a.category_id) {
            return Err(format!(
                "{origin}: category_id {} is not among `categories`",
                a.category_id
            ));
        }
        let seg = a.segmentation().map_err(|e| format!("{origin}: {e}"))?;
        let shape = match (seg, a.bbox) {
            (Some(s), _) => s.into(),
            (None, Some(b)) if b.iter().all(|v| v.is_finite()) && b[2] > 0.0 && b[3] > 0.0 => {
                Shape::Box([b[0], b[1], b[0] + b[2], b[1] + b[3]])
            }
            _ => {
                return Err(format!(
                    "{origin}: give a `segmentation` or a `bbox` with positive width and height"
                ))
            }
        };
        by_image
            .entry(a.image_id)
            .or_default()
            .push(ExemplarObject {
                category: a.category_id,
                origin,
                shape,
            });
    }
    let mut images = Vec::new();
    for img in &doc.images {
        let Some(objects) = by_image.remove(&img.id) else {
            continue;
        };
        images.push(ExemplarImage {
            path: base.join(&img.file_name),
            size: img.width.zip(img.height),
            objects,
        });
    }
    if let Some((id, _)) = by_image.into_iter().next() {
        return Err(format!(
            "annotations refer to image_id {id}, which is not among `images`"
        ));
    }
    let used: std::collections::BTreeSet<u32> = images
        .iter()
        .flat_map(|i| i.objects.iter().map(|o| o.category))
        .collect();
    let classes = names
        .into_iter()
        .filter(|(id, _)| used.contains(id))
        .collect();
    Ok((classes, images))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlDoc {
    /// Class names in id order (ids 1, 2, ...); classes not listed get the next ids as they appear.
    #[serde(default)]
    classes: Vec<String>,
    images: Vec<YamlImage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlImage {
    image: PathBuf,
    objects: Vec<YamlObject>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlObject {
    class: String,
    #[serde(default)]
    mask: Option<PathBuf>,
    #[serde(default)]
    mask_value: Option<u8>,
    #[serde(default, rename = "box")]
    box_xyxy: Option<[f32; 4]>,
    #[serde(default)]
    points: Vec<[f32; 2]>,
    #[serde(default)]
    negative_points: Vec<[f32; 2]>,
    #[serde(default)]
    scribbles: Vec<Scribble>,
}

fn parse_yaml(bytes: &[u8], base: &Path) -> Result<Parsed, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let doc: YamlDoc = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let mut classes: Vec<String> = Vec::new();
    for c in &doc.classes {
        if classes.contains(c) {
            return Err(format!("class `{c}` is listed twice in `classes`"));
        }
        classes.push(c.clone());
    }
    let mut images = Vec::new();
    for (i, img) in doc.images.into_iter().enumerate() {
        let path = if img.image.is_relative() {
            base.join(&img.image)
        } else {
            img.image.clone()
        };
        let mut objects = Vec::new();
        for (j, o) in img.objects.into_iter().enumerate() {
            let origin = format!("images[{i}].objects[{j}]");
            if o.class.trim().is_empty() {
                return Err(format!("{origin}: `class` is empty"));
            }
            if o.mask.is_none()
                && o.box_xyxy.is_none()
                && o.points.is_empty()
                && o.scribbles.is_empty()
            {
                return Err(format!("{origin}: give a mask, a box, points or scribbles"));
            }
            let k = match classes.iter().position(|c| *c == o.class) {
                Some(k) => k,
                None => {
                    classes.push(o.class.clone());
                    classes.len() - 1
                }
            };
            let mask = o
                .mask
                .map(|m| if m.is_relative() { base.join(m) } else { m });
            if let Some(m) = &mask {
                if !m.is_file() {
                    return Err(format!("{origin}: mask file {} not found", m.display()));
                }
            }
            let prompt = ObjectPrompt {
                id: 1,
                frame: 0,
                mask,
                mask_value: o.mask_value,
                box_xyxy: o.box_xyxy,
                points: o.points,
                negative_points: o.negative_points,
                scribbles: o.scribbles,
                absent: false,
                image: None,
            };
            // The same checks as a propagate prompt (finite coordinates, sizes, limits).
            crate::prompt::PromptFile {
                objects: vec![prompt.clone()],
            }
            .check()
            .map_err(|e| format!("{origin}: {}", e.trim_start_matches("object 1: ")))?;
            objects.push(ExemplarObject {
                category: k as u32 + 1,
                origin,
                shape: Shape::Prompt(Box::new(prompt)),
            });
        }
        images.push(ExemplarImage {
            path,
            size: None,
            objects,
        });
    }
    let classes = classes
        .into_iter()
        .enumerate()
        .map(|(k, c)| (k as u32 + 1, c))
        .collect();
    Ok((classes, images))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coco_polygons_rle_and_boxes() {
        let doc = br#"{"images":[{"id":7,"file_name":"a.jpg","width":20,"height":16}],
            "annotations":[
              {"id":1,"image_id":7,"category_id":3,"segmentation":[[2,2,10,2,10,9]]},
              {"id":2,"image_id":7,"category_id":3,"segmentation":{"size":[16,20],"counts":[5,10,305]}},
              {"id":3,"image_id":7,"category_id":4,"bbox":[1,1,4,3]},
              {"id":4,"image_id":7,"category_id":4,"bbox":[1,1,4,3],"iscrowd":1}],
            "categories":[{"id":3,"name":"cat"},{"id":4,"name":"dog"},{"id":5,"name":"unused"}]}"#;
        let (classes, images) = parse_coco(doc, Path::new("imgs")).unwrap();
        assert_eq!(
            classes,
            vec![(3, "cat".to_string()), (4, "dog".to_string())]
        );
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].path, Path::new("imgs/a.jpg"));
        assert_eq!(images[0].objects.len(), 3);
        let rle = images[0].objects[1].shape.rasterize(20, 16).unwrap();
        assert_eq!(rle.area(), 10);
        assert_eq!(rle.data[5 * 20], 1); // column 0, rows 5..15
        let b = images[0].objects[2].shape.rasterize(20, 16).unwrap();
        assert_eq!(b.area(), 12);
        assert!(images[0].objects[1].shape.rasterize(10, 10).is_err());
    }

    #[test]
    fn coco_errors_name_the_annotation() {
        let doc = br#"{"images":[{"id":1,"file_name":"a.jpg"}],
            "annotations":[{"id":9,"image_id":1,"category_id":2,"segmentation":[[1,2,3]]}],
            "categories":[{"id":2,"name":"x"}]}"#;
        let e = parse_coco(doc, Path::new(".")).unwrap_err();
        assert!(
            e.contains("annotation 9") && e.contains("at least 6"),
            "{e}"
        );
        let doc = br#"{"images":[],"annotations":[{"image_id":1,"category_id":2,"bbox":[0,0,1,1]}],
            "categories":[{"id":2,"name":"x"}]}"#;
        let e = parse_coco(doc, Path::new(".")).unwrap_err();
        assert!(e.contains("image_id 1"), "{e}");
    }

    #[test]
    fn yaml_classes_get_ids_in_order() {
        let text = b"classes: [dog]\nimages:\n  - image: a.jpg\n    objects:\n      - { class: cat, box: [0, 0, 4, 4] }\n      - { class: dog, points: [[1, 1]] }\n";
        let (classes, images) = parse_yaml(text, Path::new("d")).unwrap();
        assert_eq!(
            classes,
            vec![(1, "dog".to_string()), (2, "cat".to_string())]
        );
        assert_eq!(images[0].objects[0].category, 2);
        assert_eq!(images[0].objects[1].category, 1);
        let e = parse_yaml(
            b"images:\n  - image: a.jpg\n    objects:\n      - { class: cat }\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("images[0].objects[0]"), "{e}");
        let e = parse_yaml(b"images: []\nextra: 1\n", Path::new(".")).unwrap_err();
        assert!(e.contains("unknown field `extra`"), "{e}");
    }
}
