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

/// One shard's COCO document, read for `vprompt merge`: its categories and its images with their
/// annotations, in image id order.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardDocument {
    /// `(id, name)` as listed.
    pub categories: Vec<(u32, String)>,
    /// One record per image (index = COCO image id - 1).
    pub records: Vec<ImageRecord>,
}

/// Reads a COCO document the `coco` sink wrote (`path` is the name errors give): every key the sink
/// writes is required, so that the merged file is the one a single run writes.
pub fn read_shard(bytes: &[u8], path: &Path) -> Result<ShardDocument, Error> {
    use crate::post::MaskRle;
    use crate::sink::record::AnnotationRecord;
    let err = |msg: String| Error::Prompt {
        path: path.to_path_buf(),
        msg,
    };
    let doc = crate::coco::Document::from_slice(bytes).map_err(err)?;
    let categories = doc
        .categories()
        .map_err(|e| err(format!("{e}; not a vprompt COCO file")))?
        .iter()
        .map(|c| (c.id, c.name.clone()))
        .collect();
    let mut here: BTreeMap<u64, ImageRecord> = BTreeMap::new();
    for im in &doc.images {
        if im.id == 0 {
            return Err(err("an image with `id` 0; vprompt's ids start at 1".into()));
        }
        let (width, height) = im.size().map_err(err)?;
        let record = ImageRecord {
            index: im.id - 1,
            name: im.file_name.clone(),
            file: im.file_name.clone(),
            width,
            height,
            annotations: vec![],
        };
        if here.insert(im.id, record).is_some() {
            return Err(err(format!("image id {} is listed twice", im.id)));
        }
    }
    for (k, a) in doc.annotations().map_err(err)?.iter().enumerate() {
        let img = a.image_id;
        let r = here
            .get_mut(&img)
            .ok_or_else(|| err(format!("annotation {k}: image_id {img} is not listed")))?;
        let segmentation: MaskRle = a
            .segmentation
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| {
                err(format!(
                    "annotation {k}: `segmentation` is not a compressed RLE"
                ))
            })?;
        let whole = |v: f64| (v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64).then_some(v);
        let bbox = a
            .bbox
            .filter(|b| b.iter().all(|&v| whole(v).is_some()))
            .map(|b| b.map(|v| v as u32))
            .ok_or_else(|| err(format!("annotation {k}: `bbox` is not 4 whole numbers")))?;
        let area = a
            .area
            .and_then(whole)
            .ok_or_else(|| err(format!("annotation {k}: `area` is not a whole number")))?;
        let score = a
            .score
            .ok_or_else(|| err(format!("annotation {k}: no `score`")))?;
        r.annotations.push(AnnotationRecord {
            category_id: a.category_id,
            segmentation,
            area: area as u64,
            bbox,
            score,
        });
    }
    Ok(ShardDocument {
        categories,
        records: here.into_values().collect(),
    })
}

/// Joins COCO documents written by shards of one run (disjoint images, the same categories) into one,
/// byte for byte what a single run over all images writes.
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<usize, Error> {
    let mut records: BTreeMap<u64, ImageRecord> = BTreeMap::new();
    let mut from: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut categories: Option<(Vec<(u32, String)>, PathBuf)> = None;
    for path in inputs {
        let err = |msg: String| Error::Prompt {
            path: path.clone(),
            msg,
        };
        let shard = read_shard(&crate::coco::read(path)?, path)?;
        match &categories {
            None => categories = Some((shard.categories, path.clone())),
            Some((first, p)) if *first != shard.categories => {
                return Err(err(format!(
                "its categories differ from those of {}; only shards of one run (same bank) merge",
                p.display()
            )))
            }
            _ => {}
        }
        for r in &shard.records {
            if let Some(other) = from.get(&r.index) {
                return Err(err(format!(
                    "image id {} ({}) is also in {}: the shards overlap",
                    r.index + 1,
                    r.file,
                    other.display()
                )));
            }
        }
        for r in shard.records {
            from.insert(r.index, path.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &[u8] = include_bytes!("../../tests/fuzz/corpus/merge/shard.json");

    #[test]
    fn a_shard_reads_back_as_written() {
        let shard = read_shard(SEED, Path::new("s.json")).unwrap();
        assert_eq!(
            shard.categories,
            vec![(1, "cat".to_string()), (2, "dog".to_string())]
        );
        assert_eq!(shard.records.len(), 2);
        let a = &shard.records[0].annotations[0];
        assert_eq!(
            (a.category_id, a.area, a.bbox, a.score),
            (1, 2, [1, 0, 1, 2], 0.75)
        );
        assert_eq!(a.segmentation.decode().unwrap().area(), 2);
        // Written again, the document is the seed byte for byte (the seed is what the sink writes).
        let records = shard.records.iter().map(|r| (r.index, r.clone())).collect();
        let mut out = Vec::new();
        write_document(&mut out, &records, &shard.categories).unwrap();
        assert_eq!(
            String::from_utf8(out)
                .unwrap()
                .replace("0.1.0", env!("CARGO_PKG_VERSION")),
            std::str::from_utf8(SEED)
                .unwrap()
                .trim_end()
                .replace("0.1.0", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn a_missing_key_is_an_error_naming_it_not_a_zero() {
        let text = std::str::from_utf8(SEED).unwrap();
        for (from, to, want) in [
            (
                "\"height\":3,\"id\":1,",
                "\"id\":1,",
                "image 1 has no `height`",
            ),
            ("\"score\":0.75,", "", "annotation 0: no `score`"),
            (
                "\"area\":2,",
                "",
                "annotation 0: `area` is not a whole number",
            ),
            (
                "\"category_id\":1,\"id\":1",
                "\"id\":1",
                "missing field `category_id`",
            ),
            ("\"name\":\"cat\",", "", "missing field `name`"),
        ] {
            let bad = text.replacen(from, to, 1);
            assert_ne!(bad, text, "{from}");
            let e = read_shard(bad.as_bytes(), Path::new("s.json"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("prompts s.json: ") && e.contains(want), "{e}");
        }
    }
}
