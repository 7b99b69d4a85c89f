"""Recovery as a Python user sees it: etcd restarted, etcd down at first, an outage longer than
the TTL. Each test has an etcd of its own to break."""

from __future__ import annotations

import asyncio
import json
from typing import Callable

import pytest

from etcd_registry import RegistryError, ResourceExhaustedError

from conftest import DEADLINE, Etcd, Recorder, eventually, quick_registry


def test_registration_comes_back_after_etcd_restarts(fresh_etcd: Etcd) -> None:
    with quick_registry(fresh_etcd) as reg:
        recorder = Recorder()
        handle = reg.register("api", "n1", {"address": "10.0.0.1:80"}, ttl=10.0, on_status=recorder)
        assert handle.wait(DEADLINE)
        lease = handle.lease_id
        fresh_etcd.cmd("restart", 0)  # SIGKILL, then start again on the same data

        lost = recorder.wait_kind("keepalive_lost")
        back = recorder.wait_kind("reregistered", lost)
        between = recorder.kinds()[lost + 1 : back]
        assert between and set(between) == {"retrying"}, between
        assert isinstance(recorder.items[lost].error, RegistryError)
        assert handle.state == "registered"
        assert handle.lease_id == lease, "the lease survived the restart"
        stored = fresh_etcd.get_prefix("/s/api/")
        assert {k: json.loads(v) for k, v in stored.items()} == {"/s/api/n1": {"address": "10.0.0.1:80"}}
        assert [n.name for n in reg.list("api")] == ["n1"]


def test_an_outage_longer_than_the_ttl_gets_the_node_back(proxied_etcd: Etcd) -> None:
    with quick_registry(proxied_etcd) as reg:
        recorder = Recorder()
        handles = [reg.register("api", f"n{i}", ttl=2.0, on_status=recorder if i == 0 else None)
                   for i in range(3)]
        for handle in handles:
            assert handle.wait(DEADLINE)
        old_lease = handles[0].lease_id

        proxied_etcd.cmd("partition")  # the client hears nothing from etcd from now on
        lost = recorder.wait_kind("keepalive_lost")
        # Meanwhile etcd expires the lease and deletes the keys.
        eventually("the lease to expire in etcd", lambda: proxied_etcd.cmd("lease-count") == 0)
        assert proxied_etcd.get_prefix("/s/") == {}
        assert handles[0].state == "retrying"
        proxied_etcd.cmd("heal")

        recorder.wait_kind("reregistered", lost)
        eventually("every key back", lambda: len(proxied_etcd.get_prefix("/s/api/")) == 3)
        assert proxied_etcd.cmd("lease-count") == 1, "the keys share one new lease"
        assert handles[0].lease_id != old_lease
        for handle in handles:
            assert handle.state == "registered"
            assert handle.lease_id == handles[0].lease_id
        assert sorted(n.name for n in reg.list("api")) == ["n0", "n1", "n2"]


def test_etcd_down_at_registration_then_it_starts(fresh_etcd: Etcd) -> None:
    fresh_etcd.cmd("kill", 0)
    with quick_registry(fresh_etcd) as reg:
        recorder = Recorder()
        handle = reg.register("api", "n1", ttl=5.0, on_status=recorder)
        # The first attempt fails: wait() says why at once; retries go on.
        with pytest.raises((ConnectionError, TimeoutError)):
            handle.wait(DEADLINE)
        recorder.wait_for("a retry", lambda e: e.kind == "retrying")
        assert handle.state == "registering"
        fresh_etcd.cmd("start", 0)
        recorder.wait_kind("registered")
        assert handle.wait(0) is True
        assert handle.state == "registered"
        assert list(fresh_etcd.get_prefix("/s/api/")) == ["/s/api/n1"]


