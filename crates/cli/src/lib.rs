//! `heimdall-cli`: the `heimdall` command-line client. It talks to the aggregator only
//! through the typed client of `heimdall-api` (HTTP, and a WebSocket for `tail -f`) and
//! links none of its storage, query engine or server; `rules check` validates rule files
//! with `heimdall-rules`, the same code the aggregator loads them with.
//!
//! `quickstart` runs an aggregator and an agent locally on embedded defaults.

mod quickstart;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use heimdall_api::client::{AnomalyQuery, Client, RangeQuery};
use heimdall_api::loki::{LabelSet, QueryResult, Stream};
use heimdall_api::model::NewSilence;
use heimdall_api::{format_ns, format_value};
pub use quickstart::QuickstartArgs;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Heimdall command-line client: query logs stored by a Heimdall aggregator, list the
/// agents that ship to it, or start a local aggregator and agent with `quickstart`.
#[derive(Parser, Debug)]
#[command(name = "heimdall", version, about, long_about)]
pub struct Cli {
    /// Aggregator HTTP API address.
    #[arg(
        long,
        global = true,
        env = "HEIMDALL_ADDR",
        default_value = "http://127.0.0.1:3100"
    )]
    pub addr: String,
    /// API token, when the aggregator requires one (`[[api.tokens]]`).
    #[arg(long, global = true, env = "HEIMDALL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for an `https://` address besides the usual public
    /// roots, e.g. the aggregator's own CA (`ca.pem` of `heimdall-aggregator init-certs`).
    #[arg(long, global = true, env = "HEIMDALL_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a LogQL query, e.g. `heimdall query '{host="web1"} |= "error"' --since 1h`
    /// or `heimdall query 'sum by (level) (count_over_time({app="api"}[5m]))'`.
    ///
    /// A log query prints matching lines newest first (oldest first with --forward),
    /// each with its time and labels; a metric query prints a table of series and
    /// values (the last point of each series with --instant).
    Query(QueryArgs),
    /// Print lines as they arrive, e.g. `heimdall tail -f '{app="api"} |= "error"'`.
    ///
    /// Without -f, prints the last lines (like `tail`) and exits.
    Tail(TailArgs),
    /// List label names, or the values of one label, e.g. `heimdall labels host`.
    Labels(LabelsArgs),
    /// List the agents known to the aggregator with their status.
    Agents,
    /// Top log templates for a selector, with exact counts, e.g.
    /// `heimdall patterns '{service="api"}' --since 1h`.
    Patterns(PatternsArgs),
    /// Anomaly events detected by the agents, newest first, e.g.
    /// `heimdall anomalies --since 24h --kind silence`.
    Anomalies(AnomaliesArgs),
    /// Alert rules: `heimdall rules check FILE...` validates rule files (no aggregator
    /// needed); `heimdall rules list` shows the running rules with their health;
    /// `heimdall rules reload` makes the aggregator read its rule files again.
    Rules(RulesArgs),
    /// Alerts pending, firing and recently resolved, e.g. `heimdall alerts --state firing`.
    Alerts(AlertsArgs),
    /// Silences: `heimdall silence add '{alertname="HostSilent"}' --duration 2h
    /// --comment "db maintenance"`, `heimdall silence list`, `heimdall silence expire ID`.
    Silence(SilenceArgs),
    /// Incidents (correlated alerts and anomaly events): `heimdall incidents`,
    /// `heimdall incidents show 12`, `heimdall incidents ack 12`,
    /// `heimdall incidents resolve 12`.
    Incidents(IncidentsArgs),
    /// Start an aggregator and an agent on this machine with embedded defaults:
    /// certificates are made on first run, data is kept in SQLite under --dir.
    Quickstart(QuickstartArgs),
    /// Write man pages and shell completions into DIR (used to build the packages).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (man/ and completions/ are made inside).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct RulesArgs {
    #[command(subcommand)]
    pub action: RulesAction,
}

