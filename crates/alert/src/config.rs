//! `[alerting]` in the aggregator's configuration: rule files, receivers and the
//! correlation of alerts and anomaly events into incidents.

use heimdall_common::config::{ConfigProblems, HumanDuration};
use heimdall_logql::{self as parse, Matcher};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[alerting]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfigFile {
    /// Rule files (YAML, Prometheus / Loki-ruler format); a `*` in the file name
    /// matches several. Default: none (alerting off unless receivers or rules are set).
    #[serde(default)]
    pub rules: Vec<PathBuf>,
    /// Interval of groups that do not set one. Default 10s. Rules over LogQL queries are
    /// also evaluated as soon as lines of their streams are stored.
    pub evaluation_interval: Option<HumanDuration>,
    /// Longest one rule evaluation may take. Default 10s.
    pub query_timeout: Option<HumanDuration>,
    /// Base URL of this aggregator's API as SREs reach it, for links in notifications.
    /// Default `http://<api.listen>`.
    pub external_url: Option<String>,
    /// Firing alerts are sent to Alertmanager receivers again this often (Alertmanager
    /// expires alerts that are not re-sent). Default 1m.
    pub resend_interval: Option<HumanDuration>,
    /// Most alert instances active at once over all rules. Default 100000.
    pub max_alerts: Option<u32>,
    /// Where notifications go.
    #[serde(default)]
    pub receivers: Vec<ReceiverConfigFile>,
    /// Grouping of anomaly events and alerts from many hosts into incidents.
    #[serde(default)]
    pub correlation: CorrelationConfigFile,
}

/// What kind of receiver.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    /// Prometheus Alertmanager, API v2 (`url` is its base URL).
    Alertmanager,
    /// JSON in the Alertmanager webhook shape, signed with HMAC-SHA256.
    Webhook,
    /// Slack incoming webhook.
    Slack,
    /// PagerDuty Events API v2.
    Pagerduty,
    /// Email over SMTP.
    Email,
}

impl ReceiverKind {
    /// The name used in metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiverKind::Alertmanager => "alertmanager",
            ReceiverKind::Webhook => "webhook",
            ReceiverKind::Slack => "slack",
            ReceiverKind::Pagerduty => "pagerduty",
            ReceiverKind::Email => "email",
        }
    }
}

/// `[[alerting.receivers]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfigFile {
    /// Unique name, in metrics and the API.
    pub name: String,
    /// `alertmanager`, `webhook`, `slack`, `pagerduty` or `email`.
    pub kind: ReceiverKind,
    /// Alertmanager base URL, webhook URL, Slack incoming-webhook URL, or PagerDuty
    /// events URL (default `https://events.pagerduty.com/v2/enqueue`).
    pub url: Option<String>,
    /// Webhook: file holding the HMAC-SHA256 secret (first line).
    pub secret_file: Option<PathBuf>,
    /// PagerDuty: file holding the integration (routing) key (first line).
    pub routing_key_file: Option<PathBuf>,
    /// Email: SMTP server `host:port`.
    pub smtp: Option<String>,
    /// Email: `none` (plain, for a local relay), `starttls` (default) or `tls`.
    pub smtp_security: Option<String>,
    /// Email: SMTP user name.
    pub smtp_username: Option<String>,
    /// Email: file holding the SMTP password.
    pub smtp_password_file: Option<PathBuf>,
    /// Email: sender address.
    pub from: Option<String>,
    /// Email: recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// Which alerts go here: a stream selector over alert labels, e.g.
    /// `{severity="page"}`. Default: all.
    #[serde(rename = "match")]
    pub match_: Option<String>,
    /// Alerts with equal values of these labels are sent together. Default
    /// `["alertname"]`.
    pub group_by: Option<Vec<String>>,
    /// How long a new group waits for more alerts before its first notification.
    /// Default 0s.
    pub group_wait: Option<HumanDuration>,
    /// How long a group waits after a notification before sending its changes.
    /// Default 30s.
    pub group_interval: Option<HumanDuration>,
    /// A group still firing is notified again after this long. Default 4h.
    pub repeat_interval: Option<HumanDuration>,
    /// Send one notification per incident (correlated alerts and anomaly events)
    /// instead of per alert group. Default false.
    #[serde(default)]
    pub per_incident: bool,
    /// Timeout of one delivery attempt. Default 10s.
    pub timeout: Option<HumanDuration>,
    /// A notification not delivered after this long is dropped (and counted).
    /// Default 24h.
    pub max_age: Option<HumanDuration>,
}

