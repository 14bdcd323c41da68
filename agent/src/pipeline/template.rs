//! Template mining: an online miner that groups log lines into templates
//! (`Connection from <*> closed after <*> <*>`) as they arrive.
//!
//! Owns tokenising, variable masking, finding where a line's message starts, the
//! prefix tree, similarity matching, template ids and the per-source miner's state
//! file. Does not own shipping.
//!
//! The miner sees whole lines, as the agent reads them, header included. How a line
//! finds its template:
//! 1. **Tokens** ([`split`]): whitespace and `|` separate; a bracketed field
//!    (`[IPC Server handler 5 on 62270]`) is one token. A token holding a digit
//!    (numbers, ids, addresses, sizes, hex, `blk_-160…`, `user123`), a month or weekday
//!    name, or a unit after a number (`35 ms`) is masked as `<*>` up front, so variables
//!    never decide which branch a line takes.
//! 2. **Header** ([`message_start`]): the time, host, process, level, logger, bracketed
//!    and pipe-separated fields before the message are recognised by their shape, so
//!    the message start is known. Header tokens key nothing and vote nothing: a host
//!    name or level must not make two messages look alike or different.
//! 3. **Tree**: keyed by token count and the first `depth` message tokens.
//! 4. **Match**: in the leaf, the template that agrees with the most of the message's
//!    literal (unmasked) tokens wins if that share is above `similarity`. Masked tokens
//!    count neither way: `onExtend:<*> <*> <*>` is as close to its template as a
//!    message gets.
//! 5. **Split early, merge later**: a message word where the template has another word
//!    becomes `<*>` only once that slot has shown three values across the template's
//!    family (the templates born of one another); until then the line starts a sibling
//!    template, since two values (`opened`/`closed`, `SCREEN_ON`/`SCREEN_OFF`) are more
//!    likely an enumeration than a variable. A header slot generalises at once. A
//!    template that generalises absorbs the siblings it now covers.
//!
//! [`SourceMiner`] is what a source runs: a miner that tags each record with its
//! template id, announces each template once per run (so the batches that first use it
//! carry its text), and keeps its templates in the state directory across restarts.
//!
//! **Identity.** Template ids are a 64-bit FNV-1a hash of the template text (its tokens
//! joined by single spaces), so one template has one id on every host and after a
//! restart. When a template generalises, its text and so its id change, and the
//! siblings it absorbs end; the miner reports those former ids ([`Matched::replaced`])
//! and the agent ships each as an alias of the new id, which the aggregator resolves
//! so that every id a template ever had reads as one (see `heimdall_store::templates`,
//! which also joins an agent's specific text to another agent's general text that
//! covers it).
//!
//! One configuration serves every log: nothing here is tuned per dataset. On the eight
//! Loghub-2k systems (`agent/tests/loghub_ga.rs`), whole lines, it groups 99.0% of
//! lines right on average (the lowest, Hadoop, 95.9%).

use std::collections::HashMap;

use crate::hash::{Fnv1a, IntBuild};

/// The masked token.
pub const WILDCARD: &str = "<*>";

/// Distinct values a message word position must show before it becomes `<*>`.
const DISTINCT_BEFORE_MERGE: usize = 3;
/// Tokens the header may span.
const MAX_HEADER_TOKENS: usize = 16;
/// A level word that anchors the header starts within this many bytes (as the parser's
/// level scan).
const LEVEL_BYTES: u32 = 160;

/// Settings of a [`Miner`].
#[derive(Clone, Debug)]
pub struct MinerConfig {
    /// Message tokens (from the message start) that key the tree.
    pub depth: usize,
    /// Share of the message's literal tokens a template must match, exceeded, to take
    /// the message (0..1).
    pub similarity: f64,
    /// Most templates kept; the least recently used goes first.
    pub max_templates: usize,
}

impl Default for MinerConfig {
    fn default() -> MinerConfig {
        MinerConfig {
            depth: 2,
            similarity: 0.5,
            max_templates: 10_000,
        }
    }
}

#[derive(Debug)]
struct Cluster {
    tokens: Vec<Box<str>>,
    /// [`template_id`] of the tokens, recomputed only when a merge changes them.
    id: u64,
    /// The tree leaf the cluster hangs in.
    leaf: u64,
    last_used: u64,
    /// The [`Family`] it belongs to.
    family: u64,
}

/// Templates born of one another by refused merges (the same event type, as far as
/// the miner can tell yet), and what their slots have shown.
#[derive(Debug, Default)]
struct Family {
    members: u32,
    /// Message positions where a message differed from its template, with the distinct
    /// values (hashes of the masked text) shown there; at most [`DISTINCT_BEFORE_MERGE`]
    /// each.
    seen: Vec<(u32, Vec<u64>)>,
}

impl Family {
    /// Notes value `v` at position `pos` (`first`: the template's own value, when the
    /// position is new); returns how many distinct values it has shown.
    fn note(&mut self, pos: u32, first: u64, v: u64) -> usize {
        let k = match self.seen.iter().position(|(p, _)| *p == pos) {
            Some(k) => k,
            None => {
                self.seen.push((pos, vec![first]));
                self.seen.len() - 1
            }
        };
        let values = &mut self.seen[k].1;
        if values.len() < DISTINCT_BEFORE_MERGE && !values.contains(&v) {
            values.push(v);
        }
        values.len()
    }

    /// Whether position `pos` has shown enough values to be a variable.
    fn proven(&self, pos: u32) -> bool {
        self.seen
            .iter()
            .any(|(p, v)| *p == pos && v.len() >= DISTINCT_BEFORE_MERGE)
    }
}

/// What [`Miner::add`] found for a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    /// Index of the template's cluster (stable while it lives; for grouping).
    pub cluster: usize,
    /// Id of the template as it is now.
    pub id: u64,
    /// The message started a template, or changed its template (and so its id).
    pub new: bool,
    /// The message started a template: nothing known was like it.
    pub created: bool,
    /// Ids that now mean this template: its own former id when the message generalised
    /// it (its text, and so its id, changed), and the ids of the sibling templates the
    /// generalised one now covers and replaces. Lines tagged with any of them belong to
    /// this template.
    pub replaced: Vec<u64>,
}

