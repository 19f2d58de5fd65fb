//! Fail closed, on real PostgreSQL in two network namespaces: the peer
//! reads of `ha status`, `ha check`, `ha guard` and `ha failover
//! --dry-run` end within `--timeout-ms` (plus a margin) when the peer
//! accepts connections and says nothing — a listener that never answers,
//! then a real postmaster stopped with SIGSTOP — and each gives its typed
//! verdict; after a failover the demoted old primary is kept from starting
//! as primary when its guard's password is stale and when every connection
//! slot of the new primary is taken; `ha status` tells split brain (exit
//! 14) and "cannot tell" (exit 15) from down, and shows the old primary,
//! once it follows the new one, on the new timeline (or on none), never
//! on a stale one. Needs root, `ip netns` and
//! PostgreSQL; skips otherwise (fails with `KEYFERRY_REQUIRE_PG=1`).
#![cfg(unix)]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::fault::{password_file, postmaster_pid, take_all_slots, Stopped};
use common::netns::{NetnsPair, WebService, ADDR_A, ADDR_B};
use common::pair::{Pair, PASSWORD};
use common::pg::{PgOptions, PgServer};
use serde_json::Value;

const TIMEOUT_MS: u64 = 1000;
const PG_PORT: u16 = 5432;

/// "Does not hang": generous, since process start and the local reads
/// count too; a hang would take forever.
fn bound() -> Duration {
    Duration::from_millis(5 * TIMEOUT_MS) + Duration::from_secs(3)
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `keyferry --home HOME ha ARGS… --timeout-ms 1000 --password-file PW`
/// on the host of `ns`, and how long it took.
fn ha(ns: &str, home: &Path, pw: &Path, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = NetnsPair::exec(ns, &common::pair::bin())
        .arg("--home")
        .arg(home)
        .arg("ha")
        .args(args)
        .args(["--timeout-ms", &TIMEOUT_MS.to_string(), "--password-file"])
        .arg(pw)
        .env_remove("KEYFERRY_HOME")
        .env("PGPASSFILE", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        !text(&out).contains(PASSWORD),
        "the password was printed: {}",
        text(&out)
    );
    (out, took)
}

/// The four commands that read the peer, each bounded and each with its
/// verdict: status 15 (unknown), check 8 (a failed check), guard 13 and
/// failover --dry-run 13 (fenced). `what`: the peer, for messages.
fn all_bounded_and_fenced(pair: &Pair, what: &str) {
    let home = &pair.home;
    let pw = &pair.pw_file;
    let silent = format!("no answer within {TIMEOUT_MS} ms");
    let (out, took) = ha(&pair.ns.b, home, pw, &["status", "--json"]);
    eprintln!("ha status --timeout-ms {TIMEOUT_MS} against {what}: {took:?}");
    assert!(took < bound(), "ha status took {took:?}: {}", text(&out));
    assert_eq!(out.status.code(), Some(15), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["verdict"], "unknown", "{r:#}");
    let summary = r["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("unknown: primary 10.213.0.1 cannot be read")
            && summary.contains(&silent)
            && summary.contains("may be a writable primary"),
        "{summary}"
    );

    let (out, took) = ha(&pair.ns.b, home, pw, &["check"]);
    eprintln!("ha check against {what}: {took:?}");
    assert!(took < bound(), "ha check took {took:?}: {}", text(&out));
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    assert!(text(&out).contains(&silent), "{}", text(&out));

    for args in [&["guard"][..], &["failover", "--dry-run"][..]] {
        let (out, took) = ha(&pair.ns.b, home, pw, args);
        eprintln!("ha {} against {what}: {took:?}", args.join(" "));
        assert!(took < bound(), "ha {args:?} took {took:?}: {}", text(&out));
        assert_eq!(out.status.code(), Some(13), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("alive but silent") && text(&out).contains(&silent),
            "{args:?}: {}",
            text(&out)
        );
    }
    // Neither the guard nor the dry run changed anything.
    let toml = fs::read_to_string(home.join("ha.toml")).unwrap();
    assert!(!toml.contains("demoted = true"), "{toml}");
}

/// Whether a TCP connect from the host of `ns` to `addr:port` succeeds.
fn accepts(ns: &str, addr: &str, port: u16) -> bool {
    NetnsPair::exec(ns, Path::new("bash"))
        .args(["-c", &format!("exec 3<>/dev/tcp/{addr}/{port}")])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_peer_that_accepts_and_stays_silent_is_answered_within_the_bound() {
    let Some(mut pair) = Pair::new("f", 0) else {
        return;
    };
    // A listener on the primary's address and port that accepts (the
    // kernel completes the handshake) and never says a word: a tarpit.
    pair.primary.stop();
    {
        let _tarpit = WebService::start(&pair.ns.a, ADDR_A, PG_PORT);
        common::pair::wait_for("the listener", Duration::from_secs(20), || {
            accepts(&pair.ns.b, ADDR_A, PG_PORT)
        });
        all_bounded_and_fenced(&pair, "a listener that never answers");
    }

    // The real postmaster, frozen.
    pair.primary.start();
    let pid = postmaster_pid(pair.primary.data_dir()).expect("the primary runs");
    {
        let _frozen = Stopped::stop(pid);
        all_bounded_and_fenced(&pair, "a postmaster under SIGSTOP");
    }

    // Thawed, it answers again: the secondary's own server runs as a
    // primary too (it was never made a replica), so this is split brain,
    // exit 14, not "degraded".
    let (out, _) = ha(&pair.ns.b, &pair.home, &pair.pw_file, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(14), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["verdict"], "split_brain", "{r:#}");
    assert!(
        r["summary"]
            .as_str()
            .unwrap()
            .starts_with("split_brain: both nodes run as primary"),
        "{r:#}"
    );
    let (out, _) = ha(&pair.ns.b, &pair.home, &pair.pw_file, &["status"]);
    assert!(
        text(&out).contains("verdict: split_brain: both nodes run as primary"),
        "{}",
        text(&out)
    );

    // The link cut: no answer at all. A dead peer and a cut network look
    // the same, so the guard refuses, until the operator who has checked
    // the peer's host says it is down (`--peer-down`); the failover
    // likewise until `--force`.
    pair.ns.set_link_b(false);
    let cut = ha(&pair.ns.b, &pair.home, &pair.pw_file, &["guard"]).0;
    let dry = ha(
        &pair.ns.b,
        &pair.home,
        &pair.pw_file,
        &["failover", "--dry-run"],
    )
    .0;
    let overruled = ha(
        &pair.ns.b,
        &pair.home,
        &pair.pw_file,
        &["guard", "--peer-down"],
    )
    .0;
    pair.ns.set_link_b(true);
    assert_eq!(cut.status.code(), Some(13), "{}", text(&cut));
    assert!(
        text(&cut).contains("no answer") && text(&cut).contains("--peer-down"),
        "{}",
        text(&cut)
    );
    assert_eq!(dry.status.code(), Some(13), "{}", text(&dry));
    assert!(text(&dry).contains("--force"), "{}", text(&dry));
    assert!(overruled.status.success(), "{}", text(&overruled));
    assert!(
        text(&overruled).contains("the operator says it is down"),
        "{}",
        text(&overruled)
    );

    // A wrong password: the peer answers and refuses. Cannot tell (15),
    // never "down".
    let wrong = password_file(pair.tmp.path(), "wrong.pw", "not the password");
    let (out, _) = ha(&pair.ns.b, &pair.home, &wrong, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(15), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["verdict"], "unknown", "{r:#}");
    let summary = r["summary"].as_str().unwrap();
    assert!(
        summary.contains("password authentication failed")
            && !summary.contains("no running primary"),
        "{summary}"
    );
}

/// `ha.toml`'s `generation` and `demoted`.
fn generation_of(home: &Path) -> (u64, bool) {
    let t: toml::Value =
        toml::from_str(&fs::read_to_string(home.join("ha.toml")).unwrap()).unwrap();
    (
        t.get("generation")
            .and_then(|g| g.as_integer())
            .unwrap_or(0) as u64,
        t.get("demoted").and_then(|d| d.as_bool()).unwrap_or(false),
    )
}

#[test]
fn after_a_failover_the_old_primary_stays_down_when_the_peer_cannot_be_read() {
    let Some(ns) = NetnsPair::create("g") else {
        return;
    };
    // Few connection slots, so a test can take them all (the replica
    // copies the primary's postgresql.conf, as it must for hot standby).
    let conf = |addr: &str| {
        vec![
            format!("listen_addresses = '{addr},127.0.0.1'"),
            "max_connections = 10".to_owned(),
        ]
    };
    let Some(mut a) = PgServer::start_primary(PgOptions {
        extra_conf: conf(ADDR_A),
        netns: Some(ns.a.clone()),
    }) else {
        return;
    };
    a.move_to_port(PG_PORT);
    a.create_replication_user("repuser", PASSWORD);
    let mut hba = a.read_hba();
    hba.extend_from_slice(b"host all,replication repuser 10.213.0.0/24 scram-sha-256\n");
    a.write_hba(&hba);
    a.connect()
        .batch_execute("CREATE ROLE hog LOGIN PASSWORD 'hog'; SELECT pg_reload_conf();")
        .unwrap();
    let mut b = a.start_replica_with(PgOptions {
        extra_conf: conf(ADDR_B),
        netns: Some(ns.b.clone()),
    });
    b.move_to_port(PG_PORT);
    b.connect()
        .batch_execute(&format!(
            "ALTER SYSTEM SET primary_conninfo = 'host={ADDR_A} port={PG_PORT} user=repuser password=''{PASSWORD}'''"
        ))
        .unwrap();
    b.connect()
        .batch_execute("SELECT pg_reload_conf()")
        .unwrap();
    let streaming = || {
        !a.connect()
            .query(
                "SELECT 1 FROM pg_stat_replication WHERE host(client_addr) = $1 AND state = 'streaming'",
                &[&ADDR_B],
            )
            .unwrap()
            .is_empty()
    };
    common::pair::wait_for("b streams from a", Duration::from_secs(30), streaming);

    let tmp = tempfile::tempdir().unwrap();
    let (home_a, home_b) = (tmp.path().join("home-a"), tmp.path().join("home-b"));
    for (home, node, server) in [(&home_a, "pam-a", &a), (&home_b, "pam-b", &b)] {
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
                "5432",
                "--pg-bin",
                server.bin_dir().to_str().unwrap(),
                "--pg-data",
                server.data_dir().to_str().unwrap(),
            ],
        ));
    }
    let pw = password_file(tmp.path(), "repuser.pw", PASSWORD);
    let stale = password_file(tmp.path(), "stale.pw", "last year's password");

    // The primary dies; the replica fails over (a's host answers that
    // nothing listens: positive evidence).
    a.stop();
    let (out, _) = ha(&ns.b, &home_b, &pw, &["failover"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(generation_of(&home_b), (1, false));

    // a comes back with a stale password: its ha.toml does not know of
    // the failover (it cannot read the new primary's table), so only the
    // evidence can keep it down. Refused, and not started.
    for args in [&["guard"][..], &["start"][..]] {
        let (out, _) = ha(&ns.a, &home_a, &stale, args);
        assert_eq!(out.status.code(), Some(13), "{args:?}: {}", text(&out));
        let said = text(&out);
        assert!(
            said.contains("alive but refusing (authentication failed)")
                && said.contains("current password of repuser"),
            "{args:?}: {said}"
        );
        assert!(!a.is_running(), "{args:?} started the old primary");
    }
    assert_eq!(generation_of(&home_a), (0, false));

    // Every slot of the new primary taken by a role without rights: "too
    // many clients" is an answer from a live server, not an absence.
    let hogs = take_all_slots(b.socket_dir(), PG_PORT, "hog", "hog", 20);
    assert!(!hogs.is_empty() && hogs.len() < 20, "{} hogs", hogs.len());
    for args in [&["guard"][..], &["start"][..]] {
        let (out, _) = ha(&ns.a, &home_a, &pw, args);
        assert_eq!(out.status.code(), Some(13), "{args:?}: {}", text(&out));
        let said = text(&out);
        assert!(
            said.contains("alive but refusing (too many clients)")
                && said.contains("free connection slots"),
            "{args:?}: {said}"
        );
        assert!(!a.is_running(), "{args:?} started the old primary");
    }
    assert_eq!(generation_of(&home_a), (0, false));

    // Slots free again: the guard reads the new generation, marks a
    // demoted and still refuses (the control: the connection works).
    drop(hogs);
    common::pair::wait_for("the hogs' backends to end", Duration::from_secs(10), || {
        b.connect()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'hog'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
            == 0
    });
    let (out, _) = ha(&ns.a, &home_a, &pw, &["guard"]);
    assert_eq!(out.status.code(), Some(13), "{}", text(&out));
    assert!(text(&out).contains("ha rejoin"), "{}", text(&out));
    assert_eq!(generation_of(&home_a), (1, true));
    assert!(!a.is_running());

    // The old primary follows the new one as a replica (it stopped with
    // nothing the new primary lacks): its timeline is the new one, or not
    // shown, never the old one from its last checkpoint.
    fs::write(a.data_dir().join("standby.signal"), b"").unwrap();
    let mut auto = fs::OpenOptions::new()
        .append(true)
        .open(a.data_dir().join("postgresql.auto.conf"))
        .unwrap();
    use std::io::Write;
    writeln!(
        auto,
        "primary_conninfo = 'host={ADDR_B} port={PG_PORT} user=repuser password=''{PASSWORD}'''"
    )
    .unwrap();
    drop(auto);
    a.start();
    let a_streams = || {
        !b.connect()
            .query(
                "SELECT 1 FROM pg_stat_replication WHERE host(client_addr) = $1 AND state = 'streaming'",
                &[&ADDR_A],
            )
            .unwrap()
            .is_empty()
    };
    common::pair::wait_for("a streams from b", Duration::from_secs(30), a_streams);
    let timelines = |monitor: bool| {
        let (out, _) = ha(&ns.b, &home_b, &pw, &["status", "--json"]);
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        let nodes = r["nodes"].as_array().unwrap();
        let of = |addr: &str| {
            nodes
                .iter()
                .find(|n| n["address"] == addr)
                .unwrap_or_else(|| panic!("{r:#}"))["timeline"]
                .clone()
        };
        assert_eq!(of(ADDR_B), 2, "the new primary, monitor {monitor}: {r:#}");
        of(ADDR_A)
    };
    // Without pg_monitor the replica's WAL receiver is hidden: no timeline
    // rather than a stale one.
    let seen = timelines(false);
    assert!(seen == 2 || seen.is_null(), "stale timeline {seen}");
    b.connect()
        .batch_execute("GRANT pg_monitor TO repuser")
        .unwrap();
    assert_eq!(timelines(true), 2);
    drop((a, b));
    drop(ns);
}
