//! Event structs as C sees them, and the adapters from the core's events (see
//! `registry::events`) to C callbacks. The pull queue is the core's `EventStream`.

use std::ffi::{c_char, c_int, c_void, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use registry::events::Next;
use registry::{Event, Handler, StatusEvent, WatchEventKind};

use crate::handle::{duration_ms, etcd_registry, handle, out, write_out};
use crate::info::etcd_registry_info_entry;
use crate::node_list::NodeStorage;
use crate::status::{etcd_registry_status, guard, guard_value, Failure};
use crate::strings::to_c;

/// Kind of an `etcd_registry_status_event`; one of the `ETCD_REGISTRY_STATUS_KIND_*` values.
#[allow(non_camel_case_types)]
pub type etcd_registry_status_kind = u32;
/// The key was put for the first time, its keep-alive running and (for a new lease) the watch of
/// its keys open (`lease_id` is set).
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
/// The registration ended: `etcd_registry_unregister` or `etcd_registry_close` was called, or a
/// newer registration of the same node on the same registry replaced it (the key then stays,
/// owned by the newer one). Always the last event of a registration, never dropped, and
/// delivered: to a callback before unregister/close return, to the pull queue queued before
/// they return.
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
/// The watch missed history (etcd compacted it while disconnected, or etcd's history is not
/// the one it followed: its data lost or restored from an older snapshot), re-listed the
/// service and sent the
/// difference as ADDED/UPDATED/REMOVED just before this event. `node_name` and `info_json` are
/// NULL.
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
    /// The node concerned, NUL-terminated; NULL for RESYNCED. Its length is `node_name_len`:
    /// a name another client wrote may hold a NUL (the library's own never do), which only the
    /// length shows, as in node lists.
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
    /// The length of `node_name` in bytes (without the terminating NUL); 0 for RESYNCED.
    pub node_name_len: usize,
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

impl UserData {
    /// The pointer (a method, so that closures capture the whole `Send` value).
    pub(crate) fn ptr(self) -> *mut c_void {
        self.0
    }
}

/// A core event handler calling a C status callback: the adapter between the core's dispatcher
/// and a function pointer (see `registry::events`). Made paused: resumed once the id is recorded,
/// so that a callback may use the id of the event it gets (unwatch from the first ADDED …).
pub(crate) fn status_handler(
    callback: unsafe extern "C" fn(*const etcd_registry_status_event, *mut c_void),
    user_data: UserData,
) -> registry::Result<Handler> {
    Handler::paused(move |event: &Event| {
        let event = OwnedEvent::new(event);
        if event.public.event_type != ETCD_REGISTRY_EVENT_TYPE_STATUS {
            return;
        }
        let user_data = user_data.ptr();
        crate::tsan::acquire(user_data);
        // SAFETY: the host gave this function pointer for exactly this use; the event and its
        // strings live until the call returns.
        unsafe { callback(&event.public.status, user_data) }
        crate::tsan::release(user_data);
    })
}

/// A core event handler calling a C watch callback.
pub(crate) fn watch_handler(
    callback: unsafe extern "C" fn(*const etcd_registry_watch_event, *mut c_void),
    user_data: UserData,
) -> registry::Result<Handler> {
    Handler::paused(move |event: &Event| {
        let event = OwnedEvent::new(event);
        if event.public.event_type != ETCD_REGISTRY_EVENT_TYPE_WATCH {
            return;
        }
        let user_data = user_data.ptr();
        crate::tsan::acquire(user_data);
        // SAFETY: as above.
        unsafe { callback(&event.public.watch, user_data) }
        crate::tsan::release(user_data);
    })
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
        node_name_len: 0,
    }
}

