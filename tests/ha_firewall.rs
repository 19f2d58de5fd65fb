//! `keyferry ha firewall`, run for real: with no firewall program on PATH
//! (nothing changes, the rules are printed), and with a stub `nft` first
//! on PATH that logs the arguments keyferry gives it and prints a canned
//! ruleset (the argv keyferry builds, its idempotence, `--remove`).
#![cfg(unix)]

mod common;

use std::fs;
use std::net::{IpAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::node::Node;

/// One of this machine's non-loopback IPv4 addresses (the source of the
/// route out; no packet is sent), or `None` on a machine without one.
fn own_address() -> Option<String> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.200:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    match ip {
        IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_unspecified() => Some(v4.to_string()),
        _ => None,
    }
}

const PEER: &str = "10.0.0.2";

/// A node whose `ha.toml` makes this machine the primary and `PEER` the
/// secondary, ports 5432 and 6500.
fn pair_node(initialised: bool) -> Option<Node> {
    let Some(me) = own_address() else {
        eprintln!("skipped: this machine has no non-loopback IPv4 address");
        return None;
    };
    if me == PEER {
        eprintln!("skipped: this machine is {PEER}");
        return None;
    }
    let node = if initialised {
        Node::initialised()
    } else {
        Node::empty()
    };
    node.cmd()
        .args([
            "ha",
            "init",
            "--node",
            "a",
            "--primary",
            &me,
            "--secondary",
            PEER,
        ])
        .assert()
        .success();
    Some(node)
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn firewall(node: &Node, path: &Path, args: &[&str]) -> String {
    let out = node
        .cmd()
        .args(["ha", "firewall"])
        .args(args)
        .env("PATH", path)
        .env("STUB_DIR", path)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn with_no_firewall_the_rules_are_printed_and_nothing_changes() {
    let Some(node) = pair_node(true) else { return };
    let empty = node.path("no-programs");
    fs::create_dir(&empty).unwrap();
    let before = snapshot(&node.home);
    for args in [&["--dry-run"][..], &[], &["--remove"]] {
        let out = firewall(&node, &empty, args);
        assert!(out.starts_with("no active firewall found"), "{out}");
        assert!(out.contains("nothing was changed"), "{out}");
        if args == ["--remove"] {
            assert!(out.contains("firewall-cmd '--remove-rich-rule=rule family=\"ipv4\" source address=\"10.0.0.2\" port port=\"5432\" protocol=\"tcp\" accept'"), "{out}");
            continue;
        }
        for line in [
            "firewall-cmd '--add-rich-rule=rule family=\"ipv4\" source address=\"10.0.0.2\" port port=\"5432\" protocol=\"tcp\" accept'",
            "firewall-cmd --permanent '--add-rich-rule=rule family=\"ipv4\" source address=\"10.0.0.2\" port port=\"6500\" protocol=\"tcp\" accept'",
            "ufw allow from 10.0.0.2 to any port 5432 proto tcp comment keyferry",
            "ufw allow from 10.0.0.2 to any port 6500 proto tcp comment keyferry",
            "nft add table inet keyferry",
            "nft add rule inet keyferry input ip saddr 10.0.0.2 tcp dport 5432 accept comment '\"keyferry 5432 from 10.0.0.2\"'",
            "nft add rule inet keyferry input ip saddr 10.0.0.2 tcp dport 6500 accept comment '\"keyferry 6500 from 10.0.0.2\"'",
        ] {
            assert!(out.lines().any(|l| l.trim() == line), "{line} not in:\n{out}");
        }
        // The table and chain are made once, not once per rule.
        assert_eq!(out.matches("nft add table").count(), 1, "{out}");
    }
    assert_eq!(snapshot(&node.home), before, "the home changed");
}

const STUB: &str = r#"#!/bin/sh
PATH=/usr/bin:/bin
printf '%s|' "$@" >> "$STUB_DIR/nft.log"
echo >> "$STUB_DIR/nft.log"
if [ -n "$STUB_FAIL" ] && [ "$1 $2" = "add rule" ]; then
  case "$*" in *"$STUB_FAIL"*) echo "Error: Could not process rule: Operation not permitted" >&2; exit 1 ;; esac
fi
case "$1 $2" in
  "list ruleset") cat "$STUB_DIR/ruleset" ;;
  "-a list") cat "$STUB_DIR/handles" ;;
esac
exit 0
"#;

const OTHER_TABLE: &str = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n";

