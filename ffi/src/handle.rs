//! `etcd_registry`: the registry handle, its connection and close, and the lookup of the
//! registrations and watches made through it (see `registration.rs`, `watch.rs`, `events.rs`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use registry::{runtime, EventStream, Handler, Registration, Registry, Route, Watch};
use tokio::runtime::Handle;

use crate::config::etcd_registry_config;
use crate::events::{
    etcd_registry_status_callback, etcd_registry_watch_callback, status_handler, watch_handler,
    UserData,
};
use crate::node_list::{etcd_registry_node_list, NodeStorage};
use crate::status::{etcd_registry_status, guard, guard_value, Failure, FfiResult};
use crate::string_list::etcd_registry_string_list;
use crate::strings::required;

/// Waits longer than this are cut to it (a year: effectively forever, and far from overflow).
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Opaque registry handle: one etcd connection (made lazily), its registrations and watches.
/// Created by `etcd_registry_connect`, closed by `etcd_registry_close`, freed by
/// `etcd_registry_free`. Every call on it is thread-safe, except `etcd_registry_free`, which
/// must be the last call on it.
#[allow(non_camel_case_types)]
pub struct etcd_registry {
    pub(crate) registry: Registry,
    pub(crate) runtime: Handle,
    /// The pull queue: the core's bounded stream that registrations and watches made with a
    /// NULL callback are routed to.
    pub(crate) queue: EventStream,
    /// Shared with a watch being made by `etcd_registry_watch_async`, which records it here.
    pub(crate) state: Arc<Mutex<HandleState>>,
    /// Signalled when the close in progress has finished (`HandleState::close_finished`).
    pub(crate) close_finished: Condvar,
}

#[derive(Default)]
pub(crate) struct HandleState {
    pub(crate) closed: bool,
    /// The close that set `closed` has returned from the core: every later close waits for it.
    pub(crate) close_finished: bool,
    /// The callback handlers stopped by that close: a later close waits until none of them
    /// runs (one may still run when the first close was made from a callback).
    pub(crate) closed_handlers: Vec<Handler>,
    pub(crate) registrations: HashMap<u64, RegEntry>,
    /// The callback handlers of registrations taken by `etcd_registry_unregister` or
    /// `etcd_registry_unregister_async` whose unregistration has not finished: close delivers
    /// their UNREGISTERED, and waits for a call of theirs still running, before it returns.
    pub(crate) unregistering: HashMap<u64, (Handler, UserData)>,
    pub(crate) watches: HashMap<u64, WatchEntry>,
    /// The same for watches taken by `etcd_registry_unwatch` that is still stopping them.
    pub(crate) unwatching: HashMap<u64, (Handler, UserData)>,
    /// The pull queue's readiness descriptor, made by the first `etcd_registry_event_fd`.
    pub(crate) event_fd: Option<Arc<crate::events::Signal>>,
}

/// A registration and its callback handler (None: routed to the pull queue).
pub(crate) struct RegEntry {
    pub(crate) registration: Registration,
    pub(crate) handler: Option<(Handler, UserData)>,
}

pub(crate) struct WatchEntry {
    pub(crate) watch: Arc<Watch>,
    pub(crate) handler: Option<(Handler, UserData)>,
}

fn not_found(what: &str, id: u64) -> Failure {
    Failure::new(
        etcd_registry_status::NotFound,
        format!("no {what} {id} on this registry"),
    )
}

/// The one lookup of an id given by the host: NOT_FOUND when it is not (or no longer) one of
/// this registry's.
impl HandleState {
    pub(crate) fn registration(&self, id: u64) -> FfiResult<&RegEntry> {
        self.registrations
            .get(&id)
            .ok_or_else(|| not_found("registration", id))
    }

    pub(crate) fn take_registration(&mut self, id: u64) -> FfiResult<RegEntry> {
        self.registrations
            .remove(&id)
            .ok_or_else(|| not_found("registration", id))
    }

    /// Takes a registration to unregister: its handler stays known to close (see
    /// `unregistering`) until the caller removes it, once the unregistration has finished.
    pub(crate) fn take_to_unregister(&mut self, id: u64) -> FfiResult<RegEntry> {
        let entry = self.take_registration(id)?;
        if let Some(handler) = &entry.handler {
            self.unregistering.insert(id, handler.clone());
        }
        Ok(entry)
    }

