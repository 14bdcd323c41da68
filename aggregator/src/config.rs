//! Aggregator configuration: the raw TOML shape ([`AggregatorConfigFile`], unknown keys
//! rejected, every field documented) and the validated runtime form ([`AggregatorConfig`]).

use heimdall_common::config::{ByteSize, ConfigProblems, HumanDuration, ShutdownConfig};
use heimdall_common::tls::TlsFiles;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The configuration file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfigFile {
    /// Directory for the database, certificates and segments. Default `/var/lib/heimdall-aggregator`.
    pub state_dir: Option<PathBuf>,
    /// Name this aggregator gives itself in `Welcome`. Default: the hostname.
    pub server_id: Option<String>,
    /// QUIC ingest from agents.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// HTTP API (queries, Loki API, metrics).
    #[serde(default)]
    pub api: ApiConfig,
    /// Hot storage.
    #[serde(default)]
    pub store: StoreConfig,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

/// QUIC ingest.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// UDP address to listen on. Default `0.0.0.0:7400`.
    pub listen: Option<String>,
    /// CA certificate (PEM) that agent certificates must chain to. Default `<state_dir>/tls/ca.pem`.
    pub ca: Option<PathBuf>,
    /// Server certificate (PEM). Default `<state_dir>/tls/server.pem`.
    pub cert: Option<PathBuf>,
    /// Server private key (PEM). Default `<state_dir>/tls/server-key.pem`.
    pub key: Option<PathBuf>,
    /// Largest frame accepted from an agent. Default 16MiB.
    pub max_frame_bytes: Option<ByteSize>,
    /// Batches processed at once per connection. Default 64.
    pub max_streams_per_connection: Option<u32>,
    /// Agent connections accepted at once. Default 10000.
    pub max_connections: Option<u32>,
    /// Connections one agent identity may hold at once. Default 4.
    pub max_connections_per_agent: Option<u32>,
    /// Memory for frames and decoded batches in flight, across all connections; beyond
    /// it, agents wait (backpressure). Default 1GiB.
    pub max_memory: Option<ByteSize>,
}

/// HTTP API.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP address for HTTP. Default `127.0.0.1:3100`.
    pub listen: Option<String>,
    /// Most lines a log query may return. Default 5000.
    pub max_limit: Option<u32>,
    /// Longest a query may run. Default 30s.
    pub query_timeout: Option<HumanDuration>,
    /// Most series a metric query may hold at any step. Default 50000.
    pub max_series: Option<u32>,
    /// API tokens. With none, the API is open to whoever can reach `listen`.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// One API token: `[[api.tokens]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and error messages.
    pub name: String,
    /// `read` (queries), `write` (also push) or `admin` (also erasure).
    pub role: crate::api::auth::Role,
    /// File holding the token (first line). One of `token_file` and `sha256`.
    pub token_file: Option<PathBuf>,
    /// Hex SHA-256 of the token, so the file need not hold the secret.
    pub sha256: Option<String>,
}

/// Hot storage (SQLite).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite database file. Default `<state_dir>/hot.db`.
    pub path: Option<PathBuf>,
    /// Most rows committed in one group-commit transaction. Default 200000.
    pub max_group_rows: Option<u32>,
}

/// The validated runtime configuration.
#[derive(Clone, Debug)]
pub struct AggregatorConfig {
    pub state_dir: PathBuf,
    pub server_id: String,
    pub ingest_listen: SocketAddr,
    pub tls: TlsFiles,
    pub max_frame_bytes: u32,
    pub max_streams_per_connection: usize,
    pub max_connections: usize,
    pub max_connections_per_agent: usize,
    pub max_memory_bytes: u64,
    pub api_listen: SocketAddr,
    pub max_limit: usize,
    pub query_timeout: Duration,
    pub max_series: usize,
    pub tokens: Vec<crate::api::auth::Token>,
    pub db_path: PathBuf,
    pub max_group_rows: usize,
    pub shutdown_grace: Duration,
}

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/heimdall-aggregator";

pub use heimdall_common::config::LoadError as Error;

/// Command-line overrides.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub ingest_listen: Option<String>,
    pub api_listen: Option<String>,
}

fn addr(p: &mut ConfigProblems, key: &str, v: Option<String>, default: &str) -> SocketAddr {
    let s = v.unwrap_or_else(|| default.to_owned());
    s.parse().unwrap_or_else(|_| {
        p.push(key, format!("`{s}` is not an address like {default}"));
        default.parse().expect("defaults are valid addresses")
    })
}

