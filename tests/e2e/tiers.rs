//! The storage tiers: queries give the same answers whether lines are hot (SQLite),
//! warm (Parquet segments on disk) or cold (the same segments in a real S3-compatible
//! server, moto), or spread across all three, checked against a naive in-memory
//! reference; the aggregator killed in the middle of a compaction or an upload loses
//! and doubles nothing; DuckDB reads the cold segments and counts what Heimdall counts;
//! an erasure removes lines from every tier.

use heimdall_common::record::{Labels, Level, LogRecord};
use heimdall_common::wire::BatchContent;
use heimdall_logql::{parse, Query};
use heimdall_query::eval::{self, EvalRequest, Limits, Value as EvalValue};
use heimdall_query::exec::{self, LogRequest};
use heimdall_query::pipeline::base_labels;
use heimdall_store::catalog::{self, Tier};
use heimdall_store::cold::{ColdConfig, ColdStore};
use heimdall_store::hot::{self, BatchId, HotStore};
use heimdall_store::lifecycle::{Lifecycle, LifecycleConfig};
use heimdall_store::read::{Source, Tiers};
use heimdall_tests::{
    python, url_encode, wait_for_count, AgentOptions, Aggregator, Cluster, S3Server,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const S: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_040 * S;
const PARTITION: i64 = 60 * S;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn streams() -> Vec<Labels> {
    vec![
        Labels::new([("app", "a"), ("host", "h1")]),
        Labels::new([("app", "b"), ("host", "h1")]),
        Labels::new([("app", "b"), ("host", "h2")]),
    ]
}

/// A generated line: (stream, ts offset, level, bytes).
type Spec = (usize, i64, Level, Vec<u8>);

struct Setup {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    lifecycle: Lifecycle,
    tiers: Tiers,
}

fn setup(rows: &[Spec], prefix: &str, s3: &S3Server) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hot.db");
    let store = Arc::new(HotStore::open_with(&db, 100_000, PARTITION).unwrap());
    let content = BatchContent {
        streams: streams(),
        records: rows
            .iter()
            .map(|(st, off, level, line)| LogRecord {
                stream: *st as u32,
                time_ns: T0 + off,
                observed_ns: T0 + off,
                level: *level,
                template_id: 7,
                flags: 0,
                redacted: 0,
                line: bytes::Bytes::from(line.clone()),
                metadata: Default::default(),
            })
            .collect(),
        ..Default::default()
    };
    let id = BatchId {
        agent: "prop".into(),
        epoch: 1,
        seq: 1,
        floor: 1,
    };
    runtime().block_on(store.write(id, content)).unwrap();
    let index = store.index().clone();
    let cold = Arc::new(
        ColdStore::new(
            &ColdConfig {
                bucket: s3.bucket.clone(),
                prefix: prefix.to_owned(),
                endpoint: Some(s3.endpoint.clone()),
                region: "us-east-1".into(),
                access_key_id: Some("test".into()),
                secret_access_key: Some("test".into()),
                allow_http: true,
                path_style: true,
                cache_dir: dir.path().join("cache"),
                // Small enough that the cache evicts during the test.
                cache_max_bytes: 64 << 10,
            },
            runtime().handle().clone(),
        )
        .unwrap(),
    );
    let warm_dir = dir.path().join("segments");
    let lifecycle = Lifecycle {
        store,
        db_path: db.clone(),
        cfg: LifecycleConfig {
            interval: Duration::from_secs(3600),
            warm_dir: warm_dir.clone(),
            compact_after: Duration::from_secs(1 << 40),
            hot_max_rows: u64::MAX,
            // Several segments per partition.
            segment_rows: 40,
            zstd_level: 1,
            upload_after: None,
            retention: None,
            reap_grace: heimdall_store::lifecycle::REAP_GRACE,
        },
        cold: Some(cold.clone()),
    };
    std::fs::create_dir_all(&warm_dir).unwrap();
    Setup {
        _dir: dir,
        db,
        lifecycle,
        tiers: Tiers {
            warm_dir,
            cold: Some(cold),
            hot_index: Some(index),
            blooms: Default::default(),
        },
    }
}

