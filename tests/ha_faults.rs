//! The fault suite of `ha switchover`: a real pair on two hosts, a prober
//! asking both nodes "do you accept writes?" every 50 ms throughout, and
//! keyferry killed (as by kill -9) at every point its journal names —
//! each step's journal write, each phase — followed by `--abort` or
//! `--resume`; a promotion that does not finish within its wait (the
//! peer's startup process stopped with SIGSTOP); an `--abort` itself killed
//! half way and run again. Every case asserts: never two writable
//! primaries at once; past the promotion, `--abort` is refused (exit 18)
//! and the old primary stays down; the journal always leads to one primary
//! and a streaming replica. Prints one line per case (the table in
//! RELIABILITY.md).
//!
//! Needs the `failpoints` feature (`cargo test --features failpoints --test
//! ha_faults`), root, `ip netns` and PostgreSQL; skips otherwise (fails
//! with `KEYFERRY_REQUIRE_PG=1`).
#![cfg(all(unix, feature = "failpoints"))]

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fault::{password_file, postmaster_pid, take_every_slot, LossyLink, Stopped};
use common::switch::{accepts_writes, roles_of, text, wait_until, Prober, SwitchPair};

/// What a case does after the kill.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Then {
    Abort,
    Resume,
}

/// The kill points of a switchover, in the order a run passes them, and
/// whether each is past the point of no return.
const POINTS: [(&str, bool); 6] = [
    ("ha-switchover:step-1", false), // password file journaled
    ("ha-switchover:step-2", false), // generation row journaled
    ("ha-switchover:step-3", false), // the stop journaled
    ("ha-switchover:stopped", false),
    ("ha-switchover:promoting", true), // before the promotion is sent
    ("ha-switchover:promoted", true),
];

fn killed(out: &std::process::Output) -> bool {
    out.status.code().is_none()
}

/// Waits until the pair is one primary with its replica streaming, and
/// returns whether `a` is that primary.
fn settled(pair: &SwitchPair) -> bool {
    let mut primary_a = false;
    let deadline = Instant::now() + Duration::from_secs(40);
    wait_until("one primary and a streaming replica", 45, || {
        assert!(
            Instant::now() < deadline,
            "not settled: {}",
            common::switch::describe(pair)
        );
        let (wa, wb) = (
            accepts_writes(pair.a.socket_dir()),
            accepts_writes(pair.b.socket_dir()),
        );
        if wa == wb {
            return false;
        }
        primary_a = wa;
        pair.streams(wa)
    });
    primary_a
}

