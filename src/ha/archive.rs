//! The WAL archive folder: which files are WAL archive files, and removing
//! those and nothing else.
//!
//! Invariant: only regular files directly inside the given directory whose
//! names have one of PostgreSQL's exact archive shapes are ever listed or
//! removed:
//!
//! | kind | name |
//! | --- | --- |
//! | segment | 24 upper-case hex digits (`000000010000000000000001`) |
//! | partial segment | a segment name + `.partial` |
//! | timeline history | 8 upper-case hex digits + `.history` |
//! | backup history | a segment name + `.` + 8 upper-case hex digits + `.backup` |
//!
//! These are the shapes PostgreSQL itself writes and recognises
//! (`IsXLogFileName` and friends in `xlog_internal.h`); anything else —
//! compressed copies, lower-case look-alikes, `README`, sub-directories
//! named like segments, symbolic links (even to WAL files) — is left alone.
//! Sub-directories are not entered.
//!
//! Cleaning is two steps so that a dry run is just the first: [`plan`] lists,
//! [`clean`] removes what a plan lists after checking again that each entry
//! is still a regular file.

use std::fs;
use std::path::{Path, PathBuf};

use crate::ha::error::Error;

/// Hex digits in a WAL segment name: timeline, log and segment, 8 each.
const SEGMENT_NAME_LEN: usize = 24;
/// Hex digits in a timeline id or a backup start offset.
const WORD_LEN: usize = 8;
const PARTIAL_SUFFIX: &str = ".partial";
const HISTORY_SUFFIX: &str = ".history";
const BACKUP_SUFFIX: &str = ".backup";

/// The kinds of WAL archive file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum WalFileKind {
    /// A complete WAL segment.
    Segment,
    /// The last, incomplete segment of a timeline, kept at promotion.
    Partial,
    /// A timeline history file.
    History,
    /// A backup history file (start and stop of a base backup).
    Backup,
}

/// Classifies a file name; `None` means "not a WAL archive file".
pub(crate) fn classify(name: &str) -> Option<WalFileKind> {
    if is_upper_hex(name, SEGMENT_NAME_LEN) {
        return Some(WalFileKind::Segment);
    }
    if let Some(segment) = name.strip_suffix(PARTIAL_SUFFIX) {
        return is_upper_hex(segment, SEGMENT_NAME_LEN).then_some(WalFileKind::Partial);
    }
    if let Some(timeline) = name.strip_suffix(HISTORY_SUFFIX) {
        return is_upper_hex(timeline, WORD_LEN).then_some(WalFileKind::History);
    }
    if let Some(rest) = name.strip_suffix(BACKUP_SUFFIX) {
        let (segment, offset) = rest.split_once('.')?;
        return (is_upper_hex(segment, SEGMENT_NAME_LEN) && is_upper_hex(offset, WORD_LEN))
            .then_some(WalFileKind::Backup);
    }
    None
}

fn is_upper_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

/// One file a clean would remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArchiveFile {
    /// Full path.
    pub path: PathBuf,
    /// Its kind.
    pub kind: WalFileKind,
    /// Size in bytes when planned.
    pub size: u64,
}

/// What a clean of one directory would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CleanPlan {
    /// The archive directory.
    pub dir: PathBuf,
    /// WAL archive files, sorted by name (so oldest segment first).
    pub files: Vec<ArchiveFile>,
    /// Entries that are left alone (anything not a WAL archive file).
    pub kept: usize,
}

impl CleanPlan {
    /// Total bytes the clean would free.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// What a clean did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CleanReport {
    /// Files removed.
    pub removed: usize,
    /// Bytes freed (sizes as planned).
    pub bytes: u64,
    /// Planned files that were gone or no longer regular files when the
    /// clean reached them, and so were left alone.
    pub skipped: Vec<PathBuf>,
}

