//! The spool: a bounded, segmented, append-only on-disk log of sealed batches.
//!
//! Owns: durability of batches between the pipeline and the aggregator, the batch
//! sequence numbers, and the durable checkpoints. Each entry stores the encoded `Batch`
//! frame together with the source checkpoints it covers, written and fsynced as one
//! record, so after a crash the checkpoints recovered from the spool say exactly which
//! lines are safely spooled: none is lost and none read twice.
//!
//! Layout of the directory:
//! - `seg-<first seq>.spl`: segments of entries `len:u32 crc32c:u32 body`;
//! - `state`: epoch, highest contiguous acknowledged seq, and the checkpoints folded
//!   from deleted segments (written to a temp file, fsynced, renamed);
//! - `dead-letter/`: batches the aggregator rejected, with the reason ([`dead_letter`]).
//!
//! A segment is deleted only when every batch in it is acknowledged, and only after
//! the state file holds its checkpoints. Does not own: sending (see `ship`).

pub mod dead_letter;

use crate::sources::{Checkpoint, FileKey, Positions};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::Notify;

const STATE_MAGIC: u32 = 0x4853_5053; // "HSPS"
/// Version 2 added journal cursors to checkpoints, version 3 file generations; older
/// files are still read.
const STATE_VERSION: u32 = 3;
/// Set in an entry's checkpoint count when its checkpoints carry cursors (entries
/// written before cursors existed do not have it).
const CURSORS_FLAG: u32 = 1 << 31;
/// Set in an entry's checkpoint count when its checkpoints carry generations.
const GENS_FLAG: u32 = 1 << 30;
const ENTRY_HEADER: usize = 8;
/// Checkpoints not updated for this long are dropped from the state file.
pub const CHECKPOINT_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Failures of the spool. Any of these on append is structural: the agent stops.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("spool {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The state file exists but cannot be decoded.
    #[error("spool state file {path} is corrupt: {reason}")]
    CorruptState { path: PathBuf, reason: StateFault },
    /// The spool is being shut down.
    #[error("spool is closed")]
    Closed,
}

/// Why a spool state file cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateFault {
    /// Shorter than the fixed header and checksum.
    #[error("too short")]
    TooShort,
    /// The checksum does not match (a torn or damaged write).
    #[error("checksum mismatch")]
    Checksum,
    /// Wrong magic number.
    #[error("not a Heimdall spool state file")]
    NotState,
    /// A format version this build does not read.
    #[error("unsupported version {0}")]
    Version(u32),
    /// A checkpoint record that does not decode.
    #[error("bad checkpoint: {0}")]
    Checkpoint(&'static str),
    /// Bytes after the last checkpoint.
    #[error("trailing bytes")]
    Trailing,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Sizing of the spool.
#[derive(Clone, Copy, Debug)]
pub struct SpoolLimits {
    /// Most bytes of segment files.
    pub max_bytes: u64,
    /// Size at which the active segment is sealed and a new one started.
    pub segment_bytes: u64,
    /// Frames kept in memory for sending without reading disk.
    pub memory_bytes: u64,
    /// What happens at `max_bytes`.
    pub policy: FullPolicy,
}

/// What the agent does when the spool is at its cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullPolicy {
    /// Stop reading until the aggregator acknowledges data: sources keep their
    /// positions and nothing is lost.
    Block,
    /// Delete the oldest unsent batches to make room, counting what was dropped.
    DropOldest,
}

/// What [`Spool::drop_oldest`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
}

struct EntryMeta {
    seq: u64,
    seg: u64,
    /// Offset of the frame inside the segment file.
    frame_offset: u64,
    frame_len: u32,
    created: Instant,
    checkpoints: Vec<Checkpoint>,
    frame: Option<Bytes>,
}

struct Segment {
    id: u64,
    bytes: u64,
    last_seq: u64,
    sealed: bool,
}

struct Inner {
    epoch: u64,
    next_seq: u64,
    acked_through: u64,
    acked_above: BTreeSet<u64>,
    entries: VecDeque<EntryMeta>,
    segments: VecDeque<Segment>,
    active: Option<(File, u64)>,
    snapshot: Positions,
    snapshot_seq: u64,
    total_bytes: u64,
    mem_bytes: u64,
    state_dirty: bool,
    closed: bool,
    /// Batches in the dead-letter directory.
    dead_letters: u64,
}

/// Point-in-time figures for heartbeats and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub bytes: u64,
    pub batches: u64,
    pub oldest_age_ns: u64,
    pub acked_through: u64,
    /// Rejected batches in the dead-letter directory.
    pub dead_letters: u64,
}

