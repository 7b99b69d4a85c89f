//! Hands work from the runtime's threads to Python threads owned by the package.
//!
//! Runtime threads never touch Python. Daemon threads started by `etcd_registry/_dispatch.py`
//! take the work, holding the GIL only while they handle it:
//!
//! - the callback thread (`etcd_registry-dispatch`) runs `on_status` and `on_event` callbacks
//!   and logs the core's records. Status and watch events have **no queue of their own** here:
//!   every registration and watch made with a callback is routed ([`registry::Route::stream`])
//!   to one core [`EventStream`] per process, and this thread pulls it. So the backpressure
//!   policy is the core's (`core/src/events.rs`): past [`registry::EVENT_QUEUE_CAPACITY`]
//!   unread events a watch's events are merged per node, and of status events the oldest that
//!   is not final is dropped and counted (`etcd_registry.dropped_events()`), `unregistered`
//!   never. The thread takes one event at a
//!   time, so "which callback is running" is known here, and the guarantees are kept on top of
//!   the stream: `unregister()`/`close()` return once `unregistered` has been delivered (from
//!   inside a callback, what is queued is delivered nested, before they return), and once a
//!   watch's `close()` (or its registry's) returns, no callback of that watch runs or starts.
//! - log records: a lane of their own (bounded, [`MAX_PENDING_LOGS`]), served by the same
//!   thread: the host needs them on a Python thread, as `logging` handlers may block.
//! - asyncio: resolving the asyncio futures of awaited calls (a non-blocking
//!   `call_soon_threadsafe`) on a second thread (`etcd_registry-asyncio`), apart from the
//!   callbacks so that a slow callback, or one waiting for an awaited call, never holds up an
//!   `await`. A lane of its own: one item per awaited call, bounded by the calls in flight.
//!
//! Both threads stop at interpreter exit (`_stop_dispatch`, from an `atexit` handler registered
//! when the package is imported), before finalization; nothing is handed to Python after that.
//! A thread that is detached from the interpreter then (the asyncio thread once its work is
//! done, a callback thread left behind by a callback that outlasted the exit grace, once that
//! returns, any thread blocked in the library) stays detached until the process ends
//! ([`stay_detached_if_exiting`]). So no thread ever attaches to a finalizing interpreter,
//! which CPython answers with crashes or killed threads. An awaited
//! call made after that (in an `atexit` handler that runs after the package's) runs on the
//! caller's thread and is settled before it returns (see `asyncio::future_into_py_claimed`).
//!
//! After `fork()` the child gets fresh lanes and a fresh event stream: the parent's may be
//! locked by a thread that does not exist in the child.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use pyo3::exceptions::PyBaseException;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use registry::events::Next;
use registry::{Event, EventStream, Route};

use crate::types::{PyStatusEvent, PyWatchEvent, StatusContext};

/// Log records waiting beyond this many are dropped (and counted) rather than piling up while
/// the callback thread is busy in a slow callback.
const MAX_PENDING_LOGS: usize = 10_000;
/// Items handled per wake-up.
const MAX_BATCH: usize = 256;
/// How long a waiting `unregister()`/`close()` stays away from Python at a time (Ctrl-C).
const SLICE: Duration = Duration::from_millis(100);

#[derive(Clone, Copy)]
pub(crate) enum Lane {
    Logs = 0,
    Asyncio = 1,
}

pub(crate) enum Item {
    Log {
        level: i32,
        message: String,
    },
    /// Runs attached to the interpreter, on the asyncio lane's thread.
    Run(Box<dyn FnOnce() + Send>),
}

