//! Bad input ends with one clear error line that names the file, key or frame, exit code 2, and no panic.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const PROMPTS: &str = "objects:\n  - { id: 1, frame: 0, box: [10, 10, 100, 100] }\n";

fn pipeline(dir: &Path, source: &str, model: &Path, extra: &str) -> std::path::PathBuf {
    write(dir, "prompts.yaml", PROMPTS);
    write(
        dir,
        "pipe.yaml",
        &format!("source: {{ {source} }}\nmodel: {model:?}\nprompts: prompts.yaml\nsinks:\n  - {{ kind: jsonl, path: out/r.jsonl }}\n{extra}"),
    )
}

fn demo_video() -> String {
    format!("video: {:?}", root().join("data/demo/car-turn.mp4"))
}

/// Runs `vprompt run FILE`, checks exit code 2, a single `error:` line without a panic, and returns it.
fn fails(args: &[&str], envs: &[(&str, &str)]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_vprompt"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {err}");
    lines[0].to_string()
}

#[test]
fn invalid_yaml_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "pipe.yaml",
        "source: { video: a.mp4\nmodel: [\n",
    );
    let e = fails(&["run", p.to_str().unwrap()], &[]);
    assert!(e.contains("pipe.yaml") && e.contains("line"), "{e}");
}

#[test]
fn unknown_key_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(
        tmp.path(),
        &demo_video(),
        &fixture("color-model"),
        "runtime: { wrokers: 2 }\n",
    );
    let e = fails(&["run", p.to_str().unwrap()], &[]);
    assert!(
        e.contains("unknown field `wrokers`") && e.contains("line 6"),
        "{e}"
    );
}

#[test]
fn missing_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(
        &["run", tmp.path().join("nope.yaml").to_str().unwrap()],
        &[],
    );
    assert!(e.contains("nope.yaml") && e.contains("cannot read"), "{e}");
    let p = pipeline(
        tmp.path(),
        "video: missing.mp4",
        &fixture("color-model"),
        "",
    );
    let e = fails(&["run", p.to_str().unwrap()], &[]);
    assert!(
        e.contains("missing.mp4") && e.contains("no such file"),
        "{e}"
    );
}

#[test]
fn a_file_that_is_not_a_video() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "notes.mp4", "these are not frames\n");
    let p = pipeline(tmp.path(), "video: notes.mp4", &fixture("color-model"), "");
    let e = fails(&["run", p.to_str().unwrap()], &[]);
    assert!(
        e.contains("notes.mp4") && e.contains("cannot open it as a video"),
        "{e}"
    );
}

#[test]
fn a_graph_with_a_wrong_output_name_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), &demo_video(), &fixture("bad-output-name"), "");
    let e = fails(&["run", p.to_str().unwrap()], &[]);
    assert!(
        e.contains("decoder.onnx") && e.contains("`pred_iou`") && e.contains("iou"),
        "{e}"
    );
}

#[test]
fn a_truncated_graph_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), &demo_video(), &fixture("truncated-model"), "");
    let e = fails(&["run", p.to_str().unwrap()], &[]);
    assert!(
        e.contains("encoder.onnx") && e.contains("cannot load it"),
        "{e}"
    );
}

#[test]
fn a_missing_onnx_runtime_library_says_how_to_install_it() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), &demo_video(), &fixture("color-model"), "");
    let e = fails(
        &["run", p.to_str().unwrap()],
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    assert!(
        e.contains("ONNX Runtime library was not found") && e.contains("make deps"),
        "{e}"
    );
}

#[test]
fn prompt_errors_name_the_object() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), &demo_video(), &fixture("color-model"), "");
    write(
        tmp.path(),
        "prompts.yaml",
        "objects:\n  - { id: 2, frame: 0, box: [10, 10, 900, 100] }\n",
    );
    let e = fails(&["run", p.to_str().unwrap()], &[]);
    assert!(
        e.contains("object 2") && e.contains("outside the 426x240 frame"),
        "{e}"
    );
    write(
        tmp.path(),
        "prompts.yaml",
        "objects:\n  - { id: 2, frame: 500, box: [10, 10, 90, 100] }\n",
    );
    let e = fails(&["run", p.to_str().unwrap()], &[]);
    assert!(e.contains("object 2") && e.contains("frame 500"), "{e}");
}

#[test]
fn a_graph_with_an_unsupported_opset_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), &demo_video(), &fixture("wrong-opset"), "");
    let e = fails(&["run", p.to_str().unwrap()], &[]);
    assert!(
        e.contains("wrong-opset/encoder.onnx") && e.contains("opset") && e.contains("Opset 99"),
        "{e}"
    );
}

#[test]
fn a_graph_input_of_the_wrong_type_or_shape_is_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pipeline(tmp.path(), &demo_video(), &fixture("wrong-type"), "");
    let e = fails(&["run", p.to_str().unwrap()], &[]);
    assert!(
        e.contains("wrong-type/encoder.onnx")
            && e.contains("input `image` is")
            && e.contains("f32"),
        "{e}"
    );
    let p = pipeline(tmp.path(), &demo_video(), &fixture("wrong-shape"), "");
    let e = fails(&["run", p.to_str().unwrap()], &[]);
    assert!(
        e.contains("wrong-shape/encoder.onnx")
            && e.contains("input `image` dimension 2 is 32")
            && e.contains("[batch, 3, 64, 64]"),
        "{e}"
    );
}

#[test]
fn an_empty_graph_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in std::fs::read_dir(fixture("color-model")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::write(model.join("decoder.onnx"), b"").unwrap();
    let p = pipeline(tmp.path(), &demo_video(), &model, "");
    let e = fails(&["run", p.to_str().unwrap()], &[]);
    assert!(e.contains("decoder.onnx") && e.contains("empty"), "{e}");
}
