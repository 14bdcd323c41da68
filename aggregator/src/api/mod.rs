//! The HTTP API: the Loki endpoints Grafana and the `heimdall` CLI use (see [`loki`]),
//! what Logs Drilldown asks besides queries ([`drilldown`]), pushes from Loki clients
//! ([`push`]) and OTLP exporters ([`otlp`], on its own listener too), native endpoints
//! for agents, edge intelligence and health, and `/metrics`.
//!
//! Owns request parsing, response shapes and access control ([`auth`]); queries run on
//! a blocking thread with read-only SQLite connections and a deadline, and stop when
//! the client goes away (the request future is dropped, which cancels the query).

pub mod admin;
pub mod alerts;
pub mod auth;
pub mod drilldown;
pub mod errors;
pub mod loki;
pub mod otlp;
pub mod proto;
pub mod push;
pub mod tls;

use crate::ingest::Registry;
use axum::extract::{Query as AxQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use heimdall_api::{loki as lokiapi, model, Envelope};
use heimdall_logql::{self as parse, Query};
use heimdall_store::hot::{self, HotStore};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Shared state of the API.
pub struct ApiState {
    pub db_path: PathBuf,
    /// Query connections to the hot database, kept between queries.
    pub readers: Arc<hot::ReaderPool>,
    pub registry: Arc<Registry>,
    pub prometheus: Option<PrometheusHandle>,
    pub max_limit: usize,
    pub query_timeout: Duration,
    /// Where pushed lines are written.
    pub store: Arc<HotStore>,
    /// The segment tiers queries read.
    pub tiers: Arc<heimdall_store::read::Tiers>,
    /// Runs the lifecycle's steps now (`/api/v1/admin/compact`, erasures that wait).
    pub lifecycle: heimdall_store::lifecycle::LifecycleHandle,
    /// API tokens; empty means the API is open (the local default).
    pub tokens: Vec<auth::Token>,
    /// Bounds on metric queries.
    pub eval_limits: heimdall_query::eval::Limits,
    /// The alert engine, when running.
    pub alerting: Option<Arc<alerts::AlertApi>>,
    /// Truncate metric `query_range` start and end to multiples of the step.
    pub align_queries_with_step: bool,
    /// What pushed entries may hold.
    pub push: push::PushPolicy,
    /// How OTLP resources map to labels.
    pub otlp: otlp::OtlpMapping,
    /// How long data is kept (`None`: forever), as `drilldown-limits` reports it.
    pub retention: Option<Duration>,
    /// The ingest memory budget (`ingest.max_memory`, in KiB) pushes share with the
    /// agents' batches.
    pub memory: (Arc<tokio::sync::Semaphore>, u32),
}

/// The router.
pub fn router(state: Arc<ApiState>) -> Router {
    let api = Router::new()
        .route(
            "/loki/api/v1/query",
            get(loki::query).post(loki::query_form),
        )
        .route(
            "/loki/api/v1/query_range",
            get(loki::query_range).post(loki::query_range_form),
        )
        .route("/loki/api/v1/labels", get(loki::labels))
        .route("/loki/api/v1/label/{name}/values", get(loki::label_values))
        .route(
            "/loki/api/v1/series",
            get(loki::series).post(loki::series_form),
        )
        .route("/loki/api/v1/index/stats", get(loki::index_stats))
        .route(
            "/loki/api/v1/index/volume",
            get(drilldown::volume).post(drilldown::volume),
        )
        .route(
            "/loki/api/v1/index/volume_range",
            get(drilldown::volume_range).post(drilldown::volume_range),
        )
        .route(
            "/loki/api/v1/detected_labels",
            get(drilldown::detected_labels).post(drilldown::detected_labels),
        )
        .route(
            "/loki/api/v1/detected_fields",
            get(drilldown::detected_fields).post(drilldown::detected_fields),
        )
        .route(
            "/loki/api/v1/detected_field/{name}/values",
            get(drilldown::detected_field_values).post(drilldown::detected_field_values),
        )
        .route("/loki/api/v1/drilldown-limits", get(drilldown::limits))
        .route(
            "/loki/api/v1/format_query",
            get(drilldown::format_query).post(drilldown::format_query),
        )
        .route(
            "/loki/api/v1/push",
            post(push::loki_push).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                push::within_budget,
            )),
        )
        .route(
            "/otlp/v1/logs",
            post(otlp::logs).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                push::within_budget,
            )),
        )
        .route("/loki/api/v1/tail", get(loki::tail))
        .route("/loki/api/v1/status/buildinfo", get(loki::buildinfo))
        .route("/loki/api/v1/patterns", get(patterns))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/anomalies", get(anomalies))
        .route("/api/v1/aggregates", get(aggregates))
        .route("/api/v1/rules", get(alerts::rules))
        .route("/api/v1/rules/reload", post(alerts::reload))
        .route("/api/v1/alerts", get(alerts::alerts))
        .route(
            "/api/v1/silences",
            get(alerts::silences).post(alerts::add_silence),
        )
        .route(
            "/api/v1/silences/{id}",
            axum::routing::delete(alerts::expire_silence),
        )
        .route("/api/v1/incidents", get(alerts::incidents))
        .route("/api/v1/incidents/{id}", get(alerts::incident))
        .route("/api/v1/incidents/{id}/ack", post(alerts::ack))
        .route("/api/v1/incidents/{id}/resolve", post(alerts::resolve))
        .route("/api/v1/admin/compact", post(admin::compact))
        .route("/api/v1/admin/erase", post(admin::erase))
        .route("/api/v1/admin/erasures", get(admin::erasures))
        .route("/api/v1/admin/segments", get(admin::segments))
        .route("/api/v1/storage", get(admin::storage))
        .layer(axum::extract::DefaultBodyLimit::max(push::MAX_PUSH_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ));
    Router::new()
        .merge(api)
        .merge(crate::console::router())
        .route("/metrics", get(metrics_text))
        .route("/ready", get(|| async { "ready\n" }))
        .fallback(errors::not_found)
        .layer(axum::middleware::from_fn(errors::layer))
        .with_state(state)
}

