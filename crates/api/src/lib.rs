//! `heimdall-api`: the aggregator's HTTP API as types — the contract between the
//! server, the `heimdall` CLI and the console — and, with the `client` feature, an
//! async client for it.
//!
//! - [`loki`]: the Loki endpoints' shapes (query results, labels, series, pushes, tail).
//! - [`model`]: Heimdall's own endpoints (agents, anomalies, rules, alerts, silences,
//!   incidents, administration).
//! - [`client`]: a typed async client (feature `client`).
//!
//! Every answer is an [`Envelope`] (`{"status": "success", "data": …}`) except the
//! Loki endpoints that Loki itself answers bare (`index/stats`, `status/buildinfo`);
//! every error is an [`ErrorBody`] with a `message`.

pub mod loki;
pub mod model;

#[cfg(feature = "client")]
pub mod client;

use serde::{Deserialize, Serialize};

/// `{"status": "success", "data": …}`; `data` is absent for answers that carry none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub status: String,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
}

fn none<T>() -> Option<T> {
    None
}

impl<T> Envelope<T> {
    /// A successful answer carrying `data`.
    pub fn ok(data: T) -> Envelope<T> {
        Envelope {
            status: "success".into(),
            data: Some(data),
        }
    }
}

impl Envelope<()> {
    /// A successful answer without data.
    pub fn done() -> Envelope<()> {
        Envelope {
            status: "success".into(),
            data: None,
        }
    }
}

/// The body of every error: Loki's `status`, `errorType` and `message` (and `error`,
/// which some clients read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub status: String,
    #[serde(rename = "errorType")]
    pub error_type: String,
    pub message: String,
    #[serde(default)]
    pub error: String,
}

impl ErrorBody {
    /// An error of `error_type` saying `message`.
    pub fn new(error_type: &str, message: &str) -> ErrorBody {
        ErrorBody {
            status: "error".into(),
            error_type: error_type.into(),
            message: message.into(),
            error: message.into(),
        }
    }
}

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

/// A sample value as Loki writes it: `NaN`, `+Inf`, `-Inf` or the shortest decimal.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_carry_data_or_none() {
        assert_eq!(
            serde_json::to_string(&Envelope::done()).unwrap(),
            r#"{"status":"success"}"#
        );
        let e: Envelope<Vec<String>> =
            serde_json::from_str(r#"{"status":"success","data":["a"]}"#).unwrap();
        assert_eq!(e.data, Some(vec!["a".to_owned()]));
        let e: Envelope<()> = serde_json::from_str(r#"{"status":"success"}"#).unwrap();
        assert_eq!(e.data, None);
    }
}
