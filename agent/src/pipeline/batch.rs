//! Batching: records from chunks are grouped into a wire batch until it reaches a size
//! or record count, or its first record is older than the timeout. A batch carries the
//! checkpoints of every file it covers; the spool stores both in one write.
//!
//! Owns the batch's stream table (labels travel once per batch). Does not own sequence
//! numbers (the spool assigns them) or delivery.

use crate::hash::IntBuild;
use crate::pipeline::aggregate::{self, Aggregates};
use crate::pipeline::anomaly::Detector;
use crate::sources::{Checkpoint, Chunk, Positions};
use crate::spool::{FullPolicy, Spool};
use bytes::{Bytes, BytesMut};
use heimdall_common::limits;
use heimdall_common::record::{Anomaly, Labels, LogRecord, Template, TemplateAlias};
use heimdall_common::wire::{Batch, BatchContent, Codec, Frame};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A batch ready for the spool.
#[derive(Debug)]
pub struct Pending {
    pub content: BatchContent,
    pub checkpoints: Vec<Checkpoint>,
}

/// Most aggregate keys one batch gathers before it is closed.
const MAX_AGGREGATE_KEYS: usize = 65_536;

/// Groups chunks into batches, with the exact counts of what they read, and feeds the
/// anomaly detector.
pub struct Batcher {
    max_bytes: usize,
    max_records: usize,
    streams: HashMap<Arc<Labels>, u32>,
    /// The stream table in index order, with its source's anomaly sensitivity.
    stream_list: Vec<(Arc<Labels>, Option<f64>)>,
    content: BatchContent,
    bytes: usize,
    checkpoints: Positions,
    opened: Option<Instant>,
    aggs: Aggregates,
    batch_templates: HashSet<u64, IntBuild>,
    detector: Option<Detector>,
    /// Start of the detector's open window (arrival time).
    window_start: Option<i64>,
    not_shipped: u64,
    /// Where the detector's baselines are kept across restarts, and when they were
    /// last written.
    detector_state: Option<(std::path::PathBuf, Instant)>,
}

/// How often the detector's baselines are written while the agent runs.
const DETECTOR_SAVE_EVERY: Duration = Duration::from_secs(60);

impl Batcher {
    /// A batcher with 10 s aggregate windows and no anomaly detection.
    pub fn new(max_bytes: usize, max_records: usize) -> Batcher {
        Batcher {
            max_bytes,
            max_records,
            streams: HashMap::new(),
            stream_list: Vec::new(),
            content: BatchContent::default(),
            bytes: 0,
            checkpoints: Positions::default(),
            opened: None,
            aggs: Aggregates::new(Duration::from_secs(10)),
            batch_templates: HashSet::default(),
            detector: None,
            window_start: None,
            not_shipped: 0,
            detector_state: None,
        }
    }

    /// Aggregates over windows of `window` (whole seconds) and detects anomalies with
    /// `detector`, if any.
    pub fn with_intel(mut self, window: Duration, detector: Option<Detector>) -> Batcher {
        self.aggs = Aggregates::new(window);
        self.detector = detector;
        self
    }

