//! STREAM: the payload cut into 64 KiB chunks, each sealed with AES-256-GCM
//! under the payload key and a nonce made of a chunk counter and a
//! last-chunk flag.
//!
//! Invariants:
//! - a nonce is never used twice under one payload key: [`ChunkNonce`] only
//!   counts up, and its last flag can be set once, after which it cannot be
//!   advanced;
//! - every chunk but the final one is full, and the final chunk is empty only
//!   when the whole payload is; a reader therefore knows where the payload
//!   ends, and a truncation, reordering, or appended data fails
//!   authentication;
//! - the opener hands out plaintext only after its chunk authenticated, and
//!   holds at most one chunk at a time: memory does not grow with the payload.

use std::io::{self, Read, Write};

use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::{Zeroize, Zeroizing};

use super::BundleError;

/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: usize = 65_536;
/// AES-GCM tag length.
pub const TAG_SIZE: usize = 16;
/// Ciphertext bytes of a full chunk.
pub const SEALED_CHUNK_SIZE: usize = CHUNK_SIZE + TAG_SIZE;
const NONCE_LEN: usize = 12;
/// How many appended bytes the opener looks past to tell "data was appended"
/// from "a chunk was modified".
const MAX_TAIL_PROBE: usize = 64;
/// The counter takes 11 bytes of the nonce; keyferry keeps it in a u64,
/// which no payload can exhaust (2^64 chunks of 64 KiB).
const COUNTER_OFFSET: usize = NONCE_LEN - 1 - 8;

/// The nonce of the next chunk: an 11-byte big-endian counter and a final
/// byte that is 0x01 on the last chunk.
#[derive(Debug)]
pub struct ChunkNonce {
    counter: u64,
    last: bool,
}

impl ChunkNonce {
    pub fn first() -> Self {
        Self {
            counter: 0,
            last: false,
        }
    }

    /// Index of the chunk this nonce seals.
    pub fn index(&self) -> u64 {
        self.counter
    }

    pub fn is_last(&self) -> bool {
        self.last
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

fn nonce(bytes: &[u8; NONCE_LEN]) -> Nonce<aes_gcm::aes::cipher::consts::U12> {
    Nonce::try_from(&bytes[..]).expect("12-byte nonce")
}

/// Seals plaintext written to it into STREAM chunks written to `out`.
/// Call [`finish`](Self::finish): dropping it without finishing writes no
/// final chunk, so the output can never be mistaken for a whole payload.
pub struct StreamSealer<W: Write> {
    out: W,
    cipher: Aes256Gcm,
    nonce: ChunkNonce,
    buf: Zeroizing<Vec<u8>>,
    filled: usize,
}

impl<W: Write> StreamSealer<W> {
    pub fn new(key: &[u8; 32], out: W) -> Self {
        Self {
            out,
            cipher: Aes256Gcm::new(key.into()),
            nonce: ChunkNonce::first(),
            buf: Zeroizing::new(vec![0u8; SEALED_CHUNK_SIZE]),
            filled: 0,
        }
    }

    /// Seals one chunk and writes it out: the buffered plaintext, or
    /// `from` (a whole chunk of the caller's data, encrypted straight into
    /// the buffer so that it is not copied first).
    fn seal_chunk(&mut self, from: Option<&[u8]>) -> io::Result<()> {
        let len = from.map_or(self.filled, <[u8]>::len);
        let (body, rest) = self.buf[..len + TAG_SIZE].split_at_mut(len);
        let inout = match from {
            Some(src) => InOutBuf::new(src, body).expect("equal lengths"),
            None => body.into(),
        };
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce(&self.nonce.bytes()), &[], inout)
            .map_err(|_| io::Error::other("AES-GCM refused to seal a chunk"))?;
        rest.copy_from_slice(&tag);
        self.out.write_all(&self.buf[..len + TAG_SIZE])?;
        self.filled = 0;
        Ok(())
    }

    /// Seals the buffered rest as the final chunk and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.nonce.set_last();
        self.seal_chunk(None)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for StreamSealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        // A full buffer is sealed only once more data arrives: the final
        // chunk may be full, so we cannot know it is not the last before.
        if self.filled == CHUNK_SIZE {
            self.seal_chunk(None)?;
            self.nonce.advance();
        }
        if self.filled == 0 && data.len() > CHUNK_SIZE {
            // A whole chunk with more data after it cannot be the final
            // one: seal it from the caller's buffer, saving a copy.
            self.seal_chunk(Some(&data[..CHUNK_SIZE]))?;
            self.nonce.advance();
            return Ok(CHUNK_SIZE);
        }
        let n = data.len().min(CHUNK_SIZE - self.filled);
        self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Nothing can be flushed before the chunk is full.
        Ok(())
    }
}

