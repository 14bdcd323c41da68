//! `heimdall-rules`: alert rule files. Depends only on the LogQL syntax, so the CLI
//! checks rule files without linking storage.
//!
//! Rule files: the Prometheus / Loki-ruler format (YAML `groups` with `interval` and
//! `rules` of `alert`, `expr`, `for`, `labels`, `annotations`) plus two kinds of rule
//! that Heimdall's agents make possible:
//!
//! ```yaml
//! groups:
//!   - name: api
//!     interval: 10s
//!     rules:
//!       - alert: ApiErrors
//!         expr: sum by (host) (count_over_time({app="api"} |= "error" [1m])) > 5
//!         for: 30s
//!         labels: { severity: page }
//!         annotations:
//!           summary: "{{ $labels.host }} logged {{ $value }} errors in a minute"
//!       - alert: ApiAnomaly             # an agent's anomaly event
//!         anomaly: { selector: '{app="api"}', kind: rate_spike, min_score: 3, hold: 5m }
//!       - alert: HostSilent             # a host whose agent stopped sending heartbeats
//!         absent: { hosts: "db.*", for: 1m }
//!       - alert: StreamSilent           # streams that stopped sending lines
//!         absent: { selector: '{app="db"}', for: 2m }
//! ```
//!
//! Owns parsing and validation (every problem with its file, line and column, or the
//! path of the rule when the YAML gives no position) and annotation templates. Does not
//! evaluate (see `alert::eval`).

use heimdall_common::config::HumanDuration;
use heimdall_common::record::AnomalyKind;
use heimdall_logql::{self as parse, Expr, Matcher, Query};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A rule file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRaw {
    groups: Vec<GroupRaw>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupRaw {
    name: String,
    interval: Option<String>,
    #[serde(default)]
    rules: Vec<RuleRaw>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleRaw {
    alert: Option<String>,
    /// Recording rules are not supported; named so the error says so.
    record: Option<String>,
    expr: Option<String>,
    anomaly: Option<AnomalyRaw>,
    absent: Option<AbsentRaw>,
    #[serde(rename = "for")]
    for_: Option<String>,
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnomalyRaw {
    selector: Option<String>,
    kind: Option<String>,
    min_score: Option<f64>,
    hold: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbsentRaw {
    hosts: Option<String>,
    selector: Option<String>,
    #[serde(rename = "for")]
    for_: Option<String>,
}

/// What a rule watches.
#[derive(Clone, Debug)]
pub enum RuleKind {
    /// A LogQL metric query; each output series is an alert instance while its value
    /// is non-empty (after the comparison that usually ends the expression).
    Expr { src: String, expr: Expr },
    /// Anomaly events of agents on the selected streams, of one kind or any, with at
    /// least `min_score`; each event keeps its instance firing for `hold`.
    Anomaly {
        selector: Vec<Matcher>,
        kind: Option<AnomalyKind>,
        min_score: f64,
        hold: Duration,
    },
    /// Hosts (matched by a regex on the host name their agents report) whose agents
    /// sent no heartbeat for `for`.
    AbsentHosts { hosts: regex::Regex, for_: Duration },
    /// Streams matching the selector that stored no line for `for` (streams that
    /// logged in the last day).
    AbsentStreams {
        selector: Vec<Matcher>,
        for_: Duration,
    },
}

/// One alerting rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `alertname`.
    pub name: String,
    pub group: String,
    pub kind: RuleKind,
    /// How long an instance must hold before it fires.
    pub for_: Duration,
    /// How long a firing instance keeps firing after its condition cleared.
    pub keep_firing_for: Duration,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, Template>,
    /// Where it was written (for messages).
    pub origin: String,
}

/// A group of rules evaluated together.
#[derive(Clone, Debug)]
pub struct Group {
    pub name: String,
    pub file: PathBuf,
    pub interval: Duration,
    pub rules: Vec<Rule>,
}

/// One problem in a rule file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub line: Option<(usize, usize)>,
    /// Path of the rule or field, e.g. `groups[0].rules[2].expr`.
    pub at: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some((l, c)) => write!(f, "{}:{l}:{c}: ", self.file.display())?,
            None => write!(f, "{}: ", self.file.display())?,
        }
        if self.at.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.at, self.message)
        }
    }
}

/// Every problem found in one or more rule files.
#[derive(Debug, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The 1-based line and column of byte `off` in `text`.
fn line_col(text: &str, off: usize) -> (usize, usize) {
    let off = off.min(text.len());
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(off, |n| off - n - 1) + 1;
    (line, col)
}

