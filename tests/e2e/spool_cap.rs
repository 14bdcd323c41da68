//! The spool's byte cap during an aggregator outage, with each policy.
//!
//! `block`: reading stops at the cap; when the aggregator is back every line is stored
//! exactly once. `drop_oldest`: reading goes on; the oldest batches are dropped and
//! counted, and what is stored plus what was counted as dropped is every line written,
//! the newest kept. In both, the agent's peak RSS stays bounded while the backlog is
//! many times the cap (read from `/proc`, not a timing).

use heimdall_tests::{free_port, metric, stored_lines, wait_for_count, AgentOptions, Cluster};
use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

const FILES: usize = 4;
const PER_FILE: usize = 80_000;
/// Peak RSS the agent may reach with a backlog of ~50 MB and a 2 MiB spool.
const RSS_LIMIT_KIB: u64 = 160 << 10;

fn line(f: usize, n: usize) -> String {
    format!(
        "f{f} n{n:07} 2026-12-01T10:00:00Z INFO request served path=/api/v1/items/{n} status=200 bytes={} {}",
        n % 9000,
        "x".repeat(40 + n % 60)
    )
}

struct Outcome {
    written: Vec<String>,
    peak_kib: u64,
    spool_bytes_max: f64,
}

/// Writes the backlog while the aggregator is down and watches the agent.
fn outage(c: &mut Cluster, policy: &'static str) -> (heimdall_tests::Agent, Outcome, String) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    c.agg.proc.terminate(Duration::from_secs(20)).unwrap();
    let agent = c
        .agent(
            &format!("spool-{policy}"),
            AgentOptions {
                spool_max: "2MiB",
                spool_policy: policy,
                metrics_listen: format!("127.0.0.1:{port}"),
                ..AgentOptions::default()
            },
        )
        .unwrap();
    let mut written = Vec::with_capacity(FILES * PER_FILE);
    let mut outs: Vec<_> = (0..FILES)
        .map(|f| BufWriter::new(std::fs::File::create(c.logs.join(format!("app{f}.log"))).unwrap()))
        .collect();
    for n in 0..PER_FILE {
        for (f, o) in outs.iter_mut().enumerate() {
            let l = line(f, n);
            writeln!(o, "{l}").unwrap();
            written.push(l);
        }
    }
    drop(outs);
    let total = written.len() as f64;
    let mut peak_kib = 0;
    let mut spool_bytes_max: f64 = 0.0;
    let start = Instant::now();
    // Watch until the agent is where the policy takes it: stuck at the cap (block), or
    // done reading everything (drop_oldest); then a little longer.
    let mut settled: Option<Instant> = None;
    while start.elapsed() < Duration::from_secs(120) {
        peak_kib = peak_kib.max(agent.proc.status_kib("VmHWM").unwrap_or(0));
        let read = metric(&url, "heimdall_agent_lines_read_total").unwrap_or(0.0);
        let full = metric(&url, "heimdall_agent_spool_full_total").unwrap_or(0.0);
        spool_bytes_max =
            spool_bytes_max.max(metric(&url, "heimdall_agent_spool_bytes").unwrap_or(0.0));
        let there = match policy {
            "block" => full >= 1.0,
            _ => read >= total,
        };
        if there && settled.is_none() {
            settled = Some(Instant::now());
        }
        if settled.is_some_and(|s| s.elapsed() > Duration::from_secs(3)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        settled.is_some(),
        "agent did not reach the {policy} state:\n{}",
        agent.proc.log_tail(30)
    );
    (
        agent,
        Outcome {
            written,
            peak_kib,
            spool_bytes_max,
        },
        url,
    )
}

#[test]
fn block_policy_pauses_reading_and_loses_nothing() {
    let mut c = Cluster::start().unwrap();
    let (agent, o, url) = outage(&mut c, "block");
    let read = metric(&url, "heimdall_agent_lines_read_total").unwrap_or(0.0) as usize;
    assert!(
        read < o.written.len() / 2,
        "reading should pause at the cap; read {read} of {}",
        o.written.len()
    );
    assert!(
        o.spool_bytes_max <= (2 << 20) as f64,
        "spool over its cap: {}",
        o.spool_bytes_max
    );
    assert!(
        o.peak_kib < RSS_LIMIT_KIB,
        "agent peak RSS {} KiB",
        o.peak_kib
    );
    c.agg.restart(&c.root, &c.pki).unwrap();
    let db = c.agg.db();
    let got = wait_for_count(o.written.len() as u64, Duration::from_secs(180), || {
        heimdall_tests::stored_count(&db)
    });
    assert_eq!(got, o.written.len() as u64, "{}", agent.proc.log_tail(30));
    let stored: HashSet<Vec<u8>> = stored_lines(&db)
        .unwrap()
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(stored.len(), o.written.len(), "duplicates stored");
    assert!(o.written.iter().all(|l| stored.contains(l.as_bytes())));
    println!(
        "block: peak RSS {} KiB with a backlog of {} lines",
        o.peak_kib,
        o.written.len()
    );
}

#[test]
fn drop_oldest_policy_drops_and_counts_the_oldest() {
    let mut c = Cluster::start().unwrap();
    let (agent, o, url) = outage(&mut c, "drop_oldest");
    let dropped = metric(&url, "heimdall_agent_spool_dropped_records_total").unwrap_or(0.0) as u64;
    assert!(dropped > 0, "nothing dropped:\n{}", agent.proc.log_tail(20));
    assert!(agent
        .proc
        .log_text()
        .contains("dropped the oldest unsent batches"));
    assert!(
        o.peak_kib < RSS_LIMIT_KIB,
        "agent peak RSS {} KiB",
        o.peak_kib
    );
    assert!(
        o.spool_bytes_max <= (2 << 20) as f64,
        "spool over its cap: {}",
        o.spool_bytes_max
    );
    c.agg.restart(&c.root, &c.pki).unwrap();
    let db = c.agg.db();
    let want = o.written.len() as u64 - dropped;
    let got = wait_for_count(want, Duration::from_secs(120), || {
        heimdall_tests::stored_count(&db)
    });
    assert_eq!(got, want, "stored + dropped must be every line written");
    let stored: HashSet<Vec<u8>> = stored_lines(&db)
        .unwrap()
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(stored.len() as u64, want, "duplicates stored");
    // The newest lines survive; the dropped ones are the oldest.
    for l in o.written.iter().rev().take(1000) {
        assert!(stored.contains(l.as_bytes()), "newest line missing: {l}");
    }
    assert!(
        !stored.contains(o.written[0].as_bytes()),
        "oldest line kept"
    );
    println!(
        "drop_oldest: dropped {dropped} of {} lines, peak RSS {} KiB",
        o.written.len(),
        o.peak_kib
    );
}