/// The spool. Methods block on disk I/O: call them from a blocking context.
pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    inner: Mutex<Inner>,
    /// Woken when a batch is appended.
    pub data: Notify,
    /// Woken when space is freed or the spool closes.
    pub space: Notify,
}

/// What [`Spool::open`] recovered.
pub struct Recovered {
    pub spool: Spool,
    /// The durable checkpoints: where each file's reading resumes.
    pub checkpoints: Vec<Checkpoint>,
    /// Entries that could not be read back (corrupt segments); logged and counted.
    pub lost_entries: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering checkpoints and unacknowledged
    /// batches. A torn entry at the end of the last segment (a crash mid-write) is cut off.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory is unusable, [`Error::CorruptState`].
    pub fn open(dir: &Path, limits: SpoolLimits) -> Result<Recovered, Error> {
        fs::create_dir_all(dir.join("dead-letter")).map_err(io_err("create", dir))?;
        let state_path = dir.join("state");
        let mut inner = Inner {
            epoch: 0,
            next_seq: 1,
            acked_through: 0,
            acked_above: BTreeSet::new(),
            entries: VecDeque::new(),
            segments: VecDeque::new(),
            active: None,
            snapshot: Positions::default(),
            snapshot_seq: 0,
            total_bytes: 0,
            mem_bytes: 0,
            state_dirty: false,
            closed: false,
            dead_letters: dead_letter::count(dir),
        };
        match fs::read(&state_path) {
            Ok(b) => read_state(&b, &mut inner).map_err(|reason| Error::CorruptState {
                path: state_path.clone(),
                reason,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                inner.epoch = new_epoch();
                inner.state_dirty = true;
            }
            Err(e) => return Err(io_err("read", &state_path)(e)),
        }

        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err("list", dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                n.strip_prefix("seg-")?.strip_suffix(".spl")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut lost = 0u64;
        let mut max_seq = inner.snapshot_seq.max(inner.acked_through);
        let last_id = ids.last().copied();
        for id in ids {
            let path = seg_path(dir, id);
            let data = fs::read(&path).map_err(io_err("read", &path))?;
            let mut pos = 0usize;
            let mut seg_last = 0u64;
            let mut good_end = 0usize;
            while pos < data.len() {
                match parse_entry(&data[pos..]) {
                    Ok((len, seq, checkpoints, frame_rel, frame_len)) => {
                        seg_last = seq;
                        max_seq = max_seq.max(seq);
                        if seq > inner.snapshot_seq && seq > inner.acked_through {
                            let frame_offset = (pos + frame_rel) as u64;
                            let frame = if inner.mem_bytes + frame_len as u64 <= limits.memory_bytes
                            {
                                inner.mem_bytes += frame_len as u64;
                                Some(Bytes::copy_from_slice(
                                    &data[pos + frame_rel..pos + frame_rel + frame_len],
                                ))
                            } else {
                                None
                            };
                            inner.entries.push_back(EntryMeta {
                                seq,
                                seg: id,
                                frame_offset,
                                frame_len: frame_len as u32,
                                created: Instant::now(),
                                checkpoints,
                                frame,
                            });
                        } else if seq > inner.snapshot_seq {
                            // Acknowledged, but its segment is still here: its
                            // checkpoints are needed until the segment is folded.
                            inner.entries.push_back(EntryMeta {
                                seq,
                                seg: id,
                                frame_offset: (pos + frame_rel) as u64,
                                frame_len: frame_len as u32,
                                created: Instant::now(),
                                checkpoints,
                                frame: None,
                            });
                        }
                        pos += len;
                        good_end = pos;
                    }
                    Err(reason) => {
                        if Some(id) == last_id {
                            tracing::warn!(segment = %path.display(), offset = pos, reason, "cutting off a torn spool entry (crash while writing)");
                            let f = OpenOptions::new()
                                .write(true)
                                .open(&path)
                                .map_err(io_err("open", &path))?;
                            f.set_len(good_end as u64)
                                .map_err(io_err("truncate", &path))?;
                            f.sync_all().map_err(io_err("fsync", &path))?;
                        } else {
                            lost += 1;
                            tracing::error!(segment = %path.display(), offset = pos, reason, "corrupt spool entry; the rest of this segment is lost");
                        }
                        break;
                    }
                }
            }
            let bytes = good_end as u64;
            if bytes == 0 {
                // Created but never written (a crash between creating and appending): its
                // name would collide with the next segment's.
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                continue;
            }
            if seg_last <= inner.snapshot_seq {
                // Folded into the state before a crash stopped its deletion.
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                continue;
            }
            inner.total_bytes += bytes;
            inner.segments.push_back(Segment {
                id,
                bytes,
                last_seq: seg_last,
                sealed: true,
            });
        }
        inner.next_seq = max_seq + 1;
        // Entries are in seq order because segments are named by their first seq.
        let mut checkpoints = inner.snapshot.clone();
        for e in &inner.entries {
            for c in &e.checkpoints {
                checkpoints.insert(c.clone());
            }
        }
        let spool = Spool {
            dir: dir.to_owned(),
            limits,
            inner: Mutex::new(inner),
            data: Notify::new(),
            space: Notify::new(),
        };
        spool.collect()?;
        spool.flush_state()?;
        let checkpoints = checkpoints.to_vec();
        Ok(Recovered {
            spool,
            checkpoints,
            lost_entries: lost,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every mutation is
        // completed before the guard drops), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This spool's epoch (random, chosen at creation).
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// What happens at the cap.
    pub fn policy(&self) -> FullPolicy {
        self.limits.policy
    }

    /// Whether an entry of `len` bytes fits under the cap now.
    pub fn has_room(&self, len: u64) -> bool {
        let g = self.lock();
        g.total_bytes == 0 || g.total_bytes + len <= self.limits.max_bytes
    }

    /// Appends a batch: `build(seq, floor)` returns the encoded frame for the sequence
    /// number the spool assigns. Written and fsynced before returning.
    ///
    /// # Errors
    /// [`Error::Io`] (structural: the caller should stop), [`Error::Closed`].
    pub fn append(
        &self,
        checkpoints: Vec<Checkpoint>,
        build: impl FnOnce(u64, u64) -> Bytes,
    ) -> Result<u64, Error> {
        let mut g = self.lock();
        if g.closed {
            return Err(Error::Closed);
        }
        let seq = g.next_seq;
        let floor = g.acked_through + 1;
        let frame = build(seq, floor);
        // One buffer: header placeholder, body, then the header filled in, so the frame
        // (the bulk of the entry) is copied once.
        let mut rec =
            BytesMut::with_capacity(ENTRY_HEADER + frame.len() + 64 + checkpoints.len() * 64);
        rec.put_bytes(0, ENTRY_HEADER);
        rec.put_u64(seq);
        rec.put_i64(crate::sources::now_ns());
        rec.put_u32(checkpoints.len() as u32 | CURSORS_FLAG | GENS_FLAG);
        for c in &checkpoints {
            put_checkpoint(&mut rec, c);
        }
        rec.put_u32(frame.len() as u32);
        let frame_rel = rec.len();
        rec.put_slice(&frame);
        let body_len = (rec.len() - ENTRY_HEADER) as u32;
        let crc = crc32c::crc32c(&rec[ENTRY_HEADER..]);
        rec[..4].copy_from_slice(&body_len.to_be_bytes());
        rec[4..ENTRY_HEADER].copy_from_slice(&crc.to_be_bytes());

        let need_new = match &g.active {
            None => true,
            Some((_, id)) => {
                let id = *id;
                g.segments
                    .iter()
                    .find(|s| s.id == id)
                    .is_none_or(|s| s.bytes >= self.limits.segment_bytes)
            }
        };
        if need_new {
            if let Some((_, id)) = g.active.take() {
                if let Some(s) = g.segments.iter_mut().find(|s| s.id == id) {
                    s.sealed = true;
                }
            }
            let path = seg_path(&self.dir, seq);
            let f = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(io_err("create", &path))?;
            sync_dir(&self.dir)?;
            g.active = Some((f, seq));
            g.segments.push_back(Segment {
                id: seq,
                bytes: 0,
                last_seq: 0,
                sealed: false,
            });
        }
        let seg_id = g
            .active
            .as_ref()
            .map(|(_, id)| *id)
            .expect("active segment set above");
        let path = seg_path(&self.dir, seg_id);
        let seg_bytes = g.segments.back().map_or(0, |s| s.bytes);
        let active = &mut g.active.as_mut().expect("active segment set above").0;
        if let Err(e) = active.write_all(&rec).and_then(|()| active.sync_data()) {
            // Cut off whatever part was written (a full disk), so that later entries do
            // not land behind garbage; the next append starts a new segment.
            let _ = active.set_len(seg_bytes);
            g.active = None;
            if seg_bytes == 0 {
                g.segments.pop_back();
                let _ = fs::remove_file(&path);
            } else if let Some(s) = g.segments.back_mut() {
                s.sealed = true;
            }
            metrics::counter!("heimdall_agent_spool_write_errors_total").increment(1);
            return Err(Error::Io {
                op: "append",
                path,
                source: e,
            });
        }
        let seg = g.segments.back_mut().expect("active segment is the last");
        let start = seg.bytes;
        seg.bytes += rec.len() as u64;
        seg.last_seq = seq;
        g.total_bytes += rec.len() as u64;
        g.next_seq = seq + 1;
        let keep = g.mem_bytes + frame.len() as u64 <= self.limits.memory_bytes;
        if keep {
            g.mem_bytes += frame.len() as u64;
        }
        g.entries.push_back(EntryMeta {
            seq,
            seg: seg_id,
            frame_offset: start + frame_rel as u64,
            frame_len: frame.len() as u32,
            created: Instant::now(),
            checkpoints,
            frame: keep.then_some(frame),
        });
        metrics::gauge!("heimdall_agent_spool_bytes").set(g.total_bytes as f64);
        metrics::counter!("heimdall_agent_spool_appended_bytes_total").increment(rec.len() as u64);
        drop(g);
        self.data.notify_waiters();
        Ok(seq)
    }

    /// The first batch after `after` (exclusive) that is not yet acknowledged.
    pub fn next_unacked(&self, after: u64) -> Option<u64> {
        let g = self.lock();
        let from = g
            .entries
            .partition_point(|e| e.seq <= after.max(g.acked_through));
        g.entries
            .range(from..)
            .find(|e| !g.acked_above.contains(&e.seq))
            .map(|e| e.seq)
    }

    /// The encoded frame of batch `seq`, from memory or disk.
    ///
    /// # Errors
    /// [`Error::Io`] reading the segment; `Ok(None)` if the batch is gone (acknowledged).
    pub fn frame(&self, seq: u64) -> Result<Option<Bytes>, Error> {
        let (seg, off, len) = {
            let g = self.lock();
            let Some(e) = find(&g.entries, seq) else {
                return Ok(None);
            };
            if let Some(f) = &e.frame {
                return Ok(Some(f.clone()));
            }
            (e.seg, e.frame_offset, e.frame_len)
        };
        let path = seg_path(&self.dir, seg);
        let read = File::open(&path).and_then(|f| {
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, off).map(|()| buf)
        });
        match read {
            Ok(buf) => Ok(Some(Bytes::from(buf))),
            // Dropped (`drop_oldest`) or delivered since the lookup: nothing to send.
            Err(_) if find(&self.lock().entries, seq).is_none() => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Makes room for an entry of `len` bytes by deleting the oldest segments and the
    /// unsent batches in them (the `drop_oldest` policy). Their checkpoints are kept:
    /// sources do not read the dropped lines again. The aggregator learns from the next
    /// batch's `floor` that the dropped sequence numbers will never come.
    ///
    /// # Errors
    /// [`Error::Io`] writing the state file or deleting a segment.
    pub fn drop_oldest(&self, len: u64) -> Result<Dropped, Error> {
        let mut dropped = Dropped::default();
        loop {
            let (seqs, last) = {
                let mut g = self.lock();
                if g.total_bytes == 0 || g.total_bytes + len <= self.limits.max_bytes {
                    break;
                }
                let Some(front) = g.segments.front() else {
                    break;
                };
                let (id, last, sealed) = (front.id, front.last_seq, front.sealed);
                if !sealed {
                    // Only the active segment is left: seal it so that it can go and
                    // the next append starts a new one.
                    if g.active.as_ref().is_some_and(|(_, a)| *a == id) {
                        g.active = None;
                    }
                    g.segments.front_mut().expect("checked above").sealed = true;
                }
                let acked_through = g.acked_through;
                let seqs: Vec<u64> = g
                    .entries
                    .iter()
                    .take_while(|e| e.seq <= last)
                    .filter(|e| e.seq > acked_through && !g.acked_above.contains(&e.seq))
                    .map(|e| e.seq)
                    .collect();
                (seqs, last)
            };
            for &seq in &seqs {
                if let Ok(Some(frame)) = self.frame(seq) {
                    dropped.bytes += frame.len() as u64;
                    dropped.records += count_records(frame);
                }
                dropped.batches += 1;
            }
            {
                let mut g = self.lock();
                if last > g.acked_through {
                    g.acked_through = last;
                }
                let through = g.acked_through;
                g.acked_above.retain(|&s| s > through);
                while g.acked_above.first() == Some(&(g.acked_through + 1)) {
                    g.acked_through += 1;
                    let s = g.acked_through;
                    g.acked_above.remove(&s);
                }
                g.state_dirty = true;
            }
            self.collect()?;
        }
        if dropped.batches > 0 {
            metrics::counter!("heimdall_agent_spool_dropped_batches_total")
                .increment(dropped.batches);
            metrics::counter!("heimdall_agent_spool_dropped_records_total")
                .increment(dropped.records);
            metrics::counter!("heimdall_agent_spool_dropped_bytes_total").increment(dropped.bytes);
        }
        Ok(dropped)
    }

    /// Marks batch `seq` delivered; frees segments that are wholly delivered.
    ///
    /// # Errors
    /// [`Error::Io`] writing the state file or deleting a segment.
    pub fn ack(&self, seq: u64) -> Result<(), Error> {
        {
            let mut g = self.lock();
            if seq <= g.acked_through || !g.acked_above.insert(seq) {
                return Ok(());
            }
            while g.acked_above.first() == Some(&(g.acked_through + 1)) {
                g.acked_through += 1;
                let s = g.acked_through;
                g.acked_above.remove(&s);
            }
            // Each batch is acknowledged once, so freeing its own frame frees them all.
            if let Ok(i) = g.entries.binary_search_by_key(&seq, |e| e.seq) {
                if let Some(f) = g.entries[i].frame.take() {
                    g.mem_bytes -= f.len() as u64;
                }
            }
            g.state_dirty = true;
        }
        self.collect()
    }

    /// Moves batch `seq` to the dead-letter directory with `reason`, then treats it as
    /// delivered: a rejected batch is never resent.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn dead_letter(&self, seq: u64, reason: &str) -> Result<(), Error> {
        if let Some(frame) = self.frame(seq)? {
            let epoch = self.epoch();
            dead_letter::write(&self.dir, epoch, seq, &frame, reason)
                .map_err(io_err("write", &dead_letter::dir(&self.dir)))?;
            let mut g = self.lock();
            g.dead_letters += 1;
            metrics::gauge!("heimdall_agent_dead_letter_batches").set(g.dead_letters as f64);
        }
        self.ack(seq)
    }

    /// Counts the dead-letter directory again (after `dead-letter resend` moved some
    /// out while the agent runs).
    pub fn recount_dead_letters(&self) {
        let n = dead_letter::count(&self.dir);
        self.lock().dead_letters = n;
        metrics::gauge!("heimdall_agent_dead_letter_batches").set(n as f64);
    }

    /// Deletes wholly delivered sealed segments, folding their checkpoints into the
    /// state file first.
    fn collect(&self) -> Result<(), Error> {
        let mut g = self.lock();
        let mut freed_any = false;
        while let Some(s) = g.segments.front() {
            if s.last_seq > g.acked_through {
                break;
            }
            if !s.sealed {
                // The active segment is wholly delivered: seal it once it holds enough
                // to be worth a new file, so idle agents do not keep delivered data.
                if s.bytes < self.limits.segment_bytes / 4 {
                    break;
                }
                g.active = None;
                g.segments.front_mut().expect("checked above").sealed = true;
                continue;
            }
            let (id, bytes, last) = (s.id, s.bytes, s.last_seq);
            while g.entries.front().is_some_and(|e| e.seq <= last) {
                let e = g.entries.pop_front().expect("checked non-empty");
                for c in e.checkpoints {
                    g.snapshot.insert(c);
                }
                if let Some(f) = e.frame {
                    g.mem_bytes -= f.len() as u64;
                }
            }
            g.snapshot_seq = g.snapshot_seq.max(last);
            // Files not seen for this long are forgotten (the tailer refreshes the
            // checkpoints of idle files that still exist, so only gone ones age out).
            let cutoff = crate::sources::now_ns() - CHECKPOINT_TTL.as_nanos() as i64;
            g.snapshot.retain(|_, c| c.updated_ns >= cutoff);
            write_state(&self.dir, &g)?;
            g.state_dirty = false;
            let path = seg_path(&self.dir, id);
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            g.segments.pop_front();
            g.total_bytes -= bytes;
            freed_any = true;
        }
        metrics::gauge!("heimdall_agent_spool_bytes").set(g.total_bytes as f64);
        drop(g);
        if freed_any {
            self.space.notify_waiters();
        }
        Ok(())
    }

    /// Writes the state file if acknowledgements changed it since the last write.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn flush_state(&self) -> Result<(), Error> {
        let mut g = self.lock();
        if g.state_dirty {
            write_state(&self.dir, &g)?;
            g.state_dirty = false;
        }
        Ok(())
    }

    /// Figures for heartbeats and metrics.
    pub fn stats(&self) -> SpoolStats {
        let g = self.lock();
        let unacked: Vec<&EntryMeta> = g
            .entries
            .iter()
            .filter(|e| e.seq > g.acked_through && !g.acked_above.contains(&e.seq))
            .collect();
        SpoolStats {
            bytes: g.total_bytes,
            batches: unacked.len() as u64,
            oldest_age_ns: unacked
                .first()
                .map_or(0, |e| e.created.elapsed().as_nanos() as u64),
            acked_through: g.acked_through,
            dead_letters: g.dead_letters,
        }
    }

    /// Refuses further appends and wakes waiters.
    pub fn close(&self) {
        self.lock().closed = true;
        self.space.notify_waiters();
        self.data.notify_waiters();
    }
}

/// Records in an encoded batch frame (0 if it cannot be opened).
fn count_records(frame: Bytes) -> u64 {
    let limits = heimdall_common::wire::Limits::default();
    match heimdall_common::wire::parse(frame, &limits) {
        Ok(heimdall_common::wire::Frame::Batch(b)) => {
            b.open(&limits).map_or(0, |c| c.records.len() as u64)
        }
        _ => 0,
    }
}

fn find(entries: &VecDeque<EntryMeta>, seq: u64) -> Option<&EntryMeta> {
    let i = entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
    entries.get(i)
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:020}.spl"))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    heimdall_common::fs::sync_dir(dir).map_err(io_err("fsync", dir))
}

fn new_epoch() -> u64 {
    let t = crate::sources::now_ns() as u64;
    loop {
        let e = fastrand::u64(..) ^ t.rotate_left(17);
        if e != 0 {
            return e;
        }
    }
}

fn put_checkpoint(b: &mut BytesMut, c: &Checkpoint) {
    b.put_u64(c.key.dev);
    b.put_u64(c.key.ino);
    b.put_u64(c.key.fp);
    b.put_u64(c.key.gen);
    b.put_u64(c.offset);
    b.put_u64(c.tail);
    b.put_i64(c.updated_ns);
    for s in [c.source.as_bytes(), c.cursor.as_bytes()] {
        let n = s.len().min(u16::MAX as usize);
        b.put_u16(n as u16);
        b.put_slice(&s[..n]);
    }
}

fn get_checkpoint(
    b: &mut &[u8],
    with_cursor: bool,
    with_gen: bool,
) -> Result<Checkpoint, &'static str> {
    if b.remaining() < 50 + 8 * usize::from(with_gen) {
        return Err("truncated checkpoint");
    }
    let key = FileKey {
        dev: b.get_u64(),
        ino: b.get_u64(),
        fp: b.get_u64(),
        gen: if with_gen { b.get_u64() } else { 0 },
    };
    let offset = b.get_u64();
    let tail = b.get_u64();
    let updated_ns = b.get_i64();
    let n = b.get_u16() as usize;
    if b.remaining() < n {
        return Err("truncated checkpoint source");
    }
    let source = String::from_utf8_lossy(&b[..n]).into_owned();
    b.advance(n);
    let mut cursor = String::new();
    if with_cursor {
        if b.remaining() < 2 {
            return Err("truncated checkpoint cursor");
        }
        let n = b.get_u16() as usize;
        if b.remaining() < n {
            return Err("truncated checkpoint cursor");
        }
        cursor = String::from_utf8_lossy(&b[..n]).into_owned();
        b.advance(n);
    }
    Ok(Checkpoint {
        key,
        offset,
        tail,
        source,
        updated_ns,
        cursor,
    })
}

/// Parses one entry: (total length, seq, checkpoints, frame offset within entry, frame length).
type ParsedEntry = (usize, u64, Vec<Checkpoint>, usize, usize);

fn parse_entry(data: &[u8]) -> Result<ParsedEntry, &'static str> {
    if data.len() < ENTRY_HEADER {
        return Err("truncated entry header");
    }
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let crc = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    if data.len() < ENTRY_HEADER + len {
        return Err("truncated entry body");
    }
    let body = &data[ENTRY_HEADER..ENTRY_HEADER + len];
    if crc32c::crc32c(body) != crc {
        return Err("entry checksum mismatch");
    }
    let mut b = body;
    if b.remaining() < 20 {
        return Err("entry too short");
    }
    let seq = b.get_u64();
    let _created = b.get_i64();
    let n = b.get_u32();
    let with_cursor = n & CURSORS_FLAG != 0;
    let with_gen = n & GENS_FLAG != 0;
    let n = (n & !(CURSORS_FLAG | GENS_FLAG)) as usize;
    let mut cps = Vec::with_capacity(n.min(b.remaining() / 50));
    for _ in 0..n {
        cps.push(get_checkpoint(&mut b, with_cursor, with_gen)?);
    }
    if b.remaining() < 4 {
        return Err("truncated frame length");
    }
    let flen = b.get_u32() as usize;
    if b.remaining() != flen {
        return Err("frame length mismatch");
    }
    let frame_rel = ENTRY_HEADER + (len - flen);
    Ok((ENTRY_HEADER + len, seq, cps, frame_rel, flen))
}

fn write_state(dir: &Path, g: &Inner) -> Result<(), Error> {
    let mut b = BytesMut::new();
    b.put_u32(STATE_MAGIC);
    b.put_u32(STATE_VERSION);
    b.put_u64(g.epoch);
    b.put_u64(g.acked_through);
    b.put_u64(g.snapshot_seq);
    b.put_u32(g.snapshot.len() as u32);
    for c in g.snapshot.values() {
        put_checkpoint(&mut b, c);
    }
    let crc = crc32c::crc32c(&b);
    b.put_u32(crc);
    let path = dir.join("state");
    heimdall_common::fs::write_atomic(&path, &b).map_err(io_err("write", &path))
}

fn read_state(data: &[u8], g: &mut Inner) -> Result<(), StateFault> {
    if data.len() < 36 {
        return Err(StateFault::TooShort);
    }
    let (body, crc) = data.split_at(data.len() - 4);
    if crc32c::crc32c(body) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(StateFault::Checksum);
    }
    let mut b = body;
    if b.get_u32() != STATE_MAGIC {
        return Err(StateFault::NotState);
    }
    let v = b.get_u32();
    if !(1..=STATE_VERSION).contains(&v) {
        return Err(StateFault::Version(v));
    }
    g.epoch = b.get_u64();
    g.acked_through = b.get_u64();
    g.snapshot_seq = b.get_u64();
    let n = b.get_u32();
    for _ in 0..n {
        let c = get_checkpoint(&mut b, v >= 2, v >= 3).map_err(StateFault::Checkpoint)?;
        g.snapshot.insert(c);
    }
    if b.has_remaining() {
        return Err(StateFault::Trailing);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SpoolLimits {
        SpoolLimits {
            max_bytes: 1 << 20,
            segment_bytes: 4096,
            memory_bytes: 2048,
            policy: FullPolicy::Block,
        }
    }

    thread_local! {
        static UPDATED: i64 = crate::sources::now_ns();
    }

    fn cp(fp: u64, offset: u64) -> Checkpoint {
        Checkpoint {
            key: FileKey {
                dev: 1,
                ino: 2,
                fp,
                gen: 0,
            },
            offset,
            tail: offset * 7,
            source: "/var/log/a.log".into(),
            updated_ns: UPDATED.with(|u| *u),
            cursor: if fp % 2 == 0 {
                format!("s=abc;i={offset:x}")
            } else {
                String::new()
            },
        }
    }

    fn frame(seq: u64) -> Bytes {
        Bytes::from(format!("frame-{seq}-").repeat(20))
    }

    #[test]
    fn recovers_checkpoints_and_unacked_batches_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let r = Spool::open(dir.path(), limits()).unwrap();
        let epoch = r.spool.epoch();
        for i in 1..=50u64 {
            let seq = r
                .spool
                .append(vec![cp(9, i * 10)], |s, _| frame(s))
                .unwrap();
            assert_eq!(seq, i);
        }
        for s in 1..=30 {
            r.spool.ack(s).unwrap();
        }
        r.spool.flush_state().unwrap();
        drop(r);
        let r = Spool::open(dir.path(), limits()).unwrap();
        assert_eq!(r.spool.epoch(), epoch);
        assert_eq!(r.checkpoints, vec![cp(9, 500)]);
        assert_eq!(r.spool.next_unacked(0), Some(31));
        assert_eq!(r.spool.frame(40).unwrap().unwrap(), frame(40));
        assert_eq!(
            r.spool
                .append(vec![], |s, floor| {
                    assert_eq!(floor, 31);
                    frame(s)
                })
                .unwrap(),
            51
        );
    }

