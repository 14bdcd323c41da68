//! How the hot tier keeps lines: in sections, one SQLite row per (batch, partition,
//! stream), not one row per line.
//!
//! A batch's lines are grouped by partition and stream, sorted by (time, id), encoded
//! (ids as offsets, times as deltas, the rest as varints) and lz4-compressed into one
//! blob per group, with the group's id range, time range, row count and line bytes
//! beside it. Storing a batch is then a handful of inserts of already-compressed
//! bytes, and the encoding, compression and token indexing ([`prepare`]) happen on the
//! connection's task before the batch reaches the single writer thread: with one row
//! per line and two indexes the writer was saturated at about 200k lines/s.
//!
//! Row ids keep their meaning: the writer gives a batch's records consecutive ids in
//! batch order, a section's `id` is the smallest id of its rows and `last_id` the
//! largest, and every later batch gets larger ids, so "rows up to id N" is "sections
//! with `id <= N`" and the tail follows ids as before. Reading a stream over a time
//! range reads only its sections that overlap the range (index on
//! `(stream_id, max_ts)`); ordered reads merge sections lazily ([`Merge`]), decoding a
//! section only once no row before it can come from elsewhere.
//!
//! Section encoding, before lz4 (`compress_prepend_size`): a varint row count, then
//! per row: varint id offset from the section's `id`, zigzag varint time delta from
//! the previous row (the first from 0), zigzag varint `observed - ts`, level byte,
//! flags byte, varint template id, varint metadata pair count and each name and value
//! as varint length and bytes, varint line length and the line bytes.

use crate::filter::GramBuilder;
use crate::read::HeapEntry as Front;
use crate::segment::{RowRef, SegmentRow};
use crate::volume::put_varint;
use heimdall_common::record::{Labels, Level};
use heimdall_common::wire::BatchContent;
use rusqlite::{params, Connection};
use std::collections::BinaryHeap;

/// A partition table's columns.
pub const COLUMNS: &str = "id INTEGER PRIMARY KEY, last_id INTEGER NOT NULL, stream_id INTEGER NOT NULL, rows INTEGER NOT NULL, min_ts INTEGER NOT NULL, max_ts INTEGER NOT NULL, bytes INTEGER NOT NULL, data BLOB NOT NULL";

/// Creates a partition table and its indexes (inside the caller's transaction).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn create_table(conn: &Connection, name: &str) -> Result<(), rusqlite::Error> {
    // Listing sections reads only the index `_sections` (it holds every column but
    // the data): a partition's rows, whose pages hold the data, are not read to list
    // them. It replaces `_stream` (stream and end time only).
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS \"{name}\" ({COLUMNS});
         CREATE INDEX IF NOT EXISTS \"{name}_sections\" ON \"{name}\"(stream_id, max_ts, min_ts, id, last_id, rows, bytes);
         DROP INDEX IF EXISTS \"{name}_stream\";
         CREATE INDEX IF NOT EXISTS \"{name}_last\" ON \"{name}\"(last_id);"
    ))
}

/// One section ready to store: the rows of one stream of one batch in one partition.
#[derive(Debug)]
pub struct Section {
    /// The stream's index in the batch's stream table.
    pub stream: u32,
    /// Smallest and largest record index (in the batch) of its rows.
    pub first: u32,
    pub last: u32,
    pub rows: u32,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Line bytes.
    pub bytes: u64,
    /// The encoded, compressed rows; ids are offsets from `first`.
    pub data: Vec<u8>,
}

/// A batch's sections in one partition, with the token filter of their lines.
#[derive(Debug)]
pub struct Part {
    /// The partition's start, ns.
    pub start: i64,
    pub sections: Vec<Section>,
    pub first: u32,
    pub last: u32,
    pub rows: usize,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Token bloom filter of the part's lines (see [`crate::hot_index`]), built here
    /// rather than by the single writer.
    pub bloom: crate::filter::Bloom,
}

/// A batch's records, ready for the writer.
#[derive(Debug, Default)]
pub struct Prepared {
    pub parts: Vec<Part>,
    /// The per-second counts of the batch's lines ([`crate::volume`]), keyed by the
    /// stream's index in the batch until the writer knows the stream ids.
    pub volume: crate::volume::Tally,
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// One row to encode.
struct Encode<'a> {
    offset: u64,
    ts: i64,
    observed: i64,
    level: u8,
    flags: u8,
    template_id: u64,
    metadata: &'a Labels,
    line: &'a [u8],
}

