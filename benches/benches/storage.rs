//! Storage and query benchmark, one run on this machine:
//!
//! 1. **Durable ingest through QUIC**: pre-sealed batches of realistic lines sent by a
//!    QUIC client (mutual TLS) to the real aggregator, 32 batches in flight
//!    (`HEIMDALL_BENCH_INFLIGHT` to change; one agent keeps up to 16), counted
//!    when acknowledged (after the SQLite commit). Baseline in the same run: the same
//!    batches written straight into a hot store in-process, no network.
//! 2. **Compression** of warm segments on the mixed corpus (nginx, JSON, syslog, Java
//!    traces): raw line bytes over Parquet file bytes. Baseline: lz4 of the same lines
//!    (what agents send).
//! 3. **Queries over 50,000,000 stored lines** spread over 24 h and 200 streams, the
//!    agents' pre-aggregates included as agents send them; everything older than the
//!    hot tier's last partitions compacted into warm segments. Then, through the real
//!    aggregator's HTTP API: (a) a rare-token search over 24 h, (b)
//!    `sum by (level) (count_over_time({…}[5m]))` over 24 h, (c) the newest 1,000 lines
//!    of one stream; each run 5 times, median and max printed, with the line-scan
//!    equivalent of (b) for comparison. Then the console: its first load in
//!    compressed bytes, and Explore's first screen for 24 h over every stream (the
//!    level histogram and the newest 1,000 lines, requested together as the page does).
//!
//! `cargo bench -p heimdall-benches --bench storage` (`HEIMDALL_BENCH_STORED_LINES` to
//! change the 50,000,000, 0 to skip; `HEIMDALL_BENCH_INGEST_LINES`, default 2,000,000,
//! 0 to skip; `HEIMDALL_BENCH_DIR` to keep the loaded 50,000,000 lines for another run;
//! `HEIMDALL_BENCH_KEEP_HOT=1` to compact nothing, so the queries read the hot tier only).

use bytes::{Bytes, BytesMut};
use heimdall_common::record::{Aggregate, Labels, Level, LogRecord};
use heimdall_common::wire::{self, Batch, BatchContent, Codec, Frame, Hello, Limits};
use heimdall_store::hot::{BatchId, HotStore};
use heimdall_store::segment::{SegmentRow, SegmentWriter};
use heimdall_tests::{quic_client, Aggregator, Pki};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const S: i64 = 1_000_000_000;
const NEEDLE: &str = "needle-7f3a9c2e51b04d8d";

fn level_of(line: &[u8]) -> Level {
    let head = &line[..line.len().min(120)];
    let has = |w: &[u8]| memchr::memmem::find(head, w).is_some();
    if has(b"ERROR") || has(b"error") || has(b"Exception") {
        Level::Error
    } else if has(b"WARN") || has(b"warn") {
        Level::Warn
    } else if has(b"DEBUG") {
        Level::Debug
    } else {
        Level::Info
    }
}

/// `n` realistic lines.
fn corpus(n: u64, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = heimdall_benches::Rng::new(seed);
    let mut out = Vec::with_capacity(n as usize);
    let mut buf = Vec::new();
    for i in 0..n {
        buf.clear();
        heimdall_benches::write_line(&mut buf, &mut rng, i).expect("vec write");
        for l in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push(l.to_vec());
        }
    }
    out.truncate(n as usize);
    out
}

fn streams() -> Vec<Labels> {
    let mut v = Vec::new();
    for h in 0..20 {
        for a in [
            "api", "web", "db", "cache", "auth", "billing", "search", "queue", "mail", "cron",
        ] {
            v.push(Labels::new([
                ("host", format!("host{h:02}")),
                ("app", a.to_owned()),
                ("source", format!("/var/log/{a}.log")),
            ]));
        }
    }
    v
}

