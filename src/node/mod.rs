//! The node's home and everything that changes it: the keystore (keys plus
//! the audit key and head), the audit log, the lock, backups, and the one
//! change type every operation goes through ([`Change`]).
//!
//! Invariants:
//! - one process changes a home at a time (the lock), and it first finishes
//!   or undoes whatever an interrupted one left in the journal
//!   ([`Home::recover`]);
//! - the keystore's audit head is the commit point of every audited change:
//!   the audit record is appended and synced first, the keystore (with the
//!   new head) is then replaced atomically; a crash between the two is
//!   resolved from the journal, which names the pending record, so the log
//!   is never left ahead of the keystore;
//! - an operation's own effects are steps with an undo, journaled before
//!   they happen, or irreversible steps whose start is audited before they
//!   run and whose outcome (done, failed, interrupted and how far) is audited
//!   after;
//! - a keystore backup is made only when the keys change, never for a new
//!   audit head alone.

mod backups;
mod change;
pub(crate) mod effects;
pub(crate) mod held;
mod journal;
pub mod keystore;
mod recover;
mod repair;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::audit;
use crate::error::{Error, Result};
use crate::fsutil;
use backups::SETTINGS_FILE;
pub(crate) use change::{Change, Progress, Reopen};
pub(crate) use effects::Effects;
pub(crate) use held::{HeldPhase, Machine};
pub(crate) use journal::Undo;
use keystore::Keystore;
pub(crate) use recover::Recovered;

pub(crate) const KEYRING_FILE: &str = "keyring.json";
pub(crate) const AUDIT_FILE: &str = "audit.log";
pub(crate) const BACKUP_DIR: &str = "backups";
pub(crate) const HA_CONFIG_FILE: &str = "ha.toml";
/// The rewrap targets kept in the home (`keyferry rewrap add-target`).
pub(crate) const REWRAP_FILE: &str = "rewrap.json";
/// The node registry's connection (`keyferry nodes connect`).
pub(crate) const REGISTRY_FILE: &str = "registry.json";
const LOCK_FILE: &str = "keyferry.lock";
const JOURNAL_FILE: &str = "journal.json";
/// Environment variable naming the home when `--home` is not given.
pub const HOME_ENV: &str = "KEYFERRY_HOME";

/// An audit record's details from (key, value) pairs.
pub(crate) fn details<const N: usize>(
    pairs: [(&str, serde_json::Value); N],
) -> std::collections::BTreeMap<String, serde_json::Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Unix seconds now.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `20261125T231800Z`: sortable, and valid in a file name on every platform.
pub(crate) fn file_stamp(secs: u64) -> String {
    crate::fmt::fmt_time(secs).replace(['-', ':'], "")
}

