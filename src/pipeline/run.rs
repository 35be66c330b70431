//! Builds the running stages from a spec and drives them to the end (or to a clean stop).
//!
//! Every queue is an `async_channel::bounded` of `runtime.queue_capacity`; a full queue blocks the stage
//! that feeds it, so at most `in_flight_bound()` frames exist at once however long the source is. CPU
//! work runs on tokio's blocking pool; the async threads only wait, watch signals and serve metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;

use super::stats::{
    peak_rss_mib, InFlight, ItemError, LatencyHistogram, RunReport, StageStats, QUEUE_DEPTH,
};
use crate::bank::Bank;
use crate::decode::{FrameObjects, Labeler, Tracker};
use crate::error::{Error, Result};
use crate::model::{
    Device, Features, Letterbox, Model, Preprocessor, Queries, QueryAnchor, SessionOptions, Tensor,
};
use crate::post::PointGrid;
use crate::prompt::PromptFile;
use crate::sink::manifest::{self, ManifestHeader};
use crate::sink::record::ImageRecord;
use crate::sink::{self, FrameRecord, Sink, SinkContext};
use crate::source::{self, FrameRange};
use crate::spec::{JobKind, OnError, PipelineSpec, Shard, SinkSpec};

/// How to run, besides the spec.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Serve Prometheus metrics here during the run.
    pub metrics_addr: Option<SocketAddr>,
    /// Show a progress bar (when stderr is a terminal) or log progress lines.
    pub progress: bool,
    /// Set to stop reading; in-flight frames are finished and every file closed.
    pub stop: Arc<AtomicBool>,
    /// Also stop on Ctrl-C / SIGTERM.
    pub handle_signals: bool,
    /// A test hook: sleep this long in the sink stage per frame (a deliberately slow sink).
    pub slow_sink: Option<Duration>,
    /// Auto-labeling: start over instead of resuming from the manifest.
    pub restart: bool,
}

struct SourceItem {
    read_at: Instant,
    seq: u64,
    index: u64,
    name: String,
    file: Option<String>,
    image: Result<Arc<RgbImage>>,
}

struct Encoded {
    read_at: Instant,
    seq: u64,
    index: u64,
    name: String,
    file: Option<String>,
    image: Arc<RgbImage>,
    outcome: Result<(Letterbox, Features, Queries)>,
}

struct Finished {
    read_at: Instant,
    seq: u64,
    index: u64,
    name: String,
    file: Option<String>,
    image: Option<Arc<RgbImage>>,
    outcome: Result<FrameObjects>,
    stage: &'static str,
}

/// A decoded frame in a model worker's batch: read time, sequence number, source index, name, file, image.
type Waiting = (Instant, u64, u64, String, Option<String>, Arc<RgbImage>);

/// What the per-frame stage computes.
enum Job {
    Track(Box<Tracker>),
    Label(Box<Labeler>),
}

impl Job {
    fn step(
        &mut self,
        index: u64,
        frame: &RgbImage,
        lb: &Letterbox,
        feats: &Features,
        q: &Queries,
    ) -> Result<FrameObjects> {
        match self {
            Job::Track(t) => t.step(index, frame, lb, feats, q),
            Job::Label(l) => l.label(lb, feats, q),
        }
    }

    fn waiting(&self) -> Vec<(u8, u64)> {
        match self {
            Job::Track(t) => t.waiting(),
            Job::Label(_) => vec![],
        }
    }
}

