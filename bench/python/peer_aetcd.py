"""Native asyncio Python peer of the benchmark: the ``aetcd`` package used the way a careful
asyncio service would, speaking the driver protocol of bench/README.md
(``peer_aetcd.py ENDPOINTS BASE_PATH``). It is the layer ``py-aetcd``.

One long-lived client for the process (a second one reads in register_visible), one lease per
TTL refreshed by a task every TTL/3, nodes put on it, listings as one ``get_prefix`` decoded
from JSON. After a lost lease the task grants a new one and puts every key back (in
transactions of 128 puts), retrying every 100 ms. aetcd talks to one endpoint: the first.
bench/run.sh installs aetcd into a venv of its own.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, Optional

import aetcd  # type: ignore[import-not-found]

WARMUP = 3
TIMEOUT = 30.0
TXN_OPS = 128


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def node_value(k: int) -> bytes:
    return json.dumps(
        {"address": f"10.0.{k // 256 % 256}.{k % 256}:8080", "version": "1.0.0"}
    ).encode()


async def list_nodes(c: Any, prefix: bytes) -> list[tuple[str, dict[str, str]]]:
    nodes = []
    for kv in await c.get_prefix(prefix):
        name = kv.key[len(prefix):].decode()
        if not name or "/" in name:
            continue
        try:
            nodes.append((name, json.loads(kv.value)))
        except ValueError:
            continue
    return nodes


class Holder:
    """The held nodes of one TTL on one lease, kept alive by a task."""

    def __init__(self, client: Any, ttl: int) -> None:
        self.c = client
        self.ttl = ttl
        self.keys: list[tuple[bytes, bytes]] = []
        self.lease: Any = None
        self.ok = False
        self.task: Optional[asyncio.Task[None]] = None

    async def grant_and_put(self) -> None:
        lease = await self.c.lease(self.ttl)
        keys = list(self.keys)
        for i in range(0, len(keys), TXN_OPS):
            ops = [self.c.transactions.put(k, v, lease=lease) for k, v in keys[i:i + TXN_OPS]]
            await self.c.transaction(compare=[], success=ops, failure=[])
        self.lease = lease
        self.ok = True

    async def keep(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                reply = await asyncio.wait_for(self.lease.refresh(), 5)
                lost = reply is None or reply.TTL <= 0
                last = time.monotonic()
            except Exception as e:  # noqa: BLE001 - any failure: retry until the TTL is gone
                print(f"[py-aetcd] keep-alive: {e!r}", file=sys.stderr)
                lost = time.monotonic() - last > self.ttl
            if not lost:
                continue
            self.ok = False
            while True:
                await asyncio.sleep(0.1)
                try:
                    await asyncio.wait_for(self.grant_and_put(), 5)
                    last = time.monotonic()
                    break
                except Exception as e:  # noqa: BLE001
                    print(f"[py-aetcd] recovery: {e!r}", file=sys.stderr)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        try:
            await asyncio.wait_for(self.lease.revoke(), 5)
        except Exception:  # noqa: BLE001
            pass


class Driver:
    def __init__(self, endpoints: list[str], base: str) -> None:
        host, _, port = endpoints[0].rpartition(":")
        self.host, self.port = host, int(port)
        self.base = base.rstrip("/")
        self.a: Any = None
        self.b: Any = None
        self.holder: Optional[Holder] = None

    async def connect(self) -> Any:
        c = aetcd.Client(host=self.host, port=self.port, timeout=5)
        await c.connect()
        return c

    async def client(self) -> Any:
        if self.a is None:
            self.a = await self.connect()
        return self.a

    async def reader(self) -> Any:
        if self.b is None:
            self.b = await self.connect()
        return self.b

    def prefix(self, service: str) -> bytes:
        return f"{self.base}/{service}/".encode()

    async def list(self, service: str, n: int) -> dict[str, Any]:
        c, prefix = await self.client(), self.prefix(service)
        samples = []
        nodes = 0
        for i in range(WARMUP + n):
            t0 = time.perf_counter_ns()
            listing = await list_nodes(c, prefix)
            took = time.perf_counter_ns() - t0
            nodes = len(listing)
            if i >= WARMUP:
                samples.append(took / 1000)
        return {"us": samples, "nodes": nodes}

    async def register_visible(self, service: str, n: int, ttl: int, first: bool) -> dict[str, Any]:
        a, b, prefix = await self.client(), await self.reader(), self.prefix(service)
        samples = []
        leases: list[Any] = []
        tasks: list[asyncio.Task[None]] = []

        async def refresher(lease: Any) -> None:
            while True:
                await asyncio.sleep(lease.ttl / 3)
                try:
                    await lease.refresh()
                except Exception:  # noqa: BLE001
                    pass

        lease: Any = None
        try:
            for i in range(WARMUP + n):
                name = f"n{i}"
                fresh = first or lease is None

                # The reader polls from the register call on, beside the write, as it must for
                # every layer (their register returns before the key lands): a reader elsewhere
                # does not know when a writer's put has returned.
                async def write(i: int = i, name: str = name, fresh: bool = fresh) -> None:
                    nonlocal lease
                    if fresh:
                        lease = await a.lease(ttl + 1 + i if first else ttl)
                        leases.append(lease)
                    await a.put(prefix + name.encode(), node_value(i), lease=lease)

                t0 = time.perf_counter_ns()
                writer = asyncio.create_task(write())
                while not any(nm == name for nm, _ in await list_nodes(b, prefix)):
                    if writer.done() and writer.exception() is not None:
                        break
                    if time.perf_counter_ns() - t0 > TIMEOUT * 1e9:
                        writer.cancel()
                        raise TimeoutError(f"{name} not visible within {TIMEOUT} s")
                seen = time.perf_counter_ns() - t0
                await writer
                if fresh:
                    tasks.append(asyncio.create_task(refresher(lease)))
                if i >= WARMUP:
                    samples.append(seen / 1000)
        finally:
            for t in tasks:
                t.cancel()
            for lease in leases:
                try:
                    await lease.revoke()
                except Exception:  # noqa: BLE001
                    pass
        return {"us": samples}

    async def watch(self, service: str, n: int) -> dict[str, Any]:
        c, prefix = await self.client(), self.prefix(service)
        samples: list[float] = []
        warm = False
        w = await c.watch_prefix(prefix)
        try:
            emit({"ready": True})
            it = w.__aiter__()
            while len(samples) < n:
                ev = await asyncio.wait_for(it.__anext__(), TIMEOUT)
                now = time.time_ns()
                if ev.kind != aetcd.EventKind.PUT:
                    continue
                try:
                    info = json.loads(ev.kv.value)
                except ValueError:
                    continue
                if "warm" in info and not warm:
                    warm = True
                    emit({"warm": True})
                elif "t" in info:
                    samples.append((now - int(info["t"])) / 1000)
        finally:
            await w.cancel()
        return {"us": samples}

    async def hold(self, service: str, n: int, ttl: int) -> dict[str, Any]:
        c, prefix = await self.client(), self.prefix(service)
        t0 = time.perf_counter_ns()
        if self.holder is None:
            h = Holder(c, ttl)
            # The client may still be reconnecting after an earlier outage (its gRPC channel
            # fails calls fast meanwhile): retried every 100 ms as its recovery does, for a while.
            deadline = time.monotonic() + 10
            while True:
                try:
                    await h.grant_and_put()
                    break
                except (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            h.task = asyncio.create_task(h.keep())
            self.holder = h
        elif self.holder.ttl != ttl:
            raise ValueError("one TTL per hold session")
        h = self.holder
        for _ in range(n):
            k = len(h.keys)
            key, value = f"{prefix.decode()}n{k}".encode(), node_value(k)
            await c.put(key, value, lease=h.lease)
            h.keys.append((key, value))
        ms = (time.perf_counter_ns() - t0) / 1e6
        return {"ms": ms, "registered": len(h.keys)}

    def state(self) -> dict[str, Any]:
        h = self.holder
        if h is None:
            return {"registered": 0, "total": 0}
        return {"registered": len(h.keys) if h.ok else 0, "total": len(h.keys)}

    async def release(self) -> dict[str, Any]:
        if self.holder is not None:
            await self.holder.close()
            self.holder = None
        return {"released": True}


async def serve(driver: Driver) -> None:
    loop = asyncio.get_running_loop()
    emit({"ready": True})
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        words = line.split()
        if not words:
            continue
        cmd = words[0]
        if cmd == "quit":
            break
        try:
            if cmd == "list":
                emit(await driver.list(words[1], int(words[2])))
            elif cmd == "register_visible":
                first = len(words) > 4 and words[4] == "first"
                emit(await driver.register_visible(words[1], int(words[2]), int(words[3]), first))
            elif cmd == "watch":
                emit(await driver.watch(words[1], int(words[2])))
            elif cmd == "hold":
                emit(await driver.hold(words[1], int(words[2]), int(words[3])))
            elif cmd == "state":
                emit(driver.state())
            elif cmd == "release":
                emit(await driver.release())
            else:
                emit({"error": f"unknown command {cmd!r}"})
        except Exception as e:  # noqa: BLE001 - every failure is a protocol answer
            emit({"error": f"{cmd}: {type(e).__name__}: {e}"})
    await driver.release()


def main() -> int:
    if len(sys.argv) == 2 and sys.argv[1] == "--version":
        from importlib.metadata import version

        print(f"aetcd {version('aetcd')}, grpcio {version('grpcio')}, protobuf {version('protobuf')}")
        return 0
    if len(sys.argv) != 3:
        print("usage: peer_aetcd.py ENDPOINTS BASE_PATH", file=sys.stderr)
        return 2
    asyncio.run(serve(Driver([e for e in sys.argv[1].split(",") if e], sys.argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
