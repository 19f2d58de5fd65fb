//! The export -> import path through the real binary: what operators run on
//! the primary, the secondary and the remote service hosts, and every way a
//! bundle can be bad. Each refusal must exit with its documented code, say
//! what is wrong, and leave the receiving node byte-for-byte as it was.

mod common;

#[cfg(unix)]
use common::hazard::{assert_no_hazard, HAZARDS};

use std::fs;
use std::path::Path;

use common::craft;
use common::node::{assert_same, snapshot, Node, FAST_KDF, PASSWORD};

const VECTORS: &str = "tests/vectors/independent";
const VECTOR_PASSWORD: &str = "k7q2-m9xd-pwr4-h3jt-8vcn-2bfa";
const VECTOR_FINGERPRINT: &str = "kf1:4c0620564358b1c24928ebd0e738fa97a9810819";

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs an import expected to fail and checks the exit code, a phrase of the
/// message, and that nothing changed but the record of the attempt: the
/// keys, every other file and the bundle's folder are as they were, and the
/// audit log (still valid) ends with an `import-refused` record.
fn refused(node: &Node, file: &Path, password: &str, code: i32, phrase: &str) {
    // Only a refusal about the bundle itself (exit codes 3 to 6) is on
    // record, and only on a node with keys.
    if !node.home.join("keyring.json").exists() || !(3..=6).contains(&code) {
        return refused_without_trace(node, file, password, code, phrase);
    }
    let mut import = node.import_cmd_with(file, password);
    let fingerprint = node.fingerprint();
    let records = |node: &Node| {
        let out = node
            .cmd()
            .args(["audit", "show", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    };
    let before_records = records(node);
    let before = snapshot(node.dir.path());
    let out = import.output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(phrase), "expected {phrase:?} in: {err}");
    assert_eq!(err.lines().count(), 1, "one line, please: {err}");
    let mut after = snapshot(node.dir.path());
    let mut before = before;
    let home = node.home.strip_prefix(node.dir.path()).unwrap();
    for f in ["keyring.json", "audit.log"] {
        let p = home.join(f);
        before.remove(&p);
        after.remove(&p);
    }
    assert_same(&before, &after);
    assert_eq!(node.fingerprint(), fingerprint);
    node.cmd().args(["audit", "verify"]).assert().success();
    let now = records(node);
    assert_eq!(now.len(), before_records.len() + 1);
    let last = now.last().unwrap();
    assert_eq!(last["action"], "import-refused");
    assert_eq!(last["details"]["exit_code"], code);
    assert!(
        !last.to_string().contains(password),
        "no password on record"
    );
}

/// A refused import that is not on record leaves no trace at all.
fn refused_without_trace(node: &Node, file: &Path, password: &str, code: i32, phrase: &str) {
    let mut import = node.import_cmd_with(file, password);
    let before = snapshot(node.dir.path());
    let out = import.output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(phrase), "expected {phrase:?} in: {err}");
    assert_eq!(err.lines().count(), 1, "one line, please: {err}");
    assert_same(&before, &snapshot(node.dir.path()));
}

#[test]
fn init_creates_a_keyring_once() {
    let node = Node::initialised();
    let fp = node.fingerprint();
    assert!(fp.starts_with("kf1:") && fp.len() == 44, "{fp}");
    assert!(fp[4..]
        .bytes()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    let before = snapshot(&node.home);
    let out = node.cmd().arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("already holds a keyring"));
    assert_same(&before, &snapshot(&node.home));
}

#[test]
fn export_then_import_binary_and_armored() {
    let primary = Node::initialised();
    for armor in [false, true] {
        let secondary = Node::initialised();
        let file = primary.path(if armor { "keys.asc" } else { "keys.exp" });
        let extra: &[&str] = if armor { &["--armor"] } else { &[] };
        primary.export(&file, extra);
        let head = fs::read(&file).unwrap();
        assert_eq!(head.starts_with(b"-----BEGIN KEYFERRY BUNDLE-----"), armor);
        assert_eq!(head.starts_with(b"KFBUNDLE"), !armor);
        let out = secondary.import_cmd(&file).output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("fingerprint after  {}", primary.fingerprint())),
            "{stdout}"
        );
        assert!(
            stderr_of(&out).contains("Now delete"),
            "reminds to delete the bundle"
        );
        assert!(file.exists());
        assert_eq!(secondary.fingerprint(), primary.fingerprint());
        secondary.cmd().args(["audit", "verify"]).assert().success();
        fs::remove_file(&file).unwrap();
    }
    primary.cmd().args(["audit", "verify"]).assert().success();
}

#[cfg(unix)]
#[test]
fn bundle_keyring_and_backups_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let primary = Node::initialised();
    let file = primary.path("keys.exp");
    primary.export(&file, &[]);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&primary.home.join("keyring.json")), 0o600);
    assert_eq!(mode(&primary.home.join("audit.log")), 0o600);
    assert_eq!(mode(&primary.home), 0o700);
    assert!(
        !primary.home.join("backups").exists(),
        "export moves the audit head on without copying the keys again"
    );
    // An import that replaces the keys backs the old keystore up.
    let other = Node::initialised();
    other.import_cmd(&file).assert().success();
    let backups: Vec<_> = fs::read_dir(other.home.join("backups")).unwrap().collect();
    assert_eq!(backups.len(), 1, "one backup of the replaced keystore");
    for b in backups {
        assert_eq!(mode(&b.unwrap().path()), 0o600);
    }
}

