//! Edge intelligence end to end, with the real agent and aggregator: records arrive
//! with template ids and the aggregator's patterns view counts them exactly; a source
//! shipped as aggregates only stores no line yet its counts are exact; an error burst
//! after the warm-up becomes an anomaly event the aggregator lists (API and CLI); the
//! miner's templates are kept in the agent's state directory.

use heimdall_tests::get_json as get;
use heimdall_tests::{bins, free_port, metric, stored_rows, wait_for_count, AgentOptions, Cluster};
use std::io::Write;
use std::time::{Duration, Instant};

pub(crate) fn enc(q: &str) -> String {
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

#[test]
fn templates_aggregates_and_anomalies_reach_the_aggregator() {
    let mut c = Cluster::start().unwrap();
    let noisy = c.root.join("noisy");
    std::fs::create_dir_all(&noisy).unwrap();
    let port = free_port();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let mut agent = c
        .agent(
            "intel-a",
            AgentOptions {
                metrics_listen: format!("127.0.0.1:{port}"),
                extra: format!(
                    "[[files]]\ninclude = [\"{}/*.log\"]\nship = \"aggregates_only\"\npoll_interval = \"100ms\"\n[aggregate]\nwindow = \"1s\"\n[anomaly]\nwarmup = \"8s\"\n",
                    noisy.display()
                ),
                ..AgentOptions::default()
            },
        )
        .unwrap();

    // Two templates on the shipped source, a third on the aggregates-only one.
    let mut text = String::new();
    for i in 0..300 {
        text.push_str(&format!(
            "user {i} logged in from 10.0.{}.{}\n",
            i / 200,
            i % 200
        ));
    }
    for i in 0..200 {
        text.push_str(&format!("GET /api/items/{i} 200 {}ms\n", i % 37));
    }
    std::fs::write(c.logs.join("app.log"), &text).unwrap();
    let mut debug = String::new();
    for i in 0..1000 {
        debug.push_str(&format!("debug tick {i} queue depth {}\n", i % 13));
    }
    std::fs::write(noisy.join("debug.log"), &debug).unwrap();
    assert_eq!(
        wait_for_count(500, Duration::from_secs(60), || c.count()),
        500
    );

    // Patterns: the two templates with exact counts (the aggregates ride in the same
    // batches as the lines, so they are there once the lines are).
    let api = c.agg.url();
    let sel = enc(r#"{source=~".*app.log"}"#);
    let v = get(&format!(
        "{api}/loki/api/v1/patterns?query={sel}&since=1h&step=1h"
    ));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{v}");
    assert_eq!(data[0]["total"], 300);
    // Loki's placeholder, and the level of the lines.
    assert_eq!(data[0]["pattern"], "user <_> logged in from <_>");
    assert!(data[0]["level"].is_string(), "{v}");
    assert_eq!(data[1]["total"], 200);
    assert_eq!(data[1]["pattern"], "GET <_> <_> <_>");
    // Samples on multiples of the step, their counts adding up to the total.
    let samples = data[0]["samples"].as_array().unwrap();
    assert!(
        samples.iter().all(|s| s[0].as_i64().unwrap() % 3600 == 0),
        "{v}"
    );
    assert_eq!(
        samples.iter().map(|s| s[1].as_u64().unwrap()).sum::<u64>(),
        300
    );
    let rows = stored_rows(&c.agg.db()).unwrap();
    let ids: std::collections::HashSet<u64> = rows.iter().map(|r| r.template_id).collect();
    assert_eq!(ids.len(), 2, "stored rows carry the two template ids");

    // Aggregates only: no line stored, every record counted.
    let sel = enc(r#"{source=~".*debug.log"}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    let counted = loop {
        let v = get(&format!(
            "{api}/api/v1/aggregates?query={sel}&since=1h&step=1h&by=level"
        ));
        let n: u64 = v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["values"].as_array().unwrap().clone())
            .map(|p| p[1].as_str().unwrap().parse::<u64>().unwrap())
            .sum();
        if n >= 1000 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(counted, 1000);
    assert!(
        !rows
            .iter()
            .any(|r| r.labels.get("source").unwrap_or("").ends_with("debug.log")),
        "an aggregates-only source stores no line"
    );
    let v = get(&format!(
        "{api}/api/v1/aggregates?query={sel}&since=1h&step=1h&measure=shipped"
    ));
    assert_eq!(v["data"]["result"][0]["values"][0][1], "0");

    // Steady traffic through the warm-up, then an error burst on a new template.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(c.logs.join("app.log"))
        .unwrap();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(12) {
        for _ in 0..10 {
            writeln!(f, "INFO heartbeat ok seq={n}").unwrap();
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..400 {
        writeln!(
            f,
            "ERROR db connection refused to 10.9.9.{}:5432 attempt {i}",
            i % 4
        )
        .unwrap();
    }
    drop(f);
    let sel = enc(r#"{source=~".*app.log"}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let v = get(&format!("{api}/api/v1/anomalies?query={sel}&since=1h"));
        let ev = v["data"].as_array().unwrap().clone();
        if ev
            .iter()
            .any(|e| e["samples"].to_string().contains("db connection refused"))
            || Instant::now() > deadline
        {
            break ev;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let burst = events
        .iter()
        .find(|e| e["samples"].to_string().contains("db connection refused"))
        .unwrap_or_else(|| panic!("no anomaly event for the burst: {events:?}"));
    assert!(
        ["rate_spike", "error_ratio", "new_templates"].contains(&burst["kind"].as_str().unwrap()),
        "{burst}"
    );
    assert!(burst["score"].as_f64().unwrap() >= 1.0);
    assert_eq!(burst["stream"]["agent"], "intel-a");
    assert!(burst["templates"]
        .to_string()
        .contains("db connection refused to <*> attempt <*>"));
    assert!(
        metric(&metrics_url, "heimdall_agent_anomalies_sent_total").unwrap_or(0.0) >= 1.0,
        "events went ahead on their own stream"
    );
    // No anomaly during the warm-up or the steady part.
    assert!(
        !events.iter().any(
            |e| e["samples"].to_string().contains("heartbeat ok") && e["kind"] != "error_ratio"
        ),
        "{events:?}"
    );

    // The CLI lists it.
    let out = std::process::Command::new(&bins().cli)
        .args(["--addr", &api, "anomalies", "--since", "1h"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("db connection refused"), "{stdout}");
    let out = std::process::Command::new(&bins().cli)
        .args(["--addr", &api, "patterns", r#"{source=~".*app.log"}"#])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("user <_> logged in from <_>"), "{stdout}");

    // The miner's templates survive the agent.
    agent.proc.terminate(Duration::from_secs(20)).unwrap();
    let dir = agent.state_dir.join("templates");
    // One JSON object per template after the header: its tree leaf and its tokens.
    let saved: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .flat_map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap();
            assert!(text.starts_with("# heimdall templates v2\n"), "{text}");
            text.lines()
                .skip(1)
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    let toks: Vec<&str> = v["tokens"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t.as_str().unwrap())
                        .collect();
                    toks.join(" ")
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        saved.iter().any(|t| t == "user <*> logged in from <*>"),
        "{saved:?}"
    );
    assert!(
        saved.iter().any(|t| t == "debug tick <*> queue depth <*>"),
        "{saved:?}"
    );
    c.agg.proc.terminate(Duration::from_secs(20)).unwrap();
}

/// The detector's baselines survive a restart: after a graceful stop and a start, a
/// burst of errors right away is an anomaly event, without a second warm-up (a
/// detector starting afresh would say nothing for its 8 s warm-up); when the burst is
/// over, the event ends.
#[test]
fn anomaly_baselines_survive_a_restart_and_anomalies_end() {
    let c = Cluster::start().unwrap();
    let mut a = c
        .agent(
            "intel-r",
            AgentOptions {
                extra: "[aggregate]\nwindow = \"1s\"\n[anomaly]\nwarmup = \"8s\"\n".into(),
                ..AgentOptions::default()
            },
        )
        .unwrap();
    let log = c.logs.join("pay.log");
    let steady = |f: &mut std::fs::File, d: Duration, n: &mut u64| {
        let started = Instant::now();
        while started.elapsed() < d {
            for _ in 0..10 {
                writeln!(f, "INFO charge ok seq={n}").unwrap();
                *n += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut f = std::fs::File::create(&log).unwrap();
    let mut n = 0;
    steady(&mut f, Duration::from_secs(11), &mut n);
    a.proc.terminate(Duration::from_secs(15)).unwrap();
    let state = a.state_dir.join("anomaly-baselines.json");
    assert!(state.exists(), "baselines saved at shutdown");
    a.restart().unwrap();
    steady(&mut f, Duration::from_secs(2), &mut n);
    let burst_at = Instant::now();
    for i in 0..400 {
        writeln!(f, "ERROR charge {i} failed: gateway connection refused").unwrap();
    }
    drop(f);
    let url = format!("{}/api/v1/anomalies?since=1h", c.agg.url());
    let found = loop {
        let v = get(&url);
        let ev = v["data"].as_array().unwrap().clone();
        if let Some(e) = ev.iter().find(|e| {
            e["samples"]
                .to_string()
                .contains("gateway connection refused")
        }) {
            break e.clone();
        }
        assert!(
            burst_at.elapsed() < Duration::from_secs(5),
            "no anomaly within 5 s of the burst, before a new warm-up could end: {ev:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // A burst of a message never seen before: a new template that keeps coming, a
    // spike, or a jump of the error share, whichever the detector names first.
    assert!(
        ["rate_spike", "error_ratio", "new_templates"].contains(&found["kind"].as_str().unwrap()),
        "{found}"
    );
    // The burst is over: the agent says so, and the aggregator records when.
    let id = found["id"].as_str().unwrap().to_owned();
    let ended = wait_for_count(1, Duration::from_secs(15), || {
        get(&url)["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["id"] == id.as_str() && e["ended_ns"].as_i64().is_some())
            .count() as u64
    });
    assert_eq!(ended, 1, "the anomaly {id} never ended");
}
