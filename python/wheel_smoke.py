"""Smoke test of an installed etcd_registry wheel (python/wheel-test.sh runs it in a fresh venv).

    ETCD_ENDPOINTS=127.0.0.1:2379 python wheel_smoke.py EXPECTED_VERSION

Registers a node, lists it, watches it appear and disappear, against a real etcd. Exits 0 and
prints one line when all of it worked; raises otherwise. Standard library only.
"""

from __future__ import annotations

import os
import platform
import sys
import time

import etcd_registry


def next_event_for(watch: etcd_registry.Watch, kind: str, node: str) -> None:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        event = watch.next_event(timeout=deadline - time.monotonic())
        if event is not None and event.kind == kind and event.node is not None and event.node.name == node:
            return
    raise AssertionError(f"no {kind} event for {node} within 30 s")


def main() -> None:
    expected_version = sys.argv[1]
    assert etcd_registry.__version__ == expected_version, (etcd_registry.__version__, expected_version)
    assert etcd_registry._native.__file__.endswith(".abi3.so"), etcd_registry._native.__file__
    endpoints = os.environ["ETCD_ENDPOINTS"].split(",")
    service = "wheel-smoke-py" + "".join(platform.python_version_tuple()[:2])
    info = {"python": platform.python_version()}
    with etcd_registry.Registry(endpoints, base_path="/wheel-smoke", timeout=10.0) as registry:
        with registry.watch(service) as watch:
            registration = registry.register(service, "node-1", info, ttl=10.0)
            assert registration.wait(timeout=30.0), "not registered within 30 s"
            assert registry.list(service) == [etcd_registry.Node("node-1", info)], registry.list(service)
            next_event_for(watch, "added", "node-1")
            registration.unregister()
            next_event_for(watch, "removed", "node-1")
            assert registry.list(service) == []
        try:
            registry.register("", "node-1")
        except etcd_registry.InvalidArgument:
            pass
        else:
            raise AssertionError("an empty service name was accepted")
    print(f"wheel smoke test passed: etcd_registry {etcd_registry.__version__} on "
          f"CPython {platform.python_version()} ({sys.executable})")


if __name__ == "__main__":
    main()
