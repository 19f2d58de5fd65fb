//! The armored (text) form of a bundle: the binary in padded standard base64,
//! 64 characters a line, between BEGIN and END lines. Writer and reader sit
//! side by side.
//!
//! Invariants:
//! - the reader accepts LF or CRLF line ends and whitespace before the BEGIN
//!   line and after the END line, nothing else: every other deviation is an
//!   error that names the line;
//! - it streams: one line is held at a time, whatever the bundle's size;
//! - its failures are [`BundleError`]s: a `Read` caller gets an
//!   `io::Error` with the same message, and the typed error from
//!   [`ArmorReader::take_error`].

use std::io::{self, BufRead, Read, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::BundleError;

pub(crate) const BEGIN: &str = "-----BEGIN KEYFERRY BUNDLE-----";
pub(crate) const END: &str = "-----END KEYFERRY BUNDLE-----";
/// Base64 characters per line.
pub(crate) const LINE_CHARS: usize = 64;
/// Binary bytes per full line (64 characters encode 48 bytes).
const LINE_BYTES: usize = LINE_CHARS / 4 * 3;
/// The longest line the reader looks at before calling it malformed.
const MAX_LINE: usize = 256;

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

/// Whether `first_bytes` (the start of a file) look like armor: optional
/// whitespace, then the BEGIN line's dashes.
pub(crate) fn looks_armored(first_bytes: &[u8]) -> bool {
    first_bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'-')
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    BeforeBegin,
    Body,
    /// The last (short or padded) data line was read: END must follow.
    AfterLastData,
    AfterEnd,
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
            failure: None,
        }
    }

    /// The error behind the last `io::Error` a read returned, typed.
    pub fn take_error(&mut self) -> Option<BundleError> {
        self.failure.take()
    }

    fn bad(&self, what: &str) -> BundleError {
        BundleError::Armor(format!("line {}: {what}", self.line_no))
    }

    /// Reads one line into `raw` and returns its length without the LF or
    /// CRLF; `None` at end of input.
    fn next_line(&mut self) -> Result<Option<usize>, BundleError> {
        self.raw.clear();
        let n = (&mut self.input)
            .take(MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut self.raw)
            .map_err(BundleError::Io)?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        let mut len = self.raw.len();
        if self.raw.ends_with(b"\n") {
            len -= 1;
            if self.raw[..len].ends_with(b"\r") {
                len -= 1;
            }
        } else if len > MAX_LINE {
            return Err(self.bad(&format!("longer than {MAX_LINE} characters")));
        }
        Ok(Some(len))
    }

    /// Advances until decoded bytes are available or the END line is read.
    fn refill(&mut self) -> Result<(), BundleError> {
        loop {
            match self.state {
                State::AfterEnd => return Ok(()),
                State::BeforeBegin => {
                    let Some(len) = self.next_line()? else {
                        return Err(BundleError::Armor("no BEGIN line".into()));
                    };
                    let line = &self.raw[..len];
                    if line == BEGIN.as_bytes() {
                        self.state = State::Body;
                    } else if !line.iter().all(u8::is_ascii_whitespace) {
                        return Err(self.bad("expected the BEGIN KEYFERRY BUNDLE line"));
                    }
                }
                State::Body | State::AfterLastData => {
                    let state = self.state;
                    let Some(len) = self.next_line()? else {
                        return Err(BundleError::Armor(
                            "the END line is missing: the text was cut off".into(),
                        ));
                    };
                    let line = &self.raw[..len];
                    if line == END.as_bytes() {
                        self.state = State::AfterEnd;
                        self.expect_only_whitespace()?;
                        return Ok(());
                    }
                    if state == State::AfterLastData {
                        return Err(self.bad("data after a short or padded line"));
                    }
                    if len == 0 || len > LINE_CHARS || len % 4 != 0 {
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
                    return Ok(());
                }
            }
        }
    }

    fn expect_only_whitespace(&mut self) -> Result<(), BundleError> {
        let mut rest = [0u8; 512];
        loop {
            let n = self.input.read(&mut rest).map_err(BundleError::Io)?;
            if n == 0 {
                return Ok(());
            }
            if !rest[..n].iter().all(u8::is_ascii_whitespace) {
                return Err(BundleError::Armor(
                    "text after the END line: remove everything after it".into(),
                ));
            }
        }
    }
}

impl<R: BufRead> Read for ArmorReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.end {
            if self.state == State::AfterEnd {
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

    #[test]
    fn anything_but_whitespace_outside_the_block_is_refused() {
        let text = armor(b"hello world");
        assert!(dearmor(&format!("Subject: keys\n{text}")).is_err());
        assert!(dearmor(&format!("{text}thanks\n")).is_err());
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
        // Trailing spaces on a data line are not whitespace outside the block.
        let spaced = text.replacen(lines[1], &format!("{} ", lines[1]), 1);
        assert!(dearmor(&spaced).is_err());
    }
}
