//! Lines pushed by other senders: Loki's `POST /loki/api/v1/push` in each form Loki
//! takes (JSON, JSON under gzip or deflate, protobuf `logproto.PushRequest` under
//! snappy) and, through [`super::otlp`], OTLP logs. Every form is decoded into the one
//! [`Intake`], which checks what Loki checks, entry by entry, so one bad entry never
//! costs its neighbours:
//!
//! - stream labels: valid names, at most [`MAX_PUSH_LABELS`], within the protocol's
//!   lengths; a stream that breaks them has its entries refused, the others are kept;
//! - identity: the reserved `agent` label is the caller's token name, a sender's own
//!   `agent` is kept as `exported_agent` ([`crate::ingest::stamp_identity`]);
//! - `service_name`: discovered from the labels as Loki's `discover_service_name` does
//!   ([`discover_service_name`]);
//! - time: entries older than `reject_old_samples_max_age` or further ahead than
//!   `creation_grace_period` are refused;
//! - structured metadata: at most [`MAX_METADATA_ENTRIES`] pairs and
//!   [`MAX_METADATA_BYTES`] per entry, else the entry is refused; names that are not
//!   label names are sanitized (`http.method` → `http_method`); empty values dropped;
//! - lines over the protocol's limit are cut and flagged `truncated`.

use super::proto;
use super::{bad, internal, ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use heimdall_api::loki::PushRefused;
use heimdall_common::limits;
use heimdall_common::record::{flags, Labels, Level, LogRecord};
use heimdall_common::wire::BatchContent;
use heimdall_logql as parse;
pub use heimdall_query::pipeline::sanitize as sanitize_name;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Largest push body accepted, compressed or not (and after decompression).
pub const MAX_PUSH_BYTES: usize = 16 << 20;
/// Most label pairs on a pushed stream (Loki's `max_label_names_per_series`).
pub const MAX_PUSH_LABELS: usize = 30;
/// Most structured metadata pairs on one entry (Loki's
/// `max_structured_metadata_entries_count`).
pub const MAX_METADATA_ENTRIES: usize = 128;
/// Most structured metadata bytes (names and values) on one entry (Loki's
/// `max_structured_metadata_size`).
pub const MAX_METADATA_BYTES: usize = 64 << 10;

/// Where `service_name` comes from when a stream has none, in order (Loki's
/// `discover_service_name` default); `unknown_service` when none is present.
pub const DEFAULT_SERVICE_NAME_LABELS: [&str; 11] = [
    "service",
    "app",
    "application",
    "name",
    "app_kubernetes_io_name",
    "container",
    "container_name",
    "k8s_container_name",
    "component",
    "workload",
    "job",
];

/// The `service_name` of a stream without one.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Gives `labels` a `service_name` when it has none: the value of the first label of
/// `from` it has, else [`UNKNOWN_SERVICE`]. With `from` empty, discovery is off and
/// labels are left as they are.
pub fn discover_service_name(labels: &mut Labels, from: &[String]) {
    if from.is_empty() || labels.get("service_name").is_some() {
        return;
    }
    let v = from
        .iter()
        .find_map(|n| labels.get(n).filter(|v| !v.is_empty()))
        .unwrap_or(UNKNOWN_SERVICE)
        .to_owned();
    labels.insert("service_name", v);
}

/// What pushed entries may hold, beyond the body's shape. Loki's limits and defaults.
#[derive(Clone, Debug)]
pub struct PushPolicy {
    /// Entries older than this are refused (`reject_old_samples_max_age`); `None` takes
    /// any age.
    pub max_age: Option<Duration>,
    /// Entries further ahead than this are refused (`creation_grace_period`).
    pub creation_grace: Duration,
    /// Labels `service_name` is discovered from (empty: no discovery).
    pub service_name_from: Arc<[String]>,
}

impl Default for PushPolicy {
    fn default() -> PushPolicy {
        PushPolicy {
            max_age: Some(Duration::from_secs(168 * 3600)),
            creation_grace: Duration::from_secs(600),
            service_name_from: DEFAULT_SERVICE_NAME_LABELS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

/// Why an entry of a push was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Older than `reject_old_samples_max_age`.
    TooOld,
    /// Further ahead than `creation_grace_period`.
    TooNew,
    /// Its stream's labels are not valid.
    InvalidLabels,
    /// Its structured metadata is over the limits.
    MetadataTooLarge,
}

impl Refusal {
    /// The reason's name, as in metrics and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TooOld => "too_old",
            Refusal::TooNew => "too_new",
            Refusal::InvalidLabels => "invalid_labels",
            Refusal::MetadataTooLarge => "structured_metadata_too_large",
        }
    }
}

/// A push decoded and checked: what to store, and what was refused and why.
#[derive(Debug, Default)]
pub struct Decoded {
    pub content: BatchContent,
    /// Entries in the body.
    pub total: usize,
    /// Refused entries by reason.
    pub refused: BTreeMap<Refusal, usize>,
    /// The first few refusals, in Loki's words.
    pub errors: Vec<String>,
}

/// Most refusals spelled out in a push's answer (all are counted).
const MAX_PUSH_ERRORS: usize = 10;

impl Decoded {
    fn refuse(&mut self, why: Refusal, n: usize, text: impl FnOnce() -> String) {
        *self.refused.entry(why).or_default() += n;
        if self.errors.len() < MAX_PUSH_ERRORS {
            self.errors.push(text());
        }
    }
}

/// Why one pushed stream's labels are refused (its entries are, the others are kept).
#[derive(Debug, thiserror::Error)]
pub enum BadLabels {
    /// A label value that is not a string.
    #[error("streams[{0}].stream.{1}: label values must be strings")]
    NotString(usize, String),
    /// A `labels` selector that does not parse.
    #[error("streams[{0}].labels: {1}")]
    Selector(usize, parse::ParseError),
    /// A `labels` selector with other matchers than `=`.
    #[error("streams[{0}].labels: only `=` matchers may name a stream")]
    NotEquality(usize),
    /// Neither `stream` nor `labels`.
    #[error("streams[{0}]: needs a `stream` object of labels")]
    Missing(usize),
    /// No labels at all.
    #[error("streams[{0}]: a stream needs at least one label")]
    Empty(usize),
    /// More labels than a stream may have.
    #[error("entry for stream '{0}' has {n} label names; limit {MAX_PUSH_LABELS}", n = .0.len())]
    TooMany(Labels),
    /// A label name that is not one (or is reserved: `__…`).
    #[error("streams[{0}]: `{1}` is not a valid label name")]
    BadName(usize, String),
    /// A label name or value over the protocol's limit.
    #[error(
        "streams[{0}]: label `{1}` is longer than the limit ({names} bytes for names, {values} for values; value is {2} bytes)",
        names = limits::MAX_LABEL_NAME_BYTES,
        values = limits::MAX_LABEL_VALUE_BYTES
    )]
    TooLong(usize, String, usize),
}

/// The labels of a stream named by a selector, `{app="x", env="prod"}` (the protobuf
/// push and the JSON `labels` form).
fn selector_labels(si: usize, sel: &str) -> Result<Labels, BadLabels> {
    let q = parse::parse_log(sel).map_err(|e| BadLabels::Selector(si, e))?;
    if q.matchers.iter().any(|m| m.op != parse::MatchOp::Eq) {
        return Err(BadLabels::NotEquality(si));
    }
    Ok(Labels::new(
        q.matchers.into_iter().map(|m| (m.name, m.value)),
    ))
}

/// Checks a stream's labels as Loki checks them.
fn check_labels(si: usize, labels: Labels) -> Result<Labels, BadLabels> {
    if labels.is_empty() {
        return Err(BadLabels::Empty(si));
    }
    if labels.len() > MAX_PUSH_LABELS {
        return Err(BadLabels::TooMany(labels));
    }
    if let Some((k, _)) = labels
        .iter()
        .find(|(k, _)| !parse::valid_label(k) || k.starts_with("__"))
    {
        return Err(BadLabels::BadName(si, k.to_owned()));
    }
    if let Some((k, v)) = labels.iter().find(|(k, v)| {
        k.len() > limits::MAX_LABEL_NAME_BYTES || v.len() > limits::MAX_LABEL_VALUE_BYTES
    }) {
        return Err(BadLabels::TooLong(
            si,
            limits::cut_str(k, 64).to_owned(),
            v.len(),
        ));
    }
    Ok(labels)
}

