//! fork() safety of the library's own locks.
//!
//! After fork() only the forking thread exists in the child. A lock another thread held at that
//! moment would stay locked in the child forever, so the locks a child needs to create and use
//! new registries (the callback queue, the log sink) are taken by a `pthread_atfork` prepare
//! handler and released on both sides. Whether a handle was created before the fork is the
//! core's check (`Registry::in_this_process`), made once there; such handles are not touched in
//! the child at all (see `etcd_registry::forked`). The core's runtime guards itself the same way
//! (a fresh runtime in the child).

use std::sync::Once;

use crate::log;
use registry::events::dispatcher;

static INSTALLED: Once = Once::new();

extern "C" fn prepare() {
    // Log sink first: a log call made while the dispatcher lock is held must not wait for it.
    log::before_fork();
    dispatcher::before_fork();
}

extern "C" fn parent() {
    dispatcher::after_fork(false);
    log::after_fork();
}

extern "C" fn child() {
    dispatcher::after_fork(true);
    log::after_fork_in_child();
}

/// Installs the handlers once per process (they are inherited by fork children).
pub(crate) fn install_handlers() {
    INSTALLED.call_once(|| {
        // SAFETY: the handlers only lock and unlock this library's mutexes on the forking thread.
        let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        if rc != 0 {
            tracing::warn!(
                rc,
                "pthread_atfork failed; fork() while callbacks run may deadlock the child"
            );
        }
    });
}
