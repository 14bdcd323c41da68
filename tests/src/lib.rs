//! Helpers for end-to-end tests: build and start the real `heimdall-aggregator` and
//! `heimdall-agent` binaries on loopback, with certificates made for the test, and read
//! back what the aggregator stored.
//!
//! Processes are killed when their handle drops, so a failing test leaves nothing
//! running. Each process logs to a file in the test's directory; [`Proc::log_tail`]
//! shows it when an assertion fails.

pub mod loghub_ga;
pub mod sinks;

use anyhow::{bail, Context};
use heimdall_aggregator::ListenAddrs;
use heimdall_common::certs::Ca;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Paths of the built binaries.
#[derive(Debug)]
pub struct Bins {
    pub agent: PathBuf,
    pub aggregator: PathBuf,
    pub cli: PathBuf,
}

/// Builds the workspace binaries (once per test process) with the profile of the
/// running test binary, and returns their paths. With `HEIMDALL_TEST_BINS=DIR` the
/// binaries in DIR are tested instead (installed ones, or a copy that edits to the
/// sources must not change while a long test runs), and nothing is built.
///
/// # Panics
/// If the build fails.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        if let Some(dir) = std::env::var_os("HEIMDALL_TEST_BINS") {
            let dir = PathBuf::from(dir);
            let bins = Bins {
                agent: dir.join("heimdall-agent"),
                aggregator: dir.join("heimdall-aggregator"),
                cli: dir.join("heimdall"),
            };
            for b in [&bins.agent, &bins.aggregator, &bins.cli] {
                assert!(b.exists(), "HEIMDALL_TEST_BINS: {} is missing", b.display());
            }
            return bins;
        }
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/<test> → target/<profile>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile dir")
            .to_owned();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // `--tests` resolves features as `cargo test` does (dev-dependencies' features
        // included), so the binaries reuse every library the test build made; without
        // it a third of the workspace's dependencies would be compiled again.
        cmd.args(["build", "--workspace", "--bins", "--tests", "--quiet"]);
        // Cargo gives this test process the test crate's own variables. Build scripts
        // that watch them (ring's `rerun-if-env-changed=CARGO_PKG_NAME`, …) would run
        // again, and everything above them would be compiled a second time, here and
        // in any later build from a shell.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || k.starts_with("CARGO_BIN_")
                || matches!(
                    k.as_ref(),
                    "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "OUT_DIR"
                )
            {
                cmd.env_remove(k.as_ref());
            }
        }
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build");
        assert!(st.success(), "building the binaries failed");
        Bins {
            agent: dir.join("heimdall-agent"),
            aggregator: dir.join("heimdall-aggregator"),
            cli: dir.join("heimdall"),
        }
    })
}

/// A private CA with a server certificate, for one test.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
    pub ca_pem: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl Pki {
    /// Makes a CA and a server certificate for localhost in `dir`.
    ///
    /// # Errors
    /// Certificate or file errors.
    pub fn new(dir: &Path) -> anyhow::Result<Pki> {
        Pki::named(dir, "Test CA")
    }

    /// As [`Pki::new`], with a chosen CA name (a foreign CA has a name of its own).
    ///
    /// # Errors
    /// Certificate or file errors.
    pub fn named(dir: &Path, ca_name: &str) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca = Ca::generate(ca_name, 30)?;
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, ca.cert_pem())?;
        let (c, k) = ca.issue(
            "localhost",
            &["localhost".into(), "127.0.0.1".into()],
            false,
            OffsetDateTime::now_utc() - time::Duration::hours(1),
            30,
        )?;
        let server_cert = dir.join("server.pem");
        let server_key = dir.join("server-key.pem");
        std::fs::write(&server_cert, c)?;
        std::fs::write(&server_key, k)?;
        Ok(Pki {
            dir: dir.to_owned(),
            ca,
            ca_pem,
            server_cert,
            server_key,
        })
    }

    /// Issues a client certificate for `name`; returns (cert, key) paths.
    ///
    /// # Errors
    /// Certificate or file errors.
    pub fn agent_cert(&self, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        self.agent_cert_valid(
            name,
            OffsetDateTime::now_utc() - time::Duration::hours(1),
            30,
        )
    }

    /// Issues a client certificate with a chosen validity (e.g. already expired).
    ///
    /// # Errors
    /// Certificate or file errors.
    pub fn agent_cert_valid(
        &self,
        name: &str,
        from: OffsetDateTime,
        days: i64,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (c, k) = self.ca.issue(name, &[], true, from, days)?;
        let cert = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert, c)?;
        std::fs::write(&key, k)?;
        Ok((cert, key))
    }
}

