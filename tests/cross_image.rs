//! Cross-image referring (issue 15): an object prompted on a reference image outside the source and found
//! in a clip that does not hold that image. DAVIS elephant: frame 0 saved as the reference image with its
//! ground-truth mask; the clip is frames 40-47 only. Measured mean IoU 0.80 (2026-12-02); the test asks
//! for 0.6.

mod common;

use common::*;
use vprompt::sink::palette;

#[test]
fn an_object_on_a_reference_image_is_found_in_another_clip() {
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