impl AggregatorConfig {
    /// Parses and validates a configuration file's text, then applies overrides.
    ///
    /// # Errors
    /// [`Error::Parse`] naming the bad key, or [`Error::Invalid`] listing every problem.
    pub fn load(text: &str, ov: &Overrides) -> Result<AggregatorConfig, Error> {
        let raw: AggregatorConfigFile =
            toml::from_str(text).map_err(|e| Error::Parse(e.to_string()))?;
        let mut p = ConfigProblems::default();
        let state_dir = ov
            .state_dir
            .clone()
            .or(raw.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let ingest_listen = addr(
            &mut p,
            "ingest.listen",
            ov.ingest_listen.clone().or(raw.ingest.listen),
            "0.0.0.0:7400",
        );
        let api_listen = addr(
            &mut p,
            "api.listen",
            ov.api_listen.clone().or(raw.api.listen),
            "127.0.0.1:3100",
        );
        let tls = TlsFiles {
            ca: raw
                .ingest
                .ca
                .unwrap_or_else(|| state_dir.join("tls/ca.pem")),
            cert: raw
                .ingest
                .cert
                .unwrap_or_else(|| state_dir.join("tls/server.pem")),
            key: raw
                .ingest
                .key
                .unwrap_or_else(|| state_dir.join("tls/server-key.pem")),
        };
        let max_frame = raw.ingest.max_frame_bytes.map_or(16 << 20, |b| b.0);
        if !(64 << 10..=256 << 20).contains(&max_frame) {
            p.push("ingest.max_frame_bytes", "must be between 64KiB and 256MiB");
        }
        let max_streams = raw.ingest.max_streams_per_connection.unwrap_or(64);
        if !(1..=1024).contains(&max_streams) {
            p.push(
                "ingest.max_streams_per_connection",
                "must be between 1 and 1024",
            );
        }
        let max_connections = raw.ingest.max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            p.push("ingest.max_connections", "must be at least 1");
        }
        let max_per_agent = raw.ingest.max_connections_per_agent.unwrap_or(4);
        if max_per_agent == 0 {
            p.push("ingest.max_connections_per_agent", "must be at least 1");
        }
        let max_memory = raw.ingest.max_memory.map_or(1 << 30, |b| b.0);
        if max_memory < 3 * max_frame {
            p.push(
                "ingest.max_memory",
                "must be at least three times ingest.max_frame_bytes",
            );
        }
        let max_limit = raw.api.max_limit.unwrap_or(5000);
        if max_limit == 0 {
            p.push("api.max_limit", "must be at least 1");
        }
        let max_series = raw.api.max_series.unwrap_or(50_000);
        if max_series == 0 {
            p.push("api.max_series", "must be at least 1");
        }
        let mut tokens = Vec::new();
        for (i, t) in raw.api.tokens.iter().enumerate() {
            let key = |k: &str| format!("api.tokens[{i}].{k}");
            let sha = match (&t.token_file, &t.sha256) {
                (Some(f), None) => match std::fs::read_to_string(f) {
                    Ok(text) => {
                        let tok = text.lines().next().unwrap_or("").trim();
                        if tok.len() < 16 {
                            p.push(
                                key("token_file"),
                                format!("{}: a token must be at least 16 characters", f.display()),
                            );
                            None
                        } else {
                            Some(crate::api::auth::digest(tok))
                        }
                    }
                    Err(e) => {
                        p.push(key("token_file"), format!("{}: {e}", f.display()));
                        None
                    }
                },
                (None, Some(h)) => {
                    let bytes: Option<Vec<u8>> = (h.len() == 64)
                        .then(|| {
                            (0..32)
                                .map(|j| u8::from_str_radix(&h[2 * j..2 * j + 2], 16).ok())
                                .collect()
                        })
                        .flatten();
                    match bytes {
                        Some(b) => {
                            let mut d = [0u8; 32];
                            d.copy_from_slice(&b);
                            Some(d)
                        }
                        None => {
                            p.push(key("sha256"), "must be 64 hex digits");
                            None
                        }
                    }
                }
                _ => {
                    p.push(
                        key("token_file"),
                        "give exactly one of token_file and sha256",
                    );
                    None
                }
            };
            if t.name.trim().is_empty() {
                p.push(key("name"), "must not be empty");
            }
            if let Some(sha256) = sha {
                tokens.push(crate::api::auth::Token {
                    name: t.name.clone(),
                    sha256,
                    role: t.role,
                });
            }
        }
        let max_group_rows = raw.store.max_group_rows.unwrap_or(200_000);
        if max_group_rows == 0 {
            p.push("store.max_group_rows", "must be at least 1");
        }
        let server_id = match raw.server_id {
            Some(s) if s.trim().is_empty() => {
                p.push("server_id", "must not be empty");
                s
            }
            Some(s) => s,
            None => gethostname::gethostname().to_string_lossy().into_owned(),
        };
        p.into_result().map_err(Error::Invalid)?;
        Ok(AggregatorConfig {
            db_path: raw.store.path.unwrap_or_else(|| state_dir.join("hot.db")),
            state_dir,
            server_id,
            ingest_listen,
            tls,
            max_frame_bytes: max_frame as u32,
            max_streams_per_connection: max_streams as usize,
            max_connections: max_connections as usize,
            max_connections_per_agent: max_per_agent as usize,
            max_memory_bytes: max_memory,
            api_listen,
            max_limit: max_limit as usize,
            query_timeout: raw
                .api
                .query_timeout
                .map_or(Duration::from_secs(30), |d| d.0),
            max_series: max_series as usize,
            tokens,
            max_group_rows: max_group_rows as usize,
            shutdown_grace: raw.shutdown.grace.map_or(Duration::from_secs(10), |d| d.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = AggregatorConfig::load("", &Overrides::default()).unwrap();
        assert_eq!(c.ingest_listen.port(), 7400);
        assert_eq!(c.api_listen.port(), 3100);
    }

    #[test]
    fn bad_values_name_their_keys() {
        let Error::Invalid(p) = AggregatorConfig::load(
            "[ingest]\nlisten = \"nowhere\"\n[api]\nmax_limit = 0\n",
            &Overrides::default(),
        )
        .unwrap_err() else {
            panic!("expected validation errors")
        };
        let keys: Vec<_> = p.0.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, vec!["ingest.listen", "api.max_limit"]);
        let e =
            AggregatorConfig::load("[ingest]\nlisten_on = 1\n", &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("listen_on"), "{e}");
    }
}
