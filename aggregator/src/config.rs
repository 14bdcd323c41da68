//! Aggregator configuration: the raw TOML shape ([`AggregatorConfigFile`], unknown keys
//! rejected, every field documented) and the validated runtime form ([`AggregatorConfig`]).

use heimdall_common::config::{ByteSize, ConfigProblems, HumanDuration, ShutdownConfig};
use heimdall_common::tls::TlsFiles;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Warm tier: Parquet segments on local disk, and compaction into them.
    #[serde(default)]
    pub warm: WarmConfig,
    /// Cold tier: the same segments on S3-compatible object storage.
    #[serde(default)]
    pub cold: ColdConfigFile,
    /// How long data is kept in any tier.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Alert rules, receivers and incident correlation.
    #[serde(default)]
    pub alerting: heimdall_alert::config::AlertingConfigFile,
    /// What pushes through the Loki API (`/loki/api/v1/push`) and OTLP may hold.
    #[serde(default)]
    pub push: PushConfig,
    /// OTLP logs over HTTP.
    #[serde(default)]
    pub otlp: OtlpConfig,
}

/// OTLP logs over HTTP (`/v1/logs` on its own listener, `/otlp/v1/logs` on the API's).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// TCP address of the OTLP listener (the collector's default port). Default
    /// `127.0.0.1:4318`; when that default is taken, the aggregator runs without it
    /// (OTLP stays on the API at `/otlp/v1/logs`). An address given here must bind.
    pub listen: Option<String>,
    /// Serve the OTLP listener at all. Default true.
    pub enabled: Option<bool>,
    /// Resource attributes that become stream labels (by their OTLP names); the others
    /// are structured metadata. Default: Loki 3's list (`service.name`,
    /// `k8s.namespace.name`, `deployment.environment`, …).
    pub index_labels: Option<Vec<String>>,
}

/// Limits of pushed entries, named and defaulted as Loki's.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// Refuse entries older than `reject_old_samples_max_age`. Default true.
    pub reject_old_samples: Option<bool>,
    /// How old a pushed entry may be. Default 168h (a week).
    pub reject_old_samples_max_age: Option<HumanDuration>,
    /// How far in the future a pushed entry may be. Default 10m.
    pub creation_grace_period: Option<HumanDuration>,
    /// Labels a stream's `service_name` is taken from when it has none, in order
    /// (`unknown_service` when it has none of them); applies to agents' streams too.
    /// Default Loki's: service, app, application, name, app_kubernetes_io_name,
    /// container, container_name, k8s_container_name, component, workload, job. An
    /// empty list turns discovery off.
    pub discover_service_name: Option<Vec<String>>,
}

/// Warm tier.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WarmConfig {
    /// Segment directory. Default `<state_dir>/segments`.
    pub dir: Option<PathBuf>,
    /// A hot partition is compacted this long after its end. Default 2h.
    pub compact_after: Option<HumanDuration>,
    /// Beyond this many lines in the hot tier, the oldest partitions are compacted
    /// early. Default 20000000.
    pub hot_max_rows: Option<u64>,
    /// Most lines per segment. Default 1000000.
    pub segment_rows: Option<u64>,
    /// zstd level of segments (1-22). Default 9.
    pub zstd_level: Option<i32>,
    /// How often compaction, upload and retention run. Default 30s.
    pub interval: Option<HumanDuration>,
}

/// Cold tier: `[cold]`. Off unless `bucket` is set.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ColdConfigFile {
    /// Bucket name; setting it turns the cold tier on.
    pub bucket: Option<String>,
    /// Key prefix of this aggregator in the bucket. Default: the server id.
    pub prefix: Option<String>,
    /// Endpoint of an S3-compatible server (MinIO, Ceph, GCS interoperability), e.g.
    /// `http://127.0.0.1:9000`. Default: AWS.
    pub endpoint: Option<String>,
    /// Region. Default `us-east-1`.
    pub region: Option<String>,
    /// Access key id. Default: `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// File holding the secret access key. Default: `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key_file: Option<PathBuf>,
    /// Path-style requests (MinIO, Ceph). Default true when `endpoint` is set.
    pub path_style: Option<bool>,
    /// Warm segments whose newest line is older than this are uploaded. Default 1d.
    pub upload_after: Option<HumanDuration>,
    /// Local cache of cold segments read by queries. Default `<state_dir>/cold-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Size bound of that cache. Default 10GiB.
    pub cache_max_bytes: Option<ByteSize>,
}

