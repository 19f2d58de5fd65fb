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
//!   a chunk that fails leaves zeros, never unauthenticated plaintext;
//! - sealer and opener each hold at most four batches of chunks (about
//!   4 MiB): memory does not grow with the payload;
//! - a large payload is sealed and opened on three threads (the caller's
//!   reads, one applies the cipher, one writes), but its nonces are still
//!   taken in order from the one [`ChunkNonce`], on the caller's thread,
//!   and only chunks already known not to be final (and, when opening,
//!   whose failure could only mean modification) leave it;
//! - whether a failed chunk was damaged, cut or followed by appended data
//!   is decided from the input alone, the same on every path.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::ops::Range;
use std::sync::{mpsc, OnceLock};
use std::{mem, thread};

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

/// Sealed chunks gathered before a write, and read at once when opening:
/// 16 chunks, about 1 MiB, so a file costs one read or write call per MiB
/// instead of one per chunk, and memory stays bounded whatever the payload.
const BATCH_CHUNKS: usize = 16;
const BATCH_SIZE: usize = BATCH_CHUNKS * SEALED_CHUNK_SIZE;
/// Plaintext bytes in a full batch.
const BATCH_PLAINTEXT: usize = BATCH_CHUNKS * CHUNK_SIZE;
/// Alignment of the opener's reads (a cache line).
const READ_ALIGN: usize = 64;

/// A buffer that is wiped on drop up to the furthest byte written
/// through it, and that grows as it is written, up to a capacity fixed at
/// creation. Writing goes only through [`at_mut`](Self::at_mut),
/// [`read_at`](Self::read_at) and [`copy_within`](Self::copy_within), which
/// grow the buffer first and keep that mark, so nothing secret can escape
/// the wipe; growing copies what was written and wipes the old allocation.
///
/// Growing, not allocating a whole batch up front: once `malloc` has raised
/// its mmap threshold past a megabyte (it does after the first such buffer
/// is freed), a zeroed megabyte is a `memset` plus a page fault per 4 KiB,
/// and opening a 1 KiB payload took 83 µs (benches/NOTES.md).
struct WipeBuf {
    bytes: Vec<u8>,
    written: usize,
    cap: usize,
}

/// The first allocation of a [`WipeBuf`] that is written at all: what a
/// small payload needs; from there it grows by [`GROWTH`].
const FIRST_ALLOC: usize = 16 << 10;
const GROWTH: usize = 4;

impl WipeBuf {
    /// An empty buffer that may grow to `cap` bytes; allocates nothing yet.
    fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            written: 0,
            cap,
        }
    }

    fn cap(&self) -> usize {
        self.cap
    }

    /// The length growing to hold `len` bytes gives: four times the
    /// current length or [`FIRST_ALLOC`] if that is more, and the whole
    /// capacity once that is more than half of it, so a buffer filled front
    /// to back copies at most a third of its bytes once.
    fn grown(&self, len: usize) -> usize {
        let grown = len.max(GROWTH * self.bytes.len()).max(FIRST_ALLOC);
        if 2 * grown > self.cap {
            self.cap
        } else {
            grown
        }
    }

    fn reserve(&mut self, len: usize) {
        assert!(len <= self.cap, "WipeBuf grown past its capacity");
        if len <= self.bytes.len() {
            return;
        }
        // Zeroed by the allocator: fresh pages from the OS need no memset.
        let mut bytes = vec![0; self.grown(len)];
        bytes[..self.written].copy_from_slice(&self.bytes[..self.written]);
        self.bytes[..self.written].zeroize();
        self.bytes = bytes;
    }

    /// Where to read up to after `pending` bytes: the end of what is
    /// allocated, or when that is full, the end of what growing gives.
    fn read_limit(&self, pending: usize) -> usize {
        if pending < self.bytes.len() {
            self.bytes.len()
        } else {
            self.grown(pending + 1)
        }
    }

    fn at_mut(&mut self, range: Range<usize>) -> &mut [u8] {
        self.reserve(range.end);
        self.written = self.written.max(range.end);
        &mut self.bytes[range]
    }

    /// One read from `input` into `[at..end]`; returns its length, and
    /// marks what it read. (Bytes a reader writes past the length it
    /// reports are its own misdoing; what keyferry itself puts in the
    /// buffer, plaintext included, is always within a marked range.)
    fn read_at<R: Read>(&mut self, input: &mut R, at: usize, end: usize) -> io::Result<usize> {
        self.reserve(end);
        let n = read_some(input, &mut self.bytes[at..end])?;
        self.written = self.written.max(at + n);
        Ok(n)
    }

    /// One vectored read of plaintext into the chunk slots of a batch,
    /// starting `from` plaintext bytes in (slot `from / CHUNK_SIZE`), and
    /// past the last slot into the one byte of `peek`; returns its length,
    /// and marks what it read. One call per batch, rather than one per
    /// slot: the caller's thread does nothing but read, and to a fast
    /// output it is the slowest of the three.
    fn read_slots<R: Read>(
        &mut self,
        input: &mut R,
        from: usize,
        peek: &mut [u8; 1],
    ) -> io::Result<usize> {
        self.reserve(BATCH_SIZE);
        let (full, part) = (from / CHUNK_SIZE, from % CHUNK_SIZE);
        let mut slices: Vec<IoSliceMut<'_>> = self.bytes[..BATCH_SIZE]
            .chunks_mut(SEALED_CHUNK_SIZE)
            .skip(full)
            .enumerate()
            .map(|(i, slot)| IoSliceMut::new(&mut slot[if i == 0 { part } else { 0 }..CHUNK_SIZE]))
            .chain(std::iter::once(IoSliceMut::new(peek.as_mut_slice())))
            .collect();
        let n = loop {
            match input.read_vectored(&mut slices) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        let end = (from + n).min(BATCH_PLAINTEXT);
        if end > from {
            let last = end - 1;
            let furthest = last / CHUNK_SIZE * SEALED_CHUNK_SIZE + last % CHUNK_SIZE + 1;
            self.written = self.written.max(furthest);
        }
        Ok(n)
    }

    fn copy_within(&mut self, src: Range<usize>, to: usize) {
        self.reserve(to + src.len());
        self.written = self.written.max(to + src.len());
        self.bytes.copy_within(src, to);
    }
}

impl std::ops::Deref for WipeBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for WipeBuf {
    fn drop(&mut self) {
        self.bytes[..self.written].zeroize();
    }
}