    /// Keeps the detector's baselines in `path`: takes back what is there now, and
    /// writes them every minute and when batching ends.
    pub fn with_detector_state(mut self, path: std::path::PathBuf) -> Batcher {
        if let Some(d) = self.detector.as_mut() {
            match std::fs::read_to_string(&path) {
                Ok(text) => match d.restore(&text) {
                    Ok(n) => tracing::info!(
                        streams = n,
                        "anomaly baselines loaded; no new warm-up for them"
                    ),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "anomaly baselines not loaded; streams warm up again")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read anomaly baselines; streams warm up again")
                }
            }
            self.detector_state = Some((path, Instant::now()));
        }
        self
    }

    /// The detector's state to write, when it is due (`force`: now).
    fn detector_state_due(&mut self, force: bool) -> Option<(std::path::PathBuf, String)> {
        let d = self.detector.as_ref()?;
        let (path, saved) = self.detector_state.as_mut()?;
        if !force && saved.elapsed() < DETECTOR_SAVE_EVERY {
            return None;
        }
        *saved = Instant::now();
        Some((path.clone(), d.state()))
    }

    /// When the open batch must be closed, if one is open.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.opened.map(|t| t + timeout)
    }

    /// Adds a chunk; returns whether the batch is now full. A chunk is never split, so
    /// a batch may exceed `max_bytes` by at most one chunk.
    ///
    /// `bytes` is an upper bound of the encoded payload (every section counted), so a
    /// batch stays under `max_bytes` plus one chunk ([`limits::MAX_CHUNK_BYTES`]) plus
    /// its aggregates, well within what the aggregator decodes.
    pub fn push(&mut self, chunk: Chunk) -> bool {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
        }
        let announce = chunk.lines.is_empty();
        let sens = chunk.policy.anomaly;
        let next = self.streams.len() as u32;
        let mut new_stream = 0;
        let stream = *self.streams.entry(chunk.stream.clone()).or_insert_with(|| {
            self.content.streams.push((*chunk.stream).clone());
            self.stream_list.push((chunk.stream.clone(), sens));
            new_stream = labels_bytes(&chunk.stream);
            next
        });
        self.bytes += new_stream;
        for t in &chunk.templates {
            for &from in &t.replaces {
                self.bytes += 16;
                self.content.aliases.push(TemplateAlias { from, to: t.id });
            }
            if self.batch_templates.insert(t.id) {
                let text = limits::cut_str(&t.text, limits::MAX_TEMPLATE_BYTES);
                self.bytes += text.len() + 16;
                self.content.templates.push(Template {
                    id: t.id,
                    text: text.to_owned(),
                });
            }
            if let (Some(d), Some(s)) = (self.detector.as_mut(), sens) {
                d.note_template(&chunk.stream, s, t.id, &t.text, t.created);
            }
        }
        let ship = chunk.policy.ship;
        for line in chunk.lines {
            let time_ns = if line.time_ns != 0 {
                line.time_ns
            } else {
                chunk.observed_ns
            };
            let shipped = aggregate::ships(ship, &line);
            self.aggs.count(stream, time_ns, &line, shipped);
            if !shipped {
                self.not_shipped += 1;
                continue;
            }
            self.bytes += line.bytes.len() + limits::RECORD_OVERHEAD_BYTES;
            self.content.records.push(LogRecord {
                stream,
                time_ns,
                observed_ns: chunk.observed_ns,
                level: line.level,
                template_id: line.template_id,
                flags: line.flags,
                redacted: line.redacted,
                line: line.bytes,
                metadata: Default::default(),
            });
        }
        self.checkpoints.insert(chunk.checkpoint);
        for c in chunk.moved {
            self.checkpoints.insert(c);
        }
        // A chunk without lines only moves a position (a start at the end of a file, a
        // refresh): spool it at once so the position is durable before lines follow.
        announce
            || self.bytes >= self.max_bytes
            || self.content.records.len() >= self.max_records
            || self.aggs.len() >= MAX_AGGREGATE_KEYS
    }

    /// Takes the open batch, if any; its counts go to the anomaly detector.
    pub fn take(&mut self) -> Option<Pending> {
        self.opened.take()?;
        for (a, sample) in self.aggs.take() {
            if let Some(d) = self.detector.as_mut() {
                let (labels, sens) = &self.stream_list[a.stream as usize];
                if let Some(s) = sens {
                    d.observe(labels, *s, a.level, a.template_id, a.count, Some(&sample));
                }
            }
            self.content.aggregates.push(a);
        }
        if self.not_shipped > 0 {
            metrics::counter!("heimdall_agent_records_not_shipped_total")
                .increment(self.not_shipped);
            self.not_shipped = 0;
        }
        self.streams.clear();
        self.stream_list.clear();
        self.batch_templates.clear();
        self.bytes = 0;
        let checkpoints = std::mem::take(&mut self.checkpoints).to_vec();
        Some(Pending {
            content: std::mem::take(&mut self.content),
            checkpoints,
        })
    }

    /// Closes the detector's window if `now_ns` is past its end; returns the anomalies
    /// found (also added to the open batch, which is opened for them if need be). Take
    /// the open batch first, so that its counts are in the window.
    pub fn close_window(&mut self, now_ns: i64) -> Vec<Anomaly> {
        let Some(d) = self.detector.as_mut() else {
            return Vec::new();
        };
        let win = d.config().window.as_nanos().max(1) as i64;
        let start = *self
            .window_start
            .get_or_insert(now_ns.div_euclid(win) * win);
        if now_ns < start + win {
            return Vec::new();
        }
        let ev = d.close_window(start);
        self.window_start = Some(now_ns.div_euclid(win) * win);
        let st = d.stats();
        metrics::gauge!("heimdall_agent_anomaly_streams").set(st.streams as f64);
        metrics::gauge!("heimdall_agent_anomaly_template_series").set(st.template_series as f64);
        metrics::gauge!("heimdall_agent_anomaly_untracked").set(st.untracked as f64);
        for e in &ev {
            metrics::counter!("heimdall_agent_anomalies_total", "kind" => e.kind.as_str())
                .increment(1);
            tracing::warn!(
                kind = e.kind.as_str(),
                stream = %e.stream,
                score = e.score,
                baseline = e.baseline,
                observed = e.observed,
                template = e.templates.first().map_or("", |t| t.text.as_str()),
                "anomaly"
            );
        }
        if !ev.is_empty() {
            self.bytes += ev.iter().map(anomaly_bytes).sum::<usize>();
            self.content.anomalies.extend(ev.iter().cloned());
            self.opened.get_or_insert_with(Instant::now);
        }
        let ends = d.take_ends();
        if !ends.is_empty() {
            metrics::counter!("heimdall_agent_anomaly_ends_total").increment(ends.len() as u64);
            self.bytes += ends.len() * 24;
            self.content.anomaly_ends.extend(ends);
            self.opened.get_or_insert_with(Instant::now);
        }
        ev
    }

    /// The detector's window length, when detection is on.
    pub fn detector_window(&self) -> Option<Duration> {
        self.detector.as_ref().map(|d| d.config().window)
    }
}