/// A child process with its log file.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(bin: &Path, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
        Proc::spawn_env(bin, args, log, &[])
    }

    /// Spawns `bin` with extra environment variables, logging to `log`.
    ///
    /// # Errors
    /// Spawn failures.
    pub fn spawn_env(
        bin: &Path,
        args: &[&str],
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(bin)
            .args(args)
            .env(
                "RUST_LOG",
                "info,heimdall_agent=debug,heimdall_aggregator=debug",
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f))
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        Ok(Proc {
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    ///
    /// # Errors
    /// When the process does not exit within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let Some(mut c) = self.child.take() else {
            return Ok(None);
        };
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st.code());
            }
            if start.elapsed() > timeout {
                let _ = c.kill();
                let _ = c.wait();
                bail!("process did not exit within {timeout:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`), while it runs.
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Waits until the log contains `text`, for at most `timeout`; whether it does.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if self.log_text().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.log_text().contains(text)
    }

    /// Sends `sig` (e.g. SIGHUP to reload).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running aggregator.
/// The test aggregator's configuration: `base` with `extra`'s tables merged in (a key
/// in both takes `extra`'s value). Tests read the hot tier's SQLite directly, so lines
/// stay there unless `extra` configures `[warm]` itself (their log lines often carry old
/// timestamps, which the default lifecycle would compact at once).
fn aggregator_config(base: &str, extra: &str) -> anyhow::Result<String> {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut table: toml::Table = base.parse()?;
    let extra: toml::Table = extra
        .parse()
        .map_err(|e| anyhow::anyhow!("extra aggregator config: {e}"))?;
    if !extra.contains_key("warm") {
        table.insert(
            "warm".into(),
            toml::Value::Table(toml::Table::from_iter([(
                "compact_after".to_owned(),
                toml::Value::String("3650d".into()),
            )])),
        );
    }
    merge(&mut table, extra);
    Ok(toml::to_string(&table)?)
}

pub struct Aggregator {
    pub proc: Proc,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub addrs: ListenAddrs,
    /// Appended to the config (sections).
    pub extra: String,
}

impl Aggregator {
    /// Starts an aggregator in `dir` (fresh ports unless `ports` is given).
    ///
    /// # Errors
    /// When it does not become ready within 30 s.
    pub fn start(dir: &Path, pki: &Pki, ports: Option<ListenAddrs>) -> anyhow::Result<Aggregator> {
        Aggregator::start_with(dir, pki, ports, "")
    }

    /// As [`Aggregator::start`], with `extra` (TOML sections) appended to the config.
    ///
    /// # Errors
    /// As [`Aggregator::start`].
    pub fn start_with(
        dir: &Path,
        pki: &Pki,
        ports: Option<ListenAddrs>,
        extra: &str,
    ) -> anyhow::Result<Aggregator> {
        Aggregator::start_env(dir, pki, ports, extra, &[])
    }

    /// As [`Aggregator::start_with`], with extra environment variables (failpoints).
    ///
    /// # Errors
    /// As [`Aggregator::start`].
    pub fn start_env(
        dir: &Path,
        pki: &Pki,
        ports: Option<ListenAddrs>,
        extra: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Aggregator> {
        let state_dir = dir.join("aggregator");
        std::fs::create_dir_all(&state_dir)?;
        let (ingest, api, otlp) = match ports {
            Some(p) => (
                p.ingest.to_string(),
                p.api.to_string(),
                p.otlp
                    .map_or_else(|| "127.0.0.1:0".into(), |a| a.to_string()),
            ),
            None => (
                "127.0.0.1:0".into(),
                "127.0.0.1:0".into(),
                "127.0.0.1:0".into(),
            ),
        };
        let config = dir.join("aggregator.toml");
        std::fs::write(
            &config,
            aggregator_config(
                &format!(
                    "state_dir = {:?}\nserver_id = \"test-aggregator\"\n[ingest]\nlisten = {ingest:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\n[api]\nlisten = {api:?}\nmax_limit = 1000000\n[otlp]\nlisten = {otlp:?}\n[shutdown]\ngrace = \"5s\"\n",
                    state_dir.display().to_string(),
                    pki.ca_pem.display().to_string(),
                    pki.server_cert.display().to_string(),
                    pki.server_key.display().to_string(),
                ),
                extra,
            )?,
        )?;
        let listen = state_dir.join(heimdall_aggregator::LISTEN_FILE);
        let _ = std::fs::remove_file(&listen);
        let mut proc = Proc::spawn_env(
            &bins().aggregator,
            &["run", "--config", config.to_str().expect("utf-8 path")],
            &dir.join("aggregator.log"),
            env,
        )?;
        let start = Instant::now();
        let addrs: ListenAddrs = loop {
            if let Ok(b) = std::fs::read(&listen) {
                if let Ok(a) = serde_json::from_slice(&b) {
                    break a;
                }
            }
            if !proc.running() {
                bail!("aggregator exited at start:\n{}", proc.log_tail(30));
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("aggregator not ready in 30s:\n{}", proc.log_tail(30));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Aggregator {
            proc,
            state_dir,
            config,
            addrs,
            extra: extra.to_owned(),
        })
    }

    /// The SQLite database of the hot tier.
    pub fn db(&self) -> PathBuf {
        self.state_dir.join("hot.db")
    }

    /// HTTP base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addrs.api)
    }

    /// Restarts on the same ports (after `kill9` or `terminate`).
    ///
    /// # Errors
    /// As [`Aggregator::start`].
    pub fn restart(&mut self, dir: &Path, pki: &Pki) -> anyhow::Result<()> {
        let again = Aggregator::start_with(dir, pki, Some(self.addrs), &self.extra.clone())?;
        *self = again;
        Ok(())
    }
}

/// Options for an agent under test.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub include: Vec<String>,
    pub batch_timeout: &'static str,
    pub poll_interval: &'static str,
    pub rotate_wait: &'static str,
    pub spool_max: &'static str,
    pub spool_policy: &'static str,
    /// The `[journald]` section's body; by default the journal is not read.
    pub journald: String,
    /// `[metrics] listen`; empty for none.
    pub metrics_listen: String,
    /// Lines added to the `[[files]]` section, e.g. `labels = { app = "api" }`.
    pub files_extra: String,
    /// Lines added to the `[output]` section, e.g. `window = 1`.
    pub output_extra: String,
    /// Appended to the config (start it with a section header).
    pub extra: String,
    /// Extra environment variables (e.g. systemd's `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            include: Vec::new(),
            batch_timeout: "200ms",
            poll_interval: "100ms",
            rotate_wait: "2s",
            spool_max: "256MiB",
            spool_policy: "block",
            journald: "enabled = false".into(),
            metrics_listen: String::new(),
            files_extra: String::new(),
            output_extra: String::new(),
            extra: String::new(),
            env: Vec::new(),
        }
    }
}

