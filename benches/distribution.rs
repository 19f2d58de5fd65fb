//! Sealing one keyring for N hosts: one format 2 distribution to N
//! recipients (one X25519 stanza each, one Ed25519 signature) against N
//! password bundles (format 1, Argon2id at `KdfParams::DEFAULT` each), and
//! against N one-recipient distributions (what `keyferry distribute` seals:
//! one per host, each host's own serial row). The payload is a realistic
//! 20-key keyring document (about 3 KiB), and N is 1, 4 and 16.
//!
//! The ratio that matters is the password path's: a distribution costs
//! microseconds per host where a password bundle costs the KDF, and nobody
//! types a password.
//!
//! Invariant checked on the way: every host's stanza opens to the payload.

use std::io::Write;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use keyferry::bundle::keys::{HostSecret, SigningSecret};
use keyferry::bundle::v2::{self, DistParams};
use keyferry::bundle::{self, SealParams};
use keyferry::kdf::KdfParams;
use keyferry::secret::Password;

const PAYLOAD_LEN: usize = 3 * 1024;
const PARAMS: DistParams = DistParams {
    created: 1_764_000_000,
    expires: None,
    serial: 1,
};

fn distribution(c: &mut Criterion) {
    let payload = vec![0x5a_u8; PAYLOAD_LEN];
    let signer = SigningSecret::generate().unwrap();
    let password = Password::from_typed("bench password for distribution");
    let mut group = c.benchmark_group("distribution");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for n in [1usize, 4, 16] {
        let hosts: Vec<HostSecret> = (0..n).map(|_| HostSecret::generate().unwrap()).collect();
        let publics: Vec<_> = hosts.iter().map(HostSecret::public).collect();
        let sealed = v2::seal(&signer, &publics, &PARAMS, &payload).unwrap();
        for h in &hosts {
            let opened = v2::open(&sealed, h, &signer.public(), PARAMS.created).unwrap();
            assert_eq!(&opened.plaintext[..], &payload[..]);
        }
        group.bench_with_input(BenchmarkId::new("one_to_n_recipients", n), &n, |b, _| {
            b.iter(|| v2::seal(&signer, &publics, &PARAMS, &payload).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("n_single_recipient", n), &n, |b, _| {
            b.iter(|| {
                publics
                    .iter()
                    .map(|p| v2::seal(&signer, &[*p], &PARAMS, &payload).unwrap().len())
                    .sum::<usize>()
            })
        });
        // The password path costs seconds per bundle: measured at N = 1
        // and 4 only (16 would be 16 KDFs per iteration).
        if n <= 4 {
            group.bench_with_input(BenchmarkId::new("n_password_bundles", n), &n, |b, &n| {
                b.iter(|| {
                    (0..n)
                        .map(|_| {
                            let params = SealParams {
                                kdf: KdfParams::DEFAULT,
                                created: PARAMS.created,
                                expires: None,
                                armor: false,
                            };
                            let mut w = bundle::seal(&password, &params, Vec::new()).unwrap();
                            w.write_all(&payload).unwrap();
                            w.finish().unwrap().len()
                        })
                        .sum::<usize>()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, distribution);
criterion_main!(benches);
