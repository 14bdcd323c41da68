//! Correlation: firing alerts and agents' anomaly events from many hosts become one
//! **incident** when they are related and close in time, so SREs get one page with
//! context instead of an alert storm.
//!
//! A signal joins an open incident that saw a signal within `correlation.window`
//! when they share a service (the first of `correlation.service_labels` present), a
//! log template, or a trace / request id found in their sample lines, or when their
//! services are linked through the configured dependency edges (`api -> db`), in
//! either direction and transitively. A signal related to several incidents merges
//! them into the oldest.
//!
//! Root-cause candidates are the incident's services (or hosts, for signals without a
//! service), ranked by a score of three parts: how many of the incident's other
//! services depend on it (half the weight: in a database outage, the database), how
//! early its first signal began (three tenths), and its strongest anomaly score (two
//! tenths).
//!
//! An incident pages per-incident receivers `correlation.settle` after it opens (so
//! related signals and the likelier cause can join first), and resolves when none of
//! its alerts fires and its newest anomaly event is older than `correlation.quiet`.

use super::config::{Alerting, Correlation};
use super::notify::{alert_out, AlertOut};
use super::state::{Alert, State};
use heimdall_api::model::AnomalyEvent;
pub use heimdall_api::model::{Candidate, Incident as IncidentOut, Signal};
use rusqlite::{params, Connection};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Most open incidents kept; the oldest is closed beyond it.
const MAX_OPEN: usize = 10_000;
/// Most signals kept per incident (the timeline keeps the first ones).
const MAX_SIGNALS: usize = 1_000;
/// Resolved incidents stay in memory this long (they stay in the database).
const KEEP_RESOLVED: i64 = 3_600 * 1_000_000_000;

/// What the notifier should send.
#[derive(Clone, Debug)]
pub enum IncidentEvent {
    Page(IncidentOut),
    Resolve(IncidentOut),
}

impl IncidentEvent {
    pub fn incident(&self) -> &IncidentOut {
        match self {
            IncidentEvent::Page(i) | IncidentEvent::Resolve(i) => i,
        }
    }
}

/// Why an action on an incident failed.
#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    /// No open incident has this id.
    #[error("no open incident {0}")]
    NoSuchIncident(i64),
    /// The alert database failed.
    #[error("alert database: {0}")]
    Db(#[from] rusqlite::Error),
}

/// Open and recent incidents; runs on the engine thread.
pub struct Correlator {
    cfg: Correlation,
    base_url: String,
    incidents: BTreeMap<i64, IncidentOut>,
    /// Service → services it depends on, transitively.
    upstream: HashMap<String, HashSet<String>>,
    alerts: HashMap<String, AlertOut>,
}

fn closure(edges: &[(String, String)]) -> HashMap<String, HashSet<String>> {
    let mut direct: HashMap<&str, Vec<&str>> = HashMap::new();
    for (a, b) in edges {
        direct.entry(a).or_default().push(b);
    }
    let mut out = HashMap::new();
    for start in direct.keys() {
        let mut seen = HashSet::new();
        let mut todo = vec![*start];
        while let Some(n) = todo.pop() {
            for m in direct.get(n).into_iter().flatten() {
                if seen.insert((*m).to_owned()) {
                    todo.push(m);
                }
            }
        }
        out.insert((*start).to_owned(), seen);
    }
    out
}

fn trace_ids(fields: &[String], lines: &[String]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for f in fields {
        let re = regex::Regex::new(&format!(
            r#""?{}"?\s*[:=]\s*"?([A-Za-z0-9][A-Za-z0-9._:-]{{5,}})"#,
            regex::escape(f)
        ))
        .expect("escaped field is a valid regex");
        for l in lines {
            for c in re.captures_iter(l) {
                out.insert(c[1].to_owned());
            }
        }
    }
    out.into_iter().take(20).collect()
}

