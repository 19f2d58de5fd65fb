//! `keyferry ha failover`: the unplanned promotion of the replica, run on
//! it while the primary is down.
//!
//! The old primary is looked at by the same bounded look, classifier and
//! rule as the start guard ([`crate::ha::evidence`]): the failover goes ahead only
//! on positive evidence that the old primary does not accept writes (its
//! host says nothing listens on its port, or it runs as a replica).
//! Refused while it accepts writes (a switchover's job: two primaries
//! would split the pair's data), while it answers without saying what it
//! is (a wrong password, "too many clients", a silent socket: it is
//! alive), and while it gives no answer at all (a dead host and a cut
//! network look the same). `--force` overrides each and says what it
//! risks.
//!
//! Before promoting it reports what can be lost: the replica's last
//! received WAL position against the last primary position this node
//! recorded (`pair-history.json`, written by `ha status`). Then, as one
//! held journaled change with the phases [`FailPhase`] (`begun` →
//! `promoting` → `promoted`; the journal enters `promoting`, the point of
//! no return, before `pg_promote()` is sent through the local socket): the
//! promotion, confirmed by reading the server out of recovery; the next
//! generation's row written on the new primary (which also proves it
//! accepts writes), the slot the old primary will stream through once it
//! rejoins created, `ha.toml` with the roles swapped and the new
//! generation, the audit record. A promotion that is not confirmed within
//! its wait, or a failure after it, keeps the journal and exits 18;
//! `ha failover --resume` finishes (there is no abort: a promotion cannot
//! be taken back).
//!
//! The old primary, when it comes back, learns the new generation from
//! this node's table (its `ha guard`, or any `ha` command there) and is
//! kept from starting as primary until `ha rejoin`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::check::credentials;
use super::require_config;
use super::roles::{self, other, FAILOVER};
use super::steps::Pair;
use crate::error::{Error, Result};
use crate::ha::config::HaConfig;
use crate::ha::evidence::{self, Evidence};
use crate::ha::generation::{self, Record};
use crate::ha::history;
use crate::ha::preflight::Side;
use crate::node::{HeldPhase, Home, Machine, Reopen};
use crate::ops::details;
use crate::ops::progress::Observer;
use crate::pg::{self, Credentials};
use crate::secret::PasswordSource;

/// The audit record's action.
pub(crate) const ACTION: &str = "ha-failover";
const RESUME: &str = "keyferry ha failover --resume";
const NO_ABORT: &str = "nothing (a promotion cannot be undone)";

/// The phases of a failover (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FailPhase {
    /// Checked and reported; nothing done.
    Begun,
    /// The promotion is being (or was) sent: no way back.
    Promoting,
    /// This node runs out of recovery: the record, the slot and `ha.toml`
    /// are left.
    Promoted,
}

impl HeldPhase for FailPhase {
    const VERSION: u32 = 1;
    const TRANSITIONS: &'static [(Self, Self)] = &[
        (FailPhase::Begun, FailPhase::Promoting),
        (FailPhase::Promoting, FailPhase::Promoted),
    ];
    fn no_return(self) -> bool {
        !matches!(self, FailPhase::Begun)
    }
    fn name(self) -> &'static str {
        match self {
            FailPhase::Begun => "begun",
            FailPhase::Promoting => "promoting",
            FailPhase::Promoted => "promoted",
        }
    }
}

/// What a failover keeps in the journal besides its phase (no secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Facts {
    this: Side,
    generation: u64,
    slot: Option<String>,
}

type State = Machine<FailPhase, Facts>;

/// What `ha failover` was given.
#[derive(Debug, Clone)]
pub(crate) struct FailoverOptions {
    pub password: Option<PasswordSource>,
    /// Promote even though the old primary may still accept writes.
    pub force: bool,
    pub dry_run: bool,
    /// Finish an interrupted failover.
    pub resume: bool,
    pub connect_timeout: Duration,
    /// Bounds the promotion.
    pub timeout: Duration,
}

/// What the failover did (or would do).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FailoverReport {
    pub mode: &'static str,
    pub dry_run: bool,
    pub plan: Vec<String>,
    pub old_primary: String,
    pub new_primary: String,
    pub generation: u64,
    /// The old primary as seen now.
    pub old_primary_state: String,
    pub forced: bool,
    /// What `--force` risks, when it overrode a refusal.
    pub risk: Option<String>,
    /// What this replica had received from the old primary.
    pub received_lsn: Option<String>,
    /// The last primary position this node recorded, and when.
    pub last_known_primary_lsn: Option<String>,
    pub last_known_at: Option<String>,
    /// WAL the old primary had (as last seen) that this replica did not
    /// receive: up to this many bytes may be lost.
    pub may_lose_bytes: Option<u64>,
    /// From the command's start to the first write the new primary
    /// accepted.
    pub seconds_to_first_write: Option<f64>,
    pub slot: Option<String>,
    pub notes: Vec<String>,
    pub audited: bool,
}

