//! `keyferry ha rejoin`: the old primary, after a failover, becomes a
//! replica of the new one — by `pg_rewind` when its prerequisites hold, else
//! by a fresh bootstrap (which keeps the old data directory aside).
//!
//! The steps ([`Phase`] names where a run is; [`Phase::next`] is the one
//! place a phase changes):
//!
//! 1. checks that change nothing: `ha.toml` names this node the secondary
//!    (a node that lost its role), the primary it names runs as primary,
//!    and `pg_rewind`'s prerequisites: `wal_log_hints` or data checksums on
//!    this node's cluster, `full_page_writes` on the new primary;
//! 2. stop the local server (not undone: a demoted node that stopped is in
//!    the safe state, and starting it again as a primary is what the start
//!    guard exists to prevent);
//! 3. the divergence: where the new primary's timeline left this node's
//!    (its timeline history, read over the replication connection), and
//!    what this node's WAL holds after that point (`pg_waldump`: bytes, the
//!    LSN range, committed transactions and rows). When it committed
//!    transactions there, a rewind or a bootstrap sets them aside: only
//!    with `--force`, and the refusal says how much. Read only: a refusal
//!    leaves the data directory as it was;
//! 4. a cluster that was not shut down cleanly (the primary was killed, or
//!    lost power) gets its crash recovery in single-user mode
//!    ([`crate::pg::recovery`]): `pg_rewind` needs a clean shutdown, and a
//!    normal start would make the demoted node a writable primary;
//! 5. `pg_rewind --dry-run`, then `pg_rewind` (an irreversible step,
//!    audited before and after), with `--restore-target-wal` when this
//!    node's configuration has a `restore_command`; the configuration files
//!    it would overwrite (`postgresql.conf`, `pg_hba.conf`, `pg_ident.conf`,
//!    `postgresql.auto.conf`) are put back as they were;
//! 6. the standby configuration (as in bootstrap), start, and wait until the
//!    new primary sees this node streaming.
//!
//! When a prerequisite is missing, or the dry run fails (the WAL it needs is
//! gone), the rejoin is a bootstrap: see [`super::bootstrap`]. It refuses
//! what the rewind refuses (step 3), and its audit record names where the
//! data directory was set aside; nothing is ever deleted. Running the
//! command again after any failure goes on from where the node is: every
//! step is safe to repeat.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use super::bootstrap::{self, step_error, BootstrapOptions, BootstrapReport, Mode};
use super::steps::{
    self, owner_reference, passfile_path, primary_sql, wait_caught_up, write_passfile,
    write_standby, Observer,
};
use super::{require_config, roles};
use crate::error::{Error, Result};
use crate::fmt::human_bytes;
use crate::ha::autoconf;
use crate::ha::config::HaConfig;
use crate::ha::datafile::{self, Kept};
use crate::ha::preflight::{self, Side};
use crate::ha::service::Server;
use crate::node::{Change, Home};
use crate::pg::rewind::{self, Rewind};
use crate::pg::waldump::{self, WalSummary};
use crate::pg::{self, recovery, Credentials, Lsn, PgError};
use crate::secret::PasswordSource;

const ACTION: &str = "ha-rejoin";

/// The version of [`State`] in the change's details.
pub(crate) const STATE_VERSION: u32 = 1;

/// Files `pg_rewind` copies from the source that belong to this node.
const OWN_FILES: [&str; 4] = [
    "postgresql.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "postgresql.auto.conf",
];

/// Where a rejoin is. Only [`Phase::next`] moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// The checks ran; nothing changed.
    Checked,
    /// The local server is stopped (and stays so: it is demoted).
    Stopped,
    /// What this node wrote after the divergence is known and allowed
    /// (nothing committed there, or `--force`), or left to the dry run.
    Measured,
    /// Crash recovery in single-user mode ended in a clean shutdown.
    Recovered,
    /// `pg_rewind` ran (irreversible).
    Rewound,
    /// Handed to a bootstrap, which sets the data directory aside.
    Bootstrapping,
    /// Configured as a standby of the new primary and started.
    Started,
    /// The new primary sees this node streaming.
    Streaming,
}

