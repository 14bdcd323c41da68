//! The alert state database (`<state_dir>/alerts.db`, SQLite, WAL): alert instances
//! and their states, notification groups, the outbox of notifications accepted for
//! delivery, silences, hosts last seen, and incidents.
//!
//! Kept apart from the hot store so that alert bookkeeping never waits behind ingest
//! commits, and so that an operator can reset alerting without touching logs.

pub use heimdall_api::model::{Alert, AlertState as State, Silence};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

const SCHEMA: &str = r#"
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS alerts (
    fingerprint TEXT PRIMARY KEY,
    rule        TEXT NOT NULL,
    grp         TEXT NOT NULL,
    labels      TEXT NOT NULL,
    annotations TEXT NOT NULL,
    state       TEXT NOT NULL,
    active_at   INTEGER NOT NULL,
    fired_at    INTEGER,
    resolved_at INTEGER,
    last_true   INTEGER NOT NULL,
    value       REAL NOT NULL,
    samples     TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS notify_groups (
    receiver    TEXT NOT NULL,
    group_key   TEXT NOT NULL,
    labels      TEXT NOT NULL,
    dirty_since INTEGER,
    last_flush  INTEGER,
    notified    TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (receiver, group_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver    TEXT NOT NULL,
    created     INTEGER NOT NULL,
    payload     TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     INTEGER NOT NULL,
    last_error  TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(receiver, next_at);
CREATE TABLE IF NOT EXISTS silences (
    id          TEXT PRIMARY KEY,
    matchers    TEXT NOT NULL,
    starts      INTEGER NOT NULL,
    ends        INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    comment     TEXT NOT NULL,
    created     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS hosts_seen (
    host        TEXT PRIMARY KEY,
    last_seen   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incidents (
    id          INTEGER PRIMARY KEY,
    state       TEXT NOT NULL,
    opened      INTEGER NOT NULL,
    updated     INTEGER NOT NULL,
    resolved    INTEGER,
    acked_by    TEXT,
    acked_at    INTEGER,
    paged       INTEGER NOT NULL DEFAULT 0,
    data        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_state ON incidents(state, updated);
"#;

/// Opens (and creates) the alert state database.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn open(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// An alert state from its stored name (an unknown one is pending).
fn parse_state(s: &str) -> State {
    match s {
        "firing" => State::Firing,
        "resolved" => State::Resolved,
        _ => State::Pending,
    }
}

/// A stable fingerprint of a label set (FNV-1a over sorted pairs), as hex.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xfe]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

/// Writes an alert (insert or update).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn put_alert(conn: &Connection, a: &Alert) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO alerts(fingerprint, rule, grp, labels, annotations, state,
            active_at, fired_at, resolved_at, last_true, value, samples)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        a.fingerprint,
        a.rule,
        a.group,
        json(&a.labels),
        json(&a.annotations),
        a.state.as_str(),
        a.active_at,
        a.fired_at,
        a.resolved_at,
        a.last_true,
        a.value,
        json(&a.samples),
    ])?;
    Ok(())
}

/// Removes an alert.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn delete_alert(conn: &Connection, fingerprint: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached("DELETE FROM alerts WHERE fingerprint = ?1")?
        .execute([fingerprint])?;
    Ok(())
}

fn alert_row(r: &rusqlite::Row<'_>) -> Result<Alert, rusqlite::Error> {
    let j = |i: usize| -> Result<String, rusqlite::Error> { r.get(i) };
    Ok(Alert {
        fingerprint: r.get(0)?,
        rule: r.get(1)?,
        group: r.get(2)?,
        labels: serde_json::from_str(&j(3)?).unwrap_or_default(),
        annotations: serde_json::from_str(&j(4)?).unwrap_or_default(),
        state: parse_state(&j(5)?),
        active_at: r.get(6)?,
        fired_at: r.get(7)?,
        resolved_at: r.get(8)?,
        last_true: r.get(9)?,
        value: r.get(10)?,
        samples: serde_json::from_str(&j(11)?).unwrap_or_default(),
    })
}

/// Every stored alert.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn alerts(conn: &Connection) -> Result<Vec<Alert>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT fingerprint, rule, grp, labels, annotations, state, active_at, fired_at,
                resolved_at, last_true, value, samples FROM alerts ORDER BY active_at, fingerprint",
    )?;
    let rows = stmt.query_map([], alert_row)?;
    rows.collect()
}

/// Stores a silence.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn put_silence(conn: &Connection, s: &Silence) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT OR REPLACE INTO silences(id, matchers, starts, ends, created_by, comment, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            s.id,
            s.matchers,
            s.starts,
            s.ends,
            s.created_by,
            s.comment,
            s.created
        ],
    )?;
    Ok(())
}

