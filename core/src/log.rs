//! The one forwarder of the library's `tracing` events to a host's logging, for the bindings
//! (a C callback, which Go's `slog` sits on; Python's `logging`): the level numbers, the filter
//! and the text form are written here once, and a binding plugs in a [`LogSink`].

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber};

/// The event's message followed by its other fields: `message key=value key=value`.
pub fn event_text(event: &tracing::Event<'_>) -> String {
    let mut text = Text::default();
    event.record(&mut text);
    match (text.message.is_empty(), text.fields.is_empty()) {
        (_, true) => text.message,
        (true, false) => text.fields,
        (false, false) => format!("{} {}", text.message, text.fields),
    }
}

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn field(&mut self, name: &str, value: std::fmt::Arguments<'_>) {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{name}={value}");
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.field(field.name(), format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.field(field.name(), format_args!("{value:?}"));
        }
    }
}

/// Log levels as numbers, the C ABI's `ETCD_REGISTRY_LOG_*` (0 is off).
pub const LOG_OFF: u32 = 0;
/// Errors: something failed that the library cannot repair by itself.
pub const LOG_ERROR: u32 = 1;
/// Warnings: failures the library retries (etcd down, keep-alive lost …).
pub const LOG_WARN: u32 = 2;
/// Notable events (lease expired and replaced, watch resynced …).
pub const LOG_INFO: u32 = 3;
/// Details useful when debugging.
pub const LOG_DEBUG: u32 = 4;
/// Everything.
pub const LOG_TRACE: u32 = 5;

/// The number of a `tracing` level (`LOG_ERROR` … `LOG_TRACE`).
pub fn level_number(level: &Level) -> u32 {
    match *level {
        Level::ERROR => LOG_ERROR,
        Level::WARN => LOG_WARN,
        Level::INFO => LOG_INFO,
        Level::DEBUG => LOG_DEBUG,
        Level::TRACE => LOG_TRACE,
    }
}

/// Where forwarded events go: called with the level number, the target (the Rust module that
/// logged, e.g. "etcd_registry::group") and the text of [`event_text`]. It may be called from
/// any thread, several at once. Events logged on a thread while it runs the sink are dropped,
/// so a sink that calls back into the library cannot recurse.
pub type LogSink = Box<dyn Fn(u32, &str, String) + Send + Sync>;

/// The most verbose level forwarded (`LOG_OFF` for none).
static MAX_LEVEL: AtomicU32 = AtomicU32::new(LOG_OFF);
static SINK: OnceLock<LogSink> = OnceLock::new();

thread_local! {
    static IN_SINK: Cell<bool> = const { Cell::new(false) };
}

/// Installs `sink` as the receiver of this library's `tracing` events (the global default
/// subscriber of this copy of `tracing`: a C library or a Python extension module has its own).
/// Forwarding starts once [`set_max_level`] is above `LOG_OFF`. Only the first call installs; it
/// returns whether the forwarder is in place (false if another subscriber was installed first).
pub fn install_forwarder(sink: LogSink) -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let _ = SINK.set(sink);
        tracing::subscriber::set_global_default(Forwarder).is_ok()
    })
}

/// Forwards events of `level` (a level number) and more severe; `LOG_OFF` stops forwarding.
/// Levels above `LOG_TRACE` count as `LOG_TRACE`.
pub fn set_max_level(level: u32) {
    let level = level.min(LOG_TRACE);
    if MAX_LEVEL.swap(level, Ordering::SeqCst) != level {
        // Callsites cache whether they are enabled; recompute that for the new level.
        tracing::callsite::rebuild_interest_cache();
    }
}

/// Whether this thread is running the sink now (a library call made from inside it).
pub fn in_sink() -> bool {
    IN_SINK.try_with(Cell::get).unwrap_or(true)
}

/// The filter, written once: the library's own events at the host's level; its dependencies'
/// (gRPC, HTTP/2) at WARN and ERROR only, because their debug output is about frames, not
/// registrations. Spans are never recorded.
fn wanted(metadata: &Metadata<'_>, max: u32) -> bool {
    let level = level_number(metadata.level());
    let ours = metadata.target().starts_with("etcd_registry");
    metadata.is_event() && level <= max && (ours || level <= LOG_WARN)
}

struct Forwarder;

impl Subscriber for Forwarder {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if wanted(metadata, MAX_LEVEL.load(Ordering::Relaxed)) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(match MAX_LEVEL.load(Ordering::Relaxed) {
            LOG_OFF => LevelFilter::OFF,
            LOG_ERROR => LevelFilter::ERROR,
            LOG_WARN => LevelFilter::WARN,
            LOG_INFO => LevelFilter::INFO,
            LOG_DEBUG => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        })
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        wanted(metadata, MAX_LEVEL.load(Ordering::Relaxed))
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are never enabled (see `wanted`); an id is still owed.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        if in_sink() {
            return;
        }
        let Some(sink) = SINK.get() else { return };
        let metadata = event.metadata();
        let text = event_text(event);
        let _ = IN_SINK.try_with(|c| c.set(true));
        sink(level_number(metadata.level()), metadata.target(), text);
        let _ = IN_SINK.try_with(|c| c.set(false));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
