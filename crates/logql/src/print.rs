//! The printer: AST → LogQL text that parses back to the same AST.
//!
//! `Display` on [`Query`], [`LogQuery`], [`Expr`], [`Stage`], [`LabelFilter`] and
//! [`Matcher`] writes canonical LogQL: strings in double quotes with `\` `"` and
//! control characters escaped, every operand of a binary operator and every compound
//! part of a label filter in parentheses (parentheses leave no trace in the AST, so
//! precedence never has to be reasoned about), a range's stages before its `[range]`,
//! durations in their largest whole unit, numbers in Rust's shortest round-trip form.
//!
//! One input cannot be printed back to itself, because LogQL's grammar cannot say it:
//! a `drop` or `keep` whose last label has no value condition, followed directly by a
//! `!=` or `!~` line filter (`| drop a != "x"` reads as "drop `a` when it is not
//! `x`"). Such a query prints in that same ambiguous form; [`has_ambiguous_drop`]
//! tells it.

use super::*;
use std::fmt::{self, Display, Formatter, Write};

/// Writes `s` as a double-quoted LogQL string.
fn quoted(f: &mut Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

/// A number as the lexer reads it back exactly (no exponent, so no unit can follow
/// one by mistake; infinity as a literal too large for `f64`).
struct Num(f64);

impl Display for Num {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_infinite() {
            if v < 0.0 {
                f.write_char('-')?;
            }
            f.write_char('1')?;
            for _ in 0..400 {
                f.write_char('0')?;
            }
            Ok(())
        } else {
            write!(f, "{v}")
        }
    }
}

/// Nanoseconds in their largest whole unit (`5m`, `1500ms`).
struct Dur(i64);

impl Display for Dur {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, i64); 7] = [
            ("d", 86_400_000_000_000),
            ("h", 3_600_000_000_000),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
            ("ns", 1),
        ];
        let ns = self.0;
        let (unit, size) = UNITS
            .iter()
            .copied()
            .find(|(_, size)| ns % size == 0)
            .unwrap_or(("ns", 1));
        write!(f, "{}{unit}", ns / size)
    }
}

impl Display for MatchOp {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MatchOp::Eq => "=",
            MatchOp::Ne => "!=",
            MatchOp::Re => "=~",
            MatchOp::Nre => "!~",
        })
    }
}

impl Display for Matcher {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.name, self.op)?;
        quoted(f, &self.value)
    }
}

impl Display for LineFilter {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self.op {
            FilterOp::Contains => "|= ",
            FilterOp::NotContains => "!= ",
            FilterOp::Re => "|~ ",
            FilterOp::NotRe => "!~ ",
            FilterOp::Pattern => "|> ",
            FilterOp::NotPattern => "!> ",
        })?;
        quoted(f, &self.pattern)
    }
}

impl Display for CmpOp {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        })
    }
}

/// The whole nanoseconds `d` with `d / 1e9 == secs`, as the parser computes a
/// duration's seconds (found among the neighbours of `secs * 1e9`).
fn duration_ns(secs: f64) -> i64 {
    let guess = secs * 1e9;
    let bits = guess.to_bits();
    for k in 0..=16u64 {
        for b in [bits.wrapping_add(k), bits.wrapping_sub(k)] {
            let c = f64::from_bits(b);
            if c.is_finite() {
                let d = c as i64;
                if d as f64 / 1e9 == secs {
                    return d;
                }
            }
        }
    }
    guess.round() as i64
}

impl Display for LabelFilter {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        // Compound parts in parentheses: `(a and b) or c`.
        let part = |f: &mut Formatter<'_>, p: &LabelFilter| match p {
            LabelFilter::And(..) | LabelFilter::Or(..) => write!(f, "({p})"),
            _ => write!(f, "{p}"),
        };
        match self {
            LabelFilter::Str(m) => write!(f, "{m}"),
            LabelFilter::Num {
                name,
                op,
                value,
                kind,
            } => {
                write!(f, "{name} {op} ")?;
                let sign = if value.is_sign_negative() { "-" } else { "" };
                match kind {
                    NumKind::Number => write!(f, "{}", Num(*value)),
                    NumKind::Duration => {
                        write!(f, "{sign}{}ns", duration_ns(value.abs()))
                    }
                    NumKind::Bytes => write!(f, "{sign}{}B", Num(value.abs())),
                }
            }
            LabelFilter::And(a, b) => {
                part(f, a)?;
                f.write_str(" and ")?;
                part(f, b)
            }
            LabelFilter::Or(a, b) => {
                part(f, a)?;
                f.write_str(" or ")?;
                part(f, b)
            }
        }
    }
}

