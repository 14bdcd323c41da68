//! Multiline: joins the lines of one record (a stack trace, a traceback, a panic) into
//! one record before parsing.
//!
//! Owns the rules that decide whether a line starts a record or continues the open one:
//! a start pattern, a continuation pattern, or a built-in preset (Java stack traces,
//! Python tracebacks, Go panics), plus the limits (lines, bytes) and the flush timeout.
//! Does not own positions: each line comes with the position just after it, and a
//! completed record carries the position after its last line, which is what the file
//! source checkpoints. A record still open is therefore read again after a restart,
//! never lost and never half-shipped.
//!
//! Joined lines are separated by `\n`. A record over the byte cap keeps its first bytes
//! and is flagged `TRUNCATED`; its remaining lines are consumed and skipped.

use crate::sources::Line;
use bytes::Bytes;
use heimdall_common::record::flags;
use regex::bytes::Regex;
use std::time::{Duration, Instant};

/// Built-in rules for common runtimes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// `Exception in thread …`, `\tat …`, `Caused by: …`, `\t... 12 more`, and the
    /// exception line after a log line (`java.lang.IllegalStateException: …`).
    Java,
    /// `Traceback (most recent call last):`, indented frames, the exception line, and
    /// chained tracebacks (`During handling of the above exception …`).
    Python,
    /// `panic: …` / `fatal error: …` followed by goroutine dumps.
    Go,
}

impl Preset {
    /// Parses a preset's config name.
    pub fn from_name(s: &str) -> Option<Preset> {
        match s {
            "java" => Some(Preset::Java),
            "python" => Some(Preset::Python),
            "go" => Some(Preset::Go),
            _ => None,
        }
    }
}

/// How lines are grouped.
#[derive(Clone, Debug)]
pub enum Rule {
    /// A built-in preset.
    Preset(Preset),
    /// Custom patterns: a line matching `start` starts a record; otherwise it continues
    /// the open record if `cont` matches (or, without `cont`, always).
    /// With only `cont`, a line continues iff it matches.
    Patterns {
        start: Option<Regex>,
        cont: Option<Regex>,
    },
}

/// A validated multiline configuration.
#[derive(Clone, Debug)]
pub struct Multiline {
    pub rule: Rule,
    /// An open record is completed when no line has joined it for this long.
    pub timeout: Duration,
    /// Most lines in one record; the next continuation starts a new record.
    pub max_lines: usize,
    /// Most bytes in one record; beyond, the record is cut and flagged `TRUNCATED`.
    pub max_bytes: usize,
}

/// A completed record and the file position just after its last line.
#[derive(Debug, PartialEq, Eq)]
pub struct Joined {
    pub line: Line,
    pub end: u64,
    pub tail: u64,
}

struct Open {
    bytes: Vec<u8>,
    flags: u8,
    lines: usize,
    end: u64,
    tail: u64,
    last: Instant,
}

/// State of a preset between lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Normal,
    /// Python: inside a traceback's frames.
    PyFrames,
    /// Python: just after a traceback's exception line.
    PyAfter,
    /// Go: inside a panic's goroutine dump.
    GoPanic,
}

/// Joins lines of one file. One per file: it holds that file's open record.
pub struct Joiner {
    cfg: std::sync::Arc<Multiline>,
    open: Option<Open>,
    phase: Phase,
}

impl Joiner {
    pub fn new(cfg: std::sync::Arc<Multiline>) -> Joiner {
        Joiner {
            cfg,
            open: None,
            phase: Phase::Normal,
        }
    }

    /// Whether a record is open (its lines are not yet handed on).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Forgets the open record (the file is read again from an earlier position).
    pub fn reset(&mut self) {
        self.open = None;
        self.phase = Phase::Normal;
    }

