//! `Registry`: the Python face of the core's registry.

use std::future::Future;
use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

use registry::{Config, Node, PemSource, TlsConfig};

use crate::asyncio;
use crate::blocking::{self, seconds};
use crate::dispatch::{self, Target};
use crate::errors::{self, Answer};
use crate::fork::ForkBound;
use crate::registration::PyRegistration;
use crate::types::{info_from_py, PyNode, StatusContext};
use crate::watch::PyWatch;

/// Registers service nodes in etcd and discovers them.
// `weakref`: a callback that needs its registry holds it weakly, as a strong reference from a
// callback (which the callback thread keeps) would keep the registry from ever being collected
// and closed. Registration and Watch take weak references too, for the same reason.
#[pyclass(frozen, weakref, module = "etcd_registry._native", name = "Registry")]
pub(crate) struct PyRegistry {
    inner: ForkBound<registry::Registry>,
    // The watches with a callback are kept running by the callback thread's state
    // (`dispatch`), not here: until their close() or this registry's close(), even once this
    // object is gone (dropped without close(), or in a forked child).
    /// Names this registry's callbacks on the callback thread (see `dispatch`).
    token: u64,
}

fn callback_or_none(
    py: Python<'_>,
    what: &str,
    callback: Option<Py<PyAny>>,
) -> PyResult<Option<Arc<Py<PyAny>>>> {
    match callback {
        Some(cb) if cb.bind(py).is_none() => Ok(None),
        Some(cb) if is_coroutine_function(cb.bind(py))? => Err(PyTypeError::new_err(format!(
            "{what} must be a plain function, not a coroutine function ({}): callbacks are \
             called on the library's own thread, where nothing would await the coroutine; to \
             hand events to asyncio, pass a plain function that calls \
             loop.call_soon_threadsafe(...)",
            cb.bind(py).repr()?
        ))),
        Some(cb) if cb.bind(py).is_callable() => Ok(Some(Arc::new(cb))),
        Some(cb) => Err(PyTypeError::new_err(format!(
            "{what} must be callable or None, not {}",
            cb.bind(py).get_type().name()?
        ))),
        None => Ok(None),
    }
}

/// Whether calling `cb` makes a coroutine: an `async def` function or method (also through
/// `functools.partial`, which `inspect` unwraps), or an object whose `__call__` is one. Such a
/// callback would be called and its coroutine dropped unrun, so it is refused up front (a
/// callback that returns an awaitable some other way is caught, and reported, when called:
/// see `_deliver` in `etcd_registry/_dispatch.py`).
fn is_coroutine_function(cb: &Bound<'_, PyAny>) -> PyResult<bool> {
    let check = cb.py().import("inspect")?.getattr("iscoroutinefunction")?;
    if check.call1((cb,))?.is_truthy()? {
        return Ok(true);
    }
    match cb.get_type().getattr("__call__") {
        Ok(call) => check.call1((call,))?.is_truthy(),
        Err(_) => Ok(false),
    }
}

/// A TLS argument: PEM `bytes` (or another bytes-like object), or a path (`str` or
/// `os.PathLike`). `None` is unset.
fn pem_source(what: &str, value: Option<Bound<'_, PyAny>>) -> PyResult<Option<PemSource>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    // Bytes-like: bytes, bytearray, memoryview (not any sequence of ints, which a Vec<u8>
    // would also take).
    if value.is_instance_of::<pyo3::types::PyMemoryView>() {
        let bytes = value.call_method0("tobytes")?.extract::<Vec<u8>>()?;
        return Ok(Some(PemSource::Pem(bytes)));
    }
    if value.is_instance_of::<pyo3::types::PyBytes>()
        || value.is_instance_of::<pyo3::types::PyByteArray>()
    {
        return Ok(Some(PemSource::Pem(value.extract::<Vec<u8>>()?)));
    }
    match value.extract::<std::path::PathBuf>() {
        Ok(path) => Ok(Some(PemSource::File(path))),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{what} must be a path (str or os.PathLike) or PEM bytes, not {}",
            value.get_type().name()?
        ))),
    }
}

fn nodes(nodes: Vec<Node>) -> Vec<PyNode> {
    nodes.into_iter().map(PyNode::from).collect()
}

/// Starts the package's dispatch thread (callbacks and logs), once per process.
fn ensure_dispatcher(py: Python<'_>) -> PyResult<()> {
    py.import("etcd_registry._dispatch")?
        .call_method0("ensure_started")?;
    Ok(())
}

impl PyRegistry {
    fn core(&self, py: Python<'_>) -> PyResult<&registry::Registry> {
        self.inner.get(py, "Registry")
    }

    /// The core registry if it is not closed: async calls fail at once rather than in the
    /// awaitable.
    fn open(&self, py: Python<'_>) -> PyResult<&registry::Registry> {
        let core = self.core(py)?;
        if core.is_closed() {
            return Err(errors::closed(py, "the registry is closed"));
        }
        Ok(core)
    }
}

