//! Carrying the pair's configuration to the secondary inside the bundle:
//! `export --with-config` on the primary, `import` on the secondary, which
//! installs `appsettings.json` byte for byte and adjusts `ha.toml` for the
//! receiving node, with backups; `--dry-run` and `--keys-only` change no
//! configuration.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::node::{assert_same, snapshot, Node, PASSWORD};
use keyferry::ha::config::HaConfig;

/// An appsettings.json as Windows tools write it: a BOM, comments, CRLF.
const APPSETTINGS: &[u8] = b"\xEF\xBB\xBF{\r\n  // connection to the vault database\r\n  \"ConnectionStrings\": { \"Vault\": \"Host=10.1.0.1;Port=5432\" },\r\n  /* web services */\r\n  \"Port\": 6500\r\n}\r\n";

/// Writes an ha.toml for `node` into the node's home, naming an
/// appsettings.json beside it.
fn describe_pair(node: &Node, name: &str, pg_data: &str) -> PathBuf {
    let app = node.path("app").join("appsettings.json");
    fs::create_dir_all(app.parent().unwrap()).unwrap();
    let mut c = HaConfig::new(
        name,
        "10.1.0.1".parse().unwrap(),
        "10.1.0.2".parse().unwrap(),
    )
    .unwrap();
    c.pg_data = PathBuf::from(pg_data);
    c.appsettings = Some(app.clone());
    fs::write(node.home.join("ha.toml"), c.to_toml().unwrap()).unwrap();
    app
}

fn read_config(node: &Node) -> HaConfig {
    HaConfig::from_toml(&fs::read_to_string(node.home.join("ha.toml")).unwrap()).unwrap()
}

fn primary_bundle() -> (Node, PathBuf) {
    let primary = Node::initialised();
    let app = describe_pair(&primary, "db1", "/srv/pg/primary");
    fs::write(&app, APPSETTINGS).unwrap();
    let file = primary.path("keys.exp");
    primary.export(&file, &["--with-config"]);
    (primary, file)
}

#[test]
fn config_travels_byte_for_byte_and_ha_toml_is_adjusted() {
    let (primary, file) = primary_bundle();
    let secondary = Node::initialised();
    let app = describe_pair(&secondary, "db2", "/srv/pg/replica");
    fs::write(&app, b"{ \"old\": true }").unwrap();

    // A dry run shows the plan and writes nothing.
    let before = snapshot(secondary.dir.path());
    let out = secondary
        .import_cmd(&file)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("config/appsettings.json"), "{stdout}");
    assert!(stdout.contains("would replace"), "{stdout}");
    assert!(stdout.contains("dry run: nothing was changed"), "{stdout}");
    let mut after = snapshot(secondary.dir.path());
    after.remove(Path::new("password.txt"));
    let mut before = before;
    before.remove(Path::new("password.txt"));
    assert_same(&before, &after);

    secondary.import_cmd(&file).assert().success();
    assert_eq!(
        fs::read(&app).unwrap(),
        APPSETTINGS,
        "installed byte for byte"
    );
    let c = read_config(&secondary);
    assert_eq!(c.node, "db2", "the receiving node keeps its own name");
    assert_eq!(
        c.pg_data,
        PathBuf::from("/srv/pg/replica"),
        "and its own directories"
    );
    assert_eq!(secondary.fingerprint(), primary.fingerprint());
    let backups: Vec<String> = fs::read_dir(secondary.home.join("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        backups.iter().any(|b| b.starts_with("appsettings.json.")),
        "{backups:?}"
    );
    let old: Vec<_> = backups
        .iter()
        .filter(|b| b.starts_with("appsettings.json."))
        .collect();
    assert_eq!(
        fs::read(secondary.home.join("backups").join(old[0])).unwrap(),
        b"{ \"old\": true }"
    );
    secondary.cmd().args(["audit", "verify"]).assert().success();

    // Importing again changes no configuration.
    let out = secondary.import_cmd(&file).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("unchanged"));
}

#[cfg(unix)]
#[test]
fn an_installed_appsettings_keeps_its_owner_and_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (_primary, file) = primary_bundle();
    let secondary = Node::initialised();
    let app = describe_pair(&secondary, "db2", "/srv/pg/replica");
    fs::write(&app, b"{}").unwrap();
    fs::set_permissions(&app, fs::Permissions::from_mode(0o640)).unwrap();
    let uid = fs::metadata(&app).unwrap().uid();
    secondary.import_cmd(&file).assert().success();
    let meta = fs::metadata(&app).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(meta.uid(), uid);
}

