//! STREAM: the payload cut into 64 KiB chunks, each sealed with AES-256-GCM
//! under the payload key and a nonce made of a chunk counter and a
//! last-chunk flag. [`StreamSealer`] is a `Write` and [`StreamOpener`] a
//! `Read`; both work one chunk at a time, on the caller's thread.
//!
//! Invariants:
//! - a nonce is never used twice under one payload key: [`ChunkNonce`] only
//!   counts up, and its last flag can be set once, after which it cannot be
//!   advanced;
//! - every chunk but the final one is full, and the final chunk is empty only
//!   when the whole payload is; a reader therefore knows where the payload
//!   ends, and a truncation, reordering, or appended data fails
//!   authentication;
//! - the sealer writes a final chunk only from [`StreamSealer::finish`],
//!   and refuses to go on or to finish after any failed write: a failure can
//!   never leave output that passes for a whole, shorter payload;
//! - the opener hands out plaintext only after its chunk authenticated; a
//!   chunk that fails leaves no plaintext behind;
//! - memory is bounded whatever the payload: the sealer holds one chunk,
//!   the opener one chunk of plaintext and at most two chunks and a byte of
//!   ciphertext; every buffer that holds plaintext is wiped before it is
//!   reused or freed;
//! - whether a failed chunk was damaged, cut or followed by appended data
//!   is decided from the input alone;
//! - the opener's failures are [`BundleError`]s: a caller that reads it
//!   through `Read`/`BufRead` gets an `io::Error` with the same message,
//!   and the typed error from [`StreamOpener::take_error`].

use std::io::{self, BufRead, Read, Write};

use zeroize::{Zeroize, Zeroizing};

use super::BundleError;
use crate::aead::{Cipher, NONCE_LEN, TAG_LEN};

/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: usize = 65_536;
/// AES-GCM tag length.
pub const TAG_SIZE: usize = TAG_LEN;
/// Ciphertext bytes of a full chunk.
pub const SEALED_CHUNK_SIZE: usize = CHUNK_SIZE + TAG_SIZE;
/// How many appended bytes the opener looks past to tell "data was appended"
/// from "a chunk was modified".
const MAX_TAIL_PROBE: usize = 64;
/// The counter takes 11 bytes of the nonce; keyferry keeps it in a u64,
/// which no payload can exhaust (2^64 chunks of 64 KiB).
const COUNTER_OFFSET: usize = NONCE_LEN - 1 - 8;
/// What the opener reads ahead: a chunk, and more than a chunk after it, so
/// that both whether it is final and how a failure is named are settled
/// (see [`StreamOpener::open_next`]).
const LOOK_AHEAD: usize = 2 * SEALED_CHUNK_SIZE + 1;

/// The nonce of the next chunk: an 11-byte big-endian counter and a final
/// byte that is 0x01 on the last chunk.
#[derive(Debug)]
pub(crate) struct ChunkNonce {
    counter: u64,
    last: bool,
}

impl ChunkNonce {
    pub(crate) fn first() -> Self {
        Self {
            counter: 0,
            last: false,
        }
    }

    /// Index of the chunk this nonce seals.
    pub(crate) fn index(&self) -> u64 {
        self.counter
    }

    /// The nonce bytes, with the last flag as given (used by the opener to
    /// try the other flag when classifying a failure; it never seals).
    fn bytes_with(&self, last: bool) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[COUNTER_OFFSET..NONCE_LEN - 1].copy_from_slice(&self.counter.to_be_bytes());
        n[NONCE_LEN - 1] = u8::from(last);
        n
    }

    fn bytes(&self) -> [u8; NONCE_LEN] {
        self.bytes_with(self.last)
    }

    /// Moves on to the next chunk. Panics after the last flag is set: sealing
    /// past the final chunk is a bug, never an input error.
    fn advance(&mut self) {
        assert!(!self.last, "STREAM nonce advanced past the final chunk");
        self.counter = self
            .counter
            .checked_add(1)
            .expect("STREAM chunk counter overflow");
    }

    /// Marks this chunk as the final one; it can only happen once.
    fn set_last(&mut self) {
        assert!(!self.last, "STREAM last flag set twice");
        self.last = true;
    }
}

