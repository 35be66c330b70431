//! Image files as frames: a folder of numbered frames (one sequence, DAVIS layout) or a folder / glob of
//! independent images. Decoding of each file happens when its frame is asked for.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::{Decoded, FrameReader};
use crate::error::Error;

/// File extensions read as images, in any letter case.
const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Reads a sorted list of image files.
pub struct ImageListReader {
    files: Vec<PathBuf>,
    next: usize,
    sequence: bool,
}

impl ImageListReader {
    /// A folder whose JPEG/PNG files, in name order, are the frames of one video.
    pub fn frames_folder(dir: &Path) -> Result<Self, Error> {
        let files = list_folder(dir)?;
        Ok(ImageListReader {
            files,
            next: 0,
            sequence: true,
        })
    }

    /// A folder of images, or a glob pattern (`data/*.jpg`); each image stands alone.
    pub fn images(pattern: &str) -> Result<Self, Error> {
        let p = Path::new(pattern);
        let files = if p.is_dir() {
            list_folder(p)?
        } else {
            let err = |msg: String| Error::Source {
                source_name: pattern.to_string(),
                msg,
            };
            let paths = glob::glob(pattern)
                .map_err(|e| err(format!("not a folder and not a valid glob: {e}")))?;
            let mut files: Vec<PathBuf> = paths
                .filter_map(Result::ok)
                .filter(|f| f.is_file())
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(err("no such folder, and the pattern matches no file".into()));
            }
            files
        };
        Ok(ImageListReader {
            files,
            next: 0,
            sequence: false,
        })
    }
}

fn list_folder(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let err = |msg: String| Error::Source {
        source_name: dir.display().to_string(),
        msg,
    };
    let rd = std::fs::read_dir(dir).map_err(|e| err(format!("cannot read the folder: {e}")))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err("holds no .jpg, .jpeg or .png file".into()));
    }
    Ok(files)
}

/// Decodes an image file into RGB (grayscale, 16-bit and alpha are converted), naming the file on error.
pub fn read_rgb(path: &Path) -> Result<RgbImage, Error> {
    let err = |msg: String| Error::Frame {
        frame: path.display().to_string(),
        msg,
    };
    let reader = image::ImageReader::open(path)
        .map_err(|e| err(format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| err(format!("cannot read: {e}")))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(16384);
    limits.max_image_height = Some(16384);
    limits.max_alloc = Some(1 << 30);
    let mut reader = reader;
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| err(format!("not a readable image ({e})")))?;
    Ok(img.to_rgb8())
}

impl FrameReader for ImageListReader {
    fn fps(&self) -> Option<f64> {
        None
    }

    fn is_sequence(&self) -> bool {
        self.sequence
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.files.len() as u64)
    }

    fn next_frame(&mut self) -> Option<Decoded> {
        let path = self.files.get(self.next)?;
        let index = self.next as u64;
        self.next += 1;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{index:05}"));
        Some(Decoded {
            index,
            name,
            image: read_rgb(path),
        })
    }
}
