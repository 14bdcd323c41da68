//! A LogQL parser. This version understands log queries: a stream selector
//! (`{name="v", name!="v", name=~"re", name!~"re"}`) followed by line filters
//! (`|= "s"`, `!= "s"`, `|~ "re"`, `!~ "re"`). The grammar is recursive descent over a
//! small lexer, so pipeline stages and metric queries extend it without a rewrite.
//! Errors carry the byte position they point at.

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

/// One label matcher of a stream selector.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// Compiled, fully anchored, for `=~` and `!~`.
    pub regex: Option<Regex>,
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
}

/// A line filter.
#[derive(Clone, Debug)]
pub struct LineFilter {
    pub op: FilterOp,
    pub pattern: String,
    /// Compiled for `|~` and `!~` (unanchored, as in LogQL).
    pub regex: Option<regex::bytes::Regex>,
}

impl LineFilter {
    /// Whether `line` passes the filter.
    pub fn matches(&self, line: &[u8]) -> bool {
        match self.op {
            FilterOp::Contains => memmem(line, self.pattern.as_bytes()),
            FilterOp::NotContains => !memmem(line, self.pattern.as_bytes()),
            FilterOp::Re => self.regex.as_ref().is_some_and(|r| r.is_match(line)),
            FilterOp::NotRe => !self.regex.as_ref().is_some_and(|r| r.is_match(line)),
        }
    }
}

fn memmem(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// A log query: which streams, and which of their lines.
#[derive(Clone, Debug)]
pub struct LogQuery {
    pub matchers: Vec<Matcher>,
    pub filters: Vec<LineFilter>,
}

/// Any query this version understands.
#[derive(Clone, Debug)]
pub enum Query {
    Log(LogQuery),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    LBrace,
    RBrace,
    Comma,
    Ident(String),
    Str(String),
    Eq,
    Ne,
    Re,
    Nre,
    PipeEq,
    PipeRe,
    Pipe,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::LBrace => "`{`".into(),
            Tok::RBrace => "`}`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string \"{s}\""),
            Tok::Eq => "`=`".into(),
            Tok::Ne => "`!=`".into(),
            Tok::Re => "`=~`".into(),
            Tok::Nre => "`!~`".into(),
            Tok::PipeEq => "`|=`".into(),
            Tok::PipeRe => "`|~`".into(),
            Tok::Pipe => "`|`".into(),
            Tok::Eof => "end of query".into(),
        }
    }
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn err(&self, pos: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            pos,
            message: message.into(),
        }
    }

    fn next(&mut self) -> Result<(usize, Tok), ParseError> {
        let b = self.src.as_bytes();
        while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        let start = self.pos;
        let Some(&c) = b.get(self.pos) else {
            return Ok((start, Tok::Eof));
        };
        let two = b.get(self.pos + 1).copied();
        let (tok, len) = match (c, two) {
            (b'{', _) => (Tok::LBrace, 1),
            (b'}', _) => (Tok::RBrace, 1),
            (b',', _) => (Tok::Comma, 1),
            (b'=', Some(b'~')) => (Tok::Re, 2),
            (b'=', _) => (Tok::Eq, 1),
            (b'!', Some(b'=')) => (Tok::Ne, 2),
            (b'!', Some(b'~')) => (Tok::Nre, 2),
            (b'|', Some(b'=')) => (Tok::PipeEq, 2),
            (b'|', Some(b'~')) => (Tok::PipeRe, 2),
            (b'|', _) => (Tok::Pipe, 1),
            (b'"', _) => return self.string().map(|s| (start, Tok::Str(s))),
            (b'`', _) => {
                let end = self.src[start + 1..]
                    .find('`')
                    .ok_or_else(|| self.err(start, "unterminated raw string"))?;
                self.pos = start + 1 + end + 1;
                return Ok((
                    start,
                    Tok::Str(self.src[start + 1..start + 1 + end].to_owned()),
                ));
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
                return Err(self.err(start, format!("unexpected character `{ch}`")));
            }
        };
        self.pos += len;
        Ok((start, tok))
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
                    Some((j, other)) => {
                        return Err(self.err(start + 1 + j, format!("unknown escape `\\{other}`")));
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(self.err(start, "unterminated string"))
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    peeked: Option<(usize, Tok)>,
}

impl<'a> Parser<'a> {
    fn peek(&mut self) -> Result<&(usize, Tok), ParseError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lex.next()?);
        }
        Ok(self.peeked.as_ref().expect("just filled"))
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
            Err(ParseError {
                pos,
                message: format!("expected {what}, found {}", t.describe()),
            })
        }
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
                    return Err(ParseError {
                        pos,
                        message: format!("expected a label name, found {}", other.describe()),
                    })
                }
            };
            let (op_pos, op) = self.bump()?;
            let op = match op {
                Tok::Eq => MatchOp::Eq,
                Tok::Ne => MatchOp::Ne,
                Tok::Re => MatchOp::Re,
                Tok::Nre => MatchOp::Nre,
                other => {
                    return Err(ParseError {
                        pos: op_pos,
                        message: format!(
                            "expected `=`, `!=`, `=~` or `!~` after `{name}`, found {}",
                            other.describe()
                        ),
                    })
                }
            };
            let (vpos, v) = self.bump()?;
            let Tok::Str(value) = v else {
                return Err(ParseError {
                    pos: vpos,
                    message: format!("expected a quoted value, found {}", v.describe()),
                });
            };
            let regex = match op {
                MatchOp::Re | MatchOp::Nre => {
                    // Validate the pattern on its own first, so text such as `a)|(.*` cannot
                    // close the anchoring group around it.
                    let invalid = |e: regex::Error| ParseError {
                        pos: vpos,
                        message: format!("invalid regular expression: {e}"),
                    };
                    Regex::new(&value).map_err(invalid)?;
                    Some(Regex::new(&format!("^(?:{value})$")).map_err(invalid)?)
                }
                _ => None,
            };
            matchers.push(Matcher {
                name,
                op,
                value,
                regex,
            });
            let (pos, t) = self.bump()?;
            match t {
                Tok::Comma => {}
                Tok::RBrace => break,
                other => {
                    return Err(ParseError {
                        pos,
                        message: format!("expected `,` or `}}`, found {}", other.describe()),
                    })
                }
            }
        }
        if !matchers.iter().any(|m| !m.matches(Some(""))) {
            return Err(ParseError {
                pos: open,
                message: "a stream selector needs at least one matcher that does not match the empty value, e.g. {host=\"web1\"}".into(),
            });
        }
        Ok(matchers)
    }

    fn filters(&mut self) -> Result<Vec<LineFilter>, ParseError> {
        let mut out = Vec::new();
        loop {
            let (pos, t) = self.peek()?.clone();
            let op = match t {
                Tok::PipeEq => FilterOp::Contains,
                Tok::Ne => FilterOp::NotContains,
                Tok::PipeRe => FilterOp::Re,
                Tok::Nre => FilterOp::NotRe,
                Tok::Eof => return Ok(out),
                Tok::Pipe => {
                    return Err(ParseError {
                        pos,
                        message: "pipeline stages (`| json`, `| logfmt`, label filters) are not supported by this aggregator version".into(),
                    })
                }
                other => {
                    return Err(ParseError {
                        pos,
                        message: format!("expected a line filter (`|=`, `!=`, `|~`, `!~`) or the end of the query, found {}", other.describe()),
                    })
                }
            };
            self.bump()?;
            let (vpos, v) = self.bump()?;
            let Tok::Str(pattern) = v else {
                return Err(ParseError {
                    pos: vpos,
                    message: format!("expected a quoted pattern, found {}", v.describe()),
                });
            };
            let regex = match op {
                FilterOp::Re | FilterOp::NotRe => {
                    Some(regex::bytes::Regex::new(&pattern).map_err(|e| ParseError {
                        pos: vpos,
                        message: format!("invalid regular expression: {e}"),
                    })?)
                }
                _ => None,
            };
            out.push(LineFilter { op, pattern, regex });
        }
    }
}

