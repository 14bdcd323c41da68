//! Agent configuration: the raw TOML shape ([`AgentConfigFile`], every field documented,
//! unknown keys rejected) and the validated runtime form ([`AgentConfig`]).
//!
//! Loading takes a `&str` so tests feed it directly. Validation reports every problem
//! in one pass, each naming its key, before any file is opened or socket bound.

use crate::ship::ShipConfig;
use crate::spool::SpoolLimits;
use heimdall_common::config::{ByteSize, ConfigProblems, HumanDuration, ShutdownConfig};
use heimdall_common::tls::TlsFiles;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The configuration file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AgentConfigFile {
    /// Directory for the spool and state. Default `/var/lib/heimdall-agent`.
    pub state_dir: Option<PathBuf>,
    /// Value of the `host` label. Default: this machine's hostname.
    pub host: Option<String>,
    /// Static labels added to every stream.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// File sources; default one source tailing `/var/log/**/*.log`.
    #[serde(default)]
    pub files: Vec<FileSourceConfig>,
    /// Batching.
    #[serde(default)]
    pub batch: BatchConfig,
    /// On-disk spool.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Where to ship.
    #[serde(default)]
    pub output: OutputConfig,
    /// Prometheus metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

/// One file source.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Glob patterns of files to tail (`*`, `?`, `[..]`, `**` for any depth).
    pub include: Vec<String>,
    /// Glob patterns of files never to tail, even if included.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Lines longer than this are cut to this size and flagged `truncated`. Default 256KiB.
    pub max_line_bytes: Option<ByteSize>,
    /// Where to start in files found at the agent's first start: `beginning` (default) or
    /// `end`. Files that appear later are always read from the beginning.
    pub read_from: Option<String>,
    /// How often to rescan globs and stat files, in case a notification was lost. Default 1s.
    pub poll_interval: Option<HumanDuration>,
    /// How long to keep reading a file after it was rotated away or deleted, once it has
    /// stopped growing. Default 5s.
    pub rotate_wait: Option<HumanDuration>,
    /// Extra labels for streams from this source (e.g. `service = "nginx"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl FileSourceConfig {
    /// A source for `include` with every other setting at its default.
    pub fn with_include(include: Vec<String>) -> FileSourceConfig {
        FileSourceConfig {
            include,
            exclude: Vec::new(),
            max_line_bytes: None,
            read_from: None,
            poll_interval: None,
            rotate_wait: None,
            labels: BTreeMap::new(),
        }
    }
}

/// Batching between the pipeline and the spool.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Close a batch when its uncompressed lines reach this size. Default 1MiB.
    pub max_bytes: Option<ByteSize>,
    /// Close a batch at this many records. Default 10000.
    pub max_records: Option<u32>,
    /// Close a batch this long after its first record. Default 1s.
    pub timeout: Option<HumanDuration>,
}

/// On-disk spool.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Most bytes the spool may hold; at the cap, reading pauses until the aggregator
    /// acknowledges data (nothing is lost). Default 1GiB.
    pub max_bytes: Option<ByteSize>,
    /// Size of one spool segment file. Default 32MiB (at most an eighth of `max_bytes`).
    pub segment_bytes: Option<ByteSize>,
    /// Compressed batches kept in memory for sending without re-reading disk. Default 16MiB.
    pub memory_bytes: Option<ByteSize>,
}

/// Where and how to ship.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Aggregator addresses (`host:port`), tried in order on failure. Default `127.0.0.1:7400`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Name the aggregator's certificate must carry. Default `localhost`.
    pub server_name: Option<String>,
    /// CA certificate (PEM) that signed the aggregator's certificate.
    pub ca: Option<PathBuf>,
    /// This agent's certificate (PEM); its common name is the agent's identity.
    pub cert: Option<PathBuf>,
    /// This agent's private key (PEM).
    pub key: Option<PathBuf>,
    /// Batches in flight at once. Default 16.
    pub window: Option<u32>,
    /// Longest wait between reconnection attempts. Default 30s.
    pub max_backoff: Option<HumanDuration>,
    /// Interval of heartbeats to the aggregator. Default 10s.
    pub heartbeat: Option<HumanDuration>,
}

