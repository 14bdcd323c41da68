//! Byte scanning eight bytes at a time ("SIMD within a register"), for the hot scans of
//! the redactor and the template miner. Safe code: a word is read with
//! `u64::from_le_bytes`.
//!
//! The tests work on 7-bit bytes: callers clear the high bits with `& !HIGH` and treat
//! what a byte above 0x7F then looks like as a candidate to check, never as a skip.

/// 0x01 in every byte.
pub const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte.
pub const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `y` (7-bit bytes) that is at least `v`.
#[inline(always)]
pub fn ge(y: u64, v: u8) -> u64 {
    y + ONES * u64::from(0x80 - v)
}

/// The high bit of each byte of `v` (7-bit bytes) that is zero; exact per byte.
#[inline(always)]
pub fn zero(v: u64) -> u64 {
    !((v + ONES * 0x7F) | v)
}

/// The eight bytes of `line` at `i` as a little-endian word.
///
/// # Panics
/// If fewer than eight bytes follow `i`.
#[inline(always)]
pub fn word_at(line: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&line[i..i + 8]);
    u64::from_le_bytes(b)
}
