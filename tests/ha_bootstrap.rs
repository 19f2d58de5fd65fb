//! `keyferry ha bootstrap` against real PostgreSQL servers on two hosts: the
//! primary in network namespace `a` (10.213.0.1) with pgbench data, the
//! secondary in `b` (10.213.0.2) running a standalone server of its own, as
//! a freshly installed secondary does. keyferry runs on the secondary's
//! host, as root, and runs the server's programs as `postgres`.
//!
//! Each failure path must leave the secondary exactly as it was: the data
//! directory byte for byte (the server is stopped for those, so nothing
//! else writes), the directory beside it, and the server running again if
//! it ran. Kills are real `kill -9`s of keyferry at moments read from the
//! file system. Needs root, `ip netns` and PostgreSQL; skips otherwise
//! (fails with `KEYFERRY_REQUIRE_PG=1`).
#![cfg(unix)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{ADDR_A, ADDR_B};
use common::node::{assert_same, snapshot};
use common::pair::*;

#[test]
fn bootstrap_over_a_running_primary_needs_yes_keeps_the_old_data_and_streams() {
    let Some(pair) = Pair::new("bs", 10) else {
        return;
    };
    pair.secondary
        .connect()
        .batch_execute("CREATE TABLE only_on_the_old_secondary (x int); INSERT INTO only_on_the_old_secondary VALUES (7)")
        .unwrap();
    let conf_before = fs::read(pair.data().join("postgresql.conf")).unwrap();
    let hba_before = fs::read(pair.data().join("pg_hba.conf")).unwrap();

    // Without --yes and without a terminal: refused, nothing changed.
    let beside = pair.beside();
    let out = pair.bootstrap(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--yes"), "{}", text(&out));
    assert_eq!(pair.beside(), beside);
    assert!(pair.secondary.is_running());

    let out = pair.bootstrap(&["--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", text(&out));
    assert_is_replica(&pair);

    // The old data directory is kept, whole, with the removal command.
    let old = old_dirs(&pair);
    assert_eq!(old.len(), 1, "{:?}", pair.beside());
    assert!(said.contains(&old[0].display().to_string()), "{said}");
    assert!(said.contains("rm -rf -- "), "{said}");
    assert_eq!(
        fs::read(old[0].join("postgresql.conf")).unwrap(),
        conf_before
    );
    // The secondary keeps its own configuration, not the primary's.
    assert_eq!(
        fs::read(pair.data().join("postgresql.conf")).unwrap(),
        conf_before
    );
    assert_eq!(
        fs::read(pair.data().join("pg_hba.conf")).unwrap(),
        hba_before
    );

    // A row written on the primary appears on the replica.
    pair.primary
        .connect()
        .batch_execute(
            "CREATE TABLE after_bootstrap (x int); INSERT INTO after_bootstrap VALUES (42)",
        )
        .unwrap();
    wait_for("the row on the replica", Duration::from_secs(20), || {
        pair.secondary
            .connect()
            .query("SELECT x FROM after_bootstrap", &[])
            .is_ok_and(|r| r.len() == 1 && r[0].get::<_, i32>(0) == 42)
    });
    let rows = pair.replica_query("SELECT count(*) FROM pgbench_accounts");
    assert_eq!(rows[0].get::<_, i64>(0), 1_000_000);

    // The password is in the 0600 passfile and in no other file.
    let parent = pair.data().parent().unwrap();
    let mut holders = files_holding(parent, PASSWORD.as_bytes());
    holders.extend(files_holding(&pair.home, PASSWORD.as_bytes()));
    let passfile = parent.join("data.keyferry-replication.pgpass");
    assert_eq!(
        holders,
        vec![passfile.clone()],
        "files holding the password"
    );
    let meta = fs::metadata(&passfile).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        meta.uid(),
        fs::metadata(pair.data()).unwrap().uid(),
        "owned by the server's account"
    );
    let auto = fs::read_to_string(pair.data().join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("passfile="), "{auto}");

    // One audit record, and the log verifies.
    let log = fs::read_to_string(pair.home.join("audit.log")).unwrap();
    let records: Vec<&str> = log.lines().filter(|l| l.contains("ha-bootstrap")).collect();
    assert_eq!(records.len(), 1, "{log}");
    for field in ["bytes_copied", "system_identifier", "old_data", "timeline"] {
        assert!(records[0].contains(field), "{field} in {}", records[0]);
    }
    common::succeeded(&pair.keyferry(&["audit", "verify"]));

    // Again, over the replica: no --yes needed, with a slot this time.
    let out = pair.bootstrap(&["--slot", "pam_b"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_is_replica(&pair);
    let rows =
        pair.primary_sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'pam_b'");
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].get::<_, bool>(0),
        "the replica streams through its slot"
    );
    assert_eq!(old_dirs(&pair).len(), 2);
}

#[test]
fn over_a_stopped_older_data_directory_the_old_one_is_kept_byte_for_byte() {
    let Some(mut pair) = Pair::new("bo", 0) else {
        return;
    };
    pair.secondary.stop_clean();
    // The server's account made pg_ident.conf a link to a file only root
    // may read: keyferry (root) keeps the link, never copies through it.
    let secret = pair.tmp.path().join("root-only");
    fs::write(&secret, "root's secret\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let ident = pair.data().join("pg_ident.conf");
    fs::remove_file(&ident).unwrap();
    std::os::unix::fs::symlink(&secret, &ident).unwrap();
    let before: Snapshot = snapshot(pair.data());
    let out = pair.bootstrap(&["--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let old = old_dirs(&pair);
    assert_eq!(old.len(), 1);
    assert_same(&before, &snapshot(&old[0]));
    assert_is_replica(&pair);
    assert_eq!(
        fs::read_link(&ident).unwrap(),
        secret,
        "the link is kept as a link"
    );
    assert!(
        files_holding(pair.data(), b"root's secret").is_empty(),
        "no file of the new data directory holds the link's target"
    );
}

/// Failure paths, each with the server stopped (so the data directory can
/// be compared byte for byte) and then one with it running.
#[test]
fn each_failure_leaves_the_node_as_it_was() {
    let Some(mut pair) = Pair::new("bf", 10) else {
        return;
    };
    pair.secondary.stop_clean();
    let before = snapshot(pair.data());
    let beside = pair.beside();
    let home_before = snapshot(&pair.home);
    let unchanged = |pair: &Pair, what: &str| {
        assert_same(&before, &snapshot(pair.data()));
        assert_eq!(pair.beside(), beside, "{what}: beside the data directory");
        assert_same(&home_before, &snapshot(&pair.home));
    };

    // Wrong password: the preflight refuses (exit 8).
    let wrong = pair.tmp.path().join("wrong.pw");
    fs::write(&wrong, "not the password\n").unwrap();
    fs::set_permissions(&wrong, fs::Permissions::from_mode(0o600)).unwrap();
    let out = pair.keyferry(&[
        "ha",
        "bootstrap",
        "--yes",
        "--password-file",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    assert!(text(&out).contains("password"), "{}", text(&out));
    unchanged(&pair, "wrong password");

    // A primary that keeps no WAL for its replica, and no --slot: refused
    // before the copy (its start would need WAL the primary may remove).
    let keep_wal = |setting: &str| {
        pair.primary_sql(&format!("ALTER SYSTEM SET wal_keep_size = '{setting}'"));
        pair.primary_sql("SELECT pg_reload_conf()");
        wait_for("the reload", Duration::from_secs(10), || {
            pair.primary_sql("SHOW wal_keep_size")[0].get::<_, String>(0) == setting
        });
    };
    keep_wal("0");
    let out = pair.bootstrap(&["--yes"]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    assert!(
        text(&out).contains("`wal_retention` failed") && text(&out).contains("--slot NAME"),
        "{}",
        text(&out)
    );
    unchanged(&pair, "no WAL kept");
    keep_wal("128MB");

    // An active slot of that name: refused.
    let sock = pair.primary.socket_dir().to_str().unwrap().to_owned();
    pair.primary_sql("SELECT pg_create_physical_replication_slot('busy')");
    let receiver_dir = pair.tmp.path().join("receivewal");
    fs::create_dir(&receiver_dir).unwrap();
    std::os::unix::fs::chown(
        &receiver_dir,
        pair.primary.server_owner().map(|o| o.0),
        pair.primary.server_owner().map(|o| o.1),
    )
    .unwrap();
    let mut receiver = Command::new("ip");
    receiver.args(["netns", "exec", &pair.ns.a]);
    if pair.primary.server_owner().is_some() {
        receiver.args(["runuser", "-u", "postgres", "--"]);
    }
    let mut receiver = receiver
        .arg(pair.primary.bin_dir().join("pg_receivewal"))
        .args([
            "-D",
            receiver_dir.to_str().unwrap(),
            "-S",
            "busy",
            "-h",
            &sock,
            "-p",
            "5432",
            "-U",
            "postgres",
            "--no-loop",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the slot to be active", Duration::from_secs(10), || {
        pair.primary_sql("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'busy' AND active")
            .len()
            == 1
    });
    let out = pair.bootstrap(&["--yes", "--slot", "busy"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("active"), "{}", text(&out));
    unchanged(&pair, "active slot");
    kill9(&mut receiver);

    // Not enough disk: the data directory's parent on a small tmpfs.
    // (Here a second node whose pg_data sits on a 20 MiB tmpfs.)
    let small = pair.tmp.path().join("small");
    fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=20m",
            "tmpfs",
            small.to_str().unwrap(),
        ])
        .status()
        .unwrap()
        .success();
    if mounted {
        let home2 = pair.tmp.path().join("home-small");
        let data2 = small.join("main");
        let run2 = |args: &[&str]| {
            Pair::keyferry_cmd(&pair.ns.b, &home2, args)
                .output()
                .unwrap()
        };
        pair.ha_init(&pair.ns.b, &home2, "small", &data2);
        let out = run2(&[
            "ha",
            "bootstrap",
            "--password-file",
            pair.pw_file.to_str().unwrap(),
        ]);
        let _ = Command::new("umount").arg(&small).status();
        assert_eq!(out.status.code(), Some(8), "{}", text(&out));
        assert!(text(&out).contains("`disk`"), "{}", text(&out));
    }

    // The primary stopped in the middle of the copy: the partial copy is
    // removed, the server (stopped before) stays stopped.
    let mut child = pair.spawn_bootstrap(&["--yes"]);
    wait_during(&mut child, "the copy to start", || {
        staging_of(&pair).is_some_and(|s| s.join("base").exists())
    });
    pair.primary.stop();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("pg_basebackup"), "{}", text(&out));
    unchanged(&pair, "primary stopped mid-copy");
    assert!(!pair.secondary.is_running());
    pair.primary.start();

    // Primary unreachable (stopped): the preflight refuses.
    pair.primary.stop();
    let out = pair.bootstrap(&["--yes"]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    unchanged(&pair, "primary unreachable");
    pair.primary.start();

    // And with the secondary's server running: it runs again afterwards,
    // after a failure that comes after it was stopped (the catch-up wait
    // times out because the primary's pg_hba.conf no longer lets the
    // replica stream once the copy is done).
    pair.secondary.start();
    let hba = pair.primary.read_hba();
    let mut child = pair.spawn_bootstrap(&["--yes", "--timeout", "5"]);
    wait_during(&mut child, "the copy to finish", || {
        staging_of(&pair).is_some_and(|s| {
            s.join("backup_label").exists() && s.join("global/pg_control").exists()
        }) || !pair.secondary.is_running()
    });
    let blocked: Vec<u8> = String::from_utf8_lossy(&hba)
        .replace(
            &format!("host replication repuser {ADDR_B}/32"),
            &format!("host replication repuser {ADDR_B}/32 reject\n#"),
        )
        .into_bytes();
    pair.primary.write_hba(&blocked);
    pair.primary
        .connect()
        .batch_execute("SELECT pg_reload_conf()")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    pair.primary.write_hba(&hba);
    pair.primary
        .connect()
        .batch_execute("SELECT pg_reload_conf()")
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        pair.secondary.is_running(),
        "the old server runs again: {}",
        text(&out)
    );
    let rows = pair.replica_query("SELECT pg_is_in_recovery()");
    assert!(!rows[0].get::<_, bool>(0), "in its old role (a primary)");
    assert_eq!(pair.beside(), beside, "nothing left beside it");
    assert!(old_dirs(&pair).is_empty());
}

/// kill -9 of a running keyferry: afterwards nothing holds the home's lock
/// (no child it left behind keeps the node locked).
fn kill_keyferry(pair: &Pair, child: &mut std::process::Child) {
    kill9(child);
    assert_eq!(
        holders(&pair.home.join("keyferry.lock")),
        "",
        "nothing holds the lock after the kill"
    );
}

/// The processes that have `path` open, for a failure message.
fn holders(path: &std::path::Path) -> String {
    let mut out = String::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(fds) = fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|l| l == path) {
                let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
                out.push_str(&format!(
                    "{} {}\n",
                    e.file_name().to_string_lossy(),
                    String::from_utf8_lossy(&cmd).replace('\0', " ")
                ));
            }
        }
    }
    out
}

/// kill -9 of keyferry during the copy, after the swap, and during the
/// wait; `--abort` and `--resume` each lead to a working node.
#[test]
fn a_killed_bootstrap_is_resumed_or_aborted() {
    let Some(pair) = Pair::new("bk", 10) else {
        return;
    };
    let conf = fs::read(pair.data().join("postgresql.conf")).unwrap();
    let beside = pair.beside();

    // 1. During the copy, then --abort: as it was, server running.
    let mut child = pair.spawn_bootstrap(&["--yes"]);
    wait_during(&mut child, "the copy to start", || {
        staging_of(&pair).is_some_and(|s| s.join("base").exists())
    });
    let staging = staging_of(&pair).unwrap();
    kill_keyferry(&pair, &mut child);
    let t = Instant::now();
    while !no_process_with(staging.to_str().unwrap()) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ps = Command::new("ps")
        .args(["-o", "pid,ppid,stat,cmd", "-C", "pg_basebackup"])
        .output()
        .unwrap();
    eprintln!(
        "after {:?}: {}",
        t.elapsed(),
        String::from_utf8_lossy(&ps.stdout)
    );
    assert!(
        no_process_with(staging.to_str().unwrap()),
        "pg_basebackup died with keyferry"
    );
    let status = pair.keyferry(&[
        "ha",
        "check",
        "--password-file",
        pair.pw_file.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("ha bootstrap --resume"),
        "ha check says a bootstrap is interrupted: {}",
        text(&status)
    );
    let out = pair.bootstrap(&["--yes"]);
    assert_eq!(
        out.status.code(),
        Some(16),
        "a new bootstrap waits for the old one (exit 16, held): {}",
        text(&out)
    );
    let out = pair.keyferry(&["ha", "bootstrap", "--abort"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(pair.beside(), beside);
    assert!(pair.secondary.is_running());
    assert_eq!(fs::read(pair.data().join("postgresql.conf")).unwrap(), conf);

    // 2. During the copy, then --resume: starts over and finishes.
    let mut child = pair.spawn_bootstrap(&["--yes"]);
    wait_during(&mut child, "the copy to start", || {
        staging_of(&pair).is_some_and(|s| s.join("base").exists())
    });
    kill_keyferry(&pair, &mut child);
    let out = pair.bootstrap(&["--resume"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_is_replica(&pair);
    assert_eq!(old_dirs(&pair).len(), 1);

    // 3. After the swap (the standby configuration is being written), then
    // --resume.
    let mut child = pair.spawn_bootstrap(&[]);
    wait_during(&mut child, "the swap", || {
        old_dirs(&pair).len() == 2 && pair.data().join("PG_VERSION").exists()
    });
    kill_keyferry(&pair, &mut child);
    let out = pair.bootstrap(&["--resume"]);
    let log = pair.data().parent().unwrap().join("data.pg_ctl.log");
    assert!(
        out.status.success(),
        "{}\n--- server log\n{}\n--- lock holders\n{}",
        text(&out),
        fs::read_to_string(log).unwrap_or_default(),
        holders(&pair.home.join("keyferry.lock"))
    );
    assert_is_replica(&pair);

    // 4. During the wait, then --abort: the previous replica is back.
    let mut child = pair.spawn_bootstrap(&["--timeout", "60"]);
    wait_during(&mut child, "the new server to start", || {
        old_dirs(&pair).len() == 3 && pair.data().join("postmaster.pid").exists()
    });
    kill_keyferry(&pair, &mut child);
    let out = pair.keyferry(&["ha", "bootstrap", "--abort"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        old_dirs(&pair).len(),
        2,
        "the third bootstrap's old dir moved back"
    );
    assert_is_replica(&pair);
    common::succeeded(&pair.keyferry(&["audit", "verify"]));
}

/// A fresh secondary (no data directory yet) whose disk fills up while the
/// copy runs: the copy fails, and nothing keyferry made is left on it.
#[test]
fn a_disk_filled_during_the_copy_leaves_nothing_behind() {
    let Some(pair) = Pair::new("bd", 10) else {
        return;
    };
    let disk = pair.tmp.path().join("disk");
    fs::create_dir(&disk).unwrap();
    // Room for the preflight (the primary's size × 1.25) but not for the
    // copy once something else takes the rest.
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=400m",
            "tmpfs",
            disk.to_str().unwrap(),
        ])
        .status()
        .unwrap()
        .success();
    assert!(mounted, "mount a tmpfs (the tests run as root)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());
    if let Some((uid, gid)) = pair.secondary.server_owner() {
        std::os::unix::fs::chown(&disk, Some(uid), Some(gid)).unwrap();
    }
    let home = pair.tmp.path().join("home-fresh");
    let data = disk.join("main");
    let run = |args: &[&str]| {
        Pair::keyferry_cmd(&pair.ns.b, &home, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    pair.ha_init(&pair.ns.b, &home, "fresh", &data);
    let before = snapshot(&disk);
    let mut child = run(&[
        "ha",
        "bootstrap",
        "--password-file",
        pair.pw_file.to_str().unwrap(),
    ]);
    // The copy's directory exists once the preflight (which checks the
    // free space) is past, and before pg_basebackup writes into it.
    wait_during(&mut child, "the copy's directory", || {
        fs::read_dir(&disk).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("main.keyferry-new-")
        })
    });
    // Everything that is left, as another program writing there would:
    // nearly all of it at once (fallocate), so that a copy on a fast
    // machine cannot finish first, then the last bytes block by block.
    let avail = || -> u64 {
        let df = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&disk)
            .output()
            .unwrap();
        String::from_utf8_lossy(&df.stdout)
            .lines()
            .last()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let fillers: Vec<PathBuf> = (0..3).map(|i| disk.join(format!("filler-{i}"))).collect();
    for f in &fillers[..2] {
        let margin = 8 << 20;
        let _ = Command::new("fallocate")
            .args(["-l", &avail().saturating_sub(margin).max(1).to_string()])
            .arg(f)
            .stderr(Stdio::null())
            .status();
    }
    let _ = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", fillers[2].display()),
            "bs=64k",
        ])
        .stderr(Stdio::null())
        .status();
    let out = child.wait_with_output().unwrap();
    for f in &fillers {
        let _ = fs::remove_file(f);
    }
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("pg_basebackup"), "{}", text(&out));
    assert_same(&before, &snapshot(&disk));
    assert!(!data.exists(), "no data directory appeared");
}

/// Issue 23, finding 2: the bootstrap copied the primary's
/// `postgresql.auto.conf`, which overrides the secondary's own settings:
/// an `ALTER SYSTEM` on the primary left the replica listening on loopback
/// only (the bootstrap said healthy) and could set programs it runs. Now
/// the replica keeps its own settings, is told what was dropped, and the
/// bootstrap checks it listens where `ha.toml` says. Also finding 4: the
/// `--password-env` variable is not in the postmaster's environment.
#[test]
fn the_primary_does_not_configure_the_replicas_server() {
    let Some(pair) = Pair::new("bp", 0) else {
        return;
    };
    let parent = pair.data().parent().unwrap().to_path_buf();
    let marker = parent.join("restore-command-ran");
    for (name, value) in [
        ("listen_addresses", format!("{ADDR_A},127.0.0.1")),
        ("archive_command", format!("touch {}", marker.display())),
        ("restore_command", format!("touch {}", marker.display())),
        ("shared_preload_libraries", "pg_stat_statements".to_owned()),
    ] {
        pair.primary
            .connect()
            .batch_execute(&format!(
                "ALTER SYSTEM SET {name} = '{}'",
                value.replace('\'', "''")
            ))
            .unwrap();
    }
    let out = pair
        .command(&[
            "ha",
            "bootstrap",
            "--yes",
            "--timeout",
            "60",
            "--password-env",
            "KF_TEST_REPLICATION_PW",
        ])
        .env("KF_TEST_REPLICATION_PW", PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_is_replica(&pair);

    let auto = fs::read_to_string(pair.data().join("postgresql.auto.conf")).unwrap();
    for name in [
        "listen_addresses",
        "archive_command",
        "restore_command",
        "shared_preload_libraries",
    ] {
        assert!(!auto.contains(name), "{name} in the replica's {auto}");
        assert!(text(&out).contains(name), "{name} reported: {}", text(&out));
    }
    let show = |name: &str| -> String {
        pair.replica_query(&format!("SELECT current_setting('{name}')"))[0].get(0)
    };
    assert_eq!(show("listen_addresses"), format!("{ADDR_B},127.0.0.1"));
    assert_eq!(show("shared_preload_libraries"), "");
    assert_eq!(show("restore_command"), "");
    assert!(!marker.exists());
    let log = fs::read_to_string(pair.home.join("audit.log")).unwrap();
    assert!(log.contains("dropped_settings"), "{log}");

    // The postmaster (started by keyferry through pg_ctl) has no password
    // source in its environment.
    let pid = fs::read_to_string(pair.data().join("postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap().trim();
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains("PATH="),
        "read the right process: {environ}"
    );
    assert!(!environ.contains("KF_TEST_REPLICATION_PW"), "{environ}");
    assert!(!environ.contains(PASSWORD), "{environ}");
}

/// The trial's attack (issue 23): the server's account owns the data
/// directory's parent, so once the copy is finished it puts a link to a
/// directory elsewhere in the copy's place, hoping root renames the link
/// into place and writes the configuration files through it. The swap is
/// refused with one line naming the copy, nothing is written in the link's
/// target, and the node is as it was (server running, its data untouched).
#[test]
fn a_copy_replaced_by_a_link_is_refused_and_nothing_is_written_through_it() {
    let Some(pair) = Pair::new("bl", 0) else {
        return;
    };
    let conf = fs::read(pair.data().join("postgresql.conf")).unwrap();
    let outside = pair.tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let journal = pair.home.join("journal.json");

    let mut child = pair.spawn_bootstrap(&["--yes"]);
    // Phase "copied" is journaled before the local server is stopped and
    // the copy renamed: the window the attacker uses.
    let deadline = Instant::now() + Duration::from_secs(60);
    let staging = loop {
        if fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"copied\"")) {
            break staging_of(&pair).expect("the copy is still beside the data directory");
        }
        assert!(Instant::now() < deadline, "timed out waiting for the copy");
        assert!(
            child.try_wait().unwrap().is_none(),
            "keyferry ended before the copy was finished"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let moved = staging.with_file_name("moved-by-postgres");
    fs::rename(&staging, &moved).unwrap();
    std::os::unix::fs::symlink(&outside, &staging).unwrap();

    let out = child.wait_with_output().unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("was replaced by someone else") && said.contains(staging.to_str().unwrap()),
        "a one-line refusal naming the copy: {said}"
    );
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written in the link's target"
    );
    assert!(
        fs::symlink_metadata(pair.data()).unwrap().is_dir(),
        "the data directory is a directory, not the link"
    );
    assert_eq!(fs::read(pair.data().join("postgresql.conf")).unwrap(), conf);
    // The failed step undid the change (the journal is gone with it): an
    // --abort finds nothing left to undo, and the server runs again.
    if journal.exists() {
        let out = pair.keyferry(&["ha", "bootstrap", "--abort"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(pair.secondary.is_running());
    assert!(!pair.data().join("standby.signal").exists());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

/// Issue 20 item 1: a secondary whose own configuration keeps a setting a
/// hot standby needs at least equal to its primary's lower (here
/// `max_wal_senders = 2` against the primary's 10) was copied for minutes
/// and then failed to start. The preflight refuses it first (exit 8),
/// naming the setting, and nothing is copied or changed.
#[test]
fn a_secondary_below_the_primarys_standby_settings_is_refused_before_the_copy() {
    let Some(mut pair) = Pair::new("bm", 0) else {
        return;
    };
    pair.replica_query("ALTER SYSTEM SET max_wal_senders = 2");
    pair.secondary.stop_clean();
    pair.secondary.start();
    let auto = fs::read(pair.data().join("postgresql.auto.conf")).unwrap();
    let beside = pair.beside();
    let out = pair.bootstrap(&["--yes"]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    assert!(
        text(&out).contains("max_wal_senders = 2 (the primary's is 10)"),
        "{}",
        text(&out)
    );
    assert_eq!(pair.beside(), beside, "nothing beside the data directory");
    assert!(staging_of(&pair).is_none());
    assert_eq!(
        fs::read(pair.data().join("postgresql.auto.conf")).unwrap(),
        auto
    );
    let in_recovery: bool = pair.replica_query("SELECT pg_is_in_recovery()")[0].get(0);
    assert!(!in_recovery, "the secondary's own server runs as it did");
}
