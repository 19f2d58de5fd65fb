//! The HA commands against real PostgreSQL servers on two hosts: the
//! primary runs in network namespace `a` (10.213.0.1), the checking node is
//! namespace `b` (10.213.0.2), and the `keyferry` binary runs in `b` the
//! way it would on the secondary. Proves that a replication connection from
//! the peer's address works only after `hba ensure`, that the preflight
//! reports a closed port, a wrong password and `wal_level = minimal` each
//! as its own failed check, and that a broken `pg_hba.conf` is rolled back.
//!
//! Needs root, `ip netns` and PostgreSQL server binaries; skips otherwise
//! (fails with `KEYFERRY_REQUIRE_PG=1`).
#![cfg(unix)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::netns::{NetnsPair, ADDR_A, ADDR_B};
use common::pg::{PgOptions, PgServer};
use serde_json::Value;

const PASSWORD: &str = "replication pass: it's \"quoted\"";
/// A port nothing listens on in either namespace.
const CLOSED_WEB_PORT: &str = "6599";

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("keyferry")
}

/// Runs keyferry in the root namespace.
fn keyferry(home: &Path, args: &[&str]) -> Output {
    common::keyferry_in(home, args)
}

/// Runs `keyferry ha check --json` inside namespace `ns`.
fn check_in(ns: &str, home: &Path, extra: &[&str]) -> (i32, Vec<Value>) {
    let out = NetnsPair::exec(ns, &bin())
        .arg("--home")
        .arg(home)
        .args(["ha", "check", "--json", "--timeout-ms", "2000"])
        .args(extra)
        .env_remove("KEYFERRY_HOME")
        .env("PGPASSFILE", "/nonexistent")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "ha check output is not JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(!stdout.contains(PASSWORD) && !String::from_utf8_lossy(&out.stderr).contains(PASSWORD));
    (
        out.status.code().unwrap(),
        report["checks"].as_array().unwrap().clone(),
    )
}

fn find<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:#?}"))
}

fn assert_status(checks: &[Value], name: &str, status: &str, words: &str) {
    let c = find(checks, name);
    assert_eq!(c["status"], status, "{name}: {c:#}");
    let text = format!("{} {}", c["message"], c["fix"]);
    assert!(
        text.contains(words),
        "{name} should mention {words:?}: {c:#}"
    );
}

/// The secondary's server and both web ports are down in this test: those
/// checks, and no other, fail.
fn assert_only_the_closed_ports_fail(checks: &[Value]) {
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        [
            "port.primary.web",
            "port.secondary.pg",
            "port.secondary.web"
        ],
        "{checks:#?}"
    );
}

fn ok(out: &Output) -> String {
    common::succeeded(out)
}

fn init_node(home: &Path, node: &str, server: &PgServer, pg_data: &Path, archive: &Path) {
    let port = server.port().to_string();
    ok(&keyferry(
        home,
        &[
            "ha",
            "init",
            "--force",
            "--node",
            node,
            "--primary",
            ADDR_A,
            "--secondary",
            ADDR_B,
            "--pg-port",
            &port,
            "--web-port",
            CLOSED_WEB_PORT,
            "--pg-bin",
            server.bin_dir().to_str().unwrap(),
            "--pg-data",
            pg_data.to_str().unwrap(),
            "--archive-dir",
            archive.to_str().unwrap(),
        ],
    ));
}

fn hba(home: &Path, server: &PgServer, verb: &str, peer: &str) -> Output {
    let port = server.port().to_string();
    keyferry(
        home,
        &[
            "hba",
            verb,
            "--peer",
            peer,
            "--json",
            "--file",
            server.hba_path().to_str().unwrap(),
            "--pg-socket-dir",
            server.socket_dir().to_str().unwrap(),
            "--pg-port",
            &port,
        ],
    )
}

/// The postmaster applies a reload asynchronously (SIGHUP).
fn settle() {
    std::thread::sleep(Duration::from_millis(400));
}

