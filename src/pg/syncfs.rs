//! Making a data directory durable with one `syncfs(2)` per file system
//! instead of an `fsync` per file, as PostgreSQL's
//! `recovery_init_sync_method = syncfs` does (PostgreSQL 14 and later).
//!
//! An `fsync` per file costs a device cache flush per file even when the
//! file holds nothing unwritten, so on a busy disk it scales with the
//! number of files in the cluster, not with what changed; one `syncfs`
//! writes what is dirty on the file system and flushes once.
//!
//! What it covers: the file systems of the data directory, of `pg_wal` and
//! of each tablespace (their links followed), the same places PostgreSQL's
//! own `fsync` walk and its `syncfs` method cover. What is written to those
//! file systems, data and metadata (created, renamed, truncated and removed
//! files), is on stable storage when [`FileSystems::sync`] returns `Ok`.
//!
//! When it is used: only on Linux 5.8 or later, where `syncfs` reports a
//! write-back error of the file system (before 5.8 it returned success and
//! the error reached only the kernel log), and only for a cluster of
//! PostgreSQL 14 or later, whose server accepts
//! `recovery_init_sync_method = syncfs` and whose `pg_rewind` has
//! `--no-sync`. Elsewhere [`usable`] says no and callers keep the per-file
//! `fsync` of the PostgreSQL programs.
//!
//! Invariant: the file systems are opened before the writes they must
//! cover, so a write-back error during those writes is reported by the
//! sync (Linux samples the file system's error state when the descriptor
//! is opened); opened read-only, nothing is written through them.

use std::io;
use std::path::Path;

/// The PostgreSQL major version that first has both
/// `recovery_init_sync_method` and `pg_rewind --no-sync`.
const MIN_MAJOR: u32 = 14;

/// Whether the data directory `data` can be made durable with `syncfs`,
/// and its server started with `recovery_init_sync_method = syncfs`.
pub(crate) fn usable(data: &Path) -> bool {
    kernel_reports_errors() && major_of(data).is_some_and(|m| m >= MIN_MAJOR)
}

/// The major version in `data/PG_VERSION` ("15", or "9.6" for 9).
fn major_of(data: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data.join("PG_VERSION")).ok()?;
    parse_major(&text)
}

fn parse_major(text: &str) -> Option<u32> {
    text.trim().split('.').next()?.parse().ok()
}

/// Whether a `uname` release (`6.1.0-18-amd64`) is Linux 5.8 or later.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn release_at_least_5_8(release: &str) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (5, 8),
        _ => false,
    }
}

#[cfg(target_os = "linux")]
fn kernel_reports_errors() -> bool {
    // SAFETY: uname fills the zeroed struct it is given; its fields are
    // NUL-terminated strings.
    let release = unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut name) != 0 {
            return false;
        }
        std::ffi::CStr::from_ptr(name.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    release_at_least_5_8(&release)
}

#[cfg(not(target_os = "linux"))]
fn kernel_reports_errors() -> bool {
    false
}

/// The file systems holding a data directory, opened.
#[derive(Debug)]
pub(crate) struct FileSystems {
    /// Each with its device number.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    dirs: Vec<(u64, std::fs::File)>,
}

impl FileSystems {
    /// Opens the data directory, `pg_wal` and each tablespace (links
    /// followed), one descriptor per file system.
    pub(crate) fn open(data: &Path) -> io::Result<Self> {
        let mut found = Self { dirs: Vec::new() };
        found.add(data)?;
        found.add(&data.join("pg_wal"))?;
        if let Ok(entries) = std::fs::read_dir(data.join("pg_tblspc")) {
            for entry in entries {
                found.add(&entry?.path())?;
            }
        }
        Ok(found)
    }

    /// Adds the file systems of `other` (opened again after the writes: a
    /// tablespace they created is covered too).
    pub(crate) fn merge(&mut self, other: FileSystems) {
        for (dev, dir) in other.dirs {
            if !self.dirs.iter().any(|(d, _)| *d == dev) {
                self.dirs.push((dev, dir));
            }
        }
    }

    fn add(&mut self, dir: &Path) -> io::Result<()> {
        let file = open_dir(dir)?;
        let dev = device(&file)?;
        if !self.dirs.iter().any(|(d, _)| *d == dev) {
            self.dirs.push((dev, file));
        }
        Ok(())
    }

    /// Writes everything unwritten on these file systems to stable
    /// storage; the first error, if any.
    #[cfg(target_os = "linux")]
    pub(crate) fn sync(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        for (_, dir) in &self.dirs {
            // SAFETY: the descriptor is open for as long as `dir` lives.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn sync(&self) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "syncfs exists only on Linux",
        ))
    }
}

/// Opens `dir` read-only, refusing anything but a directory before it is
/// opened: a link the server's account pointed at a device or a FIFO is
/// never opened (by root).
#[cfg(unix)]
fn open_dir(dir: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
}

#[cfg(not(unix))]
fn open_dir(dir: &Path) -> io::Result<std::fs::File> {
    std::fs::File::open(dir)
}

#[cfg(unix)]
fn device(file: &std::fs::File) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata()?.dev())
}

/// Never reached ([`usable`] says no off Linux); one file system.
#[cfg(not(unix))]
fn device(_file: &std::fs::File) -> io::Result<u64> {
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_5_8_and_later_report_write_back_errors() {
        assert!(release_at_least_5_8("5.8.0"));
        assert!(release_at_least_5_8("6.1.0-18-amd64"));
        assert!(release_at_least_5_8("5.10.209-fc"));
        assert!(!release_at_least_5_8("5.4.0-150-generic"));
        assert!(!release_at_least_5_8("4.19.0"));
        assert!(!release_at_least_5_8("garbage"));
    }

    #[test]
    fn the_major_version_is_read_from_pg_version() {
        assert_eq!(parse_major("15\n"), Some(15));
        assert_eq!(parse_major("9.6\n"), Some(9));
        assert_eq!(parse_major(""), None);
        let dir = tempfile::tempdir().unwrap();
        assert!(!usable(dir.path()), "no PG_VERSION: no syncfs");
        std::fs::write(dir.path().join("PG_VERSION"), "13\n").unwrap();
        assert!(!usable(dir.path()), "PostgreSQL 13 has no syncfs method");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_file_systems_of_a_directory_are_opened_once_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pg_wal")).unwrap();
        std::fs::create_dir(dir.path().join("pg_tblspc")).unwrap();
        let mut fs = FileSystems::open(dir.path()).unwrap();
        assert_eq!(fs.dirs.len(), 1, "one file system, one descriptor");
        fs.merge(FileSystems::open(dir.path()).unwrap());
        assert_eq!(fs.dirs.len(), 1);
        fs.sync().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        std::os::unix::fs::symlink(dir.path().join("file"), dir.path().join("pg_tblspc/1"))
            .unwrap();
        assert!(
            FileSystems::open(dir.path()).is_err(),
            "a link to something else than a directory is refused"
        );
    }
}
