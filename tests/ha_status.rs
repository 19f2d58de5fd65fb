//! `keyferry ha status` on a real pair on two hosts: the primary in network
//! namespace `a` (10.213.0.1), its streaming replica in `b` (10.213.0.2),
//! each PostgreSQL on the pair's one port with a listener on the
//! web-services port, the replica streaming over TCP as the replication
//! user (REPLICATION and pg_monitor, nothing more).
//!
//! One pair serves every case, in an order that only ever takes things
//! away: healthy from both nodes (text and JSON, an old data directory
//! listed without changing the verdict), a wrong password while the
//! replica streams (unknown, exit 15, not down), an abandoned slot over a tiny
//! `--slot-warn`, the replica's host cut off (returns within the timeout),
//! the replica stopped (degraded, `Stopped` on its own node), the primary
//! stopped (down). Needs root, `ip netns` and PostgreSQL; skips otherwise
//! (fails with `KEYFERRY_REQUIRE_PG=1`).
#![cfg(unix)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::netns::{NetnsPair, WebService, ADDR_A, ADDR_B};
use common::pg::{PgOptions, PgServer};
use serde_json::Value;

const PG_PORT: u16 = 5432;
const WEB_PORT: u16 = 6500;
const PASSWORD: &str = "status replication password";
const TIMEOUT_MS: u64 = 2000;

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("keyferry")
}

/// `keyferry --home HOME ha status ARGS…` on the host of namespace `ns`,
/// and how long it took.
fn status(ns: &str, home: &Path, pw: &Path, args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = NetnsPair::exec(ns, &bin())
        .arg("--home")
        .arg(home)
        .args(["ha", "status", "--timeout-ms", &TIMEOUT_MS.to_string()])
        .arg("--password-file")
        .arg(pw)
        .args(args)
        .env_remove("KEYFERRY_HOME")
        .env("PGPASSFILE", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = start.elapsed();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(PASSWORD), "the password was printed: {all}");
    (out, took)
}