    #[test]
    fn delivered_segments_are_deleted_and_checkpoints_survive_them() {
        let dir = tempfile::tempdir().unwrap();
        let r = Spool::open(dir.path(), limits()).unwrap();
        for i in 1..=100u64 {
            r.spool.append(vec![cp(i % 3, i)], |s, _| frame(s)).unwrap();
        }
        let before = r.spool.stats().bytes;
        for s in (1..=100).rev() {
            r.spool.ack(s).unwrap();
        }
        let after = r.spool.stats();
        assert!(after.bytes < before / 4, "{} -> {}", before, after.bytes);
        assert_eq!(after.batches, 0);
        drop(r);
        let r = Spool::open(dir.path(), limits()).unwrap();
        let mut got = r.checkpoints.clone();
        got.sort_by_key(|c| c.key.fp);
        assert_eq!(got, vec![cp(0, 99), cp(1, 100), cp(2, 98)]);
        assert_eq!(r.spool.next_unacked(0), None);
    }

    #[test]
    fn torn_tail_is_cut_and_earlier_entries_kept() {
        let dir = tempfile::tempdir().unwrap();
        let r = Spool::open(dir.path(), limits()).unwrap();
        r.spool.append(vec![cp(1, 10)], |s, _| frame(s)).unwrap();
        r.spool.append(vec![cp(1, 20)], |s, _| frame(s)).unwrap();
        drop(r);
        let seg = seg_path(dir.path(), 1);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let r = Spool::open(dir.path(), limits()).unwrap();
        assert_eq!(r.checkpoints, vec![cp(1, 10)]);
        assert_eq!(r.spool.next_unacked(0), Some(1));
        assert_eq!(r.spool.next_unacked(1), None);
        // The next batch reuses seq 2: the torn one was never acknowledged nor sent complete.
        assert_eq!(r.spool.append(vec![], |s, _| frame(s)).unwrap(), 2);
    }

