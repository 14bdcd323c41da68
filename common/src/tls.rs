//! Mutual TLS for QUIC: loading PEM files, building quinn client and server
//! configurations, and reading an agent's identity from its certificate.
//!
//! Both sides use TLS 1.3 only (QUIC requires it) with the `ring` provider. The server
//! requires a client certificate chaining to the configured CA; the agent's identity is
//! the certificate's subject common name, never what the agent claims in `Hello`.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Problems with certificates, keys or TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no certificate, or no private key.
    #[error("{path} contains no {what}")]
    Empty { path: PathBuf, what: &'static str },
    /// A certificate could not be parsed.
    #[error("certificate in {path} is not valid X.509: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    /// Our own certificate is outside its validity period.
    #[error("certificate {path} is not valid now: valid from {not_before} to {not_after} (Unix seconds), now is {now}")]
    NotValidNow {
        path: PathBuf,
        not_before: i64,
        not_after: i64,
        now: i64,
    },
    /// The certificate has no subject common name to use as identity.
    #[error("certificate has no subject common name")]
    NoCommonName,
    /// rustls refused the configuration (key does not match certificate, bad CA, …).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA file.
    #[error("client verifier: {0}")]
    Verifier(String),
    /// quinn refused the rustls configuration.
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

/// Paths to the three PEM files each side needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) that peers must chain to.
    pub ca: PathBuf,
    /// Our certificate chain.
    pub cert: PathBuf,
    /// Our private key.
    pub key: PathBuf,
}

/// What we read of a certificate for checks and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject common name, if any.
    pub common_name: Option<String>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads every certificate in a PEM file.
///
/// # Errors
/// [`Error::Read`], [`Error::BadCertificate`] or [`Error::Empty`].
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::BadCertificate {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Loads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
///
/// # Errors
/// [`Error::Read`] or [`Error::Empty`].
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| Error::Empty {
            path: path.to_owned(),
            what: "private key",
        })
}

/// Reads the subject common name and validity of a DER certificate.
///
/// # Errors
/// [`Error::BadCertificate`] when the DER does not parse.
pub fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, Error> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| Error::BadCertificate {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Ok(CertInfo {
        common_name,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The identity of a peer: the common name of its end-entity certificate.
///
/// # Errors
/// [`Error::BadCertificate`] or [`Error::NoCommonName`].
pub fn peer_identity(der: &CertificateDer<'_>) -> Result<String, Error> {
    cert_info(der)?.common_name.ok_or(Error::NoCommonName)
}

/// Checks that the first certificate of `path` is valid now, so a process refuses to
/// start with an expired certificate instead of failing every handshake.
///
/// # Errors
/// [`Error::NotValidNow`] and the loading errors.
pub fn check_own_certificate(path: &Path) -> Result<CertInfo, Error> {
    let certs = load_certs(path)?;
    let info = cert_info(&certs[0]).map_err(|e| match e {
        Error::BadCertificate { reason, .. } => Error::BadCertificate {
            path: path.to_owned(),
            reason,
        },
        other => other,
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if now < info.not_before || now > info.not_after {
        return Err(Error::NotValidNow {
            path: path.to_owned(),
            not_before: info.not_before,
            not_after: info.not_after,
            now,
        });
    }
    Ok(info)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(Error::Rustls)?;
    }
    Ok(roots)
}

/// QUIC transport settings shared by both sides: keep-alives well inside the idle
/// timeout so a quiet agent keeps its connection, and flow-control windows sized for a
/// window of ~16 compressed batches in flight. The windows are also the memory bound:
/// an aggregator buffers at most `receive_window` unread bytes per connection, an agent
/// at most `send_window` unacknowledged bytes.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(3)));
    // 10 s always fits the VarInt range, so the conversion cannot fail.
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(10))
            .expect("10 s is a valid idle timeout"),
    ));
    t.stream_receive_window(quinn::VarInt::from_u32(4 << 20));
    t.receive_window(quinn::VarInt::from_u32(16 << 20));
    t.send_window(8 << 20);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(128));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(16));
    t
}

/// Server side: requires client certificates chaining to `files.ca`.
///
/// # Errors
/// Loading errors, or a key that does not match the certificate.
pub fn server_config(files: &TlsFiles) -> Result<quinn::ServerConfig, Error> {
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&files.ca)?),
        provider.clone(),
    )
    .build()
    .map_err(|e| Error::Verifier(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    tls.alpn_protocols = vec![crate::wire::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| Error::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport_config()));
    Ok(cfg)
}

/// Client side: presents our certificate and trusts only `files.ca` for the server.
///
/// # Errors
/// Loading errors, or a key that does not match the certificate.
pub fn client_config(files: &TlsFiles) -> Result<quinn::ClientConfig, Error> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    client_config_from(tls)
}

/// Wraps a rustls client configuration for QUIC (tests use it for deliberately broken clients).
///
/// # Errors
/// [`Error::Quic`] when the configuration cannot carry QUIC.
pub fn client_config_from(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, Error> {
    tls.alpn_protocols = vec![crate::wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport_config()));
    Ok(cfg)
}

/// The roots of `ca` and the `ring` provider, for tests and tools building their own clients.
///
/// # Errors
/// Loading errors.
pub fn root_store(ca: &Path) -> Result<rustls::RootCertStore, Error> {
    roots(ca)
}

/// The crypto provider Heimdall uses everywhere.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    provider()
}
