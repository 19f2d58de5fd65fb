//! `keyferry ha switchover`: the planned exchange of roles, run on the
//! current primary while both nodes are up. No committed transaction is
//! lost: the primary is stopped cleanly, and the replica is promoted only
//! once it has replayed the primary's final (shutdown) checkpoint, so it
//! holds every commit the primary ever acknowledged.
//!
//! The steps, one held journaled change ([`crate::node::Node::begin_held`]):
//!
//! 1. checks, changing nothing: this node's server runs as primary (read
//!    through its Unix socket as the data directory's owner); the peer's
//!    runs as a replica, streams from it, is less than `--max-lag` behind,
//!    and the replication user may execute `pg_promote`;
//! 2. the replication password into the 0600 password file beside the data
//!    directory, naming the peer (undo: the previous file back);
//! 3. the next generation's row into `keyferry_pair` on this server (undo:
//!    delete it once the server runs again) — written before the stop, it
//!    reaches the replica inside the WAL the replica must replay anyway;
//! 4. stop the local server (fast: clients are disconnected, the shutdown
//!    checkpoint is written and streamed) (undo: start it again); read the
//!    checkpoint's LSN with `pg_controldata`; wait until the replica has
//!    received and replayed past it;
//! 5. `ha.toml` marks this node demoted (so `ha guard` refuses to start it
//!    as primary whatever happens next); the journal enters `promoting`,
//!    the point of no return, *before* `pg_promote()` is sent to the peer
//!    as the replication user: the undos above are forgotten in that same
//!    journal write, and from here only `--resume` (forward) is offered. A
//!    promotion that is not confirmed (its wait ran out, the connection
//!    broke, the peer cannot be read) leaves this node stopped and
//!    demoted, the journal kept, and exits 18 (in doubt);
//! 6. the slot the old primary will stream through (the one the replica
//!    used) created on the new primary; this node configured as a standby
//!    of the peer (`standby.signal`, `primary_conninfo` naming the password
//!    file) and started; the slot left on it dropped; wait until the new
//!    primary sees it streaming; `ha.toml` rewritten (roles swapped, the
//!    new generation); the audit record.
//!
//! The phases ([`SwitchPhase`]) and their one transition table:
//! `begun` → `stopped` → `promoting` → `promoted`; `promoting` and
//! `promoted` are past the point of no return.
//!
//! Invariants: a failure (or `--abort`) before `promoting` leaves the old
//! primary running as primary and everything else as it was; from
//! `promoting` on, nothing ever starts the old primary as a primary (`--abort`
//! is refused, a failure keeps the journal and names `--resume`); at no
//! moment do both servers accept writes (the old primary is stopped before
//! the promotion and only ever started again with `standby.signal`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use super::check::credentials;
use super::effects::{LocalServer, PairSteps};
use super::require_config;
use super::roles::{self, other, peer_sql, SWITCHOVER};
use super::steps::{self, passfile_path, write_passfile, write_standby, Pair};
use crate::error::{Error, Result};
use crate::ha::config::HaConfig;
use crate::ha::generation::{self, Record};
use crate::ha::preflight::Side;
use crate::node::{Change, HeldPhase, Home, Machine, Reopen};
use crate::ops::details;
use crate::ops::progress::Observer;
use crate::pg::{self, Credentials};
use crate::secret::PasswordSource;

/// The journal's name for a switchover (and the audit record's action).
pub(crate) const ACTION: &str = "ha-switchover";

const RESUME: &str = "keyferry ha switchover --resume";
const ABORT: &str = "keyferry ha switchover --abort";

/// A switchover's context.
type Cx<'a> = Pair<'a, SwitchoverOptions>;

/// Default `--max-lag`: 16 MiB.
pub(crate) const DEFAULT_MAX_LAG: &str = "16MiB";

pub(crate) use super::bootstrap::Mode;

