//! Builds the running stages from a spec and drives them to the end (or to a clean stop).
//!
//! Every queue is an `async_channel::bounded` of `runtime.queue_capacity`; a full queue blocks the stage
//! that feeds it, so at most `in_flight_bound()` frames exist at once however long the source is. CPU
//! work runs on tokio's blocking pool under one supervisor (`supervise.rs`); the async side only waits,
//! watches signals and serves metrics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::job::{self, Job, JobStart};
use super::stages::{self, Control, Keep, ModelWorker, SinkStage, SourceStage};
use super::stats::{InFlight, RunReport, StageStats};
use super::supervise::Supervisor;
use super::watch::{self, Watch};
use crate::error::{Error, Result};
use crate::model::{Device, Model, SessionOptions};
use crate::sink::manifest::{self, ManifestHeader};
use crate::sink::record::ImageRecord;
use crate::sink::{self, FrameRecord, Sink, SinkContext};
use crate::source::{self, FrameRange, FrameReader};
use crate::spec::{PipelineSpec, Shard, SinkSpec};

/// How to run, besides the spec.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Serve Prometheus metrics here during the run.
    pub metrics_addr: Option<SocketAddr>,
    /// Show a progress bar (when stderr is a terminal) or log progress lines, and print the report's
    /// table on stderr when the run fails. Off, the library prints nothing.
    pub progress: bool,
    /// Set to stop reading; in-flight frames are finished and every file closed.
    pub stop: Arc<AtomicBool>,
    /// Also stop on Ctrl-C / SIGTERM.
    pub handle_signals: bool,
    /// Jobs over independent images (auto-labeling): start over instead of resuming from the manifest.
    pub restart: bool,
    #[doc(hidden)]
    /// A test hook: sleep this long in the sink stage per frame (a deliberately slow sink).
    pub slow_sink: Option<Duration>,
}

/// A pipeline to run: a spec, plus what a library user adds in code (sinks of their own, a callback
/// per frame, a job of their own).
pub struct Pipeline {
    spec: PipelineSpec,
    opts: RunOptions,
    sinks: Vec<Box<dyn Sink>>,
    job: Option<JobStart>,
}

impl Pipeline {
    /// A pipeline that runs `spec` as it is, with default [`RunOptions`] (no signals, no progress).
    pub fn new(spec: PipelineSpec) -> Self {
        Pipeline {
            spec,
            opts: RunOptions::default(),
            sinks: Vec::new(),
            job: None,
        }
    }

