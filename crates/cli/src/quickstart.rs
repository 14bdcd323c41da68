//! `heimdall quickstart`: an aggregator and an agent on this machine, on embedded
//! defaults, in a directory of their own.
//!
//! What a newcomer's first minutes need:
//! - every port is checked before anything starts; one that is taken is reported at once
//!   with the flag that changes it. The ingest port and the agent's metrics port fall
//!   back to free ports when their defaults are taken and no flag named them; the API's
//!   port is the one the `heimdall` CLI and Grafana are pointed at, so it is never
//!   changed behind the user's back;
//! - "running" is printed only once the aggregator answers `/ready` and the agent's
//!   `/ready` says it is connected; a program that exits or does not get ready is
//!   reported with the end of its log;
//! - the two configuration files are written on every run from the flags given, unless
//!   the user edited them (each carries a checksum of what quickstart wrote); an edited
//!   file is kept, and flags it does not follow are named.

use anyhow::{bail, Context};
use heimdall_api::client::Client;
use heimdall_common::certs;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// `heimdall quickstart` flags.
#[derive(clap::Args, Debug)]
pub struct QuickstartArgs {
    /// Directory for configuration, certificates, data and logs.
    #[arg(long, default_value = "heimdall-data")]
    pub dir: PathBuf,
    /// Files to tail (repeatable). Default /var/log/**/*.log.
    #[arg(long = "include", value_name = "GLOB")]
    pub include: Vec<String>,
    /// The aggregator's QUIC ingest address (UDP). Default 127.0.0.1:7400, or a free
    /// port when that one is taken.
    #[arg(long, value_name = "ADDR")]
    pub ingest: Option<String>,
    /// The aggregator's HTTP API address (the CLI's --addr, Grafana's Loki URL).
    /// Default 127.0.0.1:3100.
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// The agent's /metrics, /ready and /live address. Default 127.0.0.1:9601, or a
    /// free port when that one is taken.
    #[arg(long, value_name = "ADDR")]
    pub agent_metrics: Option<String>,
}

const DEFAULT_INGEST: &str = "127.0.0.1:7400";
const DEFAULT_API: &str = "127.0.0.1:3100";
const DEFAULT_AGENT_METRICS: &str = "127.0.0.1:9601";
const DEFAULT_INCLUDE: &str = "/var/log/**/*.log";
/// How long each program has to get ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// One port quickstart uses.
struct Port {
    what: &'static str,
    flag: &'static str,
    proto: Proto,
    addr: SocketAddr,
    /// The user named it (flag or edited configuration): never replaced.
    fixed: bool,
}

fn parse_addr(s: &str, flag: &str) -> anyhow::Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("{flag} {s}: not an address like 127.0.0.1:3100"))
}

fn free(addr: SocketAddr, proto: Proto) -> bool {
    match proto {
        Proto::Tcp => std::net::TcpListener::bind(addr).is_ok(),
        Proto::Udp => std::net::UdpSocket::bind(addr).is_ok(),
    }
}

/// A port the system has free now on `addr`'s interface.
fn any_free(addr: SocketAddr, proto: Proto) -> anyhow::Result<SocketAddr> {
    let mut a = addr;
    a.set_port(0);
    let got = match proto {
        Proto::Tcp => std::net::TcpListener::bind(a)?.local_addr()?,
        Proto::Udp => std::net::UdpSocket::bind(a)?.local_addr()?,
    };
    Ok(got)
}

/// Checks every port; a taken one that may move moves to a free port (said aloud), a
/// taken one that may not is an error naming it and the flag.
fn settle_ports(ports: &mut [Port]) -> anyhow::Result<()> {
    let mut taken = Vec::new();
    for p in ports.iter_mut() {
        if free(p.addr, p.proto) {
            continue;
        }
        if p.fixed {
            taken.push(format!(
                "{} ({}) is already in use: another program (a Heimdall or Loki already running?) holds it; choose another with {} ADDR",
                p.addr, p.what, p.flag
            ));
            continue;
        }
        let old = p.addr;
        p.addr = any_free(p.addr, p.proto)?;
        println!(
            "{old} ({}) is in use; using {} instead ({} chooses)",
            p.what, p.addr, p.flag
        );
    }
    if !taken.is_empty() {
        bail!("{}", taken.join("\n"));
    }
    Ok(())
}

