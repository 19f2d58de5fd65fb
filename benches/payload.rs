//! The bundle's payload path with the KDF excluded: `seal_with_kek` and
//! `read_header(..)?.unlock_with_kek` (header, key commitment, file-key wrap, HKDF, STREAM
//! AES-256-GCM chunks) at 1 KiB, 64 KiB, 1 MiB and 64 MiB.
//!
//! Each through `Write`/`Read` (`io::copy`), as export and import run it.
//! Also: 4 KiB `read` calls instead of `io::copy`, and the cost of
//! rejecting a damaged full final chunk (the opener's slowest refusal).
//!
//! Invariant checked on the way: every opened payload is exactly the sealed
//! one, and the damaged one is refused (a benchmark that measures a broken
//! path is worse than none).

use std::hint::black_box;
use std::io::{self, Read, Write};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use keyferry::bundle::{self, OpenOptions, SealParams};
use keyferry::kdf::{KdfLimits, KdfParams};

const KEK: [u8; 32] = [0x24; 32];
const SIZES: [(usize, &str); 4] = [
    (1 << 10, "1KiB"),
    (64 << 10, "64KiB"),
    (1 << 20, "1MiB"),
    (64 << 20, "64MiB"),
];

fn params() -> SealParams {
    SealParams {
        kdf: KdfParams::DEFAULT,
        created: 1_764_000_000,
        expires: None,
        armor: false,
    }
}

fn seal_into<W: Write>(data: &[u8], out: W) -> W {
    let mut w = bundle::seal_with_kek(&KEK, [1; 16], &params(), out).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

/// Opens `sealed` with the fixed KEK, up to the payload.
fn opener(sealed: &[u8]) -> bundle::BundleReader<&[u8]> {
    let options = OpenOptions {
        now: 1_764_000_000,
        allow_expired: false,
    };
    bundle::read_header(sealed, &KdfLimits::default())
        .unwrap()
        .unlock_with_kek(&KEK, &options)
        .unwrap()
}

/// Opens `sealed` and streams the payload into `out`; returns its length.
fn open_into<W: Write>(sealed: &[u8], out: &mut W) -> u64 {
    io::copy(&mut opener(sealed), out).unwrap()
}

fn payload(c: &mut Criterion) {
    let mut group = c.benchmark_group("payload");
    for (len, name) in SIZES {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let sealed = seal_into(&data, Vec::with_capacity(len + len / 4096 + 256));
        let mut opened = Vec::new();
        open_into(&sealed, &mut opened);
        assert_eq!(opened, data, "round trip at {name}");

        group.throughput(Throughput::Bytes(len as u64));
        if len >= 1 << 20 {
            group.sample_size(10);
        }
        group.bench_with_input(BenchmarkId::new("seal", name), &data, |b, data| {
            b.iter(|| seal_into(black_box(data), io::sink()))
        });
        group.bench_with_input(BenchmarkId::new("open", name), &sealed, |b, sealed| {
            b.iter(|| open_into(black_box(sealed), &mut io::sink()))
        });
    }
    group.finish();
}

/// Reading the payload in the importer's way (a `Read` loop over small
/// reads) must not be much slower than `io::copy`: 4 KiB reads at 1 MiB.
fn small_reads(c: &mut Criterion) {
    let data = vec![7u8; 1 << 20];
    let sealed = seal_into(&data, Vec::new());
    let mut group = c.benchmark_group("payload");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("open_4KiB_reads/1MiB", |b| {
        b.iter(|| {
            let mut r = opener(&sealed);
            let mut buf = [0u8; 4096];
            let mut total = 0;
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break total;
                }
                total += n;
            }
        })
    });
    group.finish();
}

/// The worst rejection: a full 64 KiB final chunk with one flipped bit.
/// The opener then also tries up to 64 shorter lengths (to tell appended
/// bytes from damage), so this bounds what a hostile bundle of that shape
/// costs an importer after the KDF.
fn damaged_final_chunk(c: &mut Criterion) {
    let data = vec![3u8; 64 << 10];
    let mut sealed = seal_into(&data, Vec::new());
    *sealed.last_mut().unwrap() ^= 1;
    let mut group = c.benchmark_group("payload");
    group.bench_function("reject_damaged_final_chunk/64KiB", |b| {
        b.iter(|| {
            let mut r = opener(&sealed);
            assert!(io::copy(&mut r, &mut io::sink()).is_err());
        })
    });
    group.finish();
}

criterion_group!(benches, payload, small_reads, damaged_final_chunk);
criterion_main!(benches);
