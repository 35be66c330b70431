//! Using vprompt as a library: build a pipeline in code, run it, get each frame's results in memory.
//!
//! `cargo run --release --example propagate -- [MODEL_DIR]` (default: the shipped models/vprompt-lite0)
//! follows the car of the demo clip and prints each frame's object area and box as the frames finish; the
//! spec's own sink (JSONL) is written beside, as a pipeline file would.

use std::path::PathBuf;

use vprompt::sink::FrameRecord;
use vprompt::{Pipeline, PipelineSpec};

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
    let pipeline = Pipeline::new(spec).on_frame(|f: &FrameRecord<'_>| {
        for o in &f.result.objects {
            println!(
                "frame {}: object {} area {} box {:?} score {:.2}",
                f.index, o.id, o.area, o.box_xyxy, o.score
            );
        }
        Ok(())
    });
    let report = tokio::runtime::Runtime::new()?.block_on(pipeline.run())?;
    print!("{}", report.table());
    Ok(())
}