/// Retention.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Lines, aggregates and anomaly events older than this are deleted from every
    /// tier. Default: kept forever.
    pub period: Option<HumanDuration>,
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
    /// Batches processed at once per connection. Default 64.
    pub max_streams_per_connection: Option<u32>,
    /// Agent connections accepted at once. Default 10000.
    pub max_connections: Option<u32>,
    /// Connections one agent identity may hold at once. Default 4.
    pub max_connections_per_agent: Option<u32>,
    /// Memory for frames, decoded batches and HTTP pushes in flight, across all
    /// connections; beyond it, agents and push clients wait (backpressure). Default 1GiB.
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
    /// Longest a query may run, 100ms to 1h. Default 30s. Segments replaced or deleted
    /// meanwhile keep their files this long (and at least 2 minutes), and a query holds
    /// the hot database's write-ahead log from being checkpointed while it runs.
    pub query_timeout: Option<HumanDuration>,
    /// Most series a metric query may hold at any step. Default 50000.
    pub max_series: Option<u32>,
    /// Truncate the start and end of metric `query_range` requests to multiples of the
    /// step, as Loki's query frontend does with `align_queries_with_step`. Default true.
    pub align_queries_with_step: Option<bool>,
    /// Serve HTTPS with this certificate (PEM, chain first); needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
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
    /// Length of a hot partition (event time). Default 1h.
    pub partition: Option<HumanDuration>,
}

fn tls_files(state_dir: &std::path::Path, ingest: &IngestConfig) -> TlsFiles {
    TlsFiles {
        ca: ingest
            .ca
            .clone()
            .unwrap_or_else(|| state_dir.join("tls/ca.pem")),
        cert: ingest
            .cert
            .clone()
            .unwrap_or_else(|| state_dir.join("tls/server.pem")),
        key: ingest
            .key
            .clone()
            .unwrap_or_else(|| state_dir.join("tls/server-key.pem")),
    }
}

/// The validated runtime configuration.
#[derive(Clone, Debug)]
pub struct AggregatorConfig {
    pub state_dir: PathBuf,
    pub server_id: String,
    pub ingest_listen: SocketAddr,
    pub tls: TlsFiles,
    pub max_streams_per_connection: usize,
    pub max_connections: usize,
    pub max_connections_per_agent: usize,
    pub max_memory_bytes: u64,
    pub api_listen: SocketAddr,
    pub max_limit: usize,
    pub query_timeout: Duration,
    pub max_series: usize,
    pub align_queries_with_step: bool,
    /// What pushed entries may hold.
    pub push: crate::api::push::PushPolicy,
    /// The OTLP listener and whether its address was configured (it must bind then).
    pub otlp_listen: Option<(SocketAddr, bool)>,
    /// How OTLP resources map to labels.
    pub otlp: crate::api::otlp::OtlpMapping,
    /// HTTPS certificate and key, when the API serves TLS.
    pub api_tls: Option<(PathBuf, PathBuf)>,
    pub tokens: Vec<crate::api::auth::Token>,
    pub db_path: PathBuf,
    pub max_group_rows: usize,
    pub partition_ns: i64,
    pub lifecycle: heimdall_store::lifecycle::LifecycleConfig,
    pub cold: Option<heimdall_store::cold::ColdConfig>,
    pub shutdown_grace: Duration,
    pub alerting: heimdall_alert::config::Alerting,
    /// Rule groups read from `alerting.rules` at load.
    pub rule_groups: Vec<heimdall_rules::Group>,
}

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/heimdall-aggregator";

pub use heimdall_common::config::LoadError as Error;

