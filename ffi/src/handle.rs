//! `etcd_registry`: the registry handle and every call made on it.

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use registry::events::Next;
use registry::{
    runtime, EventStream, Handler, Info, InfoBytes, Registration, RegistrationState, Registry,
    Route, Watch,
};
use tokio::runtime::Handle;

use crate::config::etcd_registry_config;
use crate::events::{
    etcd_registry_event, etcd_registry_status_callback, etcd_registry_watch_callback,
    status_handler, watch_handler, OwnedEvent, UserData,
};
use crate::info::{etcd_registry_info_entry, read_entries, ETCD_REGISTRY_NO_INFO};
use crate::node_list::{etcd_registry_node_list, NodeStorage};
use crate::status::{etcd_registry_status, guard, guard_value, Failure, FfiResult};
use crate::strings::{optional, required};

/// Where a registration stands; one of the `ETCD_REGISTRY_STATE_*` values.
#[allow(non_camel_case_types)]
pub type etcd_registry_state = u32;
/// Not registered yet: the first attempt is under way or being retried.
pub const ETCD_REGISTRY_STATE_REGISTERING: etcd_registry_state = 1;
/// The key is in etcd and its lease is kept alive.
pub const ETCD_REGISTRY_STATE_REGISTERED: etcd_registry_state = 2;
/// The key was registered, then the lease or the connection was lost; retrying.
pub const ETCD_REGISTRY_STATE_RETRYING: etcd_registry_state = 3;
/// Ended: replaced by a newer registration of the same node.
pub const ETCD_REGISTRY_STATE_UNREGISTERED: etcd_registry_state = 4;

/// Pass as `timeout_ms` to `etcd_registry_next_event` to wait without a time limit (until an
/// event comes or the registry is closed).
pub const ETCD_REGISTRY_WAIT_FOREVER: u64 = 0xFFFF_FFFF_FFFF_FFFF;

/// Waits longer than this are cut to it (a year: effectively forever, and far from overflow).
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Opaque registry handle: one etcd connection (made lazily), its registrations and watches.
/// Created by `etcd_registry_connect`, closed by `etcd_registry_close`, freed by
/// `etcd_registry_free`. Every call on it is thread-safe, except `etcd_registry_free`, which
/// must be the last call on it.
#[allow(non_camel_case_types)]
pub struct etcd_registry {
    registry: Registry,
    runtime: Handle,
    /// The pull queue: the core's bounded stream that registrations and watches made with a
    /// NULL callback are routed to.
    queue: EventStream,
    state: Mutex<HandleState>,
    /// Signalled when the close in progress has finished (`HandleState::close_finished`).
    close_finished: Condvar,
}

#[derive(Default)]
struct HandleState {
    closed: bool,
    /// The close that set `closed` has returned from the core: every later close waits for it.
    close_finished: bool,
    /// The callback handlers stopped by that close: a later close waits until none of them
    /// runs (one may still run when the first close was made from a callback).
    closed_handlers: Vec<Handler>,
    registrations: HashMap<u64, RegEntry>,
    watches: HashMap<u64, WatchEntry>,
}

/// A registration and its callback handler (None: routed to the pull queue).
struct RegEntry {
    registration: Registration,
    handler: Option<(Handler, UserData)>,
}

