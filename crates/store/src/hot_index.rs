//! Needle filters over blocks of hot rows, so a needle search skips most of the
//! hot tier as the segments' filters let it skip most segments.
//!
//! The writer adds, before the commit, the filter of every batch's lines in a
//! partition (built with the batch's sections, off the writer thread) to the
//! partition's current block (about 16k rows of neighbouring ids): a block holds one
//! filter per batch part, and may hold a match if any of them passes every needle. A
//! rolled-back write leaves a filter for rows that do not exist, which only costs a
//! useless read; a line is never stored without its filter, so a block whose filters
//! all say "no" holds no match. The
//! index lives in memory: after a restart, partitions are indexed again in the
//! background and read in full until they are. Bounded by the hot tier's size (about
//! 16 bytes a row); `heimdall_aggregator_hot_index_bytes` shows it.

use super::filter::{Bloom, GramBuilder, Needles};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Rows per block.
pub const BLOCK_ROWS: usize = 16_384;

/// One block: rows `first_id..=last_id` with times in `[min_ts, max_ts]`.
#[derive(Clone, Debug)]
pub struct Block {
    pub first_id: i64,
    pub last_id: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub rows: usize,
    blooms: Vec<Bloom>,
}

#[derive(Default)]
struct PartIndex {
    blocks: Vec<Block>,
    /// Grams of lines added one at a time to the block being filled, before its
    /// filter is built.
    pending: Option<GramBuilder>,
    /// Whether every row of the partition is in a block (false after a restart until
    /// the partition is indexed again).
    complete: bool,
    /// Whether some rows were added one at a time ([`HotIndex::add`]): a section's
    /// rows may then lie in several blocks. Otherwise rows are added by whole
    /// sections, each inside one block's id range.
    by_line: bool,
}

/// The index, shared by the writer and queries.
#[derive(Clone, Default)]
pub struct HotIndex {
    inner: Arc<Mutex<HashMap<String, PartIndex>>>,
}

/// Where a query must read a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The whole partition (not indexed).
    All,
    /// Only these blocks (`first_id..=last_id`, `min_ts`, `max_ts`).
    Blocks(Vec<(i64, i64, i64, i64)>),
}

impl HotIndex {
    /// Adds a stored line of `partition`; `new` says the writer made the partition in
    /// this process (so the index covers all of it).
    pub fn add(&self, partition: &str, new: bool, id: i64, ts: i64, line: &[u8]) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let p = open_block(&mut g, partition, new, (id, id), (ts, ts), 1);
        p.by_line = true;
        p.pending
            .get_or_insert_with(GramBuilder::largest)
            .add_line(line);
    }

    /// Adds `rows` stored rows of `partition` at once: their ids lie in `ids`
    /// (inclusive), their times in `times`, and `bloom` is the filter of their lines.
    /// The rows are whole sections (every row of a section comes in one call), so
    /// each section lies inside its block's id range. A block's id range is the union
    /// of what was added to it, so ranges of neighbouring blocks may overlap; a query
    /// reads both then.
    pub fn add_bloom(
        &self,
        partition: &str,
        new: bool,
        ids: (i64, i64),
        times: (i64, i64),
        rows: usize,
        bloom: Bloom,
    ) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let p = open_block(&mut g, partition, new, ids, times, rows);
        p.blocks
            .last_mut()
            .expect("open_block made one")
            .blooms
            .push(bloom);
    }

    /// Indexes a partition's rows with ids up to `max_id` (read after a restart) and
    /// marks it complete; blocks the writer made meanwhile for newer rows are kept.
    /// `rows` are `(id, ts, line)`.
    pub fn rebuild(
        &self,
        partition: &str,
        rows: impl IntoIterator<Item = (i64, i64, Vec<u8>)>,
        max_id: i64,
    ) {
        let built = HotIndex::default();
        for (id, ts, line) in rows {
            built.add(partition, true, id, ts, &line);
        }
        self.install(partition, &built, max_id);
    }

    /// As [`HotIndex::rebuild`], from an index built elsewhere (with
    /// [`HotIndex::add_bloom`]) for the rows with ids up to `max_id`.
    pub fn install(&self, partition: &str, built: &HotIndex, max_id: i64) {
        let mut b = built.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut fresh = b.remove(partition).unwrap_or_default();
        if let Some(last) = fresh.blocks.last_mut() {
            seal(last, &mut fresh.pending);
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entry = g.entry(partition.to_owned()).or_default();
        let kept: Vec<Block> = entry
            .blocks
            .drain(..)
            .filter(|b| b.last_id > max_id)
            .collect();
        if kept.is_empty() {
            entry.pending = None;
        }
        fresh.blocks.extend(kept);
        entry.blocks = fresh.blocks;
        entry.by_line |= fresh.by_line;
        entry.complete = true;
    }

    /// Forgets a partition (dropped).
    pub fn remove(&self, partition: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(partition);
    }

    /// Forgets every partition not in `keep`.
    pub fn retain(&self, keep: &HashSet<String>) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| keep.contains(k));
    }

    /// Whether a partition is fully indexed.
    pub fn is_complete(&self, partition: &str) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(partition)
            .is_some_and(|p| p.complete)
    }

    /// Whether every section of `partition` was indexed whole, inside one block's id
    /// range (from [`HotIndex::add_bloom`] only), so the sections a plan's blocks may
    /// hold are those whose ids lie in the blocks' ranges.
    /// Returns the partition's number of blocks then, `None` otherwise.
    pub fn whole_sections(&self, partition: &str) -> Option<usize> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(partition)
            .filter(|p| !p.by_line)
            .map(|p| p.blocks.len())
    }

    /// The blocks of `partition` that may hold a line with what `needles` ask.
    pub fn plan(&self, partition: &str, needles: &Needles) -> Plan {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = g.get_mut(partition) else {
            return Plan::All;
        };
        if !p.complete || needles.is_empty() {
            return Plan::All;
        }
        // The open block's lines added one at a time are not in a filter yet: their
        // builder is checked as it stands.
        let mut out = Vec::new();
        let n = p.blocks.len();
        let passes = |bloom: &Bloom| needles.may_match(bloom);
        for (i, b) in p.blocks.iter().enumerate() {
            let mut hit = b.blooms.iter().any(passes);
            if let Some(g) = p.pending.as_ref().filter(|_| !hit && i + 1 == n) {
                hit = !g.is_empty() && needles.may_match_building(g);
            }
            if hit {
                out.push((b.first_id, b.last_id, b.min_ts, b.max_ts));
            }
        }
        Plan::Blocks(out)
    }

    /// Memory held, roughly.
    pub fn bytes(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|p| {
                p.blocks
                    .iter()
                    .flat_map(|b| &b.blooms)
                    .map(Bloom::byte_size)
                    .sum::<usize>()
                    + p.pending.as_ref().map_or(0, GramBuilder::byte_size)
            })
            .sum()
    }
}

