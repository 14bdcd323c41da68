//! Template-columnar encoding of a segment row group's lines: each line split into its
//! template (the text with its variables cut out) and its variables, the variables of
//! each template slot stored together as a column, numbers as numbers.
//!
//! A log line is mostly its template: `Accepted publickey for deploy from 10.0.3.7
//! port 52144` repeats everything but the numbers. General-purpose compression sees the
//! numbers of one line next to the words of the next; stored apart, per slot, they
//! compress close to what they really carry (a port is two bytes, an octet one), and
//! the templates, few per row group, cost a small index per line.
//!
//! # Splitting a line
//!
//! A token is a maximal run of ASCII letters and digits. A token without a digit is
//! part of the template; a token with one is a variable, marked in the template by the
//! placeholder byte `0x01`. Each slot's values are stored together, as numbers when
//! every one of them prints back from one number format, else as strings:
//!
//! | format | tokens |
//! |---|---|
//! | decimal, width `w` | digits, below 2^64; a token with a leading zero is `w` long, any other at least `w` |
//! | lowercase hex, width `w` | digits and `a`–`f`, up to 16, likewise |
//! | uppercase hex, width `w` | digits and `A`–`F`, likewise |
//!
//! A number prints in at least its width's digits, zero-padded: `07` and `23` are
//! decimal at width 2, `7` and `23` at width 1; `x86` or `v2` make their slot a column
//! of strings. So every line comes back byte for byte. Lines are templated as bytes
//! (valid UTF-8 or not); a line is kept whole instead (in the segment's `line` column)
//! when it holds a byte `0x01`–`0x05`, is longer than [`MAX_LINE`], has more than
//! [`MAX_VARS`] variables, or would add a template past [`MAX_TEMPLATES`] in its row
//! group.
//!
//! # Templates of a few rows
//!
//! Words vary too: a user name, a node name, a severity, a message after a structured
//! header. Each variant is a template of its own, and a template of a few rows costs
//! more as columns than its lines do as text. Templates of fewer than [`SHAPE_ROWS`]
//! rows are therefore grouped by shape (see [`merge_shapes`]): lines with the same
//! punctuation around the same number of tokens share one template whose slots are the
//! tokens that differ among them, and what is still left is grouped by the shape of its
//! first tokens, the rest of each line one slot. A template still under [`MIN_ROWS`]
//! rows leaves its lines whole.
//!
//! # The block
//!
//! One block per row group, all integers LEB128 varints unless said otherwise:
//!
//! ```text
//! version (1 byte, 3)   rows   templates
//! per template: length, bytes
//! per row: its template number, 0 for a line kept whole, else 1 + its index
//! per template, per slot in the template's order: the column of the values of the
//!   rows with that template, in row order, after a tag byte:
//!   5 = numbers: format byte (2 decimal, 3 lowercase hex, 4 uppercase hex), width
//!       byte, then the values after one of these tags:
//!         0 = frame of reference: min, width byte w, then each (v - min) in w bytes
//!         1 = deltas (values never decrease): first, min delta, width byte w, then
//!             each later (delta - min delta) in w bytes
//!         6 = wandering: each value's difference from the one before (the first's
//!             from 0), zigzag-folded (0, -1, 1, -2 … as 0, 1, 2, 3 …), as a varint
//!   2 = strings, plain: each length, then the bytes one after the other
//!   3 = strings, dictionary: entries, each entry's length, the entries' bytes, width
//!       byte w, then each row's entry number in w bytes
//!   4 = the same values as an earlier slot k of the template (k given), for a value
//!       logged twice in a line
//! ```
//!
//! A run of `n` values in `w` bytes is stored as `w` byte planes: the lowest byte of
//! every value, then the next byte of every value, and so on. The entropy coding is
//! left to the compression of the Parquet page that carries the block (zstd), which
//! does well on bytes of equal meaning side by side: a plane of high bytes that barely
//! change costs almost nothing.
//!
//! # Earlier versions, still read
//!
//! - Version 2 marked each variable's format in the template: `0x01` decimal without
//!   leading zeros, `0x02 w` decimal of `w` digits, `0x03 w` and `0x04 w` lower- and
//!   uppercase hex of `w` digits, `0x05` a string; a slot's column then had no tag 5
//!   and no format of its own, and tag 6 did not exist.
//! - Version 1 was version 2 with fixed-width runs stored value by value, each value's
//!   bytes together, little-endian.

use crate::fast_hash::FastMap;
use crate::volume::{put_varint, varint};

/// Longest line templated; longer lines are kept whole.
pub const MAX_LINE: usize = 16 * 1024;
/// Most variables in a templated line.
pub const MAX_VARS: usize = 255;
/// Fewest rows a template needs in its row group to be stored as columns.
pub const MIN_ROWS: usize = 8;
/// Templates of fewer rows are tried against others of their shape (see
/// [`merge_shapes`]).
pub const SHAPE_ROWS: usize = 64;
/// Longest shape a line is grouped by (see [`merge_shapes`]); lines of longer shapes
/// are grouped only by their first-pass template.
pub const MAX_SHAPE: usize = 1024;
/// Most templates in one row group.
pub const MAX_TEMPLATES: usize = 65_535;

/// The block version written: 3 marks every variable with one placeholder and keeps
/// its number format in its column; 2 (read) marked the format in the template; 1
/// (read) also stored fixed-width runs value by value, not as byte planes.
const VERSION: u8 = 3;
/// A variable's placeholder in a version 3 template.
const P_VAR: u8 = 1;
// Version 2's placeholders; the last three name a number column's format in version 3.
const P_DEC: u8 = 1;
const P_DEC_PAD: u8 = 2;
const P_HEX_LOWER: u8 = 3;
const P_HEX_UPPER: u8 = 4;
const P_STR: u8 = 5;

const C_FOR: u8 = 0;
const C_DELTA: u8 = 1;
const C_PLAIN: u8 = 2;
const C_DICT: u8 = 3;
const C_SAME: u8 = 4;
const C_NUM: u8 = 5;
const C_WANDER: u8 = 6;
/// How many earlier slots a column is compared with for [`C_SAME`].
const SAME_LOOKBACK: usize = 16;

/// A block that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("template block: {0}")]
pub struct Corrupt(pub String);

fn corrupt(what: &str) -> Corrupt {
    Corrupt(what.to_owned())
}

/// Splits `line` into its template (appended to `tmpl`) and variables (appended to
/// `vars`); `false` when the line is kept whole.
fn split<'a>(line: &'a [u8], tmpl: &mut Vec<u8>, vars: &mut Vec<&'a [u8]>) -> bool {
    if line.len() > MAX_LINE {
        return false;
    }
    // Literal text is copied in runs: from `lit` up to the next variable.
    let mut lit = 0;
    let mut i = 0;
    while i < line.len() {
        let class = CLASS[usize::from(line[i])];
        if class == OTHER {
            i += 1;
            continue;
        }
        if class == MARK {
            return false;
        }
        let start = i;
        let mut digits = false;
        while i < line.len() {
            match CLASS[usize::from(line[i])] {
                DIGIT => digits = true,
                LETTER => {}
                _ => break,
            }
            i += 1;
        }
        if !digits {
            continue;
        }
        let t = &line[start..i];
        tmpl.extend_from_slice(&line[lit..start]);
        lit = i;
        if vars.len() == MAX_VARS {
            return false;
        }
        tmpl.push(P_VAR);
        vars.push(t);
    }
    tmpl.extend_from_slice(&line[lit..]);
    true
}

const OTHER: u8 = 0;
const LETTER: u8 = 1;
const DIGIT: u8 = 2;
/// A placeholder byte: the line is kept whole.
const MARK: u8 = 3;

/// Each byte's class, for [`split`].
static CLASS: [u8; 256] = {
    let mut c = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let x = b as u8;
        c[b] = if x.is_ascii_digit() {
            DIGIT
        } else if x.is_ascii_alphabetic() {
            LETTER
        } else if x >= P_DEC && x <= P_STR {
            MARK
        } else {
            OTHER
        };
        b += 1;
    }
    c
};

/// A template's parts: literal byte ranges of the template text, and slots.
#[derive(Clone, Copy)]
enum Part {
    Lit(usize, usize),
    /// Placeholder and width.
    Slot(u8, u8),
}

fn parts(t: &[u8], version: u8) -> Result<Vec<Part>, Corrupt> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut lit = 0;
    while i < t.len() {
        let b = t[i];
        if !(P_DEC..=P_STR).contains(&b) {
            i += 1;
            continue;
        }
        if lit < i {
            out.push(Part::Lit(lit, i));
        }
        if version >= 3 && b != P_VAR {
            return Err(corrupt("a version 2 placeholder in a version 3 template"));
        }
        let w = if version < 3 && matches!(b, P_DEC_PAD | P_HEX_LOWER | P_HEX_UPPER) {
            i += 1;
            let w = *t
                .get(i)
                .ok_or_else(|| corrupt("template ends in a placeholder"))?;
            let max = if b == P_DEC_PAD { 19 } else { 16 };
            if w == 0 || w > max {
                return Err(corrupt("placeholder width out of range"));
            }
            w
        } else {
            0
        };
        out.push(Part::Slot(b, w));
        i += 1;
        lit = i;
    }
    if lit < t.len() {
        out.push(Part::Lit(lit, t.len()));
    }
    Ok(out)
}

fn is_str(p: u8) -> bool {
    p == P_STR
}

