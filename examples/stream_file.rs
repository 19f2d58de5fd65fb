//! Seals or opens a file of any size through keyferry's streaming bundle
//! path (the CLI caps its payloads; the library does not):
//!
//! ```text
//! cargo run --release --example stream_file -- seal IN OUT
//! cargo run --release --example stream_file -- open IN OUT   # OUT may be /dev/null
//! cargo run --release --example stream_file -- mem MIB
//! ```
//!
//! The payload goes through the library's copy-free paths
//! (`BundleWriter::seal_from`, `BundleReader::open_to`): the file is read
//! straight into the chunk slots, sealed or opened there, and written out
//! a batch of chunks at a time.
//!
//! `mem MIB` runs the same streaming seal and open on MIB MiB held in
//! memory (sealed into and opened from a buffer, the plaintext compared
//! with the original after timing),
//! to compare the library layer with the raw AEAD on equal work, file I/O
//! excluded; it prints `seal_mib_per_s` and `open_mib_per_s`.
//!
//! The KEK comes from a fixed password ("stream_file example password") at
//! `KdfParams::DEFAULT`; the bundle header carries the salt and parameters,
//! so `open` derives the same KEK. Memory stays at one chunk plus buffers
//! whatever the file size. On stderr it prints the KDF time and the payload
//! time and throughput separately (BENCHMARKS.md uses the payload figure),
//! one `key=value` per field.

use std::fs::File;
use std::io::{self, BufReader};
use std::process::ExitCode;
use std::time::Instant;

use keyferry::bundle::{self, BundleError, OpenOptions, SealParams, CHUNK_SIZE};
use keyferry::kdf::{derive_kek, KdfLimits, KdfParams};

const PASSWORD: &[u8] = b"stream_file example password";

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Flushes a file to disk before the clock stops; a device such as
/// /dev/null has nothing to flush (and refuses `fsync`).
fn sync_if_file(f: &File) -> io::Result<()> {
    if f.metadata()?.is_file() {
        f.sync_all()?;
    }
    Ok(())
}

fn report(kdf_secs: f64, payload_secs: f64, bytes: u64) {
    eprintln!("kdf_seconds={kdf_secs:.3}");
    eprintln!("payload_seconds={payload_secs:.3}");
    eprintln!("payload_bytes={bytes}");
    eprintln!(
        "payload_mib_per_s={:.1}",
        bytes as f64 / (1 << 20) as f64 / payload_secs.max(1e-9)
    );
}

fn seal(input: &str, output: &str) -> Result<(), BundleError> {
    let mut src = File::open(input).map_err(BundleError::Io)?;
    let out = File::create(output).map_err(BundleError::Io)?;
    let salt: [u8; 16] = {
        let mut s = [0u8; 16];
        getrandom::fill(&mut s).map_err(|e| BundleError::Io(io::Error::other(e.to_string())))?;
        s
    };
    let t = Instant::now();
    let kek = derive_kek(PASSWORD, &salt, &KdfParams::DEFAULT)?;
    let kdf_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let params = SealParams {
        kdf: KdfParams::DEFAULT,
        created: now_unix(),
        expires: None,
        armor: false,
    };
    let mut w = bundle::seal_with_kek(&kek, salt, &params, out)?;
    let total = w.seal_from(&mut src)?;
    sync_if_file(&w.finish()?).map_err(BundleError::Io)?;
    report(kdf_secs, t.elapsed().as_secs_f64(), total);
    Ok(())
}

fn open(input: &str, output: &str) -> Result<(), BundleError> {
    // A small buffer for the header: the payload reads bypass it, as they
    // ask for more than it holds.
    let src = BufReader::new(File::open(input).map_err(BundleError::Io)?);
    let (header, source) = bundle::read_header(src)?;
    let options = OpenOptions {
        limits: KdfLimits::default(),
        now: now_unix(),
        allow_expired: false,
    };
    options.limits.check(&header.kdf)?;
    let t = Instant::now();
    let kek = derive_kek(PASSWORD, &header.kdf_salt, &header.kdf)?;
    let kdf_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut r = bundle::open_with_kek(&kek, header, source, &options)?;
    // A device such as /dev/null (for timing without the file system's
    // page allocation) is written directly. A file goes to a temporary name
    // and is renamed at the end: a payload that fails authentication
    // half-way never leaves a plausible-looking OUT behind.
    if std::fs::metadata(output).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        let total = r.open_to(&mut File::create(output).map_err(BundleError::Io)?)?;
        report(kdf_secs, t.elapsed().as_secs_f64(), total);
        return Ok(());
    }
    let partial = format!("{output}.partial");
    let mut out = File::create(&partial).map_err(BundleError::Io)?;
    let total = match r.open_to(&mut out) {
        Ok(n) => n,
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    sync_if_file(&out).map_err(BundleError::Io)?;
    std::fs::rename(&partial, output).map_err(BundleError::Io)?;
    report(kdf_secs, t.elapsed().as_secs_f64(), total);
    Ok(())
}

fn mem(mib: &str) -> Result<(), BundleError> {
    let mib: usize = mib
        .parse()
        .map_err(|_| BundleError::Io(io::Error::other("MIB must be a number")))?;
    let data: Vec<u8> = (0..mib << 20).map(|i| (i % 251) as u8).collect();
    let kek = derive_kek(PASSWORD, &[0; 16], &KdfParams::DEFAULT)?;
    let params = SealParams {
        kdf: KdfParams::DEFAULT,
        created: now_unix(),
        expires: None,
        armor: false,
    };
    // The output buffer is written once before timing, as raw_aead's data
    // is: page faults on fresh memory are not the bundle layer's cost.
    let sealed_len = data.len() + (data.len() / CHUNK_SIZE + 1) * 16 + 150;
    let mut out = vec![1u8; sealed_len];
    let t = Instant::now();
    let mut w = bundle::seal_with_kek(&kek, [0; 16], &params, &mut out[..])?;
    w.seal_from(&mut &data[..])?;
    let rest = w.finish()?.len();
    let seal_secs = t.elapsed().as_secs_f64();
    let sealed = &out[..sealed_len - rest];

    // Plaintext goes into a pre-written buffer (the one copy any consumer
    // makes) and is compared with the original after the clock stops.
    let mut plain = vec![2u8; data.len() + 1];
    let t = Instant::now();
    let (header, source) = bundle::read_header(sealed)?;
    let options = OpenOptions {
        limits: KdfLimits::default(),
        now: now_unix(),
        allow_expired: false,
    };
    let mut r = bundle::open_with_kek(&kek, header, source, &options)?;
    let total = r.open_to(&mut &mut plain[..])? as usize;
    let open_secs = t.elapsed().as_secs_f64();
    assert_eq!(total, data.len());
    assert!(plain[..total] == data[..], "opened data differs");
    eprintln!("seal_mib_per_s={:.1}", mib as f64 / seal_secs);
    eprintln!("open_mib_per_s={:.1}", mib as f64 / open_secs);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1..) {
        Some([cmd, input, output]) if cmd == "seal" => seal(input, output),
        Some([cmd, input, output]) if cmd == "open" => open(input, output),
        Some([cmd, mib]) if cmd == "mem" => mem(mib),
        _ => {
            eprintln!("usage: stream_file seal IN OUT | open IN OUT | mem MIB");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stream_file: {e}");
            ExitCode::FAILURE
        }
    }
}
