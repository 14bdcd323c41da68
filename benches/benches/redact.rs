//! Redaction throughput per core with every built-in detector on, next to a naive
//! baseline measured in the same run: one regular expression per detector, applied
//! with `Regex::replace_all` in sequence over every line.
//!
//! Two mixes of about 4 MiB each:
//! - **typical**: everyday service logs (HTTP, JSON, syslog, SQL, Java traces, k8s;
//!   dense in timestamps, durations, ids, UUIDs, hex digests and versions) where about
//!   2% of the lines carry PII (taken from the labeled corpus);
//! - **dense**: only the corpus lines that carry PII.
//!
//! After criterion's report, a summary prints MB/s for each and the ratio to the
//! baseline.

use criterion::{Criterion, Throughput};
use heimdall_agent::pipeline::redact::{Outcome, Redactor, Stats};
use regex::bytes::Regex;
use std::time::{Duration, Instant};

const NAIVE: &[(&str, &str)] = &[
    (
        "private_key",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    ),
    (
        "jwt",
        r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*",
    ),
    (
        "aws_access_key",
        r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b",
    ),
    (
        "aws_secret_key",
        r#"(?i)(?:aws_?secret_?(?:access_?)?key|secret_?access_?key)["']?\s*[:=]\s*["']?[A-Za-z0-9/+]{40}"#,
    ),
    (
        "url_password",
        r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@",
    ),
    ("bearer", r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{8,}=*"),
    (
        "secret",
        r#"(?i)(?:password|passwd|pwd|passphrase|secret|token|api[_-]?key|authorization)["']?\s*[:=]\s*["']?[^\s"'&,;)}]+"#,
    ),
    ("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    ("card", r"\b(?:\d[ -]?){12,18}\d\b"),
    (
        "iban",
        r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
    ),
    ("ssn", r"\b\d{3}-\d{2}-\d{4}\b"),
    (
        "phone",
        r"(?:\+|00)\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}|\(?\b[2-9]\d{2}\)?[ .-]\d{3}[ .-]\d{4}\b",
    ),
    (
        "ipv6",
        r"(?i)(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}|(?:[0-9a-f]{1,4}:){1,7}:(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,5})?|::(?:ffff:)?(?:\d{1,3}\.){3}\d{1,3}|::[0-9a-f]{1,4}",
    ),
    (
        "ipv4",
        r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b",
    ),
];

struct Naive(Vec<(Regex, Vec<u8>)>);

impl Naive {
    fn new() -> Naive {
        Naive(
            NAIVE
                .iter()
                .map(|(t, p)| (Regex::new(p).unwrap(), format!("<{t}>").into_bytes()))
                .collect(),
        )
    }

    fn redact(&self, line: &[u8]) -> usize {
        let mut cur = std::borrow::Cow::Borrowed(line);
        for (re, rep) in &self.0 {
            if let std::borrow::Cow::Owned(o) = re.replace_all(&cur, rep.as_slice()) {
                cur = std::borrow::Cow::Owned(o);
            }
        }
        cur.len()
    }
}

fn heimdall(r: &Redactor, stats: &mut Stats, lines: &[Vec<u8>]) -> usize {
    let mut n = 0;
    for l in lines {
        n += match r.redact(l, stats) {
            Outcome::Clean => l.len(),
            Outcome::Redacted(b, _) => b.len(),
            Outcome::Drop => 0,
        };
    }
    n
}

fn naive(nv: &Naive, lines: &[Vec<u8>]) -> usize {
    lines.iter().map(|l| nv.redact(l)).sum()
}

fn corpus_pii_lines() -> Vec<Vec<u8>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../agent/tests/data/pii/corpus.jsonl"
    );
    let text = std::fs::read_to_string(path).expect("the labeled PII corpus");
    text.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let has = v["pii"].as_array().is_some_and(|a| !a.is_empty());
            has.then(|| v["line"].as_str().unwrap().as_bytes().to_vec())
        })
        .collect()
}