/// A level word: `error`, `WARN`, `Information`…
pub fn level_word(w: &str) -> Option<Level> {
    level_bytes(w.as_bytes())
}

/// [`level_word`] over bytes, without allocating (it runs on words of every line).
fn level_bytes(w: &[u8]) -> Option<Level> {
    const LONGEST: usize = "informational".len();
    // Every level word starts with one of these (most words of a line do not).
    let first = w.first()?.to_ascii_lowercase();
    if w.len() > LONGEST || !b"acdefinptw".contains(&first) {
        return None;
    }
    let mut buf = [0u8; LONGEST];
    for (d, s) in buf.iter_mut().zip(w) {
        *d = s.to_ascii_lowercase();
    }
    Some(match &buf[..w.len()] {
        b"trace" | b"trc" => Level::Trace,
        b"debug" | b"dbug" | b"dbg" => Level::Debug,
        b"info" | b"inf" | b"information" | b"informational" | b"notice" => Level::Info,
        b"warn" | b"wrn" | b"warning" => Level::Warn,
        b"error" | b"err" | b"eror" => Level::Error,
        b"fatal" | b"critical" | b"crit" | b"panic" | b"emerg" | b"emergency" | b"alert" => {
            Level::Fatal
        }
        _ => return None,
    })
}

/// Where a pushed line's level may be named, in order of precedence.
const LEVEL_NAMES: [&str; 5] = [
    "level",
    "detected_level",
    "severity",
    "lvl",
    "severity_text",
];

/// The level a stream's labels name, if any: a line without structured metadata gets
/// it (computed once per stream, not per line).
fn labels_level(labels: &Labels) -> Option<Level> {
    LEVEL_NAMES
        .iter()
        .find_map(|n| labels.get(n).and_then(level_word))
}

/// A level from a pushed stream's labels or structured metadata, else from the line;
/// `from_labels` is [`labels_level`] of `labels`.
fn push_level(labels: &Labels, from_labels: Option<Level>, meta: &Labels, line: &[u8]) -> Level {
    if meta.is_empty() {
        if let Some(l) = from_labels {
            return l;
        }
    } else {
        for n in LEVEL_NAMES {
            if let Some(l) = labels.get(n).or_else(|| meta.get(n)).and_then(level_word) {
                return l;
            }
        }
    }
    // The first level word in the line's first 256 bytes.
    let head = &line[..line.len().min(256)];
    head.split(|c| !c.is_ascii_alphabetic())
        .filter(|w| (3..=11).contains(&w.len()))
        .find_map(level_bytes)
        .unwrap_or(Level::Unknown)
}

/// A stream of the push being admitted (see [`Intake::stream`]).
#[derive(Debug)]
pub struct StreamRef {
    /// As sent (in refusal messages and for the level).
    labels: Labels,
    /// As stored: with identity and `service_name`.
    stored: Labels,
    index: Option<u32>,
    /// [`labels_level`] of `labels`.
    level: Option<Level>,
}

/// Admits the streams and entries of one push, whatever its wire form.
pub struct Intake<'p> {
    policy: &'p PushPolicy,
    caller: &'p str,
    now: i64,
    oldest: Option<i64>,
    newest: i64,
    index: HashMap<Labels, u32>,
    pub out: Decoded,
    /// Every admitted line, end to end: the records' lines are cut from it when the
    /// push is finished, one buffer instead of one allocation a line.
    arena: Vec<u8>,
    /// Each record's line in `arena`.
    spans: Vec<(usize, usize)>,
}

impl<'p> Intake<'p> {
    /// A push by `caller` (the token's name) under `policy`.
    pub fn new(policy: &'p PushPolicy, caller: &'p str) -> Intake<'p> {
        let now = crate::ingest::now_ns();
        let ns = |d: Duration| d.as_nanos().min(i64::MAX as u128) as i64;
        Intake {
            policy,
            caller,
            now,
            oldest: policy.max_age.map(|d| now.saturating_sub(ns(d))),
            newest: now.saturating_add(ns(policy.creation_grace)),
            index: HashMap::new(),
            out: Decoded::default(),
            arena: Vec::new(),
            spans: Vec::new(),
        }
    }

    /// The receiving time.
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Starts a stream of `entries` entries: `None` when its labels are refused (the
    /// entries are counted as refused).
    pub fn stream(
        &mut self,
        si: usize,
        labels: Result<Labels, BadLabels>,
        entries: usize,
    ) -> Option<StreamRef> {
        self.out.total += entries;
        match labels.and_then(|l| check_labels(si, l)) {
            Ok(labels) => {
                let mut stored = labels.clone();
                crate::ingest::stamp_identity(&mut stored, self.caller);
                discover_service_name(&mut stored, &self.policy.service_name_from);
                Some(StreamRef {
                    level: labels_level(&labels),
                    labels,
                    stored,
                    index: None,
                })
            }
            Err(why) => {
                self.out
                    .refuse(Refusal::InvalidLabels, entries, || why.to_string());
                None
            }
        }
    }

    /// Admits one entry of `stream` whose line may be any bytes (it is flagged when it
    /// is not UTF-8); `level` when the sender said it (OTLP's severity), else it is
    /// read from the labels, metadata or line. Metadata names are sanitized here.
    pub fn entry(
        &mut self,
        stream: &mut StreamRef,
        ts: i64,
        line: &[u8],
        metadata: Vec<(String, String)>,
        level: Option<Level>,
    ) {
        self.admit(stream, ts, line, false, metadata, level);
    }

    /// [`Intake::entry`] for a line already known to be text (a JSON string), which
    /// is not checked again.
    pub fn text_entry(
        &mut self,
        stream: &mut StreamRef,
        ts: i64,
        line: &str,
        metadata: Vec<(String, String)>,
        level: Option<Level>,
    ) {
        self.admit(stream, ts, line.as_bytes(), true, metadata, level);
    }

    fn admit(
        &mut self,
        stream: &mut StreamRef,
        ts: i64,
        line: &[u8],
        text: bool,
        metadata: Vec<(String, String)>,
        level: Option<Level>,
    ) {
        let labels = &stream.labels;
        if let Some(oldest) = self.oldest.filter(|o| ts < *o) {
            self.out.refuse(Refusal::TooOld, 1, || {
                format!(
                    "entry for stream '{labels}' has timestamp too old: {}, oldest acceptable timestamp is: {}",
                    heimdall_api::format_ns(ts),
                    heimdall_api::format_ns(oldest)
                )
            });
            return;
        }
        if ts > self.newest {
            let newest = self.newest;
            self.out.refuse(Refusal::TooNew, 1, || {
                format!(
                    "entry for stream '{labels}' has timestamp too new: {}, newest acceptable timestamp is: {}",
                    heimdall_api::format_ns(ts),
                    heimdall_api::format_ns(newest)
                )
            });
            return;
        }
        let count = metadata
            .iter()
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .count();
        let size: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if count > MAX_METADATA_ENTRIES || size > MAX_METADATA_BYTES {
            self.out.refuse(Refusal::MetadataTooLarge, 1, || {
                format!(
                    "stream '{labels}' has structured metadata too large: {count} entries of {size} bytes, limit: {MAX_METADATA_ENTRIES} entries of {MAX_METADATA_BYTES} bytes"
                )
            });
            return;
        }
        let metadata = Labels::new(
            metadata
                .into_iter()
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .map(|(k, v)| {
                    if parse::valid_label(&k) && !k.starts_with("__") {
                        (k, v)
                    } else {
                        (sanitize_name(k.trim_start_matches('_')), v)
                    }
                }),
        );
        let index = match stream.index {
            Some(i) => i,
            None => {
                let i = match self.index.get(&stream.stored) {
                    Some(i) => *i,
                    None => {
                        let i = self.out.content.streams.len() as u32;
                        self.out.content.streams.push(stream.stored.clone());
                        self.index.insert(stream.stored.clone(), i);
                        i
                    }
                };
                stream.index = Some(i);
                i
            }
        };
        let mut fl = 0;
        let mut bytes = line;
        let whole_text = text || std::str::from_utf8(bytes).is_ok();
        if bytes.len() > limits::MAX_LINE_BYTES {
            let mut end = limits::MAX_LINE_BYTES;
            // Cut on a character boundary when the line is text.
            if whole_text {
                while end > 0 && (bytes[end] & 0xc0) == 0x80 {
                    end -= 1;
                }
            }
            bytes = &bytes[..end];
            fl |= flags::TRUNCATED;
        }
        // What is kept is checked: bytes past the cut do not flag the line.
        if !whole_text && std::str::from_utf8(bytes).is_err() {
            fl |= flags::INVALID_UTF8;
        }
        let level =
            level.unwrap_or_else(|| push_level(&stream.labels, stream.level, &metadata, bytes));
        self.out.content.records.push(LogRecord {
            stream: index,
            time_ns: ts,
            observed_ns: self.now,
            level,
            template_id: u64::MAX,
            flags: fl,
            redacted: 0,
            line: bytes::Bytes::new(),
            metadata,
        });
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        self.spans.push((start, self.arena.len()));
    }

    /// The push, decoded and checked.
    pub fn finish(mut self) -> Decoded {
        let buf = bytes::Bytes::from(std::mem::take(&mut self.arena));
        for (r, (a, b)) in self.out.content.records.iter_mut().zip(&self.spans) {
            r.line = buf.slice(*a..*b);
        }
        self.out
    }
}

