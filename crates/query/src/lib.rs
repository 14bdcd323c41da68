//! `heimdall-query`: LogQL evaluation over the store. Depends on the syntax
//! (`heimdall-logql`) and the store's reader (`heimdall-store`); never on alerting or
//! HTTP.
//!
//! - [`pipeline`]: a log query's stages over one line (filters, parsers, labels,
//!   `unwrap`).
//! - [`values`]: durations and sizes as LogQL reads them.
//! - [`exec`]: log queries (lines grouped by labels, in order, within limits).
//! - [`eval`]: metric queries (range functions, aggregations, binary operators).

pub mod eval;
pub mod exec;
pub mod pipeline;
pub mod values;
