//! Status codes, the thread-local last error, and the panic boundary every exported function
//! runs in.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use registry::{Error, ErrorKind};

/// What a fallible call did. The numbers are fixed and never reused; new codes may be added.
///
/// The text of the last failure on the calling thread is available from
/// `etcd_registry_last_error_message()`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum etcd_registry_status {
    /// Success. Out-parameters have been written.
    Ok = 0,
    /// An argument was unusable: empty name, TTL of 0, malformed endpoint, info that is not a
    /// JSON object of strings, unknown value, a blocking call from a library thread …
    InvalidArgument = 1,
    /// A required pointer argument was NULL.
    NullPointer = 2,
    /// The connection broke during a call. (etcd unreachable for a whole call is TIMEOUT,
    /// whose message names the endpoint and the cause.)
    Connection = 3,
    /// The operation did not finish in time (or, for `etcd_registry_next_event`, no event came).
    Timeout = 4,
    /// etcd rejected the credentials or the permission.
    Auth = 5,
    /// No such registration or watch on this registry (never existed or already ended).
    NotFound = 6,
    /// The registry is closed.
    Closed = 7,
    /// A bug inside the library panicked; the call was abandoned. Please report it.
    Panic = 8,
    /// Anything else: an unexpected answer from etcd, or a bug.
    Internal = 9,
    /// A string argument was not valid UTF-8.
    InvalidUtf8 = 10,
    /// The TLS handshake with etcd failed: its certificate is not signed by the configured CA,
    /// not valid for the host name, or expired; or etcd refused the client certificate or
    /// requires one. Unreadable or malformed PEM is INVALID_ARGUMENT (at connect).
    Tls = 11,
    /// etcd refused for lack of a resource: its database is full (the NOSPACE alarm, "database
    /// space exceeded", until an operator frees space and disarms it) or it is overloaded ("too
    /// many requests"). A registration refused so keeps retrying and lands once etcd accepts
    /// writes again.
    ResourceExhausted = 12,
}

impl etcd_registry_status {
    pub(crate) fn from_kind(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::InvalidArgument => etcd_registry_status::InvalidArgument,
            ErrorKind::Connection => etcd_registry_status::Connection,
            ErrorKind::Timeout => etcd_registry_status::Timeout,
            ErrorKind::Auth => etcd_registry_status::Auth,
            ErrorKind::NotFound => etcd_registry_status::NotFound,
            ErrorKind::Closed => etcd_registry_status::Closed,
            ErrorKind::Tls => etcd_registry_status::Tls,
            ErrorKind::ResourceExhausted => etcd_registry_status::ResourceExhausted,
            _ => etcd_registry_status::Internal,
        }
    }

    /// A short lowercase name, e.g. "timeout".
    pub(crate) fn name(self) -> &'static CStr {
        match self {
            etcd_registry_status::Ok => c"ok",
            etcd_registry_status::InvalidArgument => c"invalid argument",
            etcd_registry_status::NullPointer => c"null pointer",
            etcd_registry_status::Connection => c"connection",
            etcd_registry_status::Timeout => c"timeout",
            etcd_registry_status::Auth => c"authentication",
            etcd_registry_status::NotFound => c"not found",
            etcd_registry_status::Closed => c"closed",
            etcd_registry_status::Panic => c"panic",
            etcd_registry_status::Internal => c"internal",
            etcd_registry_status::InvalidUtf8 => c"invalid utf-8",
            etcd_registry_status::Tls => c"tls",
            etcd_registry_status::ResourceExhausted => c"resource exhausted",
        }
    }

    fn from_u32(value: u32) -> Option<Self> {
        use etcd_registry_status as S;
        [
            S::Ok,
            S::InvalidArgument,
            S::NullPointer,
            S::Connection,
            S::Timeout,
            S::Auth,
            S::NotFound,
            S::Closed,
            S::Panic,
            S::Internal,
            S::InvalidUtf8,
            S::Tls,
            S::ResourceExhausted,
        ]
        .into_iter()
        .find(|s| *s as u32 == value)
    }
}

/// A failed call: its status and the message `etcd_registry_last_error_message` will return.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: etcd_registry_status,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: etcd_registry_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Failure::new(etcd_registry_status::InvalidArgument, message)
    }

    pub(crate) fn null(what: &str) -> Self {
        Failure::new(
            etcd_registry_status::NullPointer,
            format!("{what} must not be NULL"),
        )
    }

    pub(crate) fn closed() -> Self {
        Failure::new(etcd_registry_status::Closed, "the registry is closed")
    }

    /// A panic caught inside the library (a bug), with the panic's message.
    pub(crate) fn panic(payload: &(dyn std::any::Any + Send)) -> Self {
        Failure::new(
            etcd_registry_status::Panic,
            format!(
                "internal panic (a bug in etcd-registry): {}",
                panic_message(payload)
            ),
        )
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure {
            status: etcd_registry_status::from_kind(err.kind()),
            message: err.message().to_string(),
        }
    }
}

