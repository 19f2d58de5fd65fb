//! Files on a node: owner-only creation, atomic replacement with a backup,
//! and staging files that vanish unless committed.
//!
//! Invariants:
//! - a secret file is owner-only from the moment it exists, never restricted
//!   after the fact: on Unix it is created with mode 0600 (directories
//!   0700); on Windows it is created with a protected DACL (no inherited
//!   ACEs) that grants full access to the current user, SYSTEM and the
//!   Administrators group and to no one else, passed to `CreateFileW` /
//!   `CreateDirectoryW` in the creation call itself (see the Windows
//!   `platform` module);
//! - a replaced file is never half-written: new contents go to a temporary
//!   file in the same directory, are fsync-ed, then renamed over the old
//!   name, and the rename is made durable (the directory is fsync-ed on
//!   Unix; `MoveFileExW` with `MOVEFILE_WRITE_THROUGH` on Windows);
//! - before a file is replaced its previous version is copied into the
//!   backup directory, so an operator can always go back by hand.
//!
//! The shared code below says *what* happens; the `platform` modules (one
//! per OS family, with the same functions) say *how*. This layer never
//! touches cryptography; it moves bytes it is given.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Creates `dir` (and its parents) if needed; a directory created here is
/// owner-only.
pub(crate) fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    platform::create_private_dir_all(dir)
}

/// A new owner-only file in `dir` that is deleted when dropped, unless it is
/// persisted ([`persist_replace`](Staged::persist_replace),
/// [`persist_new`](Staged::persist_new)). Used for everything that must appear
/// whole or not at all.
pub(crate) struct Staged {
    file: NamedTempFile,
}

/// Every staged file's name starts with this and ends with [`STAGED_SUFFIX`].
pub(crate) const STAGED_PREFIX: &str = ".keyferry-";
pub(crate) const STAGED_SUFFIX: &str = ".tmp";

impl Staged {
    pub(crate) fn new_in(dir: &Path) -> io::Result<Self> {
        Self::new_tagged_in(dir, "")
    }

    /// A staged file whose name carries `tag` after the common prefix, so
    /// that whoever knows the tag can find it after a crash.
    pub(crate) fn new_tagged_in(dir: &Path, tag: &str) -> io::Result<Self> {
        let mut builder = tempfile::Builder::new();
        let prefix = format!("{STAGED_PREFIX}{tag}");
        builder.prefix(&prefix).suffix(STAGED_SUFFIX);
        let file = platform::create_staged(&builder, dir)?;
        Ok(Self { file })
    }

    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    pub(crate) fn file_mut(&mut self) -> &mut File {
        self.file.as_file_mut()
    }

    /// Flushes the contents to stable storage.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.file.as_file_mut().flush()?;
        self.file.as_file().sync_all()
    }

    /// Renames the staged file over `target`, replacing what is there.
    pub(crate) fn persist_replace(mut self, target: &Path) -> io::Result<()> {
        self.sync()?;
        platform::persist(self.file, target, Clobber::Replace)?;
        sync_parent(target)?;
        tracing::debug!(file = %target.display(), "file replaced atomically");
        Ok(())
    }

    /// Moves the staged file to `target`, failing if `target` exists.
    pub(crate) fn persist_new(mut self, target: &Path) -> io::Result<()> {
        self.sync()?;
        platform::persist(self.file, target, Clobber::Refuse)?;
        sync_parent(target)?;
        tracing::debug!(file = %target.display(), "file created");
        Ok(())
    }
}

/// Whether [`platform::persist`] may replace an existing target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clobber {
    Replace,
    Refuse,
}

impl Write for Staged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Replaces `target` with `contents` atomically; when `target` exists its
/// current version is first copied into `backup_dir`. Returns the backup's
/// path, if one was made.
#[cfg(test)]
fn replace_with_backup(
    target: &Path,
    contents: &[u8],
    backup_dir: &Path,
    stamp: &str,
) -> io::Result<Option<PathBuf>> {
    replace_with_backup_from(
        target,
        &mut &contents[..],
        backup_dir,
        stamp,
        Ownership::OwnerOnly,
    )
}

/// Who may read a replaced file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ownership {
    /// Owner-only, whatever the old file allowed: for secrets.
    OwnerOnly,
    /// The old file's owner, group and mode, so that the service that reads
    /// it (PostgreSQL, the application) still can; owner-only for a new file.
    KeepExisting,
}

