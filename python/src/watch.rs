//! `Watch`: a service's live node set and its changes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::exceptions::{PyRuntimeError, PyStopAsyncIteration};
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyTuple, PyType};
use pyo3::IntoPyObjectExt;

use registry::{Watch, WatchEvent};

use crate::asyncio;
use crate::blocking;
use crate::dispatch::{self, Target};
use crate::errors;
use crate::fork::ForkBound;
use crate::types::{PyNode, PyWatchEvent};

/// A watch on one service, returned by `Registry.watch()`.
#[pyclass(frozen, weakref, module = "etcd_registry._native", name = "Watch")]
pub(crate) struct PyWatch {
    inner: ForkBound<Inner>,
    /// Events go to a callback instead of the iterator.
    has_callback: bool,
    closed: AtomicBool,
}

struct Inner {
    watch: Arc<Watch>,
    reader: Arc<Reader>,
}

/// The iterator's side of a watch: events are taken from the core watch here, in order. An
/// event taken for an `__anext__` whose future is then cancelled is kept for the next read
/// (`__anext__`, `__next__`, `next_event`) rather than lost with the result.
#[derive(Default)]
struct Reader {
    /// Held while an event is taken from the core watch, so that they are kept in order.
    taking: tokio::sync::Mutex<()>,
    kept: Mutex<Kept>,
    /// Signalled when a kept event is given up by a cancelled `__anext__` (its `claim`, or a
    /// blocking read's `forget_cancelled`).
    released: tokio::sync::Notify,
}

#[derive(Default)]
struct Kept {
    /// Taken from the core watch and not yet read, oldest first.
    events: VecDeque<WatchEvent>,
    /// The `__anext__` calls promised one of them, by id, with their asyncio futures: each
    /// takes the oldest event when its future is resolved, or gives up its promise when the
    /// future was cancelled (see [`Reader::claim`]).
    promises: Vec<(u64, Py<PyAny>)>,
    next_id: u64,
}

impl Kept {
    /// A kept event no `__anext__` is promised.
    fn take_free(&mut self) -> Option<WatchEvent> {
        if self.events.len() > self.promises.len() {
            self.events.pop_front()
        } else {
            None
        }
    }
}

impl Reader {
    fn kept(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before a blocking read: gives up at once the promises of `__anext__` calls already
    /// cancelled (their loop would do it later, but may be the one this read blocks).
    fn forget_cancelled(&self, py: Python<'_>) {
        // Python is called with the lock released.
        let promised: Vec<(u64, Py<PyAny>)> = self
            .kept()
            .promises
            .iter()
            .map(|(id, future)| (*id, future.clone_ref(py)))
            .collect();
        let cancelled: Vec<u64> = promised
            .iter()
            .filter(|(_, future)| {
                future
                    .bind(py)
                    .call_method0("done")
                    .and_then(|done| done.is_truthy())
                    .unwrap_or(false)
            })
            .map(|(id, _)| *id)
            .collect();
        if cancelled.is_empty() {
            return;
        }
        let forgotten: Vec<(u64, Py<PyAny>)> = {
            let mut kept = self.kept();
            let promises = std::mem::take(&mut kept.promises);
            let (forgotten, live) = promises
                .into_iter()
                .partition(|(id, _)| cancelled.contains(id));
            kept.promises = live;
            forgotten
        };
        drop(forgotten);
        // Their events are free now: a read waiting for one (holding `taking`, which this read
        // waits for next) takes it, as when a cancelled `__anext__` gives it up (`claim`).
        self.released.notify_waiters();
    }

    /// The next event without waiting: `Err(())` once the watch has ended.
    fn try_next(&self, watch: &Watch) -> Result<Option<WatchEvent>, ()> {
        let Ok(_taking) = self.taking.try_lock() else {
            return Ok(None);
        };
        match self.kept().take_free() {
            Some(event) => Ok(Some(event)),
            None => watch.try_next(),
        }
    }

    /// The next event; `None` once the watch has ended.
    async fn next(&self, watch: &Watch) -> Option<WatchEvent> {
        let _taking = self.taking.lock().await;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(event) = self.kept().take_free() {
                return Some(event);
            }
            tokio::select! {
                event = watch.next() => return event,
                _ = released => {}
            }
        }
    }

