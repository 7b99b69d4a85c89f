//! The one place where the core's error kinds become Python exceptions.
//!
//! The exception classes live in `etcd_registry/_errors.py`: Python expresses the double bases
//! (`InvalidArgument` is also a `ValueError`, the timeout error also the built-in
//! `TimeoutError` …) directly, and every class derives from `RegistryError`.

use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::IntoPyObjectExt;
use registry::{Error, ErrorKind};

const ERRORS_MODULE: &str = "etcd_registry._errors";

/// The exception class of each error kind, by name in [`ERRORS_MODULE`].
fn class_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "InvalidArgument",
        ErrorKind::Connection => "RegistryConnectionError",
        ErrorKind::Timeout => "RegistryTimeoutError",
        ErrorKind::Auth => "AuthError",
        ErrorKind::NotFound => "NotFoundError",
        ErrorKind::Closed => "ClosedError",
        ErrorKind::Internal => "InternalError",
        ErrorKind::Tls => "TlsError",
        ErrorKind::ResourceExhausted => "ResourceExhaustedError",
        // A kind added to the core later: still a RegistryError.
        _ => "RegistryError",
    }
}

/// Converts a core error to the matching Python exception.
pub(crate) fn to_py_err(py: Python<'_>, err: Error) -> PyErr {
    let class = py
        .import(ERRORS_MODULE)
        .and_then(|module| module.getattr(class_name(err.kind())))
        .and_then(|class| Ok(class.cast_into::<PyType>()?));
    match class {
        Ok(class) => PyErr::from_type(class, err.to_string()),
        // Only if the package is broken; say so rather than hiding the original error.
        Err(import_error) => import_error,
    }
}

/// A core error of kind `kind` raised by the binding itself (argument checks, fork guard).
pub(crate) fn error(py: Python<'_>, kind: ErrorKind, message: impl Into<String>) -> PyErr {
    to_py_err(py, Error::new(kind, message))
}

pub(crate) fn invalid(py: Python<'_>, message: impl Into<String>) -> PyErr {
    error(py, ErrorKind::InvalidArgument, message)
}

pub(crate) fn closed(py: Python<'_>, message: impl Into<String>) -> PyErr {
    error(py, ErrorKind::Closed, message)
}

/// The result of an async call, converted to Python (and its error mapped) when the asyncio
/// future is resolved, with the GIL held: runtime threads never touch Python objects.
pub(crate) struct Answer<T>(pub(crate) registry::Result<T>);

impl<'py, T> IntoPyObject<'py> for Answer<T>
where
    T: IntoPyObject<'py>,
{
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.0 {
            Ok(value) => value.into_bound_py_any(py),
            Err(err) => Err(to_py_err(py, err)),
        }
    }
}
