//! The file source: tails files matched by globs, through rotations and restarts.
//!
//! Owns: glob expansion, file identity, read positions, line splitting, and the thread
//! that drives them from inotify events (via `notify`) with a periodic stat fallback,
//! since watches can be lost. Does not own durability: the checkpoints it emits are
//! made durable by the spool, and it is seeded from the spool's at start.
//!
//! Identity is device+inode plus the fingerprint of the first line ([`FileKey`]):
//! - rename rotation keeps the inode: the old file is read to its end under its new
//!   name (or after it left the globs, until it has been quiet for `rotate_wait`);
//! - copytruncate changes the fingerprint of the inode: the old position is detached
//!   and the copy, recognised by fingerprint and by the hash of the bytes before the
//!   old offset, carries on from there, so lines between the last read and the
//!   truncation are read from the copy exactly once;
//! - inode reuse is told apart by the fingerprint.
//!
//! A line without its newline is held until it is completed, or until its file is
//! final (rotated away or deleted and quiet), when it is emitted flagged `NO_NEWLINE`.

use super::fingerprint::{self, Fingerprint, TAIL_LEN};
use super::{now_ns, redact_line, send, Checkpoint, Chunk, FileKey, Line};
use crate::config::{FileSource, ReadFrom};
use crate::pipeline::multiline::{Joined, Joiner};
use bytes::Bytes;
use heimdall_common::record::{flags, Labels};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bytes read from a file per read call.
const READ_BUF: usize = 64 << 10;
/// Most bytes read from one file per pass, so one busy file cannot starve the others.
const PASS_BUDGET: usize = 256 << 10;
/// Checkpoints of files not seen for this long are forgotten (the spool uses the same).
const FORGET_AFTER: Duration = crate::spool::CHECKPOINT_TTL;
/// Bytes at the start of a new file looked at for NUL bytes (binary files).
const BINARY_PROBE: usize = 4096;
/// Idle files that still exist re-announce their position this often, so that their
/// checkpoints never age out.
const REFRESH_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// First line incomplete: identity unknown, nothing read yet.
    Pending,
    /// Same fingerprint as a live file or a not-yet-verifiable copy: not read for now.
    Deferred,
    /// Being read.
    Active,
    /// Looks binary (NUL bytes in its first block) and binary files are not allowed.
    Skipped,
}

struct Tracked {
    dev: u64,
    ino: u64,
    path: PathBuf,
    file: File,
    fp: Option<Fingerprint>,
    state: State,
    /// Offset just after the last complete line handed downstream.
    offset: u64,
    /// Next byte to read; `read_pos - offset` bytes are held in `partial` (or skipped).
    read_pos: u64,
    partial: Vec<u8>,
    /// The held line exceeded the cap; the rest of it is being skipped.
    partial_truncated: bool,
    /// Raw bytes just before `read_pos`, for tail hashes.
    raw_tail: Vec<u8>,
    /// Tail hash of the bytes before `offset`.
    tail: u64,
    source: String,
    stream: Arc<Labels>,
    /// Scan generation that last found this file at a glob path.
    seen_gen: u64,
    gone_since: Option<Instant>,
    last_growth: Instant,
    at_eof: bool,
    /// The open multiline record, when the source joins lines.
    joiner: Option<Joiner>,
}

impl Tracked {
    fn key(&self) -> Option<FileKey> {
        self.fp.map(|fp| FileKey {
            dev: self.dev,
            ino: self.ino,
            fp: fp.hash,
        })
    }

    fn checkpoint(&self) -> Option<Checkpoint> {
        Some(Checkpoint {
            key: self.key()?,
            offset: self.offset,
            tail: self.tail,
            source: self.source.clone(),
            updated_ns: now_ns(),
            cursor: String::new(),
        })
    }

    fn start_at(&mut self, offset: u64, tail: u64) {
        self.offset = offset;
        self.read_pos = offset;
        self.tail = tail;
        self.partial.clear();
        self.partial_truncated = false;
        self.raw_tail.clear();
        // Later tail hashes cover the bytes before the offset too, so seed them from the
        // file; without this a short first line after a resume would hash fewer bytes
        // than `fingerprint::tail_at` and the next restart would not recognise the file.
        if offset > 0 {
            let start = offset.saturating_sub(TAIL_LEN as u64);
            let mut buf = [0u8; TAIL_LEN];
            let want = (offset - start) as usize;
            if let Ok(n) = fingerprint::read_full_at(&self.file, &mut buf[..want], start) {
                self.raw_tail.extend_from_slice(&buf[..n]);
            }
        }
        self.at_eof = false;
        self.state = State::Active;
        if let Some(j) = self.joiner.as_mut() {
            j.reset();
        }
    }
}

/// Counters of what the tailer did, for tests and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub lines: u64,
    pub bytes: u64,
    pub truncated_lines: u64,
    pub invalid_utf8_lines: u64,
    pub truncations: u64,
    pub copies_adopted: u64,
    pub closed: u64,
    pub open_errors: u64,
    pub binary_skipped: u64,
}

/// The synchronous core of the file source. [`run`] drives it on a thread.
pub struct FileTailer {
    cfg: FileSource,
    base_labels: Labels,
    tracked: HashMap<(u64, u64), Tracked>,
    checkpoints: HashMap<FileKey, Checkpoint>,
    /// No checkpoint existed at start and the first scan has not run: `read_from` applies.
    initial: bool,
    gen: u64,
    buf: Vec<u8>,
    warned: HashSet<PathBuf>,
    /// Files whose position must reach the spool without new lines (a start at the end,
    /// or an idle file whose checkpoint would otherwise age out).
    announce: Vec<(u64, u64)>,
    pub stats: Stats,
    redact_stats: crate::pipeline::redact::Stats,
    /// Template mining; `None` when off.
    miner: Option<crate::pipeline::template::SourceMiner>,
}

impl FileTailer {
    /// A tailer for `cfg`, resuming from `checkpoints` (recovered from the spool).
    /// `base_labels` are added to every stream (host, static labels).
    pub fn new(cfg: FileSource, base_labels: Labels, checkpoints: Vec<Checkpoint>) -> FileTailer {
        // `read_from` applies to files of a source that has no position yet: at the
        // agent's first start, or a source added later (by a reload).
        let patterns: Vec<glob::Pattern> = cfg
            .include
            .iter()
            .filter_map(|g| glob::Pattern::new(g).ok())
            .collect();
        let initial = !checkpoints
            .iter()
            .any(|c| !c.key.is_journal() && patterns.iter().any(|p| p.matches(&c.source)));
        let mut labels = base_labels;
        for (k, v) in &cfg.labels {
            labels.insert(k.clone(), v.clone());
        }
        FileTailer {
            cfg,
            base_labels: labels,
            tracked: HashMap::new(),
            checkpoints: checkpoints.into_iter().map(|c| (c.key, c)).collect(),
            initial,
            gen: 0,
            buf: vec![0; READ_BUF],
            warned: HashSet::new(),
            announce: Vec::new(),
            stats: Stats::default(),
            redact_stats: crate::pipeline::redact::Stats::default(),
            miner: None,
        }
    }