#[cfg(unix)]
#[test]
fn a_home_others_can_read_is_used_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::initialised();
    let list = || node.cmd().args(["keys", "list"]).output().unwrap();
    let quiet = list();
    assert_eq!(quiet.status.code(), Some(0));
    assert!(
        !stderr_of(&quiet).contains("warning"),
        "{}",
        stderr_of(&quiet)
    );

    fs::set_permissions(&node.home, fs::Permissions::from_mode(0o755)).unwrap();
    let out = list();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("can be read by other accounts") && err.contains("chmod 700"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line, please: {err}");
    // Told, not changed behind the operator's back.
    let mode = fs::metadata(&node.home).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
}

#[test]
fn generated_password_goes_to_stderr_only_and_any_case_opens_it() {
    let primary = Node::initialised();
    let file = primary.path("keys.exp");
    let out = primary
        .cmd()
        .arg("export")
        .arg("-n")
        .arg(&file)
        .args(FAST_KDF)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    let password = err
        .split_whitespace()
        .find(|w| w.len() == 29 && w.matches('-').count() == 5)
        .expect("password shown on stderr")
        .to_owned();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&password));
    // Nor is it in the audit log or the keystore.
    for f in ["audit.log", "keyring.json"] {
        assert!(!fs::read_to_string(primary.home.join(f))
            .unwrap()
            .contains(&password));
    }
    // Typed back in capitals with spaces, as people do.
    let typed = password.to_uppercase().replace('-', " ");
    let secondary = Node::empty();
    secondary
        .cmd()
        .env("KF_PW", typed)
        .args(["import", "--password-env", "KF_PW", "--delete", "-n"])
        .arg(&file)
        .assert()
        .success();
    assert!(!file.exists(), "--delete removed the bundle");
    assert_eq!(secondary.fingerprint(), primary.fingerprint());
}

#[test]
fn the_independent_vectors_import_to_the_published_fingerprint() {
    for name in ["keys.kfb", "keys.asc", "keys-p4.kfb"] {
        let node = Node::empty();
        let file = node.path(name);
        fs::copy(Path::new(VECTORS).join(name), &file).unwrap();
        node.import_cmd_with(&file, VECTOR_PASSWORD)
            .assert()
            .success();
        assert_eq!(node.fingerprint(), VECTOR_FINGERPRINT, "{name}");
    }
}

