//! The raw AES-256-GCM primitive of keyferry's dependency (`aes-gcm`), as
//! the yardstick for the bundle layer's throughput: seals, then opens, the
//! same in-memory data in 64 KiB chunks (the bundle's chunk size, with a
//! counter nonce and a detached tag per chunk), which is the cryptographic
//! work the streaming path does, minus its buffering and I/O.
//!
//! ```text
//! cargo run --release --example raw_aead -- [MIB]   # default 1024
//! ```
//!
//! Prints `seal_mib_per_s=…` and `open_mib_per_s=…` on stderr, and checks
//! that every chunk opened back (a failed open aborts).

use std::time::Instant;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

const CHUNK: usize = 65_536;

fn nonce(i: u64, last: bool) -> Nonce<aes_gcm::aes::cipher::consts::U12> {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&i.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::try_from(&n[..]).unwrap()
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map_or(1024, |s| s.parse().expect("MIB must be a number"));
    let len = mib << 20;
    let mut data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let cipher = Aes256Gcm::new(&[0x33u8; 32].into());
    let chunks = len.div_ceil(CHUNK);
    let mut tags: Vec<Tag> = Vec::with_capacity(chunks);

    let t = Instant::now();
    for (i, chunk) in data.chunks_mut(CHUNK).enumerate() {
        let last = i + 1 == chunks;
        let tag = cipher
            .encrypt_inout_detached(&nonce(i as u64, last), &[], chunk.into())
            .expect("seal");
        tags.push(tag);
    }
    let seal_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for (i, chunk) in data.chunks_mut(CHUNK).enumerate() {
        let last = i + 1 == chunks;
        cipher
            .decrypt_inout_detached(&nonce(i as u64, last), &[], chunk.into(), &tags[i])
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
