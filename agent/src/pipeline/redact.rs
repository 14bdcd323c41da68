//! PII redaction: finds personal data and secrets in a record and masks, pseudonymises,
//! partly keeps or drops them before the record reaches anything that leaves the host
//! (templates, aggregates, anomaly samples, the spool, the wire).
//!
//! Owns the built-in detectors, custom rules, allow-lists and the rewriting of a line.
//! Does not own configuration parsing (`config`) or where it runs (each source calls it
//! after parsing, on its own thread).
//!
//! # How a line is scanned
//! One pass per kind of anchor, never a regex per detector per line:
//! - one Aho-Corasick search (SIMD Teddy) for the literal anchors: `eyJ` (JWT), `://`
//!   (passwords in URLs), AWS key id prefixes, `-----BEGIN`, `Bearer`, and the words
//!   sensitive keys contain
//!   (`pass`, `pwd`, `secret`, `token`, `api`, `authoriz`, `ssn`, `aws`);
//! - a byte-class scan, eight bytes at a time, that stops only at digits, `+`, `(`, `:`
//!   and `@` for addresses, emails, cards, IBANs, SSNs and phone numbers. It skips words, and a number that starts inside a
//!   larger number (the `15` of `2024-01-15`) is not tried again.
//!
//! Every candidate is validated (Luhn, mod-97, SSN ranges, IP parsing, brand prefixes
//! and lengths) before it counts. Overlapping candidates are settled by priority:
//! custom rules first, then the more specific built-in type (a JWT used as a bearer
//! token is a `jwt`).
//!
//! # Versions are not addresses
//! A dotted quad is a version, not an IPv4 address, when it is the value of a key named
//! `version`, `ver`, `vsn` or `v`, or follows a User-Agent product token such as
//! `Chrome/` (a word starting with a capital letter, then `/`). Everywhere else it is an
//! address. The labeled corpus under `agent/tests/data/pii/` documents every decision
//! on look-alikes.
//!
//! # Performance
//! A line with nothing to redact is returned as it came (no copy). Counters are kept
//! per caller in [`Stats`] and flushed to metrics once per chunk, not per line.

use super::swar::{ge, word_at, zero, HIGH, ONES};
use aho_corasick::{AhoCorasick, MatchKind};
use bytes::Bytes;
use memchr::memmem;
use regex::bytes::{Regex, RegexSet};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::Ipv6Addr;

/// The built-in detectors, in priority order (earlier wins an overlap).
pub const BUILTIN: [&str; 14] = [
    "private_key",
    "jwt",
    "aws_access_key",
    "aws_secret_key",
    "url_password",
    "bearer",
    "secret",
    "email",
    "card",
    "iban",
    "ssn",
    "phone",
    "ipv6",
    "ipv4",
];

const PRIVATE_KEY: u16 = 0;
const JWT: u16 = 1;
const AWS_ACCESS_KEY: u16 = 2;
const AWS_SECRET_KEY: u16 = 3;
const URL_PASSWORD: u16 = 4;
const BEARER: u16 = 5;
const SECRET: u16 = 6;
const EMAIL: u16 = 7;
const CARD: u16 = 8;
const IBAN: u16 = 9;
const SSN: u16 = 10;
const PHONE: u16 = 11;
const IPV6: u16 = 12;
const IPV4: u16 = 13;
const N_BUILTIN: usize = BUILTIN.len();

/// What to do with a value a rule found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Replace it with `<type>`.
    Mask,
    /// Replace it with `<type:hex>`, a keyed HMAC-SHA256 of the value: the same value
    /// gives the same pseudonym on every host that shares the secret.
    Pseudonym,
    /// Keep the last four digits or characters: `<card:****1111>`.
    Partial,
    /// Discard the whole record (counted).
    Drop,
}

impl Action {
    /// Parses a configured action name.
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "mask" => Action::Mask,
            "pseudonym" => Action::Pseudonym,
            "partial" => Action::Partial,
            "drop" => Action::Drop,
            _ => return None,
        })
    }
}

/// Checks a custom rule can ask for on what its pattern matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validator {
    /// The digits pass the Luhn check (card-like numbers).
    Luhn,
    /// The value is an IBAN with a valid mod-97 check.
    Mod97,
    /// A US SSN outside the invalid ranges.
    Ssn,
    /// An IPv4 or IPv6 address.
    Ip,
}

impl Validator {
    /// Parses a configured validator name.
    pub fn parse(s: &str) -> Option<Validator> {
        Some(match s {
            "luhn" => Validator::Luhn,
            "mod97" | "iban" => Validator::Mod97,
            "ssn" => Validator::Ssn,
            "ip" => Validator::Ip,
            _ => return None,
        })
    }

    fn check(self, v: &[u8]) -> bool {
        match self {
            Validator::Luhn => {
                let d: Vec<u8> = v.iter().copied().filter(u8::is_ascii_digit).collect();
                (12..=19).contains(&d.len()) && luhn(&d)
            }
            Validator::Mod97 => {
                let c: Vec<u8> = v
                    .iter()
                    .copied()
                    .filter(u8::is_ascii_alphanumeric)
                    .map(|b| b.to_ascii_uppercase())
                    .collect();
                c.len() >= 15 && iban_len(&c[..2]) == Some(c.len()) && mod97(&c)
            }
            Validator::Ssn => {
                let d: Vec<u8> = v.iter().copied().filter(u8::is_ascii_digit).collect();
                d.len() == 9 && ssn_ok(&d)
            }
            Validator::Ip => std::str::from_utf8(v)
                .ok()
                .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok()),
        }
    }
}

/// A rule added by configuration: a pattern, an optional validator, an action.
#[derive(Clone, Debug)]
pub struct CustomRule {
    /// The type name shown in masks and metrics (`<employee_id>`).
    pub name: String,
    /// What to find. When it has a group named `value`, only that group is redacted.
    pub pattern: Regex,
    pub validator: Option<Validator>,
    pub action: Action,
}

/// Everything a [`Redactor`] is built from (the validated configuration).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The action of each built-in type, `None` when it is off; indexed like [`BUILTIN`].
    pub builtin: [Option<Action>; N_BUILTIN],
    pub rules: Vec<CustomRule>,
    /// Values never redacted (exact match of what a rule found).
    pub allow: Vec<String>,
    /// Patterns never redacted (must match the whole value found).
    pub allow_patterns: Vec<String>,
    /// Key of the pseudonym HMAC; needed when an action is `pseudonym`.
    pub secret: Option<Vec<u8>>,
    /// Hex characters in a pseudonym.
    pub pseudonym_len: usize,
}

impl Default for Settings {
    /// Every built-in type on, masked; no custom rules.
    fn default() -> Settings {
        Settings {
            builtin: [Some(Action::Mask); N_BUILTIN],
            rules: Vec::new(),
            allow: Vec::new(),
            allow_patterns: Vec::new(),
            secret: None,
            pseudonym_len: 8,
        }
    }
}

/// A value found in a line: bytes `[start, end)` of type `kind` (an index into
/// [`Redactor::kind_name`]: built-ins first, then custom rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub kind: u16,
}

/// What [`Redactor::redact`] did to a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to redact.
    Clean,
    /// The line was rewritten; this many values were replaced.
    Redacted(Bytes, u32),
    /// A rule with the `drop` action matched: discard the record.
    Drop,
}

/// Per-caller counters (one per source thread), flushed to metrics in bulk.
#[derive(Debug, Default)]
pub struct Stats {
    found: Vec<u64>,
    dropped: Vec<u64>,
    records: u64,
    findings: Vec<Finding>,
    pending: bool,
}

impl Stats {
    /// Values found per kind since the last flush, indexed like [`Redactor::kind_name`].
    pub fn found(&self) -> &[u64] {
        &self.found
    }

    /// Adds the counts to the `heimdall_agent_redact*` metrics and resets them.
    pub fn flush(&mut self, r: &Redactor) {
        if !self.pending {
            return;
        }
        for (k, n) in self.found.iter_mut().enumerate() {
            if *n > 0 {
                metrics::counter!("heimdall_agent_redactions_total", "type" => r.names[k].clone())
                    .increment(*n);
                *n = 0;
            }
        }
        for (k, n) in self.dropped.iter_mut().enumerate() {
            if *n > 0 {
                metrics::counter!("heimdall_agent_redaction_dropped_records_total", "type" => r.names[k].clone())
                    .increment(*n);
                *n = 0;
            }
        }
        metrics::counter!("heimdall_agent_redacted_records_total").increment(self.records);
        self.records = 0;
        self.pending = false;
    }
}

/// Which group of anchors an Aho-Corasick pattern belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Anchor {
    Jwt,
    Url,
    AwsId,
    Pem,
    Bearer,
    Key,
    Aws,
}

const ANCHORS: &[(&str, Anchor)] = &[
    ("eyJ", Anchor::Jwt),
    ("://", Anchor::Url),
    ("AKIA", Anchor::AwsId),
    ("ASIA", Anchor::AwsId),
    ("ABIA", Anchor::AwsId),
    ("ACCA", Anchor::AwsId),
    ("A3T", Anchor::AwsId),
    ("-----BEGIN", Anchor::Pem),
    ("Bearer", Anchor::Bearer),
    ("bearer", Anchor::Bearer),
    ("BEARER", Anchor::Bearer),
    ("pass", Anchor::Key),
    ("Pass", Anchor::Key),
    ("PASS", Anchor::Key),
    ("pwd", Anchor::Key),
    ("pw=", Anchor::Key),
    ("PW=", Anchor::Key),
    ("_pw", Anchor::Key),
    ("_PW", Anchor::Key),
    ("rivate", Anchor::Key),
    ("RIVATE", Anchor::Key),
    ("Pwd", Anchor::Key),
    ("PWD", Anchor::Key),
    ("secret", Anchor::Key),
    ("Secret", Anchor::Key),
    ("SECRET", Anchor::Key),
    ("token", Anchor::Key),
    ("Token", Anchor::Key),
    ("TOKEN", Anchor::Key),
    ("api", Anchor::Key),
    ("Api", Anchor::Key),
    ("API", Anchor::Key),
    ("uthoriz", Anchor::Key),
    ("UTHORIZ", Anchor::Key),
    ("ssn", Anchor::Key),
    ("Ssn", Anchor::Key),
    ("SSN", Anchor::Key),
    ("aws", Anchor::Aws),
    ("Aws", Anchor::Aws),
    ("AWS", Anchor::Aws),
];

/// The literal anchor search: aho-corasick's packed (SIMD Teddy) searcher where the
/// CPU has it, which reports matches itself; the full automaton otherwise.
enum Anchors {
    Packed(aho_corasick::packed::Searcher),
    Automaton(AhoCorasick),
}

impl Anchors {
    fn new() -> Anchors {
        let packed = aho_corasick::packed::Config::new()
            .match_kind(aho_corasick::packed::MatchKind::LeftmostFirst)
            .builder()
            .extend(ANCHORS.iter().map(|(p, _)| p))
            .build();
        match packed {
            Some(s) => Anchors::Packed(s),
            None => Anchors::Automaton(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostFirst)
                    .build(ANCHORS.iter().map(|(p, _)| p))
                    // The patterns are a fixed, small list: building cannot fail.
                    .expect("anchor patterns build"),
            ),
        }
    }

    /// Calls `f(pattern, start, end)` for each match, leftmost first.
    #[inline]
    fn each(&self, line: &[u8], mut f: impl FnMut(usize, usize, usize)) {
        match self {
            Anchors::Packed(s) => {
                for m in s.find_iter(line) {
                    f(m.pattern().as_usize(), m.start(), m.end());
                }
            }
            Anchors::Automaton(a) => {
                for m in a.find_iter(line) {
                    f(m.pattern().as_usize(), m.start(), m.end());
                }
            }
        }
    }
}

