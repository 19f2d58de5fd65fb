//! Bundles made by hand through the library, for tests that need payloads
//! keyferry's own export never writes (large, malformed, hostile).

use std::io::{Cursor, Write};

use keyferry::bundle::{self, SealParams};
use keyferry::kdf::KdfParams;
use keyferry::keyring::Keyring;
use keyferry::payload::{self, ConfigFile, ConfigSource};
use keyferry::secret::Password;

pub const CREATED: u64 = 1_764_000_000;

/// Seals `payload` with the fast KDF.
pub fn seal(payload: &[u8], password: &str, armor: bool) -> Vec<u8> {
    seal_created(payload, password, armor, CREATED)
}

/// [`seal`] with the creation time `created` (Unix seconds).
pub fn seal_created(payload: &[u8], password: &str, armor: bool, created: u64) -> Vec<u8> {
    let params = SealParams {
        kdf: KdfParams::MINIMUM,
        created,
        expires: None,
        armor,
    };
    let mut w = bundle::seal(&Password::from_typed(password), &params, Vec::new()).expect("seal");
    w.write_all(payload).expect("write");
    w.finish().expect("finish")
}

/// A valid payload: a fresh keyring plus an appsettings.json of `config_len`
/// bytes (none when 0). Returns the payload and the keyring's fingerprint.
pub fn payload_with_config(config_len: usize) -> (Vec<u8>, String) {
    let keyring = Keyring::generate("2026-11-25T00:00:00Z").expect("keyring");
    let config: Vec<u8> = (0..config_len).map(|i| b"{}\r\n abc"[i % 8]).collect();
    let mut data = &config[..];
    let sources = if config_len > 0 {
        vec![ConfigSource {
            file: ConfigFile::Appsettings,
            crc: crc32fast::hash(&config),
            len: config.len() as u64,
            data: &mut data,
        }]
    } else {
        Vec::new()
    };
    let out =
        payload::write(Cursor::new(Vec::new()), "crafted", &keyring, sources).expect("payload");
    (out.into_inner(), keyring.fingerprint().to_string())
}

/// A zip built entry by entry with the `zip` crate (an independent writer),
/// deflated or stored.
pub fn zip_of(entries: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    for (name, data) in entries {
        z.start_file(
            *name,
            SimpleFileOptions::default().compression_method(method),
        )
        .expect("start file");
        z.write_all(data).expect("write entry");
    }
    z.finish().expect("finish zip").into_inner()
}

/// A manifest for a fresh keyring, and that keyring's document.
pub fn manifest_and_keyring() -> (Vec<u8>, Vec<u8>) {
    let keyring = Keyring::generate("2026-11-25T00:00:00Z").expect("keyring");
    let manifest = serde_json::json!({
        "format": "keyferry-payload",
        "version": 1,
        "source_node": "crafted",
        "created_by": "test",
        "keyring_fingerprint": keyring.fingerprint().to_string(),
        "contents": ["keyring"],
    });
    (
        serde_json::to_vec(&manifest).expect("json"),
        keyring.to_json().to_vec(),
    )
}
