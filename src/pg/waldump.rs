//! What a node wrote after a point in its WAL, read with `pg_waldump`:
//! where its WAL ends, how many transactions committed and how many rows
//! they changed. Rejoin uses it to say what a rewind or a bootstrap would
//! set aside of an old primary's history after the divergence.
//!
//! Invariants: read only (the program reads the segment files of the
//! stopped data directory, as its owner); the output is read as it comes,
//! one record at a time, so a long history costs no memory; a summary
//! that cannot be made is an error, never zeros (callers then judge by
//! bytes alone).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use super::child::{spawn_tied, tied_command};
use super::rewind::{last_lines, RewindError};
use super::{prepare_program, Lsn};

/// What the WAL holds from a point to its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WalSummary {
    /// The end of the last valid record (the start point when none).
    pub end: Option<Lsn>,
    /// Records read.
    pub records: u64,
    /// Commits (and prepared transactions): work a client was told is done.
    pub commits: u64,
    /// Rows inserted, updated or deleted (heap records; a multi-insert
    /// counts its tuples).
    pub rows: u64,
}

impl WalSummary {
    /// Reads one line of `pg_waldump`'s per-record output.
    pub(crate) fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("rmgr:") else {
            return;
        };
        let rmgr = rest.split_whitespace().next().unwrap_or("");
        let total: Option<u64> = line
            .split_once("len (rec/tot):")
            .and_then(|(_, r)| r.split(',').next())
            .and_then(|r| r.split('/').nth(1))
            .and_then(|t| t.trim().parse().ok());
        let lsn = line
            .split_once(" lsn: ")
            .and_then(|(_, r)| r.split(',').next())
            .and_then(Lsn::parse);
        let desc = line.split_once("desc: ").map_or("", |(_, d)| d);
        let kind = desc
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches("+INIT");
        self.records += 1;
        if let (Some(lsn), Some(total)) = (lsn, total) {
            // Records start on 8-byte boundaries.
            let end = Lsn(lsn.0 + total.div_ceil(8) * 8);
            self.end = Some(self.end.map_or(end, |e| e.max(end)));
        }
        match (rmgr, kind) {
            ("Transaction", k) if k.starts_with("COMMIT") || k == "PREPARE" => self.commits += 1,
            ("Heap", "INSERT" | "UPDATE" | "HOT_UPDATE" | "DELETE") => self.rows += 1,
            ("Heap2", "MULTI_INSERT") => {
                let n = desc
                    .split(|c: char| !c.is_ascii_digit())
                    .find(|t| !t.is_empty())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(1);
                self.rows += n;
            }
            _ => {}
        }
    }
}

/// Summarizes the WAL of the stopped cluster `data` on `timeline` from
/// `from` to its end.
pub(crate) fn summarize(
    pg_bin: &Path,
    data: &Path,
    timeline: u32,
    from: Lsn,
) -> Result<WalSummary, RewindError> {
    let program = super::program(pg_bin, "pg_waldump");
    let mut command = tied_command(&program);
    prepare_program(&mut command, Some(data));
    command
        .arg("--path")
        .arg(data.join("pg_wal"))
        .arg(format!("--timeline={timeline}"))
        .arg(format!("--start={from}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cannot = |e: std::io::Error| RewindError::CannotRun {
        program: program.display().to_string(),
        message: e.to_string(),
    };
    let mut tied = spawn_tied(&mut command).map_err(cannot)?;
    let child = tied.child_mut();
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stderr.as_mut() {
            use std::io::Read;
            let _ = s.read_to_string(&mut text);
        }
        text
    });
    let mut summary = WalSummary::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(line) => summary.add_line(&line),
                Err(_) => break,
            }
        }
    }
    let err = reader.join().unwrap_or_default();
    child.wait().map_err(cannot)?;
    // pg_waldump always ends in an error at the end of the WAL ("invalid
    // record length", "could not find file"); what it read before counts.
    // Reading nothing at all is only an answer when it says why: no valid
    // record after the point, or the WAL ends exactly there (the segment
    // holding it was never begun, and none after it exists).
    let ends_there =
        missing_segment(&err).is_some_and(|name| !later_segment_exists(&data.join("pg_wal"), name));
    if summary.records == 0 && !ends_there && !err.contains("could not find a valid record") {
        return Err(RewindError::Failed {
            program: program.display().to_string(),
            said: last_lines(&err),
        });
    }
    if summary.end.is_none() {
        summary.end = Some(from);
    }
    Ok(summary)
}

/// The segment `pg_waldump` could not find, from its complaint.
fn missing_segment(err: &str) -> Option<&str> {
    let rest = err.split_once("could not find file \"")?.1;
    let name = rest.split_once('"')?.0;
    is_segment_name(name).then_some(name)
}