impl LabelFilter {
    /// The label the filter's text starts with.
    fn first_name(&self) -> &str {
        match self {
            LabelFilter::Str(m) => &m.name,
            LabelFilter::Num { name, .. } => name,
            LabelFilter::And(a, _) | LabelFilter::Or(a, _) => a.first_name(),
        }
    }
}

/// Words that start a stage other than a label filter.
const STAGE_WORDS: [&str; 11] = [
    "json",
    "logfmt",
    "drop",
    "keep",
    "line_format",
    "unwrap",
    "pattern",
    "regexp",
    "label_format",
    "unpack",
    "decolorize",
];

/// A JSON path as `| json label="…"` takes it.
fn path_text(path: &[PathPart]) -> String {
    let mut out = String::new();
    for (i, p) in path.iter().enumerate() {
        match p {
            // A key that the dotted form can carry; else the bracketed one (the two
            // forms cannot both be needed: only a dotted key can hold `]`).
            PathPart::Key(k) if !k.is_empty() && !k.contains(['.', '[']) => {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(k);
            }
            PathPart::Key(k) => {
                let _ = write!(out, "[\"{k}\"]");
            }
            PathPart::Index(n) => {
                let _ = write!(out, "[{n}]");
            }
        }
    }
    out
}

impl Display for Stage {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Line(l) => write!(f, "{l}"),
            Stage::Json(params) => {
                f.write_str("| json")?;
                for (i, (label, path)) in params.iter().enumerate() {
                    f.write_str(if i == 0 { " " } else { ", " })?;
                    f.write_str(label)?;
                    if !matches!(path.as_slice(), [PathPart::Key(k)] if k == label) {
                        f.write_char('=')?;
                        quoted(f, &path_text(path))?;
                    }
                }
                Ok(())
            }
            Stage::Logfmt => f.write_str("| logfmt"),
            Stage::Label(l) => {
                if STAGE_WORDS.contains(&l.first_name()) {
                    write!(f, "| ({l})")
                } else {
                    write!(f, "| {l}")
                }
            }
            Stage::Drop(names) | Stage::Keep(names) => {
                f.write_str(if matches!(self, Stage::Drop(_)) {
                    "| drop"
                } else {
                    "| keep"
                })?;
                for (i, n) in names.iter().enumerate() {
                    f.write_str(if i == 0 { " " } else { ", " })?;
                    match &n.only {
                        Some(m) => write!(f, "{m}")?,
                        None => f.write_str(&n.name)?,
                    }
                }
                Ok(())
            }
            Stage::Unwrap(u) => match u.conv {
                crate::UnwrapConv::Number => write!(f, "| unwrap {}", u.label),
                crate::UnwrapConv::Duration => write!(f, "| unwrap duration({})", u.label),
                crate::UnwrapConv::Bytes => write!(f, "| unwrap bytes({})", u.label),
            },
            Stage::LineFormat(parts) => {
                let mut t = String::new();
                for p in parts {
                    match p {
                        FormatPart::Text(s) => t.push_str(s),
                        FormatPart::Label(l) => {
                            let _ = write!(t, "{{{{.{l}}}}}");
                        }
                    }
                }
                f.write_str("| line_format ")?;
                quoted(f, &t)
            }
        }
    }
}

impl Display for LogQuery {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_char('{')?;
        for (i, m) in self.matchers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{m}")?;
        }
        f.write_char('}')?;
        for s in &self.stages {
            write!(f, " {s}")?;
        }
        Ok(())
    }
}

/// Whether `q` holds the one sequence the printer cannot make unambiguous (see the
/// module's documentation).
pub fn has_ambiguous_drop(q: &LogQuery) -> bool {
    q.stages.windows(2).any(|w| {
        matches!(&w[0], Stage::Drop(n) | Stage::Keep(n) if n.last().is_some_and(|l| l.only.is_none()))
            && matches!(
                &w[1],
                Stage::Line(LineFilter {
                    op: FilterOp::NotContains | FilterOp::NotRe,
                    ..
                })
            )
    })
}