/// What `ha switchover` was given.
#[derive(Debug, Clone)]
pub(crate) struct SwitchoverOptions {
    pub mode: Mode,
    pub password: Option<PasswordSource>,
    /// Refuse when the replica is further behind than this many bytes.
    pub max_lag: u64,
    pub dry_run: bool,
    /// Bounds each connection attempt.
    pub connect_timeout: Duration,
    /// Bounds the server's stop and start, the catch-up and the streaming
    /// check.
    pub timeout: Duration,
}

/// The phases of a switchover (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SwitchPhase {
    /// Checked; the password file and the generation row may be written.
    Begun,
    /// The old primary is stopped cleanly; its shutdown checkpoint is known.
    Stopped,
    /// The promotion is being (or was) sent: no way back.
    Promoting,
    /// The peer is out of recovery: only this node's following is left.
    Promoted,
}

impl HeldPhase for SwitchPhase {
    const VERSION: u32 = 2;
    const TRANSITIONS: &'static [(Self, Self)] = &[
        (SwitchPhase::Begun, SwitchPhase::Stopped),
        (SwitchPhase::Stopped, SwitchPhase::Promoting),
        (SwitchPhase::Promoting, SwitchPhase::Promoted),
    ];
    fn no_return(self) -> bool {
        matches!(self, SwitchPhase::Promoting | SwitchPhase::Promoted)
    }
    fn name(self) -> &'static str {
        match self {
            SwitchPhase::Begun => "begun",
            SwitchPhase::Stopped => "stopped",
            SwitchPhase::Promoting => "promoting",
            SwitchPhase::Promoted => "promoted",
        }
    }
}

/// What a switchover keeps in the journal besides its phase (no secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Facts {
    peer: Side,
    generation: u64,
    slot: Option<String>,
    checkpoint_lsn: Option<String>,
}

type State = Machine<SwitchPhase, Facts>;

/// What a switchover did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SwitchoverReport {
    pub mode: &'static str,
    pub dry_run: bool,
    /// The steps, as the operator reads them.
    pub plan: Vec<String>,
    pub old_primary: String,
    pub new_primary: String,
    pub generation: u64,
    /// The replica's lag when the switchover began, in bytes.
    pub lag_bytes: Option<u64>,
    /// The old primary's shutdown checkpoint, which the new primary replayed.
    pub checkpoint_lsn: Option<String>,
    pub slot: Option<String>,
    /// Notes (`ha.toml` brought up to date, a slot dropped).
    pub notes: Vec<String>,
    pub audited: bool,
    /// Seconds the clean stop of the old primary took.
    pub stop_seconds: Option<f64>,
    /// Seconds from the stop's end until the replica had replayed its
    /// shutdown checkpoint.
    pub catch_up_seconds: Option<f64>,
    /// Seconds `pg_promote()` took.
    pub promote_seconds: Option<f64>,
}

