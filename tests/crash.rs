//! Crash consistency, by killing the real binary: each operation that
//! changes a node is started dozens of times and sent SIGKILL (TerminateProcess
//! on Windows) at a random moment within its measured duration. The next
//! keyferry command recovers from the journal; then every file must be its
//! old or its new version, the audit log must verify, and the log must say
//! exactly what happened (a change is on record exactly when its effect is
//! there; an interrupted archive clean is on record with the true count).
//!
//! The random delays come from a seed printed at the start
//! (`KEYFERRY_CRASH_SEED` replays a run); `KEYFERRY_CRASH_RUNS` sets the runs
//! per operation (default 30).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::node::{FAST_KDF, PASSWORD};
use serde_json::Value;

fn runs() -> usize {
    std::env::var("KEYFERRY_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

/// xorshift64*: enough to spread kill times; seeded so a run can be replayed.
struct Rng(u64);

impl Rng {
    fn new(label: &str) -> Self {
        let seed = std::env::var("KEYFERRY_CRASH_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{label}: KEYFERRY_CRASH_SEED={seed}");
        Self(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("keyferry")
}

fn keyferry(home: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env_remove("KEYFERRY_HOME")
        .arg("--home")
        .arg(home)
        .stdin(Stdio::null());
    c
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Copies a tree (files keep their permissions).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(from).unwrap().permissions().mode();
        fs::set_permissions(to, fs::Permissions::from_mode(mode)).unwrap();
    }
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The audit log's records (after verifying it).
fn records(home: &Path) -> Vec<Value> {
    ok(keyferry(home).args(["audit", "verify"]));
    let text = ok(keyferry(home).args(["audit", "show", "--json"]));
    serde_json::from_str::<Vec<Value>>(&text).unwrap()
}

fn actions(home: &Path) -> Vec<String> {
    records(home)
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect()
}

fn fingerprint(home: &Path) -> String {
    ok(keyferry(home).args(["keys", "fingerprint"]))
        .trim()
        .to_owned()
}

/// After recovery nothing of keyferry's machinery may be left behind: no
/// journal, no staged file anywhere in the fixture.
fn assert_no_leftovers(home: &Path) {
    assert!(
        !home.join("journal.json").exists(),
        "journal left in {}",
        home.display()
    );
    fn staged_files(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                staged_files(&entry.path(), found);
            } else if entry
                .file_name()
                .to_string_lossy()
                .starts_with(".keyferry-")
            {
                found.push(entry.path());
            }
        }
    }
    let mut found = Vec::new();
    staged_files(home.parent().unwrap(), &mut found);
    assert!(found.is_empty(), "staged files left behind: {found:?}");
}

/// One crash scenario: a fixture, the command, and the check of the state
/// that recovery leaves.
struct Scenario<'a> {
    name: &'a str,
    /// Builds the fixture in the given directory.
    setup: &'a dyn Fn(&Path),
    /// The command under test, in the fixture directory.
    command: &'a dyn Fn(&Path) -> Command,
    /// Checks the recovered state (`completed` when the process exited by
    /// itself) and names it, so the run can show that kills landed on both
    /// sides of the commit.
    check: &'a dyn Fn(&Path, bool) -> &'static str,
}

fn run(s: &Scenario<'_>) {
    let template = tempfile::tempdir().unwrap();
    (s.setup)(template.path());

    // Undisturbed runs measure how long the command takes (the median of
    // three, so neither a slow first start nor a lucky run sets the window).
    let mut times = Vec::new();
    for _ in 0..3 {
        let measure = tempfile::tempdir().unwrap();
        copy_tree(template.path(), measure.path());
        let start = Instant::now();
        let status = (s.command)(measure.path()).status().unwrap();
        times.push(start.elapsed());
        assert!(status.success(), "{}: the undisturbed run failed", s.name);
        assert_eq!((s.check)(measure.path(), true), "new");
    }
    times.sort();
    let took = times[1];

    let mut rng = Rng::new(s.name);
    let mut killed = 0;
    let mut states = std::collections::BTreeMap::new();
    for _ in 0..runs() {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(template.path(), dir.path());
        let mut child = (s.command)(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Up to 20% past the measured time, so that some kills land in the
        // last steps (the commit) and some runs finish.
        let delay = rng.below(took.as_micros() as u64 * 6 / 5 + 1);
        std::thread::sleep(Duration::from_micros(delay));
        let completed = matches!(child.try_wait(), Ok(Some(st)) if st.success());
        if !completed {
            let _ = child.kill();
            killed += 1;
        }
        let status = child.wait().unwrap();
        let completed = completed || status.success();
        *states.entry((s.check)(dir.path(), completed)).or_insert(0) += 1;
    }
    eprintln!(
        "{}: {killed} of {} runs killed (a run takes {took:?}); states after recovery: {states:?}",
        s.name,
        runs()
    );
}

fn home_of(dir: &Path) -> PathBuf {
    dir.join("home")
}

fn init_home(dir: &Path) {
    ok(keyferry(&home_of(dir)).arg("init"));
}

fn password_file(dir: &Path) -> PathBuf {
    let p = dir.join("password.txt");
    fs::write(&p, format!("{PASSWORD}\n")).unwrap();
    p
}

#[test]
fn kill_during_init() {
    run(&Scenario {
        name: "init",
        setup: &|_| {},
        command: &|dir| {
            let mut c = keyferry(&home_of(dir));
            c.arg("init");
            c
        },
        check: &|dir, completed| {
            let home = home_of(dir);
            // Any command recovers first.
            let _ = keyferry(&home).args(["keys", "list"]).output().unwrap();
            assert_no_leftovers(&home);
            if home.join("keyring.json").exists() {
                assert_eq!(actions(&home), ["init"]);
                "new"
            } else {
                assert!(!completed, "a finished init left no keyring");
                assert!(!home.join("audit.log").exists(), "a log without keyring");
                "old"
            }
        },
    });
}

#[test]
fn kill_during_export() {
    run(&Scenario {
        name: "export",
        setup: &|dir| {
            init_home(dir);
            password_file(dir);
        },
        command: &|dir| {
            let mut c = keyferry(&home_of(dir));
            c.arg("export")
                .arg("-n")
                .arg(dir.join("keys.exp"))
                .args(FAST_KDF)
                .arg("--password-file")
                .arg(dir.join("password.txt"));
            c
        },
        check: &|dir, completed| {
            let home = home_of(dir);
            let acts = actions(&home);
            assert_no_leftovers(&home);
            let bundle = dir.join("keys.exp");
            let on_record = acts == ["init", "export"];
            assert!(on_record || acts == ["init"], "{acts:?}");
            assert_eq!(
                bundle.exists(),
                on_record,
                "a bundle exists exactly when its export is on record"
            );
            assert!(!completed || on_record);
            if on_record {
                "new"
            } else {
                "old"
            }
        },
    });
}

#[test]
fn kill_during_import() {
    run(&Scenario {
        name: "import",
        setup: &|dir| {
            let source = dir.join("source");
            ok(keyferry(&source).arg("init"));
            ok(keyferry(&source)
                .arg("export")
                .arg("-n")
                .arg(dir.join("keys.exp"))
                .args(FAST_KDF)
                .arg("--password-file")
                .arg(password_file(dir)));
            init_home(dir);
            let before = fingerprint(&home_of(dir));
            let after = fingerprint(&source);
            fs::write(dir.join("fingerprints"), format!("{before}\n{after}\n")).unwrap();
        },
        command: &|dir| {
            let mut c = keyferry(&home_of(dir));
            c.arg("import")
                .arg("-n")
                .arg(dir.join("keys.exp"))
                .arg("--password-file")
                .arg(dir.join("password.txt"))
                .arg("--replace-keys");
            c
        },
        check: &|dir, completed| {
            let home = home_of(dir);
            let acts = actions(&home);
            assert_no_leftovers(&home);
            let expected = fs::read_to_string(dir.join("fingerprints")).unwrap();
            let (before, after) = expected.trim().split_once('\n').unwrap();
            let now = fingerprint(&home);
            if acts == ["init", "import"] {
                assert_eq!(now, after);
                "new"
            } else {
                assert_eq!(acts, ["init"]);
                assert_eq!(now, before);
                assert!(!completed);
                "old"
            }
        },
    });
}

fn ha_init_cmd(dir: &Path, secondary: &str) -> Command {
    let mut c = keyferry(&home_of(dir));
    // The test pair's description with another secondary.
    c.args(&common::node::HA_INIT[..6])
        .args(["--secondary", secondary, "--force"]);
    c
}

#[test]
fn kill_during_ha_init() {
    run(&Scenario {
        name: "ha init",
        setup: &|dir| {
            init_home(dir);
            ok(&mut ha_init_cmd(dir, "10.0.0.2"));
            let old = fs::read(home_of(dir).join("ha.toml")).unwrap();
            // The new version, made once in a scratch copy.
            let scratch = tempfile::tempdir().unwrap();
            copy_tree(dir, scratch.path());
            ok(&mut ha_init_cmd(scratch.path(), "10.0.0.3"));
            let new = fs::read(home_of(scratch.path()).join("ha.toml")).unwrap();
            assert_ne!(old, new);
            fs::write(dir.join("old.toml"), old).unwrap();
            fs::write(dir.join("new.toml"), new).unwrap();
        },
        command: &|dir| ha_init_cmd(dir, "10.0.0.3"),
        check: &|dir, completed| {
            let home = home_of(dir);
            let acts = actions(&home);
            assert_no_leftovers(&home);
            let now = fs::read(home.join("ha.toml")).unwrap();
            if acts == ["init", "ha-init", "ha-init"] {
                assert_eq!(now, fs::read(dir.join("new.toml")).unwrap());
                "new"
            } else {
                assert_eq!(acts, ["init", "ha-init"]);
                assert_eq!(now, fs::read(dir.join("old.toml")).unwrap());
                assert!(!completed);
                "old"
            }
        },
    });
}

fn hba_cmd(dir: &Path) -> Command {
    let mut c = keyferry(&home_of(dir));
    c.args(["hba", "ensure", "--peer", "10.0.0.2", "--offline", "--file"])
        .arg(dir.join("pg_hba.conf"));
    c
}

#[test]
fn kill_during_hba_ensure() {
    run(&Scenario {
        name: "hba ensure",
        setup: &|dir| {
            init_home(dir);
            let old = b"# TYPE DATABASE USER ADDRESS METHOD\nlocal all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n";
            fs::write(dir.join("pg_hba.conf"), old).unwrap();
            let scratch = tempfile::tempdir().unwrap();
            copy_tree(dir, scratch.path());
            ok(&mut hba_cmd(scratch.path()));
            let new = fs::read(scratch.path().join("pg_hba.conf")).unwrap();
            assert_ne!(&new[..], &old[..]);
            fs::write(dir.join("old.conf"), old).unwrap();
            fs::write(dir.join("new.conf"), new).unwrap();
        },
        command: &|dir| hba_cmd(dir),
        check: &|dir, completed| {
            let home = home_of(dir);
            let acts = actions(&home);
            assert_no_leftovers(&home);
            let now = fs::read(dir.join("pg_hba.conf")).unwrap();
            if acts == ["init", "hba-ensure"] {
                assert_eq!(now, fs::read(dir.join("new.conf")).unwrap());
                "new"
            } else {
                assert_eq!(acts, ["init"]);
                assert_eq!(now, fs::read(dir.join("old.conf")).unwrap());
                assert!(!completed);
                "old"
            }
        },
    });
}

const WAL_FILES: usize = 300;

fn wal_name(i: usize) -> String {
    format!("00000001000000{:02X}000000{:02X}", i / 256, i % 256)
}

#[test]
fn kill_during_archive_clean() {
    run(&Scenario {
        name: "archive clean",
        setup: &|dir| {
            init_home(dir);
            fs::create_dir(dir.join("archive")).unwrap();
            for i in 0..WAL_FILES {
                fs::write(dir.join("archive").join(wal_name(i)), [7u8; 512]).unwrap();
            }
            fs::write(dir.join("archive").join("README"), b"keep me").unwrap();
        },
        command: &|dir| {
            let mut c = keyferry(&home_of(dir));
            c.args(["ha", "archive", "clean", "--dir"])
                .arg(dir.join("archive"));
            c
        },
        check: &|dir, completed| {
            let home = home_of(dir);
            let recs = records(&home);
            assert_no_leftovers(&home);
            let left = (0..WAL_FILES)
                .filter(|i| dir.join("archive").join(wal_name(*i)).exists())
                .count();
            let removed = WAL_FILES - left;
            assert!(dir.join("archive").join("README").exists());
            let clean: Vec<&Value> = recs
                .iter()
                .filter(|r| r["action"] == "ha-archive-clean")
                .collect();
            let outcomes: Vec<&str> = clean
                .iter()
                .map(|r| r["details"]["outcome"].as_str().unwrap())
                .collect();
            match outcomes.as_slice() {
                [] => {
                    assert_eq!(removed, 0, "files removed with nothing on record");
                    "old"
                }
                ["started", last] => {
                    assert!(*last == "done" || *last == "interrupted", "{outcomes:?}");
                    assert_eq!(
                        clean[1]["details"]["removed"].as_u64(),
                        Some(removed as u64),
                        "the record counts what was removed"
                    );
                    assert!(!completed || *last == "done");
                    match (*last, removed) {
                        ("done", _) => "new",
                        (_, 0) => "interrupted before removing",
                        (_, n) if n == WAL_FILES => "interrupted after removing",
                        _ => "interrupted while removing",
                    }
                }
                other => panic!("unexpected records {other:?}"),
            }
        },
    });
}

/// `(id, status, has material)` of every key and the primary, from the
/// keystore file itself.
fn key_states(home: &Path) -> (u64, Vec<(u64, String, bool)>) {
    let doc: Value = serde_json::from_slice(&fs::read(home.join("keyring.json")).unwrap()).unwrap();
    let keys = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_u64().unwrap(),
                k["status"].as_str().unwrap().to_owned(),
                k.get("material").is_some(),
            )
        })
        .collect();
    (doc["primary"].as_u64().unwrap(), keys)
}

