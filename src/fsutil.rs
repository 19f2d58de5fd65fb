//! Files on a node: owner-only creation, atomic replacement with a backup,
//! and staging files that vanish unless committed.
//!
//! Invariants:
//! - a secret file is owner-only from the moment it exists (it is created
//!   with mode 0600 on Unix; on Windows the new file inherits the home's
//!   protected ACL, see [`restrict_dir`]), never chmod-ed after the fact;
//! - a replaced file is never half-written: new contents go to a temporary
//!   file in the same directory, are fsync-ed, then renamed over the old
//!   name, and the directory is fsync-ed;
//! - before a file is replaced its previous version is copied into the
//!   backup directory, so an operator can always go back by hand.
//!
//! This layer never touches cryptography; it moves bytes it is given.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Creates `dir` (and its parents) if needed; a directory created here is
/// owner-only.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    platform::private_dir_mode(&mut builder);
    builder.create(dir)?;
    platform::restrict_dir(dir)
}

/// A new owner-only file in `dir` that is deleted when dropped, unless it is
/// [`persist`](Staged::persist)-ed. Used for everything that must appear
/// whole or not at all.
pub struct Staged {
    file: NamedTempFile,
}

impl Staged {
    pub fn new_in(dir: &Path) -> io::Result<Self> {
        // tempfile creates the file with mode 0600 on Unix, atomically with
        // the creation (O_EXCL), so no window exists where it is readable.
        let file = tempfile::Builder::new()
            .prefix(".keyferry-")
            .suffix(".tmp")
            .tempfile_in(dir)?;
        Ok(Self { file })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn file_mut(&mut self) -> &mut File {
        self.file.as_file_mut()
    }

    /// Flushes the contents to stable storage.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.as_file_mut().flush()?;
        self.file.as_file().sync_all()
    }

    /// Renames the staged file over `target`, replacing what is there.
    pub fn persist_replace(mut self, target: &Path) -> io::Result<()> {
        self.sync()?;
        self.file.persist(target).map_err(|e| e.error)?;
        sync_parent(target)
    }