/// One token of a message as the miner sees it: a span of the message and how much of
/// it is masked.
#[derive(Clone, Copy, Debug)]
struct Tok {
    start: u32,
    end: u32,
    /// `None`: literal. `Some(0)`: all variable (`<*>`). `Some(n)`: the first `n`
    /// bytes are a key kept before the mask (`key=<*>`).
    masked: Option<u32>,
    /// The next separator after the token (spaces and tabs skipped) is `|`: the token is
    /// a column of a pipe-separated header.
    pipe: bool,
}

impl Tok {
    fn is_wild(&self) -> bool {
        self.masked == Some(0)
    }

    fn text<'a>(&self, msg: &'a str) -> &'a str {
        &msg[self.start as usize..self.end as usize]
    }

    /// Whether template token `t` equals this token masked.
    fn eq(&self, msg: &str, t: &str) -> bool {
        let s = self.text(msg);
        match self.masked {
            None => t == s,
            Some(0) => t == WILDCARD,
            Some(n) => {
                let n = n as usize;
                t.len() == n + WILDCARD.len() && t.ends_with(WILDCARD) && t[..n] == s[..n]
            }
        }
    }

    fn masked_text(&self, msg: &str) -> Box<str> {
        let s = self.text(msg);
        match self.masked {
            None => s.into(),
            Some(0) => WILDCARD.into(),
            Some(n) => format!("{}{WILDCARD}", &s[..n as usize]).into_boxed_str(),
        }
    }

    /// Hash of the masked text.
    fn masked_hash(&self, msg: &str) -> u64 {
        let mut h = Fnv1a::default();
        self.hash_into(msg, &mut h);
        h.0
    }

    fn hash_into(&self, msg: &str, h: &mut Fnv1a) {
        let s = self.text(msg).as_bytes();
        match self.masked {
            None => h.write(s),
            Some(0) => h.write(WILDCARD.as_bytes()),
            Some(n) => {
                h.write(&s[..n as usize]);
                h.write(WILDCARD.as_bytes());
            }
        }
    }
}

/// An online template miner.
#[derive(Debug)]
pub struct Miner {
    cfg: MinerConfig,
    clusters: Vec<Option<Cluster>>,
    free: Vec<usize>,
    /// Hash of (token count, leading masked message tokens) → clusters.
    leaves: HashMap<u64, Vec<usize>, IntBuild>,
    families: HashMap<u64, Family, IntBuild>,
    next_family: u64,
    clock: u64,
    live: usize,
    /// Templates evicted to stay within `max_templates`.
    pub evictions: u64,
    /// The tokens of the message being added (kept to reuse the allocation).
    toks: Vec<Tok>,
}

/// Byte classes the splitter looks for; most bytes are none of them.
const WS: u8 = 1;
const DIGIT: u8 = 2;
const SEP: u8 = 4;
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let ws = [b' ', b'\t', b'\n', b'\r', 0x0c, b'|'];
    let mut i = 0;
    while i < ws.len() {
        t[ws[i] as usize] = WS;
        i += 1;
    }
    let mut d = b'0';
    while d <= b'9' {
        t[d as usize] = DIGIT;
        d += 1;
    }
    t[b'=' as usize] = SEP;
    t[b':' as usize] = SEP;
    t
};

/// The stable id of a template's text.
pub fn template_id(template: &str) -> u64 {
    crate::hash::fnv1a(template.as_bytes())
}

/// `s` in ASCII lower case in a buffer, if it is at most 11 bytes.
fn lower11(s: &[u8]) -> Option<([u8; 11], usize)> {
    if s.len() > 11 {
        return None;
    }
    let mut buf = [0u8; 11];
    for (d, c) in buf.iter_mut().zip(s) {
        *d = c.to_ascii_lowercase();
    }
    Some((buf, s.len()))
}

/// Whether `s` is a month name (`Jan`, `sept`, `December`), any case.
fn is_month(s: &[u8]) -> bool {
    lower11(s).is_some_and(|(b, n)| {
        matches!(
            &b[..n],
            b"jan"
                | b"feb"
                | b"mar"
                | b"apr"
                | b"may"
                | b"jun"
                | b"jul"
                | b"aug"
                | b"sep"
                | b"sept"
                | b"oct"
                | b"nov"
                | b"dec"
                | b"january"
                | b"february"
                | b"march"
                | b"april"
                | b"june"
                | b"july"
                | b"august"
                | b"september"
                | b"october"
                | b"november"
                | b"december"
        )
    })
}

/// Whether `s` is a month or weekday name, any case.
fn is_date_word(s: &[u8]) -> bool {
    (3..=9).contains(&s.len())
        && matches!(
            s[0].to_ascii_lowercase(),
            b'j' | b'f' | b'm' | b'a' | b's' | b'o' | b'n' | b'd' | b't' | b'w'
        )
        && (is_month(s)
            || lower11(s).is_some_and(|(b, n)| {
                matches!(
                    &b[..n],
                    b"mon"
                        | b"tue"
                        | b"tues"
                        | b"wed"
                        | b"thu"
                        | b"thur"
                        | b"thurs"
                        | b"fri"
                        | b"sat"
                        | b"sun"
                        | b"monday"
                        | b"tuesday"
                        | b"wednesday"
                        | b"thursday"
                        | b"friday"
                        | b"saturday"
                        | b"sunday"
                )
            }))
}

/// Whether `s` is a level word, any case (the header's anchor; a fixed list, narrower
/// than the parser's, as a word here decides where the message starts).
fn is_level_word(s: &[u8]) -> bool {
    (3..=9).contains(&s.len())
        && lower11(s).is_some_and(|(b, n)| {
            matches!(
                &b[..n],
                b"trace"
                    | b"debug"
                    | b"dbg"
                    | b"info"
                    | b"inf"
                    | b"notice"
                    | b"note"
                    | b"warn"
                    | b"warning"
                    | b"wrn"
                    | b"error"
                    | b"err"
                    | b"eror"
                    | b"crit"
                    | b"critical"
                    | b"alert"
                    | b"emerg"
                    | b"emergency"
                    | b"fatal"
                    | b"severe"
                    | b"fine"
                    | b"finer"
                    | b"finest"
                    | b"config"
                    | b"panic"
                    | b"verbose"
            )
        })
}

