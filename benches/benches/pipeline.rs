//! End-to-end throughput: a file of realistic mixed lines (nginx, JSON, syslog, Java
//! stack traces) is tailed from the start by the real agent, shipped over QUIC with
//! mutual TLS and committed by the real aggregator. Prints lines/s, MB/s, the agent's
//! CPU seconds and peak RSS, and ratios against a baseline measured in the same run:
//! one core reading the same file and lz4-compressing it, the least any shipper does.
//!
//! `cargo bench -p heimdall-benches --bench pipeline` (HEIMDALL_BENCH_LINES to change
//! the default of 1,000,000 lines).

use heimdall_tests::{bins, Agent, AgentOptions, Aggregator, Pki};
use std::io::Read;
use std::time::{Duration, Instant};

fn ingested(url: &str) -> u64 {
    heimdall_tests::metric(
        &format!("{url}/metrics"),
        "heimdall_aggregator_ingest_rows_total",
    )
    .map_or(0, |v| v as u64)
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("pipeline: benchmark");
        return Ok(());
    }
    let lines: u64 = std::env::var("HEIMDALL_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs)?;
    let file = logs.join("mixed.log");
    let (lines, bytes) = heimdall_benches::write_corpus(&file, lines, 42)?;
    let mb = bytes as f64 / 1e6;
    eprintln!("corpus: {lines} lines, {mb:.1} MB");
    bins();

    // Baseline: read the file and lz4-compress it in 1 MiB blocks, on one core.
    let t = Instant::now();
    let mut f = std::fs::File::open(&file)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut out = 0usize;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out += lz4_flex::block::compress(&buf[..n]).len();
    }
    let base_s = t.elapsed().as_secs_f64();
    eprintln!(
        "baseline read+lz4: {base_s:.3}s ({:.0} lines/s, compressed to {:.1} MB)",
        lines as f64 / base_s,
        out as f64 / 1e6
    );

    let pki = Pki::new(&root.join("pki"))?;
    let (cert, key) = pki.agent_cert("bench")?;
    let agg = Aggregator::start(root, &pki, None)?;
    let url = agg.url();
    let opts = AgentOptions {
        include: vec![format!("{}/*.log", logs.display())],
        batch_timeout: "1s",
        poll_interval: "1s",
        spool_max: "4GiB",
        ..AgentOptions::default()
    };
    let t = Instant::now();
    let mut agent = Agent::start(
        &root.join("agent"),
        "bench",
        agg.addrs.ingest,
        &pki,
        (&cert, &key),
        &opts,
    )?;
    let agent_pid = agent.proc.child.as_ref().map(|c| c.id()).unwrap_or(0);
    let agg_pid = agg.proc.child.as_ref().map(|c| c.id()).unwrap_or(0);
    let mut usage = (0.0, 0u64);
    let mut agg_usage = (0.0, 0u64);
    loop {
        if let Some(u) = heimdall_benches::proc_usage(agent_pid) {
            usage = u;
        }
        if let Some(u) = heimdall_benches::proc_usage(agg_pid) {
            agg_usage = u;
        }
        let n = ingested(&url);
        if n >= lines {
            break;
        }
        if t.elapsed() > Duration::from_secs(900) {
            anyhow::bail!(
                "only {n} of {lines} lines committed after 900 s:\n{}",
                agent.proc.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = t.elapsed().as_secs_f64();
    if let Some(u) = heimdall_benches::proc_usage(agent_pid) {
        usage = u;
    }
    if let Some(u) = heimdall_benches::proc_usage(agg_pid) {
        agg_usage = u;
    }
    agent.proc.terminate(Duration::from_secs(20))?;
    let rate = lines as f64 / secs;
    let base_rate = lines as f64 / base_s;
    println!("pipeline: {lines} lines, {mb:.1} MB, tail → spool → QUIC/mTLS → SQLite commit");
    println!(
        "  end to end         {secs:.2} s   {rate:.0} lines/s   {:.1} MB/s",
        mb / secs
    );
    println!(
        "  agent              {:.2} CPU s ({:.2} CPU s per million lines), peak RSS {:.1} MiB",
        usage.0,
        usage.0 / (lines as f64 / 1e6),
        usage.1 as f64 / 1048576.0
    );
    println!(
        "  aggregator         {:.2} CPU s, peak RSS {:.1} MiB",
        agg_usage.0,
        agg_usage.1 as f64 / 1048576.0
    );
    println!("  baseline read+lz4  {base_s:.3} s   {base_rate:.0} lines/s (one core)");
    println!(
        "  ratio              end-to-end / baseline = {:.3}; agent CPU / baseline time = {:.2}",
        rate / base_rate,
        usage.0 / base_s
    );
    Ok(())
}