/// Encodes rows (sorted by time, then id) and compresses them.
fn encode<'a>(rows: impl ExactSizeIterator<Item = Encode<'a>>, raw: &mut Vec<u8>) -> Vec<u8> {
    raw.clear();
    put_varint(raw, rows.len() as u64);
    let mut prev = 0i64;
    for r in rows {
        put_varint(raw, r.offset);
        put_varint(raw, zigzag(r.ts.wrapping_sub(prev)));
        prev = r.ts;
        put_varint(raw, zigzag(r.observed.wrapping_sub(r.ts)));
        raw.push(r.level);
        raw.push(r.flags);
        put_varint(raw, r.template_id);
        put_varint(raw, r.metadata.len() as u64);
        for (k, v) in r.metadata.iter() {
            put_varint(raw, k.len() as u64);
            raw.extend_from_slice(k.as_bytes());
            put_varint(raw, v.len() as u64);
            raw.extend_from_slice(v.as_bytes());
        }
        put_varint(raw, r.line.len() as u64);
        raw.extend_from_slice(r.line);
    }
    lz4_flex::compress_prepend_size(raw)
}

/// Groups a batch's records by partition and stream, encodes each group and collects
/// the token entries of each partition's lines. Runs on the caller's thread.
pub fn prepare(content: &BatchContent, partition_ns: i64) -> Prepared {
    let partition_ns = partition_ns.max(1);
    let mut order: Vec<(i64, u32, i64, u32)> = content
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                r.time_ns.div_euclid(partition_ns) * partition_ns,
                r.stream,
                r.time_ns,
                i as u32,
            )
        })
        .collect();
    order.sort_unstable();
    let mut out = Prepared::default();
    let mut raw = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let start = order[i].0;
        let mut part = Part {
            start,
            sections: Vec::new(),
            first: u32::MAX,
            last: 0,
            rows: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            bloom: GramBuilder::for_bytes(0).finish(),
        };
        let part_bytes: usize = order[i..]
            .iter()
            .take_while(|o| o.0 == start)
            .map(|o| content.records[o.3 as usize].line.len())
            .sum();
        let mut grams = GramBuilder::for_bytes(part_bytes);
        while i < order.len() && order[i].0 == start {
            let stream = order[i].1;
            let mut j = i;
            while j < order.len() && order[j].0 == start && order[j].1 == stream {
                j += 1;
            }
            let group = &order[i..j];
            let first = group.iter().map(|g| g.3).min().unwrap_or(0);
            let last = group.iter().map(|g| g.3).max().unwrap_or(0);
            let mut bytes = 0u64;
            for g in group {
                let r = &content.records[g.3 as usize];
                bytes += r.line.len() as u64;
                grams.add_line(&r.line);
                out.volume.add(
                    i64::from(r.stream),
                    r.time_ns,
                    r.level as u8,
                    r.flags,
                    !r.metadata.is_empty(),
                    r.line.len(),
                );
            }
            let data = encode(
                group.iter().map(|g| {
                    let r = &content.records[g.3 as usize];
                    Encode {
                        offset: u64::from(g.3 - first),
                        ts: r.time_ns,
                        observed: r.observed_ns,
                        level: r.level as u8,
                        flags: r.flags,
                        template_id: r.template_id,
                        metadata: &r.metadata,
                        line: &r.line,
                    }
                }),
                &mut raw,
            );
            let s = Section {
                stream,
                first,
                last,
                rows: group.len() as u32,
                min_ts: group[0].2,
                max_ts: group[group.len() - 1].2,
                bytes,
                data,
            };
            part.first = part.first.min(first);
            part.last = part.last.max(last);
            part.rows += group.len();
            part.min_ts = part.min_ts.min(s.min_ts);
            part.max_ts = part.max_ts.max(s.max_ts);
            part.sections.push(s);
            i = j;
        }
        part.bloom = grams.finish();
        out.parts.push(part);
    }
    out
}