struct WatchEntry {
    watch: Arc<Watch>,
    handler: Option<(Handler, UserData)>,
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
unsafe fn handle<'a>(registry: *const etcd_registry) -> FfiResult<&'a etcd_registry> {
    // SAFETY: per the caller's contract.
    unsafe { registry.as_ref() }.ok_or_else(|| Failure::null("registry"))
}

/// Blocking calls wait on the library's runtime; on one of its own threads (possible only from
/// the log callback) that would stall it, so they are refused before anything changes.
fn ensure_can_block() -> FfiResult {
    if Handle::try_current().is_ok() {
        return Err(Failure::invalid(
            "blocking etcd-registry calls cannot be made from a library runtime thread (the log callback)",
        ));
    }
    Ok(())
}

fn block_on<F: std::future::Future>(future: F) -> FfiResult<F::Output> {
    runtime::block_on(future).map_err(Failure::from)
}

fn duration_ms(ms: u64) -> Duration {
    Duration::from_millis(ms).min(MAX_WAIT)
}

/// Parses info JSON, the convenience form of info: NULL is an empty info; `null` is no info
/// object (`None`: the value is stored empty, as Go's library does for a nil map); otherwise a
/// JSON object whose values are all strings. The value stored is made by the core's encoder from
/// the parsed strings, as for info given as entries.
fn parse_info(json: Option<&str>) -> FfiResult<Option<InfoBytes>> {
    let Some(json) = json else {
        return Ok(Some(InfoBytes::new()));
    };
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Failure::invalid(format!("info_json is not valid JSON: {e}")))?;
    if value.is_null() {
        return Ok(None);
    }
    let serde_json::Value::Object(map) = value else {
        return Err(Failure::invalid(format!(
            "info_json must be a JSON object of strings, got {value}"
        )));
    };
    let info = map
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => Ok((key, s)),
            other => Err(Failure::invalid(format!(
                "info_json: the value of {key:?} must be a string, got {other}"
            ))),
        })
        .collect::<FfiResult<Info>>()?;
    Ok(Some(InfoBytes::from(&info)))
}

fn state_code(state: RegistrationState) -> etcd_registry_state {
    match state {
        RegistrationState::Registering => ETCD_REGISTRY_STATE_REGISTERING,
        RegistrationState::Registered => ETCD_REGISTRY_STATE_REGISTERED,
        RegistrationState::Retrying => ETCD_REGISTRY_STATE_RETRYING,
        RegistrationState::Unregistered => ETCD_REGISTRY_STATE_UNREGISTERED,
    }
}

impl etcd_registry {
    fn lock(&self) -> MutexGuard<'_, HandleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this handle was created before a fork() of which this is the child (the core
    /// tells; the handle's own locks and queue must then not be touched either).
    fn forked(&self) -> bool {
        !self.registry.in_this_process()
    }

    /// The state, if the registry is still open (and usable in this process).
    fn open(&self) -> FfiResult<MutexGuard<'_, HandleState>> {
        self.registry.check_same_process()?;
        let state = self.lock();
        if state.closed {
            return Err(Failure::closed());
        }
        Ok(state)
    }

    /// Where the events of a new registration or watch go: a core handler calling the C
    /// callback, or (NULL callback) the pull queue.
    fn route(
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

    /// Marks the handle closed; returns the handlers of its callbacks, or None if it already was.
    fn shut(&self) -> Option<Vec<(Handler, UserData)>> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        state.closed = true;
        let registrations = std::mem::take(&mut state.registrations);
        let watches = std::mem::take(&mut state.watches);
        let handlers: Vec<(Handler, UserData)> = registrations
            .into_values()
            .filter_map(|r| r.handler)
            .chain(watches.into_values().filter_map(|w| w.handler))
            .collect();
        state.closed_handlers = handlers.iter().map(|(h, _)| h.clone()).collect();
        Some(handlers)
    }

    /// Closes the registry, or waits for the close another thread (or a callback) started:
    /// whoever calls, it returns only once the core's close has finished (every registration's
    /// UNREGISTERED delivered) and no callback of this registry runs, so the caller may free
    /// `user_data` and the handle. On the callback thread a second close cannot wait (the
    /// running callback is the caller itself) and returns at once.
    fn close_and_wait(&self) -> FfiResult {
        if let Some(handlers) = self.shut() {
            // The core delivers UNREGISTERED to every registration's handler and stops the
            // watches' handlers before it returns.
            let result = block_on(self.registry.close());
            for (handler, user_data) in &handlers {
                handler.cancel();
                // The callbacks are done: what they did happens before the caller frees data.
                crate::tsan::acquire(user_data.0);
            }
            self.queue.close();
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
            state: Mutex::new(HandleState::default()),
            close_finished: Condvar::new(),
        };
        write_out(slot, Box::into_raw(Box::new(handle)));
        Ok(())
    })
}

