//! Event structs as C sees them, the subscriptions that route a registration's or a watch's
//! events, and the pull queue of `etcd_registry_next_event`.

use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use registry::{StatusEvent, WatchEvent, WatchEventKind};

use crate::dispatch;
use crate::info::etcd_registry_info_entry;
use crate::node_list::NodeStorage;
use crate::status::etcd_registry_status;
use crate::strings::to_c;

/// Kind of an `etcd_registry_status_event`; one of the `ETCD_REGISTRY_STATUS_KIND_*` values.
#[allow(non_camel_case_types)]
pub type etcd_registry_status_kind = u32;
/// The key was put for the first time (`lease_id` is set).
pub const ETCD_REGISTRY_STATUS_KIND_REGISTERED: etcd_registry_status_kind = 1;
/// The first attempt failed before any registration (`error_status`, `error_message`); RETRYING
/// events follow.
pub const ETCD_REGISTRY_STATUS_KIND_FAILED: etcd_registry_status_kind = 2;
/// A registered node lost its keep-alive: etcd down, partitioned, the lease expired or was
/// revoked (`error_status`, `error_message`). RETRYING events follow.
pub const ETCD_REGISTRY_STATUS_KIND_KEEPALIVE_LOST: etcd_registry_status_kind = 3;
/// The next attempt comes in `delay_ms` (`attempt` counts from 1; `error_*` say why).
pub const ETCD_REGISTRY_STATUS_KIND_RETRYING: etcd_registry_status_kind = 4;
/// The key is back after a loss (`lease_id` is set: the old lease if it survived).
pub const ETCD_REGISTRY_STATUS_KIND_REREGISTERED: etcd_registry_status_kind = 5;
/// The registration ended without the caller asking for it: a newer registration of the same
/// node on the same registry replaced it (the key stays, owned by the newer one). Always the
/// last event of a registration. Not sent for `etcd_registry_unregister` or
/// `etcd_registry_close`: once those return, no event of the registration is delivered at all.
pub const ETCD_REGISTRY_STATUS_KIND_UNREGISTERED: etcd_registry_status_kind = 6;
/// The info given to `etcd_registry_update` is in etcd (`lease_id` is set). Several updates
/// made before one put could land (etcd down, or quick succession) give one UPDATED, for the
/// newest. Does not change the state.
pub const ETCD_REGISTRY_STATUS_KIND_UPDATED: etcd_registry_status_kind = 7;

/// Kind of an `etcd_registry_watch_event`; one of the `ETCD_REGISTRY_WATCH_KIND_*` values.
#[allow(non_camel_case_types)]
pub type etcd_registry_watch_kind = u32;
/// A node appeared. The first events of a watch are one ADDED per node present when it started.
pub const ETCD_REGISTRY_WATCH_KIND_ADDED: etcd_registry_watch_kind = 1;
/// A node's info changed.
pub const ETCD_REGISTRY_WATCH_KIND_UPDATED: etcd_registry_watch_kind = 2;
/// A node disappeared (unregistered, or its lease expired); `info_json` is its last info.
pub const ETCD_REGISTRY_WATCH_KIND_REMOVED: etcd_registry_watch_kind = 3;
/// The watch missed history (etcd compacted it while disconnected), re-listed the service and
/// sent the difference as ADDED/UPDATED/REMOVED just before this event. `node_name` and
/// `info_json` are NULL.
pub const ETCD_REGISTRY_WATCH_KIND_RESYNCED: etcd_registry_watch_kind = 4;

/// Which member of an `etcd_registry_event` is meaningful; one of `ETCD_REGISTRY_EVENT_TYPE_*`.
#[allow(non_camel_case_types)]
pub type etcd_registry_event_type = u32;
/// A status event of a registration: read `event->status`.
pub const ETCD_REGISTRY_EVENT_TYPE_STATUS: etcd_registry_event_type = 1;
/// A watch event: read `event->watch`.
pub const ETCD_REGISTRY_EVENT_TYPE_WATCH: etcd_registry_event_type = 2;

