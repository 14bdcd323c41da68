//! `heimdall-cli`: the `heimdall` command-line client. It talks to the aggregator only
//! over HTTP and links none of its storage, query engine or server.
//!
//! The `heimdall` command-line client: queries the aggregator's HTTP API, lists agents,
//! and `quickstart` runs an aggregator and an agent locally on embedded defaults.

mod quickstart;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
pub use quickstart::QuickstartArgs;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::Child;
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
    if let Some(t) = cli.token.clone() {
        let _ = TOKEN.set(t);
    }
    let res = match cli.command {
        Cmd::Query(q) => query(&cli.addr, &q),
        Cmd::Tail(t) => tail(&cli.addr, &t),
        Cmd::Labels(l) => labels(&cli.addr, &l),
        Cmd::Agents => agents(&cli.addr),
        Cmd::Patterns(a) => patterns(&cli.addr, &a),
        Cmd::Anomalies(a) => anomalies(&cli.addr, &a),
        Cmd::Rules(a) => rules(&cli.addr, a),
        Cmd::Alerts(a) => alerts(&cli.addr, &a),
        Cmd::Silence(a) => silence(&cli.addr, a),
        Cmd::Incidents(a) => incidents(&cli.addr, a),
        Cmd::Quickstart(a) => quickstart::run(&a, terminate),
        Cmd::GenerateDocs { out } => {
            heimdall_common::docs::generate(<Cli as clap::CommandFactory>::command(), &out)
                .map(|files| {
                    for f in files {
                        println!("{}", f.display());
                    }
                })
                .with_context(|| format!("generate-docs: {}", out.display()))
        }
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("heimdall: {e:#}");
            1
        }
    }
}

static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Shows `querying… Ns` on a terminal's stderr while a slow request runs.
struct Progress {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start() -> Progress {
        use std::io::IsTerminal;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let done = done.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let spin = ['|', '/', '-', '\\'];
                let mut i = 0;
                let mut shown = false;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if started.elapsed() >= Duration::from_secs(1) {
                        eprint!(
                            "\r{} querying… {}s ",
                            spin[i % 4],
                            started.elapsed().as_secs()
                        );
                        shown = true;
                        i += 1;
                    }
                }
                if shown {
                    eprint!("\r\x1b[K");
                }
            })
        });
        Progress { done, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn get(url: &str, params: &[(&str, &str)]) -> anyhow::Result<Value> {
    let _progress = Progress::start();
    let mut req = authorized(ureq::get(url).timeout(Duration::from_secs(120)));
    for (k, v) in params {
        req = req.query(k, v);
    }
    answer(url, req.call())
}

/// A request to the API with a JSON body (or none).
fn send(method: &str, url: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let req = authorized(ureq::request(method, url).timeout(Duration::from_secs(60)));
    let res = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    answer(url, res)
}

fn authorized(req: ureq::Request) -> ureq::Request {
    match TOKEN.get() {
        Some(t) => req.set("Authorization", &format!("Bearer {t}")),
        None => req,
    }
}

/// The JSON of an answer, or the API's error `message`.
fn answer(url: &str, res: Result<ureq::Response, ureq::Error>) -> anyhow::Result<Value> {
    match res {
        Ok(r) => r.into_json().context("invalid JSON from aggregator"),
        Err(ureq::Error::Status(code, r)) => {
            let body: Value = r.into_json().unwrap_or(Value::Null);
            let msg = body
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)");
            bail!("aggregator answered {code}: {msg}")
        }
        Err(e) => Err(e).with_context(|| format!("cannot reach the aggregator at {url}")),
    }
}

fn whoami(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "heimdall-cli".into())
}

