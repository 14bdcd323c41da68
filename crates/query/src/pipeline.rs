//! Runs a log query's pipeline over one line: line filters, `json`/`logfmt`
//! extraction, label filters, `drop`/`keep` and `line_format`.
//!
//! A line's labels start as its stream's labels, its structured metadata (a name that
//! is also a stream label gets the suffix `_extracted`), and the record level as
//! `detected_level` (Loki's name) and `level` (unless the stream has a `level` label
//! of its own). Extracted labels that collide with stream labels get the suffix
//! `_extracted`, as in Loki; they replace the record-level labels. Parse failures do
//! not drop the line: they set `__error__` (`JSONParserErr`, `LogfmtParserErr`,
//! `LabelFilterErr`) and `__error_details__`, which `drop __error__` or
//! `__error__=""` remove.

use heimdall_common::record::{Labels, Level};
use heimdall_logql::{
    FormatPart, LabelFilter, LabelName, LogQuery, NumKind, PathPart, Stage, UnwrapConv,
};
use serde_json::Value;
use std::borrow::Cow;

/// The label set by a parse or conversion failure.
pub const ERROR_LABEL: &str = "__error__";
/// Its details.
pub const ERROR_DETAILS_LABEL: &str = "__error_details__";

/// A compiled pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    stages: Vec<Stage>,
    /// Only line filters: labels never change, so callers may key results by stream.
    pub line_only: bool,
}

/// A line that passed the pipeline.
#[derive(Debug)]
pub struct Output<'a> {
    /// `None` when the labels are the line's base labels (see [`base_labels`]).
    pub labels: Option<Labels>,
    pub line: Cow<'a, [u8]>,
    /// What `| unwrap` took (`None` without one, or when the label did not convert:
    /// then `__error__` is `SampleExtractionErr`).
    pub value: Option<f64>,
}

/// The labels a line starts with: its stream's labels, its level, and its flags when
/// set (`truncated`, `invalid_utf8`, `no_newline`, all `"true"`), so that
/// `| truncated="true"` finds the lines cut at the line limit.
pub fn base_labels(stream: &Labels, metadata: &Labels, level: Level, flags: u8) -> Labels {
    let mut l = stream.clone();
    for (k, v) in metadata.iter() {
        put(stream, &mut l, k, v.to_owned());
    }
    l.insert("detected_level", level.as_str());
    if stream.get("level").is_none() {
        l.insert("level", level.as_str());
    }
    for (bit, name) in FLAG_LABELS {
        if flags & bit != 0 {
            l.insert(name, "true");
        }
    }
    l
}

/// The labels a record's flags set.
pub const FLAG_LABELS: [(u8, &str); 3] = [
    (heimdall_common::record::flags::TRUNCATED, "truncated"),
    (heimdall_common::record::flags::INVALID_UTF8, "invalid_utf8"),
    (heimdall_common::record::flags::NO_NEWLINE, "no_newline"),
];

impl Pipeline {
    /// Compiles the stages of a log query.
    pub fn new(q: &LogQuery) -> Pipeline {
        Pipeline {
            line_only: q.only_line_filters(),
            stages: q.stages.clone(),
        }
    }