/// Why a push body is refused whole.
#[derive(Debug, thiserror::Error)]
pub enum BadPush {
    /// The body is not JSON.
    #[error("push body is not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// No `streams` array.
    #[error("push body needs a `streams` array")]
    NoStreams,
    /// A `values` entry that is not `[ts, line, {metadata}?]`.
    #[error("streams[{0}].values[{1}]: expected [\"<unix ns>\", \"<line>\"] or [\"<unix ns>\", \"<line>\", {{<structured metadata>}}]")]
    ValueShape(usize, usize),
    /// A `values` timestamp that is not nanoseconds.
    #[error("streams[{0}].values[{1}]: `{2}` is not a Unix time in nanoseconds")]
    ValueTime(usize, usize, String),
    /// Structured metadata whose values are not strings.
    #[error("streams[{0}].values[{1}]: structured metadata values must be strings")]
    MetadataValue(usize, usize),
    /// An `entries` item without `ts` or `line`.
    #[error("streams[{0}].entries[{1}]: needs `{2}`")]
    EntryField(usize, usize, &'static str),
    /// An `entries` timestamp that does not parse.
    #[error("streams[{0}].entries[{1}]: {2}")]
    EntryTime(usize, usize, super::BadTime),
    /// A stream with neither `values` nor `entries`.
    #[error("streams[{0}]: needs `values`")]
    NoValues(usize),
    /// A protobuf body that is not snappy.
    #[error("protobuf push body is not snappy-compressed: {0}")]
    Snappy(String),
    /// A protobuf body that is not a `logproto.PushRequest`.
    #[error("protobuf push body is not a logproto.PushRequest: {0}")]
    Proto(#[from] proto::Error),
    /// A protobuf string that is not UTF-8 where it must be.
    #[error("protobuf push body: {0} is not UTF-8")]
    ProtoUtf8(&'static str),
    /// A snappy body that inflates past the limit.
    #[error("the push body decompresses to more than {0} bytes")]
    TooLarge(usize),
}

/// The labels of a JSON push's `streams[si]`.
fn json_labels(si: usize, s: &Value) -> Result<Labels, BadLabels> {
    match (s.get("stream"), s.get("labels")) {
        (Some(Value::Object(m)), _) => {
            let mut pairs = Vec::with_capacity(m.len());
            for (k, v) in m {
                let v = v
                    .as_str()
                    .ok_or_else(|| BadLabels::NotString(si, k.clone()))?;
                pairs.push((k.clone(), v.to_owned()));
            }
            Ok(Labels::new(pairs))
        }
        (_, Some(Value::String(sel))) => selector_labels(si, sel),
        _ => Err(BadLabels::Missing(si)),
    }
}

/// Decodes a Loki JSON push body. A body that is not a push at all (not JSON, no
/// `streams`, an entry that is not `[ts, line]`) is an error naming where; the rest is
/// admitted entry by entry.
pub fn decode_json(body: &[u8], policy: &PushPolicy, caller: &str) -> Result<Decoded, BadPush> {
    match fast_json::decode(body, policy, caller) {
        Some(d) => Ok(d),
        None => decode_json_tree(body, policy, caller),
    }
}

/// [`decode_json`] through a JSON tree: any body, with errors that name the problem.
fn decode_json_tree(body: &[u8], policy: &PushPolicy, caller: &str) -> Result<Decoded, BadPush> {
    let v: Value = serde_json::from_slice(body)?;
    let streams = v
        .get("streams")
        .and_then(Value::as_array)
        .ok_or(BadPush::NoStreams)?;
    type Entry<'a> = (i64, &'a str, Vec<(String, String)>);
    // The whole body's shape first: a body that is not a push is refused whole.
    let mut all: Vec<Vec<Entry<'_>>> = Vec::with_capacity(streams.len());
    for (si, s) in streams.iter().enumerate() {
        let mut entries: Vec<Entry<'_>> = Vec::new();
        if let Some(values) = s.get("values").and_then(Value::as_array) {
            for (ei, e) in values.iter().enumerate() {
                let (ts, line, meta) = match e.as_array().map(Vec::as_slice) {
                    Some([Value::String(ts), Value::String(line)]) => (ts, line, None),
                    Some([Value::String(ts), Value::String(line), Value::Object(m)]) => {
                        (ts, line, Some(m))
                    }
                    Some([Value::String(ts), Value::String(line), Value::Null]) => (ts, line, None),
                    _ => return Err(BadPush::ValueShape(si, ei)),
                };
                let ts: i64 = ts
                    .parse()
                    .map_err(|_| BadPush::ValueTime(si, ei, ts.clone()))?;
                let mut pairs = Vec::new();
                for (k, v) in meta.into_iter().flatten() {
                    let v = v.as_str().ok_or(BadPush::MetadataValue(si, ei))?;
                    pairs.push((k.clone(), v.to_owned()));
                }
                entries.push((ts, line, pairs));
            }
        } else if let Some(list) = s.get("entries").and_then(Value::as_array) {
            for (ei, e) in list.iter().enumerate() {
                let ts = e
                    .get("ts")
                    .or_else(|| e.get("timestamp"))
                    .and_then(Value::as_str)
                    .ok_or(BadPush::EntryField(si, ei, "ts"))?;
                let ts = super::parse_time(ts).map_err(|m| BadPush::EntryTime(si, ei, m))?;
                let line = e
                    .get("line")
                    .and_then(Value::as_str)
                    .ok_or(BadPush::EntryField(si, ei, "line"))?;
                let mut pairs = Vec::new();
                if let Some(m) = e.get("structuredMetadata").and_then(Value::as_object) {
                    for (k, v) in m {
                        let v = v.as_str().ok_or(BadPush::MetadataValue(si, ei))?;
                        pairs.push((k.clone(), v.to_owned()));
                    }
                }
                entries.push((ts, line, pairs));
            }
        } else {
            return Err(BadPush::NoValues(si));
        }
        all.push(entries);
    }
    let mut intake = Intake::new(policy, caller);
    for (si, (s, entries)) in streams.iter().zip(all).enumerate() {
        let Some(mut stream) = intake.stream(si, json_labels(si, s), entries.len()) else {
            continue;
        };
        for (ts, line, meta) in entries {
            intake.text_entry(&mut stream, ts, line, meta, None);
        }
    }
    Ok(intake.finish())
}

/// The usual JSON push (`{"streams": [{"stream": {…}, "values": [[ts, line], …]}]}`)
/// parsed straight into its parts, strings borrowed from the body where they have no
/// escapes, instead of through a JSON tree that copies every line. Anything else, or
/// anything wrong, is left to the tree-based decoding, which names the problem; for a
/// body both accept they admit the same entries.
mod fast_json {
    use super::{selector_labels, BadLabels, Decoded, Intake, PushPolicy};
    use heimdall_common::record::Labels;
    use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use std::borrow::Cow;
    use std::fmt;

    /// A JSON string, borrowed when it has no escapes.
    struct Str<'a>(Cow<'a, str>);

    impl<'de: 'a, 'a> de::Deserialize<'de> for Str<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Str<'a>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'a>, E> {
                    Ok(Str(Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Str<'a>, E> {
                    Ok(Str(Cow::Owned(v.to_owned())))
                }
                fn visit_string<E>(self, v: String) -> Result<Str<'a>, E> {
                    Ok(Str(Cow::Owned(v)))
                }
            }
            d.deserialize_str(V(std::marker::PhantomData))
        }
    }

    /// An object of strings, sorted by name, the last of equal names kept: what a
    /// parsed JSON object holds.
    struct Pairs<'a>(Vec<(Str<'a>, Str<'a>)>);

    impl<'a> Pairs<'a> {
        fn owned(self) -> Vec<(String, String)> {
            self.0
                .into_iter()
                .map(|(k, v)| (k.0.into_owned(), v.0.into_owned()))
                .collect()
        }
    }

    impl<'de: 'a, 'a> de::Deserialize<'de> for Pairs<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Pairs<'a>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an object of strings")
                }
                fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Pairs<'a>, M::Error> {
                    let mut v: Vec<(Str<'a>, Str<'a>)> = Vec::new();
                    while let Some(kv) = m.next_entry()? {
                        v.push(kv);
                    }
                    // Stable: equal names stay in body order, and the last is kept.
                    v.sort_by(|a, b| a.0 .0.cmp(&b.0 .0));
                    let mut out: Vec<(Str<'a>, Str<'a>)> = Vec::with_capacity(v.len());
                    for kv in v {
                        match out.last_mut() {
                            Some(last) if last.0 .0 == kv.0 .0 => *last = kv,
                            _ => out.push(kv),
                        }
                    }
                    Ok(Pairs(out))
                }
            }
            d.deserialize_map(V(std::marker::PhantomData))
        }
    }

    /// One `values` item: `[ts, line]`, `[ts, line, {metadata}]` or `[ts, line, null]`.
    struct Value<'a> {
        ts: Str<'a>,
        line: Str<'a>,
        meta: Option<Pairs<'a>>,
    }

    impl<'de: 'a, 'a> de::Deserialize<'de> for Value<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Value<'a>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("[ts, line] or [ts, line, {metadata}]")
                }
                fn visit_seq<S: SeqAccess<'de>>(self, mut s: S) -> Result<Value<'a>, S::Error> {
                    let ts = s
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                    let line = s
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                    let meta: Option<Option<Pairs<'a>>> = s.next_element()?;
                    if s.next_element::<IgnoredAny>()?.is_some() {
                        return Err(de::Error::invalid_length(4, &self));
                    }
                    Ok(Value {
                        ts,
                        line,
                        meta: meta.flatten(),
                    })
                }
            }
            d.deserialize_seq(V(std::marker::PhantomData))
        }
    }

    /// One item of `streams`.
    struct Stream<'a> {
        stream: Option<Pairs<'a>>,
        labels: Option<Str<'a>>,
        values: Option<Vec<Value<'a>>>,
    }

    impl<'de: 'a, 'a> de::Deserialize<'de> for Stream<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Stream<'a>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a stream object")
                }
                fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Stream<'a>, M::Error> {
                    let mut s = Stream {
                        stream: None,
                        labels: None,
                        values: None,
                    };
                    // A repeated key: the last counts, as in a parsed object.
                    while let Some(k) = m.next_key::<Str<'a>>()? {
                        match &*k.0 {
                            "stream" => s.stream = m.next_value()?,
                            "labels" => s.labels = m.next_value()?,
                            "values" => s.values = m.next_value()?,
                            _ => {
                                m.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                    Ok(s)
                }
            }
            d.deserialize_map(V(std::marker::PhantomData))
        }
    }

    /// The body: an object whose `streams` is an array of [`Stream`].
    struct Body<'a>(Option<Vec<Stream<'a>>>);

    impl<'de: 'a, 'a> de::Deserialize<'de> for Body<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Body<'a>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a push object")
                }
                fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Body<'a>, M::Error> {
                    let mut streams = None;
                    while let Some(k) = m.next_key::<Str<'a>>()? {
                        if k.0 == "streams" {
                            streams = m.next_value()?;
                        } else {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                    Ok(Body(streams))
                }
            }
            d.deserialize_map(V(std::marker::PhantomData))
        }
    }

    /// The push admitted, or `None` when the body is not of the usual shape or has a
    /// problem (the caller decodes it the general way, which names it).
    pub(super) fn decode(body: &[u8], policy: &PushPolicy, caller: &str) -> Option<Decoded> {
        let Body(streams) = serde_json::from_slice::<Body<'_>>(body).ok()?;
        let streams = streams?;
        // The whole body's shape first, as the general decoding checks it.
        let mut times: Vec<Vec<i64>> = Vec::with_capacity(streams.len());
        for s in &streams {
            let values = s.values.as_ref()?;
            let mut t = Vec::with_capacity(values.len());
            for v in values {
                t.push(v.ts.0.parse::<i64>().ok()?);
            }
            times.push(t);
        }
        let mut intake = Intake::new(policy, caller);
        for (si, (s, times)) in streams.into_iter().zip(times).enumerate() {
            let labels = match (s.stream, s.labels) {
                (Some(p), _) => Ok(Labels::new(p.owned())),
                (None, Some(sel)) => selector_labels(si, &sel.0),
                (None, None) => Err(BadLabels::Missing(si)),
            };
            let values = s.values.unwrap_or_default();
            let Some(mut stream) = intake.stream(si, labels, values.len()) else {
                continue;
            };
            for (v, ts) in values.into_iter().zip(times) {
                let meta = v.meta.map(Pairs::owned).unwrap_or_default();
                intake.text_entry(&mut stream, ts, &v.line.0, meta, None);
            }
        }
        Some(intake.finish())
    }
}

