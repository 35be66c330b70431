//! The `vprompt` command line: validate and run pipeline files, the one-line `propagate` form, and
//! evaluation. Errors end as one line on stderr and exit code 2; an interrupted run exits 130.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

mod autolabel;
mod bench;
mod find;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_yaml_ng::Value;

use crate::model::{Model, SessionOptions};
use crate::pipeline::{run, RunOptions, RunReport};
use crate::prompt::{ObjectPrompt, PromptFile};
use crate::spec::PipelineSpec;

#[derive(Parser)]
#[command(
    name = "vprompt",
    version,
    about = "Visual in-context prompted segmentation for videos and image sets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a pipeline file, its model (against the ONNX contract), its prompts and its source.
    Validate {
        file: PathBuf,
        /// Override a key: `--set runtime.workers=2` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Run a pipeline file.
    Run {
        file: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Serve Prometheus metrics on HOST:PORT during the run.
        #[arg(long)]
        metrics_addr: Option<SocketAddr>,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
        /// Auto-labeling: start over instead of resuming from the manifest.
        #[arg(long)]
        restart: bool,
    },
    /// Label every instance of the exemplars' classes in a folder of images: the one-line form of
    /// autolabel. Resumes where a stopped run left off.
    Autolabel(autolabel::AutolabelArgs),
    /// Find an object marked on a reference image in every image of a folder (cross-image referring).
    Find(find::FindArgs),
    /// Build or look into a prompt bank (exemplar embeddings per class).
    #[command(subcommand)]
    Bank(autolabel::BankCommand),
    /// Join the COCO files of shards of one auto-labeling run into one.
    Merge {
        /// The shards' COCO files.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Follow objects marked on one frame through a whole video: the one-line form of propagate.
    Propagate {
        /// A video file, a stream URL, or a folder of numbered frames.
        #[arg(long)]
        video: String,
        /// Mask PNG on the reference frame: binary = object 1; a palette PNG gives every id in it.
        #[arg(long)]
        mask: Option<PathBuf>,
        /// Object 1 by its box `x0,y0,x1,y1` (frame pixels) on the reference frame, instead of --mask.
        #[arg(long = "box", value_name = "X0,Y0,X1,Y1", value_parser = parse_box, conflicts_with_all = ["mask", "prompts"])]
        box_xyxy: Option<[f32; 4]>,
        /// Object 1 by a click `x,y` (frame pixels) on the reference frame; repeat for more points.
        #[arg(long = "point", value_name = "X,Y", value_parser = parse_xy, conflicts_with_all = ["mask", "prompts"])]
        points: Vec<[f32; 2]>,
        /// A point `x,y` that is not object 1 (with --box or --point); repeatable.
        #[arg(long = "negative-point", value_name = "X,Y", value_parser = parse_xy, conflicts_with_all = ["mask", "prompts"])]
        negative_points: Vec<[f32; 2]>,
        /// Reference frame of --mask, --box or --point.
        #[arg(long, default_value_t = 0)]
        frame: u64,
        /// A reference image outside the video that --mask, --box or --point are on (cross-image
        /// referring): the object is searched from the video's first frame.
        #[arg(long = "ref", value_name = "IMAGE", conflicts_with_all = ["prompts", "frame"])]
        reference: Option<PathBuf>,
        /// A prompt file (objects with masks, boxes, points, scribbles) instead of --mask.
        #[arg(long, conflicts_with = "mask")]
        prompts: Option<PathBuf>,
        /// Output folder: masks/ (palette PNGs), overlay.mp4, results.jsonl, coco.json, report.json.
        #[arg(long)]
        out: PathBuf,
        /// Model folder (default: the shipped models/vprompt-lite0).
        #[arg(long)]
        model: Option<PathBuf>,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Parallel model workers (default: 2 on two or more cores, else 1).
        #[arg(long, default_value_t = crate::spec::default_workers())]
        workers: usize,
        /// How each object's mask is made: `fused` (the decoder's referring re-ranked by, and its logits
        /// joined with, a target model fitted on the reference frame), `rerank`, `target` (that model
        /// alone) or `decoder` (referring alone).
        #[arg(long, default_value = "fused", value_parser = ["decoder", "target", "rerank", "fused"])]
        target: String,
        /// Fuse a space-time memory readout with the mode's mask at this weight, 0..=1 (default: the
        /// job's, `target.readout.weight`).
        #[arg(long, value_name = "WEIGHT")]
        readout: Option<f32>,
        /// Refine the masks' outlines along the frame's colour edges (`job.refine`): on or off.
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        refine: String,
        /// Skip the overlay video.
        #[arg(long)]
        no_video: bool,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Evaluate against ground truth: written outputs (davis, coco) or the model on prompts (prompts).
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Benchmark: the model alone, vprompt end to end, and (with --python) the plain Python way.
    Bench {
        #[arg(long, default_value = "models/vprompt-lite0")]
        model: PathBuf,
        #[arg(long, default_value = "data/demo/car-turn.mp4")]
        video: String,
        #[arg(long, default_value = "data/demo/car-turn-00000.png")]
        mask: PathBuf,
        #[arg(long, default_value_t = 80)]
        frames: u64,
        /// Model workers (default: the pipeline default, 2 on two or more cores, else 1).
        #[arg(long, default_value_t = crate::spec::default_workers())]
        workers: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// ONNX Runtime threads in all (0: every core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Also time benches/python_propagate.py.
        #[arg(long)]
        python: bool,
        /// Append the table to this markdown file (e.g. BENCHMARKS.md).
        #[arg(long)]
        write: Option<PathBuf>,
        /// Also benchmark the autolabel job on this folder of images (needs --exemplars).
        #[arg(long, requires = "exemplars")]
        images: Option<PathBuf>,
        /// Exemplars for the autolabel bank (COCO JSON or exemplar YAML).
        #[arg(long)]
        exemplars: Option<PathBuf>,
        /// Folder of the exemplar images of a COCO JSON.
        #[arg(long)]
        exemplar_images: Option<PathBuf>,
        /// Images of --images used.
        #[arg(long, default_value_t = 64)]
        image_count: usize,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// DAVIS J&F of label PNGs (semi-supervised protocol: first and last frames excluded).
    Davis {
        #[arg(long)]
        pred: PathBuf,
        #[arg(long)]
        gt: PathBuf,
        /// Only these sequences (comma-separated).
        #[arg(long, value_delimiter = ',')]
        sequences: Vec<String>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// COCO mask AP, AP50, AP75 and per-class AP (the protocol of pycocotools' COCOeval, segm).
    Coco {
        /// Predictions: a COCO file written by vprompt (images matched by file_name) or a results list.
        #[arg(long)]
        pred: PathBuf,
        /// Ground truth: COCO instances JSON.
        #[arg(long)]
        gt: PathBuf,
        /// `all` (every ground-truth category), `pred` (those the predictions list), or ids `1,3,7`.
        #[arg(long, default_value = "all")]
        categories: String,
        /// `all` ground-truth images, or only the images the predictions list (`pred`).
        #[arg(long, default_value = "all")]
        images: String,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The model's mask from one box or click per ground-truth instance, by IoU, beside the filled box.
    Prompts {
        /// Ground truth: COCO instances JSON (polygons or RLE).
        #[arg(long)]
        gt: PathBuf,
        /// Folder of the images (`file_name` relative to it); images not found are left out.
        #[arg(long)]
        images: PathBuf,
        /// `box`: the instance mask's box; `click`: its most interior pixel.
        #[arg(long, value_parser = ["box", "click"])]
        prompt: String,
        /// Model folder (default: the shipped models/vprompt-lite0).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Instances whose `bbox` (else the mask's box) is narrower or lower than this many pixels
        /// are left out.
        #[arg(long, default_value_t = 32)]
        min_size: u32,
        /// Images of the file by file name order: `all`, `pool` (the first half) or `eval` (the second
        /// half; COCO128's evaluation images).
        #[arg(long, default_value = "all", value_parser = ["all", "pool", "eval"])]
        split: String,
        /// At most this many images (of the split, in file name order).
        #[arg(long)]
        limit: Option<usize>,
        /// `on`: the prompt is also decoded on crops around it and its outline moved onto colour edges,
        /// as `vprompt propagate` and `find` do with the default `job.focus`; `off`: on the whole image
        /// only, the mask as decoded.
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        focus: String,
        /// Print the report as JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Also write every scored instance to this file, one JSON object per line (image, annotation,
        /// category, area, the prompt, IoU, filled-box IoU, predicted IoU, mask area): for finding
        /// where a model fails.
        #[arg(long)]
        instances: Option<PathBuf>,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,vprompt=info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn dispatch(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Validate { file, set } => {
            if is_prompt_file(&file) {
                anyhow::ensure!(
                    set.is_empty(),
                    "{}: --set overrides keys of a pipeline file; this is a prompt file",
                    file.display()
                );
                return validate_prompts(&file);
            }
            let spec = PipelineSpec::load(&file, &set)?;
            let opts = SessionOptions {
                device: spec.runtime.device.parse().map_err(anyhow::Error::msg)?,
                threads: 1,
                library: None,
                sessions: 1,
            };
            let model = Model::load(&spec.model, &opts)?;
            if let Some(p) = &spec.prompts {
                let prompts = PromptFile::load(p)?;
                let n = prompts.objects.len();
                let ids = prompts.ids().len();
                match n - ids {
                    0 => println!("prompts: {ids} objects"),
                    later => println!(
                        "prompts: {ids} objects, {later} later prompts (corrections or absences)"
                    ),
                }
            }
            let source_opts = crate::source::SourceOptions {
                max_frame_pixels: spec.runtime.max_frame_pixels,
                ..Default::default()
            };
            let mut reader = crate::source::open(&spec.source, &source_opts)?;
            let first = reader
                .next_frame()
                .with_context(|| "the source has no frame".to_string())?;
            let img = first.image?;
            println!(
                "model: {} (input {}x{}, identity {})",
                model.spec.name,
                model.input_size(),
                model.input_size(),
                model.identity
            );
            println!("source: first frame {}x{}", img.width(), img.height());
            println!("{}: ok", file.display());
            Ok(0)
        }
        Command::Run {
            file,
            set,
            metrics_addr,
            quiet,
            restart,
        } => {
            let spec = PipelineSpec::load(&file, &set)?;
            execute(spec, metrics_addr, quiet, restart)
        }
        Command::Autolabel(args) => autolabel::autolabel(args),
        Command::Find(args) => find::find(args),
        Command::Bank(cmd) => autolabel::bank(cmd),
        Command::Merge { inputs, out } => {
            let n = crate::sink::coco::merge(&inputs, &out)?;
            println!("{}: {n} images from {} files", out.display(), inputs.len());
            Ok(0)
        }
        Command::Propagate {
            video,
            mask,
            box_xyxy,
            points,
            negative_points,
            frame,
            reference,
            prompts,
            out,
            model,
            device,
            workers,
            target,
            readout,
            refine,
            no_video,
            quiet,
        } => {
            let reference = reference
                .map(|r| std::path::absolute(&r).unwrap_or(r))
                .map(|r| {
                    if r.is_file() {
                        Ok(r)
                    } else {
                        Err(anyhow::anyhow!("--ref {}: no such image file", r.display()))
                    }
                })
                .transpose()?;
            let on_reference = |mut file: PromptFile| -> Result<PromptFile> {
                if let Some(r) = &reference {
                    for o in &mut file.objects {
                        o.image = Some(r.clone());
                    }
                    file.check().map_err(anyhow::Error::msg)?;
                }
                Ok(file)
            };
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let prompts = match (prompts, mask) {
                (Some(p), _) => p,
                (None, Some(m)) => {
                    let file = on_reference(PromptFile::from_mask(&m, frame)?)?;
                    let path = out.join("prompts.yaml");
                    write_prompts(&file, &path)?;
                    path
                }
                (None, None) if box_xyxy.is_some() || !points.is_empty() => {
                    let file =
                        on_reference(quick_prompt(frame, box_xyxy, points, negative_points)?)?;
                    let path = out.join("prompts.yaml");
                    write_prompts(&file, &path)?;
                    path
                }
                (None, None) if !negative_points.is_empty() => {
                    anyhow::bail!(
                        "--negative-point needs --box or --point: it says what object 1 is not"
                    )
                }
                (None, None) => anyhow::bail!("give --mask, --box, --point or --prompts"),
            };
            let model = match model {
                Some(m) => m,
                None => default_model()?,
            };
            let is_dir = Path::new(&video).is_dir();
            // Local paths are made absolute: the generated pipeline file lives in the output folder.
            let video = if video.contains("://") {
                video
            } else {
                std::path::absolute(&video)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or(video)
            };
            let abs =
                |p: &Path| yaml_path(&std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
            let source = yaml_map([(if is_dir { "frames" } else { "video" }, Value::from(video))]);
            let mut sinks = vec![
                yaml_map([
                    ("kind", "palette_png".into()),
                    ("dir", abs(&out.join("masks"))),
                ]),
                yaml_map([
                    ("kind", "jsonl".into()),
                    ("path", abs(&out.join("results.jsonl"))),
                ]),
                yaml_map([
                    ("kind", "coco".into()),
                    ("path", abs(&out.join("coco.json"))),
                ]),
            ];
            if !no_video {
                sinks.push(yaml_map([
                    ("kind", "video".into()),
                    ("path", abs(&out.join("overlay.mp4"))),
                ]));
            }
            let pipeline = yaml_map([
                ("source", source),
                ("model", abs(&model)),
                ("prompts", abs(&prompts)),
                (
                    "job",
                    yaml_map([
                        ("kind", "propagate".into()),
                        ("target", {
                            let mut t = yaml_map([("mode", target.into())]);
                            if let (Some(w), Value::Mapping(m)) = (readout, &mut t) {
                                m.insert("readout".into(), yaml_map([("weight", w.into())]));
                            }
                            t
                        }),
                        ("refine", yaml_map([("enabled", (refine == "on").into())])),
                    ]),
                ),
                ("sinks", Value::Sequence(sinks)),
                (
                    "runtime",
                    yaml_map([("device", device.into()), ("workers", workers.into())]),
                ),
            ]);
            let spec = write_pipeline(&pipeline, &out.join("pipeline.yaml"))?;
            execute(spec, None, quiet, false)
        }
        Command::Bench {
            model,
            video,
            mask,
            frames,
            workers,
            batch,
            threads,
            device,
            python,
            write,
            images,
            exemplars,
            exemplar_images,
            image_count,
        } => {
            bench::bench(&bench::BenchArgs {
                model,
                video,
                mask,
                frames,
                workers: workers.max(1),
                batch: batch.max(1),
                threads,
                device,
                python,
                write,
                images,
                exemplars,
                exemplar_images,
                image_count: image_count.max(1),
            })?;
            Ok(0)
        }
        Command::Eval(EvalCommand::Davis {
            pred,
            gt,
            sequences,
            json,
        }) => {
            let report = crate::eval::davis::evaluate(&pred, &gt, &sequences)?;
            print!("{}", report.table());
            if let Some(j) = json {
                std::fs::write(&j, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("cannot write {}", j.display()))?;
            }
            Ok(0)
        }
        Command::Eval(EvalCommand::Coco {
            pred,
            gt,
            categories,
            images,
            json,
        }) => {
            use crate::eval::coco;
            let cats = match categories.as_str() {
                "all" => coco::Categories::All,
                "pred" => coco::Categories::Pred,
                ids => coco::Categories::Ids(
                    ids.split(',')
                        .map(|t| t.trim().parse::<u32>())
                        .collect::<Result<_, _>>()
                        .with_context(|| {
                            format!("--categories {ids}: give all, pred or comma-separated ids")
                        })?,
                ),
            };
            let images = match images.as_str() {
                "all" => coco::Images::All,
                "pred" => coco::Images::Pred,
                other => anyhow::bail!("--images {other}: give all or pred"),
            };
            let report = coco::evaluate(&pred, &gt, &cats, images)?;
            print!("{}", report.table());
            if let Some(j) = json {
                std::fs::write(&j, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("cannot write {}", j.display()))?;
            }
            Ok(0)
        }
        Command::Eval(EvalCommand::Prompts {
            gt,
            images,
            prompt,
            model,
            min_size,
            split,
            limit,
            focus,
            json,
            instances,
            device,
        }) => {
            use crate::eval::prompts::{evaluate, PromptEvalOptions, PromptKind, Split};
            use crate::spec::FocusSpec;
            let model = match model {
                Some(m) => m,
                None => default_model()?,
            };
            let opts = SessionOptions {
                device: device.parse().map_err(anyhow::Error::msg)?,
                ..SessionOptions::default()
            };
            let model = Model::load(&model, &opts)?;
            let opts = PromptEvalOptions {
                gt,
                images,
                prompt: if prompt == "box" {
                    PromptKind::Box
                } else {
                    PromptKind::Click
                },
                min_size,
                split: match split.as_str() {
                    "pool" => Split::Pool,
                    "eval" => Split::Eval,
                    _ => Split::All,
                },
                limit,
                focus: if focus == "on" {
                    FocusSpec::default()
                } else {
                    FocusSpec::off()
                },
            };
            // Opened before the (long) evaluation, so that a path that cannot be written fails at once.
            let instances_file = instances
                .map(|path| {
                    std::fs::File::create(&path)
                        .map(|f| (f, path.clone()))
                        .with_context(|| format!("cannot create --instances {}", path.display()))
                })
                .transpose()?;
            let report = evaluate(&model, &opts)?;
            if let Some((file, path)) = instances_file {
                use std::io::Write;
                let mut w = std::io::BufWriter::new(file);
                for s in &report.instances {
                    serde_json::to_writer(&mut w, s)?;
                    w.write_all(b"\n")?;
                }
                w.flush()
                    .with_context(|| format!("cannot write --instances {}", path.display()))?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(0)
        }
    }
}

fn execute(
    spec: PipelineSpec,
    metrics_addr: Option<SocketAddr>,
    quiet: bool,
    restart: bool,
) -> Result<i32> {
    let opts = RunOptions {
        metrics_addr,
        progress: !quiet,
        stop: Arc::new(AtomicBool::new(false)),
        handle_signals: true,
        slow_sink: None,
        restart,
    };
    let rt = runtime()?;
    let report: RunReport = rt.block_on(run(spec, opts))?;
    eprint!("{}", report.table());
    Ok(if report.interrupted { 130 } else { 0 })
}

/// A YAML mapping of `pairs`, in their order: how the CLI builds the pipeline files it writes.
pub(crate) fn yaml_map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Mapping(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

/// A path as a pipeline file gives it.
pub(crate) fn yaml_path(p: &Path) -> Value {
    Value::from(p.to_string_lossy().into_owned())
}

/// An `f32` option as the number its shortest text says (0.3, not 0.30000001192092896).
pub(crate) fn yaml_f32(x: f32) -> Value {
    Value::from(x.to_string().parse::<f64>().unwrap_or(x as f64))
}

/// Writes the pipeline built in code to `path` (YAML, by serde) and reads it back as `vprompt run`
/// would, so that the file beside the outputs is what ran and every check applies.
pub(crate) fn write_pipeline(pipeline: &Value, path: &Path) -> Result<PipelineSpec> {
    let text = serde_yaml_ng::to_string(pipeline).context("cannot write the pipeline as YAML")?;
    std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(PipelineSpec::parse(&text, path, &[])?)
}

/// Whether `path` holds a prompt file (a mapping with `objects` and no `source`) rather than a pipeline.
fn is_prompt_file(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) {
        Ok(serde_yaml_ng::Value::Mapping(m)) => {
            m.contains_key("objects") && !m.contains_key("source")
        }
        _ => false,
    }
}

/// `vprompt validate` on a prompt file: every check a run makes before its first frame (fields, limits,
/// mask files), plus each mask read and holding its object; one line per object.
fn validate_prompts(path: &Path) -> Result<i32> {
    let file = PromptFile::load(path)?;
    println!(
        "prompt file {}: {} objects",
        path.display(),
        file.objects.len()
    );
    for o in &file.objects {
        let mut what = Vec::new();
        if let Some(m) = &o.mask {
            let labels = crate::palette::read(m)?;
            let want = o.mask_value;
            let n = crate::prompt::raster::object_pixels(&labels, want).area();
            anyhow::ensure!(
                n > 0,
                "{}: object {}: the mask {} has no pixel {}; mark the object in it or fix `mask_value`",
                path.display(),
                o.id,
                m.display(),
                want.map_or("other than 0".to_string(), |w| format!("of value {w}"))
            );
            what.push(format!(
                "mask {} ({}x{}, {n} px)",
                m.display(),
                labels.width,
                labels.height
            ));
        }
        if let Some(b) = o.box_xyxy {
            what.push(format!("box [{}, {}, {}, {}]", b[0], b[1], b[2], b[3]));
        }
        if !o.points.is_empty() {
            what.push(format!("{} points", o.points.len()));
        }
        if !o.negative_points.is_empty() {
            what.push(format!("{} negative points", o.negative_points.len()));
        }
        if !o.scribbles.is_empty() {
            what.push(format!("{} scribbles", o.scribbles.len()));
        }
        let on = match &o.image {
            Some(p) => format!("reference image {}", p.display()),
            None if o.absent => format!("frame {}: absent", o.frame),
            None => format!("frame {}", o.frame),
        };
        println!("  object {} on {on}: {}", o.id, what.join(", "));
    }
    println!(
        "ok: the prompt file is valid (frames and sizes are checked against a source when it runs)"
    );
    Ok(0)
}

/// The prompt file of `propagate --box / --point / --negative-point`: object 1 on `frame`, exactly as
/// the same fields in a prompt file, checked as one.
fn quick_prompt(
    frame: u64,
    box_xyxy: Option<[f32; 4]>,
    points: Vec<[f32; 2]>,
    negative_points: Vec<[f32; 2]>,
) -> Result<PromptFile> {
    let file = PromptFile {
        objects: vec![ObjectPrompt {
            id: 1,
            frame,
            mask: None,
            mask_value: None,
            box_xyxy,
            points,
            negative_points,
            scribbles: vec![],
            absent: false,
            image: None,
        }],
    };
    file.check().map_err(anyhow::Error::msg)?;
    Ok(file)
}

/// `x,y` in frame pixels.
fn parse_xy(s: &str) -> std::result::Result<[f32; 2], String> {
    let v = parse_numbers(s, 2, "x,y (frame pixels), e.g. 120,80")?;
    Ok([v[0], v[1]])
}

/// `x0,y0,x1,y1` in frame pixels, with x0 < x1 and y0 < y1.
fn parse_box(s: &str) -> std::result::Result<[f32; 4], String> {
    let v = parse_numbers(s, 4, "x0,y0,x1,y1 (frame pixels), e.g. 40,30,200,180")?;
    if v[0] >= v[2] || v[1] >= v[3] {
        return Err(format!(
            "`{s}` is not a box: x0 must be below x1 and y0 below y1 (x0,y0,x1,y1)"
        ));
    }
    Ok([v[0], v[1], v[2], v[3]])
}

fn parse_numbers(s: &str, n: usize, want: &str) -> std::result::Result<Vec<f32>, String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|t| t.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("`{s}` is not {want}"))?;
    if v.len() != n || v.iter().any(|x| !x.is_finite() || *x < 0.0) {
        return Err(format!("`{s}` is not {want}: {n} non-negative numbers"));
    }
    Ok(v)
}

/// Writes `file` as YAML (serde), mask paths made absolute so that the file can live anywhere.
fn write_prompts(file: &PromptFile, path: &Path) -> Result<()> {
    let mut file = file.clone();
    for o in &mut file.objects {
        if let Some(m) = &mut o.mask {
            *m = std::path::absolute(&*m).unwrap_or_else(|_| m.clone());
        }
    }
    let text = serde_yaml_ng::to_string(&file).context("cannot write the prompts as YAML")?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The shipped model: `models/vprompt-lite0` in the working directory or above the executable.
pub(crate) fn default_model() -> Result<PathBuf> {
    let rel = Path::new("models/vprompt-lite0");
    if rel.join("model.yaml").is_file() {
        return Ok(rel.to_path_buf());
    }
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1) {
            let p = up.join(rel);
            if p.join("model.yaml").is_file() {
                return Ok(p);
            }
        }
    }
    anyhow::bail!("no --model given and the shipped model models/vprompt-lite0 was not found; pass --model DIR")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_files_keep_awkward_strings_and_numbers() {
        let dir = tempfile::tempdir().unwrap();
        // Strings that plain YAML would read as something else, or cut short.
        let awkward = [
            "yes",
            "1.5",
            "null",
            "a: b",
            "# not a comment",
            "~",
            "[x]",
            "*.jpg",
        ];
        for (k, s) in awkward.iter().enumerate() {
            let images = dir.path().join(s);
            let pipeline = yaml_map([
                ("source", yaml_map([("images", yaml_path(&images))])),
                ("model", (*s).into()),
                ("bank", "b.json".into()),
                (
                    "job",
                    yaml_map([
                        ("kind", "autolabel".into()),
                        ("score_threshold", yaml_f32(0.3)),
                    ]),
                ),
                (
                    "sinks",
                    Value::Sequence(vec![yaml_map([
                        ("kind", "jsonl".into()),
                        ("path", "r.jsonl".into()),
                    ])]),
                ),
                ("runtime", yaml_map([("device", "cuda:0".into())])),
            ]);
            let path = dir.path().join(format!("p{k}.yaml"));
            let spec = write_pipeline(&pipeline, &path).unwrap();
            assert_eq!(
                spec.source.images.as_deref(),
                Some(images.to_str().unwrap()),
                "{s}"
            );
            assert_eq!(spec.model, dir.path().join(s), "{s}");
            assert_eq!(spec.job.score_threshold, 0.3);
            assert_eq!(spec.runtime.device, "cuda:0");
            // The f32 is written as the number it says, not its f64 widening.
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains("score_threshold: 0.3\n"), "{text}");
        }
    }
}
