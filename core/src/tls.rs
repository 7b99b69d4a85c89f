//! TLS: the PEM documents, read and checked when a registry is created and read again for each
//! new connection (a certificate rotated on disk is used from the next connection on); the
//! client's rustls options built from them; and handshake failures turned into errors a user can
//! act on.
//!
//! Key material never reaches a message: errors about a key name its file (or "in memory") and
//! what is wrong, never its content.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, Identity, TlsOptions};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError};

use crate::config::{PemSource, TlsConfig};
use crate::error::{Error, Result};

/// One PEM document of the configuration, read into memory, with a name for errors.
#[derive(PartialEq, Eq)]
struct Loaded {
    what: &'static str,
    source: String,
    pem: Vec<u8>,
}

impl Loaded {
    fn read(source: &PemSource, what: &'static str) -> Result<Loaded> {
        match source {
            PemSource::File(path) => {
                let shown = format!("file {}", path.display());
                let pem = std::fs::read(path).map_err(|e| {
                    Error::invalid(format!("cannot read the TLS {what} {shown}: {e}"))
                })?;
                Ok(Loaded {
                    what,
                    source: shown,
                    pem,
                })
            }
            PemSource::Pem(bytes) => Ok(Loaded {
                what,
                source: "PEM given in memory".to_string(),
                pem: bytes.clone(),
            }),
        }
    }

    fn error(&self, problem: impl std::fmt::Display) -> Error {
        Error::invalid(format!("TLS {} ({}): {problem}", self.what, self.source))
    }

    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_slice_iter(&self.pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.error(pem_problem(&e)))?;
        if certs.is_empty() {
            return Err(self.error("no PEM CERTIFICATE block found"));
        }
        Ok(certs)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(&self.pem).map_err(|e| match e {
            pem::Error::NoItemsFound => self.error(
                "no PEM private key found (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
            ),
            other => self.error(pem_problem(&other)),
        })
    }
}

/// What is wrong with a PEM document, without quoting any of it.
fn pem_problem(err: &pem::Error) -> &'static str {
    match err {
        pem::Error::MissingSectionEnd { .. } => "malformed PEM: a block has no END line",
        pem::Error::IllegalSectionStart { .. } => "malformed PEM: a BEGIN line is invalid",
        pem::Error::Base64Decode(_) => "malformed PEM: a block is not valid base64",
        pem::Error::SectionTooLarge => "malformed PEM: a block is too large",
        _ => "malformed PEM",
    }
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks every PEM document of `tls` and returns the options etcd-client connects
/// with. Every error here is `InvalidArgument`: retrying cannot fix a configuration.
pub(crate) fn client_options(
    tls: &TlsConfig,
    endpoints: &[String],
    timeout: Duration,
) -> Result<ClientTls> {
    let pems = Pems::read(tls)?;
    let options = build(tls, &pems, endpoints, timeout)?;
    Ok(ClientTls {
        tls: tls.clone(),
        endpoints: endpoints.to_vec(),
        timeout,
        has_client_cert: tls.cert.is_some(),
        current: std::sync::Mutex::new(Current {
            options,
            pems,
            refused: None,
            unreadable: false,
        }),
    })
}

/// The PEM documents of a configuration, as read.
#[derive(PartialEq, Eq)]
struct Pems {
    ca: Option<Loaded>,
    cert: Option<Loaded>,
    key: Option<Loaded>,
}

impl Pems {
    fn read(tls: &TlsConfig) -> Result<Pems> {
        let read =
            |source: &Option<PemSource>, what| source.as_ref().map(|s| Loaded::read(s, what));
        Ok(Pems {
            ca: read(&tls.ca, "CA certificate").transpose()?,
            cert: read(&tls.cert, "client certificate").transpose()?,
            key: read(&tls.key, "client key").transpose()?,
        })
    }
}

