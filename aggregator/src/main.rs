//! `heimdall-aggregator` command line: parse → load config → init tracing and metrics → run.

use anyhow::Context;
use clap::{Parser, Subcommand};
use heimdall_aggregator::config::{AggregatorConfig, Overrides, DEFAULT_STATE_DIR};
use heimdall_common::certs;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

const DEFAULT_CONFIG: &str = "/etc/heimdall/aggregator.toml";

/// Heimdall aggregator: receives logs from Heimdall agents over QUIC with mutual TLS,
/// stores them in tiers (SQLite hot, Parquet warm on local disk, S3-compatible cold)
/// and answers queries over HTTP, including the Loki API that Grafana uses.
///
/// First run `heimdall-aggregator init` to make a private CA and certificates, then
/// `heimdall-aggregator run`. Configuration is read from --config (default
/// /etc/heimdall/aggregator.toml; built-in defaults when that file does not exist).
/// Exit codes: 0 after a clean shutdown, 64 for a bad configuration or usage, 1 for a
/// runtime failure.
#[derive(Parser, Debug)]
#[command(name = "heimdall-aggregator", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Receive, store and serve until SIGTERM or SIGINT (the default).
    Run(RunArgs),
    /// Validate the configuration and its certificates and exit: 0 when valid, 64 with
    /// every problem named (unknown keys, bad values, certificates that cannot be read,
    /// do not match their key, are out of date or do not chain to the CA).
    CheckConfig(CheckArgs),
    /// Make a private CA, a server certificate and a certificate for the local agent in
    /// <state-dir>/tls (existing files are kept, so this is safe to re-run).
    Init(InitArgs),
    /// Issue a client certificate for an agent, signed by the CA in <state-dir>/tls.
    IssueAgentCert(IssueArgs),
    /// Add the cold tier's segments that the catalog does not list (after the database
    /// was lost, or to take over another aggregator's prefix in the bucket). Run it with
    /// the aggregator stopped.
    RebuildCatalog(RunArgs),
    /// Rewrite segments for other Parquet engines (DuckDB, Spark, pandas): segments
    /// store most lines as templates and variables, which only Heimdall rebuilds; each
    /// SEGMENT is written into DIR, under its own name, with every line whole in its
    /// `line` column. Safe while the aggregator runs.
    ExportSegments(ExportArgs),
    /// Write man pages and shell completions into DIR (used to build the packages).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (man/ and completions/ are made inside).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
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
    #[arg(short, long, env = "HEIMDALL_AGGREGATOR_CONFIG")]
    config: Option<PathBuf>,
    /// State directory (overrides `state_dir`).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// QUIC ingest address (overrides `ingest.listen`).
    #[arg(long, value_name = "ADDR")]
    ingest_listen: Option<String>,
    /// HTTP API address (overrides `api.listen`).
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<String>,
    /// Log filter, e.g. `info` or `heimdall_aggregator=debug` (also RUST_LOG).
    #[arg(long, env = "HEIMDALL_LOG", default_value = DEFAULT_LOG)]
    log: String,
}

const DEFAULT_LOG: &str = "info";

#[derive(clap::Args, Debug)]
struct InitArgs {
    /// State directory; certificates go to <DIR>/tls.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Extra names or addresses for the server certificate (repeatable); localhost,
    /// 127.0.0.1, ::1 and the hostname are always included.
    #[arg(long = "san", value_name = "NAME")]
    san: Vec<String>,
    /// Identity of the local agent's certificate. Default: the hostname.
    #[arg(long)]
    agent_name: Option<String>,
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// Directory to write the exported segments into (made if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Segment files (`.parquet`), from the warm directory or fetched from the bucket.
    #[arg(required = true, value_name = "SEGMENT")]
    segments: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct IssueArgs {
    /// The agent's identity (certificate common name), usually its hostname.
    #[arg(long = "name", alias = "host")]
    name: String,
    /// Directory to write <name>.pem, <name>-key.pem and ca.pem into.
    #[arg(long)]
    out: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = 397)]
    days: i64,
    /// State directory holding tls/ca.pem and tls/ca-key.pem.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

fn overrides(args: &RunArgs) -> Overrides {
    Overrides {
        state_dir: args.state_dir.clone(),
        ingest_listen: args.ingest_listen.clone(),
        api_listen: args.api_listen.clone(),
    }
}

/// The configuration's path and text.
fn read_text(args: &RunArgs) -> anyhow::Result<(PathBuf, String)> {
    Ok(heimdall_common::config::read_config(
        args.config.as_deref(),
        DEFAULT_CONFIG,
    )?)
}

fn load(args: &RunArgs) -> anyhow::Result<AggregatorConfig> {
    let (path, text) = read_text(args)?;
    AggregatorConfig::load(&text, &overrides(args))
        .with_context(|| format!("invalid config {}", path.display()))
}

/// `check-config`: the configuration's problems and its certificates' (the ingest
/// certificate against the CA agents chain to, and the API's HTTPS certificate), all in
/// one pass.
fn check_config(args: &RunArgs, skip_certificates: bool) -> ExitCode {
    use heimdall_common::tls::{check_files, Purpose, TlsFiles};
    let (path, text) = match read_text(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("heimdall-aggregator: {e:#}");
            return ExitCode::from(64);
        }
    };
    let ov = overrides(args);
    let mut problems = Vec::new();
    if let Err(e) = AggregatorConfig::load(&text, &ov) {
        problems.extend(e.to_string().lines().map(str::to_owned));
    }
    let mut warnings = Vec::new();
    let tls = AggregatorConfig::tls_files_of(&text, &ov).filter(|_| !skip_certificates);
    if let Some((ingest, api)) = tls {
        let f = check_files(&ingest, Purpose::Server);
        problems.extend(
            f.problems
                .into_iter()
                .map(|p| format!("ingest certificates: {p}")),
        );
        warnings.extend(f.warnings);
        if let Some((cert, key)) = api {
            // The API's certificate is checked against its own chain's last
            // certificate: what matters here is that it loads, matches its key and is
            // in date.
            let f = check_files(
                &TlsFiles {
                    ca: cert.clone(),
                    cert,
                    key,
                },
                Purpose::Server,
            );
            problems.extend(
                f.problems
                    .into_iter()
                    .filter(|p| !p.contains("does not verify against the CA"))
                    .map(|p| format!("API certificates: {p}")),
            );
            warnings.extend(f.warnings);
        }
    }
    if heimdall_common::config::report_check("heimdall-aggregator", &path, &problems, &warnings) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(64)
    }
}