/// `[alerting.correlation]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CorrelationConfigFile {
    /// Signals join an incident that saw a related signal within this window.
    /// Default 10m.
    pub window: Option<HumanDuration>,
    /// Labels naming a signal's service, first present wins. Default
    /// `["service", "app", "job"]`.
    pub service_labels: Option<Vec<String>>,
    /// Fields of sample lines (JSON or logfmt) that carry trace or request ids.
    /// Default `["trace_id", "traceId", "request_id", "requestId"]`.
    pub trace_fields: Option<Vec<String>>,
    /// Service dependencies, `"api -> db"`: a signal of `db` and one of `api` belong
    /// to one incident, and `db` ranks as the likelier cause.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Per-incident receivers wait this long after an incident opens before paging,
    /// so that related signals (and the likelier cause) join first. Default 10s.
    pub settle: Option<HumanDuration>,
    /// An incident with every alert resolved and no anomaly event for this long is
    /// resolved. Default 5m.
    pub quiet: Option<HumanDuration>,
}

/// Email transport security.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpSecurity {
    None,
    StartTls,
    Tls,
}

/// One receiver, validated.
#[derive(Clone, Debug)]
pub struct Receiver {
    pub name: String,
    pub kind: ReceiverKind,
    pub url: String,
    pub secret: Option<String>,
    pub routing_key: Option<String>,
    pub smtp: Option<(String, u16)>,
    pub smtp_security: SmtpSecurity,
    pub smtp_credentials: Option<(String, String)>,
    pub from: String,
    pub to: Vec<String>,
    pub matchers: Vec<Matcher>,
    pub group_by: Vec<String>,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    pub per_incident: bool,
    pub timeout: Duration,
    pub max_age: Duration,
}

/// Correlation, validated.
#[derive(Clone, Debug)]
pub struct Correlation {
    pub window: Duration,
    pub service_labels: Vec<String>,
    pub trace_fields: Vec<String>,
    /// (from, to): `from` depends on `to`.
    pub dependencies: Vec<(String, String)>,
    pub settle: Duration,
    pub quiet: Duration,
}

/// `[alerting]`, validated.
#[derive(Clone, Debug)]
pub struct Alerting {
    pub rules: Vec<PathBuf>,
    pub evaluation_interval: Duration,
    pub query_timeout: Duration,
    pub external_url: String,
    pub resend_interval: Duration,
    pub max_alerts: usize,
    pub receivers: Vec<Receiver>,
    pub correlation: Correlation,
    /// The alert state database.
    pub db_path: PathBuf,
}

fn first_line(p: &mut ConfigProblems, key: &str, f: &Option<PathBuf>) -> Option<String> {
    let f = f.as_ref()?;
    match std::fs::read_to_string(f) {
        Ok(t) => {
            let s = t.lines().next().unwrap_or("").trim().to_owned();
            if s.is_empty() {
                p.push(key, format!("{}: the file is empty", f.display()));
            }
            Some(s)
        }
        Err(e) => {
            p.push(key, format!("{}: {e}", f.display()));
            None
        }
    }
}

fn url_ok(p: &mut ConfigProblems, key: &str, u: &str) {
    if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
        p.push(key, format!("`{u}` is not an http:// or https:// URL"));
    }
}