/// A batch of `lines` with times from `t0` step `dt`, round-robin over the streams,
/// with the per-10s aggregates an agent would send.
fn batch(lines: &[Vec<u8>], t0: i64, dt: i64, nstreams: usize, offset: usize) -> BatchContent {
    let mut c = BatchContent {
        streams: streams().into_iter().take(nstreams).collect(),
        ..Default::default()
    };
    let mut aggs: HashMap<(u32, i64, u8), (u64, u64)> = HashMap::new();
    for (i, l) in lines.iter().enumerate() {
        let stream = ((offset + i) % nstreams) as u32;
        let ts = t0 + i as i64 * dt;
        let level = level_of(l);
        let e = aggs
            .entry((stream, ts.div_euclid(10 * S) * 10 * S, level as u8))
            .or_default();
        e.0 += 1;
        e.1 += l.len() as u64;
        c.records.push(LogRecord {
            stream,
            time_ns: ts,
            observed_ns: ts,
            level,
            template_id: 0,
            flags: 0,
            redacted: 0,
            line: Bytes::from(l.clone()),
            metadata: Default::default(),
        });
    }
    c.aggregates = aggs
        .into_iter()
        .map(|((stream, start_ns, level), (count, bytes))| Aggregate {
            stream,
            start_ns,
            window_secs: 10,
            level: Level::from_u8(level).expect("valid"),
            template_id: 0,
            count,
            bytes,
            shipped: count,
        })
        .collect();
    c
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PushFormat {
    /// `logproto.PushRequest` under snappy: Promtail's, Alloy's and Vector's default.
    Protobuf,
    /// Loki's JSON push.
    Json,
}

/// One Loki push body per batch, in `format`.
fn push_bodies(contents: &[BatchContent], format: PushFormat) -> Vec<Vec<u8>> {
    use heimdall_aggregator::api::proto::Writer;
    contents
        .iter()
        .map(|c| {
            // Entries by stream, as clients batch them.
            let mut by: Vec<Vec<&LogRecord>> = vec![Vec::new(); c.streams.len()];
            for r in &c.records {
                by[r.stream as usize].push(r);
            }
            match format {
                PushFormat::Protobuf => {
                    let mut req = Writer::default();
                    for (si, recs) in by.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
                        let mut stream = Writer::default();
                        stream.bytes(1, c.streams[si].to_string().as_bytes());
                        for r in recs {
                            let mut ts = Writer::default();
                            ts.uint(1, (r.time_ns / S) as u64)
                                .uint(2, (r.time_ns % S) as u64);
                            let mut e = Writer::default();
                            e.message(1, &ts).bytes(2, &r.line);
                            stream.message(2, &e);
                        }
                        req.message(1, &stream);
                    }
                    snap::raw::Encoder::new()
                        .compress_vec(&req.buf)
                        .expect("snappy")
                }
                PushFormat::Json => {
                    let streams: Vec<serde_json::Value> = by
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| !r.is_empty())
                        .map(|(si, recs)| {
                            let labels: serde_json::Map<String, serde_json::Value> = c.streams[si]
                                .iter()
                                .map(|(k, v)| (k.to_owned(), v.into()))
                                .collect();
                            let values: Vec<serde_json::Value> = recs
                                .iter()
                                .map(|r| {
                                    serde_json::json!([
                                        r.time_ns.to_string(),
                                        String::from_utf8_lossy(&r.line)
                                    ])
                                })
                                .collect();
                            serde_json::json!({"stream": labels, "values": values})
                        })
                        .collect();
                    serde_json::to_vec(&serde_json::json!({ "streams": streams })).expect("json")
                }
            }
        })
        .collect()
}

/// Loki pushes over HTTP by several concurrent clients into a real aggregator, each
/// answered after the lines are committed; reported against the QUIC path measured in
/// the same run.
fn http_push(
    root: &std::path::Path,
    pki: &Pki,
    contents: &[BatchContent],
    raw: u64,
    format: PushFormat,
    quic_rate: f64,
) -> anyhow::Result<()> {
    const CLIENTS: usize = 8;
    let bodies = push_bodies(contents, format);
    let n: usize = contents.iter().map(|c| c.records.len()).sum();
    let wire: usize = bodies.iter().map(Vec::len).sum();
    let agg = Aggregator::start(&root.join(format!("push-{format:?}")), pki, None)?;
    let url = format!("{}/loki/api/v1/push", agg.url());
    let ctype = match format {
        PushFormat::Protobuf => "application/x-protobuf",
        PushFormat::Json => "application/json",
    };
    let queue = std::sync::Mutex::new(bodies);
    let agg_pid = agg.proc.pid().unwrap_or(0);
    let cpu0 = (
        heimdall_tests::cpu_secs(agg_pid).unwrap_or(0.0),
        heimdall_tests::cpu_secs(std::process::id()).unwrap_or(0.0),
    );
    let started = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    let agent = ureq::AgentBuilder::new().build();
                    loop {
                        let Some(b) = queue.lock().expect("queue").pop() else {
                            return Ok(());
                        };
                        let r = agent
                            .post(&url)
                            .set("Content-Type", ctype)
                            .timeout(Duration::from_secs(120))
                            .send_bytes(&b)?;
                        anyhow::ensure!(r.status() == 204, "push answered {}", r.status());
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("client thread")?;
        }
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = (
        heimdall_tests::cpu_secs(agg_pid).unwrap_or(0.0) - cpu0.0,
        heimdall_tests::cpu_secs(std::process::id()).unwrap_or(0.0) - cpu0.1,
    );
    let stored = heimdall_tests::stored_count(&agg.db());
    anyhow::ensure!(stored == n as u64, "stored {stored} of {n}");
    let rate = n as f64 / secs;
    println!(
        "Loki push over HTTP, {format:?}, {CLIENTS} clients ({:.0} MB on the wire): {:>10.0} lines/s  {:>6.1} MB/s  (ratio to QUIC {:.2})",
        wire as f64 / 1e6,
        rate,
        raw as f64 / 1e6 / secs,
        rate / quic_rate
    );
    println!(
        "  CPU: aggregator {:.1} s ({:.2} cores), clients {:.1} s ({:.2} cores)",
        cpu.0,
        cpu.0 / secs,
        cpu.1,
        cpu.1 / secs
    );
    Ok(())
}

