//! COCO instances JSON as read: the serde types of its images, categories and annotations, and its
//! segmentations (polygons, compressed or uncompressed RLE), for the prompt bank's exemplars,
//! `vprompt merge` and evaluation alike. A key a reader needs and the file lacks is an error that names
//! the file and the key, never a silent zero.
//!
//! Writing a COCO file is the `coco` sink's (`sink/coco.rs`), byte for byte as it always wrote it.

use std::path::Path;

use serde::Deserialize;

use crate::error::Error;
use crate::post::rle::string_to_runs;

/// A COCO instances document: `images` is required; `annotations` and `categories` may be absent (a
/// reader that needs one says so). Other keys (`info`, `licenses`) are not read.
#[derive(Debug, Clone)]
pub struct Document {
    /// `images`: every image the document is about.
    pub images: Vec<Image>,
    /// `annotations`, when the document has the key.
    pub annotations: Option<Vec<Annotation>>,
    /// `categories`, when the document has the key.
    pub categories: Option<Vec<Category>>,
}

/// One entry of `images`.
#[derive(Debug, Clone, Deserialize)]
pub struct Image {
    /// `id`, which annotations refer to.
    pub id: u64,
    /// `file_name`, relative to the images folder.
    pub file_name: String,
    /// `width` in pixels, when given.
    #[serde(default)]
    pub width: Option<u32>,
    /// `height` in pixels, when given.
    #[serde(default)]
    pub height: Option<u32>,
}

/// One entry of `categories`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Category {
    /// `id`, which annotations refer to.
    pub id: u32,
    /// `name`.
    pub name: String,
}

/// One entry of `annotations`, or of a results list (predictions without the document around them).
#[derive(Debug, Clone, Deserialize)]
pub struct Annotation {
    /// `id`, when given.
    #[serde(default)]
    pub id: Option<u64>,
    /// `image_id`: an entry of `images`.
    pub image_id: u64,
    /// `category_id`: an entry of `categories`.
    pub category_id: u32,
    /// `segmentation` as written; [`Annotation::segmentation`] reads it.
    #[serde(default)]
    pub segmentation: Option<serde_json::Value>,
    /// `bbox`: `[x, y, width, height]` in pixels, when given.
    #[serde(default)]
    pub bbox: Option<[f64; 4]>,
    /// `area` in pixels, when given.
    #[serde(default)]
    pub area: Option<f64>,
    /// `iscrowd`: not 0 for a crowd region (default 0).
    #[serde(default)]
    pub iscrowd: u8,
    /// `score` (predictions), when given.
    #[serde(default)]
    pub score: Option<f64>,
}

/// A COCO segmentation, read.
#[derive(Debug, Clone, PartialEq)]
pub enum Segmentation {
    /// Polygons, each `[x1, y1, x2, y2, ...]` in image pixels; their union is the region.
    Polygons(Vec<Vec<f64>>),
    /// Column-major runs (background first) and the `[height, width]` they cover.
    Runs(Vec<u32>, [u32; 2]),
}

impl Document {
    /// Reads a COCO instances document from its bytes; the error names what is missing or wrong by its
    /// place (`images[3]: missing field `width``).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
        let serde_json::Value::Object(mut doc) = v else {
            return Err("not a COCO instances JSON (an object with `images`)".into());
        };
        let images = doc
            .remove("images")
            .ok_or("no `images` list; not a COCO instances JSON")?;
        Ok(Document {
            images: list(images, "images")?,
            annotations: doc
                .remove("annotations")
                .map(|v| list(v, "annotations"))
                .transpose()?,
            categories: doc
                .remove("categories")
                .map(|v| list(v, "categories"))
                .transpose()?,
        })
    }

    /// Reads the document at `path`; errors name the file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = read(path)?;
        Self::from_slice(&bytes).map_err(|msg| prompt_error(path, msg))
    }

    /// `annotations`, or an error naming the key.
    pub fn annotations(&self) -> Result<&[Annotation], String> {
        self.annotations
            .as_deref()
            .ok_or_else(|| "no `annotations` list".to_string())
    }

    /// `categories`, or an error naming the key.
    pub fn categories(&self) -> Result<&[Category], String> {
        self.categories
            .as_deref()
            .ok_or_else(|| "no `categories` list".to_string())
    }
}

impl Image {
    /// `(width, height)`, or an error naming the image and the key that is missing or zero.
    pub fn size(&self) -> Result<(u32, u32), String> {
        match (self.width, self.height) {
            (Some(w), Some(h)) if w > 0 && h > 0 => Ok((w, h)),
            (None, _) => Err(format!("image {} has no `width`", self.id)),
            (_, None) => Err(format!("image {} has no `height`", self.id)),
            _ => Err(format!("image {} has a zero `width` or `height`", self.id)),
        }
    }
}

impl Annotation {
    /// The `segmentation`, read: `None` when absent, null or an empty polygon list.
    pub fn segmentation(&self) -> Result<Option<Segmentation>, String> {
        match &self.segmentation {
            Some(v) => Segmentation::from_value(v),
            None => Ok(None),
        }
    }
}