/// Encodes stored rows (any order; all of one stream) as a section whose id is
/// `id`, which must not be above any row's id. Returns the data and the section's
/// `(last_id, rows, min_ts, max_ts, bytes)`.
pub fn encode_rows(id: i64, rows: &mut [SegmentRow]) -> (Vec<u8>, (i64, i64, i64, i64, i64)) {
    rows.sort_unstable_by_key(|r| (r.ts, r.id));
    let last = rows.iter().map(|r| r.id).max().unwrap_or(id);
    let min = rows.first().map_or(0, |r| r.ts);
    let max = rows.last().map_or(0, |r| r.ts);
    let bytes: i64 = rows.iter().map(|r| r.line.len() as i64).sum();
    let data = encode(
        rows.iter().map(|r| Encode {
            offset: (r.id - id) as u64,
            ts: r.ts,
            observed: r.observed,
            level: r.level as u8,
            flags: r.flags,
            template_id: r.template_id,
            metadata: &r.metadata,
            line: &r.line,
        }),
        &mut Vec::new(),
    );
    (data, (last, rows.len() as i64, min, max, bytes))
}

/// A section that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("hot section {id} does not decode: {why}")]
pub struct Damaged {
    id: i64,
    why: &'static str,
}

fn damaged(id: i64, why: &'static str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        7,
        rusqlite::types::Type::Blob,
        Box::new(Damaged { id, why }),
    )
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        crate::volume::varint(&mut self.b)
    }

    fn byte(&mut self) -> Option<u8> {
        let (&c, rest) = self.b.split_first()?;
        self.b = rest;
        Some(c)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        if n > self.b.len() {
            return None;
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Some(a)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// Decodes a section's rows (in time, then id, order), keeping those `keep` accepts.
///
/// # Errors
/// A [`rusqlite::Error::FromSqlConversionFailure`] naming the section when the data
/// is damaged.
pub fn decode(
    id: i64,
    stream_id: i64,
    data: &[u8],
    mut keep: impl FnMut(&RowRef<'_>) -> bool,
) -> Result<Vec<SegmentRow>, rusqlite::Error> {
    let mut out = Vec::new();
    decode_each(id, stream_id, data, |r| {
        if keep(&r) {
            out.push(r.into_row());
        }
        true
    })?;
    Ok(out)
}

/// Calls `each` for the rows of a section's data in order until it returns `false`,
/// each borrowing its line from the decompressed section.
///
/// # Errors
/// [`rusqlite::Error`] naming the section when the data is damaged.
pub fn decode_each(
    id: i64,
    stream_id: i64,
    data: &[u8],
    mut each: impl FnMut(RowRef<'_>) -> bool,
) -> Result<(), rusqlite::Error> {
    let raw = lz4_flex::decompress_size_prepended(data).map_err(|_| damaged(id, "lz4"))?;
    let mut r = Reader { b: &raw };
    let n = r.varint().ok_or_else(|| damaged(id, "row count"))?;
    let mut prev = 0i64;
    for _ in 0..n {
        let row = (|| {
            let offset = r.varint()?;
            let ts = prev.wrapping_add(unzigzag(r.varint()?));
            prev = ts;
            let observed = ts.wrapping_add(unzigzag(r.varint()?));
            let level = Level::from_u8(r.byte()?).unwrap_or_default();
            let flags = r.byte()?;
            let template_id = r.varint()?;
            let pairs = r.varint()?;
            let mut meta = Vec::new();
            for _ in 0..pairs {
                meta.push((r.string()?, r.string()?));
            }
            let line = r.bytes()?;
            Some(RowRef {
                id: id.wrapping_add(offset as i64),
                stream_id,
                ts,
                observed,
                level,
                template_id,
                flags,
                line,
                passes: false,
                metadata: if meta.is_empty() {
                    Labels::default()
                } else {
                    Labels::new(meta)
                },
            })
        })()
        .ok_or_else(|| damaged(id, "row"))?;
        if !each(row) {
            break;
        }
    }
    Ok(())
}

/// A stored section, without its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub id: i64,
    pub last_id: i64,
    pub stream_id: i64,
    pub rows: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub bytes: i64,
}

/// Stores a section.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn insert(
    conn: &Connection,
    table: &str,
    m: &Meta,
    data: &[u8],
) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(&format!(
        "INSERT INTO \"{table}\"(id, last_id, stream_id, rows, min_ts, max_ts, bytes, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?
    .execute(params![
        m.id,
        m.last_id,
        m.stream_id,
        m.rows,
        m.min_ts,
        m.max_ts,
        m.bytes,
        data
    ])?;
    Ok(())
}

fn stream_list(streams: &[i64]) -> String {
    streams
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The condition choosing the sections of `streams` (every stream when `None`), and
/// the one stream to bind as `?3`; `None` when no section can be chosen. One stream (a
/// compaction's walk, a stream's query) is a parameter, so the statement is prepared
/// once, not once a stream.
fn by_stream(streams: Option<&[i64]>) -> Option<(String, Option<i64>)> {
    match streams {
        Some([]) => None,
        Some([s]) => Some(("stream_id = ?3 AND".to_owned(), Some(*s))),
        Some(s) => Some((format!("stream_id IN ({}) AND", stream_list(s)), None)),
        None => Some((String::new(), None)),
    }
}

/// The sections of `table` holding rows of `streams` (every stream when `None`)
/// with times overlapping `[start, end)`, in id order.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn list(
    conn: &Connection,
    table: &str,
    streams: Option<&[i64]>,
    start: i64,
    end: i64,
) -> Result<Vec<Meta>, rusqlite::Error> {
    let Some((by_stream, one)) = by_stream(streams) else {
        return Ok(Vec::new());
    };
    // Sorted here: SQLite's sorter took several times as long for a hot tier of many
    // small sections.
    let sql = format!(
        "SELECT id, last_id, stream_id, rows, min_ts, max_ts, bytes FROM \"{table}\"
         WHERE {by_stream} max_ts >= ?1 AND min_ts < ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = match one {
        Some(stream) => stmt.query_map(params![start, end, stream], meta)?,
        None => stmt.query_map(params![start, end], meta)?,
    };
    let mut out: Vec<Meta> = rows.collect::<Result<_, _>>()?;
    out.sort_unstable_by_key(|m| m.id);
    Ok(out)
}

/// The sections of `table` whose ids lie in one of `ranges` (inclusive, ascending,
/// not overlapping) holding rows of `streams` with times overlapping `[start, end)`,
/// in id order: a needle's hot blocks, read by id rather than by listing every
/// section of the streams.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn list_in(
    conn: &Connection,
    table: &str,
    streams: &std::collections::HashSet<i64>,
    (start, end): (i64, i64),
    ranges: &[(i64, i64)],
) -> Result<Vec<Meta>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, last_id, stream_id, rows, min_ts, max_ts, bytes FROM \"{table}\"
         WHERE id >= ?1 AND id <= ?2 AND max_ts >= ?3 AND min_ts < ?4 ORDER BY id"
    ))?;
    let mut out = Vec::new();
    for &(a, z) in ranges {
        for m in stmt.query_map(params![a, z, start, end], meta)? {
            let m = m?;
            if streams.contains(&m.stream_id) {
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// How many sections of `table` hold rows of `streams` with times overlapping
/// `[start, end)` (what [`list`] would list).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn count(
    conn: &Connection,
    table: &str,
    streams: &[i64],
    start: i64,
    end: i64,
) -> Result<i64, rusqlite::Error> {
    let Some((by_stream, one)) = by_stream(Some(streams)) else {
        return Ok(0);
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT count(*) FROM \"{table}\" WHERE {by_stream} max_ts >= ?1 AND min_ts < ?2"
    ))?;
    match one {
        Some(stream) => stmt.query_row(params![start, end, stream], |r| r.get(0)),
        None => stmt.query_row(params![start, end], |r| r.get(0)),
    }
}

/// The sections of `table` with rows of `streams` holding ids above `after`, in id order.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn list_after(
    conn: &Connection,
    table: &str,
    streams: &[i64],
    after: i64,
) -> Result<Vec<Meta>, rusqlite::Error> {
    if streams.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT id, last_id, stream_id, rows, min_ts, max_ts, bytes FROM \"{table}\"
         WHERE last_id > ?1 AND stream_id IN ({}) ORDER BY id",
        stream_list(streams)
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([after], meta)?;
    rows.collect()
}

fn meta(r: &rusqlite::Row<'_>) -> Result<Meta, rusqlite::Error> {
    Ok(Meta {
        id: r.get(0)?,
        last_id: r.get(1)?,
        stream_id: r.get(2)?,
        rows: r.get(3)?,
        min_ts: r.get(4)?,
        max_ts: r.get(5)?,
        bytes: r.get(6)?,
    })
}

/// Reads and decodes one section, keeping the rows `keep` accepts (none when it has
/// gone).
///
/// # Errors
/// [`rusqlite::Error`], damaged data.
pub fn read(
    conn: &Connection,
    table: &str,
    id: i64,
    keep: impl FnMut(&RowRef<'_>) -> bool,
) -> Result<Vec<SegmentRow>, rusqlite::Error> {
    Ok(with_data(conn, table, id, |stream_id, data| {
        decode(id, stream_id, data, keep)
    })?
    .unwrap_or_default())
}

/// Unwanted sections a [`scan_data`] steps over before it seeks to the next wanted one.
const SEEK_AFTER: usize = 8;

/// Calls `f(index, data)` with the stored data (compressed, for [`decode_each`] on any
/// thread) of the sections of `table` whose ids are `ids` (ascending), in that order,
/// until it returns `false`; sections that have gone are left out.
///
/// The table is read in id order from the first wanted section: when most of a
/// partition's sections are wanted one pass over it costs far less than looking each
/// up. After [`SEEK_AFTER`] unwanted sections in a row the read starts again at the
/// next wanted one, so a few wanted sections among many cost about a lookup each.
///
/// # Errors
/// [`rusqlite::Error`], or what `f` returns.
pub fn scan_data(
    conn: &Connection,
    table: &str,
    ids: &[i64],
    mut f: impl FnMut(usize, &[u8]) -> Result<bool, rusqlite::Error>,
) -> Result<(), rusqlite::Error> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, data FROM \"{table}\" WHERE id >= ?1 ORDER BY id"
    ))?;
    let mut i = 0;
    'seek: while i < ids.len() {
        let mut rows = stmt.query([ids[i]])?;
        let mut skipped = 0;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            while i < ids.len() && ids[i] < id {
                i += 1;
            }
            let Some(&want) = ids.get(i) else {
                return Ok(());
            };
            if id == want {
                skipped = 0;
                if !f(i, r.get_ref(1)?.as_blob()?)? {
                    return Ok(());
                }
                i += 1;
                if i == ids.len() {
                    return Ok(());
                }
            } else {
                skipped += 1;
                if skipped >= SEEK_AFTER {
                    continue 'seek;
                }
            }
        }
        return Ok(());
    }
    Ok(())
}