    /// Mines the templates of this source's records with `miner`.
    pub fn with_miner(mut self, miner: crate::pipeline::template::SourceMiner) -> FileTailer {
        self.miner = Some(miner);
        self
    }

    /// Saves the miner's templates when due and updates its metrics.
    pub fn miner_tick(&mut self) {
        if let Some(m) = self.miner.as_mut() {
            m.tick();
        }
    }

    /// Files currently open.
    pub fn open_files(&self) -> usize {
        self.tracked.len()
    }

    /// Bytes written to the files being read and not read yet (read lag).
    pub fn unread_bytes(&self) -> u64 {
        self.tracked
            .values()
            .filter(|t| t.state == State::Active)
            .map(|t| {
                t.file
                    .metadata()
                    .map_or(0, |m| m.len().saturating_sub(t.read_pos))
            })
            .sum()
    }

    /// Where reading stands for every known logical file (ahead of what is durable).
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        let mut v: Vec<_> = self.checkpoints.values().cloned().collect();
        v.sort_by_key(|c| c.key);
        v
    }

    fn stream_for(&self, source: &str) -> Arc<Labels> {
        make_stream(
            &self.base_labels,
            self.cfg.labels_from_path.as_ref(),
            self.cfg.redact.as_deref(),
            source,
        )
    }

    fn expand(&mut self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for pattern in &self.cfg.include {
            let paths = match glob::glob(pattern) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(pattern, error = %e, "invalid glob");
                    continue;
                }
            };
            for entry in paths {
                let Ok(path) = entry else { continue };
                if self.cfg.exclude.iter().any(|x| x.matches_path(&path)) {
                    continue;
                }
                if seen.insert(path.clone()) {
                    out.push(path);
                }
            }
        }
        out
    }

    /// Expands the globs, opens new files, follows renames, identifies files whose
    /// fingerprint has become known, and notes files that left the globs.
    pub fn scan(&mut self) {
        self.gen += 1;
        let gen = self.gen;
        let now = Instant::now();
        for path in self.expand() {
            let meta = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                _ => continue,
            };
            let id = (meta.dev(), meta.ino());
            if let Some(t) = self.tracked.get_mut(&id) {
                t.seen_gen = gen;
                t.gone_since = None;
                if t.path != path {
                    tracing::debug!(from = %t.path.display(), to = %path.display(), "file renamed");
                    t.path = path;
                }
                continue;
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    self.stats.open_errors += 1;
                    metrics::counter!("heimdall_agent_file_errors_total", "kind" => "open")
                        .increment(1);
                    if self.warned.insert(path.clone()) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot open file; skipping it");
                    }
                    continue;
                }
            };
            self.warned.remove(&path);
            let source = path.to_string_lossy().into_owned();
            let stream = self.stream_for(&source);
            self.tracked.insert(
                id,
                Tracked {
                    dev: id.0,
                    ino: id.1,
                    path,
                    file,
                    fp: None,
                    state: State::Pending,
                    offset: 0,
                    read_pos: 0,
                    partial: Vec::new(),
                    partial_truncated: false,
                    raw_tail: Vec::new(),
                    tail: 0,
                    source,
                    stream,
                    seen_gen: gen,
                    gone_since: None,
                    last_growth: now,
                    at_eof: false,
                    joiner: self.cfg.multiline.clone().map(Joiner::new),
                },
            );
        }
        for t in self.tracked.values_mut() {
            if t.seen_gen != gen && t.gone_since.is_none() {
                t.gone_since = Some(now);
            }
        }
        self.identify_waiting(false);
        self.initial = false;
        let stale = now_ns() - REFRESH_AFTER.as_nanos() as i64;
        for (id, t) in &self.tracked {
            let idle = t
                .key()
                .and_then(|k| self.checkpoints.get(&k))
                .is_some_and(|c| c.updated_ns < stale);
            if t.state == State::Active && idle {
                self.announce.push(*id);
            }
        }
        self.forget_old();
        metrics::gauge!("heimdall_agent_files_open").set(self.tracked.len() as f64);
        metrics::gauge!("heimdall_agent_checkpoints").set(self.checkpoints.len() as f64);
    }

    fn forget_old(&mut self) {
        let cutoff = now_ns() - FORGET_AFTER.as_nanos() as i64;
        let live: HashSet<FileKey> = self.tracked.values().filter_map(Tracked::key).collect();
        self.checkpoints
            .retain(|k, c| c.updated_ns >= cutoff || live.contains(k));
    }

    /// Identifies pending and deferred files. Files whose key has an exact checkpoint go
    /// first, so that at start the original of a copy is claimed before its copy looks.
    fn identify_waiting(&mut self, finalising: bool) {
        let mut waiting: Vec<((u64, u64), bool, bool)> = Vec::new();
        for (id, t) in self.tracked.iter_mut() {
            if matches!(t.state, State::Active | State::Skipped) {
                continue;
            }
            if t.fp.is_none() {
                let whole = finalising && t.gone_since.is_some();
                match fingerprint::compute(&t.file, whole) {
                    Ok(fp) => t.fp = fp,
                    Err(e) => {
                        tracing::warn!(path = %t.path.display(), error = %e, "cannot read file")
                    }
                }
            }
            if let Some(key) = t.key() {
                let fin = finalising && t.gone_since.is_some();
                waiting.push((*id, self.checkpoints.contains_key(&key), fin));
            }
        }
        waiting.sort_by_key(|(_, exact, _)| !exact);
        for (id, _, fin) in waiting {
            self.identify(id, fin);
        }
    }

    fn identify(&mut self, id: (u64, u64), finalising: bool) {
        let Some(t) = self.tracked.get(&id) else {
            return;
        };
        let Some(key) = t.key() else { return };
        let size = t.file.metadata().map(|m| m.len()).unwrap_or(0);
        // Nothing precedes offset 0 (a file identified, or a multiline record open,
        // before anything was handed on), so there is no tail to compare.
        let verify = |file: &File, cp: &Checkpoint| -> bool {
            cp.offset == 0
                || matches!(fingerprint::tail_at(file, cp.offset), Ok(Some(h)) if h == cp.tail)
        };

        if let Some(cp) = self.checkpoints.get(&key).cloned() {
            let t = self.tracked.get_mut(&id).expect("looked up above");
            if size >= cp.offset && verify(&t.file, &cp) {
                tracing::debug!(path = %t.path.display(), offset = cp.offset, "resuming file");
                t.source = cp.source.clone();
                t.stream = make_stream(
                    &self.base_labels,
                    self.cfg.labels_from_path.as_ref(),
                    self.cfg.redact.as_deref(),
                    &cp.source,
                );
                t.start_at(cp.offset, cp.tail);
            } else {
                // The inode was truncated while we were not looking: its old position
                // may live on in a copy, so keep it detached and start this one afresh.
                tracing::info!(path = %t.path.display(), "file was truncated; reading it from the start");
                self.stats.truncations += 1;
                t.start_at(0, 0);
                self.detach(key);
                self.record_position(id);
            }
            return;
        }

        // A different inode with the same first line: a copy (copytruncate), or a file
        // that merely starts alike (a CSV header, a banner). Content decides, not the
        // first line alone.
        let t = self.tracked.get(&id).expect("looked up above");
        let holder = self
            .tracked
            .iter()
            .find(|(oid, o)| {
                **oid != id && o.state == State::Active && o.fp.map(|f| f.hash) == Some(key.fp)
            })
            .map(|(_, o)| o);
        if let Some(h) = holder {
            // The holder may have been truncated since it was last read (copytruncate):
            // then this is probably its copy, which may take over once the truncation is
            // processed (which identifies waiting files again).
            let intact =
                h.fp.is_some_and(|fp| fingerprint::matches(&h.file, fp).unwrap_or(false))
                    && h.file.metadata().map(|m| m.len()).unwrap_or(0) >= h.offset;
            if !intact {
                self.tracked.get_mut(&id).expect("looked up above").state = State::Deferred;
                return;
            }
            // A copy of a file still being read holds the same bytes up to where both
            // reach: reading it too would duplicate them. It takes over if the original
            // is truncated.
            let m = size.min(h.offset);
            let fp_len = t.fp.map_or(0, |f| f.len as u64);
            let same = m > fp_len
                && matches!(
                    (fingerprint::tail_at(&t.file, m), fingerprint::tail_at(&h.file, m)),
                    (Ok(Some(a)), Ok(Some(b))) if a == b
                );
            // The holder may have been truncated between the checks above and the
            // comparison (copytruncate runs while we look): then the comparison saw
            // the truncated file, and this copy must wait for the truncation to be
            // processed instead of being read from the start as a new file.
            let still_intact = || {
                h.fp.is_some_and(|fp| fingerprint::matches(&h.file, fp).unwrap_or(false))
                    && h.file.metadata().map(|m| m.len()).unwrap_or(0) >= h.offset
            };
            if same || (m <= fp_len && !finalising) || !still_intact() {
                self.tracked.get_mut(&id).expect("looked up above").state = State::Deferred;
                return;
            }
        } else {
            let candidate = self
                .checkpoints
                .values()
                .filter(|c| c.key.fp == key.fp && (c.key.dev, c.key.ino) != id)
                .max_by_key(|c| c.updated_ns)
                .cloned();
            // The original is gone or truncated: a copy made by copytruncate is complete
            // and holds the bytes before the old position; carry on from there.
            if let Some(cp) = candidate.filter(|cp| size >= cp.offset && verify(&t.file, cp)) {
                let t = self.tracked.get_mut(&id).expect("looked up above");
                tracing::info!(path = %t.path.display(), offset = cp.offset, from = %cp.source, "continuing a rotated copy");
                self.stats.copies_adopted += 1;
                t.source = cp.source.clone();
                t.start_at(cp.offset, cp.tail);
                t.stream = make_stream(
                    &self.base_labels,
                    self.cfg.labels_from_path.as_ref(),
                    self.cfg.redact.as_deref(),
                    &cp.source,
                );
                self.checkpoints.remove(&cp.key);
                self.record_position(id);
                return;
            }
        }
        let t = self.tracked.get_mut(&id).expect("looked up above");
        if !self.cfg.allow_binary && looks_binary(&t.file) {
            tracing::warn!(path = %t.path.display(), "skipping a binary file (NUL bytes in its first 4KiB; set allow_binary to read it)");
            self.stats.binary_skipped += 1;
            metrics::counter!("heimdall_agent_files_skipped_total", "reason" => "binary")
                .increment(1);
            t.state = State::Skipped;
            return;
        }
        let start = if self.initial && self.cfg.read_from == ReadFrom::End {
            size
        } else {
            0
        };
        let tail = if start > 0 {
            fingerprint::tail_at(&t.file, start)
                .ok()
                .flatten()
                .unwrap_or(0)
        } else {
            0
        };
        tracing::debug!(path = %t.path.display(), start, "new file");
        t.start_at(start, tail);
        self.record_position(id);
        if start > 0 {
            // Make the starting position durable before anything is read past it, so a
            // crash before the first batch does not start at a later end.
            self.announce.push(id);
        }
    }

    fn detach(&mut self, key: FileKey) {
        if let Some(mut cp) = self.checkpoints.remove(&key) {
            cp.key.dev = 0;
            cp.key.ino = 0;
            self.checkpoints.insert(cp.key, cp);
        }
    }

    fn record_position(&mut self, id: (u64, u64)) {
        if let Some(cp) = self.tracked.get(&id).and_then(Tracked::checkpoint) {
            self.checkpoints.insert(cp.key, cp);
        }
    }

    /// Reads new data from every active file into `out`. Returns whether some file has
    /// more to read than this pass's budget allowed.
    pub fn read_all(&mut self, out: &mut Vec<Chunk>) -> bool {
        for id in std::mem::take(&mut self.announce) {
            if self
                .tracked
                .get(&id)
                .is_some_and(|t| t.state == State::Active)
            {
                self.emit(id, Vec::new(), out);
            }
        }
        let ids: Vec<_> = self.tracked.keys().copied().collect();
        let mut more = false;
        let now = Instant::now();
        for id in ids {
            match self.read_file(id, out) {
                Ok(m) => {
                    more |= m;
                    self.flush_due(id, now, out);
                }
                Err(e) => {
                    metrics::counter!("heimdall_agent_file_errors_total", "kind" => "read")
                        .increment(1);
                    if let Some(t) = self.tracked.remove(&id) {
                        tracing::warn!(path = %t.path.display(), error = %e, "read failed; will reopen at next scan");
                    }
                }
            }
        }
        more
    }

    /// Completes a multiline record that has waited for its timeout.
    fn flush_due(&mut self, id: (u64, u64), now: Instant, out: &mut Vec<Chunk>) {
        let Some(t) = self.tracked.get_mut(&id) else {
            return;
        };
        if t.state != State::Active {
            return;
        }
        if let Some(r) = t.joiner.as_mut().and_then(|j| j.flush_due(now)) {
            t.offset = r.end;
            t.tail = r.tail;
            self.emit(id, vec![r.line], out);
        }
    }

    fn read_file(&mut self, id: (u64, u64), out: &mut Vec<Chunk>) -> io::Result<bool> {
        let Some(t) = self.tracked.get_mut(&id) else {
            return Ok(false);
        };
        if t.state != State::Active {
            return Ok(false);
        }
        let fp = t.fp.expect("active files have a fingerprint");
        let size = t.file.metadata()?.len();
        if size < t.read_pos || !fingerprint::matches(&t.file, fp)? {
            // Every line of an open multiline record was read and checked in earlier
            // passes: hand it on before the file is read afresh (a copy that takes
            // over resumes after it).
            if let Some(r) = t.joiner.as_mut().and_then(Joiner::take) {
                t.offset = r.end;
                t.tail = r.tail;
                self.emit(id, vec![r.line], out);
            }
            self.truncated(id);
            return Ok(true);
        }
        if size == t.read_pos {
            t.at_eof = true;
            return Ok(false);
        }
        t.at_eof = false;
        t.last_growth = Instant::now();
        let mut lines = Vec::new();
        let mut last_complete: Option<(u64, u64)> = None;
        let mut read = 0usize;
        let max_line = self.cfg.max_line_bytes;
        let now = Instant::now();
        while read < PASS_BUDGET {
            let n = t.file.read_at(&mut self.buf, t.read_pos)?;
            if n == 0 {
                t.at_eof = true;
                break;
            }
            read += n;
            let data = Bytes::copy_from_slice(&self.buf[..n]);
            let mut start = 0usize;
            let mut last_nl = None;
            for nl in memchr::memchr_iter(b'\n', &data) {
                let piece = &data[start..nl];
                let (bytes, mut fl) = if t.partial.is_empty() && !t.partial_truncated {
                    if piece.len() > max_line {
                        (data.slice(start..start + max_line), flags::TRUNCATED)
                    } else {
                        (data.slice(start..nl), 0)
                    }
                } else {
                    let room = max_line.saturating_sub(t.partial.len());
                    let mut fl = if t.partial_truncated {
                        flags::TRUNCATED
                    } else {
                        0
                    };
                    if piece.len() > room {
                        fl = flags::TRUNCATED;
                    }
                    t.partial.extend_from_slice(&piece[..piece.len().min(room)]);
                    t.partial_truncated = false;
                    (Bytes::from(std::mem::take(&mut t.partial)), fl)
                };
                let bytes = strip_cr(bytes);
                if std::str::from_utf8(&bytes).is_err() {
                    fl |= flags::INVALID_UTF8;
                }
                let line = Line::new(bytes, fl);
                match t.joiner.as_mut() {
                    // The position (and its tail hash) is needed only after the last
                    // line of this buffer: computed once, below.
                    None => {
                        lines.push(line);
                        last_nl = Some(nl);
                    }
                    Some(j) => {
                        let end = t.read_pos + nl as u64 + 1;
                        let tail = fingerprint::tail_hash(&t.raw_tail, &data[..=nl]);
                        if let Some(Joined { line, end, tail }) = j.push(line, end, tail, now) {
                            lines.push(line);
                            last_complete = Some((end, tail));
                        }
                    }
                }
                start = nl + 1;
            }
            if let Some(nl) = last_nl.take() {
                let end = t.read_pos + nl as u64 + 1;
                last_complete = Some((end, fingerprint::tail_hash(&t.raw_tail, &data[..=nl])));
            }
            // Keep the incomplete rest, up to the cap; skip beyond it.
            let rest = &data[start..];
            if !rest.is_empty() {
                let room = max_line.saturating_sub(t.partial.len());
                if rest.len() > room {
                    t.partial_truncated = true;
                }
                t.partial.extend_from_slice(&rest[..rest.len().min(room)]);
            }
            push_tail(&mut t.raw_tail, &data);
            t.read_pos += n as u64;
            if n < self.buf.len() {
                t.at_eof = t.read_pos >= size;
                break;
            }
        }
        // Re-check identity: if the file was truncated and rewritten while we read,
        // what we read may mix old and new content; drop it and start over.
        if !fingerprint::matches(&t.file, fp)? {
            self.truncated(id);
            return Ok(true);
        }
        if let Some((end, tail)) = last_complete {
            t.offset = end;
            t.tail = tail;
            self.emit(id, lines, out);
        }
        Ok(read >= PASS_BUDGET)
    }

    fn emit(&mut self, id: (u64, u64), mut lines: Vec<Line>, out: &mut Vec<Chunk>) {
        let t = self.tracked.get(&id).expect("emitting for a tracked file");
        let checkpoint = t.checkpoint().expect("active files have a key");
        let observed_ns = now_ns();
        // One pass: parse and redact each record and count what the metrics need.
        let (mut bytes, mut truncated, mut invalid, mut read) = (0usize, 0u64, 0u64, 0u64);
        let parser = &self.cfg.parser;
        let redactor = self.cfg.redact.as_deref();
        let rstats = &mut self.redact_stats;
        lines.retain_mut(|l| {
            read += 1;
            bytes += l.bytes.len();
            truncated += u64::from(l.flags & flags::TRUNCATED != 0);
            invalid += u64::from(l.flags & flags::INVALID_UTF8 != 0);
            let p = parser.parse(&l.bytes, observed_ns);
            l.time_ns = p.time_ns.unwrap_or(0);
            l.level = p.level;
            redact_line(redactor, l, rstats)
        });
        if let Some(r) = redactor {
            rstats.flush(r);
        }
        let mut templates = Vec::new();
        if let Some(m) = self.miner.as_mut() {
            for l in &mut lines {
                m.tag(l, &mut templates);
            }
        }
        self.stats.lines += read;
        self.stats.bytes += bytes as u64;
        self.stats.truncated_lines += truncated;
        self.stats.invalid_utf8_lines += invalid;
        metrics::counter!("heimdall_agent_lines_read_total").increment(read);
        metrics::counter!("heimdall_agent_read_bytes_total").increment(bytes as u64);
        if truncated > 0 {
            metrics::counter!("heimdall_agent_lines_truncated_total").increment(truncated);
        }
        if invalid > 0 {
            metrics::counter!("heimdall_agent_lines_invalid_utf8_total").increment(invalid);
        }
        self.checkpoints.insert(checkpoint.key, checkpoint.clone());
        out.push(Chunk {
            stream: t.stream.clone(),
            observed_ns,
            lines,
            checkpoint,
            templates,
            policy: self.cfg.policy.clone(),
        });
    }

    /// The file under `id` no longer starts with its fingerprint, or shrank below our
    /// position: it was truncated (copytruncate) or rewritten. Its old position is
    /// detached for a copy to claim; the inode is read afresh from the start.
    fn truncated(&mut self, id: (u64, u64)) {
        let Some(t) = self.tracked.get_mut(&id) else {
            return;
        };
        tracing::info!(path = %t.path.display(), offset = t.offset, "file truncated; reading it from the start");
        self.stats.truncations += 1;
        metrics::counter!("heimdall_agent_file_truncations_total").increment(1);
        let old = t.key();
        t.fp = None;
        t.state = State::Pending;
        t.start_at(0, 0);
        t.state = State::Pending;
        if let Some(key) = old {
            self.detach(key);
        }
        self.identify_waiting(false);
    }

    /// Closes files that left the globs (rotated away, deleted) once they are read to
    /// the end and quiet for `rotate_wait`; a held partial line is emitted then.
    pub fn close_finished(&mut self, out: &mut Vec<Chunk>) {
        self.close_gone(out, self.cfg.rotate_wait);
    }

    /// Reads files that left the globs to their end and closes them, without waiting
    /// for them to be quiet: a reload's new sources only find files at glob paths.
    pub fn finish_gone(&mut self, out: &mut Vec<Chunk>) {
        self.scan();
        self.close_gone(out, Duration::ZERO);
    }

    fn close_gone(&mut self, out: &mut Vec<Chunk>, wait: Duration) {
        let now = Instant::now();
        let due = |t: &Tracked| {
            t.gone_since
                .is_some_and(|g| now.duration_since(g.max(t.last_growth)) >= wait)
        };
        if self
            .tracked
            .values()
            .any(|t| t.state == State::Pending && due(t))
        {
            // Final files with a short first line and no newline get a whole-file
            // fingerprint so their content can still be read.
            self.identify_waiting(true);
        }
        let ids: Vec<_> = self
            .tracked
            .iter()
            .filter(|(_, t)| due(t))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            // One last read, then the held partial line.
            let _ = self.read_file(id, out);
            let Some(t) = self.tracked.get_mut(&id) else {
                continue;
            };
            if t.state == State::Active && !t.at_eof {
                continue;
            }
            if t.state == State::Active {
                let mut lines = Vec::new();
                let mut last = None;
                if !t.partial.is_empty() {
                    let mut fl = flags::NO_NEWLINE;
                    if t.partial_truncated {
                        fl |= flags::TRUNCATED;
                    }
                    let bytes = Bytes::from(std::mem::take(&mut t.partial));
                    if std::str::from_utf8(&bytes).is_err() {
                        fl |= flags::INVALID_UTF8;
                    }
                    let line = Line::new(bytes, fl);
                    let tail = fingerprint::tail_hash(&[], &t.raw_tail);
                    match t.joiner.as_mut() {
                        None => {
                            lines.push(line);
                            last = Some((t.read_pos, tail));
                        }
                        Some(j) => {
                            if let Some(r) = j.push(line, t.read_pos, tail, now) {
                                lines.push(r.line);
                                last = Some((r.end, r.tail));
                            }
                        }
                    }
                }
                if let Some(r) = t.joiner.as_mut().and_then(Joiner::take) {
                    lines.push(r.line);
                    last = Some((r.end, r.tail));
                }
                if let Some((end, tail)) = last {
                    t.offset = end;
                    t.tail = tail;
                    self.emit(id, lines, out);
                }
            }
            if let Some(t) = self.tracked.remove(&id) {
                tracing::debug!(path = %t.path.display(), "closed file that left the globs");
                self.stats.closed += 1;
            }
        }
    }

    /// Directories to watch for each include glob: the literal prefix, recursively when
    /// the pattern has wildcards below it.
    pub fn watch_roots(&self) -> Vec<(PathBuf, bool)> {
        self.cfg
            .include
            .iter()
            .map(|g| {
                let mut root = PathBuf::from("/");
                let mut comps = Path::new(g).components().peekable();
                let mut recursive = false;
                while let Some(c) = comps.next() {
                    let s = c.as_os_str().to_string_lossy();
                    if s.contains(['*', '?', '[']) {
                        recursive = comps.peek().is_some() || s.contains("**");
                        break;
                    }
                    if comps.peek().is_none() {
                        break;
                    }
                    root.push(c);
                }
                (root, recursive)
            })
            .collect()
    }
}

