//! Faults during a run: the output disk fills, SIGTERM arrives, a live stream drops or stalls. Each ends
//! cleanly: one clear error or a clean stop, and every file already written stays whole.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vprompt::palette;

/// A tiny tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts `size` of tmpfs at `dir`; `None` where mounting is not allowed (not root, no CAP_SYS_ADMIN).
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Checks that every output in `out` is whole: label PNGs decode, JSONL lines parse and count frames
/// 0, 1, 2, ... in order, no temporary file is left. Returns (PNGs, JSONL lines).
fn outputs_are_whole(out: &Path) -> (usize, usize) {
    let mut pngs = 0;
    if let Ok(rd) = std::fs::read_dir(out.join("masks")) {
        for e in rd {
            let p = e.unwrap().path();
            palette::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            pngs += 1;
        }
    }
    let text = std::fs::read_to_string(out.join("r.jsonl")).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the JSONL ends in a partial line"
    );
    let mut lines = 0;
    for (i, l) in text.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("line {i}: {e}"));
        assert_eq!(v["seq"].as_u64(), Some(i as u64));
        lines += 1;
    }
    assert_eq!(
        leftover_parts(out),
        Vec::<PathBuf>::new(),
        "temporary files left"
    );
    (pngs, lines)
}

#[test]
fn a_full_disk_is_a_clear_error_and_finished_files_stay_whole() {
    full_disk(true);
}

/// The same with a per-file size limit (RLIMIT_FSIZE), which needs no mount: the fallback where a tmpfs
/// cannot be mounted, and a fault of its own (EFBIG).
#[test]
fn a_file_size_limit_is_a_clear_error_and_finished_files_stay_whole() {
    full_disk(false);
}

fn full_disk(tmpfs: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let video = tmp.path().join("clip.mp4");
    test_pattern_video(&video, 400, 64, 48);
    let disk = tmp.path().join("disk");
    let mounted = if tmpfs {
        SmallDisk::mount(&disk, "256k")
    } else {
        None
    };
    let out = disk.join("out");
    let sinks = format!(
        "sinks:\n  - {{ kind: palette_png, dir: {:?} }}\n  - {{ kind: jsonl, path: {:?} }}\n  - {{ kind: coco, path: {:?} }}\n  - {{ kind: video, path: {:?} }}\nruntime: {{ threads: 1 }}\n",
        out.join("masks"),
        out.join("r.jsonl"),
        out.join("coco.json"),
        out.join("overlay.mp4")
    );
    let pipe = pipeline(tmp.path(), "video: clip.mp4", &sinks);
    let o = if mounted.is_some() {
        vprompt(&["run", pipe.to_str().unwrap(), "--quiet"])
    } else {
        // A file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored so that writes fail with EFBIG instead of
        // killing the process) stands in for the full disk where no tmpfs can be mounted.
        if tmpfs {
            eprintln!("cannot mount a tmpfs here; using `ulimit -f` instead");
        }
        std::fs::create_dir_all(&disk).unwrap();
        let o = Command::new("sh")
            .arg("-c")
            .arg("ulimit -f 64; trap '' XFSZ; exec \"$0\" run \"$1\" --quiet")
            .arg(env!("CARGO_BIN_EXE_vprompt"))
            .arg(&pipe)
            .output()
            .unwrap();
        assert!(!stderr(&o).contains("panicked at"), "{}", stderr(&o));
        o
    };
    let e = one_error(&o);
    assert!(
        e.contains(out.to_str().unwrap())
            && !e.contains(".part")
            && e.contains("write the outputs elsewhere"),
        "{e}"
    );
    let (pngs, lines) = outputs_are_whole(&out);
    eprintln!("full disk: {pngs} PNGs and {lines} JSONL lines whole; {e}");
    assert!(
        pngs >= 5 && lines >= 5,
        "{pngs} PNGs, {lines} lines written before the disk filled"
    );
    assert!(pngs < 400 && lines < 400);
    // A video that could not be finished is not left half-written under either name (on the full
    // tmpfs it is gone; under a per-file limit it may have been finished, and then it plays).
    if out.join("overlay.mp4").exists() {
        assert!(ffprobe(&out.join("overlay.mp4")).0 >= 1);
    }
    drop(mounted);
}