    /// Sets the run options (metrics address, progress, stop flag, signals, restart).
    pub fn options(mut self, opts: RunOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Adds a sink after the spec's: it gets every finished frame in order, and `finish` at the end.
    pub fn sink(mut self, sink: Box<dyn Sink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Calls `f` with every finished frame, in order (results in memory; an error from `f` fails the
    /// run as a failing sink does).
    pub fn on_frame<F>(self, f: F) -> Self
    where
        F: FnMut(&FrameRecord<'_>) -> Result<()> + Send + 'static,
    {
        self.sink(Box::new(sink::Callback::new(f)))
    }

    /// Runs this job instead of the one the spec names; `start` gets the loaded model.
    pub fn job<F>(mut self, start: F) -> Self
    where
        F: FnOnce(Arc<Model>) -> Result<Box<dyn Job>> + Send + 'static,
    {
        self.job = Some(Box::new(start));
        self
    }

    /// Runs to the end and returns the report. Setup errors (spec, model, prompts, source, sinks) come
    /// back before any frame is read; a stage that fails or panics stops every stage and comes back as
    /// the error, with the frames finished before it written.
    pub async fn run(self) -> Result<RunReport> {
        let started = Instant::now();
        let setup = prepare(self).await?;
        drive(setup, started).await
    }
}

/// Runs a pipeline spec to its end and returns the report (see [`Pipeline::run`]).
pub async fn run(spec: PipelineSpec, opts: RunOptions) -> Result<RunReport> {
    Pipeline::new(spec).options(opts).run().await
}

/// Everything a run needs before its first frame.
struct Setup {
    spec: PipelineSpec,
    opts: RunOptions,
    model: Arc<Model>,
    job: Box<dyn Job>,
    reader: Box<dyn FrameReader>,
    keep: Keep,
    sinks: Vec<Box<dyn Sink>>,
    resumed: u64,
}

async fn prepare(p: Pipeline) -> Result<Setup> {
    let Pipeline {
        spec,
        opts,
        sinks: extra,
        job,
    } = p;
    // A spec built in code has not been through `PipelineSpec::parse`'s checks.
    spec.check().map_err(|msg| Error::Spec {
        path: "the pipeline spec given to pipeline::run".into(),
        msg,
    })?;
    let shard: Option<Shard> = match &spec.source.shard {
        Some(s) => Some(s.parse().map_err(|msg: String| Error::Spec {
            path: "source.shard".into(),
            msg,
        })?),
        None => None,
    };
    let start = match job {
        Some(j) => j,
        None => job::plan(&spec)?,
    };
    let model = Arc::new(blocking("model loading", load_model(&spec)).await?);
    let job = start(model.clone())?;

    // Jobs over independent images resume from what an earlier run with the same settings finished.
    let (manifest, previous) = match job.resume_key() {
        Some(key) => {
            let (sink, previous) = open_manifest(&spec, &model, key, opts.restart)?;
            (Some(sink), previous)
        }
        None => (None, Vec::new()),
    };
    let done: std::collections::HashSet<u64> = previous.iter().map(|r| r.index).collect();
    let keep: Keep =
        Arc::new(move |i: u64| shard.is_none_or(|s| s.admits(i)) && !done.contains(&i));

    let (source_spec, keep_src) = (spec.source.clone(), keep.clone());
    let source_opts = source::SourceOptions {
        max_frame_pixels: spec.runtime.max_frame_pixels,
        stop: opts.stop.clone(),
    };
    let reader = blocking("source opening", move || {
        source::open_filtered(&source_spec, &source_opts, Some(&|i| keep_src(i)))
    })
    .await?;
    if let Some(total) = reader
        .len_hint()
        .filter(|_| spec.source.images.is_none() && spec.source.video.is_none())
    {
        job.check_length(total)?;
    }
    let ctx = SinkContext {
        fps: reader.fps().or(spec.source.fps).unwrap_or(24.0),
        categories: job.categories(),
        previous: Arc::new(previous),
        source_root: source_root(&spec),
    };
    let mut sinks: Vec<Box<dyn Sink>> = spec
        .sinks
        .iter()
        .map(|s| sink::build(s, &ctx))
        .collect::<Result<_>>()?;
    sinks.extend(extra);
    // Last: an image enters the manifest only once every other sink has it.
    if let Some(m) = manifest {
        sinks.push(Box::new(m));
    }
    Ok(Setup {
        resumed: ctx.previous.len() as u64,
        spec,
        opts,
        model,
        job,
        reader,
        keep,
        sinks,
    })
}

/// Loads the model with one encoder and decoder session per worker, the cores shared among them.
fn load_model(spec: &PipelineSpec) -> impl FnOnce() -> Result<Model> + Send + 'static {
    let (dir, runtime) = (spec.model.clone(), spec.runtime.clone());
    move || {
        let device: Device = runtime.device.parse().map_err(Error::Runtime)?;
        let workers = runtime.workers.max(1);
        let threads = if runtime.threads > 0 {
            runtime.threads
        } else {
            (std::thread::available_parallelism().map_or(1, |n| n.get()) / workers).max(1)
        };
        let opts = SessionOptions {
            device,
            threads,
            library: None,
            sessions: workers,
        };
        Model::load(&dir, &opts)
    }
}

/// Runs blocking setup work off the async threads.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Runtime(format!("{what} stopped: {e}")))?
}

/// Opens the manifest of a resumable job: where it goes (`job.manifest`, else beside the first sink's
/// output), what it belongs to, and the images it already holds.
fn open_manifest(
    spec: &PipelineSpec,
    model: &Model,
    key: String,
    restart: bool,
) -> Result<(manifest::ManifestSink, Vec<ImageRecord>)> {
    let path = spec
        .job
        .manifest
        .clone()
        .or_else(|| report_location(&spec.sinks).map(|r| r.with_file_name("manifest.jsonl")))
        .ok_or_else(|| Error::Runtime("a resumable job needs `job.manifest` or a sink".into()))?;
    let header = ManifestHeader {
        vprompt_manifest: manifest::MANIFEST_VERSION,
        model: model.identity.clone(),
        bank: key,
        settings: manifest::settings(spec)?,
        shard: spec.source.shard.clone(),
    };
    let (sink, previous) = manifest::open(&path, &header, restart)?;
    if !previous.is_empty() {
        tracing::info!(
            "resuming: {} images are already done ({})",
            previous.len(),
            path.display()
        );
    }
    Ok((sink, previous))
}

/// The folder image names are relative to, for image sources.
fn source_root(spec: &PipelineSpec) -> Option<PathBuf> {
    spec.source.images.as_ref().map(|p| {
        let p = Path::new(p);
        if p.is_dir() {
            p.to_path_buf()
        } else {
            source::ImageListReader::images(&p.to_string_lossy(), u64::MAX)
                .map(|r| r.root().to_path_buf())
                .unwrap_or_default()
        }
    })
}

/// Starts the stages under one supervisor, waits for them, and makes the report.
async fn drive(s: Setup, started: Instant) -> Result<RunReport> {
    if let Some(addr) = s.opts.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| Error::Runtime(format!("cannot serve metrics on {addr}: {e}")))?;
    }
    let rt = &s.spec.runtime;
    let (cap, workers, batch) = (rt.queue_capacity, rt.workers.max(1), rt.batch_size);
    let (src_tx, src_rx) = async_channel::bounded(cap);
    let (mod_tx, mod_rx) = async_channel::bounded(cap);
    let (fin_tx, fin_rx) = async_channel::bounded(cap);
    let stop = s.opts.stop.clone();
    let sup = Supervisor::new(stop.clone());
    sup.queue(&src_rx);
    sup.queue(&mod_rx);
    sup.queue(&fin_rx);
    let ctl = Control {
        stop: stop.clone(),
        in_flight: Arc::new(InFlight::new(in_flight_bound(cap, workers, batch))),
    };
    let st = ["source", "model", "track", "sinks"].map(StageStats::new);

