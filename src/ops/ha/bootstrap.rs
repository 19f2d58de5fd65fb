//! `keyferry ha bootstrap`: turns the secondary into a streaming replica of
//! the primary, from a base backup, without ever losing the node's data.
//!
//! The steps, each journaled with its undo before it happens (one held
//! [`crate::node::Change`], so an interrupted bootstrap is never undone
//! behind the operator's back: `--resume` finishes it, `--abort` undoes it):
//!
//! 1. preflight (the `ha check` checks a copy needs), the local data
//!    directory's state (a primary's data needs `--yes` or a yes on the
//!    terminal), the slot (`--slot`: an active one is a refusal, a stale
//!    inactive one is dropped);
//! 2. the replication password into a libpq password file beside the data
//!    directory, owned by the server's account, mode 0600 (undo: the
//!    previous file back);
//! 3. `pg_basebackup -X stream -c fast` into `<data>.keyferry-new-<stamp>`
//!    while the local server keeps running (undo: remove that directory);
//! 4. stop the local server (undo: start it), move the data directory to
//!    `<data>.old-<stamp>` (undo: move it back), move the copy into place
//!    (undo: move it back out); from here the journal's state says
//!    `swapped`, and `--resume` goes on instead of starting over;
//! 5. in the new data directory: this node's own `postgresql.conf`,
//!    `pg_hba.conf` and `pg_ident.conf` from the old one, `standby.signal`,
//!    and `primary_conninfo` naming the password file (never the password);
//! 6. start (undo: stop), wait until the primary sees this node streaming
//!    and replayed up to the primary's WAL position when the wait began;
//! 7. commit: one audit record with the source, system identifier,
//!    timeline, bytes copied and where the old data went.
//!
//! Invariants: the old data directory is never deleted (it is moved aside
//! and its removal left to the operator); the password is in no file but
//! the password file and in no message; a failure at any step undoes every
//! step before it, newest first, so the node is as it was (server running
//! in its old role if it was running).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use super::check::credentials;
use super::effects::PairSteps;
use super::require_config;
use super::steps::{
    open_data, owner_reference, passfile_path, primary_sql, start_step, wait_caught_up,
    write_owned, write_passfile, write_standby, Pair,
};
use crate::error::{Error, Result};
use crate::fmt::human_bytes;
use crate::ha::config::HaConfig;
use crate::ha::datafile::{Dir, DirId};
use crate::ha::preflight::{self, Side, Status};
use crate::ha::service::Server;
use crate::ha::{autoconf, datafile};
use crate::node::{file_stamp, now_unix, Change, HeldPhase, Home, Machine, Reopen, Undo};
use crate::ops::progress::{Observer, Unit};
use crate::pg::basebackup::{self, Said};
use crate::pg::standby;
use crate::pg::{self, Credentials, PgError};
use crate::secret::PasswordSource;

/// The journal's name for a bootstrap (and the audit record's action).
pub(crate) const ACTION: &str = "ha-bootstrap";

/// A bootstrap's context.
type Cx<'a> = Pair<'a, BootstrapOptions>;
const RESUME: &str = "keyferry ha bootstrap --resume";
const ABORT: &str = "keyferry ha bootstrap --abort";

/// The checks of `ha check` that a base backup cannot do without.
const REQUIRED_CHECKS: [&str; 10] = [
    "port.primary.pg",
    "replication",
    "sql.primary",
    "rights",
    "wal_level",
    "wal_senders",
    "standby_settings",
    "pg_bin",
    "version",
    "disk",
];

/// Run, finish an interrupted run, or undo one (a held change: bootstrap,
/// switchover).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Run,
    Resume,
    Abort,
}

/// What `ha bootstrap` was given. (No `Debug`: it may hold the password.)
#[derive(Clone)]
pub(crate) struct BootstrapOptions {
    pub mode: Mode,
    pub password: Option<PasswordSource>,
    /// The password, when a caller read it already (`ha rejoin` falling
    /// back to a bootstrap: a descriptor or a prompt cannot be read twice).
    pub known_password: Option<Zeroizing<String>>,
    /// Replace a primary's data without asking.
    pub yes: bool,
    pub slot: Option<String>,
    /// Bounds each connection attempt.
    pub connect_timeout: Duration,
    /// Bounds the server's start and stop, and the wait for catch-up.
    pub timeout: Duration,
}