#[test]
fn inspect_shows_the_header_without_a_password() {
    let node = Node::empty();
    let out = node
        .cmd()
        .args([
            "inspect",
            "--json",
            "-n",
            "tests/vectors/independent/keys-expired.kfb",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kdf_memory_kib"], 19456);
    assert_eq!(v["kdf_time"], 2);
    assert_eq!(v["kdf_lanes"], 1);
    assert_eq!(v["created"], "2025-11-24T16:00:00Z");
    assert_eq!(v["expires"], "2025-11-24T17:00:00Z");
    assert_eq!(v["armored"], false);
}

#[test]
fn wrong_password_expired_and_kdf_limit_are_told_apart() {
    let node = Node::initialised();
    let keys = Path::new(VECTORS).join("keys.kfb");
    refused(
        &node,
        &keys,
        "k7q2-m9xd-pwr4-h3jt-8vcn-2bfb",
        3,
        "wrong password",
    );
    let expired = Path::new(VECTORS).join("keys-expired.kfb");
    refused(
        &node,
        &expired,
        VECTOR_PASSWORD,
        5,
        "expired at 2025-11-24T17:00:00Z",
    );
    // --allow-expired is the documented way out.
    node.import_cmd_with(&expired, VECTOR_PASSWORD)
        .arg("--allow-expired")
        .assert()
        .success();

    // A header asking for 2 GiB: refused before any memory is spent.
    let greedy = keyferry::kdf::KdfParams {
        memory_kib: 2 * 1024 * 1024,
        time: 3,
        lanes: 4,
    };
    let params = keyferry::bundle::SealParams {
        kdf: greedy,
        created: craft::CREATED,
        expires: None,
        armor: false,
    };
    let w = keyferry::bundle::seal_with_kek(&[1; 32], [2; 16], &params, Vec::new()).unwrap();
    let file = node.path("greedy.kfb");
    fs::write(&file, w.finish().unwrap()).unwrap();
    refused(&node, &file, PASSWORD, 6, "2048 MiB");
    refused(&node, &file, PASSWORD, 6, "--max-kdf-memory 2097152");
}

#[test]
fn our_own_expiry_is_enforced() {
    let primary = Node::initialised();
    let file = primary.path("keys.exp");
    primary.export(&file, &["--expires", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    refused(&Node::initialised(), &file, PASSWORD, 5, "expired");
}

#[test]
fn files_that_are_not_bundles() {
    let node = Node::initialised();
    let empty = node.path("empty.kfb");
    fs::write(&empty, b"").unwrap();
    refused(&node, &empty, PASSWORD, 4, "empty");
    let text = node.path("notes.txt");
    fs::write(&text, b"these are not the keys\n").unwrap();
    refused(&node, &text, PASSWORD, 4, "not a keyferry bundle");
    let short = node.path("short.kfb");
    fs::write(
        &short,
        &fs::read(Path::new(VECTORS).join("keys.kfb")).unwrap()[..100],
    )
    .unwrap();
    refused(&node, &short, VECTOR_PASSWORD, 4, "ends inside its header");
    refused(&node, node.dir.path(), PASSWORD, 2, "is a directory");
    refused(
        &node,
        &node.path("missing.kfb"),
        PASSWORD,
        2,
        "does not exist",
    );
}

#[test]
fn broken_armor_is_refused_with_the_line() {
    let node = Node::initialised();
    let text = fs::read_to_string(Path::new(VECTORS).join("keys.asc")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let write = |name: &str, content: String| {
        let p = node.path(name);
        fs::write(&p, content).unwrap();
        p
    };
    let mut bad_char = lines.clone();
    let broken = format!("{}!{}", &lines[2][..10], &lines[2][11..]);
    bad_char[2] = &broken;
    let f = write("bad-char.asc", bad_char.join("\n"));
    refused(&node, &f, VECTOR_PASSWORD, 4, "line 3");
    let mut short_line = lines.clone();
    let cut = &lines[2][..40];
    short_line[2] = cut;
    let f = write("short-line.asc", short_line.join("\n"));
    refused(&node, &f, VECTOR_PASSWORD, 4, "malformed armor");
    let f = write("no-end.asc", lines[..lines.len() - 1].join("\n"));
    refused(&node, &f, VECTOR_PASSWORD, 4, "END line is missing");
    // Inside the block, a line of text is still an error naming it.
    let mut chatter_inside = lines.clone();
    chatter_inside.insert(2, "(continued)");
    let f = write("chatter-inside.asc", chatter_inside.join("\n"));
    refused(&node, &f, VECTOR_PASSWORD, 4, "line 3");
}

/// What pasting through a ticket, a mail or a remote-desktop clipboard does
/// to the armor: every variant imports (and inspects) to the published
/// fingerprint, and text outside the block is skipped with one `note:`.
#[test]
fn pasted_armor_imports_and_says_what_it_ignored() {
    let text = fs::read_to_string(Path::new(VECTORS).join("keys.asc")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let map = |f: &dyn Fn(usize, &str) -> String| -> String {
        lines.iter().enumerate().map(|(i, l)| f(i, l)).collect()
    };
    let note = "note: ";
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "indented, as quoted in a ticket",
            map(&|_, l| format!("    {l}\n")),
            None,
        ),
        (
            "tabs before and spaces after",
            map(&|i, l| format!("\t{l}{}\n", " ".repeat(i % 3))),
            None,
        ),
        (
            "CRLF and blank lines around",
            format!("\r\n \r\n{}\r\n\t\r\n", lines.join("\r\n")),
            None,
        ),
        (
            "text before BEGIN",
            format!("Here are the keys:\n\n{text}"),
            Some("ignored 1 line of text before the BEGIN line"),
        ),
        (
            "text after END",
            format!("{text}\nThanks,\nthe DBA team\n"),
            Some("ignored 2 lines of text after the END line"),
        ),
        (
            "a whole mail, CRLF and indented",
            format!(
                "Hi,\r\nthe keys:\r\n{}\r\nBye\r\n",
                map(&|_, l| format!("  {l} \r\n"))
            ),
            Some("ignored 2 lines of text before the BEGIN line and 1 after the END line"),
        ),
    ];
    for (what, content, expected_note) in cases {
        let node = Node::empty();
        let f = node.path("pasted.asc");
        fs::write(&f, &content).unwrap();

        let out = node.cmd().args(["inspect", "-n"]).arg(&f).output().unwrap();
        let err = stderr_of(&out);
        assert!(out.status.success(), "{what}: inspect: {err}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("armored"),
            "{what}"
        );

        let out = node.import_cmd_with(&f, VECTOR_PASSWORD).output().unwrap();
        let import_err = stderr_of(&out);
        assert!(out.status.success(), "{what}: import: {import_err}");
        assert_eq!(node.fingerprint(), VECTOR_FINGERPRINT, "{what}");

        for err in [&err, &import_err] {
            let notes: Vec<&str> = err.lines().filter(|l| l.starts_with(note)).collect();
            match expected_note {
                None => assert!(notes.is_empty(), "{what}: {err}"),
                Some(phrase) => {
                    assert_eq!(notes.len(), 1, "{what}: one note, please: {err}");
                    assert!(notes[0].contains(phrase), "{what}: {err}");
                    assert!(notes[0].contains("pasted.asc"), "{what}: {err}");
                }
            }
        }
    }
}

#[test]
fn every_header_field_flip_is_refused_by_the_binary() {
    let node = Node::initialised();
    let good = fs::read(Path::new(VECTORS).join("keys.kfb")).unwrap();
    // One bit in each field of the header (offsets from DESIGN.md).
    for (offset, mask, code, phrase) in [
        (0usize, 0x01u8, 4, "not a keyferry bundle"),
        (8, 0x01, 4, "format version"),
        (9, 0x01, 4, "KDF id"),
        (10, 0x80, 6, "over this host's limit"), // memory cost far above 1 GiB
        (12, 0x01, 3, "wrong password"),         // memory cost, still allowed
        (17, 0x01, 3, "wrong password"),         // time cost
        (21, 0x02, 3, "wrong password"),         // lanes (1 -> 3)
        (21, 0x01, 4, "not valid for Argon2id"), // lanes (1 -> 0)
        (30, 0x01, 3, "wrong password"),         // KDF salt
        (40, 0x01, 3, "wrong password"),         // created
        (50, 0x01, 3, "wrong password"),         // expires
        (60, 0x01, 3, "wrong password"),         // payload salt
        (80, 0x01, 3, "wrong password"),         // commitment
        (120, 0x01, 3, "wrong password"),        // wrapped file key
        (149, 0x01, 3, "wrong password"),        // its tag
    ] {
        let mut bad = good.clone();
        bad[offset] ^= mask;
        let f = node.path("flipped.kfb");
        fs::write(&f, &bad).unwrap();
        refused(&node, &f, VECTOR_PASSWORD, code, phrase);
    }
}

/// A multi-chunk bundle: keys plus a 200 KiB appsettings.json.
fn big_bundle(node: &Node) -> (Vec<u8>, String) {
    let (payload, fp) = craft::payload_with_config(200 * 1024);
    assert!(payload.len() > 3 * keyferry::bundle::CHUNK_SIZE);
    let sealed = craft::seal(&payload, PASSWORD, false);
    let f = node.path("big-ok.kfb");
    fs::write(&f, &sealed).unwrap();
    (sealed, fp)
}

#[test]
fn damaged_multi_chunk_bundles_are_refused() {
    use keyferry::bundle::{stream::SEALED_CHUNK_SIZE, HEADER_LEN};
    let node = Node::initialised();
    let (good, fp) = big_bundle(&node);
    let chunk = |i: usize| HEADER_LEN + i * SEALED_CHUNK_SIZE;
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "at a chunk boundary",
            good[..chunk(2)].to_vec(),
            "final chunk is missing",
        ),
        (
            "inside a chunk",
            good[..chunk(1) + 1000].to_vec(),
            "modified or cut short",
        ),
        (
            "inside the last chunk",
            good[..good.len() - 1].to_vec(),
            "modified or cut short",
        ),
        (
            "right after the header",
            good[..HEADER_LEN].to_vec(),
            "truncated",
        ),
    ];
    let mut appended = good.clone();
    appended.extend_from_slice(b"\n");
    cases.push(("appended", appended, "data after its final chunk"));
    let mut swapped = good.clone();
    let (a, b) = swapped[chunk(0)..chunk(2)].split_at_mut(SEALED_CHUNK_SIZE);
    a.swap_with_slice(b);
    cases.push((
        "two chunks swapped",
        swapped,
        "chunk 0 failed authentication",
    ));
    let mut flipped = good.clone();
    flipped[chunk(1) + 7] ^= 0x80;
    cases.push((
        "a flipped payload bit",
        flipped,
        "chunk 1 failed authentication",
    ));
    for (what, bytes, phrase) in cases {
        let f = node.path("damaged.kfb");
        fs::write(&f, &bytes).unwrap();
        eprintln!("case: {what}");
        refused(&node, &f, PASSWORD, 4, phrase);
    }
    // The intact one imports (keys only: it carries configuration).
    node.import_cmd(&node.path("big-ok.kfb"))
        .arg("--keys-only")
        .assert()
        .success();
    assert_eq!(node.fingerprint(), fp);
}

#[test]
fn hostile_payloads_are_refused() {
    let node = Node::initialised();
    let (manifest, keyring) = manifest_and_keyring();
    let big = vec![0u8; 65 * 1024 * 1024];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "forbidden name",
            craft::zip_of(
                &[
                    ("manifest.json", &manifest),
                    ("keyring.json", &keyring),
                    ("run.sh", b"rm -rf /"),
                ],
                false,
            ),
            "\"run.sh\", which is not allowed",
        ),
        (
            "dot-dot path",
            craft::zip_of(
                &[
                    ("manifest.json", &manifest),
                    ("keyring.json", &keyring),
                    ("../keyring.json", &keyring),
                ],
                false,
            ),
            "'..' paths are not allowed",
        ),
        (
            "absolute path",
            craft::zip_of(
                &[
                    ("manifest.json", &manifest),
                    ("/etc/keyring.json", &keyring),
                ],
                false,
            ),
            "absolute paths are not allowed",
        ),
        (
            "duplicate entry",
            duplicate_entry_zip(&manifest, &keyring),
            "keyring.json twice",
        ),
        (
            "manifest not first",
            craft::zip_of(
                &[("keyring.json", &keyring), ("manifest.json", &manifest)],
                false,
            ),
            "first entry must be manifest.json",
        ),
        (
            "no keyring",
            craft::zip_of(&[("manifest.json", &manifest)], false),
            "has no keyring.json",
        ),
        (
            "65 MiB of zeros deflated (a zip bomb)",
            craft::zip_of(
                &[
                    ("manifest.json", &manifest),
                    ("keyring.json", &keyring),
                    ("config/appsettings.json", &big),
                ],
                true,
            ),
            "over the payload cap",
        ),
        (
            "not a zip",
            b"just some plaintext".to_vec(),
            "payload archive is malformed",
        ),
    ];
    for (what, payload, phrase) in cases {
        eprintln!("case: {what}");
        let f = node.path("hostile.kfb");
        fs::write(&f, craft::seal(&payload, PASSWORD, false)).unwrap();
        refused(&node, &f, PASSWORD, 4, phrase);
    }
}

