//! The home's `backups/`: how many previous versions of each file are kept,
//! and pruning the rest. Backups of the keystore hold key material, so
//! keeping them without bound would keep every key forever.
//!
//! A backup is `<file name>.<UTC stamp>.bak` or `<file name>.<stamp>.<n>.bak`
//! (see `fsutil::backup_file`); the newest `keep` of each file name stay.
//! Anything else in the folder is left alone.
//!
//! The number kept comes from `keep` in the `[backups]` section of the
//! home's `keyferry.toml` (default 10, at least 1).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::Home;
use crate::error::{Error, Result};

/// Backups kept per file unless the home's configuration says otherwise.
pub(crate) const DEFAULT_KEEP: usize = 10;
/// The home's own settings file.
pub(crate) const SETTINGS_FILE: &str = "keyferry.toml";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    backups: BackupSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupSettings {
    #[serde(default = "default_keep")]
    keep: usize,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self { keep: DEFAULT_KEEP }
    }
}

fn default_keep() -> usize {
    DEFAULT_KEEP
}

impl Home {
    /// Backups to keep per file, from `keyferry.toml`.
    pub(crate) fn backups_keep(&self) -> Result<usize> {
        let path = self.root().join(SETTINGS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(DEFAULT_KEEP),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()))(e)),
        };
        let settings: Settings = toml::from_str(&text).map_err(|e| {
            Error::Usage(format!(
                "{} is not valid ({}): the only setting is `keep = N` under `[backups]`",
                path.display(),
                e.message()
            ))
        })?;
        if settings.backups.keep == 0 {
            return Err(Error::Usage(format!(
                "{}: [backups] keep must be at least 1 (the last version is what an undo needs)",
                path.display()
            )));
        }
        Ok(settings.backups.keep)
    }

    /// The backups beyond the newest `keep` of each file, oldest first.
    pub(crate) fn backups_beyond(&self, keep: usize) -> Result<Vec<PathBuf>> {
        let dir = self.backup_dir();
        beyond(&dir, keep).map_err(Error::io(format!("cannot list {}", dir.display())))
    }

    /// `keyferry backups prune`: removes the backups beyond `keep` per file
    /// (default: the home's setting), audited as an irreversible step.
    pub(crate) fn prune_backups(&self, keep: Option<usize>) -> Result<PruneReport> {
        let keep = match keep {
            Some(0) => {
                return Err(Error::Usage(
                    "--keep must be at least 1 (the last version is what an undo needs)".into(),
                ))
            }
            Some(k) => k,
            None => self.backups_keep()?,
        };
        let mut node = self.open(false)?;
        let files = self.backups_beyond(keep)?;
        let mut report = PruneReport {
            keep,
            removed: files.clone(),
        };
        if files.is_empty() {
            return Ok(report);
        }
        let mut change = node.begin(
            "backups-prune",
            super::details([
                ("keep", Value::from(keep)),
                ("files", Value::from(files.len())),
            ]),
        )?;
        let done = change.irreversible("removing old backups", files.clone(), |progress| {
            let result = remove_all(&files);
            progress.set("removed", *result.as_ref().unwrap_or_else(|(n, _)| n));
            result.map_err(|(_, e)| e)
        })?;
        change.finish()?;
        report.removed.truncate(done);
        Ok(report)
    }
}

/// What `backups prune` removed.
#[derive(Debug)]
pub(crate) struct PruneReport {
    pub keep: usize,
    pub removed: Vec<PathBuf>,
}

/// Removes the files in order; on failure, how many went before it.
fn remove_all(files: &[PathBuf]) -> std::result::Result<usize, (usize, Error)> {
    for (i, f) in files.iter().enumerate() {
        fs::remove_file(f)
            .map_err(|e| (i, Error::io(format!("cannot remove {}", f.display()))(e)))?;
    }
    Ok(files.len())
}

/// Removes the backups of `name` beyond the newest `keep` (best effort,
/// after a change has committed). Returns how many were removed.
pub(super) fn prune_file(backup_dir: &Path, name: &str, keep: usize) -> usize {
    let Ok(groups) = groups(backup_dir) else {
        return 0;
    };
    let Some(versions) = groups.get(name) else {
        return 0;
    };
    let excess = versions.len().saturating_sub(keep);
    versions[..excess]
        .iter()
        .filter(|(_, p)| fs::remove_file(p).is_ok())
        .count()
}

/// Each file name's backups, oldest first.
type Groups = BTreeMap<String, Vec<((String, u32), PathBuf)>>;

fn groups(dir: &Path) -> io::Result<Groups> {
    let mut groups: Groups = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(groups),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let file_name = entry.file_name();
        let Some((name, order)) = file_name.to_str().and_then(parse_backup_name) else {
            continue;
        };
        groups
            .entry(name.to_owned())
            .or_default()
            .push((order, entry.path()));
    }
    for versions in groups.values_mut() {
        versions.sort();
    }
    Ok(groups)
}

fn beyond(dir: &Path, keep: usize) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for versions in groups(dir)?.values() {
        let excess = versions.len().saturating_sub(keep);
        out.extend(versions[..excess].iter().map(|(_, p)| p.clone()));
    }
    Ok(out)
}

/// `keyring.json.20261201T101500Z.2.bak` → (`keyring.json`, (stamp, 2)).
fn parse_backup_name(file: &str) -> Option<(&str, (String, u32))> {
    let rest = file.strip_suffix(".bak")?;
    let is_stamp = |s: &str| {
        s.len() == 16
            && s.as_bytes()[8] == b'T'
            && s.ends_with('Z')
            && s[..8]
                .bytes()
                .chain(s[9..15].bytes())
                .all(|b| b.is_ascii_digit())
    };
    let (head, last) = rest.rsplit_once('.')?;
    if is_stamp(last) {
        return Some((head, (last.to_owned(), 0)));
    }
    let n: u32 = last.parse().ok()?;
    let (name, stamp) = head.rsplit_once('.')?;
    is_stamp(stamp).then(|| (name, (stamp.to_owned(), n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_parse_and_sort() {
        assert_eq!(
            parse_backup_name("keyring.json.20261201T101500Z.bak"),
            Some(("keyring.json", ("20261201T101500Z".into(), 0)))
        );
        assert_eq!(
            parse_backup_name("pg_hba.conf.20261201T101500Z.12.bak"),
            Some(("pg_hba.conf", ("20261201T101500Z".into(), 12)))
        );
        for other in [
            "notes.txt",
            "x.bak",
            "keyring.json.2026.bak",
            ".keyferry-a.tmp",
        ] {
            assert_eq!(parse_backup_name(other), None, "{other}");
        }
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "a.json.20261201T000002Z.bak",
            "a.json.20261201T000001Z.bak",
            "a.json.20261201T000001Z.1.bak",
            "b.conf.20261201T000000Z.bak",
            "README",
        ] {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        let old: Vec<String> = beyond(dir.path(), 1)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            old,
            [
                "a.json.20261201T000001Z.bak",
                "a.json.20261201T000001Z.1.bak"
            ]
        );
        assert_eq!(prune_file(dir.path(), "a.json", 2), 1);
        assert!(!dir.path().join("a.json.20261201T000001Z.bak").exists());
        assert!(dir.path().join("README").exists());
    }
}
