//! `keyferry ha rejoin`: the old primary, after a failover, becomes a
//! replica of the new one — by `pg_rewind` when its prerequisites hold, else
//! by a fresh bootstrap (which keeps the old data directory aside).
//!
//! One held journaled change ([`crate::node::Node::begin_held`]) whose
//! phases ([`Phase`], one transition table) name where a run is:
//!
//! 1. checks that change nothing, before the change begins: `ha.toml` names
//!    this node the secondary (a node that lost its role), the primary it
//!    names runs as primary, and `pg_rewind`'s prerequisites:
//!    `wal_log_hints` or data checksums on this node's cluster,
//!    `full_page_writes` on the new primary (phase `checked`);
//! 2. stop the local server (`stopped`; never undone: a demoted node that
//!    stopped is in the safe state, and starting it again as a primary is
//!    what the start guard exists to prevent);
//! 3. the divergence (`measured`): where the new primary's timeline left
//!    this node's (its timeline history, read over the replication
//!    connection), and what this node's WAL holds after that point
//!    (`pg_waldump`: bytes, the LSN range, committed transactions and
//!    rows). When it committed transactions there, a rewind or a bootstrap
//!    sets them aside: only with `--force`, and the refusal says how much.
//!    Read only; a refusal ends the change (nothing to resume) and leaves
//!    the data directory as it was;
//! 4. a cluster that was not shut down cleanly (the primary was killed, or
//!    lost power) gets its crash recovery in single-user mode
//!    ([`crate::pg::recovery`]) (`recovered`): `pg_rewind` needs a clean
//!    shutdown, and a normal start would make the demoted node a writable
//!    primary;
//! 5. the replication password file (a step, undone by `--abort`);
//!    `pg_rewind --dry-run` only when step 3 could not tell where the
//!    histories diverged (it tells, and its failure still leaves the
//!    choice to the operator); this node's `postgresql.conf`, `pg_hba.conf`,
//!    `pg_ident.conf` and `postgresql.auto.conf` copied into the home's
//!    backups; the journal enters `rewound` — the point of no return —
//!    *before* `pg_rewind` runs (audited before and after, with
//!    `--restore-target-wal` when this node's configuration has a
//!    `restore_command`); the configuration files it overwrote put back
//!    from those copies;
//! 6. the standby configuration (as in bootstrap), start (`started`), wait
//!    until the new primary sees this node streaming (`streaming`), drop the
//!    slots it kept as primary, clear `demoted` in `ha.toml`, the audit
//!    record.
//!
//! `ha rejoin --resume` goes on from the journaled phase; every step is
//! safe to repeat (a stop or a start of a server already so, the crash
//! recovery only while the cluster still needs it, the put-back of the
//! configuration files). Resumed in `rewound`, it tells how far
//! `pg_rewind` got: not started (the journal says so) — it runs now;
//! finished (`pg_controldata` says `in archive recovery`, which only
//! `pg_rewind`'s last write sets on this stopped cluster) — the files are
//! put back; anything else — the data directory may be half rewritten,
//! which no second `pg_rewind` can be trusted with, so the rejoin becomes
//! a bootstrap (the directory kept aside, never deleted).
//!
//! `ha rejoin --abort` before `rewound` undoes the steps (the password
//! file) and ends the hold; the server stays stopped and `ha.toml` keeps
//! the node demoted (the stop is deliberately not undone). From `rewound`
//! on (`bootstrapping`, `started`, `streaming` too) it is refused (exit
//! 18): the data directory cannot be put back, only `--resume` goes on.
//!
//! The fallback to a bootstrap (a prerequisite missing, the dry run failed,
//! `pg_rewind` failed, or a `pg_rewind` that did not finish): the journal enters
//! `bootstrapping`, then the rejoin's change is finished (its audit record
//! says it handed over) and [`super::bootstrap`] runs as its own held
//! change — one journal per home, so the bootstrap cannot run inside the
//! rejoin's. An interrupted bootstrap is taken up by `ha bootstrap
//! --resume`/`--abort`, or by `ha rejoin --resume`, which hands it on. The
//! bootstrap refuses what the rewind refuses (step 3); a second audit
//! record names where the data directory was set aside.
//!
//! Invariants: the node is never started except as a standby of the new
//! primary; nothing is ever deleted; while the change is held every other
//! change on this home is refused (exit 16).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use super::bootstrap::{self, step_error, BootstrapOptions, BootstrapReport};
use super::steps::{
    self, owner_reference, passfile_path, primary_sql, wait_caught_up, write_passfile,
    write_standby, Pair,
};
use super::{require_config, roles};
use crate::error::{Error, Result};
use crate::fmt::human_bytes;
use crate::fsutil::{self, Staged};
use crate::ha::autoconf;
use crate::ha::config::HaConfig;
use crate::ha::datafile::{self, Kept};
use crate::ha::preflight::{self, Side};
use crate::ha::service::Server;
use crate::node::{file_stamp, now_unix, Change, HeldPhase, Home, Machine, Reopen};
use crate::ops::progress::Observer;
use crate::pg::rewind::{self, Rewind};
use crate::pg::waldump::{self, WalSummary};
use crate::pg::{self, recovery, Credentials, Lsn, PgError};
use crate::secret::PasswordSource;

pub(crate) use super::bootstrap::Mode;

/// The journal's name for a rejoin (and the audit record's action).
pub(crate) const ACTION: &str = "ha-rejoin";

/// A rejoin's context.
type Cx<'a> = Pair<'a, RejoinOptions>;
const RESUME: &str = "keyferry ha rejoin --resume";
const ABORT: &str = "keyferry ha rejoin --abort";

/// Files `pg_rewind` copies from the source that belong to this node.
const OWN_FILES: [&str; 4] = [
    "postgresql.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "postgresql.auto.conf",
];

/// `pg_controldata`'s state of a cluster `pg_rewind` has finished with
/// (its last write); a stopped, cleanly shut down primary never has it.
const REWOUND_STATE: &str = "in archive recovery";

/// Where a rejoin is (see the module documentation). Only
/// [`Change::advance`] moves it, along [`HeldPhase::TRANSITIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Phase {
    /// The checks ran; nothing changed (a stop may be under way).
    Checked,
    /// The local server is stopped (and stays so: it is demoted).
    Stopped,
    /// What this node wrote after the divergence is known and allowed
    /// (nothing committed there, or `--force`), or left to the dry run.
    Measured,
    /// Crash recovery in single-user mode ended in a clean shutdown.
    Recovered,
    /// `pg_rewind` runs or ran (irreversible): the point of no return.
    Rewound,
    /// Handed to a bootstrap, which sets the data directory aside.
    Bootstrapping,
    /// Configured as a standby of the new primary and started.
    Started,
    /// The new primary sees this node streaming.
    Streaming,
}

impl HeldPhase for Phase {
    const VERSION: u32 = 2;
    const TRANSITIONS: &'static [(Self, Self)] = &[
        (Phase::Checked, Phase::Stopped),
        (Phase::Stopped, Phase::Measured),
        (Phase::Measured, Phase::Recovered),
        (Phase::Measured, Phase::Rewound),
        (Phase::Recovered, Phase::Rewound),
        (Phase::Measured, Phase::Bootstrapping),
        (Phase::Recovered, Phase::Bootstrapping),
        // A pg_rewind that did not finish: only a copy can be trusted.
        (Phase::Rewound, Phase::Bootstrapping),
        // No rewind needed (the node stopped as a replica, or the dry run
        // found no divergence).
        (Phase::Measured, Phase::Started),
        (Phase::Recovered, Phase::Started),
        (Phase::Rewound, Phase::Started),
        (Phase::Started, Phase::Streaming),
    ];
    fn no_return(self) -> bool {
        matches!(
            self,
            Phase::Rewound | Phase::Bootstrapping | Phase::Started | Phase::Streaming
        )
    }
    fn name(self) -> &'static str {
        match self {
            Phase::Checked => "checked",
            Phase::Stopped => "stopped",
            Phase::Measured => "measured",
            Phase::Recovered => "recovered",
            Phase::Rewound => "rewound",
            Phase::Bootstrapping => "bootstrapping",
            Phase::Started => "started",
            Phase::Streaming => "streaming",
        }
    }
}

