//! What one look at the peer showed, as typed evidence, and the one rule
//! that turns it into "this node may act as primary" — for `ha guard` /
//! `ha start` and for `ha failover`'s peer check alike, so the two agree.
//!
//! This module owns the look ([`look`]: one bounded exchange as the
//! replication user: `pg_is_in_recovery()`, the timeline, the pair's
//! generation record), the classifier ([`classify`]: a pure function of
//! that exchange's outcome) and the decision ([`may_be_primary`]).
//!
//! Invariants (DESIGN.md, "Fail closed"):
//! - only two outcomes are positive evidence that the peer is not a
//!   writable primary: [`Evidence::NotListening`] (its host answered that
//!   nothing listens on the port) and [`Evidence::Replica`] (it said so);
//!   a primary of a generation not above this node's is a third, for the
//!   guard only;
//! - every other outcome — no answer, a silent socket, an authentication
//!   failure, "too many clients", missing rights, any error at all — shows
//!   either that the peer may be alive or nothing, and is a refusal that
//!   names what was seen and the way out;
//! - a peer whose address has no route, or whose TCP connect times out, is
//!   [`Evidence::NoAnswer`]: a dead host and a cut network look the same,
//!   so this is not positive evidence; only an operator who has checked the
//!   peer can override it.

use std::fmt;
use std::time::Duration;

use crate::ha::config::HaConfig;
use crate::ha::generation::{self, Record};
use crate::ha::preflight::Side;
use crate::pg::{self, ConnSpec, Credentials, Endpoint, PgError};

/// Why a server that answered would not say what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The password was refused (SQLSTATE 28P01): a stale password here.
    Password,
    /// No `pg_hba.conf` line lets this node in, or its method refused it
    /// (28000).
    NoHbaLine,
    /// The role does not exist there, or may not log in (28000).
    NoRole,
    /// Every connection slot is taken (53300).
    TooManyClients,
    /// The role may not read what the look needs (42501).
    NoRights,
    /// The server is starting, stopping or recovering (57P03).
    NotReady,
    /// Any other error: a protocol failure, a reset, another SQLSTATE.
    Other,
}

impl Refusal {
    fn of(e: &PgError) -> Refusal {
        match e.code() {
            Some(pg::SQLSTATE_INVALID_PASSWORD) => Refusal::Password,
            Some(pg::SQLSTATE_INVALID_AUTHORIZATION) => match e.auth_refusal() {
                Some(pg::AuthRefusal::NoRole | pg::AuthRefusal::CannotLogin) => Refusal::NoRole,
                _ => Refusal::NoHbaLine,
            },
            Some(pg::SQLSTATE_TOO_MANY_CONNECTIONS) => Refusal::TooManyClients,
            Some(pg::SQLSTATE_INSUFFICIENT_PRIVILEGE) => Refusal::NoRights,
            Some("57P03") => Refusal::NotReady,
            // The server asked for a password and none was given.
            None if e.to_string().contains("password missing") => Refusal::Password,
            _ => Refusal::Other,
        }
    }

    /// The word for reports and `--json`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Password => "authentication failed",
            Refusal::NoHbaLine => "no pg_hba.conf line",
            Refusal::NoRole => "no such role",
            Refusal::TooManyClients => "too many clients",
            Refusal::NoRights => "no rights",
            Refusal::NotReady => "not accepting connections yet",
            Refusal::Other => "an error",
        }
    }
}

/// What a look at the peer showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Evidence {
    /// Its host answered that nothing listens on the port (connection
    /// refused): no server runs there now.
    NotListening { detail: String },
    /// Nothing answered: the TCP connect timed out, or there is no route
    /// to the address. A dead host and a cut network look the same.
    NoAnswer { detail: String },
    /// Something accepted the connection and said nothing within the bound
    /// (a stopped or hung server, a tarpit): alive, state unknown.
    Silent { ms: u128 },
    /// The server answered and refused to say what it is.
    Refusing { refusal: Refusal, message: String },
    /// It runs as a replica.
    Replica {
        record: Option<Record>,
        timeline: Option<u32>,
    },
    /// It runs as a primary and accepts writes.
    Primary {
        record: Option<Record>,
        timeline: Option<u32>,
    },
}

impl Evidence {
    /// The generation the peer's server holds (0: no record).
    pub(crate) fn generation(&self) -> Option<u64> {
        match self {
            Evidence::Replica { record, .. } | Evidence::Primary { record, .. } => {
                Some(record.as_ref().map_or(0, |r| r.generation))
            }
            _ => None,
        }
    }