fn server_id_default(id: &Option<String>) -> String {
    id.clone()
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
}

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
    /// The certificate files a configuration names (ingest's, and the API's when it
    /// serves HTTPS), read even when other keys are wrong, so `check-config` can check
    /// them in the same pass; `None` when the text is not TOML of this shape.
    pub fn tls_files_of(
        text: &str,
        ov: &Overrides,
    ) -> Option<(TlsFiles, Option<(PathBuf, PathBuf)>)> {
        let t: toml::Table = toml::from_str(text).ok()?;
        let state_dir = ov
            .state_dir
            .clone()
            .or_else(|| heimdall_common::config::toml_path(&t, &["state_dir"]))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let sub = |name: &str, key: &str| heimdall_common::config::toml_path(&t, &[name, key]);
        let ingest = IngestConfig {
            ca: sub("ingest", "ca"),
            cert: sub("ingest", "cert"),
            key: sub("ingest", "key"),
            ..IngestConfig::default()
        };
        let api = sub("api", "tls_cert").zip(sub("api", "tls_key"));
        Some((tls_files(&state_dir, &ingest), api))
    }

    pub fn load(text: &str, ov: &Overrides) -> Result<AggregatorConfig, Error> {
        let (raw, shape) = heimdall_common::config::parse_toml::<AggregatorConfigFile>(text)?;
        let Some(raw) = raw else {
            return Err(Error::Invalid(shape));
        };
        // Unknown keys and wrong types first, then every other problem, in one report.
        let mut p = shape;
        let state_dir = ov
            .state_dir
            .clone()
            .or(raw.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let ingest_listen = addr(
            &mut p,
            "ingest.listen",
            ov.ingest_listen.clone().or(raw.ingest.listen.clone()),
            "0.0.0.0:7400",
        );
        let api_listen = addr(
            &mut p,
            "api.listen",
            ov.api_listen.clone().or(raw.api.listen.clone()),
            "127.0.0.1:3100",
        );
        let tls = tls_files(&state_dir, &raw.ingest);
        let (otlp_listen, otlp) = otlp(&mut p, &raw.otlp);
        let ingest_limits = ingest_limits(&mut p, &raw.ingest);
        let max_limit = raw.api.max_limit.unwrap_or(5000);
        if max_limit == 0 {
            p.push("api.max_limit", "must be at least 1");
        }
        if let Some(t) = &raw.api.query_timeout {
            if t.0 < Duration::from_millis(100) || t.0 > MAX_QUERY_TIMEOUT {
                p.push("api.query_timeout", "must be between 100ms and 1h");
            }
        }
        let api_tls = api_tls(&mut p, &raw.api);
        let max_series = raw.api.max_series.unwrap_or(50_000);
        if max_series == 0 {
            p.push("api.max_series", "must be at least 1");
        }
        let tokens = api_tokens(&mut p, &raw.api.tokens);
        let max_group_rows = raw.store.max_group_rows.unwrap_or(200_000);
        if max_group_rows == 0 {
            p.push("store.max_group_rows", "must be at least 1");
        }
        let server_id = match raw.server_id.clone() {
            Some(s) if s.trim().is_empty() => {
                p.push("server_id", "must not be empty");
                s
            }
            Some(s) => s,
            None => gethostname::gethostname().to_string_lossy().into_owned(),
        };
        let partition = raw
            .store
            .partition
            .map_or(Duration::from_secs(3600), |d| d.0);
        if partition < Duration::from_secs(60) || partition > Duration::from_secs(7 * 86_400) {
            p.push("store.partition", "must be between 1m and 7d");
        }
        let cold = cold_tier(&mut p, &raw.cold, &raw.server_id, &state_dir);
        let mut lifecycle = lifecycle(&mut p, &raw, cold.is_some(), &state_dir);
        // A file a running query may still read outlives the query.
        lifecycle.reap_grace = raw
            .api
            .query_timeout
            .map_or(heimdall_store::lifecycle::REAP_GRACE, |d| {
                (d.0 + Duration::from_secs(30)).max(heimdall_store::lifecycle::REAP_GRACE)
            });
        let alerting = raw.alerting.validate(&mut p, &state_dir, api_listen);
        let rule_groups = match heimdall_rules::load(&alerting.rules, alerting.evaluation_interval)
        {
            Ok(g) => g,
            Err(problems) => {
                for pr in problems.0 {
                    p.push("alerting.rules", pr.to_string());
                }
                Vec::new()
            }
        };
        p.into_result().map_err(Error::Invalid)?;
        Ok(AggregatorConfig {
            alerting,
            rule_groups,
            partition_ns: partition.as_nanos() as i64,
            lifecycle,
            cold,
            db_path: raw.store.path.unwrap_or_else(|| state_dir.join("hot.db")),
            state_dir,
            server_id,
            ingest_listen,
            tls,
            max_streams_per_connection: ingest_limits.max_streams_per_connection,
            max_connections: ingest_limits.max_connections,
            max_connections_per_agent: ingest_limits.max_connections_per_agent,
            max_memory_bytes: ingest_limits.max_memory_bytes,
            api_listen,
            max_limit: max_limit as usize,
            query_timeout: raw
                .api
                .query_timeout
                .map_or(Duration::from_secs(30), |d| d.0),
            max_series: max_series as usize,
            align_queries_with_step: raw.api.align_queries_with_step.unwrap_or(true),
            push: push_policy(&raw.push),
            otlp_listen,
            otlp,
            api_tls,
            tokens,
            max_group_rows: max_group_rows as usize,
            shutdown_grace: raw.shutdown.grace.map_or(Duration::from_secs(10), |d| d.0),
        })
    }
}

