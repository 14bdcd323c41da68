//! Agent configuration: the raw TOML shape ([`AgentConfigFile`], every field documented,
//! unknown keys rejected) and the validated runtime form ([`AgentConfig`]).
//!
//! Loading takes a `&str` so tests feed it directly. Validation reports every problem
//! in one pass, each naming its key, before any file is opened or socket bound.

use crate::pipeline::anomaly::DetectorConfig;
use crate::pipeline::multiline::{Multiline, Preset, Rule};
use crate::pipeline::parse::{Format, Parser};
use crate::pipeline::redact::{self, Action, CustomRule, Redactor, Validator};
use crate::pipeline::template::MinerConfig;
use crate::ship::ShipConfig;
use crate::sources::{Policy, Ship};
use crate::spool::{FullPolicy, SpoolLimits};
use heimdall_common::config::{ByteSize, ConfigProblems, HumanDuration, ShutdownConfig};
use heimdall_common::limits;
use heimdall_common::tls::TlsFiles;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// The systemd journal. Without this section the journal is read when this host
    /// has one (`/var/log/journal` or `/run/log/journal`) and `journalctl` is installed.
    pub journald: Option<JournaldConfig>,
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
    /// PII redaction for every source (each source can add to it in its own `redact`).
    #[serde(default)]
    pub redact: RedactConfig,
    /// Template mining (each source has its own miner with these settings).
    #[serde(default)]
    pub templates: TemplatesConfig,
    /// Pre-aggregation: counts and bytes per window by stream, level and template.
    #[serde(default)]
    pub aggregate: AggregateConfig,
    /// Local anomaly detection (each source can tune it in its own `anomaly`).
    #[serde(default)]
    pub anomaly: AnomalyConfig,
}

/// The `[templates]` section.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct TemplatesConfig {
    /// Mine templates. Default true.
    pub enabled: Option<bool>,
    /// Most templates kept per source; the least recently used goes first. Default 10000.
    pub max_templates: Option<usize>,
    /// Share of a message's literal tokens a template must match, exceeded (0..1).
    /// Default 0.5.
    pub similarity: Option<f64>,
    /// Leading tokens that key the prefix tree. Default 2.
    pub depth: Option<usize>,
}

/// The `[aggregate]` section.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Window of the counts. Default 10s.
    pub window: Option<HumanDuration>,
}

/// The `[anomaly]` section, or a source's own `anomaly` table (which may set `enabled`
/// and `sensitivity` only).
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Detect anomalies. Default true.
    pub enabled: Option<bool>,
    /// Above 1 flags smaller deviations, below 1 only larger ones (0.1..10). Default 1.
    pub sensitivity: Option<f64>,
    /// How long a series is watched before it may raise an anomaly. Default 30m.
    pub warmup: Option<HumanDuration>,
}

/// PII redaction: the global `[redact]` section, or a source's own `redact` table,
/// which adds rules and allow-list entries to the global ones and overrides its types.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// Redact at all. Default true.
    pub enabled: Option<bool>,
    /// Action for every built-in type not named in `types`: `mask` (default, `<email>`),
    /// `pseudonym` (`<email:3f9a1c2e>`, keyed by `secret`), `partial` (last four kept,
    /// `<card:****1111>`) or `drop` (discard the record).
    pub action: Option<String>,
    /// Per built-in type (`email`, `ipv4`, `ipv6`, `card`, `iban`, `ssn`, `phone`, `jwt`,
    /// `aws_access_key`, `aws_secret_key`, `bearer`, `secret`, `url_password`,
    /// `private_key`): an action, or `off`.
    #[serde(default)]
    pub types: BTreeMap<String, String>,
    /// Custom rules.
    #[serde(default)]
    pub rules: Vec<RedactRuleConfig>,
    /// Values never redacted, compared with exactly what a rule found (e.g. the
    /// address of an internal service).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Regular expressions for values never redacted; each must match the whole value.
    #[serde(default)]
    pub allow_patterns: Vec<String>,
    /// Key of the pseudonym HMAC-SHA256, at least 16 characters; every host that
    /// shares it gives a value the same pseudonym. Global section only.
    pub secret: Option<String>,
    /// A file holding the key instead (surrounding whitespace ignored). Global only.
    pub secret_file: Option<PathBuf>,
    /// Hex characters of a pseudonym, 8 to 64. Default 8. Global only.
    pub pseudonym_length: Option<u32>,
}

