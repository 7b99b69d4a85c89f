"""asyncio: awaitable list, wait and watch, and `async for` over a watch."""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import sys
import threading
import weakref
from typing import Any, Optional

import pytest

from etcd_registry import AuthError, ClosedError, Node, Registry, RegistryTimeoutError, Watch, WatchEvent

from conftest import DEADLINE, Etcd, Output, Recorder, eventually, quick_registry


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, DEADLINE))


def test_list_and_wait_async(registry: Registry) -> None:
    async def main() -> None:
        handle = registry.register("api", "n", {"a": "b"})
        assert await handle.wait_async(timeout=DEADLINE) is True
        assert await handle.wait_async() is True
        assert await registry.list_async("api") == [Node("n", {"a": "b"})]
        # Many at once on one loop.
        results = await asyncio.gather(*(registry.list_async("api") for _ in range(20)))
        assert all(r == [Node("n", {"a": "b"})] for r in results)
        handle.unregister()
        assert await registry.list_async("api") == []

    run(main())


def test_async_for_over_a_watch(registry: Registry) -> None:
    async def main() -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        watch = await registry.watch_async("api")
        assert isinstance(watch, Watch)
        with watch:
            handle = registry.register("api", "n")
            async for event in watch:
                assert event.node is not None
                seen.append((event.kind, event.node.name))
                if event.kind == "added":
                    handle.unregister()
                else:
                    break
        return seen

    assert run(main()) == [("added", "n"), ("removed", "n")]


def test_async_for_ends_when_the_watch_is_closed(registry: Registry) -> None:
    async def main() -> int:
        watch = registry.watch("api")
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, watch.close)
        count = 0
        async for _ in watch:
            count += 1
        return count

    assert run(main()) == 0


