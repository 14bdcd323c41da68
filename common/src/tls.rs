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

/// Makes ring the process's default rustls provider (for libraries that build their
/// TLS from the default: reqwest in object storage and notifications). Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The crypto provider Heimdall uses everywhere.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    provider()
}

/// What a certificate is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// An agent's client certificate, presented to the aggregator.
    Client,
    /// The aggregator's server certificate, checked for its own names.
    Server,
}

/// Certificates expiring sooner than this are warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// What [`check_files`] found: problems that stop TLS from working, and warnings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// `YYYY-MM-DD HH:MM:SS UTC` of Unix seconds.
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Checks the TLS files as the process will use them, reporting every problem: files
/// that cannot be read, a key that does not belong to its certificate, a certificate
/// outside its validity period or not chaining to the CA (for `Server`, not valid for
/// its own first name). Certificates expiring within [`EXPIRY_WARNING`] are warned
/// about.
pub fn check_files(files: &TlsFiles, purpose: Purpose) -> Findings {
    let mut f = Findings::default();
    let roots = roots(&files.ca)
        .map_err(|e| f.problems.push(e.to_string()))
        .ok();
    let certs = load_certs(&files.cert)
        .map_err(|e| f.problems.push(e.to_string()))
        .ok();
    let key = load_key(&files.key)
        .map_err(|e| f.problems.push(e.to_string()))
        .ok();
    let provider = provider();
    let Some(certs) = certs else { return f };
    if let Some(key) = key {
        match provider.key_provider.load_private_key(key) {
            Ok(signer) => {
                if rustls::sign::CertifiedKey::new(certs.clone(), signer)
                    .keys_match()
                    .is_err()
                {
                    f.problems.push(format!(
                        "the key in {} does not belong to the certificate in {}",
                        files.key.display(),
                        files.cert.display()
                    ));
                }
            }
            Err(e) => f.problems.push(format!(
                "{} holds a key that cannot be used: {e}",
                files.key.display()
            )),
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut in_time = true;
    match cert_info(&certs[0]) {
        Ok(info) => {
            if now > info.not_after {
                in_time = false;
                f.problems.push(format!(
                    "certificate {} expired on {}",
                    files.cert.display(),
                    utc(info.not_after)
                ));
            } else if now < info.not_before {
                in_time = false;
                f.problems.push(format!(
                    "certificate {} is not valid before {}",
                    files.cert.display(),
                    utc(info.not_before)
                ));
            } else if info.not_after - now < EXPIRY_WARNING.as_secs() as i64 {
                f.warnings.push(format!(
                    "certificate {} expires on {}, in {} days",
                    files.cert.display(),
                    utc(info.not_after),
                    (info.not_after - now) / 86_400
                ));
            }
        }
        Err(e) => {
            f.problems.push(format!("{}: {e}", files.cert.display()));
            return f;
        }
    }
    let Some(roots) = roots else { return f };
    let roots = Arc::new(roots);
    let time = rustls::pki_types::UnixTime::now();
    // `Err((reason, about_time))`: expiry is reported above, in words.
    let about_time = |e: &rustls::Error| {
        use rustls::CertificateError as C;
        matches!(
            e,
            rustls::Error::InvalidCertificate(
                C::Expired
                    | C::ExpiredContext { .. }
                    | C::NotValidYet
                    | C::NotValidYetContext { .. }
            )
        )
    };
    let chained: Result<(), (String, bool)> = match purpose {
        Purpose::Client => {
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| (e.to_string(), false))
                .and_then(|v| {
                    v.verify_client_cert(&certs[0], &certs[1..], time)
                        .map(|_| ())
                        .map_err(|e| (e.to_string(), about_time(&e)))
                })
        }
        Purpose::Server => match first_name(&certs[0]) {
            None => Err((
                "it names no host (no subject alternative name)".to_owned(),
                false,
            )),
            Some(name) => {
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| (e.to_string(), false))
                    .and_then(|v| {
                        use rustls::client::danger::ServerCertVerifier;
                        v.verify_server_cert(&certs[0], &certs[1..], &name, &[], time)
                            .map(|_| ())
                            .map_err(|e| (e.to_string(), about_time(&e)))
                    })
            }
        },
    };
    if let Err((e, time_only)) = chained {
        if in_time || !time_only {
            f.problems.push(format!(
                "certificate {} does not verify against the CA in {}: {e}",
                files.cert.display(),
                files.ca.display()
            ));
        }
    }
    f
}

/// The first DNS name or IP address a certificate is issued for.
fn first_name(der: &CertificateDer<'_>) -> Option<rustls::pki_types::ServerName<'static>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => rustls::pki_types::ServerName::try_from(d.to_string()).ok(),
        GeneralName::IPAddress(b) => match b.len() {
            4 => Some(rustls::pki_types::ServerName::IpAddress(
                std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).into(),
            )),
            16 => Some(rustls::pki_types::ServerName::IpAddress(
                std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).into(),
            )),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod check_tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_798_761_599), "2026-12-31 23:59:59 UTC");
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn check_files_names_every_problem() {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issue = |name: &str, expired: bool| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec![name.to_owned()]).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            if expired {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            (p.signed_by(&key, &ca, &ca_key).unwrap(), key)
        };
        let ca_pem = write(&dir, "ca.pem", &ca.pem());
        let (good, good_key) = issue("web1", false);
        let files = TlsFiles {
            ca: ca_pem.clone(),
            cert: write(&dir, "good.pem", &good.pem()),
            key: write(&dir, "good-key.pem", &good_key.serialize_pem()),
        };
        assert_eq!(check_files(&files, Purpose::Client), Findings::default());
        assert_eq!(check_files(&files, Purpose::Server), Findings::default());

        // Expired, and with the key of another certificate.
        let (old, _) = issue("old", true);
        let (_, other_key) = issue("other", false);
        let bad = TlsFiles {
            ca: ca_pem.clone(),
            cert: write(&dir, "old.pem", &old.pem()),
            key: write(&dir, "other-key.pem", &other_key.serialize_pem()),
        };
        let f = check_files(&bad, Purpose::Client);
        assert_eq!(f.problems.len(), 2, "{f:?}");
        assert!(f.problems[0].contains("does not belong"), "{f:?}");
        assert!(f.problems[1].contains("expired on 2021-01-01"), "{f:?}");

        // Signed by another CA; and files that are missing.
        let other_ca = write(&dir, "other-ca.pem", &{
            let k = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.self_signed(&k).unwrap().pem()
        });
        let f = check_files(
            &TlsFiles {
                ca: other_ca,
                ..files.clone()
            },
            Purpose::Client,
        );
        assert_eq!(f.problems.len(), 1, "{f:?}");
        assert!(
            f.problems[0].contains("does not verify against the CA"),
            "{f:?}"
        );
        let f = check_files(
            &TlsFiles {
                ca: dir.join("none.pem"),
                cert: dir.join("none2.pem"),
                key: dir.join("none3.pem"),
            },
            Purpose::Client,
        );
        assert_eq!(f.problems.len(), 3, "{f:?}");
    }
}
