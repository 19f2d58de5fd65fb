//! The HA commands through the real binary, without a PostgreSQL server:
//! `ha init` / `ha show`, `hba ensure|remove|show` on real files, and
//! `ha archive clean`.
#![cfg(unix)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

const SAMPLE: &[u8] = include_bytes!("vectors/hba/pg_hba.conf.sample.pg15");
const CRLF: &[u8] = include_bytes!("vectors/hba/crlf.conf");
const INCLUDES: &[u8] = include_bytes!("vectors/hba/includes.conf");
const NO_FINAL_NEWLINE: &[u8] = include_bytes!("vectors/hba/no-final-newline.conf");
const ODD_SPACING: &[u8] = include_bytes!("vectors/hba/odd-spacing.conf");

fn keyferry(home: &Path) -> Command {
    let mut c = Command::cargo_bin("keyferry").unwrap();
    c.arg("--home").arg(home).env_remove("KEYFERRY_HOME");
    c
}

fn stdout_of(c: &mut Command) -> String {
    let out = c.assert().success().get_output().stdout.clone();
    String::from_utf8(out).unwrap()
}

fn json_of(c: &mut Command) -> serde_json::Value {
    serde_json::from_str(&stdout_of(c)).unwrap()
}

fn init_args<'a>(primary: &'a str, secondary: &'a str) -> Vec<&'a str> {
    vec![
        "ha",
        "init",
        "--node",
        "pam-b",
        "--primary",
        primary,
        "--secondary",
        secondary,
    ]
}

