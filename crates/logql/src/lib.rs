//! `heimdall-logql`: LogQL syntax, with no I/O. Everything above it (store, query,
//! rules, alerting) speaks this syntax tree.
//!
//! The LogQL parser: text → AST, every error with the byte position it points at.
//!
//! Understood:
//! - log queries: a stream selector (`{name="v", name!="v", name=~"re", name!~"re"}`)
//!   and a pipeline of line filters (`|= "s"`, `!= "s"`, `|~ "re"`, `!~ "re"`), parsers
//!   (`| json`, `| json a="b.c"`, `| logfmt`), label filters (`| status >= 500`,
//!   `| level="error" or duration > 1s`), `| drop`, `| keep` and `| line_format`;
//! - metric queries: `count_over_time`, `rate`, `bytes_over_time`, `bytes_rate`,
//!   `absent_over_time` over `log-query [range]`, the aggregations `sum`, `avg`,
//!   `min`, `max`, `count`, `stddev`, `stdvar`, `topk`, `bottomk` with `by`/`without`,
//!   `vector(n)`, numbers, and the binary operators `+ - * / % ^`, comparisons (with
//!   `bool`), `and`, `or`, `unless`, with Prometheus precedence.
//!
//! Recursive descent over a small lexer; the AST types live here too. `Display` on the
//! AST prints canonical LogQL that parses back to the same AST (see `print.rs`; checked
//! by a property test here and by the `logql_parse` fuzz target in `fuzz/`).

use regex::Regex;
use std::fmt;

/// A parse error with the byte offset it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub pos: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "parse error at position {}: {}", self.pos, self.message)
    }
}

impl std::error::Error for ParseError {}

/// How a label matcher compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Ne,
    Re,
    Nre,
}

/// One label matcher of a stream selector (also a string label filter).
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// Compiled, fully anchored, for `=~` and `!~`.
    pub regex: Option<Regex>,
}

/// Equal when they match the same way (the compiled regex follows from the rest).
impl PartialEq for Matcher {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && self.op == o.op && self.value == o.value
    }
}

impl Matcher {
    /// Whether a label value (absent labels count as `""`) satisfies the matcher.
    pub fn matches(&self, v: Option<&str>) -> bool {
        let v = v.unwrap_or("");
        match self.op {
            MatchOp::Eq => v == self.value,
            MatchOp::Ne => v != self.value,
            MatchOp::Re => self.regex.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::Nre => !self.regex.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }
}

/// How a line filter tests a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterOp {
    Contains,
    NotContains,
    Re,
    NotRe,
    /// `|> "<_> GET <_>"`: the whole line matches the pattern, each `<_>` (or named
    /// `<capture>`) standing for any text.
    Pattern,
    /// `!> "…"`: the line does not match the pattern.
    NotPattern,
}

/// The regular expression of a pattern filter: anchored at both ends, literal text as
/// it is, each `<_>` or `<name>` any text (shortest first). A space stands for any run
/// of whitespace and `|`: the separators the agents' template miner splits on, which
/// a template's text shows as single spaces, so that a pattern Heimdall reports
/// (`<_> Step_LSC <_>`) matches its lines (`…|Step_LSC|…`, columns padded with spaces).
pub fn pattern_regex(pattern: &str) -> String {
    fn literal(out: &mut String, text: &str) {
        for (k, part) in text.split(' ').enumerate() {
            if k > 0 {
                out.push_str("[ \\t\\n\\r\\x0c|]+");
            }
            out.push_str(&regex::escape(part));
        }
    }
    let mut out = String::from("(?s)^");
    let mut rest = pattern;
    while let Some(i) = rest.find('<') {
        let after = &rest[i + 1..];
        let name_len = after.find('>').filter(|n| {
            *n > 0
                && after[..*n].bytes().enumerate().all(|(j, c)| {
                    c == b'_' || c.is_ascii_alphabetic() || (j > 0 && c.is_ascii_digit())
                })
        });
        match name_len {
            Some(n) => {
                literal(&mut out, &rest[..i]);
                out.push_str(".*?");
                rest = &after[n + 1..];
            }
            None => {
                literal(&mut out, &rest[..=i]);
                rest = after;
            }
        }
    }
    literal(&mut out, rest);
    out.push('$');
    out
}

/// A line filter.
#[derive(Clone, Debug)]
pub struct LineFilter {
    pub op: FilterOp,
    pub pattern: String,
    /// Compiled for `|~` and `!~` (unanchored, as in LogQL).
    pub regex: Option<regex::bytes::Regex>,
    /// Built once for `|=` and `!=` (building it per line cost more than searching).
    finder: Option<Box<memchr::memmem::Finder<'static>>>,
}

/// Equal when they filter the same way (the compiled regex follows from the rest).
impl PartialEq for LineFilter {
    fn eq(&self, o: &Self) -> bool {
        self.op == o.op && self.pattern == o.pattern
    }
}

impl LineFilter {
    /// A filter of `op` with `pattern` (a regular expression for `|~` and `!~`, a
    /// pattern for `|>` and `!>`).
    ///
    /// # Errors
    /// When the regular expression or the pattern does not compile.
    pub fn new(op: FilterOp, pattern: String) -> Result<LineFilter, regex::Error> {
        let regex = match op {
            FilterOp::Re | FilterOp::NotRe => Some(regex::bytes::Regex::new(&pattern)?),
            FilterOp::Pattern | FilterOp::NotPattern => {
                Some(regex::bytes::Regex::new(&pattern_regex(&pattern))?)
            }
            FilterOp::Contains | FilterOp::NotContains => None,
        };
        let finder = matches!(op, FilterOp::Contains | FilterOp::NotContains)
            .then(|| Box::new(memchr::memmem::Finder::new(pattern.as_bytes()).into_owned()));
        Ok(LineFilter {
            op,
            pattern,
            regex,
            finder,
        })
    }

    /// Whether `line` passes the filter.
    pub fn matches(&self, line: &[u8]) -> bool {
        let found = |f: &Option<Box<memchr::memmem::Finder<'static>>>| {
            f.as_ref().is_some_and(|f| f.find(line).is_some())
        };
        match self.op {
            FilterOp::Contains => found(&self.finder),
            FilterOp::NotContains => !found(&self.finder),
            FilterOp::Re | FilterOp::Pattern => {
                self.regex.as_ref().is_some_and(|r| r.is_match(line))
            }
            FilterOp::NotRe | FilterOp::NotPattern => {
                !self.regex.as_ref().is_some_and(|r| r.is_match(line))
            }
        }
    }
}

/// A numeric comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    /// Applies the comparison.
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
        }
    }
}

/// What the right side of a numeric label filter is, which says how the label's value
/// is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumKind {
    /// A plain number.
    Number,
    /// A duration such as `250ms` (compared in seconds).
    Duration,
    /// A size such as `20MB` (compared in bytes).
    Bytes,
}

/// A label filter expression (`| status >= 500 and level="error"`).
#[derive(Clone, Debug, PartialEq)]
pub enum LabelFilter {
    Str(Matcher),
    Num {
        name: String,
        op: CmpOp,
        value: f64,
        kind: NumKind,
    },
    And(Box<LabelFilter>, Box<LabelFilter>),
    Or(Box<LabelFilter>, Box<LabelFilter>),
}

/// One part of `| line_format "…"`: literal text or `{{.label}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatPart {
    Text(String),
    Label(String),
}

/// A label named in `drop`/`keep`, optionally only when it has a value.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelName {
    pub name: String,
    pub only: Option<Matcher>,
}