/// Runs a pipeline to its end and returns the report. Setup errors (spec, model, prompts, source, sinks)
/// come back before any frame is read.
pub async fn run(spec: PipelineSpec, opts: RunOptions) -> Result<RunReport> {
    let started = Instant::now();
    // A spec built in code has not been through `PipelineSpec::parse`'s checks.
    spec.check().map_err(|msg| Error::Spec {
        path: "the pipeline spec given to pipeline::run".into(),
        msg,
    })?;
    let device: Device = spec.runtime.device.parse().map_err(Error::Runtime)?;
    let workers = spec.runtime.workers;
    let threads = if spec.runtime.threads > 0 {
        spec.runtime.threads
    } else {
        (std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            / workers)
            .max(1)
    };
    let session_opts = SessionOptions {
        device,
        threads,
        library: None,
    };

    // Setup, all before the first frame.
    let autolabel = spec.job.kind == JobKind::Autolabel;
    let prompts_path = spec.prompts.clone().unwrap_or_default();
    let prompts = if autolabel {
        PromptFile { objects: vec![] }
    } else {
        PromptFile::load(&prompts_path)?
    };
    let range = FrameRange::from_spec(&spec.source);
    let shard: Option<Shard> = match &spec.source.shard {
        Some(s) => Some(s.parse().map_err(|e: String| Error::Spec {
            path: "source.shard".into(),
            msg: e,
        })?),
        None => None,
    };
    let bank = match (&spec.bank, autolabel) {
        (Some(p), true) => Some(Bank::load(p)?),
        _ => None,
    };
    for o in prompts.objects.iter().filter(|o| o.image.is_none()) {
        if range.admit(o.frame) != Some(true) {
            return Err(Error::Prompt {
                path: prompts_path.clone(),
                msg: format!(
                    "object {}: frame {} is not read with source start {}, end {:?}, stride {}; \
                     pick a reference frame inside the range",
                    o.id, o.frame, range.start, range.end, range.stride
                ),
            });
        }
    }
    let model_dir = spec.model.clone();
    let model = tokio::task::spawn_blocking(move || Model::load(&model_dir, &session_opts))
        .await
        .map_err(|e| Error::Runtime(format!("model loading stopped: {e}")))??;
    let model = Arc::new(model);

    // Auto-labeling: the bank's classes, and what an earlier run of the same settings finished.
    let mut categories: Vec<(u32, String)> = prompts
        .ids()
        .into_iter()
        .map(|id| (id as u32, format!("object {id}")))
        .collect();
    let mut labeler = None;
    let mut previous: Vec<ImageRecord> = Vec::new();
    let mut manifest_sink = None;
    if let (Some(bank), Some(bank_path)) = (&bank, &spec.bank) {
        bank.check_model(&model, bank_path)?;
        let classes = bank.class_embeddings(spec.job.exemplars_per_class, spec.job.seed);
        categories = classes.iter().map(|c| (c.id, c.name.clone())).collect();
        labeler = Some(
            Labeler::new(model.clone(), classes, spec.job.clone()).map_err(|e| match e {
                Error::Runtime(msg) => Error::Prompt {
                    path: bank_path.clone(),
                    msg,
                },
                e => e,
            })?,
        );
        let path = spec
            .job
            .manifest
            .clone()
            .or_else(|| report_location(&spec.sinks).map(|r| r.with_file_name("manifest.jsonl")))
            .ok_or_else(|| Error::Runtime("autolabel needs `job.manifest` or a sink".into()))?;
        let mut job = spec.job.clone();
        job.manifest = None;
        let header = ManifestHeader {
            vprompt_manifest: 1,
            model: model.identity.clone(),
            bank: bank.digest(),
            settings: format!(
                "job {job:?}; source {:?} {:?} {:?} {}..{:?}/{}; sinks {:?}",
                spec.source.images,
                spec.source.frames,
                spec.source.video,
                spec.source.start,
                spec.source.end,
                spec.source.stride,
                spec.sinks
            ),
            shard: spec.source.shard.clone(),
        };
        let (sink, prev) = manifest::open(&path, &header, opts.restart)?;
        if !prev.is_empty() {
            tracing::info!(
                "resuming: {} images are already done ({})",
                prev.len(),
                path.display()
            );
        }
        previous = prev;
        manifest_sink = Some(sink);
    }
    let done: std::collections::HashSet<u64> = previous.iter().map(|r| r.index).collect();
    let keep = move |i: u64| shard.is_none_or(|s| s.admits(i)) && !done.contains(&i);
    let keep = Arc::new(keep);

    let source_spec = spec.source.clone();
    let source_opts = source::SourceOptions {
        max_frame_pixels: spec.runtime.max_frame_pixels,
        stop: opts.stop.clone(),
    };
    let keep_src = keep.clone();
    let reader = tokio::task::spawn_blocking(move || {
        source::open_filtered(&source_spec, &source_opts, Some(&|i| keep_src(i)))
    })
    .await
    .map_err(|e| Error::Runtime(format!("source opening stopped: {e}")))??;
    if let Some(total) = reader
        .len_hint()
        .filter(|_| spec.source.images.is_none() && spec.source.video.is_none())
    {
        prompts.check_frames(total, &prompts_path)?;
    }
    let fps = reader.fps().or(spec.source.fps).unwrap_or(24.0);
    let source_root = spec.source.images.as_ref().map(|p| {
        let p = Path::new(p);
        if p.is_dir() {
            p.to_path_buf()
        } else {
            source::ImageListReader::images(&p.to_string_lossy(), u64::MAX)
                .map(|r| r.root().to_path_buf())
                .unwrap_or_default()
        }
    });
    let ctx = SinkContext {
        fps,
        categories,
        previous: Arc::new(previous),
        source_root,
    };
    let mut sinks: Vec<Box<dyn Sink>> = spec
        .sinks
        .iter()
        .map(|s| sink::build(s, &ctx))
        .collect::<Result<_>>()?;
    // Last: an image enters the manifest only once every other sink has it.
    if let Some(m) = manifest_sink {
        sinks.push(Box::new(m));
    }
    let resumed = ctx.previous.len() as u64;
    drop(ctx);
    let report_path = report_location(&spec.sinks);

    if let Some(addr) = opts.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| Error::Runtime(format!("cannot serve metrics on {addr}: {e}")))?;
    }

    let cap = spec.runtime.queue_capacity;
    let batch = spec.runtime.batch_size;
    let batch_wait = Duration::from_millis(spec.runtime.batch_wait_ms);
    let (src_tx, src_rx) = async_channel::bounded::<SourceItem>(cap);
    let (enc_tx, enc_rx) = async_channel::bounded::<Encoded>(cap);
    let (fin_tx, fin_rx) = async_channel::bounded::<Finished>(cap);
    let stop = opts.stop.clone();
    let in_flight = Arc::new(InFlight::new(in_flight_bound(cap, workers, batch)));
    let st_source = StageStats::new("source");
    let st_model = StageStats::new("model");
    let st_track = StageStats::new("track");
    let st_sink = StageStats::new("sinks");

    // Source: decode frames in order.
    let source_task = {
        let (stop, in_flight, st) = (stop.clone(), in_flight.clone(), st_source.clone());
        let max_pixels = spec.runtime.max_frame_pixels;
        tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            let mut seq = 0u64;
            let mut read = 0u64;
            loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let t = Instant::now();
                let Some(d) = reader.next_frame() else { break };
                match range.admit(d.index) {
                    None => break,
                    Some(false) => continue,
                    Some(true) => {}
                }
                if !keep(d.index) {
                    continue;
                }
                let image = d.image.and_then(|img| {
                    let px = img.width() as u64 * img.height() as u64;
                    if px > max_pixels {
                        Err(Error::Frame {
                            frame: d.name.clone(),
                            msg: format!(
                                "{}x{} is larger than runtime.max_frame_pixels ({max_pixels})",
                                img.width(),
                                img.height()
                            ),
                        })
                    } else {
                        Ok(Arc::new(img))
                    }
                });
                if image.is_err() {
                    st.fail();
                }
                st.record(1, t.elapsed());
                if !in_flight.enter(&stop) {
                    break;
                }
                read += 1;
                let item = SourceItem {
                    read_at: t,
                    seq,
                    index: d.index,
                    name: d.name,
                    file: d.file,
                    image,
                };
                seq += 1;
                if src_tx.send_blocking(item).is_err() {
                    break;
                }
            }
            read
        })
    };

    // Model workers: letterbox, encoder and decoder, in batches, with the point grid the job reads.
    let grid_points = if autolabel {
        match Labeler::grid(&spec.job) {
            1 => vec![QueryAnchor::point(0.5, 0.5)],
            g => PointGrid::new(g).anchors(),
        }
    } else {
        PointGrid::new(model.spec.queries.grid).anchors()
    };
    let mut model_tasks = Vec::new();
    for _ in 0..workers {
        let (rx, tx, model, st, points) = (
            src_rx.clone(),
            enc_tx.clone(),
            model.clone(),
            st_model.clone(),
            grid_points.clone(),
        );
        model_tasks.push(tokio::task::spawn_blocking(move || {
            let mut pre = Preprocessor::new(&model.spec.input);
            while let Ok(first) = rx.recv_blocking() {
                let mut items = vec![first];
                let deadline = Instant::now() + batch_wait;
                while items.len() < batch {
                    match rx.try_recv() {
                        Ok(it) => items.push(it),
                        Err(async_channel::TryRecvError::Empty) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Err(_) => break,
                    }
                }
                let mut good = Vec::new();
                for it in items {
                    match it.image {
                        Ok(img) => good.push((it.read_at, it.seq, it.index, it.name, it.file, img)),
                        Err(e) => {
                            // Passed on so that order can be restored; the failure is counted at the end.
                            let _ = tx.send_blocking(Encoded {
                                read_at: it.read_at,
                                seq: it.seq,
                                index: it.index,
                                name: it.name,
                                file: it.file,
                                image: Arc::new(RgbImage::new(0, 0)),
                                outcome: Err(e),
                            });
                        }
                    }
                }
                if good.is_empty() {
                    continue;
                }
                let t = Instant::now();
                let outcome = encode_batch(&model, &mut pre, &good, &points);
                st.record(good.len() as u64, t.elapsed());
                let outs: Vec<Result<(Letterbox, Features, Queries)>> = match outcome {
                    Ok(v) => v.into_iter().map(Ok).collect(),
                    Err(e) => {
                        let msg = e.to_string();
                        good.iter()
                            .map(|_| Err(Error::Runtime(msg.clone())))
                            .collect()
                    }
                };
                for ((read_at, seq, index, name, file, image), outcome) in
                    good.into_iter().zip(outs)
                {
                    if outcome.is_err() {
                        st.fail();
                    }
                    if tx
                        .send_blocking(Encoded {
                            read_at,
                            seq,
                            index,
                            name,
                            file,
                            image,
                            outcome,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }));
    }
    drop(enc_tx);

    // Track: restore order, then match objects frame by frame.
    let track_task = {
        let (rx, tx, st) = (enc_rx.clone(), fin_tx, st_track.clone());
        let mut tracker = if let Some(l) = labeler {
            Job::Label(Box::new(l))
        } else {
            Job::Track(Box::new(Tracker::new(
                model.clone(),
                spec.job.clone(),
                prompts,
            )))
        };
        tokio::task::spawn_blocking(move || {
            let mut pending: BTreeMap<u64, Encoded> = BTreeMap::new();
            let mut next = 0u64;
            let forward = |e: Encoded, tracker: &mut Job| -> bool {
                let (outcome, stage, image) = match e.outcome {
                    Ok((lb, feats, queries)) => {
                        let t = Instant::now();
                        let r = tracker.step(e.index, &e.image, &lb, &feats, &queries);
                        st.record(1, t.elapsed());
                        if r.is_err() {
                            st.fail();
                        }
                        (r, "track", Some(e.image))
                    }
                    Err(err) => (Err(err), "model", None),
                };
                tx.send_blocking(Finished {
                    read_at: e.read_at,
                    seq: e.seq,
                    index: e.index,
                    name: e.name,
                    file: e.file,
                    image,
                    outcome,
                    stage,
                })
                .is_ok()
            };
            while let Ok(e) = rx.recv_blocking() {
                pending.insert(e.seq, e);
                while let Some(e) = pending.remove(&next) {
                    next += 1;
                    if !forward(e, &mut tracker) {
                        return tracker;
                    }
                }
            }
            // Channel closed: whatever is left is out of order only if a worker died; keep it in order.
            for (_, e) in std::mem::take(&mut pending) {
                if !forward(e, &mut tracker) {
                    break;
                }
            }
            tracker
        })
    };

    // Sinks: write every finished frame, in order; apply the error policy.
    let errors: Arc<Mutex<Vec<ItemError>>> = Arc::default();
    let fatal: Arc<Mutex<Option<Error>>> = Arc::default();
    let sink_task = {
        let (rx, st, in_flight, stop, errors, fatal) = (
            fin_rx.clone(),
            st_sink.clone(),
            in_flight.clone(),
            stop.clone(),
            errors.clone(),
            fatal.clone(),
        );
        let policy = spec.runtime.on_error;
        let max_fail = spec.runtime.max_consecutive_failures;
        let slow = opts.slow_sink;
        tokio::task::spawn_blocking(move || {
            let mut sinks = sinks;
            let mut written = 0u64;
            let mut in_a_row = 0u64;
            let mut latency = LatencyHistogram::default();
            // After a sink failed (a full disk), the frames still in flight are not written: the files
            // end with the last frame that every sink took.
            let mut sink_failed = false;
            while let Ok(f) = rx.recv_blocking() {
                if sink_failed {
                    in_flight.leave();
                    continue;
                }
                let t = Instant::now();
                let outcome = f.outcome.and_then(|result| {
                    let image = f.image.as_deref().expect("a tracked frame keeps its image");
                    let rec = FrameRecord {
                        seq: f.seq,
                        index: f.index,
                        name: &f.name,
                        file: f.file.as_deref(),
                        image,
                        result: &result,
                        record: Default::default(),
                    };
                    for s in sinks.iter_mut() {
                        s.write(&rec)?;
                    }
                    Ok(())
                });
                if let Some(d) = slow {
                    std::thread::sleep(d);
                }
                in_flight.leave();
                match outcome {
                    Ok(()) => {
                        st.record(1, t.elapsed());
                        latency.record(f.read_at.elapsed());
                        written += 1;
                        in_a_row = 0;
                    }
                    Err(e) => {
                        // A sink that cannot write, or an object that cannot start, ends the run.
                        let fatal_kind = matches!(e, Error::Sink { .. } | Error::Object { .. });
                        let is_sink = matches!(e, Error::Sink { .. });
                        sink_failed |= is_sink;
                        let msg = e.to_string();
                        tracing::warn!(frame = %f.name, "frame failed: {msg}");
                        errors.lock().expect("errors lock").push(ItemError {
                            frame: format!("{} ({})", f.index, f.name),
                            stage: if is_sink { "sinks" } else { f.stage }.into(),
                            error: msg.clone(),
                        });
                        in_a_row += 1;
                        let give_up = fatal_kind || policy == OnError::Fail || in_a_row >= max_fail;
                        if give_up {
                            let why = if fatal_kind {
                                e
                            } else if policy == OnError::Fail {
                                Error::Frame {
                                    frame: f.name.clone(),
                                    msg: format!("{msg} (runtime.on_error is `fail`; set `skip` to go on past failed frames)"),
                                }
                            } else {
                                Error::Runtime(format!(
                                    "{in_a_row} frames failed in a row (runtime.max_consecutive_failures); last: {msg}"
                                ))
                            };
                            fatal.lock().expect("fatal lock").get_or_insert(why);
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                }
            }
            let mut outputs = Vec::new();
            for s in sinks.iter_mut() {
                match s.finish() {
                    Ok(p) => outputs.extend(p),
                    Err(e) => {
                        fatal.lock().expect("fatal lock").get_or_insert(e);
                    }
                }
            }
            (written, outputs, latency)
        })
    };

    // Watch: signals, queue depths, progress.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, done) = (stop.clone(), done.clone());
        let queues = [("decoded", src_rx.clone())];
        let (enc_rx2, fin_rx2) = (enc_rx.clone(), fin_rx.clone());
        let st_sink = st_sink.clone();
        let progress = opts.progress;
        let signals = opts.handle_signals;
        tokio::spawn(async move {
            let bar = progress_bar(progress);
            let mut last_log = Instant::now();
            #[cfg(unix)]
            let mut term = signals
                .then(|| {
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()
                })
                .flatten();
            loop {
                let tick = tokio::time::sleep(Duration::from_millis(200));
                #[cfg(unix)]
                let term_fut = async {
                    match term.as_mut() {
                        Some(t) => {
                            t.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let term_fut = std::future::pending::<()>();
                let ctrl_c = async {
                    if signals {
                        let _ = tokio::signal::ctrl_c().await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    _ = tick => {}
                    _ = ctrl_c => {
                        tracing::warn!("interrupted: finishing the frames in flight and closing files");
                        stop.store(true, Ordering::SeqCst);
                    }
                    _ = term_fut => {
                        tracing::warn!("terminated: finishing the frames in flight and closing files");
                        stop.store(true, Ordering::SeqCst);
                    }
                }
                for (name, q) in &queues {
                    metrics::gauge!(QUEUE_DEPTH, "queue" => *name).set(q.len() as f64);
                }
                metrics::gauge!(QUEUE_DEPTH, "queue" => "encoded").set(enc_rx2.len() as f64);
                metrics::gauge!(QUEUE_DEPTH, "queue" => "finished").set(fin_rx2.len() as f64);
                let n = st_sink.items();
                if let Some(b) = &bar {
                    b.set_position(n);
                } else if progress && last_log.elapsed() > Duration::from_secs(5) {
                    tracing::info!("{n} frames written");
                    last_log = Instant::now();
                }
                if done.load(Ordering::SeqCst) {
                    if let Some(b) = bar {
                        b.finish_and_clear();
                    }
                    break;
                }
            }
        })
    };

    let join = |what: &str, e: tokio::task::JoinError| {
        Error::Runtime(format!("the {what} stage stopped unexpectedly: {e}"))
    };
    let read = source_task.await.map_err(|e| join("source", e))?;
    for t in model_tasks {
        t.await.map_err(|e| join("model", e))?;
    }
    let tracker = track_task.await.map_err(|e| join("track", e))?;
    let (written, outputs, latency) = sink_task.await.map_err(|e| join("sink", e))?;
    done.store(true, Ordering::SeqCst);
    let _ = watcher.await;
    drop((src_rx, enc_rx, fin_rx));

    let wall = started.elapsed();
    let errors = std::mem::take(&mut *errors.lock().expect("errors lock"));
    let interrupted = stop.load(Ordering::SeqCst);
    let report = RunReport {
        frames_read: read,
        frames_written: written,
        frames_failed: errors.len() as u64,
        frames_resumed: resumed,
        wall_s: wall.as_secs_f64(),
        fps: written as f64 / wall.as_secs_f64().max(1e-9),
        peak_frames_in_flight: in_flight.peak(),
        in_flight_bound: in_flight.bound(),
        peak_rss_mib: peak_rss_mib(),
        latency_ms: [
            latency.quantile_ms(0.5).unwrap_or(0.0),
            latency.quantile_ms(0.95).unwrap_or(0.0),
            latency.max_ms(),
        ],
        interrupted,
        stages: [&st_source, &st_model, &st_track, &st_sink]
            .iter()
            .map(|s| s.report(wall))
            .collect(),
        errors,
        outputs: outputs.iter().map(|p| p.display().to_string()).collect(),
    };
    if let Some(path) = report_path {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text) {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
    if let Some(e) = fatal.lock().expect("fatal lock").take() {
        eprint!("{}", report.table());
        return Err(e);
    }
    if !interrupted {
        let waiting = tracker.waiting();
        if let Some((id, frame)) = waiting.first() {
            eprint!("{}", report.table());
            return Err(Error::Prompt {
                path: prompts_path,
                msg: format!(
                    "object {id}: its reference frame {frame} was never read (the source ended after {read} frames)"
                ),
            });
        }
    }
    Ok(report)
}

/// The most frames alive at once: enough for every queue (three of `cap`) and every model worker's batch
/// to be full, plus one frame each in the source, track and sink stages. The source waits beyond it.
pub fn in_flight_bound(cap: usize, workers: usize, batch: usize) -> u64 {
    (3 * cap + workers * batch + 3) as u64
}

fn encode_batch(
    model: &Model,
    pre: &mut Preprocessor,
    items: &[Waiting],
    points: &[QueryAnchor],
) -> Result<Vec<(Letterbox, Features, Queries)>> {
    let s = pre.size() as usize;
    let per = 3 * s * s;
    let mut data = vec![0.0f32; per * items.len()];
    let mut boxes = Vec::with_capacity(items.len());
    for (i, (_, _, _, _, _, img)) in items.iter().enumerate() {
        boxes.push(pre.fill(img, &mut data[i * per..(i + 1) * per]));
    }
    let t = Tensor::new(vec![items.len(), 3, s, s], data);
    let feats = model.encode(&t)?;
    let refs: Vec<&Features> = feats.iter().collect();
    let queries = model.decode(&refs, points)?;
    Ok(boxes
        .into_iter()
        .zip(feats)
        .zip(queries)
        .map(|((lb, f), q)| (lb, f, q))
        .collect())
}

fn report_location(sinks: &[SinkSpec]) -> Option<PathBuf> {
    let first = sinks.first()?;
    let anchor = match first {
        SinkSpec::PalettePng { dir } | SinkSpec::OverlayPng { dir } | SinkSpec::Yolo { dir } => {
            dir.parent().map(|p| p.to_path_buf())
        }
        SinkSpec::Coco { path }
        | SinkSpec::Jsonl { path }
        | SinkSpec::Mot { path }
        | SinkSpec::Video { path, .. }
        | SinkSpec::ContactSheet { path, .. } => path.parent().map(|p| p.to_path_buf()),
    }?;
    Some(anchor.join("report.json"))
}

fn progress_bar(enabled: bool) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos} frames {per_sec} [{elapsed_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}
