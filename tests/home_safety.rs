//! The home against concurrent runs and other accounts: races that really
//! race, links that are really planted.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::node::{Node, PASSWORD};

fn bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("keyferry")
}

/// Several imports started together into a home that does not exist yet:
/// each either succeeds or is refused because another keyferry holds the
/// home, and the node ends with one valid audit chain.
#[test]
fn concurrent_imports_into_a_new_home_leave_one_valid_chain() {
    let primary = Node::initialised();
    let bundle = primary.path("keys.exp");
    primary.export(&bundle, &[]);
    let pw = primary.password_file(PASSWORD);
    for round in 0..5 {
        let home = primary.path(&format!("new-home-{round}"));
        let children: Vec<_> = (0..4)
            .map(|_| {
                Command::new(bin())
                    .arg("--home")
                    .arg(&home)
                    .arg("import")
                    .arg("-n")
                    .arg(&bundle)
                    .arg("--password-file")
                    .arg(&pw)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut succeeded = 0;
        for child in children {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                succeeded += 1;
            } else {
                assert!(
                    err.contains("another keyferry is working"),
                    "a failed racer must say why: {err}"
                );
            }
        }
        assert!(succeeded >= 1);
        let verify = Command::new(bin())
            .arg("--home")
            .arg(&home)
            .args(["audit", "show", "--json"])
            .output()
            .unwrap();
        assert!(verify.status.success());
        let records: Vec<serde_json::Value> = serde_json::from_slice(&verify.stdout).unwrap();
        assert_eq!(records.len(), succeeded, "one record per successful import");
        let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=succeeded as u64).collect::<Vec<_>>());
        Command::new(bin())
            .arg("--home")
            .arg(&home)
            .args(["audit", "verify"])
            .assert_success();
    }
    let _ = fs::remove_file(pw);
}

trait AssertSuccess {
    fn assert_success(&mut self);
}

impl AssertSuccess for Command {
    fn assert_success(&mut self) {
        let out = self.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[cfg(unix)]
fn refused_without_change(node: &Node, args: &[&str], phrase: &str) {
    let before = common::node::snapshot(node.dir.path());
    let out = node.cmd().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(phrase), "expected {phrase:?} in {err}");
    common::node::assert_same(&before, &common::node::snapshot(node.dir.path()));
}

/// A home, or a file in it, that another account can change is refused; a
/// link planted in place of keyferry's own files is never followed.
#[cfg(unix)]
#[test]
fn a_home_another_account_controls_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::initialised();
    node.password_file(PASSWORD);
    let export = ["export", "-n", "keys.exp", "--password-env", "KF_NONE"];

    fs::set_permissions(&node.home, fs::Permissions::from_mode(0o777)).unwrap();
    refused_without_change(&node, &export, "can be written by other accounts");
    fs::set_permissions(&node.home, fs::Permissions::from_mode(0o700)).unwrap();

    let keyring = node.home.join("keyring.json");
    fs::set_permissions(&keyring, fs::Permissions::from_mode(0o666)).unwrap();
    refused_without_change(&node, &export, "keyring.json can be written");
    fs::set_permissions(&keyring, fs::Permissions::from_mode(0o600)).unwrap();

    // Links planted where keyferry's files are: the targets stay untouched.
    let elsewhere = node.path("elsewhere");
    fs::write(&elsewhere, b"not keyferry's").unwrap();
    for name in ["audit.log", "keyferry.lock"] {
        let path = node.home.join(name);
        let saved = node.path("saved");
        if path.exists() {
            fs::rename(&path, &saved).unwrap();
        }
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        refused_without_change(&node, &export, "is a symbolic link");
        fs::remove_file(&path).unwrap();
        if saved.exists() {
            fs::rename(&saved, &path).unwrap();
        }
        assert_eq!(fs::read(&elsewhere).unwrap(), b"not keyferry's");
    }