/// A pipeline stage.
#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    Line(LineFilter),
    /// `| json`; with parameters, only those labels, each from a path such as
    /// `a.b[0].c`.
    Json(Vec<(String, Vec<PathPart>)>),
    Logfmt,
    Label(LabelFilter),
    Drop(Vec<LabelName>),
    Keep(Vec<LabelName>),
    LineFormat(Vec<FormatPart>),
    /// `| unwrap …` (in range functions over values only).
    Unwrap(Unwrap),
}

/// A step of a JSON path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPart {
    Key(String),
    Index(usize),
}

/// A log query: which streams, and what happens to their lines.
#[derive(Clone, Debug, PartialEq)]
pub struct LogQuery {
    pub matchers: Vec<Matcher>,
    pub stages: Vec<Stage>,
}

impl LogQuery {
    /// The line filters that run before any other stage: they see the stored line, so
    /// storage may use them to skip data (bloom filters, substring pre-checks).
    pub fn leading_filters(&self) -> impl Iterator<Item = &LineFilter> {
        self.stages.iter().map_while(|s| match s {
            Stage::Line(f) => Some(f),
            _ => None,
        })
    }

    /// Whether every stage is a line filter (no labels are extracted or changed).
    pub fn only_line_filters(&self) -> bool {
        self.stages.iter().all(|s| matches!(s, Stage::Line(_)))
    }
}

/// A function over a range of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeFn {
    CountOverTime,
    Rate,
    BytesOverTime,
    BytesRate,
    AbsentOverTime,
    /// Over the values an `| unwrap` stage takes from the lines:
    SumOverTime,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
    FirstOverTime,
    LastOverTime,
    StddevOverTime,
    StdvarOverTime,
    /// `quantile_over_time(φ, …)`.
    QuantileOverTime,
}

impl RangeFn {
    fn from_name(s: &str) -> Option<RangeFn> {
        Some(match s {
            "count_over_time" => RangeFn::CountOverTime,
            "rate" => RangeFn::Rate,
            "bytes_over_time" => RangeFn::BytesOverTime,
            "bytes_rate" => RangeFn::BytesRate,
            "absent_over_time" => RangeFn::AbsentOverTime,
            "sum_over_time" => RangeFn::SumOverTime,
            "avg_over_time" => RangeFn::AvgOverTime,
            "min_over_time" => RangeFn::MinOverTime,
            "max_over_time" => RangeFn::MaxOverTime,
            "first_over_time" => RangeFn::FirstOverTime,
            "last_over_time" => RangeFn::LastOverTime,
            "stddev_over_time" => RangeFn::StddevOverTime,
            "stdvar_over_time" => RangeFn::StdvarOverTime,
            "quantile_over_time" => RangeFn::QuantileOverTime,
            _ => return None,
        })
    }

    /// Whether it aggregates unwrapped values (and needs an `| unwrap` stage).
    pub fn unwraps(self) -> bool {
        !matches!(
            self,
            RangeFn::CountOverTime
                | RangeFn::Rate
                | RangeFn::BytesOverTime
                | RangeFn::BytesRate
                | RangeFn::AbsentOverTime
        )
    }
}

/// How `| unwrap` reads a label's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwrapConv {
    /// A number.
    Number,
    /// `duration(l)` / `duration_seconds(l)`: a Go duration (`250ms`, `1h2m`), in seconds.
    Duration,
    /// `bytes(l)`: a size (`5 KiB`, `42MB`), in bytes.
    Bytes,
}

/// `| unwrap [conv(]label[)]`: the value a range function aggregates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unwrap {
    pub label: String,
    pub conv: UnwrapConv,
}

/// A vector aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Stddev,
    Stdvar,
    Topk,
    Bottomk,
}

impl AggOp {
    fn from_name(s: &str) -> Option<AggOp> {
        Some(match s {
            "sum" => AggOp::Sum,
            "avg" => AggOp::Avg,
            "min" => AggOp::Min,
            "max" => AggOp::Max,
            "count" => AggOp::Count,
            "stddev" => AggOp::Stddev,
            "stdvar" => AggOp::Stdvar,
            "topk" => AggOp::Topk,
            "bottomk" => AggOp::Bottomk,
            _ => return None,
        })
    }
}

/// `by (…)` or `without (…)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grouping {
    pub without: bool,
    pub labels: Vec<String>,
}

/// A binary operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Cmp(CmpOp),
    And,
    Or,
    Unless,
}

/// A metric expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Number(f64),
    /// `vector(n)`: one series without labels.
    Vector(f64),
    Range {
        func: RangeFn,
        log: LogQuery,
        range_ns: i64,
        offset_ns: i64,
        /// `by`/`without` after an unwrapped range function (`avg_over_time(…) by (x)`).
        grouping: Option<Grouping>,
        /// φ of `quantile_over_time`.
        param: Option<f64>,
    },
    Agg {
        op: AggOp,
        grouping: Option<Grouping>,
        /// `k` of `topk`/`bottomk`.
        param: Option<f64>,
        inner: Box<Expr>,
    },
    Binary {
        op: BinOp,
        /// `bool` after a comparison: 0/1 instead of filtering.
        return_bool: bool,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// Unary minus.
    Neg(Box<Expr>),
}

/// Any query.
#[derive(Clone, Debug, PartialEq)]
pub enum Query {
    Log(LogQuery),
    Metric(Expr),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Ident(String),
    Str(String),
    Number(f64),
    /// A duration in nanoseconds.
    Duration(i64),
    /// A size in bytes.
    Bytes(f64),
    Eq,
    EqEq,
    Ne,
    Re,
    Nre,
    Gt,
    Ge,
    Lt,
    Le,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Caret,
    PipeEq,
    PipeRe,
    PipeGt,
    NotGt,
    Pipe,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string \"{s}\""),
            Tok::Number(n) => format!("number {n}"),
            Tok::Duration(_) => "a duration".into(),
            Tok::Bytes(_) => "a byte size".into(),
            Tok::Eof => "end of query".into(),
            other => format!("`{}`", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Eq => "=",
            Tok::EqEq => "==",
            Tok::Ne => "!=",
            Tok::Re => "=~",
            Tok::Nre => "!~",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Caret => "^",
            Tok::PipeEq => "|=",
            Tok::PipeRe => "|~",
            Tok::PipeGt => "|>",
            Tok::NotGt => "!>",
            Tok::Pipe => "|",
            _ => "?",
        }
    }
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

fn err(pos: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        pos,
        message: message.into(),
    }
}

/// Nanoseconds per duration unit.
fn duration_unit(u: &str) -> Option<f64> {
    Some(match u {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        "d" => 86_400e9,
        "w" => 604_800e9,
        "y" => 31_536_000e9,
        _ => return None,
    })
}

fn bytes_unit(u: &str) -> Option<f64> {
    let k = 1000f64;
    let ki = 1024f64;
    Some(match u {
        "b" | "B" => 1.0,
        "kb" | "KB" => k,
        "mb" | "MB" => k * k,
        "gb" | "GB" => k * k * k,
        "tb" | "TB" => k.powi(4),
        "kib" | "KiB" | "ki" | "Ki" => ki,
        "mib" | "MiB" | "mi" | "Mi" => ki * ki,
        "gib" | "GiB" | "gi" | "Gi" => ki * ki * ki,
        "tib" | "TiB" | "ti" | "Ti" => ki.powi(4),
        _ => return None,
    })
}

