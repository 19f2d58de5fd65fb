//! Crash recovery of a stopped cluster that was not shut down cleanly (a
//! primary killed, or its machine lost power), in single-user mode, as
//! Patroni does before `pg_rewind`: `pg_rewind` works only on a cluster
//! shut down cleanly, and starting the server normally to get there would
//! make the demoted node a writable primary for a moment.
//!
//! Invariants: no one can use the server meanwhile: on Unix it never
//! listens (single-user mode opens no socket and reads its one session
//! from the null device, so it ends as soon as recovery does) and runs as
//! the data directory's owner, tied to keyferry; on Windows, where
//! single-user mode is refused to an administrator, `pg_ctl` starts it on
//! loopback behind a `pg_hba.conf` that rejects everyone and stops it at
//! once (see `platform`), its output in `<data>.keyferry-recovery.log`,
//! the server in a job object that dies with keyferry. Archiving is on
//! with a command that always fails, so the checkpoints it writes keep
//! every WAL segment (`pg_rewind` reads this
//! node's WAL from the last common checkpoint on, and nothing is archived
//! from a node that no longer owns the pair's history). The outcome is
//! judged by `pg_controldata`, never by the program's words.
//!
//! Where it goes: the server first syncs the whole data directory (it
//! cannot know what the crash left unwritten), then replays the WAL from
//! the last checkpoint, writes the end-of-recovery checkpoint and, as the
//! single-user session ends, the shutdown checkpoint `pg_rewind` needs.
//! The replay and the first checkpoint scale with what was written since
//! the last checkpoint before the crash; the second has almost nothing to
//! write. None of it can be left out: `pg_rewind` itself would run the
//! same single-user recovery, and a cluster that is not shut down cleanly
//! cannot be rewound. The initial sync is one `syncfs` per file system
//! (`recovery_init_sync_method = syncfs`) where [`super::syncfs::usable`]
//! says so, instead of an `fsync` per file: the same file systems (data
//! directory, `pg_wal`, tablespaces) are made durable before the replay
//! reads them.

use std::path::Path;

use super::controldata;
use super::rewind::{last_lines, RewindError};

/// The cluster state `pg_controldata` shows after a clean shutdown.
pub(crate) const SHUT_DOWN: &str = "shut down";

/// How the recovery runs here, for the operator's messages.
#[cfg(unix)]
pub(crate) const HOW: &str = "in single-user mode (no connections)";
#[cfg(windows)]
pub(crate) const HOW: &str = "on loopback, every connection rejected";

/// Whether a stopped cluster in `state` needs crash recovery before
/// `pg_rewind` may touch it: anything but a clean shutdown (as primary or
/// as a replica).
pub(crate) fn needs_recovery(state: &str) -> bool {
    state != SHUT_DOWN && state != "shut down in recovery"
}

/// Why the crash recovery did not leave a cleanly shut down cluster.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoveryError {
    #[error(transparent)]
    Program(#[from] RewindError),
    #[error("pg_controldata cannot read the data directory after crash recovery: {0}")]
    Unreadable(String),
    #[error("after crash recovery {HOW} the cluster's state is \"{state}\", not \"shut down\"; the server said: {said}")]
    NotClean { state: String, said: String },
}

/// Runs crash recovery on the stopped data directory `data` (whose server
/// is not running) and checks that it ends shut down cleanly.
pub(crate) fn recover(pg_bin: &Path, data: &Path) -> Result<(), RecoveryError> {
    let said = platform::run(pg_bin, data)?;
    let text = format!("{}\n{}", said.out, said.err);
    tracing::debug!(said = %text, status = %said.status, "crash recovery");
    tracing::info!(status = %said.status, "crash recovery ended");
    let control =
        controldata(pg_bin, data).map_err(|e| RecoveryError::Unreadable(e.to_string()))?;
    if control.state != SHUT_DOWN || !said.status.success() {
        return Err(RecoveryError::NotClean {
            state: control.state,
            said: format!("{} ({})", last_lines(&text), said.status),
        });
    }
    Ok(())
}

#[cfg(unix)]
mod platform {
    use std::path::Path;

    use super::super::child::tied_command;
    use super::super::prepare_program;
    use super::super::rewind::{run_tied, RewindError, Said};

    /// `postgres --single`: no socket at all.
    pub(super) fn run(pg_bin: &Path, data: &Path) -> Result<Said, RewindError> {
        let program = super::super::program(pg_bin, "postgres");
        let mut command = tied_command(&program);
        prepare_program(&mut command, Some(data));
        command
            .arg("--single")
            .arg("-D")
            .arg(data)
            .args(["-c", "archive_mode=on", "-c", "archive_command=false"])
            // A replica's settings must not turn the recovery into a standby
            // waiting for WAL that never comes.
            .args(["-c", "hot_standby=off"]);
        let syncfs = super::super::syncfs::usable(data);
        if syncfs {
            command.args(["-c", "recovery_init_sync_method=syncfs"]);
        }
        command.arg("template1");
        tracing::info!(syncfs, "postgres --single: crash recovery starts");
        run_tied(&program, &mut command)
    }
}

