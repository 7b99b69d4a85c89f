//! Hands work from the runtime's threads to Python threads owned by the package.
//!
//! Runtime threads never touch Python: they push items on a queue, and daemon threads started by
//! `etcd_registry/_dispatch.py` take them, holding the GIL only while they handle them. Two
//! queues ("lanes"), each with its thread:
//!
//! - callbacks: `on_status` and `on_event` calls and log records, in order. A callback may block
//!   or call back into the library without stalling the runtime. Status and watch events come
//!   from the core's event handlers (`registry::events`: routed from the first event, bounded,
//!   `unregistered` handed over before `unregister()`/`close()` return); this lane is the
//!   Python-owned thread the host needs, so that no library thread ever attaches to a
//!   finalizing interpreter.
//! - asyncio: resolving the asyncio futures of awaited calls (a non-blocking
//!   `call_soon_threadsafe`), apart from the callbacks so that a slow callback, or one waiting
//!   for an awaited call, never holds up an `await`.
//!
//! Both threads stop at interpreter exit (`_stop_dispatch`, from an `atexit` handler), before
//! finalization; nothing is handed to Python after that. So no thread ever attaches to a
//! finalizing interpreter, which CPython answers with crashes or killed threads.
//!
//! After `fork()` the child gets fresh queues: the parent's may be locked by a thread that does
//! not exist in the child.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::types::{PyStatusEvent, PyWatchEvent, StatusContext};

/// Log records waiting beyond this many are dropped (and counted) rather than piling up while
/// the callback thread is busy in a slow callback.
const MAX_PENDING_LOGS: usize = 10_000;
/// Items handled per wake-up.
const MAX_BATCH: usize = 256;

#[derive(Clone, Copy)]
pub(crate) enum Lane {
    Callbacks = 0,
    Asyncio = 1,
}

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
    /// Runs attached to the interpreter, on the asyncio lane's thread.
    Run(Box<dyn FnOnce() + Send>),
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
    /// Interpreter exit: hand out what is queued, then stop.
    draining: bool,
    /// Stopped: nothing more is handed out.
    stopped: bool,
}

static LANES: [AtomicPtr<Queue>; 2] = [
    AtomicPtr::new(std::ptr::null_mut()),
    AtomicPtr::new(std::ptr::null_mut()),
];

/// Set at interpreter exit (by `_stop_dispatch`): from then on nothing may attach to the
/// interpreter, which may be finalizing.
static EXITING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Whether this thread stopped the lanes: the thread that runs the `atexit` handlers.
    static STOPPED_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread must no longer attach to the interpreter: it is exiting, and this is
/// not the thread running its exit handlers (which may still use the library).
pub(crate) fn must_not_attach() -> bool {
    EXITING.load(Ordering::SeqCst) && !STOPPED_HERE.with(|s| s.get())
}

/// This process's queue of `lane`.
fn queue(lane: Lane) -> &'static Queue {
    let slot = &LANES[lane as usize];
    let pid = std::process::id();
    loop {
        let current = slot.load(Ordering::Acquire);
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
        if slot
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

    /// Waits up to `timeout` for items and takes them; `None` once stopped, or drained.
    fn take(&self, timeout: Duration) -> Option<(Vec<Item>, u64)> {
        let state = self.lock();
        let (mut state, _) = self
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

    fn stop(&self, drain: bool) {
        let mut state = self.lock();
        let dropped = if drain {
            state.draining = true;
            VecDeque::new()
        } else {
            state.stopped = true;
            state.logs = 0;
            std::mem::take(&mut state.items)
        };
        drop(state);
        self.ready.notify_all();
        drop(dropped);
    }
}

/// Queues an item for its lane's thread. Dropped once that has stopped (the interpreter is
/// exiting).
pub(crate) fn push(lane: Lane, item: Item) {
    let queue = queue(lane);
    let mut state = queue.lock();
    if state.stopped {
        drop(state);
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

/// Item kinds as the dispatch thread sees them: `(LOG, level, message)` or
/// `(CALL, callback, event)`.
pub(crate) const LOG: u8 = 0;
pub(crate) const CALL: u8 = 1;

/// Waits (GIL released) up to `timeout` seconds for work and returns it as tuples; `None` once
/// the dispatcher has been stopped.
#[pyfunction]
pub(crate) fn _take(py: Python<'_>, timeout: f64) -> PyResult<Option<Vec<Py<PyTuple>>>> {
    let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
    let queue = queue(Lane::Callbacks);
    let Some((batch, dropped)) = py.detach(|| queue.take(timeout)) else {
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
            // Never queued on this lane.
            Item::Run(_) => continue,
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

/// Waits (GIL released) up to `timeout` seconds for asyncio work and does it; `False` once
/// stopped.
#[pyfunction]
pub(crate) fn _complete(py: Python<'_>, timeout: f64) -> bool {
    let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
    let queue = queue(Lane::Asyncio);
    let Some((batch, _)) = py.detach(|| queue.take(timeout)) else {
        return false;
    };
    for item in batch {
        if let Item::Run(work) = item {
            // The bridge's work does not panic; if it did, the next one still runs.
            let _ = catch_unwind(AssertUnwindSafe(work));
        }
    }
    true
}

/// Stops the lanes at interpreter exit, in two steps. With `drain`, the callback lane first
/// hands out what is queued (the callbacks of a registry closed just before exit still run, and
/// may still use the library), then `_take` returns `None`. Without, both lanes stop at once,
/// queued items are dropped, and from then on threads other than this one never attach to the
/// interpreter again (see `must_not_attach`). Asyncio work is never drained: the event loops
/// are done.
#[pyfunction]
#[pyo3(signature = (drain=false))]
pub(crate) fn _stop_dispatch(drain: bool) {
    STOPPED_HERE.with(|s| s.set(true));
    if drain {
        queue(Lane::Callbacks).stop(true);
        return;
    }
    EXITING.store(true, Ordering::SeqCst);
    queue(Lane::Callbacks).stop(false);
    queue(Lane::Asyncio).stop(false);
}
