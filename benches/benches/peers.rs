//! Heimdall against rsyslog and syslog-ng, side by side in one run, on the same file.
//!
//! - Throughput: each shipper reads the same corpus from the beginning and ships it to
//!   a receiver on loopback: Heimdall's agent (tail → parse → spool → QUIC/mTLS) to the
//!   real aggregator; rsyslog (imfile → omfwd) and syslog-ng (file() → network()) over
//!   TCP to a receiver in this process that counts lines. Reported: lines/s, CPU
//!   seconds per million lines and peak RSS of the shipper, and Heimdall's ratios.
//! - Steady state: 10,000 lines/s appended for 60 s to a file each shipper tails;
//!   average CPU % and RSS.
//!
//! Peers come from Debian's packages (`benches/peers-setup.sh` installs them; syslog-ng
//! conflicts with rsyslog in apt, so it is unpacked beside it). A peer that is not
//! installed is reported as skipped.
//!
//! `cargo bench -p heimdall-benches --bench peers` (HEIMDALL_BENCH_LINES, default
//! 1,000,000; HEIMDALL_BENCH_STEADY_SECS, default 60).

use heimdall_tests::{bins, Agent, AgentOptions, Aggregator, Pki};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A line-counting TCP receiver on loopback.
struct Receiver {
    port: u16,
    lines: Arc<AtomicU64>,
}

impl Receiver {
    fn start() -> anyhow::Result<Receiver> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let lines = Arc::new(AtomicU64::new(0));
        let n = lines.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let n = n.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    while let Ok(k) = s.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        let c = buf[..k].iter().filter(|&&b| b == b'\n').count();
                        n.fetch_add(c as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(Receiver { port, lines })
    }
}

/// How to start one peer on a file, forwarding to a port.
struct Peer {
    name: &'static str,
    program: PathBuf,
    env: Vec<(String, String)>,
    extra_args: Vec<String>,
    config: fn(dir: &Path, input: &Path, port: u16) -> String,
    args: fn(dir: &Path) -> Vec<String>,
}

fn rsyslog_config(dir: &Path, input: &Path, port: u16) -> String {
    format!(
        r#"global(workDirectory="{dir}/work" maxMessageSize="256k" processInternalMessages="on")
module(load="imfile" mode="inotify")
template(name="rawline" type="string" string="%rawmsg%\n")
ruleset(name="fwd" queue.type="LinkedList" queue.size="200000"
        queue.dequeueBatchSize="2048" queue.workerThreads="1") {{
  action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"
         template="rawline" tcp_framing="traditional"
         action.resumeRetryCount="-1" action.resumeInterval="1")
}}
input(type="imfile" file="{input}" tag="bench" ruleset="fwd"
      readMode="0" freshStartTail="off" addMetadata="off"
      maxSubmitAtOnce="2048" persistStateInterval="0" reopenOnTruncate="on")
"#,
        dir = dir.display(),
        input = input.display()
    )
}

fn rsyslog_args(dir: &Path) -> Vec<String> {
    vec![
        "-n".into(),
        "-f".into(),
        dir.join("peer.conf").display().to_string(),
        "-i".into(),
        dir.join("peer.pid").display().to_string(),
    ]
}

fn syslog_ng_config(_dir: &Path, input: &Path, port: u16) -> String {
    format!(
        r#"@version: 3.38
options {{ stats-freq(0); mark-freq(0); use-dns(no); dns-cache(no); use-fqdn(no);
          chain-hostnames(no); log-msg-size(262144); }};
source s_in {{ file("{input}" follow-freq(1) flags(no-parse)
              log-fetch-limit(10000) log-iw-size(100000) log-msg-size(262144)); }};
destination d_out {{ network("127.0.0.1" port({port}) transport("tcp")
                    template("${{MESSAGE}}\n") log-fifo-size(200000) flush-lines(1000)); }};
log {{ source(s_in); destination(d_out); flags(flow-control); }};
"#,
        input = input.display()
    )
}

fn syslog_ng_args(dir: &Path) -> Vec<String> {
    vec![
        "-F".into(),
        "--no-caps".into(),
        "-f".into(),
        dir.join("peer.conf").display().to_string(),
        format!("--persist-file={}", dir.join("peer.persist").display()),
        format!("--pidfile={}", dir.join("peer.pid").display()),
        format!("--control={}", dir.join("peer.ctl").display()),
    ]
}

