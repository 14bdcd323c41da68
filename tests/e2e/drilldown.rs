//! What Grafana's Loki data source and Logs Drilldown send when a user opens Drilldown,
//! picks a service, opens its Patterns, Fields and Labels tabs and filters by a field,
//! replayed against a real aggregator, each answer checked field by field against the
//! shapes Loki documents.

use heimdall_tests::{query_lines, wait_for_count, AgentOptions, Cluster};
use serde_json::{json, Value};
use std::time::Duration;

const S: i64 = 1_000_000_000;

fn now_ns() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64
}

/// An RFC 3339 time, as Drilldown sends `start` and `end` (`toISOString()`).
fn iso(ns: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

struct Api {
    base: String,
}

impl Api {
    fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let mut r = ureq::get(&format!("{}/loki/api/v1/{path}", self.base));
        for (k, v) in params {
            r = r.query(k, v);
        }
        r.set("X-Query-Tags", "Source=grafana-lokiexplore-app")
            .call()
            .unwrap_or_else(|e| panic!("{path} {params:?}: {e}"))
            .into_json()
            .unwrap()
    }

    /// A data query as Grafana sends it: ns times, `step` in milliseconds, the
    /// categorize-labels header on log queries.
    fn range(&self, query: &str, start: i64, end: i64, step_ms: i64, limit: usize) -> Value {
        ureq::get(&format!("{}/loki/api/v1/query_range", self.base))
            .set("X-Loki-Response-Encoding-Flags", "categorize-labels")
            .query("query", query)
            .query("start", &start.to_string())
            .query("end", &end.to_string())
            .query("step", &format!("{step_ms}ms"))
            .query("limit", &limit.to_string())
            .query("direction", "backward")
            .call()
            .unwrap_or_else(|e| panic!("{query}: {e}"))
            .into_json()
            .unwrap()
    }
}