fn rules(addr: &str, a: RulesArgs) -> anyhow::Result<()> {
    let base = addr.trim_end_matches('/');
    match a.action {
        RulesAction::Check { files } => {
            match heimdall_rules::load(&files, Duration::from_secs(10)) {
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
        RulesAction::List => {
            let v = get(&format!("{base}/api/v1/rules"), &[])?;
            println!(
                "{:<16} {:<24} {:<15} {:>6} {:>9} {:<25} ERROR",
                "GROUP", "RULE", "KIND", "ACTIVE", "EVAL_MS", "LAST_EVAL"
            );
            for r in v["data"]["rules"].as_array().into_iter().flatten() {
                println!(
                    "{:<16} {:<24} {:<15} {:>6} {:>9.1} {:<25} {}",
                    r["group"].as_str().unwrap_or(""),
                    r["name"].as_str().unwrap_or(""),
                    r["kind"].as_str().unwrap_or(""),
                    r["active"].as_u64().unwrap_or(0),
                    r["last_seconds"].as_f64().unwrap_or(0.0) * 1000.0,
                    match r["last_eval"].as_i64().unwrap_or(0) {
                        0 => "never".to_owned(),
                        t => format_ns(t),
                    },
                    r["error"].as_str().unwrap_or(""),
                );
            }
            Ok(())
        }
        RulesAction::Reload => {
            let v = send("POST", &format!("{base}/api/v1/rules/reload"), None)?;
            println!("reloaded: {} rule(s)", v["data"]["rules"]);
            Ok(())
        }
    }
}

fn alerts(addr: &str, a: &AlertsArgs) -> anyhow::Result<()> {
    let base = addr.trim_end_matches('/');
    let mut params = Vec::new();
    if let Some(s) = &a.state {
        params.push(("state", s.as_str()));
    }
    let v = get(&format!("{base}/api/v1/alerts"), &params)?;
    let list = v["data"].as_array().cloned().unwrap_or_default();
    if a.output == "json" {
        for x in list {
            println!("{x}");
        }
        return Ok(());
    }
    println!(
        "{:<9} {:<24} {:<25} {:>10}  LABELS",
        "STATE", "ALERT", "SINCE", "VALUE"
    );
    for x in list {
        let labels: Vec<String> = x["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "alertname" && !k.starts_with("__"))
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        println!(
            "{:<9} {:<24} {:<25} {:>10}  {}",
            x["state"].as_str().unwrap_or(""),
            x["rule"].as_str().unwrap_or(""),
            format_ns(x["active_at"].as_i64().unwrap_or(0)),
            heimdall_rules::format_value(x["value"].as_f64().unwrap_or(f64::NAN)),
            labels.join(" ")
        );
    }
    Ok(())
}

fn silence(addr: &str, a: SilenceArgs) -> anyhow::Result<()> {
    let base = addr.trim_end_matches('/');
    match a.action {
        SilenceAction::Add {
            matchers,
            duration,
            comment,
            by,
        } => {
            let v = send(
                "POST",
                &format!("{base}/api/v1/silences"),
                Some(serde_json::json!({
                    "matchers": matchers,
                    "duration": duration,
                    "comment": comment,
                    "created_by": whoami(by),
                })),
            )?;
            println!(
                "silence {} until {}",
                v["data"]["id"].as_str().unwrap_or(""),
                format_ns(v["data"]["ends"].as_i64().unwrap_or(0))
            );
            Ok(())
        }
        SilenceAction::List => {
            let v = get(&format!("{base}/api/v1/silences"), &[])?;
            println!(
                "{:<17} {:<25} {:<25} {:<12} MATCHERS / COMMENT",
                "ID", "STARTS", "ENDS", "BY"
            );
            for s in v["data"].as_array().into_iter().flatten() {
                println!(
                    "{:<17} {:<25} {:<25} {:<12} {}  {}",
                    s["id"].as_str().unwrap_or(""),
                    format_ns(s["starts"].as_i64().unwrap_or(0)),
                    format_ns(s["ends"].as_i64().unwrap_or(0)),
                    s["created_by"].as_str().unwrap_or(""),
                    s["matchers"].as_str().unwrap_or(""),
                    s["comment"].as_str().unwrap_or(""),
                );
            }
            Ok(())
        }
        SilenceAction::Expire { id } => {
            send("DELETE", &format!("{base}/api/v1/silences/{id}"), None)?;
            println!("silence {id} expired");
            Ok(())
        }
    }
}

fn incidents(addr: &str, a: IncidentsArgs) -> anyhow::Result<()> {
    let base = addr.trim_end_matches('/');
    match a.action {
        None => {
            let v = get(
                &format!("{base}/api/v1/incidents"),
                &[("state", if a.all { "all" } else { "open" })],
            )?;
            println!(
                "{:>5} {:<9} {:<25} {:>7} {:<16} {:<12} TITLE",
                "ID", "STATE", "OPENED", "SIGNALS", "LIKELY_CAUSE", "ACKED_BY"
            );
            for i in v["data"].as_array().into_iter().flatten() {
                println!(
                    "{:>5} {:<9} {:<25} {:>7} {:<16} {:<12} {}",
                    i["id"],
                    i["state"].as_str().unwrap_or(""),
                    format_ns(i["opened"].as_i64().unwrap_or(0)),
                    i["signals"].as_array().map_or(0, Vec::len),
                    i["candidates"][0]["name"].as_str().unwrap_or("-"),
                    i["acked_by"].as_str().unwrap_or("-"),
                    i["title"].as_str().unwrap_or(""),
                );
            }
            Ok(())
        }
        Some(IncidentAction::Show { id }) => {
            let v = get(&format!("{base}/api/v1/incidents/{id}"), &[])?;
            let i = &v["data"];
            println!(
                "Incident #{id} ({}): {}",
                i["state"].as_str().unwrap_or(""),
                i["title"].as_str().unwrap_or("")
            );
            println!("opened {}", format_ns(i["opened"].as_i64().unwrap_or(0)));
            if let Some(by) = i["acked_by"].as_str() {
                println!("acknowledged by {by}");
            }
            println!("\nRoot-cause candidates, likeliest first:");
            for (k, c) in i["candidates"].as_array().into_iter().flatten().enumerate() {
                println!(
                    "  {}. {:<16} score {:.2}  {}",
                    k + 1,
                    c["name"].as_str().unwrap_or(""),
                    c["score"].as_f64().unwrap_or(0.0),
                    c["why"].as_str().unwrap_or("")
                );
            }
            println!("\nTimeline:");
            for s in i["signals"].as_array().into_iter().flatten() {
                println!(
                    "  {}  {:<8} {:<28} {}",
                    format_ns(s["onset"].as_i64().unwrap_or(0)),
                    if s["active"].as_bool().unwrap_or(false) {
                        "active"
                    } else {
                        "ended"
                    },
                    s["what"].as_str().unwrap_or(""),
                    s["subject"].as_str().unwrap_or("")
                );
                for l in s["samples"].as_array().into_iter().flatten().take(2) {
                    println!("      | {}", l.as_str().unwrap_or(""));
                }
                if let Some(q) = s["query"].as_str() {
                    println!("      heimdall query '{q}'");
                }
            }
            Ok(())
        }
        Some(IncidentAction::Ack { id, by }) => {
            send(
                "POST",
                &format!("{base}/api/v1/incidents/{id}/ack"),
                Some(serde_json::json!({"by": whoami(by)})),
            )?;
            println!("incident {id} acknowledged");
            Ok(())
        }
        Some(IncidentAction::Resolve { id, by }) => {
            send(
                "POST",
                &format!("{base}/api/v1/incidents/{id}/resolve"),
                Some(serde_json::json!({"by": whoami(by)})),
            )?;
            println!("incident {id} resolved");
            Ok(())
        }
    }
}

/// Formats nanoseconds since the epoch as RFC 3339 (UTC).
pub fn format_ns(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ns.to_string())
}

/// A JSON label object as a LogQL selector: `{host="web1", source="/x"}`.
fn format_labels(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            let inner: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or("")))
                .collect();
            format!("{{{}}}", inner.join(", "))
        })
        .unwrap_or_default()
}

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

