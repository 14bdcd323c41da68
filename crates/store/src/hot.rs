//! The hot tier: SQLite (WAL), one writer thread with group commit, lines kept in
//! time partitions.
//!
//! Lines go to one table per partition of event time (`logs_p<start seconds>`, an hour
//! by default), so moving or deleting a partition is a `DROP TABLE`, not millions of row
//! deletes. A partition keeps a batch's lines as compressed sections, one per stream,
//! not one SQLite row per line (see [`crate::hot_block`]). Row ids come from one counter across partitions (kept in `meta`), so they
//! order every line ever stored and `tail` can follow them. The same database holds the segment catalog (see
//! [`crate::catalog`]), so a compaction's "segment active, partition gone" is one
//! transaction.
//!
//! Batches from all connections queue to the writer, which commits as many as are
//! waiting (up to a row budget) in one transaction. If a batch fails, the transaction
//! is rolled back and the group stored again with each batch in its own savepoint, so
//! that one bad batch does not fail the others (a savepoint for every batch of every
//! group would copy each page the batch touches again). A batch's identity
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
    /// The database's directory cannot be made.
    #[error("hot store directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The writer thread cannot be started.
    #[error("cannot start the hot store writer: {0}")]
    Thread(#[source] std::io::Error),
    /// The group commit this batch was part of failed (and was rolled back); every
    /// batch in the group gets the same error.
    #[error("hot store commit failed ({path}): {source}")]
    Commit {
        path: PathBuf,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// The database file exists but was made by an incompatible version.
    #[error("database {path} has schema version {found}, this build needs {want}")]
    Schema {
        path: PathBuf,
        found: i64,
        want: i64,
    },
}

const SCHEMA_VERSION: i64 = 3;
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS streams (
    id      INTEGER PRIMARY KEY,
    labels  TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS meta (
    key     TEXT PRIMARY KEY,
    value   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    name    TEXT PRIMARY KEY,
    start   INTEGER NOT NULL,
    end     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS segments (
    id           INTEGER PRIMARY KEY,
    state        TEXT NOT NULL,
    tier         TEXT NOT NULL,
    name         TEXT NOT NULL UNIQUE,
    min_ts       INTEGER NOT NULL,
    max_ts       INTEGER NOT NULL,
    rows         INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    raw_bytes    INTEGER NOT NULL,
    levels       INTEGER NOT NULL,
    checksum     INTEGER NOT NULL,
    content_hash INTEGER NOT NULL,
    bloom        BLOB,
    rg_blooms    BLOB,
    source       TEXT NOT NULL,
    created      INTEGER NOT NULL,
    updated      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS segment_streams (
    segment_id     INTEGER NOT NULL,
    stream_id      INTEGER NOT NULL,
    file_stream_id INTEGER NOT NULL,
    min_ts         INTEGER NOT NULL,
    max_ts         INTEGER NOT NULL,
    rows           INTEGER NOT NULL,
    PRIMARY KEY (segment_id, stream_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS segment_streams_by_stream ON segment_streams(stream_id, max_ts);
CREATE TABLE IF NOT EXISTS erasures (
    id        INTEGER PRIMARY KEY,
    query     TEXT NOT NULL,
    start     INTEGER NOT NULL,
    end       INTEGER NOT NULL,
    state     TEXT NOT NULL,
    lines     INTEGER NOT NULL DEFAULT 0,
    segments  INTEGER NOT NULL DEFAULT 0,
    created   INTEGER NOT NULL,
    finished  INTEGER
);
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
    /// `None` for anomaly events sent ahead of their batch and lines pushed through the
    /// Loki API: stored without identity.
    id: Option<BatchId>,
    /// Boxed: a batch's content is large beside a job, and requests queue by value.
    content: Box<BatchContent>,
    /// The content's lines, encoded by the caller for the writer to store.
    prepared: super::hot_block::Prepared,
    reply: oneshot::Sender<Result<Outcome, Error>>,
}

/// Work the lifecycle runs on the writer's connection, in its own transaction.
pub type JobFn = Box<dyn FnOnce(&Connection) -> Result<(), rusqlite::Error> + Send>;

struct Job {
    f: JobFn,
    reply: oneshot::Sender<Result<(), Error>>,
    /// Run outside a transaction (a checkpoint cannot run inside one).
    plain: bool,
}

enum Req {
    Write(WriteReq),
    Job(Job),
}

/// What one group commit stored: the streams that got lines, and whether anomaly
/// events came with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    pub streams: Vec<i64>,
    pub anomalies: bool,
}

/// Called by the writer after each successful commit (it must not block).
pub type CommitHook = Box<dyn Fn(Committed) + Send + Sync>;

/// Handle to the hot store.
pub struct HotStore {
    path: PathBuf,
    tx: Option<mpsc::Sender<Req>>,
    writer: Option<std::thread::JoinHandle<()>>,
    index: super::hot_index::HotIndex,
    hook: Arc<std::sync::OnceLock<CommitHook>>,
    partition_ns: i64,
}

/// Default partition length: an hour of event time.
pub const DEFAULT_PARTITION_NS: i64 = 3_600_000_000_000;

/// One hot partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    /// `[start, end)` of event time the partition takes.
    pub start: i64,
    pub end: i64,
}

/// The table name of the partition starting at `start` ns.
pub fn partition_name(start: i64) -> String {
    let secs = start.div_euclid(1_000_000_000);
    if secs < 0 {
        format!("logs_pn{}", -secs)
    } else {
        format!("logs_p{secs}")
    }
}

/// Every hot partition, oldest first.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn partitions(conn: &Connection) -> Result<Vec<Partition>, rusqlite::Error> {
    let mut stmt =
        conn.prepare_cached("SELECT name, start, end FROM partitions ORDER BY start, name")?;
    let rows = stmt.query_map([], |r| {
        Ok(Partition {
            name: r.get(0)?,
            start: r.get(1)?,
            end: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Creates the partition `[start, end)` if it does not exist (inside the caller's
/// transaction).
fn create_partition(conn: &Connection, start: i64, end: i64) -> Result<String, rusqlite::Error> {
    let name = partition_name(start);
    super::hot_block::create_table(conn, &name)?;
    conn.execute(
        "INSERT OR IGNORE INTO partitions(name, start, end) VALUES (?1, ?2, ?3)",
        params![name, start, end],
    )?;
    Ok(name)
}

/// The streams some of whose lines an agent counted and did not ship (sampled, or
/// shipped as aggregates only): only their pre-aggregates count every line. For the
/// other streams the stored lines, and so the per-second counts, are the whole truth.
/// Made once, from the aggregates already stored, for databases older than it.
fn create_partial(conn: &Connection) -> Result<(), rusqlite::Error> {
    let exists: bool = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE name = 'aggregate_partial' AND type = 'table'")?
        .exists([])?;
    if exists {
        return Ok(());
    }
    conn.execute_batch(
        "CREATE TABLE aggregate_partial (stream_id INTEGER PRIMARY KEY);
         INSERT OR IGNORE INTO aggregate_partial
           SELECT DISTINCT stream_id FROM aggregates WHERE shipped < count;",
    )
}

/// Brings a schema-1 database (one `logs` table) to schema 2: the table becomes a
/// partition covering its rows' time range.
fn migrate_v1(conn: &Connection) -> Result<(), rusqlite::Error> {
    let is_table: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'logs' AND type = 'table'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    if !is_table {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE; ALTER TABLE logs RENAME TO logs_legacy;")?;
    let (lo, hi): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(ts), max(ts) FROM logs_legacy", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    conn.execute(
        "INSERT OR REPLACE INTO partitions(name, start, end) VALUES ('logs_legacy', ?1, ?2)",
        params![lo.unwrap_or(0), hi.map_or(0, |h| h.saturating_add(1))],
    )?;
    let next: i64 = conn.query_row(
        "SELECT coalesce(max(id), 0) + 1 FROM logs_legacy",
        [],
        |r| r.get(0),
    )?;
    conn.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('next_row_id', ?1)",
        [next],
    )?;
    conn.execute_batch("COMMIT")
}

/// Brings schema-2 partitions (one SQLite row per line) to sections
/// ([`crate::hot_block`]), a partition at a time, each in its own transaction: rows are
/// read in id order, 65,536 at a time, and each chunk's rows of one stream become one
/// section.
fn migrate_v2(conn: &Connection) -> Result<(), rusqlite::Error> {
    for p in partitions(conn)? {
        let old: bool = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{}') WHERE name = 'line'",
                p.name
            ))?
            .exists([])?;
        if !old {
            continue;
        }
        let rows_table = format!("{}_rows", p.name);
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; ALTER TABLE \"{}\" RENAME TO \"{rows_table}\";",
            p.name
        ))?;
        let res = (|| {
            super::hot_block::create_table(conn, &p.name)?;
            let mut after = i64::MIN;
            loop {
                let chunk: Vec<crate::segment::SegmentRow> = conn
                    .prepare(&format!(
                        "SELECT id, stream_id, ts, observed, level, template_id, flags, line, meta
                         FROM \"{rows_table}\" WHERE id > ?1 ORDER BY id LIMIT 65536"
                    ))?
                    .query_map([after], |r| {
                        Ok(crate::segment::SegmentRow {
                            id: r.get(0)?,
                            stream_id: r.get(1)?,
                            ts: r.get(2)?,
                            observed: r.get(3)?,
                            level: Level::from_u8(r.get::<_, u8>(4)?).unwrap_or_default(),
                            template_id: r.get::<_, i64>(5)? as u64,
                            flags: r.get(6)?,
                            line: r.get(7)?,
                            metadata: parse_metadata_json(r.get_ref(8)?.as_str_or_null()?),
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                let Some(last) = chunk.last() else { break };
                after = last.id;
                let mut by_stream: HashMap<i64, Vec<crate::segment::SegmentRow>> = HashMap::new();
                for r in chunk {
                    by_stream.entry(r.stream_id).or_default().push(r);
                }
                for (stream_id, mut rows) in by_stream {
                    let id = rows.iter().map(|r| r.id).min().unwrap_or(0);
                    let (data, (last_id, n, min_ts, max_ts, bytes)) =
                        super::hot_block::encode_rows(id, &mut rows);
                    super::hot_block::insert(
                        conn,
                        &p.name,
                        &super::hot_block::Meta {
                            id,
                            last_id,
                            stream_id,
                            rows: n,
                            min_ts,
                            max_ts,
                            bytes,
                        },
                        &data,
                    )?;
                }
            }
            conn.execute_batch(&format!("DROP TABLE \"{rows_table}\""))
        })();
        match res {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(())
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
    // Before WAL mode writes the first page: only a new file can take it without a
    // VACUUM.
    space::new_file(&conn).map_err(sqlite(path))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite(path))?;
    // FULL: an acknowledged batch survives power loss, not only a process crash.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite(path))?;
    conn.pragma_update(None, "busy_timeout", 5000)
        .map_err(sqlite(path))?;
    conn.pragma_update(None, "cache_size", -65536)
        .map_err(sqlite(path))?;
    // Savepoints' sub-journals (one per batch when a failed group is stored again
    // batch by batch) in memory, not in a temporary file written page by page.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(sqlite(path))?;
    Ok(conn)
}

/// How often the checkpointer copies the log into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// Log pages past which the writer checkpoints itself (when the checkpointer falls
/// behind): 64 MiB of 4 KiB pages.
const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

/// Copies the whole log into the database and empties it, retrying for up to two
/// seconds while the checkpointer thread holds the checkpoint (SQLite then answers
/// "busy" without waiting).
fn checkpoint_truncate(conn: &Connection) -> Result<(), rusqlite::Error> {
    for _ in 0..100 {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Copies the write-ahead log into the database from its own thread and connection
/// (passive: never waiting for the writer), so that the writer's commits do not pay
/// for it, until `stop` is set.
fn checkpointer(path: PathBuf, stop: Arc<std::sync::atomic::AtomicBool>) {
    let conn = match Connection::open(&path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "hot store checkpointer cannot open the database; the writer checkpoints");
            return;
        }
    };
    let _ = conn.pragma_update(None, "busy_timeout", 1000);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(CHECKPOINT_EVERY);
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "hot store checkpoint skipped");
        }
    }
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
    // Readers map the file: a hot section's data spans many overflow pages, each a
    // system call and a copy through the page cache without the map.
    conn.pragma_update(None, "mmap_size", READER_MMAP_BYTES)
        .map_err(sqlite(path))?;
    Ok(conn)
}

/// Reader connections kept between queries, at most `max` idle: a kept connection
/// keeps its page cache and its map of the file, which a new one reads in again.
pub struct ReaderPool {
    path: PathBuf,
    idle: std::sync::Mutex<Vec<Connection>>,
    max: usize,
}

impl ReaderPool {
    /// A pool of readers of `path`, keeping at most `max` idle.
    pub fn new(path: &Path, max: usize) -> ReaderPool {
        ReaderPool {
            path: path.to_owned(),
            idle: std::sync::Mutex::new(Vec::new()),
            max,
        }
    }

    /// An idle reader, or a new one.
    ///
    /// # Errors
    /// As [`open_reader`].
    pub fn get(&self) -> Result<Connection, Error> {
        let kept = self.lock().pop();
        self.gauge();
        match kept {
            Some(c) => Ok(c),
            None => open_reader(&self.path),
        }
    }

    /// Takes `conn` back when it is outside any transaction and the pool has room.
    pub fn put(&self, conn: Connection) {
        if conn.is_autocommit() {
            let mut idle = self.lock();
            if idle.len() < self.max {
                idle.push(conn);
            }
        }
        self.gauge();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gauge(&self) {
        metrics::gauge!("heimdall_aggregator_query_readers_idle").set(self.lock().len() as f64);
    }
}

/// How much of the hot database a reader maps (address space, not memory; SQLite
/// caps it at its own build limit).
const READER_MMAP_BYTES: i64 = 1 << 36;

impl HotStore {
    /// Opens (creating if needed) the database and starts the writer thread.
    ///
    /// # Errors
    /// [`Error::Sqlite`] when the file cannot be opened or is corrupt, [`Error::Schema`].
    pub fn open(path: &Path, max_group_rows: usize) -> Result<HotStore, Error> {
        HotStore::open_with(path, max_group_rows, DEFAULT_PARTITION_NS)
    }

    /// As [`HotStore::open`], with partitions of `partition_ns` of event time.
    ///
    /// # Errors
    /// As [`HotStore::open`].
    pub fn open_with(
        path: &Path,
        max_group_rows: usize,
        partition_ns: i64,
    ) -> Result<HotStore, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = open_rw(path)?;
        space::prepare(&conn, path)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sqlite(path))?;
        if !(0..=SCHEMA_VERSION).contains(&version) {
            return Err(Error::Schema {
                path: path.to_owned(),
                found: version,
                want: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(SCHEMA).map_err(sqlite(path))?;
        migrate_v1(&conn).map_err(sqlite(path))?;
        super::volume::create(&conn).map_err(sqlite(path))?;
        create_partial(&conn).map_err(sqlite(path))?;
        super::templates::create(&conn).map_err(sqlite(path))?;
        // Anomaly events stored before ends existed get the columns (NULL: not ended).
        let has_ended: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('anomalies') WHERE name = 'ended'")
            .and_then(|mut s| s.exists([]))
            .map_err(sqlite(path))?;
        if !has_ended {
            conn.execute_batch(
                "ALTER TABLE anomalies ADD COLUMN ended INTEGER;
                 ALTER TABLE anomalies ADD COLUMN ended_observed REAL;",
            )
            .map_err(sqlite(path))?;
        }
        conn.execute_batch("CREATE INDEX IF NOT EXISTS anomalies_id ON anomalies(id)")
            .map_err(sqlite(path))?;
        // Catalogs made before row-group filters existed get the column.
        let has_rg: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('segments') WHERE name = 'rg_blooms'")
            .and_then(|mut s| s.exists([]))
            .map_err(sqlite(path))?;
        if !has_rg {
            conn.execute_batch("ALTER TABLE segments ADD COLUMN rg_blooms BLOB")
                .map_err(sqlite(path))?;
        }
        // Partitions made before structured metadata get its column (NULL: none).
        for p in partitions(&conn).map_err(sqlite(path))? {
            let column = |c: &str| {
                conn.prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{}') WHERE name = '{c}'",
                    p.name
                ))
                .and_then(|mut s| s.exists([]))
                .map_err(sqlite(path))
            };
            if column("line")? && !column("meta")? {
                conn.execute_batch(&format!("ALTER TABLE \"{}\" ADD COLUMN meta TEXT", p.name))
                    .map_err(sqlite(path))?;
            }
        }
        migrate_v2(&conn).map_err(sqlite(path))?;
        // Partitions made before the sections' covering index get it.
        for p in partitions(&conn).map_err(sqlite(path))? {
            super::hot_block::create_table(&conn, &p.name).map_err(sqlite(path))?;
        }
        // Lines live in partition tables only (a view over them would hit SQLite's
        // limit of 500 terms in a compound SELECT once there are many hours).
        conn.execute_batch("DROP VIEW IF EXISTS logs")
            .map_err(sqlite(path))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite(path))?;
        // No `PRAGMA quick_check` here: it reads every page of every table, which on a
        // large, fragmented database took minutes before the aggregator could listen.
        // Reading the schema and the id counter catches a file that is not a database
        // or has a damaged header; damage deeper in a table surfaces as SQLITE_CORRUPT
        // on the statement that meets it (logged, counted, and the batch is not acked).
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .and_then(|_| {
            conn.query_row(
                "SELECT count(*) FROM meta WHERE key = 'next_row_id'",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .map_err(sqlite(path))?;
        let (tx, rx) = mpsc::channel(1024);
        let p = path.to_owned();
        let index = super::hot_index::HotIndex::default();
        let writer_index = index.clone();
        let hook: Arc<std::sync::OnceLock<CommitHook>> = Arc::default();
        let writer_hook = hook.clone();
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
            .map_err(sqlite(path))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checkpoint_stop = stop.clone();
        let checkpoint_path = path.to_owned();
        std::thread::Builder::new()
            .name("hot-store-ckpt".into())
            .spawn(move || checkpointer(checkpoint_path, checkpoint_stop))
            .map_err(Error::Thread)?;
        let writer = std::thread::Builder::new()
            .name("hot-store-writer".into())
            .spawn(move || {
                match Writer::new(conn, p, max_group_rows, partition_ns, writer_index) {
                    Ok(mut w) => {
                        w.hook = writer_hook;
                        w.run(rx);
                    }
                    Err(e) => tracing::error!(error = %e, "hot store writer cannot start"),
                }
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            })
            .map_err(Error::Thread)?;
        Ok(HotStore {
            path: path.to_owned(),
            tx: Some(tx),
            writer: Some(writer),
            index,
            hook,
            partition_ns: partition_ns.max(1_000_000_000),
        })
    }

    /// Sets the function told about every commit (once; later calls are ignored).
    pub fn on_commit(&self, hook: CommitHook) {
        let _ = self.hook.set(hook);
    }

    /// The token index of hot rows.
    pub fn index(&self) -> &super::hot_index::HotIndex {
        &self.index
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encodes a batch's lines for the writer ([`crate::hot_block::prepare`]): on a
    /// blocking thread for a large batch, so that encoding, compressing and indexing
    /// do not hold up the async workers reading other connections.
    async fn prepare(
        &self,
        content: BatchContent,
    ) -> Result<(BatchContent, super::hot_block::Prepared), Error> {
        let ns = self.partition_ns;
        if content.records.len() < 256 {
            let p = super::hot_block::prepare(&content, ns);
            return Ok((content, p));
        }
        tokio::task::spawn_blocking(move || {
            let p = super::hot_block::prepare(&content, ns);
            (content, p)
        })
        .await
        .map_err(|_| Error::WriterGone)
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
        let (content, prepared) = self.prepare(content).await?;
        tx.send(Req::Write(WriteReq {
            id: Some(id),
            content: Box::new(content),
            prepared,
            reply,
        }))
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
        let (content, prepared) = self.prepare(content).await?;
        tx.send(Req::Write(WriteReq {
            id: None,
            content: Box::new(content),
            prepared,
            reply,
        }))
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
        tx.send(Req::Write(WriteReq {
            id: None,
            content: Box::new(BatchContent {
                anomalies: events,
                ..Default::default()
            }),
            prepared: super::hot_block::Prepared::default(),
            reply,
        }))
        .await
        .map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)??;
        Ok(n)
    }

    /// Runs `f` on the writer's connection in its own transaction, between group
    /// commits, and waits for it (from a thread that is not a tokio worker).
    ///
    /// # Errors
    /// [`Error::WriterGone`], or [`Error::Sqlite`] when `f` failed (the transaction was
    /// rolled back).
    pub fn job_blocking(&self, f: JobFn) -> Result<(), Error> {
        let tx = self.tx.as_ref().ok_or(Error::WriterGone)?;
        let (reply, rx) = oneshot::channel();
        tx.blocking_send(Req::Job(Job {
            f,
            reply,
            plain: false,
        }))
        .map_err(|_| Error::WriterGone)?;
        rx.blocking_recv().map_err(|_| Error::WriterGone)?
    }

    /// Checkpoints the write-ahead log into the database file and truncates it, on the
    /// writer thread between batches: the file then shows the size the database has
    /// (after [`space::release`], smaller).
    ///
    /// # Errors
    /// [`Error::WriterGone`], [`Error::Sqlite`].
    pub fn checkpoint_blocking(&self) -> Result<(), Error> {
        let tx = self.tx.as_ref().ok_or(Error::WriterGone)?;
        let (reply, rx) = oneshot::channel();
        tx.blocking_send(Req::Job(Job {
            f: Box::new(checkpoint_truncate),
            reply,
            plain: true,
        }))
        .map_err(|_| Error::WriterGone)?;
        rx.blocking_recv().map_err(|_| Error::WriterGone)?
    }

    /// [`HotStore::job_blocking`] for a job that answers with a value.
    ///
    /// # Errors
    /// As [`HotStore::job_blocking`].
    pub fn job_blocking_value<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.job_blocking(Box::new(move |c| {
            let _ = tx.send(f(c)?);
            Ok(())
        }))?;
        rx.blocking_recv().map_err(|_| Error::WriterGone)
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
    partition_ns: i64,
    /// Partition tables by their start.
    parts: HashMap<i64, String>,
    /// Partitions this process made (the index covers them whole).
    made: std::collections::HashSet<String>,
    next_id: i64,
    index: super::hot_index::HotIndex,
    hook: Arc<std::sync::OnceLock<CommitHook>>,
    /// What the current group stored, for the hook.
    touched: Committed,
    /// Per-second counts of the batch being stored.
    volume: super::volume::Tally,
    /// Per-second counts of the group's batches stored so far, written once before the
    /// group commits (a key written once per group, not once per batch).
    group_volume: super::volume::Tally,
    /// The agents' aggregates of the batch being stored, and of the group's batches
    /// stored so far: written once before the group commits, summed by key.
    aggs: AggTally,
    group_aggs: AggTally,
}

/// Agents' aggregates summed by (stream, window start, level, template) before they are
/// written: an agent's batches repeat a window's keys, and a row upserted once per
/// group instead of once per batch saves most of the writes.
#[derive(Default)]
struct AggTally {
    rows: crate::fast_hash::FastMap<(i64, i64, u8, i64), AggSum>,
    /// Streams with aggregates that were not all shipped as lines.
    partial: std::collections::BTreeSet<i64>,
}

#[derive(Clone, Copy)]
struct AggSum {
    window_secs: u32,
    count: u64,
    bytes: u64,
    shipped: u64,
}

impl AggTally {
    fn add(&mut self, stream_id: i64, a: &heimdall_common::record::Aggregate) {
        if a.shipped < a.count {
            self.partial.insert(stream_id);
        }
        let key = (stream_id, a.start_ns, a.level as u8, a.template_id as i64);
        let e = self.rows.entry(key).or_insert(AggSum {
            window_secs: a.window_secs,
            count: 0,
            bytes: 0,
            shipped: 0,
        });
        e.count += a.count;
        e.bytes += a.bytes;
        e.shipped += a.shipped;
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.partial.clear();
    }

    /// Moves `other`'s sums into this one, leaving it empty.
    fn absorb(&mut self, other: &mut AggTally) {
        for (k, v) in other.rows.drain() {
            match self.rows.entry(k) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(v);
                }
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let e = e.get_mut();
                    e.count += v.count;
                    e.bytes += v.bytes;
                    e.shipped += v.shipped;
                }
            }
        }
        self.partial.append(&mut other.partial);
    }

    /// Adds the sums into the table (inside the caller's transaction) and clears.
    fn write(&mut self, conn: &Connection) -> Result<(), rusqlite::Error> {
        if !self.rows.is_empty() {
            let mut ins = conn.prepare_cached(
                "INSERT INTO aggregates(stream_id, start, window_secs, level, template_id, count, bytes, shipped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(stream_id, start, level, template_id) DO UPDATE SET
                   count = count + excluded.count, bytes = bytes + excluded.bytes,
                   shipped = shipped + excluded.shipped",
            )?;
            // In key order, so the b-tree is walked forwards instead of at random.
            let mut order: Vec<_> = self.rows.drain().collect();
            order.sort_unstable_by_key(|(k, _)| *k);
            for ((stream, start, level, template), a) in order {
                ins.execute(params![
                    stream,
                    start,
                    a.window_secs,
                    level,
                    template,
                    a.count as i64,
                    a.bytes as i64,
                    a.shipped as i64,
                ])?;
            }
        }
        if !self.partial.is_empty() {
            let mut partial = conn
                .prepare_cached("INSERT OR IGNORE INTO aggregate_partial(stream_id) VALUES (?1)")?;
            for s in std::mem::take(&mut self.partial) {
                partial.execute([s])?;
            }
        }
        Ok(())
    }
}

/// Most stream ids cached by the writer; the cache is cleared when it grows past this.
const STREAM_CACHE: usize = 10_000;

impl Writer {
    fn new(
        conn: Connection,
        path: PathBuf,
        max_group_rows: usize,
        partition_ns: i64,
        index: super::hot_index::HotIndex,
    ) -> Result<Writer, rusqlite::Error> {
        let mut w = Writer {
            conn,
            path,
            max_group_rows,
            streams: HashMap::new(),
            partition_ns: partition_ns.max(1_000_000_000),
            parts: HashMap::new(),
            made: std::collections::HashSet::new(),
            next_id: 1,
            index,
            hook: Arc::default(),
            touched: Committed::default(),
            volume: super::volume::Tally::default(),
            group_volume: super::volume::Tally::default(),
            aggs: AggTally::default(),
            group_aggs: AggTally::default(),
        };
        w.reload()?;
        Ok(w)
    }

    /// Reads the partition map and the id counter again (after a rollback or a job).
    fn reload(&mut self) -> Result<(), rusqlite::Error> {
        self.parts = partitions(&self.conn)?
            .into_iter()
            .filter(|p| p.name != "logs_legacy")
            .map(|p| (p.start, p.name))
            .collect();
        let stored: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'next_row_id'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let mut max = 0i64;
        for name in self.parts.values() {
            max = max.max(super::hot_block::max_id(&self.conn, name)?);
        }
        self.next_id = stored.unwrap_or(1).max(max + 1);
        let live: std::collections::HashSet<String> = self.parts.values().cloned().collect();
        self.made.retain(|m| live.contains(m));
        self.index.retain(&live);
        Ok(())
    }

    fn run(mut self, mut rx: mpsc::Receiver<Req>) {
        let mut pending: Option<Req> = None;
        loop {
            let first = match pending.take() {
                Some(r) => r,
                None => match rx.blocking_recv() {
                    Some(r) => r,
                    None => break,
                },
            };
            let first = match first {
                Req::Job(j) => {
                    self.run_job(j);
                    continue;
                }
                Req::Write(w) => w,
            };
            let mut rows = first.content.records.len();
            let mut group = vec![first];
            while rows < self.max_group_rows {
                match rx.try_recv() {
                    Ok(Req::Write(r)) => {
                        rows += r.content.records.len();
                        group.push(r);
                    }
                    Ok(job) => {
                        pending = Some(job);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
        let _ = checkpoint_truncate(&self.conn);
    }

    fn run_job(&mut self, job: Job) {
        let res = (|| -> Result<(), rusqlite::Error> {
            if job.plain {
                return (job.f)(&self.conn);
            }
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            match (job.f)(&self.conn) {
                Ok(()) => self.conn.execute_batch("COMMIT"),
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        })();
        self.streams.clear();
        if let Err(e) = self.reload() {
            tracing::error!(error = %e, "hot store: cannot reload partitions after a job");
        }
        let _ = job.reply.send(res.map_err(|source| Error::Sqlite {
            path: self.path.clone(),
            source,
        }));
    }

    fn commit_group(&mut self, group: Vec<WriteReq>) {
        let started = Instant::now();
        let n = group.len();
        // First the whole group in one transaction without a savepoint a batch: a
        // savepoint copies every page its batch touches again (the counts, the
        // aggregates, the last page of each table), which took an eighth of the
        // writer's time. If any batch fails, all is rolled back and the group is stored
        // again a savepoint a batch, so one bad batch still costs no other.
        let mut res = self.run_group(&group, false);
        if let Err(e) = &res {
            tracing::debug!(error = %e, batches = n, "hot store: group failed; storing it batch by batch");
            let _ = self.conn.execute_batch("ROLLBACK");
            self.forget_uncommitted();
            res = self.run_group(&group, true);
        }
        let results = match res {
            Ok(r) => r,
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.forget_uncommitted();
                tracing::error!(error = %e, batches = n, "hot store commit failed; agents will resend");
                metrics::counter!("heimdall_aggregator_store_errors_total").increment(1);
                let e = Arc::new(e);
                for req in group {
                    let _ = req.reply.send(Err(Error::Commit {
                        path: self.path.clone(),
                        source: e.clone(),
                    }));
                }
                return;
            }
        };
        let secs = started.elapsed().as_secs_f64();
        let mut touched = std::mem::take(&mut self.touched);
        if let Some(hook) = self.hook.get() {
            touched.streams.sort_unstable();
            touched.streams.dedup();
            if !touched.streams.is_empty() || touched.anomalies {
                hook(touched);
            }
        }
        metrics::histogram!("heimdall_aggregator_store_commit_seconds").record(secs);
        metrics::histogram!("heimdall_aggregator_store_group_batches").record(n as f64);
        for (req, r) in group.into_iter().zip(results) {
            if let Ok(Outcome::Stored(rows)) = &r {
                metrics::counter!("heimdall_aggregator_ingest_rows_total").increment(*rows as u64);
            }
            let _ = req.reply.send(r);
        }
    }

    /// Stores a group in one transaction and commits it. With `savepoints`, each batch
    /// is in its own savepoint and a batch that fails gets its error while the others
    /// are stored; without, the first failure is returned (the caller rolls back).
    fn run_group(
        &mut self,
        group: &[WriteReq],
        savepoints: bool,
    ) -> Result<Vec<Result<Outcome, Error>>, rusqlite::Error> {
        let mut results = Vec::with_capacity(group.len());
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        for req in group {
            if savepoints {
                self.conn.execute_batch("SAVEPOINT batch")?;
            }
            match self.store_one(&req.id, &req.content, &req.prepared) {
                Ok(o) => {
                    if savepoints {
                        self.conn.execute_batch("RELEASE batch")?;
                    }
                    self.group_volume.absorb(&mut self.volume);
                    self.group_aggs.absorb(&mut self.aggs);
                    results.push(Ok(o));
                }
                Err(e) if savepoints => {
                    self.volume.clear();
                    self.aggs.clear();
                    self.conn
                        .execute_batch("ROLLBACK TO batch; RELEASE batch")?;
                    self.streams.clear();
                    // Partitions made in the rolled-back savepoint are gone.
                    self.reload()?;
                    results.push(Err(Error::Sqlite {
                        path: self.path.clone(),
                        source: e,
                    }));
                }
                Err(e) => return Err(e),
            }
        }
        self.group_aggs.write(&self.conn)?;
        self.group_volume.write(&self.conn)?;
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_row_id', ?1)")?
            .execute([self.next_id])?;
        self.conn.execute_batch("COMMIT")?;
        Ok(results)
    }

    /// Forgets what a rolled-back transaction left in memory.
    fn forget_uncommitted(&mut self) {
        self.volume.clear();
        self.group_volume.clear();
        self.aggs.clear();
        self.group_aggs.clear();
        self.touched = Committed::default();
        // Stream ids and partitions made in the failed transaction do not exist.
        self.streams.clear();
        if let Err(e) = self.reload() {
            tracing::error!(error = %e, "hot store: cannot reload partitions");
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
    fn store_records(
        &mut self,
        content: &BatchContent,
        prepared: &super::hot_block::Prepared,
    ) -> Result<Vec<i64>, rusqlite::Error> {
        let mut ids = Vec::with_capacity(content.streams.len());
        for s in &content.streams {
            ids.push(self.stream_id(s)?);
        }
        let mut used = vec![false; ids.len()];
        for r in &content.records {
            if let Some(u) = used.get_mut(r.stream as usize) {
                *u = true;
            }
        }
        self.touched.streams.extend(
            ids.iter()
                .zip(&used)
                .filter(|(_, u)| **u)
                .map(|(id, _)| *id),
        );
        self.touched.anomalies |= !content.anomalies.is_empty();
        // The batch's records get consecutive ids in batch order.
        let base = self.next_id;
        self.next_id += content.records.len() as i64;
        for part in &prepared.parts {
            let table = match self.parts.get(&part.start) {
                Some(t) => t.clone(),
                None => {
                    let t = create_partition(
                        &self.conn,
                        part.start,
                        part.start.saturating_add(self.partition_ns),
                    )?;
                    self.parts.insert(part.start, t.clone());
                    self.made.insert(t.clone());
                    metrics::gauge!("heimdall_aggregator_hot_partitions")
                        .set(self.parts.len() as f64);
                    t
                }
            };
            for sec in &part.sections {
                super::hot_block::insert(
                    &self.conn,
                    &table,
                    &super::hot_block::Meta {
                        id: base + i64::from(sec.first),
                        last_id: base + i64::from(sec.last),
                        stream_id: ids[sec.stream as usize],
                        rows: i64::from(sec.rows),
                        min_ts: sec.min_ts,
                        max_ts: sec.max_ts,
                        bytes: sec.bytes as i64,
                    },
                    &sec.data,
                )?;
            }
            self.index.add_bloom(
                &table,
                self.made.contains(&table),
                (base + i64::from(part.first), base + i64::from(part.last)),
                (part.min_ts, part.max_ts),
                part.rows,
                part.bloom.clone(),
            );
        }
        self.volume
            .absorb_mapped(&prepared.volume, |s| ids[s as usize]);
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
        // After the texts: the more general text names a joined set.
        if !content.templates.is_empty() || !content.aliases.is_empty() {
            let aliases: Vec<(u64, u64)> = content.aliases.iter().map(|a| (a.from, a.to)).collect();
            super::templates::announce(
                &self.conn,
                content.templates.iter().map(|t| (t.id, t.text.as_str())),
                &aliases,
            )?;
        }
        for a in &content.aggregates {
            self.aggs.add(ids[a.stream as usize], a);
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
        // Ends come after their events (a later window, so a later batch); event ids
        // are 64-bit hashes, unique per agent and in practice across agents.
        if !content.anomaly_ends.is_empty() {
            let mut upd = self.conn.prepare_cached(
                "UPDATE anomalies SET ended = ?2, ended_observed = ?3 WHERE id = ?1 AND ended IS NULL",
            )?;
            for e in &content.anomaly_ends {
                if upd.execute(params![e.id as i64, e.time_ns, e.observed])? > 0 {
                    metrics::counter!("heimdall_aggregator_anomaly_ends_total").increment(1);
                }
            }
        }
        Ok(())
    }

    fn store_one(
        &mut self,
        id: &Option<BatchId>,
        content: &BatchContent,
        prepared: &super::hot_block::Prepared,
    ) -> Result<Outcome, rusqlite::Error> {
        let Some(id) = id else {
            let ids = self.store_records(content, prepared)?;
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
        let ids = self.store_records(content, prepared)?;
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

/// One stored row, as read back (also what the cross-tier reader yields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub stream_id: i64,
    pub ts: i64,
    pub level: Level,
    /// Bits from `heimdall_common::record::flags`.
    pub flags: u8,
    pub line: Vec<u8>,
    /// The line's structured metadata (empty for most lines).
    pub metadata: Labels,
}

/// Structured metadata as stored (in the hot tier and the segments' `metadata`
/// column): a JSON object of strings, `{"trace_id":"4bf9…"}`; `None` when there is none,
/// so lines without metadata cost nothing.
pub fn metadata_json(m: &Labels) -> Option<String> {
    if m.is_empty() {
        return None;
    }
    let obj: serde_json::Map<String, serde_json::Value> = m
        .iter()
        .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
        .collect();
    Some(serde_json::Value::Object(obj).to_string())
}

/// Reads [`metadata_json`] back; `None`, or text that is not such an object, is no
/// metadata.
pub fn parse_metadata_json(s: Option<&str>) -> Labels {
    let Some(s) = s else {
        return Labels::default();
    };
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(s) {
        Ok(m) => Labels::new(
            m.into_iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned()))),
        ),
        Err(_) => Labels::default(),
    }
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

/// Lines in the hot tier, across partitions.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn count_rows(conn: &Connection) -> Result<u64, rusqlite::Error> {
    let mut n = 0u64;
    for p in partitions(conn)? {
        n += super::hot_block::totals(conn, &p.name, i64::MAX)?.0 as u64;
    }
    Ok(n)
}

/// Partitions, lines, oldest and newest line time (0 when empty) of the hot tier.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn summary(conn: &Connection) -> Result<(u64, u64, i64, i64), rusqlite::Error> {
    let parts = partitions(conn)?;
    let (mut rows, mut min, mut max) = (0u64, i64::MAX, i64::MIN);
    for p in &parts {
        let (n, _, lo, hi) = super::hot_block::totals(conn, &p.name, i64::MAX)?;
        rows += n as u64;
        min = min.min(lo.unwrap_or(i64::MAX));
        max = max.max(hi.unwrap_or(i64::MIN));
    }
    if rows == 0 {
        (min, max) = (0, 0);
    }
    Ok((parts.len() as u64, rows, min, max))
}

/// The highest row id stored (0 when empty).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn max_row_id(conn: &Connection) -> Result<i64, rusqlite::Error> {
    let mut max = 0i64;
    for p in partitions(conn)? {
        max = max.max(super::hot_block::max_id(conn, &p.name)?);
    }
    Ok(max)
}

impl From<crate::segment::SegmentRow> for Row {
    fn from(r: crate::segment::SegmentRow) -> Row {
        Row {
            id: r.id,
            stream_id: r.stream_id,
            ts: r.ts,
            level: r.level,
            flags: r.flags,
            line: r.line,
            metadata: r.metadata,
        }
    }
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
    if streams.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let mut sections: Vec<(String, super::hot_block::Meta)> = Vec::new();
    for p in partitions(conn)? {
        for m in super::hot_block::list_after(conn, &p.name, streams, after)? {
            sections.push((p.name.clone(), m));
        }
    }
    // A section's rows have ids from its id up: once `limit` rows are in hand and the
    // next section starts above the last of them, nothing later can displace them.
    sections.sort_unstable_by_key(|(_, m)| m.id);
    let mut out: Vec<(i64, Row)> = Vec::new();
    for (table, m) in sections {
        if out.len() >= limit && out.last().is_some_and(|(id, _)| *id < m.id) {
            break;
        }
        for r in super::hot_block::read(conn, &table, m.id, |r| r.id > after)? {
            out.push((r.id, r.into()));
        }
        out.sort_unstable_by_key(|(id, _)| *id);
        out.truncate(limit);
    }
    Ok(out)
}

/// How long a query may wait for the writer's lock before giving up.
pub const READ_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Returning the space of dropped partitions to the file system. SQLite keeps the pages
/// of a dropped table as free pages inside the file, so without this the hot database
/// keeps its peak size forever (10 GB after a 50M-line day that compaction emptied).
///
/// A database is made with `auto_vacuum = INCREMENTAL`, which lets
/// [`space::release`] move pages from the end of the file into free ones and truncate
/// it, a bounded number of pages per call, between the writer's batches. A database
/// made before that is converted (one `VACUUM`, copying only its live pages) when it is
/// opened with at least half of its pages free, when the copy is cheap next to what it
/// returns.
pub mod space {
    use super::{sqlite, Error};
    use rusqlite::Connection;
    use std::path::Path;

    /// `PRAGMA auto_vacuum` of a database that returns freed space.
    const INCREMENTAL: i64 = 2;

    fn pragma(conn: &Connection, name: &str) -> Result<i64, rusqlite::Error> {
        conn.pragma_query_value(None, name, |r| r.get(0))
    }

    /// Makes a new (empty) file return freed space; does nothing to another.
    ///
    /// # Errors
    /// [`rusqlite::Error`].
    pub fn new_file(conn: &Connection) -> Result<(), rusqlite::Error> {
        if pragma(conn, "page_count")? == 0 {
            conn.pragma_update(None, "auto_vacuum", INCREMENTAL)?;
        }
        Ok(())
    }

    /// Sets up a database being opened (see the module's docs).
    ///
    /// # Errors
    /// [`Error::Sqlite`].
    pub fn prepare(conn: &Connection, path: &Path) -> Result<(), Error> {
        let mode = pragma(conn, "auto_vacuum").map_err(sqlite(path))?;
        if mode == INCREMENTAL {
            return Ok(());
        }
        let pages = pragma(conn, "page_count").map_err(sqlite(path))?;
        let free = pragma(conn, "freelist_count").map_err(sqlite(path))?;
        if pages > 0 && free * 2 >= pages {
            let started = std::time::Instant::now();
            conn.pragma_update(None, "auto_vacuum", INCREMENTAL)
                .map_err(sqlite(path))?;
            conn.execute_batch("VACUUM").map_err(sqlite(path))?;
            tracing::info!(
                path = %path.display(),
                freed_bytes = free * pragma(conn, "page_size").unwrap_or(4096),
                seconds = started.elapsed().as_secs_f64(),
                "hot database converted to return the space of dropped partitions"
            );
        } else {
            tracing::info!(
                path = %path.display(),
                "hot database made before freed space was returned: it is converted when opened with half its pages free"
            );
        }
        Ok(())
    }

    /// Returns up to `max_pages` free pages to the file system (truncating the file);
    /// returns how many pages are still free. Does nothing on a database that is not
    /// incremental.
    ///
    /// # Errors
    /// [`rusqlite::Error`].
    pub fn release(conn: &Connection, max_pages: u32) -> Result<u64, rusqlite::Error> {
        if pragma(conn, "auto_vacuum")? != INCREMENTAL {
            return Ok(0);
        }
        let free = pragma(conn, "freelist_count")?;
        if free > 0 {
            // Returns rows while it works; stepping through them runs it.
            let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({max_pages})"))?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
        Ok(pragma(conn, "freelist_count")?.max(0) as u64)
    }

    /// The database's size and its free part, in bytes.
    ///
    /// # Errors
    /// [`rusqlite::Error`].
    pub fn usage(conn: &Connection) -> Result<(u64, u64), rusqlite::Error> {
        let size = pragma(conn, "page_size")?;
        Ok((
            (pragma(conn, "page_count")? * size) as u64,
            (pragma(conn, "freelist_count")? * size) as u64,
        ))
    }
}

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
                    metadata: Default::default(),
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
        count_rows(&open_reader(path).unwrap()).unwrap() as i64
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

    /// Batches queued together are committed as one group; one that fails (here a
    /// trigger refuses its stream) gets its error, and every other batch of the group is
    /// stored with its lines, counts and aggregates, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_failing_batch_costs_no_other_in_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hot.db");
        HotStore::open(&path, 100_000).unwrap().close();
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER poison BEFORE INSERT ON streams WHEN NEW.labels LIKE '%poison%'
                 BEGIN SELECT RAISE(ABORT, 'poisoned stream'); END;",
            )
            .unwrap();
        let s = Arc::new(HotStore::open(&path, 100_000).unwrap());
        let batch = |seq: u64, poison: bool| {
            let mut c = content(&["x"; 10]);
            if poison {
                c.streams[0] = Labels::new([("host", "poison")]);
            }
            c.aggregates = vec![heimdall_common::record::Aggregate {
                stream: 0,
                start_ns: 0,
                window_secs: 10,
                level: Level::Info,
                template_id: 5,
                count: 10 + seq,
                bytes: 100,
                shipped: 10,
            }];
            (id(seq, 1), c)
        };
        // Hold the writer so the batches queue up and are taken as one group.
        let held = s.clone();
        let hold = std::thread::spawn(move || {
            held.job_blocking(Box::new(|_| {
                std::thread::sleep(Duration::from_millis(500));
                Ok(())
            }))
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut tasks = Vec::new();
        for seq in 1..=5 {
            let s = s.clone();
            let (id, c) = batch(seq, seq == 3);
            tasks.push(tokio::spawn(async move { s.write(id, c).await }));
        }
        hold.join().unwrap().unwrap();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        for (i, o) in outcomes.iter().enumerate() {
            if i == 2 {
                assert!(o.is_err(), "the poisoned batch failed: {o:?}");
            } else {
                assert_eq!(o.as_ref().unwrap(), &Outcome::Stored(10));
            }
        }
        // Its identity was not recorded: sent again without the poison, it is stored.
        let (id3, c3) = batch(3, false);
        assert_eq!(s.write(id3, c3).await.unwrap(), Outcome::Stored(10));
        Arc::try_unwrap(s).ok().expect("one owner").close();
        let conn = open_reader(&path).unwrap();
        assert_eq!(count_rows(&conn).unwrap(), 50);
        let (count, bytes, shipped): (i64, i64, i64) = conn
            .query_row(
                "SELECT sum(count), sum(bytes), sum(shipped) FROM aggregates",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((count, bytes, shipped), (65, 500, 50));
        let partial: i64 = conn
            .query_row("SELECT count(*) FROM aggregate_partial", [], |r| r.get(0))
            .unwrap();
        assert_eq!(partial, 1);
        let streams: i64 = conn
            .query_row("SELECT count(*) FROM streams", [], |r| r.get(0))
            .unwrap();
        assert_eq!(streams, 1);
    }

    /// Regression: a backfill spanning more than 500 hours once failed every batch, when
    /// a view united the partitions (SQLite allows 500 terms in a compound SELECT).
    #[tokio::test]
    async fn a_batch_spanning_a_thousand_hours_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hot.db");
        let mut s = HotStore::open(&path, 100_000).unwrap();
        let mut c = content(&vec!["x"; 1000]);
        for (i, r) in c.records.iter_mut().enumerate() {
            r.time_ns = 1_700_000_000_000_000_000 + i as i64 * DEFAULT_PARTITION_NS;
        }
        assert_eq!(s.write(id(1, 1), c).await.unwrap(), Outcome::Stored(1000));
        s.close();
        let conn = open_reader(&path).unwrap();
        assert_eq!(partitions(&conn).unwrap().len(), 1000);
        assert_eq!(count_rows(&conn).unwrap(), 1000);
        // Row ids go on across partitions and restarts.
        let mut s = HotStore::open(&path, 100_000).unwrap();
        s.write(id(2, 1), content(&["y"])).await.unwrap();
        s.close();
        assert_eq!(max_row_id(&open_reader(&path).unwrap()).unwrap(), 1001);
    }

    #[tokio::test]
    async fn batches_overlapping_in_time_read_back_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hot.db");
        let mut s = HotStore::open(&path, 1000).unwrap();
        // Three batches whose times interleave.
        for b in 0..3u64 {
            let lines: Vec<String> = (0..2000).map(|i| format!("b{b} l{i}")).collect();
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let mut c = content(&refs);
            for (i, r) in c.records.iter_mut().enumerate() {
                r.time_ns = 1_000_000_000 + (i as i64 * 3 + b as i64) * 1_000;
            }
            s.write(id(b + 1, 1), c).await.unwrap();
        }
        s.close();
        let conn = open_reader(&path).unwrap();
        let streams = load_streams(&conn).unwrap();
        let parts = partitions(&conn).unwrap();
        assert_eq!(parts.len(), 1);
        let sections =
            crate::hot_block::list(&conn, &parts[0].name, Some(&[streams[0].0]), 0, i64::MAX)
                .unwrap();
        assert_eq!(sections.len(), 3);
        let mut m = crate::hot_block::Merge::new(&parts[0].name, sections, true);
        let mut got = Vec::new();
        while let Some(r) = m.next(&conn, &mut |_| true).unwrap() {
            got.push(r.ts);
        }
        assert_eq!(got.len(), 6000);
        assert!(got.windows(2).all(|w| w[0] > w[1]));
        let tail = rows_after(&conn, &[streams[0].0], 1990, 20).unwrap();
        let ids: Vec<i64> = tail.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (1991..=2010).collect::<Vec<_>>());
        assert_eq!(tail[10].1.line, b"b1 l0");
    }

    /// A database written by the build that kept one row per line opens, and its
    /// lines read back as they were.
    #[test]
    fn a_schema_2_database_is_converted_to_sections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hot.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute_batch(
                "CREATE TABLE logs_p3600 (id INTEGER PRIMARY KEY, stream_id INTEGER NOT NULL, ts INTEGER NOT NULL, observed INTEGER NOT NULL, level INTEGER NOT NULL, template_id INTEGER NOT NULL, flags INTEGER NOT NULL, line BLOB NOT NULL, meta TEXT);
                 INSERT INTO partitions VALUES ('logs_p3600', 3600000000000, 7200000000000);
                 INSERT INTO streams VALUES (1, '[[\"a\",\"1\"]]'), (2, '[[\"a\",\"2\"]]');
                 INSERT INTO meta VALUES ('next_row_id', 4);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
            for (id, stream, line, meta) in [
                (1, 1, "one", None),
                (2, 2, "two", Some(r#"{"trace_id":"x"}"#)),
                (3, 1, "three", None),
            ] {
                c.execute(
                    "INSERT INTO logs_p3600 VALUES (?1, ?2, ?3, ?3, 4, 77, 1, ?4, ?5)",
                    params![id, stream, 3_600_000_000_000i64 + id, line.as_bytes(), meta],
                )
                .unwrap();
            }
        }
        let mut s = HotStore::open(&path, 1000).unwrap();
        s.close();
        let conn = open_reader(&path).unwrap();
        let rows = crate::hot_block::all_rows(&conn, "logs_p3600", i64::MAX).unwrap();
        type Seen<'a> = (i64, i64, &'a [u8], u64, Option<&'a str>);
        let got: Vec<Seen> = rows
            .iter()
            .map(|r| {
                (
                    r.id,
                    r.stream_id,
                    &r.line[..],
                    r.template_id,
                    r.metadata.get("trace_id"),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 1, &b"one"[..], 77, None),
                (2, 2, &b"two"[..], 77, Some("x")),
                (3, 1, &b"three"[..], 77, None),
            ]
        );
        assert_eq!(max_row_id(&conn).unwrap(), 3);
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }
}
