"""The library's own threads: one runs callbacks and forwards the core's logs to
``logging``, one resolves the asyncio futures of awaited calls.

The callback thread pulls status and watch events straight from the core's bounded event queue
(one per process; see ``python/src/dispatch.rs`` and ``core/src/events.rs``: past 1024 waiting
events a watch's events are merged per node, and the oldest non-final status event is dropped
and counted by ``dropped_events()``), one at a time, plus the log records the native module queued (a bounded lane). Runtime threads never
touch Python; these threads hold the GIL only while they handle an item. The callback thread
calls ``on_status`` and ``on_event`` callbacks in order and logs through the ``etcd_registry``
logger; an exception in a callback is logged (and printed through ``sys.unraisablehook`` when
logging is not configured) and the next delivery goes on, and a callback may
call back into the library (``unregister()``/``close()`` from a callback deliver what is queued
before them, nested). The asyncio thread only hands results to event loops
(``call_soon_threadsafe``), so a slow callback never holds up an ``await``.

They are daemon threads started with the first Registry of a process (again in a forked child)
and stopped at interpreter exit, before finalization, so that they never meet a finalizing
interpreter: by an ``atexit`` handler registered when ``etcd_registry`` is imported, so that the
exit handlers the program registers after that import run before it, with callbacks. Once it
has run, no thread is started any more (a Registry made in a later exit handler gets no
callbacks; Python 3.12+ refuses new threads at exit anyway).
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import threading
from typing import TYPE_CHECKING, Callable, Optional

from . import _native

if TYPE_CHECKING:
    # Only for annotations: importing asyncio costs a process about 8 MiB of memory, which a
    # program that never awaits a call should not pay.
    import asyncio

logger = logging.getLogger("etcd_registry")
# A library logs only where the application configures logging.
logger.addHandler(logging.NullHandler())

#: How often the thread wakes without work, to mirror the logger's level to the native side.
_IDLE_WAKE = 1.0
#: Python levels of the core's TRACE, DEBUG, INFO, WARN and ERROR.
_LEVELS = (5, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
_OFF = logging.CRITICAL + 10
#: How long interpreter exit waits for queued callbacks.
_EXIT_GRACE = 2.0

_lock = threading.Lock()
_threads: list[threading.Thread] = []
_threads_pid: Optional[int] = None
_level: Optional[int] = None
#: The process in which `_stop` has run (interpreter exit).
_stopped_pid: Optional[int] = None


def _sync_log_level() -> None:
    """Tells the native side the lowest level the logger handles now."""
    global _level
    level = next((lvl for lvl in _LEVELS if logger.isEnabledFor(lvl)), _OFF)
    if level != _level:
        _level = level
        _native._set_log_level(level)


def _deliver(item: tuple) -> None:
    """One item from ``_native._take``: ``(_LOG, level, message)`` or ``(_CALL, callback, event)``."""
    if item[0] == _native._LOG:
        # The message itself, with no arguments: error trackers (Sentry and the like) group
        # records by ``msg``, which a "%s" would make the same for every record.
        logger.log(item[1], item[2])
        return
    callback, event = item[1], item[2]
    try:
        result = callback(event)
    except BaseException as exc:  # noqa: BLE001 - a callback must never stop deliveries
        _report(callback, exc, "etcd_registry callback %r raised on %r", callback, event)
        return
    if result is not None and inspect.isawaitable(result):
        # `async def` callbacks are refused when given, but a plain one may still return an
        # awaitable (a lambda calling a coroutine function). Nothing here can await it: close a
        # coroutine, so that it is not reported again as "never awaited" when collected.
        close = getattr(result, "close", None)
        if callable(close):
            close()
        error = TypeError(
            f"etcd_registry callback {callback!r} returned an awaitable "
            f"({type(result).__name__}), which was not run: callbacks are called on the "
            "library's own thread, where nothing awaits; to hand events to asyncio, call "
            "loop.call_soon_threadsafe(...) from a plain function"
        )
        _report(callback, error, "etcd_registry callback %r returned an awaitable on %r",
                callback, event)


def _report(callback: object, exc: BaseException, msg: str, *args: object) -> None:
    """Logs a callback's failure at ERROR with its traceback and, when no logging handler
    would show the record (logging not configured: the package logger's ``NullHandler`` keeps
    ``logging.lastResort`` from printing it), also hands it to ``sys.unraisablehook``, so that
    it is printed to stderr by default rather than lost."""
    logger.error(msg, *args, exc_info=exc)
    if not _has_handler(logger):
        _native._write_unraisable(exc, callback)


def _has_handler(start: logging.Logger) -> bool:
    """Whether a record of ``start`` reaches a handler other than a ``NullHandler``, up the
    logger chain as ``logging`` walks it (levels aside: a record filtered out was the
    application's choice)."""
    current: Optional[logging.Logger] = start
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def _run() -> None:
    while True:
        try:
            batch = _native._take(_IDLE_WAKE)
        except Exception:  # noqa: BLE001 - the thread must go on serving callbacks and logs
            logger.exception("etcd_registry's callback thread failed to take its work")
            continue
        if batch is None:
            return
        for item in batch:
            try:
                _deliver(item)
            except BaseException:  # noqa: BLE001 - e.g. a logging handler that raises
                pass
            # Don't keep a delivered event alive until the next one.
            del item
        del batch
        _sync_log_level()


def _release(claim: Optional[Callable[[object, bool], object]], value: object) -> None:
    """Releases what an undelivered result holds (see ``_settle``)."""
    if claim is None:
        return
    try:
        claim(value, False)
    except Exception:  # noqa: BLE001 - never raised into the event loop
        logger.exception("releasing an abandoned etcd_registry result failed")


class _Held:
    """What an undelivered result holds, on its way to its loop: released when the call that
    carries it is dropped without running (a loop closed with the call still queued), so that
    nothing is lost (see ``_settle``)."""

    __slots__ = ("claim", "value")

    def __init__(self, claim: Callable[[object, bool], object], value: object) -> None:
        self.claim: Optional[Callable[[object, bool], object]] = claim
        self.value = value

    def take(self) -> Optional[Callable[[object, bool], object]]:
        claim, self.claim = self.claim, None
        return claim

    def __del__(self) -> None:
        try:
            claim = self.take()
            if claim is not None:
                _release(claim, self.value)
        except BaseException:  # noqa: BLE001 - never printed from a finalizer
            pass


def _settle(future: "asyncio.Future[object]", ok: bool, value: object,
            held: Optional[_Held] = None) -> None:
    """On the future's event loop: sets the result of an awaited call, unless the future is
    done already (cancelled). A result that holds something (a new watch, an event taken from
    a watch) comes with a claim in ``held``: ``claim(value, True)`` gives what the future is set
    to, ``claim(value, False)`` releases it when nobody takes it (the watch is stopped, the event
    kept for the next read)."""
    claim = held.take() if held is not None else None
    if future.done():
        _release(claim, value)
        return
    if claim is not None:
        try:
            value = claim(value, True)
        except BaseException as exc:  # noqa: BLE001 - it is the future's to raise
            ok, value = False, exc
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)  # type: ignore[arg-type]


