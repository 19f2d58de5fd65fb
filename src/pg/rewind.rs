//! `pg_rewind`: bringing a stopped old primary back onto the new primary's
//! timeline, and its `--dry-run`, which says whether that is possible and
//! where the two servers' histories diverged.
//!
//! Invariants: the password reaches the program only through the libpq
//! password file named in the source's connection string (never its
//! command line); the program is tied to keyferry ([`super::child`]) and
//! runs as the data directory's owner.
//!
//! Durability: a rewind is on stable storage when [`run`] returns `Ok`,
//! as when `pg_rewind` syncs the data directory itself. Where
//! [`super::syncfs::usable`] says so, `pg_rewind` runs with `--no-sync`
//! and keyferry then calls `syncfs` once on each file system of the data
//! directory, `pg_wal` and the tablespaces (opened before `pg_rewind`
//! starts) instead of `pg_rewind`'s `fsync` of every file: the same
//! files are covered, and a write-back error fails the rewind as a failed
//! `fsync` would. The sync is not left to the server's start, although
//! that start syncs the data directory again (the rewound cluster's state
//! is "in archive recovery", not a clean shutdown): between the two, a
//! power loss could keep the rewound control file and lose rewound data
//! blocks, and the next run would take the directory for a rewound one.
//! So [`run`] returns only once the rewind is durable, before the caller
//! records it done; the server's start with
//! `recovery_init_sync_method = syncfs` then costs one `syncfs` of file
//! systems with little left to write.

use std::path::Path;
use std::process::Stdio;

use super::child::{spawn_tied, tied_command};
use super::{one_line, prepare_program, Lsn};

/// What `pg_rewind` found (or did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rewind {
    /// The target is on the source's history already: it can simply follow.
    NotNeeded,
    /// The histories diverged here; a (dry) run rewinds from there.
    Diverged { at: Lsn, timeline: u32 },
}

/// Reads `pg_rewind`'s report: `servers diverged at WAL location X on
/// timeline N`, or `no rewind required`.
pub(crate) fn parse(output: &str) -> Option<Rewind> {
    if output.contains("no rewind required") {
        return Some(Rewind::NotNeeded);
    }
    let line = output
        .lines()
        .find(|l| l.contains("servers diverged at WAL location"))?;
    let rest = line
        .split("servers diverged at WAL location")
        .nth(1)?
        .trim();
    let (lsn, tail) = rest.split_once(' ')?;
    let timeline = tail
        .trim()
        .strip_prefix("on timeline")?
        .trim()
        .trim_end_matches('.')
        .parse()
        .ok()?;
    Some(Rewind::Diverged {
        at: Lsn::parse(lsn)?,
        timeline,
    })
}

/// Why `pg_rewind` (or another program of this module's family) did not
/// give an answer. Only [`RewindError::CannotRun`] is about `pg_bin`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RewindError {
    #[error("cannot run {program}: {message}; check pg_bin in ha.toml")]
    CannotRun { program: String, message: String },
    #[error("{program} failed: {said}")]
    Failed { program: String, said: String },
    #[error("{program} said something keyferry cannot read: {said}")]
    Unreadable { program: String, said: String },
    /// `pg_rewind --no-sync` ended well; the sync keyferry does instead
    /// failed, so the rewound files may not be on disk.
    #[error("{program} rewound {target} with --no-sync, and syncing its file systems to disk failed: {error}")]
    Unsynced {
        program: String,
        target: String,
        error: std::io::Error,
    },
}

impl RewindError {
    /// The program ran and refused or failed (exit status not 0): what it
    /// wrote may be anything from nothing to all but its last step.
    pub(crate) fn program_failed(&self) -> bool {
        matches!(self, RewindError::Failed { .. })
    }
}

/// What a tied program said: exit status, standard output and error.
pub(super) struct Said {
    pub status: std::process::ExitStatus,
    pub out: String,
    pub err: String,
}

/// Runs `command` (made by [`tied_command`]) tied to keyferry, its
/// standard input the null device, and collects both outputs.
pub(super) fn run_tied(
    program: &Path,
    command: &mut std::process::Command,
) -> Result<Said, RewindError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cannot = |e: std::io::Error| RewindError::CannotRun {
        program: program.display().to_string(),
        message: e.to_string(),
    };
    let mut child = spawn_tied(command).map_err(cannot)?;
    let child = child.child_mut();
    let mut out = String::new();
    {
        use std::io::Read;
        let mut stderr = child.stderr.take();
        // Both pipes are drained at once: a program that fills one while
        // keyferry waits on the other would never end.
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_string(&mut text);
            }
            text
        });
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        let err = reader.join().unwrap_or_default();
        let status = child.wait().map_err(cannot)?;
        Ok(Said { status, out, err })
    }
}

