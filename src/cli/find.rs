//! `vprompt find`: an object marked on a reference image, found in every image of a folder (cross-image
//! referring over an image set). Each image gets each object's best match, or nothing below
//! `--min-score`. Runs the `find` job: the objects anchored on their reference images and no memory of
//! earlier images, so every image is labeled from the references alone, whatever the order; hence it
//! resumes from its manifest after an interruption and splits into shards (`vprompt merge` joins them).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use super::autolabel::{image_set_sinks, image_set_source, ImageSetRun};
use super::{
    default_model, execute, parse_box, parse_xy, quick_prompt, write_pipeline, write_prompts,
    yaml_f32, yaml_map, yaml_path,
};
use crate::prompt::PromptFile;

#[derive(Args)]
pub struct FindArgs {
    /// A folder of images (searched in name order) or a glob pattern such as 'data/**/*.jpg'.
    #[arg(long)]
    images: String,
    /// The reference image the object is marked on (--mask, --box or --point).
    #[arg(
        long = "ref",
        value_name = "IMAGE",
        required_unless_present = "prompts"
    )]
    reference: Option<PathBuf>,
    /// The object's mask on the reference image (binary PNG, or a palette PNG: one object per id).
    #[arg(long, requires = "reference")]
    mask: Option<PathBuf>,
    /// The object's box on the reference image, `x0,y0,x1,y1` in its pixels.
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1", value_parser = parse_box, conflicts_with = "mask")]
    box_xyxy: Option<[f32; 4]>,
    /// A point on the object (repeatable), `x,y` in the reference image's pixels.
    #[arg(long = "point", value_name = "X,Y", value_parser = parse_xy, conflicts_with = "mask")]
    points: Vec<[f32; 2]>,
    /// A point off the object (repeatable).
    #[arg(long = "negative-point", value_name = "X,Y", value_parser = parse_xy, conflicts_with = "mask")]
    negative_points: Vec<[f32; 2]>,
    /// A prompt file whose objects are all on reference images (`image:`), instead of --ref.
    #[arg(long, conflicts_with_all = ["reference", "mask"])]
    prompts: Option<PathBuf>,
    /// Output folder: coco.json, yolo/, results.jsonl, overlays/, contact-sheet.png, manifest.jsonl,
    /// report.json (in shard-I-of-N/ when sharded).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    parts: ImageSetRun,
    /// A match must score at least this (the cosine of its query to the object's references).
    #[arg(long, default_value_t = 0.0)]
    min_score: f32,
    /// Model folder (default: the shipped models/vprompt-lite0).
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Parallel model workers (default: 2 on two or more cores, else 1).
    #[arg(long, default_value_t = crate::spec::default_workers())]
    workers: usize,
    /// Skip the overlay PNGs.
    #[arg(long)]
    no_overlays: bool,
    #[arg(long, short)]
    quiet: bool,
}

pub fn find(a: FindArgs) -> Result<i32> {
    let (out, shard) = a.parts.output(&a.out)?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let prompts = match (&a.prompts, &a.reference) {
        (Some(p), _) => {
            let file = PromptFile::load(p)?;
            if let Some(o) = file.objects.iter().find(|o| o.image.is_none()) {
                anyhow::bail!(
                    "{}: object {} is on frame {}; find takes objects on reference images (`image:`)",
                    p.display(),
                    o.id,
                    o.frame
                );
            }
            abs(p)
        }
        (None, Some(r)) => {
            anyhow::ensure!(r.is_file(), "--ref {}: no such image file", r.display());
            let mut file = match &a.mask {
                Some(m) => PromptFile::from_mask(&abs(m), 0)?,
                None if a.box_xyxy.is_some() || !a.points.is_empty() => {
                    quick_prompt(0, a.box_xyxy, a.points.clone(), a.negative_points.clone())?
                }
                None => anyhow::bail!("mark the object on --ref with --mask, --box or --point"),
            };
            for o in &mut file.objects {
                o.image = Some(abs(r));
            }
            file.check().map_err(anyhow::Error::msg)?;
            let path = out.join("prompts.yaml");
            write_prompts(&file, &path)?;
            abs(&path)
        }
        (None, None) => anyhow::bail!("give --ref with --mask, --box or --point, or --prompts"),
    };
    let model = match &a.model {
        Some(m) => m.clone(),
        None => default_model()?,
    };
    let pipeline = yaml_map([
        ("source", image_set_source(&a.images, shard)),
        ("model", yaml_path(&abs(&model))),
        ("prompts", yaml_path(&prompts)),
        (
            "job",
            yaml_map([
                ("kind", "find".into()),
                ("min_score", yaml_f32(a.min_score)),
            ]),
        ),
        ("sinks", image_set_sinks(&out, !a.no_overlays)),
        (
            "runtime",
            yaml_map([
                ("device", a.device.clone().into()),
                ("workers", a.workers.into()),
            ]),
        ),
    ]);
    let spec = write_pipeline(&pipeline, &out.join("pipeline.yaml"))?;
    execute(spec, None, a.quiet, a.parts.restart)
}