#[test]
fn nftables_rules_are_added_once_and_removed_by_handle() {
    let Some(node) = pair_node(true) else { return };
    let stubs = node.path("stubs");
    fs::create_dir(&stubs).unwrap();
    let nft = stubs.join("nft");
    fs::write(&nft, STUB).unwrap();
    fs::set_permissions(&nft, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(stubs.join("ruleset"), OTHER_TABLE).unwrap();
    let log = stubs.join("nft.log");
    let run = |args: &[&str]| {
        let out = node
            .cmd()
            .args(["ha", "firewall"])
            .args(args)
            .env("PATH", &stubs)
            .env("STUB_DIR", &stubs)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        String::from_utf8(out).unwrap()
    };
    let changes = |log: &Path| -> Vec<String> {
        fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("list|") && !l.starts_with("-a|"))
            .map(str::to_owned)
            .collect()
    };

    let out = run(&["--dry-run"]);
    assert!(
        out.contains("keyferry 5432 from 10.0.0.2: would add"),
        "{out}"
    );
    assert!(changes(&log).is_empty(), "a dry run changed the firewall");

    let out = run(&[]);
    assert!(out.contains("keyferry 6500 from 10.0.0.2: added"), "{out}");
    assert_eq!(
        changes(&log),
        [
            "add|table|inet|keyferry|",
            "add|chain|inet|keyferry|input|{ type filter hook input priority 0 ; policy accept ; }|",
            "add|rule|inet|keyferry|input|ip|saddr|10.0.0.2|tcp|dport|5432|accept|comment|\"keyferry 5432 from 10.0.0.2\"|",
            "add|rule|inet|keyferry|input|ip|saddr|10.0.0.2|tcp|dport|6500|accept|comment|\"keyferry 6500 from 10.0.0.2\"|",
        ]
    );
    let audit = fs::read_to_string(node.home.join("audit.log")).unwrap();
    let record = audit
        .lines()
        .filter(|l| l.contains("\"ha-firewall\""))
        .collect::<Vec<_>>();
    assert!(
        record
            .iter()
            .any(|l| l.contains("keyferry 6500 from 10.0.0.2") && l.contains("nftables")),
        "no audit record names the rules:\n{audit}"
    );
    node.cmd().args(["audit", "verify"]).assert().success();

    // The firewall now holds keyferry's table: nothing is added again.
    fs::remove_file(&log).unwrap();
    let ours = "table inet keyferry {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\
                \t\tip saddr 10.0.0.2 tcp dport 5432 accept comment \"keyferry 5432 from 10.0.0.2\" # handle 4\n\
                \t\tip saddr 10.0.0.2 tcp dport 6500 accept comment \"keyferry 6500 from 10.0.0.2\" # handle 5\n\t}\n}\n";
    fs::write(
        stubs.join("ruleset"),
        format!(
            "{OTHER_TABLE}{}",
            ours.replace(" # handle 4", "").replace(" # handle 5", "")
        ),
    )
    .unwrap();
    fs::write(stubs.join("handles"), ours).unwrap();
    let out = run(&[]);
    assert!(
        out.contains("keyferry 5432 from 10.0.0.2: present"),
        "{out}"
    );
    assert!(out.contains("nftables: nothing to change"), "{out}");
    assert!(changes(&log).is_empty(), "a present rule was added again");

    let out = run(&["--remove"]);
    assert!(
        out.contains("keyferry 6500 from 10.0.0.2: removed"),
        "{out}"
    );
    assert_eq!(
        changes(&log),
        [
            "delete|rule|inet|keyferry|input|handle|4|",
            "delete|rule|inet|keyferry|input|handle|5|",
        ]
    );
}

/// `ha check`'s `firewall` fact: `warn` with the fix when it cannot tell,
/// `ok` when the stub firewall holds keyferry's two rules.
#[test]
fn ha_check_tells_whether_the_rules_are_there() {
    let Some(node) = pair_node(false) else { return };
    let stubs = node.path("stubs");
    fs::create_dir(&stubs).unwrap();
    let fact = |path: &Path| -> serde_json::Value {
        let out = node
            .cmd()
            .args(["ha", "check", "--json", "--timeout-ms", "200"])
            .env("PATH", path)
            .env("STUB_DIR", &stubs)
            .env_remove("PGPASSFILE")
            .output()
            .unwrap();
        common::check_fact(&out.stdout, "firewall")
    };
    let f = fact(&stubs);
    assert_eq!(f["status"], "warn", "{f}");
    assert!(
        f["message"].as_str().unwrap().contains("cannot tell"),
        "{f}"
    );
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .starts_with("keyferry ha firewall"),
        "{f}"
    );

    let nft = stubs.join("nft");
    fs::write(&nft, STUB).unwrap();
    fs::set_permissions(&nft, fs::Permissions::from_mode(0o755)).unwrap();
    let one = "table inet keyferry {\n\tchain input {\n\
               \t\tip saddr 10.0.0.2 tcp dport 5432 accept comment \"keyferry 5432 from 10.0.0.2\"\n";
    fs::write(stubs.join("ruleset"), format!("{one}\t}}\n}}\n")).unwrap();
    let f = fact(&stubs);
    assert_eq!(f["status"], "warn", "{f}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("keyferry 6500 from 10.0.0.2"),
        "{f}"
    );
    assert_eq!(f["fix"], "keyferry ha firewall", "{f}");

    let both = format!(
        "{one}\t\tip saddr 10.0.0.2 tcp dport 6500 accept comment \"keyferry 6500 from 10.0.0.2\"\n\t}}\n}}\n"
    );
    fs::write(stubs.join("ruleset"), both).unwrap();
    let f = fact(&stubs);
    assert_eq!(f["status"], "ok", "{f}");
}

/// A firewall command that fails stops the run with exit 1, names the
/// command and the way out, leaves a `failed` audit record, and the next
/// run completes the rest.
#[test]
fn a_failing_firewall_command_is_reported_and_the_next_run_completes() {
    let Some(node) = pair_node(true) else { return };
    let stubs = node.path("stubs");
    fs::create_dir(&stubs).unwrap();
    let nft = stubs.join("nft");
    fs::write(&nft, STUB).unwrap();
    fs::set_permissions(&nft, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(stubs.join("ruleset"), OTHER_TABLE).unwrap();
    let out = node
        .cmd()
        .args(["ha", "firewall"])
        .env("PATH", &stubs)
        .env("STUB_DIR", &stubs)
        .env("STUB_FAIL", "dport 6500")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dport 6500"), "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(err.contains("run `keyferry ha firewall` again"), "{err}");
    let audit = fs::read_to_string(node.home.join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"ha-firewall\"") && l.contains("failed")),
        "{audit}"
    );
    let out = firewall(&node, &stubs, &[]);
    // The stub's ruleset did not change, so both rules are added again;
    // the point is that nothing from the failed run stops this one.
    assert!(out.contains("keyferry 6500 from 10.0.0.2: added"), "{out}");
}
