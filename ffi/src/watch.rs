//! Watches: watch, unwatch, and a watch's live node set.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use crate::events::etcd_registry_watch_callback;
use crate::handle::{
    answer_async, block_on, ensure_can_block, etcd_registry, handle, lock_state, out, write_out,
    WatchEntry,
};
use crate::node_list::etcd_registry_node_list;
use crate::status::{etcd_registry_status, guard, Failure};
use crate::strings::required;

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

/// Called once with the result of `etcd_registry_watch_async`: OK and the new watch's id, or an
/// error status, its message (valid until the callback returns) and 0.
#[allow(non_camel_case_types)]
pub type etcd_registry_watch_started_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        status: etcd_registry_status,
        error_message: *const c_char,
        watch_id: u64,
    ),
>;

/// Watches a service like `etcd_registry_watch`, without blocking on its first listing: the
/// watch is made on a library runtime thread, and `started` is called exactly once (possibly
/// before this returns) with `started_user_data` and the watch id, or with the error
/// `etcd_registry_watch` would have returned (CONNECTION/TIMEOUT, an invalid service name,
/// CLOSED if the registry was closed meanwhile: no watch is left then). The watch's events go
/// to `callback` (or the pull queue with a NULL callback) as with `etcd_registry_watch`; they
/// carry the id and may come before `started` is called. `started` must return quickly and
/// make no blocking library call; `started_user_data` must stay valid until it has run, even
/// past `etcd_registry_close` and `etcd_registry_free`. On any other status (NULL pointers, a
/// closed registry) `started` is never called and no watch is made.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_watch_async(
    registry: *mut etcd_registry,
    service: *const c_char,
    callback: etcd_registry_watch_callback,
    user_data: *mut c_void,
    started: etcd_registry_watch_started_callback,
    started_user_data: *mut c_void,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for every pointer.
        let this = unsafe { handle(registry) }?;
        let service = unsafe { required(service, "service") }?.to_owned();
        let started = started.ok_or_else(|| Failure::null("started"))?;
        drop(this.open()?);
        let (route, handler) = this.route(None, callback, user_data)?;
        let registry = this.registry.clone();
        let state = this.state.clone();
        let work = async move {
            let watch = Arc::new(registry.watch_routed(&service, &route).await?);
            let mut state = lock_state(&state);
            if state.closed {
                drop(state);
                watch.cancel();
                return Err(Failure::closed());
            }
            let id = watch.id();
            if let Some((handler, _)) = &handler {
                handler.resume();
            }
            state.watches.insert(id, WatchEntry { watch, handler });
            Ok(id)
        };
        answer_async(
            this,
            started_user_data,
            "watch",
            work,
            move |user_data, outcome| {
                match outcome {
                    // SAFETY: the host gave this function pointer for exactly this call.
                    Ok(id) => unsafe {
                        started(user_data, etcd_registry_status::Ok, std::ptr::null(), id)
                    },
                    Err(failure) => {
                        let message = crate::strings::to_c(&failure.message);
                        // SAFETY: as above; the message lives until the call returns.
                        unsafe { started(user_data, failure.status, message.as_ptr(), 0) };
                    }
                }
            },
        );
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
        let entry = this.open()?.take_watch(watch_id)?;
        // Stops the handler (waiting for a running call, unless on the callback thread) or drops
        // the watch's events still in the pull queue.
        crate::handle::waiting_for_callbacks(|| entry.watch.cancel());
        if let Some((_, user_data)) = &entry.handler {
            crate::tsan::acquire(user_data.0);
        }
        this.lock().unwatching.remove(&watch_id);
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
        let nodes = this.open()?.watch(watch_id).map(|e| e.watch.nodes())?;
        write_out(
            slot,
            Box::into_raw(Box::new(etcd_registry_node_list::new(nodes))),
        );
        Ok(())
    })
}
