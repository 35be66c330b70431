//! End-to-end runs of real pipelines on real video (the DAVIS demo clip) and on scenes whose answer is
//! known, with the test fixture models. Outputs are checked by value, and by the standard tools.

mod common;

use std::path::Path;

use common::*;
use vprompt::palette;

fn demo_pipeline(dir: &Path) -> std::path::PathBuf {
    let root = root();
    write(
        dir,
        "prompts.yaml",
        &format!(
            "objects:\n  - {{ id: 1, frame: 0, mask: {:?} }}\n",
            root.join("data/demo/car-turn-00000.png")
        ),
    );
    write(
        dir,
        "pipe.yaml",
        &format!(
            "source: {{ video: {:?} }}\nmodel: {:?}\nprompts: prompts.yaml\nsinks:\n  - {{ kind: palette_png, dir: out/masks }}\n  - {{ kind: coco, path: out/coco.json }}\n  - {{ kind: jsonl, path: out/results.jsonl }}\n  - {{ kind: mot, path: out/tracks.txt }}\n  - {{ kind: video, path: out/overlay.mp4 }}\n  - {{ kind: overlay_png, dir: out/overlay }}\nruntime: {{ workers: 2, batch_size: 2, threads: 1 }}\n",
            root.join("data/demo/car-turn.mp4"),
            fixture("color-model"),
        ),
    )
}

#[test]
fn run_on_a_real_video_writes_every_sink() {
    let tmp = tempfile::tempdir().unwrap();
    let pipe = demo_pipeline(tmp.path());
    let o = vprompt(&["run", pipe.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = tmp.path().join("out");

    // Palette PNGs: one per frame, named like the frames, ids in {0, 1}; the reference frame is the prompt.
    let mut names: Vec<String> = std::fs::read_dir(out.join("masks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 80);
    assert_eq!(names[0], "00000.png");
    assert_eq!(names[79], "00079.png");
    let first = palette::read(&out.join("masks/00000.png")).unwrap();
    let prompt = palette::read(&root().join("data/demo/car-turn-00000.png")).unwrap();
    assert_eq!((first.width, first.height), (426, 240));
    let expect: Vec<u8> = prompt.data.iter().map(|&v| (v != 0) as u8).collect();
    assert_eq!(
        first.data, expect,
        "frame 0 must be the prompt mask with id 1"
    );
    for n in &names {
        let l = palette::read(&out.join("masks").join(n)).unwrap();
        assert!(
            l.data.iter().all(|&v| v <= 1),
            "{n} holds an id other than 0/1"
        );
    }

    // JSONL: one line per frame, areas equal to the label PNGs' pixel counts.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 80);
    for (i, line) in lines.iter().enumerate().step_by(13) {
        let l = palette::read(&out.join(format!("masks/{i:05}.png"))).unwrap();
        let area = l.data.iter().filter(|&&v| v == 1).count() as u64;
        assert_eq!(line["objects"][0]["area"].as_u64(), Some(area), "frame {i}");
        assert_eq!(line["frame"].as_u64(), Some(i as u64));
    }

    // MOTChallenge: a line per frame where the object has pixels, frames 1-based, the JSONL's box.
    let mot = std::fs::read_to_string(out.join("tracks.txt")).unwrap();
    let with_pixels = lines
        .iter()
        .filter(|l| l["objects"][0]["area"].as_u64() > Some(0))
        .count();
    assert_eq!(mot.lines().count(), with_pixels);
    for row in mot.lines() {
        let v: Vec<&str> = row.split(',').collect();
        assert_eq!(v.len(), 10, "{row}");
        let frame: usize = v[0].parse().unwrap();
        let b = &lines[frame - 1]["objects"][0]["box_xyxy"];
        let x0 = b[0].as_u64().unwrap();
        let w = b[2].as_u64().unwrap() - x0;
        assert_eq!(
            (v[1], v[2], v[4]),
            ("1", &*x0.to_string(), &*w.to_string()),
            "{row}"
        );
        assert_eq!(&v[7..], ["-1", "-1", "-1"]);
    }

    // COCO: pycocotools decodes every RLE to exactly the label PNG's pixels.
    let coco: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("coco.json")).unwrap()).unwrap();
    let anns = coco["annotations"].as_array().unwrap();
    assert!(anns.len() >= 60, "only {} annotations", anns.len());
    let per_ann = tmp.path().join("per-ann");
    std::fs::create_dir_all(&per_ann).unwrap();
    let images = coco["images"].as_array().unwrap();
    for a in anns {
        let img = images.iter().find(|i| i["id"] == a["image_id"]).unwrap();
        let l =
            palette::read(&out.join(format!("masks/{}.png", img["file_name"].as_str().unwrap())))
                .unwrap();
        let id = a["category_id"].as_u64().unwrap() as u8;
        let bin: Vec<u8> = l
            .data
            .iter()
            .map(|&v| if v == id { 255 } else { 0 })
            .collect();
        palette::write(
            &per_ann.join(format!("{}.png", a["id"])),
            l.width,
            l.height,
            &bin,
        )
        .unwrap();
    }
    let check = python()
        .arg(root().join("tools/crosscheck/coco_rle.py"))
        .arg("--coco")
        .arg(out.join("coco.json"))
        .arg("--masks")
        .arg(&per_ann)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "pycocotools check failed: {said} {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(said.contains("\"mismatched_pixels\": 0"), "{said}");

    // Overlay video: ffprobe reads 80 frames of the clip's size.
    assert_eq!(ffprobe(&out.join("overlay.mp4")), (80, 426, 240));
    assert_eq!(std::fs::read_dir(out.join("overlay")).unwrap().count(), 80);

    // The report sits beside the outputs.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["frames_written"].as_u64(), Some(80));
    assert_eq!(report["frames_failed"].as_u64(), Some(0));
}

