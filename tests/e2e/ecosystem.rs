//! Other people's clients, unchanged, feed Heimdall: the OpenTelemetry Python SDK with
//! its OTLP/HTTP protobuf exporter, an OTLP JSON body as the collector sends it,
//! winston-loki from npm (protobuf+snappy by default, JSON with structured metadata),
//! and what each sent is queried back through the Loki API with its labels,
//! structured metadata and level.

use heimdall_tests::{node_modules, python, query_lines, wait_for_count, Cluster};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

fn now_ns() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64
}

/// `query_range` with Loki 3's `categorize-labels` encoding, as Grafana asks.
fn categorized(base: &str, query: &str) -> Value {
    let end = now_ns() + 3_600_000_000_000;
    ureq::get(&format!("{base}/loki/api/v1/query_range"))
        .set("X-Loki-Response-Encoding-Flags", "categorize-labels")
        .query("query", query)
        .query("start", &(end - 7 * 86_400_000_000_000).to_string())
        .query("end", &end.to_string())
        .query("limit", "1000")
        .call()
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .into_json()
        .unwrap()
}

/// The entries of a categorized answer: (stream labels, line, structured metadata).
fn entries(v: &Value) -> Vec<(Value, String, Value)> {
    let mut out = Vec::new();
    for s in v["data"]["result"].as_array().unwrap() {
        for e in s["values"].as_array().unwrap() {
            out.push((
                s["stream"].clone(),
                e[1].as_str().unwrap().to_owned(),
                e.get(2)
                    .map(|m| m["structuredMetadata"].clone())
                    .unwrap_or(Value::Null),
            ));
        }
    }
    out
}

fn metric(base: &str, name: &str) -> f64 {
    let text = ureq::get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const OTEL_SCRIPT: &str = r#"
import logging, sys
from opentelemetry import trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

resource = Resource.create({"service.name": "checkout", "k8s.namespace.name": "shop", "host.name": "web-7"})
provider = LoggerProvider(resource=resource)
provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=sys.argv[1])))
set_logger_provider(provider)
trace.set_tracer_provider(TracerProvider(resource=resource))
log = logging.getLogger("checkout.payments")
log.setLevel(logging.INFO)
log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=provider))
with trace.get_tracer("checkout").start_as_current_span("pay") as span:
    log.error("payment declined for order %s", "o-1", extra={"order.id": "o-1"})
    print(format(span.get_span_context().trace_id, "032x"))
for i in range(int(sys.argv[2])):
    log.warning("slow response %d", i)
provider.shutdown()
"#;