/// The baseline for segment size and write speed: DuckDB (from PyPI, run here) writing
/// the same rows, in the same (stream, time) order, to Parquet with zstd, its default
/// settings otherwise. `rows` are `(labels, ts, level, line)`. Returns the file's bytes
/// and DuckDB's rows/s for sorting and writing (the load from JSON not counted).
fn duckdb_parquet(
    root: &std::path::Path,
    name: &str,
    rows: &[(String, i64, &str, &[u8])],
) -> anyhow::Result<(u64, f64)> {
    use std::io::Write as _;
    let src = root.join(format!("{name}.ndjson"));
    let dst = root.join(format!("{name}-duckdb.parquet"));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src)?);
        for (labels, ts, level, line) in rows {
            serde_json::to_writer(
                &mut f,
                &serde_json::json!({
                    "labels": labels,
                    "ts": ts,
                    "level": level,
                    "line": String::from_utf8_lossy(line),
                }),
            )?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    let script = r#"
import os, sys, time, duckdb
src, dst = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute("SET enable_progress_bar = false")
con.execute("CREATE TABLE t AS SELECT * FROM read_json(?, format='newline_delimited', columns={'labels': 'VARCHAR', 'ts': 'BIGINT', 'level': 'VARCHAR', 'line': 'VARCHAR'})", [src])
n = con.execute("SELECT count(*) FROM t").fetchone()[0]
t = time.time()
con.execute(f"COPY (SELECT * FROM t ORDER BY labels, ts) TO '{dst}' (FORMAT parquet, COMPRESSION zstd)")
secs = time.time() - t
print(os.path.getsize(dst), n / secs)
"#;
    let out = std::process::Command::new(heimdall_tests::python())
        .args(["-c", script])
        .arg(&src)
        .arg(&dst)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The figures are the last line; anything DuckDB printed before it is not ours.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.lines().last().unwrap_or_default().split_whitespace();
    let bytes: u64 = it
        .next()
        .unwrap_or("0")
        .parse()
        .map_err(|e| anyhow::anyhow!("duckdb printed {text:?}: {e}"))?;
    let rate: f64 = it.next().unwrap_or("0").parse()?;
    let _ = std::fs::remove_file(&src);
    Ok((bytes, rate))
}

/// Compressed bytes per column of a Parquet file, as DuckDB's `parquet_metadata` reports
/// them, with what the footer and page headers take beside them: where a file's bytes go.
fn parquet_columns(path: &std::path::Path) -> anyhow::Result<Vec<(String, u64)>> {
    let script = r#"
import os, sys, duckdb
p = sys.argv[1]
rows = duckdb.connect().execute(
    "SELECT path_in_schema, sum(total_compressed_size) FROM parquet_metadata(?) GROUP BY 1 ORDER BY 2 DESC",
    [p]).fetchall()
for name, size in rows:
    print(name, size)
print("(footer)", os.path.getsize(p) - sum(s for _, s in rows))
"#;
    let out = std::process::Command::new(heimdall_tests::python())
        .args(["-c", script])
        .arg(path)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, size) = l.rsplit_once(' ')?;
            Some((name.to_owned(), size.parse().ok()?))
        })
        .collect())
}

