//! README's "Runbook: configure a new pair", command by command, on two
//! hosts: the primary in network namespace `a` (10.213.0.1), the secondary
//! in `b` (10.213.0.2), each with its own real PostgreSQL server on the
//! pair's one port, initialised with Debian's default authentication
//! (`initdb --auth-local=peer --auth-host=scram-sha-256`), and a listener
//! on the web-services port; keyferry runs as root, as README says. The
//! runbook's steps must give a passing `ha check` on both nodes, then a
//! bootstrap of the secondary, a healthy `ha status` on both, a switchover,
//! a healthy `ha status` on both again, then a key rotation through the
//! node registry ending with `keyferry nodes` showing both nodes agreeing
//! and `ha status` healthy on both.
//!
//! What differs from the README, and why: the example paths and addresses
//! are the test's own; passwords come from files where the runbook lets the
//! operator type them. Nothing else touches the servers: no SQL and no
//! `pg_hba.conf`/`pg_ident.conf` edit by the test (`ha prepare` does what
//! the pair needs). The servers listen on their node's address, which an
//! operator sets in `postgresql.conf` when installing. Needs root, `ip
//! netns` and PostgreSQL; skips otherwise (fails with
//! `KEYFERRY_REQUIRE_PG=1`).
#![cfg(unix)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::netns::{NetnsPair, WebService, ADDR_A, ADDR_B};
use common::pair::Pair;
use common::pg::{Auth, PgServer};

const WEB_PORT: u16 = 6500;
const REPLICATION_PASSWORD: &str = "runbook replication password";
const BUNDLE_PASSWORD: &str = "runbook bundle password";

/// `keyferry --home HOME ARGS…` on the host of namespace `ns`.
fn on(ns: &str, home: &Path, args: &[&str]) -> Output {
    Pair::keyferry_cmd(ns, home, args).output().unwrap()
}

fn ok(out: &Output) -> String {
    common::succeeded(out)
}

fn server(ns: &str, addr: &str) -> Option<PgServer> {
    common::pair::server_with_auth(ns, addr, &[], Auth::Debian)
}

/// What `ha status` on one node said: healthy, with `primary` running as
/// the primary and the other as its streaming replica.
fn healthy(status: &Output, primary: &str) -> String {
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        status.status.code(),
        Some(0),
        "ha status:\n{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        text.contains("Running Primary") && text.contains("Running Replica"),
        "{text}"
    );
    assert!(text.contains("replication Active"), "{text}");
    let primary_line = text
        .lines()
        .find(|l| l.contains("Running Primary"))
        .unwrap_or_default();
    assert!(primary_line.contains(primary), "{text}");
    text.into_owned()
}

