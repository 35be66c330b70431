//! The auto-labeling job end to end: shards joined by `merge` equal a single run, a run killed with
//! SIGKILL and started again ends with the same files, `eval coco` agrees with pycocotools, and a bank
//! from another model is refused. Images are drawn here: red and blue squares on grey, which the colour
//! fixture model's generic queries (red, green, blue, white) segment exactly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use image::{Rgb, RgbImage};

/// Where the squares of image `i` are: `(class, x0, y0, side)`; class 1 = red, 2 = blue.
fn squares(i: usize) -> Vec<(u32, u32, u32, u32)> {
    // On the 6-pixel cells of the colour model's 16x16 mask grid (96 / 16), so that masks are exact.
    let i = i as u32;
    let mut v = vec![(1, 6 * (1 + i % 6), 6 * (1 + i % 3), 24)];
    if i % 3 != 0 {
        v.push((2, 66, 6 * (5 + i % 2), 24));
    }
    if i % 5 == 1 {
        v.push((1, 66, 0, 18));
    }
    v
}

fn draw(i: usize) -> RgbImage {
    let mut img = RgbImage::from_pixel(96, 72, Rgb([128, 128, 128]));
    for (c, x0, y0, s) in squares(i) {
        let col = if c == 1 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        };
        for y in y0..(y0 + s).min(72) {
            for x in x0..(x0 + s).min(96) {
                img.put_pixel(x, y, col);
            }
        }
    }
    img
}

