"""The synchronous API against a real etcd: register, wait, list, unregister, close, and the
errors a user meets."""

from __future__ import annotations

import asyncio
import copy
import json
import multiprocessing
import pickle
import socket
from collections import OrderedDict
from typing import Iterator

import pytest

import etcd_registry
from etcd_registry import (
    AuthError,
    ClosedError,
    InvalidArgument,
    Node,
    Registry,
    RegistryConnectionError,
    RegistryError,
    RegistryTimeoutError,
)

from conftest import DEADLINE, Etcd, Recorder, eventually


def test_register_wait_list_unregister(registry: Registry, etcd: Etcd, base_path: str) -> None:
    handle = registry.register("api", "node-1", {"address": "10.0.0.5:8080", "zone": "a"}, ttl=30.0)
    assert handle.state in ("registering", "registered")
    assert handle.wait(timeout=DEADLINE) is True
    assert handle.state == "registered"
    assert handle.key == f"{base_path}/api/node-1"
    assert handle.service == "api"
    assert handle.node == Node("node-1", {"address": "10.0.0.5:8080", "zone": "a"})
    assert handle.ttl == 30
    assert isinstance(handle.lease_id, int)

    # What etcd holds is the Go library's wire format: a JSON object of strings.
    stored = etcd.get_prefix(f"{base_path}/api/")
    assert json.loads(stored[f"{base_path}/api/node-1"]) == {"address": "10.0.0.5:8080", "zone": "a"}

    nodes = registry.list("api")
    assert [n.name for n in nodes] == ["node-1"]
    assert nodes[0].info == {"address": "10.0.0.5:8080", "zone": "a"}
    assert registry.list("other") == []

    handle.unregister()
    assert handle.state == "unregistered"
    assert registry.list("api") == []
    assert etcd.get_prefix(f"{base_path}/api/") == {}
    handle.unregister()  # idempotent


def test_context_managers_unregister_and_close(etcd: Etcd, base_path: str) -> None:
    with Registry(etcd.endpoints, base_path=base_path) as reg:
        with reg.register("api", "a", {"k": "v"}) as first:
            assert first.wait(DEADLINE)
            assert [n.name for n in reg.list("api")] == ["a"]
        assert first.state == "unregistered"
        assert reg.list("api") == []
        second = reg.register("api", "b")
        assert second.wait(DEADLINE)
        assert not reg.closed
    # close() on exit unregisters everything.
    assert reg.closed
    assert second.state == "unregistered"
    assert etcd.get_prefix(f"{base_path}/") == {}


def test_info_may_be_any_mapping_or_none(registry: Registry) -> None:
    a = registry.register("api", "a", OrderedDict(x="1"))
    b = registry.register("api", "b")
    c = registry.register("api", "c", None)
    for handle in (a, b, c):
        assert handle.wait(DEADLINE)
    assert {n.name: n.info for n in registry.list("api")} == {"a": {"x": "1"}, "b": {}, "c": {}}


def test_reregistering_a_node_replaces_it(registry: Registry) -> None:
    old = registry.register("api", "n", {"v": "1"})
    assert old.wait(DEADLINE)
    new = registry.register("api", "n", {"v": "2"})
    assert new.wait(DEADLINE)
    eventually("the old registration to end", lambda: old.state == "unregistered")
    assert [n.info for n in registry.list("api")] == [{"v": "2"}]


def test_node_value_type() -> None:
    node = Node("n1", {"a": "b"})
    assert node.name == "n1"
    assert node.info == {"a": "b"}
    node.info["a"] = "changed"  # a copy: the node is immutable
    assert node.info == {"a": "b"}
    assert node == Node("n1", {"a": "b"})
    assert node != Node("n1", {"a": "c"})
    assert len({node, Node("n1", {"a": "b"})}) == 1
    assert repr(node) == "Node(name='n1', info={'a': 'b'})"
    assert Node("x").info == {}


#: Strings whose repr Python quotes or escapes: quotes of either kind or both, a backslash,
#: control characters, non-ASCII (printable, kept as is, and not, escaped).
AWKWARD_STRINGS = [
    "it's",
    'say "hi"',
    'it\'s "both"',
    "back\\slash",
    "new\nline\ttab\rreturn",
    "naïve ☃ \U0001f600",
    "\x00\x7f\u200b\x85",
]


