//! The log record model shared by the agent and the aggregator.
//!
//! A [`LogRecord`] belongs to a stream identified by a small set of low-cardinality
//! [`Labels`] (`host`, `source`, `service`, static labels). Request ids and user ids stay
//! in the message. Records on the wire refer to their stream by index into the batch's
//! stream table, so labels travel once per batch, not once per line.

use bytes::Bytes;
use std::fmt;

/// Normalised severity of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum Level {
    /// No level could be determined.
    #[default]
    Unknown = 0,
    Trace = 1,
    Debug = 2,
    Info = 3,
    Warn = 4,
    Error = 5,
    Fatal = 6,
}

impl Level {
    /// All levels, in wire order.
    pub const ALL: [Level; 7] = [
        Level::Unknown,
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ];

    /// Decodes the wire byte; `None` for values this version does not know.
    pub fn from_u8(v: u8) -> Option<Level> {
        Level::ALL.get(v as usize).copied()
    }

    /// The lower-case name used in labels and query output.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Unknown => "unknown",
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }

    /// Parses the lower-case name produced by [`Level::as_str`].
    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bit flags carried by every record.
pub mod flags {
    /// The line was longer than the agent's cap and was cut; the rest was skipped.
    pub const TRUNCATED: u8 = 1;
    /// The line is not valid UTF-8; the bytes are kept as read.
    pub const INVALID_UTF8: u8 = 2;
    /// The line had no trailing newline when its file was rotated away or deleted.
    pub const NO_NEWLINE: u8 = 4;
    /// Every flag this version knows; others are rejected by the decoder.
    pub const KNOWN: u8 = TRUNCATED | INVALID_UTF8 | NO_NEWLINE;
}

/// The label set that identifies a stream, kept sorted by name with unique names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// Builds a label set; later duplicates of a name replace earlier ones.
    pub fn new<I, K, V>(pairs: I) -> Labels
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut l = Labels(Vec::new());
        for (k, v) in pairs {
            l.insert(k, v);
        }
        l
    }

    /// Sets `name` to `value`, keeping the set sorted.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&name)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (name, value)),
        }
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0.remove(i).1)
    }

    /// Keeps the labels for which `keep(name, value)` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.0.retain(|(k, v)| keep(k, v));
    }

    /// The pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Labels {
    /// Formats as a LogQL stream selector: `{host="a", source="/var/log/x.log"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}=\"")?;
            for c in v.chars() {
                match c {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

/// Nanoseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// One log record inside a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Index of the record's stream in the batch's stream table.
    pub stream: u32,
    /// Event time, nanoseconds since the Unix epoch (the observed time when the line has none).
    pub time_ns: i64,
    /// When the agent read the line, nanoseconds since the Unix epoch.
    pub observed_ns: i64,
    /// Normalised severity.
    pub level: Level,
    /// Stable hash of the line's template text; 0 when not mined.
    pub template_id: u64,
    /// Bits from [`flags`].
    pub flags: u8,
    /// How many values redaction replaced in this line.
    pub redacted: u32,
    /// The message bytes (redacted, not necessarily UTF-8).
    pub line: Bytes,
    /// Structured metadata: name/value pairs kept with this one line (a trace id, a
    /// user id), as Loki 3 keeps them. Never part of the stream's identity; empty for
    /// most lines.
    pub metadata: Labels,
}

/// A template's text, sent with the first batches that use its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// Stable hash of `text` (see `heimdall_agent::pipeline::template::template_id`).
    pub id: u64,
    pub text: String,
}

/// The end of an anomaly: the condition an event reported is over (the spike has
/// passed, the stream logs again). Sent in the batches, after the event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnomalyEnd {
    /// The event's id ([`Anomaly::id`]).
    pub id: u64,
    /// Start of the first window without the condition, ns since the Unix epoch.
    pub time_ns: i64,
    /// What that window showed (as the event's `observed`).
    pub observed: f64,
}

