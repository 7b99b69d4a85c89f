//! What a registry needs to reach etcd.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// TLS files. Carried by the configuration so bindings can pass them through; this build talks
/// plain HTTP/2 and rejects a configuration that asks for TLS with a clear error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the certificate authority that signed etcd's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client key, for mutual TLS.
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }
}

/// Configuration of a [`Registry`](crate::Registry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// etcd endpoints, `host:port` or `http://host:port`; at least one.
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
    /// TLS files (see [`TlsConfig`]).
    pub tls: TlsConfig,
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
            timeout: Duration::from_secs(10),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
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
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| normalize_endpoint(e))
            .collect::<Result<Vec<_>>>()?;
        if self.timeout.is_zero() {
            return Err(Error::invalid("timeout must be greater than zero"));
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return Err(Error::invalid(
                "backoff must satisfy 0 < backoff_min <= backoff_max",
            ));
        }
        if self.password.is_some() && self.username.as_deref().unwrap_or("").is_empty() {
            return Err(Error::invalid("a password was given without a username"));
        }
        if !self.tls.is_empty() {
            return Err(Error::invalid(
                "TLS is not supported by this build of etcd-registry yet (tls files were given)",
            ));
        }
        Ok(endpoints)
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

/// `host:port` or `http://host:port` → `http://host:port`; anything else is an error.
fn normalize_endpoint(endpoint: &str) -> Result<String> {
    let trimmed = endpoint.trim();
    let rest = if let Some(rest) = trimmed.strip_prefix("http://") {
        rest
    } else if trimmed.starts_with("https://") {
        return Err(Error::invalid(format!(
            "endpoint {endpoint:?}: https needs TLS, which this build does not support yet"
        )));
    } else if trimmed.contains("://") {
        return Err(Error::invalid(format!(
            "endpoint {endpoint:?}: only http:// endpoints or host:port are accepted"
        )));
    } else {
        trimmed
    };
    let rest = rest.trim_end_matches('/');
    let bad = || {
        Error::invalid(format!(
            "malformed endpoint {endpoint:?}: expected host:port or http://host:port"
        ))
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && !host.contains('/')
        && !host.chars().any(char::is_whitespace)
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    if !host_ok || !port_ok {
        return Err(bad());
    }
    Ok(format!("http://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized_or_rejected() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint("http://localhost:2379/").unwrap(),
            "http://localhost:2379"
        );
        assert_eq!(
            normalize_endpoint("[::1]:2379").unwrap(),
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
        ] {
            let err = normalize_endpoint(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn config_validation() {
        assert!(Config::new(Vec::<String>::new(), "/s").validate().is_err());
        assert!(Config::new(["h:1"], "/s")
            .with_timeout(Duration::ZERO)
            .validate()
            .is_err());
        assert!(Config::new(["h:1"], "/s")
            .with_backoff(Duration::from_secs(2), Duration::from_secs(1))
            .validate()
            .is_err());
        assert!(Config::new(["h:1", "http://h:2"], "/s").validate().is_ok());
        let mut tls = Config::new(["h:1"], "/s");
        tls.tls.ca_file = Some("ca.pem".into());
        assert!(tls.validate().is_err());
    }
}
