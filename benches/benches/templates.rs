//! Template Grouping Accuracy end to end, where users meet it: each Loghub-2k system's
//! raw log is written to a file that a real agent tails (parsing, redaction and mining
//! whole lines, as on a host) and ships to a real aggregator; the accuracy is computed
//! from the template ids the aggregator stored with the lines, resolved through the
//! aliases it keeps (the ids patterns, alert rules and correlation see), against the
//! corrected ground truth. Printed beside: the ids as stored before resolution, and the
//! miner alone on the same whole lines in-process.
//!
//! `cargo bench -p heimdall-benches --bench templates`.

#[path = "../../agent/tests/loghub/mod.rs"]
mod loghub;

use heimdall_agent::pipeline::template::{Miner, MinerConfig};
use heimdall_tests::{stored_rows, wait_for_count, AgentOptions, Cluster};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("templates: benchmark");
        return Ok(());
    }
    let Some(dir) = loghub::data_dir() else {
        eprintln!("no Loghub data: set HEIMDALL_LOGHUB_DIR");
        return Ok(());
    };
    heimdall_tests::bins();
    println!("== template Grouping Accuracy end to end (agent tailing the raw log → aggregator), Loghub-2k");
    println!(
        "{:<10} {:>9} {:>10} {:>10} {:>8}",
        "system", "resolved", "as stored", "miner", "lines"
    );
    let (mut sum, mut min) = (0.0, f64::MAX);
    for name in loghub::DATASETS {
        let (lines, truth) = loghub::read(&dir, name);
        let c = Cluster::start()?;
        let _agent = c.agent("ga", AgentOptions::default())?;
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(c.logs.join(format!("{name}.log")), text)?;
        let n = lines.len() as u64;
        let stored = wait_for_count(n, Duration::from_secs(120), || c.count());
        anyhow::ensure!(stored == n, "{name}: {stored} of {n} lines stored");
        let rows = stored_rows(&c.agg.db())?;
        let conn = rusqlite::Connection::open(c.agg.db())?;
        let roots = heimdall_store::templates::roots(&conn)?;
        let as_stored: Vec<u64> = rows.iter().map(|r| r.template_id).collect();
        let resolved: Vec<u64> = as_stored
            .iter()
            .map(|id| roots.get(id).copied().unwrap_or(*id))
            .collect();
        let mut m = Miner::new(MinerConfig::default());
        let miner: Vec<usize> = lines.iter().map(|l| m.add(l).cluster).collect();
        let ga = loghub::grouping_accuracy(&resolved, &truth);
        println!(
            "{name:<10} {ga:>9.3} {:>10.3} {:>10.3} {n:>8}",
            loghub::grouping_accuracy(&as_stored, &truth),
            loghub::grouping_accuracy(&miner, &truth),
        );
        sum += ga;
        min = min.min(ga);
    }
    let avg = sum / loghub::DATASETS.len() as f64;
    println!(
        "average {avg:.3}, lowest {min:.3} (targets: >= 0.97 average {}, >= 0.95 each {})",
        if avg >= 0.97 { "met" } else { "MISSED" },
        if min >= 0.95 { "met" } else { "MISSED" }
    );
    Ok(())
}
