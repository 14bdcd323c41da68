//! The Loki HTTP API's shapes, as Grafana and Loki's clients expect them: query results
//! (`streams`, `matrix`, `vector`, `scalar`), label and series lists, index statistics,
//! build information, tail messages and pushes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A stream's (or a series') labels.
pub type LabelSet = BTreeMap<String, String>;

/// `data` of `/loki/api/v1/query` and `query_range`. Written as Loki writes it:
/// `resultType`, then `encodingFlags` (when any), then `result` and `stats` (Grafana
/// reads the flags before the result to know the entries' shape).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct QueryData {
    #[serde(flatten)]
    pub result: QueryResult,
    /// Loki's statistics object (`summary`, `querier`, `ingester`); `summary.partial`
    /// is true when the answer was cut (the byte cap or the deadline).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub stats: serde_json::Value,
    /// `["categorize-labels"]` when the entries carry their structured metadata and
    /// parsed labels apart (asked for with `X-Loki-Response-Encoding-Flags`).
    #[serde(
        rename = "encodingFlags",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub encoding_flags: Vec<String>,
}

impl Serialize for QueryData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        let kind = match &self.result {
            QueryResult::Streams(_) => "streams",
            QueryResult::Matrix(_) => "matrix",
            QueryResult::Vector(_) => "vector",
            QueryResult::Scalar(_) => "scalar",
        };
        m.serialize_entry("resultType", kind)?;
        if !self.encoding_flags.is_empty() {
            m.serialize_entry("encodingFlags", &self.encoding_flags)?;
        }
        match &self.result {
            QueryResult::Streams(v) => m.serialize_entry("result", v)?,
            QueryResult::Matrix(v) => m.serialize_entry("result", v)?,
            QueryResult::Vector(v) => m.serialize_entry("result", v)?,
            QueryResult::Scalar(v) => m.serialize_entry("result", v)?,
        }
        if !self.stats.is_null() {
            m.serialize_entry("stats", &self.stats)?;
        }
        m.end()
    }
}

/// The encoding flag that splits a line's labels into stream labels, structured
/// metadata and parsed labels.
pub const CATEGORIZE_LABELS: &str = "categorize-labels";

impl QueryData {
    /// Whether the answer was cut before the limit or the end of the range.
    pub fn partial(&self) -> bool {
        self.stats["summary"]["partial"] == true
    }
}

/// A query's result, by `resultType`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
pub enum QueryResult {
    /// Log lines grouped by labels.
    Streams(Vec<Stream>),
    /// Series over a range.
    Matrix(Vec<MatrixSeries>),
    /// Series at one instant.
    Vector(Vec<VectorSample>),
    /// One number at one instant.
    Scalar(Sample),
}

/// Log lines of one label set: `[["<ns>", "<line>"], …]`, or with `categorize-labels`
/// `[["<ns>", "<line>", {"structuredMetadata": {…}, "parsed": {…}}], …]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    pub stream: LabelSet,
    pub values: Vec<LogEntry>,
}

impl Stream {
    /// The entries with their times parsed (ns since the Unix epoch).
    pub fn entries(&self) -> impl Iterator<Item = (i64, &str)> {
        self.values
            .iter()
            .map(|e| (e.ts.parse().unwrap_or(0), e.line.as_str()))
    }
}

/// One line of a [`Stream`]: a JSON array of two elements, or three when the line has
/// categorized labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogEntry {
    /// Nanoseconds since the Unix epoch, as a decimal string.
    pub ts: String,
    pub line: String,
    pub labels: Option<EntryLabels>,
}

impl From<(String, String)> for LogEntry {
    fn from((ts, line): (String, String)) -> LogEntry {
        LogEntry {
            ts,
            line,
            labels: None,
        }
    }
}

/// The third element of a categorized entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryLabels {
    #[serde(
        rename = "structuredMetadata",
        default,
        skip_serializing_if = "LabelSet::is_empty"
    )]
    pub structured_metadata: LabelSet,
    #[serde(default, skip_serializing_if = "LabelSet::is_empty")]
    pub parsed: LabelSet,
}

impl Serialize for LogEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2 + usize::from(self.labels.is_some()))?;
        t.serialize_element(&self.ts)?;
        t.serialize_element(&self.line)?;
        if let Some(l) = &self.labels {
            t.serialize_element(l)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for LogEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LogEntry, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LogEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("[\"<unix ns>\", \"<line>\"] with optional labels")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<LogEntry, A::Error> {
                use serde::de::Error;
                let ts = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let line = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                let labels = a.next_element::<EntryLabels>()?;
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(LogEntry { ts, line, labels })
            }
        }
        d.deserialize_seq(V)
    }
}

/// `[<seconds>, "<value>"]`: Loki writes sample values as strings (`NaN`, `+Inf`).
pub type Sample = (f64, String);