def _resolve(loop: "asyncio.AbstractEventLoop", future: "asyncio.Future[object]", ok: bool,
             value: object, claim: Optional[Callable[[object, bool], object]] = None) -> None:
    """On the asyncio thread: hands an awaited call's result to its loop. A loop closed
    meanwhile (the future abandoned with it) gets nothing, and nothing is printed; what the
    result holds is released (see ``_settle``), also when the loop closes after it accepted the
    call and before running it."""
    held = _Held(claim, value) if claim is not None else None
    try:
        loop.call_soon_threadsafe(_settle, future, ok, value, held)
    except RuntimeError:
        logger.debug("an awaited etcd_registry call finished after its event loop closed")
        if held is not None:
            _release(held.take(), value)


def _settle_now(future: "asyncio.Future[object]", ok: bool, value: object,
                claim: Optional[Callable[[object, bool], object]] = None) -> None:
    """At interpreter exit, once the asyncio thread has stopped: settles an awaited call's
    future here, on its loop's thread (the caller's), as ``_resolve`` would have."""
    _settle(future, ok, value, _Held(claim, value) if claim is not None else None)


def _complete() -> None:
    while _native._complete(_IDLE_WAKE):
        pass


#: The threads, in the order `_threads` holds them.
_ROLES = (("etcd_registry-dispatch", _run), ("etcd_registry-asyncio", _complete))


