//! `keyferry ha switchover|failover|guard|start|stop`: the options and the
//! printing. The work is `ops::ha::{switchover, failover, guard}`'s.

use std::time::Duration;

use clap::Args;

use super::print_json;
use crate::error::Result;
use crate::ops::ha::failover::{self, FailoverOptions};
use crate::ops::ha::guard;
use crate::ops::ha::switchover::{self, Mode, SwitchoverOptions};
use crate::ops::Home;

#[derive(Args, Debug)]
pub(crate) struct SwitchoverArgs {
    /// Finish an interrupted switchover.
    #[arg(long, conflicts_with = "abort")]
    resume: bool,
    /// Undo an interrupted switchover that had not promoted the replica.
    #[arg(long)]
    abort: bool,
    /// Refuse when the replica is further behind than this (B, KiB, MiB, GiB).
    #[arg(long, value_name = "SIZE", default_value = switchover::DEFAULT_MAX_LAG, value_parser = crate::fmt::parse_bytes)]
    max_lag: u64,
    /// Print what would be done; do nothing.
    #[arg(long)]
    dry_run: bool,
    /// Seconds to wait for the server's stop and start, the catch-up and the streaming.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    timeout: u64,
    #[command(flatten)]
    peer: super::ha::PeerArgs,
}

#[derive(Args, Debug)]
pub(crate) struct FailoverArgs {
    /// Promote even though the old primary may still accept writes (risks two primaries).
    #[arg(long)]
    force: bool,
    /// Print what would be done and what may be lost; do nothing.
    #[arg(long)]
    dry_run: bool,
    /// Finish an interrupted failover (its promotion was sent; it can only go forward).
    #[arg(long, conflicts_with_all = ["force", "dry_run"])]
    resume: bool,
    /// Seconds to wait for the promotion.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    #[command(flatten)]
    peer: super::ha::PeerArgs,
}

#[derive(Args, Debug)]
pub(crate) struct GuardArgs {
    /// Seconds to wait for the server's start or stop (`ha start`, `ha stop`).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    timeout: u64,
    /// You have checked that the peer's host is off (or its PostgreSQL stopped for good): start even though it gives no answer. Never overrides a peer that answers, nor a demoted node.
    #[arg(long)]
    peer_down: bool,
    #[command(flatten)]
    peer: super::ha::PeerArgs,
}

pub(crate) fn run_switchover(home: &Home, a: SwitchoverArgs) -> Result<()> {
    let mode = if a.resume {
        Mode::Resume
    } else if a.abort {
        Mode::Abort
    } else {
        Mode::Run
    };
    let opts = SwitchoverOptions {
        mode,
        password: a.peer.password.source(),
        max_lag: a.max_lag,
        dry_run: a.dry_run,
        connect_timeout: a.peer.connect_timeout(),
        timeout: Duration::from_secs(a.timeout),
    };
    let report = switchover::switchover(home, &opts, &mut crate::ops::progress::StepLines)?;
    if a.peer.json {
        return print_json(&report);
    }
    for line in switchover::summary(&report) {
        println!("{line}");
    }
    super::ha::not_audited_note(report.audited || report.dry_run);
    Ok(())
}

pub(crate) fn run_failover(home: &Home, a: FailoverArgs) -> Result<()> {
    let report = failover::failover(
        home,
        &FailoverOptions {
            password: a.peer.password.source(),
            force: a.force,
            dry_run: a.dry_run,
            resume: a.resume,
            connect_timeout: a.peer.connect_timeout(),
            timeout: Duration::from_secs(a.timeout),
        },
        &mut crate::ops::progress::StepLines,
    )?;
    if a.peer.json {
        return print_json(&report);
    }
    for line in failover::summary(&report) {
        println!("{line}");
    }
    super::ha::not_audited_note(report.audited || report.dry_run);
    Ok(())
}

fn print_guard(report: &guard::GuardReport, json: bool) -> Result<()> {
    if json {
        return print_json(report);
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    println!("ha guard: allowed: {}", report.reason);
    Ok(())
}

pub(crate) fn run_guard(home: &Home, a: GuardArgs) -> Result<()> {
    let report = guard::guard(
        home,
        a.peer.password.source().as_ref(),
        a.peer.connect_timeout(),
        a.peer_down,
    )?;
    print_guard(&report, a.peer.json)
}

pub(crate) fn run_start(home: &Home, a: GuardArgs) -> Result<()> {
    let report = guard::start(
        home,
        a.peer.password.source().as_ref(),
        a.peer.connect_timeout(),
        Duration::from_secs(a.timeout),
        a.peer_down,
    )?;
    print_guard(&report, a.peer.json)?;
    if !a.peer.json {
        println!("the local server runs");
    }
    Ok(())
}

pub(crate) fn run_stop(home: &Home, a: GuardArgs) -> Result<()> {
    guard::stop(home, Duration::from_secs(a.timeout))?;
    if !a.peer.json {
        println!("the local server is stopped");
    }
    Ok(())
}