fn audit_actions(home: &Path) -> Vec<String> {
    let text = fs::read_to_string(home.join("audit.log")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["action"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn backups(home: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(home.join("backups"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn ha_init_refuses_addresses_that_cannot_stand_in_pg_hba_conf() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    // (address, words the refusal must contain)
    let cases = [
        ("localhost", "host names"),
        ("pam-a.example.com", "host names"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("fe80::1%eth0", "zone"),
        ("10.0.0.1/32", "/prefix"),
        ("::ffff:10.0.0.1", "IPv4"),
        ("[2001:db8::1]", "brackets"),
        ("10.0.0.1:5432", ":port"),
        ("10.0.0.300", "not a valid"),
        ("", "no address"),
    ];
    for (bad, why) in cases {
        for flag_first in [true, false] {
            let (primary, secondary) = if flag_first {
                (bad, "10.0.0.2")
            } else {
                ("10.0.0.1", bad)
            };
            let out = keyferry(&home)
                .args(init_args(primary, secondary))
                .assert()
                .code(2)
                .get_output()
                .clone();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let flag = if flag_first {
                "--primary"
            } else {
                "--secondary"
            };
            assert!(
                stderr.contains(why) && stderr.contains(flag),
                "{bad:?}: {stderr}"
            );
        }
    }
    assert!(
        !home.join("ha.toml").exists(),
        "nothing written on a refusal"
    );
    // Accepted: IPv4 and IPv6, with pasted blanks.
    keyferry(&home)
        .args(init_args(" 10.0.0.1 ", "2001:db8::2"))
        .assert()
        .success();
    let shown = json_of(keyferry(&home).args(["ha", "show", "--json"]));
    assert_eq!(shown["config"]["primary"], "10.0.0.1");
    assert_eq!(shown["config"]["secondary"], "2001:db8::2");
}

#[test]
fn ha_init_writes_an_owner_only_file_refuses_to_overwrite_and_audits() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    keyferry(&home).arg("init").assert().success();
    let out = keyferry(&home)
        .args(init_args("10.0.0.1", "10.0.0.2"))
        .args([
            "--pg-port",
            "5433",
            "--web-port",
            "6501",
            "--pg-bin",
            "/opt/pg/bin",
        ])
        .args([
            "--pg-data",
            "/srv/pg/data",
            "--archive-dir",
            "/srv/pg/archive",
        ])
        .args([
            "--appsettings",
            "/opt/pam/appsettings.json",
            "--replication-user",
            "streamer",
        ])
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not audited"));
    let path = home.join("ha.toml");
    let first = fs::read(&path).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = stdout_of(keyferry(&home).args(["ha", "show"]));
    for expected in [
        "node = \"pam-b\"",
        "pg_port = 5433",
        "web_port = 6501",
        "replication_user = \"streamer\"",
        "archive_dir = \"/srv/pg/archive\"",
        "appsettings = \"/opt/pam/appsettings.json\"",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }

    // A second init is refused and changes nothing.
    keyferry(&home)
        .args(init_args("10.0.0.1", "10.0.0.3"))
        .assert()
        .code(1)
        .stderr(predicates::str::contains("--force"));
    assert_eq!(fs::read(&path).unwrap(), first);

    // --force replaces it and keeps the old one.
    keyferry(&home)
        .args(init_args("10.0.0.1", "10.0.0.3"))
        .arg("--force")
        .assert()
        .success();
    let kept = backups(&home)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ha.toml")
        })
        .collect::<Vec<_>>();
    assert_eq!(kept.len(), 1);
    assert_eq!(fs::read(&kept[0]).unwrap(), first);
    assert_eq!(audit_actions(&home), ["init", "ha-init", "ha-init"]);
    keyferry(&home).args(["audit", "verify"]).assert().success();

    // A relative path or equal ports are refused with the field named.
    keyferry(&home)
        .args(init_args("10.0.0.1", "10.0.0.3"))
        .args(["--force", "--pg-data", "relative/dir"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("pg_data"));
}

#[test]
fn ha_init_without_a_keyring_writes_unaudited_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    keyferry(&home)
        .args(init_args("10.0.0.1", "10.0.0.2"))
        .assert()
        .success()
        .stderr(predicates::str::contains("not audited"));
    assert!(home.join("ha.toml").exists());
    assert!(!home.join("audit.log").exists());
}

/// A pg_hba.conf owned like the server's: by `postgres` when the tests run
/// as root and that user exists, mode 0640.
fn server_like_file(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, u32, u32) {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    if let Some((uid, gid)) = postgres_ids() {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    }
    let m = fs::metadata(&path).unwrap();
    (path, m.uid(), m.gid())
}

fn postgres_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = std::process::Command::new("id")
            .args([flag, "postgres"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    let root = std::process::Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        return None;
    }
    Some((id("-u")?, id("-g")?))
}

fn assert_owner_and_mode(path: &Path, uid: u32, gid: u32) {
    let m = fs::metadata(path).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (uid, gid),
        "owner of {}",
        path.display()
    );
    assert_eq!(
        m.permissions().mode() & 0o7777,
        0o640,
        "mode of {}",
        path.display()
    );
}

#[test]
fn hba_ensure_and_remove_keep_every_other_byte_the_owner_and_the_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    keyferry(&home).arg("init").assert().success();
    // An empty socket directory: no server answers, deterministically.
    let no_server = tmp.path().join("no-server");
    fs::create_dir(&no_server).unwrap();
    let vectors: [(&str, &[u8]); 5] = [
        ("sample", SAMPLE),
        ("crlf", CRLF),
        ("includes", INCLUDES),
        ("no-final-newline", NO_FINAL_NEWLINE),
        ("odd-spacing", ODD_SPACING),
    ];
    let mut expected_actions = vec!["init".to_owned()];
    for (name, original) in vectors {
        let (file, uid, gid) = server_like_file(tmp.path(), &format!("{name}.conf"), original);
        let hba = |verb: &str, peer: &str, extra: &[&str]| {
            let mut c = keyferry(&home);
            c.args(["hba", verb, "--peer", peer, "--file"])
                .arg(&file)
                .arg("--pg-socket-dir")
                .arg(&no_server)
                .args(["--pg-port", "5999"])
                .args(extra);
            c
        };
        let conf_name = format!("{name}.conf");
        let conf_backups = || {
            backups(&home)
                .into_iter()
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&conf_name)
                })
                .collect::<Vec<_>>()
        };
        let backups_before = conf_backups().len();
        let report = json_of(&mut hba("ensure", "10.0.0.2", &["--json"]));
        assert_eq!(report["changed"], true, "{name}");
        assert_eq!(report["server"]["outcome"], "not_running", "{name}");
        let after_v4 = fs::read(&file).unwrap();
        assert!(
            after_v4.starts_with(original),
            "{name}: the original bytes come first"
        );
        let added = String::from_utf8_lossy(&after_v4[original.len()..]).into_owned();
        assert!(
            added.contains("host    replication     repuser         10.0.0.2/32"),
            "{name}: {added}"
        );
        assert!(added.contains("scram-sha-256"), "{name}");
        assert_owner_and_mode(&file, uid, gid);
        let made = conf_backups();
        assert_eq!(made.len(), backups_before + 1, "{name}: one backup");
        let newest = made
            .iter()
            .max_by_key(|p| fs::metadata(p).unwrap().modified().unwrap())
            .unwrap();
        assert_eq!(
            fs::read(newest).unwrap(),
            original,
            "{name}: the backup is the original"
        );

        // Twice: no change, no backup, no audit record.
        let again = json_of(&mut hba("ensure", "10.0.0.2", &["--json"]));
        assert_eq!(again["changed"], false, "{name}");
        assert_eq!(fs::read(&file).unwrap(), after_v4);
        assert_eq!(conf_backups().len(), backups_before + 1);

        // IPv6 with md5; then both removed, in the other order.
        hba("ensure", "2001:db8::2", &["--method", "md5"])
            .assert()
            .success();
        let both = fs::read(&file).unwrap();
        assert!(
            String::from_utf8_lossy(&both).contains("2001:db8::2/128"),
            "{name}"
        );
        hba("remove", "10.0.0.2", &[]).assert().success();
        hba("remove", "2001:db8::2", &[]).assert().success();
        assert_eq!(
            fs::read(&file).unwrap(),
            original,
            "{name}: byte-identical after remove"
        );
        assert_owner_and_mode(&file, uid, gid);
        let no_op = json_of(&mut hba("remove", "2001:db8::2", &["--json"]));
        assert_eq!(no_op["changed"], false);
        expected_actions
            .extend(["hba-ensure", "hba-ensure", "hba-remove", "hba-remove"].map(String::from));
    }
    assert_eq!(audit_actions(&home), expected_actions);
    keyferry(&home).args(["audit", "verify"]).assert().success();
}