/// Seals plaintext written to it into STREAM chunks written to `out`.
/// Call [`finish`](Self::finish): dropping it without finishing writes no
/// final chunk, so the output can never be mistaken for a whole payload.
pub struct StreamSealer<W: Write> {
    out: W,
    cipher: Cipher,
    nonce: ChunkNonce,
    /// The plaintext of the chunk being filled, with room for its tag; it
    /// never grows past that, so it is never reallocated (which would
    /// leave a copy behind).
    chunk: Zeroizing<Vec<u8>>,
    /// A write failed: what was sealed is incomplete, and the sealer
    /// refuses to go on or to finish.
    failed: bool,
}

impl<W: Write> StreamSealer<W> {
    pub fn new(key: &[u8; 32], out: W) -> Self {
        Self {
            out,
            cipher: Cipher::new(key),
            nonce: ChunkNonce::first(),
            chunk: Zeroizing::new(Vec::with_capacity(SEALED_CHUNK_SIZE)),
            failed: false,
        }
    }

    /// Runs `step` unless an earlier one failed, and remembers if it fails.
    fn guard<T>(&mut self, step: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<T> {
        if self.failed {
            return Err(io::Error::other(
                "an earlier write of this payload failed; it is incomplete and cannot be finished",
            ));
        }
        let result = step(self);
        self.failed = result.is_err();
        result
    }

    /// Seals the buffered chunk with the current nonce and writes it out.
    fn seal_chunk(&mut self) -> io::Result<()> {
        let tag = self
            .cipher
            .seal_in_place(&self.nonce.bytes(), &[], &mut self.chunk);
        self.chunk.extend_from_slice(&tag);
        self.out.write_all(&self.chunk)?;
        // Ciphertext only from here on; the next plaintext overwrites it.
        self.chunk.clear();
        Ok(())
    }

    /// Seals the buffered rest as the final chunk and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.guard(|s| {
            s.nonce.set_last();
            s.seal_chunk()?;
            s.out.flush()
        })?;
        Ok(self.out)
    }
}

impl<W: Write> Write for StreamSealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.guard(|s| {
            if data.is_empty() {
                return Ok(0);
            }
            // A full chunk is sealed only once more data arrives: the final
            // chunk may be full, so it is not known to be non-final before.
            if s.chunk.len() == CHUNK_SIZE {
                s.seal_chunk()?;
                s.nonce.advance();
            }
            let n = data.len().min(CHUNK_SIZE - s.chunk.len());
            s.chunk.extend_from_slice(&data[..n]);
            Ok(n)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        // Nothing can be written before the chunk is known not to be final.
        Ok(())
    }
}

/// Where the opener reads sealed bytes from: any reader, and for a reader
/// whose own failures are bundle errors (the armor's), the typed error
/// behind the `io::Error` it returned.
pub trait SealedInput: Read {
    /// The bundle error behind the last failed read, if it was one.
    fn take_error(&mut self) -> Option<BundleError> {
        None
    }
}

impl SealedInput for &[u8] {}

/// Reads STREAM chunks from `input` and yields authenticated plaintext,
/// through `Read` and `BufRead`.
pub struct StreamOpener<R: SealedInput> {
    input: R,
    cipher: Cipher,
    nonce: ChunkNonce,
    /// Ciphertext read ahead: `sealed[start..end]` is not opened yet. It is
    /// never opened in place, so a failed chunk can be tried again to name
    /// the damage.
    sealed: Box<[u8]>,
    start: usize,
    end: usize,
    /// The input has ended: everything left is in `sealed`.
    eof: bool,
    /// Authenticated plaintext of the last chunk opened; `plain[pos..]` is
    /// not handed out yet. Wiped before the next chunk is opened into it.
    plain: Zeroizing<Vec<u8>>,
    pos: usize,
    done: bool,
    /// Set by the first failure; every later call fails too.
    failed: bool,
    /// That failure, until [`take_error`](Self::take_error) takes it.
    failure: Option<BundleError>,
}

