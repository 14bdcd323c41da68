//! The one reader across every tier.
//!
//! [`Source`] is the one view of stored data the query layer has, across tiers: it
//! selects streams by their labels, scans lines of a time range, and reads the agents'
//! pre-aggregates. One planner serves every tier: hot partitions and segments (warm
//! on local disk, cold through the local cache of the object store) are pruned by time
//! and stream (the catalog keeps each stream's time range per segment) and by the
//! segments' token bloom filters for `|=` filters. Ordered scans merge every source
//! lazily in `(ts, id)` order, newest first or oldest first: a segment is opened only
//! when the merge reaches its time range and is read in time slices, and a hot
//! section is decoded only when the merge reaches its time range, so memory stays
//! bounded. Unordered scans (for metric queries) read each source once, streaming:
//! segments in parallel, one worker thread per core, each taking the next segment and
//! sending the lines that pass the filters to the query's thread in bounded batches.
//!
//! [`ScanStats`] counts what a scan read and what the filters let it skip.
//!
//! A query runs in one SQLite read transaction, so a compaction committing meanwhile
//! cannot make it see a line twice or miss it.

use crate::catalog::{self, Candidate, Tier};
use crate::cold::ColdStore;
use crate::columnar::{NeedlePlan, Probe, Sieve, TemplateView, Verdict};
use crate::filter::Needles;
use crate::hot;
use crate::hot_block::{self, Merge};
use crate::hot_index::{HotIndex, Plan};
use crate::segment::{self, Columns, RowRef, SegmentFile, Selection};
use heimdall_common::record::Labels;
use heimdall_logql::{FilterOp, LineFilter, Matcher};
use rusqlite::{Connection, OptionalExtension};
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Query failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hot store failed.
    #[error("hot store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A segment could not be read.
    #[error(transparent)]
    Segment(#[from] segment::Error),
    /// The cold tier could not be read.
    #[error(transparent)]
    Cold(#[from] crate::cold::Error),
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

/// One stored line, from whichever tier (the hot store's row type).
pub use super::hot::Row;

/// The order a scan returns lines in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Oldest first, by `(ts, id)`.
    Forward,
    /// Newest first.
    Backward,
    /// Whatever is cheapest (metric queries).
    Any,
}

/// The segment tiers a source reads besides the hot tier.
#[derive(Clone, Default)]
pub struct Tiers {
    /// Warm segment files.
    pub warm_dir: PathBuf,
    /// The cold tier, when configured.
    pub cold: Option<Arc<ColdStore>>,
    /// Token filters over blocks of hot rows, when the hot store runs in this process.
    pub hot_index: Option<HotIndex>,
    /// Segments' bloom filters, kept in memory between queries.
    pub blooms: BloomCache,
}

/// Most bytes of segment bloom filters kept in memory (segments are immutable, so a
/// cached filter never goes stale; a rewritten segment has a new id).
pub const BLOOM_CACHE_BYTES: usize = 512 << 20;

/// Bloom filters by segment id (the segment's, and its row groups'), least recently
/// used out beyond [`BLOOM_CACHE_BYTES`].
#[derive(Clone, Default)]
pub struct BloomCache {
    inner: Arc<std::sync::Mutex<BloomLru>>,
}

type Blooms = Arc<Vec<crate::filter::Bloom>>;

#[derive(Default)]
struct BloomLru {
    /// (segment id, 0 for the segment's filter or 1 for its row groups').
    map: HashMap<(i64, u8), (Blooms, usize, u64)>,
    bytes: usize,
    tick: u64,
}

impl BloomCache {
    fn cached(
        &self,
        key: (i64, u8),
        load: impl FnOnce() -> Result<Vec<crate::filter::Bloom>, rusqlite::Error>,
    ) -> Result<Blooms, rusqlite::Error> {
        {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            g.tick += 1;
            let t = g.tick;
            if let Some((b, _, used)) = g.map.get_mut(&key) {
                *used = t;
                return Ok(b.clone());
            }
        }
        let b: Blooms = Arc::new(load()?);
        let size: usize = b.iter().map(crate::filter::Bloom::byte_size).sum::<usize>() + 64;
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while g.bytes + size > BLOOM_CACHE_BYTES && !g.map.is_empty() {
            let oldest = g
                .map
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| *k)
                .expect("non-empty");
            if let Some((_, sz, _)) = g.map.remove(&oldest) {
                g.bytes -= sz;
            }
        }
        let t = g.tick;
        if let Some((_, old, _)) = g.map.insert(key, (b.clone(), size, t)) {
            g.bytes -= old;
        }
        g.bytes += size;
        metrics::gauge!("heimdall_aggregator_bloom_cache_bytes").set(g.bytes as f64);
        Ok(b)
    }

    /// The filter of segment `id` (none for a segment without one).
    fn segment(&self, conn: &Connection, id: i64) -> Result<Blooms, rusqlite::Error> {
        self.cached((id, 0), || {
            Ok(catalog::bloom(conn, id)?.into_iter().collect())
        })
    }

    /// The filters of segment `id`'s row groups, in file order.
    fn row_groups(&self, conn: &Connection, id: i64) -> Result<Blooms, rusqlite::Error> {
        self.cached((id, 1), || catalog::row_group_blooms(conn, id))
    }
}

/// The stored data a query reads.
pub struct Source<'a> {
    pub hot: &'a Connection,
    tiers: Option<&'a Tiers>,
    /// Set when the query's client has gone away.
    cancel: Option<&'a AtomicBool>,
    stats: ScanStats,
    /// Worker threads of unordered segment scans.
    threads: usize,
}

/// What a query's scans read, and what the planner let them skip.
#[derive(Debug, Default)]
pub struct ScanStats {
    lines: AtomicU64,
    bytes: AtomicU64,
    segments_read: AtomicU64,
    segments_pruned: AtomicU64,
    row_groups_read: AtomicU64,
    row_groups_pruned: AtomicU64,
    row_groups_passed: AtomicU64,
    hot_sections_read: AtomicU64,
    hot_sections_pruned: AtomicU64,
}

/// A copy of [`ScanStats`]' counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanCounts {
    /// Lines decoded and checked against the query, before its line filters.
    pub lines: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Segments opened.
    pub segments_read: u64,
    /// Segments in the time range and streams whose needle filter ruled them out.
    pub segments_pruned: u64,
    /// Row groups decoded (an ordered scan reads a segment in time slices, so a row
    /// group may be decoded once per slice it overlaps).
    pub row_groups_read: u64,
    /// Row groups whose needle filter ruled them out.
    pub row_groups_pruned: u64,
    /// Row groups whose needle filter let them through (with `row_groups_pruned`,
    /// every row group of the candidate segments, when the query has a needle).
    pub row_groups_passed: u64,
    /// Hot sections decoded.
    pub hot_sections_read: u64,
    /// Hot sections whose block's needle filters ruled them out.
    pub hot_sections_pruned: u64,
}

impl ScanStats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn counts(&self) -> ScanCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ScanCounts {
            lines: l(&self.lines),
            bytes: l(&self.bytes),
            segments_read: l(&self.segments_read),
            segments_pruned: l(&self.segments_pruned),
            row_groups_read: l(&self.row_groups_read),
            row_groups_pruned: l(&self.row_groups_pruned),
            row_groups_passed: l(&self.row_groups_passed),
            hot_sections_read: l(&self.hot_sections_read),
            hot_sections_pruned: l(&self.hot_sections_pruned),
        }
    }
}

/// Most worker threads an unordered scan uses.
pub const MAX_SCAN_THREADS: usize = 16;

/// Most lines passing a query's line filters that an ordered scan reads from a
/// segment in one go (see `fill_segment`).
const WHOLE_READ_ROWS: usize = 65_536;

/// In merge order: `(ts, id)` ascending, or descending when `backward`.
fn sort_rows(rows: &mut [Row], backward: bool) {
    if backward {
        rows.sort_by_key(|r| std::cmp::Reverse((r.ts, r.id)));
    } else {
        rows.sort_by_key(|r| (r.ts, r.id));
    }
}

