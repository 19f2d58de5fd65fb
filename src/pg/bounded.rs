//! Exchanges with a server that end within a bound, whatever the server
//! does: the one way keyferry opens SQL connections ([`super::connect`])
//! and reads a server end to end ([`exchange`]).
//!
//! Why a worker thread and a deadline, and not the `postgres` crate's own
//! settings: `connect_timeout` bounds only the TCP (or Unix socket)
//! connect; the startup, the authentication and every query after it wait
//! for as long as the socket stays open. `keepalives` and
//! `tcp_user_timeout` end a connection only when the peer's *kernel* stops
//! answering, and a frozen postmaster (SIGSTOP), a hung VM whose network
//! stack still runs, or a tarpit keeps acknowledging every byte while
//! saying nothing. `statement_timeout` is enforced by the server, so a
//! server that does not run cannot enforce it. The blocking client cannot
//! be interrupted from outside, so the whole exchange runs on a thread of
//! its own and the caller waits on a channel with a deadline. All three
//! settings are still applied: statement_timeout bounds a slow query on a
//! live server (it fails with the server's message instead of the
//! deadline's), and keepalives and tcp_user_timeout let a thread left
//! behind end once the peer's host is gone for good.
//!
//! Invariants:
//! - a call returns within `timeout` plus [`CONNECT_GRACE`] of its start;
//! - an exchange that has not finished by then is reported as
//!   [`PgError::Silent`] ("no answer within N ms"), never as unreachable:
//!   the TCP connect is bounded by `timeout` inside the thread, so a
//!   connect that never completes reports itself as a timeout first;
//! - a thread that misses its deadline is left behind, blocked on its
//!   socket; it owns its copy of the password (zeroized when it ends) and
//!   everything it touches, and its result is dropped unread.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use zeroize::Zeroizing;

use super::peer::{self, Identity, Owner};
use super::{
    from_postgres, platform, ConnSpec, Endpoint, PgError, APPLICATION_NAME,
    SQLSTATE_INVALID_AUTHORIZATION, SQLSTATE_INVALID_PASSWORD,
};

/// How long after `timeout` the caller still waits: the thread's own TCP
/// connect timeout (exactly `timeout`) must be able to report itself
/// before the deadline calls the server silent.
pub(crate) const CONNECT_GRACE: Duration = Duration::from_millis(250);

/// A [`ConnSpec`] the worker thread owns.
struct Owned {
    endpoint: Endpoint,
    user: String,
    dbname: String,
    password: Option<Zeroizing<Vec<u8>>>,
    timeout: Duration,
    /// Connect as this account (the data directory's owner): see
    /// [`peer`].
    owner: Option<Owner>,
}

impl Owned {
    fn of(spec: &ConnSpec<'_>, owner: Option<Owner>) -> Self {
        Owned {
            owner,
            endpoint: spec.endpoint.clone(),
            user: spec.user.to_owned(),
            dbname: spec.dbname.to_owned(),
            password: spec.password.map(|p| Zeroizing::new(p.to_vec())),
            timeout: spec.timeout,
        }
    }

    fn connect(&self) -> Result<Client, PgError> {
        let target = self.endpoint.to_string();
        let mut config = postgres::Config::new();
        config
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(APPLICATION_NAME)
            .connect_timeout(self.timeout)
            .keepalives(true)
            .keepalives_idle(self.timeout.max(Duration::from_secs(1)))
            .tcp_user_timeout(self.timeout.max(Duration::from_secs(1)));
        match &self.endpoint {
            Endpoint::Tcp { host, port } => {
                config.host(host).port(*port);
            }
            Endpoint::Socket { dir, port } => {
                platform::socket_host(&mut config, dir, &target)?;
                config.port(*port);
            }
        }
        if let Some(password) = &self.password {
            config.password(password.as_slice());
        }
        let Some(owner) = self.owner else {
            return config.connect(NoTls).map_err(|e| from_postgres(&target, e));
        };
        let connected = peer::as_owner(owner, || config.connect(NoTls))
            .map_err(|why| PgError::Protocol {
                target: target.clone(),
                message: format!(
                    "cannot connect as {}, the data directory's owner: {why}",
                    self.user
                ),
            })?
            .map_err(|e| from_postgres(&target, e));
        match connected {
            Err(e)
                if owner.identity() == Identity::Other
                    && matches!(
                        e.code(),
                        Some(SQLSTATE_INVALID_AUTHORIZATION | SQLSTATE_INVALID_PASSWORD)
                    ) =>
            {
                Err(PgError::NotOwner {
                    target,
                    owner: self.user.clone(),
                    refusal: e.to_string(),
                })
            }
            other => other,
        }
    }
}

