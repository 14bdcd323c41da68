//! OTLP logs over HTTP: `POST /otlp/v1/logs` on the API's listener, and `POST /v1/logs`
//! (the OpenTelemetry Collector's and SDKs' default path) on the OTLP listener (port
//! 4318 by default). Bodies are `ExportLogsServiceRequest` in protobuf
//! (`application/x-protobuf`) or in OTLP's JSON mapping (`application/json`), plain or
//! gzip.
//!
//! Mapping, as Loki 3 does by default:
//! - resource attributes named in [`OtlpMapping::index_labels`] become stream labels,
//!   their names made label names (`service.name` → `service_name`,
//!   `k8s.namespace.name` → `k8s_namespace_name`); a stream always gets a
//!   `service_name` (discovered, else `unknown_service`);
//! - the other resource attributes, the scope's name (`scope_name`), version
//!   (`scope_version`) and attributes, the record's attributes, `trace_id` and `span_id`
//!   (hex), `severity_text` and `severity_number` become structured metadata; nested
//!   maps are flattened with `_`, arrays kept as JSON text;
//! - the body is the line (a string as is, any other value as JSON);
//! - the severity number (or, without one, the severity text) is the line's level;
//! - the time is `time_unix_nano`, else `observed_time_unix_nano`, else the receiving
//!   time.
//!
//! The answer is an `ExportLogsServiceResponse` in the request's encoding, with
//! `partial_success` counting the records refused (too old, metadata too large, …);
//! a body that does not decode is a 400 with a `google.rpc.Status`.

