//! Heimdall's own endpoints: agents, anomaly events, alert rules, alerts, silences,
//! incidents and administration. Times are ns since the Unix epoch unless named
//! otherwise.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An agent as the aggregator knows it (`/api/v1/agents`): what its connection and
/// heartbeats said last.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// Its certificate's name.
    pub agent_id: String,
    pub host: String,
    pub version: String,
    pub remote_addr: String,
    pub connected: bool,
    pub last_seen_ns: i64,
    /// Bytes and batches waiting in its spool.
    pub spool_bytes: u64,
    pub spool_batches: u64,
    /// Age of the oldest batch waiting in its spool.
    pub lag_seconds: f64,
    /// Files it tails.
    pub files: u64,
    /// Read lag: bytes written to its files and not read yet.
    pub unread_bytes: u64,
    /// Batches and lines stored from it since the aggregator started.
    pub batches: u64,
    pub rows: u64,
    /// Batches rejected since the aggregator started (they can never be decoded).
    #[serde(default)]
    pub rejected_batches: u64,
    /// Why the last one was rejected.
    #[serde(default)]
    pub last_reject: String,
    /// Batches in its dead-letter directory, as its heartbeats say.
    #[serde(default)]
    pub dead_letter_batches: u64,
    /// Open connections.
    pub connections: usize,
    /// When the client certificate of its last connection expires, Unix seconds (0
    /// before it first connected).
    #[serde(default)]
    pub cert_not_after: i64,
}

/// A template of an anomaly event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    /// 16 hex digits.
    pub id: String,
    pub text: String,
}

/// An anomaly event an agent detected (`/api/v1/anomalies`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyEvent {
    pub agent: String,
    /// 16 hex digits, unique per agent.
    pub id: String,
    /// `rate_spike`, `rate_drop`, `new_templates`, `error_ratio` or `silence`.
    pub kind: String,
    /// Start of the window it was seen in.
    pub time_ns: i64,
    pub received_ns: i64,
    /// Observation over its threshold (1 = at it).
    pub score: f64,
    pub baseline: f64,
    pub observed: f64,
    pub stream: BTreeMap<String, String>,
    #[serde(default)]
    pub templates: Vec<TemplateRef>,
    /// Redacted sample lines.
    #[serde(default)]
    pub samples: Vec<String>,
    /// The detector's window for this stream (the agent's aggregate window; `baseline`
    /// and `observed` are per window), 0 when unknown.
    #[serde(default)]
    pub window_seconds: u32,
    /// When the condition ended (start of the first window without it), if it has.
    #[serde(default)]
    pub ended_ns: Option<i64>,
}

/// How one rule did at its last evaluation (`/api/v1/rules`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleHealth {
    pub group: String,
    pub name: String,
    /// `metric`, `anomaly` or `absence`.
    pub kind: String,
    /// ns of the last evaluation; 0 before the first.
    pub last_eval: i64,
    pub last_seconds: f64,
    /// Empty when it went well.
    pub error: String,
    /// Alerts pending or firing.
    pub active: usize,
    /// Where it was read from (file).
    pub origin: String,
    pub query: String,
}

/// `data` of `/api/v1/rules`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    pub rules: Vec<RuleHealth>,
}

/// `data` of `POST /api/v1/rules/reload`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// Rules running now.
    pub rules: usize,
}

/// Where an alert instance is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One alert instance: a rule and a label set (`/api/v1/alerts`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub fingerprint: String,
    pub rule: String,
    pub group: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub state: AlertState,
    /// When the condition started to hold (for absence: when the host or stream was
    /// last heard of; for anomaly rules: the event's onset).
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    /// Last evaluation at which the condition held.
    pub last_true: i64,
    pub value: f64,
    /// A few lines that show it.
    pub samples: Vec<String>,
}

/// A silence: alerts whose labels match every matcher are not notified between
/// `starts` and `ends` (`/api/v1/silences`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    /// A selector over alert labels, e.g. `{alertname="HostSilent", host="db1"}`.
    pub matchers: String,
    pub starts: i64,
    pub ends: i64,
    pub created_by: String,
    pub comment: String,
    pub created: i64,
}

/// `POST /api/v1/silences`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// A selector over alert labels.
    pub matchers: String,
    /// RFC 3339 or Unix seconds; default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends: Option<String>,
    /// Instead of `ends`: e.g. `2h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
}