@pytest.mark.parametrize("text", AWKWARD_STRINGS)
def test_reprs_quote_strings_as_python_does(text: str) -> None:
    """Names, info and kinds appear in the reprs as Python's own repr() writes them, and a
    Node's repr makes the same node again."""
    node = Node(text, {text: text, "k": "v"})
    info = dict(sorted({text: text, "k": "v"}.items()))  # kept sorted
    assert repr(node) == f"Node(name={text!r}, info={info!r})"
    assert eval(repr(node), {"Node": Node}) == node
    # Events have no constructor: made as unpickling makes them.
    event = etcd_registry.WatchEvent._restore("removed", node, 7)  # type: ignore[attr-defined]
    assert repr(event) == f"WatchEvent(kind='removed', node={node!r}, revision=7)"
    status = etcd_registry.StatusEvent._restore(  # type: ignore[attr-defined]
        "unregistered", text, text, None, None, None, None
    )
    assert repr(status) == f"StatusEvent(kind='unregistered', service={text!r}, node_name={text!r})"


def test_nodes_and_events_pickle_and_copy(registry: Registry) -> None:
    """Nodes and the events received can be pickled (e.g. sent through a
    `multiprocessing.Queue`) and copied, shallow or deep, with every field kept."""
    recorder = Recorder()
    with registry.watch("api") as watch:
        registry.register("api", "n", {"k": "v"}, on_status=recorder)
        added = watch.next_event(timeout=DEADLINE)
        nodes = watch.nodes()
    assert added is not None and added.kind == "added"
    assert nodes == [Node("n", {"k": "v"})]
    recorder.wait_kind("registered")
    registered = recorder.items[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host, port = s.getsockname()
    failures = Recorder()
    with Registry([f"{host}:{port}"], timeout=1.0) as unreachable:
        unreachable.register("api", "n", on_status=failures)
        failures.wait_kind("failed")
    failed = failures.items[0]
    assert isinstance(failed.error, RegistryTimeoutError)

    def watch_fields(e: etcd_registry.WatchEvent) -> tuple[object, ...]:
        return (type(e), e.kind, e.node, e.revision)

    def status_fields(e: etcd_registry.StatusEvent) -> tuple[object, ...]:
        error = (type(e.error), str(e.error), e.error.kind) if isinstance(e.error, RegistryError) else e.error
        return (type(e), e.kind, e.service, e.node_name, e.attempt, e.delay, error, e.lease_id)

    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(nodes, protocol)) == nodes
        assert watch_fields(pickle.loads(pickle.dumps(added, protocol))) == watch_fields(added)
        for status in (registered, failed):
            assert status_fields(pickle.loads(pickle.dumps(status, protocol))) == status_fields(status)
    assert copy.deepcopy(nodes) == nodes and copy.copy(nodes[0]) == nodes[0]
    assert watch_fields(copy.deepcopy(added)) == watch_fields(copy.copy(added)) == watch_fields(added)
    for status in (registered, failed):
        assert status_fields(copy.deepcopy(status)) == status_fields(status)
        assert status_fields(copy.copy(status)) == status_fields(status)
    queue: multiprocessing.Queue[object] = multiprocessing.Queue()
    try:
        queue.put(added)
        queue.put(failed)
        assert watch_fields(queue.get(timeout=DEADLINE)) == watch_fields(added)  # type: ignore[arg-type]
        assert status_fields(queue.get(timeout=DEADLINE)) == status_fields(failed)  # type: ignore[arg-type]
    finally:
        queue.close()
        queue.join_thread()