fn utf8<'a>(b: &'a [u8], what: &'static str) -> Result<&'a str, BadPush> {
    std::str::from_utf8(b).map_err(|_| BadPush::ProtoUtf8(what))
}

/// Decodes a `logproto.PushRequest` (already un-snappied), as Loki's `push.proto`
/// defines it: `streams` (1) of `labels` (1, a selector) and `entries` (2), each entry
/// a `timestamp` (1, `google.protobuf.Timestamp`), a `line` (2) and
/// `structuredMetadata` (3, name/value pairs).
pub fn decode_proto(body: &[u8], policy: &PushPolicy, caller: &str) -> Result<Decoded, BadPush> {
    let mut streams: Vec<(&str, Vec<ProtoEntry<'_>>)> = Vec::new();
    for f in proto::fields(body, "PushRequest") {
        let (n, v) = f?;
        if n != 1 {
            continue;
        }
        let mut labels = "";
        let mut entries = Vec::new();
        for f in proto::fields(v.bytes("PushRequest", 1)?, "StreamAdapter") {
            let (n, v) = f?;
            match n {
                1 => labels = utf8(v.bytes("StreamAdapter", 1)?, "StreamAdapter.labels")?,
                2 => entries.push(proto_entry(v.bytes("StreamAdapter", 2)?)?),
                _ => {}
            }
        }
        streams.push((labels, entries));
    }
    let mut intake = Intake::new(policy, caller);
    for (si, (labels, entries)) in streams.into_iter().enumerate() {
        let labels = if labels.is_empty() {
            Err(BadLabels::Missing(si))
        } else {
            selector_labels(si, labels)
        };
        let Some(mut stream) = intake.stream(si, labels, entries.len()) else {
            continue;
        };
        for (ts, line, meta) in entries {
            intake.entry(&mut stream, ts, line, meta, None);
        }
    }
    Ok(intake.finish())
}

/// One decoded `EntryAdapter`: time, line and structured metadata.
type ProtoEntry<'a> = (i64, &'a [u8], Vec<(String, String)>);

