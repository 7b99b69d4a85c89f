"""Status callbacks and logs: order, the library thread, callbacks that raise or re-enter."""

from __future__ import annotations

import functools
import gc
import inspect
import logging
import subprocess
import threading
import weakref
from typing import Any, Coroutine, Optional

import pytest

from etcd_registry import (
    ClosedError,
    Registration,
    Registry,
    RegistryError,
    StatusEvent,
    WatchEvent,
    _native,
    dropped_events,
)

from conftest import DEADLINE, Etcd, Recorder, eventually, run_python


def test_status_events_in_order_on_the_library_thread(registry: Registry) -> None:
    recorder = Recorder()
    handle = registry.register("api", "n", on_status=recorder)
    recorder.wait_kind("registered")
    lease_id = handle.lease_id
    handle.unregister()
    recorder.wait_kind("unregistered")
    assert recorder.kinds() == ["registered", "unregistered"]
    registered: StatusEvent = recorder.items[0]
    assert (registered.service, registered.node_name) == ("api", "n")
    assert registered.lease_id is not None and registered.lease_id == lease_id
    assert registered.error is None and registered.attempt is None and registered.delay is None
    assert "registered" in str(registered) and "api/n" in str(registered)
    assert repr(registered).startswith("StatusEvent(kind='registered'")
    assert recorder.threads == {"etcd_registry-dispatch"}
    assert threading.current_thread().name not in recorder.threads


