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
//!   action. Written only through the local administrative connection
//!   ([`local_admin`]: the Unix socket as the data directory's owner, or
//!   loopback TCP on Windows; never over the network); the replication
//!   user may only read it;
//! - per node in `ha status --json`.
//!
//! This module owns the table (its SQL and its reading) and the local
//! administrative connection that writes it; deciding when to write is the
//! callers' (`ops::ha`), but the rule of `ha.toml`'s generation is here:
//! it only rises ([`Forward`] is the one way to a generation to write),
//! and it is written only into an `ha.toml` whose addresses agree with the
//! pair's record and the replica's actual upstream ([`check_addresses`]).
//! Invariants: a generation row is inserted, never updated; rows are
//! removed only by the undo of a switchover that did not promote (the row
//! was written before the old primary stopped, so that it reaches the new
//! primary inside the WAL the replica replays).

use std::path::Path;
use std::time::Duration;

use postgres::Client;
use serde::{Deserialize, Serialize};

use crate::pg::{self, from_postgres, PgError};

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

/// A generation `ha.toml` may take: never below the one it holds. The
/// only constructor, [`Forward::new`], refuses to go backwards, so every
/// writer of `ha.toml`'s generation (the roles sync, an import with
/// `--accept-config`) goes through the one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forward {
    from: u64,
    to: u64,
}

/// Why a generation may not be written into `ha.toml`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GenerationError {
    #[error("generation {to} is behind ha.toml's {from}: the pair's generation only rises, so ha.toml keeps {from} (what offered {to} comes from a node that is behind)")]
    Backwards { from: u64, to: u64 },
    #[error("ha.toml was left as it was: {problem}; fix its addresses with `keyferry ha init … --force`, then run the command again")]
    Disagrees { problem: String },
}

impl Forward {
    /// From `ha.toml`'s generation `from` to `to`; an error when `to` is
    /// lower.
    pub(crate) fn new(from: u64, to: u64) -> Result<Self, GenerationError> {
        if to < from {
            return Err(GenerationError::Backwards { from, to });
        }
        Ok(Self { from, to })
    }

    /// The generation to write.
    pub(crate) fn value(self) -> u64 {
        self.to
    }

    /// Whether it is above the one held.
    pub(crate) fn raised(self) -> bool {
        self.to > self.from
    }
}

/// Whether `ha.toml`'s addresses (`primary`, `secondary`, as it would be
/// written) agree with the pair's record and with the replica's actual
/// upstream (`sender_host` of its WAL receiver, when known): the record's
/// primary must be `ha.toml`'s primary, and the replica must stream from
/// it.
pub(crate) fn check_addresses(
    primary: &str,
    secondary: &str,
    record: &Record,
    upstream: Option<&str>,
) -> Result<(), GenerationError> {
    if record.primary_addr != primary {
        return Err(GenerationError::Disagrees {
            problem: format!(
                "the pair's record ({TABLE}, generation {}) names {} the primary, which is neither of ha.toml's addresses (primary {primary}, secondary {secondary})",
                record.generation, record.primary_addr
            ),
        });
    }
    if let Some(upstream) = upstream.filter(|u| *u != primary) {
        return Err(GenerationError::Disagrees {
            problem: format!(
                "the replica streams from {upstream}, not from the primary {primary} that ha.toml and the pair's record (generation {}) name",
                record.generation
            ),
        });
    }
    Ok(())
}

/// `"name"` with embedded quotes doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The local server, as its own administrator, with the port from its
/// `postmaster.pid` (else `port`). On Unix through its Unix socket (its
/// directory from `postmaster.pid`, else `socket_dir`) as the OS account
/// that owns the data directory, with no password, which `peer`
/// authentication admits also when keyferry runs as root ([`pg::peer`]):
/// there keyferry never needs a superuser password. On Windows, which has
/// no Unix socket, over loopback TCP as the administrative role, with the
/// password the operator keeps for it in the libpq password file (see
/// [`admin`]). This is how keyferry writes on its own server.
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
    let (mut client, target) = admin::connect(pg_data, dir, port, timeout)?;
    pg::monitor::bound_statements(&mut client, &target, timeout.max(Duration::from_secs(30)))?;
    Ok((client, target))
}

/// The administrative connection's platform part: how keyferry proves to
/// its own server that it is its administrator.
#[cfg(unix)]
mod admin {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use postgres::Client;

    use crate::pg::{self, ConnSpec, Endpoint, PgError};

