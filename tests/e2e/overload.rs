//! Agents with large backlogs shipping at once, faster than the aggregator can store:
//! its memory for batches in flight stays within `ingest.max_memory`, the agents wait
//! (backpressure: none of their batches is refused), and every line is stored exactly
//! once, also when the aggregator is killed in the middle of it.

use heimdall_tests::{metric, stored_lines, AgentOptions, Cluster};
use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

const AGENTS: usize = 12;
const LINES: usize = 40_000;
const BUDGET_MIB: u64 = 200;

/// Every stored line is distinct and there are `total` of them.
fn assert_each_line_once(c: &Cluster, total: u64) {
    let lines = stored_lines(&c.agg.db()).unwrap();
    assert_eq!(lines.len() as u64, total, "lines stored");
    let distinct: HashSet<Vec<u8>> = lines.into_iter().map(|(_, l)| l).collect();
    assert_eq!(distinct.len() as u64, total, "every line once");
}

/// The aggregator grew, from `idle_kib` to `peak_kib`, by at most the budget plus what
/// it holds whatever the load: SQLite's page cache (64 MiB), the hot token index and
/// the allocator's slack.
fn assert_growth_within_budget(idle_kib: u64, peak_kib: u64) {
    let slack_mib = 160;
    assert!(
        peak_kib.saturating_sub(idle_kib) < (BUDGET_MIB + slack_mib) * 1024,
        "aggregator grew by {} MiB under load (budget {BUDGET_MIB} MiB)",
        peak_kib.saturating_sub(idle_kib) / 1024
    );
}

