//! File fingerprints: a 64-bit hash of a file's first line (or first 1 KiB when the
//! first line is longer), and the tail hash of the bytes before a checkpoint offset.
//!
//! The fingerprint is stable once the first line is complete, whatever is appended
//! later, so it follows a file through renames and copies and changes when the file is
//! truncated and rewritten.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Most bytes a fingerprint covers.
pub const FP_MAX: usize = 1024;
/// Bytes before a checkpoint offset covered by the tail hash.
pub const TAIL_LEN: usize = 64;

/// A computed fingerprint: the hash and how many leading bytes it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub hash: u64,
    pub len: u32,
}

pub use crate::hash::fnv1a;

/// Reads up to `buf.len()` bytes at `offset`, retrying short reads.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Computes the fingerprint of an open file, or `None` while its first line is still
/// incomplete and shorter than [`FP_MAX`]. With `whole`, a short file without newline is
/// fingerprinted as it is (used when the file is final: rotated away or deleted).
///
/// # Errors
/// I/O errors from reading.
pub fn compute(file: &File, whole: bool) -> io::Result<Option<Fingerprint>> {
    let mut buf = [0u8; FP_MAX];
    let n = read_full_at(file, &mut buf, 0)?;
    let data = &buf[..n];
    let len = match memchr::memchr(b'\n', data) {
        Some(i) => i + 1,
        None if n == FP_MAX => FP_MAX,
        None if whole && n > 0 => n,
        None => return Ok(None),
    };
    Ok(Some(Fingerprint {
        hash: fnv1a(&data[..len]),
        len: len as u32,
    }))
}

/// Whether the file still starts with the bytes `fp` was computed from.
///
/// # Errors
/// I/O errors from reading.
pub fn matches(file: &File, fp: Fingerprint) -> io::Result<bool> {
    let mut buf = [0u8; FP_MAX];
    let want = fp.len as usize;
    let n = read_full_at(file, &mut buf[..want], 0)?;
    Ok(n == want && fnv1a(&buf[..want]) == fp.hash)
}

/// Hash of the last [`TAIL_LEN`] bytes of `prev ++ cur`.
pub fn tail_hash(prev: &[u8], cur: &[u8]) -> u64 {
    if cur.len() >= TAIL_LEN {
        return fnv1a(&cur[cur.len() - TAIL_LEN..]);
    }
    let need_prev = (TAIL_LEN - cur.len()).min(prev.len());
    let mut tmp = [0u8; TAIL_LEN];
    tmp[..need_prev].copy_from_slice(&prev[prev.len() - need_prev..]);
    tmp[need_prev..need_prev + cur.len()].copy_from_slice(cur);
    fnv1a(&tmp[..need_prev + cur.len()])
}

/// Hash of the [`TAIL_LEN`] bytes of the file before `offset`; `None` if the file is shorter.
///
/// # Errors
/// I/O errors from reading.
pub fn tail_at(file: &File, offset: u64) -> io::Result<Option<u64>> {
    let start = offset.saturating_sub(TAIL_LEN as u64);
    let want = (offset - start) as usize;
    let mut buf = [0u8; TAIL_LEN];
    let n = read_full_at(file, &mut buf[..want], start)?;
    if n < want {
        return Ok(None);
    }
    Ok(Some(fnv1a(&buf[..want])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fingerprint_waits_for_first_line_and_then_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let mut f = File::create(&p).unwrap();
        f.write_all(b"first line without end").unwrap();
        let r = File::open(&p).unwrap();
        assert_eq!(compute(&r, false).unwrap(), None);
        assert!(compute(&r, true).unwrap().is_some());
        f.write_all(b"\nsecond\n").unwrap();
        let fp = compute(&r, false).unwrap().unwrap();
        f.write_all(b"third\n").unwrap();
        assert_eq!(compute(&r, false).unwrap().unwrap(), fp);
        assert!(matches(&r, fp).unwrap());
    }

    #[test]
    fn tail_hash_agrees_with_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let data: Vec<u8> = (0..500u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        for off in [0usize, 10, 63, 64, 65, 300, 500] {
            let (prev, cur) = data[..off].split_at(off / 2);
            assert_eq!(
                tail_at(&f, off as u64).unwrap(),
                Some(tail_hash(prev, cur)),
                "offset {off}"
            );
        }
        assert_eq!(tail_at(&f, 501).unwrap(), None);
    }
}
