//! Sinks: where results go (label PNGs, COCO JSON, JSONL, overlay video and PNGs). Each sink gets every
//! frame in order and closes its files in `finish`, also when a run is stopped early.

pub mod coco;
pub mod contact;
pub mod jsonl;
pub mod lines;
pub mod manifest;
pub mod mot;
pub mod overlay;
pub mod record;
pub mod text;
pub mod video;
pub mod yolo;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use crate::decode::FrameObjects;
use crate::error::Error;
use crate::spec::SinkSpec;

/// One finished frame, as sinks see it.
pub struct FrameRecord<'a> {
    /// Position in the run (0, 1, 2, ... after range and stride).
    pub seq: u64,
    /// Index in the source.
    pub index: u64,
    /// The frame's name, which per-frame outputs are named after: the file stem for images and frame
    /// folders, the zero-padded index for videos.
    pub name: &'a str,
    /// The image file relative to the source folder, for image sources.
    pub file: Option<&'a str>,
    /// The decoded frame, in frame pixels.
    pub image: &'a RgbImage,
    /// The job's results on the frame: per-pixel labels and one entry per object.
    pub result: &'a FrameObjects,
    /// The frame's COCO record, made once for the sinks that need it (RLE encoding is not free).
    pub record: std::cell::OnceCell<record::ImageRecord>,
}

impl FrameRecord<'_> {
    /// The frame's COCO record (boxes, RLE masks), made on first use and shared by the sinks.
    pub fn record(&self) -> &record::ImageRecord {
        self.record.get_or_init(|| record::ImageRecord::of(self))
    }
}

/// An output: gets every finished frame in frame order, then `finish` once, also when the run is
/// stopped early. An error from either ends the run.
pub trait Sink: Send {
    /// Writes one frame's results.
    fn write(&mut self, frame: &FrameRecord<'_>) -> Result<(), Error>;
    /// Flushes and closes; returns the files written.
    fn finish(&mut self) -> Result<Vec<PathBuf>, Error>;
}

/// Facts about the run that some sinks need up front.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// Frames per second: the source's, else `source.fps`, else 24.
    pub fps: f64,
    /// `(id, name)` of every object or category.
    pub categories: Vec<(u32, String)>,
    /// Images finished by an earlier run that this one resumes (auto-labeling).
    pub previous: Arc<Vec<record::ImageRecord>>,
    /// The folder image names are relative to (image sources).
    pub source_root: Option<PathBuf>,
}

/// Builds the running sink a spec describes (creating output folders).
pub fn build(spec: &SinkSpec, ctx: &SinkContext) -> Result<Box<dyn Sink>, Error> {
    Ok(match spec {
        SinkSpec::PalettePng { dir } => Box::new(PalettePngSink::new(dir)?),
        SinkSpec::OverlayPng { dir } => Box::new(overlay::OverlayPngSink::new(dir)?),
        SinkSpec::Coco { path } => Box::new(coco::CocoSink::new(path, ctx)?),
        SinkSpec::Jsonl { path } => Box::new(jsonl::JsonlSink::new(path, &ctx.previous)?),
        SinkSpec::Yolo { dir } => Box::new(yolo::YoloSink::new(dir, ctx)?),
        SinkSpec::Mot { path } => Box::new(mot::MotSink::new(path)?),
        SinkSpec::ContactSheet { path, count } => {
            Box::new(contact::ContactSheetSink::new(path, *count, ctx)?)
        }
        SinkSpec::Video { path, fps } => {
            Box::new(video::VideoSink::new(path, fps.unwrap_or(ctx.fps))?)
        }
    })
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Sink {
        path: dir.to_path_buf(),
        msg: format!("cannot create the folder: {e}"),
    })
}

pub(crate) fn create_parent(path: &Path) -> Result<(), Error> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => create_dir(p),
        _ => Ok(()),
    }
}

/// A sink's I/O error, naming the file; a full disk (or a file-size limit) says what to do about it.
pub(crate) fn io_error(path: &Path, what: &str, e: &std::io::Error) -> Error {
    use std::io::ErrorKind;
    let fix = match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            "; free space on that disk or write the outputs elsewhere"
        }
        ErrorKind::FileTooLarge => {
            "; the file hit a file-size limit (`ulimit -f` or the file system's); raise it or write \
             the outputs elsewhere"
        }
        _ => "",
    };
    Error::Sink {
        path: path.to_path_buf(),
        msg: if fix.is_empty() {
            format!("{what}: {e}")
        } else {
            format!("{what}: {e}{fix} (the files finished before this one are complete)")
        },
    }
}

/// Writes a file through a temporary name and a rename, so a reader never sees half a file; a failed
/// write leaves no temporary file behind.
pub(crate) fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    // Errors name the file being made, not its temporary name.
    let named = |e: Error| match e {
        Error::Sink { path: p, msg } if p == tmp => Error::Sink {
            path: path.to_path_buf(),
            msg,
        },
        other => other,
    };
    let done = write(&tmp).map_err(named).and_then(|()| {
        std::fs::rename(&tmp, path)
            .map_err(|e| io_error(path, "cannot move the finished file into place", &e))
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// DAVIS-style label PNGs named like the frames.
pub struct PalettePngSink {
    dir: PathBuf,
    count: usize,
}

impl PalettePngSink {
    /// A sink that writes `dir/<frame name>.png`, creating `dir` when missing.
    pub fn new(dir: &Path) -> Result<Self, Error> {
        create_dir(dir)?;
        Ok(PalettePngSink {
            dir: dir.to_path_buf(),
            count: 0,
        })
    }
}

impl Sink for PalettePngSink {
    fn write(&mut self, f: &FrameRecord<'_>) -> Result<(), Error> {
        let path = self.dir.join(format!("{}.png", f.name));
        create_parent(&path)?;
        write_atomic(&path, |tmp| {
            crate::palette::write(tmp, f.result.width, f.result.height, &f.result.labels)
        })?;
        self.count += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        Ok(vec![self.dir.clone()])
    }
}

/// A sink that hands every frame to a function: results in memory, for library users
/// (`Pipeline::on_frame`). An error from the function fails the run as a failing sink does.
pub struct Callback<F> {
    f: F,
}

impl<F> Callback<F>
where
    F: FnMut(&FrameRecord<'_>) -> Result<(), Error> + Send,
{
    /// A sink that calls `f` with every finished frame, in order.
    pub fn new(f: F) -> Self {
        Callback { f }
    }
}

impl<F> Sink for Callback<F>
where
    F: FnMut(&FrameRecord<'_>) -> Result<(), Error> + Send,
{
    fn write(&mut self, frame: &FrameRecord<'_>) -> Result<(), Error> {
        (self.f)(frame)
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        Ok(Vec::new())
    }
}
