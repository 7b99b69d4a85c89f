"""asyncio: awaitable list, wait and watch, and `async for` over a watch."""

from __future__ import annotations

import asyncio
import socket

import pytest

from etcd_registry import AuthError, ClosedError, Node, Registry, RegistryTimeoutError, Watch

from conftest import DEADLINE, Etcd


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
