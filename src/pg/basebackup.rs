//! `pg_basebackup -X stream -c fast` into a new directory, with its
//! progress read from the program's own output.
//!
//! `pg_basebackup -P -v` writes its phases as `pg_basebackup: …` lines and
//! its progress as `DONE/TOTAL kB (P%), N/M tablespace…` records ended by
//! `\r` (on a terminal) or `\n`; both are split here, so what the operator
//! sees is exactly what the program measured. Lines that are neither are
//! kept (the last few) for the error message.
//!
//! Invariants: the password reaches the program only through the libpq
//! password file named in `PGPASSFILE` (never its command line or
//! `PGPASSWORD`); the program is tied to keyferry ([`super::child`]) and
//! runs as the data directory's owner when keyferry runs as root.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::child::{spawn_tied, tied_command};
use super::{prepare_program, PgError};

/// What the copy is doing, as the program reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the primary's checkpoint.
    Checkpoint,
    /// Copying the data files.
    Copy,
    /// Waiting for the WAL written during the copy.
    Wal,
    /// Flushing the copy to disk.
    Sync,
}

impl Phase {
    /// The phase in one word (a progress bar's message).
    pub fn label(self) -> &'static str {
        match self {
            Phase::Checkpoint => "checkpoint",
            Phase::Copy => "copy",
            Phase::Wal => "wal",
            Phase::Sync => "sync",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Phase::Checkpoint => "waiting for the primary's checkpoint",
            Phase::Copy => "copying the data files",
            Phase::Wal => "receiving the WAL written during the copy",
            Phase::Sync => "syncing the copy to disk",
        }
    }
}

/// One thing the program said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Said {
    Phase(Phase),
    /// Bytes copied and the estimated total.
    Progress {
        done: u64,
        total: u64,
    },
    Other(String),
}

/// Reads one record of `pg_basebackup -P -v`'s standard error.
pub(crate) fn parse(record: &str) -> Option<Said> {
    let text = record.trim();
    if text.is_empty() {
        return None;
    }
    if let Some(message) = text.strip_prefix("pg_basebackup: ") {
        let phase =
            if message.starts_with("initiating base backup") || message.starts_with("checkpoint") {
                Some(Phase::Checkpoint)
            } else if message.starts_with("starting background WAL receiver")
                || message.starts_with("write-ahead log start point")
            {
                Some(Phase::Copy)
            } else if message.starts_with("write-ahead log end point")
                || message.starts_with("waiting for background process")
            {
                Some(Phase::Wal)
            } else if message.starts_with("syncing data to disk") {
                Some(Phase::Sync)
            } else {
                None
            };
        return Some(phase.map_or_else(|| Said::Other(text.to_owned()), Said::Phase));
    }
    let progress = || -> Option<Said> {
        let (sizes, _) = text.split_once(" kB")?;
        let (done, total) = sizes.split_once('/')?;
        Some(Said::Progress {
            done: done.trim().parse::<u64>().ok()?.saturating_mul(1024),
            total: total.trim().parse::<u64>().ok()?.saturating_mul(1024),
        })
    };
    Some(progress().unwrap_or_else(|| Said::Other(text.to_owned())))
}

/// Where to copy from.
#[derive(Debug, Clone)]
pub(crate) struct Source<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    /// A libpq password file with the replication password, readable by
    /// the data directory's owner.
    pub passfile: &'a Path,
    /// Create this physical replication slot and stream through it.
    pub slot: Option<&'a str>,
}

/// How a copy ended.
#[derive(Debug, Clone, Default)]
pub(crate) struct Copied {
    /// Bytes of data files copied (the program's own count).
    pub bytes: u64,
}

