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
//!
//! The directory itself is no safer than its path: the server's account
//! owns the data directory's parent (Debian, RHEL), so it can rename the
//! data directory or keyferry's copy and put a link to, say,
//! `/etc/sysctl.d` in its place. Root therefore never writes by path
//! there: a [`Dir`] is a descriptor of the directory opened with
//! `O_NOFOLLOW|O_DIRECTORY` and checked to be the one keyferry created or
//! verified (device and inode, [`DirId`]); before each write it checks
//! again that the path still names that directory (a swap is refused, one
//! line naming the path), and the write itself goes through the descriptor
//! (`openat`), so a swap after the check still lands in that directory.
//! [`rename_dir`] moves such a directory only when the entry it renames is
//! still that directory. Windows has no such descriptors: there the path is
//! used as before.

use std::fs;
#[cfg(windows)]
use std::io::Write;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    as_text(path, read(path)?)
}

#[cfg(windows)]
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

#[cfg(windows)]
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

#[cfg(windows)]
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

/// A directory's identity: its device and inode (zero on Windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DirId {
    pub dev: u64,
    pub ino: u64,
}

/// The one-line refusal when `path` is not the directory keyferry holds.
fn replaced(path: &Path) -> io::Error {
    io::Error::other(format!(
        "{} was replaced by someone else (it is no longer the directory keyferry created or checked, or it is a link): nothing was written there",
        path.display()
    ))
}

/// A data directory (or the copy before the swap), held open: writes go
/// through its descriptor, never by path.
#[derive(Debug)]
pub(crate) struct Dir {
    path: PathBuf,
    id: DirId,
    #[cfg(unix)]
    fd: fs::File,
}

impl Dir {
    /// Opens `path` without following a link; with `expected`, refuses a
    /// directory that is not that one.
    pub(crate) fn open(path: &Path, expected: Option<DirId>) -> io::Result<Dir> {
        let dir = platform::open_dir(path)?;
        if expected.is_some_and(|e| e != dir.id) {
            return Err(replaced(path));
        }
        Ok(dir)
    }

    pub(crate) fn id(&self) -> DirId {
        self.id
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses when the path no longer names this directory (renamed away,
    /// a link put in its place).
    pub(crate) fn check(&self) -> io::Result<()> {
        match platform::open_dir(&self.path) {
            Ok(now) if now.id == self.id => Ok(()),
            _ => Err(replaced(&self.path)),
        }
    }

    /// Gives the directory itself to `uid`:`gid` with `mode`, through the
    /// descriptor.
    #[cfg(unix)]
    pub(crate) fn set_owner(&self, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::fchown(&self.fd, Some(uid), Some(gid))?;
        self.fd.set_permissions(fs::Permissions::from_mode(mode))
    }

    /// Reads `name` in this directory, as [`read`].
    pub(crate) fn read(&self, name: &str) -> io::Result<Option<Kept>> {
        self.check()?;
        platform::read_at(self, name)
    }

    /// Reads `name` as text, as [`read_text`].
    pub(crate) fn read_text(&self, name: &str) -> io::Result<Option<String>> {
        as_text(&self.path.join(name), self.read(name)?)
    }

    /// Writes `name` as a new file (mode 0600, owned like this directory),
    /// as [`write`], through the descriptor.
    pub(crate) fn write(&self, name: &str, contents: &[u8]) -> io::Result<()> {
        self.write_like(name, contents, self)
    }

    /// Writes `name` as a new file (mode 0600) owned like the directory
    /// `owner` (the password file beside the data directory belongs to the
    /// data directory's owner, whoever owns its parent).
    pub(crate) fn write_like(&self, name: &str, contents: &[u8], owner: &Dir) -> io::Result<()> {
        self.check()?;
        platform::write_at(self, name, contents, owner)
    }

    /// Removes the file or link `name` (not a directory); a missing one is
    /// no error.
    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        self.check()?;
        platform::remove_file_at(self, name)
    }

    /// Puts back a file or a link read by [`read`] as `name`.
    pub(crate) fn put(&self, name: &str, kept: &Kept) -> io::Result<()> {
        match kept {
            Kept::File(bytes) => self.write(name, bytes),
            Kept::Link(target) => {
                self.check()?;
                platform::symlink_at(self, name, target)
            }
        }
    }
}

/// Renames the directory `from` to `to` (in the same parent) only when the
/// entry `from` is still the directory `id` and no link; afterwards `to`
/// must be it. The parent is opened once, so both names are looked up in
/// the same directory.
pub(crate) fn rename_dir(from: &Path, to: &Path, id: DirId) -> io::Result<()> {
    platform::rename_dir(from, to, id)
}

fn as_text(path: &Path, kept: Option<Kept>) -> io::Result<Option<String>> {
    match kept {
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

#[cfg(unix)]
mod platform {
    use std::ffi::{CString, OsString};
    use std::fs::{File, OpenOptions};
    use std::io::{self, Read, Write};
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
    use std::path::{Path, PathBuf};

    use super::{Dir, DirId, Kept};

    pub(super) fn open_nofollow(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    }

    fn cstr(bytes: &[u8]) -> io::Result<CString> {
        CString::new(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
    }

    /// A single file name: no separator, not `.` or `..` (so `*at` calls
    /// stay in the directory).
    fn name_c(name: &str) -> io::Result<CString> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a file name"),
            ));
        }
        cstr(name.as_bytes())
    }

