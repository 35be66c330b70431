//! The stages run as one supervised set. The first stage to fail or panic records its error, sets the
//! stop flag and closes every queue: producers blocked on a full queue get an error instead of waiting
//! forever, consumers drain what is queued and end, and the sink stage still closes its files. The run
//! then ends with that one error, whatever the other stages were doing.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

type Closer = Box<dyn Fn() + Send + Sync>;

/// The stop flag, the queues and the first failure of a run.
pub(super) struct Supervisor {
    stop: Arc<AtomicBool>,
    fatal: Mutex<Option<Error>>,
    closers: Mutex<Vec<Closer>>,
}

impl Supervisor {
    pub fn new(stop: Arc<AtomicBool>) -> Arc<Self> {
        Arc::new(Supervisor {
            stop,
            fatal: Mutex::new(None),
            closers: Mutex::new(Vec::new()),
        })
    }

    /// Registers a queue to close when a stage fails.
    pub fn queue<T: Send + 'static>(&self, rx: &async_channel::Receiver<T>) {
        let rx = rx.clone();
        self.closers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(move || {
                rx.close();
            }));
    }

    /// Records `e` (the first one wins) and stops the run: every queue closed, the source told to stop.
    pub fn fail(&self, e: Error) {
        self.fail_soft(e);
        for close in self
            .closers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            close();
        }
    }

    /// Records `e` as the run's error (the first one wins) without closing the queues: the frames in
    /// flight are still finished (an error policy that ends the run, say).
    pub fn fail_soft(&self, e: Error) {
        self.fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(e);
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn take_error(&self) -> Option<Error> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Runs a blocking stage on tokio's blocking pool under supervision: its error or panic fails the run.
    /// The handle gives the stage's value, or `None` when it failed.
    pub fn spawn<T, F>(
        self: &Arc<Self>,
        stage: &'static str,
        f: F,
    ) -> tokio::task::JoinHandle<Option<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let sup = self.clone();
        tokio::task::spawn_blocking(move || match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                sup.fail(e);
                None
            }
            Err(panic) => {
                sup.fail(panicked(stage, panic.as_ref()));
                None
            }
        })
    }
}

/// The error a panic in `stage` becomes.
pub(super) fn panicked(stage: &str, payload: &(dyn Any + Send)) -> Error {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    Error::Runtime(format!(
        "the {stage} stage panicked ({what}); the run was stopped and the frames finished before it \
         were written (please report this as a bug)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_closes_every_queue_and_the_first_error_wins() {
        let stop = Arc::new(AtomicBool::new(false));
        let sup = Supervisor::new(stop.clone());
        let (tx, rx) = async_channel::bounded::<u32>(1);
        sup.queue(&rx);
        tx.send_blocking(1).unwrap();
        sup.fail(Error::Runtime("first".into()));
        sup.fail(Error::Runtime("second".into()));
        assert!(stop.load(Ordering::SeqCst));
        // A producer no longer blocks on the full queue; the consumer still gets what was queued.
        assert!(tx.send_blocking(2).is_err());
        assert_eq!(rx.recv_blocking().ok(), Some(1));
        assert!(rx.recv_blocking().is_err());
        assert_eq!(sup.take_error().unwrap().to_string(), "first");
    }

    #[test]
    fn a_panicking_stage_becomes_the_run_error() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let sup = Supervisor::new(Arc::new(AtomicBool::new(false)));
        let got = rt.block_on(async {
            sup.spawn("track", || -> Result<u32> { panic!("boom") })
                .await
        });
        assert_eq!(got.unwrap(), None);
        let e = sup.take_error().unwrap().to_string();
        assert!(e.contains("the track stage panicked (boom)"), "{e}");
        let ok = rt.block_on(async { sup.spawn("sinks", || Ok(7)).await });
        assert_eq!(ok.unwrap(), Some(7));
    }
}
