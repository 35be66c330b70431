//! What each stage did: items, busy time and latency, exported through the `metrics` crate (names below
//! are the ones to grep and scrape) and gathered for the end-of-run report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Counter: items a stage finished, label `stage`.
pub const ITEMS: &str = "vprompt_stage_items_total";
/// Histogram: seconds a stage spent on one call (one frame, or one batch), label `stage`.
pub const LATENCY: &str = "vprompt_stage_seconds";
/// Gauge: items waiting in a queue, label `queue`.
pub const QUEUE_DEPTH: &str = "vprompt_queue_depth";
/// Gauge: frames read from the source and not yet written by the sinks.
pub const IN_FLIGHT: &str = "vprompt_frames_in_flight";
/// Counter: items that failed, label `stage`.
pub const FAILED: &str = "vprompt_items_failed_total";

/// Busy time and item count of one stage (all its workers together).
pub struct StageStats {
    pub name: &'static str,
    items: AtomicU64,
    busy_ns: AtomicU64,
    failed: AtomicU64,
}

impl StageStats {
    pub fn new(name: &'static str) -> Arc<Self> {
        Arc::new(StageStats {
            name,
            items: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// Records one call that handled `items` items and took `elapsed`.
    pub fn record(&self, items: u64, elapsed: Duration) {
        self.items.fetch_add(items, Ordering::Relaxed);
        self.busy_ns
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        metrics::counter!(ITEMS, "stage" => self.name).increment(items);
        metrics::histogram!(LATENCY, "stage" => self.name).record(elapsed.as_secs_f64());
    }

    pub fn fail(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(FAILED, "stage" => self.name).increment(1);
    }

    /// Times `f` and records it as one call of `items` items.
    pub fn time<T>(&self, items: u64, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.record(items, t.elapsed());
        out
    }

    pub fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    pub fn report(&self, wall: Duration) -> StageReport {
        let busy = self.busy_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let items = self.items();
        StageReport {
            stage: self.name.to_string(),
            items,
            failed: self.failed.load(Ordering::Relaxed),
            busy_s: busy,
            busy_share: if wall.as_secs_f64() > 0.0 {
                busy / wall.as_secs_f64()
            } else {
                0.0
            },
            items_per_busy_s: if busy > 0.0 { items as f64 / busy } else { 0.0 },
        }
    }
}

/// Frames between the source and the sinks, with the peak seen.
#[derive(Default)]
pub struct InFlight {
    now: AtomicU64,
    peak: AtomicU64,
}

impl InFlight {
    pub fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        metrics::gauge!(IN_FLIGHT).set(n as f64);
    }

    pub fn leave(&self) {
        let n = self.now.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        metrics::gauge!(IN_FLIGHT).set(n as f64);
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub items: u64,
    pub failed: u64,
    pub busy_s: f64,
    /// Busy time over wall time (can exceed 1 with several workers).
    pub busy_share: f64,
    pub items_per_busy_s: f64,
}

/// A failed item: its id and what went wrong.
#[derive(Debug, Clone, Serialize)]
pub struct ItemError {
    pub frame: String,
    pub stage: String,
    pub error: String,
}

/// The end-of-run report, printed and written as JSON beside the outputs.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub frames_read: u64,
    pub frames_written: u64,
    pub frames_failed: u64,
    pub wall_s: f64,
    pub fps: f64,
    pub peak_frames_in_flight: u64,
    /// The most frames that may be in flight with this runtime configuration.
    pub in_flight_bound: u64,
    pub peak_rss_mib: Option<f64>,
    pub interrupted: bool,
    pub stages: Vec<StageReport>,
    pub errors: Vec<ItemError>,
    pub outputs: Vec<String>,
}

impl RunReport {
    /// A short human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{} frames in {:.2} s ({:.2} frames/s){}; {} failed; peak {} frames in flight (bound {}){}\n",
            self.frames_written,
            self.wall_s,
            self.fps,
            if self.interrupted { ", INTERRUPTED" } else { "" },
            self.frames_failed,
            self.peak_frames_in_flight,
            self.in_flight_bound,
            self.peak_rss_mib.map(|m| format!("; peak RSS {m:.0} MiB")).unwrap_or_default(),
        ));
        s.push_str(&format!(
            "{:<10} {:>8} {:>7} {:>10} {:>8} {:>12}\n",
            "stage", "items", "failed", "busy s", "busy %", "items/busy s"
        ));
        for st in &self.stages {
            s.push_str(&format!(
                "{:<10} {:>8} {:>7} {:>10.2} {:>7.0}% {:>12.2}\n",
                st.stage,
                st.items,
                st.failed,
                st.busy_s,
                st.busy_share * 100.0,
                st.items_per_busy_s
            ));
        }
        for e in self.errors.iter().take(10) {
            s.push_str(&format!(
                "failed: frame {} ({}): {}\n",
                e.frame, e.stage, e.error
            ));
        }
        if self.errors.len() > 10 {
            s.push_str(&format!(
                "... and {} more failures (see report.json)\n",
                self.errors.len() - 10
            ));
        }
        s
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