/// Upper bound of the encoded size of a stream's labels.
fn labels_bytes(l: &Labels) -> usize {
    l.iter().map(|(k, v)| k.len() + v.len() + 20).sum::<usize>() + 10
}

/// Upper bound of the encoded size of an anomaly event.
fn anomaly_bytes(a: &Anomaly) -> usize {
    labels_bytes(&a.stream)
        + 80
        + a.templates.iter().map(|t| t.text.len() + 20).sum::<usize>()
        + a.samples.iter().map(|s| s.len() + 10).sum::<usize>()
}

/// Encodes and compresses a batch's payload once; the frame header with the sequence
/// number is added when the spool assigns it.
pub fn seal(content: &BatchContent) -> Batch {
    let mut raw = BytesMut::new();
    content.encode_payload(&mut raw);
    Batch::seal_payload(0, 0, 0, Codec::Lz4, &raw)
}

/// The frame for `sealed` with its identity filled in.
pub fn frame_for(sealed: &Batch, epoch: u64, seq: u64, floor: u64) -> Bytes {
    let mut b = sealed.clone();
    b.epoch = epoch;
    b.seq = seq;
    b.floor = floor;
    Frame::Batch(b).to_bytes()
}

/// Receives chunks, batches them and appends the batches to the spool until the channel
/// closes; then flushes what is left. Waits while the spool is at its cap (reading
/// upstream pauses through the bounded channel) and retries failed writes (a full
/// disk), so nothing handed to it is lost while the process lives.
///
/// # Performance
/// Three steps run at once, joined by channels of one batch: filling the next batch,
/// compressing the previous one, and writing (fsync) the one before. Order is kept, so
/// checkpoints only move forward in the spool.
pub async fn run(
    mut rx: mpsc::Receiver<Chunk>,
    spool: Arc<Spool>,
    mut b: Batcher,
    timeout: Duration,
    events: Option<mpsc::Sender<Vec<Anomaly>>>,
) {
    let (seal_tx, mut seal_rx) = mpsc::channel::<Pending>(1);
    let (write_tx, mut write_rx) = mpsc::channel::<Sealed>(1);
    let sealer = tokio::spawn(async move {
        while let Some(p) = seal_rx.recv().await {
            let sealed = tokio::task::spawn_blocking(move || Sealed {
                records: p.content.records.len(),
                batch: Arc::new(seal(&p.content)),
                checkpoints: p.checkpoints,
            })
            .await;
            match sealed {
                Ok(s) => {
                    if write_tx.send(s).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(error = %e, "batch sealing task failed"),
            }
        }
    });
    let writer = {
        let spool = spool.clone();
        tokio::spawn(async move {
            while let Some(s) = write_rx.recv().await {
                spool_batch(&spool, s).await;
            }
        })
    };
    let window = b.detector_window();
    let mut next_window = window.map(|w| {
        let w = w.as_nanos().max(1) as i64;
        let now = crate::sources::now_ns();
        b.close_window(now);
        Instant::now() + Duration::from_nanos((w - now.rem_euclid(w)) as u64)
    });
    loop {
        let deadline = b.deadline(timeout);
        let flush = tokio::select! {
            c = rx.recv() => match c {
                Some(c) => b.push(c),
                None => break,
            },
            _ = sleep_until(deadline) => true,
            _ = sleep_until(next_window) => {
                // The open batch's counts belong to the closing window.
                if let Some(p) = b.take() {
                    if seal_tx.send(p).await.is_err() {
                        return;
                    }
                }
                let ev = b.close_window(crate::sources::now_ns());
                if !ev.is_empty() {
                    if let Some(tx) = &events {
                        // The fast path is best effort: the batch carries them anyway.
                        let _ = tx.try_send(ev);
                    }
                }
                if let Some(st) = b.detector_state_due(false) {
                    tokio::task::spawn_blocking(move || save_detector_state(&st.0, &st.1));
                }
                next_window = next_window.zip(window).map(|(t, w)| t + w);
                false
            }
        };
        if flush {
            if let Some(p) = b.take() {
                if seal_tx.send(p).await.is_err() {
                    return;
                }
            }
        }
    }
    if let Some(p) = b.take() {
        let _ = seal_tx.send(p).await;
    }
    if let Some(st) = b.detector_state_due(true) {
        let _ = tokio::task::spawn_blocking(move || save_detector_state(&st.0, &st.1)).await;
    }
    drop(seal_tx);
    let _ = sealer.await;
    let _ = writer.await;
}

/// Writes the detector's baselines (a temp file renamed over the old one).
fn save_detector_state(path: &std::path::Path, state: &str) {
    let res = (|| -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        heimdall_common::fs::write_atomic(path, state.as_bytes())
    })();
    if let Err(e) = res {
        tracing::warn!(path = %path.display(), error = %e, "cannot save anomaly baselines");
    }
}