def test_a_lease_revoked_behind_the_librarys_back_is_replaced(fresh_etcd: Etcd) -> None:
    with quick_registry(fresh_etcd) as reg:
        recorder = Recorder()
        handle = reg.register("api", "n1", ttl=5.0, on_status=recorder)
        assert handle.wait(DEADLINE)
        fresh_etcd.cmd("lease-revoke", handle.lease_id)
        recorder.wait_kind("reregistered")
        assert list(fresh_etcd.get_prefix("/s/api/")) == ["/s/api/n1"]
        assert handle.state == "registered"


def test_unregister_and_close_succeed_while_etcd_is_stopped(fresh_etcd: Etcd) -> None:
    # The shutdown rule: they try within the timeout, log a warning, and do not raise; the keys
    # expire with their lease once etcd is back.
    with quick_registry(fresh_etcd, timeout=1.0) as reg:
        first = reg.register("api", "n1", ttl=2.0)
        second = reg.register("api", "n2", ttl=2.0)
        assert first.wait(DEADLINE) and second.wait(DEADLINE)
        fresh_etcd.cmd("stop", 0)
        first.unregister()
        assert first.state == "unregistered"
        reg.close()
        assert reg.closed
        assert second.state == "unregistered"
    fresh_etcd.cmd("start", 0)
    eventually("the keys to expire with their lease", lambda: not fresh_etcd.get_prefix("/s/api/"))


def test_unregistering_a_node_that_never_reached_etcd_returns_at_once(fresh_etcd: Etcd) -> None:
    # etcd silent since the node was registered: nothing of it is in etcd, so the unregister
    # has nothing to wait for (the registry's timeout is twice the deadline), and the node is
    # not written once etcd answers again.
    with quick_registry(fresh_etcd, timeout=2 * DEADLINE) as reg:
        fresh_etcd.cmd("pause", 0)
        handle = reg.register("api", "n1", ttl=5.0)

        async def unregister() -> None:
            await asyncio.wait_for(handle.unregister_async(), DEADLINE)

        asyncio.run(unregister())
        assert handle.state == "unregistered"
        fresh_etcd.cmd("resume", 0)
        # Registered after, on the same TTL: its lease's task has dealt with n1 first.
        other = reg.register("api", "n2", ttl=5.0)
        assert other.wait(DEADLINE)
        assert list(fresh_etcd.get_prefix("/s/api/")) == ["/s/api/n2"]


def test_etcd_out_of_space_refuses_with_resource_exhausted_until_fixed(
    etcd_factory: Callable[..., Etcd],
) -> None:
    server = etcd_factory("--quota-backend-bytes", str(16 * 1024 * 1024))
    with quick_registry(server, backoff_min=0.2, backoff_max=0.5) as reg:
        first = reg.register("api", "a", ttl=10.0)
        assert first.wait(DEADLINE)
        big = "x" * 1_000_000
        filled = 0
        with pytest.raises(RuntimeError, match="database space exceeded"):
            while filled < 100:  # etcd refuses long before 100 MB with a 16 MiB quota
                server.cmd("put", f"/fill/{filled}", big)
                filled += 1
        assert filled < 100

        recorder = Recorder()
        refused = reg.register("api", "b", ttl=10.0, on_status=recorder)
        failed = recorder.items[recorder.wait_kind("failed")]
        assert isinstance(failed.error, ResourceExhaustedError), repr(failed.error)
        assert isinstance(failed.error, RegistryError)
        assert failed.error.kind == "resource exhausted"
        assert "database space exceeded" in str(failed.error)
        recorder.wait_kind("retrying")
        assert [n.name for n in reg.list("api")] == ["a"], "what was registered stays"
        with pytest.raises(ResourceExhaustedError):
            refused.wait(0)  # the refusal, at once, while attempts go on

        # The operator's fix: free the space, compact, defragment, disarm the alarm.
        server.cmd("delete-prefix", "/fill/")
        server.cmd("compact")
        server.cmd("etcdctl", "defrag")
        server.cmd("etcdctl", "alarm", "disarm")
        eventually("the refused node lands once etcd accepts writes", lambda: refused.state == "registered")
        recorder.wait_kind("registered")
        eventually("both nodes listed", lambda: [n.name for n in reg.list("api")] == ["a", "b"])
