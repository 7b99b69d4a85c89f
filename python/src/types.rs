//! Value types: nodes, watch events, status events, and node info from Python.

use std::collections::BTreeMap;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping, PyString, PyType};

use registry::{Info, StatusEvent, WatchEvent, WatchEventKind};

use crate::errors;

/// Node info from Python: `None` or a mapping of `str` to `str`; anything else is a `TypeError`.
pub(crate) fn info_from_py(info: Option<&Bound<'_, PyAny>>) -> PyResult<Info> {
    let Some(info) = info.filter(|i| !i.is_none()) else {
        return Ok(Info::new());
    };
    let items = if let Ok(dict) = info.cast::<PyDict>() {
        dict.items()
    } else if let Ok(mapping) = info.cast::<PyMapping>() {
        mapping.items()?
    } else {
        return Err(PyTypeError::new_err(format!(
            "info must be a mapping of str to str, not {}",
            type_name(info)
        )));
    };
    let mut out = BTreeMap::new();
    for item in items.iter() {
        let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
        let Ok(key) = key.cast::<PyString>() else {
            return Err(PyTypeError::new_err(format!(
                "info keys must be str, got {}",
                type_name(&key)
            )));
        };
        let key = key.to_cow()?.into_owned();
        let Ok(value) = value.cast::<PyString>() else {
            return Err(PyTypeError::new_err(format!(
                "info value for {key:?} must be str, not {}",
                type_name(&value)
            )));
        };
        out.insert(key, value.to_cow()?.into_owned());
    }
    Ok(out)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// What Python's `repr()` gives for `s`: its quoting and escaping (which quote, what is
/// printable) are Python's rules, which Rust's debug quoting does not follow.
fn repr_str(py: Python<'_>, s: &str) -> PyResult<String> {
    Ok(PyString::new(py, s).repr()?.to_cow()?.into_owned())
}

fn repr_info(py: Python<'_>, info: &Info) -> PyResult<String> {
    let items = info
        .iter()
        .map(|(k, v)| Ok(format!("{}: {}", repr_str(py, k)?, repr_str(py, v)?)))
        .collect::<PyResult<Vec<String>>>()?;
    Ok(format!("{{{}}}", items.join(", ")))
}

/// What `__reduce__` gives pickle and `copy`: what to call to make the value again, and the
/// arguments.
type Reduced<'py, Args> = PyResult<(Bound<'py, PyAny>, Args)>;

/// A service node: its `name` and its `info` (a new `dict[str, str]` on every access).
#[pyclass(frozen, eq, hash, module = "etcd_registry._native", name = "Node")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct PyNode {
    #[pyo3(get)]
    name: String,
    info: Info,
}

impl From<registry::Node> for PyNode {
    fn from(node: registry::Node) -> Self {
        PyNode {
            name: node.name,
            info: node.info,
        }
    }
}

#[pymethods]
impl PyNode {
    #[new]
    #[pyo3(signature = (name, info=None))]
    fn new(name: String, info: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        Ok(PyNode {
            name,
            info: info_from_py(info)?,
        })
    }

    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.info.clone().into_pyobject(py)
    }

    /// Pickling (and `copy`): made again by the constructor, from the name and the info.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> Reduced<'py, (String, Bound<'py, PyDict>)> {
        let node = slf.get();
        Ok((
            slf.get_type().into_any(),
            (node.name.clone(), node.info(slf.py())?),
        ))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Node(name={}, info={})",
            repr_str(py, &self.name)?,
            repr_info(py, &self.info)?
        ))
    }
}

/// One change of a watched service.
#[pyclass(frozen, module = "etcd_registry._native", name = "WatchEvent")]
pub(crate) struct PyWatchEvent {
    /// `"added"`, `"updated"`, `"removed"` or `"resynced"`.
    #[pyo3(get)]
    kind: &'static str,
    /// The node (for `"removed"`, its last known info); `None` for `"resynced"`.
    #[pyo3(get)]
    node: Option<PyNode>,
    /// The etcd revision of the change.
    #[pyo3(get)]
    revision: i64,
}

