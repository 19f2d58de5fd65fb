//! `keyferry ha guard`, `ha start`, `ha stop`: fencing without a third
//! node.
//!
//! The guard runs before the local server starts (systemd
//! `ExecStartPre=`, or `ha start`, which runs it first). It decides only
//! whether the node may start as a *primary*; a data directory with
//! `standby.signal` (or `recovery.signal`) starts as a replica and is
//! always let through. A would-be primary is refused (exit 13) when
//!
//! - its own `ha.toml` says it was demoted (a failover made the other node
//!   primary; `ha rejoin` clears the mark), or
//! - the peer is reachable, runs as primary, and its generation is higher
//!   than this node's.
//!
//! First the guard brings `ha.toml` up to date from the pair's generation
//! (the peer's table), so a node that was down during a failover learns of
//! it here. When the peer cannot be reached a two-node pair cannot tell a
//! dead peer from a cut network: the guard lets the node start and logs
//! why, unless `[guard] require_peer = true`, which refuses instead (and so
//! keeps a lone surviving primary from restarting while its peer is down).

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::check::credentials;
use super::require_config;
use super::roles::{self, other, peer_sql};
use crate::error::{Error, Result};
use crate::ha::config::HaConfig;
use crate::ha::generation;
use crate::ha::service::Server;
use crate::node::Home;
use crate::pg;
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
    pub notes: Vec<String>,
}

/// Whether the data directory starts as a standby.
pub(crate) fn starts_as_replica(pg_data: &Path) -> bool {
    pg_data.join("standby.signal").exists() || pg_data.join("recovery.signal").exists()
}

/// Runs the guard. A refusal is `Err(Error::Fenced)`; the report of an
/// allowed start says why it was allowed.
pub(crate) fn guard(
    home: &Home,
    password: Option<&PasswordSource>,
    timeout: Duration,
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
    let peer_addr = peer.address(&config);
    let seen = peer_sql(&config, peer, &creds, timeout).and_then(|(mut c, t)| {
        let in_recovery = pg::in_recovery(&mut c, &t)?;
        let generation = generation::current(&mut c, &t)?.map(|r| r.generation);
        Ok((in_recovery, generation))
    });
    match seen {
        Ok((in_recovery, peer_gen)) => {
            report.peer_generation = peer_gen;
            let peer_gen = peer_gen.unwrap_or(0);
            if !in_recovery && peer_gen > config.generation {
                return Err(Error::Fenced(format!(
                    "ha guard: the peer {peer_addr} runs as primary at generation {peer_gen}, above this node's {}: starting this node as primary would make two; {rejoin}",
                    config.generation
                )));
            }
            report.reason = if in_recovery {
                format!("the peer {peer_addr} runs as a replica (generation {peer_gen}); this node starts as primary")
            } else {
                format!(
                    "the peer {peer_addr} runs as primary too, at generation {peer_gen}, not above this node's {}: this node starts, but the pair has two primaries; see `keyferry ha status`",
                    config.generation
                )
            };
        }
        Err(e) => {
            if config.guard.require_peer {
                return Err(Error::Fenced(format!(
                    "ha guard: the peer {peer_addr} cannot be reached ({e}) and [guard] require_peer = true: a two-node pair cannot tell whether the peer took over, so this node does not start as primary; start it once the peer is reachable, or set require_peer = false to accept that risk"
                )));
            }
            report.reason = format!(
                "the peer {peer_addr} cannot be reached ({e}): a two-node pair cannot know whether it took over; starting as primary ([guard] require_peer = true would refuse)"
            );
        }
    }
    tracing::warn!(reason = %report.reason, "ha guard lets the server start");
    Ok(report)
}

/// `ha start`: the guard, then the local server through `[service]`.
pub(crate) fn start(
    home: &Home,
    password: Option<&PasswordSource>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<GuardReport> {
    let report = guard(home, password, connect_timeout)?;
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