#[test]
fn sigterm_stops_cleanly_with_every_file_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let video = tmp.path().join("long.mp4");
    test_pattern_video(&video, 3000, 64, 48);
    let out = tmp.path().join("out");
    let sinks = "sinks:\n  - { kind: palette_png, dir: out/masks }\n  - { kind: jsonl, path: out/r.jsonl }\n  - { kind: coco, path: out/coco.json }\n  - { kind: video, path: out/overlay.mp4 }\nruntime: { threads: 1 }\n";
    let pipe = pipeline(tmp.path(), "video: long.mp4", sinks);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vprompt"))
        .args(["run", pipe.to_str().unwrap(), "--quiet"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ready when 30 frames are written, and the run still going.
    wait_until("30 frames written", Duration::from_secs(120), || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the signal"
        );
        (line_count(&out.join("r.jsonl")) >= 30).then_some(())
    })
    .unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("{e}")
    });
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_until(
        "a clean stop after SIGTERM",
        Duration::from_secs(60),
        || child.try_wait().unwrap(),
    )
    .unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("{e}")
    });
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        !err.contains("panicked") && err.contains("terminated"),
        "{err}"
    );

    let r = report(&out.join("report.json"));
    assert_eq!(r["interrupted"].as_bool(), Some(true));
    let written = r["frames_written"].as_u64().unwrap() as usize;
    assert!((30..3000).contains(&written), "{written} frames written");
    let (pngs, lines) = outputs_are_whole(&out);
    eprintln!("SIGTERM: exit 130 after {written} frames, every file whole");
    assert_eq!((pngs, lines), (written, written));
    let coco: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("coco.json")).unwrap()).unwrap();
    assert_eq!(coco["images"].as_array().unwrap().len(), written);
    assert_eq!(ffprobe(&out.join("overlay.mp4")), (written as u64, 64, 48));
}

/// An HTTP server on 127.0.0.1 for a stream that drops: the first connection gets `first` bytes of
/// `body` and then either a close or (with `hold`) silence; the next `more` connections get all of it.
/// The listener closes after that, so further connections are refused.
fn flaky_server(body: Vec<u8>, first: usize, hold: Option<Duration>, more: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/live.ts", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for n in 0..=more {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => req.extend_from_slice(&buf[..k]),
                }
            }
            let part = if n == 0 { &body[..first] } else { &body[..] };
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n",
            );
            let _ = conn.write_all(part);
            let _ = conn.flush();
            if n == 0 {
                if let Some(d) = hold {
                    std::thread::sleep(d);
                }
            }
        }
    });
    url
}

/// An MPEG-TS stream of `frames` frames (25 fps, 160x120).
fn stream(tmp: &Path, frames: u32) -> Vec<u8> {
    let ts = tmp.join("clip.ts");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x120:rate=25",
        "-frames:v",
        &frames.to_string(),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-pix_fmt",
        "yuv420p",
        "-f",
        "mpegts",
        ts.to_str().unwrap(),
    ]);
    std::fs::read(ts).unwrap()
}

fn run_stream(tmp: &Path, url: &str, extra: &str) -> (serde_json::Value, String, Duration) {
    let pipe = pipeline(
        tmp,
        &format!("video: {url:?}{extra}"),
        "sinks:\n  - { kind: jsonl, path: out/r.jsonl }\nruntime: { threads: 1 }\n",
    );
    let started = Instant::now();
    let o = vprompt(&["run", pipe.to_str().unwrap(), "--quiet"]);
    let took = started.elapsed();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let r = report(&tmp.join("out/report.json"));
    let (_, lines) = outputs_are_whole(&tmp.join("out"));
    assert_eq!(lines as u64, r["frames_written"].as_u64().unwrap());
    (r, err, took)
}

