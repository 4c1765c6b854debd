//! Durations and sizes as people write them in configs: "500ms", "30s",
//! "5m", "1h30m"; "1MiB", "512KiB"; "0" means no limit.

use std::time::Duration;

/// The longest duration anything takes, on the command line or in the
/// config: a day.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The largest size anything takes (`output_limit`).
pub const MAX_SIZE: u64 = 1 << 30;

/// Parses a duration: one or more `<number><unit>` parts, each unit (`h`,
/// `m`, `s`, `ms`) at most once and larger ones first, as in "1h30m"; or a
/// bare `0`. At most [`MAX_DURATION`]. Errors quote what was written.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration \"{text}\" (use e.g. \"500ms\", \"30s\", \"5m\", or \"0\" for no limit)"
        )
    };
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    // The rank of the last unit: each next one must be smaller.
    let mut last_rank = u8::MAX;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let (scale, rank) = match &rest[..unit_len] {
            "ms" => (0.001, 0),
            "s" => (1.0, 1),
            "m" => (60.0, 2),
            "h" => (3600.0, 3),
            _ => return Err(bad()),
        };
        if rank >= last_rank {
            return Err(format!(
                "invalid duration \"{text}\" (each unit once, larger ones first, e.g. \"1h30m\")"
            ));
        }
        last_rank = rank;
        rest = &rest[unit_len..];
        let too_long = || out_of_range(text, &format_duration(MAX_DURATION));
        let part = Duration::try_from_secs_f64(number * scale).map_err(|_| too_long())?;
        total = total.checked_add(part).ok_or_else(too_long)?;
        if total > MAX_DURATION {
            return Err(too_long());
        }
    }
    Ok(total)
}

/// The message for a value past its range, quoting what was written.
pub fn out_of_range(written: &str, most: &str) -> String {
    format!("\"{}\" is out of range (at most {most})", written.trim())
}

/// Shows a duration the way the config spells it, compactly: "1.5s", "250ms".
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Like [`format_duration`], with "no limit" for `None`.
pub fn format_time_limit(limit: Option<Duration>) -> String {
    limit.map_or_else(|| "no limit".to_string(), format_duration)
}

/// Parser for clap: the same syntax, "0" meaning no limit.
pub fn parse_time_limit(text: &str) -> Result<Option<Duration>, String> {
    parse_duration(text).map(|d| (!d.is_zero()).then_some(d))
}

/// Parses a size: bytes as a number, or a number with `B`, `KiB`, `MiB`,
/// `GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB`, all powers of 1024). At most
/// [`MAX_SIZE`]. Errors quote what was written.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid size \"{text}\" (use e.g. \"1MiB\", \"512KiB\", or \"0\" for no limit)")
    };
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if split == 0 {
        return Err(bad());
    }
    let number: u64 = s[..split].parse().map_err(|_| bad())?;
    let scale: u64 = match s[split..].trim_start() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    match number.checked_mul(scale) {
        Some(n) if n <= MAX_SIZE => Ok(n),
        _ => Err(out_of_range(text, &format_size(MAX_SIZE))),
    }
}

/// Shows a byte count compactly: "1 MiB", "1.5 KiB", "12 bytes".
pub fn format_size(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (scale, unit) in UNITS {
        if n >= scale {
            let v = n as f64 / scale as f64;
            return if n.is_multiple_of(scale) {
                format!("{} {unit}", n / scale)
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn rejects_what_is_ambiguous_or_garbage() {
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "1.2.3s",
            "-1s",
            "ms5",
            "5 s",
            "1e3s",
            "99999999999999999999h",
            "5m5m",
            "30s1m",
            "1h1h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(
            parse_duration("5m5m")
                .unwrap_err()
                .contains("each unit once")
        );
    }

    #[test]
    fn one_range_with_what_was_written_in_the_message() {
        assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("23h60m"), Ok(MAX_DURATION));
        for long in [
            "9223372036854775807s",
            "24h1ms",
            "25h",
            "99999999999999999999h",
        ] {
            assert_eq!(
                parse_duration(long),
                Err(format!("\"{long}\" is out of range (at most 24h)"))
            );
        }
        assert_eq!(parse_size("1GiB"), Ok(MAX_SIZE));
        assert_eq!(
            parse_size("1025MiB"),
            Err("\"1025MiB\" is out of range (at most 1 GiB)".into())
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-1",
            "1TiB",
            "99999999999999999999G",
            "2GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(12), "12 bytes");
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_time_limit(None), "no limit");
    }
}
