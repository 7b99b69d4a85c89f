"""Register a node, wait until it is registered, list the service, update its info in place,
unregister.

    ETCD_ENDPOINTS=127.0.0.1:2379 python examples/python/basic.py
"""

from __future__ import annotations

import os
import sys
import threading

import etcd_registry


def say(line: str) -> None:
    """One write per line: the status callback prints from the library's thread."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> int:
    endpoints = os.environ.get("ETCD_ENDPOINTS", "127.0.0.1:2379").split(",")
    updated = threading.Event()

    def on_status(event: etcd_registry.StatusEvent) -> None:
        say(f"status: {event}")
        if event.kind == "updated":
            updated.set()

    with etcd_registry.Registry(endpoints, base_path="/services", timeout=10.0) as reg:
        handle = reg.register(
            "api",
            "node-1",
            {"address": "10.0.0.5:8080", "version": "1.4.2"},
            ttl=30.0,
            on_status=on_status,
        )
        try:
            if not handle.wait(timeout=5.0):
                print("not registered within 5 s; retrying in the background", file=sys.stderr)
                return 1
        except etcd_registry.RegistryError as exc:
            print(f"registration failed: {exc}", file=sys.stderr)
            return 1
        say(f"state: {handle.state}")
        for node in reg.list("api"):
            say(f"found: {node.name} {node.info}")
        # New info in place: one put on the same lease; "updated" comes once it is in etcd.
        handle.update({"address": "10.0.0.5:8080", "version": "1.4.3"})
        if not updated.wait(timeout=5.0):
            print("update not in etcd within 5 s; it is put when etcd answers", file=sys.stderr)
            return 1
        for node in reg.list("api"):
            say(f"after update: {node.name} {node.info}")
        handle.unregister()
        say(f"state: {handle.state}")
        say(f"after unregister: {[node.name for node in reg.list('api')]}")
    # Leaving the `with` block closed the registry: everything it registered is gone.
    return 0


if __name__ == "__main__":
    sys.exit(main())
