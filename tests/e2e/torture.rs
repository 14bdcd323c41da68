//! Torture: hostile files, every kind of rotation and `kill -9` of both programs at
//! random moments, with a seed printed so a failure can be replayed.
//!
//! Lines of random length from 0 bytes to twice `max_line_bytes` (many over every
//! internal limit: line, template text), plain words and random bytes (invalid UTF-8,
//! carriage returns), runs of NUL bytes inside lines and between them (the holes a
//! crash leaves), files that share their first line and their first kilobytes, a binary
//! file and compressed rotated files (both skipped by the documented rules), rename,
//! copytruncate, delete-and-create, truncate-in-place and compression while writing.
//! At the end every line is stored exactly once (cut and flagged where it was over the
//! cap), compared by content through the Loki API, and no batch was dead-lettered.
//!
//! `HEIMDALL_TORTURE_SECS` sets how long the writing lasts (default 40 s, for CI; a
//! soak runs it for hours), `HEIMDALL_TORTURE_SEED` replays a run.
//!
//! The rules the test holds the agent to (README, "What the agent reads"):
//! - a line ends at a newline or at a run of NUL bytes; one trailing carriage return
//!   before a newline is dropped; pieces a NUL run makes empty are no records;
//! - a line over `max_line_bytes` is cut there and flagged `truncated`;
//! - a file is binary when a run of fewer than 8 NUL bytes is in its first 4 KiB, and
//!   compressed files are recognised by their magic number: both are skipped. So text
//!   files here get short NUL runs only after their first 4 KiB;
//! - truncating a file in place, or deleting it, loses what was not read before: the
//!   test lets the agent catch up first, as a real writer cannot guarantee.

use heimdall_tests::{
    get_json, query_count, query_lines, wait_for_count, Agent, AgentOptions, Cluster,
};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAX_LINE: usize = 16 << 10;
const AGENT: &str = "torture";
const SELECTOR: &str = r#"{agent="torture"}"#;
/// Shared by every file's first line.
const HEADER: &str = "timestamp,host,service,message";

/// The records a unit of bytes (ending with a newline) makes, as the agent reads it:
/// (bytes, cut at the limit).
fn records(unit: &[u8]) -> Vec<(Vec<u8>, bool)> {
    let body = &unit[..unit.len() - 1];
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        if body[i] == 0 {
            pieces.push(&body[start..i]);
            while i < body.len() && body[i] == 0 {
                i += 1;
            }
            start = i;
        } else {
            i += 1;
        }
    }
    pieces.push(&body[start..]);
    let last = pieces.len() - 1;
    let mut out = Vec::new();
    for (k, p) in pieces.into_iter().enumerate() {
        let nul_end = k < last;
        if p.is_empty() && (nul_end || k > 0) {
            continue;
        }
        let cut = p.len() > MAX_LINE;
        let mut b = &p[..p.len().min(MAX_LINE)];
        if !nul_end && b.last() == Some(&b'\r') {
            b = &b[..b.len() - 1];
        }
        out.push((b.to_vec(), cut));
    }
    out
}

struct LogFile {
    path: PathBuf,
    /// The writer's handle; `None` until the next write creates the file.
    file: Option<File>,
    /// Bytes in the file the handle writes to.
    size: u64,
    /// Files 1 and 3 also share a 2 KiB banner after the header.
    banner: bool,
}

struct World {
    rng: fastrand::Rng,
    seed: u64,
    files: Vec<LogFile>,
    /// Rotated files present (copies and renamed ones).
    rotated: Vec<PathBuf>,
    rotations: usize,
    seq: u64,
    /// Expected records, as the API shows them (invalid UTF-8 replaced), with counts.
    expected: BTreeMap<String, u64>,
    total: u64,
    cut: u64,
    /// What happened when, for a failure report.
    history: Vec<String>,
}

impl World {
    /// Records what `data` (whole lines) makes.
    fn expect(&mut self, data: &[u8]) {
        for unit in data.split_inclusive(|&b| b == b'\n') {
            self.expect_unit(unit);
        }
    }

