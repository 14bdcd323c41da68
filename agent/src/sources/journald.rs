//! The journal source: the systemd journal, read through `journalctl` as a child
//! process (`--output=json --follow`), the way Vector does it, without C bindings.
//!
//! Owns: the `journalctl` command line (unit matches, start position, `--after-cursor`
//! from the checkpoint), its restarts with backoff when it exits, turning entries into
//! lines (fields to labels, `PRIORITY` to level, `__REALTIME_TIMESTAMP` to event time,
//! binary `MESSAGE` byte arrays kept as bytes), and unit exclusion (journalctl has no
//! negative match). Does not own durability: each chunk carries the cursor of its
//! last entry as a checkpoint, made durable by the spool like a file offset.
//!
//! Stream labels: `source="journald"` (or `journald:<directory>`), `service` (the
//! unit, or the syslog identifier for entries without one), `syslog_identifier`, and
//! `hostname` (`_HOSTNAME`, the host that wrote the entry, which differs from `host`
//! for journals forwarded with systemd-journal-remote).

use super::{now_ns, redact_line, send, Checkpoint, Chunk, FileKey, Line};
use crate::config::{JournalStart, Journald};
use crate::pipeline::parse::{level_from_syslog, Parser};
use bytes::Bytes;
use heimdall_common::record::{flags, Labels};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest message kept; longer ones are cut and flagged `truncated`.
const MAX_MESSAGE: usize = 256 << 10;
/// Most entries in one chunk.
const CHUNK_ENTRIES: usize = 1024;
/// Most message bytes in one chunk.
const CHUNK_BYTES: usize = 512 << 10;
/// Most distinct label sets remembered (units come and go); beyond, the map is reset.
const MAX_STREAMS: usize = 4096;
/// A `journalctl` that ran this long before exiting restarts without backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// One journal entry, decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub cursor: String,
    pub time_ns: i64,
    pub unit: Option<String>,
    pub identifier: Option<String>,
    pub hostname: Option<String>,
    pub priority: Option<u8>,
    pub message: Vec<u8>,
}

/// Why a line of `journalctl --output=json` is not an entry.
#[derive(Debug, thiserror::Error)]
pub enum BadEntry {
    /// The line is not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(#[from] serde_json::Error),
    /// The entry has no cursor, so it could not be resumed from.
    #[error("entry without __CURSOR")]
    NoCursor,
}