/// A change of a registration. Every pointer in it is owned by the library: in a callback it
/// is valid until the callback returns; from `etcd_registry_next_event` until
/// `etcd_registry_event_free`. Copy what you keep.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct etcd_registry_status_event {
    /// What happened: one of `ETCD_REGISTRY_STATUS_KIND_*`.
    pub kind: etcd_registry_status_kind,
    /// The id `etcd_registry_register` returned.
    pub registration_id: u64,
    /// The service name, as registered. Never NULL.
    pub service: *const c_char,
    /// The node name, as registered. Never NULL.
    pub node: *const c_char,
    /// RETRYING: the attempt number, 1 for the first retry after a failure. Otherwise 0.
    pub attempt: u32,
    /// RETRYING: milliseconds until that attempt. Otherwise 0.
    pub delay_ms: u64,
    /// FAILED, KEEPALIVE_LOST, RETRYING: the kind of the failure (CONNECTION, TIMEOUT, AUTH,
    /// NOT_FOUND for an expired lease …). Otherwise `ETCD_REGISTRY_STATUS_OK`.
    pub error_status: etcd_registry_status,
    /// FAILED, KEEPALIVE_LOST, RETRYING: a readable description of the failure (its kind is
    /// `error_status`). Otherwise NULL.
    pub error_message: *const c_char,
    /// REGISTERED, REREGISTERED, UPDATED: the etcd lease the key is attached to. Otherwise 0.
    pub lease_id: i64,
}

/// A change of a watched service. Pointers as in `etcd_registry_status_event`.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct etcd_registry_watch_event {
    /// What happened: one of `ETCD_REGISTRY_WATCH_KIND_*`.
    pub kind: etcd_registry_watch_kind,
    /// The id `etcd_registry_watch` returned.
    pub watch_id: u64,
    /// The service watched. Never NULL.
    pub service: *const c_char,
    /// The node concerned; NULL for RESYNCED.
    pub node_name: *const c_char,
    /// The node's info as a JSON object of strings (for REMOVED its last known info), `null`
    /// when the node has no info object (see `etcd_registry_node_list_info_json`); NULL for
    /// RESYNCED. A convenience: `info` has the same info as entries.
    pub info_json: *const c_char,
    /// The node's info as `info_len` entries sorted by key, strings with lengths (see
    /// `etcd_registry_info_entry`); NULL when `info_len` is 0.
    pub info: *const etcd_registry_info_entry,
    /// The number of entries of `info`.
    pub info_len: usize,
    /// True when the node has no info object at all (see `etcd_registry_node_entry`); false
    /// for RESYNCED.
    pub info_absent: bool,
    /// The etcd revision of the change.
    pub revision: i64,
}

/// An event taken from the pull queue by `etcd_registry_next_event`. `event_type` says which of
/// `status` and `watch` is meaningful; the other is zeroed. Free it with
/// `etcd_registry_event_free`; its strings live until then.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct etcd_registry_event {
    /// `ETCD_REGISTRY_EVENT_TYPE_STATUS` or `ETCD_REGISTRY_EVENT_TYPE_WATCH`.
    pub event_type: etcd_registry_event_type,
    /// The status event, when `event_type` is STATUS.
    pub status: etcd_registry_status_event,
    /// The watch event, when `event_type` is WATCH.
    pub watch: etcd_registry_watch_event,
}

/// Called with each status event of one registration. See the header's top comment for the
/// thread and the guarantees.
#[allow(non_camel_case_types)]
pub type etcd_registry_status_callback =
    Option<unsafe extern "C" fn(event: *const etcd_registry_status_event, user_data: *mut c_void)>;

/// Called with each event of one watch. See the header's top comment for the thread and the
/// guarantees.
#[allow(non_camel_case_types)]
pub type etcd_registry_watch_callback =
    Option<unsafe extern "C" fn(event: *const etcd_registry_watch_event, user_data: *mut c_void)>;

/// The host's `user_data`, handed back untouched on the dispatcher thread.
#[derive(Clone, Copy)]
pub(crate) struct UserData(pub(crate) *mut c_void);
// SAFETY: the library never dereferences it; passing it to the host's callback on another thread
// is what the host asked for (documented in the header).
unsafe impl Send for UserData {}
unsafe impl Sync for UserData {}

/// Where the events of one registration or watch go.
pub(crate) enum Sink {
    Status(
        unsafe extern "C" fn(*const etcd_registry_status_event, *mut c_void),
        UserData,
    ),
    Watch(
        unsafe extern "C" fn(*const etcd_registry_watch_event, *mut c_void),
        UserData,
    ),
    Pull(Arc<PullQueue>),
}

/// One registration's or watch's subscription to its events.
pub(crate) struct Sub {
    pub(crate) id: u64,
    pub(crate) service: CString,
    /// The node name, for registrations.
    pub(crate) node: Option<CString>,
    pub(crate) sink: Sink,
    /// Set (under the lock of the queue the sink uses) by unregister/unwatch/close; from then on
    /// no event of this subscription is delivered.
    pub(crate) cancelled: AtomicBool,
}

