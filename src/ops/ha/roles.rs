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
use crate::ha::generation::{self, Forward, GenerationError, Record};
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
/// it runs, the peer's when it answers), or `None`. A record whose primary
/// is read and found still in recovery is not the pair's state: a
/// switchover writes the next generation's row before it stops the old
/// primary, and until the promotion that row names a replica (an aborted
/// switchover deletes it again); following it would swap the roles in
/// `ha.toml` for a change that has not happened.
pub(crate) fn pair_generation(
    config: &HaConfig,
    this: Side,
    creds: &Credentials,
    timeout: Duration,
) -> Result<Option<Record>, Contradicted> {
    let read = |c: &mut postgres::Client, t: &str| -> Option<(Option<Record>, bool)> {
        let record = generation::current(c, t).ok()?;
        let in_recovery = crate::pg::in_recovery(c, t).ok()?;
        Some((record, in_recovery))
    };
    let local = local_admin(config, timeout)
        .ok()
        .and_then(|(mut c, t)| read(&mut c, &t));
    let peer = peer_sql(config, other(this), creds, timeout)
        .ok()
        .and_then(|(mut c, t)| read(&mut c, &t));
    let recovering: Vec<String> = [(this, &local), (other(this), &peer)]
        .iter()
        .filter(|(_, seen)| seen.as_ref().is_some_and(|s| s.1))
        .map(|(side, _)| side.address(config).to_string())
        .collect();
    let newest = [local, peer]
        .into_iter()
        .filter_map(|seen| seen.and_then(|s| s.0))
        .max_by_key(|r| r.generation);
    match newest {
        Some(r) if recovering.contains(&r.primary_addr) => Err(Contradicted(r)),
        other => Ok(other),
    }
}

/// The pair's newest record names a server that runs as a replica.
#[derive(Debug)]
pub(crate) struct Contradicted(Record);

impl std::fmt::Display for Contradicted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.0;
        write!(
            f,
            "the pair's record (generation {}, {} by {}) names {} as the primary, but it runs as a replica: ha.toml was left as it was; an interrupted switchover is finished or undone with `keyferry ha switchover --resume` or `--abort` on the node that ran it, otherwise see `keyferry ha status`",
            r.generation, r.action, r.by_node, r.primary_addr
        )
    }
}

/// `config` as the record says the pair now is: primary and secondary
/// swapped when the record's primary is `ha.toml`'s secondary, the
/// record's generation, and `demoted` when a failover made the other node
/// primary (cleared when this node is the primary).
pub(crate) fn follow(
    config: &HaConfig,
    record: &Record,
    this: Option<Side>,
) -> Result<HaConfig, GenerationError> {
    let forward = Forward::new(config.generation, record.generation)?;
    let mut next = config.clone();
    let this_addr = this.map(|s| s.address(config).to_string());
    if record.primary_addr == config.secondary.to_string() {
        std::mem::swap(&mut next.primary, &mut next.secondary);
    }
    next.generation = forward.value();
    if let Some(addr) = this_addr {
        if addr == record.primary_addr {
            next.demoted = false;
        } else if record.action == FAILOVER {
            // A switchover turns the old primary into a replica itself;
            // only a failover leaves it a primary that must not come back.
            next.demoted = true;
        }
    }
    Ok(next)
}

/// The address the pair's replica streams from (`sender_host` of its WAL
/// receiver), when one of the two servers runs as a replica and says.
fn replica_upstream(
    config: &HaConfig,
    this: Side,
    creds: &Credentials,
    timeout: Duration,
) -> Option<String> {
    const SQL: &str = "SELECT sender_host FROM pg_stat_wal_receiver WHERE pg_is_in_recovery()";
    let ask = |client: &mut postgres::Client| -> Option<String> {
        client.query_opt(SQL, &[]).ok().flatten()?.get(0)
    };
    local_admin(config, timeout)
        .ok()
        .and_then(|(mut c, _)| ask(&mut c))
        .or_else(|| {
            peer_sql(config, other(this), creds, timeout)
                .ok()
                .and_then(|(mut c, _)| ask(&mut c))
        })
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
    let record = match pair_generation(&config, this_side, creds, timeout) {
        Ok(Some(record)) => record,
        Ok(None) => return Ok((config, None)),
        Err(c) if c.0.generation > config.generation => return Ok((config, Some(c.to_string()))),
        Err(_) => return Ok((config, None)),
    };
    if !Forward::new(config.generation, record.generation).is_ok_and(Forward::raised) {
        return Ok((config, None));
    }
    let mut node = home.open(false)?;
    // Re-read under the lock: another keyferry may have done it meanwhile.
    let config = require_config(home)?;
    if !Forward::new(config.generation, record.generation).is_ok_and(Forward::raised) {
        return Ok((config, None));
    }
    let checked = follow(&config, &record, this).and_then(|next| {
        let upstream = replica_upstream(&next, this_side, creds, timeout);
        generation::check_addresses(
            &next.primary.to_string(),
            &next.secondary.to_string(),
            &record,
            upstream.as_deref(),
        )
        .map(|()| next)
    });
    let next = match checked {
        Ok(next) => next,
        Err(e) => {
            tracing::warn!(
                generation = record.generation,
                "ha.toml not brought up to date: {e}"
            );
            return Ok((config, Some(e.to_string())));
        }
    };
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
/// Returns the configuration it wrote.
pub(crate) fn clear_demoted(
    change: &mut Change<'_>,
    home: &Home,
    config: &HaConfig,
) -> Result<HaConfig> {
    let mut next = config.clone();
    next.demoted = false;
    save_config(change, home, &next)?;
    Ok(next)
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
        let next = follow(&config(), &record(1, "203.0.113.2"), Some(Side::Primary)).unwrap();
        assert_eq!(next.primary.to_string(), "203.0.113.2");
        assert_eq!(next.secondary.to_string(), "203.0.113.1");
        assert_eq!(next.generation, 1);
        assert!(next.demoted);
        let new_primary =
            follow(&config(), &record(1, "203.0.113.2"), Some(Side::Secondary)).unwrap();
        assert!(!new_primary.demoted);
        let same = follow(&config(), &record(2, "203.0.113.1"), Some(Side::Primary)).unwrap();
        assert_eq!(same.primary.to_string(), "203.0.113.1");
        assert!(!same.demoted);
        let mut switched = record(3, "203.0.113.2");
        switched.action = SWITCHOVER.into();
        assert!(
            !follow(&config(), &switched, Some(Side::Primary))
                .unwrap()
                .demoted
        );
        let mut ahead = config();
        ahead.generation = 4;
        assert_eq!(
            follow(&ahead, &record(3, "203.0.113.2"), Some(Side::Primary)),
            Err(GenerationError::Backwards { from: 4, to: 3 })
        );
    }
}