/// Windows: `postgres.exe` refuses to run under a token with
/// administrative rights, which keyferry has (it runs elevated), and only
/// PostgreSQL's own programs drop them (a restricted token) before they
/// start it: single-user mode is out of reach. So `pg_ctl` starts the
/// server for its recovery and stops it at once (fast: the shutdown
/// checkpoint `pg_rewind` needs), and no one can use it meanwhile: it
/// listens on loopback alone, on a port just found free, with a
/// `pg_hba.conf` of its own that rejects every connection; archiving is
/// on with a command that always fails and autovacuum off, as above.
#[cfg(windows)]
mod platform {
    use std::fs::File;
    use std::path::Path;
    use std::process::Stdio;

    use super::super::child::{spawn_tied, tied_command, TiedChild};
    use super::super::prepare_program;
    use super::super::rewind::{RewindError, Said};

    const REJECT_ALL: &str = "host all all 0.0.0.0/0 reject\r\nhost all all ::/0 reject\r\n";

    pub(super) fn run(pg_bin: &Path, data: &Path) -> Result<Said, RewindError> {
        let program = super::super::program(pg_bin, "pg_ctl");
        let name = program.display().to_string();
        let failed = |said: String| RewindError::Failed {
            program: name.clone(),
            said,
        };
        let beside = |suffix: &str| {
            let mut p = data.as_os_str().to_owned();
            p.push(suffix);
            std::path::PathBuf::from(p)
        };
        let hba = beside(".keyferry-recovery-hba.conf");
        let log = beside(".keyferry-recovery.log");
        std::fs::write(&hba, REJECT_ALL)
            .map_err(|e| failed(format!("cannot write {}: {e}", hba.display())))?;
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| failed(format!("no free loopback port: {e}")))?
            .port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c \"hba_file={}\" -c archive_mode=on -c \"archive_command=exit 1\" -c hot_standby=off -c autovacuum=off",
            hba.display()
        );
        // Never a pipe: the server inherits pg_ctl's output and keeps it.
        // Each pg_ctl runs in a job object that kills what is left in it
        // when keyferry lets go of it, or dies: the server `pg_ctl start`
        // leaves running is in the start's job, which is held until the
        // stop has ended, so a keyferry killed meanwhile takes the
        // recovery server with it (a crash the next run recovers from
        // again) instead of leaving it running behind the reject-all file.
        let pg_ctl = |args: &[&std::ffi::OsStr]| -> Result<(std::process::ExitStatus, TiedChild), RewindError> {
            let out = File::options()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| failed(format!("cannot open {}: {e}", log.display())))?;
            let err = out.try_clone().map_err(|e| failed(e.to_string()))?;
            let cannot = |e: std::io::Error| RewindError::CannotRun {
                program: name.clone(),
                message: e.to_string(),
            };
            let mut command = tied_command(&program);
            prepare_program(&mut command, Some(data));
            command
                .args(args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            let mut child = spawn_tied(&mut command).map_err(cannot)?;
            let status = child.child_mut().wait().map_err(cannot)?;
            Ok((status, child))
        };
        tracing::info!(
            port,
            "pg_ctl: crash recovery starts (loopback only, every connection rejected)"
        );
        let started = pg_ctl(&[
            "start".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            "3600".as_ref(),
            "-D".as_ref(),
            data.as_os_str(),
            "-o".as_ref(),
            options.as_ref(),
        ]);
        let stopped = pg_ctl(&[
            "stop".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            "3600".as_ref(),
            "-D".as_ref(),
            data.as_os_str(),
            "-m".as_ref(),
            "fast".as_ref(),
        ]);
        // Only now may the start's job close: the server has stopped.
        let (started, stopped) = (started.map(|(s, _job)| s), stopped.map(|(s, _job)| s));
        let _ = std::fs::remove_file(&hba);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let status = match (started?, stopped?) {
            (s, _) if !s.success() => s,
            (_, s) => s,
        };
        Ok(Said {
            status,
            out: text,
            err: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clean_shutdown_needs_no_recovery() {
        assert!(!needs_recovery("shut down"));
        assert!(!needs_recovery("shut down in recovery"));
        assert!(needs_recovery("in production"));
        assert!(needs_recovery("in crash recovery"));
        assert!(needs_recovery("shutting down"));
        assert!(needs_recovery("in archive recovery"));
    }
}