    /// A one-word kind, for `--json` and logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Evidence::NotListening { .. } => "not_listening",
            Evidence::NoAnswer { .. } => "no_answer",
            Evidence::Silent { .. } => "silent",
            Evidence::Refusing { .. } => "refusing",
            Evidence::Replica { .. } => "replica",
            Evidence::Primary { .. } => "primary",
        }
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tl = |t: &Option<u32>| t.map_or_else(String::new, |t| format!(", timeline {t}"));
        match self {
            Evidence::NotListening { detail } => {
                write!(
                    f,
                    "not listening: nothing runs on its PostgreSQL port ({detail})"
                )
            }
            Evidence::NoAnswer { detail } => write!(f, "no answer ({detail})"),
            Evidence::Silent { ms } => write!(
                f,
                "alive but silent: it accepted the connection and gave no answer within {ms} ms"
            ),
            Evidence::Refusing { refusal, message } => {
                write!(f, "alive but refusing ({}): {message}", refusal.as_str())
            }
            Evidence::Replica { timeline, .. } => write!(
                f,
                "a running replica (generation {}{})",
                self.generation().unwrap_or(0),
                tl(timeline)
            ),
            Evidence::Primary { timeline, .. } => write!(
                f,
                "a writable primary (generation {}{})",
                self.generation().unwrap_or(0),
                tl(timeline)
            ),
        }
    }
}

/// What the look reads from a server that answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerRead {
    pub in_recovery: bool,
    pub timeline: Option<u32>,
    pub record: Option<Record>,
}

/// The classifier: the outcome of one bounded exchange, as evidence.
pub(crate) fn classify(outcome: Result<PeerRead, PgError>) -> Evidence {
    match outcome {
        Ok(PeerRead {
            in_recovery: true,
            timeline,
            record,
        }) => Evidence::Replica { record, timeline },
        Ok(PeerRead {
            in_recovery: false,
            timeline,
            record,
        }) => Evidence::Primary { record, timeline },
        Err(PgError::Silent { ms, .. }) => Evidence::Silent { ms },
        Err(PgError::Unreachable { source, .. }) => match source.kind() {
            // A RST from the peer's host (or a missing socket file): the
            // host is there and nothing listens.
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                Evidence::NotListening {
                    detail: source.to_string(),
                }
            }
            _ => Evidence::NoAnswer {
                detail: source.to_string(),
            },
        },
        Err(e) => Evidence::Refusing {
            refusal: Refusal::of(&e),
            message: e.to_string(),
        },
    }
}

/// Reads what [`PeerRead`] holds over an open connection. Every function
/// here is executable by any role (the timeline of a replica needs
/// `pg_monitor` and is `None` without it).
pub(crate) fn read(client: &mut postgres::Client, target: &str) -> Result<PeerRead, PgError> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), \
                    CASE WHEN pg_is_in_recovery() \
                         THEN (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1)::int8 \
                         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8 END",
            &[],
        )
        .map_err(|e| pg::from_postgres(target, e))?;
    Ok(PeerRead {
        in_recovery: row.get(0),
        timeline: row
            .get::<_, Option<i64>>(1)
            .and_then(|t| u32::try_from(t).ok()),
        record: generation::current(client, target)?,
    })
}

/// Looks at `side`'s server as the replication user over TCP: connect,
/// authentication and every read bounded by `timeout` together.
pub(crate) fn look(
    config: &HaConfig,
    side: Side,
    creds: &Credentials,
    timeout: Duration,
) -> Evidence {
    let host = side.address(config).ip();
    let endpoint = Endpoint::ip(host, config.pg_port);
    let password = creds.for_conn(
        &host.to_string(),
        config.pg_port,
        pg::MAINTENANCE_DB,
        &config.replication_user,
    );
    let spec = ConnSpec {
        endpoint: &endpoint,
        user: &config.replication_user,
        dbname: pg::MAINTENANCE_DB,
        password: password.as_ref().map(|p| p.as_slice()),
        timeout,
    };
    let evidence = classify(pg::exchange(&spec, read));
    tracing::info!(peer = %endpoint, kind = evidence.kind(), "looked at the peer");
    evidence
}