    pub(crate) fn watch(&self, id: u64) -> FfiResult<&WatchEntry> {
        self.watches.get(&id).ok_or_else(|| not_found("watch", id))
    }

    /// Takes a watch to stop: its handler stays known to close (see `unwatching`) until the
    /// caller removes it.
    pub(crate) fn take_watch(&mut self, id: u64) -> FfiResult<WatchEntry> {
        let entry = self
            .watches
            .remove(&id)
            .ok_or_else(|| not_found("watch", id))?;
        if let Some(handler) = &entry.handler {
            self.unwatching.insert(id, handler.clone());
        }
        Ok(entry)
    }
}

/// An out-parameter, checked for NULL before anything else happens and written only on success.
pub(crate) struct Out<T>(NonNull<T>);

pub(crate) fn out<T>(ptr: *mut T, what: &str) -> FfiResult<Out<T>> {
    NonNull::new(ptr)
        .map(Out)
        .ok_or_else(|| Failure::null(what))
}

pub(crate) fn write_out<T: Copy>(slot: Out<T>, value: T) {
    // SAFETY: non-NULL, and the caller promised a writable, aligned T.
    unsafe { slot.0.as_ptr().write(value) }
}

/// # Safety
/// `registry` is NULL or a live handle from `etcd_registry_connect`.
pub(crate) unsafe fn handle<'a>(registry: *const etcd_registry) -> FfiResult<&'a etcd_registry> {
    // SAFETY: per the caller's contract.
    unsafe { registry.as_ref() }.ok_or_else(|| Failure::null("registry"))
}

/// Blocking calls wait on the library's runtime; on one of its own threads (from the log
/// callback or an `_async` call's callback) that would stall it, so they are refused before
/// anything changes. (The callbacks that an unregister or close made from a callback delivers
/// nested run once it is out of the runtime: see `Handler::finish`.)
pub(crate) fn ensure_can_block() -> FfiResult {
    if Handle::try_current().is_err() {
        return Ok(());
    }
    Err(Failure::invalid(
        "blocking etcd-registry calls cannot be made from a library runtime thread (the log callback, or the callback of an _async call)",
    ))
}

thread_local! {
    /// The handles this thread is inside an `etcd_registry_close`, `etcd_registry_unregister`
    /// or `etcd_registry_free` of, innermost last, each with whether `etcd_registry_free` was
    /// called on it meanwhile. Those calls deliver callbacks nested (on the callback thread),
    /// and use the handle again once the delivery returns: a callback freeing it there must
    /// leave the free to them.
    static IN_CLOSING_CALL: RefCell<Vec<(*const etcd_registry, bool)>> =
        const { RefCell::new(Vec::new()) };
}

/// This thread's entry in [`IN_CLOSING_CALL`] while a call on a handle runs; taken off when the
/// call unwinds too (the handle is then not freed).
struct ClosingCall;

impl ClosingCall {
    fn enter(registry: *const etcd_registry, freeing: bool) -> ClosingCall {
        let _ = IN_CLOSING_CALL.try_with(|stack| stack.borrow_mut().push((registry, freeing)));
        ClosingCall
    }

    /// Leaves the call; true when the handle is to be freed now: freed during the call, and
    /// this is the outermost call on it (the others use it still).
    fn leave(self) -> bool {
        let free = IN_CLOSING_CALL
            .try_with(|stack| {
                let stack = stack.borrow();
                let Some(((registry, freed), outer)) = stack.split_last() else {
                    return false;
                };
                *freed && !outer.iter().any(|(handle, _)| handle == registry)
            })
            .unwrap_or(false);
        drop(self);
        free
    }
}

impl Drop for ClosingCall {
    fn drop(&mut self) {
        let _ = IN_CLOSING_CALL.try_with(|stack| {
            let mut stack = stack.borrow_mut();
            stack.pop();
            // Left empty, the stack gives its memory back: on a library runtime thread (a
            // free inside an `_async` callback), which lives as long as the process, it would
            // stay allocated for good.
            if stack.is_empty() {
                stack.shrink_to_fit();
            }
        });
    }
}

