//! Crash recovery of a stopped cluster that was not shut down cleanly (a
//! primary killed, or its machine lost power), in single-user mode, as
//! Patroni does before `pg_rewind`: `pg_rewind` works only on a cluster
//! shut down cleanly, and starting the server normally to get there would
//! make the demoted node a writable primary for a moment.
//!
//! Invariants: the server never listens (single-user mode opens no socket
//! and reads its one session from the null device, so it ends as soon as
//! recovery does); it runs as the data directory's owner, tied to
//! keyferry; archiving is on with a command that always fails, so the
//! checkpoints it writes keep every WAL segment (`pg_rewind` reads this
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

use super::child::tied_command;
use super::rewind::{last_lines, run_tied, RewindError};
use super::{controldata, prepare_program};

/// The cluster state `pg_controldata` shows after a clean shutdown.
pub(crate) const SHUT_DOWN: &str = "shut down";

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
    #[error("after crash recovery in single-user mode the cluster's state is \"{state}\", not \"shut down\"; the server said: {said}")]
    NotClean { state: String, said: String },
}

/// Runs crash recovery on the stopped data directory `data` (whose server
/// is not running) and checks that it ends shut down cleanly.
pub(crate) fn recover(pg_bin: &Path, data: &Path) -> Result<(), RecoveryError> {
    let program = super::program(pg_bin, "postgres");
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
    let syncfs = super::syncfs::usable(data);
    if syncfs {
        command.args(["-c", "recovery_init_sync_method=syncfs"]);
    }
    command.arg("template1");
    tracing::info!(syncfs, "postgres --single: crash recovery starts");
    let said = run_tied(&program, &mut command)?;
    let text = format!("{}\n{}", said.out, said.err);
    tracing::debug!(said = %text, status = %said.status, "postgres --single");
    tracing::info!(status = %said.status, "postgres --single ended");
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
