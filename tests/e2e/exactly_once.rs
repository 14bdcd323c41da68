//! Regression tests for four ways ordinary input once broke "every line stored exactly
//! once", each named after what broke, checked through the Loki API (what a user
//! gets), with the real binaries.

use heimdall_tests::{
    append, get_json, post_json, query_count, query_lines, wait_for_count, AgentOptions, Cluster,
};
use std::collections::BTreeMap;
use std::time::Duration;

fn words(n: usize) -> String {
    let w = [
        "plain", "words", "with", "no", "digits", "at", "all", "here",
    ];
    let mut s = String::new();
    let mut i = 0;
    while s.len() < n {
        s.push_str(w[i % w.len()]);
        s.push(' ');
        i += 1;
    }
    s.truncate(n);
    s
}

fn no_dead_letters(c: &Cluster, agent: &str) {
    let v = get_json(&format!("{}/api/v1/agents", c.agg.url()));
    let a = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == agent)
        .unwrap_or_else(|| panic!("agent {agent} in {v}"));
    assert_eq!(a["rejected_batches"], 0, "{a}");
    assert_eq!(a["dead_letter_batches"], 0, "{a}");
}

/// A line whose template text was over 4 KiB (a 7.8 KB line of plain words), or any
/// line cut at `max_line_bytes`, made the aggregator reject its whole batch: the long
/// line and every other line of the batch were dead-lettered.
#[test]
fn a_long_line_loses_nothing_of_its_batch() {
    let c = Cluster::start().unwrap();
    let p = c.logs.join("app.log");
    let mut text = String::new();
    for i in 0..10 {
        text.push_str(&format!("before the long lines {i}\n"));
    }
    text.push_str(&words(7_800));
    text.push('\n');
    // Over the agent's default line limit (256 KiB): cut and flagged.
    text.push_str(&words(600_000));
    text.push('\n');
    for i in 0..10 {
        text.push_str(&format!("after the long lines {i}\n"));
    }
    append(&p, text.as_bytes());
    let _agent = c.agent("long-lines", AgentOptions::default()).unwrap();
    let sel = r#"{agent="long-lines"}"#;
    let got = wait_for_count(22, Duration::from_secs(60), || {
        query_count(&c.agg.url(), sel)
    });
    assert_eq!(got, 22);
    let lines = query_lines(&c.agg.url(), sel, 100);
    assert_eq!(lines.len(), 22);
    assert!(lines.iter().any(|l| l.line == words(7_800)));
    let cut = query_lines(
        &c.agg.url(),
        r#"{agent="long-lines"} | truncated="true""#,
        100,
    );
    assert_eq!(cut.len(), 1, "the cut line is flagged, and only it");
    assert!(cut[0].line.len() <= 256 << 10 && cut[0].line.len() > 250_000);
    no_dead_letters(&c, "long-lines");
}