/// How a bootstrap ended.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BootstrapReport {
    pub mode: &'static str,
    pub primary: String,
    pub pg_data: PathBuf,
    /// Where the previous data directory went, and its size.
    pub old_data: Option<PathBuf>,
    pub old_data_bytes: Option<u64>,
    /// The command that removes it once the new replica is trusted.
    pub remove_old: Option<String>,
    pub bytes_copied: u64,
    pub system_identifier: Option<String>,
    pub timeline: Option<u32>,
    pub slot: Option<String>,
    /// The primary's WAL position the replica replayed up to.
    pub caught_up_to: Option<String>,
    pub passfile: PathBuf,
    pub audited: bool,
    /// The pair's status once the replica caught up.
    pub status: Option<super::status::StatusReport>,
    /// Settings of the primary's `postgresql.auto.conf` the replica was
    /// not given (names only).
    pub dropped_settings: Vec<String>,
}

/// The phases of a bootstrap, in order; none is past a point of no return
/// (until the audit record, everything can be put back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum BootPhase {
    /// The password file is written; the copy is being made.
    Copying,
    /// The copy is complete beside the data directory.
    Copied,
    /// The old data directory is aside, the copy in its place.
    Swapped,
}

impl HeldPhase for BootPhase {
    const VERSION: u32 = 2;
    const TRANSITIONS: &'static [(Self, Self)] = &[
        (BootPhase::Copying, BootPhase::Copied),
        (BootPhase::Copied, BootPhase::Swapped),
    ];
    fn no_return(self) -> bool {
        false
    }
    fn name(self) -> &'static str {
        match self {
            BootPhase::Copying => "copying",
            BootPhase::Copied => "copied",
            BootPhase::Swapped => "swapped",
        }
    }
}

/// The journal's record of a bootstrap besides its phase (no secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Facts {
    staging: PathBuf,
    old: PathBuf,
    had_data: bool,
    was_running: bool,
    slot: Option<String>,
    confirmed: bool,
    bytes_copied: u64,
    /// The copy's directory as keyferry created it (before handing it to
    /// the server's account): the swap and every write afterwards refuse
    /// a directory that is not this one. `None` in a journal written
    /// before it was recorded.
    #[serde(default)]
    staging_id: Option<DirId>,
}

type State = Machine<BootPhase, Facts>;

/// Runs, resumes or aborts a bootstrap.
pub(crate) fn bootstrap(
    home: &Home,
    opts: &BootstrapOptions,
    obs: &mut dyn Observer,
) -> Result<BootstrapReport> {
    let config = require_config(home)?;
    let mut node = home.open(false)?;
    let cx = &Pair::new(home, config, opts.timeout, opts);
    match opts.mode {
        Mode::Abort => {
            let Some(change) = node.reopen_held(ACTION, Reopen::Abort)? else {
                return Err(nothing_interrupted());
            };
            let state: State = change.load()?;
            obs.step("undoing the interrupted bootstrap");
            change.abort()?;
            Ok(BootstrapReport {
                mode: "aborted",
                slot: state.data.slot,
                ..report_base(&cx.config)
            })
        }
        Mode::Resume => {
            let Some(change) = node.reopen_held(ACTION, Reopen::Resume)? else {
                return Err(nothing_interrupted());
            };
            let state: State = change.load()?;
            let password = match &opts.known_password {
                Some(p) => p.clone(),
                None => password(&cx.config, opts.password.as_ref())?,
            };
            if state.phase() == BootPhase::Swapped {
                obs.step("resuming after the swap: configuring and starting the replica");
                return finish(cx, obs, change, &state.data, &password);
            }
            obs.step("the copy had not been swapped in: undoing it and starting over");
            change.abort()?;
            let yes = opts.yes || state.data.confirmed;
            // Over again with the interrupted run's slot, unless the
            // operator names one now: without it the replica would stream
            // with no slot, and the primary could remove WAL it still needs.
            let again = BootstrapOptions {
                slot: opts.slot.clone().or(state.data.slot),
                ..opts.clone()
            };
            let cx = &Pair::new(home, cx.config.clone(), opts.timeout, &again);
            fresh(cx, obs, &mut node, &password, yes)
        }
        Mode::Run => {
            let password = match &opts.known_password {
                Some(p) => p.clone(),
                None => password(&cx.config, opts.password.as_ref())?,
            };
            fresh(cx, obs, &mut node, &password, opts.yes)
        }
    }
}