/// A peer that is not installed here, and how to install it.
struct Missing(&'static str);

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: skipped, not installed (benches/peers-setup.sh)",
            self.0
        )
    }
}

fn find_peers() -> Vec<Result<Peer, Missing>> {
    let mut out = Vec::new();
    let rsyslogd = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    out.push(match rsyslogd {
        Some(program) => Ok(Peer {
            name: "rsyslog",
            program,
            env: Vec::new(),
            extra_args: Vec::new(),
            config: rsyslog_config,
            args: rsyslog_args,
        }),
        None => Err(Missing("rsyslog")),
    });
    let root = std::env::var("HEIMDALL_SYSLOG_NG_ROOT").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers/syslog-ng-root"),
        PathBuf::from,
    );
    let system = PathBuf::from("/usr/sbin/syslog-ng");
    out.push(if root.join("usr/sbin/syslog-ng").exists() {
        Ok(Peer {
            name: "syslog-ng",
            program: root.join("usr/sbin/syslog-ng"),
            env: vec![(
                "LD_LIBRARY_PATH".into(),
                root.join("usr/lib/syslog-ng").display().to_string(),
            )],
            extra_args: vec![format!(
                "--module-path={}",
                root.join("usr/lib/syslog-ng/3.38").display()
            )],
            config: syslog_ng_config,
            args: syslog_ng_args,
        })
    } else if system.exists() {
        Ok(Peer {
            name: "syslog-ng",
            program: system,
            env: Vec::new(),
            extra_args: Vec::new(),
            config: syslog_ng_config,
            args: syslog_ng_args,
        })
    } else {
        Err(Missing("syslog-ng"))
    });
    out
}

fn spawn_peer(p: &Peer, dir: &Path, input: &Path, port: u16) -> anyhow::Result<Child> {
    std::fs::create_dir_all(dir.join("work"))?;
    std::fs::write(dir.join("peer.conf"), (p.config)(dir, input, port))?;
    let log = std::fs::File::create(dir.join("peer.log"))?;
    let mut cmd = Command::new(&p.program);
    cmd.args(&p.extra_args)
        .args((p.args)(dir))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    for (k, v) in &p.env {
        cmd.env(k, v);
    }
    Ok(cmd.spawn()?)
}

/// What one shipper did.
#[derive(Clone, Copy, Default)]
struct Figures {
    secs: f64,
    cpu: f64,
    rss: u64,
}

