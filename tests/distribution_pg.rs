//! Issue 22 against a real PostgreSQL server started by the test: keys
//! reach every host without a typed password after first contact.
//!
//! A pair (primary and secondary) and two remote hosts (Action,
//! Scheduler), each a separate keyferry home, share one registry. After one
//! password bundle each (which pins the pair's signing key), the primary
//! approves every host by the code read off it, and a full rotation (stage,
//! promote, rewrap of the stored secrets, disable, destroy) is driven from
//! the primary alone: every change
//! distributes, every host syncs on its own, and `keyferry nodes` ends with
//! all agreeing. Then each attack a registry (database) compromise can
//! make is refused with a clear message and changes nothing on the host,
//! byte for byte: a forged row, a distribution signed by another pair's
//! key, a replayed older one, one sealed to another host, a truncated and a
//! tampered one, and a row whose host key was swapped (approval refused, the
//! approved key still the only recipient).
#![cfg(unix)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::node::{assert_same, snapshot, Node};
use common::registry::{kf, start, Registry, REG_PASSWORD};
use common::succeeded as ok;
use serde_json::Value;

/// Fails with `code`, and says `says` on stderr.
fn refused(out: &Output, code: i32, says: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(says), "expected {says:?} in: {err}");
}

/// First contact: a keys-only password bundle from `from`, then the
/// registry connection under `name` and `role`; returns the host key code.
fn first_contact(from: &Node, to: &Node, reg: &Registry, name: &str, role: &str) -> String {
    let bundle = from.path(&format!("{name}.kfb"));
    from.export(&bundle, &[]);
    let out = to.import_cmd(&bundle).arg("--keys-only").output().unwrap();
    ok(&out);
    ok(&kf(
        to,
        reg,
        &[
            "nodes", "connect", "--dsn", &reg.dsn, "--name", name, "--role", role,
        ],
    ));
    host_code(to)
}