    let source = SourceStage {
        reader: s.reader,
        range: FrameRange::from_spec(&s.spec.source),
        keep: s.keep,
        max_pixels: rt.max_frame_pixels,
    };
    let (c, st0) = (ctl.clone(), st[0].clone());
    let source_task = sup.spawn("source", move || stages::source(source, c, src_tx, st0));
    let anchors = Arc::new(s.job.anchors());
    let pooled = s.job.pooled();
    let model_tasks: Vec<_> = (0..workers)
        .map(|_| {
            let w = ModelWorker {
                model: s.model.clone(),
                anchors: anchors.clone(),
                pooled: pooled.clone(),
                batch,
                batch_wait: Duration::from_millis(rt.batch_wait_ms),
                st_model: st[1].clone(),
                st_step: st[2].clone(),
            };
            let (rx, tx) = (src_rx.clone(), mod_tx.clone());
            sup.spawn("model", move || stages::model_worker(w, rx, tx))
        })
        .collect();
    drop(mod_tx);
    let (rx, st2) = (mod_rx.clone(), st[2].clone());
    let job = s.job;
    let order_task = sup.spawn("track", move || stages::order(job, rx, fin_tx, st2));
    let sink_stage = SinkStage {
        sinks: s.sinks,
        policy: rt.on_error,
        max_consecutive_failures: rt.max_consecutive_failures,
        slow: s.opts.slow_sink,
    };
    let (rx, c, sup2, st3) = (fin_rx.clone(), ctl.clone(), sup.clone(), st[3].clone());
    let sink_task = sup.spawn("sinks", move || stages::sinks(sink_stage, rx, c, sup2, st3));

    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch::spawn(Watch {
        stop: stop.clone(),
        done: done.clone(),
        queues: vec![
            ("decoded", Box::new(move || src_rx.len())),
            ("encoded", Box::new(move || mod_rx.len())),
            ("finished", Box::new(move || fin_rx.len())),
        ],
        written: st[3].clone(),
        progress: s.opts.progress,
        signals: s.opts.handle_signals,
    });

    let join = |what: &str, e: tokio::task::JoinError| {
        Error::Runtime(format!("the {what} stage stopped unexpectedly: {e}"))
    };
    let read = source_task.await.map_err(|e| join("source", e))?;
    for t in model_tasks {
        t.await.map_err(|e| join("model", e))?;
    }
    let job = order_task.await.map_err(|e| join("track", e))?;
    let written = sink_task.await.map_err(|e| join("sinks", e))?;
    done.store(true, Ordering::SeqCst);
    let _ = watcher.await;

    let interrupted = stop.load(Ordering::SeqCst);
    let written = written.unwrap_or_default();
    let report = RunReport::new(
        read.unwrap_or(0),
        written,
        s.resumed,
        started.elapsed(),
        &ctl.in_flight,
        interrupted,
        &st,
    );
    if let Some(path) = report_location(&s.spec.sinks) {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text) {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
    let mut err = sup.take_error();
    if let (None, Some(mut job), false) = (&err, job, interrupted) {
        err = job.finish(report.frames_read).err();
    }
    match err {
        Some(e) => {
            // The table of what was done before the failure; a library caller that wants no output
            // leaves `progress` off and reads `report.json`.
            if s.opts.progress {
                eprint!("{}", report.table());
            }
            Err(e)
        }
        None => Ok(report),
    }
}

/// The most frames alive at once: enough for every queue (three of `cap`) and every model worker's batch
/// to be full, plus one frame each in the source, track and sink stages. The source waits beyond it.
pub fn in_flight_bound(cap: usize, workers: usize, batch: usize) -> u64 {
    (3 * cap + workers * batch + 3) as u64
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