fn print_columns(what: &str, path: &std::path::Path) -> anyhow::Result<()> {
    let cols = parquet_columns(path)?;
    let text: Vec<String> = cols.iter().map(|(c, b)| format!("{c} {b}")).collect();
    println!("  {what} bytes by column: {}", text.join(", "));
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn ingest(root: &std::path::Path) -> anyhow::Result<()> {
    let n: u64 = std::env::var("HEIMDALL_BENCH_INGEST_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    if n == 0 {
        return Ok(());
    }
    let lines = corpus(n, 7);
    let per = 10_000;
    let inflight: usize = std::env::var("HEIMDALL_BENCH_INFLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let now = heimdall_common::record::now_ns();
    let contents: Vec<BatchContent> = lines
        .chunks(per)
        .enumerate()
        .map(|(i, ch)| {
            batch(
                ch,
                now - 3_600 * S + (i * per) as i64 * 1_000_000,
                1_000_000,
                200,
                i * per,
            )
        })
        .collect();
    let raw: u64 = lines.iter().map(|l| l.len() as u64).sum();

    // Baseline: the same batches into a hot store in-process.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = root.join("baseline");
    std::fs::create_dir_all(&dir)?;
    let store = Arc::new(HotStore::open(&dir.join("hot.db"), 200_000)?);
    let started = Instant::now();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, c) in contents.iter().cloned().enumerate() {
            let s = store.clone();
            set.spawn(async move {
                s.write(
                    BatchId {
                        agent: "bench".into(),
                        epoch: 1,
                        seq: i as u64 + 1,
                        floor: 1,
                    },
                    c,
                )
                .await
            });
            while set.len() >= inflight {
                set.join_next().await.expect("non-empty")??;
            }
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        anyhow::Ok(())
    })?;
    let base_secs = started.elapsed().as_secs_f64();
    drop(store);

    // Through QUIC into the real aggregator.
    let pki = Pki::new(&root.join("pki"))?;
    let agg = Aggregator::start(&root.join("ingest"), &pki, None)?;
    let sealed: Vec<Bytes> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| Frame::Batch(Batch::seal(1, i as u64 + 1, 1, Codec::Lz4, c)).to_bytes())
        .collect();
    let wire_bytes: u64 = sealed.iter().map(|b| b.len() as u64).sum();
    let (cert, key) = pki.agent_cert("bench")?;
    let agg_pid = agg.proc.pid().unwrap_or(0);
    let cpu0 = (
        heimdall_tests::cpu_secs(agg_pid).unwrap_or(0.0),
        heimdall_tests::cpu_secs(std::process::id()).unwrap_or(0.0),
    );
    let started = Instant::now();
    rt.block_on(async {
        let ep = quic_client(&pki.ca_pem, &cert, &key)?;
        let conn = ep.connect(agg.addrs.ingest, "localhost")?.await?;
        let (mut cs, mut cr) = conn.open_bi().await?;
        let hello = Frame::Hello(Hello {
            version: wire::PROTOCOL_VERSION,
            agent_id: "bench".into(),
            host: "bench".into(),
            agent_version: "bench".into(),
            capabilities: 0,
        });
        cs.write_all(&hello.to_bytes()).await?;
        let mut buf = BytesMut::new();
        heimdall_common::quic::read_frame(&mut cr, &mut buf, &Limits::default()).await?;
        let mut set = tokio::task::JoinSet::new();
        for b in sealed {
            let conn = conn.clone();
            set.spawn(async move {
                let (mut s, mut r) = conn.open_bi().await?;
                s.write_all(&b).await?;
                s.finish()?;
                match heimdall_common::quic::read_single(&mut r, &Limits::default()).await? {
                    Frame::Ack(_) => anyhow::Ok(()),
                    other => anyhow::bail!("unexpected answer {other:?}"),
                }
            });
            while set.len() >= inflight {
                set.join_next().await.expect("non-empty")??;
            }
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
        anyhow::Ok(())
    })?;
    let quic_secs = started.elapsed().as_secs_f64();
    let cpu = (
        heimdall_tests::cpu_secs(agg_pid).unwrap_or(0.0) - cpu0.0,
        heimdall_tests::cpu_secs(std::process::id()).unwrap_or(0.0) - cpu0.1,
    );
    let stored = heimdall_tests::stored_count(&agg.db());
    anyhow::ensure!(
        stored == lines.len() as u64,
        "stored {stored} of {}",
        lines.len()
    );
    println!(
        "== durable ingest, {} lines ({:.0} MB raw, {:.0} MB on the wire, lz4), {inflight} batches of {per} lines in flight",
        lines.len(),
        raw as f64 / 1e6,
        wire_bytes as f64 / 1e6
    );
    println!(
        "QUIC into the aggregator (acked after commit): {:>10.0} lines/s  {:>6.1} MB/s",
        lines.len() as f64 / quic_secs,
        raw as f64 / 1e6 / quic_secs
    );
    println!(
        "baseline, in-process hot store writes:          {:>10.0} lines/s",
        lines.len() as f64 / base_secs
    );
    println!("ratio QUIC / in-process: {:.2}", base_secs / quic_secs);
    println!(
        "CPU during the QUIC run: aggregator {:.1} s ({:.2} cores, {:.2} µs a line), sender {:.1} s ({:.2} cores)",
        cpu.0,
        cpu.0 / quic_secs,
        cpu.0 * 1e6 / lines.len() as f64,
        cpu.1,
        cpu.1 / quic_secs
    );
    // Where the writer's time went: its group commits, from the aggregator's metrics.
    let m = format!("{}/metrics", agg.url());
    let get = |name: &str| heimdall_tests::metric(&m, name).unwrap_or(0.0);
    let (commit_secs, commits) = (
        get("heimdall_aggregator_store_commit_seconds_sum"),
        get("heimdall_aggregator_store_commit_seconds_count"),
    );
    let group = get("heimdall_aggregator_store_group_batches_sum") / commits.max(1.0);
    println!(
        "writer: {commits:.0} group commits of {group:.1} batches on average, {:.1} ms each; committing took {:.0}% of the run",
        1e3 * commit_secs / commits.max(1.0),
        100.0 * commit_secs / quic_secs
    );
    drop(agg);
    let quic_rate = lines.len() as f64 / quic_secs;
    for format in [PushFormat::Protobuf, PushFormat::Json] {
        http_push(root, &pki, &contents, raw, format, quic_rate)?;
    }

    // Compression of a warm segment on the same lines.
    let labels: HashMap<i64, String> = (1..=200)
        .map(|i| (i, format!("[[\"host\",\"host{i}\"]]")))
        .collect();
    let mut rows: Vec<SegmentRow> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| SegmentRow {
            id: i as i64 + 1,
            stream_id: (i % 200) as i64 + 1,
            ts: now + i as i64 * 1_000_000,
            observed: now + i as i64 * 1_000_000,
            level: level_of(l),
            template_id: 0,
            flags: 0,
            line: l.clone(),
            metadata: Default::default(),
        })
        .collect();
    rows.sort_by_key(|r| (r.stream_id, r.ts, r.id));
    let duck_rows: Vec<(String, i64, &str, &[u8])> = rows
        .iter()
        .map(|r| {
            (
                format!("host=host{}", r.stream_id),
                r.ts,
                r.level.as_str(),
                &r.line[..],
            )
        })
        .collect();
    let (duck_bytes, duck_rate) = duckdb_parquet(root, "ingest", &duck_rows)?;
    drop(duck_rows);
    let path = root.join("bench.parquet");
    let started = Instant::now();
    let mut w = SegmentWriter::create(&path, labels, 9)?;
    for r in rows {
        w.push(r)?;
    }
    let info = w.finish()?;
    let seg_secs = started.elapsed().as_secs_f64();
    let mut lz4_bytes = 0u64;
    for ch in lines.chunks(per) {
        let joined: Vec<u8> = ch
            .iter()
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect();
        lz4_bytes += lz4_flex::compress(&joined).len() as u64;
    }
    println!("== warm segment compression, {} lines", info.rows);
    println!("segment (Parquet, zstd 9, sorted by stream and time): {} bytes, ratio {:.1}x (written at {:.0} lines/s)", info.bytes, info.raw_bytes as f64 / info.bytes as f64, info.rows as f64 / seg_secs);
    println!(
        "baseline lz4 of 10,000-line blocks: ratio {:.1}x",
        raw as f64 / lz4_bytes as f64
    );
    println!(
        "baseline DuckDB, zstd Parquet of the same rows sorted the same way: {duck_bytes} bytes, ratio {:.1}x (sorted and written at {duck_rate:.0} rows/s); segment / DuckDB = {:.2} (target <= 0.50)",
        raw as f64 / duck_bytes as f64,
        info.bytes as f64 / duck_bytes as f64
    );
    println!(
        "bloom filter: {} bytes ({:.1}% of the segment)",
        info.bloom.to_bytes().len(),
        100.0 * info.bloom.to_bytes().len() as f64 / info.bytes as f64
    );
    Ok(())
}

