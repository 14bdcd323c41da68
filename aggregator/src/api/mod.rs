//! The HTTP API: the Loki endpoints Grafana and the `heimdall` CLI use, native endpoints
//! for agents and health, and `/metrics`.
//!
//! Owns request parsing and response shapes; queries run on a blocking thread with a
//! read-only SQLite connection and a deadline.

use crate::ingest::Registry;
use crate::query::exec::{self, LogRequest};
use crate::query::parse::{self, Query};
use crate::store::hot;
use axum::extract::{Path as AxPath, Query as AxQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most line bytes one log query returns; beyond, the result is cut and marked partial.
const MAX_RESULT_BYTES: usize = 64 << 20;

/// Shared state of the API.
pub struct ApiState {
    pub db_path: PathBuf,
    pub registry: Arc<Registry>,
    pub prometheus: Option<PrometheusHandle>,
    pub max_limit: usize,
    pub query_timeout: Duration,
}

/// The router.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/loki/api/v1/query_range", get(query_range))
        .route("/loki/api/v1/labels", get(labels))
        .route("/loki/api/v1/label/{name}/values", get(label_values))
        .route("/loki/api/v1/patterns", get(patterns))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/anomalies", get(anomalies))
        .route("/api/v1/aggregates", get(aggregates))
        .route("/metrics", get(metrics_text))
        .route("/ready", get(|| async { "ready\n" }))
        .with_state(state)
}

/// An API error: HTTP status and a JSON body with a `message`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"status": "error", "errorType": if self.0 == StatusCode::BAD_REQUEST { "bad_data" } else { "internal" }, "message": self.1, "error": self.1});
        (self.0, Json(body)).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn internal(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg.to_string())
}

/// Parses a Loki timestamp: RFC 3339, float seconds, integer seconds (≤ 10 digits) or
/// integer nanoseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        let digits = s.trim_start_matches('-').len();
        return Ok(if digits <= 10 {
            n.saturating_mul(1_000_000_000)
        } else {
            n
        });
    }
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            return Ok((f * 1e9) as i64);
        }
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp_nanos() as i64)
        .map_err(|_| {
            format!("`{s}` is not a timestamp (use RFC 3339, Unix seconds or nanoseconds)")
        })
}

#[derive(Deserialize)]
struct RangeParams {
    query: Option<String>,
    start: Option<String>,
    end: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
    direction: Option<String>,
}

fn range(
    start: &Option<String>,
    end: &Option<String>,
    since: &Option<String>,
) -> Result<(i64, i64), ApiError> {
    let now = crate::ingest::now_ns();
    let end = match end {
        Some(e) => parse_time(e).map_err(bad)?,
        None => now,
    };
    let start = match (start, since) {
        (Some(s), _) => parse_time(s).map_err(bad)?,
        (None, Some(d)) => {
            let d = heimdall_common::config::parse_duration(d)
                .map_err(|e| bad(format!("since: {e}")))?;
            i64::try_from(d.as_nanos())
                .ok()
                .and_then(|d| end.checked_sub(d))
                .ok_or_else(|| bad("since: duration out of range"))?
        }
        (None, None) => end.saturating_sub(3_600_000_000_000),
    };
    if start > end {
        return Err(bad("start must not be after end"));
    }
    Ok((start, end))
}

async fn query_range(
    State(st): State<Arc<ApiState>>,
    AxQuery(p): AxQuery<RangeParams>,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let q = p
        .query
        .as_deref()
        .ok_or_else(|| bad("missing `query` parameter"))?;
    let Query::Log(lq) = parse::parse(q).map_err(|e| bad(e.to_string()))?;
    let (start, end) = range(&p.start, &p.end, &p.since)?;
    let limit = p.limit.unwrap_or(100).clamp(1, st.max_limit);
    let backward = match p.direction.as_deref() {
        None | Some("backward") | Some("BACKWARD") => true,
        Some("forward") | Some("FORWARD") => false,
        Some(other) => {
            return Err(bad(format!(
                "direction `{other}`: expected `forward` or `backward`"
            )))
        }
    };
    let req = LogRequest {
        start_ns: start,
        // Loki's end is inclusive for the newest line; make it so.
        end_ns: end.saturating_add(1),
        limit,
        max_bytes: MAX_RESULT_BYTES,
        backward,
        deadline: Some(Instant::now() + st.query_timeout),
    };
    let res = on_reader(&st, move |c| exec::run_log_query(c, &lq, &req)).await?;
    let secs = started.elapsed().as_secs_f64();
    metrics::histogram!("heimdall_aggregator_query_seconds", "kind" => "log").record(secs);
    let result: Vec<Value> = res
        .streams
        .iter()
        .map(|(labels, entries)| {
            let stream: BTreeMap<&str, &str> = labels.iter().collect();
            let values: Vec<Value> = entries
                .iter()
                .map(|e| json!([e.ts.to_string(), String::from_utf8_lossy(&e.line)]))
                .collect();
            json!({"stream": stream, "values": values})
        })
        .collect();
    Ok(Json(json!({
        "status": "success",
        "data": {
            "resultType": "streams",
            "result": result,
            "stats": {
                "summary": {"execTime": secs, "totalLinesProcessed": res.lines, "partial": res.partial}
            }
        }
    })))
}