#[test]
fn switchover_survives_a_kill_at_every_point_and_an_unconfirmed_promotion() {
    let Some(pair) = SwitchPair::new("f") else {
        return;
    };
    let prober = Prober::start(pair.a.socket_dir(), pair.b.socket_dir());
    let mut table = Vec::new();

    for (point, no_return) in POINTS {
        for then in [Then::Abort, Then::Resume] {
            let from_a = settled(&pair);
            let (_, home, _, _) = pair.node(from_a);
            let out = pair
                .ha_cmd(from_a, &["switchover"], &format!("{point}=crash"))
                .output()
                .unwrap();
            assert!(killed(&out), "{point}: not killed: {}", text(&out));
            assert!(home.join("journal.json").exists(), "{point}: no journal");
            assert_eq!(prober.two_primaries(), 0, "{point}: two primaries");
            let outcome = if no_return {
                // Past the promotion: abort is refused, the old primary
                // stays down and demoted, resume finishes.
                let out = pair.ha(from_a, &["switchover", "--abort"]);
                assert_eq!(out.status.code(), Some(18), "{point}: {}", text(&out));
                assert!(text(&out).contains("--resume"), "{}", text(&out));
                assert!(roles_of(home).2, "{point}: not marked demoted");
                let (_, _, old_socket, _) = pair.node(from_a);
                assert!(!accepts_writes(old_socket), "{point}: old primary writable");
                if then == Then::Resume {
                    let out = pair.ha(from_a, &["switchover", "--resume"]);
                    assert!(out.status.success(), "{point}: {}", text(&out));
                } else {
                    // `ha start` does not start the demoted node as
                    // primary: the guard refuses (13), or the held
                    // switchover does (16); resume is what finishes.
                    let out = pair.ha(from_a, &["start"]);
                    assert!(
                        matches!(out.status.code(), Some(13 | 16)),
                        "{point}: {}",
                        text(&out)
                    );
                    let (_, _, old_socket, _) = pair.node(from_a);
                    assert!(!accepts_writes(old_socket), "{point}: started");
                    let out = pair.ha(from_a, &["switchover", "--resume"]);
                    assert!(out.status.success(), "{point}: {}", text(&out));
                }
                "switched (abort refused, exit 18)"
            } else {
                let flag = if then == Then::Abort {
                    "--abort"
                } else {
                    "--resume"
                };
                let out = pair.ha(from_a, &["switchover", flag]);
                assert!(out.status.success(), "{point} {flag}: {}", text(&out));
                if then == Then::Abort {
                    "undone"
                } else {
                    "undone, switched on resume"
                }
            };
            assert!(!home.join("journal.json").exists(), "{point}: journal left");
            let now_a = settled(&pair);
            let expect_switched = no_return || then == Then::Resume;
            assert_eq!(now_a != from_a, expect_switched, "{point} {then:?}");
            assert!(!roles_of(home).2, "{point}: still demoted");
            assert_eq!(
                roles_of(home).0,
                pair.node(now_a).3,
                "{point} {then:?}: ha.toml names the wrong primary"
            );
            assert_eq!(prober.two_primaries(), 0, "{point}: two primaries");
            table.push(format!("kill at {point}, then {then:?}: {outcome}"));
        }
    }

    // An --abort killed after its first undo (the server started again)
    // can only be finished by --abort: --resume is refused (exit 16).
    let from_a = settled(&pair);
    let (_, home, _, _) = pair.node(from_a);
    let out = pair
        .ha_cmd(from_a, &["switchover"], "ha-switchover:stopped=crash")
        .output()
        .unwrap();
    assert!(killed(&out), "{}", text(&out));
    let out = pair
        .ha_cmd(
            from_a,
            &["switchover", "--abort"],
            "ha-switchover:undo-3=crash",
        )
        .output()
        .unwrap();
    assert!(killed(&out), "the abort was not killed: {}", text(&out));
    let out = pair.ha(from_a, &["switchover", "--resume"]);
    assert_eq!(out.status.code(), Some(16), "{}", text(&out));
    let out = pair.ha(from_a, &["switchover", "--abort"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!home.join("journal.json").exists());
    assert_eq!(settled(&pair), from_a, "the abort put the old primary back");
    table.push("kill during --abort, then --resume (refused, exit 16), --abort: undone".into());

    // A promotion that does not finish within its wait: the peer's startup
    // process is stopped between the point of no return and the promotion.
    let from_a = settled(&pair);
    let (_, home, old_socket, _) = pair.node(from_a);
    let began = Instant::now();
    let (out, startup) = stalled_promotion(
        &pair,
        from_a,
        &["switchover", "--timeout", "10"],
        "ha-switchover",
        !from_a,
    );
    let waited = began.elapsed();
    assert_eq!(out.status.code(), Some(18), "{}", text(&out));
    assert!(text(&out).contains("--resume"), "{}", text(&out));
    assert!(waited < Duration::from_secs(30), "took {waited:?}");
    assert!(!accepts_writes(old_socket), "the old primary was started");
    assert!(roles_of(home).2, "not demoted");
    assert_eq!(prober.two_primaries(), 0);
    assert!(Command::new("kill")
        .args(["-CONT", &startup])
        .status()
        .unwrap()
        .success());
    let (_, _, new_socket, _) = pair.node(!from_a);
    wait_until("the promotion completes by itself", 30, || {
        accepts_writes(new_socket)
    });
    let out = pair.ha(from_a, &["switchover", "--resume"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(settled(&pair), !from_a);
    table.push("promotion not finished within its wait (SIGSTOP): exit 18, old primary kept down; --resume: switched".into());

    let probes = prober.probes.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(prober.two_primaries(), 0);
    drop(prober);
    for line in &table {
        eprintln!("FAULT {line}");
    }
    eprintln!(
        "FAULT {} cases, {probes} probes of both nodes, moments with two writable primaries: 0",
        table.len()
    );
}

/// Runs `args` on node `on_a` with the crash point `ACTION:promoting`
/// paused for 1.5 s, and in that pause stops the startup process of node
/// `stall_a` (SIGSTOP), so the promotion sent next cannot finish within its
/// wait. Returns keyferry's output and the stopped pid (to SIGCONT).
fn stalled_promotion(
    pair: &SwitchPair,
    on_a: bool,
    args: &[&str],
    action: &str,
    stall_a: bool,
) -> (std::process::Output, String) {
    let (_, home, _, _) = pair.node(on_a);
    let child = pair
        .ha_cmd(on_a, args, &format!("{action}:promoting=sleep(1500)"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let journal = home.join("journal.json");
    let mut child = child;
    let mut ended = false;
    wait_until("the promoting phase", 60, || {
        if fs::read_to_string(&journal).is_ok_and(|t| t.contains("\"phase\": \"promoting\"")) {
            return true;
        }
        ended = matches!(child.try_wait(), Ok(Some(_)));
        ended
    });
    if ended {
        let out = child.wait_with_output().unwrap();
        panic!("keyferry ended before the promoting phase: {}", text(&out));
    }
    let startup = pair.startup_pid(stall_a).to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &startup])
        .status()
        .unwrap()
        .success());
    (child.wait_with_output().unwrap(), startup)
}

/// Stops the primary `a` or `b` as a crash would (immediate shutdown).
fn crash_server(pair: &mut SwitchPair, a: bool) {
    if a {
        pair.a.stop();
    } else {
        pair.b.stop();
    }
}

/// `ha rejoin --force` on the old primary, until it streams again.
fn rejoin(pair: &SwitchPair, a: bool) {
    let out = pair.ha(a, &["rejoin", "--force"]);
    assert!(out.status.success(), "rejoin: {}", text(&out));
    wait_until("the old primary streams", 60, || pair.streams(!a));
}

#[test]
fn failover_goes_only_forward_after_a_kill_or_an_unconfirmed_promotion() {
    common::pg::reap_orphans_here();
    let Some(mut pair) = SwitchPair::new("g") else {
        return;
    };
    let prober = Prober::start(pair.a.socket_dir(), pair.b.socket_dir());
    let mut table = Vec::new();

    // Killed at each phase past the point of no return: --resume finishes.
    for (point, new_primary_a) in [
        ("ha-failover:promoting", false),
        ("ha-failover:promoted", true),
    ] {
        let replica_a = new_primary_a;
        crash_server(&mut pair, !replica_a);
        let (_, home, socket, _) = pair.node(replica_a);
        let out = pair
            .ha_cmd(replica_a, &["failover"], &format!("{point}=crash"))
            .output()
            .unwrap();
        assert!(killed(&out), "{point}: not killed: {}", text(&out));
        assert!(home.join("journal.json").exists());
        let out = pair.ha(replica_a, &["failover", "--resume"]);
        assert!(out.status.success(), "{point}: {}", text(&out));
        assert!(accepts_writes(socket), "{point}: not promoted");
        assert!(!home.join("journal.json").exists());
        let (primary, _, demoted) = roles_of(home);
        assert_eq!(primary, pair.node(replica_a).3);
        assert!(!demoted);
        assert_eq!(prober.two_primaries(), 0, "{point}");
        rejoin(&pair, !replica_a);
        table.push(format!(
            "kill at {point}, then --resume: promoted, roles swapped"
        ));
    }

    // The promotion does not finish within its wait: this node's startup
    // process is stopped between the point of no return and pg_promote.
    let replica_a = pair.primary_is_a();
    let replica_a = !replica_a;
    crash_server(&mut pair, !replica_a);
    let (_, home, socket, _) = pair.node(replica_a);
    let (out, startup) = stalled_promotion(
        &pair,
        replica_a,
        &["failover", "--timeout", "2"],
        "ha-failover",
        replica_a,
    );
    let journal = home.join("journal.json");
    assert_eq!(out.status.code(), Some(18), "{}", text(&out));
    assert!(
        text(&out).contains("ha failover --resume"),
        "{}",
        text(&out)
    );
    assert!(journal.exists());
    assert!(Command::new("kill")
        .args(["-CONT", &startup])
        .status()
        .unwrap()
        .success());
    let out = pair.ha(replica_a, &["failover", "--resume"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(accepts_writes(socket));
    assert_eq!(prober.two_primaries(), 0);
    table.push("promotion not finished within its wait (SIGSTOP): exit 18, journal kept; --resume: promoted".into());

    let probes = prober.probes.load(std::sync::atomic::Ordering::Relaxed);
    drop(prober);
    for line in &table {
        eprintln!("FAULT {line}");
    }
    eprintln!(
        "FAULT failover: {} cases, {probes} probes, moments with two writable primaries: 0",
        table.len()
    );
}

/// A small deterministic generator (xorshift64*): a run is replayed with
/// `KEYFERRY_FAULT_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The faults a randomized run injects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// kill -9 of keyferry after a random delay, during a switchover.
    KillKeyferry,
    /// The link between the hosts down for a while, during a switchover.
    Partition,
    /// The peer's startup process stopped (SIGSTOP), so a promotion cannot
    /// finish, for a while, during a switchover.
    StallPromotion,
    /// kill -9 of the old primary's postmaster, during a switchover.
    KillPostgres,
    /// A peer that accepts connections and says nothing (its postmaster
    /// stopped with SIGSTOP, continued afterwards): first `ha failover` on
    /// the replica against a silent primary, then a switchover whose
    /// replica falls silent at a random moment; every command that reads
    /// the peer meanwhile.
    SilentPeer,
    /// A failover after kill -9 of the primary; the old primary's guard
    /// and `ha start` read the new primary with a password it no longer
    /// accepts.
    StalePassword,
    /// Every connection slot of the primary taken: `ha failover` refuses;
    /// then, after a failover, every slot of the new primary taken: the old
    /// primary's guard and `ha start` refuse.
    FullSlots,
    /// Delay and loss on the link during a switchover (netem, else
    /// nftables and tbf: [`LossyLink`]); not run where neither is here.
    LossyLink,
}

/// Every kind; the first four are the first four runs of every seed, so
/// CI's bounded run (6) always has them; later runs draw from all eight.
const FAULTS: [Fault; 8] = [
    Fault::SilentPeer,
    Fault::StalePassword,
    Fault::FullSlots,
    Fault::LossyLink,
    Fault::KillKeyferry,
    Fault::Partition,
    Fault::StallPromotion,
    Fault::KillPostgres,
];
const ROTATED: u64 = 4;

/// `--timeout-ms` of every command of the randomized runs.
const TIMEOUT_MS: &str = "1000";
/// `--timeout` of their switchovers and failovers, in seconds.
const TIMEOUT_S: u64 = 10;

/// A command that reads the peer with `--timeout-ms 1000` ends within
/// this (ha_fence.rs's bound: the reads of both nodes, process start and
/// the local reads count too; a hang would never end).
fn read_bound() -> Duration {
    Duration::from_secs(8)
}

/// A switchover or failover with `--timeout 10 --timeout-ms 1000` ends
/// within this: the catch-up wait and the promotion's wait are each
/// bounded by `--timeout`, every connection by `--timeout-ms`, and a
/// loaded machine gets a margin.
fn change_bound() -> Duration {
    Duration::from_secs(3 * TIMEOUT_S + 10)
}

/// Waits for `child`, started at `began`, at most until `bound` past it;
/// kills it and panics when it runs longer.
fn wait_within(
    child: &mut std::process::Child,
    began: Instant,
    bound: Duration,
    what: &str,
) -> (std::process::ExitStatus, Duration) {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, began.elapsed());
        }
        if began.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran past its bound of {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn code(out: &std::process::Output) -> String {
    out.status
        .code()
        .map_or("killed".to_owned(), |c| format!("exit {c}"))
}

/// What the runs share.
struct Runs<'a> {
    pair: &'a SwitchPair,
    load: &'a common::switch::Load,
    /// A password file with a password repuser no longer has.
    stale: std::path::PathBuf,
    /// Why a lossy link cannot be made here, if it cannot.
    no_lossy: Option<String>,
    /// Acknowledged rows a failover lost, each within what keyferry
    /// reported before it promoted.
    lost: std::collections::HashSet<i64>,
}

/// Every keyferry command that reads the peer, run on node `on_a` while
/// the peer is silent: each ends within [`read_bound`]; the failover's
/// dry run refuses (13), or (after a held switchover) names the held
/// change (16); so do the guard and `ha start` (only where the local
/// server is down), unless the node starts as a replica (`standby.signal`),
/// which they let start without reading the peer; nothing starts a
/// primary. Returns the codes and times, for the table.
fn reads_against_a_silent_peer(pair: &SwitchPair, on_a: bool) -> String {
    let (_, _, socket, _) = pair.node(on_a);
    let data = pair.server(on_a).data_dir();
    let down = !sql_alive(socket);
    let mut commands: Vec<&[&str]> = vec![
        &["status", "--json"],
        &["check"],
        &["guard"],
        &["failover", "--dry-run"],
    ];
    if down {
        commands.push(&["start"]);
    }
    let mut said = Vec::new();
    for args in commands {
        let full: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--timeout-ms", TIMEOUT_MS])
            .collect();
        let (out, took) = pair.ha_timed(on_a, &full, &pair.pw);
        assert!(
            took < read_bound(),
            "ha {} took {took:?} against a silent peer: {}",
            args.join(" "),
            text(&out)
        );
        // A node that starts as a replica is let start without reading
        // the peer; anything else is refused.
        let replica = data.join("standby.signal").exists();
        match args[0] {
            "guard" | "start" if replica => assert!(
                matches!(out.status.code(), Some(0 | 13 | 16)),
                "ha {} against a silent peer: {}",
                args.join(" "),
                text(&out)
            ),
            "guard" | "start" | "failover" => assert!(
                matches!(out.status.code(), Some(13 | 16)),
                "ha {} against a silent peer: {}",
                args.join(" "),
                text(&out)
            ),
            _ => assert!(!out.status.success(), "ha {}: {}", args[0], text(&out)),
        }
        said.push(format!(
            "{} {} in {:.1} s",
            args[0],
            code(&out),
            took.as_secs_f64()
        ));
    }
    if down {
        assert!(!accepts_writes(socket), "ha start started a primary");
    }
    said.join(", ")
}

/// One switchover from the current primary with `fault` injected after
/// `delay`, then recovery as an operator would. Returns the table's line.
fn switchover_run(runs: &Runs, run: u64, fault: Fault, delay: Duration, hold: Duration) -> String {
    let pair = runs.pair;
    let from_a = settled(pair);
    let mut first = String::new();
    if fault == Fault::SilentPeer {
        first = failover_against_a_silent_primary(pair, from_a);
    }
    if fault == Fault::LossyLink {
        if let Some(why) = &runs.no_lossy {
            return format!("LossyLink: not run: {why}");
        }
    }
    let began = Instant::now();
    let timeout = TIMEOUT_S.to_string();
    let mut child = pair
        .ha_cmd(
            from_a,
            &[
                "switchover",
                "--timeout",
                &timeout,
                "--timeout-ms",
                TIMEOUT_MS,
            ],
            "",
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let mut stalled = None;
    let mut ended = None;
    let mut also = String::new();
    match fault {
        Fault::KillKeyferry => {
            let _ = child.kill();
        }
        Fault::Partition => {
            pair.ns.set_link_b(false);
            std::thread::sleep(hold);
            pair.ns.set_link_b(true);
        }
        Fault::StallPromotion => {
            // None when the switchover already promoted the peer.
            if let Some(pid) = pair.try_startup_pid(!from_a) {
                let pid = pid.to_string();
                let _ = Command::new("kill").args(["-STOP", &pid]).status();
                stalled = Some(pid);
                std::thread::sleep(hold);
            }
        }
        Fault::KillPostgres => {
            let server = pair.server(from_a);
            if server.data_dir().join("postmaster.pid").exists() {
                common::pg::kill9_server(server.data_dir());
            }
        }
        Fault::SilentPeer => {
            // The replica's postmaster frozen until the switchover and the
            // reads on this node have ended, each within its bound.
            if let Some(pid) = postmaster_pid(pair.server(!from_a).data_dir()) {
                let frozen = Stopped::stop(pid);
                let (status, took) =
                    wait_within(&mut child, began, change_bound(), "ha switchover");
                let reads = reads_against_a_silent_peer(pair, from_a);
                drop(frozen);
                also = format!(
                    "; replica silent: switchover {} in {:.1} s; {reads}",
                    status
                        .code()
                        .map_or("killed".to_owned(), |c| format!("exit {c}")),
                    took.as_secs_f64()
                );
                ended = Some(status);
            }
        }
        Fault::LossyLink => {
            let lossy = LossyLink::add(&pair.ns.b, &pair.ns.veth_b())
                .expect("a lossy link was made at the start");
            std::thread::sleep(hold);
            also = format!("; {}", lossy.how);
            drop(lossy);
        }
        Fault::StalePassword | Fault::FullSlots => unreachable!("failover runs"),
    }
    if let Some(pid) = &stalled {
        let _ = Command::new("kill").args(["-CONT", pid]).status();
    }
    let status = match ended {
        Some(s) => s,
        None => wait_within(&mut child, began, change_bound(), "ha switchover").0,
    };
    eprintln!(
        "FAULT run {run}: {fault:?} after {} ms (held {} ms): keyferry {status}",
        delay.as_millis(),
        hold.as_millis()
    );
    let recovered = recover(pair, from_a);
    // A killed postmaster that keyferry did not restart (its run had
    // already stopped it, or finished) is started the way systemd would:
    // through the guard.
    for a in [true, false] {
        let (_, _, socket, _) = pair.node(a);
        if sql_alive(socket) {
            continue;
        }
        let out = pair.ha(a, &["start"]);
        eprintln!(
            "FAULT run {run}: ha start on {}: {}",
            if a { "a" } else { "b" },
            text(&out).trim()
        );
    }
    let now_a = settled(pair);
    format!(
        "{first}{fault:?} after {} ms (held {} ms): keyferry {}, then {recovered}; primary {} -> {}{also}",
        delay.as_millis(),
        hold.as_millis(),
        status.code().map_or("killed".to_owned(), |c| format!("exit {c}")),
        if from_a { "a" } else { "b" },
        if now_a { "a" } else { "b" }
    )
}

/// `ha failover` on the replica while the primary's postmaster is frozen
/// (it accepts connections and says nothing): refused (13) within its
/// bound, nothing promoted; then every read from the replica's host.
fn failover_against_a_silent_primary(pair: &SwitchPair, primary_a: bool) -> String {
    let pid = postmaster_pid(pair.server(primary_a).data_dir()).expect("the primary runs");
    let frozen = Stopped::stop(pid);
    let timeout = TIMEOUT_S.to_string();
    let (out, took) = pair.ha_timed(
        !primary_a,
        &[
            "failover",
            "--timeout",
            &timeout,
            "--timeout-ms",
            TIMEOUT_MS,
        ],
        &pair.pw,
    );
    assert!(took < change_bound(), "ha failover took {took:?}");
    assert_eq!(out.status.code(), Some(13), "{}", text(&out));
    assert!(text(&out).contains("alive but silent"), "{}", text(&out));
    let reads = reads_against_a_silent_peer(pair, !primary_a);
    drop(frozen);
    let (_, _, replica_socket, _) = pair.node(!primary_a);
    assert!(!accepts_writes(replica_socket), "the replica was promoted");
    format!(
        "primary silent: failover exit 13 in {:.1} s; {reads}; then ",
        took.as_secs_f64()
    )
}

/// Waits until the backends of dropped [`take_every_slot`] connections
/// have ended on the server behind `socket`: until then the next
/// connection may find no slot.
fn hogs_gone(socket: &std::path::Path) {
    wait_until("the hogs' backends to end", 20, || {
        common::switch::sql(socket).is_some_and(|mut c| {
            c.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hog'",
                &[],
            )
            .is_ok_and(|r| r.get::<_, i64>(0) == 0)
        })
    });
}

/// What listens on `a`'s host (or b's) and which `postgres` processes run
/// anywhere, with their working directories: for a failure that finds a
/// server where one was killed.
fn who_listens(pair: &SwitchPair, a: bool) -> String {
    let (ns, _, _, _) = pair.node(a);
    let ss = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-ltnp"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("ss: {e}"));
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let exe = std::fs::read_link(format!("/proc/{p}/exe")).ok()?;
            (exe.file_name()? == "postgres").then_some(())?;
            let cwd = std::fs::read_link(format!("/proc/{p}/cwd")).ok()?;
            let cmd = std::fs::read_to_string(format!("/proc/{p}/cmdline")).ok()?;
            Some(format!("{p} {} {}", cwd.display(), cmd.replace('\0', " ")))
        })
        .collect();
    format!(
        "data dir {}\n{ss}\npostgres processes:\n{}",
        pair.server(a).data_dir().display(),
        procs.join("\n")
    )
}