/// `agents` agents named `name-<k>`, each with a backlog of `lines` lines (`line(k, i)`)
/// written before it starts; and the set of every line.
fn backlogged_agents(
    c: &Cluster,
    name: &str,
    agents: usize,
    lines: usize,
    line: impl Fn(usize, usize) -> String,
) -> (Vec<heimdall_tests::Agent>, HashSet<Vec<u8>>) {
    let mut want = HashSet::new();
    for k in 0..agents {
        let dir = c.logs.join(format!("host{k}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("app.log")).unwrap());
        for i in 0..lines {
            let l = line(k, i);
            writeln!(f, "{l}").unwrap();
            want.insert(l.into_bytes());
        }
    }
    let started = (0..agents)
        .map(|k| {
            c.agent(
                &format!("{name}-{k}"),
                AgentOptions {
                    include: vec![format!("{}/host{k}/*.log", c.logs.display())],
                    ..AgentOptions::default()
                },
            )
            .unwrap()
        })
        .collect();
    (started, want)
}

#[test]
fn agents_faster_than_the_store_wait_within_the_memory_budget() {
    let c = Cluster::start_with(&format!("[ingest]\nmax_memory = \"{BUDGET_MIB}MiB\"\n")).unwrap();
    let idle_kib = c.agg.proc.status_kib("VmRSS").unwrap();
    let filler = "x".repeat(240);
    let (agents, _) = backlogged_agents(&c, "overload", AGENTS, LINES, |k, i| {
        format!("host{k} seq={i:07} request served {filler}")
    });
    let total = (AGENTS * LINES) as u64;
    let metrics_url = format!("{}/metrics", c.agg.url());
    let started = Instant::now();
    let (mut stored, mut in_use_peak) = (0, 0.0f64);
    while started.elapsed() < Duration::from_secs(300) {
        in_use_peak = in_use_peak
            .max(metric(&metrics_url, "heimdall_aggregator_ingest_memory_bytes").unwrap_or(0.0));
        stored = c.count();
        if stored >= total {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = started.elapsed().as_secs_f64();
    let peak_kib = c.agg.proc.status_kib("VmHWM").unwrap();
    eprintln!(
        "{stored} lines stored in {secs:.1}s ({:.0} lines/s); aggregator memory {} MiB idle, {} MiB at its peak, budget {BUDGET_MIB} MiB",
        stored as f64 / secs,
        idle_kib / 1024,
        peak_kib / 1024
    );
    let waits = metric(
        &metrics_url,
        "heimdall_aggregator_ingest_memory_waits_total",
    )
    .unwrap_or(0.0);
    let limit = metric(
        &metrics_url,
        "heimdall_aggregator_ingest_memory_limit_bytes",
    )
    .unwrap_or(0.0);
    eprintln!(
        "ingest memory: {:.0} MiB in use at most (sampled), limit {:.0} MiB; {waits} batches waited for it",
        in_use_peak / 1048576.0,
        limit / 1048576.0
    );
    assert_eq!(stored, total, "{}", c.agg.proc.log_tail(20));
    assert_eq!(limit, (BUDGET_MIB << 20) as f64);
    assert!(in_use_peak <= limit, "{in_use_peak} bytes in use");
    assert!(
        waits > 0.0,
        "the agents outran the store: some batches waited for memory"
    );
    assert_each_line_once(&c, total);
    let metrics = heimdall_tests::get_text(&format!("{}/metrics", c.agg.url()));
    assert!(
        !metrics.lines().any(
            |l| l.starts_with("heimdall_aggregator_ingest_batches_total") && l.contains("rejected")
        ),
        "no batch refused"
    );
    assert_growth_within_budget(idle_kib, peak_kib);
    drop(agents);
}

/// The aggregator `kill -9`ed twice while agents with backlogs ship at full rate, and
/// restarted: every line is stored exactly once (batches acknowledged only once
/// durable, resent when not, recognised when they were).
#[test]
fn killed_during_full_rate_ingest_loses_and_doubles_nothing() {
    const AGENTS: usize = 6;
    const LINES: usize = 50_000;
    let mut c = Cluster::start().unwrap();
    let (_agents, want) = backlogged_agents(&c, "fullrate", AGENTS, LINES, |k, i| {
        format!(
            "host{k} seq={i:07} payment accepted for order {}",
            i * 7 + k
        )
    });
    let total = want.len() as u64;
    let started = Instant::now();
    for share in [5, 2] {
        // Kill at a fifth, then at a half, of the lines stored.
        let at = total / share;
        while c.count() < at {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "stalled before the kill"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c.agg.proc.kill9();
        let before = c.count();
        eprintln!("killed with {before} of {total} lines stored");
        assert!(before < total, "the kill came after the last line");
        c.agg.restart(&c.root, &c.pki).unwrap();
    }
    let stored = heimdall_tests::wait_for_count(total, Duration::from_secs(300), || c.count());
    assert_eq!(stored, total, "{}", c.agg.proc.log_tail(20));
    assert_each_line_once(&c, total);
    let got: HashSet<Vec<u8>> = stored_lines(&c.agg.db())
        .unwrap()
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert!(
        got == want,
        "{} lines missing",
        want.difference(&got).count()
    );
}

/// Loki pushes share the same budget: sixteen clients pushing 10 MB bodies at once
/// against 200 MiB wait their turn (none is refused), the budget is never exceeded, and
/// every pushed line is stored once.
#[test]
fn pushes_wait_within_the_memory_budget() {
    const CLIENTS: usize = 16;
    const PUSHES: usize = 2;
    const LINES: usize = 10_000;
    let c = Cluster::start_with(&format!("[ingest]\nmax_memory = \"{BUDGET_MIB}MiB\"\n")).unwrap();
    let idle_kib = c.agg.proc.status_kib("VmRSS").unwrap();
    let url = format!("{}/loki/api/v1/push", c.agg.url());
    let metrics_url = format!("{}/metrics", c.agg.url());
    let now = heimdall_common::record::now_ns();
    let filler = "y".repeat(900);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (url, filler) = (url.clone(), filler.clone());
            std::thread::spawn(move || {
                for p in 0..PUSHES {
                    let values: Vec<serde_json::Value> = (0..LINES)
                        .map(|i| {
                            serde_json::json!([
                                (now + (i * 1000 + p) as i64).to_string(),
                                format!("client {t} push {p} line {i:05} {filler}")
                            ])
                        })
                        .collect();
                    let body = serde_json::json!({"streams": [{"stream": {"job": format!("client{t}")}, "values": values}]});
                    let r = ureq::post(&url)
                        .timeout(Duration::from_secs(120))
                        .send_json(body)
                        .unwrap_or_else(|e| panic!("push refused: {e}"));
                    assert_eq!(r.status(), 204);
                }
            })
        })
        .collect();
    let mut in_use_peak = 0.0f64;
    while clients.iter().any(|h| !h.is_finished()) {
        in_use_peak = in_use_peak
            .max(metric(&metrics_url, "heimdall_aggregator_ingest_memory_bytes").unwrap_or(0.0));
        std::thread::sleep(Duration::from_millis(50));
    }
    for h in clients {
        h.join().unwrap();
    }
    let total = (CLIENTS * PUSHES * LINES) as u64;
    let waits = metric(
        &metrics_url,
        "heimdall_aggregator_ingest_memory_waits_total",
    )
    .unwrap_or(0.0);
    let peak_kib = c.agg.proc.status_kib("VmHWM").unwrap();
    eprintln!(
        "pushes: {:.0} MiB of the budget in use at most (sampled), {waits} waited; aggregator {} MiB idle, {} MiB at its peak",
        in_use_peak / 1048576.0,
        idle_kib / 1024,
        peak_kib / 1024
    );
    assert_eq!(c.count(), total);
    assert_each_line_once(&c, total);
    assert!(in_use_peak <= (BUDGET_MIB << 20) as f64);
    assert!(
        waits > 0.0,
        "sixteen 10 MB pushes do not fit in {BUDGET_MIB} MiB at once"
    );
    assert_growth_within_budget(idle_kib, peak_kib);
}
