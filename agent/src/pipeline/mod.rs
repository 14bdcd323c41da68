//! The agent's pipeline between sources and the spool.
//!
//! Stages are synchronous types that are unit-tested and benchmarked without tokio.
//! - [`multiline`]: joins the lines of one record. It runs inside the file source,
//!   per file, because a record's checkpoint is the file position after its last line.
//! - [`parse`]: event time and level from the record; run by each source on its own
//!   thread, with that source's settings.
//! - [`redact`]: PII found and masked, pseudonymised or dropped; run by each source
//!   right after parsing, so nothing downstream (spool, wire) ever holds the original.
//! - [`batch`]: groups records into batches by size and time, with the checkpoints
//!   they cover, and hands sealed batches to the spool.

pub mod batch;
pub mod multiline;
pub mod parse;
pub mod redact;
pub mod template;
