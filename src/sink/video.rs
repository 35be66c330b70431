//! The overlay video: H.264 (libx264) in MP4 through FFmpeg. Frames are padded to even sizes (yuv420p
//! needs them); the encoder starts on the first frame, so its size is the first frame's.

use std::path::{Path, PathBuf};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling::{Context as Scaler, Flags};
use ffmpeg::{codec, encoder, format, Rational};
use ffmpeg_next as ffmpeg;

use super::{create_parent, overlay, FrameRecord, Sink};
use crate::error::Error;

struct Open {
    octx: format::context::Output,
    enc: encoder::Video,
    scaler: Scaler,
    width: u32,
    height: u32,
    stream_tb: Rational,
}

/// The `video` sink: the overlay video, H.264 in MP4.
pub struct VideoSink {
    path: PathBuf,
    tmp: PathBuf,
    fps: f64,
    open: Option<Open>,
    frames: i64,
    done: bool,
}

// SAFETY: the FFmpeg contexts are owned by this sink alone and used from one thread at a time.
unsafe impl Send for VideoSink {}

impl VideoSink {
    /// A sink for `path` at `fps` frames per second (25 when `fps` is not a positive number); the
    /// video is written to `<path>.part.mp4` and renamed when finished.
    pub fn new(path: &Path, fps: f64) -> Result<Self, Error> {
        create_parent(path)?;
        crate::source::init_ffmpeg().map_err(|e| Error::Sink {
            path: path.to_path_buf(),
            msg: format!("cannot start FFmpeg: {e}"),
        })?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".part.mp4");
        Ok(VideoSink {
            path: path.to_path_buf(),
            tmp: PathBuf::from(tmp),
            fps: if fps > 0.0 && fps.is_finite() {
                fps
            } else {
                25.0
            },
            open: None,
            frames: 0,
            done: false,
        })
    }

    fn err(&self, msg: String) -> Error {
        Error::Sink {
            path: self.path.clone(),
            msg,
        }
    }

    fn start(&mut self, w: u32, h: u32) -> Result<Open, Error> {
        let (ew, eh) = (w + (w & 1), h + (h & 1));
        let mut octx = format::output_as(&self.tmp, "mp4")
            .map_err(|e| self.err(format!("cannot create the video file: {e}")))?;
        let codec = encoder::find_by_name("libx264")
            .or_else(|| encoder::find(codec::Id::H264))
            .ok_or_else(|| {
                self.err("FFmpeg has no H.264 encoder (install libx264 / ffmpeg with it)".into())
            })?;
        let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);
        let mut ost = octx
            .add_stream(codec)
            .map_err(|e| self.err(format!("cannot add the video stream: {e}")))?;
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| self.err(format!("cannot make the encoder: {e}")))?;
        // Time base in 1/1000 frame units keeps fractional rates (29.97) exact enough.
        let rate = Rational::new((self.fps * 1000.0).round() as i32, 1000);
        enc.set_width(ew);
        enc.set_height(eh);
        enc.set_format(Pixel::YUV420P);
        enc.set_frame_rate(Some(rate));
        enc.set_time_base(rate.invert());
        if global_header {
            enc.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut opts = ffmpeg::Dictionary::new();
        opts.set("preset", "veryfast");
        opts.set("crf", "23");
        let enc = enc
            .open_with(opts)
            .map_err(|e| self.err(format!("cannot open the H.264 encoder: {e}")))?;
        ost.set_parameters(&enc);
        ost.set_time_base(rate.invert());
        octx.write_header()
            .map_err(|e| self.err(format!("cannot write the video header: {e}")))?;
        let stream_tb = octx
            .stream(0)
            .map(|s| s.time_base())
            .unwrap_or(rate.invert());
        let scaler = Scaler::get(
            Pixel::RGB24,
            ew,
            eh,
            Pixel::YUV420P,
            ew,
            eh,
            Flags::BILINEAR,
        )
        .map_err(|e| self.err(format!("cannot make the colour converter: {e}")))?;
        Ok(Open {
            octx,
            enc,
            scaler,
            width: ew,
            height: eh,
            stream_tb,
        })
    }

    fn drain(open: &mut Open, enc_tb: Rational) -> Result<(), ffmpeg::Error> {
        let mut pkt = ffmpeg::Packet::empty();
        while open.enc.receive_packet(&mut pkt).is_ok() {
            pkt.set_stream(0);
            // One frame lasts one tick of the encoder's time base. Without a duration the MP4 muxer
            // ends its edit list at the last frame's start, and players drop that frame.
            pkt.set_duration(1);
            pkt.rescale_ts(enc_tb, open.stream_tb);
            pkt.write_interleaved(&mut open.octx)?;
        }
        Ok(())
    }
}