impl<R: SealedInput> StreamOpener<R> {
    pub fn new(key: &[u8; 32], input: R) -> Self {
        Self {
            input,
            cipher: Cipher::new(key),
            nonce: ChunkNonce::first(),
            sealed: vec![0; LOOK_AHEAD].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            plain: Zeroizing::new(Vec::with_capacity(CHUNK_SIZE)),
            pos: 0,
            done: false,
            failed: false,
            failure: None,
        }
    }

    /// The sealed input, as far as it was read.
    pub fn input(&self) -> &R {
        &self.input
    }

    /// The error that stopped the stream, once: what a `Read` or `BufRead`
    /// caller got as an `io::Error`, typed.
    pub fn take_error(&mut self) -> Option<BundleError> {
        self.failure.take()
    }

    /// Opens chunks until plaintext is pending or the payload has ended,
    /// and returns what is pending (empty at the end).
    fn fill_plain(&mut self) -> Result<&[u8], BundleError> {
        if self.failed {
            return Err(BundleError::StreamAlreadyFailed);
        }
        while self.pos == self.plain.len() && !self.done {
            if let Err(e) = self.open_next() {
                self.failed = true;
                self.wipe_plain();
                return Err(e);
            }
        }
        Ok(&self.plain[self.pos..])
    }

    /// Whether the final chunk has been read and authenticated and all of
    /// its plaintext handed out.
    #[cfg(test)]
    fn is_complete(&self) -> bool {
        self.done && self.pos == self.plain.len()
    }

    /// Reads to the end, authenticating every remaining chunk, and fails if
    /// any plaintext is left: used where the caller's parser has already
    /// consumed all it expects.
    pub(crate) fn expect_end(&mut self) -> Result<(), BundleError> {
        if self.fill_plain()?.is_empty() {
            Ok(())
        } else {
            Err(BundleError::ExtraPayload)
        }
    }

    /// Moves the unopened input to the front and reads until the look-ahead
    /// is full or the input ends.
    fn fill(&mut self) -> Result<(), BundleError> {
        self.sealed.copy_within(self.start..self.end, 0);
        (self.start, self.end) = (0, self.end - self.start);
        while self.end < LOOK_AHEAD {
            match self.input.read(&mut self.sealed[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.input.take_error().unwrap_or(BundleError::Io(e))),
            }
        }
        Ok(())
    }

    /// Opens the sealed chunk `sealed[start..start + len]` with the given
    /// last flag into `plain`. On failure `plain` is left empty.
    fn decrypt(&mut self, len: usize, last: bool) -> bool {
        let nonce = self.nonce.bytes_with(last);
        self.wipe_plain();
        let (body, tag) = self.sealed[self.start..self.start + len].split_at(len - TAG_SIZE);
        let tag: &[u8; TAG_SIZE] = tag.try_into().expect("16-byte tag");
        self.plain.extend_from_slice(body);
        let opened = self
            .cipher
            .open_in_place(&nonce, &[], &mut self.plain, tag)
            .is_ok();
        if !opened {
            // Zeroed by the cipher already.
            self.plain.clear();
        }
        opened
    }

    /// Whether the chunk opens with the given flag and length; the
    /// plaintext of a probe that opens is wiped at once.
    fn probe(&mut self, len: usize, last: bool) -> bool {
        let opens = self.decrypt(len, last);
        self.wipe_plain();
        opens
    }

    /// Wipes and empties `plain`. Only `plain[..len]` can hold plaintext:
    /// the buffer never grows past its first allocation, and what lay past
    /// its length was wiped when it was emptied before (all of it is wiped
    /// again when the opener drops).
    fn wipe_plain(&mut self) {
        self.plain.as_mut_slice().zeroize();
        self.plain.clear();
        self.pos = 0;
    }