/// The phase as the operator reads it.
pub(crate) fn phase_name(phase: Phase) -> &'static str {
    phase.name()
}

/// How this node becomes a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Method {
    Rewind,
    /// It stopped as a replica, or the dry run found no divergence.
    Follow,
    Bootstrap,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Rewind => "rewind",
            Method::Follow => "follow",
            Method::Bootstrap => "bootstrap",
        }
    }
}

/// What this node wrote after the divergence, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Weighed {
    at: u64,
    timeline: u32,
    end: u64,
    commits: Option<u64>,
    rows: Option<u64>,
}

impl Weighed {
    fn of(d: &Divergence) -> Self {
        Self {
            at: d.at.0,
            timeline: d.timeline,
            end: d.end.0,
            commits: d.summary.as_ref().map(|s| s.commits),
            rows: d.summary.as_ref().map(|s| s.rows),
        }
    }

    fn divergence(&self) -> Divergence {
        Divergence {
            at: Lsn(self.at),
            timeline: self.timeline,
            end: Lsn(self.end),
            summary: self.commits.map(|commits| WalSummary {
                end: Some(Lsn(self.end)),
                records: 0,
                commits,
                rows: self.rows.unwrap_or(0),
            }),
        }
    }
}

/// One of this node's configuration files as it was before `pg_rewind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum OwnFile {
    /// There was none.
    Absent,
    /// Its copy in the home's backups (owner-only: it may hold anything).
    Copy(PathBuf),
    /// A link, pointing there.
    Link(PathBuf),
}

/// What a rejoin keeps in the journal besides its phase (no secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Facts {
    method: Method,
    /// Why `pg_rewind` cannot be used, when it cannot.
    why_bootstrap: Option<String>,
    was_replica: bool,
    /// The server had not shut down cleanly when the rejoin began.
    crashed: bool,
    force: bool,
    slot: Option<String>,
    weighed: Option<Weighed>,
    crash_recovered: bool,
    own: Vec<(String, OwnFile)>,
    /// `pg_rewind` was (about to be) started: a resumed run must find out
    /// whether it finished.
    rewind_started: bool,
    /// `pg_rewind` finished and this node's files are back.
    rewound: bool,
}

type State = Machine<Phase, Facts>;

/// What `ha rejoin` was given.
#[derive(Debug, Clone)]
pub(crate) struct RejoinOptions {
    pub mode: Mode,
    pub password: Option<PasswordSource>,
    /// Rewind (or bootstrap) even when this node committed transactions
    /// after the histories diverged.
    pub force: bool,
    /// Print the plan; change nothing.
    pub dry_run: bool,
    pub slot: Option<String>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

/// How a rejoin went (or would go).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RejoinReport {
    /// `rejoined`, `resumed`, `aborted` or `dry-run`.
    pub mode: &'static str,
    pub dry_run: bool,
    /// What it does, in order.
    pub plan: Vec<String>,
    /// `rewind`, `follow` (no rewind needed) or `bootstrap`.
    pub method: &'static str,
    pub diverged_at: Option<String>,
    /// WAL this node wrote after the divergence, set aside by the rewind
    /// or the bootstrap.
    pub lost_wal_bytes: Option<u64>,
    /// The LSN range of that WAL.
    pub lost_wal_range: Option<String>,
    /// Transactions committed, and rows they changed, in that WAL (when
    /// `pg_waldump` could read it).
    pub lost_commits: Option<u64>,
    pub lost_rows: Option<u64>,
    /// Whether crash recovery ran (the server had not shut down cleanly).
    pub crash_recovered: bool,
    /// Where a bootstrap set the data directory aside.
    pub set_aside: Option<PathBuf>,
    pub bootstrap: Option<BootstrapReport>,
    pub phase: Phase,
    pub notes: Vec<String>,
    pub audited: bool,
}

/// What this node's WAL holds after the point where the histories
/// diverged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Divergence {
    pub at: Lsn,
    pub timeline: u32,
    /// The end of this node's WAL.
    pub end: Lsn,
    /// What `pg_waldump` read there, if it could.
    pub summary: Option<WalSummary>,
}

impl Divergence {
    pub(crate) fn bytes(&self) -> u64 {
        self.end.0.saturating_sub(self.at.0)
    }

    /// Whether rewinding or replacing this node sets aside work a client
    /// was told is done: a commit after the divergence; without a summary,
    /// any WAL at all.
    pub(crate) fn loses_commits(&self) -> bool {
        match &self.summary {
            Some(s) => s.commits > 0,
            None => self.bytes() > 0,
        }
    }

    /// "12.0 KiB of WAL after the histories diverged (0/3000148 to
    /// 0/3003148 on timeline 1): 1 committed transaction(s), 1000 row(s)".
    pub(crate) fn describe(&self) -> String {
        let what = match &self.summary {
            Some(s) => format!(
                ": {} committed transaction(s) changing {} row(s)",
                s.commits, s.rows
            ),
            None => String::new(),
        };
        format!(
            "{} of WAL after the histories diverged ({} to {} on timeline {}){what}",
            human_bytes(self.bytes()),
            self.at,
            self.end,
            self.timeline
        )
    }

    fn record(&self, report: &mut RejoinReport) {
        report.diverged_at = Some(format!("{} on timeline {}", self.at, self.timeline));
        report.lost_wal_bytes = Some(self.bytes());
        report.lost_wal_range = Some(format!("{}..{}", self.at, self.end));
        report.lost_commits = self.summary.as_ref().map(|s| s.commits);
        report.lost_rows = self.summary.as_ref().map(|s| s.rows);
    }
}

/// The refusal of a rejoin that would set aside committed work.
fn diverged_refusal(d: &Divergence, method: &str) -> Error {
    let instead = if method == "bootstrap" {
        "`keyferry ha rejoin --force` bootstraps anyway and keeps this data directory aside as a .old- directory (recorded in the audit log)"
    } else {
        "`keyferry ha rejoin --force` rewinds anyway; `keyferry ha bootstrap` instead keeps this data directory aside"
    };
    Error::Refused(format!(
        "this node wrote {}: a {method} sets those transactions aside. The server stays stopped and its data directory unchanged. {instead}",
        d.describe()
    ))
}

/// Why `pg_rewind` cannot be used, if it cannot.
fn rewind_impossible(control: Option<&pg::ControlData>, full_page_writes: bool) -> Option<String> {
    let Some(control) = control else {
        return Some("this node has no data directory to rewind".into());
    };
    if !control.wal_log_hints && !control.checksums {
        return Some(
            "this node's cluster has neither wal_log_hints = on nor data checksums".into(),
        );
    }
    if !full_page_writes {
        return Some("the new primary runs with full_page_writes = off".into());
    }
    None
}

/// A cluster that stopped as a replica (after a switchover) wrote nothing
/// of its own. ("in crash recovery" is a primary that crashed again.)
fn stopped_as_replica(state: &str) -> bool {
    state == "shut down in recovery" || state == "in archive recovery"
}

/// Runs (or, with `dry_run`, plans), resumes or aborts a rejoin.
pub(crate) fn rejoin(
    home: &Home,
    opts: &RejoinOptions,
    obs: &mut dyn Observer,
) -> Result<RejoinReport> {
    match opts.mode {
        Mode::Run => fresh(home, opts, obs),
        Mode::Resume => resume(home, opts, obs),
        Mode::Abort => abort(home, opts, obs),
    }
}

