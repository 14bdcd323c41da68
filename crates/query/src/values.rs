//! Values read from labels as LogQL reads them: Go durations (`250ms`, `1h2m3.5s`) and
//! human sizes (`5 KiB`, `42MB`), for `| unwrap duration(…)`, `| unwrap bytes(…)`,
//! duration and size comparisons, and the types detected fields report.

/// A Go duration in seconds: a sequence of numbers with units `ns`, `us` (`µs`),
/// `ms`, `s`, `m`, `h`, optionally signed; `0` alone is zero.
pub fn duration_secs(v: &str) -> Option<f64> {
    let (sign, s) = match v.as_bytes().first() {
        Some(b'-') => (-1.0, &v[1..]),
        Some(b'+') => (1.0, &v[1..]),
        _ => (1.0, v),
    };
    if s == "0" {
        return Some(0.0);
    }
    let mut rest = s;
    let mut total = 0.0;
    let mut any = false;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let x: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        // Nanoseconds per unit: whole numbers, so `10µs` is exactly 1e-5 s.
        let (unit, scale) = [
            ("ns", 1.0),
            ("us", 1e3),
            ("µs", 1e3),
            ("μs", 1e3),
            ("ms", 1e6),
            ("s", 1e9),
            ("m", 60e9),
            ("h", 3600e9),
        ]
        .into_iter()
        .filter(|(u, _)| rest.starts_with(u))
        .max_by_key(|(u, _)| u.len())?;
        rest = &rest[unit.len()..];
        total += x * scale;
        any = true;
    }
    any.then_some(sign * total / 1e9)
}

/// A size in bytes as humanize reads it: a number and an optional unit (`B`, `kB`,
/// `KiB`, `MB`, `MiB`, … up to `E`), decimal units powers of 1000, binary ones of 1024.
pub fn bytes(v: &str) -> Option<f64> {
    let s = v.trim();
    let n = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let x: f64 = s[..n].parse().ok()?;
    let unit = s[n..].trim().to_ascii_lowercase();
    let scale = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gi" | "gib" => 1024f64.powi(3),
        "t" | "tb" => 1e12,
        "ti" | "tib" => 1024f64.powi(4),
        "p" | "pb" => 1e15,
        "pi" | "pib" => 1024f64.powi(5),
        "e" | "eb" => 1e18,
        "ei" | "eib" => 1024f64.powi(6),
        _ => return None,
    };
    Some(x * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_as_go_and_humanize_read_them() {
        assert_eq!(duration_secs("250ms"), Some(0.25));
        assert_eq!(duration_secs("1h2m3.5s"), Some(3723.5));
        assert_eq!(duration_secs("-1.5s"), Some(-1.5));
        assert_eq!(duration_secs("0"), Some(0.0));
        assert_eq!(duration_secs("10µs"), Some(1e-5));
        assert_eq!(duration_secs("5"), None);
        assert_eq!(duration_secs("5x"), None);
        assert_eq!(duration_secs(""), None);
        assert_eq!(bytes("5 KiB"), Some(5120.0));
        assert_eq!(bytes("42MB"), Some(42e6));
        assert_eq!(bytes("7"), Some(7.0));
        assert_eq!(bytes("1.5 gb"), Some(1.5e9));
        assert_eq!(bytes("MB"), None);
        assert_eq!(bytes("5 apples"), None);
    }
}