/// A custom redaction rule.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RedactRuleConfig {
    /// Type name used in masks and metrics (`<employee_id>`): lower-case letters,
    /// digits and `_`, not a built-in type's name.
    pub name: String,
    /// Regular expression of what to redact. With a group named `value`, only the
    /// group is redacted (`emp=(?P<value>E\d{6})`).
    pub pattern: String,
    /// A check the match must also pass: `luhn`, `mod97`, `ssn` or `ip`.
    pub validator: Option<String>,
    /// `mask`, `pseudonym`, `partial` or `drop`. Default: the section's `action`.
    pub action: Option<String>,
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
    /// A regular expression matched against each file's path; its named groups become
    /// labels, e.g. `^/var/log/(?P<service>[^/]+)/` gives `service="nginx"` for
    /// `/var/log/nginx/access.log`. Labels set in `labels` win.
    pub labels_from_path: Option<String>,
    /// Read files that look binary (a run of fewer than 8 NUL bytes in their first
    /// 4KiB; longer runs are the zero-filled holes a crash leaves in text files, and
    /// separate lines). Default false: they are skipped with a warning. Compressed
    /// files (gzip, bzip2, xz, zstd, lz4, zip) are always skipped.
    #[serde(default)]
    pub allow_binary: bool,
    /// Joining the lines of one record (stack traces). Default: off, one line a record.
    pub multiline: Option<MultilineConfig>,
    /// Extracting time and level from lines.
    #[serde(default)]
    pub parse: ParseConfig,
    /// Redaction for this source on top of the global `[redact]` section.
    pub redact: Option<RedactConfig>,
    /// What to ship: `all` (default), `aggregates_only` (counts only, no lines) or
    /// `sample` (warnings and worse, and `sample_rate` of the rest).
    pub ship: Option<String>,
    /// Share of records at info level or below shipped with `ship = "sample"` (0..1].
    pub sample_rate: Option<f64>,
    /// Anomaly detection for this source on top of the global `[anomaly]` section.
    pub anomaly: Option<AnomalyConfig>,
}

/// Multiline joining for a file source.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// A built-in rule set: `java`, `python` or `go`.
    pub preset: Option<String>,
    /// Regular expression: a line that matches starts a new record; other lines join
    /// the open record (unless `continue_pattern` is also set and does not match).
    pub start_pattern: Option<String>,
    /// Regular expression: a line that matches continues the open record.
    pub continue_pattern: Option<String>,
    /// Complete an open record when no line has joined it for this long. Default 1s.
    pub timeout: Option<HumanDuration>,
    /// Most lines in one record. Default 1000.
    pub max_lines: Option<u32>,
    /// Most bytes in one record; longer records are cut and flagged `truncated`.
    /// Default: the source's `max_line_bytes`.
    pub max_bytes: Option<ByteSize>,
}

/// Time and level extraction.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct ParseConfig {
    /// `auto` (JSON, logfmt or plain text, detected per line; default), `json`,
    /// `logfmt`, `text`, or `none` (observed time, unknown level).
    pub format: Option<String>,
    /// UTC offset of timestamps that carry none, like `+02:00`. Default `+00:00`.
    pub timezone: Option<String>,
}

/// The systemd journal source.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct JournaldConfig {
    /// Read the journal. Default true when this section is present.
    pub enabled: Option<bool>,
    /// Only these units (`_SYSTEMD_UNIT`, e.g. `nginx.service`); default every unit.
    #[serde(default)]
    pub include_units: Vec<String>,
    /// Never these units.
    #[serde(default)]
    pub exclude_units: Vec<String>,
    /// Read journal files from this directory instead of the system journal
    /// (`journalctl --directory`).
    pub directory: Option<PathBuf>,
    /// The `journalctl` program. Default `journalctl` on the PATH.
    pub journalctl: Option<PathBuf>,
    /// Where to start when no cursor is checkpointed yet: `boot` (this boot's entries;
    /// default), `beginning` (everything kept), or `end` (only new entries).
    pub read_from: Option<String>,
    /// Extra labels for journal streams.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Longest wait before restarting `journalctl` after it exits. Default 30s.
    pub max_backoff: Option<HumanDuration>,
    /// Redaction for journal entries on top of the global `[redact]` section.
    pub redact: Option<RedactConfig>,
    /// What to ship: `all` (default), `aggregates_only` or `sample` (as for files).
    pub ship: Option<String>,
    /// Share of records at info level or below shipped with `ship = "sample"` (0..1].
    pub sample_rate: Option<f64>,
    /// Anomaly detection for the journal on top of the global `[anomaly]` section.
    pub anomaly: Option<AnomalyConfig>,
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
            labels_from_path: None,
            allow_binary: false,
            multiline: None,
            parse: ParseConfig::default(),
            redact: None,
            ship: None,
            sample_rate: None,
            anomaly: None,
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
    /// What to do at `max_bytes`: `block` (default: stop reading; files keep their
    /// positions and nothing is lost) or `drop_oldest` (delete the oldest unsent
    /// batches to make room; counted in `heimdall_agent_spool_dropped_*` and logged).
    pub policy: Option<String>,
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
    pub labels_from_path: Option<regex::Regex>,
    pub allow_binary: bool,
    pub multiline: Option<Arc<Multiline>>,
    pub parser: Parser,
    /// `None` when redaction is off for this source.
    pub redact: Option<Arc<Redactor>>,
    /// Shipping and anomaly detection.
    pub policy: Arc<Policy>,
}

impl FileSource {
    /// A source for `include` with every other setting at its default.
    pub fn with_include(include: Vec<String>) -> FileSource {
        FileSource {
            include,
            exclude: Vec::new(),
            max_line_bytes: 256 << 10,
            read_from: ReadFrom::Beginning,
            poll_interval: Duration::from_secs(1),
            rotate_wait: Duration::from_secs(5),
            labels: BTreeMap::new(),
            labels_from_path: None,
            allow_binary: false,
            multiline: None,
            parser: Parser::default(),
            redact: Some(Arc::new(Redactor::builtin())),
            policy: Arc::new(Policy::default()),
        }
    }
}

/// Where the journal source starts without a checkpointed cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalStart {
    Boot,
    Beginning,
    End,
}

