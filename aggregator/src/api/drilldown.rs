//! What Grafana's Logs Drilldown app and the Loki data source's editor ask besides
//! queries, in Loki 3's shapes:
//!
//! - `index/volume` and `index/volume_range`: bytes per series (the labels the query's
//!   matchers name, or `targetLabels`) or per label name (`aggregateBy=labels`), from
//!   the per-second counts ([`heimdall_store::volume`]), lines read only for streams
//!   those do not cover;
//! - `detected_labels`: stream labels with their cardinality, without the ones that
//!   only hold numbers or ids (as Loki leaves them out);
//! - `detected_fields` and `detected_field/<name>/values`: fields of the newest
//!   `line_limit` lines of the query, from structured metadata (`parsers: null`) and from
//!   parsing the lines as JSON or else logfmt (`parsers: ["json"]`, with the `jsonPath`),
//!   each with a type (`int`, `float`, `boolean`, `duration`, `bytes`, `string`);
//! - `drilldown-limits`, `format_query`, and `label/detected_level/values` (levels
//!   present in the range, which Loki leaves empty but Drilldown's filters want).

use super::loki::{label_set, secs, streams_matching, Params};
use super::{bad, on_source, parse_step, ApiError, ApiState};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use heimdall_api::loki::{LabelSet, MatrixSeries, QueryData, QueryResult, VectorSample};
use heimdall_api::{format_value, Envelope};
use heimdall_common::record::{Labels, Level};
use heimdall_logql::{self as parse, Matcher, Query};
use heimdall_query::exec::{self, LogRequest, Order};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

/// The Loki API version Heimdall's answers follow. Clients probe endpoints rather than
/// compare versions, but what they document as required (Drilldown: Loki 3.2, with
/// `drilldown-limits` from 3.6) is met, so this is what `status/buildinfo` and
/// `drilldown-limits` report; Heimdall's own version is in `application`.
pub const LOKI_API_VERSION: &str = "3.6.0";

/// Most series a volume answer holds by default (Loki's default).
const DEFAULT_VOLUME_LIMIT: usize = 100;
/// Lines sampled for detected fields by default.
const DEFAULT_LINE_LIMIT: usize = 100;
/// Fields (or values) returned by default.
const DEFAULT_FIELD_LIMIT: usize = 1000;
/// Most lines sampled for detected fields, whatever is asked.
const MAX_LINE_LIMIT: usize = 5000;

/// The matchers of a volume or label query: a stream selector, `{}` or nothing for all.
fn selector_matchers(q: Option<&str>) -> Result<Vec<Matcher>, ApiError> {
    let q = q.map(str::trim).unwrap_or("");
    if q.is_empty() || q == "{}" {
        return Ok(Vec::new());
    }
    match parse::parse(q).map_err(|e| bad(e.to_string()))? {
        Query::Log(l) if l.stages.is_empty() => Ok(l.matchers),
        _ => Err(bad(format!(
            "`{q}` must be a stream selector such as {{service_name=\"api\"}}"
        ))),
    }
}

/// The parameters of a GET (query string) or a form POST (body, after the query
/// string's).
fn params(q: Option<String>, body: String) -> Params {
    if body.is_empty() {
        return Params::raw(q);
    }
    let mut text = q.unwrap_or_default();
    text.push('&');
    text.push_str(&body);
    Params::parse(&text)
}

/// How a volume answer groups.
enum Grouping {
    /// By these label names (streams without one of them are left out).
    Series(Vec<String>),
    /// Every label of the matching streams.
    All,
    /// One series per label name (its value empty), among these names or all.
    Labels(Option<Vec<String>>),
}

/// `GET|POST /loki/api/v1/index/volume`.
pub async fn volume(
    State(st): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
    body: String,
) -> Result<Json<Envelope<QueryData>>, ApiError> {
    volume_answer(st, params(q, body), false).await
}

/// `GET|POST /loki/api/v1/index/volume_range`.
pub async fn volume_range(
    State(st): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
    body: String,
) -> Result<Json<Envelope<QueryData>>, ApiError> {
    volume_answer(st, params(q, body), true).await
}