fn nothing_interrupted() -> Error {
    Error::Usage(
        "there is no interrupted bootstrap on this node: run `keyferry ha bootstrap` to start one"
            .into(),
    )
}

fn report_base(config: &HaConfig) -> BootstrapReport {
    BootstrapReport {
        mode: "bootstrapped",
        primary: config.primary.to_string(),
        pg_data: config.pg_data.clone(),
        old_data: None,
        old_data_bytes: None,
        remove_old: None,
        bytes_copied: 0,
        system_identifier: None,
        timeline: None,
        slot: None,
        caught_up_to: None,
        passfile: passfile_path(config),
        audited: false,
        status: None,
        dropped_settings: Vec::new(),
    }
}

/// The replication password, from the usual sources.
pub(super) fn password(
    config: &HaConfig,
    source: Option<&PasswordSource>,
) -> Result<Zeroizing<String>> {
    let mut facts = Vec::new();
    let creds = credentials(config, source, &mut facts)?;
    let bytes = creds
        .for_conn(
            &config.primary.to_string(),
            config.pg_port,
            "replication",
            &config.replication_user,
        )
        .ok_or_else(|| {
            Error::Usage(format!(
                "no password for the replication user {}: pass --password-file, --password-fd or --password-env, or add `{}:{}:replication:{}:PASSWORD` to ~/.pgpass (mode 0600)",
                config.replication_user, config.primary, config.pg_port, config.replication_user
            ))
        })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::Usage("the replication password is not valid UTF-8".into()))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// What the local data directory holds.
enum Local {
    /// Missing or empty.
    Empty,
    /// A cluster; `replica` when `pg_controldata` says it is in recovery.
    Cluster { replica: bool, state: String },
}

fn local_data(config: &HaConfig) -> Result<Local> {
    let data = &config.pg_data;
    match fs::read_dir(data) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Local::Empty),
        Err(e) => return Err(Error::io(format!("cannot read {}", data.display()))(e)),
        Ok(mut entries) => {
            if entries.next().is_none() {
                return Ok(Local::Empty);
            }
        }
    }
    if !data.join("PG_VERSION").exists() {
        return Err(Error::Refused(format!(
            "{} is not empty and is not a PostgreSQL data directory: move it aside yourself (or fix pg_data in ha.toml), then run the bootstrap again",
            data.display()
        )));
    }
    let control = pg::controldata(&config.pg_bin, data).map_err(|e| {
        step_error(
            "reading the local data directory",
            e.to_string(),
            "check pg_bin and pg_data in ha.toml",
        )
    })?;
    Ok(Local::Cluster {
        replica: control.state.contains("recovery"),
        state: control.state,
    })
}

pub(super) fn step_error(step: &str, message: String, fix: &str) -> Error {
    Error::Step {
        op: "ha bootstrap",
        step: step.to_owned(),
        cause: message,
        fix: fix.to_owned(),
    }
}

fn preflight(
    config: &HaConfig,
    password: &Zeroizing<String>,
    opts: &BootstrapOptions,
) -> Result<()> {
    let creds = Credentials::Given(Zeroizing::new(password.as_bytes().to_vec()));
    let found = preflight::run(config, opts.connect_timeout, &creds, Vec::new());
    match found.this_node {
        Some(Side::Secondary) => {}
        Some(Side::Primary) => {
            return Err(Error::Refused(format!(
                "this machine is the primary ({}) in ha.toml: run the bootstrap on the secondary ({})",
                config.primary, config.secondary
            )))
        }
        None => {
            return Err(Error::Refused(format!(
                "neither {} nor {} is an address of this machine: run the bootstrap on the secondary, or fix the addresses with `keyferry ha init --force`",
                config.primary, config.secondary
            )))
        }
    }
    if let Some(f) = found
        .facts
        .iter()
        .find(|f| f.status == Status::Fail && REQUIRED_CHECKS.contains(&f.name.as_str()))
    {
        return Err(Error::CheckFailed {
            name: f.name.clone(),
            message: f.message.clone(),
            fix: f
                .fix
                .clone()
                .unwrap_or_else(|| "see `keyferry ha check`".into()),
        });
    }
    if let Some(refusal) = found
        .primary_wal_keep
        .and_then(|keep| preflight::unretained_wal(opts.slot.as_deref(), keep))
    {
        return Err(refusal);
    }
    Ok(())
}

