//! keyferry's PostgreSQL client pieces against a real server on loopback:
//! the replication handshake (SCRAM and MD5, right and wrong password) and
//! the facts the preflight reads.
#![cfg(unix)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::pg::{PgOptions, PgServer};
use keyferry::pg::{self, replication, ConnSpec, Endpoint};

const TIMEOUT: Duration = Duration::from_secs(5);
const PASSWORD: &str = "rep: 'secret' \"pw\"";

#[test]
fn replication_handshake_and_server_facts() {
    let Some(server) = PgServer::start_primary(PgOptions::default()) else {
        return;
    };
    server.create_replication_user("repuser", PASSWORD);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()));

    // initdb's sample file allows replication from 127.0.0.1 with SCRAM.
    let id = replication::identify_system(addr, "repuser", Some(PASSWORD.as_bytes()), TIMEOUT)
        .expect("replication connection with the right password");
    assert!(id.system_id.len() > 10, "{id:?}");
    assert_eq!(id.timeline, 1);
    assert!(id.server_version.is_some());

    let wrong = replication::identify_system(addr, "repuser", Some(b"wrong"), TIMEOUT).unwrap_err();
    assert_eq!(wrong.code(), Some(pg::SQLSTATE_INVALID_PASSWORD), "{wrong}");
    let message = wrong.to_string();
    assert!(!message.contains("wrong\""), "{message}");
    assert!(!message.contains('\n'), "{message}");

    let none = replication::identify_system(addr, "repuser", None, TIMEOUT).unwrap_err();
    assert!(none.to_string().contains("password"), "{none}");

    // A role without REPLICATION is refused as such.
    server
        .connect()
        .batch_execute("CREATE ROLE plain LOGIN PASSWORD 'plainpassword'")
        .unwrap();
    let plain =
        replication::identify_system(addr, "plain", Some(b"plainpassword"), TIMEOUT).unwrap_err();
    assert_eq!(
        plain.code(),
        Some(pg::SQLSTATE_INSUFFICIENT_PRIVILEGE),
        "{plain}"
    );

    // MD5 as well, when pg_hba.conf asks for it.
    let hba = String::from_utf8(server.read_hba()).unwrap();
    server.write_hba(hba.replace("scram-sha-256", "md5").as_bytes());
    server
        .connect()
        .batch_execute("SELECT pg_reload_conf()")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    replication::identify_system(addr, "repuser", Some(PASSWORD.as_bytes()), TIMEOUT)
        .expect("md5 (with a SCRAM-stored password PostgreSQL falls back to SCRAM)");

    // The facts the preflight reads, as the unprivileged replication user.
    let endpoint = Endpoint::ip(Ipv4Addr::LOCALHOST.into(), server.port());
    let spec = ConnSpec {
        endpoint: &endpoint,
        user: "repuser",
        dbname: pg::MAINTENANCE_DB,
        password: Some(PASSWORD.as_bytes()),
        timeout: TIMEOUT,
    };
    let mut client = pg::connect(&spec).expect("SQL connection as repuser");
    let facts = pg::server_facts(&mut client, &endpoint.to_string()).unwrap();
    assert_eq!(facts.wal_level, "replica");
    assert!(facts.max_wal_senders > 0);
    assert!(facts.database_bytes > 1_000_000, "{facts:?}");
    assert!(facts.major() >= 10);
    assert!(!facts.in_recovery);
    assert_eq!(facts.standbys, 0);
    assert_eq!(facts.timeline, Some(1), "a fresh cluster writes timeline 1");

    // With a streaming replica: the primary counts it (the unprivileged
    // role sees the rows of pg_stat_replication), the replica is in
    // recovery. These are the facts the `roles` check judges.
    let replica = server.start_replica();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut facts = pg::server_facts(&mut client, &endpoint.to_string()).unwrap();
    while facts.standbys == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        facts = pg::server_facts(&mut client, &endpoint.to_string()).unwrap();
    }
    assert_eq!(facts.standbys, 1, "{facts:?}");
    let replica_endpoint = Endpoint::ip(Ipv4Addr::LOCALHOST.into(), replica.port());
    let mut on_replica = pg::connect(&ConnSpec {
        endpoint: &replica_endpoint,
        ..spec
    })
    .expect("SQL connection to the replica");
    let replica_facts = pg::server_facts(&mut on_replica, &replica_endpoint.to_string()).unwrap();
    assert!(replica_facts.in_recovery, "{replica_facts:?}");
    assert_eq!(replica_facts.timeline, None);

    let closed = Endpoint::ip(Ipv4Addr::LOCALHOST.into(), 1);
    let err = pg::connect(&ConnSpec {
        endpoint: &closed,
        ..spec
    })
    .err()
    .unwrap();
    assert!(err.is_unreachable(), "{err}");
}
