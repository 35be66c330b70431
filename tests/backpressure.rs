//! Backpressure: with a deliberately slow sink, a 5,000-frame video runs with a bounded number of frames
//! in flight, however far the source could read ahead.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vprompt::pipeline::run::in_flight_bound;
use vprompt::{PipelineSpec, RunOptions};

#[test]
fn a_slow_sink_bounds_the_frames_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let video = tmp.path().join("long.mp4");
    test_pattern_video(&video, 5000, 64, 48);
    write(
        tmp.path(),
        "prompts.yaml",
        "objects:\n  - { id: 1, frame: 0, box: [4, 4, 40, 40] }\n",
    );
    let pipe = write(
        tmp.path(),
        "pipe.yaml",
        &format!(
            "source: {{ video: long.mp4 }}\nmodel: {:?}\nprompts: prompts.yaml\nsinks:\n  - {{ kind: jsonl, path: out/r.jsonl }}\nruntime: {{ queue_capacity: 4, workers: 2, batch_size: 2, threads: 1 }}\n",
            fixture("color-model")
        ),
    );
    let spec = PipelineSpec::load(&pipe, &[]).unwrap();
    let opts = RunOptions {
        slow_sink: Some(Duration::from_micros(500)),
        stop: Arc::new(AtomicBool::new(false)),
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt.block_on(vprompt::run(spec, opts)).unwrap();
    assert_eq!(report.frames_written, 5000);
    let bound = in_flight_bound(4, 2, 2);
    assert_eq!(report.in_flight_bound, bound);
    assert!(
        report.peak_frames_in_flight <= bound,
        "peak {} frames in flight, bound {bound}",
        report.peak_frames_in_flight
    );
    // The sink is the bottleneck, so the queues fill up: the bound is reached, not just respected.
    assert!(
        report.peak_frames_in_flight >= 8,
        "peak {}",
        report.peak_frames_in_flight
    );
    let lines = std::fs::read_to_string(tmp.path().join("out/r.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, 5000);
    eprintln!(
        "5000 frames: peak {} in flight (bound {bound}), peak RSS {:.0} MiB",
        report.peak_frames_in_flight,
        report.peak_rss_mib.unwrap_or(f64::NAN)
    );
}