#[test]
fn the_runbook_leads_to_a_passing_check_and_a_healthy_pair() {
    let Some(ns) = NetnsPair::create("r") else {
        return;
    };
    let Some(primary) = server(&ns.a, ADDR_A) else {
        return;
    };
    let Some(secondary) = server(&ns.b, ADDR_B) else {
        return;
    };
    let _web_a = WebService::start(&ns.a, ADDR_A, WEB_PORT);
    let _web_b = WebService::start(&ns.b, ADDR_B, WEB_PORT);

    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| tmp.path().join(name);
    let (home_a, home_b) = (path("home-a"), path("home-b"));
    for dir in ["app-a", "app-b"] {
        fs::create_dir(path(dir)).unwrap();
    }
    // README: the archive directory, the server's account's.
    for dir in ["archive-a", "archive-b"] {
        let made = std::process::Command::new("install")
            .args(["-d", "-o", "postgres", "-g", "postgres", "-m", "0700"])
            .arg(path(dir))
            .output()
            .unwrap();
        ok(&made);
    }
    let app_a = path("app-a").join("appsettings.json");
    fs::write(&app_a, b"{ \"ConnectionStrings\": {} }\n").unwrap();
    let app_b = path("app-b").join("appsettings.json");
    let secret = |name: &str, text: &str| {
        let p = path(name);
        fs::write(&p, format!("{text}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let bundle_pw = secret("bundle.pw", BUNDLE_PASSWORD);
    let repuser_pw = secret("repuser.pw", REPLICATION_PASSWORD);
    let keys = path("keys.exp");
    let keys = keys.to_str().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let pg_bin = s(primary.bin_dir());

    // On the primary.
    ok(&on(&ns.a, &home_a, &["init"]));
    ok(&on(
        &ns.a,
        &home_a,
        &[
            "ha",
            "init",
            "--node",
            "pam-a",
            "--primary",
            ADDR_A,
            "--secondary",
            ADDR_B,
            "--pg-bin",
            &pg_bin,
            "--pg-data",
            &s(primary.data_dir()),
            "--archive-dir",
            &s(&path("archive-a")),
            "--appsettings",
            &s(&app_a),
        ],
    ));
    let prepare = ok(&on(
        &ns.a,
        &home_a,
        &["ha", "prepare", "--restart", "--password-file", &repuser_pw],
    ));
    eprintln!("{prepare}");
    ok(&on(
        &ns.a,
        &home_a,
        &[
            "export",
            "-n",
            keys,
            "--with-config",
            "--password-file",
            &bundle_pw,
        ],
    ));
    let primary_fp = ok(&on(&ns.a, &home_a, &["keys", "fingerprint"]))
        .trim()
        .to_owned();

    // On the secondary.
    let secondary_paths = [
        "--pg-data",
        &s(secondary.data_dir()),
        "--archive-dir",
        &s(&path("archive-b")),
        "--appsettings",
        &s(&app_b),
    ]
    .map(str::to_owned);
    let import = |extra: &[&str]| {
        let mut args = vec!["import", "-n", keys, "--accept-config", "--node", "pam-b"];
        args.extend(secondary_paths.iter().map(String::as_str));
        args.extend(["--password-file", &bundle_pw]);
        args.extend(extra);
        ok(&on(&ns.b, &home_b, &args))
    };
    import(&["--dry-run"]);
    import(&["--delete"]);
    assert!(!Path::new(keys).exists(), "--delete removed the bundle");
    assert_eq!(fs::read(&app_b).unwrap(), fs::read(&app_a).unwrap());
    let secondary_fp = ok(&on(&ns.b, &home_b, &["keys", "fingerprint"]));
    assert_eq!(secondary_fp.trim(), primary_fp, "equal to the primary's");
    ok(&on(
        &ns.b,
        &home_b,
        &["ha", "prepare", "--restart", "--password-file", &repuser_pw],
    ));
    let check = on(
        &ns.b,
        &home_b,
        &[
            "ha",
            "check",
            "--password-file",
            &repuser_pw,
            "--peer-fingerprint",
            &primary_fp,
        ],
    );
    assert_eq!(
        check.status.code(),
        Some(0),
        "ha check on the secondary:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // Shown with --nocapture: the check as the operator sees it.
    eprintln!("{}", String::from_utf8_lossy(&check.stdout));
    ok(&on(
        &ns.b,
        &home_b,
        &["ha", "archive", "clean", "--dry-run"],
    ));
    ok(&on(&ns.b, &home_b, &["ha", "archive", "clean"]));

    // And on the primary.
    let check = on(
        &ns.a,
        &home_a,
        &["ha", "check", "--password-file", &repuser_pw],
    );
    assert_eq!(
        check.status.code(),
        Some(0),
        "ha check on the primary:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // The secondary becomes a replica; both nodes see a healthy pair.
    let bootstrap = ok(&on(
        &ns.b,
        &home_b,
        &[
            "ha",
            "bootstrap",
            "--slot",
            "pam_b",
            "--password-file",
            &repuser_pw,
            "--yes",
        ],
    ));
    eprintln!("{bootstrap}");
    assert!(bootstrap.contains("verdict: healthy"), "{bootstrap}");
    for (ns, home) in [(&ns.b, &home_b), (&ns.a, &home_a)] {
        healthy(
            &on(ns, home, &["ha", "status", "--password-file", &repuser_pw]),
            ADDR_A,
        );
    }

    // A planned switchover, on the primary: the secondary becomes the
    // primary, the old primary its replica.
    let switchover = on(
        &ns.a,
        &home_a,
        &["ha", "switchover", "--password-file", &repuser_pw],
    );
    if !switchover.status.success() {
        for server in [&primary, &secondary] {
            let log = server.data_dir().with_extension("pg_ctl.log");
            eprintln!(
                "--- {} ---\n{}",
                log.display(),
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
    }
    let switchover = ok(&switchover);
    eprintln!("{switchover}");
    for (ns, home) in [(&ns.a, &home_a), (&ns.b, &home_b)] {
        healthy(
            &on(ns, home, &["ha", "status", "--password-file", &repuser_pw]),
            ADDR_B,
        );
    }

    // The runbook's key rotation on the pair, pam-b the primary now: the
    // registry (the replication role's, both nodes from ha.toml; its
    // password in the libpq password file, PGPASSFILE here, ~/.pgpass in
    // README), then stage, distribute, promote, distribute, retire. No
    // rewrap: the pair has no application values here.
    let pgpass = secret(
        "pgpass",
        &format!(
            "{ADDR_A}:5432:postgres:repuser:{REPLICATION_PASSWORD}\n\
             {ADDR_B}:5432:postgres:repuser:{REPLICATION_PASSWORD}"
        ),
    );
    let pgpass_cmd = |ns: &str, home: &Path, args: &[&str]| {
        Pair::keyferry_cmd(ns, home, args)
            .env("PGPASSFILE", &pgpass)
            .output()
            .unwrap()
    };
    let with_pgpass = |ns: &str, home: &Path, args: &[&str]| ok(&pgpass_cmd(ns, home, args));
    let b = |args: &[&str]| with_pgpass(&ns.b, &home_b, args);
    let a = |args: &[&str]| with_pgpass(&ns.a, &home_a, args);
    let agree = |nodes: &str| {
        let rows: Vec<&str> = nodes.lines().filter(|l| l.starts_with("pam-")).collect();
        let pairs = rows.len();
        let agreeing = rows.iter().filter(|l| l.ends_with("agrees")).count();
        assert!(pairs == 2 && agreeing == 2, "{nodes}");
    };
    let export = || b(&["export", "-n", keys, "--password-file", &bundle_pw]);
    let import = || {
        a(&[
            "import",
            "-n",
            keys,
            "--delete",
            "--password-file",
            &bundle_pw,
        ])
    };
    b(&["nodes", "connect"]);
    a(&["nodes", "connect"]);
    agree(&b(&["nodes"]));
    b(&["rotate", "--stage"]);
    export();
    import();
    b(&["promote", "2"]);
    export();
    import();
    agree(&b(&["nodes"]));
    b(&["disable", "1"]);
    b(&["destroy", "1", "--yes"]);
    a(&["disable", "1"]);
    a(&["destroy", "1", "--yes"]);
    let nodes = b(&["nodes"]);
    eprintln!("{nodes}");
    agree(&nodes);
    for (ns, home) in [(&ns.a, &home_a), (&ns.b, &home_b)] {
        let args = ["ha", "status", "--password-file", &repuser_pw];
        let status = healthy(&pgpass_cmd(ns, home, &args), ADDR_B);
        assert!(
            status.contains("keys: all 2 registered nodes agree"),
            "{status}"
        );
    }
    for home in [&home_a, &home_b] {
        ok(&on(&ns.a, home, &["audit", "verify"]));
    }
}