pub(crate) type FfiResult<T = ()> = Result<T, Failure>;

thread_local! {
    /// The message of the last status-returning call on this thread ("" after a success).
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message never contains NUL in practice; if it does, keep the text before it.
    let text = message.split('\0').next().unwrap_or_default();
    let c = CString::new(text).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = c);
}

fn clear_last_error() {
    let _ = LAST_ERROR.try_with(|slot| {
        let mut slot = slot.borrow_mut();
        if !slot.as_bytes().is_empty() {
            *slot = CString::default();
        }
    });
}

static PANIC_HOOK: Once = Once::new();

thread_local! {
    /// How many exported functions' bodies this thread is running (`caught`; one may call
    /// another through a callback).
    static GUARDED: Cell<u32> = const { Cell::new(0) };
    /// A panic inside one of them, logged once it has been caught (see `install_panic_hook`).
    static CAUGHT_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// The library never prints: a panic (a bug) is logged through `tracing` instead of written to
/// stderr by the default hook. This hook belongs to the copy of the Rust standard library inside
/// this library, so it does not affect other Rust code in the process.
///
/// Inside an exported function the log waits until the panic has been caught: the hook runs
/// before the unwinding, with the locks of the code that panicked still held, and the host's
/// log callback may call the library, which would wait for them.
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = panic_message(info.payload());
            if GUARDED.try_with(Cell::get).unwrap_or(0) > 0 {
                let _ = CAUGHT_PANIC.try_with(|slot| {
                    slot.borrow_mut().get_or_insert((location, message));
                });
            } else {
                tracing::error!(%location, "panic: {message}");
            }
        }));
    });
}

/// Runs an exported function's body (or a step of the library's work for one), catching a
/// panic, which is logged after it is caught.
pub(crate) fn caught<T>(body: impl FnOnce() -> T) -> std::thread::Result<T> {
    install_panic_hook();
    let _ = GUARDED.try_with(|depth| depth.set(depth.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(body));
    let _ = GUARDED.try_with(|depth| depth.set(depth.get().saturating_sub(1)));
    if let Some((location, message)) = CAUGHT_PANIC
        .try_with(|slot| slot.borrow_mut().take())
        .ok()
        .flatten()
    {
        tracing::error!(%location, "panic: {message}");
    }
    result
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs the body of a status-returning exported function: turns a panic into
/// `ETCD_REGISTRY_STATUS_PANIC`, a failure into its status, and records the message.
pub(crate) fn guard(body: impl FnOnce() -> FfiResult) -> etcd_registry_status {
    match caught(body) {
        Ok(Ok(())) => {
            clear_last_error();
            etcd_registry_status::Ok
        }
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.status
        }
        Err(payload) => {
            let failure = Failure::panic(payload.as_ref());
            set_last_error(&failure.message);
            failure.status
        }
    }
}

/// Runs the body of an exported function that returns a value instead of a status (accessors):
/// a panic gives `fallback`. The last error is left as it is.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    caught(body).unwrap_or(fallback)
}

/// The message of the last failed call on the calling thread, or "" when the last
/// status-returning call on this thread succeeded. Never NULL. It does not repeat the status
/// (`etcd_registry_status_name` gives that), e.g. "node name must not be empty".
///
/// The string belongs to the library and stays valid until the next status-returning call on
/// the same thread; copy it if you need it longer (or use `etcd_registry_last_error_copy`).
/// Thread-local: hosts whose code can move between OS threads between two calls (Go) must read
/// it in the same native call as the failing function, or use the copy variant from that call.
#[no_mangle]
pub extern "C" fn etcd_registry_last_error_message() -> *const c_char {
    guard_value(c"".as_ptr(), || {
        LAST_ERROR
            .try_with(|slot| slot.borrow().as_ptr())
            .unwrap_or(c"".as_ptr())
    })
}

