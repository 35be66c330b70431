//! Videos and streams through FFmpeg (`ffmpeg-next`): any file or URL libavformat opens, the best video
//! stream decoded and converted to RGB by swscale, one frame at a time.

use std::collections::VecDeque;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling::{Context as Scaler, Flags};
use ffmpeg_next as ffmpeg;
use image::RgbImage;

use super::{Decoded, FrameReader};
use crate::error::Error;

/// Starts FFmpeg once and quiets its log to errors (both readers and writers call this).
pub fn init_ffmpeg() -> Result<(), ffmpeg::Error> {
    ffmpeg::init()?;
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
    Ok(())
}

/// A video file or stream URL, decoded in order.
pub struct VideoReader {
    input: ffmpeg::format::context::Input,
    decoder: ffmpeg::decoder::Video,
    stream_index: usize,
    scaler: Option<(Scaler, Pixel, u32, u32)>,
    fps: Option<f64>,
    frames_hint: Option<u64>,
    pending: VecDeque<RgbImage>,
    next_index: u64,
    finished: bool,
    name: String,
}

// SAFETY: the FFmpeg contexts are owned by this reader alone and used from one thread at a time; the
// raw pointers inside `ffmpeg-next`'s wrappers are what keeps them from being `Send` automatically.
unsafe impl Send for VideoReader {}

impl VideoReader {
    pub fn open(location: &str) -> Result<Self, Error> {
        let err = |msg: String| Error::Source {
            source_name: location.to_string(),
            msg,
        };
        init_ffmpeg().map_err(|e| err(format!("cannot start FFmpeg: {e}")))?;
        if !location.contains("://") && !std::path::Path::new(location).exists() {
            return Err(err("no such file".into()));
        }
        let input = ffmpeg::format::input(location)
            .map_err(|e| err(format!("FFmpeg cannot open it as a video ({e})")))?;
        let stream = input
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or_else(|| err("has no video stream".into()))?;
        let stream_index = stream.index();
        let rate = stream.avg_frame_rate();
        let fps = (rate.denominator() != 0 && rate.numerator() > 0).then(|| f64::from(rate));
        let frames_hint = (stream.frames() > 0).then_some(stream.frames() as u64);
        let ctx = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| err(format!("cannot read the video stream's parameters: {e}")))?;
        let decoder = ctx
            .decoder()
            .video()
            .map_err(|e| err(format!("no decoder for this video codec: {e}")))?;
        Ok(VideoReader {
            input,
            decoder,
            stream_index,
            scaler: None,
            fps,
            frames_hint,
            pending: VecDeque::new(),
            next_index: 0,
            finished: false,
            name: location.to_string(),
        })
    }

    fn convert(&mut self, frame: &ffmpeg::frame::Video) -> Result<RgbImage, Error> {
        let (fmt, w, h) = (frame.format(), frame.width(), frame.height());
        if w == 0 || h == 0 {
            return Err(Error::Frame {
                frame: format!("{} frame {}", self.name, self.next_index),
                msg: "decoded frame has zero size".into(),
            });
        }
        let rebuild =
            !matches!(&self.scaler, Some((_, f, sw, sh)) if *f == fmt && *sw == w && *sh == h);
        if rebuild {
            let s = Scaler::get(fmt, w, h, Pixel::RGB24, w, h, Flags::BILINEAR).map_err(|e| {
                Error::Frame {
                    frame: format!("{} frame {}", self.name, self.next_index),
                    msg: format!("cannot convert pixel format {fmt:?} to RGB: {e}"),
                }
            })?;
            self.scaler = Some((s, fmt, w, h));
        }
        let Some((scaler, ..)) = self.scaler.as_mut() else {
            unreachable!("scaler was just built")
        };
        let mut rgb = ffmpeg::frame::Video::empty();
        scaler.run(frame, &mut rgb).map_err(|e| Error::Frame {
            frame: format!("{} frame {}", self.name, self.next_index),
            msg: format!("pixel conversion failed: {e}"),
        })?;
        let stride = rgb.stride(0);
        let data = rgb.data(0);
        let row = w as usize * 3;
        let mut out = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            out.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        Ok(RgbImage::from_raw(w, h, out).expect("buffer sized from the frame"))
    }

    /// Pulls decoded frames out of the decoder into `pending`; returns how many.
    fn drain_decoder(&mut self) -> Result<usize, Error> {
        let mut n = 0;
        let mut frame = ffmpeg::frame::Video::empty();
        while self.decoder.receive_frame(&mut frame).is_ok() {
            let img = self.convert(&frame)?;
            self.pending.push_back(img);
            n += 1;
        }
        Ok(n)
    }

    fn fill(&mut self) -> Result<(), Error> {
        while self.pending.is_empty() && !self.finished {
            let mut packet = ffmpeg::Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) => {
                    if packet.stream() != self.stream_index {
                        continue;
                    }
                    // A corrupt packet is skipped, as ffmpeg does; the decoder resyncs at the next one.
                    if self.decoder.send_packet(&packet).is_ok() {
                        self.drain_decoder()?;
                    }
                }
                Err(ffmpeg::Error::Eof) => {
                    self.finished = true;
                    let _ = self.decoder.send_eof();
                    self.drain_decoder()?;
                }
                Err(ffmpeg::Error::InvalidData) => continue,
                Err(e) => {
                    self.finished = true;
                    let _ = self.decoder.send_eof();
                    self.drain_decoder()?;
                    if self.pending.is_empty() {
                        return Err(Error::Source {
                            source_name: self.name.clone(),
                            msg: format!("reading stopped after frame {}: {e}", self.next_index),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

impl FrameReader for VideoReader {
    fn fps(&self) -> Option<f64> {
        self.fps
    }

    fn is_sequence(&self) -> bool {
        true
    }

    fn len_hint(&self) -> Option<u64> {
        self.frames_hint
    }

    fn next_frame(&mut self) -> Option<Decoded> {
        let index = self.next_index;
        let name = format!("{index:05}");
        if let Err(e) = self.fill() {
            self.next_index += 1;
            return Some(Decoded {
                index,
                name,
                file: None,
                image: Err(e),
            });
        }
        let img = self.pending.pop_front()?;
        self.next_index += 1;
        Some(Decoded {
            index,
            name,
            file: None,
            image: Ok(img),
        })
    }
}