/// Sum of a matrix answer's values by the given label.
fn sums_by(v: &Value, label: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for s in v["data"]["result"].as_array().unwrap() {
        let k = s["metric"][label].as_str().unwrap_or("").to_owned();
        let n: f64 = s["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_str().unwrap().parse::<f64>().unwrap())
            .sum();
        *out.entry(k).or_default() += n;
    }
    out
}

#[test]
fn drilldown_request_sequence_gets_lokis_answers() {
    let c = Cluster::start().unwrap();
    let api = Api { base: c.agg.url() };
    let now = now_ns();
    let t0 = now - 600 * S;
    // Two services: `api` in logfmt with a trace id as structured metadata, `web` in
    // JSON; a numeric label Drilldown must not offer as a tab.
    let mut api_values = Vec::new();
    let mut api_bytes = 0usize;
    for i in 0..60i64 {
        let (level, status, dur) = match i % 3 {
            0 => ("info", 200, "12ms"),
            1 => ("warn", 404, "250ms"),
            _ => ("error", 500, "1.5s"),
        };
        let line =
            format!("level={level} method=GET path=/v1/items/{i} status={status} duration={dur}");
        api_bytes += line.len();
        api_values
            .push(json!([(t0 + i * 7 * S).to_string(), line, {"trace_id": format!("{i:032x}")}]));
    }
    let web_values: Vec<Value> = (0..30i64)
        .map(|i| {
            json!([
                (t0 + i * 11 * S).to_string(),
                json!({"level": if i % 5 == 0 { "error" } else { "info" }, "msg": "render", "user": {"id": i, "plan": "pro"}, "ms": 3.5}).to_string()
            ])
        })
        .collect();
    let (code, body) = heimdall_tests::post_json(
        &format!("{}/loki/api/v1/push", api.base),
        None,
        &json!({"streams": [
            {"stream": {"service_name": "api", "cluster": "eu-1", "shard": "3"}, "values": api_values},
            {"stream": {"app": "web", "cluster": "eu-1", "shard": "4"}, "values": web_values},
        ]}),
    );
    assert_eq!(code, 204, "{body}");
    // An agent's templates, for the Patterns tab.
    let agent = c
        .agent(
            "dd-agent",
            AgentOptions {
                files_extra: "labels = { service = \"worker\" }".into(),
                ..AgentOptions::default()
            },
        )
        .unwrap();
    let mut worker = String::new();
    for i in 0..40 {
        worker.push_str(&format!("INFO job {i} finished in {} ms\n", 10 + i));
    }
    std::fs::write(c.logs.join("worker.log"), &worker).unwrap();
    assert_eq!(
        wait_for_count(130, Duration::from_secs(30), || c.count()),
        130
    );
    let end = now_ns() + S;
    let (start_iso, end_iso) = (iso(t0 - 60 * S), iso(end));
    let range = [("start", start_iso.as_str()), ("end", end_iso.as_str())];

    // Opening the app: limits, the tabs' candidate labels, the service list.
    let limits = api.get("drilldown-limits", &[]);
    assert_eq!(limits["pattern_ingester_enabled"], true, "{limits}");
    assert!(limits["version"].as_str().unwrap() >= "3.6.0", "{limits}");
    assert_eq!(limits["limits"]["volume_enabled"], true);
    assert!(
        limits["limits"]["max_entries_limit_per_query"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(limits["limits"]["retention_period"].is_string());
    let info = api.get("status/buildinfo", &[]);
    assert_eq!(info["version"], limits["version"]);

    let dl = api.get("detected_labels", &[range[0], range[1], ("query", "")]);
    let labels: Vec<&str> = dl["detectedLabels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    assert!(labels.contains(&"service_name"), "{dl}");
    assert!(labels.contains(&"cluster"), "{dl}");
    assert!(!labels.contains(&"shard"), "numbers only: {dl}");
    let svc = dl["detectedLabels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["label"] == "service_name")
        .unwrap();
    assert_eq!(svc["cardinality"], 3, "api, web, worker: {dl}");

    let vol = api.get(
        "index/volume",
        &[
            range[0],
            range[1],
            ("limit", "5000"),
            ("query", "{service_name=~`.+`}"),
        ],
    );
    assert_eq!(vol["status"], "success");
    assert_eq!(vol["data"]["resultType"], "vector", "{vol}");
    let result = vol["data"]["result"].as_array().unwrap();
    let api_vol = result
        .iter()
        .find(|r| r["metric"]["service_name"] == "api")
        .unwrap_or_else(|| panic!("{vol}"));
    assert_eq!(
        api_vol["metric"].as_object().unwrap().len(),
        1,
        "only the label the matchers name: {vol}"
    );
    assert_eq!(api_vol["value"][1], api_bytes.to_string(), "bytes: {vol}");
    assert!(api_vol["value"][0].is_number());
    assert_eq!(
        result[0]["metric"]["service_name"], "api",
        "largest first: {vol}"
    );
    // Per label name, and over time.
    let by_label = api.get(
        "index/volume",
        &[
            range[0],
            range[1],
            ("query", "{cluster=\"eu-1\"}"),
            ("aggregateBy", "labels"),
        ],
    );
    let names: Vec<&Value> = by_label["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["metric"])
        .collect();
    assert!(names.contains(&&json!({"cluster": ""})), "{by_label}");
    let vr = api.get(
        "index/volume_range",
        &[
            range[0],
            range[1],
            ("query", "{service_name=\"api\"}"),
            ("step", "60"),
        ],
    );
    assert_eq!(vr["data"]["resultType"], "matrix", "{vr}");
    let total: f64 = vr["data"]["result"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total as usize, api_bytes);
    assert!(
        vr["data"]["result"][0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p[0].as_f64().unwrap().fract() != 0.0
                || p[0].as_f64().unwrap() as i64 % 60 != 0),
        "stamped at the end of their step: {vr}"
    );
    let bad = ureq::get(&format!("{}/loki/api/v1/index/volume", api.base))
        .query("query", "{service_name=\"api\"}")
        .query("aggregateBy", "streams")
        .call();
    assert!(matches!(bad, Err(ureq::Error::Status(400, _))), "{bad:?}");

    // The service list's sparklines and the levels.
    let levels = api.range(
        r#"sum by (detected_level) (count_over_time({ service_name="api" } [15s]))"#,
        t0 - 60 * S,
        end,
        15_000,
        0,
    );
    let by_level = sums_by(&levels, "detected_level");
    assert_eq!(by_level.get("info"), Some(&20.0), "{levels}");
    assert_eq!(by_level.get("warn"), Some(&20.0));
    assert_eq!(by_level.get("error"), Some(&20.0));
    let lv = api.get(
        "label/detected_level/values",
        &[range[0], range[1], ("query", "{service_name=\"api\"}")],
    );
    assert_eq!(lv["data"], json!(["info", "warn", "error"]), "{lv}");
    let lvf = api.get(
        "detected_field/detected_level/values",
        &[range[0], range[1], ("query", "{service_name=\"api\"}")],
    );
    let mut got: Vec<&str> = lvf["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, vec!["error", "info", "warn"], "{lvf}");

    // Picking `api`: its logs (categorized), fields, labels and patterns.
    let logs = api.range("{service_name=`api` }", t0 - 60 * S, end, 15_000, 100);
    assert_eq!(logs["data"]["encodingFlags"], json!(["categorize-labels"]));
    let s0 = &logs["data"]["result"][0];
    assert!(s0["stream"].get("trace_id").is_none(), "{s0}");
    let e0 = &s0["values"][0];
    assert_eq!(e0.as_array().unwrap().len(), 3, "{e0}");
    assert!(e0[2]["structuredMetadata"]["trace_id"].is_string(), "{e0}");

    let pipeline =
        r#"{service_name="api"}       | json  | logfmt | drop __error__, __error_details__ "#;
    let df = api.get(
        "detected_fields",
        &[range[0], range[1], ("query", pipeline)],
    );
    let field = |name: &str| {
        df["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["label"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no field {name}: {df}"))
    };
    assert_eq!(df["limit"], 1000);
    assert_eq!(field("status")["type"], "int");
    assert_eq!(field("status")["parsers"], json!(["logfmt"]));
    assert_eq!(field("status")["cardinality"], 3);
    assert_eq!(field("duration")["type"], "duration");
    assert_eq!(
        field("trace_id")["parsers"],
        Value::Null,
        "structured metadata"
    );
    assert_eq!(field("trace_id")["cardinality"], 60);
    assert!(field("trace_id").get("jsonPath").is_none());
    let web = api.get(
        "detected_fields",
        &[
            range[0],
            range[1],
            (
                "query",
                r#"{service_name="web"} | json | drop __error__, __error_details__"#,
            ),
        ],
    );
    let uid = web["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["label"] == "user_id")
        .unwrap_or_else(|| panic!("{web}"));
    assert_eq!(uid["parsers"], json!(["json"]));
    assert_eq!(uid["jsonPath"], json!(["user", "id"]));
    assert_eq!(uid["type"], "int");
    let ms = web["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["label"] == "ms")
        .unwrap();
    assert_eq!(ms["type"], "float");
    let none = api.get(
        "detected_fields",
        &[range[0], range[1], ("query", r#"{service_name="nothing"}"#)],
    );
    assert_eq!(none, json!({}));

    let dl = api.get(
        "detected_labels",
        &[range[0], range[1], ("query", r#"{service_name="api"}"#)],
    );
    assert_eq!(
        dl["detectedLabels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["label"] == "cluster")
            .unwrap()["cardinality"],
        1
    );
    // Labels tab: one panel per label.
    let by_cluster = api.range(
        r#"sum(count_over_time({service_name="api" ,cluster != ""} [15s])) by (cluster)"#,
        t0 - 60 * S,
        end,
        15_000,
        0,
    );
    assert_eq!(sums_by(&by_cluster, "cluster").get("eu-1"), Some(&60.0));

    // Patterns: the agent's templates, with level and samples on multiples of the step.
    let pats = api.get(
        "patterns",
        &[
            range[0],
            range[1],
            ("query", r#"{service_name="worker"}"#),
            ("step", "30s"),
        ],
    );
    assert_eq!(pats["status"], "success");
    let p0 = &pats["data"][0];
    // The unit after a number is part of the value.
    assert_eq!(p0["pattern"], "INFO job <_> finished in <_> <_>", "{pats}");
    assert_eq!(p0["level"], "info");
    let samples = p0["samples"].as_array().unwrap();
    assert!(samples.iter().all(|s| s[0].as_i64().unwrap() % 30 == 0));
    assert_eq!(
        samples.iter().map(|s| s[1].as_i64().unwrap()).sum::<i64>(),
        40
    );
    drop(agent);

    // Fields tab: a panel per field; then filtering by one.
    let by_status = api.range(
        &format!(r#"sum by (status) (count_over_time({pipeline} | status!="" [15s]))"#),
        t0 - 60 * S,
        end,
        15_000,
        0,
    );
    assert_eq!(sums_by(&by_status, "status").get("500"), Some(&20.0));
    let values = api.get(
        "detected_field/status/values",
        &[range[0], range[1], ("query", pipeline)],
    );
    let mut v: Vec<&str> = values["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    v.sort();
    assert_eq!(v, vec!["200", "404", "500"]);
    assert_eq!(values["limit"], 1000);
    let filtered = query_lines(
        &api.base,
        &format!(
            r#"{{service_name="api"}} | detected_level="error" {}| status="500""#,
            &pipeline[20..]
        ),
        1000,
    );
    assert_eq!(filtered.len(), 20);
    let by_trace = query_lines(
        &api.base,
        &format!(r#"{{service_name="api"}} | trace_id="{:032x}""#, 7),
        1000,
    );
    assert_eq!(by_trace.len(), 1);

    // A duration field's panel: its average over time, unwrapped.
    let avg = api.range(
        &format!(
            r#"avg_over_time({pipeline} | duration!="" | unwrap duration(duration) | __error__="" [15m]) by ()"#
        ),
        end,
        end,
        15_000,
        0,
    );
    let got: f64 = avg["data"]["result"][0]["values"][0][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((got - (0.012 + 0.25 + 1.5) / 3.0).abs() < 1e-9, "{avg}");
    // A pattern filter, as clicking a pattern adds it.
    let by_pattern = query_lines(
        &api.base,
        r#"{service_name="api"} |> "<_> status=500 <_>""#,
        1000,
    );
    assert_eq!(by_pattern.len(), 20);

    // The query editor's formatter, and Grafana's health check.
    let f = api.get("format_query", &[("query", r#"{app="x"}|="a"  | json"#)]);
    assert_eq!(f["status"], "success");
    assert_eq!(f["data"], r#"{app="x"} |= "a" | json"#);
    let bad = ureq::get(&format!("{}/loki/api/v1/format_query", api.base))
        .query("query", "{app=")
        .call();
    let Err(ureq::Error::Status(400, r)) = bad else {
        panic!("{bad:?}")
    };
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["status"], "invalid-query", "{v}");
    let health: Value = ureq::get(&format!("{}/loki/api/v1/query", api.base))
        .query("query", "vector(1)+vector(1)")
        .query("time", "4000000000")
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(health["data"]["result"][0]["value"][1], "2", "{health}");
}