/// A series of a range query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatrixSeries {
    pub metric: LabelSet,
    pub values: Vec<Sample>,
}

/// A series of an instant query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VectorSample {
    pub metric: LabelSet,
    pub value: Sample,
}

/// `/loki/api/v1/index/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexStats {
    pub streams: u64,
    pub chunks: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// `/loki/api/v1/status/buildinfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    pub version: String,
    pub revision: String,
    pub branch: String,
    pub build_user: String,
    pub build_date: String,
    pub go_version: String,
    pub application: String,
}

/// One message of the `/loki/api/v1/tail` WebSocket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TailMessage {
    pub streams: Vec<Stream>,
    #[serde(default)]
    pub dropped_entries: Option<Vec<serde_json::Value>>,
}

/// A JSON push body (`POST /loki/api/v1/push`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PushRequest {
    pub streams: Vec<PushStream>,
}

/// One stream of a push: its labels and `[["<ns>", "<line>"], …]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PushStream {
    pub stream: LabelSet,
    pub values: Vec<(String, String)>,
}

/// The answer to a push some of whose entries were refused (HTTP 400); the others were
/// stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushRefused {
    pub status: String,
    #[serde(rename = "errorType")]
    pub error_type: String,
    /// Loki's sentences for the first refusals, and the counts.
    pub message: String,
    pub error: String,
    /// Entries stored.
    pub accepted: usize,
    /// Entries refused.
    pub refused: usize,
    /// Refused entries by reason: `too_old`, `too_new`, `invalid_labels`.
    pub reasons: BTreeMap<String, usize>,
}

/// A pattern of `/loki/api/v1/patterns`: a template (variables as `<_>`, as Loki writes
/// them) at one level, with its counts per step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pattern {
    pub pattern: String,
    /// The records' level (`info`, `error`, …; `unknown` when none was found).
    #[serde(default)]
    pub level: String,
    /// The template id, 16 hex digits.
    pub template_id: String,
    pub total: u64,
    /// `[<seconds>, <count>]`, at multiples of the step.
    pub samples: Vec<(i64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_results_have_lokis_shape() {
        let d = QueryData {
            result: QueryResult::Streams(vec![Stream {
                stream: LabelSet::from([("app".into(), "x".into())]),
                values: vec![("1700000000000000000".to_owned(), "hello".to_owned()).into()],
            }]),
            stats: serde_json::json!({"summary": {"partial": false}}),
            encoding_flags: Vec::new(),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["resultType"], "streams");
        assert_eq!(v["result"][0]["values"][0][1], "hello");
        let back: QueryData = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
        let m: QueryData = serde_json::from_str(
            r#"{"resultType":"vector","result":[{"metric":{"a":"b"},"value":[1.5,"2"]}],"stats":{}}"#,
        )
        .unwrap();
        assert_eq!(
            m.result,
            QueryResult::Vector(vec![VectorSample {
                metric: LabelSet::from([("a".into(), "b".into())]),
                value: (1.5, "2".into())
            }])
        );
        let s: QueryData =
            serde_json::from_str(r#"{"resultType":"scalar","result":[1,"NaN"]}"#).unwrap();
        assert_eq!(s.result, QueryResult::Scalar((1.0, "NaN".into())));
    }

    #[test]
    fn categorized_entries_have_three_elements_as_loki_3_writes_them() {
        let e = LogEntry {
            ts: "1".into(),
            line: "x".into(),
            labels: Some(EntryLabels {
                structured_metadata: LabelSet::from([("trace_id".into(), "abc".into())]),
                parsed: LabelSet::new(),
            }),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!(["1", "x", {"structuredMetadata": {"trace_id": "abc"}}])
        );
        assert_eq!(serde_json::from_value::<LogEntry>(v).unwrap(), e);
        let empty = LogEntry {
            labels: Some(EntryLabels::default()),
            ..e.clone()
        };
        assert_eq!(serde_json::to_string(&empty).unwrap(), r#"["1","x",{}]"#);
        // The flags come before the result, as Grafana's reader needs.
        let d = QueryData {
            result: QueryResult::Streams(vec![Stream {
                stream: LabelSet::new(),
                values: vec![empty],
            }]),
            stats: serde_json::Value::Null,
            encoding_flags: vec![CATEGORIZE_LABELS.into()],
        };
        let text = serde_json::to_string(&d).unwrap();
        assert!(
            text.starts_with(
                r#"{"resultType":"streams","encodingFlags":["categorize-labels"],"result":"#
            ),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<QueryData>(&text).unwrap(), d);
        let plain: LogEntry = serde_json::from_str(r#"["2","y"]"#).unwrap();
        assert_eq!(serde_json::to_string(&plain).unwrap(), r#"["2","y"]"#);
        assert!(serde_json::from_str::<LogEntry>(r#"["2"]"#).is_err());
    }
}
