//! The envelope (issue 15): `Keyring::encrypt` / `decrypt` of a 200-byte
//! secret, binary and text forms, with a row-sized aad. This is the
//! per-value crypto cost of `keyferry rewrap` (one decrypt and one encrypt
//! per row).
//!
//! Invariant checked on the way: every opened value is the sealed one.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keyferry::keyring::Keyring;

const AAD: &[u8] = b"app.credentials:123456";

fn envelope(c: &mut Criterion) {
    let mut k = Keyring::generate("2026-12-01T00:00:00Z").unwrap();
    let id = k.add("2026-12-01T00:00:00Z").unwrap();
    k.promote(id).unwrap();
    let secret = [0x5au8; 200];
    let sealed = k.encrypt(&secret, AAD).unwrap();
    let text = k.encrypt_text(&secret, AAD).unwrap();
    assert_eq!(&*k.decrypt(&sealed, AAD).unwrap(), &secret[..]);
    assert_eq!(&*k.decrypt_text(&text, AAD).unwrap(), &secret[..]);

    let mut g = c.benchmark_group("envelope_200B");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encrypt", |b| {
        b.iter(|| k.encrypt(black_box(&secret), black_box(AAD)).unwrap())
    });
    g.bench_function("decrypt", |b| {
        b.iter(|| k.decrypt(black_box(&sealed), black_box(AAD)).unwrap())
    });
    g.bench_function("encrypt_text", |b| {
        b.iter(|| k.encrypt_text(black_box(&secret), black_box(AAD)).unwrap())
    });
    g.bench_function("decrypt_text", |b| {
        b.iter(|| k.decrypt_text(black_box(&text), black_box(AAD)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, envelope);
criterion_main!(benches);