/// The node's home directory and the files in it.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
    /// Undoes the journaled effects outside the home (the pair's).
    effects: Arc<dyn Effects>,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            effects: Arc::new(effects::NoEffects),
        }
    }

    /// The same home, undoing journaled effects outside it with `effects`.
    pub(crate) fn with_effects(mut self, effects: Arc<dyn Effects>) -> Self {
        self.effects = effects;
        self
    }

    pub(crate) fn effects(&self) -> &dyn Effects {
        self.effects.as_ref()
    }

    /// `--home`, else `KEYFERRY_HOME`, else the platform default.
    pub(crate) fn resolve(explicit: Option<PathBuf>) -> Self {
        let root = explicit
            .or_else(|| {
                std::env::var_os(HOME_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(platform::default_home);
        Self::new(root)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
    pub fn keyring_path(&self) -> PathBuf {
        self.root.join(KEYRING_FILE)
    }
    pub(crate) fn audit_path(&self) -> PathBuf {
        self.root.join(AUDIT_FILE)
    }
    pub(crate) fn backup_dir(&self) -> PathBuf {
        self.root.join(BACKUP_DIR)
    }
    pub fn ha_config_path(&self) -> PathBuf {
        self.root.join(HA_CONFIG_FILE)
    }
    pub(crate) fn journal_path(&self) -> PathBuf {
        self.root.join(JOURNAL_FILE)
    }

    /// Creates the home (owner-only) if needed.
    pub(crate) fn create(&self) -> Result<()> {
        if self.root.exists() && !self.root.is_dir() {
            return Err(Error::Refused(format!(
                "home {} is not a directory: choose another --home",
                self.root.display()
            )));
        }
        fsutil::ensure_private_dir(&self.root).map_err(Error::io(format!(
            "cannot create home {}",
            self.root.display()
        )))
    }

    /// A warning when an existing home can be read by other accounts. The
    /// files keyferry puts in it are owner-only whatever the folder allows,
    /// so this is not refused (as GnuPG does with its home), but their
    /// names can be listed, so the operator should know and is told how to
    /// restrict it.
    pub(crate) fn sharing_warning(&self) -> Option<String> {
        if !self.root.is_dir() || !fsutil::is_shared_readable(&self.root).unwrap_or(false) {
            return None;
        }
        Some(format!(
            "home {} can be read by other accounts (keyferry's files in it are still \
             owner-only); restrict it: {}",
            self.root.display(),
            platform::restrict_command(&self.root)
        ))
    }

    /// Takes the home's lock, so two keyferry processes never change one
    /// node at once. Released when the guard drops.
    pub(crate) fn lock(&self) -> Result<HomeLock> {
        self.try_lock()?.ok_or_else(|| {
            Error::Refused(format!(
                "another keyferry is working on {}: wait for it to finish",
                self.root.display()
            ))
        })
    }

    /// The lock, or `None` while another keyferry holds it.
    fn try_lock(&self) -> Result<Option<HomeLock>> {
        self.refuse_foreign_control()?;
        let path = self.root.join(LOCK_FILE);
        let file = fsutil::open_append_private(&path).map_err(Error::io(format!(
            "cannot open the lock file {}",
            path.display()
        )))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(HomeLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("cannot lock {}", path.display()))(e))
            }
        }
    }

    /// Refuses a home, or one of keyferry's files in it, that another
    /// account could change or that is a symbolic link: root would
    /// otherwise write where a link points, or export keys another account
    /// planted.
    pub(crate) fn refuse_foreign_control(&self) -> Result<()> {
        let ours = [
            KEYRING_FILE,
            AUDIT_FILE,
            LOCK_FILE,
            JOURNAL_FILE,
            HA_CONFIG_FILE,
            BACKUP_DIR,
            SETTINGS_FILE,
            REWRAP_FILE,
            REGISTRY_FILE,
        ];
        let checks = std::iter::once((self.root.clone(), true)).chain(
            ours.iter()
                .chain(self.effects.home_files())
                .map(|name| (self.root.join(name), false)),
        );
        for (path, follow) in checks {
            let problem = match fsutil::foreign_control(&path, follow) {
                Ok(p) => p,
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::io(format!("cannot examine {}", path.display()))(e)),
            };
            if let Some(problem) = problem {
                return Err(Error::Refused(format!(
                    "{} {problem}: keyferry does not use a home that another account can change; \
                     make the home and its files owned by this account and writable by it alone \
                     (and replace a link with the file it points to)",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn has_keystore(&self) -> bool {
        self.keyring_path().exists()
    }

    /// Reads the keystore; a missing one is "not initialised".
    pub fn load_keystore(&self) -> Result<Keystore> {
        let path = self.keyring_path();
        let bytes = match fs::read(&path) {
            Ok(b) => zeroize::Zeroizing::new(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotInitialized(self.root.clone()))
            }
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()))(e)),
        };
        Keystore::from_json(&bytes).map_err(|source| Error::Keyring {
            context: format!(
                "{} is damaged; restore it from {}",
                path.display(),
                self.backup_dir().display()
            ),
            source,
        })
    }

    /// The audit log's bytes (empty when there is none yet).
    pub(crate) fn read_audit_log(&self) -> Result<Vec<u8>> {
        let path = self.audit_path();
        match fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(format!("cannot read {}", path.display()))(e)),
        }
    }

    /// Verifies the audit log against the keystore's head.
    pub(crate) fn verify_audit(&self, store: &Keystore) -> Result<Vec<audit::Record>> {
        let log = self.read_audit_log()?;
        Ok(audit::verify(
            &log,
            store.node.audit_key.as_bytes(),
            &store.node.audit_head,
        )?)
    }
}

/// Held while an operation changes the home.
pub(crate) struct HomeLock {
    _file: File,
}

/// A home opened for a change: locked, recovered, its keystore (if any)
/// read and its audit log verified.
pub(crate) struct Node {
    home: Home,
    store: Option<Keystore>,
    /// `None` only inside recovery, whose caller holds the lock.
    _lock: Option<HomeLock>,
}

impl Home {
    /// Opens the home for a change: creates it first when `create`, takes
    /// the lock, recovers an interrupted change, reads the keystore and
    /// verifies the audit log against it.
    pub(crate) fn open(&self, create: bool) -> Result<Node> {
        if create {
            self.create()?;
        }
        let lock = self.lock()?;
        // The command line recovers first and says so (`Home::recover`);
        // this catches a change interrupted since.
        recover::recover(self)?;
        sweep_home(self);
        let store = if self.has_keystore() {
            let store = self.load_keystore()?;
            self.verify_audit(&store)?;
            Some(store)
        } else {
            None
        };
        Ok(Node {
            home: self.clone(),
            store,
            _lock: Some(lock),
        })
    }

    /// The held change an interrupted run left (a bootstrap), as the
    /// operator should read it: what it was and the commands that finish
    /// or undo it. Read without the lock: a report, not a decision.
    pub(crate) fn held_change(&self) -> Option<String> {
        let journal = journal::Journal::read(&self.journal_path()).ok()??;
        let held = journal.held?;
        let waiting = Recovered {
            action: journal.action,
            started: journal.started,
            outcome: recover::RecoveryOutcome::Held {
                resume: held.resume,
                abort: held.abort,
            },
        };
        Some(waiting.to_string())
    }

