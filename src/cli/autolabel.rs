//! `vprompt autolabel` (the one-line form of the auto-labeling job) and `vprompt bank build | inspect`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_yaml_ng::Value;

use super::{default_model, execute, write_pipeline, yaml_f32, yaml_map, yaml_path};
use crate::bank::{Bank, ExemplarSet};
use crate::model::{Model, SessionOptions};
use crate::spec::Shard;

#[derive(Args)]
pub struct AutolabelArgs {
    /// A folder of images (searched in name order) or a glob pattern such as 'data/**/*.jpg'.
    #[arg(long)]
    images: String,
    /// Exemplars: a COCO instances JSON (polygons, RLE or boxes) or an exemplar YAML; a bank is built
    /// from them into the output folder.
    #[arg(long, required_unless_present = "bank", conflicts_with = "bank")]
    exemplars: Option<PathBuf>,
    /// Folder of the exemplar images of a COCO JSON (default: the JSON's folder).
    #[arg(long)]
    exemplar_images: Option<PathBuf>,
    /// A bank made by `vprompt bank build`, instead of --exemplars.
    #[arg(long)]
    bank: Option<PathBuf>,
    /// Output folder: coco.json, yolo/, results.jsonl, overlays/, contact-sheet.png, manifest.jsonl,
    /// report.json (in shard-I-of-N/ when sharded).
    #[arg(long)]
    out: PathBuf,
    /// Model folder (default: the shipped models/vprompt-lite0).
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    parts: ImageSetRun,
    /// Keep detections scoring at least this.
    #[arg(long, default_value_t = 0.05)]
    threshold: f32,
    /// How instances are found: `proposals` (class-agnostic masks classified by their pooled features
    /// against the exemplars') or `generic` (DINOv's generic queries matched to the class embeddings).
    #[arg(long, value_enum, default_value_t = Labeler::Proposals)]
    labeler: Labeler,
    /// proposals: the point grid's side (default 12); smaller is faster, larger finds more.
    #[arg(long)]
    grid: Option<usize>,
    /// Most detections per image (at most 255).
    #[arg(long, default_value_t = 100)]
    max_detections: usize,
    /// Exemplars drawn per class and averaged.
    #[arg(long, default_value_t = 16)]
    exemplars_per_class: usize,
    /// Seed of that draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Parallel model workers (default: 2 on two or more cores, else 1).
    #[arg(long, default_value_t = crate::spec::default_workers())]
    workers: usize,
    /// Images per encoder/decoder call.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Skip the overlay PNGs.
    #[arg(long)]
    no_overlays: bool,
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Labeler {
    Proposals,
    Generic,
}

#[derive(Subcommand)]
pub enum BankCommand {
    /// Encode exemplars (COCO JSON or exemplar YAML) into a bank file.
    Build {
        #[arg(long)]
        exemplars: PathBuf,
        /// Folder of the exemplar images of a COCO JSON (default: the JSON's folder).
        #[arg(long)]
        exemplar_images: Option<PathBuf>,
        /// Model folder (default: the shipped models/vprompt-lite0).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Bank file to write (default: beside the exemplars, `.bank.json`).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Print a bank's model, classes and exemplar counts.
    Inspect { bank: PathBuf },
}

fn load_model(dir: &Path, device: &str) -> Result<Model> {
    let opts = SessionOptions {
        device: device.parse().map_err(anyhow::Error::msg)?,
        threads: 0,
        library: None,
        sessions: 1,
    };
    Ok(Model::load(dir, &opts)?)
}

fn build_bank(
    exemplars: &Path,
    images: Option<&Path>,
    model: &Path,
    device: &str,
    out: &Path,
) -> Result<Bank> {
    let set = ExemplarSet::load(exemplars, images)?;
    let model = load_model(model, device)?;
    let bank = Bank::build(&model, &set)?;
    bank.save(out)?;
    Ok(bank)
}

pub fn bank(cmd: BankCommand) -> Result<i32> {
    match cmd {
        BankCommand::Build {
            exemplars,
            exemplar_images,
            model,
            out,
            device,
        } => {
            let model = match model {
                Some(m) => m,
                None => default_model()?,
            };
            let out = out.unwrap_or_else(|| crate::bank::default_path(&exemplars));
            let bank = build_bank(
                &exemplars,
                exemplar_images.as_deref(),
                &model,
                &device,
                &out,
            )?;
            print!("{}", bank.summary(&out));
            Ok(0)
        }
        BankCommand::Inspect { bank } => {
            let b = Bank::load(&bank)?;
            print!("{}", b.summary(&bank));
            Ok(0)
        }
    }
}

/// The `source` of an image-set run's pipeline file: the images (a glob as it is, a folder made absolute,
/// as the pipeline file lives in the output folder), and this process's shard (`I/N`) when split.
pub(super) fn image_set_source(images: &str, shard: Option<String>) -> Value {
    let images = if images.contains(['*', '?', '[']) {
        Value::from(images)
    } else {
        let p = Path::new(images);
        yaml_path(&std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
    };
    match shard {
        Some(s) => yaml_map([("images", images), ("shard", s.into())]),
        None => yaml_map([("images", images)]),
    }
}

/// The `sinks` of an image-set run (autolabel, find) in `out`: coco.json, yolo/, results.jsonl,
/// contact-sheet.png and overlays/ (with `overlays`).
pub(super) fn image_set_sinks(out: &Path, overlays: bool) -> Value {
    let f = |p: &str| {
        let path = out.join(p);
        yaml_path(&std::path::absolute(&path).unwrap_or(path))
    };
    let mut sinks = vec![
        yaml_map([("kind", "coco".into()), ("path", f("coco.json"))]),
        yaml_map([("kind", "yolo".into()), ("dir", f("yolo"))]),
        yaml_map([("kind", "jsonl".into()), ("path", f("results.jsonl"))]),
        yaml_map([
            ("kind", "contact_sheet".into()),
            ("path", f("contact-sheet.png")),
        ]),
    ];
    if overlays {
        sinks.push(yaml_map([
            ("kind", "overlay_png".into()),
            ("dir", f("overlays")),
        ]));
    }
    Value::Sequence(sinks)
}

/// How a run over an image set is split and resumed: the options `autolabel` and `find` share.
#[derive(Args)]
pub struct ImageSetRun {
    /// This process's part of the images, `I/N` (0-based).
    #[arg(long, conflicts_with = "shard_count")]
    shard: Option<String>,
    /// Number of shards, the index coming from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job).
    #[arg(long, env = "VPROMPT_SHARD_COUNT")]
    shard_count: Option<u64>,
    /// Start over instead of resuming what the output folder's manifest records.
    #[arg(long)]
    pub restart: bool,
}

impl ImageSetRun {
    /// The shard of this process: `--shard I/N`, or JOB_COMPLETION_INDEX with `--shard-count N`.
    pub fn shard(&self) -> Result<Option<Shard>> {
        if let Some(s) = &self.shard {
            return Ok(Some(s.parse().map_err(anyhow::Error::msg)?));
        }
        let Some(n) = self.shard_count else {
            return Ok(None);
        };
        let i = std::env::var("JOB_COMPLETION_INDEX").with_context(|| {
            "--shard-count (or VPROMPT_SHARD_COUNT) needs JOB_COMPLETION_INDEX, as a Kubernetes Indexed Job \
             sets it; or give --shard I/N"
        })?;
        Ok(Some(format!("{}/{n}", i.trim()).parse().map_err(
            |e: String| anyhow::anyhow!("JOB_COMPLETION_INDEX={i} with {n} shards: {e}"),
        )?))
    }

    /// The output folder of this process (`OUT/shard-I-of-N` when sharded) and its `source.shard`.
    pub fn output(&self, out: &Path) -> Result<(PathBuf, Option<String>)> {
        Ok(match self.shard()? {
            Some(s) => (
                out.join(format!("shard-{}-of-{}", s.index, s.count)),
                Some(format!("{}/{}", s.index, s.count)),
            ),
            None => (out.to_path_buf(), None),
        })
    }
}

pub fn autolabel(a: AutolabelArgs) -> Result<i32> {
    let (out, shard) = a.parts.output(&a.out)?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let model = match &a.model {
        Some(m) => m.clone(),
        None => default_model()?,
    };
    let bank = match (&a.bank, &a.exemplars) {
        (Some(b), _) => b.clone(),
        (None, Some(ex)) => {
            // Deterministic: the same exemplars and model give the same bank, so a resumed run matches.
            let path = out.join("bank.json");
            let bank = build_bank(ex, a.exemplar_images.as_deref(), &model, &a.device, &path)?;
            if !a.quiet {
                eprint!("{}", bank.summary(&path));
            }
            path
        }
        (None, None) => anyhow::bail!("give --exemplars or --bank"),
    };
    let labeler = match (a.labeler, a.grid) {
        (Labeler::Generic, _) => yaml_map([("mode", "generic".into())]),
        (Labeler::Proposals, None) => yaml_map([("mode", "proposals".into())]),
        (Labeler::Proposals, Some(g)) => {
            yaml_map([("mode", "proposals".into()), ("grid", g.into())])
        }
    };
    let pipeline = yaml_map([
        ("source", image_set_source(&a.images, shard)),
        ("model", yaml_path(&abs(&model))),
        ("bank", yaml_path(&abs(&bank))),
        (
            "job",
            yaml_map([
                ("kind", "autolabel".into()),
                ("labeler", labeler),
                ("score_threshold", yaml_f32(a.threshold)),
                ("max_detections", a.max_detections.into()),
                ("exemplars_per_class", a.exemplars_per_class.into()),
                ("seed", a.seed.into()),
            ]),
        ),
        ("sinks", image_set_sinks(&out, !a.no_overlays)),
        (
            "runtime",
            yaml_map([
                ("device", a.device.clone().into()),
                ("workers", a.workers.into()),
                ("batch_size", a.batch.into()),
            ]),
        ),
    ]);
    let spec = write_pipeline(&pipeline, &out.join("pipeline.yaml"))?;
    execute(spec, None, a.quiet, a.parts.restart)
}
