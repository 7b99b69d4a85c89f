//! asyncio support: `pyo3_async_runtimes`' generic bridge on the core's global runtime.
//!
//! Not `pyo3_async_runtimes::tokio`, for two reasons:
//! - it keeps the runtime it was given forever, which after `fork()` is the parent's dead one,
//!   so an awaited call in the child would never finish; the core's `runtime::handle()` makes a
//!   fresh runtime in a forked child;
//! - it resolves the asyncio future from a runtime thread attached to the interpreter, which
//!   at interpreter exit can meet finalization and crash the process. Here that step runs on the
//!   package's asyncio thread instead (see `dispatch`), which stops before finalization.

use std::any::Any;
use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pyo3::prelude::*;
use pyo3_async_runtimes::generic::{self, ContextExt, Runtime};
use pyo3_async_runtimes::TaskLocals;

use crate::dispatch::{self, Item, Lane};
use crate::errors;

pub(crate) struct GlobalRuntime;

tokio::task_local! {
    static TASK_LOCALS: OnceCell<TaskLocals>;
}

fn handle() -> tokio::runtime::Handle {
    // `future_into_py` below has made sure the runtime can be had.
    registry::runtime::handle().expect("the etcd-registry runtime was started before")
}

/// tokio's join error and handle, in the bridge's terms.
pub(crate) struct JoinError(tokio::task::JoinError);

impl generic::JoinError for JoinError {
    fn is_panic(&self) -> bool {
        self.0.is_panic()
    }

    fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.0.into_panic()
    }
}

/// A spawned task, or work handed to the asyncio thread (already done as far as the bridge is
/// concerned: it never waits for that).
pub(crate) struct JoinHandle(Option<tokio::task::JoinHandle<()>>);

impl Future for JoinHandle {
    type Output = Result<(), JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Some(task) => Pin::new(task).poll(cx).map_err(JoinError),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Runtime for GlobalRuntime {
    type JoinError = JoinError;
    type JoinHandle = JoinHandle;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        JoinHandle(Some(handle().spawn(fut)))
    }

    /// The bridge resolves asyncio futures here, attached to the interpreter: done on the
    /// package's asyncio thread, never on a runtime thread.
    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        dispatch::push(Lane::Asyncio, Item::Run(Box::new(f)));
        JoinHandle(None)
    }
}

impl ContextExt for GlobalRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(TASK_LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS
            .try_with(|cell| cell.get().cloned())
            .unwrap_or_default()
    }
}

/// An awaitable that resolves to what `fut` produces, run on the global runtime.
pub(crate) fn future_into_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    registry::runtime::handle().map_err(|e| errors::to_py_err(py, e))?;
    // The thread that resolves the future (started with the first Registry; again after fork).
    py.import("etcd_registry._dispatch")?
        .call_method0("ensure_started")?;
    generic::future_into_py::<GlobalRuntime, F, T>(py, fut)
}

/// Starts `fut` on the global runtime now, so that it runs to its end whatever becomes of the
/// awaitable that waits for it (for operations that must not be cut short, like an
/// unregistration).
pub(crate) fn begin<F, T>(py: Python<'_>, fut: F) -> PyResult<tokio::task::JoinHandle<T>>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let runtime = registry::runtime::handle().map_err(|e| errors::to_py_err(py, e))?;
    Ok(runtime.spawn(fut))
}

/// What a task started by [`begin`] gave.
pub(crate) fn outcome(
    joined: Result<registry::Result<()>, tokio::task::JoinError>,
) -> registry::Result<()> {
    joined.unwrap_or_else(|e| {
        Err(registry::Error::new(
            registry::ErrorKind::Internal,
            format!("the operation did not finish: {e}"),
        ))
    })
}
