//! Inputs the `documents` fuzz target once failed on, replayed through the
//! same steps and invariants as `fuzz/fuzz_targets/documents.rs`: each file
//! under `tests/vectors/documents/regressions/` is read as `keyring.json`,
//! as a keystore, as `ha.toml` and as `manifest.json` in a payload zip. No
//! step may panic, and what parses must re-serialize to the same value.

use std::io::Read;
use std::path::Path;

use keyferry::ha::config::HaConfig;
use keyferry::keyring::Keyring;
use keyferry::node::keystore::Keystore;
use keyferry::payload::{self, ConfigFile, ConfigSink};

const SAMPLE_KEYRING: &str = r#"{"format":"keyferry-keyring","version":1,"primary":1,"keys":[
{"id":1,"status":"enabled","created":"2025-11-20T10:00:00Z","algorithm":"aes-256-gcm","material":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}]}"#;

struct Discard;

impl ConfigSink for Discard {
    fn receive(&mut self, _file: ConfigFile, data: &mut dyn Read) -> std::io::Result<()> {
        std::io::copy(data, &mut std::io::sink()).map(|_| ())
    }
}

fn replay(name: &str, data: &[u8]) {
    if let Ok(k) = Keyring::from_json(data) {
        let again = Keyring::from_json(&k.to_json()).expect("own keyring.json parses");
        assert_eq!(again, k, "{name}");
    }
    if let Ok(s) = Keystore::from_json(data) {
        let again = Keystore::from_json(&s.to_json()).expect("own keystore parses");
        assert_eq!(again, s, "{name}");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = HaConfig::from_toml(text) {
            let toml = c.to_toml().expect("valid config serializes");
            assert_eq!(HaConfig::from_toml(&toml).unwrap(), c, "{name}");
        }
    }
    let keyring = Keyring::from_json(SAMPLE_KEYRING.as_bytes()).unwrap();
    let mut zip = payload::zip::ZipWriter::new(Vec::new());
    zip.add_bytes(payload::MANIFEST, data).unwrap();
    zip.add_bytes(payload::KEYRING, &keyring.to_json()).unwrap();
    let zipped = zip.finish().unwrap();
    let _ = payload::read(&zipped[..], 256 * 1024, &mut Discard);
}

#[test]
fn documents_fuzz_regressions_neither_panic_nor_drift() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/documents/regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        replay(&path.display().to_string(), &std::fs::read(&path).unwrap());
        seen += 1;
    }
    assert!(seen > 0, "no regression inputs in {}", dir.display());
}
