//! The Loki HTTP API, in the shapes Grafana's Loki datasource and Loki clients expect:
//! `query` (instant), `query_range`, `labels`, `label/<name>/values`, `series`,
//! `index/stats`, `tail` (WebSocket) and `status/buildinfo`; pushes are in
//! [`super::push`].
//!
//! Parameters come from the query string or, for POST, a form body; repeated keys
//! (`match[]`) are kept. Results carry Loki's `stats` object.

use super::{bad, on_source, parse_step, parse_time, range, ApiError, ApiState};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as AxPath, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use heimdall_api::loki::{
    BuildInfo, EntryLabels, IndexStats, LabelSet, LogEntry, MatrixSeries, QueryData, QueryResult,
    Stream, TailMessage, VectorSample, CATEGORIZE_LABELS,
};
use heimdall_api::{format_value, Envelope};
use heimdall_common::record::Labels;
use heimdall_logql::{self as parse, LogQuery, Query};
use heimdall_query::eval::{self, EvalRequest, Value as EvalValue};
use heimdall_query::exec::ScanCounts;
use heimdall_query::exec::{self, LogRequest, LogResult};
use heimdall_query::pipeline::Pipeline;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most line bytes one log query returns; beyond, the result is cut and marked partial.
const MAX_RESULT_BYTES: usize = 64 << 20;
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

    pub(super) fn raw(q: Option<String>) -> Params {
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

    pub(super) fn owned(&self, k: &str) -> Option<String> {
        self.get(k).map(str::to_owned)
    }

    /// Every value of `k`.
    pub fn all<'a>(&'a self, k: &'a str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn usize(&self, k: &str) -> Result<Option<usize>, ApiError> {
        self.get(k)
            .map(|v| {
                v.parse()
                    .map_err(|_| bad(format!("{k}: `{v}` is not a non-negative integer")))
            })
            .transpose()
    }

    /// `limit` (default 100): over `max` is an error, as in Loki, not a silent clamp.
    pub(super) fn limit(&self, max: usize) -> Result<usize, ApiError> {
        match self.usize("limit")?.unwrap_or(100) {
            0 => Err(bad("limit must be a positive value")),
            n if n > max => Err(bad(format!(
                "max entries limit per query exceeded, limit > max_entries_limit_per_query ({n} > {max})"
            ))),
            n => Ok(n),
        }
    }

    pub(super) fn query(&self) -> Result<Query, ApiError> {
        let q = self
            .get("query")
            .ok_or_else(|| bad("missing `query` parameter"))?;
        parse::parse(q).map_err(|e| bad(e.to_string()))
    }

    pub(super) fn range(&self) -> Result<(i64, i64), ApiError> {
        range(
            &self.owned("start"),
            &self.owned("end"),
            &self.owned("since"),
        )
    }

    pub(super) fn backward(&self) -> Result<bool, ApiError> {
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
pub(super) fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

pub(super) fn label_set(l: &Labels) -> LabelSet {
    l.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Loki's `stats` object, from what the query's scans read (`scan`), with Heimdall's
/// own account of it under `heimdall`: segments and row groups read and pruned by the
/// needle filters, hot sections read and pruned. A segment or hot section is what
/// Loki calls a chunk.
pub(super) fn stats_json(started: Instant, scan: &ScanCounts, returned: usize) -> Value {
    let (lines, bytes) = (scan.lines, scan.bytes);
    let chunks_read = scan.segments_read + scan.hot_sections_read;
    let chunks_ref = chunks_read + scan.segments_pruned + scan.hot_sections_pruned;
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
            "totalChunksRef": chunks_ref, "totalChunksDownloaded": chunks_read, "chunksDownloadTime": 0,
            "queryReferencedStructuredMetadata": false, "chunk": chunk
        }},
        "ingester": {
            "totalReached": 0, "totalChunksMatched": 0, "totalBatches": 0, "totalLinesSent": 0,
            "store": {"totalChunksRef": 0, "totalChunksDownloaded": 0, "chunksDownloadTime": 0,
                      "queryReferencedStructuredMetadata": false, "chunk": {}}
        },
        "heimdall": scan
    })
}

