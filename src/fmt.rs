//! How keyferry writes times and sizes for people: one place, so every
//! message, report and audit detail spells them the same way.
//!
//! This module owns the text forms only; nothing here reads a clock or a
//! file. Invariants: [`fmt_time`] is RFC 3339 UTC to the second and never
//! panics, whatever the input; [`human_bytes`] uses binary units (`KiB`,
//! `MiB`, …) with one decimal, as `df -h` does, and exact bytes below 1 KiB.

use std::time::{Duration, UNIX_EPOCH};

/// Latest time [`fmt_time`] shows: later inputs are clamped to it, so a
/// corrupted or hostile timestamp cannot overflow the formatter.
const MAX_SHOWN_SECS: u64 = i32::MAX as u64 * 100;

/// RFC 3339 UTC time of Unix seconds, e.g. `2026-12-01T09:41:04Z`.
pub(crate) fn fmt_time(secs: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.min(MAX_SHOWN_SECS));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `1.5 GiB`, `48.0 MiB`, `512 B`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Parses a size as [`human_bytes`] writes its units: a whole number of
/// bytes, optionally followed by `B`, `KiB`, `MiB`, `GiB` or `TiB` (space
/// allowed, units case-insensitive), e.g. `1GiB`, `512 MiB`, `4096`.
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size: give bytes, e.g. 1GiB, 512MiB or 4096"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kib" => 10,
        "mib" => 20,
        "gib" => 30,
        "tib" => 40,
        other => {
            return Err(format!(
                "unknown unit {other:?}: use B, KiB, MiB, GiB or TiB"
            ))
        }
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `s` with its control characters escaped (`\n`, `\u{1b}`), for text that
/// may come from another host, a database or a bundle's sender: it can then
/// neither forge a line of output nor drive the terminal.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_df_h() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(48 * 1024 * 1024), "48.0 MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn sizes_parse_in_the_units_they_are_shown_in() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes(" 512 mib "), Ok(512 << 20));
        assert_eq!(parse_bytes("1B"), Ok(1));
        assert!(parse_bytes("1GB").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("GiB").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999TiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn times_are_rfc3339_utc_and_clamped() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(fmt_time(u64::MAX), fmt_time(MAX_SHOWN_SECS));
    }
}
