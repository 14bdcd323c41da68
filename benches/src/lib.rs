//! Shared pieces of Heimdall's benchmarks: a generator of realistic mixed log lines
//! (nginx access, JSON application logs, syslog, Java stack traces) and process
//! accounting read from `/proc`.

use std::io::Write;
use std::path::Path;

/// Deterministic pseudo-random numbers (xorshift), so every run writes the same file.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

const PATHS: &[&str] = &[
    "/api/v1/users",
    "/api/v1/orders",
    "/static/app.js",
    "/healthz",
    "/login",
    "/api/v2/search",
    "/images/logo.png",
];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "curl/8.4.0",
    "Prometheus/2.48.0",
    "Go-http-client/1.1",
];
const SERVICES: &[&str] = &["checkout", "payments", "inventory", "auth", "search"];
const MSGS: &[&str] = &[
    "request completed",
    "cache miss",
    "retrying upstream call",
    "user session refreshed",
    "db query slow",
    "queue depth high",
];
const SYSLOG: &[&str] = &[
    "sshd[2211]: Accepted publickey for deploy from 10.0.3.7 port 52144 ssh2",
    "CRON[9912]: (root) CMD (/usr/lib/sysstat/sa1 1 1)",
    "kernel: [12345.678901] eth0: link up, 1000 Mbps, full-duplex",
    "systemd[1]: Started Daily apt download activities.",
    "postfix/smtpd[3321]: connect from unknown[192.0.2.44]",
];

/// Writes one realistic line (or, for stack traces, several physical lines) and returns
/// how many physical lines were written.
pub fn write_line(out: &mut impl Write, rng: &mut Rng, i: u64) -> std::io::Result<u64> {
    let ts_s = 1_763_880_000 + i / 50;
    match rng.below(100) {
        0..=39 => {
            writeln!(
                out,
                "10.{}.{}.{} - - [23/Nov/2025:{:02}:{:02}:{:02} +0000] \"GET {}?id={} HTTP/1.1\" {} {} \"-\" \"{}\"",
                rng.below(256), rng.below(256), rng.below(256),
                (ts_s / 3600) % 24, (ts_s / 60) % 60, ts_s % 60,
                PATHS[rng.below(PATHS.len() as u64) as usize], rng.below(1_000_000),
                [200, 200, 200, 304, 404, 500][rng.below(6) as usize], rng.below(50_000),
                AGENTS[rng.below(AGENTS.len() as u64) as usize]
            )?;
            Ok(1)
        }
        40..=74 => {
            writeln!(
                out,
                "{{\"ts\":\"2025-11-23T10:{:02}:{:02}.{:03}Z\",\"level\":\"{}\",\"service\":\"{}\",\"msg\":\"{}\",\"trace_id\":\"{:016x}\",\"duration_ms\":{},\"user_id\":{}}}",
                (ts_s / 60) % 60, ts_s % 60, rng.below(1000),
                ["info", "info", "info", "debug", "warn", "error"][rng.below(6) as usize],
                SERVICES[rng.below(SERVICES.len() as u64) as usize],
                MSGS[rng.below(MSGS.len() as u64) as usize],
                rng.next_u64(), rng.below(2000), rng.below(100_000)
            )?;
            Ok(1)
        }
        75..=96 => {
            writeln!(
                out,
                "Nov 23 10:{:02}:{:02} host-{} {}",
                (ts_s / 60) % 60,
                ts_s % 60,
                rng.below(20),
                SYSLOG[rng.below(SYSLOG.len() as u64) as usize]
            )?;
            Ok(1)
        }
        _ => {
            writeln!(out, "2025-11-23 10:{:02}:{:02},{:03} ERROR [main] c.e.OrderService - failed to place order {}", (ts_s / 60) % 60, ts_s % 60, rng.below(1000), rng.below(1_000_000))?;
            writeln!(
                out,
                "java.lang.IllegalStateException: inventory mismatch for sku {}",
                rng.below(100_000)
            )?;
            writeln!(
                out,
                "\tat com.example.OrderService.place(OrderService.java:{})",
                rng.below(400)
            )?;
            writeln!(out, "\tat com.example.Api.handle(Api.java:88)")?;
            writeln!(out, "\tat java.base/java.lang.Thread.run(Thread.java:833)")?;
            Ok(5)
        }
    }
}

/// Writes at least `lines` physical lines to `path`; returns (lines, bytes).
///
/// # Errors
/// I/O errors.
pub fn write_corpus(path: &Path, lines: u64, seed: u64) -> std::io::Result<(u64, u64)> {
    let f = std::fs::File::create(path)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut rng = Rng::new(seed);
    let mut n = 0;
    let mut i = 0;
    while n < lines {
        n += write_line(&mut w, &mut rng, i)?;
        i += 1;
    }
    w.flush()?;
    Ok((n, std::fs::metadata(path)?.len()))
}