fn manifest_and_keyring() -> (Vec<u8>, Vec<u8>) {
    craft::manifest_and_keyring()
}

/// The zip crate refuses to write a duplicate name, so the second entry is
/// renamed in the bytes afterwards (same length, both headers).
fn duplicate_entry_zip(manifest: &[u8], keyring: &[u8]) -> Vec<u8> {
    let zip = craft::zip_of(
        &[
            ("manifest.json", manifest),
            ("keyring.json", keyring),
            ("keyring.jsoX", keyring),
        ],
        false,
    );
    let mut out = zip.clone();
    let needle = b"keyring.jsoX";
    let mut i = 0;
    while let Some(pos) = out[i..].windows(needle.len()).position(|w| w == needle) {
        out[i + pos + needle.len() - 1] = b'n';
        i += pos + 1;
    }
    out
}

#[test]
fn no_terminal_and_no_source_fails_at_once() {
    let node = Node::initialised();
    let out = node
        .cmd()
        .args(["import", "-n", "tests/vectors/independent/keys.kfb"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("--password-file"));
}

#[test]
fn a_chosen_password_must_be_long_enough() {
    let node = Node::initialised();
    let pw = node.password_file("short");
    let file = node.path("keys.exp");
    let out = node
        .cmd()
        .args(["export", "-n"])
        .arg(&file)
        .arg("--password-file")
        .arg(pw)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("at least 12 characters"));
    assert!(!file.exists());
}

