//! `keyferry ha guard`, `ha start`, `ha stop`: fencing without a third
//! node.
//!
//! The guard runs before the local server starts (systemd
//! `ExecStartPre=`, or `ha start`, which runs it first). It decides only
//! whether the node may start as a *primary*; a data directory with
//! `standby.signal` (or `recovery.signal`) starts as a replica and is
//! always let through.
//!
//! It fails closed (DESIGN.md, "Fail closed"): a would-be primary starts
//! only on positive evidence that the peer is not a writable primary of a
//! newer generation — the peer's host says nothing listens on its port,
//! the peer says it is a replica, or it says it is a primary of a
//! generation not above this node's (allowed with a warning: the pair then
//! has two primaries, which `ha status` shows as split brain). Everything
//! else is a refusal (exit 13) that names what was seen and the way out:
//!
//! - this node's own `ha.toml` says it was demoted (a failover made the
//!   other node primary; `ha rejoin` clears the mark);
//! - the peer is a primary of a newer generation;
//! - the peer answers but will not say what it is (a stale password, no
//!   `pg_hba.conf` line, "too many clients", no rights, any error), or
//!   accepts the connection and stays silent (a stopped postmaster, a
//!   tarpit): it is alive, so it may be primary;
//! - the peer gives no answer at all (TCP connect timed out, no route): a
//!   dead peer and a cut network look the same. The operator who has
//!   checked the peer's host says so with `--peer-down`, which answers
//!   this case and no other.
//!
//! First the guard brings `ha.toml` up to date from the pair's generation
//! (the peer's table), so a node that was down during a failover learns of
//! it here; then it looks at the peer (one exchange bounded by
//! `--timeout-ms`: connect, authentication and queries together) for the
//! evidence the decision uses. `[guard] require_peer = true` refuses even when nothing listens
//! on the peer's port (so a lone surviving primary does not restart while
//! its peer is down).

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::check::credentials;
use super::require_config;
use super::roles::{self, other};
use crate::error::{Error, Result};
use crate::ha::config::HaConfig;
use crate::ha::evidence::{self, Evidence};
use crate::ha::service::Server;
use crate::node::Home;
use crate::secret::PasswordSource;

/// What the guard decided.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GuardReport {
    /// The node may start.
    pub allowed: bool,
    /// `replica` or `primary`: how the data directory would start.
    pub starts_as: &'static str,
    pub reason: String,
    pub generation: u64,
    pub peer_generation: Option<u64>,
    /// What the look at the peer showed (`not_listening`, `no_answer`,
    /// `silent`, `refusing`, `replica`, `primary`).
    pub peer: Option<&'static str>,
    pub notes: Vec<String>,
}

/// Whether the data directory starts as a standby.
pub(crate) fn starts_as_replica(pg_data: &Path) -> bool {
    pg_data.join("standby.signal").exists() || pg_data.join("recovery.signal").exists()
}

/// Runs the guard. A refusal is `Err(Error::Fenced)`; the report of an
/// allowed start says why it was allowed. `peer_down`: the operator has
/// checked that the peer is down (answers "no answer", nothing else).
pub(crate) fn guard(
    home: &Home,
    password: Option<&PasswordSource>,
    timeout: Duration,
    peer_down: bool,
) -> Result<GuardReport> {
    let config = require_config(home)?;
    let mut facts = Vec::new();
    let creds = credentials(&config, password, &mut facts)?;
    let (config, note) = roles::sync(home, config, &creds, timeout)?;
    let mut report = GuardReport {
        allowed: true,
        starts_as: "primary",
        reason: String::new(),
        generation: config.generation,
        peer_generation: None,
        peer: None,
        notes: note.into_iter().collect(),
    };
    if starts_as_replica(&config.pg_data) {
        report.starts_as = "replica";
        report.reason = format!(
            "{} has standby.signal: the server starts as a replica",
            config.pg_data.display()
        );
        return Ok(report);
    }
    let rejoin = "make it a replica of the current primary with `keyferry ha rejoin`";
    if config.demoted {
        return Err(Error::Fenced(format!(
            "ha guard: this node was demoted (ha.toml: demoted = true, generation {}): the other node ({}) took the primary's role, so this one must not start as primary; {rejoin}",
            config.generation, config.primary
        )));
    }
    let this = roles::this_side(&config, "ha guard")?;
    let peer = other(this);
    let peer_addr = peer.address(&config).to_string();
    let seen = evidence::look(&config, peer, &creds, timeout);
    report.peer = Some(seen.kind());
    report.peer_generation = seen.generation();
    let refuse = |why: String| {
        Error::Fenced(format!(
            "ha guard: {peer_addr}: {why}; this node does not start as primary; {}",
            evidence::way_out(&seen, &config, &peer_addr, "`--peer-down`")
        ))
    };
    if config.guard.require_peer
        && !matches!(seen, Evidence::Replica { .. } | Evidence::Primary { .. })
    {
        return Err(Error::Fenced(format!(
            "ha guard: the peer {peer_addr} is {seen}, and [guard] require_peer = true: this node starts as primary only while the peer answers; start it once the peer runs, or set require_peer = false"
        )));
    }
    report.reason =
        evidence::may_be_primary(&seen, config.generation, peer_down, true).map_err(refuse)?;
    tracing::warn!(reason = %report.reason, "ha guard lets the server start");
    Ok(report)
}

/// `ha start`: the guard, then the local server through `[service]`.
pub(crate) fn start(
    home: &Home,
    password: Option<&PasswordSource>,
    connect_timeout: Duration,
    timeout: Duration,
    peer_down: bool,
) -> Result<GuardReport> {
    let report = guard(home, password, connect_timeout, peer_down)?;
    let config = require_config(home)?;
    server(&config, timeout)
        .start()
        .map_err(|e| Error::Refused(format!("ha start: {e}")))?;
    Ok(report)
}

/// `ha stop`: the local server through `[service]` (fast shutdown).
pub(crate) fn stop(home: &Home, timeout: Duration) -> Result<()> {
    let config = require_config(home)?;
    server(&config, timeout)
        .stop()
        .map_err(|e| Error::Refused(format!("ha stop: {e}")))
}

fn server(config: &HaConfig, timeout: Duration) -> Server {
    Server::of(config, timeout)
}