/// What the primary holds under a slot name the replica will stream through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotThere {
    Missing,
    /// Physical and unused: a stale one, or the one a switchover or
    /// failover created for this node's return.
    Inactive,
}

/// Reads the slot `slot` on the primary: refuses an invalid name, an active
/// slot (another replica streams through it) and a logical one.
fn slot_there(client: &mut postgres::Client, target: &str, slot: &str) -> Result<SlotThere> {
    if !standby::valid_slot_name(slot) {
        return Err(Error::Usage(format!(
            "{slot:?} is not a replication slot name: use 1 to 63 lower-case letters, digits and underscores"
        )));
    }
    let row = client
        .query_opt(
            "SELECT active, slot_type FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .map_err(|e| slot_error("checking the slot", pg::from_postgres(target, e)))?;
    let Some(row) = row else {
        return Ok(SlotThere::Missing);
    };
    let (active, kind): (bool, String) = (row.get(0), row.get(1));
    if active || kind != "physical" {
        return Err(Error::Refused(format!(
            "the replication slot {slot} on the primary is {}: another replica uses it; choose another --slot name, or stop that replica first",
            if active { "active" } else { "a logical slot" }
        )));
    }
    Ok(SlotThere::Inactive)
}

fn slot_error(step: &str, e: PgError) -> Error {
    step_error(step, e.to_string(), "see `keyferry ha check`")
}

/// Before a copy that creates the slot (`pg_basebackup -C`): refuses an
/// active slot of that name and drops a stale one (it would keep the
/// primary's WAL from wherever an earlier replica stopped).
fn prepare_slot(
    config: &HaConfig,
    password: &Zeroizing<String>,
    slot: &str,
    timeout: Duration,
) -> Result<()> {
    let drop = "SELECT pg_drop_replication_slot($1)";
    if when_slot(config, password, slot, timeout, SlotThere::Inactive, drop)? {
        tracing::info!(
            slot,
            "dropped a stale inactive replication slot on the primary"
        );
    }
    Ok(())
}

/// The slot a replica (re)joining streams through: created on the primary
/// when missing (reserving WAL from now on, before the replica first
/// connects), kept when inactive (after a failover or switchover it holds
/// the WAL since the promotion for this node), refused when another
/// replica uses it.
pub(super) fn ensure_slot(
    config: &HaConfig,
    password: &Zeroizing<String>,
    slot: &str,
    timeout: Duration,
) -> Result<()> {
    let create = "SELECT pg_create_physical_replication_slot($1, true)";
    when_slot(config, password, slot, timeout, SlotThere::Missing, create).map(drop)
}

/// Runs `sql` (with the slot's name as `$1`) on the primary when the slot
/// is `there`; whether it ran. Refuses what [`slot_there`] refuses.
fn when_slot(
    config: &HaConfig,
    password: &Zeroizing<String>,
    slot: &str,
    timeout: Duration,
    there: SlotThere,
    sql: &str,
) -> Result<bool> {
    let target = config.primary.to_string();
    let mut client =
        primary_sql(config, password, timeout).map_err(|e| slot_error("checking the slot", e))?;
    if slot_there(&mut client, &target, slot)? != there {
        return Ok(false);
    }
    client
        .execute(sql, &[&slot])
        .map_err(|e| slot_error("changing the slot", pg::from_postgres(&target, e)))?;
    Ok(true)
}

/// Drops the slot a failed copy may have created (best effort: `ha status`
/// shows a slot left behind).
fn drop_slot_after_failure(
    config: &HaConfig,
    password: &Zeroizing<String>,
    slot: &str,
    timeout: Duration,
) {
    if let Ok(mut client) = primary_sql(config, password, timeout) {
        let _ = client.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
            &[&slot],
        );
    }
}

