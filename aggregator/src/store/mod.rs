//! Storage. Owns where data lives and how it is read back; does not own query
//! semantics (see `query`).
//!
//! - [`hot`]: SQLite in WAL mode, written by one thread with group commit; every batch
//!   is committed together with its identity, so a resent batch is never stored twice.

pub mod hot;
