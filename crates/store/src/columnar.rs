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
//! part of the template; a token with one is a variable, of one of these kinds, each
//! marked in the template by a placeholder byte:
//!
//! | placeholder | token | stored as |
//! |---|---|---|
//! | `0x01` | decimal without leading zeros, up to 19 digits, below 2^64 | number |
//! | `0x02 w` | decimal with leading zeros, `w` digits (up to 19) | number |
//! | `0x03 w` | lowercase hex (a letter `a`–`f` and a digit), `w` ≤ 16 digits | number |
//! | `0x04 w` | uppercase hex, likewise | number |
//! | `0x05` | anything else (`x86`, `v2`, `3rd`) | string |
//!
//! Rebuilding prints each number back at its width, so every line comes back byte for
//! byte. Lines are templated as bytes (valid UTF-8 or not); a line is kept whole
//! instead (in the segment's `line` column, as before this encoding) when it holds a
//! placeholder byte, is longer than [`MAX_LINE`], has more than [`MAX_VARS`] variables,
//! or would add a template past [`MAX_TEMPLATES`] in its row group.
//!
//! # The block
//!
//! One block per row group, all integers LEB128 varints unless said otherwise:
//!
//! ```text
//! version (1 byte, 2)   rows   templates
//! per template: length, bytes
//! per row: its template number, 0 for a line kept whole, else 1 + its index
//! per template, per slot in the template's order: the column of the values of the
//!   rows with that template, in row order:
//!   numbers: 0 = frame of reference: min, width byte w, then each (v - min) in w bytes
//!            1 = deltas (values never decrease): first, min delta, width byte w,
//!                then each later (delta - min delta) in w bytes
//!   either:  4 = the same values as an earlier slot k of the template (k given), for a
//!                value logged twice in a line
//!   strings: 2 = plain: each length, then the bytes one after the other
//!            3 = dictionary: entries, each entry's length, the entries' bytes, width
//!                byte w, then each row's entry number in w bytes
//! ```
//!
//! A run of `n` values in `w` bytes is stored as `w` byte planes: the lowest byte of
//! every value, then the next byte of every value, and so on (version 1 blocks, still
//! read, stored each value's bytes together, little-endian). The entropy coding is left
//! to the compression of the Parquet page that carries the block (zstd), which does
//! well on bytes of equal meaning side by side: a plane of high bytes that barely
//! change costs almost nothing.

use crate::fast_hash::FastMap;
use crate::volume::{put_varint, varint};

/// Longest line templated; longer lines are kept whole.
pub const MAX_LINE: usize = 16 * 1024;
/// Most variables in a templated line.
pub const MAX_VARS: usize = 255;
/// Fewest rows a template needs in its row group to be stored as columns.
pub const MIN_ROWS: usize = 8;
/// Most templates in one row group.
pub const MAX_TEMPLATES: usize = 65_535;

/// The block version written: 2 stores fixed-width runs as byte planes; 1 (read)
/// stored them value by value.
const VERSION: u8 = 2;
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
/// How many earlier slots a column is compared with for [`C_SAME`].
const SAME_LOOKBACK: usize = 16;

/// A block that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("template block: {0}")]
pub struct Corrupt(pub String);

fn corrupt(what: &str) -> Corrupt {
    Corrupt(what.to_owned())
}

/// One variable cut out of a line.
#[derive(PartialEq)]
enum Var<'a> {
    Num(u64),
    Str(&'a [u8]),
}

/// Splits `line` into its template (appended to `tmpl`) and variables (appended to
/// `vars`); `false` when the line is kept whole.
fn split<'a>(line: &'a [u8], tmpl: &mut Vec<u8>, vars: &mut Vec<Var<'a>>) -> bool {
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
        let (var, mark, width) = classify(t);
        tmpl.push(mark);
        if let Some(w) = width {
            tmpl.push(w);
        }
        vars.push(var);
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

/// The kind of a token holding a digit: its value, placeholder and width byte.
fn classify(t: &[u8]) -> (Var<'_>, u8, Option<u8>) {
    let n = t.len();
    if t.iter().all(u8::is_ascii_digit) && n <= 19 {
        let v = t.iter().try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        if let Some(v) = v {
            return if t[0] == b'0' && n > 1 {
                (Var::Num(v), P_DEC_PAD, Some(n as u8))
            } else {
                (Var::Num(v), P_DEC, None)
            };
        }
    }
    if n <= 16 {
        let lower = t
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        let upper = t
            .iter()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
        if lower || upper {
            let v = t.iter().fold(0u64, |acc, b| {
                (acc << 4) | u64::from(char::from(*b).to_digit(16).unwrap_or(0))
            });
            let mark = if lower { P_HEX_LOWER } else { P_HEX_UPPER };
            return (Var::Num(v), mark, Some(n as u8));
        }
    }
    (Var::Str(t), P_STR, None)
}