use super::proto::{self, Writer};
use super::push::{self, BadLabels, Intake, PushPolicy, MAX_PUSH_BYTES};
use super::{ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use heimdall_common::record::{Labels, Level};
use serde_json::Value;
use std::sync::Arc;

/// Which resource attributes become stream labels (Loki 3's
/// `default_resource_attributes_as_index_labels`).
pub const DEFAULT_INDEX_LABELS: [&str; 18] = [
    "service.name",
    "service.namespace",
    "service.instance.id",
    "deployment.environment",
    "deployment.environment.name",
    "cloud.region",
    "cloud.availability_zone",
    "k8s.cluster.name",
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.container.name",
    "container.name",
    "k8s.replicaset.name",
    "k8s.deployment.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.cronjob.name",
    "k8s.job.name",
];

/// How OTLP records become streams and structured metadata.
#[derive(Clone, Debug)]
pub struct OtlpMapping {
    /// Resource attributes that become stream labels (by their OTLP names).
    pub index_labels: Arc<[String]>,
}

impl Default for OtlpMapping {
    fn default() -> OtlpMapping {
        OtlpMapping {
            index_labels: DEFAULT_INDEX_LABELS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

/// An attribute value, as OTLP's `AnyValue`.
#[derive(Clone, Debug, PartialEq)]
pub enum Any {
    Str(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<Any>),
    Map(Vec<(String, Any)>),
    Empty,
}

impl Any {
    /// The value as text: strings as they are, numbers and booleans as written,
    /// bytes in base64, arrays and maps as JSON.
    pub fn text(&self) -> String {
        match self {
            Any::Str(s) => s.clone(),
            Any::Empty => String::new(),
            other => match other.json() {
                Value::String(s) => s,
                v => v.to_string(),
            },
        }
    }

    fn json(&self) -> Value {
        match self {
            Any::Str(s) => Value::String(s.clone()),
            Any::Bool(b) => Value::Bool(*b),
            Any::Int(i) => Value::from(*i),
            Any::Double(d) => serde_json::Number::from_f64(*d)
                .map_or_else(|| Value::String(d.to_string()), Value::Number),
            Any::Bytes(b) => Value::String(base64(b)),
            Any::Array(a) => Value::Array(a.iter().map(Any::json).collect()),
            Any::Map(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), v.json())).collect()),
            Any::Empty => Value::Null,
        }
    }
}

fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Attributes flattened into name/value pairs: a map value's keys are appended with
/// `_` (`http.request` {`method`: `GET`} → `http_request_method`); names are made
/// label names.
fn flatten(prefix: &str, attrs: &[(String, Any)], out: &mut Vec<(String, String)>) {
    for (k, v) in attrs {
        if k.is_empty() {
            continue;
        }
        let name = if prefix.is_empty() {
            push::sanitize_name(k)
        } else {
            format!("{prefix}_{}", push::sanitize_name(k))
        };
        match v {
            Any::Map(m) => flatten(&name, m, out),
            Any::Empty => {}
            v => out.push((name, v.text())),
        }
    }
}

/// One log record, decoded.
#[derive(Debug, Default)]
pub struct Record {
    pub time: u64,
    pub observed: u64,
    pub severity_number: i32,
    pub severity_text: String,
    pub body: Option<Any>,
    pub attributes: Vec<(String, Any)>,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
}

/// A scope and its records.
#[derive(Debug, Default)]
pub struct Scope {
    pub name: String,
    pub version: String,
    pub attributes: Vec<(String, Any)>,
    pub records: Vec<Record>,
}

/// A resource and its scopes.
#[derive(Debug, Default)]
pub struct Resource {
    pub attributes: Vec<(String, Any)>,
    pub scopes: Vec<Scope>,
}

/// Why an OTLP body is refused whole.
#[derive(Debug, thiserror::Error)]
pub enum BadOtlp {
    #[error("OTLP body is not an ExportLogsServiceRequest: {0}")]
    Proto(#[from] proto::Error),
    #[error("OTLP body: {0} is not UTF-8")]
    Utf8(&'static str),
    #[error("OTLP JSON body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("OTLP JSON body: {0}")]
    JsonShape(String),
}

fn utf8(b: &[u8], what: &'static str) -> Result<String, BadOtlp> {
    String::from_utf8(b.to_vec()).map_err(|_| BadOtlp::Utf8(what))
}

/// Messages nest at most this deep in an attribute value.
const MAX_DEPTH: usize = 16;

fn any_proto(b: &[u8], depth: usize) -> Result<Any, BadOtlp> {
    if depth > MAX_DEPTH {
        return Err(proto::Error::TooDeep("AnyValue").into());
    }
    let mut out = Any::Empty;
    for f in proto::fields(b, "AnyValue") {
        let (n, v) = f?;
        out = match n {
            1 => Any::Str(utf8(v.bytes("AnyValue", 1)?, "a string value")?),
            2 => Any::Bool(v.varint("AnyValue", 2)? != 0),
            3 => Any::Int(v.varint("AnyValue", 3)? as i64),
            4 => Any::Double(f64::from_bits(v.fixed64("AnyValue", 4)?)),
            5 => {
                let mut a = Vec::new();
                for f in proto::fields(v.bytes("AnyValue", 5)?, "ArrayValue") {
                    let (n, v) = f?;
                    if n == 1 {
                        a.push(any_proto(v.bytes("ArrayValue", 1)?, depth + 1)?);
                    }
                }
                Any::Array(a)
            }
            6 => {
                let mut m = Vec::new();
                for f in proto::fields(v.bytes("AnyValue", 6)?, "KeyValueList") {
                    let (n, v) = f?;
                    if n == 1 {
                        m.push(kv_proto(v.bytes("KeyValueList", 1)?, depth + 1)?);
                    }
                }
                Any::Map(m)
            }
            7 => Any::Bytes(v.bytes("AnyValue", 7)?.to_vec()),
            _ => continue,
        };
    }
    Ok(out)
}

fn kv_proto(b: &[u8], depth: usize) -> Result<(String, Any), BadOtlp> {
    let (mut k, mut val) = (String::new(), Any::Empty);
    for f in proto::fields(b, "KeyValue") {
        let (n, v) = f?;
        match n {
            1 => k = utf8(v.bytes("KeyValue", 1)?, "an attribute key")?,
            2 => val = any_proto(v.bytes("KeyValue", 2)?, depth + 1)?,
            _ => {}
        }
    }
    Ok((k, val))
}

/// Decodes a protobuf `ExportLogsServiceRequest` (OTLP `logs/v1`).
///
/// # Errors
/// [`BadOtlp`] when the body is not one.
pub fn decode_proto(body: &[u8]) -> Result<Vec<Resource>, BadOtlp> {
    let mut out = Vec::new();
    for f in proto::fields(body, "ExportLogsServiceRequest") {
        let (n, v) = f?;
        if n != 1 {
            continue;
        }
        let mut res = Resource::default();
        for f in proto::fields(v.bytes("ExportLogsServiceRequest", 1)?, "ResourceLogs") {
            let (n, v) = f?;
            match n {
                1 => {
                    for f in proto::fields(v.bytes("ResourceLogs", 1)?, "Resource") {
                        let (n, v) = f?;
                        if n == 1 {
                            res.attributes.push(kv_proto(v.bytes("Resource", 1)?, 0)?);
                        }
                    }
                }
                2 => res.scopes.push(scope_proto(v.bytes("ResourceLogs", 2)?)?),
                _ => {}
            }
        }
        out.push(res);
    }
    Ok(out)
}

fn scope_proto(b: &[u8]) -> Result<Scope, BadOtlp> {
    let mut s = Scope::default();
    for f in proto::fields(b, "ScopeLogs") {
        let (n, v) = f?;
        match n {
            1 => {
                for f in proto::fields(v.bytes("ScopeLogs", 1)?, "InstrumentationScope") {
                    let (n, v) = f?;
                    match n {
                        1 => s.name = utf8(v.bytes("InstrumentationScope", 1)?, "the scope name")?,
                        2 => {
                            s.version =
                                utf8(v.bytes("InstrumentationScope", 2)?, "the scope version")?;
                        }
                        3 => s
                            .attributes
                            .push(kv_proto(v.bytes("InstrumentationScope", 3)?, 0)?),
                        _ => {}
                    }
                }
            }
            2 => s.records.push(record_proto(v.bytes("ScopeLogs", 2)?)?),
            _ => {}
        }
    }
    Ok(s)
}

fn record_proto(b: &[u8]) -> Result<Record, BadOtlp> {
    let mut r = Record::default();
    for f in proto::fields(b, "LogRecord") {
        let (n, v) = f?;
        match n {
            1 => r.time = v.fixed64("LogRecord", 1)?,
            2 => r.severity_number = v.varint("LogRecord", 2)? as i32,
            3 => r.severity_text = utf8(v.bytes("LogRecord", 3)?, "severity_text")?,
            5 => r.body = Some(any_proto(v.bytes("LogRecord", 5)?, 0)?),
            6 => r.attributes.push(kv_proto(v.bytes("LogRecord", 6)?, 0)?),
            9 => r.trace_id = v.bytes("LogRecord", 9)?.to_vec(),
            10 => r.span_id = v.bytes("LogRecord", 10)?.to_vec(),
            11 => r.observed = v.fixed64("LogRecord", 11)?,
            _ => {}
        }
    }
    Ok(r)
}

/// A field of OTLP JSON under its lowerCamelCase name or its proto name (receivers
/// must take both).
fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

fn list<'a>(v: &'a Value, camel: &str, snake: &str) -> &'a [Value] {
    field(v, camel, snake)
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
}

/// An integer that OTLP JSON writes as a number or (64-bit ones) as a string.
fn int(v: Option<&Value>) -> Option<i128> {
    match v? {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn any_json(v: &Value, depth: usize) -> Result<Any, BadOtlp> {
    if depth > MAX_DEPTH {
        return Err(BadOtlp::JsonShape("attribute values nest too deep".into()));
    }
    if let Some(s) = field(v, "stringValue", "string_value").and_then(Value::as_str) {
        return Ok(Any::Str(s.to_owned()));
    }
    if let Some(b) = field(v, "boolValue", "bool_value").and_then(Value::as_bool) {
        return Ok(Any::Bool(b));
    }
    if let Some(i) = int(field(v, "intValue", "int_value")) {
        return Ok(Any::Int(i as i64));
    }
    if let Some(d) = field(v, "doubleValue", "double_value") {
        let d = d
            .as_f64()
            .or_else(|| d.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(f64::NAN);
        return Ok(Any::Double(d));
    }
    if let Some(s) = field(v, "bytesValue", "bytes_value").and_then(Value::as_str) {
        // Kept as the base64 text it came as.
        return Ok(Any::Str(s.to_owned()));
    }
    if let Some(a) = field(v, "arrayValue", "array_value") {
        return list(a, "values", "values")
            .iter()
            .map(|x| any_json(x, depth + 1))
            .collect::<Result<_, _>>()
            .map(Any::Array);
    }
    if let Some(m) = field(v, "kvlistValue", "kvlist_value") {
        return list(m, "values", "values")
            .iter()
            .map(|kv| kv_json(kv, depth + 1))
            .collect::<Result<_, _>>()
            .map(Any::Map);
    }
    Ok(Any::Empty)
}

fn kv_json(kv: &Value, depth: usize) -> Result<(String, Any), BadOtlp> {
    let k = kv
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| BadOtlp::JsonShape("an attribute without a `key`".into()))?;
    let v = match kv.get("value") {
        Some(v) => any_json(v, depth + 1)?,
        None => Any::Empty,
    };
    Ok((k.to_owned(), v))
}

fn attrs_json(v: &Value) -> Result<Vec<(String, Any)>, BadOtlp> {
    list(v, "attributes", "attributes")
        .iter()
        .map(|kv| kv_json(kv, 0))
        .collect()
}

/// Decodes an `ExportLogsServiceRequest` in OTLP's JSON mapping.
///
/// # Errors
/// [`BadOtlp`] when the body is not one.
pub fn decode_json(body: &[u8]) -> Result<Vec<Resource>, BadOtlp> {
    let v: Value = serde_json::from_slice(body)?;
    if !v.is_object() {
        return Err(BadOtlp::JsonShape(
            "expected an object with `resourceLogs`".into(),
        ));
    }
    let mut out = Vec::new();
    for rl in list(&v, "resourceLogs", "resource_logs") {
        let mut res = Resource {
            attributes: match rl.get("resource") {
                Some(r) => attrs_json(r)?,
                None => Vec::new(),
            },
            scopes: Vec::new(),
        };
        for sl in list(rl, "scopeLogs", "scope_logs") {
            let mut s = Scope::default();
            if let Some(sc) = sl.get("scope") {
                s.name = sc
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                s.version = sc
                    .get("version")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                s.attributes = attrs_json(sc)?;
            }
            for lr in list(sl, "logRecords", "log_records") {
                let sev = field(lr, "severityNumber", "severity_number");
                let severity_number = int(sev).map_or_else(
                    || sev.and_then(Value::as_str).map_or(0, severity_from_name),
                    |n| n as i32,
                );
                s.records.push(Record {
                    time: int(field(lr, "timeUnixNano", "time_unix_nano")).unwrap_or(0) as u64,
                    observed: int(field(lr, "observedTimeUnixNano", "observed_time_unix_nano"))
                        .unwrap_or(0) as u64,
                    severity_number,
                    severity_text: field(lr, "severityText", "severity_text")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    body: match lr.get("body") {
                        Some(b) => Some(any_json(b, 0)?),
                        None => None,
                    },
                    attributes: attrs_json(lr)?,
                    trace_id: field(lr, "traceId", "trace_id")
                        .and_then(Value::as_str)
                        .map(hex_bytes)
                        .unwrap_or_default(),
                    span_id: field(lr, "spanId", "span_id")
                        .and_then(Value::as_str)
                        .map(hex_bytes)
                        .unwrap_or_default(),
                });
            }
            res.scopes.push(s);
        }
        out.push(res);
    }
    Ok(out)
}

/// `SEVERITY_NUMBER_WARN2` → 14, as the JSON mapping may name enum values.
fn severity_from_name(s: &str) -> i32 {
    let Some(rest) = s.strip_prefix("SEVERITY_NUMBER_") else {
        return 0;
    };
    let (word, n) = rest.split_at(
        rest.find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len()),
    );
    let base = match word {
        "TRACE" => 1,
        "DEBUG" => 5,
        "INFO" => 9,
        "WARN" => 13,
        "ERROR" => 17,
        "FATAL" => 21,
        _ => return 0,
    };
    base + n.parse::<i32>().map_or(0, |k| (k - 1).clamp(0, 3))
}

/// The level of a severity number (OTLP's ranges), else of its text.
fn level(number: i32, text: &str) -> Option<Level> {
    match number {
        1..=4 => Some(Level::Trace),
        5..=8 => Some(Level::Debug),
        9..=12 => Some(Level::Info),
        13..=16 => Some(Level::Warn),
        17..=20 => Some(Level::Error),
        21..=24 => Some(Level::Fatal),
        _ => push::level_word(text.trim()),
    }
}

/// Admits decoded resources into `intake`, mapped as the module's docs say.
pub fn admit(
    resources: Vec<Resource>,
    mapping: &OtlpMapping,
    policy: &PushPolicy,
    intake: &mut Intake<'_>,
) {
    for (ri, res) in resources.into_iter().enumerate() {
        let mut labels = Vec::new();
        let mut rest = Vec::new();
        for (k, v) in res.attributes {
            if mapping.index_labels.contains(&k) {
                let v = v.text();
                if !v.is_empty() {
                    labels.push((push::sanitize_name(&k), v));
                }
            } else {
                rest.push((k, v));
            }
        }
        let mut resource_meta = Vec::new();
        flatten("", &rest, &mut resource_meta);
        let mut labels = Labels::new(labels);
        push::discover_service_name(&mut labels, &policy.service_name_from);
        if labels.get("service_name").is_none() {
            labels.insert("service_name", push::UNKNOWN_SERVICE);
        }
        let n: usize = res.scopes.iter().map(|s| s.records.len()).sum();
        let Some(mut stream) = intake.stream(ri, Ok::<_, BadLabels>(labels), n) else {
            continue;
        };
        for scope in res.scopes {
            let mut scope_meta = resource_meta.clone();
            if !scope.name.is_empty() {
                scope_meta.push(("scope_name".into(), scope.name.clone()));
            }
            if !scope.version.is_empty() {
                scope_meta.push(("scope_version".into(), scope.version.clone()));
            }
            flatten("", &scope.attributes, &mut scope_meta);
            for r in scope.records {
                let mut meta = scope_meta.clone();
                flatten("", &r.attributes, &mut meta);
                if !r.trace_id.is_empty() {
                    meta.push(("trace_id".into(), hex(&r.trace_id)));
                }
                if !r.span_id.is_empty() {
                    meta.push(("span_id".into(), hex(&r.span_id)));
                }
                if !r.severity_text.is_empty() {
                    meta.push(("severity_text".into(), r.severity_text.clone()));
                }
                if r.severity_number != 0 {
                    meta.push(("severity_number".into(), r.severity_number.to_string()));
                }
                let ts = [r.time, r.observed]
                    .into_iter()
                    .find(|t| *t != 0)
                    .map_or(intake.now(), |t| i64::try_from(t).unwrap_or(i64::MAX));
                let line = r.body.as_ref().map(Any::text).unwrap_or_default();
                let lvl = level(r.severity_number, &r.severity_text);
                intake.text_entry(&mut stream, ts, &line, meta, lvl);
            }
        }
    }
}

fn status_body(json: bool, code: i32, message: &str) -> (String, Vec<u8>) {
    if json {
        (
            "application/json".into(),
            serde_json::to_vec(&serde_json::json!({"code": code, "message": message}))
                .unwrap_or_default(),
        )
    } else {
        let mut w = Writer::default();
        w.uint(1, code as u64).bytes(2, message.as_bytes());
        ("application/x-protobuf".into(), w.buf)
    }
}

fn answer(status: StatusCode, ctype: String, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, ctype)], body).into_response()
}

