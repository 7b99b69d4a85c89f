//! `etcd_registry_config`: what `etcd_registry_connect` needs, built with setters.

use std::ffi::c_char;
use std::path::PathBuf;
use std::time::Duration;

use registry::{Config, PemSource};

use crate::handle::{out, write_out};
use crate::status::{etcd_registry_status, guard, guard_value, Failure, FfiResult};
use crate::strings::{optional, required};

// The defaults and limits of the core (registry::DEFAULT_* and MAX_TTL_SECS), as the header's
// macros. cbindgen needs literals; the test at the end of this file pins them to the core's.
// (ETCD_REGISTRY_DEFAULT_BASE_PATH, a string cbindgen 0.29 cannot emit, is written into the
// header by ffi/check-header.sh from core/src/config.rs.)

/// The timeout of connecting and of each etcd call when none is set, in milliseconds.
pub const ETCD_REGISTRY_DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The first retry delay after a failure when none is set, in milliseconds.
pub const ETCD_REGISTRY_DEFAULT_BACKOFF_MIN_MS: u64 = 1_000;
/// The cap of the retry delay when none is set, in milliseconds.
pub const ETCD_REGISTRY_DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
/// The TTL a binding uses when its caller gives none, in seconds (the C API always takes one).
pub const ETCD_REGISTRY_DEFAULT_TTL_SECS: u64 = 10;
/// etcd's largest lease TTL, in seconds: a larger TTL is INVALID_ARGUMENT.
pub const ETCD_REGISTRY_MAX_TTL_SECS: u64 = 9_000_000_000;

/// Opaque configuration of a registry. Created by `etcd_registry_config_new`, freed by
/// `etcd_registry_config_free`. `etcd_registry_connect` copies what it needs, so the config can
/// be freed (or reused) right after. Not thread-safe: no call may use a config (a connect
/// included) while another thread changes or frees it.
///
/// Defaults: no endpoints (at least one is required), base path "/services", no credentials,
/// timeout 10000 ms, backoff 1000 ms doubling to 30000 ms, runtime threads from the environment
/// variable `ETCD_REGISTRY_THREADS` or 1, no TLS (see `etcd_registry_config_set_tls_files`).
#[allow(non_camel_case_types)]
pub struct etcd_registry_config {
    pub(crate) config: Config,
    pub(crate) runtime_threads: Option<usize>,
}

impl etcd_registry_config {
    fn new() -> Self {
        etcd_registry_config {
            config: Config::new(Vec::<String>::new(), registry::DEFAULT_BASE_PATH),
            runtime_threads: None,
        }
    }
}

/// Gives mutable access to a config argument.
///
/// # Safety
/// `config` is NULL or a live pointer from `etcd_registry_config_new`, not used concurrently.
unsafe fn config_mut<'a>(
    config: *mut etcd_registry_config,
) -> FfiResult<&'a mut etcd_registry_config> {
    // SAFETY: per the caller's contract.
    unsafe { config.as_mut() }.ok_or_else(|| Failure::null("config"))
}

fn split_endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// Creates a configuration with the defaults. Free it with `etcd_registry_config_free`.
///
/// `*out_config` is written only on success.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_config_new(
    out_config: *mut *mut etcd_registry_config,
) -> etcd_registry_status {
    guard(|| {
        let slot = out(out_config, "out_config")?;
        write_out(slot, Box::into_raw(Box::new(etcd_registry_config::new())));
        Ok(())
    })
}

/// Frees a configuration. NULL is allowed (and does nothing).
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_config_free(config: *mut etcd_registry_config) {
    if config.is_null() {
        return;
    }
    guard_value((), || {
        // SAFETY: a non-NULL pointer from etcd_registry_config_new, freed once (caller's contract).
        drop(unsafe { Box::from_raw(config) });
    });
}

/// Replaces the endpoints with a comma-separated list, e.g. "10.0.0.1:2379,10.0.0.2:2379".
/// Each is `host:port`, `http://host:port` or `https://host:port` (TLS); spaces around items
/// and empty items are ignored. INVALID_ARGUMENT when the list holds no endpoint. Endpoints
/// are checked in detail by `etcd_registry_connect`.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_config_set_endpoints(
    config: *mut etcd_registry_config,
    endpoints: *const c_char,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for both pointers.
        let config = unsafe { config_mut(config) }?;
        let list = unsafe { required(endpoints, "endpoints") }?;
        let parsed = split_endpoints(list);
        if parsed.is_empty() {
            return Err(Failure::invalid(format!(
                "no endpoint in {list:?}: expected host:port[,host:port…]"
            )));
        }
        config.config.endpoints = parsed;
        Ok(())
    })
}

