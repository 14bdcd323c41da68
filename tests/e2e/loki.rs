//! The Loki HTTP API end to end, with the real binaries: response shapes checked field
//! by field against Loki's documented ones (streams, matrix, vector, scalar, labels,
//! series, index stats, errors), Grafana's health-check and log-volume queries, a push
//! from a third-party Loki client library (python-logging-loki), API tokens with roles
//! (bearer and basic auth), and `heimdall tail -f` over the WebSocket tail endpoint.

use heimdall_tests::{bins, python, wait_for_count, AgentOptions, Cluster};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn enc(q: &str) -> String {
    let mut s = String::new();
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// GET with parameters; returns (status, JSON body).
fn get(base: &str, path: &str, params: &[(&str, &str)], token: Option<&str>) -> (u16, Value) {
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    let url = format!("{base}{path}?{}", q.join("&"));
    let mut req = ureq::get(&url).timeout(Duration::from_secs(20));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{url}: {e}"),
    }
}

fn ok(base: &str, path: &str, params: &[(&str, &str)]) -> Value {
    let (code, v) = get(base, path, params, None);
    assert_eq!(code, 200, "{path} {params:?}: {v}");
    assert_eq!(v["status"], "success", "{v}");
    v
}

/// Loki's `stats.summary` fields, each a number.
fn check_stats(v: &Value) {
    let s = &v["data"]["stats"]["summary"];
    for f in [
        "bytesProcessedPerSecond",
        "linesProcessedPerSecond",
        "totalBytesProcessed",
        "totalLinesProcessed",
        "execTime",
        "queueTime",
        "totalEntriesReturned",
    ] {
        assert!(s[f].is_number(), "stats.summary.{f} missing in {s}");
    }
    assert!(v["data"]["stats"]["querier"]["store"].is_object());
    assert!(v["data"]["stats"]["ingester"].is_object());
}

