//! Backpressure: with a deliberately slow sink, a 5,000-frame video runs with a bounded number of frames
//! in flight, however far the source could read ahead, and so in bounded memory: the run's peak RSS
//! (`VmHWM`) grows past that of a short run of the same pipeline by less than the bound's worth of
//! frames, where reading ahead would hold gigabytes of decoded frames.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vprompt::pipeline::run::in_flight_bound;
use vprompt::{PipelineSpec, RunOptions, RunReport};

/// Frame size: large enough that frames, not the model, are what read-ahead would fill memory with
/// (230 KB of RGB per frame, 1.1 GB for the whole video).
const W: u32 = 320;
const H: u32 = 240;
const FRAMES: u32 = 5000;
/// The colour model's input side (`tests/fixtures/color-model/model.yaml`).
const MODEL_INPUT: u64 = 64;
const QUEUE: usize = 4;
const WORKERS: usize = 2;
const BATCH: usize = 2;

fn run(dir: &Path, video: &str) -> RunReport {
    let pipe = write(
        dir,
        "pipe.yaml",
        &format!(
            "source: {{ video: {video} }}\nmodel: {:?}\nprompts: prompts.yaml\nsinks:\n  - {{ kind: jsonl, path: out/r.jsonl }}\nruntime: {{ queue_capacity: {QUEUE}, workers: {WORKERS}, batch_size: {BATCH}, threads: 1 }}\n",
            fixture("color-model")
        ),
    );
    let spec = PipelineSpec::load(&pipe, &[]).unwrap();
    let opts = RunOptions {
        slow_sink: Some(Duration::from_millis(2)),
        stop: Arc::new(AtomicBool::new(false)),
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(vprompt::run(spec, opts)).unwrap()
}

#[test]
fn a_slow_sink_bounds_the_frames_in_flight_and_the_memory() {
    let tmp = tempfile::tempdir().unwrap();
    test_pattern_video(&tmp.path().join("short.mp4"), 200, W, H);
    test_pattern_video(&tmp.path().join("long.mp4"), FRAMES, W, H);
    write(
        tmp.path(),
        "prompts.yaml",
        "objects:\n  - { id: 1, frame: 0, box: [20, 20, 200, 200] }\n",
    );
    let bound = in_flight_bound(QUEUE, WORKERS, BATCH);

    // A short run first: the model loaded, the queues filled once (the sink is the bottleneck), so its
    // peak RSS holds the bound's worth of frames already.
    let short = run(tmp.path(), "short.mp4");
    assert_eq!(short.frames_written, 200);
    assert!(
        short.peak_frames_in_flight >= 8,
        "the short run did not fill the queues: peak {}",
        short.peak_frames_in_flight
    );
    let rss_short = short.peak_rss_mib.expect("VmHWM is readable on Linux");

    let report = run(tmp.path(), "long.mp4");
    assert_eq!(report.frames_written, FRAMES as u64);
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
    let lines = line_count(&tmp.path().join("out/r.jsonl"));
    assert_eq!(lines, FRAMES as usize);

    // What one frame in flight holds: its RGB image, the model's input tensor (f32) and its mask (a byte
    // per pixel). Reading ahead would hold up to all the video's frames (about 1.5 GB); the growth past
    // the short run must stay within the bound's worth of frames, twice over (allocator slack), plus
    // 16 MiB.
    let per_frame = (W * H) as u64 * 3 + 3 * MODEL_INPUT * MODEL_INPUT * 4 + (W * H) as u64;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let allowed = rss_short + 2.0 * mib(bound * per_frame) + 16.0;
    let rss = report.peak_rss_mib.expect("VmHWM is readable on Linux");
    assert!(
        rss <= allowed,
        "peak RSS {rss:.0} MiB after {FRAMES} frames, {rss_short:.0} MiB after 200; allowed \
         {allowed:.0} MiB ({bound} frames in flight of {:.2} MiB each); all {FRAMES} frames would be \
         {:.0} MiB",
        mib(per_frame),
        mib(FRAMES as u64 * per_frame)
    );
    eprintln!(
        "{FRAMES} frames of {W}x{H}: peak {} in flight (bound {bound}), peak RSS {rss:.0} MiB \
         (after 200 frames {rss_short:.0}, allowed {allowed:.0})",
        report.peak_frames_in_flight
    );
}