#[test]
fn hba_failures_leave_the_file_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    keyferry(&home).arg("init").assert().success();
    let log_before = fs::read(home.join("audit.log")).unwrap();

    // Broken markers: refused, untouched.
    let broken =
        b"local all all peer\n# BEGIN keyferry peer 10.0.0.2\nhost all all 10.0.0.2/32 md5\n";
    let (file, _, _) = server_like_file(tmp.path(), "broken.conf", broken);
    keyferry(&home)
        .args(["hba", "ensure", "--peer", "10.0.0.2", "--offline", "--file"])
        .arg(&file)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("line 2"));
    assert_eq!(fs::read(&file).unwrap(), broken);

    // A data directory whose postmaster.pid says a server runs, but nothing
    // answers: refused rather than written unchecked.
    let data = tmp.path().join("data");
    fs::create_dir(&data).unwrap();
    let (file, _, _) = server_like_file(&data, "pg_hba.conf", SAMPLE);
    let empty = tmp.path().join("empty-sockets");
    fs::create_dir(&empty).unwrap();
    fs::write(
        data.join("postmaster.pid"),
        format!(
            "12345\n{}\n1764586000\n5999\n{}\n\n",
            data.display(),
            empty.display()
        ),
    )
    .unwrap();
    keyferry(&home)
        .args(["hba", "ensure", "--peer", "10.0.0.2", "--file"])
        .arg(&file)
        .arg("--pg-socket-dir")
        .arg(&empty)
        .assert()
        .code(1)
        .stderr(
            predicates::str::contains("postmaster.pid").and(predicates::str::contains("--offline")),
        );
    assert_eq!(fs::read(&file).unwrap(), SAMPLE);
    // One that cannot be read is not guessed at.
    fs::write(data.join("postmaster.pid"), "12345\n").unwrap();
    keyferry(&home)
        .args(["hba", "ensure", "--peer", "10.0.0.2", "--file"])
        .arg(&file)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("postmaster.pid: it has 1 lines"));
    assert_eq!(fs::read(&file).unwrap(), SAMPLE);

    // A missing file, a bad role name, a bad method.
    keyferry(&home)
        .args(["hba", "ensure", "--peer", "10.0.0.2", "--offline", "--file"])
        .arg(tmp.path().join("missing.conf"))
        .assert()
        .code(2);
    keyferry(&home)
        .args([
            "hba",
            "ensure",
            "--peer",
            "10.0.0.2",
            "--offline",
            "--replication-user",
            "all",
            "--file",
        ])
        .arg(&file)
        .assert()
        .code(2);
    keyferry(&home)
        .args([
            "hba",
            "ensure",
            "--peer",
            "10.0.0.2",
            "--offline",
            "--method",
            "trust",
            "--file",
        ])
        .arg(&file)
        .assert()
        .code(2);
    assert_eq!(fs::read(&file).unwrap(), SAMPLE);
    assert_eq!(
        fs::read(home.join("audit.log")).unwrap(),
        log_before,
        "no audit record for a failure"
    );
}

#[test]
fn hba_show_lists_blocks_and_warns_about_other_matching_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    // Line 1 decides for every role; line 2 (an application's role and
    // database: it cannot decide a connection of keyferry's) is not
    // warned about (issue 20 item 6).
    let mut text =
        b"host all all 10.0.0.0/8 reject\nhost appdb appuser 10.0.0.0/8 scram-sha-256\n".to_vec();
    text.extend_from_slice(SAMPLE);
    let (file, _, _) = server_like_file(tmp.path(), "pg_hba.conf", &text);
    keyferry(&home)
        .args(["hba", "ensure", "--peer", "10.0.0.2", "--offline", "--file"])
        .arg(&file)
        .assert()
        .success()
        .stderr(
            predicates::str::contains("line 1 also matches 10.0.0.2")
                .and(predicates::str::contains("first"))
                .and(predicates::str::contains("line 2").not()),
        );
    let shown = json_of(
        keyferry(&home)
            .args(["hba", "show", "--json", "--file"])
            .arg(&file),
    );
    assert_eq!(shown["blocks"][0]["peer"], "10.0.0.2");
    assert_eq!(shown["blocks"][0]["current"], true);
    assert_eq!(shown["other_rules"][0]["rules"][0]["line"], 1);
    assert_eq!(shown["other_rules"][0]["rules"][0]["before_block"], true);
    keyferry(&home)
        .args(["hba", "show", "--file"])
        .arg(&file)
        .assert()
        .success()
        .stdout(predicates::str::contains("keyferry block for 10.0.0.2"));
}

