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
