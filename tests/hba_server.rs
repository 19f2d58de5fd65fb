//! `keyferry hba ensure` against a real PostgreSQL server on loopback: a
//! symlinked `pg_hba.conf` is edited at its target and PostgreSQL reads the
//! new lines; a file the server does not read is refused; the server's
//! socket and port come from `postmaster.pid` (issue 12 items 9 and 10).
//!
//! Skips without PostgreSQL server binaries (fails with
//! `KEYFERRY_REQUIRE_PG=1`, see `common/pg.rs`).
#![cfg(unix)]

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::pg::{PgOptions, PgServer};
use serde_json::Value;

const PEER: &str = "10.213.9.2";

fn keyferry(home: &Path, args: &[&str]) -> Output {
    common::keyferry_in(home, args)
}

fn ok_json(out: &Output) -> Value {
    serde_json::from_str(&common::succeeded(out)).unwrap()
}

/// `(database, user)` of the rules PostgreSQL reads for `address`.
fn served_rules(server: &PgServer, address: &str) -> Vec<(Vec<String>, Vec<String>)> {
    server
        .connect()
        .query(
            "SELECT database, user_name FROM pg_hba_file_rules WHERE address = $1 ORDER BY line_number",
            &[&address],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// When the server last loaded its configuration files, as text.
fn conf_load_time(server: &PgServer) -> String {
    server
        .connect()
        .query_one("SELECT pg_conf_load_time()::text", &[])
        .unwrap()
        .get(0)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_linked_pg_hba_conf_is_edited_at_its_target_and_the_server_reads_it() {
    let Some(server) = PgServer::start_primary(PgOptions::default()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let original = server.read_hba();
    let link = tmp.path().join("pg_hba.conf");
    std::os::unix::fs::symlink(server.hba_path(), &link).unwrap();
    let port = server.port().to_string();
    let socket = server.socket_dir().to_str().unwrap().to_owned();
    let ensure = |file: &Path| {
        keyferry(
            &home,
            &[
                "hba",
                "ensure",
                "--peer",
                PEER,
                "--json",
                "--file",
                file.to_str().unwrap(),
                "--pg-socket-dir",
                &socket,
                "--pg-port",
                &port,
            ],
        )
    };

    let report = ok_json(&ensure(&link));
    assert_eq!(
        report["server"]["outcome"], "checked_and_reloaded",
        "{report:#}"
    );
    assert_eq!(report["link"], link.display().to_string());
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let written = server.read_hba();
    assert!(written.starts_with(&original) && written.len() > original.len());
    assert_eq!(
        served_rules(&server, PEER),
        [
            (strings(&["replication"]), strings(&["repuser"])),
            (strings(&["all"]), strings(&["all"])),
        ],
        "PostgreSQL reads the lines written"
    );

    // A file the server does not read: refused before anything is written,
    // naming both files and the fix.
    let elsewhere = tmp.path().join("other_hba.conf");
    fs::write(&elsewhere, &original).unwrap();
    let out = ensure(&elsewhere);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let served = fs::canonicalize(server.hba_path()).unwrap();
    assert!(
        stderr.contains(&format!("pass --file {}", served.display()))
            && stderr.contains(&elsewhere.display().to_string())
            && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert_eq!(fs::read(&elsewhere).unwrap(), original);
}

/// With no `--pg-socket-dir` and no `--pg-port`, `hba ensure` reaches the
/// server through what its `postmaster.pid` says, checks and reloads; a
/// port other than `ha.toml`'s is a warning (issue 12 item 10).
#[test]
fn hba_ensure_finds_the_server_through_its_postmaster_pid() {
    let Some(server) = PgServer::start_primary(PgOptions::default()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let other_port = if server.port() == 5999 {
        "5998"
    } else {
        "5999"
    };
    common::succeeded(&keyferry(
        &home,
        &[
            "ha",
            "init",
            "--node",
            "pam-a",
            "--primary",
            "10.213.9.1",
            "--secondary",
            PEER,
            "--pg-port",
            other_port,
            "--pg-data",
            server.data_dir().to_str().unwrap(),
        ],
    ));
    let loaded_before = conf_load_time(&server);
    let out = keyferry(&home, &["hba", "ensure", "--peer", PEER, "--json"]);
    let report = ok_json(&out);
    let socket = server.socket_dir().display().to_string();
    assert_eq!(
        report["server"],
        serde_json::json!({
            "outcome": "checked_and_reloaded",
            "endpoint": format!("socket {socket}/.s.PGSQL.{}", server.port()),
        }),
        "{report:#}"
    );
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains(&format!("listens on port {}", server.port()))
            && warnings.contains(&format!("pg_port is {other_port}")),
        "{warnings}"
    );
    assert_eq!(served_rules(&server, PEER).len(), 2);
    // The reload happened (the postmaster applies it on SIGHUP, shortly
    // after); a second run changes nothing.
    let reloaded = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        conf_load_time(&server) != loaded_before
    });
    assert!(reloaded, "pg_conf_load_time() did not move: no reload");
    let again = ok_json(&keyferry(
        &home,
        &["hba", "ensure", "--peer", PEER, "--json"],
    ));
    assert_eq!(again["changed"], false);

    // The text output says the warning on stderr.
    let out = keyferry(&home, &["hba", "remove", "--peer", PEER]);
    common::succeeded(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: the server of"), "{stderr}");
    assert!(served_rules(&server, PEER).is_empty());
}
