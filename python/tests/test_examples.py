"""The examples in examples/python run against a real etcd and print what they promise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import DEADLINE, EXAMPLES, REPO, Etcd, Output, run_python


def test_basic(etcd: Etcd) -> None:
    result = run_python(str(EXAMPLES / "basic.py"), env={"ETCD_ENDPOINTS": etcd.env_endpoints})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "state: registered" in lines
    assert "found: node-1 {'address': '10.0.0.5:8080', 'version': '1.4.2'}" in lines
    assert "after update: node-1 {'address': '10.0.0.5:8080', 'version': '1.4.3'}" in lines
    assert any(line.startswith("status: api/node-1: updated") for line in lines)
    assert "after unregister: []" in lines
    assert any(line.startswith("status: api/node-1: registered") for line in lines)


def test_watch(etcd: Etcd) -> None:
    result = run_python(str(EXAMPLES / "watch.py"), env={"ETCD_ENDPOINTS": etcd.env_endpoints})
    assert result.returncode == 0, result.stderr
    kinds = [line.split()[0] for line in result.stdout.splitlines()
             if line.split() and line.split()[0] in ("added", "updated", "removed")]
    assert kinds == ["added", "added", "updated", "removed", "added", "removed"], result.stdout
    assert "live now: [('node-2', '10.0.0.2:8080')]" in result.stdout
    assert "listed from asyncio: []" in result.stdout


def test_retry_demo_survives_an_etcd_restart(fresh_etcd: Etcd) -> None:
    env = dict(os.environ, ETCD_ENDPOINTS=fresh_etcd.env_endpoints)
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "retry_demo.py"), "--ttl", "5"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output = Output(proc)
    try:
        output.read_until(" registered")
        fresh_etcd.cmd("restart", 0)
        output.read_until("re-registered")
        proc.send_signal(signal.SIGINT)
        rest, err = output.finish()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = output.seen + rest
    assert any(line.endswith("keep-alive lost, retrying in 1s") for line in lines), lines
    assert "closed" in lines, (lines, err)
    # The last status event is delivered even though the process exits right after close().
    assert any(line.endswith(" unregistered") for line in lines), lines
    assert proc.returncode == 0, err


@pytest.mark.parametrize("readme", ["README.md", "python/README.md"])
def test_the_readme_python_snippet_runs(etcd: Etcd, readme: str) -> None:
    """The first Python block of the README's Python part, as written, against a real etcd:
    it ends, and shows what its comments say."""
    text = (REPO / readme).read_text()
    part = text[text.index("## Python" if readme == "README.md" else "## Use"):]
    code = part.split("```python\n", 1)[1].split("```", 1)[0]
    assert "127.0.0.1:2379" in code
    host_port = etcd.endpoints[0].removeprefix("http://")
    result = run_python(code.replace("127.0.0.1:2379", host_port), timeout=DEADLINE)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("api/node-1: registered") for line in lines), lines
    assert "node-1 {'address': '10.0.0.5:8080'}" in lines
    assert any(line.startswith("added Node(name='node-1'") for line in lines), lines
    assert lines[-1] == "api/node-1: unregistered", lines
