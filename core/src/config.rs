//! What a registry needs to reach etcd.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// The timeout of connecting and of each etcd call when none is set: 10 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry delay after a failure when none is set: 1 s.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The cap of the retry delay when none is set: 30 s.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The prefix of every key when none is set.
pub const DEFAULT_BASE_PATH: &str = "/services";
/// The lease TTL of a registration for bindings whose `register` has a default TTL: 10 s.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Where a PEM document comes from: a file (read when the registry is created) or bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    /// A PEM file; errors name it.
    File(PathBuf),
    /// PEM text in memory.
    Pem(Vec<u8>),
}

impl fmt::Debug for PemSource {
    // Never prints the bytes: they may be a private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(path) => f.debug_tuple("File").field(path).finish(),
            PemSource::Pem(bytes) => write!(f, "Pem(<{} bytes>)", bytes.len()),
        }
    }
}

/// TLS to etcd (rustls with ring; no OpenSSL). Any of it, or an `https://` endpoint, turns TLS
/// on for every endpoint.
///
/// - `ca`: the CA that signed etcd's certificate. Without it the system roots are used.
/// - `cert` + `key`: a client certificate for mutual TLS (etcd's `--client-cert-auth`; with
///   authentication enabled and no password, etcd takes the certificate's CN as the user).
/// - `server_name`: the name etcd's certificate is checked against instead of the endpoint's
///   host, for endpoints given by IP address.
///
/// The PEM documents are read and checked when the registry is created: a missing file, a file
/// without a certificate or key, a key that does not match the certificate are an
/// `InvalidArgument` error naming the file, never retried. Files are read again for each new
/// connection: a certificate rotated on disk is used from the next connection on (files that
/// cannot be used as they are leave the last good ones in use, with a warning).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM of the certificate authority (one or more certificates).
    pub ca: Option<PemSource>,
    /// PEM of the client certificate (chain), for mutual TLS.
    pub cert: Option<PemSource>,
    /// PEM of the client's private key, for mutual TLS.
    pub key: Option<PemSource>,
    /// The name to verify etcd's certificate against, instead of the endpoint's host.
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// TLS with the system roots and no client certificate.
    pub fn new() -> Self {
        TlsConfig::default()
    }

    /// Verifies etcd's certificate against the CA in this PEM file.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(PemSource::File(path.into()));
        self
    }

    /// Verifies etcd's certificate against the CA in these PEM bytes.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(PemSource::Pem(pem.into()));
        self
    }

    /// Presents the client certificate and key in these PEM files (mutual TLS).
    pub fn with_client_cert_files(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.cert = Some(PemSource::File(cert.into()));
        self.key = Some(PemSource::File(key.into()));
        self
    }

    /// Presents the client certificate and key in these PEM bytes (mutual TLS).
    pub fn with_client_cert_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.cert = Some(PemSource::Pem(cert.into()));
        self.key = Some(PemSource::Pem(key.into()));
        self
    }

    /// Checks etcd's certificate against `name` instead of the endpoint's host.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self == &TlsConfig::default()
    }
}

/// Configuration of a [`Registry`](crate::Registry).
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// etcd endpoints, `host:port` or `http://host:port`; at least one. One given twice
    /// (`h:2379` and `http://h:2379`) is used once.
    pub endpoints: Vec<String>,
    /// Prefix of every key, e.g. `/services`. Joined like Go's `path.Join`.
    pub base_path: String,
    /// User name, for an etcd with authentication enabled.
    pub username: Option<String>,
    /// Password of `username`.
    pub password: Option<String>,
    /// Applies to connecting and to each etcd call. Default 10 s.
    pub timeout: Duration,
    /// First retry delay after a failure. Default 1 s.
    pub backoff_min: Duration,
    /// Cap of the retry delay, which doubles from `backoff_min`. Default 30 s.
    pub backoff_max: Duration,
    /// TLS (see [`TlsConfig`]); off unless set or an endpoint is `https://`.
    pub tls: TlsConfig,
}

