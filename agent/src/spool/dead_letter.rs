//! The dead-letter directory: batches the aggregator rejected, kept with the reason so
//! they can be re-sent once the cause is fixed (`heimdall-agent dead-letter resend`).
//!
//! A rejection means the aggregator could not decode the batch at all (a corrupt spool
//! entry, a bug): what one record holds is never a reason, the aggregator cuts and flags
//! it instead. So dead letters are rare and each one deserves attention: they are
//! counted in `heimdall_agent_dead_letter_batches`, reported in heartbeats (shown by
//! `heimdall agents`) and logged with the reason.
//!
//! Layout under `<spool>/dead-letter/`: `<epoch:016x>-<seq:020>.batch` (the encoded
//! frame as it was sent) and `.reason` beside it; re-sent batches move to `resent/`.
//!
//! A re-sent batch gets an identity of its own derived from the original one
//! ([`resend_identity`]), so re-sending the same file twice (a crash between the
//! aggregator's `Ack` and the move to `resent/`) stores it once.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The dead-letter directory of the spool in `spool_dir`.
pub fn dir(spool_dir: &Path) -> PathBuf {
    spool_dir.join("dead-letter")
}

/// One rejected batch.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The `.batch` file.
    pub path: PathBuf,
    pub epoch: u64,
    pub seq: u64,
    /// The aggregator's reason, as written when it was rejected.
    pub reason: String,
    /// Size of the encoded frame.
    pub bytes: u64,
    /// When it was rejected (the file's modification time), seconds since the epoch.
    pub rejected_at: i64,
}

/// Parses `<epoch:016x>-<seq:020>.batch`.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".batch")?;
    let (e, s) = stem.split_once('-')?;
    Some((u64::from_str_radix(e, 16).ok()?, s.parse().ok()?))
}

/// The rejected batches waiting in `spool_dir`, oldest first.
///
/// # Errors
/// I/O errors listing the directory (a missing directory is an empty list).
pub fn list(spool_dir: &Path) -> io::Result<Vec<DeadLetter>> {
    let d = dir(spool_dir);
    let entries = match fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((epoch, seq)) = parse_name(&name) else {
            continue;
        };
        let meta = e.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let path = e.path();
        let reason = fs::read_to_string(path.with_extension("reason")).unwrap_or_default();
        let rejected_at = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        out.push(DeadLetter {
            path,
            epoch,
            seq,
            reason,
            bytes: meta.len(),
            rejected_at,
        });
    }
    out.sort_by_key(|d| (d.rejected_at, d.epoch, d.seq));
    Ok(out)
}

/// How many rejected batches wait in `spool_dir`.
pub fn count(spool_dir: &Path) -> u64 {
    list(spool_dir).map_or(0, |v| v.len() as u64)
}

/// Writes a rejected batch and its reason durably (temp file, fsync, rename, directory
/// fsync), so a rejection acknowledged in the spool is never lost by a crash.
///
/// # Errors
/// I/O errors.
pub fn write(spool_dir: &Path, epoch: u64, seq: u64, frame: &[u8], reason: &str) -> io::Result<()> {
    let d = dir(spool_dir);
    fs::create_dir_all(&d)?;
    let base = d.join(format!("{epoch:016x}-{seq:020}"));
    // The reason first: a `.batch` is only listed once its reason is in place.
    for (ext, data) in [("reason", reason.as_bytes()), ("batch", frame)] {
        heimdall_common::fs::write_atomic(&base.with_extension(ext), data)?;
    }
    Ok(())
}

/// The identity a re-sent batch goes under: an epoch derived from the original
/// `(epoch, seq)` (never 0, never a spool's random epoch in practice), with `seq` and
/// `floor` 1. The aggregator keeps each identity once, so re-sending is idempotent.
pub fn resend_identity(epoch: u64, seq: u64) -> u64 {
    let mut key = Vec::with_capacity(40);
    key.extend_from_slice(b"heimdall dead-letter resend\0");
    key.extend_from_slice(&epoch.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    crate::hash::fnv1a(&key).max(1)
}

/// Moves a re-sent batch (and its reason) to `resent/`, where it stays for reference.
///
/// # Errors
/// I/O errors.
pub fn mark_resent(d: &DeadLetter) -> io::Result<()> {
    let parent = d.path.parent().unwrap_or(Path::new("."));
    let to = parent.join("resent");
    fs::create_dir_all(&to)?;
    let name = d.path.file_name().unwrap_or_default();
    fs::rename(&d.path, to.join(name))?;
    let reason = d.path.with_extension("reason");
    if reason.exists() {
        fs::rename(&reason, to.join(Path::new(name).with_extension("reason")))?;
    }
    heimdall_common::fs::sync_dir(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_batches_are_listed_and_moved_when_resent() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), 0xabc, 7, b"frame", "code 2: malformed").unwrap();
        let l = list(d.path()).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].epoch, l[0].seq), (0xabc, 7));
        assert_eq!(l[0].reason, "code 2: malformed");
        assert_eq!(l[0].bytes, 5);
        mark_resent(&l[0]).unwrap();
        assert_eq!(count(d.path()), 0);
        assert!(dir(d.path())
            .join("resent/0000000000000abc-00000000000000000007.batch")
            .exists());
    }

    #[test]
    fn resend_identities_are_stable_and_distinct() {
        assert_eq!(resend_identity(1, 2), resend_identity(1, 2));
        assert_ne!(resend_identity(1, 2), resend_identity(1, 3));
        assert_ne!(resend_identity(1, 2), resend_identity(2, 2));
        assert_ne!(resend_identity(0, 0), 0);
    }
}
