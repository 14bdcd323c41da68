//! Wrong CA, expired certificate, no certificate and non-QUIC traffic are all refused,
//! with a log line that says why; nothing is stored from them and a good agent goes on.
//! Renewed certificates take effect on SIGHUP, and an agent started before it has a
//! certificate spools until it gets one.

use heimdall_common::wire::{self, Batch, BatchContent, Codec, Frame, Hello, Limits};
use heimdall_tests::{
    quic_client, stored_count, wait_for_count, Agent, AgentOptions, Cluster, Pki,
};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;

/// Connects, says hello and sends one batch; any failure is returned.
async fn attempt(ep: &quinn::Endpoint, addr: SocketAddr) -> anyhow::Result<()> {
    let conn = ep.connect(addr, "localhost")?.await?;
    let (mut s, mut r) = conn.open_bi().await?;
    let hello = Frame::Hello(Hello {
        version: wire::PROTOCOL_VERSION,
        agent_id: "intruder".into(),
        host: "intruder".into(),
        agent_version: "0".into(),
        capabilities: 0,
    });
    s.write_all(&hello.to_bytes()).await?;
    let mut buf = bytes::BytesMut::new();
    match heimdall_common::quic::read_frame(&mut r, &mut buf, &Limits::default()).await {
        Ok(Some(Frame::Welcome(_))) => {}
        other => anyhow::bail!("no welcome: {other:?}"),
    }
    let content = BatchContent {
        streams: vec![heimdall_common::record::Labels::new([("host", "intruder")])],
        records: vec![],
        ..Default::default()
    };
    let b = Frame::Batch(Batch::seal(1, 1, 1, Codec::Lz4, &content));
    let (mut s, mut r) = conn.open_bi().await?;
    s.write_all(&b.to_bytes()).await?;
    s.finish()?;
    heimdall_common::quic::read_single(&mut r, &Limits::default()).await?;
    Ok(())
}

fn no_client_auth(ca: &Path) -> quinn::Endpoint {
    let tls = rustls::ClientConfig::builder_with_provider(heimdall_common::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(heimdall_common::tls::root_store(ca).unwrap())
        .with_no_client_auth();
    let cfg = heimdall_common::tls::client_config_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    ep
}

#[test]
fn bad_certificates_and_plain_traffic_are_refused() {
    let c = Cluster::start().unwrap();
    let (root, pki, agg) = (&c.root, &c.pki, &c.agg);
    let addr = agg.addrs.ingest;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // A certificate from another CA.
    let other = Pki::named(&root.join("other-pki"), "Someone Else's CA").unwrap();
    let (oc, ok) = other.agent_cert("stranger").unwrap();
    // A certificate from the right CA that expired yesterday.
    let (ec, ek) = pki
        .agent_cert_valid(
            "expired",
            OffsetDateTime::now_utc() - time::Duration::days(3),
            2,
        )
        .unwrap();
    let results = rt.block_on(async {
        let wrong_ca = quic_client(&pki.ca_pem, &oc, &ok).unwrap();
        let expired = quic_client(&pki.ca_pem, &ec, &ek).unwrap();
        let none = no_client_auth(&pki.ca_pem);
        let r1 = attempt(&wrong_ca, addr).await;
        let r2 = attempt(&expired, addr).await;
        let r3 = attempt(&none, addr).await;
        // Not QUIC at all: datagrams of garbage, and an empty one.
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..200u32 {
            let junk: Vec<u8> = (0..(i % 1300 + 1)).map(|j| (j * 31 + i) as u8).collect();
            udp.send_to(&junk, addr).await.unwrap();
        }
        udp.send_to(b"GET / HTTP/1.1\r\n\r\n", addr).await.unwrap();
        [r1, r2, r3]
    });
    for (what, r) in ["wrong CA", "expired", "no certificate"]
        .iter()
        .zip(&results)
    {
        assert!(r.is_err(), "{what} was accepted");
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = agg.proc.log_text();
    let refusals = log.matches("refused connection").count();
    assert!(
        refusals >= 3,
        "expected three refusals with reasons, log:\n{log}"
    );
    assert!(
        log.contains("UnknownIssuer") || log.contains("unknown issuer"),
        "no reason for the wrong CA:\n{log}"
    );
    assert!(
        log.contains("Expired") || log.contains("expired"),
        "no reason for the expired certificate:\n{log}"
    );
    assert!(
        log.contains("NoCertificatesPresented")
            || log.contains("no certificates")
            || log.contains("peer sent no certificates"),
        "no reason for the missing certificate:\n{log}"
    );
    assert_eq!(
        stored_count(&agg.db()),
        0,
        "something was stored from a refused client"
    );

    // The aggregator still serves a well-behaved agent.
    let mut f = std::fs::File::create(c.logs.join("good.log")).unwrap();
    for i in 0..100 {
        writeln!(f, "good line {i}").unwrap();
    }
    let agent = c.agent("good", AgentOptions::default()).unwrap();
    let n = wait_for_count(100, Duration::from_secs(30), || c.count());
    assert_eq!(n, 100, "agent log:\n{}", agent.proc.log_tail(30));
    drop(rt);
}

#[test]
fn agent_with_expired_certificate_says_so_and_keeps_spooling() {
    let c = Cluster::start().unwrap();
    std::fs::write(c.logs.join("a.log"), "one\ntwo\n").unwrap();
    let (ec, ek) = c
        .pki
        .agent_cert_valid(
            "late",
            OffsetDateTime::now_utc() - time::Duration::days(10),
            1,
        )
        .unwrap();
    let opts = AgentOptions {
        include: vec![format!("{}/*.log", c.logs.display())],
        ..AgentOptions::default()
    };
    let mut agent = Agent::start(
        &c.root.join("agent"),
        "late",
        c.agg.addrs.ingest,
        &c.pki,
        (&ec, &ek),
        &opts,
    )
    .unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let l = agent.proc.log_text();
        if l.contains("not valid now") && l.contains("shipping failed") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let l = agent.proc.log_text();
    assert!(
        l.contains("not valid now"),
        "agent did not report its expired certificate:\n{l}"
    );
    assert!(
        l.contains("shipping failed"),
        "agent did not report the refused connection:\n{l}"
    );
    assert!(agent.proc.running(), "agent must keep running and spooling");
    assert_eq!(c.count(), 0);
    // Renew the certificate in place: the next connection attempt uses it.
    let (nc, nk) = c.pki.agent_cert("late-renewed").unwrap();
    std::fs::copy(nc, &ec).unwrap();
    std::fs::copy(nk, &ek).unwrap();
    let n = wait_for_count(2, Duration::from_secs(30), || c.count());
    assert_eq!(
        n,
        2,
        "lines spooled while the certificate was expired were not delivered:\n{}",
        agent.proc.log_tail(20)
    );
    assert_eq!(
        agent.proc.terminate(Duration::from_secs(20)).unwrap(),
        Some(0)
    );
}

/// The agent of each stored line (the aggregator's `agent` label: the client
/// certificate's common name), in storage order.
fn agents_of_lines(c: &Cluster) -> Vec<(String, String)> {
    heimdall_tests::stored_rows(&c.agg.db())
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.labels.get("agent").unwrap_or("").to_owned(),
                String::from_utf8_lossy(&r.line).into_owned(),
            )
        })
        .collect()
}