/// Reads STREAM chunks from `input` and yields authenticated plaintext.
pub struct StreamOpener<R: Read> {
    input: R,
    cipher: Aes256Gcm,
    nonce: ChunkNonce,
    /// One sealed chunk plus one byte of look-ahead, which tells whether a
    /// full chunk is the final one.
    buf: Zeroizing<Vec<u8>>,
    /// Bytes of `buf` holding input read so far.
    pending: usize,
    /// Bytes at the front of `buf` that belong to the chunk already opened
    /// (the look-ahead follows them).
    consumed: usize,
    /// Plaintext ready to hand out: `buf[pos..end]`.
    pos: usize,
    end: usize,
    done: bool,
    failed: bool,
}

impl<R: Read> StreamOpener<R> {
    pub fn new(key: &[u8; 32], input: R) -> Self {
        Self {
            input,
            cipher: Aes256Gcm::new(key.into()),
            nonce: ChunkNonce::first(),
            buf: Zeroizing::new(vec![0u8; SEALED_CHUNK_SIZE + 1]),
            pending: 0,
            consumed: 0,
            pos: 0,
            end: 0,
            done: false,
            failed: false,
        }
    }

    /// Whether the final chunk has been read and authenticated.
    pub fn is_complete(&self) -> bool {
        self.done && self.pos == self.end
    }

    /// Reads to the end, authenticating every remaining chunk, and fails if
    /// any plaintext is left: used where the caller's parser has already
    /// consumed all it expects.
    pub fn expect_end(&mut self) -> Result<(), BundleError> {
        let mut probe = [0u8; 1];
        match self.read(&mut probe) {
            Ok(0) => Ok(()),
            Ok(_) => Err(BundleError::ExtraPayload),
            Err(e) => Err(BundleError::from_stream_io(e)),
        }
    }

    /// Opens the sealed chunk `buf[..len]` with the given last flag, into
    /// `dst` when given (the caller's buffer, saving a copy), else in place.
    /// On failure nothing is written: the tag is checked first.
    fn decrypt(&mut self, len: usize, last: bool, dst: Option<&mut [u8]>) -> bool {
        let (body, rest) = self.buf[..len].split_at_mut(len - TAG_SIZE);
        let tag = Tag::try_from(&rest[..TAG_SIZE]).expect("16-byte tag");
        let inout = match dst {
            Some(d) => InOutBuf::new(&*body, &mut d[..len - TAG_SIZE]).expect("equal lengths"),
            None => body.into(),
        };
        self.cipher
            .decrypt_inout_detached(&nonce(&self.nonce.bytes_with(last)), &[], inout, &tag)
            .is_ok()
    }