impl Sub {
    pub(crate) fn new(id: u64, service: &str, node: Option<&str>, sink: Sink) -> Self {
        Sub {
            id,
            service: to_c(service),
            node: node.map(to_c),
            sink,
            cancelled: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Routes one event to the callback thread or the pull queue.
    pub(crate) fn deliver(self: &Arc<Self>, payload: Payload) {
        match &self.sink {
            Sink::Pull(queue) => queue.push(self.clone(), payload),
            Sink::Status(..) | Sink::Watch(..) => dispatch::push(self.clone(), payload),
        }
    }

    /// Calls the callback with `payload` (on the dispatcher thread).
    pub(crate) fn call(&self, payload: &Payload) {
        let event = OwnedEvent::new(self, payload);
        match (&self.sink, payload) {
            (Sink::Status(callback, user_data), Payload::Status(_)) => {
                crate::tsan::acquire(user_data.0);
                // SAFETY: the host gave this function pointer for exactly this use; the event
                // and its strings live until the call returns.
                unsafe { callback(&event.public.status, user_data.0) }
                crate::tsan::release(user_data.0);
            }
            (Sink::Watch(callback, user_data), Payload::Watch(_)) => {
                crate::tsan::acquire(user_data.0);
                // SAFETY: as above.
                unsafe { callback(&event.public.watch, user_data.0) }
                crate::tsan::release(user_data.0);
            }
            _ => {}
        }
    }

    /// The host's `user_data`, for a callback subscription.
    pub(crate) fn user_data(&self) -> Option<*mut c_void> {
        match &self.sink {
            Sink::Status(_, user_data) | Sink::Watch(_, user_data) => Some(user_data.0),
            Sink::Pull(_) => None,
        }
    }
}

/// An event as the core produced it.
pub(crate) enum Payload {
    Status(StatusEvent),
    Watch(WatchEvent),
}

/// A C event together with the strings its pointers point into. `#[repr(C)]` with `public`
/// first, so that a pointer to it is a pointer to `public` (what `etcd_registry_next_event`
/// hands out and `etcd_registry_event_free` takes back).
#[repr(C)]
pub(crate) struct OwnedEvent {
    pub(crate) public: etcd_registry_event,
    _service: CString,
    _node: Option<CString>,
    _text: Option<CString>,
    /// The watched node's name and info entries.
    _info: Option<NodeStorage>,
}

// SAFETY: the raw pointers in `public` point into the CStrings and the node storage owned by the
// same value, whose heap buffers move with it and are never mutated.
unsafe impl Send for OwnedEvent {}

fn empty_status() -> etcd_registry_status_event {
    etcd_registry_status_event {
        kind: 0,
        registration_id: 0,
        service: std::ptr::null(),
        node: std::ptr::null(),
        attempt: 0,
        delay_ms: 0,
        error_status: etcd_registry_status::Ok,
        error_message: std::ptr::null(),
        lease_id: 0,
    }
}

fn status_of(event: &StatusEvent) -> etcd_registry_status_event {
    let empty = empty_status();
    match event {
        StatusEvent::Registered { lease_id } => etcd_registry_status_event {
            kind: ETCD_REGISTRY_STATUS_KIND_REGISTERED,
            lease_id: *lease_id,
            ..empty
        },
        StatusEvent::Failed { error } => etcd_registry_status_event {
            kind: ETCD_REGISTRY_STATUS_KIND_FAILED,
            error_status: etcd_registry_status::from_kind(error.kind()),
            ..empty
        },
        StatusEvent::KeepAliveLost { error } => etcd_registry_status_event {
            kind: ETCD_REGISTRY_STATUS_KIND_KEEPALIVE_LOST,
            error_status: etcd_registry_status::from_kind(error.kind()),
            ..empty
        },
        StatusEvent::Retrying {
            attempt,
            delay,
            error,
        } => etcd_registry_status_event {
            kind: ETCD_REGISTRY_STATUS_KIND_RETRYING,
            attempt: *attempt,
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error_status: etcd_registry_status::from_kind(error.kind()),
            ..empty
        },
        StatusEvent::Reregistered { lease_id } => etcd_registry_status_event {
            kind: ETCD_REGISTRY_STATUS_KIND_REREGISTERED,
            lease_id: *lease_id,
            ..empty
        },
        StatusEvent::Updated { lease_id } => etcd_registry_status_event {
            kind: ETCD_REGISTRY_STATUS_KIND_UPDATED,
            lease_id: *lease_id,
            ..empty
        },
        StatusEvent::Unregistered => etcd_registry_status_event {
            kind: ETCD_REGISTRY_STATUS_KIND_UNREGISTERED,
            ..empty
        },
    }
}

fn error_text(event: &StatusEvent) -> Option<String> {
    match event {
        StatusEvent::Failed { error }
        | StatusEvent::KeepAliveLost { error }
        | StatusEvent::Retrying { error, .. } => Some(error.message().to_string()),
        _ => None,
    }
}

fn watch_kind(kind: WatchEventKind) -> etcd_registry_watch_kind {
    match kind {
        WatchEventKind::Added => ETCD_REGISTRY_WATCH_KIND_ADDED,
        WatchEventKind::Updated => ETCD_REGISTRY_WATCH_KIND_UPDATED,
        WatchEventKind::Removed => ETCD_REGISTRY_WATCH_KIND_REMOVED,
        WatchEventKind::Resynced => ETCD_REGISTRY_WATCH_KIND_RESYNCED,
    }
}

fn empty_watch() -> etcd_registry_watch_event {
    etcd_registry_watch_event {
        kind: 0,
        watch_id: 0,
        service: std::ptr::null(),
        node_name: std::ptr::null(),
        info_json: std::ptr::null(),
        info: std::ptr::null(),
        info_len: 0,
        info_absent: false,
        revision: 0,
    }
}

impl OwnedEvent {
    pub(crate) fn new(sub: &Sub, payload: &Payload) -> Self {
        let service = sub.service.clone();
        match payload {
            Payload::Status(event) => {
                let node = sub.node.clone().unwrap_or_default();
                let text = error_text(event).map(|t| to_c(&t));
                let mut status = status_of(event);
                status.registration_id = sub.id;
                status.service = service.as_ptr();
                status.node = node.as_ptr();
                status.error_message = text.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
                OwnedEvent {
                    public: etcd_registry_event {
                        event_type: ETCD_REGISTRY_EVENT_TYPE_STATUS,
                        status,
                        watch: empty_watch(),
                    },
                    _service: service,
                    _node: Some(node),
                    _text: text,
                    _info: None,
                }
            }
            Payload::Watch(event) => {
                let name = event.node.as_ref().map(|n| to_c(&n.name));
                let stored = event.node.as_ref().map(NodeStorage::of_node);
                let info = stored.as_ref().map(NodeStorage::json);
                let entries = stored.as_ref().map_or(&[][..], NodeStorage::infos);
                let watch = etcd_registry_watch_event {
                    kind: watch_kind(event.kind),
                    watch_id: sub.id,
                    service: service.as_ptr(),
                    node_name: name.as_ref().map_or(std::ptr::null(), |n| n.as_ptr()),
                    info_json: info.as_ref().map_or(std::ptr::null(), |i| i.as_ptr()),
                    info: if entries.is_empty() {
                        std::ptr::null()
                    } else {
                        entries.as_ptr()
                    },
                    info_len: entries.len(),
                    info_absent: stored.as_ref().is_some_and(NodeStorage::info_absent),
                    revision: event.revision,
                };
                OwnedEvent {
                    public: etcd_registry_event {
                        event_type: ETCD_REGISTRY_EVENT_TYPE_WATCH,
                        status: empty_status(),
                        watch,
                    },
                    _service: service,
                    _node: name,
                    _text: info,
                    _info: stored,
                }
            }
        }
    }
}

/// The events of a registry's subscriptions made without a callback, waiting for
/// `etcd_registry_next_event`.
pub(crate) struct PullQueue {
    state: Mutex<PullState>,
    ready: Condvar,
}

struct PullState {
    events: VecDeque<(Arc<Sub>, Payload)>,
    closed: bool,
}

/// What waiting on the pull queue gave.
pub(crate) enum Pulled {
    Event(Arc<Sub>, Payload),
    TimedOut,
    Closed,
}

impl PullQueue {
    pub(crate) fn new() -> Self {
        PullQueue {
            state: Mutex::new(PullState {
                events: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PullState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, sub: Arc<Sub>, payload: Payload) {
        let mut state = self.lock();
        if state.closed || sub.is_cancelled() {
            return;
        }
        state.events.push_back((sub, payload));
        drop(state);
        self.ready.notify_one();
    }

    /// Cancels subscriptions: their queued events are dropped and no more are queued.
    pub(crate) fn cancel(&self, subs: &[Arc<Sub>]) {
        let mut state = self.lock();
        for sub in subs {
            sub.cancelled.store(true, Ordering::SeqCst);
        }
        state.events.retain(|(sub, _)| !sub.is_cancelled());
    }

    /// Closes the queue: everything queued is dropped and every waiter returns `Closed`.
    pub(crate) fn close(&self) {
        let dropped = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.events)
        };
        self.ready.notify_all();
        drop(dropped);
    }

    /// The next event, waiting up to `timeout` (`None`: no limit).
    pub(crate) fn pop(&self, timeout: Option<Duration>) -> Pulled {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut state = self.lock();
        loop {
            if state.closed {
                return Pulled::Closed;
            }
            if let Some((sub, payload)) = state.events.pop_front() {
                return Pulled::Event(sub, payload);
            }
            match deadline {
                None => {
                    state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Pulled::TimedOut;
                    }
                    state = self
                        .ready
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}