/// A running agent.
pub struct Agent {
    pub proc: Proc,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    dir: PathBuf,
}

impl Agent {
    /// Writes the agent's config in `dir` and starts it.
    ///
    /// # Errors
    /// Spawn failures.
    pub fn start(
        dir: &Path,
        name: &str,
        endpoint: SocketAddr,
        pki: &Pki,
        cert: (&Path, &Path),
        opts: &AgentOptions,
    ) -> anyhow::Result<Agent> {
        std::fs::create_dir_all(dir)?;
        let state_dir = dir.join("state");
        let config = dir.join("agent.toml");
        let include: Vec<String> = opts.include.iter().map(|g| format!("{g:?}")).collect();
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\nhost = {name:?}\n[[files]]\ninclude = [{}]\n{}\npoll_interval = {:?}\nrotate_wait = {:?}\n[batch]\ntimeout = {:?}\n[spool]\nmax_bytes = {:?}\npolicy = {:?}\n[journald]\n{}\n[output]\nendpoints = [\"{endpoint}\"]\nserver_name = \"localhost\"\nca = {:?}\ncert = {:?}\nkey = {:?}\nmax_backoff = \"1s\"\nheartbeat = \"1s\"\n{}\n[metrics]\nlisten = {:?}\n[shutdown]\ngrace = \"5s\"\n{}",
                state_dir.display().to_string(),
                include.join(", "),
                opts.files_extra,
                opts.poll_interval,
                opts.rotate_wait,
                opts.batch_timeout,
                opts.spool_max,
                opts.spool_policy,
                opts.journald,
                pki.ca_pem.display().to_string(),
                cert.0.display().to_string(),
                cert.1.display().to_string(),
                opts.output_extra,
                opts.metrics_listen,
                opts.extra,
            ),
        )?;
        let env: Vec<(&str, &str)> = opts
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let proc = Proc::spawn_env(
            &bins().agent,
            &["run", "--config", config.to_str().expect("utf-8 path")],
            &dir.join("agent.log"),
            &env,
        )?;
        Ok(Agent {
            proc,
            state_dir,
            config,
            dir: dir.to_owned(),
        })
    }

    /// Starts the same agent again with the same config and state.
    ///
    /// # Errors
    /// Spawn failures.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.kill9();
        self.proc = Proc::spawn(
            &bins().agent,
            &["run", "--config", self.config.to_str().expect("utf-8 path")],
            &self.dir.join("agent.log"),
        )?;
        Ok(())
    }
}

