//! Per-second line counts of every stream, by level: what log-volume queries
//! (`sum by (level) (count_over_time({…}[$__auto]))`, Grafana's histogram above the
//! lines, Drilldown's service list) are answered from, at any step that is a whole
//! number of seconds, without reading a line.
//!
//! One row per (stream, minute, level, flags, metadata): `seconds` holds, for each
//! second of the minute that had lines, the line count and bytes. A line at `ts`
//! counts in the second `ceil(ts / 1 s)`, i.e. second `b` holds `((b - 1) s, b s]`:
//! for a step and a range that are whole seconds, a query's window `(t - range, t]` is
//! then exactly a set of whole seconds, so answers equal counting the lines.
//!
//! The rows are written by the hot store's writer in the same transaction as the lines
//! (a batch stored once is counted once) and kept until retention drops them; they
//! are not moved by compaction, so they cover warm and cold lines too.
//!
//! Past hours are rolled up ([`roll_up`]): a stream's minutes of an hour become one
//! row of `volume_hours`, each minute with its totals beside its seconds, so a day's
//! histogram reads a few thousand rows instead of millions, and a minute that falls
//! inside one step is counted from its totals without decoding its seconds. Lines
//! that arrive later for a rolled-up hour go to `volume` as before and are rolled up
//! the next time; readers add both tables. Streams made
//! before the table existed are not covered ([`first_stream`]); queries read their
//! lines.

use rusqlite::{params, Connection, OptionalExtension};

/// One second's lines: (second of the minute, count, bytes).
pub type Second = (u8, u64, u64);

/// The key of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub stream_id: i64,
    /// Start of the minute, ns.
    pub minute: i64,
    pub level: u8,
    pub flags: u8,
    /// Whether the lines carry structured metadata.
    pub meta: bool,
}

/// One word per key: a writer counts every line, and hashing five fields one by one
/// was most of the count's cost.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let small = u64::from(self.level) | u64::from(self.flags) << 8 | u64::from(self.meta) << 16;
        h.write_u64(
            (self.stream_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (self.minute as u64).rotate_left(23)
                ^ small << 40,
        );
    }
}

const SECOND: i64 = 1_000_000_000;
const MINUTE: i64 = 60 * SECOND;
/// The span of a `volume_hours` row.
pub const HOUR: i64 = 60 * MINUTE;

/// The row and second a line at `ts` counts in.
pub fn locate(ts: i64) -> (i64, u8) {
    // ceil(ts / 1 s), for negative times too.
    let b = (ts.div_euclid(SECOND) + i64::from(ts.rem_euclid(SECOND) != 0)).saturating_mul(SECOND);
    let minute = b.div_euclid(MINUTE) * MINUTE;
    (minute, ((b - minute) / SECOND) as u8)
}

/// The instant (end of its second, ns) a second of a row stands for.
pub fn instant(minute: i64, sec: u8) -> i64 {
    minute + i64::from(sec) * SECOND
}

/// Appends `v` as a LEB128 varint (also the hot sections' encoding).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 varint off the front of `b`; `None` when it is cut or too long.
pub(crate) fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&c, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(c & 0x7f) << (7 * i);
        if c & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Encodes seconds (sorted by second, unique).
pub fn encode(secs: &[Second]) -> Vec<u8> {
    let mut out = Vec::with_capacity(secs.len() * 4);
    for &(s, c, b) in secs {
        out.push(s);
        put_varint(&mut out, c);
        put_varint(&mut out, b);
    }
    out
}

/// Decodes [`encode`]'s bytes; damage ends the list (what decoded is kept).
pub fn decode(b: &[u8]) -> Vec<Second> {
    seconds(b).collect()
}

/// The seconds of [`encode`]'s bytes, without allocating; damage ends them.
pub fn seconds(mut b: &[u8]) -> impl Iterator<Item = Second> + '_ {
    std::iter::from_fn(move || {
        let (&s, rest) = b.split_first()?;
        b = rest;
        let (Some(c), Some(n)) = (varint(&mut b), varint(&mut b)) else {
            b = &[];
            return None;
        };
        Some((s, c, n))
    })
}

