//! The armored (text) form of a bundle: the binary in padded standard base64,
//! 64 characters a line, between BEGIN and END lines. Writer and reader sit
//! side by side; `docs/format.md`, "Armored form", is the rule they follow.
//!
//! Invariants:
//! - the writer emits exactly the canonical form: the BEGIN line, full
//!   64-character lines, one shorter or padded last line if needed, the END
//!   line, each ended by LF;
//! - the reader accepts what pasting does to that form: LF or CRLF line
//!   ends, spaces and tabs at the start and end of every line (the BEGIN and
//!   END lines included), a UTF-8 byte order mark at the start of the input,
//!   blank lines around the block, and any text before the BEGIN line and
//!   after the END line, which it skips and counts ([`Ignored`]) so that the
//!   caller can say so;
//! - between BEGIN and END only base64 lines are accepted: every other line
//!   there is an error that names it;
//! - it streams: at most one line of [`MAX_LINE`] bytes is held at a time,
//!   whatever the bundle's size or the length of the text around it;
//! - input without a BEGIN line is [`BundleError::NotABundle`];
//! - its failures are [`BundleError`]s: a `Read` caller gets an
//!   `io::Error` with the same message, and the typed error from
//!   [`ArmorReader::take_error`].

use std::fmt;
use std::io::{self, BufRead, Read, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::BundleError;

pub const BEGIN: &str = "-----BEGIN KEYFERRY BUNDLE-----";
pub const END: &str = "-----END KEYFERRY BUNDLE-----";
/// Base64 characters per line.
pub const LINE_CHARS: usize = 64;
/// Binary bytes per full line (64 characters encode 48 bytes).
const LINE_BYTES: usize = LINE_CHARS / 4 * 3;
/// The longest line inside the block, with its indentation, that the reader
/// looks at before calling it malformed. Longer lines outside the block are
/// skipped without being held.
pub const MAX_LINE: usize = 256;
/// What some Windows editors put at the start of a UTF-8 file.
const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// Encodes everything written to it; call [`finish`](Self::finish).
pub struct ArmorWriter<W: Write> {
    out: W,
    pending: [u8; LINE_BYTES],
    filled: usize,
    line: [u8; LINE_CHARS + 1],
}

impl<W: Write> ArmorWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(BEGIN.as_bytes())?;
        out.write_all(b"\n")?;
        Ok(Self {
            out,
            pending: [0; LINE_BYTES],
            filled: 0,
            line: [0; LINE_CHARS + 1],
        })
    }

    fn emit_line(&mut self) -> io::Result<()> {
        let n = STANDARD
            .encode_slice(&self.pending[..self.filled], &mut self.line)
            .map_err(io::Error::other)?;
        self.line[n] = b'\n';
        self.out.write_all(&self.line[..=n])?;
        self.filled = 0;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        if self.filled > 0 {
            self.emit_line()?;
        }
        self.out.write_all(END.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ArmorWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(LINE_BYTES - self.filled);
        self.pending[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == LINE_BYTES {
            self.emit_line()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Lines of text the reader skipped around the block: not part of the
/// bundle, but the operator is told, in case they were meant to be. Blank
/// lines are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ignored {
    /// Lines with text before the BEGIN line.
    pub before: usize,
    /// Lines with text after the END line.
    pub after: usize,
}

impl Ignored {
    pub fn is_empty(&self) -> bool {
        self.before == 0 && self.after == 0
    }
}

impl fmt::Display for Ignored {
    /// One clause for a `note:` line, e.g. "ignored 2 lines of text before
    /// the BEGIN line and 1 after the END line (not part of the bundle)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = |n: usize| {
            if n == 1 {
                "1 line".to_owned()
            } else {
                format!("{n} lines")
            }
        };
        match (self.before, self.after) {
            (0, 0) => write!(f, "no text around the BEGIN and END lines"),
            (before, 0) => write!(
                f,
                "ignored {} of text before the BEGIN line (not part of the bundle)",
                lines(before)
            ),
            (0, after) => write!(
                f,
                "ignored {} of text after the END line (not part of the bundle)",
                lines(after)
            ),
            (before, after) => write!(
                f,
                "ignored {} of text before the BEGIN line and {after} after the END line \
                 (not part of the bundle)",
                lines(before)
            ),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    BeforeBegin,
    Body,
    /// The last (short or padded) data line was read: END must follow.
    AfterLastData,
    /// The END line and everything after it were read.
    Done,
}

/// One line as read.
enum Line {
    /// The input has ended.
    Eof,
    /// Longer than [`MAX_LINE`]: only its start was read.
    Long,
    /// `raw[start..end]`: the line without its line end, the spaces and
    /// tabs around it, and (on line 1) a byte order mark.
    Text(usize, usize),
}

/// What a line outside the block is.
#[derive(PartialEq, Eq)]
enum Outside {
    Blank,
    Text,
    Begin,
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Decodes an armored bundle read from `input`.
pub struct ArmorReader<R: BufRead> {
    input: R,
    state: State,
    line_no: usize,
    raw: Vec<u8>,
    decoded: [u8; LINE_BYTES],
    pos: usize,
    end: usize,
    ignored: Ignored,
    /// The error of the last failed read, until taken.
    failure: Option<BundleError>,
}

impl<R: BufRead> ArmorReader<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            state: State::BeforeBegin,
            line_no: 0,
            raw: Vec::with_capacity(MAX_LINE + 2),
            decoded: [0; LINE_BYTES],
            pos: 0,
            end: 0,
            ignored: Ignored::default(),
            failure: None,
        }
    }

    /// The error behind the last `io::Error` a read returned, typed.
    pub fn take_error(&mut self) -> Option<BundleError> {
        self.failure.take()
    }

    /// The text skipped so far: `before` is final once a byte was read,
    /// `after` once a read returned 0 (the END line and the rest were read).
    pub fn ignored(&self) -> Ignored {
        self.ignored
    }

    fn bad(&self, what: &str) -> BundleError {
        BundleError::Armor(format!("line {}: {what}", self.line_no))
    }

    /// Reads the next line, holding at most [`MAX_LINE`] + 2 bytes of it.
    fn next_line(&mut self) -> Result<Line, BundleError> {
        self.raw.clear();
        let n = (&mut self.input)
            .take(MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut self.raw)
            .map_err(BundleError::Io)?;
        if n == 0 {
            return Ok(Line::Eof);
        }
        self.line_no += 1;
        let mut end = self.raw.len();
        if self.raw.ends_with(b"\n") {
            end -= 1;
            if self.raw[..end].ends_with(b"\r") {
                end -= 1;
            }
        } else if end > MAX_LINE {
            return Ok(Line::Long);
        }
        let mut start = 0;
        if self.line_no == 1 && self.raw.starts_with(UTF8_BOM) {
            start = UTF8_BOM.len();
        }
        let blank = |b: &u8| *b == b' ' || *b == b'\t';
        while start < end && blank(&self.raw[start]) {
            start += 1;
        }
        while end > start && blank(&self.raw[end - 1]) {
            end -= 1;
        }
        Ok(Line::Text(start, end))
    }

    /// Skips the rest of a [`Line::Long`] without holding it.
    fn skip_rest_of_line(&mut self) -> Result<(), BundleError> {
        loop {
            let buf = match self.input.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BundleError::Io(e)),
            };
            if buf.is_empty() {
                return Ok(());
            }
            match buf.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.input.consume(i + 1);
                    return Ok(());
                }
                None => {
                    let n = buf.len();
                    self.input.consume(n);
                }
            }
        }
    }

    /// Reads one line outside the block; `None` at the end of the input.
    fn outside_line(&mut self) -> Result<Option<Outside>, BundleError> {
        Ok(Some(match self.next_line()? {
            Line::Eof => return Ok(None),
            Line::Long => {
                self.skip_rest_of_line()?;
                Outside::Text
            }
            Line::Text(start, end) => {
                let line = &self.raw[start..end];
                if line == BEGIN.as_bytes() {
                    Outside::Begin
                } else if is_blank(line) {
                    Outside::Blank
                } else {
                    Outside::Text
                }
            }
        }))
    }

    /// Advances until decoded bytes are available or the input is done.
    fn refill(&mut self) -> Result<(), BundleError> {
        loop {
            match self.state {
                State::Done => return Ok(()),
                State::BeforeBegin => match self.outside_line()? {
                    None => return Err(BundleError::NotABundle),
                    Some(Outside::Begin) => self.state = State::Body,
                    Some(Outside::Text) => self.ignored.before += 1,
                    Some(Outside::Blank) => {}
                },
                State::Body | State::AfterLastData => return self.read_block_line(),
            }
        }
    }

    /// Reads one line between BEGIN and END: a data line, or the END line
    /// (after which the rest of the input is skipped and counted).
    fn read_block_line(&mut self) -> Result<(), BundleError> {
        let (start, end) = match self.next_line()? {
            Line::Eof => {
                return Err(BundleError::Armor(
                    "the END line is missing: the text was cut off".into(),
                ))
            }
            Line::Long => return Err(self.bad(&format!("longer than {MAX_LINE} characters"))),
            Line::Text(start, end) => (start, end),
        };
        let line = &self.raw[start..end];
        if line == END.as_bytes() {
            self.state = State::Done;
            // A second BEGIN line after END is just more text.
            while let Some(line) = self.outside_line()? {
                if line != Outside::Blank {
                    self.ignored.after += 1;
                }
            }
            return Ok(());
        }
        if self.state == State::AfterLastData {
            return Err(self.bad("data after a short or padded line"));
        }
        let len = line.len();
        if len == 0 {
            return Err(self.bad("a blank line inside the block: remove it"));
        }
        if len > LINE_CHARS || !len.is_multiple_of(4) {
            return Err(self.bad(&format!(
                "expected {LINE_CHARS} base64 characters (or fewer on the last line), found {len}"
            )));
        }
        let short_or_padded = len < LINE_CHARS || line.ends_with(b"=");
        let mut decoded = [0u8; LINE_BYTES];
        let n = STANDARD
            .decode_slice(line, &mut decoded)
            .map_err(|e| self.bad(&format!("invalid base64 ({e})")))?;
        self.decoded = decoded;
        self.pos = 0;
        self.end = n;
        if short_or_padded {
            self.state = State::AfterLastData;
        }
        Ok(())
    }
}

