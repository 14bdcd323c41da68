//! Template Grouping Accuracy end to end, where users meet it: each Loghub-2k system's
//! raw log is written to a file that a real agent tails (parsing, redaction and mining
//! whole lines, as on a host) and ships to a real aggregator; the accuracy is computed
//! from the template ids the aggregator stored with the lines, resolved through the
//! aliases it keeps (the ids patterns, alert rules and correlation see), against the
//! corrected ground truth. Shared by the end-to-end test and the benchmark.

use crate::{stored_rows, wait_for_count, AgentOptions, Cluster};
use std::path::Path;
use std::time::Duration;

#[path = "../../agent/tests/loghub/mod.rs"]
pub mod loghub;

/// One system's accuracy.
#[derive(Debug)]
pub struct SystemGa {
    pub name: &'static str,
    /// From the ids stored, resolved through the aliases.
    pub resolved: f64,
    /// From the ids as stored.
    pub as_stored: f64,
    pub lines: usize,
}

/// Ships the eight systems' logs (from `dir`) through `agents` agents to one
/// aggregator, each system's lines dealt round-robin to the agents (one file per system
/// on each), and scores each system from what the aggregator stored.
pub fn ship_and_score(dir: &Path, agents: usize) -> anyhow::Result<Vec<SystemGa>> {
    let c = Cluster::start()?;
    let mut running = Vec::new();
    for k in 0..agents {
        let logs = c.logs.join(format!("agent{k}"));
        std::fs::create_dir_all(&logs)?;
        let opts = AgentOptions {
            include: vec![format!("{}/*.log", logs.display())],
            // One batch in flight, so that the aggregator stores a file's lines in
            // the order they were read and each stored row can be paired with its
            // line by position (with several in flight, batches may commit in any
            // order).
            output_extra: "window = 1".into(),
            ..AgentOptions::default()
        };
        running.push(c.agent(&format!("loghub-{k}"), opts)?);
    }
    let mut truths = Vec::new();
    let mut total = 0u64;
    for name in loghub::DATASETS {
        let (lines, truth) = loghub::read(dir, name);
        for k in 0..agents {
            let mut text = String::new();
            for l in lines.iter().skip(k).step_by(agents) {
                text.push_str(l);
                text.push('\n');
            }
            std::fs::write(c.logs.join(format!("agent{k}/{name}.log")), text)?;
        }
        total += lines.len() as u64;
        truths.push((name, truth));
    }
    let stored = wait_for_count(total, Duration::from_secs(180), || c.count());
    anyhow::ensure!(stored == total, "{stored} of {total} lines stored");
    let rows = stored_rows(&c.agg.db())?;
    let conn = rusqlite::Connection::open(c.agg.db())?;
    let roots = heimdall_store::templates::roots(&conn)?;
    let mut out = Vec::new();
    for (name, truth) in truths {
        let file = format!("/{name}.log");
        let mut as_stored = vec![0u64; truth.len()];
        for k in 0..agents {
            let agent = format!("loghub-{k}");
            // Storage order is arrival order, and with one batch in flight one file's
            // lines arrive in order.
            let ids: Vec<u64> = rows
                .iter()
                .filter(|r| {
                    r.labels.get("agent") == Some(agent.as_str())
                        && r.labels.get("source").is_some_and(|s| s.ends_with(&file))
                })
                .map(|r| r.template_id)
                .collect();
            let slots: Vec<usize> = (k..truth.len()).step_by(agents).collect();
            anyhow::ensure!(
                ids.len() == slots.len(),
                "{name}: {} rows stored from {agent} for {} lines",
                ids.len(),
                slots.len()
            );
            for (i, id) in slots.into_iter().zip(ids) {
                as_stored[i] = id;
            }
        }
        let resolved: Vec<u64> = as_stored
            .iter()
            .map(|id| roots.get(id).copied().unwrap_or(*id))
            .collect();
        out.push(SystemGa {
            name,
            resolved: loghub::grouping_accuracy(&resolved, &truth),
            as_stored: loghub::grouping_accuracy(&as_stored, &truth),
            lines: truth.len(),
        });
    }
    Ok(out)
}