    // The field types differ between Unixes (i32 device numbers on macOS).
    #[allow(clippy::unnecessary_cast)]
    fn id_of(meta: &libc::stat) -> DirId {
        DirId {
            dev: meta.st_dev as u64,
            ino: meta.st_ino as u64,
        }
    }

    fn fstat(fd: RawFd) -> io::Result<libc::stat> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: fd is open; st is writable memory of the right size.
        if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstat succeeded and filled it.
        Ok(unsafe { st.assume_init() })
    }

    /// The entry `name` in `dir`, not following a link; `None` when missing.
    fn lstat_at(dir: RawFd, name: &CString) -> io::Result<Option<libc::stat>> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: valid descriptor, NUL-terminated name, writable stat.
        let rc = unsafe {
            libc::fstatat(
                dir,
                name.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(e)
            };
        }
        // SAFETY: fstatat succeeded and filled it.
        Ok(Some(unsafe { st.assume_init() }))
    }

    fn is(st: &libc::stat, kind: libc::mode_t) -> bool {
        st.st_mode & libc::S_IFMT == kind
    }

    pub(super) fn open_dir(path: &Path) -> io::Result<Dir> {
        let fd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR)
                {
                    super::replaced(path)
                } else {
                    e
                }
            })?;
        let st = fstat(fd.as_raw_fd())?;
        Ok(Dir {
            path: path.to_path_buf(),
            id: id_of(&st),
            fd,
        })
    }

    fn open_at(
        dir: &Dir,
        name: &CString,
        flags: libc::c_int,
        mode: libc::c_uint,
    ) -> io::Result<File> {
        // SAFETY: valid descriptor and NUL-terminated name; the returned
        // descriptor is owned by the File.
        let fd = unsafe {
            libc::openat(
                dir.fd.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just opened and is ours alone.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    pub(super) fn read_at(dir: &Dir, name: &str) -> io::Result<Option<Kept>> {
        let c = name_c(name)?;
        let Some(st) = lstat_at(dir.fd.as_raw_fd(), &c)? else {
            return Ok(None);
        };
        if is(&st, libc::S_IFLNK) {
            let mut buf = vec![0u8; libc::PATH_MAX as usize];
            // SAFETY: valid descriptor, name, and buffer of buf.len() bytes.
            let n = unsafe {
                libc::readlinkat(
                    dir.fd.as_raw_fd(),
                    c.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            buf.truncate(n as usize);
            return Ok(Some(Kept::Link(PathBuf::from(OsString::from_vec(buf)))));
        }
        let mut file = open_at(dir, &c, libc::O_RDONLY, 0)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                dir.path.join(name).display()
            )));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(Some(Kept::File(bytes)))
    }

    fn remove_at(dir: &Dir, c: &CString, name: &str) -> io::Result<()> {
        match lstat_at(dir.fd.as_raw_fd(), c)? {
            None => Ok(()),
            Some(st) if is(&st, libc::S_IFDIR) => Err(io::Error::other(format!(
                "{} is a directory",
                dir.path.join(name).display()
            ))),
            Some(_) => {
                // SAFETY: valid descriptor and NUL-terminated name.
                if unsafe { libc::unlinkat(dir.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::NotFound {
                        return Err(e);
                    }
                }
                Ok(())
            }
        }
    }

    pub(super) fn remove_file_at(dir: &Dir, name: &str) -> io::Result<()> {
        remove_at(dir, &name_c(name)?, name)
    }

    pub(super) fn write_at(dir: &Dir, name: &str, contents: &[u8], owner: &Dir) -> io::Result<()> {
        let c = name_c(name)?;
        remove_at(dir, &c, name)?;
        let mut file = open_at(
            dir,
            &c,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )?;
        file.write_all(contents)?;
        file.sync_all()?;
        let st = fstat(owner.fd.as_raw_fd())?;
        std::os::unix::fs::fchown(&file, Some(st.st_uid), Some(st.st_gid))
    }

    pub(super) fn symlink_at(dir: &Dir, name: &str, target: &Path) -> io::Result<()> {
        let c = name_c(name)?;
        remove_at(dir, &c, name)?;
        let t = cstr(target.as_os_str().as_bytes())?;
        // SAFETY: NUL-terminated strings and a valid descriptor.
        if unsafe { libc::symlinkat(t.as_ptr(), dir.fd.as_raw_fd(), c.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn split(path: &Path) -> io::Result<(&Path, CString)> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        Ok((parent, cstr(name.as_bytes())?))
    }

    pub(super) fn rename_dir(from: &Path, to: &Path, id: DirId) -> io::Result<()> {
        let (parent, from_c) = split(from)?;
        let (to_parent, to_c) = split(to)?;
        if parent != to_parent {
            return Err(io::Error::other(format!(
                "{} and {} are not in the same directory",
                from.display(),
                to.display()
            )));
        }
        let parent_fd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(parent)?;
        let pfd = parent_fd.as_raw_fd();
        match lstat_at(pfd, &from_c)? {
            Some(st) if is(&st, libc::S_IFDIR) && id_of(&st) == id => {}
            _ => return Err(super::replaced(from)),
        }
        // SAFETY: valid descriptor and NUL-terminated names.
        if unsafe { libc::renameat(pfd, from_c.as_ptr(), pfd, to_c.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        parent_fd.sync_all()?;
        match lstat_at(pfd, &to_c)? {
            Some(st) if is(&st, libc::S_IFDIR) && id_of(&st) == id => Ok(()),
            _ => Err(super::replaced(to)),
        }
    }
}

#[cfg(windows)]
mod platform {
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::path::Path;

    use super::{Dir, DirId, Kept};

    pub(super) fn open_nofollow(path: &Path) -> io::Result<File> {
        // `read` checked it is no link; Windows has no O_NOFOLLOW.
        File::open(path)
    }

    /// Opened for writing and for changing its access list: [`own_like`]
    /// sets the list through this handle, which Windows refuses ("Access
    /// denied") to a handle opened for writing alone.
    pub(super) fn create_new(path: &Path) -> io::Result<File> {
        use std::os::windows::fs::OpenOptionsExt;
        use windows_sys::Win32::Storage::FileSystem::{FILE_GENERIC_WRITE, WRITE_DAC};
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .access_mode(FILE_GENERIC_WRITE | WRITE_DAC)
            .open(path)
    }

    /// The access list of `like` (the data directory: its server account
    /// and the administrators), whatever the file's own directory allows.
    pub(super) fn own_like(file: &File, like: &Path) -> io::Result<()> {
        crate::fsutil::private_to(like, file)
    }

    pub(super) fn symlink(target: &Path, link: &Path) -> io::Result<()> {
        std::os::windows::fs::symlink_file(target, link)
    }

    // No directory descriptors: the path, as before.
    pub(super) fn open_dir(path: &Path) -> io::Result<Dir> {
        if !std::fs::symlink_metadata(path)?.is_dir() {
            return Err(super::replaced(path));
        }
        Ok(Dir {
            path: path.to_path_buf(),
            id: DirId { dev: 0, ino: 0 },
        })
    }

    pub(super) fn read_at(dir: &Dir, name: &str) -> io::Result<Option<Kept>> {
        super::read(&dir.path.join(name))
    }

    pub(super) fn write_at(dir: &Dir, name: &str, contents: &[u8], owner: &Dir) -> io::Result<()> {
        super::write(&dir.path.join(name), contents, &owner.path)
    }

    pub(super) fn remove_file_at(dir: &Dir, name: &str) -> io::Result<()> {
        super::remove_entry(&dir.path.join(name))
    }

    pub(super) fn symlink_at(dir: &Dir, name: &str, target: &Path) -> io::Result<()> {
        super::put(
            &dir.path.join(name),
            &Kept::Link(target.to_path_buf()),
            &dir.path,
        )
    }

    pub(super) fn rename_dir(from: &Path, to: &Path, _id: DirId) -> io::Result<()> {
        std::fs::rename(from, to)
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
        let data = Dir::open(dir.path(), None).unwrap();
        data.write("standby.signal", b"").unwrap();
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
        let data = Dir::open(dir.path(), None).unwrap();
        assert_eq!(data.read("postgresql.conf").unwrap(), Some(kept.clone()));
        assert!(data.read_text("postgresql.conf").is_err());
        data.put("copy.conf", &kept).unwrap();
        assert_eq!(fs::read_link(dir.path().join("copy.conf")).unwrap(), secret);
        assert_eq!(read(&dir.path().join("missing")).unwrap(), None);
        let plain = dir.path().join("plain");
        fs::write(&plain, b"x = 1\n").unwrap();
        assert_eq!(read_text(&plain).unwrap().as_deref(), Some("x = 1\n"));
        assert_eq!(data.read_text("plain").unwrap().as_deref(), Some("x = 1\n"));
    }

    /// The trial's attack: the directory keyferry holds is renamed away and
    /// a link to a directory elsewhere put in its place.
    fn swap_for_link(dir: &Path, outside: &Path) {
        fs::rename(dir, dir.with_extension("moved")).unwrap();
        std::os::unix::fs::symlink(outside, dir).unwrap();
    }

    #[test]
    fn the_same_directory_is_written_a_swapped_one_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let copy = root.path().join("data.keyferry-new-1");
        fs::create_dir(&copy).unwrap();
        let held = Dir::open(&copy, None).unwrap();
        let id = held.id();
        held.write("pg_hba.conf", b"local all all peer\n").unwrap();
        assert_eq!(
            fs::read(copy.join("pg_hba.conf")).unwrap(),
            b"local all all peer\n"
        );
        assert!(Dir::open(&copy, Some(id)).is_ok());

        swap_for_link(&copy, outside.path());
        let e = held.write("pg_ident.conf", b"x").unwrap_err().to_string();
        assert!(e.contains("was replaced by someone else"), "{e}");
        assert!(e.contains(&copy.display().to_string()), "{e}");
        assert!(held.put("standby.signal", &Kept::File(Vec::new())).is_err());
        assert!(Dir::open(&copy, Some(id)).is_err());
        // A link at the path is refused even with nothing expected.
        assert!(Dir::open(&copy, None).is_err());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_put_in_the_copys_place_is_refused_not_written_or_moved() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let copy = root.path().join("data.keyferry-new-1");
        fs::create_dir(&copy).unwrap();
        let held = Dir::open(&copy, None).unwrap();
        let id = held.id();
        // Renamed away and an ordinary directory made in its place.
        fs::rename(&copy, root.path().join("elsewhere")).unwrap();
        fs::create_dir(&copy).unwrap();
        assert!(held.write("postgresql.conf", b"x").is_err());
        assert_eq!(fs::read_dir(&copy).unwrap().count(), 0);
        let data = root.path().join("data");
        let e = rename_dir(&copy, &data, id).unwrap_err().to_string();
        assert!(e.contains("was replaced by someone else"), "{e}");
        assert!(!data.exists());

        // A link in its place is not moved either.
        fs::remove_dir(&copy).unwrap();
        std::os::unix::fs::symlink(outside.path(), &copy).unwrap();
        assert!(rename_dir(&copy, &data, id).is_err());
        assert!(fs::symlink_metadata(&data).is_err());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_directory_keyferry_holds_is_moved_and_still_held() {
        let root = tempfile::tempdir().unwrap();
        let copy = root.path().join("data.keyferry-new-1");
        fs::create_dir(&copy).unwrap();
        let id = Dir::open(&copy, None).unwrap().id();
        let data = root.path().join("data");
        rename_dir(&copy, &data, id).unwrap();
        let held = Dir::open(&data, Some(id)).unwrap();
        held.write("standby.signal", b"").unwrap();
        assert!(data.join("standby.signal").is_file());
        assert!(held.write("../escape", b"").is_err());
    }
}

#[cfg(all(test, windows))]
mod windows_tests {
    use super::*;

    /// A new file gets the data directory's access list through its own
    /// handle (which needs WRITE_DAC), and holds what was written.
    #[test]
    fn a_written_file_takes_the_directory_access_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replication.pgpass");
        write(&path, b"line\n", dir.path()).unwrap();
        assert_eq!(read(&path).unwrap(), Some(Kept::File(b"line\n".to_vec())));
        write(&path, b"again\n", dir.path()).unwrap();
        assert_eq!(read(&path).unwrap(), Some(Kept::File(b"again\n".to_vec())));
    }
}
