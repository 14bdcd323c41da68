//! The rule engine: one thread that evaluates rules, moves alert instances through
//! pending → firing → resolved, persists every state, and hands changes to the
//! notifier and the correlator.
//!
//! # When rules run
//! Each group runs every `interval`. Besides, the hot store tells the engine about
//! every commit (which streams got lines, whether anomaly events came): rules whose
//! selectors match those streams, and anomaly rules, run at once (after a debounce of
//! [`DEBOUNCE`] that gathers commits arriving together). A rule therefore costs
//! nothing while its streams are quiet, and fires within milliseconds of the line that
//! trips it being stored. Metric expressions over long ranges are answered from the
//! agents' pre-aggregates where they can be (see `query::eval`).
//!
//! # Restarts
//! Instances are stored in the alert database with their state, onset and last
//! evaluation; a restarted engine loads them, so a firing alert neither pages again
//! nor is forgotten, and a pending one keeps its `for` clock.

use super::config::Alerting;
use super::correlate::Correlator;
use super::incremental::RuleState;
use super::notify::Notifier;
use super::state::{self, Alert, State};
use heimdall_common::record::{now_ns, Labels};
use heimdall_common::tasks::Stage;
use heimdall_logql::{Expr, MatchOp, Matcher};
use heimdall_query::eval::{evaluate, EvalRequest, Limits, Value};
use heimdall_query::exec::{LogRequest, Source};
use heimdall_rules::{Group, Rule, RuleKind};
use heimdall_store::hot::{self, Committed};
use heimdall_store::read::Tiers;
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Commits arriving within this long of the first are handled together.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// Resolved instances are kept this long (for the API) before they are forgotten.
const KEEP_RESOLVED: i64 = 15 * 60 * 1_000_000_000;

/// Streams that logged longer ago than this are not watched by absence rules.
const STREAM_RETIRED: i64 = 86_400 * 1_000_000_000;

/// Sample lines kept per alert.
const SAMPLES: usize = 5;

/// A request to the engine from the API.
pub enum Command {
    /// Replace the rule groups.
    Reload(Vec<Group>),
    /// Acknowledge an incident.
    AckIncident { id: i64, by: String },
    /// Resolve an incident by hand.
    ResolveIncident { id: i64, by: String },
}