/// The labels of the stream of the file at `source`. Labels taken from the path (the
/// path itself, `labels_from_path` groups) leave the host too: they are redacted like
/// lines (`/home/jane.doe@corp.com/app.log` becomes `/home/<email>/app.log`).
fn make_stream(
    base: &Labels,
    from_path: Option<&regex::Regex>,
    redact: Option<&crate::pipeline::redact::Redactor>,
    source: &str,
) -> Arc<Labels> {
    let clean = |v: &str| super::redact_label(redact, v);
    let mut l = base.clone();
    l.insert("source", clean(source));
    if let Some(caps) = from_path.and_then(|re| re.captures(source)) {
        for name in from_path
            .into_iter()
            .flat_map(|re| re.capture_names().flatten())
        {
            if let Some(m) = caps.name(name) {
                if base.get(name).is_none() && !m.as_str().is_empty() {
                    l.insert(name, clean(m.as_str()));
                }
            }
        }
    }
    Arc::new(l)
}

/// Whether the first bytes of `file` hold a NUL byte (an image, a database, a core
/// file matched by a broad glob).
fn looks_binary(file: &File) -> bool {
    let mut buf = [0u8; BINARY_PROBE];
    match fingerprint::read_full_at(file, &mut buf, 0) {
        Ok(n) => memchr::memchr(0, &buf[..n]).is_some(),
        Err(_) => false,
    }
}