/// The redactor of one source: built-in detectors, custom rules, allow-lists, actions.
/// Immutable and shared; callers keep their own [`Stats`].
pub struct Redactor {
    on: [Option<Action>; N_BUILTIN],
    rules: Vec<CustomRule>,
    /// Per rule: whether its pattern has a `value` group.
    value_group: Vec<bool>,
    names: Vec<String>,
    allow: HashSet<Box<[u8]>>,
    allow_set: Option<RegexSet>,
    key: Option<ring::hmac::Key>,
    pseudonym_len: usize,
    anchors: Anchors,
    pem_end: memmem::Finder<'static>,
    numeric: bool,
    literal: bool,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("on", &self.on)
            .field("rules", &self.rules.len())
            .field("allow", &self.allow.len())
            .finish_non_exhaustive()
    }
}

/// Why a [`Redactor`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An action is `pseudonym` but no secret was configured.
    #[error("the pseudonym action needs a secret")]
    NoSecret,
    /// An allow-list pattern is not a valid regular expression.
    #[error("allow pattern {index}: {message}")]
    AllowPattern { index: usize, message: String },
}

impl Redactor {
    /// Builds a redactor.
    ///
    /// # Errors
    /// [`Error::NoSecret`] when an action is `pseudonym` without a secret,
    /// [`Error::AllowPattern`] for an invalid allow-list pattern.
    pub fn new(s: Settings) -> Result<Redactor, Error> {
        let pseudonyms = s.builtin.contains(&Some(Action::Pseudonym))
            || s.rules.iter().any(|r| r.action == Action::Pseudonym);
        if pseudonyms && s.secret.is_none() {
            return Err(Error::NoSecret);
        }
        let allow_set = if s.allow_patterns.is_empty() {
            None
        } else {
            for (i, p) in s.allow_patterns.iter().enumerate() {
                if let Err(e) = Regex::new(p) {
                    return Err(Error::AllowPattern {
                        index: i,
                        message: e.to_string(),
                    });
                }
            }
            let anchored = s.allow_patterns.iter().map(|p| format!("^(?:{p})$"));
            Some(RegexSet::new(anchored).map_err(|e| Error::AllowPattern {
                index: 0,
                message: e.to_string(),
            })?)
        };
        let mut names: Vec<String> = BUILTIN.iter().map(|n| (*n).to_owned()).collect();
        names.extend(s.rules.iter().map(|r| r.name.clone()));
        let on = s.builtin;
        let enabled = |k: u16| on[k as usize].is_some();
        let anchors = Anchors::new();
        Ok(Redactor {
            numeric: [CARD, IBAN, SSN, PHONE, IPV6, IPV4]
                .into_iter()
                .any(enabled),
            literal: [
                PRIVATE_KEY,
                JWT,
                URL_PASSWORD,
                AWS_ACCESS_KEY,
                AWS_SECRET_KEY,
                BEARER,
                SECRET,
                SSN,
            ]
            .into_iter()
            .any(enabled),
            on,
            value_group: s
                .rules
                .iter()
                .map(|r| r.pattern.capture_names().flatten().any(|n| n == "value"))
                .collect(),
            rules: s.rules,
            names,
            allow: s
                .allow
                .into_iter()
                .map(|v| v.into_bytes().into_boxed_slice())
                .collect(),
            allow_set,
            key: s
                .secret
                .map(|k| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k)),
            pseudonym_len: s.pseudonym_len.clamp(4, 64),
            anchors,
            pem_end: memmem::Finder::new(b"-----END ").into_owned(),
        })
    }

    /// A redactor with every built-in type on and masking.
    pub fn builtin() -> Redactor {
        // Default settings have no pseudonyms and no patterns: building cannot fail.
        Redactor::new(Settings::default()).expect("default settings are valid")
    }

    /// The type name of a finding's `kind`.
    pub fn kind_name(&self, kind: u16) -> &str {
        &self.names[kind as usize]
    }

    /// The action for a finding's `kind`.
    pub fn action(&self, kind: u16) -> Action {
        match self.on.get(kind as usize) {
            Some(a) => a.unwrap_or(Action::Mask),
            None => self.rules[kind as usize - N_BUILTIN].action,
        }
    }

    fn is_on(&self, kind: u16) -> bool {
        self.on[kind as usize].is_some()
    }

    /// Finds every value to redact in `line`: sorted, non-overlapping, allow-lists
    /// applied. `out` is cleared first.
    pub fn detect(&self, line: &[u8], out: &mut Vec<Finding>) {
        out.clear();
        if self.literal {
            self.scan_literals(line, out);
        }
        if self.numeric || self.is_on(EMAIL) {
            self.scan_numeric(line, out);
        }
        for (i, r) in self.rules.iter().enumerate() {
            let kind = (N_BUILTIN + i) as u16;
            if self.value_group[i] {
                for c in r.pattern.captures_iter(line) {
                    if let Some(m) = c.name("value") {
                        if m.start() < m.end() && r.validator.is_none_or(|v| v.check(m.as_bytes()))
                        {
                            out.push(Finding {
                                start: m.start(),
                                end: m.end(),
                                kind,
                            });
                        }
                    }
                }
            } else {
                for m in r.pattern.find_iter(line) {
                    if m.start() < m.end() && r.validator.is_none_or(|v| v.check(m.as_bytes())) {
                        out.push(Finding {
                            start: m.start(),
                            end: m.end(),
                            kind,
                        });
                    }
                }
            }
        }
        if out.is_empty() {
            return;
        }
        if !self.allow.is_empty() || self.allow_set.is_some() {
            out.retain(|f| {
                let v = &line[f.start..f.end];
                !(self.allow.contains(v) || self.allow_set.as_ref().is_some_and(|s| s.is_match(v)))
            });
        }
        resolve(out);
    }

    /// Redacts one line. A clean line is not copied.
    pub fn redact(&self, line: &[u8], stats: &mut Stats) -> Outcome {
        let mut findings = std::mem::take(&mut stats.findings);
        self.detect(line, &mut findings);
        let outcome = if findings.is_empty() {
            Outcome::Clean
        } else {
            if stats.found.len() < self.names.len() {
                stats.found.resize(self.names.len(), 0);
                stats.dropped.resize(self.names.len(), 0);
            }
            stats.pending = true;
            if let Some(f) = findings
                .iter()
                .find(|f| self.action(f.kind) == Action::Drop)
            {
                stats.dropped[f.kind as usize] += 1;
                for f in &findings {
                    stats.found[f.kind as usize] += 1;
                }
                Outcome::Drop
            } else {
                let mut out = Vec::with_capacity(line.len() + 16);
                let mut at = 0;
                for f in &findings {
                    out.extend_from_slice(&line[at..f.start]);
                    self.replacement(f.kind, &line[f.start..f.end], &mut out);
                    at = f.end;
                    stats.found[f.kind as usize] += 1;
                }
                out.extend_from_slice(&line[at..]);
                stats.records += 1;
                Outcome::Redacted(Bytes::from(out), findings.len() as u32)
            }
        };
        stats.findings = findings;
        outcome
    }

    fn replacement(&self, kind: u16, value: &[u8], out: &mut Vec<u8>) {
        let name = self.names[kind as usize].as_bytes();
        out.push(b'<');
        out.extend_from_slice(name);
        match self.action(kind) {
            Action::Mask | Action::Drop => {}
            Action::Pseudonym => {
                out.push(b':');
                let key = self.key.as_ref().expect("pseudonym redactors have a key");
                let mut msg = Vec::with_capacity(value.len() + 8);
                canonical(kind, name, value, &mut msg);
                let tag = ring::hmac::sign(key, &msg);
                let mut hex = String::with_capacity(self.pseudonym_len);
                for b in tag.as_ref() {
                    // Writing to a String cannot fail.
                    let _ = write!(hex, "{b:02x}");
                    if hex.len() >= self.pseudonym_len {
                        break;
                    }
                }
                out.extend_from_slice(&hex.as_bytes()[..self.pseudonym_len]);
            }
            Action::Partial
                if matches!(
                    kind,
                    PRIVATE_KEY
                        | JWT
                        | AWS_ACCESS_KEY
                        | AWS_SECRET_KEY
                        | URL_PASSWORD
                        | BEARER
                        | SECRET
                ) =>
            {
                // Part of a secret is still a secret: these are masked whole.
            }
            Action::Partial => {
                out.extend_from_slice(b":****");
                let keep: Vec<u8> = if kind == EMAIL {
                    // An email keeps its domain: who, not where, is personal.
                    let at = memchr::memrchr(b'@', value).unwrap_or(0);
                    value[at..].to_vec()
                } else {
                    let sig: Vec<u8> = value
                        .iter()
                        .copied()
                        .filter(u8::is_ascii_alphanumeric)
                        .collect();
                    // Short values keep nothing: four of eight characters would say too much.
                    if sig.len() >= 9 {
                        sig[sig.len() - 4..].to_vec()
                    } else {
                        Vec::new()
                    }
                };
                out.extend_from_slice(&keep);
            }
        }
        out.push(b'>');
    }

    fn scan_literals(&self, line: &[u8], out: &mut Vec<Finding>) {
        let mut aws_context = false;
        // Anchors inside a value already found are not looked at again: that keeps
        // `pass=pass=pass=…` and a line of unterminated PEM headers linear.
        let mut covered = 0;
        let mut no_pem_end_after = usize::MAX;
        self.anchors.each(line, |pattern, s, e| {
            let anchor = ANCHORS[pattern].1;
            // Only the scans that can run far are skipped; a JWT or key id inside a
            // secret's value is still named for what it is.
            if s < covered && matches!(anchor, Anchor::Key | Anchor::Aws | Anchor::Pem) {
                return;
            }
            let before = out.len();
            match anchor {
                Anchor::Jwt => {
                    if self.is_on(JWT) {
                        if let Some(end) = jwt_at(line, s) {
                            push(out, s, end, JWT);
                        }
                    }
                }
                Anchor::Url => {
                    if self.is_on(URL_PASSWORD) {
                        if let Some((ps, pe)) = url_password_at(line, s) {
                            push(out, ps, pe, URL_PASSWORD);
                        }
                    }
                }
                Anchor::AwsId => {
                    if let Some(end) = aws_id_at(line, s) {
                        aws_context = true;
                        if self.is_on(AWS_ACCESS_KEY) {
                            push(out, s, end, AWS_ACCESS_KEY);
                        }
                    }
                }
                Anchor::Pem => {
                    if self.is_on(PRIVATE_KEY) {
                        if let Some(end) = self.pem_at(line, s, &mut no_pem_end_after) {
                            push(out, s, end, PRIVATE_KEY);
                        }
                    }
                }
                Anchor::Bearer => {
                    if self.is_on(BEARER) {
                        if let Some((ts, te)) = bearer_at(line, s, e) {
                            push(out, ts, te, BEARER);
                        }
                    }
                }
                Anchor::Key => {
                    if let Some((vs, ve, kind)) = key_value(line, s, e) {
                        if kind == AWS_SECRET_KEY {
                            aws_context = true;
                        }
                        if self.is_on(kind) {
                            push(out, vs, ve, kind);
                        }
                    }
                }
                Anchor::Aws => {
                    aws_context = true;
                    // `aws_secret_access_key=`: the key word is after the anchor.
                    if let Some((vs, ve, kind)) = key_value(line, s, e) {
                        if self.is_on(kind) {
                            push(out, vs, ve, kind);
                        }
                    }
                }
            }
            if let Some(f) = out[before..].iter().map(|f| f.end).max() {
                covered = covered.max(f);
            }
        });
        if aws_context && self.is_on(AWS_SECRET_KEY) {
            aws_secrets(line, out);
        }
    }

    /// A PEM private key block starting at `s`. `no_end_after`: a position after which
    /// no end marker exists (learned by an earlier search of this line).
    fn pem_at(&self, line: &[u8], s: usize, no_end_after: &mut usize) -> Option<usize> {
        let rest = &line[s + b"-----BEGIN".len()..];
        let close = memmem::find(&rest[..rest.len().min(64)], b"-----")?;
        let label = &rest[..close];
        if !label.ends_with(b"PRIVATE KEY") {
            return None;
        }
        let body = s + b"-----BEGIN".len() + close + 5;
        if body >= *no_end_after {
            return Some(line.len());
        }
        let found = self.pem_end.find(&line[body..]);
        if found.is_none() {
            *no_end_after = body;
        }
        match found {
            Some(p) => {
                let after = body + p + b"-----END ".len();
                match memmem::find(&line[after..line.len().min(after + 64)], b"-----") {
                    Some(q) => Some(after + q + 5),
                    None => Some(line.len()),
                }
            }
            None => Some(line.len()),
        }
    }

    fn scan_numeric(&self, line: &[u8], out: &mut Vec<Finding>) {
        let n = line.len();
        let mut i = 0;
        while i < n {
            // The hot loop: most bytes are letters, spaces and punctuation.
            i = next_anchor(line, i);
            if i >= n {
                break;
            }
            let b = line[i];
            match CLASS[b as usize] {
                0 => i += 1,
                DIGIT => {
                    let prev = if i > 0 { line[i - 1] } else { b' ' };
                    // `jane.doe%40example.com`: an address percent-encoded in a URL.
                    if prev == b'%'
                        && line.get(i) == Some(&b'4')
                        && line.get(i + 1) == Some(&b'0')
                        && self.is_on(EMAIL)
                    {
                        if let Some((s, e)) = pct_email_at(line, i - 1) {
                            if out.last().is_none_or(|f| f.end <= s) {
                                push(out, s, e, EMAIL);
                                i = e;
                                continue;
                            }
                        }
                    }
                    if is_word(prev) {
                        if self.is_on(IBAN)
                            && i >= 2
                            && prev.is_ascii_uppercase()
                            && line[i - 2].is_ascii_uppercase()
                            && (i == 2 || !is_word(line[i - 3]))
                        {
                            if let Some(e) = iban_at(line, i - 2) {
                                push(out, i - 2, e, IBAN);
                                i = e;
                                continue;
                            }
                        }
                        i = skip_word(line, i);
                        continue;
                    }
                    // `blk_-1608999687919862906`: a number glued to a name by `-` is
                    // the rest of an identifier, not a card or a phone.
                    if prev == b'-'
                        && i >= 2
                        && is_word(line[i - 2])
                        && !line[i - 2].is_ascii_digit()
                    {
                        i = skip_word(line, i);
                        continue;
                    }
                    if i >= 2
                        && matches!(prev, b'.' | b'-' | b':')
                        && line[i - 2].is_ascii_digit()
                        && out.last().is_none_or(|f| f.end != i - 1)
                    {
                        // The middle of a larger number (a date, a time, a version), not
                        // the next of a list (`203.0.113.7-203.0.113.9`).
                        i = skip_digits(line, i);
                        continue;
                    }
                    if let Some((e, kind)) = self.number_at(line, i) {
                        out.push(Finding {
                            start: i,
                            end: e,
                            kind,
                        });
                        i = e;
                        continue;
                    }
                    i = skip_digits(line, i);
                }
                AT => {
                    if self.is_on(EMAIL) {
                        if let Some((s, e)) = email_at(line, i) {
                            push(out, s, e, EMAIL);
                            i = e;
                            continue;
                        }
                    }
                    i += 1;
                }
                PLUS => {
                    if self.is_on(PHONE)
                        && (i == 0 || !is_word(line[i - 1]))
                        && line.get(i + 1).is_some_and(|c| (b'1'..=b'9').contains(c))
                    {
                        if let Some(e) = intl_at(line, i + 1) {
                            push(out, i, e, PHONE);
                            i = e;
                            continue;
                        }
                    }
                    i += 1;
                }
                PAREN => {
                    if self.is_on(PHONE) && (i == 0 || !is_word(line[i - 1])) {
                        if let Some(e) = us_at(line, i).or_else(|| trunk_at(line, i)) {
                            push(out, i, e, PHONE);
                            i = e;
                            continue;
                        }
                    }
                    i += 1;
                }
                _ => {
                    // COLON: an IPv6 address ends here or passes through.
                    // IPv6 needs `::` or hex and another colon right after this one
                    // (`"status":200` and `key: value` stop here).
                    let more = line.get(i + 1) == Some(&b':') || {
                        let mut k = i + 1;
                        while k < n && k - i <= 4 && line[k].is_ascii_hexdigit() {
                            k += 1;
                        }
                        k > i + 1 && line.get(k) == Some(&b':')
                    };
                    if more && self.is_on(IPV6) {
                        let mut s = i;
                        while s > 0 && i - s < 4 && line[s - 1].is_ascii_hexdigit() {
                            s -= 1;
                        }
                        // `ip:2001:db8::1` is a key and an address; `10:23:45` is no start.
                        let left_ok = s == 0
                            || !matches!(line[s - 1], b':' | b'.') && !is_word(line[s - 1])
                            || line[s - 1] == b':'
                                && (s < 2
                                    || !line[s - 2].is_ascii_hexdigit() && line[s - 2] != b':');
                        if left_ok {
                            if let Some(e) = ipv6_at(line, s) {
                                push(out, s, e, IPV6);
                                i = e;
                                continue;
                            }
                        }
                    }
                    i += 1;
                }
            }
        }
    }

    /// A number starting at `i` (a word boundary): address, SSN, card or phone. The
    /// first run of digits and the byte after it rule most detectors out at once.
    fn number_at(&self, line: &[u8], i: usize) -> Option<(usize, u16)> {
        let e = skip_digits(line, i);
        let k = e - i;
        let c = line.get(e).copied().unwrap_or(b' ');
        if self.is_on(IPV4) && k <= 3 && c == b'.' && !version_context(line, i) {
            if let Some(e) = ipv4_at(line, i) {
                if !version_suffix(line, e) {
                    return Some((e, IPV4));
                }
                return None;
            }
        }
        if self.is_on(SSN) && k == 3 && c == b'-' {
            if let Some(e) = ssn_at(line, i) {
                return Some((e, SSN));
            }
        }
        // Grouped cards go on with another four digits: `2024-01-15` stops here.
        let grouped = k == 4 && (c == b' ' || c == b'-') && digits(line, e + 1, 4);
        if self.is_on(CARD) && (grouped || (13..=19).contains(&k)) {
            if let Some(e) = card_at(line, i) {
                return Some((e, CARD));
            }
        }
        let sep = matches!(c, b'-' | b'.' | b' ');
        let phone_shape = ((2..=4).contains(&k) && sep)
            || (k == 1 && line[i] == b'1' && sep)
            || (line[i] == b'0' && (2..=5).contains(&k) && (sep || c == b'/'))
            || (k >= 3 && line[i] == b'0' && line[i + 1] == b'0');
        if self.is_on(PHONE) && phone_shape {
            if let Some(e) = phone_at(line, i) {
                return Some((e, PHONE));
            }
        }
        None
    }
}

