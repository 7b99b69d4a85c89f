"""Fixtures: real etcd servers from the shared harness (tests/harness, `etcd-harness serve`).

Nothing is mocked and no port is fixed: every etcd runs on free loopback ports chosen by the
harness. A session-wide etcd serves the tests that do not hurt it; tests that kill, pause,
partition or reconfigure etcd get their own (`fresh_etcd`, `proxied_etcd`, `etcd_factory`).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Iterator, List, Optional

import pytest

import etcd_registry

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "python"
#: Generous bound for anything that should happen "soon"; tests poll, never sleep.
DEADLINE = 30.0

# A runner started with SIGINT ignored (a background job of a non-interactive shell) passes
# that on to every process it starts, and Python then turns no Ctrl-C into KeyboardInterrupt:
# the scripts the tests interrupt would never see theirs. A handler here is reset to the
# default in each child, so each sees SIGINT as a user's terminal would send it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def harness_binary() -> str:
    explicit = os.environ.get("ETCD_HARNESS_BIN")
    if explicit:
        return explicit
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = target / "debug" / "etcd-harness"
    if not path.exists():
        pytest.exit(f"{path} is missing: run `cargo build -p etcd-harness` (python/run-tests.sh does)", 2)
    return str(path)


#: Bound for the harness to start its etcd (a cluster, certificates) or to carry out one command
#: (a restart waits for the member to serve).
HARNESS_DEADLINE = 120.0


def _readline_within(proc: subprocess.Popen[str], what: str, deadline: float = HARNESS_DEADLINE) -> str:
    """The next line of `proc`'s stdout ("" at its end); kills it and fails when none comes within
    `deadline`, instead of hanging the run on a harness that stays silent."""
    assert proc.stdout is not None
    got: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: got.put(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        return got.get(timeout=deadline)
    except queue.Empty:
        proc.kill()
        raise RuntimeError(f"etcd-harness did not answer {what} within {deadline} s") from None


class Etcd:
    """One `etcd-harness serve` process: a real etcd (cluster) and its control commands."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [harness_binary(), "serve", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        line = _readline_within(self.proc, f"serve {' '.join(args)}")
        if not line:
            self.proc.wait(timeout=10)
            raise RuntimeError(f"etcd-harness serve {' '.join(args)} exited with {self.proc.returncode}")
        info = json.loads(line)
        if not info.get("ok", True):
            raise RuntimeError(f"etcd-harness failed: {info}")
        self.endpoints: List[str] = info["endpoints"]
        self.direct_endpoints: List[str] = info["direct_endpoints"]
        self.control: str = info["control"]
        #: PEM file paths by name (`ca`, `client_cert`, …) when started with --tls, else None.
        self.tls: Optional[dict[str, str]] = info.get("tls")
        self._lock = threading.Lock()

    @property
    def env_endpoints(self) -> str:
        return ",".join(self.endpoints)

    def cmd(self, *words: Any) -> Any:
        """Runs one harness command and returns its value; a failed command raises."""
        line = " ".join(str(w) for w in words)
        with self._lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            answer = _readline_within(self.proc, repr(line))
        if not answer:
            raise RuntimeError(f"etcd-harness died during {line!r}")
        reply = json.loads(answer)
        if not reply["ok"]:
            raise RuntimeError(f"etcd-harness {line!r}: {reply['error']}")
        return reply.get("value")

    def get_prefix(self, prefix: str) -> dict[str, str]:
        return {k: v for k, v in self.cmd("get-prefix", prefix)}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="session")
def etcd() -> Iterator[Etcd]:
    server = Etcd()
    yield server
    server.close()


