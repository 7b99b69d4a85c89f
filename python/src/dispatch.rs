//! Hands callbacks and log records from the runtime's threads to one Python thread.
//!
//! Runtime threads never touch Python: they push items on this queue, and a daemon thread owned
//! by the package (`etcd_registry/_dispatch.py`) takes them, calls the callbacks and logs the
//! records, holding the GIL only while it does. So a callback may block or call back into the
//! library without stalling the runtime, and interpreter shutdown never finds a runtime thread
//! waiting for the GIL.
//!
//! After `fork()` the child gets a fresh queue: the parent's may be locked by a thread that does
//! not exist in the child.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::types::{PyStatusEvent, PyWatchEvent, StatusContext};

/// Log records waiting beyond this many are dropped (and counted) rather than piling up while
/// the dispatch thread is busy in a slow callback.
const MAX_PENDING_LOGS: usize = 10_000;
/// Items handed to Python per call of `take`.
const MAX_BATCH: usize = 256;

pub(crate) enum Item {
    Log {
        level: i32,
        message: String,
    },
    Status {
        callback: Arc<Py<PyAny>>,
        context: Arc<StatusContext>,
        event: registry::StatusEvent,
    },
    Watch {
        callback: Arc<Py<PyAny>>,
        /// Cleared by `Watch.close()`: events still queued are then dropped, not delivered.
        active: Arc<AtomicBool>,
        event: registry::WatchEvent,
    },
}

struct Queue {
    pid: u32,
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    logs: usize,
    dropped_logs: u64,
    /// Interpreter exit: deliver what is queued, then stop.
    draining: bool,
    /// Stopped: nothing more is delivered.
    stopped: bool,
}

static CURRENT: AtomicPtr<Queue> = AtomicPtr::new(std::ptr::null_mut());

/// This process's queue.
fn queue() -> &'static Queue {
    let pid = std::process::id();
    loop {
        let current = CURRENT.load(Ordering::Acquire);
        // SAFETY: queues are leaked, never freed, once published.
        if let Some(queue) = unsafe { current.as_ref() } {
            if queue.pid == pid {
                return queue;
            }
        }
        let fresh = Box::into_raw(Box::new(Queue {
            pid,
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
        }));
        // The parent's queue is leaked on purpose: see the module docs.
        if CURRENT
            .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: `fresh` was never published.
            drop(unsafe { Box::from_raw(fresh) });
        }
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Queues an item for the dispatch thread. Dropped once the dispatcher has stopped (the
/// interpreter is exiting).
pub(crate) fn push(item: Item) {
    let queue = queue();
    let mut state = queue.lock();
    if state.stopped {
        return;
    }
    if matches!(item, Item::Log { .. }) {
        if state.logs >= MAX_PENDING_LOGS {
            state.dropped_logs += 1;
            return;
        }
        state.logs += 1;
    }
    state.items.push_back(item);
    drop(state);
    queue.ready.notify_one();
}

/// Waits up to `timeout` for items and takes them; `None` once stopped, or drained.
fn take_batch(timeout: Duration) -> Option<(Vec<Item>, u64)> {
    let queue = queue();
    let state = queue.lock();
    let (mut state, _) = queue
        .ready
        .wait_timeout_while(state, timeout, |s| {
            s.items.is_empty() && !s.stopped && !s.draining
        })
        .unwrap_or_else(|p| p.into_inner());
    if state.stopped || (state.draining && state.items.is_empty()) {
        state.stopped = true;
        return None;
    }
    let n = state.items.len().min(MAX_BATCH);
    let batch: Vec<Item> = state.items.drain(..n).collect();
    let logs = batch
        .iter()
        .filter(|i| matches!(i, Item::Log { .. }))
        .count();
    state.logs -= logs;
    let dropped = std::mem::take(&mut state.dropped_logs);
    Some((batch, dropped))
}

/// Item kinds as the dispatch thread sees them: `(LOG, level, message)` or
/// `(CALL, callback, event)`.
pub(crate) const LOG: u8 = 0;
pub(crate) const CALL: u8 = 1;

/// Waits (GIL released) up to `timeout` seconds for work and returns it as tuples; `None` once
/// the dispatcher has been stopped.
#[pyfunction]
pub(crate) fn _take(py: Python<'_>, timeout: f64) -> PyResult<Option<Vec<Py<PyTuple>>>> {
    let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
    let Some((batch, dropped)) = py.detach(|| take_batch(timeout)) else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(batch.len() + 1);
    if dropped > 0 {
        let message =
            format!("{dropped} log records were dropped while the dispatch thread was busy");
        out.push((LOG, 30, message).into_pyobject(py)?.unbind());
    }
    for item in batch {
        let tuple = match item {
            Item::Log { level, message } => (LOG, level, message).into_pyobject(py)?,
            Item::Status {
                callback,
                context,
                event,
            } => {
                let event = PyStatusEvent::new(py, &context, event);
                (CALL, callback.clone_ref(py), event).into_pyobject(py)?
            }
            Item::Watch { active, .. } if !active.load(Ordering::SeqCst) => continue,
            Item::Watch {
                callback, event, ..
            } => {
                let event = PyWatchEvent::from(event);
                (CALL, callback.clone_ref(py), event).into_pyobject(py)?
            }
        };
        out.push(tuple.unbind());
    }
    Ok(Some(out))
}

/// Stops the dispatcher. With `drain`, `_take` first hands out what is queued (callbacks of a
/// registry closed just before exit still run), then returns `None`; without, it returns `None`
/// at once and queued items are dropped.
#[pyfunction]
#[pyo3(signature = (drain=false))]
pub(crate) fn _stop_dispatch(drain: bool) {
    let queue = queue();
    let mut state = queue.lock();
    if drain {
        state.draining = true;
    } else {
        state.stopped = true;
        state.items.clear();
        state.logs = 0;
    }
    drop(state);
    queue.ready.notify_all();
}