/// Calls `f(stream_id, data)` with a section's stored data; `None` when it has gone.
fn with_data<R>(
    conn: &Connection,
    table: &str,
    id: i64,
    f: impl FnOnce(i64, &[u8]) -> Result<R, rusqlite::Error>,
) -> Result<Option<R>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT stream_id, data FROM \"{table}\" WHERE id = ?1"
    ))?;
    let mut rows = stmt.query([id])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let stream_id: i64 = r.get(0)?;
    let data = r.get_ref(1)?.as_blob()?;
    f(stream_id, data).map(Some)
}

/// Every row of a partition with ids up to `max_id`, in id order (for tests and
/// tools; a partition can be large).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn all_rows(
    conn: &Connection,
    table: &str,
    max_id: i64,
) -> Result<Vec<SegmentRow>, rusqlite::Error> {
    let mut out = Vec::new();
    for m in list(conn, table, None, i64::MIN, i64::MAX)? {
        if m.id > max_id {
            continue;
        }
        out.extend(read(conn, table, m.id, |r| r.id <= max_id)?);
    }
    out.sort_unstable_by_key(|r| r.id);
    Ok(out)
}

/// Rows, line bytes, oldest and newest time of a partition's sections with ids up to
/// `max_id`.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn totals(
    conn: &Connection,
    table: &str,
    max_id: i64,
) -> Result<(i64, i64, Option<i64>, Option<i64>), rusqlite::Error> {
    conn.prepare_cached(&format!(
        "SELECT coalesce(sum(rows), 0), coalesce(sum(bytes), 0), min(min_ts), max(max_ts) FROM \"{table}\" WHERE id <= ?1"
    ))?
    .query_row([max_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
}

/// The highest row id of a partition (0 when empty).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn max_id(conn: &Connection, table: &str) -> Result<i64, rusqlite::Error> {
    conn.prepare_cached(&format!(
        "SELECT coalesce(max(last_id), 0) FROM \"{table}\""
    ))?
    .query_row([], |r| r.get(0))
}

/// Removes the rows with ids in `ids` from a section, rewriting it (or deleting it
/// when nothing is left). Returns the rows removed.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn remove_ids(
    conn: &Connection,
    table: &str,
    id: i64,
    ids: &std::collections::HashSet<i64>,
) -> Result<u64, rusqlite::Error> {
    let before: Option<i64> = conn
        .prepare_cached(&format!("SELECT rows FROM \"{table}\" WHERE id = ?1"))?
        .query_row([id], |r| r.get(0))
        .ok();
    let Some(before) = before else { return Ok(0) };
    let mut rows = read(conn, table, id, |r| !ids.contains(&r.id))?;
    let removed = (before - rows.len() as i64).max(0) as u64;
    if removed == 0 {
        return Ok(0);
    }
    if rows.is_empty() {
        conn.execute(&format!("DELETE FROM \"{table}\" WHERE id = ?1"), [id])?;
        return Ok(removed);
    }
    let (data, (last, n, min, max, bytes)) = encode_rows(id, &mut rows);
    conn.execute(
        &format!(
            "UPDATE \"{table}\" SET last_id = ?2, rows = ?3, min_ts = ?4, max_ts = ?5, bytes = ?6, data = ?7 WHERE id = ?1"
        ),
        params![id, last, n, min, max, bytes, data],
    )?;
    Ok(removed)
}