async fn volume_answer(
    st: Arc<ApiState>,
    p: Params,
    ranged: bool,
) -> Result<Json<Envelope<QueryData>>, ApiError> {
    let matchers = selector_matchers(p.get("query"))?;
    let (start, end) = p.range()?;
    let limit = match p.get("limit") {
        None => DEFAULT_VOLUME_LIMIT,
        Some(v) => match v.parse::<i64>() {
            Ok(0) => DEFAULT_VOLUME_LIMIT,
            Ok(n) if n > 0 => n as usize,
            _ => return Err(bad("limit must be a positive value")),
        },
    };
    let targets: Option<Vec<String>> = p.get("targetLabels").map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    });
    let targets = targets.filter(|t| !t.is_empty());
    let grouping = match p.get("aggregateBy").unwrap_or("series") {
        "series" => match &targets {
            Some(t) => Grouping::Series(t.clone()),
            None if matchers.is_empty() => Grouping::All,
            None => {
                let mut names: Vec<String> = matchers.iter().map(|m| m.name.clone()).collect();
                names.sort();
                names.dedup();
                Grouping::Series(names)
            }
        },
        "labels" => Grouping::Labels(targets),
        other => return Err(bad(format!("invalid aggregation option: `{other}`"))),
    };
    let step = if ranged {
        parse_step(p.get("step"), start, end)?
    } else {
        // One bucket over the whole range.
        end.saturating_sub(start).saturating_add(1).max(1)
    };
    let deadline = Some(Instant::now() + st.query_timeout);
    // Bytes per (stream, bucket start).
    let (streams, per_stream) = on_source(&st, move |src, _| {
        let streams = src.streams_in_range(&matchers, start, end.saturating_add(1))?;
        let ids: Vec<i64> = streams.iter().map(|(id, _)| *id).collect();
        let covered = src.volume_covered(&ids)?;
        let bucket = |ts: i64| {
            if ranged {
                ts.div_euclid(step) * step
            } else {
                start
            }
        };
        let mut bytes: HashMap<(i64, i64), u64> = HashMap::new();
        let (cov, uncov): (Vec<i64>, Vec<i64>) = ids.iter().partition(|id| covered.contains(id));
        src.per_second(&cov, start.saturating_sub(1), end, |m| {
            for (s, _, b) in heimdall_store::volume::seconds(m.seconds) {
                // Second `s` holds lines in (its instant - 1 s, its instant].
                let ts = heimdall_store::volume::instant(m.key.minute, s) - 1;
                if ts >= start - 1_000_000_000 && ts <= end {
                    *bytes
                        .entry((m.key.stream_id, bucket(ts.max(start))))
                        .or_default() += b;
                }
            }
        })?;
        let complete = src.scan(
            &uncov,
            start,
            end.saturating_add(1),
            Order::Any,
            &[],
            deadline,
            |row| {
                *bytes.entry((row.stream_id, bucket(row.ts))).or_default() += row.line.len() as u64;
                true
            },
        )?;
        if !complete {
            return Err(exec::Error::Timeout);
        }
        Ok((streams, bytes))
    })
    .await?;
    let labels: HashMap<i64, &Labels> = streams.iter().map(|(id, l)| (*id, l)).collect();
    // Series by key, bytes by bucket.
    let mut series: BTreeMap<LabelSet, BTreeMap<i64, u64>> = BTreeMap::new();
    for ((sid, b), n) in per_stream {
        let Some(l) = labels.get(&sid) else { continue };
        let keys: Vec<LabelSet> = match &grouping {
            Grouping::All => vec![label_set(l)],
            Grouping::Series(names) => {
                let vals: Option<LabelSet> = names
                    .iter()
                    .map(|n| l.get(n).map(|v| (n.clone(), v.to_owned())))
                    .collect();
                vals.into_iter().collect()
            }
            Grouping::Labels(names) => l
                .iter()
                .filter(|(k, _)| names.as_ref().is_none_or(|n| n.iter().any(|x| x == k)))
                .map(|(k, _)| LabelSet::from([(k.to_owned(), String::new())]))
                .collect(),
        };
        for k in keys {
            *series.entry(k).or_default().entry(b).or_default() += n;
        }
    }
    // The top `limit` of each bucket, as Loki keeps them.
    let mut buckets: BTreeMap<i64, Vec<(&LabelSet, u64)>> = BTreeMap::new();
    for (k, m) in &series {
        for (b, n) in m {
            buckets.entry(*b).or_default().push((k, *n));
        }
    }
    let mut kept: BTreeMap<LabelSet, Vec<(i64, u64)>> = BTreeMap::new();
    for (b, mut v) in buckets {
        v.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(y.0)));
        v.truncate(limit);
        for (k, n) in v {
            kept.entry(k.clone()).or_default().push((b, n));
        }
    }
    let stamp = |b: i64| {
        if ranged {
            secs(b.saturating_add(step).saturating_sub(1_000_000).min(end))
        } else {
            secs(end)
        }
    };
    let mut out: Vec<(LabelSet, Vec<(i64, u64)>)> = kept.into_iter().collect();
    out.sort_by(|a, b| {
        let first = |s: &[(i64, u64)]| s.first().map_or(0, |x| x.1);
        first(&b.1).cmp(&first(&a.1)).then_with(|| a.0.cmp(&b.0))
    });
    let result = if out.iter().all(|(_, v)| v.len() <= 1) {
        QueryResult::Vector(
            out.into_iter()
                .filter_map(|(metric, v)| {
                    v.first().map(|(b, n)| VectorSample {
                        metric,
                        value: (stamp(*b), format_value(*n as f64)),
                    })
                })
                .collect(),
        )
    } else {
        QueryResult::Matrix(
            out.into_iter()
                .map(|(metric, v)| MatrixSeries {
                    metric,
                    values: v
                        .into_iter()
                        .map(|(b, n)| (stamp(b), format_value(n as f64)))
                        .collect(),
                })
                .collect(),
        )
    };
    Ok(Json(Envelope::ok(QueryData {
        result,
        stats: json!({}),
        encoding_flags: Vec::new(),
    })))
}

