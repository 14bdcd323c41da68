//! `heimdall-agent` command line: parse → load config → init tracing and metrics → run.

use anyhow::Context;
use clap::{Parser, Subcommand};
use heimdall_agent::config::{AgentConfig, Overrides};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

const DEFAULT_CONFIG: &str = "/etc/heimdall/agent.toml";

/// Heimdall edge log agent: tails log files, spools batches on disk and ships them to a
/// Heimdall aggregator over QUIC with mutual TLS.
///
/// Without a subcommand, `run` is assumed. Configuration is read from --config (default
/// /etc/heimdall/agent.toml; built-in defaults when that file does not exist). Exit
/// codes: 0 after a clean shutdown, 64 for a bad configuration or usage, 1 for a
/// runtime failure.
#[derive(Parser, Debug)]
#[command(name = "heimdall-agent", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Tail, spool and ship until SIGTERM or SIGINT (the default).
    Run(RunArgs),
    /// Validate the configuration and its certificates and exit: 0 when valid, 64 with
    /// every problem named (unknown keys, bad values, certificates that cannot be read,
    /// do not match their key, are out of date or do not chain to the CA).
    CheckConfig(CheckArgs),
    /// Redact lines read on stdin with the configured rules and write them to stdout,
    /// to try rules before rolling them out. Records a `drop` rule matches are not
    /// written; a summary of what was found goes to stderr.
    Redact(RedactArgs),
    /// Batches the aggregator rejected, kept in the spool's dead-letter directory: list
    /// them, or re-send them once the cause is fixed (`dead-letter resend`).
    #[command(subcommand)]
    DeadLetter(DeadLetterCmd),
    /// Read messages on stdin, one per line, and print `template_id<TAB>template` for
    /// each, as the agent's template miner sees them (its configuration, online, in
    /// order), to evaluate it on any log.
    Templates(TemplatesArgs),
    /// Write man pages and shell completions into DIR (used to build the packages).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (man/ and completions/ are made inside).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum DeadLetterCmd {
    /// List the rejected batches with when and why they were rejected.
    List(RunArgs),
    /// Send rejected batches to the aggregator again (all of them, or the `.batch` files
    /// named), over a connection of their own while the agent runs. A batch the
    /// aggregator stores moves to `dead-letter/resent/`; one it rejects again stays, and
    /// the reason is printed. Sending the same batch twice stores it once. Exit code 0
    /// when every batch was stored, 1 otherwise.
    Resend {
        #[command(flatten)]
        run: RunArgs,
        /// `.batch` files to send (default: all of them).
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct TemplatesArgs {
    /// Configuration file (TOML) whose `[templates]` settings to use; built-in defaults
    /// when it does not exist.
    #[arg(short, long, env = "HEIMDALL_AGENT_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
struct RedactArgs {
    /// Configuration file (TOML); built-in defaults when it does not exist.
    #[arg(short, long, env = "HEIMDALL_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Use the rules of file source N (`files[N]`, from 0) instead of the global ones.
    #[arg(long, value_name = "N", conflicts_with = "journald")]
    source: Option<usize>,
    /// Use the rules of the journal source.
    #[arg(long)]
    journald: bool,
    /// Also write each finding (line, type, byte range, action) to stderr.
    #[arg(long)]
    explain: bool,
}

#[derive(clap::Args, Debug, Clone)]
struct CheckArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Check the configuration only, not the certificate files it names.
    #[arg(long)]
    skip_certificates: bool,
}

#[derive(clap::Args, Debug, Clone, Default)]
struct RunArgs {
    /// Configuration file (TOML).
    #[arg(short, long, env = "HEIMDALL_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Tail files matching this glob instead of the configured ones (repeatable).
    #[arg(long = "include", value_name = "GLOB")]
    include: Vec<String>,
    /// Directory for the spool and state (overrides `state_dir`).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Aggregator address host:port (repeatable; overrides `output.endpoints`).
    #[arg(long = "endpoint", value_name = "HOST:PORT")]
    endpoint: Vec<String>,
    /// Address for /metrics, or "" to disable (overrides `metrics.listen`).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Log filter, e.g. `info` or `heimdall_agent=debug` (also RUST_LOG).
    #[arg(long, env = "HEIMDALL_LOG", default_value = DEFAULT_LOG)]
    log: String,
}

const DEFAULT_LOG: &str = "info";

fn overrides(args: &RunArgs) -> Overrides {
    Overrides {
        include: args.include.clone(),
        state_dir: args.state_dir.clone(),
        endpoints: args.endpoint.clone(),
        metrics_listen: args.metrics_listen.clone(),
    }
}

/// The configuration's path and text.
fn read_text(args: &RunArgs) -> anyhow::Result<(PathBuf, String)> {
    Ok(heimdall_common::config::read_config(
        args.config.as_deref(),
        DEFAULT_CONFIG,
    )?)
}

fn load(args: &RunArgs) -> anyhow::Result<AgentConfig> {
    let (path, text) = read_text(args)?;
    AgentConfig::load(&text, &overrides(args))
        .with_context(|| format!("invalid config {}", path.display()))
}

/// `check-config`: the configuration's problems and its certificates' (files missing
/// or unreadable, a key of another certificate, expired, not chaining to the CA), all
/// in one pass.
fn check_config(args: &RunArgs, skip_certificates: bool) -> ExitCode {
    use heimdall_common::tls::{check_files, Purpose};
    let (path, text) = match read_text(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("heimdall-agent: {e:#}");
            return ExitCode::from(64);
        }
    };
    let ov = overrides(args);
    let mut problems = Vec::new();
    if let Err(e) = AgentConfig::load(&text, &ov) {
        problems.extend(e.to_string().lines().map(str::to_owned));
    }
    let mut warnings = Vec::new();
    let tls = AgentConfig::tls_files_of(&text, &ov).filter(|_| !skip_certificates);
    if let Some(tls) = tls {
        let missing: Vec<_> = [&tls.ca, &tls.cert, &tls.key]
            .into_iter()
            .filter(|p| !p.exists())
            .collect();
        if missing.is_empty() {
            let f = check_files(&tls, Purpose::Client);
            problems.extend(f.problems.into_iter().map(|p| format!("certificates: {p}")));
            warnings.extend(f.warnings);
        } else {
            // Not enrolled yet: a normal state after installing the package.
            warnings.push(format!(
                "not enrolled yet: {} missing; the agent runs and spools until they are in place (heimdall-aggregator issue-agent-cert makes them)",
                missing
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if heimdall_common::config::report_check("heimdall-agent", &path, &problems, &warnings) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(64)
    }
}

/// Options given before the subcommand (`heimdall-agent --config F run`) apply when
/// the subcommand does not give them itself.
fn merged(top: &RunArgs, sub: RunArgs) -> RunArgs {
    RunArgs {
        config: sub.config.or_else(|| top.config.clone()),
        include: if sub.include.is_empty() {
            top.include.clone()
        } else {
            sub.include
        },
        state_dir: sub.state_dir.or_else(|| top.state_dir.clone()),
        endpoint: if sub.endpoint.is_empty() {
            top.endpoint.clone()
        } else {
            sub.endpoint
        },
        metrics_listen: sub.metrics_listen.or_else(|| top.metrics_listen.clone()),
        log: if sub.log == DEFAULT_LOG {
            top.log.clone()
        } else {
            sub.log
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let top = cli.run;
    let args = match cli.command {
        Some(Command::Run(a)) => merged(&top, a),
        Some(Command::CheckConfig(a)) => {
            return check_config(&merged(&top, a.run), a.skip_certificates)
        }
        Some(Command::Redact(mut a)) => {
            a.config = a.config.or(top.config);
            return redact(&a);
        }
        Some(Command::Templates(mut a)) => {
            a.config = a.config.or(top.config);
            return templates(&a);
        }
        Some(Command::DeadLetter(c)) => return dead_letter(&top, c),
        Some(Command::GenerateDocs { out }) => return generate_docs(&out),
        None => top,
    };
    let cfg = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("heimdall-agent: {e:#}");
            return ExitCode::from(64);
        }
    };
    let nofile = raise_open_files_limit();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match nofile {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open files limit; many tailed files may fail to open")
        }
    }

    let rt = match runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let metrics = match cfg.metrics_listen {
            None => None,
            Some(_) => {
                match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
                    Ok(h) => Some(h),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot record metrics");
                        return ExitCode::from(1);
                    }
                }
            }
        };
        if let Some(h) = metrics.clone() {
            // Histograms and summaries are drained here; without it they grow.
            tokio::spawn(async move {
                let mut t = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    t.tick().await;
                    h.run_upkeep();
                }
            });
        }
        let shutdown = CancellationToken::new();
        let (reload_tx, reload_rx) = tokio::sync::watch::channel(None);
        tokio::spawn(signals(shutdown.clone(), args.clone(), reload_tx));
        match heimdall_agent::run(cfg, shutdown, reload_rx, metrics).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "agent failed");
                ExitCode::from(1)
            }
        }
    })
}

