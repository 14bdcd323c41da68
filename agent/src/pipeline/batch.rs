//! Batching: records from chunks are grouped into a wire batch until it reaches a size
//! or record count, or its first record is older than the timeout. A batch carries the
//! checkpoints of every file it covers; the spool stores both in one write.
//!
//! Owns the batch's stream table (labels travel once per batch). Does not own sequence
//! numbers (the spool assigns them) or delivery.

use crate::sources::{Checkpoint, Chunk, FileKey};
use crate::spool::{FullPolicy, Spool};
use bytes::{Bytes, BytesMut};
use heimdall_common::record::{Labels, LogRecord};
use heimdall_common::wire::{Batch, BatchContent, Codec, Frame};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A batch ready for the spool.
#[derive(Debug)]
pub struct Pending {
    pub content: BatchContent,
    pub checkpoints: Vec<Checkpoint>,
}

/// Groups chunks into batches.
pub struct Batcher {
    max_bytes: usize,
    max_records: usize,
    streams: HashMap<Arc<Labels>, u32>,
    content: BatchContent,
    bytes: usize,
    checkpoints: HashMap<FileKey, Checkpoint>,
    opened: Option<Instant>,
}

impl Batcher {
    pub fn new(max_bytes: usize, max_records: usize) -> Batcher {
        Batcher {
            max_bytes,
            max_records,
            streams: HashMap::new(),
            content: BatchContent::default(),
            bytes: 0,
            checkpoints: HashMap::new(),
            opened: None,
        }
    }

    /// When the open batch must be closed, if one is open.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.opened.map(|t| t + timeout)
    }

    /// Adds a chunk; returns whether the batch is now full. A chunk is never split, so
    /// a batch may exceed `max_bytes` by at most one chunk.
    pub fn push(&mut self, chunk: Chunk) -> bool {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
        }
        let announce = chunk.lines.is_empty();
        let next = self.streams.len() as u32;
        let stream = *self.streams.entry(chunk.stream.clone()).or_insert_with(|| {
            self.content.streams.push((*chunk.stream).clone());
            next
        });
        for line in chunk.lines {
            self.bytes += line.bytes.len() + 24;
            self.content.records.push(LogRecord {
                stream,
                time_ns: if line.time_ns != 0 {
                    line.time_ns
                } else {
                    chunk.observed_ns
                },
                observed_ns: chunk.observed_ns,
                level: line.level,
                template_id: 0,
                flags: line.flags,
                redacted: line.redacted,
                line: line.bytes,
            });
        }
        self.checkpoints
            .insert(chunk.checkpoint.key, chunk.checkpoint);
        // A chunk without lines only moves a position (a start at the end of a file, a
        // refresh): spool it at once so the position is durable before lines follow.
        announce || self.bytes >= self.max_bytes || self.content.records.len() >= self.max_records
    }

    /// Takes the open batch, if any.
    pub fn take(&mut self) -> Option<Pending> {
        self.opened.take()?;
        self.streams.clear();
        self.bytes = 0;
        let mut checkpoints: Vec<_> = self.checkpoints.drain().map(|(_, c)| c).collect();
        checkpoints.sort_by_key(|c| c.key);
        Some(Pending {
            content: std::mem::take(&mut self.content),
            checkpoints,
        })
    }
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
    max_bytes: usize,
    max_records: usize,
    timeout: Duration,
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
    let mut b = Batcher::new(max_bytes, max_records);
    loop {
        let deadline = b.deadline(timeout);
        let flush = tokio::select! {
            c = rx.recv() => match c {
                Some(c) => b.push(c),
                None => break,
            },
            _ = sleep_until(deadline) => true,
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
    drop(seal_tx);
    let _ = sealer.await;
    let _ = writer.await;
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
    use crate::sources::Line;

    fn chunk(stream: &Arc<Labels>, fp: u64, off: u64, n: usize) -> Chunk {
        Chunk {
            stream: stream.clone(),
            observed_ns: 1,
            lines: (0..n)
                .map(|i| Line::new(Bytes::from(format!("line {i}")), 0))
                .collect(),
            checkpoint: Checkpoint {
                key: FileKey { dev: 1, ino: 1, fp },
                offset: off,
                tail: 0,
                source: "/x".into(),
                updated_ns: 0,
                cursor: String::new(),
            },
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
}
