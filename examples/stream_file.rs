//! Seals or opens a file of any size through keyferry's streaming bundle
//! path (the CLI caps its payloads; the library does not):
//!
//! ```text
//! cargo run --release --example stream_file -- seal IN OUT
//! cargo run --release --example stream_file -- open IN OUT
//! cargo run --release --example stream_file -- mem MIB
//! ```
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
use std::io::{self, BufReader, Read, Write};
use std::process::ExitCode;
use std::time::Instant;

use keyferry::bundle::{self, BundleError, OpenOptions, SealParams, CHUNK_SIZE};
use keyferry::kdf::{derive_kek, KdfLimits, KdfParams};

const PASSWORD: &[u8] = b"stream_file example password";
/// Read and write in 1 MiB pieces: fewer syscalls than one per chunk.
const IO_BUF: usize = 16 * CHUNK_SIZE;

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    let mut buf = vec![0u8; IO_BUF];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BundleError::Io(e)),
        };
        w.write_all(&buf[..n]).map_err(BundleError::Io)?;
        total += n as u64;
    }
    w.finish()?.sync_all().map_err(BundleError::Io)?;
    report(kdf_secs, t.elapsed().as_secs_f64(), total);
    Ok(())
}

fn open(input: &str, output: &str) -> Result<(), BundleError> {
    let src = BufReader::with_capacity(IO_BUF, File::open(input).map_err(BundleError::Io)?);
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
    // Write to a temporary name and rename at the end: a payload that fails
    // authentication half-way never leaves a plausible-looking OUT behind.
    let partial = format!("{output}.partial");
    let mut out = File::create(&partial).map_err(BundleError::Io)?;
    let mut buf = vec![0u8; IO_BUF];
    let mut total = 0u64;
    let result = (|| loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BundleError::from_stream_io(e)),
        };
        out.write_all(&buf[..n]).map_err(BundleError::Io)?;
        total += n as u64;
    })();
    if let Err(e) = result {
        drop(out);
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    out.sync_all().map_err(BundleError::Io)?;
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
    for piece in data.chunks(IO_BUF) {
        w.write_all(piece).map_err(BundleError::Io)?;
    }
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
    let mut total = 0usize;
    loop {
        let end = (total + IO_BUF).min(plain.len());
        let n = r
            .read(&mut plain[total..end])
            .map_err(BundleError::from_stream_io)?;
        if n == 0 {
            break;
        }
        total += n;
    }
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
