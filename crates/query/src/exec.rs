//! Log queries: the lines of a selector and its pipeline, grouped by their labels, in
//! time order, within a limit, a byte cap and a deadline. The lines come from the
//! store's reader ([`heimdall_store::read`]); this module applies the pipeline.

use crate::pipeline::{base_labels, Pipeline};
use heimdall_common::record::Labels;
use heimdall_logql::{LineFilter, LogQuery};
pub use heimdall_store::read::{Error, Order, Row, ScanCounts, Source};
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
    /// Group lines by their stream's labels only and give each line its structured
    /// metadata and parsed labels apart (Loki's `categorize-labels` encoding); otherwise
    /// lines are grouped by all their labels.
    pub categorize: bool,
}

/// One result line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub ts: i64,
    pub line: Vec<u8>,
    /// With `categorize`: the line's structured metadata (with its level and flag labels,
    /// which are per line too).
    pub structured: Labels,
    /// With `categorize`: labels the pipeline extracted.
    pub parsed: Labels,
}

/// Splits a line's labels as Loki's `categorize-labels` does: those that are the
/// stream's, those that are the line's own (its structured metadata, level and flags),
/// and those the pipeline extracted.
pub fn categorize(labels: Labels, stream: &Labels, metadata: &Labels) -> (Labels, Labels, Labels) {
    let (mut st, mut sm, mut parsed) = (Vec::new(), Vec::new(), Vec::new());
    for (k, v) in labels.iter() {
        if stream.get(k) == Some(v) {
            st.push((k, v));
        } else if metadata.get(k) == Some(v)
            || k.strip_suffix("_extracted")
                .is_some_and(|b| metadata.get(b) == Some(v))
            || k == "detected_level"
            || (k == "level" && stream.get("level").is_none())
            || crate::pipeline::FLAG_LABELS.iter().any(|(_, n)| *n == k)
        {
            sm.push((k, v));
        } else {
            parsed.push((k, v));
        }
    }
    (Labels::new(st), Labels::new(sm), Labels::new(parsed))
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
    /// What the scan read from storage and what it skipped.
    pub scan: ScanCounts,
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
            let Some(out) =
                pipeline.process(stream, &row.metadata, row.level, row.flags, &row.line)
            else {
                return true;
            };
            let line = out.line.into_owned();
            bytes += line.len();
            if req.categorize {
                let all = out
                    .labels
                    .unwrap_or_else(|| base_labels(stream, &row.metadata, row.level, row.flags));
                let (key, structured, parsed) = categorize(all, stream, &row.metadata);
                groups.entry(key).or_default().push(Entry {
                    ts: row.ts,
                    line,
                    structured,
                    parsed,
                });
            } else {
                let key = match out.labels {
                    Some(l) => l,
                    None => fast
                        .entry((row.stream_id, row.level as u8, row.flags))
                        .or_insert_with(|| base_labels(stream, &row.metadata, row.level, row.flags))
                        .clone(),
                };
                groups.entry(key).or_default().push(Entry {
                    ts: row.ts,
                    line,
                    ..Entry::default()
                });
            }
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
        scan: src.scanned(),
        partial: !complete || bytes >= req.max_bytes,
    })
}
