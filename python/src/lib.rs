//! `etcd_registry._native`: the Python module over the etcd-registry core. The Python package
//! `etcd_registry` (python/etcd_registry/) re-exports it with the exception classes and the
//! dispatch thread; `_native.pyi` there documents every name.

mod asyncio;
mod blocking;
mod dispatch;
mod errors;
mod fork;
mod logging;
mod registration;
mod registry;
mod types;
mod watch;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::install();
    m.add("__version__", ::registry::VERSION)?;
    // The core's defaults and limits, in the units Python takes (seconds).
    m.add("DEFAULT_BASE_PATH", ::registry::DEFAULT_BASE_PATH)?;
    m.add("DEFAULT_TIMEOUT", ::registry::DEFAULT_TIMEOUT.as_secs_f64())?;
    m.add(
        "DEFAULT_BACKOFF_MIN",
        ::registry::DEFAULT_BACKOFF_MIN.as_secs_f64(),
    )?;
    m.add(
        "DEFAULT_BACKOFF_MAX",
        ::registry::DEFAULT_BACKOFF_MAX.as_secs_f64(),
    )?;
    m.add("DEFAULT_TTL", ::registry::DEFAULT_TTL.as_secs_f64())?;
    m.add("MAX_TTL", ::registry::MAX_TTL_SECS as f64)?;
    m.add("_LOG", dispatch::LOG)?;
    m.add("_CALL", dispatch::CALL)?;
    m.add_class::<registry::PyRegistry>()?;
    m.add_class::<registration::PyRegistration>()?;
    m.add_class::<watch::PyWatch>()?;
    m.add_class::<types::PyNode>()?;
    m.add_class::<types::PyWatchEvent>()?;
    m.add_class::<types::PyStatusEvent>()?;
    m.add_function(wrap_pyfunction!(dispatch::_take, m)?)?;
    m.add_function(wrap_pyfunction!(dispatch::_complete, m)?)?;
    m.add_function(wrap_pyfunction!(dispatch::_dropped_events, m)?)?;
    m.add_function(wrap_pyfunction!(dispatch::_write_unraisable, m)?)?;
    m.add_function(wrap_pyfunction!(dispatch::_stop_dispatch, m)?)?;
    m.add_function(wrap_pyfunction!(logging::_set_log_level, m)?)?;
    Ok(())
}
