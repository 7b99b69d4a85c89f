//! Registrations: register, update, unregister, and their state.

use std::ffi::{c_char, c_void};
use std::time::Duration;

use registry::{Info, InfoBytes, RegistrationState};

use crate::events::etcd_registry_status_callback;
use crate::handle::{
    answer_async, block_on, deferring_free, duration_ms, ensure_can_block, etcd_registry, handle,
    out, write_out, RegEntry,
};
use crate::info::{etcd_registry_info_entry, read_entries, ETCD_REGISTRY_NO_INFO};
use crate::status::{etcd_registry_status, guard, Failure, FfiResult};
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
/// Ended: replaced by a newer registration of the same node, and its UNREGISTERED not delivered
/// yet (once it has been, the id is forgotten and calls given it return NOT_FOUND).
pub const ETCD_REGISTRY_STATE_UNREGISTERED: etcd_registry_state = 4;

/// Parses info JSON, the convenience form of info: NULL is an empty info; `null` is no info
/// object (`None`: the value is stored empty, as Go's library does for a nil map); otherwise a
/// JSON object whose values are all strings. The value stored is made by the core's encoder from
/// the parsed strings, as for info given as entries.
fn parse_info(json: Option<&str>) -> FfiResult<Option<InfoBytes>> {
    let Some(json) = json else {
        return Ok(Some(InfoBytes::new()));
    };
    // Escapes of lone surrogates are U+FFFD, as Go's decoder reads them.
    let JsonInfo(info) = serde_json::from_str(json)
        .or_else(|e| {
            registry::replace_lone_surrogates(json.as_bytes())
                .and_then(|fixed| serde_json::from_slice(&fixed).ok())
                .ok_or(e)
        })
        .map_err(|e| Failure::invalid(format!("info_json: {e}")))?;
    Ok(info.map(|info| InfoBytes::from(&info)))
}

/// Info JSON as [`parse_info`] takes it: `null` (no info object) or an object of strings whose
/// keys are each given once (a key given twice is refused, as in info entries, rather than one
/// of its values silently kept).
struct JsonInfo(Option<Info>);

impl<'de> serde::Deserialize<'de> for JsonInfo {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonInfoVisitor)
    }
}

struct JsonInfoVisitor;

impl<'de> serde::de::Visitor<'de> for JsonInfoVisitor {
    type Value = JsonInfo;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of strings, or null")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<JsonInfo, E> {
        Ok(JsonInfo(None))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonInfo, A::Error> {
        use serde::de::Error;
        let mut info = Info::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = match map.next_value::<serde_json::Value>()? {
                serde_json::Value::String(value) => value,
                other => {
                    return Err(A::Error::custom(format!(
                        "the value of {key:?} must be a string, got {other}"
                    )))
                }
            };
            if info.contains_key(&key) {
                return Err(A::Error::custom(format!("the key {key:?} is given twice")));
            }
            info.insert(key, value);
        }
        Ok(JsonInfo(Some(info)))
    }
}

fn state_code(state: RegistrationState) -> etcd_registry_state {
    match state {
        RegistrationState::Registering => ETCD_REGISTRY_STATE_REGISTERING,
        RegistrationState::Registered => ETCD_REGISTRY_STATE_REGISTERED,
        RegistrationState::Retrying => ETCD_REGISTRY_STATE_RETRYING,
        RegistrationState::Unregistered => ETCD_REGISTRY_STATE_UNREGISTERED,
    }
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
/// registration, which gets UNREGISTERED (see `etcd_registry_unregister`) and whose id is
/// forgotten once that has been delivered.
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
        // The lock is held until the registration is recorded, so close() cannot miss it (and
        // no other register of this handle replaces the node meanwhile).
        let mut state = this.open()?;
        let replaced = this
            .registry
            .registration_of(service, node)
            .filter(|old| state.registrations.contains_key(&old.id()));
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
        drop(state);
        if let Some(old) = replaced {
            this.forget_when_ended(old);
        }
        write_out(slot, id);
        Ok(())
    })
}

