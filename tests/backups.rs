//! Backups are bounded: each change prunes the backups of the files it
//! replaced to the home's limit, and `backups prune` brings an older home
//! down to it.

mod common;

use std::fs;

use common::node::Node;

fn count(node: &Node, prefix: &str) -> usize {
    fs::read_dir(node.home.join("backups"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(prefix)
            })
            .count()
        })
        .unwrap_or(0)
}

fn ha_init(node: &Node, secondary: &str) {
    node.cmd()
        .args(&common::node::HA_INIT[..6])
        .arg("--force")
        .args(["--secondary", secondary])
        .assert()
        .success();
}

#[test]
fn every_change_keeps_the_newest_backups_per_file() {
    let node = Node::initialised();
    fs::write(node.home.join("keyferry.toml"), "[backups]\nkeep = 3\n").unwrap();
    for i in 0..7 {
        ha_init(&node, &format!("10.0.0.{}", 2 + i % 2));
    }
    assert_eq!(count(&node, "ha.toml."), 3);
    node.cmd().args(["audit", "verify"]).assert().success();

    fs::write(node.home.join("keyferry.toml"), "[backups]\nkeep = 0\n").unwrap();
    node.cmd()
        .args(["ha", "init", "--node", "a", "--primary", "10.0.0.1"])
        .args(["--secondary", "10.0.0.9", "--force"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("keep must be at least 1"));
}

#[test]
fn prune_brings_an_old_home_down_to_the_limit() {
    let node = Node::initialised();
    let backups = node.home.join("backups");
    fs::create_dir_all(&backups).unwrap();
    for day in 1..=8 {
        fs::write(
            backups.join(format!("keyring.json.202611{day:02}T000000Z.bak")),
            b"old keys",
        )
        .unwrap();
    }
    fs::write(backups.join("notes.txt"), b"mine").unwrap();
    let out = node
        .cmd()
        .args(["backups", "prune", "--keep", "2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("6 old backups removed"), "{text}");
    assert_eq!(count(&node, "keyring.json."), 2);
    assert!(backups.join("keyring.json.20261108T000000Z.bak").exists());
    assert!(backups.join("keyring.json.20261107T000000Z.bak").exists());
    assert_eq!(fs::read(backups.join("notes.txt")).unwrap(), b"mine");
    let show = node
        .cmd()
        .args(["audit", "show", "--json"])
        .output()
        .unwrap();
    let records: Vec<serde_json::Value> = serde_json::from_slice(&show.stdout).unwrap();
    let prune: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["action"] == "backups-prune")
        .collect();
    assert_eq!(prune.len(), 2);
    assert_eq!(prune[1]["details"]["outcome"], "done");
    assert_eq!(prune[1]["details"]["removed"], 6);
    node.cmd().args(["audit", "verify"]).assert().success();
}

/// Issue 23, finding 8: when the keystore could not be written, backups of
/// it were left behind (copies of the keys for nothing). A failed change
/// leaves the home as it was, backups included.
#[cfg(target_os = "linux")]
#[test]
fn a_failed_keystore_write_leaves_no_backup_behind() {
    let node = Node::initialised();
    node.cmd().arg("rotate").assert().success();
    let before = common::node::snapshot(&node.home);
    let keystore = node.home.join("keyring.json");
    // Immutable even to root: the rename over it fails.
    let set = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&keystore)
        .status()
        .is_ok_and(|s| s.success());
    if !set {
        eprintln!("skipped: chattr +i is not available here");
        return;
    }
    let out = node.cmd().arg("rotate").output().unwrap();
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&keystore)
        .status();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::node::assert_same(&before, &common::node::snapshot(&node.home));
    assert_eq!(count(&node, "keyring.json"), 1, "the first rotate's only");
}