    /// Reads and opens the next chunk, into `dst` when given (it must hold
    /// a whole chunk), else into `buf`. Returns the plaintext length.
    fn next_chunk(&mut self, mut dst: Option<&mut [u8]>) -> Result<usize, BundleError> {
        if self.consumed > 0 {
            self.buf.copy_within(self.consumed..self.pending, 0);
            self.pending -= self.consumed;
            self.consumed = 0;
        }
        while self.pending < self.buf.len() {
            match self.input.read(&mut self.buf[self.pending..]) {
                Ok(0) => break,
                Ok(n) => self.pending += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BundleError::from_stream_io(e)),
            }
        }
        let index = self.nonce.index();
        if self.pending > SEALED_CHUNK_SIZE {
            // More input follows: this must be a full, non-final chunk.
            if !self.decrypt(SEALED_CHUNK_SIZE, false, dst.as_deref_mut()) {
                return Err(if self.decrypt(SEALED_CHUNK_SIZE, true, None) {
                    BundleError::TrailingData
                } else {
                    BundleError::ModifiedChunk(index)
                });
            }
            self.consumed = SEALED_CHUNK_SIZE;
            self.nonce.advance();
            return Ok(CHUNK_SIZE);
        }
        // The input ends within this chunk: it must be the final one.
        let len = self.pending;
        if len < TAG_SIZE {
            return Err(BundleError::Truncated);
        }
        if !self.decrypt(len, true, dst) {
            return Err(
                if len == SEALED_CHUNK_SIZE && self.decrypt(len, false, None) {
                    // A valid non-final chunk with nothing after it: the final
                    // chunk was cut off.
                    BundleError::Truncated
                } else if self.opens_without_a_tail(len) {
                    BundleError::TrailingData
                } else {
                    // A chunk cut in the middle and a modified chunk look the
                    // same; the message names both.
                    BundleError::ModifiedChunk(index)
                },
            );
        }
        if len == TAG_SIZE && index > 0 {
            return Err(BundleError::EmptyFinalChunk);
        }
        self.nonce.set_last();
        self.pending = 0;
        self.done = true;
        Ok(len - TAG_SIZE)
    }

    /// Whether the final piece opens once a few appended bytes are cut off
    /// (a newline added by a transfer tool, say). Only on the failure path,
    /// and bounded by [`MAX_TAIL_PROBE`], so it costs at most a few ms.
    fn opens_without_a_tail(&mut self, len: usize) -> bool {
        (1..=MAX_TAIL_PROBE.min(len - TAG_SIZE)).any(|k| self.decrypt(len - k, true, None))
    }
}

impl<R: Read> Read for StreamOpener<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other(BundleError::StreamAlreadyFailed));
        }
        if self.pos == self.end {
            if self.done {
                return Ok(0);
            }
            // Wipe the plaintext handed out before reading more.
            self.buf[..self.end].zeroize();
            self.pos = 0;
            self.end = 0;
            // A caller with room for a whole chunk gets it decrypted straight
            // into its buffer; plaintext then never sits in ours.
            let direct = out.len() >= CHUNK_SIZE;
            match self.next_chunk(direct.then_some(&mut *out)) {
                Ok(n) if direct => return Ok(n),
                Ok(n) => self.end = n,
                Err(e) => {
                    self.failed = true;
                    return Err(io::Error::other(e));
                }
            }
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
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

    fn open(sealed: &[u8]) -> Result<Vec<u8>, BundleError> {
        let mut o = StreamOpener::new(&KEY, sealed);
        let mut out = Vec::new();
        o.read_to_end(&mut out)
            .map_err(BundleError::from_stream_io)?;
        Ok(out)
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
        // Writes that take the buffered path and the copy-free path in turn.
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
        // Reads into buffers smaller and larger than a chunk, in turn.
        let mut o = StreamOpener::new(&KEY, &reference[..]);
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
        // Cut inside the header-less first chunk.
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
        // A flipped bit in the last chunk.
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(open(&flipped), Err(BundleError::ModifiedChunk(2))));
    }

    #[test]
    fn an_empty_final_chunk_after_data_is_refused() {
        // Hand-build: one full non-final chunk, then an empty final chunk.
        let cipher = Aes256Gcm::new((&KEY).into());
        let mut nonce = ChunkNonce::first();
        let mut body = vec![1u8; CHUNK_SIZE];
        let tag = cipher
            .encrypt_inout_detached(
                &super::nonce(&nonce.bytes()),
                &[],
                body.as_mut_slice().into(),
            )
            .unwrap();
        body.extend_from_slice(&tag);
        nonce.advance();
        nonce.set_last();
        let tag = cipher
            .encrypt_inout_detached(&super::nonce(&nonce.bytes()), &[], (&mut [][..]).into())
            .unwrap();
        body.extend_from_slice(&tag);
        assert!(matches!(open(&body), Err(BundleError::EmptyFinalChunk)));
    }
}
