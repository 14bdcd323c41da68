//! Garbage, truncated, oversized and corrupt frames from an authenticated client get
//! errors, not crashes: each is answered with `Reject`, the same connection can still
//! deliver a good batch, and a well-behaved agent keeps shipping meanwhile.

use bytes::{BufMut, Bytes, BytesMut};
use heimdall_common::record::{Labels, Level, LogRecord};
use heimdall_common::wire::{self, reason, Batch, BatchContent, Codec, Frame, Hello, Limits};
use heimdall_tests::{quic_client, wait_for_count, AgentOptions, Cluster};
use std::io::Write;
use std::time::Duration;

async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> anyhow::Result<Frame> {
    let (mut s, mut r) = conn.open_bi().await?;
    // The aggregator may answer (and stop reading) before an oversized frame is sent
    // whole; that is fine.
    let _ = s.write_all(bytes).await;
    let _ = s.finish();
    Ok(heimdall_common::quic::read_single(&mut r, &Limits::default()).await?)
}

fn content(n: usize) -> BatchContent {
    BatchContent {
        streams: vec![Labels::new([("host", "rogue"), ("source", "/hand/made")])],
        records: (0..n)
            .map(|i| LogRecord {
                stream: 0,
                time_ns: 1_700_000_000_000_000_000 + i as i64,
                observed_ns: 1_700_000_000_000_000_000 + i as i64,
                level: Level::Info,
                template_id: 0,
                flags: 0,
                redacted: 0,
                line: Bytes::from(format!("hand-made line {i}")),
                metadata: Default::default(),
            })
            .collect(),
        ..Default::default()
    }
}

fn reject_code(f: &anyhow::Result<Frame>) -> Option<u16> {
    match f {
        Ok(Frame::Reject(r)) => Some(r.code),
        _ => None,
    }
}