#[test]
fn archive_clean_removes_wal_archive_files_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    keyferry(&home).arg("init").assert().success();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    let wal = [
        "000000010000000000000001",
        "000000010000000000000002",
        "000000010000000000000002.00000028.backup",
        "00000002.history",
        "000000010000000000000003.partial",
    ];
    for name in wal {
        fs::write(archive.join(name), vec![7u8; 1000]).unwrap();
    }
    let others = [
        "README",
        "00000001000000000000000a",
        "000000010000000000000004.gz",
        "000000010000000000000001.bak",
        "archive_status",
    ];
    for name in others {
        fs::write(archive.join(name), b"keep me").unwrap();
    }
    fs::create_dir(archive.join("000000010000000000000009")).unwrap();
    std::os::unix::fs::symlink(
        archive.join("000000010000000000000001"),
        archive.join("00000001000000000000000B"),
    )
    .unwrap();
    keyferry(&home)
        .args(common::node::HA_INIT)
        .arg("--archive-dir")
        .arg(&archive)
        .assert()
        .success();

    let dry = stdout_of(keyferry(&home).args(["ha", "archive", "clean", "--dry-run"]));
    assert!(
        dry.contains("5 WAL archive files (4.9 KiB) would be removed"),
        "{dry}"
    );
    assert!(archive.join(wal[0]).exists(), "a dry run removes nothing");
    assert_eq!(audit_actions(&home), ["init", "ha-init"]);

    let done = stdout_of(keyferry(&home).args(["ha", "archive", "clean"]));
    assert!(
        done.contains("removed 5 WAL archive files (4.9 KiB)"),
        "{done}"
    );
    assert!(done.contains("7 other entries kept"), "{done}");
    for name in wal {
        assert!(!archive.join(name).exists(), "{name} removed");
    }
    for name in others {
        assert_eq!(
            fs::read(archive.join(name)).unwrap(),
            b"keep me",
            "{name} kept"
        );
    }
    assert!(archive.join("000000010000000000000009").is_dir());
    assert!(fs::symlink_metadata(archive.join("00000001000000000000000B")).is_ok());
    // Removing cannot be undone: one record before (started), one after
    // (done, with the count).
    assert_eq!(
        audit_actions(&home),
        ["init", "ha-init", "ha-archive-clean", "ha-archive-clean"]
    );

    // Nothing left: nothing to do, no record.
    let again = stdout_of(keyferry(&home).args(["ha", "archive", "clean"]));
    assert!(again.contains("removed 0 WAL archive files"), "{again}");
    assert_eq!(audit_actions(&home).len(), 4);

    // A data directory's pg_wal is refused, even given with --dir.
    let data = tmp.path().join("data");
    fs::create_dir_all(data.join("pg_wal")).unwrap();
    fs::create_dir_all(data.join("global")).unwrap();
    fs::write(data.join("PG_VERSION"), "15\n").unwrap();
    fs::write(data.join("pg_wal").join(wal[0]), b"live WAL").unwrap();
    keyferry(&home)
        .args(["ha", "archive", "clean", "--dir"])
        .arg(data.join("pg_wal"))
        .assert()
        .code(1)
        .stderr(predicates::str::contains("data directory"));
    assert!(data.join("pg_wal").join(wal[0]).exists());
}

/// A removal that fails half-way cannot be undone: the log says it started,
/// then that it failed and how many files were removed before the failure.
#[cfg(target_os = "linux")]
#[test]
fn archive_clean_that_fails_half_way_is_on_record_with_its_count() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    keyferry(&home).arg("init").assert().success();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    let names: Vec<String> = (1..=6)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    for name in &names {
        fs::write(archive.join(name), [7u8; 100]).unwrap();
    }
    // An immutable file cannot be removed, even by root.
    let stuck = archive.join(&names[3]);
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&stuck)
        .status();
    if !immutable.is_ok_and(|s| s.success()) {
        eprintln!("SKIP: chattr +i is not available on this file system");
        return;
    }
    let out = keyferry(&home)
        .args(["ha", "archive", "clean", "--dir"])
        .arg(&archive)
        .output()
        .unwrap();
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&stuck)
        .status();
    assert_eq!(out.status.code(), Some(1));
    let left: Vec<&String> = names.iter().filter(|n| archive.join(n).exists()).collect();
    let removed = names.len() - left.len();
    assert!(removed < names.len() && left.contains(&&names[3]));
    keyferry(&home).args(["audit", "verify"]).assert().success();
    let records: Vec<serde_json::Value> =
        json_of(keyferry(&home).args(["audit", "show", "--json"]))
            .as_array()
            .unwrap()
            .clone();
    let clean: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["action"] == "ha-archive-clean")
        .collect();
    assert_eq!(clean.len(), 2);
    assert_eq!(clean[0]["details"]["outcome"], "started");
    assert_eq!(clean[1]["details"]["outcome"], "failed");
    assert_eq!(clean[1]["details"]["removed"], removed as u64);
}

/// A value typed on `ha init`'s command line that ha.toml cannot hold is a
/// usage error (exit 2) that names the option, and nothing is written.
#[test]
fn ha_init_bad_values_are_usage_errors_naming_the_option() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    keyferry(&home).arg("init").assert().success();
    let cases: [(&[&str], &str); 5] = [
        (&["--node", "a", "--pg-port", "0"], "--pg-port"),
        (&["--node", "a", "--secondary", "10.0.0.1"], "--secondary"),
        (&["--node", ""], "--node"),
        (&["--node", "a", "--web-port", "5432"], "--web-port"),
        (&["--node", "a", "--pg-data", "relative/dir"], "--pg-data"),
    ];
    for (args, option) in cases {
        let mut c = keyferry(&home);
        c.args(["ha", "init", "--primary", "10.0.0.1"]).args(args);
        if !args.contains(&"--secondary") {
            c.args(["--secondary", "10.0.0.2"]);
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(option), "{args:?}: {err}");
        assert!(!home.join("ha.toml").exists());
    }
}

