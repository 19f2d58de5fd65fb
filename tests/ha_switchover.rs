//! `keyferry ha switchover`, `ha failover` and `ha guard` on a real pair on
//! two hosts: the primary in network namespace `a` (10.213.0.1), its
//! replica in `b` (10.213.0.2), made by hand (`pg_basebackup -R`, as an
//! operator would) and streaming over TCP as the replication user through
//! the slot `pam_b`; the replication user has REPLICATION, pg_monitor and
//! EXECUTE on pg_promote, nothing more.
//!
//! One pair serves every case, in order: failover refused while the
//! primary is up (nothing changed); a dry run (nothing changed);
//! switchover under a steady write load, both directions twice (every
//! acknowledged row is on the new primary, the old primary streams from
//! the new one, the slot follows); a switchover killed (kill -9) after the
//! old primary stopped, then `ha status` naming the fix and `--abort`
//! (one primary again); a switchover killed after the promotion, then
//! `--resume`; failover after an immediate shutdown of the primary
//! (writes accepted, roles swapped, generation raised); the old primary
//! refused by `ha guard` (exit 13). With `KEYFERRY_BENCH=1` it prints the
//! figures benches/switchover_pg.sh reports. Needs root, `ip netns` and
//! PostgreSQL; skips otherwise (fails with `KEYFERRY_REQUIRE_PG=1`).
#![cfg(unix)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::netns::{NetnsPair, ADDR_A, ADDR_B};
use common::switch::{accepts_writes, roles_of, sql, text, wait_until, Load, SwitchPair, PASSWORD};
use serde_json::Value;

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("keyferry")
}

/// `keyferry --home HOME ha ARGS… --password-file PW` on host `ns`.
fn ha_cmd(ns: &str, home: &Path, pw: &Path, args: &[&str]) -> Command {
    let mut c = NetnsPair::exec(ns, &bin());
    c.arg("--home")
        .arg(home)
        .arg("ha")
        .args(args)
        .arg("--password-file")
        .arg(pw)
        .env_remove("KEYFERRY_HOME")
        .env("PGPASSFILE", "/nonexistent")
        .stdin(Stdio::null());
    c
}

fn ha(ns: &str, home: &Path, pw: &Path, args: &[&str]) -> Output {
    let out = ha_cmd(ns, home, pw, args).output().unwrap();
    let all = text(&out);
    assert!(!all.contains(PASSWORD), "the password was printed: {all}");
    out
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        text(&out)
    );
    text(&out)
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

fn data_snapshot(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for name in [
        "standby.signal",
        "postgresql.auto.conf",
        "postgresql.conf",
        "pg_hba.conf",
    ] {
        let p = dir.join(name);
        out.push((
            p.clone(),
            fs::metadata(&p).map(|m| m.len()).unwrap_or(u64::MAX),
        ));
    }
    out
}

/// Waits until the journal of `home` is at `phase`, then kills keyferry.
fn kill_at(mut child: std::process::Child, home: &Path, phase: &str) {
    let journal = home.join("journal.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(t) = fs::read_to_string(&journal) {
            if t.contains(&format!("\"phase\": \"{phase}\"")) {
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("keyferry ended ({status}) before the phase {phase}");
        }
        assert!(Instant::now() < deadline, "the phase {phase} never came");
        std::thread::sleep(Duration::from_millis(1));
    }
    // `ip netns exec` execs keyferry: the child is keyferry itself.
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
}

