//! The pair's generation: an integer raised by every switchover and
//! failover, so that a node can tell whether the roles changed while it was
//! away.
//!
//! It lives in three places:
//!
//! - `generation` in each node's `ha.toml` (what this node last knew);
//! - the table `public.keyferry_pair` in database `postgres` of the
//!   primary (replicated to the replica like any table): one row per
//!   generation, the current one being `max(generation)`, with the address
//!   of the node that became primary, when, on which node and by which
//!   action. Written only through the local server's Unix socket as the
//!   data directory's owner (never over the network, never with a
//!   superuser password); the replication user may only read it;
//! - per node in `ha status --json`.
//!
//! This module owns the table (its SQL and its reading) and the local
//! administrative connection that writes it; deciding when to write is the
//! callers' (`ops::ha`). Invariants: a generation row is inserted, never
//! updated; rows are removed only by the undo of a switchover that did not
//! promote (the row was written before the old primary stopped, so that it
//! reaches the new primary inside the WAL the replica replays).

use std::path::Path;
use std::time::Duration;

use postgres::Client;
use serde::{Deserialize, Serialize};

use crate::pg::{self, from_postgres, ConnSpec, Endpoint, PgError};

/// The table, schema-qualified.
pub(crate) const TABLE: &str = "public.keyferry_pair";

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub generation: u64,
    /// The address of the node that became primary.
    pub primary_addr: String,
    /// When (the server's clock, RFC 3339).
    pub changed_at: Option<String>,
    /// The node (`ha.toml`'s `node`) whose keyferry wrote the row.
    pub by_node: String,
    /// `switchover` or `failover`.
    pub action: String,
}

/// The current generation's row, or `None` when the table does not exist
/// or is empty (a pair keyferry never switched).
pub(crate) fn current(client: &mut Client, target: &str) -> Result<Option<Record>, PgError> {
    let exists: Option<String> = client
        .query_one(&format!("SELECT to_regclass('{TABLE}')::text"), &[])
        .map_err(|e| from_postgres(target, e))?
        .get(0);
    if exists.is_none() {
        return Ok(None);
    }
    let row = client
        .query_opt(
            &format!(
                "SELECT generation, primary_addr, \
                        to_char(changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                        by_node, action \
                 FROM {TABLE} ORDER BY generation DESC LIMIT 1"
            ),
            &[],
        )
        .map_err(|e| from_postgres(target, e))?;
    Ok(row.map(|r| Record {
        generation: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
        primary_addr: r.get(1),
        changed_at: r.get(2),
        by_node: r.get(3),
        action: r.get(4),
    }))
}

/// Creates the table if needed, lets `reader` (the replication user) read
/// it, and inserts `record`, in one transaction. `client` must be the
/// local administrative connection ([`local_admin`]).
pub(crate) fn insert(
    client: &mut Client,
    target: &str,
    record: &Record,
    reader: &str,
) -> Result<(), PgError> {
    let generation = i64::try_from(record.generation).map_err(|_| PgError::Protocol {
        target: target.to_owned(),
        message: format!("generation {} is out of range", record.generation),
    })?;
    let mut tx = client.transaction().map_err(|e| from_postgres(target, e))?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (\
            generation bigint PRIMARY KEY, \
            primary_addr text NOT NULL, \
            changed_at timestamptz NOT NULL DEFAULT now(), \
            by_node text NOT NULL, \
            action text NOT NULL); \
         GRANT SELECT ON {TABLE} TO {}",
        quote_ident(reader)
    ))
    .map_err(|e| from_postgres(target, e))?;
    tx.execute(
        &format!(
            "INSERT INTO {TABLE} (generation, primary_addr, by_node, action) VALUES ($1, $2, $3, $4)"
        ),
        &[
            &generation,
            &record.primary_addr,
            &record.by_node,
            &record.action,
        ],
    )
    .map_err(|e| from_postgres(target, e))?;
    tx.commit().map_err(|e| from_postgres(target, e))
}

/// Removes the row of `generation` (the undo of a switchover that stopped
/// before the promotion).
pub(crate) fn remove(client: &mut Client, target: &str, generation: u64) -> Result<(), PgError> {
    let exists: Option<String> = client
        .query_one(&format!("SELECT to_regclass('{TABLE}')::text"), &[])
        .map_err(|e| from_postgres(target, e))?
        .get(0);
    if exists.is_none() {
        return Ok(());
    }
    let generation = i64::try_from(generation).unwrap_or(i64::MAX);
    client
        .execute(
            &format!("DELETE FROM {TABLE} WHERE generation = $1"),
            &[&generation],
        )
        .map(drop)
        .map_err(|e| from_postgres(target, e))
}

/// `"name"` with embedded quotes doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The local server, as its own administrator: through its Unix socket
/// (directory and port from its `postmaster.pid`, else `socket_dir` and
/// `port`) as the OS account that owns the data directory, with no
/// password. This is how keyferry writes on its own server; it never needs
/// a superuser password. Not available on Windows (no Unix socket there).
pub(crate) fn local_admin(
    pg_data: &Path,
    socket_dir: Option<&Path>,
    port: u16,
    timeout: Duration,
) -> Result<(Client, String), PgError> {
    let pid = std::fs::read_to_string(pg_data.join(pg::pidfile::FILE_NAME))
        .ok()
        .and_then(|t| pg::pidfile::parse(&t).ok());
    let port = pid.as_ref().map_or(port, |p| p.port);
    let dir = pid
        .and_then(|p| p.socket_dir)
        .or_else(|| socket_dir.map(Path::to_path_buf));
    let no_way = |message: String| PgError::Protocol {
        target: pg_data.display().to_string(),
        message,
    };
    if cfg!(windows) {
        return Err(no_way(
            "writing on the local server needs its Unix socket, which Windows does not have".into(),
        ));
    }
    let dir = dir.ok_or_else(|| {
        no_way(
            "the local server's socket directory is not known: set pg_socket_dir in ha.toml".into(),
        )
    })?;
    let owner = crate::actor::owner_name(pg_data)
        .ok_or_else(|| no_way("the data directory's owner is not known".into()))?;
    let endpoint = Endpoint::Socket { dir, port };
    let target = format!("{endpoint} as {owner}");
    let mut client = pg::connect(&ConnSpec {
        endpoint: &endpoint,
        user: &owner,
        dbname: pg::MAINTENANCE_DB,
        password: None,
        timeout,
    })?;
    pg::monitor::bound_statements(&mut client, &target, timeout.max(Duration::from_secs(30)))?;
    Ok((client, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("repuser"), "\"repuser\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