    /// Regression: a crash between creating a segment and writing to it left an empty
    /// file whose name the next segment reused, and collecting it unlinked the live one.
    #[test]
    fn empty_segment_left_by_a_crash_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let r = Spool::open(dir.path(), limits()).unwrap();
        r.spool.append(vec![cp(1, 10)], |s, _| frame(s)).unwrap();
        drop(r);
        File::create(seg_path(dir.path(), 2)).unwrap();
        let r = Spool::open(dir.path(), limits()).unwrap();
        assert!(!seg_path(dir.path(), 2).exists());
        for _ in 0..40 {
            r.spool.append(vec![cp(1, 20)], |s, _| frame(s)).unwrap();
        }
        for s in 1..=41 {
            r.spool.ack(s).unwrap();
        }
        assert_eq!(r.spool.next_unacked(0), None);
        assert_eq!(r.spool.append(vec![], |s, _| frame(s)).unwrap(), 42);
        assert_eq!(r.spool.frame(42).unwrap().unwrap(), frame(42));
    }

    #[test]
    fn drop_oldest_frees_room_keeps_checkpoints_and_moves_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let lim = SpoolLimits {
            max_bytes: 64 << 10,
            segment_bytes: 8 << 10,
            memory_bytes: 1 << 20,
            policy: FullPolicy::DropOldest,
        };
        let r = Spool::open(dir.path(), lim).unwrap();
        let mut seq = 0;
        while r.spool.has_room(600) {
            seq = r
                .spool
                .append(vec![cp(1, seq + 1)], |s, _| frame(s))
                .unwrap();
        }
        let before = r.spool.stats();
        let d = r.spool.drop_oldest(600).unwrap();
        assert!(d.batches > 0 && d.bytes > 0, "{d:?}");
        assert!(r.spool.has_room(600));
        let after = r.spool.stats();
        assert_eq!(after.batches, before.batches - d.batches);
        assert_eq!(after.acked_through, d.batches);
        // The next batch tells the aggregator the dropped ones will never come.
        let mut floor_seen = 0;
        r.spool
            .append(vec![cp(1, 999)], |s, f| {
                floor_seen = f;
                frame(s)
            })
            .unwrap();
        assert_eq!(floor_seen, d.batches + 1);
        assert_eq!(r.spool.next_unacked(0), Some(d.batches + 1));
        drop(r);
        // Dropped batches are gone for good; checkpoints are the newest.
        let r = Spool::open(dir.path(), lim).unwrap();
        assert_eq!(r.spool.next_unacked(0), Some(d.batches + 1));
        assert_eq!(r.checkpoints, vec![cp(1, 999)]);
    }

    #[test]
    fn dead_letter_keeps_the_batch_and_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let r = Spool::open(dir.path(), limits()).unwrap();
        r.spool.append(vec![], |s, _| frame(s)).unwrap();
        r.spool.dead_letter(1, "malformed").unwrap();
        assert_eq!(r.spool.next_unacked(0), None);
        let n = fs::read_dir(dir.path().join("dead-letter"))
            .unwrap()
            .count();
        assert_eq!(n, 2);
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        drop(Spool::open(dir.path(), limits()).unwrap());
        fs::write(
            dir.path().join("state"),
            b"garbage garbage garbage garbage garbage",
        )
        .unwrap();
        assert!(matches!(
            Spool::open(dir.path(), limits()),
            Err(Error::CorruptState { .. })
        ));
    }
}
