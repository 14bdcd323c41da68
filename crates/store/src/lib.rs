//! `heimdall-store`: where data lives and how it is read back. Depends on the LogQL
//! syntax (`heimdall-logql`) for selectors and line filters; never on query
//! evaluation (`heimdall-query`) or alerting.
//!
//! - [`hot`]: SQLite in WAL mode, written by one thread with group commit, lines in
//!   time partitions; every batch is committed together with its identity, so a resent
//!   batch is never stored twice.
//! - [`segment`]: the Parquet segment format of the warm and cold tiers, with its
//!   statistics.
//! - [`filter`]: needle filters of row groups, segments and hot blocks.
//! - [`columnar`]: the segments' template-columnar encoding of lines.
//! - [`catalog`]: which segments exist, where, in which state (in the hot database).
//! - [`cold`]: segments on S3-compatible object storage, and the local cache.
//! - [`lifecycle`]: compaction, upload, retention, crash recovery.
//! - [`erase`]: deleting lines by selector and time range across every tier.
//! - [`rebuild`]: the catalog made again from the bucket listing.
//! - [`read`]: the one reader across every tier: stream selection, scans merged in
//!   time order with pruning by time, stream and token filters, pre-aggregates.
//! - [`volume`]: per-second line counts by stream and level, for volume queries at any
//!   step.
//! - [`intel`]: template patterns, counts from the agents' pre-aggregates, anomaly
//!   events, as stored.

pub mod catalog;
pub mod cold;
pub mod columnar;
pub mod erase;
mod fast_hash;
pub mod filter;
pub mod hot;
pub mod hot_block;
pub mod hot_index;
pub mod intel;
pub mod lifecycle;
pub mod read;
pub mod rebuild;
pub mod segment;
pub mod templates;
pub mod volume;