/// Moves each partition to the tier `placement` names (0 hot, 1 warm, 2 cold).
fn place(s: &Setup, placement: &[u8]) {
    let conn = hot::open_reader(&s.db).unwrap();
    let parts = hot::partitions(&conn).unwrap();
    for (p, &where_) in parts.iter().zip(placement.iter().cycle()) {
        if where_ == 0 {
            continue;
        }
        let before: Vec<String> = catalog::all(&conn)
            .unwrap()
            .into_iter()
            .map(|x| x.name)
            .collect();
        s.lifecycle.compact_named(&p.name).unwrap();
        if where_ == 2 {
            for seg in catalog::all(&hot::open_reader(&s.db).unwrap()).unwrap() {
                if !before.contains(&seg.name) {
                    s.lifecycle.upload_named(&seg.name).unwrap();
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
struct LogCase {
    selector: &'static str,
    filter: Option<String>,
    backward: bool,
    limit: usize,
    from: i64,
    to: i64,
}

fn selector_matches(sel: &str, l: &Labels) -> bool {
    match sel {
        r#"{app="a"}"# => l.get("app") == Some("a"),
        r#"{app=~"a|b"}"# => true,
        r#"{host="h1"}"# => l.get("host") == Some("h1"),
        _ => unreachable!(),
    }
}

/// A line filter of a case: `!x` is `!= "x"`, `~x` is `|~ "x"` and anything else
/// `|= "x"`.
fn passes(filter: &Option<String>, line: &[u8]) -> bool {
    let has = |f: &str| memchr::memmem::find(line, f.as_bytes()).is_some();
    match filter {
        None => true,
        Some(f) if f.starts_with('!') => !has(&f[1..]),
        Some(f) if f.starts_with('~') => regex::bytes::Regex::new(&f[1..])
            .expect("the case's regex")
            .is_match(line),
        Some(f) => has(f),
    }
}

/// The filter in LogQL, in backquotes (a needle holds any character but a backquote).
fn filter_text(filter: &Option<String>) -> String {
    match filter {
        None => String::new(),
        Some(f) if f.starts_with('!') => format!(" != `{}`", &f[1..]),
        Some(f) if f.starts_with('~') => format!(" |~ `{}`", &f[1..]),
        Some(f) => format!(" |= `{f}`"),
    }
}

/// A short needle: 3 to 12 characters of a line, anywhere in it (inside tokens or
/// across punctuation), in the line's case or upper-cased (so mostly absent), or with
/// one character changed (a near miss).
fn short_needle(line: &[u8], at: usize, len: usize, twist: u8) -> String {
    let text: Vec<char> = String::from_utf8_lossy(line)
        .chars()
        .map(|c| if c == '`' || c.is_control() { '.' } else { c })
        .collect();
    if text.len() < 3 {
        return "abc".to_owned();
    }
    let len = len.clamp(3, text.len());
    let at = at % (text.len() - len + 1);
    let mut n: Vec<char> = text[at..at + len].to_vec();
    match twist {
        0 => {}
        1 => n.iter_mut().for_each(|c| *c = c.to_ascii_uppercase()),
        _ => n[len / 2] = if n[len / 2] == 'q' { 'z' } else { 'q' },
    }
    n.into_iter().collect()
}

/// Regexes of the kinds people write: alternations, classes, case-insensitive
/// literals, anchors, and ones with no literal to prefilter on.
const REGEXES: [&str; 8] = [
    "err(or)?: db",
    "u[0-9]+ took",
    "(?i)get /health",
    "^session for [a-z]+ on",
    "[0-9a-f]{16} done",
    "timeout|x1 x1",
    "span [0-9A-F]{3,}",
    "\\d{6} said",
];

type Grouped = BTreeMap<Labels, Vec<(i64, Vec<u8>)>>;

fn reference_log(rows: &[Spec], c: &LogCase) -> Grouped {
    let labels = streams();
    let mut hits: Vec<(i64, i64, usize)> = rows
        .iter()
        .enumerate()
        .filter(|(_, (st, off, _, line))| {
            let ts = T0 + off;
            selector_matches(c.selector, &labels[*st])
                && ts >= c.from
                && ts < c.to
                && passes(&c.filter, line)
        })
        .map(|(i, (_, off, _, _))| (T0 + off, i as i64 + 1, i))
        .collect();
    hits.sort();
    if c.backward {
        hits.reverse();
    }
    hits.truncate(c.limit);
    let mut out = Grouped::new();
    for (ts, _, i) in hits {
        let (st, _, level, line) = &rows[i];
        out.entry(base_labels(&labels[*st], &Labels::default(), *level, 0))
            .or_default()
            .push((ts, line.clone()));
    }
    out
}

fn run_log(s: &Setup, c: &LogCase) -> Grouped {
    let conn = hot::open_reader(&s.db).unwrap();
    let src = Source::hot(&conn).with_tiers(&s.tiers);
    let q =
        heimdall_logql::parse_log(&format!("{}{}", c.selector, filter_text(&c.filter))).unwrap();
    let res = exec::run_log_query(
        &src,
        &q,
        &LogRequest {
            start_ns: c.from,
            end_ns: c.to,
            limit: c.limit,
            max_bytes: usize::MAX,
            backward: c.backward,
            deadline: None,
            categorize: false,
        },
    )
    .unwrap();
    res.streams
        .into_iter()
        .map(|(l, e)| (l, e.into_iter().map(|e| (e.ts, e.line)).collect()))
        .collect()
}

fn reference_counts(
    rows: &[Spec],
    sel: &str,
    filter: &Option<String>,
    range: i64,
    times: &[i64],
) -> BTreeMap<String, Vec<f64>> {
    let labels = streams();
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (i, &t) in times.iter().enumerate() {
        for (st, off, level, line) in rows {
            let ts = T0 + off;
            if selector_matches(sel, &labels[*st])
                && passes(filter, line)
                && ts > t - range
                && ts <= t
            {
                let v = out
                    .entry(level.as_str().to_owned())
                    .or_insert_with(|| vec![f64::NAN; times.len()]);
                v[i] = if v[i].is_nan() { 1.0 } else { v[i] + 1.0 };
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn run_counts(
    s: &Setup,
    threads: usize,
    sel: &str,
    filter: &Option<String>,
    range: i64,
    start: i64,
    end: i64,
    step: i64,
) -> BTreeMap<String, Vec<f64>> {
    let conn = hot::open_reader(&s.db).unwrap();
    let src = Source::hot(&conn)
        .with_tiers(&s.tiers)
        .with_threads(threads);
    let q = format!(
        "sum by (level) (count_over_time({sel}{} [{}s]))",
        filter_text(filter),
        range / S
    );
    let Query::Metric(e) = parse(&q).unwrap() else {
        panic!()
    };
    let (v, _) = eval::evaluate(
        &src,
        &e,
        EvalRequest {
            start_ns: start,
            end_ns: end,
            step_ns: step,
            deadline: None,
            limits: Limits::default(),
        },
    )
    .unwrap();
    let EvalValue::Vector(series) = v else {
        panic!()
    };
    series
        .into_iter()
        .map(|s| (s.labels.get("level").unwrap_or("").to_owned(), s.values))
        .collect()
}

fn same(a: &BTreeMap<String, Vec<f64>>, b: &BTreeMap<String, Vec<f64>>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb
                && va
                    .iter()
                    .zip(vb)
                    .all(|(x, y)| (x.is_nan() && y.is_nan()) || x == y)
        })
}

/// Lines as logs have them, and lines that template badly: random bytes, invalid
/// UTF-8 around variables, the template block's own marker bytes, lines longer than
/// the longest templated line and lines with more variables than a template holds.
fn word() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => Just(b"GET /api 200".to_vec()),
        4 => Just(b"error: db timeout".to_vec()),
        4 => Just(b"GET /health error".to_vec()),
        4 => "[0-9a-f]{16}".prop_map(|id| format!("request req{id} done").into_bytes()),
        4 => (0u32..100_000, "[0-9A-F]{1,12}", 0u8..4).prop_map(|(n, hex, pad)| {
            format!("user u{n} took {n:0w$} ms span {hex} from 10.0.{}.{}", n % 256, n % 7, w = pad as usize)
                .into_bytes()
        }),
        // Words that vary within one shape, and free text after a header.
        4 => ("[a-z]{1,8}", "[a-z :=]{0,40}", 0u32..100_000).prop_map(|(user, tail, n)| {
            format!("session for {user} on host{n} at {:06} said {tail}", n % 240_000).into_bytes()
        }),
        1 => proptest::collection::vec(any::<u8>(), 1..200),
        1 => (0u32..1000).prop_map(|n| {
            let mut v = format!("bad {n} ").into_bytes();
            v.extend_from_slice(b"\xff\xc3 utf-8 error u");
            v.extend_from_slice(n.to_string().as_bytes());
            v
        }),
        1 => (0u32..1000).prop_map(|n| {
            let mut v = format!("marker {n} ").into_bytes();
            v.extend_from_slice(&[1, 2, 3, 4, 5]);
            v.extend_from_slice(b" error 12");
            v
        }),
        1 => (0usize..2).prop_map(|k| {
            format!("error long {}", "x1 ".repeat(if k == 0 { 300 } else { 6_000 })).into_bytes()
        }),
    ]
}

#[test]
fn queries_agree_across_hot_warm_and_cold() {
    // One S3 server for every case (each case has its own prefix); dropped, and so
    // stopped, when the test ends.
    let s3dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(s3dir.path(), "heimdall-prop").unwrap();
    // 12 cases in the suite; `PROPTEST_CASES` runs more.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec((0usize..3, 0i64..300 * S, 0u8..7, word()), 1..250),
        proptest::collection::vec(0u8..3, 5),
        proptest::collection::vec(
            (
                prop_oneof![
                    Just(r#"{app="a"}"#),
                    Just(r#"{app=~"a|b"}"#),
                    Just(r#"{host="h1"}"#)
                ],
                0u8..7,
                any::<bool>(),
                1usize..60,
                0i64..300,
                0i64..300,
                any::<prop::sample::Index>(),
                (0usize..400, 3usize..13, 0u8..3),
            ),
            4,
        ),
    );
    let case_no = std::sync::atomic::AtomicUsize::new(0);
    // How many cases had segments in each tier, and lines left hot.
    let (warm, cold, mixed) = (
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    );
    runner
        .run(&strategy, |(specs, placement, cases)| {
            let rows: Vec<Spec> = specs
                .into_iter()
                .map(|(st, off, lv, w)| (st, off, Level::from_u8(lv).unwrap(), w))
                .collect();
            let n = case_no.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let s = setup(&rows, &format!("prop-{n}-{:08x}", fastrand::u32(..)), &s3);
            let log_cases: Vec<LogCase> = cases
                .iter()
                .map(|(sel, f, backward, limit, a, b, pick, (at, len, twist))| {
                    let filter = match f {
                        0 => None,
                        1 => Some("error".to_owned()),
                        2 => Some("!GET".to_owned()),
                        4 => Some(short_needle(
                            &rows[pick.index(rows.len())].3,
                            *at,
                            *len,
                            *twist,
                        )),
                        5 => Some(format!("~{}", REGEXES[*at % REGEXES.len()])),
                        6 => Some(format!(
                            "!{}",
                            short_needle(&rows[pick.index(rows.len())].3, *at, *len, *twist)
                        )),
                        _ => {
                            // A rare token: the id of one line (bloom filters prune the rest).
                            let line = String::from_utf8_lossy(&rows[pick.index(rows.len())].3)
                                .into_owned();
                            let words: Vec<&str> = line
                                .split(' ')
                                .filter(|w| {
                                    !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric())
                                })
                                .collect();
                            Some(
                                words
                                    .get(1)
                                    .or(words.first())
                                    .copied()
                                    .unwrap_or("done")
                                    .to_owned(),
                            )
                        }
                    };
                    let (from, to) = (T0 + a.min(b) * S, T0 + (a.max(b) + 1) * S);
                    LogCase {
                        selector: sel,
                        filter,
                        backward: *backward,
                        limit: *limit,
                        from,
                        to,
                    }
                })
                .collect();
            let before: Vec<Grouped> = log_cases.iter().map(|c| run_log(&s, c)).collect();
            place(&s, &placement);
            // In a third of the cases the line counts are rolled up by the hour too.
            if placement[1] == 2 {
                assert!(s.lifecycle.roll_up_volume().unwrap() > 0);
            }
            let conn = hot::open_reader(&s.db).unwrap();
            let segs = catalog::all(&conn).unwrap();
            let tiers: Vec<Tier> = segs.iter().map(|x| x.tier).collect();
            let hot_left = hot::count_rows(&conn).unwrap();
            let has = |t: Tier| tiers.contains(&t);
            if has(Tier::Warm) {
                warm.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            if has(Tier::Cold) {
                cold.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            if has(Tier::Warm) && has(Tier::Cold) && hot_left > 0 {
                mixed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            for (c, was) in log_cases.iter().zip(&before) {
                let want = reference_log(&rows, c);
                let got = run_log(&s, c);
                prop_assert_eq!(was, &want, "all hot: {:?}", c);
                prop_assert_eq!(
                    &got,
                    &want,
                    "placement {:?}, tiers {:?}: {:?}",
                    placement,
                    tiers,
                    c
                );
            }
            // Metric queries with the same filters, over a random range and step, read
            // serially and with a worker per segment: the same answer.
            for (c, (sel, _, _, _, a, b, _, (at, ..))) in log_cases.iter().zip(&cases) {
                let filter = &c.filter;
                let step = (1 + *at as i64 % 60) * S;
                let range = (1 + (a + b) % 120) * S;
                let (start, end) = (c.from, c.to);
                let times: Vec<i64> = (0..)
                    .map(|i| start + i * step)
                    .take_while(|t| *t <= end)
                    .collect();
                let want = reference_counts(&rows, sel, filter, range, &times);
                for threads in [1, 4] {
                    let got = run_counts(&s, threads, sel, filter, range, start, end, step);
                    prop_assert!(
                        same(&got, &want),
                        "{} {:?} ({} threads): {:?} vs {:?}",
                        sel,
                        filter,
                        threads,
                        got,
                        want
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    let load = |a: &std::sync::atomic::AtomicUsize| a.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        load(&warm) > 0 && load(&cold) > 0 && load(&mixed) > 0,
        "cases with warm {}, cold {}, all three tiers {}",
        load(&warm),
        load(&cold),
        load(&mixed)
    );
}

fn cold_config(s3: &S3Server, prefix: &str, upload_after: &str) -> String {
    format!(
        "[warm]\ncompact_after = \"1m\"\ninterval = \"200ms\"\nsegment_rows = 1000\n[store]\npartition = \"1m\"\n[cold]\nbucket = \"{}\"\nprefix = \"{prefix}\"\nendpoint = \"{}\"\naccess_key_id = \"test\"\nsecret_access_key_file = {:?}\nupload_after = \"{upload_after}\"\n",
        s3.bucket,
        s3.endpoint,
        s3.secret_file.display().to_string()
    )
}

fn old_lines(n: usize, minutes_ago: i64, tag: &str) -> String {
    let now = heimdall_common::record::now_ns() / S;
    let mut text = String::new();
    for i in 0..n {
        // Timestamps spread over a few minutes well in the past: old partitions.
        let t = now - minutes_ago * 60 + (i as i64 % 180);
        let ts = time::OffsetDateTime::from_unix_timestamp(t)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        text.push_str(&format!(
            "{ts} INFO {tag} line {i} user=u{} took {}ms\n",
            i % 97,
            i % 500
        ));
    }
    text
}

fn query_count(base: &str, q: &str) -> u64 {
    let url = format!(
        "{base}/loki/api/v1/query?query={}&time={}",
        url_encode(q),
        heimdall_common::record::now_ns()
    );
    let v: serde_json::Value = ureq::get(&url).call().unwrap().into_json().unwrap();
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

fn distinct_lines(db: &Path, base: &str) -> (u64, u64) {
    // Every line once: a distinct count over the API (all tiers) equals the total.
    let url = format!(
        "{base}/loki/api/v1/query_range?query={}&start=0&end={}&limit=5000&direction=forward",
        url_encode(r#"{host="tier-a"}"#),
        heimdall_common::record::now_ns()
    );
    let v: serde_json::Value = ureq::get(&url).call().unwrap().into_json().unwrap();
    let mut all = Vec::new();
    for s in v["data"]["result"].as_array().unwrap() {
        for e in s["values"].as_array().unwrap() {
            all.push(e[1].as_str().unwrap().to_owned());
        }
    }
    let total = all.len() as u64;
    all.sort();
    all.dedup();
    let _ = db;
    (total, all.len() as u64)
}

fn segments(base: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = ureq::get(&format!("{base}/api/v1/admin/segments"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    v["data"].as_array().unwrap().clone()
}

#[test]
fn killed_during_compaction_and_upload_loses_and_doubles_nothing() {
    let s3dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(s3dir.path(), "heimdall-crash").unwrap();
    let mut c = Cluster::start().unwrap();
    let extra = cold_config(&s3, "agg-crash", "1m");
    // Restart the cluster's aggregator with the tiers configured and a failpoint that
    // aborts right after the segment files are written and verified.
    c.agg.proc.kill9();
    let mut agg = Aggregator::start_env(
        &c.root,
        &c.pki,
        Some(c.agg.addrs),
        &extra,
        &[("HEIMDALL_FAILPOINT", "compact-written")],
    )
    .unwrap();
    let _agent = c.agent("tier-a", AgentOptions::default()).unwrap();
    std::fs::write(c.logs.join("old.log"), old_lines(3000, 30, "crash")).unwrap();
    // The aggregator dies at the failpoint once the lines are stored and it compacts.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while agg.proc.running() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !agg.proc.running(),
        "the failpoint did not fire:\n{}",
        agg.proc.log_tail(30)
    );
    assert!(
        agg.proc.log_text().contains("failpoint reached"),
        "{}",
        agg.proc.log_tail(30)
    );
    // Next, die between the upload and its commit.
    agg = Aggregator::start_env(
        &c.root,
        &c.pki,
        Some(agg.addrs),
        &extra,
        &[("HEIMDALL_FAILPOINT", "upload-copied")],
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while agg.proc.running() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !agg.proc.running(),
        "the upload failpoint did not fire:\n{}",
        agg.proc.log_tail(30)
    );
    // And once more with no failpoint: everything finishes.
    agg = Aggregator::start_with(&c.root, &c.pki, Some(agg.addrs), &extra).unwrap();
    let base = agg.url();
    let all_cold = || {
        let segs = segments(&base);
        let hot_left = query_count(&base, r#"sum(count_over_time({host="tier-a"}[2h]))"#);
        if !segs.is_empty()
            && segs
                .iter()
                .all(|s| s["tier"] == "cold" && s["state"] == "active")
        {
            hot_left
        } else {
            0
        }
    };
    assert_eq!(
        wait_for_count(3000, Duration::from_secs(90), all_cold),
        3000,
        "segments: {:?}\n{}",
        segments(&base),
        agg.proc.log_tail(40)
    );
    let (total, distinct) = distinct_lines(&agg.db(), &base);
    assert_eq!((total, distinct), (3000, 3000), "every line exactly once");
    // Nothing is left in the hot tier, and the bucket holds exactly the catalog's objects.
    let conn = hot::open_reader(&agg.db()).unwrap();
    assert_eq!(hot::count_rows(&conn).unwrap(), 0);
    let mut keys = s3.keys("agg-crash/segments/").unwrap();
    let mut names: Vec<String> = segments(&base)
        .iter()
        .map(|s| format!("agg-crash/segments/{}", s["name"].as_str().unwrap()))
        .collect();
    keys.sort();
    names.sort();
    assert_eq!(keys, names, "no orphan objects");
    let local: Vec<_> = std::fs::read_dir(agg.state_dir.join("segments"))
        .unwrap()
        .collect();
    assert!(
        local.is_empty(),
        "local copies of cold segments are removed: {local:?}"
    );
}

#[test]
fn duckdb_counts_cold_segments_like_heimdall_and_erasure_reaches_every_tier() {
    let s3dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(s3dir.path(), "heimdall-duck").unwrap();
    let extra = cold_config(&s3, "agg-duck", "1m");
    let c = Cluster::start_with(&extra).unwrap();
    let base = c.agg.url();
    let _agent = c.agent("tier-a", AgentOptions::default()).unwrap();
    std::fs::write(c.logs.join("old.log"), old_lines(2000, 30, "duck")).unwrap();
    let cold_rows = || {
        let segs = segments(&base);
        if segs.iter().all(|s| s["tier"] == "cold") {
            segs.iter().map(|s| s["rows"].as_u64().unwrap()).sum()
        } else {
            0
        }
    };
    assert_eq!(
        wait_for_count(2000, Duration::from_secs(90), cold_rows),
        2000,
        "{}",
        c.agg.proc.log_tail(30)
    );
    // New lines stay hot: the answer spans the hot and cold tiers.
    std::fs::write(
        c.logs.join("new.log"),
        "INFO duck fresh line user=u5 done\n".repeat(10),
    )
    .unwrap();
    let heimdall = || {
        query_count(
            &base,
            r#"sum(count_over_time({host="tier-a"} |= "duck" [2h]))"#,
        )
    };
    assert_eq!(
        wait_for_count(2010, Duration::from_secs(30), heimdall),
        2010
    );
    let by_user = query_count(
        &base,
        r#"sum(count_over_time({host="tier-a"} |= "user=u5 " [2h]))"#,
    );

    // A query's stats say what it read, and what the needle filters let it skip.
    let stats = |q: &str| -> serde_json::Value {
        let url = format!(
            "{base}/loki/api/v1/query?query={}&time={}",
            url_encode(q),
            heimdall_common::record::now_ns()
        );
        let v: serde_json::Value = ureq::get(&url).call().unwrap().into_json().unwrap();
        v["data"]["stats"].clone()
    };
    let all = stats(r#"sum(count_over_time({host="tier-a"} |= "duck" [2h]))"#);
    assert!(
        all["summary"]["totalLinesProcessed"].as_u64().unwrap() >= 2010,
        "{all}"
    );
    assert!(
        all["heimdall"]["segmentsRead"].as_u64().unwrap() >= 1,
        "{all}"
    );
    assert!(
        all["heimdall"]["rowGroupsRead"].as_u64().unwrap() >= 1,
        "{all}"
    );
    assert_eq!(all["heimdall"]["segmentsPruned"], 0, "{all}");
    let none = stats(r#"sum(count_over_time({host="tier-a"} |= "zebra-crossing" [2h]))"#);
    assert_eq!(none["heimdall"]["segmentsRead"], 0, "{none}");
    assert!(
        none["heimdall"]["segmentsPruned"].as_u64().unwrap() >= 1,
        "{none}"
    );
    assert!(
        none["summary"]["totalLinesProcessed"].as_u64().unwrap() <= 10,
        "only hot lines are read: {none}"
    );

    // DuckDB reads the objects as they are in the bucket: every row with its labels,
    // time and level; the lines stored as templates and variables it reads after
    // `heimdall-aggregator export-segments` rewrote the segments with lines whole.
    let script = r#"
import sys, boto3, duckdb, os, subprocess, tempfile
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
d = tempfile.mkdtemp()
e = tempfile.mkdtemp()
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=sys.argv[2], Prefix="agg-duck/segments/")["Contents"]]
for k in keys:
    s3.download_file(sys.argv[2], k, os.path.join(d, os.path.basename(k)))
con = duckdb.connect()
rows = con.execute(f"SELECT count(*) FROM read_parquet('{d}/*.parquet') WHERE labels LIKE '%tier-a%'").fetchone()[0]
subprocess.run([sys.argv[3], "export-segments", "--out", e] + [os.path.join(d, f) for f in os.listdir(d)], check=True, stdout=subprocess.DEVNULL)
total = con.execute(f"SELECT count(*) FROM read_parquet('{e}/*.parquet') WHERE line LIKE '%duck%'").fetchone()[0]
u5 = con.execute(f"SELECT count(*) FROM read_parquet('{e}/*.parquet') WHERE contains(line, 'user=u5 ')").fetchone()[0]
host = con.execute(f"SELECT count(DISTINCT labels) FROM read_parquet('{e}/*.parquet') WHERE labels LIKE '%tier-a%'").fetchone()[0]
print(total, u5, host, rows)
"#;
    let out = std::process::Command::new(python())
        .args(["-c", script, &s3.endpoint, &s3.bucket])
        .arg(&heimdall_tests::bins().aggregator)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(nums[0], 2000, "DuckDB counts the cold lines");
    // Heimdall's count spans hot and cold: the 10 fresh lines with user=u5 are hot.
    assert_eq!(
        nums[1] + 10,
        by_user,
        "DuckDB and Heimdall agree on a filter"
    );
    assert_eq!(nums[2], 1, "one stream");
    assert_eq!(
        nums[3], 2000,
        "DuckDB counts the segments' rows as they are"
    );

    // A second aggregator with an empty database takes over the prefix: its catalog
    // is rebuilt from the bucket listing and it answers over the cold lines.
    let bdir = c.root.join("second");
    let mut b = Aggregator::start_with(&bdir, &c.pki, None, &extra).unwrap();
    b.proc.terminate(Duration::from_secs(10)).unwrap();
    let out = std::process::Command::new(&heimdall_tests::bins().aggregator)
        .args(["rebuild-catalog", "--config", b.config.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("(2000 lines)"), "{said}");
    b.restart(&bdir, &c.pki).unwrap();
    let q = r#"sum(count_over_time({host="tier-a"} |= "duck" [2h]))"#;
    assert_eq!(query_count(&b.url(), q), 2000, "{}", b.proc.log_tail(20));
    assert_eq!(
        query_count(
            &b.url(),
            r#"sum(count_over_time({host="tier-a"} |= "user=u5 " [2h]))"#
        ),
        nums[1]
    );
    b.proc.terminate(Duration::from_secs(10)).unwrap();

    // Erase user u5's lines everywhere.
    let r: serde_json::Value = ureq::post(&format!("{base}/api/v1/admin/erase"))
        .send_json(serde_json::json!({"query": r#"{host="tier-a"} |= "user=u5 ""#}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(r["data"]["state"], "done", "{r}");
    assert_eq!(r["data"]["lines"].as_u64().unwrap(), by_user);
    assert_eq!(
        query_count(
            &base,
            r#"sum(count_over_time({host="tier-a"} |= "user=u5 " [2h]))"#
        ),
        0
    );
    assert_eq!(heimdall(), 2010 - by_user, "only the erased lines are gone");
}

/// The hot database returns the space of the partitions compaction emptied: its file
/// shrinks to a fraction of its peak once the lines are in warm segments (they are all
/// there), and a database made before space was returned is converted when it is
/// opened mostly free.
#[test]
fn hot_database_shrinks_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hot.db");
    let store = Arc::new(HotStore::open_with(&db, 100_000, PARTITION).unwrap());
    let (parts, per) = (6i64, 8_000usize);
    for p in 0..parts {
        let content = BatchContent {
            streams: streams(),
            records: (0..per)
                .map(|i| LogRecord {
                    stream: (i % 3) as u32,
                    time_ns: T0 + p * PARTITION + i as i64 * 1_000_000,
                    observed_ns: T0,
                    level: Level::Info,
                    template_id: 7,
                    flags: 0,
                    redacted: 0,
                    line: bytes::Bytes::from(format!(
                        "request {p}-{i} served in {i} ms by worker {} {}",
                        i % 17,
                        "x".repeat(200)
                    )),
                    metadata: Default::default(),
                })
                .collect(),
            ..Default::default()
        };
        let id = BatchId {
            agent: "space".into(),
            epoch: 1,
            seq: p as u64 + 1,
            floor: 1,
        };
        runtime().block_on(store.write(id, content)).unwrap();
    }
    store.checkpoint_blocking().unwrap();
    let peak = std::fs::metadata(&db).unwrap().len();
    let warm_dir = dir.path().join("segments");
    std::fs::create_dir_all(&warm_dir).unwrap();
    let lifecycle = Lifecycle {
        store: store.clone(),
        db_path: db.clone(),
        cfg: LifecycleConfig {
            interval: Duration::from_secs(3600),
            warm_dir,
            compact_after: Duration::from_secs(0),
            hot_max_rows: u64::MAX,
            segment_rows: 100_000,
            zstd_level: 1,
            upload_after: None,
            retention: None,
            reap_grace: heimdall_store::lifecycle::REAP_GRACE,
        },
        cold: None,
    };
    let conn = hot::open_reader(&db).unwrap();
    for p in hot::partitions(&conn).unwrap() {
        lifecycle.compact_named(&p.name).unwrap();
    }
    drop(conn);
    let returned = lifecycle
        .release_space(&tokio_util::sync::CancellationToken::new())
        .unwrap();
    let after = std::fs::metadata(&db).unwrap().len();
    eprintln!("hot.db: {peak} bytes at its peak, {after} after compaction");
    assert!(
        after * 4 < peak,
        "hot.db {peak} bytes at its peak, {after} after compaction ({returned} returned)"
    );
    let conn = hot::open_reader(&db).unwrap();
    let warm = catalog::totals(&conn).unwrap()["warm"];
    assert_eq!(
        warm.1,
        parts as u64 * per as u64,
        "every line is in a segment"
    );
    drop(conn);
    drop(lifecycle);
    match Arc::try_unwrap(store) {
        Ok(mut s) => s.close(),
        Err(_) => panic!("store still shared"),
    }

    // A database made without incremental vacuum (as before), mostly free.
    let old = dir.path().join("old.db");
    {
        let c = rusqlite::Connection::open(&old).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE filler(x BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000)
             INSERT INTO filler SELECT randomblob(1000) FROM n;
             DROP TABLE filler;
             PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .unwrap();
        let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, 0);
    }
    let before = std::fs::metadata(&old).unwrap().len();
    let mut s = HotStore::open(&old, 1000).unwrap();
    s.close();
    let c = rusqlite::Connection::open(&old).unwrap();
    let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, 2, "converted to incremental vacuum");
    let now = std::fs::metadata(&old).unwrap().len();
    assert!(
        now * 4 < before,
        "{before} bytes before, {now} after conversion"
    );
}