    /// Adds a line that ends at file position `end` (with tail hash `tail`). Returns the
    /// record this line completed, if it starts a new one.
    pub fn push(&mut self, line: Line, end: u64, tail: u64, now: Instant) -> Option<Joined> {
        // Always asked, so a preset's phase follows every line, the first one too.
        let joins = self.continues(&line.bytes);
        let room = self
            .open
            .as_ref()
            .is_some_and(|o| o.lines < self.cfg.max_lines);
        if joins && room {
            self.append(line, end, tail, now);
            return None;
        }
        // A new record: this line starts one, or the open one is at its line limit.
        let done = self.take();
        self.open = Some(Open {
            bytes: Vec::new(),
            flags: 0,
            lines: 0,
            end,
            tail,
            last: now,
        });
        self.append(line, end, tail, now);
        done
    }

    /// Completes the open record if it has waited for `timeout`.
    pub fn flush_due(&mut self, now: Instant) -> Option<Joined> {
        let due = self
            .open
            .as_ref()
            .is_some_and(|o| now.duration_since(o.last) >= self.cfg.timeout);
        if due {
            self.take()
        } else {
            None
        }
    }

    /// Completes the open record now (the file is final).
    pub fn take(&mut self) -> Option<Joined> {
        let o = self.open.take()?;
        let mut bytes = o.bytes;
        // Blank lines that joined a traceback's end are not part of the record.
        while bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        let mut fl = o.flags & !flags::INVALID_UTF8;
        if std::str::from_utf8(&bytes).is_err() {
            fl |= flags::INVALID_UTF8;
        }
        Some(Joined {
            line: Line::new(Bytes::from(bytes), fl),
            end: o.end,
            tail: o.tail,
        })
    }

    fn append(&mut self, line: Line, end: u64, tail: u64, now: Instant) {
        let max = self.cfg.max_bytes;
        let o = self.open.as_mut().expect("a record is open");
        o.end = end;
        o.tail = tail;
        o.last = now;
        o.lines += 1;
        o.flags |= line.flags & !flags::INVALID_UTF8;
        if o.flags & flags::TRUNCATED != 0 && o.bytes.len() >= max {
            return;
        }
        let sep = usize::from(!o.bytes.is_empty() || o.lines > 1);
        let room = max.saturating_sub(o.bytes.len() + sep);
        if room == 0 {
            o.flags |= flags::TRUNCATED;
            return;
        }
        if sep == 1 {
            o.bytes.push(b'\n');
        }
        let take = line.bytes.len().min(room);
        if take < line.bytes.len() {
            o.flags |= flags::TRUNCATED;
        }
        o.bytes.extend_from_slice(&line.bytes[..take]);
    }

    /// Whether `b` continues the open record; advances the preset's phase.
    fn continues(&mut self, b: &[u8]) -> bool {
        match &self.cfg.rule {
            Rule::Patterns { start, cont } => {
                if start.as_ref().is_some_and(|s| s.is_match(b)) {
                    return false;
                }
                match cont {
                    Some(c) => c.is_match(b),
                    None => start.is_some(),
                }
            }
            Rule::Preset(p) => {
                let (cont, phase) = preset_step(*p, self.phase, b);
                self.phase = phase;
                cont
            }
        }
    }
}

fn indented(b: &[u8]) -> bool {
    matches!(b.first(), Some(b' ' | b'\t'))
}

/// A Java exception header: `java.lang.IllegalStateException: boom`,
/// `com.acme.Failure$Inner`, `org.x.SomeError`.
fn java_exception_line(b: &[u8]) -> bool {
    let head_end = b
        .iter()
        .position(|&c| c == b':' || c == b' ')
        .unwrap_or(b.len());
    let head = &b[..head_end];
    if head_end < b.len() && b[head_end] != b':' {
        return false;
    }
    let dotted = head.contains(&b'.')
        && head
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'$' | b'_'));
    dotted
        && (head.ends_with(b"Exception")
            || head.ends_with(b"Error")
            || head.ends_with(b"Throwable"))
}

/// A Go stack frame's function line: `main.main()`, `net/http.(*conn).serve(0xc000…)`.
fn go_function_line(b: &[u8]) -> bool {
    let Some(paren) = b.iter().position(|&c| c == b'(') else {
        return false;
    };
    paren > 0
        && !b[..paren].contains(&b' ')
        && b[..paren].contains(&b'.')
        && (b.ends_with(b")") || b.ends_with(b"...)"))
}