def test_close_async_waits_for_a_callback_that_waits_for_the_loop(registry: Registry) -> None:
    """An on_event callback that hands its events to the loop and waits for it
    (`run_coroutine_threadsafe(...).result()`) may be running when the loop closes the watch:
    close() would block the loop that callback waits for, for ever. close_async() waits for the
    callback without blocking the loop, and resolves once it has returned."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # Full: the callback's put waits for this loop to take the first item.
        queue: asyncio.Queue[Optional[WatchEvent]] = asyncio.Queue(maxsize=1)
        queue.put_nowait(None)
        in_callback = threading.Event()

        def on_event(event: WatchEvent) -> None:
            in_callback.set()
            asyncio.run_coroutine_threadsafe(queue.put(event), loop).result(DEADLINE)

        watch = await registry.watch_async("api", on_event=on_event)
        registry.register("api", "n")
        assert await loop.run_in_executor(None, in_callback.wait, DEADLINE)
        closing = asyncio.ensure_future(watch.close_async())
        # A sleep, not a poll: it shows that close_async() does NOT resolve while the callback
        # runs (a broken close_async() would have resolved within these 0.2 s).
        await asyncio.sleep(0.2)
        assert watch.closed
        assert not closing.done(), "close_async() resolved while the watch's callback ran"
        assert await queue.get() is None  # room for the callback's event: it returns
        assert await asyncio.wait_for(closing, 5) is None  # type: ignore[func-returns-value]
        event = await asyncio.wait_for(queue.get(), 5)
        assert event is not None and event.kind == "added"
        await watch.close_async()  # idempotent

    run(main())


def test_async_with_a_watch_closes_it(registry: Registry) -> None:
    async def main() -> None:
        seen = Recorder()
        async with await registry.watch_async("api", on_event=seen) as watch:
            assert isinstance(watch, Watch) and not watch.closed
            registry.register("api", "n")
            await loop_until(lambda: seen.kinds() == ["added"])
        assert watch.closed
        async with await registry.watch_async("api") as iterated:
            event = await asyncio.wait_for(iterated.__anext__(), DEADLINE)
            assert event.kind == "added"
        assert iterated.closed

    run(main())


async def loop_until(check: Any) -> None:
    """Polls `check` on the loop (which stays free) until it is true."""
    while not check():
        await asyncio.sleep(0.02)


def test_async_errors_are_the_same_exceptions() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host, port = s.getsockname()

    async def main() -> None:
        with Registry([f"{host}:{port}"], timeout=1.0) as reg:
            with pytest.raises(RegistryTimeoutError, match="connection refused"):
                await reg.list_async("api")
            handle = reg.register("api", "n")
            with pytest.raises(TimeoutError):
                await handle.wait_async(timeout=DEADLINE)
        with pytest.raises(ClosedError):
            await reg.list_async("api")

    run(main())


def test_wait_async_times_out_with_false() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    host, port = silent.getsockname()
    reg = Registry([f"{host}:{port}"], timeout=60.0)

    async def main() -> bool:
        return await reg.register("api", "n").wait_async(timeout=0.2)

    try:
        assert run(main()) is False
    finally:
        # Refuse the pending connection, so that close() need not wait for the attempt.
        silent.close()
        reg.close()


def test_cancelling_an_awaited_call_leaves_the_registry_usable(registry: Registry) -> None:
    async def main() -> None:
        watch = registry.watch("api")
        pending = asyncio.ensure_future(watch.__anext__())
        await asyncio.sleep(0)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        registry.register("api", "n")
        event = await asyncio.wait_for(watch.__anext__(), DEADLINE)
        assert (event.kind, event.node.name if event.node else None) == ("added", "n")
        watch.close()

    run(main())


def test_auth_error_from_wait_async(etcd_factory) -> None:  # type: ignore[no-untyped-def]
    server: Etcd = etcd_factory()
    server.cmd("enable-auth", "svc", "pw")

    async def main() -> None:
        with Registry(server.endpoints, username="svc", password="nope", timeout=5.0) as reg:
            with pytest.raises(AuthError):
                await reg.register("api", "n").wait_async(timeout=DEADLINE)

    run(main())


def test_async_with_unregisters_and_closes(etcd: Etcd, base_path: str) -> None:
    """`async with` a registration unregisters it on exit, and `async with` a registry closes
    it: both awaited, the callbacks having had "unregistered" when they resolve."""
    first, second = Recorder(), Recorder()

    async def main() -> None:
        async with Registry(etcd.endpoints, base_path=base_path, timeout=5.0) as reg:
            async with reg.register("api", "a", {"k": "v"}, on_status=first) as handle:
                assert await handle.wait_async(timeout=DEADLINE) is True
                assert await reg.list_async("api") == [Node("a", {"k": "v"})]
            assert first.kinds()[-1] == "unregistered"
            assert handle.state == "unregistered"
            assert await reg.list_async("api") == []
            await handle.unregister_async()  # idempotent, as unregister()

            kept = reg.register("api", "b", on_status=second)
            assert await kept.wait_async(timeout=DEADLINE) is True
        assert reg.closed
        assert second.kinds()[-1] == "unregistered"
        assert etcd.get_prefix(base_path + "/") == {}

    run(main())


def test_unregister_async_waits_for_etcd_without_blocking_the_loop(fresh_etcd: Etcd) -> None:
    """While etcd is paused, an awaited unregistration leaves the event loop free; once etcd
    answers it resolves and the key is gone."""
    reg = quick_registry(fresh_etcd, timeout=60.0)

    async def main() -> None:
        handle = reg.register("api", "n")
        assert await handle.wait_async(timeout=DEADLINE) is True
        fresh_etcd.cmd("pause", 0)
        try:
            pending = asyncio.ensure_future(handle.unregister_async())
            # The loop runs this coroutine meanwhile: the wait below returns with the
            # unregistration still waiting for etcd.
            done, _ = await asyncio.wait({pending}, timeout=0.2)
            assert not done
        finally:
            fresh_etcd.cmd("resume", 0)
        await pending
        assert await reg.list_async("api") == []

    try:
        run(main())
    finally:
        reg.close()


def test_cancelling_unregister_async_does_not_stop_it(fresh_etcd: Etcd) -> None:
    """An unregistration begun by unregister_async() goes on when its awaiting is cancelled."""
    reg = quick_registry(fresh_etcd, timeout=60.0)

    async def main() -> None:
        # A TTL past the test's deadline: only the delete can make the key go.
        handle = reg.register("api", "n", ttl=3 * DEADLINE)
        assert await handle.wait_async(timeout=DEADLINE) is True
        fresh_etcd.cmd("pause", 0)
        try:
            pending = asyncio.ensure_future(handle.unregister_async())
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
        finally:
            fresh_etcd.cmd("resume", 0)

    try:
        run(main())
        eventually("the key deleted", lambda: reg.list("api") == [])
    finally:
        reg.close()


def test_a_cancelled_close_async_still_frees_the_watch_callbacks(fresh_etcd: Etcd) -> None:
    """A close begun by close_async() goes on when its awaiting is cancelled, and once it is done
    its watches' callbacks are forgotten: nothing keeps them (nor their watches) alive."""
    reg = quick_registry(fresh_etcd, timeout=60.0)

    def on_event(event: WatchEvent) -> None:
        pass

    watch = reg.watch("api", on_event=on_event)
    freed = weakref.ref(on_event)
    del watch, on_event

    async def main() -> None:
        # A registration to delete, with etcd paused: the close cannot end before the cancel.
        handle = reg.register("db", "n", ttl=3 * DEADLINE)
        assert await handle.wait_async(timeout=DEADLINE) is True
        fresh_etcd.cmd("pause", 0)
        try:
            pending = asyncio.ensure_future(reg.close_async())
            await asyncio.sleep(0)
            assert pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
        finally:
            fresh_etcd.cmd("resume", 0)

    def callback_freed() -> bool:
        gc.collect()
        # (`reg.closed` also lets the module drop what it let go of off the interpreter.)
        return reg.closed and freed() is None

    try:
        run(main())
        eventually("the callback freed", callback_freed)
    finally:
        reg.close()


