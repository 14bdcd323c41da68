//! The segment catalog, in the hot tier's database: which segments exist, in which tier,
//! in which state, and which streams and times they hold.
//!
//! States: `writing` (the file is being made; its partition still holds the rows),
//! `active` (queried; its rows are gone from the hot tier), `uploading` (active and
//! being copied to object storage), `deleting` (no longer queried; its file or object
//! is being removed). A restart finishes or rolls back whatever state it finds (see
//! [`crate::lifecycle`]).

use super::filter::Bloom;
use super::segment::SegmentInfo;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

/// Where a segment's file lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Warm,
    Cold,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }

    fn parse(s: &str) -> Tier {
        if s == "cold" {
            Tier::Cold
        } else {
            Tier::Warm
        }
    }
}

/// A segment's catalog entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub id: i64,
    pub state: String,
    pub tier: Tier,
    pub name: String,
    pub min_ts: i64,
    pub max_ts: i64,
    pub rows: u64,
    pub bytes: u64,
    pub raw_bytes: u64,
    pub checksum: u32,
    pub created: i64,
    /// When the state last changed.
    pub updated: i64,
}

/// One stream's part of a segment, as a query needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPart {
    pub stream_id: i64,
    /// The id the file uses for the stream (differs after a catalog rebuild).
    pub file_stream_id: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub rows: u64,
}

/// A segment that may hold rows a query wants.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub segment: Segment,
    pub streams: Vec<StreamPart>,
    /// Row groups that may hold a line the query wants (set by the planner from the
    /// row-group filters); `None` reads them all.
    pub row_groups: Option<std::sync::Arc<Vec<bool>>>,
}

impl Candidate {
    /// Time range of the wanted streams in this segment.
    pub fn range(&self) -> (i64, i64) {
        (
            self.streams
                .iter()
                .map(|s| s.min_ts)
                .min()
                .unwrap_or(self.segment.min_ts),
            self.streams
                .iter()
                .map(|s| s.max_ts)
                .max()
                .unwrap_or(self.segment.max_ts),
        )
    }

    /// Rows of the wanted streams.
    pub fn rows(&self) -> u64 {
        self.streams.iter().map(|s| s.rows).sum()
    }
}

const SEGMENT_COLUMNS: &str =
    "id, state, tier, name, min_ts, max_ts, rows, bytes, raw_bytes, checksum, created, updated";

fn segment(r: &rusqlite::Row<'_>) -> Result<Segment, rusqlite::Error> {
    Ok(Segment {
        id: r.get(0)?,
        state: r.get(1)?,
        tier: Tier::parse(&r.get::<_, String>(2)?),
        name: r.get(3)?,
        min_ts: r.get(4)?,
        max_ts: r.get(5)?,
        rows: r.get::<_, i64>(6)? as u64,
        bytes: r.get::<_, i64>(7)? as u64,
        raw_bytes: r.get::<_, i64>(8)? as u64,
        checksum: r.get::<_, i64>(9)? as u32,
        created: r.get(10)?,
        updated: r.get(11)?,
    })
}

/// Active segments holding any of `streams` with rows in `[start, end)`.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn candidates(
    conn: &Connection,
    streams: &[i64],
    start: i64,
    end: i64,
) -> Result<Vec<Candidate>, rusqlite::Error> {
    let mut by_seg: HashMap<i64, Vec<StreamPart>> = HashMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT ss.segment_id, ss.stream_id, ss.file_stream_id, ss.min_ts, ss.max_ts, ss.rows
         FROM segment_streams ss JOIN segments s ON s.id = ss.segment_id
         WHERE ss.stream_id = ?1 AND ss.max_ts >= ?2 AND ss.min_ts < ?3 AND s.state IN ('active', 'uploading')",
    )?;
    for &st in streams {
        let rows = stmt.query_map(params![st, start, end], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                StreamPart {
                    stream_id: r.get(1)?,
                    file_stream_id: r.get(2)?,
                    min_ts: r.get(3)?,
                    max_ts: r.get(4)?,
                    rows: r.get::<_, i64>(5)? as u64,
                },
            ))
        })?;
        for r in rows {
            let (seg, part) = r?;
            by_seg.entry(seg).or_default().push(part);
        }
    }
    let mut out = Vec::with_capacity(by_seg.len());
    let mut get = conn.prepare_cached(&format!(
        "SELECT {SEGMENT_COLUMNS} FROM segments WHERE id = ?1"
    ))?;
    for (id, streams) in by_seg {
        if let Some(segment) = get.query_row([id], segment).optional()? {
            out.push(Candidate {
                segment,
                streams,
                row_groups: None,
            });
        }
    }
    out.sort_by_key(|c| c.segment.id);
    Ok(out)
}

/// Segments in `state` (any tier).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn in_state(conn: &Connection, state: &str) -> Result<Vec<Segment>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SEGMENT_COLUMNS} FROM segments WHERE state = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([state], segment)?;
    rows.collect()
}

/// Every segment.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn all(conn: &Connection) -> Result<Vec<Segment>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SEGMENT_COLUMNS} FROM segments ORDER BY id"
    ))?;
    let rows = stmt.query_map([], segment)?;
    rows.collect()
}

/// The bloom filter of a segment.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn bloom(conn: &Connection, id: i64) -> Result<Option<Bloom>, rusqlite::Error> {
    let b: Option<Option<Vec<u8>>> = conn
        .prepare_cached("SELECT bloom FROM segments WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    Ok(b.flatten().and_then(|b| Bloom::from_bytes(&b)))
}