/// The end of a record that was cut (`TRUNCATED`): a value split by the cut no longer
/// looks like what it was (`jane.doe@exa`, half a JWT, the first digits of a card), so
/// the last token, and at least the last 64 bytes, are replaced by `<truncated>`.
/// The token ends at the last whitespace or quote in the last 4 KiB.
pub fn cut_tail(line: &[u8]) -> Vec<u8> {
    let n = line.len();
    let floor = n.saturating_sub(4096);
    let token = line[floor..]
        .iter()
        .rposition(|b| matches!(b, b' ' | b'\t' | b'\n' | b'"' | b'\''))
        .map_or(floor, |p| floor + p + 1);
    let cut = token.min(n.saturating_sub(64));
    let mut out = Vec::with_capacity(cut + 11);
    out.extend_from_slice(&line[..cut]);
    out.extend_from_slice(b"<truncated>");
    out
}

/// What [`filter`] saw.
#[derive(Debug, Default)]
pub struct Summary {
    pub lines: u64,
    pub redacted: u64,
    pub dropped: u64,
    /// Values found per type name.
    pub found: Vec<(String, u64)>,
}

/// Redacts every line of `input` into `output` (one record a line; dropped records are
/// not written). With `explain`, each finding is also written to `report` as
/// `line N: TYPE bytes START..END ACTION`, without the value.
///
/// # Errors
/// Reading or writing failed.
pub fn filter(
    r: &Redactor,
    input: &mut dyn std::io::BufRead,
    output: &mut dyn std::io::Write,
    report: &mut dyn std::io::Write,
    explain: bool,
) -> std::io::Result<Summary> {
    let mut stats = Stats::default();
    let mut sum = Summary::default();
    let mut buf = Vec::new();
    let mut findings = Vec::new();
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let mut end = buf.len();
        if buf[end - 1] == b'\n' {
            end -= 1;
        }
        let line = &buf[..end];
        sum.lines += 1;
        if explain {
            r.detect(line, &mut findings);
            for f in &findings {
                writeln!(
                    report,
                    "line {}: {} bytes {}..{} {:?}",
                    sum.lines,
                    r.kind_name(f.kind),
                    f.start,
                    f.end,
                    r.action(f.kind)
                )?;
            }
        }
        match r.redact(line, &mut stats) {
            Outcome::Clean => output.write_all(line)?,
            Outcome::Redacted(b, _) => {
                sum.redacted += 1;
                output.write_all(&b)?;
            }
            Outcome::Drop => {
                sum.dropped += 1;
                continue;
            }
        }
        output.write_all(b"\n")?;
    }
    output.flush()?;
    sum.found = stats
        .found
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (r.names[k].clone(), *n))
        .collect();
    Ok(sum)
}

/// Settles overlaps: findings sorted by start; overlapping findings become one that
/// covers them all, of the type with the highest priority (custom rules, then
/// built-ins in [`BUILTIN`] order), so no byte a detector claimed is left visible.
fn resolve(out: &mut Vec<Finding>) {
    let prio = |k: u16| if (k as usize) >= N_BUILTIN { 0 } else { k + 1 };
    out.sort_unstable_by_key(|f| (f.start, prio(f.kind), usize::MAX - f.end));
    let mut kept = 0;
    for i in 0..out.len() {
        let c = out[i];
        if kept > 0 && out[kept - 1].end > c.start {
            let last = &mut out[kept - 1];
            last.end = last.end.max(c.end);
            if prio(c.kind) < prio(last.kind) {
                last.kind = c.kind;
            }
        } else {
            out[kept] = c;
            kept += 1;
        }
    }
    out.truncate(kept);
}