def test_a_result_that_comes_after_its_loop_closed_is_not_printed(fresh_etcd: Etcd) -> None:
    """A call left pending when its event loop closes (a bare future nobody awaited) answers
    into nothing: no traceback on stderr, the library never prints."""
    code = f"""
import asyncio, sys
import etcd_registry

reg = etcd_registry.Registry({fresh_etcd.endpoints!r}, base_path="/s", timeout=60.0)
reg.list("api")
print("ready", flush=True)
sys.stdin.readline()  # etcd is paused now

async def leave_pending():
    reg.list_async("api")  # never awaited: pending when the loop closes

asyncio.run(leave_pending())
print("loop closed", flush=True)
sys.stdin.readline()  # etcd is back
reg.list("api")
# The asyncio thread hands results over in order: once this one is in, the first was handled.
async def flush():
    await reg.list_async("api")

asyncio.run(flush())
reg.close()
print("done", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    output = Output(proc)
    try:
        assert output.readline('"ready"') == "ready"
        fresh_etcd.cmd("pause", 0)
        try:
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert output.readline('"loop closed"') == "loop closed"
        finally:
            fresh_etcd.cmd("resume", 0)
        proc.stdin.write("\n")
        proc.stdin.close()
        out, err = output.finish(DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == ["done"]
    assert err == ""


def test_unregister_async_and_close_async_resolve_to_none(etcd: Etcd, base_path: str) -> None:
    async def main() -> None:
        reg = Registry(etcd.endpoints, base_path=base_path, timeout=5.0)
        handle = reg.register("api", "n")
        assert await handle.wait_async(timeout=DEADLINE) is True
        # (Typed as awaiting None: what is checked is that they are not `()` at run time.)
        assert await handle.unregister_async() is None  # type: ignore[func-returns-value]
        assert await reg.close_async() is None  # type: ignore[func-returns-value]

    run(main())


def test_unregister_async_and_close_async_without_a_running_loop_do_nothing(registry: Registry) -> None:
    """Called with no running event loop they raise RuntimeError, as asyncio's own calls do,
    and do not unregister or close anything behind that error."""
    handle = registry.register("api", "n")
    assert handle.wait(timeout=DEADLINE)
    with pytest.raises(RuntimeError):
        asyncio.run(handle.unregister_async())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        asyncio.run(registry.close_async())  # type: ignore[arg-type]
    watch = registry.watch("api", on_event=lambda event: None)
    with pytest.raises(RuntimeError):
        asyncio.run(watch.close_async())  # type: ignore[arg-type]
    assert not watch.closed
    watch.close()
    # An unregistration or close begun behind the error would have reached etcd by the time
    # these round trips return.
    for _ in range(3):
        assert [n.name for n in registry.list("api")] == ["n"]
    assert handle.state == "registered"
    assert not registry.closed

    async def main() -> None:
        assert await registry.list_async("api") == [Node("n", {})]

    run(main())


def test_cancelling_watch_async_after_the_watch_was_made_stops_it(registry: Registry) -> None:
    """A watch made for an awaited call that was cancelled meanwhile is stopped, not left
    running with nobody to close it."""
    assert registry.register("api", "first").wait(DEADLINE)
    cancelled, witness = Recorder(), Recorder()

    async def main() -> None:
        pending = asyncio.ensure_future(registry.watch_async("api", on_event=cancelled))
        # The loop is held (no await) until the watch is made: its callback has its first event.
        cancelled.wait_kind("added")
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        # Results are handed to a loop in order: once this one is in, the watch's was handled.
        await registry.list_async("api")

    run(main())
    with registry.watch("api", on_event=witness):
        registry.register("api", "second")
        witness.wait_for("second added", lambda e: e.kind == "added" and e.node.name == "second")
        registry.register("api", "third")
        witness.wait_for("third added", lambda e: e.kind == "added" and e.node.name == "third")
    assert [(e.kind, e.node.name) for e in cancelled.items] == [("added", "first")]


@pytest.mark.parametrize("then", ["anext", "next_event", "anext_at_once"])
def test_cancelling_anext_after_it_took_an_event_loses_nothing(registry: Registry, then: str) -> None:
    """`asyncio.wait_for(watch.__anext__(), t)` timing out just as an event came: the event is
    the next one read, by `__anext__` or `next_event`, not lost; also by an `__anext__` called
    at once, before the loop has seen the cancel through, with no later change to wake it."""
    handle = registry.register("api", "n", {"v": "0"})
    assert handle.wait(DEADLINE)

    async def main() -> WatchEvent:
        with registry.watch("api") as watch, registry.watch("api") as witness:
            assert (await asyncio.wait_for(watch.__anext__(), DEADLINE)).kind == "added"
            assert next_event(witness).kind == "added"
            pending = asyncio.ensure_future(watch.__anext__())
            handle.update({"v": "1"})
            # The loop is held (no await) while the update reaches the watches: the pending
            # call takes it, and is cancelled before its result can be handed over.
            assert next_event(witness).kind == "updated"
            registry.list("api")  # a round trip to etcd: the watch's task has its copy by now
            at_once = None
            if then == "anext_at_once":
                # Called before the loop sees the cancel through, and waiting by the time it
                # does (a round trip to etcd later).
                at_once = watch.__anext__()
                registry.list("api")
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            if at_once is not None:
                return await asyncio.wait_for(at_once, DEADLINE)
            handle.update({"v": "2"})
            if then == "anext":
                return await asyncio.wait_for(watch.__anext__(), DEADLINE)
            return next_event(watch)

    event = run(main())
    assert event.kind == "updated"
    assert event.node is not None and event.node.info == {"v": "1"}


def test_a_loop_closed_with_an_event_queued_for_it_loses_nothing(registry: Registry) -> None:
    """An event taken by `__anext__` whose result the loop accepted (queued) but never ran,
    because the loop closed first, is the next one read, not lost."""
    handle = registry.register("api", "n", {"v": "0"})
    assert handle.wait(DEADLINE)
    with registry.watch("api") as watch:
        assert next_event(watch).kind == "added"
        loop = asyncio.new_event_loop()

        async def begin() -> object:
            return watch.__anext__()  # not awaited: its result goes to this loop's queue

        pending = loop.run_until_complete(begin())
        handle.update({"v": "1"})
        # The loop no longer runs; the result waits in its queue (asyncio's own, private).
        eventually("the result queued on the stopped loop", lambda: len(loop._ready) > 0)  # type: ignore[attr-defined]
        loop.close()
        del pending
        event = next_event(watch)
    assert event.kind == "updated"
    assert event.node is not None and event.node.info == {"v": "1"}


def test_a_blocking_read_giving_up_a_cancelled_anext_wakes_the_read_waiting(registry: Registry) -> None:
    """An event taken by an `__anext__` cancelled before its loop ran again stays promised to
    it until a read gives the promise up: a blocking `next_event()` on that loop's thread does so
    at once, and a read already waiting on another thread then takes the event, rather than
    waiting for the loop (held by that blocking call) or for a later change."""
    handle = registry.register("api", "n", {"v": "0"})
    assert handle.wait(DEADLINE)

    class Loop(asyncio.SelectorEventLoop):
        """Tells when a result is handed to it from the library's thread."""

        def __init__(self) -> None:
            super().__init__()
            self.handed = threading.Event()

        def call_soon_threadsafe(  # type: ignore[override]
            self, callback: Any, *args: Any, context: Any = None
        ) -> asyncio.Handle:
            handle = super().call_soon_threadsafe(callback, *args, context=context)
            self.handed.set()
            return handle

    with registry.watch("api") as watch:
        assert next_event(watch).kind == "added"
        reading = threading.Event()
        other_read: list[Optional[WatchEvent]] = []

        def read_then_update() -> None:
            reading.set()
            # (Longer than the blocking read below waits: that one ends first if it hangs.)
            other_read.append(watch.next_event(timeout=2 * DEADLINE))
            handle.update({"v": "2"})

        reader = threading.Thread(target=read_then_update)

        async def main() -> Optional[WatchEvent]:
            pending = asyncio.ensure_future(watch.__anext__())  # waits for the next event
            registry.list("api")  # a round trip to etcd: the pending call is waiting by now
            reader.start()  # its read waits behind the pending call
            assert reading.wait(DEADLINE)
            handle.update({"v": "1"})
            # The loop is held (no await): the pending call takes the update and its result is
            # handed to the loop, which does not run it; then the call is cancelled.
            assert loop.handed.wait(DEADLINE)
            pending.cancel()
            # Gives the event up: the other read takes it, then makes the next change.
            event = watch.next_event(timeout=DEADLINE)
            with pytest.raises(asyncio.CancelledError):
                await pending
            return event

        loop = Loop()
        try:
            event = loop.run_until_complete(main())
        finally:
            loop.close()
        reader.join(DEADLINE)
    assert len(other_read) == 1 and other_read[0] is not None, "the waiting read got nothing"
    assert other_read[0].node is not None and other_read[0].node.info == {"v": "1"}
    assert event is not None, "next_event() waited for the loop it held"
    assert event.node is not None and event.node.info == {"v": "2"}


def next_event(watch: Watch) -> WatchEvent:
    event = watch.next_event(timeout=DEADLINE)
    assert event is not None, f"no event within {DEADLINE} s"
    return event
