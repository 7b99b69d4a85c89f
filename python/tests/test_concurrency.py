"""Many threads at once: every blocking call releases the GIL and the registry is thread-safe."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable
from urllib.parse import urlsplit

from etcd_registry import Node, Registry

from conftest import DEADLINE, Etcd, eventually

THREADS = 50


def test_fifty_threads_register_and_list_at_once(registry: Registry, etcd: Etcd, base_path: str) -> None:
    start = threading.Barrier(THREADS)

    def worker(i: int) -> list[str]:
        start.wait(DEADLINE)
        handle = registry.register("api", f"node-{i:02}", {"worker": str(i)}, ttl=10.0)
        assert handle.wait(DEADLINE), f"node-{i:02} registered"
        names = []
        for _ in range(3):
            names = [n.name for n in registry.list("api")]
            assert f"node-{i:02}" in names
        return names

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))
    assert len(results) == THREADS
    expected = [f"node-{i:02}" for i in range(THREADS)]
    assert [n.name for n in registry.list("api")] == expected
    assert {n.name: n.info["worker"] for n in registry.list("api")} == {f"node-{i:02}": str(i) for i in range(THREADS)}
    assert len(etcd.get_prefix(f"{base_path}/api/")) == THREADS


def test_threads_wait_and_unregister_while_others_watch(registry: Registry) -> None:
    watch = registry.watch("api")
    handles = [registry.register("api", f"n{i}") for i in range(20)]

    def finish(i: int) -> None:
        assert handles[i].wait(DEADLINE)
        handles[i].unregister()

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(finish, range(20)))
    removed: set[str] = set()

    def all_removed() -> bool:
        while (event := watch.next_event(timeout=0.1)) is not None:
            if event.kind == "removed" and event.node is not None:
                removed.add(event.node.name)
        return len(removed) == 20

    eventually("every removal seen by the watch", all_removed)
    assert watch.nodes() == []
    watch.close()


class HeldProxy:
    """A TCP proxy to etcd run by Python threads. What the client sends goes through at once;
    etcd's answers are held until `release()`. `seen` is set once the client has sent `marker`.

    A call through it can only complete while Python threads run: its answer is forwarded by
    one."""

    def __init__(self, target: tuple[str, int], marker: bytes) -> None:
        self.target = target
        self.marker = marker
        self.seen = threading.Event()
        self.released = threading.Event()
        self._stop = threading.Event()
        self._sent = b""
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # to notice stop()
        self.endpoint = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=DEADLINE)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            self._start(self._pump, client, upstream, False)
            self._start(self._pump, upstream, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, held: bool) -> None:
        try:
            while data := src.recv(65536):
                if held:
                    if not self.released.wait(DEADLINE):
                        break
                else:
                    with self._lock:
                        self._sent += data
                        if self.marker in self._sent:
                            self.seen.set()
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self._stop.set()
        self.released.set()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(DEADLINE)
        for sock in [self.listener, *sockets]:
            sock.close()


def test_a_blocking_call_lets_other_python_threads_run(etcd: Etcd, base_path: str) -> None:
    """While list() waits for etcd, Python threads run: a counting thread advances, and the
    call's own answer is carried by a Python proxy thread. With the GIL held during the call, the
    proxy could forward nothing: list() would end by its timeout, never with the node."""
    etcd.cmd("put", f"{base_path}/api/n", '{"v": "1"}')
    url = urlsplit(etcd.endpoints[0] if "://" in etcd.endpoints[0] else "http://" + etcd.endpoints[0])
    assert url.hostname and url.port
    proxy = HeldProxy((url.hostname, url.port), f"{base_path}/api/".encode())
    count = 0
    counting = True

    def counter() -> None:
        nonlocal count
        while counting:
            count += 1

    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(reg.list("api"))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            outcome.append(exc)

    counter_thread = threading.Thread(target=counter, daemon=True)
    counter_thread.start()
    reg = Registry([proxy.endpoint], base_path=base_path, timeout=DEADLINE)
    caller = threading.Thread(target=call)
    try:
        caller.start()
        # The list request has gone out and its answer is held: list() is blocked in the library.
        assert proxy.seen.wait(DEADLINE), f"list()'s request never reached the proxy; outcome: {outcome}"
        assert not outcome, f"list() returned before its answer was let through: {outcome}"
        start = count
        eventually("the counting thread to run while list() is blocked", lambda: count > start + 1000)
        assert not outcome, f"list() returned before its answer was let through: {outcome}"
        proxy.release()
        caller.join(DEADLINE)
        assert not caller.is_alive(), "list() did not return once its answer was let through"
        assert outcome == [[Node("n", {"v": "1"})]], (
            "list() got no answer: no Python thread ran to forward it while it blocked "
            f"(is the GIL held?): {outcome}")
    finally:
        counting = False
        proxy.release()
        caller.join(DEADLINE)
        reg.close()
        proxy.stop()
        counter_thread.join(DEADLINE)
