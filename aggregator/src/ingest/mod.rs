//! Ingest: the QUIC server agents ship to.
//!
//! Owns: accepting connections, authenticating agents by their client certificate,
//! the handshake, per-batch streams (decode → validate → commit → answer), and the
//! registry of agent status from heartbeats. Does not own storage (see `store`).
//!
//! - [`listener`]: the accept loop.
//! - [`conn`]: one agent connection.

pub mod conn;
pub mod listener;

use std::collections::HashMap;
use std::sync::Mutex;

/// Most agents remembered in the status registry; the longest-silent is forgotten first.
const MAX_AGENTS: usize = 100_000;

/// What an agent last told us.
pub use heimdall_api::model::Agent as AgentStatus;

impl heimdall_alert::eval::Hosts for Registry {
    fn last_seen(&self) -> Vec<(String, i64)> {
        self.list()
            .into_iter()
            .map(|a| (a.host, a.last_seen_ns))
            .collect()
    }
}

/// Agent status by identity, bounded.
#[derive(Default)]
pub struct Registry {
    agents: Mutex<HashMap<String, AgentStatus>>,
}

impl Registry {
    /// Applies `f` to the agent's entry, creating it, and marks the agent seen now.
    pub fn update(&self, agent_id: &str, f: impl FnOnce(&mut AgentStatus)) {
        self.apply(agent_id, true, f);
    }

    /// Applies `f` to the agent's entry without marking it seen: what the aggregator
    /// notices on its own (a connection timing out) says nothing of the agent being
    /// alive.
    pub fn update_unseen(&self, agent_id: &str, f: impl FnOnce(&mut AgentStatus)) {
        self.apply(agent_id, false, f);
    }

    fn apply(&self, agent_id: &str, seen: bool, f: impl FnOnce(&mut AgentStatus)) {
        let mut g = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if !g.contains_key(agent_id) && g.len() >= MAX_AGENTS {
            if let Some(oldest) = g
                .values()
                .filter(|a| !a.connected)
                .min_by_key(|a| a.last_seen_ns)
                .map(|a| a.agent_id.clone())
            {
                g.remove(&oldest);
            }
        }
        let e = g.entry(agent_id.to_owned()).or_insert_with(|| AgentStatus {
            agent_id: agent_id.to_owned(),
            ..AgentStatus::default()
        });
        if seen || e.last_seen_ns == 0 {
            e.last_seen_ns = now_ns();
        }
        f(e);
        metrics::gauge!("heimdall_aggregator_agents_known").set(g.len() as f64);
    }

    /// Every known agent, sorted by id.
    pub fn list(&self) -> Vec<AgentStatus> {
        let g = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = g.values().cloned().collect();
        v.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        v
    }
}

pub(crate) use heimdall_common::record::now_ns;

/// The labels of an agent's stream as stored: its identity, and a `service_name`
/// discovered as for pushes.
///
/// `agent` is who sent it (the certificate's name on
/// QUIC, the token's name on a push), and a sender's own `agent` label is kept as
/// `exported_agent` (as Prometheus keeps a scraped label that collides with a target
/// label), so no sender can pass for another.
pub fn stamp_stream(
    labels: &mut heimdall_common::record::Labels,
    who: &str,
    service_from: &[String],
) {
    stamp_identity(labels, who);
    crate::api::push::discover_service_name(labels, service_from);
}

/// Sets the `agent` label of a stream (see [`stamp_stream`]).
pub fn stamp_identity(labels: &mut heimdall_common::record::Labels, who: &str) {
    if let Some(v) = labels.remove("agent") {
        if v == who {
            labels.insert("agent", v);
            return;
        }
        let mut name = String::from("exported_agent");
        while labels.get(&name).is_some() {
            name.insert_str(0, "exported_");
        }
        labels.insert(name, v);
    }
    labels.insert("agent", who);
}
