//! The online target model of propagate (issue 13) on real frames: frame 0's mask of DAVIS car-turn as
//! the prompt and frame 40 as the only other frame, so that nothing but the prompt carries over. The car
//! has turned and moved; with the first local decoder (run 1) referring alone (`--target decoder`) gave
//! IoU 0.51 there, the default `fused` 0.88 (tools/eval_davis_pairs.sh); the shipped decoder, the average
//! of run 1 and run 8, finds more of the car alone, 0.742, and fused gives 0.896. The test asks for a
//! clear margin (0.1), not those exact figures.

mod common;

use std::path::Path;

use common::*;
use vprompt::palette;

fn iou_on_second_frame(out: &Path, gt: &Path) -> f64 {
    let pred = palette::read(&out.join("masks/00001.png")).unwrap();
    let gt = palette::read(gt).unwrap();
    assert_eq!((pred.width, pred.height), (gt.width, gt.height));
    let (mut inter, mut union) = (0u64, 0u64);
    for (&p, &g) in pred.data.iter().zip(&gt.data) {
        let (p, g) = (p == 1, g != 0);
        inter += (p && g) as u64;
        union += (p || g) as u64;
    }
    inter as f64 / union.max(1) as f64
}

#[test]
fn target_model_finds_the_turned_car_where_referring_alone_does_not() {
    if skip_without(&["davis2016-train-240p"]) {
        return;
    }
    let data = davis();
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let jpegs = data.join("JPEGImages/car-turn");
    std::fs::copy(jpegs.join("00000.jpg"), frames.join("00000.jpg")).unwrap();
    std::fs::copy(jpegs.join("00040.jpg"), frames.join("00001.jpg")).unwrap();
    let mask = data.join("Annotations/car-turn/00000.png");
    let gt = data.join("Annotations/car-turn/00040.png");
    let mut ious = vec![];
    for mode in ["decoder", "fused"] {
        let out = tmp.path().join(mode);
        let o = vprompt(&[
            "propagate",
            "--video",
            frames.to_str().unwrap(),
            "--mask",
            mask.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--no-video",
            "--quiet",
            "--target",
            mode,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        ious.push(iou_on_second_frame(&out, &gt));
    }
    let (decoder, fused) = (ious[0], ious[1]);
    assert!(fused >= 0.8, "fused IoU {fused:.3} (decoder {decoder:.3})");
    assert!(
        fused >= decoder + 0.1,
        "fused IoU {fused:.3} should clearly beat referring alone ({decoder:.3})"
    );
}
