//! Issue 20 item 1, the SQL half of `ha prepare`, against a real, freshly
//! initialised server: the plan made from what the server has creates the
//! replication role (its password as a SCRAM verifier: the role logs in
//! with the password), its rights (what `ha check`'s rights check asks
//! for), its schema (where its tables land) and the replication settings;
//! a second plan is empty but for the settings waiting for a restart, and
//! after the restart nothing is left to do.
#![cfg(unix)]

mod common;

use common::pg::{PgOptions, PgServer};
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