fn proto_entry(b: &[u8]) -> Result<ProtoEntry<'_>, BadPush> {
    let (mut ts, mut line, mut meta) = (0i64, &b""[..], Vec::new());
    for f in proto::fields(b, "EntryAdapter") {
        let (n, v) = f?;
        match n {
            1 => {
                let (mut secs, mut nanos) = (0i64, 0i64);
                for f in proto::fields(v.bytes("EntryAdapter", 1)?, "Timestamp") {
                    let (n, v) = f?;
                    match n {
                        1 => secs = v.varint("Timestamp", 1)? as i64,
                        2 => nanos = i64::from(v.varint("Timestamp", 2)? as i32),
                        _ => {}
                    }
                }
                ts = secs.saturating_mul(1_000_000_000).saturating_add(nanos);
            }
            2 => line = v.bytes("EntryAdapter", 2)?,
            3 => {
                let (mut name, mut value) = ("", "");
                for f in proto::fields(v.bytes("EntryAdapter", 3)?, "LabelPairAdapter") {
                    let (n, v) = f?;
                    match n {
                        1 => name = utf8(v.bytes("LabelPairAdapter", 1)?, "a metadata name")?,
                        2 => value = utf8(v.bytes("LabelPairAdapter", 2)?, "a metadata value")?,
                        _ => {}
                    }
                }
                meta.push((name.to_owned(), value.to_owned()));
            }
            _ => {}
        }
    }
    Ok((ts, line, meta))
}

/// A snappy block (as Loki's clients compress protobuf pushes), at most `limit` bytes
/// once inflated.
pub fn unsnappy(body: &[u8], limit: usize) -> Result<Vec<u8>, BadPush> {
    let n = snap::raw::decompress_len(body).map_err(|e| BadPush::Snappy(e.to_string()))?;
    if n > limit {
        return Err(BadPush::TooLarge(limit));
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| BadPush::Snappy(e.to_string()))
}

/// Why a push body could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum Decompress {
    /// An encoding other than gzip, deflate or identity (415).
    #[error(
        "Content-Encoding `{0}` is not supported (send gzip, deflate or an uncompressed body)"
    )]
    Unsupported(String),
    /// The inflated body would exceed the push limit (413).
    #[error("the push body decompresses to more than {0} bytes")]
    TooLarge(usize),
    /// The body does not decode as its encoding says (400).
    #[error("the push body is not valid {encoding}: {source}")]
    Corrupt {
        encoding: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Decompress {
    /// The answer's status and the metric's reason.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Decompress::Unsupported(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "encoding"),
            Decompress::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Decompress::Corrupt { .. } => (StatusCode::BAD_REQUEST, "invalid"),
        }
    }
}

/// The body under its `Content-Encoding`, as Loki takes it: `gzip`, `deflate` (zlib-wrapped
/// as HTTP defines it, or raw DEFLATE as Go's `compress/flate` clients send it), or
/// none. The decompressed body may be at most `limit` bytes (a small body must not
/// expand into gigabytes).
pub fn decompress<'a>(
    enc: &str,
    body: &'a [u8],
    limit: usize,
) -> Result<Cow<'a, [u8]>, Decompress> {
    use std::io::Read;
    let enc = enc.trim();
    let read = |encoding: &'static str, r: &mut dyn Read| {
        let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
        r.take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|source| Decompress::Corrupt { encoding, source })?;
        if out.len() > limit {
            return Err(Decompress::TooLarge(limit));
        }
        Ok(Cow::Owned(out))
    };
    if enc.is_empty() || enc.eq_ignore_ascii_case("identity") {
        Ok(Cow::Borrowed(body))
    } else if enc.eq_ignore_ascii_case("gzip") || enc.eq_ignore_ascii_case("x-gzip") {
        read("gzip", &mut flate2::read::MultiGzDecoder::new(body))
    } else if enc.eq_ignore_ascii_case("deflate") {
        // A zlib stream starts with a header whose first two bytes, read as a big-endian
        // number, are a multiple of 31 with compression method 8.
        let zlib = body.len() >= 2
            && body[0] & 0x0f == 8
            && (u16::from(body[0]) << 8 | u16::from(body[1])) % 31 == 0;
        if zlib {
            read("deflate", &mut flate2::read::ZlibDecoder::new(body))
        } else {
            read("deflate", &mut flate2::read::DeflateDecoder::new(body))
        }
    } else {
        Err(Decompress::Unsupported(enc.to_owned()))
    }
}

/// The caller's name, for the `agent` label.
pub fn caller_name(caller: Option<axum::Extension<super::auth::Caller>>) -> String {
    caller.map_or_else(|| super::auth::ANONYMOUS.to_owned(), |c| c.0 .0)
}

/// A header's value, `""` when absent or not text.
pub fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The request's `Content-Type` as sent, and its media type lower-cased without
/// parameters (`application/json; charset=utf-8` → `application/json`).
pub fn media_type(headers: &HeaderMap) -> (&str, String) {
    let ctype = header_str(headers, header::CONTENT_TYPE);
    let mime = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    (ctype, mime)
}

/// Counts a push refused whole, by reason.
pub fn rejected(reason: &'static str) {
    metrics::counter!("heimdall_aggregator_push_rejected_total", "reason" => reason).increment(1);
}

/// What became of a push.
#[derive(Debug)]
pub struct Outcome {
    /// Entries stored.
    pub stored: usize,
    /// Entries in the push.
    pub total: usize,
    pub refused: BTreeMap<Refusal, usize>,
    pub errors: Vec<String>,
}

impl Outcome {
    /// Entries refused, all reasons.
    pub fn refused_total(&self) -> usize {
        self.refused.values().sum()
    }
}

/// Stores what a push admitted (durably, before it returns) and counts it; the
/// refusals are counted too. `format` names the wire form in the metrics
/// (`loki_json`, `loki_protobuf`, `otlp_json`, `otlp_protobuf`).
pub async fn store(
    st: &ApiState,
    decoded: Decoded,
    format: &'static str,
) -> Result<Outcome, ApiError> {
    let n = decoded.content.records.len();
    let cut = decoded
        .content
        .records
        .iter()
        .filter(|r| r.flags & flags::TRUNCATED != 0)
        .count();
    let Decoded {
        content,
        total,
        refused,
        errors,
    } = decoded;
    if n > 0 {
        st.store
            .write_unidentified(content)
            .await
            .map_err(internal)?;
    }
    metrics::counter!("heimdall_aggregator_push_lines_total", "format" => format)
        .increment(n as u64);
    if cut > 0 {
        metrics::counter!("heimdall_aggregator_ingest_repairs_total", "kind" => "line_cut")
            .increment(cut as u64);
    }
    for (why, k) in &refused {
        metrics::counter!("heimdall_aggregator_push_rejected_total", "reason" => why.as_str())
            .increment(*k as u64);
    }
    Ok(Outcome {
        stored: n,
        total,
        refused,
        errors,
    })
}

/// Holds a push to the ingest memory budget it shares with the agents' batches:
/// the body's size is taken before it is read, and what it will decode to (the size a
/// gzip or snappy body announces, at most [`MAX_PUSH_BYTES`], twice: the text and the
/// records; three times for JSON, read into a tree first) before the handler runs. A push that does not fit waits, unread, so TCP's
/// flow control slows the client: it is never refused for want of memory.
pub async fn within_budget(
    State(st): State<Arc<ApiState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::ingest::conn::{kib, Reserved};
    let (memory, budget) = (&st.memory.0, st.memory.1);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(MAX_PUSH_BYTES)
        .min(MAX_PUSH_BYTES);
    let Some(_body) = Reserved::take(memory, kib(declared), budget).await else {
        return ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()).into_response();
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_PUSH_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            rejected("too_large");
            return ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("push body larger than {MAX_PUSH_BYTES} bytes, or cut short ({e})"),
            )
            .into_response();
        }
    };
    // JSON is read into a tree before it becomes records: a third copy.
    let copies = if media_type(&parts.headers).1 == "application/json" {
        3
    } else {
        2
    };
    let decoded = copies * decoded_size(&parts.headers, &bytes).min(MAX_PUSH_BYTES);
    let Some(_decoded) = Reserved::take(memory, kib(decoded), budget).await else {
        return ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()).into_response();
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// What a push body decodes to, as far as its header says: a gzip body's trailer, a
/// snappy block's preamble (protobuf pushes, and `Content-Encoding: snappy`), else the
/// body's own size, or the most a push may hold for an encoding that does not say.
fn decoded_size(headers: &HeaderMap, body: &[u8]) -> usize {
    let enc = header_str(headers, header::CONTENT_ENCODING)
        .trim()
        .to_ascii_lowercase();
    let (_, mime) = media_type(headers);
    let snappy_len = |b: &[u8]| {
        // The uncompressed length, a varint.
        let (mut n, mut shift) = (0usize, 0u32);
        for &c in b.iter().take(5) {
            n |= usize::from(c & 0x7f) << shift;
            if c & 0x80 == 0 {
                return Some(n);
            }
            shift += 7;
        }
        None
    };
    match enc.as_str() {
        "gzip" | "x-gzip" if body.len() >= 18 => {
            let t = &body[body.len() - 4..];
            u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize
        }
        "snappy" => snappy_len(body).unwrap_or(MAX_PUSH_BYTES),
        "" | "identity" => match mime.as_str() {
            "application/x-protobuf" | "application/protobuf" | "application/octet-stream" => {
                snappy_len(body).unwrap_or(MAX_PUSH_BYTES)
            }
            _ => body.len(),
        },
        _ => MAX_PUSH_BYTES,
    }
}