/// Every stored line, with its `source` label, read straight from the hot tier.
///
/// # Errors
/// SQLite errors.
pub fn stored_lines(db: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let labels: std::collections::HashMap<i64, heimdall_common::record::Labels> =
        heimdall_store::hot::load_streams(&conn)?
            .into_iter()
            .collect();
    let mut raw = Vec::new();
    for p in heimdall_store::hot::partitions(&conn)? {
        for r in heimdall_store::hot_block::all_rows(&conn, &p.name, i64::MAX)? {
            raw.push((
                labels.get(&r.stream_id).cloned().unwrap_or_default(),
                r.line,
            ));
        }
    }
    let mut out = Vec::new();
    for (l, line) in raw {
        out.push((l.get("source").unwrap_or("").to_owned(), line));
    }
    Ok(out)
}

/// A stored row: its stream labels, level name, event time and line.
#[derive(Clone, Debug)]
pub struct Row {
    pub labels: heimdall_common::record::Labels,
    pub level: String,
    pub ts: i64,
    pub line: Vec<u8>,
    pub template_id: u64,
}

/// Every stored row, oldest first by insertion.
///
/// # Errors
/// SQLite errors.
pub fn stored_rows(db: &Path) -> anyhow::Result<Vec<Row>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let labels: std::collections::HashMap<i64, heimdall_common::record::Labels> =
        heimdall_store::hot::load_streams(&conn)?
            .into_iter()
            .collect();
    let mut raw = Vec::new();
    for p in heimdall_store::hot::partitions(&conn)? {
        raw.extend(heimdall_store::hot_block::all_rows(
            &conn,
            &p.name,
            i64::MAX,
        )?);
    }
    // In storage order, as one table would give them.
    raw.sort_by_key(|r| r.id);
    let mut out = Vec::new();
    for r in raw {
        out.push(Row {
            labels: labels.get(&r.stream_id).cloned().unwrap_or_default(),
            level: r.level.to_string(),
            ts: r.ts,
            line: r.line,
            template_id: r.template_id,
        });
    }
    Ok(out)
}