impl<R: BufRead> Read for ArmorReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.end {
            if self.state == State::Done {
                return Ok(0);
            }
            if let Err(e) = self.refill() {
                let message = e.to_string();
                self.failure = Some(e);
                return Err(io::Error::new(io::ErrorKind::InvalidData, message));
            }
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.decoded[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn armor(data: &[u8]) -> String {
        let mut w = ArmorWriter::new(Vec::new()).unwrap();
        w.write_all(data).unwrap();
        String::from_utf8(w.finish().unwrap()).unwrap()
    }

    fn dearmor(text: &str) -> Result<Vec<u8>, BundleError> {
        let mut out = Vec::new();
        let mut reader = ArmorReader::new(text.as_bytes());
        match reader.read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(e) => Err(reader.take_error().unwrap_or(BundleError::Io(e))),
        }
    }

    #[test]
    fn round_trip_at_line_boundaries() {
        for len in [0, 1, 47, 48, 49, 96, 1000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let text = armor(&data);
            assert!(text
                .lines()
                .all(|l| l.len() <= LINE_CHARS || l.starts_with("-----")));
            assert_eq!(dearmor(&text).unwrap(), data, "len {len}");
            let crlf = format!("\r\n  \n{}\r\n\t\r\n", text.replace('\n', "\r\n"));
            assert_eq!(dearmor(&crlf).unwrap(), data, "crlf len {len}");
        }
    }