/// Runs `body`, an `etcd_registry_close` or `etcd_registry_unregister` of `registry`, during
/// which an `etcd_registry_free` of `registry` on this thread (from a callback it delivers
/// nested) is deferred; the outermost such call frees the handle as it returns.
///
/// # Safety
/// `registry` is a live handle from `etcd_registry_connect`.
pub(crate) unsafe fn deferring_free<T>(
    registry: *mut etcd_registry,
    body: impl FnOnce() -> T,
) -> T {
    let call = ClosingCall::enter(registry, false);
    let result = body();
    if call.leave() {
        // SAFETY: live (its free was deferred to here), and no call on it is left.
        unsafe { free_handle(registry) };
    }
    result
}

/// For `etcd_registry_free`: whether this thread is inside a close or unregister of `registry`
/// (see [`deferring_free`]), which then frees it as it returns.
fn defer_free(registry: *mut etcd_registry) -> bool {
    IN_CLOSING_CALL
        .try_with(|stack| {
            let mut found = false;
            for (handle, freed) in stack.borrow_mut().iter_mut() {
                if *handle == registry.cast_const() {
                    *freed = true;
                    found = true;
                }
            }
            found
        })
        .unwrap_or(false)
}

pub(crate) fn lock_state(state: &Mutex<HandleState>) -> MutexGuard<'_, HandleState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn block_on<F: Future>(future: F) -> FfiResult<F::Output> {
    runtime::block_on(future).map_err(Failure::from)
}

pub(crate) fn duration_ms(ms: u64) -> Duration {
    Duration::from_millis(ms).min(MAX_WAIT)
}

impl etcd_registry {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HandleState> {
        lock_state(&self.state)
    }

    /// Whether this handle was created before a fork() of which this is the child (the core
    /// tells; the handle's own locks and queue must then not be touched either).
    pub(crate) fn forked(&self) -> bool {
        !self.registry.in_this_process()
    }

    /// The state, if the registry is still open (and usable in this process).
    pub(crate) fn open(&self) -> FfiResult<MutexGuard<'_, HandleState>> {
        self.registry.check_same_process()?;
        let state = self.lock();
        if state.closed {
            return Err(Failure::closed());
        }
        Ok(state)
    }

    /// Where the events of a new registration or watch go: a core handler calling the C
    /// callback, or (NULL callback) the pull queue.
    pub(crate) fn route(
        &self,
        status: etcd_registry_status_callback,
        watch: etcd_registry_watch_callback,
        user_data: *mut c_void,
    ) -> FfiResult<(Route, Option<(Handler, UserData)>)> {
        let user_data = UserData(user_data);
        let handler = match (status, watch) {
            (Some(cb), _) => status_handler(cb, user_data)?,
            (_, Some(cb)) => watch_handler(cb, user_data)?,
            (None, None) => return Ok((Route::stream(&self.queue), None)),
        };
        // What the host did to `user_data` before this call happens before the callbacks.
        crate::tsan::release(user_data.0);
        Ok((Route::handler(&handler), Some((handler, user_data))))
    }

    /// Forgets a registration that a newer registration of its node replaced, once it has
    /// ended: its UNREGISTERED delivered (what `etcd_registry_unregister` of it waits for). Its
    /// id is NOT_FOUND from then on, and the handle does not keep it until close.
    pub(crate) fn forget_when_ended(&self, replaced: Registration) {
        let state = Arc::downgrade(&self.state);
        self.runtime.spawn(async move {
            // The key is the newer registration's: this deletes nothing, it only waits.
            let _ = replaced.unregister().await;
            if let Some(state) = state.upgrade() {
                let entry = lock_state(&state).registrations.remove(&replaced.id());
                drop(entry);
            }
        });
    }

    /// Marks the handle closed; returns the handlers of its callbacks, each with whether it is
    /// a registration's (which is owed its UNREGISTERED), or None if it already was.
    ///
    /// The watches are stopped once the state's lock is released: stopping one waits for a
    /// running call of its callback, which may itself be waiting for that lock (a callback may
    /// call the library, and gets CLOSED from now on).
    pub(crate) fn shut(&self) -> Option<Vec<(Handler, UserData, bool)>> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        state.closed = true;
        let registrations = std::mem::take(&mut state.registrations);
        let unregistering = std::mem::take(&mut state.unregistering);
        let mut watches = Vec::new();
        let unwatching = std::mem::take(&mut state.unwatching);
        let handlers: Vec<(Handler, UserData, bool)> = registrations
            .into_values()
            .filter_map(|r| r.handler)
            .chain(unregistering.into_values())
            .map(|(h, u)| (h, u, true))
            .chain(
                std::mem::take(&mut state.watches)
                    .into_values()
                    .filter_map(|w| {
                        watches.push(w.watch);
                        w.handler
                    })
                    .chain(unwatching.into_values())
                    .map(|(h, u)| (h, u, false)),
            )
            .collect();
        state.closed_handlers = handlers.iter().map(|(h, _, _)| h.clone()).collect();
        drop(state);
        waiting_for_callbacks(|| drop(watches));
        Some(handlers)
    }

    /// Closes the registry, or waits for the close another thread (or a callback) started:
    /// whoever calls, it returns only once the core's close has finished (every registration's
    /// UNREGISTERED delivered) and no callback of this registry runs, so the caller may free
    /// `user_data` and the handle. On the callback thread a second close cannot wait (the
    /// running callback is the caller itself) and returns at once.
    pub(crate) fn close_and_wait(&self) -> FfiResult {
        if let Some(handlers) = self.shut() {
            // The core delivers UNREGISTERED to every registration's handler and stops the
            // watches' handlers before it returns.
            let result = block_on(self.registry.close());
            for (handler, user_data, registration) in &handlers {
                if *registration {
                    // What is still queued: UNREGISTERED of a replaced registration not forgotten
                    // yet (the core's close delivers those of the current ones), and on the
                    // callback thread every UNREGISTERED, delivered here, nested, out of the
                    // runtime (where the callbacks may make blocking calls).
                    handler.finish();
                }
                handler.cancel();
                // The callbacks are done: what they did happens before the caller frees data.
                crate::tsan::acquire(user_data.0);
            }
            self.queue.close();
            // The close was signalled to the event fd (if any); nothing more is.
            self.queue.set_on_ready(None);
            self.lock().close_finished = true;
            self.close_finished.notify_all();
            return result?.map_err(Failure::from);
        }
        if Handler::on_dispatcher_thread() {
            return Ok(());
        }
        let mut state = self.lock();
        while !state.close_finished {
            state = self
                .close_finished
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        let handlers = state.closed_handlers.clone();
        drop(state);
        // Stopped already: this only waits for a call of theirs that is still running.
        for handler in handlers {
            handler.cancel();
        }
        Ok(())
    }
}