fn nothing_interrupted() -> Error {
    Error::Usage(
        "there is no interrupted rejoin on this node: run `keyferry ha rejoin` to start one".into(),
    )
}

fn report_base(mode: &'static str, facts: &Facts, phase: Phase) -> RejoinReport {
    let mut report = RejoinReport {
        mode,
        dry_run: false,
        plan: Vec::new(),
        method: facts.method.as_str(),
        diverged_at: None,
        lost_wal_bytes: None,
        lost_wal_range: None,
        lost_commits: None,
        lost_rows: None,
        crash_recovered: facts.crash_recovered,
        set_aside: None,
        bootstrap: None,
        phase,
        notes: Vec::new(),
        audited: false,
    };
    if let Some(w) = &facts.weighed {
        w.divergence().record(&mut report);
    }
    report
}

fn fresh(home: &Home, opts: &RejoinOptions, obs: &mut dyn Observer) -> Result<RejoinReport> {
    let config = require_config(home)?;
    let password = bootstrap::password(&config, opts.password.as_ref())?;
    // After a failover elsewhere, this node's ha.toml learns the new roles
    // from the pair's generation record first.
    let creds = Credentials::Given(Zeroizing::new(password.as_bytes().to_vec()));
    let (config, note) = roles::sync(home, config, &creds, opts.connect_timeout)?;
    if let Some(note) = note {
        obs.step(&format!("note: {note}"));
    }
    match preflight::this_node(&config).0 {
        Some(Side::Secondary) => {}
        _ => {
            return Err(Error::Refused(format!(
                "ha.toml does not name this machine the secondary ({}): rejoin runs on the node that lost the primary role; after a failover run `keyferry ha status` here to bring ha.toml up to date, or fix it",
                config.secondary
            )))
        }
    }
    let full_page_writes = new_primary(
        &config,
        &password,
        opts.slot.as_deref(),
        opts.connect_timeout,
    )?;
    let server = Server::of(&config, opts.timeout);
    let has_cluster = config.pg_data.join("PG_VERSION").exists();
    let control = if has_cluster {
        Some(
            pg::controldata(&config.pg_bin, &config.pg_data).map_err(|e| {
                step_error(
                    "reading this node's data directory",
                    e.to_string(),
                    "check pg_bin and pg_data in ha.toml",
                )
            })?,
        )
    } else {
        None
    };
    let running = server.is_running().map_err(|e| {
        step_error(
            "reading the local server's state",
            e.to_string(),
            "check pg_bin and pg_data in ha.toml",
        )
    })?;
    let was_replica = control
        .as_ref()
        .is_some_and(|c| stopped_as_replica(&c.state));
    let crashed = !running
        && !was_replica
        && control
            .as_ref()
            .is_some_and(|c| recovery::needs_recovery(&c.state));
    let impossible = if was_replica {
        None
    } else {
        rewind_impossible(control.as_ref(), full_page_writes)
    };
    let facts = Facts {
        method: match (&impossible, was_replica) {
            (Some(_), _) => Method::Bootstrap,
            (None, true) => Method::Follow,
            (None, false) => Method::Rewind,
        },
        why_bootstrap: impossible.clone(),
        was_replica,
        crashed,
        force: opts.force,
        slot: opts.slot.clone(),
        weighed: None,
        crash_recovered: false,
        own: Vec::new(),
        rewind_started: false,
        rewound: false,
    };
    let mut report = report_base("rejoined", &facts, Phase::Checked);
    report.dry_run = opts.dry_run;
    if running {
        report.plan.push("stop the local server".into());
    }
    if has_cluster && !was_replica {
        report.plan.push(format!(
            "read where {}'s timeline left this node's and what this node wrote after that (pg_waldump); if it committed transactions there, stop unless --force",
            config.primary
        ));
    }
    match &impossible {
        Some(why) => report.plan.push(format!(
            "pg_rewind cannot be used: {why}; instead a fresh bootstrap from {} (the data directory is kept beside it as .old-<time>, recorded in the audit log)",
            config.primary
        )),
        None if was_replica => {
            report.plan.push(
                "this node was a replica when it stopped: it follows the new primary without pg_rewind".into(),
            );
            report.plan.push(standby_plan(&config));
        }
        None => {
            if crashed {
                report.plan.push(format!(
                    "the server was not shut down cleanly (cluster state: {}): its crash recovery {}, which must end \"shut down\"",
                    control.as_ref().map_or("", |c| c.state.as_str()),
                    recovery::HOW
                ));
            }
            report.plan.push(format!(
                "pg_rewind --dry-run from {}: where the histories diverged",
                config.primary
            ));
            report.plan.push(
                "pg_rewind, keeping this node's postgresql.conf, pg_hba.conf, pg_ident.conf and postgresql.auto.conf".into(),
            );
            report.plan.push(standby_plan(&config));
        }
    }
    if opts.dry_run {
        report.mode = "dry-run";
        if !running && has_cluster && !was_replica {
            // Read only, and the server is stopped: the plan can say it.
            if let Ok(Some(d)) = divergence(&config, &password, control.as_ref(), opts) {
                d.record(&mut report);
                report.plan.push(format!(
                    "this node holds {}{}",
                    d.describe(),
                    if d.loses_commits() && !opts.force {
                        ": refused without --force"
                    } else {
                        ""
                    }
                ));
            }
        }
        return Ok(report);
    }
    let mut node = home.open(false)?;
    let mut change = node.begin_held(
        ACTION,
        details(&config, &facts, Phase::Checked, &report),
        RESUME,
        ABORT,
    )?;
    let state = State::new(Phase::Checked, facts);
    change.save(&state)?;
    let flow = drive(
        &Pair::new(home, config.clone(), opts.timeout, opts),
        obs,
        change,
        &password,
        state,
        report,
    )?;
    drop(node);
    hand_over(home, &config, opts, &password, flow, obs)
}

/// `ha rejoin --resume`: on from the journaled phase; or, when the rejoin
/// had handed over to a bootstrap that was interrupted, that bootstrap's
/// `--resume`.
fn resume(home: &Home, opts: &RejoinOptions, obs: &mut dyn Observer) -> Result<RejoinReport> {
    let config = require_config(home)?;
    let password = bootstrap::password(&config, opts.password.as_ref())?;
    let mut node = home.open(false)?;
    let Some(change) = node.reopen_held(ACTION, Reopen::Resume)? else {
        let Some(boot) = node.reopen_held(bootstrap::ACTION, Reopen::Resume)? else {
            return Err(nothing_interrupted());
        };
        boot.suspend();
        drop(node);
        obs.step("the rejoin had handed over to a bootstrap, which was interrupted: resuming it");
        let done = bootstrap::bootstrap(home, &handed_over(opts, &password, Mode::Resume), obs)?;
        let mut report = RejoinReport {
            set_aside: done.old_data.clone(),
            audited: done.audited,
            ..report_base("resumed", &bootstrap_facts(opts), Phase::Streaming)
        };
        report.bootstrap = Some(done);
        return Ok(report);
    };
    let state: State = change.load()?;
    obs.step(&format!(
        "resuming the interrupted rejoin from its phase `{}`",
        state.phase().name()
    ));
    let report = report_base("resumed", &state.data, state.phase());
    let flow = drive(
        &Pair::new(home, config.clone(), opts.timeout, opts),
        obs,
        change,
        &password,
        state,
        report,
    )?;
    drop(node);
    hand_over(home, &config, opts, &password, flow, obs)
}

/// What a rejoin that only resumed a bootstrap knows of itself.
fn bootstrap_facts(opts: &RejoinOptions) -> Facts {
    Facts {
        method: Method::Bootstrap,
        why_bootstrap: None,
        was_replica: false,
        crashed: false,
        force: opts.force,
        slot: opts.slot.clone(),
        weighed: None,
        crash_recovered: false,
        own: Vec::new(),
        rewind_started: false,
        rewound: false,
    }
}

