//! Storage. Owns where data lives and how it is read back; does not own query
//! semantics (see `query`).
//!
//! - [`hot`]: SQLite in WAL mode, written by one thread with group commit, lines in
//!   time partitions; every batch is committed together with its identity, so a resent
//!   batch is never stored twice.
//! - [`segment`]: the Parquet segment format of the warm and cold tiers, with its
//!   statistics and token bloom filter.
//! - [`catalog`]: which segments exist, where, in which state (in the hot database).
//! - [`cold`]: segments on S3-compatible object storage, and the local cache.
//! - [`lifecycle`]: compaction, upload, retention, crash recovery.
//! - [`erase`]: deleting lines by selector and time range across every tier.
//! - [`rebuild`]: the catalog made again from the bucket listing.

pub mod catalog;
pub mod cold;
pub mod erase;
pub mod hot;
pub mod hot_index;
pub mod lifecycle;
pub mod rebuild;
pub mod segment;