/// [`replace_with_backup`] streaming the new contents from `data`.
#[cfg(test)]
fn replace_with_backup_from(
    target: &Path,
    data: &mut dyn io::Read,
    backup_dir: &Path,
    stamp: &str,
    ownership: Ownership,
) -> io::Result<Option<PathBuf>> {
    let staged = Staged::new_in(parent_dir(target))?;
    let replacement = Replacement::prepare(target, staged, data, backup_dir, stamp, ownership)?;
    let backup = replacement.backup().map(Path::to_path_buf);
    replacement.commit()?;
    Ok(backup)
}

/// A replacement made ready (new contents staged and synced beside the
/// target, the old version backed up) but not yet done: the caller can
/// journal its undo before [`commit`](Replacement::commit) renames it into
/// place.
pub(crate) struct Replacement {
    target: PathBuf,
    staged: Staged,
    backup: Option<PathBuf>,
}

impl Replacement {
    /// `staged` must be in the target's directory.
    pub(crate) fn prepare(
        target: &Path,
        mut staged: Staged,
        data: &mut dyn io::Read,
        backup_dir: &Path,
        stamp: &str,
        ownership: Ownership,
    ) -> io::Result<Self> {
        io::copy(data, &mut staged)?;
        staged.sync()?;
        let exists = target.exists();
        match &ownership {
            Ownership::KeepExisting if exists => {
                platform::copy_owner_and_mode(target, staged.file_mut())?
            }
            _ => {}
        }
        let backup = if exists {
            Some(backup_file(target, backup_dir, stamp)?)
        } else {
            None
        };
        if let Some(b) = &backup {
            tracing::debug!(file = %target.display(), backup = %b.display(), "previous version backed up");
        }
        Ok(Self {
            target: target.to_path_buf(),
            staged,
            backup,
        })
    }

    /// The copy of the previous version, when there was one.
    pub(crate) fn backup(&self) -> Option<&Path> {
        self.backup.as_deref()
    }

    /// The staged new contents.
    pub(crate) fn staged_path(&self) -> &Path {
        self.staged.path()
    }

    /// Renames the new contents over the target.
    pub(crate) fn commit(self) -> io::Result<()> {
        self.staged.persist_replace(&self.target)
    }
}

/// Removes the staged files in `dir` whose names start with
/// [`STAGED_PREFIX`] + `tag` (regular files only; links are left alone),
/// left behind by a process that was killed. Returns how many.
pub(crate) fn sweep_staged(dir: &Path, tag: &str) -> io::Result<usize> {
    let prefix = format!("{STAGED_PREFIX}{tag}");
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix)
            && name.ends_with(STAGED_SUFFIX)
            && entry.file_type()?.is_file()
        {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether `dir` holds staged files (see [`sweep_staged`]).
pub(crate) fn has_staged(dir: &Path) -> io::Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(STAGED_PREFIX) && name.ends_with(STAGED_SUFFIX) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Puts a backup made by [`replace_with_backup_from`] back in place
/// atomically, keeping the backup; with no backup, removes `target` (it did
/// not exist before).
pub(crate) fn restore(target: &Path, backup: Option<&Path>) -> io::Result<()> {
    match backup {
        Some(b) => {
            let mut staged = Staged::new_in(parent_dir(target))?;
            io::copy(&mut File::open(b)?, &mut staged)?;
            if target.exists() {
                platform::copy_owner_and_mode(target, staged.file_mut())?;
            }
            staged.persist_replace(target)
        }
        None => std::fs::remove_file(target),
    }
}

/// Copies `target` into `backup_dir` as `<name>.<stamp>.bak` (owner-only,
/// fsync-ed) and returns the copy's path. An existing backup of the same
/// name is never overwritten: a counter is appended instead.
pub(crate) fn backup_file(target: &Path, backup_dir: &Path, stamp: &str) -> io::Result<PathBuf> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    backup_from(&mut File::open(target)?, &name, backup_dir, stamp)
}