/// A compressed batch on its way to the spool.
struct Sealed {
    records: usize,
    batch: Arc<Batch>,
    checkpoints: Vec<Checkpoint>,
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn spool_batch(spool: &Arc<Spool>, s: Sealed) {
    let records = s.records;
    let sealed = s.batch;
    let size = sealed.payload.len() as u64 + 256;
    let mut checkpoints = Some(s.checkpoints);
    let mut waited = false;
    loop {
        if !spool.has_room(size) {
            if spool.policy() == FullPolicy::DropOldest {
                let s = spool.clone();
                match tokio::task::spawn_blocking(move || s.drop_oldest(size)).await {
                    Ok(Ok(d)) if d.batches > 0 => {
                        tracing::warn!(
                            batches = d.batches,
                            records = d.records,
                            bytes = d.bytes,
                            "spool is full; dropped the oldest unsent batches (spool.policy = drop_oldest)"
                        );
                        continue;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot drop spooled batches"),
                    Err(e) => tracing::error!(error = %e, "spool task failed"),
                }
            }
            if !waited {
                tracing::warn!(
                    "spool is full; pausing reading until the aggregator acknowledges data"
                );
                metrics::counter!("heimdall_agent_spool_full_total").increment(1);
                waited = true;
            }
            tokio::select! {
                _ = spool.space.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        let s = spool.clone();
        let sealed2 = sealed.clone();
        let cps = checkpoints
            .take()
            .expect("checkpoints are put back on failure");
        let res = tokio::task::spawn_blocking(move || {
            let epoch = s.epoch();
            let cps_back = cps.clone();
            s.append(cps, |seq, floor| frame_for(&sealed2, epoch, seq, floor))
                .map_err(|e| (e, cps_back))
        })
        .await;
        match res {
            Ok(Ok(seq)) => {
                metrics::counter!("heimdall_agent_batches_spooled_total").increment(1);
                metrics::counter!("heimdall_agent_records_spooled_total").increment(records as u64);
                tracing::trace!(seq, records, "batch spooled");
                return;
            }
            Ok(Err((crate::spool::Error::Closed, _))) => return,
            Ok(Err((e, cps))) => {
                tracing::error!(error = %e, "cannot write to the spool; retrying in 1s");
                checkpoints = Some(cps);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "spool writer task failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{FileKey, Line};

    fn chunk(stream: &Arc<Labels>, fp: u64, off: u64, n: usize) -> Chunk {
        Chunk {
            stream: stream.clone(),
            observed_ns: 1,
            lines: (0..n)
                .map(|i| Line::new(Bytes::from(format!("line {i}")), 0))
                .collect(),
            checkpoint: Checkpoint {
                key: FileKey {
                    dev: 1,
                    ino: 1,
                    fp,
                    gen: 0,
                },
                offset: off,
                tail: 0,
                source: "/x".into(),
                updated_ns: 0,
                cursor: String::new(),
            },
            moved: Vec::new(),
            templates: Vec::new(),
            policy: Arc::new(crate::sources::Policy::default()),
        }
    }

    #[test]
    fn batches_share_stream_tables_and_keep_last_checkpoint() {
        let s1 = Arc::new(Labels::new([("source", "/a")]));
        let s2 = Arc::new(Labels::new([("source", "/b")]));
        let mut b = Batcher::new(1 << 20, 7);
        assert!(!b.push(chunk(&s1, 1, 10, 3)));
        assert!(!b.push(chunk(&s2, 2, 5, 2)));
        assert!(b.push(chunk(&s1, 1, 20, 2)));
        let p = b.take().unwrap();
        assert_eq!(p.content.streams.len(), 2);
        assert_eq!(p.content.records.len(), 7);
        assert_eq!(p.content.records[5].stream, 0);
        assert_eq!(p.checkpoints.len(), 2);
        assert_eq!(p.checkpoints[0].offset, 20);
        assert!(b.take().is_none());
    }

    #[test]
    fn aggregates_count_every_record_whatever_is_shipped() {
        use crate::sources::{Policy, Ship};
        use heimdall_common::record::Level;
        let s1 = Arc::new(Labels::new([("source", "/a")]));
        let s2 = Arc::new(Labels::new([("source", "/b")]));
        let s3 = Arc::new(Labels::new([("source", "/c")]));
        let mut b = Batcher::new(1 << 20, 100_000);
        let mut only = chunk(&s2, 2, 5, 1000);
        only.policy = Arc::new(Policy {
            ship: Ship::AggregatesOnly,
            anomaly: None,
        });
        let mut sample = chunk(&s3, 3, 5, 1000);
        sample.policy = Arc::new(Policy {
            ship: Ship::Sample(0.1),
            anomaly: None,
        });
        for (i, l) in sample.lines.iter_mut().enumerate() {
            l.level = if i < 10 { Level::Error } else { Level::Info };
        }
        b.push(chunk(&s1, 1, 10, 500));
        b.push(only);
        b.push(sample);
        let p = b.take().unwrap();
        let by = |s: u32| -> (u64, u64) {
            p.content
                .aggregates
                .iter()
                .filter(|a| a.stream == s)
                .fold((0, 0), |(c, sh), a| (c + a.count, sh + a.shipped))
        };
        assert_eq!(by(0), (500, 500));
        assert_eq!(by(1), (1000, 0));
        let (c, shipped) = by(2);
        assert_eq!(c, 1000);
        assert!((60..=150).contains(&shipped), "{shipped} sampled of 1000");
        let stored = |s: u32| p.content.records.iter().filter(|r| r.stream == s).count() as u64;
        assert_eq!((stored(0), stored(1), stored(2)), (500, 0, shipped));
        assert_eq!(
            p.content
                .records
                .iter()
                .filter(|r| r.stream == 2 && r.level == Level::Error)
                .count(),
            10
        );
    }
}
