//! PII never leaves the host: lines full of personal data and secrets (the labeled
//! corpus's one-line records) go through the real agent to the real aggregator, and no
//! original value is found in the spool (raw segment bytes and decoded batches), the
//! stored rows or any file of the aggregator's state (every table, WAL included).
//! Pseudonyms agree between agents that share a secret and differ with another secret.

use heimdall_agent::spool::{FullPolicy, Spool, SpoolLimits};
use heimdall_common::wire::{self, Frame, Limits};
use heimdall_tests::{free_port, metric, stored_rows, wait_for_count, AgentOptions, Cluster};
use memchr::memmem;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

const SECRET: &str = "correct horse battery staple";

/// One-line corpus records with PII, and every labeled value in them that occurs
/// nowhere else in the corpus.
fn corpus() -> (Vec<String>, Vec<(String, String)>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../agent/tests/data/pii/corpus.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let (mut lines, mut values, mut unlabeled) = (Vec::new(), Vec::new(), Vec::new());
    for rec in text.lines() {
        let v: serde_json::Value = serde_json::from_str(rec).unwrap();
        let line = v["line"].as_str().unwrap();
        let pii = v["pii"].as_array().unwrap();
        if pii.is_empty() || line.contains('\n') {
            continue;
        }
        let mut rest = line.as_bytes().to_vec();
        for p in pii {
            let (s, e) = (
                p["start"].as_u64().unwrap() as usize,
                p["end"].as_u64().unwrap() as usize,
            );
            values.push((
                p["type"].as_str().unwrap().to_owned(),
                line[s..e].to_owned(),
            ));
            rest[s..e].fill(0);
        }
        unlabeled.extend_from_slice(&rest);
        unlabeled.push(b'\n');
        lines.push(line.to_owned());
    }
    // A value that also appears where it is not PII (`postgres://postgres:postgres@db`)
    // says nothing when found: only values that occur as PII alone are looked for.
    values.retain(|(_, v)| memmem::find(&unlabeled, v.as_bytes()).is_none());
    (lines, values)
}

/// Values that are found in `hay`.
fn leaks<'a>(hay: &[u8], values: &'a [(String, String)]) -> Vec<&'a (String, String)> {
    values
        .iter()
        .filter(|(_, v)| memchr_find(hay, v.as_bytes()))
        .collect()
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> bool {
    memmem::find(hay, needle).is_some()
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Reads every file under `dir`, byte for byte, for any of `values`.
fn assert_no_file_holds(dir: &Path, values: &[(String, String)]) {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    assert!(!files.is_empty(), "nothing under {}", dir.display());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let found = leaks(&bytes, values);
        assert!(
            found.is_empty(),
            "{} holds {:?}",
            f.display(),
            &found[..found.len().min(5)]
        );
    }
}

fn redact_section(secret: &str) -> String {
    format!(
        "[redact]\nsecret = {secret:?}\ntypes.email = \"pseudonym\"\ntypes.ipv4 = \"pseudonym\"\ntypes.card = \"partial\"\n[[redact.rules]]\nname = \"internal_case\"\npattern = 'CASE-[0-9]{{6}}'\naction = \"drop\"\n"
    )
}