impl Segmentation {
    /// A COCO `segmentation` value: polygons, compressed RLE or uncompressed RLE (null or `[]`: none).
    pub fn from_value(v: &serde_json::Value) -> Result<Option<Self>, String> {
        use serde_json::Value;
        match v {
            Value::Array(polys) => {
                if polys.is_empty() {
                    return Ok(None);
                }
                let mut out = Vec::new();
                for p in polys {
                    let coords: Vec<f64> = serde_json::from_value(p.clone())
                        .map_err(|_| "a polygon must be a list of numbers".to_string())?;
                    if coords.len() < 6
                        || coords.len() % 2 != 0
                        || coords.iter().any(|c| !c.is_finite())
                    {
                        return Err(format!(
                            "a polygon needs an even number (at least 6) of finite coordinates, got {}",
                            coords.len()
                        ));
                    }
                    out.push(coords);
                }
                Ok(Some(Segmentation::Polygons(out)))
            }
            Value::Object(o) => {
                let size: [u32; 2] = o
                    .get("size")
                    .and_then(|s| serde_json::from_value(s.clone()).ok())
                    .ok_or("an RLE needs `size: [height, width]`")?;
                let runs = match o.get("counts") {
                    Some(Value::String(s)) => {
                        string_to_runs(s).ok_or("the RLE `counts` string is not valid")?
                    }
                    Some(c @ Value::Array(_)) => {
                        serde_json::from_value(c.clone()).map_err(|_| {
                            "uncompressed RLE `counts` must be non-negative integers".to_string()
                        })?
                    }
                    _ => return Err("an RLE needs `counts`".into()),
                };
                let total: u64 = runs.iter().map(|&r: &u32| r as u64).sum();
                if total != size[0] as u64 * size[1] as u64 {
                    return Err(format!(
                        "the RLE covers {total} pixels but its size is {}x{}",
                        size[1], size[0]
                    ));
                }
                Ok(Some(Segmentation::Runs(runs, size)))
            }
            Value::Null => Ok(None),
            _ => Err("`segmentation` must be polygons or an RLE object".into()),
        }
    }
}

/// Predictions to score: a COCO document (images matched to the ground truth by `file_name`), or a
/// plain results list (`image_id` as in the ground truth).
#[derive(Debug, Clone)]
pub enum Predictions {
    /// A document, as the `coco` sink writes it.
    Document(Document),
    /// A results list: annotations with a `score`.
    Results(Vec<Annotation>),
}

impl Predictions {
    /// Reads either form from its bytes: a list is a results list, an object a document.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, String> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            let v: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
            list(v, "results").map(Predictions::Results)
        } else if first == Some(&b'{') {
            Document::from_slice(bytes).map(Predictions::Document)
        } else {
            Err("neither a COCO document nor a results list".into())
        }
    }
}

/// The entries of the list `key`, each read on its own so that an error says which one.
fn list<T: serde::de::DeserializeOwned>(v: serde_json::Value, key: &str) -> Result<Vec<T>, String> {
    let serde_json::Value::Array(items) = v else {
        return Err(format!("`{key}` is not a list"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(k, item)| serde_json::from_value(item).map_err(|e| format!("{key}[{k}]: {e}")))
        .collect()
}

/// The bytes of the COCO file at `path`; errors name it.
pub fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| prompt_error(path, format!("cannot read: {e}")))
}

fn prompt_error(path: &Path, msg: String) -> Error {
    Error::Prompt {
        path: path.to_path_buf(),
        msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_is_named_not_zero() {
        let e = Document::from_slice(br#"{"images":[{"id":1,"width":4,"height":3}]}"#).unwrap_err();
        assert!(e.contains("missing field `file_name`"), "{e}");
        let e = Document::from_slice(
            br#"{"images":[],"annotations":[{"image_id":1,"segmentation":[]}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("missing field `category_id`"), "{e}");
        let d = Document::from_slice(br#"{"images":[{"id":2,"file_name":"a.jpg","height":3}]}"#)
            .unwrap();
        assert_eq!(d.images[0].size().unwrap_err(), "image 2 has no `width`");
        assert_eq!(d.annotations().unwrap_err(), "no `annotations` list");
        assert_eq!(d.categories().unwrap_err(), "no `categories` list");
    }

    #[test]
    fn segmentations_polygons_and_both_rles() {
        let v = |s: &str| Segmentation::from_value(&serde_json::from_str(s).unwrap());
        assert_eq!(
            v("[[0,0,4,0,4,3]]").unwrap(),
            Some(Segmentation::Polygons(vec![vec![
                0.0, 0.0, 4.0, 0.0, 4.0, 3.0
            ]]))
        );
        assert_eq!(
            v(r#"{"size":[2,3],"counts":[1,4,1]}"#).unwrap(),
            Some(Segmentation::Runs(vec![1, 4, 1], [2, 3]))
        );
        assert_eq!(
            v(r#"{"size":[2,3],"counts":"141"}"#).unwrap(),
            Some(Segmentation::Runs(vec![1, 4, 1], [2, 3]))
        );
        assert_eq!(v("[]").unwrap(), None);
        assert_eq!(v("null").unwrap(), None);
        assert!(v(r#"{"size":[2,3],"counts":[1,4]}"#)
            .unwrap_err()
            .contains("covers 5 pixels"));
        assert!(v("[[1,2,3]]").unwrap_err().contains("at least 6"));
        assert!(v("7").is_err());
    }

    #[test]
    fn predictions_in_either_form() {
        let p = Predictions::from_slice(
            br#" [{"image_id":1,"category_id":2,"score":0.5,"segmentation":[]}]"#,
        )
        .unwrap();
        assert!(matches!(p, Predictions::Results(r) if r[0].score == Some(0.5)));
        let p = Predictions::from_slice(br#"{"images":[],"annotations":[]}"#).unwrap();
        assert!(matches!(p, Predictions::Document(_)));
        assert!(Predictions::from_slice(b"7").is_err());
        assert!(Predictions::from_slice(br#"[{"image_id":1}]"#)
            .unwrap_err()
            .contains("missing field `category_id`"));
    }
}