    /// For `__anext__`, resolving `future`: waits for an event and promises it to that call
    /// (see [`Reader::claim`]); the promise's id, `None` once the watch has ended. Taking from
    /// the core watch is the last step, after which nothing is awaited: an aborted call takes
    /// nothing.
    /// A kept event given up meanwhile by a cancelled `__anext__` (whose promise counted when
    /// this call began) is taken as `next` takes it.
    async fn promise_next(&self, watch: &Watch, future: Py<PyAny>) -> Option<u64> {
        let _taking = self.taking.lock().await;
        let event = loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let has_free = {
                let kept = self.kept();
                kept.events.len() > kept.promises.len()
            };
            if has_free {
                break None;
            }
            tokio::select! {
                event = watch.next() => break Some(event?),
                _ = released => {}
            }
        };
        let mut kept = self.kept();
        kept.events.extend(event);
        let id = kept.next_id;
        kept.next_id += 1;
        kept.promises.push((id, future));
        Some(id)
    }

    /// Settles the promise `id`: the oldest kept event if `delivered`, else it stays for the
    /// next read.
    fn claim(&self, id: u64, delivered: bool) -> Option<WatchEvent> {
        let mut kept = self.kept();
        let promise = kept
            .promises
            .iter()
            .position(|(p, _)| *p == id)
            .map(|i| kept.promises.remove(i));
        let event = if delivered {
            kept.events.pop_front()
        } else {
            None
        };
        drop(kept);
        drop(promise);
        if !delivered {
            self.released.notify_waiters();
        }
        event
    }
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
        // Not kept when `core` was closed meanwhile (see `Creating::watch_done`).
        creating.watch_done(watch.id(), Target::Watch { callback }, watch.clone(), core);
        Ok(watch)
    }

    /// Wraps a core watch made by [`PyWatch::start`].
    pub(crate) fn new(watch: Arc<Watch>, has_callback: bool) -> Self {
        PyWatch {
            inner: ForkBound::new(Inner {
                watch,
                reader: Arc::default(),
            }),
            has_callback,
            closed: AtomicBool::new(false),
        }
    }

    fn core(&self, py: Python<'_>) -> PyResult<&Arc<Watch>> {
        Ok(&self.inner.get(py, "Watch")?.watch)
    }

    /// Stops the watch without waiting for a callback of it that is running (for a watch
    /// nobody got, whose `watch_async` was cancelled; `close()` and `close_async()` wait next).
    /// No callback of it starts from now on. The first time, for a watch with a callback, returns
    /// its id, to wait for a callback of it that may be running.
    fn discard(&self) -> Option<u64> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return None;
        }
        let inner = self.inner.here()?;
        inner.watch.cancel();
        if !self.has_callback {
            return None;
        }
        let id = inner.watch.id();
        dispatch::drop_watch(id);
        Some(id)
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
                        // Nobody has it, so none of its callbacks waits for its caller.
                        let _ = watch.get().discard();
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

    /// The watch to take the next event from and its reader, or `None` when it has ended.
    fn iterable(&self, py: Python<'_>) -> PyResult<Option<(Arc<Watch>, Arc<Reader>)>> {
        if self.has_callback {
            return Err(PyRuntimeError::new_err(
                "this watch delivers its events to on_event; it cannot be iterated",
            ));
        }
        let inner = self.inner.get(py, "Watch")?;
        if self.closed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(Some((inner.watch.clone(), inner.reader.clone())))
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
            Some(inner) => self.closed.load(Ordering::SeqCst) || inner.watch.is_finished(),
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
    fn next_event(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = blocking::optional_number)] timeout: Option<f64>,
    ) -> PyResult<Option<PyWatchEvent>> {
        let deadline = blocking::deadline(blocking::timeout(py, timeout)?);
        let Some((watch, reader)) = self.iterable(py)? else {
            return Ok(None);
        };
        reader.forget_cancelled(py);
        Ok(blocking::run(py, deadline, reader.next(&watch))?
            .flatten()
            .map(PyWatchEvent::from))
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyWatchEvent>> {
        let Some((watch, reader)) = self.iterable(py)? else {
            return Ok(None);
        };
        reader.forget_cancelled(py);
        // An event already waiting needs no trip through the runtime.
        match reader.try_next(&watch) {
            Ok(Some(event)) => return Ok(Some(event.into())),
            Err(()) => return Ok(None),
            Ok(None) => {}
        }
        Ok(blocking::run(py, None, reader.next(&watch))?
            .flatten()
            .map(PyWatchEvent::from))
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let Some((watch, reader)) = self.iterable(py)? else {
            return asyncio::future_into_py(py, async {
                Err::<(), _>(PyStopAsyncIteration::new_err(()))
            });
        };
        // The event is taken on the runtime and handed over only when the future takes it (on
        // its loop): cancelled by then, the event stays in `reader` for the next read.
        let claimer = reader.clone();
        let claim = PyCFunction::new_closure(
            py,
            None,
            None,
            move |args: &Bound<'_, PyTuple>, _kwargs| -> PyResult<Py<PyAny>> {
                let py = args.py();
                let id: u64 = args.get_item(0)?.extract()?;
                let delivered = args.get_item(1)?.is_truthy()?;
                match claimer.claim(id, delivered) {
                    Some(event) => PyWatchEvent::from(event).into_py_any(py),
                    None if delivered => Err(PyStopAsyncIteration::new_err(())),
                    None => Ok(py.None()),
                }
            },
        )?;
        asyncio::future_into_py_claimed(
            py,
            Some(claim.into_any().unbind()),
            move |future| async move {
                reader
                    .promise_next(&watch, future)
                    .await
                    .ok_or_else(|| PyStopAsyncIteration::new_err(()))
            },
        )
    }

    /// Stops the watch; no callback runs for it after this returns (unless called from inside
    /// that callback, which then returns before the next). Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        match self.discard() {
            Some(id) => dispatch::watch_returned(py, id),
            None => Ok(()),
        }
    }

    /// `close()` for asyncio: resolves once no callback of the watch runs, waiting on the
    /// library's runtime, not in the event loop's thread, so that a running callback that waits
    /// for the loop (`asyncio.run_coroutine_threadsafe(...).result()`) can finish; `close()`
    /// would block the loop it waits for.
    fn close_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        // Inside a callback, the callback running is the caller's: nothing to wait for, as for
        // close().
        let nested = dispatch::on_callback_thread();
        asyncio::future_into_py_claimed(py, None, move |_| {
            // Only once the awaitable is made: with no running event loop, nothing is closed.
            let stopped = self.discard().filter(|_| !nested);
            async move {
                if let Some(id) = stopped {
                    dispatch::watch_finished(id).await;
                }
                Ok(None::<()>)
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
        match self.inner.here() {
            Some(inner) => format!(
                "Watch(service={:?}, closed={})",
                inner.watch.service(),
                if self.closed() { "True" } else { "False" }
            ),
            None => "Watch(<created before fork>)".into(),
        }
    }
}