fn preset_step(p: Preset, phase: Phase, b: &[u8]) -> (bool, Phase) {
    match p {
        Preset::Java => {
            let cont = indented(b)
                || b.starts_with(b"Caused by: ")
                || b.starts_with(b"Suppressed: ")
                || java_exception_line(b);
            (cont, Phase::Normal)
        }
        Preset::Python => {
            if b.starts_with(b"Traceback (most recent call last):") {
                return (true, Phase::PyFrames);
            }
            match phase {
                Phase::PyFrames if indented(b) => (true, Phase::PyFrames),
                // The exception line ends the frames.
                Phase::PyFrames if !b.is_empty() => (true, Phase::PyAfter),
                Phase::PyAfter | Phase::PyFrames
                    if b.is_empty()
                        || b.starts_with(b"During handling of the above exception")
                        || b.starts_with(b"The above exception was the direct cause") =>
                {
                    (true, Phase::PyAfter)
                }
                _ => (indented(b), Phase::Normal),
            }
        }
        Preset::Go => {
            if b.starts_with(b"panic: ") || b.starts_with(b"fatal error: ") {
                // Starts a record; a `panic:` right after `fatal error:` is the same one.
                return (
                    phase == Phase::GoPanic && b.starts_with(b"panic: "),
                    Phase::GoPanic,
                );
            }
            if phase == Phase::GoPanic {
                let cont = b.is_empty()
                    || indented(b)
                    || b.starts_with(b"goroutine ")
                    || b.starts_with(b"created by ")
                    || b.starts_with(b"[signal ")
                    || b.starts_with(b"exit status ")
                    || b.starts_with(b"runtime stack:")
                    || go_function_line(b);
                return (cont, if cont { Phase::GoPanic } else { Phase::Normal });
            }
            (indented(b), Phase::Normal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn joiner(rule: Rule) -> Joiner {
        Joiner::new(Arc::new(Multiline {
            rule,
            timeout: Duration::from_millis(500),
            max_lines: 1000,
            max_bytes: 1 << 20,
        }))
    }

    /// Feeds `text` line by line, then completes the last record.
    fn join(j: &mut Joiner, text: &str) -> Vec<String> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut pos = 0u64;
        for l in text.lines() {
            pos += l.len() as u64 + 1;
            let line = Line::new(Bytes::copy_from_slice(l.as_bytes()), 0);
            if let Some(r) = j.push(line, pos, 0, now) {
                out.push(String::from_utf8(r.line.bytes.to_vec()).unwrap());
            }
        }
        if let Some(r) = j.take() {
            out.push(String::from_utf8(r.line.bytes.to_vec()).unwrap());
        }
        out
    }

    const JAVA: &str = "\
2024-03-05 06:07:08.123 ERROR [main] c.a.OrderService - order failed
java.lang.IllegalStateException: payment declined
\tat com.acme.pay.Client.charge(Client.java:88)
\tat com.acme.OrderService.place(OrderService.java:41)
Caused by: java.net.SocketTimeoutException: Read timed out
\tat java.base/java.net.SocketInputStream.socketRead0(Native Method)
\t... 12 more
2024-03-05 06:07:09.001 INFO [main] c.a.OrderService - retrying
Exception in thread \"main\" java.lang.NullPointerException: Cannot invoke \"String.length()\"
\tat Main.main(Main.java:5)
";

    #[test]
    fn java_stack_traces() {
        let got = join(&mut joiner(Rule::Preset(Preset::Java)), JAVA);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[0].starts_with("2024-03-05 06:07:08.123 ERROR"));
        assert!(got[0].ends_with("\t... 12 more"));
        assert_eq!(got[0].lines().count(), 7);
        assert!(got[1].ends_with("retrying"));
        assert_eq!(got[2].lines().count(), 2);
    }

    const PYTHON: &str = "\
ERROR:app:request failed
Traceback (most recent call last):
  File \"/srv/app.py\", line 10, in handle
    return lookup(key)
  File \"/srv/app.py\", line 4, in lookup
    return table[key]
KeyError: 'user'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File \"/srv/app.py\", line 12, in handle
    raise RuntimeError(\"lookup failed\")
RuntimeError: lookup failed
INFO:app:next request
Traceback (most recent call last):
  File \"<stdin>\", line 1, in <module>
ZeroDivisionError: division by zero
WARNING:app:done
";

    #[test]
    fn python_tracebacks() {
        let got = join(&mut joiner(Rule::Preset(Preset::Python)), PYTHON);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[0].starts_with("ERROR:app:request failed\nTraceback"));
        assert!(got[0].ends_with("RuntimeError: lookup failed"));
        assert_eq!(got[1], "INFO:app:next request\nTraceback (most recent call last):\n  File \"<stdin>\", line 1, in <module>\nZeroDivisionError: division by zero");
        assert_eq!(got[2], "WARNING:app:done");
    }

    const GO: &str = "\
2024/03/05 06:07:08 serving on :8080
panic: runtime error: index out of range [5] with length 3

goroutine 1 [running]:
main.lookup(...)
\t/src/main.go:12
main.main()
\t/src/main.go:20 +0x1d
created by main.start in goroutine 1
\t/src/main.go:30 +0x25
exit status 2
2024/03/05 06:07:09 restarted
";

    #[test]
    fn go_panics() {
        let got = join(&mut joiner(Rule::Preset(Preset::Go)), GO);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[1].starts_with("panic: runtime error"));
        assert!(got[1].ends_with("exit status 2"));
        assert_eq!(got[2], "2024/03/05 06:07:09 restarted");
    }

    #[test]
    fn custom_start_pattern() {
        let start = Regex::new(r"^\d{4}-\d{2}-\d{2}").unwrap();
        let mut j = joiner(Rule::Patterns {
            start: Some(start),
            cont: None,
        });
        let got = join(&mut j, "2024-01-01 a\n  more\nnot indented\n2024-01-02 b\n");
        assert_eq!(
            got,
            vec!["2024-01-01 a\n  more\nnot indented", "2024-01-02 b"]
        );
    }

    #[test]
    fn records_over_the_cap_are_cut_and_flagged() {
        let mut j = Joiner::new(Arc::new(Multiline {
            rule: Rule::Preset(Preset::Java),
            timeout: Duration::from_secs(1),
            max_lines: 1000,
            max_bytes: 40,
        }));
        let now = Instant::now();
        let l = |s: &str| Line::new(Bytes::copy_from_slice(s.as_bytes()), 0);
        assert!(j.push(l("head line of twenty."), 21, 1, now).is_none());
        assert!(j
            .push(l("\tat a.b.C.d(C.java:1) and more"), 52, 2, now)
            .is_none());
        assert!(j.push(l("\tat x"), 58, 3, now).is_none());
        let r = j.push(l("next"), 63, 4, now).unwrap();
        assert_eq!(r.line.bytes.len(), 40);
        assert_ne!(r.line.flags & flags::TRUNCATED, 0);
        // The position after the last line of the record, though its bytes were skipped.
        assert_eq!((r.end, r.tail), (58, 3));
    }

    #[test]
    fn open_record_flushes_after_the_timeout_with_its_end_position() {
        let mut j = joiner(Rule::Preset(Preset::Java));
        let t0 = Instant::now();
        let l = |s: &str| Line::new(Bytes::copy_from_slice(s.as_bytes()), 0);
        assert!(j.push(l("a"), 2, 0, t0).is_none());
        assert!(j.push(l("\tat b"), 8, 0, t0).is_none());
        assert!(j.flush_due(t0 + Duration::from_millis(100)).is_none());
        let r = j.flush_due(t0 + Duration::from_millis(600)).unwrap();
        assert_eq!(r.line.bytes, "a\n\tat b");
        assert_eq!(r.end, 8);
        assert!(!j.is_open());
    }
}
