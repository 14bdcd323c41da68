//! Needle filters: whether a row group, a segment or a block of hot rows may hold a
//! line containing a given substring, answered without reading its lines.
//!
//! **Gram filters** (written today) answer for any needle of 3 bytes or more. A
//! filter is a bitmap with one bit per entry (a Bloom filter with one hash):
//!
//! - every 3-byte gram of every line, at every offset;
//! - the 8-byte grams of every token (a run of ASCII letters, digits and `_`) of 8
//!   bytes or more, at every second offset from the token's start, that end inside it.
//!
//! Grams are case-folded (ASCII letters, and bytes that differ from another only in
//! bit `0x20`, hash alike), so one filter serves case-sensitive and case-insensitive
//! needles; a fold can only let more through, never rule out a match.
//!
//! A needle can be in a line only if each of its 3-byte grams is in the filter, and
//! the 8-byte grams of its tokens are:
//! - a token of the needle that starts after a non-token byte starts a token of the
//!   line too, so its grams at every second offset from its start, ending inside it,
//!   must all be there;
//! - a token at the needle's start may begin earlier in the line, so for one of the
//!   two alignments its grams at that alignment must all be there (checked when it
//!   is 9 bytes or more, so that each alignment has a gram).
//!
//! The long grams give selectivity where short grams cannot: a hex id is made of
//! 3-byte grams that every row group of ids holds. Anchoring them to tokens, not to
//! the line's start, keeps a template's words the same grams on every line whatever
//! the variable text before them, so filters stay small.
//!
//! A filter is built in a bitmap sized for the grams it may receive and then folded in
//! half (the two halves ORed) while it stays sparse enough: position `h mod m` folds
//! to `h mod m/2`, so a folded filter is the filter built at the smaller size. It
//! stops folding before a quarter of its bits are set, so each absent gram passes
//! with probability under a quarter; a needle of `n` grams with none present passes
//! with far less. Building is a store per gram into a bitmap that stays in cache; no
//! set of entries is gathered.
//!
//! **Token filters** (written before gram filters) indexed each token (a run of ASCII
//! letters, digits and `_`) and the 8-byte grams of long tokens at every fourth offset,
//! in a Bloom filter of 7 hashes. They are still read and answered by their own rule:
//! a token bounded inside the needle must appear whole; an edge token of 11 bytes or
//! more must have all its grams at one alignment. Shorter needles pass.
//!
//! Serialised, a gram filter is the tag [`GRAMS_TAG`] (4 bytes LE) then its words
//! (LE); a token filter is its hash count `k` (1 to 32, 4 bytes LE) then its words.

/// First word of a serialised gram filter (a token filter's first word is its hash
/// count, at most 32).
pub const GRAMS_TAG: u32 = 0x4752_4d02;

/// Bits of the largest gram filter (256 KiB).
pub const MAX_BITS_LOG2: u32 = 21;

/// Bits of the smallest (a whole number of words, and room for a few grams).
const MIN_BITS_LOG2: u32 = 9;

/// A filter stops folding when folding would set more than this share of its bits.
const MAX_FILL: f64 = 0.25;

/// One of the filters above.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bloom {
    bits: Vec<u64>,
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A gram filter; its size is a power of two.
    Grams,
    /// A token filter of `k` hashes.
    Tokens { k: u32 },
}

impl Bloom {
    /// Memory it takes.
    pub fn byte_size(&self) -> usize {
        self.bits.len() * 8 + 16
    }

    /// Share of its bits that are set.
    pub fn fill(&self) -> f64 {
        fill(&self.bits)
    }

