//! The one place that leaves Python for heavy work: the work runs on a worker thread while the calling thread
//! waits with the GIL released, wakes to run callbacks on the caller's thread, and turns Ctrl-C into
//! `KeyboardInterrupt` (setting the cancel flag so the core stops starting new work). Both helpers take work that
//! returns the core `Result` and return the bindings' [`Result`] with the error already converted, so a call
//! site needs one `?`.

use crate::errors::{Error, Result};
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// How often the waiting thread checks for signals when no event arrives.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Runs `work` without the GIL. `work` gets a `notify(event)` function; each notification is delivered to
/// `on_event` on the calling thread, with the GIL held. If `on_event` (or a signal) raises, `cancel` is set,
/// the remaining events are dropped, and that exception is returned once `work` has returned (it takes
/// precedence over the error of `work`, typically `Cancelled`). Otherwise the outcome of `work` is returned.
pub fn run_detached<T, V, W, E>(
    py: Python<'_>,
    cancel: &AtomicBool,
    work: W,
    mut on_event: E,
) -> Result<T>
where
    T: Send,
    V: Send,
    W: FnOnce(&(dyn Fn(V) + Sync)) -> arrow_quant::Result<T> + Send,
    E: FnMut(V) -> PyResult<()>,
{
    let (tx, rx) = mpsc::channel::<V>();
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            let notify = move |i: V| {
                // The receiver lives until the worker ends; a failed send only means nobody listens.
                let _ = tx.send(i);
            };
            work(&notify)
        });
        let mut failure: Option<PyErr> = None;
        let mut rx = rx;
        loop {
            let (back, message) = py.detach(move || {
                let m = rx.recv_timeout(SIGNAL_POLL);
                (rx, m)
            });
            rx = back;
            let outcome = match message {
                Ok(index) if failure.is_none() => on_event(index),
                Ok(_) => Ok(()),
                Err(RecvTimeoutError::Timeout) => py.check_signals(),
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Err(e) = outcome {
                cancel.store(true, Ordering::Relaxed);
                failure.get_or_insert(e);
            }
        }
        let outcome = match worker.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match failure {
            Some(e) => Err(Error::Python(e)),
            None => outcome.map_err(Error::Core),
        }
    })
}

/// Runs `work` on this thread without the GIL, for calls that report no progress and take milliseconds to
/// seconds (a pending Ctrl-C is raised by Python when the call returns). It spares the worker thread that
/// [`run_detached`] starts, which would be a measurable share of a small call. Returns the outcome of `work`,
/// its core error converted.
pub fn without_gil<T: Send>(
    py: Python<'_>,
    work: impl FnOnce() -> arrow_quant::Result<T> + Send,
) -> Result<T> {
    py.detach(work).map_err(Error::Core)
}