    /// Decodes and returns what was ignored around the block.
    fn dearmor_counting(text: &str) -> (Vec<u8>, Ignored) {
        let mut out = Vec::new();
        let mut reader = ArmorReader::new(text.as_bytes());
        reader.read_to_end(&mut out).unwrap();
        (out, reader.ignored())
    }

    #[test]
    fn text_around_the_block_is_ignored_and_counted() {
        let data = b"hello world";
        let text = armor(data);
        let pasted = format!(
            "Subject: keys\n\nHere they are:\n\n{text}\n-- \nthanks\n-----BEGIN KEYFERRY BUNDLE-----\n"
        );
        let (out, ignored) = dearmor_counting(&pasted);
        assert_eq!(out, data);
        assert_eq!(
            ignored,
            Ignored {
                before: 2,
                after: 3
            }
        );
        assert_eq!(
            ignored.to_string(),
            "ignored 2 lines of text before the BEGIN line and 3 after the END line (not part of the bundle)"
        );
        let (_, none) = dearmor_counting(&format!("\n \t\n{text}\n\n"));
        assert!(none.is_empty());
        let (_, one) = dearmor_counting(&format!("{text}thanks"));
        assert_eq!(
            one.to_string(),
            "ignored 1 line of text after the END line (not part of the bundle)"
        );
    }

