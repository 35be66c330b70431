//! `vprompt bench`: the speed of the model alone (a), vprompt end to end (b) and the plain Python way
//! (c) on one video, in one run, as a markdown table; the ratios b/a and b/c say what the pipeline costs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_yaml_ng::Value;

use super::{yaml_map, yaml_path};

use crate::decode::generic::Labeler;
use crate::model::{Model, Preprocessor, QueryAnchor, SessionOptions, Tensor};
use crate::pipeline::{run, RunOptions, RunReport};
use crate::post::PointGrid;
use crate::spec::{JobSpec, PipelineSpec};

pub struct BenchArgs {
    pub model: PathBuf,
    pub video: String,
    pub mask: PathBuf,
    pub frames: u64,
    pub workers: usize,
    pub batch: usize,
    pub threads: usize,
    pub device: String,
    pub python: bool,
    pub write: Option<PathBuf>,
    /// Autolabel rows too: a folder of images and the exemplars to build the bank from.
    pub images: Option<PathBuf>,
    pub exemplars: Option<PathBuf>,
    pub exemplar_images: Option<PathBuf>,
    pub image_count: usize,
}

/// One job's three measures.
struct JobBench {
    job: &'static str,
    items: usize,
    fps_a: f64,
    fps_b: f64,
    rss_b: Option<f64>,
    python: Option<(f64, Option<f64>)>,
    report: RunReport,
}

/// (a) for any job: encoder + decoder back to back on preloaded, letterboxed inputs.
fn model_bound(
    model: &Model,
    inputs: &[Vec<f32>],
    batch: usize,
    points: &[QueryAnchor],
) -> Result<f64> {
    let s = model.input_size() as usize;
    let run_model = |chunk: &[Vec<f32>]| -> Result<()> {
        let mut data = Vec::with_capacity(chunk.len() * 3 * s * s);
        for t in chunk {
            data.extend_from_slice(t);
        }
        let feats = model.encode(&Tensor::new(vec![chunk.len(), 3, s, s], data))?;
        let refs: Vec<_> = feats.iter().collect();
        model.decode(&refs, points)?;
        Ok(())
    };
    run_model(&inputs[..1])?; // warm-up
    let t = Instant::now();
    for chunk in inputs.chunks(batch.max(1)) {
        run_model(chunk)?;
    }
    Ok(inputs.len() as f64 / t.elapsed().as_secs_f64())
}

/// Runs a pipeline from its YAML text (written to nowhere; `path` anchors relative paths), from scratch.
/// The `runtime` of the benchmarked pipelines: the bench's workers, batch, device, and the threads shared
/// among the workers.
fn bench_runtime(a: &BenchArgs, threads: usize) -> Value {
    yaml_map([
        ("workers", a.workers.into()),
        ("batch_size", a.batch.into()),
        ("threads", (threads / a.workers).max(1).into()),
        ("device", a.device.clone().into()),
        ("queue_capacity", 8.into()),
    ])
}

fn run_pipeline(pipeline: &Value, path: &Path) -> Result<RunReport> {
    let yaml = serde_yaml_ng::to_string(pipeline).context("cannot write the pipeline as YAML")?;
    let spec = PipelineSpec::parse(&yaml, path, &[])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    Ok(rt.block_on(run(
        spec,
        RunOptions {
            stop: Arc::new(AtomicBool::new(false)),
            restart: true,
            ..Default::default()
        },
    ))?)
}

