//! The Loki HTTP API, in the shapes Grafana's Loki datasource and Loki clients expect:
//! `query` (instant), `query_range`, `labels`, `label/<name>/values`, `series`,
//! `index/stats`, `push` (JSON), `tail` (WebSocket) and `status/buildinfo`.
//!
//! Parameters come from the query string or, for POST, a form body; repeated keys
//! (`match[]`) are kept. Results carry Loki's `stats` object.

use super::{bad, internal, on_source, parse_step, parse_time, range, ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as AxPath, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use heimdall_api::loki::{
    BuildInfo, IndexStats, LabelSet, MatrixSeries, PushRefused, QueryData, QueryResult, Stream,
    TailMessage, VectorSample,
};
use heimdall_api::{format_value, Envelope};
use heimdall_common::limits;
use heimdall_common::record::{Labels, Level, LogRecord};
use heimdall_common::wire::BatchContent;
use heimdall_logql::{self as parse, LogQuery, Query};
use heimdall_query::eval::{self, EvalRequest, Value as EvalValue};
use heimdall_query::exec::{self, LogRequest, LogResult};
use heimdall_query::pipeline::Pipeline;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most line bytes one log query returns; beyond, the result is cut and marked partial.
const MAX_RESULT_BYTES: usize = 64 << 20;
/// Largest push body accepted.
pub const MAX_PUSH_BYTES: usize = 16 << 20;
/// Most label pairs on a pushed stream.
const MAX_PUSH_LABELS: usize = 30;
/// Most tail connections at once.
const MAX_TAILS: usize = 64;

/// Request parameters, repeated keys kept in order.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Params {
    /// Parses `a=1&b=2&b=3` (URL query or form body).
    pub fn parse(s: &str) -> Params {
        Params(
            s.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (percent_decode(k), percent_decode(v)),
                    None => (percent_decode(p), String::new()),
                })
                .collect(),
        )
    }

    fn raw(q: Option<String>) -> Params {
        q.as_deref().map(Params::parse).unwrap_or_default()
    }

    /// The last value of `k`, if any and not empty.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, v)| n == k && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn owned(&self, k: &str) -> Option<String> {
        self.get(k).map(str::to_owned)
    }

    /// Every value of `k`.
    pub fn all<'a>(&'a self, k: &'a str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    fn usize(&self, k: &str) -> Result<Option<usize>, ApiError> {
        self.get(k)
            .map(|v| {
                v.parse()
                    .map_err(|_| bad(format!("{k}: `{v}` is not a non-negative integer")))
            })
            .transpose()
    }

    /// `limit` (default 100): over `max` is an error, as in Loki, not a silent clamp.
    fn limit(&self, max: usize) -> Result<usize, ApiError> {
        match self.usize("limit")?.unwrap_or(100) {
            0 => Err(bad("limit must be a positive value")),
            n if n > max => Err(bad(format!(
                "max entries limit per query exceeded, limit > max_entries_limit_per_query ({n} > {max})"
            ))),
            n => Ok(n),
        }
    }

    fn query(&self) -> Result<Query, ApiError> {
        let q = self
            .get("query")
            .ok_or_else(|| bad("missing `query` parameter"))?;
        parse::parse(q).map_err(|e| bad(e.to_string()))
    }

    fn range(&self) -> Result<(i64, i64), ApiError> {
        range(
            &self.owned("start"),
            &self.owned("end"),
            &self.owned("since"),
        )
    }

    fn backward(&self) -> Result<bool, ApiError> {
        match self.get("direction") {
            None | Some("backward") | Some("BACKWARD") => Ok(true),
            Some("forward") | Some("FORWARD") => Ok(false),
            Some(other) => Err(bad(format!(
                "direction `{other}`: expected `forward` or `backward`"
            ))),
        }
    }
}

/// Seconds, as Loki writes sample times.
fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