/// Appends one endpoint (`host:port`, `http://host:port` or `https://host:port`).
/// INVALID_ARGUMENT when it is empty or malformed (the check `etcd_registry_connect` makes).
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_config_add_endpoint(
    config: *mut etcd_registry_config,
    endpoint: *const c_char,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for both pointers.
        let config = unsafe { config_mut(config) }?;
        let endpoint = unsafe { required(endpoint, "endpoint") }?.trim();
        registry::check_endpoint(endpoint)?;
        config.config.endpoints.push(endpoint.to_string());
        Ok(())
    })
}

/// Sets the prefix of every key: nodes live at `<base_path>/<service>/<node>` (joined and
/// cleaned like Go's `path.Join`, so it interoperates with go.lumeweb.com/etcd-registry).
/// Default "/services". An empty string is allowed (keys then start with the service name).
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_config_set_base_path(
    config: *mut etcd_registry_config,
    base_path: *const c_char,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for both pointers.
        let config = unsafe { config_mut(config) }?;
        config.config.base_path = unsafe { required(base_path, "base_path") }?.to_string();
        Ok(())
    })
}

/// Sets the credentials for an etcd with authentication enabled. `password` may be NULL (an
/// empty password). A NULL or empty `username` removes the credentials.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_config_set_credentials(
    config: *mut etcd_registry_config,
    username: *const c_char,
    password: *const c_char,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for every pointer.
        let config = unsafe { config_mut(config) }?;
        let username = unsafe { optional(username, "username") }?.unwrap_or("");
        let password = unsafe { optional(password, "password") }?.unwrap_or("");
        if username.is_empty() {
            config.config.username = None;
            config.config.password = None;
        } else {
            config.config.username = Some(username.to_string());
            config.config.password = Some(password.to_string());
        }
        Ok(())
    })
}

/// Sets the timeout of connecting and of each etcd call, in milliseconds (default 10000).
/// INVALID_ARGUMENT for 0 or above 100 years.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_config_set_timeout_ms(
    config: *mut etcd_registry_config,
    timeout_ms: u64,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let config = unsafe { config_mut(config) }?;
        let timeout = Duration::from_millis(timeout_ms);
        registry::check_timeout(timeout)?;
        config.config.timeout = timeout;
        Ok(())
    })
}

/// Sets the retry delays of registrations and watches after a failure: `min_ms` doubling up to
/// `max_ms` (defaults 1000 and 30000), each shortened by up to 20 % at random. Retries never
/// stop. INVALID_ARGUMENT unless 0 < min_ms <= max_ms <= 100 years.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_config_set_backoff_ms(
    config: *mut etcd_registry_config,
    min_ms: u64,
    max_ms: u64,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let config = unsafe { config_mut(config) }?;
        let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(max_ms));
        registry::check_backoff(min, max)?;
        config.config.backoff_min = min;
        config.config.backoff_max = max;
        Ok(())
    })
}

/// Sets the worker count (1 to 64) of the library's one global runtime. It only takes effect if
/// the runtime has not started yet, i.e. before the first `etcd_registry_connect` of the process;
/// later it is ignored (with a warning in the log). Without it, the environment variable
/// `ETCD_REGISTRY_THREADS` decides, else 1 (more for a process that watches services of tens of
/// thousands of nodes: their updates are decoded on a worker).
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_config_set_runtime_threads(
    config: *mut etcd_registry_config,
    threads: u32,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract.
        let config = unsafe { config_mut(config) }?;
        if !(1..=64).contains(&threads) {
            return Err(Failure::invalid(format!(
                "runtime threads must be between 1 and 64 (got {threads})"
            )));
        }
        config.runtime_threads = Some(threads as usize);
        Ok(())
    })
}

/// Turns TLS on with PEM files: the CA that signed etcd's certificate (NULL: the system's
/// roots), and for mutual TLS the client certificate and its key (both or neither). Replaces
/// the CA and client certificate set before; keeps the server name. All three NULL (and no
/// server name) turns TLS off again, unless an endpoint is `https://`.
///
/// With TLS on, endpoints are `host:port` or `https://host:port` (not `http://`); an
/// `https://` endpoint alone turns TLS on with the system roots. The files are read and checked by
/// `etcd_registry_connect`: a missing file, a file without a certificate or key, a key that
/// does not fit the certificate give INVALID_ARGUMENT with the file's name (never retried).
/// A failed handshake later (wrong CA, host name mismatch, expired certificate, client
/// certificate refused or missing) gives ETCD_REGISTRY_STATUS_TLS. The files are read again for
/// each new connection: a certificate renewed on disk is used from the next connection on
/// (files that cannot be used as they are leave the last good ones in use, with a warning).
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_config_set_tls_files(
    config: *mut etcd_registry_config,
    ca_file: *const c_char,
    cert_file: *const c_char,
    key_file: *const c_char,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for every pointer.
        let config = unsafe { config_mut(config) }?;
        let file = |p: Option<&str>| p.map(|p| PemSource::File(PathBuf::from(p)));
        let ca = file(unsafe { optional(ca_file, "ca_file") }?);
        let cert = file(unsafe { optional(cert_file, "cert_file") }?);
        let key = file(unsafe { optional(key_file, "key_file") }?);
        set_tls(config, ca, cert, key)
    })
}

