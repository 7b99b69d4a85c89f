//! Named errors whose kinds the bindings map one-to-one to their own error types.

use std::fmt;
use std::time::Duration;

/// What went wrong, in a form a binding can map without parsing text.
///
/// The numbers are stable: the C ABI exposes them as its status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller passed something unusable (empty name, bad TTL, bad endpoint, oversized info).
    InvalidArgument = 1,
    /// The connection broke during a call. (etcd unreachable for a whole call is a `Timeout`,
    /// whose message names the endpoint and the cause.)
    Connection = 3,
    /// An operation did not finish within the configured timeout.
    Timeout = 4,
    /// etcd rejected the credentials or the permission.
    Auth = 5,
    /// Something asked for does not exist (a lease, a registration).
    NotFound = 6,
    /// The registry (or the handle) was closed.
    Closed = 7,
    /// Anything else: an unexpected answer from etcd or a bug.
    Internal = 9,
    /// The TLS handshake with etcd failed: its certificate is not signed by the CA, not valid
    /// for the host name, or expired; or etcd refused the client certificate (or its absence).
    /// (10 is taken by the C ABI's invalid UTF-8 status.) Problems of the TLS files themselves
    /// are `InvalidArgument`.
    Tls = 11,
    /// etcd refused for lack of a resource, not because of what was asked: its database is full
    /// (the NOSPACE alarm, "database space exceeded", until an operator frees space and disarms
    /// it) or it is overloaded ("too many requests"). Registrations refused so are retried with
    /// backoff and land once etcd accepts writes again. (A request larger than etcd takes is
    /// `InvalidArgument`, whether etcd or its gRPC layer refuses it.)
    ResourceExhausted = 12,
}

impl ErrorKind {
    /// A short lowercase name, e.g. `"timeout"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Auth => "authentication",
            ErrorKind::NotFound => "not found",
            ErrorKind::Closed => "closed",
            ErrorKind::Internal => "internal",
            ErrorKind::Tls => "tls",
            ErrorKind::ResourceExhausted => "resource exhausted",
        }
    }
}

/// The error of every fallible call of this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    /// A `Timeout` of a wait for something to happen (e.g. the first registration), not of
    /// an attempt to reach etcd.
    wait: bool,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Creates an error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            wait: false,
        }
    }

    /// The kind, for mapping to a binding's error type.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the kind prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    pub(crate) fn closed() -> Self {
        Error::new(ErrorKind::Closed, "the registry is closed")
    }

    /// Whether this is the `Timeout` of a wait that ran out (`wait_registered` found the
    /// registration still trying), rather than an etcd call or connection attempt that timed
    /// out. Bindings read it to tell "not yet" from a failure, without timing anything.
    pub fn is_wait_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout && self.wait
    }

    /// An etcd call (or the wait for etcd to be reachable) that did not finish in time. The
    /// text has no language idiom: Go adds "context deadline exceeded", Python's class is a
    /// `TimeoutError`.
    pub(crate) fn timeout(what: &str, after: Duration) -> Self {
        Error::new(
            ErrorKind::Timeout,
            format!("{what} did not finish within {after:?}"),
        )
    }

    /// A wait of the caller's that ran out before what it waited for happened.
    pub(crate) fn wait_timeout(what: &str, after: Duration) -> Self {
        Error {
            wait: true,
            ..Error::new(
                ErrorKind::Timeout,
                format!("{what} did not happen within {after:?}"),
            )
        }
    }
}

impl From<etcd_client::Error> for Error {
    fn from(err: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        let tls = match &err {
            E::GRpcStatus(status) => crate::tls::failure_of(status),
            E::TransportError(e) => crate::tls::failure_of(e),
            E::IoError(e) => crate::tls::failure_of(e),
            _ => None,
        };
        if let Some(message) = tls {
            return Error::new(ErrorKind::Tls, message);
        }
        let kind = match &err {
            E::GRpcStatus(status) => kind_of_status(status),
            E::TransportError(_) | E::IoError(_) => ErrorKind::Connection,
            E::InvalidArgs(_) | E::InvalidUri(_) | E::EndpointError(_) => {
                ErrorKind::InvalidArgument
            }
            E::LeaseKeepAliveError(msg) if msg.contains("not found") => ErrorKind::NotFound,
            E::LeaseKeepAliveError(_) | E::WatchError(_) => ErrorKind::Connection,
            _ => ErrorKind::Internal,
        };
        let mut message = match &err {
            E::GRpcStatus(status) => status.message().to_string(),
            other => other.to_string(),
        };
        // Transport failures name their cause ("connection refused"), not just "transport error".
        if kind == ErrorKind::Connection {
            if let Some(cause) = root_cause(&err) {
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
        }
        Error::new(kind, message)
    }
}

/// Why etcd could not be reached ("connection refused", "failed to lookup address …"), when
/// `err` is a failure to connect, i.e. the request never reached etcd. `None` for any other
/// error, including a connection that broke during the request.
pub(crate) fn unreachable_cause(err: &etcd_client::Error) -> Option<String> {
    let connect_failed = chain(err).any(|e| {
        let text = e.to_string();
        text.starts_with("tcp connect error")
            || text.starts_with("dns error")
            || text.starts_with("error trying to connect")
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                use std::io::ErrorKind as K;
                matches!(
                    io.kind(),
                    K::ConnectionRefused
                        | K::HostUnreachable
                        | K::NetworkUnreachable
                        | K::AddrNotAvailable
                )
            })
    });
    if !connect_failed {
        return None;
    }
    Some(root_cause(err).unwrap_or_else(|| err.to_string()))
}

