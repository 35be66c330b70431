//! Prompts decoded where they are, end to end: a box, points or a scribble on the reference frame become
//! decoder queries there, and the chosen candidate is the reference frame's output. The colour model
//! takes `points` (a box goes as its centre), the anchor model `anchors` rows, whose width shows in the
//! reference frame's predicted IoU (0.9 - 0.5 w); `job.prompt_decode: false` keeps the rasterised prompt.

mod common;

use std::path::Path;

use common::*;
use vprompt::palette;

/// Two frames of 128x128: a red square at (16..80, 32..96) and a green one at (88..120, 8..48) on blue.
fn frames(dir: &Path) {
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for t in 0..2 {
        let img = image::RgbImage::from_fn(128, 128, |x, y| {
            if (16..80).contains(&x) && (32..96).contains(&y) {
                image::Rgb([255, 0, 0])
            } else if (88..120).contains(&x) && (8..48).contains(&y) {
                image::Rgb([0, 255, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        img.save(frames.join(format!("{t:05}.png"))).unwrap();
    }
}

/// Runs `prompts` with `model` (and extra `job` keys); returns frame 0's label PNG and JSONL line.
fn run(dir: &Path, model: &str, prompts: &str, job: &str) -> (Vec<u8>, serde_json::Value) {
    write(dir, "prompts.yaml", prompts);
    let pipe = write(
        dir,
        "pipe.yaml",
        &format!(
            "source: {{ frames: frames }}\nmodel: {:?}\nprompts: prompts.yaml\njob: {{ min_area: 10{job} }}\n\
             sinks:\n  - {{ kind: palette_png, dir: out/masks }}\n  - {{ kind: jsonl, path: out/r.jsonl }}\n",
            fixture(model)
        ),
    );
    let o = vprompt(&["run", pipe.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let l = palette::read(&dir.join("out/masks/00000.png")).unwrap();
    let text = std::fs::read_to_string(dir.join("out/r.jsonl")).unwrap();
    let first = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    (l.data, first)
}

/// IoU of the pixels labelled `id` with the rectangle `[x0, x1) x [y0, y1)`.
fn iou_with(labels: &[u8], id: u8, r: [u32; 4]) -> f64 {
    let (mut inter, mut union) = (0u32, 0u32);
    for y in 0..128u32 {
        for x in 0..128u32 {
            let p = labels[(y * 128 + x) as usize] == id;
            let g = x >= r[0] && x < r[2] && y >= r[1] && y < r[3];
            inter += (p && g) as u32;
            union += (p || g) as u32;
        }
    }
    inter as f64 / union as f64
}

const RED: [u32; 4] = [16, 32, 80, 96];
const GREEN: [u32; 4] = [88, 8, 120, 48];

#[test]
fn a_box_is_decoded_as_a_box_or_as_its_centre() {
    let tmp = tempfile::tempdir().unwrap();
    frames(tmp.path());
    let prompts = "objects:\n  - { id: 2, frame: 0, box: [14, 30, 82, 98] }\n";
    for model in ["color-model", "anchor-model"] {
        // Looking closer (the default focus) decodes the box on a crop around it, pasted back in place.
        let (labels, _) = run(tmp.path(), model, prompts, "");
        let iou = iou_with(&labels, 2, RED);
        assert!(iou > 0.7, "{model} with focus: IoU {iou}");
        assert!(labels.iter().all(|&v| v == 0 || v == 2));
        // On the whole image alone the predicted IoU follows from the box's size on the model input.
        let (labels, line) = run(tmp.path(), model, prompts, ", focus: { enabled: false }");
        let o = &line["objects"][0];
        assert_eq!(o["id"].as_u64(), Some(2));
        // The reference output is the decoded candidate: the red square (one cell in from its edges),
        // nothing of the rasterised box beyond it.
        let iou = iou_with(&labels, 2, RED);
        assert!(iou > 0.7, "{model}: IoU {iou}");
        assert!(labels.iter().all(|&v| v == 0 || v == 2));
        assert_eq!(o["score"].as_f64(), Some(1.0));
        let pred_iou = o["pred_iou"].as_f64().unwrap();
        // The box is 68 of 128 px wide: w = 0.53125 of the model input.
        let want = if model == "color-model" {
            0.9
        } else {
            0.9 - 0.5 * 0.53125
        };
        // JSONL keeps 4 decimals.
        assert!(
            (pred_iou - want).abs() < 1e-4,
            "{model}: pred_iou {pred_iou}"
        );
    }
    // Without decoding, the anchor model's reference output is the best-matching grid query (a point:
    // pred_iou 0.9), found through the rasterised box's embedding.
    let (labels, line) = run(
        tmp.path(),
        "anchor-model",
        prompts,
        ", prompt_decode: false",
    );
    let o = &line["objects"][0];
    assert!((o["pred_iou"].as_f64().unwrap() - 0.9).abs() < 1e-4, "{o}");
    assert!(iou_with(&labels, 2, RED) > 0.6);
}

#[test]
fn points_negative_points_and_scribbles_pick_their_square() {
    let tmp = tempfile::tempdir().unwrap();
    frames(tmp.path());
    // Object 1: a point on the green square; object 4: a scribble across the red one.
    let prompts = "objects:\n  - { id: 1, frame: 0, points: [[104, 28]], negative_points: [[40, 60]] }\n\
                   \x20 - { id: 4, frame: 0, scribbles: [{ points: [[24, 64], [70, 64]], width: 6 }] }\n";
    for model in ["color-model", "anchor-model"] {
        let (labels, line) = run(tmp.path(), model, prompts, "");
        assert!(iou_with(&labels, 1, GREEN) > 0.5, "{model}");
        assert!(iou_with(&labels, 4, RED) > 0.7, "{model}");
        let objects = line["objects"].as_array().unwrap();
        assert_eq!(objects.len(), 2);
        assert!(objects.iter().all(|o| o["score"].as_f64() == Some(1.0)));
    }
}

/// `propagate --box / --point / --negative-point` against the same object in a prompt file: every mask
/// and the JSONL are byte-identical.
#[test]
fn quick_prompts_on_propagate_equal_the_prompt_file() {
    let tmp = tempfile::tempdir().unwrap();
    frames(tmp.path());
    let video = tmp.path().join("frames");
    let model = fixture("anchor-model");
    let propagate = |out: &str, extra: &[&str]| {
        let out = tmp.path().join(out);
        let mut args = vec![
            "propagate",
            "--video",
            video.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(&["--model", model.to_str().unwrap(), "--no-video", "--quiet"]);
        args.extend_from_slice(extra);
        let o = vprompt(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let masks: Vec<Vec<u8>> = (0..2)
            .map(|t| std::fs::read(out.join(format!("masks/{t:05}.png"))).unwrap())
            .collect();
        (
            masks,
            std::fs::read_to_string(out.join("results.jsonl")).unwrap(),
        )
    };
    let cases: [(&[&str], &str); 2] = [
        (
            &["--box", "14,30,82,98", "--frame", "1"],
            "box: [14, 30, 82, 98], frame: 1",
        ),
        (
            &[
                "--point",
                "40,60",
                "--point",
                "50,70",
                "--negative-point",
                "100,20",
            ],
            "points: [[40, 60], [50, 70]], negative_points: [[100, 20]]",
        ),
    ];
    for (i, (flags, fields)) in cases.iter().enumerate() {
        let file = write(
            tmp.path(),
            &format!("p{i}.yaml"),
            &format!("objects:\n  - {{ id: 1, {fields} }}\n"),
        );
        let quick = propagate(&format!("quick{i}"), flags);
        let from_file = propagate(&format!("file{i}"), &["--prompts", file.to_str().unwrap()]);
        assert_eq!(quick, from_file, "{flags:?}");
        let labels = palette::read(&tmp.path().join(format!("quick{i}/masks/00001.png"))).unwrap();
        assert!(
            iou_with(&labels.data, 1, RED) > 0.7,
            "{flags:?}: the red square is object 1"
        );
    }
}

#[test]
fn quick_prompt_errors_say_what_to_give() {
    let tmp = tempfile::tempdir().unwrap();
    frames(tmp.path());
    let video = tmp.path().join("frames");
    let out = tmp.path().join("out");
    let base = [
        "propagate",
        "--video",
        video.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    for (extra, want) in [
        (&["--box", "80,30,14,98"][..], "x0 must be below x1"),
        (&["--point", "40"][..], "is not x,y"),
        (
            &["--negative-point", "4,4"][..],
            "--negative-point needs --box or --point",
        ),
        (
            &["--box", "1,2,3,4", "--mask", "m.png"][..],
            "cannot be used with",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let o = vprompt(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{extra:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}

#[test]
fn validate_checks_a_prompt_file_as_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mask = image::GrayImage::new(8, 8);
    mask.put_pixel(2, 3, image::Luma([255]));
    mask.save(tmp.path().join("m.png")).unwrap();
    image::GrayImage::new(8, 8)
        .save(tmp.path().join("empty.png"))
        .unwrap();
    let good = write(
        tmp.path(),
        "good.yaml",
        "objects:\n  - { id: 1, frame: 0, mask: m.png }\n  - { id: 2, frame: 4, box: [1, 2, 30, 40], negative_points: [[5, 5]] }\n",
    );
    let o = vprompt(&["validate", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("2 objects"), "{out}");
    assert!(
        out.contains("object 1 on frame 0: mask") && out.contains("1 px"),
        "{out}"
    );
    assert!(
        out.contains("object 2 on frame 4: box [1, 2, 30, 40], 1 negative points"),
        "{out}"
    );
    // a mask without its object, and a prompt file's own checks, are errors naming the file and object
    for (name, text, want) in [
        (
            "empty.yaml",
            "objects:\n  - { id: 3, mask: empty.png }\n",
            "object 3: the mask",
        ),
        (
            "nothing.yaml",
            "objects:\n  - { id: 4 }\n",
            "give a mask, a box, points or scribbles",
        ),
    ] {
        let p = write(tmp.path(), name, text);
        let o = vprompt(&["validate", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(name) && stderr(&o).contains(want),
            "{name}: {}",
            stderr(&o)
        );
    }
}