/// Decodes one line of `journalctl --output=json`.
///
/// # Errors
/// [`BadEntry`] saying what is wrong with the line.
pub fn decode_entry(line: &[u8]) -> Result<Entry, BadEntry> {
    let v: serde_json::Map<String, Value> = serde_json::from_slice(line)?;
    let text = |k: &str| -> Option<String> {
        match v.get(k)? {
            Value::String(s) => Some(s.clone()),
            // A field repeated in one entry: the first value.
            Value::Array(a) => a.first().and_then(|x| x.as_str()).map(str::to_owned),
            _ => None,
        }
    };
    let cursor = text("__CURSOR").ok_or(BadEntry::NoCursor)?;
    let time_ns = text("__REALTIME_TIMESTAMP")
        .and_then(|s| s.parse::<i64>().ok())
        .map_or(0, |us| us.saturating_mul(1000));
    let message = match v.get("MESSAGE") {
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(Value::Array(a)) => bytes_of(a)
            .or_else(|| {
                a.first().and_then(|f| match f {
                    Value::String(s) => Some(s.clone().into_bytes()),
                    Value::Array(b) => bytes_of(b),
                    _ => None,
                })
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Ok(Entry {
        cursor,
        time_ns,
        unit: text("_SYSTEMD_UNIT"),
        identifier: text("SYSLOG_IDENTIFIER"),
        hostname: text("_HOSTNAME"),
        priority: text("PRIORITY").and_then(|p| p.parse().ok()),
        message,
    })
}

/// A binary field: an array of byte values.
fn bytes_of(a: &[Value]) -> Option<Vec<u8>> {
    a.iter()
        .map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
        .collect()
}

/// The `journalctl` arguments for a start at `cursor` (or the configured start).
pub fn command_args(cfg: &Journald, cursor: Option<&str>) -> Vec<String> {
    let mut a = vec![
        "--output=json".to_owned(),
        "--follow".to_owned(),
        "--no-pager".to_owned(),
        // Without --all, fields over 4096 bytes come out as null.
        "--all".to_owned(),
        "--quiet".to_owned(),
    ];
    if let Some(d) = &cfg.directory {
        a.push(format!("--directory={}", d.display()));
    }
    match cursor {
        // --follow alone would show only the last 10 entries after the cursor.
        Some(c) => {
            a.push(format!("--after-cursor={c}"));
            a.push("--lines=all".to_owned());
        }
        None => match cfg.read_from {
            JournalStart::Beginning => a.push("--lines=all".to_owned()),
            JournalStart::Boot => {
                a.push("--boot".to_owned());
                a.push("--lines=all".to_owned());
            }
            JournalStart::End => a.push("--lines=0".to_owned()),
        },
    }
    // Matches on one field are ORed.
    for u in &cfg.include_units {
        a.push(format!("_SYSTEMD_UNIT={u}"));
    }
    a
}

/// Unit, syslog identifier and hostname: what tells journal streams apart.
type StreamKey = (Option<String>, Option<String>, Option<String>);

/// The synchronous part of the journal source: entries in, chunks out.
pub struct JournalReader {
    cfg: Journald,
    base: Labels,
    source: String,
    key: FileKey,
    parser: Parser,
    streams: HashMap<StreamKey, Arc<Labels>>,
    /// Cursor of the last entry read (handed on or excluded).
    pub cursor: Option<String>,
    open: Option<Chunk>,
    open_bytes: usize,
    pub entries: u64,
    pub excluded: u64,
    pub bad: u64,
    redact_stats: crate::pipeline::redact::Stats,
    /// Template mining; `None` when off.
    miner: Option<crate::pipeline::template::SourceMiner>,
}

impl JournalReader {
    /// A reader resuming at the checkpointed cursor among `checkpoints`, if any.
    pub fn new(cfg: Journald, base_labels: &Labels, checkpoints: &[Checkpoint]) -> JournalReader {
        let source = match &cfg.directory {
            Some(d) => format!("journald:{}", d.display()),
            None => "journald".to_owned(),
        };
        let key = FileKey::journal(&source);
        let cursor = checkpoints
            .iter()
            .find(|c| c.key == key && !c.cursor.is_empty())
            .map(|c| c.cursor.clone());
        let mut base = base_labels.clone();
        for (k, v) in &cfg.labels {
            base.insert(k.clone(), v.clone());
        }
        base.insert("source", super::redact_label(None, &source));
        JournalReader {
            cfg,
            base,
            source,
            key,
            parser: Parser::default(),
            streams: HashMap::new(),
            cursor,
            open: None,
            open_bytes: 0,
            entries: 0,
            excluded: 0,
            bad: 0,
            redact_stats: crate::pipeline::redact::Stats::default(),
            miner: None,
        }
    }

    /// Mines the templates of journal entries with `miner`.
    pub fn with_miner(mut self, miner: crate::pipeline::template::SourceMiner) -> JournalReader {
        self.miner = Some(miner);
        self
    }

    /// The source key of the journal's template state.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn stream(&mut self, e: &Entry) -> Arc<Labels> {
        let k = (e.unit.clone(), e.identifier.clone(), e.hostname.clone());
        if let Some(s) = self.streams.get(&k) {
            return s.clone();
        }
        if self.streams.len() >= MAX_STREAMS {
            self.streams.clear();
        }
        let mut l = self.base.clone();
        let set = |l: &mut Labels, name: &str, v: &Option<String>| {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                if !self.cfg.labels.contains_key(name) {
                    l.insert(name, super::redact_label(self.cfg.redact.as_deref(), v));
                }
            }
        };
        let service = e.unit.clone().or_else(|| e.identifier.clone());
        set(&mut l, "service", &service);
        set(&mut l, "syslog_identifier", &e.identifier);
        set(&mut l, "hostname", &e.hostname);
        let s = Arc::new(l);
        self.streams.insert(k, s.clone());
        s
    }

    /// Takes one line of `journalctl` output; full chunks go to `out`.
    pub fn push_line(&mut self, raw: &[u8], out: &mut Vec<Chunk>) {
        let e = match decode_entry(raw) {
            Ok(e) => e,
            Err(reason) => {
                self.bad += 1;
                metrics::counter!("heimdall_agent_journal_bad_entries_total").increment(1);
                tracing::warn!(%reason, "skipping a journal line that is not an entry");
                return;
            }
        };
        self.cursor = Some(e.cursor.clone());
        if e.unit
            .as_ref()
            .is_some_and(|u| self.cfg.exclude_units.iter().any(|x| x == u))
        {
            self.excluded += 1;
            return;
        }
        self.entries += 1;
        let stream = self.stream(&e);
        let observed = now_ns();
        let mut fl = 0;
        let mut msg = e.message;
        if msg.len() > MAX_MESSAGE {
            msg.truncate(MAX_MESSAGE);
            fl |= flags::TRUNCATED;
        }
        if std::str::from_utf8(&msg).is_err() {
            fl |= flags::INVALID_UTF8;
        }
        let level = match e.priority.and_then(level_from_syslog) {
            Some(l) => l,
            None => self.parser.parse(&msg, observed).level,
        };
        let mut line = Line::new(Bytes::from(msg), fl);
        line.time_ns = e.time_ns;
        line.level = level;
        let keep = redact_line(
            self.cfg.redact.as_deref(),
            &mut line,
            &mut self.redact_stats,
        );
        if self
            .open
            .as_ref()
            .is_some_and(|c| !Arc::ptr_eq(&c.stream, &stream))
            || self.open_bytes >= CHUNK_BYTES
            || self
                .open
                .as_ref()
                .is_some_and(|c| c.lines.len() >= CHUNK_ENTRIES)
        {
            self.flush(out);
        }
        let cp = self.checkpoint(e.cursor);
        let policy = self.cfg.policy.clone();
        let c = self.open.get_or_insert_with(|| Chunk {
            stream,
            observed_ns: observed,
            lines: Vec::new(),
            checkpoint: cp.clone(),
            moved: Vec::new(),
            templates: Vec::new(),
            policy,
        });
        if keep {
            if let Some(m) = self.miner.as_mut() {
                m.tag(&mut line, &mut c.templates);
            }
            self.open_bytes += line.bytes.len();
            c.lines.push(line);
        } else {
            // Read, then dropped by a redaction rule: read all the same, as for files.
            metrics::counter!("heimdall_agent_lines_read_total").increment(1);
        }
        c.checkpoint = cp;
    }

    /// Where reading stands: the cursor of the last entry read.
    pub fn position(&self) -> Option<Checkpoint> {
        self.cursor.clone().map(|c| self.checkpoint(c))
    }

    fn checkpoint(&self, cursor: String) -> Checkpoint {
        Checkpoint {
            key: self.key,
            offset: 0,
            tail: 0,
            source: self.source.clone(),
            updated_ns: now_ns(),
            cursor,
        }
    }

    /// Hands on the open chunk.
    pub fn flush(&mut self, out: &mut Vec<Chunk>) {
        if let Some(r) = self.cfg.redact.as_deref() {
            self.redact_stats.flush(r);
        }
        if let Some(m) = self.miner.as_mut() {
            m.tick();
        }
        if let Some(c) = self.open.take() {
            metrics::counter!("heimdall_agent_lines_read_total").increment(c.lines.len() as u64);
            metrics::counter!("heimdall_agent_read_bytes_total").increment(self.open_bytes as u64);
            out.push(c);
        }
        self.open_bytes = 0;
    }

    /// A chunk without lines that moves the checkpoint to the last excluded entry, so a
    /// long run of excluded entries is not read again after a restart.
    pub fn position_only(&self) -> Option<Chunk> {
        let cursor = self.cursor.clone()?;
        Some(Chunk {
            stream: Arc::new(self.base.clone()),
            observed_ns: now_ns(),
            lines: Vec::new(),
            checkpoint: self.checkpoint(cursor),
            moved: Vec::new(),
            templates: Vec::new(),
            policy: self.cfg.policy.clone(),
        })
    }
}

/// Runs the journal source on the calling thread until `shutdown`: starts
/// `journalctl`, reads its entries, restarts it with backoff when it exits. Every
/// entry read is handed on before it returns the reader, whose cursor says where
/// reading stands (a reload resumes there).
///
/// `shutdown` is cancelled by a reload as well as at shutdown; `root` only at shutdown.
/// Entries read are dropped only at shutdown (they were never spooled and are read
/// again after the restart), never at a reload.
pub fn run(
    mut reader: JournalReader,
    tx: mpsc::Sender<Chunk>,
    shutdown: CancellationToken,
    root: CancellationToken,
) -> JournalReader {
    let mut attempt = 0u32;
    let mut warned_missing = false;
    while !shutdown.is_cancelled() {
        let args = command_args(&reader.cfg, reader.cursor.as_deref());
        tracing::debug!(?args, "starting journalctl");
        let child = Command::new(&reader.cfg.journalctl)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                if reader.cfg.required || !warned_missing {
                    tracing::error!(program = %reader.cfg.journalctl.display(), error = %e, "cannot start journalctl; retrying");
                    warned_missing = true;
                }
                metrics::counter!("heimdall_agent_journal_restarts_total").increment(1);
                if !pause(
                    &shutdown,
                    super::super::ship::backoff(attempt, reader.cfg.max_backoff),
                ) {
                    return reader;
                }
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        let started = Instant::now();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let child = Arc::new(Mutex::new(child));
        // Shutdown kills the child, which ends the blocking read below.
        let killer = {
            let child = child.clone();
            let token = shutdown.clone();
            std::thread::spawn(move || {
                while !token.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(100));
                    let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        return;
                    }
                }
                let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
                let _ = c.kill();
            })
        };
        let errs = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stderr).take(64 << 10).read_to_string(&mut s);
            s
        });
        let had_cursor = reader.cursor.is_some();
        let ok = pump(&mut reader, stdout, &tx, &shutdown, &root);
        let status = {
            let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
            let _ = c.kill();
            c.wait()
        };
        let _ = killer.join();
        let stderr_text = errs.join().unwrap_or_default();
        if !ok || shutdown.is_cancelled() {
            return reader;
        }
        let msg = stderr_text.trim();
        metrics::counter!("heimdall_agent_journal_restarts_total").increment(1);
        if had_cursor && msg.contains("Failed to seek to cursor") {
            // The cursor's entry is gone (vacuumed) or the journal was replaced: start
            // over from the configured position rather than never reading again.
            tracing::error!(
                cursor = reader.cursor.as_deref().unwrap_or(""),
                stderr = msg,
                "journal cursor is no longer valid; starting from read_from"
            );
            reader.cursor = None;
        } else {
            tracing::warn!(status = ?status.ok(), stderr = msg, "journalctl exited; restarting");
        }
        if started.elapsed() >= HEALTHY_RUN {
            attempt = 0;
        }
        if !pause(
            &shutdown,
            super::super::ship::backoff(attempt, reader.cfg.max_backoff),
        ) {
            return reader;
        }
        attempt = attempt.saturating_add(1);
    }
    reader
}

