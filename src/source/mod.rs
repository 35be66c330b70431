//! Sources: where frames come from (a video or URL through FFmpeg, a folder of numbered frames, a folder
//! or glob of images), with frame range and stride. Sources only decode; everything after is `pipeline/`.

mod images;
mod video;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use image::RgbImage;

use crate::error::Error;
use crate::spec::SourceSpec;

pub use images::{decode_rgb, read_rgb, ImageListReader};
pub use video::{init_ffmpeg, VideoReader};

/// One decoded frame, or the reason it could not be decoded.
pub struct Decoded {
    /// Index among all frames of the source (before range and stride).
    pub index: u64,
    /// File stem for images and frame folders, the zero-padded index for videos.
    pub name: String,
    /// For image files: the path relative to the source folder, with its extension.
    pub file: Option<String>,
    /// The frame's pixels, or why it could not be read or decoded (usually an [`Error::Frame`]).
    pub image: Result<RgbImage, Error>,
}

/// Something that yields frames in order.
pub trait FrameReader: Send {
    /// Frames per second, when the source knows it.
    fn fps(&self) -> Option<f64>;
    /// Whether frames form one sequence (video, frame folder) rather than independent images.
    fn is_sequence(&self) -> bool;
    /// Frames in total when known up front (frame folders, image lists).
    fn len_hint(&self) -> Option<u64>;
    /// The next frame; `None` at the end.
    fn next_frame(&mut self) -> Option<Decoded>;
}

/// What the run tells a source besides its spec.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Frames larger than this (width x height) are refused from their header, before decoding.
    pub max_frame_pixels: u64,
    /// Set when the run stops: a stream waiting to reconnect gives up at once.
    pub stop: Arc<AtomicBool>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            max_frame_pixels: crate::spec::RuntimeSpec::default().max_frame_pixels,
            stop: Arc::default(),
        }
    }
}

/// Opens the source a spec names.
pub fn open(spec: &SourceSpec, opts: &SourceOptions) -> Result<Box<dyn FrameReader>, Error> {
    open_filtered(spec, opts, None)
}

/// Opens the source, keeping only frame indices that pass `keep`: image files that fail are never
/// opened (used for shards and for resuming); a video still decodes every frame, the caller skips them.
pub fn open_filtered(
    spec: &SourceSpec,
    opts: &SourceOptions,
    keep: Option<&dyn Fn(u64) -> bool>,
) -> Result<Box<dyn FrameReader>, Error> {
    if let Some(v) = &spec.video {
        return Ok(Box::new(VideoReader::open(
            v,
            spec.reconnect,
            spec.stall_timeout_ms,
            opts,
        )?));
    }
    let list = match (&spec.frames, &spec.images) {
        (Some(dir), _) => Some(ImageListReader::frames_folder(dir, opts.max_frame_pixels)?),
        (None, Some(pattern)) => Some(ImageListReader::images(pattern, opts.max_frame_pixels)?),
        _ => None,
    };
    if let Some(mut list) = list {
        if let Some(k) = keep {
            list.retain(k);
        }
        return Ok(Box::new(list));
    }
    Err(Error::Source {
        source_name: "source".into(),
        msg: "give one of `video`, `frames` or `images`".into(),
    })
}

/// Applies `start`, `end` and `stride` to a reader's frame indices.
pub struct FrameRange {
    /// First index kept (`source.start`).
    pub start: u64,
    /// Index to stop before; `None` reads to the end (`source.end`).
    pub end: Option<u64>,
    /// Keep every `stride`-th index from `start` (at least 1).
    pub stride: u64,
}

impl FrameRange {
    /// The range of `source.start`, `source.end` and `source.stride` (a stride of 0 counts as 1).
    pub fn from_spec(spec: &SourceSpec) -> Self {
        FrameRange {
            start: spec.start,
            end: spec.end,
            stride: spec.stride.max(1),
        }
    }

    /// `Some(true)` keep, `Some(false)` skip, `None` past the end.
    pub fn admit(&self, index: u64) -> Option<bool> {
        if self.end.is_some_and(|e| index >= e) {
            return None;
        }
        Some(index >= self.start && (index - self.start) % self.stride == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_admits_start_end_and_stride() {
        let r = FrameRange {
            start: 2,
            end: Some(9),
            stride: 3,
        };
        let kept: Vec<u64> = (0..20)
            .take_while(|&i| r.admit(i).is_some())
            .filter(|&i| r.admit(i) == Some(true))
            .collect();
        assert_eq!(kept, vec![2, 5, 8]);
    }
}