    /// Reads if needed and opens the next chunk into `plain`.
    ///
    /// A chunk that fails is classified from the input alone: a full chunk
    /// with at most a chunk of input after it is tried as the final one
    /// (appended data); a chunk with more after it is just modified; the
    /// piece the input ends with is tried as a non-final chunk (the final
    /// one was cut off) and without a few trailing bytes (appended data).
    fn open_next(&mut self) -> Result<(), BundleError> {
        if !self.eof && self.end - self.start < LOOK_AHEAD {
            self.fill()?;
        }
        let index = self.nonce.index();
        let left = self.end - self.start;
        let after = left.saturating_sub(SEALED_CHUNK_SIZE);
        if after > 0 {
            // More input follows: this must be a full, non-final chunk.
            if !self.decrypt(SEALED_CHUNK_SIZE, false) {
                return Err(
                    if after <= SEALED_CHUNK_SIZE && self.probe(SEALED_CHUNK_SIZE, true) {
                        BundleError::TrailingData
                    } else {
                        BundleError::ModifiedChunk(index)
                    },
                );
            }
            self.start += SEALED_CHUNK_SIZE;
            self.nonce.advance();
            return Ok(());
        }
        // The input ends within this chunk: it must be the final one.
        if left < TAG_SIZE {
            return Err(BundleError::Truncated);
        }
        if !self.decrypt(left, true) {
            return Err(if left == SEALED_CHUNK_SIZE && self.probe(left, false) {
                // A valid non-final chunk with nothing after it: the final
                // chunk was cut off.
                BundleError::Truncated
            } else if self.opens_without_a_tail(left) {
                BundleError::TrailingData
            } else {
                // A chunk cut in the middle and a modified chunk look the
                // same; the message names both.
                BundleError::ModifiedChunk(index)
            });
        }
        if left == TAG_SIZE && index > 0 {
            return Err(BundleError::EmptyFinalChunk);
        }
        self.nonce.set_last();
        self.start = self.end;
        self.done = true;
        Ok(())
    }

    /// Whether the final piece opens once a few appended bytes are cut off
    /// (a newline added by a transfer tool, say). Only on the failure path,
    /// and bounded by [`MAX_TAIL_PROBE`].
    fn opens_without_a_tail(&mut self, len: usize) -> bool {
        (1..=MAX_TAIL_PROBE.min(len - TAG_SIZE)).any(|k| self.probe(len - k, true))
    }
}

impl<R: SealedInput> BufRead for StreamOpener<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        // The typed error is kept for `take_error` (the first one only: a
        // call after a failure says so, and must not replace it).
        if let Err(e) = self.fill_plain() {
            let message = e.to_string();
            if !matches!(e, BundleError::StreamAlreadyFailed) {
                self.failure = Some(e);
            }
            return Err(io::Error::new(io::ErrorKind::InvalidData, message));
        }
        Ok(&self.plain[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.plain.len());
    }
}

