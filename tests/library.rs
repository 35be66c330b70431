//! vprompt as a library: a spec changed in code after `PipelineSpec::parse` is checked again by
//! `run`, which refuses it naming the key instead of dividing by zero or running with nonsense.

mod common;

use common::*;
use vprompt::{PipelineSpec, RunOptions};

/// A key the change breaks, and the change.
type Case = (&'static str, fn(&mut PipelineSpec));

fn demo_spec(dir: &std::path::Path) -> PipelineSpec {
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
        "source: {{ video: {:?}, end: 2 }}\nmodel: {:?}\nprompts: prompts.yaml\nsinks:\n  - {{ kind: jsonl, path: r.jsonl }}\n",
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