impl fmt::Debug for Config {
    // The password never shows (nor does key material: PemSource hides its bytes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("endpoints", &self.endpoints)
            .field("base_path", &self.base_path)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Config {
    /// A configuration with the defaults and the given endpoints and base path.
    pub fn new<S: Into<String>>(
        endpoints: impl IntoIterator<Item = S>,
        base_path: impl Into<String>,
    ) -> Self {
        Config {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            base_path: base_path.into(),
            username: None,
            password: None,
            timeout: DEFAULT_TIMEOUT,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            tls: TlsConfig::default(),
        }
    }

    /// Sets the credentials.
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// Sets the timeout of connecting and of each etcd call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Turns TLS on with these settings (see [`TlsConfig`]).
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = tls;
        self
    }

    /// Sets the retry delays: `min` doubling up to `max`.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Checks everything that can be checked without talking to etcd, and returns the endpoints
    /// as URLs.
    pub(crate) fn validate(&self) -> Result<Vec<String>> {
        if self.endpoints.is_empty() {
            return Err(Error::invalid("no etcd endpoints given"));
        }
        let tls = self.uses_tls();
        let mut endpoints = self
            .endpoints
            .iter()
            .map(|e| normalize_endpoint(e, tls))
            .collect::<Result<Vec<_>>>()?;
        // One server given twice (`h:2379` and `http://h:2379`, lists concatenated) is one
        // member: kept twice, one server would pass for a cluster (a share of the timeout per
        // attempt, reads hedged to itself). Host names compare without case, as DNS does.
        let mut seen = std::collections::HashSet::new();
        endpoints.retain(|e| seen.insert(e.to_ascii_lowercase()));
        check_timeout(self.timeout)?;
        check_backoff(self.backoff_min, self.backoff_max)?;
        if self.password.is_some() && self.username.as_deref().unwrap_or("").is_empty() {
            return Err(Error::invalid("a password was given without a username"));
        }
        // As in service and node names: C and Go could not name such keys, nor read them back.
        if self.base_path.contains('\0') {
            return Err(Error::invalid("base path must not contain NUL"));
        }
        Ok(endpoints)
    }

    /// Whether to talk TLS: TLS settings were given or an endpoint is `https://`.
    pub(crate) fn uses_tls(&self) -> bool {
        !self.tls.is_empty()
            || self
                .endpoints
                .iter()
                .any(|e| e.trim().starts_with("https://"))
    }

    /// The credentials to use, if any: an empty username means none.
    pub(crate) fn credentials(&self) -> Option<(String, String)> {
        match self.username.as_deref() {
            Some(user) if !user.is_empty() => {
                Some((user.to_string(), self.password.clone().unwrap_or_default()))
            }
            _ => None,
        }
    }
}

/// The longest timeout or retry delay [`Config`] takes: 100 years, far beyond any use, and far
/// enough from the clock's limit that a deadline computed from it never overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Checks a timeout as [`Config`] takes it (greater than zero, at most 100 years).
/// Bindings whose setters fail at once call it there, so that the rule and its message are
/// written once.
pub fn check_timeout(timeout: Duration) -> Result<()> {
    if timeout.is_zero() {
        return Err(Error::invalid("timeout must be greater than zero"));
    }
    if timeout > MAX_DURATION {
        return Err(Error::invalid(format!(
            "timeout must be at most {} s (100 years), got {timeout:?}",
            MAX_DURATION.as_secs()
        )));
    }
    Ok(())
}

/// Checks retry delays as [`Config`] takes them: `0 < min <= max <= MAX_DURATION`.
pub fn check_backoff(min: Duration, max: Duration) -> Result<()> {
    if min.is_zero() || max < min {
        return Err(Error::invalid(format!(
            "backoff must satisfy 0 < minimum <= maximum (got {min:?}, {max:?})"
        )));
    }
    if max > MAX_DURATION {
        return Err(Error::invalid(format!(
            "backoff maximum must be at most {} s (100 years), got {max:?}",
            MAX_DURATION.as_secs()
        )));
    }
    Ok(())
}

/// Checks one endpoint as [`Config`] takes it (`host:port`, `http://host:port` or
/// `https://host:port`), for bindings that take endpoints one by one.
pub fn check_endpoint(endpoint: &str) -> Result<()> {
    normalize_endpoint(endpoint, endpoint.trim().starts_with("https://")).map(|_| ())
}