/// The first line of a file quickstart wrote: what it is, and the checksum of the
/// rest, so an edit is noticed.
fn header(what: &str, body: &str) -> String {
    format!(
        "# Heimdall {what}, made by `heimdall quickstart`, which writes it again on every run unless it was edited (checksum {:016x}).\n",
        checksum(body)
    )
}

fn checksum(body: &str) -> u64 {
    // FNV-1a: only to notice edits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Whether `text` is a file quickstart wrote and nobody edited.
fn untouched(text: &str) -> bool {
    let Some((first, rest)) = text.split_once('\n') else {
        return false;
    };
    first
        .rsplit_once("(checksum ")
        .and_then(|(_, c)| c.strip_suffix(").").or_else(|| c.strip_suffix(')')))
        .and_then(|c| u64::from_str_radix(c, 16).ok())
        .is_some_and(|c| c == checksum(rest))
}

/// A configuration file quickstart manages.
enum Config {
    /// Written now from the flags.
    Written,
    /// Edited by the user: kept as is.
    Kept(String),
}

fn write_config(path: &Path, what: &str, body: &str) -> anyhow::Result<Config> {
    match std::fs::read_to_string(path) {
        Ok(old) if !untouched(&old) => return Ok(Config::Kept(old)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let text = format!("{}{body}", header(what, body));
    // Whole or not at all: a config cut short by a crash would be kept as "edited".
    heimdall_common::fs::write_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Config::Written)
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The value of `key` in `[table]` of a TOML text, as a string.
fn toml_get(text: &str, table: &str, key: &str) -> Option<String> {
    let t: toml::Table = toml::from_str(text).ok()?;
    let v = t.get(table)?.as_table()?.get(key)?;
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Array(a) => Some(
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        _ => None,
    }
}

/// The last lines of a log file, for a failure report.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(12);
    let mut out = format!("last lines of {}:\n", path.display());
    for l in &lines[from..] {
        out.push_str("  ");
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// What a readiness probe found.
enum Probe {
    Ready,
    /// Not yet, and why.
    NotYet(String),
}

/// Waits until `probe` says ready, or `child` exits, or the time is up.
async fn wait_ready<F, Fut>(
    child: &mut Child,
    name: &str,
    log: &Path,
    mut probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Probe>,
{
    let start = Instant::now();
    loop {
        let last = match probe().await {
            Probe::Ready => return Ok(()),
            Probe::NotYet(why) => why,
        };
        if let Some(st) = child.try_wait()? {
            bail!(
                "{name} exited ({st}) before it was ready\n{}",
                log_tail(log)
            );
        }
        if start.elapsed() > READY_WITHIN {
            bail!(
                "{name} was not ready within {}s{}\n{}",
                READY_WITHIN.as_secs(),
                if last.is_empty() {
                    String::new()
                } else {
                    format!(" ({last})")
                },
                log_tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The aggregator is ready when its `/ready` answers 200.
async fn aggregator_ready(c: &Client) -> Probe {
    match c.health("/ready").await {
        Ok((200, _)) => Probe::Ready,
        Ok((code, body)) => Probe::NotYet(format!("its /ready says {code} {}", body.trim())),
        Err(e) => Probe::NotYet(format!("{:#}", anyhow::Error::from(e))),
    }
}

/// The agent is ready when its `/ready` says it is connected to the aggregator.
async fn agent_ready(c: &Client) -> Probe {
    match c.health("/ready").await {
        Ok((code, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if code == 200 && v["connected"] == true {
                Probe::Ready
            } else if body.is_empty() {
                Probe::NotYet(format!("its /ready says {code}"))
            } else {
                Probe::NotYet(format!("its /ready says {body}"))
            }
        }
        Err(e) => Probe::NotYet(format!("{:#}", anyhow::Error::from(e))),
    }
}

/// The path of `name` next to this program.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let p = exe.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found next to {}; build everything with `cargo build --release`",
            name,
            exe.display()
        );
    }
    Ok(p)
}

/// An exit status (or why it is unknown) as text.
fn exit(st: std::io::Result<std::process::ExitStatus>) -> String {
    match st {
        Ok(st) => st.to_string(),
        Err(e) => format!("status unknown: {e}"),
    }
}

/// Sends SIGTERM and waits up to 20 s, then kills.
async fn terminate(child: &mut Child) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Runs quickstart until Ctrl-C or SIGTERM (or a program exits).
///
/// # Errors
/// A port in use, a program that would not start or get ready, I/O.
pub async fn run(a: &QuickstartArgs) -> anyhow::Result<()> {
    let agg_bin = sibling("heimdall-aggregator")?;
    let agent_bin = sibling("heimdall-agent")?;
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let dir = a.dir.canonicalize()?;
    let agg_cfg = dir.join("aggregator.toml");
    let agent_cfg = dir.join("agent.toml");

    // Ports: from the flags, else from a configuration the user edited (kept), else
    // the defaults.
    let edited = |p: &Path| std::fs::read_to_string(p).ok().filter(|t| !untouched(t));
    let agg_edited = edited(&agg_cfg);
    let agent_edited = edited(&agent_cfg);
    let from_edit = |text: &Option<String>, table: &str, key: &str| {
        text.as_ref().and_then(|t| toml_get(t, table, key))
    };
    let pick = |flag: &Option<String>, edit: Option<String>, default: &str| match (flag, edit) {
        (Some(f), _) => (f.clone(), true),
        (None, Some(e)) => (e, true),
        (None, None) => (default.to_owned(), false),
    };
    let (ingest, ingest_fixed) = pick(
        &a.ingest,
        from_edit(&agg_edited, "ingest", "listen"),
        DEFAULT_INGEST,
    );
    let (api, _) = pick(&a.api, from_edit(&agg_edited, "api", "listen"), DEFAULT_API);
    let (metrics, metrics_fixed) = pick(
        &a.agent_metrics,
        from_edit(&agent_edited, "metrics", "listen"),
        DEFAULT_AGENT_METRICS,
    );
    let mut ports = [
        Port {
            what: "the aggregator's QUIC ingest",
            flag: "--ingest",
            proto: Proto::Udp,
            addr: parse_addr(&ingest, "--ingest")?,
            fixed: ingest_fixed,
        },
        Port {
            what: "the aggregator's HTTP API",
            flag: "--api",
            proto: Proto::Tcp,
            addr: parse_addr(&api, "--api")?,
            fixed: true,
        },
        Port {
            what: "the agent's /metrics",
            flag: "--agent-metrics",
            proto: Proto::Tcp,
            addr: parse_addr(&metrics, "--agent-metrics")?,
            fixed: metrics_fixed,
        },
    ];
    settle_ports(&mut ports)?;
    let [ingest, api, metrics] = [ports[0].addr, ports[1].addr, ports[2].addr];

    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let tls = dir.join("aggregator/tls");
    let made = certs::init(&tls, &certs::default_server_names(), &host)?;
    if !made.created.is_empty() {
        println!("made a private CA and certificates in {}", tls.display());
    }
    let include = if a.include.is_empty() {
        vec![DEFAULT_INCLUDE.to_owned()]
    } else {
        a.include.clone()
    };
    let agg = write_config(
        &agg_cfg,
        "aggregator",
        &format!(
            "state_dir = {}\n\n[ingest]\nlisten = \"{ingest}\"\n\n[api]\nlisten = \"{api}\"\n",
            toml_str(&dir.join("aggregator")),
        ),
    )?;
    let agent = write_config(
        &agent_cfg,
        "agent",
        &format!(
            "state_dir = {}\n\n[[files]]\ninclude = [{}]\n\n[output]\nendpoints = [\"{ingest}\"]\nserver_name = \"localhost\"\nca = {}\ncert = {}\nkey = {}\n\n[metrics]\nlisten = \"{metrics}\"\n",
            toml_str(&dir.join("agent")),
            include
                .iter()
                .map(|g| format!("{g:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            toml_str(&made.ca),
            toml_str(&made.agent_cert),
            toml_str(&made.agent_key),
        ),
    )?;
    // Say plainly what an edited file means for the flags given.
    let mut tailing = include.join(", ");
    if let Config::Kept(text) = &agent {
        let kept = toml_get(text, "files", "include")
            .or_else(|| {
                let t: toml::Table = toml::from_str(text).ok()?;
                let files = t.get("files")?.as_array()?;
                Some(
                    files
                        .iter()
                        .filter_map(|f| f.get("include")?.as_array().cloned())
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            })
            .unwrap_or_default();
        println!(
            "kept {} as you edited it{}",
            agent_cfg.display(),
            if a.include.is_empty() {
                String::new()
            } else {
                format!(
                    "; --include {} is NOT applied (the file tails {kept}): edit the file, or delete it to have quickstart write it again",
                    a.include.join(" --include ")
                )
            }
        );
        tailing = kept;
    }
    if let Config::Kept(_) = &agg {
        println!("kept {} as you edited it", agg_cfg.display());
    }

    let log = |name: &str| -> anyhow::Result<Stdio> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .with_context(|| format!("cannot open {name}"))?;
        Ok(Stdio::from(f))
    };
    let agg_log = dir.join("aggregator.log");
    let agent_log = dir.join("agent.log");
    let mut agg = Command::new(&agg_bin)
        .arg("run")
        .arg("--config")
        .arg(&agg_cfg)
        .stdout(log("aggregator.log")?)
        .stderr(log("aggregator.log")?)
        .spawn()
        .context("cannot start heimdall-aggregator")?;
    let api_url = format!("http://{api}");
    let agg_client = Client::new(&api_url, None, None)?;
    if let Err(e) = wait_ready(&mut agg, "the aggregator", &agg_log, || {
        aggregator_ready(&agg_client)
    })
    .await
    {
        terminate(&mut agg).await;
        return Err(e);
    }
    let mut agent = match Command::new(&agent_bin)
        .arg("run")
        .arg("--config")
        .arg(&agent_cfg)
        .stdout(log("agent.log")?)
        .stderr(log("agent.log")?)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            terminate(&mut agg).await;
            return Err(e).context("cannot start heimdall-agent");
        }
    };
    let agent_client = Client::new(&format!("http://{metrics}"), None, None)?;
    if let Err(e) = wait_ready(&mut agent, "the agent", &agent_log, || {
        agent_ready(&agent_client)
    })
    .await
    {
        terminate(&mut agent).await;
        terminate(&mut agg).await;
        return Err(e);
    }
    let addr_hint = if api.to_string() == DEFAULT_API {
        String::new()
    } else {
        format!(" --addr {api_url}")
    };
    println!(
        "\nHeimdall is running.\n\
         \n  console     {api_url}/  (open it in a browser)\
         \n  aggregator  QUIC ingest {ingest} (mutual TLS), HTTP API {api_url}\
         \n  agent       tailing {tailing}, connected\
         \n  data        {db} (SQLite)\
         \n  config      {agg_cfg}, {agent_cfg}\
         \n  logs        {alog}, {glog}\
         \n  metrics     {api_url}/metrics and http://{metrics}/metrics\
         \n\nTry, in another terminal:\
         \n  heimdall{addr_hint} query '{{host=\"{host}\"}} |= \"error\"' --since 1h\
         \n  heimdall{addr_hint} agents\
         \n(the binaries are in {bindir}; Grafana can use {api_url} as a Loki data source)\
         \n\nPress Ctrl-C to stop.",
        db = dir.join("aggregator/hot.db").display(),
        agg_cfg = agg_cfg.display(),
        agent_cfg = agent_cfg.display(),
        alog = agg_log.display(),
        glog = agent_log.display(),
        bindir = agg_bin
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    let why = {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => None,
            _ = int.recv() => None,
            st = agent.wait() => Some(format!("the agent exited ({})\n{}", exit(st), log_tail(&agent_log))),
            st = agg.wait() => Some(format!("the aggregator exited ({})\n{}", exit(st), log_tail(&agg_log))),
        }
    };
    println!("\nstopping (the agent flushes its spool, the aggregator commits what it has)…");
    terminate(&mut agent).await;
    terminate(&mut agg).await;
    if let Some(why) = why {
        bail!("{why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_are_noticed_by_the_checksum() {
        let body = "state_dir = \"/x\"\n";
        let text = format!("{}{body}", header("agent", body));
        assert!(untouched(&text));
        assert!(!untouched(&text.replace("/x", "/y")));
        assert!(!untouched("state_dir = \"/x\"\n"));
    }

    #[test]
    fn a_taken_port_that_may_move_moves_and_one_that_may_not_is_named() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let mut movable = [Port {
            what: "test",
            flag: "--test",
            proto: Proto::Tcp,
            addr,
            fixed: false,
        }];
        settle_ports(&mut movable).unwrap();
        assert_ne!(movable[0].addr, addr);
        let mut fixed = [Port {
            what: "the test API",
            flag: "--api",
            proto: Proto::Tcp,
            addr,
            fixed: true,
        }];
        let e = settle_ports(&mut fixed).unwrap_err().to_string();
        assert!(
            e.contains(&addr.to_string()) && e.contains("--api ADDR"),
            "{e}"
        );
    }
}
