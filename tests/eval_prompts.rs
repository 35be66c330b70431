//! `vprompt eval prompts`: on COCO128 with the shipped model, the filled-box baseline equals the one
//! pycocotools gives from the same polygons and the report parses; on drawn scenes with the fixture
//! models, whose answer is known, the model's mIoU is what their masks make. Errors name the file.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use image::{Rgb, RgbImage};

/// `vprompt eval prompts --gt GT --images IMAGES --prompt PROMPT --model MODEL [more...]`, run.
fn eval_run(
    gt: &Path,
    images: &Path,
    prompt: &str,
    model: &Path,
    more: &[&str],
) -> std::process::Output {
    let (gt, images, model) = (
        gt.to_str().unwrap(),
        images.to_str().unwrap(),
        model.to_str().unwrap(),
    );
    let mut args = vec![
        "eval", "prompts", "--gt", gt, "--images", images, "--prompt", prompt, "--model", model,
    ];
    args.extend_from_slice(more);
    vprompt(&args)
}

/// [`eval_run`] with `--json`, parsed.
fn eval_json(
    gt: &Path,
    images: &Path,
    prompt: &str,
    model: &Path,
    more: &[&str],
) -> serde_json::Value {
    let mut more = more.to_vec();
    more.push("--json");
    json_out(&eval_run(gt, images, prompt, model, &more))
}

/// COCO128's instances file, its images folder and the shipped model; `None` (the test is skipped)
/// without the shared data.
fn coco128_setup() -> Option<(PathBuf, PathBuf, PathBuf)> {
    if skip_without(&["coco128"]) {
        return None;
    }
    let data = coco128();
    Some((
        data.join("annotations/instances_train2017.json"),
        data.join("train2017"),
        root().join("models/vprompt-lite0"),
    ))
}

fn json_out(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("--json prints JSON")
}

/// Per bucket (small, medium, large, all): instance count and mean filled-box IoU, from pycocotools'
/// polygon masks of the first `limit` images of the evaluation half.
fn pycocotools_box_baseline(gt: &Path, limit: usize, min_size: u32) -> serde_json::Value {
    let script = format!(
        r#"
import json, sys
import numpy as np
from pycocotools.coco import COCO
coco = COCO({gt:?})
imgs = sorted(coco.dataset["images"], key=lambda i: i["file_name"])
imgs = imgs[len(imgs) // 2:][:{limit}]
rows = {{"small": [], "medium": [], "large": [], "all": []}}
for im in imgs:
    for a in coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]])):
        if a.get("iscrowd", 0):
            continue
        m = coco.annToMask(a).astype(bool)
        if not m.any():
            continue
        if a["bbox"][2] < {min_size} or a["bbox"][3] < {min_size}:
            continue
        ys, xs = np.nonzero(m)
        w, h = xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()
        area = int(m.sum())
        iou = area / float(w * h)
        size = "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"
        rows[size].append(iou)
        rows["all"].append(iou)
print()
json.dump({{k: [len(v), (sum(v) / len(v)) if v else None] for k, v in rows.items()}}, sys.stdout)
"#
    );
    let o = python().arg("-c").arg(script).output().unwrap();
    assert!(o.status.success(), "pycocotools: {}", stderr(&o));
    // pycocotools talks on stdout while it loads; the result is the last line.
    let text = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap()
}

