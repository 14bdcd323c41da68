//! Alerting benchmark, one run on this machine, real binaries:
//!
//! 1. **Alert latency**: from the moment a triggering line is appended to a file on an
//!    agent host to the moment a webhook receiver gets the notification. Agent and
//!    aggregator run with their default settings (batch timeout 1 s, group interval
//!    10 s, `group_wait` 0 s); each trial is a new alert instance (`group_by:
//!    [trial]`). 100 trials; p50, p99 and max. Baseline in the same run: the usual
//!    ruler → Alertmanager path, here Heimdall's alerts through a real Alertmanager with
//!    its default `group_wait` of 30 s to the same kind of webhook (a few trials).
//! 2. **Cost of 1,000 active rules**: the aggregator's CPU while lines arrive through
//!    the Loki push API at a steady rate over 1,000 streams, with 1,000 rules (one per
//!    stream, `count_over_time(...[5m])` with a line filter, evaluated every 10 s and on
//!    every commit touching their stream), against the same load with no rules.
//!
//! `cargo bench -p heimdall-benches --bench alerting` (`HEIMDALL_BENCH_TRIALS` for the
//! number of latency trials, default 100).

use heimdall_tests::sinks::{Alertmanager, HttpSink};
use heimdall_tests::{AgentOptions, Cluster};
use std::io::Write;
use std::time::{Duration, Instant};

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Runs `n` trials: appends a triggering line, waits for the notification at `sink`.
fn trials(
    n: usize,
    file: &std::path::Path,
    sink: &HttpSink,
    tag: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for i in 0..n {
        let trial = format!("{tag}{i}");
        let before = sink.requests().len();
        let written = heimdall_common::record::now_ns();
        {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)?;
            writeln!(
                f,
                "level=error trial={trial} msg=\"TRIGGER payment gateway timeout\""
            )?;
            f.flush()?;
        }
        let got = sink.wait(timeout, &format!("notification of trial {trial}"), |r| {
            r[before.min(r.len())..].iter().any(|q| {
                let v = q.json();
                v["status"] == "firing"
                    && v["alerts"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x["labels"]["trial"] == trial.as_str()))
            })
        })?;
        let q = got[before..]
            .iter()
            .find(|q| q.json()["alerts"][0]["labels"]["trial"] == trial.as_str())
            .expect("seen by wait");
        out.push((q.at_ns - written) as f64 / 1e9);
        // Space the trials so each is its own batch.
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(out)
}

const RULE: &str = r#"groups:
  - name: latency
    rules:
      - alert: PaymentTimeouts
        expr: sum by (trial) (count_over_time({app="pay"} |= "TRIGGER" | logfmt [1m])) > 0
        labels: { severity: page }
"#;