fn fresh(
    cx: &Cx<'_>,
    obs: &mut dyn Observer,
    node: &mut crate::node::Node,
    password: &Zeroizing<String>,
    yes: bool,
) -> Result<BootstrapReport> {
    let (config, server, opts) = (&cx.config, &cx.server, cx.opts);
    obs.step("preflight: checking the primary, the versions, the WAL settings and the disk");
    preflight(config, password, opts)?;
    let local = local_data(config)?;
    let mut confirmed = yes;
    if let Local::Cluster {
        replica: false,
        state,
    } = &local
    {
        if !confirmed {
            let question = format!(
                "{} holds a primary's data (cluster state: {state}). The bootstrap moves it aside (it is kept, not deleted) and replaces it with a copy of {}. Continue?",
                config.pg_data.display(),
                config.primary
            );
            confirmed = obs.confirm(&question)?;
            if !confirmed {
                return Err(Error::Refused(format!(
                    "{} holds a primary's data: nothing was changed; run again with --yes to replace it (it is kept as a .old- directory beside it)",
                    config.pg_data.display()
                )));
            }
        }
    }
    if let Some(slot) = &opts.slot {
        prepare_slot(config, password, slot, opts.connect_timeout)?;
    }
    let was_running = server.is_running().map_err(|e| {
        step_error(
            "reading the local server's state",
            e.to_string(),
            "check pg_bin and pg_data in ha.toml",
        )
    })?;
    let (staging, old) = free_siblings(&config.pg_data);
    let state = State::new(
        BootPhase::Copying,
        Facts {
            staging,
            old,
            had_data: matches!(local, Local::Cluster { .. }) || config.pg_data.exists(),
            was_running,
            slot: opts.slot.clone(),
            confirmed,
            bytes_copied: 0,
            staging_id: None,
        },
    );
    let details = crate::ops::details([
        ("primary", Value::from(config.primary.to_string())),
        ("node", Value::from(config.node.clone())),
    ]);
    let mut change = node.begin_held(ACTION, details, RESUME, ABORT)?;
    change.save(&state)?;
    let result = copy_and_swap(&mut change, config, server, state, password, opts, obs);
    let state = match result {
        Ok(state) => state,
        Err(e) => {
            // The change undid itself; a slot the copy created is the
            // primary's, outside the journal.
            if let Some(slot) = &opts.slot {
                drop_slot_after_failure(config, password, slot, opts.connect_timeout);
            }
            return Err(e);
        }
    };
    finish(cx, obs, change, &state.data, password)
}

