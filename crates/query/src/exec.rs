//! Log queries: the lines of a selector and its pipeline, grouped by their labels, in
//! time order, within a limit, a byte cap and a deadline. The lines come from the
//! store's reader ([`heimdall_store::read`]); this module applies the pipeline.

use crate::pipeline::{base_labels, Pipeline};
use heimdall_common::record::Labels;
use heimdall_logql::{LineFilter, LogQuery};
pub use heimdall_store::read::{Error, Order, Row, Source};
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
    let mut fast: HashMap<(i64, u8, u8), Labels> = HashMap::new();
    let (mut lines, mut bytes, mut scanned, mut scanned_bytes) = (0usize, 0usize, 0u64, 0u64);
    let complete = src.scan(
        &ids,
        req.start_ns,
        req.end_ns,
        if req.backward {
            Order::Backward
        } else {
            Order::Forward
        },
        &filters,
        req.deadline,
        |row| {
            scanned += 1;
            scanned_bytes += row.line.len() as u64;
            let stream = &labels[&row.stream_id];
            let Some(out) = pipeline.process(stream, row.level, row.flags, &row.line) else {
                return true;
            };
            let key = match out.labels {
                Some(l) => l,
                None => fast
                    .entry((row.stream_id, row.level as u8, row.flags))
                    .or_insert_with(|| base_labels(stream, row.level, row.flags))
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
