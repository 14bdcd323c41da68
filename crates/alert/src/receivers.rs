//! The wire formats of receivers and one delivery attempt each:
//!
//! - **Alertmanager** API v2: `POST <url>/api/v2/alerts`, a JSON array of
//!   `{labels, annotations, startsAt, endsAt, generatorURL}`.
//! - **Webhook**: the Alertmanager webhook body (`version` "4", `groupKey`, `status`,
//!   `receiver`, `groupLabels`, `commonLabels`, `commonAnnotations`, `externalURL`,
//!   `alerts`, `truncatedAlerts`) plus `incident` when per incident. Signed:
//!   `X-Heimdall-Timestamp` (Unix seconds) and `X-Heimdall-Signature:
//!   sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`; receivers reject old
//!   timestamps to stop replays. `X-Heimdall-Notification-Id` is stable across retries.
//! - **Slack** incoming webhook: `text` plus `blocks` (header, one section per alert,
//!   context with links); 429 `Retry-After` is honoured.
//! - **PagerDuty** Events API v2: `trigger` / `resolve` with a `dedup_key` stable for
//!   the group or incident, severity from the `severity` label.
//! - **Email** over SMTP: a plain-text message with the same content.

use super::config::{Receiver, ReceiverKind, SmtpSecurity};
use super::notify::{AlertOut, Notification, SendError};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::time::Duration;

/// RFC 3339 with nanoseconds, UTC.
pub fn rfc3339(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// The webhook signature of `body` at `ts`.
pub fn sign(secret: &str, ts: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(ts.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex(ctx.sign().as_ref()))
}

fn am_alert(a: &AlertOut) -> Value {
    json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "startsAt": rfc3339(a.starts_at),
        "endsAt": if a.ends_at > 0 { rfc3339(a.ends_at) } else { "0001-01-01T00:00:00Z".into() },
        "generatorURL": a.generator_url,
    })
}

/// The Alertmanager webhook body.
pub fn webhook_body(n: &Notification) -> Value {
    let mut v = json!({
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": 0,
        "status": n.status,
        "receiver": n.receiver,
        "groupLabels": n.group_labels,
        "commonLabels": n.common_labels,
        "commonAnnotations": n.common_annotations,
        "externalURL": n.external_url,
        "alerts": n.alerts.iter().map(|a| {
            let mut x = am_alert(a);
            x["status"] = json!(a.status);
            x["fingerprint"] = json!(a.fingerprint);
            x["value"] = json!(a.value);
            x["samples"] = json!(a.samples);
            x
        }).collect::<Vec<_>>(),
    });
    if let Some(i) = &n.incident {
        v["incident"] = serde_json::to_value(i).expect("incident serialises");
    }
    v
}

fn title(n: &Notification) -> String {
    if let Some(i) = &n.incident {
        let cause = i
            .candidates
            .first()
            .map(|c| format!("; likely cause: {}", c.name))
            .unwrap_or_default();
        return if i.state == "resolved" {
            format!("[RESOLVED] Incident #{}: {}", i.id, i.title)
        } else {
            format!("[INCIDENT #{}] {}{cause}", i.id, i.title)
        };
    }
    let firing = n.alerts.iter().filter(|a| a.status == "firing").count();
    let name = n
        .common_labels
        .get("alertname")
        .cloned()
        .unwrap_or_else(|| "alerts".into());
    let extra: Vec<String> = n
        .group_labels
        .iter()
        .filter(|(k, _)| *k != "alertname")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" ({})", extra.join(" "))
    };
    if n.status == "firing" {
        format!("[FIRING:{firing}] {name}{extra}")
    } else {
        format!("[RESOLVED] {name}{extra}")
    }
}

fn describe(a: &AlertOut) -> String {
    let name = a.labels.get("alertname").map_or("alert", String::as_str);
    let text = a
        .annotations
        .get("summary")
        .or_else(|| a.annotations.get("description"))
        .cloned()
        .unwrap_or_default();
    let labels: Vec<String> = a
        .labels
        .iter()
        .filter(|(k, _)| *k != "alertname")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{} {name} {{{}}} {text}",
        a.status.to_uppercase(),
        labels.join(", ")
    )
}

/// The plain text of a notification (email body, Slack fallback).
pub fn text(n: &Notification) -> String {
    let mut s = title(n);
    s.push('\n');
    if let Some(i) = &n.incident {
        let _ = writeln!(s, "\nRoot-cause candidates, likeliest first:");
        for (k, c) in i.candidates.iter().enumerate() {
            let _ = writeln!(s, "  {}. {} — {}", k + 1, c.name, c.why);
        }
        let _ = writeln!(s, "\nTimeline:");
        for e in &i.signals {
            let _ = writeln!(s, "  {} {} {}", rfc3339(e.onset), e.what, e.subject);
        }
        let _ = writeln!(s, "\nIncident: {}", i.url);
    }
    let _ = writeln!(s);
    for a in &n.alerts {
        let _ = writeln!(s, "{}", describe(a));
        let _ = writeln!(
            s,
            "  since {}  value {}",
            rfc3339(a.starts_at),
            heimdall_rules::format_value(a.value)
        );
        for l in a.samples.iter().take(3) {
            let _ = writeln!(s, "  | {l}");
        }
        let _ = writeln!(s, "  {}", a.generator_url);
    }
    s
}

