//! The `heimdall` CLI answers a selector with line filters, newest first, with labels;
//! it reaches an HTTPS API through a private CA (queries and `tail -f` over `wss://`);
//! bad configurations are refused naming the key.

use heimdall_tests::{
    append, bins, stored_count, wait_for_count, Agent, AgentOptions, Aggregator, Cluster, Pki,
};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn query_prints_matching_lines_newest_first_with_labels() {
    let c = Cluster::start().unwrap();
    let opts = AgentOptions {
        batch_timeout: "50ms",
        ..AgentOptions::default()
    };
    let _agent = c.agent("web1", opts).unwrap();
    let mut f = std::fs::File::create(c.logs.join("app.log")).unwrap();
    for i in 0..30 {
        let lvl = if i % 3 == 0 { "error" } else { "info" };
        writeln!(f, "{lvl} event {i}").unwrap();
        f.flush().unwrap();
        // Separate batches so lines get distinct times.
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    assert_eq!(
        wait_for_count(30, Duration::from_secs(30), || c.count()),
        30
    );

    let out = Command::new(&bins().cli)
        .args([
            "--addr",
            &c.agg.url(),
            "query",
            r#"{host="web1"} |= "error" != "event 27""#,
            "--since",
            "1h",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 9, "{text}");
    assert!(
        lines.iter().all(|l| l.contains(r#"host="web1""#)
            && l.contains(r#"agent="web1""#)
            && l.contains("source=")
            && l.contains("error event")),
        "{text}"
    );
    let nums: Vec<u32> = lines
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    // Newest first: batches arrive in order, so event numbers descend across batches.
    assert_eq!(nums.first(), Some(&24), "{text}");
    assert!(nums.windows(2).all(|w| w[0] / 10 >= w[1] / 10), "{text}");
    assert!(!nums.contains(&27));

    let bad = Command::new(&bins().cli)
        .args(["--addr", &c.agg.url(), "query", r#"{host="web1" |= "x""#])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("position 13"),
        "parse errors point at the problem: {err}"
    );
}

#[test]
fn bad_config_is_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("agent.toml");
    std::fs::write(&p, "[spool]\nmax_bytes = \"1GiB\"\nmax_byts = 3\n").unwrap();
    let out = Command::new(&bins().agent)
        .args(["check-config", "--config", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_byts"));

    std::fs::write(
        &p,
        "[batch]\nmax_records = 0\n[[files]]\ninclude = [\"relative\"]\n",
    )
    .unwrap();
    let out = Command::new(&bins().agent)
        .args(["check-config", "--config", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("batch.max_records") && err.contains("files[0].include[0]"),
        "{err}"
    );

    let q = tmp.path().join("aggregator.toml");
    std::fs::write(&q, "[api]\nlisten = \"not an address\"\n").unwrap();
    let out = Command::new(&bins().aggregator)
        .args(["check-config", "--config", q.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("api.listen"));

    let ok = Command::new(&bins().agent)
        .args(["check-config", "--config", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn https_api_is_reached_through_a_private_ca_and_tail_follows_over_wss() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pki = Pki::new(&root.join("pki")).unwrap();
    let agg = Aggregator::start_with(
        root,
        &pki,
        None,
        &format!(
            "[api]\ntls_cert = {:?}\ntls_key = {:?}\n",
            pki.server_cert.display().to_string(),
            pki.server_key.display().to_string()
        ),
    )
    .unwrap();
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (cert, key) = pki.agent_cert("secure1").unwrap();
    let _agent = Agent::start(
        &root.join("agent"),
        "secure1",
        agg.addrs.ingest,
        &pki,
        (&cert, &key),
        &AgentOptions {
            include: vec![format!("{}/*.log", logs.display())],
            batch_timeout: "50ms",
            ..AgentOptions::default()
        },
    )
    .unwrap();
    let app = logs.join("app.log");
    append(&app, b"before tail 1\nbefore tail 2\n");
    assert_eq!(
        wait_for_count(2, Duration::from_secs(30), || stored_count(&agg.db())),
        2
    );
    let base = format!("https://localhost:{}", agg.addrs.api.port());
    let ca = pki.ca_pem.to_str().unwrap();

    // Without the private CA the server is not trusted, and the CLI says why.
    let out = Command::new(&bins().cli)
        .args(["--addr", &base, "labels"])
        .env_remove("HEIMDALL_CA")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the aggregator") && err.contains("certificate"),
        "{err}"
    );

    // With it (flag or environment), queries work.
    let out = Command::new(&bins().cli)
        .args(["--addr", &base, "query", r#"{host="secure1"}"#, "-o", "raw"])
        .env("HEIMDALL_CA", ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "before tail 2\nbefore tail 1\n"
    );

    // `tail -f` over wss:// prints the history, then lines as they are stored.
    let mut tail = Command::new(&bins().cli)
        .args([
            "--addr",
            &base,
            "--ca",
            ca,
            "tail",
            "-f",
            r#"{host="secure1"}"#,
            "-o",
            "raw",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut appended = false;
    while !seen.iter().any(|l: &String| l == "after tail") && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
        if !appended && seen.len() >= 2 {
            append(&app, b"after tail\n");
            appended = true;
        }
    }
    let _ = tail.kill();
    let out = tail.wait_with_output().unwrap();
    assert_eq!(
        seen,
        ["before tail 1", "before tail 2", "after tail"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
