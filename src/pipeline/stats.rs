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
/// Histogram: seconds from a frame's decoding to its last sink write.
pub const FRAME_LATENCY: &str = "vprompt_frame_latency_seconds";

/// Frame latencies in 1 ms buckets up to 60 s (plus one overflow bucket): fixed memory, any run length.
pub struct LatencyHistogram {
    buckets: Vec<u32>,
    max_ms: f64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: vec![0; 60_001],
            max_ms: 0.0,
        }
    }
}

impl LatencyHistogram {
    /// Adds one frame's latency and records it in the `vprompt_frame_latency_seconds` histogram.
    pub fn record(&mut self, d: Duration) {
        let ms = d.as_secs_f64() * 1e3;
        self.max_ms = self.max_ms.max(ms);
        let i = (ms as usize).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        metrics::histogram!(FRAME_LATENCY).record(d.as_secs_f64());
    }

    /// The `q` quantile in ms (upper edge of its bucket), `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().map(|&c| c as u64).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c as u64;
            if seen >= rank {
                return Some(((i + 1) as f64).min(self.max_ms.max(1.0)));
            }
        }
        Some(self.max_ms)
    }

    /// The largest latency recorded, in ms (0 when empty).
    pub fn max_ms(&self) -> f64 {
        self.max_ms
    }
}

/// Busy time and item count of one stage (all its workers together).
pub struct StageStats {
    /// Stage name, the `stage` label of its metrics: `source`, `model`, `track` or `sinks`.
    pub name: &'static str,
    items: AtomicU64,
    busy_ns: AtomicU64,
    failed: AtomicU64,
}

impl StageStats {
    /// Empty counts for the stage `name`, shared by its workers.
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

    /// Counts one failed item (and `vprompt_items_failed_total`).
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

    /// Items finished so far.
    pub fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    /// The stage's report for a run that took `wall`.
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

/// Frames between the source and the sinks, with the peak seen. The source waits for a free slot when
/// `bound` frames are alive, so frames waiting in the track stage's reorder buffer (when one worker is
/// slower than another) cannot pile up either.
pub struct InFlight {
    bound: u64,
    now: std::sync::Mutex<u64>,
    freed: std::sync::Condvar,
    peak: AtomicU64,
}

impl InFlight {
    /// A gate of `bound` slots (at least 1), none taken.
    pub fn new(bound: u64) -> Self {
        InFlight {
            bound: bound.max(1),
            now: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
            peak: AtomicU64::new(0),
        }
    }