    fn expect_unit(&mut self, unit: &[u8]) {
        for (b, cut) in records(unit) {
            *self
                .expected
                .entry(String::from_utf8_lossy(&b).into_owned())
                .or_default() += 1;
            self.total += 1;
            self.cut += u64::from(cut);
        }
    }

    fn words(&mut self, n: usize) -> Vec<u8> {
        const W: [&str; 12] = [
            "connection",
            "closed",
            "by",
            "peer",
            "request",
            "served",
            "user",
            "session",
            "expired",
            "cache",
            "miss",
            "retrying",
        ];
        let mut out = Vec::with_capacity(n + 12);
        while out.len() < n {
            out.extend_from_slice(W[self.rng.usize(..W.len())].as_bytes());
            out.push(b' ');
        }
        out.truncate(n);
        out
    }

    fn length(&mut self) -> usize {
        match self.rng.u32(..100) {
            0..=59 => self.rng.usize(0..120),
            60..=84 => self.rng.usize(120..4000),
            85..=96 => self.rng.usize(4000..MAX_LINE),
            _ => self.rng.usize(MAX_LINE..2 * MAX_LINE),
        }
    }

    /// One unit to append to file `f`: a line (or a few pieces), ending with a newline.
    fn unit(&mut self, f: usize) -> Vec<u8> {
        self.seq += 1;
        let id = format!("s{:08}f{f} ", self.seq);
        let past_probe = self.files[f].size > 4096 + 64;
        let mut u = Vec::new();
        match self.rng.u32(..100) {
            0..=4 => {}
            5..=49 => {
                u.extend_from_slice(id.as_bytes());
                let n = self.length();
                u.extend(self.words(n));
            }
            50..=84 => {
                u.extend_from_slice(id.as_bytes());
                let n = self.length();
                for _ in 0..n {
                    let b = self.rng.u8(1..=255);
                    u.push(if b == b'\n' { b'#' } else { b });
                }
            }
            85..=94 => {
                // A hole inside a line: two records.
                u.extend_from_slice(id.as_bytes());
                let n = self.rng.usize(0..200);
                u.extend(self.words(n));
                let hole = if past_probe && self.rng.bool() {
                    self.rng.usize(1..8)
                } else {
                    self.rng.usize(8..3000)
                };
                u.extend(std::iter::repeat_n(0u8, hole));
                let n = self.rng.usize(0..200);
                u.extend(self.words(n));
            }
            _ => {
                // A hole between lines: no record.
                let hole = self.rng.usize(8..20_000);
                u.extend(std::iter::repeat_n(0u8, hole));
            }
        }
        u.push(b'\n');
        u
    }

    /// The lines a new file starts with, written in one go with its first own line, so
    /// no file is ever just another one's beginning.
    fn head(&mut self, f: usize) -> Vec<u8> {
        let mut h = format!("{HEADER}\n").into_bytes();
        if self.files[f].banner {
            for i in 0..20 {
                h.extend_from_slice(format!("# banner {i:02} {}\n", "=".repeat(90)).as_bytes());
            }
        }
        self.seq += 1;
        h.extend_from_slice(format!("s{:08}f{f} a new file begins\n", self.seq).as_bytes());
        h
    }

    fn write(&mut self, f: usize, units: usize) {
        let mut data = Vec::new();
        if self.files[f].file.is_none() {
            let h = self.head(f);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.files[f].path)
                .unwrap();
            self.files[f].file = Some(file);
            self.files[f].size = h.len() as u64;
            self.expect(&h);
            data.extend(h);
        }
        for _ in 0..units {
            let u = self.unit(f);
            self.files[f].size += u.len() as u64;
            self.expect(&u);
            data.extend_from_slice(&u);
        }
        self.files[f]
            .file
            .as_mut()
            .expect("opened above")
            .write_all(&data)
            .unwrap();
    }

    fn rotated_name(&mut self, f: usize) -> PathBuf {
        self.rotations += 1;
        let p = PathBuf::from(format!(
            "{}.{}",
            self.files[f].path.display(),
            self.rotations
        ));
        self.rotated.push(p.clone());
        p
    }
}

