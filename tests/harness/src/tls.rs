//! Test certificates, generated at run time with rcgen into the cluster's temp directory.
//!
//! One CA signs etcd's server certificate (valid for `127.0.0.1`, `::1`, `localhost` and
//! `etcd.test`) and the client certificates; a second CA that etcd does not trust signs a
//! client certificate of its own, and its certificate serves as "the wrong CA" for clients.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Server name in etcd's certificate that does not resolve: for server-name override tests.
pub const SERVER_NAME: &str = "etcd.test";

/// Paths of the PEM files of a TLS cluster (all in [`dir`](Self::dir)).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Directory holding every file below.
    pub dir: PathBuf,
    /// The CA etcd trusts and that signed its certificate: give this to clients.
    pub ca: PathBuf,
    /// etcd's certificate and key.
    pub server_cert: PathBuf,
    /// etcd's key.
    pub server_key: PathBuf,
    /// A client certificate (CN [`CLIENT_CN`]) signed by the CA, for mutual TLS.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// A client certificate with CN `root`, which the harness itself uses.
    pub root_cert: PathBuf,
    /// Its key.
    pub root_key: PathBuf,
    /// An expired client certificate (CN [`CLIENT_CN`]) signed by the CA.
    pub expired_client_cert: PathBuf,
    /// Its key.
    pub expired_client_key: PathBuf,
    /// A CA that etcd does not trust and that did not sign etcd's certificate.
    pub other_ca: PathBuf,
    /// A client certificate signed by `other_ca`, which etcd rejects.
    pub other_client_cert: PathBuf,
    /// Its key.
    pub other_client_key: PathBuf,
}

/// CN of [`TlsFiles::client_cert`]: the etcd user it stands for under `--client-cert-auth`.
pub const CLIENT_CN: &str = "etcd-registry-client";

fn err(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("generating test certificates: {e}"))
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn leaf_params(cn: &str, sans: &[&str], expired: bool) -> Result<CertificateParams, rcgen::Error> {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    Ok(params)
}

/// Writes a certificate and its key as `NAME.pem` and `NAME-key.pem`.
fn write_leaf(
    dir: &Path,
    name: &str,
    params: &CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> io::Result<(PathBuf, PathBuf)> {
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, issuer).map_err(err)?;
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    fs::write(&cert_path, cert.pem())?;
    fs::write(&key_path, key.serialize_pem())?;
    Ok((cert_path, key_path))
}

fn write_ca(dir: &Path, name: &str, cn: &str) -> io::Result<(PathBuf, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate().map_err(err)?;
    let params = ca_params(cn);
    let cert = params.self_signed(&key).map_err(err)?;
    let path = dir.join(format!("{name}.pem"));
    fs::write(&path, cert.pem())?;
    Ok((path, Issuer::new(params, key)))
}

/// Generates every certificate into `dir` (created). `expired_server`: etcd's certificate
/// expired in 2021.
pub fn generate(dir: &Path, expired_server: bool) -> io::Result<TlsFiles> {
    fs::create_dir_all(dir)?;
    let (ca, issuer) = write_ca(dir, "ca", "etcd-harness test CA")?;
    let (other_ca, other_issuer) = write_ca(dir, "other-ca", "etcd-harness untrusted CA")?;
    let server = leaf_params(
        "etcd",
        &["127.0.0.1", "::1", "localhost", SERVER_NAME],
        expired_server,
    )
    .map_err(err)?;
    let (server_cert, server_key) = write_leaf(dir, "server", &server, &issuer)?;
    let client = leaf_params(CLIENT_CN, &[], false).map_err(err)?;
    let (client_cert, client_key) = write_leaf(dir, "client", &client, &issuer)?;
    let root = leaf_params("root", &[], false).map_err(err)?;
    let (root_cert, root_key) = write_leaf(dir, "root", &root, &issuer)?;
    let expired = leaf_params(CLIENT_CN, &[], true).map_err(err)?;
    let (expired_client_cert, expired_client_key) =
        write_leaf(dir, "expired-client", &expired, &issuer)?;
    let (other_client_cert, other_client_key) =
        write_leaf(dir, "other-client", &client, &other_issuer)?;
    Ok(TlsFiles {
        dir: dir.to_path_buf(),
        ca,
        server_cert,
        server_key,
        client_cert,
        client_key,
        root_cert,
        root_key,
        expired_client_cert,
        expired_client_key,
        other_ca,
        other_client_cert,
        other_client_key,
    })
}

impl TlsFiles {
    /// `(NAME, path)` for every file, as the `etcd-harness` binary publishes them (JSON keys and
    /// `ETCD_HARNESS_TLS_<NAME>` environment variables).
    pub fn entries(&self) -> Vec<(&'static str, &Path)> {
        vec![
            ("ca", &self.ca),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
            ("expired_client_cert", &self.expired_client_cert),
            ("expired_client_key", &self.expired_client_key),
            ("other_ca", &self.other_ca),
            ("other_client_cert", &self.other_client_cert),
            ("other_client_key", &self.other_client_key),
            ("server_cert", &self.server_cert),
            ("server_key", &self.server_key),
        ]
    }
}
