//! Query speed against DuckDB and ripgrep on the same lines, in one run.
//!
//! A data set of `HEIMDALL_BENCH_QUERY_LINES` lines (default 10,000,000) over 24 hours,
//! 200 hosts running 3 of 30 services each (600 streams), about 200 bytes a line, with
//! `needle-7f3a9c` in 37 random lines. Stored as pushed lines are (no agent
//! pre-aggregates), all but the last two hours compacted to warm segments, then queried
//! through the aggregator's Loki API. The same rows go to a zstd Parquet file that
//! DuckDB (from PyPI, two threads) queries, and the line text to a file that ripgrep
//! searches. Every query runs warm (after one run) five times; the medians are
//! printed with the ratio to DuckDB, and every answer is checked against DuckDB's.
//!
//! The needle filter's false positives are shown by the rare needle's stats: row
//! groups read beyond those holding the needle.
//!
//! Needs `rg` (ripgrep) on the path (`apt-get install ripgrep`); without it the
//! ripgrep column is left out.
//!
//! With `HEIMDALL_BENCH_DIR` set, the data set is kept there; `HEIMDALL_BENCH_QUERY_REUSE=1`
//! then queries the kept data set of the same size instead of building it again.
//! `HEIMDALL_BENCH_KEEP_HOT=1` compacts nothing, so every query reads the hot tier
//! (to compare with the warm figures of a run without it).

use bytes::Bytes;
use heimdall_common::record::{Labels, Level, LogRecord};
use heimdall_common::wire::BatchContent;
use heimdall_store::hot::{BatchId, HotStore};
use heimdall_tests::{url_encode, Aggregator, Pki};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const S: i64 = 1_000_000_000;
const NEEDLE: &str = "needle-7f3a9c";
const NEEDLE_ROWS: u64 = 37;
const SERVICES: [&str; 30] = [
    "api",
    "web",
    "db",
    "cache",
    "auth",
    "billing",
    "search",
    "queue",
    "mail",
    "cron",
    "gateway",
    "orders",
    "payments",
    "users",
    "inventory",
    "shipping",
    "notify",
    "report",
    "media",
    "upload",
    "session",
    "ledger",
    "fraud",
    "pricing",
    "catalog",
    "cart",
    "checkout",
    "review",
    "feed",
    "metrics",
];

fn streams() -> Vec<Labels> {
    let mut v = Vec::new();
    for h in 0..200 {
        for k in 0..3 {
            v.push(Labels::new([
                ("host", format!("host{h:03}")),
                ("service", SERVICES[(h * 3 + k * 7) % 30].to_owned()),
            ]));
        }
    }
    v
}

/// Line `i`: its stream, level and text.
fn line(rng: &mut fastrand::Rng, i: u64, needles: &[u64]) -> (u32, Level, String) {
    let stream = rng.u32(..600);
    let svc = SERVICES[((stream / 3) as usize * 3 + (stream % 3) as usize * 7) % 30];
    let trace = rng.u64(..);
    let roll = rng.u32(..100);
    let (level, mut text) = match roll {
        0..=5 => (
            Level::Error,
            format!(
                "ERROR [{svc}] payment failed order={} amount={}.{:02} reason=card_declined trace={trace:016x} span={:08x}",
                rng.u32(..10_000_000),
                rng.u32(..5000),
                rng.u32(..100),
                rng.u32(..)
            ),
        ),
        6..=17 => (
            Level::Warn,
            format!(
                "{{\"level\":\"warn\",\"svc\":\"{svc}\",\"msg\":\"slow query\",\"table\":\"{}\",\"ms\":{},\"rows\":{},\"trace\":\"{trace:016x}\"}}",
                ["orders", "users", "items", "events"][rng.usize(..4)],
                rng.u32(..30_000),
                rng.u32(..100_000)
            ),
        ),
        18..=19 => (
            Level::Debug,
            format!(
                "DEBUG [{svc}] cache {} key=user:{}:profile ttl={}s upstream=10.{}.{}.{}:{}",
                ["hit", "miss"][rng.usize(..2)],
                rng.u32(..1_000_000),
                rng.u32(..3600),
                rng.u8(..),
                rng.u8(..),
                rng.u8(..),
                8000 + rng.u16(..100)
            ),
        ),
        _ => {
            let status = [200, 200, 200, 201, 204, 301, 304, 400, 404, 500, 502, 503][rng.usize(..12)];
            (
                Level::Info,
                format!(
                    "INFO [{svc}] {} /api/v{}/{}/{} status={status} dur={}ms bytes={} user=u{} ip=192.168.{}.{} trace={trace:016x}",
                    ["GET", "GET", "GET", "POST", "PUT", "DELETE"][rng.usize(..6)],
                    rng.u8(1..4),
                    ["orders", "users", "items", "carts", "sessions"][rng.usize(..5)],
                    rng.u32(..1_000_000),
                    rng.u32(..2000),
                    rng.u32(..100_000),
                    rng.u32(..50_000),
                    rng.u8(..),
                    rng.u8(..)
                ),
            )
        }
    };
    if needles.binary_search(&i).is_ok() {
        text.push_str(" note=");
        text.push_str(NEEDLE);
    }
    (stream, level, text)
}

