//! Events: the one mechanism that carries every registration's status events and every watch's
//! events to whoever reads them, in every language.
//!
//! # Design (the bindings' docs point here)
//!
//! - **Producers.** A registration's events are emitted by the one task that owns its lease; a
//!   watch's by its follower task. They are pushed straight into the subscribers' queues: there
//!   is no forwarder task per registration or watch.
//! - **Subscribers.** Three ways to read, all fed by the same push:
//!   - [`Registry::events`](crate::Registry::events): one registry-wide [`EventStream`] with the
//!     events of every registration and watch. Subscribe it before registering and it sees every
//!     event, even those that come before `register` has returned the id.
//!   - a **route** given at creation ([`Registry::register_routed`](crate::Registry::register_routed),
//!     [`Registry::watch_routed`](crate::Registry::watch_routed)): the events go to an
//!     [`EventStream`] shared by many registrations and watches (the C pull queue, Go's one
//!     stream per registry, the stream Python's callback thread pulls), or to a [`Handler`]
//!     (a C function pointer).
//!     Attached before the registration or watch starts, so nothing is missed and no id
//!     "escapes" before its route exists.
//!   - [`Registration::subscribe`](crate::Registration::subscribe) and
//!     [`Watch::next`](crate::Watch::next): per-registration / per-watch streams for Rust users.
//! - **Backpressure: producers never block and memory stays bounded**, the same in every
//!   language, since every binding reads one of these queues (stream or handler):
//!   - **A watch's events are never dropped.** A reader less than [`EVENT_QUEUE_CAPACITY`]
//!     events behind gets every event. Once that many are unread, and until the reader has
//!     read them all, a new event of a node that the queue still holds an event of is merged
//!     into the node's last unread event, in place: it keeps that event's place (so no node's
//!     change reaches the reader later than it happened), with the newer node info and
//!     revision and the kind that takes the reader from what it knew to the node's state now:
//!     a node gone at the end is `removed` (even one the reader never had an `added` of: a
//!     reader that started from a listing may hold it); otherwise `added` if the older was
//!     `added`, else `updated`. A newer `resynced` replaces an unread one at the back, so the
//!     differences of a resync come before it. So a reader far behind skips intermediate
//!     states of a node but always ends with the service's live node set, if it applies
//!     `added` and `updated` as insert-or-replace and `removed` as delete-if-present; once
//!     merged, events of different nodes may come out of revision order. A queue holds at
//!     most [`EVENT_QUEUE_CAPACITY`] watch events plus one per node (live or removed) of each
//!     watch and a `resynced`.
//!   - **Registration status events are bounded.** A queue holds at most
//!     [`EVENT_QUEUE_CAPACITY`] of them unread. When a slow consumer falls that far behind,
//!     the *oldest* that is not final is dropped to make room (`Unregistered` is final and
//!     never dropped), the queue's [`dropped`](EventStream::dropped) counter goes up and a
//!     warning is logged (once the producer holds no lock: a host's log callback may ask for
//!     the count).
//! - **The end of a registration.** `unregister()` and `close()` emit `Unregistered` as the
//!   registration's last event, and it is delivered: to a stream it is queued before they
//!   return; a handler has been called with it before they return. Called from inside a
//!   handler on the dispatcher thread (through a runtime's `block_on`), they return without
//!   delivering it, as a handler called inside the runtime could make no blocking library call:
//!   [`Handler::finish`], called then, delivers the remaining events nested, before it returns
//!   (the bindings do so); otherwise the dispatcher delivers them after the running handler
//!   returns. After that, nothing further of that registration is delivered.
//! - **The end of a watch.** A watch has no final event: once `cancel()`, `cancel_async()`,
//!   `unwatch` or `close()` returns, its handler is not running and will not be called again,
//!   and its events still queued in a shared stream are dropped; its own stream
//!   ([`Watch::next`](crate::Watch::next)) returns what it had read, then `None`. A watch
//!   dropped inside a tokio runtime ends the same way but does not wait for a running call of
//!   its handler (which may be waiting for that runtime's thread).
//! - **Handlers** run on one library thread per process ([`DISPATCHER_THREAD_NAME`]), never
//!   overlapping, one event at a time, in order per subscription and round-robin between
//!   subscriptions; not a tokio thread, so a handler may make blocking library calls.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::registration::StatusEvent;
use crate::watch::WatchEvent;

mod buffer;
pub(crate) use buffer::Buffer;

/// How many unread registration status events any queue holds before the oldest non-final one
/// is dropped (a watch's events are merged per node instead: see the [module docs](self)).
pub const EVENT_QUEUE_CAPACITY: usize = 1024;

/// The name of the thread that runs every [`Handler`] (at most 15 bytes, Linux's limit).
pub const DISPATCHER_THREAD_NAME: &str = "etcd-reg-events";

