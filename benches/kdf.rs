//! Argon2id key derivation at keyferry's DEFAULT (64 MiB, t=3, p=4) and
//! STRONG (256 MiB, t=4, p=4) presets, as `derive_kek` runs it for every
//! export and import.
//!
//! Invariant checked on the way: the derivation is deterministic (same
//! password, salt and parameters give the same KEK), so what is timed is
//! the real function and not an error path.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keyferry::kdf::{derive_kek, KdfParams};

fn kdf(c: &mut Criterion) {
    let mut group = c.benchmark_group("kdf");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    for (name, params) in [
        ("default", KdfParams::DEFAULT),
        ("strong", KdfParams::STRONG),
    ] {
        let salt = [9u8; 16];
        let a = derive_kek(b"k7q2-m9xd-pwr4-h3jt-8vcn-2bfa", &salt, &params).unwrap();
        let b = derive_kek(b"k7q2-m9xd-pwr4-h3jt-8vcn-2bfa", &salt, &params).unwrap();
        assert_eq!(*a, *b, "{name}: derivation is deterministic");
        // Throughput as memory x passes: criterion's bytes/s is then the
        // (memory x passes)/s figure that BENCHMARKS.md compares.
        group.throughput(Throughput::Bytes(
            u64::from(params.memory_kib) * 1024 * u64::from(params.time),
        ));
        group.bench_function(name, |bch| {
            bch.iter(|| derive_kek(black_box(b"k7q2-m9xd-pwr4-h3jt-8vcn-2bfa"), &salt, &params))
        });
    }
    group.finish();
}

criterion_group!(benches, kdf);
criterion_main!(benches);
