//! Alerting end to end with the real agent and aggregator: a real Alertmanager gets
//! alerts, groups them and sees them resolve; webhook, Slack, PagerDuty and email
//! payloads are checked field by field at local receivers (an HTTP sink, aiosmtpd);
//! a database outage seen from three hosts is one incident and one page naming the
//! database; notifications pending when the aggregator is killed are delivered once
//! after it restarts.

use heimdall_tests::get_json as get;
use heimdall_tests::sinks::{Alertmanager, HttpSink, SmtpSink};
use heimdall_tests::{AgentOptions, Cluster};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

pub(crate) fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    f.flush().unwrap();
}

fn rfc3339(s: &str) -> i128 {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
        .unix_timestamp_nanos()
}

/// An agent on host `host` tailing `<root>/<host>/*.log` with `app` as a label.
pub(crate) fn agent_on(
    c: &Cluster,
    host: &str,
    app: &str,
) -> (heimdall_tests::Agent, std::path::PathBuf) {
    let dir = c.root.join(format!("logs-{host}"));
    std::fs::create_dir_all(&dir).unwrap();
    let a = c
        .agent(
            host,
            AgentOptions {
                include: vec![format!("{}/*.log", dir.display())],
                files_extra: format!("labels = {{ app = {app:?} }}"),
                ..AgentOptions::default()
            },
        )
        .unwrap();
    (a, dir.join("app.log"))
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn alertmanager_receives_groups_and_resolves_alerts() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = HttpSink::start().unwrap();
    let am =
        Alertmanager::start(&tmp.path().join("am"), &format!("{}/am-hook", hook.url())).unwrap();
    let rules = tmp.path().join("rules.yml");
    std::fs::write(
        &rules,
        r#"groups:
  - name: web
    interval: 1s
    rules:
      - alert: WebErrors
        expr: sum by (host) (count_over_time({app="web"} |= "ERROR" [4s])) > 2
        labels: { severity: page }
        annotations:
          summary: "{{ $labels.host }} logged {{ $value }} errors in 4s"
"#,
    )
    .unwrap();
    let c = Cluster::start_with(&format!(
        "[alerting]\nrules = [{rules:?}]\nresend_interval = \"2s\"\n[[alerting.receivers]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = {:?}\n",
        am.url
    ))
    .unwrap();
    let (_a1, f1) = agent_on(&c, "web1", "web");
    let (_a2, f2) = agent_on(&c, "web2", "web");
    let errors: Vec<String> = (0..5)
        .map(|i| format!("ERROR request {i} failed"))
        .collect();
    append(&f1, &errors);
    append(&f2, &errors);

    // Both instances reach Alertmanager, with our labels and annotations (errors go on
    // meanwhile, a few a second, so the 4 s windows stay above the threshold).
    let start = Instant::now();
    let mut last = Instant::now();
    let alerts = loop {
        if last.elapsed() > Duration::from_millis(500) {
            last = Instant::now();
            append(&f1, &errors[..2]);
            append(&f2, &errors[..2]);
        }
        let v = am.get("alerts").unwrap();
        let ours: Vec<Value> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == "WebErrors" && a["status"]["state"] == "active")
            .cloned()
            .collect();
        if ours.len() == 2 {
            break ours;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "alerts at Alertmanager: {v}\n{}\n{}",
            c.agg.proc.log_tail(30),
            am.proc.log_tail(10)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut hosts: Vec<&str> = alerts
        .iter()
        .map(|a| a["labels"]["host"].as_str().unwrap())
        .collect();
    hosts.sort_unstable();
    assert_eq!(hosts, ["web1", "web2"]);
    for a in &alerts {
        assert_eq!(a["labels"]["severity"], "page");
        let host = a["labels"]["host"].as_str().unwrap();
        let summary = a["annotations"]["summary"].as_str().unwrap();
        assert!(
            summary.starts_with(&format!("{host} logged ")) && summary.ends_with(" errors in 4s"),
            "{summary}"
        );
        assert!(
            a["generatorURL"]
                .as_str()
                .unwrap()
                .starts_with(&c.agg.url()),
            "{a}"
        );
        // Firing alerts are sent with endsAt ahead (four resend intervals).
        assert!(rfc3339(a["endsAt"].as_str().unwrap()) > rfc3339(a["startsAt"].as_str().unwrap()));
    }
    // Alertmanager groups them by alertname: one group of two.
    let groups = am.get("alerts/groups").unwrap();
    let g: Vec<&Value> = groups
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["labels"]["alertname"] == "WebErrors")
        .collect();
    assert_eq!(g.len(), 1, "{groups}");
    assert_eq!(g[0]["alerts"].as_array().unwrap().len(), 2, "{groups}");
    // Alertmanager's own webhook notification carries both, firing.
    let start = Instant::now();
    while !hook.requests().iter().any(|q| {
        let v = q.json();
        v["status"] == "firing" && v["alerts"].as_array().is_some_and(|a| a.len() == 2)
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no firing notification from Alertmanager"
        );
        append(&f1, &errors[..2]);
        append(&f2, &errors[..2]);
        std::thread::sleep(Duration::from_millis(500));
    }

    // No more errors: the 4 s window empties, both resolve, Alertmanager says so. The
    // hosts' windows may empty in different evaluations, and then Alertmanager tells
    // each resolution in its own notification: what matters is that both are told.
    hook.wait(
        Duration::from_secs(30),
        "resolved notifications from Alertmanager for both hosts",
        |r| {
            let resolved: std::collections::HashSet<String> = r
                .iter()
                .flat_map(|q| q.json()["alerts"].as_array().cloned().unwrap_or_default())
                .filter(|x| x["status"] == "resolved")
                .filter_map(|x| x["labels"]["host"].as_str().map(str::to_owned))
                .collect();
            resolved.len() == 2 && r.iter().any(|q| q.json()["status"] == "resolved")
        },
    )
    .unwrap();
    let left = am.get("alerts?active=true").unwrap();
    assert!(
        left.as_array()
            .unwrap()
            .iter()
            .all(|a| a["labels"]["alertname"] != "WebErrors" || a["status"]["state"] != "active"),
        "{left}"
    );
    let ours = get(&format!("{}/api/v1/alerts?state=resolved", c.agg.url()));
    assert_eq!(ours["data"].as_array().unwrap().len(), 2, "{ours}");
}