/// One event of a registration or a watch, with the names it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A status event of a registration.
    Status {
        /// The registration's id.
        registration_id: u64,
        /// The service, as registered.
        service: Arc<str>,
        /// The node name, as registered.
        node: Arc<str>,
        /// What happened.
        event: StatusEvent,
    },
    /// An event of a watch.
    Watch {
        /// The watch's id.
        watch_id: u64,
        /// The service watched.
        service: Arc<str>,
        /// What happened.
        event: WatchEvent,
    },
}

impl Event {
    /// The id of the registration or watch.
    pub fn id(&self) -> u64 {
        match self {
            Event::Status {
                registration_id, ..
            } => *registration_id,
            Event::Watch { watch_id, .. } => *watch_id,
        }
    }

    /// The service concerned.
    pub fn service(&self) -> &str {
        match self {
            Event::Status { service, .. } | Event::Watch { service, .. } => service,
        }
    }

    /// Whether this is the last event of its registration (`Unregistered`): never dropped.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Event::Status {
                event: StatusEvent::Unregistered,
                ..
            }
        )
    }

    /// Lowercase name of the event kind (`registered`, …, `added`, …).
    pub fn kind_str(&self) -> &'static str {
        match self {
            Event::Status { event, .. } => event.kind_str(),
            Event::Watch { event, .. } => event.kind.as_str(),
        }
    }
}

/// What pushing into full queues dropped, for the caller to [`log`](Overflow::log) once it
/// holds no lock: the warning goes to the host's log callback, which may call back into the
/// library (e.g. `etcd_registry_dropped_events`), and that takes the very locks a push is made
/// under (a queue's, the dispatcher's, the registration's).
#[must_use = "log it once no lock is held"]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflow {
    /// The largest dropped count, among the queues that dropped an event, that is a power of
    /// two (a warning is logged at 1, 2, 4, … drops per queue); 0 for none.
    warn_at: u64,
}

impl Overflow {
    /// Nothing dropped.
    pub(crate) const NONE: Overflow = Overflow { warn_at: 0 };

    /// A queue's drop, its count now `dropped`.
    fn dropped(dropped: u64) -> Overflow {
        Overflow {
            warn_at: if dropped.is_power_of_two() {
                dropped
            } else {
                0
            },
        }
    }

    /// Both overflows together.
    pub(crate) fn and(self, other: Overflow) -> Overflow {
        Overflow {
            warn_at: self.warn_at.max(other.warn_at),
        }
    }

    /// Logs the warning, if one is due. Call with no lock of the library held.
    pub(crate) fn log(self) {
        if self.warn_at > 0 {
            tracing::warn!(
                dropped = self.warn_at,
                capacity = EVENT_QUEUE_CAPACITY,
                "an event consumer is too slow: the oldest unread status events were dropped"
            );
        }
    }
}

fn relock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A bounded queue read by an [`EventStream`].
pub(crate) struct Queue {
    buffer: Mutex<Buffer>,
    ready: Condvar,
    notify: tokio::sync::Notify,
    /// Called when the queue goes from empty to holding an event, and when it ends (see
    /// [`EventStream::set_on_ready`]); calls hold this lock.
    on_ready: Mutex<Option<ReadyHook>>,
}

/// See [`EventStream::set_on_ready`].
pub type ReadyHook = Box<dyn Fn() + Send + Sync>;

impl Queue {
    fn new(buffer: Buffer) -> Arc<Queue> {
        Arc::new(Queue {
            buffer: Mutex::new(buffer),
            ready: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            on_ready: Mutex::new(None),
        })
    }

    /// Queues a copy of `event`; false once the queue has ended. What it dropped to make room
    /// is added to `overflow`, for the caller to log once it holds no lock.
    pub(crate) fn push_event(&self, event: &Event, overflow: &mut Overflow) -> bool {
        self.push(event.clone(), overflow)
    }

    fn push(&self, event: Event, overflow: &mut Overflow) -> bool {
        let mut buffer = relock(&self.buffer);
        if buffer.closed {
            return false;
        }
        let was_empty = buffer.is_empty();
        *overflow = overflow.and(buffer.push(event));
        drop(buffer);
        self.ready.notify_one();
        self.notify.notify_waiters();
        if was_empty {
            self.signal_ready();
        }
        true
    }

    /// Ends the queue: what is queued stays readable, then readers get the end.
    pub(crate) fn close(&self) {
        let was_closed = std::mem::replace(&mut relock(&self.buffer).closed, true);
        self.ready.notify_all();
        self.notify.notify_waiters();
        if !was_closed {
            self.signal_ready();
        }
    }

    fn signal_ready(&self) {
        if let Some(hook) = relock(&self.on_ready).as_ref() {
            hook();
        }
    }

    fn is_closed(&self) -> bool {
        relock(&self.buffer).closed
    }

    /// Drops the queued events of one registration or watch.
    fn forget(&self, id: u64) {
        drop(relock(&self.buffer).take_all(|e| e.id() == id));
    }
}

/// What a blocking read gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The next event.
    Event(Event),
    /// None came in time (or none was ready, for [`EventStream::try_next`]).
    Empty,
    /// The stream has ended and everything queued has been read.
    Closed,
}