/// Three files beginning with the same header, rotated by copy and truncate while
/// written: a third of the lines were stored twice, because the second rotated copy
/// was taken for a new file and read from its start.
#[test]
fn copytruncate_of_files_sharing_a_first_line_stores_each_line_once() {
    let c = Cluster::start().unwrap();
    let _agent = c
        .agent(
            "csv",
            AgentOptions {
                include: vec![format!("{}/*", c.logs.display())],
                ..AgentOptions::default()
            },
        )
        .unwrap();
    let header = "time,host,value\n";
    let names = ["a.csv", "b.csv", "c.csv"];
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for n in names {
        append(&c.logs.join(n), header.as_bytes());
        *want.entry(header.trim_end().to_owned()).or_default() += 1;
    }
    let mut rotations = 0;
    for round in 0..6 {
        for (f, n) in names.iter().enumerate() {
            let p = c.logs.join(n);
            let mut chunk = String::new();
            for i in 0..1_000 {
                let l = format!("{round}{i:04},{f},{}", i * 7 % 1000);
                chunk.push_str(&l);
                chunk.push('\n');
                *want.entry(l).or_default() += 1;
                // Written in bursts while the agent reads.
                if i % 250 == 249 {
                    append(&p, chunk.as_bytes());
                    chunk.clear();
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            append(&p, chunk.as_bytes());
            rotations += 1;
            std::fs::copy(&p, c.logs.join(format!("{n}.{rotations}"))).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(0)
                .unwrap();
        }
    }
    let total: usize = want.values().sum();
    let sel = r#"{agent="csv"}"#;
    let got = wait_for_count(total as u64, Duration::from_secs(120), || {
        query_count(&c.agg.url(), sel)
    });
    let mut have: BTreeMap<String, usize> = BTreeMap::new();
    for l in query_lines(&c.agg.url(), sel, 100_000) {
        *have.entry(l.line).or_default() += 1;
    }
    let wrong: Vec<_> = want
        .iter()
        .filter(|(l, n)| have.get(*l) != Some(n))
        .map(|(l, n)| (l.clone(), *n, have.get(l).copied().unwrap_or(0)))
        .take(10)
        .collect();
    assert!(wrong.is_empty(), "(line, written, stored): {wrong:?}");
    assert_eq!(got, total as u64);
    no_dead_letters(&c, "csv");
}

/// A run of NUL bytes inside a file (what a crash leaves) joined onto the next line,
/// made it longer than the line limit, and its batch was lost.
#[test]
fn a_run_of_nul_bytes_does_not_cost_a_batch() {
    let c = Cluster::start().unwrap();
    let p = c.logs.join("crashed.log");
    let mut data = Vec::new();
    for i in 0..5 {
        data.extend_from_slice(format!("before the crash {i}\n").as_bytes());
    }
    data.extend_from_slice(b"a line the crash cut sho");
    data.extend(std::iter::repeat_n(0u8, 300_000));
    for i in 0..5 {
        data.extend_from_slice(format!("after the restart {i}\n").as_bytes());
    }
    append(&p, &data);
    let _agent = c
        .agent(
            "crashed",
            AgentOptions {
                files_extra: "max_line_bytes = \"64KiB\"".into(),
                ..AgentOptions::default()
            },
        )
        .unwrap();
    let sel = r#"{agent="crashed"}"#;
    let got = wait_for_count(11, Duration::from_secs(60), || {
        query_count(&c.agg.url(), sel)
    });
    assert_eq!(got, 11);
    let lines: Vec<String> = query_lines(&c.agg.url(), sel, 100)
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert!(
        lines.contains(&"a line the crash cut sho".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"after the restart 0".to_owned()),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| !l.contains('\0')), "{lines:?}");
    no_dead_letters(&c, "crashed");
}

/// A push with `{agent="web1"}` was stored as is: anyone who may push could write lines
/// that look as if the mTLS-authenticated agent `web1` sent them.
#[test]
fn http_push_cannot_forge_an_agents_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("ci.token");
    std::fs::write(&token_file, "ci-secret-token-0123\n").unwrap();
    let c = Cluster::start_with(&format!(
        "[[api.tokens]]\nname = \"ci\"\nrole = \"write\"\ntoken_file = {:?}\n",
        token_file.display().to_string()
    ))
    .unwrap();
    append(&c.logs.join("web.log"), b"the real web1\n");
    let _agent = c.agent("web1", AgentOptions::default()).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let (code, body) = post_json(
        &format!("{}/loki/api/v1/push", c.agg.url()),
        Some("ci-secret-token-0123"),
        &serde_json::json!({"streams": [{"stream": {"agent": "web1", "app": "x"}, "values": [[now.to_string(), "forged"]]}]}),
    );
    assert_eq!(code, 204, "{body}");
    let url = c.agg.url();
    let count = |q: &str| {
        let end = time::OffsetDateTime::now_utc().unix_timestamp() + 60;
        ureq::get(&format!("{url}/loki/api/v1/query_range"))
            .set("Authorization", "Bearer ci-secret-token-0123")
            .query("query", q)
            .query("start", "0")
            .query("end", &end.to_string())
            .call()
            .unwrap()
            .into_json::<serde_json::Value>()
            .unwrap()["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["values"].as_array().unwrap().len())
            .sum::<usize>()
    };
    assert_eq!(
        wait_for_count(1, Duration::from_secs(30), || count(r#"{agent="web1"}"#)
            as u64),
        1,
        "only the agent's own line is under agent=\"web1\""
    );
    assert_eq!(count(r#"{agent="ci", exported_agent="web1"}"#), 1);
}