/// The endpoints, a sequence of strings: a single str (a sequence of its characters to Python)
/// is refused with a message that says what to give.
fn endpoints_arg(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if obj.is_instance_of::<pyo3::types::PyString>() {
        return Err(PyTypeError::new_err(
            "endpoints must be a list of \"host:port\" strings, not a str: write [\"127.0.0.1:2379\"]",
        ));
    }
    obj.extract()
}

#[pymethods]
impl PyRegistry {
    #[new]
    // Literal defaults, so that the signature (and the stubs) show them; test_api pins them to
    // the core's (the module's DEFAULT_* attributes).
    #[pyo3(signature = (endpoints, base_path="/services", username=None, password=None, timeout=10.0, *, backoff_min=1.0, backoff_max=30.0, tls_ca=None, tls_cert=None, tls_key=None, tls_server_name=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        #[pyo3(from_py_with = endpoints_arg)] endpoints: Vec<String>,
        base_path: &str,
        username: Option<String>,
        password: Option<String>,
        #[pyo3(from_py_with = blocking::number)] timeout: f64,
        #[pyo3(from_py_with = blocking::number)] backoff_min: f64,
        #[pyo3(from_py_with = blocking::number)] backoff_max: f64,
        tls_ca: Option<Bound<'_, PyAny>>,
        tls_cert: Option<Bound<'_, PyAny>>,
        tls_key: Option<Bound<'_, PyAny>>,
        tls_server_name: Option<String>,
    ) -> PyResult<Self> {
        let mut config = Config::new(endpoints, base_path)
            .with_timeout(seconds(py, "timeout", timeout)?)
            .with_backoff(
                seconds(py, "backoff_min", backoff_min)?,
                seconds(py, "backoff_max", backoff_max)?,
            );
        config.username = username;
        config.password = password;
        config.tls = TlsConfig {
            ca: pem_source("tls_ca", tls_ca)?,
            cert: pem_source("tls_cert", tls_cert)?,
            key: pem_source("tls_key", tls_key)?,
            server_name: tls_server_name,
        };
        ensure_dispatcher(py)?;
        let handle = registry::runtime::handle().map_err(|e| errors::to_py_err(py, e))?;
        let core =
            registry::Registry::new_in(config, handle).map_err(|e| errors::to_py_err(py, e))?;
        Ok(PyRegistry {
            inner: ForkBound::new(core),
            token: dispatch::registry_token(),
        })
    }

    /// The endpoints as given.
    #[getter]
    fn endpoints(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(self.core(py)?.config().endpoints.clone())
    }

    /// The prefix of every key.
    #[getter]
    fn base_path(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.core(py)?.config().base_path.clone())
    }

    /// The etcd endpoint (a URL) that calls and keep-alives go to now; it changes when that
    /// member fails or stops answering and another one takes over. Does not reach etcd.
    #[getter]
    fn active_endpoint(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.core(py)?.active_endpoint())
    }

    /// Whether `close()` was called (always true in a child process forked after creation).
    #[getter]
    fn closed(&self) -> bool {
        !self.inner.is_home() || self.inner_closed()
    }

    /// Registers `node` under `service` and returns at once; see `Registration`.
    #[pyo3(signature = (service, node, info=None, ttl=10.0, on_status=None))]
    fn register(
        &self,
        py: Python<'_>,
        service: &str,
        node: &str,
        info: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = blocking::number)] ttl: f64,
        on_status: Option<Py<PyAny>>,
    ) -> PyResult<PyRegistration> {
        let core = self.core(py)?;
        let info = info_from_py(info)?;
        let on_status = callback_or_none(py, "on_status", on_status)?;
        let ttl = seconds(py, "ttl", ttl)?;
        let node = Node::new(node, info);
        let reg = match on_status {
            Some(callback) => {
                // Its events go to the process's callback stream, pulled by the callback thread.
                let context = Arc::new(StatusContext {
                    service: service.to_owned(),
                    node: node.name.clone(),
                });
                let callbacks = dispatch::callbacks();
                let creating = callbacks.creating(self.token);
                let reg = core
                    .register_routed(service, node, ttl, &callbacks.route())
                    .map_err(|e| errors::to_py_err(py, e))?;
                creating.done(reg.id(), Target::Status { callback, context }, None);
                reg
            }
            None => core
                .register(service, node, ttl)
                .map_err(|e| errors::to_py_err(py, e))?,
        };
        Ok(PyRegistration::new(reg))
    }

    /// The nodes of `service` now.
    fn list(&self, py: Python<'_>, service: &str) -> PyResult<Vec<PyNode>> {
        let core = self.core(py)?;
        blocking::call(py, core.list(service)).map(nodes)
    }

    /// The names of the services under the base path that have nodes, sorted (one keys-only
    /// request; a '/' given at registration reads as '-').
    fn services(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let core = self.core(py)?;
        blocking::call(py, core.services())
    }

    /// `services()` for asyncio.
    fn services_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.open(py)?.clone();
        asyncio::future_into_py(py, async move { Ok(Answer(core.services().await)) })
    }

    /// `list()` for asyncio.
    fn list_async<'py>(&self, py: Python<'py>, service: String) -> PyResult<Bound<'py, PyAny>> {
        let core = self.open(py)?.clone();
        asyncio::future_into_py(py, async move {
            Ok(Answer(core.list(&service).await.map(nodes)))
        })
    }

    /// Watches `service`: lists it, then follows every change. See `Watch`.
    #[pyo3(signature = (service, on_event=None))]
    fn watch(
        &self,
        py: Python<'_>,
        service: &str,
        on_event: Option<Py<PyAny>>,
    ) -> PyResult<PyWatch> {
        let core = self.core(py)?;
        let on_event = callback_or_none(py, "on_event", on_event)?;
        let has_callback = on_event.is_some();
        let watch = blocking::call(py, PyWatch::start(core, service, on_event, self.token))?;
        Ok(PyWatch::new(watch, has_callback))
    }

    /// `watch()` for asyncio.
    #[pyo3(signature = (service, on_event=None))]
    fn watch_async<'py>(
        &self,
        py: Python<'py>,
        service: String,
        on_event: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let core = self.open(py)?.clone();
        let on_event = callback_or_none(py, "on_event", on_event)?;
        let has_callback = on_event.is_some();
        let token = self.token;
        // A watch made for a future cancelled meanwhile is stopped, not left running unseen.
        let claim = PyWatch::claim_made(py)?;
        asyncio::future_into_py_claimed(py, Some(claim), move |_| async move {
            let watch = PyWatch::start(&core, &service, on_event, token)
                .await
                .map(|watch| PyWatch::new(watch, has_callback));
            Ok(Answer(watch))
        })
    }

    /// Unregisters everything (deleting the keys), stops the watches. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if !self.inner.is_home() {
            // A forked child must not unregister the parent's nodes; the copy is just dropped.
            return Ok(());
        }
        let core = self.core(py)?.clone();
        // Begun on the runtime, so that a Ctrl-C raises KeyboardInterrupt at once (not after
        // waiting for the "unregistered" events, which come once etcd answers or the timeout
        // passes), while the close goes on in the background.
        let result = blocking::wait(py, begin_close(core, self.token))?;
        // Every "unregistered" is queued now: return once the callbacks have had them, and no
        // callback of this registry's watches runs.
        dispatch::finish_registry(py, self.token)?;
        result.map_err(|e| errors::to_py_err(py, e))
    }

    /// `close()` for asyncio: resolves once every registration is unregistered and the
    /// callbacks have had their "unregistered".
    fn close_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if !self.inner.is_home() {
            // As close(): a forked child leaves the parent's nodes alone.
            return asyncio::future_into_py(py, async { Ok(None::<()>) });
        }
        let core = self.core(py)?.clone();
        let token = self.token;
        // From inside a callback, the "unregistered" events are delivered on this thread when
        // the result is taken, as close() does (waiting for them here would wait for ever).
        let nested = dispatch::on_callback_thread();
        let claim = if nested {
            Some(asyncio::finish_on_loop(py, move |py| {
                dispatch::finish_registry(py, token)
            })?)
        } else {
            None
        };
        asyncio::future_into_py_claimed(py, claim, move |_| {
            // Begun here, as close(): cancelling the awaiting task does not stop it. Only once
            // the awaitable is made: with no running event loop, nothing is closed.
            let begun = begin_close(core, token);
            async move {
                let result = begun.await;
                if nested {
                    dispatch::forget_registry_watches(token);
                } else {
                    dispatch::registry_finished(token).await;
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
        self.close(py)
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
        self.close_async(py)
    }

    fn __repr__(&self) -> String {
        let Some(core) = self.inner.here() else {
            return "Registry(<created before fork>)".into();
        };
        let config = core.config();
        format!(
            "Registry(endpoints={:?}, base_path={:?}, closed={})",
            config.endpoints,
            config.base_path,
            if self.inner_closed() { "True" } else { "False" }
        )
    }
}

/// Closes `core` on the runtime ([`blocking::begin`]), then forgets the watches' callbacks of
/// the registry `token` there too: a close whose caller stopped waiting (Ctrl-C, a cancelled
/// task) still frees them, with their core watches. Only after the core close, which marks the
/// registry closed first (see `Creating::watch_done`).
fn begin_close(
    core: registry::Registry,
    token: u64,
) -> impl Future<Output = registry::Result<()>> + Send + 'static {
    blocking::begin(async move {
        let result = core.close().await;
        dispatch::forget_registry_watches(token);
        result
    })
}

impl PyRegistry {
    fn inner_closed(&self) -> bool {
        self.inner.here().is_some_and(|core| core.is_closed())
    }
}