/// Runs, resumes or aborts a switchover; `step` hears each step as it
/// begins.
pub(crate) fn switchover(
    home: &Home,
    opts: &SwitchoverOptions,
    obs: &mut dyn Observer,
) -> Result<SwitchoverReport> {
    let config = require_config(home)?;
    let mut facts = Vec::new();
    let creds = credentials(&config, opts.password.as_ref(), &mut facts)?;
    match opts.mode {
        Mode::Run => {
            let (config, note) = roles::sync(home, config, &creds, opts.connect_timeout)?;
            let cx = Pair::new(home, config, opts.timeout, opts);
            let mut report = fresh(&cx, obs, &creds)?;
            report.notes.splice(0..0, note);
            Ok(report)
        }
        Mode::Abort => {
            let mut node = home.open(false)?;
            let Some(change) = node.reopen_held(ACTION, Reopen::Abort)? else {
                return Err(nothing_interrupted());
            };
            let state: State = change.load()?;
            let peer = state.data.peer;
            if state.phase().no_return() {
                change.suspend();
                return Err(Error::InDoubt(format!(
                    "the interrupted switchover sent the promotion to {}: it cannot be undone (that could make two primaries); finish it with `{RESUME}`",
                    peer.address(&config)
                )));
            }
            obs.step(
                "undoing the interrupted switchover: starting this node's server again as primary",
            );
            change.abort()?;
            let mut report = report_base(&config, peer, state.data.generation, "aborted");
            report.plan =
                vec!["the old primary runs again as primary; nothing else changed".into()];
            Ok(report)
        }
        Mode::Resume => {
            let mut node = home.open(false)?;
            let Some(mut change) = node.reopen_held(ACTION, Reopen::Resume)? else {
                return Err(nothing_interrupted());
            };
            let mut state: State = change.load()?;
            if !state.phase().no_return() {
                obs.step("the promotion had not been sent: undoing the interrupted switchover and starting over");
                change.abort()?;
                drop(node);
                // Before any sync: until the replica streams again it may
                // still hold the generation row this run wrote and its
                // undo deleted, and following that would swap the roles
                // in ha.toml for a switchover that never happened.
                obs.step("waiting until the replica streams from this node again");
                wait_replica_back(&config, state.data.peer, opts);
                let (config, _) = roles::sync(home, config, &creds, opts.connect_timeout)?;
                return fresh(&Pair::new(home, config, opts.timeout, opts), obs, &creds);
            }
            if state.phase() == SwitchPhase::Promoting {
                obs.step(&format!(
                    "finishing the promotion of {}",
                    state.data.peer.address(&config)
                ));
                if let Err(e) = promote(&config, state.data.peer, &creds, opts) {
                    change.suspend();
                    return Err(in_doubt(&config, state.data.peer, &e));
                }
                change.advance(&mut state, SwitchPhase::Promoted)?;
            }
            obs.step(
                "resuming after the promotion: turning this node into a replica of the new primary",
            );
            let password = replication_password(&config, state.data.peer, &creds)?;
            let cx = Pair::new(home, config, opts.timeout, opts);
            forward(&cx, obs, change, &state, &password, &creds, "resumed")
        }
    }
}

