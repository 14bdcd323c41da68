//! Sources: where lines come from.
//!
//! A source emits [`Chunk`]s: lines from one file read in one go, together with the
//! [`Checkpoint`] that says where reading stands after the chunk's last line. The
//! checkpoint travels with the lines into the spool, so the spool, not a separate
//! state file, is the source of truth for where to resume after a crash.

pub mod file;
pub mod fingerprint;
pub mod journald;

use bytes::Bytes;
use heimdall_common::record::{Labels, Level};
use std::sync::Arc;

/// Identity of a logical file: device and inode, the fingerprint of its first line,
/// and a generation.
///
/// The fingerprint tells inode reuse and truncation apart from the same file. `gen` is
/// a random number drawn when a file is first read and kept for as long as the same
/// content is read: through renames, restarts, and into the copy that takes over after
/// copytruncate. It makes every logical file's key unique, even for files that share
/// their first line; the newest position of a generation is the only one that counts
/// ([`Positions`]). A key with `dev == 0 && ino == 0` is *detached*: its inode was
/// truncated, and a copy holding the same bytes may take its position over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub fp: u64,
    /// 0 for journal checkpoints and positions written before generations existed.
    pub gen: u64,
}

/// `dev` of the keys of journal checkpoints: no file system has it.
pub const JOURNAL_DEV: u64 = u64::MAX;

impl FileKey {
    /// The key of a journal source's checkpoint.
    pub fn journal(source: &str) -> FileKey {
        FileKey {
            dev: JOURNAL_DEV,
            ino: fingerprint::fnv1a(source.as_bytes()),
            fp: 0,
            gen: 0,
        }
    }

    /// Whether this is a journal source's key.
    pub fn is_journal(&self) -> bool {
        self.dev == JOURNAL_DEV
    }

    /// Whether this key no longer belongs to an inode.
    pub fn is_detached(&self) -> bool {
        self.dev == 0 && self.ino == 0
    }

    /// This key moved off its inode (which was truncated).
    pub fn detached(self) -> FileKey {
        FileKey {
            dev: 0,
            ino: 0,
            ..self
        }
    }
}

/// A fresh generation for a file read from its start: random, never 0.
pub fn new_gen() -> u64 {
    loop {
        let g = fastrand::u64(..) ^ (now_ns() as u64).rotate_left(29);
        if g != 0 {
            return g;
        }
    }
}

/// Positions by key, keeping only the newest of each generation: when a logical file
/// moves (detached from a truncated inode, taken over by its copy), its older key is
/// dropped. Used wherever positions are folded: the spool, the batcher, the sources.
#[derive(Clone, Debug, Default)]
pub struct Positions {
    by_key: std::collections::HashMap<FileKey, Checkpoint>,
    by_gen: std::collections::HashMap<u64, FileKey>,
}

impl Positions {
    /// Records `c`, unless a newer position of its generation is known; an older one
    /// under another key is dropped. Returns whether `c` was taken.
    pub fn insert(&mut self, c: Checkpoint) -> bool {
        if c.key.gen != 0 {
            if let Some(&old) = self.by_gen.get(&c.key.gen) {
                if old != c.key {
                    if self
                        .by_key
                        .get(&old)
                        .is_some_and(|o| o.updated_ns > c.updated_ns)
                    {
                        return false;
                    }
                    self.by_key.remove(&old);
                }
            }
            self.by_gen.insert(c.key.gen, c.key);
        }
        self.by_key.insert(c.key, c);
        true
    }

    /// The position under `key`.
    pub fn get(&self, key: &FileKey) -> Option<&Checkpoint> {
        self.by_key.get(key)
    }

    /// Whether a position is kept under `key`.
    pub fn contains_key(&self, key: &FileKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// Removes the position under `key`.
    pub fn remove(&mut self, key: &FileKey) -> Option<Checkpoint> {
        let c = self.by_key.remove(key)?;
        if c.key.gen != 0 && self.by_gen.get(&c.key.gen) == Some(key) {
            self.by_gen.remove(&c.key.gen);
        }
        Some(c)
    }

    /// Keeps the positions `f` accepts.
    pub fn retain(&mut self, mut f: impl FnMut(&FileKey, &Checkpoint) -> bool) {
        self.by_key.retain(|k, c| f(k, c));
        let by_key = &self.by_key;
        self.by_gen.retain(|_, k| by_key.contains_key(k));
    }

    /// Every position, in no order.
    pub fn values(&self) -> impl Iterator<Item = &Checkpoint> {
        self.by_key.values()
    }

    /// How many positions are kept.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Every position, sorted by key.
    pub fn to_vec(&self) -> Vec<Checkpoint> {
        let mut v: Vec<_> = self.by_key.values().cloned().collect();
        v.sort_by_key(|c| c.key);
        v
    }
}

impl FromIterator<Checkpoint> for Positions {
    fn from_iter<I: IntoIterator<Item = Checkpoint>>(iter: I) -> Positions {
        let mut p = Positions::default();
        for c in iter {
            p.insert(c);
        }
        p
    }
}

/// Where reading of one logical file stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub key: FileKey,
    /// Offset just after the last line handed downstream.
    pub offset: u64,
    /// Hash of the (up to) 64 bytes before `offset`, to verify a copy before adopting it.
    pub tail: u64,
    /// The `source` label of the file's stream (its path when first found).
    pub source: String,
    /// When this checkpoint last moved, nanoseconds since the Unix epoch.
    pub updated_ns: i64,
    /// The journal cursor of the last entry handed downstream (journal sources only;
    /// empty for files).
    pub cursor: String,
}