impl OwnedEvent {
    pub(crate) fn new(event: &Event) -> Self {
        match event {
            Event::Status {
                registration_id,
                service,
                node,
                event,
            } => {
                let service = to_c(service);
                let node = to_c(node);
                let text = error_text(event).map(|t| to_c(&t));
                let mut status = status_of(event);
                status.registration_id = *registration_id;
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
            Event::Watch {
                watch_id,
                service,
                event,
            } => {
                let service = to_c(service);
                // The name's exact bytes, NUL-terminated, from the node's storage.
                let stored = event.node.as_ref().map(NodeStorage::of_node);
                let info = stored.as_ref().map(NodeStorage::json);
                let entries = stored.as_ref().map_or(&[][..], NodeStorage::infos);
                let watch = etcd_registry_watch_event {
                    kind: watch_kind(event.kind),
                    watch_id: *watch_id,
                    service: service.as_ptr(),
                    node_name: stored
                        .as_ref()
                        .map_or(std::ptr::null(), NodeStorage::name_ptr),
                    info_json: info.as_ref().map_or(std::ptr::null(), |i| i.as_ptr()),
                    info: if entries.is_empty() {
                        std::ptr::null()
                    } else {
                        entries.as_ptr()
                    },
                    info_len: entries.len(),
                    info_absent: stored.as_ref().is_some_and(NodeStorage::info_absent),
                    revision: event.revision,
                    node_name_len: stored.as_ref().map_or(0, NodeStorage::name_len),
                };
                OwnedEvent {
                    public: etcd_registry_event {
                        event_type: ETCD_REGISTRY_EVENT_TYPE_WATCH,
                        status: empty_status(),
                        watch,
                    },
                    _service: service,
                    _node: None,
                    _text: info,
                    _info: stored,
                }
            }
        }
    }
}

/// Pass as `timeout_ms` to `etcd_registry_next_event` to wait without a time limit (until an
/// event comes or the registry is closed).
pub const ETCD_REGISTRY_WAIT_FOREVER: u64 = 0xFFFF_FFFF_FFFF_FFFF;

/// Takes the next queued event of this registry's registrations and watches made with a NULL
/// callback, in order per registration/watch, waiting up to `timeout_ms` (0: do not wait;
/// `ETCD_REGISTRY_WAIT_FOREVER`: no limit). TIMEOUT when none came in time; CLOSED once the
/// registry is closed (a waiting call returns CLOSED as soon as `etcd_registry_close` runs on
/// another thread). `*out_event` is written only on success; free it with
/// `etcd_registry_event_free`. Several threads may wait at once; each event goes to one of them.
/// A timeout other than 0 is an INVALID_ARGUMENT inside a callback (status, watch, `_async` or
/// log), where the wait could never end.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_next_event(
    registry: *mut etcd_registry,
    timeout_ms: u64,
    out_event: *mut *mut etcd_registry_event,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let this = unsafe { handle(registry) }?;
        let slot = out(out_event, "out_event")?;
        if this.forked() {
            return Err(Failure::closed());
        }
        if timeout_ms != 0 {
            // No event could come while the runtime's thread waits here, and a close waits
            // for the callback waiting here: neither wait would end.
            crate::handle::ensure_can_block()?;
            if Handler::on_dispatcher_thread() {
                return Err(Failure::invalid(
                    "etcd_registry_next_event cannot wait inside a status or watch callback (a close would wait for the callback, and the callback for the close): pass timeout_ms 0 there",
                ));
            }
            // On a host thread, inside a library call that logged: that call would wait too.
            if crate::log::in_callback() {
                return Err(Failure::invalid(
                    "etcd_registry_next_event cannot wait inside the log callback: pass timeout_ms 0 there",
                ));
            }
        }
        let timeout = (timeout_ms != ETCD_REGISTRY_WAIT_FOREVER).then(|| duration_ms(timeout_ms));
        match this.queue.next_timeout(timeout) {
            Next::Event(event) => {
                let event = Box::new(OwnedEvent::new(&event));
                write_out(slot, Box::into_raw(event).cast::<etcd_registry_event>());
                Ok(())
            }
            Next::Empty => Err(Failure::new(
                etcd_registry_status::Timeout,
                format!("no event within {timeout_ms} ms"),
            )),
            Next::Closed => Err(Failure::closed()),
        }
    })
}

/// Writes to `*out_fd` a file descriptor that turns readable whenever `etcd_registry_next_event`
/// has something to return at once, for programs that wait in a poll loop (poll, epoll, an
/// event loop, Go's netpoller) instead of in a blocked thread. The library signals it each time
/// the pull queue goes from empty to holding an event, and once when the registry is closed;
/// when an event is already waiting, it is readable at once. When it is readable, read it (8
/// bytes; ignore what they say: an eventfd on Linux, a pipe elsewhere), then take events with
/// `etcd_registry_next_event(registry, 0, &event)` until it returns TIMEOUT (the queue is
/// empty: an event queued later signals again) or CLOSED. Only the pull queue signals: events of
/// registrations and watches made with a callback go to their callback.
///
/// The descriptor is the registry's, non-blocking and close-on-exec, the same on every call:
/// do not close it (it stays open until `etcd_registry_free`); `dup` it to own a copy.
/// CLOSED after close.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_event_fd(
    registry: *mut etcd_registry,
    out_fd: *mut c_int,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let this = unsafe { handle(registry) }?;
        let slot = out(out_fd, "out_fd")?;
        // Under the handle's lock: a close cannot finish in between, leaving a hook behind it.
        let mut state = this.open()?;
        let fd = match &state.event_fd {
            Some(signal) => signal.read_fd(),
            None => {
                let signal = Arc::new(Signal::new().map_err(|e| {
                    Failure::new(
                        etcd_registry_status::Internal,
                        format!("cannot create the event fd: {e}"),
                    )
                })?);
                let hook = signal.clone();
                this.queue
                    .set_on_ready(Some(Box::new(move || hook.notify())));
                let fd = signal.read_fd();
                state.event_fd = Some(signal);
                fd
            }
        };
        write_out(slot, fd);
        Ok(())
    })
}

