//! The one async task of a run: turns Ctrl-C and SIGTERM into a clean stop, publishes the queue depths
//! as metrics, and shows progress, until the run tells it that the stages are done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stats::{StageStats, QUEUE_DEPTH};

/// A queue's name and how to read its depth.
pub(super) type Depth = (&'static str, Box<dyn Fn() -> usize + Send>);

pub(super) struct Watch {
    pub stop: Arc<AtomicBool>,
    /// Set by the run once every stage has ended.
    pub done: Arc<AtomicBool>,
    pub queues: Vec<Depth>,
    /// The sink stage's counts (frames written).
    pub written: Arc<StageStats>,
    pub progress: bool,
    pub signals: bool,
}

pub(super) fn spawn(w: Watch) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = progress_bar(w.progress);
        let mut last_log = Instant::now();
        // Each signal's future is made once and polled until it fires (a new `ctrl_c()` per tick would
        // re-register the handler every 200 ms).
        let ctrl_c = async {
            if w.signals {
                let _ = tokio::signal::ctrl_c().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(ctrl_c);
        let term = terminate(w.signals);
        tokio::pin!(term);
        let (mut interrupted, mut terminated) = (false, false);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = &mut ctrl_c, if !interrupted => {
                    interrupted = true;
                    tracing::warn!("interrupted: finishing the frames in flight and closing files");
                    w.stop.store(true, Ordering::SeqCst);
                }
                _ = &mut term, if !terminated => {
                    terminated = true;
                    tracing::warn!("terminated: finishing the frames in flight and closing files");
                    w.stop.store(true, Ordering::SeqCst);
                }
            }
            for (name, depth) in &w.queues {
                metrics::gauge!(QUEUE_DEPTH, "queue" => *name).set(depth() as f64);
            }
            let n = w.written.items();
            if let Some(b) = &bar {
                b.set_position(n);
            } else if w.progress && last_log.elapsed() > Duration::from_secs(5) {
                tracing::info!("{n} frames written");
                last_log = Instant::now();
            }
            if w.done.load(Ordering::SeqCst) {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                break;
            }
        }
    })
}

/// Resolves on SIGTERM (Unix, when `enabled`); never otherwise.
async fn terminate(enabled: bool) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Some(mut s) = enabled
            .then(|| signal(SignalKind::terminate()).ok())
            .flatten()
        {
            s.recv().await;
            return;
        }
    }
    let _ = enabled;
    std::future::pending::<()>().await
}

fn progress_bar(enabled: bool) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos} frames {per_sec} [{elapsed_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}
