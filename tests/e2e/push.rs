//! Pushes behave like Loki's: entries too old or too far ahead are refused one by one
//! while the rest of the push is stored, and the 400 says how many and why; every
//! error the API answers is JSON with a `message`.

use heimdall_tests::{get_status, post_json, query_lines, wait_for_count, Cluster};
use std::time::Duration;

#[test]
fn pushes_refuse_old_and_future_entries_one_by_one() {
    let c = Cluster::start().unwrap();
    let url = format!("{}/loki/api/v1/push", c.agg.url());
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
    let h = 3_600_000_000_000i64;
    let (code, body) = post_json(
        &url,
        None,
        &serde_json::json!({"streams": [
            {"stream": {"app": "clock"}, "values": [
                [(now - 8 * 24 * h).to_string(), "eight days old"],
                [(now - 2 * h).to_string(), "two hours old"],
                [now.to_string(), "now"],
                [(now + h).to_string(), "an hour ahead"],
            ]},
            {"stream": {"app": "clock", "bad-name": "x"}, "values": [[now.to_string(), "bad labels"]]},
        ]}),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["accepted"], 2, "{body}");
    assert_eq!(body["refused"], 3, "{body}");
    assert_eq!(body["reasons"]["too_old"], 1, "{body}");
    assert_eq!(body["reasons"]["too_new"], 1, "{body}");
    assert_eq!(body["reasons"]["invalid_labels"], 1, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains("timestamp too old"), "{msg}");
    assert!(msg.contains("timestamp too new"), "{msg}");
    assert!(msg.contains("3 of 5 entries refused"), "{msg}");
    let sel = r#"{app="clock"}"#;
    let got = wait_for_count(2, Duration::from_secs(20), || {
        query_lines(&c.agg.url(), sel, 100).len() as u64
    });
    assert_eq!(got, 2);
    let lines: Vec<String> = query_lines(&c.agg.url(), sel, 100)
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(lines, vec!["two hours old", "now"]);
    // A push with nothing wrong is answered 204.
    let (code, _) = post_json(
        &url,
        None,
        &serde_json::json!({"streams": [{"stream": {"app": "clock"}, "values": [[now.to_string(), "fine"]]}]}),
    );
    assert_eq!(code, 204);
}

#[test]
fn every_error_is_json_with_a_message() {
    let c = Cluster::start().unwrap();
    let base = c.agg.url();
    // Over the query limit: a 400, as in Loki, not a silent clamp.
    let (code, v) = get_status(&format!(
        "{base}/loki/api/v1/query_range?query=%7Bapp%3D%22x%22%7D&limit=2000000"
    ));
    assert_eq!(code, 400);
    assert!(
        v["message"].as_str().unwrap().contains("max entries limit"),
        "{v}"
    );
    // A query that does not parse.
    let (code, v) = get_status(&format!("{base}/loki/api/v1/query_range?query=%7Bapp%3D"));
    assert_eq!(code, 400);
    assert!(v["message"].is_string(), "{v}");
    // A path the API does not serve.
    let (code, v) = get_status(&format!("{base}/loki/api/v1/nothing-here"));
    assert_eq!(code, 404);
    assert_eq!(
        v["message"],
        "no such endpoint: GET /loki/api/v1/nothing-here"
    );
    // A method it does not serve.
    let r = ureq::delete(&format!("{base}/loki/api/v1/push")).call();
    let Err(ureq::Error::Status(405, r)) = r else {
        panic!("expected 405, got {r:?}")
    };
    let v: serde_json::Value = r.into_json().unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("not allowed"),
        "{v}"
    );
    // A body over the push limit.
    let big = "x".repeat(17 << 20);
    let r = ureq::post(&format!("{base}/loki/api/v1/push"))
        .set("Content-Type", "application/json")
        .send_string(&big);
    match r {
        Err(ureq::Error::Status(413, r)) => {
            let v: serde_json::Value = r.into_json().unwrap();
            assert!(
                v["message"].as_str().unwrap().contains("larger than"),
                "{v}"
            );
        }
        // The server may close the connection before the body is sent whole.
        Err(ureq::Error::Transport(_)) => {}
        other => panic!("expected 413, got {other:?}"),
    }
    // The refusals are in the log for the operator.
    assert!(c
        .agg
        .proc
        .wait_for_log("request refused", Duration::from_secs(5)));
}