/// The OpenTelemetry Python SDK's OTLP/HTTP protobuf exporter, on the OTLP listener's
/// default path: resource attributes become labels or structured metadata as in Loki 3,
/// the span's trace id is metadata a label filter finds, severity is the level.
#[test]
fn otel_python_sdk_logs_are_stored_with_labels_metadata_and_levels() {
    let c = Cluster::start().unwrap();
    let base = c.agg.url();
    let otlp = c.agg.addrs.otlp.expect("the OTLP listener runs");
    let out = Command::new(python())
        .args(["-c", OTEL_SCRIPT, &format!("http://{otlp}/v1/logs"), "20"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "OTel SDK: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    let sel = r#"{service_name="checkout"}"#;
    assert_eq!(
        wait_for_count(
            21,
            Duration::from_secs(20),
            || query_lines(&base, sel, 100).len() as u64
        ),
        21
    );
    // The trace id is structured metadata: a label filter after the selector finds
    // the one line, and it never became a stream label.
    let v = categorized(&base, &format!(r#"{sel} | trace_id="{trace_id}""#));
    assert_eq!(
        v["data"]["encodingFlags"],
        json!(["categorize-labels"]),
        "{v}"
    );
    let got = entries(&v);
    assert_eq!(got.len(), 1, "{v}");
    let (stream, line, meta) = &got[0];
    assert_eq!(line, "payment declined for order o-1");
    assert_eq!(stream["service_name"], "checkout", "{stream}");
    assert_eq!(stream["k8s_namespace_name"], "shop", "{stream}");
    assert!(stream.get("trace_id").is_none(), "{stream}");
    assert!(stream.get("host_name").is_none(), "{stream}");
    assert_eq!(meta["trace_id"], trace_id.as_str(), "{meta}");
    assert_eq!(meta["host_name"], "web-7", "{meta}");
    assert_eq!(meta["order_id"], "o-1", "{meta}");
    assert_eq!(meta["scope_name"], "checkout.payments", "{meta}");
    assert_eq!(meta["detected_level"], "error", "{meta}");
    assert_eq!(meta["span_id"].as_str().map(str::len), Some(16), "{meta}");
    // Severity is the level: 20 warnings.
    let warn = query_lines(&base, &format!(r#"{sel} | detected_level="warn""#), 100);
    assert_eq!(warn.len(), 20);
    // Streams: one (the metadata made none).
    let series: Value = ureq::get(&format!("{base}/loki/api/v1/series"))
        .query("match[]", sel)
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(series["data"].as_array().unwrap().len(), 1, "{series}");
    assert!(
        metric(
            &base,
            "heimdall_aggregator_push_lines_total{format=\"otlp_protobuf\""
        ) >= 21.0
    );
}

/// An OTLP JSON body as the collector's `otlphttp` exporter sends it (gzip), on the
/// API's `/otlp/v1/logs`: stored, and records too old are counted in
/// `partialSuccess` while the rest are kept. A resource cannot pass for an agent.
#[test]
fn otlp_json_from_the_collector_is_stored_and_partially_refused() {
    use std::io::Write;
    let c = Cluster::start().unwrap();
    let base = c.agg.url();
    let now = now_ns();
    let body = json!({"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "gateway"}},
            {"key": "agent", "value": {"stringValue": "web1"}},
            {"key": "cloud.region", "value": {"stringValue": "eu-west-1"}}
        ]},
        "scopeLogs": [{"scope": {"name": "nginx"}, "logRecords": [
            {"timeUnixNano": now.to_string(), "severityText": "INFO", "body": {"stringValue": "GET /health 200"},
             "attributes": [{"key": "http.status_code", "value": {"intValue": "200"}}]},
            {"timeUnixNano": (now + 1).to_string(), "severityNumber": 17, "body": {"stringValue": "upstream timed out"}},
            {"timeUnixNano": (now - 30 * 86_400_000_000_000i64).to_string(), "body": {"stringValue": "a month old"}}
        ]}]
    }]});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&serde_json::to_vec(&body).unwrap()).unwrap();
    let r = ureq::post(&format!("{base}/otlp/v1/logs"))
        .set("Content-Type", "application/json")
        .set("Content-Encoding", "gzip")
        .send_bytes(&gz.finish().unwrap())
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.into_json().unwrap();
    assert_eq!(
        answer["partialSuccess"]["rejectedLogRecords"], "1",
        "{answer}"
    );
    assert!(
        answer["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("too old"),
        "{answer}"
    );
    let sel = r#"{service_name="gateway"}"#;
    assert_eq!(
        wait_for_count(
            2,
            Duration::from_secs(20),
            || query_lines(&base, sel, 100).len() as u64
        ),
        2
    );
    let got = entries(&categorized(&base, sel));
    assert_eq!(got.len(), 2);
    for (stream, line, meta) in &got {
        assert_eq!(stream["cloud_region"], "eu-west-1", "{stream}");
        assert_eq!(
            stream["agent"], "push",
            "the caller, not the resource: {stream}"
        );
        assert_eq!(
            meta["agent_extracted"], "web1",
            "kept as metadata, renamed as it names a stream label: {meta}"
        );
        let level = if line.starts_with("GET") {
            "info"
        } else {
            "error"
        };
        assert_eq!(meta["detected_level"], level, "{line}: {meta}");
    }
    let status = query_lines(&base, &format!(r#"{sel} | http_status_code="200""#), 10);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].line, "GET /health 200");
    // Not OTLP at all: a 400 with a google.rpc.Status in JSON.
    let r = ureq::post(&format!("{base}/otlp/v1/logs"))
        .set("Content-Type", "application/json")
        .send_string("[1, 2]");
    let Err(ureq::Error::Status(400, r)) = r else {
        panic!("{r:?}")
    };
    let v: Value = r.into_json().unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("resourceLogs"),
        "{v}"
    );
}

const WINSTON_SCRIPT: &str = r#"
const winston = require('winston');
const LokiTransport = require('winston-loki');
require('snappy');  // protobuf needs it; without it winston-loki would fall back to JSON
const json = process.argv[2] === 'json';
const logger = winston.createLogger({transports: [new LokiTransport({
  host: process.argv[1], json, batching: false, labels: {app: 'shop-node', wire: process.argv[2]},
  onConnectionError: (e) => { console.error('push failed', e); process.exitCode = 1; },
})]});
for (let i = 0; i < 5; i++) {
  logger.error('card declined ' + i, {user: 'u' + i, attempt: i});
}
logger.info('checkout ok');
setTimeout(() => process.exit(), 3000);
"#;

/// winston-loki from npm: its default protobuf+snappy push, and its JSON push whose
/// metadata goes in the third element of each value.
#[test]
fn winston_loki_pushes_protobuf_and_json_with_metadata() {
    let c = Cluster::start().unwrap();
    let base = c.agg.url();
    let modules = node_modules();
    for wire in ["protobuf", "json"] {
        let out = Command::new("node")
            .args(["-e", WINSTON_SCRIPT, &base, wire])
            .env("NODE_PATH", modules)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "winston-loki ({wire}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for wire in ["protobuf", "json"] {
        let sel = format!(r#"{{service_name="shop-node", wire="{wire}"}}"#);
        assert_eq!(
            wait_for_count(
                6,
                Duration::from_secs(20),
                || query_lines(&base, &sel, 100).len() as u64
            ),
            6,
            "{wire}"
        );
        let errors = query_lines(&base, &format!(r#"{sel} | detected_level="error""#), 100);
        assert_eq!(errors.len(), 5, "{wire}");
    }
    assert!(
        metric(
            &base,
            "heimdall_aggregator_push_lines_total{format=\"loki_protobuf\""
        ) >= 6.0
    );
    // The JSON push's metadata is stored per line and filterable.
    let got = entries(&categorized(
        &base,
        r#"{service_name="shop-node", wire="json"} | user="u3""#,
    ));
    assert_eq!(got.len(), 1);
    assert!(got[0].1.starts_with("card declined 3"), "{}", got[0].1);
    assert_eq!(got[0].2["attempt"], "3", "{}", got[0].2);
}

/// Structured metadata survives compaction: the segment keeps it in a `metadata`
/// column (JSON text that DuckDB reads), and the label filter finds the line there.
#[test]
fn structured_metadata_is_kept_in_warm_segments() {
    let c = Cluster::start_with(
        "[warm]\ncompact_after = \"1m\"\ninterval = \"200ms\"\n[store]\npartition = \"1m\"\n",
    )
    .unwrap();
    let base = c.agg.url();
    let old = now_ns() - 3 * 3_600_000_000_000;
    let values: Vec<Value> = (0..50)
        .map(|i| {
            json!([
                (old + i).to_string(),
                format!("request {i} done"),
                {"trace_id": format!("t{i:03}"), "tenant": if i % 2 == 0 { "a" } else { "b" }}
            ])
        })
        .collect();
    let (code, body) = heimdall_tests::post_json(
        &format!("{base}/loki/api/v1/push"),
        None,
        &json!({"streams": [{"stream": {"app": "meta-warm"}, "values": values}]}),
    );
    assert_eq!(code, 204, "{body}");
    // Compacted: the hot tier holds none of them.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while c.count() > 0 {
        assert!(std::time::Instant::now() < deadline, "not compacted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let sel = r#"{service_name="meta-warm"}"#;
    let hit = query_lines(&base, &format!(r#"{sel} | trace_id="t017""#), 100);
    assert_eq!(hit.len(), 1);
    assert_eq!(hit[0].line, "request 17 done");
    let a = query_lines(&base, &format!(r#"{sel} | tenant="a""#), 100);
    assert_eq!(a.len(), 25);
    let script = r#"
import sys, duckdb
con = duckdb.connect()
print(con.execute(f"SELECT count(*) FROM read_parquet('{sys.argv[1]}/**/*.parquet') WHERE json_extract_string(metadata, '$.trace_id') = 't017'").fetchone()[0])
"#;
    let out = Command::new(python())
        .args([
            "-c",
            script,
            c.agg.state_dir.join("segments").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}