struct Figures {
    heimdall: f64,
    duckdb: f64,
    ripgrep: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("query: benchmark");
        return Ok(());
    }
    heimdall_tests::bins();
    let n: u64 = std::env::var("HEIMDALL_BENCH_QUERY_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let tmp = tempfile::tempdir()?;
    let root = std::env::var_os("HEIMDALL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_owned());
    let dir = root.join("query");
    let parquet = dir.join("rows.parquet");
    let text_path = dir.join("lines.txt");
    let kept_path = dir.join("kept.json");
    let keep_hot = std::env::var("HEIMDALL_BENCH_KEEP_HOT").as_deref() == Ok("1");
    let kept: Option<serde_json::Value> = std::env::var_os("HEIMDALL_BENCH_QUERY_REUSE")
        .and_then(|_| std::fs::read(&kept_path).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|v: &serde_json::Value| {
            v["n"].as_u64() == Some(n) && v["hot"].as_bool().unwrap_or(false) == keep_hot
        });
    let (now, raw_bytes, moved) = match kept {
        Some(k) => {
            eprintln!("reusing the data set kept in {}", dir.display());
            (
                k["now"].as_i64().unwrap_or_default(),
                k["raw_bytes"].as_u64().unwrap_or_default(),
                k["moved"].as_u64().unwrap_or_default(),
            )
        }
        None => build(n, &dir, &kept_path, keep_hot)?,
    };
    let labels = streams();
    let labels_json: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    let t0 = now - 86_400 * S;
    let mut needles = needle_rows(n);
    needles.dedup();

    let pki = Pki::new(&dir.join("pki"))?;
    let agg = Aggregator::start_with(&dir, &pki, None, "[warm]\ncompact_after = \"100d\"\n")?;
    let base = agg.url();
    heimdall_benches::wait_hot_indexed(&base)?;
    let rg = which_rg();
    let end = now + S;
    let (h0, h1) = (t0 - S, end);
    let mut table: Vec<(String, Figures)> = Vec::new();

    // (1) The rare needle: every line holding it, newest first.
    let q = format!("{{host=~\".+\"}} |= \"{NEEDLE}\"");
    let (secs, v) = heimdall_range(&base, &q, h0, h1, None, 100)?;
    let got = entries(&v);
    let stats = v["data"]["stats"]["heimdall"].clone();
    let (dsecs, want) = duck_timed(&format!(
        "SELECT count(*) FROM (SELECT ts FROM read_parquet('{}') WHERE contains(line, '{NEEDLE}') ORDER BY ts DESC LIMIT 100)",
        parquet.display()
    ))?;
    anyhow::ensure!(
        got == want && got == needles.len() as u64,
        "needle: heimdall {got}, duckdb {want}"
    );
    let rsecs = rg
        .as_ref()
        .map(|r| rg_timed(r, NEEDLE, &text_path, needles.len() as u64))
        .transpose()?;
    table.push((
        format!("rare needle `{q}`, 24 h"),
        Figures {
            heimdall: secs,
            duckdb: dsecs,
            ripgrep: rsecs,
        },
    ));
    println!(
        "needle filter: {} of {} row groups of {} segments passed ({} hold the needle at most: the rest are false positives), {} segments pruned whole, {} row groups decoded, {} lines read",
        stats["rowGroupsPassed"],
        stats["rowGroupsPassed"].as_u64().unwrap_or(0) + stats["rowGroupsPruned"].as_u64().unwrap_or(0),
        stats["segmentsRead"],
        needles.len(),
        stats["segmentsPruned"],
        stats["rowGroupsRead"],
        stats["lines"]
    );

    // (2) A needle in every row group, counted.
    let count = |filter: &str,
                 duck_where: &str,
                 rg_pat: Option<&str>,
                 what: &str,
                 table: &mut Vec<(String, Figures)>|
     -> anyhow::Result<()> {
        // 25 h: the window holds every line, the first included.
        let q = format!("sum(count_over_time({{host=~\".+\"}} {filter} [25h]))");
        let (secs, v) = heimdall_instant(&base, &q, end)?;
        let got: u64 = v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        let (dsecs, want) = duck_timed(&format!(
            "SELECT count(*) FROM read_parquet('{}') WHERE {duck_where}",
            parquet.display()
        ))?;
        anyhow::ensure!(got == want, "{what}: heimdall {got}, duckdb {want}");
        let rsecs = match (rg.as_ref(), rg_pat) {
            (Some(r), Some(p)) => Some(rg_timed(r, p, &text_path, want)?),
            _ => None,
        };
        table.push((
            format!("{what} `{q}`"),
            Figures {
                heimdall: secs,
                duckdb: dsecs,
                ripgrep: rsecs,
            },
        ));
        Ok(())
    };
    count(
        "|= \"card_declined\"",
        "contains(line, 'card_declined')",
        Some("card_declined"),
        "needle in every row group",
        &mut table,
    )?;
    count(
        "|~ \"status=5[0-9]{2} \"",
        "regexp_matches(line, 'status=5[0-9]{2} ')",
        Some("status=5[0-9]{2} "),
        "regex scan",
        &mut table,
    )?;

    // (3) The level histogram over 24 h at 5 minutes.
    let q = "sum by (level) (count_over_time({host=~\".+\"}[5m]))";
    let (secs, v) = heimdall_range(&base, q, t0 + 300 * S, end, Some(300), 0)?;
    let got: u64 = v["data"]["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
                .filter_map(|p| p[1].as_str().and_then(|x| x.parse::<u64>().ok()))
                .sum()
        })
        .unwrap_or(0);
    let (dsecs, want) = duck_timed(&format!(
        "SELECT sum(c) FROM (SELECT level, ts // 300000000000 AS b, count(*) AS c FROM read_parquet('{}') GROUP BY ALL)",
        parquet.display()
    ))?;
    // Heimdall's windows end on the steps; DuckDB's buckets start on them: the totals
    // agree but for the lines before the first step.
    anyhow::ensure!(
        got <= want && want - got <= n / 200,
        "histogram: heimdall {got}, duckdb {want}"
    );
    table.push((
        format!("level histogram `{q}`, 24 h"),
        Figures {
            heimdall: secs,
            duckdb: dsecs,
            ripgrep: None,
        },
    ));

    // (4) The newest 1,000 lines of one stream.
    let si = 21;
    let one = &labels[si];
    let q = format!(
        "{{host=\"{}\", service=\"{}\"}}",
        one.get("host").unwrap_or_default(),
        one.get("service").unwrap_or_default()
    );
    {
        let q = q.as_str();
        let (secs, v) = heimdall_range(&base, q, h0, h1, None, 1000)?;
        let got = entries(&v);
        let (dsecs, want) = duck_timed(&format!(
            "SELECT count(*) FROM (SELECT ts FROM read_parquet('{}') WHERE labels = '{}' ORDER BY ts DESC LIMIT 1000)",
            parquet.display(),
            labels_json[si].replace('\'', "''")
        ))?;
        anyhow::ensure!(got == want, "newest lines: heimdall {got}, duckdb {want}");
        table.push((
            format!("newest 1,000 lines of `{q}`"),
            Figures {
                heimdall: secs,
                duckdb: dsecs,
                ripgrep: None,
            },
        ));
    }

    println!(
        "== queries over {n} lines ({:.1} GB raw), {moved} in warm segments, {}; warm runs, median of 5",
        raw_bytes as f64 / 1e9,
        if keep_hot { "every line hot" } else { "the last 2 h hot" }
    );
    println!(
        "{:<92} {:>9} {:>9} {:>9} {:>8}",
        "query", "heimdall", "duckdb", "ripgrep", "h/duckdb"
    );
    for (what, f) in &table {
        println!(
            "{what:<92} {:>8.3}s {:>8.3}s {:>9} {:>8.2}",
            f.heimdall,
            f.duckdb,
            f.ripgrep.map_or("-".to_owned(), |r| format!("{r:.3}s")),
            f.heimdall / f.duckdb
        );
    }
    drop(agg);
    Ok(())
}