/// A failover under a write load: `ha status` on the replica (it records
/// the primary's position), kill -9 of the primary after `delay`, `ha
/// failover` — first, for [`Fault::FullSlots`], refused while the live
/// primary's slots are all taken. The old primary's guard and `ha start`
/// then read the new primary with a stale password
/// ([`Fault::StalePassword`]) or with its slots all taken: refused (13),
/// never "no answer", and the old primary stays down. Then `ha rejoin`:
/// without `--force` it sets no committed transaction aside; what
/// `--force` sets aside it reports, and covers the rows the failover lost. The acknowledged rows the new primary lacks must all be later
/// than the last position keyferry saw, when it reported that nothing
/// before it could be lost.
fn failover_run(runs: &mut Runs, run: u64, fault: Fault, delay: Duration) -> String {
    let pair = runs.pair;
    let old_a = settled(pair);
    let new_a = !old_a;
    let (_, _, old_socket, _) = pair.node(old_a);
    let (_, _, new_socket, _) = pair.node(new_a);
    let timeout = TIMEOUT_S.to_string();
    let failover = [
        "failover",
        "--json",
        "--timeout",
        &timeout,
        "--timeout-ms",
        TIMEOUT_MS,
    ];
    let mut said = Vec::new();

    if fault == Fault::FullSlots {
        let hogs = take_every_slot(old_socket, common::switch::PG_PORT, "hog", "hog", 400);
        let (out, took) = pair.ha_timed(new_a, &failover, &pair.pw);
        let taken = hogs.len();
        drop(hogs);
        hogs_gone(old_socket);
        assert_eq!(out.status.code(), Some(13), "{}", text(&out));
        assert!(text(&out).contains("too many clients"), "{}", text(&out));
        assert!(
            !accepts_writes(new_socket),
            "promoted next to a live primary"
        );
        said.push(format!(
            "primary's {taken} slots taken: failover exit 13 in {:.1} s",
            took.as_secs_f64()
        ));
    }

    let seen_at = Instant::now();
    let out = pair.ha(new_a, &["status", "--timeout-ms", TIMEOUT_MS]);
    assert!(out.status.success(), "ha status: {}", text(&out));
    std::thread::sleep(delay);
    common::pg::kill9_server(pair.server(old_a).data_dir());
    let killed_at = Instant::now();
    let (out, took) = pair.ha_timed(new_a, &failover, &pair.pw);
    assert!(
        out.status.success(),
        "ha failover: {}\nafter the kill, on the old primary's host: {}",
        text(&out),
        who_listens(pair, old_a)
    );
    assert!(took < change_bound(), "ha failover took {took:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let may_lose = report["may_lose_bytes"].as_u64();
    assert!(accepts_writes(new_socket), "not promoted");
    assert_eq!(runs.pair.primary_is_a(), new_a);

    // What the failover lost, against what it reported before promoting.
    let acked: Vec<(i64, Instant)> = runs
        .load
        .acked
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|(_, t)| *t <= killed_at)
        .collect();
    // Rows an earlier failover lost are not this one's.
    let ids: Vec<i64> = acked
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !runs.lost.contains(id))
        .collect();
    let missing = common::switch::missing_rows(new_socket, &ids);
    if may_lose == Some(0) {
        let early: Vec<i64> = acked
            .iter()
            .filter(|(id, t)| *t < seen_at && missing.contains(id))
            .map(|(id, _)| *id)
            .collect();
        assert!(
            early.is_empty(),
            "keyferry said nothing before the primary's last seen position could be lost, yet {} rows acknowledged before it are gone: {early:?}",
            early.len()
        );
    }
    said.push(format!(
        "kill -9 of the primary {} ms after ha status; failover exit 0 in {:.1} s, reported may lose {}; {} acknowledged rows lost",
        delay.as_millis(),
        took.as_secs_f64(),
        may_lose.map_or("(not known)".to_owned(), |b| format!("{b} bytes")),
        missing.len()
    ));
    runs.lost.extend(missing.iter().copied());

    // The old primary comes back: its guard and `ha start` cannot read the
    // new primary and refuse.
    let hogs = (fault == Fault::FullSlots)
        .then(|| take_every_slot(new_socket, common::switch::PG_PORT, "hog", "hog", 400));
    let (pw, expect) = if fault == Fault::StalePassword {
        (
            runs.stale.as_path(),
            "alive but refusing (authentication failed)",
        )
    } else {
        (pair.pw.as_path(), "alive but refusing (too many clients)")
    };
    for args in [&["guard"][..], &["start"][..]] {
        let full: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--timeout-ms", TIMEOUT_MS])
            .collect();
        let (out, took) = pair.ha_timed(old_a, &full, pw);
        let t = text(&out);
        // A node an earlier run left demoted is refused on that ground
        // before the peer is asked: as safe, and told apart.
        if !t.contains("this node was demoted") {
            assert_eq!(out.status.code(), Some(13), "{args:?}: {t}");
            assert!(t.contains(expect), "{args:?}: {t}");
        }
        assert!(!out.status.success(), "{args:?}: {t}");
        assert!(
            !t.contains("no answer") && !t.contains("unreachable"),
            "{t}"
        );
        assert!(took < read_bound(), "{args:?} took {took:?}");
        assert!(!sql_alive(old_socket), "{args:?} started the old primary");
    }
    if let Some(hogs) = hogs {
        said.push(format!(
            "new primary's {} slots taken: guard and start exit 13",
            hogs.len()
        ));
        drop(hogs);
        hogs_gone(new_socket);
    } else {
        said.push("stale password: guard and start exit 13".into());
    }

    // Back as a replica: no committed transaction set aside without
    // --force.
    let rejoin_timeout = ["rejoin", "--json", "--timeout", "120"];
    let out = pair.ha(old_a, &rejoin_timeout);
    let rejoined = if out.status.success() {
        // A bootstrap keeps the old data directory beside the new one
        // (never deleted); no committed transaction is set aside.
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            r["lost_commits"], 0,
            "commits set aside without --force: {r:#}"
        );
        assert!(
            missing.is_empty(),
            "{} acknowledged rows only the old primary had, yet its rejoin set no commit aside: {r:#}",
            missing.len()
        );
        format!(
            "rejoin ({}{}): no commit set aside",
            r["method"].as_str().unwrap_or("?"),
            if r["set_aside"].is_null() {
                ""
            } else {
                ", old data directory kept beside"
            }
        )
    } else {
        assert!(text(&out).contains("--force"), "rejoin: {}", text(&out));
        let refused = code(&out);
        let out = pair.ha(old_a, &["rejoin", "--json", "--force", "--timeout", "120"]);
        assert!(out.status.success(), "rejoin --force: {}", text(&out));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(rows) = r["lost_rows"].as_u64() {
            assert!(
                missing.len() as u64 <= rows,
                "{} acknowledged rows lost, the rejoin set aside {rows} rows: {r:#}",
                missing.len()
            );
        }
        format!(
            "rejoin {refused} (needs --force), --force ({}): set aside {} commits, {} rows",
            r["method"], r["lost_commits"], r["lost_rows"]
        )
    };
    wait_until("the old primary streams", 60, || pair.streams(new_a));
    said.push(rejoined);
    eprintln!("FAULT run {run}: {fault:?}: {}", said.join("; "));
    format!(
        "{fault:?}: {}; primary {} -> {}",
        said.join("; "),
        if old_a { "a" } else { "b" },
        if new_a { "a" } else { "b" }
    )
}