/// A red square moving over blue: the colour model must follow it, frame by frame.
#[test]
fn colour_model_follows_a_moving_square() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    // The colour model sees 64x64 pixels in 4x4 cells, so the square spans 8 cells.
    let (w, h, side) = (128u32, 128u32, 64u32);
    let truth = |t: u32| (8 + 4 * t, 32u32); // top-left corner of the square on frame t
    for t in 0..12 {
        let (x0, y0) = truth(t);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            if x >= x0 && x < x0 + side && y >= y0 && y < y0 + side {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        img.save(frames.join(format!("{t:05}.png"))).unwrap();
    }
    write(
        tmp.path(),
        "prompts.yaml",
        "objects:\n  - { id: 3, frame: 0, box: [10, 34, 70, 94] }\n",
    );
    let pipe = write(
        tmp.path(),
        "pipe.yaml",
        &format!(
            "source: {{ frames: frames }}\nmodel: {:?}\nprompts: prompts.yaml\njob: {{ min_area: 10 }}\nsinks:\n  - {{ kind: palette_png, dir: out/masks }}\n",
            fixture("color-model")
        ),
    );
    let o = vprompt(&["run", pipe.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for t in 1..12 {
        let l = palette::read(&tmp.path().join(format!("out/masks/{t:05}.png"))).unwrap();
        let (x0, y0) = truth(t);
        let (mut inter, mut union, mut sum_x, mut n) = (0u32, 0u32, 0u64, 0u64);
        for y in 0..h {
            for x in 0..w {
                let p = l.data[(y * w + x) as usize] == 3;
                let g = x >= x0 && x < x0 + side && y >= y0 && y < y0 + side;
                inter += (p && g) as u32;
                union += (p || g) as u32;
                if p {
                    sum_x += x as u64;
                    n += 1;
                }
            }
        }
        let iou = inter as f64 / union as f64;
        // The colour model's masks sit about one cell inside colour edges (tau 0.04): IoU 0.63-0.71
        // depending on how the square falls on the 4-pixel cells.
        assert!(iou > 0.6, "frame {t}: IoU {iou:.3} with the true square");
        let centre = sum_x as f64 / n as f64 + 0.5;
        let truth_centre = x0 as f64 + side as f64 / 2.0;
        assert!(
            (centre - truth_centre).abs() <= 3.0,
            "frame {t}: mask centre x {centre}, square {truth_centre}"
        );
        assert!(l.data.iter().all(|&v| v == 0 || v == 3));
    }
}

#[test]
fn validate_checks_model_prompts_and_source() {
    let tmp = tempfile::tempdir().unwrap();
    let pipe = demo_pipeline(tmp.path());
    let o = vprompt(&["validate", pipe.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("source: first frame 426x240"), "{said}");
    assert!(said.contains("prompts: 1 objects"), "{said}");
}

#[test]
fn one_line_propagate_writes_the_davis_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mask = root().join("data/demo/car-turn-00000.png");
    let video = root().join("data/demo/car-turn.mp4");
    let model = fixture("color-model");
    let o = vprompt(&[
        "propagate",
        "--video",
        video.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--no-video",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(out.join("masks")).unwrap().count(), 80);
    assert!(out.join("results.jsonl").is_file() && out.join("coco.json").is_file());
    assert!(!out.join("overlay.mp4").exists());
}