enum Msg {
    Committed(Committed),
    Command(Command, oneshot::Sender<Result<(), CommandError>>),
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The incident does not exist or is not open.
    #[error(transparent)]
    Incident(#[from] super::correlate::IncidentError),
    /// The alert database failed.
    #[error("alert database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The engine is not running (shutting down).
    #[error("the alert engine has stopped")]
    Stopped,
    /// The engine did not answer in time.
    #[error("the alert engine did not answer within {0:?}")]
    NoAnswer(Duration),
}

/// Why a rule, or a step of a round, could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The hot store cannot be opened for reading.
    #[error(transparent)]
    Open(#[from] hot::Error),
    /// A read of the hot store failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A query over the tiers failed.
    #[error(transparent)]
    Query(#[from] heimdall_store::read::Error),
}

/// How long a command may wait for the engine (a round in progress finishes first).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How one rule did at its last evaluation.
pub use heimdall_api::model::RuleHealth;

/// A handle the aggregator and the API keep: feeds commits and commands to the engine.
#[derive(Clone)]
pub struct AlertHandle {
    tx: mpsc::Sender<Msg>,
    /// Set when a commit notice could not be queued: the engine then runs every rule.
    overflow: Arc<AtomicBool>,
    pub health: Arc<Mutex<Vec<RuleHealth>>>,
    pub db_path: PathBuf,
}

impl AlertHandle {
    /// Tells the engine about a commit (never blocks).
    pub fn committed(&self, c: Committed) {
        match self.tx.try_send(Msg::Committed(c)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.overflow.store(true, Ordering::Relaxed),
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Runs a command on the engine thread and waits for its answer.
    ///
    /// # Errors
    /// The command's [`CommandError`], or that the engine stopped or did not answer.
    pub async fn command(&self, c: Command) -> Result<(), CommandError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Command(c, tx))
            .await
            .map_err(|_| CommandError::Stopped)?;
        tokio::time::timeout(COMMAND_TIMEOUT, rx)
            .await
            .map_err(|_| CommandError::NoAnswer(COMMAND_TIMEOUT))?
            .map_err(|_| CommandError::Stopped)?
    }
}

/// When each host was last heard from: the aggregator's registry of agents, which
/// absence rules watch.
pub trait Hosts: Send + Sync {
    /// `(host, last heard from in ns since the Unix epoch)` for every known host.
    fn last_seen(&self) -> Vec<(String, i64)>;
}

/// Everything the engine reads.
pub struct EngineDeps {
    pub cfg: Alerting,
    pub groups: Vec<Group>,
    pub hot_path: PathBuf,
    pub tiers: Arc<Tiers>,
    pub hosts: Arc<dyn Hosts>,
    /// One per dispatcher, woken when notifications were queued (`notify_one` keeps a
    /// permit, so a dispatcher busy at that moment still sees it).
    pub wake: Vec<Arc<tokio::sync::Notify>>,
    pub eval_limits: Limits,
}

/// Errors that stop the engine from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The alert database cannot be opened.
    #[error("alert database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The engine thread cannot be started.
    #[error("cannot start the alert engine thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Starts the engine thread as part of `stage` (it stops when the stage does). Must be
/// called within a Tokio runtime, which the thread uses for its timers.
///
/// # Errors
/// [`Error::Db`] when the alert database cannot be opened, [`Error::Thread`].
pub fn start(deps: EngineDeps, stage: &Stage) -> Result<AlertHandle, Error> {
    let path = deps.cfg.db_path.clone();
    let db_err = |source| Error::Db {
        path: path.clone(),
        source,
    };
    let conn = state::open(&deps.cfg.db_path).map_err(db_err)?;
    let (tx, rx) = mpsc::channel(4096);
    let overflow = Arc::new(AtomicBool::new(false));
    let health = Arc::new(Mutex::new(Vec::new()));
    let handle = AlertHandle {
        tx,
        overflow: overflow.clone(),
        health: health.clone(),
        db_path: deps.cfg.db_path.clone(),
    };
    let mut engine = Engine::new(deps, conn, overflow, health).map_err(db_err)?;
    let rt = tokio::runtime::Handle::current();
    stage
        .spawn_thread("alert-engine", move |stop| engine.run(rx, &stop, &rt))
        .map_err(Error::Thread)?;
    Ok(handle)
}

/// What the engine waits for between rounds.
enum Next {
    Msg(Msg),
    Due,
    Stop,
}

struct Engine {
    deps: EngineDeps,
    db: Connection,
    hot: Option<Connection>,
    overflow: Arc<AtomicBool>,
    health: Arc<Mutex<Vec<RuleHealth>>>,
    /// By fingerprint: pending, firing and recently resolved instances.
    alerts: HashMap<String, Alert>,
    /// Next run of each group, ns.
    due: Vec<i64>,
    streams: HashMap<i64, Labels>,
    /// Stream id → when lines last arrived (ns, aggregator clock).
    stream_seen: HashMap<i64, i64>,
    /// Host → when its agent was last heard from.
    host_seen: HashMap<String, i64>,
    host_seen_saved: i64,
    notifier: Notifier,
    correlator: Correlator,
    /// Newest anomaly event handed to the correlator (receive time, ns).
    anomalies_seen: i64,
    /// Incremental states of expression rules, by (group, rule) index.
    inc: HashMap<(usize, usize), RuleState>,
    /// Stream id → the rules whose selectors match it (streams never change labels).
    stream_rules: HashMap<i64, Vec<(usize, usize)>>,
    /// Stream id → the highest row id of it fed to the incremental states.
    stream_cursor: HashMap<i64, i64>,
}

/// A rule by (group, rule) index.
type RuleKey = (usize, usize);

/// Most streams whose matching rules are cached; the cache is cleared beyond it.
const STREAM_RULES_CACHE: usize = 1_000_000;

/// Rules to run now.
#[derive(Default)]
struct Work {
    all: bool,
    streams: HashSet<i64>,
    anomalies: bool,
}

fn selectors(e: &Expr, out: &mut Vec<Vec<Matcher>>) {
    match e {
        Expr::Range { log, .. } => out.push(log.matchers.clone()),
        Expr::Agg { inner, .. } | Expr::Neg(inner) => selectors(inner, out),
        Expr::Binary { lhs, rhs, .. } => {
            selectors(lhs, out);
            selectors(rhs, out);
        }
        Expr::Number(_) | Expr::Vector(_) => {}
    }
}

fn first_log(e: &Expr) -> Option<&heimdall_logql::LogQuery> {
    match e {
        Expr::Range { log, .. } => Some(log),
        Expr::Agg { inner, .. } | Expr::Neg(inner) => first_log(inner),
        Expr::Binary { lhs, rhs, .. } => first_log(lhs).or_else(|| first_log(rhs)),
        Expr::Number(_) | Expr::Vector(_) => None,
    }
}

fn matches(m: &[Matcher], l: &Labels) -> bool {
    m.iter().all(|m| m.matches(l.get(&m.name)))
}

fn labels_map(l: &Labels) -> BTreeMap<String, String> {
    l.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// An instance the condition holds for at one evaluation.
struct Active {
    labels: BTreeMap<String, String>,
    value: f64,
    /// Onset, when the rule knows better than "now".
    onset: Option<i64>,
    samples: Vec<String>,
}

impl Engine {
    fn new(
        deps: EngineDeps,
        db: Connection,
        overflow: Arc<AtomicBool>,
        health: Arc<Mutex<Vec<RuleHealth>>>,
    ) -> Result<Engine, rusqlite::Error> {
        let now = now_ns();
        let alerts: HashMap<String, Alert> = state::alerts(&db)?
            .into_iter()
            .map(|a| (a.fingerprint.clone(), a))
            .collect();
        let host_seen = state::hosts_seen(&db)?.into_iter().collect();
        let notifier = Notifier::load(&db, &deps.cfg)?;
        let correlator = Correlator::load(&db, &deps.cfg)?;
        let due = vec![now; deps.groups.len()];
        let e = Engine {
            deps,
            db,
            hot: None,
            overflow,
            health,
            alerts,
            due,
            streams: HashMap::new(),
            stream_seen: HashMap::new(),
            host_seen,
            host_seen_saved: 0,
            notifier,
            correlator,
            anomalies_seen: now,
            inc: HashMap::new(),
            stream_rules: HashMap::new(),
            stream_cursor: HashMap::new(),
        };
        e.publish_health(Vec::new());
        metrics::gauge!("heimdall_aggregator_alert_rules").set(e.rule_count() as f64);
        Ok(e)
    }

    fn wake_dispatchers(&self) {
        for w in &self.deps.wake {
            w.notify_one();
        }
    }

    fn rule_count(&self) -> usize {
        self.deps.groups.iter().map(|g| g.rules.len()).sum()
    }

    fn hot(&mut self) -> Result<&Connection, RunError> {
        if self.hot.is_none() {
            self.hot = Some(hot::open_reader(&self.deps.hot_path)?);
        }
        Ok(self.hot.as_ref().expect("just opened"))
    }

    fn refresh_streams(&mut self) -> Result<(), RunError> {
        let conn = self.hot()?;
        let all = hot::load_streams(conn)?;
        let now = now_ns();
        for (id, l) in all {
            // Streams first seen now count as alive since the engine started (the
            // absence clock of a stream starts at most at its first sight here).
            self.stream_seen.entry(id).or_insert(now);
            self.streams.insert(id, l);
        }
        Ok(())
    }

    fn run(
        &mut self,
        mut rx: mpsc::Receiver<Msg>,
        stop: &CancellationToken,
        rt: &tokio::runtime::Handle,
    ) {
        if let Err(e) = self.refresh_streams() {
            tracing::warn!(error = %e, "alert engine: cannot read streams yet");
        }
        // Absence alerts firing before the restart keep their onset.
        for a in self.alerts.values() {
            if a.state == State::Firing {
                if let Some(id) = a.labels.get("__stream_id").and_then(|s| s.parse().ok()) {
                    self.stream_seen.insert(id, a.active_at);
                }
            }
        }
        loop {
            let now = now_ns();
            let next = self
                .due
                .iter()
                .copied()
                .chain(self.notifier.next_due())
                .chain(self.correlator.next_due())
                .min()
                .unwrap_or(now + 1_000_000_000);
            let wait = Duration::from_nanos((next - now).clamp(0, 1_000_000_000) as u64);
            let mut work = Work::default();
            let next = rt.block_on(async {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => Next::Stop,
                    m = rx.recv() => m.map_or(Next::Stop, Next::Msg),
                    () = tokio::time::sleep(wait) => Next::Due,
                }
            });
            match next {
                Next::Msg(m) => {
                    self.take(m, &mut work);
                    let until = tokio::time::Instant::now() + DEBOUNCE;
                    while let Ok(Some(m)) =
                        rt.block_on(async { tokio::time::timeout_at(until, rx.recv()).await })
                    {
                        self.take(m, &mut work);
                    }
                }
                Next::Due => {}
                Next::Stop => break,
            }
            if self.overflow.swap(false, Ordering::Relaxed) {
                work.all = true;
            }
            if let Err(e) = self.round(&work) {
                tracing::error!(error = %e, "alert engine round failed");
                metrics::counter!("heimdall_aggregator_alert_engine_errors_total").increment(1);
            }
        }
        tracing::info!("alert engine stopped");
    }

    fn take(&mut self, m: Msg, work: &mut Work) {
        match m {
            Msg::Committed(c) => {
                let now = now_ns();
                for s in &c.streams {
                    self.stream_seen.insert(*s, now);
                }
                work.streams.extend(c.streams);
                work.anomalies |= c.anomalies;
            }
            Msg::Command(c, reply) => {
                let r = self.command(c);
                let _ = reply.send(r);
            }
        }
    }

    fn command(&mut self, c: Command) -> Result<(), CommandError> {
        match c {
            Command::Reload(groups) => {
                let names: HashSet<(String, String)> = groups
                    .iter()
                    .flat_map(|g| g.rules.iter().map(|r| (g.name.clone(), r.name.clone())))
                    .collect();
                let now = now_ns();
                // Instances of rules that are gone are resolved.
                let gone: Vec<String> = self
                    .alerts
                    .values()
                    .filter(|a| a.state != State::Resolved)
                    .filter(|a| !names.contains(&(a.group.clone(), a.rule.clone())))
                    .map(|a| a.fingerprint.clone())
                    .collect();
                self.db.execute_batch("BEGIN IMMEDIATE")?;
                let res = (|| -> Result<(), rusqlite::Error> {
                    for fp in gone {
                        self.transition(&fp, now)?;
                    }
                    Ok(())
                })();
                match res {
                    Ok(()) => self.db.execute_batch("COMMIT")?,
                    Err(e) => {
                        let _ = self.db.execute_batch("ROLLBACK");
                        return Err(e.into());
                    }
                }
                self.due = vec![now; groups.len()];
                self.deps.groups = groups;
                self.inc.clear();
                self.stream_rules.clear();
                self.stream_cursor.clear();
                metrics::gauge!("heimdall_aggregator_alert_rules").set(self.rule_count() as f64);
                tracing::info!(rules = self.rule_count(), "alert rules reloaded");
                Ok(())
            }
            Command::AckIncident { id, by } => {
                Ok(self.correlator.ack(&self.db, id, &by, now_ns())?)
            }
            Command::ResolveIncident { id, by } => {
                let now = now_ns();
                let ev = self.correlator.resolve(&self.db, id, &by, now)?;
                for e in ev {
                    self.notifier.incident(&self.db, &e, now)?;
                }
                self.wake_dispatchers();
                Ok(())
            }
        }
    }

    /// One round: the rules due or touched, then notifications and incidents.
    fn round(&mut self, work: &Work) -> Result<(), rusqlite::Error> {
        let now = now_ns();
        if work.streams.iter().any(|s| !self.streams.contains_key(s)) {
            if let Err(e) = self.refresh_streams() {
                tracing::warn!(error = %e, "alert engine: cannot read streams");
            }
        }
        self.track_hosts(now)?;
        let mut todo: std::collections::BTreeSet<(usize, usize)> =
            std::collections::BTreeSet::new();
        for sid in &work.streams {
            todo.extend(self.rules_of(*sid));
        }
        for (gi, g) in self.deps.groups.iter().enumerate() {
            let group_due = self.due[gi] <= now || work.all;
            for (ri, r) in g.rules.iter().enumerate() {
                if group_due || (work.anomalies && matches!(r.kind, RuleKind::Anomaly { .. })) {
                    todo.insert((gi, ri));
                }
            }
            if group_due {
                let iv = g.interval.as_nanos() as i64;
                // The next run on the interval's grid after now.
                self.due[gi] = now + iv - now.rem_euclid(iv).min(iv - 1);
            }
        }
        if let Err(e) = self.feed_incremental(work, &todo, now) {
            tracing::warn!(error = %e, "alert engine: cannot read new lines; rules fall back to full evaluation");
            self.inc.clear();
            self.stream_cursor.clear();
        }
        if work.anomalies || work.all {
            self.feed_anomalies(now)?;
        }
        let mut hs = Vec::new();
        let mut applied = Vec::new();
        for (gi, ri) in todo {
            let rule = self.deps.groups[gi].rules[ri].clone();
            let t = Instant::now();
            let res = self.evaluate((gi, ri), &rule, now);
            let secs = t.elapsed().as_secs_f64();
            metrics::histogram!("heimdall_aggregator_alert_rule_seconds").record(secs);
            metrics::counter!("heimdall_aggregator_alert_evaluations_total").increment(1);
            let (active, error) = match res {
                Ok(a) => (Some(a), String::new()),
                Err(e) => {
                    metrics::counter!("heimdall_aggregator_alert_evaluation_failures_total")
                        .increment(1);
                    tracing::warn!(rule = %rule.name, group = %rule.group, error = %e, "rule evaluation failed");
                    (None, e.to_string())
                }
            };
            let n = active.as_ref().map_or(0, Vec::len);
            if let Some(a) = active {
                applied.push((rule.clone(), a));
            }
            hs.push(RuleHealth {
                group: rule.group.clone(),
                name: rule.name.clone(),
                kind: match rule.kind {
                    RuleKind::Expr { .. } => "expr",
                    RuleKind::Anomaly { .. } => "anomaly",
                    RuleKind::AbsentHosts { .. } => "absent_hosts",
                    RuleKind::AbsentStreams { .. } => "absent_streams",
                }
                .to_owned(),
                last_eval: now,
                last_seconds: secs,
                error,
                active: n,
                origin: rule.origin.clone(),
                query: match &rule.kind {
                    RuleKind::Expr { src, .. } => src.clone(),
                    _ => String::new(),
                },
            });
        }
        // Every state change of the round in one transaction.
        if !applied.is_empty() {
            self.db.execute_batch("BEGIN IMMEDIATE")?;
            let r = (|| -> Result<(), rusqlite::Error> {
                for (rule, a) in applied {
                    self.apply(&rule, a, now)?;
                }
                Ok(())
            })();
            match r {
                Ok(()) => self.db.execute_batch("COMMIT")?,
                Err(e) => {
                    let _ = self.db.execute_batch("ROLLBACK");
                    return Err(e);
                }
            }
        }
        if !hs.is_empty() {
            self.publish_health(hs);
        }
        metrics::gauge!("heimdall_aggregator_alert_incremental_series")
            .set(self.inc.values().map(RuleState::series).sum::<usize>() as f64);
        // Forget old resolved instances.
        let old: Vec<String> = self
            .alerts
            .values()
            .filter(|a| {
                a.state == State::Resolved && a.resolved_at.unwrap_or(0) < now - KEEP_RESOLVED
            })
            .map(|a| a.fingerprint.clone())
            .collect();
        self.db.execute_batch("BEGIN IMMEDIATE")?;
        let res = (|| -> Result<usize, rusqlite::Error> {
            for fp in &old {
                state::delete_alert(&self.db, fp)?;
            }
            let mut queued = self.notifier.flush(&self.db, &self.alerts, now)?;
            for ev in self.correlator.tick(&self.db, now)? {
                queued += self.notifier.incident(&self.db, &ev, now)?;
            }
            Ok(queued)
        })();
        match res {
            Ok(queued) => {
                self.db.execute_batch("COMMIT")?;
                for fp in old {
                    self.alerts.remove(&fp);
                }
                if queued > 0 {
                    self.wake_dispatchers();
                }
            }
            Err(e) => {
                let _ = self.db.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        let (mut pending, mut firing) = (0, 0);
        for a in self.alerts.values() {
            match a.state {
                State::Pending => pending += 1,
                State::Firing => firing += 1,
                State::Resolved => {}
            }
        }
        metrics::gauge!("heimdall_aggregator_alerts", "state" => "pending").set(pending as f64);
        metrics::gauge!("heimdall_aggregator_alerts", "state" => "firing").set(firing as f64);
        Ok(())
    }

    fn publish_health(&self, fresh: Vec<RuleHealth>) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let mut by: HashMap<(String, String), RuleHealth> = h
            .drain(..)
            .map(|r| ((r.group.clone(), r.name.clone()), r))
            .collect();
        for r in fresh {
            by.insert((r.group.clone(), r.name.clone()), r);
        }
        for g in &self.deps.groups {
            for r in &g.rules {
                let e = by
                    .remove(&(g.name.clone(), r.name.clone()))
                    .unwrap_or_else(|| RuleHealth {
                        group: g.name.clone(),
                        name: r.name.clone(),
                        origin: r.origin.clone(),
                        ..RuleHealth::default()
                    });
                h.push(e);
            }
        }
    }

    /// Keeps when each host was last heard from (heartbeats), persisted every 10 s so
    /// absence survives a restart of the aggregator.
    fn track_hosts(&mut self, now: i64) -> Result<(), rusqlite::Error> {
        for (host, seen) in self.deps.hosts.last_seen() {
            if host.is_empty() {
                continue;
            }
            let e = self.host_seen.entry(host).or_insert(0);
            *e = (*e).max(seen);
        }
        if now - self.host_seen_saved >= 10_000_000_000 {
            self.host_seen_saved = now;
            self.db.execute_batch("BEGIN IMMEDIATE")?;
            for (h, t) in &self.host_seen {
                state::host_seen(&self.db, h, *t)?;
            }
            self.db.execute_batch("COMMIT")?;
        }
        Ok(())
    }

    fn feed_anomalies(&mut self, now: i64) -> Result<(), rusqlite::Error> {
        let since = self.anomalies_seen;
        let rows = {
            let Ok(conn) = self.hot() else { return Ok(()) };
            heimdall_store::intel::anomalies(
                conn,
                &[],
                now - 3_600_000_000_000,
                now + 3_600_000_000_000,
                None,
                0.0,
                10_000,
            )?
        };
        let mut newest = since;
        for a in rows.iter().filter(|a| a.received_ns > since) {
            newest = newest.max(a.received_ns);
            self.correlator.anomaly(&self.db, a, now)?;
        }
        // Ends arrive after their events: each ended event's signal stops being active
        // (a no-op once it is).
        for a in rows.iter().filter(|a| a.ended_ns.is_some()) {
            self.correlator.anomaly_ended(&self.db, a, now)?;
        }
        self.anomalies_seen = newest;
        Ok(())
    }

    /// The rules whose selectors match stream `sid`.
    fn rules_of(&mut self, sid: i64) -> Vec<(usize, usize)> {
        if let Some(r) = self.stream_rules.get(&sid) {
            return r.clone();
        }
        let Some(l) = self.streams.get(&sid) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (gi, g) in self.deps.groups.iter().enumerate() {
            for (ri, r) in g.rules.iter().enumerate() {
                let hit = match &r.kind {
                    RuleKind::Expr { expr, .. } => {
                        let mut sels = Vec::new();
                        selectors(expr, &mut sels);
                        sels.iter().any(|m| matches(m, l))
                    }
                    RuleKind::AbsentStreams { selector, .. } => matches(selector, l),
                    RuleKind::Anomaly { .. } | RuleKind::AbsentHosts { .. } => false,
                };
                if hit {
                    out.push((gi, ri));
                }
            }
        }
        if self.stream_rules.len() >= STREAM_RULES_CACHE {
            self.stream_rules.clear();
        }
        self.stream_rules.insert(sid, out.clone());
        out
    }

    /// Seeds the incremental states of the expression rules about to run, then feeds
    /// every state the lines stored since (only streams that got lines are read).
    fn feed_incremental(
        &mut self,
        work: &Work,
        todo: &std::collections::BTreeSet<(usize, usize)>,
        now: i64,
    ) -> Result<(), RunError> {
        let limits = self.deps.eval_limits;
        let deadline = Some(Instant::now() + self.deps.cfg.query_timeout);
        let fresh: Vec<((usize, usize), RuleState)> = todo
            .iter()
            .filter(|k| !self.inc.contains_key(k))
            .filter_map(|&(gi, ri)| match &self.deps.groups[gi].rules[ri].kind {
                RuleKind::Expr { expr, .. } => {
                    RuleState::new(expr, limits.max_series).map(|s| ((gi, ri), s))
                }
                _ => None,
            })
            .collect();
        if !fresh.is_empty() {
            let tiers = self.deps.tiers.clone();
            let conn = self.hot()?;
            conn.execute_batch("BEGIN")?;
            let res = (|| -> Result<Vec<(RuleKey, RuleState)>, RunError> {
                let max = hot::max_row_id(conn)?;
                let src = Source::hot(conn).with_tiers(&tiers);
                let mut out = Vec::new();
                for (k, mut st) in fresh {
                    st.seed(&src, now, max, deadline, limits)?;
                    out.push((k, st));
                }
                Ok(out)
            })();
            let _ = conn.execute_batch("COMMIT");
            // A rule whose seed failed is evaluated in full this round and seeded again
            // next time.
            for (k, st) in res? {
                self.inc.insert(k, st);
            }
        }
        if self.inc.is_empty() {
            return Ok(());
        }
        // Streams with new lines that some incremental rule watches.
        let mut streams: Vec<i64> = if work.all {
            self.streams.keys().copied().collect()
        } else {
            work.streams.iter().copied().collect()
        };
        let candidates = std::mem::take(&mut streams);
        for sid in candidates {
            if self.rules_of(sid).iter().any(|k| self.inc.contains_key(k)) {
                streams.push(sid);
            }
        }
        if streams.is_empty() {
            return Ok(());
        }
        streams.sort_unstable();
        // Each stream is read from its own cursor: a stream whose commit notice is
        // still queued keeps its cursor, so its lines are read when the notice comes
        // (one cursor for all would step over them).
        let floor = self.inc.values().map(|s| s.seeded_id).min().unwrap_or(0);
        if self.stream_cursor.len() >= STREAM_RULES_CACHE {
            self.stream_cursor.clear();
        }
        let mut after = streams
            .iter()
            .map(|s| self.stream_cursor.get(s).copied().unwrap_or(floor))
            .min()
            .unwrap_or(floor);
        loop {
            let rows = {
                let conn = self.hot()?;
                hot::rows_after(conn, &streams, after, 20_000)?
            };
            let Some(last) = rows.last().map(|(id, _)| *id) else {
                break;
            };
            let mut by_stream: HashMap<i64, Vec<&(i64, hot::Row)>> = HashMap::new();
            for r in &rows {
                by_stream.entry(r.1.stream_id).or_default().push(r);
            }
            for (sid, mut rs) in by_stream {
                let cur = self.stream_cursor.get(&sid).copied().unwrap_or(floor);
                rs.retain(|r| r.0 > cur);
                let Some(top) = rs.last().map(|r| r.0) else {
                    continue;
                };
                self.stream_cursor.insert(sid, top);
                let Some(labels) = self.streams.get(&sid).cloned() else {
                    continue;
                };
                for k in self.rules_of(sid) {
                    if let Some(st) = self.inc.get_mut(&k) {
                        st.feed(&labels, &rs);
                    }
                }
            }
            after = last;
            if rows.len() < 20_000 {
                break;
            }
        }
        Ok(())
    }

    /// The instances for which `rule` holds now.
    fn evaluate(
        &mut self,
        key: (usize, usize),
        rule: &Rule,
        now: i64,
    ) -> Result<Vec<Active>, RunError> {
        let timeout = self.deps.cfg.query_timeout;
        let limits = self.deps.eval_limits;
        match &rule.kind {
            RuleKind::Expr { expr, .. } => {
                let tiers = self.deps.tiers.clone();
                if let Some(st) = self.inc.get_mut(&key) {
                    st.expire(now);
                }
                self.hot()?;
                let conn = self.hot.as_ref().expect("opened above");
                let src = Source::hot(conn).with_tiers(&tiers);
                let res = match self.inc.get(&key) {
                    Some(st) => st
                        .evaluate(&src, expr, now, limits)
                        .map(|v| (v, heimdall_query::eval::Stats::default())),
                    None => {
                        conn.execute_batch("BEGIN")?;
                        let r = evaluate(
                            &src,
                            expr,
                            EvalRequest {
                                start_ns: now,
                                end_ns: now,
                                step_ns: 1,
                                deadline: Some(Instant::now() + timeout),
                                limits,
                            },
                        );
                        let _ = conn.execute_batch("COMMIT");
                        r
                    }
                };
                let out = match res {
                    Ok((Value::Vector(series), _)) => Ok(series
                        .into_iter()
                        .filter(|s| s.values.first().is_some_and(|v| !v.is_nan()))
                        .map(|s| Active {
                            labels: labels_map(&s.labels),
                            value: s.values[0],
                            onset: None,
                            samples: Vec::new(),
                        })
                        .collect()),
                    Ok((Value::Scalar(v), _)) => Ok(if v.is_nan() {
                        Vec::new()
                    } else {
                        vec![Active {
                            labels: BTreeMap::new(),
                            value: v,
                            onset: None,
                            samples: Vec::new(),
                        }]
                    }),
                    Err(e) => Err(e.into()),
                };
                out
            }
            RuleKind::Anomaly {
                selector,
                kind,
                min_score,
                hold,
            } => {
                let hold = hold.as_nanos() as i64;
                let conn = self.hot()?;
                let rows = heimdall_store::intel::anomalies(
                    conn,
                    selector,
                    now - hold - 3_600_000_000_000,
                    now + 3_600_000_000_000,
                    kind.map(|k| k.as_str()),
                    *min_score,
                    10_000,
                )?;
                let mut by: BTreeMap<BTreeMap<String, String>, Active> = BTreeMap::new();
                // An event holds its instance for `hold`, or until the agent says its
                // condition ended.
                for a in rows
                    .into_iter()
                    .filter(|a| now - a.received_ns < hold && a.ended_ns.is_none())
                {
                    let mut labels = a.stream.clone();
                    labels.insert("anomaly_kind".into(), a.kind.clone());
                    let e = by.entry(labels.clone()).or_insert(Active {
                        labels,
                        value: 0.0,
                        onset: Some(a.time_ns),
                        samples: Vec::new(),
                    });
                    e.value = e.value.max(a.score);
                    e.onset = Some(e.onset.unwrap_or(a.time_ns).min(a.time_ns));
                    for l in &a.samples {
                        if e.samples.len() < SAMPLES {
                            e.samples.push(l.clone());
                        }
                    }
                }
                Ok(by.into_values().collect())
            }
            RuleKind::AbsentHosts { hosts, for_ } => {
                let for_ = for_.as_nanos() as i64;
                let services = self.host_services();
                Ok(self
                    .host_seen
                    .iter()
                    .filter(|(h, t)| hosts.is_match(h) && now - **t >= for_)
                    .map(|(h, t)| {
                        let mut labels = BTreeMap::from([("host".to_owned(), h.clone())]);
                        if let Some((k, v)) = services.get(h.as_str()) {
                            labels.insert(k.clone(), v.clone());
                        }
                        Active {
                            labels,
                            value: ((now - t) / 1_000_000_000) as f64,
                            onset: Some(*t),
                            samples: Vec::new(),
                        }
                    })
                    .collect())
            }
            RuleKind::AbsentStreams { selector, for_ } => {
                let for_ = for_.as_nanos() as i64;
                Ok(self
                    .streams
                    .iter()
                    .filter(|(_, l)| matches(selector, l))
                    .filter_map(|(id, l)| {
                        let t = *self.stream_seen.get(id)?;
                        (now - t >= for_ && now - t < STREAM_RETIRED).then(|| {
                            let mut labels = labels_map(l);
                            labels.insert("__stream_id".into(), id.to_string());
                            Active {
                                labels,
                                value: ((now - t) / 1_000_000_000) as f64,
                                onset: Some(t),
                                samples: Vec::new(),
                            }
                        })
                    })
                    .collect())
            }
        }
    }

    /// For each host, its service label when all its streams agree on one.
    fn host_services(&self) -> HashMap<&str, (String, String)> {
        let mut out: HashMap<&str, Option<(String, String)>> = HashMap::new();
        for l in self.streams.values() {
            let Some(h) = l.get("host") else { continue };
            let svc = self
                .deps
                .cfg
                .correlation
                .service_labels
                .iter()
                .find_map(|k| l.get(k).map(|v| (k.clone(), v.to_owned())));
            let Some(svc) = svc else { continue };
            match out.get_mut(h) {
                None => {
                    out.insert(h, Some(svc));
                }
                Some(Some(prev)) if *prev != svc => *out.get_mut(h).expect("present") = None,
                Some(_) => {}
            }
        }
        out.into_iter()
            .filter_map(|(h, s)| s.map(|s| (h, s)))
            .collect()
    }

    /// Lines that show an instance of an expression rule.
    fn samples(&mut self, rule: &Rule, labels: &BTreeMap<String, String>, now: i64) -> Vec<String> {
        let RuleKind::Expr { expr, .. } = &rule.kind else {
            return Vec::new();
        };
        let Some(log) = first_log(expr) else {
            return Vec::new();
        };
        let range = match expr {
            Expr::Range { range_ns, .. } => *range_ns,
            _ => 300_000_000_000,
        }
        .max(60_000_000_000);
        let mut q = log.clone();
        let stream_names: HashSet<&str> = self
            .streams
            .values()
            .flat_map(|l| l.iter().map(|(k, _)| k))
            .collect();
        for (k, v) in labels {
            if stream_names.contains(k.as_str()) && !q.matchers.iter().any(|m| &m.name == k) {
                q.matchers.push(Matcher {
                    name: k.clone(),
                    op: MatchOp::Eq,
                    value: v.clone(),
                    regex: None,
                });
            }
        }
        let tiers = self.deps.tiers.clone();
        let Ok(conn) = self.hot() else {
            return Vec::new();
        };
        let src = Source::hot(conn).with_tiers(&tiers);
        let req = LogRequest {
            start_ns: now - range,
            end_ns: now + 1,
            limit: SAMPLES,
            max_bytes: 64 << 10,
            backward: true,
            deadline: Some(Instant::now() + Duration::from_secs(2)),
            categorize: false,
        };
        match heimdall_query::exec::run_log_query(&src, &q, &req) {
            Ok(r) => r
                .streams
                .into_iter()
                .flat_map(|(_, es)| es.into_iter())
                .take(SAMPLES)
                .map(|e| String::from_utf8_lossy(&e.line).into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Moves `rule`'s instances given what holds now.
    fn apply(&mut self, rule: &Rule, active: Vec<Active>, now: i64) -> Result<(), rusqlite::Error> {
        let mut seen = HashSet::new();
        let live = self
            .alerts
            .values()
            .filter(|a| a.state != State::Resolved)
            .count();
        for a in active {
            let mut labels = rule.labels.clone();
            for (k, v) in a.labels {
                labels.entry(k).or_insert(v);
            }
            labels.insert("alertname".into(), rule.name.clone());
            let fp = state::fingerprint(&labels);
            seen.insert(fp.clone());
            let annotations: BTreeMap<String, String> = rule
                .annotations
                .iter()
                .map(|(k, t)| (k.clone(), t.render(&labels, a.value)))
                .collect();
            let existing = self
                .alerts
                .get(&fp)
                .filter(|x| x.state != State::Resolved)
                .cloned();
            let mut alert = match existing {
                Some(x) => x,
                None => {
                    if live >= self.deps.cfg.max_alerts {
                        metrics::counter!("heimdall_aggregator_alerts_dropped_total").increment(1);
                        tracing::warn!(rule = %rule.name, "too many active alerts; instance not tracked (alerting.max_alerts)");
                        continue;
                    }
                    Alert {
                        fingerprint: fp.clone(),
                        rule: rule.name.clone(),
                        group: rule.group.clone(),
                        labels: labels.clone(),
                        annotations: annotations.clone(),
                        state: State::Pending,
                        active_at: a.onset.unwrap_or(now).min(now),
                        fired_at: None,
                        resolved_at: None,
                        last_true: now,
                        value: a.value,
                        samples: a.samples.clone(),
                    }
                }
            };
            alert.value = a.value;
            alert.last_true = now;
            alert.annotations = annotations;
            if !a.samples.is_empty() {
                alert.samples = a.samples;
            }
            // `for` counts from the onset (the first evaluation that held, or the
            // onset an absence or anomaly rule knows).
            let fire = alert.state == State::Pending
                && now - alert.active_at >= rule.for_.as_nanos() as i64;
            if fire {
                alert.state = State::Firing;
                alert.fired_at = Some(now);
                if alert.samples.is_empty() {
                    alert.samples = self.samples(rule, &labels, now);
                }
                metrics::counter!("heimdall_aggregator_alerts_fired_total").increment(1);
                tracing::info!(alert = %rule.name, labels = ?alert.labels, value = alert.value, "alert firing");
            }
            state::put_alert(&self.db, &alert)?;
            let changed = fire;
            self.alerts.insert(fp.clone(), alert);
            if changed {
                self.changed(&fp, now)?;
            }
        }
        let gone: Vec<String> = self
            .alerts
            .values()
            .filter(|x| x.rule == rule.name && x.group == rule.group && x.state != State::Resolved)
            .filter(|x| !seen.contains(&x.fingerprint))
            .filter(|x| {
                x.state == State::Pending
                    || now - x.last_true >= rule.keep_firing_for.as_nanos() as i64
            })
            .map(|x| x.fingerprint.clone())
            .collect();
        for fp in gone {
            self.transition(&fp, now)?;
        }
        Ok(())
    }

    /// Ends an instance: a pending one is dropped, a firing one resolved.
    fn transition(&mut self, fp: &str, now: i64) -> Result<(), rusqlite::Error> {
        let Some(mut a) = self.alerts.get(fp).cloned() else {
            return Ok(());
        };
        match a.state {
            State::Pending => {
                state::delete_alert(&self.db, fp)?;
                self.alerts.remove(fp);
            }
            State::Firing => {
                a.state = State::Resolved;
                a.resolved_at = Some(now);
                state::put_alert(&self.db, &a)?;
                tracing::info!(alert = %a.rule, labels = ?a.labels, "alert resolved");
                metrics::counter!("heimdall_aggregator_alerts_resolved_total").increment(1);
                self.alerts.insert(fp.to_owned(), a);
                self.changed(fp, now)?;
            }
            State::Resolved => {}
        }
        Ok(())
    }

    fn changed(&mut self, fp: &str, now: i64) -> Result<(), rusqlite::Error> {
        let Some(a) = self.alerts.get(fp) else {
            return Ok(());
        };
        self.notifier.changed(&self.db, a, now)?;
        self.correlator.alert(&self.db, a, now)?;
        Ok(())
    }
}