/// The way out of a refusal on `evidence`, for a message. `overrule`:
/// how the operator says the peer is down (`--peer-down`, `--force`).
pub(crate) fn way_out(
    evidence: &Evidence,
    config: &HaConfig,
    peer: &str,
    overrule: &str,
) -> String {
    let user = &config.replication_user;
    match evidence {
        Evidence::NoAnswer { .. } => format!(
            "check {peer}'s host; once you know it is off (or its PostgreSQL stopped for good), run this again with {overrule}"
        ),
        Evidence::Silent { .. } => format!(
            "find out what holds {peer}'s PostgreSQL port (a stopped postmaster: `kill -CONT`, or stop it for good), then run this again"
        ),
        Evidence::Refusing { refusal, .. } => match refusal {
            Refusal::Password => format!(
                "give this node the current password of {user} (--password-file/--password-fd/--password-env, or ~/.pgpass), then run this again"
            ),
            Refusal::NoHbaLine => format!(
                "on {peer}, let this node in as {user} (`keyferry hba ensure --peer THIS-NODE-IP`), then run this again"
            ),
            Refusal::NoRole => format!(
                "on {peer}, create {user} with the rights the pair needs (`keyferry ha prepare` there), then run this again"
            ),
            Refusal::TooManyClients => format!(
                "free connection slots on {peer} (or stop it), then run this again"
            ),
            Refusal::NoRights => format!(
                "GRANT pg_monitor TO {user} on the primary (and SELECT on {}), then run this again",
                generation::TABLE
            ),
            Refusal::NotReady => "wait until it accepts connections, then run this again".into(),
            Refusal::Other => format!(
                "read the message and {peer}'s server log, fix it, then run this again"
            ),
        },
        Evidence::Primary { .. } => format!(
            "make this node a replica of {peer} with `keyferry ha rejoin`"
        ),
        Evidence::NotListening { .. } | Evidence::Replica { .. } => String::new(),
    }
}

