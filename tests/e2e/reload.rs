//! SIGHUP reloads the agent's sources: an added glob starts being tailed, a removed
//! one stops, files that stay keep their positions (nothing read twice or lost), and
//! an invalid file is reported while the running configuration is kept.

use heimdall_tests::{stored_lines, wait_for_count, AgentOptions, Cluster};
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

fn write(path: &std::path::Path, from: usize, to: usize, tag: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for i in from..to {
        writeln!(f, "{tag} line {i:05} of the reload test").unwrap();
    }
}

#[test]
fn sighup_adds_and_removes_globs_and_keeps_positions() {
    let c = Cluster::start().unwrap();
    let (a, b) = (c.logs.join("a"), c.logs.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (fa, fb) = (a.join("app.log"), b.join("app.log"));
    write(&fa, 0, 500, "a");
    write(&fb, 0, 300, "b");
    let glob_a = format!("{}/*.log", a.display());
    let glob_b = format!("{}/*.log", b.display());
    let agent = c
        .agent(
            "reload-agent",
            AgentOptions {
                include: vec![glob_a.clone()],
                ..AgentOptions::default()
            },
        )
        .unwrap();
    let db = c.agg.db();
    let count = || heimdall_tests::stored_count(&db);
    assert_eq!(wait_for_count(500, Duration::from_secs(30), count), 500);

    // Add b's glob.
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let both = text.replace(
        &format!("include = [{glob_a:?}]"),
        &format!("include = [{glob_a:?}, {glob_b:?}]"),
    );
    assert_ne!(both, text);
    std::fs::write(&agent.config, &both).unwrap();
    agent.proc.signal(Signal::SIGHUP);
    write(&fa, 500, 700, "a");
    assert_eq!(
        wait_for_count(1000, Duration::from_secs(30), count),
        1000,
        "{}",
        agent.proc.log_tail(20)
    );

    // An invalid file: reported, the running sources go on.
    std::fs::write(&agent.config, format!("{both}\n[bogus]\nx = 1\n")).unwrap();
    agent.proc.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    write(&fb, 300, 400, "b");
    assert_eq!(wait_for_count(1100, Duration::from_secs(30), count), 1100);
    assert!(agent
        .proc
        .log_text()
        .contains("keeping the running configuration"));

    // Remove a's glob: a is no longer read; b goes on from where it stood.
    let only_b = text.replace(
        &format!("include = [{glob_a:?}]"),
        &format!("include = [{glob_b:?}]"),
    );
    std::fs::write(&agent.config, only_b).unwrap();
    agent.proc.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(1500));
    write(&fa, 700, 800, "a");
    write(&fb, 400, 450, "b");
    assert_eq!(wait_for_count(1150, Duration::from_secs(30), count), 1150);
    std::thread::sleep(Duration::from_secs(2));

    let mut seen: HashMap<Vec<u8>, u32> = HashMap::new();
    for (_, l) in stored_lines(&db).unwrap() {
        *seen.entry(l).or_default() += 1;
    }
    assert_eq!(seen.len(), 1150, "distinct lines stored");
    assert!(seen.values().all(|&n| n == 1), "a line was stored twice");
    assert!(!seen.contains_key(b"a line 00700 of the reload test".as_slice()));
    assert_eq!(agent.proc.log_text().matches("sources reloaded").count(), 2);
}
