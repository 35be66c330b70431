//! Corrections mid-video: an object prompted again on a later frame is re-anchored there (the frames
//! before are untouched, the corrected frame's output is the correction), and `absent: true` ends its
//! output. The shipped model on the demo clip, through a pipeline file.

mod common;

use std::path::Path;

use common::{root, vprompt, write};

/// Runs the demo clip's first 12 frames with `prompts` (YAML text); returns each frame's label image.
fn run(dir: &Path, name: &str, prompts: &str) -> Vec<Vec<u8>> {
    let out = dir.join(name);
    write(dir, &format!("{name}.yaml"), prompts);
    let pipe = write(
        dir,
        &format!("{name}-pipe.yaml"),
        &format!(
            "source: {{ video: {:?}, end: 12 }}\nmodel: {:?}\nprompts: {name}.yaml\n\
             sinks:\n  - {{ kind: palette_png, dir: {:?} }}\n",
            root().join("data/demo/car-turn.mp4"),
            root().join("models/vprompt-lite0"),
            out.join("masks"),
        ),
    );
    let o = vprompt(&["run", &pipe.display().to_string(), "--quiet"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let mut files: Vec<_> = std::fs::read_dir(out.join("masks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 12, "{files:?}");
    files
        .iter()
        .map(|f| vprompt::palette::read(f).unwrap().data)
        .collect()
}

#[test]
fn a_correction_changes_the_masks_from_its_frame_on_and_absent_ends_them() {
    let dir = tempfile::tempdir().unwrap();
    let first = root().join("data/demo/car-turn-00000.png");
    let (w, h) = image::image_dimensions(&first).unwrap();
    // The correction: a rectangle in the top-left quarter, where the car is not.
    let mut rect = image::GrayImage::new(w, h);
    for y in h / 10..h / 3 {
        for x in w / 10..w / 3 {
            rect.put_pixel(x, y, image::Luma([255]));
        }
    }
    let rect_path = dir.path().join("rect.png");
    rect.save(&rect_path).unwrap();
    let start = format!("objects:\n  - {{ id: 1, frame: 0, mask: {first:?} }}\n");
    let reference = run(dir.path(), "reference", &start);
    let corrected = run(
        dir.path(),
        "corrected",
        &format!("{start}  - {{ id: 1, frame: 6, mask: {rect_path:?} }}\n  - {{ id: 1, frame: 9, absent: true }}\n"),
    );
    // Before the correction: the same masks, and the car is followed.
    for k in 0..6 {
        assert_eq!(
            reference[k], corrected[k],
            "frame {k} changed before the correction"
        );
    }
    assert!(reference[5].iter().filter(|&&v| v == 1).count() > 1000);
    // On the correction's frame: exactly the correction.
    let want: Vec<u8> = rect.as_raw().iter().map(|&v| (v != 0) as u8).collect();
    assert_eq!(corrected[6], want);
    // After it: the re-anchored object, no longer the car of the reference run.
    for k in 7..9 {
        assert_ne!(reference[k], corrected[k], "frame {k}");
        let inter = reference[k]
            .iter()
            .zip(&corrected[k])
            .filter(|(a, b)| **a == 1 && **b == 1)
            .count();
        let area = corrected[k].iter().filter(|&&v| v == 1).count();
        assert!(inter * 2 < area.max(1), "frame {k}: still on the car");
    }
    // Absent from frame 9: nothing.
    for (k, m) in corrected.iter().enumerate().skip(9) {
        assert!(m.iter().all(|&v| v == 0), "frame {k} has object pixels");
    }
}