/// Whether Loki leaves a label out of `detected_labels`: no values, or only numbers or
/// UUIDs (ids that cannot be browsed), except two-valued `0`/`1` flags; `cluster`,
/// `namespace`, `instance` and `pod` are always kept.
fn reject_label(name: &str, values: &BTreeSet<String>) -> bool {
    if values.is_empty() {
        return true;
    }
    if ["cluster", "namespace", "instance", "pod"].contains(&name) {
        return false;
    }
    if values.len() <= 2 && values.iter().all(|v| v == "0" || v == "1") {
        return false;
    }
    let uuid = |v: &str| {
        let b = v.as_bytes();
        b.len() == 36
            && b.iter().enumerate().all(|(i, c)| {
                if [8, 13, 18, 23].contains(&i) {
                    *c == b'-'
                } else {
                    c.is_ascii_hexdigit()
                }
            })
    };
    values.iter().all(|v| v.parse::<f64>().is_ok() || uuid(v))
}

/// `GET|POST /loki/api/v1/detected_labels`.
pub async fn detected_labels(
    State(st): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let p = params(q, body);
    let (start, end) = p.range()?;
    let sel: Vec<String> = p
        .get("query")
        .map(str::trim)
        .filter(|q| !q.is_empty() && *q != "{}")
        .map(str::to_owned)
        .into_iter()
        .collect();
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in streams_matching(&st, sel, start, end).await? {
        for (k, v) in l.iter() {
            values.entry(k.to_owned()).or_default().insert(v.to_owned());
        }
    }
    let labels: Vec<Value> = values
        .iter()
        .filter(|(k, v)| !reject_label(k, v))
        .map(|(k, v)| json!({"label": k, "cardinality": v.len()}))
        .collect();
    Ok(Json(json!({ "detectedLabels": labels })))
}

/// The type Loki gives a field value: the first of int, float, boolean, duration,
/// bytes that parses it, else string.
pub fn field_type(v: &str) -> &'static str {
    if v.parse::<i64>().is_ok() {
        "int"
    } else if v.parse::<f64>().is_ok() {
        "float"
    } else if matches!(
        v,
        "1" | "t" | "T" | "TRUE" | "true" | "True" | "0" | "f" | "F" | "FALSE" | "false" | "False"
    ) {
        "boolean"
    } else if heimdall_query::values::duration_secs(v).is_some() {
        "duration"
    } else if !v.is_empty() && heimdall_query::values::bytes(v).is_some() {
        "bytes"
    } else {
        "string"
    }
}

