//! Strings from outside that could forge output or drive a terminal, and
//! the check that a printer escaped them (issue 23 item 5).

/// Every kind of character that can forge output or drive a terminal:
/// C0 and C1 controls, DEL, bidirectional overrides, isolates and marks.
pub const HAZARDS: [char; 14] = [
    '\n', '\r', '\x1b', '\x7f', '\u{9b}', '\u{202a}', '\u{202d}', '\u{202e}', '\u{2066}',
    '\u{2069}', '\u{200e}', '\u{200f}', '\u{61c}', '\u{2028}',
];

/// No hazard in `text` but the line breaks that end keyferry's own lines:
/// the hostile strings are `x` then a hazard, repeated, so a raw line
/// break among them starts a line with `x`.
pub fn assert_no_hazard(what: &str, text: &str) {
    for c in HAZARDS.iter().filter(|c| **c != '\n') {
        assert!(!text.contains(*c), "{what}: raw {c:?} in {text:?}");
    }
    assert!(
        !text.lines().any(|l| l.starts_with('x')),
        "{what}: a forged line in {text:?}"
    );
}

/// `x` then each hazard, repeated: a raw line break among them starts a
/// line with `x`.
pub fn hostile() -> String {
    HAZARDS.iter().map(|c| format!("x{c}")).collect()
}
