//! COCO instances JSON with compressed RLE masks (as pycocotools reads them): each frame an image, each
//! object id a category, each non-empty object mask an annotation. Written atomically at the end.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{create_parent, io_error, write_atomic, FrameRecord, Sink, SinkContext};
use crate::error::Error;
use crate::post::MaskRle;

pub struct CocoSink {
    path: PathBuf,
    categories: Vec<(u8, String)>,
    images: Vec<serde_json::Value>,
    annotations: Vec<serde_json::Value>,
}

impl CocoSink {
    pub fn new(path: &Path, ctx: &SinkContext) -> Result<Self, Error> {
        create_parent(path)?;
        Ok(CocoSink {
            path: path.to_path_buf(),
            categories: ctx.categories.clone(),
            images: Vec::new(),
            annotations: Vec::new(),
        })
    }
}

impl Sink for CocoSink {
    fn write(&mut self, f: &FrameRecord<'_>) -> Result<(), Error> {
        let image_id = f.seq + 1;
        self.images.push(json!({
            "id": image_id,
            "file_name": f.name,
            "frame_index": f.index,
            "width": f.result.width,
            "height": f.result.height,
        }));
        for o in &f.result.objects {
            let Some(b) = o.box_xyxy else { continue };
            let rle = MaskRle::encode(&o.mask);
            self.annotations.push(json!({
                "id": self.annotations.len() + 1,
                "image_id": image_id,
                "category_id": o.id,
                "segmentation": rle,
                "area": o.area,
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                "iscrowd": 0,
                "score": (o.score as f64 * 1e4).round() / 1e4,
            }));
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        let categories: Vec<_> = self
            .categories
            .iter()
            .map(|(id, name)| json!({"id": id, "name": name, "supercategory": "object"}))
            .collect();
        let doc = json!({
            "info": {"description": "vprompt predictions", "version": env!("CARGO_PKG_VERSION")},
            "images": self.images,
            "annotations": self.annotations,
            "categories": categories,
        });
        write_atomic(&self.path, |tmp| {
            let file = std::fs::File::create(tmp)
                .map_err(|e| io_error(&self.path, "cannot create", &e))?;
            let mut out = BufWriter::new(file);
            serde_json::to_writer(&mut out, &doc).map_err(|e| match e.io_error_kind() {
                Some(kind) => io_error(&self.path, "cannot write", &kind.into()),
                None => Error::Sink {
                    path: self.path.clone(),
                    msg: format!("cannot encode: {e}"),
                },
            })?;
            // Flushed here: a buffered writer's drop would hide a full disk.
            out.flush()
                .map_err(|e| io_error(&self.path, "cannot write", &e))
        })?;
        Ok(vec![self.path.clone()])
    }
}
