"""A node registered from each of Rust, C, Python and Go is listed and watched from each of the
others with the same name and info; keys written by hand in the wire format read the same in
every language. Real etcd, started by the shared harness."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("INTEROP_BIN", ROOT / "target" / "interop"))
HARNESS = ROOT / "target" / "debug" / "etcd-harness"

CLIS = {
    "rust": [str(ROOT / "target" / "debug" / "examples" / "interop-cli")],
    "c": [str(BIN / "cli_c")],
    "python": [sys.executable, str(Path(__file__).with_name("cli_py.py"))],
    "go": [str(BIN / "cli_go")],
}


DEADLINE = 30


def read_line(proc, what, timeout=DEADLINE):
    """The next line of `proc`'s output; a failure naming `what` if none comes within `timeout`
    seconds (a program stuck, instead of the suite hanging)."""
    line = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert line, f"no line from {what} within {timeout} s"
    return line[0]


class Etcd:
    def __init__(self, *options):
        self.proc = subprocess.Popen(
            [str(HARNESS), "serve", *options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        hello = json.loads(read_line(self.proc, "the harness starting etcd", timeout=120))
        assert hello["ok"], hello
        self.endpoints = ",".join(hello["endpoints"])

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = json.loads(read_line(self.proc, f"the harness, answering {line!r}"))
        assert reply["ok"], reply
        return reply.get("value")

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=DEADLINE)


@pytest.fixture(scope="module")
def etcd():
    server = Etcd()
    yield server
    server.stop()


def env(etcd):
    return {**os.environ, "ETCD_ENDPOINTS": etcd.endpoints, "ETCD_BASE_PATH": "/services"}


def run(etcd, lang, *args):
    out = subprocess.run(
        CLIS[lang] + list(args), env=env(etcd), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"{lang} {args}: {out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def start(etcd, lang, *args):
    """A program left running, driven by lines on its stdin (see README.md)."""
    return subprocess.Popen(
        CLIS[lang] + list(args), env=env(etcd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )


def send(proc, line):
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def by_name(nodes):
    return sorted(nodes, key=lambda n: n["name"])


def wait_for_nodes(proc, what, expected):
    """Reads the live sets a `follow` program prints until one is `expected`; a failure naming
    `what` (and the sets seen) if none is within DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    seen = []
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"{what}: never saw {expected}; saw {seen}"
        line = read_line(proc, f"{what} (sets seen: {seen})", timeout=left)
        assert line, f"{what}: the program exited; saw {seen}"
        seen.append(json.loads(line))
        if seen[-1] == expected:
            return


@pytest.fixture(scope="module")
def holders(etcd):
    """One node registered from each language, held until the module ends: the programs holding
    them, and the nodes expected."""
    holders = {}
    for lang in CLIS:
        info = json.dumps({"lang": lang, "version": "1.0.0", "address": f"10.0.0.1:{len(holders) + 8000}"})
        proc = start(etcd, lang, "register", "interop", f"{lang}-node", info, "10")
        line = read_line(proc, f"{lang} registering").strip()
        assert line == "registered", f"{lang} did not register: {line!r}"
        holders[lang] = proc
    expected = sorted(
        (
            {"name": f"{lang}-node",
             "info": {"lang": lang, "version": "1.0.0", "address": f"10.0.0.1:{i + 8000}"}}
            for i, lang in enumerate(CLIS)
        ),
        key=lambda n: n["name"],
    )
    yield holders, expected
    for lang, proc in holders.items():
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0, f"{lang} failed to unregister"


@pytest.fixture(scope="module")
def registered(holders):
    return holders[1]


@pytest.mark.parametrize("lang", list(CLIS))
def test_every_language_lists_the_nodes_of_every_language(etcd, registered, lang):
    assert run(etcd, lang, "list", "interop") == registered