fn ks(id: u64, status: &str, material: bool) -> (u64, String, bool) {
    (id, status.to_owned(), material)
}

#[test]
fn kill_during_rotate() {
    run(&Scenario {
        name: "rotate",
        setup: &init_home,
        command: &|dir| {
            let mut c = keyferry(&home_of(dir));
            c.arg("rotate");
            c
        },
        check: &|dir, completed| {
            let home = home_of(dir);
            let acts = actions(&home);
            assert_no_leftovers(&home);
            let state = key_states(&home);
            if acts == ["init", "rotate"] {
                assert_eq!(
                    state,
                    (2, vec![ks(1, "enabled", true), ks(2, "enabled", true)])
                );
                "new"
            } else {
                assert_eq!(acts, ["init"]);
                assert_eq!(state, (1, vec![ks(1, "enabled", true)]));
                assert!(!completed);
                "old"
            }
        },
    });
}

#[test]
fn kill_during_promote() {
    run(&Scenario {
        name: "promote",
        setup: &|dir| {
            init_home(dir);
            ok(keyferry(&home_of(dir)).args(["rotate", "--stage"]));
        },
        command: &|dir| {
            let mut c = keyferry(&home_of(dir));
            c.args(["promote", "2"]);
            c
        },
        check: &|dir, completed| {
            let home = home_of(dir);
            let acts = actions(&home);
            assert_no_leftovers(&home);
            let (primary, keys) = key_states(&home);
            assert_eq!(keys, [ks(1, "enabled", true), ks(2, "enabled", true)]);
            if acts == ["init", "rotate", "promote"] {
                assert_eq!(primary, 2);
                "new"
            } else {
                assert_eq!(acts, ["init", "rotate"]);
                assert_eq!(primary, 1);
                assert!(!completed);
                "old"
            }
        },
    });
}

