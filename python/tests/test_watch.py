"""Watches: the live set, ordered events by iteration, callback and `next_event`, and their end."""

from __future__ import annotations

import threading
from typing import Optional

import pytest

from etcd_registry import ClosedError, Node, Registry, WatchEvent

from conftest import DEADLINE, Etcd, Recorder, eventually, run_python


def next_event(watch, what: str) -> WatchEvent:  # type: ignore[no-untyped-def]
    event = watch.next_event(timeout=DEADLINE)
    assert event is not None, f"no {what} event within {DEADLINE} s"
    return event


def test_snapshot_then_added_updated_removed_in_order(registry: Registry) -> None:
    first = registry.register("api", "a", {"v": "1"})
    assert first.wait(DEADLINE)
    with registry.watch("api") as watch:
        assert watch.service == "api"
        assert watch.nodes() == [Node("a", {"v": "1"})]
        # The nodes present at the start come first, as "added".
        event = next_event(watch, "initial")
        assert (event.kind, event.node) == ("added", Node("a", {"v": "1"}))

        second = registry.register("api", "b", {"v": "1"})
        event = next_event(watch, "added")
        assert (event.kind, event.node) == ("added", Node("b", {"v": "1"}))
        assert event.revision > 0

        updated = registry.register("api", "b", {"v": "2"})  # replaces the registration
        event = next_event(watch, "updated")
        assert (event.kind, event.node) == ("updated", Node("b", {"v": "2"}))

        first.unregister()
        event = next_event(watch, "removed")
        assert (event.kind, event.node) == ("removed", Node("a", {"v": "1"}))
        assert watch.nodes() == [Node("b", {"v": "2"})]
        assert watch.revision >= event.revision
        # Nothing else happened: a marker registered now is the very next event.
        marker = registry.register("api", "marker", {"m": "1"})
        event = next_event(watch, "marker")
        assert (event.kind, event.node) == ("added", Node("marker", {"m": "1"}))
        del second, updated, marker
    assert watch.closed
    assert watch.next_event(timeout=0) is None
    with pytest.raises(ClosedError):
        watch.nodes()


def test_iteration_blocks_until_an_event_and_ends_on_close(registry: Registry) -> None:
    watch = registry.watch("api")
    seen: list[WatchEvent] = []
    done = threading.Event()

    def consume() -> None:
        for event in watch:  # blocks with the GIL released
            seen.append(event)
        done.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    handle = registry.register("api", "n")
    eventually("the consumer to see the node", lambda: [e.kind for e in seen] == ["added"])
    handle.unregister()
    eventually("the removal", lambda: [e.kind for e in seen] == ["added", "removed"])
    watch.close()
    watch.close()  # idempotent
    assert done.wait(DEADLINE), "iteration ended after close()"
    consumer.join()
    assert list(watch) == []


def test_events_received_before_the_registry_closed_can_still_be_read(etcd: Etcd, base_path: str) -> None:
    reg = Registry(etcd.endpoints, base_path=base_path)
    watch, witness = reg.watch("api"), reg.watch("api")
    assert reg.register("api", "n").wait(DEADLINE)
    next_event(witness, "added")  # so `watch` has received it too
    reg.close()
    assert watch.closed
    events = list(watch)  # what it had received, then the end
    assert [(e.kind, e.node and e.node.name) for e in events][:1] == [("added", "n")]
    assert watch.next_event(timeout=0) is None


def test_registry_close_ends_iteration(etcd: Etcd, base_path: str) -> None:
    reg = Registry(etcd.endpoints, base_path=base_path)
    watch = reg.watch("api")
    done = threading.Event()

    def consume() -> None:
        list(watch)
        done.set()

    threading.Thread(target=consume).start()
    reg.close()
    assert done.wait(DEADLINE)
    assert watch.closed


def test_on_event_callback_gets_every_event_in_order_on_the_library_thread(registry: Registry) -> None:
    recorder = Recorder()
    watch = registry.watch("api", on_event=recorder)
    with pytest.raises(RuntimeError, match="on_event"):
        next(iter(watch))
    handles = [registry.register("api", f"n{i}") for i in range(5)]
    for handle in handles:
        # Registered first: a node unregistered before its key was put never appears.
        assert handle.wait(DEADLINE)
        handle.unregister()
    recorder.wait_for("ten events", lambda _: len(recorder.items) >= 10)
    kinds = [(e.kind, e.node.name) for e in recorder.items]
    for i in range(5):
        assert kinds.index(("added", f"n{i}")) < kinds.index(("removed", f"n{i}"))
    revisions = [e.revision for e in recorder.items]
    assert revisions == sorted(revisions), "events arrive in revision order"
    assert recorder.threads == {"etcd_registry-dispatch"}
    watch.close()
    registry.register("api", "after-close").wait(DEADLINE)
    # A later watch sees the new node, the closed one got nothing more.
    with registry.watch("api") as check:
        assert [n.name for n in check.nodes()] == ["after-close"]
    assert len(recorder.items) == 10


def test_a_callback_watch_lives_on_without_its_python_object(registry: Registry) -> None:
    recorder = Recorder()
    registry.watch("api", on_event=recorder)  # the Watch object is dropped at once
    registry.register("api", "n")
    recorder.wait_kind("added")