/// The ingest listener's limits, checked.
struct IngestLimits {
    max_streams_per_connection: usize,
    max_connections: usize,
    max_connections_per_agent: usize,
    max_memory_bytes: u64,
}

fn ingest_limits(p: &mut ConfigProblems, raw: &IngestConfig) -> IngestLimits {
    let max_streams = raw.max_streams_per_connection.unwrap_or(64);
    if !(1..=1024).contains(&max_streams) {
        p.push(
            "ingest.max_streams_per_connection",
            "must be between 1 and 1024",
        );
    }
    let max_connections = raw.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        p.push("ingest.max_connections", "must be at least 1");
    }
    let max_per_agent = raw.max_connections_per_agent.unwrap_or(4);
    if max_per_agent == 0 {
        p.push("ingest.max_connections_per_agent", "must be at least 1");
    }
    let max_memory = raw.max_memory.map_or(1 << 30, |b| b.0);
    // Frames are as large as the protocol allows (agents agree on it by
    // construction), and three must fit at once.
    let max_frame = heimdall_common::limits::MAX_FRAME_BYTES as u64;
    if max_memory < 3 * max_frame {
        p.push(
            "ingest.max_memory",
            format!(
                "must be at least {}MiB: three of the largest frames the protocol allows",
                (3 * max_frame).div_ceil(1 << 20)
            ),
        );
    }
    IngestLimits {
        max_streams_per_connection: max_streams as usize,
        max_connections: max_connections as usize,
        max_connections_per_agent: max_per_agent as usize,
        max_memory_bytes: max_memory,
    }
}

/// `api.tls_cert` and `api.tls_key`: both or neither, and readable.
fn api_tls(p: &mut ConfigProblems, raw: &ApiConfig) -> Option<(PathBuf, PathBuf)> {
    match (&raw.tls_cert, &raw.tls_key) {
        (Some(c), Some(k)) => {
            for (f, key) in [(c, "api.tls_cert"), (k, "api.tls_key")] {
                if let Err(e) = std::fs::metadata(f) {
                    p.push(key, format!("{}: {e}", f.display()));
                }
            }
            Some((c.clone(), k.clone()))
        }
        (None, None) => None,
        (Some(_), None) => {
            p.push("api.tls_key", "is needed with api.tls_cert");
            None
        }
        (None, Some(_)) => {
            p.push("api.tls_cert", "is needed with api.tls_key");
            None
        }
    }
}