#[test]
fn switchover_failover_and_the_guard_on_a_pair() {
    let Some(mut pair) = SwitchPair::new("w") else {
        return;
    };
    let bench = std::env::var("KEYFERRY_BENCH").as_deref() == Ok("1");
    let (sa, sb) = (
        pair.a.socket_dir().to_path_buf(),
        pair.b.socket_dir().to_path_buf(),
    );
    let (ns_a, ns_b) = (pair.ns.a.clone(), pair.ns.b.clone());
    let (home_a, home_b, pw) = (pair.home_a.clone(), pair.home_b.clone(), pair.pw.clone());
    let streams_to = |primary: &Path, addr: &str| {
        sql(primary).is_some_and(|mut c| {
            !c.query(
                "SELECT 1 FROM pg_stat_replication WHERE host(client_addr) = $1 AND state = 'streaming'",
                &[&addr],
            )
            .unwrap()
            .is_empty()
        })
    };

    // The check sees the pg_promote right.
    let check = text(&ha(&ns_a, &home_a, &pw, &["check"]));
    assert!(
        check.contains("EXECUTE on pg_promote and pg_rewind's functions"),
        "{check}"
    );

    // Failover refused while the primary is up; nothing changed.
    let (toml_b, data_b) = (
        fs::read(home_b.join("ha.toml")).unwrap(),
        data_snapshot(pair.b.data_dir()),
    );
    let out = ha(&ns_b, &home_b, &pw, &["failover"]);
    assert_eq!(out.status.code(), Some(13), "{}", text(&out));
    assert!(text(&out).contains("ha switchover"), "{}", text(&out));
    assert_eq!(fs::read(home_b.join("ha.toml")).unwrap(), toml_b);
    assert_eq!(data_snapshot(pair.b.data_dir()), data_b);
    assert!(accepts_writes(&sa) && !accepts_writes(&sb));

    // A dry run changes nothing.
    let (toml_a, data_a) = (
        fs::read(home_a.join("ha.toml")).unwrap(),
        data_snapshot(pair.a.data_dir()),
    );
    let out = ok(ha(&ns_a, &home_a, &pw, &["switchover", "--dry-run"]));
    assert!(
        out.contains("would switch over") && out.contains("pg_promote"),
        "{out}"
    );
    assert_eq!(fs::read(home_a.join("ha.toml")).unwrap(), toml_a);
    assert_eq!(data_snapshot(pair.a.data_dir()), data_a);

    // Switchover under load, both directions twice.
    let load = Load::start(vec![sa.clone(), sb.clone()]);
    wait_until("the load writes", 10, || load.count() > 50);
    let mut figures = Vec::new();
    let nodes = [(&ns_a, &home_a, &sa, ADDR_A), (&ns_b, &home_b, &sb, ADDR_B)];
    for round in 0..4 {
        let (from, to) = (nodes[round % 2], nodes[1 - round % 2]);
        let began = Instant::now();
        let out = ha(from.0, from.1, &pw, &["switchover", "--json"]);
        let ended = Instant::now();
        assert!(out.status.success(), "round {round}: {}", text(&out));
        let r = json(&out);
        assert_eq!(r["new_primary"], to.3, "{r:#}");
        assert_eq!(r["generation"], round as u64 + 1, "{r:#}");
        assert!(accepts_writes(to.2) && !accepts_writes(from.2));
        wait_until("the old primary streams from the new one", 10, || {
            streams_to(to.2, from.3)
        });
        // The slot followed: on the new primary, gone from the old one.
        let slots = |s: &Path| -> Vec<String> {
            sql(s)
                .unwrap()
                .query("SELECT slot_name::text FROM pg_replication_slots", &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        assert_eq!(slots(to.2), vec!["pam_b".to_owned()], "round {round}");
        assert!(
            slots(from.2).is_empty(),
            "round {round}: {:?}",
            slots(from.2)
        );
        let (primary, generation, demoted) = roles_of(from.1);
        assert_eq!(
            (primary.as_str(), generation, demoted),
            (to.3, round as u64 + 1, false)
        );
        wait_until("writes resume", 10, || {
            load.count() > 0 && load.acked.lock().unwrap().last().unwrap().1 > ended
        });
        let gap = load.longest_gap(began, Instant::now());
        figures.push((
            gap,
            r["stop_seconds"].as_f64().unwrap(),
            r["promote_seconds"].as_f64().unwrap(),
            r["catch_up_seconds"].as_f64().unwrap(),
        ));
    }
    // The other node's ha.toml follows on its next ha command.
    let status = text(&ha(&ns_b, &home_b, &pw, &["status"]));
    assert!(status.contains("generation 4"), "{status}");
    let acked = load.finish();
    let mut c = sql(&sa).unwrap();
    let missing: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|id| {
            c.query_opt("SELECT 1 FROM load WHERE id = $1", &[id])
                .unwrap()
                .is_none()
        })
        .collect();
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
    if bench {
        for (i, (gap, stop, promote, catch_up)) in figures.iter().enumerate() {
            eprintln!(
                "BENCH switchover {i}: no write succeeded for {:.3} s; clean stop {stop:.3} s + pg_promote {promote:.3} s = {:.3} s (target <= {:.3} s); catch-up wait {catch_up:.3} s",
                gap.as_secs_f64(), stop + promote, stop + promote + 1.0
            );
        }
        eprintln!(
            "BENCH switchover acknowledged rows {}, lost {}",
            acked.len(),
            missing.len()
        );
    }

    // kill -9 after the old primary stopped: status names the fix; abort
    // starts it again as primary, nothing promoted.
    let child = ha_cmd(&ns_a, &home_a, &pw, &["switchover"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_at(child, &home_a, "stopped");
    assert!(!accepts_writes(&sb), "nothing promoted yet");
    let status = text(&ha(&ns_a, &home_a, &pw, &["status"]));
    assert!(
        status.contains("keyferry ha switchover --resume") && status.contains("--abort"),
        "{status}"
    );
    ok(ha(&ns_a, &home_a, &pw, &["switchover", "--abort"]));
    assert!(accepts_writes(&sa) && !accepts_writes(&sb));
    assert_eq!(roles_of(&home_a).1, 4);
    wait_until("b streams from a again", 20, || streams_to(&sa, ADDR_B));

    // kill -9 right after the promotion: only --resume, which finishes.
    let child = ha_cmd(&ns_a, &home_a, &pw, &["switchover"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_at(child, &home_a, "promoted");
    let out = ha(&ns_a, &home_a, &pw, &["switchover", "--abort"]);
    assert!(
        !out.status.success() && text(&out).contains("--resume"),
        "{}",
        text(&out)
    );
    assert!(
        !accepts_writes(&sa),
        "the old primary was not started as primary"
    );
    ok(ha(&ns_a, &home_a, &pw, &["switchover", "--resume"]));
    assert!(accepts_writes(&sb) && !accepts_writes(&sa));
    wait_until("a streams from b", 20, || streams_to(&sb, ADDR_A));
    assert_eq!(roles_of(&home_a), (ADDR_B.to_owned(), 5, false));

    // Failover: the primary (b) dies; a (the replica) records b's
    // position first, as `ha status` does on a running pair.
    ok(ha(&ns_a, &home_a, &pw, &["status"]));
    sql(&sb)
        .unwrap()
        .batch_execute("INSERT INTO load VALUES (-1)")
        .unwrap();
    wait_until("a replayed the row", 10, || {
        sql(&sa)
            .unwrap()
            .query_opt("SELECT 1 FROM load WHERE id = -1", &[])
            .unwrap()
            .is_some()
    });
    pair.b.stop(); // immediate shutdown
    let began = Instant::now();
    let out = ha(&ns_a, &home_a, &pw, &["failover", "--json"]);
    let failover_secs = began.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", text(&out));
    let r = json(&out);
    assert_eq!(r["new_primary"], ADDR_A, "{r:#}");
    assert_eq!(r["generation"], 6);
    assert!(r["may_lose_bytes"].is_u64(), "{r:#}");
    sql(&sa)
        .unwrap()
        .batch_execute("INSERT INTO load VALUES (-2)")
        .unwrap();
    assert_eq!(roles_of(&home_a), (ADDR_A.to_owned(), 6, false));
    if bench {
        eprintln!(
            "BENCH failover: command start to first accepted write {:.3} s (whole command {failover_secs:.3} s); may lose {} bytes",
            r["seconds_to_first_write"].as_f64().unwrap(), r["may_lose_bytes"]
        );
    }

    // The old primary (b) must not come back as primary: b stopped as a
    // primary, so its guard reads a's generation and refuses.
    let data_b = data_snapshot(pair.b.data_dir());
    let out = ha(&ns_b, &home_b, &pw, &["guard"]);
    assert_eq!(out.status.code(), Some(13), "{}", text(&out));
    assert!(text(&out).contains("ha rejoin"), "{}", text(&out));
    assert_eq!(roles_of(&home_b), (ADDR_A.to_owned(), 6, true));
    let out = ha(&ns_b, &home_b, &pw, &["start"]);
    assert_eq!(out.status.code(), Some(13), "{}", text(&out));
    assert!(!pair.b.is_running());
    assert_eq!(data_snapshot(pair.b.data_dir()), data_b);
    drop(pair);
}
