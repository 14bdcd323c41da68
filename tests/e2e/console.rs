//! The console is served by the aggregator: its pages and files at `/`, compressed and
//! cached by ETag, with a content security policy; the API it calls keeps its roles, so
//! a read-only token can take no write action the console offers.

use heimdall_tests::Cluster;
use std::io::Read;

fn get_raw(url: &str, gzip: bool) -> ureq::Response {
    let mut r = ureq::get(url);
    if gzip {
        r = r.set("Accept-Encoding", "gzip, deflate, br");
    }
    r.call().unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn body(r: ureq::Response) -> Vec<u8> {
    let gz = r.header("Content-Encoding") == Some("gzip");
    let mut raw = Vec::new();
    r.into_reader().read_to_end(&mut raw).unwrap();
    if gz {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        raw
    }
}

#[test]
fn console_is_served_compressed_and_its_writes_need_the_write_role() {
    let read_tok = "console-read-0123456789abcdef";
    let write_tok = "console-write-0123456789abcdef";
    let sha = |t: &str| {
        let d = ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let c = Cluster::start_with(&format!(
        "[[api.tokens]]\nname = \"viewer\"\nrole = \"read\"\nsha256 = \"{}\"\n[[api.tokens]]\nname = \"oncall\"\nrole = \"write\"\nsha256 = \"{}\"\n",
        sha(read_tok),
        sha(write_tok)
    ))
    .unwrap();
    let base = c.agg.url();

    // Every page is the same document, without a token (it holds no data).
    let mut total_gz = 0usize;
    for page in [
        "/",
        "/explore",
        "/incidents/42",
        "/fleet",
        "/alerts",
        "/patterns",
        "/anomalies",
        "/storage",
    ] {
        let r = get_raw(&format!("{base}{page}"), true);
        assert_eq!(r.status(), 200, "{page}");
        assert_eq!(r.header("Content-Encoding"), Some("gzip"), "{page}");
        assert!(r.header("Content-Type").unwrap().starts_with("text/html"));
        let csp = r.header("Content-Security-Policy").unwrap().to_owned();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        let html = String::from_utf8(body(r)).unwrap();
        assert!(html.contains("/console/app.js"), "{page}");
    }
    for f in ["/", "/console/app.js", "/console/style.css"] {
        let r = get_raw(&format!("{base}{f}"), true);
        let mut raw = Vec::new();
        r.into_reader().read_to_end(&mut raw).unwrap();
        total_gz += raw.len();
    }
    assert!(total_gz < 300_000, "first load {total_gz} bytes compressed");
    // Plain for clients that do not take gzip; revalidated by ETag.
    let r = get_raw(&format!("{base}/console/app.js"), false);
    assert_eq!(r.header("Content-Encoding"), None);
    assert!(r
        .header("Content-Type")
        .unwrap()
        .starts_with("text/javascript"));
    let etag = r.header("ETag").unwrap().to_owned();
    let js = String::from_utf8(body(r)).unwrap();
    assert!(js.contains("explorePage"));
    let r = ureq::get(&format!("{base}/console/app.js"))
        .set("If-None-Match", &etag)
        .call()
        .unwrap();
    assert_eq!(r.status(), 304);
    let missing = ureq::get(&format!("{base}/console/nope.js")).call();
    let Err(ureq::Error::Status(404, r)) = missing else {
        panic!("{missing:?}")
    };
    let v: serde_json::Value = r.into_json().unwrap();
    assert!(v["message"].as_str().unwrap().contains("nope.js"));

    // Who the console is talking as, and what it may do.
    let whoami = |tok: &str| -> serde_json::Value {
        ureq::get(&format!("{base}/api/v1/whoami"))
            .set("Authorization", &format!("Bearer {tok}"))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    };
    assert_eq!(whoami(read_tok)["data"]["role"], "read");
    assert_eq!(whoami(write_tok)["data"]["role"], "write");
    assert_eq!(whoami(write_tok)["data"]["name"], "oncall");
    assert!(matches!(
        ureq::get(&format!("{base}/api/v1/whoami")).call(),
        Err(ureq::Error::Status(401, _))
    ));
    // Every write the console offers is refused to a read-only token.
    let writes: [(&str, &str, Option<serde_json::Value>); 4] = [
        (
            "POST",
            "/api/v1/silences",
            Some(
                serde_json::json!({"matchers": "{alertname=\"X\"}", "duration": "1h", "comment": "c", "created_by": "viewer"}),
            ),
        ),
        ("DELETE", "/api/v1/silences/abc", None),
        (
            "POST",
            "/api/v1/incidents/1/ack",
            Some(serde_json::json!({"by": "viewer"})),
        ),
        (
            "POST",
            "/api/v1/incidents/1/resolve",
            Some(serde_json::json!({"by": "viewer"})),
        ),
    ];
    for (method, path, json) in &writes {
        let req = ureq::request(method, &format!("{base}{path}"))
            .set("Authorization", &format!("Bearer {read_tok}"));
        let r = match json {
            Some(j) => req.send_json(j.clone()),
            None => req.call(),
        };
        assert!(
            matches!(r, Err(ureq::Error::Status(403, _))),
            "{method} {path}: {r:?}"
        );
    }
    // The write token may silence.
    let r = ureq::post(&format!("{base}/api/v1/silences"))
        .set("Authorization", &format!("Bearer {write_tok}"))
        .send_json(serde_json::json!({"matchers": "{alertname=\"X\"}", "duration": "1h", "comment": "maintenance", "created_by": "oncall"}))
        .unwrap();
    assert_eq!(r.status(), 200);
}