/// Lines of a `streams` result as (ts, labels, line).
fn stream_lines(v: &Value) -> Vec<(i64, String, String)> {
    let mut lines = Vec::new();
    for s in v["data"]["result"].as_array().into_iter().flatten() {
        let labels = format_labels(&s["stream"]);
        for e in s["values"].as_array().into_iter().flatten() {
            let ts = e[0].as_str().and_then(|t| t.parse().ok()).unwrap_or(0);
            lines.push((ts, labels.clone(), e[1].as_str().unwrap_or("").to_owned()));
        }
    }
    lines
}

fn query(addr: &str, a: &QueryArgs) -> anyhow::Result<()> {
    let limit = a.limit.to_string();
    let base = addr.trim_end_matches('/');
    let mut params = vec![
        ("query", a.query.as_str()),
        ("limit", limit.as_str()),
        ("direction", if a.forward { "forward" } else { "backward" }),
    ];
    let v = if a.instant {
        if let Some(t) = &a.to {
            params.push(("time", t));
        }
        get(&format!("{base}/loki/api/v1/query"), &params)?
    } else {
        match &a.from {
            Some(f) => params.push(("start", f)),
            None => params.push(("since", &a.since)),
        }
        if let Some(t) = &a.to {
            params.push(("end", t));
        }
        if let Some(s) = &a.step {
            params.push(("step", s));
        }
        get(&format!("{base}/loki/api/v1/query_range"), &params)?
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match v["data"]["resultType"].as_str() {
        Some("streams") => {
            let mut lines = stream_lines(&v);
            if a.forward {
                lines.sort_by_key(|l| l.0);
            } else {
                lines.sort_by_key(|l| std::cmp::Reverse(l.0));
            }
            lines.truncate(a.limit);
            for (ts, labels, line) in &lines {
                if !print_line(&mut out, &a.output, *ts, labels, line) {
                    return Ok(()); // stdout closed (e.g. piped into head)
                }
            }
            if lines.is_empty() {
                eprintln!("no lines matched");
            }
        }
        Some(kind @ ("matrix" | "vector")) => {
            let mut rows: Vec<(String, Vec<(f64, String)>)> = Vec::new();
            for s in v["data"]["result"].as_array().into_iter().flatten() {
                let labels = format_labels(&s["metric"]);
                let points: Vec<(f64, String)> = if kind == "vector" {
                    vec![(
                        s["value"][0].as_f64().unwrap_or(0.0),
                        s["value"][1].as_str().unwrap_or("").to_owned(),
                    )]
                } else {
                    s["values"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            (
                                p[0].as_f64().unwrap_or(0.0),
                                p[1].as_str().unwrap_or("").to_owned(),
                            )
                        })
                        .collect()
                };
                rows.push((labels, points));
            }
            if a.output == "json" {
                for (labels, points) in &rows {
                    for (t, val) in points {
                        let o = serde_json::json!({"time": format_ns((*t * 1e9) as i64), "labels": labels, "value": val});
                        if writeln!(out, "{o}").is_err() {
                            return Ok(());
                        }
                    }
                }
            } else {
                let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(6).max(6);
                let _ = writeln!(out, "{:<26} {:<width$} VALUE", "TIME", "SERIES");
                for (labels, points) in &rows {
                    for (t, val) in points {
                        if writeln!(
                            out,
                            "{:<26} {:<width$} {val}",
                            format_ns((*t * 1e9) as i64),
                            labels
                        )
                        .is_err()
                        {
                            return Ok(());
                        }
                    }
                }
            }
            if rows.is_empty() {
                eprintln!("no series matched");
            }
        }
        Some("scalar") => {
            let _ = writeln!(out, "{}", v["data"]["result"][1].as_str().unwrap_or(""));
        }
        other => bail!("unexpected result type {other:?} from the aggregator"),
    }
    Ok(())
}

