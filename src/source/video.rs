//! Videos and streams through FFmpeg (`ffmpeg-next`): any file or URL libavformat opens, the best video
//! stream decoded and converted to RGB by swscale, one frame at a time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling::{Context as Scaler, Flags};
use ffmpeg_next as ffmpeg;
use image::RgbImage;

use super::{Decoded, FrameReader, SourceOptions};
use crate::error::Error;
use crate::spec::ReconnectSpec;

/// Starts FFmpeg once and quiets its log to errors (both readers and writers call this).
pub fn init_ffmpeg() -> Result<(), ffmpeg::Error> {
    ffmpeg::init()?;
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
    Ok(())
}

/// A video file or stream URL, decoded in order.
pub struct VideoReader {
    opened: Opened,
    scaler: Option<(Scaler, Pixel, u32, u32)>,
    fps: Option<f64>,
    frames_hint: Option<u64>,
    pending: VecDeque<RgbImage>,
    next_index: u64,
    /// Frames the decoder has delivered (for the truncation warning).
    decoded: u64,
    finished: bool,
    name: String,
    max_pixels: u64,
    stream: Option<StreamState>,
}

/// What a stream (URL) keeps besides the file case: how to reopen it and when to give up waiting.
struct StreamState {
    reconnect: Option<ReconnectSpec>,
    stall: Duration,
    stop: Arc<AtomicBool>,
    /// Milliseconds since `epoch` after which a blocked read is interrupted (a stalled stream).
    deadline_ms: Arc<AtomicU64>,
    epoch: Instant,
    /// Reconnect tries since the last frame.
    tries: u32,
}

impl StreamState {
    fn touch(&self) {
        let now = self.epoch.elapsed() + self.stall;
        self.deadline_ms
            .store(now.as_millis() as u64, Ordering::SeqCst);
    }
}

struct Opened {
    input: ffmpeg::format::context::Input,
    decoder: ffmpeg::decoder::Video,
    stream_index: usize,
}

// SAFETY: the FFmpeg contexts are owned by this reader alone and used from one thread at a time; the
// raw pointers inside `ffmpeg-next`'s wrappers are what keeps them from being `Send` automatically.
unsafe impl Send for VideoReader {}