/// CPU seconds (user + system) and peak RSS in bytes of a live process, from `/proc`.
pub fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?;
    // Clock ticks are 100 per second on Linux for every supported architecture.
    Some(((utime + stime) / 100.0, hwm * 1024))
}

/// A QUIC receiver that speaks Heimdall's protocol and counts records without storing
/// them: the counterpart, for the agent, of the line-counting TCP receiver the peers
/// ship to. Each batch is decoded (lz4, CRC) and acknowledged.
pub struct CountingReceiver {
    pub addr: std::net::SocketAddr,
    pub records: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CountingReceiver {
    /// Starts on loopback with the server certificate in `tls`, on a thread of its own.
    ///
    /// # Errors
    /// TLS or socket errors.
    pub fn start(tls: &heimdall_common::tls::TlsFiles) -> anyhow::Result<CountingReceiver> {
        use heimdall_common::quic;
        use heimdall_common::wire::{self, Ack, Frame, Welcome};
        use std::sync::atomic::Ordering;
        let cfg = heimdall_common::tls::server_config(tls)?;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let addr = socket.local_addr()?;
        let records = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = records.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            rt.block_on(async move {
                let runtime = quinn::default_runtime().expect("tokio runtime");
                let ep = quinn::Endpoint::new(Default::default(), Some(cfg), socket, runtime)
                    .expect("endpoint");
                let limits = wire::Limits::default();
                while let Some(inc) = ep.accept().await {
                    let count = count.clone();
                    tokio::spawn(async move {
                        let Ok(conn) = inc.await else { return };
                        let Ok((mut cs, mut cr)) = conn.accept_bi().await else {
                            return;
                        };
                        let mut buf = bytes::BytesMut::new();
                        let Ok(Some(Frame::Hello(h))) =
                            quic::read_frame(&mut cr, &mut buf, &limits).await
                        else {
                            return;
                        };
                        let w = Frame::Welcome(Welcome {
                            version: wire::PROTOCOL_VERSION,
                            agent_id: h.agent_id,
                            server_id: "counting-receiver".into(),
                            max_frame_bytes: limits.max_frame_bytes,
                            capabilities: 0,
                        });
                        if quic::write_frame(&mut cs, &w).await.is_err() {
                            return;
                        }
                        tokio::spawn(async move {
                            while let Ok(Some(_)) =
                                quic::read_frame(&mut cr, &mut buf, &limits).await
                            {
                            }
                        });
                        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            let count = count.clone();
                            tokio::spawn(async move {
                                let Ok(Frame::Batch(b)) =
                                    quic::read_single(&mut recv, &limits).await
                                else {
                                    return;
                                };
                                let Ok(content) = b.open(&limits) else { return };
                                count.fetch_add(content.records.len() as u64, Ordering::Relaxed);
                                let ack = Frame::Ack(Ack {
                                    epoch: b.epoch,
                                    seq: b.seq,
                                });
                                let _ = quic::write_frame(&mut send, &ack).await;
                                let _ = send.finish();
                            });
                        }
                    });
                }
            });
        });
        Ok(CountingReceiver { addr, records })
    }
}

/// A lifecycle that compacts the partitions it is asked to into `warm_dir` (zstd 9,
/// segments of up to 1M rows), as the storage and query benchmarks run it in-process.
pub fn compactor(
    store: std::sync::Arc<heimdall_store::hot::HotStore>,
    db: &Path,
    warm_dir: &Path,
) -> heimdall_store::lifecycle::Lifecycle {
    heimdall_store::lifecycle::Lifecycle {
        store,
        db_path: db.to_owned(),
        cfg: heimdall_store::lifecycle::LifecycleConfig {
            interval: std::time::Duration::from_secs(3600),
            warm_dir: warm_dir.to_owned(),
            compact_after: std::time::Duration::from_secs(0),
            hot_max_rows: u64::MAX,
            segment_rows: 1_000_000,
            zstd_level: 9,
            upload_after: None,
            retention: None,
            reap_grace: heimdall_store::lifecycle::REAP_GRACE,
        },
        cold: None,
    }
}

/// Waits until the aggregator at `base` has run its lifecycle's `index` step (the hot
/// tier's needle filters rebuilt after a start), as it would have on a running
/// aggregator.
///
/// # Errors
/// When the API fails, or after 10 minutes.
pub fn wait_hot_indexed(base: &str) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let m = ureq::get(&format!("{base}/metrics"))
            .call()?
            .into_string()?;
        if m.lines().any(|l| {
            l.starts_with("heimdall_aggregator_lifecycle_runs_total")
                && l.contains("step=\"index\"")
        }) {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(600),
            "hot index not rebuilt in 10 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