/// Like `etcd_registry_config_set_tls_files`, with the PEM documents in memory: `ca`/`ca_len`
/// (NULL: the system's roots), `cert`/`cert_len` and `key`/`key_len` (both or neither, NULL for
/// none). A NULL buffer must come with a length of 0 (else `NULL_POINTER`). The bytes are copied;
/// they need not be NUL-terminated. Errors never quote the key.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_config_set_tls_pem(
    config: *mut etcd_registry_config,
    ca: *const u8,
    ca_len: usize,
    cert: *const u8,
    cert_len: usize,
    key: *const u8,
    key_len: usize,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract: config is valid, each non-NULL buffer holds `len` bytes.
        let config = unsafe { config_mut(config) }?;
        let pem = |ptr: *const u8, len: usize, what: &str| -> FfiResult<Option<PemSource>> {
            if ptr.is_null() {
                // NULL is "none" only with a length of 0: a length without its bytes is a
                // caller's mistake, as it is for info entries.
                if len != 0 {
                    return Err(Failure::null(&format!(
                        "{what} (given with {what}_len {len})"
                    )));
                }
                return Ok(None);
            }
            crate::info::check_len::<u8>(len, what)?;
            // SAFETY: non-NULL and `len` readable bytes per the caller's contract.
            let pem = unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
            Ok(Some(PemSource::Pem(pem)))
        };
        set_tls(
            config,
            pem(ca, ca_len, "ca")?,
            pem(cert, cert_len, "cert")?,
            pem(key, key_len, "key")?,
        )
    })
}

fn set_tls(
    config: &mut etcd_registry_config,
    ca: Option<PemSource>,
    cert: Option<PemSource>,
    key: Option<PemSource>,
) -> FfiResult {
    if cert.is_some() != key.is_some() {
        return Err(Failure::invalid(
            "a TLS client certificate and its key go together: give both or neither",
        ));
    }
    let tls = &mut config.config.tls;
    tls.ca = ca;
    tls.cert = cert;
    tls.key = key;
    Ok(())
}

/// Checks etcd's certificate against `name` instead of the endpoint's host (for endpoints
/// given by IP address); turns TLS on (with the system roots unless a CA is set). NULL or ""
/// removes it.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_config_set_tls_server_name(
    config: *mut etcd_registry_config,
    name: *const c_char,
) -> etcd_registry_status {
    guard(|| {
        // SAFETY: caller's contract for both pointers.
        let config = unsafe { config_mut(config) }?;
        let name = unsafe { optional(name, "name") }?.unwrap_or("");
        config.config.tls.server_name = (!name.is_empty()).then(|| name.to_string());
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_split_on_commas() {
        assert_eq!(
            split_endpoints(" a:1, ,http://b:2 ,"),
            vec!["a:1".to_string(), "http://b:2".to_string()]
        );
        assert!(split_endpoints(" , ").is_empty());
    }

    #[test]
    fn header_constants_are_the_cores() {
        let ms = |d: Duration| d.as_millis() as u64;
        assert_eq!(
            ETCD_REGISTRY_DEFAULT_TIMEOUT_MS,
            ms(registry::DEFAULT_TIMEOUT)
        );
        assert_eq!(
            ETCD_REGISTRY_DEFAULT_BACKOFF_MIN_MS,
            ms(registry::DEFAULT_BACKOFF_MIN)
        );
        assert_eq!(
            ETCD_REGISTRY_DEFAULT_BACKOFF_MAX_MS,
            ms(registry::DEFAULT_BACKOFF_MAX)
        );
        assert_eq!(
            ETCD_REGISTRY_DEFAULT_TTL_SECS,
            registry::DEFAULT_TTL.as_secs()
        );
        assert_eq!(ETCD_REGISTRY_MAX_TTL_SECS, registry::MAX_TTL_SECS);
    }
}