/// Copies the last error message of the calling thread into `buffer` (of `capacity` bytes),
/// truncated if needed and always NUL-terminated when `capacity > 0`, like `snprintf`.
///
/// Returns the length of the full message in bytes (without the NUL): a return value of
/// `capacity` or more means the copy was truncated. `buffer` may be NULL when `capacity` is 0,
/// to ask for the length. Does not change the last error.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_last_error_copy(
    buffer: *mut c_char,
    capacity: usize,
) -> usize {
    guard_value(0, || {
        LAST_ERROR
            .try_with(|slot| {
                let slot = slot.borrow();
                let bytes = slot.as_bytes();
                // SAFETY: the caller promises `buffer` has `capacity` writable bytes.
                unsafe { crate::strings::copy_truncated(bytes, buffer, capacity) };
                bytes.len()
            })
            .unwrap_or(0)
    })
}

/// A short lowercase name of a status ("ok", "timeout", "not found" …), or "unknown" for a
/// number this version does not know. Static storage; never NULL.
#[no_mangle]
pub extern "C" fn etcd_registry_status_name(status: u32) -> *const c_char {
    guard_value(c"unknown".as_ptr(), || {
        etcd_registry_status::from_u32(status)
            .map_or(c"unknown", etcd_registry_status::name)
            .as_ptr()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_panic_status_with_a_message() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, etcd_registry_status::Panic);
        let msg = unsafe { std::ffi::CStr::from_ptr(etcd_registry_last_error_message()) };
        assert!(msg.to_str().unwrap().contains("boom"), "{msg:?}");
        assert_eq!(guard(|| Ok(())), etcd_registry_status::Ok);
        let msg = unsafe { std::ffi::CStr::from_ptr(etcd_registry_last_error_message()) };
        assert!(msg.is_empty());
    }

    /// A panic inside an exported function is logged once caught, when the locks of the code
    /// that panicked are released: the host's log callback may call the library.
    #[test]
    fn a_panic_is_logged_after_the_locks_of_the_code_that_panicked_are_released() {
        use std::sync::atomic::{AtomicU8, Ordering};
        use std::sync::Mutex;
        static LOCK: Mutex<()> = Mutex::new(());
        /// 0: the panic not logged; 1: logged while LOCK was held; 2: logged with LOCK free.
        static SEEN: AtomicU8 = AtomicU8::new(0);
        unsafe extern "C" fn log(
            _level: u32,
            _target: *const c_char,
            message: *const c_char,
            _user_data: *mut std::ffi::c_void,
        ) {
            let message = unsafe { CStr::from_ptr(message) }.to_string_lossy();
            if message.contains("boom while locked") {
                // Poisoned (by the panic) but free is free.
                let free = !matches!(LOCK.try_lock(), Err(std::sync::TryLockError::WouldBlock));
                SEEN.store(if free { 2 } else { 1 }, Ordering::SeqCst);
            }
        }
        let set = unsafe {
            crate::log::etcd_registry_set_log_callback(
                Some(log),
                crate::log::ETCD_REGISTRY_LOG_ERROR,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(set, etcd_registry_status::Ok);
        let status = guard(|| {
            let _held = LOCK.lock().unwrap_or_else(|p| p.into_inner());
            panic!("boom while locked");
        });
        assert_eq!(status, etcd_registry_status::Panic);
        let unset =
            unsafe { crate::log::etcd_registry_set_log_callback(None, 0, std::ptr::null_mut()) };
        assert_eq!(unset, etcd_registry_status::Ok);
        assert_eq!(
            SEEN.load(Ordering::SeqCst),
            2,
            "0: not logged, 1: logged under the lock"
        );
    }

    #[test]
    fn statuses_match_the_core_error_kinds() {
        for (kind, status) in [
            (ErrorKind::InvalidArgument, 1),
            (ErrorKind::Connection, 3),
            (ErrorKind::Timeout, 4),
            (ErrorKind::Auth, 5),
            (ErrorKind::NotFound, 6),
            (ErrorKind::Closed, 7),
            (ErrorKind::Internal, 9),
            (ErrorKind::Tls, 11),
            (ErrorKind::ResourceExhausted, 12),
        ] {
            assert_eq!(etcd_registry_status::from_kind(kind) as u32, status);
        }
    }

    #[test]
    fn copy_truncates_like_snprintf() {
        let _ = guard(|| Err(Failure::invalid("abcdef")));
        let mut buf = [1 as c_char; 4];
        let n = unsafe { etcd_registry_last_error_copy(buf.as_mut_ptr(), buf.len()) };
        assert_eq!(n, 6);
        assert_eq!(buf, [b'a' as c_char, b'b' as c_char, b'c' as c_char, 0]);
        assert_eq!(
            unsafe { etcd_registry_last_error_copy(std::ptr::null_mut(), 0) },
            6
        );
    }
}