/// Whether and how the journal is read.
#[derive(Clone, Debug)]
pub struct Journald {
    /// Configured explicitly: a missing `journalctl` is logged as an error, not skipped.
    pub required: bool,
    pub include_units: Vec<String>,
    pub exclude_units: Vec<String>,
    pub directory: Option<PathBuf>,
    pub journalctl: PathBuf,
    pub read_from: JournalStart,
    pub labels: BTreeMap<String, String>,
    pub max_backoff: Duration,
    /// `None` when redaction is off for the journal.
    pub redact: Option<Arc<Redactor>>,
    /// Shipping and anomaly detection.
    pub policy: Arc<Policy>,
}

/// The validated runtime configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub host: String,
    pub labels: BTreeMap<String, String>,
    pub files: Vec<FileSource>,
    /// `None` when the journal is disabled.
    pub journald: Option<Journald>,
    pub batch_max_bytes: usize,
    pub batch_max_records: usize,
    pub batch_timeout: Duration,
    pub spool: SpoolLimits,
    pub ship: ShipConfig,
    pub metrics_listen: Option<SocketAddr>,
    pub shutdown_grace: Duration,
    /// The global redaction settings (what `heimdall-agent redact` applies); `None`
    /// when off.
    pub redact: Option<Arc<Redactor>>,
    /// Template mining settings; `None` when off.
    pub templates: Option<MinerConfig>,
    /// Window of the pre-aggregated counts.
    pub aggregate_window: Duration,
    /// Anomaly detection settings (sources hold their own sensitivity).
    pub anomaly: DetectorConfig,
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
    /// The certificate files a configuration names, read even when other keys are
    /// wrong (so `check-config` can check them in the same pass); `None` when the text
    /// is not TOML of this shape.
    pub fn tls_files_of(text: &str, ov: &Overrides) -> Option<TlsFiles> {
        use heimdall_common::config::toml_path;
        let t: toml::Table = toml::from_str(text).ok()?;
        let state_dir = ov
            .state_dir
            .clone()
            .or_else(|| toml_path(&t, &["state_dir"]))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let output = OutputConfig {
            ca: toml_path(&t, &["output", "ca"]),
            cert: toml_path(&t, &["output", "cert"]),
            key: toml_path(&t, &["output", "key"]),
            ..OutputConfig::default()
        };
        Some(tls_files(&state_dir, &output))
    }

    pub fn load(text: &str, overrides: &Overrides) -> Result<AgentConfig, Error> {
        let (raw, shape) = heimdall_common::config::parse_toml::<AgentConfigFile>(text)?;
        let Some(raw) = raw else {
            return Err(Error::Invalid(shape));
        };
        match AgentConfig::from_raw(raw, overrides) {
            Ok(c) if shape.0.is_empty() => Ok(c),
            Ok(_) => Err(Error::Invalid(shape)),
            Err(Error::Invalid(more)) => {
                let mut all = shape;
                all.0.extend(more.0);
                Err(Error::Invalid(all))
            }
            Err(e) => Err(e),
        }
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
            .or(raw.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let host = match raw.host.clone() {
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
        check_labels(&mut p, "labels", &raw.labels);

        let mut sources = raw.files.clone();
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
        let global = GlobalRedact::new(&mut p, &raw.redact);
        let mut files = Vec::new();
        for (i, s) in sources.into_iter().enumerate() {
            let key = format!("files[{i}]");
            files.push(file_source(&mut p, &key, s, &global, &raw));
        }

        let batch_max_bytes = raw.batch.max_bytes.map_or(1 << 20, |b| b.0);
        if !(1024..=limits::MAX_BATCH_BYTES as u64).contains(&batch_max_bytes) {
            p.push("batch.max_bytes", "must be between 1KiB and 32MiB");
        }
        let batch_max_records = raw.batch.max_records.unwrap_or(10_000);
        if !(1..=limits::MAX_BATCH_RECORDS as u64).contains(&(batch_max_records as u64)) {
            p.push("batch.max_records", "must be between 1 and 500000");
        }
        let batch_timeout = raw.batch.timeout.map_or(Duration::from_secs(1), |d| d.0);
        if batch_timeout < Duration::from_millis(1) || batch_timeout > Duration::from_secs(600) {
            p.push("batch.timeout", "must be between 1ms and 10m");
        }

        let spool = spool_limits(&mut p, &raw.spool);
        let journald = journald(&mut p, raw.journald, &global, &raw.anomaly);
        let templates = templates(&mut p, &raw.templates);
        let aggregate_window = raw
            .aggregate
            .window
            .map_or(Duration::from_secs(10), |d| d.0);
        if aggregate_window < Duration::from_secs(1)
            || aggregate_window > Duration::from_secs(3600)
            || aggregate_window.subsec_nanos() != 0
        {
            p.push(
                "aggregate.window",
                "must be whole seconds between 1s and 1h",
            );
        }
        let anomaly = detector_config(&mut p, &raw.anomaly, aggregate_window);
        let redact = global.redactor(&mut p, "redact", None);

        let ship = ship_config(&mut p, ov, &raw.output, &state_dir, &host);
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
            journald,
            batch_max_bytes: batch_max_bytes as usize,
            batch_max_records: batch_max_records as usize,
            batch_timeout,
            spool,
            ship,
            host,
            metrics_listen,
            shutdown_grace: raw.shutdown.grace.map_or(Duration::from_secs(10), |d| d.0),
            redact,
            templates,
            aggregate_window,
            anomaly,
        })
    }
}

