//! The four stages and what travels between them: the source decodes frames in order; model workers
//! letterbox, encode and decode them in batches (and run a stateless job step); the order stage restores
//! frame order and runs a stateful job step; the sink stage writes every finished frame and applies the
//! error policy. Each is a plain blocking function the supervisor runs.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use image::RgbImage;

use super::job::{FrameInput, FrameStep, Job};
use super::stats::{InFlight, ItemError, LatencyHistogram, StageStats};
use super::supervise::{panicked, Supervisor};
use crate::decode::FrameObjects;
use crate::error::{Error, Result};
use crate::model::{Features, Letterbox, Model, Preprocessor, Queries, QueryAnchor, Tensor};
use crate::sink::{FrameRecord, Sink};
use crate::source::{FrameRange, FrameReader};
use crate::spec::OnError;

/// Which source indices the run reads (a shard, minus what a resumed run already finished).
pub(super) type Keep = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// A frame's identity on its way through the stages.
pub(super) struct Meta {
    pub read_at: Instant,
    /// Position in the run.
    pub seq: u64,
    /// Index in the source.
    pub index: u64,
    pub name: String,
    pub file: Option<String>,
}

pub(super) struct SourceItem {
    meta: Meta,
    image: Result<Arc<RgbImage>>,
}

/// What a model worker made of a frame: the model's outputs for the ordered step, or (stateless jobs)
/// the step's result already.
enum Worked {
    Encoded(Letterbox, Features, Queries),
    Done(FrameObjects),
}

pub(super) struct Modelled {
    meta: Meta,
    image: Arc<RgbImage>,
    outcome: Result<Worked>,
    stage: &'static str,
}

pub(super) struct Finished {
    meta: Meta,
    image: Arc<RgbImage>,
    outcome: Result<FrameObjects>,
    stage: &'static str,
}

/// The stop flag and the frames-in-flight gate that the source and the sinks share.
#[derive(Clone)]
pub(super) struct Control {
    pub stop: Arc<AtomicBool>,
    pub in_flight: Arc<InFlight>,
}

/// The source stage's inputs.
pub(super) struct SourceStage {
    pub reader: Box<dyn FrameReader>,
    pub range: FrameRange,
    pub keep: Keep,
    pub max_pixels: u64,
}

/// Decodes frames in order until the source ends, the range ends or the run stops; returns the count.
pub(super) fn source(
    s: SourceStage,
    ctl: Control,
    tx: Sender<SourceItem>,
    st: Arc<StageStats>,
) -> Result<u64> {
    let SourceStage {
        mut reader,
        range,
        keep,
        max_pixels,
    } = s;
    let mut seq = 0u64;
    while !ctl.stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        let Some(d) = reader.next_frame() else { break };
        match range.admit(d.index) {
            None => break,
            Some(false) => continue,
            Some(true) if !keep(d.index) => continue,
            Some(true) => {}
        }
        let image = d.image.and_then(|img| {
            let px = img.width() as u64 * img.height() as u64;
            if px > max_pixels {
                return Err(Error::Frame {
                    frame: d.name.clone(),
                    msg: format!(
                        "{}x{} is larger than runtime.max_frame_pixels ({max_pixels})",
                        img.width(),
                        img.height()
                    ),
                });
            }
            Ok(Arc::new(img))
        });
        if image.is_err() {
            st.fail();
        }
        st.record(1, t.elapsed());
        if !ctl.in_flight.enter(&ctl.stop) {
            break;
        }
        let meta = Meta {
            read_at: t,
            seq,
            index: d.index,
            name: d.name,
            file: d.file,
        };
        seq += 1;
        if tx.send_blocking(SourceItem { meta, image }).is_err() {
            // Closed by the supervisor: that frame never enters the pipeline.
            ctl.in_flight.leave();
            break;
        }
    }
    Ok(seq)
}

/// One model worker's setup.
pub(super) struct ModelWorker {
    pub model: Arc<Model>,
    pub anchors: Arc<Vec<QueryAnchor>>,
    /// A stateless job step, run here right after the model.
    pub pooled: Option<Arc<dyn FrameStep>>,
    pub batch: usize,
    pub batch_wait: Duration,
    pub st_model: Arc<StageStats>,
    pub st_step: Arc<StageStats>,
}

