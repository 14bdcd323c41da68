//! Runs log queries against the hot store: select streams by their labels, scan their
//! rows in time order with keyset pagination, apply line filters, stop at the limit or
//! the deadline.

use super::parse::{LogQuery, Matcher};
use crate::store::hot;
use heimdall_common::record::Labels;
use rusqlite::Connection;
use std::collections::HashMap;
use std::time::Instant;

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

/// Lines grouped by stream, each stream's lines in the requested order.
#[derive(Clone, Debug, Default)]
pub struct LogResult {
    pub streams: Vec<(Labels, Vec<Entry>)>,
    pub lines: usize,
    /// The deadline stopped the scan before the limit or the end of the range.
    pub partial: bool,
}

/// Streams whose labels satisfy every matcher.
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
/// [`rusqlite::Error`].
pub fn run_log_query(
    conn: &Connection,
    q: &LogQuery,
    req: &LogRequest,
) -> Result<LogResult, rusqlite::Error> {
    let streams = select_streams(conn, &q.matchers)?;
    let ids: Vec<i64> = streams.iter().map(|(id, _)| *id).collect();
    let mut by_stream: HashMap<i64, Vec<Entry>> = HashMap::new();
    let mut lines = 0usize;
    let mut bytes = 0usize;
    let complete = hot::scan_rows(
        conn,
        &ids,
        req.start_ns,
        req.end_ns,
        req.backward,
        req.deadline,
        |row| {
            if q.filters.iter().all(|f| f.matches(&row.line)) {
                bytes += row.line.len();
                by_stream.entry(row.stream_id).or_default().push(Entry {
                    ts: row.ts,
                    line: row.line,
                });
                lines += 1;
            }
            lines < req.limit && bytes < req.max_bytes
        },
    )?;
    let complete = complete && bytes < req.max_bytes;
    let labels: HashMap<i64, Labels> = streams.into_iter().collect();
    let mut out: Vec<(Labels, Vec<Entry>)> = by_stream
        .into_iter()
        .map(|(id, e)| (labels.get(&id).cloned().unwrap_or_default(), e))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(LogResult {
        streams: out,
        lines,
        partial: !complete,
    })
}
