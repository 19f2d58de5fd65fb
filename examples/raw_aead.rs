//! The raw AES-256-GCM primitive of keyferry's dependency (`ring`), as
//! the yardstick for the bundle layer's throughput. It does the bundle's
//! cryptographic work (64 KiB chunks, a counter nonce with a last flag, a
//! detached tag after each chunk) and nothing else: no header, no KDF, no
//! checks beyond the tags.
//!
//! ```text
//! cargo run --release --example raw_aead -- [MIB]           # in memory, default 1024
//! cargo run --release --example raw_aead -- seal IN OUT     # file to file
//! cargo run --release --example raw_aead -- open IN OUT
//! cargo run --release --example raw_aead -- copy IN OUT     # the same I/O, no crypto
//! ```
//!
//! In memory it seals, then opens, the data in place. File to file it does
//! the least I/O the format allows, the same as the bundle layer's
//! `seal_from`/`open_to`: a batch of 16 chunks read into their slots
//! (one vectored read),
//! sealed or opened in place, and written with one call; `copy` runs that
//! loop without the cipher, the ceiling file I/O puts on any tool here.
//! Prints `key=value` lines on stderr: `seal_mib_per_s`/`open_mib_per_s`
//! in memory, `payload_mib_per_s` for a file.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::time::Instant;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};

const CHUNK: usize = 65_536;
const TAG: usize = 16;
const SEALED: usize = CHUNK + TAG;
const BATCH: usize = 16;

fn nonce(i: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&i.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

fn cipher() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[0x33u8; 32]).unwrap())
}

fn in_memory(mib: usize) {
    let len = mib << 20;
    let mut data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let cipher = cipher();
    let chunks = len.div_ceil(CHUNK);
    let mut tags: Vec<Tag> = Vec::with_capacity(chunks);

    let t = Instant::now();
    for (i, chunk) in data.chunks_mut(CHUNK).enumerate() {
        let last = i + 1 == chunks;
        let tag = cipher
            .seal_in_place_separate_tag(nonce(i as u64, last), Aad::empty(), chunk)
            .expect("seal");
        tags.push(tag);
    }
    let seal_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for (i, chunk) in data.chunks_mut(CHUNK).enumerate() {
        let last = i + 1 == chunks;
        cipher
            .open_in_place_separate_tag(nonce(i as u64, last), Aad::empty(), tags[i], chunk, 0..)
            .expect("open: authentication failed");
    }
    let open_secs = t.elapsed().as_secs_f64();
    assert!(data
        .iter()
        .enumerate()
        .take(4096)
        .all(|(i, b)| *b == (i % 251) as u8));

    let per_s = |secs: f64| mib as f64 / secs;
    eprintln!("bytes={len}");
    eprintln!("seal_seconds={seal_secs:.3}");
    eprintln!("open_seconds={open_secs:.3}");
    eprintln!("seal_mib_per_s={:.1}", per_s(seal_secs));
    eprintln!("open_mib_per_s={:.1}", per_s(open_secs));
}