impl Query {
    /// Whether the printed query parses back to this one: every query but those
    /// holding the ambiguous `drop` (see [`has_ambiguous_drop`]).
    pub fn prints_back(&self) -> bool {
        fn expr(e: &Expr) -> bool {
            match e {
                Expr::Number(_) | Expr::Vector(_) => true,
                Expr::Range { log, .. } => !has_ambiguous_drop(log),
                Expr::Agg { inner, .. } | Expr::Neg(inner) => expr(inner),
                Expr::Binary { lhs, rhs, .. } => expr(lhs) && expr(rhs),
            }
        }
        match self {
            Query::Log(l) => !has_ambiguous_drop(l),
            Query::Metric(e) => expr(e),
        }
    }
}

impl Display for RangeFn {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RangeFn::CountOverTime => "count_over_time",
            RangeFn::Rate => "rate",
            RangeFn::BytesOverTime => "bytes_over_time",
            RangeFn::BytesRate => "bytes_rate",
            RangeFn::AbsentOverTime => "absent_over_time",
            RangeFn::SumOverTime => "sum_over_time",
            RangeFn::AvgOverTime => "avg_over_time",
            RangeFn::MinOverTime => "min_over_time",
            RangeFn::MaxOverTime => "max_over_time",
            RangeFn::FirstOverTime => "first_over_time",
            RangeFn::LastOverTime => "last_over_time",
            RangeFn::StddevOverTime => "stddev_over_time",
            RangeFn::StdvarOverTime => "stdvar_over_time",
            RangeFn::QuantileOverTime => "quantile_over_time",
        })
    }
}

impl Display for AggOp {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AggOp::Sum => "sum",
            AggOp::Avg => "avg",
            AggOp::Min => "min",
            AggOp::Max => "max",
            AggOp::Count => "count",
            AggOp::Stddev => "stddev",
            AggOp::Stdvar => "stdvar",
            AggOp::Topk => "topk",
            AggOp::Bottomk => "bottomk",
        })
    }
}

impl Display for BinOp {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            BinOp::Add => f.write_str("+"),
            BinOp::Sub => f.write_str("-"),
            BinOp::Mul => f.write_str("*"),
            BinOp::Div => f.write_str("/"),
            BinOp::Mod => f.write_str("%"),
            BinOp::Pow => f.write_str("^"),
            BinOp::Cmp(c) => write!(f, "{c}"),
            BinOp::And => f.write_str("and"),
            BinOp::Or => f.write_str("or"),
            BinOp::Unless => f.write_str("unless"),
        }
    }
}

/// ` by (a, b)` / ` without (a)`.
fn write_grouping(f: &mut Formatter<'_>, g: &crate::Grouping) -> fmt::Result {
    write!(f, " {} (", if g.without { "without" } else { "by" })?;
    for (i, l) in g.labels.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        f.write_str(l)?;
    }
    f.write_char(')')
}

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Number(n) => write!(f, "{}", Num(*n)),
            Expr::Vector(v) => write!(f, "vector({})", Num(*v)),
            Expr::Range {
                func,
                log,
                range_ns,
                offset_ns,
                grouping,
                param,
            } => {
                write!(f, "{func}(")?;
                if let Some(p) = param {
                    write!(f, "{}, ", Num(*p))?;
                }
                write!(f, "{log} [{}]", Dur(*range_ns))?;
                if *offset_ns != 0 {
                    write!(f, " offset {}", Dur(*offset_ns))?;
                }
                f.write_char(')')?;
                if let Some(g) = grouping {
                    write_grouping(f, g)?;
                }
                Ok(())
            }
            Expr::Agg {
                op,
                grouping,
                param,
                inner,
            } => {
                write!(f, "{op}")?;
                if let Some(g) = grouping {
                    write_grouping(f, g)?;
                    f.write_char(' ')?;
                }
                f.write_char('(')?;
                if let Some(k) = param {
                    write!(f, "{}, ", Num(*k))?;
                }
                write!(f, "{inner})")
            }
            Expr::Binary {
                op,
                return_bool,
                lhs,
                rhs,
            } => {
                write!(f, "({lhs}) {op} ")?;
                if *return_bool {
                    f.write_str("bool ")?;
                }
                write!(f, "({rhs})")
            }
            Expr::Neg(e) => write!(f, "-({e})"),
        }
    }
}