/// Bytes needed to hold `v`.
fn width(v: u64) -> u8 {
    (8 - (v.leading_zeros() / 8)) as u8
}

/// Writes the values in `w` bytes each, as byte planes (see the module docs).
fn put_planes(out: &mut Vec<u8>, v: impl Iterator<Item = u64> + Clone, w: u8) {
    for b in 0..u32::from(w) {
        out.extend(v.clone().map(|x| (x >> (8 * b)) as u8));
    }
}

/// A difference between neighbours, signed, folded so that small ones of either sign
/// are small numbers.
fn zigzag(from: u64, to: u64) -> u64 {
    let d = to.wrapping_sub(from) as i64;
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(from: u64, z: u64) -> u64 {
    let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
    from.wrapping_add(d as u64)
}

fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

fn put_numbers(out: &mut Vec<u8>, v: &[u64]) {
    // One pass for every encoding's size: the range; whether values never decrease,
    // and the range of their steps; and, for values that wander (a clock read as
    // `hhmmss`, an offset), the bytes of each one's signed difference from the one
    // before.
    let (mut min, mut max) = (u64::MAX, 0);
    let (mut dmin, mut dmax) = (u64::MAX, 0);
    let mut monotonic = v.len() > 1;
    let mut wander = 0;
    let mut prev = 0;
    for (i, x) in v.iter().copied().enumerate() {
        min = min.min(x);
        max = max.max(x);
        wander += varint_len(zigzag(prev, x));
        if i > 0 {
            monotonic &= prev <= x;
            let d = x.wrapping_sub(prev);
            dmin = dmin.min(d);
            dmax = dmax.max(d);
        }
        prev = x;
    }
    let for_width = width(max.wrapping_sub(min));
    let delta_width = monotonic.then(|| (dmin, width(dmax - dmin)));
    let fixed = for_width.min(delta_width.map_or(8, |(_, w)| w));
    if wander < v.len() * usize::from(fixed) {
        out.push(C_WANDER);
        let mut prev = 0;
        for x in v {
            put_varint(out, zigzag(prev, *x));
            prev = *x;
        }
        return;
    }
    if let Some((dmin, dw)) = delta_width {
        if dw < for_width {
            out.push(C_DELTA);
            put_varint(out, v[0]);
            put_varint(out, dmin);
            out.push(dw);
            put_planes(out, v.windows(2).map(|p| p[1] - p[0] - dmin), dw);
            return;
        }
    }
    out.push(C_FOR);
    put_varint(out, if v.is_empty() { 0 } else { min });
    out.push(for_width);
    put_planes(out, v.iter().map(|x| x - min), for_width);
}

fn put_strings(out: &mut Vec<u8>, v: &[&[u8]]) {
    let mut dict: FastMap<&[u8], u32> = FastMap::default();
    let mut entries: Vec<&[u8]> = Vec::new();
    for s in v {
        dict.entry(s).or_insert_with(|| {
            entries.push(s);
            entries.len() as u32 - 1
        });
    }
    if entries.len() * 2 <= v.len() {
        out.push(C_DICT);
        put_varint(out, entries.len() as u64);
        for e in &entries {
            put_varint(out, e.len() as u64);
        }
        for e in &entries {
            out.extend_from_slice(e);
        }
        let w = width(entries.len().saturating_sub(1) as u64).max(1);
        out.push(w);
        let idx: Vec<u64> = v.iter().map(|s| u64::from(dict[s])).collect();
        put_planes(out, idx.iter().copied(), w);
    } else {
        out.push(C_PLAIN);
        for s in v {
            put_varint(out, s.len() as u64);
        }
        for s in v {
            out.extend_from_slice(s);
        }
    }
}

/// Digit values per byte for each number format: decimal, lowercase hex, uppercase
/// hex; `NOT_DIGIT` for a byte that is not a digit of that format.
static DIGITS: [[u8; 256]; 3] = {
    let mut t = [[NOT_DIGIT; 256]; 3];
    let mut b = 0;
    while b < 256 {
        let x = b as u8;
        if x.is_ascii_digit() {
            t[0][b] = x - b'0';
            t[1][b] = x - b'0';
            t[2][b] = x - b'0';
        } else if x >= b'a' && x <= b'f' {
            t[1][b] = x - b'a' + 10;
        } else if x >= b'A' && x <= b'F' {
            t[2][b] = x - b'A' + 10;
        }
        b += 1;
    }
    t
};
const NOT_DIGIT: u8 = 0xff;
/// Per byte, the formats it is a digit of, bit `f` for `DIGITS[f]`.
static FORMAT_BITS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let mut f = 0;
        while f < 3 {
            if DIGITS[f][b] != NOT_DIGIT {
                t[b] |= 1 << f;
            }
            f += 1;
        }
        b += 1;
    }
    t
};
/// The formats, in the order [`DIGITS`] has them.
const FORMATS: [u8; 3] = [P_DEC_PAD, P_HEX_LOWER, P_HEX_UPPER];

/// The values of a column of tokens read as numbers of `kind` ([`P_DEC_PAD`],
/// [`P_HEX_LOWER`] or [`P_HEX_UPPER`]), and the one width that prints every token
/// back as it was: `None` when some token is not such a number or no width fits.
///
/// A number prints in at least its width's digits, zero-padded: a token with a
/// leading zero fixes the width at its length, and every other token must be at least
/// that long (`07` and `12` print at width 2, `7` and `12` at width 1).
fn fit(col: &[&[u8]], kind: u8) -> Option<(u8, Vec<u64>)> {
    let f = FORMATS.iter().position(|k| *k == kind)?;
    let digits = &DIGITS[f];
    let (base, longest): (u64, usize) = if f == 0 { (10, 20) } else { (16, 16) };
    let mut fixed = None;
    let mut shortest_unpadded = usize::MAX;
    let mut values = Vec::with_capacity(col.len());
    for t in col {
        if t.is_empty() || t.len() > longest {
            return None;
        }
        let mut v = 0u64;
        for &b in &t[..t.len().min(19)] {
            let d = digits[usize::from(b)];
            if d == NOT_DIGIT {
                return None;
            }
            // 19 decimal or 16 hex digits cannot overflow.
            v = v * base + u64::from(d);
        }
        if t.len() == 20 {
            let d = digits[usize::from(t[19])];
            if d == NOT_DIGIT {
                return None;
            }
            v = v.checked_mul(base)?.checked_add(u64::from(d))?;
        }
        if t[0] == b'0' && t.len() > 1 {
            if *fixed.get_or_insert(t.len()) != t.len() {
                return None;
            }
        } else {
            shortest_unpadded = shortest_unpadded.min(t.len());
        }
        values.push(v);
    }
    let w = fixed.unwrap_or(1);
    (shortest_unpadded >= w).then_some((w as u8, values))
}

/// Writes one slot's column: numbers when every token reads back from one number
/// format, else strings.
fn put_column(out: &mut Vec<u8>, col: &[&[u8]]) {
    // Which formats every byte of every token allows, one bit each, before any is
    // parsed: a column of words is known for strings at its first letter.
    let mut allowed = 0b111u8;
    for t in col {
        for &b in *t {
            allowed &= FORMAT_BITS[usize::from(b)];
        }
        if allowed == 0 {
            break;
        }
    }
    for (f, kind) in FORMATS.iter().enumerate() {
        if allowed & (1 << f) == 0 {
            continue;
        }
        if let Some((w, v)) = fit(col, *kind) {
            out.push(C_NUM);
            out.push(*kind);
            out.push(w);
            put_numbers(out, &v);
            return;
        }
    }
    put_strings(out, col);
}

/// The shapes of lines, each computed once for every depth [`merge_shapes`] tries: a
/// line's text with each token (run of letters and digits) replaced by one
/// placeholder, where each token's placeholder is in it, and each token's place in
/// the line. A shape is cut where it passes [`MAX_SHAPE`] (shapes are kept as keys
/// while a row group is grouped, and this bounds them): tokens past that are not used.
#[derive(Default)]
struct Shapes {
    text: Vec<u8>,
    /// Per token: where its placeholder is in its line's shape (from the shape's
    /// start), and its start and end in the line.
    tokens: Vec<(usize, usize, usize)>,
    /// Per line added: its shape's range in `text`, its tokens' range in `tokens`, and
    /// whether the shape is whole (not cut).
    lines: Vec<(std::ops::Range<usize>, std::ops::Range<usize>, bool)>,
}

impl Shapes {
    /// Adds a line's shape; lines are then known by the order they were added in.
    fn add(&mut self, line: &[u8]) {
        let (at, first) = (self.text.len(), self.tokens.len());
        let mut token: Option<usize> = None;
        let mut whole = true;
        for (i, &b) in line.iter().enumerate() {
            if CLASS[usize::from(b)] == OTHER {
                if token.take().is_some() {
                    self.tokens.last_mut().expect("a token was begun").2 = i;
                }
                self.text.push(b);
            } else if token.is_none() {
                token = Some(i);
                self.tokens.push((self.text.len() - at, i, line.len()));
                self.text.push(P_VAR);
            }
            if self.text.len() - at > MAX_SHAPE {
                // Cut: a token whose placeholder passed the bound is not used.
                if token == Some(i) {
                    self.tokens.pop();
                }
                self.text.truncate(at + MAX_SHAPE);
                whole = false;
                break;
            }
        }
        self.lines
            .push((at..self.text.len(), first..self.tokens.len(), whole));
    }

