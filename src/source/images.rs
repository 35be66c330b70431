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
    max_pixels: u64,
}

impl ImageListReader {
    /// A folder whose JPEG/PNG files, in name order, are the frames of one video.
    /// Images larger than `max_pixels` are refused from their header.
    pub fn frames_folder(dir: &Path, max_pixels: u64) -> Result<Self, Error> {
        let files = list_folder(dir)?;
        Ok(ImageListReader::new(
            files,
            dir.to_path_buf(),
            true,
            max_pixels,
        ))
    }

    /// A folder of images, or a glob pattern (`data/*.jpg`); each image stands alone.
    pub fn images(pattern: &str, max_pixels: u64) -> Result<Self, Error> {
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
        Ok(ImageListReader::new(files, root, false, max_pixels))
    }

    fn new(files: Vec<PathBuf>, root: PathBuf, sequence: bool, max_pixels: u64) -> Self {
        ImageListReader {
            max_pixels,
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

/// Decodes an image file into RGB (grayscale, CMYK, 16-bit and alpha are converted), naming the file on
/// error. The size in the header is checked against `max_pixels` before any pixel is decoded, and the
/// format is taken from the content (a PNG named `.jpg` reads as a PNG).
pub fn read_rgb(path: &Path, max_pixels: u64) -> Result<RgbImage, Error> {
    let reader = image::ImageReader::open(path).map_err(|e| Error::Frame {
        frame: path.display().to_string(),
        msg: format!("cannot open: {e}"),
    })?;
    decode_with(reader, path, max_pixels)
}

/// As [`read_rgb`], from the bytes of an image file; `path` names it in errors.
pub fn decode_rgb(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<RgbImage, Error> {
    decode_with(
        image::ImageReader::new(std::io::Cursor::new(bytes)),
        path,
        max_pixels,
    )
}

fn decode_with<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
    path: &Path,
    max_pixels: u64,
) -> Result<RgbImage, Error> {
    use image::ImageDecoder;
    let err = |msg: String| Error::Frame {
        frame: path.display().to_string(),
        msg,
    };
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| err(format!("cannot read: {e}")))?;
    let mut limits = image::Limits::default();
    // Enough for the largest accepted frame at 16-bit RGBA, the widest layout a decoder produces.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(1 << 26));
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| {
        err(format!(
            "not a readable image ({e}); frames must be JPEG or PNG files"
        ))
    })?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(err(format!(
            "the image is {w}x{h} ({pixels} pixels), more than runtime.max_frame_pixels \
             ({max_pixels}); downscale it or raise the limit"
        )));
    }
    if pixels == 0 {
        return Err(err(format!("the image is {w}x{h}: it has no pixel")));
    }
    let img = image::DynamicImage::from_decoder(decoder)
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
            image: read_rgb(path, self.max_pixels),
        })
    }
}
