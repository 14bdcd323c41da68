//! Certificates: a private CA, the aggregator's server certificate and agent client
//! certificates, made with rcgen. Keys are ECDSA P-256 and written with mode 0600.
//!
//! `init` is idempotent: an existing CA is reused, so re-running it never invalidates
//! certificates already handed out.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Failures making or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen refused (bad name, key generation failed).
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A loaded CA that can sign.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// Paths of what `init` made or found.
#[derive(Debug, Clone)]
pub struct InitOutput {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub agent_cert: PathBuf,
    pub agent_key: PathBuf,
    pub created: Vec<PathBuf>,
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let mode = if private { 0o600 } else { 0o644 };
    crate::fs::write_atomic_mode(path, data.as_bytes(), mode).map_err(io)
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

impl Ca {
    /// Makes a new CA valid for `days`.
    ///
    /// # Errors
    /// [`Error::Rcgen`].
    pub fn generate(name: &str, days: i64) -> Result<Ca, Error> {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.distinguished_name
            .push(DnType::OrganizationName, "Heimdall");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(days);
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    /// Loads a CA from its certificate and key PEM files.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Rcgen`].
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, Error> {
        let key = KeyPair::from_pem(&read(key)?)?;
        let params = CertificateParams::from_ca_cert_pem(&read(cert)?)?;
        // Re-signing the same subject and key gives an issuer that signs exactly like
        // the original certificate.
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA key in PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a certificate: `(cert PEM, key PEM)`. `client` makes an agent certificate
    /// (clientAuth), otherwise a server certificate (serverAuth) for `names`.
    /// `valid_from`/`valid_days` allow tests to make expired certificates.
    ///
    /// # Errors
    /// [`Error::Rcgen`] for invalid names.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[String],
        client: bool,
        valid_from: OffsetDateTime,
        valid_days: i64,
    ) -> Result<(String, String), Error> {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.distinguished_name
            .push(DnType::OrganizationName, "Heimdall");
        for n in names {
            match n.parse::<IpAddr>() {
                Ok(ip) => p.subject_alt_names.push(SanType::IpAddress(ip)),
                Err(_) => p
                    .subject_alt_names
                    .push(SanType::DnsName(n.clone().try_into()?)),
            }
        }
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = valid_from;
        p.not_after = valid_from + Duration::days(valid_days);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Creates, in `dir`, whatever is missing of: a CA (`ca.pem`, `ca-key.pem`), a server
/// certificate for `server_names` (`server.pem`, `server-key.pem`), and an agent
/// certificate for `agent_name` (`agent.pem`, `agent-key.pem`).
///
/// # Errors
/// [`Error`].
pub fn init(dir: &Path, server_names: &[String], agent_name: &str) -> Result<InitOutput, Error> {
    let ca_path = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    let mut created = Vec::new();
    let ca = if ca_path.exists() && ca_key.exists() {
        Ca::load(&ca_path, &ca_key)?
    } else {
        let ca = Ca::generate("Heimdall CA", 3650)?;
        write(&ca_key, &ca.key_pem(), true)?;
        write(&ca_path, &ca.cert_pem(), false)?;
        created.extend([ca_path.clone(), ca_key.clone()]);
        ca
    };
    let now = OffsetDateTime::now_utc() - Duration::hours(1);
    let server_cert = dir.join("server.pem");
    let server_key = dir.join("server-key.pem");
    if !server_cert.exists() || !server_key.exists() {
        let (c, k) = ca.issue(
            server_names.first().map_or("localhost", String::as_str),
            server_names,
            false,
            now,
            825,
        )?;
        write(&server_key, &k, true)?;
        write(&server_cert, &c, false)?;
        created.extend([server_cert.clone(), server_key.clone()]);
    }
    let agent_cert = dir.join("agent.pem");
    let agent_key = dir.join("agent-key.pem");
    if !agent_cert.exists() || !agent_key.exists() {
        let (c, k) = ca.issue(agent_name, &[], true, now, 397)?;
        write(&agent_key, &k, true)?;
        write(&agent_cert, &c, false)?;
        created.extend([agent_cert.clone(), agent_key.clone()]);
    }
    Ok(InitOutput {
        ca: ca_path,
        server_cert,
        server_key,
        agent_cert,
        agent_key,
        created,
    })
}

/// Issues an agent certificate signed by the CA in `tls_dir` into `out` as
/// `<name>.pem` and `<name>-key.pem`, plus a copy of `ca.pem`.
///
/// # Errors
/// [`Error`].
pub fn issue_agent(
    tls_dir: &Path,
    name: &str,
    out: &Path,
    days: i64,
) -> Result<(PathBuf, PathBuf), Error> {
    let ca = Ca::load(&tls_dir.join("ca.pem"), &tls_dir.join("ca-key.pem"))?;
    let (c, k) = ca.issue(
        name,
        &[],
        true,
        OffsetDateTime::now_utc() - Duration::hours(1),
        days,
    )?;
    let cert = out.join(format!("{name}.pem"));
    let key = out.join(format!("{name}-key.pem"));
    write(&key, &k, true)?;
    write(&cert, &c, false)?;
    write(&out.join("ca.pem"), &ca.cert_pem(), false)?;
    Ok((cert, key))
}

/// Default names for the server certificate: localhost, loopback addresses and the hostname.
pub fn default_server_names() -> Vec<String> {
    let mut v = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let h = gethostname::gethostname().to_string_lossy().into_owned();
    if !h.is_empty() && !v.contains(&h) {
        v.push(h);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_keeps_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let out = init(dir.path(), &default_server_names(), "web1").unwrap();
        assert_eq!(out.created.len(), 6);
        let ca1 = fs::read(&out.ca).unwrap();
        let again = init(dir.path(), &default_server_names(), "web1").unwrap();
        assert!(again.created.is_empty());
        assert_eq!(fs::read(&out.ca).unwrap(), ca1);
        let certs = crate::tls::load_certs(&out.agent_cert).unwrap();
        assert_eq!(crate::tls::peer_identity(&certs[0]).unwrap(), "web1");
        let mode = fs::metadata(&out.agent_key).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
        // The files make valid QUIC configurations on both sides.
        let files = crate::tls::TlsFiles {
            ca: out.ca.clone(),
            cert: out.server_cert.clone(),
            key: out.server_key.clone(),
        };
        crate::tls::server_config(&files).unwrap();
        let (c, _k) = issue_agent(dir.path(), "web2", &dir.path().join("web2"), 30).unwrap();
        let certs = crate::tls::load_certs(&c).unwrap();
        assert_eq!(crate::tls::peer_identity(&certs[0]).unwrap(), "web2");
    }
}