/// A stream of events, with the backpressure policy of the [module docs](self). Readable from async
/// code ([`EventStream::next`]) and from any thread without tokio
/// ([`EventStream::next_timeout`], [`EventStream::try_next`]); several readers may share it, each
/// event goes to one of them. Cheap to clone (clones read the same queue). Dropping the last
/// clone ends the subscription.
#[derive(Clone)]
pub struct EventStream {
    queue: Arc<Queue>,
    _owner: Arc<StreamOwner>,
}

/// Closes the queue when the last clone of an [`EventStream`] goes, so producers stop feeding it.
struct StreamOwner(Arc<Queue>);

impl Drop for StreamOwner {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let buffer = relock(&self.queue.buffer);
        f.debug_struct("EventStream")
            .field("queued", &buffer.len())
            .field("dropped", &buffer.dropped())
            .field("closed", &buffer.closed)
            .finish()
    }
}

impl Default for EventStream {
    fn default() -> Self {
        EventStream::new()
    }
}

impl EventStream {
    /// A new, empty stream: route registrations and watches to it with
    /// [`Route::stream`].
    pub fn new() -> Self {
        EventStream::with_backlog(Buffer::default())
    }

    /// A stream holding `backlog` already (its events and dropped count).
    pub(crate) fn with_backlog(backlog: Buffer) -> Self {
        let queue = Queue::new(backlog);
        EventStream {
            _owner: Arc::new(StreamOwner(queue.clone())),
            queue,
        }
    }

    /// The next event; `None` once the stream has ended and is empty.
    pub async fn next(&self) -> Option<Event> {
        loop {
            let notified = self.queue.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_next() {
                Next::Event(event) => return Some(event),
                Next::Closed => return None,
                Next::Empty => notified.await,
            }
        }
    }

    /// The next event if one is queued, without waiting.
    pub fn try_next(&self) -> Next {
        let mut buffer = relock(&self.queue.buffer);
        match buffer.pop_front() {
            Some(event) => Next::Event(event),
            None if buffer.closed => Next::Closed,
            None => Next::Empty,
        }
    }