/// A needle's hot blocks are read by id when at most one in this many of the
/// partition's blocks may match.
const BY_ID_BLOCKS: usize = 4;

/// Lines a scan worker sends in one batch.
const SCAN_BATCH: usize = 1024;

/// Rows per hot page and the smallest segment slice worth reading.
const PAGE: usize = 2048;

/// What to read of a hot partition: its sections that may hold wanted rows, and the
/// id ranges (sorted, disjoint, inclusive) the rows must fall in when the token index
/// pruned it.
struct HotPart {
    sections: Vec<hot_block::Meta>,
    ids: Option<Vec<(i64, i64)>>,
}

impl HotPart {
    fn wants(&self, id: i64) -> bool {
        let Some(r) = &self.ids else { return true };
        let i = r.partition_point(|&(_, hi)| hi < id);
        r.get(i).is_some_and(|&(lo, _)| lo <= id)
    }
}

struct HotRun {
    part: Arc<HotPart>,
    merge: Merge,
    buf: VecDeque<Row>,
    done: bool,
}

struct SegRun {
    cand: Candidate,
    file: Option<SegmentFile>,
    wanted: HashSet<i64>,
    /// Catalog stream id by file stream id.
    map: HashMap<i64, i64>,
    /// The part of the range not read yet: `[lo, hi)`.
    lo: i64,
    hi: i64,
    width: i64,
    buf: VecDeque<Row>,
}

enum Run {
    Hot(Box<HotRun>),
    Seg(Box<SegRun>),
}

/// A run's place in a merge: the key `(ts, id)` of its next row; the heap pops the
/// smallest key first, or the largest when `backward` (ties: the lower run first).
/// Shared by the tiers' merge here and the hot sections' ([`crate::hot_block::Merge`]).
#[derive(PartialEq, Eq)]
pub(crate) struct HeapEntry {
    pub(crate) key: (i64, i64),
    pub(crate) run: usize,
    pub(crate) backward: bool,
}

impl Ord for HeapEntry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        let c = self.key.cmp(&o.key).then(o.run.cmp(&self.run));
        if self.backward {
            c
        } else {
            c.reverse()
        }
    }
}

impl PartialOrd for HeapEntry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// What `filters` (every line of use passes them) need of a line, as needle filters
/// can check it: their needles, and the literals of their regular expressions.
fn needles(filters: &[&LineFilter]) -> Needles {
    let mut n = Needles::default();
    for f in filters {
        match f.op {
            FilterOp::Contains => n.contains(f.pattern.as_bytes()),
            FilterOp::Re => n.regex(&f.pattern),
            _ => {}
        }
    }
    n
}

/// An unordered scan of segments, shared by its workers: each takes the next
/// candidate and reads it whole.
struct SegmentScan<'s> {
    tiers: &'s Tiers,
    cands: &'s [Candidate],
    start: i64,
    end: i64,
    filters: &'s [&'s LineFilter],
    /// What the filters tell from a template alone (reads that need no line but to
    /// filter it).
    prefilter: Option<&'s (dyn Fn(&TemplateView<'_>) -> Verdict + Sync)>,
    deadline: Option<Instant>,
    cancel: Option<&'s AtomicBool>,
    stats: &'s ScanStats,
    next: AtomicUsize,
    /// Set when the query needs no more lines (or failed).
    stop: AtomicBool,
}

