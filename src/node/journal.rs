//! The journal of the change in progress: `journal.json` in the home, written
//! before every effect, so that a process killed at any moment leaves enough
//! behind for the next run to finish or undo what it was doing.
//!
//! Invariants:
//! - an effect is journaled (with its undo) before it is applied, so the
//!   journal always names at least every effect that may have happened;
//! - every undo is idempotent and checks before it acts: it may run for an
//!   effect that never happened (the process died between the journal write
//!   and the effect), so it never removes or overwrites anything it cannot
//!   prove is its own (a file is removed only when its contents hash to what
//!   the step wrote; a move is undone only when the destination exists and
//!   the source does not);
//! - the journal holds no secret: paths, hashes, the pending audit record
//!   (which holds none either);
//! - paths are absolute, so recovery does not depend on the working
//!   directory of the run that recovers.
//!
//! The journal is written whole, atomically (staged file, fsync, rename),
//! and removed when the change is finished or undone.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::effects::Effects;
use crate::fsutil;

const FORMAT: &str = "keyferry-journal";
const VERSION: u32 = 1;

/// What was under way when the journal was last written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub(crate) enum Phase {
    /// Undoable steps are being applied; nothing is committed.
    Steps,
    /// The audit record below is being appended and the keystore replaced;
    /// the change is committed exactly when the keystore's audit head is
    /// `head_seq`/`head_mac`.
    Committing {
        /// Length of `audit.log` before the record.
        log_len: u64,
        /// Whether `audit.log` existed before the record.
        log_existed: bool,
        /// The record's line, to recognise it (or a torn prefix of it).
        record: String,
        head_seq: u64,
        head_mac: String,
        /// An irreversible step that starts once this record is committed:
        /// recovery records it as interrupted if the record did commit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_commit: Option<Irreversible>,
        /// An irreversible step whose outcome this record is: recovery
        /// records it as interrupted if the record did not commit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_rollback: Option<Irreversible>,
        /// The change goes on after this record (the record of an
        /// irreversible step's start or failure, not the change's end): a
        /// held change's journal outlives its commit.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        goes_on: bool,
    },
    /// An irreversible step is running: its start is committed and audited;
    /// what it did must be found out and audited by whoever recovers.
    Irreversible(Irreversible),
}

/// An irreversible step, as the journal names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Irreversible {
    pub what: String,
    /// Files the step removes, to count what it got done.
    pub removes: Vec<PathBuf>,
}

/// How to take back one effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "undo", rename_all = "kebab-case")]
pub(crate) enum Undo {
    /// The step created `path` with contents hashing to `sha256`.
    Remove { path: PathBuf, sha256: String },
    /// The step replaced `path`; its previous contents are in `backup`.
    Restore { path: PathBuf, backup: PathBuf },
    /// The step moved `from` to `to`.
    MoveBack { from: PathBuf, to: PathBuf },
    /// The change stages files in `dir` under its own tag; a crash may
    /// leave some there.
    Sweep { dir: PathBuf, tag: String },
    /// The step filled the directory `path`, which the change created
    /// before journaling this (a name with the change's own stamp; a
    /// directory of that name made by anyone else makes the change fail
    /// before this undo exists).
    RemoveTree { path: PathBuf },
    /// An effect outside the home that an upper layer owns (the local
    /// server started or stopped, a row written on it): `kind` names it,
    /// `data` is what its undo needs. The home's [`Effects`] undoes it.
    External {
        kind: String,
        data: serde_json::Value,
    },
}

impl Undo {
    /// Removing `path`, created with `contents`.
    #[cfg(test)]
    fn remove(path: &Path, contents: &[u8]) -> io::Result<Self> {
        Ok(Self::Remove {
            path: std::path::absolute(path)?,
            sha256: hex_sha256(contents),
        })
    }

    /// Removing `path`, created as a copy of the file `source`.
    pub(crate) fn remove_copy_of(path: &Path, source: &Path) -> io::Result<Self> {
        Ok(Self::Remove {
            path: std::path::absolute(path)?,
            sha256: file_sha256(source)?,
        })
    }

    /// Putting `backup` back over `path`.
    pub(crate) fn restore(path: &Path, backup: &Path) -> io::Result<Self> {
        Ok(Self::Restore {
            path: std::path::absolute(path)?,
            backup: std::path::absolute(backup)?,
        })
    }

    /// Moving `to` back to `from`.
    pub(crate) fn move_back(from: &Path, to: &Path) -> io::Result<Self> {
        Ok(Self::MoveBack {
            from: std::path::absolute(from)?,
            to: std::path::absolute(to)?,
        })
    }

    /// Sweeping the change's staged files out of `dir`.
    pub(crate) fn sweep(dir: &Path, tag: &str) -> io::Result<Self> {
        Ok(Self::Sweep {
            dir: std::path::absolute(dir)?,
            tag: tag.to_owned(),
        })
    }

    /// Removing the directory `path`, which the step creates.
    pub(crate) fn remove_tree(path: &Path) -> io::Result<Self> {
        Ok(Self::RemoveTree {
            path: std::path::absolute(path)?,
        })
    }