/// CPU seconds (user and system) process `pid` has used, from `/proc/<pid>/stat`
/// (clock ticks of 1/100 s, Linux's USER_HZ).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: the state is field 3,
    // utime and stime are fields 14 and 15.
    let rest = s.get(s.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A free TCP port on loopback (bound and released).
///
/// # Panics
/// If no port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// `GET url` as JSON, with a 10 s timeout.
///
/// # Panics
/// On HTTP or JSON errors (for tests).
pub fn get_json(url: &str) -> serde_json::Value {
    ureq::get(url)
        .timeout(Duration::from_secs(10))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .into_json()
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// `GET url` as text (a metrics page), with a 10 s timeout.
///
/// # Panics
/// On HTTP errors (for tests).
pub fn get_text(url: &str) -> String {
    ureq::get(url)
        .timeout(Duration::from_secs(10))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .into_string()
        .unwrap_or_else(|e| panic!("GET {url}: not text: {e}"))
}

/// The value of a Prometheus counter or gauge (summed over its label sets) at `url`.
pub fn metric(url: &str, name: &str) -> Option<f64> {
    let body = ureq::get(url).call().ok()?.into_string().ok()?;
    let mut found = None;
    for l in body.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Number of stored lines (0 when the database does not exist yet).
pub fn stored_count(db: &Path) -> u64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    heimdall_store::hot::count_rows(&conn).unwrap_or(0)
}

/// Waits until `count()` reaches `want` (and stays there briefly), or the timeout.
/// Returns the last count seen.
pub fn wait_for_count(want: u64, timeout: Duration, mut count: impl FnMut() -> u64) -> u64 {
    let start = Instant::now();
    let mut last = 0;
    while start.elapsed() < timeout {
        last = count();
        if last >= want {
            // Anything beyond `want` would be a duplicate still arriving: give it a moment.
            std::thread::sleep(Duration::from_millis(500));
            return count();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

/// A QUIC client with the given certificate files, for tests that speak the protocol
/// by hand.
///
/// # Errors
/// TLS or socket errors.
pub fn quic_client(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<quinn::Endpoint> {
    let cfg = heimdall_common::tls::client_config(&heimdall_common::tls::TlsFiles {
        ca: ca.to_owned(),
        cert: cert.to_owned(),
        key: key.to_owned(),
    })?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal"))?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// An aggregator with its PKI and a directory of log files, in a temporary directory
/// that lives as long as the cluster: the common set-up of end-to-end tests.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub logs: PathBuf,
    pub pki: Pki,
    pub agg: Aggregator,
}

impl Cluster {
    /// Makes the directories and the PKI and starts the aggregator.
    ///
    /// # Errors
    /// As [`Aggregator::start`].
    pub fn start() -> anyhow::Result<Cluster> {
        Cluster::start_with("")
    }

    /// As [`Cluster::start`], with `extra` (TOML sections) in the aggregator's config.
    ///
    /// # Errors
    /// As [`Aggregator::start`].
    pub fn start_with(extra: &str) -> anyhow::Result<Cluster> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().to_owned();
        let logs = root.join("logs");
        std::fs::create_dir_all(&logs)?;
        let pki = Pki::new(&root.join("pki"))?;
        let agg = Aggregator::start_with(&root, &pki, None, extra)?;
        Ok(Cluster {
            tmp,
            root,
            logs,
            pki,
            agg,
        })
    }

    /// Starts an agent named `name` with its own certificate, tailing `logs/*.log`
    /// unless `opts.include` says otherwise.
    ///
    /// # Errors
    /// Certificate or spawn failures.
    pub fn agent(&self, name: &str, mut opts: AgentOptions) -> anyhow::Result<Agent> {
        if opts.include.is_empty() {
            opts.include = vec![format!("{}/*.log", self.logs.display())];
        }
        let (cert, key) = self.pki.agent_cert(name)?;
        Agent::start(
            &self.root.join(format!("agent-{name}")),
            name,
            self.agg.addrs.ingest,
            &self.pki,
            (&cert, &key),
            &opts,
        )
    }

    /// Lines stored so far.
    pub fn count(&self) -> u64 {
        stored_count(&self.agg.db())
    }
}

/// A Python interpreter with the packages of `tests/requirements.txt` (Loki client,
/// S3 server, DuckDB, …), in a virtual environment under `target/` made on first use
/// (`HEIMDALL_TEST_PYTHON` names another interpreter that has them).
///
/// # Panics
/// When the environment cannot be made (no `python3 -m venv`, or PyPI unreachable).
pub fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        if let Ok(p) = std::env::var("HEIMDALL_TEST_PYTHON") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let reqs = root.join("requirements.txt");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("../target"));
        let venv = target.join("heimdall-test-venv");
        let py = venv.join("bin/python");
        let stamp = venv.join("requirements.installed");
        let want = std::fs::read_to_string(&reqs).expect("tests/requirements.txt");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
            return py;
        }
        let ok = Command::new("python3")
            .args(["-m", "venv", venv.to_str().expect("utf-8 path")])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "python3 -m venv failed (Debian: apt install python3-venv)"
        );
        let ok = Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&reqs)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip install -r tests/requirements.txt failed");
        std::fs::write(&stamp, want).expect("write venv stamp");
        py
    })
}

