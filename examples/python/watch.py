"""Watch a service: its live node set and every change, with a blocking iterator and with
`async for`.

    ETCD_ENDPOINTS=127.0.0.1:2379 python examples/python/watch.py           # a short demo
    ETCD_ENDPOINTS=127.0.0.1:2379 python examples/python/watch.py --follow  # until Ctrl-C
"""

from __future__ import annotations

import asyncio
import os
import sys

import etcd_registry

SERVICE = "watch-demo"


def show(event: etcd_registry.WatchEvent) -> None:
    who = event.node.name if event.node else "-"
    info = event.node.info if event.node else {}
    print(f"{event.kind:8} {who:8} {info} (revision {event.revision})", flush=True)


def demo(reg: etcd_registry.Registry) -> None:
    """Changes the service while watching it, and prints what the watch sees."""
    with reg.watch(SERVICE) as watch:
        print("live now:", [node.name for node in watch.nodes()])
        one = reg.register(SERVICE, "node-1", {"address": "10.0.0.1:80"})
        two = reg.register(SERVICE, "node-2", {"address": "10.0.0.2:80"})
        one.wait(timeout=5.0)
        two.wait(timeout=5.0)
        # Registering a node again replaces it: watchers see an update.
        two = reg.register(SERVICE, "node-2", {"address": "10.0.0.2:8080"})
        two.wait(timeout=5.0)
        one.unregister()
        for _ in range(4):  # added, added, updated, removed
            event = watch.next_event(timeout=10.0)
            if event is None:
                print("no event within 10 s", file=sys.stderr)
                break
            show(event)
        print("live now:", [(node.name, node.info["address"]) for node in watch.nodes()])
        two.unregister()


async def demo_async(endpoints: list[str]) -> None:
    """The same watch from asyncio: `async for` over the events. Nothing here blocks the event
    loop: the registry closes and the node unregisters awaited (`async with`)."""
    async with etcd_registry.Registry(endpoints) as reg:
        with await reg.watch_async(SERVICE) as watch:
            async with reg.register(SERVICE, "node-3", {"address": "10.0.0.3:80"}) as handle:
                await handle.wait_async(timeout=5.0)
                async for event in watch:
                    show(event)
                    if event.kind == "added":
                        await handle.unregister_async()
                    elif event.kind == "removed":
                        break
        print("listed from asyncio:", await reg.list_async(SERVICE))


def follow(reg: etcd_registry.Registry, service: str) -> None:
    """Prints every change of `service` until Ctrl-C."""
    with reg.watch(service) as watch:
        print("live now:", [node.name for node in watch.nodes()], flush=True)
        try:
            for event in watch:
                show(event)
        except KeyboardInterrupt:
            pass


def main() -> int:
    endpoints = os.environ.get("ETCD_ENDPOINTS", "127.0.0.1:2379").split(",")
    with etcd_registry.Registry(endpoints) as reg:
        if "--follow" in sys.argv[1:]:
            args = [a for a in sys.argv[1:] if a != "--follow"]
            follow(reg, args[0] if args else "api")
            return 0
        demo(reg)
    asyncio.run(demo_async(endpoints))
    return 0


if __name__ == "__main__":
    sys.exit(main())