fn tail(addr: &str, a: &TailArgs) -> anyhow::Result<()> {
    let base = addr.trim_end_matches('/');
    if !a.follow {
        let limit = a.lines.to_string();
        let v = get(
            &format!("{base}/loki/api/v1/query_range"),
            &[
                ("query", &a.query),
                ("limit", &limit),
                ("since", &a.since),
                ("direction", "backward"),
            ],
        )?;
        let mut lines = stream_lines(&v);
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
    let since = heimdall_common::config::parse_duration(&a.since).map_err(anyhow::Error::msg)?;
    let start = heimdall_common::record::now_ns() - since.as_nanos() as i64;
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        format!("ws://{}", base.trim_start_matches("http://"))
    };
    let mut url = url_with(
        &format!("{ws_base}/loki/api/v1/tail"),
        &[
            ("query", &a.query),
            ("limit", &a.lines.to_string()),
            ("start", &start.to_string()),
        ],
    );
    if url.starts_with("wss://") {
        bail!("tail -f over https is not supported by this CLI; use the HTTP address");
    }
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned();
    let stream = std::net::TcpStream::connect(&host)
        .with_context(|| format!("cannot reach the aggregator at {host}"))?;
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(std::mem::take(&mut url))
            .context("bad tail URL")?;
    if let Some(t) = TOKEN.get() {
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {t}").parse().context("bad token")?,
        );
    }
    let (mut ws, _) =
        tungstenite::client(request, stream).map_err(|e| anyhow::anyhow!("tail: {e}"))?;
    let stdout = std::io::stdout();
    loop {
        let msg = match ws.read() {
            Ok(m) => m,
            Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
            Err(e) => bail!("tail: {e}"),
        };
        let tungstenite::Message::Text(text) = msg else {
            if msg.is_close() {
                return Ok(());
            }
            continue;
        };
        let v: Value = serde_json::from_str(&text).context("invalid tail message")?;
        let wrapped = serde_json::json!({"data": {"result": v["streams"]}});
        let mut lines = stream_lines(&wrapped);
        lines.sort_by_key(|l| l.0);
        let mut out = stdout.lock();
        for (ts, labels, line) in &lines {
            if !print_line(&mut out, &a.output, *ts, labels, line) {
                return Ok(());
            }
        }
        let _ = out.flush();
    }
}

fn url_with(base: &str, params: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    format!("{base}?{}", q.join("&"))
}