/// The Slack message.
pub fn slack_body(n: &Notification) -> Value {
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": truncate(&title(n), 150), "emoji": false}
    })];
    if let Some(i) = &n.incident {
        let cands: Vec<String> = i
            .candidates
            .iter()
            .take(3)
            .enumerate()
            .map(|(k, c)| format!("{}. *{}* — {}", k + 1, c.name, c.why))
            .collect();
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(&format!("*Likely causes*\n{}", cands.join("\n")), 3000)}
        }));
    }
    for a in n.alerts.iter().take(20) {
        let mut t = format!("*{}*", describe(a));
        if let Some(l) = a.samples.first() {
            let _ = write!(t, "\n```{}```", truncate(l, 500));
        }
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(&t, 3000)}
        }));
    }
    let link = n
        .incident
        .as_ref()
        .map(|i| i.url.clone())
        .or_else(|| n.alerts.first().map(|a| a.generator_url.clone()))
        .unwrap_or_else(|| n.external_url.clone());
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": format!("<{link}|Heimdall> · {} alert(s)", n.alerts.len())}]
    }));
    json!({"text": truncate(&text(n), 3000), "blocks": blocks})
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// PagerDuty severity from the `severity` label.
pub fn pd_severity(labels: &std::collections::BTreeMap<String, String>) -> &'static str {
    match labels
        .get("severity")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        Some("critical" | "page" | "p1" | "fatal" | "emergency") => "critical",
        Some("warning" | "warn" | "p3" | "medium") => "warning",
        Some("info" | "informational" | "low" | "p4" | "p5") => "info",
        _ => "error",
    }
}

/// The PagerDuty event.
pub fn pagerduty_body(n: &Notification, routing_key: &str) -> Value {
    let dedup_key = match &n.incident {
        Some(i) => format!("heimdall-incident-{}", i.id),
        None => {
            let d = ring::digest::digest(
                &ring::digest::SHA256,
                format!("{}\u{0}{}", n.receiver, n.group_key).as_bytes(),
            );
            hex(d.as_ref())
        }
    };
    let action = if n.status == "firing" {
        "trigger"
    } else {
        "resolve"
    };
    let mut v = json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": dedup_key,
        "client": "Heimdall",
        "client_url": n.external_url,
    });
    if action == "trigger" {
        let worst = n
            .alerts
            .iter()
            .filter(|a| a.status == "firing")
            .map(|a| pd_severity(&a.labels))
            .min_by_key(|s| match *s {
                "critical" => 0,
                "error" => 1,
                "warning" => 2,
                _ => 3,
            })
            .unwrap_or("error");
        let source = n
            .incident
            .as_ref()
            .and_then(|i| i.candidates.first().map(|c| c.name.clone()))
            .or_else(|| n.common_labels.get("host").cloned())
            .unwrap_or_else(|| "heimdall".into());
        let links: Vec<Value> = n
            .incident
            .iter()
            .map(|i| json!({"href": i.url, "text": format!("Incident #{}", i.id)}))
            .chain(n.alerts.iter().take(5).map(|a| {
                json!({"href": a.generator_url, "text": a.labels.get("alertname").cloned().unwrap_or_default()})
            }))
            .collect();
        v["payload"] = json!({
            "summary": truncate(&title(n), 1024),
            "source": source,
            "severity": worst,
            "timestamp": rfc3339(n.alerts.iter().map(|a| a.starts_at).min().unwrap_or(n.created)),
            "component": n.common_labels.get("app").or_else(|| n.common_labels.get("service")).cloned().unwrap_or_default(),
            "group": n.group_labels.values().cloned().collect::<Vec<_>>().join(","),
            "class": n.common_labels.get("alertname").cloned().unwrap_or_else(|| "incident".into()),
            "custom_details": {
                "alerts": n.alerts.iter().map(describe).collect::<Vec<_>>(),
                "incident": n.incident,
                "firing": n.alerts.iter().filter(|a| a.status == "firing").count(),
            },
        });
        v["links"] = json!(links);
    }
    v
}

fn http_err(e: &reqwest::Error) -> SendError {
    SendError {
        message: format!("{e}"),
        retry_after: None,
        permanent: false,
    }
}

