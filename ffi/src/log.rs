//! Forwards the library's `tracing` logs to a host callback. The library never prints.
//!
//! The forwarder (levels, filter, text) is the core's (`registry::log`); this file is its C
//! sink: the host's function pointer and user data. The callback is called without any lock
//! of the library held: a call takes a reference to the current callback under a short lock,
//! and `etcd_registry_set_log_callback` waits for the references to the old one to go.

use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex};

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

/// The host's callback and its user data.
#[derive(Clone, Copy)]
struct Callback {
    function: LogFn,
    user_data: UserData,
}

/// The current callback. Locked only to take or replace the reference, never during a call;
/// each running call holds a clone, so the old one is done when its count is back to one.
static CURRENT: Mutex<Option<Arc<Callback>>> = Mutex::new(None);

type CurrentGuard = std::sync::MutexGuard<'static, Option<Arc<Callback>>>;

fn current() -> CurrentGuard {
    CURRENT.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// The lock, held by the thread calling fork() between the atfork handlers.
    static HELD_ACROSS_FORK: std::cell::RefCell<Option<CurrentGuard>> =
        const { std::cell::RefCell::new(None) };
}

/// fork() prepare handler (see `crate::fork`): no thread is taking a reference while the child
/// is made, so the child does not inherit the lock held.
pub(crate) fn before_fork() {
    let guard = current();
    let _ = HELD_ACROSS_FORK.try_with(|held| *held.borrow_mut() = Some(guard));
}

/// fork() parent handler.
pub(crate) fn after_fork() {
    let _ = HELD_ACROSS_FORK.try_with(|held| held.borrow_mut().take());
}

/// fork() child handler: the parent's threads that were inside the callback do not exist here,
/// so their references never go; the child starts from a fresh one.
pub(crate) fn after_fork_in_child() {
    let _ = HELD_ACROSS_FORK.try_with(|held| {
        if let Some(mut guard) = held.borrow_mut().take() {
            if let Some(old) = guard.take() {
                let fresh = Arc::new(*old);
                std::mem::forget(old);
                *guard = Some(fresh);
            }
        }
    });
}

/// The sink plugged into the core's forwarder.
fn forward(level: u32, target: &str, message: String) {
    let Some(callback) = current().clone() else {
        return;
    };
    let target = to_c(target);
    let message = to_c(&message);
    let user_data = callback.user_data.0;
    crate::tsan::acquire(user_data);
    let outer = IN_CALLBACK.replace(true);
    // SAFETY: the host registered this callback for this purpose; the strings live until it
    // returns.
    unsafe { (callback.function)(level, target.as_ptr(), message.as_ptr(), user_data) };
    IN_CALLBACK.set(outer);
    crate::tsan::release(user_data);
}

thread_local! {
    /// Set while this thread runs the log callback.
    static IN_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside the log callback (which may run on a host thread, inside one
/// of its library calls).
pub(crate) fn in_callback() -> bool {
    IN_CALLBACK.get()
}

/// Forwards the library's log messages of `max_level` and more severe to `callback`; a NULL
/// callback or `ETCD_REGISTRY_LOG_OFF` turns forwarding off. Without a callback the library
/// logs nothing anywhere. Messages from the library's dependencies (gRPC, HTTP/2) are forwarded
/// at WARN and ERROR only.
///
/// The callback may be called from any thread (the library's runtime threads, the callback
/// thread, or a thread of yours inside a library call), and from several threads at once: make
/// it thread-safe and keep it short. The library holds none of its locks while calling it. It
/// should not call into the library (such calls work, but their logs are dropped; and blocking
/// calls fail with INVALID_ARGUMENT on runtime threads). Once this function returns, the
/// previous callback is not running and will not be called again.
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
        if registry::log::in_sink() {
            return Err(Failure::invalid(
                "etcd_registry_set_log_callback cannot be called from inside the log callback",
            ));
        }
        crate::fork::install_handlers();
        if !registry::log::install_forwarder(Box::new(forward)) {
            return Err(Failure::new(
                etcd_registry_status::Internal,
                "another tracing subscriber is already installed in this library",
            ));
        }
        crate::tsan::release(user_data);
        let new = callback.map(|function| {
            Arc::new(Callback {
                function,
                user_data: UserData(user_data),
            })
        });
        let level = if new.is_some() { max_level } else { 0 };
        // The level is set under the callback's lock: two threads setting both at once do not
        // leave one's callback with the other's level (nothing the level setting calls takes
        // this lock).
        let old = {
            let mut current = current();
            registry::log::set_max_level(level);
            std::mem::replace(&mut *current, new)
        };
        // No new call can take the old callback now; wait for the running ones to return.
        if let Some(old) = old {
            while Arc::strong_count(&old) > 1 {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            crate::tsan::acquire(old.user_data.0);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_the_cores() {
        use registry::log as core;
        assert_eq!(ETCD_REGISTRY_LOG_OFF, core::LOG_OFF);
        assert_eq!(ETCD_REGISTRY_LOG_ERROR, core::LOG_ERROR);
        assert_eq!(ETCD_REGISTRY_LOG_WARN, core::LOG_WARN);
        assert_eq!(ETCD_REGISTRY_LOG_INFO, core::LOG_INFO);
        assert_eq!(ETCD_REGISTRY_LOG_DEBUG, core::LOG_DEBUG);
        assert_eq!(ETCD_REGISTRY_LOG_TRACE, core::LOG_TRACE);
    }
}
