//! YOLO-seg labels, as Ultralytics reads them: `labels/<image>.txt` with one line per instance,
//! `class x1 y1 x2 y2 ...` (the outline of the instance's largest region, coordinates normalised to
//! 0..1), an empty file for an image without instances, and `data.yaml` naming the classes. When the
//! source is a folder of images, `images` links to it, so the folder is a dataset as it stands.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{create_dir, create_parent, write_atomic, FrameRecord, Sink, SinkContext};
use crate::error::Error;
use crate::post::poly::outline;

/// Outline simplification tolerance, in pixels.
const TOLERANCE: f64 = 1.0;

/// The `yolo` sink: YOLO-seg label files and `data.yaml` in a dataset folder.
pub struct YoloSink {
    dir: PathBuf,
    /// Class index of each category id: its position among the categories.
    categories: Vec<(u32, String)>,
    source_root: Option<PathBuf>,
}

impl YoloSink {
    /// A sink for the dataset folder `dir` with `ctx`'s categories as classes; creates `dir/labels`.
    pub fn new(dir: &Path, ctx: &SinkContext) -> Result<Self, Error> {
        create_dir(&dir.join("labels"))?;
        Ok(YoloSink {
            dir: dir.to_path_buf(),
            categories: ctx.categories.clone(),
            source_root: ctx.source_root.clone(),
        })
    }
}

impl Sink for YoloSink {
    fn write(&mut self, f: &FrameRecord<'_>) -> Result<(), Error> {
        let (w, h) = (f.result.width as f64, f.result.height as f64);
        let mut text = String::new();
        for o in &f.result.objects {
            let Some(class) = self.categories.iter().position(|c| c.0 == o.category) else {
                continue;
            };
            let Some(poly) = outline(&o.mask, TOLERANCE) else {
                continue;
            };
            text.push_str(&class.to_string());
            for p in poly {
                text.push_str(&format!(
                    " {:.6} {:.6}",
                    (p[0] / w).clamp(0.0, 1.0),
                    (p[1] / h).clamp(0.0, 1.0)
                ));
            }
            text.push('\n');
        }
        let path = self.dir.join("labels").join(format!("{}.txt", f.name));
        create_parent(&path)?;
        write_atomic(&path, |tmp| {
            std::fs::write(tmp, &text).map_err(|e| Error::Sink {
                path: path.clone(),
                msg: format!("cannot write: {e}"),
            })
        })
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        let images = self.dir.join("images");
        if let Some(root) = &self.source_root {
            if !images.exists() {
                let target = std::path::absolute(root).unwrap_or_else(|_| root.clone());
                #[cfg(unix)]
                if let Err(e) = std::os::unix::fs::symlink(&target, &images) {
                    tracing::warn!("cannot link {} to the images: {e}", images.display());
                }
            }
        }
        let mut text = String::from(
            "# YOLO-seg dataset written by vprompt: labels/ holds one .txt per image;\n\
             # images/ links to the labeled images.\n",
        );
        let abs = std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone());
        text.push_str(&format!("path: {}\n", json_str(&abs.to_string_lossy())));
        text.push_str("train: images\nval: images\n");
        text.push_str(&format!("nc: {}\nnames:\n", self.categories.len()));
        for (k, (_, name)) in self.categories.iter().enumerate() {
            text.push_str(&format!("  {k}: {}\n", json_str(name)));
        }
        let path = self.dir.join("data.yaml");
        write_atomic(&path, |tmp| {
            let mut f = std::fs::File::create(tmp).map_err(|e| Error::Sink {
                path: path.clone(),
                msg: format!("cannot create: {e}"),
            })?;
            f.write_all(text.as_bytes()).map_err(|e| Error::Sink {
                path: path.clone(),
                msg: format!("cannot write: {e}"),
            })
        })?;
        Ok(vec![self.dir.clone()])
    }
}

/// A YAML-safe quoted string (JSON strings are YAML).
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}