/// Prometheus metrics endpoint.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on; empty string to disable. Default `127.0.0.1:9601`.
    pub listen: Option<String>,
}

/// Where reading starts in files found at the first start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    Beginning,
    End,
}

/// A validated file source.
#[derive(Clone, Debug)]
pub struct FileSource {
    pub include: Vec<String>,
    pub exclude: Vec<glob::Pattern>,
    pub max_line_bytes: usize,
    pub read_from: ReadFrom,
    pub poll_interval: Duration,
    pub rotate_wait: Duration,
    pub labels: BTreeMap<String, String>,
}

/// The validated runtime configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub host: String,
    pub labels: BTreeMap<String, String>,
    pub files: Vec<FileSource>,
    pub batch_max_bytes: usize,
    pub batch_max_records: usize,
    pub batch_timeout: Duration,
    pub spool: SpoolLimits,
    pub ship: ShipConfig,
    pub metrics_listen: Option<SocketAddr>,
    pub shutdown_grace: Duration,
}

/// Command-line overrides applied on top of the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Replaces the include globs of every file source (or creates one).
    pub include: Vec<String>,
    pub state_dir: Option<PathBuf>,
    pub endpoints: Vec<String>,
    pub metrics_listen: Option<String>,
}

/// Default glob tailed when no file source is configured.
pub const DEFAULT_INCLUDE: &str = "/var/log/**/*.log";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/heimdall-agent";
/// Default aggregator ingest address.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:7400";

pub use heimdall_common::config::LoadError as Error;

impl AgentConfig {
    /// Parses and validates a configuration file's text, then applies `overrides`.
    ///
    /// # Errors
    /// [`Error::Parse`] naming the bad key, or [`Error::Invalid`] listing every problem.
    pub fn load(text: &str, overrides: &Overrides) -> Result<AgentConfig, Error> {
        let raw: AgentConfigFile = toml::from_str(text).map_err(|e| Error::Parse(e.to_string()))?;
        AgentConfig::from_raw(raw, overrides)
    }