#[derive(Deserialize)]
struct LabelParams {
    start: Option<String>,
    end: Option<String>,
    since: Option<String>,
}

async fn stream_labels(st: &ApiState) -> Result<Vec<heimdall_common::record::Labels>, ApiError> {
    on_reader(st, |c| {
        hot::load_streams(c).map(|v| v.into_iter().map(|(_, l)| l).collect())
    })
    .await
}

async fn labels(
    State(st): State<Arc<ApiState>>,
    AxQuery(p): AxQuery<LabelParams>,
) -> Result<Json<Value>, ApiError> {
    range(&p.start, &p.end, &p.since)?;
    let names: BTreeSet<String> = stream_labels(&st)
        .await?
        .iter()
        .flat_map(|l| l.iter().map(|(k, _)| k.to_owned()).collect::<Vec<_>>())
        .collect();
    Ok(Json(json!({"status": "success", "data": names})))
}

async fn label_values(
    State(st): State<Arc<ApiState>>,
    AxPath(name): AxPath<String>,
    AxQuery(p): AxQuery<LabelParams>,
) -> Result<Json<Value>, ApiError> {
    range(&p.start, &p.end, &p.since)?;
    let values: BTreeSet<String> = stream_labels(&st)
        .await?
        .iter()
        .filter_map(|l| l.get(&name).map(str::to_owned))
        .collect();
    Ok(Json(json!({"status": "success", "data": values})))
}

/// Parses a Loki step: a duration (`15000ms`, `1m`) or seconds (`15`, `0.5`).
fn parse_step(s: Option<&str>, start: i64, end: i64) -> Result<i64, ApiError> {
    let step = match s {
        None => {
            // Loki's default: about 250 points over the range, at least a second.
            ((end - start) / 250).max(1_000_000_000)
        }
        Some(s) => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => (f * 1e9) as i64,
            Ok(_) => return Err(bad("step must be positive")),
            Err(_) => {
                let d = heimdall_common::config::parse_duration(s)
                    .map_err(|e| bad(format!("step: {e}")))?;
                i64::try_from(d.as_nanos()).map_err(|_| bad("step is too large"))?
            }
        },
    };
    if step <= 0 {
        return Err(bad("step must be positive"));
    }
    if (end - start) / step > 11_000 {
        return Err(bad(
            "exceeded maximum resolution of 11,000 points per time series; increase step",
        ));
    }
    Ok(step)
}

/// The matchers of a query that must be a bare stream selector.
fn selector(q: Option<&str>) -> Result<Vec<parse::Matcher>, ApiError> {
    let Some(q) = q.filter(|q| !q.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let Query::Log(lq) = parse::parse(q).map_err(|e| bad(e.to_string()))?;
    if !lq.filters.is_empty() {
        return Err(bad(
            "this endpoint takes a stream selector without line filters",
        ));
    }
    Ok(lq.matchers)
}

/// Runs `f` on a blocking thread with a read-only connection to the hot store.
async fn on_reader<T: Send + 'static>(
    st: &ApiState,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, rusqlite::Error> + Send + 'static,
) -> Result<T, ApiError> {
    let path = st.db_path.clone();
    tokio::task::spawn_blocking(move || -> Result<T, String> {
        let conn = hot::open_reader(&path).map_err(|e| e.to_string())?;
        f(&conn).map_err(|e| e.to_string())
    })
    .await
    .map_err(internal)?
    .map_err(internal)
}

#[derive(Deserialize)]
struct IntelParams {
    query: Option<String>,
    start: Option<String>,
    end: Option<String>,
    since: Option<String>,
    step: Option<String>,
    limit: Option<usize>,
    by: Option<String>,
    measure: Option<String>,
    kind: Option<String>,
    min_score: Option<f64>,
}