    /// Moves the staged file to `target`, failing if `target` exists.
    pub fn persist_new(mut self, target: &Path) -> io::Result<()> {
        self.sync()?;
        self.file.persist_noclobber(target).map_err(|e| e.error)?;
        sync_parent(target)
    }
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
pub fn replace_with_backup(
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Owner-only, whatever the old file allowed: for secrets.
    OwnerOnly,
    /// The old file's owner, group and mode, so that the service that reads
    /// it (PostgreSQL, the application) still can; owner-only for a new file.
    KeepExisting,
}

/// [`replace_with_backup`] streaming the new contents from `data`.
pub fn replace_with_backup_from(
    target: &Path,
    data: &mut dyn io::Read,
    backup_dir: &Path,
    stamp: &str,
    ownership: Ownership,
) -> io::Result<Option<PathBuf>> {
    let dir = parent_dir(target);
    let mut staged = Staged::new_in(dir)?;
    io::copy(data, &mut staged)?;
    let existing = fs::metadata(target).ok();
    if let (Ownership::KeepExisting, Some(meta)) = (ownership, &existing) {
        platform::copy_owner_and_mode(meta, staged.file_mut())?;
    }
    let backup = match existing {
        Some(_) => Some(backup_file(target, backup_dir, stamp)?),
        None => None,
    };
    staged.persist_replace(target)?;
    Ok(backup)
}

/// Puts a backup made by [`replace_with_backup_from`] back in place
/// atomically, keeping the backup; with no backup, removes `target` (it did
/// not exist before).
pub fn restore(target: &Path, backup: Option<&Path>) -> io::Result<()> {
    match backup {
        Some(b) => {
            let mut staged = Staged::new_in(parent_dir(target))?;
            io::copy(&mut File::open(b)?, &mut staged)?;
            if let Ok(meta) = fs::metadata(target) {
                platform::copy_owner_and_mode(&meta, staged.file_mut())?;
            }
            staged.persist_replace(target)
        }
        None => fs::remove_file(target),
    }
}

/// Copies `target` into `backup_dir` as `<name>.<stamp>.bak` (owner-only,
/// fsync-ed) and returns the copy's path. An existing backup of the same
/// name is never overwritten: a counter is appended instead.
pub fn backup_file(target: &Path, backup_dir: &Path, stamp: &str) -> io::Result<PathBuf> {
    ensure_private_dir(backup_dir)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let mut source = File::open(target)?;
    let mut staged = Staged::new_in(backup_dir)?;
    io::copy(&mut source, &mut staged)?;
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

/// Bytes available to an unprivileged user on the file system that holds
/// `path` (which must exist).
pub fn available_space(path: &Path) -> io::Result<u64> {
    platform::available_space(path)
}

/// Opens `path` for appending, creating it owner-only if missing.
pub fn open_append_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    platform::private_file_mode(&mut options);
    options.open(path)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename durable: on Unix the directory entry itself must be
/// fsync-ed; Windows has no directory handles to sync and its
/// `MoveFileEx(MOVEFILE_WRITE_THROUGH)` semantics cover it.
fn sync_parent(path: &Path) -> io::Result<()> {
    platform::sync_dir(parent_dir(path))
}

/// Whether the file at `path` can be read by anyone but its owner.
pub fn is_shared_readable(path: &Path) -> io::Result<bool> {
    platform::is_shared_readable(path)
}

#[cfg(unix)]
mod platform {
    use std::fs::{self, DirBuilder, File, OpenOptions};
    use std::io;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    const OWNER_ONLY_FILE: u32 = 0o600;
    const OWNER_ONLY_DIR: u32 = 0o700;

    pub fn private_dir_mode(builder: &mut DirBuilder) {
        builder.mode(OWNER_ONLY_DIR);
    }

    pub fn private_file_mode(options: &mut OpenOptions) {
        options.mode(OWNER_ONLY_FILE);
    }

    pub fn restrict_dir(_dir: &Path) -> io::Result<()> {
        Ok(())
    }

    pub fn sync_dir(dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    pub fn is_shared_readable(path: &Path) -> io::Result<bool> {
        Ok(fs::metadata(path)?.permissions().mode() & 0o077 != 0)
    }

    pub fn copy_owner_and_mode(from: &fs::Metadata, to: &File) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::fchown(to, Some(from.uid()), Some(from.gid()))?;
        to.set_permissions(fs::Permissions::from_mode(from.mode() & 0o7777))
    }

    pub fn available_space(path: &Path) -> io::Result<u64> {
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
mod platform {
    use std::fs::{DirBuilder, OpenOptions};
    use std::io;
    use std::path::Path;

    pub fn private_dir_mode(_builder: &mut DirBuilder) {}

    pub fn private_file_mode(_options: &mut OpenOptions) {}

    /// Files created in the home inherit its ACL. Until the home carries a
    /// protected owner-only ACL (tracked in SECURITY.md), operators must
    /// place it under a directory only administrators can read, which the
    /// default `%ProgramData%\keyferry` is.
    pub fn restrict_dir(_dir: &Path) -> io::Result<()> {
        Ok(())
    }

    pub fn sync_dir(_dir: &Path) -> io::Result<()> {
        Ok(())
    }

    pub fn is_shared_readable(_path: &Path) -> io::Result<bool> {
        Ok(false)
    }

    /// A new file in the same folder inherits that folder's ACL, which is
    /// what the service reading the old file was given; nothing to copy.
    pub fn copy_owner_and_mode(_from: &std::fs::Metadata, _to: &std::fs::File) -> io::Result<()> {
        Ok(())
    }

    pub fn available_space(path: &Path) -> io::Result<u64> {
        use std::os::windows::ffi::OsStrExt;
        use windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW;
        let wide: Vec<u16> = path.as_os_str().encode_wide().chain(Some(0)).collect();
        let mut available: u64 = 0;
        // SAFETY: `wide` is NUL-terminated and outlives the call; the other
        // out-parameters may be null.
        let ok = unsafe {
            GetDiskFreeSpaceExW(
                wide.as_ptr(),
                &mut available,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(available)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
