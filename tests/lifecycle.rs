//! Issue 15, items 1 and 2: the key lifecycle on the command line (every
//! rule and refusal, refusals leaving the home byte for byte unchanged, one
//! audit record per change, destroy scrubbing the backups) and the envelope
//! (`keyferry encrypt` / `decrypt`: round trips in both forms, every
//! refusal by key id, and the published vectors).

mod common;

use std::fs;
use std::path::Path;

use common::node::{assert_same, snapshot, Node};
use serde_json::Value;

fn keys(node: &Node) -> Value {
    let out = node
        .cmd()
        .args(["keys", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `(id, status, primary)` of every key.
fn states(node: &Node) -> Vec<(u64, String, bool)> {
    keys(node)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_u64().unwrap(),
                k["status"].as_str().unwrap().to_owned(),
                k["primary"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn s(id: u64, status: &str, primary: bool) -> (u64, String, bool) {
    (id, status.to_owned(), primary)
}

fn actions(node: &Node) -> Vec<String> {
    node.cmd().args(["audit", "verify"]).assert().success();
    let out = node
        .cmd()
        .args(["audit", "show", "--json"])
        .output()
        .unwrap();
    let recs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    recs.iter()
        .map(|r| {
            format!(
                "{} {}",
                r["action"].as_str().unwrap(),
                r["details"]["outcome"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must be refused with `code`, mentioning every one of
/// `words`, and leaving the home exactly as it was.
fn refused(node: &Node, args: &[&str], code: i32, words: &[&str]) {
    let before = snapshot(&node.home);
    let out = node.cmd().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    let err = stderr(&out);
    for w in words {
        assert!(err.contains(w), "{args:?}: {w:?} not in {err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_same(&before, &snapshot(&node.home));
}

fn ok(node: &Node, args: &[&str]) -> String {
    let out = node.cmd().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_lifecycle_follows_its_rules_and_audits_each_change() {
    let node = Node::initialised();
    assert_eq!(states(&node), [s(1, "enabled", true)]);

    let out = ok(&node, &["rotate", "--stage"]);
    assert!(out.contains("keyferry export -n keys.exp"), "{out}");
    assert!(out.contains("keyferry promote 2"), "{out}");
    assert_eq!(
        states(&node),
        [s(1, "enabled", true), s(2, "enabled", false)]
    );

    // The primary can be neither disabled nor destroyed.
    refused(
        &node,
        &["disable", "1"],
        1,
        &["key 1", "primary", "promote another key first"],
    );
    refused(&node, &["destroy", "1", "--yes"], 1, &["key 1", "primary"]);
    // Only a disabled key can be destroyed or enabled.
    refused(
        &node,
        &["destroy", "2", "--yes"],
        1,
        &["key 2", "disable it first"],
    );
    refused(&node, &["enable", "2"], 1, &["key 2", "already"]);
    refused(&node, &["promote", "1"], 1, &["already the primary"]);
    refused(&node, &["promote", "9"], 1, &["no key with id 9"]);
    refused(&node, &["disable", "9"], 1, &["no key with id 9"]);

    let out = ok(&node, &["promote", "2"]);
    assert!(out.contains("keyferry rewrap"), "{out}");
    assert_eq!(
        states(&node),
        [s(1, "enabled", false), s(2, "enabled", true)]
    );
    ok(&node, &["disable", "1"]);
    refused(&node, &["disable", "1"], 1, &["key 1", "disabled"]);
    refused(&node, &["promote", "1"], 1, &["key 1", "enable it first"]);
    ok(&node, &["enable", "1"]);
    ok(&node, &["disable", "1"]);
    assert_eq!(
        states(&node),
        [s(1, "disabled", false), s(2, "enabled", true)]
    );

    // rotate without --stage: a new primary at once.
    let out = ok(&node, &["rotate"]);
    assert!(out.contains("made the primary"), "{out}");
    assert_eq!(
        states(&node),
        [
            s(1, "disabled", false),
            s(2, "enabled", false),
            s(3, "enabled", true)
        ]
    );
    assert_eq!(
        actions(&node),
        [
            "init done",
            "rotate done",
            "promote done",
            "disable done",
            "enable done",
            "disable done",
            "rotate done"
        ]
    );
}

#[test]
fn destroy_asks_unless_yes_and_removes_the_material_from_every_backup() {
    let node = Node::initialised();
    ok(&node, &["rotate"]);
    ok(&node, &["disable", "1"]);
    let backups = node.home.join("backups");
    let holding = |id: u64| -> usize {
        fs::read_dir(&backups)
            .unwrap()
            .filter(|e| {
                let doc: Value =
                    serde_json::from_slice(&fs::read(e.as_ref().unwrap().path()).unwrap())
                        .unwrap_or(Value::Null);
                doc["keys"].as_array().is_some_and(|ks| {
                    ks.iter()
                        .any(|k| k["id"] == id && k.get("material").is_some())
                })
            })
            .count()
    };
    assert_eq!(
        holding(1),
        2,
        "the keystores before rotate and disable are backed up"
    );

    // No terminal, no --yes: refused, nothing changed.
    refused(
        &node,
        &["destroy", "1"],
        2,
        &["--yes", "nothing was changed"],
    );
    ok(&node, &["destroy", "1", "--yes"]);
    assert_eq!(
        states(&node),
        [s(1, "destroyed", false), s(2, "enabled", true)]
    );
    assert_eq!(holding(1), 0, "no backup holds key 1's material");
    assert!(holding(2) >= 1, "other keys stay in the backups");
    let keystore = fs::read_to_string(node.home.join("keyring.json")).unwrap();
    let doc: Value = serde_json::from_str(&keystore).unwrap();
    assert!(doc["keys"][0].get("material").is_none());
    // A rewritten backup is still a keyring the node can read.
    for e in fs::read_dir(&backups).unwrap() {
        let bytes = fs::read(e.unwrap().path()).unwrap();
        keyferry::keyring::Keyring::from_json(&bytes).unwrap();
    }
    let acts = actions(&node);
    assert_eq!(&acts[acts.len() - 2..], ["destroy started", "destroy done"]);
    refused(&node, &["destroy", "1", "--yes"], 2, &["destroyed already"]);
    refused(&node, &["enable", "1"], 1, &["stays destroyed"]);
}

fn encrypt(node: &Node, input: &[u8], args: &[&str]) -> std::process::Output {
    node.cmd()
        .arg("encrypt")
        .args(args)
        .write_stdin(input.to_vec())
        .output()
        .unwrap()
}

fn decrypt(node: &Node, input: &[u8], args: &[&str]) -> std::process::Output {
    node.cmd()
        .arg("decrypt")
        .args(args)
        .write_stdin(input.to_vec())
        .output()
        .unwrap()
}

#[test]
fn encrypt_and_decrypt_round_trip_and_refuse_by_key_id() {
    let node = Node::initialised();
    let value = b"db password \x00\xff with bytes";
    let text = encrypt(&node, value, &["--aad", "app.credentials:42"]);
    assert!(text.status.success());
    let text = text.stdout;
    assert!(
        text.starts_with(b"kfe1:1:"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    assert!(text.ends_with(b"\n"));
    let back = decrypt(&node, &text, &["--aad", "app.credentials:42"]);
    assert!(back.status.success(), "{}", stderr(&back));
    assert_eq!(back.stdout, value);

    let raw = encrypt(&node, value, &["--raw"]).stdout;
    assert_eq!(raw[0], 1);
    assert_eq!(&raw[1..5], &1u32.to_be_bytes());
    assert_eq!(raw.len(), value.len() + 33);
    assert_eq!(decrypt(&node, &raw, &["--raw"]).stdout, value);
    // The wrong form or the wrong aad is refused with exit 9.
    let out = decrypt(&node, &raw, &[]);
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    let out = decrypt(&node, &text, &["--aad", "app.credentials:43"]);
    assert_eq!(out.status.code(), Some(11));
    assert!(stderr(&out).contains("key 1") && stderr(&out).contains("modified"));
    assert!(out.stdout.is_empty());

    // After rotation, old values still open; new ones are under key 2.
    ok(&node, &["rotate"]);
    assert!(encrypt(&node, b"x", &[]).stdout.starts_with(b"kfe1:2:"));
    assert_eq!(decrypt(&node, &raw, &["--raw"]).stdout, value);

    ok(&node, &["disable", "1"]);
    let out = decrypt(&node, &raw, &["--raw"]);
    assert_eq!(out.status.code(), Some(11));
    assert!(stderr(&out).contains("key 1") && stderr(&out).contains("enable key 1"));
    ok(&node, &["enable", "1"]);
    assert_eq!(decrypt(&node, &raw, &["--raw"]).stdout, value);
    ok(&node, &["disable", "1"]);
    ok(&node, &["destroy", "1", "--yes"]);
    let out = decrypt(&node, &text, &["--aad", "app.credentials:42"]);
    assert_eq!(out.status.code(), Some(11));
    assert!(stderr(&out).contains("key 1") && stderr(&out).contains("destroyed"));

    // A key this node never had.
    let other = Node::initialised();
    ok(&other, &["rotate"]);
    ok(&other, &["rotate"]);
    let foreign = encrypt(&other, b"v", &[]).stdout;
    assert!(foreign.starts_with(b"kfe1:3:"));
    let out = decrypt(&node, &foreign, &[]);
    assert_eq!(out.status.code(), Some(11));
    assert!(stderr(&out).contains("key 3") && stderr(&out).contains("import"));
    // Not an envelope at all.
    let out = decrypt(&node, b"hello", &[]);
    assert_eq!(out.status.code(), Some(11));
    assert!(stderr(&out).contains("kfe1:<key id>:<base64>"));
    // Neither the value nor any key is in the audit log.
    let log = fs::read_to_string(node.home.join("audit.log")).unwrap();
    assert!(!log.contains("db password"));
}

#[test]
fn decrypt_opens_the_published_vectors() {
    let vectors: Vec<Value> = serde_json::from_str(
        &fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/envelope/vectors.json"),
        )
        .unwrap(),
    )
    .unwrap();
    use base64::Engine;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    for v in vectors {
        // A home whose keystore holds the vector's key as its primary.
        let node = Node::initialised();
        let path = node.home.join("keyring.json");
        let mut doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let id = v["key_id"].as_u64().unwrap();
        doc["primary"] = id.into();
        doc["keys"][0]["id"] = id.into();
        doc["keys"][0]["material"] = v["key"].clone();
        fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        // --aad is text on a command line: a vector with a NUL in its aad
        // is for the library (src/keyring/envelope.rs opens it there).
        let Ok(aad) = String::from_utf8(b64(&v["aad"])) else {
            continue;
        };
        if aad.contains('\0') {
            continue;
        }
        let out = decrypt(
            &node,
            v["text"].as_str().unwrap().as_bytes(),
            &["--aad", &aad],
        );
        assert!(out.status.success(), "{}: {}", v["name"], stderr(&out));
        assert_eq!(out.stdout, b64(&v["plaintext"]), "{}", v["name"]);
        let out = decrypt(&node, &b64(&v["envelope"]), &["--raw", "--aad", &aad]);
        assert_eq!(out.stdout, b64(&v["plaintext"]), "{}", v["name"]);
    }
}

/// Issue 22: `keys signing-key` gives a keyring made before format 2 its
/// pair signing key (one audited change); over an existing key it needs
/// `--replace`, and a remote host's keyring, which only pins the key, is
/// refused; each refusal leaves the home byte for byte as it was.
#[test]
fn a_pair_signing_key_is_made_once_and_replaced_only_when_asked() {
    let code = |node: &Node| -> Option<String> {
        let out = node
            .cmd()
            .args(["keys", "fingerprint", "--host", "--json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_str(&common::succeeded(&out)).unwrap();
        v["signing_key"].as_str().map(str::to_owned)
    };
    let primary = Node::initialised();
    let first = code(&primary).expect("init makes one");

    let before = snapshot(&primary.home);
    let out = primary
        .cmd()
        .args(["keys", "signing-key"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&first) && said.contains("--replace"),
        "{said}"
    );
    assert_same(&before, &snapshot(&primary.home));

    let out = primary
        .cmd()
        .args(["keys", "signing-key", "--replace"])
        .output()
        .unwrap();
    let said = common::succeeded(&out);
    let second = code(&primary).unwrap();
    assert_ne!(first, second);
    assert!(said.contains(&format!("replaced {first}")), "{said}");
    primary.cmd().args(["audit", "verify"]).assert().success();

    // A keyring from before format 2: no signing key at all.
    let keyring = primary.home.join("keyring.json");
    let mut doc: Value = serde_json::from_slice(&fs::read(&keyring).unwrap()).unwrap();
    let found = ["keyring", ""].iter().find_map(|k| {
        let obj = if k.is_empty() {
            &mut doc
        } else {
            doc.get_mut(*k)?
        };
        obj.as_object_mut()?.remove("signing")
    });
    assert!(
        found.is_some(),
        "the keystore names the signing key: {doc:#}"
    );
    fs::write(&keyring, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    assert_eq!(code(&primary), None);
    let out = primary
        .cmd()
        .args(["keys", "signing-key"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(code(&primary).is_some_and(|c| c != second));

    // A remote host pins the key and cannot make one.
    let host = Node::empty();
    let bundle = primary.path("keys.exp");
    primary.export(&bundle, &[]);
    host.import_cmd(&bundle)
        .arg("--keys-only")
        .assert()
        .success();
    let before = snapshot(&host.home);
    let out = host
        .cmd()
        .args(["keys", "signing-key", "--replace"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pins the pair signing key"));
    assert_same(&before, &snapshot(&host.home));
}