/// Sections of one partition read in (time, id) order (descending when backward),
/// each decoded only when the next row could come from it.
pub struct Merge {
    table: String,
    /// Not yet decoded, in the order they are needed (last first, to pop).
    pending: Vec<Meta>,
    runs: Vec<std::vec::IntoIter<SegmentRow>>,
    heads: Vec<Option<SegmentRow>>,
    heap: BinaryHeap<Front>,
    backward: bool,
    /// Sections decoded so far.
    decoded: usize,
}

impl Merge {
    /// Sections decoded so far.
    pub fn decoded(&self) -> usize {
        self.decoded
    }

    /// A merge over `sections` of `table`.
    pub fn new(table: &str, mut sections: Vec<Meta>, backward: bool) -> Merge {
        // Popped from the end: forward needs the smallest min_ts first, backward the
        // largest max_ts first.
        if backward {
            sections.sort_unstable_by_key(|m| (m.max_ts, m.last_id));
        } else {
            sections.sort_unstable_by_key(|m| std::cmp::Reverse((m.min_ts, m.id)));
        }
        Merge {
            table: table.to_owned(),
            pending: sections,
            runs: Vec::new(),
            heads: Vec::new(),
            heap: BinaryHeap::new(),
            backward,
            decoded: 0,
        }
    }