    /// The next event, waiting up to `timeout` (`None`: no limit) on the calling thread.
    pub fn next_timeout(&self, timeout: Option<Duration>) -> Next {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut buffer = relock(&self.queue.buffer);
        loop {
            if let Some(event) = buffer.pop_front() {
                return Next::Event(event);
            }
            if buffer.closed {
                return Next::Closed;
            }
            buffer = match deadline {
                None => self
                    .queue
                    .ready
                    .wait(buffer)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Next::Empty;
                    }
                    self.queue
                        .ready
                        .wait_timeout(buffer, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// How many registration status events were dropped because this stream's readers fell
    /// [`EVENT_QUEUE_CAPACITY`] of them behind (a watch's events are merged, never dropped).
    pub fn dropped(&self) -> u64 {
        relock(&self.queue.buffer).dropped()
    }

    /// How many events are queued unread.
    pub fn len(&self) -> usize {
        relock(&self.queue.buffer).len()
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets (or with `None` removes) a function called, on whichever thread queues the event,
    /// each time the stream goes from empty to holding an event, and once when it ends; at once
    /// when it already holds an event or has ended. For readers that wait in a poll loop of
    /// their own (the C library's event fd): after a call, read with [`try_next`](Self::try_next)
    /// until [`Next::Empty`] or [`Next::Closed`]; an event queued after that calls it again. It
    /// must be quick and must not use this stream. Once this returns, the previous function is
    /// not running and will not be called.
    pub fn set_on_ready(&self, hook: Option<ReadyHook>) {
        let mut slot = relock(&self.queue.on_ready);
        *slot = hook;
        if let Some(hook) = slot.as_ref() {
            let pending = {
                let buffer = relock(&self.queue.buffer);
                !buffer.is_empty() || buffer.closed
            };
            if pending {
                hook();
            }
        }
    }

    /// Ends the stream: nothing more is queued; what is queued stays readable, then readers get
    /// the end. Idempotent.
    pub fn close(&self) {
        self.queue.close();
    }

    /// Whether the stream has ended (closed, or its registry closed).
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Drops the queued events of one registration or watch (what `unwatch` does to a shared
    /// stream).
    pub fn forget(&self, id: u64) {
        self.queue.forget(id);
    }

    pub(crate) fn queue(&self) -> Arc<Queue> {
        self.queue.clone()
    }
}

/// A function called with events on the dispatcher thread (see the [module docs](self)).
/// Cheap to clone; clones are the same subscription.
#[derive(Clone)]
pub struct Handler {
    inner: Arc<HandlerSub>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("dropped", &self.dropped())
            .finish()
    }
}

type Callback = Box<dyn Fn(&Event) + Send + Sync>;

pub(crate) struct HandlerSub {
    callback: Callback,
    /// Guarded by the dispatcher's lock (taken first).
    buffer: Mutex<HandlerBuffer>,
    cancelled: AtomicBool,
}

#[derive(Default)]
struct HandlerBuffer {
    buffer: Buffer,
    /// In the dispatcher's ready list (or being run).
    scheduled: bool,
    /// Made with [`Handler::paused`] and not resumed yet: events are queued, not delivered.
    paused: bool,
}

impl Handler {
    /// A handler calling `f` with each event routed to it. Starts the dispatcher thread if this
    /// process has none yet (fails only if the thread cannot be started).
    pub fn new(f: impl Fn(&Event) + Send + Sync + 'static) -> crate::Result<Handler> {
        Handler::make(f, false)
    }

    /// Like [`Handler::new`], but events are only queued until [`Handler::resume`]: a binding
    /// routes a registration or watch to it, records the id it gets back, then resumes, so the
    /// handler never sees an id its host does not know yet.
    pub fn paused(f: impl Fn(&Event) + Send + Sync + 'static) -> crate::Result<Handler> {
        Handler::make(f, true)
    }

    fn make(f: impl Fn(&Event) + Send + Sync + 'static, paused: bool) -> crate::Result<Handler> {
        dispatcher::ensure_started()?;
        Ok(Handler {
            inner: Arc::new(HandlerSub {
                callback: Box::new(f),
                buffer: Mutex::new(HandlerBuffer {
                    paused,
                    ..HandlerBuffer::default()
                }),
                cancelled: AtomicBool::new(false),
            }),
        })
    }

    /// Starts delivering to a handler made with [`Handler::paused`] (what it queued first).
    pub fn resume(&self) {
        dispatcher::resume(&self.inner);
    }

    /// How many registration status events were dropped because the handler fell
    /// [`EVENT_QUEUE_CAPACITY`] of them behind (a watch's events are merged, never dropped).
    pub fn dropped(&self) -> u64 {
        relock(&self.inner.buffer).buffer.dropped()
    }

    /// Stops the handler: its queued events are dropped, none starts from now on, and unless
    /// called on the dispatcher thread, returns once a call of it that is running has returned.
    pub fn cancel(&self) {
        dispatcher::cancel(&self.inner, None);
    }

    /// Delivers what is queued for the handler: returns once none of its events is queued and
    /// it is not running (on the dispatcher thread, the queued events are delivered nested,
    /// before this returns). It goes on receiving later events; events that keep coming
    /// faster than it handles them (a busy watch's) keep this from returning, so it is meant
    /// for a handler whose events end, such as a registration's after its `Unregistered`.
    pub fn finish(&self) {
        dispatcher::finish(&self.inner, None);
    }

    /// Whether the calling thread is the dispatcher thread (i.e. inside a handler).
    pub fn on_dispatcher_thread() -> bool {
        dispatcher::on_dispatcher_thread()
    }

    pub(crate) fn sub(&self) -> Arc<HandlerSub> {
        self.inner.clone()
    }
}

/// Where the events of one registration or watch go, fixed when it is created.
#[derive(Clone)]
pub struct Route(Subscriber);

impl Route {
    /// Queue the events into `stream` (shared with other registrations and watches).
    pub fn stream(stream: &EventStream) -> Route {
        Route(Subscriber::Stream(stream.queue()))
    }

    /// Call `handler` with the events.
    pub fn handler(handler: &Handler) -> Route {
        Route(Subscriber::Handler(handler.sub()))
    }

    pub(crate) fn subscriber(&self) -> Subscriber {
        self.0.clone()
    }
}

/// One place events are pushed to.
#[derive(Clone)]
pub(crate) enum Subscriber {
    Stream(Arc<Queue>),
    Handler(Arc<HandlerSub>),
}

impl Subscriber {
    /// Pushes `event`; false once the subscriber has gone (closed or cancelled). What it
    /// dropped to make room is added to `overflow`, for the caller to log once it holds no lock.
    pub(crate) fn push(&self, event: &Event, overflow: &mut Overflow) -> bool {
        match self {
            Subscriber::Stream(queue) => queue.push(event.clone(), overflow),
            Subscriber::Handler(sub) => dispatcher::push(sub, event.clone(), overflow),
        }
    }

    /// Drops the queued events of `id`; with a handler, also waits for a running call of one of
    /// them (unless on the dispatcher thread). The handler goes on for other ids.
    pub(crate) fn cancel(&self, id: u64) {
        match self {
            Subscriber::Stream(queue) => queue.forget(id),
            Subscriber::Handler(sub) => dispatcher::cancel(sub, Some(id)),
        }
    }

    /// Waits until a handler has been called with every queued event of `id`; nothing to wait
    /// for with a stream.
    pub(crate) async fn finish(&self, id: u64) {
        if let Subscriber::Handler(sub) = self {
            dispatcher::finish_async(sub, Some(id)).await;
        }
    }

    /// Drops the queued events of `id`, without waiting for a running call of one of them.
    pub(crate) fn forget(&self, id: u64) {
        match self {
            Subscriber::Stream(queue) => queue.forget(id),
            Subscriber::Handler(sub) => dispatcher::forget(sub, Some(id)),
        }
    }

    /// [`Subscriber::cancel`] for async callers.
    pub(crate) async fn cancel_async(&self, id: u64) {
        match self {
            Subscriber::Stream(queue) => queue.forget(id),
            Subscriber::Handler(sub) => dispatcher::cancel_async(sub, Some(id)).await,
        }
    }
}

/// The registry-wide subscribers ([`Registry::events`](crate::Registry::events)).
#[derive(Default)]
pub(crate) struct Hub {
    streams: Mutex<Vec<Arc<Queue>>>,
    closed: AtomicBool,
}

impl Hub {
    pub(crate) fn subscribe(&self) -> EventStream {
        let stream = EventStream::new();
        let mut streams = relock(&self.streams);
        if self.closed.load(Ordering::SeqCst) {
            stream.close();
        } else {
            streams.push(stream.queue());
        }
        stream
    }

    /// Whether a registry-wide stream is open.
    pub(crate) fn has_streams(&self) -> bool {
        !relock(&self.streams).is_empty()
    }

    /// Pushes `event` into every registry-wide stream; what they dropped is added to `overflow`.
    pub(crate) fn publish(&self, event: &Event, overflow: &mut Overflow) {
        let mut streams = relock(&self.streams);
        if !streams.is_empty() {
            streams.retain(|queue| queue.push(event.clone(), overflow));
        }
    }

    /// Ends every registry-wide stream (after the registry's last events).
    pub(crate) fn close(&self) {
        let streams = {
            let mut streams = relock(&self.streams);
            self.closed.store(true, Ordering::SeqCst);
            std::mem::take(&mut *streams)
        };
        for queue in streams {
            queue.close();
        }
    }
}

/// The thread that runs every handler of the process.
///
/// Why one thread: handlers then never overlap, so a host needs no locking between them; the
/// thread is not a tokio worker, so a handler may make blocking library calls; and "wait until
/// the handler being run has returned" is a single condition that cannot deadlock across
/// registries.
pub mod dispatcher {
    use super::*;

    struct Dispatcher {
        state: Mutex<State>,
        /// Signalled when a handler becomes ready.
        work: Condvar,
        /// Signalled when a handler returns.
        idle: Condvar,
    }

    struct State {
        ready: std::collections::VecDeque<Arc<HandlerSub>>,
        /// The handlers being called, and the ids of the events they are called with: the
        /// loop's call first, then the calls nested in it ([`finish`] inside a handler).
        running: Vec<(Arc<HandlerSub>, u64)>,
        /// The process whose thread serves the queue (0: none yet). After fork() the child has
        /// no such thread and starts its own.
        pid: u32,
        /// The tasks waiting in [`wait_async`] (they must not block a runtime thread), woken
        /// with `idle`. Kept under this lock, which fork() handlers hold across the fork: a
        /// waiter list with a lock of its own could be copied locked into the child.
        async_waiters: Vec<std::task::Waker>,
    }

    /// Wakes whoever waits for a handler to return.
    fn notify_idle(state: &mut State) {
        DISPATCHER.idle.notify_all();
        for waker in state.async_waiters.drain(..) {
            waker.wake();
        }
    }

    static DISPATCHER: Dispatcher = Dispatcher {
        state: Mutex::new(State {
            ready: std::collections::VecDeque::new(),
            running: Vec::new(),
            pid: 0,
            async_waiters: Vec::new(),
        }),
        work: Condvar::new(),
        idle: Condvar::new(),
    };

    thread_local! {
        static ON_DISPATCHER: Cell<bool> = const { Cell::new(false) };
        /// The dispatcher's lock, held by the thread calling fork() from the prepare handler
        /// until the parent and child handlers.
        static HELD_ACROSS_FORK: std::cell::RefCell<Option<MutexGuard<'static, State>>> =
            const { std::cell::RefCell::new(None) };
    }

    fn lock() -> MutexGuard<'static, State> {
        relock(&DISPATCHER.state)
    }

    /// Whether the calling thread is the dispatcher thread (i.e. inside a handler).
    pub fn on_dispatcher_thread() -> bool {
        ON_DISPATCHER.try_with(Cell::get).unwrap_or(false)
    }

    /// fork() prepare handler: no other thread may hold the lock while the process is copied, or
    /// the child would inherit it locked forever.
    pub fn before_fork() {
        let guard = lock();
        let _ = HELD_ACROSS_FORK.try_with(|held| *held.borrow_mut() = Some(guard));
    }

    /// fork() parent and child handler. In the child the thread does not exist: what was
    /// queued or running belongs to the parent.
    pub fn after_fork(in_child: bool) {
        let Ok(Some(mut guard)) = HELD_ACROSS_FORK.try_with(|held| held.borrow_mut().take()) else {
            return;
        };
        if in_child {
            guard.ready.clear();
            guard.running.clear();
            // The parent's tasks, of the parent's runtime: not woken, nor dropped here.
            std::mem::forget(std::mem::take(&mut guard.async_waiters));
        }
        drop(guard);
    }

    /// Installs `before_fork`/`after_fork` as `pthread_atfork` handlers, once per process, for
    /// bindings that have no fork handlers of their own (the C library calls them from its own,
    /// which also orders them with its log sink's lock).
    pub fn install_fork_handlers() {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        extern "C" fn prepare() {
            before_fork();
        }
        extern "C" fn parent() {
            after_fork(false);
        }
        extern "C" fn child() {
            after_fork(true);
        }
        INSTALLED.call_once(|| {
            // SAFETY: the handlers only lock and unlock the dispatcher's mutex on the forking
            // thread.
            unsafe {
                libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
            }
        });
    }

    pub(crate) fn ensure_started() -> crate::Result<()> {
        let mut state = lock();
        let pid = std::process::id();
        if state.pid == pid {
            return Ok(());
        }
        std::thread::Builder::new()
            .name(DISPATCHER_THREAD_NAME.to_string())
            .spawn(run)
            .map_err(|e| {
                crate::Error::new(
                    crate::ErrorKind::Internal,
                    format!("cannot start the event dispatcher thread: {e}"),
                )
            })?;
        state.pid = pid;
        Ok(())
    }

    pub(super) fn push(sub: &Arc<HandlerSub>, event: Event, overflow: &mut Overflow) -> bool {
        let mut state = lock();
        if sub.cancelled.load(Ordering::SeqCst) {
            return false;
        }
        let mut buffer = relock(&sub.buffer);
        *overflow = overflow.and(buffer.buffer.push(event));
        if !buffer.scheduled && !buffer.paused {
            buffer.scheduled = true;
            drop(buffer);
            state.ready.push_back(sub.clone());
            drop(state);
            DISPATCHER.work.notify_one();
        }
        true
    }

    pub(super) fn resume(sub: &Arc<HandlerSub>) {
        let mut state = lock();
        let mut buffer = relock(&sub.buffer);
        buffer.paused = false;
        if !buffer.scheduled && !buffer.buffer.is_empty() {
            buffer.scheduled = true;
            drop(buffer);
            state.ready.push_back(sub.clone());
            drop(state);
            DISPATCHER.work.notify_one();
        }
    }

    /// [`is_running`] now, for the unit tests.
    #[cfg(test)]
    pub(super) fn running_now(sub: &Arc<HandlerSub>, id: Option<u64>) -> bool {
        is_running(&lock(), sub, id)
    }

    /// Whether a call of `sub` (for the event of `id`, or any with `None`) is running.
    fn is_running(state: &State, sub: &Arc<HandlerSub>, id: Option<u64>) -> bool {
        state
            .running
            .iter()
            .any(|(running, event)| Arc::ptr_eq(sub, running) && id.is_none_or(|id| id == *event))
    }

    fn matches(event: &Event, id: Option<u64>) -> bool {
        id.is_none_or(|id| event.id() == id)
    }

    /// Stops delivering to `sub` the events of `id` (`None`: stops the handler for good): they
    /// are dropped, and unless on the dispatcher thread, waits for a running call of them.
    pub(super) fn cancel(sub: &Arc<HandlerSub>, id: Option<u64>) {
        let mut state = lock();
        let dropped: Vec<Event> = {
            let mut buffer = relock(&sub.buffer);
            if id.is_none() {
                sub.cancelled.store(true, Ordering::SeqCst);
            }
            buffer.buffer.take_all(|e| matches(e, id))
        };
        let thread_alive = state.pid == std::process::id();
        if thread_alive && !on_dispatcher_thread() {
            while is_running(&state, sub, id) {
                state = DISPATCHER
                    .idle
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        drop(state);
        drop(dropped);
    }

    /// Delivers every queued event of `id` (`None`: every queued event) to `sub` and returns
    /// once none of them is queued or running. On the dispatcher thread (inside a handler) they
    /// are delivered here, nested.
    pub(super) fn finish(sub: &Arc<HandlerSub>, id: Option<u64>) {
        let thread_alive = lock().pid == std::process::id();
        if !thread_alive {
            // After fork() nothing runs in the child: nothing to deliver on.
            cancel(sub, id);
            return;
        }
        if on_dispatcher_thread() {
            // The loop is blocked in the caller: deliver what is queued here, nested.
            loop {
                let next = {
                    let mut state = lock();
                    let mut buffer = relock(&sub.buffer);
                    let next = if sub.cancelled.load(Ordering::SeqCst) {
                        None
                    } else {
                        buffer.buffer.take_first(|e| matches(e, id))
                    };
                    // Running, as the loop's calls are: a cancel or finish of it on another
                    // thread waits for it (the binding frees what the handler uses after).
                    if let Some(event) = &next {
                        state.running.push((sub.clone(), event.id()));
                    }
                    next
                };
                let Some(event) = next else { break };
                let _ = catch_unwind(AssertUnwindSafe(|| (sub.callback)(&event)));
                drop(event);
                let mut state = lock();
                state.running.pop();
                notify_idle(&mut state);
            }
            return;
        }
        // A handler still paused by its binding would never drain.
        resume(sub);
        let mut state = lock();
        while busy(&state, sub, id) {
            state = DISPATCHER
                .idle
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether `sub` has a queued or running event of `id` (`None`: any).
    fn busy(state: &State, sub: &Arc<HandlerSub>, id: Option<u64>) -> bool {
        is_running(state, sub, id)
            || (!sub.cancelled.load(Ordering::SeqCst)
                && relock(&sub.buffer).buffer.any(|e| matches(e, id)))
    }

    /// Waits, without blocking the thread, until `done` holds under the dispatcher's lock.
    async fn wait_async(done: impl Fn(&State) -> bool) {
        std::future::poll_fn(|cx| {
            let mut state = lock();
            if done(&state) {
                return std::task::Poll::Ready(());
            }
            if !state.async_waiters.iter().any(|w| w.will_wake(cx.waker())) {
                state.async_waiters.push(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// [`finish`] for async callers: waits without blocking a runtime thread. On the
    /// dispatcher thread (an async call made from inside a handler, through a runtime's
    /// `block_on`) it delivers nothing: a handler called there, inside the runtime, could make
    /// no blocking library call. The caller delivers with [`Handler::finish`] once out of the
    /// runtime, or the dispatcher loop does after the handler returns.
    pub(super) async fn finish_async(sub: &Arc<HandlerSub>, id: Option<u64>) {
        let thread_alive = lock().pid == std::process::id();
        if !thread_alive {
            finish(sub, id);
            return;
        }
        if on_dispatcher_thread() {
            return;
        }
        resume(sub);
        wait_async(|state| !busy(state, sub, id)).await;
    }

    /// [`cancel`] for async callers: waits without blocking a runtime thread.
    pub(super) async fn cancel_async(sub: &Arc<HandlerSub>, id: Option<u64>) {
        let thread_alive = lock().pid == std::process::id();
        if !thread_alive || on_dispatcher_thread() {
            cancel(sub, id);
            return;
        }
        // Nothing can be running on this thread.
        forget(sub, id);
        wait_async(|state| !is_running(state, sub, id)).await;
    }

    /// Stops delivering to `sub` the events of `id` (`None`: stops the handler for good): they
    /// are dropped, without waiting for a running call of them.
    pub(super) fn forget(sub: &Arc<HandlerSub>, id: Option<u64>) {
        let dropped = {
            let _state = lock();
            let mut buffer = relock(&sub.buffer);
            if id.is_none() {
                sub.cancelled.store(true, Ordering::SeqCst);
            }
            buffer.buffer.take_all(|e| matches(e, id))
        };
        // Freed once the locks are released.
        drop(dropped);
    }

    fn run() {
        let _ = ON_DISPATCHER.try_with(|on| on.set(true));
        let mut state = lock();
        loop {
            let Some(sub) = state.ready.pop_front() else {
                state = DISPATCHER
                    .work
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            };
            // Checked under the lock that cancel() takes: a cancelled handler never starts.
            let event = {
                let mut buffer = relock(&sub.buffer);
                let event = if sub.cancelled.load(Ordering::SeqCst) {
                    None
                } else {
                    buffer.buffer.pop_front()
                };
                if event.is_none() {
                    buffer.scheduled = false;
                }
                event
            };
            let Some(event) = event else {
                notify_idle(&mut state);
                continue;
            };
            state.running.push((sub.clone(), event.id()));
            drop(state);
            // A panic in a handler must not end the thread (the bindings catch their own).
            let _ = catch_unwind(AssertUnwindSafe(|| (sub.callback)(&event)));
            drop(event);
            state = lock();
            state.running.pop();
            {
                let mut buffer = relock(&sub.buffer);
                if !sub.cancelled.load(Ordering::SeqCst) && !buffer.buffer.is_empty() {
                    drop(buffer);
                    state.ready.push_back(sub.clone());
                } else {
                    buffer.scheduled = false;
                }
            }
            notify_idle(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn status(id: u64, event: StatusEvent) -> Event {
        Event::Status {
            registration_id: id,
            service: "s".into(),
            node: "n".into(),
            event,
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_but_never_the_final_event() {
        let stream = EventStream::new();
        let queue = stream.queue();
        let mut none = Overflow::NONE;
        let _ = queue.push(status(1, StatusEvent::Unregistered), &mut none);
        // What each push dropped is handed back (to be logged once no lock is held): a warning
        // at the 1st, 2nd, 4th, 8th drop.
        let mut warnings = Vec::new();
        for lease in 0..(EVENT_QUEUE_CAPACITY as i64 + 10) {
            let mut overflow = Overflow::NONE;
            let _ = queue.push(
                status(2, StatusEvent::Registered { lease_id: lease }),
                &mut overflow,
            );
            if overflow != Overflow::NONE {
                warnings.push(overflow.warn_at);
            }
        }
        assert_eq!(none, Overflow::NONE);
        assert_eq!(warnings, [1, 2, 4, 8]);
        assert_eq!(stream.len(), EVENT_QUEUE_CAPACITY);
        assert_eq!(stream.dropped(), 11);
        assert!(matches!(stream.try_next(), Next::Event(e) if e.is_final()));
        assert!(matches!(
            stream.try_next(),
            Next::Event(Event::Status {
                event: StatusEvent::Registered { lease_id: 11 },
                ..
            })
        ));
        stream.close();
        let mut left = 0;
        while let Next::Event(_) = stream.next_timeout(Some(Duration::ZERO)) {
            left += 1;
        }
        assert_eq!(left, EVENT_QUEUE_CAPACITY - 2);
        assert_eq!(stream.try_next(), Next::Closed);
    }

    #[test]
    fn the_ready_hook_fires_when_the_stream_turns_non_empty_and_when_it_ends() {
        use std::sync::atomic::AtomicUsize;
        let stream = EventStream::new();
        let queue = stream.queue();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut none = Overflow::NONE;
        let hook = |calls: &Arc<AtomicUsize>| -> ReadyHook {
            let calls = calls.clone();
            Box::new(move || {
                calls.fetch_add(1, Ordering::SeqCst);
            })
        };
        let count = || calls.load(Ordering::SeqCst);
        // Set on an empty stream: not called.
        stream.set_on_ready(Some(hook(&calls)));
        assert_eq!(count(), 0);
        // Empty -> one event: called; a second event while the first is unread: not again.
        let _ = queue.push(
            status(1, StatusEvent::Registered { lease_id: 7 }),
            &mut none,
        );
        let _ = queue.push(
            status(1, StatusEvent::Registered { lease_id: 8 }),
            &mut none,
        );
        assert_eq!(count(), 1);
        // Drained, then an event: called again.
        assert!(matches!(stream.try_next(), Next::Event(_)));
        assert!(matches!(stream.try_next(), Next::Event(_)));
        assert_eq!(stream.try_next(), Next::Empty);
        let _ = queue.push(
            status(1, StatusEvent::Registered { lease_id: 9 }),
            &mut none,
        );
        assert_eq!(count(), 2);
        // Set while an event waits: called at once, so that event is not missed.
        stream.set_on_ready(Some(hook(&calls)));
        assert_eq!(count(), 3);
        // Removed: no more calls.
        stream.set_on_ready(None);
        assert!(matches!(stream.try_next(), Next::Event(_)));
        let _ = queue.push(
            status(1, StatusEvent::Registered { lease_id: 10 }),
            &mut none,
        );
        assert_eq!(count(), 3);
        // The end calls it once, even with events queued; closing again does not.
        stream.set_on_ready(Some(hook(&calls)));
        assert_eq!(count(), 4);
        stream.close();
        stream.close();
        assert_eq!(count(), 5);
        assert!(matches!(stream.try_next(), Next::Event(_)));
        assert_eq!(stream.try_next(), Next::Closed);
    }

    #[test]
    fn finish_delivers_everything_queued_and_cancel_stops_the_handler() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let handler = Handler::new(move |e| relock(&into).push(e.kind_str())).unwrap();
        let route = Route::handler(&handler).subscriber();
        let mut none = Overflow::NONE;
        let _ = route.push(
            &status(1, StatusEvent::Registered { lease_id: 1 }),
            &mut none,
        );
        let _ = route.push(&status(1, StatusEvent::Unregistered), &mut none);
        handler.finish();
        assert_eq!(*relock(&seen), ["registered", "unregistered"]);
        handler.cancel();
        assert!(!route.push(&status(1, StatusEvent::Unregistered), &mut none));
    }

    /// A handler called with an event of one registration delivers another's nested (its
    /// unregister inside the handler): that nested call counts as running, so a cancel or
    /// finish of the other on another thread waits for it.
    #[test]
    fn a_nested_call_counts_as_running() {
        use std::sync::mpsc;
        let (inside_tx, inside) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let slot: Arc<Mutex<Option<Handler>>> = Arc::new(Mutex::new(None));
        let me = slot.clone();
        let handler = Handler::paused(move |e| {
            if e.id() == 1 {
                // Delivers the second registration's events here, nested.
                let me = relock(&me).clone().expect("the handler");
                dispatcher::finish(&me.sub(), Some(2));
            } else {
                let _ = inside_tx.send(());
                let _ = relock(&released).recv_timeout(Duration::from_secs(30));
            }
        })
        .unwrap();
        *relock(&slot) = Some(handler.clone());
        let route = Route::handler(&handler).subscriber();
        let mut none = Overflow::NONE;
        let _ = route.push(
            &status(1, StatusEvent::Registered { lease_id: 1 }),
            &mut none,
        );
        let _ = route.push(
            &status(2, StatusEvent::Registered { lease_id: 2 }),
            &mut none,
        );
        handler.resume();
        inside
            .recv_timeout(Duration::from_secs(30))
            .expect("the second's event delivered nested");
        let running = dispatcher::running_now(&handler.sub(), Some(2));
        release.send(()).unwrap();
        handler.finish();
        *relock(&slot) = None;
        assert!(
            running,
            "the nested call of the second registration's event is running"
        );
    }
}