/// Registers `node` under `service` with the info `info`, an array of `info_len` key/value
/// entries (see `etcd_registry_info_entry`: bytes with lengths, NUL and non-UTF-8 bytes allowed,
/// each key given once and not empty), on a lease of `ttl_ms` milliseconds (rounded up to whole
/// seconds; every registration of the same TTL shares one lease). The value stored is exactly
/// what Go's `json.Marshal` writes for the same `map[string]string`.
///
/// An empty info (`info` NULL or not, `info_len` 0) is stored as `{}`. No info object at all is
/// asked for explicitly, with `info_len` `ETCD_REGISTRY_NO_INFO` (and `info` NULL): the value is
/// then stored empty, as Go's library stores a nil map.
///
/// ```c
/// etcd_registry_info_entry info[] = {{"address", 7, "10.0.0.5:8080", 13}};
/// etcd_registry_register(reg, "api", "node-1", info, 1, 10000, NULL, NULL, &id);
/// etcd_registry_register(reg, "api", "node-2", NULL, 0, 10000, NULL, NULL, &id);  // {}
/// etcd_registry_register(reg, "api", "node-3", NULL, ETCD_REGISTRY_NO_INFO, 10000, NULL, NULL,
///                        &id);  // no info object: an empty value
/// ```
///
/// Returns at once: the registration proceeds in the background, retrying with backoff until it
/// succeeds, then keeps the lease alive and re-registers after any loss, until unregistered or
/// closed. The key is `<base_path>/<service>/<node>`, a '/' inside a name becoming '-' (as the
/// Go library does).
///
/// Status events go to `callback` with `user_data` on the library's callback thread; with a
/// NULL callback they are queued for `etcd_registry_next_event` instead (see the header's top
/// comment). The first event may come before this function has returned: events carry the
/// registration id. Registering a node this registry already holds replaces the older
/// registration (which gets UNREGISTERED).
///
/// INVALID_ARGUMENT for an empty service or node name, `ttl_ms` 0, an empty or repeated info
/// key, or info too large for etcd; NULL_POINTER for a NULL `info` with `info_len` > 0 (other
/// than `ETCD_REGISTRY_NO_INFO`) or a NULL key/value pointer with a length > 0; INVALID_UTF8
/// for a name that is not UTF-8; CLOSED after `etcd_registry_close`. `*out_registration_id`
/// (never 0) is written only on success.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn etcd_registry_register(
    registry: *mut etcd_registry,
    service: *const c_char,
    node: *const c_char,
    info: *const etcd_registry_info_entry,
    info_len: usize,
    ttl_ms: u64,
    callback: etcd_registry_status_callback,
    user_data: *mut c_void,
    out_registration_id: *mut u64,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for every pointer.
        let this = unsafe { handle(registry) }?;
        let service = unsafe { required(service, "service") }?;
        let node = unsafe { required(node, "node") }?;
        let info = unsafe { read_entries(info, info_len) }?;
        let slot = out(out_registration_id, "out_registration_id")?;
        let (route, handler) = this.route(callback, None, user_data)?;
        // The lock is held until the registration is recorded, so close() cannot miss it.
        let mut state = this.open()?;
        let registration = this.registry.register_bytes(
            service,
            node,
            info.as_ref(),
            Duration::from_millis(ttl_ms),
            Some(&route),
        )?;
        let id = registration.id();
        if let Some((handler, _)) = &handler {
            handler.resume();
        }
        state.registrations.insert(
            id,
            RegEntry {
                registration,
                handler,
            },
        );
        write_out(slot, id);
        Ok(())
    })
}

/// Runs `parse` under the panic guard; on failure returns its status (the message set).
fn parsed<T>(parse: impl FnOnce() -> FfiResult<T>) -> Result<T, etcd_registry_status> {
    let mut value = None;
    let status = guard(|| {
        value = Some(parse()?);
        Ok(())
    });
    value.ok_or(status)
}