/// Whether `s` (trailing `,;)].` aside) is a unit of size, time or share.
fn is_unit(s: &[u8]) -> bool {
    let mut s = s;
    while let [rest @ .., b',' | b';' | b')' | b']' | b'.'] = s {
        s = rest;
    }
    lower11(s).is_some_and(|(b, n)| {
        matches!(
            &b[..n],
            b"b" | b"byte"
                | b"bytes"
                | b"kb"
                | b"mb"
                | b"gb"
                | b"tb"
                | b"pb"
                | b"kib"
                | b"mib"
                | b"gib"
                | b"tib"
                | b"ns"
                | b"us"
                | [0xC2, 0xB5, b's'] // µs
                | b"ms"
                | b"s"
                | b"sec"
                | b"secs"
                | b"second"
                | b"seconds"
                | b"min"
                | b"mins"
                | b"minute"
                | b"minutes"
                | b"h"
                | b"hr"
                | b"hrs"
                | b"hour"
                | b"hours"
                | b"day"
                | b"days"
                | b"%"
        )
    })
}

/// The end (index of the `]`) of the bracketed field opening at `b[i] == b'['`, and
/// whether it holds a digit; `None` if it is not closed before the end.
fn bracket_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let (mut depth, mut digit) = (0usize, false);
    for (j, &c) in b.iter().enumerate().skip(i) {
        match c {
            b'[' => depth += 1,
            b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some((j, digit));
                }
            }
            b'0'..=b'9' => digit = true,
            _ => {}
        }
    }
    None
}