/// Whether this node may act as primary given what the peer showed: `Ok`
/// with the reason, or `Err` with what was seen (the caller adds the way
/// out). `my_generation`: this node's generation; `peer_checked`: the
/// operator has checked that the peer is down, which answers
/// [`Evidence::NoAnswer`] and nothing else; `primary_ok`: a writable peer
/// of a generation not above `my_generation` is allowed (the guard, where
/// it is a warning) or not (failover, where it would make two).
pub(crate) fn may_be_primary(
    evidence: &Evidence,
    my_generation: u64,
    peer_checked: bool,
    primary_ok: bool,
) -> Result<String, String> {
    match evidence {
        Evidence::NotListening { .. } | Evidence::Replica { .. } => Ok(format!("the peer is {evidence}")),
        Evidence::NoAnswer { .. } if peer_checked => Ok(format!(
            "the peer gave no answer and the operator says it is down ({evidence})"
        )),
        Evidence::Primary { .. } => {
            let theirs = evidence.generation().unwrap_or(0);
            if primary_ok && theirs <= my_generation {
                Ok(format!(
                    "the peer is {evidence}, not above this node's generation {my_generation}: the pair will have two primaries; see `keyferry ha status`"
                ))
            } else {
                Err(format!("the peer is {evidence}"))
            }
        }
        Evidence::NoAnswer { .. } => Err(format!(
            "the peer gave {evidence}: a dead peer and a cut network look the same, and it may have taken over"
        )),
        Evidence::Silent { .. } | Evidence::Refusing { .. } => Err(format!(
            "the peer is {evidence}: it may be a writable primary"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn unreachable(kind: io::ErrorKind) -> PgError {
        PgError::Unreachable {
            target: "10.0.0.2:5432".into(),
            source: io::Error::new(kind, "x"),
        }
    }

    fn server(code: &str) -> PgError {
        PgError::Server {
            target: "10.0.0.2:5432".into(),
            code: code.into(),
            message: "m".into(),
        }
    }

    fn record(generation: u64) -> Option<Record> {
        Some(Record {
            generation,
            primary_addr: "10.0.0.2".into(),
            changed_at: None,
            by_node: "n2".into(),
            action: "failover".into(),
        })
    }

    #[test]
    fn the_classifier_tells_each_outcome_apart() {
        let cases = [
            (
                Err(unreachable(io::ErrorKind::ConnectionRefused)),
                "not_listening",
            ),
            (Err(unreachable(io::ErrorKind::NotFound)), "not_listening"),
            (Err(unreachable(io::ErrorKind::TimedOut)), "no_answer"),
            (
                Err(unreachable(io::ErrorKind::HostUnreachable)),
                "no_answer",
            ),
            (
                Err(unreachable(io::ErrorKind::NetworkUnreachable)),
                "no_answer",
            ),
            (
                Err(PgError::Silent {
                    target: "t".into(),
                    ms: 1000,
                }),
                "silent",
            ),
            (Err(server("28P01")), "refusing"),
            (
                Err(PgError::Protocol {
                    target: "t".into(),
                    message: "connection reset".into(),
                }),
                "refusing",
            ),
        ];
        let missing = classify(Err(PgError::Protocol {
            target: "t".into(),
            message: "invalid configuration: password missing".into(),
        }));
        assert!(
            matches!(
                missing,
                Evidence::Refusing {
                    refusal: Refusal::Password,
                    ..
                }
            ),
            "{missing:?}"
        );
        for (outcome, kind) in cases {
            let e = classify(outcome);
            assert_eq!(e.kind(), kind, "{e}");
        }
        let primary = classify(Ok(PeerRead {
            in_recovery: false,
            timeline: Some(3),
            record: record(7),
        }));
        assert_eq!(primary.generation(), Some(7));
        assert_eq!(
            primary.to_string(),
            "a writable primary (generation 7, timeline 3)"
        );
        let replica = classify(Ok(PeerRead {
            in_recovery: true,
            timeline: None,
            record: None,
        }));
        assert_eq!(replica.to_string(), "a running replica (generation 0)");
        assert!(classify(Err(PgError::Silent {
            target: "t".into(),
            ms: 1000
        }))
        .to_string()
        .contains("no answer within 1000 ms"));
    }

    #[test]
    fn refusals_are_named_by_their_sqlstate() {
        for (code, refusal) in [
            ("28P01", Refusal::Password),
            ("28000", Refusal::NoHbaLine),
            ("53300", Refusal::TooManyClients),
            ("42501", Refusal::NoRights),
            ("57P03", Refusal::NotReady),
            ("XX000", Refusal::Other),
        ] {
            match classify(Err(server(code))) {
                Evidence::Refusing {
                    refusal: r,
                    message,
                } => {
                    assert_eq!(r, refusal, "{code}");
                    assert!(message.contains(code), "{message}");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    /// 28000 is sent for a missing line, a missing role and a failed peer
    /// check alike; the fix differs, so the message tells them apart.
    #[test]
    fn an_authorization_failure_names_a_missing_role_apart_from_a_missing_line() {
        let with = |message: &str| PgError::Server {
            target: "10.0.0.2:5432".into(),
            code: "28000".into(),
            message: message.into(),
        };
        for (message, refusal) in [
            (
                "no pg_hba.conf entry for replication connection from host \"10.0.0.1\", user \"kf_repl\", no encryption",
                Refusal::NoHbaLine,
            ),
            ("role \"kf_repl\" does not exist", Refusal::NoRole),
            ("role \"kf_repl\" is not permitted to log in", Refusal::NoRole),
            ("Peer authentication failed for user \"postgres\"", Refusal::NoHbaLine),
        ] {
            let e = with(message);
            assert_eq!(Refusal::of(&e), refusal, "{message}");
            let fix = crate::ha::preflight::connection_fix(&e, &crate::ha::config::HaConfig::example(), None, true);
            let wants = if refusal == Refusal::NoRole { "ha prepare" } else { "hba ensure" };
            assert!(fix.contains(wants), "{message}: {fix}");
        }
    }

    #[test]
    fn only_positive_evidence_lets_this_node_be_primary() {
        let silent = Evidence::Silent { ms: 1000 };
        let refusing = classify(Err(server("53300")));
        let no_answer = classify(Err(unreachable(io::ErrorKind::TimedOut)));
        let down = classify(Err(unreachable(io::ErrorKind::ConnectionRefused)));
        let replica = Evidence::Replica {
            record: record(9),
            timeline: Some(2),
        };
        let newer = Evidence::Primary {
            record: record(6),
            timeline: Some(2),
        };
        let older = Evidence::Primary {
            record: record(4),
            timeline: Some(1),
        };
        for e in [&down, &replica] {
            assert!(may_be_primary(e, 5, false, false).is_ok(), "{e}");
        }
        for e in [&silent, &refusing, &no_answer, &newer] {
            for primary_ok in [false, true] {
                assert!(may_be_primary(e, 5, false, primary_ok).is_err(), "{e}");
            }
        }
        // The operator's word answers "no answer", and nothing that shows
        // the peer alive.
        assert!(may_be_primary(&no_answer, 5, true, false).is_ok());
        for e in [&silent, &refusing, &newer] {
            assert!(may_be_primary(e, 5, true, true).is_err(), "{e}");
        }
        // A writable peer not above this node: the guard warns, failover
        // refuses.
        assert!(may_be_primary(&older, 5, false, true).is_ok());
        assert!(may_be_primary(&older, 5, false, false).is_err());
        let why = may_be_primary(&refusing, 5, false, true).unwrap_err();
        assert!(
            why.contains("too many clients") && why.contains("may be a writable primary"),
            "{why}"
        );
    }
}
