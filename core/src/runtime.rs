//! The one global tokio runtime that the C library and the Python module share.
//!
//! Rust programs that already run tokio do not need it: [`Registry`](crate::Registry) runs on
//! whatever runtime it is created in. Bindings call [`handle`] and [`block_on`].

use std::future::Future;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use tokio::runtime::{Handle, Runtime};

use crate::error::{Error, ErrorKind, Result};

/// Environment variable that sets the worker count of the global runtime.
pub const THREADS_ENV: &str = "ETCD_REGISTRY_THREADS";
/// Default worker count: one. A service embedding this library does not want a thread per core,
/// and the workers only do network I/O, timers and the lease tasks' small steps (a blocking
/// call runs its future, decoding included, on the calling thread). With two, every call from
/// outside the runtime woke both (the second to look for work that was not there): measured
/// on two cores beside etcd, one worker answers lists of 1 node about 10 % sooner with 15 %
/// less CPU, and serves 8 calling threads faster too.
pub const DEFAULT_THREADS: usize = 1;

static REQUESTED_THREADS: AtomicUsize = AtomicUsize::new(0);
// The runtime and the process it belongs to. Lock-free on purpose: a lock held by another
// thread at fork() would stay locked forever in the child.
static RUNTIME: AtomicPtr<Runtime> = AtomicPtr::new(std::ptr::null_mut());
static RUNTIME_PID: AtomicU32 = AtomicU32::new(0);
// The process whose thread is creating (or created) the runtime; a stale value left by the
// parent is taken over by a forked child.
static CREATOR_PID: AtomicU32 = AtomicU32::new(0);

/// Sets the worker count of the global runtime. Takes effect only before the runtime is first
/// used; returns false when it is already running (its worker count then stays as it is).
pub fn set_worker_threads(threads: usize) -> bool {
    REQUESTED_THREADS.store(threads.clamp(1, 64), Ordering::SeqCst);
    !is_started()
}

/// Whether the global runtime has been created in this process.
pub fn is_started() -> bool {
    RUNTIME_PID.load(Ordering::Acquire) == std::process::id()
}

fn worker_threads() -> usize {
    match REQUESTED_THREADS.load(Ordering::SeqCst) {
        0 => std::env::var(THREADS_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .map_or(DEFAULT_THREADS, |n| n.min(64)),
        n => n,
    }
}

/// The global runtime, created on first use.
///
/// After `fork()` the child has none of the parent's threads, so the parent's runtime is dead
/// there: it is leaked (dropping it would wait for threads that do not exist) and a fresh one is
/// created for the child. Objects created before the fork stay bound to the dead runtime and
/// refuse use with [`ErrorKind::Closed`] (see [`Registry`](crate::Registry)).
pub fn runtime() -> Result<&'static Runtime> {
    let pid = std::process::id();
    loop {
        if RUNTIME_PID.load(Ordering::Acquire) == pid {
            // SAFETY: RUNTIME was stored (leaked, never freed) before RUNTIME_PID was released.
            return Ok(unsafe { &*RUNTIME.load(Ordering::Acquire) });
        }
        let creator = CREATOR_PID.load(Ordering::Acquire);
        if creator == pid {
            // Another thread of this process is building it.
            std::thread::yield_now();
            continue;
        }
        if CREATOR_PID
            .compare_exchange(creator, pid, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue;
        }
        let threads = worker_threads();
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("etcd-registry")
            .on_thread_start(block_sigpipe)
            .enable_all()
            .build();
        let rt = match built {
            Ok(rt) => rt,
            Err(e) => {
                CREATOR_PID.store(0, Ordering::Release);
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!("cannot start runtime: {e}"),
                ));
            }
        };
        let rt: &'static Runtime = Box::leak(Box::new(rt));
        RUNTIME.store(std::ptr::from_ref(rt).cast_mut(), Ordering::Release);
        RUNTIME_PID.store(pid, Ordering::Release);
        tracing::debug!(threads, "started the global etcd-registry runtime");
        return Ok(rt);
    }
}

/// A handle to the global runtime.
pub fn handle() -> Result<Handle> {
    Ok(runtime()?.handle().clone())
}

/// Runs `future` to completion on the global runtime, blocking this thread.
///
/// Refuses, instead of panicking, when called from inside a tokio runtime (a blocking call on a
/// runtime thread would stall it).
pub fn block_on<F: Future>(future: F) -> Result<F::Output> {
    if Handle::try_current().is_ok() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "a blocking etcd-registry call was made from inside an async runtime; use the async API there",
        ));
    }
    Ok(runtime()?.block_on(future))
}

/// Blocks SIGPIPE on the runtime's threads. Writing to a connection etcd has closed raises it,
/// and a C or Go host (unlike Rust and Python programs) does not ignore it: the process would
/// die. Blocked, the write fails with EPIPE instead, which the connection handles.
fn block_sigpipe() {
    // SAFETY: plain signal-mask calls on the current thread with a properly initialized set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
