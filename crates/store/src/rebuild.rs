//! Rebuilding the segment catalog from the bucket: every segment object under this
//! aggregator's prefix that the catalog does not list is read (footer, stream labels,
//! rows for the statistics and the bloom filter) and added as a cold segment; streams
//! are matched by their labels, so a new aggregator (or one whose database was lost)
//! can take over a prefix and answer queries over it.

use super::catalog::{self, Tier};
use super::cold::ColdStore;
use super::filter::GramBuilder;
use super::hot::{self, HotStore};
use super::lifecycle::Error;
use super::segment::{SegmentFile, SegmentInfo};
use std::collections::{HashMap, HashSet};

/// What a rebuild did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Objects already in the catalog.
    pub known: usize,
    /// Objects added.
    pub added: usize,
    /// Rows in the added segments.
    pub rows: u64,
    /// Objects that could not be read (logged).
    pub failed: usize,
}

/// Adds the bucket's unlisted segments to the catalog.
///
/// # Errors
/// [`Error`] when the bucket cannot be listed or the catalog written.
pub fn rebuild(store: &HotStore, cold: &ColdStore) -> Result<Rebuilt, Error> {
    let conn = hot::open_reader(store.path())?;
    let known: HashSet<String> = catalog::all(&conn)?.into_iter().map(|s| s.name).collect();
    let mut out = Rebuilt::default();
    for (name, size) in cold.list()? {
        if known.contains(&name) {
            out.known += 1;
            continue;
        }
        match add(store, cold, &name, size) {
            Ok(rows) => {
                out.added += 1;
                out.rows += rows;
                tracing::info!(segment = %name, rows, "added a segment from the bucket");
            }
            Err(e) => {
                out.failed += 1;
                tracing::error!(segment = %name, error = %e, "cannot add a segment from the bucket");
            }
        }
    }
    Ok(out)
}

fn add(store: &HotStore, cold: &ColdStore, name: &str, size: u64) -> Result<u64, Error> {
    let path = cold.fetch_unverified(name, size)?;
    let (bytes, checksum) = super::segment::file_crc(&path)?;
    let file = SegmentFile::open(&path)?;
    let footer = file.footer()?;
    let labels = file.stream_labels()?;
    // Statistics and the bloom filter from the rows; the footer's content hash must hold.
    let mut grams = GramBuilder::largest();
    let mut rg_grams = GramBuilder::largest();
    let mut row_group_blooms = Vec::new();
    let mut bounds = file.row_group_rows().into_iter();
    let mut left = bounds.next().unwrap_or(usize::MAX);
    let (mut levels, mut raw_bytes) = (0u8, 0u64);
    file.read_all(&footer, |r| {
        levels |= 1 << (r.level as u8);
        raw_bytes += r.line.len() as u64;
        rg_grams.add_line(&r.line);
        left = left.saturating_sub(1);
        if left == 0 {
            row_group_blooms.push(rg_grams.finish());
            grams.union(&rg_grams);
            rg_grams.clear();
            left = bounds.next().unwrap_or(usize::MAX);
        }
        true
    })?;
    if !rg_grams.is_empty() {
        row_group_blooms.push(rg_grams.finish());
        grams.union(&rg_grams);
    }
    let bloom = grams.finish();
    let info = SegmentInfo {
        rows: footer.rows,
        min_ts: footer.min_ts,
        max_ts: footer.max_ts,
        levels,
        streams: footer.streams.clone(),
        bytes,
        raw_bytes,
        checksum,
        content_hash: footer.content_hash,
        bloom,
        row_group_blooms,
    };
    file.verify(&info)?;
    let name = name.to_owned();
    let rows = info.rows;
    store.job_blocking(Box::new(move |c| {
        // Stream ids of this database, by labels.
        let mut ids = HashMap::new();
        for (file_id, key) in &labels {
            c.execute("INSERT OR IGNORE INTO streams(labels) VALUES (?1)", [key])?;
            let id: i64 = c.query_row("SELECT id FROM streams WHERE labels = ?1", [key], |r| {
                r.get(0)
            })?;
            ids.insert(*file_id, id);
        }
        let seg = catalog::begin(c, &name, "bucket")?;
        catalog::activate(c, seg, &info, &ids)?;
        catalog::set_state(c, seg, "active", Tier::Cold)
    }))?;
    Ok(rows)
}