    // Owned by another account (only root can hand a home away).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&node.home, Some(65534), None).unwrap();
        refused_without_change(&node, &["init"], "is owned by uid 65534");
        std::os::unix::fs::chown(&node.home, Some(0), None).unwrap();
    }
    node.cmd().args(["audit", "verify"]).assert().success();
}

/// A home on a full disk: staging the bundle's configuration fails, and the
/// message says so (not "the bundle's contents are invalid"), exit 1,
/// nothing changed. Uses a tiny tmpfs, which needs root.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_while_staging_is_reported_as_such() {
    let primary = Node::initialised();
    let app = primary.path("appsettings.json");
    fs::write(&app, vec![b'x'; 2 * 1024 * 1024]).unwrap();
    primary
        .cmd()
        .args(["ha", "init", "--node", "a", "--primary", "10.0.0.1"])
        .args(["--secondary", "10.0.0.2", "--appsettings"])
        .arg(&app)
        .assert()
        .success();
    let bundle = primary.path("keys.exp");
    primary.export(&bundle, &["--with-config"]);

    let small = primary.path("small");
    fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIP: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let home = small.join("home");
    let init = Command::new(bin())
        .arg("--home")
        .arg(&home)
        .arg("init")
        .output()
        .unwrap();
    assert!(init.status.success());
    let before = common::node::snapshot(&small);
    let out = Command::new(bin())
        .arg("--home")
        .arg(&home)
        .arg("import")
        .arg("-n")
        .arg(&bundle)
        .arg("--password-file")
        .arg(primary.password_file(PASSWORD))
        .args(["--replace-keys", "--accept-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot stage the bundle's configuration"),
        "{err}"
    );
    assert!(err.contains("No space left"), "{err}");
    assert!(!err.contains("contents are invalid"), "{err}");
    common::node::assert_same(&before, &common::node::snapshot(&small));
}

/// `import --delete` given a link deletes the bundle it points to, not only
/// the link, and says both.
#[cfg(unix)]
#[test]
fn delete_through_a_link_removes_the_bundle_itself() {
    let primary = Node::initialised();
    let real = primary.path("real.exp");
    primary.export(&real, &[]);
    let link = primary.path("link.exp");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let node = Node::empty();
    fs::create_dir_all(node.dir.path()).unwrap();
    let out = node.import_cmd(&link).arg("--delete").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!real.exists(), "the bundle itself is gone");
    assert!(fs::symlink_metadata(&link).is_err(), "and the link");
    assert!(
        text.contains(&format!("deleted {}", real.display())),
        "{text}"
    );
}

/// A command that only reads, run while another keyferry holds the home,
/// leaves that process's journal alone and still works (it does not take
/// a running change for an interrupted one).
#[test]
fn reading_beside_a_running_change_leaves_its_journal_alone() {
    let node = Node::initialised();
    // The other keyferry is a real process: a lock held by this test
    // process would stay held after its drop for as long as a child that
    // a parallel test is spawning still has the descriptor (between its
    // fork and its exec).
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg("exec 9>>\"$1\" && flock -x 9 && echo held && exec sleep 600")
        .arg("sh")
        .arg(node.home.join("keyferry.lock"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "held\n", "the lock holder did not start");
    let journal = node.home.join("journal.json");
    let text = "{\"format\":\"keyferry-journal\",\"version\":1,\"action\":\"import\",\
                \"started\":\"2026-12-01T00:00:00Z\",\"undo\":[],\"phase\":\"steps\"}\n";
    fs::write(&journal, text).unwrap();
    node.cmd().args(["keys", "list"]).assert().success();
    assert_eq!(fs::read_to_string(&journal).unwrap(), text);
    holder.kill().unwrap();
    holder.wait().unwrap();
    // Once that process is gone, the next command recovers and says so.
    node.cmd()
        .args(["keys", "list"])
        .assert()
        .success()
        .stderr(predicates::str::contains("note: an interrupted `import`"));
    assert!(!journal.exists());
}
