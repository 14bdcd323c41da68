//! The console is served by the aggregator: its pages and files at `/`, compressed and
//! cached by ETag, with a content security policy; the API it calls keeps its roles, so
//! a read-only token can take no write action the console offers.

use crate::alerts::Outage;
use heimdall_tests::sinks::HttpSink;
use heimdall_tests::{python, wait_for_count, AgentOptions, Cluster};
use std::io::{Read, Write};
use std::time::Duration;

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

/// An aggregator with a read-only token (`viewer`) and a write token (`oncall`), and
/// `extra` configuration.
fn with_tokens(read_tok: &str, write_tok: &str, extra: &str) -> Cluster {
    let sha = |t: &str| {
        let d = ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    Cluster::start_with(&format!(
        "[[api.tokens]]\nname = \"viewer\"\nrole = \"read\"\nsha256 = \"{}\"\n[[api.tokens]]\nname = \"oncall\"\nrole = \"write\"\nsha256 = \"{}\"\n{extra}",
        sha(read_tok),
        sha(write_tok)
    ))
    .unwrap()
}

#[test]
fn console_is_served_compressed_and_its_writes_need_the_write_role() {
    let (read_tok, write_tok) = (
        "console-read-0123456789abcdef",
        "console-write-0123456789abcdef",
    );
    let c = with_tokens(read_tok, write_tok, "");
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

/// Runs a scenario of `browser/console.py` in headless Chromium against `base` and
/// returns what the browser saw.
fn browser(scenario: &str, base: &str, args: &[&str]) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/console.py");
    let out = std::process::Command::new(python())
        .arg(&script)
        .args([scenario, base, screenshots().to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every named page's screenshot was written by this run.
fn assert_screenshots(names: &[&str]) {
    for name in names {
        let f = screenshots().join(format!("{name}.png"));
        assert!(
            f.metadata().map(|m| m.len() > 1000).unwrap_or(false),
            "{}",
            f.display()
        );
    }
}

/// Where the browser test writes its screenshots (kept after the run).
fn screenshots() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("../target"))
        .join("console-screenshots")
}

/// A user in headless Chromium (Debian's, driven by Selenium from PyPI) against a real
/// aggregator fed by a real agent: signs in with a token, runs a query and sees the
/// histogram and the lines, opens a line's context, adds a facet filter, follows a
/// pattern into Explore, sees the agent in the fleet, creates a silence; then, signed
/// in read-only, is offered no write action. Screenshots of every page are written
/// under `target/console-screenshots/`.
#[test]
fn console_in_a_real_browser() {
    let (read_tok, write_tok) = (
        "browser-read-0123456789abcdef",
        "browser-write-0123456789abcdef",
    );
    let c = with_tokens(read_tok, write_tok, "");
    // A second service whose detector warms up in seconds, for an anomaly to look at.
    let pay = c.root.join("pay");
    std::fs::create_dir_all(&pay).unwrap();
    let _agent = c
        .agent(
            "shop-1",
            AgentOptions {
                files_extra: "labels = { service = \"shop\" }".into(),
                extra: format!(
                    "[[files]]\ninclude = [\"{}/*.log\"]\nlabels = {{ service = \"pay\" }}\npoll_interval = \"100ms\"\n[aggregate]\nwindow = \"1s\"\n[anomaly]\nwarmup = \"8s\"\n",
                    pay.display()
                ),
                ..AgentOptions::default()
            },
        )
        .unwrap();
    let mut text = String::new();
    for i in 0..300 {
        text.push_str(&match i % 3 {
            0 => format!("INFO user {i} logged in from 10.0.0.{}\n", i % 250),
            1 => format!("ERROR payment {i} failed: card declined\n"),
            _ => format!("WARN slow query took {} ms\n", 100 + i),
        });
    }
    std::fs::write(c.logs.join("shop.log"), text).unwrap();
    assert_eq!(
        wait_for_count(300, Duration::from_secs(30), || c.count()),
        300
    );
    // Steady traffic through the warm-up, then a burst of errors: an anomaly.
    let mut f = std::fs::File::create(pay.join("pay.log")).unwrap();
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(12) {
        for _ in 0..10 {
            writeln!(f, "INFO charge ok seq={n}").unwrap();
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..400 {
        writeln!(f, "ERROR charge {i} failed: gateway connection refused").unwrap();
    }
    drop(f);
    let anomalies = format!("{}/api/v1/anomalies?since=1h", c.agg.url());
    assert!(
        wait_for_count(1, Duration::from_secs(30), || {
            let v: serde_json::Value = ureq::get(&anomalies)
                .set("Authorization", &format!("Bearer {read_tok}"))
                .call()
                .unwrap()
                .into_json()
                .unwrap();
            v["data"].as_array().map_or(0, |a| a.len() as u64)
        }) >= 1,
        "no anomaly for the burst"
    );
    let seen = browser("tour", &c.agg.url(), &[write_tok, read_tok]);
    assert_eq!(seen["who"], "oncall (write)", "{seen}");
    assert!(
        seen["status"].as_str().unwrap().starts_with("300 lines"),
        "{seen}"
    );
    assert!(seen["context_lines"].as_u64().unwrap() > 1, "{seen}");
    assert!(
        seen["template"].as_str().unwrap().contains("its lines"),
        "{seen}"
    );
    assert!(
        seen["facet_query"]
            .as_str()
            .unwrap()
            .starts_with(r#"{service_name="shop"} | detected_level="#),
        "{seen}"
    );
    assert!(seen["pattern"].as_str().unwrap().contains("<_>"), "{seen}");
    assert!(seen["pattern_rows"].as_u64().unwrap() > 0, "{seen}");
    assert_eq!(seen["fleet_rows"], 1, "{seen}");
    assert!(
        seen["fleet_text"].as_str().unwrap().contains("shop-1"),
        "{seen}"
    );
    let in_doc = seen["rows_in_document_of_100000"].as_u64().unwrap();
    assert!((10..200).contains(&in_doc), "{seen}");
    assert!(
        seen["line_50000"]
            .as_str()
            .unwrap()
            .contains("synthetic line 50000"),
        "{seen}"
    );
    assert!(seen["anomaly_rows"].as_u64().unwrap() >= 1, "{seen}");
    assert!(
        seen["anomaly_legend"]
            .as_str()
            .unwrap()
            .contains("baseline"),
        "{seen}"
    );
    assert!(
        seen["anomaly_series_max"].as_f64().unwrap() >= 10.0,
        "the triggering series is drawn: {seen}"
    );
    assert_eq!(seen["readonly_who"], "viewer (read)", "{seen}");
    assert_eq!(seen["readonly_forms"], 0, "{seen}");
    assert_eq!(seen["readonly_expire_buttons"], 0, "{seen}");
    assert!(seen["theme_after_t"].is_string(), "{seen}");
    // The only errors the browser logged are the sign-in's refused requests.
    for e in seen["console_errors"].as_array().unwrap() {
        let e = e.as_str().unwrap();
        assert!(e.contains("401"), "browser console: {e}");
    }
    assert_screenshots(&[
        "explore",
        "explore-context",
        "explore-100k",
        "explore-facet",
        "patterns",
        "explore-pattern",
        "fleet",
        "alerts",
        "anomalies",
        "anomaly",
        "incidents",
        "storage",
        "alerts-readonly",
    ]);
}

/// The alerting tests' database outage, followed in the browser: the SRE opens the
/// incident from the link in the page they got, sees the signals of the three hosts,
/// the database ranked first with its reason, the sample lines and the alerts, and
/// acknowledges it; the fleet lists the three agents, the dead database host first;
/// the anomalies and storage pages show what the aggregator knows.
#[test]
fn console_follows_a_page_to_its_incident_and_acks_it() {
    let (read_tok, write_tok) = (
        "incident-read-0123456789abcdef",
        "incident-write-0123456789abcdef",
    );
    let tmp = tempfile::tempdir().unwrap();
    let pager = HttpSink::start().unwrap();
    let c = with_tokens(read_tok, write_tok, &Outage::config(tmp.path(), &pager));
    let mut o = Outage::start(&c, pager);
    let page = o.until_paged(&c);
    let url = page["incident"]["url"].as_str().unwrap().to_owned();
    let id = page["incident"]["id"].as_i64().unwrap();
    assert_eq!(url, format!("{}/incidents/{id}", c.agg.url()));

    let seen = browser("incident", &c.agg.url(), &[write_tok, &url]);
    assert!(
        seen["title"]
            .as_str()
            .unwrap()
            .starts_with(&format!("#{id} ")),
        "{seen}"
    );
    assert!(
        seen["first_candidate"].as_str().unwrap().contains("1. db"),
        "{seen}"
    );
    assert!(
        seen["first_candidate"]
            .as_str()
            .unwrap()
            .contains("upstream of api, web"),
        "{seen}"
    );
    for host in ["db1", "api1", "web1"] {
        assert!(
            seen["timeline"].as_str().unwrap().contains(host),
            "{host}: {seen}"
        );
    }
    assert!(
        seen["samples"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{seen}"
    );
    assert!(
        seen["alerts"]
            .as_str()
            .unwrap()
            .contains("ConnectionErrors"),
        "{seen}"
    );
    assert!(
        seen["after_ack"]
            .as_str()
            .unwrap()
            .contains("acked by oncall"),
        "{seen}"
    );
    assert_eq!(seen["fleet_rows"], 3, "{seen}");
    assert!(
        seen["fleet_first"].as_str().unwrap().contains("db1"),
        "{seen}"
    );
    assert!(
        seen["fleet_first"]
            .as_str()
            .unwrap()
            .contains("disconnected"),
        "{seen}"
    );
    assert!(
        seen["storage_tiers"].as_str().unwrap().contains("hot"),
        "{seen}"
    );
    // The acknowledgement is the aggregator's, not only the page's.
    let shown: serde_json::Value = ureq::get(&format!("{}/api/v1/incidents/{id}", c.agg.url()))
        .set("Authorization", &format!("Bearer {read_tok}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(shown["data"]["state"], "open", "{shown:#}");
    assert_eq!(shown["data"]["acked_by"], "oncall", "{shown:#}");
    assert_screenshots(&[
        "incident",
        "incident-acked",
        "fleet-outage",
        "storage-outage",
    ]);
}
