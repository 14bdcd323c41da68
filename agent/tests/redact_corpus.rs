//! Accuracy of the built-in redaction detectors on the labeled corpus
//! (`data/pii/corpus.jsonl`; labeling rules in `data/pii/README.md`).
//!
//! A finding counts as a true positive only with the exact span and type of a label.
//! Every built-in type must reach 99% recall and 99% precision.

use heimdall_agent::pipeline::redact::{Redactor, BUILTIN};
use std::collections::BTreeMap;

const MIN_RECALL: f64 = 0.99;
const MIN_PRECISION: f64 = 0.99;

#[derive(Default)]
struct Score {
    tp: u64,
    fp: u64,
    fn_: u64,
    misses: Vec<String>,
    false_alarms: Vec<String>,
}

#[test]
fn builtin_detectors_reach_99_percent_recall_and_precision_on_every_type() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pii/corpus.jsonl");
    let text = std::fs::read_to_string(path).expect("corpus.jsonl");
    let r = Redactor::builtin();
    let mut scores: BTreeMap<&str, Score> =
        BUILTIN.iter().map(|t| (*t, Score::default())).collect();
    let (mut records, mut negatives, mut labels) = (0, 0, 0);
    let mut found = Vec::new();
    for (n, rec) in text.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(rec).unwrap_or_else(|e| panic!("corpus line {}: {e}", n + 1));
        let line = v["line"].as_str().expect("line").as_bytes();
        let want: Vec<(usize, usize, String)> = v["pii"]
            .as_array()
            .expect("pii")
            .iter()
            .map(|p| {
                (
                    p["start"].as_u64().unwrap() as usize,
                    p["end"].as_u64().unwrap() as usize,
                    p["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        records += 1;
        labels += want.len();
        if want.is_empty() {
            negatives += 1;
        }
        r.detect(line, &mut found);
        let got: Vec<(usize, usize, String)> = found
            .iter()
            .map(|f| (f.start, f.end, r.kind_name(f.kind).to_owned()))
            .collect();
        let show = |s: usize, e: usize| String::from_utf8_lossy(&line[s..e]).into_owned();
        for w in &want {
            let s = scores
                .get_mut(w.2.as_str())
                .unwrap_or_else(|| panic!("corpus line {}: unknown type {}", n + 1, w.2));
            if got.contains(w) {
                s.tp += 1;
            } else {
                s.fn_ += 1;
                let near: Vec<String> = got
                    .iter()
                    .filter(|g| g.0 < w.1 && w.0 < g.1)
                    .map(|g| format!("{} {:?}", g.2, show(g.0, g.1)))
                    .collect();
                s.misses.push(format!(
                    "line {}: {:?} (found instead: {near:?})",
                    n + 1,
                    show(w.0, w.1)
                ));
            }
        }
        for g in &got {
            if !want.contains(g) {
                let s = scores.get_mut(g.2.as_str()).expect("built-in type");
                s.fp += 1;
                s.false_alarms.push(format!(
                    "line {}: {:?} in {:?}",
                    n + 1,
                    show(g.0, g.1),
                    String::from_utf8_lossy(line)
                ));
            }
        }
    }
    assert!(
        records >= 3000,
        "the corpus has {records} records; it needs at least 3000"
    );
    eprintln!("{records} records, {negatives} negatives, {labels} labeled values");
    eprintln!(
        "{:<16} {:>6} {:>5} {:>5} {:>8} {:>9}",
        "type", "labels", "fn", "fp", "recall", "precision"
    );
    let mut failed = Vec::new();
    for (t, s) in &scores {
        let recall = s.tp as f64 / (s.tp + s.fn_).max(1) as f64;
        let precision = s.tp as f64 / (s.tp + s.fp).max(1) as f64;
        eprintln!(
            "{t:<16} {:>6} {:>5} {:>5} {:>7.2}% {:>8.2}%",
            s.tp + s.fn_,
            s.fn_,
            s.fp,
            recall * 100.0,
            precision * 100.0
        );
        if s.tp + s.fn_ == 0 {
            failed.push(format!("{t}: no labeled values in the corpus"));
        }
        if recall < MIN_RECALL || precision < MIN_PRECISION {
            failed.push(format!("{t}: recall {recall:.4}, precision {precision:.4}"));
        }
        for m in s.misses.iter().take(8) {
            eprintln!("    missed {m}");
        }
        for m in s.false_alarms.iter().take(8) {
            eprintln!("    false  {m}");
        }
    }
    assert!(
        failed.is_empty(),
        "below 99% recall or precision: {failed:#?}"
    );
}
