//! Issue 20 item 1, the SQL half of `ha prepare`, against a real, freshly
//! initialised server: the plan made from what the server has creates the
//! replication role (its password as a SCRAM verifier: the role logs in
//! with the password), its rights (what `ha check`'s rights check asks
//! for), its schema (where its tables land) and the replication settings;
//! a second plan is empty but for the settings waiting for a restart, and
//! after the restart nothing is left to do. The command itself, as root on
//! Debian's default rules (`local … peer`): it lists, then writes, the
//! statements and keyferry's `pg_hba.conf` blocks for both addresses,
//! restarts the server with `--restart`, and then has nothing to do.
#![cfg(unix)]

mod common;

use common::pg::{Auth, PgOptions, PgServer};
use keyferry::ha::prepare::{apply, observe, plan, Wanted};

const PASSWORD: &str = "prepare's replication password";

const WANTED: Wanted = Wanted {
    user: "repuser",
    archive_command: None,
};

#[test]
fn prepare_makes_the_role_its_rights_schema_and_settings_once() {
    let Some(mut server) = PgServer::start_primary(PgOptions::default()) else {
        return;
    };
    let target = "test server";
    let mut admin = server.connect();
    let seen = observe(&mut admin, target, &WANTED).unwrap();
    assert!(!seen.role_exists);
    let first = plan(&seen, &WANTED, Some(PASSWORD.as_bytes()), [9; 16]);
    assert!(first.statements.iter().all(|s| !s.sql.contains(PASSWORD)));
    apply(&mut admin, target, &first).unwrap();
    assert!(
        first.restart_for.contains(&"wal_log_hints".to_owned()),
        "{first:?}"
    );

    // The role logs in over TCP (scram-sha-256) with the password, and has
    // every right the pair's commands need.
    let mut rep = server.connect_as("repuser", PASSWORD);
    let r = rep
        .query_one(
            "SELECT rolreplication, pg_has_role(current_user, 'pg_monitor', 'USAGE'), \
                    has_function_privilege('pg_promote(boolean, integer)', 'EXECUTE'), \
                    has_function_privilege('pg_ls_dir(text, boolean, boolean)', 'EXECUTE') \
                AND has_function_privilege('pg_stat_file(text, boolean)', 'EXECUTE') \
                AND has_function_privilege('pg_read_binary_file(text)', 'EXECUTE') \
                AND has_function_privilege('pg_read_binary_file(text, bigint, bigint, boolean)', 'EXECUTE'), \
                    rolsuper \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .unwrap();
    let rights: (bool, bool, bool, bool, bool) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    assert_eq!(rights, (true, true, true, true, false));
    // Its tables land in its own schema (PostgreSQL 15 gives nobody CREATE
    // on public).
    rep.batch_execute("CREATE TABLE IF NOT EXISTS keyferry_nodes (name text PRIMARY KEY)")
        .unwrap();
    let schema: String = rep
        .query_one(
            "SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = 'keyferry_nodes'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(schema, "keyferry");
    drop(rep);

    // Again: nothing to run; the settings wait for the restart.
    let again = plan(
        &observe(&mut admin, target, &WANTED).unwrap(),
        &WANTED,
        Some(PASSWORD.as_bytes()),
        [3; 16],
    );
    assert!(again.statements.is_empty(), "{again:?}");
    assert_eq!(again.restart_for, first.restart_for);
    drop(admin);

    server.stop_clean();
    server.start();
    let mut admin = server.connect();
    let after = plan(
        &observe(&mut admin, target, &WANTED).unwrap(),
        &WANTED,
        Some(PASSWORD.as_bytes()),
        [4; 16],
    );
    assert!(
        after.statements.is_empty() && after.restart_for.is_empty(),
        "{after:?}"
    );
    let hints: String = admin.query_one("SHOW wal_log_hints", &[]).unwrap().get(0);
    assert_eq!(hints, "on");
}

fn keyferry(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_keyferry"))
        .arg("--home")
        .arg(home)
        .env_remove("KEYFERRY_HOME")
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ha_prepare_lists_runs_audits_and_then_has_nothing_to_do() {
    let Some(server) = PgServer::start_primary_with_auth(PgOptions::default(), Auth::Debian) else {
        return;
    };
    let hba_before = server.read_hba();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    ok(&keyferry(&home, &["init"]));
    let port = server.port().to_string();
    ok(&keyferry(
        &home,
        &[
            "ha",
            "init",
            "--node",
            "pam-a",
            "--primary",
            "192.0.2.1",
            "--secondary",
            "192.0.2.2",
            "--pg-port",
            &port,
            "--pg-data",
            server.data_dir().to_str().unwrap(),
            "--pg-socket-dir",
            server.socket_dir().to_str().unwrap(),
            "--pg-bin",
            server.bin_dir().to_str().unwrap(),
        ],
    ));
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let pw = pw.to_str().unwrap();
    let audit = || std::fs::read_to_string(home.join("audit.log")).unwrap();
    let before = audit();

    let out = ok(&keyferry(
        &home,
        &["ha", "prepare", "--dry-run", "--password-file", pw],
    ));
    assert!(out.contains("would run: CREATE ROLE \"repuser\""), "{out}");
    assert!(
        out.contains("would run: ALTER SYSTEM SET wal_log_hints"),
        "{out}"
    );
    assert!(
        !out.contains(PASSWORD) && !out.contains("SCRAM-SHA-256$"),
        "{out}"
    );
    let exists: bool = server
        .connect()
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = 'repuser')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!exists, "a dry run created the role");
    for addr in ["192.0.2.1", "192.0.2.2"] {
        let hba = server.hba_path();
        let line = format!(
            "would add to {}: # BEGIN keyferry peer {addr}",
            hba.display()
        );
        assert!(out.contains(&line), "{out}");
    }
    assert_eq!(server.read_hba(), hba_before, "a dry run wrote pg_hba.conf");
    assert_eq!(audit(), before);

    let out = ok(&keyferry(&home, &["ha", "prepare", "--password-file", pw]));
    assert!(
        out.contains("ran: GRANT pg_monitor TO \"repuser\"")
            && out.contains("ran: GRANT pg_checkpoint TO \"repuser\""),
        "{out}"
    );
    assert!(
        out.contains("restart the server for") && out.contains("wal_log_hints"),
        "{out}"
    );
    server.connect_as("repuser", PASSWORD);
    let hba = String::from_utf8(server.read_hba()).unwrap();
    for addr in ["192.0.2.1", "192.0.2.2"] {
        assert!(
            hba.contains(&format!(
                "host    replication     repuser         {addr}/32"
            )),
            "{hba}"
        );
    }
    assert!(server.hba_file_errors().is_empty());
    let log = audit();
    assert_eq!(log.matches("\"ha-prepare\"").count(), 1, "{log}");
    assert_eq!(log.matches("\"hba-ensure\"").count(), 2, "{log}");
    assert!(!log.contains(PASSWORD) && !log.contains("SCRAM-SHA-256$"));

    // --restart: the settings waiting for it take effect.
    let out = ok(&keyferry(
        &home,
        &["ha", "prepare", "--restart", "--password-file", pw],
    ));
    assert!(out.contains("restarted the server"), "{out}");
    assert!(!out.contains("restart the server for"), "{out}");
    let hints: String = server
        .connect()
        .query_one("SHOW wal_log_hints", &[])
        .unwrap()
        .get(0);
    assert_eq!(hints, "on");
    let log = audit();
    assert_eq!(log.matches("\"ha-prepare\"").count(), 2, "{log}");

    let out = ok(&keyferry(&home, &["ha", "prepare", "--password-file", pw]));
    assert!(out.contains("nothing to change"), "{out}");
    assert!(!out.contains("ran:"), "{out}");
    assert_eq!(audit(), log);
}
