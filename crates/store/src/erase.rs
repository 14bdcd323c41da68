//! Erasure: delete every line matching a selector (with optional line filters) in a
//! time range, from every tier — what a GDPR request needs.
//!
//! A request is recorded (`erasures`, state `pending`) and answered at once; the
//! lifecycle thread carries it out: hot rows are deleted by id, and each segment holding
//! a matching line is rewritten without it (the new segment is written, verified, then
//! made active in the same transaction that marks the old one `deleting`; the old file
//! or object is then removed). A restart resumes pending requests; running one twice
//! deletes nothing more.

use super::catalog::{self, Tier};
use super::hot;
use super::hot_block;
use super::lifecycle::{failpoint, Error, Lifecycle};
use super::segment::{SegmentFile, SegmentInfo, SegmentWriter, Selection};
use heimdall_logql::{self as parse, LineFilter, LogQuery, Stage};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{HashMap, HashSet};

/// A recorded erasure request.
pub use heimdall_api::model::Erasure;

/// Why a query cannot name what to erase.
#[derive(Debug, thiserror::Error)]
pub enum BadErasure {
    /// The query does not parse.
    #[error(transparent)]
    Parse(#[from] parse::ParseError),
    /// The query has stages other than line filters.
    #[error(
        "an erasure takes a stream selector with line filters only (no parsers or label filters)"
    )]
    NotOnlyLineFilters,
}

/// Checks an erasure query: a stream selector with line filters only.
///
/// # Errors
/// [`BadErasure`], a message for the client.
pub fn validate(query: &str) -> Result<LogQuery, BadErasure> {
    let q = parse::parse_log(query)?;
    if !q.only_line_filters() {
        return Err(BadErasure::NotOnlyLineFilters);
    }
    Ok(q)
}

/// Records a request (inside a writer job); returns its id.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn record(c: &Connection, query: &str, start: i64, end: i64) -> Result<i64, rusqlite::Error> {
    c.execute(
        "INSERT INTO erasures(query, start, end, state, created) VALUES (?1, ?2, ?3, 'pending', ?4)",
        params![query, start, end, heimdall_common::record::now_ns()],
    )?;
    Ok(c.last_insert_rowid())
}

/// Every request, newest first.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn list(c: &Connection) -> Result<Vec<Erasure>, rusqlite::Error> {
    let mut stmt = c.prepare_cached(
        "SELECT id, query, start, end, state, lines, segments, created, finished FROM erasures ORDER BY id DESC LIMIT 1000",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Erasure {
            id: r.get(0)?,
            query: r.get(1)?,
            start: r.get(2)?,
            end: r.get(3)?,
            state: r.get(4)?,
            lines: r.get::<_, i64>(5)? as u64,
            segments: r.get::<_, i64>(6)? as u64,
            created: r.get(7)?,
            finished: r.get(8)?,
        })
    })?;
    rows.collect()
}

fn matches(filters: &[&LineFilter], line: &[u8]) -> bool {
    filters.iter().all(|f| f.matches(line))
}

