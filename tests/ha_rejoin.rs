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
use common::pg::{kill9_server, reap_orphans_here};

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
    assert!(!kept_aside(pair.primary.data_dir()), "no copy was made");
}

/// Whether a data directory was set aside beside `data` (`data.old-…`).
fn kept_aside(data: &Path) -> bool {
    fs::read_dir(data.parent().unwrap()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("data.old-")
    })
}

fn cluster_state(pair: &Pair, data: &Path) -> String {
    control_field(&pair.primary, data, "Database cluster state:")
}

/// A field of `pg_controldata` on the data directory `data` (run with the
/// server programs of `server`).
fn control_field(server: &common::pg::PgServer, data: &Path, field: &str) -> String {
    let out = server.run_tool("pg_controldata", &[data.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// The number before `word` in `text` ("changing 1027 row(s)" -> 1027).
fn number_before(text: &str, word: &str) -> Option<u64> {
    let (before, _) = text.split_once(word)?;
    before.split_whitespace().last()?.parse().ok()
}

/// The link is cut, the old primary commits rows the replica never gets,
/// the replica is failed over to; then the old primary dies (kill -9) and
/// the new one takes writes. The rejoin reads what the old primary wrote
/// after the divergence from its WAL before touching anything, refuses
/// without --force naming it, and with --force runs crash recovery in
/// single-user mode and pg_rewind: no copy is made.
#[test]
fn a_crashed_diverged_old_primary_is_recovered_and_rewound_only_with_force() {
    reap_orphans_here();
    let Some((pair, home_a)) =
        streaming_pair("rc", &["wal_log_hints = on", "wal_keep_size = 256MB"])
    else {
        return;
    };
    pair.ns.set_link_b(false);
    pair.primary
        .connect()
        .batch_execute(
            "CREATE TABLE lost_on_a (x int); INSERT INTO lost_on_a SELECT generate_series(1, 1000)",
        )
        .unwrap();
    // Across the cut link the old primary gives no answer: the failover
    // fails closed, so the operator, who knows it is cut off, forces it.
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
    let data_a = pair.primary.data_dir().to_path_buf();
    kill9_server(&data_a);
    assert!(!pair.primary.is_running());
    assert_eq!(cluster_state(&pair, &data_a), "in production");
    pair.ns.set_link_b(true);
    pair.secondary
        .connect()
        .batch_execute("CREATE TABLE written_on_b (x int); INSERT INTO written_on_b VALUES (7)")
        .unwrap();
    let control_before = fs::read(data_a.join("global/pg_control")).unwrap();

    let out = rejoin(&pair, &home_a, &["--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("crash recovery in single-user mode"),
        "{}",
        text(&out)
    );

    let out = rejoin(&pair, &home_a, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("--force") && said.contains("of WAL after the histories diverged"),
        "{said}"
    );
    assert!(
        number_before(&said, "committed transaction").is_some_and(|n| n >= 1),
        "{said}"
    );
    assert!(
        number_before(&said, "row(s)").is_some_and(|n| n >= 1000),
        "{said}"
    );
    assert!(
        !said.contains("pg_bin"),
        "the message names the real cause: {said}"
    );
    assert_eq!(
        fs::read(data_a.join("global/pg_control")).unwrap(),
        control_before,
        "a refusal leaves the crashed cluster as it was"
    );
    assert_eq!(cluster_state(&pair, &data_a), "in production");

    let out = rejoin(&pair, &home_a, &["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("rewind") && said.contains("after crash recovery"),
        "{said}"
    );
    assert!(!said.contains("bootstrap"), "{said}");
    assert!(!kept_aside(&data_a), "rewound, not copied");
    a_streams_from_b(&pair);
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
    assert!(pair
        .primary
        .connect()
        .query("SELECT 1 FROM lost_on_a", &[])
        .is_err());
    let audit = fs::read_to_string(home_a.join("audit.log")).unwrap();
    assert!(audit.contains("\"crash_recovered\":true"), "{audit}");
    assert!(audit.contains("\"forced\":true"), "{audit}");
    common::succeeded(&pair.keyferry_on_a(&home_a, &["audit", "verify"]));
}

/// Without wal_log_hints the rejoin is a bootstrap; when the old primary
/// committed rows after the divergence (and then crashed), the bootstrap
/// refuses as the rewind does, and with --force the audit log names
/// where the data directory was set aside.
#[test]
fn the_fallback_bootstrap_refuses_a_diverged_old_primary_without_force() {
    reap_orphans_here();
    let Some((pair, home_a)) = streaming_pair("rf", &[]) else {
        return;
    };
    pair.ns.set_link_b(false);
    pair.primary
        .connect()
        .batch_execute(
            "CREATE TABLE lost_on_a (x int); INSERT INTO lost_on_a SELECT generate_series(1, 149)",
        )
        .unwrap();
    // Across the cut link the old primary gives no answer: the failover
    // fails closed, so the operator, who knows it is cut off, forces it.
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
    let data_a = pair.primary.data_dir().to_path_buf();
    kill9_server(&data_a);
    pair.ns.set_link_b(true);
    let control_before = fs::read(data_a.join("global/pg_control")).unwrap();

    let out = rejoin(&pair, &home_a, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("bootstrap") && said.contains("--force"),
        "{said}"
    );
    assert!(
        number_before(&said, "row(s)").is_some_and(|n| n >= 149),
        "{said}"
    );
    let parent = data_a.parent().unwrap().to_path_buf();
    let kept = |parent: &Path| -> Vec<PathBuf> {
        fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("data.old-")
            })
            .collect()
    };
    assert!(
        kept(&parent).is_empty(),
        "nothing set aside without --force"
    );
    assert_eq!(
        fs::read(data_a.join("global/pg_control")).unwrap(),
        control_before
    );

    let out = rejoin(&pair, &home_a, &["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let aside = kept(&parent);
    assert_eq!(aside.len(), 1, "the old data is kept: {aside:?}");
    let audit = fs::read_to_string(home_a.join("audit.log")).unwrap();
    let recorded = format!("\"set_aside\":\"{}\"", aside[0].display());
    assert!(audit.contains(&recorded), "{recorded} in {audit}");
    a_streams_from_b(&pair);
    common::succeeded(&pair.keyferry_on_a(&home_a, &["audit", "verify"]));
}

/// The pair's record and the replica's actual upstream are checked before
/// a generation is written into ha.toml: `ha status` on the replica
/// leaves the file byte for byte when the record names a primary that is
/// neither of its addresses, or one the replica does not stream from, and
/// writes the generation when all agree.
#[test]
fn status_writes_a_generation_only_into_an_ha_toml_that_agrees() {
    let Some(pair) = Pair::new("rg", 0) else {
        return;
    };
    pair.primary
        .connect()
        .batch_execute(common::pg::HA_GRANTS)
        .unwrap();
    let out = pair.bootstrap(&["--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let toml = pair.home.join("ha.toml");
    let record = |generation: i64, primary: &str| {
        pair.primary
            .connect()
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS public.keyferry_pair (generation bigint PRIMARY KEY, \
                 primary_addr text NOT NULL, changed_at timestamptz NOT NULL DEFAULT now(), \
                 by_node text NOT NULL, action text NOT NULL); \
                 GRANT SELECT ON public.keyferry_pair TO repuser; \
                 INSERT INTO public.keyferry_pair (generation, primary_addr, by_node, action) \
                 VALUES ({generation}, '{primary}', 'elsewhere', 'failover')"
            ))
            .unwrap();
        wait_for("the record on the replica", Duration::from_secs(20), || {
            pair.secondary
                .connect()
                .query(
                    &format!("SELECT 1 FROM public.keyferry_pair WHERE generation = {generation}"),
                    &[],
                )
                .is_ok_and(|r| r.len() == 1)
        });
    };
    let status = || {
        pair.keyferry(&[
            "ha",
            "status",
            "--password-file",
            pair.pw_file.to_str().unwrap(),
        ])
    };

    // The record says the secondary (this replica) became the primary,
    // but it runs as a replica (streaming from ADDR_A): not followed.
    let before = fs::read(&toml).unwrap();
    record(4, ADDR_B);
    let out = status();
    assert!(
        text(&out).contains(&format!(
            "names {ADDR_B} as the primary, but it runs as a replica"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(fs::read(&toml).unwrap(), before, "ha.toml left as it was");

    // A record naming an address ha.toml does not have (a typo).
    record(5, "10.213.0.11");
    let out = status();
    assert!(text(&out).contains("10.213.0.11"), "{}", text(&out));
    assert_eq!(fs::read(&toml).unwrap(), before, "ha.toml left as it was");

    // All agree: the generation is written.
    record(6, ADDR_A);
    let out = status();
    let after = fs::read_to_string(&toml).unwrap();
    assert!(after.contains("generation = 6"), "{}\n{after}", text(&out));
    assert!(
        after.contains(&format!("primary = \"{ADDR_A}\"")),
        "{after}"
    );
}

/// An old primary promoted by a switchover, cut off, committing, and
/// killed before its first checkpoint on the timeline it was promoted to
/// (its control file still names the timeline before: the checkpoint
/// after a promotion is a spread one). What it committed is measured on
/// the timeline it wrote it on, so the rejoin refuses without --force.
/// It once measured the control file's timeline, found nothing after the
/// fork there, and set the commits aside unasked (the randomized fault
/// runs of ha_faults.rs found it).
#[test]
fn an_old_primary_killed_before_its_first_checkpoint_is_measured_on_its_own_timeline() {
    use common::switch::{sql, text, SwitchPair};
    reap_orphans_here();
    let Some(pair) = SwitchPair::new("rt") else {
        return;
    };
    // Many dirty buffers on the replica, so the checkpoint that follows
    // its promotion takes minutes.
    sql(pair.a.socket_dir())
        .unwrap()
        .batch_execute(
            "CREATE TABLE filler AS SELECT g AS x, repeat('x', 200) AS pad FROM generate_series(1, 100000) g",
        )
        .unwrap();
    let out = pair.ha(
        true,
        &["switchover", "--timeout", "60", "--max-lag", "1GiB"],
    );
    assert!(out.status.success(), "switchover: {}", text(&out));
    wait_for("a streams from b", Duration::from_secs(60), || {
        pair.streams(false)
    });
    pair.ns.set_link_b(false);
    sql(pair.b.socket_dir())
        .unwrap()
        .batch_execute(
            "CREATE TABLE lost_on_b (x int); INSERT INTO lost_on_b SELECT generate_series(1, 100)",
        )
        .unwrap();
    kill9_server(pair.b.data_dir());
    let tli = control_field(
        &pair.b,
        pair.b.data_dir(),
        "Latest checkpoint's TimeLineID:",
    );
    assert_eq!(
        tli, "1",
        "the checkpoint after b's promotion ended before the kill: this case needs it not to"
    );
    pair.ns.set_link_b(true);
    let out = pair.ha(true, &["failover", "--timeout-ms", "1000"]);
    assert!(out.status.success(), "failover: {}", text(&out));

    let out = pair.ha(false, &["rejoin", "--timeout", "120"]);
    let said = text(&out);
    assert!(!out.status.success(), "rejoined without --force: {said}");
    assert!(
        said.contains("--force") && said.contains("on timeline 2"),
        "{said}"
    );
    assert!(
        !kept_aside(pair.b.data_dir()),
        "the data directory was set aside without --force"
    );
    assert!(!common::switch::accepts_writes(pair.b.socket_dir()));
}