/// Splits `message` into `out`.
///
/// - ASCII whitespace and `|` separate tokens (Unicode spaces are rare in logs and stay
///   inside tokens).
/// - A token opening with `[` runs to its matching `]`, across separators, then to the
///   next separator: `[IPC Server handler 5 on 62270]` is one token. If a `[` is never
///   closed, brackets are not joined for the rest of the line, so the scan stays
///   linear.
/// - Masking, the first rule that applies: a month or weekday name with a capital
///   (`Jun`, `Sunday`) is a variable; a token with no digit is literal; a token opening
///   with `[` that holds a digit is a variable whole; a digit-free key before the first
///   `=` or `:` is kept (`totalCalories=126775` → `totalCalories=<*>`); else the token is
///   a variable (`10.0.0.1:443` → `<*>`).
/// - A unit word right after a variable is a variable too (`35 ms`, `12 KB`).
///
/// # Performance
/// One pass over the bytes, eight at a time where nothing is of interest: the split is
/// most of the miner's time.
fn split(message: &str, out: &mut Vec<Tok>) {
    out.clear();
    let b = message.as_bytes();
    let mut i = 0;
    let mut join = true;
    while i < b.len() {
        while i < b.len() && CLASS[b[i] as usize] == WS {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        let s = i;
        let (mut digit, mut digit_before_sep, mut sep) = (false, false, None);
        if join && b[i] == b'[' {
            match bracket_end(b, i) {
                Some((e, d)) => {
                    i = e + 1;
                    digit = d;
                }
                None => join = false,
            }
        }
        // Until a digit decides the masking, stop at every byte of interest; after,
        // only the token's end matters.
        while i < b.len() {
            i = next_of_interest(b, i, digit);
            let Some(&byte) = b.get(i) else { break };
            let c = CLASS[byte as usize];
            if c == WS {
                break;
            }
            if c == DIGIT {
                digit = true;
                digit_before_sep |= sep.is_none();
            } else if c == SEP && sep.is_none() {
                sep = Some(i - s);
            }
            i += 1;
        }
        let t = &b[s..i];
        let masked = if !digit {
            let date = (3..=9).contains(&t.len()) && t[0].is_ascii_uppercase() && is_date_word(t);
            date.then_some(0)
        } else if t[0] == b'[' {
            Some(0)
        } else {
            match sep {
                Some(p) if p > 0 && !digit_before_sep => Some(p as u32 + 1),
                _ => Some(0),
            }
        };
        let mut j = i;
        while j < b.len() && matches!(b[j], b' ' | b'\t') {
            j += 1;
        }
        out.push(Tok {
            start: s as u32,
            end: i as u32,
            masked,
            pipe: b.get(j) == Some(&b'|'),
        });
    }
    for k in 1..out.len() {
        if out[k - 1].is_wild()
            && out[k].masked.is_none()
            && is_unit(&b[out[k].start as usize..out[k].end as usize])
        {
            out[k].masked = Some(0);
        }
    }
}

/// The first byte at or after `i` that may be whitespace, `|` or, unless `end_only`, a
/// digit, `=` or `:`; eight bytes at a time. It may stop early at a byte that is none of
/// them (a control character, or a byte above 0x7F), never late.
#[inline]
fn next_of_interest(b: &[u8], mut i: usize, end_only: bool) -> usize {
    use super::swar::{ge, word_at, zero, HIGH, ONES};
    while i + 8 <= b.len() {
        let y = word_at(b, i) & !HIGH;
        // Whitespace is at most 0x20; digits and `:` are 0x30..=0x3A.
        let mut m = !ge(y, 0x21) | zero(y ^ (ONES * u64::from(b'|')));
        if !end_only {
            m |= (ge(y, 0x30) & !ge(y, 0x3B)) | zero(y ^ (ONES * u64::from(b'=')));
        }
        let m = m & HIGH;
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() {
        let c = CLASS[b[i] as usize];
        if c == WS || (c != 0 && !end_only) {
            break;
        }
        i += 1;
    }
    i
}

/// A token's core: without a trailing `:` or `,`, one layer of `[]`, `<>` or `()`, and a
/// trailing `:` or `,` inside it.
fn core(s: &[u8]) -> &[u8] {
    fn trim(mut s: &[u8]) -> &[u8] {
        while let [rest @ .., b':' | b','] = s {
            s = rest;
        }
        s
    }
    let mut s = trim(s);
    if s.len() >= 2
        && matches!(s[0], b'[' | b'<' | b'(')
        && matches!(s[s.len() - 1], b']' | b'>' | b')')
    {
        s = &s[1..s.len() - 1];
    }
    trim(s)
}

/// Whether a token is a level word (`ERROR`, `[info]`, `warn:`); `marked` asks for one
/// that looks like a level, not a word of prose: upper case, bracketed or followed by
/// `:` or `,`.
fn is_level(t: &Tok, msg: &str, marked: bool) -> bool {
    if t.masked.is_some() {
        return false;
    }
    let s = t.text(msg).as_bytes();
    if s.len() < 3 {
        return false;
    }
    let c = core(s);
    // The cheap tests first: most tokens are not level words.
    if marked && c.len() == s.len() && !c.iter().all(u8::is_ascii_uppercase) {
        return false;
    }
    is_level_word(c)
}

/// `[…]` or `[…]:`.
fn is_bracketed(s: &[u8]) -> bool {
    s.len() >= 2 && s[0] == b'[' && (s.ends_with(b"]") || s.ends_with(b"]:"))
}

/// A header token that is skipped wherever it stands: a bracketed field, a lone
/// separator-like token, or a pipe-separated column.
fn is_structural(t: &Tok, msg: &str) -> bool {
    let s = t.text(msg).as_bytes();
    is_bracketed(s)
        || (t.masked.is_none() && matches!(s, b"-" | b"--" | b"|" | b"::" | b">"))
        || t.pipe
}

/// A dotted logger or class name (`org.apache.hadoop.Foo:`, `nova.compute.manager`,
/// `dfs.DataNode$PacketResponder:`).
fn is_logger_name(s: &[u8]) -> bool {
    let s = s.strip_suffix(b":").unwrap_or(s);
    let mut parts = 0;
    for p in s.split(|&c| c == b'.') {
        let ok = match p.split_first() {
            Some((f, rest)) => {
                (f.is_ascii_alphabetic() || matches!(f, b'_' | b'$'))
                    && rest
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$'))
            }
            None => false,
        };
        if !ok {
            return false;
        }
        parts += 1;
    }
    parts >= 2
}

/// `dddd-dd-ddTdd:dd` opens `s` (an RFC 3339 time).
fn is_rfc3339(s: &[u8]) -> bool {
    const SHAPE: &[u8; 16] = b"dddd-dd-ddTdd:dd";
    s.len() >= SHAPE.len()
        && SHAPE.iter().zip(s).all(|(&p, &c)| {
            if p == b'd' {
                c.is_ascii_digit()
            } else {
                p == c
            }
        })
}

/// Where the message starts: the index of its first token after the line's header
/// (time, host, process, level, logger, bracketed and pipe-separated fields). At least
/// the last token is message.
///
/// 1. A syslog prefix (`Jun 14 15:16:01 host tag[pid]:`, `<RFC 3339> host tag:`) ends
///    at the tag.
/// 2. Leading tokens are skipped while they are pipe-separated columns, a level word
///    (which anchors the header: after it only bracketed and pipe fields are skipped),
///    a one-letter level after a variable (logcat, glog), bracketed fields, lone `-`,
///    and, before an anchor, variables and date words.
/// 3. With no anchor yet, the first level word that looks like one (upper case,
///    bracketed, or followed by `:`) within the first 160 bytes ends the header:
///    `… RAS KERNEL INFO message`.
/// 4. A dotted logger name just after the level (log4j's and Python's
///    `LEVEL logger message`) is header too, with the bracketed fields after it.
fn message_start(toks: &[Tok], msg: &str) -> usize {
    let n = toks.len();
    if n <= 1 {
        return 0;
    }
    let last = n - 1;
    let text = |k: usize| toks[k].text(msg).as_bytes();
    let (mut h, mut anchored) = (0, false);
    let k = if n >= 5 && is_month(text(0)) && toks[1].is_wild() && toks[2].is_wild() {
        Some(3)
    } else if n >= 3 && is_rfc3339(text(0)) {
        Some(1)
    } else {
        None
    };
    if let Some(k) = k {
        if k < last && text(k).ends_with(b":") {
            (h, anchored) = (k + 1, true);
        } else if k + 1 < last && text(k + 1).ends_with(b":") {
            (h, anchored) = (k + 2, true);
        }
    }
    while h < last && h < MAX_HEADER_TOKENS {
        let t = &toks[h];
        if t.pipe || (!anchored && is_level(t, msg, false)) {
            (h, anchored) = (h + 1, true);
            continue;
        }
        if !anchored
            && t.masked.is_none()
            && matches!(text(h), b"V" | b"D" | b"I" | b"W" | b"E" | b"F")
            && h > 0
            && toks[h - 1].is_wild()
        {
            (h, anchored) = (h + 1, true);
            continue;
        }
        if is_structural(t, msg) {
            h += 1;
            continue;
        }
        if !anchored && (t.is_wild() || (t.masked.is_none() && is_date_word(core(text(h))))) {
            h += 1;
            continue;
        }
        break;
    }
    if !anchored {
        for k in 0..last {
            if toks[k].start >= LEVEL_BYTES {
                break;
            }
            if is_level(&toks[k], msg, true) {
                if k >= h {
                    (h, anchored) = (k + 1, true);
                    while h < last && is_structural(&toks[h], msg) {
                        h += 1;
                    }
                }
                break;
            }
        }
    }
    if anchored
        && 0 < h
        && h < last
        && is_logger_name(text(h))
        && (h.saturating_sub(4)..h).any(|j| is_level(&toks[j], msg, false))
    {
        h += 1;
        while h < last && text(h).len() >= 2 && text(h)[0] == b'[' && text(h).ends_with(b"]") {
            h += 1;
        }
    }
    h
}

impl Miner {
    /// A miner with no templates yet.
    pub fn new(cfg: MinerConfig) -> Miner {
        Miner {
            cfg,
            clusters: Vec::new(),
            free: Vec::new(),
            leaves: HashMap::default(),
            families: HashMap::default(),
            next_family: 0,
            clock: 0,
            live: 0,
            evictions: 0,
            toks: Vec::new(),
        }
    }

    /// Templates kept.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no template is kept.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The text of cluster `c`'s template.
    pub fn template(&self, c: usize) -> Option<String> {
        self.clusters
            .get(c)
            .and_then(|c| c.as_ref())
            .map(|c| c.tokens.join(" "))
    }

    /// Every template kept with its tree leaf, least recently used first (the order
    /// [`Miner::restore`] takes them back in).
    pub fn saved(&self) -> Vec<SavedTemplate> {
        let mut v: Vec<&Cluster> = self.clusters.iter().flatten().collect();
        v.sort_by_key(|c| c.last_used);
        v.into_iter()
            .map(|c| SavedTemplate {
                leaf: c.leaf,
                tokens: c.tokens.iter().map(|t| t.to_string()).collect(),
            })
            .collect()
    }

    /// Every template's text, least recently used first.
    pub fn templates(&self) -> Vec<String> {
        self.saved()
            .into_iter()
            .map(|t| t.tokens.join(" "))
            .collect()
    }

    /// Takes back a template saved by [`Miner::saved`] as it was, without matching it
    /// against the others (they coexisted, so they stay apart).
    pub fn restore(&mut self, t: SavedTemplate) {
        let toks: Vec<Box<str>> = t.tokens.into_iter().map(String::into_boxed_str).collect();
        if self.leaves.get(&t.leaf).is_some_and(|v| {
            v.iter()
                .any(|&c| self.clusters[c].as_ref().is_some_and(|c| c.tokens == toks))
        }) {
            return;
        }
        self.clock += 1;
        self.insert(toks, t.leaf, None);
    }

    /// The tree leaf of the message split into `self.toks`, whose message starts at `h`.
    fn message_leaf(&self, msg: &str, h: usize) -> u64 {
        let mut hash = Fnv1a::default();
        hash.write(&(self.toks.len() as u64).to_le_bytes());
        for t in self.toks.iter().skip(h).take(self.cfg.depth) {
            t.hash_into(msg, &mut hash);
            hash.write(&[0]);
        }
        hash.0
    }

    /// Adds a message; returns its template.
    pub fn add(&mut self, message: &str) -> Matched {
        self.clock += 1;
        let mut toks = std::mem::take(&mut self.toks);
        split(message, &mut toks);
        self.toks = toks;
        let h = message_start(&self.toks, message);
        let leaf = self.message_leaf(message, h);
        let mut best: Option<(usize, f64, usize)> = None;
        if let Some(ids) = self.leaves.get(&leaf) {
            for &c in ids {
                let Some(cl) = self.clusters[c].as_ref() else {
                    continue;
                };
                if cl.tokens.len() != self.toks.len() {
                    continue;
                }
                // Similarity over the message's literal tokens: a masked token (a number,
                // an address) says nothing either way, and neither does the header (a
                // time, host or level must not make two messages look alike).
                let (mut same, mut wild, mut literal) = (0usize, 0usize, 0usize);
                for (i, (a, b)) in cl.tokens.iter().zip(&self.toks).enumerate() {
                    if &**a == WILDCARD {
                        wild += 1;
                    }
                    if i >= h && !b.is_wild() {
                        literal += 1;
                        if b.eq(message, a) {
                            same += 1;
                        }
                    }
                }
                let sim = if literal == 0 {
                    1.0
                } else {
                    same as f64 / literal as f64
                };
                if best.is_none_or(|(_, s, w)| sim > s || (sim == s && wild > w)) {
                    best = Some((c, sim, wild));
                }
            }
        }
        let mut family = None;
        if let Some((c, sim, _)) = best {
            if sim > self.cfg.similarity || self.toks.is_empty() {
                if let Some(m) = self.merge(c, message, h, leaf) {
                    return m;
                }
                // A sibling born of a refused merge joins its family: what the
                // family's slots show is evidence about its slots too.
                family = self.clusters[c].as_ref().map(|cl| cl.family);
            }
        }
        let toks = self.toks.iter().map(|t| t.masked_text(message)).collect();
        let c = self.insert(toks, leaf, family);
        Matched {
            cluster: c,
            id: self.clusters[c].as_ref().map_or(0, |cl| cl.id),
            new: true,
            created: true,
            replaced: Vec::new(),
        }
    }

    /// Takes the message into cluster `c`, generalising it where they differ; `None` if
    /// a message word differs from the template where fewer than
    /// [`DISTINCT_BEFORE_MERGE`] values have been seen (so far an enumeration, not a
    /// variable: the message starts a sibling template).
    ///
    /// A header position (before `h`) and a masked message token generalise at once.
    /// The values are counted per family (the templates born of one another by refused
    /// merges), so that an event type whose lines spread over siblings still
    /// generalises once a slot has shown three values, whichever sibling each line went
    /// to; and a template that generalises does so at every slot its family has proven
    /// variable. When the template generalises, the siblings in its leaf that it now
    /// covers are retired into it.
    fn merge(&mut self, c: usize, msg: &str, h: usize, leaf: u64) -> Option<Matched> {
        let cl = self.clusters[c].as_mut().expect("leaf clusters are live");
        cl.last_used = self.clock;
        let fam = self
            .families
            .get_mut(&cl.family)
            .expect("a live cluster's family lives");
        let toks = &self.toks;
        let differs = |i: usize, a: &str| a != WILDCARD && !toks[i].eq(msg, a);
        if !cl.tokens.iter().enumerate().any(|(i, a)| differs(i, a)) {
            return Some(Matched {
                cluster: c,
                id: cl.id,
                new: false,
                created: false,
                replaced: Vec::new(),
            });
        }
        let mut refused = false;
        for (i, a) in cl.tokens.iter().enumerate() {
            if i < h || !differs(i, a) {
                continue;
            }
            let n = fam.note(i as u32, template_id(a), toks[i].masked_hash(msg));
            if n < DISTINCT_BEFORE_MERGE && !toks[i].is_wild() {
                refused = true;
            }
        }
        if refused {
            return None;
        }
        for i in 0..cl.tokens.len() {
            if differs(i, &cl.tokens[i]) {
                cl.tokens[i] = WILDCARD.into();
            }
        }
        // A slot the family has proven variable generalises too, where that lets the
        // template cover a sibling that differs from it there alone.
        let proven: Vec<usize> = (h..cl.tokens.len())
            .filter(|&i| &*cl.tokens[i] != WILDCARD && fam.proven(i as u32))
            .collect();
        for i in proven {
            let general = &self.clusters[c].as_ref().expect("live").tokens;
            let joins = self.leaves[&leaf].iter().any(|&o| {
                o != c
                    && self.clusters[o].as_ref().is_some_and(|s| {
                        s.tokens.len() == general.len()
                            && s.tokens[i] != general[i]
                            && general
                                .iter()
                                .zip(&s.tokens)
                                .enumerate()
                                .all(|(k, (g, t))| k == i || &**g == WILDCARD || g == t)
                    })
            });
            if joins {
                self.clusters[c].as_mut().expect("live").tokens[i] = WILDCARD.into();
            }
        }
        let cl = self.clusters[c].as_mut().expect("live");
        let old = cl.id;
        cl.id = template_id(&cl.tokens.join(" "));
        let id = cl.id;
        let mut replaced = vec![old];
        let siblings: Vec<usize> = self.leaves[&leaf]
            .iter()
            .copied()
            .filter(|&o| o != c)
            .collect();
        for o in siblings {
            let covered = {
                let general = &self.clusters[c].as_ref().expect("live").tokens;
                self.clusters[o].as_ref().is_some_and(|s| {
                    s.tokens.len() == general.len()
                        && general
                            .iter()
                            .zip(&s.tokens)
                            .all(|(g, t)| &**g == WILDCARD || g == t)
                })
            };
            if covered {
                let s = self.remove(o);
                if s.id != id && !replaced.contains(&s.id) {
                    replaced.push(s.id);
                }
            }
        }
        replaced.retain(|&r| r != id);
        Some(Matched {
            cluster: c,
            id,
            new: true,
            created: false,
            replaced,
        })
    }

    /// Adds a template to `leaf`, in `family` (or a family of its own).
    fn insert(&mut self, tokens: Vec<Box<str>>, leaf: u64, family: Option<u64>) -> usize {
        if self.live >= self.cfg.max_templates {
            self.evict();
        }
        let family = match family.filter(|f| self.families.contains_key(f)) {
            Some(f) => f,
            None => {
                self.next_family += 1;
                self.families.insert(self.next_family, Family::default());
                self.next_family
            }
        };
        self.families
            .get_mut(&family)
            .expect("just ensured")
            .members += 1;
        let cl = Cluster {
            id: template_id(&tokens.join(" ")),
            tokens,
            leaf,
            last_used: self.clock,
            family,
        };
        let c = match self.free.pop() {
            Some(i) => {
                self.clusters[i] = Some(cl);
                i
            }
            None => {
                self.clusters.push(Some(cl));
                self.clusters.len() - 1
            }
        };
        self.live += 1;
        self.leaves.entry(leaf).or_default().push(c);
        c
    }

    /// Takes cluster `i` out of the miner.
    fn remove(&mut self, i: usize) -> Cluster {
        let cl = self.clusters[i].take().expect("removing a live cluster");
        if let Some(f) = self.families.get_mut(&cl.family) {
            f.members -= 1;
            if f.members == 0 {
                self.families.remove(&cl.family);
            }
        }
        if let Some(v) = self.leaves.get_mut(&cl.leaf) {
            v.retain(|c| *c != i);
            if v.is_empty() {
                self.leaves.remove(&cl.leaf);
            }
        }
        self.free.push(i);
        self.live -= 1;
        cl
    }

    fn evict(&mut self) {
        let Some((i, _)) = self
            .clusters
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c.last_used)))
            .min_by_key(|(_, t)| *t)
        else {
            return;
        };
        self.remove(i);
        self.evictions += 1;
    }
}