    /// For commands that only read: when an interrupted change left a
    /// journal, takes the lock and finishes or undoes it first.
    pub(crate) fn recover(&self) -> Result<Option<Recovered>> {
        let staged_left = [self.root().to_path_buf(), self.backup_dir()]
            .iter()
            .any(|d| fsutil::has_staged(d).unwrap_or(false));
        if !self.journal_path().exists() && !staged_left {
            return Ok(None);
        }
        // A journal or staged files while another keyferry holds the lock
        // are that process's work in progress, not an interrupted change:
        // a reading command leaves them alone.
        let Some(_lock) = self.try_lock()? else {
            return Ok(None);
        };
        let recovered = recover::recover(self);
        sweep_home(self);
        recovered
    }
}

/// Staged files in the home and its backups belong to a keyferry that was
/// killed (the caller holds the lock, so no other is writing them).
fn sweep_home(home: &Home) {
    for dir in [home.root().to_path_buf(), home.backup_dir()] {
        if let Err(e) = fsutil::sweep_staged(&dir, "") {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove staged files");
        }
    }
}

impl Node {
    fn for_recovery(home: Home, store: Keystore) -> Self {
        Self {
            home,
            store: Some(store),
            _lock: None,
        }
    }

    /// The keystore, when the node has one.
    pub fn keystore(&self) -> Option<&Keystore> {
        self.store.as_ref()
    }

    /// The keystore, which the operation needs.
    pub(crate) fn require_keystore(&self) -> Result<&Keystore> {
        self.store
            .as_ref()
            .ok_or_else(|| Error::NotInitialized(self.home.root.clone()))
    }
}

#[cfg(unix)]
mod platform {
    use std::path::PathBuf;

    pub(crate) fn default_home() -> PathBuf {
        PathBuf::from("/var/lib/keyferry")
    }

    pub(crate) fn restrict_command(home: &std::path::Path) -> String {
        format!("chmod 700 '{}'", home.display())
    }
}

/// Windows: `%ProgramData%\keyferry` (normally `C:\ProgramData\keyferry`),
/// the machine-wide place for service data. `%ProgramData%` is used only
/// when it is an absolute path (a relative or empty value would put the
/// keys wherever the command happens to run); otherwise
/// `%SystemDrive%\ProgramData`, otherwise `C:\ProgramData`. fsutil creates
/// the directory with the owner-only DACL.
#[cfg(windows)]
mod platform {
    use std::path::PathBuf;

    /// Drops inherited entries and grants what keyferry's own files get:
    /// the current account, SYSTEM and Administrators (by SID, so it works
    /// in any language).
    pub(crate) fn restrict_command(home: &std::path::Path) -> String {
        format!(
            "icacls \"{}\" /inheritance:r /grant:r \"%USERNAME%:(OI)(CI)F\" \
             /grant:r *S-1-5-18:(OI)(CI)F /grant:r *S-1-5-32-544:(OI)(CI)F",
            home.display()
        )
    }

    pub(crate) fn default_home() -> PathBuf {
        program_data(
            std::env::var_os("ProgramData"),
            std::env::var_os("SystemDrive"),
        )
        .join("keyferry")
    }

    fn program_data(
        program_data: Option<std::ffi::OsString>,
        system_drive: Option<std::ffi::OsString>,
    ) -> PathBuf {
        if let Some(p) = program_data.map(PathBuf::from).filter(|p| p.is_absolute()) {
            return p;
        }
        match system_drive.and_then(|d| d.into_string().ok()) {
            Some(d) if d.len() == 2 && d.ends_with(':') => {
                PathBuf::from(format!(r"{d}\ProgramData"))
            }
            _ => PathBuf::from(r"C:\ProgramData"),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::program_data;
        use std::path::PathBuf;

        #[test]
        fn program_data_must_be_absolute() {
            assert_eq!(
                program_data(Some(r"D:\Data".into()), None),
                PathBuf::from(r"D:\Data")
            );
            assert_eq!(
                program_data(Some("relative".into()), Some("E:".into())),
                PathBuf::from(r"E:\ProgramData")
            );
            assert_eq!(
                program_data(Some("".into()), None),
                PathBuf::from(r"C:\ProgramData")
            );
        }
    }
}

/// A home with a keyring, for the node's own tests (without `ops`).
#[cfg(test)]
pub(crate) mod tests_support {
    use super::Home;
    use crate::keyring::Keyring;

    pub(crate) fn init(home: &Home) {
        let mut node = home.open(true).unwrap();
        let keyring = Keyring::generate("2026-12-01T00:00:00Z").unwrap();
        let mut change = node.begin("init", Default::default()).unwrap();
        change.set_keyring(keyring);
        change.finish().unwrap();
    }
}