impl From<WatchEvent> for PyWatchEvent {
    fn from(event: WatchEvent) -> Self {
        PyWatchEvent {
            kind: event.kind.as_str(),
            node: event.node.map(PyNode::from),
            revision: event.revision,
        }
    }
}

/// The `&'static str` the core names an event kind with, for an unpickled event: one of
/// `kinds`, which the core spelled.
fn known_kind(what: &str, kinds: &[&'static str], kind: &str) -> PyResult<&'static str> {
    kinds.iter().copied().find(|k| *k == kind).ok_or_else(|| {
        PyValueError::new_err(format!("{kind:?} is not a {what} kind (one of {kinds:?})"))
    })
}

fn watch_kinds() -> [&'static str; 4] {
    [
        WatchEventKind::Added,
        WatchEventKind::Updated,
        WatchEventKind::Removed,
        WatchEventKind::Resynced,
    ]
    .map(WatchEventKind::as_str)
}

fn status_kinds() -> [&'static str; 7] {
    let error = || registry::Error::new(registry::ErrorKind::Internal, "");
    [
        StatusEvent::Registered { lease_id: 0 },
        StatusEvent::Failed { error: error() },
        StatusEvent::KeepAliveLost { error: error() },
        StatusEvent::Retrying {
            attempt: 0,
            delay: Duration::ZERO,
            error: error(),
        },
        StatusEvent::Reregistered { lease_id: 0 },
        StatusEvent::Updated { lease_id: 0 },
        StatusEvent::Unregistered,
    ]
    .map(|event| event.kind_str())
}

#[pymethods]
impl PyWatchEvent {
    /// Unpickles an event (see `__reduce__`); events have no constructor of their own, being
    /// the library's to make.
    #[classmethod]
    fn _restore(
        _cls: &Bound<'_, PyType>,
        kind: &str,
        node: Option<Bound<'_, PyNode>>,
        revision: i64,
    ) -> PyResult<Self> {
        Ok(PyWatchEvent {
            kind: known_kind("watch event", &watch_kinds(), kind)?,
            node: node.map(|node| node.get().clone()),
            revision,
        })
    }

    /// Pickling (and `copy`), so that an event can be handed to another process (e.g. through
    /// a `multiprocessing.Queue`) or deep-copied.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> Reduced<'py, (&'static str, Option<PyNode>, i64)> {
        let event = slf.get();
        Ok((
            slf.get_type().getattr("_restore")?,
            (event.kind, event.node.clone(), event.revision),
        ))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let node = match &self.node {
            Some(node) => node.__repr__(py)?,
            None => "None".into(),
        };
        Ok(format!(
            "WatchEvent(kind={}, node={node}, revision={})",
            repr_str(py, self.kind)?,
            self.revision
        ))
    }
}

/// Which registration a status event belongs to.
pub(crate) struct StatusContext {
    pub(crate) service: String,
    pub(crate) node: String,
}

/// A change of a registration, as passed to `on_status`.
#[pyclass(frozen, module = "etcd_registry._native", name = "StatusEvent")]
pub(crate) struct PyStatusEvent {
    /// `"registered"`, `"failed"`, `"keepalive_lost"`, `"retrying"`, `"reregistered"`,
    /// `"updated"` or `"unregistered"`.
    #[pyo3(get)]
    kind: &'static str,
    /// The service of the registration.
    #[pyo3(get)]
    service: String,
    /// The node name of the registration.
    #[pyo3(get)]
    node_name: String,
    /// For `"retrying"`: 1 for the first retry after a failure, counting up.
    #[pyo3(get)]
    attempt: Option<u32>,
    /// For `"retrying"`: seconds until the attempt.
    #[pyo3(get)]
    delay: Option<f64>,
    /// For `"failed"`, `"keepalive_lost"` and `"retrying"`: why, as an exception instance.
    #[pyo3(get)]
    error: Option<Py<PyAny>>,
    /// For `"registered"`, `"reregistered"` and `"updated"`: the lease the key is attached to.
    #[pyo3(get)]
    lease_id: Option<i64>,
}

impl PyStatusEvent {
    pub(crate) fn new(py: Python<'_>, context: &StatusContext, event: StatusEvent) -> Self {
        let kind = event.kind_str();
        let mut out = PyStatusEvent {
            kind,
            service: context.service.clone(),
            node_name: context.node.clone(),
            attempt: None,
            delay: None,
            error: None,
            lease_id: None,
        };
        let exception = |e| errors::to_py_err(py, e).into_value(py).into_any();
        match event {
            StatusEvent::Registered { lease_id }
            | StatusEvent::Reregistered { lease_id }
            | StatusEvent::Updated { lease_id } => {
                out.lease_id = Some(lease_id);
            }
            StatusEvent::Failed { error } | StatusEvent::KeepAliveLost { error } => {
                out.error = Some(exception(error));
            }
            StatusEvent::Retrying {
                attempt,
                delay,
                error,
            } => {
                out.attempt = Some(attempt);
                out.delay = Some(delay.as_secs_f64());
                out.error = Some(exception(error));
            }
            StatusEvent::Unregistered => {}
        }
        out
    }
}

/// What a status event is pickled as: its fields, in the order `_restore` takes them.
type StatusState = (
    &'static str,
    String,
    String,
    Option<u32>,
    Option<f64>,
    Option<Py<PyAny>>,
    Option<i64>,
);

#[pymethods]
impl PyStatusEvent {
    /// Unpickles an event (see `__reduce__`), as `WatchEvent._restore`.
    #[classmethod]
    #[allow(clippy::too_many_arguments)]
    fn _restore(
        _cls: &Bound<'_, PyType>,
        kind: &str,
        service: String,
        node_name: String,
        attempt: Option<u32>,
        delay: Option<f64>,
        error: Option<Py<PyAny>>,
        lease_id: Option<i64>,
    ) -> PyResult<Self> {
        Ok(PyStatusEvent {
            kind: known_kind("status event", &status_kinds(), kind)?,
            service,
            node_name,
            attempt,
            delay,
            error,
            lease_id,
        })
    }

    /// Pickling (and `copy`), as for `WatchEvent`; the error goes with it (the exception
    /// classes pickle).
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> Reduced<'py, StatusState> {
        let py = slf.py();
        let event = slf.get();
        Ok((
            slf.get_type().getattr("_restore")?,
            (
                event.kind,
                event.service.clone(),
                event.node_name.clone(),
                event.attempt,
                event.delay,
                event.error.as_ref().map(|e| e.clone_ref(py)),
                event.lease_id,
            ),
        ))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let mut parts = vec![
            format!("kind={}", repr_str(py, self.kind)?),
            format!("service={}", repr_str(py, &self.service)?),
            format!("node_name={}", repr_str(py, &self.node_name)?),
        ];
        if let Some(attempt) = self.attempt {
            parts.push(format!("attempt={attempt}"));
        }
        if let Some(delay) = self.delay {
            parts.push(format!("delay={delay:.3}"));
        }
        if let Some(lease_id) = self.lease_id {
            parts.push(format!("lease_id={lease_id}"));
        }
        if let Some(error) = &self.error {
            let repr = error
                .bind(py)
                .repr()
                .map(|r| r.to_string())
                .unwrap_or_else(|_| "?".into());
            parts.push(format!("error={repr}"));
        }
        Ok(format!("StatusEvent({})", parts.join(", ")))
    }

    /// A line for people, e.g. `api/node-1: retrying in 1.0s (attempt 1): connection: …`.
    fn __str__(&self, py: Python<'_>) -> String {
        let who = format!("{}/{}", self.service, self.node_name);
        let error = self
            .error
            .as_ref()
            .and_then(|e| e.bind(py).str().ok())
            .map(|s| s.to_string())
            .unwrap_or_default();
        match self.kind {
            "registered" | "reregistered" | "updated" => match self.lease_id {
                Some(lease) => format!("{who}: {} (lease {lease:x})", self.kind),
                None => format!("{who}: {}", self.kind),
            },
            "retrying" => format!(
                "{who}: retrying in {:.1}s (attempt {}): {error}",
                self.delay.unwrap_or_default(),
                self.attempt.unwrap_or_default()
            ),
            "failed" | "keepalive_lost" => format!("{who}: {}: {error}", self.kind),
            other => format!("{who}: {other}"),
        }
    }
}