/// Where a string value appears in the file, searched from `from` (YAML gives no
/// positions for values; exact single-line values are found, others are not).
fn find_value(text: &str, value: &str, from: usize) -> Option<usize> {
    if value.is_empty() || value.contains('\n') {
        return None;
    }
    text.get(from..)?.find(value).map(|i| from + i)
}

fn duration(
    v: &Option<String>,
    default: Duration,
    at: &str,
    out: &mut Vec<(String, String)>,
) -> Duration {
    match v {
        None => default,
        Some(s) => match HumanDuration::parse(s) {
            Ok(d) => d.0,
            Err(e) => {
                out.push((at.to_owned(), e.to_string()));
                default
            }
        },
    }
}

/// Parses one rule file's text; `default_interval` applies to groups without one.
///
/// # Errors
/// [`Problems`] listing every problem of the file.
pub fn parse_file(
    file: &Path,
    text: &str,
    default_interval: Duration,
) -> Result<Vec<Group>, Problems> {
    let raw: FileRaw = match serde_yaml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let line = e.location().map(|l| (l.line(), l.column()));
            let msg = e.to_string();
            // serde_yaml appends " at line L column C"; the position is printed first.
            let msg = msg
                .rsplit_once(" at line ")
                .map_or(msg.as_str(), |(m, _)| m)
                .to_owned();
            return Err(Problems(vec![Problem {
                file: file.to_owned(),
                line,
                at: String::new(),
                message: msg,
            }]));
        }
    };
    let mut problems = Vec::new();
    let mut groups = Vec::new();
    let mut seen_groups = std::collections::HashSet::new();
    let mut cursor = 0usize;
    for (gi, g) in raw.groups.into_iter().enumerate() {
        let gat = format!("groups[{gi}]");
        let mut issues: Vec<(String, String)> = Vec::new();
        if let Some(o) = find_value(text, &g.name, cursor) {
            cursor = o;
        }
        if g.name.trim().is_empty() {
            issues.push((format!("{gat}.name"), "must not be empty".into()));
        } else if !seen_groups.insert(g.name.clone()) {
            issues.push((
                format!("{gat}.name"),
                format!("group {:?} is defined twice in this file", g.name),
            ));
        }
        let interval = duration(
            &g.interval,
            default_interval,
            &format!("{gat}.interval"),
            &mut issues,
        );
        if interval < Duration::from_millis(100) || interval > Duration::from_secs(86_400) {
            issues.push((
                format!("{gat}.interval"),
                "must be between 100ms and 24h".into(),
            ));
        }
        let mut rules = Vec::new();
        for (ri, r) in g.rules.into_iter().enumerate() {
            let at = format!("{gat}.rules[{ri}]");
            let rule_start = r
                .alert
                .as_deref()
                .and_then(|a| find_value(text, a, cursor))
                .unwrap_or(cursor);
            cursor = rule_start;
            match rule(&g.name, r, &at, text, rule_start, file) {
                Ok(rule) => rules.push(rule),
                Err(mut ps) => problems.append(&mut ps),
            }
        }
        for (at, message) in issues {
            problems.push(Problem {
                file: file.to_owned(),
                line: None,
                at,
                message,
            });
        }
        groups.push(Group {
            name: g.name,
            file: file.to_owned(),
            interval,
            rules,
        });
    }
    if problems.is_empty() {
        Ok(groups)
    } else {
        Err(Problems(problems))
    }
}

fn selector(src: &str) -> Result<Vec<Matcher>, parse::ParseError> {
    let q = parse::parse_log(src)?;
    if !q.stages.is_empty() {
        return Err(parse::ParseError {
            pos: src.find('|').unwrap_or(0),
            message: "only a stream selector is allowed here".into(),
        });
    }
    Ok(q.matchers)
}