/// Brings a pair left by a fault back to one primary with a streaming
/// replica, the way an operator would: `--resume` while a switchover is
/// held (retried while it is in doubt), else nothing. Returns what it did.
fn recover(pair: &SwitchPair, ran_on_a: bool) -> String {
    let (_, home, _, _) = pair.node(ran_on_a);
    let mut said = Vec::new();
    for attempt in 0..6 {
        if !home.join("journal.json").exists() {
            break;
        }
        let began = Instant::now();
        // An interrupted undo is finished by --abort, as the refusal of
        // --resume (exit 16) says.
        let flag = if said.last().is_some_and(|s: &String| s.contains("Some(16)")) {
            "--abort"
        } else {
            "--resume"
        };
        let out = pair.ha(ran_on_a, &["switchover", flag]);
        said.push(format!(
            "{flag} -> {:?} in {:.1} s",
            out.status.code(),
            began.elapsed().as_secs_f64()
        ));
        eprintln!(
            "FAULT resume said: {}",
            text(&out).trim().replace('\n', " | ")
        );
        if out.status.success() {
            break;
        }
        assert!(attempt < 5, "cannot finish: {}", text(&out));
        std::thread::sleep(Duration::from_secs(1));
    }
    if said.is_empty() {
        "nothing to recover".into()
    } else {
        said.join(", ")
    }
}

