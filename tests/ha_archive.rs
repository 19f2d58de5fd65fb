//! `ha archive clean` against a real primary that archives into the
//! directory: only what the last checkpoint and the newest base backup no
//! longer need goes; `--all` needs `--force`; a server's own WAL is never a
//! target, however it is named.
#![cfg(unix)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use common::pg::{PgOptions, PgServer};

fn keyferry(home: &Path) -> Command {
    let mut c = Command::cargo_bin("keyferry").unwrap();
    c.env_remove("KEYFERRY_HOME").arg("--home").arg(home);
    c
}

fn wal_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| keyferry_is_wal(n))
        .collect();
    names.sort();
    names
}

fn keyferry_is_wal(name: &str) -> bool {
    name.len() >= 24 && name[..24].bytes().all(|b| b.is_ascii_hexdigit())
        || name.ends_with(".history")
}

/// A directory the server's OS user can write, inside a root-only temp dir.
fn archive_dir(server_owner: Option<(u32, u32)>) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("archive");
    fs::create_dir(&dir).unwrap();
    if let Some((uid, gid)) = server_owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    }
    (tmp, dir)
}

#[test]
fn a_live_archive_keeps_what_the_server_still_needs() {
    // The archive directory must exist before the server starts; its owner
    // is the postgres user, known only from a server, so ask a first one.
    let Some(probe) = PgServer::start_primary(PgOptions::default()) else {
        return;
    };
    let (_tmp, archive) = archive_dir(probe.server_owner());
    drop(probe);
    let Some(server) = PgServer::start_primary(PgOptions {
        extra_conf: vec![
            "archive_mode = on".into(),
            format!("archive_command = 'cp %p {}/%f'", archive.display()),
        ],
        ..PgOptions::default()
    }) else {
        return;
    };
    let mut sql = server.connect();
    let switch = |sql: &mut postgres::Client, n: usize| {
        for _ in 0..n {
            sql.batch_execute("CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (1); SELECT pg_switch_wal();")
                .unwrap();
        }
    };
    switch(&mut sql, 4);
    // A base backup leaves a .backup file in the archive.
    let backup = server.data_dir().parent().unwrap().join("base");
    let out = server.run_tool(
        "pg_basebackup",
        &[
            "-D",
            backup.to_str().unwrap(),
            "-h",
            server.socket_dir().to_str().unwrap(),
            "-p",
            &server.port().to_string(),
            "-U",
            "postgres",
            "-X",
            "none",
            "-c",
            "fast",
            "--no-sync",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    switch(&mut sql, 3);
    sql.batch_execute("CHECKPOINT").unwrap();
    switch(&mut sql, 2);
    // Wait until the archiver has caught up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = sql
            .query_one(
                "SELECT pg_walfile_name(pg_current_wal_lsn()) > coalesce(last_archived_wal, '') \
                 AND (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') = 0 \
                 FROM pg_stat_archiver",
                &[],
            )
            .unwrap();
        if row.get::<_, bool>(0) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = wal_files(&archive);
    let newest_backup = before
        .iter()
        .filter(|n| n.ends_with(".backup"))
        .max()
        .cloned()
        .unwrap();
    assert!(before.len() >= 8, "{before:?}");

    let home = tempfile::tempdir().unwrap();
    let home = home.path().join("home");
    keyferry(&home).arg("init").assert().success();
    keyferry(&home)
        .args(common::node::HA_INIT)
        .arg("--pg-bin")
        .arg(server.bin_dir())
        .arg("--pg-data")
        .arg(server.data_dir())
        .arg("--archive-dir")
        .arg(&archive)
        .assert()
        .success();

    // --all is refused without --force.
    keyferry(&home)
        .args(["ha", "archive", "clean", "--all"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--force"));
    assert_eq!(wal_files(&archive), before);

    let out = keyferry(&home)
        .args(["ha", "archive", "clean"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("live archive"), "{text}");
    let after = wal_files(&archive);
    let backup_start = &newest_backup[..24];
    assert!(
        after.contains(&newest_backup),
        "the newest .backup stays: {after:?}"
    );
    for name in &before {
        let is_segment_from_backup_on =
            name.len() >= 24 && !name.ends_with(".history") && name[8..24] >= backup_start[8..24];
        if is_segment_from_backup_on {
            assert!(after.contains(name), "{name} is still needed: {after:?}");
        }
    }
    assert!(
        after.len() < before.len(),
        "older segments went: {before:?} -> {after:?}"
    );
    for name in &after {
        assert!(
            name.ends_with(".history")
                || name[8..24] >= backup_start[8..24]
                || *name == newest_backup,
            "{name} should have gone"
        );
    }

    // --all --force removes everything and says what that costs.
    keyferry(&home)
        .args(["ha", "archive", "clean", "--all", "--force"])
        .assert()
        .success()
        .stderr(predicates::str::contains("take a new base backup"));
    assert!(wal_files(&archive).is_empty());
    keyferry(&home).args(["audit", "verify"]).assert().success();
}