    /// Runs the stages over `line`; `None` when a stage filtered it out. A line with
    /// structured metadata always gets its labels (`Some`): callers may key lines
    /// without it by stream.
    pub fn process<'a>(
        &self,
        stream: &Labels,
        metadata: &Labels,
        level: Level,
        flags: u8,
        line: &'a [u8],
    ) -> Option<Output<'a>> {
        let mut line: Cow<'a, [u8]> = Cow::Borrowed(line);
        let mut labels: Option<Labels> =
            (!metadata.is_empty()).then(|| base_labels(stream, metadata, level, flags));
        let mut value = None;
        for s in &self.stages {
            match s {
                Stage::Line(f) => {
                    if !f.matches(&line) {
                        return None;
                    }
                }
                Stage::Json(params) => {
                    let l =
                        labels.get_or_insert_with(|| base_labels(stream, metadata, level, flags));
                    json(stream, l, &line, params);
                }
                Stage::Logfmt => {
                    let l =
                        labels.get_or_insert_with(|| base_labels(stream, metadata, level, flags));
                    logfmt(stream, l, &line);
                }
                Stage::Label(f) => {
                    let l =
                        labels.get_or_insert_with(|| base_labels(stream, metadata, level, flags));
                    if !label_filter(f, l) {
                        return None;
                    }
                }
                Stage::Drop(names) => {
                    let l =
                        labels.get_or_insert_with(|| base_labels(stream, metadata, level, flags));
                    l.retain(|k, v| !names.iter().any(|n| named(n, k, v)));
                }
                Stage::Keep(names) => {
                    let l =
                        labels.get_or_insert_with(|| base_labels(stream, metadata, level, flags));
                    l.retain(|k, v| names.iter().any(|n| named(n, k, v)));
                }
                Stage::LineFormat(parts) => {
                    let l =
                        labels.get_or_insert_with(|| base_labels(stream, metadata, level, flags));
                    let mut out = Vec::with_capacity(line.len());
                    for p in parts {
                        match p {
                            FormatPart::Text(t) => out.extend_from_slice(t.as_bytes()),
                            FormatPart::Label(n) => {
                                out.extend_from_slice(l.get(n).unwrap_or("").as_bytes())
                            }
                        }
                    }
                    line = Cow::Owned(out);
                }
                Stage::Unwrap(u) => {
                    let l =
                        labels.get_or_insert_with(|| base_labels(stream, metadata, level, flags));
                    // The unwrapped label leaves the series' labels, as in Loki.
                    let raw = l.remove(&u.label);
                    let v = raw.as_deref().and_then(|s| {
                        let s = s.trim();
                        match u.conv {
                            UnwrapConv::Number => s.parse::<f64>().ok(),
                            UnwrapConv::Duration => crate::values::duration_secs(s),
                            UnwrapConv::Bytes => crate::values::bytes(s),
                        }
                    });
                    if v.is_none() {
                        set_error(
                            l,
                            "SampleExtractionErr",
                            match raw {
                                Some(r) => format!("cannot unwrap `{r}` of label {}", u.label),
                                None => format!("no label {} to unwrap", u.label),
                            },
                        );
                    }
                    value = v;
                }
            }
        }
        Some(Output {
            labels,
            line,
            value,
        })
    }
}

fn named(n: &LabelName, k: &str, v: &str) -> bool {
    n.name == k && n.only.as_ref().is_none_or(|m| m.matches(Some(v)))
}

/// Most labels one parser stage adds to a line; beyond, the rest are ignored.
const MAX_EXTRACTED: usize = 256;

/// A name made a label name, as Loki and Prometheus normalise keys and attribute
/// names: every byte that may not be in one becomes `_`, and a name that is empty or
/// starts with a digit gets a `_` before it (`http.method` → `http_method`).
pub fn sanitize(key: &str) -> String {
    let mut s: String = key
        .chars()
        .map(|c| {
            if c == '_' || c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.as_bytes()[0].is_ascii_digit() {
        s.insert(0, '_');
    }
    s
}

fn put(stream: &Labels, labels: &mut Labels, name: &str, value: String) {
    if stream.get(name).is_some() {
        labels.insert(format!("{name}_extracted"), value);
    } else {
        labels.insert(name, value);
    }
}

fn set_error(labels: &mut Labels, kind: &str, details: String) {
    if labels.get(ERROR_LABEL).is_none() {
        labels.insert(ERROR_LABEL, kind);
        labels.insert(ERROR_DETAILS_LABEL, details);
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        // Arrays and objects as parameters keep their JSON text, as in Loki.
        other => Some(other.to_string()),
    }
}

fn json(stream: &Labels, labels: &mut Labels, line: &[u8], params: &[(String, Vec<PathPart>)]) {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            set_error(
                labels,
                "JSONParserErr",
                "the line is not a JSON object".into(),
            );
            return;
        }
        Err(e) => {
            set_error(labels, "JSONParserErr", e.to_string());
            return;
        }
    };
    if !params.is_empty() {
        for (name, path) in params {
            let mut cur = Some(&v);
            for p in path {
                cur = match (cur, p) {
                    (Some(Value::Object(m)), PathPart::Key(k)) => m.get(k),
                    (Some(Value::Array(a)), PathPart::Index(i)) => a.get(*i),
                    _ => None,
                };
            }
            put(
                stream,
                labels,
                name,
                cur.and_then(scalar).unwrap_or_default(),
            );
        }
        return;
    }
    let mut n = 0;
    flatten(stream, labels, &v, String::new(), &mut n);
}

