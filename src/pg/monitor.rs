//! What a running server says about its replication: its WAL position and
//! timeline, the standbys streaming from it (`pg_stat_replication`), the
//! WAL receiver of a replica (`pg_stat_wal_receiver`), its replication
//! slots (`pg_replication_slots`) and the rights of the connected role.
//!
//! This module owns these queries and the shape of their answers; it
//! judges nothing (`ha status` and `ha check` do). Invariants:
//!
//! - every query is readable by a role with `pg_monitor` (a superuser, or
//!   the replication user once granted it); without `pg_monitor` the
//!   detail columns of the two `pg_stat_*` views come back NULL, which is
//!   kept as `None`, never guessed;
//! - LSNs are PostgreSQL's own text form (`0/3000060`); byte distances are
//!   computed by the server (`pg_wal_lsn_diff`), never by parsing LSNs;
//! - nothing here writes: no slot is created or dropped.

use std::time::Duration;

use postgres::Client;
use serde::Serialize;

use super::{from_postgres, PgError};

/// Makes the server cancel any statement of this connection that runs
/// longer than `timeout`, so a query cannot keep a caller waiting past
/// its bound (the connect itself is bounded by [`super::ConnSpec`]).
pub(crate) fn bound_statements(
    client: &mut Client,
    target: &str,
    timeout: Duration,
) -> Result<(), PgError> {
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128);
    client
        .batch_execute(&format!("SET statement_timeout = {ms}"))
        .map_err(|e| from_postgres(target, e))
}

/// A server's place in the WAL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WalPosition {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// The timeline: a primary's from its current WAL file's name; a
    /// replica's from its WAL receiver (`received_tli`, needs
    /// `pg_monitor`), else `None`: never a stale one.
    pub timeline: Option<u32>,
    /// `pg_current_wal_lsn()` (primary only).
    pub current_lsn: Option<String>,
    /// `pg_last_wal_receive_lsn()` (replica: streamed so far).
    pub receive_lsn: Option<String>,
    /// `pg_last_wal_replay_lsn()` (replica: replayed so far).
    pub replay_lsn: Option<String>,
    /// Replica: received WAL not yet replayed, in bytes.
    pub replay_backlog_bytes: Option<u64>,
    /// Replica: `now() - pg_last_xact_replay_timestamp()` in seconds; 0
    /// when everything received is replayed (an idle primary sends no new
    /// transactions, so the timestamp ages without any lag); `None` when
    /// nothing was replayed yet.
    pub replay_age_seconds: Option<f64>,
    /// Replica: the WAL receiver's status (`streaming`, `catchup`, …);
    /// `None` when no WAL receiver runs.
    pub receiver_status: Option<String>,
    /// Replica: where its WAL receiver streams from (`host:port`), when
    /// visible.
    pub upstream: Option<String>,
}

/// Reads the server's [`WalPosition`].
pub(crate) fn position(client: &mut Client, target: &str) -> Result<WalPosition, PgError> {
    // Functions that fail during recovery (pg_current_wal_lsn,
    // pg_walfile_name) sit in CASE branches the server evaluates only on a
    // primary.
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), \
                    CASE WHEN pg_is_in_recovery() THEN NULL \
                         ELSE pg_current_wal_lsn()::text END, \
                    pg_last_wal_receive_lsn()::text, \
                    pg_last_wal_replay_lsn()::text, \
                    CASE WHEN pg_is_in_recovery() THEN \
                         greatest(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint \
                    END, \
                    CASE WHEN NOT pg_is_in_recovery() THEN NULL \
                         WHEN pg_last_wal_receive_lsn() IS NOT NULL \
                              AND pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0::float8 \
                         ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END, \
                    CASE WHEN pg_is_in_recovery() THEN NULL \
                         ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
                    (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1), \
                    (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
                    (SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver LIMIT 1)",
            &[],
        )
        .map_err(|e| from_postgres(target, e))?;
    let in_recovery: bool = row.get(0);
    let wal_file: Option<String> = row.get(6);
    // A replica's timeline only from its WAL receiver, which is current:
    // its last restartpoint's (pg_control_checkpoint) stays on the old
    // timeline after a failover until the next restartpoint. Without
    // pg_monitor the receiver is hidden and the timeline is not known.
    let timeline = if in_recovery {
        row.get::<_, Option<i32>>(7)
            .and_then(|t| u32::try_from(t).ok())
    } else {
        wal_file.and_then(|wal| u32::from_str_radix(wal.get(..8)?, 16).ok())
    };
    Ok(WalPosition {
        in_recovery,
        timeline,
        current_lsn: row.get(1),
        receive_lsn: row.get(2),
        replay_lsn: row.get(3),
        replay_backlog_bytes: row
            .get::<_, Option<i64>>(4)
            .and_then(|b| u64::try_from(b).ok()),
        replay_age_seconds: row.get::<_, Option<f64>>(5).map(|s| s.max(0.0)),
        receiver_status: row.get(8),
        upstream: row.get(9),
    })
}

/// A row of `pg_stat_replication`: a WAL sender and the standby (or
/// `pg_basebackup`) it serves. Detail columns are `None` without
/// `pg_monitor`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Standby {
    /// `host(client_addr)`; `None` over a Unix socket or when hidden.
    pub client_addr: Option<String>,
    /// `application_name` (`walreceiver` by default, `pg_basebackup`).
    pub application_name: Option<String>,
    /// `streaming`, `catchup`, `startup`, `backup`, `stopping`.
    pub state: Option<String>,
    /// `async`, `sync`, `potential`, `quorum`.
    pub sync_state: Option<String>,
    /// What the standby has replayed.
    pub replay_lsn: Option<String>,
    /// `pg_current_wal_lsn() - replay_lsn`, in bytes.
    pub lag_bytes: Option<u64>,
    /// `replay_lag` in seconds (NULL once an idle standby has caught up).
    pub replay_lag_seconds: Option<f64>,
}