impl Display for Query {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Query::Log(l) => write!(f, "{l}"),
            Query::Metric(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Parses, prints, parses again: the two ASTs must be equal, and printing must be
    /// a fixed point.
    fn round_trip(src: &str) -> String {
        let a = parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        let text = a.to_string();
        let b = parse(&text).unwrap_or_else(|e| panic!("{src} printed as {text}: {e}"));
        assert_eq!(a, b, "{src} printed as {text}");
        assert_eq!(b.to_string(), text);
        text
    }

    #[test]
    fn known_queries_round_trip() {
        for q in [
            r#"{host="web1", source=~"/var/log/.*", env!="dev", app!~"x|y"} |= "error" != `debug` |~ "time(out)?" !~ "^GET""#,
            r#"{a="x\"y\\z"} |= "tab\there" |~ "a\.b\d""#,
            r#"{app="api"} |= "req" | json | status >= 500 and duration > 1.5s or level=~"err.*" | logfmt | drop __error__, __error_details__ | keep app, level="x" | line_format "{{.status}} {{ .path }}!""#,
            r#"{a="b"} | json code="response.status", first="items[0].id", x, y="[\"a.b\"].c""#,
            r#"{a="b"} | size > 20KB, size <= 1MiB | d < -250ms | n == -3 | m != 1e999"#,
            r#"{a="b"} | (json="x" or a="y") and b!="z""#,
            r#"sum by (level, detected_level) (count_over_time({a="b"} | drop __error__ [1m]))"#,
            r#"topk(3, sum by (host) (rate({a="b"} |= "x" [5m])))"#,
            r#"sum(bytes_rate({a="b"}[30s])) without (source)"#,
            r#"avg(bytes_over_time(({a="b"} | json)[1h30m] offset 5m))"#,
            r#"count_over_time({a="b"}[5m] |= "x") > bool 10"#,
            r#"max(count_over_time({a="b"}[15000ms])) / 2 - -1"#,
            r#"absent_over_time({a="b"}[5m]) or vector(-0.5)"#,
            "1 + 2 * 3 ^ 2 ^ 0.5 % 7 unless 4 and 5",
            "-(1) ^ -2",
            "sum by () (vector(1))",
        ] {
            round_trip(q);
        }
        assert_eq!(
            round_trip(r#"sum by (a) (count_over_time({x="y"}[5m]))"#),
            r#"sum by (a) (count_over_time({x="y"} [5m]))"#
        );
        assert_eq!(
            round_trip(r#"rate({a="b"} |= "x" [90s] offset 1h)"#),
            r#"rate({a="b"} |= "x" [90s] offset 1h)"#
        );
    }

    #[test]
    fn the_ambiguous_drop_is_detected() {
        let q = parse_log(r#"{a="b"} | drop x | != "y""#);
        assert!(q.is_err(), "`| !=` is not LogQL");
        let mut q = parse_log(r#"{a="b"} | drop x != "y""#).unwrap();
        assert!(!has_ambiguous_drop(&q));
        q.stages = vec![
            Stage::Drop(vec![LabelName {
                name: "x".into(),
                only: None,
            }]),
            Stage::Line(LineFilter::new(FilterOp::NotContains, "y".into()).expect("valid")),
        ];
        assert!(has_ambiguous_drop(&q));
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z_][a-z0-9_]{0,6}",
            Just("json".to_owned()),
            Just("and".to_owned()),
            Just("or".to_owned()),
            Just("drop".to_owned()),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,8}",
            "\\PC{0,6}",
            Just("a\\.b\\d\"\n\t\r\\".to_owned()),
        ]
    }

    fn regex_text() -> impl Strategy<Value = String> {
        prop_oneof![
            text().prop_map(|t| regex::escape(&t)),
            Just("[a-z]+|x(y)?".to_owned()),
            Just(".*".to_owned()),
        ]
    }

    fn matcher() -> impl Strategy<Value = Matcher> {
        (name(), 0..4u8, text(), regex_text()).prop_map(|(name, op, t, re)| {
            let (op, value) = match op {
                0 => (MatchOp::Eq, t),
                1 => (MatchOp::Ne, t),
                2 => (MatchOp::Re, re),
                _ => (MatchOp::Nre, re),
            };
            let regex = matches!(op, MatchOp::Re | MatchOp::Nre)
                .then(|| Regex::new(&format!("^(?:{value})$")).expect("valid"));
            Matcher {
                name,
                op,
                value,
                regex,
            }
        })
    }

    fn selector() -> impl Strategy<Value = Vec<Matcher>> {
        (
            "[a-z]{1,5}",
            "[a-z0-9]{1,5}",
            prop::collection::vec(matcher(), 0..3),
        )
            .prop_map(|(n, v, mut rest)| {
                rest.insert(
                    0,
                    Matcher {
                        name: n,
                        op: MatchOp::Eq,
                        value: v,
                        regex: None,
                    },
                );
                rest
            })
    }

    fn line_filter() -> impl Strategy<Value = LineFilter> {
        (0..6u8, text(), regex_text()).prop_map(|(op, t, re)| {
            let (op, p) = match op {
                0 => (FilterOp::Contains, t),
                1 => (FilterOp::NotContains, t),
                2 => (FilterOp::Re, re),
                3 => (FilterOp::NotRe, re),
                4 => (FilterOp::Pattern, t),
                _ => (FilterOp::NotPattern, t),
            };
            LineFilter::new(op, p).expect("valid")
        })
    }

    fn label_filter() -> impl Strategy<Value = LabelFilter> {
        let cmp = prop_oneof![
            Just(CmpOp::Eq),
            Just(CmpOp::Ne),
            Just(CmpOp::Gt),
            Just(CmpOp::Ge),
            Just(CmpOp::Lt),
            Just(CmpOp::Le)
        ];
        let leaf = prop_oneof![
            matcher().prop_map(LabelFilter::Str),
            (name(), cmp.clone(), -1e6..1e6f64).prop_map(|(name, op, value)| LabelFilter::Num {
                name,
                op,
                value,
                kind: NumKind::Number,
            }),
            (name(), cmp.clone(), -(1i64 << 50)..(1i64 << 50)).prop_map(|(name, op, ns)| {
                LabelFilter::Num {
                    name,
                    op,
                    value: ns as f64 / 1e9,
                    kind: NumKind::Duration,
                }
            }),
            (
                name(),
                cmp,
                0u32..100_000,
                prop_oneof![Just(1.0), Just(1000.0), Just(1024.0 * 1024.0)]
            )
                .prop_map(|(name, op, n, mult)| LabelFilter::Num {
                    name,
                    op,
                    value: f64::from(n) / 8.0 * mult,
                    kind: NumKind::Bytes,
                }),
        ];
        leaf.prop_recursive(3, 12, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| LabelFilter::And(Box::new(a), Box::new(b))),
                (inner.clone(), inner).prop_map(|(a, b)| LabelFilter::Or(Box::new(a), Box::new(b))),
            ]
        })
    }

    fn json_params() -> impl Strategy<Value = Vec<(String, Vec<PathPart>)>> {
        let part = prop_oneof![
            "[a-z]{1,4}".prop_map(PathPart::Key),
            "[a-z .]{0,4}".prop_map(PathPart::Key),
            (0usize..20).prop_map(PathPart::Index),
        ];
        prop::collection::vec(
            (
                "[a-z_][a-z0-9_]{0,5}",
                prop::collection::vec(part, 1..4),
                any::<bool>(),
            )
                .prop_map(|(label, path, short)| {
                    let path = if short {
                        vec![PathPart::Key(label.clone())]
                    } else {
                        path
                    };
                    (label, path)
                }),
            0..3,
        )
    }

    fn label_name() -> impl Strategy<Value = LabelName> {
        (name(), prop::option::of(matcher())).prop_map(|(n, m)| match m {
            Some(mut m) => {
                m.name = n.clone();
                LabelName {
                    name: n,
                    only: Some(m),
                }
            }
            None => LabelName {
                name: n,
                only: None,
            },
        })
    }

    fn stage() -> impl Strategy<Value = Stage> {
        let part = prop_oneof![
            "[a-z :!}]{1,5}".prop_map(FormatPart::Text),
            "[a-z_]{1,5}".prop_map(FormatPart::Label),
        ];
        prop_oneof![
            line_filter().prop_map(Stage::Line),
            json_params().prop_map(Stage::Json),
            Just(Stage::Logfmt),
            label_filter().prop_map(Stage::Label),
            prop::collection::vec(label_name(), 1..3).prop_map(Stage::Drop),
            prop::collection::vec(label_name(), 1..3).prop_map(Stage::Keep),
            prop::collection::vec(part, 0..4).prop_map(|parts| {
                // As the parser makes them: no two texts in a row.
                let mut out: Vec<FormatPart> = Vec::new();
                for p in parts {
                    if matches!(
                        (&p, out.last()),
                        (FormatPart::Text(_), Some(FormatPart::Text(_)))
                    ) {
                        continue;
                    }
                    out.push(p);
                }
                Stage::LineFormat(out)
            }),
        ]
    }

    fn log_query() -> impl Strategy<Value = LogQuery> {
        (selector(), prop::collection::vec(stage(), 0..5))
            .prop_map(|(matchers, stages)| LogQuery { matchers, stages })
            .prop_filter("not printable unambiguously", |q| !has_ambiguous_drop(q))
    }

    fn duration() -> impl Strategy<Value = i64> {
        prop_oneof![
            (
                1i64..100,
                prop_oneof![
                    Just(1_000_000_000i64),
                    Just(60_000_000_000),
                    Just(3_600_000_000_000)
                ]
            )
                .prop_map(|(n, u)| n * u),
            1i64..(1 << 53),
        ]
    }

    fn expr() -> impl Strategy<Value = Expr> {
        let range_fn = prop_oneof![
            Just(RangeFn::CountOverTime),
            Just(RangeFn::Rate),
            Just(RangeFn::BytesOverTime),
            Just(RangeFn::BytesRate),
            Just(RangeFn::AbsentOverTime),
        ];
        let leaf = prop_oneof![
            (0.0..1e9f64).prop_map(Expr::Number),
            (-1e3..1e3f64).prop_map(Expr::Vector),
            (
                range_fn,
                log_query(),
                duration(),
                prop_oneof![Just(0i64), duration()]
            )
                .prop_map(|(func, log, range_ns, offset_ns)| Expr::Range {
                    func,
                    log,
                    range_ns,
                    offset_ns,
                    grouping: None,
                    param: None,
                }),
        ];
        leaf.prop_recursive(4, 16, 2, |inner| {
            let agg = prop_oneof![
                Just(AggOp::Sum),
                Just(AggOp::Avg),
                Just(AggOp::Min),
                Just(AggOp::Max),
                Just(AggOp::Count),
                Just(AggOp::Stddev),
                Just(AggOp::Stdvar),
                Just(AggOp::Topk),
                Just(AggOp::Bottomk),
            ];
            let bin = prop_oneof![
                Just(BinOp::Add),
                Just(BinOp::Sub),
                Just(BinOp::Mul),
                Just(BinOp::Div),
                Just(BinOp::Mod),
                Just(BinOp::Pow),
                Just(BinOp::Cmp(CmpOp::Gt)),
                Just(BinOp::Cmp(CmpOp::Eq)),
                Just(BinOp::And),
                Just(BinOp::Or),
                Just(BinOp::Unless),
            ];
            let grouping = prop::option::of(
                (any::<bool>(), prop::collection::vec(name(), 0..3))
                    .prop_map(|(without, labels)| Grouping { without, labels }),
            );
            prop_oneof![
                (agg, grouping, 1u32..10, inner.clone()).prop_map(|(op, grouping, k, e)| {
                    Expr::Agg {
                        op,
                        grouping,
                        param: matches!(op, AggOp::Topk | AggOp::Bottomk).then_some(f64::from(k)),
                        inner: Box::new(e),
                    }
                }),
                (bin, any::<bool>(), inner.clone(), inner.clone()).prop_map(|(op, b, l, r)| {
                    Expr::Binary {
                        op,
                        return_bool: b && matches!(op, BinOp::Cmp(_)),
                        lhs: Box::new(l),
                        rhs: Box::new(r),
                    }
                }),
                inner.prop_map(|e| Expr::Neg(Box::new(e))),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn printed_log_queries_parse_to_the_same_ast(q in log_query()) {
            let text = q.to_string();
            let back = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(Query::Log(q), back, "{}", text);
        }

        #[test]
        fn printed_metric_queries_parse_to_the_same_ast(e in expr()) {
            let text = e.to_string();
            let back = parse(&text).map_err(|err| TestCaseError::fail(format!("{text}: {err}")))?;
            prop_assert_eq!(Query::Metric(e), back, "{}", text);
        }
    }
}
