"""Type stubs of the native module (checked against it by mypy's stubtest)."""

import builtins
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Literal, Optional, Union, final

from typing_extensions import Self

__all__ = [
    "DEFAULT_BACKOFF_MAX",
    "DEFAULT_BACKOFF_MIN",
    "DEFAULT_BASE_PATH",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TTL",
    "MAX_TTL",
    "Node",
    "Registration",
    "Registry",
    "StatusEvent",
    "Watch",
    "WatchEvent",
    "_CALL",
    "_LOG",
    "_complete",
    "_dropped_events",
    "__version__",
    "_set_log_level",
    "_stop_dispatch",
    "_take",
    "_write_unraisable",
]

__version__: Final[str]
_LOG: Final[int]
_CALL: Final[int]
#: The core's defaults and limits (durations in seconds).
DEFAULT_BASE_PATH: Final[str]
DEFAULT_TIMEOUT: Final[float]
DEFAULT_BACKOFF_MIN: Final[float]
DEFAULT_BACKOFF_MAX: Final[float]
DEFAULT_TTL: Final[float]
MAX_TTL: Final[float]

_RegistrationState = Literal["registering", "registered", "retrying", "unregistered"]
_StatusKind = Literal[
    "registered", "failed", "keepalive_lost", "retrying", "reregistered", "updated", "unregistered"
]
_WatchEventKind = Literal["added", "updated", "removed", "resynced"]

@final
class Node:
    """A service node: its name and its info."""

    def __new__(cls, name: str, info: Optional[Mapping[str, str]] = None) -> Self: ...
    @property
    def name(self) -> str: ...
    @property
    def info(self) -> dict[str, str]:
        """A new dict on every access."""
    def __eq__(self, other: object, /) -> bool: ...
    def __ne__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class WatchEvent:
    """One change of a watched service."""

    @property
    def kind(self) -> _WatchEventKind: ...
    @property
    def node(self) -> Optional[Node]:
        """The node (for "removed", its last known info); None for "resynced"."""
    @property
    def revision(self) -> int: ...

@final
class StatusEvent:
    """A change of a registration, as passed to ``on_status``."""

    @property
    def kind(self) -> _StatusKind: ...
    @property
    def service(self) -> str: ...
    @property
    def node_name(self) -> str: ...
    @property
    def attempt(self) -> Optional[int]:
        """For "retrying": 1 for the first retry after a failure, counting up."""
    @property
    def delay(self) -> Optional[float]:
        """For "retrying": seconds until the attempt."""
    @property
    def error(self) -> Optional[BaseException]:
        """For "failed", "keepalive_lost" and "retrying": why (a RegistryError)."""
    @property
    def lease_id(self) -> Optional[int]:
        """For "registered", "reregistered" and "updated": the lease of the key."""

@final
class Registration:
    """One registered node, returned by :meth:`Registry.register`."""

    @property
    def service(self) -> str: ...
    @property
    def node(self) -> Node:
        """The node with its current info (as registered, or as last updated)."""
    @property
    def key(self) -> str: ...
    @property
    def ttl(self) -> int:
        """The lease TTL in whole seconds."""
    @property
    def state(self) -> _RegistrationState: ...
    @property
    def lease_id(self) -> Optional[int]: ...
    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once registered, False if ``timeout`` seconds pass first.

        Raises the error of the failed attempts if attempts failed before any success (retries
        go on in the background), ``ClosedError`` if unregistered before that.
        """
    def wait_async(self, timeout: Optional[float] = None) -> Awaitable[bool]: ...
    def update(self, info: Optional[Mapping[str, str]]) -> None:
        """Replaces the node's info: one put on the same lease, without unregistering.

        Returns at once, like ``register``; a ``"updated"`` status event follows once the new
        info is in etcd. Made while etcd is down, it is put when etcd is back, never lost;
        concurrent updates end with the last one in etcd. Raises ``InvalidArgument`` for an
        empty key or oversized info, ``TypeError`` for anything but a mapping of str to str,
        ``NotFoundError`` once unregistered (or replaced), ``ClosedError`` after close.
        """
    def unregister(self) -> None:
        """Stops keeping the key alive and deletes it. Idempotent.

        Never fails because etcd is unreachable: the delete is tried within the registry's
        timeout; when etcd cannot be reached a warning is logged (logger ``etcd_registry``),
        the state is ``"unregistered"`` all the same, and the key expires with its lease
        (within the TTL), or, when other nodes of the registry keep that lease alive, is
        deleted as soon as etcd answers again. A node that never reached etcd (unreachable
        ever since it was registered) is unregistered at once: nothing of it is in etcd, and
        nothing of it is written afterwards. Raises only when etcd answered and refused
        (e.g. ``AuthError``).

        With ``on_status``, returns once the callback has been called with ``"unregistered"``
        (from inside a callback, the events queued before it are delivered first, nested).
        """
    def unregister_async(self) -> Awaitable[None]:
        """``unregister()`` for asyncio: waits for etcd on the library's runtime, not in the
        event loop's thread. The unregistration begins when this is called (not when it
        raises, e.g. ``RuntimeError`` with no running event loop); cancelling the awaiting task
        does not stop it. Awaited inside a callback (``asyncio.run`` there), the events queued
        before it are delivered first, nested, as for ``unregister()``. ``async with`` a
        registration unregisters it this way on exit."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None: ...