impl Sink for VideoSink {
    fn write(&mut self, f: &FrameRecord<'_>) -> Result<(), Error> {
        let img = overlay::draw(f.image, &f.result.labels);
        if self.open.is_none() {
            let o = self.start(img.width(), img.height())?;
            self.open = Some(o);
        }
        let enc_tb = Rational::new(1000, (self.fps * 1000.0).round() as i32);
        let pts = self.frames;
        let path = self.path.clone();
        let open = self.open.as_mut().expect("opened above");
        let (w, h) = (open.width, open.height);
        let mut rgb = ffmpeg::frame::Video::new(Pixel::RGB24, w, h);
        let stride = rgb.stride(0);
        let data = rgb.data_mut(0);
        data.fill(0);
        // Frames of another size than the first are placed at the top-left and cropped.
        let cw = img.width().min(w) as usize;
        let ch = img.height().min(h) as usize;
        let src: &[u8] = &img;
        let row = img.width() as usize * 3;
        for y in 0..ch {
            data[y * stride..y * stride + cw * 3].copy_from_slice(&src[y * row..y * row + cw * 3]);
        }
        let mut yuv = ffmpeg::frame::Video::empty();
        let err = |msg: String| Error::Sink {
            path: path.clone(),
            msg,
        };
        open.scaler
            .run(&rgb, &mut yuv)
            .map_err(|e| err(format!("colour conversion failed: {e}")))?;
        yuv.set_pts(Some(pts));
        open.enc
            .send_frame(&yuv)
            .map_err(|e| err(format!("encoding frame {} failed: {e}", f.index)))?;
        Self::drain(open, enc_tb)
            .map_err(|e| ffmpeg_error(&path, "writing the video failed", e))?;
        self.frames += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<PathBuf>, Error> {
        if self.done {
            return Ok(vec![self.path.clone()]);
        }
        self.done = true;
        let enc_tb = Rational::new(1000, (self.fps * 1000.0).round() as i32);
        let Some(mut open) = self.open.take() else {
            return Ok(vec![]);
        };
        let path = self.path.clone();
        let done = (|| {
            open.enc
                .send_eof()
                .map_err(|e| ffmpeg_error(&path, "cannot finish encoding", e))?;
            Self::drain(&mut open, enc_tb)
                .map_err(|e| ffmpeg_error(&path, "writing the video failed", e))?;
            open.octx
                .write_trailer()
                .map_err(|e| ffmpeg_error(&path, "cannot finish the video file", e))
        })();
        drop(open);
        if let Err(e) = done {
            // Without its trailer an MP4 does not play: remove the partial file rather than leave it.
            let _ = std::fs::remove_file(&self.tmp);
            return Err(e);
        }
        let err = |msg: String| Error::Sink {
            path: path.clone(),
            msg,
        };
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| err(format!("cannot move the finished video into place: {e}")))?;
        Ok(vec![self.path.clone()])
    }
}

/// A sink error from FFmpeg; an OS error (a full disk) is reported as such, with its fix.
fn ffmpeg_error(path: &Path, what: &str, e: ffmpeg::Error) -> Error {
    match e {
        ffmpeg::Error::Other { errno } => {
            super::io_error(path, what, &std::io::Error::from_raw_os_error(errno))
        }
        other => Error::Sink {
            path: path.to_path_buf(),
            msg: format!("{what}: {other}"),
        },
    }
}