/// Runs a Python baseline script; returns its frames/s and peak RSS.
fn python_baseline(script: &str, args: &[String]) -> Result<(f64, Option<f64>)> {
    let script = Path::new(script);
    anyhow::ensure!(
        script.is_file(),
        "{} not found (run from the repository root)",
        script.display()
    );
    // The packages `make deps` installs (PyAV among them) live in .deps/python.
    let mut path = std::env::var_os("PYTHONPATH").unwrap_or_default();
    if Path::new(".deps/python").is_dir() {
        let mut dirs = vec![std::path::absolute(".deps/python")?];
        dirs.extend(std::env::split_paths(&path));
        path = std::env::join_paths(dirs)?;
    }
    let o = Command::new("python3")
        .arg(script)
        .args(args)
        .env("PYTHONPATH", path)
        .output()
        .context("cannot run python3")?;
    anyhow::ensure!(
        o.status.success(),
        "the Python baseline failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("{}");
    let v: serde_json::Value =
        serde_json::from_str(last).context("the Python baseline printed no JSON line")?;
    Ok((v["fps"].as_f64().unwrap_or(0.0), v["peak_rss_mib"].as_f64()))
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    let video = if a.video.contains("://") {
        a.video.clone()
    } else {
        std::path::absolute(&a.video)?
            .to_string_lossy()
            .into_owned()
    };
    let device = a.device.parse().map_err(anyhow::Error::msg)?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = if a.threads > 0 { a.threads } else { cores };

    // (a) the model bound: encoder + decoder back to back on frames decoded and letterboxed beforehand.
    let model = Model::load(
        &a.model,
        &SessionOptions {
            device,
            threads,
            library: None,
            sessions: 1,
        },
    )?;
    let source = yaml_map([("video", video.clone().into()), ("end", a.frames.into())]);
    let src = PipelineSpec::parse(
        &serde_yaml_ng::to_string(&yaml_map([
            ("source", source.clone()),
            ("model", "m".into()),
            ("prompts", "p".into()),
            (
                "sinks",
                Value::Sequence(vec![yaml_map([
                    ("kind", "jsonl".into()),
                    ("path", "x".into()),
                ])]),
            ),
        ]))?,
        Path::new("bench.yaml"),
        &[],
    )?;
    let mut reader = crate::source::open(&src.source, &Default::default())?;
    let mut pre = Preprocessor::new(&model.spec.input);
    let s = model.input_size() as usize;
    let mut inputs: Vec<Vec<f32>> = Vec::new();
    while let Some(d) = reader.next_frame() {
        if inputs.len() as u64 >= a.frames {
            break;
        }
        let img = d.image?;
        let mut t = vec![0.0f32; 3 * s * s];
        pre.fill(&img, &mut t);
        inputs.push(t);
    }
    anyhow::ensure!(!inputs.is_empty(), "the video gave no frame");
    let grid = PointGrid::new(model.spec.queries.grid);
    let fps_a = model_bound(&model, &inputs, a.batch, &grid.anchors())?;
    drop(model);

    // (b) vprompt end to end: decode -> model -> track -> palette PNGs.
    let out = std::env::temp_dir().join(format!("vprompt-bench-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    let prompts = yaml_map([(
        "objects",
        Value::Sequence(vec![yaml_map([
            ("id", 1.into()),
            ("frame", 0.into()),
            ("mask", yaml_path(&std::path::absolute(&a.mask)?)),
        ])]),
    )]);
    std::fs::write(
        out.join("prompts.yaml"),
        serde_yaml_ng::to_string(&prompts)?,
    )?;
    let pipeline = yaml_map([
        ("source", source),
        ("model", yaml_path(&std::path::absolute(&a.model)?)),
        ("prompts", "prompts.yaml".into()),
        (
            "sinks",
            Value::Sequence(vec![yaml_map([
                ("kind", "palette_png".into()),
                ("dir", "masks".into()),
            ])]),
        ),
        ("runtime", bench_runtime(a, threads)),
    ]);
    let report = run_pipeline(&pipeline, &out.join("pipeline.yaml"))?;
    let fps_b = report.fps;

    // (c) the Python way.
    let python = if a.python {
        Some(python_baseline(
            "benches/python_propagate.py",
            &[
                "--model".into(),
                a.model.to_string_lossy().into_owned(),
                "--video".into(),
                a.video.clone(),
                "--mask".into(),
                a.mask.to_string_lossy().into_owned(),
                "--out".into(),
                out.join("python").to_string_lossy().into_owned(),
                "--frames".into(),
                a.frames.to_string(),
                "--threads".into(),
                threads.to_string(),
            ],
        )?)
    } else {
        None
    };
    let mut jobs = vec![JobBench {
        job: "propagate",
        items: inputs.len(),
        fps_a,
        fps_b,
        rss_b: report.peak_rss_mib,
        python,
        report,
    }];
    if let Some(images) = &a.images {
        jobs.push(bench_autolabel(a, images, &out, threads)?);
    }

    let machine = machine_description(cores);
    let mut t = String::new();
    t.push_str(&format!(
        "Machine: {machine}. Model `{}` at {s}x{s}; device {}; workers {}, batch {}, ONNX Runtime \
         threads {threads}. Propagate: video `{}`, {} frames, palette PNGs. Autolabel: {}.\n\n",
        a.model.display(),
        a.device,
        a.workers,
        a.batch,
        a.video,
        inputs.len(),
        match &a.images {
            Some(d) => format!(
                "the first {} images of `{}`, COCO JSON + JSONL (+ manifest)",
                jobs.last().map(|j| j.items).unwrap_or(0),
                d.display()
            ),
            None => "not run (give --images and --exemplars)".into(),
        }
    ));
    t.push_str("| job | measure | items/s | peak RSS MiB |\n|---|---|---:|---:|\n");
    let mib = |m: Option<f64>| m.map(|m| format!("{m:.0}")).unwrap_or_default();
    for j in &jobs {
        t.push_str(&format!(
            "| {} | (a) model bound: encoder + decoder, preloaded inputs | {:.2} | |\n",
            j.job, j.fps_a
        ));
        t.push_str(&format!(
            "| {} | (b) vprompt end to end | {:.2} | {} |\n",
            j.job,
            j.fps_b,
            mib(j.rss_b)
        ));
        if let Some((fps_c, rss)) = j.python {
            t.push_str(&format!(
                "| {} | (c) plain Python, sequential | {fps_c:.2} | {} |\n",
                j.job,
                mib(rss)
            ));
        }
    }
    t.push('\n');
    for j in &jobs {
        t.push_str(&format!("{}: b/a = {:.2}", j.job, j.fps_b / j.fps_a));
        if let Some((fps_c, _)) = j.python {
            t.push_str(&format!(", b/c = {:.2}", j.fps_b / fps_c.max(1e-9)));
        }
        t.push('\n');
    }
    for j in &jobs {
        t.push_str(&format!(
            "\n{} stages (busy share of wall time):\n\n| stage | items | busy s | busy % |\n|---|---:|---:|---:|\n",
            j.job
        ));
        for st in &j.report.stages {
            t.push_str(&format!(
                "| {} | {} | {:.2} | {:.0}% |\n",
                st.stage,
                st.items,
                st.busy_s,
                st.busy_share * 100.0
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    print!("{t}");
    if let Some(path) = &a.write {
        let cmd = std::env::args().collect::<Vec<_>>().join(" ");
        let section = format!("\n## {}\n\n`{cmd}`\n\n{t}", chrono_like_now());
        let mut text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
        text.push_str(&section);
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The autolabel job's three measures on the first `image_count` images of a folder.
fn bench_autolabel(a: &BenchArgs, images: &Path, out: &Path, threads: usize) -> Result<JobBench> {
    let exemplars = a
        .exemplars
        .as_ref()
        .context("--images needs --exemplars (a COCO JSON or exemplar YAML)")?;
    let device = a.device.parse().map_err(anyhow::Error::msg)?;
    let model = Model::load(
        &a.model,
        &SessionOptions {
            device,
            threads,
            library: None,
            sessions: 1,
        },
    )?;
    // The bank (not timed).
    let set = crate::bank::ExemplarSet::load(exemplars, a.exemplar_images.as_deref())?;
    let bank_path = out.join("bank.json");
    crate::bank::Bank::build(&model, &set)?.save(&bank_path)?;

    // (a) on preloaded, letterboxed images, with the point queries the job's labeler decodes.
    let dir = std::path::absolute(images)?;
    let mut reader = crate::source::ImageListReader::images(&dir.to_string_lossy(), u64::MAX)?;
    let mut pre = Preprocessor::new(&model.spec.input);
    let s = model.input_size() as usize;
    let mut inputs = Vec::new();
    while inputs.len() < a.image_count {
        let Some(d) = crate::source::FrameReader::next_frame(&mut reader) else {
            break;
        };
        let mut t = vec![0.0f32; 3 * s * s];
        pre.fill(&d.image?, &mut t);
        inputs.push(t);
    }
    anyhow::ensure!(!inputs.is_empty(), "{} holds no image", dir.display());
    let n = inputs.len();
    let anchors = Labeler::anchors(&JobSpec::default());
    let fps_a = model_bound(&model, &inputs, a.batch, &anchors)?;
    drop((model, inputs));

    // (b) vprompt end to end.
    let pipeline = yaml_map([
        (
            "source",
            yaml_map([("images", yaml_path(&dir)), ("end", n.into())]),
        ),
        ("model", yaml_path(&std::path::absolute(&a.model)?)),
        ("bank", "bank.json".into()),
        ("job", yaml_map([("kind", "autolabel".into())])),
        (
            "sinks",
            Value::Sequence(vec![
                yaml_map([("kind", "coco".into()), ("path", "auto/coco.json".into())]),
                yaml_map([
                    ("kind", "jsonl".into()),
                    ("path", "auto/results.jsonl".into()),
                ]),
            ]),
        ),
        ("runtime", bench_runtime(a, threads)),
    ]);
    let report = run_pipeline(&pipeline, &out.join("autolabel.yaml"))?;

    // (c) the Python way.
    let python = if a.python {
        Some(python_baseline(
            "benches/python_autolabel.py",
            &[
                "--model".into(),
                a.model.to_string_lossy().into_owned(),
                "--bank".into(),
                bank_path.to_string_lossy().into_owned(),
                "--images".into(),
                dir.to_string_lossy().into_owned(),
                "--out".into(),
                out.join("python-auto").to_string_lossy().into_owned(),
                "--limit".into(),
                n.to_string(),
                "--threads".into(),
                threads.to_string(),
            ],
        )?)
    } else {
        None
    };
    Ok(JobBench {
        job: "autolabel",
        items: n,
        fps_a,
        fps_b: report.fps,
        rss_b: report.peak_rss_mib,
        python,
        report,
    })
}

fn machine_description(cores: usize) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpu}, {cores} cores available")
}

/// UTC date and time from the system clock, without a date crate.
fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (mo <= 2) as i64;
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}