/// Letterboxes, encodes and decodes frames in batches until the queue ends.
pub(super) fn model_worker(
    w: ModelWorker,
    rx: Receiver<SourceItem>,
    tx: Sender<Modelled>,
) -> Result<()> {
    let mut pre = Preprocessor::new(&w.model.spec.input);
    while let Some(items) = next_batch(&rx, w.batch, w.batch_wait) {
        let mut good = Vec::new();
        for it in items {
            match it.image {
                Ok(img) => good.push((it.meta, img)),
                // Passed on so that frame order can be restored; counted as failed at the sinks.
                Err(e) => {
                    let item = Modelled {
                        meta: it.meta,
                        image: Arc::new(RgbImage::new(0, 0)),
                        outcome: Err(e),
                        stage: "source",
                    };
                    if tx.send_blocking(item).is_err() {
                        return Ok(());
                    }
                }
            }
        }
        if good.is_empty() {
            continue;
        }
        let t = Instant::now();
        let images: Vec<&RgbImage> = good.iter().map(|(_, img)| img.as_ref()).collect();
        let outs = match encode_batch(&w.model, &mut pre, &images, &w.anchors) {
            Ok(v) => v.into_iter().map(Ok).collect(),
            Err(e) => {
                let msg = e.to_string();
                (0..good.len())
                    .map(|_| Err(Error::Runtime(msg.clone())))
                    .collect::<Vec<_>>()
            }
        };
        w.st_model.record(good.len() as u64, t.elapsed());
        for ((meta, image), out) in good.into_iter().zip(outs) {
            let (outcome, stage) = match (out, &w.pooled) {
                (Err(e), _) => {
                    w.st_model.fail();
                    (Err(e), "model")
                }
                (Ok((lb, feats, q)), None) => (Ok(Worked::Encoded(lb, feats, q)), "model"),
                (Ok((lb, feats, q)), Some(step)) => {
                    let input = FrameInput {
                        index: meta.index,
                        image: &image,
                        letterbox: &lb,
                        features: &feats,
                        queries: &q,
                    };
                    (
                        timed(&w.st_step, || step.step(&input)).map(Worked::Done),
                        "track",
                    )
                }
            };
            let item = Modelled {
                meta,
                image,
                outcome,
                stage,
            };
            if tx.send_blocking(item).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Waits for one frame, then takes more that arrive within `wait`, up to `batch`; `None` at the end.
fn next_batch(rx: &Receiver<SourceItem>, batch: usize, wait: Duration) -> Option<Vec<SourceItem>> {
    let first = rx.recv_blocking().ok()?;
    let mut items = vec![first];
    let deadline = Instant::now() + wait;
    while items.len() < batch {
        match rx.try_recv() {
            Ok(it) => items.push(it),
            Err(async_channel::TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(_) => break,
        }
    }
    Some(items)
}

fn encode_batch(
    model: &Model,
    pre: &mut Preprocessor,
    images: &[&RgbImage],
    anchors: &[QueryAnchor],
) -> Result<Vec<(Letterbox, Features, Queries)>> {
    let s = pre.size() as usize;
    let per = 3 * s * s;
    let mut data = vec![0.0f32; per * images.len()];
    let boxes: Vec<Letterbox> = images
        .iter()
        .zip(data.chunks_exact_mut(per))
        .map(|(img, chunk)| pre.fill(img, chunk))
        .collect();
    let feats = model.encode(&Tensor::new(vec![images.len(), 3, s, s], data))?;
    let refs: Vec<&Features> = feats.iter().collect();
    let queries = model.decode(&refs, anchors)?;
    Ok(boxes
        .into_iter()
        .zip(feats)
        .zip(queries)
        .map(|((lb, f), q)| (lb, f, q))
        .collect())
}

fn timed<T>(st: &StageStats, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    let r = f();
    st.record(1, t.elapsed());
    if r.is_err() {
        st.fail();
    }
    r
}

/// Restores frame order and runs the job's ordered step; returns the job when the queue ends.
pub(super) fn order(
    mut job: Box<dyn Job>,
    rx: Receiver<Modelled>,
    tx: Sender<Finished>,
    st: Arc<StageStats>,
) -> Result<Box<dyn Job>> {
    let mut pending: BTreeMap<u64, Modelled> = BTreeMap::new();
    let mut next = 0u64;
    let forward = |m: Modelled, job: &mut Box<dyn Job>| -> bool {
        let (outcome, stage) = match m.outcome {
            Err(e) => (Err(e), m.stage),
            Ok(Worked::Done(objects)) => (Ok(objects), "track"),
            Ok(Worked::Encoded(lb, feats, q)) => {
                let input = FrameInput {
                    index: m.meta.index,
                    image: &m.image,
                    letterbox: &lb,
                    features: &feats,
                    queries: &q,
                };
                (timed(&st, || job.step(&input)), "track")
            }
        };
        let f = Finished {
            meta: m.meta,
            image: m.image,
            outcome,
            stage,
        };
        tx.send_blocking(f).is_ok()
    };
    while let Ok(m) = rx.recv_blocking() {
        pending.insert(m.meta.seq, m);
        while let Some(m) = pending.remove(&next) {
            next += 1;
            if !forward(m, &mut job) {
                return Ok(job);
            }
        }
    }
    // The queue ended with gaps (a worker stopped early): what is left still goes out in order.
    for (_, m) in std::mem::take(&mut pending) {
        if !forward(m, &mut job) {
            break;
        }
    }
    Ok(job)
}

/// The sink stage's setup.
pub(super) struct SinkStage {
    pub sinks: Vec<Box<dyn Sink>>,
    pub policy: OnError,
    pub max_consecutive_failures: u64,
    /// A test hook: sleep this long per frame.
    pub slow: Option<Duration>,
}

/// What the sink stage did.
#[derive(Default)]
pub(super) struct Written {
    pub frames: u64,
    pub outputs: Vec<PathBuf>,
    pub latency: LatencyHistogram,
    pub errors: Vec<ItemError>,
}

/// Writes every finished frame to every sink in order, applies the error policy, closes the sinks.
pub(super) fn sinks(
    s: SinkStage,
    rx: Receiver<Finished>,
    ctl: Control,
    sup: Arc<Supervisor>,
    st: Arc<StageStats>,
) -> Result<Written> {
    let mut sinks = s.sinks;
    let mut done = Written::default();
    let mut in_a_row = 0u64;
    // After a sink failed (a full disk), the frames still in flight are not written: the files end
    // with the last frame that every sink took.
    let mut sink_failed = false;
    while let Ok(f) = rx.recv_blocking() {
        if sink_failed {
            ctl.in_flight.leave();
            continue;
        }
        let t = Instant::now();
        let outcome = f
            .outcome
            .and_then(|result| write_frame(&mut sinks, &f.meta, &f.image, &result));
        if let Some(d) = s.slow {
            std::thread::sleep(d);
        }
        ctl.in_flight.leave();
        let e = match outcome {
            Ok(()) => {
                st.record(1, t.elapsed());
                done.latency.record(f.meta.read_at.elapsed());
                done.frames += 1;
                in_a_row = 0;
                continue;
            }
            Err(e) => e,
        };
        // A sink that cannot write, or an object that cannot start, ends the run.
        let is_sink = matches!(e, Error::Sink { .. });
        let fatal = is_sink || matches!(e, Error::Object { .. });
        sink_failed |= is_sink;
        let msg = e.to_string();
        tracing::warn!(frame = %f.meta.name, "frame failed: {msg}");
        done.errors.push(ItemError {
            frame: format!("{} ({})", f.meta.index, f.meta.name),
            stage: if is_sink { "sinks" } else { f.stage }.into(),
            error: msg.clone(),
        });
        in_a_row += 1;
        if fatal {
            sup.fail_soft(e);
        } else if s.policy == OnError::Fail {
            sup.fail_soft(Error::Frame {
                frame: f.meta.name.clone(),
                msg: format!(
                    "{msg} (runtime.on_error is `fail`; set `skip` to go on past failed frames)"
                ),
            });
        } else if in_a_row >= s.max_consecutive_failures {
            sup.fail_soft(Error::Runtime(format!(
                "{in_a_row} frames failed in a row (runtime.max_consecutive_failures); last: {msg}"
            )));
        }
    }
    for sink in sinks.iter_mut() {
        match catch_unwind(AssertUnwindSafe(|| sink.finish())) {
            Ok(Ok(paths)) => done.outputs.extend(paths),
            Ok(Err(e)) => sup.fail_soft(e),
            Err(p) => sup.fail_soft(panicked("sinks", p.as_ref())),
        }
    }
    Ok(done)
}

/// Gives one frame to every sink; a sink that panics counts as a failed sink (the others still close
/// their files).
fn write_frame(
    sinks: &mut [Box<dyn Sink>],
    meta: &Meta,
    image: &RgbImage,
    result: &FrameObjects,
) -> Result<()> {
    let rec = FrameRecord {
        seq: meta.seq,
        index: meta.index,
        name: &meta.name,
        file: meta.file.as_deref(),
        image,
        result,
        record: Default::default(),
    };
    for s in sinks.iter_mut() {
        match catch_unwind(AssertUnwindSafe(|| s.write(&rec))) {
            Ok(r) => r?,
            Err(p) => {
                return Err(Error::Sink {
                    path: "(a sink)".into(),
                    msg: panicked("sinks", p.as_ref()).to_string(),
                })
            }
        }
    }
    Ok(())
}
