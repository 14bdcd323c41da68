//! The journal source on real journal files: made by `systemd-journal-remote` from
//! export-format input, read by the agent through `journalctl --directory`, with unit
//! filters, binary and multi-line messages, a `kill -9` in the middle of reading, and
//! entries appended while the agent follows. Every kept entry is stored exactly once.

use heimdall_tests::{stored_rows, wait_for_count, AgentOptions, Cluster, Row};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const UNITS: [(&str, &str); 3] = [
    ("nginx.service", "nginx"),
    ("db.service", "postgres"),
    ("cron.service", "CRON"),
];
const BASE_US: i64 = 1_750_000_000_000_000;

fn journal_remote() -> PathBuf {
    for p in [
        "/lib/systemd/systemd-journal-remote",
        "/usr/lib/systemd/systemd-journal-remote",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("systemd-journal-remote is needed for the journal tests: apt-get install systemd-journal-remote (scripts/test installs it)");
}

/// The message of entry `i`; some are binary, some span lines.
fn message(i: usize) -> Vec<u8> {
    match i % 50 {
        7 => format!("binary \0 payload \u{1}{i}")
            .into_bytes()
            .into_iter()
            .chain([0xff, 0xfe])
            .collect(),
        13 => format!("ERROR: query failed {i}\nDETAIL: line two\n\tline three").into_bytes(),
        _ => format!(
            "entry {i} from {} lorem ipsum dolor sit amet",
            UNITS[i % 3].0
        )
        .into_bytes(),
    }
}

fn field(out: &mut Vec<u8>, k: &str, v: &[u8]) {
    let plain = std::str::from_utf8(v).is_ok() && !v.iter().any(|&c| c < 0x20 && c != b'\t');
    if plain {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    } else {
        // Binary form: name, newline, little-endian u64 length, bytes, newline.
        out.extend_from_slice(k.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
}

/// Writes entries `range` in journal export format and appends them to `journal`.
fn append_entries(journal: &Path, range: std::ops::Range<usize>) {
    let mut out = Vec::new();
    for i in range {
        let (unit, ident) = UNITS[i % 3];
        let rt = (BASE_US + i as i64 * 1000).to_string();
        let mono = (1_000_000 + i as i64 * 1000).to_string();
        let prio = (i % 8).to_string();
        field(&mut out, "__REALTIME_TIMESTAMP", rt.as_bytes());
        field(&mut out, "__MONOTONIC_TIMESTAMP", mono.as_bytes());
        field(&mut out, "_BOOT_ID", b"0123456789abcdef0123456789abcdef");
        field(&mut out, "_MACHINE_ID", b"fedcba9876543210fedcba9876543210");
        field(&mut out, "_HOSTNAME", b"journal-host");
        field(&mut out, "_SYSTEMD_UNIT", unit.as_bytes());
        field(&mut out, "SYSLOG_IDENTIFIER", ident.as_bytes());
        field(&mut out, "PRIORITY", prio.as_bytes());
        field(&mut out, "MESSAGE", &message(i));
        out.push(b'\n');
    }
    let export = journal.with_extension("export");
    std::fs::File::create(&export)
        .and_then(|mut f| f.write_all(&out))
        .unwrap();
    let st = Command::new(journal_remote())
        .arg("-o")
        .arg(journal)
        .arg(&export)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "systemd-journal-remote failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn level_of(i: usize) -> &'static str {
    match i % 8 {
        0..=2 => "fatal",
        3 => "error",
        4 => "warn",
        5 | 6 => "info",
        _ => "debug",
    }
}

/// Checks that `rows` hold entry `i` exactly once for every kept `i` below `n`.
fn check(rows: &[Row], n: usize, keep: impl Fn(usize) -> bool) {
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    for r in rows {
        *seen.entry(r.line.as_slice()).or_default() += 1;
    }
    let mut want = 0;
    for i in 0..n {
        let m = message(i);
        let got = seen.get(m.as_slice()).copied().unwrap_or(0);
        if keep(i) {
            want += 1;
            assert_eq!(
                got,
                1,
                "entry {i} ({:?}) stored {got} times",
                String::from_utf8_lossy(&m)
            );
        } else {
            assert_eq!(got, 0, "entry {i} should have been filtered out");
        }
    }
    assert_eq!(rows.len(), want, "stored rows");
}

#[test]
fn journal_entries_are_stored_once_across_a_kill_and_appends_with_filters() {
    let c = Cluster::start().unwrap();
    let jdir = c.root.join("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    let journal = jdir.join("remote.journal");
    const FIRST: usize = 60_000;
    const MORE: usize = 3_000;
    append_entries(&journal, 0..FIRST);

    let opts = AgentOptions {
        include: vec![format!("{}/none/*.log", c.root.display())],
        journald: format!(
            "directory = {:?}\nread_from = \"beginning\"\nexclude_units = [\"cron.service\"]\nmax_backoff = \"1s\"",
            jdir.display().to_string()
        ),
        ..AgentOptions::default()
    };
    let mut agent = c.agent("journal-agent", opts.clone()).unwrap();
    let keep = |i: usize| i % 3 != 2;
    let kept_first = (0..FIRST).filter(|&i| keep(i)).count() as u64;
    // Kill the agent while it is still reading the journal: as soon as rows arrive.
    let db = c.agg.db();
    let t0 = std::time::Instant::now();
    while heimdall_tests::stored_count(&db) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "nothing stored:\n{}",
            agent.proc.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    agent.proc.kill9();
    let at_kill = heimdall_tests::stored_count(&db);
    agent.restart().unwrap();
    let got = wait_for_count(kept_first, Duration::from_secs(120), || {
        heimdall_tests::stored_count(&db)
    });
    assert_eq!(
        got,
        kept_first,
        "after restart:\n{}",
        agent.proc.log_tail(40)
    );
    assert!(
        at_kill < kept_first,
        "the kill came too late to test a resume"
    );

    // Entries appended while the agent follows the journal.
    append_entries(&journal, FIRST..FIRST + MORE);
    let total = (0..FIRST + MORE).filter(|&i| keep(i)).count() as u64;
    let got = wait_for_count(total, Duration::from_secs(60), || {
        heimdall_tests::stored_count(&db)
    });
    assert_eq!(got, total, "after append:\n{}", agent.proc.log_tail(40));
    // A clean restart resumes after the checkpointed cursor: nothing read twice.
    assert_eq!(
        agent.proc.terminate(Duration::from_secs(20)).unwrap(),
        Some(0)
    );
    agent.restart().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let rows = stored_rows(&db).unwrap();
    check(&rows, FIRST + MORE, keep);

    // Fields became labels, PRIORITY the level, __REALTIME_TIMESTAMP the time.
    for r in &rows {
        let i: usize = match r.labels.get("service") {
            Some("nginx.service") | Some("db.service") => {
                let idx = (r.ts / 1000 - BASE_US) / 1000;
                idx as usize
            }
            other => panic!("unexpected service {other:?}"),
        };
        assert_eq!(r.line, message(i), "time of entry {i}");
        assert_eq!(r.level, level_of(i), "level of entry {i}");
        assert_eq!(r.labels.get("hostname"), Some("journal-host"));
        assert_eq!(r.labels.get("host"), Some("journal-agent"));
        assert!(r.labels.get("source").unwrap().starts_with("journald:"));
        assert_eq!(r.labels.get("syslog_identifier"), Some(UNITS[i % 3].1));
    }
    let binary = rows.iter().filter(|r| r.line.contains(&0)).count();
    let multi = rows
        .iter()
        .filter(|r| r.line.starts_with(b"ERROR: query failed") && r.line.contains(&b'\n'))
        .count();
    assert!(
        binary > 100 && multi > 100,
        "binary {binary}, multi-line {multi}"
    );
    let restarts = agent.proc.log_text().matches("reading the journal").count();
    assert!(restarts >= 3, "agent starts seen: {restarts}");
    assert_eq!(
        agent.proc.terminate(Duration::from_secs(20)).unwrap(),
        Some(0)
    );

    // An include filter: a second agent that only wants the database.
    let only_db = AgentOptions {
        journald: format!(
            "directory = {:?}\nread_from = \"beginning\"\ninclude_units = [\"db.service\"]",
            jdir.display().to_string()
        ),
        ..opts
    };
    let mut db_agent = c.agent("db-agent", only_db).unwrap();
    let want_db = (0..FIRST + MORE).filter(|i| i % 3 == 1).count() as u64;
    let before = rows.len() as u64;
    let got = wait_for_count(before + want_db, Duration::from_secs(90), || {
        heimdall_tests::stored_count(&db)
    });
    assert_eq!(got, before + want_db, "{}", db_agent.proc.log_tail(30));
    let rows = stored_rows(&db).unwrap();
    assert!(rows
        .iter()
        .filter(|r| r.labels.get("host") == Some("db-agent"))
        .all(|r| r.labels.get("service") == Some("db.service")));
    assert_eq!(
        db_agent.proc.terminate(Duration::from_secs(20)).unwrap(),
        Some(0)
    );
}
