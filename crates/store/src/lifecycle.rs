//! Moves data between tiers and deletes it: hot→warm compaction, warm→cold upload,
//! retention, erasure. One thread runs the steps in turn, every `interval` or when
//! asked ([`LifecycleHandle::trigger`]).
//!
//! Every move is verified before its source is deleted, and each step is safe to kill
//! at any point:
//! - **Compaction** of a hot partition records the segment as `writing`, writes the
//!   Parquet file under a temporary name, fsyncs it, reads every row back and compares
//!   count and content hash, renames it, and then — in one SQLite transaction — makes
//!   the segment `active` and deletes the partition's rows up to the highest row id it
//!   read (rows that arrived meanwhile stay). A restart deletes `writing` segments and
//!   their files: the rows are still in the partition.
//! - **Upload** (see [`crate::cold`]) records `uploading`, copies the file,
//!   reads the object back and compares size and CRC-32C, then marks the segment
//!   `cold` and deletes the local file. A restart turns `uploading` back to warm (the
//!   copy is made again) and removes local files of segments already cold.
//! - **Retention** and **erasure** mark segments `deleting` before removing their files
//!   or objects; a restart finishes the removal.
//!
//! Metrics: `heimdall_aggregator_lifecycle_runs_total{step,outcome}`,
//! `heimdall_aggregator_lifecycle_rows_total{step}`,
//! `heimdall_aggregator_lifecycle_seconds{step}`, per tier
//! `heimdall_aggregator_tier_segments`, `_rows`, `_bytes`, and the hot database's
//! `heimdall_aggregator_hot_db_bytes` and `_free_bytes`.
//!
//! **Space** returns the pages of dropped partitions to the file system (see
//! [`hot::space`]), so the hot database shrinks after compaction and retention.

use super::catalog::{self, Tier};
use super::cold::ColdStore;
use super::filter::GramBuilder;
use super::hot::{self, HotStore};
use super::hot_block;
use super::hot_index::{self, HotIndex};
use super::segment::{SegmentFile, SegmentWriter};
use heimdall_common::tasks::Stage;
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Lifecycle failures (one step fails; the next run tries again).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] hot::Error),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Segment(#[from] super::segment::Error),
    #[error(transparent)]
    Cold(#[from] super::cold::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Rows changed under a compaction (an erasure ran); it is retried.
    #[error("partition {0} changed during compaction")]
    Raced(String),
}

/// Lifecycle settings.
#[derive(Clone, Debug)]
pub struct LifecycleConfig {
    /// Between runs.
    pub interval: Duration,
    /// Segment files.
    pub warm_dir: PathBuf,
    /// A hot partition is compacted once its end is this far in the past.
    pub compact_after: Duration,
    /// Beyond this many hot rows, the oldest partitions are compacted early.
    pub hot_max_rows: u64,
    /// Most rows per segment.
    pub segment_rows: u64,
    /// zstd level of segments.
    pub zstd_level: i32,
    /// Warm segments older than this (by their newest line) go to the cold tier.
    pub upload_after: Option<Duration>,
    /// Data older than this is deleted from every tier.
    pub retention: Option<Duration>,
    /// How long a segment that left the catalog keeps its file: longer than any query
    /// runs (at least [`REAP_GRACE`]).
    pub reap_grace: Duration,
}

/// How long after an hour ends its per-second line counts are rolled up (lines that
/// arrive later are counted beside the roll-up, and rolled up the next time).
pub const VOLUME_ROLL_UP_DELAY: Duration = Duration::from_secs(300);

/// The shortest time a segment that left the catalog keeps its file (see
/// [`LifecycleConfig::reap_grace`]).
pub const REAP_GRACE: Duration = Duration::from_secs(120);

/// Crashes the process at a named point when `HEIMDALL_FAILPOINT` names it: how the
/// crash-safety tests stop the aggregator exactly between two steps of a move. Only
/// in builds with the `failpoints` feature (the test suite's); a no-op otherwise.
#[cfg(feature = "failpoints")]
pub fn failpoint(name: &str) {
    if std::env::var("HEIMDALL_FAILPOINT").is_ok_and(|f| f == name) {
        tracing::error!(failpoint = name, "failpoint reached: aborting");
        std::process::abort();
    }
}

/// Without the `failpoints` feature, failpoints compile to nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn failpoint(_name: &str) {}

/// One run of one lifecycle step, as the storage page shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Run {
    pub step: &'static str,
    /// When it started, ns since the epoch.
    pub started_ns: i64,
    pub seconds: f64,
    /// Rows it moved or deleted.
    pub rows: u64,
    /// Why it failed; `None` when it went well.
    pub error: Option<String>,
}

