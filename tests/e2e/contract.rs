//! The agent and the aggregator agree on every limit by construction: whatever a file
//! holds, the batches the agent makes of it are accepted whole by the aggregator's
//! validation (the same function its ingest runs), every record arrives, and a record
//! cut at the line limit is flagged. Hostile input: lines from empty to twice the line
//! limit, bytes of every value (invalid UTF-8, runs of NUL bytes), long words that make
//! template texts far over their limit, file paths near the system's limit.

use heimdall_agent::config::FileSource;
use heimdall_agent::pipeline::batch::{frame_for, seal, Batcher};
use heimdall_agent::pipeline::template::{MinerConfig, SourceMiner};
use heimdall_agent::sources::file::FileTailer;
use heimdall_common::limits;
use heimdall_common::record::{flags, Labels};
use heimdall_common::wire::{self, Frame, Limits};
use proptest::prelude::*;
use std::time::Duration;

#[derive(Clone, Debug)]
enum Piece {
    /// Plain words, a line of its own.
    Words(usize),
    /// Arbitrary bytes (a newline inside makes more lines).
    Bytes(Vec<u8>),
    /// A run of NUL bytes.
    Nul(usize),
}

fn piece(max_line: usize) -> impl Strategy<Value = Piece> {
    prop_oneof![
        3 => (0..2 * max_line + 10).prop_map(Piece::Words),
        3 => proptest::collection::vec(any::<u8>(), 0..600).prop_map(Piece::Bytes),
        1 => (8..3000usize).prop_map(Piece::Nul),
    ]
}

fn words(n: usize, seed: usize) -> Vec<u8> {
    const W: [&str; 8] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    let mut out = Vec::with_capacity(n + 8);
    let mut i = seed;
    while out.len() < n {
        out.extend_from_slice(W[i % W.len()].as_bytes());
        out.push(b' ');
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    out.truncate(n);
    out.push(b'\n');
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any batch the agent can produce is accepted by the aggregator's validation.
    #[test]
    fn every_batch_the_agent_makes_is_accepted_whole(
        pieces in proptest::collection::vec(piece(4096), 1..40),
        deep in 0usize..2,
        max_records in 1usize..50,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        // A path near the system's limit (its `source` label near the label limit).
        let mut dir = tmp.path().to_owned();
        for i in 0..deep * 18 {
            dir.push(format!("{i:03}-{}", "d".repeat(200)));
        }
        std::fs::create_dir_all(&dir).unwrap();
        let mut data = Vec::new();
        // The first 4 KiB stay text, so the file is not taken for a binary one.
        data.extend(words(5000, 1));
        for (i, p) in pieces.iter().enumerate() {
            match p {
                Piece::Words(n) => data.extend(words(*n, i)),
                Piece::Bytes(b) => data.extend_from_slice(b),
                Piece::Nul(n) => data.extend(std::iter::repeat_n(0u8, *n)),
            }
        }
        data.push(b'\n');
        std::fs::write(dir.join("app.log"), &data).unwrap();

        let cfg = FileSource {
            max_line_bytes: 4096,
            poll_interval: Duration::from_millis(10),
            rotate_wait: Duration::ZERO,
            ..FileSource::with_include(vec![format!("{}/*.log", dir.display())])
        };
        let mut t = FileTailer::new(cfg, Labels::new([("host", "h")]), vec![])
            .with_miner(SourceMiner::new(MinerConfig::default(), "app", None));
        let mut chunks = Vec::new();
        for _ in 0..3 {
            t.scan();
            while t.read_all(&mut chunks) {}
            t.close_finished(&mut chunks);
        }
        let read: usize = chunks.iter().map(|c| c.lines.len()).sum();
        prop_assert!(read > 0);
        let mut b = Batcher::new(64 << 10, max_records);
        let mut batches = Vec::new();
        for c in chunks {
            if b.push(c) {
                batches.extend(b.take());
            }
        }
        batches.extend(b.take());
        let mut stored = 0usize;
        for (i, p) in batches.into_iter().enumerate() {
            let sent = p.content.records.clone();
            let frame = frame_for(&seal(&p.content), 7, i as u64 + 1, 1);
            prop_assert!(frame.len() <= limits::MAX_FRAME_BYTES);
            let Frame::Batch(batch) = wire::parse(frame, &Limits::default()).unwrap() else {
                panic!("a batch frame")
            };
            let got = heimdall_aggregator::ingest::conn::validate(&batch, &Limits::default());
            let got = match got {
                Ok(c) => c,
                Err((code, why)) => return Err(TestCaseError::fail(format!("rejected ({code}): {why}"))),
            };
            prop_assert!(!got.repairs.any(), "the agent sent values over a limit: {:?}", got.repairs);
            prop_assert_eq!(got.records.len(), sent.len());
            for (r, s) in got.records.iter().zip(&sent) {
                prop_assert_eq!(&r.line, &s.line);
                prop_assert!(r.line.len() <= 4096);
            }
            for t in &got.templates {
                prop_assert!(t.text.len() <= limits::MAX_TEMPLATE_BYTES);
            }
            for s in &got.streams {
                for (k, v) in s.iter() {
                    prop_assert!(k.len() <= limits::MAX_LABEL_NAME_BYTES);
                    prop_assert!(v.len() <= limits::MAX_LABEL_VALUE_BYTES);
                }
            }
            stored += got.records.len();
        }
        prop_assert_eq!(stored, read);
    }
}

/// Lines over the limit arrive cut and flagged, not refused; the miner's template for
/// a 7.8 KB line of words is cut too.
#[test]
fn a_line_over_every_limit_arrives_cut_and_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let mut data = words(7800, 3);
    data.extend(words(20, 4));
    std::fs::write(tmp.path().join("a.log"), &data).unwrap();
    let cfg = FileSource {
        max_line_bytes: 6000,
        poll_interval: Duration::from_millis(10),
        rotate_wait: Duration::ZERO,
        ..FileSource::with_include(vec![format!("{}/*.log", tmp.path().display())])
    };
    let mut t = FileTailer::new(cfg, Labels::new([("host", "h")]), vec![])
        .with_miner(SourceMiner::new(MinerConfig::default(), "app", None));
    let mut chunks = Vec::new();
    t.scan();
    t.read_all(&mut chunks);
    let mut b = Batcher::new(1 << 20, 1000);
    for c in chunks {
        b.push(c);
    }
    let p = b.take().unwrap();
    let frame = frame_for(&seal(&p.content), 1, 1, 1);
    let Frame::Batch(batch) = wire::parse(frame, &Limits::default()).unwrap() else {
        panic!()
    };
    let c = heimdall_aggregator::ingest::conn::validate(&batch, &Limits::default()).unwrap();
    assert_eq!(c.records.len(), 2);
    // Cut at the limit; the redactor also drops the word the cut went through.
    let n = c.records[0].line.len();
    assert!((5900..=6000).contains(&n), "{n}");
    assert_eq!(c.records[0].flags & flags::TRUNCATED, flags::TRUNCATED);
    assert_eq!(c.records[1].flags, 0);
    assert!(c
        .templates
        .iter()
        .all(|t| t.text.len() <= limits::MAX_TEMPLATE_BYTES));
}