fn watch(pid: u32, mut done: impl FnMut() -> bool, limit: Duration) -> anyhow::Result<Figures> {
    let t = Instant::now();
    let mut f = Figures::default();
    loop {
        if let Some((cpu, rss)) = heimdall_benches::proc_usage(pid) {
            f.cpu = cpu;
            f.rss = rss;
        }
        if done() {
            break;
        }
        if t.elapsed() > limit {
            anyhow::bail!("not done after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f.secs = t.elapsed().as_secs_f64();
    if let Some((cpu, rss)) = heimdall_benches::proc_usage(pid) {
        f.cpu = cpu;
        f.rss = rss;
    }
    Ok(f)
}

fn stop(mut c: Child) {
    let _ = nix_term(c.id());
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if matches!(c.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn nix_term(pid: u32) -> std::io::Result<()> {
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

fn metric(url: &str, name: &str) -> u64 {
    heimdall_tests::metric(url, name).map_or(0, |v| v as u64)
}

/// Appends `rate` lines/s to `path` for `secs` seconds, in 10 ms steps.
fn steady_writer(path: PathBuf, rate: u64, secs: u64) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open steady file");
        let mut rng = heimdall_benches::Rng::new(7);
        let start = Instant::now();
        let mut written = 0u64;
        let mut i = 0;
        let mut buf = Vec::new();
        while start.elapsed() < Duration::from_secs(secs) {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            buf.clear();
            while written < due {
                written += heimdall_benches::write_line(&mut buf, &mut rng, i).unwrap_or(1);
                i += 1;
            }
            f.write_all(&buf).expect("append");
            std::thread::sleep(Duration::from_millis(10));
        }
        written
    })
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("peers: benchmark");
        return Ok(());
    }
    let lines: u64 = std::env::var("HEIMDALL_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let steady_secs: u64 = std::env::var("HEIMDALL_BENCH_STEADY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let corpus = root.join("corpus.log");
    let (lines, bytes) = heimdall_benches::write_corpus(&corpus, lines, 42)?;
    eprintln!("corpus: {lines} lines, {:.1} MB", bytes as f64 / 1e6);
    bins();

    let mut results: Vec<(&str, Figures)> = Vec::new();
    let mut steady: Vec<(&str, f64, u64)> = Vec::new();
    let peers = find_peers();
    for p in &peers {
        match p {
            Err(why) => println!("{why}"),
            Ok(p) => {
                let dir = root.join(p.name);
                std::fs::create_dir_all(&dir)?;
                let input = dir.join("input.log");
                std::fs::hard_link(&corpus, &input)
                    .or_else(|_| std::fs::copy(&corpus, &input).map(|_| ()))?;
                let rx = Receiver::start()?;
                let child = spawn_peer(p, &dir, &input, rx.port)?;
                let n = rx.lines.clone();
                let f = watch(
                    child.id(),
                    || n.load(Ordering::Relaxed) >= lines,
                    Duration::from_secs(600),
                );
                stop(child);
                match f {
                    Ok(f) => results.push((p.name, f)),
                    Err(e) => println!(
                        "{}: failed: {e} ({} of {lines} lines)",
                        p.name,
                        rx.lines.load(Ordering::Relaxed)
                    ),
                }
                // Steady state.
                let sdir = root.join(format!("{}-steady", p.name));
                std::fs::create_dir_all(&sdir)?;
                let input = sdir.join("steady.log");
                std::fs::write(&input, b"")?;
                let rx = Receiver::start()?;
                let child = spawn_peer(p, &sdir, &input, rx.port)?;
                std::thread::sleep(Duration::from_millis(500));
                let cpu0 = heimdall_benches::proc_usage(child.id()).map_or(0.0, |u| u.0);
                let w = steady_writer(input, 10_000, steady_secs);
                let written = w.join().unwrap_or(0);
                let n = rx.lines.clone();
                let _ = watch(
                    child.id(),
                    || n.load(Ordering::Relaxed) >= written,
                    Duration::from_secs(60),
                );
                let (cpu1, _) = heimdall_benches::proc_usage(child.id()).unwrap_or_default();
                let rss = rss_now(child.id());
                steady.push((p.name, (cpu1 - cpu0) / steady_secs as f64 * 100.0, rss));
                stop(child);
            }
        }
    }

    // Heimdall: agent → a counting QUIC receiver (the peers' counterpart), then agent →
    // the real aggregator, committed to SQLite.
    let pki = Pki::new(&root.join("pki"))?;
    let (cert, key) = pki.agent_cert("bench")?;
    let counter = heimdall_benches::CountingReceiver::start(&heimdall_common::tls::TlsFiles {
        ca: pki.ca_pem.clone(),
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
    })?;
    let run_agent = |name: &str,
                     endpoint: std::net::SocketAddr,
                     extra: &str|
     -> anyhow::Result<(Agent, String)> {
        let hdir = root.join(format!("{name}-logs"));
        std::fs::create_dir_all(&hdir)?;
        std::fs::hard_link(&corpus, hdir.join("input.log"))?;
        let mport = heimdall_tests::free_port();
        let opts = AgentOptions {
            include: vec![format!("{}/*.log", hdir.display())],
            batch_timeout: "1s",
            poll_interval: "1s",
            spool_max: "4GiB",
            metrics_listen: format!("127.0.0.1:{mport}"),
            extra: extra.to_owned(),
            ..AgentOptions::default()
        };
        let a = Agent::start(
            &root.join(name),
            "bench",
            endpoint,
            &pki,
            (&cert, &key),
            &opts,
        )?;
        Ok((a, format!("http://127.0.0.1:{mport}/metrics")))
    };
    // Redaction is on by default (the corpus's access-log lines all carry a client
    // address); the same run with it off shows what it costs.
    let to_counter = |name: &str, extra: &str| -> anyhow::Result<Figures> {
        let base = counter.records.load(Ordering::Relaxed);
        let (mut qagent, _) = run_agent(name, counter.addr, extra)?;
        let qpid = qagent.proc.pid().unwrap_or(0);
        let n = counter.records.clone();
        let f = watch(
            qpid,
            || n.load(Ordering::Relaxed) >= base + lines,
            Duration::from_secs(900),
        )?;
        qagent.proc.terminate(Duration::from_secs(20))?;
        Ok(f)
    };
    let quic = to_counter("agent-quic", "")?;
    let quic_plain = to_counter("agent-quic-plain", "[redact]\nenabled = false\n")?;

    let agg = Aggregator::start(root, &pki, None)?;
    let url = agg.url();
    let (mut agent, murl) = run_agent("agent", agg.addrs.ingest, "")?;
    let pid = agent.proc.pid().unwrap_or(0);
    let t = Instant::now();
    let spooled = watch(
        pid,
        || metric(&murl, "heimdall_agent_records_spooled_total") >= lines,
        Duration::from_secs(900),
    )?;
    let e2e = watch(
        pid,
        || {
            metric(
                &format!("{url}/metrics"),
                "heimdall_aggregator_ingest_rows_total",
            ) >= lines
        },
        Duration::from_secs(900),
    )?;
    let e2e = Figures {
        secs: t.elapsed().as_secs_f64(),
        ..e2e
    };
    agent.proc.terminate(Duration::from_secs(20))?;
    // Steady state for Heimdall.
    let sdir = root.join("heimdall-steady");
    std::fs::create_dir_all(&sdir)?;
    let input = sdir.join("steady.log");
    std::fs::write(&input, b"")?;
    let sopts = AgentOptions {
        include: vec![format!("{}/*.log", sdir.display())],
        batch_timeout: "1s",
        poll_interval: "1s",
        spool_max: "4GiB",
        ..AgentOptions::default()
    };
    let sagent = Agent::start(
        &root.join("agent-steady"),
        "bench-steady",
        agg.addrs.ingest,
        &pki,
        (&cert, &key),
        &sopts,
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let spid = sagent.proc.pid().unwrap_or(0);
    let cpu0 = heimdall_benches::proc_usage(spid).map_or(0.0, |u| u.0);
    let written = steady_writer(input, 10_000, steady_secs)
        .join()
        .unwrap_or(0);
    let before = metric(
        &format!("{url}/metrics"),
        "heimdall_aggregator_ingest_rows_total",
    );
    let rows = format!("{url}/metrics");
    let _ = watch(
        spid,
        || metric(&rows, "heimdall_aggregator_ingest_rows_total") >= before + written,
        Duration::from_secs(30),
    );
    let (cpu1, _) = heimdall_benches::proc_usage(spid).unwrap_or_default();
    steady.push((
        "heimdall",
        (cpu1 - cpu0) / steady_secs as f64 * 100.0,
        rss_now(spid),
    ));

    let per_m = |f: &Figures| f.cpu / (lines as f64 / 1e6);
    println!("peers: {lines} lines, {:.1} MB, each shipper from the start of the same file to a loopback receiver", bytes as f64 / 1e6);
    println!(
        "  {:<28} {:>10} {:>14} {:>16} {:>12}",
        "shipper", "seconds", "lines/s", "CPU s / M lines", "peak RSS MiB"
    );
    let row = |name: &str, f: &Figures| {
        println!(
            "  {:<28} {:>10.2} {:>14.0} {:>16.2} {:>12.1}",
            name,
            f.secs,
            lines as f64 / f.secs,
            per_m(f),
            f.rss as f64 / 1048576.0
        );
    };
    row("heimdall → QUIC counter (acked)", &quic);
    row("  same, redaction off", &quic_plain);
    row("heimdall → aggregator: spooled", &spooled);
    row("heimdall → aggregator: stored", &e2e);
    for (n, f) in &results {
        row(n, f);
    }
    for (n, f) in &results {
        println!(
            "  heimdall vs {n:<10} throughput ×{:.2} (to a counting receiver, like the peer), ×{:.2} (stored by the aggregator); CPU per line ×{:.2}",
            f.secs / quic.secs,
            f.secs / e2e.secs,
            per_m(&quic) / per_m(f)
        );
    }
    println!("steady state: 10,000 lines/s for {steady_secs} s");
    for (n, cpu, rss) in &steady {
        println!(
            "  {n:<12} average CPU {cpu:>6.1} %   RSS {:>7.1} MiB",
            *rss as f64 / 1048576.0
        );
    }
    Ok(())
}

fn rss_now(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |k| k * 1024)
}