impl etcd_registry {
    /// `etcd_registry_free` on a library runtime thread, which must not wait for etcd: the
    /// close goes on in the background, and every callback is stopped here, so that none runs
    /// once free returns (the host frees `user_data` then). Also a second
    /// `etcd_registry_close` there, once the first has finished: it only waits for callbacks.
    fn free_on_runtime_thread(&self) {
        let handlers: Vec<(Handler, Option<UserData>)> = match self.shut() {
            Some(handlers) => {
                tracing::error!(
                    "etcd_registry_free called inside an _async or log callback on a registry \
                     not closed: its callbacks are stopped without their UNREGISTERED and its \
                     close finishes in the background; close it from another thread first"
                );
                self.queue.close();
                self.queue.set_on_ready(None);
                let core = self.registry.clone();
                self.runtime.spawn(async move {
                    let _ = core.close().await;
                });
                handlers
                    .into_iter()
                    .map(|(handler, user_data, _)| (handler, Some(user_data)))
                    .collect()
            }
            // Closed already: its callbacks were stopped, one may still be running.
            None => self
                .lock()
                .closed_handlers
                .iter()
                .map(|handler| (handler.clone(), None))
                .collect(),
        };
        for (handler, user_data) in handlers {
            cancel_on_runtime_thread(&handler);
            if let Some(user_data) = user_data {
                // The callbacks are done: what they did happens before the host frees data.
                crate::tsan::acquire(user_data.0);
            }
        }
    }
}

/// Stops a handler and waits for a running call of it to return, also from a library runtime
/// thread (see [`waiting_for_callbacks`]).
fn cancel_on_runtime_thread(handler: &Handler) {
    waiting_for_callbacks(|| handler.cancel());
}