/// Entries pointing into `info`, for the entry functions: (array, length), the length
/// `ETCD_REGISTRY_NO_INFO` for `None`.
fn entries_of(info: Option<&InfoBytes>) -> (Vec<etcd_registry_info_entry>, usize) {
    let Some(info) = info else {
        return (Vec::new(), ETCD_REGISTRY_NO_INFO);
    };
    let entries: Vec<_> = info
        .iter()
        .map(|(k, v)| etcd_registry_info_entry {
            key: k.as_ptr().cast(),
            key_len: k.len(),
            value: v.as_ptr().cast(),
            value_len: v.len(),
        })
        .collect();
    let len = entries.len();
    (entries, len)
}

/// `etcd_registry_register` with the info as JSON, a convenience: `info_json` is a JSON object of
/// strings such as `{"address":"10.0.0.5:8080"}` (NULL for an empty one, stored as `{}`; `null`
/// for no info object at all, stored as an empty value). It is parsed and then stored by the
/// same encoder, so the value in etcd is what `etcd_registry_register` writes for the same
/// strings. INVALID_ARGUMENT also for info that is not a JSON object of strings.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn etcd_registry_register_json(
    registry: *mut etcd_registry,
    service: *const c_char,
    node: *const c_char,
    info_json: *const c_char,
    ttl_ms: u64,
    callback: etcd_registry_status_callback,
    user_data: *mut c_void,
    out_registration_id: *mut u64,
) -> etcd_registry_status {
    // SAFETY: caller's contract.
    let info = match parsed(|| parse_info(unsafe { optional(info_json, "info_json") }?)) {
        Ok(info) => info,
        Err(status) => return status,
    };
    let (entries, len) = entries_of(info.as_ref());
    // SAFETY: the caller's pointers as given; the entries point into `info`, alive until return.
    unsafe {
        etcd_registry_register(
            registry,
            service,
            node,
            entries.as_ptr(),
            len,
            ttl_ms,
            callback,
            user_data,
            out_registration_id,
        )
    }
}

/// Replaces the info of a registration with `info`, `info_len` entries as
/// `etcd_registry_register` takes them (`info_len` 0: `{}`): the key is put again on the same lease with one put,
/// without unregistering. Returns at once, like `etcd_registry_register`: the put goes through
/// the registration's background task, and a `ETCD_REGISTRY_STATUS_KIND_UPDATED` status event
/// follows once it has landed (watchers see one `ETCD_REGISTRY_WATCH_KIND_UPDATED`). While etcd
/// is down the new info is kept and put when it is back; it is never lost. Updates of one
/// registration apply in the order they were made: after concurrent updates, or several during
/// an outage, etcd ends with the last one (intermediate ones may be skipped). Does not block, so
/// it may be called from any callback.
///
/// INVALID_ARGUMENT for an empty or repeated key, info too large for etcd, or
/// `ETCD_REGISTRY_NO_INFO` (no info object is for registering); NULL_POINTER as for
/// `etcd_registry_register`; NOT_FOUND when `registration_id` is not a registration of this
/// registry (unknown, unregistered, or replaced by a newer registration of the same node);
/// CLOSED after `etcd_registry_close`.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_update(
    registry: *mut etcd_registry,
    registration_id: u64,
    info: *const etcd_registry_info_entry,
    info_len: usize,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for every pointer.
        let this = unsafe { handle(registry) }?;
        let info = unsafe { read_entries(info, info_len) }?.ok_or_else(|| {
            Failure::invalid("ETCD_REGISTRY_NO_INFO (no info object) is for registering only")
        })?;
        let registration = this
            .open()?
            .registrations
            .get(&registration_id)
            .map(|e| e.registration.clone())
            .ok_or_else(|| {
                Failure::new(
                    etcd_registry_status::NotFound,
                    format!("no registration {registration_id} on this registry"),
                )
            })?;
        registration.update_bytes(&info)?;
        Ok(())
    })
}

