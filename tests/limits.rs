//! The documented limits (docs/limits.md): going past each one is one clear error that names the key,
//! file or object, never a crash or an unbounded allocation.

mod common;

use std::path::Path;

use common::*;

const SINKS: &str = "sinks:\n  - { kind: jsonl, path: out/r.jsonl }\n";

fn frames(dir: &Path, n: usize) {
    let f = dir.join("frames");
    std::fs::create_dir_all(&f).unwrap();
    for i in 0..n {
        image::RgbImage::from_pixel(40, 30, image::Rgb([200, 20, 20]))
            .save(f.join(format!("{i:05}.png")))
            .unwrap();
    }
}

fn run_fails(pipe: &Path, sets: &[&str]) -> String {
    let mut args = vec!["run", pipe.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    one_error(&vprompt(&args))
}

#[test]
fn runtime_limits_name_their_key() {
    let tmp = tempfile::tempdir().unwrap();
    frames(tmp.path(), 2);
    let pipe = pipeline(tmp.path(), "frames: frames", SINKS);
    for (set, key) in [
        (
            "runtime.queue_capacity=4097",
            "runtime.queue_capacity: must be 1..=4096",
        ),
        ("runtime.workers=65", "runtime.workers: must be 1..=64"),
        (
            "runtime.batch_size=257",
            "runtime.batch_size: must be 1..=256",
        ),
        (
            "runtime.max_consecutive_failures=0",
            "runtime.max_consecutive_failures",
        ),
        ("runtime.max_frame_pixels=0", "runtime.max_frame_pixels"),
        ("source.stall_timeout_ms=0", "source.stall_timeout_ms"),
    ] {
        let e = run_fails(&pipe, &[set]);
        assert!(e.contains("pipe.yaml") && e.contains(key), "{set}: {e}");
    }
}

#[test]
fn reconnect_is_for_streams_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    frames(tmp.path(), 1);
    let pipe = pipeline(
        tmp.path(),
        "frames: frames, reconnect: { attempts: 3 }",
        SINKS,
    );
    let e = run_fails(&pipe, &[]);
    assert!(e.contains("source.reconnect: only streams"), "{e}");
    let pipe = pipeline(
        tmp.path(),
        "video: \"rtsp://127.0.0.1:9/cam\", reconnect: { attempts: 1001 }",
        SINKS,
    );
    let e = run_fails(&pipe, &[]);
    assert!(e.contains("attempts must be at most 1000"), "{e}");
}

#[test]
fn a_frame_over_max_frame_pixels_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    frames(tmp.path(), 3);
    let pipe = pipeline(tmp.path(), "frames: frames", SINKS);
    // 40 x 30 = 1200 pixels; with on_error: fail the first frame over the limit ends the run.
    let e = run_fails(
        &pipe,
        &["runtime.max_frame_pixels=1000", "runtime.on_error=fail"],
    );
    assert!(
        e.contains("00000.png")
            && e.contains("40x30")
            && e.contains("runtime.max_frame_pixels (1000)"),
        "{e}"
    );
}

#[test]
fn a_run_of_failed_frames_longer_than_the_limit_ends_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    frames(tmp.path(), 8);
    for i in 2..6 {
        std::fs::write(tmp.path().join(format!("frames/{i:05}.png")), b"broken").unwrap();
    }
    let pipe = pipeline(tmp.path(), "frames: frames", SINKS);
    let e = run_fails(&pipe, &["runtime.max_consecutive_failures=3"]);
    assert!(
        e.contains("3 frames failed in a row (runtime.max_consecutive_failures)")
            && e.contains("00004.png"),
        "{e}"
    );
    // Under the limit the run goes on past them.
    let o = vprompt(&["run", pipe.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = report(&tmp.path().join("out/report.json"));
    assert_eq!(r["frames_written"].as_u64(), Some(4));
    assert_eq!(r["frames_failed"].as_u64(), Some(4));
}

#[test]
fn prompt_limits_name_the_file_or_object() {
    let tmp = tempfile::tempdir().unwrap();
    frames(tmp.path(), 1);
    let pipe = pipeline(tmp.path(), "frames: frames", SINKS);

    // Ids are 1..=255, so a file holds at most 255 objects; with corrections on later frames, at most
    // 10,000 prompts.
    let mut many = String::from("objects:\n");
    for i in 0..10_001 {
        many.push_str(&format!(
            "  - {{ id: {}, frame: {}, box: [0, 0, 5, 5] }}\n",
            i % 255 + 1,
            i / 255
        ));
    }
    write(tmp.path(), "prompts.yaml", &many);
    let e = run_fails(&pipe, &[]);
    assert!(
        e.contains("prompts.yaml") && e.contains("10001 prompts; at most 10000"),
        "{e}"
    );
    write(
        tmp.path(),
        "prompts.yaml",
        "objects:\n  - { id: 7, box: [0, 0, 5, 5] }\n  - { id: 7, box: [1, 1, 5, 5] }\n",
    );
    let e = run_fails(&pipe, &[]);
    assert!(e.contains("object 7: prompted twice on frame 0"), "{e}");

    let points: Vec<String> = (0..10_001).map(|i| format!("[{}, 5]", i % 40)).collect();
    write(
        tmp.path(),
        "prompts.yaml",
        &format!(
            "objects:\n  - {{ id: 7, points: [{}] }}\n",
            points.join(", ")
        ),
    );
    let e = run_fails(&pipe, &[]);
    assert!(e.contains("object 7: 10001 points; at most 10000"), "{e}");

    // Long, very wide scribbles on a large frame: refused before drawing (they would take many seconds).
    let big = tmp.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    image::RgbImage::from_pixel(2000, 2000, image::Rgb([200, 20, 20]))
        .save(big.join("00000.png"))
        .unwrap();
    let big_pipe = pipeline(tmp.path(), "frames: big", SINKS);
    let zigzag: Vec<String> = (0..100)
        .map(|i| format!("[{}, {}]", (i % 2) * 2000, (i % 2) * 2000))
        .collect();
    write(
        tmp.path(),
        "prompts.yaml",
        &format!(
            "objects:\n  - {{ id: 9, scribbles: [{{ points: [{}], width: 2000 }}] }}\n",
            zigzag.join(", ")
        ),
    );
    let e = run_fails(&big_pipe, &[]);
    assert!(
        e.contains("object 9 on frame 0") && e.contains("pixel writes"),
        "{e}"
    );
    let pipe = pipeline(tmp.path(), "frames: frames", SINKS);

    // Files too large to be what they claim.
    std::fs::write(tmp.path().join("prompts.yaml"), vec![b' '; (16 << 20) + 1]).unwrap();
    let e = run_fails(&pipe, &[]);
    assert!(
        e.contains("prompts.yaml") && e.contains("more than the 16777216"),
        "{e}"
    );
    std::fs::write(tmp.path().join("big.yaml"), vec![b'#'; (1 << 20) + 1]).unwrap();
    let e = one_error(&vprompt(&[
        "run",
        tmp.path().join("big.yaml").to_str().unwrap(),
    ]));
    assert!(
        e.contains("big.yaml") && e.contains("more than the 1048576"),
        "{e}"
    );
}
