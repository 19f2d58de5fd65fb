//! Writes the committed seed corpus under `fuzz/corpus/<target>/`.
//!
//! Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`.
//! The independent test vectors (`tests/vectors/independent`) and the
//! `pg_hba.conf` samples (`tests/vectors/hba`) are not copied: `smoke.sh`
//! passes those folders to the fuzzer as extra read-only corpora.

use std::fs;
use std::path::Path;

use keyferry::bundle::{ArmorWriter, BundleError};
use keyferry::ha::config::HaConfig;
use keyferry::ha::hba::{self, HbaMethod};
use keyferry::ha::PeerAddr;
use keyferry::payload::ConfigFile;
use keyferry_fuzz::{
    import_bytes, sample_keyring, sample_keyring_json, sample_payload, seal_small,
    zip_with_manifest, ImportError, NOW,
};

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn armor(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut w = ArmorWriter::new(Vec::new()).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn ha_toml() -> String {
    let primary: PeerAddr = "10.20.30.40".parse().unwrap();
    let secondary: PeerAddr = "10.20.30.41".parse().unwrap();
    HaConfig::new("pam-a", primary, secondary)
        .unwrap()
        .to_toml()
        .unwrap()
}

fn manifest_json() -> String {
    format!(
        r#"{{"format":"keyferry-payload","version":1,"source_node":"pam-a","created_by":"keyferry 0.1.0","keyring_fingerprint":"{}","contents":["keyring"]}}"#,
        sample_keyring().fingerprint()
    )
}

fn keystore_json() -> String {
    let keyring = sample_keyring_json();
    let body = keyring.trim_end().trim_end_matches('}');
    format!(
        r#"{body},"node":{{"audit_key":"AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=","audit_seq":3,"audit_mac":"{}"}}}}"#,
        "ab".repeat(32)
    )
}

fn bundle_seeds() {
    let appsettings = br#"{"ConnectionStrings":{"Main":"Host=10.20.30.40;Port=5432"}}"#;
    let toml = ha_toml();
    let keys_only = sample_payload(&[]);
    let with_config = sample_payload(&[
        (ConfigFile::Appsettings, appsettings),
        (ConfigFile::HaConfig, toml.as_bytes()),
    ]);
    put(
        "bundle_open",
        "keys.kfb",
        &seal_small(&keys_only, false, None),
    );
    put(
        "bundle_open",
        "keys.asc",
        &seal_small(&keys_only, true, None),
    );
    put(
        "bundle_open",
        "keys-config.kfb",
        &seal_small(&with_config, false, None),
    );
    put(
        "bundle_open",
        "keys-expired.kfb",
        &seal_small(&keys_only, false, Some(NOW - 1)),
    );
    put(
        "bundle_open",
        "keys-expires-later.kfb",
        &seal_small(&keys_only, false, Some(NOW + 3600)),
    );
    // Edge sizes around the 64 KiB chunk (plaintext is not a zip: these
    // exercise the STREAM layer and the zip reader's first refusal).
    for len in [0usize, 1, 65_535, 65_536, 65_537] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        put(
            "bundle_open",
            &format!("raw-{len}.kfb"),
            &seal_small(&data, false, None),
        );
    }
    for len in [0usize, 1] {
        put(
            "bundle_open",
            &format!("raw-{len}.asc"),
            &seal_small(&[7u8; 1][..len], true, None),
        );
    }
    // Header only, and a header whose KDF asks for more than the limits.
    let keys = seal_small(&keys_only, false, None);
    put("bundle_open", "header-only.kfb", &keys[..150]);
    let mut greedy = keys.clone();
    greedy[10..14].copy_from_slice(&(64 * 1024u32).to_be_bytes());
    put("bundle_open", "over-limit.kfb", &greedy);
    // Appended newline (a transfer tool's habit): must be refused.
    let mut tail = keys.clone();
    tail.extend_from_slice(b"\r\n");
    put("bundle_open", "trailing.kfb", &tail);
    // Sanity: the seeds open (or fail) the way the target will see them.
    assert!(import_bytes(&keys).is_ok());
    assert!(import_bytes(&seal_small(&with_config, true, None)).is_ok());
    assert!(matches!(
        import_bytes(&seal_small(&keys_only, false, Some(NOW - 1))),
        Err(ImportError::Bundle(BundleError::Expired { .. }))
    ));
    assert!(matches!(
        import_bytes(&greedy),
        Err(ImportError::Bundle(BundleError::Kdf(_)))
    ));
}