/// Row-group filters as one blob: for each, its length (u32 LE) and its bytes.
fn encode_blooms(blooms: &[Bloom]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in blooms {
        let bytes = b.to_bytes();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// The row-group filters of a segment, in file order; empty for segments made before
/// they existed (every row group is then read).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn row_group_blooms(conn: &Connection, id: i64) -> Result<Vec<Bloom>, rusqlite::Error> {
    let b: Option<Option<Vec<u8>>> = conn
        .prepare_cached("SELECT rg_blooms FROM segments WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    Ok(decode_blooms(&b.flatten().unwrap_or_default()))
}

/// The inverse of `encode_blooms`; empty (every row group read) for a damaged blob.
fn decode_blooms(raw: &[u8]) -> Vec<Bloom> {
    let mut out = Vec::new();
    let mut rest = raw;
    while rest.len() >= 4 {
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(b) = rest.get(4..4 + n).and_then(Bloom::from_bytes) else {
            return Vec::new();
        };
        out.push(b);
        rest = &rest[4 + n..];
    }
    if !rest.is_empty() {
        return Vec::new();
    }
    out
}

/// Records the intent to write segment `name` (state `writing`); returns its id.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn begin(conn: &Connection, name: &str, source: &str) -> Result<i64, rusqlite::Error> {
    let now = heimdall_common::record::now_ns();
    conn.execute(
        "INSERT INTO segments(state, tier, name, min_ts, max_ts, rows, bytes, raw_bytes, levels, checksum, content_hash, bloom, source, created, updated)
         VALUES ('writing', 'warm', ?1, 0, 0, 0, 0, 0, 0, 0, 0, NULL, ?2, ?3, ?3)",
        params![name, source, now],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Makes a written and verified segment active with its statistics. `file_ids` maps
/// the file's stream ids to catalog stream ids (identity for segments made here).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn activate(
    conn: &Connection,
    id: i64,
    info: &SegmentInfo,
    file_ids: &HashMap<i64, i64>,
) -> Result<(), rusqlite::Error> {
    let now = heimdall_common::record::now_ns();
    conn.execute(
        "UPDATE segments SET state = 'active', min_ts = ?2, max_ts = ?3, rows = ?4, bytes = ?5, raw_bytes = ?6,
           levels = ?7, checksum = ?8, content_hash = ?9, bloom = ?10, updated = ?11, rg_blooms = ?12 WHERE id = ?1",
        params![
            id,
            info.min_ts,
            info.max_ts,
            info.rows as i64,
            info.bytes as i64,
            info.raw_bytes as i64,
            info.levels,
            info.checksum as i64,
            info.content_hash as i64,
            info.bloom.to_bytes(),
            now,
            encode_blooms(&info.row_group_blooms),
        ],
    )?;
    let mut ins = conn.prepare_cached(
        "INSERT OR REPLACE INTO segment_streams(segment_id, stream_id, file_stream_id, min_ts, max_ts, rows)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for s in &info.streams {
        let catalog_id = file_ids.get(&s.stream_id).copied().unwrap_or(s.stream_id);
        ins.execute(params![
            id,
            catalog_id,
            s.stream_id,
            s.min_ts,
            s.max_ts,
            s.rows as i64
        ])?;
    }
    Ok(())
}

/// Sets a segment's state (and tier).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn set_state(
    conn: &Connection,
    id: i64,
    state: &str,
    tier: Tier,
) -> Result<(), rusqlite::Error> {
    conn.execute(
        "UPDATE segments SET state = ?2, tier = ?3, updated = ?4 WHERE id = ?1",
        params![id, state, tier.as_str(), heimdall_common::record::now_ns()],
    )?;
    Ok(())
}

/// Forgets a segment.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn remove(conn: &Connection, id: i64) -> Result<(), rusqlite::Error> {
    conn.execute("DELETE FROM segment_streams WHERE segment_id = ?1", [id])?;
    conn.execute("DELETE FROM segments WHERE id = ?1", [id])?;
    Ok(())
}

/// Totals per tier for metrics: (segments, rows, bytes).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn totals(conn: &Connection) -> Result<HashMap<String, (u64, u64, u64)>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT tier, count(*), coalesce(sum(rows), 0), coalesce(sum(bytes), 0) FROM segments
         WHERE state IN ('active', 'uploading') GROUP BY tier",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
            ),
        ))
    })?;
    rows.collect()
}

/// Per tier of segments: segments, rows, bytes, raw bytes, oldest and newest line.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn tier_totals(conn: &Connection) -> Result<Vec<(String, [i64; 6])>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT tier, count(*), coalesce(sum(rows), 0), coalesce(sum(bytes), 0),
                coalesce(sum(raw_bytes), 0), coalesce(min(min_ts), 0), coalesce(max(max_ts), 0)
         FROM segments WHERE state IN ('active', 'uploading') GROUP BY tier ORDER BY tier DESC",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            [
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ],
        ))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_group_filters_round_trip_and_damage_reads_everything() {
        let blooms: Vec<Bloom> = [&b"alpha beta"[..], b"gamma delta"]
            .iter()
            .map(|l| {
                let mut g = crate::filter::GramBuilder::for_bytes(l.len());
                g.add_line(l);
                g.finish()
            })
            .collect();
        let raw = encode_blooms(&blooms);
        assert_eq!(decode_blooms(&raw), blooms);
        assert!(decode_blooms(&raw[..raw.len() - 1]).is_empty());
        assert!(decode_blooms(&[]).is_empty());
    }
}