/// Builds the data set in `dir` (the hot store, its compaction, DuckDB's Parquet and
/// ripgrep's text) and notes it in `kept`; (now, raw bytes, lines moved to warm).
/// With `keep_hot`, nothing is compacted.
fn build(n: u64, dir: &Path, kept: &Path, keep_hot: bool) -> anyhow::Result<(i64, u64, u64)> {
    let _ = std::fs::remove_dir_all(dir);
    let state = dir.join("aggregator");
    let parquet = dir.join("rows.parquet");
    std::fs::create_dir_all(state.join("segments"))?;
    let now = heimdall_common::record::now_ns() / S * S;
    let t0 = now - 86_400 * S;
    let dt = 86_400 * S / n as i64;

    // The rows: into the hot store in batches (as pushes land), and into the JSON
    // DuckDB loads and the text ripgrep reads.
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut needles = needle_rows_from(&mut rng, n);
    needles.dedup();
    let labels = streams();
    let db = state.join("hot.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let store = Arc::new(HotStore::open(&db, 200_000)?);
    let json_path = dir.join("rows.json");
    let text_path = dir.join("lines.txt");
    let mut json = std::io::BufWriter::new(std::fs::File::create(&json_path)?);
    let mut text = std::io::BufWriter::new(std::fs::File::create(&text_path)?);
    let labels_json: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    let started = Instant::now();
    let mut raw_bytes = 0u64;
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let mut i = 0u64;
        let mut seq = 1;
        while i < n {
            let k = 20_000.min(n - i);
            let mut c = BatchContent {
                streams: labels.clone(),
                ..Default::default()
            };
            for j in i..i + k {
                let (stream, level, line) = line(&mut rng, j, &needles);
                let ts = t0 + j as i64 * dt;
                raw_bytes += line.len() as u64 + 1;
                serde_json::to_writer(
                    &mut json,
                    &serde_json::json!({
                        "labels": labels_json[stream as usize],
                        "ts": ts,
                        "level": level.as_str(),
                        "line": line,
                    }),
                )?;
                json.write_all(b"\n")?;
                text.write_all(line.as_bytes())?;
                text.write_all(b"\n")?;
                c.records.push(LogRecord {
                    stream,
                    time_ns: ts,
                    observed_ns: ts,
                    level,
                    template_id: 0,
                    flags: 0,
                    redacted: 0,
                    line: Bytes::from(line),
                    metadata: Default::default(),
                });
            }
            let s = store.clone();
            let id = BatchId {
                agent: "push".into(),
                epoch: 1,
                seq,
                floor: 1,
            };
            set.spawn(async move { s.write(id, c).await });
            seq += 1;
            i += k;
            while set.len() >= 4 {
                set.join_next().await.expect("non-empty")??;
            }
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        anyhow::Ok(())
    })?;
    json.flush()?;
    text.flush()?;
    drop((json, text));
    eprintln!(
        "stored {n} lines ({:.1} GB) in {:.0}s",
        raw_bytes as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
    let lc = heimdall_benches::compactor(store.clone(), &db, &state.join("segments"));
    let started = Instant::now();
    let cpu_before = heimdall_tests::cpu_secs(std::process::id()).unwrap_or(0.0);
    let conn = heimdall_store::hot::open_reader(&db)?;
    let mut moved = 0;
    for p in heimdall_store::hot::partitions(&conn)? {
        if p.end <= now - 2 * 3_600 * S && !keep_hot {
            moved += lc.compact_named(&p.name)?;
        }
    }
    lc.release_space(&tokio_util::sync::CancellationToken::new())?;
    let (secs, cpu) = (
        started.elapsed().as_secs_f64(),
        heimdall_tests::cpu_secs(std::process::id()).unwrap_or(0.0) - cpu_before,
    );
    eprintln!(
        "compacted {moved} lines in {secs:.0}s ({:.0} lines/s), using {cpu:.1} CPU-seconds ({:.0} lines per CPU-second)",
        moved as f64 / secs.max(1e-9),
        moved as f64 / cpu.max(0.01)
    );
    let started = Instant::now();
    let rolled = lc.roll_up_volume()?;
    eprintln!(
        "rolled {rolled} minutes of line counts up by the hour in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    drop(lc);
    drop(conn);
    match Arc::try_unwrap(store) {
        Ok(mut s) => s.close(),
        Err(_) => anyhow::bail!("store still shared"),
    }

    // DuckDB's copy: the same rows, sorted by stream and time, zstd Parquet.
    let started = Instant::now();
    duck(&format!(
        "con.execute(\"COPY (SELECT * FROM read_json('{}', format='newline_delimited', columns={{'labels': 'VARCHAR', 'ts': 'BIGINT', 'level': 'VARCHAR', 'line': 'VARCHAR'}}) ORDER BY labels, ts) TO '{}' (FORMAT parquet, COMPRESSION zstd)\")\nprint(0)",
        json_path.display(),
        parquet.display()
    ))?;
    std::fs::remove_file(&json_path)?;
    eprintln!(
        "DuckDB wrote {:.0} MB of Parquet in {:.0}s",
        std::fs::metadata(&parquet)?.len() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    std::fs::write(
        kept,
        serde_json::json!({"n": n, "now": now, "raw_bytes": raw_bytes, "moved": moved, "hot": keep_hot})
            .to_string(),
    )?;
    Ok((now, raw_bytes, moved))
}

/// The rows holding the needle, sorted (the first draws of the data set's generator).
fn needle_rows(n: u64) -> Vec<u64> {
    needle_rows_from(&mut fastrand::Rng::with_seed(0x5eed), n)
}

fn needle_rows_from(rng: &mut fastrand::Rng, n: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..NEEDLE_ROWS).map(|_| rng.u64(..n)).collect();
    v.sort_unstable();
    v
}

/// Lines in a log query's answer.
fn entries(v: &serde_json::Value) -> u64 {
    v["data"]["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["values"].as_array().map_or(0, Vec::len) as u64)
                .sum()
        })
        .unwrap_or(0)
}

/// One warm-up, then the median of five runs; the last answer.
fn timed(url: &str) -> anyhow::Result<(f64, serde_json::Value)> {
    let mut times = Vec::new();
    let mut last = serde_json::Value::Null;
    for i in 0..6 {
        let t = Instant::now();
        last = ureq::get(url)
            .timeout(Duration::from_secs(600))
            .call()?
            .into_json()?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok((median(times), last))
}

fn heimdall_range(
    base: &str,
    q: &str,
    start: i64,
    end: i64,
    step: Option<i64>,
    limit: usize,
) -> anyhow::Result<(f64, serde_json::Value)> {
    let mut url = format!(
        "{base}/loki/api/v1/query_range?query={}&start={start}&end={end}",
        url_encode(q)
    );
    if let Some(s) = step {
        url.push_str(&format!("&step={s}"));
    }
    if limit > 0 {
        url.push_str(&format!("&limit={limit}&direction=backward"));
    }
    timed(&url)
}

fn heimdall_instant(base: &str, q: &str, time: i64) -> anyhow::Result<(f64, serde_json::Value)> {
    timed(&format!(
        "{base}/loki/api/v1/query?query={}&time={time}",
        url_encode(q)
    ))
}

/// Runs Python with DuckDB (two threads) on `body` (`con` is the connection); its
/// last printed line.
fn duck(body: &str) -> anyhow::Result<String> {
    let script = format!(
        "import duckdb, time\ncon = duckdb.connect()\ncon.execute(\"SET threads TO 2\")\ncon.execute(\"SET enable_progress_bar = false\")\n{body}\n"
    );
    let out = std::process::Command::new(heimdall_tests::python())
        .args(["-c", &script])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned())
}

/// DuckDB's median time of five warm runs of `sql` (one row, one number), and the
/// number.
fn duck_timed(sql: &str) -> anyhow::Result<(f64, u64)> {
    let out = duck(&format!(
        "sql = {sql:?}\ncon.execute(sql).fetchall()\nts = []\nfor _ in range(5):\n    t = time.time()\n    r = con.execute(sql).fetchone()[0]\n    ts.append(time.time() - t)\nts.sort()\nprint(ts[2], int(r or 0))"
    ))?;
    let mut it = out.split_whitespace();
    let secs: f64 = it.next().unwrap_or("0").parse()?;
    let n: u64 = it.next().unwrap_or("0").parse()?;
    Ok((secs, n))
}

fn which_rg() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("rg"))
        .find(|p| p.is_file())
}

/// ripgrep's median time of five warm runs counting lines matching `pattern`; checks
/// the count.
fn rg_timed(rg: &Path, pattern: &str, file: &Path, want: u64) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for i in 0..6 {
        let t = Instant::now();
        let out = std::process::Command::new(rg)
            .args(["-c", "--no-mmap", pattern])
            .arg(file)
            .output()?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        let got: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        anyhow::ensure!(
            got == want,
            "ripgrep counted {got} lines of {pattern:?}, not {want}"
        );
    }
    Ok(median(times))
}