/// `api.tokens`: each with a name and exactly one of a token file (at least 16
/// characters) or a SHA-256 digest.
fn api_tokens(p: &mut ConfigProblems, raw: &[TokenConfig]) -> Vec<crate::api::auth::Token> {
    let mut tokens = Vec::new();
    for (i, t) in raw.iter().enumerate() {
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
    tokens
}

/// `[cold]`: the S3-compatible tier, when a bucket is set.
fn cold_tier(
    p: &mut ConfigProblems,
    raw: &ColdConfigFile,
    server_id: &Option<String>,
    state_dir: &Path,
) -> Option<heimdall_store::cold::ColdConfig> {
    match &raw.bucket {
        None => {
            for (set, key) in [
                (raw.endpoint.is_some(), "cold.endpoint"),
                (raw.access_key_id.is_some(), "cold.access_key_id"),
                (
                    raw.secret_access_key_file.is_some(),
                    "cold.secret_access_key_file",
                ),
            ] {
                if set {
                    p.push(key, "needs cold.bucket");
                }
            }
            None
        }
        Some(bucket) => {
            if bucket.trim().is_empty() {
                p.push("cold.bucket", "must not be empty");
            }
            let secret = match &raw.secret_access_key_file {
                Some(f) => match std::fs::read_to_string(f) {
                    Ok(t) => Some(t.trim().to_owned()),
                    Err(e) => {
                        p.push(
                            "cold.secret_access_key_file",
                            format!("{}: {e}", f.display()),
                        );
                        None
                    }
                },
                None => std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
            };
            if let Some(e) = &raw.endpoint {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    p.push(
                        "cold.endpoint",
                        format!("`{e}` is not an http:// or https:// URL"),
                    );
                }
            }
            let prefix = raw
                .prefix
                .clone()
                .unwrap_or_else(|| server_id_default(server_id));
            if prefix.contains("..") {
                p.push("cold.prefix", "must not contain `..`");
            }
            Some(heimdall_store::cold::ColdConfig {
                bucket: bucket.clone(),
                prefix,
                allow_http: raw
                    .endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
                path_style: raw.path_style.unwrap_or(raw.endpoint.is_some()),
                endpoint: raw.endpoint.clone(),
                region: raw.region.clone().unwrap_or_else(|| "us-east-1".into()),
                access_key_id: raw
                    .access_key_id
                    .clone()
                    .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok()),
                secret_access_key: secret,
                cache_dir: raw
                    .cache_dir
                    .clone()
                    .unwrap_or_else(|| state_dir.join("cold-cache")),
                cache_max_bytes: raw.cache_max_bytes.map_or(10 << 30, |b| b.0),
            })
        }
    }
}

/// Longest `api.query_timeout` an operator may set.
const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(3600);

/// `[warm]`, `[store] partition` and `[retention]`: the lifecycle's settings.
fn lifecycle(
    p: &mut ConfigProblems,
    raw: &AggregatorConfigFile,
    cold: bool,
    state_dir: &Path,
) -> heimdall_store::lifecycle::LifecycleConfig {
    let zstd_level = raw.warm.zstd_level.unwrap_or(9);
    if !(1..=22).contains(&zstd_level) {
        p.push("warm.zstd_level", "must be between 1 and 22");
    }
    let segment_rows = raw.warm.segment_rows.unwrap_or(1_000_000);
    if !(1000..=100_000_000).contains(&segment_rows) {
        p.push("warm.segment_rows", "must be between 1000 and 100000000");
    }
    let interval = raw.warm.interval.map_or(Duration::from_secs(30), |d| d.0);
    if interval < Duration::from_millis(100) {
        p.push("warm.interval", "must be at least 100ms");
    }
    let retention = raw.retention.period.map(|d| d.0);
    if retention.is_some_and(|r| r < Duration::from_secs(3600)) {
        p.push("retention.period", "must be at least 1h");
    }
    heimdall_store::lifecycle::LifecycleConfig {
        interval,
        warm_dir: raw
            .warm
            .dir
            .clone()
            .unwrap_or_else(|| state_dir.join("segments")),
        compact_after: raw
            .warm
            .compact_after
            .map_or(Duration::from_secs(7200), |d| d.0),
        hot_max_rows: raw.warm.hot_max_rows.unwrap_or(20_000_000),
        segment_rows,
        zstd_level,
        upload_after: cold.then(|| {
            raw.cold
                .upload_after
                .map_or(Duration::from_secs(86_400), |d| d.0)
        }),
        retention,
        reap_grace: heimdall_store::lifecycle::REAP_GRACE,
    }
}

