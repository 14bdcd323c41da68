//! Queries. Owns the query language and its evaluation over the stores; does not own
//! storage layout (see `store`) or HTTP (see `api`).
//!
//! - [`parse`]: LogQL subset → AST, with the byte position of every error.
//! - [`pipeline`]: a log query's stages over one line (filters, parsers, labels).
//! - [`exec`]: the [`exec::Source`] queries read, and log queries.
//! - [`eval`]: metric queries (range functions, aggregations, binary operators).
//! - [`intel`]: template patterns, counts from agents' pre-aggregates, anomaly events.

pub mod eval;
pub mod exec;
pub mod intel;
pub mod parse;
pub mod pipeline;
