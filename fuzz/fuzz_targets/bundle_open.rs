//! Opens arbitrary bytes as a bundle, exactly as `keyferry import` does
//! (header, KDF limits, Argon2id, key commitment, file-key unwrap, expiry,
//! STREAM chunks, payload zip, end of stream), with a fixed password and
//! KDF limits so small that each execution stays fast.
//!
//! Invariants checked:
//! - no input panics, hangs or allocates without bound: a header asking for
//!   more than the limits is refused before the KDF runs;
//! - whatever opens is authentic: the plaintext a successful import read is
//!   never larger than the ciphertext it came from;
//! - the stream layer round-trips: the input, sealed as a payload under a
//!   fixed KEK, opens back to the same bytes, and (for small inputs) the
//!   same bundle cut short by a fuzz-chosen amount never opens;
//! - the input taken as a bare STREAM body never opens to more bytes than
//!   it holds, and never panics.
#![no_main]

use std::io::{Read, Write};

use keyferry::bundle::{self, BundleError, SealParams, Source, StreamOpener};
use keyferry_fuzz::{import_bytes, open_options, ImportError, SMALL_KDF, SMALL_LIMITS};
use libfuzzer_sys::fuzz_target;

const KEK: [u8; 32] = [0x42; 32];

fn stream_round_trip(data: &[u8]) {
    let params = SealParams {
        kdf: SMALL_KDF,
        created: 0,
        expires: None,
        armor: false,
    };
    let mut w = bundle::seal_with_kek(&KEK, [0; 16], &params, Vec::new()).unwrap();
    w.write_all(data).unwrap();
    let sealed = w.finish().unwrap();

    let open = |bytes: &[u8]| -> Result<Vec<u8>, BundleError> {
        let mut r =
            bundle::read_header(bytes, &SMALL_LIMITS)?.unlock_with_kek(&KEK, &open_options())?;
        let mut out = Vec::new();
        match r.read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(e) => Err(r.take_error().unwrap_or(BundleError::Io(e))),
        }
    };
    assert_eq!(open(&sealed).expect("own bundle opens"), data);

    // Cut 1..=256 bytes off the end (chosen by the data): never opens.
    // Only for small payloads: a damaged final chunk makes the opener try
    // up to 64 shorter lengths (to name appended data), which is cheap in
    // a release build but slow under the fuzzer's instrumentation.
    if data.len() <= 256 {
        let cut = 1 + usize::from(data.first().copied().unwrap_or(0));
        let short = &sealed[..sealed.len().saturating_sub(cut)];
        assert!(open(short).is_err(), "a truncated bundle opened");
    }
}

/// The input as a bare STREAM body: whatever opens is shorter than it.
fn bare_stream(data: &[u8]) {
    let mut out = Vec::new();
    if StreamOpener::new(&KEK, data).read_to_end(&mut out).is_ok() {
        assert!(out.len() + 16 <= data.len(), "opened more than it held");
    }
}

fuzz_target!(|data: &[u8]| {
    match import_bytes(data) {
        Ok(_payload) => {
            // Binary or armored, the ciphertext is at least 150 bytes of
            // header plus one tag larger than the payload it carried.
            let armored = matches!(Source::detect(data), Ok(Source::Armored(_)));
            assert!(armored || data.len() >= bundle::HEADER_LEN + 16);
        }
        Err(ImportError::Bundle(_)) | Err(ImportError::Payload(_)) => {}
    }
    if data.len() <= 2 * bundle::CHUNK_SIZE + 1 {
        stream_round_trip(data);
        bare_stream(data);
    }
});