#[test]
fn export_refuses_weak_kdf_parameters_and_existing_files() {
    let node = Node::initialised();
    let before = snapshot(node.dir.path());
    let out = node
        .cmd()
        .args(["export", "-n"])
        .arg(node.path("weak.exp"))
        .args(["--kdf-memory", "8192"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("below the export floor"));
    assert_same(&before, &snapshot(node.dir.path()));

    let existing = node.path("existing.exp");
    fs::write(&existing, b"keep me").unwrap();
    let before = snapshot(node.dir.path());
    let out = node
        .cmd()
        .args(["export", "-n"])
        .arg(&existing)
        .args(FAST_KDF)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("already exists"));
    assert_same(&before, &snapshot(node.dir.path()));
}

#[test]
fn an_import_into_a_fresh_node_that_fails_leaves_no_home_behind() {
    let node = Node::empty();
    refused(
        &node,
        &Path::new(VECTORS).join("keys.kfb"),
        "wrong password!",
        3,
        "wrong password",
    );
    assert!(!node.home.exists());
}

/// Makes a path immutable (even to root) for the life of the guard.
#[cfg(target_os = "linux")]
struct Immutable(std::path::PathBuf);

#[cfg(target_os = "linux")]
impl Immutable {
    fn set(path: &Path) -> Option<Self> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Immutable(path.to_path_buf()))
    }
}

#[cfg(target_os = "linux")]
impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[cfg(target_os = "linux")]
#[test]
fn an_unwritable_home_or_audit_log_changes_nothing() {
    let primary = Node::initialised();
    let file = primary.path("keys.exp");
    primary.export(&file, &[]);
    let node = Node::initialised();
    for target in [node.home.clone(), node.home.join("audit.log")] {
        let Some(_guard) = Immutable::set(&target) else {
            eprintln!("skipped: chattr +i is not available here");
            return;
        };
        let phrase = if target.ends_with("audit.log") {
            "cannot write the audit record"
        } else {
            "nothing was changed"
        };
        refused(&node, &file, PASSWORD, 1, phrase);
    }
    let before = snapshot(primary.dir.path());
    let _guard = Immutable::set(&primary.home.join("audit.log")).unwrap();
    let out = primary
        .cmd()
        .args(["export", "-n"])
        .arg(primary.path("again.exp"))
        .args(FAST_KDF)
        .arg("--password-file")
        .arg(primary.password_file(PASSWORD))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        !primary.path("again.exp").exists(),
        "no bundle without its audit record"
    );
    let mut after = snapshot(primary.dir.path());
    after.remove(Path::new("password.txt"));
    let mut before = before;
    before.remove(Path::new("password.txt"));
    assert_same(&before, &after);
}

