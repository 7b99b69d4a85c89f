"""Whole processes: exit without close(), Ctrl-C in blocking calls, fork()."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import DEADLINE, Etcd, Output, run_python

SCRIPTS = Path(__file__).parent / "scripts"
RUNS = 100
PARALLEL = 10
CRASH_MARKERS = ("panicked", "Fatal Python error", "Segmentation fault", "core dumped", "PanicException")


def test_exiting_without_close_never_hangs_or_crashes(etcd: Etcd) -> None:
    base_path = f"/exit-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, ETCD_ENDPOINTS=etcd.env_endpoints)
    modes = ["end", "exit", "raise", "thread", "async"]
    expected_codes = {"end": 0, "exit": 3, "raise": 1, "thread": 0, "async": 0}
    failures: list[str] = []
    for batch in range(0, RUNS, PARALLEL):
        procs = []
        for i in range(batch, batch + PARALLEL):
            mode = modes[i % len(modes)]
            argv = [sys.executable, str(SCRIPTS / "exit_without_close.py"), base_path, str(i), mode]
            procs.append((i, mode, subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, text=True)))
        for i, mode, proc in procs:
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                failures.append(f"run {i} ({mode}) hung at exit")
                continue
            if proc.returncode != expected_codes[mode] or out.strip() != "ok":
                failures.append(f"run {i} ({mode}) exited {proc.returncode}, out={out!r}, err={err[-500:]!r}")
            elif any(marker in err for marker in CRASH_MARKERS):
                failures.append(f"run {i} ({mode}) printed {err[-500:]!r}")
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("mode", ["wait", "list", "iterate"])
def test_ctrl_c_interrupts_a_blocking_call(etcd: Etcd, mode: str) -> None:
    env = dict(os.environ, ETCD_ENDPOINTS=etcd.env_endpoints)
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "interrupt.py"), mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output = Output(proc)
    try:
        # Ctrl-C once the main thread is inside the call (the script makes sure of it).
        assert output.readline('"in call"') == "in call"
        proc.send_signal(signal.SIGINT)
        out, err = output.finish(DEADLINE)  # far below the call's 300 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == ["interrupted"], (out, err)
    assert proc.returncode == 0, err


@pytest.mark.parametrize("mode", ["close", "unregister"])
def test_ctrl_c_interrupts_close_and_unregister_waiting_for_etcd(fresh_etcd: Etcd, mode: str) -> None:
    """With on_status, close() and unregister() wait for "unregistered", which comes only once
    etcd answers or the registry's timeout (300 s here) passes: Ctrl-C ends that wait at once."""
    env = dict(os.environ, ETCD_ENDPOINTS=fresh_etcd.env_endpoints)
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "interrupt.py"), mode], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    output = Output(proc)
    try:
        assert proc.stdin is not None
        assert output.readline('"ready"') == "ready"
        fresh_etcd.cmd("pause", 0)
        try:
            proc.stdin.write("\n")
            proc.stdin.close()
            assert output.readline('"in call"') == "in call"
            proc.send_signal(signal.SIGINT)
            out, err = output.finish(DEADLINE)  # far below the call's 300 s
        finally:
            fresh_etcd.cmd("resume", 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == ["interrupted"], (out, err)
    assert proc.returncode == 0, err


@pytest.mark.parametrize("mode", ["close", "list"])
def test_an_awaited_call_in_a_late_exit_handler_does_not_hang_the_exit(etcd: Etcd, mode: str) -> None:
    """An `atexit` handler registered before etcd_registry is imported runs after the package
    has stopped its threads; a call awaited there still completes instead of never resolving."""
    code = """
import atexit, asyncio, sys

endpoints, base, mode = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
state = {}

async def at_exit():
    reg = state["reg"]
    if mode == "close":
        await reg.close_async()
        print("closed", reg.closed, flush=True)
    else:
        print("listed", [n.name for n in await reg.list_async("api")], flush=True)
        reg.close()

atexit.register(lambda: asyncio.run(at_exit()))  # runs after the package's own exit handler

import etcd_registry

state["reg"] = etcd_registry.Registry(endpoints, base_path=base, timeout=10.0)
handle = state["reg"].register("api", "n", ttl=3 * 60.0, on_status=lambda event: None)
assert handle.wait(timeout=30.0)
print("registered", flush=True)
"""
    base_path = f"/late-exit-{uuid.uuid4().hex[:8]}"
    result = run_python(code, etcd.env_endpoints, base_path, mode, timeout=DEADLINE)
    expected = "closed True" if mode == "close" else "listed ['n']"
    assert result.stdout.splitlines() == ["registered", expected], result.stderr
    assert result.returncode == 0, result.stderr
    assert not any(marker in result.stderr for marker in CRASH_MARKERS), result.stderr
    assert etcd.get_prefix(base_path + "/") == {}


def test_exit_handlers_registered_after_the_import_still_get_callbacks(etcd: Etcd) -> None:
    """The package stops its threads in an `atexit` handler registered at import: a handler the
    program registers after `import etcd_registry` (even before its first Registry) runs before
    it, and a close() there still delivers "unregistered". One registered before the import runs
    after it and can still make blocking calls; its Registry starts no thread (Python 3.12+
    refuses new threads at exit)."""
    code = """
import atexit, sys, threading

endpoints, base = sys.argv[1].split(","), sys.argv[2]


def late():
    before = set(threading.enumerate())
    with etcd_registry.Registry(endpoints, base_path=base, timeout=10.0) as reg:
        names = [n.name for n in reg.list("api")]
    print("late:", names, len(set(threading.enumerate()) - before), "new threads", flush=True)


atexit.register(late)  # before the import: runs after the package's own exit handler

import etcd_registry

kinds = []


def cleanup():
    reg.close()
    print("cleanup:", kinds, flush=True)


atexit.register(cleanup)  # after the import, before the first Registry
reg = etcd_registry.Registry(endpoints, base_path=base, timeout=10.0)
handle = reg.register("api", "n", ttl=3 * 60.0, on_status=lambda event: kinds.append(event.kind))
assert handle.wait(timeout=30.0)
print("registered", flush=True)
"""
    base_path = f"/import-exit-{uuid.uuid4().hex[:8]}"
    result = run_python(code, etcd.env_endpoints, base_path, timeout=DEADLINE)
    assert result.stdout.splitlines() == [
        "registered",
        "cleanup: ['registered', 'unregistered']",
        "late: [] 0 new threads",
    ], result.stderr
    assert result.returncode == 0, result.stderr
    assert not any(marker in result.stderr for marker in CRASH_MARKERS), result.stderr
    assert etcd.get_prefix(base_path + "/") == {}


def test_a_registry_first_made_where_exit_refuses_threads_works_without_them(etcd: Etcd) -> None:
    """Python 3.12+ refuses new threads in exit handlers, also in one registered after the import
    (which runs before the package's own): a Registry first made there works as one made after
    the package's handler, with blocking and awaited calls, no callbacks and no thread. Simulated
    on any Python by a `Thread.start` that refuses as 3.12's does."""
    code = """
import atexit, asyncio, sys, threading

import etcd_registry

endpoints, base = sys.argv[1].split(","), sys.argv[2]


def refuse(self):
    raise RuntimeError("can't create new thread at interpreter shutdown")


def late():
    threading.Thread.start = refuse
    before = set(threading.enumerate())
    kinds = []
    reg = etcd_registry.Registry(endpoints, base_path=base, timeout=10.0)
    handle = reg.register("api", "n", ttl=3 * 60.0, on_status=lambda event: kinds.append(event.kind))
    assert handle.wait(timeout=30.0)

    async def main():
        names = [n.name for n in await reg.list_async("api")]
        await reg.close_async()
        return names

    names = asyncio.run(main())
    print("late:", names, kinds, reg.closed, len(set(threading.enumerate()) - before), "new threads",
          flush=True)


atexit.register(late)  # after the import: runs before the package's own exit handler
print("ready", flush=True)
"""
    base_path = f"/refused-exit-{uuid.uuid4().hex[:8]}"
    result = run_python(code, etcd.env_endpoints, base_path, timeout=DEADLINE)
    assert result.stdout.splitlines() == ["ready", "late: ['n'] [] True 0 new threads"], result.stderr
    assert result.returncode == 0, result.stderr
    assert not any(marker in result.stderr for marker in CRASH_MARKERS), result.stderr
    assert etcd.get_prefix(base_path + "/") == {}


def test_a_thread_refused_before_exit_fails_the_registry_and_the_next_one_starts_it(etcd: Etcd) -> None:
    """A thread the interpreter refuses while not exiting (out of threads) fails the Registry
    being made; the next Registry starts what is missing, once each, with callbacks."""
    code = """
import asyncio, sys, threading

import etcd_registry

endpoints, base = sys.argv[1].split(","), sys.argv[2]
start = threading.Thread.start


def refuse_asyncio(self):
    if self.name == "etcd_registry-asyncio":
        raise RuntimeError("can't start new thread")
    start(self)


threading.Thread.start = refuse_asyncio  # the callback thread starts, the other not
try:
    etcd_registry.Registry(endpoints, base_path=base, timeout=10.0)
except RuntimeError as exc:
    print("refused:", exc, flush=True)
threading.Thread.start = start
seen = threading.Event()
with etcd_registry.Registry(endpoints, base_path=base, timeout=10.0) as reg:
    reg.register("api", "n", ttl=3 * 60.0, on_status=lambda event: seen.set())
    print("callback:", seen.wait(30.0), flush=True)

    async def main():
        return [n.name for n in await reg.list_async("api")]

    print("listed:", asyncio.run(main()), flush=True)
print(sorted(t.name for t in threading.enumerate() if t.name.startswith("etcd_registry")), flush=True)
"""
    base_path = f"/refused-{uuid.uuid4().hex[:8]}"
    result = run_python(code, etcd.env_endpoints, base_path, timeout=DEADLINE)
    assert result.stdout.splitlines() == [
        "refused: can't start new thread",
        "callback: True",
        "listed: ['n']",
        "['etcd_registry-asyncio', 'etcd_registry-dispatch']",
    ], result.stderr
    assert result.returncode == 0, result.stderr
    assert etcd.get_prefix(base_path + "/") == {}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_child_gets_closed_errors_and_a_working_runtime(etcd: Etcd) -> None:
    result = run_python(str(SCRIPTS / "fork_child.py"), f"/fork-{uuid.uuid4().hex[:8]}",
                        env={"ETCD_ENDPOINTS": etcd.env_endpoints}, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "child: list -> ClosedError" in lines
    assert "child: wait -> ClosedError" in lines
    assert "child: next -> ClosedError" in lines
    assert "child: new registry works" in lines
    assert lines[-1] == "parent: ok"
    assert not any(marker in result.stderr for marker in CRASH_MARKERS), result.stderr


def test_a_program_that_never_awaits_does_not_load_asyncio(etcd: Etcd) -> None:
    # Loading asyncio costs a process about 8 MiB of memory: only awaited calls may need it.
    code = """
import sys, threading, uuid
import etcd_registry
seen = threading.Event()
base = "/noasync-" + uuid.uuid4().hex[:8]
with etcd_registry.Registry(sys.argv[1].split(","), base_path=base, timeout=10.0) as reg:
    watch = reg.watch("api", on_event=lambda event: seen.set())
    handle = reg.register("api", "n1", {"a": "1"}, ttl=5.0, on_status=lambda event: None)
    assert handle.wait(timeout=10.0)
    assert [n.name for n in reg.list("api")] == ["n1"]
    assert seen.wait(10.0)
    handle.unregister()
print("asyncio" in sys.modules)
"""
    result = run_python(code, etcd.env_endpoints)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_forked_child_dropping_a_registry_leaves_its_callback_watches_alone(etcd: Etcd) -> None:
    """A child forked from a process whose registry has callback watches may drop that registry:
    the child never touches the parent's watches (nor its runtime), and the parent's callback
    goes on."""
    code = """
import gc, os, sys, threading, time, uuid
import etcd_registry

endpoints, deadline = sys.argv[1].split(","), float(sys.argv[2])
base = "/forkdrop-" + uuid.uuid4().hex[:8]
added = threading.Event()
reg = etcd_registry.Registry(endpoints, base_path=base, timeout=10.0)


def on_event(event):
    if event.kind == "added":
        added.set()


reg.watch("api", on_event=on_event)  # kept by the registry alone
pid = os.fork()
if pid == 0:
    del reg
    gc.collect()
    os._exit(0)
end = time.monotonic() + deadline
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() > end:
        os.kill(pid, 9)
        print("the child hung", flush=True)
        sys.exit(1)
    time.sleep(0.05)
print("child exited", os.waitstatus_to_exitcode(status), flush=True)
with etcd_registry.Registry(endpoints, base_path=base, timeout=10.0) as other:
    assert other.register("api", "n").wait(10.0)
    print("parent's watch " + ("works" if added.wait(deadline) else "stopped"), flush=True)
reg.close()
"""
    result = run_python(code, etcd.env_endpoints, str(DEADLINE), timeout=3 * DEADLINE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["child exited 0", "parent's watch works"]
    assert not any(marker in result.stderr for marker in CRASH_MARKERS), result.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_leaving_a_registration_block_keeps_its_exception(etcd: Etcd) -> None:
    """A child forked inside `with reg.register(...)` that exits with sys.exit() leaves the
    block with SystemExit: its `__exit__` (and `__aexit__` of an `async with`) returns quietly
    there, as Registry.close() does, rather than replacing the exception with ClosedError; and
    the parent's node stays registered."""
    code = """
import asyncio, os, sys, time, uuid
import etcd_registry

endpoints, deadline = sys.argv[1].split(","), float(sys.argv[2])
base = "/forkexit-" + uuid.uuid4().hex[:8]


async def leave_async(handle):
    async with handle:
        raise KeyError("left")


with etcd_registry.Registry(endpoints, base_path=base, timeout=10.0) as reg:
    with reg.register("api", "n") as handle:
        assert handle.wait(deadline)
        pid = os.fork()
        if pid == 0:
            try:
                asyncio.run(leave_async(handle))
            except KeyError:
                print("child: async with kept KeyError", flush=True)
            except BaseException as exc:
                print("child: async with raised", repr(exc), flush=True)
            sys.exit(7)  # leaves `with handle` and `with reg` with SystemExit
        end = time.monotonic() + deadline
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > end:
                os.kill(pid, 9)
                print("the child hung", flush=True)
                sys.exit(1)
            time.sleep(0.05)
        print("child exited", os.waitstatus_to_exitcode(status), flush=True)
        print("parent's node", handle.state, [n.name for n in reg.list("api")], flush=True)
print("parent's node after the block", handle.state, flush=True)
"""
    result = run_python(code, etcd.env_endpoints, str(DEADLINE), timeout=3 * DEADLINE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "child: async with kept KeyError",
        "child exited 7",
        "parent's node registered ['n']",
        "parent's node after the block unregistered",
    ], result.stderr
    assert "ClosedError" not in result.stderr, result.stderr
    assert not any(marker in result.stderr for marker in CRASH_MARKERS), result.stderr