/// Fluent Bit (`compress gzip`), Vector and Loki's own clients compress JSON pushes; they
/// are stored like plain ones. A body that inflates past the push limit is refused with
/// 413 before it is held in memory whole.
#[test]
fn gzip_and_deflate_pushes_are_stored_and_bombs_refused() {
    use std::io::Write;
    let c = Cluster::start().unwrap();
    let url = format!("{}/loki/api/v1/push", c.agg.url());
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
    let body = |line: &str| {
        serde_json::to_vec(&serde_json::json!({"streams": [
            {"stream": {"app": "zipped"}, "values": [[now.to_string(), line]]}
        ]}))
        .unwrap()
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body("gzip line")).unwrap();
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(&body("deflate line")).unwrap();
    let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    raw.write_all(&body("raw deflate line")).unwrap();
    for (enc, data) in [
        ("gzip", gz.finish().unwrap()),
        ("deflate", zlib.finish().unwrap()),
        ("deflate", raw.finish().unwrap()),
    ] {
        let r = ureq::post(&url)
            .set("Content-Type", "application/json")
            .set("Content-Encoding", enc)
            .send_bytes(&data);
        assert_eq!(
            r.map(|r| r.status())
                .unwrap_or_else(|e| panic!("{enc}: {e}")),
            204
        );
    }
    let sel = r#"{app="zipped"}"#;
    wait_for_count(3, Duration::from_secs(20), || {
        query_lines(&c.agg.url(), sel, 100).len() as u64
    });
    let mut lines: Vec<String> = query_lines(&c.agg.url(), sel, 100)
        .into_iter()
        .map(|l| l.line)
        .collect();
    lines.sort();
    assert_eq!(lines, vec!["deflate line", "gzip line", "raw deflate line"]);

    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![b' '; 64 << 20]).unwrap();
    let r = ureq::post(&url)
        .set("Content-Type", "application/json")
        .set("Content-Encoding", "gzip")
        .send_bytes(&bomb.finish().unwrap());
    let Err(ureq::Error::Status(413, r)) = r else {
        panic!("a 64 MiB inflated body must be refused with 413: {r:?}");
    };
    let body: serde_json::Value = r.into_json().unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("decompresses to more than"),
        "{body}"
    );
    let r = ureq::post(&url)
        .set("Content-Type", "application/json")
        .set("Content-Encoding", "br")
        .send_bytes(b"{}");
    assert!(matches!(r, Err(ureq::Error::Status(415, _))), "{r:?}");
}

/// Some Loki clients send `Content-Encoding: snappy` with their protobuf pushes (Loki
/// takes it: the body is snappy either way); a JSON body under it is un-snappied.
#[test]
fn pushes_saying_content_encoding_snappy_are_stored() {
    use heimdall_aggregator::api::proto::Writer;
    let c = Cluster::start().unwrap();
    let url = format!("{}/loki/api/v1/push", c.agg.url());
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
    let mut ts = Writer::default();
    ts.uint(1, (now / 1_000_000_000) as u64)
        .uint(2, (now % 1_000_000_000) as u64);
    let mut entry = Writer::default();
    entry.message(1, &ts).bytes(2, b"protobuf line");
    let mut stream = Writer::default();
    stream.bytes(1, br#"{app="snappy-enc"}"#).message(2, &entry);
    let mut req = Writer::default();
    req.message(1, &stream);
    let proto = snap::raw::Encoder::new().compress_vec(&req.buf).unwrap();
    let json = snap::raw::Encoder::new()
        .compress_vec(
            &serde_json::to_vec(&serde_json::json!({"streams": [
                {"stream": {"app": "snappy-enc"}, "values": [[(now + 1).to_string(), "json line"]]}
            ]}))
            .unwrap(),
        )
        .unwrap();
    for (ctype, body) in [
        ("application/x-protobuf", &proto),
        ("application/json", &json),
    ] {
        let r = ureq::post(&url)
            .set("Content-Type", ctype)
            .set("Content-Encoding", "snappy")
            .send_bytes(body);
        assert_eq!(
            r.map(|r| r.status())
                .unwrap_or_else(|e| panic!("{ctype}: {e}")),
            204
        );
    }
    let sel = r#"{app="snappy-enc"}"#;
    wait_for_count(2, Duration::from_secs(20), || {
        query_lines(&c.agg.url(), sel, 100).len() as u64
    });
    let lines: Vec<String> = query_lines(&c.agg.url(), sel, 100)
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(lines, vec!["protobuf line", "json line"]);
}