/// Runs `wait`, which waits for a running callback to return. That callback may itself wait
/// for the runtime (a blocking library call): on a library runtime thread (an `_async` or log
/// callback) the wait hands this thread's work to another one (`block_in_place`) rather than
/// stall the runtime, which with one worker would never finish that call.
pub(crate) fn waiting_for_callbacks<R>(wait: impl FnOnce() -> R) -> R {
    // The library's runtime is multi-threaded (`block_in_place` panics on any other).
    let multi_thread = Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(wait)
    } else {
        wait()
    }
}

/// Creates a registry from `config` (which is copied: free it whenever you like). Checks the
/// configuration but does not dial: etcd may be down now; every operation connects when it needs
/// to, and registrations retry until it is up. Starts the library's global runtime on first use.
///
/// INVALID_ARGUMENT for a bad configuration (no endpoint, malformed endpoint, TLS files …).
/// `*out_registry` is written only on success; free it with `etcd_registry_free`.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_connect(
    config: *const etcd_registry_config,
    out_registry: *mut *mut etcd_registry,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let config = unsafe { config.as_ref() }.ok_or_else(|| Failure::null("config"))?;
        let slot = out(out_registry, "out_registry")?;
        crate::fork::install_handlers();
        if let Some(threads) = config.runtime_threads {
            if !runtime::set_worker_threads(threads) {
                tracing::warn!(
                    threads,
                    "runtime_threads ignored: the etcd-registry runtime is already running"
                );
            }
        }
        let runtime = runtime::handle()?;
        let registry = Registry::new_in(config.config.clone(), runtime.clone())?;
        let handle = etcd_registry {
            registry,
            runtime,
            queue: EventStream::new(),
            state: Arc::new(Mutex::new(HandleState::default())),
            close_finished: Condvar::new(),
        };
        write_out(slot, Box::into_raw(Box::new(handle)));
        Ok(())
    })
}

/// Lists a service's nodes in one etcd request (an unknown service gives an empty list). Blocks
/// until etcd answers or the configured timeout passes (TIMEOUT / CONNECTION).
/// `*out_node_list` is written only on success; free it with `etcd_registry_node_list_free`.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_list(
    registry: *mut etcd_registry,
    service: *const c_char,
    out_node_list: *mut *mut etcd_registry_node_list,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for every pointer.
        let this = unsafe { handle(registry) }?;
        let service = unsafe { required(service, "service") }?;
        let slot = out(out_node_list, "out_node_list")?;
        ensure_can_block()?;
        drop(this.open()?);
        let parts = block_on(this.registry.list_with(service, NodeStorage::new))??;
        write_out(
            slot,
            Box::into_raw(Box::new(etcd_registry_node_list::from_parts(parts))),
        );
        Ok(())
    })
}

/// Called once with the result of `etcd_registry_list_async`: `status` OK and a node list that
/// the callback now owns (free it with `etcd_registry_node_list_free`), or an error status, its
/// message (valid until the callback returns) and a NULL list.
#[allow(non_camel_case_types)]
pub type etcd_registry_list_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        status: etcd_registry_status,
        error_message: *const c_char,
        node_list: *mut etcd_registry_node_list,
    ),
>;

/// Lists a service like `etcd_registry_list`, without blocking: the same request, whose result
/// goes to `callback` instead. For hosts that wait for I/O in an event loop (Go's netpoller,
/// epoll, libuv) rather than in a blocked thread.
///
/// On OK, `callback` is called exactly once, on a library runtime thread, possibly before this
/// function returns: with the node list, or with the error `etcd_registry_list` would have
/// returned (an invalid service name, TIMEOUT, CONNECTION, CLOSED if the registry is closed
/// meanwhile …). It must return quickly and make no blocking library call (those fail there
/// with INVALID_ARGUMENT); `user_data` must stay valid until it has run, even past
/// `etcd_registry_close` and `etcd_registry_free`. On any other status the callback is never
/// called (NULL pointers, a closed registry).
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_list_async(
    registry: *mut etcd_registry,
    service: *const c_char,
    callback: etcd_registry_list_callback,
    user_data: *mut c_void,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for every pointer.
        let this = unsafe { handle(registry) }?;
        let service = unsafe { required(service, "service") }?.to_owned();
        let callback = callback.ok_or_else(|| Failure::null("callback"))?;
        drop(this.open()?);
        let registry = this.registry.clone();
        let work = async move { registry.list_with(&service, NodeStorage::new).await };
        answer_async(this, user_data, "list", work, move |user_data, outcome| {
            let list = outcome
                .map(|parts| Box::into_raw(Box::new(etcd_registry_node_list::from_parts(parts))));
            // SAFETY: the host gave this function pointer for exactly this call.
            unsafe { call_back_with(callback, user_data, list) };
        });
        Ok(())
    })
}