/// The lifecycle's recent runs: the last run of every step, and the last
/// [`RunLog::KEEP`] runs that moved rows or failed (runs with nothing to do are not
/// kept, so an hour of idle runs does not push out the compaction of the morning).
#[derive(Default)]
pub struct RunLog {
    inner: std::sync::Mutex<(HashMap<&'static str, Run>, std::collections::VecDeque<Run>)>,
}

impl RunLog {
    /// Runs that did something, kept at most.
    pub const KEEP: usize = 100;

    fn push(&self, run: Run) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if run.rows > 0 || run.error.is_some() {
            if g.1.len() >= Self::KEEP {
                g.1.pop_front();
            }
            g.1.push_back(run.clone());
        }
        g.0.insert(run.step, run);
    }

    /// The last run of each step (by step name) and the recent runs that did
    /// something, newest first.
    pub fn snapshot(&self) -> (Vec<Run>, Vec<Run>) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut last: Vec<Run> = g.0.values().cloned().collect();
        last.sort_by_key(|r| r.step);
        (last, g.1.iter().rev().cloned().collect())
    }
}

/// Asks the running lifecycle for an immediate run (for the API), and reads its recent
/// runs and settings.
#[derive(Clone)]
pub struct LifecycleHandle {
    wake: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
    runs: Arc<RunLog>,
    cfg: LifecycleConfig,
}

impl LifecycleHandle {
    /// The settings the lifecycle runs with.
    pub fn config(&self) -> &LifecycleConfig {
        &self.cfg
    }

    /// See [`RunLog::snapshot`].
    pub fn runs(&self) -> (Vec<Run>, Vec<Run>) {
        self.runs.snapshot()
    }