#[test]
fn randomized_switchovers_under_faults_lose_nothing_and_never_make_two_primaries() {
    common::pg::reap_orphans_here();
    let Some(pair) = SwitchPair::new("r") else {
        return;
    };
    let runs: u64 = std::env::var("KEYFERRY_FAULT_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("KEYFERRY_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("FAULT seed {seed} (KEYFERRY_FAULT_SEED replays), {runs} runs");
    let mut rng = Rng(seed);
    // A role with no rights, to take every connection slot.
    common::switch::sql(pair.a.socket_dir())
        .unwrap()
        .batch_execute("CREATE ROLE hog LOGIN PASSWORD 'hog'")
        .unwrap();
    let no_lossy = LossyLink::add(&pair.ns.b, &pair.ns.veth_b()).err();
    let prober = Prober::start(pair.a.socket_dir(), pair.b.socket_dir());
    let load = common::switch::Load::start(vec![
        pair.a.socket_dir().to_path_buf(),
        pair.b.socket_dir().to_path_buf(),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let mut ctx = Runs {
        pair: &pair,
        load: &load,
        stale: password_file(tmp.path(), "stale.pw", "last year's password"),
        no_lossy,
        lost: Default::default(),
    };
    wait_until("the load writes", 20, || load.count() > 20);
    let mut table = Vec::new();
    for run in 0..runs {
        let fault = if run < ROTATED {
            FAULTS[run as usize]
        } else {
            FAULTS[rng.below(FAULTS.len() as u64) as usize]
        };
        let delay = Duration::from_millis(rng.below(900));
        let hold = Duration::from_millis(500 + rng.below(2500));
        let began = Instant::now();
        let line = match fault {
            Fault::StalePassword | Fault::FullSlots => failover_run(&mut ctx, run, fault, delay),
            _ => switchover_run(&ctx, run, fault, delay, hold),
        };
        assert_eq!(
            prober.two_primaries(),
            0,
            "run {run} ({fault:?}): two primaries"
        );
        let line = format!("run {run} ({:.0} s): {line}", began.elapsed().as_secs_f64());
        eprintln!("FAULT {line}");
        table.push(line);
    }
    let lost = std::mem::take(&mut ctx.lost);
    drop(ctx);
    let acked = load.finish();
    let primary_a = settled(&pair);
    let missing: Vec<i64> = common::switch::missing_rows(pair.node(primary_a).2, &acked)
        .into_iter()
        .filter(|id| !lost.contains(id))
        .collect();
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
    let probes = prober.probes.load(std::sync::atomic::Ordering::Relaxed);
    drop(prober);
    for line in &table {
        eprintln!("FAULT {line}");
    }
    eprintln!(
        "FAULT randomized: {runs} runs, seed {seed}, {} rows acknowledged, {} lost by failovers (within what keyferry reported), 0 lost otherwise, {probes} probes, moments with two writable primaries: 0",
        acked.len(),
        lost.len()
    );
}

/// The server behind `socket` accepts a connection.
fn sql_alive(socket: &std::path::Path) -> bool {
    common::switch::sql(socket).is_some()
}

/// The kill points of a bootstrap, in the order a run passes them.
const BOOTSTRAP_POINTS: [&str; 8] = [
    "ha-bootstrap:step-1", // the password file journaled
    "ha-bootstrap:step-2", // the copy journaled, before pg_basebackup
    "ha-bootstrap:copied",
    "ha-bootstrap:step-3", // the stop journaled
    "ha-bootstrap:step-4", // moving the old data aside journaled
    "ha-bootstrap:step-5", // moving the copy in journaled
    "ha-bootstrap:swapped",
    "ha-bootstrap:step-6", // the start journaled
];

#[test]
fn bootstrap_survives_a_kill_at_every_point() {
    use common::pair::{assert_is_replica, old_dirs, staging_of, Pair};
    let Some(pair) = Pair::new("k", 1) else {
        return;
    };
    let in_recovery = || -> bool { pair.replica_query("SELECT pg_is_in_recovery()")[0].get(0) };
    let mut table = Vec::new();
    for point in BOOTSTRAP_POINTS {
        for then in [Then::Abort, Then::Resume] {
            let before = in_recovery();
            let olds = old_dirs(&pair).len();
            let pw = pair.pw_file.to_str().unwrap();
            let run = |mode: &str| {
                let mut c = pair.command(&[
                    "ha",
                    "bootstrap",
                    mode,
                    "--timeout",
                    "60",
                    "--password-file",
                    pw,
                ]);
                if mode == "--yes" {
                    c.env("KEYFERRY_FAILPOINTS", format!("{point}=crash"));
                }
                c.output().unwrap()
            };
            let out = run("--yes");
            assert!(killed(&out), "{point}: not killed: {}", text(&out));
            assert!(pair.home.join("journal.json").exists(), "{point}");
            let out = run(if then == Then::Abort {
                "--abort"
            } else {
                "--resume"
            });
            assert!(out.status.success(), "{point} {then:?}: {}", text(&out));
            assert!(!pair.home.join("journal.json").exists(), "{point} {then:?}");
            assert!(staging_of(&pair).is_none(), "{point} {then:?}: copy left");
            let outcome = if then == Then::Abort {
                // As it was: the same role, no old directory added.
                assert_eq!(in_recovery(), before, "{point}: role changed");
                assert_eq!(old_dirs(&pair).len(), olds, "{point}: data moved");
                "undone: the node as it was"
            } else {
                assert_is_replica(&pair);
                "a streaming replica; the old data kept aside"
            };
            table.push(format!("kill at {point}, then {then:?}: {outcome}"));
        }
    }
    for line in &table {
        eprintln!("FAULT {line}");
    }
    eprintln!("FAULT bootstrap: {} cases", table.len());
}

// ---------------------------------------------------------------------
// `ha rejoin`, a held change: the old primary of a failed-over pair
// (crashed, so its rejoin runs crash recovery and pg_rewind) killed at
// every point its journal names, then `--abort` or `--resume`.

/// The kill points of a rejoin of a crashed old primary, in the order a
/// run passes them, and whether each is past the point of no return. The
/// steps journaled past it (the start, `ha.toml`) reuse the numbers 1 and
/// 2 (the undos are forgotten at `rewound`), so their names reach the
/// password file's step first; `started` and `streaming` cover them.
const REJOIN_POINTS: [(&str, bool); 7] = [
    ("ha-rejoin:stopped", false),
    ("ha-rejoin:measured", false),
    ("ha-rejoin:recovered", false), // crash recovery done
    ("ha-rejoin:step-1", false),    // the password file journaled
    ("ha-rejoin:rewound", true),    // before pg_rewind runs
    ("ha-rejoin:started", true),
    ("ha-rejoin:streaming", true),
];

/// A digest of every file under `dir` (names and contents), to tell a data
/// directory left byte for byte as it was.
fn tree_digest(dir: &std::path::Path) -> u64 {
    use std::hash::{Hash, Hasher};
    fn walk(dir: &std::path::Path, h: &mut std::collections::hash_map::DefaultHasher) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            e.file_name().hash(h);
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(&path, h);
            } else if meta.is_file() {
                fs::read(&path).unwrap().hash(h);
            } else {
                fs::read_link(&path).ok().hash(h);
            }
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    walk(dir, &mut h);
    h.finish()
}

/// The end of the server log keyferry's starts write beside `data`.
fn log_tail(data: &std::path::Path) -> String {
    let mut name = data.file_name().unwrap().to_os_string();
    name.push(".pg_ctl.log");
    let text = fs::read_to_string(data.with_file_name(name)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The rows acknowledged since `since`.
fn acked_since(load: &common::switch::Load, since: Instant) -> Vec<i64> {
    load.acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, t)| *t >= since)
        .map(|(id, _)| *id)
        .collect()
}

/// A pair whose old primary can be rejoined by `pg_rewind` under load.
fn rejoin_pair(tag: &str) -> Option<SwitchPair> {
    common::pg::reap_orphans_here();
    // The rejoined node streams without a slot: under the writer's load
    // the new primary would otherwise recycle the WAL it still needs
    // before it connects (a fresh CI machine saw it wait for removed WAL).
    SwitchPair::with_conf(tag, &["wal_log_hints = on", "wal_keep_size = 512MB"])
}

#[test]
fn rejoin_is_held_and_survives_a_kill_at_every_point() {
    let Some(mut pair) = rejoin_pair("j") else {
        return;
    };
    let began = Instant::now();
    let prober = Prober::start(pair.a.socket_dir(), pair.b.socket_dir());
    let load = common::switch::Load::start(vec![
        pair.a.socket_dir().to_path_buf(),
        pair.b.socket_dir().to_path_buf(),
    ]);
    wait_until("the load writes", 20, || load.count() > 20);
    let mut table = Vec::new();
    // (point, no return, then): each abort leaves the node needing a
    // rejoin still, so the next case takes it from there; a case that
    // needs crash recovery again follows a fresh failover.
    let cases: Vec<(&str, bool, Then)> = vec![
        (REJOIN_POINTS[0].0, false, Then::Abort),
        (REJOIN_POINTS[0].0, false, Then::Resume),
        (REJOIN_POINTS[1].0, false, Then::Abort),
        (REJOIN_POINTS[1].0, false, Then::Resume),
        (REJOIN_POINTS[2].0, false, Then::Resume),
        (REJOIN_POINTS[2].0, false, Then::Abort),
        (REJOIN_POINTS[3].0, false, Then::Abort),
        (REJOIN_POINTS[3].0, false, Then::Resume),
        (REJOIN_POINTS[4].0, true, Then::Resume),
        (REJOIN_POINTS[5].0, true, Then::Resume),
        (REJOIN_POINTS[6].0, true, Then::Resume),
    ];
    assert!(REJOIN_POINTS
        .iter()
        .all(|(p, n)| cases.iter().any(|(q, m, _)| p == q && n == m)));
    // The old primary waiting for its rejoin, and when its failover ended.
    let mut waiting: Option<(bool, Instant)> = None;
    for (point, no_return, then) in cases {
        let case_began = Instant::now();
        let (old_a, failed_over) = match waiting {
            Some(w) => w,
            None => {
                // Fail over: the primary crashes (immediate stop), the
                // replica is promoted.
                let old_a = settled(&pair);
                crash_server(&mut pair, old_a);
                let out = pair.ha(!old_a, &["failover"]);
                assert!(out.status.success(), "failover: {}", text(&out));
                (old_a, Instant::now())
            }
        };
        let (_, home, old_socket, _) = pair.node(old_a);
        let (_, _, new_socket, _) = pair.node(!old_a);
        let (home, old_socket, new_socket) = (
            home.to_path_buf(),
            old_socket.to_path_buf(),
            new_socket.to_path_buf(),
        );
        let data = if old_a {
            pair.a.data_dir().to_path_buf()
        } else {
            pair.b.data_dir().to_path_buf()
        };
        let journal = home.join("journal.json");
        let before = tree_digest(&data);
        let out = pair
            .ha_cmd(
                old_a,
                &["rejoin", "--force", "--timeout", "60"],
                &format!("{point}=crash"),
            )
            .output()
            .unwrap();
        assert!(killed(&out), "{point}: not killed: {}", text(&out));
        assert!(journal.exists(), "{point}: no journal");
        assert_eq!(prober.two_primaries(), 0, "{point}: two primaries");
        // Held: any other change on this node is refused (16).
        let out = pair.ha(old_a, &["rejoin", "--force"]);
        assert_eq!(out.status.code(), Some(16), "{point}: {}", text(&out));
        assert!(text(&out).contains("ha rejoin --resume"), "{}", text(&out));
        let outcome = if then == Then::Abort {
            let out = pair.ha(old_a, &["rejoin", "--abort"]);
            assert!(out.status.success(), "{point} --abort: {}", text(&out));
            assert!(text(&out).contains("not undone"), "{}", text(&out));
            assert!(!journal.exists(), "{point}: journal left");
            assert!(
                common::switch::sql(&old_socket).is_none(),
                "{point}: the old primary runs after --abort"
            );
            assert!(roles_of(&home).2, "{point}: not demoted");
            // Nothing but the stop (the server was already down) and
            // read-only looks before `recovered`; the password file is
            // outside the data directory.
            let unchanged = tree_digest(&data) == before;
            let recovered_now = point == REJOIN_POINTS[2].0
                || (waiting.is_none() && [REJOIN_POINTS[3].0, REJOIN_POINTS[4].0].contains(&point));
            if !recovered_now {
                assert!(unchanged, "{point}: the data directory changed");
            }
            waiting = Some((old_a, failed_over));
            if unchanged {
                "ended: node stopped and demoted, data directory byte for byte as it was"
            } else {
                "ended: node stopped and demoted (crash recovery had run)"
            }
        } else {
            if no_return {
                let out = pair.ha(old_a, &["rejoin", "--abort"]);
                assert_eq!(out.status.code(), Some(18), "{point}: {}", text(&out));
                assert!(text(&out).contains("--resume"), "{}", text(&out));
                assert!(journal.exists(), "{point}: the refused abort ended it");
                assert!(
                    !accepts_writes(&old_socket),
                    "{point}: old primary writable"
                );
            }
            let out = pair.ha(old_a, &["rejoin", "--resume", "--timeout", "60"]);
            assert!(
                out.status.success(),
                "{point} --resume: {}\n--- the old primary's log ---\n{}",
                text(&out),
                log_tail(&data)
            );
            // A crash recovery writes past the fork: only a rewind (never
            // a plain follow) makes this node a replica.
            assert!(text(&out).contains("(rewind"), "{point}: {}", text(&out));
            assert!(!journal.exists(), "{point}: journal left");
            wait_until("the old primary streams", 60, || pair.streams(!old_a));
            assert!(!roles_of(&home).2, "{point}: still demoted");
            assert_eq!(roles_of(&home).0, pair.node(!old_a).3);
            // What the new primary acknowledged since the failover is
            // there, and reaches the rejoined replica.
            let acked = acked_since(&load, failed_over);
            let missing = common::switch::missing_rows(&new_socket, &acked);
            assert!(missing.is_empty(), "{point}: rows lost: {missing:?}");
            wait_until("the replica replays the acknowledged rows", 60, || {
                common::switch::sql(&old_socket).is_some()
                    && common::switch::missing_rows(&old_socket, &acked).is_empty()
            });
            waiting = None;
            if no_return {
                "--abort refused (exit 18); --resume: streams from the new primary"
            } else {
                "--resume: streams from the new primary"
            }
        };
        assert_eq!(prober.two_primaries(), 0, "{point}: two primaries");
        let line = format!(
            "rejoin: kill at {point}, then {then:?}: {outcome} ({:.1} s)",
            case_began.elapsed().as_secs_f64()
        );
        eprintln!("FAULT {line}");
        table.push(line);
    }
    // Killed during pg_rewind, simulated: killed at `rewound`, then the
    // journal made to say pg_rewind had started (the cluster is still shut
    // down, as after a pg_rewind that died before its last write). The
    // directory may be half rewritten: --resume bootstraps instead and
    // keeps it aside.
    let case_began = Instant::now();
    let old_a = settled(&pair);
    crash_server(&mut pair, old_a);
    let out = pair.ha(!old_a, &["failover"]);
    assert!(out.status.success(), "failover: {}", text(&out));
    let failed_over = Instant::now();
    let (_, home, _, _) = pair.node(old_a);
    let (_, _, new_socket, _) = pair.node(!old_a);
    let journal = home.join("journal.json");
    let data = if old_a {
        pair.a.data_dir().to_path_buf()
    } else {
        pair.b.data_dir().to_path_buf()
    };
    let kept_aside = || {
        fs::read_dir(data.parent().unwrap())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".old-")
            })
            .count()
    };
    let aside_before = kept_aside();
    let out = pair
        .ha_cmd(
            old_a,
            &["rejoin", "--force", "--timeout", "60"],
            "ha-rejoin:rewound=crash",
        )
        .output()
        .unwrap();
    assert!(killed(&out), "not killed: {}", text(&out));
    let written = fs::read_to_string(&journal).unwrap();
    assert!(written.contains("\"rewind_started\": false"), "{written}");
    fs::write(
        &journal,
        written.replace("\"rewind_started\": false", "\"rewind_started\": true"),
    )
    .unwrap();
    let out = pair.ha(old_a, &["rejoin", "--abort"]);
    assert_eq!(out.status.code(), Some(18), "{}", text(&out));
    let out = pair.ha(old_a, &["rejoin", "--resume", "--timeout", "60"]);
    assert!(out.status.success(), "--resume: {}", text(&out));
    assert!(
        text(&out).contains("bootstrapping instead"),
        "{}",
        text(&out)
    );
    assert!(!journal.exists(), "journal left");
    assert_eq!(kept_aside(), aside_before + 1, "the old data is not kept");
    wait_until("the old primary streams", 60, || pair.streams(!old_a));
    assert!(!roles_of(home).2, "still demoted");
    let acked = acked_since(&load, failed_over);
    assert!(common::switch::missing_rows(new_socket, &acked).is_empty());
    assert_eq!(prober.two_primaries(), 0);
    let line = format!(
        "rejoin: killed during pg_rewind (simulated), then --abort, --resume: abort refused (exit 18); --resume bootstraps, the data directory kept aside ({:.1} s)",
        case_began.elapsed().as_secs_f64()
    );
    eprintln!("FAULT {line}");
    table.push(line);

    // An --abort killed after its first undo (the password file put back)
    // can only be finished by --abort: --resume is refused (exit 16).
    let case_began = Instant::now();
    let old_a = settled(&pair);
    crash_server(&mut pair, old_a);
    let out = pair.ha(!old_a, &["failover"]);
    assert!(out.status.success(), "failover: {}", text(&out));
    let (_, home, old_socket, _) = pair.node(old_a);
    let journal = home.join("journal.json");
    let out = pair
        .ha_cmd(
            old_a,
            &["rejoin", "--force", "--timeout", "60"],
            "ha-rejoin:step-1=crash",
        )
        .output()
        .unwrap();
    assert!(killed(&out), "not killed: {}", text(&out));
    let out = pair
        .ha_cmd(old_a, &["rejoin", "--abort"], "ha-rejoin:undo-1=crash")
        .output()
        .unwrap();
    assert!(killed(&out), "the abort was not killed: {}", text(&out));
    let out = pair.ha(old_a, &["rejoin", "--resume"]);
    assert_eq!(out.status.code(), Some(16), "{}", text(&out));
    assert!(text(&out).contains("ha rejoin --abort"), "{}", text(&out));
    let out = pair.ha(old_a, &["rejoin", "--abort"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!journal.exists(), "journal left");
    assert!(common::switch::sql(old_socket).is_none(), "the node runs");
    assert!(roles_of(home).2, "not demoted");
    let out = pair.ha(old_a, &["rejoin", "--force", "--timeout", "60"]);
    assert!(out.status.success(), "rejoin: {}", text(&out));
    wait_until("the old primary streams", 60, || pair.streams(!old_a));
    assert_eq!(prober.two_primaries(), 0);
    let line = format!(
        "rejoin: --abort killed after its first undo, then --resume, --abort: --resume refused (exit 16); --abort finishes the undo, node stopped and demoted; a new rejoin streams ({:.1} s)",
        case_began.elapsed().as_secs_f64()
    );
    eprintln!("FAULT {line}");
    table.push(line);

    let acked = load.finish();
    let probes = prober.probes.load(std::sync::atomic::Ordering::Relaxed);
    drop(prober);
    for line in &table {
        eprintln!("FAULT {line}");
    }
    eprintln!(
        "FAULT rejoin: {} cases in {:.0} s, {} rows acknowledged, {probes} probes, moments with two writable primaries: 0",
        table.len(),
        began.elapsed().as_secs_f64(),
        acked.len()
    );
}