#[test]
fn a_node_without_ha_toml_must_accept_the_config() {
    let (_primary, file) = primary_bundle();
    let fresh = Node::initialised();
    let before = snapshot(&fresh.home);
    let out = fresh.import_cmd(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--accept-config"));
    assert_same(&before, &snapshot(&fresh.home));

    // The bundle never chooses this node's paths: without them on the
    // command line they stay unset (appsettings.json is not installed) and
    // the import says so.
    let out = fresh
        .import_cmd(&file)
        .args(["--accept-config", "--node", "db2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("archive_dir left unset"), "{text}");
    assert!(text.contains("appsettings.json: not installed"), "{text}");
    let c = read_config(&fresh);
    assert_eq!(c.node, "db2");
    assert_eq!(c.pg_data, PathBuf::from("/var/lib/postgresql/15/main"));
    assert_eq!((c.appsettings, c.archive_dir), (None, None));
    assert!(!Path::new("/srv/pg/primary").exists());
}

#[test]
fn accept_config_takes_paths_from_the_command_line_only() {
    let (_primary, file) = primary_bundle();
    let fresh = Node::initialised();
    let app = fresh.path("my-appsettings.json");
    fresh
        .import_cmd(&file)
        .args([
            "--accept-config",
            "--node",
            "db2",
            "--pg-data",
            "/srv/pg/mine",
            "--service",
            "systemd:postgresql@15-mine",
        ])
        .arg("--appsettings")
        .arg(&app)
        .assert()
        .success();
    let c = read_config(&fresh);
    assert_eq!(c.pg_data, PathBuf::from("/srv/pg/mine"));
    assert_eq!(
        c.service,
        keyferry::ha::config::ServiceControl::Systemd {
            unit: "postgresql@15-mine".into()
        }
    );
    assert_eq!(c.appsettings.as_deref(), Some(app.as_path()));
    assert_eq!(fs::read(&app).unwrap(), APPSETTINGS);

    // With an ha.toml of its own, a node keeps its paths: options that
    // would change them are a usage error.
    fresh
        .import_cmd(&file)
        .args(["--accept-config", "--archive-dir", "/srv/elsewhere"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("keeps its own paths"));
    fresh
        .import_cmd(&file)
        .args(["--accept-config", "--service", "pg_ctl"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--service"));
}

/// A sender who sets appsettings to the receiver's own audit log gets
/// nothing written there: the path is not taken from the bundle, and an
/// operator's path inside the home is refused too.
#[test]
fn nothing_is_installed_inside_the_home() {
    let primary = Node::initialised();
    let app = describe_pair(&primary, "db1", "/srv/pg/primary");
    fs::write(&app, APPSETTINGS).unwrap();
    let file = primary.path("keys.exp");
    primary.export(&file, &["--with-config"]);

    let fresh = Node::initialised();
    let audit_log = fresh.home.join("audit.log");
    let before = fs::read(&audit_log).unwrap();
    fresh
        .import_cmd(&file)
        .args(["--accept-config", "--node", "db2"])
        .arg("--appsettings")
        .arg(&audit_log)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("inside keyferry's home"));
    assert_eq!(fs::read(&audit_log).unwrap(), before);
    fresh.cmd().args(["audit", "verify"]).assert().success();
}

#[test]
fn keys_only_leaves_configuration_alone() {
    let (primary, file) = primary_bundle();
    let host = Node::initialised();
    let out = host.import_cmd(&file).arg("--keys-only").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("left alone (--keys-only)"));
    assert!(!host.home.join("ha.toml").exists());
    assert_eq!(host.fingerprint(), primary.fingerprint());
}

#[test]
fn with_config_needs_a_pair_description() {
    let node = Node::initialised();
    let out = node
        .cmd()
        .args(["export", "--with-config", "-n"])
        .arg(node.path("k.exp"))
        .args(common::node::FAST_KDF)
        .arg("--password-file")
        .arg(node.password_file(PASSWORD))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ha init"));
    assert!(!node.path("k.exp").exists());
}

/// A linked appsettings.json (issue 12 item 9) is installed at the link's
/// final target and the link stays a link; a link into the home is refused.
#[cfg(unix)]
#[test]
fn a_linked_appsettings_is_installed_at_its_target_and_stays_a_link() {
    let (_primary, file) = primary_bundle();
    let secondary = Node::initialised();
    let app = describe_pair(&secondary, "db2", "/srv/pg/replica");
    let real_dir = secondary.path("releases");
    fs::create_dir_all(&real_dir).unwrap();
    let real = real_dir.join("appsettings.json");
    fs::write(&real, b"{ \"old\": true }").unwrap();
    std::os::unix::fs::symlink(&real, &app).unwrap();
    secondary.import_cmd(&file).assert().success();
    assert!(
        fs::symlink_metadata(&app).unwrap().file_type().is_symlink(),
        "the link stays a link"
    );
    assert_eq!(fs::read_link(&app).unwrap(), real);
    assert_eq!(
        fs::read(&real).unwrap(),
        APPSETTINGS,
        "the target is written"
    );

    // A link that leads into the home is refused, and nothing is written.
    let audit_log = secondary.home.join("audit.log");
    let log_before = fs::read(&audit_log).unwrap();
    fs::remove_file(&app).unwrap();
    std::os::unix::fs::symlink(&audit_log, &app).unwrap();
    secondary
        .import_cmd(&file)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("inside keyferry's home"));
    assert_eq!(fs::read(&audit_log).unwrap(), log_before);
    assert!(fs::symlink_metadata(&app).unwrap().file_type().is_symlink());
}

/// A bundle from a node whose ha.toml is behind the pair (a lower
/// generation) never lowers this node's: ha.toml stays byte for byte,
/// and the import says what it kept. A bundle ahead is taken.
#[test]
fn an_import_never_lowers_the_generation() {
    let with_generation = |generation: u64, name: &str| {
        let node = Node::initialised();
        let app = describe_pair(&node, name, "/srv/pg/x");
        fs::write(&app, b"{}").unwrap();
        let mut c = read_config(&node);
        c.generation = generation;
        fs::write(node.home.join("ha.toml"), c.to_toml().unwrap()).unwrap();
        node
    };
    let behind = with_generation(3, "db1");
    let file = behind.path("keys.exp");
    behind.export(&file, &["--with-config"]);
    let ahead = with_generation(4, "db2");
    let before = fs::read(ahead.home.join("ha.toml")).unwrap();
    let out = ahead
        .import_cmd(&file)
        .arg("--accept-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("kept") && said.contains("only rises"),
        "{said}"
    );
    assert!(!said.contains("4 -> 3"), "{said}");
    assert_eq!(fs::read(ahead.home.join("ha.toml")).unwrap(), before);

    let newer = with_generation(5, "db1");
    let file = newer.path("keys.exp");
    newer.export(&file, &["--with-config"]);
    let out = ahead
        .import_cmd(&file)
        .arg("--accept-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_config(&ahead).generation, 5);
}
