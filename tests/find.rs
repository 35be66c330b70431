//! `vprompt find` over an image set as a job of its own: a second run resumes from the manifest (nothing
//! read again, the same files), other settings on the same folder are refused until `--restart`, and two
//! shards joined by `merge` equal the single run. Images are drawn here (red squares on grey, which the
//! colour fixture model segments exactly), the object marked by a box on a reference image.

mod common;

use std::path::Path;

use common::*;
use image::{Rgb, RgbImage};

/// Image `i`: a 24-pixel red square on the colour model's 6-pixel cells, moving with `i`.
fn draw(i: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(96, 72, Rgb([128, 128, 128]));
    let (x0, y0) = (6 * (1 + i % 8), 6 * (1 + i % 5));
    for y in y0..y0 + 24 {
        for x in x0..x0 + 24 {
            img.put_pixel(x, y, Rgb([255, 0, 0]));
        }
    }
    img
}

fn find(images: &Path, reference: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "find",
        "--images",
        images.to_str().unwrap(),
        "--ref",
        reference.to_str().unwrap(),
        "--box",
        "6,6,30,30",
        "--out",
        out.to_str().unwrap(),
        "--model",
    ];
    let model = fixture("color-model");
    args.push(model.to_str().unwrap());
    args.extend(["--no-overlays", "--quiet", "--workers", "1"]);
    args.extend(extra);
    vprompt(&args)
}

fn coco(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn find_resumes_refuses_other_settings_and_shards_merge_into_the_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..13 {
        draw(i).save(images.join(format!("img{i:03}.png"))).unwrap();
    }
    let reference = tmp.path().join("reference.png");
    draw(0).save(&reference).unwrap();

    let single = tmp.path().join("single");
    let o = find(&images, &reference, &single, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = std::fs::read(single.join("coco.json")).unwrap();
    let c = coco(&single.join("coco.json"));
    assert_eq!(c["images"].as_array().unwrap().len(), 13);
    // The square is found in every image.
    assert_eq!(c["annotations"].as_array().unwrap().len(), 13);
    // YOLO-seg labels too, one file per image, as auto-labeling writes them.
    assert!(single.join("yolo/data.yaml").is_file());
    assert_eq!(
        std::fs::read_dir(single.join("yolo/labels"))
            .unwrap()
            .count(),
        13
    );

    // Again: everything is in the manifest, nothing is read, the files are the same.
    let o = find(&images, &reference, &single, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&single.join("report.json"));
    assert_eq!(r["frames_resumed"], 13, "{r}");
    assert_eq!(r["frames_read"], 0, "{r}");
    assert_eq!(std::fs::read(single.join("coco.json")).unwrap(), first);

    // Other settings on the same folder: refused, naming the manifest; --restart starts over.
    let e = one_error(&find(&images, &reference, &single, &["--min-score", "0.5"]));
    assert!(e.contains("manifest.jsonl"), "{e}");
    let o = find(&images, &reference, &single, &["--restart"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(report(&single.join("report.json"))["frames_read"], 13);
    assert_eq!(std::fs::read(single.join("coco.json")).unwrap(), first);

    // Two shards, merged: the single run's COCO file.
    let sharded = tmp.path().join("sharded");
    let mut parts = Vec::new();
    for i in 0..2 {
        let o = find(
            &images,
            &reference,
            &sharded,
            &["--shard", &format!("{i}/2")],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        parts.push(sharded.join(format!("shard-{i}-of-2/coco.json")));
    }
    let counts: Vec<usize> = parts
        .iter()
        .map(|p| coco(p)["images"].as_array().unwrap().len())
        .collect();
    assert_eq!(counts, [7, 6]);
    let merged = tmp.path().join("merged.json");
    let o = vprompt(&[
        "merge",
        parts[0].to_str().unwrap(),
        parts[1].to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&merged).unwrap(), first);
}
