//! The hot tier: SQLite (WAL), one writer thread with group commit.
//!
//! Batches from all connections queue to the writer, which commits as many as are
//! waiting (up to a row budget) in one transaction, each inside its own savepoint so
//! that one bad batch does not fail the others. A batch's identity
//! `(agent, epoch, seq)` is recorded in the same transaction as its rows: the highest
//! contiguous `seq` per `(agent, epoch)` plus the few seen above it. A batch whose
//! identity is already recorded is answered as a duplicate without storing anything.
//! The caller acknowledges only after the commit returned (`synchronous = FULL`).

use heimdall_common::record::{Anomaly, Labels, Level};
use heimdall_common::wire::BatchContent;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite reported an error.
    #[error("sqlite ({path}): {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The writer thread is gone (shutting down or crashed).
    #[error("store writer is not running")]
    WriterGone,
    /// The database file exists but was made by an incompatible version.
    #[error("database {path} has schema version {found}, this build needs {want}")]
    Schema {
        path: PathBuf,
        found: i64,
        want: i64,
    },
}

const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS streams (
    id      INTEGER PRIMARY KEY,
    labels  TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS logs (
    id          INTEGER PRIMARY KEY,
    stream_id   INTEGER NOT NULL,
    ts          INTEGER NOT NULL,
    observed    INTEGER NOT NULL,
    level       INTEGER NOT NULL,
    template_id INTEGER NOT NULL,
    flags       INTEGER NOT NULL,
    line        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_ts ON logs(ts);
CREATE INDEX IF NOT EXISTS logs_stream_ts ON logs(stream_id, ts);
CREATE TABLE IF NOT EXISTS batch_hw (
    agent           TEXT NOT NULL,
    epoch           INTEGER NOT NULL,
    acked_through   INTEGER NOT NULL,
    updated         INTEGER NOT NULL,
    PRIMARY KEY (agent, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS templates (
    id          INTEGER PRIMARY KEY,
    text        TEXT NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS aggregates (
    stream_id   INTEGER NOT NULL,
    start       INTEGER NOT NULL,
    window_secs INTEGER NOT NULL,
    level       INTEGER NOT NULL,
    template_id INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    shipped     INTEGER NOT NULL,
    PRIMARY KEY (stream_id, start, level, template_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS aggregates_start ON aggregates(start);
CREATE TABLE IF NOT EXISTS anomalies (
    agent       TEXT NOT NULL,
    id          INTEGER NOT NULL,
    stream_id   INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    received    INTEGER NOT NULL,
    score       REAL NOT NULL,
    baseline    REAL NOT NULL,
    observed    REAL NOT NULL,
    templates   TEXT NOT NULL,
    samples     TEXT NOT NULL,
    PRIMARY KEY (agent, id)
);
CREATE INDEX IF NOT EXISTS anomalies_ts ON anomalies(ts);
CREATE TABLE IF NOT EXISTS batch_seen (
    agent   TEXT NOT NULL,
    epoch   INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (agent, epoch, seq)
) WITHOUT ROWID;
"#;

/// What happened to a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed with this many rows.
    Stored(usize),
    /// Already stored earlier; nothing was written.
    Duplicate,
}

/// Identity of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchId {
    pub agent: Arc<str>,
    pub epoch: u64,
    pub seq: u64,
    pub floor: u64,
}

struct WriteReq {
    /// `None` for anomaly events sent ahead of their batch: stored without identity.
    id: Option<BatchId>,
    content: BatchContent,
    reply: oneshot::Sender<Result<Outcome, Error>>,
}

/// Handle to the hot store.
pub struct HotStore {
    path: PathBuf,
    tx: Option<mpsc::Sender<WriteReq>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

fn sqlite(path: &Path) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |source| Error::Sqlite {
        path: path.to_owned(),
        source,
    }
}

/// Canonical text of a label set, as stored in `streams.labels`.
pub fn labels_key(l: &Labels) -> String {
    let pairs: Vec<(&str, &str)> = l.iter().collect();
    serde_json::to_string(&pairs).expect("string pairs always serialise")
}

/// Parses [`labels_key`] text.
pub fn parse_labels_key(s: &str) -> Labels {
    let pairs: Vec<(String, String)> = serde_json::from_str(s).unwrap_or_default();
    Labels::new(pairs)
}

fn open_rw(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open(path).map_err(sqlite(path))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite(path))?;
    // FULL: an acknowledged batch survives power loss, not only a process crash.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite(path))?;
    conn.pragma_update(None, "busy_timeout", 5000)
        .map_err(sqlite(path))?;
    conn.pragma_update(None, "cache_size", -65536)
        .map_err(sqlite(path))?;
    Ok(conn)
}

/// Opens a read-only connection for queries.
///
/// # Errors
/// [`Error::Sqlite`].
pub fn open_reader(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite(path))?;
    conn.pragma_update(None, "busy_timeout", 5000)
        .map_err(sqlite(path))?;
    Ok(conn)
}

impl HotStore {
    /// Opens (creating if needed) the database and starts the writer thread.
    ///
    /// # Errors
    /// [`Error::Sqlite`] when the file cannot be opened or is corrupt, [`Error::Schema`].
    pub fn open(path: &Path, max_group_rows: usize) -> Result<HotStore, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Sqlite {
                path: path.to_owned(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        }
        let conn = open_rw(path)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sqlite(path))?;
        if version != 0 && version != SCHEMA_VERSION {
            return Err(Error::Schema {
                path: path.to_owned(),
                found: version,
                want: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(SCHEMA).map_err(sqlite(path))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite(path))?;
        let quick: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(sqlite(path))?;
        if quick != "ok" {
            return Err(Error::Sqlite {
                path: path.to_owned(),
                source: rusqlite::Error::InvalidQuery,
            });
        }
        let (tx, rx) = mpsc::channel(1024);
        let p = path.to_owned();
        let writer = std::thread::Builder::new()
            .name("hot-store-writer".into())
            .spawn(move || Writer::new(conn, p, max_group_rows).run(rx))
            .map_err(|e| Error::Sqlite {
                path: path.to_owned(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(HotStore {
            path: path.to_owned(),
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores a batch durably (or recognises it as a duplicate).
    ///
    /// # Errors
    /// [`Error::WriterGone`] during shutdown, [`Error::Sqlite`] when the commit failed
    /// (the batch was not stored; the agent will resend it).
    pub async fn write(&self, id: BatchId, content: BatchContent) -> Result<Outcome, Error> {
        let tx = self.tx.as_ref().ok_or(Error::WriterGone)?;
        let (reply, rx) = oneshot::channel();
        metrics::gauge!("heimdall_aggregator_store_queue_depth")
            .set((tx.max_capacity() - tx.capacity()) as f64);
        tx.send(WriteReq {
            id: Some(id),
            content,
            reply,
        })
        .await
        .map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)?
    }

    /// Stores lines that have no batch identity (pushed through the Loki API): each
    /// call is stored once; a client that retries a push it saw fail stores it again,
    /// as with Loki.
    ///
    /// # Errors
    /// As [`HotStore::write`].
    pub async fn write_unidentified(&self, content: BatchContent) -> Result<Outcome, Error> {
        let tx = self.tx.as_ref().ok_or(Error::WriterGone)?;
        let (reply, rx) = oneshot::channel();
        tx.send(WriteReq {
            id: None,
            content,
            reply,
        })
        .await
        .map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)?
    }

    /// Stores anomaly events that came ahead of their batch (the batch stores them
    /// again, harmlessly: an event is kept once per agent and id). Their streams carry
    /// the `agent` label already.
    ///
    /// # Errors
    /// As [`HotStore::write`].
    pub async fn write_anomalies(&self, events: Vec<Anomaly>) -> Result<usize, Error> {
        let tx = self.tx.as_ref().ok_or(Error::WriterGone)?;
        let (reply, rx) = oneshot::channel();
        let n = events.len();
        tx.send(WriteReq {
            id: None,
            content: BatchContent {
                anomalies: events,
                ..Default::default()
            },
            reply,
        })
        .await
        .map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)??;
        Ok(n)
    }

    /// Stops accepting writes, lets the writer commit what is queued, and waits for it.
    pub fn close(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for HotStore {
    fn drop(&mut self) {
        self.close();
    }
}

struct Writer {
    conn: Connection,
    path: PathBuf,
    max_group_rows: usize,
    streams: HashMap<Labels, i64>,
}

/// Most stream ids cached by the writer; the cache is cleared when it grows past this.
const STREAM_CACHE: usize = 10_000;

impl Writer {
    fn new(conn: Connection, path: PathBuf, max_group_rows: usize) -> Writer {
        Writer {
            conn,
            path,
            max_group_rows,
            streams: HashMap::new(),
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<WriteReq>) {
        while let Some(first) = rx.blocking_recv() {
            let mut rows = first.content.records.len();
            let mut group = vec![first];
            while rows < self.max_group_rows {
                match rx.try_recv() {
                    Ok(r) => {
                        rows += r.content.records.len();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    }

    fn commit_group(&mut self, group: Vec<WriteReq>) {
        let started = Instant::now();
        let n = group.len();
        let mut results: Vec<Result<Outcome, Error>> = Vec::with_capacity(n);
        let res = (|| -> Result<(), rusqlite::Error> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            for req in &group {
                self.conn.execute_batch("SAVEPOINT batch")?;
                match self.store_one(&req.id, &req.content) {
                    Ok(o) => {
                        self.conn.execute_batch("RELEASE batch")?;
                        results.push(Ok(o));
                    }
                    Err(e) => {
                        self.conn
                            .execute_batch("ROLLBACK TO batch; RELEASE batch")?;
                        self.streams.clear();
                        results.push(Err(Error::Sqlite {
                            path: self.path.clone(),
                            source: e,
                        }));
                    }
                }
            }
            self.conn.execute_batch("COMMIT")
        })();
        if let Err(e) = res {
            let _ = self.conn.execute_batch("ROLLBACK");
            // Stream ids made in the failed transaction do not exist.
            self.streams.clear();
            tracing::error!(error = %e, batches = n, "hot store commit failed; agents will resend");
            metrics::counter!("heimdall_aggregator_store_errors_total").increment(1);
            for req in group {
                let _ = req.reply.send(Err(Error::Sqlite {
                    path: self.path.clone(),
                    source: rusqlite::Error::ToSqlConversionFailure(e.to_string().into()),
                }));
            }
            return;
        }
        let secs = started.elapsed().as_secs_f64();
        metrics::histogram!("heimdall_aggregator_store_commit_seconds").record(secs);
        metrics::histogram!("heimdall_aggregator_store_group_batches").record(n as f64);
        for (req, r) in group.into_iter().zip(results) {
            if let Ok(Outcome::Stored(rows)) = &r {
                metrics::counter!("heimdall_aggregator_ingest_rows_total").increment(*rows as u64);
            }
            let _ = req.reply.send(r);
        }
    }

    fn stream_id(&mut self, labels: &Labels) -> Result<i64, rusqlite::Error> {
        if let Some(id) = self.streams.get(labels) {
            return Ok(*id);
        }
        let key = labels_key(labels);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM streams WHERE labels = ?1")?;
        let id = match stmt.query_row([&key], |r| r.get(0)).optional()? {
            Some(id) => id,
            None => {
                self.conn
                    .prepare_cached("INSERT INTO streams(labels) VALUES (?1)")?
                    .execute([&key])?;
                self.conn.last_insert_rowid()
            }
        };
        if self.streams.len() >= STREAM_CACHE {
            self.streams.clear();
        }
        self.streams.insert(labels.clone(), id);
        Ok(id)
    }

    /// Stores a batch's streams and lines; returns the stream ids of its stream table.
    fn store_records(&mut self, content: &BatchContent) -> Result<Vec<i64>, rusqlite::Error> {
        let mut ids = Vec::with_capacity(content.streams.len());
        for s in &content.streams {
            ids.push(self.stream_id(s)?);
        }
        let mut ins = self.conn.prepare_cached(
            "INSERT INTO logs(stream_id, ts, observed, level, template_id, flags, line) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for r in &content.records {
            ins.execute(params![
                ids[r.stream as usize],
                r.time_ns,
                r.observed_ns,
                r.level as u8,
                r.template_id as i64,
                r.flags,
                &r.line[..],
            ])?;
        }
        Ok(ids)
    }

    /// Stores a batch's templates, aggregates and anomaly events; `ids` maps its stream
    /// table to stream ids.
    fn store_extras(&mut self, ids: &[i64], content: &BatchContent) -> Result<(), rusqlite::Error> {
        let now = heimdall_common::record::now_ns();
        if !content.templates.is_empty() {
            let mut ins = self.conn.prepare_cached(
                "INSERT INTO templates(id, text, first_seen, last_seen) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen",
            )?;
            for t in &content.templates {
                ins.execute(params![t.id as i64, t.text, now])?;
            }
        }
        if !content.aggregates.is_empty() {
            let mut ins = self.conn.prepare_cached(
                "INSERT INTO aggregates(stream_id, start, window_secs, level, template_id, count, bytes, shipped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(stream_id, start, level, template_id) DO UPDATE SET
                   count = count + excluded.count, bytes = bytes + excluded.bytes,
                   shipped = shipped + excluded.shipped",
            )?;
            for a in &content.aggregates {
                ins.execute(params![
                    ids[a.stream as usize],
                    a.start_ns,
                    a.window_secs,
                    a.level as u8,
                    a.template_id as i64,
                    a.count as i64,
                    a.bytes as i64,
                    a.shipped as i64,
                ])?;
            }
        }
        for a in &content.anomalies {
            let stream = self.stream_id(&a.stream)?;
            let agent = a.stream.get("agent").unwrap_or_default().to_owned();
            let templates = serde_json::to_string(
                &a.templates
                    .iter()
                    .map(|t| serde_json::json!({"id": format!("{:016x}", t.id), "text": t.text}))
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_else(|_| "[]".into());
            let samples = serde_json::to_string(&a.samples).unwrap_or_else(|_| "[]".into());
            let n = self
                .conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO anomalies(agent, id, stream_id, kind, ts, received, score, baseline, observed, templates, samples)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    agent,
                    a.id as i64,
                    stream,
                    a.kind.as_str(),
                    a.time_ns,
                    now,
                    a.score,
                    a.baseline,
                    a.observed,
                    templates,
                    samples,
                ])?;
            if n > 0 {
                metrics::counter!("heimdall_aggregator_anomalies_total", "kind" => a.kind.as_str())
                    .increment(1);
            }
        }
        Ok(())
    }

    fn store_one(
        &mut self,
        id: &Option<BatchId>,
        content: &BatchContent,
    ) -> Result<Outcome, rusqlite::Error> {
        let Some(id) = id else {
            let ids = self.store_records(content)?;
            self.store_extras(&ids, content)?;
            return Ok(Outcome::Stored(content.records.len()));
        };
        let agent: &str = &id.agent;
        let (epoch, seq) = (id.epoch as i64, id.seq as i64);
        let hw: i64 = self
            .conn
            .prepare_cached("SELECT acked_through FROM batch_hw WHERE agent = ?1 AND epoch = ?2")?
            .query_row(params![agent, epoch], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let seen = seq <= hw
            || self
                .conn
                .prepare_cached(
                    "SELECT 1 FROM batch_seen WHERE agent = ?1 AND epoch = ?2 AND seq = ?3",
                )?
                .query_row(params![agent, epoch, seq], |_| Ok(()))
                .optional()?
                .is_some();
        if seen {
            return Ok(Outcome::Duplicate);
        }
        let ids = self.store_records(content)?;
        self.store_extras(&ids, content)?;
        // Record the identity: everything below `floor` is settled on the agent's side,
        // then advance the contiguous mark over ids seen above it.
        // The connection handler guarantees 1 <= floor <= seq <= i64::MAX.
        let floor = i64::try_from(id.floor).unwrap_or(i64::MAX);
        let mut new_hw = hw.max(floor.saturating_sub(1));
        if Some(seq) == new_hw.checked_add(1) {
            new_hw = seq;
        } else {
            self.conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO batch_seen(agent, epoch, seq) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![agent, epoch, seq])?;
        }
        loop {
            let next = self
                .conn
                .prepare_cached(
                    "SELECT 1 FROM batch_seen WHERE agent = ?1 AND epoch = ?2 AND seq = ?3",
                )?
                .query_row(params![agent, epoch, new_hw.saturating_add(1)], |_| Ok(()))
                .optional()?;
            if next.is_none() || new_hw == i64::MAX {
                break;
            }
            new_hw += 1;
        }
        self.conn
            .prepare_cached("DELETE FROM batch_seen WHERE agent = ?1 AND epoch = ?2 AND seq <= ?3")?
            .execute(params![agent, epoch, new_hw])?;
        self.conn
            .prepare_cached(
                "INSERT INTO batch_hw(agent, epoch, acked_through, updated) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(agent, epoch) DO UPDATE SET acked_through = excluded.acked_through, updated = excluded.updated",
            )?
            .execute(params![agent, epoch, new_hw, heimdall_common::record::now_ns()])?;
        Ok(Outcome::Stored(content.records.len()))
    }
}

/// One stored row, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub stream_id: i64,
    pub ts: i64,
    pub level: Level,
    pub flags: u8,
    pub line: Vec<u8>,
}

/// All streams: `(id, labels)`.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn load_streams(conn: &Connection) -> Result<Vec<(i64, Labels)>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached("SELECT id, labels FROM streams ORDER BY id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
    rows.map(|r| r.map(|(id, s)| (id, parse_labels_key(&s))))
        .collect()
}

/// Calls `each` for rows of `streams` in `[start, end)`, newest first when `backward`,
/// until it returns `false`. Reads in pages so memory stays flat.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn scan_rows(
    conn: &Connection,
    streams: &[i64],
    start: i64,
    end: i64,
    backward: bool,
    deadline: Option<Instant>,
    mut each: impl FnMut(Row) -> bool,
) -> Result<bool, rusqlite::Error> {
    if streams.is_empty() {
        return Ok(true);
    }
    let list = streams
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let (cmp, order) = if backward {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    // Keyset pagination on (ts, id): each page starts after the last row of the previous one.
    let sql = format!(
        "SELECT id, stream_id, ts, level, flags, line FROM logs
         WHERE stream_id IN ({list}) AND ts >= ?1 AND ts < ?2 AND (ts, id) {cmp} (?3, ?4)
         ORDER BY ts {order}, id {order} LIMIT 2048"
    );
    let mut stmt = conn.prepare(&sql)?;
    let (mut cur_ts, mut cur_id) = if backward {
        (i64::MAX, i64::MAX)
    } else {
        (i64::MIN, i64::MIN)
    };
    loop {
        let mut n = 0;
        let mut rows = stmt.query(params![start, end, cur_ts, cur_id])?;
        while let Some(r) = rows.next()? {
            n += 1;
            cur_id = r.get(0)?;
            cur_ts = r.get(2)?;
            let row = Row {
                stream_id: r.get(1)?,
                ts: cur_ts,
                level: Level::from_u8(r.get::<_, u8>(3)?).unwrap_or_default(),
                flags: r.get(4)?,
                line: r.get(5)?,
            };
            if !each(row) {
                return Ok(true);
            }
        }
        if n < 2048 {
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}

/// The highest row id stored (0 when empty).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn max_row_id(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row("SELECT coalesce(max(id), 0) FROM logs", [], |r| r.get(0))
}

/// Rows of `streams` stored after row `after` (in storage order), at most `limit`,
/// each with its row id.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn rows_after(
    conn: &Connection,
    streams: &[i64],
    after: i64,
    limit: usize,
) -> Result<Vec<(i64, Row)>, rusqlite::Error> {
    if streams.is_empty() {
        return Ok(Vec::new());
    }
    let list = streams
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "SELECT id, stream_id, ts, level, flags, line FROM logs
         WHERE id > ?1 AND stream_id IN ({list}) ORDER BY id LIMIT ?2"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params![after, limit as i64], |r| {
        Ok((
            r.get(0)?,
            Row {
                stream_id: r.get(1)?,
                ts: r.get(2)?,
                level: Level::from_u8(r.get::<_, u8>(3)?).unwrap_or_default(),
                flags: r.get(4)?,
                line: r.get(5)?,
            },
        ))
    })?;
    rows.collect()
}

/// How long a query may wait for the writer's lock before giving up.
pub const READ_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use heimdall_common::record::LogRecord;

    fn content(lines: &[&str]) -> BatchContent {
        BatchContent {
            streams: vec![Labels::new([("host", "h"), ("source", "/a")])],
            records: lines
                .iter()
                .enumerate()
                .map(|(i, l)| LogRecord {
                    stream: 0,
                    time_ns: 1000 + i as i64,
                    observed_ns: 1000 + i as i64,
                    level: Level::Info,
                    template_id: u64::MAX,
                    flags: 0,
                    redacted: 0,
                    line: Bytes::from(l.to_string()),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn id(seq: u64, floor: u64) -> BatchId {
        BatchId {
            agent: "a1".into(),
            epoch: 7,
            seq,
            floor,
        }
    }

    fn count(path: &Path) -> i64 {
        open_reader(path)
            .unwrap()
            .query_row("SELECT count(*) FROM logs", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn resent_batches_are_stored_once_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hot.db");
        let mut s = HotStore::open(&path, 1000).unwrap();
        assert_eq!(
            s.write(id(2, 1), content(&["b"])).await.unwrap(),
            Outcome::Stored(1)
        );
        assert_eq!(
            s.write(id(1, 1), content(&["a"])).await.unwrap(),
            Outcome::Stored(1)
        );
        assert_eq!(
            s.write(id(2, 1), content(&["b"])).await.unwrap(),
            Outcome::Duplicate
        );
        assert_eq!(
            s.write(id(1, 1), content(&["a"])).await.unwrap(),
            Outcome::Duplicate
        );
        // Another epoch of the same agent (a reinstalled agent) is a different batch.
        let other = BatchId {
            epoch: 8,
            ..id(1, 1)
        };
        assert_eq!(
            s.write(other, content(&["c"])).await.unwrap(),
            Outcome::Stored(1)
        );
        s.close();
        assert_eq!(count(&path), 3);
        // The identity survives a restart.
        let mut s = HotStore::open(&path, 1000).unwrap();
        assert_eq!(
            s.write(id(2, 1), content(&["b"])).await.unwrap(),
            Outcome::Duplicate
        );
        // Batches the agent dropped (floor moved past them) do not hold the mark back.
        assert_eq!(
            s.write(id(10, 10), content(&["j"])).await.unwrap(),
            Outcome::Stored(1)
        );
        assert_eq!(
            s.write(id(5, 10), content(&["e"])).await.unwrap(),
            Outcome::Duplicate
        );
        s.close();
        let seen: i64 = open_reader(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM batch_seen", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 0);
    }

    #[tokio::test]
    async fn rows_read_back_newest_first_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hot.db");
        let mut s = HotStore::open(&path, 1000).unwrap();
        let lines: Vec<String> = (0..5000).map(|i| format!("l{i}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        s.write(id(1, 1), content(&refs)).await.unwrap();
        s.close();
        let conn = open_reader(&path).unwrap();
        let streams = load_streams(&conn).unwrap();
        assert_eq!(streams.len(), 1);
        let mut got = Vec::new();
        scan_rows(&conn, &[streams[0].0], 0, i64::MAX, true, None, |r| {
            got.push(r.ts);
            true
        })
        .unwrap();
        assert_eq!(got.len(), 5000);
        assert!(got.windows(2).all(|w| w[0] > w[1]));
    }
}