/// Lists the WAL archive files directly inside `dir` with their sizes.
/// Reads only; this is the whole of a dry run.
pub(crate) fn plan(dir: &Path) -> Result<CleanPlan, Error> {
    let list_error = |source| Error::ArchiveList {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    let mut kept = 0;
    for entry in fs::read_dir(dir).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        // `DirEntry::metadata` does not follow symbolic links, so a link
        // named like a segment is seen as a link and kept.
        let metadata = entry.metadata().map_err(list_error)?;
        let kind = entry.file_name().to_str().and_then(classify);
        match kind {
            Some(kind) if metadata.file_type().is_file() => files.push(ArchiveFile {
                path: entry.path(),
                kind,
                size: metadata.len(),
            }),
            _ => kept += 1,
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(CleanPlan {
        dir: dir.to_path_buf(),
        files,
        kept,
    })
}

/// The log and segment part of a WAL file name (its 16 hex digits after
/// the timeline), by which `pg_archivecleanup` orders files across
/// timelines; `None` for a timeline history file.
fn segment_part(file: &ArchiveFile) -> Option<&str> {
    let name = file.path.file_name()?.to_str()?;
    match file.kind {
        WalFileKind::History => None,
        _ => name.get(WORD_LEN..SEGMENT_NAME_LEN),
    }
}

/// Why files stay although a clean lists them: a server archives into the
/// directory, so the segments from `keep_from` on (the older of its last
/// checkpoint's REDO segment and the newest base backup's start), the
/// newest `.backup` file and every timeline history file are still needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Needed {
    /// The oldest segment still needed, a full 24-digit name.
    pub keep_from: String,
    /// The files kept for it.
    pub files: Vec<ArchiveFile>,
}

impl CleanPlan {
    /// Keeps out of the plan what a live archive still needs, the way
    /// `pg_archivecleanup` does given `redo_segment` (the last checkpoint's
    /// REDO WAL file), and more: the newest base backup's `.backup` file and
    /// the segments from that backup's start on, and every history file.
    pub(crate) fn keep_needed(&mut self, redo_segment: &str) -> Needed {
        let newest_backup = self
            .files
            .iter()
            .filter(|f| f.kind == WalFileKind::Backup)
            .max_by(|a, b| a.path.cmp(&b.path))
            .map(|f| f.path.clone());
        let backup_start = newest_backup.as_ref().and_then(|p| {
            p.file_name()?
                .to_str()
                .map(|n| n[..SEGMENT_NAME_LEN].to_owned())
        });
        let keep_from = match backup_start {
            Some(b) if b[WORD_LEN..] < redo_segment[WORD_LEN..] => b,
            _ => redo_segment.to_owned(),
        };
        let (needed, removable): (Vec<ArchiveFile>, Vec<ArchiveFile>) =
            std::mem::take(&mut self.files).into_iter().partition(|f| {
                Some(&f.path) == newest_backup.as_ref()
                    || segment_part(f).is_none_or(|s| s >= &keep_from[WORD_LEN..])
            });
        self.files = removable;
        Needed {
            keep_from,
            files: needed,
        }
    }
}

/// The directory a clean may work in: `dir` with every link resolved, and
/// never a server's WAL: not inside a data directory (its own or a parent's
/// `PG_VERSION` and `global/`), not a `pg_wal` (it holds `archive_status/`),
/// not the real location of `pg_data`'s `pg_wal` (which `initdb --waldir`
/// puts elsewhere behind a link).
pub(crate) fn real_dir(dir: &Path, pg_data: Option<&Path>) -> Result<PathBuf, Error> {
    let real = fs::canonicalize(dir).map_err(|source| Error::ArchiveList {
        path: dir.to_path_buf(),
        source,
    })?;
    let refuse = |why: String| {
        Err(Error::ArchiveIsWal {
            path: dir.to_path_buf(),
            real: real.clone(),
            why,
        })
    };
    let is_data_dir = |d: &Path| d.join("PG_VERSION").is_file() && d.join("global").is_dir();
    if let Some(data) = real.ancestors().find(|d| is_data_dir(d)) {
        return refuse(format!(
            "it is inside the data directory {}",
            data.display()
        ));
    }
    if real.join("archive_status").is_dir() {
        return refuse("it holds archive_status/, so it is a server's pg_wal".into());
    }
    if let Some(data) = pg_data {
        if let Ok(wal) = fs::canonicalize(data.join("pg_wal")) {
            if real.starts_with(&wal) {
                return refuse(format!("it is the WAL directory of {}", data.display()));
            }
        }
    }
    Ok(real)
}

/// Why this node's server archives into `dir`, if it does (or may): its
/// configuration turns `archive_mode` on with an `archive_command` that
/// names the directory, or with an `archive_library` (which cannot be
/// looked into). A running server whose configuration cannot be read is
/// assumed to archive here.
pub(crate) fn live_archiving(
    config: &crate::ha::config::HaConfig,
    dir: &Path,
    real: &Path,
) -> Option<String> {
    let data = &config.pg_data;
    let settings = match crate::pg::conf::data_dir_settings(data) {
        Ok(Some(s)) => s,
        _ => {
            return data.join("postmaster.pid").is_file().then(|| {
                format!(
                    "a server runs in {} and its configuration could not be read there",
                    data.display()
                )
            })
        }
    };
    let on = settings.get("archive_mode").is_some_and(|m| {
        matches!(
            m.to_ascii_lowercase().as_str(),
            "on" | "always" | "true" | "yes" | "1"
        )
    });
    if !on {
        return None;
    }
    if let Some(lib) = settings.get("archive_library").filter(|l| !l.is_empty()) {
        return Some(format!(
            "{}'s server archives with the library {lib}",
            data.display()
        ));
    }
    let command = settings.get("archive_command")?;
    let names = |p: &Path| command.contains(&*p.to_string_lossy());
    (names(dir) || names(real)).then(|| {
        format!(
            "{}'s server archives into it (archive_command = '{command}')",
            data.display()
        )
    })
}

/// Removes the files of `plan`. Each is checked again just before removal
/// (still a regular file, not a link); one that changed is skipped and
/// reported. Stops at the first file that cannot be removed.
pub(crate) fn clean(plan: &CleanPlan) -> Result<CleanReport, Error> {
    let mut report = CleanReport::default();
    for file in &plan.files {
        let still_regular = fs::symlink_metadata(&file.path).is_ok_and(|m| m.file_type().is_file());
        if !still_regular {
            report.skipped.push(file.path.clone());
            continue;
        }
        fs::remove_file(&file.path).map_err(|source| Error::ArchiveRemove {
            path: file.path.clone(),
            removed: report.removed,
            source,
        })?;
        report.removed += 1;
        report.bytes += file.size;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_exactly_postgres_archive_names() {
        use WalFileKind::*;
        let cases: [(&str, Option<WalFileKind>); 20] = [
            ("000000010000000000000001", Some(Segment)),
            ("00000002000000A3000000FF", Some(Segment)),
            ("000000010000000000000001.partial", Some(Partial)),
            ("00000002.history", Some(History)),
            ("000000010000000000000002.00000028.backup", Some(Backup)),
            ("00000001000000000000000a", None),
            ("00000001000000000000001", None),
            ("0000000100000000000000011", None),
            ("000000010000000000000001.txt", None),
            ("000000010000000000000001.gz", None),
            ("000000010000000000000001.partial.gz", None),
            ("0000002.history", None),
            ("0000000G.history", None),
            ("000000010000000000000002.backup", None),
            ("000000010000000000000002.0000028.backup", None),
            ("000000010000000000000002.00000028.backup.bak", None),
            ("README", None),
            ("archive_status", None),
            (".000000010000000000000001", None),
            ("", None),
        ];
        for (name, expected) in cases {
            assert_eq!(classify(name), expected, "{name:?}");
        }
    }

    const SEGMENT_BYTES: usize = 1000;

    fn write(dir: &Path, name: &str, len: usize) {
        fs::write(dir.join(name), vec![0u8; len]).unwrap();
    }

    #[test]
    fn plan_lists_wal_files_with_sizes_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "000000010000000000000002", SEGMENT_BYTES);
        write(dir.path(), "000000010000000000000001", SEGMENT_BYTES);
        write(dir.path(), "00000002.history", 41);
        write(dir.path(), "README", 5);
        write(dir.path(), "000000010000000000000001.txt", 7);
        fs::create_dir(dir.path().join("000000010000000000000003")).unwrap();

        let plan = plan(dir.path()).unwrap();
        let names: Vec<_> = plan
            .files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "00000002.history"
            ]
        );
        assert_eq!(plan.total_bytes(), 2 * SEGMENT_BYTES as u64 + 41);
        assert_eq!(plan.kept, 3);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            6,
            "planning removes nothing"
        );
    }

    #[test]
    fn clean_removes_only_planned_wal_files() {
        let dir = tempfile::tempdir().unwrap();
        let wal = [
            "000000010000000000000001",
            "000000010000000000000001.partial",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
        ];
        for name in wal {
            write(dir.path(), name, SEGMENT_BYTES);
        }
        let bystanders = [
            "README",
            "000000010000000000000001.txt",
            "000000010000000000000009.gz",
        ];
        for name in bystanders {
            write(dir.path(), name, 3);
        }
        let lookalike_dir = dir.path().join("000000010000000000000003");
        fs::create_dir(&lookalike_dir).unwrap();
        write(&lookalike_dir, "000000010000000000000004", 3);

        let report = clean(&plan(dir.path()).unwrap()).unwrap();
        assert_eq!(report.removed, wal.len());
        assert_eq!(report.bytes, (wal.len() * SEGMENT_BYTES) as u64);
        assert!(report.skipped.is_empty());
        for name in wal {
            assert!(!dir.path().join(name).exists(), "{name} removed");
        }
        for name in bystanders {
            assert!(dir.path().join(name).is_file(), "{name} kept");
        }
        assert!(
            lookalike_dir.join("000000010000000000000004").is_file(),
            "sub-directories are not entered"
        );
    }

    #[test]
    fn a_file_replaced_after_planning_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let name = "000000010000000000000001";
        write(dir.path(), name, SEGMENT_BYTES);
        let plan = plan(dir.path()).unwrap();
        fs::remove_file(dir.path().join(name)).unwrap();
        fs::create_dir(dir.path().join(name)).unwrap();

        let report = clean(&plan).unwrap();
        assert_eq!(report.removed, 0);
        assert_eq!(report.skipped, [dir.path().join(name)]);
        assert!(dir.path().join(name).is_dir());
    }

    #[cfg(unix)]
    #[test]
    fn symbolic_links_are_never_removed_nor_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("000000010000000000000001");
        fs::write(&target, b"wal").unwrap();
        let link = dir.path().join("000000010000000000000001");
        std::os::unix::fs::symlink(&target, &link).unwrap();

        let plan = plan(dir.path()).unwrap();
        assert!(plan.files.is_empty());
        assert_eq!(plan.kept, 1);
        clean(&plan).unwrap();
        assert!(fs::symlink_metadata(&link).is_ok(), "link kept");
        assert!(target.is_file(), "target kept");
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-archive");
        let err = plan(&missing).unwrap_err();
        assert!(matches!(err, Error::ArchiveList { .. }));
        assert!(err.to_string().contains("no-such-archive"));
    }
}