/// Everyday lines without PII: what most of a host's logs look like.
fn clean_line(rng: &mut heimdall_benches::Rng, i: u64) -> String {
    let ts = 1_763_880_000 + i / 40;
    let (h, m, s) = ((ts / 3600) % 24, (ts / 60) % 60, ts % 60);
    let ms = rng.below(1000);
    let svc = ["checkout", "payments", "inventory", "auth", "search"][rng.below(5) as usize];
    match rng.below(10) {
        0 | 1 => format!(
            "{{\"ts\":\"2025-11-23T{h:02}:{m:02}:{s:02}.{ms:03}Z\",\"level\":\"info\",\"service\":\"{svc}\",\"msg\":\"request completed\",\"route\":\"/api/v1/orders/{}\",\"status\":200,\"duration_ms\":{},\"trace_id\":\"{:016x}{:016x}\",\"bytes\":{}}}",
            rng.below(100_000), rng.below(3000), rng.next_u64(), rng.next_u64(), rng.below(90_000)
        ),
        2 => format!(
            "2025-11-23 {h:02}:{m:02}:{s:02},{ms:03} INFO  [http-nio-8080-exec-{}] c.e.{svc}.OrderController - placed order {} in {}ms (items={}, version=3.14.2)",
            rng.below(200), rng.below(10_000_000), rng.below(900), rng.below(20)
        ),
        3 => format!(
            "time=2025-11-23T{h:02}:{m:02}:{s:02}Z level=debug msg=\"cache lookup\" key=sku:{} hit={} took={}.{}ms shard={}",
            rng.below(1_000_000), rng.below(2) == 1, rng.below(20), rng.below(1000), rng.below(64)
        ),
        4 => format!(
            "Nov 23 {h:02}:{m:02}:{s:02} node-{} systemd[1]: Started session-{}.scope - Session {} of User deploy.",
            rng.below(40), rng.below(90_000), rng.below(90_000)
        ),
        5 => format!(
            "Nov 23 {h:02}:{m:02}:{s:02} node-{} kernel: [{}.{:06}] EXT4-fs (nvme0n1p{}): mounted filesystem {:08x}-{:04x}-{:04x}-{:04x}-{:012x} r/w with ordered data mode",
            rng.below(40), rng.below(900_000), rng.below(1_000_000), rng.below(8), rng.next_u64() as u32, rng.below(65536), rng.below(65536), rng.below(65536), rng.next_u64() >> 16
        ),
        6 => format!(
            "I1123 {h:02}:{m:02}:{s:02}.{:06}       1 controller.go:{}] \"Reconciled\" pod=\"{svc}-{:x}-{:05x}\" namespace=\"prod\" generation={} elapsed=\"{}.{}s\"",
            rng.below(1_000_000), rng.below(900), rng.below(0xffff_ffff), rng.below(0xfffff), rng.below(100), rng.below(10), rng.below(1000)
        ),
        7 => format!(
            "2025-11-23 {h:02}:{m:02}:{s:02}.{ms:03} UTC [{}] LOG:  duration: {}.{:03} ms  statement: SELECT id, status, total FROM orders WHERE customer_id = $1 AND created_at > $2 LIMIT 50",
            rng.below(90_000), rng.below(5000), rng.below(1000)
        ),
        8 => format!(
            "\tat com.example.{svc}.OrderService.place(OrderService.java:{})\n\tat com.example.{svc}.Api.handle(Api.java:{})\n\tat java.base/java.lang.Thread.run(Thread.java:833)",
            rng.below(400), rng.below(200)
        ),
        _ => format!(
            "level=warn ts=2025-11-23T{h:02}:{m:02}:{s:02}.{ms:03}Z caller=compactor.go:{} msg=\"compaction took longer than expected\" block={:026X} sha256={:016x}{:016x}{:016x}{:016x} duration=1m{}s",
            rng.below(900), rng.next_u64() as u128 * 1_000_003, rng.next_u64(), rng.next_u64(), rng.next_u64(), rng.next_u64(), rng.below(60)
        ),
    }
}

fn mixes() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let pii = corpus_pii_lines();
    let mut rng = heimdall_benches::Rng::new(11);
    let (mut typical, mut bytes, mut i) = (Vec::new(), 0, 0u64);
    while bytes < 4 << 20 {
        let l = if rng.below(100) < 2 {
            pii[rng.below(pii.len() as u64) as usize].clone()
        } else {
            clean_line(&mut rng, i).into_bytes()
        };
        bytes += l.len();
        typical.push(l);
        i += 1;
    }
    let (mut dense, mut bytes) = (Vec::new(), 0);
    while bytes < 4 << 20 {
        let l = pii[rng.below(pii.len() as u64) as usize].clone();
        bytes += l.len();
        dense.push(l);
    }
    (typical, dense)
}

fn size(lines: &[Vec<u8>]) -> u64 {
    lines.iter().map(|l| l.len() as u64).sum()
}

/// MB/s of `f` over `bytes`, best of several runs of about a second.
fn rate(bytes: u64, mut f: impl FnMut() -> usize) -> f64 {
    let mut best = f64::MAX;
    let start = Instant::now();
    let mut runs = 0;
    while runs < 3 || (start.elapsed() < Duration::from_secs(3) && runs < 50) {
        let t = Instant::now();
        std::hint::black_box(f());
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    bytes as f64 / best / 1e6
}

fn main() {
    let (typical, dense) = mixes();
    let r = Redactor::builtin();
    let nv = Naive::new();
    let mut c = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    for (name, lines) in [("typical", &typical), ("dense", &dense)] {
        let mut g = c.benchmark_group(format!("redact_{name}"));
        g.throughput(Throughput::Bytes(size(lines)));
        let mut stats = Stats::default();
        g.bench_function("heimdall", |b| b.iter(|| heimdall(&r, &mut stats, lines)));
        g.bench_function("baseline_naive_regex", |b| b.iter(|| naive(&nv, lines)));
        g.finish();
    }
    c.final_summary();
    if std::env::var_os("HEIMDALL_BENCH_NO_SUMMARY").is_some() {
        // For profiling one criterion benchmark alone.
        return;
    }

    eprintln!("\nredaction throughput, one core, all built-in detectors on:");
    for (name, lines) in [("typical (~2% PII)", &typical), ("dense (all PII)", &dense)] {
        let bytes = size(lines);
        let mut stats = Stats::default();
        let h = rate(bytes, || heimdall(&r, &mut stats, lines));
        let n = rate(bytes, || naive(&nv, lines));
        eprintln!(
            "  {name:<18} {:>6} lines {:>5.1} MiB: heimdall {h:>7.1} MB/s, naive regex {n:>6.1} MB/s, ratio {:>5.1}x",
            lines.len(),
            bytes as f64 / (1 << 20) as f64,
            h / n
        );
    }
}