/// One record as read: a line, or the joined lines of a multiline record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub bytes: Bytes,
    /// Bits from `heimdall_common::record::flags`.
    pub flags: u8,
    /// Event time found in the record (ns since the Unix epoch); 0 when none was.
    pub time_ns: i64,
    /// Level found in the record.
    pub level: Level,
    /// Values redacted from `bytes`.
    pub redacted: u32,
    /// The record's template (0 when mining is off).
    pub template_id: u64,
}

impl Line {
    /// A line with no time or level found yet.
    pub fn new(bytes: Bytes, flags: u8) -> Line {
        Line {
            bytes,
            flags,
            time_ns: 0,
            level: Level::Unknown,
            redacted: 0,
            template_id: 0,
        }
    }
}

/// Lines read from one file in one go, and where reading stands after them.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub stream: Arc<Labels>,
    pub observed_ns: i64,
    pub lines: Vec<Line>,
    pub checkpoint: Checkpoint,
    /// Other positions that moved without lines of their own (a file detached from its
    /// truncated inode), made durable with this chunk.
    pub moved: Vec<Checkpoint>,
    /// Templates the lines use that this source has not announced since it started.
    pub templates: Vec<NewTemplate>,
    /// What to ship of the lines, and how to watch them.
    pub policy: Arc<Policy>,
}

/// A template announced by a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTemplate {
    pub id: u64,
    pub text: Arc<str>,
    /// The miner made it from one of the chunk's lines (a never-seen message), rather
    /// than knowing it from before this run.
    pub created: bool,
    /// Ids that now mean this template, when one of the chunk's lines generalised it:
    /// its former id and those of the templates it absorbed.
    pub replaces: Vec<u64>,
}

/// What a source ships of the records it reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ship {
    /// Every record.
    All,
    /// No records: only their pre-aggregated counts.
    AggregatesOnly,
    /// Records at warning level or worse, and this share of the others (chosen by a
    /// hash of the line, so a line read again after a restart is chosen the same way).
    Sample(f64),
}

/// A source's shipping and anomaly-detection settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub ship: Ship,
    /// Anomaly detection sensitivity; `None` when detection is off for the source.
    pub anomaly: Option<f64>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            ship: Ship::All,
            anomaly: Some(1.0),
        }
    }
}

pub use heimdall_common::record::now_ns;

/// Figures the sources keep up to date for heartbeats and metrics; each file source
/// adds and removes its own share.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Files open.
    pub files: std::sync::atomic::AtomicU64,
    /// Bytes in tailed files not read yet (read lag).
    pub unread_bytes: std::sync::atomic::AtomicU64,
    /// The shipper is connected to an aggregator.
    pub connected: std::sync::atomic::AtomicBool,
}

/// Redacts a record in place with the source's redactor; false when a rule says to
/// drop it.
pub fn redact_line(
    redactor: Option<&crate::pipeline::redact::Redactor>,
    line: &mut Line,
    stats: &mut crate::pipeline::redact::Stats,
) -> bool {
    use crate::pipeline::redact::Outcome;
    let Some(r) = redactor else {
        return true;
    };
    let keep = match r.redact(&line.bytes, stats) {
        Outcome::Clean => true,
        Outcome::Redacted(b, n) => {
            line.bytes = b;
            line.redacted = n;
            true
        }
        Outcome::Drop => false,
    };
    if keep && line.flags & heimdall_common::record::flags::TRUNCATED != 0 {
        line.bytes = crate::pipeline::redact::cut_tail(&line.bytes).into();
        line.redacted += 1;
    }
    keep
}

/// A label value taken from what a source reads (a path, a journal field), redacted
/// like a line (labels leave the host with the records) and cut at the protocol's
/// limit for label values.
pub fn redact_label(redactor: Option<&crate::pipeline::redact::Redactor>, v: &str) -> String {
    use heimdall_common::limits::{cut_string, MAX_LABEL_VALUE_BYTES};
    let mut stats = crate::pipeline::redact::Stats::default();
    let mut s = match redactor.map(|r| r.redact(v.as_bytes(), &mut stats)) {
        Some(crate::pipeline::redact::Outcome::Redacted(b, _)) => {
            String::from_utf8_lossy(&b).into_owned()
        }
        _ => v.to_owned(),
    };
    cut_string(&mut s, MAX_LABEL_VALUE_BYTES);
    s
}

/// Sends a chunk from a source thread with backpressure: while the pipeline is full the
/// source waits (its positions stay where they are). Gives up only when the pipeline is
/// gone or `give_up` (shutdown) is cancelled: a chunk not sent was never spooled, and
/// its lines are read again after the restart.
pub fn send(
    tx: &tokio::sync::mpsc::Sender<Chunk>,
    mut chunk: Chunk,
    give_up: &tokio_util::sync::CancellationToken,
) -> bool {
    use tokio::sync::mpsc::error::TrySendError;
    loop {
        match tx.try_send(chunk) {
            Ok(()) => return true,
            Err(TrySendError::Closed(_)) => return false,
            Err(TrySendError::Full(c)) => {
                if give_up.is_cancelled() {
                    return false;
                }
                chunk = c;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}