@final
class Watch:
    """A watch on one service: its live node set and its events, in order."""

    @property
    def service(self) -> str: ...
    @property
    def revision(self) -> int: ...
    @property
    def closed(self) -> bool:
        """True once the watch has stopped: closed, or its registry closed. Events received
        before its registry closed can still be read (``next_event``, iteration) until they run
        out, so loop on those rather than on ``closed``; ``close()`` drops them."""
    def nodes(self) -> list[Node]: ...
    def next_event(self, timeout: Optional[float] = None) -> Optional[WatchEvent]:
        """The next event; None on timeout or once the watch has ended."""
    def __iter__(self) -> Self: ...
    def __next__(self) -> WatchEvent: ...
    def __aiter__(self) -> Self: ...
    def __anext__(self) -> Awaitable[WatchEvent]: ...
    def close(self) -> None:
        """Stops the watch; no ``on_event`` call for it runs or starts after this returns
        (called from inside one, none starts after it). Idempotent."""
    def close_async(self) -> Awaitable[None]:
        """``close()`` for asyncio: stops the watch when called (not when it raises, e.g.
        ``RuntimeError`` with no running event loop) and resolves once no ``on_event`` call for
        it runs, waiting without blocking the event loop, so that a callback that waits for the
        loop (``asyncio.run_coroutine_threadsafe(...).result()``) can finish, where ``close()``
        would block the loop it waits for. ``async with`` a watch closes it this way."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None: ...

@final
class Registry:
    """Registers service nodes in etcd and discovers them."""

    def __new__(
        cls,
        endpoints: Sequence[str],
        base_path: str = "/services",
        username: Optional[str] = None,
        password: Optional[str] = None,
        timeout: float = 10.0,
        *,
        backoff_min: float = 1.0,
        backoff_max: float = 30.0,
        tls_ca: Optional[Union[str, os.PathLike[str], bytes, bytearray, memoryview]] = None,
        tls_cert: Optional[Union[str, os.PathLike[str], bytes, bytearray, memoryview]] = None,
        tls_key: Optional[Union[str, os.PathLike[str], bytes, bytearray, memoryview]] = None,
        tls_server_name: Optional[str] = None,
    ) -> Self: ...
    @property
    def endpoints(self) -> builtins.list[str]: ...
    @property
    def base_path(self) -> str: ...
    @property
    def active_endpoint(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def register(
        self,
        service: str,
        node: str,
        info: Optional[Mapping[str, str]] = None,
        ttl: float = 10.0,
        on_status: Optional[Callable[[StatusEvent], object]] = None,
    ) -> Registration: ...
    def list(self, service: str) -> builtins.list[Node]: ...
    def list_async(self, service: str) -> Awaitable[builtins.list[Node]]: ...
    def services(self) -> builtins.list[str]: ...
    def services_async(self) -> Awaitable[builtins.list[str]]: ...
    def watch(
        self, service: str, on_event: Optional[Callable[[WatchEvent], object]] = None
    ) -> Watch: ...
    def watch_async(
        self, service: str, on_event: Optional[Callable[[WatchEvent], object]] = None
    ) -> Awaitable[Watch]: ...
    def close(self) -> None:
        """Unregisters everything (revoking the leases), stops the watches. Idempotent.

        Never fails because etcd is unreachable: it tries within the timeout, logs a warning
        when it could not, and the keys expire with their leases (within the TTL).

        Returns once every ``on_status`` callback of its registrations has been called with
        ``"unregistered"``, and no ``on_event`` callback of its watches runs.
        """
    def close_async(self) -> Awaitable[None]:
        """``close()`` for asyncio: waits for etcd on the library's runtime, not in the event
        loop's thread. The close begins when this is called (not when it raises, e.g.
        ``RuntimeError`` with no running event loop); cancelling the awaiting task does not
        stop it. Awaited inside a callback, the events queued before it are delivered first,
        nested, as for ``close()``. ``async with Registry(...)`` closes this way on exit."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None: ...

def _take(timeout: float) -> Optional[builtins.list[tuple[Any, ...]]]: ...
def _complete(timeout: float) -> bool: ...
def _dropped_events() -> int: ...
def _write_unraisable(exc: BaseException, callback: object) -> None: ...
def _stop_dispatch(drain: bool = False, grace: float = 0.0) -> None: ...
def _set_log_level(level: int) -> None: ...