/// Keeps what `source` reads as the backup `<name>.<stamp>.bak` in
/// `backup_dir` (owner-only, never overwriting one); returns its path.
pub(crate) fn backup_from(
    source: &mut dyn Read,
    name: &str,
    backup_dir: &Path,
    stamp: &str,
) -> io::Result<PathBuf> {
    ensure_private_dir(backup_dir)?;
    let mut staged = Staged::new_in(backup_dir)?;
    io::copy(source, &mut staged)?;
    staged.sync()?;
    for n in 0u32.. {
        let candidate = if n == 0 {
            backup_dir.join(format!("{name}.{stamp}.bak"))
        } else {
            backup_dir.join(format!("{name}.{stamp}.{n}.bak"))
        };
        if candidate.exists() {
            continue;
        }
        return staged.persist_new(&candidate).map(|()| candidate);
    }
    unreachable!("u32 backup counter exhausted")
}

/// Gives `file` to the account that owns `owner` (the PostgreSQL server's
/// account, owner of its data directory), mode 0600; on Windows the
/// owner's access list, which names that account.
#[cfg(windows)]
pub(crate) fn private_to(owner: &Path, file: &File) -> io::Result<()> {
    platform::private_to(owner, file)
}

/// Bytes available to an unprivileged user on the file system that holds
/// `path` (which must exist).
pub(crate) fn available_space(path: &Path) -> io::Result<u64> {
    platform::available_space(path)
}

/// Opens `path` for appending, creating it owner-only if missing.
pub(crate) fn open_append_private(path: &Path) -> io::Result<File> {
    platform::open_append_private(path)
}

pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename durable: on Unix the directory entry itself must be
/// fsync-ed; on Windows `platform::persist` already renamed with
/// `MOVEFILE_WRITE_THROUGH`, which returns only once the move is on disk.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    platform::sync_dir(parent_dir(path))
}

/// Why another account could control `path` (a symbolic link; owned by
/// another account; writable by group or others), or `None`. With
/// `follow`, a link to a directory is judged by its target (an operator may
/// link the home elsewhere); keyferry's own files are never followed.
/// On Windows this returns `None`: the files keyferry creates there carry a
/// protected DACL from their creation, and an ACL audit of existing files
/// is not done here.
pub(crate) fn foreign_control(path: &Path, follow: bool) -> io::Result<Option<String>> {
    platform::foreign_control(path, follow)
}

/// Whether the file at `path` can be read by anyone but its owner (on
/// Windows: anyone but its owner, the current user, SYSTEM and the
/// Administrators group, judged from the file's DACL).
pub(crate) fn is_shared_readable(path: &Path) -> io::Result<bool> {
    platform::is_shared_readable(path)
}

/// Unix: permission bits at creation (`open(O_CREAT|O_EXCL, 0600)`,
/// `mkdir(0700)`), `tempfile`'s own staging and rename, and an fsync of the
/// directory after a rename.
#[cfg(unix)]
mod platform {
    use std::fs::{self, DirBuilder, File, OpenOptions};
    use std::io;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    use tempfile::NamedTempFile;

    use super::Clobber;

    const OWNER_ONLY_FILE: u32 = 0o600;
    const OWNER_ONLY_DIR: u32 = 0o700;

    /// Creates `dir` and any missing parents with mode 0700.
    pub(crate) fn create_private_dir_all(dir: &Path) -> io::Result<()> {
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(OWNER_ONLY_DIR);
        builder.create(dir)
    }

    pub(crate) fn create_staged(
        builder: &tempfile::Builder,
        dir: &Path,
    ) -> io::Result<NamedTempFile> {
        // tempfile creates the file with mode 0600 on Unix, atomically with
        // the creation (O_EXCL), so no window exists where it is readable.
        builder.tempfile_in(dir)
    }

    pub(crate) fn persist(file: NamedTempFile, target: &Path, clobber: Clobber) -> io::Result<()> {
        match clobber {
            Clobber::Replace => file.persist(target).map(drop).map_err(|e| e.error),
            Clobber::Refuse => file
                .persist_noclobber(target)
                .map(drop)
                .map_err(|e| e.error),
        }
    }

    pub(crate) fn open_append_private(path: &Path) -> io::Result<File> {
        let mut options = OpenOptions::new();
        options
            .append(true)
            .create(true)
            .mode(OWNER_ONLY_FILE)
            .custom_flags(libc::O_NOFOLLOW);
        options.open(path)
    }