/// One detected field as it is being gathered.
#[derive(Default)]
struct Field {
    kind: &'static str,
    values: BTreeSet<String>,
    /// `None`: structured metadata.
    parsers: Option<BTreeSet<&'static str>>,
    json_path: Option<Vec<String>>,
}

/// The fields of a JSON object line, named as the `json` stage names them, with their
/// key paths.
fn json_fields(
    v: &Value,
    prefix: &str,
    path: &mut Vec<String>,
    out: &mut Vec<(String, String, Vec<String>)>,
) {
    let Value::Object(m) = v else { return };
    for (k, v) in m {
        let name = if prefix.is_empty() {
            super::push::sanitize_name(k)
        } else {
            format!("{prefix}_{}", super::push::sanitize_name(k))
        };
        path.push(k.clone());
        match v {
            Value::Object(_) => json_fields(v, &name, path, out),
            Value::Array(_) | Value::Null => {}
            Value::String(s) => out.push((name, s.clone(), path.clone())),
            other => out.push((name, other.to_string(), path.clone())),
        }
        path.pop();
    }
}

/// The fields of the sampled lines: structured metadata, then what the line parses to
/// (JSON, else logfmt).
fn gather(
    res: &exec::LogResult,
    logfmt: &heimdall_query::pipeline::Pipeline,
) -> BTreeMap<String, Field> {
    let mut fields: BTreeMap<String, Field> = BTreeMap::new();
    let skip = |k: &str| k.starts_with("__") && k.ends_with("__");
    let base = heimdall_query::pipeline::base_labels(
        &Labels::default(),
        &Labels::default(),
        Level::Unknown,
        0,
    );
    for (_, entries) in &res.streams {
        for e in entries {
            for (k, v) in e.structured.iter() {
                if skip(k) {
                    continue;
                }
                let f = fields.entry(k.to_owned()).or_default();
                if f.values.is_empty() {
                    f.kind = field_type(v);
                }
                f.values.insert(v.to_owned());
            }
            let mut parsed: Vec<(String, String, Option<Vec<String>>, &'static str)> = Vec::new();
            match serde_json::from_slice::<Value>(&e.line) {
                Ok(v @ Value::Object(_)) => {
                    let mut out = Vec::new();
                    json_fields(&v, "", &mut Vec::new(), &mut out);
                    parsed.extend(out.into_iter().map(|(n, v, p)| (n, v, Some(p), "json")));
                }
                _ => {
                    if let Some(out) = logfmt.process(
                        &Labels::default(),
                        &Labels::default(),
                        Level::Unknown,
                        0,
                        &e.line,
                    ) {
                        if let Some(l) = out.labels {
                            parsed.extend(
                                l.iter()
                                    .filter(|(k, v)| base.get(k) != Some(v) && !skip(k))
                                    .map(|(k, v)| (k.to_owned(), v.to_owned(), None, "logfmt")),
                            );
                        }
                    }
                }
            }
            for (k, v) in e.parsed.iter() {
                if !skip(k) && !parsed.iter().any(|p| p.0 == k) {
                    parsed.push((k.to_owned(), v.to_owned(), None, "logfmt"));
                }
            }
            for (k, v, path, parser) in parsed {
                if v.is_empty() {
                    continue;
                }
                let f = fields.entry(k).or_default();
                if f.values.is_empty() {
                    f.kind = field_type(&v);
                }
                f.values.insert(v);
                f.parsers.get_or_insert_with(BTreeSet::new).insert(parser);
                if f.json_path.is_none() {
                    f.json_path = path;
                }
            }
        }
    }
    fields
}

/// The newest lines of a detected-fields request.
async fn sample(st: &ApiState, p: &Params) -> Result<exec::LogResult, ApiError> {
    let q = match p.get("query").map(str::trim).filter(|q| !q.is_empty()) {
        Some(q) => parse::parse(q).map_err(|e| bad(e.to_string()))?,
        None => return Err(bad("missing `query` parameter")),
    };
    let Query::Log(lq) = q else {
        return Err(bad("detected fields need a log query, not a metric query"));
    };
    let (start, end) = p.range()?;
    let line_limit = p
        .usize("line_limit")?
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_LINE_LIMIT)
        .min(MAX_LINE_LIMIT);
    let req = LogRequest {
        start_ns: start,
        end_ns: end.saturating_add(1),
        limit: line_limit,
        max_bytes: 64 << 20,
        backward: true,
        deadline: Some(Instant::now() + st.query_timeout),
        categorize: true,
    };
    on_source(st, move |src, _| exec::run_log_query(src, &lq, &req)).await
}

