//! Parsing: the event time and the level of a record, from the record itself.
//!
//! Owns format detection (JSON objects, logfmt, plain text), timestamp extraction (RFC
//! 3339 and ISO 8601 variants, RFC 3164/5424 syslog, nginx and Apache access and error
//! logs, Go and glog prefixes, epoch seconds/milliseconds/microseconds/nanoseconds) and
//! level extraction (many spellings, syslog `<PRI>`, numeric syslog and pino/bunyan
//! levels). Does not own labels or the message bytes: the line is never rewritten.
//!
//! # Performance
//! Everything is a single forward scan of the first bytes of the line without
//! allocation: JSON is scanned for top-level keys, not deserialised; plain text is
//! scanned for a timestamp at the start and a level word among the first tokens.

use heimdall_common::record::Level;

/// How far into a plain-text line a level word is looked for.
const LEVEL_SCAN: usize = 160;
/// How far into a plain-text line a timestamp may start (after a host, an IP, a PID…).
const TIME_SCAN: usize = 96;
/// Event times further than this ahead of the observed time are not believed.
const MAX_FUTURE_NS: i64 = 24 * 3600 * 1_000_000_000;
/// Event times before 2000-01-01 are not believed (a counter, a PID, a byte count).
const MIN_TIME_NS: i64 = 946_684_800 * 1_000_000_000;

/// Which formats to detect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON objects, then logfmt, then plain text.
    Auto,
    /// Only JSON objects; other lines get no time or level.
    Json,
    /// Only logfmt.
    Logfmt,
    /// Only plain-text prefixes.
    Text,
    /// No parsing: observed time and unknown level.
    None,
}

/// The parsing settings of one source.
#[derive(Clone, Copy, Debug)]
pub struct Parser {
    pub format: Format,
    /// Offset applied to timestamps that carry none (seconds east of UTC).
    pub utc_offset_s: i32,
}

impl Default for Parser {
    fn default() -> Parser {
        Parser {
            format: Format::Auto,
            utc_offset_s: 0,
        }
    }
}

/// What parsing found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Event time in ns since the Unix epoch, when the line carries one.
    pub time_ns: Option<i64>,
    pub level: Level,
}

impl Parser {
    /// Parses `line`, observed at `observed_ns` (used to complete year-less syslog
    /// dates and to reject absurd times).
    pub fn parse(&self, line: &[u8], observed_ns: i64) -> Parsed {
        let mut p = match self.format {
            Format::None => return Parsed::default(),
            Format::Json => json(line, self),
            Format::Logfmt => logfmt(line, self),
            Format::Text => text(line, self, observed_ns),
            Format::Auto => {
                let t = trim_start(line);
                if t.first() == Some(&b'{') {
                    if let Some(p) = json_opt(line, self) {
                        p
                    } else {
                        text(line, self, observed_ns)
                    }
                } else if looks_logfmt(line) {
                    let p = logfmt(line, self);
                    if p.time_ns.is_none() || p.level == Level::Unknown {
                        let t = text(line, self, observed_ns);
                        Parsed {
                            time_ns: p.time_ns.or(t.time_ns),
                            level: if p.level == Level::Unknown {
                                t.level
                            } else {
                                p.level
                            },
                        }
                    } else {
                        p
                    }
                } else {
                    text(line, self, observed_ns)
                }
            }
        };
        if let Some(t) = p.time_ns {
            if !(MIN_TIME_NS..=observed_ns.saturating_add(MAX_FUTURE_NS)).contains(&t) {
                p.time_ns = None;
            }
        }
        p
    }
}

// ---------------------------------------------------------------------------------
// Levels