async fn post(
    client: &reqwest::Client,
    r: &Receiver,
    url: &str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
) -> Result<(), SendError> {
    let mut req = client
        .post(url)
        .timeout(r.timeout)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("Heimdall/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.body(body).send().await.map_err(|e| http_err(&e))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    let text = resp.text().await.unwrap_or_default();
    Err(SendError {
        message: format!("{url}: HTTP {status}: {}", truncate(text.trim(), 300)),
        retry_after,
        permanent: status.is_client_error()
            && status != reqwest::StatusCode::TOO_MANY_REQUESTS
            && status != reqwest::StatusCode::REQUEST_TIMEOUT,
    })
}

/// One delivery attempt.
///
/// # Errors
/// [`SendError`] saying whether to retry.
pub async fn send(
    client: &reqwest::Client,
    r: &Receiver,
    n: &Notification,
) -> Result<(), SendError> {
    let json_bytes = |v: &Value| serde_json::to_vec(v).expect("JSON serialises");
    match r.kind {
        ReceiverKind::Alertmanager => {
            let body: Vec<Value> = n.alerts.iter().map(am_alert).collect();
            post(
                client,
                r,
                &format!("{}/api/v2/alerts", r.url),
                json_bytes(&json!(body)),
                Vec::new(),
            )
            .await
        }
        ReceiverKind::Webhook => {
            let body = json_bytes(&webhook_body(n));
            let ts = heimdall_common::record::now_ns() / 1_000_000_000;
            let sig = sign(r.secret.as_deref().unwrap_or(""), ts, &body);
            post(
                client,
                r,
                &r.url,
                body,
                vec![
                    ("x-heimdall-timestamp", ts.to_string()),
                    ("x-heimdall-signature", sig),
                    ("x-heimdall-notification-id", n.id.clone()),
                ],
            )
            .await
        }
        ReceiverKind::Slack => {
            post(client, r, &r.url, json_bytes(&slack_body(n)), Vec::new()).await
        }
        ReceiverKind::Pagerduty => {
            let body = pagerduty_body(n, r.routing_key.as_deref().unwrap_or(""));
            post(client, r, &r.url, json_bytes(&body), Vec::new()).await
        }
        ReceiverKind::Email => email(r, n).await,
    }
}

async fn email(r: &Receiver, n: &Notification) -> Result<(), SendError> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let fail = |m: String, permanent| SendError {
        message: m,
        retry_after: None,
        permanent,
    };
    let (host, port) = r
        .smtp
        .clone()
        .ok_or_else(|| fail("no smtp server".into(), true))?;
    let mut b = Message::builder()
        .from(
            r.from
                .parse()
                .map_err(|e| fail(format!("from: {e}"), true))?,
        )
        .subject(title(n))
        .message_id(Some(format!("<{}@heimdall>", n.id)))
        .header(lettre::message::header::ContentType::TEXT_PLAIN);
    for t in &r.to {
        b = b.to(t.parse().map_err(|e| fail(format!("to: {e}"), true))?);
    }
    let msg = b
        .body(text(n))
        .map_err(|e| fail(format!("message: {e}"), true))?;
    let builder = match r.smtp_security {
        SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host),
        SmtpSecurity::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
            .map_err(|e| fail(format!("{host}: {e}"), false))?,
        SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&host)
            .map_err(|e| fail(format!("{host}: {e}"), false))?,
    };
    let mut builder = builder.port(port).timeout(Some(r.timeout));
    if let Some((u, p)) = &r.smtp_credentials {
        builder = builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
            u.clone(),
            p.clone(),
        ));
    }
    let transport = builder.build();
    transport.send(msg).await.map(|_| ()).map_err(|e| {
        let permanent = e.is_permanent();
        fail(format!("smtp {host}:{port}: {e}"), permanent)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2 key and data, with the timestamp prefix folded in.
        let sig = sign("Jefe", 0, b"what do ya want for nothing?");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert_ne!(sig, sign("Jefe", 1, b"what do ya want for nothing?"));
        // "0." + data, checked against ring directly.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let want = ring::hmac::sign(&key, b"0.what do ya want for nothing?");
        assert_eq!(sig, format!("sha256={}", hex(want.as_ref())));
    }

    #[test]
    fn severities_map_to_pagerduty() {
        let l = |s: &str| BTreeMap::from([("severity".to_owned(), s.to_owned())]);
        assert_eq!(pd_severity(&l("page")), "critical");
        assert_eq!(pd_severity(&l("warning")), "warning");
        assert_eq!(pd_severity(&l("info")), "info");
        assert_eq!(pd_severity(&BTreeMap::new()), "error");
    }

    #[test]
    fn rfc3339_has_nanoseconds() {
        assert_eq!(rfc3339(1_500_000_000), "1970-01-01T00:00:01.5Z");
    }
}