fn seal(b: &mut Block, pending: &mut Option<GramBuilder>) {
    if let Some(g) = pending.take().filter(|g| !g.is_empty()) {
        b.blooms.push(g.finish());
    }
}

/// The partition's block that takes rows with ids in `ids` and times in `times` (a new
/// one when the last is full, its pending lines sealed), with them counted.
fn open_block<'a>(
    g: &'a mut HashMap<String, PartIndex>,
    partition: &str,
    new: bool,
    ids: (i64, i64),
    times: (i64, i64),
    rows: usize,
) -> &'a mut PartIndex {
    let p = g.entry(partition.to_owned()).or_insert_with(|| PartIndex {
        complete: new,
        ..Default::default()
    });
    let open = p.blocks.last().is_some_and(|b| b.rows < BLOCK_ROWS);
    if !open {
        if let Some(b) = p.blocks.last_mut() {
            seal(b, &mut p.pending);
        }
        p.blocks.push(Block {
            first_id: ids.0,
            last_id: ids.1,
            min_ts: times.0,
            max_ts: times.1,
            rows: 0,
            blooms: Vec::new(),
        });
    }
    let b = p.blocks.last_mut().expect("just ensured");
    b.first_id = b.first_id.min(ids.0);
    b.last_id = b.last_id.max(ids.1);
    b.min_ts = b.min_ts.min(times.0);
    b.max_ts = b.max_ts.max(times.1);
    b.rows += rows;
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes(needles: &[&[u8]]) -> Needles {
        let mut n = Needles::default();
        for x in needles {
            n.contains(x);
        }
        n
    }

    #[test]
    fn blocks_without_the_needle_are_skipped() {
        let ix = HotIndex::default();
        for i in 0..(BLOCK_ROWS as i64 * 3) {
            let line = if i == 20_000 {
                "payment failed order needle-7f3a9c2e51b04d8d".to_owned()
            } else {
                format!("GET /api/items/{i} 200 req={i:016x}")
            };
            ix.add("p", true, i + 1, i, line.as_bytes());
        }
        let Plan::Blocks(b) = ix.plan("p", &probes(&[b"needle-7f3a9c2e51b04d8d"])) else {
            panic!()
        };
        assert_eq!(b.len(), 1);
        assert!(b[0].0 <= 20_001 && 20_001 <= b[0].1);
        // The open (last) block is checked too.
        ix.add("p", true, 60_000, 60_000, b"late needle-7f3a9c2e51b04d8d");
        let Plan::Blocks(b) = ix.plan("p", &probes(&[b"needle-7f3a9c2e51b04d8d"])) else {
            panic!()
        };
        assert_eq!(b.len(), 2);
        assert_eq!(ix.plan("p", &probes(&[])), Plan::All);
        assert_eq!(ix.plan("other", &probes(&[b"x"])), Plan::All);
    }

    #[test]
    fn a_rebuilt_partition_keeps_the_writers_newer_blocks() {
        let ix = HotIndex::default();
        // After a restart the writer adds new rows to an old partition: not complete.
        ix.add("p", false, 101, 5, b"new needle-aaaaaaaaaaaa");
        assert_eq!(ix.plan("p", &probes(&[b"needle-aaaaaaaaaaaa"])), Plan::All);
        let old = (1..=100).map(|i| (i, i, format!("old line {i}").into_bytes()));
        ix.rebuild(
            "p",
            old.chain([(50_000, 3, b"x".to_vec())].into_iter().filter(|_| false)),
            100,
        );
        let Plan::Blocks(b) = ix.plan("p", &probes(&[b"needle-aaaaaaaaaaaa"])) else {
            panic!()
        };
        assert_eq!(b, vec![(101, 101, 5, 5)]);
        let Plan::Blocks(b) = ix.plan("p", &probes(&[b" old "])) else {
            panic!()
        };
        assert_eq!(b.len(), 1);
    }
}