/// Compression on the Loghub-2k logs (real logs of eight systems, one stream each),
/// from `$HEIMDALL_LOGHUB_DIR` or `../shared/data/loghub`.
fn loghub(root: &std::path::Path) -> anyhow::Result<()> {
    let dir = std::env::var_os("HEIMDALL_LOGHUB_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/data/loghub"
            ))
        });
    let sets = [
        "Apache",
        "BGL",
        "HDFS",
        "Hadoop",
        "HealthApp",
        "OpenSSH",
        "Spark",
        "Zookeeper",
    ];
    let mut rows = Vec::new();
    let mut labels = HashMap::new();
    let (mut raw, mut lz4_bytes) = (0u64, 0u64);
    for (i, name) in sets.iter().enumerate() {
        let Ok(text) = std::fs::read(dir.join(name).join(format!("{name}_2k.log"))) else {
            println!(
                "== Loghub compression skipped: no data in {}",
                dir.display()
            );
            return Ok(());
        };
        lz4_bytes += lz4_flex::compress(&text).len() as u64;
        raw += text.len() as u64;
        labels.insert(i as i64 + 1, format!("[[\"app\",\"{name}\"]]"));
        for (j, l) in text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            rows.push(SegmentRow {
                id: rows.len() as i64 + 1,
                stream_id: i as i64 + 1,
                ts: j as i64 * 1_000_000,
                observed: j as i64 * 1_000_000,
                level: level_of(l),
                template_id: 0,
                flags: 0,
                line: l.to_vec(),
                metadata: Default::default(),
            });
        }
    }
    let duck_rows: Vec<(String, i64, &str, &[u8])> = rows
        .iter()
        .map(|r| {
            (
                format!("app={}", sets[r.stream_id as usize - 1]),
                r.ts,
                r.level.as_str(),
                &r.line[..],
            )
        })
        .collect();
    let (duck_bytes, _) = duckdb_parquet(root, "loghub", &duck_rows)?;
    drop(duck_rows);
    let path = root.join("loghub.parquet");
    let mut w = SegmentWriter::create(&path, labels, 9)?;
    let n = rows.len();
    for r in rows {
        w.push(r)?;
    }
    let info = w.finish()?;
    println!(
        "== warm segment compression, Loghub-2k (8 systems, {n} lines, {:.1} MB)",
        raw as f64 / 1e6
    );
    println!(
        "segment: {} bytes, ratio {:.1}x (target >= 10x: {}); baseline lz4 of each file: {:.1}x",
        info.bytes,
        info.raw_bytes as f64 / info.bytes as f64,
        if info.raw_bytes as f64 / info.bytes as f64 >= 10.0 {
            "met"
        } else {
            "MISSED"
        },
        raw as f64 / lz4_bytes as f64
    );
    println!(
        "baseline DuckDB, zstd Parquet of the same rows: {duck_bytes} bytes, ratio {:.1}x; segment / DuckDB = {:.2} (target <= 0.50)",
        raw as f64 / duck_bytes as f64,
        info.bytes as f64 / duck_bytes as f64
    );
    print_columns("segment", &path)?;
    print_columns("DuckDB", &root.join("loghub-duckdb.parquet"))?;
    Ok(())
}

fn big(root: &std::path::Path) -> anyhow::Result<()> {
    let n: u64 = std::env::var("HEIMDALL_BENCH_STORED_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000_000);
    // `HEIMDALL_BENCH_DIR` keeps the loaded and compacted store between runs (it is
    // loaded again if its line count or its day differs).
    let root = std::env::var_os("HEIMDALL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.to_owned());
    let pki = Pki::new(&root.join("pki50"))?;
    let keep_hot = std::env::var("HEIMDALL_BENCH_KEEP_HOT").as_deref() == Ok("1");
    let dir = root.join(if keep_hot { "big-hot" } else { "big" });
    let state = dir.join("aggregator");
    let marker = dir.join("loaded");
    let now = heimdall_common::record::now_ns();
    let (now, moved) = match std::fs::read_to_string(&marker).ok().and_then(|s| {
        let v: Vec<i64> = s
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() == 3 && v[0] == n as i64 && now - v[1] < 6 * 3_600 * S)
            .then_some((v[1], v[2] as u64))
    }) {
        Some(kept) => {
            eprintln!("reusing the store loaded in {}", dir.display());
            kept
        }
        None => {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&state)?;
            let moved = load_big(&state, n, now, keep_hot)?;
            std::fs::write(&marker, format!("{n} {now} {moved}"))?;
            (now, moved)
        }
    };
    query_big(&dir, &pki, n, now, moved)
}