/// The npm packages of `tests/package.json` (Loki clients for Node), installed under
/// `target/` on first use; returns the `node_modules` directory to put on `NODE_PATH`.
///
/// # Panics
/// When `npm` is missing or the registry unreachable.
pub fn node_modules() -> &'static Path {
    static NM: OnceLock<PathBuf> = OnceLock::new();
    NM.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("../target"));
        let dir = target.join("heimdall-test-node");
        let want = std::fs::read_to_string(root.join("package.json")).expect("tests/package.json");
        let stamp = dir.join("package.installed");
        let modules = dir.join("node_modules");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
            return modules;
        }
        std::fs::create_dir_all(&dir).expect("create the npm directory");
        std::fs::write(dir.join("package.json"), &want).expect("write package.json");
        let ok = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "npm install of tests/package.json failed (Debian: apt install npm)"
        );
        std::fs::write(&stamp, want).expect("write npm stamp");
        modules
    })
}

/// A real S3-compatible server (moto in server mode, from PyPI) on a free loopback
/// port, with a bucket made for the test. Killed when dropped.
pub struct S3Server {
    pub proc: Proc,
    pub endpoint: String,
    pub bucket: String,
    /// A file holding the secret access key the server accepts.
    pub secret_file: PathBuf,
}

impl S3Server {
    /// Starts the server in `dir` and makes `bucket`.
    ///
    /// # Errors
    /// When it does not answer within 30 s.
    pub fn start(dir: &Path, bucket: &str) -> anyhow::Result<S3Server> {
        std::fs::create_dir_all(dir)?;
        let port = free_port();
        let py = python();
        let proc = Proc::spawn(
            py,
            &[
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ],
            &dir.join("moto.log"),
        )?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            if ureq::put(&format!("{endpoint}/{bucket}")).call().is_ok() {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("moto did not start:\n{}", proc.log_tail(30));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let secret_file = dir.join("s3-secret");
        std::fs::write(&secret_file, "test\n")?;
        Ok(S3Server {
            proc,
            endpoint,
            bucket: bucket.to_owned(),
            secret_file,
        })
    }

    /// Object keys under `prefix`.
    ///
    /// # Errors
    /// HTTP failures.
    pub fn keys(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let body = ureq::get(&format!(
            "{}/{}?list-type=2&prefix={prefix}",
            self.endpoint, self.bucket
        ))
        .call()?
        .into_string()?;
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect())
    }
}

