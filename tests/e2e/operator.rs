//! An operator's first minutes: `heimdall quickstart` (ready before it says so, busy
//! ports named at once, a new --include applied or plainly refused), `check-config`
//! naming every problem (certificates included) in one pass, options before the
//! subcommand, the agent's /metrics, /ready and /live, and re-sending dead letters.

use heimdall_common::record::{Labels, Level, LogRecord};
use heimdall_common::wire::{Batch, BatchContent, Codec, Frame};
use heimdall_tests::{
    bins, free_port, get_json, get_status, query_lines, wait_for_count, AgentOptions, Cluster, Pki,
    Proc,
};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn quickstart(dir: &Path, log: &Path, args: &[&str]) -> Proc {
    let mut all = vec!["quickstart", "--dir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    Proc::spawn_env(&bins().cli, &all, log, &[]).unwrap()
}

fn stop(p: &mut Proc) -> Option<i32> {
    p.signal(nix::sys::signal::Signal::SIGINT);
    let start = Instant::now();
    while p.running() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = p.child.take()?;
    let mut c = c;
    c.wait().ok()?.code()
}

#[test]
fn quickstart_is_ready_when_it_says_so_and_follows_a_new_include() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(logs.join("a.log"), "quickstart first line\n").unwrap();
    std::fs::write(other.join("b.log"), "quickstart other line\n").unwrap();
    let dir = tmp.path().join("qs");
    let (api, ingest, metrics) = (free_port(), free_port(), free_port());
    let ports = [
        "--api".to_owned(),
        format!("127.0.0.1:{api}"),
        "--ingest".to_owned(),
        format!("127.0.0.1:{ingest}"),
        "--agent-metrics".to_owned(),
        format!("127.0.0.1:{metrics}"),
    ];
    let with = |include: &Path| {
        let mut v: Vec<String> = ports.to_vec();
        v.push("--include".into());
        v.push(format!("{}/*.log", include.display()));
        v
    };
    let base = format!("http://127.0.0.1:{api}");

    let log = tmp.path().join("qs1.log");
    let args = with(&logs);
    let mut qs = quickstart(
        &dir,
        &log,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        qs.wait_for_log("Heimdall is running", Duration::from_secs(120)),
        "{}",
        qs.log_tail(40)
    );
    // The console's address is printed, and it answers.
    assert!(
        qs.log_text().contains(&format!("console     {base}/")),
        "{}",
        qs.log_tail(20)
    );
    assert_eq!(ureq::get(&format!("{base}/")).call().unwrap().status(), 200);
    // Said only once both are up: the agent is ready and connected right now.
    let (code, v) = get_status(&format!("http://127.0.0.1:{metrics}/ready"));
    assert_eq!((code, v["connected"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(get_status(&format!("{base}/ready")).0, 200);
    let sel = r#"{source=~".+"}"#;
    wait_for_count(1, Duration::from_secs(30), || {
        query_lines(&base, sel, 100).len() as u64
    });
    assert_eq!(stop(&mut qs), Some(0), "{}", qs.log_tail(20));

    // Again with another --include: the untouched config follows it.
    let log = tmp.path().join("qs2.log");
    let args = with(&other);
    let mut qs = quickstart(
        &dir,
        &log,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(qs.wait_for_log("Heimdall is running", Duration::from_secs(120)));
    assert!(
        qs.log_text()
            .contains(&format!("tailing {}/*.log", other.display())),
        "{}",
        qs.log_text()
    );
    let lines = wait_for_count(2, Duration::from_secs(30), || {
        query_lines(&base, sel, 100).len() as u64
    });
    assert_eq!(lines, 2);
    assert_eq!(stop(&mut qs), Some(0));

    // Edited by hand: kept, and the run says plainly that --include is not applied.
    let agent_toml = dir.join("agent.toml");
    let mut text = std::fs::read_to_string(&agent_toml).unwrap();
    text.push_str("# my edit\n");
    std::fs::write(&agent_toml, text).unwrap();
    let log = tmp.path().join("qs3.log");
    let args = with(&logs);
    let mut qs = quickstart(
        &dir,
        &log,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(qs.wait_for_log("Heimdall is running", Duration::from_secs(120)));
    let out = qs.log_text();
    assert!(out.contains("kept") && out.contains("NOT applied"), "{out}");
    assert!(
        out.contains(&format!("tailing {}/*.log", other.display())),
        "{out}"
    );
    assert_eq!(stop(&mut qs), Some(0));
}

#[test]
fn quickstart_names_a_busy_port_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap();
    let log = tmp.path().join("qs.log");
    let start = Instant::now();
    let mut qs = quickstart(
        &tmp.path().join("qs"),
        &log,
        &[
            "--api",
            &busy.to_string(),
            "--ingest",
            &format!("127.0.0.1:{}", free_port()),
            "--include",
            "/nonexistent/*.log",
        ],
    );
    while qs.running() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!qs.running(), "quickstart went on with a busy port");
    assert!(start.elapsed() < Duration::from_secs(10), "not at once");
    let out = qs.log_text();
    assert!(
        out.contains(&busy.to_string()) && out.contains("--api") && out.contains("in use"),
        "{out}"
    );
    assert!(!out.contains("Heimdall is running"), "{out}");
    drop(held);
}

fn run(bin: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_config_names_every_problem_in_one_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki")).unwrap();
    let foreign = Pki::named(&tmp.path().join("foreign"), "Foreign CA").unwrap();
    let (expired, expired_key) = pki
        .agent_cert_valid(
            "old-agent",
            time::OffsetDateTime::now_utc() - time::Duration::days(60),
            30,
        )
        .unwrap();
    let bad = tmp.path().join("agent.toml");
    std::fs::write(
        &bad,
        format!(
            "state_dir = {:?}\nhots = \"typo\"\n[batch]\nmax_byts = \"1MiB\"\ntimeout = true\n[output]\nendpoints = [\"nowhere\"]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            tmp.path().join("state").display().to_string(),
            pki.ca_pem.display().to_string(),
            expired.display().to_string(),
            expired_key.display().to_string(),
        ),
    )
    .unwrap();
    let (code, out) = run(
        &bins().agent,
        &["check-config", "--config", bad.to_str().unwrap()],
    );
    assert_eq!(code, 64, "{out}");
    for want in [
        "unknown field `hots`",
        "unknown field `max_byts`",
        "`batch.timeout`",
        "`output.endpoints[0]`: `nowhere` is not host:port",
        "expired on",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // Options before the subcommand are honoured (the default path would be valid).
    let (code, out) = run(
        &bins().agent,
        &["--config", bad.to_str().unwrap(), "check-config"],
    );
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("max_byts"), "{out}");

    // A valid agent configuration with good certificates.
    let (cert, key) = pki.agent_cert("good-agent").unwrap();
    let good = tmp.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "state_dir = {:?}\n[output]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            tmp.path().join("state").display().to_string(),
            pki.ca_pem.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        ),
    )
    .unwrap();
    let (code, out) = run(
        &bins().agent,
        &["check-config", "--config", good.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");

    // The aggregator: an unknown key and a server certificate of another CA.
    let agg = tmp.path().join("aggregator.toml");
    std::fs::write(
        &agg,
        format!(
            "state_dir = {:?}\n[ingest]\nlisten = \"127.0.0.1:0\"\nca = {:?}\ncert = {:?}\nkey = {:?}\nmax_frme = 1\n",
            tmp.path().join("agg").display().to_string(),
            pki.ca_pem.display().to_string(),
            foreign.server_cert.display().to_string(),
            foreign.server_key.display().to_string(),
        ),
    )
    .unwrap();
    for args in [
        vec!["check-config", "--config", agg.to_str().unwrap()],
        vec!["--config", agg.to_str().unwrap(), "check-config"],
    ] {
        let (code, out) = run(&bins().aggregator, &args);
        assert_eq!(code, 64, "{out}");
        assert!(out.contains("unknown field `max_frme`"), "{out}");
        assert!(out.contains("does not verify against the CA"), "{out}");
    }
}

#[test]
fn options_before_run_are_honoured() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki")).unwrap();
    let api = free_port();
    let cfg = tmp.path().join("aggregator.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\n[ingest]\nlisten = \"127.0.0.1:0\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n[api]\nlisten = \"127.0.0.1:{api}\"\n",
            tmp.path().join("agg").display().to_string(),
            pki.ca_pem.display().to_string(),
            pki.server_cert.display().to_string(),
            pki.server_key.display().to_string(),
        ),
    )
    .unwrap();
    let mut p = Proc::spawn_env(
        &bins().aggregator,
        &["--config", cfg.to_str().unwrap(), "run"],
        &tmp.path().join("agg.log"),
        &[],
    )
    .unwrap();
    let start = Instant::now();
    let mut ready = false;
    while start.elapsed() < Duration::from_secs(30) && p.running() {
        if ureq::get(&format!("http://127.0.0.1:{api}/ready"))
            .call()
            .is_ok()
        {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ready,
        "not listening where --config says:\n{}",
        p.log_tail(20)
    );
    assert_eq!(p.terminate(Duration::from_secs(20)).unwrap(), Some(0));
}

#[test]
fn agent_serves_metrics_ready_and_live_only() {
    let c = Cluster::start().unwrap();
    let port = free_port();
    let _agent = c
        .agent(
            "endpoints",
            AgentOptions {
                metrics_listen: format!("127.0.0.1:{port}"),
                ..AgentOptions::default()
            },
        )
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let (code, v) = loop {
        if let Ok(r) = ureq::get(&format!("{base}/ready")).call() {
            break (r.status(), r.into_json::<serde_json::Value>().unwrap());
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no /ready");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((code, v["status"].as_str()), (200, Some("ready")), "{v}");
    let (code, v) = get_status(&format!("{base}/live"));
    assert_eq!((code, v["status"].as_str()), (200, Some("live")), "{v}");
    let metrics = ureq::get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(metrics.contains("heimdall_agent_"), "{metrics}");
    let (code, v) = get_status(&format!("{base}/"));
    assert_eq!(code, 404);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("/metrics, /ready and /live"),
        "{v}"
    );
    assert_eq!(get_status(&format!("{base}/metrics/extra")).0, 404);
}

fn dead_letter(dir: &Path, epoch: u64, seq: u64, batch: &Batch, reason: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let base = dir.join(format!("{epoch:016x}-{seq:020}"));
    std::fs::write(
        base.with_extension("batch"),
        Frame::Batch(batch.clone()).to_bytes(),
    )
    .unwrap();
    std::fs::write(base.with_extension("reason"), reason).unwrap();
}

#[test]
fn dead_letters_are_counted_shown_and_resent_once() {
    let c = Cluster::start().unwrap();
    let name = "dl-agent";
    let agent_dir = c.root.join(format!("agent-{name}"));
    let dl = agent_dir.join("state/spool/dead-letter");
    let now = heimdall_common::record::now_ns();
    let content = BatchContent {
        streams: vec![Labels::new([
            ("host", name),
            ("source", "/var/log/old.log"),
        ])],
        records: (0..3)
            .map(|i| LogRecord {
                stream: 0,
                time_ns: now + i,
                observed_ns: now,
                level: Level::Info,
                template_id: 0,
                flags: 0,
                redacted: 0,
                line: format!("a line rejected once {i}").into(),
                metadata: Default::default(),
            })
            .collect(),
        ..BatchContent::default()
    };
    let good = Batch::seal(0xfeed, 5, 5, Codec::Lz4, &content);
    dead_letter(
        &dl,
        0xfeed,
        5,
        &good,
        "code 2: a reason from another version",
    );
    let mut corrupt = Batch::seal(0xfeed, 6, 6, Codec::None, &content);
    let mut p = corrupt.payload.to_vec();
    p[3] ^= 0xff;
    corrupt.payload = p.into();
    dead_letter(&dl, 0xfeed, 6, &corrupt, "code 3: checksum");
    let agent = c.agent(name, AgentOptions::default()).unwrap();

    // Shown by `heimdall agents`, from the agent's heartbeats.
    let shown = wait_for_count(2, Duration::from_secs(30), || {
        let v = get_json(&format!("{}/api/v1/agents", c.agg.url()));
        v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["agent_id"] == name)
            .and_then(|a| a["dead_letter_batches"].as_u64())
            .unwrap_or(0)
    });
    assert_eq!(shown, 2);
    let (code, out) = run(&bins().cli, &["--addr", &c.agg.url(), "agents"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("dead-letter") && out.contains("resend"),
        "{out}"
    );

    let cfg = agent.config.to_str().unwrap();
    let (code, out) = run(&bins().agent, &["dead-letter", "list", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("checksum") && out.contains("another version"),
        "{out}"
    );

    let (code, out) = run(&bins().agent, &["dead-letter", "resend", "--config", cfg]);
    assert_eq!(code, 1, "one of them cannot be stored:\n{out}");
    assert!(
        out.contains("stored:") && out.contains("(3 records)"),
        "{out}"
    );
    assert!(
        out.contains("not stored:") && out.contains("checksum"),
        "{out}"
    );
    let sel = format!("{{host=\"{name}\", source=\"/var/log/old.log\"}}");
    let got = wait_for_count(3, Duration::from_secs(20), || {
        query_lines(&c.agg.url(), &sel, 100).len() as u64
    });
    assert_eq!(got, 3);

    // Sent again (a crash before it was moved away): stored once all the same.
    let resent = dl.join("resent");
    for f in std::fs::read_dir(&resent).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dl.join(f.file_name().unwrap())).unwrap();
    }
    let (_, out) = run(&bins().agent, &["dead-letter", "resend", "--config", cfg]);
    assert!(out.contains("stored:"), "{out}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(query_lines(&c.agg.url(), &sel, 100).len(), 3);
}
