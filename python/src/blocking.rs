//! Blocking calls from Python threads: the GIL is released while the core works, and the
//! thread comes back every [`SLICE`] to run Python's signal handlers, so Ctrl-C interrupts any
//! wait with `KeyboardInterrupt` (dropping the future, which the core's futures allow).

use std::future::Future;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyBool;

use crate::dispatch;
use crate::errors;

/// How long a blocking call stays away from Python at a time.
const SLICE: Duration = Duration::from_millis(100);

/// Runs `future` to completion on the core's global runtime, on this thread. With a deadline,
/// returns `None` once it has passed (the future is dropped).
pub(crate) fn run<F>(
    py: Python<'_>,
    deadline: Option<Instant>,
    future: F,
) -> PyResult<Option<F::Output>>
where
    F: Future + Send,
    F::Output: Send,
{
    let mut future = std::pin::pin!(future);
    loop {
        let slice = match deadline {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(SLICE),
            None => SLICE,
        };
        let step = py.detach(|| {
            // The timer must be made inside the runtime, hence the async block.
            let step = registry::runtime::block_on(async {
                tokio::time::timeout(slice, future.as_mut()).await
            });
            // A daemon thread while the interpreter exits (other threads were joined before the
            // exit handlers ran) waits there for the process to end.
            dispatch::stay_detached_if_exiting();
            step
        });
        match step.map_err(|e| errors::to_py_err(py, e))? {
            Ok(output) => return Ok(Some(output)),
            Err(_elapsed) => {
                py.check_signals()?;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
            }
        }
    }
}

/// [`run`] without a deadline: what `future` gives, or the exception a signal handler raised
/// meanwhile (Ctrl-C's `KeyboardInterrupt`).
pub(crate) fn wait<F>(py: Python<'_>, future: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    match run(py, None, future)? {
        Some(output) => Ok(output),
        None => unreachable!("no deadline was given"),
    }
}

/// Like [`run`] without a deadline, for the core's fallible calls.
pub(crate) fn call<F, T>(py: Python<'_>, future: F) -> PyResult<T>
where
    F: Future<Output = registry::Result<T>> + Send,
    T: Send,
{
    wait(py, future)?.map_err(|e| errors::to_py_err(py, e))
}

/// Starts `fut` on the global runtime now and returns what waits for its result: the operation
/// runs to its end whatever becomes of the waiting (a Ctrl-C that stops a blocking call, a
/// cancelled awaitable), for operations that must not be cut short, like an unregistration.
pub(crate) fn begin<F>(fut: F) -> impl Future<Output = registry::Result<()>> + Send + 'static
where
    F: Future<Output = registry::Result<()>> + Send + 'static,
{
    let begun = registry::runtime::handle().map(|runtime| runtime.spawn(fut));
    async move {
        match begun?.await {
            Ok(result) => result,
            Err(e) => Err(registry::Error::new(
                registry::ErrorKind::Internal,
                format!("the operation did not finish: {e}"),
            )),
        }
    }
}

/// Seconds from Python as a `Duration`, a conversion only: whether the value is acceptable
/// (zero, too large) is the core's rule, checked where the core takes it. Only values that
/// cannot become a `Duration` at all (NaN, infinite, negative, too large to represent) are
/// refused here (`what` names the argument in the error).
pub(crate) fn seconds(py: Python<'_>, what: &str, seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        let rule = if seconds > 0.0 {
            "is too large"
        } else {
            "must be a finite, non-negative number of seconds"
        };
        errors::invalid(py, format!("{what} {rule}, got {seconds:?}"))
    })
}

/// A number of seconds from Python (the `from_py_with` of every `float` parameter): a float, an
/// int, or what `float()` takes, but not a bool (`ttl=True` is a mistake, not one second). An int
/// too large for a float is infinite, as `float("inf")` is: too large a duration, or no limit
/// for a timeout.
pub(crate) fn number(obj: &Bound<'_, PyAny>) -> PyResult<f64> {
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(
            "expected a number of seconds (int or float), got bool",
        ));
    }
    match obj.extract::<f64>() {
        Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Ok(if obj.gt(0)? {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        }),
        other => Ok(other?),
    }
}

/// [`number`] for a parameter that may be `None`.
pub(crate) fn optional_number(obj: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
    if obj.is_none() {
        return Ok(None);
    }
    number(obj).map(Some)
}

/// A timeout from Python: `None` waits forever, `0` only checks. Too large to represent is
/// forever too.
pub(crate) fn timeout(py: Python<'_>, seconds: Option<f64>) -> PyResult<Option<Duration>> {
    let Some(seconds) = seconds else {
        return Ok(None);
    };
    if seconds.is_nan() || seconds < 0.0 {
        return Err(errors::invalid(
            py,
            format!("timeout must be None or a number of seconds >= 0, got {seconds}"),
        ));
    }
    Ok(Duration::try_from_secs_f64(seconds).ok())
}

/// The deadline `timeout` from now, if there is one that can be represented.
pub(crate) fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}