/// Reads entries until `journalctl` exits. Returns false when the pipeline is closed.
fn pump(
    reader: &mut JournalReader,
    stdout: impl Read,
    tx: &mpsc::Sender<Chunk>,
    shutdown: &CancellationToken,
    root: &CancellationToken,
) -> bool {
    let mut input = BufReader::with_capacity(256 << 10, stdout);
    let mut line = Vec::with_capacity(4096);
    let mut out = Vec::new();
    let mut excluded_since = 0u64;
    loop {
        line.clear();
        // Entries are bounded by journalctl (fields up to the journal's own limits);
        // a cap keeps a broken pipe from growing a line without end.
        match (&mut input).take(16 << 20).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let raw = line.strip_suffix(b"\n").unwrap_or(&line);
        if raw.is_empty() {
            continue;
        }
        let before = reader.excluded;
        reader.push_line(raw, &mut out);
        excluded_since += reader.excluded - before;
        // Hand on what we have when journalctl has nothing more buffered.
        if input.buffer().is_empty() {
            reader.flush(&mut out);
            if out.is_empty() && excluded_since >= 1000 {
                out.extend(reader.position_only());
                excluded_since = 0;
            }
        }
        for c in out.drain(..) {
            if !send(tx, c, root) {
                return false;
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    reader.flush(&mut out);
    for c in out.drain(..) {
        if !send(tx, c, root) {
            return false;
        }
    }
    true
}

fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if shutdown.is_cancelled() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
    !shutdown.is_cancelled()
}

#[cfg(test)]
mod tests {
    use super::*;
    use heimdall_common::record::Level;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn cfg() -> Journald {
        Journald {
            required: true,
            include_units: vec!["nginx.service".into()],
            exclude_units: vec!["cron.service".into()],
            directory: Some(PathBuf::from("/j")),
            journalctl: PathBuf::from("journalctl"),
            read_from: JournalStart::Beginning,
            labels: BTreeMap::new(),
            max_backoff: Duration::from_secs(1),
            redact: None,
            policy: Arc::new(crate::sources::Policy::default()),
        }
    }

    #[test]
    fn decodes_text_binary_and_repeated_fields() {
        let e = decode_entry(br#"{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1700000000000001","MESSAGE":[104,0,255],"PRIORITY":"3","_SYSTEMD_UNIT":"db.service","SYSLOG_IDENTIFIER":["pg","pg2"],"_HOSTNAME":"h"}"#).unwrap();
        assert_eq!(e.cursor, "s=1;i=2");
        assert_eq!(e.time_ns, 1_700_000_000_000_001_000);
        assert_eq!(e.message, vec![104, 0, 255]);
        assert_eq!(e.priority, Some(3));
        assert_eq!(e.identifier.as_deref(), Some("pg"));
        assert!(decode_entry(b"{\"MESSAGE\":\"x\"}").is_err());
        assert!(decode_entry(b"not json").is_err());
    }

    #[test]
    fn arguments_resume_after_the_cursor_with_every_line() {
        let a = command_args(&cfg(), Some("s=1;i=2"));
        assert!(a.contains(&"--after-cursor=s=1;i=2".to_owned()));
        assert!(a.contains(&"--lines=all".to_owned()));
        assert!(a.contains(&"--directory=/j".to_owned()));
        assert!(a.contains(&"_SYSTEMD_UNIT=nginx.service".to_owned()));
        let mut end = cfg();
        end.read_from = JournalStart::End;
        assert!(command_args(&end, None).contains(&"--lines=0".to_owned()));
    }

    #[test]
    fn entries_become_chunks_per_stream_with_their_cursor() {
        let mut r = JournalReader::new(cfg(), &Labels::new([("host", "a")]), &[]);
        let mut out = Vec::new();
        for (i, unit, prio) in [
            (1, "nginx.service", 6),
            (2, "nginx.service", 3),
            (3, "cron.service", 6),
            (4, "db.service", 4),
        ] {
            let l = format!(
                r#"{{"__CURSOR":"c{i}","__REALTIME_TIMESTAMP":"{i}000000","MESSAGE":"m{i}","PRIORITY":"{prio}","_SYSTEMD_UNIT":"{unit}"}}"#
            );
            r.push_line(l.as_bytes(), &mut out);
        }
        r.flush(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].stream.get("service"), Some("nginx.service"));
        assert_eq!(out[0].stream.get("source"), Some("journald:/j"));
        assert_eq!(out[0].lines.len(), 2);
        assert_eq!(out[0].lines[1].level, Level::Error);
        assert_eq!(out[0].lines[1].time_ns, 2_000_000_000);
        assert_eq!(out[0].checkpoint.cursor, "c2");
        assert_eq!(out[1].checkpoint.cursor, "c4");
        assert_eq!(r.excluded, 1);
        // A restart resumes after the checkpointed cursor.
        let r2 = JournalReader::new(cfg(), &Labels::default(), &[out[1].checkpoint.clone()]);
        assert_eq!(r2.cursor.as_deref(), Some("c4"));
    }

    #[test]
    fn entries_and_their_labels_are_redacted_and_drops_move_the_cursor() {
        use crate::pipeline::redact::{Action, Redactor, Settings, BUILTIN};
        let mut settings = Settings::default();
        let ssn = BUILTIN.iter().position(|t| *t == "ssn").unwrap();
        settings.builtin[ssn] = Some(Action::Drop);
        let mut c = cfg();
        c.redact = Some(std::sync::Arc::new(Redactor::new(settings).unwrap()));
        let mut r = JournalReader::new(c, &Labels::default(), &[]);
        let mut out = Vec::new();
        for (i, msg) in [(1, "login from 10.1.2.3"), (2, "ssn 123-45-6789 on file")] {
            let l = format!(
                r#"{{"__CURSOR":"c{i}","MESSAGE":"{msg}","_SYSTEMD_UNIT":"app.service","_HOSTNAME":"192.0.2.7"}}"#
            );
            r.push_line(l.as_bytes(), &mut out);
        }
        r.flush(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].stream.get("hostname"), Some("<ipv4>"));
        assert_eq!(out[0].lines.len(), 1, "the SSN entry is dropped");
        assert_eq!(&out[0].lines[0].bytes[..], b"login from <ipv4>");
        assert_eq!(
            out[0].checkpoint.cursor, "c2",
            "a dropped entry is read all the same"
        );
    }
}