/// Carries out every pending request. Returns the lines deleted.
///
/// # Errors
/// [`Error`].
pub fn run_pending(lc: &Lifecycle) -> Result<u64, Error> {
    let conn = hot::open_reader(&lc.db_path)?;
    let pending: Vec<(i64, String, i64, i64)> = {
        let mut stmt = conn.prepare(
            "SELECT id, query, start, end FROM erasures WHERE state = 'pending' ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut total = 0;
    for (id, query, start, end) in pending {
        let q = match validate(&query) {
            Ok(q) => q,
            Err(m) => {
                tracing::error!(erasure = id, error = %m, "erasure request cannot run");
                lc.store.job_blocking(Box::new(move |c| {
                    c.execute(
                        "UPDATE erasures SET state = 'failed', finished = ?2 WHERE id = ?1",
                        params![id, heimdall_common::record::now_ns()],
                    )?;
                    Ok(())
                }))?;
                continue;
            }
        };
        let (lines, segments) = erase_one(lc, &conn, &q, start, end)?;
        total += lines;
        lc.store.job_blocking(Box::new(move |c| {
            c.execute(
                "UPDATE erasures SET state = 'done', lines = lines + ?2, segments = segments + ?3, finished = ?4 WHERE id = ?1",
                params![id, lines as i64, segments as i64, heimdall_common::record::now_ns()],
            )?;
            Ok(())
        }))?;
        metrics::counter!("heimdall_aggregator_erased_lines_total").increment(lines);
        tracing::info!(erasure = id, lines, segments, "erasure done");
    }
    Ok(total)
}

fn erase_one(
    lc: &Lifecycle,
    conn: &Connection,
    q: &LogQuery,
    start: i64,
    end: i64,
) -> Result<(u64, u64), Error> {
    let streams: Vec<i64> = crate::read::select_streams(conn, &q.matchers)?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let filters: Vec<&LineFilter> = q
        .stages
        .iter()
        .filter_map(|s| match s {
            Stage::Line(f) => Some(f),
            _ => None,
        })
        .collect();
    if streams.is_empty() {
        return Ok((0, 0));
    }
    // The per-second counts of these streams stop being used before any line goes.
    let uncover = streams.clone();
    lc.store.job_blocking(Box::new(move |c| {
        crate::volume::uncover(c, &uncover)?;
        Ok(())
    }))?;
    let mut lines = 0u64;
    // Hot partitions: matching ids, deleted in chunks.
    for p in hot::partitions(conn)? {
        if p.end <= start || p.start >= end {
            continue;
        }
        // Matching ids by section; each section rewritten without them.
        let mut hits: Vec<(i64, HashSet<i64>)> = Vec::new();
        for m in hot_block::list(conn, &p.name, Some(&streams), start, end)? {
            let ids: HashSet<i64> = hot_block::read(conn, &p.name, m.id, |r| {
                r.ts >= start && r.ts < end && matches(&filters, r.line)
            })?
            .into_iter()
            .map(|r| r.id)
            .collect();
            if !ids.is_empty() {
                hits.push((m.id, ids));
            }
        }
        let found: u64 = hits.iter().map(|(_, ids)| ids.len() as u64).sum();
        for chunk in hits.chunks(64) {
            let chunk = chunk.to_vec();
            let part = p.name.clone();
            lc.store.job_blocking(Box::new(move |c| {
                for (id, ids) in &chunk {
                    hot_block::remove_ids(c, &part, *id, ids)?;
                }
                Ok(())
            }))?;
        }
        lines += found;
    }
    // Segments: rewrite those holding a matching line.
    let mut rewritten = 0;
    for cand in catalog::candidates(conn, &streams, start, end)? {
        let seg = &cand.segment;
        let local = match seg.tier {
            Tier::Warm => lc.warm_path(&seg.name),
            Tier::Cold => match &lc.cold {
                Some(c) => c.fetch(&seg.name, seg.bytes, seg.checksum)?,
                None => continue,
            },
        };
        let file = SegmentFile::open(&local)?;
        let footer = file.footer()?;
        // Catalog stream id by file stream id, for this segment.
        let ids: HashMap<i64, i64> = conn
            .prepare("SELECT file_stream_id, stream_id FROM segment_streams WHERE segment_id = ?1")?
            .query_map([seg.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let wanted: HashSet<i64> = cand.streams.iter().map(|s| s.file_stream_id).collect();
        let mut hits = 0u64;
        file.read(
            &Selection {
                streams: &wanted,
                start,
                end,
                row_groups: None,
                prefilter: None,
            },
            false,
            |r, _| {
                if matches(&filters, &r.line) {
                    hits += 1;
                }
                true
            },
        )?;
        if hits == 0 {
            continue;
        }
        let labels = file.stream_labels()?;
        let name = format!("erased-{:016x}.parquet", fastrand::u64(..));
        let source = format!("erase:{}", seg.name);
        let new_id = begin(lc, &name, &source)?;
        let tmp = lc.warm_path(&format!("{name}.tmp"));
        let mut w = SegmentWriter::create(&tmp, labels, lc.cfg.zstd_level)?;
        let kept = w.copy_from(&file, &footer, |r| {
            !(wanted.contains(&r.stream_id)
                && r.ts >= start
                && r.ts < end
                && matches(&filters, &r.line))
        })?;
        let info: SegmentInfo = w.finish()?;
        SegmentFile::open(&tmp)?.verify(&info)?;
        let fin = lc.warm_path(&name);
        heimdall_common::fs::rename_durable(&tmp, &fin).map_err(|source| Error::Io {
            path: fin.clone(),
            source,
        })?;
        failpoint("erase-written");
        let old = seg.clone();
        let empty = kept == 0;
        lc.store.job_blocking(Box::new(move |c| {
            if empty {
                catalog::remove(c, new_id)?;
            } else {
                catalog::activate(c, new_id, &info, &ids)?;
            }
            catalog::set_state(c, old.id, "deleting", old.tier)
        }))?;
        if empty {
            let _ = std::fs::remove_file(&fin);
        }
        // The old file or object is removed by the lifecycle's reaper once queries that
        // started before this commit are over.
        lines += hits;
        rewritten += 1;
    }
    Ok((lines, rewritten))
}

fn begin(lc: &Lifecycle, name: &str, source: &str) -> Result<i64, Error> {
    let (n, s) = (name.to_owned(), source.to_owned());
    lc.store
        .job_blocking(Box::new(move |c| catalog::begin(c, &n, &s).map(|_| ())))?;
    let id: Option<i64> = hot::open_reader(&lc.db_path)?
        .query_row("SELECT id FROM segments WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    id.ok_or_else(|| Error::Raced(name.to_owned()))
}