/// The errors of `err`'s source chain, `err` first (etcd-client's error does not link its
/// source: the chain starts from what it wraps).
fn chain(err: &etcd_client::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    use etcd_client::Error as E;
    let first: &(dyn std::error::Error + 'static) = match err {
        E::GRpcStatus(status) => status,
        E::TransportError(e) => e,
        E::IoError(e) => e,
        other => other,
    };
    std::iter::successors(Some(first), |e| e.source())
}

/// The innermost cause of a transport failure in words: an I/O error's kind when it says it all
/// ("connection refused", "timed out"), else the innermost error's text.
fn root_cause(err: &etcd_client::Error) -> Option<String> {
    let mut errors = chain(err);
    errors.next();
    let last = errors.last()?;
    if let Some(io) = chain(err).find_map(|e| e.downcast_ref::<std::io::Error>()) {
        use std::io::ErrorKind as K;
        return Some(match io.kind() {
            K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::AddrNotAvailable
            | K::TimedOut
            | K::BrokenPipe => io.kind().to_string(),
            _ => io.to_string(),
        });
    }
    Some(last.to_string())
}

/// Whether etcd's message refuses an auth token older than its auth store (see
/// `conn::is_old_auth_revision`).
pub(crate) fn is_old_auth_revision(message: &str) -> bool {
    message.contains("revision of auth store is old")
        || message.contains("revision in header is old")
}

fn kind_of_status(status: &tonic::Status) -> ErrorKind {
    use tonic::Code;
    let message = status.message();
    if is_old_auth_revision(message) {
        return ErrorKind::Auth;
    }
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => ErrorKind::Auth,
        Code::InvalidArgument
            if message.contains("authentication failed")
                || message.contains("user name is empty") =>
        {
            ErrorKind::Auth
        }
        Code::FailedPrecondition if message.contains("authentication") => ErrorKind::Auth,
        Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
        // gRPC's own refusal of a request beyond etcd's `--max-request-bytes` plus its
        // allowance: too large, which no waiting fixes, like etcd's "request is too large".
        Code::ResourceExhausted if message.contains("larger than max") => {
            ErrorKind::InvalidArgument
        }
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        Code::DeadlineExceeded => ErrorKind::Timeout,
        Code::Unavailable | Code::Cancelled | Code::Aborted => ErrorKind::Connection,
        Code::NotFound => ErrorKind::NotFound,
        // tonic reports transport failures of a call (connection refused, reset) as Unknown.
        Code::Unknown if !message.starts_with("etcdserver:") => ErrorKind::Connection,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(code: tonic::Code, message: &str) -> ErrorKind {
        Error::from(etcd_client::Error::GRpcStatus(tonic::Status::new(
            code, message,
        )))
        .kind()
    }

    #[test]
    fn too_large_is_invalid_whoever_refuses_it() {
        use tonic::Code;
        // etcd between `--max-request-bytes` and gRPC's allowance above it; gRPC beyond.
        assert_eq!(
            kind_of(Code::InvalidArgument, "etcdserver: request is too large"),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind_of(
                Code::ResourceExhausted,
                "grpc: received message larger than max (921711 vs. 786432)"
            ),
            ErrorKind::InvalidArgument
        );
        // Full or overloaded etcd: waiting helps.
        for message in [
            "etcdserver: mvcc: database space exceeded",
            "etcdserver: too many requests",
        ] {
            assert_eq!(
                kind_of(Code::ResourceExhausted, message),
                ErrorKind::ResourceExhausted,
                "{message}"
            );
        }
    }
}