/// The copy's and the old data's names, stamped with the time. A second
/// bootstrap within the same second waits for the next one: the names keep
/// their one shape (`ha status` and operators read the time from them).
fn free_siblings(pg_data: &Path) -> (PathBuf, PathBuf) {
    loop {
        let stamp = file_stamp(now_unix());
        let staging = basebackup::sibling(pg_data, "keyferry-new", &stamp);
        let old = basebackup::sibling(pg_data, "old", &stamp);
        if !staging.exists() && !old.exists() {
            return (staging, old);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Steps 2 to 4.
fn copy_and_swap(
    change: &mut Change<'_>,
    config: &HaConfig,
    server: &Server,
    mut state: State,
    password: &Zeroizing<String>,
    opts: &BootstrapOptions,
    obs: &mut dyn Observer,
) -> Result<State> {
    let owner_ref = owner_reference(config);
    platform::refuse_root_owned(&owner_ref)?;
    write_passfile(change, config, config.primary, password, &owner_ref)?;

    obs.step(&format!(
        "copying {} into {} (the local server keeps running)",
        config.primary,
        state.data.staging.display()
    ));
    let passfile = passfile_path(config);
    let host = config.primary.to_string();
    let source = basebackup::Source {
        host: &host,
        port: config.pg_port,
        user: &config.replication_user,
        passfile: &passfile,
        slot: opts.slot.as_deref(),
    };
    let undo = Undo::remove_tree(&state.data.staging)
        .map_err(Error::io("cannot name the copy's directory"))?;
    let staging = state.data.staging.clone();
    // Created before its undo is journaled: a directory of that name that
    // someone else made first is a refusal here, never something the undo
    // removes. (A crash between the two leaves an empty directory.)
    state.data.staging_id = Some(create_owned_dir(&staging, &owner_ref)?);
    let copied = change.step(undo, || {
        basebackup::run(&config.pg_bin, &source, &staging, |said| match said {
            Said::Phase(p) => obs.work(p.label(), p.describe(), Unit::Bytes),
            Said::Progress { done, total } => obs.progress(*done, *total),
            Said::Other(_) => {}
        })
        .map_err(|e| {
            step_error(
                "the base backup (pg_basebackup)",
                e.to_string(),
                "check that the primary runs and accepts the replication user (`keyferry ha check`), and the free space beside the data directory",
            )
        })
    })?;
    state.data.bytes_copied = copied.bytes;
    change.advance(&mut state, BootPhase::Copied)?;

    if state.data.was_running {
        obs.step("stopping the local server");
        change.stop_server(server, &|e| {
            step_error(
                "stopping the local server",
                e,
                "stop it by hand, then run the bootstrap again",
            )
        })?;
    }
    if config.pg_data.exists() {
        obs.step(&format!(
            "moving {} aside to {}",
            config.pg_data.display(),
            state.data.old.display()
        ));
        change.rename(&config.pg_data, &state.data.old)?;
    }
    // The server's account owns the parent and may have put anything in
    // the copy's place: only the directory keyferry created is moved.
    match state.data.staging_id {
        Some(id) => change.rename_dir(&state.data.staging, &config.pg_data, id)?,
        None => change.rename(&state.data.staging, &config.pg_data)?,
    }
    change.advance(&mut state, BootPhase::Swapped)?;
    Ok(state)
}

/// Creates `dir` (mode 0700) owned like `owner_ref`; returns its identity,
/// taken from a descriptor opened before the server's account owns it (so
/// it is the directory keyferry created, whatever happens to the path).
fn create_owned_dir(dir: &Path, owner_ref: &Path) -> Result<DirId> {
    let what = format!("cannot create {}", dir.display());
    fs::create_dir(dir).map_err(Error::io(what.clone()))?;
    let opened = Dir::open(dir, None)
        .and_then(|d| platform::own_like(&d, owner_ref, 0o700).map(|()| d.id()));
    opened.map_err(|e| {
        // Still empty: ours to take back.
        let _ = fs::remove_dir(dir);
        Error::io(what)(e)
    })
}

/// Step 5: the replica's configuration in the new data directory. Returns
/// the primary's `postgresql.auto.conf` settings left out.
fn configure(config: &HaConfig, state: &Facts) -> Result<Vec<String>> {
    // Written through a descriptor of the copy keyferry created, never by
    // the path (which the server's account can point elsewhere).
    let data = open_data(&config.pg_data, state.staging_id)?;
    if state.had_data {
        for name in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
            let theirs = state.old.join(name);
            let kept = datafile::read(&theirs)
                .map_err(Error::io(format!("cannot read {}", theirs.display())))?;
            if let Some(kept) = kept {
                data.put(name, &kept).map_err(Error::io(format!(
                    "cannot write {}",
                    config.pg_data.join(name).display()
                )))?;
            }
        }
    } else {
        // A fresh node has no configuration of its own: the primary's
        // would make the server listen on the primary's address.
        let conf = "postgresql.conf";
        if let Ok(Some(text)) = data.read_text(conf) {
            let (from, to) = (config.primary.to_string(), config.secondary.to_string());
            if let Some(rebound) = standby::rebind_listen(&text, &from, &to) {
                write_owned(&data, conf, rebound.as_bytes())?;
            }
        }
    }
    let own = state.had_data.then_some(state.old.as_path());
    let dropped = autoconf::replace_copied(&data, own).map_err(Error::io(format!(
        "cannot write {}",
        config.pg_data.join(autoconf::FILE).display()
    )))?;
    write_standby(config, &data, config.primary, state.slot.as_deref())?;
    Ok(dropped)
}

/// Steps 5 to 7.
fn finish(
    cx: &Cx<'_>,
    obs: &mut dyn Observer,
    mut change: Change<'_>,
    state: &Facts,
    password: &Zeroizing<String>,
) -> Result<BootstrapReport> {
    let (home, config, server, opts) = (cx.home, &cx.config, &cx.server, cx.opts);
    obs.step("configuring the new data directory as a replica");
    let dropped = configure(config, state).map_err(|e| {
        step_error(
            "writing the standby configuration",
            e.to_string(),
            "fix the file system problem, then `keyferry ha bootstrap --resume`",
        )
    })?;
    obs.step("starting the replica");
    start_step(
        &mut change,
        server,
        "read the server's log, fix the cause, then run the bootstrap again",
    )?;
    obs.step(&format!(
        "waiting (up to {} s) until the replica streams and has caught up with the primary",
        opts.timeout.as_secs()
    ));
    let caught_up = wait_caught_up(config, password, opts.connect_timeout, opts.timeout)?;
    autoconf::check_listening(config.secondary.ip(), config.pg_port, opts.connect_timeout)
        .map_err(|e| step_error("the final check", e, "set listen_addresses in this node's postgresql.conf to include its address, then run the bootstrap again"))?;
    let control = pg::controldata(&config.pg_bin, &config.pg_data).ok();
    let mut report = report_base(config);
    report.bytes_copied = state.bytes_copied;
    report.slot = state.slot.clone();
    report.caught_up_to = Some(caught_up.clone());
    report.dropped_settings = dropped;
    report.system_identifier = control.as_ref().and_then(|c| c.system_identifier.clone());
    report.timeline = control.as_ref().and_then(|c| c.timeline);
    if state.had_data && state.old.exists() {
        report.old_data_bytes = Some(tree_size(&state.old));
        report.remove_old = Some(platform::remove_command(&state.old));
        report.old_data = Some(state.old.clone());
    }
    for (k, v) in [
        (
            "system_identifier",
            Value::from(report.system_identifier.clone()),
        ),
        ("timeline", Value::from(report.timeline)),
        ("bytes_copied", Value::from(report.bytes_copied)),
        (
            "old_data",
            Value::from(report.old_data.as_ref().map(|p| p.display().to_string())),
        ),
        ("slot", Value::from(report.slot.clone())),
        ("caught_up_to", Value::from(caught_up)),
        (
            "dropped_settings",
            Value::from(report.dropped_settings.clone()),
        ),
    ] {
        change.set_detail(k, v);
    }
    // A node that lost the primary role is a replica again; the status
    // below is read with the ha.toml just written, not the demoted one.
    let config = &if config.demoted {
        super::roles::clear_demoted(&mut change, home, config)?
    } else {
        config.clone()
    };
    let receipt = change.finish()?;
    report.audited = receipt.audited;
    let creds = Credentials::Given(Zeroizing::new(password.as_bytes().to_vec()));
    report.status = Some(super::status::status_with(
        home,
        config,
        &creds,
        &super::status::StatusOptions::defaults(opts.connect_timeout),
        Vec::new(),
    ));
    report.mode = if opts.mode == Mode::Resume {
        "resumed"
    } else {
        "bootstrapped"
    };
    Ok(report)
}

/// Bytes under `dir`, not following symbolic links.
pub(crate) fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// The summary of a report, as the operator reads it.
pub(crate) fn summary(report: &BootstrapReport) -> Vec<String> {
    let mut lines = Vec::new();
    if report.mode == "aborted" {
        lines.push(format!(
            "the interrupted bootstrap was undone: {} is as it was before it",
            report.pg_data.display()
        ));
        if let Some(slot) = &report.slot {
            lines.push(format!(
                "the replication slot {slot} may remain on the primary (`keyferry ha status` shows it); drop it there with SELECT pg_drop_replication_slot('{slot}') if nothing uses it"
            ));
        }
        return lines;
    }
    lines.push(format!(
        "{} is now a replica of {}: {} copied, caught up to {}",
        report.pg_data.display(),
        report.primary,
        human_bytes(report.bytes_copied),
        report.caught_up_to.as_deref().unwrap_or("?")
    ));
    if let (Some(old), Some(size)) = (&report.old_data, report.old_data_bytes) {
        lines.push(format!(
            "the previous data directory is kept at {} ({}); once the new replica is trusted, remove it with: {}",
            old.display(),
            human_bytes(size),
            report.remove_old.as_deref().unwrap_or("")
        ));
    }
    if !report.dropped_settings.is_empty() {
        lines.push(format!(
            "not taken from the primary's postgresql.auto.conf (this node keeps its own server settings): {}",
            report.dropped_settings.join(", ")
        ));
    }
    lines.push(format!(
        "the replication password is in {} (readable by the server's account only)",
        report.passfile.display()
    ));
    lines
}

#[cfg(unix)]
mod platform {
    use std::io;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use crate::ha::datafile::Dir;

    /// The directory `dir` owned by the owner and group of `like`, with
    /// `mode` (through its descriptor, not its path).
    pub(super) fn own_like(dir: &Dir, like: &Path, mode: u32) -> io::Result<()> {
        let meta = std::fs::metadata(like)?;
        dir.set_owner(meta.uid(), meta.gid(), mode)
    }

    /// PostgreSQL refuses to run as root: a copy owned by root could never
    /// be started.
    pub(super) fn refuse_root_owned(owner_ref: &Path) -> crate::error::Result<()> {
        let uid = std::fs::metadata(owner_ref)
            .map_err(crate::error::Error::io(format!(
                "cannot read {}",
                owner_ref.display()
            )))?
            .uid();
        if uid == 0 {
            return Err(crate::error::Error::Refused(format!(
                "{} belongs to root, and PostgreSQL cannot run as root: give it to the server's account (chown postgres: {}), then run the bootstrap again",
                owner_ref.display(),
                owner_ref.display()
            )));
        }
        Ok(())
    }

    pub(super) fn remove_command(dir: &Path) -> String {
        format!(
            "rm -rf -- '{}'",
            dir.display().to_string().replace('\'', r"'\''")
        )
    }
}

#[cfg(windows)]
mod platform {
    use std::io;
    use std::path::Path;

    /// New files inherit the data directory's access list on Windows.
    pub(super) fn own_like(
        _dir: &crate::ha::datafile::Dir,
        _like: &Path,
        _mode: u32,
    ) -> io::Result<()> {
        Ok(())
    }

    /// The server's account is the service's, not the file owner's.
    pub(super) fn refuse_root_owned(_owner_ref: &Path) -> crate::error::Result<()> {
        Ok(())
    }

    pub(super) fn remove_command(dir: &Path) -> String {
        format!(
            "Remove-Item -Recurse -Force -LiteralPath '{}'",
            dir.display().to_string().replace('\'', "''")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_through_the_journal() {
        let state = State::new(
            BootPhase::Copied,
            Facts {
                staging: "/d/main.keyferry-new-20261201T000000Z".into(),
                old: "/d/main.old-20261201T000000Z".into(),
                had_data: true,
                was_running: true,
                slot: Some("pam_b".into()),
                confirmed: true,
                bytes_copied: 42,
                staging_id: Some(DirId { dev: 1, ino: 2 }),
            },
        );
        let back: State = serde_json::from_value(serde_json::to_value(&state).unwrap()).unwrap();
        assert_eq!(back.data.old, state.data.old);
        assert_eq!(back.phase(), BootPhase::Copied);
        assert!(back.data.was_running);
        assert_eq!(back.data.slot.as_deref(), Some("pam_b"));
        assert_eq!(back.data.staging_id, Some(DirId { dev: 1, ino: 2 }));
        // A journal from before the copy's identity was recorded still loads.
        let mut old = serde_json::to_value(&state).unwrap();
        old["data"].as_object_mut().unwrap().remove("staging_id");
        let back: State = serde_json::from_value(old).unwrap();
        assert_eq!(back.data.staging_id, None);
        assert!(back.allows(BootPhase::Swapped) && !back.allows(BootPhase::Copying));
    }

    #[cfg(unix)]
    #[test]
    fn the_removal_command_quotes_the_path() {
        assert_eq!(
            platform::remove_command(Path::new("/d/it's.old-1")),
            r"rm -rf -- '/d/it'\''s.old-1'"
        );
    }
}