def _running(pid: int) -> bool:
    return _threads_pid == pid and len(_threads) == len(_ROLES) and all(t.is_alive() for t in _threads)


def ensure_started() -> None:
    """Starts the threads in this process if they are not running, and mirrors the logger's
    level now, so that a level set just before a new Registry applies to it at once (the
    dispatch thread mirrors it only between batches and once a second). Does nothing once the
    threads were stopped at interpreter exit. When the interpreter refuses new threads because
    it is exiting (Python 3.12+, in an exit handler registered after the import, which runs
    before `_stop`), stops as at exit instead: there are no callbacks, blocking calls still
    work and awaited calls complete on their loop's thread."""
    global _threads, _threads_pid
    pid = os.getpid()
    if _stopped_pid == pid:
        return
    _sync_log_level()
    if _running(pid):
        return
    with _lock:
        if _stopped_pid == pid or _running(pid):
            return
        if _threads_pid != pid:
            _threads, _threads_pid = [], pid
        try:
            # Only those not running: one may have started before the other failed.
            for i, (name, target) in enumerate(_ROLES):
                if i < len(_threads) and _threads[i].is_alive():
                    continue
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                _threads[i:i + 1] = [thread]
            return
        except RuntimeError:
            # Any other failure (out of threads) is the caller's; a later Registry tries again.
            if not _shutting_down():
                raise
    # Unlocked: `_stop` takes the lock. It also stops the thread that did start, if one did.
    _stop()


def _shutting_down() -> bool:
    """Whether the interpreter is exiting: `threading` joins the program's threads before the
    exit handlers run, and says so (a Python that does not: taken as exiting)."""
    return bool(getattr(threading, "_SHUTTING_DOWN", True))


def _stop() -> None:
    """At interpreter exit: delivers the queued callbacks (e.g. the "unregistered" events of a
    registry closed just before), then ends the threads. A callback that takes longer than
    `_EXIT_GRACE` is left behind (a daemon thread) and later deliveries are dropped. The asyncio
    thread finishes the result it is handing over (up to `_EXIT_GRACE`), then stays out of the
    interpreter for good; so does a callback thread left behind, once its callback returns."""
    global _stopped_pid
    with _lock:
        if _stopped_pid == os.getpid():
            # Already (`ensure_started`, in an exit handler that ran before this one).
            return
        _stopped_pid = os.getpid()
    _native._set_log_level(_OFF)
    mine = _threads_pid == os.getpid() and threading.current_thread() not in _threads
    if mine and _threads:
        _native._stop_dispatch(drain=True)
        _threads[0].join(timeout=_EXIT_GRACE)
    _native._stop_dispatch(drain=False, grace=_EXIT_GRACE if mine else 0.0)


def _after_fork_in_child() -> None:
    """The threads do not exist in a forked child; the next Registry starts new ones."""
    global _lock, _threads, _threads_pid, _level, _stopped_pid
    _lock = threading.Lock()
    _threads = []
    _threads_pid = None
    _level = None
    _stopped_pid = None


atexit.register(_stop)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