/// Loads `n` lines over the 24 h before `now` and compacts all but the last two
/// hours (none when `keep_hot`); returns how many lines were moved to warm segments.
fn load_big(state: &std::path::Path, n: u64, now: i64, keep_hot: bool) -> anyhow::Result<u64> {
    let db = state.join("hot.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let store = Arc::new(HotStore::open(&db, 200_000)?);
    let t0 = now - 86_400 * S;
    let dt = 86_400 * S / n as i64;
    let pool = corpus(200_000, 11);
    let per = 20_000usize;
    let started = Instant::now();
    let needle_at = n / 3;
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let mut i = 0u64;
        let mut seq = 1u64;
        while i < n {
            let k = per.min((n - i) as usize);
            let mut chunk: Vec<Vec<u8>> = (0..k)
                .map(|j| pool[((i as usize + j) * 7919) % pool.len()].clone())
                .collect();
            if (i..i + k as u64).contains(&needle_at) {
                chunk[(needle_at - i) as usize] =
                    format!("ERROR payment failed for order {NEEDLE} card declined").into_bytes();
            }
            let c = batch(&chunk, t0 + i as i64 * dt, dt, 200, i as usize);
            let s = store.clone();
            let id = BatchId {
                agent: "bench".into(),
                epoch: 1,
                seq,
                floor: 1,
            };
            set.spawn(async move { s.write(id, c).await });
            seq += 1;
            i += k as u64;
            while set.len() >= 8 {
                set.join_next().await.expect("non-empty")??;
            }
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        anyhow::Ok(())
    })?;
    let load_secs = started.elapsed().as_secs_f64();
    eprintln!("stored {n} lines in {load_secs:.0}s");
    let started = Instant::now();
    // The CPU of every thread of this process while compacting (the compacting thread,
    // the store's writer, its checkpointer): the per-core figure.
    let cpu_before = heimdall_tests::cpu_secs(std::process::id()).unwrap_or(0.0);
    let lc = heimdall_benches::compactor(store.clone(), &db, &state.join("segments"));
    std::fs::create_dir_all(state.join("segments"))?;
    // Compact every partition that ended more than an hour ago (the default keeps two:
    // with hour partitions the current one and the one before stay hot).
    let conn = heimdall_store::hot::open_reader(&db)?;
    let mut moved = 0;
    for p in heimdall_store::hot::partitions(&conn)? {
        if p.end <= now - 3_600 * S && !keep_hot {
            moved += lc.compact_named(&p.name)?;
        }
    }
    let compact_secs = started.elapsed().as_secs_f64();
    let compact_cpu = heimdall_tests::cpu_secs(std::process::id()).unwrap_or(0.0) - cpu_before;
    let peak = std::fs::metadata(&db)?.len();
    lc.release_space(&tokio_util::sync::CancellationToken::new())?;
    println!(
        "== hot database: {:.0} MB after the load, {:.0} MB once compaction's space is returned",
        peak as f64 / 1e6,
        std::fs::metadata(&db)?.len() as f64 / 1e6
    );
    if moved > 0 {
        filter_report(&conn, &state.join("segments"), &pool)?;
    }
    drop(lc);
    drop(conn);
    match Arc::try_unwrap(store) {
        Ok(mut s) => s.close(),
        Err(_) => anyhow::bail!("store still shared"),
    }
    let seg_bytes: u64 = std::fs::read_dir(state.join("segments"))?
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "== 50M load: {n} lines stored in {load_secs:.0}s ({:.0} lines/s in-process); {moved} compacted into {:.0} MB of segments in {compact_secs:.1}s ({:.0} lines/s), using {compact_cpu:.1} CPU-seconds ({:.0} lines per CPU-second; target >= 500,000)",
        n as f64 / load_secs,
        seg_bytes as f64 / 1e6,
        moved as f64 / compact_secs,
        moved as f64 / compact_cpu.max(0.01)
    );
    Ok(moved)
}

