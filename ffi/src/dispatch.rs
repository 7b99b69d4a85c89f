//! The one library-owned thread that calls every status and watch callback of the process.
//!
//! Why one thread: callbacks then never overlap, so a host needs no locking between them; the
//! thread is not a tokio worker, so a callback may make blocking library calls; and "wait until
//! the callback being run has returned" (unregister, unwatch, close) is a single condition that
//! cannot deadlock across registries. A call made *on* this thread (from inside a callback) does
//! not wait, since the only callback that can be running is the caller's own.

use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::events::{Payload, Sub};
use crate::status::{etcd_registry_status, Failure, FfiResult};

/// Name of the callback thread, as `pthread_getname_np` shows it (15 bytes at most on Linux).
pub const THREAD_NAME: &str = "etcd-reg-events";

struct Dispatcher {
    state: Mutex<State>,
    /// Signalled when a job is queued.
    work: Condvar,
    /// Signalled when a callback returns.
    idle: Condvar,
}

struct State {
    queue: VecDeque<(Arc<Sub>, Payload)>,
    running: Option<Arc<Sub>>,
    /// The process whose thread serves the queue (0: none yet). After fork() the child has no
    /// such thread and starts its own.
    pid: u32,
}

static DISPATCHER: Dispatcher = Dispatcher {
    state: Mutex::new(State {
        queue: VecDeque::new(),
        running: None,
        pid: 0,
    }),
    work: Condvar::new(),
    idle: Condvar::new(),
};

thread_local! {
    static ON_DISPATCHER: Cell<bool> = const { Cell::new(false) };
}

fn lock() -> MutexGuard<'static, State> {
    DISPATCHER.state.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// The dispatcher's lock, held by the thread calling fork() from the prepare handler until
    /// the parent and child handlers (see `crate::fork`).
    static HELD_ACROSS_FORK: std::cell::RefCell<Option<MutexGuard<'static, State>>> =
        const { std::cell::RefCell::new(None) };
}

/// fork() prepare handler: no other thread may hold the lock while the process is copied, or
/// the child would inherit it locked forever.
pub(crate) fn before_fork() {
    let guard = lock();
    let _ = HELD_ACROSS_FORK.try_with(|held| *held.borrow_mut() = Some(guard));
}

/// fork() parent and child handler. In the child the callback thread does not exist: what was
/// queued or running belongs to the parent; `ensure_started` starts a new thread when needed.
pub(crate) fn after_fork(in_child: bool) {
    let Ok(Some(mut guard)) = HELD_ACROSS_FORK.try_with(|held| held.borrow_mut().take()) else {
        return;
    };
    if in_child {
        guard.queue.clear();
        guard.running = None;
    }
    drop(guard);
}

/// Whether the calling thread is the callback thread (i.e. we are inside a callback).
pub(crate) fn on_dispatcher_thread() -> bool {
    ON_DISPATCHER.try_with(Cell::get).unwrap_or(false)
}

/// Starts the callback thread if this process has none yet.
pub(crate) fn ensure_started() -> FfiResult {
    let mut state = lock();
    let pid = std::process::id();
    if state.pid == pid {
        return Ok(());
    }
    std::thread::Builder::new()
        .name(THREAD_NAME.to_string())
        .spawn(run)
        .map_err(|e| {
            Failure::new(
                etcd_registry_status::Internal,
                format!("cannot start the callback thread: {e}"),
            )
        })?;
    state.pid = pid;
    Ok(())
}

/// Queues an event for its subscription's callback.
pub(crate) fn push(sub: Arc<Sub>, payload: Payload) {
    let mut state = lock();
    if sub.is_cancelled() {
        return;
    }
    state.queue.push_back((sub, payload));
    drop(state);
    DISPATCHER.work.notify_one();
}

/// Cancels subscriptions: no callback of theirs starts from now on, queued events are dropped,
/// and unless the caller is the callback thread itself, waits for a callback of theirs that is
/// running now to return.
pub(crate) fn cancel(subs: &[Arc<Sub>]) {
    if subs.is_empty() {
        return;
    }
    let mut state = lock();
    for sub in subs {
        sub.cancelled.store(true, Ordering::SeqCst);
    }
    let (keep, dropped): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut state.queue)
        .into_iter()
        .partition(|(sub, _)| !sub.is_cancelled());
    state.queue = keep;
    // After fork() the child has no callback thread: nothing runs, so there is nothing to wait for.
    let thread_alive = state.pid == std::process::id();
    if thread_alive && !on_dispatcher_thread() {
        while state
            .running
            .as_ref()
            .is_some_and(|running| subs.iter().any(|s| Arc::ptr_eq(s, running)))
        {
            state = DISPATCHER
                .idle
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
    drop(state);
    drop(dropped);
    // The callbacks are done: what they did happens before the caller frees their data.
    for user_data in subs.iter().filter_map(|sub| sub.user_data()) {
        crate::tsan::acquire(user_data);
    }
}

fn run() {
    let _ = ON_DISPATCHER.try_with(|on| on.set(true));
    let mut state = lock();
    loop {
        let Some((sub, payload)) = state.queue.pop_front() else {
            state = DISPATCHER
                .work
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
            continue;
        };
        // Checked under the lock that cancel() takes: a cancelled subscription never starts.
        if sub.is_cancelled() {
            continue;
        }
        state.running = Some(sub.clone());
        drop(state);
        // A panic here would be a bug in building the event; the thread must survive it.
        let _ = catch_unwind(AssertUnwindSafe(|| sub.call(&payload)));
        drop(payload);
        state = lock();
        state.running = None;
        drop(sub);
        DISPATCHER.idle.notify_all();
    }
}
