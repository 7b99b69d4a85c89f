//! Forwards the core's `tracing` records to Python's `logging` (logger `etcd_registry`).
//!
//! Cheap when nobody listens: the dispatch thread mirrors the logger's effective level here (see
//! `etcd_registry/_dispatch.py`), and records below it are cut off by `tracing`'s own level
//! check before any formatting. Records are queued for the dispatch thread, never logged from
//! a runtime thread (see `dispatch`).

use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::prelude::*;
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

use crate::dispatch::{self, Item, Lane};

/// How many tracing levels are on: 0 none, 1 ERROR, 2 +WARN, 3 +INFO, 4 +DEBUG, 5 +TRACE.
static ENABLED: AtomicUsize = AtomicUsize::new(0);

/// The library's own records; other crates' (tonic, h2 …) are forwarded only from WARN up.
const OWN_TARGET: &str = "etcd_registry";

fn rank(level: &Level) -> usize {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

fn python_level(level: &Level) -> i32 {
    match *level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

fn filter(enabled: usize) -> LevelFilter {
    match enabled {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

struct Forwarder;

impl Subscriber for Forwarder {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The level changes at run time: ask `enabled` every time.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let rank = rank(metadata.level());
        metadata.is_event()
            && rank <= ENABLED.load(Ordering::Relaxed)
            && (rank <= 2 || metadata.target().starts_with(OWN_TARGET))
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(filter(ENABLED.load(Ordering::Relaxed)))
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are never enabled (see `enabled`); an id is still owed.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let message = registry::log::event_text(event);
        dispatch::push(
            Lane::Callbacks,
            Item::Log {
                level: python_level(event.metadata().level()),
                message,
            },
        );
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Installs the forwarder as this library's `tracing` subscriber (the extension module has its
/// own copy of `tracing`, so this touches no other Rust code in the process).
pub(crate) fn install() {
    let _ = tracing::subscriber::set_global_default(Forwarder);
}

/// Sets the lowest Python level that the `etcd_registry` logger handles now (`logging` numbers;
/// above 40 turns forwarding off).
#[pyfunction]
pub(crate) fn _set_log_level(level: i32) {
    let enabled = match level {
        i32::MIN..=5 => 5,
        6..=10 => 4,
        11..=20 => 3,
        21..=30 => 2,
        31..=40 => 1,
        _ => 0,
    };
    if ENABLED.swap(enabled, Ordering::Relaxed) != enabled {
        tracing::callsite::rebuild_interest_cache();
    }
}