/// What happened, moving a rejoin from one [`Phase`] to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Event {
    Stop,
    Measure,
    Recover,
    Rewind,
    Bootstrap,
    Start,
    Stream,
}

/// A step out of order: a bug, never an operator's doing.
#[derive(Debug, thiserror::Error)]
#[error("ha rejoin: no step leads from phase {from:?} by {event:?}; nothing more was done: report this keyferry bug, then run `keyferry ha rejoin` again")]
pub(crate) struct PhaseError {
    pub from: Phase,
    pub event: Event,
}

impl Phase {
    /// The one transition function: the phase `event` leads to from here.
    pub(crate) fn next(self, event: Event) -> std::result::Result<Phase, PhaseError> {
        use Event as E;
        use Phase as P;
        Ok(match (self, event) {
            (P::Checked, E::Stop) => P::Stopped,
            (P::Checked | P::Stopped, E::Measure) => P::Measured,
            (P::Measured, E::Recover) => P::Recovered,
            (P::Measured | P::Recovered, E::Rewind) => P::Rewound,
            (P::Checked | P::Stopped | P::Measured | P::Recovered, E::Bootstrap) => {
                P::Bootstrapping
            }
            (P::Checked | P::Stopped | P::Measured | P::Recovered | P::Rewound, E::Start) => {
                P::Started
            }
            (P::Started | P::Bootstrapping, E::Stream) => P::Streaming,
            (from, event) => return Err(PhaseError { from, event }),
        })
    }
}

/// A rejoin's state as the change's details carry it (versioned: a later
/// keyferry reading an older one knows what it reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    pub version: u32,
    pub phase: Phase,
}

impl State {
    fn new() -> Self {
        Self {
            version: STATE_VERSION,
            phase: Phase::Checked,
        }
    }

    fn advance(&mut self, event: Event) -> Result<()> {
        self.phase = self
            .phase
            .next(event)
            .map_err(|e| Error::Refused(e.to_string()))?;
        tracing::debug!(phase = ?self.phase, "ha rejoin");
        Ok(())
    }

    fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// What `ha rejoin` was given.
#[derive(Debug, Clone)]
pub(crate) struct RejoinOptions {
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

/// Runs (or, with `dry_run`, plans) a rejoin.
pub(crate) fn rejoin(
    home: &Home,
    opts: &RejoinOptions,
    obs: &mut dyn Observer,
) -> Result<RejoinReport> {
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
    let full_page_writes = new_primary(&config, &password, opts.connect_timeout)?;
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
    let mut state = State::new();
    let mut report = RejoinReport {
        dry_run: opts.dry_run,
        plan: Vec::new(),
        method: if impossible.is_some() {
            "bootstrap"
        } else {
            "rewind"
        },
        diverged_at: None,
        lost_wal_bytes: None,
        lost_wal_range: None,
        lost_commits: None,
        lost_rows: None,
        crash_recovered: false,
        set_aside: None,
        bootstrap: None,
        phase: state.phase,
        audited: false,
    };
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
            report.method = "follow";
            report.plan.push(
                "this node was a replica when it stopped: it follows the new primary without pg_rewind".into(),
            );
            report.plan.push(standby_plan(&config));
        }
        None => {
            if crashed {
                report.plan.push(format!(
                    "the server was not shut down cleanly (cluster state: {}): its crash recovery in single-user mode (no connections), which must end \"shut down\"",
                    control.as_ref().map_or("", |c| c.state.as_str())
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
    if running {
        obs.step("stopping the local server");
        server.stop().map_err(|e| {
            step_error(
                "stopping the local server",
                e.to_string(),
                "stop it by hand, then run `keyferry ha rejoin` again",
            )
        })?;
        state.advance(Event::Stop)?;
    }
    // Read again now that the server is stopped.
    let control = if has_cluster {
        pg::controldata(&config.pg_bin, &config.pg_data)
            .ok()
            .or(control)
    } else {
        None
    };
    let mut measured = None;
    if has_cluster && !was_replica {
        obs.step("reading what this node wrote after the histories diverged");
        match divergence(&config, &password, control.as_ref(), opts) {
            Ok(Some(d)) => {
                d.record(&mut report);
                let method = if impossible.is_some() {
                    "bootstrap"
                } else {
                    "rewind"
                };
                if d.loses_commits() && !opts.force {
                    return Err(diverged_refusal(&d, method));
                }
                obs.step(&format!("this node holds {}", d.describe()));
                measured = Some(d);
            }
            Ok(None) => {}
            Err(why) if impossible.is_some() && !opts.force => {
                // The bootstrap has no dry run of its own to tell.
                return Err(Error::Refused(format!(
                    "cannot tell whether this node committed transactions after the histories diverged ({why}): a bootstrap would set them aside. The server stays stopped and its data directory unchanged. `keyferry ha rejoin --force` bootstraps anyway and keeps this data directory aside as a .old- directory (recorded in the audit log)"
                )));
            }
            Err(why) => obs.step(&format!("note: {why}")),
        }
        state.advance(Event::Measure)?;
    }
    if let Some(why) = impossible {
        obs.step(&format!(
            "pg_rewind cannot be used ({why}): bootstrapping instead"
        ));
        return bootstrap_instead(home, &config, opts, &password, state, report, obs);
    }
    if crashed {
        obs.step("crash recovery in single-user mode (the server was not shut down cleanly)");
        recovery::recover(&config.pg_bin, &config.pg_data).map_err(|e| {
            step_error(
                "crash recovery in single-user mode",
                e.to_string(),
                "read the message (the server's log says more), fix the cause, then run `keyferry ha rejoin` again",
            )
        })?;
        report.crash_recovered = true;
        state.advance(Event::Recover)?;
    }
    rewind_and_follow(
        home,
        &config,
        &server,
        &password,
        was_replica,
        measured,
        opts,
        obs,
        state,
        report,
    )
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
    let ours = control
        .and_then(|c| c.timeline)
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
        return Ok(None);
    }
    let at = history
        .as_deref()
        .and_then(|h| rewind::switchpoint(h, ours))
        .ok_or(format!(
            "the new primary's timeline {theirs} does not descend from this node's timeline {ours}"
        ))?;
    measure_from(config, ours, at).map(Some)
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
fn new_primary(config: &HaConfig, password: &Zeroizing<String>, timeout: Duration) -> Result<bool> {
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
    let row = client
        .query_one("SELECT current_setting('full_page_writes')", &[])
        .map_err(|e| fail(pg::from_postgres(&target, e)))?;
    Ok(row.get::<_, String>(0) == "on")
}

/// The bootstrap that replaces a rewind, and the audit record that says
/// why this node's data went aside and where.
fn bootstrap_instead(
    home: &Home,
    config: &HaConfig,
    opts: &RejoinOptions,
    password: &Zeroizing<String>,
    mut state: State,
    mut report: RejoinReport,
    obs: &mut dyn Observer,
) -> Result<RejoinReport> {
    state.advance(Event::Bootstrap)?;
    report.method = "bootstrap";
    let done = bootstrap::bootstrap(
        home,
        &BootstrapOptions {
            mode: Mode::Run,
            password: opts.password.clone(),
            known_password: Some(password.clone()),
            // The operator asked for this node's role to go, and what it
            // wrote after the divergence was weighed above: its data is
            // kept aside, never deleted.
            yes: true,
            slot: opts.slot.clone(),
            connect_timeout: opts.connect_timeout,
            timeout: opts.timeout,
        },
        obs,
    )?;
    state.advance(Event::Stream)?;
    report.set_aside = done.old_data.clone();
    let mut node = home.open(false)?;
    let mut change = node.begin(ACTION, details(config, opts, &state, &report))?;
    change.set_detail(
        "set_aside",
        Value::from(report.set_aside.as_ref().map(|p| p.display().to_string())),
    );
    report.audited = change.finish()?.audited;
    report.bootstrap = Some(done);
    report.phase = state.phase;
    Ok(report)
}

/// The audit record's details of a rejoin.
fn details(
    config: &HaConfig,
    opts: &RejoinOptions,
    state: &State,
    report: &RejoinReport,
) -> std::collections::BTreeMap<String, Value> {
    crate::ops::details([
        ("primary", Value::from(config.primary.to_string())),
        ("node", Value::from(config.node.clone())),
        ("method", Value::from(report.method)),
        ("state", state.to_value()),
        ("forced", Value::from(opts.force)),
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

#[allow(clippy::too_many_arguments)]
fn rewind_and_follow(
    home: &Home,
    config: &HaConfig,
    server: &Server,
    password: &Zeroizing<String>,
    was_replica: bool,
    measured: Option<Divergence>,
    opts: &RejoinOptions,
    obs: &mut dyn Observer,
    mut state: State,
    mut report: RejoinReport,
) -> Result<RejoinReport> {
    let mut node = home.open(false)?;
    let mut change = node.begin(ACTION, details(config, opts, &state, &report))?;
    let owner_ref = owner_reference(config);
    write_passfile(&mut change, config, config.primary, password, &owner_ref)?;
    if !was_replica {
        rewind_if_needed(
            config,
            measured,
            &mut change,
            &mut state,
            &mut report,
            opts,
            obs,
        )?;
    }
    if report.method == "bootstrap" {
        drop(change);
        drop(node);
        return bootstrap_instead(home, config, opts, password, state, report, obs);
    }
    follow(
        home, config, server, password, change, opts, obs, state, report,
    )
}

/// The dry run, the divergence, the rewind. Sets the report's method to
/// `bootstrap` when `pg_rewind` cannot be used (after the same refusal).
fn rewind_if_needed(
    config: &HaConfig,
    measured: Option<Divergence>,
    change: &mut Change<'_>,
    state: &mut State,
    report: &mut RejoinReport,
    opts: &RejoinOptions,
    obs: &mut dyn Observer,
) -> Result<()> {
    let source = source_conninfo(config);
    let restore = has_restore_command(&config.pg_data);
    obs.step("pg_rewind --dry-run: where did the two histories diverge?");
    let dry = match rewind::run(&config.pg_bin, &config.pg_data, &source, true, restore) {
        Ok(d) => d,
        Err(e) => {
            if measured.is_none() && !opts.force {
                return Err(Error::Refused(format!(
                    "pg_rewind cannot be used ({e}), and whether this node committed transactions after the histories diverged cannot be told: a bootstrap would set them aside. The server stays stopped. `keyferry ha rejoin --force` bootstraps anyway and keeps this data directory aside as a .old- directory (recorded in the audit log)"
                )));
            }
            obs.step(&format!(
                "pg_rewind cannot be used ({e}): bootstrapping instead"
            ));
            report.method = "bootstrap";
            return Ok(());
        }
    };
    let Rewind::Diverged { at, timeline } = dry else {
        report.method = "follow";
        return Ok(());
    };
    let control = pg::controldata(&config.pg_bin, &config.pg_data).ok();
    let d = match measured {
        Some(d) => d,
        None => {
            let ours = control
                .as_ref()
                .and_then(|c| c.timeline)
                .unwrap_or(timeline);
            measure_from(config, ours, at).unwrap_or_else(|why| {
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
            })
        }
    };
    d.record(report);
    if d.loses_commits() && !opts.force {
        return Err(diverged_refusal(&d, "rewind"));
    }
    // Held open from here: pg_rewind rewrites the files, not the
    // directory, so the put-back goes through this descriptor and refuses
    // a directory the server's account swapped in meanwhile.
    let data = steps::open_data(&config.pg_data, None)?;
    let own: Vec<(String, Option<Kept>)> = OWN_FILES
        .iter()
        .map(|n| ((*n).to_owned(), data.read(n).ok().flatten()))
        .collect();
    obs.step(&format!(
        "pg_rewind from {} (diverged at {at})",
        config.primary
    ));
    state.advance(Event::Rewind)?;
    change.set_detail("state", state.to_value());
    for (k, v) in details(config, opts, state, report) {
        change.set_detail(&k, v);
    }
    change.irreversible("pg_rewind", Vec::new(), |progress| {
        progress.set("diverged_at", at.to_string());
        progress.set("lost_wal_bytes", d.bytes());
        rewind::run(&config.pg_bin, &config.pg_data, &source, false, restore).map_err(|e| {
            step_error(
                "pg_rewind",
                e.to_string(),
                "read the message; run `keyferry ha rejoin` again, or `keyferry ha bootstrap` (which keeps the data directory aside)",
            )
        })?;
        for (name, kept) in &own {
            let path = config.pg_data.join(name);
            if let Some(kept) = kept {
                data.put(name, kept)
                    .map_err(Error::io(format!("cannot put back {}", path.display())))?;
            } else if name == autoconf::FILE {
                // None of its own: the one pg_rewind copied is the
                // primary's, which must not configure this server.
                autoconf::replace_copied(&data, None)
                    .map_err(Error::io(format!("cannot write {}", path.display())))?;
            }
        }
        Ok(())
    })?;
    Ok(())
}

/// The standby configuration, start, streaming, bookkeeping.
#[allow(clippy::too_many_arguments)]
fn follow(
    home: &Home,
    config: &HaConfig,
    server: &Server,
    password: &Zeroizing<String>,
    mut change: Change<'_>,
    opts: &RejoinOptions,
    obs: &mut dyn Observer,
    mut state: State,
    mut report: RejoinReport,
) -> Result<RejoinReport> {
    obs.step("configuring this node as a replica of the new primary");
    if let Some(slot) = &opts.slot {
        bootstrap::ensure_slot(config, password, slot, opts.connect_timeout)?;
    }
    let data = steps::open_data(&config.pg_data, None)?;
    write_standby(config, &data, config.primary, opts.slot.as_deref())?;
    obs.step("starting the replica");
    steps::start_step(
        &mut change,
        &server.clone().syncing_by_file_system(),
        "read the server's log, fix the cause, then run `keyferry ha rejoin` again",
    )?;
    state.advance(Event::Start)?;
    obs.step("waiting until the new primary sees this node streaming");
    let caught_up = wait_caught_up(config, password, opts.connect_timeout, opts.timeout)?;
    state.advance(Event::Stream)?;
    let dropped = drop_stale_slots(config, opts.connect_timeout);
    if !dropped.is_empty() {
        obs.step(&format!(
            "dropped the replication slots this node kept as primary (they would retain WAL for nobody): {}",
            dropped.join(", ")
        ));
    }
    roles::clear_demoted(&mut change, home, config)?;
    for (k, v) in details(config, opts, &state, &report) {
        change.set_detail(&k, v);
    }
    change.set_detail("caught_up_to", caught_up);
    report.audited = change.finish()?.audited;
    report.phase = state.phase;
    Ok(report)
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

    #[test]
    fn phases_move_only_through_the_transition_function() {
        let mut p = Phase::Checked;
        for e in [
            Event::Stop,
            Event::Measure,
            Event::Recover,
            Event::Rewind,
            Event::Start,
            Event::Stream,
        ] {
            p = p.next(e).unwrap();
        }
        assert_eq!(p, Phase::Streaming);
        // Never a rewind before the divergence was weighed, never crash
        // recovery after the rewind, nothing after the end.
        assert!(Phase::Checked.next(Event::Rewind).is_err());
        assert!(Phase::Stopped.next(Event::Recover).is_err());
        assert!(Phase::Rewound.next(Event::Recover).is_err());
        assert!(Phase::Rewound.next(Event::Bootstrap).is_err());
        assert!(Phase::Streaming.next(Event::Stop).is_err());
        assert_eq!(
            Phase::Measured.next(Event::Bootstrap).unwrap(),
            Phase::Bootstrapping
        );
    }

    #[test]
    fn the_state_is_versioned_and_a_bad_one_does_not_parse() {
        let s = State {
            version: STATE_VERSION,
            phase: Phase::Rewound,
        };
        assert_eq!(
            s.to_value(),
            serde_json::json!({"version": 1, "phase": "rewound"})
        );
        assert_eq!(serde_json::from_value::<State>(s.to_value()).unwrap(), s);
        assert!(serde_json::from_value::<State>(
            serde_json::json!({"version": 1, "phase": "half"})
        )
        .is_err());
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