/// Without `wal_log_hints` the rejoin hands over to a bootstrap: killed
/// at `bootstrapping` (past the point of no return: `--abort` refused,
/// exit 18), and killed inside the bootstrap it handed over to, where
/// `ha rejoin --resume` takes up the bootstrap's own journal.
#[test]
fn rejoin_hands_over_to_the_bootstrap_after_a_kill() {
    common::pg::reap_orphans_here();
    let Some(mut pair) = SwitchPair::new("jb") else {
        return;
    };
    let prober = Prober::start(pair.a.socket_dir(), pair.b.socket_dir());
    let mut table = Vec::new();
    for point in ["ha-rejoin:bootstrapping", "ha-bootstrap:copied"] {
        let case_began = Instant::now();
        let old_a = settled(&pair);
        crash_server(&mut pair, old_a);
        let out = pair.ha(!old_a, &["failover"]);
        assert!(out.status.success(), "failover: {}", text(&out));
        let (_, home, old_socket, _) = pair.node(old_a);
        let journal = home.join("journal.json");
        let out = pair
            .ha_cmd(
                old_a,
                &["rejoin", "--force", "--timeout", "60"],
                &format!("{point}=crash"),
            )
            .output()
            .unwrap();
        assert!(killed(&out), "{point}: not killed: {}", text(&out));
        assert!(journal.exists(), "{point}: no journal");
        let out = pair.ha(old_a, &["rejoin", "--abort"]);
        if point.starts_with("ha-rejoin") {
            assert_eq!(out.status.code(), Some(18), "{point}: {}", text(&out));
            assert!(text(&out).contains("--resume"), "{}", text(&out));
        } else {
            // The bootstrap's own journal: its own --abort, named.
            assert!(!out.status.success(), "{point}: {}", text(&out));
            assert!(
                text(&out).contains("ha bootstrap --abort"),
                "{point}: {}",
                text(&out)
            );
            assert!(journal.exists(), "{point}: the journal went");
        }
        assert!(!accepts_writes(old_socket), "{point}: old primary writable");
        let out = pair.ha(old_a, &["rejoin", "--resume", "--timeout", "60"]);
        assert!(out.status.success(), "{point} --resume: {}", text(&out));
        assert!(!journal.exists(), "{point}: journal left");
        wait_until("the old primary streams", 60, || pair.streams(!old_a));
        assert!(!roles_of(home).2, "{point}: still demoted");
        assert_eq!(prober.two_primaries(), 0, "{point}: two primaries");
        let line = format!(
            "rejoin (bootstrap): kill at {point}, then --resume: a streaming replica, the old data kept aside ({:.1} s)",
            case_began.elapsed().as_secs_f64()
        );
        eprintln!("FAULT {line}");
        table.push(line);
    }
    drop(prober);
    for line in &table {
        eprintln!("FAULT {line}");
    }
}

