//! `keyferry ha rejoin` on the old primary after a failover, against real
//! PostgreSQL servers on two hosts (see tests/common/pair.rs): the
//! secondary is bootstrapped, the pair fails over to it with `ha failover`,
//! and the old primary comes back as its replica — by `pg_rewind` when the
//! old primary's cluster allows it (`wal_log_hints`), refused without
//! `--force` when it wrote transactions the new primary never received; by
//! a bootstrap that keeps its data aside when it does not. Needs root,
//! `ip netns` and PostgreSQL; skips otherwise (fails with
//! `KEYFERRY_REQUIRE_PG=1`).
#![cfg(unix)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::netns::{ADDR_A, ADDR_B};
use common::pair::*;

/// The secondary bootstrapped from the primary, the secondary's
/// `pg_hba.conf` letting the primary in, and a home for the primary.
fn streaming_pair(tag: &str, conf: &[&str]) -> Option<(Pair, PathBuf)> {
    let pair = Pair::with_conf(tag, 1, conf)?;
    pair.primary
        .connect()
        .batch_execute(common::pg::HA_GRANTS)
        .unwrap();
    let out = pair.bootstrap(&["--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut hba = fs::read(pair.data().join("pg_hba.conf")).unwrap();
    hba.extend_from_slice(
        format!(
            "host replication repuser {ADDR_A}/32 scram-sha-256\n\
             host all repuser {ADDR_A}/32 scram-sha-256\n"
        )
        .as_bytes(),
    );
    fs::write(pair.data().join("pg_hba.conf"), hba).unwrap();
    pair.secondary
        .connect()
        .batch_execute("SELECT pg_reload_conf()")
        .unwrap();
    let home_a = pair.tmp.path().join("home-a");
    common::succeeded(&pair.keyferry_on_a(&home_a, &["init"]));
    pair.ha_init(&pair.ns.a, &home_a, "pam-a", pair.primary.data_dir());
    Some((pair, home_a))
}

fn rejoin(pair: &Pair, home_a: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "ha",
        "rejoin",
        "--password-file",
        pair.pw_file.to_str().unwrap(),
        "--timeout",
        "60",
    ];
    args.extend(extra);
    pair.keyferry_on_a(home_a, &args)
}

/// `ADDR_A` streams from the new primary (the secondary's server).
fn a_streams_from_b(pair: &Pair) {
    let query = format!(
        "SELECT 1 FROM pg_stat_replication WHERE host(client_addr) = '{ADDR_A}' AND state = 'streaming'"
    );
    wait_for(
        "the old primary to stream from the new one",
        Duration::from_secs(30),
        || {
            pair.secondary
                .connect()
                .query(&query, &[])
                .is_ok_and(|r| r.len() == 1)
        },
    );
}

#[test]
fn a_diverged_old_primary_is_rewound_only_with_force() {
    let Some((pair, home_a)) =
        streaming_pair("rw", &["wal_log_hints = on", "wal_keep_size = 256MB"])
    else {
        return;
    };
    // The link goes down; the old primary goes on accepting writes that the
    // replica never receives, and the replica is failed over to: forced,
    // since a cut network gives no answer and the failover fails closed.
    pair.ns.set_link_b(false);
    pair.primary
        .connect()
        .batch_execute(
            "CREATE TABLE lost_on_a (x int); INSERT INTO lost_on_a SELECT generate_series(1, 1000)",
        )
        .unwrap();
    let out = pair.keyferry(&[
        "ha",
        "failover",
        "--password-file",
        pair.pw_file.to_str().unwrap(),
        "--timeout-ms",
        "500",
    ]);
    assert_eq!(out.status.code(), Some(13), "failover: {}", text(&out));
    assert!(text(&out).contains("no answer"), "{}", text(&out));
    let out = pair.keyferry(&[
        "ha",
        "failover",
        "--force",
        "--password-file",
        pair.pw_file.to_str().unwrap(),
        "--timeout-ms",
        "500",
    ]);
    assert!(out.status.success(), "failover: {}", text(&out));
    pair.ns.set_link_b(true);
    pair.secondary
        .connect()
        .batch_execute("CREATE TABLE written_on_b (x int); INSERT INTO written_on_b VALUES (7)")
        .unwrap();
    let conf_before = fs::read(pair.primary.data_dir().join("postgresql.conf")).unwrap();
    let hba_before = fs::read(pair.primary.data_dir().join("pg_hba.conf")).unwrap();

    // --dry-run: the plan, nothing done.
    let out = rejoin(&pair, &home_a, &["--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pg_rewind"), "{}", text(&out));
    assert!(pair.primary.is_running(), "a dry run stops nothing");

    // Without --force: refused, with how much WAL would be lost.
    let out = rejoin(&pair, &home_a, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("--force") && text(&out).contains("of WAL"),
        "{}",
        text(&out)
    );
    assert!(!pair.primary.is_running(), "the demoted node stays stopped");

    let out = rejoin(&pair, &home_a, &["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rewind"), "{}", text(&out));
    a_streams_from_b(&pair);
    assert_eq!(
        fs::read(pair.primary.data_dir().join("postgresql.conf")).unwrap(),
        conf_before
    );
    assert_eq!(
        fs::read(pair.primary.data_dir().join("pg_hba.conf")).unwrap(),
        hba_before
    );
    let mut a = pair.primary.connect();
    assert!(
        a.query("SELECT 1 FROM lost_on_a", &[]).is_err(),
        "the diverged rows are gone"
    );
    wait_for(
        "the new primary's row on the old one",
        Duration::from_secs(20),
        || {
            pair.primary
                .connect()
                .query("SELECT x FROM written_on_b", &[])
                .is_ok_and(|r| r.len() == 1)
        },
    );
    let toml = fs::read_to_string(home_a.join("ha.toml")).unwrap();
    assert!(toml.contains(&format!("primary = \"{ADDR_B}\"")), "{toml}");
    assert!(!toml.contains("demoted = true"), "{toml}");
    common::succeeded(&pair.keyferry_on_a(&home_a, &["audit", "verify"]));
}

#[test]
fn without_wal_log_hints_the_rejoin_is_a_bootstrap_that_keeps_the_old_data() {
    let Some((mut pair, home_a)) = streaming_pair("rb", &[]) else {
        return;
    };
    pair.primary.stop();
    let out = pair.keyferry(&[
        "ha",
        "failover",
        "--password-file",
        pair.pw_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "failover: {}", text(&out));
    let out = rejoin(&pair, &home_a, &["--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("wal_log_hints"), "{}", text(&out));
    // The password from a descriptor, which can be read only once: the
    // fallback bootstrap must not read it again.
    let out = Pair::keyferry_cmd(
        &pair.ns.a,
        &home_a,
        &["ha", "rejoin", "--password-fd", "0", "--timeout", "60"],
    )
    .stdin(fs::File::open(&pair.pw_file).unwrap())
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let parent = pair.primary.data_dir().parent().unwrap().to_path_buf();
    let kept: Vec<_> = fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("data.old-"))
        .collect();
    assert_eq!(kept.len(), 1, "the old data is kept: {kept:?}");
    a_streams_from_b(&pair);
}

/// The upgrade runbook's path: a switchover, the old primary stopped (for
/// its upgrade), then rejoined: it was a replica when it stopped, so it
/// follows the new primary without pg_rewind and without a copy.
#[test]
fn after_a_switchover_the_stopped_old_primary_just_follows() {
    let Some((pair, home_a)) = streaming_pair("rs", &[]) else {
        return;
    };
    let pw = pair.pw_file.to_str().unwrap();
    let out = pair.keyferry_on_a(&home_a, &["ha", "switchover", "--password-file", pw]);
    assert!(out.status.success(), "switchover: {}", text(&out));
    let out = pair.keyferry_on_a(&home_a, &["ha", "stop"]);
    assert!(out.status.success(), "stop: {}", text(&out));
    assert!(!pair.primary.is_running());
    let out = rejoin(&pair, &home_a, &["--dry-run"]);
    assert!(text(&out).contains("without pg_rewind"), "{}", text(&out));
    let out = rejoin(&pair, &home_a, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("follow"), "{}", text(&out));
    a_streams_from_b(&pair);
    let parent = pair.primary.data_dir().parent().unwrap();
    assert!(
        !fs::read_dir(parent).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("data.old-")),
        "no copy was made"
    );
}