fn host_code(node: &Node) -> String {
    let out = node
        .cmd()
        .args(["keys", "fingerprint", "--host", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&ok(&out)).unwrap();
    v["host_key"].as_str().unwrap().to_owned()
}

/// `nodes --json` on `node`: (name, state) of every node.
fn states(node: &Node, reg: &Registry) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(&ok(&kf(node, reg, &["nodes", "--json"]))).unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                n["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn sync(node: &Node, reg: &Registry) -> String {
    ok(&kf(node, reg, &["nodes", "sync"]))
}

/// A pair plus an Action and a Scheduler host, connected and approved.
struct Fleet {
    primary: Node,
    secondary: Node,
    action: Node,
    scheduler: Node,
    reg: Registry,
}

fn fleet() -> Option<Fleet> {
    let primary = Node::initialised();
    let reg = start(primary.dir.path())?;
    ok(&kf(
        &primary,
        &reg,
        &[
            "nodes", "connect", "--dsn", &reg.dsn, "--name", "pam-a", "--role", "pair",
        ],
    ));
    let secondary = Node::empty();
    let action = Node::empty();
    let scheduler = Node::empty();
    for (node, name, role) in [
        (&secondary, "pam-b", "pair"),
        (&action, "act-1", "action"),
        (&scheduler, "sch-1", "scheduler"),
    ] {
        let code = first_contact(&primary, node, &reg, name, role);
        let out = ok(&kf(
            &primary,
            &reg,
            &["nodes", "approve", name, "--fingerprint", &code],
        ));
        assert!(out.contains(&format!("approved {name}")), "{out}");
    }
    Some(Fleet {
        primary,
        secondary,
        action,
        scheduler,
        reg,
    })
}

impl Fleet {
    fn hosts(&self) -> [&Node; 3] {
        [&self.secondary, &self.action, &self.scheduler]
    }

    fn sync_all(&self) {
        for h in self.hosts() {
            sync(h, &self.reg);
        }
    }

    fn all_agree(&self) {
        let s = states(&self.primary, &self.reg);
        assert_eq!(s.len(), 4, "{s:?}");
        assert!(s.iter().all(|(_, st)| st == "agrees"), "{s:?}");
        for h in self.hosts() {
            assert_eq!(h.fingerprint(), self.primary.fingerprint());
        }
    }

    fn row(&self, name: &str) -> Vec<u8> {
        self.reg
            .server
            .connect()
            .query_one(
                "SELECT bundle FROM keyferry_distributions WHERE name = $1",
                &[&name],
            )
            .unwrap()
            .get(0)
    }

    fn set_row(&self, name: &str, bundle: &[u8]) {
        self.reg
            .server
            .connect()
            .execute(
                "UPDATE keyferry_distributions SET bundle = $2 WHERE name = $1",
                &[&name, &bundle],
            )
            .unwrap();
    }
}

#[test]
fn a_full_rotation_driven_from_the_primary() {
    let Some(f) = fleet() else {
        return;
    };
    let out = ok(&kf(&f.primary, &f.reg, &["distribute"]));
    assert!(out.contains("for 3 host(s)"), "{out}");
    assert!(out.contains("act-1 (action, keys-only"), "{out}");
    assert!(out.contains("pam-b (pair, keyring"), "{out}");
    f.sync_all();
    // The secondary can now sign (it got the whole keyring), the remote
    // hosts only pin.
    let id = |n: &Node| -> Value {
        serde_json::from_str(&ok(&n
            .cmd()
            .args(["keys", "fingerprint", "--host", "--json"])
            .output()
            .unwrap()))
        .unwrap()
    };
    assert_eq!(id(&f.secondary)["can_sign"], true);
    assert_eq!(id(&f.action)["can_sign"], false);
    assert_eq!(id(&f.action)["signing_key"], id(&f.primary)["signing_key"]);
    f.all_agree();
    let listing: Value =
        serde_json::from_str(&ok(&kf(&f.primary, &f.reg, &["nodes", "--json"]))).unwrap();
    for n in listing["nodes"].as_array().unwrap() {
        let expected = if n["name"] == "pam-a" {
            "-"
        } else {
            "approved"
        };
        assert_eq!(n["distribution"], expected, "{n}");
    }

    // The application's stored secrets, under key 1, rewrapped below.
    let keyring = |n: &Node| {
        keyferry::keyring::Keyring::from_json(&fs::read(n.home.join("keyring.json")).unwrap())
            .unwrap()
    };
    let mut app = f.reg.server.connect_as("kf", REG_PASSWORD);
    app.batch_execute("CREATE TABLE app_creds (id bigint PRIMARY KEY, secret text NOT NULL)")
        .unwrap();
    let k1 = keyring(&f.primary);
    for id in 1..=20i64 {
        let sealed = k1
            .encrypt_text(format!("secret {id}").as_bytes(), id.to_string().as_bytes())
            .unwrap();
        app.execute("INSERT INTO app_creds VALUES ($1, $2)", &[&id, &sealed])
            .unwrap();
    }
    let target = [
        "--dsn",
        f.reg.dsn.as_str(),
        "--table",
        "app_creds",
        "--column",
        "secret",
        "--aad",
        "{id}",
    ];
    let mut add = vec!["rewrap", "add-target"];
    add.extend(target);
    ok(&kf(&f.primary, &f.reg, &add));

    // Stage: distributed at once; promote waits for every node.
    let out = ok(&kf(&f.primary, &f.reg, &["rotate", "--stage"]));
    assert!(out.contains("for 3 host(s)"), "{out}");
    let out = kf(&f.primary, &f.reg, &["promote", "2"]);
    refused(&out, 12, "lack key 2");
    for h in f.hosts() {
        let out = sync(h, &f.reg);
        assert!(out.contains("took distribution"), "{out}");
    }
    let s = states(&f.primary, &f.reg);
    assert!(s.iter().all(|(_, st)| st == "agrees"), "{s:?}");
    ok(&kf(&f.primary, &f.reg, &["promote", "2"]));
    f.sync_all();
    f.all_agree();
    // disable waits for the stored values: rewrap them under key 2.
    refused(
        &kf(&f.primary, &f.reg, &["disable", "1"]),
        12,
        "20 stored value(s)",
    );
    ok(&kf(&f.primary, &f.reg, &["rewrap"]));
    ok(&kf(&f.primary, &f.reg, &["disable", "1"]));
    f.sync_all();
    f.all_agree();
    ok(&kf(&f.primary, &f.reg, &["destroy", "1", "--yes"]));
    for h in f.hosts() {
        sync(h, &f.reg);
    }
    f.all_agree();
    // A second sync of the same distribution changes nothing.
    let before = snapshot(&f.action.home);
    let out = sync(&f.action, &f.reg);
    assert!(out.contains("up to date"), "{out}");
    assert_same(&before, &snapshot(&f.action.home));
    for n in [&f.primary, &f.secondary, &f.action, &f.scheduler] {
        ok(&n.cmd().args(["audit", "verify"]).output().unwrap());
    }
    // Every stored secret opens under the keyring the hosts now hold.
    let k2 = keyring(&f.action);
    for row in app.query("SELECT id, secret FROM app_creds", &[]).unwrap() {
        let (id, sealed): (i64, String) = (row.get(0), row.get(1));
        let plain = k2.decrypt_text(&sealed, id.to_string().as_bytes()).unwrap();
        assert_eq!(plain.as_slice(), format!("secret {id}").as_bytes());
    }
    // Key 1 is gone everywhere.
    let keys: Value = serde_json::from_str(&ok(&f
        .action
        .cmd()
        .args(["keys", "list", "--json"])
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(keys["keys"][0]["has_material"], false);
    // ...and from every host's keystore backups.
    for h in f.hosts() {
        for entry in fs::read_dir(h.home.join("backups")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("keyring.json.") {
                continue;
            }
            let doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
            let key1 = doc["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["id"] == 1)
                .unwrap();
            assert!(
                key1.get("material").is_none(),
                "{} holds key 1",
                path.display()
            );
        }
    }
}

#[test]
fn every_registry_attack_is_refused_and_changes_nothing() {
    let Some(f) = fleet() else {
        return;
    };
    ok(&kf(&f.primary, &f.reg, &["distribute"]));
    f.sync_all();
    let old = f.row("act-1");
    ok(&kf(&f.primary, &f.reg, &["rotate", "--stage"]));
    sync(&f.action, &f.reg);
    let current = f.row("act-1");
    let home = &f.action.home;
    let before = snapshot(home);
    let check = |bundle: &[u8], code: i32, says: &str| {
        f.set_row("act-1", bundle);
        refused(&kf(&f.action, &f.reg, &["nodes", "sync"]), code, says);
        assert_same(&before, &snapshot(home));
    };

    // A replayed older distribution (validly signed, sealed to this host).
    check(&old, 1, "older than the one this host took");
    // One sealed to another host.
    check(&f.row("sch-1"), 4, "not sealed to this host's key");
    // Truncated, appended to, and one byte changed anywhere.
    check(
        &current[..current.len() - 10],
        4,
        "signature does not verify",
    );
    check(&current[..40], 4, "cut off");
    let mut longer = current.clone();
    longer.push(0);
    check(&longer, 4, "signature does not verify");
    for at in [9, 40, 100, 200, current.len() / 2, current.len() - 1] {
        let mut t = current.clone();
        t[at] ^= 1;
        f.set_row("act-1", &t);
        let out = kf(&f.action, &f.reg, &["nodes", "sync"]);
        assert_eq!(out.status.code(), Some(4), "flip at {at}: {out:?}");
        assert_same(&before, &snapshot(home));
    }
    // A forged row: not a bundle at all.
    check(b"KFBUNDLE\x02\x01garbage", 4, "cut off");
    check(b"hello", 4, "not a keyferry bundle");

    // Another pair's signing key: an attacker with its own keyferry
    // approves act-1 from the registry row and distributes to it.
    let evil = Node::initialised();
    ok(&kf(
        &evil,
        &f.reg,
        &[
            "nodes", "connect", "--dsn", &f.reg.dsn, "--name", "evil", "--role", "pair",
        ],
    ));
    let code = host_code(&f.action);
    ok(&kf(
        &evil,
        &f.reg,
        &["nodes", "approve", "act-1", "--fingerprint", &code],
    ));
    ok(&kf(&evil, &f.reg, &["distribute"]));
    refused(
        &kf(&f.action, &f.reg, &["nodes", "sync"]),
        4,
        "this host accepts only the pair's signing key",
    );
    assert_same(&before, &snapshot(home));

    // A row whose host key was swapped for a rogue host's: approving it
    // with the code read off the real host is refused, and the primary
    // still seals only to the key it approved.
    let rogue = Node::empty();
    let rogue_code = first_contact(&f.primary, &rogue, &f.reg, "rogue", "action");
    refused(
        &kf(&rogue, &f.reg, &["nodes", "sync"]),
        1,
        "holds no distribution",
    );
    let mut conn = f.reg.server.connect();
    let rogue_key: String = conn
        .query_one(
            "SELECT host_key FROM keyferry_nodes WHERE name = 'rogue'",
            &[],
        )
        .unwrap()
        .get(0);
    conn.execute(
        "UPDATE keyferry_nodes SET host_key = $1 WHERE name = 'act-1'",
        &[&rogue_key],
    )
    .unwrap();
    let primary_before = snapshot(&f.primary.home);
    refused(
        &kf(
            &f.primary,
            &f.reg,
            &["nodes", "approve", "act-1", "--fingerprint", &code],
        ),
        1,
        "the row was not written by that host",
    );
    assert_same(&primary_before, &snapshot(&f.primary.home));
    refused(
        &kf(
            &f.primary,
            &f.reg,
            &["nodes", "approve", "act-1", "--fingerprint", "kfh1:nope"],
        ),
        2,
        "is not a host key code",
    );
    let out = ok(&kf(&f.primary, &f.reg, &["distribute"]));
    assert!(!out.contains("rogue"), "{out}");
    // The rogue host gets act-1's distribution copied into a row of its
    // own: it is not sealed to its key.
    conn.execute(
        "INSERT INTO keyferry_distributions (name, serial, by_node, bundle) \
         SELECT 'rogue', serial, by_node, bundle FROM keyferry_distributions WHERE name = 'act-1'",
        &[],
    )
    .unwrap();
    refused(
        &kf(&rogue, &f.reg, &["nodes", "sync"]),
        4,
        &format!("not sealed to this host's key {rogue_code}"),
    );
    // The real host still takes what the primary distributes.
    let out = sync(&f.action, &f.reg);
    assert!(out.contains("took distribution"), "{out}");
    ok(&f.action.cmd().args(["audit", "verify"]).output().unwrap());
}

#[test]
fn remove_stops_distributing_to_a_host() {
    let Some(f) = fleet() else {
        return;
    };
    let out = ok(&kf(&f.primary, &f.reg, &["nodes", "remove", "sch-1"]));
    assert!(
        out.contains("the keys it already holds stay with it until the next rotation"),
        "{out}"
    );
    let out = ok(&kf(&f.primary, &f.reg, &["distribute"]));
    assert!(
        out.contains("for 2 host(s)") && !out.contains("sch-1"),
        "{out}"
    );
    refused(
        &kf(&f.scheduler, &f.reg, &["nodes", "sync"]),
        1,
        "holds no distribution",
    );
}

fn copy_tree(from: &Path, to: &Path) {
    if to.exists() {
        fs::remove_dir_all(to).unwrap();
    }
    fs::create_dir_all(to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o700)).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A sync killed (SIGKILL) at a random moment leaves, once the next
/// command recovered, the old keyring or the new one, and an audit log
/// that verifies; a sync after it completes.
#[test]
fn a_sync_killed_midway_leaves_the_old_or_the_new_keyring() {
    let Some(f) = fleet() else {
        return;
    };
    ok(&kf(&f.primary, &f.reg, &["distribute"]));
    f.sync_all();
    ok(&kf(&f.primary, &f.reg, &["rotate", "--stage"]));
    let old = f.action.fingerprint();
    let new = f.primary.fingerprint();
    assert_ne!(old, new);
    let pristine = f.action.path("pristine");
    copy_tree(&f.action.home, &pristine);
    // How long a whole sync takes here.
    let started = std::time::Instant::now();
    sync(&f.action, &f.reg);
    let took = started.elapsed().as_micros() as u64;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill seed {seed}");
    let (mut saw_old, mut saw_new) = (0, 0);
    for _ in 0..16 {
        copy_tree(&pristine, &f.action.home);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = seed % took.max(1);
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("keyferry"))
            .env_remove("KEYFERRY_HOME")
            .env("PGPASSFILE", &f.reg.passfile)
            .arg("--home")
            .arg(&f.action.home)
            .args(["nodes", "sync"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(delay));
        let _ = child.kill();
        let _ = child.wait();
        // The next command recovers; the log verifies.
        ok(&f.action.cmd().args(["audit", "verify"]).output().unwrap());
        let now = f.action.fingerprint();
        if now == old {
            saw_old += 1;
        } else {
            assert_eq!(now, new, "neither the old nor the new keyring");
            saw_new += 1;
        }
        // Whatever was left, a sync completes it.
        sync(&f.action, &f.reg);
        assert_eq!(f.action.fingerprint(), new);
        ok(&f.action.cmd().args(["audit", "verify"]).output().unwrap());
    }
    eprintln!("killed syncs: {saw_old} left the old keyring, {saw_new} the new one");
}