@pytest.mark.parametrize("lang", list(CLIS))
def test_every_language_watches_the_nodes_of_every_language(etcd, registered, lang):
    assert run(etcd, lang, "watch", "interop", str(len(registered))) == registered


def test_every_language_watches_live_changes_made_from_the_others(etcd, holders):
    """With a watch running in every language, each language in turn registers a node, then
    unregisters it: every watch sees both changes (so each sees the changes of the three other
    languages, not only its starting listing)."""
    programs, expected = holders
    followers = {lang: start(etcd, lang, "follow", "interop") for lang in CLIS}
    try:
        for lang, follower in followers.items():
            wait_for_nodes(follower, f"{lang} watching", expected)
        for lang, holder in programs.items():
            live = {"name": f"{lang}-live", "info": {"lang": lang}}
            send(holder, f'register {lang}-live {{"lang":"{lang}"}}')
            assert read_line(holder, f"{lang} registering").strip() == f"registered {lang}-live"
            for watcher, follower in followers.items():
                wait_for_nodes(follower, f"{watcher} watching {lang} register {lang}-live",
                               by_name(expected + [live]))
            send(holder, f"unregister {lang}-live")
            assert read_line(holder, f"{lang} unregistering").strip() == f"unregistered {lang}-live"
            for watcher, follower in followers.items():
                wait_for_nodes(follower, f"{watcher} watching {lang} unregister {lang}-live",
                               expected)
        for lang, follower in followers.items():
            follower.stdin.close()
            assert follower.wait(timeout=DEADLINE) == 0, f"{lang} watch failed"
    finally:
        for follower in followers.values():
            if follower.poll() is None:
                follower.kill()
                follower.wait()


def test_what_is_stored_is_the_go_wire_format(etcd, registered):
    stored = dict(etcd.command("get-prefix /services/interop/"))
    assert sorted(stored) == [f"/services/interop/{lang}-node" for lang in sorted(CLIS)]
    for key, value in stored.items():
        info = json.loads(value)
        assert list(info) == sorted(info), "keys sorted, as Go's json.Marshal writes maps"
        assert value == json.dumps(info, separators=(",", ":"), sort_keys=True)


@pytest.mark.parametrize("lang", list(CLIS))
def test_keys_written_by_the_go_library_and_garbage_read_the_same_everywhere(etcd, lang):
    etcd.command('put /services/legacy/go-node {"version":"1.0.0"}')
    etcd.command("put /services/legacy/empty ")
    etcd.command("put /services/legacy/garbage not json {")
    assert run(etcd, lang, "list", "legacy") == [
        {"name": "empty", "info": {}},
        {"name": "garbage", "info": {}},
        {"name": "go-node", "info": {"version": "1.0.0"}},
    ]


def test_unregistering_from_each_language_removes_its_key(etcd):
    """Each language registers two nodes on the same TTL (so on one lease), unregisters the
    first with its registry still open: the first key is gone and the second still there (close,
    which revokes the lease, would remove both whether or not unregister worked)."""
    for lang in CLIS:
        proc = start(etcd, lang, "register", "shortlived", f"{lang}-node", "{}", "10")
        try:
            assert read_line(proc, f"{lang} registering").strip() == "registered"
            send(proc, f"register {lang}-other {{}}")
            assert read_line(proc, f"{lang} registering").strip() == f"registered {lang}-other"
            assert etcd.command("get-prefix /services/shortlived/") == [
                [f"/services/shortlived/{lang}-node", "{}"],
                [f"/services/shortlived/{lang}-other", "{}"],
            ]
            send(proc, f"unregister {lang}-node")
            assert read_line(proc, f"{lang} unregistering").strip() == f"unregistered {lang}-node"
            assert etcd.command("get-prefix /services/shortlived/") == [
                [f"/services/shortlived/{lang}-other", "{}"]
            ], f"{lang}: unregister did not remove its key alone"
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0
            assert etcd.command("get-prefix /services/shortlived/") == [], f"{lang} left a key behind"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