/// The old primary as this node sees it: one look bounded by the timeout
/// (connect, authentication and queries), classified as the start guard
/// classifies it.
fn look_at_peer(config: &HaConfig, peer: Side, creds: &Credentials, timeout: Duration) -> Evidence {
    evidence::look(config, peer, creds, timeout)
}

/// Runs a failover.
pub(crate) fn failover(
    home: &Home,
    opts: &FailoverOptions,
    obs: &mut dyn Observer,
) -> Result<FailoverReport> {
    let started = Instant::now();
    let config = require_config(home)?;
    let mut facts = Vec::new();
    let creds = credentials(&config, opts.password.as_ref(), &mut facts)?;
    if opts.resume {
        return resume(home, &config, opts, started, obs);
    }
    let (config, sync_note) = roles::sync(home, config, &creds, opts.connect_timeout)?;
    let this = roles::this_side(&config, "ha failover")?;
    let peer = other(this);
    let peer_addr = peer.address(&config).to_string();
    let this_addr = this.address(&config).to_string();

    let seen = look_at_peer(&config, peer, &creds, opts.connect_timeout);
    let state_text = seen.to_string();
    // The guard's rule, with no allowance for a writable peer: promoting
    // next to one makes two.
    let refusal = match evidence::may_be_primary(&seen, config.generation, false, false) {
        Ok(_) => None,
        Err(_) if matches!(seen, Evidence::Primary { .. }) => Some(format!(
            "{peer_addr} is reachable and accepts writes: a failover now would make two primaries; for a planned change of roles run `keyferry ha switchover` on {peer_addr}"
        )),
        Err(why) => Some(format!(
            "{peer_addr}: {why}; {}",
            evidence::way_out(&seen, &config, &peer_addr, "`--force`")
        )),
    };
    let risk = match (&refusal, opts.force) {
        (Some(why), false) => {
            return Err(Error::Fenced(format!(
                "ha failover refused: {why}; `--force` promotes anyway, at the risk of two primaries taking different writes"
            )))
        }
        (Some(_), true) => Some(format!(
            "forced while {peer_addr} is {state_text}: until it is stopped, both nodes may accept writes, and what it takes after this moment is lost to the pair; stop it now and rejoin it (`keyferry ha rejoin` there)"
        )),
        (None, _) => None,
    };

    let (mut local, lt) = roles::local_admin(&config, opts.connect_timeout).map_err(|e| {
        Error::Refused(format!(
            "ha failover: reading this node's server failed: {e}; run it on the replica, as root or the data directory's owner, with the server running"
        ))
    })?;
    let local_err = |e: postgres::Error| {
        Error::Refused(format!(
            "ha failover: reading this node's server failed: {}",
            pg::from_postgres(&lt, e)
        ))
    };
    let row = local
        .query_one(
            "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, \
                    pg_last_wal_replay_lsn()::text, current_setting('primary_slot_name', true)",
            &[],
        )
        .map_err(local_err)?;
    if !row.get::<_, bool>(0) {
        return Err(Error::Refused(format!(
            "this node ({this_addr}) already runs as primary: there is nothing to fail over"
        )));
    }
    let received: Option<String> = row.get::<_, Option<String>>(1).or(row.get(2));
    let slot: Option<String> = row
        .get::<_, Option<String>>(3)
        .filter(|s| !s.trim().is_empty());
    let last = history::last(home.root()).filter(|s| s.primary == peer_addr);
    let may_lose = match (&last, &received) {
        (Some(l), Some(r)) => local
            .query_one(
                "SELECT greatest(pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn), 0)::bigint",
                &[&l.lsn, r],
            )
            .ok()
            .and_then(|row| u64::try_from(row.get::<_, i64>(0)).ok()),
        _ => None,
    };
    let table = generation::current(&mut local, &lt).ok().flatten();
    let next_generation = config.generation.max(table.map_or(0, |r| r.generation)) + 1;

    let mut report = FailoverReport {
        mode: "failed-over",
        dry_run: opts.dry_run,
        plan: vec![
            format!("promote this node ({this_addr}) with pg_promote()"),
            format!(
                "record generation {next_generation} (primary {this_addr}) in {} here: the first write, proving it accepts writes",
                generation::TABLE
            ),
            match &slot {
                Some(s) => format!("create the replication slot {s} here, for {peer_addr} once it rejoins"),
                None => "no replication slot in use: none to create".into(),
            },
            format!("swap primary and secondary in ha.toml, generation {next_generation}"),
        ],
        old_primary: peer_addr.clone(),
        new_primary: this_addr.clone(),
        generation: next_generation,
        old_primary_state: state_text,
        forced: risk.is_some(),
        risk,
        received_lsn: received.clone(),
        last_known_primary_lsn: last.as_ref().map(|l| l.lsn.clone()),
        last_known_at: last.as_ref().map(|l| crate::fmt::fmt_time(l.at)),
        may_lose_bytes: may_lose,
        seconds_to_first_write: None,
        slot: slot.clone(),
        notes: sync_note.into_iter().collect(),
        audited: false,
    };
    if opts.dry_run {
        report.mode = "dry-run";
        return Ok(report);
    }

    let mut node = home.open(false)?;
    let mut change = node.begin_held(
        ACTION,
        details([
            ("old_primary", Value::from(peer_addr.clone())),
            ("new_primary", Value::from(this_addr.clone())),
            ("generation", Value::from(next_generation)),
            ("forced", Value::from(report.forced)),
            ("received_lsn", Value::from(received.clone())),
            ("may_lose_bytes", Value::from(may_lose)),
        ]),
        RESUME,
        NO_ABORT,
    )?;
    drop(local);
    let mut state = State::new(
        FailPhase::Begun,
        Facts {
            this,
            generation: next_generation,
            slot,
        },
    );
    change.save(&state)?;
    change.advance(&mut state, FailPhase::Promoting)?;
    complete(
        &Pair::new(home, config, opts.timeout, opts),
        obs,
        change,
        state,
        started,
        report,
    )
}