#[test]
fn preflight_and_pg_hba_between_two_hosts() {
    // Declared first so it is dropped last, after the servers stopped.
    let Some(ns) = NetnsPair::create("p") else {
        return;
    };
    // Its own address and loopback, as a server listening on '*' would.
    let listen = format!("listen_addresses = '{ADDR_A},127.0.0.1'");
    let Some(primary) = PgServer::start_primary(PgOptions {
        extra_conf: vec![listen.clone()],
        netns: Some(ns.a.clone()),
    }) else {
        return;
    };
    primary.create_replication_user("repuser", PASSWORD);

    let tmp = tempfile::tempdir().unwrap();
    let home_a = tmp.path().join("home-a");
    let home_b = tmp.path().join("home-b");
    ok(&keyferry(&home_a, &["init"]));
    let pw = tmp.path().join("pw");
    fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    let wrong = tmp.path().join("wrong");
    fs::write(&wrong, "not the password\n").unwrap();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    fs::write(archive.join("000000010000000000000001"), b"old wal").unwrap();
    let b_data = tmp.path().join("b-data");
    fs::create_dir(&b_data).unwrap();
    init_node(&home_a, "pam-a", &primary, primary.data_dir(), &archive);
    init_node(&home_b, "pam-b", &primary, &b_data, &archive);
    let pw_args = ["--password-file", pw.to_str().unwrap()];

    // Before ensure: the primary has no line for 10.213.0.2.
    let (code, checks) = check_in(&ns.b, &home_b, &pw_args);
    assert_eq!(code, 8, "{checks:#?}");
    assert_status(&checks, "node", "ok", "secondary");
    assert_status(&checks, "port.primary.pg", "ok", ADDR_A);
    assert_status(
        &checks,
        "port.secondary.pg",
        "fail",
        &format!("on {ADDR_B}: connection refused"),
    );
    assert_status(
        &checks,
        "port.primary.web",
        "fail",
        &format!("port {CLOSED_WEB_PORT} on {ADDR_A}"),
    );
    assert_status(&checks, "replication", "fail", "no pg_hba.conf entry");
    assert_status(
        &checks,
        "replication",
        "fail",
        &format!("keyferry hba ensure --peer {ADDR_B}"),
    );
    assert_status(&checks, "archive", "warn", "keyferry ha archive clean");
    assert_status(&checks, "data_dir", "ok", "empty");

    // ensure on the primary: checked by PostgreSQL, reloaded, audited, and
    // the file keeps the owner and mode the server needs.
    let before = fs::metadata(primary.hba_path()).unwrap();
    let original = primary.read_hba();
    let out = ok(&hba(&home_a, &primary, "ensure", ADDR_B));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["server"]["outcome"], "checked_and_reloaded",
        "{report:#}"
    );
    assert_eq!(report["audited"], true);
    let after = fs::metadata(primary.hba_path()).unwrap();
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode())
    );
    assert_eq!(primary.hba_file_errors(), []);
    let ensured = primary.read_hba();
    assert!(ensured.starts_with(&original));
    settle();

    // After ensure: the replication connection from 10.213.0.2 works, and so
    // does everything read through SQL.
    let (code, checks) = check_in(&ns.b, &home_b, &pw_args);
    assert_eq!(
        code, 8,
        "the secondary's ports are still closed: {checks:#?}"
    );
    assert_status(&checks, "replication", "ok", "replication connection");
    assert_status(&checks, "sql.primary", "ok", "works");
    assert_status(&checks, "wal_level", "ok", "replica");
    assert_status(&checks, "wal_senders", "ok", "free");
    assert_status(&checks, "version", "ok", "same PostgreSQL major version");
    assert_status(&checks, "disk", "ok", "primary databases");
    assert_only_the_closed_ports_fail(&checks);

    // On the primary itself, after the runbook's steps (no pg_hba.conf line
    // for its own address): its own server is read over loopback, and the
    // replication connection is left to the secondary's check.
    let (_, checks) = check_in(&ns.a, &home_a, &pw_args);
    assert_status(&checks, "node", "ok", "primary");
    assert_status(
        &checks,
        "replication",
        "ok",
        "checked by `keyferry ha check` on the secondary",
    );
    assert_status(&checks, "sql.primary", "ok", "this node's own server");
    assert_status(&checks, "wal_level", "ok", "replica");
    assert_only_the_closed_ports_fail(&checks);

    // A wrong password is its own failure, with its own fix.
    let (_, checks) = check_in(
        &ns.b,
        &home_b,
        &["--password-file", wrong.to_str().unwrap()],
    );
    assert_status(
        &checks,
        "replication",
        "fail",
        "password authentication failed",
    );
    assert_status(&checks, "replication", "fail", "ALTER ROLE repuser");

    // The password from a libpq password file works as well.
    let passfile = tmp.path().join("pgpass");
    fs::write(&passfile, format!("{ADDR_A}:*:*:repuser:{PASSWORD}\n")).unwrap();
    fs::set_permissions(&passfile, fs::Permissions::from_mode(0o600)).unwrap();
    let out = NetnsPair::exec(&ns.b, &bin())
        .arg("--home")
        .arg(&home_b)
        .args(["ha", "check", "--timeout-ms", "2000"])
        .env("PGPASSFILE", &passfile)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok   replication"), "{text}");
    assert!(text.contains("libpq password file"), "{text}");
    assert!(!text.contains(PASSWORD));

    // The server reads another file than --file names: refused.
    let elsewhere = tmp.path().join("other_hba.conf");
    fs::write(&elsewhere, &original).unwrap();
    let port = primary.port().to_string();
    let out = keyferry(
        &home_a,
        &[
            "hba",
            "ensure",
            "--peer",
            "10.213.0.2",
            "--file",
            elsewhere.to_str().unwrap(),
            "--pg-socket-dir",
            primary.socket_dir().to_str().unwrap(),
            "--pg-port",
            &port,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reads"));
    assert_eq!(fs::read(&elsewhere).unwrap(), original);

    // A file PostgreSQL cannot parse is put back byte for byte, not reloaded,
    // not audited.
    let mut broken = ensured.clone();
    broken.extend_from_slice(b"host all all 10.0.0.300/32 scram-sha-256\n");
    primary.write_hba(&broken);
    let log_before = fs::read(home_a.join("audit.log")).unwrap();
    // A third address (neither node of the pair) needs --force.
    let out = hba(&home_a, &primary, "ensure", "10.213.0.9");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither node of the pair"));
    assert_eq!(primary.read_hba(), broken);
    let port = primary.port().to_string();
    let out = keyferry(
        &home_a,
        &[
            "hba",
            "ensure",
            "--peer",
            "10.213.0.9",
            "--force",
            "--file",
            primary.hba_path().to_str().unwrap(),
            "--pg-socket-dir",
            primary.socket_dir().to_str().unwrap(),
            "--pg-port",
            &port,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("put back") && stderr.contains("line"),
        "{stderr}"
    );
    assert_eq!(
        primary.read_hba(),
        broken,
        "byte-identical after the rollback"
    );
    assert_eq!(fs::read(home_a.join("audit.log")).unwrap(), log_before);
    let restored = fs::metadata(primary.hba_path()).unwrap();
    assert_eq!(
        (restored.uid(), restored.mode()),
        (before.uid(), before.mode())
    );
    primary.write_hba(&ensured);

    // remove: the peer is shut out again.
    ok(&hba(&home_a, &primary, "remove", ADDR_B));
    assert_eq!(primary.read_hba(), original);
    settle();
    let (_, checks) = check_in(&ns.b, &home_b, &pw_args);
    assert_status(&checks, "replication", "fail", "no pg_hba.conf entry");
    ok(&keyferry(&home_a, &["audit", "verify"]));
    let log = String::from_utf8(fs::read(home_a.join("audit.log")).unwrap()).unwrap();
    assert_eq!(log.matches("\"hba-ensure\"").count(), 1);
    assert_eq!(log.matches("\"hba-remove\"").count(), 1);
    assert!(!log.contains(PASSWORD));
    drop(primary);

    // A primary with wal_level = minimal fails the wal_level check.
    let Some(minimal) = PgServer::start_primary(PgOptions {
        extra_conf: vec![
            listen,
            "wal_level = minimal".into(),
            "max_wal_senders = 0".into(),
        ],
        netns: Some(ns.a.clone()),
    }) else {
        return;
    };
    minimal.create_replication_user("repuser", PASSWORD);
    ok(&hba(&home_a, &minimal, "ensure", ADDR_B));
    init_node(&home_b, "pam-b", &minimal, &b_data, &archive);
    settle();
    let (code, checks) = check_in(&ns.b, &home_b, &pw_args);
    assert_eq!(code, 8);
    assert_status(&checks, "sql.primary", "ok", "works");
    assert_status(&checks, "wal_level", "fail", "wal_level = minimal");
    assert_status(&checks, "wal_level", "fail", "wal_level = replica");
    assert_status(&checks, "wal_senders", "fail", "max_wal_senders = 0");

    // A primary that listens on its own address only, with no pg_hba.conf
    // line for it: `ha check` on it reads its own server through its
    // socket as its administrator, as the other commands do, not through
    // a line for its own address (issue 20 item 6).
    let Some(own_only) = PgServer::start_primary(PgOptions {
        extra_conf: vec![format!("listen_addresses = '{ADDR_A}'")],
        netns: Some(ns.a.clone()),
    }) else {
        return;
    };
    own_only.create_replication_user("repuser", PASSWORD);
    let home_c = tmp.path().join("home-c");
    ok(&keyferry(&home_c, &["init"]));
    init_node(&home_c, "pam-a", &own_only, own_only.data_dir(), &archive);
    let (_, checks) = check_in(&ns.a, &home_c, &pw_args);
    assert_status(&checks, "sql.primary", "ok", "through its socket");
    assert_status(&checks, "wal_level", "ok", "replica");
}