impl<R: SealedInput> Read for StreamOpener<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let pending = self.fill_buf()?;
        let n = out.len().min(pending.len());
        out[..n].copy_from_slice(&pending[..n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn seal(data: &[u8]) -> Vec<u8> {
        let mut s = StreamSealer::new(&KEY, Vec::new());
        s.write_all(data).unwrap();
        s.finish().unwrap()
    }

    /// Opens through `Read`, checking on the way that whatever was handed
    /// out before a failure is whole chunks of plaintext.
    fn open(sealed: &[u8]) -> Result<Vec<u8>, BundleError> {
        let mut out = Vec::new();
        let mut opener = StreamOpener::new(&KEY, sealed);
        match opener.read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(e) => {
                assert!(
                    out.len().is_multiple_of(CHUNK_SIZE),
                    "part of a chunk handed out before a failure"
                );
                let typed = opener.take_error().expect("a failure is kept typed");
                assert_eq!(e.to_string(), typed.to_string());
                Err(typed)
            }
        }
    }

    /// A reader that hands out its bytes in pieces of varying size, down to
    /// one byte, as pipes and sockets do.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.step = (self.step * 7 + 3) % 9001;
            let n = out.len().min(self.data.len()).min(self.step + 1);
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    impl SealedInput for Trickle<'_> {}

    /// A writer that fails once it has taken `left` bytes.
    struct FailingAfter {
        taken: Vec<u8>,
        left: usize,
    }

    impl Write for FailingAfter {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::Error::other("disk full"));
            }
            let n = data.len().min(self.left);
            self.taken.extend_from_slice(&data[..n]);
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn chunk_sizes_at_the_boundaries() {
        for (len, chunks) in [
            (0usize, 1usize),
            (1, 1),
            (CHUNK_SIZE - 1, 1),
            (CHUNK_SIZE, 1),
            (CHUNK_SIZE + 1, 2),
            (3 * CHUNK_SIZE, 3),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = seal(&data);
            assert_eq!(sealed.len(), len + chunks * TAG_SIZE, "len {len}");
            assert_eq!(open(&sealed).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn any_mix_of_write_and_read_sizes_gives_the_same_bytes() {
        let data: Vec<u8> = (0..3 * CHUNK_SIZE + 17).map(|i| (i % 247) as u8).collect();
        let reference = seal(&data);
        let mut s = StreamSealer::new(&KEY, Vec::new());
        let mut rest = &data[..];
        for size in [5, CHUNK_SIZE + 1, CHUNK_SIZE, 2 * CHUNK_SIZE, 1]
            .iter()
            .cycle()
        {
            if rest.is_empty() {
                break;
            }
            let n = (*size).min(rest.len());
            s.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
        }
        assert_eq!(s.finish().unwrap(), reference);
        // Reads into buffers smaller and larger than a chunk, in turn, from
        // an input that arrives in pieces.
        let mut o = StreamOpener::new(
            &KEY,
            Trickle {
                data: &reference,
                step: 1,
            },
        );
        let mut out = Vec::new();
        for size in [7, CHUNK_SIZE, 1, CHUNK_SIZE + 9, 3].iter().cycle() {
            let mut buf = vec![0u8; *size];
            let n = o.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, data);
        assert!(o.is_complete());
    }

    #[test]
    fn a_failed_write_leaves_no_output_that_opens() {
        let data = vec![4u8; 3 * CHUNK_SIZE + 5];
        for left in [0, 10, SEALED_CHUNK_SIZE, 2 * SEALED_CHUNK_SIZE + 3] {
            let mut s = StreamSealer::new(
                &KEY,
                FailingAfter {
                    taken: Vec::new(),
                    left,
                },
            );
            assert!(s.write_all(&data).is_err(), "left {left}");
            assert!(s.write(b"more").is_err(), "went on after a failure");
            assert!(s.finish().is_err(), "finished after a failure");
        }
        // What a failing writer took is never a whole payload.
        let mut s = StreamSealer::new(
            &KEY,
            FailingAfter {
                taken: Vec::new(),
                left: 2 * SEALED_CHUNK_SIZE,
            },
        );
        assert!(s.write_all(&data).is_err());
        let taken = std::mem::take(&mut s.out.taken);
        assert!(matches!(open(&taken), Err(BundleError::Truncated)));
    }

    #[test]
    fn nonce_layout_is_counter_then_last_flag() {
        let mut n = ChunkNonce::first();
        assert_eq!(n.bytes(), [0; 12]);
        n.advance();
        n.advance();
        n.set_last();
        assert_eq!(n.bytes(), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1]);
    }

    #[test]
    #[should_panic(expected = "past the final chunk")]
    fn a_nonce_cannot_advance_after_the_last_chunk() {
        let mut n = ChunkNonce::first();
        n.set_last();
        n.advance();
    }

    #[test]
    fn damage_is_classified() {
        let data = vec![5u8; 2 * CHUNK_SIZE + 10];
        let sealed = seal(&data);
        // Cut exactly after the first chunk: the final chunk is missing.
        assert!(matches!(
            open(&sealed[..SEALED_CHUNK_SIZE]),
            Err(BundleError::Truncated)
        ));
        // Cut inside a chunk: indistinguishable from a modified chunk.
        assert!(matches!(
            open(&sealed[..SEALED_CHUNK_SIZE + 100]),
            Err(BundleError::ModifiedChunk(1))
        ));
        // Cut inside the first chunk's tag.
        assert!(matches!(open(&sealed[..10]), Err(BundleError::Truncated)));
        // Appended bytes, after a short and after a full final chunk.
        let mut longer = sealed.clone();
        longer.extend_from_slice(b"x\r\n");
        assert!(matches!(open(&longer), Err(BundleError::TrailingData)));
        let mut full = seal(&vec![1u8; CHUNK_SIZE]);
        full.push(0);
        assert!(matches!(open(&full), Err(BundleError::TrailingData)));
        // Two chunks swapped.
        let mut swapped = sealed.clone();
        let (a, b) = swapped.split_at_mut(SEALED_CHUNK_SIZE);
        a.swap_with_slice(&mut b[..SEALED_CHUNK_SIZE]);
        assert!(matches!(open(&swapped), Err(BundleError::ModifiedChunk(0))));
        // Appended data is recognised as such up to a whole chunk of it;
        // more than that after a full final chunk reads as a modified chunk.
        let full = seal(&vec![1u8; CHUNK_SIZE]);
        let mut up_to_a_chunk = full.clone();
        up_to_a_chunk.extend_from_slice(&[b'j'; SEALED_CHUNK_SIZE]);
        assert!(matches!(
            open(&up_to_a_chunk),
            Err(BundleError::TrailingData)
        ));
        let mut more = up_to_a_chunk.clone();
        more.push(b'j');
        assert!(matches!(open(&more), Err(BundleError::ModifiedChunk(0))));
        // A flipped bit in the last chunk.
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(open(&flipped), Err(BundleError::ModifiedChunk(2))));
    }

    #[test]
    fn damage_anywhere_in_a_long_payload_is_named_by_its_chunk() {
        let chunks = 20;
        let data: Vec<u8> = (0..chunks * CHUNK_SIZE + 100)
            .map(|i| (i % 233) as u8)
            .collect();
        let sealed = seal(&data);
        assert!(open(&sealed).unwrap() == data);
        let last = chunks as u64; // the short final chunk
        let chunk = |k: u64| k as usize * SEALED_CHUNK_SIZE;
        for k in [0, 1, 9, 18, 19, last] {
            let mut flipped = sealed.clone();
            flipped[chunk(k) + 77] ^= 0x02;
            assert!(
                matches!(open(&flipped), Err(BundleError::ModifiedChunk(i)) if i == k),
                "bit flipped in chunk {k}"
            );
            let cut = &sealed[..(chunk(k) + 1000).min(sealed.len() - 1)];
            assert!(
                matches!(open(cut), Err(BundleError::ModifiedChunk(i)) if i == k),
                "cut inside chunk {k}"
            );
        }
        for k in [1, 2, 10, 19, last] {
            assert!(
                matches!(open(&sealed[..chunk(k)]), Err(BundleError::Truncated)),
                "cut after {k} whole chunks"
            );
        }
        let mut dropped = sealed[..chunk(7)].to_vec();
        dropped.extend_from_slice(&sealed[chunk(8)..]);
        assert!(matches!(open(&dropped), Err(BundleError::ModifiedChunk(7))));
        // The same damage named the same when the input arrives in pieces.
        let mut o = StreamOpener::new(
            &KEY,
            Trickle {
                data: &dropped,
                step: 0,
            },
        );
        assert!(o.read_to_end(&mut Vec::new()).is_err());
        assert!(matches!(
            o.take_error(),
            Some(BundleError::ModifiedChunk(7))
        ));
        // Later calls fail too, and say why without hiding the first error.
        assert!(matches!(
            o.expect_end(),
            Err(BundleError::StreamAlreadyFailed)
        ));
    }

    #[test]
    fn an_empty_final_chunk_after_data_is_refused() {
        // Hand-build: one full non-final chunk, then an empty final chunk.
        let cipher = Cipher::new(&KEY);
        let mut nonce = ChunkNonce::first();
        let mut body = vec![1u8; CHUNK_SIZE];
        let tag = cipher.seal_in_place(&nonce.bytes(), &[], &mut body);
        body.extend_from_slice(&tag);
        nonce.advance();
        nonce.set_last();
        let tag = cipher.seal_in_place(&nonce.bytes(), &[], &mut []);
        body.extend_from_slice(&tag);
        assert!(matches!(open(&body), Err(BundleError::EmptyFinalChunk)));
    }
}