/// `ha failover --resume`: finishes the promotion and what follows it.
fn resume(
    home: &Home,
    config: &HaConfig,
    opts: &FailoverOptions,
    started: Instant,
    obs: &mut dyn Observer,
) -> Result<FailoverReport> {
    let mut node = home.open(false)?;
    let Some(change) = node.reopen_held(ACTION, Reopen::Resume)? else {
        return Err(Error::Usage(
            "there is no interrupted failover on this node: run `keyferry ha failover` to start one".into(),
        ));
    };
    let state: State = change.load()?;
    let this = state.data.this;
    let report = FailoverReport {
        mode: "resumed",
        dry_run: false,
        plan: Vec::new(),
        old_primary: other(this).address(config).to_string(),
        new_primary: this.address(config).to_string(),
        generation: state.data.generation,
        old_primary_state: "not looked at (resumed)".into(),
        forced: false,
        risk: None,
        received_lsn: None,
        last_known_primary_lsn: None,
        last_known_at: None,
        may_lose_bytes: None,
        seconds_to_first_write: None,
        slot: state.data.slot.clone(),
        notes: Vec::new(),
        audited: false,
    };
    let cx = Pair::new(home, config.clone(), opts.timeout, opts);
    complete(&cx, obs, change, state, started, report)
}

/// From the point of no return on: the promotion (sent again when it is
/// not confirmed yet: harmless on a server already promoting), the
/// generation record, the slot, `ha.toml`, the audit record. Any failure
/// keeps the journal for `--resume`.
fn complete(
    cx: &Pair<'_, FailoverOptions>,
    obs: &mut dyn Observer,
    mut change: crate::node::Change<'_>,
    mut state: State,
    started: Instant,
    mut report: FailoverReport,
) -> Result<FailoverReport> {
    let (home, config, opts) = (cx.home, &cx.config, cx.opts);
    let this = state.data.this;
    let this_addr = this.address(config).to_string();
    let peer_addr = other(this).address(config).to_string();
    let in_doubt = |e: Error| {
        Error::InDoubt(format!(
            "ha failover: {e}; the promotion of this node was sent, so the failover can only go forward: finish it with `{RESUME}`"
        ))
    };
    let result = (|| -> Result<()> {
        if state.phase() == FailPhase::Promoting {
            obs.step("promoting this node (pg_promote)");
            promote_local(config, opts)?;
            change.advance(&mut state, FailPhase::Promoted)?;
        }
        obs.step(&format!(
            "recording generation {} and swapping the roles in ha.toml",
            state.data.generation
        ));
        let (mut local, lt) = roles::local_admin(config, opts.connect_timeout)
            .map_err(|e| Error::Refused(format!("reading this node's server failed: {e}")))?;
        let record = Record {
            generation: state.data.generation,
            primary_addr: this_addr.clone(),
            changed_at: None,
            by_node: config.node.clone(),
            action: FAILOVER.into(),
        };
        if generation::current(&mut local, &lt)
            .ok()
            .flatten()
            .is_none_or(|r| r.generation < record.generation)
        {
            generation::insert(&mut local, &lt, &record, &config.replication_user).map_err(|e| {
                Error::Refused(format!(
                    "this node was promoted but the first write (the generation record) failed: {e}; read the server's log"
                ))
            })?;
        }
        report.seconds_to_first_write = Some(started.elapsed().as_secs_f64());
        if let Some(s) = &state.data.slot {
            if let Err(e) = local.execute(
                "SELECT pg_create_physical_replication_slot($1, true) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[s],
            ) {
                report.notes.push(format!(
                    "the replication slot {s} could not be created here ({}); create it before the old primary rejoins: SELECT pg_create_physical_replication_slot('{s}', true)",
                    pg::from_postgres(&lt, e)
                ));
            }
        }
        let mut next = config.clone();
        if this == Side::Secondary && next.primary != this.address(config) {
            std::mem::swap(&mut next.primary, &mut next.secondary);
        }
        next.generation = next.generation.max(state.data.generation);
        next.demoted = false;
        roles::save_config(&mut change, home, &next)
    })();
    if let Err(e) = result {
        change.suspend();
        return Err(in_doubt(e));
    }
    report.audited = change.finish()?.audited;
    report
        .notes
        .push(format!(
            "the old primary {peer_addr} must not start as primary: its `keyferry ha guard` (ExecStartPre) refuses once it can reach this node; make it a replica with `keyferry ha rejoin` there, which also drops the slot left on it"
        ));
    Ok(report)
}

