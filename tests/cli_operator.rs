//! What an operator's shell and scripts see around the main operations: a
//! password read from an inherited descriptor leaves that descriptor alone,
//! the audit log names the account from the process's credentials, an
//! import whose bundle cannot be deleted still exits 0, and `-v` logging
//! says what happens without ever showing a secret.

mod common;

use std::fs;
#[cfg(unix)]
use std::path::Path;
use std::process::Output;

use base64::Engine;
use common::node::{Node, FAST_KDF, PASSWORD};

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The audit log's records, as JSON.
fn audit_records(node: &Node) -> Vec<serde_json::Value> {
    fs::read_to_string(node.home.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A node with keys and a bundle of them in `outbox/keys.exp`.
#[cfg(unix)]
fn primary_with_bundle() -> (Node, std::path::PathBuf) {
    let primary = Node::initialised();
    let outbox = primary.path("outbox");
    fs::create_dir(&outbox).unwrap();
    let file = outbox.join("keys.exp");
    primary.export(&file, &[]);
    (primary, file)
}

/// Runs `script` under bash with `$KF` the binary, `$KF_HOME` the home,
/// `$KF_FILE` the bundle and `$KF_PW` the password.
#[cfg(unix)]
fn bash(node: &Node, file: &Path, script: &str) -> Output {
    std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .env("KF", assert_cmd::cargo::cargo_bin("keyferry"))
        .env("KF_HOME", &node.home)
        .env("KF_FILE", file)
        .env("KF_PW", PASSWORD)
        .env_remove("KEYFERRY_HOME")
        .env_remove("KEYFERRY_LOG")
        .output()
        .expect("run bash")
}

#[cfg(unix)]
#[test]
fn password_fd_reads_standard_input() {
    let (primary, file) = primary_with_bundle();
    let secondary = Node::empty();
    let out = secondary
        .cmd()
        .args(["import", "--password-fd", "0", "-n"])
        .arg(&file)
        .write_stdin(format!("{PASSWORD}\n"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("Now delete"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(secondary.fingerprint(), primary.fingerprint());
}

/// `--password-fd 2` with descriptor 2 opened read-write on a file: the
/// password is read from it, and what keyferry writes to stderr afterwards
/// still goes there (descriptor 2 was not closed and taken over by the next
/// file keyferry opened).
#[cfg(unix)]
#[test]
fn password_fd_2_leaves_stderr_working() {
    let (primary, file) = primary_with_bundle();
    let secondary = Node::empty();
    let channel = secondary.path("fd2.txt");
    fs::write(&channel, format!("{PASSWORD}\n")).unwrap();
    let out = bash(
        &secondary,
        &file,
        &format!(
            "\"$KF\" --home \"$KF_HOME\" import -n \"$KF_FILE\" --password-fd 2 2<>'{}'",
            channel.display()
        ),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let written = fs::read_to_string(&channel).unwrap();
    let (first, rest) = written.split_once('\n').unwrap();
    assert_eq!(first, PASSWORD);
    assert!(
        rest.contains("Now delete") && rest.contains("keys.exp"),
        "the reminder after the read went to descriptor 2: {written:?}"
    );
    assert_eq!(secondary.fingerprint(), primary.fingerprint());
    assert!(
        !fs::read(&file)
            .unwrap()
            .windows(10)
            .any(|w| w == b"Now delete"),
        "nothing was written into the bundle"
    );
}

/// A pipe on descriptor 3, as `keyferry … --password-fd 3 3<&0` from a
/// script that pipes the password in.
#[cfg(unix)]
#[test]
fn password_fd_reads_a_pipe_on_another_descriptor() {
    let (primary, file) = primary_with_bundle();
    let secondary = Node::empty();
    let out = bash(
        &secondary,
        &file,
        "printf '%s\\n' \"$KF_PW\" | \"$KF\" --home \"$KF_HOME\" import -n \"$KF_FILE\" \
         --password-fd 3 3<&0 </dev/null",
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(secondary.fingerprint(), primary.fingerprint());

    // A descriptor that is not open is a usage error naming the option.
    let out = bash(
        &secondary,
        &file,
        "\"$KF\" --home \"$KF_HOME\" import -n \"$KF_FILE\" --password-fd 7 7<&-",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("--password-fd 7"),
        "{}",
        stderr_of(&out)
    );
}

/// `id -un [UID]`: the password database's name, if it has one.
#[cfg(unix)]
fn account_of(uid: Option<u32>) -> Option<String> {
    let mut id = std::process::Command::new("id");
    id.arg("-un");
    if let Some(uid) = uid {
        id.arg(uid.to_string());
    }
    let out = id.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn the_audit_log_names_the_account_not_the_environment() {
    let node = Node::empty();
    node.cmd()
        .arg("init")
        .env("USER", "alice")
        .env("LOGNAME", "alice")
        .env("USERNAME", "alice")
        .env("SUDO_USER", "alice")
        .env_remove("SUDO_UID")
        .assert()
        .success();
    let records = audit_records(&node);
    let user = records[0]["user"].as_str().unwrap().to_owned();
    assert!(
        !user.contains("alice") && !user.is_empty() && user != "unknown",
        "{records:?}"
    );
    #[cfg(unix)]
    assert_eq!(user, account_of(None).expect("id -un"));
    let shown = node.cmd().args(["audit", "show"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains(&format!("{user}@")),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
    node.cmd().args(["audit", "verify"]).assert().success();

    // As root, a sudo invoker is added from SUDO_UID (resolved, not taken
    // from SUDO_USER), labelled as claimed.
    #[cfg(unix)]
    if user == "root" {
        let invoker_uid = 65534;
        let invoker = account_of(Some(invoker_uid)).unwrap_or(format!("uid {invoker_uid}"));
        let node = Node::empty();
        node.cmd()
            .arg("init")
            .env("USER", "alice")
            .env("SUDO_USER", "alice")
            .env("SUDO_UID", invoker_uid.to_string())
            .assert()
            .success();
        assert_eq!(
            audit_records(&node)[0]["user"],
            format!("root (sudo from {invoker}, claimed by SUDO_UID)").as_str()
        );
    } else {
        eprintln!("skipped the sudo case: the tests do not run as root");
    }
}

#[cfg(windows)]
#[test]
fn password_fd_is_refused_on_windows() {
    let primary = Node::initialised();
    let file = primary.path("keys.exp");
    primary.export(&file, &[]);
    let out = Node::empty()
        .cmd()
        .args(["import", "--password-fd", "0", "-n"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("--password-fd is not available on this platform"));
}

/// Makes a directory's entries undeletable, even for root: the immutable
/// attribute (`chattr +i`), else a read-only mode for other users; undone on
/// drop so the temporary directory can be removed.
#[cfg(target_os = "linux")]
struct Undeletable<'a>(&'a Path);

#[cfg(target_os = "linux")]
impl<'a> Undeletable<'a> {
    fn new(dir: &'a Path) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        let guard = Self(dir);
        let probe = dir.join("probe");
        let immutable = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !immutable {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).ok()?;
        }
        // The proof it works: nothing can be created (nor removed) there.
        if fs::write(&probe, b"x").is_ok() {
            let _ = fs::remove_file(&probe);
            return None;
        }
        Some(guard)
    }
}

#[cfg(target_os = "linux")]
impl Drop for Undeletable<'_> {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(self.0)
            .status();
        let _ = fs::set_permissions(self.0, fs::Permissions::from_mode(0o755));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn an_import_whose_bundle_cannot_be_deleted_exits_0_with_a_warning() {
    let (primary, file) = primary_with_bundle();
    let secondary = Node::empty();
    let Some(_guard) = Undeletable::new(file.parent().unwrap()) else {
        eprintln!(
            "skipped: neither chattr +i nor a read-only mode stops deletion in {}",
            file.parent().unwrap().display()
        );
        return;
    };
    let out = secondary
        .import_cmd(&file)
        .arg("--delete")
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning:")
            && err.contains(&file.display().to_string())
            && err.contains("delete it by hand"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(file.exists());
    assert_eq!(secondary.fingerprint(), primary.fingerprint());
    assert_eq!(audit_records(&secondary).len(), 1);
}

/// Every key a node's keystore holds (key material, the audit key), as the
/// base64 stored there and as lowercase and uppercase hex.
fn key_material(node: &Node) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => {
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(s) {
                    if bytes.len() == 32 {
                        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                        out.push(s.clone());
                        out.push(hex.to_uppercase());
                        out.push(hex);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = fs::read_to_string(node.home.join("keyring.json")).unwrap();
    let mut out = Vec::new();
    walk(&serde_json::from_str(&text).unwrap(), &mut out);
    out
}

#[test]
fn verbose_logging_says_what_happens_and_never_shows_a_secret() {
    let primary = Node::initialised();
    let file = primary.path("keys.exp");
    let pw = primary.password_file(PASSWORD);
    let export = primary
        .cmd()
        .env_remove("KEYFERRY_LOG")
        .args(["-vv", "export", "-n"])
        .arg(&file)
        .args(FAST_KDF)
        .arg("--password-file")
        .arg(&pw)
        .output()
        .unwrap();
    let export_log = stderr_of(&export);
    assert!(export.status.success(), "{export_log}");
    assert!(
        export_log.contains("DEBUG") && export_log.contains("sealing the bundle"),
        "{export_log}"
    );

    let secondary = Node::empty();
    let import = secondary
        .import_cmd(&file)
        .env_remove("KEYFERRY_LOG")
        .arg("-vvv")
        .output()
        .unwrap();
    let import_log = stderr_of(&import);
    assert!(import.status.success(), "{import_log}");
    for phase in [
        "bundle header read",
        "m=19456 KiB",
        "deriving the key",
        "payload read",
        "import committed",
        "file replaced atomically",
    ] {
        assert!(import_log.contains(phase), "{phase:?} in: {import_log}");
    }

    let mut secrets = vec![PASSWORD.to_owned()];
    secrets.extend(key_material(&primary));
    secrets.extend(key_material(&secondary));
    assert!(secrets.len() >= 7, "{secrets:?}");
    for secret in &secrets {
        for log in [&export_log, &import_log] {
            assert!(!log.contains(secret.as_str()), "a secret in the log: {log}");
        }
    }
}

#[test]
fn logging_is_off_by_default_and_keyferry_log_turns_it_on() {
    let primary = Node::initialised();
    let file = primary.path("keys.exp");
    primary.export(&file, &[]);
    let quiet = Node::empty();
    let out = quiet
        .import_cmd(&file)
        .env_remove("KEYFERRY_LOG")
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "only the reminder: {err}");
    assert!(err.starts_with("Now delete"), "{err}");
    let out = quiet
        .cmd()
        .env_remove("KEYFERRY_LOG")
        .args(["keys", "fingerprint"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        stderr_of(&out)
    );

    let out = quiet
        .cmd()
        .env("KEYFERRY_LOG", "keyferry=debug")
        .args(["keys", "fingerprint"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        stderr_of(&out).contains("keyferry starting"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        primary.fingerprint(),
        "stdout stays the command's output"
    );

    let out = quiet
        .cmd()
        .env("KEYFERRY_LOG", "keyferry=loud")
        .args(["keys", "fingerprint"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("KEYFERRY_LOG"),
        "{}",
        stderr_of(&out)
    );
}