/// Waits until the aggregator has every line written so far.
fn catch_up(c: &Cluster, w: &World, why: &str) {
    let got = wait_for_count(w.total, Duration::from_secs(120), || {
        query_count(&c.agg.url(), SELECTOR)
    });
    if got < w.total {
        let (wrong, _) = compare(c, w);
        report(c, w, &wrong);
        panic!(
            "seed {}: the agent did not catch up before {why}: {got} of {} lines stored; records wrong so far:\n{}",
            w.seed,
            w.total,
            wrong[..wrong.len().min(20)].join("\n")
        );
    }
}

/// The records stored other than as written (missing, doubled or never written),
/// and how many lines the aggregator holds.
fn compare(c: &Cluster, w: &World) -> (Vec<String>, usize) {
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    let lines = query_lines(&c.agg.url(), SELECTOR, 1_000_000);
    for l in &lines {
        *got.entry(l.line.clone()).or_default() += 1;
    }
    let mut wrong = Vec::new();
    for (l, n) in &w.expected {
        let g = got.get(l).copied().unwrap_or(0);
        if g != *n {
            wrong.push(format!(
                "written {n}, stored {g}: {:?}",
                l.chars().take(60).collect::<String>()
            ));
        }
    }
    for (l, g) in &got {
        if !w.expected.contains_key(l) {
            wrong.push(format!(
                "never written, stored {g}: {:?}",
                l.chars().take(60).collect::<String>()
            ));
        }
    }
    (wrong, lines.len())
}

/// Keeps the operations and the agent's and aggregator's logs of a failed run.
fn report(c: &Cluster, w: &World, wrong: &[String]) {
    if wrong.is_empty() {
        return;
    }
    let seed = w.seed;
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("torture-{seed}.log"));
    let _ = std::fs::write(&path, w.history.join("\n"));
    eprintln!("torture: the operations are in {}", path.display());
    for (from, name) in [
        (c.root.join(format!("agent-{AGENT}/agent.log")), "agent"),
        (c.root.join("aggregator.log"), "aggregator"),
    ] {
        let to = path.with_file_name(format!("torture-{seed}-{name}.log"));
        if std::fs::copy(&from, &to).is_ok() {
            eprintln!("torture: the {name}'s log is {}", to.display());
        }
    }
}