/// `ha status --json`: exit code and the parsed object.
fn json(ns: &str, home: &Path, pw: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend(args);
    let (out, _) = status(ns, home, pw, &all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

/// `ha status` as text: exit code and stdout.
fn text(ns: &str, home: &Path, pw: &Path) -> (i32, String) {
    let (out, _) = status(ns, home, pw, &[]);
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn is_lsn(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.split_once('/').is_some_and(|(hi, lo)| {
            !hi.is_empty()
                && !lo.is_empty()
                && (hi.to_owned() + lo).chars().all(|c| c.is_ascii_hexdigit())
        })
    })
}

/// Waits until the primary shows the replica streaming from `ADDR_B`.
fn wait_streaming(primary: &PgServer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = primary
            .connect()
            .query(
                "SELECT 1 FROM pg_stat_replication WHERE host(client_addr) = $1 AND state = 'streaming'",
                &[&ADDR_B],
            )
            .unwrap();
        if !rows.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not stream over TCP"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ha_init(home: &Path, node: &str, server: &PgServer, archive: &Path) {
    common::succeeded(&common::keyferry_in(
        home,
        &[
            "ha",
            "init",
            "--node",
            node,
            "--primary",
            ADDR_A,
            "--secondary",
            ADDR_B,
            "--pg-port",
            &PG_PORT.to_string(),
            "--web-port",
            &WEB_PORT.to_string(),
            "--pg-bin",
            server.bin_dir().to_str().unwrap(),
            "--pg-data",
            server.data_dir().to_str().unwrap(),
            "--archive-dir",
            archive.to_str().unwrap(),
        ],
    ));
}

#[test]
fn status_of_a_pair_from_both_nodes_as_it_loses_its_parts() {
    let Some(ns) = NetnsPair::create("s") else {
        return;
    };
    let Some(mut primary) = PgServer::start_primary(PgOptions {
        extra_conf: vec![format!("listen_addresses = '{ADDR_A},127.0.0.1'")],
        netns: Some(ns.a.clone()),
    }) else {
        return;
    };
    primary.move_to_port(PG_PORT);
    primary.create_replication_user("repuser", PASSWORD);
    let mut hba = primary.read_hba();
    hba.extend_from_slice(b"host all,replication repuser 10.213.0.0/24 scram-sha-256\n");
    primary.write_hba(&hba);
    primary
        .connect()
        .batch_execute(&format!(
            "GRANT pg_monitor TO repuser; {}; SELECT pg_reload_conf();",
            common::pg::HA_GRANTS
        ))
        .unwrap();
    let mut replica = primary.start_replica_with(PgOptions {
        extra_conf: vec![format!("listen_addresses = '{ADDR_B},127.0.0.1'")],
        netns: Some(ns.b.clone()),
    });
    replica.move_to_port(PG_PORT);
    // Stream over TCP as the replication user, as a real secondary does
    // (the base backup's conninfo uses the primary's socket).
    let mut admin = replica.connect();
    admin
        .batch_execute(&format!(
            "ALTER SYSTEM SET primary_conninfo = 'host={ADDR_A} port={PG_PORT} user=repuser password=''{PASSWORD}'' application_name=secondary'"
        ))
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_streaming(&primary);
    let _web_a = WebService::start(&ns.a, ADDR_A, WEB_PORT);
    let _web_b = WebService::start(&ns.b, ADDR_B, WEB_PORT);

    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| tmp.path().join(name);
    let (home_a, home_b) = (path("home-a"), path("home-b"));
    for dir in ["archive-a", "archive-b"] {
        fs::create_dir(path(dir)).unwrap();
    }
    ha_init(&home_a, "pam-a", &primary, &path("archive-a"));
    ha_init(&home_b, "pam-b", &replica, &path("archive-b"));
    fs::write(
        path("archive-a").join("000000010000000000000001"),
        [0u8; 64],
    )
    .unwrap();
    let pw = path("repuser.pw");
    fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    // What a bootstrap keeps beside the data directory: information only.
    let old = PathBuf::from(format!(
        "{}.old-20260101T000000Z",
        primary.data_dir().display()
    ));
    fs::create_dir_all(old.join("base")).unwrap();
    fs::write(old.join("base/1259"), vec![7u8; 5000]).unwrap();

    // Healthy, as text from the secondary.
    let (code, out) = text(&ns.b, &home_b, &pw);
    assert_eq!(code, 0, "{out}");
    // Shown with --nocapture: the report as the operator sees it.
    eprintln!("{out}");
    for words in [
        "primary   10.213.0.1      Running Primary, timeline 1",
        "secondary 10.213.0.2      Running Replica, timeline 1",
        "upstream 10.213.0.1:5432 (this node)",
        "replication Active (state streaming, sync async)",
        "verdict: healthy",
    ] {
        assert!(out.contains(words), "{words:?} in:\n{out}");
    }

    // Healthy, as JSON from the primary, field by field.
    let (code, r) = json(&ns.a, &home_a, &pw, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["verdict"], "healthy", "{r:#}");
    assert_eq!(r["summary"], "healthy");
    assert_eq!(r["reasons"], serde_json::json!([]));
    assert_eq!(r["this_node"], "primary");
    let nodes = r["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let (p, s) = (&nodes[0], &nodes[1]);
    assert_eq!(
        (&p["name"], &p["address"], &p["this_node"]),
        (&"primary".into(), &ADDR_A.into(), &true.into())
    );
    assert_eq!(p["role"], "Running Primary");
    assert_eq!(p["timeline"], 1);
    assert!(is_lsn(&p["lsn"]) && p["lsn"] == p["current_lsn"], "{p:#}");
    assert!(
        p["via"].as_str().unwrap().starts_with("socket ")
            && p["via"].as_str().unwrap().ends_with(" as postgres"),
        "this node's own server through its socket as its owner: {p:#}"
    );
    assert_eq!(p["web_port_open"], true);
    assert_eq!(
        (&s["name"], &s["address"], &s["this_node"]),
        (&"secondary".into(), &ADDR_B.into(), &false.into())
    );
    assert_eq!(s["role"], "Running Replica");
    assert_eq!(s["timeline"], 1);
    assert!(
        is_lsn(&s["lsn"]) && is_lsn(&s["receive_lsn"]) && s["lsn"] == s["replay_lsn"],
        "{s:#}"
    );
    assert_eq!(s["via"], format!("{ADDR_B}:{PG_PORT} as repuser"));
    assert_eq!(s["upstream"], format!("{ADDR_A}:{PG_PORT}"));
    let rep = &r["replication"];
    assert_eq!(rep["active"], true, "{rep:#}");
    assert_eq!(rep["state"], "streaming");
    assert_eq!(rep["sync_state"], "async");
    assert_eq!(rep["standby_address"], ADDR_B);
    assert_eq!(rep["upstream"], format!("{ADDR_A}:{PG_PORT}"));
    assert!(rep["lag_bytes"].is_u64(), "{rep:#}");
    assert!(
        rep["lag_seconds"].as_f64().is_some_and(|s| s >= 0.0),
        "{rep:#}"
    );
    assert_eq!(r["slots"], serde_json::json!([]));
    assert_eq!(r["slot_warn_bytes"], 1u64 << 30);
    let old_dirs = r["old_data_dirs"].as_array().unwrap();
    assert_eq!(old_dirs.len(), 1, "{r:#}");
    assert_eq!(old_dirs[0]["path"], old.to_str().unwrap());
    assert_eq!(old_dirs[0]["kept_at"], "2026-01-01T00:00:00Z");
    assert_eq!(
        (&old_dirs[0]["bytes"], &old_dirs[0]["complete"]),
        (&5000.into(), &true.into())
    );
    assert_eq!(
        (&r["archive"]["wal_files"], &r["archive"]["bytes"]),
        (&1.into(), &64.into())
    );
    assert!(r["notes"].is_array());

    // ha check reports the rights, the slots and the kept directory.
    let check = NetnsPair::exec(&ns.a, &bin())
        .arg("--home")
        .arg(&home_a)
        .args(["ha", "check", "--json", "--password-file"])
        .arg(&pw)
        .env("PGPASSFILE", "/nonexistent")
        .output()
        .unwrap();
    let checks: Value = serde_json::from_slice(&check.stdout).unwrap();
    let find = |name: &str| {
        checks["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {checks:#}"))
            .clone()
    };
    assert_eq!(find("rights")["status"], "ok", "{:#}", find("rights"));
    assert_eq!(find("slots")["status"], "ok");
    // initdb's defaults: no data checksums, wal_log_hints off on both.
    let rewind = find("rewind");
    assert_eq!(rewind["status"], "warn", "{rewind:#}");
    for side in ["the primary", "the secondary"] {
        assert!(
            rewind["message"]
                .as_str()
                .unwrap()
                .contains(&format!("{side} (")),
            "{rewind:#}"
        );
    }
    assert!(
        rewind["message"]
            .as_str()
            .unwrap()
            .contains("runs with neither wal_log_hints nor data checksums"),
        "{rewind:#}"
    );
    let kept = find("old_data");
    assert!(
        kept["message"]
            .as_str()
            .unwrap()
            .contains(".old-20260101T000000Z (4.9 KiB"),
        "{kept:#}"
    );

    // A wrong replication password, seen from the replica that streams:
    // the primary answers and refuses, so the pair's state cannot be told
    // (exit 15) — never "down: no running primary".
    let wrong = path("wrong.pw");
    fs::write(&wrong, "not the password\n").unwrap();
    fs::set_permissions(&wrong, fs::Permissions::from_mode(0o600)).unwrap();
    let (code, r) = json(&ns.b, &home_b, &wrong, &[]);
    assert_eq!(code, 15, "{r:#}");
    assert_eq!(r["verdict"], "unknown", "{r:#}");
    assert_eq!(r["nodes"][0]["role"], "Unknown", "{r:#}");
    assert_eq!(r["nodes"][1]["role"], "Running Replica", "{r:#}");
    let summary = r["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("unknown: primary 10.213.0.1 cannot be read")
            && summary.contains("password authentication failed")
            && summary.contains("(a replica streams from it)")
            && !summary.contains("no running primary"),
        "{summary}"
    );

    // An abandoned slot holds WAL back: over a tiny --slot-warn it degrades.
    primary
        .connect()
        .batch_execute(
            "SELECT pg_create_physical_replication_slot('abandoned', true); \
             CREATE TABLE filler AS SELECT generate_series(1, 20000) AS n;",
        )
        .unwrap();
    let (code, r) = json(&ns.a, &home_a, &pw, &["--slot-warn", "1KiB"]);
    assert_eq!(code, 9, "{r:#}");
    let slot = &r["slots"][0];
    assert_eq!(
        (&slot["name"], &slot["active"]),
        (&"abandoned".into(), &false.into())
    );
    assert!(slot["retained_bytes"].as_u64().unwrap() > 1024, "{slot:#}");
    assert_eq!(slot["over_threshold"], true);
    assert_eq!(r["verdict"], "degraded");
    assert!(
        r["summary"]
            .as_str()
            .unwrap()
            .contains("slot abandoned (inactive) retains"),
        "{r:#}"
    );
    let (code, r) = json(&ns.a, &home_a, &pw, &[]);
    assert_eq!(
        (code, &r["slots"][0]["over_threshold"]),
        (0, &false.into()),
        "{r:#}"
    );
    let check = NetnsPair::exec(&ns.a, &bin())
        .arg("--home")
        .arg(&home_a)
        .args(["ha", "check", "--password-file"])
        .arg(&pw)
        .env("PGPASSFILE", "/nonexistent")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains("warn slots") && out.contains("abandoned (physical) retains"),
        "{out}"
    );
    primary
        .connect()
        .batch_execute("SELECT pg_drop_replication_slot('abandoned')")
        .unwrap();

    // The secondary's host cut off: Unreachable, its web port silent too,
    // within the timeout (plus process start and margin).
    ns.set_link_b(false);
    let (out, took) = status(&ns.a, &home_a, &pw, &["--json"]);
    ns.set_link_b(true);
    // Shown with --nocapture: what an operator waits for with a host down.
    eprintln!("ha status with the secondary's host cut off (--timeout-ms {TIMEOUT_MS}): {took:?}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(9), "{r:#}");
    assert_eq!(r["nodes"][1]["role"], "Unreachable", "{r:#}");
    assert_eq!(r["nodes"][1]["web_port_open"], false);
    assert!(
        took < Duration::from_millis(TIMEOUT_MS) + Duration::from_secs(6),
        "took {took:?}"
    );
    assert!(
        r["summary"]
            .as_str()
            .unwrap()
            .contains("host down or cut off"),
        "{r:#}"
    );

    // The replica stopped: Stopped on its own node, Unreachable (with its
    // web port answering) from the primary's.
    replica.stop();
    let (code, r) = json(&ns.b, &home_b, &pw, &[]);
    assert_eq!(code, 9, "{r:#}");
    assert_eq!(r["nodes"][1]["role"], "Stopped");
    assert_eq!(r["replication"]["active"], false);
    assert!(
        r["summary"]
            .as_str()
            .unwrap()
            .starts_with("degraded: secondary 10.213.0.2 Stopped"),
        "{r:#}"
    );
    let (code, out) = text(&ns.a, &home_a, &pw);
    assert_eq!(code, 9, "{out}");
    eprintln!("{out}");
    assert!(
        out.contains(
            "Unreachable (web-services port 6500 answers: PostgreSQL is down, the host is up)"
        ),
        "{out}"
    );
    assert!(out.contains("verdict: degraded: "), "{out}");

    // The primary stopped too: down.
    primary.stop();
    let (code, r) = json(&ns.b, &home_b, &pw, &[]);
    assert_eq!(code, 10, "{r:#}");
    assert_eq!(r["verdict"], "down");
    assert_eq!(r["nodes"][0]["role"], "Unreachable");
    assert_eq!(r["nodes"][0]["web_port_open"], true);
    assert!(
        r["summary"]
            .as_str()
            .unwrap()
            .starts_with("down: no running primary"),
        "{r:#}"
    );
}