impl VideoReader {
    /// Opens a file or URL. Frames larger than `opts.max_frame_pixels` are refused from the stream's
    /// header; a URL that stays silent for `stall_timeout_ms` counts as dropped, and is reopened as
    /// `reconnect` says (or ends the run cleanly without it).
    pub fn open(
        location: &str,
        reconnect: Option<ReconnectSpec>,
        stall_timeout_ms: u64,
        opts: &SourceOptions,
    ) -> Result<Self, Error> {
        let err = |msg: String| Error::Source {
            source_name: location.to_string(),
            msg,
        };
        init_ffmpeg().map_err(|e| err(format!("cannot start FFmpeg: {e}")))?;
        let is_url = location.contains("://");
        if !is_url && !std::path::Path::new(location).exists() {
            return Err(err("no such file".into()));
        }
        let stream = is_url.then(|| StreamState {
            reconnect,
            stall: Duration::from_millis(stall_timeout_ms.max(1)),
            stop: opts.stop.clone(),
            deadline_ms: Arc::default(),
            epoch: Instant::now(),
            tries: 0,
        });
        let opened = open_input(location, stream.as_ref(), opts.max_frame_pixels)?;
        let st = opened
            .input
            .stream(opened.stream_index)
            .ok_or_else(|| err("has no video stream".into()))?;
        let rate = st.avg_frame_rate();
        let fps = (rate.denominator() != 0 && rate.numerator() > 0).then(|| f64::from(rate));
        let frames_hint = (st.frames() > 0).then_some(st.frames() as u64);
        Ok(VideoReader {
            opened,
            scaler: None,
            fps,
            frames_hint,
            pending: VecDeque::new(),
            next_index: 0,
            decoded: 0,
            finished: false,
            name: location.to_string(),
            max_pixels: opts.max_frame_pixels,
            stream,
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
        if w as u64 * h as u64 > self.max_pixels {
            return Err(Error::Frame {
                frame: format!("{} frame {}", self.name, self.next_index),
                msg: format!(
                    "{w}x{h} is larger than runtime.max_frame_pixels ({}); downscale the video or \
                     raise the limit",
                    self.max_pixels
                ),
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
        while self.opened.decoder.receive_frame(&mut frame).is_ok() {
            let img = self.convert(&frame)?;
            self.pending.push_back(img);
            self.decoded += 1;
            n += 1;
        }
        if n > 0 {
            if let Some(s) = &mut self.stream {
                s.tries = 0;
            }
        }
        Ok(n)
    }

    /// The input ended or failed: flush the decoder, then reopen a stream if configured.
    /// Returns whether reading goes on.
    fn ended(&mut self, why: Option<ffmpeg::Error>) -> Result<bool, Error> {
        let _ = self.opened.decoder.send_eof();
        self.drain_decoder()?;
        let Some(stream) = &self.stream else {
            if let Some(e) = why {
                if self.pending.is_empty() {
                    return Err(Error::Source {
                        source_name: self.name.clone(),
                        msg: format!("reading stopped after frame {}: {e}", self.next_index),
                    });
                }
            } else if let Some(n) = self.frames_hint.filter(|&n| self.decoded < n) {
                tracing::warn!(
                    "{}: the file declares {n} frames but only {} could be decoded; it may be \
                     truncated (the frames read are used)",
                    self.name,
                    self.decoded
                );
            }
            return Ok(false);
        };
        let at = self.next_index + self.pending.len() as u64;
        let what = match why {
            Some(ffmpeg::Error::Exit) if stream.stop.load(Ordering::SeqCst) => return Ok(false),
            Some(ffmpeg::Error::Exit) => format!(
                "sent nothing for {} ms (source.stall_timeout_ms)",
                stream.stall.as_millis()
            ),
            Some(e) => format!("dropped ({e})"),
            None => "ended".to_string(),
        };
        let Some(r) = stream.reconnect else {
            tracing::warn!(
                "stream {} {what} after frame {at}; the run ends here (set source.reconnect to \
                 reopen it)",
                self.name
            );
            return Ok(false);
        };
        tracing::warn!("stream {} {what} after frame {at}; reconnecting", self.name);
        while self.stream.as_ref().is_some_and(|s| s.tries < r.attempts) {
            let stream = self.stream.as_mut().expect("checked above");
            stream.tries += 1;
            let tries = stream.tries;
            let wait = r
                .backoff_ms
                .saturating_mul(1u64 << (tries - 1).min(16))
                .min(MAX_BACKOFF_MS);
            let until = Instant::now() + Duration::from_millis(wait);
            while Instant::now() < until {
                if stream.stop.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            match open_input(&self.name, self.stream.as_ref(), self.max_pixels) {
                Ok(o) => {
                    tracing::warn!(
                        "stream {} reconnected (try {tries} of {})",
                        self.name,
                        r.attempts
                    );
                    self.opened = o;
                    return Ok(true);
                }
                Err(e) => tracing::warn!("try {tries} of {} failed: {e}", r.attempts),
            }
        }
        tracing::warn!(
            "stream {}: gave up after {} reconnect tries; the run ends after frame {at}",
            self.name,
            r.attempts
        );
        Ok(false)
    }

    fn fill(&mut self) -> Result<(), Error> {
        while self.pending.is_empty() && !self.finished {
            if let Some(s) = &self.stream {
                s.touch();
            }
            let mut packet = ffmpeg::Packet::empty();
            let outcome = packet.read(&mut self.opened.input);
            let why = match outcome {
                Ok(()) => {
                    if packet.stream() != self.opened.stream_index {
                        continue;
                    }
                    // A corrupt packet is skipped, as ffmpeg does; the decoder resyncs at the next one.
                    if self.opened.decoder.send_packet(&packet).is_ok() {
                        self.drain_decoder()?;
                    }
                    continue;
                }
                Err(ffmpeg::Error::InvalidData) => continue,
                Err(ffmpeg::Error::Eof) => None,
                Err(e) => Some(e),
            };
            let result = self.ended(why);
            if !matches!(result, Ok(true)) {
                self.finished = true;
            }
            result?;
        }
        Ok(())
    }
}

/// The longest wait between two reconnect tries.
const MAX_BACKOFF_MS: u64 = 30_000;

/// Opens `location` and its best video stream's decoder; for streams, reads can be interrupted by the
/// run's stop flag and by the stall deadline.
fn open_input(
    location: &str,
    stream: Option<&StreamState>,
    max_pixels: u64,
) -> Result<Opened, Error> {
    let err = |msg: String| Error::Source {
        source_name: location.to_string(),
        msg,
    };
    let input = match stream {
        Some(s) => {
            s.touch();
            let (stop, deadline, epoch) = (s.stop.clone(), s.deadline_ms.clone(), s.epoch);
            ffmpeg::format::input_with_interrupt(location, move || {
                stop.load(Ordering::SeqCst)
                    || epoch.elapsed().as_millis() as u64 > deadline.load(Ordering::SeqCst)
            })
        }
        None => ffmpeg::format::input(location),
    }
    .map_err(|e| err(format!("FFmpeg cannot open it as a video ({e})")))?;
    let stream = input
        .streams()
        .best(ffmpeg::media::Type::Video)
        .ok_or_else(|| err("has no video stream".into()))?;
    let stream_index = stream.index();
    let ctx = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
        .map_err(|e| err(format!("cannot read the video stream's parameters: {e}")))?;
    let decoder = ctx
        .decoder()
        .video()
        .map_err(|e| err(format!("no decoder for this video codec: {e}")))?;
    let (w, h) = (decoder.width(), decoder.height());
    if w as u64 * h as u64 > max_pixels {
        return Err(err(format!(
            "its frames are {w}x{h} ({} pixels), more than runtime.max_frame_pixels ({max_pixels}); \
             downscale the video or raise the limit",
            w as u64 * h as u64
        )));
    }
    Ok(Opened {
        input,
        decoder,
        stream_index,
    })
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