    #[test]
    fn indentation_on_every_line_is_accepted() {
        let data: Vec<u8> = (0..200u8).collect();
        let text = armor(&data);
        let indented: String = text
            .lines()
            .enumerate()
            .map(|(i, l)| match i % 3 {
                0 => format!("    {l}\r\n"),
                1 => format!("\t{l} \t\n"),
                _ => format!(" \t {l}   \r\n"),
            })
            .collect();
        assert_eq!(
            dearmor_counting(&indented),
            (data.clone(), Ignored::default())
        );
        // A byte order mark, as some Windows editors save the file.
        let bom = format!("\u{feff}{text}");
        assert_eq!(dearmor(&bom).unwrap(), data);
        let bom_then_text = format!("\u{feff}keys:\n{text}");
        assert_eq!(dearmor_counting(&bom_then_text).1.before, 1);
    }

    #[test]
    fn long_lines_outside_the_block_are_skipped_without_being_held() {
        let data = [7u8; 100];
        let text = armor(&data);
        let long = "x".repeat(10 * MAX_LINE);
        let pasted = format!("{long}\n{text}{long}\n{long}");
        let (out, ignored) = dearmor_counting(&pasted);
        assert_eq!(out, data);
        assert_eq!(
            ignored,
            Ignored {
                before: 1,
                after: 2
            }
        );
    }

    #[test]
    fn only_canonical_base64_is_accepted() {
        // "QQ==" is b"A"; "QR==" has non-zero trailing bits; "Q===" is not
        // valid padding.
        assert_eq!(dearmor(&format!("{BEGIN}\nQQ==\n{END}\n")).unwrap(), b"A");
        for bad in ["QR==", "Q===", "QQ=A"] {
            let e = dearmor(&format!("{BEGIN}\n{bad}\n{END}\n")).unwrap_err();
            assert!(
                e.to_string().contains("line 2: invalid base64"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn text_without_a_begin_line_is_not_a_bundle() {
        for text in [
            "these are not the keys\n",
            "",
            "-----BEGIN PGP MESSAGE-----\n",
            "> -----BEGIN KEYFERRY BUNDLE-----\n",
        ] {
            assert!(
                matches!(dearmor(text), Err(BundleError::NotABundle)),
                "{text:?}"
            );
        }
    }

    #[test]
    fn bad_lines_are_named() {
        let text = armor(&[9u8; 100]);
        let lines: Vec<&str> = text.lines().collect();
        // A short line in the middle.
        let short = format!(
            "{}\n{}\n{}\n{}\n{}\n",
            lines[0],
            &lines[1][..60],
            lines[2],
            lines[3],
            lines[4]
        );
        let e = dearmor(&short).unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        // A character outside base64.
        let bad = text.replacen(lines[1], &format!("*{}", &lines[1][1..]), 1);
        assert!(dearmor(&bad).unwrap_err().to_string().contains("base64"));
        // Missing END.
        let cut = format!("{}\n{}\n", lines[0], lines[1]);
        assert!(dearmor(&cut).unwrap_err().to_string().contains("END"));
        // Inside the block, only base64 lines: not a blank line, not text,
        // not a line too long to be one (which is refused, not skipped).
        let too_long = "A".repeat(MAX_LINE + 10);
        for (inserted, phrase) in [
            ("", "line 3: a blank line inside the block"),
            ("see below", "line 3: expected 64 base64 characters"),
            (too_long.as_str(), "line 3: longer than 256"),
        ] {
            let mut with = lines.clone();
            with.insert(2, inserted);
            let e = dearmor(&with.join("\n")).unwrap_err().to_string();
            assert!(e.contains(phrase), "{e}");
        }
    }
}