/// Normalises a level name: `ERROR`, `err`, `Warning`, `W`, `crit`, `notice`, `5`…
/// Single letters are accepted only in upper case (`I`, `W`, `E`, `F`, `D`, `T`).
pub fn level_from_name(s: &[u8]) -> Option<Level> {
    if s.len() == 1 {
        return match s[0] {
            b'T' => Some(Level::Trace),
            b'D' => Some(Level::Debug),
            b'I' | b'N' => Some(Level::Info),
            b'W' => Some(Level::Warn),
            b'E' => Some(Level::Error),
            b'F' | b'C' => Some(Level::Fatal),
            b'0'..=b'7' => level_from_syslog(s[0] - b'0'),
            _ => None,
        };
    }
    if s.len() > 11 {
        return None;
    }
    let mut buf = [0u8; 11];
    for (d, c) in buf.iter_mut().zip(s) {
        *d = c.to_ascii_lowercase();
    }
    Some(match &buf[..s.len()] {
        b"trace" | b"trc" | b"finest" | b"finer" | b"verbose" | b"vrb" => Level::Trace,
        b"debug" | b"dbg" | b"debu" | b"fine" | b"config" => Level::Debug,
        b"info" | b"inf" | b"information" | b"informational" | b"notice" | b"note" => Level::Info,
        b"warn" | b"warning" | b"wrn" | b"wrng" => Level::Warn,
        b"error" | b"err" | b"erro" | b"eror" | b"severe" | b"failure" => Level::Error,
        b"fatal" | b"critical" | b"crit" | b"crt" | b"ftl" | b"alert" | b"emerg" | b"emergency"
        | b"panic" | b"dpanic" => Level::Fatal,
        _ => return None,
    })
}

/// Maps a syslog severity (0 emerg … 7 debug).
pub fn level_from_syslog(sev: u8) -> Option<Level> {
    Some(match sev {
        0..=2 => Level::Fatal,
        3 => Level::Error,
        4 => Level::Warn,
        5 | 6 => Level::Info,
        7 => Level::Debug,
        _ => return None,
    })
}

/// A numeric level in a structured field: syslog severities 0–7, or pino/bunyan's
/// 10 trace … 60 fatal.
fn level_from_number(n: i64) -> Option<Level> {
    match n {
        0..=7 => level_from_syslog(n as u8),
        10 => Some(Level::Trace),
        20 => Some(Level::Debug),
        30 => Some(Level::Info),
        40 => Some(Level::Warn),
        50 => Some(Level::Error),
        60 => Some(Level::Fatal),
        _ => None,
    }
}

fn is_level_key(k: &[u8]) -> bool {
    matches!(
        k,
        b"level"
            | b"lvl"
            | b"severity"
            | b"loglevel"
            | b"log_level"
            | b"log.level"
            | b"levelname"
            | b"level_name"
            | b"priority"
            | b"PRIORITY"
            | b"Level"
            | b"Severity"
            | b"LEVEL"
            | b"SEVERITY"
            | b"@l"
            | b"l"
            | b"s"
    )
}

fn is_time_key(k: &[u8]) -> bool {
    matches!(
        k,
        b"time"
            | b"timestamp"
            | b"ts"
            | b"@timestamp"
            | b"@t"
            | b"t"
            | b"datetime"
            | b"date"
            | b"Time"
            | b"Timestamp"
            | b"TIME"
            | b"TIMESTAMP"
            | b"eventTime"
            | b"event_time"
            | b"time_local"
            | b"asctime"
    )
}

fn level_from_value(v: &[u8], quoted: bool) -> Option<Level> {
    if !quoted {
        if let Some(n) = parse_int(v) {
            return level_from_number(n);
        }
    }
    level_from_name(v)
}

// ---------------------------------------------------------------------------------
// JSON

fn json(line: &[u8], p: &Parser) -> Parsed {
    json_opt(line, p).unwrap_or_default()
}