/// A template as saved: its tokens (a bracketed token may hold spaces) and its leaf.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedTemplate {
    /// The tree leaf it hangs in (the hash of the message start of the line it began
    /// from; not recomputable from the text once that has generalised).
    pub leaf: u64,
    /// Its tokens.
    pub tokens: Vec<String>,
}

/// First line of a saved template file; then one JSON [`SavedTemplate`] per line.
const STATE_HEADER: &str = "# heimdall templates v2";
/// First line of a file saved by the miner before message starts were found (whole
/// lines split on whitespace): its templates are not taken back.
const STATE_HEADER_V1: &str = "# heimdall templates v1";
/// How often a source's templates are saved while it runs.
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A source's miner: tags records, announces templates, persists its state.
#[derive(Debug)]
pub struct SourceMiner {
    miner: Miner,
    /// Ids announced since the source started (cleared when it grows past a bound, so
    /// some are announced again: harmless).
    announced: std::collections::HashSet<u64, IntBuild>,
    path: Option<std::path::PathBuf>,
    saved: std::time::Instant,
    dirty: bool,
    /// The `source` label of the metrics.
    name: String,
    reported_evictions: u64,
}

impl SourceMiner {
    /// A miner for the source `name`, taking back the templates saved at `path`.
    pub fn new(cfg: MinerConfig, name: &str, path: Option<std::path::PathBuf>) -> SourceMiner {
        let mut miner = Miner::new(cfg);
        if let Some(p) = &path {
            match std::fs::read_to_string(p) {
                Ok(text) if text.starts_with(STATE_HEADER) => {
                    let mut bad = 0;
                    for t in text.lines().skip(1).filter(|l| !l.is_empty()) {
                        match serde_json::from_str::<SavedTemplate>(t) {
                            Ok(t) => miner.restore(t),
                            Err(_) => bad += 1,
                        }
                    }
                    if bad > 0 {
                        tracing::warn!(path = %p.display(), skipped = bad, "template state file has unreadable lines; they are mined afresh");
                    }
                    tracing::info!(source = name, templates = miner.len(), "templates loaded");
                }
                Ok(text) if text.starts_with(STATE_HEADER_V1) => {
                    tracing::info!(path = %p.display(), "templates saved by an earlier miner (other rules, other ids); mining afresh")
                }
                Ok(_) => {
                    tracing::warn!(path = %p.display(), "template state file has no header; starting afresh")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot read template state; starting afresh")
                }
            }
        }
        SourceMiner {
            miner,
            announced: std::collections::HashSet::default(),
            path,
            saved: std::time::Instant::now(),
            dirty: false,
            name: name.to_owned(),
            reported_evictions: 0,
        }
    }