fn latency() -> anyhow::Result<()> {
    let n: usize = std::env::var("HEIMDALL_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let tmp = tempfile::tempdir()?;
    let hook = HttpSink::start()?;
    let am_hook = HttpSink::start()?;
    let am = Alertmanager::start_with(
        &tmp.path().join("am"),
        &format!("{}/am", am_hook.url()),
        // Alertmanager's defaults, grouped per trial.
        "group_by: [trial]\n  group_wait: 30s\n  group_interval: 5m\n  repeat_interval: 4h",
    )?;
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "bench-secret-0123456789\n")?;
    let rules = tmp.path().join("rules.yml");
    std::fs::write(&rules, RULE)?;
    let c = Cluster::start_with(&format!(
        "[alerting]\nrules = [{rules:?}]\n[[alerting.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}/hook\"\nsecret_file = {secret:?}\ngroup_by = [\"trial\"]\n[[alerting.receivers]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = {:?}\n",
        hook.url(),
        am.url
    ))?;
    let dir = c.root.join("pay");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("pay.log");
    std::fs::write(&file, "level=info msg=\"started\"\n")?;
    // The agent's defaults: batch timeout 1s, poll interval 1s (inotify wakes it first).
    let _agent = c.agent(
        "pay1",
        AgentOptions {
            include: vec![format!("{}/*.log", dir.display())],
            batch_timeout: "1s",
            poll_interval: "1s",
            files_extra: "labels = { app = \"pay\" }".into(),
            ..AgentOptions::default()
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let mut v = trials(n, &file, &hook, "t", Duration::from_secs(30))?;
    let max = v.iter().copied().fold(0.0, f64::max);
    let (p50, p99) = (percentile(&mut v, 0.5), percentile(&mut v, 0.99));
    println!("== alert latency, line written on the agent host -> webhook receiver ({n} trials, default settings)");
    println!(
        "Heimdall:                                p50 {p50:>6.3}s  p99 {p99:>6.3}s  max {max:>6.3}s  (target p99 < 2s: {})",
        if p99 < 2.0 { "met" } else { "MISSED" }
    );
    // Baseline: the same alerts through Alertmanager (its default group_wait).
    let base_n = 3;
    let start = am_hook.requests().len();
    let _ = start;
    let mut b = trials(base_n, &file, &am_hook, "am", Duration::from_secs(90))?;
    let b50 = percentile(&mut b, 0.5);
    println!(
        "baseline, through Alertmanager (group_wait 30s, {base_n} trials): p50 {b50:>6.3}s   ratio baseline / Heimdall p50: {:.0}x",
        b50 / p50
    );
    Ok(())
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let ut: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    (ut + st) / ticks
}

/// Aggregator CPU (% of one core) over `secs` while pushing `rate` lines/s over 1,000
/// streams through the Loki push API.
fn load(c: &Cluster, secs: u64, rate: usize) -> anyhow::Result<f64> {
    let pid = c.agg.proc.child.as_ref().map(|ch| ch.id()).unwrap_or(0);
    let url = format!("{}/loki/api/v1/push", c.agg.url());
    let per_push = rate / 10;
    let started = Instant::now();
    let cpu0 = cpu_seconds(pid);
    let mut k = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        let tick = Instant::now();
        let now = heimdall_common::record::now_ns();
        let mut streams = Vec::new();
        for j in 0..per_push {
            let s = (k as usize + j) % 1000;
            let line = if (k as usize + j) % 50 == 0 {
                format!("error order {k} failed: upstream timeout")
            } else {
                format!("GET /api/items/{k} 200 {}ms", j % 97)
            };
            streams.push(serde_json::json!({
                "stream": {"app": format!("svc{:03}", s % 50), "host": format!("h{:02}", s / 50)},
                "values": [[(now + j as i64).to_string(), line]],
            }));
        }
        k += per_push as u64;
        ureq::post(&url).send_json(serde_json::json!({ "streams": streams }))?;
        if let Some(left) = Duration::from_millis(100).checked_sub(tick.elapsed()) {
            std::thread::sleep(left);
        }
    }
    let cpu = cpu_seconds(pid) - cpu0;
    Ok(100.0 * cpu / started.elapsed().as_secs_f64())
}

fn rules_cost() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let rules = tmp.path().join("rules.yml");
    let mut text = String::from("groups:\n  - name: many\n    rules:\n");
    for s in 0..1000 {
        text.push_str(&format!(
            "      - alert: Errors{s}\n        expr: sum(count_over_time({{app=\"svc{:03}\", host=\"h{:02}\"}} |= \"error\" [5m])) > 1000\n",
            s % 50,
            s / 50
        ));
    }
    std::fs::write(&rules, text)?;
    let (secs, rate) = (40, 2000);
    let base = {
        let c = Cluster::start()?;
        load(&c, secs, rate)?
    };
    let with = {
        let c = Cluster::start_with(&format!("[alerting]\nrules = [{rules:?}]\n"))?;
        // Let the rules seed before measuring.
        std::thread::sleep(Duration::from_secs(3));
        let cpu = load(&c, secs, rate)?;
        let m = ureq::get(&format!("{}/metrics", c.agg.url()))
            .call()?
            .into_string()?;
        let evals = heimdall_tests::metric(
            &format!("{}/metrics", c.agg.url()),
            "heimdall_aggregator_alert_evaluations_total",
        )
        .unwrap_or(0.0);
        let _ = m;
        println!("rule evaluations during the run: {evals:.0}");
        cpu
    };
    println!(
        "== cost of 1,000 active rules, {rate} lines/s over 1,000 streams for {secs}s (Loki push)"
    );
    println!("aggregator CPU without rules (baseline): {base:>6.1}% of a core");
    println!("aggregator CPU with 1,000 rules:         {with:>6.1}% of a core  (+{:.1} points, ratio {:.2})", with - base, with / base.max(0.1));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("alerting: benchmark");
        return Ok(());
    }
    heimdall_tests::bins();
    latency()?;
    rules_cost()?;
    Ok(())
}
