//! The Loghub-2k data the accuracy tests and benchmarks read: where it is, its ground
//! truth, and Grouping Accuracy. Shared by `loghub_ga.rs`, `replay/mod.rs` and the
//! end-to-end template benchmark.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The eight systems with corrected ground truth.
pub const DATASETS: [&str; 8] = [
    "HDFS",
    "Hadoop",
    "Spark",
    "Zookeeper",
    "BGL",
    "HealthApp",
    "OpenSSH",
    "Apache",
];

/// `$HEIMDALL_LOGHUB_DIR`, else `../shared/data/loghub` beside the checkout.
pub fn data_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("HEIMDALL_LOGHUB_DIR") {
        return Some(PathBuf::from(d));
    }
    let d = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/loghub"
    ));
    d.is_dir().then_some(d)
}

/// Splits one CSV record (RFC 4180 quoting).
pub fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// The raw lines of system `name` (without `\r`) and the true event of each.
pub fn read(dir: &Path, name: &str) -> (Vec<String>, Vec<String>) {
    let raw = std::fs::read_to_string(dir.join(format!("{name}/{name}_2k.log")))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let lines: Vec<String> = raw
        .lines()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect();
    let mut truth = dir.join(format!("{name}/{name}_2k.log_structured_corrected.csv"));
    if !truth.exists() {
        truth = dir.join(format!("{name}/{name}_2k.log_structured.csv"));
    }
    let text = std::fs::read_to_string(&truth).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut rows = text.lines();
    let header = csv_fields(rows.next().expect("header"));
    let ev = header.iter().position(|h| h == "EventId").expect("EventId");
    let events: Vec<String> = rows.map(|r| csv_fields(r)[ev].clone()).collect();
    assert_eq!(lines.len(), events.len(), "{name}: lines vs ground truth");
    (lines, events)
}

/// Grouping Accuracy: the share of lines whose predicted group is exactly the set of
/// lines of their true event.
pub fn grouping_accuracy<P: std::hash::Hash + Eq>(predicted: &[P], truth: &[String]) -> f64 {
    let mut by_pred: HashMap<&P, Vec<usize>> = HashMap::new();
    let mut by_true: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (p, t)) in predicted.iter().zip(truth).enumerate() {
        by_pred.entry(p).or_default().push(i);
        by_true.entry(t.as_str()).or_default().push(i);
    }
    let mut correct = 0;
    for lines in by_pred.values() {
        let t = truth[lines[0]].as_str();
        if by_true[t] == *lines {
            correct += lines.len();
        }
    }
    correct as f64 / predicted.len().max(1) as f64
}

/// Template ids joined by the aliases an agent ships, as the aggregator joins them: every
/// id linked to another, directly or through others, reads as one.
#[derive(Default)]
pub struct Aliases {
    parent: HashMap<u64, u64>,
}

impl Aliases {
    /// Records that `from` now means `to`.
    pub fn link(&mut self, from: u64, to: u64) {
        let (a, b) = (self.resolve(from), self.resolve(to));
        if a != b {
            self.parent.insert(a, b);
        }
    }

    /// The one id `id` reads as.
    pub fn resolve(&self, mut id: u64) -> u64 {
        while let Some(&p) = self.parent.get(&id) {
            id = p;
        }
        id
    }
}