/// The last two non-empty lines of `text`, on one line.
pub(super) fn last_lines(text: &str) -> String {
    let last: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(2)
        .collect();
    one_line(&last.into_iter().rev().collect::<Vec<_>>().join("; "))
}

/// Runs `pg_rewind` on the stopped data directory `target` from the server
/// `source` (a libpq connection string naming a password file). A rewind
/// (not a dry run) is durable when this returns `Ok` (see the module's
/// documentation).
pub(crate) fn run(
    pg_bin: &Path,
    target: &Path,
    source: &str,
    dry_run: bool,
    restore_target_wal: bool,
) -> Result<Rewind, RewindError> {
    let program = super::program(pg_bin, "pg_rewind");
    let mut command = tied_command(&program);
    prepare_program(&mut command, Some(target));
    command
        .arg("-D")
        .arg(target)
        .arg(format!("--source-server={source}"));
    if dry_run {
        command.arg("--dry-run");
    }
    if restore_target_wal {
        command.arg("--restore-target-wal");
    }
    // Opened before pg_rewind writes (see the module's documentation);
    // when they cannot be opened, pg_rewind syncs as it always did.
    let file_systems = (!dry_run && super::syncfs::usable(target))
        .then(|| super::syncfs::FileSystems::open(target).ok())
        .flatten();
    if file_systems.is_some() {
        command.arg("--no-sync");
    }
    tracing::info!(
        dry_run,
        no_sync = file_systems.is_some(),
        "pg_rewind starts"
    );
    let said = run_tied(&program, &mut command)?;
    let text = format!("{}\n{}", said.out, said.err);
    tracing::debug!(said = %text, "pg_rewind");
    let program = program.display().to_string();
    if !said.status.success() {
        return Err(RewindError::Failed {
            program,
            said: format!("{} ({})", last_lines(&text), said.status),
        });
    }
    if let Some(mut file_systems) = file_systems {
        tracing::info!(target = %target.display(), "pg_rewind --no-sync ended; syncfs of the data directory's file systems");
        sync_rewound(target, &mut file_systems).map_err(|error| RewindError::Unsynced {
            program: program.clone(),
            target: target.display().to_string(),
            error,
        })?;
        tracing::info!("the rewound data directory is on stable storage");
    }
    parse(&text).ok_or_else(|| RewindError::Unreadable {
        program,
        said: one_line(&text),
    })
}

/// The sync `pg_rewind --no-sync` left out: the file systems opened
/// before it ran, and any it added (a tablespace copied from the source).
fn sync_rewound(
    target: &Path,
    file_systems: &mut super::syncfs::FileSystems,
) -> std::io::Result<()> {
    file_systems.merge(super::syncfs::FileSystems::open(target)?);
    file_systems.sync()
}

/// Where the old timeline `old` ends in the history file of the server's
/// current timeline (`history`: lines `parentTLI<TAB>switchpoint<TAB>reason`):
/// the point where the two histories diverged, if `old` is an ancestor.
pub(crate) fn switchpoint(history: &str, old: u32) -> Option<Lsn> {
    history.lines().find_map(|line| {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            return None;
        }
        let mut fields = line.split_whitespace();
        let parent: u32 = fields.next()?.parse().ok()?;
        let at = Lsn::parse(fields.next()?)?;
        (parent == old).then_some(at)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_where_the_histories_diverged() {
        let out = "pg_rewind: servers diverged at WAL location 0/3000148 on timeline 1\n\
                   pg_rewind: rewinding from last common checkpoint at 0/2000060 on timeline 1\n\
                   pg_rewind: Done!\n";
        assert_eq!(
            parse(out),
            Some(Rewind::Diverged {
                at: Lsn(0x3000148),
                timeline: 1
            })
        );
        assert_eq!(
            parse("pg_rewind: source and target cluster are on the same timeline\npg_rewind: no rewind required\n"),
            Some(Rewind::NotNeeded)
        );
        assert_eq!(parse("something else"), None);
    }

    #[test]
    fn the_switchpoint_of_the_old_timeline_is_read_from_the_history() {
        let history = "1\t0/5000148\tno recovery target specified\n\n2\t0/7000000\tno recovery target specified\n";
        assert_eq!(switchpoint(history, 1), Some(Lsn(0x5000148)));
        assert_eq!(switchpoint(history, 2), Some(Lsn(0x7000000)));
        assert_eq!(switchpoint(history, 3), None);
        assert_eq!(switchpoint("# comment\n", 1), None);
    }
}
