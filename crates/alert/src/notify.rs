//! From alert changes to notifications in the outbox, and from the outbox to
//! receivers.
//!
//! - **Routing**: a receiver takes the alerts its `match` selector accepts, minus
//!   those a silence covers.
//! - **Grouping** (every receiver but Alertmanager, which groups by itself): alerts
//!   with equal `group_by` labels form a group. A group's first notification waits
//!   `group_wait`; changes after a notification wait `group_interval`; a group still
//!   firing is notified again after `repeat_interval`. A notification carries every
//!   firing alert of the group and the alerts resolved since the last one.
//! - **Alertmanager** gets each change at once and every firing alert again every
//!   `alerting.resend_interval`, with `endsAt` four intervals ahead, as Prometheus does.
//! - **Per-incident** receivers get one notification when an incident pages and one
//!   when it resolves (see `alert::correlate`).
//! - **Outbox**: a notification is written to the alert database in the transaction
//!   that changed the alert, so it survives a crash; [`Dispatcher`] tasks deliver each
//!   receiver's notifications in order, retry with exponential backoff and full jitter
//!   (honouring `Retry-After`), and delete them once delivered. Each carries a stable
//!   id so a receiver can drop the duplicate a crash between delivery and deletion
//!   can cause.

use super::config::{Alerting, Receiver, ReceiverKind};
use super::correlate::IncidentEvent;
use super::state::{self, Alert, State};
use heimdall_logql::Matcher;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub use heimdall_api::model::AlertOut;

/// A notification waiting in the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique and stable across retries.
    pub id: String,
    pub receiver: String,
    /// `firing` when any alert fires, else `resolved`.
    pub status: String,
    pub group_key: String,
    pub group_labels: BTreeMap<String, String>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    pub external_url: String,
    pub alerts: Vec<AlertOut>,
    #[serde(default)]
    pub incident: Option<super::correlate::IncidentOut>,
    /// ns when it was made.
    pub created: i64,
}