/// Checks what `etcd_registry_register` would be given, as it checks it and with the same status
/// and message, and registers nothing: OK when `etcd_registry_register` with these arguments
/// would accept them. For a caller that must refuse bad arguments without registering, e.g. a
/// binding whose call was cancelled before it began. The size of the info is checked against
/// this registry's key, whose base path counts.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_check_register(
    registry: *const etcd_registry,
    service: *const c_char,
    node: *const c_char,
    info: *const etcd_registry_info_entry,
    info_len: usize,
    ttl_ms: u64,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for every pointer.
        let this = unsafe { handle(registry) }?;
        let service = unsafe { required(service, "service") }?;
        let node = unsafe { required(node, "node") }?;
        let info = unsafe { read_entries(info, info_len) }?;
        this.registry.check_register_bytes(
            service,
            node,
            info.as_ref(),
            Duration::from_millis(ttl_ms),
        )?;
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
/// strings. INVALID_ARGUMENT also for info that is not a JSON object of strings, or that gives a
/// key twice (as for entries: neither value would be kept silently).
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
    let info = match parsed(|| {
        // The arguments before the info are checked first, as `etcd_registry_register` does:
        // a NULL handle is NULL_POINTER whatever the JSON.
        // SAFETY: caller's contract for every pointer.
        unsafe { handle(registry) }?;
        unsafe { required(service, "service") }?;
        unsafe { required(node, "node") }?;
        parse_info(unsafe { optional(info_json, "info_json") }?)
    }) {
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
            .registration(registration_id)
            .map(|e| e.registration.clone())?;
        registration.update_bytes(&info)?;
        Ok(())
    })
}

/// `etcd_registry_update` with the info as JSON, a convenience: `info_json` is a JSON object of
/// strings, as `etcd_registry_register_json` takes it (pass "{}" for none). INVALID_ARGUMENT also
/// for info that is not a JSON object of strings (`null` included: no info object is for
/// registering) or that gives a key twice; NULL_POINTER for a NULL `info_json`; INVALID_UTF8.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_update_json(
    registry: *mut etcd_registry,
    registration_id: u64,
    info_json: *const c_char,
) -> etcd_registry_status {
    let info = match parsed(|| {
        // The handle first, as `etcd_registry_update` checks it: NULL_POINTER whatever the JSON.
        // SAFETY: caller's contract for every pointer.
        unsafe { handle(registry) }?;
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
/// disappears when its lease expires (within the TTL), or, when other nodes of the registry
/// keep that lease alive, is deleted as soon as etcd answers again. A registration none of
/// whose puts was sent yet (etcd unreachable ever since it was registered) returns at once:
/// etcd holds nothing of it, and no put of it follows.
///
/// A registration replaced by a newer registration of the same node has ended already: this
/// deletes nothing (the key is the newer one's), waits until its UNREGISTERED has been
/// delivered as above, and returns OK.
///
/// NOT_FOUND when `registration_id` is not a registration of this registry (unknown, already
/// unregistered, or replaced and its UNREGISTERED already delivered); CLOSED after
/// `etcd_registry_close`; AUTH (or another error) only when etcd answered and refused the
/// delete — the registration is gone from the library all the same.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_unregister(
    registry: *mut etcd_registry,
    registration_id: u64,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let this = unsafe { handle(registry) }?;
        ensure_can_block()?;
        let entry = this.open()?.take_to_unregister(registration_id)?;
        // The handle is used after the wait, in which a callback may free it; the entry is
        // dropped before that free.
        // SAFETY: caller's contract.
        let result = unsafe {
            deferring_free(registry, move || {
                // The core emits UNREGISTERED, and has delivered it to the handler when this
                // returns, but on the callback thread: there it is delivered here, nested, once
                // out of the runtime, where the callback may make blocking calls.
                let result = block_on(entry.registration.unregister());
                if let Some((handler, user_data)) = &entry.handler {
                    handler.finish();
                    crate::tsan::acquire(user_data.0);
                }
                this.lock().unregistering.remove(&registration_id);
                result
            })
        };
        result??;
        Ok(())
    })
}