/// Issue 23 item 1, the rejoin variant of the trial's attack: `pg_rewind`
/// runs as the server's account, which owns the data directory's parent;
/// once it is done, that account renames the data directory and puts a
/// link to a directory elsewhere in its place, hoping root puts the node's
/// configuration files back through it. The put-back is refused in one
/// line naming the data directory, nothing is written through the link,
/// and once the directory is back `--resume` finishes the rejoin.
/// Node a crashed, b failed over to, and a's `ha rejoin --force` started
/// with the failpoint `held` (a sleep, for the test to act in), its output
/// piped; the prober watches both nodes from before the crash.
fn held_rejoin(pair: &mut SwitchPair, held: &str) -> (Prober, std::process::Child) {
    let prober = Prober::start(pair.a.socket_dir(), pair.b.socket_dir());
    crash_server(pair, true);
    let out = pair.ha(false, &["failover"]);
    assert!(out.status.success(), "failover: {}", text(&out));
    let child = pair
        .ha_cmd(true, &["rejoin", "--force", "--timeout", "60"], held)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (prober, child)
}

#[test]
fn a_data_directory_swapped_for_a_link_after_pg_rewind_is_refused() {
    let Some(mut pair) = rejoin_pair("x") else {
        return;
    };
    let (prober, mut child) = held_rejoin(&mut pair, "ha-rejoin:rewind-done=sleep(4000)");
    let data = pair.a.data_dir().to_path_buf();
    let outside = data.with_file_name("outside");
    fs::create_dir(&outside).unwrap();
    let moved = data.with_file_name("moved-by-postgres");
    // The window: keyferry says it reached the failpoint (pg_rewind and
    // keyferry's sync of the rewound files are done), then sleeps.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line.contains("failpoint ha-rejoin:rewind-done"));
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(true) => break,
            Ok(false) => {}
            Err(_) => panic!("keyferry never reached the point after pg_rewind"),
        }
    }
    fs::rename(&data, &moved).unwrap();
    std::os::unix::fs::symlink(&outside, &data).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", text(&out), reader.join().unwrap());
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("was replaced by someone else") && said.contains(data.to_str().unwrap()),
        "a one-line refusal naming the data directory: {said}"
    );
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written through the link"
    );
    // The directory back in its place: --resume puts the files back and
    // the node streams.
    fs::remove_file(&data).unwrap();
    fs::rename(&moved, &data).unwrap();
    let out = pair.ha(true, &["rejoin", "--resume", "--timeout", "60"]);
    assert!(out.status.success(), "resume: {}", text(&out));
    wait_until("the old primary streams", 60, || pair.streams(false));
    assert_eq!(prober.two_primaries(), 0);
    eprintln!("FAULT rejoin: data directory swapped for a link after pg_rewind: put-back refused, nothing written through the link; --resume streams");
}

