//! asyncio support: awaitables for operations that run on the core's global runtime.
//!
//! An awaited call is an asyncio future made on the caller's running loop; the operation runs
//! as a task on the core's runtime (`runtime::handle()` makes a fresh one in a forked child),
//! and its result is handed to the loop from the package's asyncio thread (see `dispatch`),
//! never from a runtime thread: that thread stops before interpreter finalization, which a
//! runtime thread attached to the interpreter could meet and crash on. Cancelling the future
//! aborts the task. A result that comes after its loop has closed is dropped with a debug log
//! (the library never prints).
//!
//! A result that holds something (a new watch, an event taken from a watch) comes with a
//! *claim* (see [`future_into_py_claimed`]): when the future is cancelled after the operation
//! finished, or its loop closed, that is released (the watch stopped, the event kept for the
//! next read) instead of being lost with the result.

use std::future::Future;

use pyo3::exceptions::PyBaseException;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyTuple};
use pyo3::IntoPyObjectExt;
use tokio::task::JoinError;

use crate::blocking;
use crate::dispatch::{self, Item, Lane};
use crate::errors;

/// An awaitable that resolves to what `fut` produces, run on the global runtime.
pub(crate) fn future_into_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    future_into_py_claimed(py, None, |_| fut)
}

/// [`future_into_py`] for a result that must not be dropped unseen, made by `make` from the
/// asyncio future it resolves. `make` is called once that future exists (never when there is
/// no running event loop), so work it starts is not done for a call that raised. `claim(value, delivered)` (a Python callable) is called on the
/// future's loop with a successful result: with `True` when the future takes it, returning what
/// the future is set to (or raising the exception it is set to); with `False` when nobody will
/// (the future is done already, i.e. cancelled, or its loop has closed), to release what
/// `value` holds.
pub(crate) fn future_into_py_claimed<'py, M, F, T>(
    py: Python<'py>,
    claim: Option<Py<PyAny>>,
    make: M,
) -> PyResult<Bound<'py, PyAny>>
where
    M: FnOnce(Py<PyAny>) -> F,
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let runtime = registry::runtime::handle().map_err(|e| errors::to_py_err(py, e))?;
    if !dispatch::asyncio_stopped() {
        // The thread that resolves the future (started with the first Registry; again after
        // fork).
        py.import("etcd_registry._dispatch")?
            .call_method0("ensure_started")?;
    }
    // Read after: where the interpreter refuses new threads, `ensure_started` stops the lanes.
    let exiting = dispatch::asyncio_stopped();
    // A RuntimeError outside a running loop, as asyncio's own calls raise.
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let future = event_loop.call_method0("create_future")?;
    let target = (event_loop.unbind(), future.clone().unbind(), claim);
    if exiting {
        // Interpreter exit, after the package's exit handler stopped the asyncio thread (an
        // `atexit` handler registered before the package was imported runs after it): nothing
        // would resolve the future, and awaiting it would hang the exit. The operation runs
        // here instead, on the loop's thread (blocking it; Ctrl-C works), and the future is
        // settled before it is returned.
        let result = blocking::wait(py, make(future.clone().unbind()))?;
        settle(py, target, Ok(result), true);
        return Ok(future);
    }
    let work = runtime.spawn(make(future.clone().unbind()));
    let abort = work.abort_handle();
    runtime.spawn(async move {
        let result = work.await;
        let settle = move || Python::attach(|py| settle(py, target, result, false));
        dispatch::push(Lane::Asyncio, Item::Run(Box::new(settle)));
    });
    let on_done = PyCFunction::new_closure(
        py,
        None,
        None,
        move |args: &Bound<'_, PyTuple>, _kwargs| -> PyResult<()> {
            if args.get_item(0)?.call_method0("cancelled")?.is_truthy()? {
                abort.abort();
            }
            Ok(())
        },
    )?;
    future.call_method1("add_done_callback", (on_done,))?;
    Ok(future)
}

/// On the asyncio thread: hands `result` to the future's loop, which sets it unless the future
/// is done already (cancelled). With `now` (at interpreter exit, on the loop's own thread), sets
/// it here.
fn settle<T>(
    py: Python<'_>,
    (event_loop, future, claim): (Py<PyAny>, Py<PyAny>, Option<Py<PyAny>>),
    result: Result<PyResult<T>, JoinError>,
    now: bool,
) where
    T: for<'a> IntoPyObject<'a>,
{
    let outcome = match result {
        Ok(Ok(value)) => value.into_py_any(py),
        Ok(Err(err)) => Err(err),
        Err(join) if join.is_cancelled() => return, // the future was cancelled
        Err(join) => Err(errors::to_py_err(
            py,
            registry::Error::new(
                registry::ErrorKind::Internal,
                format!("the operation failed inside the library: {join}"),
            ),
        )),
    };
    let (ok, value, claim) = match outcome {
        Ok(value) => (true, value, claim),
        Err(err) => (false, err.into_value(py).into_any(), None),
    };
    let handed = py.import("etcd_registry._dispatch").and_then(|m| {
        if now {
            m.call_method1("_settle_now", (future, ok, value, claim))
        } else {
            m.call_method1("_resolve", (event_loop, future, ok, value, claim))
        }
    });
    if let Err(err) = handed {
        tracing::debug!("an awaited result could not be handed to its event loop: {err}");
    }
}

/// What an awaited unregistration or close gives: `None` in Python, as the blocking forms
/// return (`()` would be an empty tuple), or the error. With `as_value` (see
/// [`finish_on_loop`]) the error is handed over as the exception object, for the claim to
/// raise.
pub(crate) struct Ended {
    pub(crate) result: registry::Result<()>,
    pub(crate) as_value: bool,
}

impl<'py> IntoPyObject<'py> for Ended {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.result {
            Ok(()) => Ok(py.None().into_bound(py)),
            Err(err) if self.as_value => Ok(errors::to_py_err(py, err)
                .into_value(py)
                .into_bound(py)
                .into_any()),
            Err(err) => Err(errors::to_py_err(py, err)),
        }
    }
}

/// The claim (see [`future_into_py_claimed`]) of an unregistration or close awaited from inside
/// a callback, i.e. on the callback thread, which then runs the awaiting event loop: the
/// `unregistered` events it waits for can only be delivered on that thread. So its future
/// resolves once the core's operation is done (with an [`Ended`] `as_value`), and `finish` runs
/// when the loop takes the result, on the callback thread: it delivers what is queued there,
/// nested, as `unregister()`/`close()` do from a callback, before the awaiting task gets the
/// result (or its error). A future cancelled meanwhile leaves the events to be delivered once
/// the callback returns.
pub(crate) fn finish_on_loop<F>(py: Python<'_>, finish: F) -> PyResult<Py<PyAny>>
where
    F: Fn(Python<'_>) -> PyResult<()> + Send + Sync + 'static,
{
    let claim = PyCFunction::new_closure(
        py,
        None,
        None,
        move |args: &Bound<'_, PyTuple>, _kwargs| -> PyResult<Py<PyAny>> {
            let value = args.get_item(0)?;
            if !args.get_item(1)?.is_truthy()? {
                return Ok(value.unbind());
            }
            finish(args.py())?;
            if value.is_instance_of::<PyBaseException>() {
                return Err(PyErr::from_value(value));
            }
            Ok(value.unbind())
        },
    )?;
    Ok(claim.into_any().unbind())
}