/// Keystore backups in the home that still hold key 1's material.
fn backups_holding_key_1(home: &Path) -> usize {
    fs::read_dir(home.join("backups"))
        .unwrap()
        .filter(|e| {
            let bytes = fs::read(e.as_ref().unwrap().path()).unwrap();
            let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            doc["keys"].as_array().is_some_and(|ks| {
                ks.iter()
                    .any(|k| k["id"] == 1 && k.get("material").is_some())
            })
        })
        .count()
}

#[test]
fn kill_during_destroy() {
    run(&Scenario {
        name: "destroy",
        setup: &|dir| {
            init_home(dir);
            ok(keyferry(&home_of(dir)).arg("rotate"));
            ok(keyferry(&home_of(dir)).args(["disable", "1"]));
        },
        command: &|dir| {
            let mut c = keyferry(&home_of(dir));
            c.args(["destroy", "1", "--yes"]);
            c
        },
        check: &|dir, completed| {
            let home = home_of(dir);
            let recs = records(&home);
            assert_no_leftovers(&home);
            let (primary, keys) = key_states(&home);
            assert_eq!(primary, 2);
            let outcomes: Vec<&str> = recs
                .iter()
                .filter(|r| r["action"] == "destroy")
                .map(|r| r["details"]["outcome"].as_str().unwrap())
                .collect();
            match outcomes.as_slice() {
                [] => {
                    assert_eq!(keys, [ks(1, "disabled", true), ks(2, "enabled", true)]);
                    assert!(!completed);
                    "old"
                }
                ["started", last] => {
                    assert_eq!(keys, [ks(1, "destroyed", false), ks(2, "enabled", true)]);
                    if *last == "done" {
                        assert_eq!(backups_holding_key_1(&home), 0);
                        "new"
                    } else {
                        assert_eq!(*last, "interrupted");
                        assert!(!completed);
                        if backups_holding_key_1(&home) == 0 {
                            return "interrupted after the scrub";
                        }
                        // Running destroy again finishes the scrub.
                        ok(keyferry(&home).args(["destroy", "1", "--yes"]));
                        assert_eq!(backups_holding_key_1(&home), 0);
                        records(&home);
                        "interrupted, finished by a second destroy"
                    }
                }
                other => panic!("unexpected records {other:?}"),
            }
        },
    });
}