/// The bytes a pseudonym is computed over: the type's class and a canonical form of
/// the value, so `John@X.com` and `john@x.com`, or a card with and without spaces,
/// get one pseudonym.
fn canonical(kind: u16, name: &[u8], v: &[u8], msg: &mut Vec<u8>) {
    match kind {
        IPV4 | IPV6 => {
            msg.extend_from_slice(b"ip\0");
            let parsed = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<std::net::IpAddr>().ok());
            match parsed {
                Some(std::net::IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                    Some(v4) => msg.extend_from_slice(v4.to_string().as_bytes()),
                    None => msg.extend_from_slice(a.to_string().as_bytes()),
                },
                Some(a) => msg.extend_from_slice(a.to_string().as_bytes()),
                None => msg.extend_from_slice(v),
            }
        }
        EMAIL => {
            msg.extend_from_slice(b"email\0");
            msg.extend(v.iter().map(u8::to_ascii_lowercase));
        }
        CARD | SSN | PHONE => {
            msg.extend_from_slice(BUILTIN[kind as usize].as_bytes());
            msg.push(0);
            msg.extend(v.iter().copied().filter(u8::is_ascii_digit));
        }
        IBAN => {
            msg.extend_from_slice(b"iban\0");
            msg.extend(
                v.iter()
                    .copied()
                    .filter(u8::is_ascii_alphanumeric)
                    .map(|b| b.to_ascii_uppercase()),
            );
        }
        _ => {
            msg.extend_from_slice(name);
            msg.push(0);
            msg.extend_from_slice(v);
        }
    }
}

const DIGIT: u8 = 1;
const PLUS: u8 = 2;
const PAREN: u8 = 3;
const COLON: u8 = 4;
const AT: u8 = 5;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = DIGIT;
        c += 1;
    }
    t[b'+' as usize] = PLUS;
    t[b'(' as usize] = PAREN;
    t[b':' as usize] = COLON;
    t[b'@' as usize] = AT;
    t
};

fn push(out: &mut Vec<Finding>, start: usize, end: usize, kind: u16) {
    out.push(Finding { start, end, kind });
}

