//! JSON Lines: one line per frame with each object's id, box (`xyxy` frame pixels), score and area,
//! flushed per line so that a reader can follow a live run.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{create_parent, FrameRecord, Sink};
use crate::error::Error;

pub struct JsonlSink {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
}

impl JsonlSink {
    pub fn new(path: &Path) -> Result<Self, Error> {
        create_parent(path)?;
        let file = std::fs::File::create(path).map_err(|e| Error::Sink {
            path: path.to_path_buf(),
            msg: format!("cannot create: {e}"),
        })?;
        Ok(JsonlSink {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }
}

impl Sink for JsonlSink {
    fn write(&mut self, f: &FrameRecord<'_>) -> Result<(), Error> {
        let objects: Vec<_> = f
            .result
            .objects
            .iter()
            .map(|o| {
                json!({
                    "id": o.id,
                    "score": (o.score as f64 * 1e4).round() / 1e4,
                    "pred_iou": (o.pred_iou as f64 * 1e4).round() / 1e4,
                    "area": o.area,
                    "box_xyxy": o.box_xyxy,
                })
            })
            .collect();
        let line = json!({
            "seq": f.seq,
            "frame": f.index,
            "name": f.name,
            "width": f.result.width,
            "height": f.result.height,
            "objects": objects,
        });
        let err = |e: std::io::Error| Error::Sink {
            path: self.path.clone(),
            msg: format!("cannot write: {e}"),
        };
        writeln!(self.out, "{line}").map_err(err)?;
        self.out.flush().map_err(err)
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        self.out.flush().map_err(|e| Error::Sink {
            path: self.path.clone(),
            msg: format!("cannot write: {e}"),
        })?;
        Ok(vec![self.path.clone()])
    }
}