/// `POST /loki/api/v1/push`: JSON (`application/json`, optionally under gzip, deflate
/// or snappy) or protobuf (`application/x-protobuf`, snappy, with or without
/// `Content-Encoding: snappy`). A body without a
/// `Content-Type` is read as JSON when it starts with `{`, as protobuf otherwise (Loki
/// reads any non-JSON type as protobuf). Answers 204 after the lines are committed; 400
/// when some entries were refused (the others are stored), saying how many and why.
pub async fn loki_push(
    State(st): State<Arc<ApiState>>,
    caller: Option<axum::Extension<super::auth::Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = caller_name(caller);
    let (ctype, mime) = media_type(&headers);
    let enc = header_str(&headers, header::CONTENT_ENCODING);
    // `Content-Encoding: snappy` names what a protobuf body always is; Loki takes it
    // (clients need not send it, some do), and a JSON body under it is un-snappied.
    let snappy = enc.trim().eq_ignore_ascii_case("snappy");
    let body = if snappy {
        Cow::Borrowed(&body[..])
    } else {
        match decompress(enc, &body, MAX_PUSH_BYTES) {
            Ok(b) => b,
            Err(e) => {
                let (status, reason) = e.status();
                rejected(reason);
                return Err(ApiError(status, e.to_string()));
            }
        }
    };
    let json = match mime.as_str() {
        "application/json" => true,
        "application/x-protobuf" | "application/protobuf" | "application/octet-stream" => false,
        "" => body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        _ => {
            rejected("content_type");
            return Err(ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("push bodies of type `{ctype}` are not supported; send application/json or application/x-protobuf (snappy)"),
            ));
        }
    };
    let decoded = if json && snappy {
        unsnappy(&body, MAX_PUSH_BYTES).and_then(|raw| decode_json(&raw, &st.push, &caller))
    } else if json {
        decode_json(&body, &st.push, &caller)
    } else {
        unsnappy(&body, MAX_PUSH_BYTES).and_then(|raw| decode_proto(&raw, &st.push, &caller))
    };
    let decoded = match decoded {
        Ok(d) => d,
        Err(BadPush::TooLarge(n)) => {
            rejected("too_large");
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                BadPush::TooLarge(n).to_string(),
            ));
        }
        Err(m) => {
            rejected("invalid");
            return Err(bad(m));
        }
    };
    let done = store(
        &st,
        decoded,
        if json { "loki_json" } else { "loki_protobuf" },
    )
    .await?;
    let n = done.stored;
    if done.refused.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let refused = done.refused_total();
    let reasons: Vec<String> = done
        .refused
        .iter()
        .map(|(why, k)| format!("{k} {}", why.as_str().replace('_', " ")))
        .collect();
    let mut message = done.errors.join("\n");
    message.push_str(&format!(
        "\n{refused} of {} entries refused ({}); the other {n} were stored",
        done.total,
        reasons.join(", ")
    ));
    let mut r = ApiError(StatusCode::BAD_REQUEST, message.clone()).into_response();
    // The counts in the body too, for clients that read JSON.
    if let Ok(b) = serde_json::to_vec(&PushRefused {
        status: "error".into(),
        error_type: "bad_data".into(),
        message: message.clone(),
        error: message,
        accepted: n,
        refused,
        reasons: done
            .refused
            .iter()
            .map(|(w, k)| (w.as_str().to_owned(), *k))
            .collect(),
    }) {
        *r.body_mut() = axum::body::Body::from(b);
        r.headers_mut().remove(header::CONTENT_LENGTH);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn bodies_decompress_as_loki_takes_them() {
        use std::io::Write;
        let json = br#"{"streams":[{"stream":{"a":"b"},"values":[["1","x"]]}]}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(json).unwrap();
        let gz = gz.finish().unwrap();
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(json).unwrap();
        let zlib = zlib.finish().unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        raw.write_all(json).unwrap();
        let raw = raw.finish().unwrap();
        for (enc, body) in [
            ("gzip", &gz),
            ("GZIP", &gz),
            ("deflate", &zlib),
            ("deflate", &raw),
            ("identity", &json.to_vec()),
            ("", &json.to_vec()),
        ] {
            assert_eq!(&*decompress(enc, body, 1 << 20).unwrap(), json, "{enc}");
        }
        assert!(matches!(
            decompress("br", json, 1 << 20),
            Err(Decompress::Unsupported(_))
        ));
        assert!(matches!(
            decompress("gzip", json, 1 << 20),
            Err(Decompress::Corrupt { .. })
        ));
        // A bomb: 64 MiB of zeros in a few kilobytes.
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&vec![0u8; 64 << 20]).unwrap();
        let bomb = bomb.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        assert!(matches!(
            decompress("gzip", &bomb, MAX_PUSH_BYTES),
            Err(Decompress::TooLarge(_))
        ));
        // At the limit exactly, it is accepted.
        assert_eq!(
            decompress("gzip", &gz, json.len()).unwrap().len(),
            json.len()
        );
        assert!(matches!(
            decompress("gzip", &gz, json.len() - 1),
            Err(Decompress::TooLarge(_))
        ));
    }

    /// Timestamps of 2023: within the age limit only when it is off.
    fn any_age() -> PushPolicy {
        PushPolicy {
            max_age: None,
            ..PushPolicy::default()
        }
    }

    #[test]
    fn push_bodies_decode_with_errors_that_say_where() {
        let c = decode_json(
            br#"{"streams":[{"stream":{"app":"x"},"values":[["1700000000000000000","level=error boom"],["1700000000000000001","ok",{"trace_id":"t"}]]},
                           {"labels":"{app=\"x\"}","entries":[{"ts":"2023-11-14T22:13:20Z","line":"WARN disk"}]}]}"#,
            &any_age(),
            "push",
        )
        .unwrap();
        let c = c.content;
        assert_eq!(c.streams.len(), 1, "the same labels are one stream");
        assert_eq!(c.records.len(), 3);
        assert_eq!(c.records[0].level, Level::Error);
        assert_eq!(c.records[2].level, Level::Warn);
        assert_eq!(c.records[2].time_ns, 1_700_000_000_000_000_000);
        // Not a push at all: refused whole.
        for (body, msg) in [
            (
                r#"{"streams":[{"stream":{"app":"x"},"values":[["x","l"]]}]}"#,
                "streams[0].values[0]: `x` is not",
            ),
            (r#"{"nope":1}"#, "`streams` array"),
            ("not json", "not valid JSON"),
        ] {
            let e = decode_json(body.as_bytes(), &any_age(), "push")
                .unwrap_err()
                .to_string();
            assert!(e.contains(msg), "{body}: {e}");
        }
        // A stream with bad labels: its entries are refused, the others kept.
        for (labels, msg) in [
            (r#"{}"#, "at least one label"),
            (r#"{"a-b":"x"}"#, "not a valid label name"),
            (r#"{"a":1}"#, "must be strings"),
        ] {
            let body = format!(
                r#"{{"streams":[{{"stream":{labels},"values":[["1700000000000000000","l"]]}},{{"stream":{{"ok":"1"}},"values":[["1700000000000000000","kept"]]}}]}}"#
            );
            let d = decode_json(body.as_bytes(), &any_age(), "push").unwrap();
            assert_eq!(d.refused.get(&Refusal::InvalidLabels), Some(&1), "{labels}");
            assert!(d.errors[0].contains(msg), "{labels}: {:?}", d.errors);
            assert_eq!(d.content.records.len(), 1);
            assert_eq!(&d.content.records[0].line[..], b"kept");
        }
    }

    /// Regression: a push with `{agent="web1"}` was stored as is, so anyone allowed to
    /// push could write lines that look as if the agent `web1` (authenticated by its
    /// certificate) sent them.
    #[test]
    fn http_push_cannot_forge_an_agents_identity() {
        let d = decode_json(
            br#"{"streams":[{"stream":{"agent":"web1","app":"x"},"values":[["1700000000000000000","forged"]]}]}"#,
            &any_age(),
            "ci-token",
        )
        .unwrap();
        let l = &d.content.streams[0];
        assert_eq!(l.get("agent"), Some("ci-token"));
        assert_eq!(l.get("exported_agent"), Some("web1"));
        let mut both = Labels::new([("agent", "a"), ("exported_agent", "b")]);
        crate::ingest::stamp_identity(&mut both, "push");
        assert_eq!(both.get("agent"), Some("push"));
        assert_eq!(both.get("exported_agent"), Some("b"));
        assert_eq!(both.get("exported_exported_agent"), Some("a"));
    }

    #[test]
    fn entries_too_old_or_too_new_are_refused_one_by_one() {
        let now = crate::ingest::now_ns();
        let day = 86_400_000_000_000i64;
        let body = format!(
            r#"{{"streams":[{{"stream":{{"app":"x"}},"values":[["{}","eight days old"],["{}","now"],["{}","an hour ahead"],["{}","a minute ahead"]]}}]}}"#,
            now - 8 * day,
            now,
            now + 3_600_000_000_000,
            now + 60_000_000_000
        );
        let d = decode_json(body.as_bytes(), &PushPolicy::default(), "push").unwrap();
        let kept: Vec<&[u8]> = d.content.records.iter().map(|r| &r.line[..]).collect();
        assert_eq!(kept, vec![&b"now"[..], b"a minute ahead"]);
        assert_eq!(d.total, 4);
        assert_eq!(d.refused.get(&Refusal::TooOld), Some(&1));
        assert_eq!(d.refused.get(&Refusal::TooNew), Some(&1));
        assert!(
            d.errors[0].contains("has timestamp too old"),
            "{:?}",
            d.errors
        );
        assert!(
            d.errors[1].contains("has timestamp too new"),
            "{:?}",
            d.errors
        );
    }

    #[test]
    fn pushed_lines_over_the_line_limit_are_cut_and_flagged() {
        let long = "é".repeat(limits::MAX_LINE_BYTES / 2 + 7);
        let body = serde_json::to_vec(
            &json!({"streams":[{"stream":{"app":"x"},"values":[["1700000000000000000", long]]}]}),
        )
        .unwrap();
        let d = decode_json(&body, &any_age(), "push").unwrap();
        let r = &d.content.records[0];
        assert!(r.line.len() <= limits::MAX_LINE_BYTES);
        assert!(std::str::from_utf8(&r.line).is_ok());
        assert_eq!(r.flags, heimdall_common::record::flags::TRUNCATED);
    }

    #[test]
    fn only_the_kept_bytes_of_a_line_decide_its_utf8_flag() {
        use heimdall_common::record::flags::{INVALID_UTF8, TRUNCATED};
        let policy = any_age();
        let mut intake = Intake::new(&policy, "push");
        let mut s = intake
            .stream(0, selector_labels(0, r#"{app="x"}"#), 4)
            .unwrap();
        let mut past = vec![b'a'; limits::MAX_LINE_BYTES];
        past.extend_from_slice(b"\xff\xfe");
        let mut within = b"\xff".to_vec();
        within.extend(vec![b'a'; limits::MAX_LINE_BYTES]);
        let ts = 1_700_000_000_000_000_000;
        intake.entry(&mut s, ts, &past, Vec::new(), None);
        intake.entry(&mut s, ts, &within, Vec::new(), None);
        intake.entry(&mut s, ts, b"short \xff", Vec::new(), None);
        intake.text_entry(&mut s, ts, "short text", Vec::new(), None);
        let d = intake.finish();
        let got: Vec<u8> = d.content.records.iter().map(|r| r.flags).collect();
        assert_eq!(got, [TRUNCATED, TRUNCATED | INVALID_UTF8, INVALID_UTF8, 0]);
    }

    /// A `logproto.PushRequest` as Promtail writes it.
    /// An entry to encode: time, line, structured metadata.
    type Entry<'a> = (i64, &'a str, &'a [(&'a str, &'a str)]);

    fn proto_push(labels: &str, entries: &[Entry<'_>]) -> Vec<u8> {
        use proto::Writer;
        let mut stream = Writer::default();
        stream.bytes(1, labels.as_bytes());
        for (ts, line, meta) in entries {
            let mut t = Writer::default();
            t.uint(1, (ts / 1_000_000_000) as u64)
                .uint(2, (ts % 1_000_000_000) as u64);
            let mut e = Writer::default();
            e.message(1, &t).bytes(2, line.as_bytes());
            for (k, v) in *meta {
                let mut p = Writer::default();
                p.bytes(1, k.as_bytes()).bytes(2, v.as_bytes());
                e.message(3, &p);
            }
            stream.message(2, &e);
        }
        let mut req = Writer::default();
        req.message(1, &stream);
        snap::raw::Encoder::new().compress_vec(&req.buf).unwrap()
    }

    #[test]
    fn protobuf_snappy_pushes_decode_with_structured_metadata() {
        let body = proto_push(
            r#"{app="api", env="prod"}"#,
            &[
                (
                    1_700_000_000_123_456_789,
                    "GET /x 200",
                    &[("trace_id", "abc"), ("http.method", "GET")],
                ),
                (1_700_000_001_000_000_000, "level=warn slow", &[]),
            ],
        );
        let raw = unsnappy(&body, MAX_PUSH_BYTES).unwrap();
        let d = decode_proto(&raw, &any_age(), "promtail").unwrap();
        assert_eq!(d.total, 2);
        assert_eq!(d.content.streams.len(), 1);
        let s = &d.content.streams[0];
        assert_eq!(s.get("app"), Some("api"));
        assert_eq!(s.get("service_name"), Some("api"), "discovered from `app`");
        assert_eq!(s.get("agent"), Some("promtail"));
        let r = &d.content.records[0];
        assert_eq!(r.time_ns, 1_700_000_000_123_456_789);
        assert_eq!(r.metadata.get("trace_id"), Some("abc"));
        assert_eq!(r.metadata.get("http_method"), Some("GET"), "sanitized name");
        assert_eq!(d.content.records[1].level, Level::Warn);
        // Not snappy, not a PushRequest, a stream without labels.
        assert!(unsnappy(b"\xff\xff\xff\xff\xff", MAX_PUSH_BYTES).is_err());
        assert!(decode_proto(b"\x0a\x05\x0a", &any_age(), "p").is_err());
        let mut no_labels = proto::Writer::default();
        let mut e = proto::Writer::default();
        e.bytes(2, b"x");
        let mut st = proto::Writer::default();
        st.message(2, &e);
        no_labels.message(1, &st);
        let d = decode_proto(&no_labels.buf, &any_age(), "p").unwrap();
        assert_eq!(d.refused.get(&Refusal::InvalidLabels), Some(&1));
        // Inflating past the limit is refused before any allocation of that size.
        let big = snap::raw::Encoder::new()
            .compress_vec(&vec![0u8; 1 << 20])
            .unwrap();
        assert!(matches!(unsnappy(&big, 1 << 19), Err(BadPush::TooLarge(_))));
    }

    #[test]
    fn json_structured_metadata_is_kept_and_bounded() {
        let many: serde_json::Map<String, Value> = (0..MAX_METADATA_ENTRIES + 1)
            .map(|i| (format!("k{i}"), Value::String("v".into())))
            .collect();
        let body = serde_json::to_vec(&json!({"streams":[{"stream":{"job":"varlogs"},"values":[
            ["1700000000000000000","with", {"trace_id":"t1","user":"u","empty":""}],
            ["1700000000000000001","too many", many],
            ["1700000000000000002","plain"]]}]}))
        .unwrap();
        let d = decode_json(&body, &any_age(), "push").unwrap();
        assert_eq!(d.total, 3);
        assert_eq!(d.content.records.len(), 2);
        assert_eq!(d.refused.get(&Refusal::MetadataTooLarge), Some(&1));
        let m = &d.content.records[0].metadata;
        assert_eq!(m.get("trace_id"), Some("t1"));
        assert_eq!(m.get("user"), Some("u"));
        assert_eq!(m.get("empty"), None, "empty values are dropped");
        assert!(d.content.records[1].metadata.is_empty());
        assert_eq!(d.content.streams[0].get("service_name"), Some("varlogs"));
        let bad = br#"{"streams":[{"stream":{"a":"b"},"values":[["1","x",{"n":1}]]}]}"#;
        assert!(decode_json(bad, &any_age(), "p")
            .unwrap_err()
            .to_string()
            .contains("must be strings"));
    }

    #[test]
    fn service_name_is_discovered_as_loki_does() {
        let from = PushPolicy::default().service_name_from;
        let cases = [
            (vec![("service_name", "s"), ("app", "a")], "s"),
            (vec![("app", "a"), ("job", "j")], "a"),
            (vec![("k8s_container_name", "c"), ("job", "j")], "c"),
            (vec![("job", "j")], "j"),
            (vec![("host", "h")], UNKNOWN_SERVICE),
            (vec![("app", ""), ("job", "j")], "j"),
        ];
        for (labels, want) in cases {
            let mut l = Labels::new(labels.clone());
            discover_service_name(&mut l, &from);
            assert_eq!(l.get("service_name"), Some(want), "{labels:?}");
        }
        let mut off = Labels::new([("host", "h")]);
        discover_service_name(&mut off, &[]);
        assert_eq!(off.get("service_name"), None);
    }

    #[test]
    fn level_words_match_in_any_case_and_nothing_else_does() {
        let table = [
            (Level::Trace, &["trace", "trc"][..]),
            (Level::Debug, &["debug", "dbug", "dbg"]),
            (
                Level::Info,
                &["info", "inf", "information", "informational", "notice"],
            ),
            (Level::Warn, &["warn", "wrn", "warning"]),
            (Level::Error, &["error", "err", "eror"]),
            (
                Level::Fatal,
                &[
                    "fatal",
                    "critical",
                    "crit",
                    "panic",
                    "emerg",
                    "emergency",
                    "alert",
                ],
            ),
        ];
        for (level, words) in table {
            for w in words {
                assert_eq!(level_word(w), Some(level), "{w}");
                assert_eq!(level_word(&w.to_uppercase()), Some(level), "{w}");
                let mixed: String = w
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if i % 2 == 0 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect();
                assert_eq!(level_word(&mixed), Some(level), "{mixed}");
                assert_eq!(level_word(&format!("{w}s")), None, "{w}s");
                assert_eq!(level_word(&w[1..]), None, "{}", &w[1..]);
            }
        }
        for w in [
            "",
            "x",
            "informationals",
            "errors",
            "ok",
            "é",
            "warné",
            "INFO ",
        ] {
            assert_eq!(level_word(w), None, "{w:?}");
        }
        let l = Labels::default();
        assert_eq!(
            push_level(&l, None, &l, b"2024-01-01 [WARN] disk"),
            Level::Warn
        );
        assert_eq!(
            push_level(&l, None, &l, b"Something terrible: panic"),
            Level::Fatal
        );
        assert_eq!(push_level(&l, None, &l, b"nothing here"), Level::Unknown);
    }

    /// Comparable parts of a decoded push (the receiving time left out).
    fn comparable(d: &Decoded) -> (BatchContent, usize, BTreeMap<Refusal, usize>, Vec<String>) {
        let mut c = d.content.clone();
        for r in &mut c.records {
            r.observed_ns = 0;
        }
        (c, d.total, d.refused.clone(), d.errors.clone())
    }

    fn json_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z_]{1,6}",
            "[ -~]{0,12}",
            "\\PC{0,8}",
            Just(String::new()),
            Just("level".to_owned()),
            Just("error".to_owned()),
            Just("a\"b\\c\n".to_owned()),
        ]
    }

    fn json_item() -> impl Strategy<Value = serde_json::Value> {
        let now = crate::ingest::now_ns();
        let ts = prop_oneof![
            8 => (0i64..1_000_000_000_000).prop_map(move |d| json!((now - d).to_string())),
            1 => Just(json!("12x")),
            1 => Just(json!(5)),
        ];
        let meta = prop_oneof![
            Just(None),
            Just(Some(serde_json::Value::Null)),
            proptest::collection::vec((json_string(), json_string()), 0..3).prop_map(|p| {
                Some(serde_json::Value::Object(
                    p.into_iter().map(|(k, v)| (k, json!(v))).collect(),
                ))
            }),
            Just(Some(json!({"n": 1}))),
        ];
        (ts, json_string(), meta, 0..12u8).prop_map(|(ts, line, meta, odd)| match (meta, odd) {
            (_, 0) => json!([ts]),
            (_, 1) => json!([ts, line, null, 1]),
            (_, 2) => json!({"ts": ts, "line": line}),
            (None, _) => json!([ts, line]),
            (Some(m), _) => json!([ts, line, m]),
        })
    }

    fn json_stream() -> impl Strategy<Value = serde_json::Value> {
        let labels = proptest::collection::vec((json_string(), json_string()), 0..4);
        (
            labels,
            proptest::collection::vec(json_item(), 0..6),
            0..10u8,
        )
            .prop_map(|(labels, values, odd)| {
                let obj: serde_json::Map<String, serde_json::Value> =
                    labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                match odd {
                    0 => json!({"labels": "{app=\"x\"}", "values": values}),
                    1 => json!({"stream": {"app": 1}, "values": values}),
                    2 => json!({"stream": obj, "extra": [1, {"a": null}], "values": values}),
                    3 => json!({"stream": obj}),
                    4 => json!({"stream": obj, "values": null}),
                    _ => json!({"stream": obj, "values": values}),
                }
            })
    }

    proptest! {
        /// The direct JSON decoding admits exactly what the tree-based decoding admits,
        /// for every body it takes; it takes every body of the usual shape.
        #[test]
        fn direct_json_decoding_agrees_with_the_tree(
            streams in proptest::collection::vec(json_stream(), 0..4),
            dup in any::<bool>(),
        ) {
            let mut text = serde_json::to_string(&json!({"streams": streams})).unwrap();
            if dup {
                // A repeated key, which a parsed object keeps the last of.
                text = text.replacen("{\"streams\":", "{\"streams\": [], \"streams\":", 1);
            }
            let policy = PushPolicy::default();
            let tree = decode_json_tree(text.as_bytes(), &policy, "push");
            match fast_json::decode(text.as_bytes(), &policy, "push") {
                Some(d) => {
                    let t = tree.expect("the tree takes what the direct decoding takes");
                    prop_assert_eq!(comparable(&d), comparable(&t));
                }
                None => {
                    let usual = streams.iter().all(|s| {
                        s.get("values").and_then(|v| v.as_array()).is_some_and(|v| {
                            v.iter().all(|e| {
                                e.as_array().is_some_and(|a| {
                                    (2..=3).contains(&a.len())
                                        && a[0].as_str().is_some_and(|t| t.parse::<i64>().is_ok())
                                        && a[1].is_string()
                                        && a.get(2).is_none_or(|m| {
                                            m.is_null()
                                                || m.as_object().is_some_and(|o| o.values().all(|v| v.is_string()))
                                        })
                                })
                            })
                        }) && s.get("stream").is_none_or(|o| {
                            o.as_object().is_some_and(|o| o.values().all(|v| v.is_string()))
                        })
                    });
                    prop_assert!(!usual, "the direct decoding refused a usual body: {}", text);
                }
            }
        }
    }
}
