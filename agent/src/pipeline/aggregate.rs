//! Pre-aggregation: exact counts and bytes of records per window × stream × level ×
//! template, gathered for one batch, and the shipping decision each record gets.
//!
//! Owns the window arithmetic, the per-batch counts and a source's [`Ship`] policy.
//! Does not own the stream table (the batcher's) or what the counts feed (the batch's
//! aggregate section and the anomaly detector).
//!
//! Every record read is counted, shipped or not, so the counts stay exact for sources
//! shipped as aggregates only or sampled.

use crate::hash::IntBuild;
use crate::sources::{Line, Ship};
use bytes::Bytes;
use heimdall_common::record::{Aggregate, Level};
use std::collections::HashMap;
use std::time::Duration;

/// (stream index, window start, level, template).
type Key = (u32, i64, u8, u64);

#[derive(Debug)]
struct Entry {
    count: u64,
    bytes: u64,
    shipped: u64,
    /// The first line counted, a sample for anomaly events.
    sample: Bytes,
}

/// Whether a source with policy `ship` ships `line`. Sampling keeps records at warning
/// level or worse, and chooses the others by a hash of the line, so a line read again
/// after a restart is chosen the same way.
pub fn ships(ship: Ship, line: &Line) -> bool {
    match ship {
        Ship::All => true,
        Ship::AggregatesOnly => false,
        Ship::Sample(rate) => {
            if line.level >= Level::Warn {
                return true;
            }
            // FNV-1a's high bits barely move between similar short lines: mix them
            // (fmix64).
            let mut h = crate::hash::fnv1a(&line.bytes);
            h ^= h >> 33;
            h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 33;
            h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            h ^= h >> 33;
            ((h >> 11) as f64 / (1u64 << 53) as f64) < rate
        }
    }
}

/// The counts of one batch.
#[derive(Debug)]
pub struct Aggregates {
    window_ns: i64,
    counts: HashMap<Key, Entry, IntBuild>,
}

impl Aggregates {
    /// Counts over windows of `window`, in whole seconds (at least one).
    pub fn new(window: Duration) -> Aggregates {
        Aggregates {
            window_ns: window.as_secs().max(1) as i64 * 1_000_000_000,
            counts: HashMap::default(),
        }
    }

    /// Keys gathered so far.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Counts `line` of stream `stream` at event time `time_ns`.
    pub fn count(&mut self, stream: u32, time_ns: i64, line: &Line, shipped: bool) {
        let key = (
            stream,
            time_ns.div_euclid(self.window_ns) * self.window_ns,
            line.level as u8,
            line.template_id,
        );
        let e = self.counts.entry(key).or_insert_with(|| Entry {
            count: 0,
            bytes: 0,
            shipped: 0,
            sample: line.bytes.clone(),
        });
        e.count += 1;
        e.bytes += line.bytes.len() as u64;
        e.shipped += u64::from(shipped);
    }

    /// Takes the counts, in key order, each with its sample line.
    pub fn take(&mut self) -> Vec<(Aggregate, Bytes)> {
        let window_secs = (self.window_ns / 1_000_000_000) as u32;
        let mut v: Vec<(Key, Entry)> = self.counts.drain().collect();
        v.sort_by_key(|(k, _)| *k);
        v.into_iter()
            .map(|((stream, start_ns, level, template_id), e)| {
                (
                    Aggregate {
                        stream,
                        start_ns,
                        window_secs,
                        level: Level::from_u8(level).unwrap_or_default(),
                        template_id,
                        count: e.count,
                        bytes: e.bytes,
                        shipped: e.shipped,
                    },
                    e.sample,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Aggregates equal raw counts: per stream, window, level and template, the
        /// counts and bytes of the aggregates are those of the records, and shipped
        /// counts those the policy shipped.
        #[test]
        fn aggregates_equal_raw_counts(
            recs in proptest::collection::vec(
                (0u32..3, 0i64..100_000_000_000, 0u8..7, 0u64..5, "[a-z ]{0,40}"),
                0..300,
            ),
            rate in 0.01f64..1.0,
        ) {
            let mut agg = Aggregates::new(Duration::from_secs(10));
            let mut want: HashMap<Key, (u64, u64, u64)> = HashMap::new();
            for (stream, t, level, template, text) in &recs {
                let mut line = Line::new(Bytes::from(text.clone()), 0);
                line.level = Level::from_u8(*level).unwrap();
                line.template_id = *template;
                let shipped = ships(Ship::Sample(rate), &line);
                agg.count(*stream, *t, &line, shipped);
                let w = want.entry((*stream, t / 10_000_000_000 * 10_000_000_000, *level, *template)).or_default();
                w.0 += 1;
                w.1 += text.len() as u64;
                w.2 += u64::from(shipped);
            }
            let got: HashMap<_, _> = agg
                .take()
                .into_iter()
                .map(|(a, _)| ((a.stream, a.start_ns, a.level as u8, a.template_id), (a.count, a.bytes, a.shipped)))
                .collect();
            prop_assert_eq!(got, want);
            prop_assert!(agg.is_empty());
        }
    }
}