/// `n` images in `dir/images`, their ground truth (polygons) in `dir/gt.json`, and two exemplar images
/// with an exemplar YAML (boxes) in `dir/exemplars`.
fn dataset(dir: &Path, n: usize) -> (PathBuf, PathBuf, PathBuf) {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut gt_images = Vec::new();
    let mut anns = Vec::new();
    for i in 0..n {
        let name = format!("img{i:04}.png");
        draw(i).save(images.join(&name)).unwrap();
        gt_images
            .push(serde_json::json!({"id": i + 1, "file_name": name, "width": 96, "height": 72}));
        for (c, x0, y0, s) in squares(i) {
            let (x1, y1) = ((x0 + s).min(96), (y0 + s).min(72));
            anns.push(serde_json::json!({
                "id": anns.len() + 1, "image_id": i + 1, "category_id": c, "iscrowd": 0,
                "area": (x1 - x0) * (y1 - y0), "bbox": [x0, y0, x1 - x0, y1 - y0],
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
            }));
        }
    }
    let gt = dir.join("gt.json");
    std::fs::write(
        &gt,
        serde_json::json!({"images": gt_images, "annotations": anns,
            "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]})
        .to_string(),
    )
    .unwrap();
    let ex = dir.join("exemplars");
    std::fs::create_dir_all(&ex).unwrap();
    draw(1).save(ex.join("a.png")).unwrap();
    draw(2).save(ex.join("b.png")).unwrap();
    let boxes = |i: usize, c: u32| -> String {
        squares(i)
            .into_iter()
            .filter(|s| s.0 == c)
            .map(|(_, x, y, s)| {
                format!(
                    "      - {{ class: {}, box: [{}, {}, {}, {}] }}\n",
                    if c == 1 { "red" } else { "blue" },
                    x + 3,
                    y + 3,
                    x + s - 3,
                    y + s - 3
                )
            })
            .collect()
    };
    let yaml = format!(
        "classes: [red, blue]\nimages:\n  - image: a.png\n    objects:\n{}{}  - image: b.png\n    objects:\n{}",
        boxes(1, 1),
        boxes(1, 2),
        boxes(2, 1)
    );
    let exemplars = write(&ex, "exemplars.yaml", &yaml);
    (images, gt, exemplars)
}

fn autolabel_cmd(images: &Path, exemplars: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vprompt"));
    c.arg("autolabel")
        .arg("--images")
        .arg(images)
        .arg("--exemplars")
        .arg(exemplars)
        .arg("--out")
        .arg(out)
        .arg("--model")
        .arg(fixture("color-model"))
        // The colour model's descriptors (mean colour, brightness and a constant channel) leave the grey
        // background at a class probability near 0.45 and the squares above 0.6: a threshold between.
        .args(["--threshold", "0.5"])
        .arg("--quiet")
        .args(extra)
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("VPROMPT_SHARD_COUNT");
    c
}

fn run_ok(mut c: Command) {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn labels_every_square_and_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let (images, gt, exemplars) = dataset(dir.path(), 12);
    let out = dir.path().join("out");
    run_ok(autolabel_cmd(&images, &exemplars, &out, &[]));
    let coco = json(&out.join("coco.json"));
    assert_eq!(coco["images"].as_array().unwrap().len(), 12);
    let cats: Vec<&str> = coco["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cats, vec!["red", "blue"]);
    // Every image: one red instance (all red pixels: the colour model has one red query), one blue
    // when there is a blue square; each mask covers exactly the squares' pixels.
    for (k, im) in coco["images"].as_array().unwrap().iter().enumerate() {
        let id = im["id"].as_u64().unwrap();
        let anns: Vec<&serde_json::Value> = coco["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["image_id"].as_u64() == Some(id))
            .collect();
        let want_blue = squares(k).iter().any(|s| s.0 == 2);
        assert_eq!(anns.len(), 1 + want_blue as usize, "image {k}: {anns:?}");
        for a in anns {
            let c = a["category_id"].as_u64().unwrap() as u32;
            let area: u64 = squares(k)
                .iter()
                .filter(|s| s.0 == c)
                .map(|&(_, x, y, s)| (((x + s).min(96) - x) * ((y + s).min(72) - y)) as u64)
                .sum::<u64>();
            let got = a["area"].as_u64().unwrap();
            // The colour model thresholds the mean colour of 6x6-pixel cells (its 16x16 mask grid),
            // and the resize into its input blurs edge cells: a square loses up to a cell per side.
            assert!(
                got * 2 >= area && got * 10 <= area * 11,
                "image {k} class {c}: area {got} vs {area}"
            );
            assert!(a["score"].as_f64().unwrap() > 0.5);
        }
    }
    // YOLO-seg: one file per image, class indices 0/1, coordinates in 0..1; data.yaml names the classes.
    let labels = std::fs::read_dir(out.join("yolo/labels")).unwrap().count();
    assert_eq!(labels, 12);
    let first = std::fs::read_to_string(out.join("yolo/labels/img0001.txt")).unwrap();
    // Red (two squares: the outline of the larger) and blue.
    assert_eq!(first.lines().count(), 2, "{first}");
    for line in first.lines() {
        let v: Vec<f64> = line.split(' ').map(|t| t.parse().unwrap()).collect();
        assert!(v[0] == 0.0 || v[0] == 1.0);
        assert!(v.len() >= 7 && v.len() % 2 == 1);
        assert!(v[1..].iter().all(|&x| (0.0..=1.0).contains(&x)));
    }
    let data = std::fs::read_to_string(out.join("yolo/data.yaml")).unwrap();
    assert!(
        data.contains("0: \"red\"") && data.contains("1: \"blue\""),
        "{data}"
    );
    assert!(out.join("yolo/images/img0000.png").exists());
    assert_eq!(std::fs::read_dir(out.join("overlays")).unwrap().count(), 12);
    let sheet = image::open(out.join("contact-sheet.png")).unwrap();
    assert!(sheet.width() >= 256 * 3);
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl"))
            .unwrap()
            .lines()
            .count(),
        12
    );
    // pycocotools loads the annotations with loadRes and rasterises them as vprompt does.
    let coco_path = out.join("coco.json");
    let o = python()
        .arg(root().join("tools/crosscheck/coco_rle.py"))
        .arg("--coco")
        .arg(&coco_path)
        .arg("--load-res")
        .arg(&coco_path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    drop(gt);
}

#[test]
fn the_generic_labeler_labels_the_squares_too() {
    // DINOv's generic queries (the colour model's red, green, blue and white) matched to the class
    // embeddings: one red instance on every image, one blue where there is a blue square.
    let dir = tempfile::tempdir().unwrap();
    let (images, _, exemplars) = dataset(dir.path(), 6);
    let out = dir.path().join("out");
    run_ok(autolabel_cmd(
        &images,
        &exemplars,
        &out,
        &["--labeler", "generic", "--no-overlays"],
    ));
    let coco = json(&out.join("coco.json"));
    for (k, im) in coco["images"].as_array().unwrap().iter().enumerate() {
        let mut cats: Vec<u64> = coco["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["image_id"] == im["id"])
            .map(|a| a["category_id"].as_u64().unwrap())
            .collect();
        cats.sort_unstable();
        let want_blue = squares(k).iter().any(|s| s.0 == 2);
        let want: Vec<u64> = if want_blue { vec![1, 2] } else { vec![1] };
        assert_eq!(cats, want, "image {k}");
    }
    let pipeline = std::fs::read_to_string(out.join("pipeline.yaml")).unwrap();
    assert!(pipeline.contains("mode: generic"), "{pipeline}");
}

#[test]
fn three_shards_merge_into_the_single_run() {
    let dir = tempfile::tempdir().unwrap();
    let (images, _, exemplars) = dataset(dir.path(), 31);
    let single = dir.path().join("single");
    run_ok(autolabel_cmd(&images, &exemplars, &single, &[]));
    let sharded = dir.path().join("sharded");
    // Three processes at once, as three pods of an Indexed Job would run.
    let children: Vec<_> = (0..3)
        .map(|i| {
            let mut c = autolabel_cmd(&images, &exemplars, &sharded, &[]);
            if i == 2 {
                // The Kubernetes way: the index from JOB_COMPLETION_INDEX, the count from the env.
                c.env("JOB_COMPLETION_INDEX", "2")
                    .env("VPROMPT_SHARD_COUNT", "3");
            } else {
                c.arg("--shard").arg(format!("{i}/3"));
            }
            c.stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for ch in children {
        let o = ch.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let mut counts = Vec::new();
    let mut parts = Vec::new();
    for i in 0..3 {
        let p = sharded.join(format!("shard-{i}-of-3/coco.json"));
        counts.push(json(&p)["images"].as_array().unwrap().len());
        parts.push(p);
    }
    assert_eq!(counts, vec![11, 10, 10]);
    let merged = dir.path().join("merged.json");
    let mut args: Vec<String> = vec!["merge".into()];
    args.extend(parts.iter().map(|p| p.display().to_string()));
    args.extend(["--out".into(), merged.display().to_string()]);
    let o = vprompt(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&merged).unwrap(),
        std::fs::read(single.join("coco.json")).unwrap(),
        "the merged shards differ from the single run"
    );
    // Overlapping inputs are refused.
    let o = vprompt(&[
        "merge",
        &parts[0].display().to_string(),
        &parts[0].display().to_string(),
        "--out",
        &dir.path().join("bad.json").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("the shards overlap"), "{}", stderr(&o));
}

fn manifest_lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|t| t.matches('\n').count())
        .unwrap_or(0)
}

#[test]
fn killed_runs_resume_to_the_same_result() {
    let n = 600;
    let dir = tempfile::tempdir().unwrap();
    let (images, _, exemplars) = dataset(dir.path(), n);
    let reference = dir.path().join("reference");
    run_ok(autolabel_cmd(&images, &exemplars, &reference, &[]));

    let out = dir.path().join("out");
    let manifest = out.join("manifest.jsonl");
    // SIGKILL at three points of progress, then a run to the end.
    let mut kills = Vec::new();
    for at in [40usize, 250, 450] {
        let mut child = autolabel_cmd(&images, &exemplars, &out, &[])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while manifest_lines(&manifest) < at + 1 && t.elapsed() < Duration::from_secs(120) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills.push(manifest_lines(&manifest).saturating_sub(1));
    }
    assert!(
        kills.iter().all(|&k| k < n),
        "a run finished before it was killed ({kills:?}); the test needs more images"
    );
    run_ok(autolabel_cmd(&images, &exemplars, &out, &[]));
    let report = json(&out.join("report.json"));
    assert!(
        report["frames_resumed"].as_u64().unwrap() >= kills[2] as u64,
        "{report}"
    );
    assert_eq!(
        std::fs::read(out.join("coco.json")).unwrap(),
        std::fs::read(reference.join("coco.json")).unwrap(),
        "killed at {kills:?} and resumed, the COCO file differs from an uninterrupted run"
    );
    // Every image once in the manifest and the JSONL; every label file whole.
    assert_eq!(manifest_lines(&manifest), n + 1);
    let jsonl = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let mut frames: Vec<u64> = jsonl
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["frame"]
                .as_u64()
                .unwrap()
        })
        .collect();
    frames.sort_unstable();
    assert_eq!(frames, (0..n as u64).collect::<Vec<_>>());
    for i in [0, n / 2, n - 1] {
        let name = format!("yolo/labels/img{i:04}.txt");
        assert_eq!(
            std::fs::read(out.join(&name)).unwrap(),
            std::fs::read(reference.join(&name)).unwrap()
        );
    }
    // Other settings on the same folder are refused, --restart starts over.
    let mut c = autolabel_cmd(&images, &exemplars, &out, &["--max-detections", "7"]);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("other settings"), "{}", stderr(&o));
}

/// `vprompt eval coco` and pycocotools' COCOeval on the same files.
fn compare_with_pycocotools(pred: &Path, gt: &Path, cats: Option<&str>) -> f64 {
    let mut args = vec![
        "eval".to_string(),
        "coco".into(),
        "--pred".into(),
        pred.display().to_string(),
        "--gt".into(),
        gt.display().to_string(),
        "--images".into(),
        "pred".into(),
        "--json".into(),
        pred.with_extension("eval.json").display().to_string(),
    ];
    if let Some(c) = cats {
        args.extend(["--categories".into(), c.into()]);
    }
    let o = vprompt(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = json(&pred.with_extension("eval.json"));
    // pycocotools needs ground-truth image ids: map ours by file name.
    let doc = json(pred);
    let g = json(gt);
    let by_file: std::collections::HashMap<&str, u64> = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["file_name"].as_str().unwrap(), i["id"].as_u64().unwrap()))
        .collect();
    let ids: std::collections::HashMap<u64, u64> = doc["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_u64().unwrap(),
                by_file[i["file_name"].as_str().unwrap()],
            )
        })
        .collect();
    let results: Vec<serde_json::Value> = doc["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let mut a = a.clone();
            a["image_id"] = ids[&a["image_id"].as_u64().unwrap()].into();
            a
        })
        .collect();
    let list = pred.with_extension("results.json");
    std::fs::write(&list, serde_json::to_string(&results).unwrap()).unwrap();
    let img_ids: Vec<String> = ids.values().map(|v| v.to_string()).collect();
    let mut py = python();
    py.arg(root().join("tools/crosscheck/coco_eval.py"))
        .arg("--pred")
        .arg(&list)
        .arg("--gt")
        .arg(gt)
        .arg("--img-ids")
        .arg(img_ids.join(","));
    if cats.is_some() {
        let cat_ids: Vec<String> = doc["categories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].to_string())
            .collect();
        py.arg("--cat-ids").arg(cat_ids.join(","));
    }
    let o = py.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let theirs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["AP", "AP50", "AP75"] {
        let key = k.to_lowercase();
        let (a, b) = (ours[&key].as_f64().unwrap(), theirs[k].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-3, "{k}: vprompt {a} vs pycocotools {b}");
    }
    ours["ap"].as_f64().unwrap()
}