/// Calls a callback of the `(user_data, status, error_message, result)` shape: OK with the
/// result, handed over to it, or the failure's status and message (valid during the call) with
/// NULL.
///
/// # Safety
/// `callback` is the host's, given for this call with `user_data`.
pub(crate) unsafe fn call_back_with<P>(
    callback: unsafe extern "C" fn(*mut c_void, etcd_registry_status, *const c_char, *mut P),
    user_data: *mut c_void,
    outcome: Result<*mut P, Failure>,
) {
    match outcome {
        // SAFETY: per this function's contract.
        Ok(result) => unsafe {
            callback(
                user_data,
                etcd_registry_status::Ok,
                std::ptr::null(),
                result,
            )
        },
        Err(failure) => {
            let message = crate::strings::to_c(&failure.message);
            // SAFETY: as above; the message lives until the call returns.
            unsafe {
                callback(
                    user_data,
                    failure.status,
                    message.as_ptr(),
                    std::ptr::null_mut(),
                )
            };
        }
    }
}

/// Runs `work` on the library's runtime and hands its outcome to `deliver`, which calls the
/// host's callback of an `_async` call exactly once: on a runtime thread, inside the panic
/// guard, with what the host did before the call ordered before it (for ThreadSanitizer builds
/// too). A panic in `work` (a bug) is delivered as a PANIC failure with its message.
pub(crate) fn answer_async<T, E, F>(
    this: &etcd_registry,
    user_data: *mut c_void,
    what: &'static str,
    work: F,
    deliver: impl FnOnce(*mut c_void, Result<T, Failure>) + Send + 'static,
) where
    F: Future<Output = Result<T, E>> + Send + 'static,
    E: Into<Failure>,
    T: Send + 'static,
{
    // What the host did before this call happens before the callback.
    crate::tsan::release(user_data);
    let user_data = UserData(user_data);
    this.runtime.spawn(async move {
        // A panic in the work would end the task without the callback, which is promised.
        let outcome = match CatchUnwind(Box::pin(work)).await {
            Ok(outcome) => outcome.map_err(Into::into),
            Err(panic) => Err(panic),
        };
        let user_data = user_data.ptr();
        crate::tsan::acquire(user_data);
        let finished = guard(|| {
            deliver(user_data, outcome);
            Ok(())
        });
        crate::tsan::release(user_data);
        if finished != etcd_registry_status::Ok {
            tracing::error!("the {what} callback could not be called: {finished:?}");
        }
    });
}

/// A future that turns a panic while polling the inner one into a `PANIC` failure, as the
/// panic guard does for an exported function's body (the `futures` crate's `catch_unwind`,
/// which this crate does not depend on for one use).
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match crate::status::caught(|| self.0.as_mut().poll(cx)) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(Failure::panic(payload.as_ref()))),
        }
    }
}

/// The names of the services under the base path that have at least one node, sorted
/// (bytewise) and without duplicates, as they appear in keys (a '/' given at registration reads
/// as '-'). One etcd request for keys only: no values are transferred. Blocks until etcd answers
/// or the configured timeout passes (TIMEOUT / CONNECTION). `*out_services` is written only on
/// success; free it with `etcd_registry_string_list_free`.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_services(
    registry: *mut etcd_registry,
    out_services: *mut *mut etcd_registry_string_list,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for every pointer.
        let this = unsafe { handle(registry) }?;
        let slot = out(out_services, "out_services")?;
        ensure_can_block()?;
        drop(this.open()?);
        let names = block_on(this.registry.services())??;
        write_out(
            slot,
            Box::into_raw(Box::new(etcd_registry_string_list::new(&names))),
        );
        Ok(())
    })
}

/// Called once with the result of `etcd_registry_services_async`: `status` OK and a string list
/// that the callback now owns (free it with `etcd_registry_string_list_free`), or an error
/// status, its message (valid until the callback returns) and a NULL list.
#[allow(non_camel_case_types)]
pub type etcd_registry_services_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        status: etcd_registry_status,
        error_message: *const c_char,
        services: *mut etcd_registry_string_list,
    ),