/// The OTLP listener's router: `POST /v1/logs` (and `/otlp/v1/logs`), with the API's
/// tokens.
pub fn otlp_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/logs", post(otlp::logs))
        .route("/otlp/v1/logs", post(otlp::logs))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            push::within_budget,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(push::MAX_PUSH_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .fallback(errors::not_found)
        .layer(axum::middleware::from_fn(errors::layer))
        .with_state(state)
}

/// `GET /api/v1/whoami`: the caller's token name and role (the console shows write
/// actions only to roles that may take them).
async fn whoami(
    State(st): State<Arc<ApiState>>,
    caller: Option<axum::Extension<auth::Caller>>,
    role: Option<axum::Extension<auth::Role>>,
) -> Json<Envelope<Value>> {
    Json(Envelope::ok(serde_json::json!({
        "name": caller.map_or_else(|| auth::ANONYMOUS.to_owned(), |c| c.0 .0),
        "role": role.map_or(auth::Role::Read, |r| r.0).as_str(),
        "tokens": !st.tokens.is_empty(),
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

/// An API error: HTTP status and a JSON body with a `message`.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        errors::json_error(self.0, &self.1)
    }
}

impl From<heimdall_query::exec::Error> for ApiError {
    fn from(e: heimdall_query::exec::Error) -> ApiError {
        use heimdall_query::exec::Error as E;
        let status = match &e {
            E::Limit(_) | E::Eval(_) => StatusCode::BAD_REQUEST,
            E::Timeout => StatusCode::GATEWAY_TIMEOUT,
            // Nobody reads this answer: the client is gone.
            E::Cancelled => StatusCode::REQUEST_TIMEOUT,
            E::Sqlite(_) | E::Segment(_) | E::Cold(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

pub(crate) fn bad(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.to_string())
}

pub(crate) fn internal(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg.to_string())
}

/// A parameter that is not a timestamp.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a timestamp (use RFC 3339, Unix seconds or nanoseconds)")]
pub struct BadTime(String);

/// Parses a Loki timestamp: RFC 3339, float seconds, integer seconds (≤ 10 digits) or
/// integer nanoseconds.
///
/// # Errors
/// [`BadTime`] naming the value.
pub fn parse_time(s: &str) -> Result<i64, BadTime> {
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
        .map_err(|_| BadTime(s.to_owned()))
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
    let Query::Log(lq) = parse::parse(q).map_err(|e| bad(e.to_string()))? else {
        return Err(bad(
            "this endpoint takes a stream selector, not a metric query",
        ));
    };
    if !lq.stages.is_empty() {
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
    on_source(st, move |src, _| f(src.hot).map_err(Into::into)).await
}

/// Runs a query on a blocking thread over a [`Source`](heimdall_query::exec::Source).
/// The closure gets a flag that turns true when the client has gone away (the
/// request future was dropped); long scans check it through their deadline.
async fn on_source<T: Send + 'static>(
    st: &ApiState,
    f: impl FnOnce(
            &heimdall_query::exec::Source<'_>,
            &AtomicBool,
        ) -> Result<T, heimdall_query::exec::Error>
        + Send
        + 'static,
) -> Result<T, ApiError> {
    let readers = st.readers.clone();
    let tiers = st.tiers.clone();
    let gone = Arc::new(AtomicBool::new(false));
    // Dropped with the request: marks the query abandoned.
    struct Abandon(Arc<AtomicBool>);
    impl Drop for Abandon {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let guard = Abandon(gone.clone());
    let res = tokio::task::spawn_blocking(move || -> Result<T, ApiError> {
        let conn = readers.get().map_err(internal)?;
        // One read transaction: the query sees one state of the catalog and the hot
        // partitions, whatever the lifecycle commits meanwhile.
        conn.execute_batch("BEGIN").map_err(internal)?;
        let res = {
            let src = heimdall_query::exec::Source::hot(&conn)
                .with_tiers(&tiers)
                .with_cancel(&gone);
            f(&src, &gone).map_err(ApiError::from)
        };
        let _ = conn.execute_batch("COMMIT");
        readers.put(conn);
        res
    })
    .await
    .map_err(internal)?;
    drop(guard);
    res
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
) -> Result<Json<Envelope<Vec<lokiapi::Pattern>>>, ApiError> {
    let (matchers, start, end, step) = p.selector_range_step()?;
    // As Loki: counts kept at 10 s resolution, so no step below it.
    let step = step.max(10_000_000_000);
    let limit = p.limit.unwrap_or(500).clamp(1, 10_000);
    let pats = on_reader(&st, move |c| {
        heimdall_store::intel::patterns(c, &matchers, start, end.saturating_add(1), step, limit)
    })
    .await?;
    let data = pats
        .into_iter()
        .map(|p| lokiapi::Pattern {
            pattern: p.text.replace("<*>", "<_>"),
            level: p.level.as_str().to_owned(),
            template_id: format!("{:016x}", p.template_id),
            total: p.total,
            // Every step between the first and the last sample, zeros included, as
            // Loki answers.
            samples: match (p.samples.first(), p.samples.last()) {
                (Some(first), Some(last)) => {
                    let have: std::collections::HashMap<i64, u64> =
                        p.samples.iter().copied().collect();
                    (0..)
                        .map(|i| first.0 + i * step)
                        .take_while(|t| *t <= last.0)
                        .map(|t| (t / 1_000_000_000, have.get(&t).copied().unwrap_or(0)))
                        .collect()
                }
                _ => Vec::new(),
            },
        })
        .collect();
    Ok(Json(Envelope::ok(data)))
}

/// Exact counts per step from the agents' pre-aggregates, as a Loki matrix: what
/// `count_over_time` (or `bytes_over_time`) gives, also for streams shipped as
/// aggregates only or sampled.
async fn aggregates(
    State(st): State<Arc<ApiState>>,
    AxQuery(p): AxQuery<IntelParams>,
) -> Result<Json<Envelope<lokiapi::QueryData>>, ApiError> {
    use heimdall_store::intel::Measure;
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
        heimdall_store::intel::counts(
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
    let result = series
        .into_iter()
        .map(|(metric, v)| lokiapi::MatrixSeries {
            metric,
            values: v
                .iter()
                .map(|(t, c)| (*t as f64 / 1e9, c.to_string()))
                .collect(),
        })
        .collect();
    Ok(Json(Envelope::ok(lokiapi::QueryData {
        result: lokiapi::QueryResult::Matrix(result),
        stats: Value::Null,
        encoding_flags: Vec::new(),
    })))
}

/// Anomaly events the agents detected, newest first.
async fn anomalies(
    State(st): State<Arc<ApiState>>,
    AxQuery(p): AxQuery<IntelParams>,
) -> Result<Json<Envelope<Vec<model::AnomalyEvent>>>, ApiError> {
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
        heimdall_store::intel::anomalies(
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
    Ok(Json(Envelope::ok(rows)))
}

async fn agents(State(st): State<Arc<ApiState>>) -> Json<Envelope<Vec<model::Agent>>> {
    Json(Envelope::ok(st.registry.list()))
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