/// The rows of `pg_stat_replication` (a primary's standbys), oldest
/// sender first.
pub(crate) fn standbys(client: &mut Client, target: &str) -> Result<Vec<Standby>, PgError> {
    let rows = client
        .query(
            "SELECT host(client_addr), application_name, state, sync_state, replay_lsn::text, \
                    CASE WHEN pg_is_in_recovery() OR replay_lsn IS NULL THEN NULL \
                         ELSE greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint END, \
                    extract(epoch FROM replay_lag)::float8 \
             FROM pg_stat_replication ORDER BY backend_start, pid",
            &[],
        )
        .map_err(|e| from_postgres(target, e))?;
    Ok(rows
        .iter()
        .map(|row| Standby {
            client_addr: row.get(0),
            application_name: row.get(1),
            state: row.get(2),
            sync_state: row.get(3),
            replay_lsn: row.get(4),
            lag_bytes: row
                .get::<_, Option<i64>>(5)
                .and_then(|b| u64::try_from(b).ok()),
            replay_lag_seconds: row.get::<_, Option<f64>>(6).map(|s| s.max(0.0)),
        })
        .collect())
}

/// A row of `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// `slot_name`.
    pub name: String,
    /// `physical` or `logical`.
    pub slot_type: String,
    /// A connection uses it now.
    pub active: bool,
    /// The oldest WAL it needs (`None`: it reserves none yet).
    pub restart_lsn: Option<String>,
    /// WAL the server keeps for it: `pg_current_wal_lsn() - restart_lsn`
    /// in bytes (on a primary; `None` on a replica or without a
    /// `restart_lsn`).
    pub retained_bytes: Option<u64>,
}

/// The server's replication slots, by name.
pub(crate) fn slots(client: &mut Client, target: &str) -> Result<Vec<Slot>, PgError> {
    let rows = client
        .query(
            "SELECT slot_name::text, slot_type, active, restart_lsn::text, \
                    CASE WHEN pg_is_in_recovery() OR restart_lsn IS NULL THEN NULL \
                         ELSE greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint END \
             FROM pg_replication_slots ORDER BY slot_name",
            &[],
        )
        .map_err(|e| from_postgres(target, e))?;
    Ok(rows
        .iter()
        .map(|row| Slot {
            name: row.get(0),
            slot_type: row.get(1),
            active: row.get(2),
            restart_lsn: row.get(3),
            retained_bytes: row
                .get::<_, Option<i64>>(4)
                .and_then(|b| u64::try_from(b).ok()),
        })
        .collect())
}

/// The rights of the connected role that replication and `ha status`
/// need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RoleRights {
    /// The `REPLICATION` attribute (or superuser): may stream WAL.
    pub replication: bool,
    /// Has the privileges of `pg_monitor` (or superuser): may read the
    /// detail columns of `pg_stat_replication` and `pg_stat_wal_receiver`.
    pub monitor: bool,
    /// May execute `pg_promote()` (superuser, or granted EXECUTE): what
    /// `ha switchover` needs to promote the replica it connects to.
    pub promote: bool,
    /// May execute the functions `pg_rewind` reads its source through
    /// (superuser, or granted EXECUTE on each).
    pub rewind: bool,
    /// May run `CHECKPOINT` (superuser, or `pg_checkpoint` from PostgreSQL
    /// 15; true before 15, where no such role exists and nobody else may):
    /// `ha rejoin` right after a failover asks the new primary for the
    /// checkpoint `pg_rewind` needs instead of waiting for its scheduled one.
    pub checkpoint: bool,
}

/// The connected role's [`RoleRights`].
pub(crate) fn rights(client: &mut Client, target: &str) -> Result<RoleRights, PgError> {
    rights_of(client, target, None)
}

/// The rights of `role` (the connected role when `None`), as any role may
/// read them: so that the server's administrator can tell what the
/// replication role may do.
pub(crate) fn rights_of(
    client: &mut Client,
    target: &str,
    role: Option<&str>,
) -> Result<RoleRights, PgError> {
    let row = client
        .query_one(
            "SELECT r.rolreplication OR r.rolsuper, \
                    r.rolsuper OR pg_has_role(r.rolname, 'pg_monitor', 'USAGE'), \
                    r.rolsuper OR has_function_privilege(r.rolname, 'pg_promote(boolean, integer)', 'EXECUTE'), \
                    r.rolsuper OR (has_function_privilege(r.rolname, 'pg_ls_dir(text, boolean, boolean)', 'EXECUTE') \
                        AND has_function_privilege(r.rolname, 'pg_stat_file(text, boolean)', 'EXECUTE') \
                        AND has_function_privilege(r.rolname, 'pg_read_binary_file(text)', 'EXECUTE') \
                        AND has_function_privilege(r.rolname, 'pg_read_binary_file(text, bigint, bigint, boolean)', 'EXECUTE')), \
                    r.rolsuper OR CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_checkpoint') \
                        THEN pg_has_role(r.rolname, 'pg_checkpoint', 'USAGE') ELSE true END \
             FROM pg_roles r WHERE r.rolname = coalesce($1::text, current_user::text)",
            &[&role],
        )
        .map_err(|e| from_postgres(target, e))?;
    Ok(RoleRights {
        replication: row.get(0),
        monitor: row.get(1),
        promote: row.get(2),
        rewind: row.get(3),
        checkpoint: row.get(4),
    })
}