/// `etcd_registry_update` with the info as JSON, a convenience: `info_json` is a JSON object of
/// strings, as `etcd_registry_register_json` takes it (pass "{}" for none). INVALID_ARGUMENT also
/// for info that is not a JSON object of strings (`null` included: no info object is for
/// registering); NULL_POINTER for a NULL `info_json`; INVALID_UTF8.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_update_json(
    registry: *mut etcd_registry,
    registration_id: u64,
    info_json: *const c_char,
) -> etcd_registry_status {
    let info = match parsed(|| {
        // SAFETY: caller's contract.
        parse_info(Some(unsafe { required(info_json, "info_json") }?))?.ok_or_else(|| {
            Failure::invalid(
                "info_json must be a JSON object of strings (\"null\", no info, is for registering)",
            )
        })
    }) {
        Ok(info) => info,
        Err(status) => return status,
    };
    let (entries, len) = entries_of(Some(&info));
    // SAFETY: the caller's handle as given; the entries point into `info`, alive until return.
    unsafe { etcd_registry_update(registry, registration_id, entries.as_ptr(), len) }
}

/// Unregisters: deletes the key at once, stops keeping it alive, and revokes the lease when no
/// other registration uses it. UNREGISTERED is the registration's last event: once this returns
/// it has been delivered to the callback (which is not running and is never called again, so
/// `user_data` may be freed) or queued for `etcd_registry_next_event`. From inside a callback,
/// the remaining events are delivered nested before it returns. Blocks until etcd answers or
/// the configured timeout passes.
///
/// Shutdown rule (the same in every language): it never fails because etcd is unreachable.
/// When etcd cannot be reached within the timeout, it logs a warning and returns OK; the key
/// disappears when its lease expires (within the TTL).
///
/// NOT_FOUND when `registration_id` is not a registration of this registry (or was already
/// unregistered); CLOSED after `etcd_registry_close`; AUTH (or another error) only when etcd
/// answered and refused the delete — the registration is gone from the library all the same.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_unregister(
    registry: *mut etcd_registry,
    registration_id: u64,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let this = unsafe { handle(registry) }?;
        ensure_can_block()?;
        let entry = this
            .open()?
            .registrations
            .remove(&registration_id)
            .ok_or_else(|| {
                Failure::new(
                    etcd_registry_status::NotFound,
                    format!("no registration {registration_id} on this registry"),
                )
            })?;
        // The core emits UNREGISTERED, and has delivered it to the handler when this returns.
        let result = block_on(entry.registration.unregister());
        if let Some((_, user_data)) = &entry.handler {
            crate::tsan::acquire(user_data.0);
        }
        result??;
        Ok(())
    })
}

/// Waits up to `timeout_ms` until the registration has been registered once. Returns OK at once
/// if it has been; fails at once with the error of the last failed attempt (e.g. AUTH,
/// CONNECTION) if attempts failed and none succeeded yet — retries go on in the background; with
/// TIMEOUT when the time runs out; with CLOSED when the registration ended first.
/// NOT_FOUND for an unknown id. Do not call it from a callback with a long timeout: it holds up
/// every other callback meanwhile.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_wait_registered(
    registry: *mut etcd_registry,
    registration_id: u64,
    timeout_ms: u64,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let this = unsafe { handle(registry) }?;
        ensure_can_block()?;
        let registration = this
            .open()?
            .registrations
            .get(&registration_id)
            .map(|e| e.registration.clone())
            .ok_or_else(|| {
                Failure::new(
                    etcd_registry_status::NotFound,
                    format!("no registration {registration_id} on this registry"),
                )
            })?;
        block_on(registration.wait_registered(duration_ms(timeout_ms)))??;
        Ok(())
    })
}

