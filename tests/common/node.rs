//! A throw-away keyferry node for integration tests: a temporary home, the
//! real binary run against it, and byte-exact snapshots of everything in a
//! folder, to prove that a failed operation changed nothing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use tempfile::TempDir;

/// The weakest parameters export accepts: fast, for tests only.
pub const FAST_KDF: [&str; 6] = [
    "--kdf-memory",
    "19456",
    "--kdf-time",
    "2",
    "--kdf-lanes",
    "1",
];
pub const PASSWORD: &str = "correct horse battery staple";
/// `ha init` for the test pair (node `a`, 10.0.0.1 primary, 10.0.0.2
/// secondary); tests add the options they are about.
pub const HA_INIT: [&str; 8] = [
    "ha",
    "init",
    "--node",
    "a",
    "--primary",
    "10.0.0.1",
    "--secondary",
    "10.0.0.2",
];

pub struct Node {
    pub dir: TempDir,
    pub home: PathBuf,
}

impl Node {
    /// A node with no home yet.
    pub fn empty() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join("home");
        Self { dir, home }
    }

    /// A node after `keyferry init`.
    pub fn initialised() -> Self {
        let node = Self::empty();
        node.cmd().arg("init").assert().success();
        node
    }

    /// `keyferry --home HOME` with a clean environment.
    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("keyferry").expect("binary built");
        c.env_remove("KEYFERRY_HOME").arg("--home").arg(&self.home);
        c
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `password` to a file beside the home and returns its path.
    pub fn password_file(&self, password: &str) -> PathBuf {
        let p = self.path("password.txt");
        fs::write(&p, format!("{password}\n")).expect("write password");
        p
    }

    pub fn fingerprint(&self) -> String {
        let out = self
            .cmd()
            .args(["keys", "fingerprint"])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    }

    /// Exports to `file` with the fast KDF and [`PASSWORD`].
    pub fn export(&self, file: &Path, extra: &[&str]) {
        let pw = self.password_file(PASSWORD);
        self.cmd()
            .arg("export")
            .arg("-n")
            .arg(file)
            .args(FAST_KDF)
            .arg("--password-file")
            .arg(&pw)
            .args(extra)
            .assert()
            .success();
    }

    /// `keyferry import -n FILE --password-file …` with [`PASSWORD`].
    pub fn import_cmd(&self, file: &Path) -> Command {
        self.import_cmd_with(file, PASSWORD)
    }

    /// `keyferry import -n FILE --password-file … --replace-keys` with
    /// `password`. Most tests import a bundle from one fresh node into
    /// another, which replaces the receiving node's own key 1: that is what
    /// `--replace-keys` allows. Tests of the refusal itself use
    /// [`Node::import_cmd_keeping_keys`].
    pub fn import_cmd_with(&self, file: &Path, password: &str) -> Command {
        let mut c = self.import_cmd_keeping_keys(file, password);
        c.arg("--replace-keys");
        c
    }

    /// `keyferry import -n FILE --password-file …`, refused when it would
    /// take key material away from the node.
    pub fn import_cmd_keeping_keys(&self, file: &Path, password: &str) -> Command {
        let pw = self.password_file(password);
        let mut c = self.cmd();
        c.arg("import")
            .arg("-n")
            .arg(file)
            .arg("--password-file")
            .arg(pw);
        c
    }
}

/// Every file and folder under `root`, with file contents.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let path = e.expect("dir entry").path();
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            if path.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                out.insert(rel, Some(fs::read(&path).expect("read file")));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Asserts two snapshots are identical, naming the first difference.
pub fn assert_same(
    before: &BTreeMap<PathBuf, Option<Vec<u8>>>,
    after: &BTreeMap<PathBuf, Option<Vec<u8>>>,
) {
    let added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let removed: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let changed: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k).is_some_and(|a| a != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        added.is_empty() && removed.is_empty() && changed.is_empty(),
        "files changed: added {added:?}, removed {removed:?}, changed {changed:?}"
    );
}
