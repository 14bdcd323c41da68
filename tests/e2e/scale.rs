//! Ten thousand files matched by one glob: every line is stored once, with a handful of
//! threads and bounded memory (no thread or watch per file), and a file deleted while
//! open is read to its end.

use heimdall_tests::{stored_lines, wait_for_count, AgentOptions, Cluster};
use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

const FILES: usize = 10_000;

#[test]
fn ten_thousand_files_are_tailed_without_a_thread_per_file() {
    let c = Cluster::start().unwrap();
    for d in 0..100 {
        std::fs::create_dir_all(c.logs.join(format!("d{d:02}"))).unwrap();
    }
    let path = |i: usize| c.logs.join(format!("d{:02}/f{i:05}.log", i % 100));
    for i in 0..FILES {
        let mut f = std::fs::File::create(path(i)).unwrap();
        writeln!(f, "file {i:05} line 0").unwrap();
    }
    let agent = c
        .agent(
            "scale-agent",
            AgentOptions {
                include: vec![format!("{}/**/*.log", c.logs.display())],
                poll_interval: "1s",
                ..AgentOptions::default()
            },
        )
        .unwrap();
    let db = c.agg.db();
    let count = || heimdall_tests::stored_count(&db);
    assert_eq!(
        wait_for_count(FILES as u64, Duration::from_secs(180), count),
        FILES as u64,
        "{}",
        agent.proc.log_tail(20)
    );
    // A second line in every file, and a file deleted while it is being written.
    for i in 0..FILES {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path(i))
            .unwrap();
        writeln!(f, "file {i:05} line 1").unwrap();
    }
    let doomed = path(0);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&doomed)
        .unwrap();
    std::fs::remove_file(&doomed).unwrap();
    writeln!(f, "file 00000 written after its deletion").unwrap();
    drop(f);
    let want = 2 * FILES as u64 + 1;
    assert_eq!(
        wait_for_count(want, Duration::from_secs(180), count),
        want,
        "{}",
        agent.proc.log_tail(20)
    );
    let threads = agent.proc.status_kib("Threads").unwrap_or(0);
    let rss = agent.proc.status_kib("VmHWM").unwrap_or(0);
    assert!(threads < 40, "{threads} threads for {FILES} files");
    assert!(rss < 256 << 10, "peak RSS {rss} KiB for {FILES} files");
    let stored: HashSet<Vec<u8>> = stored_lines(&db)
        .unwrap()
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(stored.len() as u64, want, "duplicates");
    assert!(stored.contains(b"file 00000 written after its deletion".as_slice()));
    println!("{FILES} files: {threads} threads, peak RSS {rss} KiB");
}