/// A template's parts: literal byte ranges of the template text, and slots.
#[derive(Clone, Copy)]
enum Part {
    Lit(usize, usize),
    /// Placeholder and width.
    Slot(u8, u8),
}

fn parts(t: &[u8]) -> Result<Vec<Part>, Corrupt> {
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
        let w = if matches!(b, P_DEC_PAD | P_HEX_LOWER | P_HEX_UPPER) {
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

fn put_numbers(out: &mut Vec<u8>, v: &[u64]) {
    let (min, max) = v
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    let for_width = width(max.wrapping_sub(min));
    if v.len() > 1 && v.windows(2).all(|p| p[0] <= p[1]) {
        let (dmin, dmax) = v
            .windows(2)
            .map(|p| p[1] - p[0])
            .fold((u64::MAX, 0), |(lo, hi), d| (lo.min(d), hi.max(d)));
        let dw = width(dmax - dmin);
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

/// Encodes a row group's lines. Returns, per line, whether it is templated (the block
/// rebuilds it; otherwise the caller keeps it whole), and the block.
pub fn encode<'a>(lines: impl ExactSizeIterator<Item = &'a [u8]>) -> (Vec<bool>, Vec<u8>) {
    let n = lines.len();
    let mut templates: FastMap<Vec<u8>, usize> = FastMap::default();
    let mut order: Vec<Vec<u8>> = Vec::new();
    // Per template, per slot: the values in row order.
    let mut columns: Vec<Vec<Vec<Var<'a>>>> = Vec::new();
    let mut row_template = Vec::with_capacity(n);
    let mut counts: Vec<usize> = Vec::new();
    let mut templated = Vec::with_capacity(n);
    let mut tmpl = Vec::new();
    let mut vars = Vec::new();
    for line in lines {
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
            match col.first() {
                Some(Var::Str(_)) => {
                    let v: Vec<&[u8]> = col
                        .iter()
                        .map(|x| match x {
                            Var::Str(s) => *s,
                            Var::Num(_) => &[][..],
                        })
                        .collect();
                    put_strings(&mut out, &v);
                }
                _ => {
                    let v: Vec<u64> = col
                        .iter()
                        .map(|x| match x {
                            Var::Num(v) => *v,
                            Var::Str(_) => 0,
                        })
                        .collect();
                    put_numbers(&mut out, &v);
                }
            }
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

/// A decoded column.
#[derive(Clone)]
enum Column<'a> {
    Num(Vec<u64>),
    Str(Vec<&'a [u8]>),
}

fn get_numbers(c: &mut Cursor<'_>, tag: u8, n: usize, planar: bool) -> Result<Vec<u64>, Corrupt> {
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
        _ => Err(corrupt("unknown number column")),
    }
}

fn get_strings<'a>(
    c: &mut Cursor<'a>,
    tag: u8,
    n: usize,
    planar: bool,
) -> Result<Vec<&'a [u8]>, Corrupt> {
    let mut v = Vec::with_capacity(n);
    match tag {
        C_PLAIN => {
            let lens = (0..n).map(|_| c.len()).collect::<Result<Vec<_>, _>>()?;
            for l in lens {
                v.push(c.take(l)?);
            }
        }
        C_DICT => {
            let k = c.len()?;
            let lens = (0..k).map(|_| c.len()).collect::<Result<Vec<_>, _>>()?;
            let entries = lens
                .into_iter()
                .map(|l| c.take(l))
                .collect::<Result<Vec<_>, _>>()?;
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
    Ok(v)
}

fn render(out: &mut Vec<u8>, mut v: u64, p: u8, w: u8) {
    // Digits from the right into a buffer, then zero padding up to the width.
    let mut buf = [b'0'; 24];
    let mut i = buf.len();
    let (base, digits): (u64, &[u8; 16]) = match p {
        P_DEC | P_DEC_PAD => (10, b"0123456789abcdef"),
        P_HEX_LOWER => (16, b"0123456789abcdef"),
        _ => (16, b"0123456789ABCDEF"),
    };
    loop {
        i -= 1;
        buf[i] = digits[(v % base) as usize];
        v /= base;
        if v == 0 {
            break;
        }
    }
    let start = buf.len().saturating_sub(usize::from(w)).min(i);
    out.extend_from_slice(&buf[start..]);
}

/// Rebuilds the lines of a block that `want` asks for (by row): per row, `Some(line)`
/// for a wanted templated row, `None` for a row the caller kept whole or did not want.
///
/// # Errors
/// [`Corrupt`] when the block is malformed.
pub fn decode(block: &[u8], want: impl Fn(usize) -> bool) -> Result<Vec<Option<Vec<u8>>>, Corrupt> {
    let mut c = Cursor(block);
    let planar = match c.byte()? {
        1 => false,
        VERSION => true,
        _ => return Err(corrupt("unknown version")),
    };
    let n = c.len()?;
    let k = c.len()?;
    let mut templates = Vec::with_capacity(k);
    for _ in 0..k {
        let l = c.len()?;
        let t = c.take(l)?;
        templates.push((t, parts(t)?));
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
            if let Part::Slot(kind, _) = p {
                let tag = c.byte()?;
                let col = if tag == C_SAME {
                    let k = c.len()?;
                    let same = cols
                        .get(k)
                        .filter(|_| k + SAME_LOOKBACK >= cols.len())
                        .cloned();
                    match same {
                        Some(Column::Str(v)) if is_str(*kind) => Column::Str(v),
                        Some(Column::Num(v)) if !is_str(*kind) => Column::Num(v),
                        _ => return Err(corrupt("column refers to an unlike column")),
                    }
                } else if is_str(*kind) {
                    Column::Str(get_strings(&mut c, tag, counts[t], planar)?)
                } else {
                    Column::Num(get_numbers(&mut c, tag, counts[t], planar)?)
                };
                cols.push(col);
            }
        }
        columns.push(cols);
    }
    let mut next = vec![0usize; k];
    let mut out = Vec::with_capacity(n);
    for (row, t) in rows.into_iter().enumerate() {
        if t == 0 {
            out.push(None);
            continue;
        }
        let i = next[t - 1];
        next[t - 1] += 1;
        if !want(row) {
            out.push(None);
            continue;
        }
        let (text, ps) = &templates[t - 1];
        let mut line = Vec::with_capacity(text.len() + 16);
        let mut slot = 0;
        for p in ps {
            match *p {
                Part::Lit(a, b) => line.extend_from_slice(&text[a..b]),
                Part::Slot(kind, w) => {
                    match &columns[t - 1][slot] {
                        Column::Num(v) => render(&mut line, v[i], kind, w),
                        Column::Str(v) => line.extend_from_slice(v[i]),
                    }
                    slot += 1;
                }
            }
        }
        out.push(Some(line));
    }
    Ok(out)
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

    /// A block written by version 1 (values stored byte after byte, not as planes),
    /// from `fixture_lines`, still reads back line for line, and today's encoder
    /// templates the same rows.
    #[test]
    fn a_version_1_block_still_decodes() {
        let block = include_bytes!("../tests/data/block-v1.bin");
        assert_eq!(block[0], 1);
        let lines = fixture_lines();
        let back = decode(block, |_| true).unwrap();
        assert_eq!(back.len(), lines.len());
        let (templated, now) = encode(lines.iter().map(|l| &l[..]));
        assert_eq!(now[0], VERSION);
        let mut rebuilt = 0;
        for (i, (b, l)) in back.iter().zip(&lines).enumerate() {
            assert_eq!(b.is_some(), templated[i], "row {i}");
            if let Some(b) = b {
                assert_eq!(b, l, "row {i}");
                rebuilt += 1;
            }
        }
        assert!(rebuilt >= 400, "{rebuilt} rows rebuilt");
        // The same bytes, laid out as planes.
        assert_eq!(now.len(), block.len());
        assert_ne!(&now[1..], &block[1..]);
        let again = decode(&now, |_| true).unwrap();
        assert_eq!(again, back);
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
        (templated, block.len())
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
            .map(|i| format!("user u{i} took {i} ms from 10.0.0.{i}").into_bytes())
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
                ],
                0..60,
            )
        ) {
            round_trip(&lines);
        }
    }
}
