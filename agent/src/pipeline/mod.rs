//! The agent's pipeline between sources and the spool.
//!
//! Stages are synchronous types that are unit-tested and benchmarked without tokio,
//! each wrapped by a small task; channels between tasks are bounded.
//! - [`batch`]: groups records into batches by size and time, with the checkpoints
//!   they cover, and hands sealed batches to the spool.

pub mod batch;
