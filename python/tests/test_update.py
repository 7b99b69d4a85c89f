"""Updating a registration's info in place: one put on the same lease, one "updated" for
watchers, updates made while etcd is down applied when it returns, concurrent updates ending with
the last one, and bad input."""

from __future__ import annotations

import json
import threading

import pytest

import etcd_registry
from etcd_registry import ClosedError, InvalidArgument, NotFoundError

from conftest import DEADLINE, Etcd, Recorder, quick_registry

TTL = 10.0


def events_until_marker(reg: etcd_registry.Registry, watch: etcd_registry.Watch, service: str,
                        marker: str = "marker") -> list[etcd_registry.WatchEvent]:
    """Registers `marker` (same TTL, so its put follows every put asked for before it) and
    returns the watch events that came before its "added": every event the earlier calls caused,
    without sleeping."""
    reg.register(service, marker, ttl=TTL)
    seen: list[etcd_registry.WatchEvent] = []
    while True:
        event = watch.next_event(timeout=DEADLINE)
        assert event is not None, f"no marker within {DEADLINE}s; saw {seen!r}"
        if event.kind == "added" and event.node is not None and event.node.name == marker:
            return seen
        seen.append(event)


def stored(server: Etcd, key: str) -> object:
    value = server.cmd("get", key)
    return None if value is None else json.loads(value)


def test_update_puts_once_on_the_same_lease(etcd: Etcd, registry: etcd_registry.Registry,
                                            base_path: str) -> None:
    recorder = Recorder()
    handle = registry.register("api", "n1", {"v": "1"}, ttl=TTL, on_status=recorder)
    assert handle.wait(DEADLINE)
    lease = handle.lease_id
    with registry.watch("api") as watch:
        assert watch.next_event(DEADLINE).kind == "added"  # type: ignore[union-attr]
        handle.update({"v": "2", "zone": "b"})  # returns at once
        updated = recorder.wait_kind("updated")
        assert recorder.items[updated].lease_id == lease
        assert "updated" in str(recorder.items[updated])
        assert stored(etcd, f"{base_path}/api/n1") == {"v": "2", "zone": "b"}
        assert handle.lease_id == lease
        assert handle.state == "registered"
        assert handle.node == etcd_registry.Node("n1", {"v": "2", "zone": "b"})

        seen = events_until_marker(registry, watch, "api")
        assert [(e.kind, e.node) for e in seen] == [
            ("updated", etcd_registry.Node("n1", {"v": "2", "zone": "b"}))
        ], "exactly one event for one update"
        assert recorder.kinds().count("updated") == 1


def test_updates_while_etcd_is_down_land_when_it_returns(fresh_etcd: Etcd) -> None:
    with quick_registry(fresh_etcd) as reg, quick_registry(fresh_etcd) as other:
        recorder = Recorder()
        handle = reg.register("api", "n1", {"v": "1"}, ttl=TTL, on_status=recorder)
        assert handle.wait(DEADLINE)
        with other.watch("api") as watch:
            assert watch.next_event(DEADLINE).kind == "added"  # type: ignore[union-attr]
            fresh_etcd.cmd("stop", 0)
            lost = recorder.wait_kind("keepalive_lost")
            handle.update({"v": "2"})
            handle.update({"v": "3"})
            assert handle.node.info == {"v": "3"}, "kept while etcd is down"
            fresh_etcd.cmd("start", 0)

            back = recorder.wait_kind("reregistered", lost)
            updated = recorder.wait_kind("updated", back)
            assert updated == back + 1, recorder.kinds()
            assert stored(fresh_etcd, "/s/api/n1") == {"v": "3"}

            seen = [e for e in events_until_marker(reg, watch, "api") if e.node and e.node.name == "n1"]
            assert seen and seen[-1].node == etcd_registry.Node("n1", {"v": "3"}), seen
            assert all(e.node is not None and e.node.info != {"v": "2"} for e in seen), seen
            assert recorder.kinds().count("updated") == 1


def test_concurrent_updates_end_with_the_last_one(etcd: Etcd, registry: etcd_registry.Registry,
                                                  base_path: str) -> None:
    writers, each = 4, 25
    recorder = Recorder()
    handle = registry.register("api", "n1", {"w": "-"}, ttl=TTL, on_status=recorder)
    assert handle.wait(DEADLINE)
    with registry.watch("api") as watch:
        assert watch.next_event(DEADLINE).kind == "added"  # type: ignore[union-attr]

        def write(w: int) -> None:
            for seq in range(each):
                handle.update({"w": str(w), "seq": f"{seq:03}"})

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = handle.node.info
        assert final["seq"] == f"{each - 1:03}", final

        seen = events_until_marker(registry, watch, "api")
        assert seen and all(e.kind == "updated" for e in seen)
        assert seen[-1].node is not None and seen[-1].node.info == final
        assert stored(etcd, f"{base_path}/api/n1") == final
        for w in range(writers):
            seqs = [e.node.info["seq"] for e in seen if e.node is not None and e.node.info["w"] == str(w)]
            assert seqs == sorted(set(seqs)), f"writer {w} reordered: {seqs}"


def test_bad_updates(etcd: Etcd, registry: etcd_registry.Registry, base_path: str) -> None:
    handle = registry.register("api", "n1", {"v": "1"}, ttl=TTL)
    assert handle.wait(DEADLINE)
    with pytest.raises(TypeError):
        handle.update(["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        handle.update({"v": 2})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        handle.update({1: "x"})  # type: ignore[dict-item]
    with pytest.raises(InvalidArgument):
        handle.update({"": "empty key"})
    with pytest.raises(InvalidArgument, match="too large"):
        handle.update({"big": "x" * (2 << 20)})
    with pytest.raises(TypeError):
        handle.update()  # type: ignore[call-arg]
    assert handle.node.info == {"v": "1"}
    assert stored(etcd, f"{base_path}/api/n1") == {"v": "1"}

    handle.unregister()
    with pytest.raises(NotFoundError):
        handle.update({"v": "2"})
    other = registry.register("api", "n2", ttl=TTL)
    registry.close()
    with pytest.raises(ClosedError):
        other.update({"v": "2"})