/// `host:port`, `http://host:port` or `https://host:port` → `http(s)://host:port`, https when
/// `tls`; anything else, or mixing http:// with TLS, is an error.
fn normalize_endpoint(endpoint: &str, tls: bool) -> Result<String> {
    let trimmed = endpoint.trim();
    // Before any message quotes the endpoint: a user part may hold a password. Credentials
    // are given as username and password; one in the URL would be ignored.
    if let Some((before, after)) = trimmed.rsplit_once('@') {
        // Only a scheme we take is shown: `://` inside a password is not one.
        let scheme = ["http://", "https://"]
            .into_iter()
            .find(|s| before.starts_with(s))
            .unwrap_or("");
        let shown = format!("{scheme}<user>@{after}");
        return Err(Error::invalid(format!(
            "endpoint {shown:?} has a user part (not shown): give the credentials as username \
             and password, the endpoint as host:port"
        )));
    }
    let rest = if let Some(rest) = trimmed.strip_prefix("http://") {
        if tls {
            return Err(Error::invalid(format!(
                "endpoint {endpoint:?} is plain http:// but TLS is on (TLS settings or an \
                 https:// endpoint were given): use host:port or https://"
            )));
        }
        rest
    } else if let Some(rest) = trimmed.strip_prefix("https://") {
        rest
    } else if trimmed.contains("://") {
        return Err(Error::invalid(format!(
            "endpoint {endpoint:?}: only host:port, http:// or https:// endpoints are accepted"
        )));
    } else {
        trimmed
    };
    let rest = rest.trim_end_matches('/');
    let bad = || {
        Error::invalid(format!(
            "malformed endpoint {endpoint:?}: expected host:port, http://host:port or https://host:port"
        ))
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && !host.contains('/')
        && !host.chars().any(char::is_whitespace)
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    let port = port.parse::<u16>().ok().filter(|&p| p != 0);
    let (true, Some(port)) = (host_ok, port) else {
        return Err(bad());
    };
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://{host}:{port}");
    // Parsed as the client will parse it: a host it cannot take (`${ETCD_HOST}` left
    // unexpanded, `%`, `{`) would fail every call to this member with a bare "invalid uri",
    // and `?` or `#` would cut the host short (`etcd#1:2379` is `etcd`).
    let parsed = tonic::transport::Endpoint::from_shared(url.clone()).map_err(|_| bad())?;
    let uri = parsed.uri();
    if uri.host() != Some(host) || uri.port_u16() != Some(port) {
        return Err(bad());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized_or_rejected() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379", false).unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint("http://localhost:2379/", false).unwrap(),
            "http://localhost:2379"
        );
        assert_eq!(
            normalize_endpoint("[::1]:2379", false).unwrap(),
            "http://[::1]:2379"
        );
        for bad in [
            "",
            "localhost",
            "localhost:",
            "localhost:abc",
            ":2379",
            "a b:1",
            "ftp://x:1",
            "h:0",
            "h:70000",
            "https://",
            // Hosts the client cannot take, or would read as another host.
            "${ETCD_HOST}:2379",
            "{h}:2379",
            "h%:2379",
            "h|x:2379",
            "\"h\":2379",
            "<h>:2379",
            "h\0:2379",
            "h\\x:2379",
            "etcd#1:2379",
            "etcd?x:2379",
            "http://etcd#1:2379",
            "h:2379?x",
            "h:2379#x",
            "h:23a79",
        ] {
            let err = normalize_endpoint(bad, false).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{bad:?}");
            assert!(err.message().contains(&format!("{bad:?}")), "{err}");
        }
        for good in [
            ("  h:2379\n", "http://h:2379"),
            ("https://h:2379", "http://h:2379"),
            (
                "etcd-0.etcd.svc.cluster.local:2379",
                "http://etcd-0.etcd.svc.cluster.local:2379",
            ),
            ("http://[::1]:2379/", "http://[::1]:2379"),
            ("[fe80::1:2]:2379", "http://[fe80::1:2]:2379"),
            ("ETCD_1:65535", "http://ETCD_1:65535"),
        ] {
            assert_eq!(
                normalize_endpoint(good.0, false).unwrap(),
                good.1,
                "{good:?}"
            );
        }
        assert_eq!(
            normalize_endpoint("[::ffff:10.0.0.1]:2379", true).unwrap(),
            "https://[::ffff:10.0.0.1]:2379"
        );
        // A user part is refused (credentials have their own settings), and the password
        // stays out of the message, whatever else is wrong with the endpoint.
        for (with_user, tls) in [
            ("http://user:s3cret@h:2379", false),
            ("http://user:s3cret@h:2379", true),
            ("user:s3cret@h:2379", false),
            ("https://user:s3cret@h:2379/", true),
            ("ftp://user:s3cret@h", false),
            ("user:s3c@ret@h:2379", false),
            ("user:s3c://ret@h:2379", false),
            ("http://user:s3c://ret@h:2379", false),
        ] {
            let err = normalize_endpoint(with_user, tls).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::ErrorKind::InvalidArgument,
                "{with_user:?}"
            );
            assert!(!err.to_string().contains("s3c"), "{err}");
            assert!(err.message().contains("user part"), "{err}");
        }
        let err = normalize_endpoint("http://user@h:2379", false).unwrap_err();
        assert!(err.message().contains("\"http://<user>@h:2379\""), "{err}");
    }

    #[test]
    fn duplicate_endpoints_are_one_member() {
        let config = Config::new(
            [
                "h:2379",
                "http://h:2379",
                "g:2379",
                " h:2379/",
                "H:2379",
                "h:2380",
                "g:2379",
            ],
            "/s",
        );
        assert_eq!(
            config.validate().unwrap(),
            ["http://h:2379", "http://g:2379", "http://h:2380"]
        );
        // Still refused when any endpoint is.
        let config = Config::new(["h:2379", "h:2379", "h#1:2379"], "/s");
        assert!(config.validate().is_err());
    }

    #[test]
    fn config_validation() {
        assert!(Config::new(Vec::<String>::new(), "/s").validate().is_err());
        let nul = Config::new(["h:1"], "/a\0b").validate().unwrap_err();
        assert_eq!(nul.kind(), crate::ErrorKind::InvalidArgument);
        assert!(nul.to_string().contains("base path must not contain NUL"));
        assert!(Config::new(["h:1"], "/s")
            .with_timeout(Duration::ZERO)
            .validate()
            .is_err());
        assert!(Config::new(["h:1"], "/s")
            .with_backoff(Duration::from_secs(2), Duration::from_secs(1))
            .validate()
            .is_err());
        // Far beyond any use, and beyond what a deadline can be computed from: refused, never
        // a panic later.
        let huge = Duration::from_secs(10_000_000_000_000_000_000);
        for config in [
            Config::new(["h:1"], "/s").with_timeout(huge),
            Config::new(["h:1"], "/s").with_timeout(Duration::MAX),
            Config::new(["h:1"], "/s").with_backoff(Duration::from_secs(1), Duration::MAX),
            Config::new(["h:1"], "/s").with_backoff(huge, huge),
        ] {
            let err = config.validate().unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
            assert!(err.to_string().contains("100 years"), "{err}");
        }
        assert!(Config::new(["h:1"], "/s")
            .with_timeout(MAX_DURATION)
            .with_backoff(MAX_DURATION, MAX_DURATION)
            .validate()
            .is_ok());
        assert!(Config::new(["h:1", "http://h:2"], "/s").validate().is_ok());
        let tls = Config::new(["h:1", "https://h:2"], "/s")
            .validate()
            .unwrap();
        assert_eq!(tls, ["https://h:1", "https://h:2"]);
        let tls = Config::new(["h:1"], "/s").with_tls(TlsConfig::new().with_ca_file("ca.pem"));
        assert_eq!(tls.validate().unwrap(), ["https://h:1"]);
        let mixed = Config::new(["http://h:1", "https://h:2"], "/s");
        assert_eq!(
            mixed.validate().unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
    }
}