#[test]
fn coco_ap_agrees_with_pycocotools() {
    if skip_without(&["coco128"]) {
        return;
    }
    // Synthetic: the red instance covers two squares on some images, so AP is well inside (0, 1).
    let dir = tempfile::tempdir().unwrap();
    let (images, gt, exemplars) = dataset(dir.path(), 20);
    let out = dir.path().join("out");
    run_ok(autolabel_cmd(&images, &exemplars, &out, &[]));
    let ap = compare_with_pycocotools(&out.join("coco.json"), &gt, None);
    assert!(ap > 0.1 && ap < 1.0, "AP {ap}");

    // Real: COCO128's evaluation half labeled by the shipped model from exemplars of the pool half.
    let data = coco128();
    let split = coco128_split(&dir.path().join("c128"));
    let out = dir.path().join("c128-out");
    let o = vprompt(&[
        "autolabel",
        "--images",
        &split.join("eval-images").display().to_string(),
        "--exemplars",
        &split.join("pool.json").display().to_string(),
        "--exemplar-images",
        &data.join("train2017").display().to_string(),
        "--out",
        &out.display().to_string(),
        "--model",
        &root().join("models/vprompt-lite0").display().to_string(),
        "--no-overlays",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    compare_with_pycocotools(
        &out.join("coco.json"),
        &split.join("eval.json"),
        Some("pred"),
    );
}

#[test]
fn a_bank_from_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (images, _, exemplars) = dataset(dir.path(), 2);
    let bank = dir.path().join("b.json");
    let o = vprompt(&[
        "bank",
        "build",
        "--exemplars",
        &exemplars.display().to_string(),
        "--model",
        &fixture("color-model").display().to_string(),
        "--out",
        &bank.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("| 1 | red | 3 |") && text.contains("| 2 | blue | 1 |"),
        "{text}"
    );
    let o = vprompt(&["bank", "inspect", &bank.display().to_string()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("classes: 2, exemplars: 4"));
    // The same bank with another model's identity.
    let mut b = json(&bank);
    b["model"] = "0123456789abcdef".into();
    std::fs::write(&bank, b.to_string()).unwrap();
    let o = vprompt(&[
        "autolabel",
        "--images",
        &images.display().to_string(),
        "--bank",
        &bank.display().to_string(),
        "--out",
        &dir.path().join("out").display().to_string(),
        "--model",
        &fixture("color-model").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("this bank was built by model") && e.contains("rebuild the bank"),
        "{e}"
    );
    assert_eq!(e.matches("error:").count(), 1, "{e}");
}
