//! Issue 15 item 4 against a real PostgreSQL server started by the test:
//! the node registry with three nodes (the primary and the secondary
//! publish themselves, a remote Action host is added from the primary by
//! its fingerprint); a staged key the Action host lacks; `promote` refused
//! (exit 12, naming the node, the home unchanged) until it imports; the
//! states after the promote; an automatic publish that fails warns without
//! failing the import; `nodes connect` to a registry that cannot be reached
//! changes nothing.
//!
//! Issue 20 items 3 and 4: a registry DSN listing a replica and the
//! primary reaches the primary and names it; after a switchover (the old
//! primary stopped, the replica promoted) `nodes publish` reaches the new
//! primary and names it; `disable`, `enable` and `destroy` publish like
//! `rotate`, so the registry row holds the keys the node holds; a missing
//! registry password says whose and where it is read from.
#![cfg(unix)]

mod common;

use std::fs;
use std::process::Output;

use common::node::{assert_same, snapshot, Node};
use common::pg::PgServer;
use common::registry::{kf, start, Registry, REG_PASSWORD};
use common::succeeded as ok;
use serde_json::Value;

/// `nodes --json` on `node`: name -> (state, key ids).
fn states(node: &Node, reg: &Registry) -> Vec<(String, String, Value)> {
    let v: Value = serde_json::from_str(&ok(&kf(node, reg, &["nodes", "--json"]))).unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                n["state"].as_str().unwrap().to_owned(),
                n["key_ids"].clone(),
            )
        })
        .collect()
}

fn state_of(all: &[(String, String, Value)], name: &str) -> String {
    all.iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("no node {name} in {all:?}"))
        .1
        .clone()
}

/// Exports the primary's keyring and imports it on `to`.
fn carry(from: &Node, to: &Node, reg: &Registry, name: &str) -> Output {
    let bundle = from.path(name);
    from.export(&bundle, &[]);
    let mut c = to.import_cmd(&bundle);
    c.env("PGPASSFILE", &reg.passfile);
    c.output().unwrap()
}

