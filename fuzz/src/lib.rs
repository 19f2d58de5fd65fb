//! Helpers shared by keyferry's fuzz targets and by the seed-corpus
//! generator (`examples/make_seeds.rs`), so that the targets and the seeds
//! agree on the password, the KDF parameters and the way an importer reads
//! a bundle.
//!
//! The fuzzed bundle path uses Argon2id at tiny parameters (64 KiB, 1 pass,
//! 1 lane) and import limits that allow nothing larger than 64 KiB, 2
//! passes, 1 lane: every execution that reaches the KDF stays well under a
//! millisecond, and a header asking for more is refused before any memory
//! is allocated (which is itself one of the checked invariants).

use std::io::{BufRead, Read, Write};

use keyferry::bundle::{self, BundleError, OpenOptions, PayloadFailure, SealParams};
use keyferry::kdf::{self, KdfLimits, KdfParams};
use keyferry::keyring::Keyring;
use keyferry::payload::{self, ConfigFile, ConfigSink, Payload, PayloadError};
use keyferry::secret::Password;

/// The password every fuzzed bundle is opened with.
pub const PASSWORD: &str = "fuzz password";

/// Seeds are sealed at these parameters (below the export floor on purpose:
/// `seal_with_kek` does not check the floor, `derive_kek` accepts them).
pub const SMALL_KDF: KdfParams = KdfParams {
    memory_kib: 64,
    time: 1,
    lanes: 1,
};

/// What the fuzzed importer accepts: anything bigger is refused before the
/// KDF runs.
pub const SMALL_LIMITS: KdfLimits = KdfLimits {
    max_memory_kib: 64,
    max_time: 2,
    max_lanes: 1,
};

/// Payload cap for fuzzing: small, so that a zip bomb is cut off quickly.
pub const SMALL_CAP: u64 = 256 * 1024;

/// A fixed Unix time for expiry checks (2025-11-25).
pub const NOW: u64 = 1_764_000_000;

pub fn open_options() -> OpenOptions {
    OpenOptions {
        now: NOW,
        allow_expired: false,
    }
}

/// Seals `plaintext` as a bundle that opens with [`PASSWORD`] under
/// [`SMALL_LIMITS`]. `expires` lets seeds cover the expiry check.
pub fn seal_small(plaintext: &[u8], armor: bool, expires: Option<u64>) -> Vec<u8> {
    let salt = [0x5a; 16];
    let kek = kdf::derive_kek(PASSWORD.as_bytes(), &salt, &SMALL_KDF).expect("small KDF");
    let params = SealParams {
        kdf: SMALL_KDF,
        created: NOW - 60,
        expires,
        armor,
    };
    let mut w = bundle::seal_with_kek(&kek, salt, &params, Vec::new()).expect("seal");
    w.write_all(plaintext).expect("write to Vec");
    w.finish().expect("finish")
}

/// A configuration sink that reads everything it is given and counts it, so
/// a target can check the payload cap held.
#[derive(Default)]
pub struct CountingSink {
    pub bytes: u64,
}

impl ConfigSink for CountingSink {
    fn receive(&mut self, _file: ConfigFile, data: &mut dyn Read) -> std::io::Result<()> {
        self.bytes += std::io::copy(data, &mut std::io::sink())?;
        Ok(())
    }
}

/// Reads a payload from `input` as an importer does, and asserts the cap:
/// configuration handed to the sink never exceeds `cap` bytes.
pub fn read_payload_capped<R: BufRead>(input: R, cap: u64) -> Result<(Payload, R), PayloadError> {
    let mut sink = CountingSink::default();
    let result = payload::read(input, cap, &mut sink);
    assert!(
        sink.bytes <= cap,
        "payload cap {cap} exceeded: {} bytes of configuration",
        sink.bytes
    );
    result
}

/// Why an import of a bundle stopped (or `Ok` with the payload).
#[derive(Debug)]
pub enum ImportError {
    Bundle(BundleError),
    Payload(PayloadError),
}

/// Opens `bytes` the way `ops::import` does: header, limits, KDF,
/// commitment, unwrap, expiry, payload, and the end of the authenticated
/// stream.
pub fn import_bytes(bytes: &[u8]) -> Result<Payload, ImportError> {
    let password = Password::from_typed(PASSWORD);
    let mut reader = bundle::read_header(bytes, &SMALL_LIMITS)
        .and_then(|locked| locked.unlock(&password, &open_options()))
        .map_err(ImportError::Bundle)?;
    reader
        .parse_payload(|plain| read_payload_capped(plain, SMALL_CAP).map(|(payload, _)| payload))
        .map_err(|e| match e {
            PayloadFailure::Bundle(e) => ImportError::Bundle(e),
            PayloadFailure::Parse(e) => ImportError::Payload(e),
        })
}

/// A small valid keyring (three keys, one destroyed), as JSON.
pub fn sample_keyring_json() -> &'static str {
    r#"{"format":"keyferry-keyring","version":1,"primary":2,"keys":[
{"id":1,"status":"enabled","created":"2025-11-20T10:00:00Z","algorithm":"aes-256-gcm","material":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="},
{"id":2,"status":"enabled","created":"2025-11-21T10:00:00Z","algorithm":"aes-256-gcm","material":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="},
{"id":3,"status":"destroyed","created":"2025-11-22T10:00:00Z","algorithm":"aes-256-gcm"}]}"#
}

pub fn sample_keyring() -> Keyring {
    Keyring::from_json(sample_keyring_json().as_bytes()).expect("sample keyring is valid")
}

/// A payload zip holding [`sample_keyring`] and the given configuration
/// files, written by keyferry's own writer.
pub fn sample_payload(config: &[(ConfigFile, &[u8])]) -> Vec<u8> {
    let mut readers: Vec<(ConfigFile, &[u8])> = config.to_vec();
    let mut sources = Vec::new();
    for (file, data) in readers.iter_mut() {
        let crc = {
            let mut probe: &[u8] = data;
            payload::zip::crc_and_len(&mut probe).expect("crc").0
        };
        sources.push(payload::ConfigSource {
            file: *file,
            crc,
            len: data.len() as u64,
            data,
        });
    }
    payload::write(Vec::new(), "fuzz-node", &sample_keyring(), sources).expect("payload")
}

/// Wraps `manifest` as `manifest.json` in a zip together with the sample
/// keyring, so a target can feed arbitrary manifest bytes through the real
/// payload path.
pub fn zip_with_manifest(manifest: &[u8]) -> Vec<u8> {
    let mut zip = payload::zip::ZipWriter::new(Vec::new());
    zip.add_bytes(payload::MANIFEST, manifest).expect("zip");
    zip.add_bytes(payload::KEYRING, &sample_keyring().to_json())
        .expect("zip");
    zip.finish().expect("zip")
}