/// Writes where the registration stands now (`ETCD_REGISTRY_STATE_*`) to
/// `*out_state`. NOT_FOUND for an unknown id, CLOSED after close. Does not block.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_registration_state(
    registry: *mut etcd_registry,
    registration_id: u64,
    out_state: *mut etcd_registry_state,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let this = unsafe { handle(registry) }?;
        let slot = out(out_state, "out_state")?;
        let state = this
            .open()?
            .registrations
            .get(&registration_id)
            .map(|e| e.registration.state())
            .ok_or_else(|| {
                Failure::new(
                    etcd_registry_status::NotFound,
                    format!("no registration {registration_id} on this registry"),
                )
            })?;
        write_out(slot, state_code(state));
        Ok(())
    })
}

/// Writes the etcd lease the registration's key is attached to now to `*out_lease_id`, or 0
/// while it is not registered. NOT_FOUND for an unknown id, CLOSED after close. Does not block.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_registration_lease_id(
    registry: *mut etcd_registry,
    registration_id: u64,
    out_lease_id: *mut i64,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let this = unsafe { handle(registry) }?;
        let slot = out(out_lease_id, "out_lease_id")?;
        let lease = this
            .open()?
            .registrations
            .get(&registration_id)
            .map(|e| e.registration.lease_id().unwrap_or(0))
            .ok_or_else(|| {
                Failure::new(
                    etcd_registry_status::NotFound,
                    format!("no registration {registration_id} on this registry"),
                )
            })?;
        write_out(slot, lease);
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

/// Watches a service: lists it (failing with CONNECTION/TIMEOUT if etcd cannot be reached now),
/// then follows every change, resuming after disconnects and re-listing after compaction, until
/// `etcd_registry_unwatch` or close. The first events are one ADDED per node present.
///
/// Events go to `callback` with `user_data` on the library's callback thread; with a NULL
/// callback they are queued for `etcd_registry_next_event`. The first events may come before
/// this function has returned: events carry the watch id. `*out_watch_id` (never 0) is written
/// only on success.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_watch(
    registry: *mut etcd_registry,
    service: *const c_char,
    callback: etcd_registry_watch_callback,
    user_data: *mut c_void,
    out_watch_id: *mut u64,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for every pointer.
        let this = unsafe { handle(registry) }?;
        let service = unsafe { required(service, "service") }?;
        let slot = out(out_watch_id, "out_watch_id")?;
        ensure_can_block()?;
        let (route, handler) = this.route(None, callback, user_data)?;
        drop(this.open()?);
        let watch = Arc::new(block_on(this.registry.watch_routed(service, &route))??);
        let mut state = match this.open() {
            Ok(state) => state,
            Err(closed) => {
                watch.cancel();
                return Err(closed);
            }
        };
        let id = watch.id();
        if let Some((handler, _)) = &handler {
            handler.resume();
        }
        state.watches.insert(id, WatchEntry { watch, handler });
        write_out(slot, id);
        Ok(())
    })
}

/// Stops a watch. Once it returns, the watch's callback is not running and will never be called
/// again, so `user_data` may be freed; allowed from inside that callback. Does not block on etcd.
/// NOT_FOUND for an unknown (or already stopped) id, CLOSED after close.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_unwatch(
    registry: *mut etcd_registry,
    watch_id: u64,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let this = unsafe { handle(registry) }?;
        let entry = this.open()?.watches.remove(&watch_id).ok_or_else(|| {
            Failure::new(
                etcd_registry_status::NotFound,
                format!("no watch {watch_id} on this registry"),
            )
        })?;
        // Stops the handler (waiting for a running call, unless on the callback thread) or drops
        // the watch's events still in the pull queue.
        entry.watch.cancel();
        if let Some((_, user_data)) = &entry.handler {
            crate::tsan::acquire(user_data.0);
        }
        Ok(())
    })
}

