//! `ha::role::observe` against real servers: a primary and its streaming
//! replica on loopback, then each stopped. Proves the rule of
//! `src/ha/role.rs`: a server that answers is `Running Primary` or
//! `Running Replica` by `pg_is_in_recovery()`; one that does not answer is
//! `Stopped` when its data directory is local and `pg_ctl status` says no
//! server runs there, else `Unreachable`.
#![cfg(unix)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::pg::{PgOptions, PgServer};
use keyferry::ha::role::{self, LocalServer, Role};
use keyferry::pg::{self, ConnSpec, Endpoint, PgError};

const TIMEOUT: Duration = Duration::from_secs(5);
const PASSWORD: &str = "role check";

/// `role::observe` of `server` over TCP as repuser with `password`; with
/// `local`, the server's data directory counts as this machine's.
fn observe(server: &PgServer, password: &str, local: bool) -> Result<Role, PgError> {
    let endpoint = Endpoint::ip(Ipv4Addr::LOCALHOST.into(), server.port());
    let spec = ConnSpec {
        endpoint: &endpoint,
        user: "repuser",
        dbname: pg::MAINTENANCE_DB,
        password: Some(password.as_bytes()),
        timeout: TIMEOUT,
    };
    let local = local.then(|| LocalServer {
        pg_bin: server.bin_dir(),
        pg_data: server.data_dir(),
    });
    role::observe(&spec, local)
}

fn role_of(server: &PgServer, local: bool) -> Role {
    observe(server, PASSWORD, local).expect("a role, not an error")
}

#[test]
fn primary_replica_stopped_and_unreachable() {
    let Some(mut primary) = PgServer::start_primary(PgOptions::default()) else {
        return;
    };
    primary.create_replication_user("repuser", PASSWORD);
    let mut replica = primary.start_replica();

    assert_eq!(role_of(&primary, true), Role::RunningPrimary);
    assert_eq!(role_of(&primary, false), Role::RunningPrimary);
    assert_eq!(role_of(&replica, true), Role::RunningReplica);
    assert_eq!(role_of(&replica, false).to_string(), "Running Replica");

    replica.stop();
    assert_eq!(role_of(&replica, true), Role::Stopped);
    assert_eq!(role_of(&replica, false), Role::Unreachable);
    assert_eq!(role_of(&primary, true), Role::RunningPrimary);

    primary.stop();
    assert_eq!(role_of(&primary, true).to_string(), "Stopped");
    assert_eq!(role_of(&primary, false).to_string(), "Unreachable");
}

#[test]
fn a_server_that_refuses_is_an_error_not_a_role() {
    let Some(server) = PgServer::start_primary(PgOptions::default()) else {
        return;
    };
    server.create_replication_user("repuser", PASSWORD);
    let err = observe(&server, "wrong", true).unwrap_err();
    assert_eq!(err.code(), Some(pg::SQLSTATE_INVALID_PASSWORD), "{err}");
}

/// Issue 20 item 6: the server answers SQLSTATE 28000 for a missing role, a
/// role that may not log in and a missing `pg_hba.conf` line alike; the fix
/// differs, so keyferry tells them apart from the message.
#[test]
fn an_authorization_failure_says_which_one_it_is() {
    let Some(server) = PgServer::start_primary(PgOptions::default()) else {
        return;
    };
    server.create_replication_user("repuser", PASSWORD);
    server
        .connect()
        .batch_execute("CREATE ROLE shut NOLOGIN")
        .unwrap();
    let socket = Endpoint::Socket {
        dir: server.socket_dir().to_path_buf(),
        port: server.port(),
    };
    let via_socket = |user: &str| {
        pg::connect(&ConnSpec {
            endpoint: &socket,
            user,
            dbname: pg::MAINTENANCE_DB,
            password: None,
            timeout: TIMEOUT,
        })
        .map(|_| ())
        .unwrap_err()
    };
    let e = via_socket("ghost");
    assert_eq!(e.auth_refusal(), Some(pg::AuthRefusal::NoRole), "{e}");
    let e = via_socket("shut");
    assert_eq!(e.auth_refusal(), Some(pg::AuthRefusal::CannotLogin), "{e}");
    // Only the socket is let in now: TCP finds no line.
    server.write_hba(b"local all all trust\n");
    server
        .connect()
        .batch_execute("SELECT pg_reload_conf()")
        .unwrap();
    let e = observe(&server, PASSWORD, false).unwrap_err();
    assert_eq!(e.auth_refusal(), Some(pg::AuthRefusal::NoHbaLine), "{e}");
}