#[test]
fn receivers_get_documented_payloads() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = HttpSink::start().unwrap();
    let slack = HttpSink::start().unwrap();
    let pd = HttpSink::start().unwrap();
    let smtp = SmtpSink::start(&tmp.path().join("smtp")).unwrap();
    // Slack refuses the first message with a rate limit.
    slack.script(vec![(429, vec![("retry-after", "1")])]);
    let secret = tmp.path().join("hook-secret");
    std::fs::write(&secret, "s3cr3t-shared-with-the-receiver\n").unwrap();
    let key = tmp.path().join("pd-key");
    std::fs::write(&key, "R0UT1NGKEY0123456789abcdef012345\n").unwrap();
    let rules = tmp.path().join("rules.yml");
    std::fs::write(
        &rules,
        r#"groups:
  - name: boom
    interval: 1s
    rules:
      - alert: Boom
        expr: sum(count_over_time({app="boom"} |= "BOOM" [3s])) > 0
        labels: { severity: page, team: core }
        annotations:
          summary: "{{ $value }} boom lines"
          runbook_url: https://runbooks.example/boom
"#,
    )
    .unwrap();
    let recv = |name: &str, kind: &str, extra: String| {
        format!("[[alerting.receivers]]\nname = \"{name}\"\nkind = \"{kind}\"\ngroup_interval = \"1s\"\n{extra}\n")
    };
    let cfg = format!(
        "[alerting]\nrules = [{rules:?}]\n{}{}{}{}",
        recv("hook", "webhook", format!("url = \"{}/hook\"\nsecret_file = {secret:?}", hook.url())),
        recv("slack", "slack", format!("url = \"{}/services/T000/B000/XXX\"", slack.url())),
        recv("pd", "pagerduty", format!("url = \"{}/v2/enqueue\"\nrouting_key_file = {key:?}", pd.url())),
        recv(
            "mail",
            "email",
            format!(
                "smtp = {:?}\nsmtp_security = \"none\"\nfrom = \"heimdall@example.org\"\nto = [\"oncall@example.org\", \"sre@example.org\"]",
                smtp.addr
            )
        ),
    );
    let c = Cluster::start_with(&cfg).unwrap();
    let (_a, f) = agent_on(&c, "boom1", "boom");
    let t0 = heimdall_common::record::now_ns();
    append(&f, &["BOOM the disk is on fire".to_owned()]);

    // Webhook: Alertmanager's webhook shape, signed.
    let reqs = hook
        .wait(Duration::from_secs(20), "webhook firing", |r| {
            r.iter().any(|q| q.json()["status"] == "firing")
        })
        .unwrap();
    let q = reqs
        .iter()
        .find(|q| q.json()["status"] == "firing")
        .unwrap();
    assert_eq!(q.method, "POST");
    assert_eq!(q.path, "/hook");
    assert_eq!(q.headers["content-type"], "application/json");
    let ts: i64 = q.headers["x-heimdall-timestamp"].parse().unwrap();
    assert!((ts - t0 / 1_000_000_000).abs() < 60, "timestamp {ts}");
    let key_h = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cr3t-shared-with-the-receiver");
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&q.body);
    let want: String = ring::hmac::sign(&key_h, &signed)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(q.headers["x-heimdall-signature"], format!("sha256={want}"));
    assert!(!q.headers["x-heimdall-notification-id"].is_empty());
    let v = q.json();
    assert_eq!(v["version"], "4");
    assert_eq!(v["receiver"], "hook");
    assert!(v["groupKey"].as_str().is_some_and(|k| !k.is_empty()));
    assert_eq!(v["groupLabels"], serde_json::json!({"alertname": "Boom"}));
    assert_eq!(v["commonLabels"]["alertname"], "Boom");
    assert_eq!(v["commonLabels"]["severity"], "page");
    assert_eq!(v["commonLabels"]["team"], "core");
    assert_eq!(v["commonAnnotations"]["summary"], "1 boom lines");
    assert_eq!(
        v["commonAnnotations"]["runbook_url"],
        "https://runbooks.example/boom"
    );
    assert_eq!(v["externalURL"], c.agg.url());
    assert_eq!(v["truncatedAlerts"], 0);
    let a = &v["alerts"][0];
    assert_eq!(v["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(a["status"], "firing");
    assert_eq!(a["labels"]["alertname"], "Boom");
    assert!(rfc3339(a["startsAt"].as_str().unwrap()) >= i128::from(t0) - 1_000_000_000);
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
    assert!(a["generatorURL"]
        .as_str()
        .unwrap()
        .starts_with(&c.agg.url()));
    assert!(a["fingerprint"].as_str().is_some_and(|f| f.len() == 16));
    assert_eq!(a["samples"][0], "BOOM the disk is on fire");

    // Slack: retried after the 429's Retry-After, then text and blocks.
    let reqs = slack
        .wait(Duration::from_secs(20), "slack delivered", |r| {
            r.iter().any(|q| q.status == 200)
        })
        .unwrap();
    assert_eq!(reqs[0].status, 429);
    let ok = reqs.iter().find(|q| q.status == 200).unwrap();
    assert!(
        ok.at.duration_since(reqs[0].at) >= Duration::from_millis(950),
        "Retry-After not honoured"
    );
    assert_eq!(ok.path, "/services/T000/B000/XXX");
    let s = ok.json();
    assert!(
        s["text"].as_str().unwrap().contains("[FIRING:1] Boom"),
        "{s}"
    );
    let blocks = s["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(blocks[0]["text"]["text"]
        .as_str()
        .unwrap()
        .starts_with("[FIRING:1] Boom"));
    assert!(blocks.iter().any(|b| b["type"] == "section"
        && b["text"]["type"] == "mrkdwn"
        && b["text"]["text"].as_str().unwrap().contains("1 boom lines")));
    assert_eq!(blocks.last().unwrap()["type"], "context");

    // PagerDuty Events v2.
    let reqs = pd
        .wait(Duration::from_secs(20), "pagerduty trigger", |r| {
            r.iter().any(|q| q.json()["event_action"] == "trigger")
        })
        .unwrap();
    let p = reqs[0].json();
    assert_eq!(reqs[0].path, "/v2/enqueue");
    assert_eq!(p["routing_key"], "R0UT1NGKEY0123456789abcdef012345");
    assert_eq!(p["event_action"], "trigger");
    let dedup = p["dedup_key"].as_str().unwrap().to_owned();
    assert!(
        dedup.len() == 64 && dedup.bytes().all(|b| b.is_ascii_hexdigit()),
        "{dedup}"
    );
    assert!(p["payload"]["summary"].as_str().unwrap().contains("Boom"));
    assert!(p["payload"]["summary"].as_str().unwrap().len() <= 1024);
    assert_eq!(p["payload"]["severity"], "critical");
    assert!(p["payload"]["source"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    rfc3339(p["payload"]["timestamp"].as_str().unwrap());
    assert_eq!(p["payload"]["class"], "Boom");
    assert_eq!(p["client"], "Heimdall");
    assert!(p["links"]
        .as_array()
        .is_some_and(|l| !l.is_empty() && l[0]["href"].is_string()));

    // Email.
    wait_until(Duration::from_secs(20), "email", || {
        !smtp.messages().is_empty()
    });
    let m = &smtp.messages()[0];
    assert!(m.contains("Subject: [FIRING:1] Boom"), "{m}");
    assert!(m.contains("From: heimdall@example.org"), "{m}");
    assert!(
        m.contains("oncall@example.org") && m.contains("sre@example.org"),
        "{m}"
    );
    assert!(
        m.contains("1 boom lines") && m.contains("BOOM the disk is on fire"),
        "{m}"
    );

    // The window empties: every receiver is told it resolved.
    hook.wait(Duration::from_secs(30), "webhook resolved", |r| {
        r.iter().any(|q| q.json()["status"] == "resolved")
    })
    .unwrap();
    let r = hook
        .requests()
        .into_iter()
        .find(|q| q.json()["status"] == "resolved")
        .unwrap()
        .json();
    assert_eq!(r["alerts"][0]["status"], "resolved");
    assert!(
        rfc3339(r["alerts"][0]["endsAt"].as_str().unwrap())
            > rfc3339(r["alerts"][0]["startsAt"].as_str().unwrap())
    );
    let reqs = pd
        .wait(Duration::from_secs(30), "pagerduty resolve", |r| {
            r.iter().any(|q| q.json()["event_action"] == "resolve")
        })
        .unwrap();
    let res = reqs
        .iter()
        .find(|q| q.json()["event_action"] == "resolve")
        .unwrap()
        .json();
    assert_eq!(
        res["dedup_key"],
        dedup.as_str(),
        "resolve must name the same PagerDuty alert"
    );
    slack
        .wait(Duration::from_secs(30), "slack resolved", |r| {
            r.iter().any(|q| {
                q.status == 200
                    && q.json()["text"]
                        .as_str()
                        .is_some_and(|t| t.contains("[RESOLVED] Boom"))
            })
        })
        .unwrap();
    wait_until(Duration::from_secs(30), "resolved email", || {
        smtp.messages()
            .iter()
            .any(|m| m.contains("Subject: [RESOLVED] Boom"))
    });
    // Exactly one firing notification each (no repeats within repeat_interval).
    assert_eq!(
        hook.requests()
            .iter()
            .filter(|q| q.json()["status"] == "firing")
            .count(),
        1
    );
    assert_eq!(
        pd.requests()
            .iter()
            .filter(|q| q.json()["event_action"] == "trigger")
            .count(),
        1
    );
    let metrics = heimdall_tests::get_text(&format!("{}/metrics", c.agg.url()));
    assert!(
        metrics.contains("heimdall_aggregator_notifications_sent_total{receiver=\"slack\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("heimdall_aggregator_notifications_retried_total{receiver=\"slack\"} 1")
    );
}

/// The database-outage scenario: three hosts (`db1` running `db`, `api1` and `web1`
/// running services that use it), alert rules that page on a silent host and on
/// connection errors, correlation that knows the dependencies, and a webhook receiver
/// that pages once per incident.
pub(crate) struct Outage {
    pub pager: HttpSink,
    pub db: heimdall_tests::Agent,
    pub fdb: std::path::PathBuf,
    _api: heimdall_tests::Agent,
    pub fapi: std::path::PathBuf,
    _web: heimdall_tests::Agent,
    pub fweb: std::path::PathBuf,
    /// Error lines written so far.
    pub n: usize,
}

impl Outage {
    /// The aggregator's configuration for the scenario (rules and receiver files are
    /// written under `dir`).
    pub fn config(dir: &Path, pager: &HttpSink) -> String {
        let secret = dir.join("secret");
        std::fs::write(&secret, "incident-secret-0123456789\n").unwrap();
        let rules = dir.join("rules.yml");
        std::fs::write(
            &rules,
            r#"groups:
  - name: infra
    interval: 1s
    rules:
      - alert: HostSilent
        absent: { hosts: ".+", for: 4s }
        labels: { severity: page }
      - alert: ConnectionErrors
        expr: sum by (host, app) (count_over_time({app=~"api|web"} |= "connection refused" [6s])) > 2
        labels: { severity: page }
        annotations: { summary: "{{ $labels.app }} on {{ $labels.host }} cannot reach its database" }
"#,
        )
        .unwrap();
        format!(
            "[alerting]\nrules = [{rules:?}]\n[alerting.correlation]\ndependencies = [\"api -> db\", \"web -> db\"]\nsettle = \"8s\"\n[[alerting.receivers]]\nname = \"pager\"\nkind = \"webhook\"\nurl = \"{}/page\"\nsecret_file = {secret:?}\nper_incident = true\n",
            pager.url()
        )
    }

    /// Starts the three agents and waits until all is well: every host's lines are
    /// stored and nothing pages.
    pub fn start(c: &Cluster, pager: HttpSink) -> Outage {
        let (db, fdb) = agent_on(c, "db1", "db");
        let (_api, fapi) = agent_on(c, "api1", "api");
        let (_web, fweb) = agent_on(c, "web1", "web");
        for (f, what) in [
            (&fdb, "checkpoint complete"),
            (&fapi, "GET /users 200"),
            (&fweb, "GET / 200"),
        ] {
            append(
                f,
                &(0..5).map(|i| format!("{what} {i}")).collect::<Vec<_>>(),
            );
        }
        // Every host is known (heartbeats) and its streams stored.
        wait_until(Duration::from_secs(30), "three hosts' lines", || {
            c.count() >= 15
        });
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            pager.requests().is_empty(),
            "nothing pages while all is well"
        );
        Outage {
            pager,
            db,
            fdb,
            _api,
            fapi,
            _web,
            fweb,
            n: 0,
        }
    }

    /// The services log one connection error each.
    pub fn errors(&mut self) {
        self.n += 1;
        for (f, who) in [(&self.fapi, "api"), (&self.fweb, "web")] {
            append(
                f,
                &[format!(
                    "ERROR {who} query {}: connect to db1:5432: connection refused",
                    self.n
                )],
            );
        }
    }

    /// The database host dies and the services log errors until the page comes;
    /// returns the page.
    pub fn until_paged(&mut self, c: &Cluster) -> Value {
        self.db.proc.kill9();
        let outage = Instant::now();
        loop {
            self.errors();
            let pages: Vec<_> = self
                .pager
                .requests()
                .into_iter()
                .filter(|q| q.json()["status"] == "firing")
                .collect();
            if let Some(p) = pages.first() {
                return p.json();
            }
            assert!(
                outage.elapsed() < Duration::from_secs(60),
                "no page:\n{}",
                c.agg.proc.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Three hosts: when the database's agent goes silent and the two services that use
/// it log connection errors, SREs get one page, for one incident, naming the database
/// as the likely cause; a resolve follows when traffic recovers.
#[test]
fn database_outage_is_one_incident_and_one_page() {
    let tmp = tempfile::tempdir().unwrap();
    let pager = HttpSink::start().unwrap();
    let c = Cluster::start_with(&Outage::config(tmp.path(), &pager)).unwrap();
    let mut o = Outage::start(&c, pager);

    // The outage: the database host dies; the services log errors for a while.
    let page = o.until_paged(&c);
    let inc = &page["incident"];
    assert_eq!(inc["state"], "open");
    assert_eq!(inc["candidates"][0]["name"], "db", "{inc:#}");
    assert!(
        inc["candidates"][0]["why"]
            .as_str()
            .unwrap()
            .contains("upstream of api, web"),
        "{inc:#}"
    );
    let whats: Vec<&str> = inc["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subject"].as_str().unwrap())
        .collect();
    assert!(whats.iter().any(|s| s.contains("host=db1")), "{whats:?}");
    assert!(whats.iter().any(|s| s.contains("host=api1")), "{whats:?}");
    assert!(whats.iter().any(|s| s.contains("host=web1")), "{whats:?}");
    // The page has the context: sample lines and a link to the incident.
    assert!(page["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["samples"][0]
            .as_str()
            .is_some_and(|s| s.contains("connection refused"))));
    assert!(inc["url"].as_str().unwrap().starts_with(&c.agg.url()));
    // Errors go on a few seconds more: still one page, one incident.
    for _ in 0..6 {
        o.errors();
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(o.pager.requests().len(), 1, "exactly one page");
    let open = get(&format!("{}/api/v1/incidents", c.agg.url()));
    assert_eq!(open["data"].as_array().unwrap().len(), 1, "{open:#}");
    let id = open["data"][0]["id"].as_i64().unwrap();

    // Recovery: the database is back, the errors stop; the incident resolves.
    o.db.restart().unwrap();
    append(&o.fdb, &["checkpoint complete again".to_owned()]);
    o.pager
        .wait(Duration::from_secs(60), "resolve", |r| {
            r.iter().any(|q| q.json()["status"] == "resolved")
        })
        .unwrap();
    let r = o
        .pager
        .requests()
        .into_iter()
        .find(|q| q.json()["status"] == "resolved")
        .unwrap()
        .json();
    assert_eq!(r["incident"]["id"], id);
    assert_eq!(r["incident"]["state"], "resolved");
    assert_eq!(
        o.pager
            .requests()
            .iter()
            .filter(|q| q.json()["status"] == "firing")
            .count(),
        1
    );
    let shown = get(&format!("{}/api/v1/incidents/{id}", c.agg.url()));
    assert_eq!(shown["data"]["state"], "resolved");
}

/// A notification accepted for delivery survives a kill -9 of the aggregator and is
/// delivered once after the restart; the firing alert neither pages again nor is
/// forgotten.
#[test]
fn pending_notifications_are_delivered_once_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = HttpSink::start().unwrap();
    hook.set_default(503);
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "restart-secret-0123456789\n").unwrap();
    let rules = tmp.path().join("rules.yml");
    std::fs::write(
        &rules,
        r#"groups:
  - name: g
    interval: 1s
    rules:
      - alert: Lasting
        expr: sum(count_over_time({app="crash"} |= "FATAL" [1h])) > 0
"#,
    )
    .unwrap();
    let mut c = Cluster::start_with(&format!(
        "[alerting]\nrules = [{rules:?}]\n[[alerting.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}/hook\"\nsecret_file = {secret:?}\n",
        hook.url()
    ))
    .unwrap();
    let (_a, f) = agent_on(&c, "crash1", "crash");
    append(&f, &["FATAL out of memory".to_owned()]);
    // The receiver is down: attempts fail and the notification waits in the outbox.
    hook.wait(Duration::from_secs(20), "first attempt", |r| !r.is_empty())
        .unwrap();
    c.agg.proc.kill9();
    let tried = hook.requests().len();
    hook.set_default(200);
    c.agg.restart(&c.root, &c.pki).unwrap();
    let reqs = hook
        .wait(Duration::from_secs(30), "delivery after restart", |r| {
            r.iter().any(|q| q.status == 200)
        })
        .unwrap();
    assert!(reqs.len() > tried, "delivered by the restarted aggregator");
    // Give it time to page again if it wrongly would.
    std::thread::sleep(Duration::from_secs(4));
    let ok: Vec<_> = hook
        .requests()
        .into_iter()
        .filter(|q| q.status == 200)
        .collect();
    assert_eq!(ok.len(), 1, "delivered exactly once");
    let ids: std::collections::HashSet<String> = hook
        .requests()
        .iter()
        .map(|q| q.headers["x-heimdall-notification-id"].clone())
        .collect();
    assert_eq!(ids.len(), 1, "every attempt is the same notification");
    let v = ok[0].json();
    assert_eq!(v["status"], "firing");
    assert_eq!(v["alerts"][0]["labels"]["alertname"], "Lasting");
    let firing = get(&format!("{}/api/v1/alerts?state=firing", c.agg.url()));
    assert_eq!(
        firing["data"].as_array().unwrap().len(),
        1,
        "still firing after the restart"
    );
}