struct Queue {
    pid: u32,
    state: Mutex<State>,
    ready: Condvar,
    /// Signalled when a batch taken by [`Queue::take`] has been handled (`State::busy`).
    idle: Condvar,
    /// Wakes the callback thread, which waits for logs and events at once.
    notify: tokio::sync::Notify,
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
    /// A batch taken by [`Queue::take`] is being handled, attached to the interpreter.
    busy: bool,
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
    /// The process in which this thread is the callback thread (0: it is not).
    static CALLBACK_THREAD_OF: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether this thread must no longer attach to the interpreter: it is exiting, and this is
/// not the thread running its exit handlers (which may still use the library).
pub(crate) fn must_not_attach() -> bool {
    EXITING.load(Ordering::SeqCst) && !STOPPED_HERE.with(|s| s.get())
}

/// The last step of every stretch a library thread spends detached from the interpreter (GIL
/// released): once it must not attach again ([`must_not_attach`]), the thread waits here for
/// the process to end instead of returning into the interpreter. Attaching could meet
/// finalization, which ends the thread in the middle of Rust code (`pthread_exit`, and pyo3
/// aborts the process) or crashes; CPython 3.14 itself leaves such threads waiting.
pub(crate) fn stay_detached_if_exiting() {
    if must_not_attach() {
        loop {
            std::thread::park();
        }
    }
}

/// Whether the calling thread is the package's callback thread (i.e. inside a callback).
pub(crate) fn on_callback_thread() -> bool {
    CALLBACK_THREAD_OF.with(|c| c.get()) == std::process::id()
}

/// This process's one value in `slot`, made by `make` (after fork, the child makes its own).
fn per_process<T>(slot: &AtomicPtr<T>, pid_of: fn(&T) -> u32, make: fn(u32) -> T) -> &'static T {
    let pid = std::process::id();
    loop {
        let current = slot.load(Ordering::Acquire);
        // SAFETY: values are leaked, never freed, once published.
        if let Some(value) = unsafe { current.as_ref() } {
            if pid_of(value) == pid {
                return value;
            }
        }
        let fresh = Box::into_raw(Box::new(make(pid)));
        // The parent's value is leaked on purpose: see the module docs.
        if slot
            .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: `fresh` was never published.
            drop(unsafe { Box::from_raw(fresh) });
        }
    }
}