    /// Takes the effect back, if it happened.
    pub(crate) fn apply(&self, effects: &dyn Effects) -> io::Result<()> {
        match self {
            Undo::RemoveTree { path } => match fs::remove_dir_all(path) {
                Ok(()) => fsutil::sync_parent(path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
            Undo::External { kind, data } => effects.undo(kind, data),
            Undo::Sweep { dir, tag } => fsutil::sweep_staged(dir, tag).map(drop),
            Undo::Remove { path, sha256 } => match file_sha256(path) {
                Ok(found) if found == *sha256 => {
                    fs::remove_file(path)?;
                    fsutil::sync_parent(path)
                }
                // Not there (the step never ran), or not ours: leave it.
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
            Undo::Restore { path, backup } => {
                if file_sha256(path).ok() == Some(file_sha256(backup)?) {
                    return Ok(());
                }
                fsutil::restore(path, Some(backup))
            }
            Undo::MoveBack { from, to } => match (exists(from)?, exists(to)?) {
                (false, true) => {
                    fs::rename(to, from)?;
                    fsutil::sync_parent(from)?;
                    fsutil::sync_parent(to)
                }
                (true, false) => Ok(()),
                (both, _) => Err(io::Error::other(format!(
                    "cannot move {} back to {}: {}",
                    to.display(),
                    from.display(),
                    if both { "both exist" } else { "neither exists" }
                ))),
            },
        }
    }

    /// What this undo restores, for messages.
    pub(crate) fn describe(&self, effects: &dyn Effects) -> String {
        match self {
            Undo::Remove { path, .. } => format!("remove {}", path.display()),
            Undo::Restore { path, backup } => {
                format!("restore {} from {}", path.display(), backup.display())
            }
            Undo::MoveBack { from, to } => {
                format!("move {} back to {}", to.display(), from.display())
            }
            Undo::Sweep { dir, .. } => format!("remove staged files from {}", dir.display()),
            Undo::RemoveTree { path } => format!("remove the directory {}", path.display()),
            Undo::External { kind, data } => effects.describe(kind, data),
        }
    }
}

fn exists(p: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn file_sha256(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The journal file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Journal {
    format: String,
    version: u32,
    /// The audit action of the change.
    pub action: String,
    /// When it started, RFC 3339 UTC.
    pub started: String,
    /// Undos of the effects journaled so far, oldest first.
    pub undo: Vec<Undo>,
    #[serde(flatten)]
    pub phase: Phase,
    /// A change too large to be undone behind the operator's back (a
    /// bootstrap): recovery leaves it for its own command to resume or
    /// abort, and other changes wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
}

/// How the operator finishes or undoes a held change, and the state its
/// command needs to resume (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Held {
    pub resume: String,
    pub abort: String,
    /// The change's own record of how far it got (a
    /// [`super::held::Machine`]), `Null` until set.
    pub state: serde_json::Value,
    /// The version of `state`'s shape ([`super::held::HeldPhase::VERSION`]).
    #[serde(default)]
    pub state_version: u32,
    /// An `--abort` began: the undos left are what it has still to do,
    /// and only `--abort` may take the change up again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aborting: bool,
    /// The audit record's details so far.
    #[serde(default)]
    pub details: std::collections::BTreeMap<String, serde_json::Value>,
}

impl Journal {
    pub fn new(action: &str, started: String) -> Self {
        Self {
            format: FORMAT.to_owned(),
            version: VERSION,
            action: action.to_owned(),
            started,
            undo: Vec::new(),
            phase: Phase::Steps,
            held: None,
        }
    }

    /// Reads the journal at `path`; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> io::Result<Option<Self>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let journal: Journal = serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if journal.format != FORMAT || journal.version != VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("format {} version {}", journal.format, journal.version),
            ));
        }
        Ok(Some(journal))
    }

    /// Writes the journal to `path` atomically.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut staged = fsutil::Staged::new_in(dir)?;
        serde_json::to_writer_pretty(&mut staged, self).map_err(io::Error::other)?;
        staged.write_all(b"\n")?;
        staged.persist_replace(path)
    }

    /// Removes the journal at `path` durably.
    pub fn remove(path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Ok(()) => fsutil::sync_parent(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::effects::NoEffects;

    #[test]
    fn journal_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.json");
        let mut j = Journal::new("import", "2026-12-01T00:00:00Z".into());
        j.undo
            .push(Undo::remove(&dir.path().join("a"), b"x").unwrap());
        j.phase = Phase::Committing {
            log_len: 10,
            log_existed: true,
            record: "{}\n".into(),
            head_seq: 2,
            head_mac: "00".repeat(32),
            on_commit: None,
            on_rollback: Some(Irreversible {
                what: "removing".into(),
                removes: vec![dir.path().join("b")],
            }),
            goes_on: false,
        };
        j.write(&path).unwrap();
        assert_eq!(Journal::read(&path).unwrap(), Some(j));
        Journal::remove(&path).unwrap();
        assert_eq!(Journal::read(&path).unwrap(), None);
    }

    #[test]
    fn remove_takes_only_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle");
        let undo = Undo::remove(&path, b"ours").unwrap();
        undo.apply(&NoEffects).unwrap(); // never created: nothing to do
        fs::write(&path, b"someone else's").unwrap();
        undo.apply(&NoEffects).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"someone else's");
        fs::write(&path, b"ours").unwrap();
        undo.apply(&NoEffects).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn restore_and_move_back_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let backup = dir.path().join("f.bak");
        fs::write(&path, b"old").unwrap();
        fs::write(&backup, b"old").unwrap();
        let undo = Undo::restore(&path, &backup).unwrap();
        undo.apply(&NoEffects).unwrap();
        fs::write(&path, b"new").unwrap();
        undo.apply(&NoEffects).unwrap();
        undo.apply(&NoEffects).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"old");

        let from = dir.path().join("data");
        let to = dir.path().join("data.old");
        fs::create_dir(&from).unwrap();
        let undo = Undo::move_back(&from, &to).unwrap();
        undo.apply(&NoEffects).unwrap(); // never moved
        fs::rename(&from, &to).unwrap();
        undo.apply(&NoEffects).unwrap();
        undo.apply(&NoEffects).unwrap();
        assert!(from.is_dir() && !to.exists());
    }
}