/// Adds `add` into `into` (both sorted by second).
fn merge(into: &[Second], add: &[Second]) -> Vec<Second> {
    let mut out = Vec::with_capacity(into.len() + add.len());
    let (mut i, mut j) = (0, 0);
    while i < into.len() || j < add.len() {
        match (into.get(i), add.get(j)) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                out.push((a.0, a.1 + b.1, a.2 + b.2));
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.0 < b.0 => {
                out.push(*a);
                i += 1;
            }
            (Some(a), None) => {
                out.push(*a);
                i += 1;
            }
            (_, Some(b)) => {
                out.push(*b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// Counts of a batch (or of a group commit's batches), before they are written.
///
/// The map holds each key's place; the 60-second arrays sit in a vector beside it, so
/// growing the map moves small entries, not a kilobyte a key.
#[derive(Debug, Default)]
pub struct Tally {
    index: crate::fast_hash::FastMap<Key, u32>,
    keys: Vec<Key>,
    counts: Vec<[(u64, u64); 60]>,
    /// The key counted last and its place: a batch's lines come in runs of a stream.
    last: Option<(Key, u32)>,
}

impl Tally {
    fn slot(&mut self, k: Key) -> &mut [(u64, u64); 60] {
        if let Some((lk, i)) = self.last {
            if lk == k {
                return &mut self.counts[i as usize];
            }
        }
        let n = self.keys.len() as u32;
        let i = *self.index.entry(k).or_insert(n);
        if i == n {
            self.keys.push(k);
            self.counts.push([(0, 0); 60]);
        }
        self.last = Some((k, i));
        &mut self.counts[i as usize]
    }

    /// Counts a line.
    pub fn add(&mut self, stream_id: i64, ts: i64, level: u8, flags: u8, meta: bool, bytes: usize) {
        let (minute, sec) = locate(ts);
        let c = &mut self.slot(Key {
            stream_id,
            minute,
            level,
            flags,
            meta,
        })[usize::from(sec)];
        c.0 += 1;
        c.1 += bytes as u64;
    }

    /// Adds `other`'s counts into this one, its stream ids mapped by `stream`.
    pub fn absorb_mapped(&mut self, other: &Tally, stream: impl Fn(i64) -> i64) {
        for (k, counts) in other.keys.iter().zip(&other.counts) {
            let e = self.slot(Key {
                stream_id: stream(k.stream_id),
                ..*k
            });
            for (a, b) in e.iter_mut().zip(counts) {
                a.0 += b.0;
                a.1 += b.1;
            }
        }
    }

    /// Forgets every count, keeping the capacity.
    pub fn clear(&mut self) {
        self.index.clear();
        self.keys.clear();
        self.counts.clear();
        self.last = None;
    }

    /// Moves another tally's counts into this one, leaving it empty with its capacity
    /// (a writer reuses one per batch instead of growing a new map every time).
    pub fn absorb(&mut self, other: &mut Tally) {
        for (k, counts) in other.keys.iter().zip(&other.counts) {
            let e = self.slot(*k);
            for (a, b) in e.iter_mut().zip(counts) {
                a.0 += b.0;
                a.1 += b.1;
            }
        }
        other.clear();
    }

    /// Adds the counts into the table (inside the caller's transaction) and clears.
    ///
    /// # Errors
    /// [`rusqlite::Error`].
    pub fn write(&mut self, conn: &Connection) -> Result<(), rusqlite::Error> {
        let mut get = conn.prepare_cached(
            "SELECT seconds FROM volume WHERE stream_id = ?1 AND minute = ?2 AND level = ?3 AND flags = ?4 AND meta = ?5",
        )?;
        // An existing row changes only its counts (the index on `minute` is left
        // alone, which a REPLACE would delete from and insert into again).
        let mut update = conn.prepare_cached(
            "UPDATE volume SET seconds = ?6 WHERE stream_id = ?1 AND minute = ?2 AND level = ?3 AND flags = ?4 AND meta = ?5",
        )?;
        let mut insert = conn.prepare_cached(
            "INSERT INTO volume(stream_id, minute, level, flags, meta, seconds) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        // In key order, so the b-tree is walked forwards instead of at random.
        let mut order: Vec<usize> = (0..self.keys.len()).collect();
        order.sort_unstable_by_key(|i| self.keys[*i]);
        for i in order {
            let (k, counts) = (self.keys[i], &self.counts[i]);
            let add: Vec<Second> = counts
                .iter()
                .enumerate()
                .filter(|(_, c)| c.0 > 0)
                .map(|(s, c)| (s as u8, c.0, c.1))
                .collect();
            let p = params![k.stream_id, k.minute, k.level, k.flags, k.meta];
            let old: Option<Vec<u8>> = get.query_row(p, |r| r.get(0)).optional()?;
            let (secs, stmt) = match old {
                Some(o) => (merge(&decode(&o), &add), &mut update),
                None => (add, &mut insert),
            };
            stmt.execute(params![
                k.stream_id,
                k.minute,
                k.level,
                k.flags,
                k.meta,
                encode(&secs)
            ])?;
        }
        self.clear();
        Ok(())
    }
}

/// The table, and the first stream it covers (made in the caller's transaction when
/// missing: streams that already have lines are not covered).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn create(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS volume_uncovered (stream_id INTEGER PRIMARY KEY);
        CREATE TABLE IF NOT EXISTS volume_hours (
            stream_id INTEGER NOT NULL,
            hour      INTEGER NOT NULL,
            level     INTEGER NOT NULL,
            flags     INTEGER NOT NULL,
            meta      INTEGER NOT NULL,
            minutes   BLOB NOT NULL,
            PRIMARY KEY (stream_id, hour, level, flags, meta)
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS volume_hours_hour ON volume_hours(hour);",
    )?;
    let exists: bool = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE name = 'volume' AND type = 'table'")?
        .exists([])?;
    if exists {
        return Ok(());
    }
    conn.execute_batch(
        "CREATE TABLE volume (
            stream_id INTEGER NOT NULL,
            minute    INTEGER NOT NULL,
            level     INTEGER NOT NULL,
            flags     INTEGER NOT NULL,
            meta      INTEGER NOT NULL,
            seconds   BLOB NOT NULL,
            PRIMARY KEY (stream_id, minute, level, flags, meta)
        ) WITHOUT ROWID;
        CREATE INDEX volume_minute ON volume(minute);",
    )?;
    conn.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('volume_first_stream', (SELECT coalesce(max(id), 0) + 1 FROM streams))",
        [],
    )?;
    Ok(())
}

/// Stops covering `streams` (lines of theirs are being erased: their counts would no
/// longer match the lines). Queries read their lines from then on.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn uncover(conn: &Connection, streams: &[i64]) -> Result<(), rusqlite::Error> {
    let mut ins =
        conn.prepare_cached("INSERT OR IGNORE INTO volume_uncovered(stream_id) VALUES (?1)")?;
    for s in streams {
        ins.execute([s])?;
    }
    Ok(())
}

/// Which of `streams` the table covers.
///
/// # Errors
/// [`rusqlite::Error`].
pub fn covered(
    conn: &Connection,
    streams: &[i64],
) -> Result<std::collections::HashSet<i64>, rusqlite::Error> {
    let first = first_stream(conn)?;
    let mut gone = conn.prepare_cached("SELECT 1 FROM volume_uncovered WHERE stream_id = ?1")?;
    let mut out = std::collections::HashSet::new();
    for &s in streams {
        if s >= first && !gone.exists([s])? {
            out.insert(s);
        }
    }
    Ok(out)
}

/// The first stream id the table covers (all later ones are covered too, unless
/// [`uncover`]ed).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn first_stream(conn: &Connection) -> Result<i64, rusqlite::Error> {
    Ok(conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'volume_first_stream'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .unwrap_or(i64::MAX))
}

