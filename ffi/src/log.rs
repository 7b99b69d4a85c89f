//! Forwards the library's `tracing` logs to a host callback. The library never prints.
//!
//! A minimal `tracing` subscriber of our own (no spans are recorded, events are formatted as
//! `message key=value …`) is installed as the global default of this library's copy of
//! `tracing` on the first `etcd_registry_set_log_callback`.

use std::cell::Cell;
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

use crate::events::UserData;
use crate::status::{etcd_registry_status, guard, Failure};
use crate::strings::to_c;

/// Severity of a log message; one of the `ETCD_REGISTRY_LOG_*` values.
#[allow(non_camel_case_types)]
pub type etcd_registry_log_level = u32;
/// No logs at all.
pub const ETCD_REGISTRY_LOG_OFF: etcd_registry_log_level = 0;
/// Errors: something failed that the library cannot repair by itself.
pub const ETCD_REGISTRY_LOG_ERROR: etcd_registry_log_level = 1;
/// Warnings: failures the library retries (etcd down, keep-alive lost …).
pub const ETCD_REGISTRY_LOG_WARN: etcd_registry_log_level = 2;
/// Notable events (lease expired and replaced, watch resynced …).
pub const ETCD_REGISTRY_LOG_INFO: etcd_registry_log_level = 3;
/// Details useful when debugging.
pub const ETCD_REGISTRY_LOG_DEBUG: etcd_registry_log_level = 4;
/// Everything.
pub const ETCD_REGISTRY_LOG_TRACE: etcd_registry_log_level = 5;

/// Receives one log message. `target` is the Rust module that logged (e.g.
/// "etcd_registry::group"), `message` the formatted text; both are valid only during the call.
#[allow(non_camel_case_types)]
pub type etcd_registry_log_callback = Option<
    unsafe extern "C" fn(
        level: etcd_registry_log_level,
        target: *const c_char,
        message: *const c_char,
        user_data: *mut c_void,
    ),
>;

type LogFn =
    unsafe extern "C" fn(etcd_registry_log_level, *const c_char, *const c_char, *mut c_void);

/// The host's callback. Held locked during a call, which serializes the calls and lets
/// `etcd_registry_set_log_callback` wait for a running one.
static SINK: Mutex<Option<(LogFn, UserData)>> = Mutex::new(None);
/// The most verbose level forwarded, 0 for none (read on every event without locking).
static MAX_LEVEL: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: OnceLock<bool> = OnceLock::new();
static NEXT_SPAN: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Set while this thread runs the log callback: logs made meanwhile (by library calls from
    /// inside the callback) are dropped instead of deadlocking.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

type SinkGuard = std::sync::MutexGuard<'static, Option<(LogFn, UserData)>>;

thread_local! {
    /// The sink's lock, held by the thread calling fork() between the atfork handlers.
    static HELD_ACROSS_FORK: std::cell::RefCell<Option<SinkGuard>> =
        const { std::cell::RefCell::new(None) };
}

/// fork() prepare handler (see `crate::fork`): waits for a running log callback, so that the
/// child does not inherit the sink locked. A fork from inside the log callback already holds it.
pub(crate) fn before_fork() {
    if IN_CALLBACK.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    let guard = SINK.lock().unwrap_or_else(|p| p.into_inner());
    let _ = HELD_ACROSS_FORK.try_with(|held| *held.borrow_mut() = Some(guard));
}

/// fork() parent and child handler.
pub(crate) fn after_fork() {
    let _ = HELD_ACROSS_FORK.try_with(|held| held.borrow_mut().take());
}

fn level_number(level: &Level) -> usize {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Our crates log at the host's level; dependencies (gRPC, HTTP/2) only their warnings and
/// errors, because their debug output is about frames, not about registrations.
fn wanted(metadata: &Metadata<'_>, max: usize) -> bool {
    let level = level_number(metadata.level());
    let ours = metadata.target().starts_with("etcd_registry");
    level <= max && (ours || level <= 2)
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

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        use tracing::level_filters::LevelFilter;
        Some(match MAX_LEVEL.load(Ordering::Relaxed) {
            0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        })
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        wanted(metadata, MAX_LEVEL.load(Ordering::Relaxed))
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(NEXT_SPAN.fetch_add(1, Ordering::Relaxed).max(1))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        if IN_CALLBACK.try_with(Cell::get).unwrap_or(true) {
            return;
        }
        let metadata = event.metadata();
        let level = level_number(metadata.level()) as etcd_registry_log_level;
        let target = to_c(metadata.target());
        let message = to_c(&registry::log::event_text(event));
        let sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((callback, user_data)) = *sink {
            let _ = IN_CALLBACK.try_with(|c| c.set(true));
            // SAFETY: the host registered this callback for this purpose; the strings live until
            // it returns.
            crate::tsan::acquire(user_data.0);
            unsafe { callback(level, target.as_ptr(), message.as_ptr(), user_data.0) };
            crate::tsan::release(user_data.0);
            let _ = IN_CALLBACK.try_with(|c| c.set(false));
        }
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// Forwards the library's log messages of `max_level` and more severe to `callback`; a NULL
/// callback or `ETCD_REGISTRY_LOG_OFF` turns forwarding off. Without a callback the library
/// logs nothing anywhere. Messages from the library's dependencies (gRPC, HTTP/2) are forwarded
/// at WARN and ERROR only.
///
/// The callback may be called from any thread (the library's runtime threads, the callback
/// thread, or a thread of yours inside a library call), but never by two threads at once: keep
/// it short and do not wait in it for other threads, which may be waiting to log. It
/// must not call into the library (such calls work, but their logs are dropped; and
/// blocking calls fail with INVALID_ARGUMENT on runtime threads). Once this function returns,
/// the previous callback is not running and will not be called again.
///
/// INVALID_ARGUMENT for an unknown level or when called from inside the log callback.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_set_log_callback(
    callback: etcd_registry_log_callback,
    max_level: etcd_registry_log_level,
    user_data: *mut c_void,
) -> etcd_registry_status {
    guard(|| {
        if max_level > ETCD_REGISTRY_LOG_TRACE {
            return Err(Failure::invalid(format!(
                "unknown log level {max_level}: expected 0 (off) to 5 (trace)"
            )));
        }
        if IN_CALLBACK.try_with(Cell::get).unwrap_or(false) {
            return Err(Failure::invalid(
                "etcd_registry_set_log_callback cannot be called from inside the log callback",
            ));
        }
        crate::fork::install_handlers();
        let installed =
            *INSTALLED.get_or_init(|| tracing::subscriber::set_global_default(Forwarder).is_ok());
        if !installed {
            return Err(Failure::new(
                etcd_registry_status::Internal,
                "another tracing subscriber is already installed in this library",
            ));
        }
        {
            crate::tsan::release(user_data);
            let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
            // The lock is held while the callback runs: the old one has returned.
            if let Some((_, old)) = sink.take() {
                crate::tsan::acquire(old.0);
            }
            *sink = callback.map(|cb| (cb, UserData(user_data)));
            let level = if sink.is_some() { max_level } else { 0 };
            MAX_LEVEL.store(level as usize, Ordering::SeqCst);
        }
        // Callsites cache whether they are enabled; recompute that for the new level.
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    })
}