    /// The Unix socket in `dir` as the data directory's owner (`peer`).
    pub(super) fn connect(
        pg_data: &Path,
        dir: Option<PathBuf>,
        port: u16,
        timeout: Duration,
    ) -> Result<(Client, String), PgError> {
        let no_way = |message: String| PgError::Protocol {
            target: pg_data.display().to_string(),
            message,
        };
        let dir = dir.ok_or_else(|| {
            no_way(
                "the local server's socket directory is not known: set pg_socket_dir in ha.toml"
                    .into(),
            )
        })?;
        let (owner, account) = crate::actor::owner_name(pg_data)
            .zip(pg::peer::Owner::of(pg_data))
            .ok_or_else(|| no_way("the data directory's owner is not known".into()))?;
        let endpoint = Endpoint::Socket { dir, port };
        let target = format!("{endpoint} as {owner}");
        let client = pg::connect_as_owner(
            &ConnSpec {
                endpoint: &endpoint,
                user: &owner,
                dbname: pg::MAINTENANCE_DB,
                password: None,
                timeout,
            },
            account,
        )?;
        Ok((client, target))
    }
}

/// Windows has no Unix socket and no `peer` authentication: the local
/// server is reached over loopback TCP (`127.0.0.1`, which initdb's
/// `pg_hba.conf` admits with a password) as the role [`ADMIN_USER`], with
/// the password the operator already keeps for it in the libpq password
/// file (`PGPASSFILE`, else `%APPDATA%\postgresql\pgpass.conf`, a line
/// `127.0.0.1:PORT:*:postgres:PASSWORD` or `localhost:…`). No line: the
/// connection is tried without a password (a `trust` rule admits it), and
/// a refusal says where the password goes.
#[cfg(windows)]
mod admin {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use postgres::Client;

    use crate::pg::{self, passfile, ConnSpec, Endpoint, PgError};

    /// The administrative role on Windows: the superuser the PostgreSQL
    /// installer creates.
    pub(crate) const ADMIN_USER: &str = "postgres";
    const LOOPBACK: &str = "127.0.0.1";

    pub(super) fn connect(
        _pg_data: &Path,
        _dir: Option<PathBuf>,
        port: u16,
        timeout: Duration,
    ) -> Result<(Client, String), PgError> {
        let password = [LOOPBACK, "localhost"].into_iter().find_map(|host| {
            passfile::find(passfile::Key {
                host,
                port,
                database: pg::MAINTENANCE_DB,
                user: ADMIN_USER,
            })
        });
        let endpoint = Endpoint::Tcp {
            host: LOOPBACK.into(),
            port,
        };
        let target = format!("{endpoint} as {ADMIN_USER}");
        let spec = ConnSpec {
            endpoint: &endpoint,
            user: ADMIN_USER,
            dbname: pg::MAINTENANCE_DB,
            password: password.as_ref().map(|p| p.as_bytes()),
            timeout,
        };
        match pg::connect(&spec) {
            Ok(client) => Ok((client, target)),
            Err(PgError::Server { code, message, .. }) if code == "28P01" || code == "28000" => {
                let file = passfile::expected_path().map_or_else(
                    || "%APPDATA%\\postgresql\\pgpass.conf".to_owned(),
                    |(p, _)| p.display().to_string(),
                );
                Err(PgError::Protocol {
                    target,
                    message: format!(
                        "{message}; keyferry reaches its own server on Windows as {ADMIN_USER} over loopback: put that role's password in {file} as the line {LOOPBACK}:{port}:*:{ADMIN_USER}:PASSWORD (readable by this account only)"
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("repuser"), "\"repuser\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
    #[test]
    fn the_generation_never_goes_backwards() {
        assert_eq!(
            Forward::new(4, 3),
            Err(GenerationError::Backwards { from: 4, to: 3 })
        );
        let same = Forward::new(4, 4).unwrap();
        assert!(!same.raised());
        assert_eq!(same.value(), 4);
        let up = Forward::new(4, 5).unwrap();
        assert!(up.raised());
        assert_eq!(up.value(), 5);
    }

    #[test]
    fn addresses_must_agree_with_the_record_and_the_upstream() {
        let record = Record {
            generation: 4,
            primary_addr: "10.231.5.1".into(),
            changed_at: None,
            by_node: "n2".into(),
            action: "failover".into(),
        };
        assert!(check_addresses("10.231.5.1", "10.231.5.2", &record, Some("10.231.5.1")).is_ok());
        assert!(check_addresses("10.231.5.1", "10.231.5.2", &record, None).is_ok());
        let typo = check_addresses("10.231.5.11", "10.231.5.2", &record, None).unwrap_err();
        assert!(typo.to_string().contains("10.231.5.11"), "{typo}");
        assert!(typo.to_string().contains("ha init"), "{typo}");
        let elsewhere =
            check_addresses("10.231.5.1", "10.231.5.2", &record, Some("10.231.5.9")).unwrap_err();
        assert!(
            elsewhere.to_string().contains("streams from 10.231.5.9"),
            "{elsewhere}"
        );
        assert!(!elsewhere.to_string().contains('\n'));
    }
}