fn strip_cr(b: Bytes) -> Bytes {
    if b.last() == Some(&b'\r') {
        b.slice(..b.len() - 1)
    } else {
        b
    }
}

fn push_tail(tail: &mut Vec<u8>, data: &[u8]) {
    if data.len() >= TAIL_LEN {
        tail.clear();
        tail.extend_from_slice(&data[data.len() - TAIL_LEN..]);
    } else {
        tail.extend_from_slice(data);
        if tail.len() > TAIL_LEN {
            tail.drain(..tail.len() - TAIL_LEN);
        }
    }
}

/// Drives a [`FileTailer`] on the calling thread until `shutdown` is cancelled or the
/// receiving side of `tx` is closed. Chunks are sent with backpressure: when the
/// pipeline is full, reading pauses (offsets stay where they are; nothing is lost).
///
/// `stop` (a reload) ends it too, but only between passes, after every chunk read is
/// sent: the returned tailer's checkpoints then say exactly where reading stands, and
/// the reloaded sources start there. On `shutdown` unsent chunks are dropped instead:
/// their lines were never spooled and are read again after the restart.
pub fn run(
    mut tailer: FileTailer,
    tx: mpsc::Sender<Chunk>,
    gauges: Arc<super::Gauges>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) -> FileTailer {
    use notify::{EventKind, RecursiveMode, Watcher};
    let (ev_tx, ev_rx) = std::sync::mpsc::sync_channel::<bool>(1024);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let rescan = matches!(
                ev.kind,
                EventKind::Create(_)
                    | EventKind::Remove(_)
                    | EventKind::Modify(notify::event::ModifyKind::Name(_))
            );
            let _ = ev_tx.try_send(rescan);
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "file notifications unavailable; polling only"))
    .ok();
    if let Some(w) = watcher.as_mut() {
        for (root, recursive) in tailer.watch_roots() {
            let mode = if recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            if let Err(e) = w.watch(&root, mode) {
                tracing::debug!(root = %root.display(), error = %e, "cannot watch; relying on polling");
            }
        }
    }
    let poll = tailer.cfg.poll_interval;
    let mut next_scan = Instant::now();
    let mut out = Vec::new();
    let mut more = false;
    let mut reported = 0u64;
    let mut reported_unread = 0u64;
    while !shutdown.is_cancelled() && !stop.is_cancelled() {
        let now = Instant::now();
        if now >= next_scan {
            tailer.scan();
            tailer.close_finished(&mut out);
            tailer.miner_tick();
            next_scan = now + poll;
            let open = tailer.open_files() as u64;
            gauges
                .files
                .fetch_add(open.wrapping_sub(reported), Ordering::Relaxed);
            reported = open;
            let unread = tailer.unread_bytes();
            gauges
                .unread_bytes
                .fetch_add(unread.wrapping_sub(reported_unread), Ordering::Relaxed);
            reported_unread = unread;
        }
        more |= tailer.read_all(&mut out);
        for chunk in out.drain(..) {
            if !send(&tx, chunk, &shutdown) {
                gauges.files.fetch_sub(reported, Ordering::Relaxed);
                gauges
                    .unread_bytes
                    .fetch_sub(reported_unread, Ordering::Relaxed);
                return tailer;
            }
        }
        let mut rescan = false;
        if more {
            more = false;
            while let Ok(r) = ev_rx.try_recv() {
                rescan |= r;
            }
        } else {
            let wait = next_scan
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            match ev_rx.recv_timeout(wait) {
                Ok(r) => {
                    rescan |= r;
                    while let Ok(r) = ev_rx.try_recv() {
                        rescan |= r;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(wait);
                }
            }
        }
        if rescan {
            next_scan = Instant::now();
        }
    }
    if stop.is_cancelled() && !shutdown.is_cancelled() {
        let mut out = Vec::new();
        tailer.finish_gone(&mut out);
        for chunk in out {
            if !send(&tx, chunk, &shutdown) {
                break;
            }
        }
    }
    gauges.files.fetch_sub(reported, Ordering::Relaxed);
    gauges
        .unread_bytes
        .fetch_sub(reported_unread, Ordering::Relaxed);
    tailer
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn cfg(dir: &Path) -> FileSource {
        FileSource {
            max_line_bytes: 100,
            poll_interval: Duration::from_millis(10),
            rotate_wait: Duration::ZERO,
            ..FileSource::with_include(vec![format!("{}/*", dir.display())])
        }
    }

    fn append(p: &Path, s: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        f.write_all(s).unwrap();
    }

    /// Scans and reads until nothing changes; returns lines as strings.
    fn pump(t: &mut FileTailer) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..4 {
            t.scan();
            while t.read_all(&mut out) {}
            t.close_finished(&mut out);
        }
        out.iter()
            .flat_map(|c| {
                c.lines
                    .iter()
                    .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
            })
            .collect()
    }

    fn java_cfg(dir: &Path) -> FileSource {
        use crate::pipeline::multiline::{Multiline, Preset, Rule};
        FileSource {
            multiline: Some(Arc::new(Multiline {
                rule: Rule::Preset(Preset::Java),
                timeout: Duration::from_secs(3600),
                max_lines: 100,
                max_bytes: 1000,
            })),
            max_line_bytes: 1000,
            ..cfg(dir)
        }
    }

    #[test]
    fn multiline_record_open_at_a_restart_is_read_again_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.log");
        append(
            &p,
            b"2024-01-01 ERROR boom
java.lang.IllegalStateException: x
	at a.B.c(B.java:1)
",
        );
        let mut t = FileTailer::new(java_cfg(dir.path()), Labels::default(), vec![]);
        // The record is still open: nothing handed on, the checkpoint stays at 0.
        assert!(pump(&mut t).is_empty());
        let cps = t.checkpoints();
        assert_eq!(cps[0].offset, 0);
        // A restart reads the record again, and the next record completes it.
        append(
            &p,
            b"	at a.B.d(B.java:2)
2024-01-01 INFO next
",
        );
        let mut t2 = FileTailer::new(java_cfg(dir.path()), Labels::default(), cps);
        let got = pump(&mut t2);
        assert_eq!(
            got,
            vec!["2024-01-01 ERROR boom\njava.lang.IllegalStateException: x\n\tat a.B.c(B.java:1)\n\tat a.B.d(B.java:2)"]
        );
        let cps = t2.checkpoints();
        let first_len =
            std::fs::read(&p).unwrap().len() as u64 - b"2024-01-01 INFO next\n".len() as u64;
        assert_eq!(cps[0].offset, first_len);
        // When the file is final (deleted and quiet) the open record is completed.
        std::fs::remove_file(&p).unwrap();
        assert_eq!(pump(&mut t2), vec!["2024-01-01 INFO next"]);
    }

    #[test]
    fn records_get_time_and_level_and_path_labels() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("nginx")).unwrap();
        let p = dir.path().join("nginx/error.log");
        append(
            &p,
            b"2024/03/05 06:07:08 [error] 12#0: upstream timed out\n",
        );
        let mut c = cfg(dir.path());
        c.include = vec![format!("{}/*/*.log", dir.path().display())];
        c.labels_from_path = Some(regex::Regex::new(r"/(?P<service>[^/]+)/[^/]+\.log$").unwrap());
        let mut t = FileTailer::new(c, Labels::default(), vec![]);
        let mut out = Vec::new();
        t.scan();
        t.read_all(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].stream.get("service"), Some("nginx"));
        let l = &out[0].lines[0];
        assert_eq!(l.level, heimdall_common::record::Level::Error);
        assert_eq!(l.time_ns, 1_709_618_828 * 1_000_000_000);
    }

    #[test]
    fn records_and_path_labels_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("jane.doe@corp.example")).unwrap();
        let p = dir.path().join("jane.doe@corp.example/app.log");
        append(&p, b"login from 10.1.2.3 ok\n");
        let mut c = cfg(dir.path());
        c.include = vec![format!("{}/*/*.log", dir.path().display())];
        c.labels_from_path = Some(regex::Regex::new(r"/(?P<user>[^/]+)/[^/]+\.log$").unwrap());
        let mut t = FileTailer::new(c, Labels::default(), vec![]);
        let mut out = Vec::new();
        t.scan();
        t.read_all(&mut out);
        assert_eq!(out[0].stream.get("user"), Some("<email>"));
        assert!(out[0]
            .stream
            .get("source")
            .unwrap()
            .ends_with("/<email>/app.log"));
        assert_eq!(&out[0].lines[0].bytes[..], b"login from <ipv4> ok");
        assert_eq!(out[0].lines[0].redacted, 1);
    }

    #[test]
    fn read_from_end_applies_to_a_source_added_later() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        std::fs::create_dir_all(&old).unwrap();
        std::fs::create_dir_all(&new).unwrap();
        append(&old.join("a.log"), b"1\n");
        let mut t = FileTailer::new(cfg(&old), Labels::default(), vec![]);
        assert_eq!(pump(&mut t), vec!["1"]);
        let cps = t.checkpoints();
        append(&new.join("b.log"), b"before\n");
        let mut c = cfg(&new);
        c.read_from = ReadFrom::End;
        // Positions of another source's files do not make this one's files known.
        let mut t2 = FileTailer::new(c, Labels::default(), cps);
        assert!(pump(&mut t2).is_empty());
        append(&new.join("b.log"), b"after\n");
        assert_eq!(pump(&mut t2), vec!["after"]);
    }

    #[test]
    fn binary_files_are_skipped_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        append(
            &dir.path().join("core.log"),
            b"ELF\0\0\x01\x02 garbage\nmore\n",
        );
        append(&dir.path().join("ok.log"), b"text\n");
        let mut t = FileTailer::new(cfg(dir.path()), Labels::default(), vec![]);
        assert_eq!(pump(&mut t), vec!["text"]);
        assert_eq!(t.stats.binary_skipped, 1);
        let mut c = cfg(dir.path());
        c.allow_binary = true;
        let mut t = FileTailer::new(c, Labels::default(), vec![]);
        assert_eq!(pump(&mut t).len(), 3);
    }

    #[test]
    fn tails_appends_and_holds_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        append(&p, b"one\ntwo\nthr");
        let mut t = FileTailer::new(cfg(dir.path()), Labels::default(), vec![]);
        assert_eq!(pump(&mut t), vec!["one", "two"]);
        append(&p, b"ee\r\nfour\n");
        assert_eq!(pump(&mut t), vec!["three", "four"]);
        assert_eq!(pump(&mut t), Vec::<String>::new());
    }

    #[test]
    fn long_lines_are_truncated_and_flagged_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let long = "x".repeat(250);
        append(&p, format!("short\n{long}\nafter\n").as_bytes());
        // The tailer's cut alone; with redaction on, the cut end is masked as well
        // (next test).
        let mut c = cfg(dir.path());
        c.redact = None;
        let mut t = FileTailer::new(c, Labels::default(), vec![]);
        let mut out = Vec::new();
        t.scan();
        t.read_all(&mut out);
        let lines: Vec<_> = out.iter().flat_map(|c| c.lines.clone()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].bytes.len(), 100);
        assert_eq!(lines[1].flags, flags::TRUNCATED);
        assert_eq!(&lines[2].bytes[..], b"after");
    }

    #[test]
    fn a_value_cut_by_truncation_is_not_shipped_in_part() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        // The cap (100 bytes) falls inside the email address.
        let long = format!("{} mail jane.doe@example.com", "word ".repeat(17));
        append(&p, format!("{long}\n").as_bytes());
        let mut t = FileTailer::new(cfg(dir.path()), Labels::default(), vec![]);
        let mut out = Vec::new();
        t.scan();
        t.read_all(&mut out);
        let l = &out[0].lines[0];
        assert_eq!(l.flags, flags::TRUNCATED);
        let text = String::from_utf8(l.bytes.to_vec()).unwrap();
        assert!(
            text.ends_with("<truncated>") && !text.contains("jane"),
            "{text}"
        );
    }

    #[test]
    fn invalid_utf8_is_kept_with_a_flag() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("a.log"), b"ok\nbad \xff\xfe\n");
        let mut t = FileTailer::new(cfg(dir.path()), Labels::default(), vec![]);
        let mut out = Vec::new();
        t.scan();
        t.read_all(&mut out);
        let l = &out[0].lines;
        assert_eq!(l[0].flags, 0);
        assert_eq!(l[1].flags, flags::INVALID_UTF8);
        assert_eq!(&l[1].bytes[..], b"bad \xff\xfe");
    }

    #[test]
    fn rename_rotation_reads_old_file_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.log");
        append(&p, b"a1\na2\n");
        let mut c = cfg(dir.path());
        c.include = vec![format!("{}/*.log", dir.path().display())];
        let mut t = FileTailer::new(c, Labels::default(), vec![]);
        assert_eq!(pump(&mut t), vec!["a1", "a2"]);
        // The writer still has the old file open: it writes after the rename.
        let mut old = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::fs::rename(&p, dir.path().join("app.log.1")).unwrap();
        old.write_all(b"a3\npartial").unwrap();
        append(&p, b"b1\n");
        let mut got = pump(&mut t);
        got.sort();
        assert_eq!(got, vec!["a3", "b1", "partial"]);
    }

    #[test]
    fn copytruncate_is_read_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.log");
        append(&p, b"line1\nline2\n");
        let mut t = FileTailer::new(cfg(dir.path()), Labels::default(), vec![]);
        assert_eq!(pump(&mut t), vec!["line1", "line2"]);
        // Written after our last read, then rotated by copy + truncate.
        append(&p, b"line3\nline4\n");
        std::fs::copy(&p, dir.path().join("app.log.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&p, b"new1\n");
        let mut got = pump(&mut t);
        got.sort();
        assert_eq!(got, vec!["line3", "line4", "new1"]);
        assert_eq!(t.stats.copies_adopted, 1);
        assert_eq!(pump(&mut t), Vec::<String>::new());
    }

    #[test]
    fn copy_of_a_live_file_is_not_read_twice() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.log");
        append(&p, b"x1\nx2\n");
        let mut t = FileTailer::new(cfg(dir.path()), Labels::default(), vec![]);
        assert_eq!(pump(&mut t), vec!["x1", "x2"]);
        std::fs::copy(&p, dir.path().join("backup.log")).unwrap();
        append(&p, b"x3\n");
        assert_eq!(pump(&mut t), vec!["x3"]);
    }

    #[test]
    fn resumes_from_checkpoints_and_tells_inode_reuse_apart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        append(&p, b"1\n2\n");
        let mut t = FileTailer::new(cfg(dir.path()), Labels::default(), vec![]);
        assert_eq!(pump(&mut t), vec!["1", "2"]);
        let cps = t.checkpoints();
        append(&p, b"3\n");
        let mut t2 = FileTailer::new(cfg(dir.path()), Labels::default(), cps.clone());
        assert_eq!(pump(&mut t2), vec!["3"]);
        // Replace the file with different content (possibly the same inode).
        std::fs::remove_file(&p).unwrap();
        append(&p, b"other\n");
        let mut t3 = FileTailer::new(cfg(dir.path()), Labels::default(), cps);
        assert_eq!(pump(&mut t3), vec!["other"]);
    }

    #[test]
    fn file_without_newline_is_emitted_when_final() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        append(&p, b"no newline here");
        let mut c = cfg(dir.path());
        c.include = vec![format!("{}/*.log", dir.path().display())];
        let mut t = FileTailer::new(c, Labels::default(), vec![]);
        assert!(pump(&mut t).is_empty());
        std::fs::rename(&p, dir.path().join("a.old")).unwrap();
        let mut out = Vec::new();
        t.scan();
        t.close_finished(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].lines[0].bytes[..], b"no newline here");
        assert_eq!(out[0].lines[0].flags, flags::NO_NEWLINE);
    }

    #[test]
    fn deleted_file_is_read_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        append(&p, b"first\n");
        let mut t = FileTailer::new(cfg(dir.path()), Labels::default(), vec![]);
        assert_eq!(pump(&mut t), vec!["first"]);
        let mut w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        w.write_all(b"written after delete\n").unwrap();
        assert_eq!(pump(&mut t), vec!["written after delete"]);
        assert_eq!(t.open_files(), 0, "closed once read and gone");
    }

    /// Regression: files that only share their first line (a CSV header) were taken for
    /// copies of each other and deferred, and the new one was never read.
    #[test]
    fn files_sharing_a_header_are_not_copies() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.csv");
        append(&p, b"time,host,value\n1,a,10\n2,a,20\n3,a,30\n");
        let mut t = FileTailer::new(cfg(dir.path()), Labels::default(), vec![]);
        assert_eq!(pump(&mut t).len(), 4);
        std::fs::rename(&p, dir.path().join("data.csv.1")).unwrap();
        append(&p, b"time,host,value\n4,b,40\n");
        assert_eq!(pump(&mut t), vec!["time,host,value", "4,b,40"]);
        // And after a restart, with the old file gone.
        std::fs::remove_file(dir.path().join("data.csv.1")).unwrap();
        append(&p, b"5,b,50\n");
        let mut t2 = FileTailer::new(cfg(dir.path()), Labels::default(), t.checkpoints());
        assert_eq!(pump(&mut t2), vec!["5,b,50"]);
    }

    #[test]
    fn starting_at_the_end_is_announced_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("a.log"), b"old line\n");
        let mut c = cfg(dir.path());
        c.read_from = ReadFrom::End;
        let mut t = FileTailer::new(c, Labels::default(), vec![]);
        let mut out = Vec::new();
        t.scan();
        t.read_all(&mut out);
        assert_eq!(out.len(), 1, "an announcement");
        assert!(out[0].lines.is_empty());
        assert_eq!(out[0].checkpoint.offset, 9);
        append(&dir.path().join("a.log"), b"new line\n");
        assert_eq!(pump(&mut t), vec!["new line"]);
    }

    /// Regression: after resuming at an offset, the tail hash of the next checkpoint
    /// covered only the bytes read since (a short line), so the following restart took
    /// the file for truncated and read it again from the start.
    #[test]
    fn resume_then_short_line_then_restart_does_not_reread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        append(
            &p,
            "long enough first line to fill the sixty-four byte tail window\n".as_bytes(),
        );
        let mut t = FileTailer::new(cfg(dir.path()), Labels::default(), vec![]);
        assert_eq!(pump(&mut t).len(), 1);
        let mut t2 = FileTailer::new(cfg(dir.path()), Labels::default(), t.checkpoints());
        append(&p, b"short\n");
        assert_eq!(pump(&mut t2), vec!["short"]);
        let mut t3 = FileTailer::new(cfg(dir.path()), Labels::default(), t2.checkpoints());
        assert_eq!(pump(&mut t3), Vec::<String>::new());
    }

    mod model {
        //! Model-based test: random writes, rotations (both kinds), deletions of rotated
        //! files that were read, and crashes, against the real file system. Whatever
        //! happens, every line written is emitted exactly once.
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        #[derive(Clone, Debug)]
        enum Action {
            Write(usize, usize),
            Rename(usize),
            CopyTruncate(usize),
            Pump,
            DeleteRotated,
            Crash,
        }

        fn action() -> impl Strategy<Value = Action> {
            prop_oneof![
                6 => (0..3usize, 1..20usize).prop_map(|(f, n)| Action::Write(f, n)),
                2 => (0..3usize).prop_map(Action::Rename),
                2 => (0..3usize).prop_map(Action::CopyTruncate),
                4 => Just(Action::Pump),
                1 => Just(Action::DeleteRotated),
                1 => Just(Action::Crash),
            ]
        }

        struct World {
            dir: tempfile::TempDir,
            counter: usize,
            rotations: usize,
            written: Vec<String>,
            emitted: Vec<String>,
            durable: HashMap<FileKey, Checkpoint>,
            rotated_read: Vec<PathBuf>,
        }

        impl World {
            fn path(&self, f: usize) -> PathBuf {
                self.dir.path().join(format!("f{f}.log"))
            }

            fn pump(&mut self, t: &mut FileTailer) {
                let mut out = Vec::new();
                for _ in 0..3 {
                    t.scan();
                    while t.read_all(&mut out) {}
                    t.close_finished(&mut out);
                }
                for c in out {
                    self.emitted.extend(
                        c.lines
                            .iter()
                            .map(|l| String::from_utf8_lossy(&l.bytes).into_owned()),
                    );
                    self.durable.insert(c.checkpoint.key, c.checkpoint);
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            #[test]
            fn every_line_is_emitted_exactly_once(actions in proptest::collection::vec(action(), 1..40)) {
                let mut w = World {
                    dir: tempfile::tempdir().unwrap(),
                    counter: 0,
                    rotations: 0,
                    written: Vec::new(),
                    emitted: Vec::new(),
                    durable: HashMap::new(),
                    rotated_read: Vec::new(),
                };
                let mk = |w: &World, cps: Vec<Checkpoint>| FileTailer::new(cfg(w.dir.path()), Labels::default(), cps);
                let mut t = mk(&w, vec![]);
                for a in actions {
                    match a {
                        Action::Write(f, n) => {
                            let mut text = String::new();
                            for _ in 0..n {
                                let l = format!("file{f} line{} {}", w.counter, "x".repeat(w.counter % 37));
                                w.counter += 1;
                                text.push_str(&l);
                                text.push('\n');
                                w.written.push(l);
                            }
                            append(&w.path(f), text.as_bytes());
                        }
                        Action::Rename(f) if w.path(f).exists() => {
                            w.rotations += 1;
                            let to = w.dir.path().join(format!("f{f}.log.{}", w.rotations));
                            std::fs::rename(w.path(f), &to).unwrap();
                        }
                        Action::CopyTruncate(f) if w.path(f).exists() => {
                            w.rotations += 1;
                            let to = w.dir.path().join(format!("f{f}.log.{}", w.rotations));
                            std::fs::copy(w.path(f), &to).unwrap();
                            std::fs::OpenOptions::new().write(true).open(w.path(f)).unwrap().set_len(0).unwrap();
                        }
                        Action::Pump => {
                            w.pump(&mut t);
                            // Rotated files present now have been read to their end.
                            w.rotated_read = std::fs::read_dir(w.dir.path()).unwrap()
                                .map(|e| e.unwrap().path())
                                .filter(|p| p.extension().is_some_and(|x| x != "log"))
                                .collect();
                        }
                        Action::DeleteRotated => {
                            for p in w.rotated_read.drain(..) {
                                let _ = std::fs::remove_file(p);
                            }
                        }
                        Action::Crash => {
                            // Only what was emitted is durable: resume from those checkpoints.
                            t = mk(&w, w.durable.values().cloned().collect());
                        }
                        _ => {}
                    }
                }
                w.pump(&mut t);
                w.pump(&mut t);
                let mut want = w.written.clone();
                let mut got = w.emitted.clone();
                want.sort();
                got.sort();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn watch_roots_are_literal_prefixes() {
        let mut c = cfg(Path::new("/tmp"));
        c.include = vec!["/var/log/**/*.log".into(), "/srv/app/*.log".into()];
        let t = FileTailer::new(c, Labels::default(), vec![]);
        assert_eq!(
            t.watch_roots(),
            vec![
                (PathBuf::from("/var/log"), true),
                (PathBuf::from("/srv/app"), false)
            ]
        );
    }
}