def test_a_raising_callback_is_logged_and_deliveries_go_on(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def explode(event: StatusEvent) -> None:
        seen.append(event.kind)
        raise ValueError(f"boom on {event.kind}")

    caplog.set_level(logging.ERROR, logger="etcd_registry")
    handle = registry.register("api", "n", on_status=explode)
    eventually("the registered event", lambda: "registered" in seen)
    handle.unregister()
    eventually("the unregistered event after the raise", lambda: "unregistered" in seen)
    # Other callbacks are still served too.
    recorder = Recorder()
    registry.register("api", "m", on_status=recorder)
    recorder.wait_kind("registered")

    def logged_failures() -> list[logging.LogRecord]:
        found = [r for r in caplog.records if r.name == "etcd_registry" and r.exc_info]
        return found if len(found) >= 2 else []

    failures = eventually("both failures to be logged", logged_failures)
    assert any("boom on registered" in str(r.exc_info[1]) for r in failures if r.exc_info)
    assert all(r.levelno == logging.ERROR for r in failures)


def test_async_def_callbacks_are_refused_with_a_type_error(registry: Registry) -> None:
    """Callbacks are called on the library's thread, where nothing awaits: an `async def` one
    would only make a coroutine that never runs. Refused when given, however it is wrapped."""

    async def on_change(event: Any) -> None:
        pass

    class Handler:
        async def on_change(self, event: Any) -> None:
            pass

        async def __call__(self, event: Any) -> None:
            pass

    for callback in (on_change, functools.partial(on_change), Handler().on_change, Handler()):
        message = "must be a plain function, not a coroutine function.*call_soon_threadsafe"
        with pytest.raises(TypeError, match="on_status " + message):
            registry.register("api", "n", on_status=callback)
        with pytest.raises(TypeError, match="on_event " + message):
            registry.watch("api", on_event=callback)
        with pytest.raises(TypeError, match="on_event " + message):
            registry.watch_async("api", on_event=callback)
    assert registry.list("api") == [], "nothing was registered by the refused calls"


def test_a_callback_returning_a_coroutine_is_reported_and_the_coroutine_closed(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain callback may still return a coroutine (a lambda calling an `async def`): it is
    closed unrun (no "never awaited" warning later) and an error says why."""
    ran: list[str] = []
    returned: list[Coroutine[Any, Any, None]] = []

    async def handle(event: StatusEvent) -> None:
        ran.append(event.kind)

    def on_status(event: StatusEvent) -> Coroutine[Any, Any, None]:
        returned.append(handle(event))
        return returned[-1]

    caplog.set_level(logging.ERROR, logger="etcd_registry")
    registry.register("api", "n", on_status=on_status)
    record = eventually(
        "the error logged",
        lambda: next((r for r in caplog.records if "returned an awaitable" in r.getMessage()), None),
    )
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert isinstance(record.exc_info[1], TypeError)
    assert "call_soon_threadsafe" in str(record.exc_info[1])
    assert inspect.getcoroutinestate(returned[0]) == inspect.CORO_CLOSED
    assert ran == []


@pytest.mark.parametrize("logging_configured", [False, True])
def test_a_raising_callback_is_printed_when_logging_is_not_configured(
    etcd: Etcd, logging_configured: bool
) -> None:
    """With no logging handler configured (the package logger has only its NullHandler), the
    logged failure would be invisible: it goes to `sys.unraisablehook` too, which prints it. With
    logging configured, only the log record is written."""
    code = """
import logging, sys, uuid
import etcd_registry

endpoints, configured = sys.argv[1].split(","), sys.argv[2] == "True"
if configured:
    logging.basicConfig(format="LOG %(levelname)s %(message)s")


def on_status(event):
    if event.kind == "registered":
        raise ValueError("boom from on_status")


base = "/unraisable-" + uuid.uuid4().hex[:8]
with etcd_registry.Registry(endpoints, base_path=base, timeout=10.0) as reg:
    assert reg.register("api", "n", on_status=on_status).wait(30.0)
# close() returned after "unregistered" was delivered, so after the raise was reported.
print("done", flush=True)
"""
    result = run_python(code, etcd.env_endpoints, str(logging_configured), timeout=DEADLINE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["done"]
    assert "ValueError: boom from on_status" in result.stderr
    assert ", in on_status\n" in result.stderr, "with the traceback"
    if logging_configured:
        assert "LOG ERROR etcd_registry callback" in result.stderr
        assert "Exception ignored" not in result.stderr
    else:
        assert "Exception ignored in: <function on_status" in result.stderr


def test_callbacks_may_call_back_into_the_library(registry: Registry) -> None:
    listed: list[list[str]] = []
    unregistered = threading.Event()
    delivered_by_unregister: list[bool] = []
    callback_done = threading.Event()
    handles: dict[str, Registration] = {}

    def on_status(event: StatusEvent) -> None:
        if event.kind == "registered":
            # Re-entrant calls from the callback thread: no deadlock.
            listed.append([n.name for n in registry.list("api")])
            with registry.watch("api") as w:
                listed.append([n.name for n in w.nodes()])
            handles["n"].unregister()
            # unregister() returns once the callback has had "unregistered": from inside the
            # callback, it was delivered there, nested.
            delivered_by_unregister.append(unregistered.is_set())
            other = registry.register("api", "other")
            other.wait(DEADLINE)
            other.unregister()
            callback_done.set()
        elif event.kind == "unregistered":
            unregistered.set()

    handles["n"] = registry.register("api", "n", on_status=on_status)
    assert callback_done.wait(DEADLINE), "the callback did not get through its calls"
    assert delivered_by_unregister == [True]
    assert listed == [["n"], ["n"]]
    assert handles["n"].state == "unregistered"
    assert registry.list("api") == []


def test_a_callback_may_close_the_registry(etcd: Etcd, base_path: str) -> None:
    reg = Registry(etcd.endpoints, base_path=base_path)
    errors: list[BaseException] = []

    def on_status(event: StatusEvent) -> None:
        if event.kind == "registered":
            reg.close()
            try:
                reg.list("api")
            except ClosedError as exc:
                errors.append(exc)

    reg.register("api", "n", on_status=on_status)
    eventually("the callback to close the registry", lambda: reg.closed and errors)
    assert etcd.get_prefix(f"{base_path}/") == {}


@pytest.mark.parametrize("call", ["unregister_async", "close_async"])
def test_an_awaited_unregister_or_close_inside_a_callback_returns(etcd: Etcd, call: str) -> None:
    """`asyncio.run(handle.unregister_async())` (or `close_async()`) inside a callback returns,
    with "unregistered" delivered before it does, nested, as unregister() and close() do there;
    the callback thread goes on serving callbacks. (A process of its own: a regression hangs
    its callback thread.)"""
    code = """
import asyncio, os, sys, threading, uuid
import etcd_registry

endpoints, call = sys.argv[1].split(","), sys.argv[2]
base = "/cb-async-" + uuid.uuid4().hex[:8]
reg = etcd_registry.Registry(endpoints, base_path=base, timeout=10.0)
seen = []
made = threading.Event()
returned = threading.Event()
handles = {}

def on_status(event):
    seen.append(event.kind)
    if event.kind == "registered":
        made.wait()
        awaited = handles["n"].unregister_async if call == "unregister_async" else reg.close_async
        async def main():
            return await awaited()
        seen.append("returned " + repr(asyncio.run(main())))
        returned.set()

handles["n"] = reg.register("api", "n", ttl=5.0, on_status=on_status)
made.set()
if not returned.wait(30.0):
    print("the callback never returned:", seen, flush=True)
    os._exit(1)
print(seen, flush=True)
served = threading.Event()
with etcd_registry.Registry(endpoints, base_path=base, timeout=10.0) as other:
    other.register("api", "m", ttl=5.0, on_status=lambda e: e.kind == "registered" and served.set())
    print("served" if served.wait(30.0) else "not served", flush=True)
    print([n.name for n in other.list("api")], flush=True)
reg.close()
"""
    result = run_python(code, etcd.env_endpoints, call, timeout=DEADLINE + 30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "['registered', 'unregistered', 'returned None']",
        "served",
        "['m']",
    ], result.stderr


def test_a_slow_callback_delays_only_deliveries(registry: Registry) -> None:
    release = threading.Event()
    recorder = Recorder()

    def slow(event: StatusEvent) -> None:
        release.wait(DEADLINE)
        recorder(event)

    handle = registry.register("api", "slow", on_status=slow)
    # The library itself goes on: the registration completes and calls answer.
    assert handle.wait(DEADLINE)
    assert [n.name for n in registry.list("api")] == ["slow"]
    release.set()
    recorder.wait_kind("registered")


def test_failed_then_retrying_events_carry_the_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host, port = s.getsockname()
    recorder = Recorder()
    with Registry([f"{host}:{port}"], timeout=1.0, backoff_min=0.1, backoff_max=0.2) as reg:
        reg.register("api", "n", on_status=recorder)
        recorder.wait_for("the second retry", lambda e: e.kind == "retrying" and e.attempt == 2)
    recorder.wait_kind("unregistered")
    kinds = recorder.kinds()
    assert kinds[0] == "failed"
    assert kinds[1:3] == ["retrying", "retrying"]
    assert kinds[-1] == "unregistered"
    failed, retrying = recorder.items[0], recorder.items[1]
    assert isinstance(failed.error, TimeoutError) and isinstance(failed.error, RegistryError)
    assert "connection refused" in str(failed.error), str(failed.error)
    assert retrying.attempt == 1 and retrying.delay is not None and 0 < retrying.delay <= 1.0
    assert isinstance(retrying.error, RegistryError)
    assert "retrying in" in str(retrying)


def a_retry_record(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    """The first record the core logs about retrying a registration to an unreachable etcd."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host, port = s.getsockname()
    caplog.set_level(logging.DEBUG, logger="etcd_registry")
    with Registry([f"{host}:{port}"], timeout=1.0, backoff_min=0.1, backoff_max=0.2) as reg:
        reg.register("api", "n")
        record: logging.LogRecord = eventually(
            "a retry warning from the core",
            lambda: next((r for r in caplog.records
                          if r.name == "etcd_registry" and "retrying" in r.getMessage()), None),
        )
    return record


def test_library_logs_reach_python_logging(caplog: pytest.LogCaptureFixture) -> None:
    record = a_retry_record(caplog)
    assert record.levelno in (logging.WARNING, logging.DEBUG)
    assert "attempt=" in record.getMessage()


def test_forwarded_log_records_carry_the_message_as_msg(caplog: pytest.LogCaptureFixture) -> None:
    """Error trackers (Sentry and the like) group records by `record.msg`: it is the message
    itself, not one "%s" shared by every record."""
    record = a_retry_record(caplog)
    assert record.msg == record.getMessage()
    assert "retrying" in record.msg and not record.args


def test_a_blocked_callback_loses_no_watch_event_and_still_gets_the_final_one(
    etcd: Etcd, base_path: str
) -> None:
    """The callbacks read the core's queue: while a callback blocks, more than
    EVENT_QUEUE_CAPACITY (1024) watch events arrive, nodes change and leave. Nothing is dropped:
    past the bound a node's unread events are merged in place, so the events delivered afterwards
    are one per node: "added" with its last info for a live one, "removed" for one that left.
    The final "unregistered" of a registration is still delivered, before unregister() returns."""
    present = [f"k{i:04}" for i in range(1150)]  # one "added" each when the watch starts
    later = [f"k{i:04}" for i in range(1150, 1200)]  # registered while the callback blocks
    changed = set(present[1::3]) | set(later[1::3])  # info changed while the callback blocks
    gone = set(present[2::3]) | set(later[2::3])  # unregistered while the callback blocks
    release = threading.Event()
    blocked = threading.Event()
    seen: list[tuple[str, str, dict[str, str]]] = []
    status = Recorder()

    def on_event(event: WatchEvent) -> None:
        if not blocked.is_set():
            blocked.set()
            release.wait(DEADLINE)
        assert event.node is not None
        seen.append((event.kind, event.node.name, event.node.info))

    # The nodes come from a second registry (no callbacks): etcd holds them, and events follow.
    feeder = Registry(etcd.endpoints, base_path=base_path, timeout=5.0)
    reg = Registry(etcd.endpoints, base_path=base_path, timeout=5.0)
    try:
        handles = {name: feeder.register("flood", name, {"v": "1"}, ttl=30.0) for name in present}
        for handle in handles.values():
            assert handle.wait(DEADLINE)
        mine = reg.register("slow", "n", on_status=status)
        status.wait_kind("registered")
        before = dropped_events()
        watch = reg.watch("flood", on_event=on_event)
        assert blocked.wait(DEADLINE), "the watch callback was not called"
        first = present[0]  # in the blocked callback: left alone
        handles.update({name: feeder.register("flood", name, {"v": "1"}, ttl=30.0) for name in later})
        for name in later:
            assert handles[name].wait(DEADLINE)
        for name in sorted(changed):
            handles[name].update({"v": "2"})
        for name in sorted(gone):
            handles[name].unregister()
        live = {name: ("2" if name in changed else "1") for name in handles if name not in gone}
        eventually("the watch to see every change",
                   lambda: {n.name: n.info["v"] for n in watch.nodes()} == live)

        # unregister() from another thread gets its "unregistered" delivered, which waits for
        # the blocked callback and every event queued before it.
        kinds_at_return: list[list[str]] = []

        def unregister() -> None:
            mine.unregister()
            kinds_at_return.append(status.kinds())

        unregistering = threading.Thread(target=unregister)
        assert f"{base_path}/slow/n" in etcd.get_prefix(base_path)
        unregistering.start()
        eventually("unregister() to delete its key",
                   lambda: f"{base_path}/slow/n" not in etcd.get_prefix(base_path))
        assert unregistering.is_alive(), "unregister() returned before its event was delivered"
        release.set()
        unregistering.join(DEADLINE)
        assert not unregistering.is_alive()
        assert kinds_at_return == [["registered", "unregistered"]]

        assert dropped_events() == before, "nothing dropped"
        assert seen[0][:2] == ("added", first)
        names = [name for _, name, _ in seen]
        assert len(names) == len(set(names)), "one event per node"
        assert {name: kind for kind, name, _ in seen} == {
            name: ("removed" if name in gone else "added") for name in handles}
        view: dict[str, str] = {}
        for kind, name, info in seen:
            if kind == "removed":
                view.pop(name, None)
            else:
                view[name] = info["v"]
        assert view == live
    finally:
        release.set()
        reg.close()
        feeder.close()


def test_unregister_and_close_return_after_unregistered_was_delivered(
    etcd: Etcd, base_path: str
) -> None:
    # From another thread: the callback has had "unregistered" when unregister() returns.
    reg = Registry(etcd.endpoints, base_path=base_path)
    recorder = Recorder()
    handle = reg.register("api", "a", on_status=recorder)
    recorder.wait_kind("registered")
    handle.unregister()
    assert recorder.kinds() == ["registered", "unregistered"]

    # From inside a callback: the events queued before are delivered nested, no deadlock.
    inside: list[list[str]] = []
    nested = Recorder()

    def on_status(event: StatusEvent) -> None:
        nested(event)
        if event.kind == "registered" and event.node_name == "b":
            handles["b"].unregister()
            inside.append(nested.kinds())
            reg.close()
            inside.append(nested.kinds())

    handles: dict[str, Registration] = {}
    handles["c"] = reg.register("api", "c", on_status=on_status)
    nested.wait_kind("registered")
    handles["b"] = reg.register("api", "b", on_status=on_status)
    eventually("the callback to close the registry", lambda: len(inside) == 2)
    assert inside[0][-1] == "unregistered" and inside[0].count("unregistered") == 1
    assert inside[1].count("unregistered") == 2, inside
    assert reg.closed


def test_a_registry_dropped_without_close_ends_its_registrations(
    etcd: Etcd, base_path: str
) -> None:
    # No reference left to the registry nor its registration: the node can never be
    # unregistered, nor kept alive. Its callback gets its last call, "unregistered", and is then
    # freed; the key goes with the lease at once rather than at its expiry.
    import gc
    import weakref

    class OnStatus:
        def __init__(self) -> None:
            self.kinds: list[str] = []

        def __call__(self, event: StatusEvent) -> None:
            self.kinds.append(event.kind)

    on_status = OnStatus()
    kinds = on_status.kinds
    reg = Registry(etcd.endpoints, base_path=base_path)
    handle = reg.register("api", "n", ttl=60, on_status=on_status)
    handle.wait(DEADLINE)
    freed = weakref.ref(on_status)
    del reg, handle, on_status
    gc.collect()
    eventually("the unregistered event", lambda: kinds == ["registered", "unregistered"])
    eventually("the callback freed", lambda: freed() is None)
    eventually("the key gone", lambda: etcd.get_prefix(base_path) == {})


def test_a_callback_holding_its_registry_weakly_lets_it_be_collected_and_closed(
    etcd: Etcd, base_path: str
) -> None:
    """A callback keeps what it refers to alive (the callback thread holds it): one that needs
    its registry holds a weak reference, so that the registry dropped without close() is still
    collected and closed, its node gone from etcd."""
    reg = Registry(etcd.endpoints, base_path=base_path)
    registry_ref = weakref.ref(reg)
    seen: list[tuple[str, Optional[list[str]]]] = []

    def on_status(event: StatusEvent) -> None:
        owner = registry_ref()
        names = [n.name for n in owner.list("api")] if owner is not None and not owner.closed else None
        seen.append((event.kind, names))

    handle = reg.register("api", "n", ttl=60, on_status=on_status)
    assert handle.wait(DEADLINE)
    with reg.watch("api") as watch:
        assert weakref.ref(watch)() is watch
    assert weakref.ref(handle)() is handle
    eventually("the registered event", lambda: seen)
    assert seen == [("registered", ["n"])]
    del reg, handle, watch
    gc.collect()
    eventually("the registry collected", lambda: registry_ref() is None)
    eventually("the unregistered event", lambda: seen[-1:] == [("unregistered", None)])
    eventually("the key gone", lambda: etcd.get_prefix(base_path) == {})


def test_no_watch_callback_runs_after_close_returns(registry: Registry) -> None:
    running = threading.Event()
    release = threading.Event()
    close_returned = threading.Event()
    calls: list[str] = []

    def on_event(event: WatchEvent) -> None:
        calls.append("start")
        running.set()
        calls.append("released" if release.wait(DEADLINE) else "never released")
        # close() must still be waiting for this call.
        calls.append("close had returned" if close_returned.is_set() else "end")

    watch = registry.watch("api", on_event=on_event)
    registry.register("api", "n")
    assert running.wait(DEADLINE)
    registry.register("api", "m")  # queued behind the running call

    def close() -> None:
        watch.close()
        close_returned.set()

    closer = threading.Thread(target=close)
    closer.start()
    # Release the callback once close() has begun: `closed` is set first thing in close().
    eventually("close() to begin", lambda: watch.closed)
    release.set()
    assert close_returned.wait(DEADLINE), "close() returned once the callback had"
    closer.join(DEADLINE)
    assert calls == ["start", "released", "end"], "close() returned while the callback was still running"
    # The event queued behind it is never delivered.
    registry.register("api", "later").wait(DEADLINE)
    assert registry.list("api") and calls == ["start", "released", "end"]


@pytest.mark.parametrize("closing", ["watch", "registry"])
def test_close_waits_for_a_callback_whose_unregister_runs_another_nested(
    etcd: Etcd, base_path: str, closing: str
) -> None:
    """A watch's on_event that calls unregister() runs the queued callbacks nested, on the
    callback thread: the other registration's on_status runs inside it. close() of that watch
    (or of its registry) from another thread meanwhile still returns only once on_event itself
    has returned, not once the nested callback has."""
    watched = Registry(etcd.endpoints, base_path=base_path)
    other = Registry(etcd.endpoints, base_path=base_path)
    calls: list[str] = []
    nested_running = threading.Event()
    release = threading.Event()
    close_returned = threading.Event()
    at_close: list[str] = []
    handles: dict[str, Registration] = {}

    def on_status(event: StatusEvent) -> None:
        if event.kind == "unregistered":
            calls.append("nested start")
            nested_running.set()
            calls.append("nested end" if release.wait(DEADLINE) else "nested never released")

    def on_event(event: WatchEvent) -> None:
        if event.kind == "added" and event.node is not None and event.node.name == "trigger":
            calls.append("on_event start")
            handles["b"].unregister()  # delivers "unregistered" here, nested
            calls.append("on_event end")

    try:
        handles["b"] = other.register("other", "b", on_status=on_status)
        assert handles["b"].wait(DEADLINE)
        watch = watched.watch("api", on_event=on_event)
        # Registered by the other registry: closing `watched` has nothing to unregister.
        other.register("api", "trigger")
        assert nested_running.wait(DEADLINE), "the nested callback never ran"

        def close() -> None:
            if closing == "watch":
                watch.close()
            else:
                watched.close()
            at_close.extend(calls)
            close_returned.set()

        closer = threading.Thread(target=close)
        closer.start()
        # Release the nested callback once close() has begun: `closed` is set first thing.
        closing_one = watch if closing == "watch" else watched
        eventually("close() to begin", lambda: closing_one.closed)
        release.set()
        assert close_returned.wait(DEADLINE), "close() never returned"
        closer.join(DEADLINE)
        assert at_close == ["on_event start", "nested start", "nested end", "on_event end"], (
            "close() returned while on_event was still running"
        )
    finally:
        release.set()
        watched.close()
        other.close()


def test_a_watch_closed_by_awaiting_close_async_inside_its_own_callback(etcd: Etcd) -> None:
    """`asyncio.run(watch.close_async())` inside the watch's own callback resolves at once (the
    callback running is the caller), as close() returns there, and no later event is delivered.
    (A process of its own: a regression hangs its callback thread.)"""
    code = """
import asyncio, os, sys, threading, uuid
import etcd_registry

endpoints = sys.argv[1].split(",")
base = "/watch-close-async-" + uuid.uuid4().hex[:8]
calls = []
made = threading.Event()
returned = threading.Event()
watches = {}


def on_event(event):
    calls.append(event.kind + " " + event.node.name)
    made.wait()

    async def main():
        return await watches["w"].close_async()

    calls.append("returned " + repr(asyncio.run(main())))
    returned.set()


with etcd_registry.Registry(endpoints, base_path=base, timeout=10.0) as reg:
    watches["w"] = reg.watch("api", on_event=on_event)
    made.set()
    assert reg.register("api", "a").wait(30.0)
    if not returned.wait(30.0):
        print("the callback never returned:", calls, flush=True)
        os._exit(1)
    assert reg.register("api", "b").wait(30.0)
    assert [n.name for n in reg.list("api")] == ["a", "b"]
    print(calls, watches["w"].closed, flush=True)
"""
    result = run_python(code, etcd.env_endpoints, timeout=DEADLINE + 30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["['added a', 'returned None'] True"], result.stderr


@pytest.mark.parametrize("closing", ["watch", "registry"])
def test_a_callback_freed_by_close_may_call_the_library_from_del(etcd: Etcd, closing: str) -> None:
    """Closing a watch (or its registry) frees its callback; a `__del__` of that callback that
    closes other watches and registries does so at once, never deadlocks."""
    code = """
import sys, uuid
import etcd_registry

endpoints, closing = sys.argv[1].split(","), sys.argv[2]
base = "/del-" + uuid.uuid4().hex[:8]
reg = etcd_registry.Registry(endpoints, base_path=base, timeout=10.0)
other = etcd_registry.Registry(endpoints, base_path=base, timeout=10.0)
other_watch = other.watch("api2", on_event=lambda event: None)


class Callback:
    def __call__(self, event):
        pass

    def __del__(self):
        other_watch.close()
        other.close()
        print("closed from __del__", flush=True)


watch = reg.watch("api", on_event=Callback())
if closing == "watch":
    watch.close()
else:
    reg.close()
print("returned", flush=True)
reg.close()
"""
    try:
        result = run_python(code, etcd.env_endpoints, closing, timeout=DEADLINE)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"deadlocked; output so far: {exc.stdout!r}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["closed from __del__", "returned"]


def test_a_failing_take_is_logged_and_deliveries_go_on(
    registry: Registry, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The callback thread survives an error in taking its work (it is logged)."""
    real_take = _native._take
    failed = threading.Event()

    def take_failing_once(timeout: float) -> Any:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("taking work failed")
        return real_take(timeout)

    caplog.set_level(logging.ERROR, logger="etcd_registry")
    monkeypatch.setattr(_native, "_take", take_failing_once)
    assert failed.wait(DEADLINE)
    recorder = Recorder()
    registry.register("api", "n", on_status=recorder)
    recorder.wait_kind("registered")
    assert any(r.exc_info and "taking work failed" in str(r.exc_info[1]) for r in caplog.records)