    /// Serialised (see the module's notes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.bits.len() * 8);
        let head = match self.kind {
            Kind::Grams => GRAMS_TAG,
            Kind::Tokens { k } => k,
        };
        out.extend_from_slice(&head.to_le_bytes());
        for w in &self.bits {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Parses [`Bloom::to_bytes`]; `None` when malformed.
    pub fn from_bytes(b: &[u8]) -> Option<Bloom> {
        if b.len() < 12 || (b.len() - 4) % 8 != 0 {
            return None;
        }
        let head = u32::from_le_bytes(b[..4].try_into().ok()?);
        let bits: Vec<u64> = b[4..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let kind = match head {
            GRAMS_TAG if bits.len().is_power_of_two() && bits.len() * 64 <= 1 << 32 => Kind::Grams,
            1..=32 => Kind::Tokens { k: head },
            _ => return None,
        };
        Some(Bloom { bits, kind })
    }
}

fn fill(bits: &[u64]) -> f64 {
    let set: u64 = bits.iter().map(|w| u64::from(w.count_ones())).sum();
    set as f64 / (bits.len().max(1) * 64) as f64
}

/// Builds a gram filter from lines.
#[derive(Clone, Debug)]
pub struct GramBuilder {
    bits: Vec<u64>,
    /// `bits.len() * 64 - 1`.
    mask: u32,
    /// Whether any gram was added.
    any: bool,
}

impl GramBuilder {
    /// A builder of `2^log2` bits (clamped to the sizes filters take).
    pub fn with_bits_log2(log2: u32) -> GramBuilder {
        let log2 = log2.clamp(MIN_BITS_LOG2, MAX_BITS_LOG2);
        GramBuilder {
            bits: vec![0; 1 << (log2 - 6)],
            mask: (1u32 << log2) - 1,
            any: false,
        }
    }

    /// A builder sized for lines of `bytes` bytes in all: a bit for each gram they can
    /// hold, up to the largest size.
    pub fn for_bytes(bytes: usize) -> GramBuilder {
        let grams = bytes + bytes / 4;
        GramBuilder::with_bits_log2(grams.max(1).next_power_of_two().trailing_zeros())
    }

    /// The largest builder, for rows whose number is not known ahead.
    pub fn largest() -> GramBuilder {
        GramBuilder::with_bits_log2(MAX_BITS_LOG2)
    }

    #[inline]
    fn set(&mut self, h: u32) {
        let p = h & self.mask;
        self.bits[(p >> 6) as usize] |= 1 << (p & 63);
    }

    /// Adds one line's grams.
    pub fn add_line(&mut self, line: &[u8]) {
        let n = line.len();
        if n < 3 {
            return;
        }
        self.any = true;
        let mut i = 0;
        while i + 4 <= n {
            let v = u32::from_le_bytes(line[i..i + 4].try_into().expect("4 bytes"));
            self.set(tri_hash(v));
            i += 1;
        }
        // The last gram, where four bytes cannot be read.
        let v = u32::from(line[n - 3]) | u32::from(line[n - 2]) << 8 | u32::from(line[n - 1]) << 16;
        self.set(tri_hash(v));
        let mut i = 0;
        while i + 8 <= n {
            if !TOKEN[usize::from(line[i])] {
                i += 1;
                continue;
            }
            let s = i;
            i += 1;
            while i < n && TOKEN[usize::from(line[i])] {
                i += 1;
            }
            let mut p = s;
            while p + 8 <= i {
                let v = u64::from_le_bytes(line[p..p + 8].try_into().expect("8 bytes"));
                self.set(oct_hash(v));
                p += OCT_STRIDE;
            }
        }
    }

    /// Adds every gram of `other`, built at the same size.
    ///
    /// # Panics
    /// When the sizes differ.
    pub fn union(&mut self, other: &GramBuilder) {
        assert_eq!(
            self.bits.len(),
            other.bits.len(),
            "gram builders of one size"
        );
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= b;
        }
        self.any |= other.any;
    }

    /// Whether no gram was added.
    pub fn is_empty(&self) -> bool {
        !self.any
    }

    /// Memory it takes.
    pub fn byte_size(&self) -> usize {
        self.bits.len() * 8 + 16
    }

    /// Forgets every gram, keeping the size.
    pub fn clear(&mut self) {
        self.bits.fill(0);
        self.any = false;
    }

    /// The filter: the bitmap folded while it stays sparse.
    pub fn finish(&self) -> Bloom {
        let mut bits = self.bits.clone();
        let mut f = fill(&bits);
        while bits.len() > 1 << (MIN_BITS_LOG2 - 6) && 2.0 * f - f * f <= MAX_FILL {
            let half = bits.len() / 2;
            let (lo, hi) = bits.split_at_mut(half);
            for (a, b) in lo.iter_mut().zip(hi.iter()) {
                *a |= b;
            }
            bits.truncate(half);
            f = fill(&bits);
        }
        Bloom {
            bits,
            kind: Kind::Grams,
        }
    }
}

/// Offsets between a token's 8-byte grams.
const OCT_STRIDE: usize = 2;

/// Folds case: bit `0x20` of every byte set.
const FOLD32: u32 = 0x2020_2020;
const FOLD64: u64 = 0x2020_2020_2020_2020;

/// A 3-byte gram (the low three bytes of `v`), folded, to its position: the high
/// half of a multiplicative hash (all 24 bits reach every bit of it).
#[inline]
fn tri_hash(v: u32) -> u32 {
    let x = u64::from((v | FOLD32) & 0x00ff_ffff);
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

/// An 8-byte gram, folded, to its position: a folded 128-bit multiply (the high and
/// low halves of the product XORed), which mixes every input bit into the low bits.
#[inline]
fn oct_hash(v: u64) -> u32 {
    let m = u128::from(v | FOLD64) * u128::from(0xf39c_c060_5ced_c835_u64);
    ((m >> 64) as u64 ^ m as u64) as u32
}

fn is_token_byte(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// Tokens of `s` as (start, end) byte ranges.
fn token_ranges(s: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < s.len() && !is_token_byte(s[i]) {
            i += 1;
        }
        if i >= s.len() {
            return None;
        }
        let start = i;
        while i < s.len() && is_token_byte(s[i]) {
            i += 1;
        }
        Some((start, i))
    })
}

/// Whether each byte is a token byte: an ASCII letter or digit, or `_`.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_';
        b += 1;
    }
    t
};