/// Who acknowledges or resolves an incident.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct By {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// One alert or anomaly event in an incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// `alert:<fingerprint>` or `anomaly:<agent>:<id>`.
    pub key: String,
    /// `alert <name>` or `anomaly <kind>`.
    pub what: String,
    /// The labels that say where (host, service, …), as `k=v` text.
    pub subject: String,
    pub labels: BTreeMap<String, String>,
    pub service: Option<String>,
    pub host: Option<String>,
    /// When it began.
    pub onset: i64,
    /// When it was last seen.
    pub at: i64,
    pub active: bool,
    pub score: f64,
    pub templates: Vec<u64>,
    pub traces: Vec<String>,
    pub samples: Vec<String>,
    /// A LogQL query that shows its lines.
    pub query: String,
}

/// A ranked root-cause candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub name: String,
    pub score: f64,
    pub why: String,
    pub onset: i64,
    pub hosts: Vec<String>,
}

/// An alert as receivers see it (Alertmanager's fields).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertOut {
    pub status: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: i64,
    /// 0 while firing (Alertmanager posts set it ahead).
    pub ends_at: i64,
    pub generator_url: String,
    pub fingerprint: String,
    pub value: f64,
    #[serde(default)]
    pub samples: Vec<String>,
}

/// An incident: correlated alerts and anomaly events with ranked root-cause
/// candidates (`/api/v1/incidents`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: i64,
    /// `open` or `resolved`.
    pub state: String,
    pub title: String,
    pub opened: i64,
    pub updated: i64,
    pub resolved: Option<i64>,
    pub acked_by: Option<String>,
    pub acked_at: Option<i64>,
    pub paged: bool,
    /// The incident's page in the console (what notifications link to).
    pub url: String,
    pub candidates: Vec<Candidate>,
    /// Timeline, by onset.
    pub signals: Vec<Signal>,
    /// The incident's alerts, as receivers see them.
    pub alerts: Vec<AlertOut>,
}

/// `POST /api/v1/admin/erase`: lines of a selector with line filters in a range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EraseRequest {
    /// A stream selector with optional line filters.
    pub query: String,
    /// RFC 3339 or Unix seconds/nanoseconds; default the beginning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Exclusive; default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Wait until it is done (default true); otherwise the answer is 202 with the
    /// erasure `pending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
}

/// A recorded erasure request (`/api/v1/admin/erasures`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    pub id: i64,
    pub query: String,
    pub start: i64,
    pub end: i64,
    /// `pending`, `running` or `done`.
    pub state: String,
    pub lines: u64,
    pub segments: u64,
    pub created: i64,
    pub finished: Option<i64>,
}

/// What one storage tier holds (`/api/v1/storage`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierSummary {
    /// `hot`, `warm` or `cold`.
    pub tier: String,
    /// Hot partitions, or segments.
    pub parts: u64,
    pub rows: u64,
    /// Bytes on disk (the hot tier: the database file, including free pages).
    pub bytes: u64,
    /// Bytes of the lines stored (segments only; 0 for the hot tier).
    pub raw_bytes: u64,
    /// Oldest and newest line (0 when empty).
    pub min_ts: i64,
    pub max_ts: i64,
}

/// How data moves between tiers and when it is deleted. Durations in seconds;
/// `None` where the step is off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoragePolicy {
    /// Between lifecycle runs.
    pub interval_seconds: f64,
    /// A hot partition is compacted once its end is this far in the past.
    pub compact_after_seconds: f64,
    /// Beyond this many hot rows the oldest partitions are compacted early.
    pub hot_max_rows: u64,
    /// Warm segments go to the cold tier after this.
    pub upload_after_seconds: Option<f64>,
    /// Data older than this is deleted from every tier.
    pub retention_seconds: Option<f64>,
}

/// One run of a lifecycle step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LifecycleRun {
    /// `reap`, `index`, `erase`, `retention`, `compact` or `upload`.
    pub step: String,
    pub started_ns: i64,
    pub seconds: f64,
    /// Rows moved or deleted.
    pub rows: u64,
    /// Why it failed; absent when it went well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `data` of `/api/v1/storage`: the tiers, the policy and the lifecycle's recent runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Storage {
    pub tiers: Vec<TierSummary>,
    pub policy: StoragePolicy,
    /// The last run of every step.
    pub last_runs: Vec<LifecycleRun>,
    /// Recent runs that moved rows or failed, newest first.
    pub recent_runs: Vec<LifecycleRun>,
}

/// A segment of the warm or cold tier (`/api/v1/admin/segments`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub id: i64,
    pub name: String,
    pub state: String,
    /// `warm` or `cold`.
    pub tier: String,
    pub min_ts: i64,
    pub max_ts: i64,
    pub rows: u64,
    pub bytes: u64,
    pub raw_bytes: u64,
    /// CRC-32C, 8 hex digits.
    pub checksum: String,
}
