"""A node registered from each of Rust, C, Python and Go is listed and watched from each of the
others with the same name and info; keys written by hand in the wire format read the same in
every language. Real etcd, started by the shared harness."""

import json
import os
import subprocess
import sys
import threading
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


@pytest.fixture(scope="module")
def registered(etcd):
    """One node registered from each language, held until the module ends."""
    holders = {}
    for lang in CLIS:
        info = json.dumps({"lang": lang, "version": "1.0.0", "address": f"10.0.0.1:{len(holders) + 8000}"})
        proc = subprocess.Popen(
            CLIS[lang] + ["register", "interop", f"{lang}-node", info, "10"],
            env=env(etcd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
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
    yield expected
    for lang, proc in holders.items():
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0, f"{lang} failed to unregister"


@pytest.mark.parametrize("lang", list(CLIS))
def test_every_language_lists_the_nodes_of_every_language(etcd, registered, lang):
    assert run(etcd, lang, "list", "interop") == registered


@pytest.mark.parametrize("lang", list(CLIS))
def test_every_language_watches_the_nodes_of_every_language(etcd, registered, lang):
    assert run(etcd, lang, "watch", "interop", str(len(registered))) == registered


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
    for lang in CLIS:
        proc = subprocess.Popen(
            CLIS[lang] + ["register", "shortlived", f"{lang}-node", "{}", "10"],
            env=env(etcd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert read_line(proc, f"{lang} registering").strip() == "registered"
        assert etcd.command("get-prefix /services/shortlived/") == [[f"/services/shortlived/{lang}-node", "{}"]]
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        assert etcd.command("get-prefix /services/shortlived/") == [], f"{lang} left its key behind"
