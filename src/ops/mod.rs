//! One function per operation. This is the only layer that combines the
//! keyring, payload, bundle, audit log and files, and it owns the order in
//! which an operation's effects happen:
//!
//! 1. everything is read and verified first (a bundle is opened to its last
//!    byte before anything on the node changes);
//! 2. the audit record is appended and synced: an operation whose record
//!    cannot be written does not happen;
//! 3. the operation's own files are written (bundle file, configuration);
//! 4. the keystore is replaced atomically, with a backup, carrying the new
//!    audit head.
//!
//! A failure in 3 or 4 undoes 2 (and 3), so a failed operation leaves the
//! node as it was.

pub mod audit_log;
pub mod config;
pub mod export;
pub mod ha;
pub mod import;
pub mod init;
pub mod inspect;
pub mod keys;
pub mod selftest;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::audit::{self, Actor, AuditHead};
use crate::bundle;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::keyring::store::Keystore;
use crate::keyring::KeyMaterial;

pub const KEYRING_FILE: &str = "keyring.json";
pub const AUDIT_FILE: &str = "audit.log";
pub const BACKUP_DIR: &str = "backups";
pub const HA_CONFIG_FILE: &str = "ha.toml";
const LOCK_FILE: &str = "keyferry.lock";
/// Environment variable naming the home when `--home` is not given.
pub const HOME_ENV: &str = "KEYFERRY_HOME";

/// Unix seconds now.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `20261125T231800Z`: sortable, and valid in a file name on every platform.
pub(crate) fn file_stamp(secs: u64) -> String {
    bundle::fmt_time(secs).replace(['-', ':'], "")
}