impl SegmentScan<'_> {
    fn check(&self) -> Result<(), Error> {
        interrupted(self.cancel, self.deadline)
    }

    /// Reads candidates until none is left, the scan is stopped or `sink` returns
    /// `false`, giving `sink` each line that passes the filters (its stream id the
    /// catalog's); `Ok(false)` when `sink` wants no more.
    fn work(
        &self,
        cols: Columns,
        sink: &mut dyn FnMut(RowRef<'_>) -> Result<bool, Error>,
    ) -> Result<bool, Error> {
        // The worker's own copy of the filters: a regex shared between threads hands
        // its search caches out under a lock, a copy keeps its own.
        let filters: Vec<LineFilter> = self.filters.iter().map(|f| (*f).clone()).collect();
        while !self.stop.load(Ordering::Relaxed) {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(c) = self.cands.get(i) else {
                return Ok(true);
            };
            let r = self.one(c, cols, &filters, sink);
            if !matches!(r, Ok(true)) {
                self.stop.store(true, Ordering::Relaxed);
                return r;
            }
        }
        Ok(true)
    }

    /// Reads one candidate; `Ok(false)` when `sink` wants no more.
    fn one(
        &self,
        c: &Candidate,
        cols: Columns,
        filters: &[LineFilter],
        sink: &mut dyn FnMut(RowRef<'_>) -> Result<bool, Error>,
    ) -> Result<bool, Error> {
        self.check()?;
        let file = open_segment(self.tiers, c)?;
        ScanStats::add(&self.stats.segments_read, 1);
        let wanted: HashSet<i64> = c.streams.iter().map(|s| s.file_stream_id).collect();
        let map: HashMap<i64, i64> = c
            .streams
            .iter()
            .map(|s| (s.file_stream_id, s.stream_id))
            .collect();
        let (mut n, mut bytes) = (0u64, 0u64);
        let mut failed: Option<Error> = None;
        let mut open = true;
        // The file's stream id and the catalog's, of the row before.
        let mut last: Option<(i64, i64)> = None;
        let groups = file.visit(
            &Selection {
                streams: &wanted,
                start: self.start,
                end: self.end,
                row_groups: c.row_groups.as_deref().map(Vec::as_slice),
                prefilter: self
                    .prefilter
                    .map(|f| f as &dyn Fn(&TemplateView<'_>) -> Verdict),
            },
            false,
            cols,
            |mut r, _| {
                n += 1;
                bytes += r.line.len() as u64;
                if n % 4096 == 0 {
                    if let Err(e) = self.check() {
                        failed = Some(e);
                        return false;
                    }
                    if self.stop.load(Ordering::Relaxed) {
                        open = false;
                        return false;
                    }
                }
                if !r.passes && !filters.iter().all(|f| f.matches(r.line)) {
                    return true;
                }
                r.stream_id = match last {
                    Some((file, id)) if file == r.stream_id => id,
                    _ => {
                        let id = map[&r.stream_id];
                        last = Some((r.stream_id, id));
                        id
                    }
                };
                match sink(r) {
                    Ok(more) => open = more,
                    Err(e) => failed = Some(e),
                }
                open && failed.is_none()
            },
        )?;
        ScanStats::add(&self.stats.row_groups_read, groups as u64);
        ScanStats::add(&self.stats.lines, n);
        ScanStats::add(&self.stats.bytes, bytes);
        failed.map_or(Ok(open), Err)
    }
}

/// About how many bytes of hot sections' stored data one thread is handed at a time.
const HOT_BATCH_BYTES: usize = 1 << 20;

/// Most template texts a [`Judge`] keeps plans for; past it they are dropped and
/// made again.
const MAX_PLANNED_TEMPLATES: usize = 16_384;

/// A group of literals as a template is probed for it: the text they all start or
/// all end with, when it is all but the last byte or two of each (`status=5` for
/// `status=50` … `status=59`), which a line holding one of them holds too; probing one
/// needle is a tenth of the work of probing ten, and rules out nearly as much.
fn shared_affix(group: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let (Some(first), true) = (group.first(), group.len() > 1) else {
        return group;
    };
    let shortest = group.iter().map(Vec::len).min().unwrap_or(0);
    let mut pre = first.len();
    let mut suf = first.len();
    for l in &group[1..] {
        pre = pre.min(first.iter().zip(l).take_while(|(a, b)| a == b).count());
        suf = suf.min(
            first
                .iter()
                .rev()
                .zip(l.iter().rev())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    let (len, at_start) = if pre >= suf {
        (pre, true)
    } else {
        (suf, false)
    };
    if len < 3 || len + 2 < shortest {
        return group;
    }
    let affix = if at_start {
        first[..len].to_vec()
    } else {
        first[first.len() - len..].to_vec()
    };
    vec![affix]
}

/// What line filters (all of which a line must pass) tell of a template's lines from
/// the template alone, for one read. What a template's text fixes is planned once
/// per text and kept, since one template is in many blocks.
struct Judge<'f> {
    filters: &'f [&'f LineFilter],
    /// Per filter, the literal groups of a regular expression (every line it
    /// matches holds a literal of each group).
    literals: Vec<Vec<Vec<Vec<u8>>>>,
    /// The read needs every passing line (a template all of whose lines pass is
    /// still rebuilt).
    line: bool,
    /// Per template text, the plans of the needles in the order `verdict` asks.
    plans: std::sync::Mutex<HashMap<Vec<u8>, Arc<Vec<NeedlePlan>>>>,
}

impl<'f> Judge<'f> {
    fn new(filters: &'f [&'f LineFilter], line: bool) -> Judge<'f> {
        Judge {
            filters,
            literals: filters
                .iter()
                .map(|f| match f.op {
                    FilterOp::Re => crate::filter::regex_literals(&f.pattern)
                        .into_iter()
                        .map(shared_affix)
                        .collect(),
                    _ => Vec::new(),
                })
                .collect(),
            line,
            plans: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The needles a template is probed for, in order.
    fn needles(&self) -> impl Iterator<Item = &[u8]> {
        self.filters
            .iter()
            .zip(&self.literals)
            .flat_map(|(f, groups)| {
                let own = (f.op == FilterOp::Contains).then_some(f.pattern.as_bytes());
                own.into_iter()
                    .chain(groups.iter().flatten().map(Vec::as_slice))
            })
    }

    /// The plans of the needles for `t`'s text.
    fn plans(&self, t: &TemplateView<'_>) -> Arc<Vec<NeedlePlan>> {
        let lock = || self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = lock().get(t.text()) {
            return p.clone();
        }
        let made: Arc<Vec<NeedlePlan>> = Arc::new(self.needles().map(|n| t.plan(n)).collect());
        let mut plans = lock();
        if plans.len() >= MAX_PLANNED_TEMPLATES {
            plans.clear();
        }
        plans.insert(t.text().to_vec(), made.clone());
        made
    }

    /// The verdict for `t`'s lines. When the template cannot decide, the needles'
    /// checks of each line's variables sieve out the lines that cannot pass before
    /// any is rebuilt.
    fn verdict(&self, t: &TemplateView<'_>) -> Verdict {
        let plans = self.plans(t);
        let mut plans = plans.iter();
        let mut probe = |n: &[u8]| match plans.next() {
            Some(p) => t.probe_planned(n, p),
            None => t.probe(n),
        };
        let mut every = true;
        let mut sieve = Sieve::default();
        for (f, groups) in self.filters.iter().zip(&self.literals) {
            let p = f.pattern.as_bytes();
            match f.op {
                FilterOp::Contains => match probe(p) {
                    Probe::Always => {}
                    Probe::Never => return Verdict::No,
                    Probe::Rows(p) => {
                        every = false;
                        sieve.clauses.push(vec![*p]);
                    }
                },
                FilterOp::NotContains if t.always_holds(p) => return Verdict::No,
                FilterOp::NotContains if !t.may_hold(p) => {}
                _ => every = false,
            }
            // Every literal of every group is probed, in order, as `needles` lists
            // them.
            let mut no = false;
            for g in groups {
                let (mut clause, mut always) = (Vec::with_capacity(g.len()), false);
                for l in g {
                    match probe(l) {
                        Probe::Always => always = true,
                        Probe::Never => {}
                        Probe::Rows(p) => clause.push(*p),
                    }
                }
                if always {
                    continue;
                }
                if clause.is_empty() {
                    no = true;
                }
                sieve.clauses.push(clause);
            }
            if no {
                return Verdict::No;
            }
        }
        if every && !self.line {
            Verdict::Every
        } else if sieve.clauses.is_empty() {
            Verdict::Each
        } else {
            Verdict::Sieve(sieve)
        }
    }
}

/// [`Error::Cancelled`] once the client has gone, [`Error::Timeout`] past the deadline.
fn interrupted(cancel: Option<&AtomicBool>, deadline: Option<Instant>) -> Result<(), Error> {
    if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
        return Err(Error::Cancelled);
    }
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return Err(Error::Timeout);
    }
    Ok(())
}

/// A stored row as a query's (its line copied once).
fn row_of(r: RowRef<'_>) -> Row {
    Row::from(r.into_row())
}

/// Whether a row (`ts`, `id`, `line`) of a hot section listed for a scan of
/// `[start, end)` is one the scan wants: in the range (known of every row when the
/// section lies `inside` it) with an id the needle's blocks kept. Such rows and their
/// bytes are counted as read. Then whether it passes `filters`. The listing already
/// chose the section's stream.
fn hot_row_passes(
    (ts, id, line): (i64, i64, &[u8]),
    (start, end): (i64, i64),
    inside: bool,
    part: &HotPart,
    filters: &[&LineFilter],
    read: &mut (u64, u64),
) -> bool {
    let keep = (inside || (ts >= start && ts < end)) && part.wants(id);
    if keep {
        read.0 += 1;
        read.1 += line.len() as u64;
    }
    keep && filters.iter().all(|f| f.matches(line))
}

/// Gives `each` the rows of one listed hot section `m`, as `rows` decodes them, that
/// a scan of `[start, end)` wants and `filters` pass, until `each` returns `false`;
/// counts the section and what was read in `stats`. A section inside the range has
/// no row's time checked.
fn hot_section(
    stats: &ScanStats,
    (start, end): (i64, i64),
    part: &HotPart,
    m: &hot_block::Meta,
    filters: &[&LineFilter],
    rows: impl FnOnce(&mut dyn FnMut(RowRef<'_>) -> bool) -> Result<(), rusqlite::Error>,
    each: &mut dyn FnMut(RowRef<'_>) -> bool,
) -> Result<(), rusqlite::Error> {
    ScanStats::add(&stats.hot_sections_read, 1);
    let inside = m.min_ts >= start && m.max_ts < end;
    let mut read = (0u64, 0u64);
    rows(&mut |r| {
        !hot_row_passes(
            (r.ts, r.id, r.line),
            (start, end),
            inside,
            part,
            filters,
            &mut read,
        ) || each(r)
    })?;
    ScanStats::add(&stats.lines, read.0);
    ScanStats::add(&stats.bytes, read.1);
    Ok(())
}

/// Opens a candidate segment: warm from its directory (or, uploaded and removed since
/// the query's snapshot, from the cold tier, which holds the same bytes), cold through
/// the local cache.
fn open_segment(tiers: &Tiers, c: &Candidate) -> Result<SegmentFile, Error> {
    let path = match c.segment.tier {
        Tier::Warm => {
            let p = tiers.warm_dir.join(&c.segment.name);
            match (&tiers.cold, p.exists()) {
                (Some(cold), false) => {
                    cold.fetch(&c.segment.name, c.segment.bytes, c.segment.checksum)?
                }
                _ => p,
            }
        }
        Tier::Cold => match &tiers.cold {
            Some(cold) => cold.fetch(&c.segment.name, c.segment.bytes, c.segment.checksum)?,
            None => {
                return Err(Error::Eval(format!(
                    "segment {} is in the cold tier, which is not configured",
                    c.segment.name
                )))
            }
        },
    };
    Ok(SegmentFile::open(&path)?)
}

impl<'a> Source<'a> {
    /// A source over the hot store only.
    pub fn hot(conn: &'a Connection) -> Source<'a> {
        Source {
            hot: conn,
            tiers: None,
            cancel: None,
            stats: ScanStats::default(),
            threads: std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(MAX_SCAN_THREADS),
        }
    }

    /// Unordered scans read segments with `n` worker threads (1: in the query's
    /// thread); the default is one per core.
    pub fn with_threads(mut self, n: usize) -> Source<'a> {
        self.threads = n.clamp(1, MAX_SCAN_THREADS);
        self
    }

    /// What this source's scans have read so far.
    pub fn scanned(&self) -> ScanCounts {
        self.stats.counts()
    }

    /// Reads segments too.
    pub fn with_tiers(mut self, tiers: &'a Tiers) -> Source<'a> {
        self.tiers = Some(tiers);
        self
    }

    /// Scans stop with [`Error::Cancelled`] once `flag` is set.
    pub fn with_cancel(mut self, flag: &'a AtomicBool) -> Source<'a> {
        self.cancel = Some(flag);
        self
    }

    fn check(&self, deadline: Option<Instant>) -> Result<(), Error> {
        interrupted(self.cancel, deadline)
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

    /// Segments that may hold lines of `streams` in `[start, end)` passing `filters`.
    fn segments(
        &self,
        streams: &[i64],
        start: i64,
        end: i64,
        filters: &[&LineFilter],
    ) -> Result<Vec<Candidate>, Error> {
        if self.tiers.is_none() {
            return Ok(Vec::new());
        }
        let needles = needles(filters);
        let mut out = Vec::new();
        let cache = self.tiers.map(|t| &t.blooms);
        for mut c in catalog::candidates(self.hot, streams, start, end)? {
            if !needles.is_empty() {
                let passes = |b: &crate::filter::Bloom| needles.may_match(b);
                let seg = match cache {
                    Some(cache) => cache.segment(self.hot, c.segment.id)?,
                    None => Arc::new(
                        catalog::bloom(self.hot, c.segment.id)?
                            .into_iter()
                            .collect(),
                    ),
                };
                if seg.first().is_some_and(|b| !passes(b)) {
                    metrics::counter!("heimdall_aggregator_query_segments_pruned_total")
                        .increment(1);
                    ScanStats::add(&self.stats.segments_pruned, 1);
                    continue;
                }
                let groups = match cache {
                    Some(cache) => cache.row_groups(self.hot, c.segment.id)?,
                    None => Arc::new(catalog::row_group_blooms(self.hot, c.segment.id)?),
                };
                if !groups.is_empty() {
                    let keep: Vec<bool> = groups.iter().map(passes).collect();
                    let skipped = keep.iter().filter(|k| !**k).count();
                    metrics::counter!("heimdall_aggregator_query_row_groups_pruned_total")
                        .increment(skipped as u64);
                    ScanStats::add(&self.stats.row_groups_pruned, skipped as u64);
                    ScanStats::add(&self.stats.row_groups_passed, (keep.len() - skipped) as u64);
                    if skipped == keep.len() {
                        ScanStats::add(&self.stats.segments_pruned, 1);
                        continue;
                    }
                    if skipped > 0 {
                        c.row_groups = Some(Arc::new(keep));
                    }
                }
            }
            out.push(c);
        }
        Ok(out)
    }

    /// What to read of hot partition `p` for `streams` in `[start, end)` and
    /// `filters`: sections by stream and time, then by the token index's blocks.
    fn hot_part(
        &self,
        p: &hot::Partition,
        streams: &[i64],
        start: i64,
        end: i64,
        filters: &[&LineFilter],
    ) -> Result<HotPart, Error> {
        let needles = needles(filters);
        let plan = self
            .tiers
            .and_then(|t| t.hot_index.as_ref())
            .map_or(Plan::All, |ix| ix.plan(&p.name, &needles));
        let b = match plan {
            Plan::All => {
                return Ok(HotPart {
                    sections: hot_block::list(self.hot, &p.name, Some(streams), start, end)?,
                    ids: None,
                })
            }
            Plan::Blocks(b) => b,
        };
        metrics::counter!("heimdall_aggregator_query_hot_blocks_read_total")
            .increment(b.len() as u64);
        // Few blocks: their sections are found by id (every section lies inside the
        // block it was indexed in), which reads the table's rows in the blocks' id
        // ranges. Many: every section of the streams is listed from the index, which
        // holds all but their data, and those outside the blocks dropped.
        let by_id = self
            .tiers
            .and_then(|t| t.hot_index.as_ref())
            .and_then(|ix| ix.whole_sections(&p.name))
            .is_some_and(|total| b.len().saturating_mul(BY_ID_BLOCKS) <= total);
        let mut r: Vec<(i64, i64)> = b.into_iter().map(|(a, z, _, _)| (a, z)).collect();
        r.sort_unstable();
        let mut ids: Vec<(i64, i64)> = Vec::with_capacity(r.len());
        for (a, z) in r {
            match ids.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(z),
                _ => ids.push((a, z)),
            }
        }
        let (sections, before) = if by_id {
            let wanted: HashSet<i64> = streams.iter().copied().collect();
            let sections = hot_block::list_in(self.hot, &p.name, &wanted, (start, end), &ids)?;
            let before = hot_block::count(self.hot, &p.name, streams, start, end)?;
            (sections, before)
        } else {
            let mut sections = hot_block::list(self.hot, &p.name, Some(streams), start, end)?;
            let before = sections.len() as i64;
            sections.retain(|m| {
                let i = ids.partition_point(|&(_, hi)| hi < m.id);
                ids.get(i).is_some_and(|&(lo, _)| lo <= m.last_id)
            });
            (sections, before)
        };
        ScanStats::add(
            &self.stats.hot_sections_pruned,
            u64::try_from(before - sections.len() as i64).unwrap_or(0),
        );
        Ok(HotPart {
            sections,
            ids: Some(ids),
        })
    }

    fn open_segment(&self, c: &Candidate) -> Result<SegmentFile, Error> {
        let tiers = self.tiers.expect("segments are listed only with tiers");
        let f = open_segment(tiers, c)?;
        ScanStats::add(&self.stats.segments_read, 1);
        Ok(f)
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
        let parts: Vec<hot::Partition> = hot::partitions(self.hot)?
            .into_iter()
            .filter(|p| p.end > start && p.start < end)
            .collect();
        let mut seg = self.hot.prepare_cached(
            "SELECT 1 FROM segment_streams ss JOIN segments s ON s.id = ss.segment_id
             WHERE ss.stream_id = ?1 AND ss.max_ts >= ?2 AND ss.min_ts < ?3 AND s.state IN ('active', 'uploading') LIMIT 1",
        )?;
        let mut out = Vec::new();
        for (id, l) in self.streams(matchers)? {
            let mut has = seg
                .query_row(rusqlite::params![id, start, end], |_| Ok(()))
                .optional()?
                .is_some();
            for p in &parts {
                if has {
                    break;
                }
                // A section overlapping the range may still hold no line inside it.
                for m in hot_block::list(self.hot, &p.name, Some(&[id]), start, end)? {
                    if m.min_ts >= start && m.max_ts < end {
                        has = true;
                    } else {
                        has = !hot_block::read(self.hot, &p.name, m.id, |r| {
                            r.ts >= start && r.ts < end
                        })?
                        .is_empty();
                    }
                    if has {
                        break;
                    }
                }
            }
            if has {
                out.push((id, l));
            }
        }
        Ok(out)
    }

    /// Entries and bytes of `streams` in `[start, end)`: from the agents'
    /// pre-aggregates where they cover a stream, else counted from the hot tier and the
    /// catalog (whole segments, so an estimate at the range's edges).
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
        let parts = hot::partitions(self.hot)?;
        for s in lines {
            for p in parts.iter().filter(|p| p.end > start && p.start < end) {
                for m in hot_block::list(self.hot, &p.name, Some(&[s]), start, end)? {
                    if m.min_ts >= start && m.max_ts < end {
                        entries += m.rows as u64;
                        bytes += m.bytes as u64;
                        continue;
                    }
                    for r in
                        hot_block::read(self.hot, &p.name, m.id, |r| r.ts >= start && r.ts < end)?
                    {
                        entries += 1;
                        bytes += r.line.len() as u64;
                    }
                }
            }
            for c in catalog::candidates(self.hot, &[s], start, end)? {
                entries += c.rows();
                let frac = c.rows() as f64 / c.segment.rows.max(1) as f64;
                bytes += (c.segment.raw_bytes as f64 * frac) as u64;
            }
        }
        Ok((entries, bytes))
    }

    /// Calls `each` for the lines of `streams` in `[start, end)` in `order`, until it
    /// returns `false`. `filters` are line filters every line of use passes; lines
    /// failing them may be skipped. Returns `false` when the deadline stopped the scan.
    ///
    /// # Errors
    /// [`Error`] (not [`Error::Timeout`]: a deadline ends the scan with `Ok(false)`).
    #[allow(clippy::too_many_arguments)]
    pub fn scan(
        &self,
        streams: &[i64],
        start: i64,
        end: i64,
        order: Order,
        filters: &[&LineFilter],
        deadline: Option<Instant>,
        mut each: impl FnMut(Row) -> bool,
    ) -> Result<bool, Error> {
        if streams.is_empty() || start >= end {
            return Ok(true);
        }
        let res = match order {
            Order::Any => self.scan_any(streams, start, end, filters, deadline, &mut each),
            Order::Forward | Order::Backward => self.scan_ordered(
                streams,
                start,
                end,
                order == Order::Backward,
                filters,
                deadline,
                &mut each,
            ),
        };
        match res {
            Err(Error::Timeout) => Ok(false),
            other => other.map(|()| true),
        }
    }

    fn scan_any(
        &self,
        streams: &[i64],
        start: i64,
        end: i64,
        filters: &[&LineFilter],
        deadline: Option<Instant>,
        each: &mut impl FnMut(Row) -> bool,
    ) -> Result<(), Error> {
        if !self.hot_any(streams, start, end, filters, deadline, &mut |r| {
            Ok(each(row_of(r)))
        })? {
            return Ok(());
        }
        let cands = self.segments(streams, start, end, filters)?;
        if cands.is_empty() {
            return Ok(());
        }
        let tiers = self.tiers.expect("segments are listed only with tiers");
        let judge = Judge::new(filters, true);
        let judge = |t: &TemplateView<'_>| judge.verdict(t);
        let job = SegmentScan {
            tiers,
            cands: &cands,
            start,
            end,
            filters,
            prefilter: (!filters.is_empty())
                .then_some(&judge as &(dyn Fn(&TemplateView<'_>) -> Verdict + Sync)),
            deadline,
            cancel: self.cancel,
            stats: &self.stats,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        };
        let workers = self.threads.min(cands.len());
        if workers <= 1 {
            job.work(Columns::ALL, &mut |r| Ok(each(row_of(r))))?;
            return Ok(());
        }
        std::thread::scope(|sc| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Row>, Error>>(workers * 2);
            for _ in 0..workers {
                let tx = tx.clone();
                let job = &job;
                sc.spawn(move || {
                    let mut batch: Vec<Row> = Vec::with_capacity(SCAN_BATCH);
                    let done = job.work(Columns::ALL, &mut |r| {
                        batch.push(row_of(r));
                        Ok(batch.len() < SCAN_BATCH
                            || tx
                                .send(Ok(std::mem::replace(
                                    &mut batch,
                                    Vec::with_capacity(SCAN_BATCH),
                                )))
                                .is_ok())
                    });
                    let _ = match done {
                        Ok(true) if !batch.is_empty() => tx.send(Ok(batch)),
                        Err(e) => tx.send(Err(e)),
                        _ => Ok(()),
                    };
                });
            }
            drop(tx);
            // Returning drops the receiver, so workers blocked on sending stop.
            for batch in rx {
                match batch {
                    Ok(rows) => {
                        for r in rows {
                            if !each(r) {
                                job.stop.store(true, Ordering::Relaxed);
                                return Ok(());
                            }
                        }
                    }
                    Err(e) => {
                        job.stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok(())
        })
    }

    /// Gives `sink` the hot lines of `streams` in `[start, end)` that pass `filters`,
    /// section by section; `Ok(false)` when `sink` wants no more.
    fn hot_any(
        &self,
        streams: &[i64],
        start: i64,
        end: i64,
        filters: &[&LineFilter],
        deadline: Option<Instant>,
        sink: &mut dyn FnMut(RowRef<'_>) -> Result<bool, Error>,
    ) -> Result<bool, Error> {
        for p in hot::partitions(self.hot)? {
            if p.end <= start || p.start >= end {
                continue;
            }
            let part = self.hot_part(&p, streams, start, end, filters)?;
            let ids: Vec<i64> = part.sections.iter().map(|m| m.id).collect();
            let mut res = Ok(true);
            hot_block::scan_data(self.hot, &p.name, &ids, |i, data| {
                let m = &part.sections[i];
                if let Err(e) = self.check(deadline) {
                    res = Err(e);
                    return Ok(false);
                }
                hot_section(
                    &self.stats,
                    (start, end),
                    &part,
                    m,
                    filters,
                    |f| hot_block::decode_each(m.id, m.stream_id, data, f),
                    &mut |r| {
                        res = sink(r);
                        matches!(res, Ok(true))
                    },
                )?;
                Ok(matches!(res, Ok(true)))
            })?;
            if !res? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// [`Source::hot_any`] on every core, into per-thread accumulators: this thread
    /// (whose connection holds the query's snapshot) fetches each section's stored
    /// data and hands it to `self.threads` others, which decode and filter it; when
    /// they are all busy it decodes the section itself. At most a few sections a
    /// thread wait between them.
    #[allow(clippy::too_many_arguments)]
    fn hot_tally<T: Send>(
        &self,
        streams: &[i64],
        start: i64,
        end: i64,
        filters: &[&LineFilter],
        deadline: Option<Instant>,
        init: &(impl Fn() -> T + Sync),
        add: &(impl Fn(&mut T, RowRef<'_>) -> Result<(), Error> + Sync),
    ) -> Result<Vec<T>, Error> {
        let parts = hot::partitions(self.hot)?
            .into_iter()
            .filter(|p| p.end > start && p.start < end)
            .map(|p| {
                let part = self.hot_part(&p, streams, start, end, filters)?;
                Ok((p.name, Arc::new(part)))
            });
        self.hot_parallel(parts, (start, end), filters, deadline, init, add)
    }

    /// [`Source::hot_tally`] over the given partitions' listed sections (each with
    /// the partition's table name), taken in the order given.
    #[allow(clippy::too_many_arguments)]
    fn hot_parallel<T: Send>(
        &self,
        parts: impl Iterator<Item = Result<(String, Arc<HotPart>), Error>>,
        (start, end): (i64, i64),
        filters: &[&LineFilter],
        deadline: Option<Instant>,
        init: &(impl Fn() -> T + Sync),
        add: &(impl Fn(&mut T, RowRef<'_>) -> Result<(), Error> + Sync),
    ) -> Result<Vec<T>, Error> {
        let stop = AtomicBool::new(false);
        // What the threads use of `self` (its connection stays on this thread).
        let (stats, cancel) = (&self.stats, self.cancel);
        // One section's rows into `t`, read with `filters` (the thread's own copies).
        let decode = |t: &mut T,
                      filters: &[&LineFilter],
                      part: &HotPart,
                      i: usize,
                      data: &[u8]|
         -> Result<(), Error> {
            let m = &part.sections[i];
            let mut res = Ok(());
            hot_section(
                stats,
                (start, end),
                part,
                m,
                filters,
                |f| hot_block::decode_each(m.id, m.stream_id, data, f),
                &mut |r| {
                    res = add(t, r);
                    res.is_ok()
                },
            )?;
            res
        };
        let own = || -> Vec<LineFilter> { filters.iter().map(|f| (*f).clone()).collect() };
        let workers = self.threads.max(1);
        // Sections go in batches of about `HOT_BATCH_BYTES`, their data in one buffer:
        // one hand-over a section cost more in waking threads than decoding a small
        // section does.
        #[derive(Default)]
        struct Job {
            data: Vec<u8>,
            /// The partition, the section's index in it, its data's place in `data`.
            sections: Vec<(Arc<HotPart>, usize, std::ops::Range<usize>)>,
        }
        let run = |job: &Job, t: &mut T, filters: &[&LineFilter]| -> Result<(), Error> {
            for (part, i, at) in &job.sections {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                interrupted(cancel, deadline)?;
                decode(t, filters, part, *i, &job.data[at.clone()])?;
            }
            Ok(())
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(2 * workers);
        let rx = std::sync::Mutex::new(rx);
        let (run, stop, rx) = (&run, &stop, &rx);
        std::thread::scope(|sc| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    sc.spawn(move || -> Result<T, Error> {
                        let mut t = init();
                        let owned = own();
                        let filters: Vec<&LineFilter> = owned.iter().collect();
                        loop {
                            let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                            let Ok(job) = job else {
                                return Ok(t);
                            };
                            if let Err(e) = run(&job, &mut t, &filters) {
                                stop.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    })
                })
                .collect();
            let mut mine = init();
            let owned = own();
            let mine_filters: Vec<&LineFilter> = owned.iter().collect();
            let fed = (|| -> Result<(), Error> {
                let mut job = Job::default();
                // Hands `job` over, or decodes it here when every thread is busy;
                // `false` when the threads have gone.
                let mut hand = |job: Job| -> Result<bool, Error> {
                    match tx.try_send(job) {
                        Ok(()) => Ok(true),
                        Err(std::sync::mpsc::TrySendError::Full(job)) => {
                            run(&job, &mut mine, &mine_filters)?;
                            Ok(true)
                        }
                        Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Ok(false),
                    }
                };
                for p in parts {
                    let (name, part) = p?;
                    let ids: Vec<i64> = part.sections.iter().map(|m| m.id).collect();
                    let mut res = Ok(true);
                    hot_block::scan_data(self.hot, &name, &ids, |i, data| {
                        if stop.load(Ordering::Relaxed) {
                            res = Ok(false);
                            return Ok(false);
                        }
                        let at = job.data.len();
                        job.data.extend_from_slice(data);
                        job.sections.push((part.clone(), i, at..job.data.len()));
                        if job.data.len() >= HOT_BATCH_BYTES {
                            res = self
                                .check(deadline)
                                .and_then(|()| hand(std::mem::take(&mut job)));
                        }
                        Ok(matches!(res, Ok(true)))
                    })?;
                    if !res? {
                        return Ok(());
                    }
                }
                if !job.sections.is_empty() {
                    hand(job)?;
                }
                Ok(())
            })();
            if fed.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            drop(tx);
            let mut out = vec![mine];
            let mut failed = fed.err();
            for h in handles {
                match h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                    Ok(t) => out.push(t),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            failed.map_or(Ok(out), Err)
        })
    }

    /// Folds the lines of `streams` in `[start, end)` that pass `filters` into
    /// per-worker accumulators, in no order and on every core, without copying a line:
    /// each worker starts from `init()` and calls `add` for every line it reads (the
    /// hot tier's lines go to one more). The line's text is read only when `line` is
    /// set or there are filters (it is empty otherwise). Returns the accumulators, and
    /// `false` when the deadline passed first (they are then incomplete).
    ///
    /// # Errors
    /// [`Error`], or the first error `add` returns (the scan stops there).
    #[allow(clippy::too_many_arguments)]
    pub fn tally<T: Send>(
        &self,
        streams: &[i64],
        start: i64,
        end: i64,
        filters: &[&LineFilter],
        line: bool,
        deadline: Option<Instant>,
        init: impl Fn() -> T + Sync,
        add: impl Fn(&mut T, RowRef<'_>) -> Result<(), Error> + Sync,
    ) -> Result<(Vec<T>, bool), Error> {
        if streams.is_empty() || start >= end {
            return Ok((Vec::new(), true));
        }
        let mut out = vec![init()];
        // Templates decide for their lines when they can; counting needs no line but
        // to filter it, so a line every line of whose template passes is not rebuilt.
        let judge = Judge::new(filters, line);
        let judge = |t: &TemplateView<'_>| judge.verdict(t);
        let prefilter: Option<&(dyn Fn(&TemplateView<'_>) -> Verdict + Sync)> =
            (!filters.is_empty()).then_some(&judge);
        let res = (|| {
            let cands = self.segments(streams, start, end, filters)?;
            let Some(tiers) = self.tiers.filter(|_| !cands.is_empty()) else {
                out = self.hot_tally(streams, start, end, filters, deadline, &init, &add)?;
                return Ok(());
            };
            let job = SegmentScan {
                tiers,
                cands: &cands,
                start,
                end,
                filters,
                prefilter,
                deadline,
                cancel: self.cancel,
                stats: &self.stats,
                next: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
            };
            let cols = Columns {
                line: line || !filters.is_empty(),
                extra: false,
                any_order: true,
            };
            let workers = self.threads.min(cands.len());
            let (init, add, job) = (&init, &add, &job);
            // The workers read segments while this thread reads the hot tier (its
            // connection is this thread's).
            let (hot, done) = std::thread::scope(|sc| {
                let handles: Vec<_> = (0..workers)
                    .map(|_| {
                        sc.spawn(move || {
                            let mut t = init();
                            job.work(cols, &mut |r| add(&mut t, r).map(|()| true))
                                .map(|_| t)
                        })
                    })
                    .collect();
                let hot = self.hot_tally(streams, start, end, filters, deadline, init, add);
                if hot.is_err() {
                    job.stop.store(true, Ordering::Relaxed);
                }
                let done: Vec<Result<T, Error>> = handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect();
                (hot, done)
            });
            out = hot?;
            for t in done {
                out.push(t?);
            }
            Ok(())
        })();
        match res {
            Ok(()) => Ok((out, true)),
            Err(Error::Timeout) => Ok((Vec::new(), false)),
            Err(e) => Err(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn scan_ordered(
        &self,
        streams: &[i64],
        start: i64,
        end: i64,
        backward: bool,
        filters: &[&LineFilter],
        deadline: Option<Instant>,
        each: &mut impl FnMut(Row) -> bool,
    ) -> Result<(), Error> {
        let mut runs: Vec<Run> = Vec::new();
        let mut heap = BinaryHeap::new();
        // One judge for every segment slice read, which keeps its templates' plans.
        let judge = Judge::new(filters, true);
        let bound = |lo: i64, hi_incl: i64| -> (i64, i64) {
            if backward {
                (hi_incl, i64::MAX)
            } else {
                (lo, i64::MIN)
            }
        };
        for p in hot::partitions(self.hot)? {
            if p.end <= start || p.start >= end {
                continue;
            }
            let part = self.hot_part(&p, streams, start, end, filters)?;
            if part.sections.is_empty() {
                continue;
            }
            let lo = part
                .sections
                .iter()
                .map(|m| m.min_ts)
                .min()
                .unwrap_or(start);
            let hi = part
                .sections
                .iter()
                .map(|m| m.max_ts)
                .max()
                .unwrap_or(start);
            let (lo, hi) = (lo.max(start), hi.min(end.saturating_sub(1)));
            let key = bound(lo, hi);
            // With line filters few rows may pass: the partition's sections are read
            // at once on every core unless more than `WHOLE_READ_ROWS` pass (then
            // they are merged section by section, as without filters).
            let part = Arc::new(part);
            let whole = if filters.is_empty() {
                None
            } else {
                self.hot_whole(&p.name, &part, (start, end), filters, deadline)?
            };
            let run = match whole {
                Some(mut rows) => {
                    sort_rows(&mut rows, backward);
                    HotRun {
                        merge: Merge::new(&p.name, Vec::new(), backward),
                        part,
                        buf: rows.into(),
                        done: true,
                    }
                }
                None => HotRun {
                    merge: Merge::new(&p.name, part.sections.clone(), backward),
                    part,
                    buf: VecDeque::new(),
                    done: false,
                },
            };
            runs.push(Run::Hot(Box::new(run)));
            heap.push(HeapEntry {
                key,
                run: runs.len() - 1,
                backward,
            });
        }
        for c in self.segments(streams, start, end, filters)? {
            let (lo, hi) = c.range();
            let (lo, hi) = (lo.max(start), hi.min(end.saturating_sub(1)));
            if lo > hi {
                continue;
            }
            let rows = c.rows().max(1);
            let span = (hi - lo).saturating_add(1);
            // About 16k rows per slice, assuming rows spread evenly in time.
            let width = if rows <= 16_384 {
                span
            } else {
                (span as f64 * 16_384.0 / rows as f64).max(1.0) as i64
            };
            let key = bound(lo, hi);
            runs.push(Run::Seg(Box::new(SegRun {
                wanted: c.streams.iter().map(|s| s.file_stream_id).collect(),
                map: c
                    .streams
                    .iter()
                    .map(|s| (s.file_stream_id, s.stream_id))
                    .collect(),
                cand: c,
                file: None,
                lo,
                hi: hi.saturating_add(1),
                width,
                buf: VecDeque::new(),
            })));
            heap.push(HeapEntry {
                key,
                run: runs.len() - 1,
                backward,
            });
        }
        // An entry is either a run's bound (its buffer is empty and not yet filled) or
        // the key of the row at the front of its buffer.
        while let Some(top) = heap.pop() {
            self.check(deadline)?;
            let run = &mut runs[top.run];
            let front = match run {
                Run::Hot(h) => h.buf.front().map(|r| (r.ts, r.id)),
                Run::Seg(s) => s.buf.front().map(|r| (r.ts, r.id)),
            };
            if front == Some(top.key) {
                let row = match run {
                    Run::Hot(h) => h.buf.pop_front(),
                    Run::Seg(s) => s.buf.pop_front(),
                }
                .expect("front checked");
                if !each(row) {
                    return Ok(());
                }
            }
            // Refill when empty, then queue the new front.
            let empty = match run {
                Run::Hot(h) => h.buf.is_empty(),
                Run::Seg(s) => s.buf.is_empty(),
            };
            if empty {
                match run {
                    Run::Hot(h) => {
                        let part = &h.part;
                        let mut read = (0u64, 0u64);
                        let mut keep = |r: &RowRef<'_>| {
                            hot_row_passes(
                                (r.ts, r.id, r.line),
                                (start, end),
                                false,
                                part,
                                filters,
                                &mut read,
                            )
                        };
                        let decoded = h.merge.decoded();
                        while !h.done && h.buf.len() < PAGE {
                            match h.merge.next(self.hot, &mut keep)? {
                                Some(r) => h.buf.push_back(r.into()),
                                None => h.done = true,
                            }
                        }
                        ScanStats::add(&self.stats.lines, read.0);
                        ScanStats::add(&self.stats.bytes, read.1);
                        ScanStats::add(
                            &self.stats.hot_sections_read,
                            (h.merge.decoded() - decoded) as u64,
                        );
                    }
                    Run::Seg(s) => self.fill_segment(s, backward, filters, &judge)?,
                }
            }
            let front = match &runs[top.run] {
                Run::Hot(h) => h.buf.front().map(|r| (r.ts, r.id)),
                Run::Seg(s) => s.buf.front().map(|r| (r.ts, r.id)),
            };
            if let Some(key) = front {
                heap.push(HeapEntry {
                    key,
                    run: top.run,
                    backward,
                });
            }
        }
        Ok(())
    }

    /// The rows of one hot partition's listed sections that pass `filters`, read on
    /// every core, in no order; `None` when more than `WHOLE_READ_ROWS` pass (the
    /// read stops soon after).
    fn hot_whole(
        &self,
        table: &str,
        part: &Arc<HotPart>,
        range: (i64, i64),
        filters: &[&LineFilter],
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<Row>>, Error> {
        let passed = AtomicUsize::new(0);
        let over = AtomicBool::new(false);
        let got = self.hot_parallel(
            std::iter::once(Ok((table.to_owned(), part.clone()))),
            range,
            filters,
            deadline,
            &Vec::new,
            &|rows: &mut Vec<Row>, r: RowRef<'_>| {
                if passed.fetch_add(1, Ordering::Relaxed) >= WHOLE_READ_ROWS {
                    over.store(true, Ordering::Relaxed);
                    return Err(Error::Cancelled);
                }
                rows.push(row_of(r));
                Ok(())
            },
        );
        if over.load(Ordering::Relaxed) {
            return Ok(None);
        }
        Ok(Some(got?.into_iter().flatten().collect()))
    }

    /// Reads the next time slice of a segment (newest slice first when `backward`)
    /// until it yields rows or the range is used up.
    fn fill_segment(
        &self,
        s: &mut SegRun,
        backward: bool,
        filters: &[&LineFilter],
        judge: &Judge<'_>,
    ) -> Result<(), Error> {
        let first = s.file.is_none();
        if first {
            s.file = Some(self.open_segment(&s.cand)?);
        }
        // A row group holds many streams over the segment's whole time range, so each
        // time slice decodes it again. With line filters few rows may pass: the whole
        // range is read at once, every row group once, unless more than
        // `WHOLE_READ_ROWS` pass (then it is read in slices, as without filters).
        if first && !filters.is_empty() && s.lo < s.hi {
            if let Some(mut rows) =
                self.read_range(s, s.lo, s.hi, filters, judge, Some(WHOLE_READ_ROWS))?
            {
                s.lo = s.hi;
                sort_rows(&mut rows, backward);
                s.buf.extend(rows);
                return Ok(());
            }
        }
        while s.buf.is_empty() && s.lo < s.hi {
            let (a, b) = if backward {
                ((s.hi.saturating_sub(s.width)).max(s.lo), s.hi)
            } else {
                (s.lo, (s.lo.saturating_add(s.width)).min(s.hi))
            };
            let mut rows = self
                .read_range(s, a, b, filters, judge, None)?
                .expect("no cap, no stop");
            if backward {
                s.hi = a;
            } else {
                s.lo = b;
            }
            sort_rows(&mut rows, backward);
            if rows.len() < 4096 {
                s.width = s.width.saturating_mul(2);
            }
            s.buf.extend(rows);
        }
        Ok(())
    }

    /// The rows of a segment run in `[a, b)` passing `filters` (of which `judge`
    /// judges templates), in file order; `None` when more than `cap` pass (the read
    /// stops there).
    fn read_range(
        &self,
        s: &SegRun,
        a: i64,
        b: i64,
        filters: &[&LineFilter],
        judge: &Judge<'_>,
        cap: Option<usize>,
    ) -> Result<Option<Vec<Row>>, Error> {
        let file = s.file.as_ref().expect("opened before reading");
        let mut rows: Vec<Row> = Vec::new();
        let (mut n, mut bytes, mut over) = (0u64, 0u64, false);
        let judge = |t: &TemplateView<'_>| judge.verdict(t);
        let groups = file.visit(
            &Selection {
                streams: &s.wanted,
                start: a,
                end: b,
                row_groups: s.cand.row_groups.as_deref().map(Vec::as_slice),
                prefilter: (!filters.is_empty())
                    .then_some(&judge as &dyn Fn(&TemplateView<'_>) -> Verdict),
            },
            false,
            Columns::ALL,
            |mut r, _| {
                n += 1;
                bytes += r.line.len() as u64;
                if filters.iter().all(|f| f.matches(r.line)) {
                    if cap.is_some_and(|c| rows.len() >= c) {
                        over = true;
                        return false;
                    }
                    r.stream_id = s.map[&r.stream_id];
                    rows.push(row_of(r));
                }
                true
            },
        )?;
        ScanStats::add(&self.stats.row_groups_read, groups as u64);
        ScanStats::add(&self.stats.lines, n);
        ScanStats::add(&self.stats.bytes, bytes);
        Ok((!over).then_some(rows))
    }

    /// For each of `streams` whose lines the agents' pre-aggregates cover (its first
    /// aggregate window starts no later than its first stored line in any tier), the
    /// window in ns.
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
        let mut first_seg = self.hot.prepare_cached(
            "SELECT min(ss.min_ts) FROM segment_streams ss JOIN segments s ON s.id = ss.segment_id
             WHERE ss.stream_id = ?1 AND s.state IN ('active', 'uploading')",
        )?;
        let parts = hot::partitions(self.hot)?;
        let mut out = HashMap::new();
        for &s in streams {
            let Some((start, window)): Option<(i64, i64)> = first_agg
                .query_row([s], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
            else {
                continue;
            };
            let window_ns = window.saturating_mul(1_000_000_000);
            let mut first: Option<i64> = first_seg.query_row([s], |r| r.get(0))?;
            for p in &parts {
                let t: Option<i64> = self
                    .hot
                    .prepare_cached(&format!(
                        "SELECT min(min_ts) FROM \"{}\" WHERE stream_id = ?1",
                        p.name
                    ))?
                    .query_row([s], |r| r.get(0))?;
                first = match (first, t) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            if first.is_none_or(|t| start <= t) {
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
    /// Which of `streams` have lines their agents counted and did not ship (sampled or
    /// aggregates only): for them only the pre-aggregates count every line.
    ///
    /// # Errors
    /// [`Error::Sqlite`].
    pub fn aggregate_partial(&self, streams: &[i64]) -> Result<HashSet<i64>, Error> {
        let mut q = self
            .hot
            .prepare_cached("SELECT 1 FROM aggregate_partial WHERE stream_id = ?1")?;
        let mut out = HashSet::new();
        for &s in streams {
            if q.exists([s])? {
                out.insert(s);
            }
        }
        Ok(out)
    }

    /// Which of `streams` have per-second counts ([`crate::volume`]).
    ///
    /// # Errors
    /// [`Error::Sqlite`].
    pub fn volume_covered(&self, streams: &[i64]) -> Result<HashSet<i64>, Error> {
        Ok(crate::volume::covered(self.hot, streams)?)
    }

    /// The per-second counts of `streams` for lines in `(start, end]`, minute by minute
    /// (see [`crate::volume::read`]).
    ///
    /// # Errors
    /// [`Error::Sqlite`].
    pub fn per_second(
        &self,
        streams: &[i64],
        start: i64,
        end: i64,
        each: impl FnMut(crate::volume::Minute<'_>),
    ) -> Result<(), Error> {
        Ok(crate::volume::read(self.hot, streams, start, end, each)?)
    }

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

#[cfg(test)]
mod tests {
    use super::{shared_affix, Order, Source, Tiers};
    use crate::hot::{self, BatchId, HotStore};
    use heimdall_common::record::{Labels, Level, LogRecord};
    use heimdall_common::wire::BatchContent;
    use heimdall_logql::{FilterOp, LineFilter};

    /// A needle in one batch of several: the blocks that may hold it are few, their
    /// sections are found by id, and every tier-order scan returns exactly the lines
    /// a plain search of what was written returns.
    #[tokio::test]
    async fn a_needles_few_hot_blocks_are_read_by_id_and_miss_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("hot.db");
        let store = HotStore::open(&db, 100_000).unwrap();
        const T0: i64 = 1_800_000_000_000_000_000 / 3_600_000_000_000 * 3_600_000_000_000;
        let batch_rows = crate::hot_index::BLOCK_ROWS + 100;
        let mut written: Vec<(u32, i64, String)> = Vec::new();
        for b in 0..6 {
            let mut c = BatchContent {
                streams: (0..3)
                    .map(|i| Labels::new([("s", i.to_string())]))
                    .collect(),
                ..Default::default()
            };
            for i in 0..batch_rows {
                let n = b * batch_rows + i;
                let stream = (n % 3) as u32;
                let ts = T0 + n as i64 * 1_000_000;
                let line = if b == 3 && i % 5_000 == 7 {
                    format!("order {n} failed needle-{}", n % 2)
                } else {
                    format!("order {n} ok")
                };
                written.push((stream, ts, line.clone()));
                c.records.push(LogRecord {
                    stream,
                    time_ns: ts,
                    observed_ns: ts,
                    level: Level::Info,
                    template_id: 0,
                    flags: 0,
                    redacted: 0,
                    line: line.into_bytes().into(),
                    metadata: Default::default(),
                });
            }
            let id = BatchId {
                agent: "a".into(),
                epoch: 1,
                seq: b as u64 + 1,
                floor: 1,
            };
            store.write(id, c).await.unwrap();
        }
        let tiers = Tiers {
            warm_dir: dir.path().join("segments"),
            cold: None,
            hot_index: Some(store.index().clone()),
            blooms: Default::default(),
        };
        let conn = hot::open_reader(&db).unwrap();
        let ids = hot::load_streams(&conn).unwrap();
        let id_of = |s: u32| {
            ids.iter()
                .find(|(_, l)| l.get("s") == Some(&s.to_string()))
                .unwrap()
                .0
        };
        let filter = LineFilter::new(FilterOp::Contains, "needle-1".into()).unwrap();
        let span = 6 * batch_rows as i64 * 1_000_000;
        for (streams, start, end) in [
            (vec![0, 1, 2], T0, T0 + span),
            (vec![1], T0, T0 + span),
            (
                vec![0, 2],
                T0 + span / 2 + 3_000_000,
                T0 + span / 2 + 9_000_000_000,
            ),
        ] {
            let want: Vec<String> = written
                .iter()
                .filter(|(s, ts, l)| {
                    streams.contains(s) && *ts >= start && *ts < end && l.contains("needle-1")
                })
                .map(|(.., l)| l.clone())
                .collect();
            let sids: Vec<i64> = streams.iter().map(|&s| id_of(s)).collect();
            for order in [Order::Forward, Order::Backward, Order::Any] {
                let src = Source::hot(&conn).with_tiers(&tiers);
                let mut got = Vec::new();
                src.scan(&sids, start, end, order, &[&filter], None, |r| {
                    got.push(String::from_utf8(r.line).unwrap());
                    true
                })
                .unwrap();
                if order == Order::Backward {
                    got.reverse();
                }
                if order == Order::Any {
                    got.sort_by_key(|l| l.split(' ').nth(1).unwrap().parse::<u64>().unwrap());
                }
                assert_eq!(got, want, "{streams:?} {order:?}");
                // One block of six may hold the needle: over the whole range most
                // sections are not read.
                let c = src.scanned();
                assert!(
                    start > T0 || c.hot_sections_read * 4 < c.hot_sections_pruned,
                    "{c:?}"
                );
            }
        }
    }

    fn group(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_group_is_probed_by_what_its_literals_share_when_that_is_most_of_them() {
        let status: Vec<String> = (0..10).map(|d| format!("status=5{d}")).collect();
        let status: Vec<&str> = status.iter().map(String::as_str).collect();
        assert_eq!(shared_affix(group(&status)), group(&["status=5"]));
        assert_eq!(
            shared_affix(group(&["GET /a 404", "PUT /a 404"])),
            group(&["T /a 404"])
        );
        // Too little shared, or one literal: the group as it is.
        let apart = group(&["error: disk", "error: net"]);
        assert_eq!(shared_affix(apart.clone()), apart);
        assert_eq!(shared_affix(group(&["abcdef"])), group(&["abcdef"]));
        assert_eq!(shared_affix(group(&["ab1", "ab2"])), group(&["ab1", "ab2"]));
    }
}