#[test]
fn a_tampered_audit_log_is_detected_and_blocks_changes() {
    let primary = Node::initialised();
    primary.export(&primary.path("a.exp"), &[]);
    primary.export(&primary.path("b.exp"), &[]);
    primary.cmd().args(["audit", "verify"]).assert().success();
    let log_path = primary.home.join("audit.log");
    let log = fs::read_to_string(&log_path).unwrap();
    assert_eq!(log.lines().count(), 3);

    let edited = log.replacen("a.exp", "z.exp", 1);
    fs::write(&log_path, &edited).unwrap();
    let out = primary.cmd().args(["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert!(stderr_of(&out).contains("line 2"), "{}", stderr_of(&out));
    let out = primary
        .cmd()
        .args(["export", "-n"])
        .arg(primary.path("c.exp"))
        .args(FAST_KDF)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "no change on a damaged log");

    let cut: String = log.lines().take(2).map(|l| format!("{l}\n")).collect();
    fs::write(&log_path, cut).unwrap();
    let out = primary.cmd().args(["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert!(stderr_of(&out).contains("cut off"), "{}", stderr_of(&out));

    fs::write(&log_path, &log).unwrap();
    let out = primary
        .cmd()
        .args(["audit", "show", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let actions: Vec<_> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["init", "export", "export"]);
    assert!(!log.contains(PASSWORD));
}

#[cfg(unix)]
#[test]
fn the_password_can_come_from_an_inherited_descriptor() {
    let node = Node::empty();
    let pw = node.password_file(VECTOR_PASSWORD);
    let bin = assert_cmd::cargo::cargo_bin("keyferry");
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#""$0" --home "$1" import -n "$2" --password-fd 3 3<"$3""#)
        .arg(&bin)
        .arg(&node.home)
        .arg(Path::new(VECTORS).join("keys.kfb"))
        .arg(&pw)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(node.fingerprint(), VECTOR_FINGERPRINT);
}

/// Adds a key with fresh material to a node's keystore by hand (there is no
/// rotate command yet); the audit head is untouched, so the node stays valid.
fn add_key_by_hand(node: &Node, id: u32) {
    let path = node.home.join("keyring.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let material = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([id as u8; 32])
    };
    doc["keys"].as_array_mut().unwrap().push(serde_json::json!({
        "id": id, "status": "enabled", "created": "2026-12-01T00:00:00Z",
        "algorithm": "aes-256-gcm", "material": material,
    }));
    fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
}

#[test]
fn an_import_that_would_lose_keys_is_refused_unless_asked() {
    // Another pair's bundle: same id 1, different material.
    let other_pair = Node::initialised();
    let foreign = other_pair.path("foreign.exp");
    other_pair.export(&foreign, &[]);
    let node = Node::initialised();
    node.password_file(PASSWORD);
    let before = snapshot(node.dir.path());
    let out = node
        .import_cmd_keeping_keys(&foreign, PASSWORD)
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("key 1 (REPLACED") && err.contains("--replace-keys"),
        "{err}"
    );
    assert!(
        err.contains("backups"),
        "says where the backup would be: {err}"
    );
    assert_same(&before, &snapshot(node.dir.path()));

    // --dry-run lists the difference key by key, and changes nothing.
    let out = node
        .import_cmd_keeping_keys(&foreign, PASSWORD)
        .arg("--dry-run")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(text.contains("key 1: REPLACED"), "{text}");
    assert_same(&before, &snapshot(node.dir.path()));

    // A replayed old bundle that would roll {1, 2} back to {1}.
    let old = node.path("old.exp");
    node.export(&old, &[]);
    add_key_by_hand(&node, 2);
    node.cmd().args(["audit", "verify"]).assert().success();
    let before = snapshot(node.dir.path());
    let out = node
        .import_cmd_keeping_keys(&old, PASSWORD)
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("key 2 (REMOVED)"), "{err}");
    assert_same(&before, &snapshot(node.dir.path()));

    // Asked for, it goes ahead and keeps the old keystore.
    let out = node
        .import_cmd_keeping_keys(&foreign, PASSWORD)
        .arg("--replace-keys")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(text.contains("previous keystore kept as"), "{text}");
    assert_eq!(node.fingerprint(), other_pair.fingerprint());

    // Taking the same keys again, or more keys, needs no flag.
    other_pair.export(&other_pair.path("again.exp"), &[]);
    node.import_cmd_keeping_keys(&other_pair.path("again.exp"), PASSWORD)
        .assert()
        .success();
}

/// A bundle made "in the future" (the sender's clock is ahead) imports,
/// with a warning that names the difference.
#[test]
fn a_bundle_from_the_future_imports_with_a_clock_warning() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (payload, fingerprint) = common::craft::payload_with_config(0);
    let node = Node::empty();
    fs::create_dir_all(node.dir.path()).unwrap();
    for (ahead, warned) in [(60, false), (2 * 3600, true)] {
        let file = node.path(&format!("ahead-{ahead}.kfb"));
        fs::write(
            &file,
            common::craft::seal_created(&payload, PASSWORD, false, now + ahead),
        )
        .unwrap();
        let out = node.import_cmd(&file).output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        let err = stderr_of(&out);
        assert_eq!(err.contains("after this host's clock"), warned, "{err}");
        if warned {
            assert!(
                err.contains("2h") || err.contains("1h 59m"),
                "names the difference: {err}"
            );
        }
        assert_eq!(node.fingerprint(), fingerprint);
    }
}

/// A sender's `source_node` cannot forge audit lines or drive the terminal,
/// and a long one is a malformed payload.
#[test]
fn a_hostile_source_node_is_escaped_and_capped() {
    let keyring = keyferry::keyring::Keyring::generate("2026-11-25T00:00:00Z").unwrap();
    let manifest = |source: &str| {
        serde_json::to_vec(&serde_json::json!({
            "format": "keyferry-payload",
            "version": 1,
            "source_node": source,
            "created_by": "test",
            "keyring_fingerprint": keyring.fingerprint().to_string(),
            "contents": ["keyring"],
        }))
        .unwrap()
    };
    let keyring_json = keyring.to_json().to_vec();
    let node = Node::empty();
    fs::create_dir_all(node.dir.path()).unwrap();
    let bundle = |name: &str, source: &str| {
        let zip = common::craft::zip_of(
            &[
                ("manifest.json", &manifest(source)),
                ("keyring.json", &keyring_json),
            ],
            false,
        );
        let file = node.path(name);
        fs::write(&file, common::craft::seal(&zip, PASSWORD, false)).unwrap();
        file
    };
    let forged = "db1\n    9  2026-01-01T00:00:00Z  root@db1  destroy  \x1b[2J";
    node.import_cmd(&bundle("forged.kfb", forged))
        .assert()
        .success();
    let out = node.cmd().args(["audit", "show"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "one record, one line: {text}");
    assert!(!text.contains('\x1b'), "no raw escape: {text:?}");
    assert!(text.contains("\\n") && text.contains("\\u{1b}"), "{text:?}");

    let long = "x".repeat(256);
    refused(
        &node,
        &bundle("long.kfb", &long),
        PASSWORD,
        4,
        "source_node is longer than 255",
    );
}

/// A password source the operator named that cannot be read is a usage
/// error (exit 2) naming the option, and nothing changes.
#[test]
fn an_unreadable_password_source_is_a_usage_error_naming_the_option() {
    let node = Node::initialised();
    let before = snapshot(node.dir.path());
    for (args, option) in [
        (
            vec!["--password-file", "/nonexistent/pw"],
            "--password-file",
        ),
        (
            vec!["--password-env", "KEYFERRY_TEST_UNSET_VAR"],
            "--password-env",
        ),
    ] {
        let out = node
            .cmd()
            .args(["export", "-n"])
            .arg(node.path("k.exp"))
            .args(&args)
            .env_remove("KEYFERRY_TEST_UNSET_VAR")
            .output()
            .unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(option), "{err}");
        assert_same(&before, &snapshot(node.dir.path()));
    }
}

/// A bundle whose config/ha.toml is not a valid pair description is a bad
/// bundle (exit 4), and nothing changes.
#[test]
fn an_invalid_ha_toml_in_a_bundle_is_a_bad_bundle() {
    let keyring = keyferry::keyring::Keyring::generate("2026-11-25T00:00:00Z").unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "format": "keyferry-payload",
        "version": 1,
        "source_node": "crafted",
        "created_by": "test",
        "keyring_fingerprint": keyring.fingerprint().to_string(),
        "contents": ["keyring", "ha-config"],
    }))
    .unwrap();
    let zip = common::craft::zip_of(
        &[
            ("manifest.json", &manifest),
            ("keyring.json", &keyring.to_json()),
            (
                "config/ha.toml",
                b"version = 1\nnode = \"a\"\nprimary = \"localhost\"\n",
            ),
        ],
        false,
    );
    let node = Node::empty();
    fs::create_dir_all(node.dir.path()).unwrap();
    let file = node.path("bad-config.kfb");
    fs::write(&file, common::craft::seal(&zip, PASSWORD, false)).unwrap();
    let out = node
        .import_cmd(&file)
        .args(["--accept-config", "--node", "b"])
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("config/ha.toml is not a valid pair description"),
        "{err}"
    );
    assert!(!node.home.exists(), "nothing was created");
}

