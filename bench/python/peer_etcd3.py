"""Native Python peer of the benchmark: the ``etcd3`` package (python-etcd3) used the way a
careful Python service would, speaking the driver protocol of bench/README.md
(``peer_etcd3.py ENDPOINTS BASE_PATH``). It is the layer ``py-etcd3``.

One long-lived client for the process (a second one reads in register_visible), one lease per
TTL refreshed by a thread every TTL/3, nodes put on it, listings as one ``get_prefix`` decoded
from JSON. After a lost lease the thread grants a new one and puts every key back (in
transactions of 128 puts), retrying every 100 ms. etcd3 talks to one endpoint: the first.
bench/run.sh installs etcd3 into a venv of its own (it needs protobuf<4).
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from typing import Any, Optional

import etcd3  # type: ignore[import-not-found]

WARMUP = 3
TIMEOUT = 30.0
TXN_OPS = 128


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def node_value(k: int) -> str:
    return json.dumps({"address": f"10.0.{k // 256 % 256}.{k % 256}:8080", "version": "1.0.0"})


def list_nodes(c: Any, prefix: str) -> list[tuple[str, dict[str, str]]]:
    nodes = []
    for value, meta in c.get_prefix(prefix):
        name = meta.key.decode()[len(prefix):]
        if not name or "/" in name:
            continue
        try:
            nodes.append((name, json.loads(value)))
        except ValueError:
            continue
    return nodes


class Holder:
    """The held nodes of one TTL on one lease, kept alive by a thread."""

    def __init__(self, client: Any, ttl: int) -> None:
        self.c = client
        self.ttl = ttl
        self.lock = threading.Lock()
        self.keys: list[tuple[str, str]] = []
        self.lease: Any = None
        self.ok = False
        self.stop = threading.Event()
        # The client may still be reconnecting after an earlier outage (its gRPC channel fails
        # calls fast meanwhile): retried every 100 ms as the recovery below does, for a while.
        deadline = time.monotonic() + 10
        while True:
            try:
                self.grant_and_put()
                break
            except (etcd3.exceptions.ConnectionFailedError, etcd3.exceptions.ConnectionTimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.thread = threading.Thread(target=self.keep, daemon=True)
        self.thread.start()

    def grant_and_put(self) -> None:
        lease = self.c.lease(self.ttl)
        with self.lock:
            keys = list(self.keys)
        for i in range(0, len(keys), TXN_OPS):
            ops = [self.c.transactions.put(k, v, lease=lease) for k, v in keys[i:i + TXN_OPS]]
            self.c.transaction(compare=[], success=ops, failure=[])
        with self.lock:
            self.lease = lease
            self.ok = True

    def keep(self) -> None:
        last = time.monotonic()
        while not self.stop.wait(self.ttl / 3):
            try:
                ttl = list(self.lease.refresh())[0].TTL
                lost = ttl <= 0
                last = time.monotonic()
            except Exception as e:  # noqa: BLE001 - any failure: retry until the TTL is gone
                print(f"[py-etcd3] keep-alive: {e!r}", file=sys.stderr)
                lost = time.monotonic() - last > self.ttl
            if not lost:
                continue
            with self.lock:
                self.ok = False
            while not self.stop.wait(0.1):
                try:
                    self.grant_and_put()
                    last = time.monotonic()
                    break
                except Exception as e:  # noqa: BLE001
                    print(f"[py-etcd3] recovery: {e!r}", file=sys.stderr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        try:
            self.lease.revoke()
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

    def connect(self) -> Any:
        return etcd3.client(host=self.host, port=self.port, timeout=5)

    def client(self) -> Any:
        if self.a is None:
            self.a = self.connect()
        return self.a

    def reader(self) -> Any:
        if self.b is None:
            self.b = self.connect()
        return self.b

    def prefix(self, service: str) -> str:
        return f"{self.base}/{service}/"

    def list(self, service: str, n: int) -> dict[str, Any]:
        c, prefix = self.client(), self.prefix(service)
        samples = []
        nodes = 0
        for i in range(WARMUP + n):
            t0 = time.perf_counter_ns()
            listing = list_nodes(c, prefix)
            took = time.perf_counter_ns() - t0
            nodes = len(listing)
            if i >= WARMUP:
                samples.append(took / 1000)
        return {"us": samples, "nodes": nodes}

    def register_visible(self, service: str, n: int, ttl: int, first: bool) -> dict[str, Any]:
        a, b, prefix = self.client(), self.reader(), self.prefix(service)
        samples = []
        holders: list[Any] = []
        stop = threading.Event()

        def refresher(lease: Any, period: float) -> None:
            while not stop.wait(period):
                try:
                    list(lease.refresh())
                except Exception:  # noqa: BLE001
                    pass

        lease: Any = None
        # One long-lived writer thread: the write runs beside the reader's polls.
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            for i in range(WARMUP + n):
                name = f"n{i}"
                fresh = first or lease is None
                failed: list[BaseException] = []

                # The reader polls from the register call on, beside the write, as it must for
                # every layer (their register returns before the key lands): a reader elsewhere
                # does not know when a writer's put has returned.
                def write(i: int = i, name: str = name, fresh: bool = fresh) -> None:
                    nonlocal lease
                    try:
                        if fresh:
                            lease = a.lease(ttl + 1 + i if first else ttl)
                            holders.append(lease)
                        a.put(prefix + name, node_value(i), lease=lease)
                    except BaseException as e:  # noqa: BLE001
                        failed.append(e)

                t0 = time.perf_counter_ns()
                writer = pool.submit(write)
                while not any(nm == name for nm, _ in list_nodes(b, prefix)):
                    if failed or time.perf_counter_ns() - t0 > TIMEOUT * 1e9:
                        break
                seen = time.perf_counter_ns() - t0
                writer.result()
                if failed:
                    raise failed[0]
                if seen > TIMEOUT * 1e9:
                    raise TimeoutError(f"{name} not visible within {TIMEOUT} s")
                if fresh:
                    t = threading.Thread(target=refresher, args=(lease, lease.ttl / 3), daemon=True)
                    t.start()
                if i >= WARMUP:
                    samples.append(seen / 1000)
        finally:
            pool.shutdown()
            stop.set()
            for lease in holders:
                try:
                    lease.revoke()
                except Exception:  # noqa: BLE001
                    pass
        return {"us": samples}

    def watch(self, service: str, n: int) -> dict[str, Any]:
        c, prefix = self.client(), self.prefix(service)
        samples: list[float] = []
        warm = False
        events, cancel = c.watch_prefix(prefix)
        try:
            emit({"ready": True})
            for ev in events:
                now = time.time_ns()
                if not isinstance(ev, etcd3.events.PutEvent):
                    continue
                try:
                    info = json.loads(ev.value)
                except ValueError:
                    continue
                if "warm" in info and not warm:
                    warm = True
                    emit({"warm": True})
                elif "t" in info:
                    samples.append((now - int(info["t"])) / 1000)
                    if len(samples) >= n:
                        break
        finally:
            cancel()
        return {"us": samples}

    def hold(self, service: str, n: int, ttl: int) -> dict[str, Any]:
        c, prefix = self.client(), self.prefix(service)
        t0 = time.perf_counter_ns()
        if self.holder is None:
            self.holder = Holder(c, ttl)
        elif self.holder.ttl != ttl:
            raise ValueError("one TTL per hold session")
        h = self.holder
        for _ in range(n):
            with h.lock:
                k, lease = len(h.keys), h.lease
            key, value = f"{prefix}n{k}", node_value(k)
            c.put(key, value, lease=lease)
            with h.lock:
                h.keys.append((key, value))
        ms = (time.perf_counter_ns() - t0) / 1e6
        return {"ms": ms, "registered": len(h.keys)}

    def state(self) -> dict[str, Any]:
        h = self.holder
        if h is None:
            return {"registered": 0, "total": 0}
        with h.lock:
            return {"registered": len(h.keys) if h.ok else 0, "total": len(h.keys)}

    def release(self) -> dict[str, Any]:
        if self.holder is not None:
            self.holder.close()
            self.holder = None
        return {"released": True}


def main() -> int:
    if len(sys.argv) == 2 and sys.argv[1] == "--version":
        from importlib.metadata import version

        print(f"etcd3 {version('etcd3')}, grpcio {version('grpcio')}, protobuf {version('protobuf')}")
        return 0
    if len(sys.argv) != 3:
        print("usage: peer_etcd3.py ENDPOINTS BASE_PATH", file=sys.stderr)
        return 2
    driver = Driver([e for e in sys.argv[1].split(",") if e], sys.argv[2])
    emit({"ready": True})
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd = words[0]
        if cmd == "quit":
            break
        try:
            if cmd == "list":
                emit(driver.list(words[1], int(words[2])))
            elif cmd == "register_visible":
                first = len(words) > 4 and words[4] == "first"
                emit(driver.register_visible(words[1], int(words[2]), int(words[3]), first))
            elif cmd == "watch":
                emit(driver.watch(words[1], int(words[2])))
            elif cmd == "hold":
                emit(driver.hold(words[1], int(words[2]), int(words[3])))
            elif cmd == "state":
                emit(driver.state())
            elif cmd == "release":
                emit(driver.release())
            else:
                emit({"error": f"unknown command {cmd!r}"})
        except Exception as e:  # noqa: BLE001 - every failure is a protocol answer
            emit({"error": f"{cmd}: {type(e).__name__}: {e}"})
    driver.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
