//! Where queries read, and log queries.
//!
//! [`Source`] is the one view of stored data the query layer has: it selects streams
//! by their labels, scans lines of a time range in time order (forward or backward)
//! with keyset pagination so memory stays flat, and reads the agents' pre-aggregates.
//! Log queries run the pipeline over each line and stop at the limit, the byte cap or
//! the deadline.

use super::parse::{LineFilter, LogQuery, Matcher};
use super::pipeline::{base_labels, Pipeline};
use crate::store::hot;
use heimdall_common::record::{Labels, Level};
use rusqlite::{Connection, OptionalExtension};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Query failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hot store failed.
    #[error("hot store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The query ran past its deadline.
    #[error("the query timed out; narrow the time range or the selector")]
    Timeout,
    /// The query would exceed a memory bound.
    #[error("{0}")]
    Limit(String),
    /// The query cannot be evaluated (type errors, pipeline errors).
    #[error("{0}")]
    Eval(String),
    /// The client went away; the query was abandoned.
    #[error("the query was cancelled")]
    Cancelled,
}

impl Error {
    /// Whether the client asked for something it can change (HTTP 400 rather than 500).
    pub fn is_client_error(&self) -> bool {
        matches!(self, Error::Limit(_) | Error::Eval(_))
    }
}

/// One stored line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub stream_id: i64,
    pub ts: i64,
    pub level: Level,
    pub line: Vec<u8>,
}

/// The stored data a query reads.
pub struct Source<'a> {
    pub hot: &'a Connection,
    /// Set when the query's client has gone away.
    cancel: Option<&'a AtomicBool>,
}