/// A server's own WAL is never cleaned, however it is reached: a link to
/// pg_wal, a path through pg_wal/archive_status/.., or pg_wal moved
/// elsewhere (initdb --waldir) behind a link.
#[test]
fn archive_clean_never_touches_a_servers_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    keyferry(&home).arg("init").assert().success();
    let data = tmp.path().join("data");
    fs::create_dir_all(data.join("global")).unwrap();
    fs::write(data.join("PG_VERSION"), "15\n").unwrap();
    // pg_wal elsewhere, linked from the data directory.
    let waldir = tmp.path().join("waldir");
    fs::create_dir_all(waldir.join("archive_status")).unwrap();
    std::os::unix::fs::symlink(&waldir, data.join("pg_wal")).unwrap();
    let segment = "000000010000000000000001";
    fs::write(waldir.join(segment), b"live WAL").unwrap();
    let link = tmp.path().join("archive-link");
    std::os::unix::fs::symlink(data.join("pg_wal"), &link).unwrap();
    keyferry(&home)
        .args(common::node::HA_INIT)
        .arg("--pg-data")
        .arg(&data)
        .assert()
        .success();
    for dir in [
        link.clone(),
        data.join("pg_wal"),
        data.join("pg_wal").join("archive_status").join(".."),
        waldir.clone(),
    ] {
        let out = keyferry(&home)
            .args(["ha", "archive", "clean", "--all", "--force", "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", dir.display());
        assert!(err.contains("is not a WAL archive"), "{err}");
        assert_eq!(fs::read(waldir.join(segment)).unwrap(), b"live WAL");
    }
}

/// Hand-written lines equivalent to keyferry's two (issue 12 item 11): left
/// exactly as they are, unless `--adopt` moves them into keyferry's block.
#[test]
fn hba_ensure_leaves_equivalent_hand_written_lines_alone_unless_adopt() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    keyferry(&home).arg("init").assert().success();
    let original: &[u8] = b"# TYPE DATABASE USER ADDRESS METHOD\r\n\
        local   all   all   peer\r\n\
        host  replication  repuser  10.0.0.2/32  scram-sha-256   # vendor step 4\r\n\
        host  all  all  127.0.0.1/32  scram-sha-256\r\n\
        hostssl all all 10.0.0.2 255.255.255.255 scram-sha-256\r\n\
        # end\xe9";
    let (file, uid, gid) = server_like_file(tmp.path(), "pg_hba.conf", original);
    let ensure = |extra: &[&str]| {
        let mut c = keyferry(&home);
        c.args(["hba", "ensure", "--peer", "10.0.0.2", "--offline", "--file"])
            .arg(&file)
            .args(extra);
        c
    };
    let log_before = fs::read(home.join("audit.log")).unwrap();
    let out = stdout_of(&mut ensure(&[]));
    assert!(
        out.contains("already allowed by lines 3, 5; nothing changed"),
        "{out}"
    );
    assert!(out.contains("line 5: hostssl all all 10.0.0.2"), "{out}");
    assert_eq!(fs::read(&file).unwrap(), original, "byte for byte");
    assert!(backups(&home).is_empty(), "no backup");
    assert_eq!(fs::read(home.join("audit.log")).unwrap(), log_before);
    let report = json_of(&mut ensure(&["--json"]));
    assert_eq!(report["changed"], false);
    assert_eq!(report["equivalent_lines"][0]["line"], 3);
    assert_eq!(report["equivalent_lines"][1]["line"], 5);

    // --adopt: the block takes the first line's place, the second goes,
    // every other byte stays.
    let out = stdout_of(&mut ensure(&["--adopt"]));
    assert!(out.contains("moved hand-written lines 3, 5"), "{out}");
    let mut expected: Vec<u8> =
        b"# TYPE DATABASE USER ADDRESS METHOD\r\nlocal   all   all   peer\r\n".to_vec();
    expected.extend_from_slice(
        b"# BEGIN keyferry peer 10.0.0.2\r\n\
        # Managed by keyferry (keyferry hba ensure / keyferry hba remove); edits inside this block are overwritten.\r\n\
        host    replication     repuser         10.0.0.2/32             scram-sha-256\r\n\
        host    all             all             10.0.0.2/32             scram-sha-256\r\n\
        # END keyferry peer 10.0.0.2\r\n",
    );
    expected.extend_from_slice(b"host  all  all  127.0.0.1/32  scram-sha-256\r\n# end\xe9");
    assert_eq!(
        String::from_utf8_lossy(&fs::read(&file).unwrap()),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(fs::read(&file).unwrap(), expected);
    assert_owner_and_mode(&file, uid, gid);
    assert_eq!(audit_actions(&home), ["init", "hba-ensure"]);
    let again = json_of(&mut ensure(&["--json"]));
    assert_eq!(again["changed"], false, "the adopted block is ensure's own");
}