/// The live node set of a watch now (what its events have built up so far), as a node list.
/// Does not talk to etcd. NOT_FOUND for an unknown id, CLOSED after close. `*out_node_list` is
/// written only on success; free it with `etcd_registry_node_list_free`.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_watch_nodes(
    registry: *mut etcd_registry,
    watch_id: u64,
    out_node_list: *mut *mut etcd_registry_node_list,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let this = unsafe { handle(registry) }?;
        let slot = out(out_node_list, "out_node_list")?;
        let nodes = this
            .open()?
            .watches
            .get(&watch_id)
            .map(|e| e.watch.nodes())
            .ok_or_else(|| {
                Failure::new(
                    etcd_registry_status::NotFound,
                    format!("no watch {watch_id} on this registry"),
                )
            })?;
        write_out(
            slot,
            Box::into_raw(Box::new(etcd_registry_node_list::new(nodes))),
        );
        Ok(())
    })
}

/// Takes the next queued event of this registry's registrations and watches made with a NULL
/// callback, in order per registration/watch, waiting up to `timeout_ms` (0: do not wait;
/// `ETCD_REGISTRY_WAIT_FOREVER`: no limit). TIMEOUT when none came in time; CLOSED once the
/// registry is closed (a waiting call returns CLOSED as soon as `etcd_registry_close` runs on
/// another thread). `*out_event` is written only on success; free it with
/// `etcd_registry_event_free`. Several threads may wait at once; each event goes to one of them.
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

/// Writes to `*out_count` how many events were dropped because their consumer fell 1024 events
/// behind (see BACKPRESSURE in the header's top comment): for `id` 0, or the id of a
/// registration or watch made with a NULL callback, the pull queue's count; for one made with a
/// callback, that callback's count. NOT_FOUND for an unknown (or ended) id, CLOSED after close.
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

/// Closes the registry: stops the watches, revokes the leases (which deletes every registered key
/// at once), delivers UNREGISTERED to every registration (the last call of its callback, or
/// queued for `etcd_registry_next_event`, which then returns what is queued and CLOSED), and
/// returns when etcd has answered or the timeout passed (never failing because etcd is
/// unreachable: a warning is logged and the keys expire with their leases); once it returns, no callback of this
/// registry is running or will be called. Idempotent: a second close, from any
/// thread, waits until the first has finished and no callback of this registry runs, then
/// returns OK (from inside a callback it returns at once). Every other call on a closed registry returns CLOSED. Allowed from inside a callback. The
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
        ensure_can_block()?;
        this.close_and_wait()
    })
}

/// Closes the registry if it is still open (as `etcd_registry_close`, ignoring errors) and frees
/// it. NULL is allowed. Must be the last call on the handle: no other thread may be inside a
/// call on it (e.g. `etcd_registry_next_event` — close first, which makes such calls return).
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_free(registry: *mut etcd_registry) {
    if registry.is_null() {
        return;
    }
    guard_value((), || {
        // SAFETY: a handle from etcd_registry_connect, freed once (caller's contract).
        let this = unsafe { Box::from_raw(registry) };
        if this.forked() {
            // Leaked, not dropped: dropping would touch the parent's tasks and locks.
            std::mem::forget(this);
            return;
        }
        if ensure_can_block().is_ok() {
            let _ = this.close_and_wait();
        } else if this.shut().is_some() {
            this.queue.close();
            let core = this.registry.clone();
            this.runtime.spawn(async move {
                let _ = core.close().await;
            });
        }
        drop(this);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_must_be_an_object_of_strings() {
        assert_eq!(parse_info(None).unwrap(), Some(InfoBytes::new()));
        assert_eq!(parse_info(Some("null")).unwrap(), None);
        assert_eq!(
            parse_info(Some(r#"{"a":"1","b":""}"#))
                .unwrap()
                .unwrap()
                .len(),
            2
        );
        for bad in [
            "",
            "[]",
            "\"x\"",
            "{",
            r#"{"a":1}"#,
            r#"{"a":null}"#,
            r#"{"a":{}}"#,
        ] {
            let err = parse_info(Some(bad)).unwrap_err();
            assert_eq!(err.status, etcd_registry_status::InvalidArgument, "{bad}");
        }
    }
}
