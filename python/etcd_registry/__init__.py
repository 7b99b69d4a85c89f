"""Service registration and discovery on etcd that survives outages.

::

    import etcd_registry

    with etcd_registry.Registry(["127.0.0.1:2379"]) as reg:
        handle = reg.register("api", "node-1", {"address": "10.0.0.5:8080"}, ttl=30.0)
        handle.wait(timeout=5.0)
        for node in reg.list("api"):
            print(node.name, node.info)

A thin layer over the Rust core ``etcd-registry``: registrations keep their lease alive and
re-register after any outage, with backoff, until unregistered; watches resume after
disconnects. See ``python/README.md``.
"""

from __future__ import annotations

from ._errors import (
    AuthError,
    ClosedError,
    InternalError,
    InvalidArgument,
    NotFoundError,
    RegistryConnectionError,
    RegistryError,
    RegistryTimeoutError,
    TlsError,
    ResourceExhaustedError,
)
from ._native import (
    DEFAULT_BACKOFF_MAX,
    DEFAULT_BACKOFF_MIN,
    DEFAULT_BASE_PATH,
    DEFAULT_TIMEOUT,
    DEFAULT_TTL,
    MAX_TTL,
    Node,
    Registration,
    Registry,
    StatusEvent,
    Watch,
    WatchEvent,
    __version__,
    _dropped_events,
)

# Registers the handler that stops the library's threads at exit now, at import (see
# `_dispatch`): exit handlers registered after it run first, with callbacks still delivered.
from . import _dispatch  # noqa: F401

__all__ = [
    "Registry",
    "Registration",
    "Watch",
    "Node",
    "WatchEvent",
    "StatusEvent",
    "RegistryError",
    "InvalidArgument",
    "RegistryConnectionError",
    "RegistryTimeoutError",
    "AuthError",
    "NotFoundError",
    "ClosedError",
    "InternalError",
    "TlsError",
    "ResourceExhaustedError",
    "__version__",
    "DEFAULT_BASE_PATH",
    "DEFAULT_TIMEOUT",
    "DEFAULT_BACKOFF_MIN",
    "DEFAULT_BACKOFF_MAX",
    "DEFAULT_TTL",
    "MAX_TTL",
    "dropped_events",
]


def dropped_events() -> int:
    """How many status events this process dropped because its callbacks fell behind.

    Every ``on_status`` and ``on_event`` callback is fed from one queue of the core (the same
    policy as the C and Go bindings). Once the callback thread falls 1024 events behind, a
    watch's new event of a node is merged into that node's unread one, never dropped; of
    status events at most 1024 wait, and past that the oldest that is not an ``"unregistered"``
    is dropped, counted here, and a warning is logged. ``"unregistered"`` is never dropped.
    """
    return _dropped_events()