/// Runs `work` on a thread and waits for it until `spec.timeout` (plus
/// [`CONNECT_GRACE`]) has passed since `started`.
fn on_worker<T, F>(
    spec: &ConnSpec<'_>,
    owner: Option<Owner>,
    started: Instant,
    work: F,
) -> Result<T, PgError>
where
    T: Send + 'static,
    F: FnOnce(Owned) -> Result<T, PgError> + Send + 'static,
{
    let owned = Owned::of(spec, owner);
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("keyferry-pg".into())
        .spawn(move || {
            let _ = tx.send(work(owned));
        });
    let target = spec.endpoint.to_string();
    if let Err(e) = spawned {
        return Err(PgError::Protocol {
            target,
            message: format!("cannot start a thread for the connection: {e}"),
        });
    }
    let deadline = started + spec.timeout + CONNECT_GRACE;
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(result) => result,
        Err(_) => Err(PgError::Silent {
            target,
            ms: spec.timeout.as_millis(),
        }),
    }
}

/// Opens a SQL connection: connect, startup and authentication together
/// bounded by `spec.timeout`. Statements on the returned client are
/// bounded only by what the caller sets (`statement_timeout`); a read that
/// must not hang on a frozen server goes through [`exchange`].
pub(crate) fn connect(spec: &ConnSpec<'_>) -> Result<Client, PgError> {
    on_worker(spec, None, Instant::now(), |owned| owned.connect())
}

/// [`connect`] through a Unix socket as `owner`, the OS account of the
/// role `spec.user`, as `peer` authentication wants it: when keyferry runs
/// as root, the worker thread takes the owner's identity for the connect
/// (see [`peer`]).
pub(crate) fn connect_as_owner(spec: &ConnSpec<'_>, owner: Owner) -> Result<Client, PgError> {
    on_worker(spec, Some(owner), Instant::now(), |owned| owned.connect())
}

/// Connects and runs `work` on the connection, the whole of it (connect,
/// authentication, `statement_timeout`, every statement of `work`) bounded
/// by `spec.timeout`. `work` gets the client and the target's name for
/// its errors.
pub fn exchange<T, F>(spec: &ConnSpec<'_>, work: F) -> Result<T, PgError>
where
    T: Send + 'static,
    F: FnOnce(&mut Client, &str) -> Result<T, PgError> + Send + 'static,
{
    on_worker(spec, None, Instant::now(), move |owned| {
        let target = owned.endpoint.to_string();
        let mut client = owned.connect()?;
        super::monitor::bound_statements(&mut client, &target, owned.timeout)?;
        work(&mut client, &target)
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};

    use super::*;

    fn spec(endpoint: &Endpoint, timeout: Duration) -> ConnSpec<'_> {
        ConnSpec {
            endpoint,
            user: "nobody",
            dbname: "postgres",
            password: Some(b"not sent anywhere real"),
            timeout,
        }
    }

    #[test]
    fn a_listener_that_never_answers_is_silent_within_the_bound() {
        // Accepts (the kernel completes the handshake for the backlog)
        // and never reads or writes: a frozen postmaster, seen from here.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let endpoint = Endpoint::ip(
            Ipv4Addr::LOCALHOST.into(),
            listener.local_addr().unwrap().port(),
        );
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = exchange(&spec(&endpoint, timeout), |c, t| {
            super::super::in_recovery(c, t)
        })
        .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, PgError::Silent { ms: 300, .. }), "{err}");
        assert!(!err.is_unreachable());
        assert!(
            took < timeout + CONNECT_GRACE + Duration::from_millis(200),
            "{took:?}"
        );
        assert!(err.to_string().contains("no answer within 300 ms"), "{err}");
        let started = Instant::now();
        assert!(matches!(
            connect(&spec(&endpoint, timeout)),
            Err(PgError::Silent { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(listener);
    }

    #[test]
    fn a_closed_port_is_unreachable_not_silent() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let endpoint = Endpoint::ip(Ipv4Addr::LOCALHOST.into(), port);
        let err = exchange(&spec(&endpoint, Duration::from_secs(2)), |_, _| Ok(())).unwrap_err();
        assert!(err.is_unreachable(), "{err}");
    }
}