/// Options given before the subcommand (`heimdall-aggregator --config F run`) apply
/// when the subcommand does not give them itself.
fn merged(top: &RunArgs, sub: RunArgs) -> RunArgs {
    RunArgs {
        config: sub.config.or_else(|| top.config.clone()),
        state_dir: sub.state_dir.or_else(|| top.state_dir.clone()),
        ingest_listen: sub.ingest_listen.or_else(|| top.ingest_listen.clone()),
        api_listen: sub.api_listen.or_else(|| top.api_listen.clone()),
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
        Some(Command::Init(a)) => return init(a),
        Some(Command::IssueAgentCert(a)) => return issue(a),
        Some(Command::RebuildCatalog(a)) => return rebuild_catalog(merged(&top, a)),
        Some(Command::ExportSegments(a)) => return export_segments(a),
        Some(Command::GenerateDocs { out }) => {
            return generate_docs(<Cli as clap::CommandFactory>::command(), &out)
        }
        None => top,
    };
    let cfg = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("heimdall-aggregator: {e:#}");
            return ExitCode::from(64);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let prometheus = match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()
    {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("heimdall-aggregator: cannot install metrics recorder: {e}");
            None
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heimdall-aggregator: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        if let Some(h) = prometheus.clone() {
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
        tokio::spawn(signals(shutdown.clone()));
        match heimdall_aggregator::run(cfg, shutdown, prometheus).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "aggregator failed");
                ExitCode::from(1)
            }
        }
    })
}

/// Writes this program's man pages and shell completions into `out`.
fn generate_docs(cmd: clap::Command, out: &std::path::Path) -> ExitCode {
    let name = cmd.get_name().to_owned();
    match heimdall_common::docs::generate(cmd, out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name} generate-docs: {}: {e}", out.display());
            ExitCode::from(1)
        }
    }
}

fn rebuild_catalog(args: RunArgs) -> ExitCode {
    let cfg = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("heimdall-aggregator: {e:#}");
            return ExitCode::from(64);
        }
    };
    let Some(cold_cfg) = cfg.cold.clone() else {
        eprintln!("heimdall-aggregator rebuild-catalog: the configuration has no [cold] bucket");
        return ExitCode::from(64);
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heimdall-aggregator: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = (|| -> anyhow::Result<heimdall_store::rebuild::Rebuilt> {
        let store = heimdall_store::hot::HotStore::open_with(
            &cfg.db_path,
            cfg.max_group_rows,
            cfg.partition_ns,
        )?;
        let cold = heimdall_store::cold::ColdStore::new(&cold_cfg, rt.handle().clone())?;
        Ok(heimdall_store::rebuild::rebuild(&store, &cold)?)
    })();
    match res {
        Ok(r) => {
            println!(
                "{} segments added ({} lines), {} already listed, {} unreadable",
                r.added, r.rows, r.known, r.failed
            );
            if r.failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("heimdall-aggregator rebuild-catalog: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `export-segments`: each segment rewritten with its lines whole, for other engines.
fn export_segments(a: ExportArgs) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(&a.out) {
        eprintln!(
            "heimdall-aggregator export-segments: {}: {e}",
            a.out.display()
        );
        return ExitCode::from(1);
    }
    let mut failed = 0;
    for src in &a.segments {
        let Some(name) = src.file_name() else {
            eprintln!(
                "heimdall-aggregator export-segments: {}: not a file",
                src.display()
            );
            failed += 1;
            continue;
        };
        let dst = a.out.join(name);
        let same = std::fs::canonicalize(src).ok() == std::fs::canonicalize(&dst).ok();
        if same {
            eprintln!(
                "heimdall-aggregator export-segments: {} would overwrite itself; choose another --out",
                src.display()
            );
            failed += 1;
            continue;
        }
        match heimdall_store::segment::export(src, &dst, 3) {
            Ok(rows) => println!("{}: {rows} lines", dst.display()),
            Err(e) => {
                eprintln!("heimdall-aggregator export-segments: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn init(a: InitArgs) -> ExitCode {
    let mut names = certs::default_server_names();
    names.extend(a.san);
    let agent = a
        .agent_name
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    match certs::init(&a.state_dir.join("tls"), &names, &agent) {
        Ok(out) => {
            if out.created.is_empty() {
                println!(
                    "everything already exists in {}",
                    a.state_dir.join("tls").display()
                );
            }
            for p in &out.created {
                println!("created {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("heimdall-aggregator init: {e}");
            ExitCode::from(1)
        }
    }
}

fn issue(a: IssueArgs) -> ExitCode {
    match certs::issue_agent(&a.state_dir.join("tls"), &a.name, &a.out, a.days) {
        Ok((c, k)) => {
            println!(
                "created {} and {} (and ca.pem) for agent {}",
                c.display(),
                k.display(),
                a.name
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("heimdall-aggregator issue-agent-cert: {e}");
            ExitCode::from(1)
        }
    }
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