fn field_limit(p: &Params) -> Result<usize, ApiError> {
    Ok(match p.usize("limit")?.or(p.usize("field_limit")?) {
        Some(0) | None => DEFAULT_FIELD_LIMIT,
        Some(n) => n,
    })
}

fn logfmt_pipeline() -> heimdall_query::pipeline::Pipeline {
    let q = parse::parse_log("{x=\"y\"} | logfmt").expect("a fixed query");
    heimdall_query::pipeline::Pipeline::new(&q)
}

/// The fields of a detected-fields request's sample, and the answer's limit.
async fn sampled_fields(
    st: &ApiState,
    q: Option<String>,
    body: String,
) -> Result<(BTreeMap<String, Field>, usize), ApiError> {
    let p = params(q, body);
    let limit = field_limit(&p)?;
    let res = sample(st, &p).await?;
    Ok((gather(&res, &logfmt_pipeline()), limit))
}

/// `GET|POST /loki/api/v1/detected_fields`.
pub async fn detected_fields(
    State(st): State<Arc<ApiState>>,
    RawQuery(q): RawQuery,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let (fields, limit) = sampled_fields(&st, q, body).await?;
    if fields.is_empty() {
        return Ok(Json(json!({})));
    }
    let list: Vec<Value> = fields
        .into_iter()
        .take(limit)
        .map(|(name, f)| {
            let mut v = json!({
                "label": name,
                "type": f.kind,
                "cardinality": f.values.len(),
                "parsers": f.parsers.map(|p| p.into_iter().collect::<Vec<_>>()),
            });
            if let Some(path) = f.json_path {
                v["jsonPath"] = json!(path);
            }
            v
        })
        .collect();
    Ok(Json(json!({"fields": list, "limit": limit})))
}

/// `GET|POST /loki/api/v1/detected_field/<name>/values`.
pub async fn detected_field_values(
    State(st): State<Arc<ApiState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    RawQuery(q): RawQuery,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let (fields, limit) = sampled_fields(&st, q, body).await?;
    let values: Vec<String> = fields
        .get(&name)
        .map(|f| f.values.iter().take(limit).cloned().collect())
        .unwrap_or_default();
    if values.is_empty() {
        return Ok(Json(json!({})));
    }
    Ok(Json(json!({"values": values, "limit": limit})))
}

/// `GET /loki/api/v1/drilldown-limits`: the limits Drilldown reads, and that patterns
/// are available.
pub async fn limits(State(st): State<Arc<ApiState>>) -> Json<Value> {
    let secs_str = |d: std::time::Duration| format!("{}s", d.as_secs());
    Json(json!({
        "limits": {
            "discover_log_levels": true,
            "discover_service_name": &*st.push.service_name_from,
            "log_level_fields": ["level", "LEVEL", "Level", "severity", "SEVERITY", "Severity", "lvl", "LVL", "Lvl"],
            "max_entries_limit_per_query": st.max_limit,
            "max_query_series": st.eval_limits.max_series,
            "max_query_length": "0s",
            "max_query_lookback": "0s",
            "max_query_range": "0s",
            "metric_aggregation_enabled": false,
            "pattern_persistence_enabled": false,
            "query_timeout": secs_str(st.query_timeout),
            "retention_period": st.retention.map_or_else(|| "0s".to_owned(), secs_str),
            "volume_enabled": true,
            "volume_max_series": 1000,
        },
        "pattern_ingester_enabled": true,
        "version": LOKI_API_VERSION,
    }))
}

/// `GET|POST /loki/api/v1/format_query`: the query written out canonically.
pub async fn format_query(RawQuery(q): RawQuery, body: String) -> Response {
    let p = params(q, body);
    let Some(text) = p.get("query") else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": "invalid-query", "error": "missing `query` parameter"})),
        )
            .into_response();
    };
    match parse::parse(text) {
        Ok(q) => Json(json!({"status": "success", "data": q.to_string()})).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": "invalid-query", "error": e.to_string()})),
        )
            .into_response(),
    }
}