/// Runs `pg_basebackup` into `target` (which must exist, empty, owned by
/// the server's OS user), calling `said` for each phase and progress
/// record.
pub(crate) fn run(
    pg_bin: &Path,
    source: &Source<'_>,
    target: &Path,
    mut said: impl FnMut(&Said),
) -> Result<Copied, PgError> {
    let mut command = tied_command(&super::program(pg_bin, "pg_basebackup"));
    prepare_program(&mut command, Some(target));
    command
        .arg("-D")
        .arg(target)
        .args(["-h", source.host, "-p", &source.port.to_string()])
        .args(["-U", source.user, "-w"])
        .args(["-X", "stream", "-c", "fast", "-P", "-v"])
        .env(super::passfile::PASSFILE_ENV, source.passfile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(slot) = source.slot {
        command.args(["-C", "-S", slot]);
    }
    let tool = |message: String| PgError::Tool {
        program: super::program(pg_bin, "pg_basebackup")
            .display()
            .to_string(),
        message,
    };
    let mut child = spawn_tied(&mut command).map_err(|e| tool(e.to_string()))?;
    let mut stderr = child
        .child_mut()
        .stderr
        .take()
        .ok_or_else(|| tool("no standard error pipe".into()))?;
    let mut copied = Copied::default();
    let mut last_words: Vec<String> = Vec::new();
    let mut record = Vec::new();
    let mut buf = [0u8; 4096];
    let mut handle = |record: &[u8], copied: &mut Copied| {
        let text = String::from_utf8_lossy(record);
        match parse(&text) {
            Some(s @ Said::Progress { done, .. }) => {
                copied.bytes = copied.bytes.max(done);
                said(&s);
            }
            Some(Said::Other(line)) => {
                tracing::debug!(%line, "pg_basebackup");
                last_words.push(line);
                if last_words.len() > 3 {
                    last_words.remove(0);
                }
            }
            Some(s) => said(&s),
            None => {}
        }
    };
    loop {
        let n = match stderr.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(tool(format!("reading its output: {e}"))),
        };
        for &b in &buf[..n] {
            if b == b'\r' || b == b'\n' {
                handle(&record, &mut copied);
                record.clear();
            } else {
                record.push(b);
            }
        }
    }
    handle(&record, &mut copied);
    let status = child.child_mut().wait().map_err(|e| tool(e.to_string()))?;
    if !status.success() {
        let words = last_words.join("; ");
        return Err(tool(format!("{words} ({status})")));
    }
    Ok(copied)
}

/// The directory a copy goes into: a sibling of `pg_data` (the same file
/// system, so the swap is a rename) named `<data>.<what>-<stamp>`.
pub(crate) fn sibling(pg_data: &Path, what: &str, stamp: &str) -> PathBuf {
    let mut name = pg_data.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{what}-{stamp}"));
    crate::fsutil::parent_dir(pg_data).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_progress_and_phases() {
        assert_eq!(
            parse("    0/30583 kB (0%), 0/1 tablespace (...data/global/pg_control)"),
            Some(Said::Progress {
                done: 0,
                total: 30583 * 1024
            })
        );
        assert_eq!(
            parse("30593/30593 kB (100%), 1/1 tablespace"),
            Some(Said::Progress {
                done: 30593 * 1024,
                total: 30593 * 1024
            })
        );
        let phases = [
            (
                "pg_basebackup: initiating base backup, waiting for checkpoint to complete",
                Phase::Checkpoint,
            ),
            ("pg_basebackup: checkpoint completed", Phase::Checkpoint),
            (
                "pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1",
                Phase::Copy,
            ),
            (
                "pg_basebackup: write-ahead log end point: 0/2000100",
                Phase::Wal,
            ),
            ("pg_basebackup: syncing data to disk ...", Phase::Sync),
        ];
        for (line, phase) in phases {
            assert_eq!(parse(line), Some(Said::Phase(phase)), "{line}");
        }
        assert_eq!(
            parse("pg_basebackup: error: connection to server failed"),
            Some(Said::Other(
                "pg_basebackup: error: connection to server failed".into()
            ))
        );
        assert_eq!(parse("   "), None);
        assert_eq!(
            parse("12/x kB"),
            Some(Said::Other("12/x kB".into())),
            "not a number: kept as words"
        );
    }

    #[test]
    fn siblings_sit_beside_the_data_directory() {
        assert_eq!(
            sibling(
                Path::new("/var/lib/postgresql/15/main"),
                "old",
                "20261201T120000Z"
            ),
            Path::new("/var/lib/postgresql/15").join("main.old-20261201T120000Z")
        );
    }
}