/// Parses a query.
///
/// # Errors
/// [`ParseError`] with the position of the first problem.
pub fn parse(src: &str) -> Result<Query, ParseError> {
    let mut p = Parser {
        lex: Lexer { src, pos: 0 },
        peeked: None,
    };
    let (pos, t) = p.peek()?.clone();
    match t {
        Tok::LBrace => {
            let matchers = p.selector()?;
            let filters = p.filters()?;
            Ok(Query::Log(LogQuery { matchers, filters }))
        }
        Tok::Eof => Err(ParseError {
            pos,
            message: "empty query".into(),
        }),
        other => Err(ParseError {
            pos,
            message: format!(
                "expected a stream selector such as {{host=\"web1\"}}, found {} (metric queries are not supported by this aggregator version)",
                other.describe()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(q: &str) -> LogQuery {
        match parse(q).unwrap() {
            Query::Log(l) => l,
        }
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
        assert_eq!(q.filters.len(), 4);
        let line = b"ERROR error: request timeout";
        assert!(q.filters[0].matches(line));
        assert!(q.filters[1].matches(line));
        assert!(q.filters[2].matches(line));
        assert!(q.filters[3].matches(line));
        assert!(!q.filters[3].matches(b"GET /"));
    }

    #[test]
    fn escapes_in_strings() {
        let q = log(r#"{a="x\"y\\z"} |= "tab\there""#);
        assert_eq!(q.matchers[0].value, "x\"y\\z");
        assert_eq!(q.filters[0].pattern, "tab\there");
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
            (r#"{host="a"} # x"#, 11, "unexpected character"),
            ("", 0, "empty query"),
            ("count_over_time({a=\"b\"}[5m])", 0, "metric queries"),
            (r#"{host="a"} | json"#, 11, "not supported"),
        ];
        for (q, pos, msg) in cases {
            let e = parse(q).unwrap_err();
            assert_eq!(e.pos, pos, "{q}: {e}");
            assert!(e.message.contains(msg), "{q}: {e}");
        }
    }
}