fn streams_of(res: &LogResult, categorized: bool) -> Vec<Stream> {
    res.streams
        .iter()
        .map(|(labels, entries)| Stream {
            stream: label_set(labels),
            values: entries
                .iter()
                .map(|e| LogEntry {
                    ts: e.ts.to_string(),
                    line: String::from_utf8_lossy(&e.line).into_owned(),
                    // Categorized entries are always triples, `{}` when there is nothing.
                    labels: categorized.then(|| EntryLabels {
                        structured_metadata: label_set(&e.structured),
                        parsed: label_set(&e.parsed),
                    }),
                })
                .collect(),
        })
        .collect()
}

fn success(result: QueryResult, stats: Value) -> Json<Envelope<QueryData>> {
    Json(Envelope::ok(QueryData {
        result,
        stats,
        encoding_flags: Vec::new(),
    }))
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
    Ok(success(result, stats_json(started, &stats.scan, n)))
}

/// Whether the client asked for Loki 3's `categorize-labels` encoding (Grafana does).
fn categorize(headers: &HeaderMap) -> bool {
    headers
        .get_all("x-loki-response-encoding-flags")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == CATEGORIZE_LABELS)
}

async fn ranged(
    st: Arc<ApiState>,
    p: Params,
    categorize: bool,
) -> Result<Json<Envelope<QueryData>>, ApiError> {
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
                categorize,
            };
            let res = on_source(&st, move |src, _| exec::run_log_query(src, &lq, &req)).await?;
            metrics::histogram!("heimdall_aggregator_query_seconds", "kind" => "log")
                .record(started.elapsed().as_secs_f64());
            let mut stats = stats_json(started, &res.scan, res.lines);
            stats["summary"]["partial"] = json!(res.partial);
            let mut data = QueryData {
                result: QueryResult::Streams(streams_of(&res, categorize)),
                stats,
                encoding_flags: Vec::new(),
            };
            if categorize {
                data.encoding_flags.push(CATEGORIZE_LABELS.to_owned());
            }
            Ok(Json(Envelope::ok(data)))
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
                stats_json(started, &stats.scan, points),
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
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Json<Envelope<QueryData>>, ApiError> {
    ranged(st, Params::raw(q), categorize(&headers)).await
}

/// `POST /loki/api/v1/query_range` (form body).
pub async fn query_range_form(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: String,
) -> Result<Json<Envelope<QueryData>>, ApiError> {
    ranged(st, Params::parse(&body), categorize(&headers)).await
}

/// Streams with lines in the range matching any of `selectors` (all streams with lines
/// in the range when there are none).
pub(super) async fn streams_matching(
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
    if name == "detected_level" {
        // Loki keeps it as structured metadata and answers nothing here; the levels the
        // lines have are what a user filtering by level wants.
        let levels = super::drilldown::detected_levels(&st, &p).await?;
        return Ok(Json(Envelope::ok(levels)));
    }
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
        // The Loki API level Heimdall follows (see LOKI_API_VERSION); Heimdall's own
        // version is in `application`.
        version: super::drilldown::LOKI_API_VERSION.into(),
        application: format!("heimdall {}", env!("CARGO_PKG_VERSION")),
        ..BuildInfo::default()
    })
}

static TAILS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `GET /loki/api/v1/tail` (WebSocket): the lines from `start` (up to `limit`), then
/// new lines as they are stored, about once a second.
pub async fn tail(
    State(st): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // A browser that sent its token as a subprotocol needs it chosen in the answer.
    let ws = match super::auth::ws_bearer(&headers) {
        Some((_, proto)) => ws.protocols([proto]),
        None => ws,
    };
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
            categorize: false,
        };
        Ok((last, exec::run_log_query(src, &q, &req)?))
    })
    .await
    .map_err(|e| TailEnd::Query(e.1))?;
    let mut history = history;
    for (_, e) in &mut history.streams {
        e.reverse();
    }
    send_tail(&mut socket, streams_of(&history, false)).await?;
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
                if let Some(out) = pl.process(stream, &r.metadata, r.level, r.flags, &r.line) {
                    let l = out.labels.unwrap_or_else(|| {
                        heimdall_query::pipeline::base_labels(stream, &r.metadata, r.level, r.flags)
                    });
                    groups.entry(l).or_default().push(exec::Entry {
                        ts: r.ts,
                        line: out.line.into_owned(),
                        ..exec::Entry::default()
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
            send_tail(&mut socket, streams_of(&res, false)).await?;
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
}