/// The options built from `pems`, each document checked.
fn build(
    tls: &TlsConfig,
    pems: &Pems,
    endpoints: &[String],
    timeout: Duration,
) -> Result<TlsOptions> {
    let mut options = TlsOptions::new().timeout(timeout);
    match &pems.ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in ca.certificates()? {
                roots
                    .add(cert)
                    .map_err(|e| ca.error(format!("not a usable CA certificate: {e}")))?;
            }
            options = options.ca_certificate(Certificate::from_pem(&ca.pem));
        }
        // Like etcd's own clients: no CA given means the system's roots.
        None => options = options.with_native_roots(),
    }
    match (&pems.cert, &pems.key) {
        (Some(cert), Some(key)) => {
            let chain = cert.certificates()?;
            let der = key.private_key()?;
            rustls::sign::CertifiedKey::from_der(chain, der, &crypto_provider()).map_err(|e| {
                Error::invalid(format!(
                    "the TLS client key ({}) does not fit the client certificate ({}): {e}",
                    key.source, cert.source
                ))
            })?;
            options = options.identity(Identity::from_pem(&cert.pem, &key.pem));
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(Error::invalid(
                "a TLS client certificate was given without its key",
            ))
        }
        (None, Some(_)) => {
            return Err(Error::invalid(
                "a TLS client key was given without its certificate",
            ))
        }
    }
    if let Some(name) = &tls.server_name {
        ServerName::try_from(name.as_str()).map_err(|_| {
            Error::invalid(format!(
                "TLS server name {name:?} is neither a DNS name nor an IP address"
            ))
        })?;
        options = options.domain_name(name.clone());
    }
    // Build each endpoint exactly as the client will, so that what the checks above cannot see
    // (no system roots at all, say) is reported now rather than on every call.
    for endpoint in endpoints {
        tonic::transport::Endpoint::from_shared(endpoint.clone())
            .and_then(|e| e.tls_config(options.clone()))
            .map_err(|e| {
                Error::invalid(format!(
                    "TLS configuration for {endpoint}: {}",
                    chain_text(&e)
                ))
            })?;
    }
    Ok(options)
}

fn chain_text(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// If a TLS failure caused `err` (anywhere in its chain of sources), what to tell the user.
pub(crate) fn failure_of(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        // tokio-rustls reports rustls errors inside io::Error, whose source() skips them.
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(describe(tls));
            }
            // An alert that comes after the client's side of the handshake (TLS 1.3: the
            // server checks the client's certificate then) reaches us through h2, which keeps
            // only the io::Error's text: "received fatal alert: BadCertificate".
            if let Some(alert) = received_alert(&io.to_string()) {
                return Some(describe(&rustls::Error::AlertReceived(alert)));
            }
            // tokio-rustls' words for a peer that hung up mid-handshake, as a plain-HTTP etcd
            // does on receiving a TLS hello.
            if io.kind() == std::io::ErrorKind::UnexpectedEof
                && io.to_string() == "tls handshake eof"
            {
                return Some(
                    "TLS handshake failed: etcd closed the connection (is this endpoint \
                     serving TLS?)"
                        .to_string(),
                );
            }
        }
        current = e.source();
    }
    None
}

/// The alert named in rustls' text for a received alert ("received fatal alert: NAME").
fn received_alert(text: &str) -> Option<AlertDescription> {
    let name = text.strip_prefix("received fatal alert: ")?;
    (0..=u8::MAX)
        .map(AlertDescription::from)
        .find(|alert| format!("{alert:?}") == name)
}

const CLIENT_CERT_REJECTED: &str = "etcd rejected the client certificate";
const CLIENT_CERT_MISSING: &str =
    "etcd requires a client certificate (mutual TLS) and none was given";

/// `message` of a TLS error, for a client that presented no certificate: etcd (Go) answers
/// a missing certificate with the same alert as a bad one.
pub(crate) fn without_client_cert(message: &str) -> &str {
    if message.starts_with(CLIENT_CERT_REJECTED) {
        CLIENT_CERT_MISSING
    } else {
        message
    }
}

