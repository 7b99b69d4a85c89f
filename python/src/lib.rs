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
    m.add_function(wrap_pyfunction!(dispatch::_stop_dispatch, m)?)?;
    m.add_function(wrap_pyfunction!(logging::_set_log_level, m)?)?;
    Ok(())
}