    /// Takes a slot, waiting while all are taken; gives up (returns false) once `stop` is set.
    pub fn enter(&self, stop: &std::sync::atomic::AtomicBool) -> bool {
        let mut n = self.now.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= self.bound {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            n = self
                .freed
                .wait_timeout(n, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *n += 1;
        self.peak.fetch_max(*n, Ordering::SeqCst);
        metrics::gauge!(IN_FLIGHT).set(*n as f64);
        true
    }

    /// Frees a slot once a frame has left the sinks (written or failed) and wakes a waiting source.
    pub fn leave(&self) {
        let mut n = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        metrics::gauge!(IN_FLIGHT).set(*n as f64);
        self.freed.notify_one();
    }

    /// The most slots taken at once so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// The number of slots.
    pub fn bound(&self) -> u64 {
        self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_one_ms_buckets() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for ms in [1u64, 2, 3, 4, 100] {
            h.record(Duration::from_micros(ms * 1000 + 500));
        }
        assert_eq!(h.quantile_ms(0.5), Some(4.0));
        assert_eq!(h.quantile_ms(0.95), Some(100.5));
        assert!((h.max_ms() - 100.5).abs() < 1e-9);
    }
}

/// What one stage did over a run, as in `report.json`'s `stages`.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Stage name: `source`, `model`, `track` or `sinks`.
    pub stage: String,
    /// Items (frames) the stage finished.
    pub items: u64,
    /// Items that failed in this stage.
    pub failed: u64,
    /// Seconds the stage spent in calls, summed over its workers.
    pub busy_s: f64,
    /// Busy time over wall time (can exceed 1 with several workers).
    pub busy_share: f64,
    /// Items the stage finished per second, over its busy time (0 when it was never busy).
    pub items_per_busy_s: f64,
}

/// A failed item: its id and what went wrong.
#[derive(Debug, Clone, Serialize)]
pub struct ItemError {
    /// The frame as `index (name)`: its source index and its file or video frame name.
    pub frame: String,
    /// The stage it failed in: `source`, `model`, `track` or `sinks`.
    pub stage: String,
    /// The error's message.
    pub error: String,
}

/// The end-of-run report, printed and written as JSON beside the outputs.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Frames the source handed on (after `start`, `end`, `stride`, the shard and resumed images).
    pub frames_read: u64,
    /// Frames the sinks finished writing.
    pub frames_written: u64,
    /// Frames that failed at any stage (the length of `errors`).
    pub frames_failed: u64,
    /// Images an earlier, interrupted run had finished (auto-labeling resume); not read again.
    pub frames_resumed: u64,
    /// Wall-clock seconds of the run, from the stages' start to the last sink's end.
    pub wall_s: f64,
    /// Frames written per second of wall time.
    pub fps: f64,
    /// The most frames that were between the source and the sinks at once.
    pub peak_frames_in_flight: u64,
    /// The most frames that may be in flight with this runtime configuration.
    pub in_flight_bound: u64,
    /// Peak resident memory of the process in MiB (Linux `VmHWM`); `None` where it cannot be read.
    pub peak_rss_mib: Option<f64>,
    /// Milliseconds from decoding a frame to writing it: median, 95th percentile, maximum.
    pub latency_ms: [f64; 3],
    /// The run was stopped before its source ended (Ctrl-C, SIGTERM, or a failure); the frames
    /// finished before the stop are written. The CLI exits 130 on an interrupted run.
    pub interrupted: bool,
    /// One report per stage, in pipeline order: `source`, `model`, `track`, `sinks`.
    pub stages: Vec<StageReport>,
    /// Every failed frame, in the order the sinks met them.
    pub errors: Vec<ItemError>,
    /// The files and folders the sinks wrote.
    pub outputs: Vec<String>,
}

impl RunReport {
    /// The report of a run that read `read` frames and wrote what `written` says, in `wall`.
    pub(super) fn new(
        read: u64,
        written: super::stages::Written,
        resumed: u64,
        wall: Duration,
        in_flight: &InFlight,
        interrupted: bool,
        stages: &[Arc<StageStats>],
    ) -> Self {
        let latency = &written.latency;
        RunReport {
            frames_read: read,
            frames_written: written.frames,
            frames_failed: written.errors.len() as u64,
            frames_resumed: resumed,
            wall_s: wall.as_secs_f64(),
            fps: written.frames as f64 / wall.as_secs_f64().max(1e-9),
            peak_frames_in_flight: in_flight.peak(),
            in_flight_bound: in_flight.bound(),
            peak_rss_mib: peak_rss_mib(),
            latency_ms: [
                latency.quantile_ms(0.5).unwrap_or(0.0),
                latency.quantile_ms(0.95).unwrap_or(0.0),
                latency.max_ms(),
            ],
            interrupted,
            stages: stages.iter().map(|s| s.report(wall)).collect(),
            errors: written.errors,
            outputs: written
                .outputs
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        }
    }

    /// A short human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{} frames in {:.2} s ({:.2} frames/s){}{}; {} failed; peak {} frames in flight (bound {}){}\n\
             latency per frame (decode to written): p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms\n",
            self.frames_written,
            self.wall_s,
            self.fps,
            if self.interrupted { ", INTERRUPTED" } else { "" },
            if self.frames_resumed > 0 {
                format!(" after {} done by an earlier run", self.frames_resumed)
            } else {
                String::new()
            },
            self.frames_failed,
            self.peak_frames_in_flight,
            self.in_flight_bound,
            self.peak_rss_mib.map(|m| format!("; peak RSS {m:.0} MiB")).unwrap_or_default(),
            self.latency_ms[0],
            self.latency_ms[1],
            self.latency_ms[2],
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