/// The TLS options of new connections, and whether they present a client certificate.
///
/// The PEM files are read again for each new connection, as etcd's Go client reads its client
/// certificate again for each handshake: certificates rotated on disk (cert-manager, Vault,
/// SPIFFE) are used from the next connection on, and a registry whose certificate expired comes
/// back once a valid one is in place, without a restart. Connections already open keep theirs,
/// and so does etcd-client's own reconnection of one that dropped while idle: the call that
/// fails its handshake there makes the member's client be made again, with the files read anew
/// (see `Connection::client_of`).
/// Files that cannot be used as they are (a rotation half done: a new certificate beside the
/// old key) leave the last good options in use, with a warning, until they change again.
pub(crate) struct ClientTls {
    tls: TlsConfig,
    endpoints: Vec<String>,
    timeout: Duration,
    pub(crate) has_client_cert: bool,
    current: std::sync::Mutex<Current>,
}

struct Current {
    options: TlsOptions,
    /// What `options` were built from.
    pems: Pems,
    /// Documents read since that could not be used (warned about once).
    refused: Option<Pems>,
    /// Whether the last read failed (warned about once).
    unreadable: bool,
}

impl ClientTls {
    /// The options for a new connection, from the PEM documents as they are now.
    pub(crate) fn options(&self) -> TlsOptions {
        let from_files = [&self.tls.ca, &self.tls.cert, &self.tls.key]
            .iter()
            .any(|s| matches!(s, Some(PemSource::File(_))));
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if !from_files {
            return current.options.clone();
        }
        let pems = match Pems::read(&self.tls) {
            Ok(pems) => pems,
            // A file missing or unreadable for a moment (being replaced) is read again for the
            // next connection.
            Err(error) => {
                if !current.unreadable {
                    tracing::warn!(%error, "the TLS files cannot be read; new connections keep the previous ones");
                }
                current.unreadable = true;
                return current.options.clone();
            }
        };
        current.unreadable = false;
        if pems == current.pems || current.refused.as_ref() == Some(&pems) {
            return current.options.clone();
        }
        match build(&self.tls, &pems, &self.endpoints, self.timeout) {
            Ok(options) => {
                tracing::info!("the TLS files changed; new connections to etcd use them");
                *current = Current {
                    options,
                    pems,
                    refused: None,
                    unreadable: false,
                };
            }
            Err(error) => {
                tracing::warn!(%error, "the TLS files changed but cannot be used; new connections keep the previous ones");
                current.refused = Some(pems);
            }
        }
        current.options.clone()
    }
}

fn describe(err: &rustls::Error) -> String {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(cert) => {
            let why = match cert {
                CertificateError::UnknownIssuer => {
                    "etcd's certificate is not signed by the configured CA (unknown issuer); \
                     check the CA certificate"
                        .to_string()
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    "etcd's certificate is not valid for the host name used (hostname mismatch); \
                     connect by a name in the certificate or set the TLS server name"
                        .to_string()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "etcd's certificate has expired".to_string()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "etcd's certificate is not valid yet".to_string()
                }
                other => format!("{other:?}"),
            };
            format!("certificate verify failed: {why}")
        }
        E::AlertReceived(AlertDescription::CertificateRequired) => CLIENT_CERT_MISSING.to_string(),
        E::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied),
        ) => format!(
            "{CLIENT_CERT_REJECTED} ({alert:?}): is it signed by a CA etcd trusts, and still \
             valid?"
        ),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            format!("TLS handshake failed ({err}): is this endpoint serving TLS?")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_known_only_by_its_text_is_described_like_the_typed_one() {
        for alert in [
            AlertDescription::BadCertificate,
            AlertDescription::CertificateRequired,
            AlertDescription::UnknownCA,
        ] {
            // rustls' own words, as h2 passes them on after dropping the error's type.
            let typed = rustls::Error::AlertReceived(alert);
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, typed.to_string());
            assert_eq!(failure_of(&io), Some(describe(&typed)), "{alert:?}");
        }
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: Nonsense",
        );
        assert_eq!(failure_of(&io), None);
        let io = std::io::Error::other("connection reset");
        assert_eq!(failure_of(&io), None);
    }
}
