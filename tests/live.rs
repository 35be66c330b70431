//! A live stream: a local ffmpeg serves an MPEG-TS stream over HTTP in real time; vprompt propagates it
//! frame by frame and keeps the latency from decoding to writing bounded.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_live_http_stream_is_propagated_with_bounded_latency() {
    let tmp = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/live.ts");
    let mut server = Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=25",
            "-t",
            "4",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-f", "mpegts", "-listen", "1"])
        .arg(&url)
        .stdout(Stdio::null())
        .spawn()
        .expect("ffmpeg runs");
    // Ready when ffmpeg listens (it takes one client, so the probe does not connect).
    if let Err(e) = wait_until(
        "ffmpeg listening on the stream's port",
        Duration::from_secs(20),
        || port_listening(port).then_some(()),
    ) {
        let _ = server.kill();
        panic!("{e}");
    }
    write(
        tmp.path(),
        "prompts.yaml",
        "objects:\n  - { id: 1, frame: 0, box: [10, 10, 60, 60] }\n",
    );
    let pipe = write(
        tmp.path(),
        "pipe.yaml",
        &format!(
            "source: {{ video: {url:?} }}\nmodel: {:?}\nprompts: prompts.yaml\nsinks:\n  - {{ kind: jsonl, path: out/r.jsonl }}\n  - {{ kind: palette_png, dir: out/masks }}\nruntime: {{ threads: 1 }}\n",
            fixture("color-model")
        ),
    );
    let started = Instant::now();
    let o = vprompt(&["run", pipe.to_str().unwrap()]);
    let took = started.elapsed();
    let _ = server.kill();
    let _ = server.wait();
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("out/report.json")).unwrap())
            .unwrap();
    let frames = report["frames_written"].as_u64().unwrap();
    // 4 s at 25 fps: 100 frames, delivered in real time (the stream cannot be read faster than it plays).
    assert!((95..=100).contains(&frames), "{frames} frames");
    assert!(
        took >= Duration::from_secs(3),
        "read faster than real time: {took:?}"
    );
    let p95 = report["latency_ms"][1].as_f64().unwrap();
    let max = report["latency_ms"][2].as_f64().unwrap();
    assert!(
        p95 < 500.0 && max < 2000.0,
        "latency p95 {p95} ms, max {max} ms"
    );
    let lines = std::fs::read_to_string(tmp.path().join("out/r.jsonl"))
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(lines, frames);
    eprintln!("live: {frames} frames in {took:?}, latency p95 {p95} ms, max {max} ms");
}