def test_wrong_argument_types_are_type_errors(registry: Registry) -> None:
    with pytest.raises(TypeError, match="info value for \"k\" must be str, not int"):
        registry.register("api", "n", {"k": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="info keys must be str"):
        registry.register("api", "n", {1: "v"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="mapping"):
        registry.register("api", "n", ["k", "v"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        registry.register(42, "n")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        registry.register("api", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_status must be callable"):
        registry.register("api", "n", on_status="print")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_event must be callable"):
        registry.watch("api", on_event=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        registry.list(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='endpoints must be a list of "host:port" strings, not a str'):
        Registry("127.0.0.1:2379")  # type: ignore[arg-type]  # a str is not a list of endpoints
    with pytest.raises(TypeError):
        Node("n", {"k": b"v"})  # type: ignore[dict-item]
    assert registry.list("api") == [], "nothing was registered by the failed calls"


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.register("", "n"),
        lambda r: r.register("api", "  "),
        lambda r: r.register("api", ".."),
        lambda r: r.register("api", "n", ttl=0),
        lambda r: r.register("api", "n", ttl=-1.0),
        lambda r: r.register("api", "n", ttl=float("nan")),
        lambda r: r.register("api", "n", ttl=1e12),
        lambda r: r.register("api", "n", {"": "v"}),
        lambda r: r.register("api", "n", {"big": "x" * 2_000_000}),
        lambda r: r.list(""),
        lambda r: r.watch(""),
    ],
    ids=["empty service", "blank node", "dot-dot", "zero ttl", "negative ttl", "nan ttl", "huge ttl",
         "empty info key", "oversized info", "list empty", "watch empty"],
)
def test_invalid_arguments(registry: Registry, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as info:
        call(registry)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, RegistryError)
    assert info.value.kind == "invalid argument"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoints": []},
        {"endpoints": ["localhost"]},
        {"endpoints": ["ftp://h:1"]},
        {"endpoints": ["h:1"], "timeout": 0},
        {"endpoints": ["h:1"], "timeout": -1},
        {"endpoints": ["h:1"], "backoff_min": 2.0, "backoff_max": 1.0},
        {"endpoints": ["h:1"], "password": "secret"},
    ],
    ids=["no endpoints", "no port", "bad scheme", "zero timeout", "negative timeout", "backoff", "password alone"],
)
def test_invalid_configuration(kwargs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument):
        Registry(**kwargs)


def test_seconds_are_converted_here_and_judged_by_the_core(registry: Registry) -> None:
    # Zero is a valid Duration: the core refuses it, with its own message.
    with pytest.raises(InvalidArgument, match="ttl must be greater than zero"):
        registry.register("api", "n", ttl=0)
    with pytest.raises(InvalidArgument, match="larger than etcd's maximum"):
        registry.register("api", "n", ttl=1e12)
    with pytest.raises(InvalidArgument, match="timeout must be greater than zero"):
        Registry(["h:1"], timeout=0)
    with pytest.raises(InvalidArgument, match="backoff must satisfy"):
        Registry(["h:1"], backoff_min=0)
    # Far beyond any use, yet a duration: the core refuses it (it would overflow the clock).
    with pytest.raises(InvalidArgument, match=r"timeout must be at most .*\(100 years\)"):
        Registry(["h:1"], timeout=1e19)
    with pytest.raises(InvalidArgument, match="backoff maximum must be at most"):
        Registry(["h:1"], backoff_max=1e19)
    # What cannot become a duration at all is refused by the conversion, naming the argument.
    for bad in (float("nan"), float("-inf"), -1.0, -(10**400)):
        with pytest.raises(InvalidArgument, match="ttl must be a finite, non-negative number"):
            registry.register("api", "n", ttl=bad)
        with pytest.raises(InvalidArgument, match="backoff_max must be a finite"):
            Registry(["h:1"], backoff_max=bad)
    with pytest.raises(InvalidArgument, match="ttl is too large, got 1e"):
        registry.register("api", "n", ttl=1e300)
    # An int too large for a float is too large, as infinity is (not an OverflowError).
    for huge in (float("inf"), 10**400):
        with pytest.raises(InvalidArgument, match="ttl is too large"):
            registry.register("api", "n", ttl=huge)
        with pytest.raises(InvalidArgument, match="timeout is too large"):
            Registry(["h:1"], timeout=huge)
    with pytest.raises(TypeError):
        registry.register("api", "n", ttl="10")  # type: ignore[arg-type]
    # A bool is an int to Python, but ttl=True is a mistake, not one second.
    with pytest.raises(TypeError, match="expected a number of seconds \\(int or float\\), got bool\\nwhile processing 'ttl'"):
        registry.register("api", "n", ttl=True)
    with pytest.raises(TypeError, match="got bool\\nwhile processing 'backoff_min'"):
        Registry(["h:1"], backoff_min=False)
    assert registry.list("api") == []


def test_wait_timeout_semantics(registry: Registry) -> None:
    handle = registry.register("api", "n")
    with pytest.raises(InvalidArgument):
        handle.wait(timeout=-1)
    with pytest.raises(TypeError, match="got bool\\nwhile processing 'timeout'"):
        handle.wait(timeout=True)
    assert handle.wait(timeout=None) is True
    # An int too large for a float is no limit, as float("inf") is.
    assert handle.wait(timeout=10**400) is True
    # Registered once: waiting again answers at once, also with a zero timeout.
    assert handle.wait(timeout=0) is True
    handle.unregister()
    assert handle.wait(timeout=0) is True


def test_wait_returns_false_on_timeout_while_first_attempt_hangs() -> None:
    # A listener that never answers: the first attempt hangs until the call timeout (60 s),
    # so wait() runs out first.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    host, port = silent.getsockname()
    reg = Registry([f"{host}:{port}"], timeout=60.0)
    try:
        handle = reg.register("api", "n")
        assert handle.wait(timeout=0.3) is False
        assert handle.state == "registering"
    finally:
        # Refuse the pending connection, so that close() need not wait for the attempt.
        silent.close()
        reg.close()


def test_unreachable_etcd_waits_for_the_timeout_names_the_cause_and_retries_go_on() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host, port = s.getsockname()
    # Nothing listens on `port` now. Calls wait for etcd until their timeout (wait-for-ready),
    # then fail with a TimeoutError whose message names the endpoint and the cause.
    with Registry([f"{host}:{port}"], timeout=1.0, backoff_min=0.1, backoff_max=0.2) as reg:
        with pytest.raises(RegistryTimeoutError) as info:
            reg.list("api")
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, RegistryError)
        message = str(info.value)
        assert "did not finish within" in message, message
        assert "deadline exceeded" not in message, "Go's idiom stays in the Go binding"
        assert f"http://{host}:{port}" in message, message
        assert "connection refused" in message, message
        handle = reg.register("api", "n")
        with pytest.raises(TimeoutError) as waited:
            handle.wait(timeout=DEADLINE)
        assert "connection refused" in str(waited.value), str(waited.value)
        assert handle.state == "registering", "retries go on in the background"


def test_silent_etcd_is_a_timeout_error() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        host, port = silent.getsockname()
        with Registry([f"{host}:{port}"], timeout=0.5) as reg:
            with pytest.raises(RegistryTimeoutError) as info:
                reg.list("api")
            assert isinstance(info.value, TimeoutError)
            assert isinstance(info.value, RegistryError)
            assert info.value.kind == "timeout"


@pytest.fixture
def auth_etcd(etcd_factory) -> Iterator[Etcd]:  # type: ignore[no-untyped-def]
    server = etcd_factory()
    server.cmd("enable-auth", "svc", "s3cret")
    yield server


def test_auth_success_and_wrong_password(auth_etcd: Etcd) -> None:
    with Registry(auth_etcd.endpoints, username="svc", password="s3cret", timeout=5.0) as reg:
        handle = reg.register("api", "n", {"a": "b"})
        assert handle.wait(DEADLINE)
        assert [n.name for n in reg.list("api")] == ["n"]
    with Registry(auth_etcd.endpoints, username="svc", password="wrong", timeout=5.0) as reg:
        handle = reg.register("api", "n")
        with pytest.raises(AuthError) as info:
            handle.wait(DEADLINE)
        assert isinstance(info.value, RegistryError)
        with pytest.raises(AuthError):
            reg.list("api")


def test_every_call_after_close_raises_closed_error(etcd: Etcd, base_path: str) -> None:
    reg = Registry(etcd.endpoints, base_path=base_path)
    handle = reg.register("api", "n")
    assert handle.wait(DEADLINE)
    watch = reg.watch("api")
    reg.close()
    reg.close()  # idempotent
    assert reg.closed
    for call in (
        lambda: reg.register("api", "m"),
        lambda: reg.list("api"),
        lambda: reg.watch("api"),
        lambda: reg.list_async("api"),
        lambda: reg.services(),
        lambda: reg.services_async(),
        lambda: reg.watch_async("api"),
    ):
        with pytest.raises(ClosedError) as info:
            call()
        assert isinstance(info.value, RegistryError)
        assert info.value.kind == "closed"
    # Its objects end too: the registration is unregistered, the watch is over.
    assert handle.state == "unregistered"
    handle.unregister()
    eventually("the watch to end", lambda: watch.closed)
    assert all(e.kind == "added" for e in watch), "iteration ends after close"
    with pytest.raises(ClosedError):
        watch.nodes()
    with reg:  # entering a closed registry is allowed, closing again is a no-op
        pass


def test_exception_hierarchy() -> None:
    for cls in (
        etcd_registry.InvalidArgument,
        etcd_registry.RegistryConnectionError,
        etcd_registry.RegistryTimeoutError,
        etcd_registry.AuthError,
        etcd_registry.NotFoundError,
        etcd_registry.ClosedError,
        etcd_registry.InternalError,
    ):
        assert issubclass(cls, RegistryError)
    assert issubclass(InvalidArgument, ValueError)
    assert issubclass(RegistryTimeoutError, TimeoutError)
    assert issubclass(RegistryConnectionError, ConnectionError)
    assert set(etcd_registry.__all__) <= set(dir(etcd_registry))


def test_properties_and_reprs(registry: Registry, etcd: Etcd, base_path: str) -> None:
    assert registry.endpoints == etcd.endpoints
    assert registry.base_path == base_path
    assert not registry.closed
    assert repr(registry).startswith("Registry(endpoints=[")
    handle = registry.register("api", "n")
    assert handle.wait(DEADLINE)
    assert repr(handle) == f'Registration(key="{handle.key}", state="registered")'
    with registry.watch("api") as watch:
        assert repr(watch) == 'Watch(service="api", closed=False)'
    assert isinstance(etcd_registry.__version__, str)


def test_services_names_each_service_with_nodes(registry: Registry, etcd: Etcd, base_path: str) -> None:
    assert registry.services() == []
    handles = [registry.register(s, n, {}, ttl=30.0) for s, n in [("web", "a"), ("api", "a"), ("api", "b")]]
    for handle in handles:
        assert handle.wait(timeout=DEADLINE)
    etcd.cmd("put", f"{base_path}/a/b/n1", "{}")  # below a node: node "b/n1" of service "a"
    etcd.cmd("put", f"{base_path}/a-b/n1", "{}")
    assert registry.services() == ["a", "a-b", "api", "web"]
    handles[0].unregister()
    assert registry.services() == ["a", "a-b", "api"]

    async def services_async() -> list[str]:
        return await registry.services_async()

    assert asyncio.run(services_async()) == ["a", "a-b", "api"]


def test_active_endpoint_names_the_member_in_use_without_dialing() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg = Registry([f"127.0.0.1:{port}"])
    assert reg.active_endpoint == f"http://127.0.0.1:{port}"
    reg.close()
    assert reg.active_endpoint == f"http://127.0.0.1:{port}"  # still answered after close


def test_value_bytes_are_what_go_json_marshal_writes(registry: Registry, etcd: Etcd, base_path: str) -> None:
    info = {"a<b>&c": "\u2028\u2029\b\f\n\r\t\x00\x1f\x7f\"\\/", "é": "日本😀"}
    handle = registry.register("bytes", "n1", info, ttl=30.0)
    assert handle.wait(timeout=DEADLINE) is True
    stored = etcd.get_prefix(f"{base_path}/bytes/")[f"{base_path}/bytes/n1"]
    # Go's json.Marshal of the same map[string]string, byte for byte.
    go = '{"a\\u003cb\\u003e\\u0026c":"\\u2028\\u2029\\b\\f\\n\\r\\t\\u0000\\u001f\x7f\\"\\\\/","é":"日本😀"}'
    assert stored == go
    assert registry.list("bytes")[0].info == info


def test_defaults_are_the_cores() -> None:
    import etcd_registry

    assert etcd_registry.DEFAULT_BASE_PATH == "/services"
    assert etcd_registry.DEFAULT_TIMEOUT == 10.0
    assert (etcd_registry.DEFAULT_BACKOFF_MIN, etcd_registry.DEFAULT_BACKOFF_MAX) == (1.0, 30.0)
    assert etcd_registry.DEFAULT_TTL == 10.0
    assert etcd_registry.MAX_TTL == 9_000_000_000
    # The signatures' defaults (literals, as the stubs show them) are these constants.
    import inspect

    new = inspect.signature(etcd_registry.Registry).parameters
    assert new["base_path"].default == etcd_registry.DEFAULT_BASE_PATH
    assert new["timeout"].default == etcd_registry.DEFAULT_TIMEOUT
    assert new["backoff_min"].default == etcd_registry.DEFAULT_BACKOFF_MIN
    assert new["backoff_max"].default == etcd_registry.DEFAULT_BACKOFF_MAX
    register = inspect.signature(etcd_registry.Registry.register).parameters
    assert register["ttl"].default == etcd_registry.DEFAULT_TTL
    with etcd_registry.Registry(["127.0.0.1:1"]) as reg:
        assert reg.base_path == etcd_registry.DEFAULT_BASE_PATH
