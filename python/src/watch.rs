//! `Watch`: a service's live node set and its changes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyStopAsyncIteration};
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyTuple, PyType};

use registry::Watch;

use crate::asyncio;
use crate::blocking;
use crate::dispatch::{self, Target};
use crate::errors;
use crate::fork::ForkBound;
use crate::types::{PyNode, PyWatchEvent};

/// A watch on one service, returned by `Registry.watch()`.
#[pyclass(frozen, module = "etcd_registry._native", name = "Watch")]
pub(crate) struct PyWatch {
    inner: ForkBound<Arc<Watch>>,
    /// Events go to a callback instead of the iterator.
    has_callback: bool,
    closed: AtomicBool,
}

impl PyWatch {
    /// Starts the core watch. With a callback, its events go to the process's callback stream,
    /// pulled by the callback thread, which keeps the watch running until it is closed (see
    /// `dispatch`); `registry` names the registry.
    pub(crate) async fn start(
        core: &registry::Registry,
        service: &str,
        callback: Option<Arc<Py<PyAny>>>,
        registry: u64,
    ) -> registry::Result<Arc<Watch>> {
        let Some(callback) = callback else {
            return core.watch(service).await.map(Arc::new);
        };
        let callbacks = dispatch::callbacks();
        let creating = callbacks.creating(registry);
        let watch = Arc::new(core.watch_routed(service, &callbacks.route()).await?);
        creating.done(watch.id(), Target::Watch { callback }, Some(watch.clone()));
        Ok(watch)
    }

    /// Wraps a core watch made by [`PyWatch::start`].
    pub(crate) fn new(watch: Arc<Watch>, has_callback: bool) -> Self {
        PyWatch {
            inner: ForkBound::new(watch),
            has_callback,
            closed: AtomicBool::new(false),
        }
    }

    fn core(&self, py: Python<'_>) -> PyResult<&Arc<Watch>> {
        self.inner.get(py, "Watch")
    }

    /// Stops the watch without waiting for a callback of it that is running: for a watch
    /// nobody got (its `watch_async` was cancelled).
    fn discard(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            if let Some(watch) = self.inner.here() {
                watch.cancel();
                if self.has_callback {
                    dispatch::drop_watch(watch.id());
                }
            }
        }
    }

    /// For `watch_async`: the claim (see `asyncio::future_into_py_claimed`) that stops a watch
    /// whose future was cancelled once it was made.
    pub(crate) fn claim_made(py: Python<'_>) -> PyResult<Py<PyAny>> {
        let claim = PyCFunction::new_closure(
            py,
            None,
            None,
            |args: &Bound<'_, PyTuple>, _kwargs| -> PyResult<Py<PyAny>> {
                let value = args.get_item(0)?;
                if !args.get_item(1)?.is_truthy()? {
                    if let Ok(watch) = value.cast::<PyWatch>() {
                        watch.get().discard();
                    }
                }
                Ok(value.unbind())
            },
        )?;
        Ok(claim.into_any().unbind())
    }

    fn open(&self, py: Python<'_>) -> PyResult<&Arc<Watch>> {
        let watch = self.core(py)?;
        if self.closed.load(Ordering::SeqCst) || watch.is_finished() {
            return Err(errors::closed(py, "the watch is closed"));
        }
        Ok(watch)
    }

    /// The watch to take the next event from, or `None` when it has ended.
    fn iterable(&self, py: Python<'_>) -> PyResult<Option<Arc<Watch>>> {
        if self.has_callback {
            return Err(PyRuntimeError::new_err(
                "this watch delivers its events to on_event; it cannot be iterated",
            ));
        }
        let watch = self.core(py)?;
        if self.closed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(Some(watch.clone()))
    }
}

#[pymethods]
impl PyWatch {
    /// The service watched.
    #[getter]
    fn service(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.core(py)?.service().to_owned())
    }

    /// The last etcd revision the live set reflects.
    #[getter]
    fn revision(&self, py: Python<'_>) -> PyResult<i64> {
        Ok(self.core(py)?.revision())
    }

    /// Whether the watch has ended: `close()`, its registry closed, or a fork.
    #[getter]
    fn closed(&self) -> bool {
        match self.inner.here() {
            Some(watch) => self.closed.load(Ordering::SeqCst) || watch.is_finished(),
            None => true,
        }
    }

    /// The live node set now, sorted by name.
    fn nodes(&self, py: Python<'_>) -> PyResult<Vec<PyNode>> {
        Ok(self
            .open(py)?
            .nodes()
            .into_iter()
            .map(PyNode::from)
            .collect())
    }

    /// The next event, waiting at most `timeout` seconds (`None`: no limit); `None` on timeout
    /// or once the watch has ended.
    #[pyo3(signature = (timeout=None))]
    fn next_event(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<PyWatchEvent>> {
        let deadline = blocking::deadline(blocking::timeout(py, timeout)?);
        let Some(watch) = self.iterable(py)? else {
            return Ok(None);
        };
        Ok(blocking::run(py, deadline, watch.next())?
            .flatten()
            .map(PyWatchEvent::from))
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyWatchEvent>> {
        let Some(watch) = self.iterable(py)? else {
            return Ok(None);
        };
        // An event already waiting needs no trip through the runtime.
        match watch.try_next() {
            Ok(Some(event)) => return Ok(Some(event.into())),
            Err(()) => return Ok(None),
            Ok(None) => {}
        }
        Ok(blocking::run(py, None, watch.next())?
            .flatten()
            .map(PyWatchEvent::from))
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let watch = self.iterable(py)?;
        asyncio::future_into_py(py, async move {
            let event = match watch {
                Some(watch) => watch.next().await,
                None => None,
            };
            event
                .map(PyWatchEvent::from)
                .ok_or_else(|| PyStopAsyncIteration::new_err(()))
        })
    }

    /// Stops the watch; no callback runs for it after this returns (unless called from inside
    /// that callback, which then returns before the next). Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if !self.closed.swap(true, Ordering::SeqCst) {
            if let Some(watch) = self.inner.here() {
                watch.cancel();
                if self.has_callback {
                    dispatch::forget_watch(py, watch.id())?;
                }
            }
        }
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (exc_type, exc_value, traceback))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyType>>,
        exc_value: Option<&Bound<'_, PyAny>>,
        traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let _ = (exc_type, exc_value, traceback);
        self.close(py)
    }

    fn __repr__(&self) -> String {
        match self.inner.here() {
            Some(watch) => format!(
                "Watch(service={:?}, closed={})",
                watch.service(),
                if self.closed() { "True" } else { "False" }
            ),
            None => "Watch(<created before fork>)".into(),
        }
    }
}
