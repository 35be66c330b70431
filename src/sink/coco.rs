//! COCO instances JSON with compressed RLE masks (as pycocotools reads them): each frame or image an image
//! (id = source index + 1, `file_name` = its file), each object a category, each non-empty mask an
//! annotation with its score. Written atomically at the end, images in source order; a resumed
//! auto-labeling run starts from the images its manifest already holds, so the file comes out the same.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::record::ImageRecord;
use super::{create_parent, io_error, write_atomic, FrameRecord, Sink, SinkContext};
use crate::error::Error;

/// The `coco` sink: a COCO instances JSON with compressed RLE masks, written when the run finishes.
pub struct CocoSink {
    path: PathBuf,
    categories: Vec<(u32, String)>,
    records: BTreeMap<u64, ImageRecord>,
}

impl CocoSink {
    /// A sink for `path` with `ctx`'s categories (and, resuming, the images an earlier run finished);
    /// creates the parent folder.
    pub fn new(path: &Path, ctx: &SinkContext) -> Result<Self, Error> {
        create_parent(path)?;
        Ok(CocoSink {
            path: path.to_path_buf(),
            categories: ctx.categories.clone(),
            records: ctx.previous.iter().map(|r| (r.index, r.clone())).collect(),
        })
    }
}

impl Sink for CocoSink {
    fn write(&mut self, f: &FrameRecord<'_>) -> Result<(), Error> {
        self.records.insert(f.index, f.record().clone());
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        write_atomic(&self.path, |tmp| {
            let file = std::fs::File::create(tmp)
                .map_err(|e| io_error(&self.path, "cannot create", &e))?;
            let mut out = BufWriter::new(file);
            write_document(&mut out, &self.records, &self.categories)
                .map_err(|e| io_error(&self.path, "cannot write", &e))?;
            // Flushed here: a buffered writer's drop would hide a full disk.
            out.flush()
                .map_err(|e| io_error(&self.path, "cannot write", &e))
        })?;
        Ok(vec![self.path.clone()])
    }
}

/// Writes the COCO document one entry at a time (no second copy of every annotation in memory).
pub fn write_document(
    out: &mut impl Write,
    records: &BTreeMap<u64, ImageRecord>,
    categories: &[(u32, String)],
) -> std::io::Result<()> {
    let info = json!({"description": "vprompt predictions", "version": env!("CARGO_PKG_VERSION")});
    write!(out, "{{\"info\":{info},\"images\":[")?;
    for (k, r) in records.values().enumerate() {
        let img = json!({
            "id": r.index + 1,
            "file_name": r.file,
            "frame_index": r.index,
            "width": r.width,
            "height": r.height,
        });
        write!(out, "{}{img}", if k > 0 { "," } else { "" })?;
    }
    write!(out, "],\"annotations\":[")?;
    let mut id = 0u64;
    for r in records.values() {
        for a in &r.annotations {
            id += 1;
            let ann = json!({
                "id": id,
                "image_id": r.index + 1,
                "category_id": a.category_id,
                "segmentation": a.segmentation,
                "area": a.area,
                "bbox": a.bbox,
                "iscrowd": 0,
                "score": a.score,
            });
            write!(out, "{}{ann}", if id > 1 { "," } else { "" })?;
        }
    }
    let cats: Vec<_> = categories
        .iter()
        .map(|(id, name)| json!({"id": id, "name": name, "supercategory": "object"}))
        .collect();
    write!(out, "],\"categories\":{}}}", serde_json::Value::Array(cats))
}

/// Joins COCO documents written by shards of one run (disjoint images, the same categories) into one,
/// byte for byte what a single run over all images writes.
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<usize, Error> {
    use crate::post::MaskRle;
    use crate::sink::record::AnnotationRecord;
    let mut records: BTreeMap<u64, ImageRecord> = BTreeMap::new();
    let mut from: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut categories: Option<(Vec<(u32, String)>, PathBuf)> = None;
    for path in inputs {
        let err = |msg: String| Error::Prompt {
            path: path.clone(),
            msg,
        };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| err(format!("not JSON: {e}")))?;
        let cats: Vec<(u32, String)> = doc["categories"]
            .as_array()
            .ok_or_else(|| err("no `categories`; not a vprompt COCO file".into()))?
            .iter()
            .map(|c| {
                (
                    c["id"].as_u64().unwrap_or(0) as u32,
                    c["name"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        match &categories {
            None => categories = Some((cats, path.clone())),
            Some((first, p)) if *first != cats => {
                return Err(err(format!(
                "its categories differ from those of {}; only shards of one run (same bank) merge",
                p.display()
            )))
            }
            _ => {}
        }
        let mut here: BTreeMap<u64, ImageRecord> = BTreeMap::new();
        for im in doc["images"].as_array().into_iter().flatten() {
            let id = im["id"]
                .as_u64()
                .filter(|&i| i > 0)
                .ok_or_else(|| err("an image without a positive `id`".into()))?;
            if let Some(other) = from.get(&id) {
                return Err(err(format!(
                    "image id {id} ({}) is also in {}: the shards overlap",
                    im["file_name"].as_str().unwrap_or("?"),
                    other.display()
                )));
            }
            here.insert(
                id,
                ImageRecord {
                    index: id - 1,
                    name: im["file_name"].as_str().unwrap_or_default().to_string(),
                    file: im["file_name"].as_str().unwrap_or_default().to_string(),
                    width: im["width"].as_u64().unwrap_or(0) as u32,
                    height: im["height"].as_u64().unwrap_or(0) as u32,
                    annotations: vec![],
                },
            );
        }
        for (k, a) in doc["annotations"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let img = a["image_id"].as_u64().unwrap_or(0);
            let r = here
                .get_mut(&img)
                .ok_or_else(|| err(format!("annotation {k}: image_id {img} is not listed")))?;
            let segmentation: MaskRle =
                serde_json::from_value(a["segmentation"].clone()).map_err(|_| {
                    err(format!(
                        "annotation {k}: segmentation is not a compressed RLE"
                    ))
                })?;
            let bbox: [u32; 4] = serde_json::from_value(a["bbox"].clone())
                .map_err(|_| err(format!("annotation {k}: bbox is not 4 whole numbers")))?;
            r.annotations.push(AnnotationRecord {
                category_id: a["category_id"].as_u64().unwrap_or(0) as u32,
                segmentation,
                area: a["area"].as_u64().unwrap_or(0),
                bbox,
                score: a["score"].as_f64().unwrap_or(0.0),
            });
        }
        for (id, r) in here {
            from.insert(id, path.clone());
            records.insert(r.index, r);
        }
    }
    let categories = categories.map(|c| c.0).unwrap_or_default();
    create_parent(out)?;
    let err = |e: std::io::Error| Error::Sink {
        path: out.to_path_buf(),
        msg: format!("cannot write: {e}"),
    };
    write_atomic(out, |tmp| {
        let mut w = BufWriter::new(std::fs::File::create(tmp).map_err(err)?);
        write_document(&mut w, &records, &categories).map_err(err)?;
        w.flush().map_err(err)
    })?;
    Ok(records.len())
}
