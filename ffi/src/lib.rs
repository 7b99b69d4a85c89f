//! C ABI over the `etcd-registry` core: `libetcd_registry.so` / `libetcd_registry.a` and the
//! header `include/etcd_registry.h` generated from these sources by cbindgen (see
//! `ffi/cbindgen.toml`, whose preamble states the threading rules and the shutdown order).
//!
//! This crate holds no registry logic: it converts arguments, maps errors to status codes,
//! and adapts the core's one event mechanism (`registry::events`) to C callbacks (run by the
//! core's dispatcher thread) or to a pull queue (`etcd_registry_next_event`, a core stream). Conventions follow rustls-ffi: opaque handles,
//! `etcd_registry_<type>_<verb>` names, a status enum with fixed numbers, out-parameters written
//! only on success, every `_free` accepting NULL, and every exported body inside a panic guard.

#![allow(clippy::missing_safety_doc)] // Each function's contract is in its doc comment / the header.

mod config;
mod events;
mod fork;
#[cfg(test)]
mod fuzz;
mod handle;
mod info;
mod log;
mod node_list;
mod registration;
mod status;
mod string_list;
mod strings;
mod tsan;
mod watch;

pub use config::*;
pub use events::{
    etcd_registry_event, etcd_registry_event_type, etcd_registry_status_callback,
    etcd_registry_status_event, etcd_registry_status_kind, etcd_registry_watch_callback,
    etcd_registry_watch_event, etcd_registry_watch_kind, ETCD_REGISTRY_EVENT_TYPE_STATUS,
    ETCD_REGISTRY_EVENT_TYPE_WATCH, ETCD_REGISTRY_STATUS_KIND_FAILED,
    ETCD_REGISTRY_STATUS_KIND_KEEPALIVE_LOST, ETCD_REGISTRY_STATUS_KIND_REGISTERED,
    ETCD_REGISTRY_STATUS_KIND_REREGISTERED, ETCD_REGISTRY_STATUS_KIND_RETRYING,
    ETCD_REGISTRY_STATUS_KIND_UNREGISTERED, ETCD_REGISTRY_STATUS_KIND_UPDATED,
    ETCD_REGISTRY_WAIT_FOREVER, ETCD_REGISTRY_WATCH_KIND_ADDED, ETCD_REGISTRY_WATCH_KIND_REMOVED,
    ETCD_REGISTRY_WATCH_KIND_RESYNCED, ETCD_REGISTRY_WATCH_KIND_UPDATED,
};
pub use handle::*;
pub use info::{etcd_registry_info_entry, ETCD_REGISTRY_NO_INFO};
pub use log::*;
pub use node_list::*;
pub use registration::*;
pub use status::*;
pub use string_list::*;
pub use watch::*;

use std::ffi::c_char;

/// The library's version, e.g. "0.1.0". Static storage; never NULL.
#[no_mangle]
pub extern "C" fn etcd_registry_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    /// The runtime version and the header's macros are the one Cargo version.
    #[test]
    fn version_matches_cargo_and_the_header() {
        // SAFETY: etcd_registry_version returns a static NUL-terminated string.
        let runtime = unsafe { CStr::from_ptr(super::etcd_registry_version()) };
        assert_eq!(runtime.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
        let header = include_str!("../../include/etcd_registry.h");
        let define = format!(
            "#define ETCD_REGISTRY_VERSION \"{}\"\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(
            header.contains(&define),
            "include/etcd_registry.h lacks {define:?}: run ffi/check-header.sh --update"
        );
        for (part, value) in [
            ("MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
            ("MINOR", env!("CARGO_PKG_VERSION_MINOR")),
            ("PATCH", env!("CARGO_PKG_VERSION_PATCH")),
        ] {
            let define = format!("#define ETCD_REGISTRY_VERSION_{part} {value}\n");
            assert!(header.contains(&define), "header lacks {define:?}");
        }
    }
}
