//! Damages a sealed STREAM payload of a few chunks in ways the fuzzer
//! chooses (flipped bytes, cuts, appended bytes, chunks removed or
//! swapped), and opens it through the opener's `Read`, as import does.
//!
//! Invariants checked:
//! - whatever opens is the original payload, byte for byte: no damage
//!   opens (an edit that changes nothing aside);
//! - before an error, the opener handed out only a prefix of the original
//!   plaintext, in whole chunks;
//! - the damage is named the same whether the input arrives at once or in
//!   small pieces.
//!
//! Input: one byte picks the payload, then up to four edits of five bytes
//! each: an operation, a 24-bit position scaled to the sealed length, and
//! a value.
#![no_main]

use std::io::{Read, Write};
use std::sync::OnceLock;

use keyferry::bundle::stream::SEALED_CHUNK_SIZE;
use keyferry::bundle::{SealedInput, StreamOpener, StreamSealer, CHUNK_SIZE};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [0x24; 32];
/// Payload lengths: ending just past a chunk boundary, exactly on one (a
/// full final chunk), and in the middle of a chunk.
const LENGTHS: [usize; 3] = [3 * CHUNK_SIZE + 1, 4 * CHUNK_SIZE, 4 * CHUNK_SIZE + 77];
const MAX_EDITS: usize = 4;

/// (plaintext, sealed) for each length, sealed once per process.
fn payloads() -> &'static [(Vec<u8>, Vec<u8>)] {
    static PAYLOADS: OnceLock<Vec<(Vec<u8>, Vec<u8>)>> = OnceLock::new();
    PAYLOADS.get_or_init(|| {
        LENGTHS
            .iter()
            .map(|&len| {
                let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                let mut s = StreamSealer::new(&KEY, Vec::new());
                s.write_all(&plain).unwrap();
                let sealed = s.finish().unwrap();
                (plain, sealed)
            })
            .collect()
    })
}

/// Applies one edit; `at` is a 24-bit fraction of the current length.
fn edit(bytes: &mut Vec<u8>, op: u8, at: u32, value: u8) {
    let len = bytes.len();
    let pos = ((u64::from(at) * len as u64) >> 24) as usize;
    let chunk = pos / SEALED_CHUNK_SIZE * SEALED_CHUNK_SIZE;
    match op % 5 {
        0 if pos < len => bytes[pos] ^= value,
        1 => bytes.truncate(pos),
        2 => bytes.extend(std::iter::repeat_n(
            value,
            pos % (2 * SEALED_CHUNK_SIZE + 2),
        )),
        3 if chunk < len => {
            bytes.drain(chunk..(chunk + SEALED_CHUNK_SIZE).min(len));
        }
        4 if chunk + 2 * SEALED_CHUNK_SIZE <= len => {
            let (a, b) = bytes[chunk..].split_at_mut(SEALED_CHUNK_SIZE);
            a.swap_with_slice(&mut b[..SEALED_CHUNK_SIZE]);
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, edits)) = data.split_first() else {
        return;
    };
    let (plain, sealed) = &payloads()[usize::from(pick) % LENGTHS.len()];
    let mut bytes = sealed.clone();
    for e in edits.chunks_exact(5).take(MAX_EDITS) {
        let at = u32::from_be_bytes([0, e[1], e[2], e[3]]);
        edit(&mut bytes, e[0], at, e[4]);
    }

    let mut by_read = Vec::new();
    let mut opener = StreamOpener::new(&KEY, &bytes[..]);
    let read = opener.read_to_end(&mut by_read).map_err(|_| {
        opener
            .take_error()
            .expect("a failure is kept typed")
            .to_string()
    });
    match read {
        Ok(_) => assert!(by_read == *plain, "damaged payload opened"),
        Err(named) => {
            assert!(plain.starts_with(&by_read), "handed out other bytes");
            assert!(
                by_read.len() % CHUNK_SIZE == 0,
                "handed out part of a chunk"
            );
            let mut opener = StreamOpener::new(&KEY, Pieces(&bytes[..]));
            assert!(opener.read_to_end(&mut Vec::new()).is_err());
            let in_pieces = opener.take_error().map(|e| e.to_string());
            assert_eq!(in_pieces, Some(named), "named differently in pieces");
        }
    }
});

/// A reader that hands out at most 1000 bytes per call.
struct Pieces<'a>(&'a [u8]);

impl Read for Pieces<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = out.len().min(self.0.len()).min(1000);
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

impl SealedInput for Pieces<'_> {}
