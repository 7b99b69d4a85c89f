//! Watches: watch, unwatch, and a watch's live node set.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use crate::events::etcd_registry_watch_callback;
use crate::handle::{
    block_on, ensure_can_block, etcd_registry, handle, out, write_out, WatchEntry,
};
use crate::node_list::etcd_registry_node_list;
use crate::status::{etcd_registry_status, guard};
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
        let nodes = this.open()?.watch(watch_id).map(|e| e.watch.nodes())?;
        write_out(
            slot,
            Box::into_raw(Box::new(etcd_registry_node_list::new(nodes))),
        );
        Ok(())
    })
}