#[test]
fn sighup_reconnects_with_renewed_certificate_files() {
    let c = Cluster::start().unwrap();
    let log = c.logs.join("a.log");
    std::fs::write(&log, "before the renewal\n").unwrap();
    let mut agent = c.agent("first-cert", AgentOptions::default()).unwrap();
    assert_eq!(wait_for_count(1, Duration::from_secs(30), || c.count()), 1);

    // Renewed files under new paths in the config: the open connection keeps its
    // handshake until SIGHUP.
    let (cert, key) = (
        c.root.join("renewed-agent.pem"),
        c.root.join("renewed-agent-key.pem"),
    );
    let text = std::fs::read_to_string(&agent.config).unwrap();
    assert!(text.contains("cert = "), "{text}");
    let (nc, nk) = c.pki.agent_cert("renewed-cert").unwrap();
    std::fs::copy(&nc, &cert).unwrap();
    std::fs::copy(&nk, &key).unwrap();
    let text = set_path(&set_path(&text, "cert = ", &cert), "key = ", &key);
    std::fs::write(&agent.config, text).unwrap();
    agent.proc.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        agent.proc.wait_for_log(
            "reconnecting after the batches in flight",
            Duration::from_secs(20)
        ),
        "{}",
        agent.proc.log_tail(30)
    );
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(f, "after the renewal").unwrap();
    assert_eq!(
        wait_for_count(2, Duration::from_secs(30), || c.count()),
        2,
        "{}",
        agent.proc.log_tail(30)
    );
    let lines = agents_of_lines(&c);
    assert_eq!(
        lines,
        [
            ("first-cert".to_owned(), "before the renewal".to_owned()),
            ("renewed-cert".to_owned(), "after the renewal".to_owned()),
        ],
        "{}",
        agent.proc.log_tail(30)
    );
    assert_eq!(
        agent.proc.terminate(Duration::from_secs(20)).unwrap(),
        Some(0)
    );
}

/// Replaces the value of the line starting with `key` (`cert = "…"`) by `path`.
fn set_path(text: &str, key: &str, path: &Path) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with(key) {
                format!("{key}{:?}", path.display().to_string())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn agent_started_before_enrollment_spools_then_ships() {
    let c = Cluster::start().unwrap();
    std::fs::write(c.logs.join("a.log"), "one\ntwo\nthree\n").unwrap();
    let dir = c.root.join("not-enrolled");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("agent.pem"), dir.join("agent-key.pem"));
    let opts = AgentOptions {
        include: vec![format!("{}/*.log", c.logs.display())],
        ..AgentOptions::default()
    };
    // The package starts the agent before a certificate is there.
    let mut agent = Agent::start(
        &c.root.join("agent"),
        "late-enrolled",
        c.agg.addrs.ingest,
        &c.pki,
        (&cert, &key),
        &opts,
    )
    .unwrap();
    assert!(
        agent
            .proc
            .wait_for_log("not in place yet", Duration::from_secs(20)),
        "{}",
        agent.proc.log_tail(30)
    );
    assert!(agent.proc.running(), "the agent must run on and spool");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.count(), 0);
    // Enrollment: the files appear; SIGHUP makes the agent try them at once.
    let (nc, nk) = c.pki.agent_cert("late-enrolled").unwrap();
    std::fs::copy(nc, &cert).unwrap();
    std::fs::copy(nk, &key).unwrap();
    agent.proc.signal(nix::sys::signal::Signal::SIGHUP);
    assert_eq!(
        wait_for_count(3, Duration::from_secs(30), || c.count()),
        3,
        "lines read before enrollment were not delivered:\n{}",
        agent.proc.log_tail(30)
    );
    assert_eq!(
        agent.proc.terminate(Duration::from_secs(20)).unwrap(),
        Some(0)
    );
}
