//! Overlays for people to look at: each object's pixels tinted with its palette colour and its outline
//! drawn solid. Used by the overlay video and the overlay PNGs.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::{create_dir, create_parent, io_error, write_atomic, FrameRecord, Sink};
use crate::error::Error;
use crate::palette;

/// The frame with labels drawn over it (`labels` is one id per pixel, 0 = none).
pub fn draw(image: &RgbImage, labels: &[u8]) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut out = image.clone();
    let buf: &mut [u8] = &mut out;
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let id = labels[i];
            if id == 0 {
                continue;
            }
            let edge = (x == 0 || labels[i - 1] != id)
                || (x + 1 == w || labels[i + 1] != id)
                || (y == 0 || labels[i - w] != id)
                || (y + 1 == h || labels[i + w] != id);
            let c = palette::color(id);
            let px = &mut buf[i * 3..i * 3 + 3];
            for k in 0..3 {
                px[k] = if edge {
                    c[k]
                } else {
                    ((px[k] as u16 + c[k] as u16) / 2) as u8
                };
            }
        }
    }
    out
}

/// One overlay PNG per frame, named like the frame.
pub struct OverlayPngSink {
    dir: PathBuf,
}

impl OverlayPngSink {
    /// A sink that writes `dir/<frame name>.png`, creating `dir` when missing.
    pub fn new(dir: &Path) -> Result<Self, Error> {
        create_dir(dir)?;
        Ok(OverlayPngSink {
            dir: dir.to_path_buf(),
        })
    }
}

impl Sink for OverlayPngSink {
    fn write(&mut self, f: &FrameRecord<'_>) -> Result<(), Error> {
        let img = draw(f.image, &f.result.labels);
        let path = self.dir.join(format!("{}.png", f.name));
        create_parent(&path)?;
        // Encoded in memory and written in one go: the image crate's own `save` drops a buffered
        // writer without flushing it, which would hide a full disk.
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::Sink {
            path: path.clone(),
            msg: format!("cannot encode: {e}"),
        })?;
        write_atomic(&path, |tmp| {
            std::fs::write(tmp, &bytes).map_err(|e| io_error(&path, "cannot write", &e))
        })
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        Ok(vec![self.dir.clone()])
    }
}