/// A symlinked pg_hba.conf (issue 12 item 9): the link's final target is
/// edited, the link stays, and the report says which file was edited.
#[test]
fn hba_ensure_edits_a_linked_files_target_and_keeps_the_link() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let etc = tmp.path().join("etc");
    fs::create_dir(&etc).unwrap();
    let (real, uid, gid) = server_like_file(&etc, "pg_hba.conf", SAMPLE);
    let link = tmp.path().join("pg_hba.conf");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let hba = |verb: &str, extra: &[&str]| {
        let mut c = keyferry(&home);
        c.args(["hba", verb, "--peer", "10.0.0.2", "--offline", "--file"])
            .arg(&link)
            .args(extra);
        c
    };
    let out = stdout_of(&mut hba("ensure", &[]));
    assert!(
        out.contains("through a symbolic link") && out.contains(&real.display().to_string()),
        "{out}"
    );
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), real);
    let written = fs::read(&real).unwrap();
    assert!(written.starts_with(SAMPLE) && written.len() > SAMPLE.len());
    assert_owner_and_mode(&real, uid, gid);
    let report = json_of(&mut hba("ensure", &["--json"]));
    assert_eq!(report["changed"], false);
    assert_eq!(report["file"], real.display().to_string());
    assert_eq!(report["link"], link.display().to_string());
    hba("remove", &[]).assert().success();
    assert_eq!(fs::read(&real).unwrap(), SAMPLE);
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn ha_connstr_prints_both_nodes_for_each_client_and_never_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    // No ha.toml: refused, naming the fix.
    keyferry(&home)
        .args(["ha", "connstr"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("keyferry ha init"));
    keyferry(&home)
        .args(init_args("10.0.0.1", "fd00::2"))
        .assert()
        .success();
    let out = stdout_of(keyferry(&home).args([
        "ha",
        "connstr",
        "--format",
        "npgsql",
        "--database",
        "pam",
        "--user",
        "pamapp",
    ]));
    assert_eq!(
        out,
        "Host=10.0.0.1,fd00::2;Port=5432;Database=pam;Username=pamapp;Target Session Attributes=primary\n"
    );
    let out = stdout_of(keyferry(&home).args(["ha", "connstr"]));
    assert_eq!(
        out,
        "host=10.0.0.1,fd00::2 port=5432,5432 target_session_attrs=read-write\n"
    );
    let out = stdout_of(keyferry(&home).args(["ha", "connstr", "--format", "jdbc"]));
    assert_eq!(
        out,
        "jdbc:postgresql://10.0.0.1:5432,[fd00::2]:5432/?targetServerType=primary\n"
    );
    for format in ["libpq", "uri", "npgsql", "jdbc"] {
        let out = stdout_of(keyferry(&home).args(["ha", "connstr", "--format", format]));
        assert!(!out.to_ascii_lowercase().contains("password"), "{out}");
    }
    keyferry(&home)
        .args(["ha", "connstr", "--format", "odbc"])
        .assert()
        .code(2);
}

#[test]
fn nodes_connect_without_a_dsn_needs_ha_toml() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    keyferry(&home).arg("init").assert().success();
    let before = fs::read(home.join("audit.log")).unwrap();
    keyferry(&home)
        .args(["nodes", "connect"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--dsn").and(predicate::str::contains("ha.toml")));
    assert_eq!(fs::read(home.join("audit.log")).unwrap(), before);
    assert!(!home.join("registry.json").exists());
    // --user and --database only shape the DSN built from ha.toml.
    keyferry(&home)
        .args([
            "nodes",
            "connect",
            "--dsn",
            "host=10.0.0.1 user=kf",
            "--user",
            "kf",
        ])
        .assert()
        .code(2);
}

/// Issue 23, finding 7: `hba ensure --file <any file> --pg-port 0` appended
/// keyferry's block to a password file, backed it up and exited 0 ("not
/// checked by PostgreSQL"). A file that does not read as a pg_hba.conf is
/// refused, and, with no server to check it, so is one whose name says it
/// is another file; `--force` overrides. Refused means byte for byte
/// untouched, no backup, no audit record.
#[test]
fn hba_ensure_refuses_a_file_that_is_not_a_pg_hba_conf() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    keyferry(&home).arg("init").assert().success();
    let home_before = common::node::snapshot(&home);
    let pgpass: &[u8] = b"10.0.0.1:5432:*:repuser:the replication password\n";
    let shadow: &[u8] = b"root:$6$abc$hash:19000:0:99999:7:::\n";
    let (pgpass_file, _, _) = server_like_file(tmp.path(), "pgpass", pgpass);
    let (shadow_file, _, _) = server_like_file(tmp.path(), "hba-shadow.conf", shadow);
    // Reads as a pg_hba.conf, but named as a password file.
    let (named, _, _) = server_like_file(tmp.path(), "repl.pgpass", SAMPLE);
    for (file, bytes, phrase) in [
        (&pgpass_file, pgpass, "does not read as a pg_hba.conf"),
        (&shadow_file, shadow, "does not read as a pg_hba.conf"),
        (&named, SAMPLE, "named like another file"),
    ] {
        for extra in [&["--pg-port", "0"][..], &["--offline"][..]] {
            let out = keyferry(&home)
                .args(["hba", "ensure", "--peer", "10.0.0.2", "--file"])
                .arg(file)
                .args(extra)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(err.contains(phrase) && err.contains("--force"), "{err}");
            assert!(!err.contains("replication password") && !err.contains("hash"));
            assert_eq!(fs::read(file).unwrap(), bytes);
            common::node::assert_same(&home_before, &common::node::snapshot(&home));
        }
    }
    // --force: the operator says it is one.
    keyferry(&home)
        .args([
            "hba",
            "ensure",
            "--peer",
            "10.0.0.2",
            "--offline",
            "--force",
            "--file",
        ])
        .arg(&named)
        .assert()
        .success();
    assert!(fs::read_to_string(&named).unwrap().contains("10.0.0.2/32"));
}