/// Silences that have not ended before `since`.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn silences(conn: &Connection, since: i64) -> Result<Vec<Silence>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, matchers, starts, ends, created_by, comment, created FROM silences
         WHERE ends > ?1 ORDER BY starts, id",
    )?;
    let rows = stmt.query_map([since], |r| {
        Ok(Silence {
            id: r.get(0)?,
            matchers: r.get(1)?,
            starts: r.get(2)?,
            ends: r.get(3)?,
            created_by: r.get(4)?,
            comment: r.get(5)?,
            created: r.get(6)?,
        })
    })?;
    rows.collect()
}

/// Ends a silence now; false when there is none with that id.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn expire_silence(conn: &Connection, id: &str, now: i64) -> Result<bool, rusqlite::Error> {
    Ok(conn.execute(
        "UPDATE silences SET ends = min(ends, ?2) WHERE id = ?1",
        params![id, now],
    )? > 0)
}

/// A notification waiting in the outbox.
#[derive(Clone, Debug)]
pub struct Pending {
    pub id: i64,
    pub receiver: String,
    pub created: i64,
    pub payload: String,
    pub attempts: u32,
}

/// Queues a notification for `receiver`, due now.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn enqueue(
    conn: &Connection,
    receiver: &str,
    payload: &str,
    now: i64,
) -> Result<i64, rusqlite::Error> {
    conn.prepare_cached(
        "INSERT INTO outbox(receiver, created, payload, next_at) VALUES (?1, ?2, ?3, ?2)",
    )?
    .execute(params![receiver, now, payload])?;
    Ok(conn.last_insert_rowid())
}

/// The oldest notification of `receiver` (in order: a receiver gets its
/// notifications in the order they were made), with its due time.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn next_pending(
    conn: &Connection,
    receiver: &str,
) -> Result<Option<(Pending, i64)>, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT id, receiver, created, payload, attempts, next_at FROM outbox
         WHERE receiver = ?1 ORDER BY id LIMIT 1",
    )?
    .query_row([receiver], |r| {
        Ok((
            Pending {
                id: r.get(0)?,
                receiver: r.get(1)?,
                created: r.get(2)?,
                payload: r.get(3)?,
                attempts: r.get(4)?,
            },
            r.get(5)?,
        ))
    })
    .optional()
}

/// Notifications waiting, per receiver.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn outbox_depth(conn: &Connection) -> Result<Vec<(String, u64)>, rusqlite::Error> {
    let mut stmt =
        conn.prepare_cached("SELECT receiver, count(*) FROM outbox GROUP BY receiver")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    rows.collect()
}

/// Removes a delivered (or dropped) notification.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn delivered(conn: &Connection, id: i64) -> Result<(), rusqlite::Error> {
    conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Records a failed attempt and when to try again.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn retry_at(
    conn: &Connection,
    id: i64,
    next_at: i64,
    error: &str,
) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "UPDATE outbox SET attempts = attempts + 1, next_at = ?2, last_error = ?3 WHERE id = ?1",
    )?
    .execute(params![id, next_at, error])?;
    Ok(())
}

/// Records when a host was last heard from.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn host_seen(conn: &Connection, host: &str, at: i64) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT INTO hosts_seen(host, last_seen) VALUES (?1, ?2)
         ON CONFLICT(host) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
    )?
    .execute(params![host, at])?;
    Ok(())
}

/// Hosts and when they were last heard from.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn hosts_seen(conn: &Connection) -> Result<Vec<(String, i64)>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached("SELECT host, last_seen FROM hosts_seen")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_and_outbox_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("alerts.db");
        let labels = BTreeMap::from([("alertname".to_owned(), "A".to_owned())]);
        let a = Alert {
            fingerprint: fingerprint(&labels),
            rule: "A".into(),
            group: "g".into(),
            labels,
            annotations: BTreeMap::new(),
            state: State::Firing,
            active_at: 1,
            fired_at: Some(2),
            resolved_at: None,
            last_true: 2,
            value: 3.0,
            samples: vec!["x".into()],
        };
        {
            let c = open(&path).expect("open");
            put_alert(&c, &a).expect("put");
            enqueue(&c, "r", "{}", 5).expect("enqueue");
            enqueue(&c, "r", "{\"b\":1}", 6).expect("enqueue");
        }
        let c = open(&path).expect("reopen");
        assert_eq!(alerts(&c).expect("alerts"), vec![a]);
        let (p, due) = next_pending(&c, "r").expect("q").expect("one");
        assert_eq!((p.payload.as_str(), due), ("{}", 5));
        retry_at(&c, p.id, 100, "boom").expect("retry");
        let (p2, due) = next_pending(&c, "r").expect("q").expect("one");
        assert_eq!((p2.id, p2.attempts, due), (p.id, 1, 100));
        delivered(&c, p.id).expect("done");
        assert_eq!(
            next_pending(&c, "r").expect("q").expect("one").0.payload,
            "{\"b\":1}"
        );
    }

    #[test]
    fn fingerprints_depend_on_every_pair() {
        let a = BTreeMap::from([("a".to_owned(), "bc".to_owned())]);
        let b = BTreeMap::from([("ab".to_owned(), "c".to_owned())]);
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
    }
}