/// A stored line as the Loki API returns it: its labels and text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiLine {
    pub labels: std::collections::BTreeMap<String, String>,
    pub ts: i64,
    pub line: String,
}

/// Every line a log query returns over all time, oldest first, through the Loki API
/// (what a user gets). A window whose answer is cut (more than `limit` lines, or the
/// API's cap on result bytes) is split in two and asked again, so any amount can be
/// read back. The aggregator's `api.max_limit` must allow `limit`.
///
/// # Panics
/// On HTTP or shape errors.
pub fn query_lines(base: &str, query: &str, limit: usize) -> Vec<ApiLine> {
    let end = (OffsetDateTime::now_utc().unix_timestamp() + 86_400) as i128 * 1_000_000_000;
    let mut out = Vec::new();
    query_window(base, query, limit, 0, end, &mut out);
    out.sort_by_key(|l| l.ts);
    out
}

fn query_window(
    base: &str,
    query: &str,
    limit: usize,
    start: i128,
    end: i128,
    out: &mut Vec<ApiLine>,
) {
    let resp = ureq::get(&format!("{base}/loki/api/v1/query_range"))
        .query("query", query)
        .query("start", &start.to_string())
        .query("end", &end.to_string())
        .query("limit", &limit.to_string())
        .query("direction", "forward")
        .timeout(Duration::from_secs(120))
        .call()
        .unwrap_or_else(|e| panic!("query {query}: {e}"));
    let v: serde_json::Value = resp.into_json().expect("JSON answer");
    let partial = v["data"]["stats"]["summary"]["partial"] == true;
    let mut got = Vec::new();
    for s in v["data"]["result"].as_array().into_iter().flatten() {
        let labels: std::collections::BTreeMap<String, String> = s["stream"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        for e in s["values"].as_array().into_iter().flatten() {
            got.push(ApiLine {
                labels: labels.clone(),
                ts: e[0].as_str().and_then(|t| t.parse().ok()).unwrap_or(0),
                line: e[1].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    if (partial || got.len() >= limit) && end - start > 1 {
        let mid = start + (end - start) / 2;
        query_window(base, query, limit, start, mid, out);
        query_window(base, query, limit, mid, end, out);
    } else {
        assert!(
            !partial,
            "query {query}: one nanosecond holds more than one answer"
        );
        out.extend(got);
    }
}

/// How many lines a selector has over all time, counted by the aggregator
/// (`sum(count_over_time(…))` through the Loki API); 0 when it cannot answer.
pub fn query_count(base: &str, selector: &str) -> u64 {
    let end = OffsetDateTime::now_utc().unix_timestamp() + 86_400;
    let q = format!("sum(count_over_time({selector}[3650d]))");
    let Ok(r) = ureq::get(&format!("{base}/loki/api/v1/query"))
        .query("query", &q)
        .query("time", &end.to_string())
        .timeout(Duration::from_secs(60))
        .call()
    else {
        return 0;
    };
    let Ok(v) = r.into_json::<serde_json::Value>() else {
        return 0;
    };
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(0, |f| f as u64)
}

/// `POST url` with a JSON body; the status and the answer's JSON (or `Null`).
pub fn post_json(
    url: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut req = ureq::post(url)
        .timeout(Duration::from_secs(30))
        .set("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = match req.send_string(&body.to_string()) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {url}: {e}"),
    };
    let code = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// `GET url`; the status and the body's JSON (`Null` when it is not JSON).
pub fn get_status(url: &str) -> (u16, serde_json::Value) {
    let resp = match ureq::get(url).timeout(Duration::from_secs(30)).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let code = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Appends `data` to the file at `path`, creating it, in one write.
///
/// # Panics
/// On I/O errors (for tests).
pub fn append(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(data)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `q` percent-encoded for a URL's query string (everything but letters, digits and
/// `-_.~`).
pub fn url_encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