/// Issue 23, finding 5: `--password-fd 3` with nothing on descriptor 3 read
/// keyferry's own handle on the bundle (which took number 3) as the
/// password. The descriptor is checked before any file is opened, and
/// named; nothing changes.
#[cfg(unix)]
#[test]
fn a_password_descriptor_that_is_not_open_is_named_before_any_file_is_opened() {
    let node = Node::empty();
    let before = snapshot(node.dir.path());
    // std's Command passes on only descriptors 0 to 2: 3 is not open.
    let out = node
        .cmd()
        .args(["import", "-n"])
        .arg(Path::new(VECTORS).join("keys.kfb"))
        .args(["--password-fd", "3"])
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--password-fd 3") && err.contains("not open"),
        "{err}"
    );
    assert_same(&before, &snapshot(node.dir.path()));
}

/// Issue 23, findings 4 and 5: no program keyferry starts inherits a
/// password source, neither the `--password-env` variable nor the
/// `--password-fd` descriptor. `ha bootstrap` starts `pg_basebackup`
/// first; here it is a script in place of it, which records what it got.
#[cfg(unix)]
#[test]
fn no_program_keyferry_starts_inherits_a_password_source() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::initialised();
    let bin_dir = node.path("pgbin");
    fs::create_dir(&bin_dir).unwrap();
    let seen = node.path("seen");
    for program in [
        "pg_basebackup",
        "pg_ctl",
        "pg_controldata",
        "postgres",
        "psql",
    ] {
        let script = bin_dir.join(program);
        fs::write(
            &script,
            format!(
                "#!/bin/sh\n{{ env; ls -l /proc/$$/fd; }} >> '{}' 2>&1\nexit 1\n",
                seen.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let data = node.path("data");
    fs::create_dir(&data).unwrap();
    node.cmd()
        .args(common::node::HA_INIT)
        .arg("--pg-bin")
        .arg(&bin_dir)
        .arg("--pg-data")
        .arg(&data)
        .assert()
        .success();
    let pw = node.password_file("the replication password");
    let bin = assert_cmd::cargo::cargo_bin("keyferry");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(concat!(
            r#""$0" --home "$1" ha check --timeout-ms 300 --password-fd 7 7<"$2"; "#,
            r#"KF_TEST_LEAK_PW="$3" "$0" --home "$1" ha check --timeout-ms 300 --password-env KF_TEST_LEAK_PW"#
        ))
        .arg(&bin)
        .arg(&node.home)
        .arg(&pw)
        .arg("the replication password")
        .env_remove("KF_TEST_LEAK_PW")
        .env_remove("KEYFERRY_HOME")
        .output()
        .unwrap();
    let seen = fs::read_to_string(&seen).unwrap_or_default();
    // Each of the two runs started at least one program.
    assert!(
        seen.matches("total ").count() >= 2,
        "programs were started: {}",
        stderr_of(&out)
    );
    assert!(!seen.contains("KF_TEST_LEAK_PW"), "{seen}");
    assert!(!seen.contains("the replication password"), "{seen}");
    assert!(!seen.contains(" 7 -> "), "{seen}");
}

/// Issue 23, finding 6: `import` printed the bundle's file name raw, and
/// `audit show` printed a right-to-left override in `source_node` raw.
/// Each hazard goes through every printer of the import: the file name and
/// the sender's name in `import` (its output and its note), in `audit
/// show`, and in an error message.
#[cfg(unix)]
#[test]
fn strings_from_outside_reach_the_terminal_escaped_in_every_printer() {
    let keyring = keyferry::keyring::Keyring::generate("2026-11-25T00:00:00Z").unwrap();
    let hostile = common::hazard::hostile();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "format": "keyferry-payload",
        "version": 1,
        "source_node": format!("db1{hostile}"),
        "created_by": "test",
        "keyring_fingerprint": keyring.fingerprint().to_string(),
        "contents": ["keyring"],
    }))
    .unwrap();
    let zip = common::craft::zip_of(
        &[
            ("manifest.json", &manifest),
            ("keyring.json", keyring.to_json().as_ref()),
        ],
        false,
    );
    let node = Node::empty();
    fs::create_dir_all(node.dir.path()).unwrap();
    let sealed = common::craft::seal(&zip, PASSWORD, false);
    // A path with a line break is refused as a usage error (finding 8)…
    let broken = node.path("keys\nx.kfb");
    fs::write(&broken, &sealed).unwrap();
    let out = node.import_cmd(&broken).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert_no_hazard("a refused path", &stderr_of(&out));
    // …so a file name holds every other hazard.
    let in_name: String = HAZARDS
        .iter()
        .filter(|c| !matches!(c, '\n' | '\r'))
        .map(|c| format!("x{c}"))
        .collect();
    let file = node.path(&format!("keys{in_name}.kfb"));
    fs::write(&file, &sealed).unwrap();

    // A wrong password first: the error names the file.
    let out = node
        .cmd()
        .args(["import", "-n"])
        .arg(&file)
        .args(["--password-env", "KF_TEST_WRONG_PW"])
        .env("KF_TEST_WRONG_PW", "not the password at all")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert_no_hazard("import error", &String::from_utf8_lossy(&out.stderr));

    let out = node.import_cmd(&file).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_no_hazard("import", &stdout);
    assert_no_hazard("import's note", &stderr);
    assert!(
        stdout.contains("\\u{202e}") && stdout.contains("\\u{1b}"),
        "{stdout}"
    );
    assert!(
        stderr.contains("\\u{202e}"),
        "the file name, escaped: {stderr}"
    );

    let out = node.cmd().args(["audit", "show"]).output().unwrap();
    let shown = String::from_utf8(out.stdout).unwrap();
    assert_eq!(shown.lines().count(), 1, "{shown:?}");
    assert_no_hazard("audit show", &shown);
    assert!(shown.contains("\\u{202e}"), "{shown}");
}

