//! `Registration`: one registered node.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyType;
use registry::Registration;

use crate::asyncio;
use crate::blocking;
use crate::dispatch;
use crate::errors::{self, Answer};
use crate::fork::ForkBound;
use crate::types::{info_from_py, PyNode};

/// Waits for the first registration: `Ok(true)` once registered, `Ok(false)` when `timeout`
/// passes first, the error of the failed attempts otherwise (see the core's
/// `Registration::wait_registered`).
async fn wait_registered(reg: Registration, timeout: Option<Duration>) -> registry::Result<bool> {
    // Without a timeout, wait in long chunks (tokio's timer cannot take "forever").
    const CHUNK: Duration = Duration::from_secs(3600);
    let deadline = timeout.and_then(|t| tokio::time::Instant::now().checked_add(t));
    loop {
        let chunk = match deadline {
            Some(deadline) => deadline.saturating_duration_since(tokio::time::Instant::now()),
            None => CHUNK,
        };
        match reg.wait_registered(chunk).await {
            Ok(()) => return Ok(true),
            // The wait's own timeout (the core says so), not an attempt that timed out.
            Err(e) if e.is_wait_timeout() => {
                if deadline.is_some() {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// One registered node, returned by `Registry.register()`.
#[pyclass(
    frozen,
    weakref,
    module = "etcd_registry._native",
    name = "Registration"
)]
pub(crate) struct PyRegistration {
    inner: ForkBound<Registration>,
}

impl PyRegistration {
    pub(crate) fn new(reg: Registration) -> Self {
        PyRegistration {
            inner: ForkBound::new(reg),
        }
    }

    fn core(&self, py: Python<'_>) -> PyResult<&Registration> {
        self.inner.get(py, "Registration")
    }
}

#[pymethods]
impl PyRegistration {
    /// The service name as given.
    #[getter]
    fn service(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.core(py)?.service().to_owned())
    }

    /// The node, with its current info (as given to `register`, or to the last `update`).
    #[getter]
    fn node(&self, py: Python<'_>) -> PyResult<PyNode> {
        Ok(self.core(py)?.node().into())
    }

    /// Replaces the node's info with one put on the same lease; returns at once (see the core's
    /// `Registration::update`). An `"updated"` status event follows once it is in etcd.
    #[pyo3(signature = (info))]
    fn update(&self, py: Python<'_>, info: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let info = info_from_py(info)?;
        self.core(py)?
            .update(info)
            .map_err(|e| errors::to_py_err(py, e))
    }

    /// The etcd key: `<base_path>/<service>/<node>`.
    #[getter]
    fn key(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.core(py)?.key().to_owned())
    }

    /// The lease TTL in whole seconds.
    #[getter]
    fn ttl(&self, py: Python<'_>) -> PyResult<i64> {
        Ok(self.core(py)?.ttl_secs())
    }

    /// `"registering"`, `"registered"`, `"retrying"` or `"unregistered"`.
    #[getter]
    fn state(&self, py: Python<'_>) -> PyResult<&'static str> {
        Ok(self.core(py)?.state().as_str())
    }

    /// The lease the key is attached to while registered.
    #[getter]
    fn lease_id(&self, py: Python<'_>) -> PyResult<Option<i64>> {
        Ok(self.core(py)?.lease_id())
    }

    /// True once registered, False if `timeout` seconds pass first (`None`: no limit).
    #[pyo3(signature = (timeout=None))]
    fn wait(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = blocking::optional_number)] timeout: Option<f64>,
    ) -> PyResult<bool> {
        let timeout = blocking::timeout(py, timeout)?;
        let reg = self.core(py)?.clone();
        blocking::call(py, wait_registered(reg, timeout))
    }

    /// `wait()` for asyncio.
    #[pyo3(signature = (timeout=None))]
    fn wait_async<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = blocking::optional_number)] timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = blocking::timeout(py, timeout)?;
        let reg = self.core(py)?.clone();
        asyncio::future_into_py(py, async move {
            Ok(Answer(wait_registered(reg, timeout).await))
        })
    }

    /// Deletes the key and stops keeping it alive. Idempotent.
    fn unregister(&self, py: Python<'_>) -> PyResult<()> {
        let reg = self.core(py)?.clone();
        let id = reg.id();
        // Begun on the runtime, so that a Ctrl-C raises KeyboardInterrupt at once (not after
        // waiting for "unregistered", which comes once etcd answers or the timeout passes),
        // while the unregistration goes on in the background.
        let result = blocking::wait(py, blocking::begin(async move { reg.unregister().await }))?;
        // With on_status, "unregistered" is queued now: return once the callback has had it.
        dispatch::finish_registration(py, id)?;
        result.map_err(|e| errors::to_py_err(py, e))
    }

    /// `unregister()` for asyncio: resolves once the key is deleted (or etcd could not be
    /// reached, as for `unregister()`) and `on_status` has had "unregistered". The
    /// unregistration begins here, before anything is awaited, and goes on if the awaiting task
    /// is cancelled; but only once the awaitable is made (not when that fails, e.g. with no
    /// running event loop).
    fn unregister_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let reg = self.core(py)?.clone();
        let id = reg.id();
        // From inside a callback, "unregistered" is delivered on this thread when the result
        // is taken, as unregister() does (waiting for it here would wait for ever).
        let nested = dispatch::on_callback_thread();
        let claim = if nested {
            Some(asyncio::finish_on_loop(py, move |py| {
                dispatch::finish_registration(py, id)
            })?)
        } else {
            None
        };
        asyncio::future_into_py_claimed(py, claim, move |_| {
            let begun = blocking::begin(async move { reg.unregister().await });
            async move {
                let result = begun.await;
                if !nested {
                    dispatch::registration_finished(id).await;
                }
                Ok(asyncio::Ended {
                    result,
                    as_value: nested,
                })
            }
        })
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
        if !self.inner.is_home() {
            // A forked child leaving the block (e.g. with the SystemExit of its exit): the
            // parent's node is not the child's to unregister, and a ClosedError here would replace
            // the exception leaving it. Quiet, as Registry.close() is there.
            return Ok(());
        }
        self.unregister(py)
    }

    fn __aenter__<'py>(slf: Py<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        asyncio::future_into_py(py, async move { Ok(slf) })
    }

    #[pyo3(signature = (exc_type, exc_value, traceback))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        exc_type: Option<&Bound<'_, PyType>>,
        exc_value: Option<&Bound<'_, PyAny>>,
        traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = (exc_type, exc_value, traceback);
        if !self.inner.is_home() {
            // As __exit__: quiet in a forked child.
            return asyncio::future_into_py(py, async { Ok(None::<()>) });
        }
        self.unregister_async(py)
    }

    fn __repr__(&self) -> String {
        match self.inner.here() {
            Some(reg) => format!(
                "Registration(key={:?}, state={:?})",
                reg.key(),
                reg.state().as_str()
            ),
            None => "Registration(<created before fork>)".into(),
        }
    }
}
