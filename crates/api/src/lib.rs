//! `heimdall-api`: the aggregator's HTTP API as types, shared by the server, the
//! `heimdall` CLI and the console.

/// Formats nanoseconds since the epoch as RFC 3339 (UTC); the number itself when it is
/// out of range.
pub fn format_ns(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ns.to_string())
}