def test_two_services_do_not_mix(registry: Registry) -> None:
    with registry.watch("api") as api, registry.watch("api2") as api2:
        registry.register("api2", "x")
        event = next_event(api2, "added")
        assert event.node is not None and event.node.name == "x"
        # `api` got nothing of api2's: a marker registered on api afterwards is its first event.
        registry.register("api", "marker")
        event = next_event(api, "marker")
        assert (event.kind, event.node and event.node.name) == ("added", "marker")
        assert [n.name for n in api.nodes()] == ["marker"]
        # And api2 nothing of api's: the next event on api2 is its own marker.
        registry.register("api2", "marker2")
        event = next_event(api2, "marker2")
        assert (event.kind, event.node and event.node.name) == ("added", "marker2")


def test_watch_resumes_after_etcd_restarts(fresh_etcd: Etcd) -> None:
    with Registry(fresh_etcd.endpoints, timeout=2.0, backoff_min=0.2, backoff_max=1.0) as reg:
        with reg.watch("api") as watch:
            fresh_etcd.cmd("put", "/services/api/a", '{"v":"1"}')
            assert next_event(watch, "added").node == Node("a", {"v": "1"})
            fresh_etcd.cmd("kill", 0)
            fresh_etcd.cmd("start", 0)
            fresh_etcd.cmd("put", "/services/api/b", '{"v":"1"}')
            fresh_etcd.cmd("delete", "/services/api/a")
            event = next_event(watch, "added after the restart")
            assert (event.kind, event.node) == ("added", Node("b", {"v": "1"}))
            event = next_event(watch, "removed after the restart")
            assert (event.kind, event.node) == ("removed", Node("a", {"v": "1"}))
            assert watch.nodes() == [Node("b", {"v": "1"})]


def test_a_watch_follows_an_etcd_that_lost_its_data(fresh_etcd: Etcd) -> None:
    """etcd restarted on an empty data directory: its revision starts again at 1, below the
    watch's. The watch re-lists (the old nodes removed, then `resynced`) and follows the new store."""
    with Registry(fresh_etcd.endpoints, timeout=2.0, backoff_min=0.2, backoff_max=1.0) as reg:
        with reg.watch("api") as watch:
            for i in range(10):
                fresh_etcd.cmd("put", f"/services/api/old{i}", "{}")
            for _ in range(10):
                assert next_event(watch, "added").kind == "added"
            fresh_etcd.cmd("wipe", 0)
            seen: list[tuple[str, Optional[str]]] = []
            while not seen or seen[-1][0] != "resynced":
                event = next_event(watch, "resync")
                seen.append((event.kind, event.node.name if event.node else None))
            assert sorted(seen[:-1]) == [("removed", f"old{i}") for i in range(10)]
            assert watch.nodes() == []
            fresh_etcd.cmd("put", "/services/api/new", '{"v":"1"}')
            event = next_event(watch, "added to the new store")
            assert (event.kind, event.node) == ("added", Node("new", {"v": "1"}))


def test_a_watch_that_missed_compacted_history_resyncs(proxied_etcd: Etcd) -> None:
    with Registry(proxied_etcd.endpoints, timeout=2.0, backoff_min=0.2, backoff_max=1.0) as reg:
        proxied_etcd.cmd("put", "/services/api/stays", '{"v":"1"}')
        proxied_etcd.cmd("put", "/services/api/goes", '{"v":"1"}')
        with reg.watch("api") as watch:
            assert {e.node.name for e in (next_event(watch, "initial"), next_event(watch, "initial")) if e.node} == {
                "stays", "goes"}
            proxied_etcd.cmd("partition")
            # While the watch hears nothing, history changes and is compacted away.
            proxied_etcd.cmd("delete", "/services/api/goes")
            proxied_etcd.cmd("put", "/services/api/stays", '{"v":"2"}')
            proxied_etcd.cmd("put", "/services/api/new", '{"v":"1"}')
            proxied_etcd.cmd("compact")
            proxied_etcd.cmd("heal")
            seen: list[tuple[str, Optional[str]]] = []
            while not seen or seen[-1][0] != "resynced":
                event = next_event(watch, "resync")
                seen.append((event.kind, event.node.name if event.node else None))
            assert sorted(seen[:-1]) == [("added", "new"), ("removed", "goes"), ("updated", "stays")]
            assert seen[-1] == ("resynced", None)
            assert watch.nodes() == [Node("new", {"v": "1"}), Node("stays", {"v": "2"})]


def test_a_callback_watch_lives_on_without_its_registry_object(etcd: Etcd) -> None:
    """Dropping the Registry object (without close()) leaves its callback watches running: they
    end with close() or the registry's close()."""
    code = """
import gc, sys, threading, uuid
import etcd_registry

endpoints = sys.argv[1].split(",")
base = "/dropped-" + uuid.uuid4().hex[:8]
seen = threading.Event()


def on_event(event):
    if event.kind == "added":
        seen.set()


def start():
    reg = etcd_registry.Registry(endpoints, base_path=base, timeout=10.0)
    reg.watch("api", on_event=on_event)


start()  # neither the Registry nor the Watch object is kept
gc.collect()
with etcd_registry.Registry(endpoints, base_path=base, timeout=10.0) as other:
    assert other.register("api", "n").wait(10.0)
    print("seen" if seen.wait(float(sys.argv[2])) else "not seen", flush=True)
"""
    result = run_python(code, etcd.env_endpoints, str(DEADLINE), timeout=2 * DEADLINE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "seen"