/// `ha rejoin --abort`: before the point of no return, undoes the steps
/// and ends the hold; the stop is not undone.
fn abort(home: &Home, opts: &RejoinOptions, obs: &mut dyn Observer) -> Result<RejoinReport> {
    let config = require_config(home)?;
    let mut node = home.open(false)?;
    let Some(change) = node.reopen_held(ACTION, Reopen::Abort)? else {
        if let Some(boot) = node.reopen_held(bootstrap::ACTION, Reopen::Resume)? {
            boot.suspend();
            return Err(Error::Usage(
                "the rejoin had handed over to a bootstrap, which was interrupted: `keyferry ha bootstrap --abort` undoes that (the old data directory back in place, the server stopped), `keyferry ha rejoin --resume` finishes it".into(),
            ));
        }
        return Err(nothing_interrupted());
    };
    let state: State = change.load()?;
    let phase = state.phase();
    if phase.no_return() {
        change.suspend();
        return Err(Error::InDoubt(format!(
            "the interrupted rejoin cannot be undone: it is at phase `{}`, past its point of no return ({}); finish it with `{RESUME}`",
            phase.name(),
            past_no_return(phase)
        )));
    }
    obs.step("ending the interrupted rejoin: undoing its steps");
    change.abort()?;
    // Killed while the stop was under way, the old primary may still run
    // (as a primary, beside the new one): stopped is the state an abort
    // leaves, whatever the phase.
    Server::of(&config, opts.timeout).stop().map_err(|e| {
        step_error(
            "stopping the local server",
            e.to_string(),
            "the rejoin was ended; stop the server by hand (`keyferry ha stop`)",
        )
    })?;
    let mut report = report_base("aborted", &state.data, phase);
    report.notes.push(
        "the local server stays stopped and ha.toml keeps this node demoted: the stop is deliberately not undone (started again it would be a primary beside the new one); `keyferry ha rejoin` starts over".into(),
    );
    Ok(report)
}

/// What is past the point of no return in `phase`.
fn past_no_return(phase: Phase) -> &'static str {
    match phase {
        Phase::Rewound => "pg_rewind has run, or may have, on this data directory",
        Phase::Bootstrapping => {
            "the data directory is to be replaced by a bootstrap, which keeps it aside"
        }
        _ => "this node was started as a replica of the new primary",
    }
}

/// Where [`drive`] left the rejoin.
enum Flow {
    /// Streaming; the change is finished.
    Done(RejoinReport),
    /// Handed over: the change is finished at `bootstrapping`; the
    /// bootstrap is left to run.
    Bootstrap(RejoinReport),
}