fn armor_seeds() {
    for len in [0usize, 1, 47, 48, 49, 150] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let text = armor(&data);
        put("armor", &format!("len-{len}.asc"), &text);
        if len == 49 {
            let crlf = String::from_utf8(text.clone())
                .unwrap()
                .replace('\n', "\r\n");
            put(
                "armor",
                "crlf.asc",
                format!("\r\n \t\n{crlf}\n\n").as_bytes(),
            );
            let mut after = text.clone();
            after.extend_from_slice(b"thanks\n");
            put("armor", "text-after-end.asc", &after);
            let s = String::from_utf8(text).unwrap();
            let lines: Vec<&str> = s.lines().collect();
            let short_middle = format!(
                "{}\n{}\n{}\n{}\n",
                lines[0],
                &lines[1][..60],
                lines[2],
                lines[3]
            );
            put("armor", "short-middle-line.asc", short_middle.as_bytes());
            // What tickets, mails and Windows editors do to a paste.
            let indented = |prefix: &str, suffix: &str| -> String {
                lines
                    .iter()
                    .map(|l| format!("{prefix}{l}{suffix}"))
                    .collect()
            };
            let mail = format!(
                "Hi,\r\nthe keys:\r\n{}thanks\r\n",
                indented("\t  ", " \r\n")
            );
            put("armor", "pasted-mail.asc", mail.as_bytes());
            let bom = format!("\u{feff}{}", indented("    ", "\n"));
            put("armor", "bom-indented.asc", bom.as_bytes());
            let long_before = format!("{}\n{s}", "x".repeat(300));
            put("armor", "long-line-before.asc", long_before.as_bytes());
        }
    }
}

fn payload_seeds() {
    let appsettings = br#"{"Logging":{"LogLevel":{"Default":"Information"}}}"#;
    let toml = ha_toml();
    put("payload_zip", "keys-only.zip", &sample_payload(&[]));
    put(
        "payload_zip",
        "appsettings.zip",
        &sample_payload(&[(ConfigFile::Appsettings, appsettings)]),
    );
    put(
        "payload_zip",
        "both-configs.zip",
        &sample_payload(&[
            (ConfigFile::Appsettings, appsettings),
            (ConfigFile::HaConfig, toml.as_bytes()),
        ]),
    );
}

fn document_seeds() {
    put(
        "documents",
        "keyring.json",
        sample_keyring_json().as_bytes(),
    );
    put("documents", "keystore.json", keystore_json().as_bytes());
    put("documents", "manifest.json", manifest_json().as_bytes());
    put("documents", "ha.toml", ha_toml().as_bytes());
    assert!(keyferry::node::keystore::Keystore::from_json(keystore_json().as_bytes()).is_ok());
    let zipped = zip_with_manifest(manifest_json().as_bytes());
    assert!(keyferry_fuzz::read_payload_capped(&zipped[..], 1 << 20).is_ok());
    // The payload path the manifest goes through, for payload_zip too.
    put(
        "payload_zip",
        "manifest-path.zip",
        &zip_with_manifest(manifest_json().as_bytes()),
    );
}

fn hba_seeds() {
    let base = b"# TYPE  DATABASE        USER            ADDRESS                 METHOD\n\
local   all             all                                     peer\n\
host    all             all             127.0.0.1/32            scram-sha-256\n";
    // The selector byte (last) picks peer 0, user 0, scram.
    let with_selector = |text: &[u8], sel: u8| {
        let mut v = text.to_vec();
        v.push(sel);
        v
    };
    put("hba", "plain.conf", &with_selector(base, 0));
    let peer: PeerAddr = "10.20.30.41".parse().unwrap();
    let ensured = hba::ensure(base, &peer, "repuser", HbaMethod::ScramSha256).unwrap();
    put("hba", "with-block.conf", &with_selector(&ensured.text, 0));
    put(
        "hba",
        "with-block-other-peer.conf",
        &with_selector(&ensured.text, 2),
    );
    let crlf = String::from_utf8(ensured.text)
        .unwrap()
        .replace('\n', "\r\n");
    put(
        "hba",
        "with-block-crlf.conf",
        &with_selector(crlf.as_bytes(), 8),
    );
    let v6: PeerAddr = "fd00::17".parse().unwrap();
    let tail = hba::ensure(
        b"host all all 10.0.0.0/8 md5",
        &v6,
        "repuser",
        HbaMethod::Md5,
    )
    .unwrap();
    put(
        "hba",
        "block-at-unterminated-end.conf",
        &with_selector(&tail.text, 2 | 8),
    );
    put("hba", "empty.conf", &[]);
}

fn main() {
    bundle_seeds();
    armor_seeds();
    payload_seeds();
    document_seeds();
    hba_seeds();
    eprintln!("seeds written under fuzz/corpus/");
}