/// One minute of a stream's counts as a reader gets it: its key, its totals (count,
/// bytes) when stored beside the seconds, and its seconds (decode with [`seconds`]).
pub struct Minute<'a> {
    pub key: Key,
    pub totals: Option<(u64, u64)>,
    pub seconds: &'a [u8],
}

impl Minute<'_> {
    /// The minute's line count and bytes.
    pub fn totals(&self) -> (u64, u64) {
        self.totals.unwrap_or_else(|| {
            seconds(self.seconds).fold((0, 0), |(c, b), (_, n, by)| (c + n, b + by))
        })
    }
}

/// Calls `each` for the minutes of `streams` that hold any of `(start, end]`, stream
/// by stream (a stream's rolled-up minutes first, then those not yet rolled up; a
/// minute may come from both).
///
/// # Errors
/// [`rusqlite::Error`].
pub fn read(
    conn: &Connection,
    streams: &[i64],
    start: i64,
    end: i64,
    mut each: impl FnMut(Minute<'_>),
) -> Result<(), rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT minute, level, flags, meta, seconds FROM volume
         WHERE stream_id = ?1 AND minute >= ?2 AND minute <= ?3",
    )?;
    let mut hours = conn.prepare_cached(
        "SELECT hour, level, flags, meta, minutes FROM volume_hours
         WHERE stream_id = ?1 AND hour >= ?2 AND hour <= ?3",
    )?;
    let lo = locate(start.saturating_add(1)).0;
    let hi = locate(end).0;
    for &s in streams {
        let mut rows = hours.query(params![s, lo.div_euclid(HOUR) * HOUR, hi])?;
        while let Some(r) = rows.next()? {
            let hour: i64 = r.get(0)?;
            let (level, flags, meta) = (
                r.get::<_, i64>(1)? as u8,
                r.get::<_, i64>(2)? as u8,
                r.get::<_, i64>(3)? != 0,
            );
            for (m, count, bytes, secs) in minutes(r.get_ref(4)?.as_blob()?) {
                let minute = hour + i64::from(m) * MINUTE;
                if minute < lo || minute > hi {
                    continue;
                }
                each(Minute {
                    key: Key {
                        stream_id: s,
                        minute,
                        level,
                        flags,
                        meta,
                    },
                    totals: Some((count, bytes)),
                    seconds: secs,
                });
            }
        }
        let mut rows = stmt.query(params![s, lo, hi])?;
        while let Some(r) = rows.next()? {
            each(Minute {
                key: Key {
                    stream_id: s,
                    minute: r.get(0)?,
                    level: r.get::<_, i64>(1)? as u8,
                    flags: r.get::<_, i64>(2)? as u8,
                    meta: r.get::<_, i64>(3)? != 0,
                },
                totals: None,
                seconds: r.get_ref(4)?.as_blob()?,
            });
        }
    }
    Ok(())
}

