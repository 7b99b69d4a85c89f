"""The exceptions of etcd_registry.

Every one derives from :class:`RegistryError`, and the native module maps each error kind of
the core to exactly one of them (``python/src/errors.rs``). Where a built-in exception means the
same thing, the class derives from it too, so ``except TimeoutError`` or ``except ValueError``
work as a Python programmer expects.
"""

from __future__ import annotations

import builtins

__all__ = [
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
]


class RegistryError(Exception):
    """Base of every error raised by etcd_registry."""

    #: The core's error kind, e.g. ``"timeout"``.
    kind: str = "internal"


class InvalidArgument(RegistryError, ValueError):
    """An unusable argument: empty name, bad TTL, malformed endpoint, oversized info."""

    kind = "invalid argument"


class RegistryConnectionError(RegistryError, builtins.ConnectionError):
    """The connection broke during a call (etcd unreachable for a whole call is a
    ``RegistryTimeoutError`` naming the endpoint and the cause). Also a built-in ``ConnectionError``."""

    kind = "connection"


class RegistryTimeoutError(RegistryError, builtins.TimeoutError):
    """An etcd operation did not finish in time. Also a built-in ``TimeoutError``."""

    kind = "timeout"


class AuthError(RegistryError):
    """etcd rejected the credentials, or the user lacks a permission."""

    kind = "authentication"


class NotFoundError(RegistryError):
    """Something asked for does not exist (a lease, a registration)."""

    kind = "not found"


class ClosedError(RegistryError):
    """The registry was closed, or the object was created before ``fork()``."""

    kind = "closed"


class InternalError(RegistryError):
    """An unexpected answer from etcd, or a bug."""

    kind = "internal"


class TlsError(RegistryConnectionError):
    """The TLS handshake with etcd failed: its certificate is not signed by the CA given
    (``tls_ca``), not valid for the host name, or expired; or etcd refused the client
    certificate, or requires one. Also a :class:`RegistryConnectionError`. (Unreadable or
    malformed PEM is :class:`InvalidArgument`, raised by ``Registry(...)``.)"""

    kind = "tls"


class ResourceExhaustedError(RegistryError):
    """etcd refused for lack of a resource: its database is full (the NOSPACE alarm,
    "database space exceeded", until an operator frees space and disarms it) or it is
    overloaded ("too many requests"). A registration refused so keeps retrying and lands once
    etcd accepts writes again."""

    kind = "resource exhausted"