/// The levels of the lines of the streams `query` selects in `[start, end]`, from the
/// per-second counts and the agents' pre-aggregates (lines read only for streams
/// neither covers): `label/detected_level/values`.
pub async fn detected_levels(st: &ApiState, p: &Params) -> Result<Vec<String>, ApiError> {
    let matchers = selector_matchers(p.get("query"))?;
    let (start, end) = p.range()?;
    let deadline = Some(Instant::now() + st.query_timeout);
    let levels = on_source(st, move |src, _| {
        let streams = src.streams_in_range(&matchers, start, end.saturating_add(1))?;
        let ids: Vec<i64> = streams.iter().map(|(id, _)| *id).collect();
        let covered = src.volume_covered(&ids)?;
        let mut seen = [false; 8];
        let (cov, uncov): (Vec<i64>, Vec<i64>) = ids.iter().partition(|id| covered.contains(id));
        src.per_second(&cov, start.saturating_sub(1), end, |m| {
            seen[usize::from(m.key.level) & 7] = true;
        })?;
        src.aggregates(
            &uncov,
            start,
            end.saturating_add(1),
            |_, _, _, level, _, _| {
                seen[usize::from(level) & 7] = true;
            },
        )?;
        // Streams with neither: their lines, until every level has been seen.
        let rest: Vec<i64> = uncov;
        src.scan(
            &rest,
            start,
            end.saturating_add(1),
            Order::Any,
            &[],
            deadline,
            |row| {
                seen[row.level as usize & 7] = true;
                !seen.iter().take(Level::ALL.len()).all(|s| *s)
            },
        )?;
        Ok(seen)
    })
    .await?;
    Ok(Level::ALL
        .iter()
        .filter(|l| levels[**l as usize])
        .map(|l| l.as_str().to_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_logfmt_sampler_builds() {
        let out = logfmt_pipeline()
            .process(
                &Labels::default(),
                &Labels::default(),
                Level::Unknown,
                0,
                b"a=1 b=x",
            )
            .unwrap();
        assert_eq!(out.labels.unwrap().get("a"), Some("1"));
    }

    #[test]
    fn field_types_follow_lokis_order() {
        for (v, t) in [
            ("42", "int"),
            ("-7", "int"),
            ("3.5", "float"),
            ("1e3", "float"),
            ("true", "boolean"),
            ("F", "boolean"),
            ("300ms", "duration"),
            ("1h30m", "duration"),
            ("2.5s", "duration"),
            ("10 KiB", "bytes"),
            ("42MB", "bytes"),
            ("GET", "string"),
            ("5 apples", "string"),
            ("", "string"),
        ] {
            assert_eq!(field_type(v), t, "{v}");
        }
    }

    #[test]
    fn labels_of_only_numbers_or_ids_are_left_out() {
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert!(reject_label("port", &set(&["8080", "9090", "443"])));
        assert!(reject_label(
            "request",
            &set(&["123e4567-e89b-12d3-a456-426614174000"])
        ));
        assert!(!reject_label("canary", &set(&["0", "1"])));
        assert!(!reject_label("pod", &set(&["1", "2", "3"])));
        assert!(!reject_label("app", &set(&["api", "42"])));
        assert!(reject_label("empty", &set(&[])));
    }

    #[test]
    fn json_fields_are_named_as_the_json_stage_names_them() {
        let v: Value =
            serde_json::from_str(r#"{"user":{"id":7,"settings":{"theme":"dark"}},"http.status":200,"tags":[1],"n":null}"#)
                .unwrap();
        let mut out = Vec::new();
        json_fields(&v, "", &mut Vec::new(), &mut out);
        out.sort();
        assert_eq!(
            out,
            vec![
                (
                    "http_status".into(),
                    "200".into(),
                    vec!["http.status".into()]
                ),
                (
                    "user_id".into(),
                    "7".into(),
                    vec!["user".into(), "id".into()]
                ),
                (
                    "user_settings_theme".into(),
                    "dark".into(),
                    vec!["user".into(), "settings".into(), "theme".into()]
                ),
            ]
        );
    }
}