/// Scans the top-level members of a JSON object; `None` if it is not one.
fn json_opt(line: &[u8], p: &Parser) -> Option<Parsed> {
    let mut s = Scanner { b: line, i: 0 };
    s.ws();
    if !s.eat(b'{') {
        return None;
    }
    let mut out = Parsed::default();
    let mut have_level = false;
    s.ws();
    if s.eat(b'}') {
        return s.end().then_some(out);
    }
    loop {
        s.ws();
        let (key, _) = s.string()?;
        s.ws();
        if !s.eat(b':') {
            return None;
        }
        s.ws();
        let (val, quoted) = s.value()?;
        if !have_level && is_level_key(key) {
            if let Some(l) = level_from_value(val, quoted) {
                out.level = l;
                have_level = true;
            }
        } else if out.time_ns.is_none() && is_time_key(key) {
            out.time_ns = if quoted {
                parse_time_prefix(val, p.utc_offset_s)
                    .filter(|&(_, n)| n == val.len())
                    .map(|(t, _)| t)
            } else {
                parse_int(val).and_then(epoch_to_ns).or_else(|| {
                    parse_epoch_decimal(val)
                        .filter(|&(_, n)| n == val.len())
                        .map(|(t, _)| t)
                })
            };
        }
        s.ws();
        if s.eat(b',') {
            continue;
        }
        if s.eat(b'}') {
            return s.end().then_some(out);
        }
        return None;
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while self
            .b
            .get(self.i)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
        {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn end(&mut self) -> bool {
        self.ws();
        self.i == self.b.len()
    }

    /// A string's raw contents (escapes left as they are).
    fn string(&mut self) -> Option<(&'a [u8], bool)> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.i;
        loop {
            let rel = memchr::memchr2(b'"', b'\\', &self.b[self.i..])?;
            self.i += rel;
            if self.b[self.i] == b'\\' {
                self.i += 2;
                if self.i > self.b.len() {
                    return None;
                }
            } else {
                let s = &self.b[start..self.i];
                self.i += 1;
                return Some((s, true));
            }
        }
    }

    /// Any value: strings give their contents, scalars their text, containers are
    /// skipped and give an empty slice.
    fn value(&mut self) -> Option<(&'a [u8], bool)> {
        match *self.b.get(self.i)? {
            b'"' => self.string(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.b.get(self.i)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some((&[], false));
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let start = self.i;
                while self.b.get(self.i).is_some_and(|c| {
                    !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
                }) {
                    self.i += 1;
                }
                (self.i > start).then(|| (&self.b[start..self.i], false))
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// logfmt

/// At least two `key=value` pairs among the first tokens.
fn looks_logfmt(line: &[u8]) -> bool {
    let mut pairs = 0;
    let mut it = LogfmtPairs { b: line, i: 0 };
    for _ in 0..4 {
        match it.next() {
            Some((k, _, _)) if !k.is_empty() => pairs += 1,
            _ => break,
        }
    }
    pairs >= 2
}

fn logfmt(line: &[u8], p: &Parser) -> Parsed {
    let mut out = Parsed::default();
    let mut have_level = false;
    for (k, v, quoted) in (LogfmtPairs { b: line, i: 0 }) {
        if !have_level && is_level_key(k) {
            if let Some(l) = level_from_value(v, quoted) {
                out.level = l;
                have_level = true;
            }
        } else if out.time_ns.is_none() && is_time_key(k) {
            out.time_ns = parse_time_prefix(v, p.utc_offset_s)
                .filter(|&(_, n)| n == v.len())
                .map(|(t, _)| t)
                .or_else(|| parse_int(v).and_then(epoch_to_ns));
        }
        if have_level && out.time_ns.is_some() {
            break;
        }
    }
    out
}

/// `key=value` pairs; stops at the first token that is not one.
struct LogfmtPairs<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Iterator for LogfmtPairs<'a> {
    /// (key, value, quoted)
    type Item = (&'a [u8], &'a [u8], bool);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.b;
        while b.get(self.i) == Some(&b' ') {
            self.i += 1;
        }
        let ks = self.i;
        while b.get(self.i).is_some_and(|&c| {
            c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'@' | b'/')
        }) {
            self.i += 1;
        }
        if self.i == ks || b.get(self.i) != Some(&b'=') {
            return None;
        }
        let key = &b[ks..self.i];
        self.i += 1;
        if b.get(self.i) == Some(&b'"') {
            self.i += 1;
            let vs = self.i;
            loop {
                match b.get(self.i)? {
                    b'\\' => self.i += 2,
                    b'"' => break,
                    _ => self.i += 1,
                }
            }
            let v = &b[vs..self.i.min(b.len())];
            self.i += 1;
            Some((key, v, true))
        } else {
            let vs = self.i;
            while b.get(self.i).is_some_and(|&c| c != b' ') {
                self.i += 1;
            }
            Some((key, &b[vs..self.i], false))
        }
    }
}

// ---------------------------------------------------------------------------------
// Plain text

fn text(line: &[u8], p: &Parser, observed_ns: i64) -> Parsed {
    let mut out = Parsed::default();
    let mut b = line;
    // Syslog priority: `<34>` (RFC 3164 and 5424).
    if b.first() == Some(&b'<') {
        if let Some(end) = b.iter().take(5).position(|&c| c == b'>') {
            if let Some(pri) = parse_int(&b[1..end]).filter(|&n| (0..=191).contains(&n)) {
                out.level = level_from_syslog((pri & 7) as u8).unwrap_or_default();
                b = &b[end + 1..];
                // RFC 5424 version digit.
                if b.len() > 2 && b[0].is_ascii_digit() && b[1] == b' ' {
                    b = &b[2..];
                }
            }
        }
    }
    out.time_ns = find_time(b, p, observed_ns);
    if out.level == Level::Unknown {
        out.level = find_level(b);
    }
    out
}

/// A timestamp at the start of the line, or right after a few leading tokens (an
/// address, a host, a `[`).
fn find_time(b: &[u8], p: &Parser, observed_ns: i64) -> Option<i64> {
    let limit = b.len().min(TIME_SCAN);
    let mut i = 0;
    while i < limit {
        let c = b[i];
        if c.is_ascii_digit() || c.is_ascii_uppercase() {
            let rest = &b[i..];
            if let Some((t, _)) = parse_time_prefix(rest, p.utc_offset_s) {
                return Some(t);
            }
            if let Some(t) = syslog_date(rest, p.utc_offset_s, observed_ns) {
                return Some(t);
            }
            if let Some(t) = clf_date(rest) {
                return Some(t);
            }
            if let Some(t) = glog_date(rest, p.utc_offset_s, observed_ns) {
                return Some(t);
            }
            if i == 0 {
                if let Some((t, _)) = parse_epoch_decimal(rest) {
                    return Some(t);
                }
            }
        }
        // Skip to the start of the next token.
        while i < limit && !matches!(b[i], b' ' | b'[' | b'(' | b'"' | b'=' | b'\t') {
            i += 1;
        }
        while i < limit && matches!(b[i], b' ' | b'[' | b'(' | b'"' | b'=' | b'\t') {
            i += 1;
        }
    }
    None
}

/// The first token among the first bytes that names a level: `ERROR`, `[warn]`,
/// `level=info`, `<E>`, `E0102` (glog). Lower-case words count only when they are
/// bracketed or followed by `:` (`error:`), so that prose ("no error found") is not
/// taken for a level.
fn find_level(b: &[u8]) -> Level {
    let b = &b[..b.len().min(LEVEL_SCAN)];
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && !b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let word = &b[s..i];
        let before = if s > 0 { b[s - 1] } else { b' ' };
        let after = b.get(i).copied().unwrap_or(b' ');
        // glog: `I0102 15:04:05.000000`.
        if s == 0 && word.len() == 1 && after.is_ascii_digit() && b.len() > 5 {
            if let Some(l) = level_from_name(word) {
                if b[1..5].iter().all(u8::is_ascii_digit) {
                    return l;
                }
            }
        }
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if word.len() < 2 || after.is_ascii_digit() {
            // Single letters are too ambiguous in prose, except bracketed: `[W]`.
            if word.len() == 1 && matches!((before, after), (b'[', b']') | (b'<', b'>')) {
                if let Some(l) = level_from_name(word) {
                    return l;
                }
            }
            continue;
        }
        let upper = word.iter().all(|c| c.is_ascii_uppercase());
        let capital = word[0].is_ascii_uppercase() && word[1..].iter().all(u8::is_ascii_lowercase);
        let marked = matches!((before, after), (b'[', b']') | (b'<', b'>') | (b'(', b')'))
            || after == b':'
            || before == b'=';
        if upper || marked || (capital && after == b' ' && s == 0) {
            if let Some(l) = level_from_name(word) {
                return l;
            }
        }
    }
    Level::Unknown
}

// ---------------------------------------------------------------------------------
// Timestamps

/// ISO 8601 / RFC 3339 at the start of `b`: `2024-01-02T03:04:05[.fff][Z|±hh:mm]`, also
/// with a space or `_` instead of `T`, `,` instead of `.` (log4j), `/` instead of `-`
/// (nginx error log), and without seconds' fraction. Returns the time and the length.
pub fn parse_time_prefix(b: &[u8], naive_offset_s: i32) -> Option<(i64, usize)> {
    if b.len() < 19 {
        return None;
    }
    let sep = b[4];
    if !(sep == b'-' || sep == b'/') || b[7] != sep {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    if !matches!(b[10], b'T' | b' ' | b'_' | b't') {
        return None;
    }
    let hour = digits(b, 11, 2)?;
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let min = digits(b, 14, 2)?;
    let sec = digits(b, 17, 2)?;
    let mut i = 19;
    let mut nanos = 0i64;
    if i < b.len() && matches!(b[i], b'.' | b',') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i += 1;
        let mut scale = 100_000_000i64;
        while i < b.len() && b[i].is_ascii_digit() {
            nanos += (b[i] - b'0') as i64 * scale;
            scale /= 10;
            i += 1;
        }
    }
    let mut offset = naive_offset_s as i64;
    match b.get(i) {
        Some(b'Z') | Some(b'z') => {
            offset = 0;
            i += 1;
        }
        Some(b'+') | Some(b'-') => {
            if let Some((o, n)) = parse_offset(&b[i..]) {
                offset = o;
                i += n;
            }
        }
        Some(b' ') => {
            // `2024-01-02 03:04:05 +0000` or ` UTC`.
            if let Some((o, n)) = parse_offset(&b[i + 1..]) {
                offset = o;
                i += 1 + n;
            } else if b[i + 1..].starts_with(b"UTC") || b[i + 1..].starts_with(b"GMT") {
                offset = 0;
                i += 4;
            }
        }
        _ => {}
    }
    let t = civil_to_ns(year, month, day, hour, min, sec)? - offset * 1_000_000_000 + nanos;
    Some((t, i))
}

/// `+hh:mm`, `+hhmm` or `+hh`; (seconds east, length).
fn parse_offset(b: &[u8]) -> Option<(i64, usize)> {
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let h = digits(b, 1, 2)?;
    let (m, n) = if b.get(3) == Some(&b':') {
        (digits(b, 4, 2)?, 6)
    } else if let Some(m) = digits(b, 3, 2) {
        (m, 5)
    } else {
        (0, 3)
    };
    if h > 23 || m > 59 {
        return None;
    }
    Some((sign * (h * 3600 + m * 60), n))
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

fn month_from_name(b: &[u8]) -> Option<i64> {
    let m = b.get(..3)?;
    MONTHS
        .iter()
        .position(|n| n[..] == *m)
        .map(|i| i as i64 + 1)
}

/// RFC 3164: `Jan  2 03:04:05` (no year: the year that puts it closest before the
/// observed time).
fn syslog_date(b: &[u8], naive_offset_s: i32, observed_ns: i64) -> Option<i64> {
    if b.len() < 15 || b[3] != b' ' {
        return None;
    }
    let month = month_from_name(b)?;
    let day = if b[4] == b' ' {
        digits(b, 5, 1)?
    } else {
        digits(b, 4, 2)?
    };
    if b[6] != b' ' || b[9] != b':' || b[12] != b':' {
        return None;
    }
    let hour = digits(b, 7, 2)?;
    let min = digits(b, 10, 2)?;
    let sec = digits(b, 13, 2)?;
    let mut nanos = 0;
    if b.get(15) == Some(&b'.') {
        let mut scale = 100_000_000i64;
        for &c in b[16..].iter().take_while(|c| c.is_ascii_digit()) {
            nanos += (c - b'0') as i64 * scale;
            scale /= 10;
        }
    }
    with_guessed_year(month, day, hour, min, sec, naive_offset_s, observed_ns).map(|t| t + nanos)
}

/// glog/klog: `I0102 15:04:05.123456` (level letter, month, day; no year).
fn glog_date(b: &[u8], naive_offset_s: i32, observed_ns: i64) -> Option<i64> {
    if b.len() < 14 || !matches!(b[0], b'I' | b'W' | b'E' | b'F') || b[5] != b' ' {
        return None;
    }
    let month = digits(b, 1, 2)?;
    let day = digits(b, 3, 2)?;
    if b[8] != b':' || b[11] != b':' {
        return None;
    }
    let hour = digits(b, 6, 2)?;
    let min = digits(b, 9, 2)?;
    let sec = digits(b, 12, 2)?;
    with_guessed_year(month, day, hour, min, sec, naive_offset_s, observed_ns)
}

fn with_guessed_year(
    month: i64,
    day: i64,
    hour: i64,
    min: i64,
    sec: i64,
    naive_offset_s: i32,
    observed_ns: i64,
) -> Option<i64> {
    let year = civil_from_days(observed_ns.div_euclid(86_400 * 1_000_000_000)).0;
    let off = naive_offset_s as i64 * 1_000_000_000;
    let t = civil_to_ns(year, month, day, hour, min, sec)? - off;
    if t > observed_ns + MAX_FUTURE_NS {
        civil_to_ns(year - 1, month, day, hour, min, sec).map(|t| t - off)
    } else {
        Some(t)
    }
}

/// Common log format (nginx, Apache): `10/Oct/2000:13:55:36 -0700`.
fn clf_date(b: &[u8]) -> Option<i64> {
    if b.len() < 26 || b[2] != b'/' || b[6] != b'/' || b[11] != b':' || b[20] != b' ' {
        return None;
    }
    let day = digits(b, 0, 2)?;
    let month = month_from_name(&b[3..])?;
    let year = digits(b, 7, 4)?;
    let hour = digits(b, 12, 2)?;
    let min = digits(b, 15, 2)?;
    let sec = digits(b, 18, 2)?;
    let (off, _) = parse_offset(&b[21..])?;
    Some(civil_to_ns(year, month, day, hour, min, sec)? - off * 1_000_000_000)
}

/// `1700000000`, `1700000000.123`, `1700000000123` (ms), µs, ns at the start of a line.
fn parse_epoch_decimal(b: &[u8]) -> Option<(i64, usize)> {
    let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if !matches!(int_len, 10 | 13 | 16 | 19) {
        return None;
    }
    let next = b.get(int_len).copied();
    if next.is_some_and(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let whole = parse_int(&b[..int_len])?;
    let mut t = epoch_to_ns(whole)?;
    let mut n = int_len;
    if int_len == 10 && next == Some(b'.') {
        let mut scale = 100_000_000i64;
        n += 1;
        while n < b.len() && b[n].is_ascii_digit() {
            t = t.checked_add((b[n] - b'0') as i64 * scale)?;
            scale /= 10;
            n += 1;
        }
    }
    Some((t, n))
}

/// An integer epoch in s, ms, µs or ns, told apart by magnitude.
fn epoch_to_ns(v: i64) -> Option<i64> {
    match v {
        1_000_000_000..=9_999_999_999 => v.checked_mul(1_000_000_000),
        1_000_000_000_000..=9_999_999_999_999 => v.checked_mul(1_000_000),
        1_000_000_000_000_000..=9_999_999_999_999_999 => v.checked_mul(1_000),
        1_000_000_000_000_000_000..=i64::MAX => Some(v),
        _ => None,
    }
}

fn parse_int(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    let mut v: i64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as i64)?;
    }
    Some(v)
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let s = b.get(at..at + n)?;
    let mut v = 0i64;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as i64;
    }
    Some(v)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn civil_to_ns(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    if !(1970..=2200).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || s > 60
    {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(((days * 24 + h) * 60 + mi) * 60 * 1_000_000_000 + s * 1_000_000_000)
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-03-05T06:07:08Z
    const T0: i64 = 1_709_618_828 * 1_000_000_000;
    const OBS: i64 = 1_709_700_000 * 1_000_000_000;

    fn p(line: &str) -> Parsed {
        Parser::default().parse(line.as_bytes(), OBS)
    }

    #[test]
    fn rfc3339_variants() {
        for (s, want) in [
            ("2024-03-05T06:07:08Z hello", T0),
            ("2024-03-05T06:07:08.250Z x", T0 + 250_000_000),
            ("2024-03-05T07:07:08+01:00 x", T0),
            ("2024-03-05T01:07:08-0500 x", T0),
            ("2024-03-05 06:07:08,5 INFO x", T0 + 500_000_000),
            ("2024/03/05 06:07:08 [error] 12#0: boom", T0),
            ("2024-03-05 06:07:08 UTC x", T0),
        ] {
            assert_eq!(p(s).time_ns, Some(want), "{s}");
        }
    }

    #[test]
    fn syslog_nginx_epoch_and_glog() {
        assert_eq!(
            p("Mar  5 06:07:08 web1 sshd[12]: Accepted").time_ns,
            Some(T0)
        );
        assert_eq!(p("<34>Mar  5 06:07:08 web1 su: bad").level, Level::Fatal);
        let l = p("<165>1 2024-03-05T06:07:08.000Z host app 1 ID47 - msg");
        assert_eq!((l.time_ns, l.level), (Some(T0), Level::Info));
        let n = p(r#"10.0.0.1 - - [05/Mar/2024:07:07:08 +0100] "GET / HTTP/1.1" 200 612"#);
        assert_eq!(n.time_ns, Some(T0));
        assert_eq!(p("1709618828.5 started").time_ns, Some(T0 + 500_000_000));
        assert_eq!(p("1709618828000 started").time_ns, Some(T0));
        let g = p("E0305 06:07:08.123456    1 main.go:10] failed");
        assert_eq!((g.time_ns, g.level), (Some(T0), Level::Error));
        // A December date seen in January belongs to last year.
        let jan = 1_704_153_600 * 1_000_000_000; // 2024-01-02
        let dec = Parser::default().parse(b"Dec 31 23:00:00 h x", jan);
        assert_eq!(dec.time_ns, Some(1_704_063_600 * 1_000_000_000));
    }

    #[test]
    fn levels_in_text() {
        for (s, want) in [
            ("2024-03-05 06:07:08 ERROR db down", Level::Error),
            ("2024-03-05 06:07:08 [warn] slow", Level::Warn),
            ("[2024-03-05 06:07:08] local.INFO: ok", Level::Info),
            ("Traceback (most recent call last):", Level::Unknown),
            ("no error found in 3 files", Level::Unknown),
            ("error: cannot open", Level::Error),
            ("Warning: disk 91% full", Level::Warn),
            ("WARNING:root:careful", Level::Warn),
            ("panic: runtime error: index out of range", Level::Fatal),
            ("2024-03-05 06:07:08 [D] cache hit", Level::Debug),
            ("  at com.example.Foo.bar(Foo.java:10)", Level::Unknown),
        ] {
            assert_eq!(p(s).level, want, "{s}");
        }
    }

    #[test]
    fn json_lines() {
        let l = p(
            r#"{"time":"2024-03-05T06:07:08Z","level":"ERROR","msg":"x","nested":{"level":"info"}}"#,
        );
        assert_eq!((l.time_ns, l.level), (Some(T0), Level::Error));
        let pino = p(r#"{"level":40,"time":1709618828000,"msg":"slow \"q\""}"#);
        assert_eq!((pino.time_ns, pino.level), (Some(T0), Level::Warn));
        let ecs = p(r#"{"@timestamp":"2024-03-05T06:07:08.000Z","log.level":"warning"}"#);
        assert_eq!((ecs.time_ns, ecs.level), (Some(T0), Level::Warn));
        let sev = p(r#"{"severity":"CRITICAL","ts":1709618828.0}"#);
        assert_eq!((sev.time_ns, sev.level), (Some(T0), Level::Fatal));
        // Not JSON after all: falls back to text.
        assert_eq!(p("{broken ERROR").level, Level::Error);
    }

    #[test]
    fn logfmt_lines() {
        let l = p(r#"ts=2024-03-05T06:07:08Z level=warn msg="disk \"sda\" slow" dur=3ms"#);
        assert_eq!((l.time_ns, l.level), (Some(T0), Level::Warn));
        let l = p("time=1709618828 lvl=eror caller=x.go:1");
        assert_eq!((l.time_ns, l.level), (Some(T0), Level::Error));
        // logfmt without a level takes the text's.
        let l = p("2024-03-05T06:07:08Z ERROR a=1 b=2");
        assert_eq!((l.time_ns, l.level), (Some(T0), Level::Error));
    }

    #[test]
    fn absurd_times_are_not_believed() {
        assert_eq!(p("1234567890123456789x").time_ns, None);
        // Epochs whose nanoseconds overflow i64 (regression: overflowed and panicked in
        // debug builds, killing the source thread).
        assert_eq!(p(r#"{"ts":9300000000}"#).time_ns, None);
        assert_eq!(p("time=9999999999999 level=info").time_ns, None);
        assert_eq!(p("9223372036.9 x").time_ns, None);
        assert_eq!(p("2199-01-01T00:00:00Z future").time_ns, None);
        assert_eq!(p("12345 pid").time_ns, None);
    }

    #[test]
    fn naive_times_take_the_configured_offset() {
        let parser = Parser {
            format: Format::Auto,
            utc_offset_s: 3600,
        };
        let got = parser.parse(b"2024-03-05 07:07:08 x", OBS).time_ns;
        assert_eq!(got, Some(T0));
    }

    #[test]
    fn civil_round_trip() {
        for d in [-1000i64, 0, 1, 19_000, 40_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}
