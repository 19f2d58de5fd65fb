//! The documents a payload carries, as an importer reads them:
//! `keyring.json` (`Keyring::from_json`), the node's keystore
//! (`Keystore::from_json`), `manifest.json` (fed through the real payload
//! path: zipped next to a valid keyring and read by `payload::read`) and
//! `ha.toml` (`HaConfig::from_toml`).
//!
//! Invariants checked:
//! - no input panics or hangs;
//! - what parses re-serializes to a document that parses to the same value
//!   (keyring, keystore, ha.toml), so a node never writes a file it cannot
//!   read back;
//! - a keyring's fingerprint is a function of its value.
#![no_main]

use keyferry::ha::config::HaConfig;
use keyferry::node::keystore::Keystore;
use keyferry::keyring::Keyring;
use keyferry_fuzz::{read_payload_capped, zip_with_manifest, SMALL_CAP};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = Keyring::from_json(data) {
        let again = Keyring::from_json(&k.to_json()).expect("own keyring.json parses");
        assert_eq!(again, k);
        assert_eq!(again.fingerprint(), k.fingerprint());
    }
    if let Ok(s) = Keystore::from_json(data) {
        let again = Keystore::from_json(&s.to_json()).expect("own keystore parses");
        assert_eq!(again, s);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = HaConfig::from_toml(text) {
            let toml = c.to_toml().expect("valid config serializes");
            let again = HaConfig::from_toml(&toml).expect("own ha.toml parses");
            assert_eq!(again, c);
        }
    }
    let zipped = zip_with_manifest(data);
    let _ = read_payload_capped(&zipped[..], SMALL_CAP);
});