impl<'a> Lexer<'a> {
    fn next(&mut self) -> Result<(usize, Tok), ParseError> {
        let b = self.src.as_bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            // `#` starts a comment to the end of the line, as in PromQL.
            if b.get(self.pos) == Some(&b'#') {
                while self.pos < b.len() && b[self.pos] != b'\n' {
                    self.pos += 1;
                }
                continue;
            }
            break;
        }
        let start = self.pos;
        let Some(&c) = b.get(self.pos) else {
            return Ok((start, Tok::Eof));
        };
        let two = b.get(self.pos + 1).copied();
        let (tok, len) = match (c, two) {
            (b'{', _) => (Tok::LBrace, 1),
            (b'}', _) => (Tok::RBrace, 1),
            (b'(', _) => (Tok::LParen, 1),
            (b')', _) => (Tok::RParen, 1),
            (b'[', _) => (Tok::LBracket, 1),
            (b']', _) => (Tok::RBracket, 1),
            (b',', _) => (Tok::Comma, 1),
            (b'=', Some(b'~')) => (Tok::Re, 2),
            (b'=', Some(b'=')) => (Tok::EqEq, 2),
            (b'=', _) => (Tok::Eq, 1),
            (b'!', Some(b'=')) => (Tok::Ne, 2),
            (b'!', Some(b'~')) => (Tok::Nre, 2),
            (b'!', Some(b'>')) => (Tok::NotGt, 2),
            (b'>', Some(b'=')) => (Tok::Ge, 2),
            (b'>', _) => (Tok::Gt, 1),
            (b'<', Some(b'=')) => (Tok::Le, 2),
            (b'<', _) => (Tok::Lt, 1),
            (b'+', _) => (Tok::Plus, 1),
            (b'-', _) => (Tok::Minus, 1),
            (b'*', _) => (Tok::Star, 1),
            (b'/', _) => (Tok::Slash, 1),
            (b'%', _) => (Tok::Percent, 1),
            (b'^', _) => (Tok::Caret, 1),
            (b'|', Some(b'=')) => (Tok::PipeEq, 2),
            (b'|', Some(b'~')) => (Tok::PipeRe, 2),
            (b'|', Some(b'>')) => (Tok::PipeGt, 2),
            (b'|', _) => (Tok::Pipe, 1),
            (b'"', _) => return self.string().map(|s| (start, Tok::Str(s))),
            (b'`', _) => {
                let end = self.src[start + 1..]
                    .find('`')
                    .ok_or_else(|| err(start, "unterminated raw string"))?;
                self.pos = start + 1 + end + 1;
                return Ok((
                    start,
                    Tok::Str(self.src[start + 1..start + 1 + end].to_owned()),
                ));
            }
            (c, _)
                if c.is_ascii_digit() || (c == b'.' && two.is_some_and(|d| d.is_ascii_digit())) =>
            {
                return self.number().map(|t| (start, t));
            }
            (c, _) if c == b'_' || c.is_ascii_alphabetic() => {
                let mut end = start;
                while end < b.len() && (b[end] == b'_' || b[end].is_ascii_alphanumeric()) {
                    end += 1;
                }
                self.pos = end;
                return Ok((start, Tok::Ident(self.src[start..end].to_owned())));
            }
            _ => {
                let ch = self.src[start..].chars().next().unwrap_or('?');
                return Err(err(start, format!("unexpected character `{ch}`")));
            }
        };
        self.pos += len;
        Ok((start, tok))
    }

    /// A number, a duration (`1h30m`, `15000ms`) or a byte size (`20MB`).
    fn number(&mut self) -> Result<Tok, ParseError> {
        let b = self.src.as_bytes();
        let start = self.pos;
        let digits_end = |mut i: usize| {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            i
        };
        let unit_end = |mut i: usize| {
            while i < b.len() && (b[i].is_ascii_alphabetic() || self.src[i..].starts_with('µ')) {
                i += if b[i].is_ascii() { 1 } else { 'µ'.len_utf8() };
            }
            i
        };
        let mut i = digits_end(start);
        // Exponent: 1e3, 2.5E-2.
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            let mut j = i + 1;
            if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                j += 1;
            }
            if j < b.len() && b[j].is_ascii_digit() {
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if !(j < b.len() && b[j].is_ascii_alphabetic()) {
                    i = j;
                }
            }
        }
        let num: f64 = self.src[start..i]
            .parse()
            .map_err(|_| err(start, format!("`{}` is not a number", &self.src[start..i])))?;
        let u = unit_end(i);
        if u == i {
            self.pos = i;
            return Ok(Tok::Number(num));
        }
        let unit = &self.src[i..u];
        if let Some(mult) = bytes_unit(unit) {
            self.pos = u;
            return Ok(Tok::Bytes(num * mult));
        }
        // A duration, possibly compound (`1h30m`).
        let mut total = 0f64;
        let (mut n, mut unit, mut at) = (num, unit, i);
        loop {
            let mult = duration_unit(unit)
                .ok_or_else(|| err(at, format!("unknown unit `{unit}` (durations use ns, us, ms, s, m, h, d, w, y; sizes B, KB, MB, KiB, …)")))?;
            total += n * mult;
            self.pos = at + unit.len();
            let p = self.pos;
            if p < b.len() && b[p].is_ascii_digit() {
                let e = digits_end(p);
                let ue = unit_end(e);
                if ue == e {
                    return Err(err(p, "a duration part needs a unit"));
                }
                n = self.src[p..e]
                    .parse()
                    .map_err(|_| err(p, "not a duration"))?;
                unit = &self.src[e..ue];
                at = e;
            } else {
                break;
            }
        }
        if !total.is_finite() || total > i64::MAX as f64 {
            return Err(err(start, "duration out of range"));
        }
        Ok(Tok::Duration(total as i64))
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let mut out = String::new();
        let mut chars = self.src[start + 1..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos = start + 1 + i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '"')) => out.push('"'),
                    // Regular expressions written in double quotes keep their escapes.
                    Some((
                        _,
                        c @ ('.' | 'd' | 'w' | 's' | 'b' | '[' | ']' | '(' | ')' | '{' | '}' | '*'
                        | '+' | '?' | '|' | '^' | '$' | '/' | 'D' | 'W' | 'S'),
                    )) => {
                        out.push('\\');
                        out.push(c);
                    }
                    Some((j, other)) => {
                        return Err(err(start + 1 + j, format!("unknown escape `\\{other}`")));
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(err(start, "unterminated string"))
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    peeked: Option<(usize, Tok)>,
    /// Open parentheses in label filters.
    label_depth: usize,
    /// Inside a range function's log query (where `| unwrap` may be).
    in_range: bool,
}

/// Deepest nesting of parentheses and function calls accepted.
const MAX_DEPTH: usize = 64;