/// The node's home directory and the files in it.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `--home`, else `KEYFERRY_HOME`, else the platform default.
    pub fn resolve(explicit: Option<PathBuf>) -> Self {
        let root = explicit
            .or_else(|| {
                std::env::var_os(HOME_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(platform::default_home);
        Self::new(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn keyring_path(&self) -> PathBuf {
        self.root.join(KEYRING_FILE)
    }
    pub fn audit_path(&self) -> PathBuf {
        self.root.join(AUDIT_FILE)
    }
    pub fn backup_dir(&self) -> PathBuf {
        self.root.join(BACKUP_DIR)
    }
    pub fn ha_config_path(&self) -> PathBuf {
        self.root.join(HA_CONFIG_FILE)
    }

    /// Creates the home (owner-only) if needed.
    pub fn create(&self) -> Result<()> {
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
    pub fn sharing_warning(&self) -> Option<String> {
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
    pub fn lock(&self) -> Result<HomeLock> {
        let path = self.root.join(LOCK_FILE);
        let file = fsutil::open_append_private(&path).map_err(Error::io(format!(
            "cannot open the lock file {}",
            path.display()
        )))?;
        match file.try_lock() {
            Ok(()) => Ok(HomeLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(Error::Refused(format!(
                "another keyferry is working on {}: wait for it to finish",
                self.root.display()
            ))),
            Err(fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("cannot lock {}", path.display()))(e))
            }
        }
    }

    pub fn has_keystore(&self) -> bool {
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
    pub fn read_audit_log(&self) -> Result<Vec<u8>> {
        let path = self.audit_path();
        match fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(format!("cannot read {}", path.display()))(e)),
        }
    }

    /// Verifies the audit log against the keystore's head.
    pub fn verify_audit(&self, store: &Keystore) -> Result<Vec<audit::Record>> {
        let log = self.read_audit_log()?;
        Ok(audit::verify(
            &log,
            &store.node.audit_key,
            &store.node.audit_head,
        )?)
    }

    fn append_audit(&self, line: &[u8]) -> Result<AuditUndo> {
        let path = self.audit_path();
        let what = format!(
            "cannot write the audit record to {}; nothing was changed",
            path.display()
        );
        let existed = path.exists();
        let mut file = fsutil::open_append_private(&path).map_err(Error::io(what.clone()))?;
        let prev_len = file
            .seek(io::SeekFrom::End(0))
            .map_err(Error::io(what.clone()))?;
        let undo = AuditUndo {
            path: path.clone(),
            prev_len,
            existed,
        };
        let written = file.write_all(line).and_then(|()| file.sync_all());
        if let Err(e) = written {
            undo.undo();
            return Err(Error::io(what)(e));
        }
        Ok(undo)
    }

    fn write_keystore(&self, store: &Keystore, now: u64) -> Result<()> {
        let path = self.keyring_path();
        fsutil::replace_with_backup(
            &path,
            &store.to_json(),
            &self.backup_dir(),
            &file_stamp(now),
        )
        .map(|_| ())
        .map_err(Error::io(format!(
            "cannot write {}; nothing was changed",
            path.display()
        )))
    }

    /// Applies a change in the order the module documentation gives:
    /// audit record, then `effect`, then the keystore (which must already
    /// carry the new head). On failure, what was done is undone: `undo`
    /// receives what `effect` returned.
    fn commit<T>(
        &self,
        store: &Keystore,
        record_line: &[u8],
        now: u64,
        effect: impl FnOnce() -> Result<T>,
        undo: impl FnOnce(T),
    ) -> Result<()> {
        let audit_undo = self.append_audit(record_line)?;
        let done = match effect() {
            Ok(done) => done,
            Err(e) => {
                audit_undo.undo();
                return Err(e);
            }
        };
        if let Err(e) = self.write_keystore(store, now) {
            undo(done);
            audit_undo.undo();
            return Err(e);
        }
        Ok(())
    }
}

/// Removes an appended audit record again.
struct AuditUndo {
    path: PathBuf,
    prev_len: u64,
    existed: bool,
}

impl AuditUndo {
    fn undo(self) {
        // Best effort: if even this fails, `audit verify` reports the extra
        // record as "log ahead of keystore".
        if !self.existed && self.prev_len == 0 {
            let _ = fs::remove_file(&self.path);
        } else if let Ok(f) = fs::OpenOptions::new().write(true).open(&self.path) {
            let _ = f.set_len(self.prev_len).and_then(|()| f.sync_all());
        }
    }
}

/// Held while an operation changes the home.
pub struct HomeLock {
    _file: File,
}

/// Builds the audit record for `action` after the store's current head and
/// moves the store's head on. Returns the line to append.
fn record(
    store: &mut Keystore,
    now: u64,
    action: &str,
    details: BTreeMap<String, Value>,
) -> Vec<u8> {
    let (rec, head) = audit::next_record(
        &store.node.audit_key,
        &store.node.audit_head,
        &Actor::current(),
        &bundle::fmt_time(now),
        action,
        details,
    );
    store.node.audit_head = head;
    audit::to_line(&rec)
}

/// Fresh node-local state for a node that has none yet.
fn new_node_state() -> Result<crate::keyring::store::NodeState> {
    Ok(crate::keyring::store::NodeState {
        audit_key: KeyMaterial::generate().map_err(|source| Error::Keyring {
            context: "cannot create the audit key".into(),
            source,
        })?,
        audit_head: AuditHead::genesis(),
    })
}

fn details<const N: usize>(pairs: [(&str, Value); N]) -> BTreeMap<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[cfg(unix)]
mod platform {
    use std::path::PathBuf;

    pub fn default_home() -> PathBuf {
        PathBuf::from("/var/lib/keyferry")
    }

    pub fn restrict_command(home: &std::path::Path) -> String {
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
    pub fn restrict_command(home: &std::path::Path) -> String {
        format!(
            "icacls \"{}\" /inheritance:r /grant:r \"%USERNAME%:(OI)(CI)F\" \
             /grant:r *S-1-5-18:(OI)(CI)F /grant:r *S-1-5-32-544:(OI)(CI)F",
            home.display()
        )
    }

    pub fn default_home() -> PathBuf {
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

/// Opens a bundle file for reading, with messages for the usual mistakes.
pub fn open_bundle_file(path: &Path) -> Result<File> {
    if path.is_dir() {
        return Err(Error::Usage(format!(
            "{} is a directory, not a bundle file: give the bundle's file name",
            path.display()
        )));
    }
    File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::Usage(format!(
            "{} does not exist: check the name, or copy the bundle here first",
            path.display()
        )),
        _ => Error::io(format!("cannot open {}", path.display()))(e),
    })
}