    /// The shape of line `k`'s first `depth` tokens (`usize::MAX`: the whole line) and
    /// where in the line that text ends; `None` for a line of fewer tokens, or a shape
    /// longer than [`MAX_SHAPE`].
    fn at(&self, k: usize, depth: usize, len: usize) -> Option<(&[u8], usize)> {
        let (text, toks, whole) = &self.lines[k];
        if depth == usize::MAX {
            return whole.then(|| (&self.text[text.clone()], len));
        }
        if toks.len() < depth || depth == 0 {
            return None;
        }
        let (mark, _, end) = self.tokens[toks.start + depth - 1];
        Some((&self.text[text.start..text.start + mark + 1], end))
    }

    /// Line `k`'s first `depth` tokens (`line` is the line).
    fn tokens<'s, 'l>(
        &'s self,
        k: usize,
        line: &'l [u8],
        depth: usize,
    ) -> impl Iterator<Item = &'l [u8]> + use<'s, 'l> {
        let toks = self.lines[k].1.clone();
        self.tokens[toks]
            .iter()
            .take(depth)
            .map(move |&(_, s, e)| &line[s..e])
    }
}

/// How many leading tokens the lines of rare templates are grouped by, in turn: all of
/// them, then fewer and fewer, the rest of each line one slot.
const DEPTHS: [usize; 7] = [usize::MAX, 24, 16, 12, 8, 6, 4];

/// Rows, each with a byte offset into its line.
type Rows = Vec<(usize, usize)>;

/// Templates the lines of templates of fewer than [`SHAPE_ROWS`] rows by their shape.
/// A line's variables otherwise split templates on any word that varies (a user name,
/// a node name, a message after a structured header), and each of those templates is
/// too rare to be worth columns.
///
/// Lines of the same shape (the same punctuation around the same tokens), if at least
/// [`MIN_ROWS`] of them, share one template whose slots are the tokens that differ
/// among them: `RAS KERNEL INFO` and `RAS APP FATAL` differ in two words, so both are
/// slots. Lines left are grouped likewise by the shape of their first tokens only, for
/// each of [`DEPTHS`], the rest of each line one more slot: a structured header with a
/// free-text message keeps its header's numbers as columns.
fn merge_shapes<'a>(
    lines: &[&'a [u8]],
    row_template: &mut [usize],
    templates: &mut FastMap<Vec<u8>, usize>,
    order: &mut Vec<Vec<u8>>,
    columns: &mut Vec<Vec<Vec<&'a [u8]>>>,
    counts: &mut Vec<usize>,
) {
    let mut left: Vec<usize> = (0..row_template.len())
        .filter(|r| row_template[*r] != 0 && counts[row_template[*r] - 1] < SHAPE_ROWS)
        .collect();
    if left.len() < MIN_ROWS {
        return;
    }
    // Each left row's shape, once: `shaped[row]` is its index in `shapes`.
    let mut shapes = Shapes::default();
    let mut shaped = vec![usize::MAX; row_template.len()];
    for (k, &row) in left.iter().enumerate() {
        shapes.add(lines[row]);
        shaped[row] = k;
    }
    let mut index: FastMap<&[u8], usize> = FastMap::default();
    // Per group of one shape: the shape, and each row with where its shape ends.
    let mut groups: Vec<(&[u8], Rows)> = Vec::new();
    for depth in DEPTHS {
        if left.len() < MIN_ROWS {
            return;
        }
        index.clear();
        groups.clear();
        for &row in &left {
            let Some((key, end)) = shapes.at(shaped[row], depth, lines[row].len()) else {
                continue;
            };
            let g = match index.get(key) {
                Some(g) => *g,
                None => {
                    index.insert(key, groups.len());
                    groups.push((key, Vec::new()));
                    groups.len() - 1
                }
            };
            groups[g].1.push((row, end));
        }
        for (shape, rows) in &groups {
            if rows.len() < MIN_ROWS || order.len() >= MAX_TEMPLATES {
                continue;
            }
            let first: Vec<&[u8]> = shapes
                .tokens(shaped[rows[0].0], lines[rows[0].0], depth)
                .collect();
            let mut varies = vec![false; first.len()];
            for &(r, _) in &rows[1..] {
                for (v, (a, b)) in varies
                    .iter_mut()
                    .zip(first.iter().zip(shapes.tokens(shaped[r], lines[r], depth)))
                {
                    *v |= *a != b;
                }
            }
            let rest = depth != usize::MAX;
            let slots = varies.iter().filter(|v| **v).count() + usize::from(rest);
            if slots > MAX_VARS {
                continue;
            }
            let mut text = Vec::with_capacity(shape.len() + 64);
            let mut j = 0;
            for &b in *shape {
                if b != P_VAR {
                    text.push(b);
                    continue;
                }
                if varies[j] {
                    text.push(P_VAR);
                } else {
                    text.extend_from_slice(first[j]);
                }
                j += 1;
            }
            if rest {
                text.push(P_VAR);
            }
            // The same text as a template of the first pass would need these rows'
            // values merged into its columns in row order: such a group is left.
            if templates.contains_key(&text) {
                continue;
            }
            let t = order.len();
            templates.insert(text.clone(), t);
            order.push(text);
            let mut cols: Vec<Vec<&'a [u8]>> =
                (0..slots).map(|_| Vec::with_capacity(rows.len())).collect();
            for &(r, end) in rows {
                let line: &'a [u8] = lines[r];
                let vals = shapes
                    .tokens(shaped[r], line, depth)
                    .zip(&varies)
                    .filter(|(_, v)| **v)
                    .map(|(x, _)| x)
                    .chain(rest.then(|| &line[end..]));
                for (col, x) in cols.iter_mut().zip(vals) {
                    col.push(x);
                }
                // The template the row leaves is dropped: its columns hold the row.
                counts[row_template[r] - 1] = 0;
                row_template[r] = t + 1;
            }
            columns.push(cols);
            counts.push(rows.len());
        }
        left.retain(|r| counts[row_template[*r] - 1] < MIN_ROWS);
    }
}