#[test]
fn registry_three_nodes_and_the_promote_guard() {
    let primary = Node::initialised();
    let Some(reg) = start(primary.dir.path()) else {
        return;
    };
    // A registry that cannot be reached is refused; nothing is kept.
    let before = snapshot(&primary.home);
    let dead = format!(
        "host=127.0.0.1 port={} user=kf dbname=postgres connect_timeout=2",
        reg.port + 1
    );
    let out = kf(
        &primary,
        &reg,
        &["nodes", "connect", "--dsn", &dead, "--name", "pam-a"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_same(&before, &snapshot(&primary.home));
    // A DSN with a password is refused, naming the fix.
    let out = kf(
        &primary,
        &reg,
        &[
            "nodes",
            "connect",
            "--dsn",
            "host=127.0.0.1 user=kf password=x",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("password file"));

    ok(&kf(
        &primary,
        &reg,
        &["nodes", "connect", "--dsn", &reg.dsn, "--name", "pam-a"],
    ));

    // The secondary takes the keys and publishes itself.
    let secondary = Node::empty();
    ok(&carry(&primary, &secondary, &reg, "k1.exp"));
    ok(&kf(
        &secondary,
        &reg,
        &["nodes", "connect", "--dsn", &reg.dsn, "--name", "pam-b"],
    ));
    // A remote Action host that cannot reach the database: added from the
    // primary by the fingerprint read there.
    let action = Node::empty();
    ok(&carry(&primary, &action, &reg, "k1b.exp"));
    let out = ok(&kf(
        &primary,
        &reg,
        &[
            "nodes",
            "add",
            "act-1",
            "--role",
            "action",
            "--fingerprint",
            &action.fingerprint(),
        ],
    ));
    assert!(out.contains("keys 1"), "{out}");
    let all = states(&primary, &reg);
    assert_eq!(all.len(), 3, "{all:?}");
    for n in ["pam-a", "pam-b", "act-1"] {
        assert_eq!(state_of(&all, n), "agrees", "{all:?}");
    }

    // Stage key 2 on the primary: published automatically; the other two
    // lack it.
    let out = ok(&kf(&primary, &reg, &["rotate", "--stage"]));
    assert!(out.contains("published to the node registry"), "{out}");
    let all = states(&primary, &reg);
    assert_eq!(state_of(&all, "pam-a"), "agrees");
    assert_eq!(state_of(&all, "pam-b"), "lacks keys 2");
    assert_eq!(state_of(&all, "act-1"), "lacks keys 2");
    let text = ok(&kf(&primary, &reg, &["nodes"]));
    assert!(text.contains("act-1") && text.contains("Action"), "{text}");
    // `ha status` shows the pair's agreement line (the pair itself is not
    // reachable here: only the line is judged).
    ok(&kf(
        &primary,
        &reg,
        &[
            "ha",
            "init",
            "--node",
            "pam-a",
            "--primary",
            "192.0.2.1",
            "--secondary",
            "192.0.2.2",
        ],
    ));
    let out = kf(
        &primary,
        &reg,
        &["ha", "status", "--json", "--timeout-ms", "300"],
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = status["keys"].as_str().unwrap_or_default();
    assert!(
        keys.starts_with("keys: 1 of 3 registered nodes agree")
            && keys.contains("pam-b lacks keys 2")
            && keys.contains("act-1 lacks keys 2"),
        "{status:#}"
    );

    // The secondary imports (and publishes on its own); the Action host
    // has not yet: promote is refused, naming it, and nothing changes.
    ok(&carry(&primary, &secondary, &reg, "k2.exp"));
    assert_eq!(state_of(&states(&primary, &reg), "pam-b"), "agrees");
    let before = snapshot(&primary.home);
    let out = kf(&primary, &reg, &["promote", "2"]);
    assert_eq!(out.status.code(), Some(12), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("act-1") && err.contains("lack key 2"), "{err}");
    assert!(!err.contains("pam-b"), "{err}");
    assert_same(&before, &snapshot(&primary.home));
    // Also without the password file, from a --password-file source: the
    // same refusal (the registry was read).
    let pw = primary.path("regpw");
    fs::write(&pw, format!("{REG_PASSWORD}\n")).unwrap();
    let out = primary
        .cmd()
        .env("PGPASSFILE", "/nonexistent")
        .args(["promote", "2", "--password-file"])
        .arg(&pw)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("act-1"));
    assert_same(&before, &snapshot(&primary.home));

    // The Action host imports; its operator reads the new fingerprint
    // (the primary's keyring now: keys 1 and 2).
    ok(&carry(&primary, &action, &reg, "k2b.exp"));
    let out = ok(&kf(
        &primary,
        &reg,
        &[
            "nodes",
            "add",
            "act-1",
            "--role",
            "action",
            "--fingerprint",
            &action.fingerprint(),
        ],
    ));
    assert!(out.contains("keys 1,2"), "{out}");
    let staged_fp = action.fingerprint();
    let out = ok(&kf(&primary, &reg, &["promote", "2"]));
    assert!(out.contains("published to the node registry"), "{out}");
    let all = states(&primary, &reg);
    assert_eq!(state_of(&all, "pam-a"), "agrees");
    assert_eq!(state_of(&all, "pam-b"), "has the keys, older primary");
    assert_eq!(state_of(&all, "act-1"), "has the keys, older primary");
    // A past keyring state is identified by the audit record that made it
    // (its key ids are on record); a fingerprint never seen is unknown.
    let out = ok(&kf(
        &primary,
        &reg,
        &[
            "nodes",
            "add",
            "sched-1",
            "--role",
            "scheduler",
            "--fingerprint",
            &staged_fp,
        ],
    ));
    assert!(
        out.contains("keys 1,2") && out.contains("audit record"),
        "{out}"
    );
    let unknown = format!("kf1:{}", "ab".repeat(20));
    let out = kf(
        &primary,
        &reg,
        &[
            "nodes",
            "add",
            "sched-2",
            "--role",
            "scheduler",
            "--fingerprint",
            &unknown,
        ],
    );
    assert!(ok(&out).contains("keys unknown"));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("warning:"));
    assert!(state_of(&states(&primary, &reg), "sched-2").starts_with("unknown keys"));
    ok(&kf(&primary, &reg, &["nodes", "remove", "sched-1"]));
    ok(&kf(&primary, &reg, &["nodes", "remove", "sched-2"]));
    assert_eq!(states(&primary, &reg).len(), 3);

    // An automatic publish that fails (no password for the registry) does
    // not fail the import: one warning line says how to publish later.
    let bundle = primary.path("k3.exp");
    primary.export(&bundle, &[]);
    let out = secondary
        .import_cmd(&bundle)
        .env("PGPASSFILE", "/nonexistent")
        .output()
        .unwrap();
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("keyferry nodes publish"), "{stderr}");
    assert!(!stderr.contains(REG_PASSWORD));
    assert_eq!(
        state_of(&states(&primary, &reg), "pam-b"),
        "has the keys, older primary"
    );
    ok(&kf(&secondary, &reg, &["nodes", "publish"]));
    assert_eq!(state_of(&states(&primary, &reg), "pam-b"), "agrees");

    // The registry holds no secret and the audit log says who connected.
    let log = fs::read_to_string(primary.home.join("audit.log")).unwrap();
    assert!(log.contains("nodes-connect") && log.contains("key_ids_after"));
    assert!(!log.contains(REG_PASSWORD));
}

/// Issue 23 item 5: a registry row is written by whoever can reach the
/// registry, so its strings are hostile. Every one (name, fingerprint,
/// version) reaches the terminal escaped in `nodes`.
#[test]
fn a_hostile_registry_row_reaches_the_terminal_escaped() {
    let primary = Node::initialised();
    let Some(reg) = start(primary.dir.path()) else {
        return;
    };
    ok(&kf(
        &primary,
        &reg,
        &["nodes", "connect", "--dsn", &reg.dsn, "--name", "pam-a"],
    ));
    // Prefixed: the name begins its row, and a row must not begin with a
    // hostile string's `x`.
    let hostile = format!("evil-{}", common::hazard::hostile());
    reg.server
        .connect()
        .execute(
            "INSERT INTO keyferry_nodes (name, role, fingerprint, key_ids, primary_id, version) \
             VALUES ($1, 'action', $1, '{1}', 1, $1)",
            &[&hostile],
        )
        .unwrap();
    let out = kf(&primary, &reg, &["nodes"]);
    let shown = ok(&out);
    assert!(shown.contains("pam-a"), "{shown}");
    common::hazard::assert_no_hazard("nodes", &shown);
    common::hazard::assert_no_hazard("nodes (stderr)", &String::from_utf8_lossy(&out.stderr));
}

/// The registry row of `name`: (fingerprint, key ids, primary id).
fn row(server: &PgServer, name: &str) -> (String, Vec<i32>, i32) {
    let r = server
        .connect()
        .query_one(
            "SELECT fingerprint, key_ids, primary_id FROM keyferry_nodes WHERE name = $1",
            &[&name],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

fn assert_row_is(server: &PgServer, node: &Node, ids: &[i32], primary: i32) {
    let (fp, got_ids, got_primary) = row(server, "pam-a");
    assert_eq!(fp, node.fingerprint());
    assert_eq!((got_ids.as_slice(), got_primary), (ids, primary));
}

#[test]
fn registry_follows_the_primary_and_every_key_change_publishes() {
    let node = Node::initialised();
    let Some(mut reg) = start(node.dir.path()) else {
        return;
    };
    let replica = reg.server.start_replica();
    let (p, r) = (reg.port, replica.port());
    let at_primary = format!("registry at 127.0.0.1:{p}/postgres");
    let at_replica = format!("registry at 127.0.0.1:{r}/postgres");
    // The replica is listed first: keyferry asks for a writable server, so
    // it goes on to the primary, and says so.
    let dsn = format!("host=127.0.0.1,127.0.0.1 port={r},{p} user=kf dbname=postgres");
    let out = ok(&kf(
        &node,
        &reg,
        &["nodes", "connect", "--dsn", &dsn, "--name", "pam-a"],
    ));
    assert!(out.contains(&at_primary), "{out}");

    // Every key change publishes, naming where.
    let out = ok(&kf(&node, &reg, &["rotate"]));
    assert!(
        out.contains(&format!("published to the node {at_primary}")),
        "{out}"
    );
    assert_row_is(&reg.server, &node, &[1, 2], 2);
    let out = ok(&kf(&node, &reg, &["disable", "1"]));
    assert!(
        out.contains(&format!("published to the node {at_primary}")),
        "{out}"
    );
    let disabled_fp = node.fingerprint();
    assert_eq!(row(&reg.server, "pam-a").0, disabled_fp);
    let out = ok(&kf(&node, &reg, &["enable", "1"]));
    assert!(out.contains("published to the node registry"), "{out}");
    ok(&kf(&node, &reg, &["disable", "1"]));
    let out = ok(&kf(&node, &reg, &["destroy", "1", "--yes"]));
    assert!(
        out.contains(&format!("published to the node {at_primary}")),
        "{out}"
    );
    // The destroyed key's material is gone: the row shows key 2 only.
    assert_row_is(&reg.server, &node, &[2], 2);

    // A missing registry password names the role and where it is read from.
    let out = node
        .cmd()
        .env("PGPASSFILE", "/nonexistent/pgpass")
        .args(["nodes", "publish"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("user kf's password")
            && err.contains("/nonexistent/pgpass (named by PGPASSFILE) does not exist")
            && err.contains("--password-file")
            && !err.contains("invalid configuration"),
        "{err}"
    );

    // Switchover: the old primary stops, the replica is promoted. The same
    // connection, unchanged, now reaches the new primary.
    reg.server.stop_clean();
    let promoted: bool = replica
        .connect()
        .query_one("SELECT pg_promote(true, 30)", &[])
        .unwrap()
        .get(0);
    assert!(promoted);
    ok(&kf(&node, &reg, &["rotate", "--stage"]));
    let out = ok(&kf(&node, &reg, &["nodes", "publish"]));
    assert!(out.contains(&at_replica), "{out}");
    assert!(!out.contains(&at_primary), "{out}");
    assert_row_is(&replica, &node, &[2, 3], 2);
    let out = ok(&kf(&node, &reg, &["nodes"]));
    assert!(out.contains(&at_replica), "{out}");
}
