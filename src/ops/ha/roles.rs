//! What switchover, failover, the start guard and rejoin share: reaching
//! the peer, reading the pair's generation, and keeping this node's
//! `ha.toml` in step with the roles.
//!
//! Each node's `ha.toml` follows the pair's roles: the node that runs a
//! switchover or failover rewrites its own file at once; the other node's
//! keyferry brings its file up to date from the generation table
//! ([`crate::ha::generation`]) the next time it runs an `ha` command there
//! ([`sync`]): a journaled, audited change that swaps `primary` and
//! `secondary`, sets `generation`, and marks the node `demoted` when it is
//! no longer the primary. keyferry never runs anything on the other host.

use std::time::Duration;

use serde_json::Value;

use super::require_config;
use crate::error::{Error, Result};
use crate::fsutil::Ownership;
use crate::ha::config::HaConfig;
use crate::ha::generation::{self, Record};
use crate::ha::preflight::{self, Side};
use crate::node::{Change, Home};
use crate::ops::details;
use crate::pg::{self, ConnSpec, Credentials, Endpoint, PgError};

/// The journal's and the audit record's name of a roles update.
pub(crate) const SYNC_ACTION: &str = "ha-roles-sync";

/// The generation table's `action` of a failover (and of a switchover).
pub(crate) const FAILOVER: &str = "failover";
pub(crate) const SWITCHOVER: &str = "switchover";

/// The other side.
pub(crate) fn other(side: Side) -> Side {
    match side {
        Side::Primary => Side::Secondary,
        Side::Secondary => Side::Primary,
    }
}

/// This machine's side, which the command needs.
pub(crate) fn this_side(config: &HaConfig, command: &str) -> Result<Side> {
    preflight::this_node(config).0.ok_or_else(|| {
        Error::Refused(format!(
            "`{command}` runs on one of the two nodes, and neither {} nor {} is an address of this machine (or both are): run it there, or fix the addresses with `keyferry ha init … --force`",
            config.primary, config.secondary
        ))
    })
}

/// A SQL connection to `side`'s server as the replication user over TCP.
pub(crate) fn peer_sql(
    config: &HaConfig,
    side: Side,
    creds: &Credentials,
    timeout: Duration,
) -> Result<(postgres::Client, String), PgError> {
    let host = side.address(config).ip();
    let endpoint = Endpoint::ip(host, config.pg_port);
    let target = format!("{endpoint} as {}", config.replication_user);
    let password = creds.for_conn(
        &host.to_string(),
        config.pg_port,
        pg::MAINTENANCE_DB,
        &config.replication_user,
    );
    let mut client = pg::connect(&ConnSpec {
        endpoint: &endpoint,
        user: &config.replication_user,
        dbname: pg::MAINTENANCE_DB,
        password: password.as_ref().map(|p| p.as_slice()),
        timeout,
    })?;
    pg::monitor::bound_statements(&mut client, &target, timeout.max(Duration::from_secs(10)))?;
    Ok((client, target))
}

/// This node's own server as its administrator (Unix socket, data
/// directory's owner).
pub(crate) fn local_admin(
    config: &HaConfig,
    timeout: Duration,
) -> Result<(postgres::Client, String), PgError> {
    generation::local_admin(
        &config.pg_data,
        config.pg_socket_dir.as_deref(),
        config.pg_port,
        timeout,
    )
}

