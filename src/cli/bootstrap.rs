//! `keyferry ha bootstrap` and `keyferry ha rejoin`: the options and the
//! report (the progress display is [`super::progress`]'s). The work is
//! `ops::ha::bootstrap`'s and `ops::ha::rejoin`'s.

use std::time::Duration;

use clap::Args;

use super::print_json;
use super::progress::display;
use crate::error::Result;
use crate::ops::ha::bootstrap::{self, BootstrapOptions, BootstrapReport, Mode};
use crate::ops::ha::rejoin::{self, RejoinOptions};
use crate::ops::Home;

#[derive(Args, Debug)]
pub(crate) struct BootstrapArgs {
    /// Finish an interrupted bootstrap.
    #[arg(long, conflicts_with = "abort")]
    resume: bool,
    /// Undo an interrupted bootstrap: the node as it was before it.
    #[arg(long)]
    abort: bool,
    /// Replace a data directory that holds a primary's data without asking
    /// (it is moved aside, never deleted).
    #[arg(long)]
    yes: bool,
    /// Stream through this physical replication slot, created on the primary.
    #[arg(long, value_name = "NAME")]
    slot: Option<String>,
    /// Seconds to wait for the server's start and stop, and for the replica
    /// to catch up.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    timeout: u64,
    #[command(flatten)]
    peer: super::ha::PeerArgs,
}

#[derive(Args, Debug)]
pub(crate) struct RejoinArgs {
    /// Finish an interrupted rejoin from the phase it reached (or the
    /// bootstrap it handed over to).
    #[arg(long, conflicts_with_all = ["abort", "dry_run", "force", "slot"])]
    resume: bool,
    /// End an interrupted rejoin that had not run pg_rewind: its steps are
    /// undone; the server stays stopped and the node demoted.
    #[arg(long, conflicts_with_all = ["dry_run", "force", "slot"])]
    abort: bool,
    /// Print what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Rewind even when this node wrote WAL after the failover (those
    /// transactions are lost).
    #[arg(long)]
    force: bool,
    /// Stream through this physical replication slot on the new primary
    /// (created when missing).
    #[arg(long, value_name = "NAME")]
    slot: Option<String>,
    /// Seconds to wait for the server's start and stop, and for streaming.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    timeout: u64,
    #[command(flatten)]
    peer: super::ha::PeerArgs,
}

fn print_bootstrap(report: &BootstrapReport) -> Result<()> {
    for line in bootstrap::summary(report) {
        println!("{line}");
    }
    if let Some(status) = &report.status {
        println!();
        print!("{}", super::ha::render_status(status, false)?);
    }
    super::ha::not_audited_note(report.audited);
    Ok(())
}

pub(crate) fn run_rejoin(home: &Home, a: RejoinArgs) -> Result<()> {
    let mut display = display(true);
    let mode = if a.resume {
        Mode::Resume
    } else if a.abort {
        Mode::Abort
    } else {
        Mode::Run
    };
    let result = rejoin::rejoin(
        home,
        &RejoinOptions {
            mode,
            password: a.peer.password.source(),
            force: a.force,
            dry_run: a.dry_run,
            slot: a.slot,
            connect_timeout: a.peer.connect_timeout(),
            timeout: Duration::from_secs(a.timeout),
        },
        &mut display,
    );
    display.done_with_bar();
    let report = result?;
    if a.peer.json {
        return print_json(&report);
    }
    if report.dry_run {
        println!("ha rejoin would:");
        for (i, step) in report.plan.iter().enumerate() {
            println!("  {}. {step}", i + 1);
        }
        return Ok(());
    }
    if report.mode == "aborted" {
        println!(
            "the interrupted rejoin was ended at phase `{}`",
            rejoin::phase_name(report.phase)
        );
        for note in &report.notes {
            println!("note: {note}");
        }
        return Ok(());
    }
    if let Some(b) = &report.bootstrap {
        if let Some(commits) = report.lost_commits.filter(|c| *c > 0) {
            println!(
                "set aside with --force: {commits} committed transaction(s) this node wrote after the histories diverged ({}), kept in {}",
                report.lost_wal_range.as_deref().unwrap_or("?"),
                report
                    .set_aside
                    .as_ref()
                    .map_or("?".into(), |p| p.display().to_string())
            );
        }
        return print_bootstrap(b);
    }
    println!(
        "this node is a replica of the new primary again ({}{}{})",
        report.method,
        if report.crash_recovered {
            ", after crash recovery"
        } else {
            ""
        },
        report
            .diverged_at
            .as_deref()
            .map(|d| format!(", histories diverged at {d}"))
            .unwrap_or_default()
    );
    if let (Some(bytes), Some(range)) = (report.lost_wal_bytes, &report.lost_wal_range) {
        println!(
            "set aside: {} of this node's WAL ({range}){}",
            crate::fmt::human_bytes(bytes),
            match (report.lost_commits, report.lost_rows) {
                (Some(c), Some(r)) => format!(", {c} committed transaction(s), {r} row(s)"),
                _ => String::new(),
            }
        );
    }
    super::ha::not_audited_note(report.audited);
    Ok(())
}

pub(crate) fn run(home: &Home, a: BootstrapArgs) -> Result<()> {
    let mode = if a.resume {
        Mode::Resume
    } else if a.abort {
        Mode::Abort
    } else {
        Mode::Run
    };
    let mut display = display(a.yes);
    let result = bootstrap::bootstrap(
        home,
        &BootstrapOptions {
            mode,
            password: a.peer.password.source(),
            known_password: None,
            yes: a.yes,
            slot: a.slot,
            connect_timeout: a.peer.connect_timeout(),
            timeout: Duration::from_secs(a.timeout),
        },
        &mut display,
    );
    display.done_with_bar();
    let report = result?;
    if a.peer.json {
        return print_json(&report);
    }
    print_bootstrap(&report)
}