/// Issue 23, finding 8: a refused `--dry-run` import appended an audit
/// record. A dry run writes nothing, refused or not.
#[test]
fn a_refused_dry_run_writes_nothing_not_even_an_audit_record() {
    let sender = Node::initialised();
    let file = sender.path("k.kfb");
    sender
        .cmd()
        .args(["export", "-n"])
        .arg(&file)
        .args(FAST_KDF)
        .arg("--password-file")
        .arg(sender.password_file(PASSWORD))
        .assert()
        .success();
    let node = Node::initialised();
    let before = snapshot(&node.home);
    let out = node
        .import_cmd_with(&file, "not the password at all")
        .arg("--dry-run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert_same(&before, &snapshot(&node.home));
    // Without --dry-run the refusal is recorded, as before.
    let out = node
        .import_cmd_with(&file, "not the password at all")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    let log = fs::read_to_string(node.home.join("audit.log")).unwrap();
    assert!(log.contains("import-refused"), "{log}");
}

/// Issue 23, finding 8: `--pg-data` with a line break was accepted (and
/// would have started a line of its own in `ha.toml`). Every path option
/// refuses one as a usage error, naming it escaped, and nothing changes.
#[test]
fn a_path_option_with_a_line_break_is_a_usage_error() {
    let node = Node::initialised();
    let before = snapshot(node.dir.path());
    let mut ha_init: Vec<&str> = common::node::HA_INIT.to_vec();
    ha_init.extend(["--pg-data", "/var/lib/pg\narchive_dir = \"/etc\""]);
    let import = [
        "import",
        "-n",
        "k.kfb",
        "--accept-config",
        "--pg-data",
        "/srv/pg\r\nx",
    ];
    for args in [&ha_init[..], &import[..]] {
        let out = node.cmd().args(args).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--pg-data") && err.contains("line break"),
            "{err}"
        );
        assert!(
            !err.lines()
                .any(|l| l.starts_with("archive_dir") || l == "x"),
            "{err}"
        );
        assert_same(&before, &snapshot(node.dir.path()));
    }
}

/// Issue 20 item 6: `--node ""` with `--accept-config` is a usage error
/// (exit 2) naming --node before anything is read, in a dry run too; it
/// was "the bundle's contents are invalid" (exit 4), and passed --dry-run.
#[test]
fn an_empty_node_name_is_a_usage_error_even_in_a_dry_run() {
    let primary = Node::initialised();
    let bundle = primary.path("keys.exp");
    primary.export(&bundle, &[]);
    let node = Node::empty();
    fs::create_dir_all(node.dir.path()).unwrap();
    for extra in [&[][..], &["--dry-run"][..]] {
        let out = node
            .import_cmd(&bundle)
            .args(["--accept-config", "--node", ""])
            .args(extra)
            .output()
            .unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains("--node") && err.contains("empty"), "{err}");
    }
    assert!(!node.home.exists(), "nothing was created");
}

/// A format 2 distribution given to `import` is refused as what it is,
/// exit 4, the keys unchanged (the refusal is on record, as for any
/// refused bundle).
#[test]
fn a_distribution_is_not_imported_with_a_password() {
    let node = Node::initialised();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/v2/v2-one.kfd");
    let before = node.fingerprint();
    let out = node.import_cmd(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("format 2 distribution") && err.contains("nodes sync"),
        "{err}"
    );
    assert_eq!(node.fingerprint(), before);
    node.cmd().args(["audit", "verify"]).assert().success();
}