/// Reads until `buf` is full or the input ends; returns the length read.
fn fill(input: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads into the first `lens.len()` chunk slots of `buf` with vectored
/// reads (one per batch from a file), as the bundle layer's sealer does,
/// until they are full or the input ends; sets each slot's length.
fn fill_slots(input: &mut File, buf: &mut [u8], lens: &mut [usize]) -> io::Result<()> {
    let mut got = 0;
    let want = lens.len() * CHUNK;
    while got < want {
        let (full, part) = (got / CHUNK, got % CHUNK);
        let mut slices: Vec<IoSliceMut<'_>> = buf
            .chunks_mut(SEALED)
            .take(lens.len())
            .skip(full)
            .enumerate()
            .map(|(i, slot)| IoSliceMut::new(&mut slot[if i == 0 { part } else { 0 }..CHUNK]))
            .collect();
        match input.read_vectored(&mut slices)? {
            0 => break,
            n => got += n,
        }
    }
    for (k, len) in lens.iter_mut().enumerate() {
        *len = got.saturating_sub(k * CHUNK).min(CHUNK);
    }
    Ok(())
}

fn write_all_vectored(out: &mut File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        let n = out.write_vectored(slices)?;
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Seal,
    Open,
    Copy,
}

/// One pass over IN, a batch at a time; returns the plaintext bytes.
fn file(mode: Mode, input: &str, output: &str) -> io::Result<u64> {
    let mut src = File::open(input)?;
    let mut dst = File::create(output)?;
    let in_len = src.metadata()?.len() as usize;
    let plain_len = match mode {
        Mode::Open => in_len - in_len.div_ceil(SEALED) * TAG,
        Mode::Seal | Mode::Copy => in_len,
    };
    let chunks = plain_len.div_ceil(CHUNK).max(1);
    let cipher = cipher();
    let mut buf = vec![0u8; BATCH * SEALED];
    let mut index = 0usize;
    while index < chunks {
        let batch = BATCH.min(chunks - index);
        let mut lens = [0usize; BATCH];
        match mode {
            // Plaintext chunks read into their slots, sealed there, written
            // with their tags in one call.
            Mode::Seal | Mode::Copy => {
                fill_slots(&mut src, &mut buf, &mut lens[..batch])?;
                for (k, len) in lens.iter().enumerate().take(batch) {
                    if mode == Mode::Seal {
                        let i = index + k;
                        let (body, rest) = buf[k * SEALED..].split_at_mut(*len);
                        let tag = cipher
                            .seal_in_place_separate_tag(
                                nonce(i as u64, i + 1 == chunks),
                                Aad::empty(),
                                body,
                            )
                            .expect("seal");
                        rest[..TAG].copy_from_slice(tag.as_ref());
                    }
                }
                let last = (batch - 1) * SEALED + lens[batch - 1] + TAG;
                dst.write_all(&buf[..last])?;
            }
            // Sealed chunks read in one go, opened in place, their plaintext
            // written with one vectored call.
            Mode::Open => {
                let got = fill(&mut src, &mut buf)?;
                for (k, len) in lens.iter_mut().enumerate().take(batch) {
                    let i = index + k;
                    let sealed = (got - k * SEALED).min(SEALED);
                    *len = sealed - TAG;
                    let (body, rest) = buf[k * SEALED..k * SEALED + sealed].split_at_mut(*len);
                    let tag = Tag::from(<[u8; TAG]>::try_from(&rest[..]).unwrap());
                    cipher
                        .open_in_place_separate_tag(
                            nonce(i as u64, i + 1 == chunks),
                            Aad::empty(),
                            tag,
                            body,
                            0..,
                        )
                        .expect("open: authentication failed");
                }
                let mut slices: Vec<IoSlice<'_>> = (0..batch)
                    .map(|k| IoSlice::new(&buf[k * SEALED..k * SEALED + lens[k]]))
                    .collect();
                write_all_vectored(&mut dst, &mut slices)?;
            }
        }
        index += batch;
    }
    if dst.metadata()?.is_file() {
        dst.sync_all()?; // as stream_file does; /dev/null refuses fsync
    }
    Ok(plain_len as u64)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some("seal") => Mode::Seal,
        Some("open") => Mode::Open,
        Some("copy") => Mode::Copy,
        other => {
            let mib = other.map_or(1024, |s| s.parse().expect("MIB must be a number"));
            return in_memory(mib);
        }
    };
    let [_, input, output] = &args[..] else {
        eprintln!("usage: raw_aead [MIB] | seal IN OUT | open IN OUT | copy IN OUT");
        std::process::exit(2);
    };
    let t = Instant::now();
    let bytes = file(mode, input, output).expect("file I/O");
    let secs = t.elapsed().as_secs_f64();
    eprintln!("payload_bytes={bytes}");
    eprintln!(
        "payload_mib_per_s={:.1}",
        bytes as f64 / (1 << 20) as f64 / secs
    );
}