/// `POST /otlp/v1/logs` and `POST /v1/logs`.
pub async fn logs(
    State(st): State<Arc<ApiState>>,
    caller: Option<axum::Extension<super::auth::Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = push::caller_name(caller);
    let (ctype, mime) = push::media_type(&headers);
    let json = match mime.as_str() {
        "application/json" => true,
        "application/x-protobuf" | "application/protobuf" | "" => false,
        _ => {
            push::rejected("content_type");
            let (t, b) = status_body(false, 3, &format!(
                "OTLP bodies of type `{ctype}` are not supported; send application/x-protobuf or application/json"
            ));
            return Ok(answer(StatusCode::UNSUPPORTED_MEDIA_TYPE, t, b));
        }
    };
    let body = match push::decompress(
        push::header_str(&headers, header::CONTENT_ENCODING),
        &body,
        MAX_PUSH_BYTES,
    ) {
        Ok(b) => b,
        Err(e) => {
            let (status, reason) = e.status();
            push::rejected(reason);
            let (t, b) = status_body(json, 3, &e.to_string());
            return Ok(answer(status, t, b));
        }
    };
    let resources = if json {
        decode_json(&body)
    } else {
        decode_proto(&body)
    };
    let resources = match resources {
        Ok(r) => r,
        Err(e) => {
            push::rejected("invalid");
            let (t, b) = status_body(json, 3, &e.to_string());
            return Ok(answer(StatusCode::BAD_REQUEST, t, b));
        }
    };
    let mut intake = Intake::new(&st.push, &caller);
    admit(resources, &st.otlp, &st.push, &mut intake);
    let format = if json { "otlp_json" } else { "otlp_protobuf" };
    let done = push::store(&st, intake.finish(), format).await?;
    let refused = done.refused_total();
    let message = done.errors.join("\n");
    let (t, b) = if json {
        let v = if refused == 0 {
            serde_json::json!({})
        } else {
            serde_json::json!({"partialSuccess": {"rejectedLogRecords": refused.to_string(), "errorMessage": message}})
        };
        (
            "application/json".to_owned(),
            serde_json::to_vec(&v).unwrap_or_default(),
        )
    } else {
        let mut w = Writer::default();
        if refused > 0 {
            let mut p = Writer::default();
            p.uint(1, refused as u64).bytes(2, message.as_bytes());
            w.message(1, &p);
        }
        ("application/x-protobuf".to_owned(), w.buf)
    };
    Ok(answer(StatusCode::OK, t, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> Writer {
        let mut any = Writer::default();
        any.bytes(1, v.as_bytes());
        let mut w = Writer::default();
        w.bytes(1, k.as_bytes()).message(2, &any);
        w
    }

    /// An `ExportLogsServiceRequest` as an SDK writes it.
    fn request() -> Vec<u8> {
        let mut rec = Writer::default();
        let mut body = Writer::default();
        body.bytes(1, b"payment failed for order 42");
        let mut nested = Writer::default();
        let mut inner = Writer::default();
        inner.message(1, &kv("method", "POST"));
        nested.message(6, &inner);
        let mut nested_kv = Writer::default();
        nested_kv.bytes(1, b"http.request").message(2, &nested);
        rec.fixed64(1, 1_700_000_000_123_456_789)
            .uint(2, 17)
            .bytes(3, b"ERROR")
            .message(5, &body)
            .message(6, &kv("user.id", "u-7"))
            .message(6, &nested_kv)
            .bytes(9, &[0xab; 16])
            .bytes(10, &[0x01; 8]);
        let mut scope = Writer::default();
        scope.bytes(1, b"checkout").bytes(2, b"1.2.0");
        let mut sl = Writer::default();
        sl.message(1, &scope).message(2, &rec);
        let mut resource = Writer::default();
        resource
            .message(1, &kv("service.name", "payments"))
            .message(1, &kv("k8s.namespace.name", "prod"))
            .message(1, &kv("host.name", "web-1"));
        let mut rl = Writer::default();
        rl.message(1, &resource).message(2, &sl);
        let mut req = Writer::default();
        req.message(1, &rl);
        req.buf
    }

    fn admitted(resources: Vec<Resource>) -> push::Decoded {
        let policy = PushPolicy {
            max_age: None,
            ..PushPolicy::default()
        };
        let mut intake = Intake::new(&policy, "otel");
        admit(resources, &OtlpMapping::default(), &policy, &mut intake);
        intake.finish()
    }

    #[test]
    fn protobuf_records_map_to_streams_and_metadata_as_loki_maps_them() {
        let d = admitted(decode_proto(&request()).unwrap());
        assert_eq!(d.content.streams.len(), 1);
        let s = &d.content.streams[0];
        assert_eq!(s.get("service_name"), Some("payments"));
        assert_eq!(s.get("k8s_namespace_name"), Some("prod"));
        assert_eq!(s.get("agent"), Some("otel"));
        assert_eq!(s.get("host_name"), None, "not an index label");
        let r = &d.content.records[0];
        assert_eq!(&r.line[..], b"payment failed for order 42");
        assert_eq!(r.time_ns, 1_700_000_000_123_456_789);
        assert_eq!(r.level, Level::Error);
        let m = &r.metadata;
        assert_eq!(m.get("host_name"), Some("web-1"));
        assert_eq!(m.get("user_id"), Some("u-7"));
        assert_eq!(m.get("http_request_method"), Some("POST"));
        assert_eq!(m.get("trace_id"), Some("abababababababababababababababab"));
        assert_eq!(m.get("span_id"), Some("0101010101010101"));
        assert_eq!(m.get("scope_name"), Some("checkout"));
        assert_eq!(m.get("scope_version"), Some("1.2.0"));
        assert_eq!(m.get("severity_text"), Some("ERROR"));
        assert_eq!(m.get("severity_number"), Some("17"));
    }

    #[test]
    fn json_records_map_the_same_way() {
        let body = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"payments"}},{"key":"host.name","value":{"stringValue":"web-1"}}]},
            "scopeLogs":[{"scope":{"name":"checkout"},"logRecords":[
              {"timeUnixNano":"1700000000123456789","severityNumber":13,"severityText":"WARN","body":{"stringValue":"slow"},
               "attributes":[{"key":"retries","value":{"intValue":"3"}},{"key":"ok","value":{"boolValue":false}}],
               "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"},
              {"observedTimeUnixNano":1700000000000000000,"severityNumber":"SEVERITY_NUMBER_DEBUG2","body":{"kvlistValue":{"values":[{"key":"a","value":{"intValue":1}}]}}}
            ]}]},
            {"resource":{},"scopeLogs":[{"logRecords":[{"body":{"stringValue":"no resource"}}]}]}]}"#;
        let d = admitted(decode_json(body).unwrap());
        assert_eq!(d.content.records.len(), 3);
        let r = &d.content.records[0];
        assert_eq!(r.level, Level::Warn);
        assert_eq!(r.time_ns, 1_700_000_000_123_456_789);
        assert_eq!(r.metadata.get("retries"), Some("3"));
        assert_eq!(r.metadata.get("ok"), Some("false"));
        assert_eq!(
            r.metadata.get("trace_id"),
            Some("5b8efff798038103d269b633813fc60c")
        );
        let r = &d.content.records[1];
        assert_eq!(r.level, Level::Debug);
        assert_eq!(r.time_ns, 1_700_000_000_000_000_000);
        assert_eq!(&r.line[..], br#"{"a":1}"#);
        let last = &d.content.records[2];
        assert_eq!(
            d.content.streams[last.stream as usize].get("service_name"),
            Some("unknown_service")
        );
        assert!(decode_json(b"[1]").is_err());
        assert!(decode_json(
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"attributes":[{"value":{}}]}]}]}]}"#
        )
        .is_err());
    }

    #[test]
    fn damaged_protobuf_is_an_error_never_a_panic() {
        let req = request();
        for n in 0..req.len() {
            let _ = decode_proto(&req[..n]);
        }
        let mut flipped = req.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0x55;
            let _ = decode_proto(&flipped);
            flipped[i] ^= 0x55;
        }
        // A value nested past the limit.
        let mut any = Writer::default();
        any.bytes(1, b"x");
        for _ in 0..40 {
            let mut arr = Writer::default();
            arr.message(1, &any);
            let mut next = Writer::default();
            next.message(5, &arr);
            any = next;
        }
        assert!(any_proto(&any.buf, 0).is_err());
    }

    #[test]
    fn base64_and_severity_names() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(severity_from_name("SEVERITY_NUMBER_WARN"), 13);
        assert_eq!(severity_from_name("SEVERITY_NUMBER_ERROR3"), 19);
        assert_eq!(severity_from_name("nonsense"), 0);
    }
}