impl<'a> Source<'a> {
    /// A source over the hot store only.
    pub fn hot(conn: &'a Connection) -> Source<'a> {
        Source {
            hot: conn,
            cancel: None,
        }
    }

    /// Scans stop with [`Error::Cancelled`] once `flag` is set.
    pub fn with_cancel(mut self, flag: &'a AtomicBool) -> Source<'a> {
        self.cancel = Some(flag);
        self
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Streams whose labels satisfy every matcher.
    ///
    /// # Errors
    /// [`Error::Sqlite`].
    pub fn streams(&self, matchers: &[Matcher]) -> Result<Vec<(i64, Labels)>, Error> {
        Ok(hot::load_streams(self.hot)?
            .into_iter()
            .filter(|(_, l)| matchers.iter().all(|m| m.matches(l.get(&m.name))))
            .collect())
    }

    /// Streams matching `matchers` with at least one line in `[start, end)`.
    ///
    /// # Errors
    /// [`Error::Sqlite`].
    pub fn streams_in_range(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<(i64, Labels)>, Error> {
        let mut has = self.hot.prepare_cached(
            "SELECT 1 FROM logs WHERE stream_id = ?1 AND ts >= ?2 AND ts < ?3 LIMIT 1",
        )?;
        let mut out = Vec::new();
        for (id, l) in self.streams(matchers)? {
            if has
                .query_row(rusqlite::params![id, start, end], |_| Ok(()))
                .optional()?
                .is_some()
            {
                out.push((id, l));
            }
        }
        Ok(out)
    }

    /// Entries and bytes of `streams` in `[start, end)`: from the agents'
    /// pre-aggregates where they cover a stream, else counted from the lines.
    ///
    /// # Errors
    /// [`Error::Sqlite`].
    pub fn volume(&self, streams: &[i64], start: i64, end: i64) -> Result<(u64, u64), Error> {
        let cover = self.aggregate_coverage(streams, start)?;
        let (agg, lines): (Vec<i64>, Vec<i64>) =
            streams.iter().partition(|s| cover.contains_key(s));
        let (mut entries, mut bytes) = (0u64, 0u64);
        self.aggregates(&agg, start, end, |_, _, _, _, c, b| {
            entries += c;
            bytes += b;
        })?;
        let mut count = self.hot.prepare_cached(
            "SELECT count(*), coalesce(sum(length(line)), 0) FROM logs WHERE stream_id = ?1 AND ts >= ?2 AND ts < ?3",
        )?;
        for s in lines {
            let (c, b): (i64, i64) = count.query_row(rusqlite::params![s, start, end], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            entries += c as u64;
            bytes += b as u64;
        }
        Ok((entries, bytes))
    }

    /// Calls `each` for the lines of `streams` in `[start, end)`, oldest first (newest
    /// first when `backward`), until it returns `false`. `filters` are line filters
    /// every line returned must pass to be of use; storage may skip data that cannot
    /// hold a match. Returns `false` when the deadline stopped the scan.
    ///
    /// # Errors
    /// [`Error::Sqlite`].
    #[allow(clippy::too_many_arguments)]
    pub fn scan(
        &self,
        streams: &[i64],
        start: i64,
        end: i64,
        backward: bool,
        _filters: &[&LineFilter],
        deadline: Option<Instant>,
        mut each: impl FnMut(Row) -> bool,
    ) -> Result<bool, Error> {
        let mut n = 0u32;
        let mut cancelled = false;
        let complete = hot::scan_rows(self.hot, streams, start, end, backward, deadline, |r| {
            n = n.wrapping_add(1);
            if n % 4096 == 0 && self.cancelled() {
                cancelled = true;
                return false;
            }
            each(Row {
                stream_id: r.stream_id,
                ts: r.ts,
                level: r.level,
                line: r.line,
            })
        })?;
        if cancelled {
            return Err(Error::Cancelled);
        }
        Ok(complete)
    }

    /// For each of `streams` whose lines the agents' pre-aggregates cover (its first
    /// aggregate window starts no later than its first stored line), the window in ns.
    ///
    /// # Errors
    /// [`Error::Sqlite`].
    pub fn aggregate_coverage(
        &self,
        streams: &[i64],
        _from: i64,
    ) -> Result<HashMap<i64, i64>, Error> {
        let mut first_agg = self.hot.prepare_cached(
            "SELECT start, window_secs FROM aggregates WHERE stream_id = ?1 ORDER BY start LIMIT 1",
        )?;
        let mut first_line = self
            .hot
            .prepare_cached("SELECT min(ts) FROM logs WHERE stream_id = ?1")?;
        let mut out = HashMap::new();
        for &s in streams {
            let Some((start, window)): Option<(i64, i64)> = first_agg
                .query_row([s], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
            else {
                continue;
            };
            let window_ns = window.saturating_mul(1_000_000_000);
            let line: Option<i64> = first_line.query_row([s], |r| r.get(0))?;
            if line.is_none_or(|t| start <= t) {
                out.insert(s, window_ns);
            }
        }
        Ok(out)
    }

    /// Calls `each(stream, window_start, window_ns, level, count, bytes)` for the
    /// aggregates of `streams` with window starts in `[start, end)`.
    ///
    /// # Errors
    /// [`Error::Sqlite`].
    pub fn aggregates(
        &self,
        streams: &[i64],
        start: i64,
        end: i64,
        mut each: impl FnMut(i64, i64, i64, u8, u64, u64),
    ) -> Result<(), Error> {
        let mut stmt = self.hot.prepare_cached(
            "SELECT start, window_secs, level, sum(count), sum(bytes) FROM aggregates
             WHERE stream_id = ?1 AND start >= ?2 AND start < ?3 GROUP BY start, level",
        )?;
        for &s in streams {
            let mut rows = stmt.query(rusqlite::params![s, start, end])?;
            while let Some(r) = rows.next()? {
                each(
                    s,
                    r.get(0)?,
                    r.get::<_, i64>(1)?.saturating_mul(1_000_000_000),
                    r.get::<_, i64>(2)? as u8,
                    r.get::<_, i64>(3)? as u64,
                    r.get::<_, i64>(4)? as u64,
                );
            }
        }
        Ok(())
    }
}

/// Parameters of a log query.
#[derive(Clone, Debug)]
pub struct LogRequest {
    /// Inclusive start, ns since the Unix epoch.
    pub start_ns: i64,
    /// Exclusive end, ns since the Unix epoch.
    pub end_ns: i64,
    pub limit: usize,
    /// Most line bytes to return; the scan stops (partial) beyond it.
    pub max_bytes: usize,
    /// Newest first.
    pub backward: bool,
    pub deadline: Option<Instant>,
}

/// One result line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ts: i64,
    pub line: Vec<u8>,
}

/// Lines grouped by their labels, each group's lines in the requested order.
#[derive(Clone, Debug, Default)]
pub struct LogResult {
    pub streams: Vec<(Labels, Vec<Entry>)>,
    /// Lines returned.
    pub lines: usize,
    /// Lines read (before filters).
    pub scanned: u64,
    /// Bytes read.
    pub scanned_bytes: u64,
    /// The deadline or the byte cap stopped the scan before the limit or the end of
    /// the range.
    pub partial: bool,
}

/// Streams whose labels satisfy every matcher, from the hot store.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn select_streams(
    conn: &Connection,
    matchers: &[Matcher],
) -> Result<Vec<(i64, Labels)>, rusqlite::Error> {
    Ok(hot::load_streams(conn)?
        .into_iter()
        .filter(|(_, l)| matchers.iter().all(|m| m.matches(l.get(&m.name))))
        .collect())
}

/// Runs a log query.
///
/// # Errors
/// [`Error`].
pub fn run_log_query(src: &Source<'_>, q: &LogQuery, req: &LogRequest) -> Result<LogResult, Error> {
    let streams = src.streams(&q.matchers)?;
    let ids: Vec<i64> = streams.iter().map(|(id, _)| *id).collect();
    let labels: HashMap<i64, Labels> = streams.into_iter().collect();
    let pipeline = Pipeline::new(q);
    let filters: Vec<&LineFilter> = q.leading_filters().collect();
    let mut groups: HashMap<Labels, Vec<Entry>> = HashMap::new();
    let mut fast: HashMap<(i64, u8), Labels> = HashMap::new();
    let (mut lines, mut bytes, mut scanned, mut scanned_bytes) = (0usize, 0usize, 0u64, 0u64);
    let complete = src.scan(
        &ids,
        req.start_ns,
        req.end_ns,
        req.backward,
        &filters,
        req.deadline,
        |row| {
            scanned += 1;
            scanned_bytes += row.line.len() as u64;
            let stream = &labels[&row.stream_id];
            let Some(out) = pipeline.process(stream, row.level, &row.line) else {
                return true;
            };
            let key = match out.labels {
                Some(l) => l,
                None => fast
                    .entry((row.stream_id, row.level as u8))
                    .or_insert_with(|| base_labels(stream, row.level))
                    .clone(),
            };
            let line = out.line.into_owned();
            bytes += line.len();
            groups
                .entry(key)
                .or_default()
                .push(Entry { ts: row.ts, line });
            lines += 1;
            lines < req.limit && bytes < req.max_bytes
        },
    )?;
    let mut out: Vec<(Labels, Vec<Entry>)> = groups.into_iter().collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(LogResult {
        streams: out,
        lines,
        scanned,
        scanned_bytes,
        partial: !complete || bytes >= req.max_bytes,
    })
}