/// `pg_promote(wait => true)` through the local socket, confirmed by
/// reading the server out of recovery; sent only while it is in recovery.
fn promote_local(config: &HaConfig, opts: &FailoverOptions) -> Result<()> {
    let wait = i32::try_from(opts.timeout.as_secs().clamp(1, 3600)).unwrap_or(60);
    let (mut local, lt) = roles::local_admin(config, opts.connect_timeout)
        .map_err(|e| Error::Refused(format!("reading this node's server failed: {e}")))?;
    if !pg::in_recovery(&mut local, &lt)? {
        return Ok(());
    }
    let sent = local
        .query_one("SELECT pg_promote(true, $1)", &[&wait])
        .map(|row| row.get::<_, bool>(0));
    let (mut again, at) = roles::local_admin(config, opts.connect_timeout).map_err(|e| {
        Error::Refused(format!(
            "reading this node's server after the promotion failed: {e}"
        ))
    })?;
    if !pg::in_recovery(&mut again, &at)? {
        return Ok(());
    }
    Err(Error::Refused(match sent {
        Ok(_) => format!("the promotion did not finish within {wait} s (read the server's log)"),
        Err(e) => format!("pg_promote failed: {}", pg::from_postgres(&lt, e)),
    }))
}

/// The report as the operator reads it.
pub(crate) fn summary(r: &FailoverReport) -> Vec<String> {
    let mut lines = Vec::new();
    let head = if r.dry_run {
        format!(
            "would fail over: {} (old primary {}: {}) becomes the primary, generation {}:",
            r.new_primary, r.old_primary, r.old_primary_state, r.generation
        )
    } else {
        format!(
            "failed over: {} is the primary (generation {}); the old primary {} was {}",
            r.new_primary, r.generation, r.old_primary, r.old_primary_state
        )
    };
    lines.push(head);
    if r.dry_run {
        lines.extend(
            r.plan
                .iter()
                .enumerate()
                .map(|(i, s)| format!("  {}. {s}", i + 1)),
        );
    }
    match (&r.may_lose_bytes, &r.last_known_primary_lsn) {
        (Some(n), Some(lsn)) => lines.push(format!(
            "up to {n} bytes of WAL may be lost: the old primary was last seen at {lsn} ({}), this replica received up to {} (and anything the primary wrote after it was last seen is lost too)",
            r.last_known_at.as_deref().unwrap_or("?"),
            r.received_lsn.as_deref().unwrap_or("?")
        )),
        _ => lines.push(format!(
            "how much WAL may be lost is not known: no recorded position of the old primary (`keyferry ha status` records it); this replica received up to {}",
            r.received_lsn.as_deref().unwrap_or("?")
        )),
    }
    if let Some(risk) = &r.risk {
        lines.push(format!("warning: {risk}"));
    }
    if let Some(s) = r.seconds_to_first_write {
        lines.push(format!(
            "first write accepted {s:.2} s after the command started"
        ));
    }
    lines.extend(r.notes.iter().map(|n| format!("note: {n}")));
    lines
}