#[inline]
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The first byte at or after `i` that may start something the numeric scan looks at
/// (a digit, `:`, `+`, `(`, `@`), eight bytes at a time. Bytes above 0x7F may be reported
/// too (callers check [`CLASS`]); none is skipped that should not be.
#[inline]
fn next_anchor(line: &[u8], mut i: usize) -> usize {
    while i + 8 <= line.len() {
        let y = word_at(line, i) & !HIGH;
        // `0`..=`9` and `:` are one range, 0x30..=0x3A.
        let m = ((ge(y, 0x30) & !ge(y, 0x3B))
            | zero(y ^ (ONES * u64::from(b'+')))
            | zero(y ^ (ONES * u64::from(b'(')))
            | zero(y ^ (ONES * u64::from(b'@'))))
            & HIGH;
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < line.len() && CLASS[line[i] as usize] == 0 {
        i += 1;
    }
    i
}

/// The end of the word (`[A-Za-z0-9_]`) at `i`, eight bytes at a time.
fn skip_word(line: &[u8], mut i: usize) -> usize {
    while i + 8 <= line.len() {
        let w = word_at(line, i);
        let y = w & !HIGH;
        let word = (ge(y, b'0') & !ge(y, b'9' + 1))
            | (ge(y, b'A') & !ge(y, b'Z' + 1))
            | (ge(y, b'a') & !ge(y, b'z' + 1))
            | zero(y ^ (ONES * u64::from(b'_')));
        let not_word = !word & HIGH | (w & HIGH);
        if not_word != 0 {
            return i + (not_word.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < line.len() && is_word(line[i]) {
        i += 1;
    }
    i
}

fn skip_digits(line: &[u8], mut i: usize) -> usize {
    while i < line.len() && line[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// Reads exactly `k` digits at `i`.
fn digits(line: &[u8], i: usize, k: usize) -> bool {
    i + k <= line.len() && line[i..i + k].iter().all(u8::is_ascii_digit)
}

/// After a number ending at `e`: not more of a word, nor `sep` and another digit.
fn ends_number(line: &[u8], e: usize) -> bool {
    match line.get(e) {
        None => true,
        Some(&c) if is_word(c) => false,
        Some(b'-' | b'.' | b'/') => !line.get(e + 1).is_some_and(u8::is_ascii_digit),
        Some(_) => true,
    }
}

// ---- emails and URLs ----

fn email_at(line: &[u8], at: usize) -> Option<(usize, usize)> {
    let local_char =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-');
    let mut s = at;
    while s > 0 && at - s < 64 && local_char(line[s - 1]) {
        s -= 1;
    }
    while s < at && line[s] == b'.' {
        s += 1;
    }
    if s == at || line[at - 1] == b'.' {
        return None;
    }
    // `ssh://git@host`: the user of a URL, not an address.
    if s >= 2 && &line[s - 2..s] == b"//" {
        return None;
    }
    let e = domain_end(line, at + 1)?;
    Some((s, e))
}

/// An address percent-encoded in a URL or query string, `p` at its `%40`
/// (`jane.doe%40example.com`, `jane%2Bnews%40example.com`): the local part may hold the
/// escapes of `+`, `-`, `.` and `_`; any other escape (`%3D`, `%2F`, `%26`) ends it.
fn pct_email_at(line: &[u8], p: usize) -> Option<(usize, usize)> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-');
    let mut s = p;
    while s > 0 && p - s < 64 {
        if s >= 3
            && line[s - 3] == b'%'
            && line[s - 2].is_ascii_hexdigit()
            && line[s - 1].is_ascii_hexdigit()
        {
            let esc = [
                line[s - 2].to_ascii_uppercase(),
                line[s - 1].to_ascii_uppercase(),
            ];
            if matches!(&esc, b"2B" | b"2D" | b"2E" | b"5F") {
                s -= 3;
                continue;
            }
            break;
        }
        if !plain(line[s - 1]) {
            break;
        }
        s -= 1;
    }
    while s < p && line[s] == b'.' {
        s += 1;
    }
    if s == p || line[p - 1] == b'.' {
        return None;
    }
    let e = domain_end(line, p + 3)?;
    Some((s, e))
}

/// The end of a domain name of at least two labels with an alphabetic top-level label
/// of 2 or more letters, starting at `d` (after the `@`).
fn domain_end(line: &[u8], d: usize) -> Option<usize> {
    let n = line.len();
    let mut e = d;
    while e < n && (line[e].is_ascii_alphanumeric() || line[e] == b'.' || line[e] == b'-') {
        e += 1;
    }
    while e > d && matches!(line[e - 1], b'.' | b'-') {
        e -= 1;
    }
    let mut count = 0;
    let mut last: &[u8] = b"";
    for (i, l) in line[d..e].split(|b| *b == b'.').enumerate() {
        if l.is_empty() || l.len() > 63 || l[0] == b'-' || l[l.len() - 1] == b'-' {
            return None;
        }
        // `icon@2x.png`: an image scale, not a domain.
        if i == 0 && l.len() == 2 && l[0].is_ascii_digit() && l[1] == b'x' {
            return None;
        }
        count += 1;
        last = l;
    }
    (count >= 2 && last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)).then_some(e)
}

/// The password of `scheme://user:password@host`, `p` at `://`.
fn url_password_at(line: &[u8], p: usize) -> Option<(usize, usize)> {
    // `s3://`, `redis+tls://`: a scheme ends with a letter or digit.
    if p == 0 || !line[p - 1].is_ascii_alphanumeric() {
        return None;
    }
    let a = p + 3;
    let mut e = a;
    while e < line.len()
        && !matches!(
            line[e],
            b'/' | b'?' | b'#' | b' ' | b'\t' | b'\n' | b'"' | b'\'' | b'<' | b'>' | b'\\'
        )
    {
        e += 1;
    }
    let at = a + memchr::memrchr(b'@', &line[a..e])?;
    let colon = a + memchr::memchr(b':', &line[a..at])?;
    (colon + 1 < at).then_some((colon + 1, at))
}

// ---- literal anchors ----

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn jwt_at(line: &[u8], s: usize) -> Option<usize> {
    if s > 0 && is_b64url(line[s - 1]) {
        return None;
    }
    let n = line.len();
    let seg = |mut i: usize| {
        let st = i;
        while i < n && is_b64url(line[i]) {
            i += 1;
        }
        (i, i - st)
    };
    let (e1, l1) = seg(s);
    if l1 < 10 || line.get(e1) != Some(&b'.') {
        return None;
    }
    let (e2, l2) = seg(e1 + 1);
    if l2 < 10 || line.get(e2) != Some(&b'.') {
        return None;
    }
    let (e3, _) = seg(e2 + 1);
    if line.get(e3) == Some(&b'.') && line.get(e3 + 1).is_some_and(|c| is_b64url(*c)) {
        return None;
    }
    Some(e3)
}

fn aws_id_at(line: &[u8], s: usize) -> Option<usize> {
    if s > 0 && line[s - 1].is_ascii_alphanumeric() {
        return None;
    }
    let e = s + 20;
    if e > line.len()
        || !line[s..e]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        || line.get(e).is_some_and(u8::is_ascii_alphanumeric)
    {
        return None;
    }
    Some(e)
}

fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'/' || b == b'+'
}

fn looks_like_aws_secret(v: &[u8]) -> bool {
    v.len() == 40
        && v.iter().all(|b| is_b64(*b))
        && v.iter().any(u8::is_ascii_uppercase)
        && v.iter().any(u8::is_ascii_lowercase)
        && v.iter().any(u8::is_ascii_digit)
}

/// Bare 40-character secrets on a line that is about AWS.
fn aws_secrets(line: &[u8], out: &mut Vec<Finding>) {
    let n = line.len();
    let mut i = 0;
    while i < n {
        if !is_b64(line[i]) {
            i += 1;
            continue;
        }
        let s = i;
        while i < n && is_b64(line[i]) {
            i += 1;
        }
        if i - s == 40 && line.get(i) != Some(&b'=') && looks_like_aws_secret(&line[s..i]) {
            push(out, s, i, AWS_SECRET_KEY);
        }
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// The token after `Bearer ` (`s..e` is the word).
fn bearer_at(line: &[u8], s: usize, e: usize) -> Option<(usize, usize)> {
    if s > 0 && is_word(line[s - 1]) {
        return None;
    }
    // `token_type=Bearer HTTP/1.1`: the name of a token type, not a scheme and its token.
    if s >= 5 && line[s - 1] == b'=' && line[s - 5..s - 1].eq_ignore_ascii_case(b"type") {
        return None;
    }
    let n = line.len();
    let mut ts = e;
    while ts < n && line[ts] == b' ' {
        ts += 1;
    }
    if ts == e {
        return None;
    }
    let mut te = ts;
    while te < n && is_token_char(line[te]) {
        te += 1;
    }
    let tok = &line[ts..te];
    let body = tok.len() - tok.iter().rev().take_while(|b| **b == b'=').count();
    if body < 8 || tok[..body].contains(&b'=') {
        return None;
    }
    let strong = tok[1..body].iter().any(|b| {
        b.is_ascii_digit()
            || b.is_ascii_uppercase()
            || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
    }) || tok[0].is_ascii_digit();
    strong.then_some((ts, te))
}

fn is_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// What kind of value a key names.
fn key_kind(norm: &[u8]) -> Option<u16> {
    const SECRET_SUFFIXES: [&[u8]; 10] = [
        b"password",
        b"passwd",
        b"pwd",
        b"passphrase",
        b"secret",
        b"token",
        b"apikey",
        b"authorization",
        b"secretkey",
        b"privatekey",
    ];
    if norm.ends_with(b"secretaccesskey") || norm == b"awssecretkey" || norm == b"awssecret" {
        return Some(AWS_SECRET_KEY);
    }
    if norm.ends_with(b"ssn") {
        return Some(SSN);
    }
    SECRET_SUFFIXES
        .iter()
        .any(|s| norm.ends_with(s))
        .then_some(SECRET)
}

/// The value of a sensitive key around the anchor `hs..he`: `key=value`,
/// `key="value"`, `"key": "value"`, `Key: value`.
fn key_value(line: &[u8], hs: usize, he: usize) -> Option<(usize, usize, u16)> {
    let n = line.len();
    // `pw=`, `pw:`, `pw"` carry the byte after the key; `_pw` the one before it.
    let he = if matches!(line[he - 1], b'=' | b':' | b'"') {
        he - 1
    } else {
        he
    };
    // Keys are read at most 64 bytes either side of the anchor: what decides is how a
    // key ends (`…trustStorePassword`), and long runs of key bytes stay linear.
    let mut ks = hs;
    while ks > 0 && hs - ks < 64 && is_key_char(line[ks - 1]) {
        ks -= 1;
    }
    let mut ke = he;
    while ke < n && ke - he < 64 && is_key_char(line[ke]) {
        ke += 1;
    }
    if ke < n && is_key_char(line[ke]) {
        return None;
    }
    while ke > ks && line[ke - 1] == b'.' {
        ke -= 1;
    }
    let key = &line[ks..ke];
    let mut norm = [0u8; 64];
    let mut nl = 0;
    for &b in &key[key.len().saturating_sub(64)..] {
        if b.is_ascii_alphanumeric() {
            norm[nl] = b.to_ascii_lowercase();
            nl += 1;
        }
    }
    let last = key
        .rsplit(|b| matches!(b, b'_' | b'-' | b'.'))
        .next()
        .unwrap_or(key);
    // `DB_PASS`, `admin.pw`: the whole last word, never `bypass` or `compass`.
    let kind = if last.eq_ignore_ascii_case(b"pass") || last.eq_ignore_ascii_case(b"pw") {
        SECRET
    } else {
        key_kind(&norm[..nl])?
    };
    let mut j = ke;
    let quote = match ks.checked_sub(1).map(|p| line[p]) {
        // `{"log":"{\"password\":\"x\"}"}`: JSON escaped inside JSON (container logs).
        Some(b'"') if ks >= 2 && line[ks - 2] == b'\\' => {
            if line.get(j) != Some(&b'\\') || line.get(j + 1) != Some(&b'"') {
                return None;
            }
            j += 2;
            true
        }
        Some(q @ (b'"' | b'\'')) => {
            if line.get(j) != Some(&q) {
                return None;
            }
            j += 1;
            true
        }
        _ => false,
    };
    while j < n && line[j] == b' ' {
        j += 1;
    }
    let sep = *line.get(j)?;
    if sep != b'=' && sep != b':' {
        return None;
    }
    j += 1;
    if sep == b':' && line.get(j) == Some(&b'/') {
        // `token://`: a scheme, not a key.
        return None;
    }
    if sep == b'=' && line.get(j) == Some(&b'=') {
        return None;
    }
    if sep == b':' && !quote {
        let headerish = key
            .iter()
            .any(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_');
        let mut p = ks;
        while p > 0 && line[p - 1] == b' ' {
            p -= 1;
        }
        let starts = p == 0
            || matches!(
                line[p - 1],
                b'\n' | b'{' | b',' | b';' | b'(' | b'|' | b'\t'
            );
        if !(headerish || starts) {
            return None;
        }
    }
    while j < n && (line[j] == b' ' || line[j] == b'\t') {
        j += 1;
    }
    let mut kind = kind;
    let (vs, ve) = match line.get(j) {
        Some(&q) if q == b'"' || q == b'\'' || (q == b'\\' && line.get(j + 1) == Some(&b'"')) => {
            // A quoted value, or a JSON string escaped inside another (`\"`).
            let escaped = q == b'\\';
            let vs = if escaped { j + 2 } else { j + 1 };
            let mut k = vs;
            while k < n {
                if escaped {
                    if line[k] == b'\\' && line.get(k + 1) == Some(&b'"') {
                        break;
                    }
                } else if line[k] == q {
                    break;
                } else if line[k] == b'\\' {
                    k += 1;
                }
                k += 1;
            }
            let (vs, bearer) = skip_scheme(line, vs, k.min(n), &norm[..nl]);
            if bearer {
                kind = BEARER;
            }
            (vs, k.min(n))
        }
        Some(_) => {
            let (vs, bearer) = skip_scheme(line, j, n, &norm[..nl]);
            if bearer {
                kind = BEARER;
            }
            let mut ve = vs;
            while ve < n && ve - vs < MAX_VALUE && !ends_value(line[ve]) {
                ve += 1;
            }
            let v = &line[vs..ve];
            let literal = v == b"null" || v == b"true" || v == b"false" || v == b"None";
            let number = sep == b':'
                && quote
                && !v.is_empty()
                && v.iter()
                    .all(|b| b.is_ascii_digit() || *b == b'.' || *b == b'-');
            if literal || (number && kind != SSN) {
                return None;
            }
            (vs, ve)
        }
        None => return None,
    };
    finish(line, vs, ve, kind, &norm[..nl])
}

/// `Authorization: Basic dXNlcjpw`: the credentials start after the scheme word.
/// Returns where they start and whether the scheme is `Bearer`.
fn skip_scheme(line: &[u8], vs: usize, end: usize, norm: &[u8]) -> (usize, bool) {
    if !norm.ends_with(b"authorization") {
        return (vs, false);
    }
    let mut w = vs;
    while w < end && line[w].is_ascii_alphabetic() {
        w += 1;
    }
    if w == vs || w >= end || line[w] != b' ' {
        return (vs, false);
    }
    let bearer = line[vs..w].eq_ignore_ascii_case(b"bearer");
    let mut s = w;
    while s < end && line[s] == b' ' {
        s += 1;
    }
    (s, bearer)
}

/// Longest unquoted value taken after a sensitive key.
const MAX_VALUE: usize = 4096;

fn ends_value(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t'
            | b'\n'
            | b'\r'
            | b'&'
            | b','
            | b';'
            | b'"'
            | b'\''
            | b')'
            | b'}'
            | b']'
            | b'<'
            | b'>'
    )
}

fn finish(
    line: &[u8],
    vs: usize,
    ve: usize,
    kind: u16,
    norm: &[u8],
) -> Option<(usize, usize, u16)> {
    let v = &line[vs..ve];
    if v.is_empty() || v.iter().all(|b| matches!(b, b'*' | b'x' | b'X')) {
        return None;
    }
    // An earlier redaction's mask, or a template placeholder.
    if v[0] == b'<' && v[v.len() - 1] == b'>' {
        return None;
    }
    match kind {
        SSN => {
            let d: Vec<u8> = v.iter().copied().filter(u8::is_ascii_digit).collect();
            let shape = v.len() == 9 || (v.len() == 11 && v[3] == b'-' && v[6] == b'-');
            (shape && d.len() == 9 && ssn_ok(&d)).then_some((vs, ve, SSN))
        }
        AWS_SECRET_KEY => Some((
            vs,
            ve,
            if looks_like_aws_secret(v) {
                AWS_SECRET_KEY
            } else {
                SECRET
            },
        )),
        _ => {
            if v.starts_with(b"-----BEGIN") {
                // A PEM block as a key's value: the private key detector's, not ours.
                return None;
            }
            if norm.ends_with(b"pwd") && v[0] == b'/' {
                // `PWD=/home/ops`: a working directory.
                return None;
            }
            Some((vs, ve, kind))
        }
    }
}

// ---- numbers ----

/// Where the name of a key ends when the value at `i` follows it across one to four of
/// `"' =:` (`version=`, `"phone": "`, `Tel.: `); `None` when nothing separates them.
fn key_end(line: &[u8], i: usize) -> Option<usize> {
    let mut k = i;
    while k > 0 && i - k < 4 && matches!(line[k - 1], b'=' | b':' | b' ' | b'"' | b'\'') {
        k -= 1;
    }
    (k < i).then_some(k)
}

/// Whether a dotted quad at `i` is a version by what comes before it: the value of a key
/// that names a version (`version=`, `ver:`, `v `, `release `, `build=`, `firmware `,
/// `fw=`, `rev `), a pinned requirement (`==`, `>=`, `<=`, `~=`, `!=`), a name it is
/// glued to by `-` or `_` (`lib-1.2.3.4.so`, `agent_1.2.3.4`), or a User-Agent product
/// token (`Chrome/120.0.0.0`: a name starting with a capital before `/`).
fn version_context(line: &[u8], i: usize) -> bool {
    if i == 0 {
        return false;
    }
    let prev = line[i - 1];
    if prev == b'/' {
        let mut s = i - 1;
        while s > 0
            && (line[s - 1].is_ascii_alphanumeric() || line[s - 1] == b'-' || line[s - 1] == b'_')
        {
            s -= 1;
        }
        return s < i - 1 && line[s].is_ascii_uppercase() && (s == 0 || line[s - 1] != b'/');
    }
    if matches!(prev, b'-' | b'_') {
        // A name with a letter right before: `openssl-1.1.1.1`, not `10.0.0.1-10.0.0.9`.
        let mut s = i - 1;
        while s > 0 && line[s - 1].is_ascii_alphanumeric() {
            s -= 1;
        }
        return line[s..i - 1].iter().any(u8::is_ascii_alphabetic);
    }
    if i >= 2 && prev == b'=' && matches!(line[i - 2], b'=' | b'>' | b'<' | b'~' | b'!') {
        return true;
    }
    let Some(e) = key_end(line, i) else {
        return false;
    };
    let mut k = e;
    while k > 0 && e - k < 9 && line[k - 1].is_ascii_alphabetic() {
        k -= 1;
    }
    if k > 0 && line[k - 1].is_ascii_alphanumeric() {
        return false;
    }
    let w = &line[k..e];
    [
        &b"version"[..],
        b"ver",
        b"vsn",
        b"v",
        b"release",
        b"build",
        b"firmware",
        b"fw",
        b"rev",
        b"revision",
    ]
    .iter()
    .any(|v| w.eq_ignore_ascii_case(v))
}

/// Whether a dotted quad ending at `e` is a version by what follows it: a file
/// extension (`1.2.3.4.so`, `1.2.3.4.tar.gz`), a pre-release or qualifier
/// (`1.2.3.4-SNAPSHOT`, `1.2.3.4-rc1`), or build metadata (`1.2.3.4+b7`).
fn version_suffix(line: &[u8], e: usize) -> bool {
    match line.get(e) {
        Some(b'.' | b'-') => line.get(e + 1).is_some_and(u8::is_ascii_alphabetic),
        Some(b'+') => line.get(e + 1).is_some_and(u8::is_ascii_alphanumeric),
        _ => false,
    }
}

fn ipv4_at(line: &[u8], i: usize) -> Option<usize> {
    let n = line.len();
    let mut j = i;
    for part in 0..4 {
        let st = j;
        let mut v = 0u32;
        while j < n && j - st < 3 && line[j].is_ascii_digit() {
            v = v * 10 + u32::from(line[j] - b'0');
            j += 1;
        }
        if j == st || v > 255 || (j < n && line[j].is_ascii_digit()) {
            return None;
        }
        if part < 3 {
            if line.get(j) != Some(&b'.') {
                return None;
            }
            j += 1;
        }
    }
    match line.get(j) {
        Some(&c) if is_word(c) => None,
        Some(b'.') if line.get(j + 1).is_some_and(u8::is_ascii_digit) => None,
        _ => Some(j),
    }
}

fn ipv6_at(line: &[u8], s: usize) -> Option<usize> {
    let n = line.len();
    let mut e = s;
    while e < n
        && e - s <= 45
        && (line[e].is_ascii_hexdigit() || line[e] == b':' || line[e] == b'.')
    {
        e += 1;
    }
    if e - s > 45 {
        return None;
    }
    while e > s && line[e - 1] == b'.' {
        e -= 1;
    }
    if e >= s + 2 && line[e - 1] == b':' && line[e - 2] != b':' {
        e -= 1;
    }
    if line.get(e).is_some_and(|c| is_word(*c)) {
        return None;
    }
    let cand = &line[s..e];
    if cand.len() < 3 || !cand.iter().any(u8::is_ascii_digit) {
        return None;
    }
    // Full form has seven colons; anything shorter needs `::`. Times (`10:23:45`) and
    // `"key":value` stop here, before the parser.
    let colons = cand.iter().filter(|b| **b == b':').count();
    if colons < 7 && memmem::find(cand, b"::").is_none() {
        return None;
    }
    let text = std::str::from_utf8(cand).ok()?;
    text.parse::<Ipv6Addr>().ok()?;
    Some(e)
}

fn ssn_ok(d: &[u8]) -> bool {
    let area = &d[0..3];
    let group = &d[3..5];
    let serial = &d[5..9];
    !(area == b"000" || area == b"666" || area[0] == b'9' || group == b"00" || serial == b"0000")
}

fn ssn_at(line: &[u8], i: usize) -> Option<usize> {
    if !(digits(line, i, 3)
        && line.get(i + 3) == Some(&b'-')
        && digits(line, i + 4, 2)
        && line.get(i + 6) == Some(&b'-')
        && digits(line, i + 7, 4))
    {
        return None;
    }
    let e = i + 11;
    if !ends_number(line, e) {
        return None;
    }
    let d = [
        line[i],
        line[i + 1],
        line[i + 2],
        line[i + 4],
        line[i + 5],
        line[i + 7],
        line[i + 8],
        line[i + 9],
        line[i + 10],
    ];
    ssn_ok(&d).then_some(e)
}

fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (k, b) in d.iter().rev().enumerate() {
        let mut v = u32::from(b - b'0');
        if k % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

fn num(d: &[u8]) -> u32 {
    d.iter().fold(0, |a, b| a * 10 + u32::from(b - b'0'))
}

fn card_brand(d: &[u8]) -> bool {
    let len = d.len();
    match d[0] {
        b'4' => len == 13 || len == 16 || len == 19,
        b'5' => len == 16 && (b'1'..=b'5').contains(&d[1]),
        b'2' => len == 16 && (2221..=2720).contains(&num(&d[..4])),
        b'3' => len == 15 && (d[1] == b'4' || d[1] == b'7'),
        b'6' => {
            (16..=19).contains(&len)
                && (d.starts_with(b"6011")
                    || d.starts_with(b"65")
                    || (644..=649).contains(&num(&d[..3])))
        }
        _ => false,
    }
}

fn card_at(line: &[u8], i: usize) -> Option<usize> {
    let n = line.len();
    let mut d = [0u8; 40];
    let mut nd = 0;
    // (end position, digits so far, group length)
    let mut groups = [(0usize, 0usize, 0usize); 8];
    let mut ng = 0;
    let mut sep = 0u8;
    let mut j = i;
    loop {
        let st = j;
        while j < n && line[j].is_ascii_digit() {
            if nd == d.len() {
                return None;
            }
            d[nd] = line[j];
            nd += 1;
            j += 1;
        }
        groups[ng] = (j, nd, j - st);
        ng += 1;
        if ng < groups.len()
            && j + 1 < n
            && matches!(line[j], b' ' | b'-')
            && (sep == 0 || sep == line[j])
            && line[j + 1].is_ascii_digit()
        {
            sep = line[j];
            j += 1;
            continue;
        }
        break;
    }
    for k in (1..=ng).rev() {
        let (end, ndk, _) = groups[k - 1];
        if !(13..=19).contains(&ndk) {
            continue;
        }
        let g = &groups[..k];
        let grouped = k == 1
            || (g[..k - 1].iter().all(|x| x.2 == 4) && (1..=4).contains(&g[k - 1].2))
            || (k == 3 && g[0].2 == 4 && g[1].2 == 6 && g[2].2 == 5);
        if !grouped {
            continue;
        }
        if k == ng && !ends_number(line, end) {
            continue;
        }
        if card_brand(&d[..ndk]) && luhn(&d[..ndk]) {
            return Some(end);
        }
    }
    None
}

/// `+` (already consumed) and an international number from `p`.
fn intl_at(line: &[u8], p: usize) -> Option<usize> {
    let n = line.len();
    let mut nd = 0;
    let mut j = p;
    let mut end;
    loop {
        if line.get(j) == Some(&b'(') {
            let st = j + 1;
            let mut k = st;
            while k < n && k - st < 4 && line[k].is_ascii_digit() {
                k += 1;
            }
            if k == st || line.get(k) != Some(&b')') {
                return None;
            }
            nd += k - st;
            j = k + 1;
        } else if line.get(j).is_some_and(u8::is_ascii_digit) {
            while j < n && line[j].is_ascii_digit() {
                nd += 1;
                j += 1;
            }
        } else {
            return None;
        }
        end = j;
        if nd > 15 {
            return None;
        }
        match line.get(j) {
            Some(b' ' | b'-' | b'.')
                if line
                    .get(j + 1)
                    .is_some_and(|c| c.is_ascii_digit() || *c == b'(') =>
            {
                j += 1;
            }
            Some(b'(') => {}
            _ => break,
        }
    }
    (nd >= 8 && line.get(end).is_none_or(|c| !is_word(*c))).then_some(end)
}

/// US national: `(415) 555-2671`, `415-555-2671`, `415.555.2671`, `415 555 2671`.
fn us_at(line: &[u8], i: usize) -> Option<usize> {
    let area_ok = |j: usize| digits(line, j, 3) && line[j] >= b'2';
    let (j, sep1) = if line.get(i) == Some(&b'(') {
        if !area_ok(i + 1) || line.get(i + 4) != Some(&b')') {
            return None;
        }
        let mut j = i + 5;
        if line.get(j) == Some(&b' ') {
            j += 1;
        }
        (j, 0)
    } else {
        if !area_ok(i) {
            return None;
        }
        let s = *line.get(i + 3)?;
        if !matches!(s, b'-' | b'.' | b' ') {
            return None;
        }
        (i + 4, s)
    };
    if !area_ok(j) {
        return None;
    }
    let s2 = *line.get(j + 3)?;
    // `415 555-2671` mixes a space and a dash, as people write it.
    let s2_ok = if sep1 == 0 {
        matches!(s2, b'-' | b'.' | b' ')
    } else {
        s2 == sep1 || (sep1 == b' ' && s2 == b'-')
    };
    if !s2_ok || !digits(line, j + 4, 4) {
        return None;
    }
    let e = j + 8;
    ends_number(line, e).then_some(e)
}

fn phone_at(line: &[u8], i: usize) -> Option<usize> {
    if line[i] == b'0'
        && line.get(i + 1) == Some(&b'0')
        && line.get(i + 2).is_some_and(|c| (b'1'..=b'9').contains(c))
    {
        // `0049 30 1234567`: the country code stands alone in the first group. A longer
        // first group is a phone only in a phone's field (`001250 4631` in a compact
        // header is a time and a process id).
        let cc = skip_digits(line, i + 2) - (i + 2);
        if cc > 3 && !phone_context(line, i) {
            return None;
        }
        return intl_at(line, i + 2);
    }
    if line[i] == b'1' && matches!(line.get(i + 1), Some(b'-' | b' ' | b'.')) {
        if let Some(e) = us_at(line, i + 2) {
            return Some(e);
        }
    }
    if let Some(e) = us_at(line, i) {
        return Some(e);
    }
    if let Some(e) = trunk_at(line, i) {
        return Some(e);
    }
    // The shape first: it rules out dates and times before the field name is read.
    grouped_at(line, i, 8).filter(|_| phone_context(line, i))
}

/// National numbers with a trunk prefix, `0` and an area code, as Europe writes them
/// (`030 12345678`, `0151 2345 6789`, `030/1234567`, `(030) 1234567`, `08-123 456 78`,
/// `020 7946 0958`, `06 12 34 56 78`, `044 668 18 00`): 9 to 12 digits in groups, the
/// first (`0` and the area code, maybe in parentheses) of 2 to 5 digits, the others of
/// at least 2; separated by single spaces or `-`, or by dots throughout; `/` only after
/// the first group. A date (`01.02.2024`) has too few digits; a time after it ends it.
fn trunk_at(line: &[u8], i: usize) -> Option<usize> {
    let paren = line[i] == b'(';
    let mut j = i + usize::from(paren);
    if line.get(j) != Some(&b'0') || !line.get(j + 1).is_some_and(|c| (b'1'..=b'9').contains(c)) {
        return None;
    }
    let g0 = skip_digits(line, j) - j;
    if !(2..=5).contains(&g0) {
        return None;
    }
    j += g0;
    if paren {
        if line.get(j) != Some(&b')') {
            return None;
        }
        j += 1;
        if line.get(j) == Some(&b' ') && line.get(j + 1).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        // `(030) 1234567`: the first group after the parentheses needs no separator.
        let k = skip_digits(line, j) - j;
        if k < 2 {
            return None;
        }
        j += k;
        return national_rest(line, j, g0 + k, 2, Some(false));
    }
    let e = national_rest(line, j, g0, 1, None)?;
    // `077-00-9346` is written as an SSN (one in an invalid range), not as a phone.
    let ssn_shape = e - i == 11 && line[i + 3] == b'-' && line[i + 6] == b'-';
    (!ssn_shape).then_some(e)
}

/// Further groups of a national number from `j` (after `nd` digits in `groups` groups);
/// `dots`: whether the separators so far are dots (`None` before the first).
fn national_rest(
    line: &[u8],
    mut j: usize,
    mut nd: usize,
    mut groups: usize,
    mut dots: Option<bool>,
) -> Option<usize> {
    while let Some(&s) = line.get(j) {
        let ok = match s {
            b' ' | b'-' => dots != Some(true),
            b'.' => dots != Some(false),
            b'/' => groups == 1,
            _ => false,
        };
        let k = skip_digits(line, j + 1) - (j + 1);
        if !ok || k < 2 {
            break;
        }
        nd += k;
        if nd > 12 {
            return None;
        }
        if s != b'/' {
            dots = Some(s == b'.');
        }
        groups += 1;
        j += 1 + k;
    }
    let time = line.get(j) == Some(&b':');
    (groups >= 2 && (9..=12).contains(&nd) && !time && ends_number(line, j)).then_some(j)
}

/// A number written in groups of 2 to 4 digits with one kind of separator (space, `-`
/// or `.`), `min` to 12 digits in all: a national number without a trunk prefix
/// (`612 34 56 78`, `347 123 4567`, `512 345 678`, `12 34 56 78`), taken only where
/// [`phone_context`] says a phone number is written.
fn grouped_at(line: &[u8], i: usize, min: usize) -> Option<usize> {
    let k = skip_digits(line, i) - i;
    if !(2..=4).contains(&k) {
        return None;
    }
    let sep = *line.get(i + k)?;
    if !matches!(sep, b' ' | b'-' | b'.') {
        return None;
    }
    let (mut j, mut nd, mut groups) = (i + k, k, 1);
    while line.get(j) == Some(&sep) {
        let g = skip_digits(line, j + 1) - (j + 1);
        if !(2..=4).contains(&g) {
            break;
        }
        nd += g;
        if nd > 12 {
            // Longer than any phone number: stop here, or a long run of digit groups
            // would be walked again from each of its numbers.
            return None;
        }
        groups += 1;
        j += 1 + g;
    }
    let time = line.get(j) == Some(&b':');
    (groups >= 2 && (min..=12).contains(&nd) && !time && ends_number(line, j)).then_some(j)
}

/// Whether the number at `i` is the value of a phone field: it follows, across at most
/// four of `"' =:`, a name that says so (`phone`, `mobile`, `msisdn`, `telefon`, or all
/// of `tel`, `fax`, `cell`, `handy`, `mobil`, `gsm`, `tlf` with `_`, `-`, `.` and a
/// trailing `no`/`nr` ignored): `phone=`, `"mobile": "`, `Tel.: `, `customer_phone: `.
fn phone_context(line: &[u8], i: usize) -> bool {
    let Some(e) = key_end(line, i) else {
        return false;
    };
    let mut k = e;
    while k > 0
        && e - k < 40
        && (line[k - 1].is_ascii_alphanumeric() || matches!(line[k - 1], b'_' | b'-' | b'.'))
    {
        k -= 1;
    }
    let mut name = [0u8; 40];
    let mut n = 0;
    for &b in &line[k..e] {
        if b.is_ascii_alphanumeric() {
            name[n] = b.to_ascii_lowercase();
            n += 1;
        }
    }
    let name = &name[..n];
    let has = |w: &[u8]| name.windows(w.len()).any(|x| x == w);
    if has(b"phone") || has(b"mobile") || has(b"msisdn") || has(b"telefon") {
        return true;
    }
    let base = name
        .strip_suffix(b"no")
        .or_else(|| name.strip_suffix(b"nr"))
        .filter(|b| !b.is_empty())
        .unwrap_or(name);
    [
        &b"tel"[..],
        b"fax",
        b"cell",
        b"handy",
        b"mobil",
        b"gsm",
        b"tlf",
    ]
    .contains(&base)
}

/// Length of an IBAN for its country code.
fn iban_len(cc: &[u8]) -> Option<usize> {
    const LENS: &[(&[u8; 2], usize)] = &[
        (b"AD", 24),
        (b"AE", 23),
        (b"AL", 28),
        (b"AT", 20),
        (b"AZ", 28),
        (b"BA", 20),
        (b"BE", 16),
        (b"BG", 22),
        (b"BH", 22),
        (b"BR", 29),
        (b"BY", 28),
        (b"CH", 21),
        (b"CR", 22),
        (b"CY", 28),
        (b"CZ", 24),
        (b"DE", 22),
        (b"DK", 18),
        (b"DO", 28),
        (b"EE", 20),
        (b"EG", 29),
        (b"ES", 24),
        (b"FI", 18),
        (b"FO", 18),
        (b"FR", 27),
        (b"GB", 22),
        (b"GE", 22),
        (b"GI", 23),
        (b"GL", 18),
        (b"GR", 27),
        (b"GT", 28),
        (b"HR", 21),
        (b"HU", 28),
        (b"IE", 22),
        (b"IL", 23),
        (b"IQ", 23),
        (b"IS", 26),
        (b"IT", 27),
        (b"JO", 30),
        (b"KW", 30),
        (b"KZ", 20),
        (b"LB", 28),
        (b"LC", 32),
        (b"LI", 21),
        (b"LT", 20),
        (b"LU", 20),
        (b"LV", 21),
        (b"MC", 27),
        (b"MD", 24),
        (b"ME", 22),
        (b"MK", 19),
        (b"MR", 27),
        (b"MT", 31),
        (b"MU", 30),
        (b"NL", 18),
        (b"NO", 15),
        (b"PK", 24),
        (b"PL", 28),
        (b"PS", 29),
        (b"PT", 25),
        (b"QA", 29),
        (b"RO", 24),
        (b"RS", 22),
        (b"SA", 24),
        (b"SC", 31),
        (b"SE", 24),
        (b"SI", 19),
        (b"SK", 24),
        (b"SM", 27),
        (b"ST", 25),
        (b"SV", 28),
        (b"TL", 23),
        (b"TN", 24),
        (b"TR", 26),
        (b"UA", 29),
        (b"VA", 22),
        (b"VG", 24),
        (b"XK", 20),
    ];
    LENS.iter().find(|(c, _)| c[..] == *cc).map(|(_, l)| *l)
}

fn mod97(c: &[u8]) -> bool {
    let mut r = 0u32;
    for &b in c[4..].iter().chain(&c[..4]) {
        if b.is_ascii_digit() {
            r = (r * 10 + u32::from(b - b'0')) % 97;
        } else {
            r = (r * 100 + u32::from(b - b'A' + 10)) % 97;
        }
    }
    r == 1
}

fn iban_at(line: &[u8], s: usize) -> Option<usize> {
    let want = iban_len(&line[s..s + 2])?;
    if !digits(line, s + 2, 2) {
        return None;
    }
    let n = line.len();
    let mut c = [0u8; 34];
    let mut nc = 0;
    let mut j = s;
    while nc < want {
        match line.get(j) {
            Some(&b) if b.is_ascii_uppercase() || b.is_ascii_digit() => {
                c[nc] = b;
                nc += 1;
                j += 1;
            }
            Some(b' ')
                if nc % 4 == 0
                    && line
                        .get(j + 1)
                        .is_some_and(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) =>
            {
                j += 1;
            }
            _ => return None,
        }
    }
    if j < n && is_word(line[j]) {
        return None;
    }
    mod97(&c[..nc]).then_some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(line: &str) -> Vec<(&'static str, String)> {
        let r = Redactor::builtin();
        let mut out = Vec::new();
        r.detect(line.as_bytes(), &mut out);
        out.iter()
            .map(|f| (BUILTIN[f.kind as usize], line[f.start..f.end].to_owned()))
            .collect()
    }

    fn one(line: &str, kind: &str, value: &str) {
        assert_eq!(
            found(line),
            vec![(
                BUILTIN.iter().find(|k| **k == kind).copied().unwrap(),
                value.to_owned()
            )],
            "{line}"
        );
    }

    fn none(line: &str) {
        assert_eq!(found(line), vec![], "{line}");
    }

    #[test]
    fn emails_and_their_look_alikes() {
        one(
            "user John.Doe+x@mail.example.com logged in",
            "email",
            "John.Doe+x@mail.example.com",
        );
        one("to=<ops@corp.io>, status=sent", "email", "ops@corp.io");
        none("loaded icon@2x.png for user@localhost");
        none("installed lodash@4.17.21 and @Override, image@sha256:abcdef");
        none("cloning ssh://git@github.com/org/repo");
    }

    #[test]
    fn addresses_and_versions() {
        one("connect from 10.1.2.3:5432", "ipv4", "10.1.2.3");
        assert_eq!(found("xff=203.0.113.7,10.0.0.1").len(), 2);
        assert_eq!(
            found("GET /v1/10.0.0.7/metrics"),
            vec![("ipv4", "10.0.0.7".to_owned())]
        );
        assert_eq!(found("range 203.0.113.7-203.0.113.9").len(), 2);
        none("version=1.2.3.4 ver: 10.0.0.1 Chrome/120.0.0.0 oid 1.3.6.1.4.1 bad 300.1.2.3");
        one("client [2001:db8::1]:443 ok", "ipv6", "2001:db8::1");
        one("peer ::ffff:192.0.2.1 up", "ipv6", "::ffff:192.0.2.1");
        one("via fe80::1%eth0", "ipv6", "fe80::1");
        one(
            "full 2001:0DB8:85a3:0000:0000:8a2e:0370:7334.",
            "ipv6",
            "2001:0DB8:85a3:0000:0000:8a2e:0370:7334",
        );
        none("at 12:34:56.789 mac 00:1a:2b:3c:4d:5e std::vector dead::beef took 00:01:23");
        one("loopback ::1 answered", "ipv6", "::1");
        one("client ip:2001:db8::7 refused", "ipv6", "2001:db8::7");
    }

    #[test]
    fn cards_ibans_ssns() {
        one(
            "paid with 4111 1111 1111 1111 ok",
            "card",
            "4111 1111 1111 1111",
        );
        one("amex 3782-822463-10005", "card", "3782-822463-10005");
        one(
            "card 4111 1111 1111 1111 12/25 ok",
            "card",
            "4111 1111 1111 1111",
        );
        one(
            "card 4111 1111 1111 1111 0427 123",
            "card",
            "4111 1111 1111 1111",
        );
        one("csv 1700000000,123-45-6789,x", "ssn", "123-45-6789");
        none("order 4111111111111112 id 1234567812345678 ts 1700000000123");
        one(
            "iban DE89 3704 0044 0532 0130 00 booked",
            "iban",
            "DE89 3704 0044 0532 0130 00",
        );
        one(
            "iban=GB82WEST12345698765432",
            "iban",
            "GB82WEST12345698765432",
        );
        none("iban=GB83WEST12345698765432");
        one("ssn 123-45-6789", "ssn", "123-45-6789");
        none("ssn 666-45-6789 000-12-3456 123-00-4567 date 2024-01-15");
        one("{\"ssn\":\"123456789\"}", "ssn", "123456789");
    }

    #[test]
    fn phones() {
        one("call +1 (415) 555-2671 now", "phone", "+1 (415) 555-2671");
        one("tel 415-555-2671.", "phone", "415-555-2671");
        one("tel (415) 555-2671", "phone", "(415) 555-2671");
        one("uk 020 7946 0958", "phone", "020 7946 0958");
        one("fr 06 12 34 56 78", "phone", "06 12 34 56 78");
        one("de +49 30 1234567", "phone", "+49 30 1234567");
        one("intl 0044 20 7946 0958", "phone", "0044 20 7946 0958");
        none("ts 1700000000 at 2024-01-15T10:23:45+01:00 took 123ms");
    }

    #[test]
    fn national_phones_of_europe_and_the_us() {
        for (line, number) in [
            ("Tel: 030 12345678", "030 12345678"),
            ("mobil 0151 23456789 erreichbar", "0151 23456789"),
            ("phone=030/1234567", "030/1234567"),
            ("call (030) 1234567", "(030) 1234567"),
            ("ring 08-123 456 78", "08-123 456 78"),
            ("zurich 044 668 18 00", "044 668 18 00"),
            ("nl 020 123 4567", "020 123 4567"),
            ("wien 0664 1234567", "0664 1234567"),
            ("fr 01.23.45.67.89", "01.23.45.67.89"),
            ("phone=612 34 56 78", "612 34 56 78"),
            (r#"{"mobile": "347 123 4567"}"#, "347 123 4567"),
            ("customer_phone: 512 345 678", "512 345 678"),
            ("telefono 91 123 45 67", "91 123 45 67"),
            ("call 415 555-2671", "415 555-2671"),
            ("call 1 (415) 555-2671", "1 (415) 555-2671"),
            ("call (415)555-2671", "(415)555-2671"),
        ] {
            one(line, "phone", number);
        }
        // Look-alikes: dates, times, lists, sizes, ids and numbers away from a phone field.
        none("on 01.02.2024 at 10:30 and 01-15-2024 10:30:00, 06/12/2024");
        none("moved 612 34 56 78 rows; took 0.12 0.34 0.56 s; build 2024 01 15");
        none("hotel 612 34 56 78; retries 0 1 2 3");
    }

    #[test]
    fn percent_encoded_emails_in_urls() {
        one(
            "GET /signup?email=jane.doe%40example.com&next=%2F HTTP/1.1",
            "email",
            "jane.doe%40example.com",
        );
        one(
            "redirect=%2Fprofile%3Femail%3Djane%2Bnews%40example.co.uk%26x%3D1",
            "email",
            "jane%2Bnews%40example.co.uk",
        );
        none("GET /img/icon%402x.png and progress=40%40 total");
    }

    #[test]
    fn numbers_glued_to_a_name_are_identifiers() {
        // Luhn-valid with a Visa prefix, but a block id.
        none("Receiving block blk_-4111111111111111 src: ok");
        none("job-4111111111111111 done; trace_-4012888888881881");
        one(
            "card 4111 1111 1111 1111 declined",
            "card",
            "4111 1111 1111 1111",
        );
    }

    #[test]
    fn versions_that_look_like_addresses() {
        none("loaded lib-1.2.3.4.so and app_10.0.0.1 from requests==2.31.0.1");
        none("release 10.1.2.3, build=4.3.2.1, firmware 1.0.0.12, fw=2.0.0.1");
        none("artifact 1.2.3.4-SNAPSHOT and 1.2.3.4+build7 and 1.2.3.4.tar.gz");
        one("client 10.0.0.1 connected", "ipv4", "10.0.0.1");
        assert_eq!(found("range 10.0.0.1-10.0.0.9").len(), 2);
        one("ssh root@10.0.0.7 ok", "ipv4", "10.0.0.7");
    }

    #[test]
    fn secrets_and_tokens() {
        one("GET /x?api_key=abc123XYZ&page=2", "secret", "abc123XYZ");
        one(
            "{\"password\": \"hunter2\", \"user\": \"bob\"}",
            "secret",
            "hunter2",
        );
        one(
            "Authorization: Basic dXNlcjpwYXNz",
            "secret",
            "dXNlcjpwYXNz",
        );
        one("Authorization: Bearer abc.def-123", "bearer", "abc.def-123");
        none("token_type=Bearer max_tokens=512 password_changed=true password=****");
        none("GET /cb?token_type=Bearer HTTP/1.1");
        one(
            r#"{"log":"{\"password\":\"hunter2\"}\n","stream":"stdout"}"#,
            "secret",
            "hunter2",
        );
        one(
            "spring.datasource.hikari.data-source-properties.javax.net.ssl.trustStorePassword=changeit",
            "secret",
            "changeit",
        );
        one(
            "PRIVATE_KEY=0x4c0883a69102937d",
            "secret",
            "0x4c0883a69102937d",
        );
        one("{\"db_pw\": \"x7y\"}", "secret", "x7y");
        one("DB_PASSWORD: 20240115", "secret", "20240115");
        one("store s3://AKID:s3cr3t@bucket/x", "url_password", "s3cr3t");
        none("invalid token: expired; PWD=/home/ops \"password\": null");
        one(
            "env DB_PASS=hunter22 bypass=1 compass=north",
            "secret",
            "hunter22",
        );
        one("login admin.pw=s3cret!", "secret", "s3cret!");
        one("{'password': 'x9y8z7'}", "secret", "x9y8z7");
        one(
            "UPDATE users SET password='p4ss' WHERE id=7",
            "secret",
            "p4ss",
        );
        one(
            "\"Authorization\": \"Basic dXNlcjpw\"",
            "secret",
            "dXNlcjpw",
        );
        one(
            "db postgres://app:s3cr3t@db:5432/x",
            "url_password",
            "s3cr3t",
        );
        one(
            "key AKIAIOSFODNN7EXAMPLE used",
            "aws_access_key",
            "AKIAIOSFODNN7EXAMPLE",
        );
        one(
            "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_key",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        one(&format!("Authorization: Bearer {jwt}"), "jwt", jwt);
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----";
        one(&format!("key {pem} loaded"), "private_key", pem);
        none("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----");
    }

    #[test]
    fn a_cut_value_does_not_survive_the_cut() {
        let mut line = b"user jane.doe@exa".to_vec();
        assert_eq!(cut_tail(&line), b"<truncated>");
        line = format!("{} card 4111 1111 11", "x ".repeat(100)).into_bytes();
        let out = cut_tail(&line);
        assert!(out.ends_with(b"<truncated>") && !out.windows(4).any(|w| w == b"4111"));
        line = format!(
            "{} token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMj",
            "word ".repeat(40)
        )
        .into_bytes();
        let out = String::from_utf8(cut_tail(&line)).unwrap();
        assert!(
            out.ends_with("<truncated>") && !out.contains("eyJ"),
            "{out}"
        );
        assert_eq!(out.len(), line.len() - 64 + "<truncated>".len());
    }

    #[test]
    fn overlapping_findings_leave_nothing_visible() {
        let r = Redactor::builtin();
        let mut st = Stats::default();
        let Outcome::Redacted(b, 1) = r.redact(b"pan_token=4111 1111 1111 1111 ok", &mut st) else {
            panic!()
        };
        assert_eq!(&b[..], b"pan_token=<secret> ok");
    }

    #[test]
    fn pathological_lines_stay_linear() {
        // Each would take minutes if every anchor rescanned the rest of the line.
        for unit in [
            &b"pass="[..],
            b"Token:",
            b"apiapi",
            b"-----BEGIN PRIVATE KEY-----",
            b"1:",
            b"@a.",
            b"4111 ",
        ] {
            let line: Vec<u8> = unit.iter().copied().cycle().take(1 << 20).collect();
            let mut found = Vec::new();
            Redactor::builtin().detect(&line, &mut found);
        }
    }

    #[test]
    fn actions_rewrite_lines() {
        let mut s = Settings::default();
        s.builtin[EMAIL as usize] = Some(Action::Pseudonym);
        s.builtin[CARD as usize] = Some(Action::Partial);
        s.builtin[SSN as usize] = Some(Action::Drop);
        s.secret = Some(b"k".to_vec());
        let r = Redactor::new(s).unwrap();
        let mut st = Stats::default();
        let Outcome::Redacted(b, 4) =
            r.redact(b"a@b.io A@B.io 4111-1111-1111-1111 1.2.3.4", &mut st)
        else {
            panic!()
        };
        let text = String::from_utf8(b.to_vec()).unwrap();
        let parts: Vec<&str> = text.split(' ').collect();
        assert!(
            parts[0].starts_with("<email:") && parts[0].len() == 16,
            "{text}"
        );
        assert_eq!(parts[0], parts[1], "pseudonyms ignore case");
        assert_eq!(parts[2], "<card:****1111>");
        assert_eq!(parts[3], "<ipv4>");
        assert_eq!(r.redact(b"ssn 123-45-6789", &mut st), Outcome::Drop);
        assert_eq!(r.redact(b"nothing here", &mut st), Outcome::Clean);
        assert_eq!(st.found()[EMAIL as usize], 2);
    }

    #[test]
    fn custom_rules_and_allow_lists() {
        let mut s = Settings::default();
        s.rules.push(CustomRule {
            name: "employee".into(),
            pattern: Regex::new(r"emp=(?P<value>E\d{6})").unwrap(),
            validator: None,
            action: Action::Mask,
        });
        s.allow.push("10.0.0.1".into());
        s.allow_patterns.push(r".*@corp\.example".into());
        let r = Redactor::new(s).unwrap();
        let mut st = Stats::default();
        let Outcome::Redacted(b, 2) = r.redact(
            b"emp=E123456 from 10.0.0.1 and 10.0.0.2 by ops@corp.example",
            &mut st,
        ) else {
            panic!()
        };
        assert_eq!(
            &b[..],
            b"emp=<employee> from 10.0.0.1 and <ipv4> by ops@corp.example"
        );
    }

    proptest::proptest! {
        /// The eight-at-a-time scans agree with the byte-at-a-time definitions.
        #[test]
        fn word_and_anchor_scans_match_their_definitions(
            line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            start in 0usize..40,
        ) {
            let i = start.min(line.len());
            let mut w = i;
            while w < line.len() && is_word(line[w]) {
                w += 1;
            }
            proptest::prop_assert_eq!(skip_word(&line, i), w);
            let mut a = i;
            while a < line.len() && CLASS[line[a] as usize] == 0 {
                a += 1;
            }
            let got = next_anchor(&line, i);
            // Bytes above 0x7F may be reported early; never is an anchor skipped.
            proptest::prop_assert!(got <= a);
            proptest::prop_assert!(line[i..got].iter().all(|b| CLASS[*b as usize] == 0));
            proptest::prop_assert!(got == a || line[got] >= 0x80);
        }
    }

    fn token_soup() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..6),
            "[0-9a-fA-F:.@+() =\"'/<>_,;&\\-]{0,12}".prop_map(String::into_bytes),
            proptest::sample::select(vec![
                "eyJ",
                "AKIA",
                "A3T",
                "-----BEGIN",
                "PRIVATE KEY-----",
                "-----END ",
                "Bearer ",
                "password",
                "Pass",
                "pw=",
                "secret",
                "token",
                "api",
                "Authorization: ",
                "uthoriz",
                "ssn",
                "aws",
                "://",
                "::",
                "::ffff:",
                "00",
                "+1",
                "(415)",
                "DE89",
                "4111",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest::proptest! {
        /// Any bytes: no panic, findings in bounds, sorted and disjoint, and the output
        /// holds none of the values found.
        #[test]
        fn arbitrary_bytes_never_panic_and_findings_are_disjoint(line in token_soup()) {
            let r = Redactor::builtin();
            let mut found = Vec::new();
            r.detect(&line, &mut found);
            let mut end = 0;
            for f in &found {
                proptest::prop_assert!(f.start >= end && f.start < f.end && f.end <= line.len());
                end = f.end;
            }
            let mut st = Stats::default();
            let out = r.redact(&line, &mut st);
            proptest::prop_assert_eq!(matches!(out, Outcome::Clean), found.is_empty());
        }
    }

    fn luhn_complete(mut d: Vec<u8>) -> String {
        d.push(b'0');
        for c in b'0'..=b'9' {
            *d.last_mut().unwrap() = c;
            if luhn(&d) {
                break;
            }
        }
        String::from_utf8(d).unwrap()
    }

    fn pii_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            (
                "[a-z][a-z0-9._]{0,10}[a-z0-9]",
                "[a-z]{2,10}",
                "(com|org|io|de|co\\.uk)"
            )
                .prop_map(|(u, d, t)| format!("{u}@{d}.{t}")),
            (1u8..=254, any::<u8>(), any::<u8>(), 1u8..=254)
                .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
            proptest::collection::vec(b'0'..=b'9', 14).prop_map(|mut v| {
                v.insert(0, b'4');
                luhn_complete(v)
            }),
            any::<[u16; 8]>()
                .prop_map(|g| std::net::Ipv6Addr::from(g).to_string())
                .prop_filter("digits", |s| s.bytes().any(|b| b.is_ascii_digit())
                    && s != "::"),
            "[A-Za-z0-9]{12,30}".prop_map(|t| format!("Bearer {t}7")),
        ]
    }

    proptest::proptest! {
        /// Whatever surrounds it, a valid value between separators never survives.
        #[test]
        fn redaction_never_leaks_a_value(
            before in "[a-z ]{0,20}",
            value in pii_value(),
            after in "[a-z ]{0,20}",
            sep in proptest::sample::select(vec![" ", "=", ": ", "\"", "(", "[", ","]),
        ) {
            let line = format!("{before} x{sep}{value} {after}");
            let r = Redactor::builtin();
            let mut st = Stats::default();
            let secret_part = value.strip_prefix("Bearer ").unwrap_or(&value).to_owned();
            match r.redact(line.as_bytes(), &mut st) {
                Outcome::Redacted(b, _) => {
                    let out = String::from_utf8(b.to_vec()).unwrap();
                    proptest::prop_assert!(!out.contains(&secret_part), "{line} -> {out}");
                }
                other => proptest::prop_assert!(false, "{line}: {other:?}"),
            }
        }
    }
}
