//! JSON Lines: one line per frame with each object's id, box (`xyxy` frame pixels), score and area,
//! written per line so that a reader can follow a live run. A line that cannot be written whole (a full
//! disk) is cut off again, so the file always ends with a complete line. A resumed auto-labeling run keeps
//! the lines of the images its manifest holds and appends after them.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::lines::LineFile;
use super::record::ImageRecord;
use super::{create_parent, io_error, write_atomic, FrameRecord, Sink};
use crate::error::Error;

/// The `jsonl` sink: one JSON line per frame, written as each frame finishes.
pub struct JsonlSink {
    out: LineFile,
}

impl JsonlSink {
    /// A sink for `path`: an existing file is replaced, or, resuming with `previous` images, cut to
    /// their lines and appended to.
    pub fn new(path: &Path, previous: &[ImageRecord]) -> Result<Self, Error> {
        create_parent(path)?;
        if !previous.is_empty() && path.exists() {
            keep_done_lines(path, previous)?;
        } else if path.exists() {
            std::fs::remove_file(path).map_err(|e| io_error(path, "cannot replace", &e))?;
        }
        Ok(JsonlSink {
            out: LineFile::append(path)?,
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
                    "category": o.category,
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
        self.out.write(&text)
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        self.out.finish()
    }
}

/// Rewrites the file with only the lines of images an earlier run finished (a kill may have left lines
/// of images the manifest does not hold, or half a line).
fn keep_done_lines(path: &Path, previous: &[ImageRecord]) -> Result<(), Error> {
    let err = |e: std::io::Error| Error::Sink {
        path: path.to_path_buf(),
        msg: format!("cannot resume: {e}"),
    };
    let done: std::collections::HashSet<u64> = previous.iter().map(|r| r.index).collect();
    let text = std::fs::read_to_string(path).map_err(err)?;
    let mut kept = String::new();
    let mut seen = std::collections::HashSet::new();
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let frame = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["frame"].as_u64());
        if let Some(i) = frame.filter(|i| done.contains(i)) {
            if seen.insert(i) {
                kept.push_str(line);
            }
        }
    }
    write_atomic(path, |tmp| std::fs::write(tmp, &kept).map_err(err))
}