/// Encodes a row group's lines. Returns, per line, whether it is templated (the block
/// rebuilds it; otherwise the caller keeps it whole), and the block.
pub fn encode<'a>(lines: impl ExactSizeIterator<Item = &'a [u8]>) -> (Vec<bool>, Vec<u8>) {
    let n = lines.len();
    let mut templates: FastMap<Vec<u8>, usize> = FastMap::default();
    let mut order: Vec<Vec<u8>> = Vec::new();
    // Per template, per slot: the values in row order.
    let mut columns: Vec<Vec<Vec<&'a [u8]>>> = Vec::new();
    let mut row_template = Vec::with_capacity(n);
    let mut counts: Vec<usize> = Vec::new();
    let mut templated = Vec::with_capacity(n);
    let mut tmpl = Vec::new();
    let mut vars = Vec::new();
    let mut all = Vec::with_capacity(n);
    for line in lines {
        all.push(line);
        tmpl.clear();
        vars.clear();
        let mut which = 0usize;
        if split(line, &mut tmpl, &mut vars) {
            let known = templates.get(&tmpl).copied();
            let t = match known {
                Some(t) => Some(t),
                None if order.len() < MAX_TEMPLATES => {
                    templates.insert(tmpl.clone(), order.len());
                    order.push(tmpl.clone());
                    columns.push((0..vars.len()).map(|_| Vec::new()).collect());
                    counts.push(0);
                    Some(order.len() - 1)
                }
                None => None,
            };
            if let Some(t) = t {
                for (slot, v) in vars.drain(..).enumerate() {
                    columns[t][slot].push(v);
                }
                which = t + 1;
                counts[t] += 1;
            }
        }
        row_template.push(which);
    }
    merge_shapes(
        &all,
        &mut row_template,
        &mut templates,
        &mut order,
        &mut columns,
        &mut counts,
    );
    // A template of a few rows costs more as columns than its lines do as text beside
    // similar lines: those lines are kept whole.
    let mut renumber = vec![0usize; order.len()];
    let mut kept = 0;
    for (t, c) in counts.iter().enumerate() {
        if *c >= MIN_ROWS {
            kept += 1;
            renumber[t] = kept;
        }
    }
    let mut keep = renumber.iter().map(|r| *r != 0);
    order.retain(|_| keep.next().unwrap_or(false));
    let mut keep = renumber.iter().map(|r| *r != 0);
    columns.retain(|_| keep.next().unwrap_or(false));
    for t in &mut row_template {
        if *t != 0 {
            *t = renumber[*t - 1];
        }
        templated.push(*t != 0);
    }
    let mut out = Vec::new();
    out.push(VERSION);
    put_varint(&mut out, n as u64);
    put_varint(&mut out, order.len() as u64);
    for t in &order {
        put_varint(&mut out, t.len() as u64);
        out.extend_from_slice(t);
    }
    for t in &row_template {
        put_varint(&mut out, *t as u64);
    }
    for slots in &columns {
        for (j, col) in slots.iter().enumerate() {
            // A value logged twice in a line (a host name at both ends) is stored once.
            if let Some(k) = (j.saturating_sub(SAME_LOOKBACK)..j).find(|&k| slots[k] == *col) {
                out.push(C_SAME);
                put_varint(&mut out, k as u64);
                continue;
            }
            put_column(&mut out, col);
        }
    }
    (templated, out)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Result<u64, Corrupt> {
        varint(&mut self.0).ok_or_else(|| corrupt("cut short"))
    }

    fn len(&mut self) -> Result<usize, Corrupt> {
        let v = self.varint()?;
        usize::try_from(v)
            .ok()
            .filter(|v| *v <= self.0.len().max(1 << 20))
            .ok_or_else(|| corrupt("length out of range"))
    }

    fn byte(&mut self) -> Result<u8, Corrupt> {
        let (b, rest) = self.0.split_first().ok_or_else(|| corrupt("cut short"))?;
        self.0 = rest;
        Ok(*b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        if n > self.0.len() {
            return Err(corrupt("cut short"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    /// `n` values of `w` bytes, as byte planes when `planar` (version 2), else value
    /// by value (version 1).
    fn fixed_run(&mut self, n: usize, w: u8, planar: bool) -> Result<Vec<u64>, Corrupt> {
        if w > 8 {
            return Err(corrupt("width over 8 bytes"));
        }
        let w = usize::from(w);
        let len = n.checked_mul(w).ok_or_else(|| corrupt("column too long"))?;
        let b = self.take(len)?;
        let mut v = vec![0u64; n];
        if planar {
            for (p, plane) in b.chunks_exact(n.max(1)).enumerate() {
                for (x, &byte) in v.iter_mut().zip(plane) {
                    *x |= u64::from(byte) << (8 * p);
                }
            }
        } else {
            for (x, bytes) in v.iter_mut().zip(b.chunks_exact(w.max(1))) {
                let mut le = [0u8; 8];
                le[..w].copy_from_slice(bytes);
                *x = u64::from_le_bytes(le);
            }
        }
        Ok(v)
    }
}

/// A decoded column: numbers with their placeholder kind and width, or strings.
#[derive(Clone)]
enum Column<'a> {
    Num(Vec<u64>, u8, u8),
    /// The values, and the bytes they are all taken from.
    Str(Vec<&'a [u8]>, &'a [u8]),
}

fn get_numbers(c: &mut Cursor<'_>, tag: u8, n: usize, version: u8) -> Result<Vec<u64>, Corrupt> {
    let planar = version >= 2;
    match tag {
        C_FOR => {
            let min = c.varint()?;
            let w = c.byte()?;
            let mut v = c.fixed_run(n, w, planar)?;
            for x in &mut v {
                *x = min.wrapping_add(*x);
            }
            Ok(v)
        }
        C_DELTA => {
            let first = c.varint()?;
            let dmin = c.varint()?;
            let w = c.byte()?;
            let deltas = c.fixed_run(n.saturating_sub(1), w, planar)?;
            let mut v = Vec::with_capacity(n);
            if n > 0 {
                let mut x = first;
                v.push(x);
                for d in deltas {
                    x = x.wrapping_add(dmin).wrapping_add(d);
                    v.push(x);
                }
            }
            Ok(v)
        }
        C_WANDER if version >= 3 => {
            let mut prev = 0;
            (0..n)
                .map(|_| {
                    prev = unzigzag(prev, c.varint()?);
                    Ok(prev)
                })
                .collect()
        }
        _ => Err(corrupt("unknown number column")),
    }
}

/// A string column's values, and the bytes they are all taken from (values or
/// dictionary entries lie back to back).
fn get_strings<'a>(
    c: &mut Cursor<'a>,
    tag: u8,
    n: usize,
    planar: bool,
) -> Result<(Vec<&'a [u8]>, &'a [u8]), Corrupt> {
    let mut v = Vec::with_capacity(n);
    let span;
    match tag {
        C_PLAIN => {
            let lens = (0..n).map(|_| c.len()).collect::<Result<Vec<_>, _>>()?;
            let from = c.0;
            for l in lens {
                v.push(c.take(l)?);
            }
            span = &from[..from.len() - c.0.len()];
        }
        C_DICT => {
            let k = c.len()?;
            let lens = (0..k).map(|_| c.len()).collect::<Result<Vec<_>, _>>()?;
            let from = c.0;
            let entries = lens
                .into_iter()
                .map(|l| c.take(l))
                .collect::<Result<Vec<_>, _>>()?;
            span = &from[..from.len() - c.0.len()];
            let w = c.byte()?;
            for i in c.fixed_run(n, w, planar)? {
                v.push(
                    *entries
                        .get(i as usize)
                        .ok_or_else(|| corrupt("dictionary entry out of range"))?,
                );
            }
        }
        _ => return Err(corrupt("unknown string column")),
    }
    Ok((v, span))
}

fn render(out: &mut Vec<u8>, mut v: u64, p: u8, w: u8) {
    // Digits from the right into a buffer, then zero padding up to the width. The
    // bases are constants in each loop, so the divisions compile to multiplications
    // and shifts (a division by a variable base was most of rebuilding a line).
    let mut buf = [b'0'; 24];
    let mut i = buf.len();
    match p {
        P_DEC | P_DEC_PAD => {
            while v >= 100 {
                let d = (v % 100) as usize * 2;
                v /= 100;
                i -= 2;
                buf[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
            }
            if v >= 10 {
                let d = v as usize * 2;
                i -= 2;
                buf[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
            } else {
                i -= 1;
                buf[i] = b'0' + v as u8;
            }
        }
        _ => {
            let digits: &[u8; 16] = if p == P_HEX_LOWER {
                b"0123456789abcdef"
            } else {
                b"0123456789ABCDEF"
            };
            loop {
                i -= 1;
                buf[i] = digits[(v & 15) as usize];
                v >>= 4;
                if v == 0 {
                    break;
                }
            }
        }
    }
    let start = buf.len().saturating_sub(usize::from(w)).min(i);
    out.extend_from_slice(&buf[start..]);
}

/// "00" to "99", two bytes each.
const PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Rebuilds the lines of a block that `want` asks for (by row): per row, `Some(line)`
/// for a wanted templated row, `None` for a row the caller kept whole or did not want.
///
/// # Errors
/// [`Corrupt`] when the block is malformed.
pub fn decode(block: &[u8], want: impl Fn(usize) -> bool) -> Result<Vec<Option<Vec<u8>>>, Corrupt> {
    let mut out: Vec<Option<Vec<u8>>> = Vec::new();
    let n = decode_each(block, want, true, None, |row, line| {
        out.resize(row, None);
        if let Rebuilt::Line(line) = line {
            out.push(Some(line.to_vec()));
        }
        true
    })?;
    out.resize(n, None);
    Ok(out)
}

/// What a line filter can tell of a template's lines from the template alone.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// Every line of the template passes.
    Every,
    /// None does.
    No,
    /// Each line must be rebuilt and checked.
    Each,
    /// A line whose variables fail the sieve fails; the others must be rebuilt and
    /// checked.
    Sieve(Sieve),
}

/// A template as a line filter sees it before any of its lines is rebuilt.
pub struct TemplateView<'a> {
    text: &'a [u8],
    /// Its literal pieces: text each of its lines holds.
    pub literals: Vec<&'a [u8]>,
    /// The bytes of its literals and of its numbers' digits.
    fixed: [bool; 256],
    /// The bytes its string variables' values are taken from in the block.
    spans: Vec<&'a [u8]>,
    /// The template in order, literals and variables.
    pieces: Vec<Piece<'a>>,
    /// Per variable and byte, whether its values may hold the byte, as far as asked:
    /// 0 not asked, 1 no, 2 yes (a string column's bytes are searched once a byte).
    seen: std::cell::RefCell<Vec<[u8; 256]>>,
}

/// A piece of a template as [`TemplateView::probe`] sees it.
#[derive(Clone, Copy)]
enum Piece<'a> {
    Lit(&'a [u8]),
    /// A variable: a number's digits, or the bytes its strings are taken from.
    Slot {
        digits: Option<&'static [u8]>,
        span: &'a [u8],
    },
}

impl Piece<'_> {
    /// Whether a value of this variable may be empty (a number never is).
    fn may_be_empty(&self) -> bool {
        matches!(self, Piece::Slot { digits: None, .. })
    }
}

/// What a template's text tells of a needle in its lines, whatever its values
/// ([`TemplateView::plan`]).
#[derive(Clone, Debug)]
pub struct NeedlePlan {
    /// A literal holds the needle.
    always: bool,
    /// Per variable, in order.
    slots: Vec<PlannedSlot>,
}

#[derive(Clone, Debug)]
struct PlannedSlot {
    /// The variable's place among the template's pieces.
    piece: usize,
    /// As in [`SlotProbe`], by the literals beside the variable alone.
    lefts: Vec<usize>,
    ends: Vec<usize>,
    right: Vec<bool>,
}

/// What [`TemplateView::probe`] tells of a needle in a template's lines.
pub enum Probe {
    /// Every line holds it (a literal does).
    Always,
    /// No line holds it.
    Never,
    /// A line may hold it only when its variables pass this check.
    Rows(Box<NeedleProbe>),
}

/// A needle's check of one template's variables: a line that holds the needle passes
/// it (the needle overlaps a variable, or straddles an empty one, in one of the
/// ways the template's literals beside it allow). Lines that pass may still lack it.
#[derive(Clone, Debug)]
pub struct NeedleProbe {
    needle: Vec<u8>,
    finder: memchr::memmem::Finder<'static>,
    slots: Vec<SlotProbe>,
}

#[derive(Clone, Debug)]
struct SlotProbe {
    /// The variable, by its order in the template.
    slot: usize,
    /// The needle may lie inside a value.
    inside: bool,
    /// The needle's first `a` bytes may end just before a value (its literal before
    /// allows it), the rest starting the value.
    lefts: Vec<usize>,
    /// The needle's first `b` bytes may end a value, the rest following it.
    ends: Vec<usize>,
    /// By `b`: whether the needle's bytes from `b` on may follow a value.
    right: Vec<bool>,
}

impl NeedleProbe {
    /// Whether the line whose variables' values are `value(slot)` may hold the needle.
    fn passes<'v>(&self, value: &impl Fn(usize) -> &'v [u8]) -> bool {
        let n = &self.needle[..];
        self.slots.iter().any(|s| {
            let v = value(s.slot);
            (s.inside && v.len() >= n.len() && self.finder.find(v).is_some())
                || s.lefts.iter().any(|&a| {
                    let rest = &n[a..];
                    match v.first() {
                        None => s.right[a],
                        Some(f) if *f != rest[0] => false,
                        Some(_) if v.len() >= rest.len() => same(&v[..rest.len()], rest),
                        Some(_) => same(v, &rest[..v.len()]) && s.right[a + v.len()],
                    }
                })
                || s.ends.iter().any(|&b| {
                    v.len() >= b && v[v.len() - 1] == n[b - 1] && same(&v[v.len() - b..], &n[..b])
                })
        })
    }
}

/// `a == b` for the few bytes a probe compares, without a call to `memcmp`.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Per template, a check of each line's variables, made of clauses that must all
/// hold, each holding when one of its needles' probes passes.
#[derive(Clone, Debug, Default)]
pub struct Sieve {
    pub clauses: Vec<Vec<NeedleProbe>>,
}

impl Sieve {
    /// Whether row `i` of a template whose columns are `cols` passes; `used` says
    /// which variables the sieve looks at, numbers among them are rendered into
    /// `scratch` (their places in `at`).
    fn passes(
        &self,
        cols: &[Column<'_>],
        used: &[bool],
        i: usize,
        scratch: &mut Vec<u8>,
        at: &mut [(usize, usize)],
    ) -> bool {
        scratch.clear();
        for (j, col) in cols.iter().enumerate() {
            if let (true, Column::Num(v, kind, w)) = (used[j], col) {
                let a = scratch.len();
                render(scratch, v[i], *kind, *w);
                at[j] = (a, scratch.len());
            }
        }
        let scratch = &scratch[..];
        let at = &at[..];
        let value = |j: usize| match &cols[j] {
            Column::Num(..) => &scratch[at[j].0..at[j].1],
            Column::Str(v, _) => v[i],
        };
        self.clauses
            .iter()
            .all(|c| c.iter().any(|p| p.passes(&value)))
    }

    /// Which of `slots` variables the sieve looks at.
    fn used(&self, slots: usize) -> Vec<bool> {
        let mut used = vec![false; slots];
        for p in self.clauses.iter().flatten() {
            for s in &p.slots {
                if let Some(u) = used.get_mut(s.slot) {
                    *u = true;
                }
            }
        }
        used
    }
}

impl TemplateView<'_> {
    /// Whether `needle` may occur in a line of the template: `false` when one of its
    /// bytes is in no literal, no number's digits and no string value.
    pub fn may_hold(&self, needle: &[u8]) -> bool {
        needle.iter().all(|&b| {
            self.fixed[usize::from(b)] || self.spans.iter().any(|s| memchr::memchr(b, s).is_some())
        })
    }

    /// Whether the values of variable `slot` (`piece`) may hold byte `b`.
    fn may_have(&self, slot: usize, piece: &Piece<'_>, b: u8) -> bool {
        match piece {
            Piece::Lit(_) => false,
            Piece::Slot {
                digits: Some(d), ..
            } => d.contains(&b),
            Piece::Slot { span, .. } => {
                let mut seen = self.seen.borrow_mut();
                if seen.len() <= slot {
                    seen.resize(slot + 1, [0; 256]);
                }
                let known = &mut seen[slot][usize::from(b)];
                if *known == 0 {
                    *known = 1 + u8::from(memchr::memchr(b, span).is_some());
                }
                *known == 2
            }
        }
    }

    /// Whether every line of the template holds `needle` (a literal piece does).
    pub fn always_holds(&self, needle: &[u8]) -> bool {
        let f = memchr::memmem::Finder::new(needle);
        self.literals.iter().any(|l| f.find(l).is_some())
    }

    /// The template's text, literals and variables.
    pub fn text(&self) -> &[u8] {
        self.text
    }

    /// What the template tells of `needle` in its lines, down to a check of each
    /// line's variables ([`TemplateView::probe_planned`] with a fresh plan).
    pub fn probe(&self, needle: &[u8]) -> Probe {
        self.probe_planned(needle, &self.plan(needle))
    }

    /// What the template's text alone tells of `needle` in its lines: the same for
    /// every block the template is in, so it may be kept by the text.
    ///
    /// A line is its literals and its variables' values in order, so a needle that
    /// no literal holds overlaps a value or straddles an empty one; the literals
    /// beside a variable fix which parts of the needle may lie around it.
    pub fn plan(&self, needle: &[u8]) -> NeedlePlan {
        let n = needle.len();
        let always = n == 0 || self.always_holds(needle);
        let mut slots = Vec::new();
        if always {
            return NeedlePlan { always, slots };
        }
        for (i, piece) in self.pieces.iter().enumerate() {
            if matches!(piece, Piece::Lit(_)) {
                continue;
            }
            // The literal on each side, and whether more text lies beyond it.
            let (before, after) = (&self.pieces[..i], &self.pieces[i + 1..]);
            let (left, left_open) = match before.last() {
                Some(Piece::Lit(l)) => (*l, before.len() > 1),
                _ => (&b""[..], !before.is_empty()),
            };
            let (right, right_open) = match after.first() {
                Some(Piece::Lit(l)) => (*l, after.len() > 1),
                _ => (&b""[..], !after.is_empty()),
            };
            // The needle's first `a` bytes may end where the value starts (the byte
            // before the value first, which rules out most).
            let left_ok = |a: usize| {
                if left.last().is_some_and(|l| *l != needle[a - 1]) {
                    false
                } else if a <= left.len() {
                    left.ends_with(&needle[..a])
                } else {
                    left_open && &needle[a - left.len()..a] == left
                }
            };
            // The needle's bytes from `b` on may start where the value ends.
            let right_ok = |b: usize| {
                let rest = &needle[b..];
                if right.first().zip(rest.first()).is_some_and(|(r, c)| r != c) {
                    false
                } else if rest.len() <= right.len() {
                    right.starts_with(rest)
                } else {
                    right_open && &rest[..right.len()] == right
                }
            };
            let lefts: Vec<usize> = (1..n).filter(|&a| left_ok(a)).collect();
            let ends: Vec<usize> = (1..n).filter(|&b| right_ok(b)).collect();
            let right = if lefts.is_empty() {
                Vec::new()
            } else {
                (0..=n).map(right_ok).collect()
            };
            slots.push(PlannedSlot {
                piece: i,
                lefts,
                ends,
                right,
            });
        }
        NeedlePlan { always, slots }
    }

    /// [`TemplateView::probe`] from the template's `plan` for `needle`, narrowed by
    /// the bytes this block's values may hold.
    pub fn probe_planned(&self, needle: &[u8], plan: &NeedlePlan) -> Probe {
        if plan.always {
            return Probe::Always;
        }
        // A plan is kept by the template's text, which fixes its pieces.
        let slot_count = self
            .pieces
            .iter()
            .filter(|p| !matches!(p, Piece::Lit(_)))
            .count();
        if plan.slots.len() != slot_count
            || plan
                .slots
                .iter()
                .any(|p| !matches!(self.pieces.get(p.piece), Some(Piece::Slot { .. })))
        {
            return self.probe(needle);
        }
        if !self.may_hold(needle) {
            return Probe::Never;
        }
        let mut slots = Vec::new();
        for (slot, p) in plan.slots.iter().enumerate() {
            let piece = &self.pieces[p.piece];
            let lefts: Vec<usize> = p
                .lefts
                .iter()
                .copied()
                .filter(|&a| piece.may_be_empty() || self.may_have(slot, piece, needle[a]))
                .collect();
            let ends: Vec<usize> = p
                .ends
                .iter()
                .copied()
                .filter(|&b| needle[..b].iter().all(|&c| self.may_have(slot, piece, c)))
                .collect();
            let inside = needle.iter().all(|&c| self.may_have(slot, piece, c));
            if inside || !lefts.is_empty() || !ends.is_empty() {
                slots.push(SlotProbe {
                    slot,
                    inside,
                    right: if lefts.is_empty() {
                        Vec::new()
                    } else {
                        p.right.clone()
                    },
                    lefts,
                    ends,
                });
            }
        }
        if slots.is_empty() {
            Probe::Never
        } else {
            Probe::Rows(Box::new(NeedleProbe {
                needle: needle.to_vec(),
                finder: memchr::memmem::Finder::new(needle).into_owned(),
                slots,
            }))
        }
    }
}

/// A wanted templated row as [`decode_each`] gives it.
#[derive(Clone, Copy, Debug)]
pub enum Rebuilt<'l> {
    /// The rebuilt line.
    Line(&'l [u8]),
    /// Not rebuilt: its template's verdict says it passes.
    Passes,
    /// Not rebuilt: its template's verdict says it fails.
    Fails,
}

/// Rebuilds the wanted templated rows of a block one by one into one buffer, calling
/// `each(row, line)` until it returns `false` (no allocation per line): in row order
/// when `by_row`, else template by template (rows of one template in row order),
/// which is faster. With `verdict`, a template whose lines all pass or all fail a
/// filter is not rebuilt, nor a line its template's sieve rules out. Returns the
/// block's row count.
///
/// # Errors
/// [`Corrupt`] when the block is malformed.
pub fn decode_each(
    block: &[u8],
    want: impl Fn(usize) -> bool,
    by_row: bool,
    verdict: Option<&dyn Fn(&TemplateView<'_>) -> Verdict>,
    mut each: impl FnMut(usize, Rebuilt<'_>) -> bool,
) -> Result<usize, Corrupt> {
    let mut c = Cursor(block);
    let version = c.byte()?;
    if !(1..=VERSION).contains(&version) {
        return Err(corrupt("unknown version"));
    }
    let planar = version >= 2;
    let n = c.len()?;
    let k = c.len()?;
    let mut templates = Vec::with_capacity(k);
    for _ in 0..k {
        let l = c.len()?;
        let t = c.take(l)?;
        templates.push((t, parts(t, version)?));
    }
    let mut rows = Vec::with_capacity(n);
    let mut counts = vec![0usize; k];
    for _ in 0..n {
        let t = c.len()?;
        if t > k {
            return Err(corrupt("template number out of range"));
        }
        if t > 0 {
            counts[t - 1] += 1;
        }
        rows.push(t);
    }
    // Per template, its slots' columns and a cursor into them.
    let mut columns: Vec<Vec<Column<'_>>> = Vec::with_capacity(k);
    for (t, (_, ps)) in templates.iter().enumerate() {
        let mut cols = Vec::new();
        for p in ps {
            if let Part::Slot(kind, w) = p {
                let tag = c.byte()?;
                let n = counts[t];
                let col = if tag == C_SAME {
                    let k = c.len()?;
                    let same = cols
                        .get(k)
                        .filter(|_| k + SAME_LOOKBACK >= cols.len())
                        .cloned();
                    // Before version 3 the values were alike but each slot's format
                    // was its template's.
                    match same {
                        Some(col) if version >= 3 => col,
                        Some(Column::Str(v, span)) if is_str(*kind) => Column::Str(v, span),
                        Some(Column::Num(v, ..)) if !is_str(*kind) => Column::Num(v, *kind, *w),
                        _ => return Err(corrupt("column refers to an unlike column")),
                    }
                } else if version >= 3 {
                    match tag {
                        C_NUM => {
                            let (kind, w) = (c.byte()?, c.byte()?);
                            let longest = match kind {
                                P_DEC_PAD => 20,
                                P_HEX_LOWER | P_HEX_UPPER => 16,
                                _ => return Err(corrupt("unknown number format")),
                            };
                            if w == 0 || w > longest {
                                return Err(corrupt("number width out of range"));
                            }
                            let tag = c.byte()?;
                            Column::Num(get_numbers(&mut c, tag, n, version)?, kind, w)
                        }
                        _ => {
                            let (v, span) = get_strings(&mut c, tag, n, planar)?;
                            Column::Str(v, span)
                        }
                    }
                } else if is_str(*kind) {
                    let (v, span) = get_strings(&mut c, tag, n, planar)?;
                    Column::Str(v, span)
                } else {
                    Column::Num(get_numbers(&mut c, tag, n, version)?, *kind, *w)
                };
                cols.push(col);
            }
        }
        columns.push(cols);
    }
    // Line `i` of template `t` into `line`.
    let build = |t: usize, i: usize, line: &mut Vec<u8>| {
        let (text, ps) = &templates[t];
        line.clear();
        let mut slot = 0;
        for p in ps {
            match *p {
                Part::Lit(a, b) => line.extend_from_slice(&text[a..b]),
                Part::Slot(..) => {
                    match &columns[t][slot] {
                        Column::Num(v, kind, w) => render(line, v[i], *kind, *w),
                        Column::Str(v, _) => line.extend_from_slice(v[i]),
                    }
                    slot += 1;
                }
            }
        }
    };
    let mut line = Vec::new();
    let (mut scratch, mut at) = (Vec::new(), Vec::new());
    // Template `t`'s verdict, and the variables its sieve looks at.
    let judge = |t: usize| {
        let v = verdict.map_or(Verdict::Each, |f| f(&view(&templates[t], &columns[t])));
        let used = match &v {
            Verdict::Sieve(s) => s.used(columns[t].len()),
            _ => Vec::new(),
        };
        (v, used)
    };
    // Row `i` of template `t` as far as its verdict tells: `None` when it must be
    // rebuilt.
    let mut judge_row =
        |t: usize, i: usize, (v, used): &(Verdict, Vec<bool>)| -> Option<Rebuilt<'static>> {
            match v {
                Verdict::Every => Some(Rebuilt::Passes),
                Verdict::No => Some(Rebuilt::Fails),
                Verdict::Sieve(s) => {
                    at.resize(columns[t].len(), (0, 0));
                    (!s.passes(&columns[t], used, i, &mut scratch, &mut at))
                        .then_some(Rebuilt::Fails)
                }
                Verdict::Each => None,
            }
        };
    if by_row {
        let mut next = vec![0usize; k];
        let mut judged: Vec<Option<(Verdict, Vec<bool>)>> = (0..k).map(|_| None).collect();
        for (row, t) in rows.into_iter().enumerate() {
            if t == 0 {
                continue;
            }
            let i = next[t - 1];
            next[t - 1] += 1;
            if !want(row) {
                continue;
            }
            let j = judged[t - 1].get_or_insert_with(|| judge(t - 1));
            let r = match judge_row(t - 1, i, j) {
                Some(r) => r,
                None => {
                    build(t - 1, i, &mut line);
                    Rebuilt::Line(&line)
                }
            };
            if !each(row, r) {
                break;
            }
        }
        return Ok(n);
    }
    // Template by template: each column is then read front to back, where row order
    // jumps between the columns of every template in the block.
    let mut start = Vec::with_capacity(k + 1);
    start.push(0usize);
    for c in &counts {
        start.push(start[start.len() - 1] + c);
    }
    let mut fill = start.clone();
    let mut order = vec![0usize; start[k]];
    for (row, &t) in rows.iter().enumerate() {
        if t > 0 {
            order[fill[t - 1]] = row;
            fill[t - 1] += 1;
        }
    }
    for t in 0..k {
        let j = judge(t);
        for (i, &row) in order[start[t]..start[t + 1]].iter().enumerate() {
            if !want(row) {
                continue;
            }
            let r = match judge_row(t, i, &j) {
                Some(r) => r,
                None => {
                    build(t, i, &mut line);
                    Rebuilt::Line(&line)
                }
            };
            if !each(row, r) {
                return Ok(n);
            }
        }
    }
    Ok(n)
}

/// A template and its columns as a filter sees them.
fn view<'a>((text, ps): &(&'a [u8], Vec<Part>), cols: &[Column<'a>]) -> TemplateView<'a> {
    let mut fixed = [false; 256];
    let mut literals = Vec::new();
    let mut spans = Vec::new();
    let mut pieces = Vec::with_capacity(ps.len());
    let mut slot = 0;
    for p in ps {
        match *p {
            Part::Lit(a, b) => {
                literals.push(&text[a..b]);
                pieces.push(Piece::Lit(&text[a..b]));
                for &c in &text[a..b] {
                    fixed[usize::from(c)] = true;
                }
            }
            Part::Slot(..) => {
                let Some(col) = cols.get(slot) else { break };
                slot += 1;
                match col {
                    Column::Num(_, kind, _) => {
                        let digits: &'static [u8] = match *kind {
                            P_DEC | P_DEC_PAD => b"0123456789",
                            P_HEX_LOWER => b"0123456789abcdef",
                            _ => b"0123456789ABCDEF",
                        };
                        for &c in digits {
                            fixed[usize::from(c)] = true;
                        }
                        pieces.push(Piece::Slot {
                            digits: Some(digits),
                            span: &[],
                        });
                    }
                    Column::Str(_, span) => {
                        spans.push(*span);
                        pieces.push(Piece::Slot { digits: None, span });
                    }
                }
            }
        }
    }
    TemplateView {
        text,
        literals,
        fixed,
        spans,
        pieces,
        seen: std::cell::RefCell::new(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Lines whose block uses every column kind at widths 1 to 8: deltas, frames of
    /// reference, hex, padded numbers, dictionaries of more than 256 entries, plain
    /// strings, and lines kept whole.
    fn fixture_lines() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..600u64 {
            let r = next();
            out.push(
                match i % 4 {
                    0 => format!(
                        "ts={} took {}ms user u{} id={:016x} code=0{:03}",
                        1_700_000_000_000 + i * 997,
                        r % 70_000,
                        r % 300,
                        next(),
                        r % 1000
                    ),
                    1 => format!(
                        "block blk_{} size {} from 10.0.{}.{}:{}",
                        next() >> 1,
                        r % 5_000_000_000,
                        r % 256,
                        (r >> 8) % 256,
                        (r >> 16) % 65536
                    ),
                    2 => format!(
                        "worker x{}y{} state v{} ID {:X} seq {}",
                        r % 7,
                        r % 3,
                        r % 2,
                        r % 0x00FF_FFFF,
                        i * 3
                    ),
                    _ => format!("rare line {i} {}", "z".repeat((r % 40) as usize)),
                }
                .into_bytes(),
            );
        }
        out.push(b"odd \x01 marker".to_vec());
        out
    }

    /// Blocks written by versions 1 and 2 (formats in the template; version 1 values
    /// stored byte after byte, not as planes), from `fixture_lines`, still read back
    /// line for line, and today's encoder templates every row they templated.
    #[test]
    fn blocks_of_earlier_versions_still_decode() {
        let v1 = include_bytes!("../tests/data/block-v1.bin");
        let v2 = include_bytes!("../tests/data/block-v2.bin");
        assert_eq!((v1[0], v2[0]), (1, 2));
        // The same bytes, laid out as planes.
        assert_eq!(v1.len(), v2.len());
        assert_ne!(&v1[1..], &v2[1..]);
        let lines = fixture_lines();
        let (templated, now) = encode(lines.iter().map(|l| &l[..]));
        assert_eq!(now[0], VERSION);
        let again = decode(&now, |_| true).unwrap();
        for block in [&v1[..], &v2[..]] {
            let back = decode(block, |_| true).unwrap();
            assert_eq!(back.len(), lines.len());
            let mut rebuilt = 0;
            for (i, (b, l)) in back.iter().zip(&lines).enumerate() {
                if let Some(b) = b {
                    assert_eq!(b, l, "row {i}");
                    assert!(templated[i], "row {i} was templated before");
                    assert_eq!(again[i].as_ref(), Some(l), "row {i}");
                    rebuilt += 1;
                }
            }
            assert!(rebuilt >= 400, "{rebuilt} rows rebuilt");
        }
    }

    fn round_trip(lines: &[Vec<u8>]) -> (Vec<bool>, usize) {
        let (templated, block) = encode(lines.iter().map(|l| &l[..]));
        let back = decode(&block, |_| true).unwrap();
        assert_eq!(back.len(), lines.len());
        for ((l, t), b) in lines.iter().zip(&templated).zip(&back) {
            assert_eq!(*t, b.is_some());
            if let Some(b) = b {
                assert_eq!(
                    String::from_utf8_lossy(b),
                    String::from_utf8_lossy(l),
                    "rebuilt line differs"
                );
                assert_eq!(b, l);
            }
        }
        // Template by template: the same rows and lines, each row once, every wanted
        // one and no other.
        let want = |i: usize| i % 3 != 1;
        let mut seen = vec![false; lines.len()];
        decode_each(&block, want, false, None, |row, line| {
            assert!(
                want(row) && templated[row] && !seen[row],
                "row {row} out of place"
            );
            seen[row] = true;
            let Rebuilt::Line(line) = line else {
                panic!("row {row} not rebuilt")
            };
            assert_eq!(line, &lines[row][..]);
            true
        })
        .unwrap();
        // A template's verdict stands for each of its lines, for needles taken from
        // the lines and others.
        let mut needles: Vec<Vec<u8>> = vec![b"error".to_vec(), b"_".to_vec(), b"0".to_vec()];
        for l in lines.iter().take(8) {
            let k = l.len().min(5);
            needles.push(l[l.len() - k..].to_vec());
            needles.push(l[..k].to_vec());
        }
        // Pieces from inside lines, across their literals and variables.
        for (j, l) in lines.iter().enumerate().step_by(lines.len() / 7 + 1) {
            for len in [2, 3, 5, 8, 12] {
                let at = (j * 7 + len * 13) % l.len().max(1);
                needles.push(l[at.min(l.len())..(at + len).min(l.len())].to_vec());
            }
        }
        for needle in needles.iter().filter(|n| !n.is_empty()) {
            let judge = |t: &TemplateView<'_>| match t.probe(needle) {
                Probe::Always => Verdict::Every,
                Probe::Never => Verdict::No,
                Probe::Rows(p) => Verdict::Sieve(Sieve {
                    clauses: vec![vec![*p]],
                }),
            };
            decode_each(
                &block,
                |_| true,
                false,
                Some(&judge),
                |row, line| {
                    let holds = memchr::memmem::find(&lines[row], needle).is_some();
                    match line {
                        Rebuilt::Passes => assert!(holds, "row {row} judged to hold {needle:?}"),
                        Rebuilt::Fails => {
                            assert!(
                                !holds,
                                "row {row} judged not to hold {:?}: {:?}",
                                String::from_utf8_lossy(needle),
                                String::from_utf8_lossy(&lines[row])
                            );
                        }
                        Rebuilt::Line(l) => assert_eq!(l, &lines[row][..]),
                    }
                    true
                },
            )
            .unwrap();
        }

        assert!((0..lines.len()).all(|i| seen[i] == (want(i) && templated[i])));
        (templated, block.len())
    }

    /// A needle that starts in a literal and ends in a variable is checked on the
    /// variable alone: the lines whose value does not fit are not rebuilt.
    #[test]
    fn a_needle_across_a_literal_and_a_variable_is_checked_on_the_variable() {
        let lines: Vec<Vec<u8>> = (0..400u32)
            .map(|i| {
                let status = [200, 201, 404, 500, 503][i as usize % 5];
                format!(
                    "GET /api/items/{} status={status} dur={}ms user=u{}",
                    i * 37,
                    i % 90,
                    i % 13
                )
                .into_bytes()
            })
            .collect();
        let (_, block) = encode(lines.iter().map(|l| &l[..]));
        for (needle, also) in [
            (&b"status=5"[..], &b"tatus=50"[..]),
            (b"s=50", b"=503 d"),
            (b"dur=8", b"dur=19ms"),
            (b"user=u12", b"=u10"),
        ] {
            let judge = |t: &TemplateView<'_>| {
                let mut clause = Vec::new();
                for n in [needle, also] {
                    match t.probe(n) {
                        Probe::Always => return Verdict::Each,
                        Probe::Never => {}
                        Probe::Rows(p) => clause.push(*p),
                    }
                }
                Verdict::Sieve(Sieve {
                    clauses: vec![clause],
                })
            };
            let (mut rebuilt, mut failed) = (0, 0);
            decode_each(
                &block,
                |_| true,
                false,
                Some(&judge),
                |row, r| {
                    let holds = [needle, also]
                        .iter()
                        .any(|n| memchr::memmem::find(&lines[row], n).is_some());
                    match r {
                        Rebuilt::Fails => {
                            assert!(!holds, "row {row} sieved out");
                            failed += 1;
                        }
                        Rebuilt::Line(l) => {
                            assert_eq!(l, &lines[row][..]);
                            rebuilt += 1;
                        }
                        Rebuilt::Passes => panic!("no verdict of every line here"),
                    }
                    true
                },
            )
            .unwrap();
            let holding = lines
                .iter()
                .filter(|l| {
                    [needle, also]
                        .iter()
                        .any(|n| memchr::memmem::find(l, n).is_some())
                })
                .count();
            assert!(holding > 0);
            // Only the lines the variables could not rule out were rebuilt.
            assert!(
                rebuilt < lines.len() / 2 && rebuilt >= holding,
                "{:?}: {rebuilt} rebuilt, {failed} sieved out, {holding} hold it",
                String::from_utf8_lossy(needle)
            );
        }
    }

    #[test]
    fn every_kind_of_variable_comes_back_at_its_width() {
        let lines: Vec<Vec<u8>> = [
            "10.0.3.7 - - [23/Nov/2025:10:00:07 +0000] \"GET /api/v1/users?id=42 HTTP/1.1\" 200 5120",
            "10.255.0.17 - - [23/Nov/2025:10:00:08 +0000] \"GET /api/v1/users?id=0 HTTP/1.1\" 404 0",
            "trace_id=00ff3a9c0000beef span=DEADBEEF user=x86_64 v2 3rd 0007 0 00 18446744073709551615",
            "trace_id=12345678abcdef00 span=0000CAFE user=arm64 v10 2nd 0100 9 01 99999999999999999999",
            "no variables at all",
            "",
            "unicode: größe 12 ümlaut 0x1F",
        ]
        .iter()
        .flat_map(|s| std::iter::repeat_n(s.as_bytes().to_vec(), MIN_ROWS))
        .collect();
        let (templated, _) = round_trip(&lines);
        assert!(templated.iter().all(|t| *t));
    }

    #[test]
    fn lines_that_do_not_template_are_left_to_the_caller() {
        let mut lines = vec![
            b"has a placeholder byte \x01 in it 12".to_vec(),
            "x".repeat(MAX_LINE + 1).into_bytes(),
            (0..300)
                .map(|i| format!("{i} "))
                .collect::<String>()
                .into_bytes(),
            b"invalid utf-8 \xff\xfe 12 but templated".to_vec(),
        ];
        lines.push("y".repeat(MAX_LINE).into_bytes());
        let lines: Vec<Vec<u8>> = lines
            .into_iter()
            .flat_map(|l| std::iter::repeat_n(l, MIN_ROWS))
            .collect();
        let (templated, _) = round_trip(&lines);
        let want: Vec<bool> = [false, false, false, true, true]
            .into_iter()
            .flat_map(|t| std::iter::repeat_n(t, MIN_ROWS))
            .collect();
        assert_eq!(templated, want);
        // A template seen on fewer rows than a column is worth: its lines stay whole.
        let few: Vec<Vec<u8>> = (0..MIN_ROWS - 1)
            .map(|i| format!("rare {i} line").into_bytes())
            .collect();
        let (templated, _) = round_trip(&few);
        assert!(templated.iter().all(|t| !*t));
    }

    #[test]
    fn numbers_are_stored_in_the_bytes_they_need() {
        // 10,000 lines of one template with a one-byte and an increasing number: the
        // block holds about two bytes a line.
        let lines: Vec<Vec<u8>> = (0..10_000u32)
            .map(|i| format!("port {} seq {}", i % 256, 1_000_000 + i * 3).into_bytes())
            .collect();
        let (_, size) = round_trip(&lines);
        assert!(size < 10_000 * 3, "{size} bytes");
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_panic() {
        let lines: Vec<Vec<u8>> = (0..50)
            .map(|i| {
                let t = (i * 37) % 1000 + 100_000 * (i / 25);
                format!(
                    "user u{i} took {i} ms from 10.0.0.{i} at {t:06} {:x}",
                    i * 17
                )
                .into_bytes()
            })
            .collect();
        let (_, block) = encode(lines.iter().map(|l| &l[..]));
        for cut in 0..block.len() {
            let _ = decode(&block[..cut], |_| true);
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let mut b = block.clone();
            let i = rng.usize(..b.len());
            b[i] = rng.u8(..);
            let _ = decode(&b, |_| true);
        }
    }

    #[test]
    fn a_number_column_takes_the_one_width_that_prints_every_token() {
        let dec = |t: &[&str]| {
            let col: Vec<&[u8]> = t.iter().map(|x| x.as_bytes()).collect();
            fit(&col, P_DEC_PAD)
        };
        assert_eq!(dec(&["07", "23", "123"]), Some((2, vec![7, 23, 123])));
        assert_eq!(dec(&["7", "23"]), Some((1, vec![7, 23])));
        assert_eq!(dec(&["0", "10"]), Some((1, vec![0, 10])));
        // `7` would print as `07`, and no one width holds `07` and `007`.
        assert_eq!(dec(&["07", "7"]), None);
        assert_eq!(dec(&["07", "007"]), None);
        assert_eq!(dec(&["18446744073709551615"]), Some((1, vec![u64::MAX])));
        assert_eq!(dec(&["18446744073709551616"]), None);
        assert_eq!(dec(&["12", "x86"]), None);
        assert_eq!(dec(&[""]), None);
        let hex = |t: &[&str], kind| {
            let col: Vec<&[u8]> = t.iter().map(|x| x.as_bytes()).collect();
            fit(&col, kind)
        };
        assert_eq!(
            hex(&["00ff", "1234", "beef"], P_HEX_LOWER),
            Some((4, vec![0xff, 0x1234, 0xbeef]))
        );
        assert_eq!(hex(&["00ff", "BEEF"], P_HEX_LOWER), None);
        assert_eq!(
            hex(&["00FF", "BEEF"], P_HEX_UPPER),
            Some((4, vec![0xff, 0xbeef]))
        );
        assert_eq!(hex(&["0123456789abcdef0"], P_HEX_LOWER), None);
        // A column that is not all one kind of number is a column of strings.
        let lines: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("id {} at {:02}", ["7", "07", "x1", "ff"][i % 4], i).into_bytes())
            .collect();
        let (templated, _) = round_trip(&lines);
        assert!(templated.iter().all(|t| *t));
    }

    #[test]
    fn shapes_are_bounded_and_count_tokens() {
        let mut shapes = Shapes::default();
        let line = b"a=1, b c";
        shapes.add(line);
        assert_eq!(
            shapes.at(0, usize::MAX, 8),
            Some((&b"\x01=\x01, \x01 \x01"[..], 8))
        );
        assert_eq!(shapes.at(0, 2, 8), Some((&b"\x01=\x01"[..], 3)));
        assert_eq!(shapes.at(0, 4, 8), Some((&b"\x01=\x01, \x01 \x01"[..], 8)));
        assert_eq!(shapes.at(0, 5, 8), None);
        let toks: Vec<&[u8]> = shapes.tokens(0, line, 3).collect();
        assert_eq!(toks, [&b"a"[..], b"1", b"b"]);
        let long = format!("x{}y", ".".repeat(MAX_SHAPE));
        shapes.add(long.as_bytes());
        assert_eq!(shapes.at(1, usize::MAX, long.len()), None);
        assert_eq!(shapes.at(1, 1, long.len()), Some((&b"\x01"[..], 1)));
        // The token whose placeholder passes the bound is not used.
        assert_eq!(shapes.at(1, 2, long.len()), None);
        let at_bound = format!("{}y z", ".".repeat(MAX_SHAPE - 1));
        shapes.add(at_bound.as_bytes());
        assert_eq!(
            shapes.at(2, 1, at_bound.len()).map(|s| s.1),
            Some(MAX_SHAPE)
        );
        assert_eq!(shapes.at(2, 2, at_bound.len()), None);
        // Lines of such a shape still come back, whole or by their own template.
        let lines: Vec<Vec<u8>> = (0..20)
            .map(|i| format!("{long} {i} {}", "w".repeat(i % 3 + 1)).into_bytes())
            .collect();
        round_trip(&lines);
    }

    #[test]
    fn numbers_that_wander_come_back_across_wraps_and_extremes() {
        // A clock read as `hhmmss` wraps at midnight; values jumping between 0 and the
        // largest number fold to differences of one.
        let lines: Vec<Vec<u8>> = (0..500u64)
            .map(|i| {
                let t = (235_000 + i * 7) % 240_000;
                let x = if i % 2 == 0 { 0 } else { u64::MAX };
                format!("at {t:06} value {x} seq {}", 1_000 - i).into_bytes()
            })
            .collect();
        let (templated, size) = round_trip(&lines);
        assert!(templated.iter().all(|t| *t));
        // About a byte for each of the three numbers of a line: their differences, not
        // their 3 + 8 + 2 bytes of range.
        assert!(size < lines.len() * 5, "{size} bytes");
    }

    #[test]
    fn lines_of_one_shape_share_a_template_whatever_their_words() {
        // Forty users, each seen twice: eighty templates of two rows as words go, one
        // template of the same shape.
        let users: Vec<String> = (0..40)
            .map(|i| format!("user{}", "abcdefgh".repeat(i % 3 + 1)))
            .collect();
        let mut lines = Vec::new();
        for r in 0..2 {
            for (i, u) in users.iter().enumerate() {
                let name: String = u.chars().filter(|c| c.is_ascii_alphabetic()).collect();
                let name = format!("{name}{}", ["x", "y", "z", "w"][i % 4].repeat(i + 1));
                lines.push(
                    format!(
                        "session opened for {name} by {} uid={}",
                        ["root", "cron"][r],
                        1000 + i
                    )
                    .into_bytes(),
                );
            }
        }
        let (templated, _) = round_trip(&lines);
        assert!(templated.iter().all(|t| *t));
        // Free text after a structured header of the same shape: the header's numbers
        // are columns, the rest of each line one slot.
        let words = [
            "cache",
            "parity",
            "error",
            "corrected",
            "node",
            "card",
            "failed",
            "to",
        ];
        let mut rng = fastrand::Rng::with_seed(3);
        let lines: Vec<Vec<u8>> = (0..200)
            .map(|i| {
                let msg: Vec<&str> = (0..rng.usize(1..12))
                    .map(|_| words[rng.usize(..words.len())])
                    .collect();
                format!(
                    "- {} 2005.06.{:02} R{:02}-M{} RAS KERNEL INFO {}",
                    1_117_838_570 + i * 13,
                    i % 28 + 1,
                    i % 64,
                    i % 2,
                    msg.join(" ")
                )
                .into_bytes()
            })
            .collect();
        let (templated, _) = round_trip(&lines);
        assert!(templated.iter().filter(|t| **t).count() >= 190);
    }

    proptest! {
        #[test]
        fn any_lines_come_back_byte_for_byte(
            lines in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..80),
                    "[a-zA-Z0-9 .:/=_-]{0,80}".prop_map(String::into_bytes),
                    "([0-9a-fA-F]{1,20}[ .-]){1,8}".prop_map(String::into_bytes),
                    // A few templates, so that most lines are templated.
                    (0usize..3, any::<u64>(), "[a-z0-9]{1,6}", 0usize..5).prop_map(|(k, n, w, pad)| {
                        let f = ["user {n} from {w}", "took {n:0p$} ms at 0x{n:x}", "{w}: {n:X}"];
                        f[k].replace("{n}", &n.to_string())
                            .replace("{w}", &w)
                            .replace("{n:0p$}", &format!("{n:0pad$}"))
                            .replace("{n:x}", &format!("{n:x}"))
                            .replace("{n:X}", &format!("{n:X}"))
                            .into_bytes()
                    }),
                    // Shapes shared by lines whose words differ, and a structured
                    // header before free text.
                    (0usize..3, "[a-z]{1,3}", "[a-zA-Z0-9 :=-]{0,30}", 0u64..100_000).prop_map(
                        |(k, w, tail, n)| {
                            let f = ["- {n} node {w} says {tail}", "{w} {w}-{n}: {tail}", "{w} id={n:05}"];
                            f[k].replace("{n}", &n.to_string())
                                .replace("{n:05}", &format!("{n:05}"))
                                .replace("{w}", &w)
                                .replace("{tail}", &tail)
                                .into_bytes()
                        }
                    ),
                ],
                0..150,
            )
        ) {
            round_trip(&lines);
        }
    }
}
