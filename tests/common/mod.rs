//! Helpers shared by the integration tests: paths, running the binary, small PNG and video makers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

pub fn vprompt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vprompt"))
        .args(args)
        .output()
        .expect("the vprompt binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Python with the cross-check packages (installed by scripts/setup.sh into .deps/python).
pub fn python() -> Command {
    let mut c = Command::new("python3");
    let mut path = root().join(".deps/python").into_os_string();
    if let Some(old) = std::env::var_os("PYTHONPATH") {
        path.push(":");
        path.push(old);
    }
    c.env("PYTHONPATH", path);
    c
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Makes an H.264 MP4 of `frames` frames of FFmpeg's test pattern at `w x h`.
pub fn test_pattern_video(path: &Path, frames: u32, w: u32, h: u32) {
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={w}x{h}:rate=25"))
        .args([
            "-frames:v",
            &frames.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(path)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
}

/// Frame count, width and height of a video as ffprobe reads them.
pub fn ffprobe(path: &Path) -> (u64, u32, u32) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<&str> = text.trim().split(',').collect();
    assert_eq!(v.len(), 3, "ffprobe said {text:?}");
    (
        v[2].parse().unwrap(),
        v[0].parse().unwrap(),
        v[1].parse().unwrap(),
    )
}