/// After an undo restarted this node's server, its replica reconnects
/// within seconds; the fresh run's checks need it streaming, and the sync
/// before them needs it to have replayed the undo. Bounded by `--timeout`;
/// the checks that follow say what is wrong if it never does.
fn wait_replica_back(config: &HaConfig, peer: Side, opts: &SwitchoverOptions) {
    let peer_addr = peer.address(config).to_string();
    let deadline = Instant::now() + opts.timeout;
    // Replayed up to here: past the undo's deletion of the generation row.
    let mut target: Option<String> = None;
    while Instant::now() < deadline {
        let caught_up = roles::local_admin(config, opts.connect_timeout).is_ok_and(|(mut c, _)| {
            if target.is_none() {
                target = c
                    .query_one("SELECT pg_current_wal_lsn()::text", &[])
                    .ok()
                    .map(|r| r.get(0));
            }
            let Some(lsn) = &target else { return false };
            c.query_one(
                "SELECT count(*) > 0 FROM pg_stat_replication WHERE host(client_addr) = $1 \
                 AND state = 'streaming' AND replay_lsn >= $2::text::pg_lsn",
                &[&peer_addr, lsn],
            )
            .is_ok_and(|r| r.get::<_, bool>(0))
        });
        if caught_up {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Past the point of no return, the promotion could not be confirmed.
fn in_doubt(config: &HaConfig, peer: Side, why: &Error) -> Error {
    Error::InDoubt(format!(
        "the promotion of {peer_addr} was sent but not confirmed ({why}); {peer_addr} may be the primary now, so this node's server stays stopped and marked demoted; once {peer_addr} is reachable, finish with `{RESUME}`",
        peer_addr = peer.address(config)
    ))
}

fn nothing_interrupted() -> Error {
    Error::Usage(
        "there is no interrupted switchover on this node: run `keyferry ha switchover` to start one"
            .into(),
    )
}

fn step_error(step: &str, message: impl std::fmt::Display, fix: &str) -> Error {
    Error::Step {
        op: "ha switchover",
        step: step.to_owned(),
        cause: message.to_string(),
        fix: fix.to_owned(),
    }
}

fn report_base(
    config: &HaConfig,
    peer: Side,
    generation: u64,
    mode: &'static str,
) -> SwitchoverReport {
    SwitchoverReport {
        mode,
        dry_run: false,
        plan: Vec::new(),
        old_primary: other(peer).address(config).to_string(),
        new_primary: peer.address(config).to_string(),
        generation,
        lag_bytes: None,
        checkpoint_lsn: None,
        slot: None,
        notes: Vec::new(),
        audited: false,
        stop_seconds: None,
        catch_up_seconds: None,
        promote_seconds: None,
    }
}

/// The replication password, for the password file that names the peer.
fn replication_password(
    config: &HaConfig,
    peer: Side,
    creds: &Credentials,
) -> Result<Zeroizing<String>> {
    let host = peer.address(config).to_string();
    let bytes = creds
        .for_conn(&host, config.pg_port, "replication", &config.replication_user)
        .ok_or_else(|| {
            Error::Usage(format!(
                "no password for the replication user {}: pass --password-file, --password-fd or --password-env, or add `{host}:{}:replication:{}:PASSWORD` to ~/.pgpass (mode 0600)",
                config.replication_user, config.pg_port, config.replication_user
            ))
        })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::Usage("the replication password is not valid UTF-8".into()))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// What the checks found.
struct Checked {
    lag: u64,
    slot: Option<String>,
    generation: u64,
}

/// Step 1: nothing is changed.
fn check(
    config: &HaConfig,
    this: Side,
    peer: Side,
    creds: &Credentials,
    opts: &SwitchoverOptions,
) -> Result<Checked> {
    let (mut local, lt) = roles::local_admin(config, opts.connect_timeout).map_err(|e| {
        step_error(
            "reading this node's server",
            e,
            "run `ha switchover` on the current primary, as root or as the data directory's owner, with the server running",
        )
    })?;
    let fail_local = |e: postgres::Error| {
        step_error(
            "reading this node's server",
            pg::from_postgres(&lt, e),
            "see `keyferry ha status`",
        )
    };
    if pg::in_recovery(&mut local, &lt)
        .map_err(|e| step_error("reading this node's server", e, "see `keyferry ha status`"))?
    {
        return Err(Error::Refused(format!(
            "this node ({}) runs as a replica: run `keyferry ha switchover` on the primary ({})",
            this.address(config),
            peer.address(config)
        )));
    }
    let peer_addr = peer.address(config).to_string();
    let row = local
        .query_opt(
            "SELECT s.state, greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), s.replay_lsn), 0)::bigint, r.slot_name::text \
             FROM pg_stat_replication s LEFT JOIN pg_replication_slots r ON r.active_pid = s.pid \
             WHERE host(s.client_addr) = $1 AND s.application_name <> 'pg_basebackup' \
             ORDER BY s.backend_start LIMIT 1",
            &[&peer_addr],
        )
        .map_err(fail_local)?;
    let Some(row) = row else {
        return Err(Error::Refused(format!(
            "the replica {peer_addr} does not stream from this node: a switchover needs a streaming replica (see `keyferry ha status`)"
        )));
    };
    let state: Option<String> = row.get(0);
    let lag = row
        .get::<_, Option<i64>>(1)
        .and_then(|l| u64::try_from(l).ok());
    let slot: Option<String> = row.get(2);
    if state.as_deref() != Some("streaming") {
        return Err(Error::Refused(format!(
            "the replica {peer_addr} is not streaming (state {}): wait until it has caught up (`keyferry ha status`)",
            state.as_deref().unwrap_or("unknown")
        )));
    }
    let lag = lag.unwrap_or(u64::MAX);
    if lag > opts.max_lag {
        return Err(Error::Refused(format!(
            "the replica {peer_addr} is {} behind, over --max-lag {}: wait until it catches up, or raise --max-lag",
            crate::fmt::human_bytes(lag),
            crate::fmt::human_bytes(opts.max_lag)
        )));
    }
    let table = generation::current(&mut local, &lt)
        .map_err(|e| step_error("reading the pair's generation", e, "see the server's log"))?;
    let generation = config.generation.max(table.map_or(0, |r| r.generation)) + 1;
    let (mut remote, rt) = peer_sql(config, peer, creds, opts.connect_timeout).map_err(|e| {
        let fix = crate::ha::preflight::connection_fix(&e, config, None, false);
        step_error("connecting to the replica as the replication user", e, &fix)
    })?;
    if !pg::in_recovery(&mut remote, &rt)
        .map_err(|e| step_error("reading the replica", e, "see `keyferry ha status`"))?
    {
        return Err(Error::Refused(format!(
            "{peer_addr} runs as a primary too: split brain; see `keyferry ha status` before anything else"
        )));
    }
    let rights = pg::monitor::rights(&mut remote, &rt).map_err(|e| {
        step_error(
            "reading the replication user's rights",
            e,
            "see `keyferry ha check`",
        )
    })?;
    if !rights.promote {
        return Err(Error::Refused(format!(
            "the replication user {user} may not execute pg_promote on the replica, so it cannot be promoted without a superuser password: on the primary, GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO {user}; (it replicates), then run the switchover again",
            user = config.replication_user
        )));
    }
    Ok(Checked {
        lag,
        slot,
        generation,
    })
}

fn fresh(cx: &Cx<'_>, obs: &mut dyn Observer, creds: &Credentials) -> Result<SwitchoverReport> {
    let (home, config, server, opts) = (cx.home, &cx.config, &cx.server, cx.opts);
    let this = roles::this_side(config, "ha switchover")?;
    let peer = other(this);
    obs.step(
        "checking both nodes: this one runs as primary, the replica streams, its lag, its rights",
    );
    let checked = check(config, this, peer, creds, opts)?;
    let password = replication_password(config, peer, creds)?;
    let (this_addr, peer_addr) = (this.address(config), peer.address(config));
    let mut report = report_base(config, peer, checked.generation, "switched");
    report.lag_bytes = Some(checked.lag);
    report.slot = checked.slot.clone();
    report.plan = vec![
        format!("write the replication password file {} naming {peer_addr}", passfile_path(config).display()),
        format!("record generation {} (primary {peer_addr}) in {} on this server", checked.generation, generation::TABLE),
        format!("stop this node's server ({this_addr}) cleanly and read its shutdown checkpoint"),
        format!("wait (up to {} s) until {peer_addr} has replayed past that checkpoint", opts.timeout.as_secs()),
        format!("promote {peer_addr} with pg_promote() as {}", config.replication_user),
        match &checked.slot {
            Some(s) => format!("create the replication slot {s} on {peer_addr}; drop the one left on this node"),
            None => "no replication slot is in use: none to move".into(),
        },
        format!("configure this node as a replica of {peer_addr} (standby.signal, primary_conninfo) and start it; wait until it streams"),
        format!("swap primary and secondary in ha.toml, generation {}", checked.generation),
    ];
    if opts.dry_run {
        report.dry_run = true;
        report.mode = "dry-run";
        return Ok(report);
    }
    let mut node = home.open(false)?;
    let mut change = node.begin_held(
        ACTION,
        details([
            ("old_primary", Value::from(this_addr.to_string())),
            ("new_primary", Value::from(peer_addr.to_string())),
            ("generation", Value::from(checked.generation)),
            ("lag_bytes", Value::from(checked.lag)),
        ]),
        RESUME,
        ABORT,
    )?;
    let mut state = State::new(
        SwitchPhase::Begun,
        Facts {
            peer,
            generation: checked.generation,
            slot: checked.slot.clone(),
            checkpoint_lsn: None,
        },
    );
    change.save(&state)?;

    obs.step("writing the replication password file");
    write_passfile(
        &mut change,
        config,
        peer.address(config),
        &password,
        &config.pg_data,
    )?;

    obs.step(&format!("recording generation {}", checked.generation));
    let record = Record {
        generation: checked.generation,
        primary_addr: peer_addr.to_string(),
        changed_at: None,
        by_node: config.node.clone(),
        action: SWITCHOVER.into(),
    };
    change.record_generation(
        server,
        LocalServer {
            socket_dir: config.pg_socket_dir.as_deref(),
            port: config.pg_port,
            connect_timeout: opts.connect_timeout,
        },
        &record,
        &config.replication_user,
    )?;

    obs.step("stopping this node's server cleanly");
    let stop_began = Instant::now();
    change.stop_server(server, &|e| {
        step_error(
            "stopping this node's server",
            e,
            "nothing was promoted; read the server's log",
        )
    })?;
    let stop_seconds = stop_began.elapsed().as_secs_f64();
    let catch_up_began = Instant::now();
    let control = pg::controldata(&config.pg_bin, &config.pg_data).map_err(|e| {
        step_error(
            "reading the shutdown checkpoint (pg_controldata)",
            e,
            "check pg_bin in ha.toml",
        )
    })?;
    let ckpt = match (control.state.as_str(), control.checkpoint_lsn) {
        ("shut down", Some(lsn)) => lsn.to_string(),
        (other_state, _) => {
            return Err(step_error(
                "checking the clean shutdown",
                format!("the cluster state is \"{other_state}\", not \"shut down\""),
                "the old primary was started again; read its log",
            ))
        }
    };
    state.data.checkpoint_lsn = Some(ckpt.clone());
    change.advance(&mut state, SwitchPhase::Stopped)?;

    obs.step(&format!(
        "waiting until {peer_addr} has replayed the shutdown checkpoint {ckpt}"
    ));
    wait_replayed(config, peer, creds, opts, &ckpt)?;

    // Before the promotion is sent: this node is demoted (the guard keeps
    // it from starting as primary), then the journal passes the point of
    // no return. A crash from here on leaves a stopped, demoted node and a
    // journal that only `--resume` takes up.
    let mut demoted = config.clone();
    demoted.demoted = true;
    roles::save_config(&mut change, home, &demoted)?;
    obs.step(&format!("promoting {peer_addr}"));
    change.advance(&mut state, SwitchPhase::Promoting)?;
    let catch_up_seconds = catch_up_began.elapsed().as_secs_f64();
    let promote_began = Instant::now();
    if let Err(e) = promote(config, peer, creds, opts) {
        change.suspend();
        return Err(in_doubt(config, peer, &e));
    }
    let promote_seconds = promote_began.elapsed().as_secs_f64();
    change.advance(&mut state, SwitchPhase::Promoted)?;
    forward(cx, obs, change, &state, &password, creds, "switched").map(|mut r| {
        r.lag_bytes = Some(checked.lag);
        r.plan = report.plan;
        r.stop_seconds = Some(stop_seconds);
        r.catch_up_seconds = Some(catch_up_seconds);
        r.promote_seconds = Some(promote_seconds);
        r
    })
}

/// Step 4's wait: the replica received and replayed past `ckpt`.
fn wait_replayed(
    config: &HaConfig,
    peer: Side,
    creds: &Credentials,
    opts: &SwitchoverOptions,
    ckpt: &str,
) -> Result<()> {
    let deadline = Instant::now() + opts.timeout;
    let mut client = None;
    let mut last = String::new();
    loop {
        if client.is_none() {
            match peer_sql(config, peer, creds, opts.connect_timeout) {
                Ok(c) => client = Some(c),
                Err(e) => last = e.to_string(),
            }
        }
        if let Some((c, t)) = client.as_mut() {
            match c.query_one(
                "SELECT coalesce(pg_last_wal_receive_lsn() > $1::text::pg_lsn \
                                 AND pg_last_wal_replay_lsn() > $1::text::pg_lsn, false)",
                &[&ckpt],
            ) {
                Ok(row) if row.get::<_, bool>(0) => return Ok(()),
                Ok(_) => last = "not replayed yet".into(),
                Err(e) => {
                    last = pg::from_postgres(t, e).to_string();
                    client = None;
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(step_error(
                "waiting for the replica to replay the shutdown checkpoint",
                format!("not done after {} s: {last}", opts.timeout.as_secs()),
                "nothing was promoted and the old primary was started again; read the replica's log, then run the switchover again",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Step 5: `pg_promote(wait => true)` on the peer, then confirmed: `Ok`
/// only when the peer is seen out of recovery. Anything else (the wait ran
/// out — the promotion may still complete —, the connection broke, the
/// peer cannot be read) is an error the caller treats as "may have
/// promoted". Sending it again to a peer that is promoting or promoted is
/// harmless, so `--resume` simply calls this again.
fn promote(
    config: &HaConfig,
    peer: Side,
    creds: &Credentials,
    opts: &SwitchoverOptions,
) -> Result<()> {
    let wait = i32::try_from(opts.timeout.as_secs().clamp(1, 3600)).unwrap_or(60);
    let outcome = peer_sql(config, peer, creds, opts.connect_timeout).and_then(|(mut c, t)| {
        if !pg::in_recovery(&mut c, &t)? {
            return Ok(true);
        }
        c.query_one("SELECT pg_promote(true, $1)", &[&wait])
            .map(|row| row.get::<_, bool>(0))
            .map_err(|e| pg::from_postgres(&t, e))
    });
    if let Ok(true) = outcome {
        return Ok(());
    }
    let still = peer_sql(config, peer, creds, opts.connect_timeout)
        .and_then(|(mut c, t)| pg::in_recovery(&mut c, &t));
    match (still, outcome) {
        (Ok(false), _) => Ok(()),
        (Ok(true), Ok(_)) => Err(step_error(
            "promoting the replica (pg_promote)",
            format!("it did not finish within {wait} s"),
            "read the replica's log",
        )),
        (_, Err(e)) | (Err(e), Ok(_)) => Err(step_error(
            "promoting the replica (pg_promote)",
            e,
            "make the peer reachable",
        )),
    }
}

/// Step 6: from the promotion on, forward only. Any failure keeps the
/// journal and says how to finish.
fn forward(
    cx: &Cx<'_>,
    obs: &mut dyn Observer,
    mut change: Change<'_>,
    state: &State,
    password: &Zeroizing<String>,
    creds: &Credentials,
    mode: &'static str,
) -> Result<SwitchoverReport> {
    let (home, config, server, opts) = (cx.home, &cx.config, &cx.server, cx.opts);
    let facts = &state.data;
    let peer = facts.peer;
    let this = other(peer);
    let mut notes = Vec::new();
    let result = (|| -> Result<()> {
        if let Some(slot) = &facts.slot {
            obs.step(&format!(
                "creating the replication slot {slot} on the new primary"
            ));
            let (mut c, t) = peer_sql(config, peer, creds, opts.connect_timeout)
                .map_err(|e| step_error("connecting to the new primary", e, "make it reachable"))?;
            c.execute(
                "SELECT pg_create_physical_replication_slot($1, true) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[slot],
            )
            .map_err(|e| {
                step_error(
                    "creating the replication slot",
                    pg::from_postgres(&t, e),
                    "the replication user needs REPLICATION",
                )
            })?;
        }
        obs.step("configuring this node as a replica of the new primary");
        write_passfile(
            &mut change,
            config,
            peer.address(config),
            password,
            &config.pg_data,
        )?;
        let data = steps::open_data(&config.pg_data, None)?;
        write_standby(config, &data, peer.address(config), facts.slot.as_deref())?;
        obs.step("starting this node as a replica");
        server.start().map_err(|e| {
            step_error(
                "starting this node as a replica",
                e,
                "read the server's log",
            )
        })?;
        if let Some(slot) = &facts.slot {
            match steps::drop_local_slot(config, slot, opts.connect_timeout) {
                Ok(true) => notes.push(format!("dropped the replication slot {slot} left on this node")),
                Ok(false) => {}
                Err(e) => notes.push(format!(
                    "the replication slot {slot} left on this node could not be dropped ({e}): drop it with SELECT pg_drop_replication_slot('{slot}')"
                )),
            }
        }
        obs.step("waiting until this node streams from the new primary");
        wait_streaming(config, this, peer, creds, opts)?;
        let mut next = config.clone();
        if peer == Side::Secondary {
            std::mem::swap(&mut next.primary, &mut next.secondary);
        }
        next.generation = facts.generation;
        next.demoted = false;
        roles::save_config(&mut change, home, &next)?;
        change.set_detail("checkpoint_lsn", Value::from(facts.checkpoint_lsn.clone()));
        change.set_detail("slot", Value::from(facts.slot.clone()));
        Ok(())
    })();
    if let Err(e) = result {
        change.suspend();
        return Err(Error::InDoubt(format!(
            "{e}; {} is the primary now (promoted) and this node stays demoted; finish the switchover with `{RESUME}`",
            peer.address(config)
        )));
    }
    let receipt = change.finish()?;
    let mut report = report_base(config, peer, facts.generation, mode);
    report.checkpoint_lsn = facts.checkpoint_lsn.clone();
    report.slot = facts.slot.clone();
    report.notes = notes;
    report.audited = receipt.audited;
    Ok(report)
}

/// The new primary sees this node streaming.
fn wait_streaming(
    config: &HaConfig,
    this: Side,
    peer: Side,
    creds: &Credentials,
    opts: &SwitchoverOptions,
) -> Result<()> {
    let me = this.address(config).to_string();
    let deadline = Instant::now() + opts.timeout;
    let mut last;
    loop {
        let seen = peer_sql(config, peer, creds, opts.connect_timeout).and_then(|(mut c, t)| {
            c.query_one(
                "SELECT coalesce(bool_or(state = 'streaming'), false) FROM pg_stat_replication WHERE host(client_addr) = $1",
                &[&me],
            )
            .map(|r| r.get::<_, bool>(0))
            .map_err(|e| pg::from_postgres(&t, e))
        });
        match seen {
            Ok(true) => return Ok(()),
            Ok(false) => last = "the new primary does not see this node streaming yet".into(),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(step_error(
                "checking that this node streams",
                format!("not after {} s: {last}", opts.timeout.as_secs()),
                "read this node's server log (pg_hba.conf on the new primary must let the replication user in from this address)",
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The report as the operator reads it.
pub(crate) fn summary(r: &SwitchoverReport) -> Vec<String> {
    let mut lines = Vec::new();
    match r.mode {
        "dry-run" => {
            lines.push(format!(
                "would switch over: {} -> {} (replica {} behind), generation {}:",
                r.old_primary,
                r.new_primary,
                crate::fmt::human_bytes(r.lag_bytes.unwrap_or(0)),
                r.generation
            ));
            lines.extend(r.plan.iter().enumerate().map(|(i, s)| format!("  {}. {s}", i + 1)));
        }
        "aborted" => lines.push(format!(
            "the interrupted switchover was undone: {} runs as primary again",
            r.old_primary
        )),
        _ => lines.push(format!(
            "switched over: {} is the primary, {} streams from it; generation {}{}",
            r.new_primary,
            r.old_primary,
            r.generation,
            r.checkpoint_lsn
                .as_deref()
                .map(|c| format!(" (the old primary's shutdown checkpoint {c} was replayed before the promotion)"))
                .unwrap_or_default()
        )),
    }
    lines.extend(r.notes.iter().map(|n| format!("note: {n}")));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_through_the_journal() {
        let state = State::new(
            SwitchPhase::Promoting,
            Facts {
                peer: Side::Primary,
                generation: 4,
                slot: Some("pam_b".into()),
                checkpoint_lsn: Some("0/3000028".into()),
            },
        );
        let back: State = serde_json::from_value(serde_json::to_value(&state).unwrap()).unwrap();
        assert_eq!(back.phase(), SwitchPhase::Promoting);
        assert_eq!(back.data.peer, Side::Primary);
        assert_eq!(back.data.generation, 4);
    }

    #[test]
    fn the_promotion_is_past_the_point_of_no_return() {
        assert!(!SwitchPhase::Stopped.no_return());
        assert!(SwitchPhase::Promoting.no_return());
        let m = State::new(
            SwitchPhase::Begun,
            Facts {
                peer: Side::Primary,
                generation: 1,
                slot: None,
                checkpoint_lsn: None,
            },
        );
        // The promotion cannot be reached without the clean stop.
        assert!(!m.allows(SwitchPhase::Promoting));
        assert!(m.allows(SwitchPhase::Stopped));
    }
}