fn label_set(l: &Labels) -> LabelSet {
    l.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn stats_json(started: Instant, lines: u64, bytes: u64, returned: usize) -> Value {
    let exec = started.elapsed().as_secs_f64();
    let per_sec = |x: u64| {
        if exec > 0.0 {
            (x as f64 / exec) as u64
        } else {
            0
        }
    };
    let chunk = json!({
        "headChunkBytes": 0, "headChunkLines": 0, "decompressedBytes": bytes,
        "decompressedLines": lines, "compressedBytes": 0, "totalDuplicates": 0,
        "postFilterLines": returned, "headChunkStructuredMetadataBytes": 0,
        "decompressedStructuredMetadataBytes": 0
    });
    json!({
        "summary": {
            "bytesProcessedPerSecond": per_sec(bytes),
            "linesProcessedPerSecond": per_sec(lines),
            "totalBytesProcessed": bytes,
            "totalLinesProcessed": lines,
            "execTime": exec,
            "queueTime": 0,
            "subqueries": 0,
            "totalEntriesReturned": returned,
            "splits": 0,
            "shards": 0,
            "totalPostFilterLines": returned,
            "totalStructuredMetadataBytesProcessed": 0
        },
        "querier": {"store": {
            "totalChunksRef": 0, "totalChunksDownloaded": 0, "chunksDownloadTime": 0,
            "queryReferencedStructuredMetadata": false, "chunk": chunk
        }},
        "ingester": {
            "totalReached": 0, "totalChunksMatched": 0, "totalBatches": 0, "totalLinesSent": 0,
            "store": {"totalChunksRef": 0, "totalChunksDownloaded": 0, "chunksDownloadTime": 0,
                      "queryReferencedStructuredMetadata": false, "chunk": {}}
        }
    })
}

fn streams_of(res: &LogResult) -> Vec<Stream> {
    res.streams
        .iter()
        .map(|(labels, entries)| Stream {
            stream: label_set(labels),
            values: entries
                .iter()
                .map(|e| {
                    (
                        e.ts.to_string(),
                        String::from_utf8_lossy(&e.line).into_owned(),
                    )
                })
                .collect(),
        })
        .collect()
}

fn success(result: QueryResult, stats: Value) -> Json<Envelope<QueryData>> {
    Json(Envelope::ok(QueryData { result, stats }))
}

async fn eval_metric(
    st: &ApiState,
    expr: parse::Expr,
    start: i64,
    end: i64,
    step: i64,
) -> Result<(EvalValue, eval::Stats), ApiError> {
    let req = EvalRequest {
        start_ns: start,
        end_ns: end,
        step_ns: step,
        deadline: Some(Instant::now() + st.query_timeout),
        limits: st.eval_limits,
    };
    on_source(st, move |src, _| eval::evaluate(src, &expr, req)).await
}

async fn instant(st: Arc<ApiState>, p: Params) -> Result<Json<Envelope<QueryData>>, ApiError> {
    let started = Instant::now();
    let q = p.query()?;
    let t = match p.get("time") {
        Some(t) => parse_time(t).map_err(bad)?,
        None => crate::ingest::now_ns(),
    };
    let Query::Metric(expr) = q else {
        return Err(bad(
            "log queries are not supported as an instant query type, please change your query to a range query type",
        ));
    };
    let (v, stats) = eval_metric(&st, expr, t, t, 1).await?;
    metrics::histogram!("heimdall_aggregator_query_seconds", "kind" => "instant")
        .record(started.elapsed().as_secs_f64());
    let (result, n) = match v {
        EvalValue::Scalar(x) => (QueryResult::Scalar((secs(t), format_value(x))), 1),
        EvalValue::Vector(series) => {
            let r: Vec<VectorSample> = series
                .iter()
                .filter(|s| !s.values[0].is_nan())
                .map(|s| VectorSample {
                    metric: label_set(&s.labels),
                    value: (secs(t), format_value(s.values[0])),
                })
                .collect();
            let n = r.len();
            (QueryResult::Vector(r), n)
        }
    };
    Ok(success(
        result,
        stats_json(started, stats.lines, stats.bytes, n),
    ))
}

async fn ranged(st: Arc<ApiState>, p: Params) -> Result<Json<Envelope<QueryData>>, ApiError> {
    let started = Instant::now();
    let q = p.query()?;
    let (start, end) = p.range()?;
    match q {
        Query::Log(lq) => {
            let limit = p.limit(st.max_limit)?;
            let req = LogRequest {
                start_ns: start,
                // Loki's end is inclusive for the newest line; make it so.
                end_ns: end.saturating_add(1),
                limit,
                max_bytes: MAX_RESULT_BYTES,
                backward: p.backward()?,
                deadline: Some(Instant::now() + st.query_timeout),
            };
            let res = on_source(&st, move |src, _| exec::run_log_query(src, &lq, &req)).await?;
            metrics::histogram!("heimdall_aggregator_query_seconds", "kind" => "log")
                .record(started.elapsed().as_secs_f64());
            let mut stats = stats_json(started, res.scanned, res.scanned_bytes, res.lines);
            stats["summary"]["partial"] = json!(res.partial);
            Ok(success(QueryResult::Streams(streams_of(&res)), stats))
        }
        Query::Metric(expr) => {
            let step = parse_step(p.get("step").or(p.get("interval")), start, end)?;
            // As Loki's query frontend with `align_queries_with_step` (on in its Helm
            // chart): points fall on multiples of the step, so repeated queries agree
            // and the agents' pre-aggregates line up with the steps.
            let (start, end) = if st.align_queries_with_step {
                (start.div_euclid(step) * step, end.div_euclid(step) * step)
            } else {
                (start, end)
            };
            let (v, stats) = eval_metric(&st, expr, start, end, step).await?;
            metrics::histogram!("heimdall_aggregator_query_seconds", "kind" => "metric")
                .record(started.elapsed().as_secs_f64());
            let times: Vec<i64> = {
                let req = EvalRequest {
                    start_ns: start,
                    end_ns: end,
                    step_ns: step,
                    deadline: None,
                    limits: st.eval_limits,
                };
                eval::step_times(&req)
            };
            let series = match v {
                EvalValue::Scalar(x) => vec![eval::Series {
                    labels: Labels::default(),
                    values: vec![x; times.len()],
                }],
                EvalValue::Vector(s) => s,
            };
            let mut points = 0;
            let result: Vec<MatrixSeries> = series
                .iter()
                .map(|s| {
                    let values: Vec<_> = times
                        .iter()
                        .zip(&s.values)
                        .filter(|(_, v)| !v.is_nan())
                        .map(|(t, v)| (secs(*t), format_value(*v)))
                        .collect();
                    points += values.len();
                    MatrixSeries {
                        metric: label_set(&s.labels),
                        values,
                    }
                })
                .collect();
            Ok(success(
                QueryResult::Matrix(result),
                stats_json(started, stats.lines, stats.bytes, points),
            ))
        }
    }
}

/// `GET /loki/api/v1/query`.
pub async fn query(
    State(st): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Envelope<QueryData>>, ApiError> {
    instant(st, Params::raw(q)).await
}

/// `POST /loki/api/v1/query` (form body).
pub async fn query_form(
    State(st): State<Arc<ApiState>>,
    body: String,
) -> Result<Json<Envelope<QueryData>>, ApiError> {
    instant(st, Params::parse(&body)).await
}

/// `GET /loki/api/v1/query_range`.
pub async fn query_range(
    State(st): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Envelope<QueryData>>, ApiError> {
    ranged(st, Params::raw(q)).await
}

/// `POST /loki/api/v1/query_range` (form body).
pub async fn query_range_form(
    State(st): State<Arc<ApiState>>,
    body: String,
) -> Result<Json<Envelope<QueryData>>, ApiError> {
    ranged(st, Params::parse(&body)).await
}

/// Streams with lines in the range matching any of `selectors` (all streams with lines
/// in the range when there are none).
async fn streams_matching(
    st: &ApiState,
    selectors: Vec<String>,
    start: i64,
    end: i64,
) -> Result<Vec<Labels>, ApiError> {
    let mut sets = Vec::new();
    for s in &selectors {
        match parse::parse(s).map_err(|e| bad(e.to_string()))? {
            Query::Log(l) if l.stages.is_empty() => sets.push(l.matchers),
            _ => {
                return Err(bad(format!(
                    "`{s}` must be a stream selector such as {{app=\"api\"}}"
                )))
            }
        }
    }
    on_source(st, move |src, _| {
        let mut out: BTreeSet<Labels> = BTreeSet::new();
        if sets.is_empty() {
            sets.push(Vec::new());
        }
        for m in &sets {
            for (_, l) in src.streams_in_range(m, start, end.saturating_add(1))? {
                out.insert(l);
            }
        }
        Ok(out.into_iter().collect())
    })
    .await
}

/// `GET /loki/api/v1/labels`.
pub async fn labels(
    State(st): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Envelope<Vec<String>>>, ApiError> {
    let p = Params::raw(q);
    let (start, end) = p.range()?;
    let sel: Vec<String> = p.owned("query").into_iter().collect();
    let names: BTreeSet<String> = streams_matching(&st, sel, start, end)
        .await?
        .iter()
        .flat_map(|l| l.iter().map(|(k, _)| k.to_owned()).collect::<Vec<_>>())
        .collect();
    Ok(Json(Envelope::ok(names.into_iter().collect())))
}

/// `GET /loki/api/v1/label/<name>/values`.
pub async fn label_values(
    State(st): State<Arc<ApiState>>,
    AxPath(name): AxPath<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Envelope<Vec<String>>>, ApiError> {
    let p = Params::raw(q);
    let (start, end) = p.range()?;
    let sel: Vec<String> = p.owned("query").into_iter().collect();
    let values: BTreeSet<String> = streams_matching(&st, sel, start, end)
        .await?
        .iter()
        .filter_map(|l| l.get(&name).map(str::to_owned))
        .collect();
    Ok(Json(Envelope::ok(values.into_iter().collect())))
}

async fn series_of(
    st: Arc<ApiState>,
    p: Params,
) -> Result<Json<Envelope<Vec<LabelSet>>>, ApiError> {
    let (start, end) = p.range()?;
    let sel: Vec<String> = p
        .all("match[]")
        .chain(p.all("match"))
        .map(str::to_owned)
        .collect();
    if sel.is_empty() {
        return Err(bad("missing `match[]` parameter (a stream selector)"));
    }
    let data = streams_matching(&st, sel, start, end)
        .await?
        .iter()
        .map(label_set)
        .collect();
    Ok(Json(Envelope::ok(data)))
}

/// `GET /loki/api/v1/series`.
pub async fn series(
    State(st): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Envelope<Vec<LabelSet>>>, ApiError> {
    series_of(st, Params::raw(q)).await
}

/// `POST /loki/api/v1/series` (form body).
pub async fn series_form(
    State(st): State<Arc<ApiState>>,
    body: String,
) -> Result<Json<Envelope<Vec<LabelSet>>>, ApiError> {
    series_of(st, Params::parse(&body)).await
}

/// `GET /loki/api/v1/index/stats`: streams, entries and bytes a selector covers in the
/// range, from the agents' pre-aggregates (lines pushed through the Loki API are
/// counted from storage).
pub async fn index_stats(
    State(st): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<IndexStats>, ApiError> {
    let p = Params::raw(q);
    let (start, end) = p.range()?;
    let Query::Log(lq) = p.query()? else {
        return Err(bad("index/stats takes a stream selector"));
    };
    let (streams, entries, bytes) = on_source(&st, move |src, _| {
        let streams = src.streams_in_range(&lq.matchers, start, end.saturating_add(1))?;
        let ids: Vec<i64> = streams.iter().map(|(id, _)| *id).collect();
        let (entries, bytes) = src.volume(&ids, start, end.saturating_add(1))?;
        Ok((streams.len(), entries, bytes))
    })
    .await?;
    Ok(Json(IndexStats {
        streams: streams as u64,
        chunks: 0,
        entries,
        bytes,
    }))
}

/// `GET /loki/api/v1/status/buildinfo`.
pub async fn buildinfo() -> Json<BuildInfo> {
    Json(BuildInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        application: "heimdall".into(),
        ..BuildInfo::default()
    })
}

/// A level from a pushed stream's labels or structured metadata, else from the line.
fn push_level(labels: &Labels, meta: Option<&serde_json::Map<String, Value>>, line: &str) -> Level {
    let named = ["level", "detected_level", "severity", "lvl"];
    for n in named {
        if let Some(v) = labels
            .get(n)
            .or_else(|| meta.and_then(|m| m.get(n)).and_then(Value::as_str))
        {
            if let Some(l) = level_word(v) {
                return l;
            }
        }
    }
    // The first level word in the line's first 256 bytes.
    let head = &line.as_bytes()[..line.len().min(256)];
    head.split(|c| !c.is_ascii_alphabetic())
        .filter(|w| (3..=8).contains(&w.len()))
        .find_map(|w| std::str::from_utf8(w).ok().and_then(level_word))
        .unwrap_or(Level::Unknown)
}

fn level_word(w: &str) -> Option<Level> {
    Some(match w.to_ascii_lowercase().as_str() {
        "trace" => Level::Trace,
        "debug" | "dbug" => Level::Debug,
        "info" | "notice" => Level::Info,
        "warn" | "warning" => Level::Warn,
        "error" | "err" | "eror" => Level::Error,
        "fatal" | "critical" | "crit" | "panic" | "emerg" | "alert" => Level::Fatal,
        _ => return None,
    })
}

/// What pushed entries may hold, beyond the body's shape. Loki's limits and defaults.
#[derive(Clone, Copy, Debug)]
pub struct PushPolicy {
    /// Entries older than this are refused (`reject_old_samples_max_age`); `None` takes
    /// any age.
    pub max_age: Option<Duration>,
    /// Entries further ahead than this are refused (`creation_grace_period`).
    pub creation_grace: Duration,
}

impl Default for PushPolicy {
    fn default() -> PushPolicy {
        PushPolicy {
            max_age: Some(Duration::from_secs(168 * 3600)),
            creation_grace: Duration::from_secs(600),
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
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::TooOld => "too_old",
            Refusal::TooNew => "too_new",
            Refusal::InvalidLabels => "invalid_labels",
        }
    }
}

/// A push body decoded and checked: what to store, and what was refused and why.
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

pub use crate::ingest::stamp_identity as push_identity;

/// One pushed entry: time, line and structured metadata.
type PushEntry<'a> = (i64, &'a str, Option<&'a serde_json::Map<String, Value>>);

/// Why a push body is refused whole.
#[derive(Debug, thiserror::Error)]
enum BadPush {
    /// The body is not JSON.
    #[error("push body is not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// No `streams` array.
    #[error("push body needs a `streams` array")]
    NoStreams,
    /// A `values` entry that is not `[ts, line, …]`.
    #[error("streams[{0}].values[{1}]: expected [\"<unix ns>\", \"<line>\"]")]
    ValueShape(usize, usize),
    /// A `values` timestamp that is not nanoseconds.
    #[error("streams[{0}].values[{1}]: `{2}` is not a Unix time in nanoseconds")]
    ValueTime(usize, usize, String),
    /// An `entries` item without `ts` or `line`.
    #[error("streams[{0}].entries[{1}]: needs `{2}`")]
    EntryField(usize, usize, &'static str),
    /// An `entries` timestamp that does not parse.
    #[error("streams[{0}].entries[{1}]: {2}")]
    EntryTime(usize, usize, super::BadTime),
    /// A stream with neither `values` nor `entries`.
    #[error("streams[{0}]: needs `values`")]
    NoValues(usize),
}

/// Why one pushed stream's labels are refused (its entries are, the others are kept).
#[derive(Debug, thiserror::Error)]
enum BadLabels {
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

/// Decodes a Loki JSON push body. A body that is not a push at all (not JSON, no
/// `streams`, an entry that is not `[ts, line]`) is an error naming where; entries
/// that break a limit are refused one by one while the rest are kept, as Loki does.
/// Lines over the protocol's line limit are cut and flagged `truncated`.
fn decode_push(body: &[u8], policy: &PushPolicy, caller: &str) -> Result<Decoded, BadPush> {
    let v: Value = serde_json::from_slice(body)?;
    let streams = v
        .get("streams")
        .and_then(Value::as_array)
        .ok_or(BadPush::NoStreams)?;
    let now = crate::ingest::now_ns();
    let oldest = policy
        .max_age
        .map(|d| now.saturating_sub(d.as_nanos().min(i64::MAX as u128) as i64));
    let newest = now.saturating_add(policy.creation_grace.as_nanos().min(i64::MAX as u128) as i64);
    let mut out = Decoded::default();
    let mut index: HashMap<Labels, u32> = HashMap::new();
    for (si, s) in streams.iter().enumerate() {
        // The entries first: a body that is not a push is refused whole.
        let mut entries: Vec<PushEntry<'_>> = Vec::new();
        if let Some(values) = s.get("values").and_then(Value::as_array) {
            for (ei, e) in values.iter().enumerate() {
                let (ts, line) = match e.as_array().map(Vec::as_slice) {
                    Some([Value::String(ts), Value::String(line), ..]) => (ts, line),
                    _ => return Err(BadPush::ValueShape(si, ei)),
                };
                let ts: i64 = ts
                    .parse()
                    .map_err(|_| BadPush::ValueTime(si, ei, ts.clone()))?;
                entries.push((ts, line, e.get(2).and_then(Value::as_object)));
            }
        } else if let Some(list) = s.get("entries").and_then(Value::as_array) {
            for (ei, e) in list.iter().enumerate() {
                let ts = e
                    .get("ts")
                    .or_else(|| e.get("timestamp"))
                    .and_then(Value::as_str)
                    .ok_or(BadPush::EntryField(si, ei, "ts"))?;
                let ts = parse_time(ts).map_err(|m| BadPush::EntryTime(si, ei, m))?;
                let line = e
                    .get("line")
                    .and_then(Value::as_str)
                    .ok_or(BadPush::EntryField(si, ei, "line"))?;
                entries.push((ts, line, None));
            }
        } else {
            return Err(BadPush::NoValues(si));
        }
        out.total += entries.len();
        let labels = match push_labels(si, s) {
            Ok(l) => l,
            Err(why) => {
                out.refuse(Refusal::InvalidLabels, entries.len(), || why.to_string());
                continue;
            }
        };
        let mut stored = labels.clone();
        push_identity(&mut stored, caller);
        for (ts, line, meta) in entries {
            if oldest.is_some_and(|o| ts < o) {
                out.refuse(Refusal::TooOld, 1, || {
                    format!(
                        "entry for stream '{labels}' has timestamp too old: {}, oldest acceptable timestamp is: {}",
                        heimdall_api::format_ns(ts),
                        heimdall_api::format_ns(oldest.unwrap_or_default())
                    )
                });
                continue;
            }
            if ts > newest {
                out.refuse(Refusal::TooNew, 1, || {
                    format!(
                        "entry for stream '{labels}' has timestamp too new: {}, newest acceptable timestamp is: {}",
                        heimdall_api::format_ns(ts),
                        heimdall_api::format_ns(newest)
                    )
                });
                continue;
            }
            let stream = match index.get(&stored) {
                Some(i) => *i,
                None => {
                    let i = out.content.streams.len() as u32;
                    out.content.streams.push(stored.clone());
                    index.insert(stored.clone(), i);
                    i
                }
            };
            let mut flags = 0;
            let mut bytes = line.as_bytes();
            if bytes.len() > limits::MAX_LINE_BYTES {
                bytes = limits::cut_str(line, limits::MAX_LINE_BYTES).as_bytes();
                flags |= heimdall_common::record::flags::TRUNCATED;
            }
            out.content.records.push(LogRecord {
                stream,
                time_ns: ts,
                observed_ns: now,
                level: push_level(&labels, meta, line),
                template_id: u64::MAX,
                flags,
                redacted: 0,
                line: bytes::Bytes::copy_from_slice(bytes),
            });
        }
    }
    Ok(out)
}

/// The labels of `streams[si]`, checked as Loki checks them.
fn push_labels(si: usize, s: &Value) -> Result<Labels, BadLabels> {
    let labels = match (s.get("stream"), s.get("labels")) {
        (Some(Value::Object(m)), _) => {
            let mut pairs = Vec::with_capacity(m.len());
            for (k, v) in m {
                let v = v
                    .as_str()
                    .ok_or_else(|| BadLabels::NotString(si, k.clone()))?;
                pairs.push((k.clone(), v.to_owned()));
            }
            Labels::new(pairs)
        }
        (_, Some(Value::String(sel))) => {
            let q = parse::parse_log(sel).map_err(|e| BadLabels::Selector(si, e))?;
            if q.matchers.iter().any(|m| m.op != parse::MatchOp::Eq) {
                return Err(BadLabels::NotEquality(si));
            }
            Labels::new(q.matchers.into_iter().map(|m| (m.name, m.value)))
        }
        _ => return Err(BadLabels::Missing(si)),
    };
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

/// Why a push body could not be decompressed.
#[derive(Debug, thiserror::Error)]
enum Decompress {
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

/// The body under its `Content-Encoding`, as Loki takes it: `gzip`, `deflate` (zlib-wrapped
/// as HTTP defines it, or raw DEFLATE as Go's `compress/flate` clients send it), or
/// none. The decompressed body may be at most `limit` bytes (a small body must not
/// expand into gigabytes).
fn decompress<'a>(
    enc: &str,
    body: &'a [u8],
    limit: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, Decompress> {
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
        Ok(std::borrow::Cow::Owned(out))
    };
    if enc.is_empty() || enc.eq_ignore_ascii_case("identity") {
        Ok(std::borrow::Cow::Borrowed(body))
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

/// `POST /loki/api/v1/push` (JSON, uncompressed, gzip or deflate). Answers 204 after the lines are committed; 400
/// when some entries were refused (the others are stored), saying how many and why.
pub async fn push(
    State(st): State<Arc<ApiState>>,
    caller: Option<axum::Extension<super::auth::Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = caller.map_or_else(|| super::auth::ANONYMOUS.to_owned(), |c| c.0 .0);
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if !ctype.starts_with("application/json") {
        metrics::counter!("heimdall_aggregator_push_rejected_total", "reason" => "content_type")
            .increment(1);
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("push bodies of type `{ctype}` are not supported; send JSON with Content-Type: application/json"),
        ));
    }
    let enc = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    let body = match decompress(enc, &body, MAX_PUSH_BYTES) {
        Ok(b) => b,
        Err(e) => {
            let (reason, status) = match e {
                Decompress::Unsupported(_) => ("encoding", StatusCode::UNSUPPORTED_MEDIA_TYPE),
                Decompress::TooLarge(_) => ("too_large", StatusCode::PAYLOAD_TOO_LARGE),
                Decompress::Corrupt { .. } => ("invalid", StatusCode::BAD_REQUEST),
            };
            metrics::counter!("heimdall_aggregator_push_rejected_total", "reason" => reason)
                .increment(1);
            return Err(ApiError(status, e.to_string()));
        }
    };
    let decoded = match decode_push(&body, &st.push, &caller) {
        Ok(c) => c,
        Err(m) => {
            metrics::counter!("heimdall_aggregator_push_rejected_total", "reason" => "invalid")
                .increment(1);
            return Err(bad(m));
        }
    };
    let n = decoded.content.records.len();
    let cut = decoded
        .content
        .records
        .iter()
        .filter(|r| r.flags & heimdall_common::record::flags::TRUNCATED != 0)
        .count();
    let Decoded {
        content,
        total,
        refused: reasons_by_kind,
        errors,
    } = decoded;
    if n > 0 {
        st.store
            .write_unidentified(content)
            .await
            .map_err(internal)?;
    }
    metrics::counter!("heimdall_aggregator_push_lines_total").increment(n as u64);
    if cut > 0 {
        metrics::counter!("heimdall_aggregator_ingest_repairs_total", "kind" => "line_cut")
            .increment(cut as u64);
    }
    if reasons_by_kind.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let refused: usize = reasons_by_kind.values().sum();
    for (why, k) in &reasons_by_kind {
        metrics::counter!("heimdall_aggregator_push_rejected_total", "reason" => why.as_str())
            .increment(*k as u64);
    }
    let reasons: Vec<String> = reasons_by_kind
        .iter()
        .map(|(why, k)| format!("{k} {}", why.as_str().replace('_', " ")))
        .collect();
    let mut message = errors.join("\n");
    message.push_str(&format!(
        "\n{refused} of {total} entries refused ({}); the other {n} were stored",
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
        reasons: reasons_by_kind
            .iter()
            .map(|(w, k)| (w.as_str().to_owned(), *k))
            .collect(),
    }) {
        *r.body_mut() = axum::body::Body::from(b);
        r.headers_mut().remove(header::CONTENT_LENGTH);
    }
    Ok(r)
}

static TAILS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `GET /loki/api/v1/tail` (WebSocket): the lines from `start` (up to `limit`), then
/// new lines as they are stored, about once a second.
pub async fn tail(
    State(st): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let p = Params::raw(q);
    let Query::Log(lq) = p.query()? else {
        return Err(bad("tail takes a log query"));
    };
    let limit = p.limit(st.max_limit)?;
    let start = match p.get("start") {
        Some(s) => parse_time(s).map_err(bad)?,
        None => crate::ingest::now_ns() - 3_600_000_000_000,
    };
    if TAILS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= MAX_TAILS {
        TAILS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!("at most {MAX_TAILS} tails may run at once"),
        ));
    }
    metrics::gauge!("heimdall_aggregator_tails")
        .set(TAILS.load(std::sync::atomic::Ordering::SeqCst) as f64);
    Ok(ws.on_upgrade(move |socket| async move {
        if let Err(e) = tail_loop(st, socket, lq, start, limit).await {
            tracing::debug!(error = %e, "tail ended");
        }
        TAILS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        metrics::gauge!("heimdall_aggregator_tails")
            .set(TAILS.load(std::sync::atomic::Ordering::SeqCst) as f64);
    }))
}

/// Most lines one tail message carries.
const TAIL_BATCH: usize = 1000;

async fn tail_loop(
    st: Arc<ApiState>,
    mut socket: WebSocket,
    lq: LogQuery,
    start: i64,
    limit: usize,
) -> Result<(), TailEnd> {
    // The newest row id first, then history: a line stored in between may come twice,
    // none is missed.
    let q = lq.clone();
    let (mut last_id, history) = on_source(&st, move |src, _| {
        let last = heimdall_store::hot::max_row_id(src.hot)?;
        let req = LogRequest {
            start_ns: start,
            end_ns: i64::MAX,
            limit,
            max_bytes: MAX_RESULT_BYTES,
            backward: true,
            deadline: None,
        };
        Ok((last, exec::run_log_query(src, &q, &req)?))
    })
    .await
    .map_err(|e| TailEnd::Query(e.1))?;
    let mut history = history;
    for (_, e) in &mut history.streams {
        e.reverse();
    }
    send_tail(&mut socket, streams_of(&history)).await?;
    let pipeline = Pipeline::new(&lq);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(_)) => continue,
            },
            _ = tick.tick() => {}
        }
        let matchers = lq.matchers.clone();
        let pl = pipeline.clone();
        let after = last_id;
        let (next, groups) = on_source(&st, move |src, _| {
            let streams = src.streams(&matchers)?;
            let labels: HashMap<i64, Labels> = streams.into_iter().collect();
            let ids: Vec<i64> = labels.keys().copied().collect();
            let rows = heimdall_store::hot::rows_after(src.hot, &ids, after, TAIL_BATCH)?;
            let mut next = after;
            let mut groups: BTreeMap<Labels, Vec<exec::Entry>> = BTreeMap::new();
            for (id, r) in rows {
                next = next.max(id);
                let stream = &labels[&r.stream_id];
                if let Some(out) = pl.process(stream, r.level, r.flags, &r.line) {
                    let l = out.labels.unwrap_or_else(|| {
                        heimdall_query::pipeline::base_labels(stream, r.level, r.flags)
                    });
                    groups.entry(l).or_default().push(exec::Entry {
                        ts: r.ts,
                        line: out.line.into_owned(),
                    });
                }
            }
            Ok((next, groups))
        })
        .await
        .map_err(|e| TailEnd::Query(e.1))?;
        last_id = next;
        if !groups.is_empty() {
            let res = LogResult {
                streams: groups.into_iter().collect(),
                ..Default::default()
            };
            send_tail(&mut socket, streams_of(&res)).await?;
        }
    }
}

/// Why a tail ended early.
#[derive(Debug, thiserror::Error)]
enum TailEnd {
    /// Reading the next lines failed.
    #[error("query failed: {0}")]
    Query(String),
    /// The client went away or the socket failed.
    #[error("websocket: {0}")]
    Socket(#[from] axum::Error),
}

async fn send_tail(socket: &mut WebSocket, streams: Vec<Stream>) -> Result<(), TailEnd> {
    if streams.is_empty() {
        return Ok(());
    }
    let msg = serde_json::to_string(&TailMessage {
        streams,
        dropped_entries: None,
    })
    .expect("plain data serialises");
    Ok(socket.send(Message::Text(msg.into())).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn params_keep_repeated_keys_and_decode() {
        let p = Params::parse("match%5B%5D=%7Ba%3D%22b%22%7D&match[]={c=\"d\"}&q=a+b&e=");
        assert_eq!(
            p.all("match[]").collect::<Vec<_>>(),
            vec!["{a=\"b\"}", "{c=\"d\"}"]
        );
        assert_eq!(p.get("q"), Some("a b"));
        assert_eq!(p.get("e"), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn values_are_formatted_as_prometheus_does() {
        assert_eq!(format_value(2.0), "2");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
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
        let c = decode_push(
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
            let e = decode_push(body.as_bytes(), &any_age(), "push")
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
            let d = decode_push(body.as_bytes(), &any_age(), "push").unwrap();
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
        let d = decode_push(
            br#"{"streams":[{"stream":{"agent":"web1","app":"x"},"values":[["1700000000000000000","forged"]]}]}"#,
            &any_age(),
            "ci-token",
        )
        .unwrap();
        let l = &d.content.streams[0];
        assert_eq!(l.get("agent"), Some("ci-token"));
        assert_eq!(l.get("exported_agent"), Some("web1"));
        let mut both = Labels::new([("agent", "a"), ("exported_agent", "b")]);
        push_identity(&mut both, "push");
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
        let d = decode_push(body.as_bytes(), &PushPolicy::default(), "push").unwrap();
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
        let d = decode_push(&body, &any_age(), "push").unwrap();
        let r = &d.content.records[0];
        assert!(r.line.len() <= limits::MAX_LINE_BYTES);
        assert!(std::str::from_utf8(&r.line).is_ok());
        assert_eq!(r.flags, heimdall_common::record::flags::TRUNCATED);
    }
}