/// A template that generalised: lines the agent tagged `from` before belong to the
/// template now called `to` (see the template identity notes in
/// `heimdall_store::templates`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TemplateAlias {
    pub from: u64,
    pub to: u64,
}

/// Exact counts of one stream's records at one level and template in one window.
///
/// An agent sends the aggregates of every record it read, shipped or not, in the batch
/// that holds (or would have held) the records, so summing them over stored batches is
/// exact whatever a source's shipping policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregate {
    /// Index into the batch's stream table.
    pub stream: u32,
    /// Window start, ns since the Unix epoch (a multiple of the window).
    pub start_ns: i64,
    /// Window length in seconds.
    pub window_secs: u32,
    pub level: Level,
    pub template_id: u64,
    /// Records read.
    pub count: u64,
    /// Line bytes read.
    pub bytes: u64,
    /// Records of these that were shipped (stored as lines).
    pub shipped: u64,
}

/// What kind of anomaly an agent saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum AnomalyKind {
    /// A template or a stream logs far more than its baseline.
    RateSpike = 1,
    /// A stream logs far less than its baseline (but not nothing).
    RateDrop = 2,
    /// Templates never seen before appear in a burst.
    NewTemplates = 3,
    /// The share of error records jumps.
    ErrorRatio = 4,
    /// A stream that used to log has gone silent.
    Silence = 5,
}

impl AnomalyKind {
    /// All kinds, in wire order.
    pub const ALL: [AnomalyKind; 5] = [
        AnomalyKind::RateSpike,
        AnomalyKind::RateDrop,
        AnomalyKind::NewTemplates,
        AnomalyKind::ErrorRatio,
        AnomalyKind::Silence,
    ];

    /// Decodes the wire byte.
    pub fn from_u8(v: u8) -> Option<AnomalyKind> {
        AnomalyKind::ALL.iter().copied().find(|k| *k as u8 == v)
    }

    /// The snake-case name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::RateSpike => "rate_spike",
            AnomalyKind::RateDrop => "rate_drop",
            AnomalyKind::NewTemplates => "new_templates",
            AnomalyKind::ErrorRatio => "error_ratio",
            AnomalyKind::Silence => "silence",
        }
    }

    /// Parses [`AnomalyKind::as_str`].
    pub fn parse(s: &str) -> Option<AnomalyKind> {
        AnomalyKind::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

/// An anomaly an agent detected on one of its streams.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    /// Unique per agent: a hash of the stream, kind, template and onset.
    pub id: u64,
    pub kind: AnomalyKind,
    /// The stream's labels (as stored, but without the aggregator's `agent` label).
    pub stream: Labels,
    /// Start of the window in which it was seen, ns since the Unix epoch.
    pub time_ns: i64,
    /// How far past the detection threshold the observation is (1 = at it).
    pub score: f64,
    /// What was expected for the window (records, new templates, or error share).
    pub baseline: f64,
    /// What was seen.
    pub observed: f64,
    /// The templates involved (id, text), most relevant first.
    pub templates: Vec<Template>,
    /// A few redacted lines of the templates involved.
    pub samples: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_and_unique() {
        let l = Labels::new([("source", "/a"), ("host", "h1"), ("host", "h2")]);
        let v: Vec<_> = l.iter().collect();
        assert_eq!(v, vec![("host", "h2"), ("source", "/a")]);
        assert_eq!(l.get("host"), Some("h2"));
        assert_eq!(l.get("nope"), None);
        assert_eq!(l.to_string(), r#"{host="h2", source="/a"}"#);
    }

    #[test]
    fn level_round_trips() {
        for l in Level::ALL {
            assert_eq!(Level::from_u8(l as u8), Some(l));
            assert_eq!(Level::parse(l.as_str()), Some(l));
        }
        assert_eq!(Level::from_u8(7), None);
    }
}