#[test]
fn loki_api_answers_in_lokis_shapes() {
    let c = Cluster::start().unwrap();
    let _agent = c.agent("loki-a", AgentOptions::default()).unwrap();
    let mut text = String::new();
    for i in 0..40 {
        text.push_str(&format!("INFO GET /items/{i} 200 took 12ms\n"));
    }
    for i in 0..15 {
        text.push_str(&format!(
            "{{\"level\":\"error\",\"msg\":\"db timeout\",\"status\":{},\"attempt\":{i}}}\n",
            500 + i % 4
        ));
    }
    for _ in 0..5 {
        text.push_str("WARN disk 91% full\n");
    }
    std::fs::write(c.logs.join("app.log"), text).unwrap();
    assert_eq!(
        wait_for_count(60, Duration::from_secs(30), || c.count()),
        60
    );
    let base = c.agg.url();
    let now = heimdall_common::record::now_ns();
    let start = (now - 3_600_000_000_000).to_string();
    let end = (now + 60_000_000_000).to_string();

    // Log query: `streams`, values as [string ns, string line], newest first.
    let v = ok(
        &base,
        "/loki/api/v1/query_range",
        &[
            ("query", r#"{host="loki-a"} |= "timeout""#),
            ("start", &start),
            ("end", &end),
            ("limit", "10"),
            ("direction", "backward"),
        ],
    );
    assert_eq!(v["data"]["resultType"], "streams");
    check_stats(&v);
    let result = v["data"]["result"].as_array().unwrap();
    let mut n = 0;
    let mut last = i64::MAX;
    for s in result {
        assert_eq!(s["stream"]["host"], "loki-a");
        assert_eq!(s["stream"]["detected_level"], "error");
        for e in s["values"].as_array().unwrap() {
            let ts: i64 = e[0].as_str().unwrap().parse().unwrap();
            assert!(ts <= last, "newest first");
            last = ts;
            assert!(e[1].as_str().unwrap().contains("db timeout"));
            n += 1;
        }
    }
    assert_eq!(n, 10, "the limit holds");
    assert_eq!(v["data"]["stats"]["summary"]["totalEntriesReturned"], 10);

    // Pipeline: json and a numeric label filter.
    let v = ok(
        &base,
        "/loki/api/v1/query_range",
        &[
            (
                "query",
                r#"{host="loki-a"} |= "{" | json | status >= 502 | line_format "{{.msg}} {{.status}}""#,
            ),
            ("start", &start),
            ("end", &end),
            ("limit", "100"),
        ],
    );
    let lines: Vec<String> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e[1].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(lines.len(), 7, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l == "db timeout 502" || l == "db timeout 503"),
        "{lines:?}"
    );

    // Metric range query: `matrix`, Grafana's step format, nanosecond start/end.
    let v = ok(
        &base,
        "/loki/api/v1/query_range",
        &[
            (
                "query",
                r#"sum by (level) (count_over_time({host="loki-a"}[1h]))"#,
            ),
            ("start", &start),
            ("end", &end),
            ("step", "60000ms"),
        ],
    );
    assert_eq!(v["data"]["resultType"], "matrix");
    check_stats(&v);
    let mut last_by_level = std::collections::BTreeMap::new();
    for s in v["data"]["result"].as_array().unwrap() {
        let m = s["metric"].as_object().unwrap();
        assert_eq!(m.len(), 1, "only the grouping label: {m:?}");
        let values = s["values"].as_array().unwrap();
        for p in values {
            assert!(p[0].is_number(), "sample time is a number: {p}");
            assert!(p[1].is_string(), "sample value is a string: {p}");
        }
        let last = values.last().unwrap()[1].as_str().unwrap().to_owned();
        last_by_level.insert(m["level"].as_str().unwrap().to_owned(), last);
    }
    assert_eq!(
        last_by_level.get("info").map(String::as_str),
        Some("40"),
        "{last_by_level:?}"
    );
    assert_eq!(last_by_level.get("error").map(String::as_str), Some("15"));
    assert_eq!(last_by_level.get("warn").map(String::as_str), Some("5"));

    // Grafana's log-volume query.
    let v = ok(
        &base,
        "/loki/api/v1/query_range",
        &[
            (
                "query",
                r#"sum by (level, detected_level) (count_over_time({host="loki-a"} | drop __error__ [1m]))"#,
            ),
            ("start", &start),
            ("end", &end),
            ("step", "60"),
        ],
    );
    let total: f64 = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(s["metric"]["detected_level"].is_string());
            // Steps a minute apart over one-minute windows: each line counts once.
            s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p[1].as_str().unwrap().parse::<f64>().unwrap())
                .sum::<f64>()
        })
        .sum();
    assert_eq!(total, 60.0, "{v}");

    // Grafana's health check, an instant query: `vector`.
    let v = ok(
        &base,
        "/loki/api/v1/query",
        &[("query", "vector(1)+vector(1)")],
    );
    assert_eq!(v["data"]["resultType"], "vector");
    let r = v["data"]["result"].as_array().unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["metric"], serde_json::json!({}));
    assert!(r[0]["value"][0].is_number());
    assert_eq!(r[0]["value"][1], "2");
    check_stats(&v);
    let v = ok(&base, "/loki/api/v1/query", &[("query", "1 + 1")]);
    assert_eq!(v["data"]["resultType"], "scalar");
    assert_eq!(v["data"]["result"][1], "2");
    let v = ok(
        &base,
        "/loki/api/v1/query",
        &[
            (
                "query",
                r#"topk(1, sum by (level) (count_over_time({host="loki-a"}[1h])))"#,
            ),
            ("time", &end),
        ],
    );
    let r = v["data"]["result"].as_array().unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["metric"]["level"], "info");
    assert_eq!(r[0]["value"][1], "40");

    // Labels, label values, series, index stats.
    let v = ok(
        &base,
        "/loki/api/v1/labels",
        &[("start", &start), ("end", &end)],
    );
    let names: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"host") && names.contains(&"source"),
        "{names:?}"
    );
    let v = ok(
        &base,
        "/loki/api/v1/label/host/values",
        &[("start", &start), ("end", &end)],
    );
    assert_eq!(v["data"], serde_json::json!(["loki-a"]));
    let v = ok(
        &base,
        "/loki/api/v1/series",
        &[
            ("match[]", r#"{host="loki-a"}"#),
            ("start", &start),
            ("end", &end),
        ],
    );
    let series = v["data"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["host"], "loki-a");
    let (code, v) = get(
        &base,
        "/loki/api/v1/index/stats",
        &[
            ("query", r#"{host="loki-a"}"#),
            ("start", &start),
            ("end", &end),
        ],
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(v["streams"], 1);
    assert_eq!(v["entries"], 60);
    assert!(v["bytes"].as_u64().unwrap() > 1000);
    assert!(v["chunks"].is_number());

    // Errors: JSON with a message; parse errors say where.
    let (code, v) = get(
        &base,
        "/loki/api/v1/query_range",
        &[("query", r#"sum(count_over_time({host="x"}[5m])"#)],
        None,
    );
    assert_eq!(code, 400);
    assert_eq!(v["status"], "error");
    assert!(
        v["message"].as_str().unwrap().contains("position 35"),
        "{v}"
    );
    let (code, v) = get(
        &base,
        "/loki/api/v1/query",
        &[("query", r#"{host="loki-a"}"#)],
        None,
    );
    assert_eq!(code, 400);
    assert!(
        v["message"].as_str().unwrap().contains("range query"),
        "{v}"
    );
    let (code, v) = get(
        &base,
        "/loki/api/v1/query_range",
        &[
            ("query", r#"count_over_time({host="loki-a"} | json [1h])"#),
            ("start", &start),
            ("end", &end),
        ],
        None,
    );
    assert_eq!(code, 400, "non-JSON lines make a pipeline error: {v}");
    assert!(
        v["message"].as_str().unwrap().contains("JSONParserErr"),
        "{v}"
    );

    // The CLI prints a metric query as a table.
    let out = Command::new(&bins().cli)
        .args([
            "--addr",
            &base,
            "query",
            r#"sum by (level) (count_over_time({host="loki-a"}[1h]))"#,
            "--instant",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.lines().next().unwrap().contains("SERIES"), "{text}");
    assert!(
        text.contains(r#"{level="error"}"#) && text.contains(" 15"),
        "{text}"
    );
    let out = Command::new(&bins().cli)
        .args(["--addr", &base, "labels", "host"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "loki-a");
}

const PUSH_SCRIPT: &str = r#"
import logging, sys, logging_loki
handler = logging_loki.LokiHandler(
    url=sys.argv[1] + "/loki/api/v1/push",
    tags={"app": "pyapp", "env": "test"},
    auth=("app", sys.argv[2]),
    version="1",
)
log = logging.getLogger("pyapp")
log.setLevel(logging.INFO)
log.addHandler(handler)
for i in range(int(sys.argv[3])):
    log.error("payment %s failed: card declined", sys.argv[4] + str(i), extra={"tags": {"service": "billing"}})
"#;

fn push_with_python(base: &str, token: &str, n: usize, tag: &str) {
    let out = Command::new(python())
        .args(["-c", PUSH_SCRIPT, base, token, &n.to_string(), tag])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python-logging-loki push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn third_party_client_pushes_with_tokens_and_cli_tails() {
    let dir = tempfile::tempdir().unwrap();
    let read_tok = "read-token-0123456789abcdef";
    let write_tok = "write-token-0123456789abcdef";
    std::fs::write(dir.path().join("read.token"), format!("{read_tok}\n")).unwrap();
    let write_sha: String = ring_sha256(write_tok);
    let extra = format!(
        "[[api.tokens]]\nname = \"grafana\"\nrole = \"read\"\ntoken_file = {:?}\n[[api.tokens]]\nname = \"app\"\nrole = \"write\"\nsha256 = \"{write_sha}\"\n",
        dir.path().join("read.token").display().to_string()
    );
    let c = Cluster::start_with(&extra).unwrap();
    let base = c.agg.url();

    // No token, a wrong token, a token without the role.
    let (code, v) = get(&base, "/loki/api/v1/labels", &[], None);
    assert_eq!(code, 401, "{v}");
    assert!(v["message"].as_str().unwrap().contains("token"));
    let (code, _) = get(
        &base,
        "/loki/api/v1/labels",
        &[],
        Some("nope-nope-nope-nope"),
    );
    assert_eq!(code, 401);
    let (code, _) = get(&base, "/loki/api/v1/labels", &[], Some(read_tok));
    assert_eq!(code, 200);
    let r = ureq::post(&format!("{base}/loki/api/v1/push"))
        .set("Authorization", &format!("Bearer {read_tok}"))
        .send_json(serde_json::json!({"streams": []}));
    assert!(
        matches!(r, Err(ureq::Error::Status(403, _))),
        "read tokens cannot push"
    );
    // /ready and /metrics stay open for probes and scrapers.
    assert_eq!(
        ureq::get(&format!("{base}/ready")).call().unwrap().status(),
        200
    );

    // A real Loki client pushes (basic auth with the write token as the password).
    push_with_python(&base, write_tok, 5, "A");
    let count = || {
        let (_, v) = get(
            &base,
            "/loki/api/v1/query_range",
            &[
                ("query", r#"{app="pyapp"}"#),
                ("since", "1h"),
                ("limit", "100"),
            ],
            Some(read_tok),
        );
        v["data"]["result"].as_array().map_or(0, |r| {
            r.iter()
                .map(|s| s["values"].as_array().unwrap().len())
                .sum::<usize>()
        }) as u64
    };
    assert_eq!(wait_for_count(5, Duration::from_secs(10), count), 5);
    let (_, v) = get(
        &base,
        "/loki/api/v1/query_range",
        &[
            ("query", r#"{app="pyapp", service="billing"} |= "A3""#),
            ("since", "1h"),
        ],
        Some(read_tok),
    );
    let s = &v["data"]["result"][0];
    assert_eq!(s["stream"]["env"], "test");
    assert_eq!(s["stream"]["severity"], "error", "the client's level tag");
    assert_eq!(s["stream"]["detected_level"], "error");
    assert_eq!(s["values"][0][1], "payment A3 failed: card declined");
    // Its stream's service_name: its `service` tag (before `app`, as in Loki's list).
    assert_eq!(s["stream"]["service_name"], "billing");

    // `heimdall tail -f` shows history, then new lines as they are stored.
    let mut tail = Command::new(&bins().cli)
        .args([
            "--addr",
            &base,
            "--token",
            read_tok,
            "tail",
            "-f",
            r#"{app="pyapp"} |= "failed""#,
            "-o",
            "raw",
            "-n",
            "100",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pushed = false;
    while seen
        .iter()
        .filter(|l: &&String| l.contains("payment B"))
        .count()
        < 3
        && Instant::now() < deadline
    {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
        if !pushed && seen.len() >= 5 {
            push_with_python(&base, write_tok, 3, "B");
            pushed = true;
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut tail.stderr.take().unwrap(), &mut err);
    let history = seen.iter().filter(|l| l.contains("payment A")).count();
    let live = seen.iter().filter(|l| l.contains("payment B")).count();
    assert_eq!((history, live), (5, 3), "tail output: {seen:?} {err}");
    let _ = std::io::stdout().flush();
}

fn ring_sha256(s: &str) -> String {
    heimdall_aggregator::api::auth::digest(s)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