/// Why [`advance`] stopped short.
enum Stop {
    /// A decision (committed work would be set aside): the change ends,
    /// nothing to resume.
    Refused(Error),
    /// A step failed: the change is held for `--resume`.
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

/// Moves a rejoin from its phase to its end (or to the handover), then
/// finishes the change; a failure keeps the journal and says how to go on.
fn drive(
    cx: &Cx<'_>,
    obs: &mut dyn Observer,
    mut change: Change<'_>,
    password: &Zeroizing<String>,
    mut state: State,
    mut report: RejoinReport,
) -> Result<Flow> {
    let (home, config) = (cx.home, &cx.config);
    let outcome = advance(cx, obs, &mut change, password, &mut state, &mut report);
    report.phase = state.phase();
    report.method = state.data.method.as_str();
    report.crash_recovered = state.data.crash_recovered;
    match outcome {
        Ok(()) => {
            for (k, v) in details(config, &state.data, state.phase(), &report) {
                change.set_detail(&k, v);
            }
            let handover = state.phase() == Phase::Bootstrapping;
            if handover {
                change.set_detail("handed_to", Value::from(bootstrap::ACTION));
            }
            let phase = state.phase();
            report.audited = change
                .finish()
                .map_err(|e| held_error(home, phase, e))?
                .audited;
            if handover {
                return Ok(Flow::Bootstrap(report));
            }
            forget_own(&state.data.own);
            Ok(Flow::Done(report))
        }
        Err(Stop::Refused(e)) => {
            // Only the weighing refuses, before the point of no return:
            // its undo is the password file's at most.
            change.abort()?;
            Err(e)
        }
        Err(Stop::Failed(e)) => {
            change.suspend();
            Err(held_error(home, state.phase(), e))
        }
    }
}

/// A failure in `phase`, with the way on: the journal kept (held, or past
/// the point of no return), or — a journaled step that failed before it
/// undid every step and ended the change — as it is.
fn held_error(home: &Home, phase: Phase, e: Error) -> Error {
    if !home.journal_path().exists() {
        return e;
    }
    if phase.no_return() {
        Error::InDoubt(format!(
            "{e}; the rejoin is at phase `{}`, past its point of no return ({}): this node stays demoted; fix the cause, then finish it with `{RESUME}`",
            phase.name(),
            past_no_return(phase)
        ))
    } else {
        Error::Held(format!(
            "{e}; the rejoin is held at phase `{}`: this node's server stays stopped and ha.toml keeps it demoted; fix the cause, then `{RESUME}` goes on from there, or `{ABORT}` ends it",
            phase.name()
        ))
    }
}

/// Every phase from `state`'s on, in order; see the module documentation.
fn advance(
    cx: &Cx<'_>,
    obs: &mut dyn Observer,
    change: &mut Change<'_>,
    password: &Zeroizing<String>,
    state: &mut State,
    report: &mut RejoinReport,
) -> std::result::Result<(), Stop> {
    let (home, config, server, opts) = (cx.home, &cx.config, &cx.server, cx.opts);
    if state.phase() == Phase::Checked {
        if server.is_running().unwrap_or(true) {
            obs.step("stopping the local server");
        }
        server.stop().map_err(|e| {
            step_error(
                "stopping the local server",
                e.to_string(),
                "stop it by hand, then run `keyferry ha rejoin --resume`",
            )
        })?;
        change.advance(state, Phase::Stopped)?;
    }
    if state.phase() == Phase::Stopped {
        weigh(config, password, opts, state, report, obs)?;
        change.advance(state, Phase::Measured)?;
    }
    if state.phase() == Phase::Measured
        && state.data.crashed
        && state.data.method != Method::Bootstrap
    {
        // Run again only while the cluster still needs it: a recovery
        // that finished wrote its shutdown checkpoint already.
        let unclean = pg::controldata(&config.pg_bin, &config.pg_data)
            .map(|c| recovery::needs_recovery(&c.state))
            .unwrap_or(true);
        if unclean {
            obs.step(&format!(
                "crash recovery {} (the server was not shut down cleanly)",
                recovery::HOW
            ));
            recovery::recover(&config.pg_bin, &config.pg_data).map_err(|e| {
                step_error(
                    &format!("crash recovery {}", recovery::HOW),
                    e.to_string(),
                    "read the message (the server's log says more), fix the cause, then run `keyferry ha rejoin --resume`",
                )
            })?;
        }
        state.data.crash_recovered = true;
        report.crash_recovered = true;
        change.advance(state, Phase::Recovered)?;
    }
    if matches!(state.phase(), Phase::Measured | Phase::Recovered) {
        if state.data.method != Method::Bootstrap {
            write_passfile(
                change,
                config,
                config.primary,
                password,
                &owner_reference(config),
            )?;
        }
        if state.data.method == Method::Rewind {
            rewind_step(cx, obs, change, password, state, report)?;
        }
    }
    if state.phase() == Phase::Rewound && !state.data.rewound {
        if state.data.rewind_started {
            finish_interrupted_rewind(config, state, obs)?;
            change.save(state)?;
        } else {
            // Killed between the journal's `rewound` and pg_rewind's start.
            rewind_step(cx, obs, change, password, state, report)?;
        }
    }
    if state.data.method == Method::Bootstrap {
        if let Some(why) = &state.data.why_bootstrap {
            obs.step(&format!(
                "pg_rewind cannot be used ({why}): bootstrapping instead"
            ));
        }
        if state.phase() != Phase::Bootstrapping {
            change.advance(state, Phase::Bootstrapping)?;
        }
        return Ok(());
    }
    if matches!(
        state.phase(),
        Phase::Measured | Phase::Recovered | Phase::Rewound
    ) {
        obs.step("configuring this node as a replica of the new primary");
        if let Some(slot) = &state.data.slot {
            bootstrap::ensure_slot(config, password, slot, opts.connect_timeout)?;
        }
        let data = steps::open_data(&config.pg_data, None)?;
        write_standby(config, &data, config.primary, state.data.slot.as_deref())?;
        obs.step("starting the replica");
        // A rewound cluster is "in archive recovery": its start syncs the
        // whole data directory first, once per file system where it can.
        steps::start_step(
            change,
            &server.clone().syncing_by_file_system(),
            "read the server's log, fix the cause, then run `keyferry ha rejoin --resume`",
        )?;
        change.advance(state, Phase::Started)?;
    }
    if state.phase() == Phase::Started {
        // Resumed after a failure here: the replica may have been stopped
        // since; starting a standby is safe.
        server.start().map_err(|e| {
            step_error(
                "starting the replica",
                e.to_string(),
                "read the server's log, fix the cause, then run `keyferry ha rejoin --resume`",
            )
        })?;
        obs.step("waiting until the new primary sees this node streaming");
        let caught_up = wait_caught_up(config, password, opts.connect_timeout, opts.timeout)?;
        change.set_detail("caught_up_to", caught_up);
        change.advance(state, Phase::Streaming)?;
    }
    let dropped = drop_stale_slots(config, opts.connect_timeout);
    if !dropped.is_empty() {
        obs.step(&format!(
            "dropped the replication slots this node kept as primary (they would retain WAL for nobody): {}",
            dropped.join(", ")
        ));
    }
    roles::clear_demoted(change, home, config)?;
    Ok(())
}

/// Step 3: what this node wrote after the divergence, weighed. Read only.
fn weigh(
    config: &HaConfig,
    password: &Zeroizing<String>,
    opts: &RejoinOptions,
    state: &mut State,
    report: &mut RejoinReport,
    obs: &mut dyn Observer,
) -> std::result::Result<(), Stop> {
    let facts = &mut state.data;
    if facts.was_replica || !config.pg_data.join("PG_VERSION").exists() {
        return Ok(());
    }
    let control = pg::controldata(&config.pg_bin, &config.pg_data).ok();
    obs.step("reading what this node wrote after the histories diverged");
    match divergence(config, password, control.as_ref(), opts) {
        Ok(Some(d)) => {
            d.record(report);
            if d.loses_commits() && !facts.force {
                return Err(Stop::Refused(diverged_refusal(&d, facts.method.as_str())));
            }
            obs.step(&format!("this node holds {}", d.describe()));
            facts.weighed = Some(Weighed::of(&d));
        }
        Ok(None) => {}
        Err(why) if facts.method == Method::Bootstrap && !facts.force => {
            // The bootstrap has no dry run of its own to tell.
            return Err(Stop::Refused(Error::Refused(format!(
                "cannot tell whether this node committed transactions after the histories diverged ({why}): a bootstrap would set them aside. The server stays stopped and its data directory unchanged. `keyferry ha rejoin --force` bootstraps anyway and keeps this data directory aside as a .old- directory (recorded in the audit log)"
            ))));
        }
        Err(why) => obs.step(&format!("note: {why}")),
    }
    Ok(())
}

/// Step 5: the dry run where it is needed, the weighing it allows, the
/// point of no return, `pg_rewind`, the put-back. Sets the method to
/// `bootstrap` when `pg_rewind` cannot be used and to `follow` when it
/// finds no divergence. Run in `measured`/`recovered`, or resumed in
/// `rewound` before `pg_rewind` started (then nothing is refused: it was
/// weighed before).
///
/// The dry run (a whole extra pass of `pg_rewind` over both servers' files)
/// runs only when the weighing could not tell where the histories forked:
/// then it gives the fork, and a failure there still leaves the choice to
/// the operator. When the fork is known from the new primary's timeline
/// history, the real run goes first; if it fails, whether before writing
/// or half way, the data directory is only worth what was weighed before
/// the point of no return, and the bootstrap sets it aside (never deletes
/// it) as a failed dry run's would.
fn rewind_step(
    cx: &Cx<'_>,
    obs: &mut dyn Observer,
    change: &mut Change<'_>,
    password: &Zeroizing<String>,
    state: &mut State,
    report: &mut RejoinReport,
) -> std::result::Result<(), Stop> {
    let (home, config, opts) = (cx.home, &cx.config, cx.opts);
    let past = state.phase().no_return();
    let source = source_conninfo(config);
    let restore = has_restore_command(&config.pg_data);
    wait_source_checkpoint(config, password, opts, obs)?;
    let d = match state.data.weighed.as_ref().map(Weighed::divergence) {
        Some(d) => d,
        None => match dry_run(config, &source, restore, past, state, obs)? {
            Some(d) => d,
            None => return Ok(()),
        },
    };
    d.record(report);
    if !past && d.loses_commits() && !state.data.force {
        return Err(Stop::Refused(diverged_refusal(&d, "rewind")));
    }
    state.data.weighed = Some(Weighed::of(&d));
    // Read (and kept aside) through a descriptor: pg_rewind rewrites the
    // files, not the directory, so the put-back through the same kind of
    // descriptor refuses a directory the server's account swapped in.
    let data = steps::open_data(&config.pg_data, None)?;
    state.data.own = keep_own(home, &data)?;
    obs.step(&format!(
        "pg_rewind from {} (diverged at {})",
        config.primary, d.at
    ));
    if !past {
        change.advance(state, Phase::Rewound)?;
    }
    state.data.rewind_started = true;
    change.save(state)?;
    for (k, v) in details(config, &state.data, state.phase(), report) {
        change.set_detail(&k, v);
    }
    let mut refused_by_pg_rewind = None;
    let rewound = change.irreversible("pg_rewind", Vec::new(), |progress| {
        progress.set("diverged_at", d.at.to_string());
        progress.set("lost_wal_bytes", d.bytes());
        rewind::run(&config.pg_bin, &config.pg_data, &source, false, restore).map_err(|e| {
            if e.program_failed() {
                refused_by_pg_rewind = Some(e.to_string());
            }
            step_error(
                "pg_rewind",
                e.to_string(),
                "read the message; `keyferry ha rejoin --resume` then bootstraps instead (this data directory may be half rewritten; it is kept aside, never deleted)",
            )
        })
    });
    let rewound = match (rewound, refused_by_pg_rewind) {
        (Ok(r), _) => r,
        (Err(_), Some(why)) => {
            // What it left is for the caller to read from the control
            // file, as after a kill: rewound to the end, or a bootstrap.
            obs.step(&format!("pg_rewind failed: {why}"));
            return Ok(());
        }
        (Err(e), None) => return Err(e.into()),
    };
    // pg_rewind (the server's account) is done; root writes next: the
    // window in which that account could swap the directory.
    crate::failpoint::failpoint!("{ACTION}:rewind-done");
    put_back(config, &data, &state.data.own)?;
    if rewound == Rewind::NotNeeded {
        state.data.method = Method::Follow;
    }
    state.data.rewound = true;
    change.save(state)?;
    Ok(())
}

/// `pg_rewind --dry-run`, for a rejoin whose weighing could not tell where
/// the histories diverged: that point, and what this node wrote after it.
/// `None`: the method was changed instead (no divergence: follow; the dry
/// run failed and the data was weighed or `--force` given: bootstrap).
fn dry_run(
    config: &HaConfig,
    source: &str,
    restore: bool,
    past: bool,
    state: &mut State,
    obs: &mut dyn Observer,
) -> std::result::Result<Option<Divergence>, Stop> {
    obs.step("pg_rewind --dry-run: where did the two histories diverge?");
    let dry = match rewind::run(&config.pg_bin, &config.pg_data, source, true, restore) {
        Ok(d) => d,
        Err(e) => {
            if !past && !state.data.force {
                return Err(Stop::Refused(Error::Refused(format!(
                    "pg_rewind cannot be used ({e}), and whether this node committed transactions after the histories diverged cannot be told: a bootstrap would set them aside. The server stays stopped. `keyferry ha rejoin --force` bootstraps anyway and keeps this data directory aside as a .old- directory (recorded in the audit log)"
                ))));
            }
            state.data.method = Method::Bootstrap;
            state.data.why_bootstrap = Some(format!("its dry run failed: {e}"));
            return Ok(None);
        }
    };
    let Rewind::Diverged { at, timeline } = dry else {
        state.data.method = Method::Follow;
        return Ok(None);
    };
    let control = pg::controldata(&config.pg_bin, &config.pg_data).ok();
    let ours = control
        .as_ref()
        .and_then(|c| c.timeline)
        .unwrap_or(timeline);
    Ok(Some(measure_from(config, ours, at).unwrap_or_else(|why| {
        obs.step(&format!("note: {why}"));
        // A clean shutdown's checkpoint is the end of what it wrote.
        Divergence {
            at,
            timeline,
            end: control
                .as_ref()
                .and_then(|c| c.checkpoint_lsn)
                .unwrap_or(at)
                .max(at),
            summary: None,
        }
    })))
}

/// The bootstrap a rejoin hands over to (or resumes). `yes`: the operator
/// asked for this node's role to go, and what it wrote after the
/// divergence was weighed before: its data is kept aside, never deleted.
fn handed_over(opts: &RejoinOptions, password: &Zeroizing<String>, mode: Mode) -> BootstrapOptions {
    BootstrapOptions {
        mode,
        password: opts.password.clone(),
        known_password: Some(password.clone()),
        yes: true,
        slot: opts.slot.clone(),
        connect_timeout: opts.connect_timeout,
        timeout: opts.timeout,
    }
}

/// `pg_rewind` reads the new primary's timeline from its control file,
/// which shows the promotion only once the first checkpoint after it is
/// done (a spread one: minutes, under load). Before that `pg_rewind`
/// answers "same timeline, no rewind required", and a node whose WAL goes
/// past the fork (a crash recovery's own checkpoint does) can then never
/// follow. So: a `CHECKPOINT` is asked for (allowed to a superuser or a
/// member of `pg_checkpoint`; refused otherwise, and then only waited
/// for), and waited for, bounded by the timeout.
fn wait_source_checkpoint(
    config: &HaConfig,
    password: &Zeroizing<String>,
    opts: &RejoinOptions,
    obs: &mut dyn Observer,
) -> Result<()> {
    const SQL: &str = "SELECT (SELECT timeline_id FROM pg_control_checkpoint()), \
        ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int";
    let target = config.primary.to_string();
    let fail = |e: PgError| {
        step_error(
            "reading the new primary's checkpoint",
            e.to_string(),
            "check that it runs and `keyferry ha check`, then `keyferry ha rejoin --resume`",
        )
    };
    let mut client = primary_sql(config, password, opts.connect_timeout).map_err(fail)?;
    let deadline = std::time::Instant::now() + opts.timeout;
    let mut asked = false;
    loop {
        let row = client
            .query_one(SQL, &[])
            .map_err(|e| fail(pg::from_postgres(&target, e)))?;
        let (checkpointed, current): (i32, i32) = (row.get(0), row.get(1));
        if checkpointed >= current {
            return Ok(());
        }
        if !asked {
            obs.step(&format!(
                "the new primary runs on timeline {current} but has not checkpointed since (pg_rewind reads the timeline from there): asking it for a checkpoint, and waiting"
            ));
            if let Err(e) = client.batch_execute("CHECKPOINT") {
                tracing::info!(error = %e, "CHECKPOINT refused; waiting for the scheduled one");
            }
            asked = true;
        }
        if std::time::Instant::now() >= deadline {
            return Err(step_error(
                "waiting for the new primary's first checkpoint since its promotion",
                format!(
                    "after {} s its control file still shows timeline {checkpointed}, and it runs on {current}",
                    opts.timeout.as_secs()
                ),
                &format!(
                    "run CHECKPOINT on {target} (or GRANT pg_checkpoint TO {}, PostgreSQL 15 or later, so that keyferry can), then `keyferry ha rejoin --resume`",
                    config.replication_user
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// In `rewound` after `pg_rewind` was started (resumed after a kill, or
/// right after it failed): finished (its last write is the control file's
/// state), the files are put back; else the directory may be half
/// rewritten and the rejoin becomes a bootstrap (the files put back too).
fn finish_interrupted_rewind(
    config: &HaConfig,
    state: &mut State,
    obs: &mut dyn Observer,
) -> Result<()> {
    let control = pg::controldata(&config.pg_bin, &config.pg_data).map_err(|e| {
        step_error(
            "reading this node's data directory after pg_rewind",
            e.to_string(),
            "check pg_bin and pg_data in ha.toml",
        )
    })?;
    if control.state == REWOUND_STATE {
        obs.step("pg_rewind had finished: putting back this node's own configuration files");
        let data = steps::open_data(&config.pg_data, None)?;
        put_back(config, &data, &state.data.own)?;
        state.data.rewound = true;
    } else {
        // pg_rewind may have replaced or emptied this node's own
        // configuration files before it stopped; the bootstrap takes them
        // from the directory it sets aside, so they go back first.
        let data = steps::open_data(&config.pg_data, None)?;
        put_back(config, &data, &state.data.own)?;
        state.data.method = Method::Bootstrap;
        state.data.why_bootstrap = Some(format!(
            "it was interrupted or failed (the cluster's state is \"{}\"), and the data directory may be half rewritten",
            control.state
        ));
    }
    Ok(())
}

/// Copies this node's configuration files into the home's backups
/// (owner-only), so that a run killed after `pg_rewind` can still put them
/// back.
fn keep_own(home: &Home, data: &datafile::Dir) -> Result<Vec<(String, OwnFile)>> {
    let dir = home.backup_dir();
    let what = |name: &str| format!("cannot keep a copy of {}", data.path().join(name).display());
    fsutil::ensure_private_dir(&dir)
        .map_err(Error::io(format!("cannot create {}", dir.display())))?;
    let stamp = file_stamp(now_unix());
    let mut kept = Vec::new();
    for name in OWN_FILES {
        let own = match data.read(name).map_err(Error::io(what(name)))? {
            None => OwnFile::Absent,
            Some(Kept::Link(target)) => OwnFile::Link(target),
            Some(Kept::File(bytes)) => {
                let copy = (0u32..)
                    .map(|n| match n {
                        0 => dir.join(format!("{name}.{stamp}.bak")),
                        n => dir.join(format!("{name}.{stamp}.{n}.bak")),
                    })
                    .find(|p| !p.exists())
                    .expect("a free name");
                let mut staged = Staged::new_in(&dir).map_err(Error::io(what(name)))?;
                std::io::Write::write_all(&mut staged, &bytes)
                    .and_then(|()| staged.persist_new(&copy))
                    .map_err(Error::io(what(name)))?;
                OwnFile::Copy(copy)
            }
        };
        kept.push((name.to_owned(), own));
    }
    Ok(kept)
}

/// Puts this node's configuration files back over what `pg_rewind` copied
/// from the new primary (safe to repeat).
fn put_back(config: &HaConfig, data: &datafile::Dir, own: &[(String, OwnFile)]) -> Result<()> {
    for (name, kept) in own {
        let path = config.pg_data.join(name);
        let kept = match kept {
            OwnFile::Copy(copy) => Some(Kept::File(std::fs::read(copy).map_err(Error::io(
                format!(
                    "cannot read the copy {} of {}",
                    copy.display(),
                    path.display()
                ),
            ))?)),
            OwnFile::Link(target) => Some(Kept::Link(target.clone())),
            OwnFile::Absent => None,
        };
        if let Some(kept) = kept {
            data.put(name, &kept)
                .map_err(Error::io(format!("cannot put back {}", path.display())))?;
        } else if name == autoconf::FILE {
            // None of its own: the one pg_rewind copied is the primary's,
            // which must not configure this server.
            autoconf::replace_copied(data, None)
                .map_err(Error::io(format!("cannot write {}", path.display())))?;
        }
    }
    Ok(())
}

/// The copies [`keep_own`] made, once the rejoin is done (best effort:
/// they are backups like any other otherwise).
fn forget_own(own: &[(String, OwnFile)]) {
    for (_, kept) in own {
        if let OwnFile::Copy(copy) = kept {
            let _ = std::fs::remove_file(copy);
        }
    }
}

/// After [`drive`]: a handover runs the bootstrap.
fn hand_over(
    home: &Home,
    config: &HaConfig,
    opts: &RejoinOptions,
    password: &Zeroizing<String>,
    flow: Flow,
    obs: &mut dyn Observer,
) -> Result<RejoinReport> {
    match flow {
        Flow::Done(report) => Ok(report),
        Flow::Bootstrap(report) => bootstrap_instead(home, config, opts, password, report, obs),
    }
}

/// Where the new primary's timeline left this node's, from its timeline
/// history, and what this node's WAL holds after that. `Ok(None)`: the
/// new primary is on this node's timeline (no fork to measure). `Err`:
/// why it cannot be told.
fn divergence(
    config: &HaConfig,
    password: &Zeroizing<String>,
    control: Option<&pg::ControlData>,
    opts: &RejoinOptions,
) -> std::result::Result<Option<Divergence>, String> {
    // The control file's timeline is its last checkpoint's; the WAL says
    // whether the node went on to a later one (promoted, then killed
    // before its first checkpoint there).
    let ours = control
        .and_then(|c| c.timeline)
        .max(waldump::newest_timeline(&config.pg_data.join("pg_wal")))
        .ok_or("pg_controldata shows no timeline")?;
    let addr = std::net::SocketAddr::new(config.primary.ip(), config.pg_port);
    let (theirs, history) = pg::replication::timeline_history(
        addr,
        &config.replication_user,
        Some(password.as_bytes()),
        opts.connect_timeout.max(Duration::from_secs(5)),
    )
    .map_err(|e| format!("the new primary's timeline history: {e}"))?;
    if theirs == ours {
        // One timeline: no fork, unless this node wrote past what the new
        // primary has (it would be overwritten all the same).
        let theirs_end = primary_flush_lsn(config, password, opts.connect_timeout)?;
        let d = measure_from(config, ours, theirs_end)?;
        return Ok(
            (d.bytes() > 0 && d.summary.as_ref().is_some_and(|s| s.records > 0)).then_some(d),
        );
    }
    let at = history
        .as_deref()
        .and_then(|h| rewind::switchpoint(h, ours))
        .ok_or(format!(
            "the new primary's timeline {theirs} does not descend from this node's timeline {ours}"
        ))?;
    measure_from(config, ours, at).map(Some)
}

/// The new primary's WAL flush position.
fn primary_flush_lsn(
    config: &HaConfig,
    password: &Zeroizing<String>,
    timeout: Duration,
) -> std::result::Result<Lsn, String> {
    let why = |e: String| format!("the new primary's WAL position: {e}");
    let target = config.primary.to_string();
    let mut client = primary_sql(config, password, timeout).map_err(|e| why(e.to_string()))?;
    let row = client
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .map_err(|e| why(pg::from_postgres(&target, e).to_string()))?;
    Lsn::parse(row.get(0)).ok_or_else(|| why("unreadable".into()))
}

/// What this node's WAL on `timeline` holds from `at` on.
fn measure_from(
    config: &HaConfig,
    timeline: u32,
    at: Lsn,
) -> std::result::Result<Divergence, String> {
    let summary = waldump::summarize(&config.pg_bin, &config.pg_data, timeline, at)
        .map_err(|e| format!("reading this node's WAL after {at}: {e}"))?;
    Ok(Divergence {
        at,
        timeline,
        end: summary.end.unwrap_or(at).max(at),
        summary: Some(summary),
    })
}

fn standby_plan(config: &HaConfig) -> String {
    format!(
        "standby configuration (standby.signal, primary_conninfo to {} with the password file {}), start, wait until it streams",
        config.primary,
        passfile_path(config).display()
    )
}

/// The new primary runs as one; returns its `full_page_writes`.
fn new_primary(
    config: &HaConfig,
    password: &Zeroizing<String>,
    slot: Option<&str>,
    timeout: Duration,
) -> Result<bool> {
    let target = config.primary.to_string();
    let fail = |e: PgError| {
        step_error(
            "reaching the new primary",
            e.to_string(),
            "check that the primary in ha.toml runs and `keyferry ha check`",
        )
    };
    let mut client = primary_sql(config, password, timeout).map_err(fail)?;
    if pg::in_recovery(&mut client, &target).map_err(fail)? {
        return Err(Error::Refused(format!(
            "{target} (the primary in ha.toml) runs as a replica: there is no primary to rejoin; fail over first (`keyferry ha failover` on that node)"
        )));
    }
    let keep = pg::wal_keep_bytes(&mut client, &target).map_err(fail)?;
    if let Some(refusal) = preflight::unretained_wal(slot, keep) {
        return Err(refusal);
    }
    let row = client
        .query_one("SELECT current_setting('full_page_writes')", &[])
        .map_err(|e| fail(pg::from_postgres(&target, e)))?;
    Ok(row.get::<_, String>(0) == "on")
}

/// The bootstrap that replaces a rewind (its own held change, after the
/// rejoin's finished at `bootstrapping`), and the audit record that says
/// where this node's data went.
fn bootstrap_instead(
    home: &Home,
    config: &HaConfig,
    opts: &RejoinOptions,
    password: &Zeroizing<String>,
    mut report: RejoinReport,
    obs: &mut dyn Observer,
) -> Result<RejoinReport> {
    obs.step(
        "handing over to a bootstrap (its own held change: if it is interrupted, `keyferry ha rejoin --resume` or `keyferry ha bootstrap --resume` finishes it)",
    );
    report.method = "bootstrap";
    let done = bootstrap::bootstrap(home, &handed_over(opts, password, Mode::Run), obs)?;
    report.phase = Phase::Streaming;
    report.set_aside = done.old_data.clone();
    let mut node = home.open(false)?;
    let mut change = node.begin(ACTION, rejoin_details(config, &report))?;
    change.set_detail(
        "set_aside",
        Value::from(report.set_aside.as_ref().map(|p| p.display().to_string())),
    );
    report.audited = change.finish()?.audited;
    report.bootstrap = Some(done);
    Ok(report)
}

/// The audit record's details of a rejoin.
fn details(
    config: &HaConfig,
    facts: &Facts,
    phase: Phase,
    report: &RejoinReport,
) -> std::collections::BTreeMap<String, Value> {
    let mut d = rejoin_details(config, report);
    d.insert("method".into(), Value::from(facts.method.as_str()));
    d.insert("phase".into(), Value::from(phase.name()));
    d.insert("forced".into(), Value::from(facts.force));
    d.insert("crash_recovered".into(), Value::from(facts.crash_recovered));
    d
}

fn rejoin_details(
    config: &HaConfig,
    report: &RejoinReport,
) -> std::collections::BTreeMap<String, Value> {
    crate::ops::details([
        ("primary", Value::from(config.primary.to_string())),
        ("node", Value::from(config.node.clone())),
        ("method", Value::from(report.method)),
        ("phase", Value::from(report.phase.name())),
        ("crash_recovered", Value::from(report.crash_recovered)),
        ("diverged_at", Value::from(report.diverged_at.clone())),
        ("lost_wal_bytes", Value::from(report.lost_wal_bytes)),
        ("lost_wal_range", Value::from(report.lost_wal_range.clone())),
        ("lost_commits", Value::from(report.lost_commits)),
        ("lost_rows", Value::from(report.lost_rows)),
    ])
}

/// The `source` connection string of `pg_rewind`: the new primary, as the
/// replication user, the password in the password file.
fn source_conninfo(config: &HaConfig) -> String {
    let passfile = passfile_path(config);
    let up = crate::pg::standby::Upstream {
        host: config.primary.to_string(),
        port: config.pg_port,
        user: &config.replication_user,
        application_name: "keyferry pg_rewind",
        passfile: &passfile,
        slot: None,
    };
    format!(
        "{} dbname='{}'",
        crate::pg::standby::primary_conninfo(&up),
        pg::MAINTENANCE_DB
    )
}

/// Whether this node's configuration sets a `restore_command`, so
/// `pg_rewind` can fetch WAL it lacks from the archive.
fn has_restore_command(data: &Path) -> bool {
    ["postgresql.conf", "postgresql.auto.conf"]
        .iter()
        .any(|name| {
            datafile::read_text(&data.join(name)).is_ok_and(|text| {
                let text = text.unwrap_or_default();
                text.lines().any(|l| {
                    let l = l.trim_start();
                    l.starts_with("restore_command")
                        && l.split_once('=').is_some_and(|(_, v)| {
                            let v = v.split('#').next().unwrap_or("").trim();
                            !v.is_empty() && v != "''"
                        })
                })
            })
        })
}

/// Drops the inactive physical slots this node kept from its time as
/// primary (best effort: `ha status` and `ha check` show any left).
fn drop_stale_slots(config: &HaConfig, timeout: Duration) -> Vec<String> {
    let Ok((mut client, _)) = roles::local_admin(config, timeout) else {
        return Vec::new();
    };
    let names: Vec<String> = client
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical' AND NOT active",
            &[],
        )
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    drop(client);
    names
        .into_iter()
        .filter(|n| steps::drop_local_slot(config, n, timeout).is_ok_and(|d| d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(hints: bool, checksums: bool) -> pg::ControlData {
        pg::ControlData {
            state: "shut down".into(),
            system_identifier: None,
            timeline: Some(1),
            redo_wal_file: None,
            checkpoint_lsn: None,
            wal_log_hints: hints,
            checksums,
        }
    }

    #[test]
    fn rewind_needs_hints_or_checksums_and_full_page_writes() {
        assert_eq!(rewind_impossible(Some(&control(true, false)), true), None);
        assert_eq!(rewind_impossible(Some(&control(false, true)), true), None);
        assert!(rewind_impossible(Some(&control(false, false)), true)
            .unwrap()
            .contains("wal_log_hints"));
        assert!(rewind_impossible(Some(&control(true, true)), false)
            .unwrap()
            .contains("full_page_writes"));
        assert!(rewind_impossible(None, true).is_some());
    }

    fn facts() -> Facts {
        Facts {
            method: Method::Rewind,
            why_bootstrap: None,
            was_replica: false,
            crashed: true,
            force: false,
            slot: None,
            weighed: Some(Weighed {
                at: 0x3000000,
                timeline: 1,
                end: 0x3000100,
                commits: Some(0),
                rows: Some(0),
            }),
            crash_recovered: false,
            own: vec![
                (
                    "pg_hba.conf".into(),
                    OwnFile::Copy("/home/backups/x".into()),
                ),
                ("pg_ident.conf".into(), OwnFile::Absent),
            ],
            rewind_started: false,
            rewound: false,
        }
    }

    #[test]
    fn phases_move_only_through_the_table() {
        let m = State::new(Phase::Checked, facts());
        // Never anything before the stop.
        assert!(m.allows(Phase::Stopped));
        for p in [Phase::Measured, Phase::Rewound, Phase::Started] {
            assert!(!m.allows(p), "{p:?}");
        }
        let at = |p| State::new(p, facts());
        // Never a rewind before the divergence was weighed, never crash
        // recovery after the rewind, nothing after the end.
        assert!(!at(Phase::Stopped).allows(Phase::Rewound));
        assert!(!at(Phase::Stopped).allows(Phase::Recovered));
        assert!(!at(Phase::Rewound).allows(Phase::Recovered));
        assert!(at(Phase::Rewound).allows(Phase::Bootstrapping));
        assert!(at(Phase::Recovered).allows(Phase::Rewound));
        assert!(!at(Phase::Bootstrapping).allows(Phase::Started));
        for p in [Phase::Checked, Phase::Stopped, Phase::Rewound] {
            assert!(!at(Phase::Streaming).allows(p));
        }
    }

    #[test]
    fn the_point_of_no_return_is_the_rewind() {
        for p in [
            Phase::Checked,
            Phase::Stopped,
            Phase::Measured,
            Phase::Recovered,
        ] {
            assert!(!p.no_return(), "{p:?}");
        }
        for p in [
            Phase::Rewound,
            Phase::Bootstrapping,
            Phase::Started,
            Phase::Streaming,
        ] {
            assert!(p.no_return(), "{p:?}");
        }
        // Every phase reached past it stays past it: no way back into an
        // abortable phase.
        for (from, to) in Phase::TRANSITIONS {
            assert!(!from.no_return() || to.no_return(), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn the_state_round_trips_and_a_bad_one_does_not_parse() {
        let s = State::new(Phase::Rewound, facts());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["phase"], "rewound");
        let back: State = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back.phase(), Phase::Rewound);
        assert_eq!(back.data.own, s.data.own);
        assert_eq!(back.data.weighed.unwrap().divergence().bytes(), 0x100);
        let mut bad = v;
        bad["phase"] = "half".into();
        assert!(serde_json::from_value::<State>(bad).is_err());
    }

    #[test]
    fn only_commits_after_the_divergence_are_a_loss() {
        let mut d = Divergence {
            at: Lsn(0x3000000),
            timeline: 1,
            end: Lsn(0x3000100),
            summary: Some(WalSummary {
                end: Some(Lsn(0x3000100)),
                records: 2,
                commits: 0,
                rows: 0,
            }),
        };
        assert!(!d.loses_commits(), "checkpoints alone are no loss");
        assert!(d.describe().contains("256 B of WAL"), "{}", d.describe());
        assert!(d.describe().contains("0/3000000 to 0/3000100"));
        d.summary = None;
        assert!(d.loses_commits(), "unread WAL counts as a loss");
        d.summary = Some(WalSummary {
            commits: 2,
            rows: 149,
            ..WalSummary::default()
        });
        assert!(d.loses_commits());
        assert!(d
            .describe()
            .contains("2 committed transaction(s) changing 149 row(s)"));
        assert!(diverged_refusal(&d, "bootstrap")
            .to_string()
            .contains("--force"));
    }

    #[test]
    fn a_restore_command_is_seen_only_when_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("postgresql.conf"),
            "#restore_command = 'cp'\n",
        )
        .unwrap();
        assert!(!has_restore_command(dir.path()));
        std::fs::write(
            dir.path().join("postgresql.auto.conf"),
            "restore_command = 'cp /archive/%f %p'\n",
        )
        .unwrap();
        assert!(has_restore_command(dir.path()));
    }
}