fn flatten(stream: &Labels, labels: &mut Labels, v: &Value, prefix: String, n: &mut usize) {
    let Value::Object(m) = v else { return };
    for (k, v) in m {
        if *n >= MAX_EXTRACTED {
            return;
        }
        let key = if prefix.is_empty() {
            sanitize(k)
        } else {
            format!("{prefix}_{}", sanitize(k))
        };
        match v {
            Value::Object(_) => flatten(stream, labels, v, key, n),
            // Loki skips arrays when extracting every field.
            Value::Array(_) => {}
            other => {
                *n += 1;
                put(stream, labels, &key, scalar(other).unwrap_or_default());
            }
        }
    }
}

fn logfmt(stream: &Labels, labels: &mut Labels, line: &[u8]) {
    let s = String::from_utf8_lossy(line);
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() && n < MAX_EXTRACTED {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() && b[i] != b'"' {
            i += 1;
        }
        let key = &s[ks..i];
        if i < b.len() && b[i] == b'"' {
            set_error(
                labels,
                "LogfmtParserErr",
                format!("unexpected `\"` at byte {i}"),
            );
            return;
        }
        let value = if i < b.len() && b[i] == b'=' {
            i += 1;
            if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                let mut closed = false;
                while i < b.len() {
                    match b[i] {
                        b'"' => {
                            i += 1;
                            closed = true;
                            break;
                        }
                        b'\\' if i + 1 < b.len() => {
                            match b[i + 1] {
                                b'n' => v.push('\n'),
                                b't' => v.push('\t'),
                                c @ (b'"' | b'\\') => v.push(c as char),
                                _ => {
                                    v.push('\\');
                                    i += 1;
                                    continue;
                                }
                            }
                            i += 2;
                        }
                        _ => {
                            let ch = s[i..].chars().next().unwrap_or('?');
                            v.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                if !closed {
                    set_error(
                        labels,
                        "LogfmtParserErr",
                        "unterminated quoted value".into(),
                    );
                    return;
                }
                v
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                s[vs..i].to_owned()
            }
        } else {
            String::new()
        };
        if key.is_empty() {
            if !value.is_empty() {
                set_error(labels, "LogfmtParserErr", "a value without a key".into());
                return;
            }
            continue;
        }
        n += 1;
        put(stream, labels, &sanitize(key), value);
    }
}

/// Reads a label value for a numeric comparison.
fn numeric(v: &str, kind: NumKind) -> Option<f64> {
    let v = v.trim();
    match kind {
        NumKind::Number => v.parse::<f64>().ok(),
        NumKind::Duration => v
            .parse::<f64>()
            .ok()
            .or_else(|| crate::values::duration_secs(v)),
        NumKind::Bytes => crate::values::bytes(v),
    }
}

fn label_filter(f: &LabelFilter, labels: &mut Labels) -> bool {
    match f {
        LabelFilter::Str(m) => m.matches(labels.get(&m.name)),
        LabelFilter::Num {
            name,
            op,
            value,
            kind,
        } => {
            let Some(v) = labels.get(name) else {
                return *op == heimdall_logql::CmpOp::Ne;
            };
            match numeric(v, *kind) {
                Some(x) => op.holds(x, *value),
                None => {
                    let details = format!("cannot read `{v}` of label {name} as a number");
                    set_error(labels, "LabelFilterErr", details);
                    true
                }
            }
        }
        LabelFilter::And(a, b) => label_filter(a, labels) && label_filter(b, labels),
        LabelFilter::Or(a, b) => label_filter(a, labels) || label_filter(b, labels),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heimdall_logql::parse_log;

    fn run(q: &str, line: &str) -> Option<(Labels, String)> {
        let p = Pipeline::new(&parse_log(q).unwrap());
        let stream = Labels::new([("app", "api"), ("host", "h1")]);
        p.process(&stream, &Labels::default(), Level::Info, 0, line.as_bytes())
            .map(|o| {
                (
                    o.labels.unwrap_or_else(|| {
                        base_labels(&stream, &Labels::default(), Level::Info, 0)
                    }),
                    String::from_utf8_lossy(&o.line).into_owned(),
                )
            })
    }

    #[test]
    fn json_extracts_flattened_fields() {
        let (l, _) = run(
            r#"{app="api"} | json"#,
            r#"{"status":503,"req":{"path":"/x","ms":12.5},"app":"inner","tags":[1],"ok":false}"#,
        )
        .unwrap();
        assert_eq!(l.get("status"), Some("503"));
        assert_eq!(l.get("req_path"), Some("/x"));
        assert_eq!(l.get("req_ms"), Some("12.5"));
        assert_eq!(l.get("app"), Some("api"));
        assert_eq!(l.get("app_extracted"), Some("inner"));
        assert_eq!(l.get("ok"), Some("false"));
        assert_eq!(l.get("tags"), None);
        assert_eq!(l.get("detected_level"), Some("info"));
    }

    #[test]
    fn json_parameters_and_errors() {
        let (l, _) = run(
            r#"{app="api"} | json code="resp.status", first="items[1]""#,
            r#"{"resp":{"status":"200"},"items":["a","b"]}"#,
        )
        .unwrap();
        assert_eq!(l.get("code"), Some("200"));
        assert_eq!(l.get("first"), Some("b"));
        let (l, _) = run(r#"{app="api"} | json"#, "not json").unwrap();
        assert_eq!(l.get(ERROR_LABEL), Some("JSONParserErr"));
        assert!(run(r#"{app="api"} | json | __error__="""#, "not json").is_none());
        let (l, _) = run(
            r#"{app="api"} | json | drop __error__, __error_details__"#,
            "x",
        )
        .unwrap();
        assert_eq!(l.get(ERROR_LABEL), None);
    }

    #[test]
    fn logfmt_and_label_filters() {
        let line =
            r#"level=error msg="upstream timed out" duration=1.5s size=20KB status=504 flag"#;
        let (l, _) = run(r#"{app="api"} | logfmt"#, line).unwrap();
        assert_eq!(l.get("msg"), Some("upstream timed out"));
        assert_eq!(
            l.get("level"),
            Some("error"),
            "an extracted level replaces the record level"
        );
        assert_eq!(l.get("flag"), Some(""));
        for (q, keep) in [
            (r#"| status >= 500"#, true),
            (r#"| status < 500"#, false),
            (r#"| duration > 1s and size > 10KB"#, true),
            (r#"| duration > 2s or msg=~".*timed.*""#, true),
            (r#"| duration > 2s, msg=~".*timed.*""#, false),
            (
                r#"| (status == 200 or status == 504) and level="error""#,
                true,
            ),
            (r#"| missing > 1"#, false),
            (r#"| missing != 1"#, true),
        ] {
            let got = run(&format!(r#"{{app="api"}} | logfmt {q}"#), line);
            assert_eq!(got.is_some(), keep, "{q}");
        }
        let (l, _) = run(r#"{app="api"} | logfmt | msg > 1"#, line).unwrap();
        assert_eq!(l.get(ERROR_LABEL), Some("LabelFilterErr"));
        let (l, _) = run(r#"{app="api"} | logfmt"#, r#"a="open"#).unwrap();
        assert_eq!(l.get(ERROR_LABEL), Some("LogfmtParserErr"));
    }

    #[test]
    fn drop_keep_and_line_format() {
        let line = r#"{"a":"1","b":"2"}"#;
        let (l, out) = run(
            r#"{app="api"} | json | keep app, a | line_format "a={{.a}} b={{.b}}""#,
            line,
        )
        .unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(out, "a=1 b=");
        let (l, _) = run(r#"{app="api"} | json | drop a="2", b="2""#, line).unwrap();
        assert_eq!(l.get("a"), Some("1"));
        assert_eq!(l.get("b"), None);
        assert!(run(r#"{app="api"} |= "x" | json"#, line).is_none());
    }
}