/// The needle filters of the compacted segments: their bytes next to the segments',
/// and their false-positive rate by needle length: over the row groups of up to 6
/// segments, the share of those without a needle whose filter still lets it through.
/// Half the needles are near misses (a piece of a stored line with one byte changed),
/// half random lowercase words and digits.
fn filter_report(
    conn: &rusqlite::Connection,
    seg_dir: &std::path::Path,
    pool: &[Vec<u8>],
) -> anyhow::Result<()> {
    use heimdall_store::catalog;
    use heimdall_store::filter::Probe;
    use heimdall_store::segment::{SegmentFile, Selection};
    let segs = catalog::in_state(conn, "active")?;
    let (mut filter_bytes, mut seg_bytes) = (0usize, 0u64);
    for s in &segs {
        filter_bytes += catalog::bloom(conn, s.id)?.map_or(0, |b| b.to_bytes().len());
        filter_bytes += catalog::row_group_blooms(conn, s.id)?
            .iter()
            .map(|b| b.to_bytes().len() + 4)
            .sum::<usize>();
        seg_bytes += s.bytes;
    }
    println!(
        "needle filters: {:.1} MB for {:.1} MB of segments ({:.1}%)",
        filter_bytes as f64 / 1e6,
        seg_bytes as f64 / 1e6,
        100.0 * filter_bytes as f64 / seg_bytes.max(1) as f64
    );
    let mut rng = fastrand::Rng::with_seed(23);
    let lens = [3usize, 4, 5, 6, 8, 11, 16, 24];
    let mut needles: Vec<(usize, Vec<u8>)> = Vec::new();
    for &len in &lens {
        for i in 0..24 {
            let n: Vec<u8> = if i % 2 == 0 {
                let line = loop {
                    let l = &pool[rng.usize(..pool.len())];
                    if l.len() > len {
                        break l;
                    }
                };
                let at = rng.usize(..=line.len() - len);
                let mut n = line[at..at + len].to_vec();
                let k = rng.usize(..len);
                n[k] = rng.alphanumeric() as u8;
                n
            } else {
                (0..len).map(|_| rng.lowercase() as u8).collect()
            };
            needles.push((len, n));
        }
    }
    let probes: Vec<Probe> = needles.iter().map(|(_, n)| Probe::new(n)).collect();
    let finders: Vec<memchr::memmem::Finder> = needles
        .iter()
        .map(|(_, n)| memchr::memmem::Finder::new(n))
        .collect();
    let (mut absent, mut passed) = (vec![0u64; needles.len()], vec![0u64; needles.len()]);
    for s in segs.iter().take(6) {
        let f = SegmentFile::open(&seg_dir.join(&s.name))?;
        let filters = catalog::row_group_blooms(conn, s.id)?;
        let streams: std::collections::HashSet<i64> =
            f.footer()?.streams.iter().map(|s| s.stream_id).collect();
        let groups = f.row_group_rows().len();
        anyhow::ensure!(filters.len() == groups, "a filter for each row group");
        for (g, filter) in filters.iter().enumerate() {
            // Only needles that pass can be present: the filter has no false negatives.
            let pass: Vec<usize> = (0..needles.len())
                .filter(|&i| probes[i].may_match(filter))
                .collect();
            let mut present = vec![false; needles.len()];
            if !pass.is_empty() {
                let mask: Vec<bool> = (0..groups).map(|i| i == g).collect();
                f.read(
                    &Selection {
                        streams: &streams,
                        start: i64::MIN,
                        end: i64::MAX,
                        row_groups: Some(&mask),
                        prefilter: None,
                    },
                    false,
                    |r, _| {
                        for &i in &pass {
                            if !present[i] && finders[i].find(&r.line).is_some() {
                                present[i] = true;
                            }
                        }
                        true
                    },
                )?;
            }
            for i in 0..needles.len() {
                if !present[i] {
                    absent[i] += 1;
                    passed[i] += u64::from(pass.contains(&i));
                }
            }
        }
    }
    let rates: Vec<String> = lens
        .iter()
        .map(|&len| {
            let (a, p) = (0..needles.len())
                .filter(|&i| needles[i].0 == len)
                .fold((0, 0), |(a, p), i| (a + absent[i], p + passed[i]));
            format!("{len} B {:.1}%", 100.0 * p as f64 / a.max(1) as f64)
        })
        .collect();
    println!(
        "needle filter false positives (row groups without the needle that are read): {}",
        rates.join(", ")
    );
    Ok(())
}

fn query_big(dir: &std::path::Path, pki: &Pki, n: u64, now: i64, moved: u64) -> anyhow::Result<()> {
    let agg = Aggregator::start_with(dir, pki, None, "[warm]\ncompact_after = \"100d\"\n")?;
    let base = agg.url();
    let started = Instant::now();
    heimdall_benches::wait_hot_indexed(&base)?;
    eprintln!(
        "hot index rebuilt in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let (start, end) = (now - 86_400 * S, now);
    let timed = |what: &str,
                 url: String,
                 target: f64,
                 check: &dyn Fn(&serde_json::Value) -> bool|
     -> anyhow::Result<()> {
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let v: serde_json::Value = ureq::get(&url)
                .timeout(Duration::from_secs(300))
                .call()?
                .into_json()?;
            times.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(
                check(&v),
                "{what}: unexpected answer {}",
                &v.to_string()[..v.to_string().len().min(400)]
            );
        }
        let max = times.iter().copied().fold(0.0, f64::max);
        println!(
            "{what:<62} median {:>7.3}s  max {:>7.3}s  (target < {target}s: {})",
            median(&mut times),
            max,
            if max < target { "met" } else { "MISSED" }
        );
        Ok(())
    };
    let run = |what: &str, url: String, check: &dyn Fn(&serde_json::Value) -> bool| {
        timed(what, url, 1.0, check)
    };
    println!("== queries over {n} stored lines, 24 h, 200 streams ({moved} in warm segments, the rest hot)");
    run(
        "(a) rare-token search `{app=~\".+\"} |= \"<id>\"` over 24h",
        format!(
            "{base}/loki/api/v1/query_range?query={}&start={start}&end={end}&limit=100",
            heimdall_tests::url_encode(&format!("{{app=~\".+\"}} |= \"{NEEDLE}\""))
        ),
        &|v| v["data"]["result"].as_array().is_some_and(|r| r.len() == 1),
    )?;
    run(
        "(b) sum by (level) (count_over_time({app=\"api\"}[5m])) 24h",
        format!(
            "{base}/loki/api/v1/query_range?query={}&start={start}&end={end}&step=300",
            heimdall_tests::url_encode("sum by (level) (count_over_time({app=\"api\"}[5m]))")
        ),
        &|v| {
            v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        },
    )?;
    // Grafana's log-volume query, at the steps it picks ($__auto is the step), over 24 h
    // and over the last 15 minutes: answered from per-second counts at any step.
    for (span, label) in [(86_400 * S, "24h"), (900 * S, "15m")] {
        for step in [1i64, 15, 60, 300] {
            if span / (step * S) > 11_000 {
                // Refused as Loki refuses it: more than 11,000 points per series.
                println!("(v) Grafana volume, {label}, step {step}s: refused (over 11,000 points per series, as in Loki)");
                continue;
            }
            let q = format!(
                "sum by (level, detected_level) (count_over_time({{app=\"api\"}} | drop __error__ [{step}s]))"
            );
            let what = format!("(v) Grafana volume, {{app=\"api\"}}, {label}, step {step}s");
            let url = format!(
                "{base}/loki/api/v1/query_range?query={}&start={}&end={end}&step={step}000ms",
                heimdall_tests::url_encode(&q),
                end - span
            );
            timed(&what, url, 0.3, &|v| {
                v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
            })?;
        }
    }
    run(
        "(c) newest 1,000 lines of {host=\"host07\", app=\"db\"}",
        format!("{base}/loki/api/v1/query_range?query={}&start={start}&end={end}&limit=1000&direction=backward", heimdall_tests::url_encode("{host=\"host07\", app=\"db\"}")),
        &|v| v["data"]["result"].as_array().is_some_and(|r| r.iter().map(|s| s["values"].as_array().map_or(0, Vec::len)).sum::<usize>() == 1000),
    )?;
    console(&base, start, end)?;
    run(
        "comparison: (b) from lines (`|= \"\"` forces a scan), 1 of 200 streams' 24h",
        format!(
            "{base}/loki/api/v1/query_range?query={}&start={start}&end={end}&step=300",
            heimdall_tests::url_encode(
                "sum by (level) (count_over_time({app=\"api\", host=\"host03\"} |= \"\" [5m]))"
            )
        ),
        &|v| {
            v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        },
    )?;
    Ok(())
}