/// One `[[files]]` source, checked.
fn file_source(
    p: &mut ConfigProblems,
    key: &str,
    s: FileSourceConfig,
    global: &GlobalRedact,
    raw: &AgentConfigFile,
) -> FileSource {
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
    if !(64..=limits::MAX_LINE_BYTES as u64).contains(&max_line_bytes) {
        p.push(
            format!("{key}.max_line_bytes"),
            "must be between 64B and 4MiB (the protocol's longest line)",
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
    if poll_interval < Duration::from_millis(10) || poll_interval > Duration::from_secs(3600) {
        p.push(
            format!("{key}.poll_interval"),
            "must be between 10ms and 1h",
        );
    }
    check_source_labels(p, key, &s.labels);
    let labels_from_path =
        s.labels_from_path
            .as_deref()
            .and_then(|re| match regex::Regex::new(re) {
                Ok(r) if r.capture_names().flatten().next().is_some() => {
                    for name in r.capture_names().flatten() {
                        check_label_name(p, &format!("{key}.labels_from_path"), name);
                        if name == "host" || name == "source" {
                            p.push(
                                format!("{key}.labels_from_path"),
                                format!("group `{name}` names a label the agent sets"),
                            );
                        }
                    }
                    Some(r)
                }
                Ok(_) => {
                    p.push(
                        format!("{key}.labels_from_path"),
                        "needs at least one named group, like (?P<service>[^/]+)",
                    );
                    None
                }
                Err(e) => {
                    p.push(
                        format!("{key}.labels_from_path"),
                        format!("not a valid regular expression: {e}"),
                    );
                    None
                }
            });
    let groups = labels_from_path
        .as_ref()
        .map_or(0, |r| r.capture_names().flatten().count());
    let count = raw.labels.len() + s.labels.len() + groups + AGENT_SET_LABELS;
    if count > limits::MAX_LABELS {
        p.push(
            format!("{key}.labels"),
            format!(
                "streams would have up to {count} labels with the global ones, the \
                 path's groups and the {AGENT_SET_LABELS} Heimdall sets; at most {} \
                 are allowed",
                limits::MAX_LABELS
            ),
        );
    }
    let multiline = s
        .multiline
        .as_ref()
        .and_then(|m| multiline(p, &format!("{key}.multiline"), m, max_line_bytes as usize));
    let parser = parser(p, &format!("{key}.parse"), &s.parse);
    let redact = global.redactor(p, &format!("{key}.redact"), s.redact.as_ref());
    let policy = policy(
        p,
        key,
        s.ship.as_deref(),
        s.sample_rate,
        &raw.anomaly,
        s.anomaly.as_ref(),
    );
    FileSource {
        include: s.include,
        exclude,
        max_line_bytes: max_line_bytes as usize,
        read_from,
        poll_interval,
        rotate_wait: s.rotate_wait.map_or(Duration::from_secs(5), |d| d.0),
        labels: s.labels,
        labels_from_path,
        allow_binary: s.allow_binary,
        multiline,
        parser,
        redact,
        policy,
    }
}

/// `[spool]`, checked.
fn spool_limits(p: &mut ConfigProblems, raw: &SpoolConfig) -> SpoolLimits {
    let spool_max_bytes = raw.max_bytes.map_or(1 << 30, |b| b.0);
    if spool_max_bytes < (1 << 20) {
        p.push("spool.max_bytes", "must be at least 1MiB");
    }
    let spool_segment_bytes = raw
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
    let spool_memory_bytes = raw.memory_bytes.map_or(16 << 20, |b| b.0);
    let policy = match raw.policy.as_deref() {
        None | Some("block") => FullPolicy::Block,
        Some("drop_oldest") => FullPolicy::DropOldest,
        Some(other) => {
            p.push(
                "spool.policy",
                format!("`{other}`: expected `block` or `drop_oldest`"),
            );
            FullPolicy::Block
        }
    };
    SpoolLimits {
        max_bytes: spool_max_bytes,
        segment_bytes: spool_segment_bytes,
        memory_bytes: spool_memory_bytes,
        policy,
    }
}

/// `[output]` (with `--endpoint` overrides), checked.
fn ship_config(
    p: &mut ConfigProblems,
    ov: &Overrides,
    raw: &OutputConfig,
    state_dir: &Path,
    host: &str,
) -> ShipConfig {
    let endpoints = if !ov.endpoints.is_empty() {
        ov.endpoints.clone()
    } else if raw.endpoints.is_empty() {
        vec![DEFAULT_ENDPOINT.to_owned()]
    } else {
        raw.endpoints.clone()
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
    let tls = tls_files(state_dir, raw);
    let window = raw.window.unwrap_or(16) as usize;
    if !(1..=256).contains(&window) {
        p.push("output.window", "must be between 1 and 256");
    }
    ShipConfig {
        endpoints,
        server_name: raw
            .server_name
            .clone()
            .unwrap_or_else(|| "localhost".into()),
        tls,
        window,
        max_backoff: raw.max_backoff.map_or(Duration::from_secs(30), |d| d.0),
        heartbeat: raw.heartbeat.map_or(Duration::from_secs(10), |d| d.0),
        host: host.to_owned(),
    }
}

/// Labels the agent sets on every stream itself (`host`, `source`) or may set from what
/// it reads (`service`, `syslog_identifier`, `hostname`, path groups); the aggregator
/// adds `agent`. Counted against the protocol's limit of labels per stream.
const AGENT_SET_LABELS: usize = 5;

fn tls_files(state_dir: &Path, output: &OutputConfig) -> TlsFiles {
    TlsFiles {
        ca: output
            .ca
            .clone()
            .unwrap_or_else(|| state_dir.join("tls/ca.pem")),
        cert: output
            .cert
            .clone()
            .unwrap_or_else(|| state_dir.join("tls/agent.pem")),
        key: output
            .key
            .clone()
            .unwrap_or_else(|| state_dir.join("tls/agent-key.pem")),
    }
}

fn check_source_labels(p: &mut ConfigProblems, key: &str, labels: &BTreeMap<String, String>) {
    check_labels(p, &format!("{key}.labels"), labels);
    for k in labels.keys() {
        if k == "host" || k == "source" {
            p.push(
                format!("{key}.labels.{k}"),
                "is set by the agent and cannot be overridden here",
            );
        }
    }
}

/// Names, values and the reserved `agent` label of a static label table.
fn check_labels(p: &mut ConfigProblems, key: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        let at = format!("{key}.{k}");
        check_label_name(p, &at, k);
        if k == "agent" {
            p.push(
                &at,
                "is reserved: the aggregator sets it to the agent's certificate name",
            );
        }
        if v.len() > limits::MAX_LABEL_VALUE_BYTES {
            p.push(
                &at,
                format!(
                    "value is {} bytes; label values are at most {}",
                    v.len(),
                    limits::MAX_LABEL_VALUE_BYTES
                ),
            );
        }
    }
}

fn regex_at(p: &mut ConfigProblems, key: String, re: &str) -> Option<regex::bytes::Regex> {
    match regex::bytes::Regex::new(re) {
        Ok(r) => Some(r),
        Err(e) => {
            p.push(key, format!("not a valid regular expression: {e}"));
            None
        }
    }
}

fn multiline(
    p: &mut ConfigProblems,
    key: &str,
    m: &MultilineConfig,
    max_line_bytes: usize,
) -> Option<Arc<Multiline>> {
    let start = m
        .start_pattern
        .as_deref()
        .and_then(|r| regex_at(p, format!("{key}.start_pattern"), r));
    let cont = m
        .continue_pattern
        .as_deref()
        .and_then(|r| regex_at(p, format!("{key}.continue_pattern"), r));
    let rule = match (&m.preset, &m.start_pattern, &m.continue_pattern) {
        (Some(name), None, None) => match Preset::from_name(name) {
            Some(pr) => Rule::Preset(pr),
            None => {
                p.push(
                    format!("{key}.preset"),
                    format!("`{name}`: expected `java`, `python` or `go`"),
                );
                return None;
            }
        },
        (Some(_), _, _) => {
            p.push(
                format!("{key}.preset"),
                "cannot be combined with start_pattern or continue_pattern",
            );
            return None;
        }
        (None, None, None) => {
            p.push(key, "needs `preset`, `start_pattern` or `continue_pattern`");
            return None;
        }
        _ => Rule::Patterns { start, cont },
    };
    let timeout = m.timeout.map_or(Duration::from_secs(1), |d| d.0);
    if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(60) {
        p.push(format!("{key}.timeout"), "must be between 10ms and 60s");
    }
    let max_lines = m.max_lines.unwrap_or(1000);
    if !(2..=100_000).contains(&max_lines) {
        p.push(format!("{key}.max_lines"), "must be between 2 and 100000");
    }
    let max_bytes = m.max_bytes.map_or(max_line_bytes as u64, |b| b.0);
    if !(64..=limits::MAX_LINE_BYTES as u64).contains(&max_bytes) {
        p.push(
            format!("{key}.max_bytes"),
            "must be between 64B and 4MiB (the protocol's longest line)",
        );
    }
    Some(Arc::new(Multiline {
        rule,
        timeout,
        max_lines: max_lines as usize,
        max_bytes: max_bytes as usize,
    }))
}

fn parser(p: &mut ConfigProblems, key: &str, c: &ParseConfig) -> Parser {
    let format = match c.format.as_deref() {
        None | Some("auto") => Format::Auto,
        Some("json") => Format::Json,
        Some("logfmt") => Format::Logfmt,
        Some("text") => Format::Text,
        Some("none") => Format::None,
        Some(other) => {
            p.push(
                format!("{key}.format"),
                format!("`{other}`: expected auto, json, logfmt, text or none"),
            );
            Format::Auto
        }
    };
    let utc_offset_s = match c.timezone.as_deref() {
        None | Some("UTC") | Some("Z") => 0,
        Some(tz) => match parse_utc_offset(tz) {
            Some(s) => s,
            None => {
                p.push(
                    format!("{key}.timezone"),
                    format!("`{tz}`: expected a UTC offset like +02:00 or -05:30"),
                );
                0
            }
        },
    };
    Parser {
        format,
        utc_offset_s,
    }
}

fn parse_utc_offset(s: &str) -> Option<i32> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    ((0..=14).contains(&h) && (0..60).contains(&m)).then_some(sign * (h * 3600 + m * 60))
}

/// Checks `[templates]`.
fn templates(p: &mut ConfigProblems, c: &TemplatesConfig) -> Option<MinerConfig> {
    let d = MinerConfig::default();
    let cfg = MinerConfig {
        depth: c.depth.unwrap_or(d.depth),
        similarity: c.similarity.unwrap_or(d.similarity),
        max_templates: c.max_templates.unwrap_or(d.max_templates),
    };
    if !(1..=8).contains(&cfg.depth) {
        p.push("templates.depth", "must be between 1 and 8");
    }
    if !(cfg.similarity > 0.0 && cfg.similarity < 1.0) {
        p.push(
            "templates.similarity",
            "must be between 0 and 1 (exclusive)",
        );
    }
    if !(10..=1_000_000).contains(&cfg.max_templates) {
        p.push("templates.max_templates", "must be between 10 and 1000000");
    }
    (c.enabled != Some(false)).then_some(cfg)
}

/// Checks the `sensitivity` of the anomaly table at `key`.
fn check_sensitivity(p: &mut ConfigProblems, key: &str, c: &AnomalyConfig) {
    if c.sensitivity.is_some_and(|s| !(0.1..=10.0).contains(&s)) {
        p.push(format!("{key}.sensitivity"), "must be between 0.1 and 10");
    }
}

/// Checks `[anomaly]`.
fn detector_config(p: &mut ConfigProblems, c: &AnomalyConfig, window: Duration) -> DetectorConfig {
    check_sensitivity(p, "anomaly", c);
    let d = DetectorConfig::default();
    let warmup = c.warmup.map_or(d.warmup, |w| w.0);
    if warmup < window || warmup > Duration::from_secs(7 * 86_400) {
        p.push(
            "anomaly.warmup",
            "must be at least one aggregate.window and at most 7d",
        );
    }
    DetectorConfig {
        window,
        warmup,
        ..d
    }
}

/// A source's shipping and anomaly settings; `key` names the source in errors.
fn policy(
    p: &mut ConfigProblems,
    key: &str,
    ship: Option<&str>,
    sample_rate: Option<f64>,
    global: &AnomalyConfig,
    own: Option<&AnomalyConfig>,
) -> Arc<Policy> {
    let ship = match ship {
        None | Some("all") => {
            if sample_rate.is_some() {
                p.push(
                    format!("{key}.sample_rate"),
                    "only applies with ship = \"sample\"",
                );
            }
            Ship::All
        }
        Some("aggregates_only") => Ship::AggregatesOnly,
        Some("sample") => match sample_rate {
            Some(r) if r > 0.0 && r <= 1.0 => Ship::Sample(r),
            Some(_) => {
                p.push(format!("{key}.sample_rate"), "must be in (0, 1]");
                Ship::All
            }
            None => {
                p.push(
                    format!("{key}.sample_rate"),
                    "is required with ship = \"sample\"",
                );
                Ship::All
            }
        },
        Some(other) => {
            p.push(
                format!("{key}.ship"),
                format!("`{other}`: expected `all`, `aggregates_only` or `sample`"),
            );
            Ship::All
        }
    };
    // The global section is checked once, by `detector_config`.
    if let Some(c) = own {
        if c.warmup.is_some() {
            p.push(
                format!("{key}.anomaly.warmup"),
                "may only be set in [anomaly]",
            );
        }
        check_sensitivity(p, &format!("{key}.anomaly"), c);
    }
    let enabled = own
        .and_then(|c| c.enabled)
        .or(global.enabled)
        .unwrap_or(true);
    let sensitivity = enabled.then(|| {
        own.and_then(|c| c.sensitivity)
            .or(global.sensitivity)
            .unwrap_or(1.0)
    });
    Arc::new(Policy {
        ship,
        anomaly: sensitivity,
    })
}

fn journald(
    p: &mut ConfigProblems,
    raw: Option<JournaldConfig>,
    global: &GlobalRedact,
    anomaly: &AnomalyConfig,
) -> Option<Journald> {
    let present = raw.is_some();
    let c = raw.unwrap_or_default();
    if c.enabled == Some(false) {
        return None;
    }
    check_source_labels(p, "journald", &c.labels);
    for (field, units) in [
        ("include_units", &c.include_units),
        ("exclude_units", &c.exclude_units),
    ] {
        for (i, u) in units.iter().enumerate() {
            if u.is_empty() || u.contains(['=', '+', ' ']) {
                p.push(
                    format!("journald.{field}[{i}]"),
                    format!("`{u}` is not a unit name like nginx.service"),
                );
            }
        }
    }
    let read_from = match c.read_from.as_deref() {
        None | Some("boot") => JournalStart::Boot,
        Some("beginning") => JournalStart::Beginning,
        Some("end") => JournalStart::End,
        Some(other) => {
            p.push(
                "journald.read_from",
                format!("`{other}`: expected `boot`, `beginning` or `end`"),
            );
            JournalStart::Boot
        }
    };
    let has_journal =
        Path::new("/var/log/journal").is_dir() || Path::new("/run/log/journal").is_dir();
    if !present && !has_journal {
        return None;
    }
    Some(Journald {
        required: present,
        include_units: c.include_units,
        exclude_units: c.exclude_units,
        directory: c.directory,
        journalctl: c.journalctl.unwrap_or_else(|| PathBuf::from("journalctl")),
        read_from,
        labels: c.labels,
        max_backoff: c.max_backoff.map_or(Duration::from_secs(30), |d| d.0),
        redact: global.redactor(p, "journald.redact", c.redact.as_ref()),
        policy: policy(
            p,
            "journald",
            c.ship.as_deref(),
            c.sample_rate,
            anomaly,
            c.anomaly.as_ref(),
        ),
    })
}

/// The global `[redact]` section, checked once; sources build their redactors on it.
struct GlobalRedact {
    raw: RedactConfig,
    secret: Option<Vec<u8>>,
    pseudonym_len: usize,
    secret_reported: std::cell::Cell<bool>,
}

impl GlobalRedact {
    fn new(p: &mut ConfigProblems, raw: &RedactConfig) -> GlobalRedact {
        let secret = match (&raw.secret, &raw.secret_file) {
            (Some(_), Some(_)) => {
                p.push(
                    "redact.secret_file",
                    "cannot be combined with redact.secret",
                );
                None
            }
            (Some(s), None) => Some(s.as_bytes().to_vec()),
            (None, Some(f)) => match std::fs::read(f) {
                Ok(b) => Some(b.trim_ascii().to_vec()),
                Err(e) => {
                    p.push(
                        "redact.secret_file",
                        format!("cannot read {}: {e}", f.display()),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        if secret.as_ref().is_some_and(|s| s.len() < 16) {
            let key = if raw.secret.is_some() {
                "redact.secret"
            } else {
                "redact.secret_file"
            };
            p.push(key, "must be at least 16 characters");
        }
        let pseudonym_len = raw.pseudonym_length.unwrap_or(8);
        if !(8..=64).contains(&pseudonym_len) {
            p.push("redact.pseudonym_length", "must be between 8 and 64");
        }
        GlobalRedact {
            raw: raw.clone(),
            secret,
            pseudonym_len: pseudonym_len as usize,
            secret_reported: std::cell::Cell::new(false),
        }
    }

    /// The redactor for a source with its own section `local` (problems under `key`),
    /// `None` when redaction is off there.
    fn redactor(
        &self,
        p: &mut ConfigProblems,
        key: &str,
        local: Option<&RedactConfig>,
    ) -> Option<Arc<Redactor>> {
        let g = &self.raw;
        if let Some(l) = local {
            for (field, set) in [
                ("secret", l.secret.is_some()),
                ("secret_file", l.secret_file.is_some()),
                ("pseudonym_length", l.pseudonym_length.is_some()),
            ] {
                if set {
                    p.push(
                        format!("{key}.{field}"),
                        "can only be set in the global [redact] section",
                    );
                }
            }
        }
        let enabled = local.and_then(|l| l.enabled).or(g.enabled).unwrap_or(true);
        let action_of = |p: &mut ConfigProblems, k: String, v: &str| match Action::parse(v) {
            Some(a) => Some(a),
            None => {
                p.push(
                    k,
                    format!("`{v}`: expected `mask`, `pseudonym`, `partial` or `drop`"),
                );
                None
            }
        };
        let local_action = local
            .and_then(|l| l.action.as_deref())
            .and_then(|a| action_of(p, format!("{key}.action"), a));
        // Problems of the global section are reported once, under `redact`.
        let mut scratch = ConfigProblems::default();
        let gp: &mut ConfigProblems = if key == "redact" {
            &mut *p
        } else {
            &mut scratch
        };
        let global_action = g
            .action
            .as_deref()
            .and_then(|a| action_of(gp, "redact.action".into(), a));
        let default = local_action.or(global_action).unwrap_or(Action::Mask);
        let mut settings = redact::Settings {
            builtin: [Some(default); redact::BUILTIN.len()],
            secret: self.secret.clone(),
            pseudonym_len: self.pseudonym_len,
            ..redact::Settings::default()
        };
        // A rule without an action takes its own section's.
        let mut apply =
            |p: &mut ConfigProblems, prefix: &str, c: &RedactConfig, rule_default: Action| {
                for (t, v) in &c.types {
                    let Some(i) = redact::BUILTIN.iter().position(|b| b == t) else {
                        p.push(
                            format!("{prefix}.types.{t}"),
                            format!(
                                "unknown type; expected one of {}",
                                redact::BUILTIN.join(", ")
                            ),
                        );
                        continue;
                    };
                    settings.builtin[i] = if v == "off" {
                        None
                    } else {
                        action_of(p, format!("{prefix}.types.{t}"), v).or(settings.builtin[i])
                    };
                }
                for (j, r) in c.rules.iter().enumerate() {
                    let rk = format!("{prefix}.rules[{j}]");
                    let name_ok = !r.name.is_empty()
                        && r.name
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                    if !name_ok {
                        p.push(
                            format!("{rk}.name"),
                            "use lower-case letters, digits and `_`",
                        );
                    } else if redact::BUILTIN.contains(&r.name.as_str()) {
                        p.push(
                            format!("{rk}.name"),
                            "is a built-in type; pick another name",
                        );
                    }
                    let pattern = regex_at(p, format!("{rk}.pattern"), &r.pattern);
                    let validator = r.validator.as_deref().and_then(|v| {
                        let parsed = Validator::parse(v);
                        if parsed.is_none() {
                            p.push(
                                format!("{rk}.validator"),
                                format!("`{v}`: expected `luhn`, `mod97`, `ssn` or `ip`"),
                            );
                        }
                        parsed
                    });
                    let action = match &r.action {
                        Some(a) => action_of(p, format!("{rk}.action"), a).unwrap_or(rule_default),
                        None => rule_default,
                    };
                    if let Some(pattern) = pattern {
                        settings.rules.push(CustomRule {
                            name: r.name.clone(),
                            pattern,
                            validator,
                            action,
                        });
                    }
                }
                for (j, a) in c.allow_patterns.iter().enumerate() {
                    match regex::bytes::Regex::new(a) {
                        Ok(_) => settings.allow_patterns.push(a.clone()),
                        Err(e) => p.push(
                            format!("{prefix}.allow_patterns[{j}]"),
                            format!("not a valid regular expression: {e}"),
                        ),
                    }
                }
                settings.allow.extend(c.allow.iter().cloned());
            };
        let global_default = global_action.unwrap_or(Action::Mask);
        apply(gp, "redact", g, global_default);
        drop(scratch);
        if let Some(l) = local {
            apply(p, key, l, local_action.unwrap_or(global_default));
        }
        if !enabled {
            return None;
        }
        let pseudonyms = settings.builtin.contains(&Some(Action::Pseudonym))
            || settings.rules.iter().any(|r| r.action == Action::Pseudonym);
        if pseudonyms && settings.secret.is_none() {
            // Reported once, by the first redactor that needs it; the configuration
            // is then invalid, so no source runs without its redaction.
            if !self.secret_reported.replace(true) {
                p.push(
                    "redact.secret",
                    format!(
                        "is needed (or redact.secret_file): `{key}` uses the `pseudonym` action"
                    ),
                );
            }
            return None;
        }
        match Redactor::new(settings) {
            Ok(r) => Some(Arc::new(r)),
            // Patterns were checked above; a failure here is reported, not hidden.
            Err(e) => {
                p.push(key, e.to_string());
                None
            }
        }
    }
}

fn check_label_name(p: &mut ConfigProblems, key: &str, name: &str) {
    if name.len() > limits::MAX_LABEL_NAME_BYTES {
        p.push(
            key,
            format!(
                "label names are at most {} bytes",
                limits::MAX_LABEL_NAME_BYTES
            ),
        );
        return;
    }
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
    fn the_readme_example_is_valid() {
        let readme = include_str!("../../README.md");
        let start = readme.find("### Agent configuration").unwrap();
        let block = &readme[start..];
        let body = &block[block.find("```toml\n").unwrap() + 8..];
        let body = &body[..body.find("```").unwrap()];
        // The example points at a key file this machine does not have.
        let body = body.replace(
            "secret_file = \"/etc/heimdall/redact.key\"",
            "secret = \"0123456789abcdef\"",
        );
        let c = AgentConfig::load(&body, &Overrides::default()).unwrap();
        let r = c.files[0].redact.as_ref().unwrap();
        let mut stats = crate::pipeline::redact::Stats::default();
        let out = r.redact(b"emp=E123456 ops@example.com 10.0.0.9", &mut stats);
        let crate::pipeline::redact::Outcome::Redacted(b, 2) = out else {
            panic!("{out:?}")
        };
        let text = String::from_utf8(b.to_vec()).unwrap();
        assert!(
            text.starts_with("emp=<employee_id> <email:") && text.ends_with("> 10.0.0.9"),
            "{text}"
        );
    }

    #[test]
    fn redaction_problems_name_their_keys() {
        let bad = "[redact]\ntypes.mail = \"mask\"\ntypes.card = \"hide\"\nsecret = \"short\"\n[[redact.rules]]\nname = \"email\"\npattern = \"(\"\nvalidator = \"crc\"\n[[files]]\ninclude = [\"/x/*.log\"]\nredact = { secret = \"0123456789abcdef\", allow_patterns = [\"[\"] }\n";
        let e = AgentConfig::load(bad, &Overrides::default())
            .unwrap_err()
            .to_string();
        for key in [
            "redact.types.mail",
            "redact.types.card",
            "redact.secret",
            "redact.rules[0].name",
            "redact.rules[0].pattern",
            "redact.rules[0].validator",
            "files[0].redact.secret",
            "files[0].redact.allow_patterns[0]",
        ] {
            assert!(e.contains(&format!("`{key}`")), "{key} not named in {e}");
        }
        // A source that turns redaction on cannot run without the secret it needs.
        let open = "[redact]\nenabled = false\naction = \"pseudonym\"\n[[files]]\ninclude = [\"/x/*.log\"]\nredact = { enabled = true }\n";
        let e = AgentConfig::load(open, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert_eq!(e.matches("`redact.secret`").count(), 1, "{e}");
        // Global rules keep the global action when a source sets its own.
        let rules = "[[redact.rules]]\nname = \"emp\"\npattern = \"E[0-9]{6}\"\n[[files]]\ninclude = [\"/x/*.log\"]\nredact = { action = \"drop\" }\n";
        let c = AgentConfig::load(rules, &Overrides::default()).unwrap();
        let r = c.files[0].redact.as_ref().unwrap();
        let mut st = crate::pipeline::redact::Stats::default();
        assert!(matches!(
            r.redact(b"E123456", &mut st),
            crate::pipeline::redact::Outcome::Redacted(..)
        ));
        assert_eq!(
            r.redact(b"a@b.io", &mut st),
            crate::pipeline::redact::Outcome::Drop
        );
        let off = AgentConfig::load("[redact]\nenabled = false\n", &Overrides::default()).unwrap();
        assert!(off.redact.is_none() && off.files[0].redact.is_none());
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