/// The real `pg_rewind` runs without a dry run first when the divergence
/// is known from the new primary's timeline history; when it then fails
/// (here: the new primary stops letting the replication user read its
/// files, between the point of no return and `pg_rewind`'s start), the
/// rejoin hands over to a bootstrap at once, which keeps the data
/// directory aside, and the node streams.
#[test]
fn a_failed_pg_rewind_hands_over_to_the_bootstrap() {
    const READ: &str = "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)";
    let Some(mut pair) = rejoin_pair("fr") else {
        return;
    };
    let (prober, child) = held_rejoin(&mut pair, "ha-rejoin:rewound=sleep(3000)");
    let data = pair.a.data_dir().to_path_buf();
    std::thread::sleep(Duration::from_millis(1000));
    pair.b
        .connect()
        .batch_execute(&format!("REVOKE EXECUTE ON FUNCTION {READ} FROM repuser"))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    pair.b
        .connect()
        .batch_execute(&format!("GRANT EXECUTE ON FUNCTION {READ} TO repuser"))
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("pg_rewind failed") && said.contains("permission denied"),
        "{said}"
    );
    assert!(!said.contains("--dry-run"), "no dry run: {said}");
    let kept = fs::read_dir(data.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("data.old-"));
    assert!(kept, "the data directory is kept aside: {said}");
    wait_until("the old primary streams", 60, || pair.streams(false));
    assert!(
        !pair.node(true).1.join("journal.json").exists(),
        "the journal ended"
    );
    assert_eq!(prober.two_primaries(), 0);
    eprintln!("FAULT rejoin: pg_rewind failed after the point of no return: handed over to the bootstrap, data kept aside, streams");
}