    /// Runs every step now; returns when they are done (at once when the lifecycle
    /// has stopped).
    pub async fn run_now(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.wake.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The lifecycle.
pub struct Lifecycle {
    pub store: Arc<HotStore>,
    pub db_path: PathBuf,
    pub cfg: LifecycleConfig,
    pub cold: Option<Arc<ColdStore>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn fsync_dir(dir: &Path) -> Result<(), Error> {
    heimdall_common::fs::sync_dir(dir).map_err(io(dir))
}

fn record(step: &'static str, started: Instant, res: &Result<u64, Error>, log: Option<&RunLog>) {
    if let Some(log) = log {
        let seconds = started.elapsed().as_secs_f64();
        log.push(Run {
            step,
            started_ns: heimdall_common::record::now_ns() - (seconds * 1e9) as i64,
            seconds,
            rows: *res.as_ref().unwrap_or(&0),
            error: res.as_ref().err().map(ToString::to_string),
        });
    }
    let outcome = if res.is_ok() { "ok" } else { "error" };
    metrics::counter!("heimdall_aggregator_lifecycle_runs_total", "step" => step, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("heimdall_aggregator_lifecycle_seconds", "step" => step)
        .record(started.elapsed().as_secs_f64());
    match res {
        Ok(n) => {
            metrics::counter!("heimdall_aggregator_lifecycle_rows_total", "step" => step)
                .increment(*n);
        }
        Err(e) => {
            tracing::warn!(step, error = %e, "lifecycle step failed; it runs again next time")
        }
    }
}

impl Lifecycle {
    /// Recovers from an interrupted run, then starts the lifecycle thread as part of
    /// `stage` (it finishes the step it is in when the stage stops; each step is safe
    /// to interrupt anyway). Blocks while recovering; call it from a blocking context
    /// within a Tokio runtime, whose timers the thread uses.
    ///
    /// # Errors
    /// When recovery cannot read the catalog or the segment directory, or the thread
    /// cannot start.
    pub fn start(self, stage: &Stage) -> Result<LifecycleHandle, Error> {
        std::fs::create_dir_all(&self.cfg.warm_dir).map_err(io(&self.cfg.warm_dir))?;
        self.recover()?;
        let (wake, mut rx) = tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>(16);
        let rt = tokio::runtime::Handle::current();
        let runs = Arc::new(RunLog::default());
        let handle = LifecycleHandle {
            wake,
            runs: runs.clone(),
            cfg: self.cfg.clone(),
        };
        stage
            .spawn_thread("lifecycle", move |stop| {
                let mut done: Option<tokio::sync::oneshot::Sender<()>> = None;
                while !stop.is_cancelled() {
                    self.run_logged(&stop, Some(&runs));
                    if let Some(d) = done.take() {
                        let _ = d.send(());
                    }
                    let next = rt.block_on(async {
                        tokio::select! {
                            biased;
                            () = stop.cancelled() => None,
                            d = rx.recv() => d.map(Some),
                            () = tokio::time::sleep(self.cfg.interval) => Some(None),
                        }
                    });
                    match next {
                        None => break,
                        Some(d) => done = d,
                    }
                }
            })
            .map_err(|source| Error::Io {
                path: PathBuf::from("lifecycle thread"),
                source,
            })?;
        Ok(handle)
    }

    fn reader(&self) -> Result<Connection, Error> {
        Ok(hot::open_reader(&self.db_path)?)
    }

    /// Finishes or rolls back what a crash interrupted.
    ///
    /// # Errors
    /// [`Error`].
    pub fn recover(&self) -> Result<(), Error> {
        let conn = self.reader()?;
        for s in catalog::in_state(&conn, "writing")? {
            for p in [self.warm_path(&s.name), self.tmp_path(&s.name)] {
                let _ = std::fs::remove_file(&p);
            }
            let id = s.id;
            self.store
                .job_blocking(Box::new(move |c| catalog::remove(c, id)))?;
            tracing::info!(segment = %s.name, "rolled back an interrupted compaction");
        }
        for s in catalog::in_state(&conn, "uploading")? {
            let id = s.id;
            self.store.job_blocking(Box::new(move |c| {
                catalog::set_state(c, id, "active", Tier::Warm)
            }))?;
            tracing::info!(segment = %s.name, "an interrupted upload will run again");
        }
        for s in catalog::in_state(&conn, "deleting")? {
            self.delete_files(&s)?;
            let id = s.id;
            self.store
                .job_blocking(Box::new(move |c| catalog::remove(c, id)))?;
        }
        let known: std::collections::HashSet<String> = catalog::all(&conn)?
            .into_iter()
            .filter(|s| s.tier == Tier::Warm)
            .map(|s| s.name)
            .collect();
        for e in std::fs::read_dir(&self.cfg.warm_dir).map_err(io(&self.cfg.warm_dir))? {
            let e = e.map_err(io(&self.cfg.warm_dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            // Cold segments' local copies and files no catalog entry knows are left by
            // a crash after the catalog moved on.
            if name.ends_with(".tmp") || (name.ends_with(".parquet") && !known.contains(&name)) {
                let _ = std::fs::remove_file(e.path());
                tracing::info!(file = %name, "removed a segment file the catalog does not list");
            }
        }
        Ok(())
    }

    /// Local path of a warm segment.
    pub fn warm_path(&self, name: &str) -> PathBuf {
        self.cfg.warm_dir.join(name)
    }

    fn tmp_path(&self, name: &str) -> PathBuf {
        self.cfg.warm_dir.join(format!("{name}.tmp"))
    }

    fn delete_files(&self, s: &catalog::Segment) -> Result<(), Error> {
        let _ = std::fs::remove_file(self.warm_path(&s.name));
        if s.tier == Tier::Cold {
            if let Some(c) = &self.cold {
                c.delete(&s.name)?;
            }
        }
        Ok(())
    }

    /// Removes the files or objects of segments in `deleting` for longer than `grace`
    /// (queries that began before they left the catalog may still read them until then).
    ///
    /// # Errors
    /// [`Error`].
    pub fn reap(&self, grace: Duration) -> Result<u64, Error> {
        let conn = self.reader()?;
        let cutoff = heimdall_common::record::now_ns() - grace.as_nanos() as i64;
        let mut n = 0;
        for s in catalog::in_state(&conn, "deleting")? {
            if s.updated > cutoff {
                continue;
            }
            self.delete_files(&s)?;
            let id = s.id;
            self.store
                .job_blocking(Box::new(move |c| catalog::remove(c, id)))?;
            n += s.rows;
        }
        Ok(n)
    }

    /// Indexes hot partitions the token index does not cover (after a restart).
    ///
    /// # Errors
    /// [`Error`].
    pub fn index_hot(&self, shutdown: &CancellationToken) -> Result<u64, Error> {
        let conn = self.reader()?;
        let ix = self.store.index();
        let mut rows = 0;
        for p in hot::partitions(&conn)? {
            if shutdown.is_cancelled() {
                break;
            }
            if ix.is_complete(&p.name) {
                continue;
            }
            // Sections in id order, one at a time (a partition can be large), their
            // entries gathered into one filter per block's worth of rows.
            let max_id = hot_block::max_id(&conn, &p.name)?;
            let built = HotIndex::default();
            let mut grams = GramBuilder::largest();
            let (mut ids, mut times, mut n) = ((i64::MAX, i64::MIN), (i64::MAX, i64::MIN), 0);
            let sections = hot_block::list(&conn, &p.name, None, i64::MIN, i64::MAX)?;
            let last = sections.len();
            for (i, m) in sections.into_iter().enumerate() {
                if m.id <= max_id {
                    for r in hot_block::read(&conn, &p.name, m.id, |_| true)? {
                        grams.add_line(&r.line);
                        times = (times.0.min(r.ts), times.1.max(r.ts));
                        n += 1;
                        rows += 1;
                    }
                    ids = (ids.0.min(m.id), ids.1.max(m.last_id));
                }
                if n > 0 && (n >= hot_index::BLOCK_ROWS || i + 1 == last) {
                    built.add_bloom(&p.name, true, ids, times, n, grams.finish());
                    grams.clear();
                    (ids, times, n) = ((i64::MAX, i64::MIN), (i64::MAX, i64::MIN), 0);
                }
            }
            ix.install(&p.name, &built, max_id);
        }
        metrics::gauge!("heimdall_aggregator_hot_index_bytes").set(ix.bytes() as f64);
        Ok(rows)
    }

    /// Runs every step once.
    pub fn run_once(&self, shutdown: &CancellationToken) {
        self.run_logged(shutdown, None);
    }

    fn run_logged(&self, shutdown: &CancellationToken, log: Option<&RunLog>) {
        let t = Instant::now();
        let r = self.reap(self.cfg.reap_grace.max(REAP_GRACE));
        record("reap", t, &r, log);
        let t = Instant::now();
        let r = self.index_hot(shutdown);
        record("index", t, &r, log);
        let t = Instant::now();
        let r = self.erase_pending();
        record("erase", t, &r, log);
        let t = Instant::now();
        let r = self.retention();
        record("retention", t, &r, log);
        let t = Instant::now();
        let r = self.roll_up_volume();
        record("volume", t, &r, log);
        let t = Instant::now();
        let r = self.compact(shutdown);
        record("compact", t, &r, log);
        let t = Instant::now();
        let r = self.release_space(shutdown);
        record("space", t, &r, log);
        if self.cold.is_some() {
            let t = Instant::now();
            let r = self.upload(shutdown);
            record("upload", t, &r, log);
        }
        if let Ok(conn) = self.reader() {
            if let Ok(t) = catalog::totals(&conn) {
                for tier in ["warm", "cold"] {
                    let (n, rows, bytes) = t.get(tier).copied().unwrap_or_default();
                    metrics::gauge!("heimdall_aggregator_tier_segments", "tier" => tier)
                        .set(n as f64);
                    metrics::gauge!("heimdall_aggregator_tier_rows", "tier" => tier)
                        .set(rows as f64);
                    metrics::gauge!("heimdall_aggregator_tier_bytes", "tier" => tier)
                        .set(bytes as f64);
                }
            }
        }
    }

    /// Rolls the per-second line counts of the hours that ended at least
    /// [`VOLUME_ROLL_UP_DELAY`] ago into one row per stream and hour (see
    /// [`crate::volume::roll_up`]), an hour per writer transaction. Returns the minute
    /// rows rolled up.
    ///
    /// # Errors
    /// [`Error`].
    pub fn roll_up_volume(&self) -> Result<u64, Error> {
        let conn = self.reader()?;
        let before = heimdall_common::record::now_ns() - VOLUME_ROLL_UP_DELAY.as_nanos() as i64;
        crate::volume::roll_up(&conn, before, |f| {
            self.store.job_blocking(f).map_err(Error::from)
        })
    }

    /// Compacts every hot partition that is old enough, and the oldest ones while the
    /// hot tier holds more than `hot_max_rows`. Returns the rows moved.
    ///
    /// # Errors
    /// [`Error`].
    pub fn compact(&self, shutdown: &CancellationToken) -> Result<u64, Error> {
        let conn = self.reader()?;
        let parts = hot::partitions(&conn)?;
        let mut counts = Vec::with_capacity(parts.len());
        let mut total = 0u64;
        for p in &parts {
            let n = hot_block::totals(&conn, &p.name, i64::MAX)?.0;
            total += n as u64;
            counts.push(n as u64);
        }
        metrics::gauge!("heimdall_aggregator_tier_rows", "tier" => "hot").set(total as f64);
        let cutoff = heimdall_common::record::now_ns() - self.cfg.compact_after.as_nanos() as i64;
        let mut moved = 0;
        for (p, n) in parts.iter().zip(counts) {
            if shutdown.is_cancelled() {
                break;
            }
            let old = p.end <= cutoff;
            let big = total > self.cfg.hot_max_rows;
            if !old && !big {
                continue;
            }
            let m = self.compact_partition(&conn, p)?;
            moved += m;
            total = total.saturating_sub(n);
        }
        Ok(moved)
    }

    /// Compacts one hot partition now, whatever its age. Returns the rows moved.
    ///
    /// # Errors
    /// [`Error`].
    pub fn compact_named(&self, partition: &str) -> Result<u64, Error> {
        let conn = self.reader()?;
        match hot::partitions(&conn)?
            .into_iter()
            .find(|p| p.name == partition)
        {
            Some(p) => self.compact_partition(&conn, &p),
            None => Ok(0),
        }
    }

    /// Uploads one warm segment to the cold tier now, whatever its age.
    ///
    /// # Errors
    /// [`Error`].
    pub fn upload_named(&self, segment: &str) -> Result<u64, Error> {
        let conn = self.reader()?;
        let Some(cold) = &self.cold else { return Ok(0) };
        let Some(s) = catalog::in_state(&conn, "active")?
            .into_iter()
            .find(|s| s.name == segment && s.tier == Tier::Warm)
        else {
            return Ok(0);
        };
        self.upload_segment(cold, &s)
    }

    fn upload_segment(&self, cold: &ColdStore, s: &catalog::Segment) -> Result<u64, Error> {
        let id = s.id;
        self.store.job_blocking(Box::new(move |c| {
            catalog::set_state(c, id, "uploading", Tier::Warm)
        }))?;
        let local = self.warm_path(&s.name);
        cold.upload(&local, &s.name, s.bytes, s.checksum)?;
        failpoint("upload-copied");
        self.store.job_blocking(Box::new(move |c| {
            catalog::set_state(c, id, "active", Tier::Cold)
        }))?;
        failpoint("upload-committed");
        std::fs::remove_file(&local).map_err(io(&local))?;
        tracing::info!(segment = %s.name, rows = s.rows, "uploaded a segment to the cold tier");
        Ok(s.rows)
    }

    fn compact_partition(&self, conn: &Connection, p: &hot::Partition) -> Result<u64, Error> {
        let name = p.name.clone();
        let max_id = hot_block::max_id(conn, &name)?;
        let n = hot_block::totals(conn, &name, max_id)?.0;
        if n == 0 {
            let part = name.clone();
            self.store
                .job_blocking(Box::new(move |c| drop_if_empty(c, &part).map(|_| ())))?;
            return Ok(0);
        }
        let labels: HashMap<i64, String> = hot::load_streams(conn)?
            .into_iter()
            .map(|(id, l)| (id, hot::labels_key(&l)))
            .collect();
        // Write the partition's rows (up to max_id) in (stream, ts, id) order, cut into
        // segments of at most segment_rows.
        let mut pieces: Vec<(i64, String, super::segment::SegmentInfo)> = Vec::new();
        let mut writer: Option<(i64, String, SegmentWriter)> = None;
        // Stream by stream; each stream's sections merged in (ts, id) order, decoded
        // only as the merge reaches them.
        let streams: Vec<i64> = conn
            .prepare(&format!(
                "SELECT DISTINCT stream_id FROM \"{name}\" WHERE id <= ?1 ORDER BY stream_id"
            ))?
            .query_map([max_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut written = 0u64;
        for stream in streams {
            let sections: Vec<hot_block::Meta> =
                hot_block::list(conn, &name, Some(&[stream]), i64::MIN, i64::MAX)?
                    .into_iter()
                    .filter(|m| m.id <= max_id)
                    .collect();
            let mut merge = hot_block::Merge::new(&name, sections, false);
            while let Some(row) = merge.next(conn, &mut |_| true)? {
                if writer
                    .as_ref()
                    .is_some_and(|w| w.2.rows() >= self.cfg.segment_rows)
                {
                    let (id, seg, w) = writer.take().expect("checked");
                    pieces.push((id, seg.clone(), w.finish()?));
                }
                if writer.is_none() {
                    let seg = format!(
                        "{}-{:016x}.parquet",
                        name.trim_start_matches("logs_"),
                        fastrand::u64(..)
                    );
                    let (src, segname) = (name.clone(), seg.clone());
                    let id = std::sync::Arc::new(std::sync::Mutex::new(0i64));
                    let id2 = id.clone();
                    self.store.job_blocking(Box::new(move |c| {
                        let v = catalog::begin(c, &segname, &src)?;
                        *id2.lock().unwrap_or_else(|p| p.into_inner()) = v;
                        Ok(())
                    }))?;
                    let id = *id.lock().unwrap_or_else(|p| p.into_inner());
                    let w = SegmentWriter::create(
                        &self.tmp_path(&seg),
                        labels.clone(),
                        self.cfg.zstd_level,
                    )?;
                    writer = Some((id, seg, w));
                }
                writer.as_mut().expect("just made").2.push(row)?;
                written += 1;
            }
        }
        if let Some((id, seg, w)) = writer.take() {
            pieces.push((id, seg, w.finish()?));
        }
        if written != n as u64 {
            return Err(Error::Raced(name));
        }
        // Verify every piece from disk before anything is deleted.
        for (_, seg, info) in &pieces {
            SegmentFile::open(&self.tmp_path(seg))?.verify(info)?;
        }
        failpoint("compact-written");
        for (_, seg, _) in &pieces {
            let (tmp, fin) = (self.tmp_path(seg), self.warm_path(seg));
            std::fs::rename(&tmp, &fin).map_err(io(&fin))?;
        }
        fsync_dir(&self.cfg.warm_dir)?;
        failpoint("compact-renamed");
        let part = name.clone();
        let want = n;
        let infos: Vec<(i64, super::segment::SegmentInfo)> = pieces
            .iter()
            .map(|(id, _, info)| (*id, info.clone()))
            .collect();
        let unchanged = self.store.job_blocking_value(move |c| {
            // The rows this compaction read must all still be there.
            let still = hot_block::totals(c, &part, max_id)?.0;
            if still != want {
                return Ok(false);
            }
            for (id, info) in &infos {
                catalog::activate(c, *id, info, &HashMap::new())?;
            }
            c.execute(&format!("DELETE FROM \"{part}\" WHERE id <= ?1"), [max_id])?;
            drop_if_empty(c, &part)?;
            Ok(true)
        })?;
        if !unchanged {
            // The partition was left as it was; the next run compacts it again.
            return Err(Error::Raced(name));
        }
        failpoint("compact-committed");
        tracing::info!(partition = %name, rows = n, segments = pieces.len(), "compacted a hot partition");
        Ok(n as u64)
    }

    /// Returns the hot database's free pages (left by dropped partitions) to the file
    /// system, 64 MB at a time between the writer's batches. Returns the bytes
    /// returned.
    ///
    /// # Errors
    /// [`Error`].
    pub fn release_space(&self, shutdown: &CancellationToken) -> Result<u64, Error> {
        /// Pages per writer job (4 KiB pages: 64 MiB).
        const STEP: u32 = 16_384;
        let (before, _) = hot::space::usage(&self.reader()?)?;
        loop {
            let left = self
                .store
                .job_blocking_value(move |c| hot::space::release(c, STEP))?;
            if left == 0 || shutdown.is_cancelled() {
                break;
            }
        }
        // The file shrinks at the checkpoint; its size is what users see. (A reader
        // still on older pages can hold it back until the next run.)
        if let Err(e) = self.store.checkpoint_blocking() {
            tracing::debug!(error = %e, "hot database checkpoint after returning space");
        }
        let (after, free) = hot::space::usage(&self.reader()?)?;
        metrics::gauge!("heimdall_aggregator_hot_db_bytes").set(after as f64);
        metrics::gauge!("heimdall_aggregator_hot_db_free_bytes").set(free as f64);
        Ok(before.saturating_sub(after))
    }

    /// Deletes everything older than the retention period. Returns the rows deleted
    /// from the hot tier and segments.
    ///
    /// # Errors
    /// [`Error`].
    pub fn retention(&self) -> Result<u64, Error> {
        let Some(keep) = self.cfg.retention else {
            return Ok(0);
        };
        let cutoff = heimdall_common::record::now_ns() - keep.as_nanos() as i64;
        let conn = self.reader()?;
        let mut deleted = 0u64;
        for p in hot::partitions(&conn)? {
            if p.end > cutoff {
                continue;
            }
            let n = hot_block::totals(&conn, &p.name, i64::MAX)?.0;
            let part = p.name.clone();
            self.store.job_blocking(Box::new(move |c| {
                c.execute_batch(&format!("DROP TABLE IF EXISTS \"{part}\""))?;
                c.execute("DELETE FROM partitions WHERE name = ?1", [&part])?;
                Ok(())
            }))?;
            deleted += n as u64;
        }
        for s in catalog::all(&conn)? {
            if s.max_ts >= cutoff || s.state != "active" {
                continue;
            }
            let id = s.id;
            let tier = s.tier;
            self.store.job_blocking(Box::new(move |c| {
                catalog::set_state(c, id, "deleting", tier)
            }))?;
            deleted += s.rows;
        }
        self.store.job_blocking(Box::new(move |c| {
            c.execute("DELETE FROM aggregates WHERE start < ?1", [cutoff])?;
            // A minute's row goes once the whole minute is past the cutoff.
            c.execute(
                "DELETE FROM volume WHERE minute < ?1",
                [cutoff.saturating_sub(60_000_000_000)],
            )?;
            c.execute(
                "DELETE FROM volume_hours WHERE hour < ?1",
                [cutoff.saturating_sub(crate::volume::HOUR)],
            )?;
            c.execute("DELETE FROM anomalies WHERE ts < ?1", [cutoff])?;
            Ok(())
        }))?;
        Ok(deleted)
    }

    /// Uploads warm segments old enough to the cold tier. Returns the rows moved.
    ///
    /// # Errors
    /// [`Error`].
    pub fn upload(&self, shutdown: &CancellationToken) -> Result<u64, Error> {
        let (Some(cold), Some(after)) = (&self.cold, self.cfg.upload_after) else {
            return Ok(0);
        };
        let cutoff = heimdall_common::record::now_ns() - after.as_nanos() as i64;
        let conn = self.reader()?;
        let mut moved = 0;
        for s in catalog::in_state(&conn, "active")? {
            if shutdown.is_cancelled() {
                break;
            }
            if s.tier != Tier::Warm || s.max_ts >= cutoff {
                continue;
            }
            moved += self.upload_segment(cold, &s)?;
        }
        Ok(moved)
    }

    /// Runs pending erasure requests (see [`crate::erase`]).
    ///
    /// # Errors
    /// [`Error`].
    pub fn erase_pending(&self) -> Result<u64, Error> {
        super::erase::run_pending(self)
    }
}

/// Drops a partition that has no rows left; returns whether it did.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn drop_if_empty(c: &Connection, part: &str) -> Result<bool, rusqlite::Error> {
    let left = hot_block::totals(c, part, i64::MAX)?.0;
    if left > 0 {
        return Ok(false);
    }
    c.execute_batch(&format!("DROP TABLE IF EXISTS \"{part}\""))?;
    c.execute("DELETE FROM partitions WHERE name = ?1", [part])?;
    Ok(true)
}
