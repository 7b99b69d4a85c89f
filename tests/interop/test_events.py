"""The same event scenario run from Rust, C (callbacks and pull), Python and Go against one real
etcd: every language must see the identical sequence of status events.

Scenario (each program registers node "a" of its own service, TTL 2 s):
  1. "a" is registered;
  2. etcd is stopped for longer than the TTL, then started again: "a" loses its keep-alive,
     retries, and is registered again;
  3. "a" is unregistered, then node "b" registered;
  4. the registry is closed with "b" still registered.
Each program prints "<node> <kind>" per status event, then "end". Consecutive "retrying" lines
are collapsed: how many attempts fit in the outage depends on timing.
"""

import itertools
import subprocess
import threading
import time

import pytest

from test_interop import CLIS, Etcd, env

TTL = 2
DEADLINE = 60.0

PROGRAMS = {
    "rust": CLIS["rust"] + ["events", "ev-rust", str(TTL)],
    "c": CLIS["c"] + ["events", "ev-c", str(TTL)],
    "c-pull": CLIS["c"] + ["events", "ev-c-pull", str(TTL), "pull"],
    "python": CLIS["python"] + ["events", "ev-python", str(TTL)],
    "go": CLIS["go"] + ["events", "ev-go", str(TTL)],
}

EXPECTED = [
    "a registered",
    "a keepalive_lost",
    "a retrying",
    "a reregistered",
    "a unregistered",
    "b registered",
    "b unregistered",
]


class Program:
    """One language's events program, its output lines collected by a thread."""

    def __init__(self, name, argv, environ):
        self.name = name
        self.proc = subprocess.Popen(
            argv, env=environ, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self.lines = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.strip())
                self.changed.notify_all()
        with self.changed:
            self.lines.append("<eof>")
            self.changed.notify_all()

    def count(self, line):
        with self.changed:
            return self.lines.count(line)

    def wait_for(self, line, times=1):
        deadline = time.monotonic() + DEADLINE
        with self.changed:
            while self.lines.count(line) < times:
                left = deadline - time.monotonic()
                assert left > 0 and "<eof>" not in self.lines, (
                    f"{self.name}: no {line!r} (x{times}); saw {self.lines}; "
                    f"stderr: {self.proc.stderr.read() if '<eof>' in self.lines else ''}"
                )
                self.changed.wait(left)

    def send(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def events(self):
        """The event lines, consecutive "retrying" collapsed."""
        lines = [line for line in self.lines if line not in ("end", "<eof>")]
        return [line for line, _ in itertools.groupby(lines)]


def finish(programs):
    """The scenario's ending in every program: unregister "a" (which registers "b"), then close;
    each program prints "end" and exits 0."""
    for p in programs:
        p.send("unregister")
    for p in programs:
        p.wait_for("b registered")
    for p in programs:
        p.send("close")
    for p in programs:
        p.wait_for("end")
        assert p.proc.wait(timeout=DEADLINE) == 0, f"{p.name}: {p.proc.stderr.read()}"


def reap(programs):
    """Kills the programs still running (a test that failed midway)."""
    for p in programs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


@pytest.fixture(scope="module")
def etcd():
    server = Etcd()
    yield server
    server.stop()


def test_every_language_sees_the_same_events(etcd):
    programs = [Program(name, argv, env(etcd)) for name, argv in PROGRAMS.items()]
    try:
        for p in programs:
            p.wait_for("a registered")

        etcd.command("stop 0")
        stopped_at = time.monotonic()
        for p in programs:
            p.wait_for("a retrying")
        # The outage lasts past the TTL (a scenario length, not a synchronisation): poll until
        # both the TTL has run out and every program has retried at least twice.
        for p in programs:
            p.wait_for("a retrying", times=2)
        while time.monotonic() - stopped_at <= TTL + 0.5:
            for p in programs:
                assert "<eof>" not in p.lines, f"{p.name} exited: {p.lines}"
            time.sleep(0.1)
        etcd.command("start 0")
        for p in programs:
            p.wait_for("a reregistered")

        finish(programs)
    finally:
        reap(programs)

    seen = {p.name: p.events() for p in programs}
    for name, events in seen.items():
        assert events == EXPECTED, f"{name}: {events}\nall: {seen}"