impl IntelParams {
    /// The required selector, the range and the step.
    fn selector_range_step(&self) -> Result<(Vec<parse::Matcher>, i64, i64, i64), ApiError> {
        let matchers = selector(Some(
            self.query
                .as_deref()
                .ok_or_else(|| bad("missing `query` parameter"))?,
        ))?;
        let (start, end) = range(&self.start, &self.end, &self.since)?;
        let step = parse_step(self.step.as_deref(), start, end)?;
        Ok((matchers, start, end, step))
    }
}

/// Top templates over a selector and range, with counts per step (Loki's `patterns`
/// endpoint; the counts are exact, from the agents' pre-aggregates).
async fn patterns(
    State(st): State<Arc<ApiState>>,
    AxQuery(p): AxQuery<IntelParams>,
) -> Result<Json<Value>, ApiError> {
    let (matchers, start, end, step) = p.selector_range_step()?;
    let limit = p.limit.unwrap_or(50).clamp(1, 10_000);
    let pats = on_reader(&st, move |c| {
        crate::query::intel::patterns(c, &matchers, start, end.saturating_add(1), step, limit)
    })
    .await?;
    let data: Vec<Value> = pats
        .iter()
        .map(|p| {
            json!({
                "pattern": p.text,
                "template_id": format!("{:016x}", p.template_id),
                "total": p.total,
                "samples": p.samples.iter().map(|(t, c)| json!([t / 1_000_000_000, c])).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({"status": "success", "data": data})))
}

/// Exact counts per step from the agents' pre-aggregates, as a Loki matrix: what
/// `count_over_time` (or `bytes_over_time`) gives, also for streams shipped as
/// aggregates only or sampled.
async fn aggregates(
    State(st): State<Arc<ApiState>>,
    AxQuery(p): AxQuery<IntelParams>,
) -> Result<Json<Value>, ApiError> {
    use crate::query::intel::Measure;
    let (matchers, start, end, step) = p.selector_range_step()?;
    let measure = match p.measure.as_deref() {
        None | Some("count") => Measure::Count,
        Some("bytes") => Measure::Bytes,
        Some("shipped") => Measure::Shipped,
        Some(other) => {
            return Err(bad(format!(
                "measure `{other}`: expected `count`, `bytes` or `shipped`"
            )))
        }
    };
    let by: Option<Vec<String>> = p.by.as_deref().map(|b| {
        b.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    });
    let series = on_reader(&st, move |c| {
        crate::query::intel::counts(
            c,
            &matchers,
            start,
            end.saturating_add(1),
            step,
            by.as_deref(),
            measure,
        )
    })
    .await?;
    let result: Vec<Value> = series
        .iter()
        .map(|(m, v)| {
            json!({
                "metric": m,
                "values": v.iter().map(|(t, c)| json!([*t as f64 / 1e9, c.to_string()])).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({
        "status": "success",
        "data": {"resultType": "matrix", "result": result}
    })))
}

/// Anomaly events the agents detected, newest first.
async fn anomalies(
    State(st): State<Arc<ApiState>>,
    AxQuery(p): AxQuery<IntelParams>,
) -> Result<Json<Value>, ApiError> {
    let matchers = selector(p.query.as_deref())?;
    let (start, end) = range(&p.start, &p.end, &p.since)?;
    if let Some(k) = p.kind.as_deref() {
        if heimdall_common::record::AnomalyKind::parse(k).is_none() {
            return Err(bad(format!(
                "kind `{k}`: expected rate_spike, rate_drop, new_templates, error_ratio or silence"
            )));
        }
    }
    let limit = p.limit.unwrap_or(100).clamp(1, 10_000);
    let kind = p.kind.clone();
    let min_score = p.min_score.unwrap_or(0.0);
    let rows = on_reader(&st, move |c| {
        crate::query::intel::anomalies(
            c,
            &matchers,
            start,
            end.saturating_add(1),
            kind.as_deref(),
            min_score,
            limit,
        )
    })
    .await?;
    Ok(Json(json!({"status": "success", "data": rows})))
}

async fn agents(State(st): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!({"status": "success", "data": st.registry.list()}))
}

async fn metrics_text(State(st): State<Arc<ApiState>>) -> Response {
    match &st.prometheus {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loki_timestamps() {
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000_000_000_000);
        assert_eq!(
            parse_time("1700000000000000000").unwrap(),
            1_700_000_000_000_000_000
        );
        assert_eq!(
            parse_time("1700000000.5").unwrap(),
            1_700_000_000_500_000_000
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000_000_000
        );
        assert!(parse_time("yesterday").is_err());
    }
}
