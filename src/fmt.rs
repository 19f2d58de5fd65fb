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

/// Characters that reorder or break what a terminal shows without being
/// control characters: the bidirectional embeddings and overrides
/// (U+202A–U+202E), isolates (U+2066–U+2069), marks (U+200E, U+200F,
/// U+061C), and the Unicode line and paragraph separators.
fn is_bidi_or_break(c: char) -> bool {
    matches!(
        c,
        '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{061c}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// `s` escaped for a terminal: C0 and C1 control characters (`\n`,
/// `\u{1b}`, `\u{9b}`), DEL, the bidirectional controls and the Unicode
/// line separators are written as Rust escapes (`\u{202e}`); backslashes
/// are left alone (Windows paths stay readable), so a shown `\n` may have
/// been typed as such, never a line break. The one function every string from outside
/// keyferry (file names, node names, bundle fields, registry rows, server
/// messages) goes through before it reaches a terminal: it can then neither
/// forge a line of output, nor drive the terminal, nor reorder what the
/// operator reads.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || is_bidi_or_break(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`printable`] of a path (not UTF-8 parts shown as U+FFFD).
pub fn printable_path(p: &std::path::Path) -> String {
    printable(&p.to_string_lossy())
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

    /// Issue 23, finding 6: each kind of character that can forge output
    /// or drive a terminal comes out escaped, and nothing else changes.
    #[test]
    fn every_terminal_hazard_is_escaped_and_nothing_else() {
        for (hazard, shown) in [
            ("\n", "\\n"),
            ("\r", "\\r"),
            ("\t", "\\t"),
            ("\u{0}", "\\u{0}"),
            ("\u{1b}", "\\u{1b}"),
            ("\u{7f}", "\\u{7f}"),
            ("\u{85}", "\\u{85}"),
            ("\u{9b}", "\\u{9b}"),
            ("\u{202a}", "\\u{202a}"),
            ("\u{202b}", "\\u{202b}"),
            ("\u{202c}", "\\u{202c}"),
            ("\u{202d}", "\\u{202d}"),
            ("\u{202e}", "\\u{202e}"),
            ("\u{2066}", "\\u{2066}"),
            ("\u{2067}", "\\u{2067}"),
            ("\u{2068}", "\\u{2068}"),
            ("\u{2069}", "\\u{2069}"),
            ("\u{200e}", "\\u{200e}"),
            ("\u{200f}", "\\u{200f}"),
            ("\u{61c}", "\\u{61c}"),
            ("\u{2028}", "\\u{2028}"),
            ("\u{2029}", "\\u{2029}"),
        ] {
            assert_eq!(printable(&format!("a{hazard}b")), format!("a{shown}b"));
        }
        for plain in ["pam-b", "Zürich", "日本", "a b", "kf1:00ff", "עברית"] {
            assert_eq!(printable(plain), plain);
        }
        assert_eq!(
            printable_path(std::path::Path::new("/tmp/x\u{1b}[2J.kfb")),
            "/tmp/x\\u{1b}[2J.kfb"
        );
    }

    #[test]
    fn times_are_rfc3339_utc_and_clamped() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(fmt_time(u64::MAX), fmt_time(MAX_SHOWN_SECS));
    }
}