@pytest.fixture
def etcd_factory() -> Iterator[Callable[..., Etcd]]:
    """Starts etcds of the test's own (arguments as for `etcd-harness serve`)."""
    started: list[Etcd] = []

    def start(*args: str) -> Etcd:
        server = Etcd(*args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def fresh_etcd(etcd_factory: Callable[..., Etcd]) -> Etcd:
    """An etcd of this test's own, to kill and restart."""
    return etcd_factory()


@pytest.fixture
def proxied_etcd(etcd_factory: Callable[..., Etcd]) -> Etcd:
    """An etcd behind the harness's TCP proxy, to partition and heal."""
    return etcd_factory("--proxy")


@pytest.fixture
def base_path() -> str:
    """A key prefix of this test's own on the shared etcd."""
    return f"/pytest/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def registry(etcd: Etcd, base_path: str) -> Iterator[etcd_registry.Registry]:
    reg = etcd_registry.Registry(etcd.endpoints, base_path=base_path, timeout=5.0)
    yield reg
    reg.close()


def quick_registry(server: Etcd, base_path: str = "/s", **kwargs: Any) -> etcd_registry.Registry:
    """A registry with short timeouts and quick retries, so recovery tests stay short."""
    kwargs.setdefault("timeout", 2.0)
    kwargs.setdefault("backoff_min", 0.2)
    kwargs.setdefault("backoff_max", 2.0)
    return etcd_registry.Registry(server.endpoints, base_path=base_path, **kwargs)


def eventually(what: str, check: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    """Polls `check` until it returns something truthy, which is returned; fails after `deadline`."""
    end = time.monotonic() + deadline
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001 - keep polling through transient errors
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}; last result: {last!r}")
        time.sleep(0.05)


class Recorder:
    """A callback that records what it is given, for assertions from the test thread."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def __call__(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def kinds(self) -> list[str]:
        with self._cond:
            return [i.kind for i in self.items]

    def wait_for(self, what: str, predicate: Callable[[Any], bool], start: int = 0) -> int:
        """Waits for an item matching `predicate` at index >= `start`; returns its index."""
        end = time.monotonic() + DEADLINE
        with self._cond:
            while True:
                for i in range(start, len(self.items)):
                    if predicate(self.items[i]):
                        return i
                left = end - time.monotonic()
                if left <= 0:
                    pytest.fail(f"timed out waiting for {what}; got {self.items!r}")
                self._cond.wait(left)

    def wait_kind(self, kind: str, start: int = 0) -> int:
        return self.wait_for(repr(kind), lambda i: i.kind == kind, start)


def run_python(code_or_path: str, *args: str, env: Optional[dict[str, str]] = None, timeout: float = 60.0,
               **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Runs a Python script (a path, or code with `-c`) in a fresh interpreter."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    argv = [sys.executable, code_or_path, *args] if code_or_path.endswith(".py") else [sys.executable, "-c", code_or_path, *args]
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=timeout, **kwargs)



class Output:
    """The output of a process started with stdout and stderr piped, read by threads: waiting for
    a line fails at a deadline instead of hanging on a process that stays silent."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        #: The stdout lines taken so far (by `readline`/`read_until`), without their newline.
        self.seen: list[str] = []
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        self._err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_lines, args=(proc.stdout,), daemon=True),
            threading.Thread(target=self._read_all, args=(proc.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_lines(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip())
        self._lines.put(None)  # the end

    def _read_all(self, stream: IO[str]) -> None:
        self._err.append(stream.read())

    def readline(self, what: str, deadline: float = DEADLINE) -> str:
        """The next stdout line; fails when the output ends or nothing comes within `deadline`."""
        try:
            line = self._lines.get(timeout=deadline)
        except queue.Empty:
            pytest.fail(f"no line ({what}) within {deadline} s; read so far: {self.seen}")
        if line is None:
            self._lines.put(None)
            pytest.fail(f"the output ended before {what}; read so far: {self.seen}; "
                        f"stderr: {self.stderr(deadline=1.0)!r}")
        self.seen.append(line)
        return line

    def read_until(self, fragment: str, deadline: float = DEADLINE) -> str:
        """Reads lines up to the first containing `fragment` (which is returned), all within `deadline`."""
        end = time.monotonic() + deadline
        while True:
            line = self.readline(repr(fragment), max(0.0, end - time.monotonic()))
            if fragment in line:
                return line

    def finish(self, deadline: float = DEADLINE) -> tuple[list[str], str]:
        """Waits for the process to exit and its output to end; returns the stdout lines not
        taken yet and the whole stderr. Fails (the process killed) after `deadline`."""
        try:
            self.proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the process did not exit within {deadline} s; read so far: {self.seen}")
        rest: list[str] = []
        try:
            while (line := self._lines.get(timeout=deadline)) is not None:
                rest.append(line)
        except queue.Empty:
            pytest.fail(f"the output did not end within {deadline} s of the exit; read: {self.seen + rest}")
        self._lines.put(None)
        return rest, self.stderr(deadline)

    def stderr(self, deadline: float = DEADLINE) -> str:
        """The whole stderr, once it has ended (within `deadline`; what there is otherwise)."""
        self._threads[1].join(deadline)
        return "".join(self._err)
