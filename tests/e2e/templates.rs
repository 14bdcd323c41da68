//! Template identity as users meet it: a template that generalises keeps one id in
//! what the aggregator shows (patterns, and so the lines a pattern opens), and agents
//! that see the same lines in other orders end with the same id per event type.

use crate::intel::enc;
use heimdall_agent::pipeline::template::{Miner, MinerConfig};
use heimdall_tests::get_json as get;
use heimdall_tests::{stored_rows, wait_for_count, AgentOptions, Cluster};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Lines of one event type tagged before and after their template generalised are
/// counted as one pattern, under the general text, through the real agent and
/// aggregator; the stored rows keep the ids they were tagged with.
#[test]
fn a_generalised_template_keeps_one_identity_in_patterns() {
    let c = Cluster::start().unwrap();
    let _a = c.agent("ident-a", AgentOptions::default()).unwrap();
    let mut text = String::new();
    for user in [
        "webmaster",
        "webmaster",
        "webmaster",
        "admin",
        "oracle",
        "admin",
    ] {
        text.push_str(&format!("Invalid user {user} from gateway\n"));
    }
    std::fs::write(c.logs.join("auth.log"), text).unwrap();
    assert_eq!(wait_for_count(6, Duration::from_secs(30), || c.count()), 6);
    let ids: HashSet<u64> = stored_rows(&c.agg.db())
        .unwrap()
        .iter()
        .map(|r| r.template_id)
        .collect();
    assert_eq!(
        ids.len(),
        2,
        "tagged before and after generalising: {ids:?}"
    );
    let sel = enc(r#"{agent="ident-a"}"#);
    let v = get(&format!(
        "{}/loki/api/v1/patterns?query={sel}&since=1h&step=1h",
        c.agg.url()
    ));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{v}");
    assert_eq!(data[0]["pattern"], "Invalid user <_> from gateway", "{v}");
    assert_eq!(data[0]["total"], 6, "{v}");
}

/// What one agent's miner made of a run of lines.
struct Run {
    /// Per line, its event type and the id it was tagged with.
    tagged: Vec<(usize, u64)>,
    /// The texts it announced.
    texts: Vec<(u64, String)>,
    /// The aliases it shipped: (former id, id now).
    aliases: Vec<(u64, u64)>,
}

/// The aggregator's resolution of what the agents shipped, stored as the aggregator
/// stores it.
fn resolve(agents: &[&Run]) -> rusqlite::Connection {
    let c = rusqlite::Connection::open_in_memory().unwrap();
    c.execute_batch(
        "CREATE TABLE templates (id INTEGER PRIMARY KEY, text TEXT NOT NULL,
                                 first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL);",
    )
    .unwrap();
    heimdall_store::templates::create(&c).unwrap();
    for run in agents {
        for (id, t) in &run.texts {
            c.execute(
                "INSERT OR IGNORE INTO templates VALUES (?1, ?2, 0, 0)",
                rusqlite::params![*id as i64, t],
            )
            .unwrap();
        }
        for (from, to) in &run.aliases {
            heimdall_store::templates::link(&c, *from, *to).unwrap();
        }
    }
    c
}

/// One agent mining `lines` (event type, text) in order.
fn mine(lines: &[(usize, String)]) -> Run {
    let mut m = Miner::new(MinerConfig::default());
    let (mut tagged, mut texts, mut aliases) = (Vec::new(), Vec::new(), Vec::new());
    for (ev, line) in lines {
        let r = m.add(line);
        tagged.push((*ev, r.id));
        texts.push((r.id, m.template(r.cluster).unwrap()));
        if let Some(old) = r.replaced {
            aliases.push((old, r.id));
        }
    }
    Run {
        tagged,
        texts,
        aliases,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Event types with word-valued slots (user names, hosts: variables no digit
    /// gives away, so templates generalise as their values arrive), seen by two agents
    /// in different orders: after the aggregator resolves aliases, each event type has
    /// one id on each agent, and the same id on both.
    #[test]
    fn every_event_type_has_one_id_whatever_the_order(
        picks in proptest::collection::vec((0usize..4, 0usize..5, 0usize..5, 0u32..100_000), 8..120),
        seed in any::<u64>(),
    ) {
        let users = ["root", "admin", "oracle", "webmaster", "guest"];
        let hosts = ["gateway", "bastion", "relay", "proxy", "edge"];
        let kinds = [
            ("Invalid user", "from host", "port"),
            ("Accepted password for", "from host", "port"),
            ("Connection closed by user", "at", "after"),
            ("Received disconnect from", "as user", "code"),
        ];
        let lines: Vec<(usize, String)> = picks
            .iter()
            .map(|(k, u, h, n)| {
                let (a, b, c) = kinds[*k];
                (*k, format!("{a} {} {b} {} {c} {n}", users[*u], hosts[*h]))
            })
            .collect();
        let mut shuffled = lines.clone();
        let mut rng = fastrand::Rng::with_seed(seed);
        rng.shuffle(&mut shuffled);
        let (a, b) = (mine(&lines), mine(&shuffled));
        let db = resolve(&[&a, &b]);
        let root = |id: u64| heimdall_store::templates::root(&db, id).unwrap();
        let mut per_event: HashMap<usize, HashSet<u64>> = HashMap::new();
        for (ev, id) in a.tagged.iter().chain(&b.tagged) {
            per_event.entry(*ev).or_default().insert(root(*id));
        }
        for (ev, roots) in &per_event {
            prop_assert_eq!(roots.len(), 1, "event type {} has ids {:?}", ev, roots);
        }
        let distinct: HashSet<u64> = per_event.values().flatten().copied().collect();
        prop_assert_eq!(distinct.len(), per_event.len(), "event types share an id");
    }
}
