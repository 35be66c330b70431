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

/// Whether a test that needs these folders of the shared development data (`../shared/data/<name>`)
/// must be skipped: on a clone without them it prints why and the caller returns, so `make test` passes
/// there on what the repository holds; with `VPROMPT_REQUIRE_DATA` set (`.ci/run` sets it) a missing
/// folder fails the test instead.
pub fn skip_without(names: &[&str]) -> bool {
    let missing: Vec<PathBuf> = names
        .iter()
        .map(|n| root().join("../shared/data").join(n))
        .filter(|p| !p.is_dir())
        .collect();
    if missing.is_empty() {
        return false;
    }
    let list = missing
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if std::env::var_os("VPROMPT_REQUIRE_DATA").is_some() {
        panic!("VPROMPT_REQUIRE_DATA is set and the shared development data is missing: {list}");
    }
    // Written to stderr directly: the test harness captures `eprintln!` of passing tests.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped: this test needs the shared development data, missing here: {list}"
    );
    true
}

/// A folder of the shared development data (`../shared/data/<name>`), which must be there.
fn shared_data(name: &str) -> PathBuf {
    let data = root().join("../shared/data").join(name);
    assert!(
        data.is_dir(),
        "the development data is expected at {}",
        data.display()
    );
    data
}

/// COCO128 of the shared development data (`../shared/data/coco128`).
pub fn coco128() -> PathBuf {
    shared_data("coco128")
}

/// The fixed COCO128 split (`tools/coco128/split.py`) written into `dir`: pool.json, eval.json,
/// eval-images/.
pub fn coco128_split(dir: &Path) -> PathBuf {
    let data = coco128();
    let st = python()
        .arg(root().join("tools/coco128/split.py"))
        .arg("--data")
        .arg(data.parent().unwrap())
        .arg("--out")
        .arg(dir)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", stderr(&st));
    dir.to_path_buf()
}

/// DAVIS-2016 train at 240p of the shared development data.
pub fn davis() -> PathBuf {
    shared_data("davis2016-train-240p")
}

/// Runs the binary; whatever the input, it must never panic.
pub fn vprompt(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_vprompt"))
        .args(args)
        .output()
        .expect("the vprompt binary runs");
    assert!(!stderr(&o).contains("panicked at"), "{}", stderr(&o));
    o
}

/// Checks a failed run: exit code 2, exactly one `error:` line, no panic; returns the line.
pub fn one_error(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {err}");
    lines[0].to_string()
}

/// Writes `prompts.yaml` (object 1: a box on frame 0) and `pipe.yaml` with the colour model; `source` and
/// `rest` are YAML (`rest` holds `sinks:` and anything else).
pub fn pipeline(dir: &Path, source: &str, rest: &str) -> PathBuf {
    write(
        dir,
        "prompts.yaml",
        "objects:\n  - { id: 1, frame: 0, box: [2, 2, 20, 20] }\n",
    );
    write(
        dir,
        "pipe.yaml",
        &format!(
            "source: {{ {source} }}\nmodel: {:?}\nprompts: prompts.yaml\n{rest}",
            fixture("color-model")
        ),
    )
}

/// The `report.json` a run wrote beside its outputs.
pub fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report.json exists"))
        .expect("report.json is JSON")
}

/// A PNG whose header claims `w x h` RGB pixels, with almost no pixel data behind it.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    // zlib: a stored block of 3 zero bytes (one short row).
    chunk(
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x03, 0x00, 0xfc, 0xff, 0, 0, 0, 0, 0x03, 0, 0x01,
        ],
    );
    chunk(b"IEND", &[]);
    out
}

/// CRC-32 (the PNG / zlib polynomial).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Runs ffmpeg with these arguments (quietly, overwriting) and checks that it succeeded.
pub fn ffmpeg(args: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg {args:?}");
}

/// Every file under `dir` (recursively) whose name ends with `.part` or `.part.mp4`.
pub fn leftover_parts(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(leftover_parts(&p));
        } else if p.to_string_lossy().contains(".part") {
            out.push(p);
        }
    }
    out
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

/// A readiness probe: asks `probe` every 20 ms until it gives a value, and returns it; after `limit`
/// the error says what did not happen in time (the caller cleans up, then fails with it).
pub fn wait_until<T>(
    what: &str,
    limit: std::time::Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if started.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether a TCP socket listens on `127.0.0.1:port` (or on every address), read from `/proc/net/tcp`
/// without connecting (a server that takes one client would take the probe for it).
pub fn port_listening(port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // local address `0100007F:1F90` (hex, little-endian IP), state `0A` = LISTEN
        f.len() > 3
            && f[3] == "0A"
            && [
                format!("0100007F:{port:04X}"),
                format!("00000000:{port:04X}"),
            ]
            .contains(&f[1].to_string())
    })
}

/// Lines of the text file at `path` (0 while it does not exist).
pub fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}
