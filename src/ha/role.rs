//! A node's role as `ha status` shows it: `Running Primary`,
//! `Running Replica`, `Stopped` or `Unreachable`, and how it is found.
//!
//! The rule, in order:
//!
//! 1. A SQL connection to the node works: `SELECT pg_is_in_recovery()`
//!    says `Running Replica` (true) or `Running Primary` (false).
//! 2. Nothing answers (connection refused, timeout, no socket file, host or
//!    network unreachable — see [`PgError::is_unreachable`]) and the node's
//!    data directory is on this machine: `pg_ctl status` on it, run as the
//!    directory's owner, says no server runs there -> `Stopped`.
//! 3. Nothing answers otherwise (a remote node, or a local one whose
//!    `pg_ctl status` says it runs or cannot tell) -> `Unreachable`.
//! 4. Something answers but refuses or fails (a wrong password, no
//!    `pg_hba.conf` line, a server still starting): an error, not a role,
//!    since the server runs but what it is cannot be seen; the error says
//!    why and how to fix it.
//!
//! `Display` gives exactly the four strings above; serde (for `--json`)
//! uses snake case identifiers (`running_primary`, `running_replica`,
//! `stopped`, `unreachable`), which scripts can match without spaces.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::pg::{self, ConnSpec, PgError, ServerStatus};

/// What a node of the pair is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Its server runs and accepts writes.
    RunningPrimary,
    /// Its server runs in recovery, replaying WAL from a primary.
    RunningReplica,
    /// Its data directory is on this machine and no server runs on it.
    Stopped,
    /// Nothing answers at its address and port.
    Unreachable,
}

impl Role {
    /// The role of a server that answered `pg_is_in_recovery()`.
    pub(crate) fn from_recovery(in_recovery: bool) -> Self {
        if in_recovery {
            Role::RunningReplica
        } else {
            Role::RunningPrimary
        }
    }

    /// The role of a node where nothing answered, given what
    /// `pg_ctl status` said about its local data directory (`None`: the
    /// node is remote, or its directory is not known).
    pub(crate) fn when_unanswered(local: Option<Result<ServerStatus, PgError>>) -> Self {
        match local {
            Some(Ok(ServerStatus::NotRunning)) => Role::Stopped,
            _ => Role::Unreachable,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::RunningPrimary => "Running Primary",
            Role::RunningReplica => "Running Replica",
            Role::Stopped => "Stopped",
            Role::Unreachable => "Unreachable",
        })
    }
}

/// A node's data directory on this machine and the programs that run it.
#[derive(Debug, Clone, Copy)]
pub struct LocalServer<'a> {
    /// Directory of `pg_ctl`.
    pub pg_bin: &'a Path,
    /// The data directory.
    pub pg_data: &'a Path,
}

/// Finds the role of the server `spec` connects to, by the rule of the
/// module documentation. `local`: the node's data directory when it is on
/// this machine.
pub fn observe(spec: &ConnSpec<'_>, local: Option<LocalServer<'_>>) -> Result<Role, PgError> {
    match pg::exchange(spec, pg::in_recovery) {
        Ok(in_recovery) => Ok(Role::from_recovery(in_recovery)),
        Err(e) if e.is_unreachable() => Ok(Role::when_unanswered(
            local.map(|l| pg::server_status(l.pg_bin, l.pg_data)),
        )),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};
    use std::time::Duration;

    use super::*;
    use crate::pg::Endpoint;

    #[test]
    fn shows_the_four_states_by_their_names() {
        let all = [
            (Role::RunningPrimary, "Running Primary", "running_primary"),
            (Role::RunningReplica, "Running Replica", "running_replica"),
            (Role::Stopped, "Stopped", "stopped"),
            (Role::Unreachable, "Unreachable", "unreachable"),
        ];
        for (role, shown, json) in all {
            assert_eq!(role.to_string(), shown);
            assert_eq!(serde_json::to_value(role).unwrap(), json);
            assert_eq!(serde_json::from_value::<Role>(json.into()).unwrap(), role);
        }
    }

    #[test]
    fn recovery_tells_replica_from_primary() {
        assert_eq!(Role::from_recovery(true), Role::RunningReplica);
        assert_eq!(Role::from_recovery(false), Role::RunningPrimary);
    }

    #[test]
    fn unanswered_is_stopped_only_when_pg_ctl_says_so() {
        let tool = || PgError::Tool {
            program: "pg_ctl".into(),
            message: "no data directory".into(),
        };
        assert_eq!(Role::when_unanswered(None), Role::Unreachable);
        assert_eq!(
            Role::when_unanswered(Some(Ok(ServerStatus::NotRunning))),
            Role::Stopped
        );
        assert_eq!(
            Role::when_unanswered(Some(Ok(ServerStatus::Running))),
            Role::Unreachable
        );
        assert_eq!(Role::when_unanswered(Some(Err(tool()))), Role::Unreachable);
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let endpoint = Endpoint::ip(Ipv4Addr::LOCALHOST.into(), port);
        let spec = ConnSpec {
            endpoint: &endpoint,
            user: "postgres",
            dbname: pg::MAINTENANCE_DB,
            password: None,
            timeout: Duration::from_secs(2),
        };
        assert_eq!(observe(&spec, None).unwrap(), Role::Unreachable);
        // A "local" directory with no pg_ctl to ask stays Unreachable.
        let dir = tempfile::tempdir().unwrap();
        let local = LocalServer {
            pg_bin: dir.path(),
            pg_data: dir.path(),
        };
        assert_eq!(observe(&spec, Some(local)).unwrap(), Role::Unreachable);
    }
}