/// `TTTTTTTTLLLLLLLLSSSSSSSS`: 24 hexadecimal digits.
fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `wal_dir` holds a segment of `name`'s timeline after `name`.
fn later_segment_exists(wal_dir: &Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(wal_dir) else {
        // Unreadable: assume the worst (the WAL may go on).
        return true;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        let other = e.file_name().to_string_lossy().into_owned();
        is_segment_name(&other)
            && other[..8].eq_ignore_ascii_case(&name[..8])
            && other.to_ascii_uppercase() > name.to_ascii_uppercase()
    })
}

/// The newest timeline this node's WAL reaches: the highest among the
/// segments and timeline history files in `wal_dir` (`None`: none there,
/// or unreadable). The control file names its last checkpoint's timeline,
/// which right after a promotion is still the one before: the
/// end-of-recovery checkpoint is a spread one that may take minutes, and
/// a server killed meanwhile has written on the new timeline all the same.
pub(crate) fn newest_timeline(wal_dir: &Path) -> Option<u32> {
    std::fs::read_dir(wal_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let tli = if is_segment_name(&name) {
                &name[..8]
            } else {
                name.strip_suffix(".history")
                    .filter(|t| t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit()))?
            };
            u32::from_str_radix(tli, 16).ok()
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_timeline_is_read_from_segment_and_history_names() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_timeline(dir.path()), None);
        for name in [
            "000000010000000000000003",
            "00000002.history",
            "archive_status",
            "000000090000000000000001.partial",
            "0000000A.history.tmp",
            "xlogtemp.123",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(newest_timeline(dir.path()), Some(2));
        std::fs::write(dir.path().join("0000000F0000000000000004"), b"").unwrap();
        assert_eq!(newest_timeline(dir.path()), Some(15));
        assert_eq!(newest_timeline(&dir.path().join("missing")), None);
    }

    #[test]
    fn records_commits_and_rows_are_counted() {
        let mut s = WalSummary::default();
        for line in [
            "rmgr: Heap        len (rec/tot):     59/    59, tx:        735, lsn: 0/03000148, prev 0/03000110, desc: INSERT off 2 flags 0x00, blkref #0: rel 1663/5/16384 blk 0",
            "rmgr: Heap        len (rec/tot):     59/  8219, tx:        735, lsn: 0/03000188, prev 0/03000148, desc: INSERT+INIT off 1 flags 0x00, blkref #0: rel 1663/5/16384 blk 1 FPW",
            "rmgr: Heap2       len (rec/tot):    100/   100, tx:        736, lsn: 0/030021C0, prev 0/03000188, desc: MULTI_INSERT ntuples: 12, flags: 0x00, blkref #0: rel 1663/5/16384 blk 1",
            "rmgr: Heap        len (rec/tot):     69/    69, tx:        737, lsn: 0/03002228, prev 0/030021C0, desc: HOT_UPDATE off 1 xmax 737",
            "rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/03002270, prev 0/03002228, desc: COMMIT 2026-12-06 03:50:00.000000 UTC",
            "rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/03002298, prev 0/03002270, desc: CHECKPOINT_SHUTDOWN redo 0/3002298",
            "pg_waldump: error: error in WAL record at 0/3002298: invalid record length at 0/3002310: wanted 24, got 0",
        ] {
            s.add_line(line);
        }
        assert_eq!(s.records, 6);
        assert_eq!(s.commits, 1);
        assert_eq!(s.rows, 2 + 12 + 1);
        assert_eq!(s.end, Some(Lsn(0x3002298 + 120)));
    }

    #[test]
    fn a_wal_that_ends_where_the_segment_would_begin_holds_nothing_after() {
        let err = "pg_waldump: error: could not find file \"000000010000000000000039\": No such file or directory";
        assert_eq!(missing_segment(err), Some("000000010000000000000039"));
        assert_eq!(missing_segment("could not find file \"x\""), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("000000010000000000000038"), b"").unwrap();
        std::fs::write(dir.path().join("00000002000000000000003A"), b"").unwrap();
        assert!(!later_segment_exists(
            dir.path(),
            "000000010000000000000039"
        ));
        std::fs::write(dir.path().join("00000001000000000000003A"), b"").unwrap();
        assert!(later_segment_exists(dir.path(), "000000010000000000000039"));
    }

    #[test]
    fn checkpoints_alone_are_no_transaction() {
        let mut s = WalSummary::default();
        s.add_line("rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/05000028, prev 0/04000110, desc: CHECKPOINT_SHUTDOWN redo 0/5000028");
        s.add_line("rmgr: Standby     len (rec/tot):     50/    50, tx:          0, lsn: 0/050000A0, prev 0/05000028, desc: RUNNING_XACTS nextXid 740");
        assert_eq!((s.commits, s.rows, s.records), (0, 0, 2));
    }
}