/// Issue 20 item 6: `hba ensure --peer` with an address that is neither
/// node of the pair in ha.toml (a typo lets a stranger in) is refused, the
/// file byte-identical, unless --force.
#[test]
fn hba_ensure_for_an_address_outside_the_pair_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    keyferry(&home).arg("init").assert().success();
    keyferry(&home)
        .args([
            "ha",
            "init",
            "--node",
            "a",
            "--primary",
            "10.0.0.1",
            "--secondary",
            "10.0.0.2",
        ])
        .assert()
        .success();
    let (file, _, _) = server_like_file(tmp.path(), "pg_hba.conf", SAMPLE);
    keyferry(&home)
        .args(["hba", "ensure", "--peer", "10.0.0.3", "--offline", "--file"])
        .arg(&file)
        .assert()
        .code(1)
        .stderr(
            predicates::str::contains("10.0.0.3 is neither node of the pair")
                .and(predicates::str::contains("--force")),
        );
    assert_eq!(fs::read(&file).unwrap(), SAMPLE);
    keyferry(&home)
        .args(["hba", "ensure", "--peer", "10.0.0.2", "--offline", "--file"])
        .arg(&file)
        .assert()
        .success();
    keyferry(&home)
        .args([
            "hba",
            "ensure",
            "--peer",
            "10.0.0.3",
            "--offline",
            "--force",
            "--file",
        ])
        .arg(&file)
        .assert()
        .success();
    assert!(String::from_utf8_lossy(&fs::read(&file).unwrap()).contains("10.0.0.3/32"));
}

/// `ha check`'s `boot_start` fact for the three service methods: what
/// starts the server at boot, and whether the start guard runs first. The
/// systemd answers come from a `systemctl` on PATH that prints what
/// `systemctl show` prints (no systemd runs here); the Debian layout is
/// this machine's own `/etc/postgresql`, read only, where it has one.
#[test]
fn ha_check_says_whether_the_boot_start_runs_the_guard() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let stubs = dir.path().join("stubs");
    fs::create_dir(&stubs).unwrap();
    let mut init = init_args("10.0.0.1", "10.0.0.2");
    let data_arg = data.display().to_string();
    init.extend(["--pg-data", &data_arg]);
    keyferry(&home).args(&init).assert().success();
    let toml = home.join("ha.toml");
    let original = fs::read_to_string(&toml).unwrap();
    let fact = |toml_text: &str, systemctl: Option<&str>| -> serde_json::Value {
        fs::write(&toml, toml_text).unwrap();
        let stub = stubs.join("systemctl");
        match systemctl {
            Some(script) => {
                fs::write(&stub, script).unwrap();
                fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
            }
            None => {
                let _ = fs::remove_file(&stub);
            }
        }
        let path = format!("{}:/usr/bin:/bin", stubs.display());
        let out = keyferry(&home)
            .args(["ha", "check", "--json", "--timeout-ms", "200"])
            .env("PATH", path)
            .env_remove("PGPASSFILE")
            .output()
            .unwrap();
        common::check_fact(&out.stdout, "boot_start")
    };
    let says = |f: &serde_json::Value, status: &str, words: &str| {
        assert_eq!(f["status"], status, "{f}");
        assert!(f["message"].as_str().unwrap().contains(words), "{f}");
    };

    // pg_ctl on a data directory no Debian cluster names.
    let f = fact(&original, None);
    says(
        &f,
        "ok",
        "nothing keyferry knows of starts this server at boot",
    );

    let systemd = original.replace(
        "method = \"pg_ctl\"",
        "method = \"systemd\"\nunit = \"postgresql@15-main\"",
    );
    assert_ne!(systemd, original, "[service] in {original}");
    let demoted = format!("demoted = true\n{systemd}");
    let show =
        |pre: &str| format!("#!/bin/sh\n[ \"$1\" = show ] || exit 2\necho 'ExecStartPre={pre}'\n");
    let unguarded = show("{ path=/usr/bin/pg_ctlcluster ; argv[]=/usr/bin/pg_ctlcluster 15-main start ; ignore_errors=no }");
    let guarded = show("{ path=/usr/local/bin/keyferry ; argv[]=/usr/local/bin/keyferry --home /var/lib/keyferry ha guard --password-file /etc/keyferry/repuser.pw ; ignore_errors=no }");
    let f = fact(&systemd, Some(&unguarded));
    says(&f, "warn", "`systemctl start postgresql@15-main` (at boot, or by anyone) starts the server, without the start guard");
    assert!(
        f["fix"].as_str().unwrap().contains("keyferry-guard.conf"),
        "{f}"
    );
    let f = fact(&demoted, Some(&unguarded));
    says(&f, "fail", "marked demoted");
    let f = fact(&demoted, Some(&guarded));
    says(
        &f,
        "ok",
        "runs `keyferry ha guard` before it starts the server",
    );
    let f = fact(
        &systemd,
        Some("#!/bin/sh\necho 'System has not been booted with systemd as init system (PID 1). Can'\\''t operate.' >&2\nexit 1\n"),
    );
    says(&f, "warn", "cannot tell what starts the server at boot: systemctl show postgresql@15-main: System has not been booted with systemd");
    let f = fact(&demoted, None);
    assert_eq!(f["status"], "warn", "{f}");
    // The check changed nothing.
    fs::write(&toml, &original).unwrap();

    // Debian's own cluster, where this machine has one that starts at boot.
    let Some((cluster, debian_data)) = debian_auto_cluster() else {
        eprintln!("skipped the Debian part: no /etc/postgresql/*/* cluster with start.conf auto");
        return;
    };
    let debian = original.replace(
        &format!("pg_data = \"{data_arg}\""),
        &format!("pg_data = \"{debian_data}\""),
    );
    assert_ne!(debian, original, "pg_data in {original}");
    let f = fact(&debian, Some(&unguarded));
    says(
        &f,
        "warn",
        &format!("Debian's postgresql service starts cluster {cluster} at boot"),
    );
    assert!(f["fix"].as_str().unwrap().contains("start.conf"), "{f}");
    let f = fact(&format!("demoted = true\n{debian}"), Some(&guarded));
    says(&f, "ok", "which runs `keyferry ha guard` first");
}

