"""Many threads at once: every blocking call releases the GIL and the registry is thread-safe."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from etcd_registry import Registry

from conftest import DEADLINE, Etcd, eventually

THREADS = 50


def test_fifty_threads_register_and_list_at_once(registry: Registry, etcd: Etcd, base_path: str) -> None:
    start = threading.Barrier(THREADS)

    def worker(i: int) -> list[str]:
        start.wait(DEADLINE)
        handle = registry.register("api", f"node-{i:02}", {"worker": str(i)}, ttl=10.0)
        assert handle.wait(DEADLINE), f"node-{i:02} registered"
        names = []
        for _ in range(3):
            names = [n.name for n in registry.list("api")]
            assert f"node-{i:02}" in names
        return names

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))
    assert len(results) == THREADS
    expected = [f"node-{i:02}" for i in range(THREADS)]
    assert [n.name for n in registry.list("api")] == expected
    assert {n.name: n.info["worker"] for n in registry.list("api")} == {f"node-{i:02}": str(i) for i in range(THREADS)}
    assert len(etcd.get_prefix(f"{base_path}/api/")) == THREADS


def test_threads_wait_and_unregister_while_others_watch(registry: Registry) -> None:
    watch = registry.watch("api")
    handles = [registry.register("api", f"n{i}") for i in range(20)]

    def finish(i: int) -> None:
        assert handles[i].wait(DEADLINE)
        handles[i].unregister()

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(finish, range(20)))
    removed: set[str] = set()

    def all_removed() -> bool:
        while (event := watch.next_event(timeout=0.1)) is not None:
            if event.kind == "removed" and event.node is not None:
                removed.add(event.node.name)
        return len(removed) == 20

    eventually("every removal seen by the watch", all_removed)
    assert watch.nodes() == []
    watch.close()
