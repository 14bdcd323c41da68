//! Value types shared by the agent's and the aggregator's configuration files.
//!
//! Both accept human spellings (`"64MiB"`, `"500ms"`) as well as plain integers
//! (bytes, seconds), and reject anything else with a message that says what is expected.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A value (a size, a duration) that does not parse; the message says what is expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

impl InvalidValue {
    fn new(message: impl Into<String>) -> InvalidValue {
        InvalidValue(message.into())
    }
}

/// The configuration file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read config {}: {source}", path.display())]
pub struct ReadError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A size in bytes, written as an integer or with a unit: `B`, `KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"64MiB"`, `"1 GB"`, `"4096"`.
    pub fn parse(s: &str) -> Result<ByteSize, InvalidValue> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: f64 = num.parse().map_err(|_| {
            InvalidValue::new(format!(
                "`{s}` is not a size (expected e.g. 4096, 64KiB, 16MiB, 1GiB)"
            ))
        })?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            other => {
                return Err(InvalidValue(format!(
                    "unknown size unit `{other}` in `{s}` (use B, KiB, MiB, GiB, KB, MB, GB)"
                )))
            }
        };
        let v = num * mult as f64;
        if !(0.0..=u64::MAX as f64).contains(&v) {
            return Err(InvalidValue(format!("size `{s}` is out of range")));
        }
        Ok(ByteSize(v as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b % (1 << 30) == 0 {
            write!(f, "{}GiB", b >> 30)
        } else if b >= 1 << 20 && b % (1 << 20) == 0 {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b % (1 << 10) == 0 {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 4096, \"64KiB\" or \"1GiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A duration written as seconds or with a unit: `ms`, `s`, `m`, `h`, `d` (`"1m30s"` too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses `"250ms"`, `"10s"`, `"1h30m"`, `"2d"`.
    pub fn parse(s: &str) -> Result<HumanDuration, InvalidValue> {
        parse_duration(s).map(HumanDuration)
    }
}

/// Parses a duration such as `"250ms"`, `"10s"`, `"1h30m"`, `"2d"` or `"1w"`.
pub fn parse_duration(s: &str) -> Result<Duration, InvalidValue> {
    let t = s.trim();
    if t.is_empty() {
        return Err(InvalidValue::new(
            "empty duration (expected e.g. 500ms, 10s, 5m, 1h)",
        ));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(InvalidValue(format!(
                "`{t}` is not a duration (expected e.g. 500ms, 10s, 5m, 1h)"
            )));
        }
        let num: f64 = rest[..digits]
            .parse()
            .map_err(|_| InvalidValue::new(format!("`{t}` is not a duration")))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "" | "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "w" => 7.0 * 86400.0,
            other => {
                return Err(InvalidValue(format!(
                    "unknown duration unit `{other}` in `{t}` (use ms, s, m, h, d)"
                )))
            }
        };
        let part = num * secs;
        if !part.is_finite() || !(0.0..=1e12).contains(&part) {
            return Err(InvalidValue(format!("duration `{t}` is out of range")));
        }
        total += Duration::from_secs_f64(part);
    }
    Ok(total)
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 != 0 {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 10, \"500ms\", \"10s\" or \"5m\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Ok(HumanDuration(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                u64::try_from(v)
                    .map(|v| HumanDuration(Duration::from_secs(v)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<HumanDuration, E> {
                if v.is_finite() && v >= 0.0 {
                    Ok(HumanDuration(Duration::from_secs_f64(v)))
                } else {
                    Err(E::custom("a duration must be a non-negative number"))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// One problem found while validating a configuration, with the key it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted path of the key, e.g. `output.endpoints[0]`.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

/// All problems found in one validation pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct ConfigProblems(pub Vec<ConfigProblem>);

impl ConfigProblems {
    /// Records a problem with `key`.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// `Ok(())` when nothing was recorded.
    pub fn into_result(self) -> Result<(), ConfigProblems> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded (both programs use it).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// TOML syntax, a wrong type or an unknown key; the message names the key.
    #[error("{0}")]
    Parse(String),
    /// Values that parse but make no sense; each problem names its key.
    #[error("{0}")]
    Invalid(ConfigProblems),
}

/// Most problems of shape (unknown keys, wrong types) collected from one file.
const MAX_SHAPE_PROBLEMS: usize = 50;

/// Parses a TOML configuration into its raw type, naming every unknown key and every
/// value of the wrong type in one pass (the parser alone stops at the first): each
/// problem found is blanked out of a copy of the text and the rest parsed again. What
/// parses then is returned too, so the caller can validate it and report the other
/// problems in the same pass.
///
/// # Errors
/// [`LoadError::Parse`] for a syntax error: what follows one cannot be read reliably.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<(Option<T>, ConfigProblems), LoadError> {
    if let Err(e) = toml::from_str::<toml::Table>(text) {
        return Err(LoadError::Parse(e.to_string()));
    }
    let mut work: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut problems = ConfigProblems::default();
    loop {
        let joined = work.join("\n");
        let e = match toml::from_str::<T>(&joined) {
            Ok(v) => return Ok((Some(v), problems)),
            Err(e) => e,
        };
        let Some(span) = e.span() else {
            problems.push("(file)", e.message());
            return Ok((None, problems));
        };
        let line = joined[..span.start.min(joined.len())].matches('\n').count();
        problems.push(
            key_at(&work, line),
            format!("{} (line {})", e.message(), line + 1),
        );
        if problems.0.len() >= MAX_SHAPE_PROBLEMS || !blank(&mut work, line) {
            return Ok((None, problems));
        }
    }
}

/// The dotted key of the item at `line`: its table's name and its own key (`files[]`
/// for an array of tables).
fn key_at(work: &[String], line: usize) -> String {
    let Some(this) = work.get(line).map(|l| l.trim()) else {
        return "(file)".into();
    };
    let header = |l: &str| -> Option<String> {
        let l = l.trim();
        if let Some(t) = l.strip_prefix("[[") {
            return Some(format!("{}[]", t.split("]]").next()?.trim()));
        }
        Some(l.strip_prefix('[')?.split(']').next()?.trim().to_owned())
    };
    if let Some(h) = header(this) {
        return h;
    }
    let own = this
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    let table = work[..line].iter().rev().find_map(|l| header(l));
    match table {
        Some(t) if !own.is_empty() => format!("{t}.{own}"),
        Some(t) => t,
        None => own.to_owned(),
    }
}

/// The path at `keys` (a table path, then the key) of a TOML text's table, read without
/// the rest of the file having to be valid: `check-config` finds certificate files
/// this way even when other keys are wrong.
pub fn toml_path(t: &toml::Table, keys: &[&str]) -> Option<std::path::PathBuf> {
    let (last, tables) = keys.split_last()?;
    let mut cur = t;
    for k in tables {
        cur = cur.get(*k)?.as_table()?;
    }
    cur.get(*last)?.as_str().map(std::path::PathBuf::from)
}

/// Prints what `check-config` found (problems to stderr, one a line, under a heading
/// naming the file; warnings first) and says whether the configuration is valid.
pub fn report_check(
    program: &str,
    path: &std::path::Path,
    problems: &[String],
    warnings: &[String],
) -> bool {
    for w in warnings {
        eprintln!("warning: {w}");
    }
    if problems.is_empty() {
        println!("configuration {} is valid", path.display());
        return true;
    }
    eprintln!(
        "{program}: {} has {} problem{}:",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        eprintln!("  {p}");
    }
    false
}

/// Comments out the item at `line` (a `[table]` header: the whole table) so the rest
/// of the text can be checked; false when that leaves text that does not parse.
fn blank(work: &mut [String], line: usize) -> bool {
    let Some(first) = work.get(line) else {
        return false;
    };
    let is_header = first.trim_start().starts_with('[');
    let is_boundary = |l: &str| {
        let t = l.trim_start();
        t.starts_with('[') || (!is_header && t.contains('=') && !t.starts_with('#'))
    };
    let end_limit = (line + 1..work.len())
        .find(|&i| is_boundary(&work[i]))
        .unwrap_or(work.len());
    // A header takes its table along; a key takes as many lines as its value needs.
    let mut end = if is_header { end_limit } else { line + 1 };
    loop {
        let mut trial = work.to_vec();
        for l in &mut trial[line..end] {
            l.insert(0, '#');
        }
        if toml::from_str::<toml::Table>(&trial.join("\n")).is_ok() {
            work[line..end].clone_from_slice(&trial[line..end]);
            return true;
        }
        if end >= end_limit {
            return false;
        }
        end += 1;
    }
}

/// The `[shutdown]` section shared by both configuration files.
#[derive(Debug, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long to drain and deliver in-flight data after SIGTERM. Default 10s.
    pub grace: Option<HumanDuration>,
}

/// Reads a configuration file. An explicitly named file must exist; the default path
/// may be absent, and then the built-in defaults apply (empty text).
///
/// # Errors
/// The I/O error, for an explicit path or any error other than "not found".
pub fn read_config_text(
    explicit: Option<&std::path::Path>,
    default: &std::path::Path,
) -> std::io::Result<String> {
    match explicit {
        Some(p) => std::fs::read_to_string(p),
        None => match std::fs::read_to_string(default) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            other => other,
        },
    }
}

/// The configuration file's path and text: `explicit` when given (it must exist), else
/// `default` (built-in defaults when absent).
///
/// # Errors
/// [`ReadError`], naming the file.
pub fn read_config(
    explicit: Option<&std::path::Path>,
    default: &str,
) -> Result<(std::path::PathBuf, String), ReadError> {
    let default = std::path::PathBuf::from(default);
    let path = explicit.map_or_else(|| default.clone(), std::path::Path::to_owned);
    match read_config_text(explicit, &default) {
        Ok(text) => Ok((path, text)),
        Err(source) => Err(ReadError { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("4096").unwrap(), ByteSize(4096));
        assert_eq!(ByteSize::parse("64KiB").unwrap(), ByteSize(65536));
        assert_eq!(ByteSize::parse("1 GiB").unwrap(), ByteSize(1 << 30));
        assert_eq!(ByteSize::parse("2MB").unwrap(), ByteSize(2_000_000));
        assert!(ByteSize::parse("12 parsecs")
            .unwrap_err()
            .0
            .contains("unit"));
        assert!(ByteSize::parse("lots").is_err());
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
    }

    #[test]
    fn every_shape_problem_is_named_in_one_pass() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            size: Option<u32>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct File {
            name: Option<String>,
            #[serde(default)]
            inner: Option<Inner>,
            list: Option<Vec<u32>>,
        }
        let text = "name = 5\nnmae = \"x\"\nlist = [\n  1,\n  \"two\",\n]\n[inner]\nsize = \"big\"\nszie = 1\n[nowhere]\na = 1\nb = 2\n";
        let (rest, p) = parse_toml::<File>(text).unwrap();
        let got: Vec<(String, String)> = p.0.into_iter().map(|p| (p.key, p.message)).collect();
        assert_eq!(got.len(), 6, "{got:?}");
        assert_eq!(got[0].0, "name");
        assert!(
            got[0].1.starts_with("invalid type") && got[0].1.ends_with("(line 1)"),
            "{got:?}"
        );
        assert_eq!(got[1].0, "nmae");
        assert!(got[1].1.starts_with("unknown field `nmae`"), "{got:?}");
        assert!(got[2].1.contains("invalid type: string \"two\""), "{got:?}");
        assert_eq!(got[3].0, "inner.size");
        assert_eq!(got[4].0, "inner.szie");
        assert_eq!(got[5].0, "nowhere");
        // What is left parses, for the caller's own checks.
        assert!(rest.is_some());
        // Syntax errors stop the pass.
        assert!(parse_toml::<File>("name = \n").is_err());
        let (ok, p) = parse_toml::<File>("name = \"ok\"\n").unwrap();
        assert!(ok.is_some() && p.0.is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("").is_err());
    }
}
