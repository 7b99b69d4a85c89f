"""Register a node, wait until it is registered, list the service, unregister.

    ETCD_ENDPOINTS=127.0.0.1:2379 python examples/python/basic.py
"""

from __future__ import annotations

import os
import sys

import etcd_registry


def main() -> int:
    endpoints = os.environ.get("ETCD_ENDPOINTS", "127.0.0.1:2379").split(",")
    with etcd_registry.Registry(endpoints, base_path="/services", timeout=10.0) as reg:
        handle = reg.register(
            "api",
            "node-1",
            {"address": "10.0.0.5:8080", "version": "1.4.2"},
            ttl=30.0,
            on_status=lambda event: print("status:", event, flush=True),
        )
        try:
            if not handle.wait(timeout=5.0):
                print("not registered within 5 s; retrying in the background", file=sys.stderr)
                return 1
        except etcd_registry.RegistryError as exc:
            print(f"registration failed: {exc}", file=sys.stderr)
            return 1
        print("state:", handle.state)
        for node in reg.list("api"):
            print("found:", node.name, node.info)
        handle.unregister()
        print("state:", handle.state)
        print("after unregister:", [node.name for node in reg.list("api")])
    # Leaving the `with` block closed the registry: everything it registered is gone.
    return 0


if __name__ == "__main__":
    sys.exit(main())
