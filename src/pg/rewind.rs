//! `pg_rewind`: bringing a stopped old primary back onto the new primary's
//! timeline, and its `--dry-run`, which says whether that is possible and
//! where the two servers' histories diverged.
//!
//! Invariants: the password reaches the program only through the libpq
//! password file named in the source's connection string (never its
//! command line); the program is tied to keyferry ([`super::child`]) and
//! runs as the data directory's owner.

use std::path::Path;
use std::process::Stdio;

use super::child::{spawn_tied, tied_command};
use super::{one_line, prepare_program, Lsn, PgError};

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

/// Runs `pg_rewind` on the stopped data directory `target` from the server
/// `source` (a libpq connection string naming a password file).
pub(crate) fn run(
    pg_bin: &Path,
    target: &Path,
    source: &str,
    dry_run: bool,
    restore_target_wal: bool,
) -> Result<Rewind, PgError> {
    let program = super::program(pg_bin, "pg_rewind");
    let mut command = tied_command(&program);
    prepare_program(&mut command, Some(target));
    command
        .arg("-D")
        .arg(target)
        .arg(format!("--source-server={source}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if dry_run {
        command.arg("--dry-run");
    }
    if restore_target_wal {
        command.arg("--restore-target-wal");
    }
    let tool = |message: String| PgError::Tool {
        program: program.display().to_string(),
        message,
    };
    let mut child = spawn_tied(&mut command).map_err(|e| tool(e.to_string()))?;
    let child = child.child_mut();
    let (mut out, mut err) = (String::new(), String::new());
    {
        use std::io::Read;
        let mut stderr = child.stderr.take();
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
        err.push_str(&reader.join().unwrap_or_default());
    }
    let status = child.wait().map_err(|e| tool(e.to_string()))?;
    let said = format!("{out}\n{err}");
    tracing::debug!(said = %said, "pg_rewind");
    if !status.success() {
        let last: Vec<&str> = said
            .lines()
            .filter(|l| !l.trim().is_empty())
            .rev()
            .take(2)
            .collect();
        return Err(tool(format!(
            "{} ({status})",
            one_line(&last.into_iter().rev().collect::<Vec<_>>().join("; "))
        )));
    }
    parse(&said).ok_or_else(|| tool(format!("unexpected output: {}", one_line(&said))))
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
}