    /// Validates an already-parsed file.
    ///
    /// # Errors
    /// [`Error::Invalid`] listing every problem.
    pub fn from_raw(raw: AgentConfigFile, ov: &Overrides) -> Result<AgentConfig, Error> {
        let mut p = ConfigProblems::default();
        let state_dir = ov
            .state_dir
            .clone()
            .or(raw.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let host = match raw.host {
            Some(h) if h.trim().is_empty() => {
                p.push(
                    "host",
                    "must not be empty (leave it out to use the hostname)",
                );
                String::new()
            }
            Some(h) => h,
            None => gethostname::gethostname().to_string_lossy().into_owned(),
        };
        for k in raw.labels.keys() {
            check_label_name(&mut p, &format!("labels.{k}"), k);
        }

        let mut sources = raw.files;
        if !ov.include.is_empty() {
            if sources.is_empty() {
                sources.push(FileSourceConfig::with_include(ov.include.clone()));
            } else {
                for s in &mut sources {
                    s.include = ov.include.clone();
                }
            }
        }
        if sources.is_empty() {
            sources.push(FileSourceConfig::with_include(vec![
                DEFAULT_INCLUDE.to_owned()
            ]));
        }
        let mut files = Vec::new();
        for (i, s) in sources.into_iter().enumerate() {
            let key = format!("files[{i}]");
            if s.include.is_empty() {
                p.push(format!("{key}.include"), "needs at least one glob");
            }
            for (j, g) in s.include.iter().enumerate() {
                if let Err(e) = glob::Pattern::new(g) {
                    p.push(
                        format!("{key}.include[{j}]"),
                        format!("`{g}` is not a valid glob: {e}"),
                    );
                } else if !g.starts_with('/') {
                    p.push(
                        format!("{key}.include[{j}]"),
                        format!("`{g}` must be an absolute path"),
                    );
                }
            }
            let mut exclude = Vec::new();
            for (j, g) in s.exclude.iter().enumerate() {
                match glob::Pattern::new(g) {
                    Ok(pat) => exclude.push(pat),
                    Err(e) => p.push(
                        format!("{key}.exclude[{j}]"),
                        format!("`{g}` is not a valid glob: {e}"),
                    ),
                }
            }
            let max_line_bytes = s.max_line_bytes.map_or(256 << 10, |b| b.0);
            if !(64..=(4 << 20)).contains(&max_line_bytes) {
                p.push(
                    format!("{key}.max_line_bytes"),
                    "must be between 64B and 4MiB",
                );
            }
            let read_from = match s.read_from.as_deref() {
                None | Some("beginning") => ReadFrom::Beginning,
                Some("end") => ReadFrom::End,
                Some(other) => {
                    p.push(
                        format!("{key}.read_from"),
                        format!("`{other}`: expected `beginning` or `end`"),
                    );
                    ReadFrom::Beginning
                }
            };
            let poll_interval = s.poll_interval.map_or(Duration::from_secs(1), |d| d.0);
            if poll_interval < Duration::from_millis(10)
                || poll_interval > Duration::from_secs(3600)
            {
                p.push(
                    format!("{key}.poll_interval"),
                    "must be between 10ms and 1h",
                );
            }
            for k in s.labels.keys() {
                check_label_name(&mut p, &format!("{key}.labels.{k}"), k);
                if k == "host" || k == "source" {
                    p.push(
                        format!("{key}.labels.{k}"),
                        "is set by the agent and cannot be overridden here",
                    );
                }
            }
            files.push(FileSource {
                include: s.include,
                exclude,
                max_line_bytes: max_line_bytes as usize,
                read_from,
                poll_interval,
                rotate_wait: s.rotate_wait.map_or(Duration::from_secs(5), |d| d.0),
                labels: s.labels,
            });
        }

        let batch_max_bytes = raw.batch.max_bytes.map_or(1 << 20, |b| b.0);
        if !(1024..=(32 << 20)).contains(&batch_max_bytes) {
            p.push("batch.max_bytes", "must be between 1KiB and 32MiB");
        }
        let batch_max_records = raw.batch.max_records.unwrap_or(10_000);
        if !(1..=500_000).contains(&batch_max_records) {
            p.push("batch.max_records", "must be between 1 and 500000");
        }
        let batch_timeout = raw.batch.timeout.map_or(Duration::from_secs(1), |d| d.0);
        if batch_timeout < Duration::from_millis(1) || batch_timeout > Duration::from_secs(600) {
            p.push("batch.timeout", "must be between 1ms and 10m");
        }

        let spool_max_bytes = raw.spool.max_bytes.map_or(1 << 30, |b| b.0);
        if spool_max_bytes < (1 << 20) {
            p.push("spool.max_bytes", "must be at least 1MiB");
        }
        let spool_segment_bytes = raw
            .spool
            .segment_bytes
            .map_or((32u64 << 20).min(spool_max_bytes / 8).max(64 << 10), |b| {
                b.0
            });
        if spool_segment_bytes < (64 << 10) || spool_segment_bytes > spool_max_bytes / 2 {
            p.push(
                "spool.segment_bytes",
                "must be at least 64KiB and at most half of spool.max_bytes",
            );
        }
        let spool_memory_bytes = raw.spool.memory_bytes.map_or(16 << 20, |b| b.0);

        let endpoints = if !ov.endpoints.is_empty() {
            ov.endpoints.clone()
        } else if raw.output.endpoints.is_empty() {
            vec![DEFAULT_ENDPOINT.to_owned()]
        } else {
            raw.output.endpoints
        };
        for (i, e) in endpoints.iter().enumerate() {
            if !e.contains(':')
                || e.rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .is_none()
            {
                p.push(
                    format!("output.endpoints[{i}]"),
                    format!("`{e}` is not host:port"),
                );
            }
        }
        let tls = TlsFiles {
            ca: raw
                .output
                .ca
                .unwrap_or_else(|| state_dir.join("tls/ca.pem")),
            cert: raw
                .output
                .cert
                .unwrap_or_else(|| state_dir.join("tls/agent.pem")),
            key: raw
                .output
                .key
                .unwrap_or_else(|| state_dir.join("tls/agent-key.pem")),
        };
        let window = raw.output.window.unwrap_or(16) as usize;
        if !(1..=256).contains(&window) {
            p.push("output.window", "must be between 1 and 256");
        }
        let metrics_listen = match ov.metrics_listen.clone().or(raw.metrics.listen) {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9601))),
            Some(s) if s.is_empty() => None,
            Some(s) => match s.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    p.push(
                        "metrics.listen",
                        format!("`{s}` is not an address like 127.0.0.1:9601"),
                    );
                    None
                }
            },
        };
        p.into_result().map_err(Error::Invalid)?;
        Ok(AgentConfig {
            state_dir,
            labels: raw.labels,
            files,
            batch_max_bytes: batch_max_bytes as usize,
            batch_max_records: batch_max_records as usize,
            batch_timeout,
            spool: SpoolLimits {
                max_bytes: spool_max_bytes,
                segment_bytes: spool_segment_bytes,
                memory_bytes: spool_memory_bytes,
            },
            ship: ShipConfig {
                endpoints,
                server_name: raw.output.server_name.unwrap_or_else(|| "localhost".into()),
                tls,
                window,
                max_backoff: raw
                    .output
                    .max_backoff
                    .map_or(Duration::from_secs(30), |d| d.0),
                heartbeat: raw
                    .output
                    .heartbeat
                    .map_or(Duration::from_secs(10), |d| d.0),
                host: host.clone(),
            },
            host,
            metrics_listen,
            shutdown_grace: raw.shutdown.grace.map_or(Duration::from_secs(10), |d| d.0),
        })
    }
}