/// A needle prepared for checking many filters.
#[derive(Clone, Debug)]
pub struct Probe {
    needle: Vec<u8>,
    /// Hashes of its 3-byte grams and of the 8-byte grams of its tokens that start
    /// inside it, distinct: all must be present.
    all: Vec<u32>,
    /// Hashes of the 8-byte grams of its leading token at each alignment; empty
    /// unless every alignment has one. One alignment's must all be
    /// present.
    lead: Vec<Vec<u32>>,
}

impl Probe {
    pub fn new(needle: &[u8]) -> Probe {
        let n = needle.len();
        let oct = |q: usize| {
            oct_hash(u64::from_le_bytes(
                needle[q..q + 8].try_into().expect("8 bytes"),
            ))
        };
        let mut all: Vec<u32> = (0..n.saturating_sub(2))
            .map(|i| {
                tri_hash(
                    u32::from(needle[i])
                        | u32::from(needle[i + 1]) << 8
                        | u32::from(needle[i + 2]) << 16,
                )
            })
            .collect();
        let mut lead = Vec::new();
        for (s, i) in token_ranges(needle) {
            if s > 0 {
                all.extend(
                    (s..)
                        .step_by(OCT_STRIDE)
                        .take_while(|p| p + 8 <= i)
                        .map(oct),
                );
            } else if i >= 8 + OCT_STRIDE - 1 {
                lead = (0..OCT_STRIDE)
                    .map(|r| {
                        (r..)
                            .step_by(OCT_STRIDE)
                            .take_while(|p| p + 8 <= i)
                            .map(oct)
                            .collect()
                    })
                    .collect();
            }
        }
        all.sort_unstable();
        all.dedup();
        Probe {
            needle: needle.to_vec(),
            all,
            lead,
        }
    }

