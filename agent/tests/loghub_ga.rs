//! Grouping Accuracy of the template miner on the Loghub-2k benchmark (eight
//! datasets, corrected ground truth), with the one configuration the agent runs,
//! scored from the template ids as the aggregator resolves them (the ids lines were
//! tagged with, joined through the aliases a template leaves as it generalises).
//! Also printed: the miner's clusters, the ids as tagged, and whole lines (header
//! included, as the agent mines a file).
//!
//! The data is read from `$HEIMDALL_LOGHUB_DIR`, else `../shared/data/loghub` beside
//! the checkout; without it the test says loudly that it skipped.

use heimdall_agent::pipeline::template::{Miner, MinerConfig};
use std::collections::HashMap;
use std::path::PathBuf;

const DATASETS: [&str; 8] = [
    "HDFS",
    "Hadoop",
    "Spark",
    "Zookeeper",
    "BGL",
    "HealthApp",
    "OpenSSH",
    "Apache",
];
const MIN_AVERAGE_GA: f64 = 0.95;

fn data_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("HEIMDALL_LOGHUB_DIR") {
        return Some(PathBuf::from(d));
    }
    let d = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/loghub"
    ));
    d.is_dir().then_some(d)
}

/// A regex for a `formats.json` layout: `<Field>` placeholders around `<Content>`.
fn header_regex(format: &str) -> regex::Regex {
    let mut re = String::from("^");
    let mut rest = format;
    while let Some(s) = rest.find('<') {
        let e = s + rest[s..].find('>').unwrap();
        let lit = &rest[..s];
        re.push_str(&lit.split(' ').collect::<Vec<_>>().join(r"\s+"));
        let name = &rest[s + 1..e];
        re.push_str(&format!("(?P<{name}>.*?)"));
        rest = &rest[e + 1..];
    }
    re.push_str(&rest.split(' ').collect::<Vec<_>>().join(r"\s+"));
    re.push('$');
    regex::Regex::new(&re.replace("(?P<Content>.*?)", "(?P<Content>.*)")).unwrap()
}

/// Splits one CSV record (RFC 4180 quoting).
fn csv_fields(line: &str) -> Vec<String> {
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

fn grouping_accuracy(predicted: &[usize], truth: &[String]) -> f64 {
    let mut by_pred: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut by_true: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (p, t)) in predicted.iter().zip(truth).enumerate() {
        by_pred.entry(*p).or_default().push(i);
        by_true.entry(t.as_str()).or_default().push(i);
    }
    let mut correct = 0;
    for lines in by_pred.values() {
        let t = truth[lines[0]].as_str();
        if by_true[t] == *lines {
            correct += lines.len();
        }
    }
    correct as f64 / predicted.len() as f64
}

/// Mines `messages` in order; per message its cluster, the id it was tagged with, and
/// that id resolved through the aliases the agent ships (a former id to the id its
/// template has at the end), as the aggregator resolves them; and the template count.
fn mine(messages: &[&str]) -> (Vec<usize>, Vec<usize>, Vec<usize>, usize) {
    let mut miner = Miner::new(MinerConfig::default());
    let (mut clusters, mut ids) = (Vec::new(), Vec::new());
    let mut next: HashMap<u64, u64> = HashMap::new();
    for m in messages {
        let r = miner.add(m);
        if let Some(old) = r.replaced {
            next.insert(old, r.id);
        }
        clusters.push(r.cluster);
        ids.push(r.id);
    }
    let resolve = |mut id: u64| {
        let mut hops = 0;
        while let Some(&n) = next.get(&id) {
            if n == id || hops > 64 {
                break;
            }
            id = n;
            hops += 1;
        }
        id
    };
    let as_group = |v: Vec<u64>| -> Vec<usize> {
        let mut names: HashMap<u64, usize> = HashMap::new();
        v.into_iter()
            .map(|id| {
                let n = names.len();
                *names.entry(id).or_insert(n)
            })
            .collect()
    };
    let resolved = as_group(ids.iter().map(|&i| resolve(i)).collect());
    (clusters, as_group(ids), resolved, miner.len())
}

#[test]
fn loghub_grouping_accuracy_averages_at_least_0_95() {
    let Some(dir) = data_dir() else {
        eprintln!("\n*** SKIPPED: no Loghub data (set HEIMDALL_LOGHUB_DIR or provide ../shared/data/loghub) ***\n");
        return;
    };
    let formats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("formats.json")).unwrap()).unwrap();
    let mut total = 0.0;
    for d in DATASETS {
        let re = header_regex(formats[d]["log_format"].as_str().unwrap());
        let raw = std::fs::read_to_string(dir.join(format!("{d}/{d}_2k.log"))).unwrap();
        let truth_csv =
            std::fs::read_to_string(dir.join(format!("{d}/{d}_2k.log_structured_corrected.csv")))
                .unwrap();
        let mut rows = truth_csv.lines();
        let header = csv_fields(rows.next().unwrap());
        let ev = header.iter().position(|h| h == "EventId").unwrap();
        let truth: Vec<String> = rows.map(|r| csv_fields(r)[ev].clone()).collect();
        let lines: Vec<&str> = raw.lines().map(|l| l.trim_end_matches('\r')).collect();
        let content: Vec<&str> = lines
            .iter()
            .map(|l| {
                re.captures(l)
                    .map_or(*l, |c| c.name("Content").unwrap().as_str())
            })
            .collect();
        let (clusters, shipped, resolved, n) = mine(&content);
        assert_eq!(clusters.len(), truth.len(), "{d}: lines vs ground truth");
        let ga = grouping_accuracy(&resolved, &truth);
        let (_, _, raw_resolved, _) = mine(&lines);
        eprintln!(
            "{d:<10} GA {ga:.3} from ids as resolved ({:.3} clusters, {:.3} ids as tagged; whole lines {:.3}) ({n} templates)",
            grouping_accuracy(&clusters, &truth),
            grouping_accuracy(&shipped, &truth),
            grouping_accuracy(&raw_resolved, &truth),
        );
        total += ga;
    }
    let avg = total / DATASETS.len() as f64;
    eprintln!("average    GA {avg:.3} from ids as resolved");
    assert!(
        avg >= MIN_AVERAGE_GA,
        "average GA {avg:.3} is below {MIN_AVERAGE_GA}"
    );
}
