//! Cross-image referring (issue 15): an object prompted on a reference image outside the source and found
//! in a clip that does not hold that image. DAVIS elephant: frame 0 saved as the reference image with its
//! ground-truth mask; the clip is frames 40-47 only. Measured mean IoU 0.80 (2026-12-02); the test asks
//! for 0.6.

mod common;

use common::*;
use vprompt::palette;

#[test]
fn an_object_on_a_reference_image_is_found_in_another_clip() {
    if skip_without(&["davis2016-train-240p"]) {
        return;
    }
    let data = davis();
    let tmp = tempfile::tempdir().unwrap();
    let clip = tmp.path().join("clip");
    std::fs::create_dir_all(&clip).unwrap();
    let jpegs = data.join("JPEGImages/elephant");
    for k in 40..48 {
        let f = format!("{k:05}.jpg");
        std::fs::copy(jpegs.join(&f), clip.join(&f)).unwrap();
    }
    let reference = tmp.path().join("reference.jpg");
    std::fs::copy(jpegs.join("00000.jpg"), &reference).unwrap();
    let mask = data.join("Annotations/elephant/00000.png");
    let prompts = write(
        tmp.path(),
        "prompts.yaml",
        &format!("objects:\n  - {{ id: 1, image: reference.jpg, mask: {mask:?} }}\n"),
    );
    let out = tmp.path().join("out");
    let o = vprompt(&[
        "propagate",
        "--video",
        clip.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-video",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // One output per clip frame, nothing for the reference image.
    let mut files: Vec<_> = std::fs::read_dir(out.join("masks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let want: Vec<String> = (40..48).map(|k| format!("{k:05}.png")).collect();
    assert_eq!(files, want);
    let mut ious = vec![];
    for f in &files {
        let pred = palette::read(&out.join("masks").join(f)).unwrap();
        let gt = palette::read(&data.join("Annotations/elephant").join(f)).unwrap();
        let (mut inter, mut union) = (0u64, 0u64);
        for (&p, &g) in pred.data.iter().zip(&gt.data) {
            inter += (p == 1 && g != 0) as u64;
            union += (p == 1 || g != 0) as u64;
        }
        ious.push(inter as f64 / union.max(1) as f64);
    }
    let mean = ious.iter().sum::<f64>() / ious.len() as f64;
    assert!(mean >= 0.6, "mean IoU {mean:.3} ({ious:.2?})");

    // The one-line form, `--ref IMAGE --mask PNG`, is the same prompt: the same masks.
    let quick = tmp.path().join("quick");
    let o = vprompt(&[
        "propagate",
        "--video",
        clip.to_str().unwrap(),
        "--ref",
        reference.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
        "--out",
        quick.to_str().unwrap(),
        "--no-video",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in &files {
        assert_eq!(
            std::fs::read(out.join("masks").join(f)).unwrap(),
            std::fs::read(quick.join("masks").join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn a_reference_image_prompt_is_checked_when_read() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "p.yaml",
        "objects:\n  - { id: 1, image: nowhere.jpg, box: [0, 0, 5, 5] }\n",
    );
    let o = vprompt(&["validate", p.to_str().unwrap()]);
    let e = one_error(&o);
    assert!(
        e.contains("reference image") && e.contains("nowhere.jpg"),
        "{e}"
    );
    std::fs::write(tmp.path().join("r.jpg"), b"").unwrap();
    let p = write(
        tmp.path(),
        "q.yaml",
        "objects:\n  - { id: 1, image: r.jpg, frame: 3, box: [0, 0, 5, 5] }\n",
    );
    let e = one_error(&vprompt(&["validate", p.to_str().unwrap()]));
    assert!(e.contains("takes no `frame`"), "{e}");
}

#[test]
fn find_labels_a_folder_from_one_reference_instance() {
    if skip_without(&["coco128"]) {
        return;
    }
    // One person of a COCO128 pool image (its box) found in the evaluation half: a match per image, COCO
    // output that pycocotools loads, and matches on people. Measured on all 64 images (2026-12-02): 15 of
    // the 32 images with a person get a match of IoU > 0.5 with one; here the first 24 images, asking 4.
    let data = coco128();
    let tmp = tempfile::tempdir().unwrap();
    let split = coco128_split(&tmp.path().join("split"));
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(split.join("eval-images"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names.iter().take(24) {
        std::fs::copy(data.join("train2017").join(n), images.join(n)).unwrap();
    }
    let out = tmp.path().join("out");
    let reference = data.join("train2017/000000000110.jpg");
    let o = vprompt(&[
        "find",
        "--ref",
        reference.to_str().unwrap(),
        "--box",
        "208,0,640,475",
        "--images",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-overlays",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("contact-sheet.png").is_file());
    let script = r#"
import json, sys
import numpy as np
from pycocotools.coco import COCO
from pycocotools import mask as mu
pred = COCO(sys.argv[1])
gt = COCO(sys.argv[2])
ids = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
res = gt.loadRes([dict(a, image_id=ids[pred.imgs[a["image_id"]]["file_name"]]) for a in pred.dataset["annotations"]])
hits = with_person = 0
for im in pred.dataset["images"]:
    anns = gt.loadAnns(gt.getAnnIds(imgIds=ids[im["file_name"]], catIds=[1], iscrowd=False))
    if not anns:
        continue
    with_person += 1
    for a in pred.loadAnns(pred.getAnnIds(imgIds=im["id"])):
        m = mu.decode(a["segmentation"]).astype(bool)
        best = max((m & gt.annToMask(g).astype(bool)).sum() / max(1, (m | gt.annToMask(g).astype(bool)).sum()) for g in anns)
        hits += best > 0.5
print(len(pred.dataset["images"]), with_person, hits)
"#;
    let o = python()
        .arg("-c")
        .arg(script)
        .arg(out.join("coco.json"))
        .arg(split.join("eval.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let last: Vec<usize> = text
        .lines()
        .last()
        .unwrap()
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(last[0], 24, "{text}");
    assert!(
        last[2] >= 4,
        "{} of {} images with a person matched one",
        last[2],
        last[1]
    );
}