    pub(crate) fn foreign_control(path: &Path, follow: bool) -> io::Result<Option<String>> {
        use std::os::unix::fs::MetadataExt;
        let meta = if follow {
            fs::metadata(path)?
        } else {
            fs::symlink_metadata(path)?
        };
        if meta.file_type().is_symlink() {
            return Ok(Some("is a symbolic link".into()));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Ok(Some(format!(
                "is owned by uid {}, not by this account (uid {me})",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Ok(Some(format!(
                "can be written by other accounts (mode {:o})",
                meta.mode() & 0o7777
            )));
        }
        Ok(None)
    }

    pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    pub(crate) fn is_shared_readable(path: &Path) -> io::Result<bool> {
        Ok(fs::metadata(path)?.permissions().mode() & 0o077 != 0)
    }

    /// The file at `from`'s owner, group and mode onto `to` (changing the
    /// owner needs root unless it is the caller's own file).
    pub(crate) fn copy_owner_and_mode(from: &Path, to: &File) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(from)?;
        std::os::unix::fs::fchown(to, Some(meta.uid()), Some(meta.gid()))?;
        to.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
    }

    pub(crate) fn available_space(path: &Path) -> io::Result<u64> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: statvfs only writes into the zeroed struct we own, and
        // c_path is a valid NUL-terminated string for the whole call.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Ok(u64::from(stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
    }
}

#[cfg(windows)]
#[path = "fsutil/windows.rs"]
mod platform;

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn replace_keeps_a_backup_of_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("keyring.json");
        let backups = dir.path().join("backups");
        assert!(replace_with_backup(&target, b"one", &backups, "s1")
            .unwrap()
            .is_none());
        let backup = replace_with_backup(&target, b"two", &backups, "s1")
            .unwrap()
            .unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(fs::read(&backup).unwrap(), b"one");
        let again = replace_with_backup(&target, b"three", &backups, "s1")
            .unwrap()
            .unwrap();
        assert_ne!(again, backup, "an existing backup is never overwritten");
        assert_eq!(fs::read(&backup).unwrap(), b"one");
        assert_eq!(fs::read(&again).unwrap(), b"two");
        assert!(!is_shared_readable(&target).unwrap());
        assert!(!is_shared_readable(&again).unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn keep_existing_keeps_owner_and_mode_and_restore_undoes() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("appsettings.json");
        let backups = dir.path().join("backups");
        fs::write(&target, b"old").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        let before = fs::metadata(&target).unwrap();
        let backup = replace_with_backup_from(
            &target,
            &mut &b"new"[..],
            &backups,
            "s",
            Ownership::KeepExisting,
        )
        .unwrap();
        let after = fs::metadata(&target).unwrap();
        assert_eq!(after.mode() & 0o7777, 0o640);
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        restore(&target, backup.as_deref()).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o640);
        let created = dir.path().join("new.json");
        assert!(replace_with_backup_from(
            &created,
            &mut &b"x"[..],
            &backups,
            "s",
            Ownership::KeepExisting
        )
        .unwrap()
        .is_none());
        assert_eq!(fs::metadata(&created).unwrap().mode() & 0o777, 0o600);
        restore(&created, None).unwrap();
        assert!(!created.exists());
    }

    #[test]
    fn a_dropped_staged_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut staged = Staged::new_in(dir.path()).unwrap();
            staged.write_all(b"half").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn available_space_is_reported_for_an_existing_path() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_space(dir.path()).unwrap() > 0);
        assert!(available_space(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn persist_new_refuses_to_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("keys.exp");
        fs::write(&target, b"old").unwrap();
        let staged = Staged::new_in(dir.path()).unwrap();
        assert!(staged.persist_new(&target).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

#[cfg(all(test, windows))]
mod windows_tests {
    use super::*;

    /// Keeping a file's access list means setting it on the staged file's
    /// handle, which needs WRITE_DAC: replacing and restoring a file that
    /// another program made (appsettings.json, pg_hba.conf) must work.
    #[test]
    fn keep_existing_and_restore_work_on_a_file_made_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("appsettings.json");
        let backups = dir.path().join("backups");
        std::fs::write(&target, b"old").unwrap();
        let backup = replace_with_backup_from(
            &target,
            &mut &b"new"[..],
            &backups,
            "s",
            Ownership::KeepExisting,
        )
        .unwrap()
        .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        restore(&target, Some(&backup)).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
    }
}