#[test]
fn a_dropped_stream_ends_cleanly_or_reconnects_as_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let body = stream(tmp.path(), 50);
    let half = body.len() / 2 / 188 * 188;

    // Without `reconnect`: the run ends at the drop, with what it read.
    let url = flaky_server(body.clone(), half, None, 0);
    let (r, err, _) = run_stream(tmp.path(), &url, "");
    let before = r["frames_written"].as_u64().unwrap();
    assert!((5..50).contains(&before), "{before} frames");
    // (FFmpeg's HTTP client reports the early end as an I/O error: "dropped (Input/output error)".)
    assert!(
        err.contains(&format!(
            "after frame {before}; the run ends here (set source.reconnect"
        )),
        "{err}"
    );

    // With it: the stream is reopened and read on.
    let url = flaky_server(body.clone(), half, None, 1);
    let (r, err, _) = run_stream(
        tmp.path(),
        &url,
        ", reconnect: { attempts: 3, backoff_ms: 50 }",
    );
    let n = r["frames_written"].as_u64().unwrap();
    assert!(
        n >= before + 49,
        "{n} frames after reconnecting, {before} before the drop"
    );
    assert!(err.contains("reconnected (try 1 of 3)"), "{err}");

    // A stream that does not come back: tries with back-off (50 + 100 + 200 ms), then a clean end.
    let url = flaky_server(body.clone(), half, None, 0);
    let (r, err, took) = run_stream(
        tmp.path(),
        &url,
        ", reconnect: { attempts: 3, backoff_ms: 50 }",
    );
    assert_eq!(r["frames_written"].as_u64(), Some(before));
    assert!(
        err.contains("try 3 of 3 failed") && err.contains("gave up after 3"),
        "{err}"
    );
    assert!(took >= Duration::from_millis(350), "{took:?}");
}

#[test]
fn a_stalled_stream_counts_as_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let body = stream(tmp.path(), 50);
    let half = body.len() / 2 / 188 * 188;
    // The server sends half the stream, then nothing for 30 s without closing the connection.
    let url = flaky_server(body, half, Some(Duration::from_secs(30)), 0);
    let (r, err, took) = run_stream(tmp.path(), &url, ", stall_timeout_ms: 1000");
    assert!((5..50).contains(&r["frames_written"].as_u64().unwrap()));
    assert!(err.contains("sent nothing for 1000 ms"), "{err}");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn sigterm_ends_a_run_waiting_on_a_silent_stream() {
    let tmp = tempfile::tempdir().unwrap();
    // 8 s of stream, 6 s of it sent: more than FFmpeg reads to find the stream's parameters (5 s), so
    // the run is past opening and reading frames when the connection goes silent.
    let body = stream(tmp.path(), 200);
    let most = body.len() * 3 / 4 / 188 * 188;
    let url = flaky_server(body, most, Some(Duration::from_secs(60)), 0);
    let pipe = pipeline(
        tmp.path(),
        &format!("video: {url:?}, stall_timeout_ms: 60000"),
        "sinks:\n  - { kind: jsonl, path: out/r.jsonl }\nruntime: { threads: 1 }\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_vprompt"))
        .args(["run", pipe.to_str().unwrap(), "--quiet"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first half is read, then the source waits on a connection that sends nothing.
    let out = tmp.path().join("out");
    let lines = out.join("r.jsonl");
    let fail = |child: &mut std::process::Child, e: String| -> ! {
        let _ = child.kill();
        panic!("{e}")
    };
    if let Err(e) = wait_until("5 frames written", Duration::from_secs(60), || {
        (line_count(&lines) >= 5).then_some(())
    }) {
        fail(&mut child, e);
    }
    // Ready when what was sent is written and the run waits: no new line for 300 ms in a row.
    let mut last = (line_count(&lines), Instant::now());
    if let Err(e) = wait_until(
        "the output to stop growing",
        Duration::from_secs(60),
        || {
            let n = line_count(&lines);
            if n != last.0 {
                last = (n, Instant::now());
            }
            (last.1.elapsed() >= Duration::from_millis(300)).then_some(())
        },
    ) {
        fail(&mut child, e);
    }
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let stopped = Instant::now();
    let status = match wait_until(
        "the end of a run blocked on a silent stream after SIGTERM",
        Duration::from_secs(20),
        || child.try_wait().unwrap(),
    ) {
        Ok(s) => s,
        Err(e) => fail(&mut child, e),
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let r = report(&out.join("report.json"));
    let (_, lines) = outputs_are_whole(&out);
    assert_eq!(Some(lines as u64), r["frames_written"].as_u64());
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
}