/// The pull queue's readiness descriptor (see `etcd_registry_event_fd`): an eventfd on Linux,
/// a pipe elsewhere; both ends the library's, so a write never meets a closed reader.
pub(crate) struct Signal {
    read: OwnedFd,
    /// The pipe's write end; None for an eventfd (read and written through one descriptor).
    write: Option<OwnedFd>,
}

impl Signal {
    #[cfg(target_os = "linux")]
    fn new() -> std::io::Result<Signal> {
        // SAFETY: plain syscall; the result is checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nobody else owns.
        let read = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Signal { read, write: None })
    }

    #[cfg(not(target_os = "linux"))]
    fn new() -> std::io::Result<Signal> {
        let mut fds = [0 as c_int; 2];
        // SAFETY: pipe writes two descriptors into the array on success.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: two new descriptors nobody else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [&read, &write] {
            let fd = fd.as_raw_fd();
            // SAFETY: fcntl on descriptors owned here.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                if flags < 0
                    || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
                    || libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(Signal {
            read,
            write: Some(write),
        })
    }

    pub(crate) fn read_fd(&self) -> c_int {
        self.read.as_raw_fd()
    }

    /// Adds 1 to the eventfd (writes 8 bytes to the pipe). A full pipe (or counter) is left as
    /// it is: the reader has a wake-up to read already.
    fn notify(&self) {
        let fd = self.write.as_ref().unwrap_or(&self.read).as_raw_fd();
        let one: u64 = 1;
        loop {
            // SAFETY: writes 8 bytes from a live local to a descriptor this owns.
            let n = unsafe { libc::write(fd, std::ptr::from_ref(&one).cast::<c_void>(), 8) };
            if n >= 0 {
                return;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return,
                _ => {
                    tracing::warn!(fd, error = %err, "cannot signal the event fd");
                    return;
                }
            }
        }
    }
}

/// Writes to `*out_count` how many status events were dropped because their consumer fell 1024
/// events behind (a watch's events are merged, never dropped; see Backpressure in the header's
/// top comment): for `id` 0, or the id of a
/// registration or watch made with a NULL callback, the pull queue's count; for one made with a
/// callback, that callback's count. NOT_FOUND for an unknown id or one that has ended
/// (unregistered, or replaced by a newer registration of its node and its UNREGISTERED
/// delivered), CLOSED after close.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_dropped_events(
    registry: *mut etcd_registry,
    id: u64,
    out_count: *mut u64,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let this = unsafe { handle(registry) }?;
        let slot = out(out_count, "out_count")?;
        let state = this.open()?;
        let handler = if id == 0 {
            None
        } else if let Some(entry) = state.registrations.get(&id) {
            entry.handler.as_ref()
        } else if let Some(entry) = state.watches.get(&id) {
            entry.handler.as_ref()
        } else {
            return Err(Failure::new(
                etcd_registry_status::NotFound,
                format!("no registration or watch {id} on this registry"),
            ));
        };
        let count = handler.map_or_else(|| this.queue.dropped(), |(h, _)| h.dropped());
        write_out(slot, count);
        Ok(())
    })
}

/// Frees an event from `etcd_registry_next_event`. NULL is allowed.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_event_free(event: *mut etcd_registry_event) {
    if event.is_null() {
        return;
    }
    guard_value((), || {
        // SAFETY: every etcd_registry_event handed out is the first field of a boxed
        // #[repr(C)] OwnedEvent (see etcd_registry_next_event); freed once per the contract.
        drop(unsafe { Box::from_raw(event.cast::<OwnedEvent>()) });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::{Node, WatchEvent};

    /// A node name another client wrote with a NUL in it comes out exactly, with its length,
    /// as node lists give it; a name without one reads as a plain C string.
    #[test]
    fn a_watch_event_gives_the_node_name_exactly_with_its_length() {
        for name in ["a\0b", "plain"] {
            let event = Event::Watch {
                watch_id: 7,
                service: "svc".into(),
                event: WatchEvent {
                    kind: WatchEventKind::Removed,
                    node: Some(Node::new(name, Default::default())),
                    revision: 3,
                },
            };
            let owned = OwnedEvent::new(&event);
            let watch = &owned.public.watch;
            assert_eq!(watch.node_name_len, name.len());
            // SAFETY: the name and its terminating NUL live as long as `owned`.
            let bytes = unsafe {
                std::slice::from_raw_parts(watch.node_name.cast::<u8>(), watch.node_name_len + 1)
            };
            assert_eq!(&bytes[..name.len()], name.as_bytes());
            assert_eq!(bytes[name.len()], 0);
        }
        let resynced = Event::Watch {
            watch_id: 7,
            service: "svc".into(),
            event: WatchEvent {
                kind: WatchEventKind::Resynced,
                node: None,
                revision: 4,
            },
        };
        let owned = OwnedEvent::new(&resynced);
        assert!(owned.public.watch.node_name.is_null());
        assert_eq!(owned.public.watch.node_name_len, 0);
    }
}