fn dead_letter(top: &RunArgs, cmd: DeadLetterCmd) -> ExitCode {
    use heimdall_agent::spool::dead_letter;
    let (args, files, resend) = match cmd {
        DeadLetterCmd::List(a) => (merged(top, a), Vec::new(), false),
        DeadLetterCmd::Resend { run, files } => (merged(top, run), files, true),
    };
    let cfg = match load(&RunArgs {
        metrics_listen: Some(String::new()),
        ..args
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("heimdall-agent: {e:#}");
            return ExitCode::from(64);
        }
    };
    let spool_dir = cfg.state_dir.join("spool");
    let mut items = match dead_letter::list(&spool_dir) {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "heimdall-agent: cannot list {}: {e}",
                dead_letter::dir(&spool_dir).display()
            );
            return ExitCode::from(1);
        }
    };
    if !files.is_empty() {
        let want: Vec<PathBuf> = files
            .iter()
            .map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone()))
            .collect();
        let unknown: Vec<&PathBuf> = want
            .iter()
            .filter(|w| {
                !items
                    .iter()
                    .any(|d| std::fs::canonicalize(&d.path).ok().as_ref() == Some(*w))
            })
            .collect();
        if !unknown.is_empty() {
            for u in unknown {
                eprintln!(
                    "heimdall-agent: {} is not a batch in {}",
                    u.display(),
                    dead_letter::dir(&spool_dir).display()
                );
            }
            return ExitCode::from(64);
        }
        items.retain(|d| {
            std::fs::canonicalize(&d.path)
                .ok()
                .is_some_and(|p| want.contains(&p))
        });
    }
    if !resend {
        if items.is_empty() {
            println!(
                "no rejected batches in {}",
                dead_letter::dir(&spool_dir).display()
            );
            return ExitCode::SUCCESS;
        }
        println!(
            "{:<52} {:>20} {:>10}  REASON",
            "FILE", "REJECTED (UTC)", "BYTES"
        );
        for d in &items {
            let when = time::OffsetDateTime::from_unix_timestamp(d.rejected_at)
                .ok()
                .and_then(|t| {
                    t.format(time::macros::format_description!(
                        "[year]-[month]-[day] [hour]:[minute]:[second]"
                    ))
                    .ok()
                })
                .unwrap_or_default();
            println!(
                "{:<52} {:>20} {:>10}  {}",
                d.path.display(),
                when,
                d.bytes,
                d.reason.trim()
            );
        }
        return ExitCode::SUCCESS;
    }
    if items.is_empty() {
        println!(
            "no rejected batches to send in {}",
            dead_letter::dir(&spool_dir).display()
        );
        return ExitCode::SUCCESS;
    }
    let rt = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let n = items.len();
    match rt.block_on(heimdall_agent::ship::resend::resend(&cfg.ship, items)) {
        Ok(done) => {
            let mut failed = n - done.len();
            for r in &done {
                let records = r
                    .records
                    .map_or(String::new(), |n| format!(" ({n} records)"));
                match &r.result {
                    Ok(()) => println!("stored: {}{records}", r.dead.path.display()),
                    Err(why) => {
                        failed += 1;
                        println!("not stored: {}{records}: {why}", r.dead.path.display());
                    }
                }
            }
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("heimdall-agent: cannot reach the aggregator: {e}");
            ExitCode::from(1)
        }
    }
}