#[test]
fn no_original_pii_value_reaches_the_spool_the_wire_or_storage() {
    let (lines, values) = corpus();
    // Short values (a two-letter password) would also match innocent text.
    let values: Vec<(String, String)> = values.into_iter().filter(|(_, v)| v.len() >= 6).collect();
    assert!(
        lines.len() > 1000 && values.len() > 1000,
        "{} lines, {} values",
        lines.len(),
        values.len()
    );
    let mut c = Cluster::start().unwrap();
    // The aggregator is down at first, so every batch stays in the spool to be scanned.
    c.agg.proc.terminate(Duration::from_secs(20)).unwrap();

    let mut text = String::new();
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    // Records a custom `drop` rule discards: counted, never spooled.
    for i in 0..25 {
        text.push_str(&format!(
            "escalated CASE-{:06} to legal for alice.example@corp-mail.com\n",
            100_000 + i
        ));
    }
    std::fs::write(c.logs.join("pii.log"), &text).unwrap();
    let total = lines.len() as u64 + 25;

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut agent = c
        .agent(
            "pii-a",
            AgentOptions {
                metrics_listen: format!("127.0.0.1:{port}"),
                extra: redact_section(SECRET),
                ..AgentOptions::default()
            },
        )
        .unwrap();
    let read = wait_for_count(total, Duration::from_secs(60), || {
        metric(&url, "heimdall_agent_lines_read_total").unwrap_or(0.0) as u64
    });
    assert_eq!(read, total, "{}", agent.proc.log_tail(30));
    let redactions = metric(&url, "heimdall_agent_redactions_total").unwrap_or(0.0);
    let dropped = metric(&url, "heimdall_agent_redaction_dropped_records_total").unwrap_or(0.0);
    assert!(
        redactions as usize >= values.len(),
        "{redactions} redactions for {} values",
        values.len()
    );
    assert_eq!(dropped, 25.0);
    // SIGTERM: the batcher drains into the spool and the spool is flushed.
    assert_eq!(
        agent.proc.terminate(Duration::from_secs(20)).unwrap(),
        Some(0)
    );

    // The spool, byte by byte (segments, state, dead letters) ...
    let spool_dir = agent.state_dir.join("spool");
    assert_no_file_holds(&spool_dir, &values);
    // ... and decoded: lz4 could hide a value from a raw scan, a decoded batch cannot.
    let rec = Spool::open(
        &spool_dir,
        SpoolLimits {
            max_bytes: 1 << 30,
            segment_bytes: 32 << 20,
            memory_bytes: 0,
            policy: FullPolicy::Block,
        },
    )
    .unwrap();
    let limits = Limits::default();
    let (mut seq, mut spooled) = (0, Vec::new());
    while let Some(s) = rec.spool.next_unacked(seq) {
        seq = s;
        let frame = rec.spool.frame(s).unwrap().expect("unacknowledged batch");
        let Frame::Batch(b) = wire::parse(frame, &limits).unwrap() else {
            panic!("spool entries are batches")
        };
        for r in b.open(&limits).unwrap().records {
            spooled.push(r.line.to_vec());
        }
    }
    rec.spool.close();
    drop(rec);
    assert_eq!(
        spooled.len(),
        lines.len(),
        "every record spooled except the dropped ones"
    );
    let all: Vec<u8> = spooled.join(&b'\n');
    let found = leaks(&all, &values);
    assert!(
        found.is_empty(),
        "decoded spool holds {:?}",
        &found[..found.len().min(5)]
    );
    assert!(
        !memchr_find(&all, b"CASE-1000"),
        "a dropped record was spooled"
    );
    assert!(
        memchr_find(&all, b"<email:"),
        "pseudonyms are in the records"
    );

    // Now deliver it: the aggregator stores exactly the redacted records.
    c.agg.restart(&c.root, &c.pki).unwrap();
    agent.restart().unwrap();
    let db = c.agg.db();
    let n = wait_for_count(lines.len() as u64, Duration::from_secs(60), || {
        stored_rows(&db).map(|r| r.len() as u64).unwrap_or(0)
    });
    assert_eq!(n, lines.len() as u64, "{}", agent.proc.log_tail(20));
    let rows = stored_rows(&db).unwrap();
    let stored: Vec<u8> = rows
        .iter()
        .map(|r| r.line.clone())
        .collect::<Vec<_>>()
        .join(&b'\n');
    let found = leaks(&stored, &values);
    assert!(
        found.is_empty(),
        "stored rows hold {:?}",
        &found[..found.len().min(5)]
    );
    let mut sorted_spooled = spooled.clone();
    sorted_spooled.sort();
    let mut sorted_rows: Vec<Vec<u8>> = rows.iter().map(|r| r.line.clone()).collect();
    sorted_rows.sort();
    assert_eq!(
        sorted_rows, sorted_spooled,
        "what is stored is what was spooled"
    );
    agent.proc.terminate(Duration::from_secs(20)).unwrap();
    c.agg.proc.terminate(Duration::from_secs(20)).unwrap();
    // Every file the aggregator keeps: the database, its WAL, whatever else is there.
    assert_no_file_holds(&c.agg.state_dir, &values);
}

#[test]
fn pseudonyms_agree_across_agents_sharing_a_secret_and_differ_with_another() {
    let c = Cluster::start().unwrap();
    let line =
        "login ok for Grace.Hopper@navy.example.mil from 198.51.100.23 card 4012 8888 8888 1881";
    let mut agents = Vec::new();
    for (name, secret) in [
        ("ps-a", SECRET),
        ("ps-b", SECRET),
        ("ps-c", "another secret, 16+ chars"),
    ] {
        let dir = c.logs.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("app.log"), format!("{line}\n")).unwrap();
        agents.push(
            c.agent(
                name,
                AgentOptions {
                    include: vec![format!("{}/*.log", dir.display())],
                    extra: redact_section(secret),
                    ..AgentOptions::default()
                },
            )
            .unwrap(),
        );
    }
    let db = c.agg.db();
    let n = wait_for_count(3, Duration::from_secs(60), || {
        stored_rows(&db).map(|r| r.len() as u64).unwrap_or(0)
    });
    assert_eq!(n, 3);
    let rows = stored_rows(&db).unwrap();
    let by_host = |h: &str| {
        let r = rows
            .iter()
            .find(|r| r.labels.get("host") == Some(h))
            .unwrap();
        String::from_utf8(r.line.clone()).unwrap()
    };
    let (a, b, other) = (by_host("ps-a"), by_host("ps-b"), by_host("ps-c"));
    assert!(
        a.starts_with("login ok for <email:")
            && a.contains(" from <ipv4:")
            && a.ends_with(" card <card:****1881>"),
        "{a}"
    );
    assert!(!a.contains("Hopper") && !a.contains("198.51.100.23"), "{a}");
    assert_eq!(a, b, "same secret, same pseudonyms on two hosts");
    assert_ne!(a, other, "another secret gives other pseudonyms");
    let tokens = |s: &str| -> HashSet<String> {
        s.split(' ')
            .filter(|t| t.starts_with("<email:") || t.starts_with("<ipv4:"))
            .map(str::to_owned)
            .collect()
    };
    assert!(tokens(&a).is_disjoint(&tokens(&other)), "{a} / {other}");
    for mut a in agents {
        a.proc.terminate(Duration::from_secs(20)).unwrap();
    }
}
