"""Every language's registration survives a 3-member cluster losing the member in use, then the
leader: a node registered from Rust, C, Python and Go (each its own process, registry and lease,
given all three endpoints) stays in etcd on the same lease while each registry renews it through
another member, and each language lists the others' nodes with a member down."""

import time

import pytest

from test_events import Program, finish, reap
from test_interop import CLIS, Etcd, env, run

# Keep-alives go out every TTL/3: at 5 s, etcd's whole-second remaining TTL rises at each one.
TTL = 5
DEADLINE = 60.0
LANGS = ["rust", "c", "python", "go"]


@pytest.fixture(scope="module")
def cluster():
    server = Etcd("--members", "3")
    yield server
    server.stop()


def remaining(cluster, lease):
    """The lease's remaining TTL in whole seconds as etcd reports it, None when unreadable."""
    try:
        out = cluster.command(f"etcdctl lease timetolive {lease:x}")
    except AssertionError:
        return None  # no leader for a moment
    # "lease 694d... granted with TTL(5s), remaining(4s)" or "lease 694d... already expired"
    if "remaining(" not in out:
        return -1
    return int(out.split("remaining(")[1].split("s")[0])


def test_every_language_keeps_its_node_and_lease_when_the_member_in_use_then_the_leader_stop(cluster):
    programs = [
        Program(lang, CLIS[lang] + ["events", f"cl-{lang}", str(TTL)], env(cluster))
        for lang in LANGS
    ]
    keys = sorted(f"/services/cl-{lang}/a" for lang in LANGS)
    try:
        for p in programs:
            p.wait_for("a registered")
        leases = sorted(cluster.command("leases"))
        assert len(leases) == len(LANGS), "one lease per process"

        # Every registry prefers the first endpoint it was given: member 0 is the one in use.
        for round_, member in (("the member in use", 0), ("the leader", None)):
            if member is None:
                member = cluster.command("leader")
            cluster.command(f"stop {member}")
            # Until every lease has been renewed twice since the stop (a new leader refreshes
            # every lease once: the second rise is a registry's keep-alive through another
            # member), no key may go missing.
            rises = {lease: 0 for lease in leases}
            last = {}
            deadline = time.monotonic() + DEADLINE
            while min(rises.values()) < 2:
                assert time.monotonic() < deadline, f"after stopping {round_}: renewals {rises}"
                stored = sorted(k for k, _ in cluster.command("get-prefix /services/cl-"))
                assert stored == keys, f"after stopping {round_}: a key went missing"
                for lease in leases:
                    now = remaining(cluster, lease)
                    if now is None:
                        continue
                    assert now >= 0, f"after stopping {round_}: lease {lease:x} expired"
                    if lease in last and now > last[lease]:
                        rises[lease] += 1
                    last[lease] = now
            assert sorted(cluster.command("leases")) == leases, "the same leases"
            for p in programs:
                assert "<eof>" not in p.lines, f"{p.name} exited: {p.lines}"
            # A fresh registry of each language, given the stopped member too, lists the node of
            # the next language.
            for i, lang in enumerate(LANGS):
                other = LANGS[(i + 1) % len(LANGS)]
                nodes = run(cluster, lang, "list", f"cl-{other}")
                assert [n["name"] for n in nodes] == ["a"], f"{lang} listing cl-{other}: {nodes}"
            cluster.command(f"restart {member}")

        finish(programs)
    finally:
        reap(programs)

    for p in programs:
        events = p.events()
        assert events[0] == "a registered", (p.name, events)
        assert events[-3:] == ["a unregistered", "b registered", "b unregistered"], (p.name, events)
    assert cluster.command("get-prefix /services/cl-") == [], "close removed every key"
    assert cluster.command("leases") == [], "close revoked every lease"