/// Reads once, retrying on interruption; 0 means end of input.
fn read_some<R: Read>(input: &mut R, into: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(into) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Seals the `len` plaintext bytes at `at` in `buf` in place and puts the
/// tag right after them.
fn seal_slot(cipher: &Cipher, buf: &mut WipeBuf, at: usize, len: usize, nonce: &[u8; NONCE_LEN]) {
    let (body, tag) = buf.at_mut(at..at + len + TAG_SIZE).split_at_mut(len);
    tag.copy_from_slice(&cipher.seal_in_place(nonce, &[], body));
}

/// The nonces of a whole batch of chunks that are not the final one, taken
/// in order from the one [`ChunkNonce`], so handing the sealing to another
/// thread cannot reuse or skip one.
struct BatchNonces {
    /// The index of the first chunk.
    first: u64,
    nonces: [[u8; NONCE_LEN]; BATCH_CHUNKS],
}

impl BatchNonces {
    fn take(nonce: &mut ChunkNonce) -> Self {
        Self {
            first: nonce.index(),
            nonces: std::array::from_fn(|_| {
                let bytes = nonce.bytes();
                nonce.advance();
                bytes
            }),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &[u8; NONCE_LEN]> {
        self.nonces.iter()
    }
}

/// Buffers a pipelined sealer or opener cycles through: one the caller's
/// thread reads into while the cipher and writing threads hold the others,
/// so no thread waits for another to wake up between batches. A fourth
/// measured no faster (benches/NOTES.md).
const PIPELINE_BUFFERS: usize = 3;

/// Whether threads beside this one can run at once: on a single CPU they
/// would only add hand-overs per batch.
/// Asked once per process: on Linux the answer reads the cgroup's CPU
/// quota, which costs more than sealing a small payload.
fn other_threads_help() -> bool {
    static HELPS: OnceLock<bool> = OnceLock::new();
    *HELPS.get_or_init(|| thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// A batch of full, non-final chunks on its way to or from the second
/// thread.
struct Batch {
    buf: WipeBuf,
    /// Where the first chunk starts in `buf`.
    at: usize,
    nonces: BatchNonces,
    /// Set by the opener: the first chunk that did not authenticate.
    failed: Option<usize>,
}

impl Batch {
    fn new(buf: WipeBuf, at: usize, nonces: BatchNonces) -> Self {
        Self {
            buf,
            at,
            nonces,
            failed: None,
        }
    }
}

/// The two threads a pipelined sealer or opener runs beside the caller's,
/// which keeps reading: the cipher thread applies its job to each batch and
/// passes it on to the writing thread, which writes it and sends its buffer
/// back for the caller to fill again. Batches keep their order. Neither
/// channel can block its sender: no more batches exist than either holds.
/// A write that fails stops both threads, and the caller gets its error
/// at the next hand-over.
struct Pipeline<E> {
    to_cipher: mpsc::SyncSender<Batch>,
    /// Buffers of written batches, oldest first; the writer's error last.
    written: mpsc::Receiver<Result<WipeBuf, E>>,
    /// The error for a thread that ended without one: it panicked, which
    /// is a bug, and the scope re-raises the panic.
    gone: fn() -> E,
}

impl<E: Send> Pipeline<E> {
    /// Starts the cipher and writing threads in `scope`; `None` if either
    /// could not be started.
    fn start<'scope, W: Write + Send>(
        scope: &'scope thread::Scope<'scope, '_>,
        name: &str,
        cipher: impl Fn(&mut Batch) + Send + 'scope,
        out: &'scope mut W,
        write: impl Fn(&mut W, &Batch) -> Result<(), E> + Send + 'scope,
        gone: fn() -> E,
    ) -> Option<Self>
    where
        E: 'scope,
    {
        let (to_cipher, work) = mpsc::sync_channel::<Batch>(PIPELINE_BUFFERS);
        let (to_writer, ciphered) = mpsc::sync_channel::<Batch>(PIPELINE_BUFFERS);
        let (to_reader, written) = mpsc::sync_channel(PIPELINE_BUFFERS + 1);
        thread::Builder::new()
            .name(format!("{name}-write"))
            .spawn_scoped(scope, move || {
                for batch in ciphered {
                    if let Err(e) = write(out, &batch) {
                        let _ = to_reader.send(Err(e));
                        return;
                    }
                    if to_reader.send(Ok(batch.buf)).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        thread::Builder::new()
            .name(name.into())
            .spawn_scoped(scope, move || {
                for mut batch in work {
                    cipher(&mut batch);
                    if to_writer.send(batch).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(Self {
            to_cipher,
            written,
            gone,
        })
    }

    /// Hands a batch to the cipher thread.
    fn send(&self, batch: Batch) -> Result<(), E> {
        self.to_cipher.send(batch).map_err(|_| self.why_stopped())
    }

    /// The buffer of the oldest batch in flight, once it is written.
    fn written(&self) -> Result<WipeBuf, E> {
        self.written.recv().unwrap_or_else(|_| Err((self.gone)()))
    }

    /// Waits until every batch sent is written.
    fn finish(self) -> Result<(), E> {
        drop(self.to_cipher);
        // Ends when the writing thread does, after the last batch.
        self.written.iter().try_for_each(|r| r.map(drop))
    }

    /// Why the threads stopped: the writer's error, which follows the
    /// buffers it wrote before.
    fn why_stopped(&self) -> E {
        self.written
            .iter()
            .find_map(Result::err)
            .unwrap_or_else(self.gone)
    }
}

/// The pipeline's threads ended without an error: one panicked.
fn pipeline_gone() -> io::Error {
    io::Error::other("keyferry's cipher or writing thread stopped")
}

/// Seals plaintext written to it into STREAM chunks written to `out`.
/// Call [`finish`](Self::finish): dropping it without finishing writes no
/// final chunk, so the output can never be mistaken for a whole payload.
pub struct StreamSealer<W: Write> {
    out: W,
    cipher: Cipher,
    nonce: ChunkNonce,
    /// Sealed chunks waiting to be written, then the plaintext of the chunk
    /// being filled. Every chunk has a slot of [`SEALED_CHUNK_SIZE`] bytes,
    /// so it is sealed where it lies and its tag goes right after it.
    batch: WipeBuf,
    /// Bytes of sealed chunks at the front of `batch`.
    sealed: usize,
    /// Plaintext bytes in the slot after them.
    filled: usize,
    /// A read or write failed: what was sealed is incomplete, and the
    /// sealer refuses to go on or to finish, so the output can never pass
    /// for a whole payload.
    failed: bool,
}

impl<W: Write> StreamSealer<W> {
    pub fn new(key: &[u8; 32], out: W) -> Self {
        Self {
            out,
            cipher: Cipher::new(key),
            nonce: ChunkNonce::first(),
            batch: WipeBuf::new(BATCH_SIZE),
            sealed: 0,
            filled: 0,
            failed: false,
        }
    }

    /// Runs `step` unless an earlier one failed, and remembers if it fails.
    fn guard<T>(&mut self, step: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<T> {
        if self.failed {
            return Err(io::Error::other(
                "an earlier read or write of this payload failed; it is incomplete and cannot be finished",
            ));
        }
        let result = step(self);
        self.failed = result.is_err();
        result
    }

    /// Seals one chunk in its slot: the plaintext filled there, or `from`
    /// (a whole chunk of the caller's data, copied into the slot first).
    /// Writes the batch out when it is full or this was the final chunk.
    fn seal_chunk(&mut self, from: Option<&[u8]>) -> io::Result<()> {
        let len = from.map_or(self.filled, <[u8]>::len);
        if let Some(src) = from {
            self.batch
                .at_mut(self.sealed..self.sealed + len)
                .copy_from_slice(src);
        }
        let nonce = self.nonce.bytes();
        seal_slot(&self.cipher, &mut self.batch, self.sealed, len, &nonce);
        self.sealed += len + TAG_SIZE;
        self.filled = 0;
        if self.nonce.is_last() || self.sealed == BATCH_SIZE {
            self.out.write_all(&self.batch[..self.sealed])?;
            self.sealed = 0;
        }
        Ok(())
    }

    /// Seals everything `input` yields. The input is read straight into
    /// the chunk slots and sealed there, so no byte is copied besides the
    /// reader's own copy in: the fast path for files. Past the first
    /// batch, the chunks are sealed on a second thread and written on a
    /// third while this one reads (`seal_pipelined`), so the writer must be
    /// `Send`. Returns how many plaintext bytes were read; call
    /// [`finish`](Self::finish) afterwards. After an error the sealer
    /// refuses to go on or finish.
    pub fn seal_from<R: Read>(&mut self, input: &mut R) -> io::Result<u64>
    where
        W: Send,
    {
        self.guard(|s| s.seal_serially(input, true))
    }

    /// The one-thread loop of [`seal_from`](Self::seal_from). With
    /// `then_pipeline`, it hands over to [`seal_pipelined`](Self::seal_pipelined)
    /// at the first batch boundary after a whole batch of input.
    fn seal_serially<R: Read>(&mut self, input: &mut R, then_pipeline: bool) -> io::Result<u64>
    where
        W: Send,
    {
        let mut total = 0u64;
        loop {
            if then_pipeline
                && self.sealed == 0
                && total > BATCH_PLAINTEXT as u64
                && other_threads_help()
            {
                return Ok(total + self.seal_pipelined(input)?);
            }
            let n = if self.filled < CHUNK_SIZE {
                let at = self.sealed + self.filled;
                let n = self.batch.read_at(input, at, self.sealed + CHUNK_SIZE)?;
                self.filled += n;
                n
            } else if self.sealed + SEALED_CHUNK_SIZE < BATCH_SIZE {
                // A full chunk is sealed only once more input shows it is
                // not the final one: read ahead into the next slot.
                let next = self.sealed + SEALED_CHUNK_SIZE;
                let n = self.batch.read_at(input, next, next + CHUNK_SIZE)?;
                if n > 0 {
                    self.seal_chunk(None)?;
                    self.nonce.advance();
                    self.filled = n;
                }
                n
            } else {
                // The batch has no next slot: look ahead by one byte.
                let mut peek = Zeroizing::new([0u8; 1]);
                let n = read_some(input, peek.as_mut_slice())?;
                if n > 0 {
                    self.seal_chunk(None)?;
                    self.nonce.advance();
                    self.batch.at_mut(0..1)[0] = peek[0];
                    self.filled = 1;
                }
                n
            };
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }

    /// Seals the rest of `input` on a [`Pipeline`]: while one thread seals
    /// a batch and another writes the batch before, this one reads the
    /// next, so a file is sealed at the speed of the slowest of reading,
    /// sealing and writing rather than at the speed of all three in turn
    /// (on two CPUs, reading and sealing share one). Entered at a batch
    /// boundary (`sealed == 0`), once a whole batch of input showed that
    /// the payload is large, so a small one never starts a thread. Only
    /// batches of chunks already known not to be final go to the cipher
    /// thread, with nonces this thread took from [`ChunkNonce`] in order;
    /// the chunks the input ends with are left for the one-thread path, as
    /// if it had read them. If no thread can be started, it seals on this
    /// one.
    fn seal_pipelined<R: Read>(&mut self, input: &mut R) -> io::Result<u64>
    where
        W: Send,
    {
        let mut total = 0u64;
        let outcome: io::Result<Option<(WipeBuf, usize, usize)>> = {
            let Self {
                out,
                cipher,
                nonce,
                batch,
                filled,
                ..
            } = self;
            let cipher = &*cipher;
            thread::scope(|scope| {
                let seal = |batch: &mut Batch| {
                    for (i, n) in batch.nonces.iter().enumerate() {
                        let at = batch.at + i * SEALED_CHUNK_SIZE;
                        seal_slot(cipher, &mut batch.buf, at, CHUNK_SIZE, n);
                    }
                };
                let write = |out: &mut W, batch: &Batch| out.write_all(&batch.buf[..BATCH_SIZE]);
                let Some(pipeline) =
                    Pipeline::start(scope, "keyferry-seal", seal, out, write, pipeline_gone)
                else {
                    return Ok(None);
                };
                let mut cur = mem::replace(batch, WipeBuf::new(0));
                let mut spares: Vec<WipeBuf> = (1..PIPELINE_BUFFERS)
                    .map(|_| WipeBuf::new(BATCH_SIZE))
                    .collect();
                // Plaintext bytes in the slots of `cur`.
                let mut got = *filled;
                loop {
                    // Fill the slots of `cur`, and read one byte past them:
                    // a full batch is known not to end the payload only
                    // once a byte follows it.
                    let mut peek = Zeroizing::new([0u8; 1]);
                    while got <= BATCH_PLAINTEXT {
                        let n = cur.read_slots(input, got, &mut peek)?;
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                        got += n;
                    }
                    if got <= BATCH_PLAINTEXT {
                        // The input ended in this batch: let the batches in
                        // flight be written, and leave these chunks to the
                        // caller.
                        pipeline.finish()?;
                        return Ok(Some((cur, got / CHUNK_SIZE, got % CHUNK_SIZE)));
                    }
                    pipeline.send(Batch::new(cur, 0, BatchNonces::take(nonce)))?;
                    cur = match spares.pop() {
                        Some(fresh) => fresh,
                        None => pipeline.written()?,
                    };
                    cur.at_mut(0..1)[0] = peek[0];
                    got = 1;
                }
            })
        };
        // On an error the sealer is done for (`guard`); what it held is
        // wiped as the buffers drop.
        match outcome? {
            Some((rest, full, part)) => {
                // Slots `0..full` are full and `part` bytes follow them; the
                // last chunk with data (or an empty one) is the final one.
                let last = if part == 0 && full > 0 {
                    full - 1
                } else {
                    full
                };
                self.batch = rest;
                self.sealed = 0;
                for _ in 0..last {
                    self.filled = CHUNK_SIZE;
                    self.seal_chunk(None)?;
                    self.nonce.advance();
                }
                self.filled = if last < full { CHUNK_SIZE } else { part };
                Ok(total)
            }
            None => Ok(total + self.seal_serially(input, false)?),
        }
    }

    /// Seals the buffered rest as the final chunk and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.guard(|s| {
            s.nonce.set_last();
            s.seal_chunk(None)?;
            s.out.flush()
        })?;
        Ok(self.out)
    }
}

impl<W: Write> Write for StreamSealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.guard(|s| s.write_some(data))
    }

    fn flush(&mut self) -> io::Result<()> {
        // Nothing can be flushed before the chunk is full.
        Ok(())
    }
}

impl<W: Write> StreamSealer<W> {
    fn write_some(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        // A full chunk is sealed only once more data arrives: the final
        // chunk may be full, so we cannot know it is not the last before.
        if self.filled == CHUNK_SIZE {
            self.seal_chunk(None)?;
            self.nonce.advance();
        }
        if self.filled == 0 && data.len() > CHUNK_SIZE {
            // A whole chunk with more data after it cannot be the final
            // one: seal it now, without waiting for more.
            self.seal_chunk(Some(&data[..CHUNK_SIZE]))?;
            self.nonce.advance();
            return Ok(CHUNK_SIZE);
        }
        let n = data.len().min(CHUNK_SIZE - self.filled);
        let at = self.sealed + self.filled;
        self.batch.at_mut(at..at + n).copy_from_slice(&data[..n]);
        self.filled += n;
        Ok(n)
    }
}

/// Where the opener puts a chunk's plaintext: where the chunk lies in
/// `buf` (only if the chunk will never need a second try), its own `plain`
/// buffer after what that holds, or the caller's (room for a whole chunk).
enum Dest<'a> {
    InPlace,
    Plain,
    Caller(&'a mut [u8]),
}

/// Where a chunk's plaintext ended up.
enum Opened {
    Buf(Range<usize>),
    Plain(Range<usize>),
    Caller(usize),
}

impl Opened {
    fn range(&self) -> Range<usize> {
        match self {
            Opened::Buf(r) | Opened::Plain(r) => r.clone(),
            Opened::Caller(n) => 0..*n,
        }
    }
}

/// Writes every slice, in order, in as few calls as the writer allows.
fn write_all_vectored<W: Write>(out: &mut W, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the plaintext of a batch the cipher thread opened, with one
/// vectored call. A chunk that failed there was modified, and nothing of
/// its batch is written.
fn write_opened_batch<W: Write>(out: &mut W, batch: &Batch) -> Result<(), BundleError> {
    if let Some(i) = batch.failed {
        return Err(BundleError::ModifiedChunk(batch.nonces.first + i as u64));
    }
    let mut slices: [IoSlice<'_>; BATCH_CHUNKS] = std::array::from_fn(|i| {
        let chunk = batch.at + i * SEALED_CHUNK_SIZE;
        IoSlice::new(&batch.buf[chunk..chunk + CHUNK_SIZE])
    });
    write_all_vectored(out, &mut slices).map_err(BundleError::Io)
}

/// Opens the full, non-final chunk at `at` in `buf` in place; on failure
/// it is left zeroed.
fn open_slot(cipher: &Cipher, buf: &mut WipeBuf, at: usize, nonce: &[u8; NONCE_LEN]) -> bool {
    let (body, tag) = buf
        .at_mut(at..at + SEALED_CHUNK_SIZE)
        .split_at_mut(CHUNK_SIZE);
    let tag: [u8; TAG_SIZE] = (&*tag).try_into().expect("16-byte tag");
    cipher.open_in_place(nonce, &[], body, &tag).is_ok()
}

/// Where the unopened input lies in a read-ahead buffer:
/// `buf[start..pending]`.
struct Unread {
    start: usize,
    pending: usize,
}

impl Unread {
    /// Where `len` unopened bytes go in `buf`: just before an aligned
    /// address, so that the reads after them land aligned (the kernel
    /// copies into an unaligned buffer at a fraction of the speed).
    fn aligned_start(buf: &WipeBuf, len: usize) -> usize {
        let base = buf.as_ptr() as usize;
        (base + len).next_multiple_of(READ_ALIGN) - base - len
    }

    /// Puts `bytes`, input carried over from another buffer, at the front
    /// of `buf`.
    fn place(buf: &mut WipeBuf, bytes: &[u8]) -> Self {
        let start = Self::aligned_start(buf, bytes.len());
        buf.at_mut(start..start + bytes.len())
            .copy_from_slice(bytes);
        Self {
            start,
            pending: start + bytes.len(),
        }
    }

    /// Moves the unopened bytes to the front and reads until `buf` is full
    /// or the input ends; returns where they are now, and whether it ended.
    fn refill<R: Read>(&mut self, buf: &mut WipeBuf, input: &mut R) -> Result<bool, BundleError> {
        let left = self.pending - self.start;
        let start = Self::aligned_start(buf, left);
        if start != self.start {
            buf.copy_within(self.start..self.pending, start);
        }
        (self.start, self.pending) = (start, start + left);
        while self.pending < buf.cap() {
            let end = buf.read_limit(self.pending);
            let n = buf
                .read_at(input, self.pending, end)
                .map_err(BundleError::from_stream_io)?;
            if n == 0 {
                return Ok(true);
            }
            self.pending += n;
        }
        Ok(false)
    }
}

/// Reads STREAM chunks from `input` and yields authenticated plaintext.
pub struct StreamOpener<R: Read> {
    input: R,
    cipher: Cipher,
    nonce: ChunkNonce,
    /// Input read ahead, up to a batch of sealed chunks plus one byte: the
    /// byte after a full chunk tells whether it is the final one. Chunks
    /// are opened from here into `plain` (or the caller's buffer), never in
    /// place, so a failed chunk can be tried again to classify the damage.
    buf: WipeBuf,
    /// Where the input not opened yet lies in `buf`.
    unread: Unread,
    /// The input has ended: everything left is in `buf`.
    eof: bool,
    /// Authenticated plaintext of up to a batch of chunks; `plain[pos..end]`
    /// is not handed out yet, and `plain[..end]` is wiped before reuse.
    plain: WipeBuf,
    pos: usize,
    end: usize,
    done: bool,
    failed: bool,
}

impl<R: Read> StreamOpener<R> {
    pub fn new(key: &[u8; 32], input: R) -> Self {
        Self {
            input,
            cipher: Cipher::new(key),
            nonce: ChunkNonce::first(),
            buf: WipeBuf::new(BATCH_SIZE + SEALED_CHUNK_SIZE + 1 + READ_ALIGN),
            unread: Unread {
                start: 0,
                pending: 0,
            },
            eof: false,
            plain: WipeBuf::new(BATCH_PLAINTEXT),
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

    /// Opens the rest of the payload into `out`, a batch of chunks at a
    /// time: a batch is read in one call, opened where it lies and written
    /// with one vectored call, so no byte is copied besides the reader's
    /// and writer's own. Nothing of a chunk reaches `out` before it
    /// authenticated. Past the first batch, the chunks are opened on a
    /// second thread and written on a third while this one reads
    /// (`open_pipelined`), so `out` must be `Send`. Returns how many
    /// plaintext bytes were written.
    pub fn open_to<W: Write + Send>(&mut self, out: &mut W) -> Result<u64, BundleError> {
        self.open_to_with(out, true)
    }

    /// [`open_to`](Self::open_to), with the pipeline allowed or not.
    fn open_to_with<W: Write + Send>(
        &mut self,
        out: &mut W,
        pipelined_allowed: bool,
    ) -> Result<u64, BundleError> {
        if self.failed {
            return Err(BundleError::StreamAlreadyFailed);
        }
        let mut total = 0u64;
        // Set once the pipeline has run, or when it is not to run.
        let mut pipelined = !pipelined_allowed;
        let mut opened: Vec<Opened> = Vec::with_capacity(BATCH_CHUNKS + 1);
        loop {
            // Plaintext a `read` left in `plain` goes first.
            if self.pos < self.end {
                opened.push(Opened::Plain(self.pos..self.end));
            }
            let written = {
                let mut slices: Vec<IoSlice<'_>> = opened
                    .iter()
                    .filter(|o| !o.range().is_empty())
                    .filter_map(|o| match o {
                        Opened::Buf(r) => Some(IoSlice::new(&self.buf[r.clone()])),
                        Opened::Plain(r) => Some(IoSlice::new(&self.plain[r.clone()])),
                        Opened::Caller(_) => None, // only `read` opens into a caller's buffer
                    })
                    .collect();
                write_all_vectored(out, &mut slices)
            };
            total += opened.iter().map(|o| o.range().len() as u64).sum::<u64>();
            for o in opened.drain(..) {
                if let Opened::Buf(r) = o {
                    self.buf.at_mut(r).zeroize();
                }
            }
            self.wipe_handed_out();
            if let Err(e) = written {
                self.failed = true;
                return Err(BundleError::Io(e));
            }
            if self.done {
                return Ok(total);
            }
            if !pipelined && !self.eof && total > BATCH_PLAINTEXT as u64 && other_threads_help() {
                pipelined = true;
                match self.open_pipelined(out) {
                    Ok(n) => total += n.unwrap_or(0),
                    Err(e) => {
                        self.failed = true;
                        return Err(e);
                    }
                }
            }
            // Open every chunk the buffer holds whole, reading more only
            // before the first: a read moves the unopened input, so nothing
            // opened may be in `buf` then.
            loop {
                match self.next_chunk(Dest::InPlace) {
                    Ok(o) => {
                        if let Opened::Plain(r) = &o {
                            // Handed out by this call, not left for `read`.
                            (self.pos, self.end) = (r.end, r.end);
                        }
                        opened.push(o);
                    }
                    Err(e) => {
                        self.failed = true;
                        for o in opened.drain(..) {
                            if let Opened::Buf(r) = o {
                                self.buf.at_mut(r).zeroize();
                            }
                        }
                        self.wipe_handed_out();
                        return Err(e);
                    }
                }
                if self.done
                    || !self.holds_a_decidable_chunk()
                    || self.end + CHUNK_SIZE > self.plain.cap()
                {
                    break;
                }
            }
        }
    }

    /// Wipes the plaintext already handed out.
    fn wipe_handed_out(&mut self) {
        self.plain.at_mut(0..self.end).zeroize();
        (self.pos, self.end) = (0, 0);
    }

    /// Whether the buffer holds enough to open the next chunk without
    /// reading: all the input, or the chunk and more than a whole chunk
    /// after it (so both whether it is final and how it is classified if
    /// it fails are settled; see [`next_chunk`](Self::next_chunk)).
    fn holds_a_decidable_chunk(&self) -> bool {
        self.eof || self.unread.pending - self.unread.start > 2 * SEALED_CHUNK_SIZE
    }

    /// Moves the unopened input to the front and reads until the buffer is
    /// full or the input ends.
    fn fill(&mut self) -> Result<(), BundleError> {
        self.eof = self.unread.refill(&mut self.buf, &mut self.input)?;
        Ok(())
    }

    /// Opens whole batches on a [`Pipeline`]: while one thread opens a
    /// batch and another writes the batch before, this one reads the next,
    /// so a file opens at the speed of the slowest of the three rather than
    /// all of them in turn.
    /// Entered from [`open_to`](Self::open_to) with no plaintext pending,
    /// once a whole batch of payload went by, so a small payload never
    /// starts a thread. A batch goes to the cipher thread only when more
    /// than a chunk of input follows it: each of its chunks is then known
    /// not to be the final one, and a failure can only mean it was modified
    /// ([`next_chunk`](Self::next_chunk)'s rule), so nothing needs a second
    /// try. The input's end is left in `buf` for the one-thread path.
    /// Returns the plaintext bytes written, or `None` if no thread could
    /// be started (nothing was read then).
    fn open_pipelined<W: Write + Send>(&mut self, out: &mut W) -> Result<Option<u64>, BundleError> {
        let Self {
            input,
            cipher,
            nonce,
            buf,
            unread,
            eof,
            ..
        } = self;
        let cipher = &*cipher;
        thread::scope(|scope| {
            let open = |batch: &mut Batch| {
                let Batch {
                    buf,
                    at,
                    nonces,
                    failed,
                } = batch;
                *failed = nonces
                    .iter()
                    .enumerate()
                    .position(|(i, n)| !open_slot(cipher, buf, *at + i * SEALED_CHUNK_SIZE, n));
            };
            let Some(pipeline) = Pipeline::start(
                scope,
                "keyferry-open",
                open,
                out,
                write_opened_batch,
                || BundleError::Io(pipeline_gone()),
            ) else {
                return Ok(None);
            };
            let mut sent = 0u64;
            let mut spares: Vec<WipeBuf> = (1..PIPELINE_BUFFERS)
                .map(|_| WipeBuf::new(buf.cap()))
                .collect();
            loop {
                *eof = unread.refill(buf, input)?;
                if *eof {
                    // (A buffer that did not fill ends the input.)
                    pipeline.finish()?;
                    return Ok(Some(sent * BATCH_PLAINTEXT as u64));
                }
                let mut next = match spares.pop() {
                    Some(fresh) => fresh,
                    None => pipeline.written()?,
                };
                let ahead =
                    Unread::place(&mut next, &buf[unread.start + BATCH_SIZE..unread.pending]);
                let nonces = BatchNonces::take(nonce);
                pipeline.send(Batch::new(mem::replace(buf, next), unread.start, nonces))?;
                sent += 1;
                *unread = ahead;
            }
        })
    }

    /// Opens the sealed chunk `buf[start..start + len]` with the given last
    /// flag into `dest`; `buf` is left as it was unless that is `InPlace`.
    /// On failure the destination holds zeros, never unauthenticated
    /// plaintext.
    fn decrypt(&mut self, len: usize, last: bool, dest: &mut Dest<'_>) -> bool {
        let nonce = self.nonce.bytes_with(last);
        let sealed = self.buf.at_mut(self.unread.start..self.unread.start + len);
        let (body, tag) = sealed.split_at_mut(len - TAG_SIZE);
        let tag: [u8; TAG_SIZE] = (&*tag).try_into().expect("16-byte tag");
        let dst = match dest {
            Dest::InPlace => body,
            Dest::Plain => {
                let d = self.plain.at_mut(self.end..self.end + body.len());
                d.copy_from_slice(body);
                d
            }
            Dest::Caller(d) => {
                let d = &mut d[..body.len()];
                d.copy_from_slice(body);
                d
            }
        };
        self.cipher.open_in_place(&nonce, &[], dst, &tag).is_ok()
    }

    /// Whether the chunk opens with the given flag and length, tried on a
    /// copy; the plaintext of a probe that opens is wiped at once.
    fn probe(&mut self, len: usize, last: bool) -> bool {
        let opens = self.decrypt(len, last, &mut Dest::Plain);
        self.plain
            .at_mut(self.end..self.end + len - TAG_SIZE)
            .zeroize();
        opens
    }

    /// Reads if needed and opens the next chunk into `dest`, and says
    /// where its plaintext is.
    ///
    /// A chunk that fails is classified from the input alone: a full chunk
    /// with at most a chunk of input after it is tried as the final one
    /// (appended data); a chunk with more after it is just modified. So
    /// only the last two chunks of a payload need their ciphertext kept for
    /// a second try, and every other chunk may be opened in place.
    fn next_chunk(&mut self, mut dest: Dest<'_>) -> Result<Opened, BundleError> {
        if !self.holds_a_decidable_chunk() {
            self.fill()?;
        }
        let index = self.nonce.index();
        let at = self.unread.start;
        let after = (self.unread.pending - self.unread.start).saturating_sub(SEALED_CHUNK_SIZE);
        if matches!(dest, Dest::InPlace) && after <= SEALED_CHUNK_SIZE {
            dest = Dest::Plain;
        }
        let located = |dest: &Dest<'_>, end: usize, len: usize| match dest {
            Dest::InPlace => Opened::Buf(at..at + len),
            Dest::Plain => Opened::Plain(end..end + len),
            Dest::Caller(_) => Opened::Caller(len),
        };
        if after > 0 {
            // More input follows: this must be a full, non-final chunk.
            if !self.decrypt(SEALED_CHUNK_SIZE, false, &mut dest) {
                return Err(
                    if after <= SEALED_CHUNK_SIZE && self.probe(SEALED_CHUNK_SIZE, true) {
                        BundleError::TrailingData
                    } else {
                        BundleError::ModifiedChunk(index)
                    },
                );
            }
            self.unread.start += SEALED_CHUNK_SIZE;
            self.nonce.advance();
            return Ok(located(&dest, self.end, CHUNK_SIZE));
        }
        // The input ends within this chunk: it must be the final one.
        let len = self.unread.pending - self.unread.start;
        if len < TAG_SIZE {
            return Err(BundleError::Truncated);
        }
        if !self.decrypt(len, true, &mut dest) {
            return Err(if len == SEALED_CHUNK_SIZE && self.probe(len, false) {
                // A valid non-final chunk with nothing after it: the final
                // chunk was cut off.
                BundleError::Truncated
            } else if self.opens_without_a_tail(len) {
                BundleError::TrailingData
            } else {
                // A chunk cut in the middle and a modified chunk look the
                // same; the message names both.
                BundleError::ModifiedChunk(index)
            });
        }
        if len == TAG_SIZE && index > 0 {
            return Err(BundleError::EmptyFinalChunk);
        }
        self.nonce.set_last();
        self.unread.start = self.unread.pending;
        self.done = true;
        Ok(located(&dest, self.end, len - TAG_SIZE))
    }

    /// Whether the final piece opens once a few appended bytes are cut off
    /// (a newline added by a transfer tool, say). Only on the failure path,
    /// and bounded by [`MAX_TAIL_PROBE`], so it costs at most a few ms.
    fn opens_without_a_tail(&mut self, len: usize) -> bool {
        (1..=MAX_TAIL_PROBE.min(len - TAG_SIZE)).any(|k| self.probe(len - k, true))
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
            // Wipe the plaintext handed out before opening more.
            self.wipe_handed_out();
            // A caller with room for a whole chunk gets it opened straight
            // into its buffer; plaintext then never sits in ours.
            let direct = out.len() >= CHUNK_SIZE;
            let dest = if direct {
                Dest::Caller(&mut *out)
            } else {
                Dest::Plain
            };
            match self.next_chunk(dest) {
                Ok(Opened::Caller(n)) => return Ok(n),
                Ok(opened) => self.end = opened.range().end,
                Err(e) => {
                    self.failed = true;
                    return Err(io::Error::other(e));
                }
            }
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
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

    /// Opens through `Read`, through `open_to`, and through `open_to` kept
    /// to one thread; all must agree, on the plaintext and on the error.
    fn open(sealed: &[u8]) -> Result<Vec<u8>, BundleError> {
        let mut one_thread = Vec::new();
        let serial = StreamOpener::new(&KEY, sealed).open_to_with(&mut one_thread, false);
        let opened = open_two_ways(sealed);
        match (&opened, serial) {
            (Ok(plain), Ok(_)) => assert!(*plain == one_thread, "one-thread open_to disagrees"),
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string(), "one-thread open_to disagrees")
            }
            (a, b) => panic!("one-thread open_to disagrees: {a:?} / {b:?}"),
        }
        opened
    }

    fn open_two_ways(sealed: &[u8]) -> Result<Vec<u8>, BundleError> {
        let mut o = StreamOpener::new(&KEY, sealed);
        let mut read = Vec::new();
        let by_read = o
            .read_to_end(&mut read)
            .map_err(BundleError::from_stream_io);
        let mut written = Vec::new();
        let by_open_to = StreamOpener::new(&KEY, sealed).open_to(&mut written);
        match (by_read, by_open_to) {
            (Ok(_), Ok(n)) => {
                assert_eq!(n, written.len() as u64);
                assert_eq!(read, written, "open_to and Read disagree");
                Ok(read)
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string(), "open_to and Read disagree");
                assert!(
                    sealed_prefix_only(&written),
                    "unauthenticated bytes written"
                );
                Err(a)
            }
            (a, b) => panic!("open_to and Read disagree: {a:?} / {b:?}"),
        }
    }

    /// Plaintext handed out before a failure is whole chunks only.
    fn sealed_prefix_only(written: &[u8]) -> bool {
        written.len().is_multiple_of(CHUNK_SIZE)
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

        /// One call fills the buffers in order, as `readv` on a pipe does,
        /// and stops anywhere: inside a buffer, at its end, or several
        /// buffers on (up to about two chunks).
        fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
            self.step = (self.step * 7 + 3) % 9001;
            let mut left = self.step * 13 + 1;
            let mut n = 0;
            for buf in bufs {
                let k = buf.len().min(left).min(self.data.len());
                buf[..k].copy_from_slice(&self.data[..k]);
                self.data = &self.data[k..];
                (n, left) = (n + k, left - k);
                if k < buf.len() {
                    break;
                }
            }
            Ok(n)
        }
    }

    /// A writer that takes at most `per_call` bytes per call, and fails
    /// once it has taken `left`.
    struct Taker {
        taken: Vec<u8>,
        per_call: usize,
        left: usize,
    }

    impl Taker {
        /// A few KiB per call, never failing.
        fn sip() -> Self {
            Self {
                taken: Vec::new(),
                per_call: 5000,
                left: usize::MAX,
            }
        }

        fn failing_after(left: usize) -> Self {
            Self {
                taken: Vec::new(),
                per_call: usize::MAX,
                left,
            }
        }
    }

    impl Write for Taker {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(broken());
            }
            let n = data.len().min(self.per_call).min(self.left);
            self.taken.extend_from_slice(&data[..n]);
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn broken() -> io::Error {
        io::Error::other("disk on fire")
    }

    #[test]
    fn seal_from_and_open_to_match_the_byte_at_a_time_paths() {
        let batch = BATCH_CHUNKS * CHUNK_SIZE;
        for len in [
            0,
            1,
            CHUNK_SIZE,
            CHUNK_SIZE + 1,
            batch - 1,
            batch,
            batch + 1,
            // Past a batch the sealer hands whole batches to a second
            // thread; the input can end anywhere in the batch after.
            2 * batch,
            2 * batch + 1,
            2 * batch + CHUNK_SIZE,
            2 * batch + CHUNK_SIZE + 17,
            3 * batch - 1,
            3 * batch,
            4 * batch + 1,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let reference = seal(&data);
            // Straight from a slice (a whole batch per vectored read) and
            // trickled, in pieces that end anywhere.
            let mut s = StreamSealer::new(&KEY, Vec::new());
            assert_eq!(s.seal_from(&mut &data[..]).unwrap(), len as u64);
            assert_eq!(s.finish().unwrap(), reference, "seal_from, len {len}");
            // On one thread, as on a single-CPU machine.
            let mut s = StreamSealer::new(&KEY, Vec::new());
            assert_eq!(s.seal_serially(&mut &data[..], false).unwrap(), len as u64);
            assert_eq!(s.finish().unwrap(), reference, "one thread, len {len}");
            let mut s = StreamSealer::new(&KEY, Vec::new());
            let mut trickle = Trickle {
                data: &data,
                step: 0,
            };
            s.seal_from(&mut trickle).unwrap();
            assert_eq!(s.finish().unwrap(), reference, "trickled, len {len}");
            // Opened from a trickle into a writer that takes little at once.
            let mut sip = Taker::sip();
            let trickle = Trickle {
                data: &reference,
                step: 0,
            };
            let n = StreamOpener::new(&KEY, trickle).open_to(&mut sip).unwrap();
            assert_eq!(n, len as u64);
            assert!(sip.taken == data, "open_to, len {len}");
        }
    }

    /// A reader that fails after `left` bytes.
    struct FailsAfter<'a> {
        inner: &'a [u8],
        left: usize,
    }

    impl Read for FailsAfter<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(broken());
            }
            let n = out.len().min(self.left);
            let n = self.inner.read(&mut out[..n])?;
            self.left -= n;
            Ok(n)
        }
    }

    #[test]
    fn an_io_error_while_a_batch_is_on_the_other_thread_is_returned_and_nothing_opens() {
        let batch = BATCH_CHUNKS * CHUNK_SIZE;
        let data: Vec<u8> = (0..5 * batch + 3).map(|i| (i % 239) as u8).collect();
        let reference = seal(&data);
        for fail_at in [batch + 5, 2 * batch, 3 * batch + CHUNK_SIZE + 1] {
            // The reader fails part-way through the pipelined batches.
            let mut input = FailsAfter {
                inner: &data[..],
                left: fail_at,
            };
            let mut s = StreamSealer::new(&KEY, Vec::new());
            let e = s.seal_from(&mut input).unwrap_err();
            assert_eq!(e.to_string(), "disk on fire");
            // The sealer refuses to go on, or to finish what would pass
            // for a whole (shorter) payload.
            assert!(s.write(b"more").is_err());
            assert!(s.seal_from(&mut &b"more"[..]).is_err());
            let e = s.finish().unwrap_err();
            assert!(e.to_string().contains("cannot be finished"), "{e}");

            // The writer fails part-way: what it took is a prefix of the
            // sealed payload, never anything else.
            let sealed_at = fail_at + fail_at / CHUNK_SIZE * TAG_SIZE;
            let mut s = StreamSealer::new(&KEY, Taker::failing_after(sealed_at));
            let e = s.seal_from(&mut &data[..]).unwrap_err();
            assert_eq!(e.to_string(), "disk on fire");
            let taken = s.out.taken;
            assert!(!taken.is_empty() && reference.starts_with(&taken));
            assert!(open(&taken).is_err());

            // Opening, with the reader failing, then the writer.
            let input = FailsAfter {
                inner: &reference[..],
                left: sealed_at,
            };
            let e = StreamOpener::new(&KEY, input)
                .open_to(&mut Vec::new())
                .unwrap_err();
            assert!(e.to_string().contains("disk on fire"), "{e}");
            let mut output = Taker::failing_after(fail_at);
            let mut o = StreamOpener::new(&KEY, &reference[..]);
            let e = o.open_to(&mut output).unwrap_err();
            assert!(e.to_string().contains("disk on fire"), "{e}");
            assert!(output.taken.len() == fail_at && data.starts_with(&output.taken));
            assert!(matches!(
                o.open_to(&mut Vec::new()),
                Err(BundleError::StreamAlreadyFailed)
            ));
        }
    }

    #[test]
    fn a_failed_write_on_the_writing_thread_stops_the_reading_within_a_few_batches() {
        let batch = BATCH_CHUNKS * CHUNK_SIZE;
        // Far more input than the writer will take; the reading must not
        // run on to its end once the writer has failed.
        let endless = 64 * batch as u64;
        let mut input = io::repeat(5).take(endless);
        let mut s = StreamSealer::new(&KEY, Taker::failing_after(2 * BATCH_SIZE + 7));
        let e = s.seal_from(&mut input).unwrap_err();
        assert_eq!(e.to_string(), "disk on fire");
        let read = endless - input.limit();
        let bound = (3 + PIPELINE_BUFFERS as u64 + 1) * batch as u64;
        assert!(read <= bound, "read {read} bytes after the write failed");

        let sealed = seal(&vec![5; 24 * batch]);
        let mut rest = &sealed[..];
        let mut output = Taker::failing_after(2 * batch + 7);
        let e = StreamOpener::new(&KEY, &mut rest)
            .open_to(&mut output)
            .unwrap_err();
        assert!(e.to_string().contains("disk on fire"), "{e}");
        let read = sealed.len() - rest.len();
        assert!(
            read <= 8 * BATCH_SIZE,
            "read {read} bytes after the write failed"
        );
        assert_eq!(output.taken.len(), 2 * batch + 7);
    }

    #[test]
    fn the_fast_paths_pick_up_where_the_others_left_off() {
        let data: Vec<u8> = (0..3 * BATCH_CHUNKS * CHUNK_SIZE / 2 + 5)
            .map(|i| (i % 241) as u8)
            .collect();
        let reference = seal(&data);
        let mut s = StreamSealer::new(&KEY, Vec::new());
        s.write_all(&data[..CHUNK_SIZE + 3]).unwrap();
        s.seal_from(&mut &data[CHUNK_SIZE + 3..]).unwrap();
        assert_eq!(s.finish().unwrap(), reference);

        let mut o = StreamOpener::new(&KEY, &reference[..]);
        let mut head = vec![0u8; 100];
        o.read_exact(&mut head).unwrap();
        let mut rest = Vec::new();
        o.open_to(&mut rest).unwrap();
        head.extend_from_slice(&rest);
        assert!(head == data);
        assert!(o.is_complete());
        assert_eq!(o.read(&mut [0u8; 4]).unwrap(), 0);
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
    fn a_wipe_buffer_marks_every_byte_written_through_it() {
        let mut b = WipeBuf::new(1000);
        assert_eq!(b.written, 0);
        b.at_mut(10..20).fill(1);
        assert_eq!(b.written, 20);
        b.at_mut(0..5).fill(1);
        assert_eq!(b.written, 20, "the mark never moves back");
        assert_eq!(b.read_at(&mut &[7u8; 30][..], 100, 500).unwrap(), 30);
        assert_eq!(b.written, 130);
        b.copy_within(100..130, 300);
        assert_eq!(b.written, 330);
        assert_eq!(&b[300..330], &[7u8; 30][..]);

        // A read into the chunk slots of a batch marks up to the last byte
        // it put in a slot; tag gaps it skipped over count as written.
        let mut b = WipeBuf::new(BATCH_SIZE);
        let input = vec![5u8; CHUNK_SIZE + 10];
        let mut peek = [0u8; 1];
        let from = CHUNK_SIZE - 20;
        assert_eq!(
            b.read_slots(&mut &input[..], from, &mut peek).unwrap(),
            input.len()
        );
        assert_eq!(b.written, SEALED_CHUNK_SIZE + CHUNK_SIZE - 10);
        assert!(b[from..CHUNK_SIZE].iter().all(|&x| x == 5));
        assert_eq!(
            b[CHUNK_SIZE..SEALED_CHUNK_SIZE],
            [0; TAG_SIZE],
            "a tag slot is skipped"
        );
        // Past the last slot, a read goes into `peek`.
        let input = vec![6u8; BATCH_PLAINTEXT + 10];
        let mut b = WipeBuf::new(BATCH_SIZE);
        assert_eq!(
            b.read_slots(&mut &input[..], 0, &mut peek).unwrap(),
            BATCH_PLAINTEXT + 1
        );
        assert_eq!((b.written, peek), (BATCH_SIZE - TAG_SIZE, [6]));
    }

    #[test]
    fn a_wipe_buffer_grows_as_written_and_keeps_what_it_holds() {
        let cap = BATCH_SIZE;
        let mut b = WipeBuf::new(cap);
        assert_eq!(b.len(), 0, "nothing allocated before the first write");
        b.at_mut(0..3).copy_from_slice(b"abc");
        assert_eq!(b.len(), FIRST_ALLOC, "a small payload takes a small buffer");
        assert_eq!(b.read_limit(3), FIRST_ALLOC);
        assert_eq!(b.read_limit(FIRST_ALLOC), GROWTH * FIRST_ALLOC);
        // Growing in steps, then to the whole capacity, and no further.
        b.at_mut(SEALED_CHUNK_SIZE - 1..SEALED_CHUNK_SIZE).fill(9);
        assert_eq!(b.len(), SEALED_CHUNK_SIZE);
        b.at_mut(2 * SEALED_CHUNK_SIZE..2 * SEALED_CHUNK_SIZE + 1)
            .fill(8);
        assert_eq!(b.len(), GROWTH * SEALED_CHUNK_SIZE);
        b.at_mut(cap - 1..cap).fill(7);
        assert_eq!(b.len(), cap);
        assert_eq!(b.read_limit(cap), cap);
        assert_eq!(&b[..3], b"abc");
        assert_eq!(b[SEALED_CHUNK_SIZE - 1], 9);
        assert_eq!(b[2 * SEALED_CHUNK_SIZE], 8);
        assert_eq!(b.written, cap);
    }

    #[test]
    #[should_panic(expected = "past its capacity")]
    fn a_wipe_buffer_never_grows_past_its_capacity() {
        WipeBuf::new(100).at_mut(0..101);
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
        // A modified chunk in a later batch: earlier chunks may have been
        // handed out, never a byte of the modified one.
        let long = vec![3u8; 2 * BATCH_CHUNKS * CHUNK_SIZE];
        let mut late = seal(&long);
        late[(BATCH_CHUNKS + 3) * SEALED_CHUNK_SIZE + 9] ^= 0x40;
        assert!(matches!(
            open(&late),
            Err(BundleError::ModifiedChunk(i)) if i == BATCH_CHUNKS as u64 + 3
        ));
        // A flipped bit in the last chunk.
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(open(&flipped), Err(BundleError::ModifiedChunk(2))));
    }

    #[test]
    fn damage_to_a_large_payload_is_classified_the_same_as_to_a_small_one() {
        // Past the first batch the opener hands whole batches to a second
        // thread; whatever the damage and wherever it falls, it must be
        // named as the one-thread path names it (`open` checks that `Read`
        // and `open_to` agree too).
        let batch = BATCH_CHUNKS * CHUNK_SIZE;
        let data: Vec<u8> = (0..5 * batch + 100).map(|i| (i % 233) as u8).collect();
        let sealed = seal(&data);
        assert!(open(&sealed).unwrap() == data);
        let last = (5 * BATCH_CHUNKS) as u64; // the short final chunk
        let chunk = |k: u64| k as usize * SEALED_CHUNK_SIZE;
        for k in [0, 15, 16, 17, 31, 32, 47, 48, 63, 64, 78, 79, last] {
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
        for k in [16, 17, 33, 48, 64, 79, last] {
            assert!(
                matches!(open(&sealed[..chunk(k)]), Err(BundleError::Truncated)),
                "cut after {k} whole chunks"
            );
        }
        let mut dropped = sealed[..chunk(40)].to_vec();
        dropped.extend_from_slice(&sealed[chunk(41)..]);
        assert!(matches!(
            open(&dropped),
            Err(BundleError::ModifiedChunk(40))
        ));
        let mut appended = sealed.clone();
        appended.push(b'\n');
        assert!(matches!(open(&appended), Err(BundleError::TrailingData)));

        // A payload of whole batches ends in a full final chunk: up to a
        // chunk of appended data is named as such, more is a modified chunk.
        let whole = seal(&data[..4 * batch]);
        let final_chunk = (4 * BATCH_CHUNKS - 1) as u64;
        assert!(open(&whole).unwrap() == data[..4 * batch]);
        let mut up_to_a_chunk = whole.clone();
        up_to_a_chunk.extend_from_slice(&[b'j'; SEALED_CHUNK_SIZE]);
        assert!(matches!(
            open(&up_to_a_chunk),
            Err(BundleError::TrailingData)
        ));
        up_to_a_chunk.push(b'j');
        assert!(matches!(
            open(&up_to_a_chunk),
            Err(BundleError::ModifiedChunk(i)) if i == final_chunk
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
