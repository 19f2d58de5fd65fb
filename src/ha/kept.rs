//! Old data directories a bootstrap kept: when a replica is rebuilt from a
//! base backup, the data directory it replaces is renamed, never deleted,
//! to `<pg_data file name>.old-<YYYYmmddTHHMMSSZ>` beside `pg_data` (UTC,
//! the time of the swap). This module finds them and measures them.
//!
//! Invariants: only direct siblings of `pg_data` whose names have exactly
//! that shape (the data directory's own name, `.old-`, 8 digits, `T`, 6
//! digits, `Z`, a valid date and time) are listed, and only directories
//! (not links to them); sizes are the apparent sizes of the regular files
//! under them, found without following any symbolic link, so a link inside
//! an old copy can neither be counted twice nor lead the walk elsewhere.
//! Nothing is changed or removed: they are the operator's backups.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// What separates the data directory's name from the time it was kept.
const OLD_INFIX: &str = ".old-";
/// `YYYYmmddTHHMMSSZ`.
const STAMP_LEN: usize = 16;

/// A kept old data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OldDataDir {
    /// Its path.
    pub path: PathBuf,
    /// When it was kept, RFC 3339 UTC (from its name).
    pub kept_at: String,
    /// Apparent size of the regular files under it.
    pub bytes: u64,
    /// False when part of it could not be read (the size is then a lower
    /// bound).
    pub complete: bool,
}

/// When `candidate` is the name of an old copy of a data directory named
/// `data_name`, the time in its name as RFC 3339 (`2026-01-01T00:00:00Z`).
pub(crate) fn kept_time(data_name: &str, candidate: &str) -> Option<String> {
    let stamp = candidate.strip_prefix(data_name)?.strip_prefix(OLD_INFIX)?;
    let b = stamp.as_bytes();
    if b.len() != STAMP_LEN || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = stamp.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    let text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z");
    // The calendar check (month lengths, leap years) is humantime's.
    humantime::parse_rfc3339(&text).ok()?;
    Some(text)
}

/// The old copies of `pg_data` beside it, oldest first. An unreadable
/// parent directory is an error; an unreadable copy is listed with
/// `complete: false`.
pub fn list(pg_data: &Path) -> io::Result<Vec<OldDataDir>> {
    let (Some(parent), Some(name)) = (
        pg_data.parent(),
        pg_data.file_name().and_then(|n| n.to_str()),
    ) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    let entries = match fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(kept_at) = entry.file_name().to_str().and_then(|n| kept_time(name, n)) else {
            continue;
        };
        // file_type() does not follow a link: a link named like a copy is
        // not one.
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let path = entry.path();
        let (bytes, complete) = size_of_tree(&path);
        found.push(OldDataDir {
            path,
            kept_at,
            bytes,
            complete,
        });
    }
    found.sort_by(|a, b| a.kept_at.cmp(&b.kept_at).then(a.path.cmp(&b.path)));
    Ok(found)
}

/// The apparent size of the regular files under `dir`, without following
/// symbolic links, and whether every directory could be read.
pub(crate) fn size_of_tree(dir: &Path) -> (u64, bool) {
    let mut total = 0u64;
    let mut complete = true;
    // An explicit stack: a deep tree cannot overflow the call stack.
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            complete = false;
            continue;
        };
        for entry in entries {
            let Ok(entry) = entry else {
                complete = false;
                continue;
            };
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(entry.path()),
                Ok(t) if t.is_file() => match entry.metadata() {
                    Ok(m) => total = total.saturating_add(m.len()),
                    Err(_) => complete = false,
                },
                Ok(_) => {} // links, sockets, …: not followed, not counted
                Err(_) => complete = false,
            }
        }
    }
    (total, complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_shape_is_an_old_copy() {
        assert_eq!(
            kept_time("main", "main.old-20260101T000000Z").as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            kept_time("main", "main.old-20240229T235959Z").as_deref(),
            Some("2024-02-29T23:59:59Z")
        );
        for not in [
            "main",
            "main.old",
            "main.old-",
            "other.old-20260101T000000Z",
            "main.old-20260101T000000",
            "main.old-20260101T000000Z.tmp",
            "main.old-2026010T1000000Z",
            "main.old-20261301T000000Z",
            "main.old-20230229T000000Z",
            "main.old-2026010aT000000Z",
            "main.old-+0260101T000000Z",
            "xmain.old-20260101T000000Z",
        ] {
            assert_eq!(kept_time("main", not), None, "{not}");
        }
    }

    #[test]
    fn lists_and_sizes_copies_beside_the_data_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        fs::create_dir(&data).unwrap();
        let old = tmp.path().join("data.old-20260101T000000Z");
        fs::create_dir_all(old.join("base/1")).unwrap();
        fs::write(old.join("PG_VERSION"), b"15\n").unwrap();
        fs::write(old.join("base/1/1259"), vec![0u8; 8192]).unwrap();
        let older = tmp.path().join("data.old-20250101T000000Z");
        fs::create_dir(&older).unwrap();
        // Look-alikes that are not copies.
        fs::write(tmp.path().join("data.old-20240101T000000Z"), b"a file").unwrap();
        fs::create_dir(tmp.path().join("data.old-yesterday")).unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&old, tmp.path().join("data.old-20270101T000000Z")).unwrap();
            // A link inside a copy is neither followed nor counted.
            std::os::unix::fs::symlink(&old, old.join("loop")).unwrap();
        }
        let found = list(&data).unwrap();
        let paths: Vec<&Path> = found.iter().map(|d| d.path.as_path()).collect();
        assert_eq!(paths, [older.as_path(), old.as_path()]);
        assert_eq!(found[1].bytes, 3 + 8192);
        assert_eq!(found[1].kept_at, "2026-01-01T00:00:00Z");
        assert!(found[1].complete);
        assert_eq!((found[0].bytes, found[0].complete), (0, true));
        assert!(list(&tmp.path().join("missing/data")).unwrap().is_empty());
    }
}
