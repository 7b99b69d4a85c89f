//! Happens-before edges for ThreadSanitizer builds of host programs.
//!
//! The library is not built with ThreadSanitizer, so the synchronisation that orders a host's
//! accesses to its `user_data` (written before `register`, read in the callback, freed after
//! `close`) is invisible to it, and every such access would be reported as a race. When the host
//! process carries the ThreadSanitizer runtime, the library tells it about the edges it
//! guarantees, through the runtime's public annotation functions; otherwise this does nothing.

use std::ffi::{c_void, CStr};
use std::sync::OnceLock;

type Annotate = unsafe extern "C" fn(*mut c_void);

struct Hooks {
    acquire: Option<Annotate>,
    release: Option<Annotate>,
}

fn hooks() -> &'static Hooks {
    static HOOKS: OnceLock<Hooks> = OnceLock::new();
    HOOKS.get_or_init(|| Hooks {
        acquire: lookup(c"__tsan_acquire"),
        release: lookup(c"__tsan_release"),
    })
}

fn lookup(name: &CStr) -> Option<Annotate> {
    // SAFETY: dlsym with a NUL-terminated name; RTLD_DEFAULT searches the process's symbols.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if symbol.is_null() {
        return None;
    }
    // SAFETY: both runtime functions have the signature `void (void *addr)`.
    Some(unsafe { std::mem::transmute::<*mut c_void, Annotate>(symbol) })
}

/// What the calling thread did before now happens before a later `acquire` of `addr`.
pub(crate) fn release(addr: *mut c_void) {
    if let Some(release) = hooks().release {
        // SAFETY: the annotation only records `addr` as a synchronisation object.
        unsafe { release(addr) }
    }
}

/// What was done before the last `release` of `addr` happens before what the calling thread
/// does from now on.
pub(crate) fn acquire(addr: *mut c_void) {
    if let Some(acquire) = hooks().acquire {
        // SAFETY: as above.
        unsafe { acquire(addr) }
    }
}
