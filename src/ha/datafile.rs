//! Files inside a PostgreSQL data directory, read and written by keyferry
//! (often root) in a directory that the server's account controls — and
//! that `pg_basebackup` and `pg_rewind`, running as that account, fill from
//! the other node.
//!
//! Invariants: nothing here follows a symbolic link. A link where keyferry
//! writes is replaced by a new file, never written through (a planted
//! `standby.signal -> /etc/shadow` must not truncate `/etc/shadow`); a file
//! is read only when it is a regular file, so no link makes keyferry copy
//! another file's contents where the server's account can read them. A
//! link that the operator placed for a configuration file is kept as a
//! link ([`Kept::Link`]), pointing where it pointed.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A data-directory file as found, to put back as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kept {
    File(Vec<u8>),
    Link(PathBuf),
}

/// Reads `path` without following a link; `None` when it does not exist.
pub(crate) fn read(path: &Path) -> io::Result<Option<Kept>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        return fs::read_link(path).map(|t| Some(Kept::Link(t)));
    }
    let mut file = platform::open_nofollow(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(Kept::File(bytes)))
}

/// Reads `path` as text when it is a regular file; `None` when missing; an
/// error when it is a link (its target is not keyferry's to read).
pub(crate) fn read_text(path: &Path) -> io::Result<Option<String>> {
    match read(path)? {
        None => Ok(None),
        Some(Kept::File(bytes)) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8")),
        Some(Kept::Link(target)) => Err(io::Error::other(format!(
            "{} is a symbolic link (to {}): keyferry does not follow links in a data directory; replace it by the file",
            path.display(),
            target.display()
        ))),
    }
}

/// Writes `contents` as a new file at `path` (mode 0600, owned like
/// `owner_like`): whatever was there (a file, a link) is removed first,
/// and the new file is created exclusively, so no link is followed.
pub(crate) fn write(path: &Path, contents: &[u8], owner_like: &Path) -> io::Result<()> {
    remove_entry(path)?;
    let mut file = platform::create_new(path)?;
    file.write_all(contents)?;
    file.sync_all()?;
    platform::own_like(&file, owner_like)
}

/// Puts back a file or a link read by [`read`].
pub(crate) fn put(path: &Path, kept: &Kept, owner_like: &Path) -> io::Result<()> {
    match kept {
        Kept::File(bytes) => write(path, bytes, owner_like),
        Kept::Link(target) => {
            remove_entry(path)?;
            platform::symlink(target, path)
        }
    }
}

fn remove_entry(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(io::Error::other(format!(
            "{} is a directory",
            path.display()
        ))),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
mod platform {
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    use std::path::Path;

    pub(super) fn open_nofollow(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    }

    pub(super) fn create_new(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    }

    pub(super) fn own_like(file: &File, like: &Path) -> io::Result<()> {
        let meta = std::fs::metadata(like)?;
        std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()))
    }

    pub(super) fn symlink(target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }
}

#[cfg(windows)]
mod platform {
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::path::Path;

    pub(super) fn open_nofollow(path: &Path) -> io::Result<File> {
        // `read` checked it is no link; Windows has no O_NOFOLLOW.
        File::open(path)
    }

    pub(super) fn create_new(path: &Path) -> io::Result<File> {
        OpenOptions::new().write(true).create_new(true).open(path)
    }

    /// New files inherit the data directory's access list.
    pub(super) fn own_like(_file: &File, _like: &Path) -> io::Result<()> {
        Ok(())
    }

    pub(super) fn symlink(target: &Path, link: &Path) -> io::Result<()> {
        std::os::windows::fs::symlink_file(target, link)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_planted_link_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let signal = dir.path().join("standby.signal");
        std::os::unix::fs::symlink(&victim, &signal).unwrap();
        write(&signal, b"", dir.path()).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&signal).unwrap().is_file());
    }

    #[test]
    fn a_link_is_not_read_through_and_is_kept_as_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, b"s3cret").unwrap();
        let conf = dir.path().join("postgresql.conf");
        std::os::unix::fs::symlink(&secret, &conf).unwrap();
        assert!(read_text(&conf).is_err());
        let kept = read(&conf).unwrap().unwrap();
        assert_eq!(kept, Kept::Link(secret.clone()));
        let copy = dir.path().join("copy.conf");
        put(&copy, &kept, dir.path()).unwrap();
        assert_eq!(fs::read_link(&copy).unwrap(), secret);
        assert_eq!(read(&dir.path().join("missing")).unwrap(), None);
        let plain = dir.path().join("plain");
        fs::write(&plain, b"x = 1\n").unwrap();
        assert_eq!(read_text(&plain).unwrap().as_deref(), Some("x = 1\n"));
    }
}