fn file_count(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn every_line_survives_hostile_input_rotations_and_kills() {
    let secs: u64 = std::env::var("HEIMDALL_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("HEIMDALL_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("torture: seed {seed} (HEIMDALL_TORTURE_SEED={seed} replays it), {secs}s of writing");
    let mut c = Cluster::start().unwrap();
    // A binary file and a compressed one in the same directory: never read.
    let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0>\0\x01\0\0\0".to_vec();
    elf.extend_from_slice(b"\n0,h,s,looks like text\n");
    std::fs::write(c.logs.join("core.bin"), elf).unwrap();
    let mut gz = b"\x1f\x8b\x08\x08\x8b\x2d\x6c\x65\x00\x03app.log\x00".to_vec();
    gz.extend_from_slice(b"compressed text must not be read\n");
    std::fs::write(c.logs.join("old.log.1.gz"), gz).unwrap();

    let opts = AgentOptions {
        include: vec![format!("{}/*", c.logs.display())],
        rotate_wait: "1s",
        files_extra: format!("max_line_bytes = \"{}KiB\"", MAX_LINE >> 10),
        extra: "[redact]\nenabled = false\n".into(),
        ..AgentOptions::default()
    };
    let mut agent: Agent = c.agent(AGENT, opts).unwrap();
    let mut w = World {
        rng: fastrand::Rng::with_seed(seed),
        seed,
        files: (0..4)
            .map(|i| LogFile {
                path: c
                    .logs
                    .join(format!("{}.log", ["app", "api", "db", "web"][i])),
                file: None,
                size: 0,
                banner: i % 2 == 1,
            })
            .collect(),
        rotated: Vec::new(),
        rotations: 0,
        seq: 0,
        expected: BTreeMap::new(),
        total: 0,
        cut: 0,
        history: Vec::new(),
    };
    let mut kills = (0u32, 0u32);
    let mut ops: BTreeMap<&str, u32> = BTreeMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let f = w.rng.usize(..w.files.len());
        let op = match w.rng.u32(..1000) {
            0..=799 => "write",
            800..=839 => "rename",
            840..=879 => "copytruncate",
            880..=894 => "delete+create",
            895..=909 => "truncate",
            910..=924 => "compress",
            925..=934 => "delete rotated",
            935..=959 => "kill agent",
            960..=974 => "kill aggregator",
            _ => "pause",
        };
        *ops.entry(op).or_default() += 1;
        if op != "write" {
            w.history.push(format!("after s{:08}: {op} f{f}", w.seq));
        }
        match op {
            "write" => {
                let n = w.rng.usize(1..30);
                w.write(f, n);
                std::thread::sleep(Duration::from_millis(w.rng.u64(1..12)));
            }
            "rename" if w.files[f].file.is_some() => {
                let to = w.rotated_name(f);
                std::fs::rename(&w.files[f].path, &to).unwrap();
                // The writer writes a little more to the old file before it reopens.
                let n = w.rng.usize(0..4);
                w.write(f, n);
                w.files[f].file = None;
            }
            "copytruncate" if w.files[f].file.is_some() => {
                let to = w.rotated_name(f);
                std::fs::copy(&w.files[f].path, &to).unwrap();
                w.files[f].file.as_ref().unwrap().set_len(0).unwrap();
                w.files[f].size = 0;
            }
            "delete+create" if w.files[f].file.is_some() => {
                catch_up(&c, &w, "a delete");
                std::fs::remove_file(&w.files[f].path).unwrap();
                w.files[f].file = None;
            }
            "truncate" if w.files[f].file.is_some() => {
                catch_up(&c, &w, "a truncation");
                w.files[f].file.as_ref().unwrap().set_len(0).unwrap();
                w.files[f].size = 0;
            }
            "compress" if !w.rotated.is_empty() => {
                catch_up(&c, &w, "a compression");
                let i = w.rng.usize(..w.rotated.len());
                let p = w.rotated.swap_remove(i);
                let data = std::fs::read(&p).unwrap();
                let mut gz = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03".to_vec();
                gz.extend_from_slice(&data[..data.len().min(100_000)]);
                std::fs::write(format!("{}.gz", p.display()), gz).unwrap();
                std::fs::remove_file(&p).unwrap();
            }
            "delete rotated" if !w.rotated.is_empty() => {
                catch_up(&c, &w, "deleting a rotated file");
                let i = w.rng.usize(..w.rotated.len());
                std::fs::remove_file(w.rotated.swap_remove(i)).unwrap();
            }
            "kill agent" => {
                kills.0 += 1;
                agent.restart().unwrap();
            }
            "kill aggregator" => {
                kills.1 += 1;
                c.agg.proc.kill9();
                c.agg.restart(&c.root, &c.pki).unwrap();
            }
            _ => std::thread::sleep(Duration::from_millis(w.rng.u64(50..300))),
        }
    }
    eprintln!(
        "torture: seed {seed}: {} records written ({} cut), {} rotations, {} agent and {} aggregator kills, {ops:?}",
        w.total, w.cut, w.rotations, kills.0, kills.1
    );
    catch_up(&c, &w, "the end");
    // Anything beyond would be a duplicate still arriving.
    std::thread::sleep(Duration::from_secs(3));
    let (wrong, stored) = compare(&c, &w);
    report(&c, &w, &wrong);
    assert!(
        wrong.is_empty(),
        "seed {seed}: {} of {} distinct records wrong (stored {} lines, wrote {}):\n{}",
        wrong.len(),
        w.expected.len(),
        stored,
        w.total,
        wrong[..wrong.len().min(20)].join("\n")
    );
    let cut = query_lines(
        &c.agg.url(),
        r#"{agent="torture"} | truncated="true""#,
        1_000_000,
    );
    assert_eq!(
        cut.len() as u64,
        w.cut,
        "seed {seed}: lines flagged truncated"
    );
    let v = get_json(&format!("{}/api/v1/agents", c.agg.url()));
    let a = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == AGENT)
        .cloned()
        .unwrap();
    assert_eq!(a["rejected_batches"], 0, "seed {seed}: {a}");
    assert_eq!(
        file_count(&agent.state_dir.join("spool/dead-letter"), "batch"),
        0,
        "seed {seed}: dead-lettered batches"
    );
}