    /// Whether the filter may hold a line containing the needle; `false` is certain.
    pub fn may_match(&self, b: &Bloom) -> bool {
        match b.kind {
            Kind::Grams => self.grams_pass(&b.bits),
            Kind::Tokens { k } => tokens::may_contain(&b.bits, k, &self.needle),
        }
    }

    /// As [`Probe::may_match`], for the grams a builder holds so far.
    pub fn may_match_building(&self, b: &GramBuilder) -> bool {
        self.grams_pass(&b.bits)
    }

    fn grams_pass(&self, bits: &[u64]) -> bool {
        let mask = (bits.len() * 64 - 1) as u32;
        let has = |h: &u32| {
            let p = h & mask;
            bits[(p >> 6) as usize] & (1 << (p & 63)) != 0
        };
        self.all.iter().all(has)
            && (self.lead.is_empty() || self.lead.iter().any(|a| a.iter().all(has)))
    }
}

/// Whether a filter may hold a line containing `needle`.
pub fn may_contain(b: &Bloom, needle: &[u8]) -> bool {
    Probe::new(needle).may_match(b)
}

/// What a query's line filters need of a line, as filters can check it: groups of
/// needles, every group with at least one needle in the line. A `|= "x"` filter is a
/// group of one; a regular expression gives the literals each match starts with, and
/// those it ends with, when few enough (see [`regex_literals`]).
#[derive(Clone, Debug, Default)]
pub struct Needles {
    groups: Vec<Vec<Probe>>,
}

impl Needles {
    /// Adds a needle every wanted line contains.
    pub fn contains(&mut self, needle: &[u8]) {
        if needle.len() >= 3 {
            self.groups.push(vec![Probe::new(needle)]);
        }
    }

    /// Adds what every line a regular expression matches must contain.
    pub fn regex(&mut self, pattern: &str) {
        for group in regex_literals(pattern) {
            self.groups
                .push(group.iter().map(|l| Probe::new(l)).collect());
        }
    }

    /// Whether there is nothing to check (every filter passes).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Whether the filter may hold a wanted line; `false` is certain.
    pub fn may_match(&self, b: &Bloom) -> bool {
        self.groups.iter().all(|g| g.iter().any(|p| p.may_match(b)))
    }

    /// As [`Needles::may_match`], for the grams a builder holds so far.
    pub fn may_match_building(&self, b: &GramBuilder) -> bool {
        self.groups
            .iter()
            .all(|g| g.iter().any(|p| p.may_match_building(b)))
    }
}

/// Most literals a group drawn from a regular expression holds.
const MAX_REGEX_LITERALS: usize = 64;

/// Groups of literals a regular expression's matches contain: the literals every
/// match starts with, and those every match ends with, each kept when it is a finite
/// set of at most [`MAX_REGEX_LITERALS`] literals of 3 bytes or more (a shorter one
/// would let every filter through); a larger set is cut to shorter literals first. The pattern is parsed as LogQL's `|~` compiles
/// it (a byte regex). Look-arounds (`^`, `\b`) are taken to match anywhere, which can
/// only keep more literals' lines. An invalid pattern gives nothing.
pub fn regex_literals(pattern: &str) -> Vec<Vec<Vec<u8>>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let Ok(hir) = regex_syntax::ParserBuilder::new()
        .utf8(false)
        .build()
        .parse(pattern)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for prefix in [true, false] {
        let mut ex = Extractor::new();
        ex.kind(if prefix {
            ExtractKind::Prefix
        } else {
            ExtractKind::Suffix
        });
        let seq = ex.extract(&hir);
        let Some(lits) = seq.literals() else { continue };
        let mut group: Vec<Vec<u8>> = lits.iter().map(|l| l.as_bytes().to_vec()).collect();
        // Too many (`5[0-9]{2}` is a hundred): every literal is cut to its first bytes
        // (its last for the literals matches end with), which a match still holds,
        // until alike ones merge into few enough.
        let mut keep = group.iter().map(Vec::len).max().unwrap_or(0);
        loop {
            group.sort();
            group.dedup();
            if group.len() <= MAX_REGEX_LITERALS || keep <= 3 {
                break;
            }
            keep -= 1;
            for l in &mut group {
                if l.len() > keep {
                    if prefix {
                        l.truncate(keep);
                    } else {
                        l.drain(..l.len() - keep);
                    }
                }
            }
        }
        if group.is_empty() || group.len() > MAX_REGEX_LITERALS || group.iter().any(|l| l.len() < 3)
        {
            continue;
        }
        if !out.contains(&group) {
            out.push(group);
        }
    }
    out
}

