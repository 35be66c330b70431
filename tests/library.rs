//! vprompt as a library: a spec changed in code after `PipelineSpec::parse` is checked again by
//! `run`, which refuses it naming the key instead of dividing by zero or running with nonsense; results
//! come back in memory; a stage that fails or panics mid-run (a user sink, a user job) ends the run
//! within seconds with one error, the frames finished before it written whole.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use vprompt::decode::FrameObjects;
use vprompt::model::{Model, QueryAnchor};
use vprompt::pipeline::{FrameInput, Job};
use vprompt::sink::{FrameRecord, Sink};
use vprompt::{Error, Pipeline, PipelineSpec, RunOptions};

/// A key the change breaks, and the change.
type Case = (&'static str, fn(&mut PipelineSpec));

fn demo_spec(dir: &std::path::Path) -> PipelineSpec {
    demo_spec_frames(dir, 2)
}

fn demo_spec_frames(dir: &std::path::Path, end: u32) -> PipelineSpec {
    let data = root().join("data/demo");
    std::fs::write(
        dir.join("prompts.yaml"),
        format!(
            "objects:\n  - {{ id: 1, frame: 0, mask: {:?} }}\n",
            data.join("car-turn-00000.png")
        ),
    )
    .unwrap();
    let yaml = format!(
        "source: {{ video: {:?}, end: {end} }}\nmodel: {:?}\nprompts: prompts.yaml\nsinks:\n  - {{ kind: jsonl, path: r.jsonl }}\n",
        data.join("car-turn.mp4"),
        root().join("models/vprompt-lite0"),
    );
    PipelineSpec::parse(&yaml, &dir.join("pipeline.yaml"), &[]).unwrap()
}

#[test]
fn run_checks_a_spec_changed_in_code() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cases: [Case; 3] = [
        ("runtime.workers", |s| s.runtime.workers = 0),
        ("job.focus.max_share", |s| s.job.focus.max_share = 0.0),
        ("job.target.l2", |s| s.job.target.l2 = f32::NAN),
    ];
    for (key, change) in cases {
        let mut spec = demo_spec(tmp.path());
        change(&mut spec);
        let err = rt
            .block_on(vprompt::run(spec, RunOptions::default()))
            .err()
            .unwrap_or_else(|| panic!("{key}: the run was not refused"));
        let msg = err.to_string();
        assert!(msg.contains(key), "{key}: {msg}");
        assert!(!tmp.path().join("r.jsonl").exists(), "{key}: {msg}");
    }
}

#[test]
fn results_come_back_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let seen: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let got = seen.clone();
    let report = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(
            Pipeline::new(demo_spec_frames(tmp.path(), 4))
                .on_frame(move |f: &FrameRecord<'_>| {
                    let area = f.result.objects.iter().map(|o| o.area).sum();
                    got.lock().unwrap().push((f.index, area));
                    Ok(())
                })
                .run(),
        )
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(report.frames_written, 4);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
    // The car is found on every frame, and the callback saw what the JSONL sink wrote.
    assert!(seen.iter().all(|s| s.1 > 500), "{seen:?}");
    let lines = std::fs::read_to_string(tmp.path().join("r.jsonl")).unwrap();
    for (line, (_, area)) in lines.lines().zip(seen.iter()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["objects"][0]["area"].as_u64(), Some(*area));
    }
}

/// A user sink that fails (or panics) on its `k`-th frame.
struct BreaksAt {
    k: u64,
    panic: bool,
    seen: u64,
}

impl Sink for BreaksAt {
    fn write(&mut self, _: &FrameRecord<'_>) -> vprompt::Result<()> {
        self.seen += 1;
        if self.seen > self.k {
            if self.panic {
                panic!("user sink gave up");
            }
            return Err(Error::Sink {
                path: "user-sink".into(),
                msg: "disk gone".into(),
            });
        }
        Ok(())
    }
    fn finish(&mut self) -> vprompt::Result<Vec<std::path::PathBuf>> {
        Ok(vec![])
    }
}

/// A propagate-like job that follows nothing and panics on source frame `k`.
struct PanicsAt(u64);

impl Job for PanicsAt {
    fn anchors(&self) -> Vec<QueryAnchor> {
        vec![QueryAnchor::point(0.5, 0.5)]
    }
    fn categories(&self) -> Vec<(u32, String)> {
        vec![(1, "thing".into())]
    }
    fn step(&mut self, f: &FrameInput<'_>) -> vprompt::Result<FrameObjects> {
        assert!(f.index != self.0, "job broke on frame {}", f.index);
        Ok(FrameObjects {
            width: f.image.width(),
            height: f.image.height(),
            labels: vec![0; (f.image.width() * f.image.height()) as usize],
            objects: vec![],
        })
    }
}

/// Runs a 40-frame pipeline that something breaks at frame 5; returns the error, the time it took and
/// the JSONL lines written, after checking that the source stopped early (the report says how many
/// frames were read: at most the frames in flight past the break).
fn broken_run(p: impl FnOnce(Pipeline) -> Pipeline) -> (String, Duration, Vec<serde_json::Value>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = demo_spec_frames(tmp.path(), 40);
    spec.runtime.queue_capacity = 2;
    let t = Instant::now();
    let r = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(p(Pipeline::new(spec)).run());
    let took = t.elapsed();
    let err = r.expect_err("the run did not fail").to_string();
    let read = report(&tmp.path().join("report.json"))["frames_read"]
        .as_u64()
        .unwrap();
    assert!(
        read <= 20,
        "{read} frames read after a break at frame 5: {err}"
    );
    let lines = std::fs::read_to_string(tmp.path().join("r.jsonl")).unwrap();
    let lines = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("a whole JSON line"))
        .collect();
    (err, took, lines)
}

#[test]
fn a_failing_or_panicking_stage_ends_the_run_with_finished_frames_written() {
    let frames = |lines: &[serde_json::Value]| -> Vec<u64> {
        lines.iter().map(|v| v["frame"].as_u64().unwrap()).collect()
    };
    for panic in [false, true] {
        let (err, took, lines) = broken_run(|p| {
            p.sink(Box::new(BreaksAt {
                k: 5,
                panic,
                seen: 0,
            }))
        });
        let want = if panic {
            "user sink gave up"
        } else {
            "disk gone"
        };
        assert!(err.contains(want), "{err}");
        assert!(took < Duration::from_secs(60), "{took:?}");
        // The spec's JSONL sink comes first: it took frames 0-5; frame 5 failed in the user sink.
        assert_eq!(frames(&lines), [0, 1, 2, 3, 4, 5], "{err}");
    }
    let (err, took, lines) =
        broken_run(|p| p.job(|_model: Arc<Model>| Ok(Box::new(PanicsAt(5)) as Box<dyn Job>)));
    assert!(
        err.contains("the track stage panicked (job broke on frame 5)"),
        "{err}"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert_eq!(frames(&lines), [0, 1, 2, 3, 4]);
}
