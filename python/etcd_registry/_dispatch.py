"""The library's own thread, which runs callbacks and forwards the core's logs to ``logging``.

The native module queues status events, watch events and log records from its runtime threads;
this thread takes them and, holding the GIL only while it does, calls ``on_status`` and
``on_event`` callbacks in order and logs through the ``etcd_registry`` logger. An exception in
a callback is logged and the next delivery goes on. A callback may call back into the library:
the runtime never waits for this thread.

It is a daemon thread started with the first Registry of a process (again in a forked child),
and stopped at interpreter exit before finalization, so it never meets a finalizing interpreter.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any, Optional

from . import _native

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
_thread: Optional[threading.Thread] = None
_thread_pid: Optional[int] = None
_level: Optional[int] = None


def _sync_log_level() -> None:
    """Tells the native side the lowest level the logger handles now."""
    global _level
    level = next((lvl for lvl in _LEVELS if logger.isEnabledFor(lvl)), _OFF)
    if level != _level:
        _level = level
        _native._set_log_level(level)


def _deliver(item: tuple[Any, ...]) -> None:
    if item[0] == _native._LOG:
        logger.log(item[1], "%s", item[2])
        return
    callback, event = item[1], item[2]
    try:
        callback(event)
    except BaseException:  # noqa: BLE001 - a callback must never stop deliveries
        logger.exception("etcd_registry callback %r raised on %r", callback, event)


def _run() -> None:
    while True:
        batch = _native._take(_IDLE_WAKE)
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


def ensure_started() -> None:
    """Starts the thread in this process if it is not running."""
    global _thread, _thread_pid
    with _lock:
        pid = os.getpid()
        if _thread is not None and _thread_pid == pid and _thread.is_alive():
            return
        _sync_log_level()
        thread = threading.Thread(target=_run, name="etcd_registry-dispatch", daemon=True)
        thread.start()
        _thread, _thread_pid = thread, pid


def _stop() -> None:
    """At interpreter exit: delivers what is queued (e.g. the "unregistered" events of a
    registry closed just before), then ends the thread. A callback that takes longer than
    `_EXIT_GRACE` is left behind (a daemon thread) and later deliveries are dropped."""
    _native._set_log_level(_OFF)
    thread = _thread
    if thread is None or _thread_pid != os.getpid() or thread is threading.current_thread():
        _native._stop_dispatch(drain=False)
        return
    _native._stop_dispatch(drain=True)
    thread.join(timeout=_EXIT_GRACE)
    _native._stop_dispatch(drain=False)


def _after_fork_in_child() -> None:
    """The thread does not exist in a forked child; the next Registry starts a new one."""
    global _lock, _thread, _thread_pid, _level
    _lock = threading.Lock()
    _thread = None
    _thread_pid = None
    _level = None


atexit.register(_stop)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