/// The token filters written before gram filters: read, and (for tests) built.
mod tokens {
    /// FNV-1a with a tag, then fmix64.
    pub(super) fn hash(tag: u8, bytes: &[u8]) -> u64 {
        crate::segment::tagged_hash(tag, bytes)
    }

    const GRAM: usize = 8;
    const STRIDE: usize = 4;

    use super::token_ranges as tokens;

    fn positions(m: u64, k: u32, h: u64) -> impl Iterator<Item = usize> {
        let h2 = h.rotate_left(32) | 1;
        (0..u64::from(k)).map(move |i| (h.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    fn contains(bits: &[u64], k: u32, h: u64) -> bool {
        positions((bits.len() * 64) as u64, k, h).all(|p| bits[p / 64] & (1 << (p % 64)) != 0)
    }

    pub(super) fn may_contain(bits: &[u64], k: u32, needle: &[u8]) -> bool {
        for (a, b) in tokens(needle) {
            let t = &needle[a..b];
            let whole = a > 0 && b < needle.len();
            if whole {
                if !contains(bits, k, hash(0, t)) {
                    return false;
                }
            } else if t.len() >= GRAM + STRIDE - 1 {
                let aligned = (0..STRIDE).any(|r| {
                    (r..=t.len() - GRAM)
                        .step_by(STRIDE)
                        .all(|q| contains(bits, k, hash(1, &t[q..q + GRAM])))
                });
                if !aligned {
                    return false;
                }
            }
        }
        true
    }

    /// A token filter of `lines`, as the earlier code built it.
    #[cfg(test)]
    pub(super) fn build(lines: &[&[u8]]) -> super::Bloom {
        let mut entries = std::collections::HashSet::new();
        for line in lines {
            for (a, b) in tokens(line) {
                let t = &line[a..b];
                entries.insert(hash(0, t));
                let mut p = 0;
                while p + GRAM <= t.len() {
                    entries.insert(hash(1, &t[p..p + GRAM]));
                    p += STRIDE;
                }
            }
        }
        let words = (entries.len().max(64) * 10).div_ceil(64);
        let mut bits = vec![0u64; words];
        let m = (words * 64) as u64;
        for h in entries {
            for p in positions(m, 7, h) {
                bits[p / 64] |= 1 << (p % 64);
            }
        }
        super::Bloom {
            bits,
            kind: super::Kind::Tokens { k: 7 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(lines: &[&[u8]]) -> Bloom {
        let mut b = GramBuilder::for_bytes(lines.iter().map(|l| l.len()).sum());
        for l in lines {
            b.add_line(l);
        }
        b.finish()
    }

    #[test]
    fn short_needles_inside_tokens_and_across_punctuation_are_found() {
        let lines: [&[u8]; 3] = [
            b"GET /api/items/42 200 user=alice trace=4bf92f3577b34da6",
            b"ERROR disk /dev/sda1 full",
            b"x",
        ];
        let f = build(&lines);
        assert_eq!(f.kind, Kind::Grams);
        for n in [
            &b"api"[..],
            b"s/42 2",
            b"r=a",
            b"f3577b34da6",
            b"4bf92f3577b34da6",
            b"sda",
            b"ERR",
            b"err",
            b"Disk /DEV",
            b"ab",
            b"",
        ] {
            assert!(may_contain(&f, n), "{:?}", String::from_utf8_lossy(n));
        }
        for n in [&b"zebra"[..], b"qqq", b"trace=deadbeefcafe", b"user=bob"] {
            assert!(!may_contain(&f, n), "{:?}", String::from_utf8_lossy(n));
        }
        // A line shorter than a gram adds nothing; a filter of such lines passes
        // only needles too short to check.
        let tiny = build(&[b"ab"]);
        assert!(!may_contain(&tiny, b"abc"));
    }

    #[test]
    fn a_sparse_filter_folds_and_a_full_one_does_not() {
        let small = build(&[b"one short line"]);
        assert_eq!(small.bits.len() * 64, 1 << MIN_BITS_LOG2);
        let mut big = GramBuilder::largest();
        let mut x = 0x1234_5678_u64;
        let mut lines = Vec::new();
        for _ in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            lines.push(format!("id={x:016x} {:08x}", x >> 7));
        }
        for l in &lines {
            big.add_line(l.as_bytes());
        }
        let f = big.finish();
        assert!(f.fill() <= MAX_FILL, "{}", f.fill());
        assert!(f.bits.len() * 64 < 1 << MAX_BITS_LOG2);
        for l in lines.iter().step_by(997) {
            assert!(may_contain(&f, &l.as_bytes()[3..19]));
        }
        // Absent ids, written as the lines write them: each of their 3-byte grams is
        // present (every row of hex ids holds them all), so the 8-byte grams decide.
        let passed = (0..2_000u64)
            .filter(|i| {
                let id = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                may_contain(&f, format!("id={id:016x} ").as_bytes())
            })
            .count();
        assert!(passed < 200, "{passed} of 2000 absent ids passed");
    }

    #[test]
    fn filters_written_before_gram_filters_still_answer() {
        let lines: [&[u8]; 2] = [
            b"GET /api/items/42 trace=4bf92f3577b34da6a3ce0000099999",
            b"payment ok",
        ];
        let old = tokens::build(&lines);
        let back = Bloom::from_bytes(&old.to_bytes()).unwrap();
        assert_eq!(back, old);
        assert!(may_contain(&back, b" items "));
        assert!(may_contain(&back, b"trace=4bf92f3577b34da6a3ce"));
        assert!(!may_contain(&back, b" zebra "));
        assert!(!may_contain(&back, b"trace=deadbeefcafe1234567"));
        // Needles it cannot check pass.
        assert!(may_contain(&back, b"zeb"));
        // A malformed head is refused.
        let mut bad = old.to_bytes();
        bad[..4].copy_from_slice(&33u32.to_le_bytes());
        assert!(Bloom::from_bytes(&bad).is_none());
        let mut odd = build(&lines).to_bytes();
        odd.truncate(odd.len() - 8);
        assert!(
            Bloom::from_bytes(&odd).is_none(),
            "a gram filter's words are a power of two"
        );
    }

    #[test]
    fn case_is_folded_both_ways() {
        let f = build(&[b"Connection RESET by Peer"]);
        for n in [
            &b"connection reset"[..],
            b"CONNECTION",
            b"reset BY peer",
            b"Peer",
        ] {
            assert!(may_contain(&f, n));
        }
    }

    fn line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "[a-z0-9_ =/.:-]{0,80}".prop_map(String::into_bytes),
            "[A-Za-z]{0,12}( [0-9a-f]{1,20}){0,6}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..60),
        ]
    }

    #[test]
    fn regexes_give_the_literals_their_matches_start_and_end_with() {
        let lits = |p: &str| -> Vec<Vec<String>> {
            regex_literals(p)
                .into_iter()
                .map(|g| {
                    g.into_iter()
                        .map(|l| String::from_utf8(l).unwrap())
                        .collect()
                })
                .collect()
        };
        assert_eq!(lits("err(or)?: db"), vec![vec!["err: db", "error: db"]]);
        assert_eq!(lits("timeout|x1 x1"), vec![vec!["timeout", "x1 x1"]]);
        assert_eq!(lits("[0-9a-f]+ done"), vec![vec![" done"]]);
        // Nothing to prune on: literals too short, or none.
        assert!(lits("u[0-9]+").is_empty());
        assert!(lits(".*").is_empty());
        assert!(lits("(unclosed").is_empty());
        let f = build(&[b"GET /health 200", b"db timeout after 3s"]);
        let pass = |p: &str| {
            let mut n = Needles::default();
            n.regex(p);
            n.may_match(&f)
        };
        assert!(pass("(?i)get /HEALTH"));
        assert!(pass("time(out|d)"));
        assert!(!pass("zebra|giraffe"));
        assert!(!pass("^panic: .*"));
    }

    /// Regular expressions of the pieces people write them with.
    fn regex() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            4 => "[a-eA-E ]{1,5}",
            1 => Just("[a-c]".to_owned()),
            1 => Just("[0-9]+".to_owned()),
            1 => Just(".".to_owned()),
            1 => Just("\\d".to_owned()),
            // Classes that multiply into more literals than a group keeps.
            1 => Just("[0-9]{2}".to_owned()),
            1 => Just("[a-e][0-9][A-E]".to_owned()),
            1 => Just("\\b".to_owned()),
            1 => Just("^".to_owned()),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 1..4).prop_map(|v| v.concat()),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("(?:{a}|{b})")),
                inner.clone().prop_map(|a| format!("(?:{a})?")),
                inner.clone().prop_map(|a| format!("(?:{a})*")),
                inner.clone().prop_map(|a| format!("(?:{a}){{2,3}}")),
                inner.prop_map(|a| format!("(?i:{a})")),
            ]
        })
    }

    #[test]
    fn literals_too_many_to_keep_are_cut_shorter() {
        let groups = regex_literals("status=5[0-9]{2} ");
        let want: Vec<Vec<u8>> = (0..10)
            .map(|d| format!("status=5{d}").into_bytes())
            .collect();
        assert_eq!(groups, vec![want]);
        let groups = regex_literals("code [0-9]{3}");
        let want: Vec<Vec<u8>> = (0..10).map(|d| format!("code {d}").into_bytes()).collect();
        assert_eq!(groups, vec![want]);
    }

    proptest! {
        /// A line a regular expression matches always passes the filter of its lines,
        /// checked by the literals drawn from the expression.
        #[test]
        fn regex_literals_never_rule_out_a_match(
            pattern in regex(),
            lines in proptest::collection::vec("[a-eA-E0-9 ]{0,40}", 1..30),
        ) {
            let re = regex::bytes::Regex::new(&pattern).unwrap();
            let mut needles = Needles::default();
            needles.regex(&pattern);
            for l in &lines {
                if re.is_match(l.as_bytes()) {
                    let f = build(&[l.as_bytes()]);
                    prop_assert!(needles.may_match(&f), "{:?} matches {:?}", pattern, l);
                }
            }
        }

        /// No filter ever rules out a line that contains the needle: any substring of
        /// any line, whatever its length, bytes or case, and whether the filter was
        /// folded, serialised or read while building.
        #[test]
        fn gram_filters_have_no_false_negatives(
            lines in proptest::collection::vec(line(), 1..60),
            picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..20),
            upper in any::<bool>(),
            log2 in 9u32..16,
        ) {
            let mut b = GramBuilder::with_bits_log2(log2);
            for l in &lines {
                b.add_line(l);
            }
            let f = b.finish();
            let back = Bloom::from_bytes(&f.to_bytes()).unwrap();
            prop_assert_eq!(&back, &f);
            for (pick, s, e) in picks {
                let line = &lines[pick.index(lines.len())];
                let (mut i, mut j) = (s.index(line.len() + 1), e.index(line.len() + 1));
                if i > j {
                    std::mem::swap(&mut i, &mut j);
                }
                let mut needle = line[i..j].to_vec();
                if upper {
                    needle.make_ascii_uppercase();
                }
                let p = Probe::new(&needle);
                prop_assert!(p.may_match(&f), "{:?} in {:?}", needle, line);
                prop_assert!(p.may_match(&back));
                prop_assert!(p.may_match_building(&b));
            }
        }
    }
}