#[test]
fn bad_frames_are_rejected_and_service_goes_on() {
    let c = Cluster::start().unwrap();
    let (pki, agg, logs) = (&c.pki, &c.agg, c.logs.clone());
    // A well-behaved agent, writing throughout the test.
    let agent = c.agent("good", AgentOptions::default()).unwrap();
    let writer = {
        let logs = logs.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(logs.join("good.log")).unwrap();
            for i in 0..2000 {
                writeln!(f, "good line {i}").unwrap();
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
    };

    let (rc, rk) = pki.agent_cert("rogue").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let answers = rt.block_on(async {
        let ep = quic_client(&pki.ca_pem, &rc, &rk).unwrap();
        let conn = ep
            .connect(agg.addrs.ingest, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut cs, mut cr) = conn.open_bi().await.unwrap();
        let hello = Frame::Hello(Hello {
            version: wire::PROTOCOL_VERSION,
            agent_id: "rogue".into(),
            host: "rogue".into(),
            agent_version: "0".into(),
            capabilities: 0,
        });
        cs.write_all(&hello.to_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        let welcome = heimdall_common::quic::read_frame(&mut cr, &mut buf, &Limits::default())
            .await
            .unwrap();
        assert!(
            matches!(welcome, Some(Frame::Welcome(ref w)) if w.agent_id == "rogue"),
            "{welcome:?}"
        );

        // A plausible length prefix followed by junk: an unknown frame type.
        let mut garbage = vec![0u8, 0, 0x0f, 0x9c, 0x7f];
        garbage.extend((0..3995u32).map(|i| (i * 7 + 3) as u8));
        let good = Frame::Batch(Batch::seal(42, 1, 1, Codec::Lz4, &content(10))).to_bytes();
        let truncated = good.slice(..good.len() / 2);
        let mut huge_prefix = BytesMut::new();
        huge_prefix.put_u32(200 << 20);
        huge_prefix.put_u8(wire::frame_type::BATCH);
        huge_prefix.put_slice(&[0u8; 1024]);
        // A frame whose header tells the truth: one byte over the protocol's limit.
        let over = heimdall_common::limits::MAX_FRAME_BYTES + 1;
        let mut oversized = BytesMut::new();
        oversized.put_u32((over - 4) as u32);
        oversized.put_u8(wire::frame_type::BATCH);
        oversized.resize(over, 0);
        let mut bad_crc = Batch::seal(42, 2, 1, Codec::None, &content(3));
        let mut p = bad_crc.payload.to_vec();
        let last = p.len() - 1;
        p[last] ^= 0xff;
        bad_crc.payload = Bytes::from(p);
        let bad_crc = Frame::Batch(bad_crc).to_bytes();
        let wrong_kind = hello.to_bytes();
        let bad_ids: Vec<Bytes> = [(0u64, 0u64), (5, 9), (1 << 63, 1)]
            .iter()
            .map(|&(seq, floor)| {
                Frame::Batch(Batch::seal(42, seq, floor, Codec::Lz4, &content(1))).to_bytes()
            })
            .collect();

        let mut out = Vec::new();
        for (what, bytes) in [
            ("garbage", &garbage[..]),
            ("truncated", &truncated[..]),
            ("huge length prefix", &huge_prefix[..]),
            ("oversized", &oversized[..]),
            ("bad checksum", &bad_crc[..]),
            ("hello on a batch stream", &wrong_kind[..]),
            ("empty stream", &[][..]),
            ("seq 0", &bad_ids[0][..]),
            ("floor above seq", &bad_ids[1][..]),
            ("seq beyond 2^63", &bad_ids[2][..]),
        ] {
            out.push((what, exchange(&conn, bytes).await));
        }
        // The same connection still delivers a good batch.
        out.push(("good batch", exchange(&conn, &good).await));
        out.push(("resent good batch", exchange(&conn, &good).await));
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
        out
    });
    let codes: Vec<(&str, Option<u16>)> =
        answers.iter().map(|(w, a)| (*w, reject_code(a))).collect();
    assert_eq!(
        codes[..10],
        [
            ("garbage", Some(reason::MALFORMED)),
            ("truncated", Some(reason::MALFORMED)),
            ("huge length prefix", Some(reason::TOO_LARGE)),
            ("oversized", Some(reason::TOO_LARGE)),
            ("bad checksum", Some(reason::CHECKSUM)),
            ("hello on a batch stream", Some(reason::UNEXPECTED)),
            ("empty stream", Some(reason::MALFORMED)),
            ("seq 0", Some(reason::MALFORMED)),
            ("floor above seq", Some(reason::MALFORMED)),
            ("seq beyond 2^63", Some(reason::MALFORMED)),
        ],
        "answers: {answers:?}"
    );
    assert!(
        matches!(answers[10].1, Ok(Frame::Ack(a)) if a.seq == 1),
        "{:?}",
        answers[10]
    );
    assert!(
        matches!(answers[11].1, Ok(Frame::Ack(a)) if a.seq == 1),
        "{:?}",
        answers[11]
    );

    writer.join().unwrap();
    let n = wait_for_count(2010, Duration::from_secs(30), || c.count());
    assert_eq!(
        n,
        2010,
        "good agent's 2000 lines + one hand-made batch of 10, once\nagent log:\n{}",
        agent.proc.log_tail(20)
    );
    let mut c = c;
    let agg = &mut c.agg;
    assert!(agg.proc.running());
    let log = agg.proc.log_text();
    assert!(log.contains("rejected"), "rejections are logged:\n{log}");
    let metrics = ureq::get(&format!("{}/metrics", agg.url()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("result=\"rejected\""),
        "rejections are counted:\n{metrics}"
    );
    // And shown per agent (the certificate's name), with the last reason.
    let v = heimdall_tests::get_json(&format!("{}/api/v1/agents", agg.url()));
    let rogue = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == "rogue")
        .cloned()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(rogue["rejected_batches"], 10, "{rogue}");
    assert!(
        !rogue["last_reject"].as_str().unwrap().is_empty(),
        "{rogue}"
    );
}