fn check_label_name(p: &mut ConfigProblems, key: &str, name: &str) {
    let ok = !name.is_empty()
        && name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if !ok {
        p.push(key, format!("`{name}` is not a valid label name (letters, digits, `_`; not starting with a digit)"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = AgentConfig::load("", &Overrides::default()).unwrap();
        assert_eq!(c.files.len(), 1);
        assert_eq!(c.files[0].include, vec![DEFAULT_INCLUDE]);
        assert_eq!(c.ship.endpoints, vec![DEFAULT_ENDPOINT]);
        assert_eq!(c.spool.max_bytes, 1 << 30);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = AgentConfig::load("[batch]\nmax_byts = 10\n", &Overrides::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("max_byts"), "{msg}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            [[files]]
            include = ["relative/*.log"]
            read_from = "middle"
            [batch]
            max_records = 0
            [output]
            endpoints = ["nohost"]
        "#;
        let Error::Invalid(p) = AgentConfig::load(text, &Overrides::default()).unwrap_err() else {
            panic!("expected validation errors")
        };
        let keys: Vec<_> = p.0.iter().map(|x| x.key.as_str()).collect();
        assert!(keys.contains(&"files[0].include[0]"), "{keys:?}");
        assert!(keys.contains(&"files[0].read_from"), "{keys:?}");
        assert!(keys.contains(&"batch.max_records"), "{keys:?}");
        assert!(keys.contains(&"output.endpoints[0]"), "{keys:?}");
    }

    #[test]
    fn include_override_replaces_default() {
        let ov = Overrides {
            include: vec!["/tmp/x/*.log".into()],
            ..Overrides::default()
        };
        let c = AgentConfig::load("", &ov).unwrap();
        assert_eq!(c.files[0].include, vec!["/tmp/x/*.log"]);
    }
}