/// Encodes an hour's minutes (sorted by minute, unique): per minute its number in the
/// hour, count, bytes, the length of its seconds and the seconds ([`encode`]).
fn encode_hour(mins: &[(u8, Vec<Second>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (m, secs) in mins {
        let (c, b) = secs.iter().fold((0, 0), |(c, b), s| (c + s.1, b + s.2));
        let e = encode(secs);
        out.push(*m);
        put_varint(&mut out, c);
        put_varint(&mut out, b);
        put_varint(&mut out, e.len() as u64);
        out.extend_from_slice(&e);
    }
    out
}

/// The minutes of [`encode_hour`]'s bytes: (minute of the hour, count, bytes,
/// seconds); damage ends them.
fn minutes(mut b: &[u8]) -> impl Iterator<Item = (u8, u64, u64, &[u8])> {
    std::iter::from_fn(move || {
        let (&m, rest) = b.split_first()?;
        b = rest;
        match minute_head(&mut b) {
            Some((c, n, secs)) => Some((m, c, n, secs)),
            None => {
                b = &[];
                None
            }
        }
    })
}

/// A minute's count, bytes and seconds off the front of `b`.
fn minute_head<'a>(b: &mut &'a [u8]) -> Option<(u64, u64, &'a [u8])> {
    let c = varint(b)?;
    let n = varint(b)?;
    let len = usize::try_from(varint(b)?).ok().filter(|l| *l <= b.len())?;
    let (secs, rest) = b.split_at(len);
    *b = rest;
    Some((c, n, secs))
}

/// Rolls the minutes of every whole hour before `before` (rounded down to an hour)
/// into `volume_hours`, one hour per call of `job` (each a transaction of the
/// caller's writer), merging with what an earlier roll-up of the hour left. Returns
/// the minute rows rolled up.
///
/// # Errors
/// What `job` or [`rusqlite`] return.
pub fn roll_up<E: From<rusqlite::Error>>(
    conn: &Connection,
    before: i64,
    mut job: impl FnMut(
        Box<dyn FnOnce(&Connection) -> Result<(), rusqlite::Error> + Send>,
    ) -> Result<(), E>,
) -> Result<u64, E> {
    let before = before.div_euclid(HOUR) * HOUR;
    let mut first = conn.prepare_cached("SELECT min(minute) FROM volume WHERE minute < ?1")?;
    let mut count =
        conn.prepare_cached("SELECT count(*) FROM volume WHERE minute >= ?1 AND minute < ?2")?;
    let mut rolled = 0u64;
    loop {
        let Some(m) = first.query_row([before], |r| r.get::<_, Option<i64>>(0))? else {
            return Ok(rolled);
        };
        let hour = m.div_euclid(HOUR) * HOUR;
        rolled += count.query_row([hour, hour + HOUR], |r| r.get::<_, i64>(0))? as u64;
        job(Box::new(move |c| roll_up_hour(c, hour)))?;
    }
}

/// Rolls up one hour (see [`roll_up`]), in the caller's transaction.
fn roll_up_hour(c: &Connection, hour: i64) -> Result<(), rusqlite::Error> {
    type HourKey = (i64, u8, u8, bool);
    let mut by: std::collections::BTreeMap<HourKey, Vec<(u8, Vec<Second>)>> = Default::default();
    {
        let mut q = c.prepare_cached(
            "SELECT stream_id, minute, level, flags, meta, seconds FROM volume
             WHERE minute >= ?1 AND minute < ?2",
        )?;
        let mut rows = q.query([hour, hour + HOUR])?;
        while let Some(r) = rows.next()? {
            let k = (
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(2)? as u8,
                r.get::<_, i64>(3)? as u8,
                r.get::<_, i64>(4)? != 0,
            );
            let m = ((r.get::<_, i64>(1)? - hour) / MINUTE) as u8;
            by.entry(k)
                .or_default()
                .push((m, decode(r.get_ref(5)?.as_blob()?)));
        }
    }
    let mut get = c.prepare_cached(
        "SELECT minutes FROM volume_hours WHERE stream_id = ?1 AND hour = ?2 AND level = ?3 AND flags = ?4 AND meta = ?5",
    )?;
    let mut put = c.prepare_cached(
        "INSERT OR REPLACE INTO volume_hours(stream_id, hour, level, flags, meta, minutes) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for ((stream, level, flags, meta), mut mins) in by {
        let p = params![stream, hour, level, flags, meta];
        let old: Option<Vec<u8>> = get.query_row(p, |r| r.get(0)).optional()?;
        if let Some(old) = old {
            mins.extend(minutes(&old).map(|(m, _, _, secs)| (m, decode(secs))));
        }
        mins.sort_by_key(|(m, _)| *m);
        let mut merged: Vec<(u8, Vec<Second>)> = Vec::with_capacity(mins.len());
        for (m, secs) in mins {
            match merged.last_mut() {
                Some((lm, ls)) if *lm == m => *ls = merge(ls, &secs),
                _ => merged.push((m, secs)),
            }
        }
        put.execute(params![
            stream,
            hour,
            level,
            flags,
            meta,
            encode_hour(&merged)
        ])?;
    }
    c.execute(
        "DELETE FROM volume WHERE minute >= ?1 AND minute < ?2",
        [hour, hour + HOUR],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn seconds_hold_the_half_open_interval_ending_on_them() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(1), (0, 1));
        assert_eq!(locate(SECOND), (0, 1));
        assert_eq!(locate(SECOND + 1), (0, 2));
        assert_eq!(locate(59 * SECOND + 1), (MINUTE, 0));
        assert_eq!(locate(-1), (0, 0));
        assert_eq!(locate(-SECOND - 1), (-MINUTE, 59));
        assert_eq!(instant(MINUTE, 0), MINUTE);
    }

    /// Every minute `read` gives for `streams` from a day before 2023-11-14 22:00 to a
    /// day after, summed per (key, second).
    fn counts(conn: &Connection, streams: &[i64]) -> BTreeMap<(Key, u8), (u64, u64)> {
        let mut out = BTreeMap::new();
        let h0 = 1_700_000_000 / 3600 * HOUR;
        read(conn, streams, h0 - 24 * HOUR, h0 + 24 * HOUR, |m| {
            let mut sum = (0, 0);
            for (s, c, b) in seconds(m.seconds) {
                let e: &mut (u64, u64) = out.entry((m.key, s)).or_default();
                e.0 += c;
                e.1 += b;
                sum = (sum.0 + c, sum.1 + b);
            }
            assert_eq!(m.totals(), sum);
        })
        .unwrap();
        out
    }

    #[test]
    fn hours_roll_up_and_late_lines_are_counted_beside_them() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value); CREATE TABLE streams (id INTEGER PRIMARY KEY);",
        )
        .unwrap();
        create(&conn).unwrap();
        let mut rng = 0x9e37_79b9_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let h0 = 1_700_000_000 / 3600 * HOUR;
        let mut add = |t: &mut Tally, n: usize, from: i64, span: i64| {
            for _ in 0..n {
                let ts = from + (next() % span as u64) as i64;
                let stream = 1 + (next() % 3) as i64;
                t.add(
                    stream,
                    ts,
                    (next() % 4) as u8,
                    (next() % 2) as u8,
                    next() % 9 == 0,
                    10,
                );
            }
        };
        let mut t = Tally::default();
        add(&mut t, 5_000, h0 - 30 * SECOND, 3 * HOUR);
        t.write(&conn).unwrap();
        let all = [1, 2, 3];
        let before = counts(&conn, &all);
        let job = |f: crate::hot::JobFn| f(&conn);
        // Before the third hour: the minutes of the first two (and of the 30 s
        // before them) are rolled up.
        let rolled = roll_up(&conn, h0 + 2 * HOUR + 17 * SECOND, job).unwrap();
        assert!(rolled > 0);
        let left: i64 = conn
            .query_row(
                "SELECT count(*) FROM volume WHERE minute < ?1",
                [h0 + 2 * HOUR],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
        assert_eq!(counts(&conn, &all), before);
        // Late lines for rolled-up hours: read beside the roll-up, then rolled in.
        add(&mut t, 700, h0, 2 * HOUR);
        t.write(&conn).unwrap();
        let with_late = counts(&conn, &all);
        assert_ne!(with_late, before);
        assert_eq!(
            with_late.values().map(|v| v.0).sum::<u64>(),
            before.values().map(|v| v.0).sum::<u64>() + 700
        );
        roll_up(&conn, h0 + 2 * HOUR, job).unwrap();
        assert_eq!(counts(&conn, &all), with_late);
        assert_eq!(roll_up(&conn, h0 + 2 * HOUR, job).unwrap(), 0);
        // A range inside an hour gets only its minutes.
        let mut n = 0;
        read(&conn, &all, h0 + 10 * MINUTE, h0 + 12 * MINUTE, |m| {
            assert!(m.key.minute >= h0 + 10 * MINUTE && m.key.minute <= h0 + 12 * MINUTE);
            n += 1;
        })
        .unwrap();
        assert!(n > 0);
    }

    #[test]
    fn encoding_round_trips_and_merges() {
        let a = vec![(0, 1, 10), (5, 300, 1 << 40)];
        assert_eq!(decode(&encode(&a)), a);
        let b = vec![(5, 1, 1), (59, 2, 2)];
        assert_eq!(
            merge(&a, &b),
            vec![(0, 1, 10), (5, 301, (1 << 40) + 1), (59, 2, 2)]
        );
        assert_eq!(decode(&[3, 0x80]), vec![]);
    }
}