/// Labels that are bookkeeping, not shown to receivers.
fn visible(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| !k.starts_with("__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The query link of an alert: the aggregator's API for its rule's instances.
fn generator_url(base: &str, a: &Alert) -> String {
    format!("{base}/api/v1/alerts?fingerprint={}", a.fingerprint)
}

/// An alert for receivers.
pub fn alert_out(base: &str, a: &Alert) -> AlertOut {
    AlertOut {
        status: if a.state == State::Resolved {
            "resolved".into()
        } else {
            "firing".into()
        },
        labels: visible(&a.labels),
        annotations: a.annotations.clone(),
        starts_at: a.active_at,
        ends_at: a
            .resolved_at
            .filter(|_| a.state == State::Resolved)
            .unwrap_or(0),
        generator_url: generator_url(base, a),
        fingerprint: a.fingerprint.clone(),
        value: a.value,
        samples: a.samples.clone(),
    }
}

fn common(maps: impl Iterator<Item = BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let mut out: Option<BTreeMap<String, String>> = None;
    for m in maps {
        out = Some(match out {
            None => m,
            Some(o) => o.into_iter().filter(|(k, v)| m.get(k) == Some(v)).collect(),
        });
    }
    out.unwrap_or_default()
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct GroupState {
    labels: BTreeMap<String, String>,
    dirty_since: Option<i64>,
    last_flush: Option<i64>,
    /// Fingerprints in the last notification as firing.
    notified: BTreeSet<String>,
}

/// Routing, grouping and silences; runs on the engine thread.
pub struct Notifier {
    /// Shared so each round takes a handle (not a copy) while `enqueue` borrows `self`.
    receivers: Arc<[Receiver]>,
    external_url: String,
    resend_ns: i64,
    last_resend: i64,
    groups: HashMap<(String, String), GroupState>,
    silences: Vec<(String, Vec<Matcher>, i64, i64)>,
    silences_loaded: i64,
    seq: u64,
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Notifier {
    /// Loads the group states.
    ///
    /// # Errors
    /// [`rusqlite::Error`].
    pub fn load(conn: &Connection, cfg: &Alerting) -> Result<Notifier, rusqlite::Error> {
        let mut groups = HashMap::new();
        let mut stmt = conn.prepare(
            "SELECT receiver, group_key, labels, dirty_since, last_flush, notified FROM notify_groups",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        for row in rows {
            let (rcv, key, labels, dirty_since, last_flush, notified) = row?;
            groups.insert(
                (rcv, key),
                GroupState {
                    labels: serde_json::from_str(&labels).unwrap_or_default(),
                    dirty_since,
                    last_flush,
                    notified: serde_json::from_str(&notified).unwrap_or_default(),
                },
            );
        }
        Ok(Notifier {
            receivers: cfg.receivers.clone().into(),
            external_url: cfg.external_url.clone(),
            resend_ns: ns(cfg.resend_interval),
            last_resend: 0,
            groups,
            silences: Vec::new(),
            silences_loaded: 0,
            seq: 0,
        })
    }

    fn id(&mut self, receiver: &str, now: i64) -> String {
        self.seq += 1;
        format!("{receiver}-{now:x}-{:x}", self.seq)
    }

    fn load_silences(&mut self, conn: &Connection, now: i64) -> Result<(), rusqlite::Error> {
        if now - self.silences_loaded < 1_000_000_000 {
            return Ok(());
        }
        self.silences_loaded = now;
        self.silences = state::silences(conn, now)?
            .into_iter()
            .filter_map(|s| {
                let m = heimdall_logql::parse_log(&s.matchers).ok()?.matchers;
                Some((s.id, m, s.starts, s.ends))
            })
            .collect();
        Ok(())
    }

    /// The silence covering `labels` now, if any.
    pub fn silenced(&self, labels: &BTreeMap<String, String>, now: i64) -> Option<&str> {
        self.silences
            .iter()
            .find(|(_, m, s, e)| {
                *s <= now
                    && now < *e
                    && m.iter()
                        .all(|m| m.matches(labels.get(&m.name).map(String::as_str)))
            })
            .map(|(id, ..)| id.as_str())
    }

    fn routes(r: &Receiver, labels: &BTreeMap<String, String>) -> bool {
        r.matchers
            .iter()
            .all(|m| m.matches(labels.get(&m.name).map(String::as_str)))
    }

    fn group_key(
        r: &Receiver,
        labels: &BTreeMap<String, String>,
    ) -> (String, BTreeMap<String, String>) {
        let gl: BTreeMap<String, String> = if r.group_by.iter().any(|g| g == "...") {
            visible(labels)
        } else {
            r.group_by
                .iter()
                .filter_map(|k| labels.get(k).map(|v| (k.clone(), v.clone())))
                .collect()
        };
        (serde_json::to_string(&gl).expect("labels serialise"), gl)
    }

    fn save_group(
        conn: &Connection,
        rcv: &str,
        key: &str,
        g: &GroupState,
    ) -> Result<(), rusqlite::Error> {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO notify_groups(receiver, group_key, labels, dirty_since, last_flush, notified)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(rusqlite::params![
            rcv,
            key,
            serde_json::to_string(&g.labels).expect("labels serialise"),
            g.dirty_since,
            g.last_flush,
            serde_json::to_string(&g.notified).expect("set serialises"),
        ])?;
        Ok(())
    }

    fn forget_group(
        &mut self,
        conn: &Connection,
        rcv: &str,
        key: &str,
    ) -> Result<(), rusqlite::Error> {
        self.groups.remove(&(rcv.to_owned(), key.to_owned()));
        conn.execute(
            "DELETE FROM notify_groups WHERE receiver = ?1 AND group_key = ?2",
            [rcv, key],
        )?;
        Ok(())
    }

    /// An alert fired or resolved: mark its groups, or post it to Alertmanager.
    ///
    /// # Errors
    /// [`rusqlite::Error`].
    pub fn changed(
        &mut self,
        conn: &Connection,
        a: &Alert,
        now: i64,
    ) -> Result<(), rusqlite::Error> {
        self.load_silences(conn, now)?;
        if self.silenced(&a.labels, now).is_some() {
            metrics::counter!("heimdall_aggregator_notifications_silenced_total").increment(1);
            return Ok(());
        }
        let receivers = self.receivers.clone();
        for r in receivers
            .iter()
            .filter(|r| !r.per_incident && Self::routes(r, &a.labels))
        {
            if r.kind == ReceiverKind::Alertmanager {
                let mut out = alert_out(&self.external_url, a);
                if out.status == "firing" {
                    out.ends_at = now + 4 * self.resend_ns;
                }
                self.enqueue(
                    conn,
                    r,
                    String::new(),
                    BTreeMap::new(),
                    vec![out],
                    None,
                    now,
                )?;
                continue;
            }
            let (key, labels) = Self::group_key(r, &a.labels);
            let g = self
                .groups
                .entry((r.name.clone(), key.clone()))
                .or_insert_with(|| GroupState {
                    labels,
                    ..GroupState::default()
                });
            if g.dirty_since.is_none() {
                g.dirty_since = Some(now);
            }
            let g = g.clone();
            Self::save_group(conn, &r.name, &key, &g)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        conn: &Connection,
        r: &Receiver,
        group_key: String,
        group_labels: BTreeMap<String, String>,
        alerts: Vec<AlertOut>,
        incident: Option<super::correlate::IncidentOut>,
        now: i64,
    ) -> Result<(), rusqlite::Error> {
        let firing = alerts.iter().any(|a| a.status == "firing")
            || incident.as_ref().is_some_and(|i| i.state != "resolved");
        let n = Notification {
            id: self.id(&r.name, now),
            receiver: r.name.clone(),
            status: if firing { "firing" } else { "resolved" }.into(),
            group_key,
            group_labels,
            common_labels: common(alerts.iter().map(|a| a.labels.clone())),
            common_annotations: common(alerts.iter().map(|a| a.annotations.clone())),
            external_url: self.external_url.clone(),
            alerts,
            incident,
            created: now,
        };
        state::enqueue(
            conn,
            &r.name,
            &serde_json::to_string(&n).expect("notification serialises"),
            now,
        )?;
        metrics::counter!("heimdall_aggregator_notifications_queued_total", "receiver" => r.name.clone())
            .increment(1);
        Ok(())
    }

    /// When the next group flush or Alertmanager resend is due.
    pub fn next_due(&self) -> Option<i64> {
        let mut next: Option<i64> = None;
        let mut at = |t: i64| next = Some(next.map_or(t, |n: i64| n.min(t)));
        for ((rcv, _), g) in &self.groups {
            let Some(r) = self.receivers.iter().find(|r| &r.name == rcv) else {
                continue;
            };
            if let Some(d) = g.dirty_since {
                at(match g.last_flush {
                    None => d + ns(r.group_wait),
                    Some(l) => (l + ns(r.group_interval)).max(d),
                });
            } else if let (Some(l), false) = (g.last_flush, g.notified.is_empty()) {
                at(l + ns(r.repeat_interval));
            }
        }
        if self
            .receivers
            .iter()
            .any(|r| r.kind == ReceiverKind::Alertmanager && !r.per_incident)
        {
            at(self.last_resend + self.resend_ns);
        }
        next
    }

    /// Writes the notifications that are due; returns how many.
    ///
    /// # Errors
    /// [`rusqlite::Error`].
    pub fn flush(
        &mut self,
        conn: &Connection,
        alerts: &HashMap<String, Alert>,
        now: i64,
    ) -> Result<usize, rusqlite::Error> {
        self.load_silences(conn, now)?;
        let mut queued = 0;
        let receivers = self.receivers.clone();
        let keys: Vec<(String, String)> = self.groups.keys().cloned().collect();
        for (rcv, key) in keys {
            let Some(r) = receivers.iter().find(|r| r.name == rcv) else {
                self.forget_group(conn, &rcv, &key)?;
                continue;
            };
            let g = self.groups[&(rcv.clone(), key.clone())].clone();
            let due = match (g.dirty_since, g.last_flush) {
                (Some(d), None) => now >= d + ns(r.group_wait),
                (Some(_), Some(l)) => now >= l + ns(r.group_interval),
                (None, Some(l)) => !g.notified.is_empty() && now >= l + ns(r.repeat_interval),
                (None, None) => false,
            };
            if !due {
                continue;
            }
            let members: Vec<&Alert> = alerts
                .values()
                .filter(|a| Self::routes(r, &a.labels) && Self::group_key(r, &a.labels).0 == key)
                .collect();
            let firing: Vec<&Alert> = members
                .iter()
                .copied()
                .filter(|a| a.state == State::Firing && self.silenced(&a.labels, now).is_none())
                .collect();
            let resolved: Vec<&Alert> = members
                .iter()
                .copied()
                .filter(|a| a.state == State::Resolved && g.notified.contains(&a.fingerprint))
                .collect();
            let mut g2 = g.clone();
            g2.dirty_since = None;
            if firing.is_empty() && resolved.is_empty() {
                // Nothing to say (e.g. it fired and resolved while waiting, unseen).
                if g.notified.is_empty() {
                    self.forget_group(conn, &rcv, &key)?;
                    continue;
                }
            } else {
                let mut out: Vec<AlertOut> = firing
                    .iter()
                    .chain(resolved.iter())
                    .map(|a| alert_out(&self.external_url, a))
                    .collect();
                out.sort_by(|a, b| {
                    a.starts_at
                        .cmp(&b.starts_at)
                        .then(a.fingerprint.cmp(&b.fingerprint))
                });
                self.enqueue(conn, r, key.clone(), g.labels.clone(), out, None, now)?;
                queued += 1;
                g2.last_flush = Some(now);
            }
            g2.notified = firing.iter().map(|a| a.fingerprint.clone()).collect();
            if g2.notified.is_empty() {
                self.forget_group(conn, &rcv, &key)?;
            } else {
                Self::save_group(conn, &rcv, &key, &g2)?;
                self.groups.insert((rcv, key), g2);
            }
        }
        if now >= self.last_resend + self.resend_ns {
            self.last_resend = now;
            for r in receivers
                .iter()
                .filter(|r| r.kind == ReceiverKind::Alertmanager && !r.per_incident)
            {
                // No pile-up while Alertmanager is down: the next resend says it all.
                let waiting: i64 = conn.query_row(
                    "SELECT count(*) FROM outbox WHERE receiver = ?1",
                    [&r.name],
                    |row| row.get(0),
                )?;
                if waiting > 0 {
                    continue;
                }
                let out: Vec<AlertOut> = alerts
                    .values()
                    .filter(|a| a.state == State::Firing)
                    .filter(|a| {
                        Self::routes(r, &a.labels) && self.silenced(&a.labels, now).is_none()
                    })
                    .map(|a| {
                        let mut o = alert_out(&self.external_url, a);
                        o.ends_at = now + 4 * self.resend_ns;
                        o
                    })
                    .collect();
                if !out.is_empty() {
                    self.enqueue(conn, r, String::new(), BTreeMap::new(), out, None, now)?;
                    queued += 1;
                }
            }
        }
        Ok(queued)
    }

    /// An incident paged or resolved: notify the per-incident receivers it routes to.
    ///
    /// # Errors
    /// [`rusqlite::Error`].
    pub fn incident(
        &mut self,
        conn: &Connection,
        ev: &IncidentEvent,
        now: i64,
    ) -> Result<usize, rusqlite::Error> {
        let inc = ev.incident();
        let mut n = 0;
        let receivers = self.receivers.clone();
        for r in receivers.iter().filter(|r| r.per_incident) {
            // An incident routes to a receiver when any of its alerts would.
            let routed =
                r.matchers.is_empty() || inc.alerts.iter().any(|a| Self::routes(r, &a.labels));
            if !routed {
                continue;
            }
            let key = format!("incident-{}", inc.id);
            let labels = BTreeMap::from([("incident".to_owned(), inc.id.to_string())]);
            self.enqueue(
                conn,
                r,
                key,
                labels,
                inc.alerts.clone(),
                Some(inc.clone()),
                now,
            )?;
            n += 1;
        }
        Ok(n)
    }
}

/// Why a delivery failed.
#[derive(Debug)]
pub struct SendError {
    pub message: String,
    /// The receiver asked to wait this long (HTTP 429 / 503 `Retry-After`).
    pub retry_after: Option<Duration>,
    /// Retrying cannot help (e.g. HTTP 400: the payload is refused).
    pub permanent: bool,
}

/// Delivers one receiver's outbox.
pub struct Dispatcher {
    pub receiver: Receiver,
    pub db_path: std::path::PathBuf,
    pub wake: Arc<tokio::sync::Notify>,
    pub client: reqwest::Client,
}

/// Backoff before attempt `n + 1`: exponential from 500 ms to 5 min, full jitter.
pub fn backoff(attempts: u32) -> Duration {
    let cap = Duration::from_secs(300);
    let base = Duration::from_millis(500).saturating_mul(1u32 << attempts.min(20));
    let max = base.min(cap);
    Duration::from_nanos(fastrand::u64(
        max.as_nanos() as u64 / 2..=max.as_nanos() as u64,
    ))
}

impl Dispatcher {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        let name = self.receiver.name.clone();
        let path = self.db_path.clone();
        let db = match tokio::task::spawn_blocking(move || state::open(&path)).await {
            Ok(Ok(c)) => Arc::new(std::sync::Mutex::new(c)),
            Ok(Err(e)) => {
                tracing::error!(receiver = %name, error = %e, "cannot open the alert database; notifications stay queued");
                return;
            }
            Err(_) => return,
        };
        loop {
            let db2 = db.clone();
            let rcv = name.clone();
            let next = tokio::task::spawn_blocking(move || {
                let c = db2.lock().unwrap_or_else(|p| p.into_inner());
                state::next_pending(&c, &rcv)
            })
            .await;
            let wait = match next {
                Ok(Ok(Some((p, due)))) => {
                    let now = heimdall_common::record::now_ns();
                    if due <= now {
                        self.deliver(&db, p).await;
                        continue;
                    }
                    Duration::from_nanos((due - now) as u64)
                }
                Ok(Ok(None)) => Duration::from_secs(5),
                Ok(Err(e)) => {
                    tracing::warn!(receiver = %name, error = %e, "cannot read the outbox");
                    Duration::from_secs(1)
                }
                Err(_) => return,
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn deliver(&self, db: &Arc<std::sync::Mutex<Connection>>, p: state::Pending) {
        let r = &self.receiver;
        let label = r.name.clone();
        let now = heimdall_common::record::now_ns();
        let n: Notification = match serde_json::from_str(&p.payload) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(receiver = %r.name, error = %e, "unreadable notification dropped");
                self.finish(db, p.id, None).await;
                return;
            }
        };
        let started = std::time::Instant::now();
        let res = super::receivers::send(&self.client, r, &n).await;
        metrics::histogram!("heimdall_aggregator_notification_seconds", "receiver" => label.clone())
            .record(started.elapsed().as_secs_f64());
        match res {
            Ok(()) => {
                metrics::counter!("heimdall_aggregator_notifications_sent_total", "receiver" => label.clone()).increment(1);
                metrics::histogram!("heimdall_aggregator_notification_delay_seconds", "receiver" => label)
                    .record((now - n.created).max(0) as f64 / 1e9);
                tracing::info!(receiver = %r.name, id = %n.id, status = %n.status, alerts = n.alerts.len(), "notification delivered");
                self.finish(db, p.id, None).await;
            }
            Err(e) => {
                metrics::counter!("heimdall_aggregator_notifications_failed_total", "receiver" => label.clone()).increment(1);
                let too_old = now - p.created > ns(r.max_age);
                if e.permanent || too_old {
                    metrics::counter!("heimdall_aggregator_notifications_dropped_total", "receiver" => label).increment(1);
                    tracing::error!(receiver = %r.name, id = %n.id, error = %e.message, attempts = p.attempts + 1, "notification dropped");
                    self.finish(db, p.id, None).await;
                } else {
                    metrics::counter!("heimdall_aggregator_notifications_retried_total", "receiver" => label).increment(1);
                    let wait = e
                        .retry_after
                        .unwrap_or_else(|| backoff(p.attempts))
                        .max(backoff(0) / 4);
                    tracing::warn!(receiver = %r.name, id = %n.id, error = %e.message, retry_in = ?wait, "notification failed; will retry");
                    self.finish(db, p.id, Some((now + ns(wait), e.message)))
                        .await;
                }
            }
        }
    }

    async fn finish(
        &self,
        db: &Arc<std::sync::Mutex<Connection>>,
        id: i64,
        retry: Option<(i64, String)>,
    ) {
        let db = db.clone();
        let res = tokio::task::spawn_blocking(move || {
            let c = db.lock().unwrap_or_else(|p| p.into_inner());
            match retry {
                None => state::delivered(&c, id),
                Some((at, e)) => state::retry_at(&c, id, at, &e),
            }
        })
        .await;
        if let Ok(Err(e)) = res {
            tracing::error!(error = %e, "cannot update the outbox");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for a in 0..30 {
            let b = backoff(a);
            let max = Duration::from_millis(500)
                .saturating_mul(1u32 << a.min(20))
                .min(Duration::from_secs(300));
            assert!(b <= max && b >= max / 2, "{a}: {b:?}");
        }
    }

    #[test]
    fn common_labels_are_shared_pairs() {
        let a = BTreeMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ]);
        let b = BTreeMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "3".to_owned()),
        ]);
        assert_eq!(
            common([a, b].into_iter()),
            BTreeMap::from([("a".to_owned(), "1".to_owned())])
        );
    }
}