/// The console over the 50M store: its first load (every file a browser fetches,
/// gzip-compressed as served), and Explore's first screen for a 24 h query over every
/// stream, both requests the page sends at once (the level histogram and the newest
/// 1,000 lines), timed until both answers are in; warm, 5 runs.
fn console(base: &str, start: i64, end: i64) -> anyhow::Result<()> {
    let mut first_load = 0usize;
    for f in [
        "/",
        "/console/app.js",
        "/console/style.css",
        "/console/favicon.svg",
    ] {
        let r = ureq::get(&format!("{base}{f}"))
            .set("Accept-Encoding", "gzip")
            .call()?;
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut r.into_reader(), &mut body)?;
        first_load += body.len();
    }
    println!(
        "(console) first load: {first_load} bytes compressed (target < 300000: {})",
        if first_load < 300_000 {
            "met"
        } else {
            "MISSED"
        }
    );
    // What Explore sends for 24 h: a step of 900 s (120 bars), the histogram's end
    // rounded up to a step, the lines newest first with categorized labels.
    let selector = "{app=~\".+\"}";
    let step = 900i64;
    let hist_end = (end + step * S - 1) / (step * S) * (step * S);
    let hist = format!(
        "{base}/loki/api/v1/query_range?query={}&start={start}&end={hist_end}&step={step}s",
        heimdall_tests::url_encode(&format!(
            "sum by (detected_level) (count_over_time({selector} [{step}s]))"
        ))
    );
    let lines = format!(
        "{base}/loki/api/v1/query_range?query={}&start={start}&end={end}&limit=1000&direction=backward",
        heimdall_tests::url_encode(selector)
    );
    let mut times = Vec::new();
    for _ in 0..6 {
        let t = Instant::now();
        let (h, l) = std::thread::scope(|sc| {
            let h = sc.spawn(|| -> anyhow::Result<serde_json::Value> {
                Ok(ureq::get(&hist)
                    .timeout(Duration::from_secs(300))
                    .call()?
                    .into_json()?)
            });
            let l = sc.spawn(|| -> anyhow::Result<serde_json::Value> {
                Ok(ureq::get(&lines)
                    .set("X-Loki-Response-Encoding-Flags", "categorize-labels")
                    .timeout(Duration::from_secs(300))
                    .call()?
                    .into_json()?)
            });
            (h.join(), l.join())
        });
        times.push(t.elapsed().as_secs_f64());
        let (h, l) = (
            h.map_err(|_| anyhow::anyhow!("histogram request panicked"))??,
            l.map_err(|_| anyhow::anyhow!("lines request panicked"))??,
        );
        let bars: usize = h["data"]["result"].as_array().map_or(0, |r| {
            r.iter()
                .map(|s| s["values"].as_array().map_or(0, Vec::len))
                .max()
                .unwrap_or(0)
        });
        let n: usize = l["data"]["result"].as_array().map_or(0, |r| {
            r.iter()
                .map(|s| s["values"].as_array().map_or(0, Vec::len))
                .sum()
        });
        anyhow::ensure!(bars >= 90 && n == 1000, "console: {bars} bars, {n} lines");
    }
    // The first run warms the caches; the five after it are timed.
    let mut warm = times.split_off(1);
    let max = warm.iter().copied().fold(0.0, f64::max);
    println!(
        "(console) Explore 24h, every stream: histogram + newest 1,000 lines   median {:>7.3}s  max {:>7.3}s  (target < 1s: {}; cold first run {:.3}s)",
        median(&mut warm),
        max,
        if max < 1.0 { "met" } else { "MISSED" },
        times[0]
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("storage: benchmark");
        return Ok(());
    }
    heimdall_tests::bins();
    let tmp = tempfile::tempdir()?;
    ingest(tmp.path())?;
    loghub(tmp.path())?;
    if std::env::var("HEIMDALL_BENCH_STORED_LINES").as_deref() != Ok("0") {
        big(tmp.path())?;
    }
    Ok(())
}