impl AlertingConfigFile {
    /// Validates, recording every problem in `p`.
    pub fn validate(
        self,
        p: &mut ConfigProblems,
        state_dir: &std::path::Path,
        api_listen: std::net::SocketAddr,
    ) -> Alerting {
        let d = |v: &Option<HumanDuration>, default: u64| {
            v.map_or(Duration::from_secs(default), |d| d.0)
        };
        let evaluation_interval = d(&self.evaluation_interval, 10);
        if evaluation_interval < Duration::from_millis(100) {
            p.push("alerting.evaluation_interval", "must be at least 100ms");
        }
        let query_timeout = d(&self.query_timeout, 10);
        if query_timeout < Duration::from_millis(100) || query_timeout > Duration::from_secs(120) {
            p.push("alerting.query_timeout", "must be between 100ms and 2m");
        }
        let resend_interval = d(&self.resend_interval, 60);
        if resend_interval < Duration::from_secs(1) {
            p.push("alerting.resend_interval", "must be at least 1s");
        }
        let external_url = self
            .external_url
            .clone()
            .unwrap_or_else(|| format!("http://{api_listen}"));
        url_ok(p, "alerting.external_url", &external_url);
        let max_alerts = self.max_alerts.unwrap_or(100_000) as usize;
        if max_alerts == 0 {
            p.push("alerting.max_alerts", "must be at least 1");
        }
        let mut receivers = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.receivers.into_iter().enumerate() {
            let key = |k: &str| format!("alerting.receivers[{i}].{k}");
            if r.name.trim().is_empty() {
                p.push(key("name"), "must not be empty");
            } else if !names.insert(r.name.clone()) {
                p.push(
                    key("name"),
                    format!("receiver {:?} is defined twice", r.name),
                );
            }
            let url = match (r.kind, &r.url) {
                (ReceiverKind::Pagerduty, None) => {
                    "https://events.pagerduty.com/v2/enqueue".to_owned()
                }
                (ReceiverKind::Email, None) => String::new(),
                (ReceiverKind::Email, Some(_)) => {
                    p.push(key("url"), "an email receiver takes `smtp`, not `url`");
                    String::new()
                }
                (_, Some(u)) => {
                    url_ok(p, &key("url"), u);
                    u.trim_end_matches('/').to_owned()
                }
                (k, None) => {
                    p.push(key("url"), format!("a {} receiver needs a url", k.as_str()));
                    String::new()
                }
            };
            let secret = first_line(p, &key("secret_file"), &r.secret_file);
            if r.kind == ReceiverKind::Webhook && r.secret_file.is_none() {
                p.push(
                    key("secret_file"),
                    "a webhook receiver signs its requests: give a file holding the shared secret",
                );
            }
            let routing_key = first_line(p, &key("routing_key_file"), &r.routing_key_file);
            if r.kind == ReceiverKind::Pagerduty && r.routing_key_file.is_none() {
                p.push(
                    key("routing_key_file"),
                    "a pagerduty receiver needs the integration key",
                );
            }
            let mut smtp = None;
            let mut smtp_security = SmtpSecurity::StartTls;
            let mut smtp_credentials = None;
            let mut from = String::new();
            if r.kind == ReceiverKind::Email {
                match r.smtp.as_deref().and_then(|s| s.rsplit_once(':')) {
                    Some((h, port)) if !h.is_empty() => match port.parse::<u16>() {
                        Ok(port) => smtp = Some((h.to_owned(), port)),
                        Err(_) => p.push(
                            key("smtp"),
                            format!("bad port in `{}`", r.smtp.clone().unwrap_or_default()),
                        ),
                    },
                    _ => p.push(
                        key("smtp"),
                        "an email receiver needs `smtp = \"host:port\"`",
                    ),
                }
                smtp_security = match r.smtp_security.as_deref() {
                    None | Some("starttls") => SmtpSecurity::StartTls,
                    Some("tls") => SmtpSecurity::Tls,
                    Some("none") => SmtpSecurity::None,
                    Some(o) => {
                        p.push(
                            key("smtp_security"),
                            format!("`{o}`: one of none, starttls, tls"),
                        );
                        SmtpSecurity::StartTls
                    }
                };
                if let Some(u) = &r.smtp_username {
                    if let Some(pw) =
                        first_line(p, &key("smtp_password_file"), &r.smtp_password_file)
                    {
                        smtp_credentials = Some((u.clone(), pw));
                    } else if r.smtp_password_file.is_none() {
                        p.push(key("smtp_password_file"), "is needed with smtp_username");
                    }
                }
                match &r.from {
                    Some(f) if f.parse::<lettre::message::Mailbox>().is_ok() => from = f.clone(),
                    Some(f) => p.push(key("from"), format!("`{f}` is not an email address")),
                    None => p.push(key("from"), "an email receiver needs a sender address"),
                }
                if r.to.is_empty() {
                    p.push(key("to"), "an email receiver needs at least one recipient");
                }
                for t in &r.to {
                    if t.parse::<lettre::message::Mailbox>().is_err() {
                        p.push(key("to"), format!("`{t}` is not an email address"));
                    }
                }
            }
            let matchers = match &r.match_ {
                None => Vec::new(),
                Some(m) => match parse::parse_log(m) {
                    Ok(q) if q.stages.is_empty() => q.matchers,
                    Ok(_) => {
                        p.push(
                            key("match"),
                            "only label matchers, like {severity=\"page\"}",
                        );
                        Vec::new()
                    }
                    Err(e) => {
                        p.push(key("match"), e.to_string());
                        Vec::new()
                    }
                },
            };
            let group_by = r
                .group_by
                .clone()
                .unwrap_or_else(|| vec!["alertname".into()]);
            for g in &group_by {
                if g != "..." && !parse::valid_label(g) {
                    p.push(key("group_by"), format!("{g:?} is not a label name"));
                }
            }
            let timeout = d(&r.timeout, 10);
            if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(300) {
                p.push(key("timeout"), "must be between 100ms and 5m");
            }
            let group_interval = d(&r.group_interval, 30);
            if group_interval < Duration::from_millis(100) {
                p.push(key("group_interval"), "must be at least 100ms");
            }
            let repeat_interval = d(&r.repeat_interval, 4 * 3600);
            if repeat_interval < group_interval {
                p.push(
                    key("repeat_interval"),
                    "must not be shorter than group_interval",
                );
            }
            receivers.push(Receiver {
                name: r.name,
                kind: r.kind,
                url,
                secret,
                routing_key,
                smtp,
                smtp_security,
                smtp_credentials,
                from,
                to: r.to,
                matchers,
                group_by,
                group_wait: d(&r.group_wait, 0),
                group_interval,
                repeat_interval,
                per_incident: r.per_incident,
                timeout,
                max_age: d(&r.max_age, 86_400),
            });
        }
        let c = self.correlation;
        let mut dependencies = Vec::new();
        for (i, dep) in c.dependencies.iter().enumerate() {
            match dep.split_once("->") {
                Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() => {
                    dependencies.push((a.trim().to_owned(), b.trim().to_owned()));
                }
                _ => p.push(
                    format!("alerting.correlation.dependencies[{i}]"),
                    format!("`{dep}` is not like \"api -> db\""),
                ),
            }
        }
        let correlation = Correlation {
            window: d(&c.window, 600),
            service_labels: c
                .service_labels
                .unwrap_or_else(|| vec!["service".into(), "app".into(), "job".into()]),
            trace_fields: c.trace_fields.unwrap_or_else(|| {
                ["trace_id", "traceId", "request_id", "requestId"]
                    .map(String::from)
                    .to_vec()
            }),
            dependencies,
            settle: d(&c.settle, 10),
            quiet: d(&c.quiet, 300),
        };
        if correlation.window < Duration::from_secs(1) {
            p.push("alerting.correlation.window", "must be at least 1s");
        }
        Alerting {
            rules: self.rules,
            evaluation_interval,
            query_timeout,
            external_url: external_url.trim_end_matches('/').to_owned(),
            resend_interval,
            max_alerts,
            receivers,
            correlation,
            db_path: state_dir.join("alerts.db"),
        }
    }
}