fn rule(
    group: &str,
    r: RuleRaw,
    at: &str,
    text: &str,
    start: usize,
    file: &Path,
) -> Result<Rule, Vec<Problem>> {
    let mut out: Vec<Problem> = Vec::new();
    let problem = |out: &mut Vec<Problem>, field: &str, line: Option<(usize, usize)>, m: String| {
        out.push(Problem {
            file: file.to_owned(),
            line,
            at: if field.is_empty() {
                at.to_owned()
            } else {
                format!("{at}.{field}")
            },
            message: m,
        });
    };
    // A query's parse error is placed in the file when the query is found there.
    let query_error = |out: &mut Vec<Problem>, field: &str, src: &str, e: parse::ParseError| {
        let line = find_value(text, src, start).map(|o| line_col(text, o + e.pos));
        out.push(Problem {
            file: file.to_owned(),
            line,
            at: format!("{at}.{field}"),
            message: format!("{} (at position {} of the query)", e.message, e.pos),
        });
    };
    if r.record.is_some() {
        problem(
            &mut out,
            "record",
            None,
            "recording rules are not supported; write an `alert` rule".into(),
        );
    }
    let name = r.alert.clone().unwrap_or_default();
    if r.alert.is_none() {
        problem(
            &mut out,
            "alert",
            None,
            "every rule needs an `alert` name".into(),
        );
    } else if !parse::valid_label(&name) {
        problem(
            &mut out,
            "alert",
            None,
            format!("{name:?} is not a valid alert name (letters, digits and _)"),
        );
    }
    let mut issues = Vec::new();
    let for_ = duration(&r.for_, Duration::ZERO, &format!("{at}.for"), &mut issues);
    let keep_firing_for = duration(
        &r.keep_firing_for,
        Duration::ZERO,
        &format!("{at}.keep_firing_for"),
        &mut issues,
    );
    let kinds = [r.expr.is_some(), r.anomaly.is_some(), r.absent.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    let mut kind = None;
    if kinds != 1 {
        problem(
            &mut out,
            "",
            None,
            "a rule needs exactly one of `expr`, `anomaly` or `absent`".into(),
        );
    } else if let Some(src) = &r.expr {
        match parse::parse(src) {
            Ok(Query::Metric(expr)) => {
                kind = Some(RuleKind::Expr {
                    src: src.clone(),
                    expr,
                });
            }
            Ok(Query::Log(_)) => problem(
                &mut out,
                "expr",
                None,
                "a log query has no value to alert on; wrap it in a metric query such as `count_over_time(… [5m]) > 0`".into(),
            ),
            Err(e) => query_error(&mut out, "expr", src, e),
        }
    } else if let Some(a) = &r.anomaly {
        let sel = match &a.selector {
            None => Some(Vec::new()),
            Some(s) => match selector(s) {
                Ok(m) => Some(m),
                Err(e) => {
                    query_error(&mut out, "anomaly.selector", s, e);
                    None
                }
            },
        };
        let kind_v = match &a.kind {
            None => Some(None),
            Some(k) => match AnomalyKind::parse(k) {
                Some(k) => Some(Some(k)),
                None => {
                    problem(
                        &mut out,
                        "anomaly.kind",
                        None,
                        format!(
                            "unknown kind {k:?}; one of {}",
                            AnomalyKind::ALL.map(AnomalyKind::as_str).join(", ")
                        ),
                    );
                    None
                }
            },
        };
        let min_score = a.min_score.unwrap_or(0.0);
        if !min_score.is_finite() || min_score < 0.0 {
            problem(
                &mut out,
                "anomaly.min_score",
                None,
                "must be a number >= 0".into(),
            );
        }
        let hold = duration(
            &a.hold,
            Duration::from_secs(300),
            &format!("{at}.anomaly.hold"),
            &mut issues,
        );
        if let (Some(selector), Some(kind_v)) = (sel, kind_v) {
            kind = Some(RuleKind::Anomaly {
                selector,
                kind: kind_v,
                min_score,
                hold,
            });
        }
    } else if let Some(a) = &r.absent {
        let for_a = duration(
            &a.for_,
            Duration::from_secs(60),
            &format!("{at}.absent.for"),
            &mut issues,
        );
        match (&a.hosts, &a.selector) {
            (Some(h), None) => match regex::Regex::new(&format!("^(?:{h})$")) {
                Ok(re) => {
                    kind = Some(RuleKind::AbsentHosts {
                        hosts: re,
                        for_: for_a,
                    });
                }
                Err(e) => problem(&mut out, "absent.hosts", None, format!("bad regex: {e}")),
            },
            (None, Some(s)) => match selector(s) {
                Ok(m) => {
                    kind = Some(RuleKind::AbsentStreams {
                        selector: m,
                        for_: for_a,
                    });
                }
                Err(e) => query_error(&mut out, "absent.selector", s, e),
            },
            _ => problem(
                &mut out,
                "absent",
                None,
                "needs exactly one of `hosts` (a regex over host names) or `selector`".into(),
            ),
        }
    }
    for k in r.labels.keys() {
        if !parse::valid_label(k) {
            problem(
                &mut out,
                "labels",
                None,
                format!("{k:?} is not a valid label name"),
            );
        }
        if k == "alertname" {
            problem(
                &mut out,
                "labels",
                None,
                "`alertname` is set from `alert`".into(),
            );
        }
    }
    let mut annotations = BTreeMap::new();
    for (k, v) in &r.annotations {
        match Template::parse(v) {
            Ok(t) => {
                annotations.insert(k.clone(), t);
            }
            Err(e) => {
                let line = find_value(text, v, start).map(|o| line_col(text, o + e.0));
                problem(&mut out, &format!("annotations.{k}"), line, e.1);
            }
        }
    }
    for (field, message) in issues {
        out.push(Problem {
            file: file.to_owned(),
            line: None,
            at: field,
            message,
        });
    }
    match kind {
        Some(kind) if out.is_empty() => Ok(Rule {
            name,
            group: group.to_owned(),
            kind,
            for_,
            keep_firing_for,
            labels: r.labels,
            annotations,
            origin: format!("{} ({at})", file.display()),
        }),
        _ => Err(out),
    }
}

/// Reads every rule file matched by `patterns` (paths, or globs with `*` in the file
/// name). Group names must be unique across files.
///
/// # Errors
/// [`Problems`] from every file.
pub fn load(patterns: &[PathBuf], default_interval: Duration) -> Result<Vec<Group>, Problems> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for p in patterns {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.contains('*') {
            let dir = p.parent().unwrap_or(Path::new("."));
            let re = regex::Regex::new(&format!("^{}$", regex::escape(name).replace("\\*", ".*")))
                .expect("escaped glob is a valid regex");
            let mut found: Vec<PathBuf> = match std::fs::read_dir(dir) {
                Ok(rd) => rd
                    .flatten()
                    .map(|e| e.path())
                    .filter(|f| {
                        f.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| re.is_match(n))
                    })
                    .collect(),
                Err(e) => {
                    problems.push(Problem {
                        file: p.clone(),
                        line: None,
                        at: String::new(),
                        message: format!("cannot read directory {}: {e}", dir.display()),
                    });
                    Vec::new()
                }
            };
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    let mut groups: Vec<Group> = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => match parse_file(&f, &text, default_interval) {
                Ok(mut gs) => groups.append(&mut gs),
                Err(mut ps) => problems.append(&mut ps.0),
            },
            Err(e) => problems.push(Problem {
                file: f.clone(),
                line: None,
                at: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let mut names = std::collections::HashMap::new();
    for g in &groups {
        if let Some(other) = names.insert(g.name.clone(), g.file.clone()) {
            if other != g.file {
                problems.push(Problem {
                    file: g.file.clone(),
                    line: None,
                    at: String::new(),
                    message: format!("group {:?} is also defined in {}", g.name, other.display()),
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(groups)
    } else {
        Err(Problems(problems))
    }
}

/// An annotation template: text with `{{ $labels.name }}`, `{{ .Labels.name }}`,
/// `{{ $value }}` / `{{ .Value }}` and `{{ humanize $value }}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Template(Vec<Piece>);

#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Label(String),
    Value { humanize: bool },
}

impl Template {
    /// Parses a template.
    ///
    /// # Errors
    /// (byte position, message) of the first bad action.
    pub fn parse(src: &str) -> Result<Template, (usize, String)> {
        let mut pieces = Vec::new();
        let mut rest = src;
        let mut off = 0;
        while let Some(i) = rest.find("{{") {
            if i > 0 {
                pieces.push(Piece::Text(rest[..i].to_owned()));
            }
            let Some(j) = rest[i..].find("}}") else {
                return Err((off + i, "`{{` without `}}`".into()));
            };
            let action = rest[i + 2..i + j].trim().trim_matches('-').trim();
            let words: Vec<&str> = action.split_whitespace().collect();
            let value = |w: &str| w == "$value" || w == ".Value";
            let label = |w: &str| {
                w.strip_prefix("$labels.")
                    .or_else(|| w.strip_prefix(".Labels."))
                    .filter(|n| parse::valid_label(n))
                    .map(str::to_owned)
            };
            let piece = match words.as_slice() {
                [w] if value(w) => Piece::Value { humanize: false },
                ["humanize", w] if value(w) => Piece::Value { humanize: true },
                [w] => match label(w) {
                    Some(n) => Piece::Label(n),
                    None => {
                        return Err((
                            off + i,
                            format!("unknown template action {{{{ {action} }}}}; use $labels.<name>, $value or humanize $value"),
                        ))
                    }
                },
                _ => {
                    return Err((
                        off + i,
                        format!("unknown template action {{{{ {action} }}}}; use $labels.<name>, $value or humanize $value"),
                    ))
                }
            };
            pieces.push(piece);
            off += i + j + 2;
            rest = &rest[i + j + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template(pieces))
    }

    /// The text for one alert instance.
    pub fn render(&self, labels: &BTreeMap<String, String>, value: f64) -> String {
        let mut s = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => s.push_str(t),
                Piece::Label(n) => s.push_str(labels.get(n).map_or("", String::as_str)),
                Piece::Value { humanize: false } => s.push_str(&format_value(value)),
                Piece::Value { humanize: true } => s.push_str(&humanize(value)),
            }
        }
        s
    }
}

/// A value as Prometheus prints it (integers without a fraction).
pub fn format_value(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// `humanize`: 1234567 → `1.235M`.
fn humanize(v: f64) -> String {
    let a = v.abs();
    let (d, suffix) = if a >= 1e12 {
        (1e12, "T")
    } else if a >= 1e9 {
        (1e9, "G")
    } else if a >= 1e6 {
        (1e6, "M")
    } else if a >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let x = v / d;
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
groups:
  - name: api
    interval: 5s
    rules:
      - alert: ApiErrors
        expr: sum by (host) (count_over_time({app="api"} |= "error" [1m])) > 5
        for: 30s
        labels: { severity: page }
        annotations:
          summary: "{{ $labels.host }} logged {{ $value }} errors"
      - alert: ApiAnomaly
        anomaly: { selector: '{app="api"}', kind: rate_spike, min_score: 3 }
      - alert: HostSilent
        absent: { hosts: "db.*", for: 1m }
"#;

    #[test]
    fn a_good_file_parses() {
        let g = parse_file(Path::new("r.yml"), GOOD, Duration::from_secs(10)).expect("valid");
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].interval, Duration::from_secs(5));
        assert_eq!(g[0].rules.len(), 3);
        assert_eq!(g[0].rules[0].for_, Duration::from_secs(30));
        assert!(matches!(g[0].rules[1].kind, RuleKind::Anomaly { .. }));
        match &g[0].rules[2].kind {
            RuleKind::AbsentHosts { hosts, for_ } => {
                assert!(hosts.is_match("db1"));
                assert!(!hosts.is_match("xdb1"));
                assert_eq!(*for_, Duration::from_secs(60));
            }
            other => panic!("{other:?}"),
        }
        let labels = BTreeMap::from([("host".to_owned(), "web1".to_owned())]);
        assert_eq!(
            g[0].rules[0].annotations["summary"].render(&labels, 7.0),
            "web1 logged 7 errors"
        );
    }

    #[test]
    fn query_errors_point_into_the_file() {
        let text = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: sum(count_over_time({app=\"x\"} [1m]) > 1\n";
        let e = parse_file(Path::new("r.yml"), text, Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        let p = &e.0[0];
        assert_eq!(p.at, "groups[0].rules[0].expr");
        let (line, col) = p.line.expect("placed");
        assert_eq!(line, 5, "{e}");
        assert!(col > 14, "{e}");
    }

    #[test]
    fn yaml_errors_have_positions_and_unknown_keys_are_named() {
        let e = parse_file(
            Path::new("r.yml"),
            "groups:\n  - name: g\n    rulez: []\n",
            Duration::from_secs(10),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("rulez") && s.starts_with("r.yml:3:"), "{s}");
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
groups:
  - name: g
    interval: soon
    rules:
      - alert: A
        expr: '{app="x"}'
      - alert: B
        anomaly: { kind: nope }
      - alert: C
        absent: { for: 1m }
      - alert: D
        expr: vector(1)
        annotations: { x: "{{ .Bogus }}" }
      - record: r
        expr: vector(1)
"#;
        let e = parse_file(Path::new("r.yml"), text, Duration::from_secs(10)).unwrap_err();
        let s = e.to_string();
        for want in [
            "groups[0].interval",
            "rules[0].expr: a log query",
            "rules[1].anomaly.kind: unknown kind",
            "rules[2].absent: needs exactly one",
            "rules[3].annotations.x",
            "rules[4].record",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
    }

    #[test]
    fn humanize_and_values() {
        assert_eq!(humanize(1_234_567.0), "1.2346M");
        assert_eq!(humanize(12.0), "12");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.5), "0.5");
    }
}
