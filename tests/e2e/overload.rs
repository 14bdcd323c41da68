//! Senders faster than the aggregator can store: its memory for batches in flight
//! stays within `ingest.max_memory`, they wait (backpressure: none of their batches is
//! refused), and every line is stored exactly once, also when the aggregator is killed
//! in the middle of it.

use heimdall_tests::{metric, stored_lines, AgentOptions, Cluster};
use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

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

/// Twenty-four clients speaking the agents' protocol, each with its own certificate
/// and identity, sending two batches of 25,000 well-compressible lines at once: 6 MiB
/// each to decode (over 600 MiB in all), far more than the store takes at once. (Twelve real agents on this machine no longer outrun the store: their batches
/// in flight peaked at 45 MiB, so they cannot show the budget binding; the kill test
/// below ships through real agents.)
#[test]
fn agents_faster_than_the_store_wait_within_the_memory_budget() {
    use bytes::BytesMut;
    use heimdall_common::record::{Labels, Level, LogRecord};
    use heimdall_common::wire::{self, Batch, BatchContent, Codec, Frame, Hello, Limits};
    const CLIENTS: usize = 24;
    const BATCHES: usize = 2;
    const PER: usize = 25_000;
    let c = Cluster::start_with(&format!("[ingest]\nmax_memory = \"{BUDGET_MIB}MiB\"\n")).unwrap();
    let idle_kib = c.agg.proc.status_kib("VmRSS").unwrap();
    let now = heimdall_common::record::now_ns();
    // Lines that compress well: little on the wire, much to decode and store.
    let filler = "x".repeat(200);
    let mut want = HashSet::new();
    let mut frames: Vec<Vec<bytes::Bytes>> = Vec::new();
    for k in 0..CLIENTS {
        let mut mine = Vec::new();
        for b in 0..BATCHES {
            let records: Vec<LogRecord> = (0..PER)
                .map(|i| {
                    let seq = b * PER + i;
                    let line = format!(
                        "host{k} seq={seq:07} request served in {}ms {filler}",
                        seq % 997
                    );
                    want.insert(line.clone().into_bytes());
                    LogRecord {
                        stream: (i % 4) as u32,
                        time_ns: now - 60_000_000_000 + seq as i64 * 1_000,
                        observed_ns: now,
                        level: Level::Info,
                        template_id: 0,
                        flags: 0,
                        redacted: 0,
                        line: line.into_bytes().into(),
                        metadata: Labels::default(),
                    }
                })
                .collect();
            let content = BatchContent {
                streams: (0..4)
                    .map(|s| Labels::new([("source", format!("/var/log/app{s}.log"))]))
                    .collect(),
                records,
                ..Default::default()
            };
            mine.push(
                Frame::Batch(Batch::seal(1, b as u64 + 1, 1, Codec::Lz4, &content)).to_bytes(),
            );
        }
        frames.push(mine);
    }
    let total = want.len() as u64;
    let metrics_url = format!("{}/metrics", c.agg.url());
    let peak_in_use = std::sync::Mutex::new(0.0f64);
    let done = std::sync::atomic::AtomicBool::new(false);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let v =
                    metric(&metrics_url, "heimdall_aggregator_ingest_memory_bytes").unwrap_or(0.0);
                let mut p = peak_in_use.lock().unwrap();
                *p = p.max(v);
                drop(p);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        rt.block_on(async {
            // Every client connected and greeted first (handshakes are slow in a debug
            // build), then every batch sent at once.
            let mut conns = Vec::new();
            for k in 0..CLIENTS {
                let (cert, key) = c.pki.agent_cert(&format!("fast-{k}")).unwrap();
                let ep = heimdall_tests::quic_client(&c.pki.ca_pem, &cert, &key).unwrap();
                let conn = ep
                    .connect(c.agg.addrs.ingest, "localhost")
                    .unwrap()
                    .await
                    .unwrap();
                let (mut hs, mut hr) = conn.open_bi().await.unwrap();
                let hello = Frame::Hello(Hello {
                    version: wire::PROTOCOL_VERSION,
                    agent_id: format!("fast-{k}"),
                    host: format!("host{k}"),
                    agent_version: "test".into(),
                    capabilities: 0,
                });
                hs.write_all(&hello.to_bytes()).await.unwrap();
                let mut buf = BytesMut::new();
                heimdall_common::quic::read_frame(&mut hr, &mut buf, &Limits::default())
                    .await
                    .unwrap();
                conns.push((ep, conn, hs, hr));
            }
            started = Instant::now();
            let mut inflight = tokio::task::JoinSet::new();
            for ((_, conn, _, _), mine) in conns.iter().zip(frames) {
                for f in mine {
                    let conn = conn.clone();
                    inflight.spawn(async move {
                        let (mut s, mut r) = conn.open_bi().await?;
                        s.write_all(&f).await?;
                        s.finish()?;
                        match heimdall_common::quic::read_single(&mut r, &Limits::default()).await?
                        {
                            Frame::Ack(_) => anyhow::Ok(()),
                            other => anyhow::bail!("answered {other:?}"),
                        }
                    });
                }
            }
            while let Some(r) = inflight.join_next().await {
                r.unwrap().unwrap();
            }
            for (ep, conn, _, _) in conns {
                conn.close(0u32.into(), b"done");
                ep.wait_idle().await;
            }
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let secs = started.elapsed().as_secs_f64();
    let stored = c.count();
    let peak_kib = c.agg.proc.status_kib("VmHWM").unwrap();
    let in_use_peak = *peak_in_use.lock().unwrap();
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
        "the senders outran the store: some batches waited for memory"
    );
    let got: HashSet<Vec<u8>> = stored_lines(&c.agg.db())
        .unwrap()
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(got.len() as u64, total, "every line once");
    assert!(got == want, "the stored lines are the lines sent");
    let metrics = heimdall_tests::get_text(&format!("{}/metrics", c.agg.url()));
    assert!(
        !metrics.lines().any(
            |l| l.starts_with("heimdall_aggregator_ingest_batches_total") && l.contains("rejected")
        ),
        "no batch refused"
    );
    assert_growth_within_budget(idle_kib, peak_kib);
}

/// The aggregator `kill -9`ed twice while agents with backlogs ship at full rate, and
/// restarted: every line is stored exactly once (batches acknowledged only once
/// durable, resent when not, recognised when they were).
#[test]
fn killed_during_full_rate_ingest_loses_and_doubles_nothing() {
    const AGENTS: usize = 6;
    const LINES: usize = 50_000;
    // Group commits of at most 20,000 lines (the default allows 200,000): the stored
    // count rises in steps small enough for each kill to land while lines are still
    // arriving, however fast this machine stores them.
    let mut c = Cluster::start_with("[store]\nmax_group_rows = 20000\n").unwrap();
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
