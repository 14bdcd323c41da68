//! Codec hot paths: sealing a batch (encode + lz4 + CRC32C) and opening it, next to raw
//! lz4 on the same bytes as the baseline measured in the same run.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use heimdall_common::record::{Labels, Level, LogRecord};
use heimdall_common::wire::{Batch, BatchContent, Codec, Frame, Limits};

fn content() -> BatchContent {
    let mut rng = heimdall_benches::Rng::new(7);
    let mut raw = Vec::new();
    let mut i = 0;
    while raw.len() < 1 << 20 {
        heimdall_benches::write_line(&mut raw, &mut rng, i).unwrap();
        i += 1;
    }
    let records = raw
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| LogRecord {
            stream: (i % 4) as u32,
            time_ns: 1_700_000_000_000_000_000 + i as i64 * 1000,
            observed_ns: 1_700_000_000_000_000_000 + i as i64 * 1000,
            level: Level::Info,
            template_id: 0,
            flags: 0,
            redacted: 0,
            line: Bytes::copy_from_slice(l),
            metadata: Default::default(),
        })
        .collect();
    BatchContent {
        streams: (0..4)
            .map(|s| {
                Labels::new([
                    ("host", "web1".to_owned()),
                    ("source", format!("/var/log/app{s}.log")),
                ])
            })
            .collect(),
        records,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let content = content();
    let mut raw = BytesMut::new();
    content.encode_payload(&mut raw);
    let raw = raw.freeze();
    let limits = Limits::default();
    let sealed = Frame::Batch(Batch::seal(1, 1, 1, Codec::Lz4, &content)).to_bytes();
    eprintln!(
        "batch: {} records, {} bytes raw, {} bytes sealed (lz4 ratio {:.2}x)",
        content.records.len(),
        raw.len(),
        sealed.len(),
        raw.len() as f64 / sealed.len() as f64
    );

    let mut g = c.benchmark_group("batch_1MiB");
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.bench_function("baseline_lz4_compress_only", |b| {
        b.iter(|| lz4_flex::block::compress(&raw))
    });
    g.bench_function("seal_encode_lz4_crc", |b| {
        b.iter(|| Frame::Batch(Batch::seal(1, 1, 1, Codec::Lz4, &content)).to_bytes())
    });
    let compressed = lz4_flex::block::compress(&raw);
    g.bench_function("baseline_lz4_decompress_only", |b| {
        b.iter(|| lz4_flex::block::decompress(&compressed, raw.len()).unwrap())
    });
    g.bench_function("open_parse_lz4_crc_decode", |b| {
        b.iter(|| {
            let f = heimdall_common::wire::parse(sealed.clone(), &limits).unwrap();
            let Frame::Batch(batch) = f else {
                unreachable!("sealed a batch")
            };
            batch.open(&limits).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