/// This process's queue of `lane`.
fn queue(lane: Lane) -> &'static Queue {
    per_process(
        &LANES[lane as usize],
        |q| q.pid,
        |pid| Queue {
            pid,
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            idle: Condvar::new(),
            notify: tokio::sync::Notify::new(),
        },
    )
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout` for items and takes them; `None` once stopped, or drained. The
    /// queue is then busy until [`Queue::handled`].
    fn take(&self, timeout: Duration) -> Option<(Vec<Item>, u64)> {
        let state = self.lock();
        let (mut state, _) = self
            .ready
            .wait_timeout_while(state, timeout, |s| {
                s.items.is_empty() && !s.stopped && !s.draining
            })
            .unwrap_or_else(|p| p.into_inner());
        if state.draining && state.items.is_empty() {
            state.stopped = true;
        }
        let taken = Self::take_ready(&mut state);
        state.busy = taken.is_some();
        taken
    }

    /// The batch [`Queue::take`] gave has been handled (or never will be).
    fn handled(&self) {
        self.lock().busy = false;
        self.idle.notify_all();
    }

    /// Takes what is queued without waiting; `None` once stopped.
    fn take_ready(state: &mut State) -> Option<(Vec<Item>, u64)> {
        if state.stopped {
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

    fn has_work(&self) -> bool {
        let state = self.lock();
        !state.items.is_empty() || state.stopped || state.draining
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
        self.notify.notify_one();
        drop(dropped);
    }
}

/// Whether the asyncio lane has stopped (interpreter exit): nothing resolves an awaited call's
/// future from now on.
pub(crate) fn asyncio_stopped() -> bool {
    queue(Lane::Asyncio).lock().stopped
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
    queue.notify.notify_one();
}

/// Who receives the events of one registration or watch made with a callback.
#[derive(Clone)]
pub(crate) enum Target {
    Status {
        callback: Arc<Py<PyAny>>,
        context: Arc<StatusContext>,
    },
    Watch {
        callback: Arc<Py<PyAny>>,
    },
}

/// The callbacks' side of the callback thread: the process's event stream and who gets what.
pub(crate) struct Callbacks {
    pid: u32,
    stream: EventStream,
    state: Mutex<Targets>,
    /// Signalled when a callback returns, a target is added or removed, or the thread stops
    /// (with `changed_async`, through [`Callbacks::signal`]).
    changed: Condvar,
    /// `changed` for the asyncio forms (`unregister_async`, `close_async`), which wait on the
    /// library's runtime, not in a thread.
    changed_async: tokio::sync::Notify,
}

struct Entry {
    target: Target,
    /// The `PyRegistry` that made it (see [`registry_token`]).
    registry: u64,
    /// A watch's core watch, kept running here until its `close()` or its registry's, even once
    /// its `Watch` and `Registry` objects are gone. Here, in the per-process state, a forked
    /// child never drops it (see [`per_process`]). Only held: dropping it stops the watch.
    #[allow(dead_code)]
    watch: Option<Arc<registry::Watch>>,
}

#[derive(Default)]
struct Targets {
    by_id: HashMap<u64, Entry>,
    /// Registrations and watches being made: their first events may come before their id is
    /// known here, and wait for it.
    creating: usize,
    /// The id and registry of each event whose callback runs now, outermost first: a callback
    /// that calls `unregister()` or `close()` runs the queued callbacks nested, on the same
    /// thread, and is still running while they do.
    running: Vec<(u64, u64)>,
    stopped: bool,
}

impl Targets {
    /// Whether a callback of the registration or watch `id` is running (maybe under a nested
    /// one).
    fn runs_id(&self, id: u64) -> bool {
        self.running.iter().any(|&(running, _)| running == id)
    }

    /// Whether a callback of the registry `registry` is running (maybe under a nested one).
    fn runs_registry(&self, registry: u64) -> bool {
        self.running.iter().any(|&(_, r)| r == registry)
    }
}

static CALLBACKS: AtomicPtr<Callbacks> = AtomicPtr::new(std::ptr::null_mut());

/// This process's callbacks.
pub(crate) fn callbacks() -> &'static Callbacks {
    per_process(
        &CALLBACKS,
        |c| c.pid,
        |pid| Callbacks {
            pid,
            stream: EventStream::new(),
            state: Mutex::new(Targets::default()),
            changed: Condvar::new(),
            changed_async: tokio::sync::Notify::new(),
        },
    )
}

/// A token naming one `PyRegistry`, so that its `close()` knows its callbacks.
pub(crate) fn registry_token() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One event handed to the callback thread.
struct Delivery {
    target: Target,
    event: Event,
}

/// A registration or watch being made with a callback: its first events wait (on the callback
/// thread) until [`Creating::done`] says whose they are, or until it is dropped (it failed).
pub(crate) struct Creating {
    callbacks: &'static Callbacks,
    registry: u64,
}

impl Creating {
    /// The registration or watch `id` was made: its events go to `target`. A watch is kept
    /// running (`watch`) until it is forgotten ([`drop_watch`], [`finish_registry`]).
    pub(crate) fn done(self, id: u64, target: Target, watch: Option<Arc<registry::Watch>>) {
        let entry = Entry {
            target,
            registry: self.registry,
            watch,
        };
        let replaced = self.callbacks.lock().by_id.insert(id, entry);
        // (Ids are unique: nothing is replaced. Were it, it would be dropped unlocked.)
        drop(replaced);
        // `Drop` counts it out and wakes the thread.
    }
}

impl Creating {
    /// [`Creating::done`] for a watch of the registry `core`, which may have been closed after
    /// the watch was made and before this: that close forgot the registry's watches
    /// (`forget_registry_watches`) before this entry existed, and would wait for ever for an
    /// entry added now. Then the watch is stopped and its callback never runs. Checked under
    /// the lock: a close that forgets the watches after this sees the entry, as the registry is
    /// marked closed before its watches are forgotten.
    pub(crate) fn watch_done(
        self,
        id: u64,
        target: Target,
        watch: Arc<registry::Watch>,
        core: &registry::Registry,
    ) {
        let entry = Entry {
            target,
            registry: self.registry,
            watch: Some(watch.clone()),
        };
        let mut state = self.callbacks.lock();
        let closed = core.is_closed();
        let dropped = if closed {
            Some(entry)
        } else {
            // (Ids are unique: nothing is replaced.)
            state.by_id.insert(id, entry)
        };
        drop(state);
        if closed {
            watch.cancel();
        }
        // Dropped unlocked: a callback freed here may have a `__del__` that calls the library.
        drop(dropped);
        // `Drop` counts it out and wakes the thread.
    }
}

impl Drop for Creating {
    fn drop(&mut self) {
        self.callbacks.lock().creating -= 1;
        self.callbacks.signal();
    }
}

impl Callbacks {
    fn lock(&self) -> MutexGuard<'_, Targets> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every waiter for a change of the state, blocked or async.
    fn signal(&self) {
        self.changed.notify_all();
        self.changed_async.notify_waiters();
    }

    /// Where registrations and watches with a callback send their events.
    pub(crate) fn route(&self) -> Route {
        Route::stream(&self.stream)
    }

    /// Announces a registration or watch with a callback, made by the registry `registry`.
    pub(crate) fn creating(&'static self, registry: u64) -> Creating {
        self.lock().creating += 1;
        Creating {
            callbacks: self,
            registry,
        }
    }

    /// Who gets `event`, marking it as running (on top of those running already, when nested);
    /// `None` for an event nobody gets any more (a watch closed meanwhile). Waits while its id
    /// may still be being made.
    fn resolve(&self, event: Event) -> Option<Delivery> {
        let id = event.id();
        let mut state = self.lock();
        loop {
            if state.stopped {
                return None;
            }
            if state.by_id.contains_key(&id) {
                break;
            }
            if state.creating == 0 {
                return None;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let (target, registry, removed) = if event.is_final() {
            let entry = state.by_id.remove(&id)?;
            (entry.target.clone(), entry.registry, Some(entry))
        } else {
            let entry = state.by_id.get(&id)?;
            (entry.target.clone(), entry.registry, None)
        };
        state.running.push((id, registry));
        drop(state);
        drop(removed);
        Some(Delivery { target, event })
    }

    /// The callback handed out last by `_take` has returned: none runs now.
    fn returned(&self) {
        let mut state = self.lock();
        if !state.running.is_empty() {
            state.running.clear();
            drop(state);
            self.signal();
        }
    }

    fn stop(&self) {
        let mut state = self.lock();
        state.stopped = true;
        state.running.clear();
        drop(state);
        self.signal();
    }
}

/// Item kinds as the dispatch thread sees them: `(LOG, level, message)` or
/// `(CALL, callback, event)`.
pub(crate) const LOG: u8 = 0;
pub(crate) const CALL: u8 = 1;

/// What the callback thread waits for.
enum Work {
    Event(Event),
    /// Logs were queued, or the wait timed out.
    Other,
    /// The stream ended (interpreter exit): only logs are left.
    Ended,
}

/// Waits (no GIL) up to `timeout` for an event or for logs.
fn wait_for_work(callbacks: &Callbacks, logs: &Queue, timeout: Duration) -> Work {
    let next = |next: Next| match next {
        Next::Event(event) => Some(Work::Event(event)),
        Next::Closed => Some(Work::Ended),
        Next::Empty => None,
    };
    if let Some(work) = next(callbacks.stream.try_next()) {
        return work;
    }
    let waited = registry::runtime::block_on(async {
        let notified = logs.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if logs.has_work() {
            return Work::Other;
        }
        let event = async {
            match callbacks.stream.next().await {
                Some(event) => Work::Event(event),
                None => Work::Ended,
            }
        };
        let either = async {
            tokio::select! {
                work = event => work,
                _ = notified => Work::Other,
            }
        };
        tokio::time::timeout(timeout, either)
            .await
            .unwrap_or(Work::Other)
    });
    // Without the runtime (it could not start), fall back to waiting for logs alone.
    waited.unwrap_or_else(|_| {
        let state = logs.lock();
        drop(
            logs.ready
                .wait_timeout_while(state, timeout, |s| s.items.is_empty() && !s.stopped)
                .unwrap_or_else(|p| p.into_inner()),
        );
        Work::Other
    })
}

fn call_tuple<'py>(py: Python<'py>, delivery: Delivery) -> PyResult<Bound<'py, PyTuple>> {
    match (delivery.target, delivery.event) {
        (Target::Status { callback, context }, Event::Status { event, .. }) => {
            let event = PyStatusEvent::new(py, &context, event);
            (CALL, callback.clone_ref(py), event).into_pyobject(py)
        }
        (Target::Watch { callback }, Event::Watch { event, .. }) => {
            let event = PyWatchEvent::from(event);
            (CALL, callback.clone_ref(py), event).into_pyobject(py)
        }
        // A status event to a watch's callback or the reverse: ids are unique, never happens.
        _ => Err(pyo3::exceptions::PyRuntimeError::new_err(
            "an event reached the wrong kind of callback",
        )),
    }
}

/// What `_take` hands out: the logs queued, how many were dropped, and at most one callback
/// call. `None` once the dispatcher has been stopped. Runs detached from the interpreter.
fn take_work(
    callbacks: &Callbacks,
    logs: &Queue,
    timeout: Duration,
) -> Option<(Vec<Item>, u64, Option<Delivery>)> {
    callbacks.returned();
    let (delivery, ended) = match wait_for_work(callbacks, logs, timeout) {
        Work::Event(event) => (callbacks.resolve(event), false),
        Work::Ended => (None, true),
        Work::Other => (None, false),
    };
    let mut state = logs.lock();
    // At exit, stop once the stream is drained and the last logs are handed out.
    if state.stopped || (state.draining && ended && state.items.is_empty()) {
        state.stopped = true;
        drop(state);
        callbacks.stop();
        return None;
    }
    let (batch, dropped) = Queue::take_ready(&mut state)?;
    Some((batch, dropped, delivery))
}

/// Waits (GIL released) up to `timeout` seconds for work and returns it as tuples: the logs
/// queued, and at most one callback call (so that which callback runs is known here: it runs
/// until the next `_take`). `None` once the dispatcher has been stopped.
#[pyfunction]
pub(crate) fn _take(py: Python<'_>, timeout: f64) -> PyResult<Option<Vec<Py<PyTuple>>>> {
    let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
    CALLBACK_THREAD_OF.with(|c| c.set(std::process::id()));
    let callbacks = callbacks();
    let logs = queue(Lane::Logs);
    let taken = py.detach(|| {
        let taken = take_work(callbacks, logs, timeout);
        // Past the exit grace (a callback that outlasted it), this thread is left behind.
        stay_detached_if_exiting();
        taken
    });
    let Some((batch, dropped, delivery)) = taken else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(batch.len() + 2);
    if dropped > 0 {
        let message =
            format!("{dropped} log records were dropped while the dispatch thread was busy");
        out.push((LOG, 30, message).into_pyobject(py)?.unbind());
    }
    for item in batch {
        if let Item::Log { level, message } = item {
            out.push((LOG, level, message).into_pyobject(py)?.unbind());
        }
    }
    if let Some(delivery) = delivery {
        out.push(call_tuple(py, delivery)?.unbind());
    }
    Ok(Some(out))
}

/// Hands `exc`, raised by `callback` (or about it), to `sys.unraisablehook`, which by default
/// prints it with its traceback as "Exception ignored in: <callback>". For when no logging
/// handler would show the record (see `_report` in `etcd_registry/_dispatch.py`); Python code
/// cannot call the default hook itself (it takes only its own argument type, which `sys` does
/// not export).
#[pyfunction]
pub(crate) fn _write_unraisable(exc: Bound<'_, PyBaseException>, callback: Bound<'_, PyAny>) {
    PyErr::from_value(exc.into_any()).write_unraisable(callback.py(), Some(&callback));
}

/// How many status events were dropped, in this process, because the callback thread fell
/// [`registry::EVENT_QUEUE_CAPACITY`] of them behind (a watch's events are merged, never dropped).
#[pyfunction]
pub(crate) fn _dropped_events() -> u64 {
    callbacks().stream.dropped()
}

/// Waits, GIL released, until `done` holds for the callbacks' state; on the callback thread
/// (inside a callback) delivers the queued events here, nested, instead. Returns early once the
/// thread has stopped (interpreter exit), and on Ctrl-C with `KeyboardInterrupt`.
fn wait_until(py: Python<'_>, done: impl Fn(&Targets, bool) -> bool + Sync) -> PyResult<()> {
    let callbacks = callbacks();
    if on_callback_thread() {
        return deliver_nested(py, callbacks, |state| done(state, true));
    }
    loop {
        let finished = py.detach(|| {
            let state = callbacks.lock();
            let (state, _) = callbacks
                .changed
                .wait_timeout_while(state, SLICE, |s| !s.stopped && !done(s, false))
                .unwrap_or_else(|p| p.into_inner());
            let finished = state.stopped || done(&state, false);
            drop(state);
            // A daemon thread while the interpreter exits: never attach again.
            stay_detached_if_exiting();
            finished
        });
        if finished {
            return Ok(());
        }
        py.check_signals()?;
    }
}

/// On the callback thread: delivers queued events, in order, until `done` holds or nothing is
/// queued. The callbacks running now (the caller's, and those it runs nested in) stay recorded
/// as running under each nested one, so that a `close()` on another thread still waits for
/// them.
fn deliver_nested(
    py: Python<'_>,
    callbacks: &Callbacks,
    done: impl Fn(&Targets) -> bool,
) -> PyResult<()> {
    let deliver = py.import("etcd_registry._dispatch")?.getattr("_deliver")?;
    let depth = callbacks.lock().running.len();
    loop {
        if done(&callbacks.lock()) {
            return Ok(());
        }
        let Next::Event(event) = callbacks.stream.try_next() else {
            return Ok(());
        };
        let delivery = py.detach(|| {
            let delivery = callbacks.resolve(event);
            // Past the exit grace (a callback that outlasted it), this thread is left behind.
            stay_detached_if_exiting();
            delivery
        });
        let Some(delivery) = delivery else {
            continue;
        };
        let call = call_tuple(py, delivery);
        let result = call.and_then(|call| deliver.call1((call,)));
        // The nested callback has returned (`stop` may have cleared the stack meanwhile).
        callbacks.lock().running.truncate(depth);
        callbacks.signal();
        result?;
    }
}

/// After a registration's `unregister()`: returns once its `unregistered` event has been
/// delivered to its callback (nothing to wait for without one).
pub(crate) fn finish_registration(py: Python<'_>, id: u64) -> PyResult<()> {
    wait_until(py, |state, nested| {
        !state.by_id.contains_key(&id) && (nested || !state.runs_id(id))
    })
}

/// Waits on the runtime (no thread blocked) until `done` holds for the callbacks' state, or the
/// callback thread has stopped (interpreter exit).
async fn until(done: impl Fn(&Targets) -> bool) {
    let callbacks = callbacks();
    loop {
        let changed = callbacks.changed_async.notified();
        tokio::pin!(changed);
        // Registered before the state is read, so a signal in between is not missed.
        changed.as_mut().enable();
        {
            let state = callbacks.lock();
            if state.stopped || done(&state) {
                return;
            }
        }
        changed.await;
    }
}

/// `finish_registration` for `unregister_async`: once its `unregistered` event has been
/// delivered to its callback.
pub(crate) async fn registration_finished(id: u64) {
    until(|state| !state.by_id.contains_key(&id) && !state.runs_id(id)).await;
}

/// `finish_registry` for `close_async`.
pub(crate) async fn registry_finished(registry: u64) {
    forget_registry_watches(registry);
    until(|state| {
        !state.by_id.values().any(|e| e.registry == registry) && !state.runs_registry(registry)
    })
    .await;
}

/// A closed registry's watches' callbacks start no more; its registrations' `unregistered`
/// events are still delivered.
pub(crate) fn forget_registry_watches(registry: u64) {
    let callbacks = callbacks();
    let forgotten: Vec<Entry> = {
        let mut state = callbacks.lock();
        let ids: Vec<u64> = state
            .by_id
            .iter()
            .filter(|(_, e)| e.registry == registry && matches!(e.target, Target::Watch { .. }))
            .map(|(id, _)| *id)
            .collect();
        ids.iter().filter_map(|id| state.by_id.remove(id)).collect()
    };
    callbacks.signal();
    // Dropped unlocked: a callback freed here may have a `__del__` that calls the library.
    drop(forgotten);
}

/// No callback of the watch `id` starts from now on, and it is no longer kept running.
/// Does not wait for one that is running.
pub(crate) fn drop_watch(id: u64) {
    let callbacks = callbacks();
    let forgotten = callbacks.lock().by_id.remove(&id);
    callbacks.signal();
    // Dropped unlocked: a callback freed here may have a `__del__` that calls the library.
    drop(forgotten);
}

/// After a watch's `close()` (which dropped it, [`drop_watch`]): returns once a callback of it
/// that is running has returned (unless called from inside it).
pub(crate) fn watch_returned(py: Python<'_>, id: u64) -> PyResult<()> {
    if on_callback_thread() {
        return Ok(());
    }
    wait_until(py, |state, _| !state.runs_id(id))
}

/// `watch_returned` for `close_async` (not called from inside a callback).
pub(crate) async fn watch_finished(id: u64) {
    until(|state| !state.runs_id(id)).await;
}

/// After a registry's `close()`: its watches' callbacks stop, and returns once every
/// `unregistered` of its registrations has been delivered and no callback of it runs (unless
/// called from inside one).
pub(crate) fn finish_registry(py: Python<'_>, registry: u64) -> PyResult<()> {
    forget_registry_watches(registry);
    wait_until(py, |state, nested| {
        !state.by_id.values().any(|e| e.registry == registry)
            && (nested || !state.runs_registry(registry))
    })
}

/// Waits (GIL released) up to `timeout` seconds for asyncio work and does it; `False` once
/// stopped. At interpreter exit, once stopped, it never returns: the thread stays detached
/// (see [`stay_detached_if_exiting`]; `_stop_dispatch` waits for the work it is doing).
#[pyfunction]
pub(crate) fn _complete(py: Python<'_>, timeout: f64) -> bool {
    let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
    let queue = queue(Lane::Asyncio);
    let taken = py.detach(|| {
        let taken = queue.take(timeout);
        if must_not_attach() {
            // Work taken just before the stop is never done: the event loops are done.
            queue.handled();
            stay_detached_if_exiting();
        }
        taken
    });
    let Some((batch, _)) = taken else {
        return false;
    };
    for item in batch {
        if let Item::Run(work) = item {
            // The bridge's work does not panic; if it did, the next one still runs.
            let _ = catch_unwind(AssertUnwindSafe(work));
        }
    }
    queue.handled();
    true
}

/// Stops the lanes at interpreter exit, in two steps. With `drain`, the callback thread first
/// hands out what is queued (the callbacks of a registry closed just before exit still run, and
/// may still use the library; the event stream takes no new events), then `_take` returns
/// `None`. Without, everything stops at once, queued items are dropped, and from then on
/// threads other than this one never attach to the interpreter again (see `must_not_attach`);
/// asyncio work under way (attached to the interpreter, under Rust frames) is waited for, up to
/// `grace` seconds, after which the asyncio thread stays detached for good. Asyncio work is
/// never drained: the event loops are done.
#[pyfunction]
#[pyo3(signature = (drain=false, grace=0.0))]
pub(crate) fn _stop_dispatch(py: Python<'_>, drain: bool, grace: f64) {
    STOPPED_HERE.with(|s| s.set(true));
    if drain {
        callbacks().stream.close();
        queue(Lane::Logs).stop(true);
        return;
    }
    EXITING.store(true, Ordering::SeqCst);
    callbacks().stream.close();
    callbacks().stop();
    queue(Lane::Logs).stop(false);
    let asyncio = queue(Lane::Asyncio);
    asyncio.stop(false);
    let grace = Duration::try_from_secs_f64(grace.max(0.0)).unwrap_or(Duration::MAX);
    py.detach(|| {
        let state = asyncio.lock();
        drop(
            asyncio
                .idle
                .wait_timeout_while(state, grace, |s| s.busy)
                .unwrap_or_else(|p| p.into_inner()),
        );
    });
}