/// The newest generation record either server holds (the local one when
/// it runs, the peer's when it answers), or `None`.
pub(crate) fn pair_generation(
    config: &HaConfig,
    this: Side,
    creds: &Credentials,
    timeout: Duration,
) -> Option<Record> {
    let local = local_admin(config, timeout)
        .ok()
        .and_then(|(mut c, t)| generation::current(&mut c, &t).ok().flatten());
    let peer = peer_sql(config, other(this), creds, timeout)
        .ok()
        .and_then(|(mut c, t)| generation::current(&mut c, &t).ok().flatten());
    match (local, peer) {
        (Some(a), Some(b)) => Some(if a.generation >= b.generation { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// `config` as the record says the pair now is: primary and secondary
/// swapped when the record's primary is `ha.toml`'s secondary, the
/// record's generation, and `demoted` when a failover made the other node
/// primary (cleared when this node is the primary).
pub(crate) fn follow(config: &HaConfig, record: &Record, this: Option<Side>) -> HaConfig {
    let mut next = config.clone();
    let this_addr = this.map(|s| s.address(config).to_string());
    if record.primary_addr == config.secondary.to_string() {
        std::mem::swap(&mut next.primary, &mut next.secondary);
    }
    next.generation = record.generation;
    if let Some(addr) = this_addr {
        if addr == record.primary_addr {
            next.demoted = false;
        } else if record.action == FAILOVER {
            // A switchover turns the old primary into a replica itself;
            // only a failover leaves it a primary that must not come back.
            next.demoted = true;
        }
    }
    next
}

/// Replaces `ha.toml` inside `change` (the old one goes to `backups/`).
pub(crate) fn save_config(change: &mut Change<'_>, home: &Home, config: &HaConfig) -> Result<()> {
    let text = config.to_toml()?;
    change.replace_file(
        &home.ha_config_path(),
        &mut text.as_bytes(),
        Ownership::OwnerOnly,
    )?;
    Ok(())
}

/// Brings this node's `ha.toml` up to date when the pair's generation
/// (read from the servers) is above its own. Returns the configuration to
/// use and, when it changed, the one `note:` line that says so.
pub(crate) fn sync(
    home: &Home,
    config: HaConfig,
    creds: &Credentials,
    timeout: Duration,
) -> Result<(HaConfig, Option<String>)> {
    let this = preflight::this_node(&config).0;
    let Some(this_side) = this else {
        return Ok((config, None));
    };
    let Some(record) = pair_generation(&config, this_side, creds, timeout) else {
        return Ok((config, None));
    };
    if record.generation <= config.generation {
        return Ok((config, None));
    }
    let mut node = home.open(false)?;
    // Re-read under the lock: another keyferry may have done it meanwhile.
    let config = require_config(home)?;
    if record.generation <= config.generation {
        return Ok((config, None));
    }
    let next = follow(&config, &record, this);
    let mut change = node.begin(
        SYNC_ACTION,
        details([
            ("from_generation", Value::from(config.generation)),
            ("generation", Value::from(record.generation)),
            ("primary", Value::from(next.primary.to_string())),
            ("secondary", Value::from(next.secondary.to_string())),
            ("demoted", Value::from(next.demoted)),
            ("pair_action", Value::from(record.action.clone())),
            ("by_node", Value::from(record.by_node.clone())),
        ]),
    )?;
    save_config(&mut change, home, &next)?;
    change.finish()?;
    let note = format!(
        "ha.toml was at generation {}; the pair is at generation {} ({} on node {}{}): primary is now {}{}",
        config.generation,
        record.generation,
        record.action,
        record.by_node,
        record
            .changed_at
            .as_deref()
            .map(|t| format!(" at {t}"))
            .unwrap_or_default(),
        next.primary,
        if next.demoted && !config.demoted {
            "; this node is marked demoted and will not start as primary until `keyferry ha rejoin`"
        } else {
            ""
        }
    );
    tracing::info!(generation = record.generation, "ha.toml brought up to date");
    Ok((next, Some(note)))
}

/// Clears `demoted` in this node's `ha.toml` once it runs as a replica
/// again (`ha rejoin`, `ha bootstrap`), inside the caller's change.
pub(crate) fn clear_demoted(change: &mut Change<'_>, home: &Home, config: &HaConfig) -> Result<()> {
    let mut next = config.clone();
    next.demoted = false;
    save_config(change, home, &next)
}

/// Drops the physical replication slot `slot` on this node's own server
/// when nothing uses it: a demoted node keeps the slot its replica used,
/// which would retain WAL for nobody. For switchover and `ha rejoin`.
pub(crate) fn drop_local_slot(
    config: &HaConfig,
    slot: &str,
    timeout: Duration,
) -> Result<bool, PgError> {
    let (mut client, target) = local_admin(config, timeout)?;
    let rows = client
        .query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND slot_type = 'physical' AND NOT active",
            &[&slot],
        )
        .map_err(|e| pg::from_postgres(&target, e))?;
    Ok(!rows.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HaConfig {
        HaConfig::example()
    }

    fn record(generation: u64, primary: &str) -> Record {
        Record {
            generation,
            primary_addr: primary.into(),
            changed_at: None,
            by_node: "n2".into(),
            action: "failover".into(),
        }
    }

    #[test]
    fn following_a_failover_swaps_and_demotes_the_old_primary() {
        let next = follow(&config(), &record(1, "203.0.113.2"), Some(Side::Primary));
        assert_eq!(next.primary.to_string(), "203.0.113.2");
        assert_eq!(next.secondary.to_string(), "203.0.113.1");
        assert_eq!(next.generation, 1);
        assert!(next.demoted);
        let new_primary = follow(&config(), &record(1, "203.0.113.2"), Some(Side::Secondary));
        assert!(!new_primary.demoted);
        let same = follow(&config(), &record(2, "203.0.113.1"), Some(Side::Primary));
        assert_eq!(same.primary.to_string(), "203.0.113.1");
        assert!(!same.demoted);
        let mut switched = record(3, "203.0.113.2");
        switched.action = SWITCHOVER.into();
        assert!(!follow(&config(), &switched, Some(Side::Primary)).demoted);
    }
}