#[derive(Subcommand, Debug)]
pub enum RulesAction {
    /// Validate rule files: prints every problem as FILE:LINE:COLUMN and exits 1 when
    /// there is any.
    Check {
        /// Rule files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The running rules, their last evaluation and errors.
    List,
    /// Read the rule files again (as SIGHUP does).
    Reload,
}

#[derive(clap::Args, Debug)]
pub struct AlertsArgs {
    /// Only alerts in this state: pending, firing or resolved.
    #[arg(long)]
    pub state: Option<String>,
    /// Output: `text` (a table) or `json` (one object per alert).
    #[arg(long, short, default_value = "text")]
    pub output: String,
}

#[derive(clap::Args, Debug)]
pub struct SilenceArgs {
    #[command(subcommand)]
    pub action: SilenceAction,
}

#[derive(Subcommand, Debug)]
pub enum SilenceAction {
    /// Silence the alerts matching a selector over their labels.
    Add {
        /// E.g. `{alertname="HostSilent", host="db1"}`.
        matchers: String,
        /// How long (e.g. 30m, 2h, 1d).
        #[arg(long, default_value = "1h")]
        duration: String,
        /// Why.
        #[arg(long, default_value = "")]
        comment: String,
        /// Who (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Active and future silences.
    List,
    /// End a silence now.
    Expire {
        /// The silence id (from `list`).
        id: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct IncidentsArgs {
    #[command(subcommand)]
    pub action: Option<IncidentAction>,
    /// List resolved incidents too.
    #[arg(long)]
    pub all: bool,
}

#[derive(Subcommand, Debug)]
pub enum IncidentAction {
    /// An incident with its root-cause candidates and timeline.
    Show { id: i64 },
    /// Acknowledge an incident.
    Ack {
        id: i64,
        #[arg(long)]
        by: Option<String>,
    },
    /// Resolve an incident by hand.
    Resolve {
        id: i64,
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// The query: a stream selector with optional line filters (|= != |~ !~).
    pub query: String,
    /// How far back to look (e.g. 15m, 1h, 7d). Ignored when --from is given.
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Start of the range (RFC 3339 or Unix seconds/nanoseconds).
    #[arg(long)]
    pub from: Option<String>,
    /// End of the range (RFC 3339 or Unix seconds/nanoseconds); default now.
    #[arg(long)]
    pub to: Option<String>,
    /// Most lines to print.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Oldest first instead of newest first.
    #[arg(long)]
    pub forward: bool,
    /// Output: `text` (time, labels, line; a table for metric queries), `raw` (the line
    /// only) or `json` (one object per line or per point).
    #[arg(long, short, default_value = "text")]
    pub output: String,
    /// Step between points of a metric query (e.g. 1m); default about 250 points.
    #[arg(long)]
    pub step: Option<String>,
    /// Evaluate a metric query at one instant (--to, default now).
    #[arg(long)]
    pub instant: bool,
}

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// A log query: a stream selector with optional pipeline stages.
    pub query: String,
    /// Keep printing new lines as they arrive (Ctrl-C to stop).
    #[arg(long, short)]
    pub follow: bool,
    /// Lines of history to print first.
    #[arg(long, short = 'n', default_value_t = 10)]
    pub lines: usize,
    /// How far back the history may reach.
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Output: `text`, `raw` or `json`.
    #[arg(long, short, default_value = "text")]
    pub output: String,
}

#[derive(clap::Args, Debug)]
pub struct LabelsArgs {
    /// A label name: print its values instead of the label names.
    pub name: Option<String>,
    /// Only streams matching this selector.
    #[arg(long)]
    pub query: Option<String>,
    /// How far back to look.
    #[arg(long, default_value = "6h")]
    pub since: String,
    /// Output: `text` (one per line) or `json` (one array).
    #[arg(long, short, default_value = "text")]
    pub output: String,
}

#[derive(clap::Args, Debug)]
pub struct PatternsArgs {
    /// A stream selector, e.g. `{host="web1"}`.
    pub query: String,
    /// How far back to look (e.g. 15m, 1h, 7d).
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Most templates to print.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Output: `text` (count, id, template) or `json` (one object per template).
    #[arg(long, short, default_value = "text")]
    pub output: String,
}

#[derive(clap::Args, Debug)]
pub struct AnomaliesArgs {
    /// Only events of streams matching this selector, e.g. `{service="db"}`.
    #[arg(long)]
    pub query: Option<String>,
    /// How far back to look (e.g. 15m, 1h, 7d).
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Only this kind: rate_spike, rate_drop, new_templates, error_ratio, silence.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only events at least this far past their threshold (1 = at it).
    #[arg(long)]
    pub min_score: Option<f64>,
    /// Most events to print.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Output: `text` (time, kind, score, stream, template, sample) or `json` (one
    /// object per event).
    #[arg(long, short, default_value = "text")]
    pub output: String,
}

/// Runs the CLI; returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    let res = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("heimdall: {e:#}");
            1
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = || {
        Client::new(&cli.addr, cli.token.clone(), cli.ca.as_deref())
            .context("cannot set up the client")
    };
    match cli.command {
        Cmd::Query(ref q) => query(&client()?, q).await,
        Cmd::Tail(ref t) => tail(&client()?, t).await,
        Cmd::Labels(ref l) => labels(&client()?, l).await,
        Cmd::Agents => agents(&client()?).await,
        Cmd::Patterns(ref a) => patterns(&client()?, a).await,
        Cmd::Anomalies(ref a) => anomalies(&client()?, a).await,
        Cmd::Rules(RulesArgs {
            action: RulesAction::Check { ref files },
        }) => check_rules(files),
        Cmd::Rules(RulesArgs { ref action }) => rules(&client()?, action).await,
        Cmd::Alerts(ref a) => alerts(&client()?, a).await,
        Cmd::Silence(ref a) => silence(&client()?, a).await,
        Cmd::Incidents(ref a) => incidents(&client()?, a).await,
        Cmd::Quickstart(ref a) => quickstart::run(a).await,
        Cmd::GenerateDocs { ref out } => {
            heimdall_common::docs::generate(<Cli as clap::CommandFactory>::command(), out)
                .map(|files| {
                    for f in files {
                        println!("{}", f.display());
                    }
                })
                .with_context(|| format!("generate-docs: {}", out.display()))
        }
    }
}

/// Runs `fut`, showing `querying… Ns` on a terminal's stderr once it takes over a
/// second.
async fn progress<T>(fut: impl Future<Output = T>) -> T {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return fut.await;
    }
    tokio::pin!(fut);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let spin = ['|', '/', '-', '\\'];
    let mut shown = 0usize;
    let out = loop {
        tokio::select! {
            v = &mut fut => break v,
            _ = tick.tick() => {
                if started.elapsed() >= Duration::from_secs(1) {
                    eprint!("\r{} querying… {}s ", spin[shown % 4], started.elapsed().as_secs());
                    shown += 1;
                }
            }
        }
    };
    if shown > 0 {
        eprint!("\r\x1b[K");
    }
    out
}

fn whoami(by: Option<&String>) -> String {
    by.cloned()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "heimdall-cli".into())
}

fn check_rules(files: &[PathBuf]) -> anyhow::Result<()> {
    match heimdall_rules::load(files, Duration::from_secs(10)) {
        Ok(groups) => {
            let n: usize = groups.iter().map(|g| g.rules.len()).sum();
            println!("{} group(s), {n} rule(s): valid", groups.len());
            Ok(())
        }
        Err(p) => {
            for pr in &p.0 {
                eprintln!("{pr}");
            }
            bail!("{} problem(s) found", p.0.len())
        }
    }
}

async fn rules(c: &Client, action: &RulesAction) -> anyhow::Result<()> {
    match action {
        RulesAction::Check { files } => check_rules(files),
        RulesAction::List => {
            let rules = progress(c.rules()).await?;
            println!(
                "{:<16} {:<24} {:<15} {:>6} {:>9} {:<25} ERROR",
                "GROUP", "RULE", "KIND", "ACTIVE", "EVAL_MS", "LAST_EVAL"
            );
            for r in &rules.rules {
                println!(
                    "{:<16} {:<24} {:<15} {:>6} {:>9.1} {:<25} {}",
                    r.group,
                    r.name,
                    r.kind,
                    r.active,
                    r.last_seconds * 1000.0,
                    match r.last_eval {
                        0 => "never".to_owned(),
                        t => format_ns(t),
                    },
                    r.error,
                );
            }
            Ok(())
        }
        RulesAction::Reload => {
            let r = c.reload_rules().await?;
            println!("reloaded: {} rule(s)", r.rules);
            Ok(())
        }
    }
}

async fn alerts(c: &Client, a: &AlertsArgs) -> anyhow::Result<()> {
    let list = progress(c.alerts(a.state.as_deref())).await?;
    if a.output == "json" {
        for x in &list {
            println!("{}", serde_json::to_string(x)?);
        }
        return Ok(());
    }
    println!(
        "{:<9} {:<24} {:<25} {:>10}  LABELS",
        "STATE", "ALERT", "SINCE", "VALUE"
    );
    for x in &list {
        let labels: Vec<String> = x
            .labels
            .iter()
            .filter(|(k, _)| *k != "alertname" && !k.starts_with("__"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{:<9} {:<24} {:<25} {:>10}  {}",
            x.state.as_str(),
            x.rule,
            format_ns(x.active_at),
            format_value(x.value),
            labels.join(" ")
        );
    }
    Ok(())
}

async fn silence(c: &Client, a: &SilenceArgs) -> anyhow::Result<()> {
    match &a.action {
        SilenceAction::Add {
            matchers,
            duration,
            comment,
            by,
        } => {
            let s = c
                .add_silence(&NewSilence {
                    matchers: matchers.clone(),
                    duration: Some(duration.clone()),
                    comment: comment.clone(),
                    created_by: whoami(by.as_ref()),
                    ..NewSilence::default()
                })
                .await?;
            println!("silence {} until {}", s.id, format_ns(s.ends));
            Ok(())
        }
        SilenceAction::List => {
            let list = progress(c.silences()).await?;
            println!(
                "{:<17} {:<25} {:<25} {:<12} MATCHERS / COMMENT",
                "ID", "STARTS", "ENDS", "BY"
            );
            for s in &list {
                println!(
                    "{:<17} {:<25} {:<25} {:<12} {}  {}",
                    s.id,
                    format_ns(s.starts),
                    format_ns(s.ends),
                    s.created_by,
                    s.matchers,
                    s.comment,
                );
            }
            Ok(())
        }
        SilenceAction::Expire { id } => {
            c.expire_silence(id).await?;
            println!("silence {id} expired");
            Ok(())
        }
    }
}

async fn incidents(c: &Client, a: &IncidentsArgs) -> anyhow::Result<()> {
    match &a.action {
        None => {
            let list = progress(c.incidents(a.all)).await?;
            println!(
                "{:>5} {:<9} {:<25} {:>7} {:<16} {:<12} TITLE",
                "ID", "STATE", "OPENED", "SIGNALS", "LIKELY_CAUSE", "ACKED_BY"
            );
            for i in &list {
                println!(
                    "{:>5} {:<9} {:<25} {:>7} {:<16} {:<12} {}",
                    i.id,
                    i.state,
                    format_ns(i.opened),
                    i.signals.len(),
                    i.candidates.first().map_or("-", |c| c.name.as_str()),
                    i.acked_by.as_deref().unwrap_or("-"),
                    i.title,
                );
            }
            Ok(())
        }
        Some(IncidentAction::Show { id }) => {
            let i = progress(c.incident(*id)).await?;
            println!("Incident #{id} ({}): {}", i.state, i.title);
            println!("opened {}", format_ns(i.opened));
            if let Some(by) = &i.acked_by {
                println!("acknowledged by {by}");
            }
            println!("\nRoot-cause candidates, likeliest first:");
            for (k, c) in i.candidates.iter().enumerate() {
                println!(
                    "  {}. {:<16} score {:.2}  {}",
                    k + 1,
                    c.name,
                    c.score,
                    c.why
                );
            }
            println!("\nTimeline:");
            for s in &i.signals {
                println!(
                    "  {}  {:<8} {:<28} {}",
                    format_ns(s.onset),
                    if s.active { "active" } else { "ended" },
                    s.what,
                    s.subject
                );
                for l in s.samples.iter().take(2) {
                    println!("      | {l}");
                }
                if !s.query.is_empty() {
                    println!("      heimdall query '{}'", s.query);
                }
            }
            Ok(())
        }
        Some(IncidentAction::Ack { id, by }) => {
            c.incident_action(*id, "ack", &whoami(by.as_ref())).await?;
            println!("incident {id} acknowledged");
            Ok(())
        }
        Some(IncidentAction::Resolve { id, by }) => {
            c.incident_action(*id, "resolve", &whoami(by.as_ref()))
                .await?;
            println!("incident {id} resolved");
            Ok(())
        }
    }
}

/// Labels as a LogQL selector: `{host="web1", source="/x"}`.
fn format_labels(l: &LabelSet) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Prints one log line in `output`'s format; false once stdout is closed (e.g. piped
/// into `head`).
fn print_line(out: &mut impl Write, output: &str, ts: i64, labels: &str, line: &str) -> bool {
    let r = match output {
        "raw" => writeln!(out, "{line}"),
        "json" => writeln!(
            out,
            "{}",
            serde_json::json!({"ts": ts.to_string(), "time": format_ns(ts), "labels": labels, "line": line})
        ),
        _ => writeln!(out, "{} {} {}", format_ns(ts), labels, line),
    };
    r.is_ok()
}

/// The lines of streams as (ts, labels, line).
fn stream_lines(streams: &[Stream]) -> Vec<(i64, String, String)> {
    let mut lines = Vec::new();
    for s in streams {
        let labels = format_labels(&s.stream);
        for (ts, line) in s.entries() {
            lines.push((ts, labels.clone(), line.to_owned()));
        }
    }
    lines
}

async fn query(c: &Client, a: &QueryArgs) -> anyhow::Result<()> {
    let data = if a.instant {
        progress(c.query(&a.query, a.to.as_deref(), Some(a.limit))).await?
    } else {
        progress(c.query_range(&RangeQuery {
            query: a.query.clone(),
            start: a.from.clone(),
            end: a.to.clone(),
            since: Some(a.since.clone()),
            limit: Some(a.limit),
            forward: a.forward,
            step: a.step.clone(),
        }))
        .await?
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match &data.result {
        QueryResult::Streams(streams) => {
            let mut lines = stream_lines(streams);
            if a.forward {
                lines.sort_by_key(|l| l.0);
            } else {
                lines.sort_by_key(|l| std::cmp::Reverse(l.0));
            }
            lines.truncate(a.limit);
            for (ts, labels, line) in &lines {
                if !print_line(&mut out, &a.output, *ts, labels, line) {
                    return Ok(());
                }
            }
            if lines.is_empty() {
                eprintln!("no lines matched");
            }
        }
        QueryResult::Matrix(_) | QueryResult::Vector(_) => {
            let rows: Vec<(String, Vec<(f64, String)>)> = match &data.result {
                QueryResult::Matrix(m) => m
                    .iter()
                    .map(|s| (format_labels(&s.metric), s.values.clone()))
                    .collect(),
                QueryResult::Vector(v) => v
                    .iter()
                    .map(|s| (format_labels(&s.metric), vec![s.value.clone()]))
                    .collect(),
                _ => Vec::new(),
            };
            print_series(&mut out, &a.output, &rows);
            if rows.is_empty() {
                eprintln!("no series matched");
            }
        }
        QueryResult::Scalar((_, v)) => {
            let _ = writeln!(out, "{v}");
        }
    }
    Ok(())
}

/// Series points as a table (`text`) or one JSON object per point.
fn print_series(out: &mut impl Write, output: &str, rows: &[(String, Vec<(f64, String)>)]) {
    let time = |t: f64| format_ns((t * 1e9) as i64);
    if output == "json" {
        for (labels, points) in rows {
            for (t, val) in points {
                let o = serde_json::json!({"time": time(*t), "labels": labels, "value": val});
                if writeln!(out, "{o}").is_err() {
                    return;
                }
            }
        }
        return;
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(6).max(6);
    let _ = writeln!(out, "{:<26} {:<width$} VALUE", "TIME", "SERIES");
    for (labels, points) in rows {
        for (t, val) in points {
            if writeln!(out, "{:<26} {:<width$} {val}", time(*t), labels).is_err() {
                return;
            }
        }
    }
}

async fn tail(c: &Client, a: &TailArgs) -> anyhow::Result<()> {
    if !a.follow {
        let data = progress(c.query_range(&RangeQuery {
            query: a.query.clone(),
            since: Some(a.since.clone()),
            limit: Some(a.lines),
            ..RangeQuery::default()
        }))
        .await?;
        let QueryResult::Streams(streams) = &data.result else {
            bail!("tail takes a log query, not a metric query");
        };
        let mut lines = stream_lines(streams);
        lines.sort_by_key(|l| l.0);
        let skip = lines.len().saturating_sub(a.lines);
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for (ts, labels, line) in &lines[skip..] {
            if !print_line(&mut out, &a.output, *ts, labels, line) {
                break;
            }
        }
        return Ok(());
    }
    let since = heimdall_common::config::parse_duration(&a.since).context("--since")?;
    let start = heimdall_common::record::now_ns() - since.as_nanos() as i64;
    let mut t = c.tail(&a.query, a.lines, start).await?;
    let stdout = std::io::stdout();
    while let Some(msg) = t.next().await {
        let mut lines = stream_lines(&msg?.streams);
        lines.sort_by_key(|l| l.0);
        let mut out = stdout.lock();
        for (ts, labels, line) in &lines {
            if !print_line(&mut out, &a.output, *ts, labels, line) {
                return Ok(());
            }
        }
        let _ = out.flush();
    }
    Ok(())
}

async fn labels(c: &Client, a: &LabelsArgs) -> anyhow::Result<()> {
    let list = progress(c.labels(a.name.as_deref(), a.query.as_deref(), &a.since)).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.output == "json" {
        let _ = writeln!(out, "{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    for x in &list {
        if writeln!(out, "{x}").is_err() {
            break;
        }
    }
    Ok(())
}

async fn patterns(c: &Client, a: &PatternsArgs) -> anyhow::Result<()> {
    // One step over the whole range: a count per template.
    let data = progress(c.patterns(&a.query, &a.since, Some(&a.since), a.limit)).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.output != "json" {
        let _ = writeln!(out, "{:>12}  {:<16}  TEMPLATE", "COUNT", "ID");
    }
    for p in &data {
        let r = if a.output == "json" {
            writeln!(out, "{}", serde_json::to_string(p)?)
        } else {
            writeln!(out, "{:>12}  {:<16}  {}", p.total, p.template_id, p.pattern)
        };
        if r.is_err() {
            return Ok(());
        }
    }
    if data.is_empty() {
        eprintln!("no templates in this range");
    }
    Ok(())
}

async fn anomalies(c: &Client, a: &AnomaliesArgs) -> anyhow::Result<()> {
    let data = progress(c.anomalies(&AnomalyQuery {
        query: a.query.clone(),
        since: Some(a.since.clone()),
        kind: a.kind.clone(),
        min_score: a.min_score,
        limit: Some(a.limit),
    }))
    .await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for e in &data {
        let r = if a.output == "json" {
            writeln!(out, "{}", serde_json::to_string(e)?)
        } else {
            writeln!(
                out,
                "{} {:<13} score {:>6.1} (observed {:.1}, baseline {:.1}) {}\n    template: {}\n    sample:   {}",
                format_ns(e.time_ns),
                e.kind,
                e.score,
                e.observed,
                e.baseline,
                format_labels(&e.stream),
                e.templates.first().map_or("", |t| t.text.as_str()),
                e.samples.first().map_or("", String::as_str),
            )
        };
        if r.is_err() {
            return Ok(());
        }
    }
    if data.is_empty() {
        eprintln!("no anomalies in this range");
    }
    Ok(())
}

async fn agents(c: &Client) -> anyhow::Result<()> {
    let list = progress(c.agents()).await?;
    println!(
        "{:<24} {:<10} {:<9} {:>12} {:>8} {:>12} {:>6} {:>8} {:>11} {:<25}",
        "AGENT",
        "VERSION",
        "CONNECTED",
        "SPOOL_BYTES",
        "LAG_S",
        "UNREAD_BYTES",
        "FILES",
        "REJECTED",
        "DEAD_LETTER",
        "LAST_SEEN"
    );
    let mut problems = Vec::new();
    for a in &list {
        println!(
            "{:<24} {:<10} {:<9} {:>12} {:>8.1} {:>12} {:>6} {:>8} {:>11} {:<25}",
            a.agent_id,
            a.version,
            a.connected,
            a.spool_bytes,
            a.lag_seconds,
            a.unread_bytes,
            a.files,
            a.rejected_batches,
            a.dead_letter_batches,
            format_ns(a.last_seen_ns),
        );
        if a.rejected_batches > 0 || a.dead_letter_batches > 0 {
            problems.push(format!(
                "{}: {} batches in its dead-letter directory{}",
                a.agent_id,
                a.dead_letter_batches,
                if a.last_reject.is_empty() {
                    String::new()
                } else {
                    format!("; last rejected because: {}", a.last_reject)
                }
            ));
        }
    }
    if !problems.is_empty() {
        eprintln!();
        for p in problems {
            eprintln!("{p}");
        }
        eprintln!(
            "Once the cause is fixed, run `heimdall-agent dead-letter resend` on the agent's host."
        );
    }
    Ok(())
}
