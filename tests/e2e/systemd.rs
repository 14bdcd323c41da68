//! The systemd service protocol as the units use it (`Type=notify`, `WatchdogSec=`):
//! both programs send READY=1 once they work, feed the watchdog at half its interval
//! and send STOPPING=1 at SIGTERM, on a datagram socket the test plays systemd with.

use heimdall_tests::{AgentOptions, Aggregator, Cluster};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Reads datagrams until one contains `want` or `within` passes; returns all read.
fn wait_for(sock: &UnixDatagram, want: &str, within: Duration, seen: &mut Vec<String>) -> bool {
    let end = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if seen.iter().any(|m| m.contains(want)) {
            return true;
        }
        sock.set_read_timeout(Some(
            end.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10)),
        ))
        .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    seen.iter().any(|m| m.contains(want))
}

#[test]
fn both_programs_notify_readiness_watchdog_and_stopping() {
    let c = Cluster::start().unwrap();
    let agg_sock_path = c.root.join("aggregator-notify.sock");
    let agg_sock = UnixDatagram::bind(&agg_sock_path).unwrap();
    let path = agg_sock_path.to_str().unwrap();
    // A second aggregator, started with systemd's variables (the cluster's one is not).
    let dir = c.root.join("notified");
    std::fs::create_dir_all(&dir).unwrap();
    let mut agg = Aggregator::start_env(
        &dir,
        &c.pki,
        None,
        "",
        &[("NOTIFY_SOCKET", path), ("WATCHDOG_USEC", "1000000")],
    )
    .unwrap();
    let mut seen = Vec::new();
    assert!(
        wait_for(&agg_sock, "READY=1", Duration::from_secs(30), &mut seen),
        "aggregator sent {seen:?}:\n{}",
        agg.proc.log_tail(20)
    );
    assert!(
        wait_for(&agg_sock, "WATCHDOG=1", Duration::from_secs(5), &mut seen),
        "{seen:?}"
    );

    let agent_sock_path = c.root.join("agent-notify.sock");
    let agent_sock = UnixDatagram::bind(&agent_sock_path).unwrap();
    let mut agent = c
        .agent(
            "notified",
            AgentOptions {
                env: vec![
                    (
                        "NOTIFY_SOCKET".into(),
                        agent_sock_path.to_str().unwrap().into(),
                    ),
                    ("WATCHDOG_USEC".into(), "1000000".into()),
                ],
                ..AgentOptions::default()
            },
        )
        .unwrap();
    let mut seen = Vec::new();
    assert!(
        wait_for(&agent_sock, "READY=1", Duration::from_secs(30), &mut seen),
        "agent sent {seen:?}:\n{}",
        agent.proc.log_tail(20)
    );
    let ready = seen.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(ready.contains("STATUS=tailing 1 file sources"), "{ready}");
    // Pings keep coming at half the interval.
    let pings = |seen: &Vec<String>| seen.iter().filter(|m| *m == "WATCHDOG=1").count();
    let start = Instant::now();
    while pings(&seen) < 3 && start.elapsed() < Duration::from_secs(10) {
        wait_for(&agent_sock, "never", Duration::from_millis(200), &mut seen);
    }
    assert!(pings(&seen) >= 3, "{seen:?}");

    assert_eq!(
        agent.proc.terminate(Duration::from_secs(20)).unwrap(),
        Some(0)
    );
    assert!(
        wait_for(&agent_sock, "STOPPING=1", Duration::from_secs(1), &mut seen),
        "{seen:?}"
    );
    assert_eq!(
        agg.proc.terminate(Duration::from_secs(20)).unwrap(),
        Some(0)
    );
    let mut seen = Vec::new();
    assert!(
        wait_for(&agg_sock, "STOPPING=1", Duration::from_secs(1), &mut seen),
        "{seen:?}"
    );
}
