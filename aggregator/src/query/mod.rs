//! Queries. Owns the query language and its evaluation over the stores; does not own
//! storage layout (see `store`) or HTTP (see `api`).
//!
//! - [`parse`]: LogQL subset → AST, with the byte position of every error.
//! - [`exec`]: runs a log query against the hot store.
//! - [`intel`]: template patterns, counts from agents' pre-aggregates, anomaly events.

pub mod exec;
pub mod intel;
pub mod parse;
