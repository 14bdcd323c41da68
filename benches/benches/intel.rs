//! Edge intelligence cost per core, next to baselines measured in the same run.
//!
//! - **template mining**: `Miner::add` over 200,000 lines of the realistic mix the
//!   end-to-end harness uses (nginx access, JSON, syslog, Java traces), in lines/s; the
//!   baseline is splitting the same lines on whitespace, the least a tokenising miner
//!   does.
//! - **agent pipeline**: what a source thread and the batcher do per record, in
//!   process: parse, redact, template tagging, batching with per-window aggregates and
//!   anomaly detection, and sealing (encode + lz4 + CRC). Measured with templates and
//!   anomaly detection on, then off (aggregates are part of batching and stay on in
//!   both), and the throughput cost of having them on is printed.
//!
//! `cargo bench -p heimdall-benches --bench intel`

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use heimdall_agent::pipeline::anomaly::{Detector, DetectorConfig};
use heimdall_agent::pipeline::batch::{seal, Batcher};
use heimdall_agent::pipeline::parse::Parser;
use heimdall_agent::pipeline::redact::{Redactor, Stats};
use heimdall_agent::pipeline::template::{Miner, MinerConfig, SourceMiner};
use heimdall_agent::sources::{redact_line, Checkpoint, Chunk, FileKey, Line, Policy};
use heimdall_common::record::Labels;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn corpus(n: u64) -> Vec<String> {
    let mut rng = heimdall_benches::Rng::new(7);
    let mut buf = Vec::new();
    for i in 0..n {
        heimdall_benches::write_line(&mut buf, &mut rng, i).unwrap();
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn mine(lines: &[String]) -> u64 {
    let mut m = Miner::new(MinerConfig::default());
    let mut x = 0u64;
    for l in lines {
        x ^= m.add(l).id;
    }
    x
}

fn split(lines: &[String]) -> usize {
    lines.iter().map(|l| l.split_whitespace().count()).sum()
}

struct Stages {
    parser: Parser,
    redactor: Redactor,
    stream: Arc<Labels>,
    policy: Arc<Policy>,
}

/// One pass of the agent's per-record work over `lines`, in chunks of 1,000.
fn pipeline(st: &Stages, lines: &[String], intel: bool) -> usize {
    let mut miner = intel.then(|| SourceMiner::new(MinerConfig::default(), "bench", None));
    let detector = intel.then(|| {
        Detector::new(DetectorConfig {
            warmup: Duration::from_secs(10),
            ..DetectorConfig::default()
        })
    });
    let mut b = Batcher::new(1 << 20, 10_000).with_intel(Duration::from_secs(10), detector);
    let mut stats = Stats::default();
    let mut sealed = 0usize;
    let mut now = 1_700_000_000_000_000_000i64;
    for (ci, chunk) in lines.chunks(1000).enumerate() {
        let mut out = Vec::with_capacity(chunk.len());
        let mut templates = Vec::new();
        for l in chunk {
            let mut line = Line::new(Bytes::copy_from_slice(l.as_bytes()), 0);
            let p = st.parser.parse(&line.bytes, now);
            line.time_ns = p.time_ns.unwrap_or(0);
            line.level = p.level;
            if !redact_line(Some(&st.redactor), &mut line, &mut stats) {
                continue;
            }
            if let Some(m) = miner.as_mut() {
                m.tag(&mut line, &mut templates);
            }
            out.push(line);
        }
        let full = b.push(Chunk {
            stream: st.stream.clone(),
            observed_ns: now,
            lines: out,
            checkpoint: Checkpoint {
                key: FileKey {
                    dev: 1,
                    ino: 1,
                    fp: 1,
                    gen: 0,
                },
                offset: ci as u64,
                tail: 0,
                source: "/var/log/mixed.log".into(),
                updated_ns: now,
                cursor: String::new(),
            },
            moved: Vec::new(),
            templates,
            policy: st.policy.clone(),
        });
        // One simulated second per chunk: windows close as they would.
        now += 1_000_000_000;
        if full || ci % 10 == 9 {
            if let Some(p) = b.take() {
                sealed += seal(&p.content).payload.len();
            }
            b.close_window(now);
        }
    }
    if let Some(p) = b.take() {
        sealed += seal(&p.content).payload.len();
    }
    sealed
}

fn best(f: &mut dyn FnMut()) -> f64 {
    let mut best = f64::MAX;
    let start = Instant::now();
    let mut runs = 0;
    while runs < 3 || (start.elapsed() < Duration::from_secs(4) && runs < 30) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

fn main() {
    let lines = corpus(200_000);
    let n = lines.len() as u64;
    let st = Stages {
        parser: Parser::default(),
        redactor: Redactor::builtin(),
        stream: Arc::new(Labels::new([
            ("host", "bench"),
            ("source", "/var/log/mixed.log"),
        ])),
        policy: Arc::new(Policy::default()),
    };
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("template_mining");
        g.throughput(Throughput::Elements(n));
        g.bench_function("miner", |b| b.iter(|| mine(&lines)));
        g.bench_function("baseline_split_whitespace", |b| b.iter(|| split(&lines)));
        g.finish();
    }
    {
        let mut g = c.benchmark_group("agent_pipeline");
        g.throughput(Throughput::Elements(n));
        g.bench_function("intel_on", |b| b.iter(|| pipeline(&st, &lines, true)));
        g.bench_function("intel_off", |b| b.iter(|| pipeline(&st, &lines, false)));
        g.finish();
    }
    c.final_summary();
    if std::env::var_os("HEIMDALL_BENCH_NO_SUMMARY").is_some() {
        return;
    }
    let m = best(&mut || {
        std::hint::black_box(mine(&lines));
    });
    let s = best(&mut || {
        std::hint::black_box(split(&lines));
    });
    let on = best(&mut || {
        std::hint::black_box(pipeline(&st, &lines, true));
    });
    let off = best(&mut || {
        std::hint::black_box(pipeline(&st, &lines, false));
    });
    let rate = |t: f64| n as f64 / t;
    eprintln!("\nedge intelligence, one core, {n} lines of the mixed corpus:");
    eprintln!(
        "  template mining      {:>10.0} lines/s   (split on whitespace {:>10.0} lines/s; miner takes {:.1}x its time)",
        rate(m),
        rate(s),
        m / s
    );
    eprintln!(
        "  pipeline, intel on   {:>10.0} lines/s   (parse, redact, templates, aggregates, anomalies, seal)",
        rate(on)
    );
    eprintln!(
        "  pipeline, intel off  {:>10.0} lines/s   (parse, redact, aggregates, seal)",
        rate(off)
    );
    eprintln!(
        "  throughput cost of templates + anomaly detection: {:.1}%",
        (1.0 - rate(on) / rate(off)) * 100.0
    );
}