    /// The bound of the rows not decoded yet: no such row comes before it.
    fn pending_bound(&self) -> Option<i64> {
        self.pending
            .last()
            .map(|m| if self.backward { m.max_ts } else { m.min_ts })
    }

    /// The next row `keep` accepts, or `None` when every section is used up.
    ///
    /// # Errors
    /// [`rusqlite::Error`], damaged data.
    pub fn next(
        &mut self,
        conn: &Connection,
        keep: &mut impl FnMut(&RowRef<'_>) -> bool,
    ) -> Result<Option<SegmentRow>, rusqlite::Error> {
        // Decode every section that may hold a row at or before the current front.
        while let Some(b) = self.pending_bound() {
            let need = match self.heap.peek() {
                None => true,
                Some(top) => {
                    if self.backward {
                        b >= top.key.0
                    } else {
                        b <= top.key.0
                    }
                }
            };
            if !need {
                break;
            }
            let m = self.pending.pop().expect("bound checked");
            let mut rows = read(conn, &self.table, m.id, &mut *keep)?;
            self.decoded += 1;
            if self.backward {
                rows.reverse();
            }
            let mut it = rows.into_iter();
            if let Some(r) = it.next() {
                self.heap.push(Front {
                    key: (r.ts, r.id),
                    run: self.runs.len(),
                    backward: self.backward,
                });
                self.heads.push(Some(r));
                self.runs.push(it);
            }
        }
        let Some(top) = self.heap.pop() else {
            return Ok(None);
        };
        let row = self.heads[top.run].take().expect("a queued run has a head");
        if let Some(r) = self.runs[top.run].next() {
            self.heap.push(Front {
                key: (r.ts, r.id),
                run: top.run,
                backward: self.backward,
            });
            self.heads[top.run] = Some(r);
        } else {
            // Free the used-up run's buffer.
            self.runs[top.run] = Vec::new().into_iter();
        }
        Ok(Some(row))
    }

    /// Whether every section is used up.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heimdall_common::record::LogRecord;

    fn content(n: usize, streams: u32) -> BatchContent {
        BatchContent {
            streams: (0..streams)
                .map(|i| Labels::new([("s", i.to_string())]))
                .collect(),
            records: (0..n)
                .map(|i| LogRecord {
                    stream: (i as u32 * 7) % streams,
                    time_ns: ((i * 37) % 50) as i64 * 1_000_000_000 - 3_000_000_000,
                    observed_ns: 5,
                    level: Level::Warn,
                    template_id: i as u64 * 1_000_003,
                    flags: (i % 3) as u8,
                    redacted: 0,
                    line: format!("line {i} \u{e9}").into_bytes().into(),
                    metadata: if i % 5 == 0 {
                        Labels::new([("trace_id", format!("t{i}"))])
                    } else {
                        Labels::default()
                    },
                })
                .collect(),
            ..Default::default()
        }
    }

    fn store(c: &BatchContent, conn: &Connection, base: i64) {
        for p in prepare(c, 10_000_000_000).parts {
            let t = format!("p{}", p.start.div_euclid(1_000_000_000) + 100);
            create_table(conn, &t).unwrap();
            for s in &p.sections {
                insert(
                    conn,
                    &t,
                    &Meta {
                        id: base + i64::from(s.first),
                        last_id: base + i64::from(s.last),
                        stream_id: i64::from(s.stream) + 1,
                        rows: i64::from(s.rows),
                        min_ts: s.min_ts,
                        max_ts: s.max_ts,
                        bytes: s.bytes as i64,
                    },
                    &s.data,
                )
                .unwrap();
            }
        }
    }

    fn tables(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn every_field_reads_back_and_merges_in_order() {
        let conn = Connection::open_in_memory().unwrap();
        let c = content(500, 6);
        store(&c, &conn, 1000);
        store(&c, &conn, 2000);
        let mut all = Vec::new();
        for t in tables(&conn) {
            all.extend(all_rows(&conn, &t, i64::MAX).unwrap());
        }
        assert_eq!(all.len(), 1000);
        all.sort_by_key(|r| r.id);
        for (i, r) in all.iter().take(500).enumerate() {
            let src = &c.records[i];
            assert_eq!(r.id, 1000 + i as i64);
            assert_eq!(r.stream_id, i64::from(src.stream) + 1);
            assert_eq!(r.ts, src.time_ns);
            assert_eq!(r.observed, src.observed_ns);
            assert_eq!(r.level, src.level);
            assert_eq!(r.template_id, src.template_id);
            assert_eq!(r.flags, src.flags);
            assert_eq!(r.line, src.line.to_vec());
            assert_eq!(r.metadata, src.metadata);
        }
        for t in tables(&conn) {
            for backward in [false, true] {
                let metas = list(&conn, &t, Some(&[2, 3]), i64::MIN, i64::MAX).unwrap();
                let mut m = Merge::new(&t, metas, backward);
                let mut got = Vec::new();
                while let Some(r) = m.next(&conn, &mut |r| r.ts >= -1_000_000_000).unwrap() {
                    got.push((r.ts, r.id));
                }
                let mut want: Vec<(i64, i64)> = all_rows(&conn, &t, i64::MAX)
                    .unwrap()
                    .into_iter()
                    .filter(|r| (r.stream_id == 2 || r.stream_id == 3) && r.ts >= -1_000_000_000)
                    .map(|r| (r.ts, r.id))
                    .collect();
                want.sort_unstable();
                if backward {
                    want.reverse();
                }
                assert_eq!(got, want);
                assert!(m.is_empty());
            }
        }
    }

    #[test]
    fn scanned_data_is_each_wanted_section_once_dense_or_sparse() {
        let conn = Connection::open_in_memory().unwrap();
        // Many batches of many streams: hundreds of sections in one table.
        for b in 0..40 {
            store(&content(300, 40), &conn, 1 + b * 1000);
        }
        let t = tables(&conn).remove(0);
        let all = list(&conn, &t, None, i64::MIN, i64::MAX).unwrap();
        assert!(all.len() > 300, "{}", all.len());
        let data = |id: i64| -> Vec<u8> {
            conn.query_row(
                &format!("SELECT data FROM \"{t}\" WHERE id = ?1"),
                [id],
                |r| r.get(0),
            )
            .unwrap()
        };
        let mut rng = 0x9e37_79b9_u64;
        for every in [1, 2, 7, 50, 400] {
            // Every `every`-th section, with ids of sections that do not exist between.
            let mut ids: Vec<i64> = all.iter().step_by(every).map(|m| m.id).collect();
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let gone = ids[(rng >> 33) as usize % ids.len()] + 1;
            if !all.iter().any(|m| m.id == gone) {
                ids.push(gone);
                ids.sort_unstable();
            }
            let mut got = Vec::new();
            scan_data(&conn, &t, &ids, |i, d| {
                got.push((ids[i], d.to_vec()));
                Ok(true)
            })
            .unwrap();
            let want: Vec<(i64, Vec<u8>)> = ids
                .iter()
                .filter(|&&id| id != gone || all.iter().any(|m| m.id == id))
                .map(|&id| (id, data(id)))
                .collect();
            assert_eq!(got.len(), want.len(), "every {every}");
            assert!(got == want, "every {every}");
            // Stopping early stops.
            let mut n = 0;
            scan_data(&conn, &t, &ids, |_, _| {
                n += 1;
                Ok(n < 3)
            })
            .unwrap();
            assert_eq!(n, 3.min(want.len()));
        }
    }

    #[test]
    fn a_count_is_what_a_listing_lists() {
        let conn = Connection::open_in_memory().unwrap();
        for b in 0..5 {
            store(&content(200, 7), &conn, 1 + b * 1000);
        }
        for t in tables(&conn) {
            for streams in [&[][..], &[3], &[1, 2, 5], &[1, 2, 3, 4, 5, 6, 7]] {
                for (start, end) in [(i64::MIN, i64::MAX), (0, 9_000_000_000), (5, 6)] {
                    let listed = list(&conn, &t, Some(streams), start, end).unwrap();
                    let n = count(&conn, &t, streams, start, end).unwrap();
                    assert_eq!(n as usize, listed.len(), "{t} {streams:?} {start}..{end}");
                }
            }
        }
    }

    #[test]
    fn removed_rows_are_gone_and_the_rest_stay() {
        let conn = Connection::open_in_memory().unwrap();
        let c = content(100, 1);
        store(&c, &conn, 1);
        let t = tables(&conn).remove(0);
        let rows = all_rows(&conn, &t, i64::MAX).unwrap();
        let m = list(&conn, &t, None, i64::MIN, i64::MAX).unwrap();
        let gone: std::collections::HashSet<i64> = rows.iter().step_by(2).map(|r| r.id).collect();
        let mut removed = 0;
        for s in &m {
            removed += remove_ids(&conn, &t, s.id, &gone).unwrap();
        }
        assert_eq!(removed as usize, gone.len());
        let left = all_rows(&conn, &t, i64::MAX).unwrap();
        assert_eq!(left.len(), rows.len() - gone.len());
        assert!(left.iter().all(|r| !gone.contains(&r.id)));
        let (n, ..) = totals(&conn, &t, i64::MAX).unwrap();
        assert_eq!(n as usize, left.len());
    }

    #[test]
    fn damaged_data_is_an_error_not_a_panic() {
        let c = content(10, 1);
        let p = prepare(&c, i64::MAX).parts.remove(0);
        let mut data = p.sections[0].data.clone();
        let n = data.len();
        data.truncate(n - 3);
        assert!(decode(1, 1, &data, |_| true).is_err());
        assert!(decode(1, 1, b"", |_| true).is_err());
    }
}