>;

/// `etcd_registry_services` without blocking, as `etcd_registry_list_async` is to
/// `etcd_registry_list`: on OK, `callback` is called exactly once, on a library runtime thread
/// (possibly before this returns), with the names or the error the blocking call would have
/// returned; the same rules for the callback and `user_data`. On any other status (NULL
/// pointers, a closed registry) the callback is never called.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_services_async(
    registry: *mut etcd_registry,
    callback: etcd_registry_services_callback,
    user_data: *mut c_void,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for every pointer.
        let this = unsafe { handle(registry) }?;
        let callback = callback.ok_or_else(|| Failure::null("callback"))?;
        drop(this.open()?);
        let registry = this.registry.clone();
        let work = async move { registry.services().await };
        answer_async(
            this,
            user_data,
            "services",
            work,
            move |user_data, outcome| {
                let list = outcome
                    .map(|names| Box::into_raw(Box::new(etcd_registry_string_list::new(&names))));
                // SAFETY: the host gave this function pointer for exactly this call.
                unsafe { call_back_with(callback, user_data, list) };
            },
        );
        Ok(())
    })
}

/// Copies the etcd endpoint that calls and keep-alives go to now (a URL, e.g.
/// "http://10.0.0.1:2379") into `buffer` (of `capacity` bytes), truncated if needed and always
/// NUL-terminated when `capacity > 0`, like `snprintf`; `*out_len` gets the length of the whole
/// endpoint in bytes (without the NUL): `capacity` or more means it was truncated. `buffer` may
/// be NULL when `capacity` is 0, to ask for the length. It changes when that member fails or
/// stops answering and another one takes over. Does not block and does not reach etcd; allowed
/// after `etcd_registry_close` (it then names the member last used).
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_active_endpoint(
    registry: *const etcd_registry,
    buffer: *mut c_char,
    capacity: usize,
    out_len: *mut usize,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for every pointer.
        let this = unsafe { handle(registry) }?;
        let slot = out(out_len, "out_len")?;
        if buffer.is_null() && capacity > 0 {
            return Err(Failure::null("buffer"));
        }
        this.registry.check_same_process()?;
        let endpoint = this.registry.active_endpoint();
        // SAFETY: the caller promises `capacity` writable bytes at `buffer`.
        unsafe { crate::strings::copy_truncated(endpoint.as_bytes(), buffer, capacity) };
        write_out(slot, endpoint.len());
        Ok(())
    })
}

/// Closes the registry: stops the watches, revokes the leases (which deletes every registered key
/// at once), delivers UNREGISTERED to every registration (the last call of its callback, or
/// queued for `etcd_registry_next_event`, which then returns what is queued and CLOSED), and
/// returns when etcd has answered or the timeout passed (never failing because etcd is
/// unreachable: a warning is logged and the keys expire with their leases); once it returns, no callback of this
/// registry is running or will be called. Idempotent: a second close, from any
/// thread, waits until the first has finished and no callback of this registry runs, then
/// returns OK (from inside a callback it returns at once, also from one delivered nested inside
/// that first close). Every other call on a closed registry returns CLOSED. Allowed from inside a callback. The
/// handle stays valid until `etcd_registry_free`. In a child process after fork(), closing or
/// freeing a handle created by the parent does nothing: the registrations stay the parent's.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_close(registry: *mut etcd_registry) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let this = unsafe { handle(registry) }?;
        if this.forked() {
            // The registrations are the parent's: nothing to stop here, and nothing of the
            // parent's (its locks included) may be touched. Every call already refuses.
            return Ok(());
        }
        // A second close on the callback thread returns at once (see close_and_wait), also
        // inside an unregister or close made from a callback, where it could not block.
        let (closed, finished) = {
            let state = this.lock();
            (state.closed, state.close_finished)
        };
        if Handler::on_dispatcher_thread() && closed {
            return Ok(());
        }
        // On a runtime thread (an _async or log callback), which must not wait for etcd, a
        // second close once the first has finished only waits for a callback still running (a
        // first close made inside a callback finishes before that callback returns), as
        // etcd_registry_free does there.
        if finished && ensure_can_block().is_err() {
            this.free_on_runtime_thread();
            return Ok(());
        }
        ensure_can_block()?;
        // SAFETY: caller's contract.
        unsafe { deferring_free(registry, || this.close_and_wait()) }
    })
}