/// A tokio runtime (on all cores, or on this thread); exit code 1 when it cannot start.
fn runtime(multi: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut b = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().map_err(|e| {
        eprintln!("heimdall-agent: cannot start runtime: {e}");
        ExitCode::from(1)
    })
}

fn generate_docs(out: &std::path::Path) -> ExitCode {
    match heimdall_common::docs::generate(<Cli as clap::CommandFactory>::command(), out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("heimdall-agent generate-docs: {}: {e}", out.display());
            ExitCode::from(1)
        }
    }
}

/// The configuration for a stdin tool (`templates`, `redact`): no metrics listener;
/// a bad file is reported and exits 64.
fn load_for_tool(config: Option<PathBuf>) -> Result<AgentConfig, ExitCode> {
    let args = RunArgs {
        config,
        metrics_listen: Some(String::new()),
        ..RunArgs::default()
    };
    load(&args).map_err(|e| {
        eprintln!("heimdall-agent: {e:#}");
        ExitCode::from(64)
    })
}

fn templates(a: &TemplatesArgs) -> ExitCode {
    use heimdall_agent::pipeline::template::{Miner, MinerConfig};
    use std::io::{BufRead, Write};
    let cfg = match load_for_tool(a.config.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // With mining off in the configuration, show what the default miner would do.
    let mut miner = Miner::new(cfg.templates.unwrap_or_else(MinerConfig::default));
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut buf = Vec::new();
    let mut input = stdin.lock();
    loop {
        buf.clear();
        match input.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                eprintln!("heimdall-agent: {e}");
                return ExitCode::from(1);
            }
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        let m = miner.add(line);
        let t = miner.template(m.cluster).unwrap_or_default();
        if writeln!(out, "{:016x}\t{t}", m.id).is_err() {
            return ExitCode::SUCCESS;
        }
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}

fn redact(a: &RedactArgs) -> ExitCode {
    let cfg = match load_for_tool(a.config.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let redactor = if a.journald {
        match &cfg.journald {
            Some(j) => j.redact.clone(),
            None => {
                eprintln!("heimdall-agent: the journal source is disabled in this configuration");
                return ExitCode::from(64);
            }
        }
    } else if let Some(n) = a.source {
        match cfg.files.get(n) {
            Some(f) => f.redact.clone(),
            None => {
                eprintln!(
                    "heimdall-agent: --source {n}: the configuration has {} file sources",
                    cfg.files.len()
                );
                return ExitCode::from(64);
            }
        }
    } else {
        cfg.redact.clone()
    };
    let Some(redactor) = redactor else {
        eprintln!("heimdall-agent: redaction is disabled for this source; lines pass unchanged");
        return ExitCode::from(64);
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut err = std::io::stderr().lock();
    match heimdall_agent::pipeline::redact::filter(
        &redactor,
        &mut stdin.lock(),
        &mut out,
        &mut err,
        a.explain,
    ) {
        Ok(sum) => {
            let found: Vec<String> = sum.found.iter().map(|(t, n)| format!("{t}={n}")).collect();
            eprintln!(
                "{} lines, {} redacted, {} dropped{}{}",
                sum.lines,
                sum.redacted,
                sum.dropped,
                if found.is_empty() { "" } else { "; " },
                found.join(" ")
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heimdall-agent: {e}");
            ExitCode::from(1)
        }
    }
}

/// Raises the soft limit of open files to the hard limit: every tailed file is an open
/// descriptor (10,000 files is normal on a busy host; the usual soft limit is 1,024).
fn raise_open_files_limit() -> nix::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// SIGTERM/SIGINT stop the agent; SIGHUP reads the configuration again and, when it
/// is valid, reloads the sources (an invalid file is reported and the running
/// configuration kept).
async fn signals(
    shutdown: CancellationToken,
    args: RunArgs,
    reload: tokio::sync::watch::Sender<Option<AgentConfig>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM received");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT received");
                break;
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                match load(&args) {
                    // The newest configuration replaces one not yet applied: SIGHUPs
                    // coalesce and never hold up SIGTERM.
                    Ok(cfg) => {
                        reload.send_replace(Some(cfg));
                    }
                    Err(e) => tracing::error!("{e:#}; keeping the running configuration"),
                }
            }
        }
    }
    shutdown.cancel();
}
