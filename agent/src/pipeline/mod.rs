//! The agent's pipeline between sources and the spool.
//!
//! Stages are synchronous types that are unit-tested and benchmarked without tokio.
//! - [`multiline`]: joins the lines of one record. It runs inside the file source,
//!   per file, because a record's checkpoint is the file position after its last line.
//! - [`parse`]: event time and level from the record; run by each source on its own
//!   thread, with that source's settings.
//! - [`redact`]: PII found and masked, pseudonymised or dropped; run by each source
//!   right after parsing, so nothing downstream (spool, wire) ever holds the original.
//! - [`template`]: each source's online template miner; records carry template ids.
//! - [`aggregate`]: exact per-window counts by stream × level × template of what was
//!   read, and a source's shipping policy (all, aggregates only, sampled).
//! - [`batch`]: groups records into batches by size and time, with the checkpoints
//!   they cover and their aggregates, and hands sealed batches to the spool.
//! - [`anomaly`]: per-stream and per-template baselines fed by the batcher's counts,
//!   tested at the end of each window.

pub mod aggregate;
pub mod anomaly;
pub mod batch;
pub mod multiline;
pub mod parse;
pub mod redact;
mod swar;
pub mod template;
