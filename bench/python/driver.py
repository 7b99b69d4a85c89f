"""Benchmark driver of the Python module ``etcd_registry``, speaking the driver protocol of
bench/README.md: ``driver.py ENDPOINTS BASE_PATH``, commands on stdin, one JSON object per line
on stdout.

Uses the blocking API the way a Python service would: ``Registry.list``, ``register`` then
``Registration.wait``, and a ``Watch`` iterated with ``next_event``.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import etcd_registry

# Imported at the first command, not at start-up, so that the footprint of the bare process
# (threads, memory) is the interpreter's and what the module adds shows up as the layer's.
_lib: Any = None


def lib() -> Any:
    global _lib
    if _lib is None:
        _lib = importlib.import_module("etcd_registry")
    return _lib

WARMUP = 3
TIMEOUT = 30.0


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def node_info(k: int) -> dict[str, str]:
    return {"address": f"10.0.{k // 256 % 256}.{k % 256}:8080", "version": "1.0.0"}


class Driver:
    def __init__(self, endpoints: list[str], base: str) -> None:
        self.endpoints = endpoints
        self.base = base
        self.hold_registry: Optional[etcd_registry.Registry] = None
        self.regs: list[etcd_registry.Registration] = []

    def registry(self) -> etcd_registry.Registry:
        registry: etcd_registry.Registry = lib().Registry(self.endpoints, self.base)
        return registry

    def list(self, service: str, n: int) -> dict[str, Any]:
        samples = []
        nodes = 0
        with self.registry() as r:
            for i in range(WARMUP + n):
                t0 = time.perf_counter_ns()
                listing = r.list(service)
                took = time.perf_counter_ns() - t0
                nodes = len(listing)
                if i >= WARMUP:
                    samples.append(took / 1000)
        return {"us": samples, "nodes": nodes}

    def register_visible(self, service: str, n: int, ttl: int, first: bool) -> dict[str, Any]:
        """With first, every registration is the first of its TTL (TTL + 1 + i s)."""
        samples = []
        regs = []
        with self.registry() as a, self.registry() as b:
            for i in range(WARMUP + n):
                name = f"n{i}"
                t = ttl + 1 + i if first else ttl
                t0 = time.perf_counter_ns()
                reg = a.register(service, name, node_info(i), ttl=float(t))
                regs.append(reg)
                while not any(node.name == name for node in b.list(service)):
                    if time.perf_counter_ns() - t0 > TIMEOUT * 1e9:
                        raise TimeoutError(f"{name} not visible within {TIMEOUT} s")
                if i >= WARMUP:
                    samples.append((time.perf_counter_ns() - t0) / 1000)
                # As the floor and the peers do: the registration is complete (its keep-alive
                # running) before the next one begins, outside the timed span.
                if not reg.wait(TIMEOUT):
                    raise TimeoutError(f"{name} not registered within {TIMEOUT} s")
        return {"us": samples}

    def watch(self, service: str, n: int) -> dict[str, Any]:
        samples: list[float] = []
        warm = False
        with self.registry() as r, r.watch(service) as w:
            emit({"ready": True})
            while len(samples) < n:
                ev = w.next_event(timeout=TIMEOUT)
                now = time.time_ns()
                if ev is None:
                    raise TimeoutError(f"{len(samples)} of {n} events within {TIMEOUT} s")
                if ev.kind not in ("added", "updated") or ev.node is None:
                    continue
                info = ev.node.info
                if "warm" in info and not warm:
                    warm = True
                    emit({"warm": True})
                elif "t" in info:
                    samples.append((now - int(info["t"])) / 1000)
        return {"us": samples}

    def hold(self, service: str, n: int, ttl: int) -> dict[str, Any]:
        if self.hold_registry is None:
            self.hold_registry = self.registry()
        start = len(self.regs)
        t0 = time.perf_counter_ns()
        for k in range(start, start + n):
            self.regs.append(
                self.hold_registry.register(service, f"n{k}", node_info(k), ttl=float(ttl))
            )
        for reg in self.regs[start:]:
            if not reg.wait(timeout=120.0):
                raise TimeoutError(f"{reg.key} not registered within 120 s")
        ms = (time.perf_counter_ns() - t0) / 1e6
        return {"ms": ms, "registered": len(self.regs)}

    def state(self) -> dict[str, Any]:
        registered = sum(1 for r in self.regs if r.state == "registered")
        return {"registered": registered, "total": len(self.regs)}

    def release(self) -> dict[str, Any]:
        if self.hold_registry is not None:
            self.hold_registry.close()
            self.hold_registry = None
        self.regs = []
        return {"released": True}


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: driver.py ENDPOINTS BASE_PATH", file=sys.stderr)
        return 2
    endpoints = [e for e in sys.argv[1].split(",") if e]
    driver = Driver(endpoints, sys.argv[2])
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
