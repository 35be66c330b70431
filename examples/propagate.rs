//! Using vprompt as a library: build a pipeline in code, run it, read the results.
//!
//! `cargo run --example propagate -- [MODEL_DIR]` (default: the shipped models/vprompt-lite0) follows the
//! car of the demo clip and prints each frame's object area from the JSONL it wrote.

use std::path::PathBuf;

use vprompt::{PipelineSpec, RunOptions};

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/vprompt-lite0"));
    let out = std::env::temp_dir().join("vprompt-example");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("prompts.yaml"),
        format!(
            "objects:\n  - {{ id: 1, frame: 0, mask: {:?} }}\n",
            root.join("data/demo/car-turn-00000.png")
        ),
    )?;
    let yaml = format!(
        "source: {{ video: {:?}, end: 20 }}\nmodel: {model:?}\nprompts: prompts.yaml\nsinks:\n  - {{ kind: jsonl, path: results.jsonl }}\n",
        root.join("data/demo/car-turn.mp4"),
    );
    let spec = PipelineSpec::parse(&yaml, &out.join("pipeline.yaml"), &[])?;
    let report =
        tokio::runtime::Runtime::new()?.block_on(vprompt::run(spec, RunOptions::default()))?;
    print!("{}", report.table());
    for line in std::fs::read_to_string(out.join("results.jsonl"))?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        println!(
            "frame {}: object 1 area {}",
            v["frame"], v["objects"][0]["area"]
        );
    }
    Ok(())
}
