//! Times keyferry's Argon2id (`kdf::derive_kek`, i.e. the `argon2` crate
//! with its `parallel` feature) at the given parameters, for the
//! comparison with libsodium in BENCHMARKS.md:
//!
//! ```text
//! cargo run --release --example argon2_rate -- MEMORY_KIB TIME LANES [REPS]
//! ```
//!
//! Prints on stderr the best and median seconds of REPS (default 7)
//! derivations and the rate as (memory x passes)/s in MiB/s, from the
//! median. It checks that every derivation gives the same key.

use std::time::Instant;

use keyferry::kdf::{derive_kek, KdfParams};

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let (params, reps) = match args[..] {
        [m, t, p] => (
            KdfParams {
                memory_kib: m,
                time: t,
                lanes: p,
            },
            7,
        ),
        [m, t, p, r] => (
            KdfParams {
                memory_kib: m,
                time: t,
                lanes: p,
            },
            r as usize,
        ),
        _ => {
            eprintln!("usage: argon2_rate MEMORY_KIB TIME LANES [REPS]");
            std::process::exit(2);
        }
    };
    let salt = [0x11u8; 16];
    let first = derive_kek(b"argon2 rate password", &salt, &params).expect("derive");
    let mut secs = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let kek = derive_kek(b"argon2 rate password", &salt, &params).expect("derive");
        secs.push(t.elapsed().as_secs_f64());
        assert_eq!(*kek, *first, "derivation is deterministic");
    }
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    let work_mib = f64::from(params.memory_kib) / 1024.0 * f64::from(params.time);
    eprintln!("params={params}");
    eprintln!("best_seconds={:.4}", secs[0]);
    eprintln!("median_seconds={median:.4}");
    eprintln!("mem_passes_mib_per_s={:.1}", work_mib / median);
}
