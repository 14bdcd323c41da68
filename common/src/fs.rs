//! Durable file replacement: the one way Heimdall writes a file that must survive a crash
//! whole or not at all.
//!
//! A crash (or power loss) during [`write_atomic`] leaves either the old file or the new
//! one under `path`, never a mix: the data goes to a temporary file in the same directory,
//! is fsynced, renamed over `path`, and the directory is fsynced so the rename itself is
//! on disk before the call returns. [`rename_durable`] is the second half alone, for files
//! written some other way (a Parquet writer, a stream).
//!
//! Temporary files are named `.<name>.<random>.tmp` next to their target; a crash can
//! leave one behind, and owners that care sweep them with [`is_temporary`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `data` atomically and durably (mode 0644 before the umask).
///
/// # Errors
/// Any I/O error; `path` is then unchanged (a stray temporary file may remain).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, data, 0o644)
}

/// [`write_atomic`] with the file's permission bits, for keys and secrets (`0o600`).
/// The temporary file is created with `mode`, so the data is never readable by others,
/// not even for a moment.
///
/// # Errors
/// Any I/O error; `path` is then unchanged.
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temporary(path);
    let written = (|| {
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    rename_durable(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Renames `from` to `to` and fsyncs `to`'s directory, so the new name survives a crash.
/// `from` must already be synced by its writer.
///
/// # Errors
/// Any I/O error.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    sync_dir(parent(to))
}

/// Fsyncs a directory, making creations, renames and removals in it durable.
///
/// # Errors
/// Any I/O error.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether `path` is a temporary file left by an interrupted [`write_atomic`].
pub fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().rotate_left(16);
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    parent(path).join(format!(".{name}.{nonce:08x}{n:04x}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two, longer");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state")]);
    }

    #[test]
    fn private_files_are_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        write_atomic_mode(&p, b"secret", 0o600).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("state");
        assert!(write_atomic(&p, b"x").is_err());
        assert!(!p.exists());
        assert!(is_temporary(Path::new("/x/.state.0000abcd0001.tmp")));
        assert!(!is_temporary(Path::new("/x/state")));
    }
}