    /// Tags `line` with its template; a template not announced yet goes to `out`.
    pub fn tag(
        &mut self,
        line: &mut crate::sources::Line,
        out: &mut Vec<crate::sources::NewTemplate>,
    ) {
        let text = match std::str::from_utf8(&line.bytes) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(&line.bytes),
        };
        let m = self.miner.add(&text);
        line.template_id = m.id;
        self.dirty |= m.new;
        let fresh = self.announced.insert(m.id);
        if fresh && self.announced.len() > 4 * self.miner.cfg.max_templates {
            self.announced.clear();
            self.announced.insert(m.id);
        }
        // A generalised template is announced with its former id even when its new text
        // was known already (two templates that became one).
        if fresh || !m.replaced.is_empty() {
            if let Some(t) = self.miner.template(m.cluster) {
                out.push(crate::sources::NewTemplate {
                    id: m.id,
                    text: t.into(),
                    created: m.created,
                    replaces: m.replaced,
                });
            }
        }
    }

    /// Updates the metrics and saves the templates if a minute has passed.
    pub fn tick(&mut self) {
        let ev = self.miner.evictions - self.reported_evictions;
        if ev > 0 {
            metrics::counter!("heimdall_agent_template_evictions_total", "source" => self.name.clone())
                .increment(ev);
            self.reported_evictions = self.miner.evictions;
        }
        metrics::gauge!("heimdall_agent_templates", "source" => self.name.clone())
            .set(self.miner.len() as f64);
        if self.dirty && self.saved.elapsed() >= SAVE_EVERY {
            self.save();
        }
    }

    /// Writes the templates to the state file: a temp file, fsynced, renamed over the
    /// old one, so a crash leaves one or the other whole.
    pub fn save(&mut self) {
        self.saved = std::time::Instant::now();
        let Some(p) = &self.path else { return };
        let mut text = String::from(STATE_HEADER);
        text.push('\n');
        for t in self.miner.saved() {
            text.push_str(&serde_json::to_string(&t).expect("plain data serialises"));
            text.push('\n');
        }
        let res = (|| -> std::io::Result<()> {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            heimdall_common::fs::write_atomic(p, text.as_bytes())
        })();
        match res {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "cannot save templates"),
        }
    }

    /// Templates kept.
    pub fn len(&self) -> usize {
        self.miner.len()
    }

    /// Whether no template is kept.
    pub fn is_empty(&self) -> bool {
        self.miner.is_empty()
    }
}

