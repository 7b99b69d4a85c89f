//! Forwards the core's `tracing` records to Python's `logging` (logger `etcd_registry`).
//!
//! The forwarder (levels, filter, text) is the core's (`registry::log`); this file is its Python
//! sink. Cheap when nobody listens: the dispatch thread mirrors the logger's effective level
//! here (see `etcd_registry/_dispatch.py`), and records below it are cut off by `tracing`'s own
//! level check before any formatting. Records are queued for the dispatch thread, never logged
//! from a runtime thread (see `dispatch`).

use pyo3::prelude::*;
use registry::log::{LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_OFF, LOG_TRACE, LOG_WARN};

use crate::dispatch::{self, Item, Lane};

/// The `logging` level of a core level number (TRACE is 5, below `logging.DEBUG`).
fn python_level(level: u32) -> i32 {
    match level {
        LOG_ERROR => 40,
        LOG_WARN => 30,
        LOG_INFO => 20,
        LOG_DEBUG => 10,
        _ => 5,
    }
}

/// Installs the core's forwarder with the Python sink (the extension module has its own copy of
/// `tracing`, so this touches no other Rust code in the process).
pub(crate) fn install() {
    registry::log::install_forwarder(Box::new(|level, _target, message| {
        dispatch::push(
            Lane::Logs,
            Item::Log {
                level: python_level(level),
                message,
            },
        );
    }));
}

/// Sets the lowest Python level that the `etcd_registry` logger handles now (`logging` numbers;
/// above 40 turns forwarding off).
#[pyfunction]
pub(crate) fn _set_log_level(level: i32) {
    registry::log::set_max_level(match level {
        i32::MIN..=5 => LOG_TRACE,
        6..=10 => LOG_DEBUG,
        11..=20 => LOG_INFO,
        21..=30 => LOG_WARN,
        31..=40 => LOG_ERROR,
        _ => LOG_OFF,
    });
}