/// Closes the registry if it is still open (as `etcd_registry_close`, ignoring errors) and frees
/// it. NULL is allowed. Must be the last call on the handle: no other thread may be inside a
/// call on it (e.g. `etcd_registry_next_event` — close first, which makes such calls return).
/// Once it returns, no callback of this registry is running or will be called.
///
/// From a callback delivered nested inside an `etcd_registry_close` or
/// `etcd_registry_unregister` of this registry made on the callback thread (e.g. the
/// UNREGISTERED that a close made from another callback delivers), the handle is still in use
/// by that call: free then only marks it and returns at once. The outermost such call frees it
/// as it returns, as free does (closing it first, if an unregister was the call); until then
/// it goes on delivering what is due, e.g. the UNREGISTERED of the other registrations. As
/// after any free, the handle must not be used again, by the callbacks that free returns into
/// neither.
///
/// Not meant to be called from an `_async` callback or the log callback (a library runtime
/// thread, where it cannot wait for etcd): there it logs an error, stops every status and
/// watch callback of the registry without delivering their UNREGISTERED (waiting for a call
/// that is running to return), and lets the close — revoking the leases — finish in the
/// background. Close the registry from another thread (or a status or watch callback) first.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_free(registry: *mut etcd_registry) {
    if registry.is_null() {
        return;
    }
    guard_value((), || {
        if defer_free(registry) {
            return;
        }
        // SAFETY: a handle from etcd_registry_connect, freed once (caller's contract).
        unsafe { free_handle(registry) };
    });
}

/// The free itself: closes the registry, if it is still open, and drops the handle.
///
/// # Safety
/// `registry` is a live handle from `etcd_registry_connect`, used by nothing else from now on.
unsafe fn free_handle(registry: *mut etcd_registry) {
    // SAFETY: per this function's contract.
    let this = unsafe { Box::from_raw(registry) };
    if this.forked() {
        // Leaked, not dropped: dropping would touch the parent's tasks and locks.
        std::mem::forget(this);
        return;
    }
    // A free called again by a callback that this close delivers nested is this one.
    let call = ClosingCall::enter(registry, true);
    if ensure_can_block().is_ok() {
        let _ = this.close_and_wait();
    } else {
        this.free_on_runtime_thread();
    }
    drop(call);
    drop(this);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        etcd_registry_config_free, etcd_registry_config_new, etcd_registry_config_set_endpoints,
    };

    async fn panicking_work() -> Result<(), Failure> {
        panic!("boom in the work of an _async call")
    }

    /// An `_async` callback is promised exactly once: a panic in the work (a bug) reaches it as
    /// PANIC with the panic's message, instead of ending the task without a call.
    #[test]
    fn a_panic_in_async_work_is_delivered_as_panic() {
        let mut registry = std::ptr::null_mut();
        // SAFETY: valid pointers; the endpoint is never dialled (nothing here reaches etcd).
        unsafe {
            let mut config = std::ptr::null_mut();
            assert_eq!(
                etcd_registry_config_new(&mut config),
                etcd_registry_status::Ok
            );
            let s = etcd_registry_config_set_endpoints(config, c"127.0.0.1:9".as_ptr());
            assert_eq!(s, etcd_registry_status::Ok);
            assert_eq!(
                etcd_registry_connect(config, &mut registry),
                etcd_registry_status::Ok
            );
            etcd_registry_config_free(config);
        }
        // SAFETY: the handle just made.
        let this = unsafe { handle(registry) }.unwrap();
        let (sent, received) = std::sync::mpsc::channel();
        answer_async(
            this,
            std::ptr::null_mut(),
            "test",
            panicking_work(),
            move |_, outcome| {
                let _ = sent.send(outcome.map_err(|f| (f.status, f.message)));
            },
        );
        let outcome = received
            .recv_timeout(Duration::from_secs(10))
            .expect("the callback was not called");
        let (status, message) = outcome.expect_err("the work panicked");
        assert_eq!(status, etcd_registry_status::Panic);
        assert!(message.contains("boom in the work"), "{message}");
        // SAFETY: the handle, no longer used.
        unsafe {
            assert_eq!(etcd_registry_close(registry), etcd_registry_status::Ok);
            etcd_registry_free(registry);
        }
    }
}
