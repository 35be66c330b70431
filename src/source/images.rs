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
    /// `(index in the full sorted list, path)`; `retain` may drop entries, indices stay.
    files: Vec<(u64, PathBuf)>,
    /// Names are paths relative to this folder.
    root: PathBuf,
    next: usize,
    sequence: bool,
}

impl ImageListReader {
    /// A folder whose JPEG/PNG files, in name order, are the frames of one video.
    pub fn frames_folder(dir: &Path) -> Result<Self, Error> {
        let files = list_folder(dir)?;
        Ok(ImageListReader::new(files, dir.to_path_buf(), true))
    }

    /// A folder of images, or a glob pattern (`data/*.jpg`); each image stands alone.
    pub fn images(pattern: &str) -> Result<Self, Error> {
        let p = Path::new(pattern);
        let (files, root) = if p.is_dir() {
            (list_folder(p)?, p.to_path_buf())
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
            (files, glob_root(pattern))
        };
        Ok(ImageListReader::new(files, root, false))
    }

    fn new(files: Vec<PathBuf>, root: PathBuf, sequence: bool) -> Self {
        ImageListReader {
            files: files
                .into_iter()
                .enumerate()
                .map(|(i, p)| (i as u64, p))
                .collect(),
            root,
            next: 0,
            sequence,
        }
    }

    /// Keeps only the files whose index (in the full sorted list) passes `keep`; the others are never
    /// opened. Indices and names stay those of the full list.
    pub fn retain(&mut self, keep: &dyn Fn(u64) -> bool) {
        self.files.retain(|(i, _)| keep(*i));
    }

    /// The folder names are relative to.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The folder part of a glob pattern before its first wildcard (`data/imgs/*.jpg` -> `data/imgs`).
fn glob_root(pattern: &str) -> PathBuf {
    let mut root = PathBuf::new();
    for c in Path::new(pattern).components() {
        let s = c.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[']) {
            break;
        }
        root.push(c);
    }
    if root.as_os_str() == pattern || root.as_os_str().is_empty() {
        // A plain file path: its folder.
        return Path::new(pattern)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
    }
    root
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
        let (index, path) = self.files.get(self.next)?;
        let index = *index;
        self.next += 1;
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let file = rel.to_string_lossy().replace('\\', "/");
        // The name is the relative path without its extension: unique, and a stem for flat folders.
        let name = rel.with_extension("").to_string_lossy().replace('\\', "/");
        let name = if name.is_empty() {
            format!("{index:05}")
        } else {
            name
        };
        Some(Decoded {
            index,
            name,
            file: Some(file),
            image: read_rgb(path),
        })
    }
}