fn selector_of(labels: &BTreeMap<String, String>, keys: &[&str]) -> String {
    let parts: Vec<String> = labels
        .iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

impl Correlator {
    /// Loads the open and recently resolved incidents.
    ///
    /// # Errors
    /// [`rusqlite::Error`].
    pub fn load(conn: &Connection, cfg: &Alerting) -> Result<Correlator, rusqlite::Error> {
        let now = heimdall_common::record::now_ns();
        let mut stmt = conn.prepare(
            "SELECT data FROM incidents WHERE state = 'open' OR resolved > ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([now - KEEP_RESOLVED], |r| r.get::<_, String>(0))?;
        let mut incidents = BTreeMap::new();
        for r in rows {
            if let Ok(i) = serde_json::from_str::<IncidentOut>(&r?) {
                incidents.insert(i.id, i);
            }
        }
        Ok(Correlator {
            upstream: closure(&cfg.correlation.dependencies),
            cfg: cfg.correlation.clone(),
            base_url: cfg.external_url.clone(),
            incidents,
            alerts: HashMap::new(),
        })
    }

    fn service_of(&self, labels: &BTreeMap<String, String>) -> Option<String> {
        self.cfg
            .service_labels
            .iter()
            .find_map(|k| labels.get(k).cloned())
    }

    fn linked(&self, a: &str, b: &str) -> bool {
        self.upstream.get(a).is_some_and(|u| u.contains(b))
            || self.upstream.get(b).is_some_and(|u| u.contains(a))
    }

    fn related(&self, inc: &IncidentOut, s: &Signal) -> bool {
        inc.signals.iter().any(|x| {
            let same_service = x.service.is_some() && x.service == s.service;
            let dep = match (&x.service, &s.service) {
                (Some(a), Some(b)) => self.linked(a, b),
                _ => false,
            };
            same_service
                || dep
                || x.templates
                    .iter()
                    .any(|t| *t != 0 && s.templates.contains(t))
                || x.traces.iter().any(|t| s.traces.contains(t))
        })
    }

    fn save(conn: &Connection, i: &IncidentOut) -> Result<(), rusqlite::Error> {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO incidents(id, state, opened, updated, resolved, acked_by, acked_at, paged, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            i.id,
            i.state,
            i.opened,
            i.updated,
            i.resolved,
            i.acked_by,
            i.acked_at,
            i.paged,
            serde_json::to_string(i).expect("incident serialises"),
        ])?;
        Ok(())
    }

    fn rank(&self, i: &mut IncidentOut) {
        struct C {
            onset: i64,
            score: f64,
            hosts: BTreeSet<String>,
            is_service: bool,
        }
        let mut by: BTreeMap<String, C> = BTreeMap::new();
        for s in &i.signals {
            let (name, is_service) = match (&s.service, &s.host) {
                (Some(svc), _) => (svc.clone(), true),
                (None, Some(h)) => (h.clone(), false),
                (None, None) => (s.what.clone(), false),
            };
            let c = by.entry(name).or_insert(C {
                onset: s.onset,
                score: 0.0,
                hosts: BTreeSet::new(),
                is_service,
            });
            c.onset = c.onset.min(s.onset);
            c.score = c.score.max(s.score);
            if let Some(h) = &s.host {
                c.hosts.insert(h.clone());
            }
        }
        let n = by.len();
        let mut onsets: Vec<i64> = by.values().map(|c| c.onset).collect();
        onsets.sort_unstable();
        let max_score = by.values().map(|c| c.score).fold(0.0, f64::max);
        let names: Vec<String> = by.keys().cloned().collect();
        let mut cands: Vec<Candidate> = by
            .iter()
            .map(|(name, c)| {
                let dependents: Vec<&String> = names
                    .iter()
                    .filter(|o| *o != name && c.is_service)
                    .filter(|o| self.upstream.get(*o).is_some_and(|u| u.contains(name)))
                    .collect();
                let up = if n > 1 {
                    dependents.len() as f64 / (n - 1) as f64
                } else {
                    1.0
                };
                let rank = onsets.iter().position(|o| *o == c.onset).unwrap_or(0);
                let early = if n > 1 {
                    1.0 - rank as f64 / (n - 1) as f64
                } else {
                    1.0
                };
                let strong = if max_score > 0.0 {
                    c.score / max_score
                } else {
                    0.0
                };
                let mut why = Vec::new();
                if !dependents.is_empty() {
                    why.push(format!(
                        "upstream of {}",
                        dependents
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                why.push(if rank == 0 {
                    "earliest signal".to_owned()
                } else {
                    format!(
                        "began {:.0}s after the first signal",
                        (c.onset - onsets[0]) as f64 / 1e9
                    )
                });
                if c.score > 0.0 {
                    why.push(format!("anomaly score {:.1}", c.score));
                }
                if !c.hosts.is_empty() {
                    why.push(format!(
                        "hosts {}",
                        c.hosts.iter().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
                Candidate {
                    name: name.clone(),
                    score: 0.5 * up + 0.3 * early + 0.2 * strong,
                    why: why.join("; "),
                    onset: c.onset,
                    hosts: c.hosts.iter().cloned().collect(),
                }
            })
            .collect();
        cands.sort_by(|a, b| {
            b.score
                .partial_cmp(&a.score)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.onset.cmp(&b.onset))
                .then(a.name.cmp(&b.name))
        });
        let services: BTreeSet<&str> = i
            .signals
            .iter()
            .filter_map(|s| s.service.as_deref())
            .collect();
        let hosts: BTreeSet<&str> = i.signals.iter().filter_map(|s| s.host.as_deref()).collect();
        i.title = format!(
            "{} signal(s) from {} host(s){}",
            i.signals.len(),
            hosts.len(),
            if services.is_empty() {
                String::new()
            } else {
                format!(
                    " in {}",
                    services.into_iter().collect::<Vec<_>>().join(", ")
                )
            }
        );
        i.candidates = cands;
        i.alerts = i
            .signals
            .iter()
            .filter_map(|s| s.key.strip_prefix("alert:"))
            .filter_map(|fp| self.alerts.get(fp).cloned())
            .collect();
    }

    /// Adds a new signal: to the related incident (merging several), or to a new one.
    fn add(&mut self, conn: &Connection, s: Signal, now: i64) -> Result<(), rusqlite::Error> {
        let window = i64::try_from(self.cfg.window.as_nanos()).unwrap_or(i64::MAX);
        let mut related: Vec<i64> = self
            .incidents
            .values()
            .filter(|i| i.state == "open" && i.updated >= s.at - window && self.related(i, &s))
            .map(|i| i.id)
            .collect();
        related.sort_unstable();
        let id = match related.first() {
            Some(id) => *id,
            None => {
                let id =
                    self.incidents
                        .keys()
                        .next_back()
                        .copied()
                        .unwrap_or(0)
                        .max(conn.query_row(
                            "SELECT coalesce(max(id), 0) FROM incidents",
                            [],
                            |r| r.get(0),
                        )?)
                        + 1;
                let inc = IncidentOut {
                    id,
                    state: "open".into(),
                    title: String::new(),
                    opened: now,
                    updated: now,
                    resolved: None,
                    acked_by: None,
                    acked_at: None,
                    paged: false,
                    // The console's page of the incident (its JSON: /api/v1/incidents/<id>).
                    url: format!("{}/incidents/{id}", self.base_url),
                    candidates: Vec::new(),
                    signals: Vec::new(),
                    alerts: Vec::new(),
                };
                metrics::counter!("heimdall_aggregator_incidents_opened_total").increment(1);
                tracing::info!(incident = id, signal = %s.what, subject = %s.subject, "incident opened");
                self.incidents.insert(id, inc);
                self.close_excess(conn, now)?;
                id
            }
        };
        // Merge the others into the oldest.
        for other in related.iter().skip(1) {
            if let Some(o) = self.incidents.remove(other) {
                tracing::info!(incident = id, merged = o.id, "incidents merged");
                let target = self.incidents.get_mut(&id).expect("present");
                target.paged |= o.paged;
                target.opened = target.opened.min(o.opened);
                target.signals.extend(o.signals);
                conn.execute("DELETE FROM incidents WHERE id = ?1", [o.id])?;
                metrics::counter!("heimdall_aggregator_incidents_merged_total").increment(1);
            }
        }
        let mut inc = self.incidents.remove(&id).expect("present");
        if inc.signals.len() < MAX_SIGNALS {
            inc.signals.push(s);
        }
        inc.signals
            .sort_by(|a, b| a.onset.cmp(&b.onset).then(a.key.cmp(&b.key)));
        inc.updated = now;
        self.rank(&mut inc);
        Self::save(conn, &inc)?;
        self.incidents.insert(id, inc);
        Ok(())
    }

    fn close_excess(&mut self, conn: &Connection, now: i64) -> Result<(), rusqlite::Error> {
        while self
            .incidents
            .values()
            .filter(|i| i.state == "open")
            .count()
            > MAX_OPEN
        {
            let oldest = self
                .incidents
                .values()
                .filter(|i| i.state == "open")
                .min_by_key(|i| i.updated)
                .map(|i| i.id)
                .expect("more than MAX_OPEN open");
            let i = self.incidents.get_mut(&oldest).expect("present");
            i.state = "resolved".into();
            i.resolved = Some(now);
            metrics::counter!("heimdall_aggregator_incidents_evicted_total").increment(1);
            let i = i.clone();
            Self::save(conn, &i)?;
        }
        Ok(())
    }

    /// An alert fired or resolved.
    ///
    /// # Errors
    /// [`rusqlite::Error`].
    pub fn alert(&mut self, conn: &Connection, a: &Alert, now: i64) -> Result<(), rusqlite::Error> {
        let out = alert_out(&self.base_url, a);
        self.alerts.insert(a.fingerprint.clone(), out);
        let key = format!("alert:{}", a.fingerprint);
        let holder = self
            .incidents
            .values()
            .find(|i| i.state == "open" && i.signals.iter().any(|s| s.key == key))
            .map(|i| i.id);
        if let Some(id) = holder {
            let mut inc = self.incidents.remove(&id).expect("present");
            for s in inc.signals.iter_mut().filter(|s| s.key == key) {
                s.active = a.state == State::Firing;
                s.at = now;
            }
            inc.updated = now;
            self.rank(&mut inc);
            Self::save(conn, &inc)?;
            self.incidents.insert(id, inc);
            return Ok(());
        }
        if a.state != State::Firing {
            return Ok(());
        }
        let labels = a
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with("__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>();
        let service = self.service_of(&labels);
        let subject: Vec<String> = labels
            .iter()
            .filter(|(k, _)| *k != "alertname")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut keys: Vec<&str> = vec!["host"];
        keys.extend(self.cfg.service_labels.iter().map(String::as_str));
        let s = Signal {
            key,
            what: format!("alert {}", a.rule),
            subject: subject.join(" "),
            service,
            host: labels.get("host").cloned(),
            onset: a.active_at,
            at: now,
            active: true,
            score: 0.0,
            templates: Vec::new(),
            traces: trace_ids(&self.cfg.trace_fields, &a.samples),
            samples: a.samples.iter().take(5).cloned().collect(),
            query: selector_of(&labels, &keys),
            labels,
        };
        self.add(conn, s, now)
    }

    /// An anomaly event arrived.
    ///
    /// # Errors
    /// [`rusqlite::Error`].
    pub fn anomaly(
        &mut self,
        conn: &Connection,
        a: &AnomalyEvent,
        now: i64,
    ) -> Result<(), rusqlite::Error> {
        let samples: Vec<String> = a.samples.iter().take(5).cloned().collect();
        let templates: Vec<u64> = a
            .templates
            .iter()
            .filter_map(|t| u64::from_str_radix(&t.id, 16).ok())
            .collect();
        let labels = a.stream.clone();
        let subject: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let s = Signal {
            key: format!("anomaly:{}:{}", a.agent, a.id),
            what: format!("anomaly {}", a.kind),
            subject: subject.join(" "),
            service: self.service_of(&labels),
            host: labels.get("host").cloned(),
            onset: a.time_ns,
            at: a.received_ns.max(a.time_ns),
            active: a.ended_ns.is_none(),
            score: a.score,
            templates,
            traces: trace_ids(&self.cfg.trace_fields, &samples),
            samples,
            query: selector_of(
                &labels,
                &labels.keys().map(String::as_str).collect::<Vec<_>>(),
            ),
            labels,
        };
        if self
            .incidents
            .values()
            .any(|i| i.signals.iter().any(|x| x.key == s.key))
        {
            return Ok(());
        }
        self.add(conn, s, now)
    }

    /// An anomaly event's condition ended: its signal is no longer active, so an
    /// incident held open only by it resolves at the next tick.
    ///
    /// # Errors
    /// [`rusqlite::Error`].
    pub fn anomaly_ended(
        &mut self,
        conn: &Connection,
        a: &AnomalyEvent,
        now: i64,
    ) -> Result<(), rusqlite::Error> {
        let key = format!("anomaly:{}:{}", a.agent, a.id);
        let holder = self
            .incidents
            .values()
            .find(|i| i.state == "open" && i.signals.iter().any(|s| s.key == key && s.active))
            .map(|i| i.id);
        let Some(id) = holder else {
            return Ok(());
        };
        let mut inc = self.incidents.remove(&id).expect("present");
        for s in inc.signals.iter_mut().filter(|s| s.key == key) {
            s.active = false;
            s.at = a.ended_ns.unwrap_or(now);
        }
        inc.updated = now;
        self.rank(&mut inc);
        Self::save(conn, &inc)?;
        self.incidents.insert(id, inc);
        Ok(())
    }

    /// When `tick` has something to do next.
    pub fn next_due(&self) -> Option<i64> {
        let settle = i64::try_from(self.cfg.settle.as_nanos()).unwrap_or(i64::MAX);
        self.incidents
            .values()
            .filter(|i| i.state == "open" && !i.paged)
            .map(|i| i.opened + settle)
            .min()
    }

    /// Pages settled incidents and resolves quiet ones.
    ///
    /// # Errors
    /// [`rusqlite::Error`].
    pub fn tick(
        &mut self,
        conn: &Connection,
        now: i64,
    ) -> Result<Vec<IncidentEvent>, rusqlite::Error> {
        let settle = i64::try_from(self.cfg.settle.as_nanos()).unwrap_or(i64::MAX);
        let quiet = i64::try_from(self.cfg.quiet.as_nanos()).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        let ids: Vec<i64> = self.incidents.keys().copied().collect();
        for id in ids {
            let mut inc = self.incidents.remove(&id).expect("present");
            if inc.state == "resolved" {
                if now - inc.resolved.unwrap_or(now) < KEEP_RESOLVED {
                    self.incidents.insert(id, inc);
                }
                continue;
            }
            let firing = inc
                .signals
                .iter()
                .any(|s| s.active && s.key.starts_with("alert:"));
            // An anomaly holds its incident open while it lasts: until its end, or
            // for `quiet` after it when its agent sent none.
            let recent_anomaly = inc
                .signals
                .iter()
                .any(|s| s.key.starts_with("anomaly:") && s.active && now - s.at < quiet);
            let mut changed = false;
            if !firing && !recent_anomaly {
                inc.state = "resolved".into();
                inc.resolved = Some(now);
                inc.updated = now;
                for s in &mut inc.signals {
                    s.active = false;
                }
                self.rank(&mut inc);
                metrics::counter!("heimdall_aggregator_incidents_resolved_total").increment(1);
                tracing::info!(incident = id, "incident resolved");
                if inc.paged {
                    out.push(IncidentEvent::Resolve(inc.clone()));
                }
                changed = true;
            } else if !inc.paged && now >= inc.opened + settle {
                inc.paged = true;
                self.rank(&mut inc);
                tracing::info!(incident = id, cause = ?inc.candidates.first().map(|c| &c.name), "incident paging");
                out.push(IncidentEvent::Page(inc.clone()));
                changed = true;
            }
            if changed {
                Self::save(conn, &inc)?;
            }
            self.incidents.insert(id, inc);
        }
        metrics::gauge!("heimdall_aggregator_incidents_open").set(
            self.incidents
                .values()
                .filter(|i| i.state == "open")
                .count() as f64,
        );
        Ok(out)
    }

    /// Marks an incident acknowledged.
    ///
    /// # Errors
    /// [`IncidentError::NoSuchIncident`] when it is not open, [`IncidentError::Db`].
    pub fn ack(
        &mut self,
        conn: &Connection,
        id: i64,
        by: &str,
        now: i64,
    ) -> Result<(), IncidentError> {
        let inc = self
            .incidents
            .get_mut(&id)
            .ok_or(IncidentError::NoSuchIncident(id))?;
        inc.acked_by = Some(by.to_owned());
        inc.acked_at = Some(now);
        let inc = inc.clone();
        Ok(Self::save(conn, &inc)?)
    }

    /// Resolves an incident by hand.
    ///
    /// # Errors
    /// As [`Correlator::ack`].
    pub fn resolve(
        &mut self,
        conn: &Connection,
        id: i64,
        by: &str,
        now: i64,
    ) -> Result<Vec<IncidentEvent>, IncidentError> {
        let inc = self
            .incidents
            .get_mut(&id)
            .filter(|i| i.state == "open")
            .ok_or(IncidentError::NoSuchIncident(id))?;
        inc.state = "resolved".into();
        inc.resolved = Some(now);
        inc.updated = now;
        if inc.acked_by.is_none() {
            inc.acked_by = Some(by.to_owned());
            inc.acked_at = Some(now);
        }
        let inc = inc.clone();
        Self::save(conn, &inc)?;
        Ok(if inc.paged {
            vec![IncidentEvent::Resolve(inc)]
        } else {
            Vec::new()
        })
    }
}

/// Incidents from the database, newest first: open ones, or all.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn list(
    conn: &Connection,
    open_only: bool,
    limit: usize,
) -> Result<Vec<IncidentOut>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT data FROM incidents WHERE (?1 = 0 OR state = 'open') ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![open_only as i64, limit as i64], |r| {
        r.get::<_, String>(0)
    })?;
    let mut out = Vec::new();
    for r in rows {
        if let Ok(i) = serde_json::from_str(&r?) {
            out.push(i);
        }
    }
    Ok(out)
}

/// One incident from the database.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn get(conn: &Connection, id: i64) -> Result<Option<IncidentOut>, rusqlite::Error> {
    use rusqlite::OptionalExtension;
    let data: Option<String> = conn
        .query_row("SELECT data FROM incidents WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(data.and_then(|d| serde_json::from_str(&d).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> Alerting {
        let mut p = heimdall_common::config::ConfigProblems::default();
        let raw: super::super::config::AlertingConfigFile = toml::from_str(
            "[correlation]\ndependencies = [\"api -> db\", \"web -> db\"]\nsettle = \"5s\"\n",
        )
        .expect("toml");
        let a = raw.validate(
            &mut p,
            std::path::Path::new("/tmp"),
            "127.0.0.1:3100".parse().expect("addr"),
        );
        assert!(p.0.is_empty(), "{p}");
        a
    }

    fn alert(name: &str, labels: &[(&str, &str)], onset: i64, state: State) -> Alert {
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        l.insert("alertname".into(), name.into());
        Alert {
            fingerprint: super::super::state::fingerprint(&l),
            rule: name.into(),
            group: "g".into(),
            labels: l,
            annotations: BTreeMap::new(),
            state,
            active_at: onset,
            fired_at: Some(onset),
            resolved_at: None,
            last_true: onset,
            value: 1.0,
            samples: Vec::new(),
        }
    }

    #[test]
    fn a_database_outage_is_one_incident_with_the_database_first() {
        let conn = super::super::state::open(std::path::Path::new(":memory:")).expect("db");
        let mut c = Correlator::load(&conn, &cfg()).expect("load");
        let s = 1_000_000_000;
        // The services' errors fire first; the database's silence is known later but
        // began earlier.
        let api = alert(
            "Errors",
            &[("host", "api1"), ("app", "api")],
            100 * s,
            State::Firing,
        );
        let web = alert(
            "Errors",
            &[("host", "web1"), ("app", "web")],
            101 * s,
            State::Firing,
        );
        let db = alert(
            "HostSilent",
            &[("host", "db1"), ("app", "db")],
            99 * s,
            State::Firing,
        );
        c.alert(&conn, &api, 101 * s).expect("api");
        c.alert(&conn, &web, 102 * s).expect("web");
        assert_eq!(c.incidents.len(), 2, "not related yet");
        c.alert(&conn, &db, 104 * s).expect("db");
        let open: Vec<&IncidentOut> = c.incidents.values().filter(|i| i.state == "open").collect();
        assert_eq!(open.len(), 1, "merged into one");
        assert_eq!(open[0].candidates[0].name, "db", "{:?}", open[0].candidates);
        assert_eq!(open[0].signals.len(), 3);
        // Pages once after settling.
        assert!(c.tick(&conn, 104 * s).expect("tick").is_empty());
        let ev = c.tick(&conn, 107 * s).expect("tick");
        assert_eq!(ev.len(), 1);
        assert!(matches!(ev[0], IncidentEvent::Page(_)));
        assert!(c.tick(&conn, 108 * s).expect("tick").is_empty());
        // Resolves when every alert resolves.
        for mut a in [api, web, db] {
            a.state = State::Resolved;
            c.alert(&conn, &a, 200 * s).expect("resolve");
        }
        let ev = c.tick(&conn, 201 * s).expect("tick");
        assert_eq!(ev.len(), 1);
        assert!(matches!(ev[0], IncidentEvent::Resolve(_)));
        assert_eq!(list(&conn, false, 10).expect("list").len(), 1);
        let _ = Duration::ZERO;
    }

    /// An incident held open by an anomaly resolves when the agent says the anomaly
    /// ended, not `quiet` later.
    #[test]
    fn an_anomaly_end_resolves_its_incident() {
        let conn = super::super::state::open(std::path::Path::new(":memory:")).expect("db");
        let mut c = Correlator::load(&conn, &cfg()).expect("load");
        let s = 1_000_000_000;
        let mut ev = AnomalyEvent {
            agent: "api1".into(),
            id: "00000000000000aa".into(),
            kind: "error_ratio".into(),
            time_ns: 100 * s,
            received_ns: 101 * s,
            score: 4.0,
            baseline: 0.01,
            observed: 0.5,
            stream: BTreeMap::from([("host".into(), "api1".into()), ("app".into(), "api".into())]),
            templates: Vec::new(),
            samples: vec!["ERROR boom".into()],
            window_seconds: 10,
            ended_ns: None,
        };
        c.anomaly(&conn, &ev, 101 * s).expect("anomaly");
        assert!(c.tick(&conn, 102 * s).expect("tick").is_empty());
        let _ = c.tick(&conn, 110 * s).expect("tick");
        let open = |c: &Correlator| c.incidents.values().filter(|i| i.state == "open").count();
        assert_eq!(open(&c), 1);
        // Still going 30 s later: the incident stays open.
        let _ = c.tick(&conn, 130 * s).expect("tick");
        assert_eq!(open(&c), 1);
        ev.ended_ns = Some(135 * s);
        c.anomaly_ended(&conn, &ev, 136 * s).expect("end");
        let out = c.tick(&conn, 137 * s).expect("tick");
        assert_eq!(open(&c), 0);
        assert!(
            out.iter().any(|e| matches!(e, IncidentEvent::Resolve(_))),
            "{out:?}"
        );
    }

    #[test]
    fn trace_ids_come_from_json_and_logfmt() {
        let f = vec!["trace_id".to_owned()];
        let ids = trace_ids(
            &f,
            &[
                r#"{"msg":"x","trace_id":"abc123def"}"#.to_owned(),
                "level=error trace_id=feed00beef msg=y".to_owned(),
            ],
        );
        assert_eq!(ids, vec!["abc123def".to_owned(), "feed00beef".to_owned()]);
    }
}