/// Called once with the result of an `_async` call that gives no value
/// (`etcd_registry_unregister_async`): the status the blocking call would have returned, and on
/// an error its message (valid until the callback returns; NULL on OK).
#[allow(non_camel_case_types)]
pub type etcd_registry_done_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        status: etcd_registry_status,
        error_message: *const c_char,
    ),
>;

/// Unregisters like `etcd_registry_unregister`, without blocking: the registration is taken
/// from the registry at once (a second unregister of it is NOT_FOUND), and the delete and
/// revoke go on in the library, whose result goes to `callback`. For hosts that wait in an
/// event loop (Go's netpoller, epoll, libuv) rather than in a blocked thread, e.g. thousands of
/// registrations ended at once while etcd is slow.
///
/// On OK, `callback` is called exactly once, on a library runtime thread, possibly before this
/// function returns, with what `etcd_registry_unregister` would have returned (OK when etcd
/// could not be reached: the shutdown rule). By then UNREGISTERED has been delivered to the
/// registration's status callback (which is not running and is never called again) or queued
/// for `etcd_registry_next_event`. `callback` must return quickly and make no blocking library
/// call (those fail there with INVALID_ARGUMENT); `user_data` must stay valid until it has run,
/// even past `etcd_registry_close` and `etcd_registry_free`. On any other status (NULL
/// pointers, CLOSED, NOT_FOUND) the callback is never called and nothing changes.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_unregister_async(
    registry: *mut etcd_registry,
    registration_id: u64,
    callback: etcd_registry_done_callback,
    user_data: *mut c_void,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let this = unsafe { handle(registry) }?;
        let callback = callback.ok_or_else(|| Failure::null("callback"))?;
        let entry = this.open()?.take_to_unregister(registration_id)?;
        let state = this.state.clone();
        let work = async move {
            let result = entry.registration.unregister().await;
            if let Some((_, handler_data)) = &entry.handler {
                crate::tsan::acquire(handler_data.0);
            }
            crate::handle::lock_state(&state)
                .unregistering
                .remove(&registration_id);
            result
        };
        answer_async(
            this,
            user_data,
            "unregister",
            work,
            move |user_data, outcome| {
                match outcome {
                    // SAFETY: the host gave this function pointer for exactly this call.
                    Ok(()) => unsafe {
                        callback(user_data, etcd_registry_status::Ok, std::ptr::null())
                    },
                    Err(failure) => {
                        let message = crate::strings::to_c(&failure.message);
                        // SAFETY: as above; the message lives until the call returns.
                        unsafe { callback(user_data, failure.status, message.as_ptr()) };
                    }
                }
            },
        );
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
            .registration(registration_id)
            .map(|e| e.registration.clone())?;
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
            .registration(registration_id)
            .map(|e| e.registration.state())?;
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
            .registration(registration_id)
            .map(|e| e.registration.lease_id().unwrap_or(0))?;
        write_out(slot, lease);
        Ok(())
    })
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
            r#"{"a":"1","a":"2"}"#,
            r#"{"a":"1","b":"2","a":"1"}"#,
            "{} x",
        ] {
            let err = parse_info(Some(bad)).unwrap_err();
            assert_eq!(err.status, etcd_registry_status::InvalidArgument, "{bad}");
            assert!(err.message.starts_with("info_json: "), "{}", err.message);
        }
        let twice = parse_info(Some(r#"{"a":"1","a":"2"}"#)).unwrap_err();
        assert!(
            twice.message.contains(r#"the key "a" is given twice"#),
            "{}",
            twice.message
        );
        // A lone surrogate escape is U+FFFD, as Go reads it.
        let info = parse_info(Some(r#"{"a":"x\ud800"}"#)).unwrap().unwrap();
        assert_eq!(info.to_info()["a"], "x\u{FFFD}");
    }
}