/// `[push]`: which pushed entries are too old or too new.
fn push_policy(raw: &PushConfig) -> crate::api::push::PushPolicy {
    crate::api::push::PushPolicy {
        max_age: if raw.reject_old_samples.unwrap_or(true) {
            Some(
                raw.reject_old_samples_max_age
                    .map_or(Duration::from_secs(168 * 3600), |d| d.0),
            )
        } else {
            None
        },
        creation_grace: raw
            .creation_grace_period
            .map_or(Duration::from_secs(600), |d| d.0),
        service_name_from: match &raw.discover_service_name {
            Some(l) => l.iter().cloned().collect(),
            None => crate::api::push::PushPolicy::default().service_name_from,
        },
    }
}

/// `[otlp]`: the listener (`None` when off; the flag says whether it was asked for
/// explicitly) and the attribute mapping.
fn otlp(
    p: &mut ConfigProblems,
    raw: &OtlpConfig,
) -> (Option<(SocketAddr, bool)>, crate::api::otlp::OtlpMapping) {
    let listen = if raw.enabled.unwrap_or(true) {
        let a = addr(p, "otlp.listen", raw.listen.clone(), "127.0.0.1:4318");
        Some((a, raw.listen.is_some()))
    } else {
        None
    };
    let mut mapping = crate::api::otlp::OtlpMapping::default();
    if let Some(l) = &raw.index_labels {
        if let Some(bad) = l.iter().find(|n| n.trim().is_empty()) {
            p.push(
                "otlp.index_labels",
                format!("`{bad}` is not an attribute name"),
            );
        }
        mapping.index_labels = l.iter().cloned().collect();
    }
    (listen, mapping)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = AggregatorConfig::load("", &Overrides::default()).unwrap();
        assert_eq!(c.ingest_listen.port(), 7400);
        assert_eq!(c.api_listen.port(), 3100);
        assert_eq!(
            c.otlp_listen.map(|(a, asked)| (a.port(), asked)),
            Some((4318, false))
        );
        assert!(c.otlp.index_labels.iter().any(|l| l == "service.name"));
        assert_eq!(
            c.push.service_name_from.first().map(String::as_str),
            Some("service")
        );
    }

    #[test]
    fn otlp_and_service_name_discovery_are_configurable() {
        let c = AggregatorConfig::load(
            r#"
[otlp]
listen = "0.0.0.0:14318"
index_labels = ["service.name", "team"]
[push]
discover_service_name = []
"#,
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.otlp_listen.map(|(a, asked)| (a.port(), asked)),
            Some((14318, true))
        );
        assert_eq!(&*c.otlp.index_labels, ["service.name", "team"]);
        assert!(c.push.service_name_from.is_empty());
        let off =
            AggregatorConfig::load("[otlp]\nenabled = false\n", &Overrides::default()).unwrap();
        assert!(off.otlp_listen.is_none());
        let Error::Invalid(p) = AggregatorConfig::load(
            r#"
[otlp]
listen = "port 4318"
index_labels = [""]
"#,
            &Overrides::default(),
        )
        .unwrap_err() else {
            panic!("expected validation errors")
        };
        let keys: Vec<_> = p.0.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, vec!["otlp.listen", "otlp.index_labels"]);
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

    #[test]
    fn an_operator_may_allow_queries_up_to_an_hour() {
        let c = AggregatorConfig::load("[api]\nquery_timeout = \"45m\"\n", &Overrides::default())
            .unwrap();
        assert_eq!(c.query_timeout, Duration::from_secs(45 * 60));
        // Segments a running query may read keep their files longer than it runs.
        assert_eq!(c.lifecycle.reap_grace, Duration::from_secs(45 * 60 + 30));
        let d = AggregatorConfig::load("", &Overrides::default()).unwrap();
        assert_eq!(
            d.lifecycle.reap_grace,
            heimdall_store::lifecycle::REAP_GRACE
        );
        for bad in ["2h", "10ms"] {
            let Error::Invalid(p) = AggregatorConfig::load(
                &format!("[api]\nquery_timeout = \"{bad}\"\n"),
                &Overrides::default(),
            )
            .unwrap_err() else {
                panic!("expected validation errors")
            };
            assert_eq!(p.0[0].key, "api.query_timeout");
            assert!(p.0[0].to_string().contains("1h"), "{}", p.0[0]);
        }
    }
}