/// A Debian cluster (`VERSION/NAME`) that starts at boot, and its data
/// directory.
fn debian_auto_cluster() -> Option<(String, String)> {
    for version in fs::read_dir("/etc/postgresql").ok()?.flatten() {
        for cluster in fs::read_dir(version.path()).ok()?.flatten() {
            let dir = cluster.path();
            let start =
                fs::read_to_string(dir.join("start.conf")).unwrap_or_else(|_| "auto".into());
            let auto = start
                .lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .find(|l| !l.is_empty())
                .is_none_or(|w| w == "auto");
            let conf = fs::read_to_string(dir.join("postgresql.conf")).unwrap_or_default();
            let data = conf.lines().find_map(|l| {
                let v = l.trim().strip_prefix("data_directory")?;
                Some(v.split('\'').nth(1)?.to_owned())
            });
            if let (true, Some(data)) = (auto, data) {
                let name = format!(
                    "{}/{}",
                    version.file_name().to_string_lossy(),
                    cluster.file_name().to_string_lossy()
                );
                return Some((name, data));
            }
        }
    }
    None
}

/// `ha init --service`: how the server is started, in ha.toml; a Windows
/// service without paths needs its service manager (not here: a usage
/// error naming the way out). `--force` never lowers the pair's
/// generation nor clears this node's demoted mark.
#[test]
fn ha_init_takes_the_service_and_force_keeps_the_pairs_history() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    keyferry(&home)
        .args(init_args("10.0.0.1", "10.0.0.2"))
        .args(["--service", "systemd:postgresql@15-main"])
        .assert()
        .success();
    let text = stdout_of(keyferry(&home).args(["ha", "show"]));
    assert!(
        text.contains("[service]\nmethod = \"systemd\"\nunit = \"postgresql@15-main\""),
        "{text}"
    );
    let path = home.join("ha.toml");
    let before = fs::read(&path).unwrap();
    for (bad, says) in [
        ("sysv:postgresql", "is not a way to start the server"),
        ("systemd:", "names no systemd unit"),
        ("windows_service:a\\b", "cannot be a Windows service name"),
    ] {
        keyferry(&home)
            .args(init_args("10.0.0.1", "10.0.0.2"))
            .args(["--force", "--service", bad])
            .assert()
            .code(2)
            .stderr(predicates::str::contains(says));
    }
    keyferry(&home)
        .args(init_args("10.0.0.1", "10.0.0.2"))
        .args(["--force", "--service", "windows_service:postgresql-x64-15"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "exists only on Windows; give --pg-bin and --pg-data",
        ));
    assert_eq!(fs::read(&path).unwrap(), before, "refusals change nothing");

    // The pair moved on (a failover elsewhere, this node demoted); an
    // operator re-runs ha init --force with a typo fixed.
    let moved = String::from_utf8(before).unwrap().replacen(
        "version = 1\n",
        "version = 1\ngeneration = 7\ndemoted = true\n",
        1,
    );
    fs::write(&path, moved).unwrap();
    keyferry(&home)
        .args(init_args("10.0.0.1", "10.0.0.2"))
        .args([
            "--force",
            "--service",
            "windows_service:postgresql-x64-15",
            "--pg-bin",
            "/opt/pg/bin",
            "--pg-data",
            "/srv/pg/data",
        ])
        .assert()
        .success();
    let text = stdout_of(keyferry(&home).args(["ha", "show"]));
    for expected in [
        "generation = 7",
        "demoted = true",
        "method = \"windows_service\"\nname = \"postgresql-x64-15\"",
        "pg_data = \"/srv/pg/data\"",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
}