impl<'a> Parser<'a> {
    fn peek(&mut self) -> Result<&(usize, Tok), ParseError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lex.next()?);
        }
        Ok(self.peeked.as_ref().expect("just filled"))
    }

    fn peek_tok(&mut self) -> Result<Tok, ParseError> {
        Ok(self.peek()?.1.clone())
    }

    fn bump(&mut self) -> Result<(usize, Tok), ParseError> {
        self.peek()?;
        Ok(self.peeked.take().expect("just peeked"))
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<usize, ParseError> {
        let (pos, t) = self.bump()?;
        if t == want {
            Ok(pos)
        } else {
            Err(err(pos, format!("expected {what}, found {}", t.describe())))
        }
    }

    fn string_value(&mut self, what: &str) -> Result<(usize, String), ParseError> {
        let (pos, t) = self.bump()?;
        match t {
            Tok::Str(s) => Ok((pos, s)),
            other => Err(err(
                pos,
                format!("expected {what}, found {}", other.describe()),
            )),
        }
    }

    fn matcher(&mut self, name: String, op_tok: (usize, Tok)) -> Result<Matcher, ParseError> {
        let (op_pos, op) = op_tok;
        let op = match op {
            Tok::Eq => MatchOp::Eq,
            Tok::Ne => MatchOp::Ne,
            Tok::Re => MatchOp::Re,
            Tok::Nre => MatchOp::Nre,
            other => {
                return Err(err(
                    op_pos,
                    format!(
                        "expected `=`, `!=`, `=~` or `!~` after `{name}`, found {}",
                        other.describe()
                    ),
                ))
            }
        };
        let (vpos, value) = self.string_value("a quoted value")?;
        let regex = match op {
            MatchOp::Re | MatchOp::Nre => {
                // Validate the pattern on its own first, so text such as `a)|(.*` cannot
                // close the anchoring group around it.
                let invalid =
                    |e: regex::Error| err(vpos, format!("invalid regular expression: {e}"));
                Regex::new(&value).map_err(invalid)?;
                Some(Regex::new(&format!("^(?:{value})$")).map_err(invalid)?)
            }
            _ => None,
        };
        Ok(Matcher {
            name,
            op,
            value,
            regex,
        })
    }

    fn selector(&mut self) -> Result<Vec<Matcher>, ParseError> {
        let open = self.expect(Tok::LBrace, "`{` to start a stream selector")?;
        let mut matchers = Vec::new();
        loop {
            let (pos, t) = self.bump()?;
            let name = match t {
                Tok::RBrace if matchers.is_empty() => break,
                Tok::Ident(n) => n,
                other => {
                    return Err(err(
                        pos,
                        format!("expected a label name, found {}", other.describe()),
                    ))
                }
            };
            let op = self.bump()?;
            matchers.push(self.matcher(name, op)?);
            let (pos, t) = self.bump()?;
            match t {
                Tok::Comma => {}
                Tok::RBrace => break,
                other => {
                    return Err(err(
                        pos,
                        format!("expected `,` or `}}`, found {}", other.describe()),
                    ))
                }
            }
        }
        if !matchers.iter().any(|m| !m.matches(Some(""))) {
            return Err(err(open, "a stream selector needs at least one matcher that does not match the empty value, e.g. {host=\"web1\"}"));
        }
        Ok(matchers)
    }

    fn line_filter(&mut self, op: FilterOp) -> Result<LineFilter, ParseError> {
        let (vpos, pattern) = self.string_value("a quoted pattern")?;
        let what = match op {
            FilterOp::Pattern | FilterOp::NotPattern => "invalid pattern",
            _ => "invalid regular expression",
        };
        LineFilter::new(op, pattern).map_err(|e| err(vpos, format!("{what}: {e}")))
    }

    /// Pipeline stages until something that is not one.
    fn stages(&mut self, out: &mut Vec<Stage>) -> Result<(), ParseError> {
        loop {
            let t = self.peek_tok()?;
            let op = match t {
                Tok::PipeEq => FilterOp::Contains,
                Tok::Ne => FilterOp::NotContains,
                Tok::PipeRe => FilterOp::Re,
                Tok::Nre => FilterOp::NotRe,
                Tok::PipeGt => FilterOp::Pattern,
                Tok::NotGt => FilterOp::NotPattern,
                Tok::Pipe => {
                    self.bump()?;
                    let s = self.stage()?;
                    out.push(s);
                    continue;
                }
                _ => return Ok(()),
            };
            self.bump()?;
            out.push(Stage::Line(self.line_filter(op)?));
        }
    }

    fn stage(&mut self) -> Result<Stage, ParseError> {
        let (pos, t) = self.peek()?.clone();
        if t == Tok::LParen {
            return Ok(Stage::Label(self.label_or()?));
        }
        let Tok::Ident(name) = t else {
            return Err(err(
                pos,
                format!(
                    "expected a pipeline stage (json, logfmt, drop, keep, line_format or a label filter), found {}",
                    t.describe()
                ),
            ));
        };
        match name.as_str() {
            "json" => {
                self.bump()?;
                let mut params = Vec::new();
                while let Tok::Ident(label) = self.peek_tok()? {
                    // `| json | x` has no parameters; parameters are `label="path"` or `label`.
                    let (lpos, _) = self.bump()?;
                    let path = if self.peek_tok()? == Tok::Eq {
                        self.bump()?;
                        let (ppos, p) = self.string_value("a quoted JSON path")?;
                        json_path(&p, ppos)?
                    } else {
                        vec![PathPart::Key(label.clone())]
                    };
                    if !valid_label(&label) {
                        return Err(err(lpos, format!("`{label}` is not a valid label name")));
                    }
                    params.push((label, path));
                    if self.peek_tok()? == Tok::Comma {
                        self.bump()?;
                    } else {
                        break;
                    }
                }
                Ok(Stage::Json(params))
            }
            "logfmt" => {
                self.bump()?;
                Ok(Stage::Logfmt)
            }
            "drop" | "keep" => {
                self.bump()?;
                let mut names = Vec::new();
                loop {
                    let (npos, t) = self.bump()?;
                    let Tok::Ident(n) = t else {
                        return Err(err(
                            npos,
                            format!("expected a label name, found {}", t.describe()),
                        ));
                    };
                    let only = match self.peek_tok()? {
                        Tok::Eq | Tok::Ne | Tok::Re | Tok::Nre => {
                            let op = self.bump()?;
                            Some(self.matcher(n.clone(), op)?)
                        }
                        _ => None,
                    };
                    names.push(LabelName { name: n, only });
                    if self.peek_tok()? == Tok::Comma {
                        self.bump()?;
                    } else {
                        break;
                    }
                }
                Ok(if name == "drop" {
                    Stage::Drop(names)
                } else {
                    Stage::Keep(names)
                })
            }
            "line_format" => {
                self.bump()?;
                let (tpos, tpl) = self.string_value("a quoted template")?;
                Ok(Stage::LineFormat(line_template(&tpl, tpos + 1)?))
            }
            "unwrap" if !self.in_range => Err(err(
                pos,
                "`| unwrap` is only valid inside a range function such as avg_over_time({…} | unwrap latency [5m])",
            )),
            "unwrap" => {
                self.bump()?;
                let (npos, n) = self.bump()?;
                let Tok::Ident(n) = n else {
                    return Err(err(npos, format!("expected a label name after `unwrap`, found {}", n.describe())));
                };
                let conv = match n.as_str() {
                    "duration" | "duration_seconds" => Some(UnwrapConv::Duration),
                    "bytes" => Some(UnwrapConv::Bytes),
                    _ => None,
                };
                match conv {
                    Some(conv) if self.peek_tok()? == Tok::LParen => {
                        self.bump()?;
                        let (lpos, l) = self.bump()?;
                        let Tok::Ident(label) = l else {
                            return Err(err(lpos, format!("expected a label name, found {}", l.describe())));
                        };
                        self.expect(Tok::RParen, "`)`")?;
                        Ok(Stage::Unwrap(Unwrap { label, conv }))
                    }
                    _ => Ok(Stage::Unwrap(Unwrap {
                        label: n,
                        conv: UnwrapConv::Number,
                    })),
                }
            }
            "pattern" | "regexp" | "label_format" | "unpack" | "decolorize" => Err(err(
                pos,
                format!("the `{name}` stage is not supported by this aggregator version"),
            )),
            _ => Ok(Stage::Label(self.label_or()?)),
        }
    }

    fn label_or(&mut self) -> Result<LabelFilter, ParseError> {
        let mut lhs = self.label_and()?;
        while self.peek_tok()? == Tok::Ident("or".into()) {
            self.bump()?;
            let rhs = self.label_and()?;
            lhs = LabelFilter::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn label_and(&mut self) -> Result<LabelFilter, ParseError> {
        let mut lhs = self.label_atom()?;
        loop {
            match self.peek_tok()? {
                Tok::Ident(s) if s == "and" => {}
                Tok::Comma => {}
                _ => return Ok(lhs),
            }
            self.bump()?;
            let rhs = self.label_atom()?;
            lhs = LabelFilter::And(Box::new(lhs), Box::new(rhs));
        }
    }

    fn label_atom(&mut self) -> Result<LabelFilter, ParseError> {
        let (pos, t) = self.bump()?;
        let name = match t {
            Tok::LParen => {
                self.label_depth += 1;
                if self.label_depth > MAX_DEPTH {
                    return Err(err(pos, "label filter is nested too deeply"));
                }
                let f = self.label_or()?;
                self.expect(Tok::RParen, "`)`")?;
                self.label_depth -= 1;
                return Ok(f);
            }
            Tok::Ident(n) => n,
            other => {
                return Err(err(
                    pos,
                    format!("expected a label name, found {}", other.describe()),
                ))
            }
        };
        let (op_pos, op) = self.bump()?;
        let cmp = match &op {
            Tok::Eq | Tok::Ne | Tok::Re | Tok::Nre
                if matches!(self.peek_tok()?, Tok::Str(_)) =>
            {
                return Ok(LabelFilter::Str(self.matcher(name, (op_pos, op))?));
            }
            Tok::Eq | Tok::EqEq => CmpOp::Eq,
            Tok::Ne => CmpOp::Ne,
            Tok::Gt => CmpOp::Gt,
            Tok::Ge => CmpOp::Ge,
            Tok::Lt => CmpOp::Lt,
            Tok::Le => CmpOp::Le,
            other => {
                return Err(err(
                    op_pos,
                    format!(
                        "expected a comparison (`=`, `!=`, `=~`, `!~`, `==`, `>`, `>=`, `<`, `<=`) after `{name}`, found {}",
                        other.describe()
                    ),
                ))
            }
        };
        let (vpos, v) = self.bump()?;
        let neg = v == Tok::Minus;
        let v = if neg { self.bump()?.1 } else { v };
        let sign = if neg { -1.0 } else { 1.0 };
        let (value, kind) = match v {
            Tok::Number(n) => (sign * n, NumKind::Number),
            Tok::Duration(d) => (sign * d as f64 / 1e9, NumKind::Duration),
            Tok::Bytes(b) => (sign * b, NumKind::Bytes),
            other => {
                return Err(err(
                    vpos,
                    format!(
                        "expected a number, duration or size, found {}",
                        other.describe()
                    ),
                ))
            }
        };
        Ok(LabelFilter::Num {
            name,
            op: cmp,
            value,
            kind,
        })
    }

    fn log_query(&mut self) -> Result<LogQuery, ParseError> {
        let matchers = self.selector()?;
        let mut stages = Vec::new();
        self.stages(&mut stages)?;
        Ok(LogQuery { matchers, stages })
    }

    // Metric expressions, by precedence: or < and/unless < comparisons < + - < * / % < ^.
    fn expr(&mut self, depth: usize) -> Result<Expr, ParseError> {
        self.binary(0, depth)
    }

    fn binary(&mut self, level: u8, depth: usize) -> Result<Expr, ParseError> {
        if level == 5 {
            return self.power(depth);
        }
        let mut lhs = self.binary(level + 1, depth)?;
        loop {
            let t = self.peek_tok()?;
            let op = match (level, &t) {
                (0, Tok::Ident(s)) if s == "or" => BinOp::Or,
                (1, Tok::Ident(s)) if s == "and" => BinOp::And,
                (1, Tok::Ident(s)) if s == "unless" => BinOp::Unless,
                (2, Tok::EqEq) => BinOp::Cmp(CmpOp::Eq),
                (2, Tok::Ne) => BinOp::Cmp(CmpOp::Ne),
                (2, Tok::Gt) => BinOp::Cmp(CmpOp::Gt),
                (2, Tok::Ge) => BinOp::Cmp(CmpOp::Ge),
                (2, Tok::Lt) => BinOp::Cmp(CmpOp::Lt),
                (2, Tok::Le) => BinOp::Cmp(CmpOp::Le),
                (3, Tok::Plus) => BinOp::Add,
                (3, Tok::Minus) => BinOp::Sub,
                (4, Tok::Star) => BinOp::Mul,
                (4, Tok::Slash) => BinOp::Div,
                (4, Tok::Percent) => BinOp::Mod,
                _ => return Ok(lhs),
            };
            self.bump()?;
            let mut return_bool = false;
            if matches!(op, BinOp::Cmp(_)) && self.peek_tok()? == Tok::Ident("bool".into()) {
                self.bump()?;
                return_bool = true;
            }
            let rhs = self.binary(level + 1, depth)?;
            lhs = Expr::Binary {
                op,
                return_bool,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            };
        }
    }

    /// `^` binds tighter than unary minus on its left and is right-associative.
    fn power(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let base = self.unary(depth)?;
        if self.peek_tok()? == Tok::Caret {
            self.bump()?;
            let exp = self.power(depth + 1)?;
            return Ok(Expr::Binary {
                op: BinOp::Pow,
                return_bool: false,
                lhs: Box::new(base),
                rhs: Box::new(exp),
            });
        }
        Ok(base)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let (pos, t) = self.peek()?.clone();
        if depth > MAX_DEPTH {
            return Err(err(pos, "query is nested too deeply"));
        }
        match t {
            Tok::Minus => {
                self.bump()?;
                Ok(Expr::Neg(Box::new(self.unary(depth + 1)?)))
            }
            Tok::Plus => {
                self.bump()?;
                self.unary(depth + 1)
            }
            _ => self.primary(depth),
        }
    }

    fn primary(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let (pos, t) = self.peek()?.clone();
        if depth > MAX_DEPTH {
            return Err(err(pos, "query is nested too deeply"));
        }
        match t {
            Tok::Number(n) => {
                self.bump()?;
                Ok(Expr::Number(n))
            }
            Tok::LParen => {
                self.bump()?;
                let e = self.expr(depth + 1)?;
                self.expect(Tok::RParen, "`)`")?;
                Ok(e)
            }
            Tok::LBrace => Err(err(
                pos,
                "a log query cannot be used here; wrap it in a range function such as count_over_time({…}[5m])",
            )),
            Tok::Ident(name) => {
                self.bump()?;
                if name == "vector" {
                    self.expect(Tok::LParen, "`(` after `vector`")?;
                    let (npos, n) = self.bump()?;
                    let v = match n {
                        Tok::Number(v) => v,
                        Tok::Minus => match self.bump()?.1 {
                            Tok::Number(v) => -v,
                            other => {
                                return Err(err(npos, format!("expected a number, found {}", other.describe())))
                            }
                        },
                        other => {
                            return Err(err(npos, format!("expected a number, found {}", other.describe())))
                        }
                    };
                    self.expect(Tok::RParen, "`)`")?;
                    return Ok(Expr::Vector(v));
                }
                if let Some(func) = RangeFn::from_name(&name) {
                    return self.range_call(func, pos);
                }
                if let Some(op) = AggOp::from_name(&name) {
                    return self.aggregation(op, pos, depth);
                }
                Err(err(
                    pos,
                    format!(
                        "unknown function `{name}` (expected count_over_time, rate, bytes_over_time, bytes_rate, absent_over_time, sum/avg/min/max/first/last/stddev/stdvar/quantile_over_time, sum, avg, min, max, count, stddev, stdvar, topk, bottomk or vector)"
                    ),
                ))
            }
            other => Err(err(
                pos,
                format!("expected an expression, found {}", other.describe()),
            )),
        }
    }

    fn range_call(&mut self, func: RangeFn, pos: usize) -> Result<Expr, ParseError> {
        self.expect(Tok::LParen, "`(`")?;
        let param = if func == RangeFn::QuantileOverTime {
            let (qpos, q) = self.bump()?;
            let Tok::Number(q) = q else {
                return Err(err(
                    qpos,
                    format!("expected the quantile (0 to 1), found {}", q.describe()),
                ));
            };
            self.expect(Tok::Comma, "`,`")?;
            Some(q)
        } else {
            None
        };
        // `({…} | …)[5m]` is allowed as well as `{…} | … [5m]`.
        let parened = self.peek_tok()? == Tok::LParen;
        if parened {
            self.bump()?;
        }
        self.in_range = true;
        let log = self.log_query();
        self.in_range = false;
        let mut log = log?;
        if parened {
            self.expect(Tok::RParen, "`)`")?;
        }
        self.expect(Tok::LBracket, "`[` and a range such as [5m]")?;
        let (rpos, r) = self.bump()?;
        let Tok::Duration(range_ns) = r else {
            return Err(err(
                rpos,
                format!("expected a range such as 5m, found {}", r.describe()),
            ));
        };
        if range_ns <= 0 {
            return Err(err(rpos, "the range must be positive"));
        }
        self.expect(Tok::RBracket, "`]`")?;
        // Stages may also follow the range.
        self.in_range = true;
        let more = self.stages(&mut log.stages);
        self.in_range = false;
        more?;
        let mut offset_ns = 0;
        if self.peek_tok()? == Tok::Ident("offset".into()) {
            self.bump()?;
            let (opos, o) = self.bump()?;
            let Tok::Duration(o) = o else {
                return Err(err(
                    opos,
                    format!("expected a duration after `offset`, found {}", o.describe()),
                ));
            };
            offset_ns = o;
        }
        self.expect(Tok::RParen, "`)`")?;
        let unwraps = log
            .stages
            .iter()
            .filter(|s| matches!(s, Stage::Unwrap(_)))
            .count();
        if func.unwraps() && unwraps != 1 {
            return Err(err(
                pos,
                "this range function needs one `| unwrap <label>` stage (e.g. avg_over_time({…} | logfmt | unwrap latency [5m]))",
            ));
        }
        if !func.unwraps() && unwraps > 0 {
            return Err(err(
                pos,
                "`| unwrap` is only for sum_over_time, avg_over_time, min/max/first/last_over_time, stddev/stdvar_over_time and quantile_over_time",
            ));
        }
        let grouping = if func.unwraps() {
            self.grouping()?
        } else {
            None
        };
        Ok(Expr::Range {
            func,
            log,
            range_ns,
            offset_ns,
            grouping,
            param,
        })
    }

    fn grouping(&mut self) -> Result<Option<Grouping>, ParseError> {
        let without = match self.peek_tok()? {
            Tok::Ident(s) if s == "by" => false,
            Tok::Ident(s) if s == "without" => true,
            _ => return Ok(None),
        };
        self.bump()?;
        self.expect(Tok::LParen, "`(` and label names")?;
        let mut labels = Vec::new();
        loop {
            let (pos, t) = self.bump()?;
            match t {
                Tok::RParen if labels.is_empty() => break,
                Tok::Ident(n) => labels.push(n),
                other => {
                    return Err(err(
                        pos,
                        format!("expected a label name, found {}", other.describe()),
                    ))
                }
            }
            let (pos, t) = self.bump()?;
            match t {
                Tok::Comma => {}
                Tok::RParen => break,
                other => {
                    return Err(err(
                        pos,
                        format!("expected `,` or `)`, found {}", other.describe()),
                    ))
                }
            }
        }
        Ok(Some(Grouping { without, labels }))
    }

    fn aggregation(&mut self, op: AggOp, pos: usize, depth: usize) -> Result<Expr, ParseError> {
        let mut grouping = self.grouping()?;
        self.expect(Tok::LParen, "`(`")?;
        let param = if matches!(op, AggOp::Topk | AggOp::Bottomk) {
            let (kpos, k) = self.bump()?;
            let Tok::Number(k) = k else {
                return Err(err(
                    kpos,
                    format!("expected the number of series, found {}", k.describe()),
                ));
            };
            if k < 1.0 || k.fract() != 0.0 {
                return Err(err(kpos, "the number of series must be a positive integer"));
            }
            self.expect(Tok::Comma, "`,`")?;
            Some(k)
        } else {
            None
        };
        let inner = self.expr(depth + 1)?;
        self.expect(Tok::RParen, "`)`")?;
        if let Some(g) = self.grouping()? {
            if grouping.is_some() {
                return Err(err(pos, "grouping given twice"));
            }
            grouping = Some(g);
        }
        Ok(Expr::Agg {
            op,
            grouping,
            param,
            inner: Box::new(inner),
        })
    }
}

/// Whether `s` is a valid label name.
pub fn valid_label(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f == '_' || f.is_ascii_alphabetic())
        && c.all(|x| x == '_' || x.is_ascii_alphanumeric())
}

/// Parses a JSON path such as `a.b[0].c` or `["a b"].c` (written at `pos`).
fn json_path(p: &str, pos: usize) -> Result<Vec<PathPart>, ParseError> {
    let mut out = Vec::new();
    let b = p.as_bytes();
    let mut i = 0;
    let mut key = String::new();
    while i < b.len() {
        match b[i] {
            b'.' => {
                if !key.is_empty() {
                    out.push(PathPart::Key(std::mem::take(&mut key)));
                }
                i += 1;
            }
            b'[' => {
                if !key.is_empty() {
                    out.push(PathPart::Key(std::mem::take(&mut key)));
                }
                let end = p[i..]
                    .find(']')
                    .ok_or_else(|| err(pos, "unclosed `[` in JSON path"))?
                    + i;
                let inner = p[i + 1..end].trim();
                if let Some(q) = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    out.push(PathPart::Key(q.to_owned()));
                } else {
                    let n: usize = inner
                        .parse()
                        .map_err(|_| err(pos, format!("`{inner}` is not an array index")))?;
                    out.push(PathPart::Index(n));
                }
                i = end + 1;
            }
            _ => {
                let ch = p[i..].chars().next().unwrap_or('?');
                key.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    if !key.is_empty() {
        out.push(PathPart::Key(key));
    }
    if out.is_empty() {
        return Err(err(pos, "empty JSON path"));
    }
    Ok(out)
}

/// Parses a `line_format` template: text with `{{.label}}` or `{{ .label }}` (its text
/// starting at `pos` in the query; positions in errors count bytes of the template).
fn line_template(t: &str, pos: usize) -> Result<Vec<FormatPart>, ParseError> {
    let mut out = Vec::new();
    let mut rest = t;
    let mut off = 0;
    while let Some(i) = rest.find("{{") {
        if i > 0 {
            out.push(FormatPart::Text(rest[..i].to_owned()));
        }
        let end = rest[i..]
            .find("}}")
            .ok_or_else(|| err(pos + off + i, "unclosed `{{` in template"))?
            + i;
        let inner = rest[i + 2..end].trim();
        let Some(name) = inner.strip_prefix('.').filter(|n| valid_label(n)) else {
            return Err(err(
                pos + off + i,
                format!("`{{{{{inner}}}}}`: only `{{{{.label}}}}` is supported in templates"),
            ));
        };
        out.push(FormatPart::Label(name.to_owned()));
        off += end + 2;
        rest = &rest[end + 2..];
    }
    if !rest.is_empty() {
        out.push(FormatPart::Text(rest.to_owned()));
    }
    Ok(out)
}

/// Parses a query.
///
/// # Errors
/// [`ParseError`] with the position of the first problem.
pub fn parse(src: &str) -> Result<Query, ParseError> {
    let mut p = Parser {
        lex: Lexer { src, pos: 0 },
        peeked: None,
        label_depth: 0,
        in_range: false,
    };
    let (pos, t) = p.peek()?.clone();
    let q = match t {
        Tok::LBrace => Query::Log(p.log_query()?),
        Tok::Eof => return Err(err(pos, "empty query")),
        _ => Query::Metric(p.expr(0)?),
    };
    let (pos, t) = p.bump()?;
    if t != Tok::Eof {
        let hint = if matches!(q, Query::Log(_)) {
            "a pipeline stage (`|= \"text\"`, `| json`, …) or the end of the query"
        } else {
            "an operator or the end of the query"
        };
        return Err(err(pos, format!("expected {hint}, found {}", t.describe())));
    }
    Ok(q)
}

/// Parses a query that must be a log query.
///
/// # Errors
/// [`ParseError`], also when the query is a metric query.
pub fn parse_log(src: &str) -> Result<LogQuery, ParseError> {
    match parse(src)? {
        Query::Log(l) => Ok(l),
        Query::Metric(_) => Err(err(
            0,
            "expected a log query such as {host=\"web1\"} |= \"error\", found a metric query",
        )),
    }
}

mod print;
pub use print::has_ambiguous_drop;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrapped_range_functions_parse_and_print_back() {
        for q in [
            r#"avg_over_time({app="x"} | logfmt | unwrap duration(latency) | __error__="" [5m]) by ()"#,
            r#"sum by (path) (sum_over_time({app="x"} | json | unwrap bytes(size) [1m]))"#,
            r#"quantile_over_time(0.99, {app="x"} | logfmt | unwrap ms [5m]) by (host)"#,
            r#"max_over_time({app="x"} | logfmt | unwrap ms [5m] offset 1h)"#,
        ] {
            let parsed = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
            let printed = parsed.to_string();
            assert_eq!(parse(&printed).unwrap(), parsed, "{q} -> {printed}");
        }
        let Query::Metric(Expr::Range {
            func,
            log,
            grouping,
            param,
            ..
        }) = parse(r#"quantile_over_time(0.9, {a="b"} | unwrap duration_seconds(d) [1m]) by (x)"#)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(func, RangeFn::QuantileOverTime);
        assert_eq!(param, Some(0.9));
        assert_eq!(grouping.unwrap().labels, vec!["x".to_owned()]);
        assert_eq!(
            log.stages,
            vec![Stage::Unwrap(Unwrap {
                label: "d".into(),
                conv: UnwrapConv::Duration
            })]
        );
        for (q, msg) in [
            (r#"avg_over_time({a="b"}[5m])"#, "needs one `| unwrap"),
            (r#"count_over_time({a="b"} | unwrap x [5m])"#, "only for"),
            (
                r#"quantile_over_time({a="b"} | unwrap x [5m])"#,
                "expected the quantile",
            ),
        ] {
            let e = parse(q).unwrap_err().to_string();
            assert!(e.contains(msg), "{q}: {e}");
        }
    }

    #[test]
    fn pattern_filters_match_whole_lines_with_placeholders() {
        let q = log(r#"{app="x"} |> "<_> GET <path> 200 <_>" !> "<_>health<_>""#);
        let f = filters(&q);
        assert_eq!(f[0].op, FilterOp::Pattern);
        assert_eq!(f[1].op, FilterOp::NotPattern);
        let ok = |line: &str| f.iter().all(|x| x.matches(line.as_bytes()));
        assert!(ok("10.0.0.1 GET /items 200 12ms"));
        assert!(!ok("10.0.0.1 GET /health 200 1ms"), "the second filter");
        assert!(!ok("10.0.0.1 POST /items 200 12ms"));
        assert!(
            !ok("GET /items 200 12ms"),
            "the leading <_> needs text before ` GET`"
        );
        // Anchored: literal ends must be the line's ends.
        let a = log(r#"{app="x"} |> "level=<_> msg=done""#);
        let a = filters(&a)[0];
        assert!(a.matches(b"level=info msg=done"));
        assert!(!a.matches(b"level=info msg=done twice"));
        assert!(!a.matches(b"x level=info msg=done"));
        // `<` that does not open a placeholder is text; regex characters are literal.
        let b = log(r#"{app="x"} |> "a <= b (<_>) [*]""#);
        assert!(filters(&b)[0].matches(b"a <= b (ok) [*]"));
        assert!(!filters(&b)[0].matches(b"a <= b ok [*]"));
        assert_eq!(pattern_regex("<_>"), "(?s)^.*?$");
        // A space is any run of the miner's separators.
        let c = log(r#"{app="x"} |> "<_> Step_LSC <_> onStandStepChanged <_>""#);
        let c = filters(&c)[0];
        assert!(c.matches(b"20171223-22:15:29:606|Step_LSC|30002312|onStandStepChanged 3579"));
        assert!(c.matches(b"t  Step_LSC\tx onStandStepChanged 1"));
        assert!(!c.matches(b"t Step_LSCx onStandStepChanged 1"));
        assert_eq!(
            parse(r#"{app="x"} |> "<_> GET <_>""#).unwrap().to_string(),
            r#"{app="x"} |> "<_> GET <_>""#
        );
    }

    fn log(q: &str) -> LogQuery {
        parse_log(q).unwrap()
    }

    fn filters(q: &LogQuery) -> Vec<&LineFilter> {
        q.leading_filters().collect()
    }

    #[test]
    fn selector_and_filters() {
        let q = log(
            r#"{host="web1", source=~"/var/log/.*", env!="dev", app!~"x|y"} |= "error" != `debug` |~ "time(out)?" !~ "^GET""#,
        );
        assert_eq!(q.matchers.len(), 4);
        assert_eq!(q.matchers[1].op, MatchOp::Re);
        assert!(q.matchers[1].matches(Some("/var/log/syslog")));
        assert!(
            !q.matchers[1].matches(Some("x/var/log/syslog")),
            "regex matchers are anchored"
        );
        assert!(q.matchers[2].matches(None));
        let f = filters(&q);
        assert_eq!(f.len(), 4);
        let line = b"ERROR error: request timeout";
        assert!(f[0].matches(line));
        assert!(f[1].matches(line));
        assert!(f[2].matches(line));
        assert!(f[3].matches(line));
        assert!(!f[3].matches(b"GET /"));
    }

    #[test]
    fn escapes_in_strings() {
        let q = log(r#"{a="x\"y\\z"} |= "tab\there" |~ "a\.b\d""#);
        assert_eq!(q.matchers[0].value, "x\"y\\z");
        let f = filters(&q);
        assert_eq!(f[0].pattern, "tab\there");
        assert_eq!(f[1].pattern, r"a\.b\d");
    }

    #[test]
    fn pipeline_stages() {
        let q = log(
            r#"{app="api"} |= "req" | json | status >= 500 and duration > 1.5s or level=~"err.*" | logfmt | drop __error__, __error_details__ | keep app, level="x" | line_format "{{.status}} {{ .path }}!""#,
        );
        assert_eq!(q.stages.len(), 7);
        assert!(matches!(&q.stages[1], Stage::Json(p) if p.is_empty()));
        let Stage::Label(LabelFilter::Or(a, b)) = &q.stages[2] else {
            panic!("{:?}", q.stages[2])
        };
        let LabelFilter::And(s, d) = &**a else {
            panic!()
        };
        assert!(
            matches!(&**s, LabelFilter::Num { op: CmpOp::Ge, value, kind: NumKind::Number, .. } if *value == 500.0)
        );
        assert!(
            matches!(&**d, LabelFilter::Num { value, kind: NumKind::Duration, .. } if *value == 1.5)
        );
        assert!(matches!(&**b, LabelFilter::Str(m) if m.op == MatchOp::Re));
        assert!(matches!(&q.stages[4], Stage::Drop(n) if n.len() == 2));
        assert!(matches!(&q.stages[5], Stage::Keep(n) if n[1].only.is_some()));
        let Stage::LineFormat(parts) = &q.stages[6] else {
            panic!()
        };
        assert_eq!(
            parts,
            &vec![
                FormatPart::Label("status".into()),
                FormatPart::Text(" ".into()),
                FormatPart::Label("path".into()),
                FormatPart::Text("!".into()),
            ]
        );
        assert!(!q.only_line_filters());
        let q = log(r#"{a="b"} | json code="response.status", first="items[0].id", x"#);
        let Stage::Json(p) = &q.stages[0] else {
            panic!()
        };
        assert_eq!(
            p[0].1,
            vec![
                PathPart::Key("response".into()),
                PathPart::Key("status".into())
            ]
        );
        assert_eq!(
            p[1].1,
            vec![
                PathPart::Key("items".into()),
                PathPart::Index(0),
                PathPart::Key("id".into())
            ]
        );
        assert_eq!(p[2].1, vec![PathPart::Key("x".into())]);
        let q = log(r#"{a="b"} | size > 20KB, size <= 1MiB"#);
        assert!(
            matches!(&q.stages[0], Stage::Label(LabelFilter::And(a, _)) if matches!(&**a, LabelFilter::Num { value, kind: NumKind::Bytes, .. } if *value == 20_000.0))
        );
    }

    #[test]
    fn metric_queries() {
        let Query::Metric(e) = parse(
            r#"sum by (level, detected_level) (count_over_time({a="b"} | drop __error__ [1m]))"#,
        )
        .unwrap() else {
            panic!()
        };
        let Expr::Agg {
            op: AggOp::Sum,
            grouping: Some(g),
            inner,
            ..
        } = e
        else {
            panic!()
        };
        assert_eq!(g.labels, vec!["level", "detected_level"]);
        assert!(matches!(
            *inner,
            Expr::Range {
                func: RangeFn::CountOverTime,
                range_ns: 60_000_000_000,
                ..
            }
        ));

        let Query::Metric(e) = parse("vector(1)+vector(1)").unwrap() else {
            panic!()
        };
        assert!(matches!(e, Expr::Binary { op: BinOp::Add, .. }));

        // Precedence: 1 + 2 * 3 ^ 2 ^ 0.5 groups as 1 + (2 * (3 ^ (2 ^ 0.5))).
        let Query::Metric(Expr::Binary {
            op: BinOp::Add,
            rhs,
            ..
        }) = parse("1 + 2 * 3 ^ 2 ^ 0.5").unwrap()
        else {
            panic!()
        };
        let Expr::Binary {
            op: BinOp::Mul,
            rhs,
            ..
        } = *rhs
        else {
            panic!()
        };
        let Expr::Binary {
            op: BinOp::Pow,
            rhs,
            ..
        } = *rhs
        else {
            panic!()
        };
        assert!(matches!(*rhs, Expr::Binary { op: BinOp::Pow, .. }));

        for q in [
            r#"topk(3, sum by (host) (rate({a="b"} |= "x" [5m])))"#,
            r#"sum(bytes_rate({a="b"}[30s])) without (source)"#,
            r#"avg(bytes_over_time(({a="b"} | json)[1h30m] offset 5m))"#,
            r#"count_over_time({a="b"}[5m] |= "x") > bool 10"#,
            r#"max(count_over_time({a="b"}[15000ms])) / 2 - -1"#,
            r#"absent_over_time({a="b"}[5m]) or vector(0)"#,
        ] {
            assert!(
                matches!(parse(q), Ok(Query::Metric(_))),
                "{q}: {:?}",
                parse(q)
            );
        }
    }

    #[test]
    fn durations_and_sizes() {
        let Query::Metric(Expr::Range { range_ns, .. }) = parse(r#"rate({a="b"}[1h30m])"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(range_ns, 5_400_000_000_000);
    }

    #[test]
    fn errors_point_at_the_problem() {
        let cases = [
            (r#"{host="a" |= "x""#, 10, "expected `,` or `}`"),
            (r#"{host="a"} |= error"#, 14, "expected a quoted pattern"),
            (r#"{host=~"("}"#, 7, "invalid regular expression"),
            (r#"{host=~"web1)|(?:.+"}"#, 7, "invalid regular expression"),
            (r#"{host="a"} |= "x"#, 14, "unterminated string"),
            (r#"{host=""}"#, 0, "at least one matcher"),
            (r#"{host="a"} $ x"#, 11, "unexpected character"),
            ("", 0, "empty query"),
            ("count_over_time({a=\"b\"})", 23, "a range such as [5m]"),
            ("count_over_time({a=\"b\"}[5x])", 25, "unknown unit"),
            ("sum(count_over_time({a=\"b\"}[5m])", 32, "expected `)`"),
            ("frobnicate(1)", 0, "unknown function"),
            ("sum({a=\"b\"})", 4, "log query cannot be used here"),
            (r#"{a="b"} | status >"#, 18, "expected a number"),
            (
                r#"{a="b"} | unwrap x"#,
                10,
                "only valid inside a range function",
            ),
            (r#"{a="b"} | regexp "(?P<x>.)""#, 10, "not supported"),
            (
                r#"{a="b"} | line_format "{{.a}} {{ if }}""#,
                30,
                "only `{{.label}}`",
            ),
            ("topk(x, vector(1))", 5, "number of series"),
            ("1 +", 3, "expected an expression"),
            (r#"{a="b"} {c="d"}"#, 8, "pipeline stage"),
        ];
        for (q, pos, msg) in cases {
            let e = parse(q).unwrap_err();
            assert_eq!(e.pos, pos, "{q}: {e}");
            assert!(e.message.contains(msg), "{q}: {e}");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        for q in [
            format!("{}1{}", "(".repeat(200), ")".repeat(200)),
            format!("{}1", "-".repeat(100_000)),
            format!("1{}", "^1".repeat(100_000)),
            format!("{{a=\"b\"}} | {}x=\"y\"", "(".repeat(100_000)),
        ] {
            assert!(parse(&q).unwrap_err().message.contains("nested too deeply"));
        }
    }
}