#[test]
fn filled_box_baseline_agrees_with_pycocotools_on_coco128() {
    let Some((gt, images, model)) = coco128_setup() else {
        return;
    };
    let limit = 4;
    let args = |prompt: &str, json: bool| {
        let mut v = vec![
            "eval".to_string(),
            "prompts".into(),
            "--gt".into(),
            gt.display().to_string(),
            "--images".into(),
            images.display().to_string(),
            "--prompt".into(),
            prompt.into(),
            "--model".into(),
            model.display().to_string(),
            "--split".into(),
            "eval".into(),
            "--limit".into(),
            limit.to_string(),
        ];
        if json {
            v.push("--json".into());
        }
        v
    };
    let run = |prompt: &str, json: bool| {
        let a = args(prompt, json);
        vprompt(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let expect = pycocotools_box_baseline(&gt, limit, 32);
    assert!(expect["all"][0].as_u64().unwrap() >= 5, "{expect}");
    for prompt in ["box", "click"] {
        let r = json_out(&run(prompt, true));
        assert_eq!(r["prompt"], prompt);
        assert_eq!(r["images"].as_u64(), Some(limit as u64));
        assert_eq!(r["query_input"], "anchors");
        let buckets = r["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 4);
        for b in buckets {
            let size = b["size"].as_str().unwrap();
            let want = &expect[size];
            assert_eq!(b["instances"], want[0], "{size}: {r}");
            match (b["miou_box"].as_f64(), want[1].as_f64()) {
                (Some(a), Some(e)) => assert!((a - e).abs() < 1e-9, "{size}: {a} vs {e}"),
                (a, e) => assert_eq!(a, e, "{size}"),
            }
            if let Some(m) = b["miou_model"].as_f64() {
                assert!((0.0..=1.0).contains(&m), "{size}: {m}");
            }
        }
    }
    // The table holds the same numbers.
    let o = run("box", false);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    let all = table
        .lines()
        .find(|l| l.starts_with("| all |"))
        .expect("an `all` row");
    let cells: Vec<&str> = all.split('|').map(str::trim).collect();
    assert_eq!(cells[2], expect["all"][0].to_string(), "{table}");
    let box_miou: f64 = cells[4].parse().unwrap();
    assert!((box_miou - expect["all"][1].as_f64().unwrap()).abs() < 5e-5);
}

/// Large red squares on blue (on the 8-pixel cells of the fixture models' mask grid at this scale),
/// and a green square too small to count, with their COCO polygons.
fn scene(dir: &Path) -> (PathBuf, PathBuf) {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut ims = Vec::new();
    let mut anns = Vec::new();
    for i in 0..3u32 {
        let (x0, y0, side) = (8 * (1 + i % 2), 16, 96 + 8 * (i / 2));
        let img = RgbImage::from_fn(128, 128, |x, y| {
            if x >= x0 && x < x0 + side && y >= y0 && y < y0 + side {
                Rgb([255, 0, 0])
            } else if (112..122).contains(&x) && (2..12).contains(&y) {
                Rgb([0, 255, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let name = format!("s{i}.png");
        img.save(images.join(&name)).unwrap();
        ims.push(serde_json::json!({"id": i + 1, "file_name": name, "width": 128, "height": 128}));
        let (x1, y1) = (x0 + side, y0 + side);
        anns.push(
            serde_json::json!({"id": 2 * i + 1, "image_id": i + 1, "category_id": 1,
            "iscrowd": 0, "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}),
        );
        anns.push(
            serde_json::json!({"id": 2 * i + 2, "image_id": i + 1, "category_id": 1,
            "iscrowd": 0, "segmentation": [[112, 2, 122, 2, 122, 12, 112, 12]]}),
        );
    }
    let gt = dir.join("gt.json");
    std::fs::write(
        &gt,
        serde_json::json!({"images": ims, "annotations": anns,
            "categories": [{"id": 1, "name": "square"}]})
        .to_string(),
    )
    .unwrap();
    (gt, images)
}

#[test]
fn fixture_models_segment_the_squares_they_are_prompted_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (gt, images) = scene(tmp.path());
    for model in ["color-model", "anchor-model"] {
        for prompt in ["box", "click"] {
            let r = eval_json(&gt, &images, prompt, &fixture(model), &[]);
            let all = &r["buckets"][3];
            // The green squares (10 px) are under --min-size; the red ones are large.
            assert_eq!(all["instances"].as_u64(), Some(3), "{r}");
            assert_eq!(r["buckets"][2]["instances"].as_u64(), Some(3), "{r}");
            // A polygon on pixel edges fills its box exactly.
            assert!(
                (all["miou_box"].as_f64().unwrap() - 1.0).abs() < 1e-12,
                "{r}"
            );
            // The colour at the prompt is red: the mask is the red square, about one 4-pixel cell in
            // from its edges (tau 0.04).
            let m = all["miou_model"].as_f64().unwrap();
            assert!(m > 0.75 && m < 1.0, "{model} {prompt}: {m}");
            let want = if model == "color-model" {
                "points"
            } else {
                "anchors"
            };
            assert_eq!(r["query_input"], want);
        }
    }
}

#[test]
fn instances_file_lists_every_scored_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let (gt, images) = scene(tmp.path());
    let list = tmp.path().join("instances.jsonl");
    let r = eval_json(
        &gt,
        &images,
        "click",
        &fixture("anchor-model"),
        &["--instances", list.to_str().unwrap()],
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&list)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    // The three red squares; the green ones are under --min-size.
    assert_eq!(rows.len(), 3, "{rows:?}");
    let files: Vec<&str> = rows.iter().map(|r| r["file"].as_str().unwrap()).collect();
    assert_eq!(files, ["s0.png", "s1.png", "s2.png"]);
    let ids: Vec<u64> = rows
        .iter()
        .map(|r| r["annotation"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 3, 5]);
    // `scene`'s squares: centres and areas.
    let want = [
        ([56.0, 64.0], 96 * 96),
        ([64.0, 64.0], 96 * 96),
        ([60.0, 68.0], 104 * 104),
    ];
    for (row, (centre, area)) in rows.iter().zip(want) {
        assert_eq!(row["area"].as_u64(), Some(area), "{row}");
        // The click is the square's most interior pixel: one of the (even-sided) square's four
        // central pixels, at its pixel centre.
        let p = row["prompt"].as_array().unwrap();
        assert_eq!(p.len(), 2, "{row}");
        for (v, c) in p.iter().zip(centre) {
            assert!((v.as_f64().unwrap() - c).abs() <= 1.0, "{row}");
        }
        assert!(row["pred_iou"].as_f64().is_some(), "{row}");
        assert!(row["mask_area"].as_u64().unwrap() > 0, "{row}");
    }
    // The table's mean is the mean of the listed IoUs.
    let mean = rows.iter().map(|r| r["iou"].as_f64().unwrap()).sum::<f64>() / 3.0;
    let all = r["buckets"][3]["miou_model"].as_f64().unwrap();
    assert!((mean - all).abs() < 1e-9, "{mean} vs {all}");
    // The report's JSON stays the summary: the list goes to the file only.
    assert!(r.get("instances").is_none(), "{r}");
}

#[test]
fn instances_file_that_cannot_be_created_fails_before_evaluating() {
    let tmp = tempfile::tempdir().unwrap();
    let (gt, images) = scene(tmp.path());
    let bad = tmp.path().join("no-such-dir/instances.jsonl");
    let o = eval_run(
        &gt,
        &images,
        "box",
        &fixture("anchor-model"),
        &["--instances", bad.to_str().unwrap()],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("--instances") && e.contains("no-such-dir"),
        "{e}"
    );
}

#[test]
fn errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (gt, images) = scene(tmp.path());
    let model = fixture("color-model");
    let missing = tmp.path().join("nope.json");
    let o = vprompt(&[
        "eval",
        "prompts",
        "--gt",
        missing.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--prompt",
        "box",
        "--model",
        model.to_str().unwrap(),
    ]);
    let e = one_error(&o);
    assert!(e.contains("nope.json"), "{e}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = vprompt(&[
        "eval",
        "prompts",
        "--gt",
        gt.to_str().unwrap(),
        "--images",
        empty.to_str().unwrap(),
        "--prompt",
        "click",
        "--model",
        model.to_str().unwrap(),
    ]);
    let e = one_error(&o);
    assert!(
        e.contains(&empty.display().to_string()) && e.contains("none of the 3 images"),
        "{e}"
    );
    let bad = write(tmp.path(), "bad.json", "{\"images\": 3}");
    let o = vprompt(&[
        "eval",
        "prompts",
        "--gt",
        bad.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--prompt",
        "box",
        "--model",
        model.to_str().unwrap(),
    ]);
    let e = one_error(&o);
    assert!(
        e.contains("bad.json") && e.contains("`images` is not a list"),
        "{e}"
    );
}

/// Focus (`job.focus`, `--focus on`, the default) decodes a prompt again on crops around it. On the
/// first 16 COCO128 evaluation images with the shipped model (66 instances >= 32x32) it measured click
/// mIoU 0.5006 against 0.4363 on the whole image alone, and box 0.6566 against 0.6584 (on all 223
/// instances box 0.6654 against 0.6252; the decoder before, run 1, had 0.651 against 0.646 on the 16);
/// the test asks a click gain of 0.03, no box loss beyond 0.005 on these 66 instances, and that the
/// report says which was run.
#[test]
fn focus_on_crops_segments_clicks_better_than_the_whole_image_alone() {
    let Some((gt, images, model)) = coco128_setup() else {
        return;
    };
    let miou = |prompt: &str, focus: &str| -> f64 {
        let r = eval_json(
            &gt,
            &images,
            prompt,
            &model,
            &["--split", "eval", "--limit", "16", "--focus", focus],
        );
        assert_eq!(r["focus"], focus == "on", "{r}");
        let all = &r["buckets"][3];
        assert_eq!(all["instances"].as_u64(), Some(66), "{r}");
        all["miou_model"].as_f64().unwrap()
    };
    let (click_on, click_off) = (miou("click", "on"), miou("click", "off"));
    assert!(
        click_on > click_off + 0.03,
        "click: focus {click_on:.4} vs whole image {click_off:.4}"
    );
    let (box_on, box_off) = (miou("box", "on"), miou("box", "off"));
    assert!(
        box_on >= box_off - 0.005,
        "box: focus {box_on:.4} vs whole image {box_off:.4}"
    );
}