impl Drop for SourceMiner {
    fn drop(&mut self) {
        if self.dirty {
            self.save();
        }
    }
}

/// The state file of a source's templates under the agent's state directory.
pub fn state_path(state_dir: &std::path::Path, source_key: &str) -> std::path::PathBuf {
    state_dir
        .join("templates")
        .join(format!("{:016x}.templates", template_id(source_key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tokens of `line` as the miner masks them.
    fn masked(line: &str) -> Vec<String> {
        let mut toks = Vec::new();
        split(line, &mut toks);
        toks.iter().map(|t| t.masked_text(line).into()).collect()
    }

    /// The message of `line` as the miner finds it, masked.
    fn message(line: &str) -> String {
        let mut toks = Vec::new();
        split(line, &mut toks);
        let h = message_start(&toks, line);
        toks[h..]
            .iter()
            .map(|t| t.masked_text(line).into())
            .collect::<Vec<String>>()
            .join(" ")
    }

    #[test]
    fn variables_are_masked_and_similar_messages_share_a_template() {
        let mut m = Miner::new(MinerConfig::default());
        let a = m.add("Connection from 10.0.0.1 closed after 35 ms");
        let b = m.add("Connection from 10.0.0.2 closed after 7 ms");
        assert_eq!(a.cluster, b.cluster);
        assert_eq!(
            m.template(a.cluster).unwrap(),
            "Connection from <*> closed after <*> <*>",
            "a unit after a number is part of the value"
        );
        assert!(!b.new);
    }

    #[test]
    fn a_word_generalises_on_its_third_value_and_absorbs_its_siblings() {
        let mut m = Miner::new(MinerConfig::default());
        let root = m.add("Accepted password for root from 10.0.0.3 port 22 ssh2");
        let admin = m.add("Accepted password for admin from 10.0.0.9 port 2222 ssh2");
        // Two values may be an enumeration: a sibling template, not a merge.
        assert!(admin.created);
        assert_ne!(admin.id, root.id);
        let oracle = m.add("Accepted password for oracle from 10.0.0.7 port 22 ssh2");
        let general = "Accepted password for <*> from <*> port <*> <*>";
        assert_eq!(oracle.id, template_id(general));
        assert_eq!(m.template(oracle.cluster).unwrap(), general);
        assert!(oracle.new && !oracle.created);
        // Both former ids now mean the general template; the sibling is gone.
        let mut replaced = oracle.replaced.clone();
        replaced.sort_unstable();
        let mut want = vec![root.id, admin.id];
        want.sort_unstable();
        assert_eq!(replaced, want);
        assert_eq!(m.len(), 1);
        let again = m.add("Accepted password for admin from 10.0.0.1 port 22 ssh2");
        assert_eq!((again.id, again.new), (oracle.id, false));
    }

    #[test]
    fn templates_are_bounded_and_the_oldest_is_evicted() {
        let mut m = Miner::new(MinerConfig {
            max_templates: 3,
            ..MinerConfig::default()
        });
        for w in ["alpha", "beta", "gamma", "delta", "epsilon"] {
            m.add(&format!("{w} started"));
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.evictions, 2);
    }

    #[test]
    fn saved_templates_come_back_with_the_same_ids() {
        let mut m = Miner::new(MinerConfig::default());
        let a = m.add("user 12 logged in from 10.0.0.1");
        m.add("user 13 logged in from 10.0.0.2");
        let b = m.add("2017-07-03 INFO [IPC Server handler\n on port] disk sda full");
        let saved: Vec<String> = m
            .saved()
            .iter()
            .map(|t| serde_json::to_string(t).unwrap())
            .collect();
        assert!(saved.iter().all(|l| !l.contains('\n')), "{saved:?}");
        let mut n = Miner::new(MinerConfig::default());
        for t in &saved {
            n.restore(serde_json::from_str(t).unwrap());
        }
        assert_eq!(n.len(), 2);
        let a2 = n.add("user 99 logged in from 10.9.9.9");
        assert_eq!(a2.id, a.id);
        assert!(!a2.new);
        let b2 = n.add("2018-01-01 INFO [IPC Server handler\n on port] disk sda full");
        assert_eq!((b2.id, b2.new), (b.id, false));
    }

    #[test]
    fn pipes_separate_and_brackets_join() {
        assert_eq!(
            masked("20171223-22:15:29:606|Step_LSC|30002312|onStandStepChanged 3579"),
            ["<*>", "Step_LSC", "<*>", "onStandStepChanged", "<*>"]
        );
        assert_eq!(
            masked(
                "INFO [IPC Server handler 5 on 62270] org.Foo: [AsyncDispatcher event handler] ok"
            ),
            [
                "INFO",
                "<*>",
                "org.Foo:",
                "[AsyncDispatcher event handler]",
                "ok"
            ]
        );
        // A bracket never closed: no joining from there on, nothing lost.
        assert_eq!(masked("a [b c] [d e"), ["a", "[b c]", "[d", "e"]);
        assert_eq!(masked("[x [y] z]tail q"), ["[x [y] z]tail", "q"]);
        // Dates, units.
        assert_eq!(
            masked("Sun Dec 04 took 12 KB, 5 sec. now"),
            ["<*>", "<*>", "<*>", "took", "<*>", "<*>", "<*>", "<*>", "now"]
        );
        assert_eq!(
            masked("sunday mon key=12 a:b:1"),
            ["sunday", "mon", "key=<*>", "a:<*>"]
        );
    }

    #[test]
    fn the_header_is_found_by_its_shape() {
        // syslog
        assert_eq!(
            message(
                "Dec 10 06:55:46 LabSZ sshd[24200]: Invalid user webmaster from 173.234.31.186"
            ),
            "Invalid user webmaster from <*>"
        );
        assert_eq!(
            message("2024-05-01T10:00:00Z web-1 nginx: upstream timed out"),
            "upstream timed out"
        );
        // log4j: time, level, thread, logger.
        assert_eq!(
            message("2015-10-18 18:01:47,978 INFO [main] org.apache.hadoop.mapreduce.v2.app.MRAppMaster: Created MRAppMaster"),
            "Created MRAppMaster"
        );
        // A level word further in anchors the header.
        assert_eq!(
            message("- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 R02-M1-N0-C:J12-U11 RAS KERNEL INFO instruction cache parity error corrected"),
            "instruction cache parity error corrected"
        );
        // Pipe-separated columns.
        assert_eq!(
            message("20171223-22:15:29:606|Step_LSC|30002312|onStandStepChanged 3579"),
            "onStandStepChanged <*>"
        );
        // Nothing like a header: the whole line is the message.
        assert_eq!(
            message("GET /index.html 200 512"),
            "GET /index.html <*> <*>"
        );
        assert_eq!(message("error"), "error");
    }

    #[test]
    fn header_fields_do_not_split_a_message() {
        let mut m = Miner::new(MinerConfig::default());
        let a = m.add("2024-05-01 10:00:00 alpha INFO cache warmed");
        let b = m.add("2024-05-01 10:00:01 beta INFO cache warmed");
        assert_eq!(a.cluster, b.cluster);
        assert_eq!(
            m.template(a.cluster).unwrap(),
            "<*> <*> <*> INFO cache warmed"
        );
    }

    proptest::proptest! {
        /// The splitter agrees with a plain reading of its rules on any text without
        /// brackets or capitals: ASCII whitespace and `|` split, a token with a digit is
        /// masked, keeping a digit-free key before its first `=` or `:`, and a unit
        /// word after a masked token is masked.
        #[test]
        fn split_matches_the_plain_rules(text in "[a-z0-9=:| \t\n\x0c\r\x01é€_.%-]{0,80}|(ms|s|kb|[0-9]| |x)*") {
            let mut toks = Vec::new();
            split(&text, &mut toks);
            let mut want: Vec<(&str, Option<u32>)> = text
                .split(|c: char| c.is_ascii_whitespace() || c == '|' || c == '\x0c')
                .filter(|t| !t.is_empty())
                .map(|t| {
                    let d = t.bytes().position(|b| b.is_ascii_digit());
                    let p = t.bytes().position(|b| b == b'=' || b == b':');
                    let m = match (d, p) {
                        (None, _) => None,
                        (Some(d), Some(p)) if p > 0 && d > p => Some(p as u32 + 1),
                        _ => Some(0),
                    };
                    (t, m)
                })
                .collect();
            let units = [
                "b", "byte", "bytes", "kb", "mb", "gb", "tb", "pb", "kib", "mib", "gib", "tib",
                "ns", "us", "µs", "ms", "s", "sec", "secs", "second", "seconds", "min", "mins",
                "minute", "minutes", "h", "hr", "hrs", "hour", "hours", "day", "days", "%",
            ];
            for k in 1..want.len() {
                let core = want[k].0.trim_end_matches([',', ';', ')', ']', '.']);
                if want[k - 1].1 == Some(0) && want[k].1.is_none() && units.contains(&core) {
                    want[k].1 = Some(0);
                }
            }
            let got: Vec<(&str, Option<u32>)> = toks
                .iter()
                .map(|t| (&text[t.start as usize..t.end as usize], t.masked))
                .collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn keyed_values_keep_their_key() {
        let mut m = Miner::new(MinerConfig::default());
        let a = m.add("done totalCalories=126775 steps=12");
        assert!(a.new);
        assert_eq!(
            m.template(a.cluster).unwrap(),
            "done totalCalories=<*> steps=<*>"
        );
        let b = m.add("done totalCalories=5 steps=7");
        assert_eq!((b.id, b.new), (a.id, false));
    }
}
