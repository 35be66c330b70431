//! JSON Lines: one line per frame with each object's id, box (`xyxy` frame pixels), score and area,
//! written per line so that a reader can follow a live run. A line that cannot be written whole (a full
//! disk) is cut off again, so the file always ends with a complete line.

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{create_parent, io_error, FrameRecord, Sink};
use crate::error::Error;

pub struct JsonlSink {
    path: PathBuf,
    out: std::fs::File,
    /// Bytes of complete lines written.
    len: u64,
}

impl JsonlSink {
    pub fn new(path: &Path) -> Result<Self, Error> {
        create_parent(path)?;
        let out = std::fs::File::create(path).map_err(|e| io_error(path, "cannot create", &e))?;
        Ok(JsonlSink {
            path: path.to_path_buf(),
            out,
            len: 0,
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
        let mut text = line.to_string();
        text.push('\n');
        if let Err(e) = self.out.write_all(text.as_bytes()) {
            // Cut the partial line off (best effort: a full disk still allows shrinking a file).
            let _ = self.out.set_len(self.len);
            let _ = self.out.seek(std::io::SeekFrom::Start(self.len));
            return Err(io_error(&self.path, "cannot write", &e));
        }
        self.len += text.len() as u64;
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        self.out
            .flush()
            .map_err(|e| io_error(&self.path, "cannot write", &e))?;
        Ok(vec![self.path.clone()])
    }
}