fn labels(addr: &str, a: &LabelsArgs) -> anyhow::Result<()> {
    let base = addr.trim_end_matches('/');
    let url = match &a.name {
        Some(n) => format!("{base}/loki/api/v1/label/{n}/values"),
        None => format!("{base}/loki/api/v1/labels"),
    };
    let mut params = vec![("since", a.since.as_str())];
    if let Some(q) = &a.query {
        params.push(("query", q));
    }
    let v = get(&url, &params)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.output == "json" {
        let _ = writeln!(out, "{}", v["data"]);
        return Ok(());
    }
    for x in v["data"].as_array().into_iter().flatten() {
        if writeln!(out, "{}", x.as_str().unwrap_or("")).is_err() {
            break;
        }
    }
    Ok(())
}

fn patterns(addr: &str, a: &PatternsArgs) -> anyhow::Result<()> {
    let limit = a.limit.to_string();
    let v = get(
        &format!("{}/loki/api/v1/patterns", addr.trim_end_matches('/')),
        &[
            ("query", a.query.as_str()),
            ("since", a.since.as_str()),
            ("limit", limit.as_str()),
            ("step", a.since.as_str()),
        ],
    )?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let data = v["data"].as_array().cloned().unwrap_or_default();
    if a.output != "json" {
        let _ = writeln!(out, "{:>12}  {:<16}  TEMPLATE", "COUNT", "ID");
    }
    for p in &data {
        let r = if a.output == "json" {
            writeln!(out, "{p}")
        } else {
            writeln!(
                out,
                "{:>12}  {:<16}  {}",
                p["total"].as_u64().unwrap_or(0),
                p["template_id"].as_str().unwrap_or(""),
                p["pattern"].as_str().unwrap_or("")
            )
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

fn anomalies(addr: &str, a: &AnomaliesArgs) -> anyhow::Result<()> {
    let limit = a.limit.to_string();
    let min = a.min_score.map(|m| m.to_string());
    let mut params = vec![("since", a.since.as_str()), ("limit", limit.as_str())];
    if let Some(q) = &a.query {
        params.push(("query", q));
    }
    if let Some(k) = &a.kind {
        params.push(("kind", k));
    }
    if let Some(m) = &min {
        params.push(("min_score", m));
    }
    let v = get(
        &format!("{}/api/v1/anomalies", addr.trim_end_matches('/')),
        &params,
    )?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let data = v["data"].as_array().cloned().unwrap_or_default();
    for e in &data {
        let r = if a.output == "json" {
            writeln!(out, "{e}")
        } else {
            let stream = format_labels(&e["stream"]);
            let template = e["templates"][0]["text"].as_str().unwrap_or("");
            let sample = e["samples"][0].as_str().unwrap_or("");
            writeln!(
                out,
                "{} {:<13} score {:>6.1} (observed {:.1}, baseline {:.1}) {}\n    template: {}\n    sample:   {}",
                format_ns(e["time_ns"].as_i64().unwrap_or(0)),
                e["kind"].as_str().unwrap_or(""),
                e["score"].as_f64().unwrap_or(0.0),
                e["observed"].as_f64().unwrap_or(0.0),
                e["baseline"].as_f64().unwrap_or(0.0),
                stream,
                template,
                sample
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

fn agents(addr: &str) -> anyhow::Result<()> {
    let v = get(
        &format!("{}/api/v1/agents", addr.trim_end_matches('/')),
        &[],
    )?;
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
    for a in v["data"].as_array().into_iter().flatten() {
        let id = a["agent_id"].as_str().unwrap_or("");
        let rejected = a["rejected_batches"].as_u64().unwrap_or(0);
        let dead = a["dead_letter_batches"].as_u64().unwrap_or(0);
        println!(
            "{:<24} {:<10} {:<9} {:>12} {:>8.1} {:>12} {:>6} {:>8} {:>11} {:<25}",
            id,
            a["version"].as_str().unwrap_or(""),
            a["connected"].as_bool().unwrap_or(false),
            a["spool_bytes"].as_u64().unwrap_or(0),
            a["lag_seconds"].as_f64().unwrap_or(0.0),
            a["unread_bytes"].as_u64().unwrap_or(0),
            a["files"].as_u64().unwrap_or(0),
            rejected,
            dead,
            format_ns(a["last_seen_ns"].as_i64().unwrap_or(0)),
        );
        if rejected > 0 || dead > 0 {
            let why = a["last_reject"].as_str().unwrap_or("");
            problems.push(format!(
                "{id}: {dead} batches in its dead-letter directory{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!("; last rejected because: {why}")
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

pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
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

/// Sends SIGTERM and waits up to 20 s, then kills.
fn terminate(child: &mut Child) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
