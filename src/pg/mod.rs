//! Reaching PostgreSQL, for the HA pair and for the application's own
//! database alike: SQL through the `postgres` crate, the replication
//! handshake through [`replication`], the libpq password file through
//! [`passfile`], a running server's `postmaster.pid` through [`pidfile`],
//! what it says about its replication through [`monitor`], and the
//! server's own programs (`pg_controldata`, `pg_ctl`) for what SQL
//! cannot tell.
//!
//! This module owns how keyferry reaches a server ([`Endpoint`],
//! [`ConnSpec`]: a plain connection description, not tied to `ha.toml`),
//! the queries its callers need, and how their failures are reported
//! ([`PgError`]: one line, the server's SQLSTATE kept so callers can give
//! the right fix). It depends on nothing else in the crate.
//!
//! Invariants:
//! - every SQL connection's connect, startup and authentication end within
//!   its [`ConnSpec::timeout`], and a whole read through [`exchange`]
//!   (connect and every statement) too, whatever the server does; a server
//!   that accepts and then says nothing is [`PgError::Silent`], never
//!   "unreachable" (see [`bounded`] for why a deadline on a worker thread,
//!   and not the client's own timeouts, is what bounds it);
//! - passwords are only ever borrowed from the caller and handed to the
//!   connection; they appear in no error, no log line and no command line
//!   (the `postgres` crate keeps its own copy inside its `Config` for the
//!   length of one connection attempt);
//! - programs are run with the `C` locale so their output can be parsed, and
//!   with `PGPASSWORD`/`PGPASSFILE` removed from their environment; those
//!   that act on a data directory run as the directory's owner when
//!   keyferry runs as root (PostgreSQL's programs refuse root), and as the
//!   calling user otherwise;
//! - nothing here writes a file: `pg_hba.conf` edits, backups and audit
//!   records belong to `ops`.

pub(crate) mod basebackup;
pub mod bounded;
pub(crate) mod child;
pub(crate) mod conf;
pub mod dsn;
pub mod monitor;
pub mod passfile;
pub mod peer;
pub mod pidfile;
pub(crate) mod recovery;
pub mod replication;
pub(crate) mod rewind;
pub(crate) mod standby;
pub(crate) mod syncfs;
pub(crate) mod waldump;

pub(crate) use platform::as_owner_of;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use bounded::exchange;
use postgres::Client;
use zeroize::Zeroizing;

/// SQLSTATE `28P01`: the password was wrong.
pub const SQLSTATE_INVALID_PASSWORD: &str = "28P01";
/// SQLSTATE `28000`: no `pg_hba.conf` line lets the connection in (or the
/// role may not log in).
pub const SQLSTATE_INVALID_AUTHORIZATION: &str = "28000";
/// SQLSTATE `42501`: the role lacks a privilege (e.g. REPLICATION).
pub const SQLSTATE_INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE `53300`: too many connections (all WAL senders busy).
pub(crate) const SQLSTATE_TOO_MANY_CONNECTIONS: &str = "53300";

/// The database the SQL connections of the HA checks use.
pub const MAINTENANCE_DB: &str = "postgres";
/// `application_name` of keyferry's connections, so they can be told apart
/// in `pg_stat_activity`.
pub(crate) const APPLICATION_NAME: &str = "keyferry";

/// What an authorization failure (SQLSTATE 28000) was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefusal {
    /// No `pg_hba.conf` line matches (or a `reject` line does).
    NoHbaLine,
    /// The role does not exist on that server.
    NoRole,
    /// The role exists but may not log in (NOLOGIN).
    CannotLogin,
    /// The line's method (peer, ident, cert, …) refused.
    Method,
    /// Another message.
    Other,
}

/// Why a PostgreSQL request failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Nothing answered (connection refused, timed out, no socket file).
    #[error("cannot reach PostgreSQL at {target}: {source}")]
    Unreachable {
        /// Where keyferry tried to connect.
        target: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Something accepted the connection and then did not answer within
    /// the bound: a stopped or hung server, or something else on its port.
    /// It is alive as far as TCP goes; it is not "unreachable".
    #[error("PostgreSQL at {target}: no answer within {ms} ms (the connection was accepted, then nothing came back: a stopped or hung server, or another program on its port)")]
    Silent {
        /// Where keyferry connected.
        target: String,
        /// The bound, in milliseconds.
        ms: u128,
    },
    /// The server answered with an error.
    #[error("PostgreSQL at {target} refused: {message} (SQLSTATE {code})")]
    Server {
        /// Where the server is.
        target: String,
        /// The SQLSTATE.
        code: String,
        /// The server's message, detail and hint on one line.
        message: String,
    },
    /// The conversation went wrong in some other way (unexpected message,
    /// a connection cut in the middle, a feature keyferry does not speak).
    #[error("talking to PostgreSQL at {target} failed: {message}")]
    Protocol {
        /// Where the server is.
        target: String,
        /// What happened, on one line.
        message: String,
    },
    /// The local server's socket admits only the data directory's owner
    /// (`peer` authentication) and keyferry runs neither as it nor as root.
    #[error("{refusal}: the socket admits only {owner}, the data directory's owner, and keyferry runs as another account: run keyferry as root (it then connects as {owner})")]
    NotOwner {
        /// Where the server is.
        target: String,
        /// The owner's account (and role) name.
        owner: String,
        /// The server's refusal, on one line.
        refusal: String,
    },
    /// One of PostgreSQL's programs could not be run or failed.
    #[error("{program} failed: {message}; check pg_bin in ha.toml and that the program runs")]
    Tool {
        /// The program's path.
        program: String,
        /// What went wrong, on one line.
        message: String,
    },
}

impl PgError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// What an authorization failure (SQLSTATE 28000) was, from the
    /// server's message; `None` for any other error. The server sends the
    /// same SQLSTATE for a missing `pg_hba.conf` line, a missing role and
    /// a failed `peer` check, and each has another fix. Its messages are in
    /// English unless `lc_messages` says otherwise: an unrecognised one is
    /// [`AuthRefusal::Other`].
    pub fn auth_refusal(&self) -> Option<AuthRefusal> {
        let PgError::Server { code, message, .. } = self else {
            return None;
        };
        if code != SQLSTATE_INVALID_AUTHORIZATION {
            return None;
        }
        Some(
            if message.contains("no pg_hba.conf entry") || message.contains("rejects connection") {
                AuthRefusal::NoHbaLine
            } else if message.contains("does not exist") && message.contains("role") {
                AuthRefusal::NoRole
            } else if message.contains("not permitted to log in") {
                AuthRefusal::CannotLogin
            } else if message.contains("authentication failed") {
                AuthRefusal::Method
            } else {
                AuthRefusal::Other
            },
        )
    }

    /// Whether nothing answered at all (the server is not running there).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PgError::Unreachable { .. })
    }
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP to a host name or IP address.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix-domain socket directory (Unix only); the socket file is
    /// `<dir>/.s.PGSQL.<port>`.
    Socket {
        /// The socket directory.
        dir: PathBuf,
        /// Port (part of the socket file's name).
        port: u16,
    },
}

impl Endpoint {
    /// TCP to an IP address.
    pub fn ip(ip: IpAddr, port: u16) -> Self {
        Endpoint::Tcp {
            host: ip.to_string(),
            port,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Socket { dir, port } => {
                write!(f, "socket {}/.s.PGSQL.{port}", dir.display())
            }
        }
    }
}

/// One connection's parameters. The password is borrowed, never stored.
#[derive(Clone, Copy)]
pub struct ConnSpec<'a> {
    /// Where.
    pub endpoint: &'a Endpoint,
    /// As which role.
    pub user: &'a str,
    /// To which database.
    pub dbname: &'a str,
    /// The password, when the server may ask for one.
    pub password: Option<&'a [u8]>,
    /// Bounds the connect, the startup and authentication, and (through
    /// [`exchange`]) everything read on the connection.
    pub timeout: Duration,
}

impl fmt::Debug for ConnSpec<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnSpec")
            .field("endpoint", self.endpoint)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password", &self.password.map(|_| "<hidden>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Where a connection's password comes from. Holds it only in zeroizing
/// storage and never shows it.
pub(crate) enum Credentials {
    /// Given by the operator (a prompt, a file, a descriptor, a variable).
    Given(Zeroizing<Vec<u8>>),
    /// Looked up per connection in this libpq password file.
    Passfile(PathBuf),
    /// None: the server must not ask for one.
    None,
}

impl Credentials {
    /// The password for a connection to `host:port`, `database`, as `user`
    /// (`replication` as the database of a physical replication
    /// connection, as libpq matches it).
    pub(crate) fn for_conn(
        &self,
        host: &str,
        port: u16,
        database: &str,
        user: &str,
    ) -> Option<Zeroizing<Vec<u8>>> {
        match self {
            Credentials::Given(p) => Some(p.clone()),
            Credentials::Passfile(path) => passfile::lookup(
                path,
                passfile::Key {
                    host,
                    port,
                    database,
                    user,
                },
            )
            .ok()
            .flatten()
            .map(|p| Zeroizing::new(p.as_bytes().to_vec())),
            Credentials::None => None,
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Given(_) => f.write_str("Credentials::Given(<hidden>)"),
            Credentials::Passfile(path) => write!(f, "Credentials::Passfile({path:?})"),
            Credentials::None => f.write_str("Credentials::None"),
        }
    }
}

/// Opens a SQL connection; connect, startup and authentication together
/// are bounded by `spec.timeout` (see [`bounded`]).
pub fn connect(spec: &ConnSpec<'_>) -> Result<Client, PgError> {
    bounded::connect(spec)
}

/// [`connect`] to the local server's Unix socket as `owner`, the OS
/// account that owns its data directory (whose name is `spec.user`): what
/// `peer` authentication admits, also when keyferry runs as root (see
/// [`peer`]).
pub fn connect_as_owner(spec: &ConnSpec<'_>, owner: peer::Owner) -> Result<Client, PgError> {
    bounded::connect_as_owner(spec, owner)
}

/// Turns a `postgres` crate error into a [`PgError`] for `target`.
pub(crate) fn from_postgres(target: &str, e: postgres::Error) -> PgError {
    if let Some(db) = e.as_db_error() {
        let mut message = db.message().to_owned();
        if let Some(detail) = db.detail() {
            message.push_str("; ");
            message.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            message.push_str("; hint: ");
            message.push_str(hint);
        }
        return PgError::Server {
            target: target.to_owned(),
            code: db.code().code().to_owned(),
            message: one_line(&message),
        };
    }
    let io = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<io::Error>());
    match io {
        Some(io) if is_unreachable_kind(io.kind()) => PgError::Unreachable {
            target: target.to_owned(),
            source: io::Error::new(io.kind(), one_line(&io.to_string())),
        },
        _ => PgError::Protocol {
            target: target.to_owned(),
            message: one_line(&e.to_string()),
        },
    }
}

/// Errors of the connect itself: nothing listens there, or nothing could
/// be reached. Anything later (a reset, an EOF mid-handshake) is a
/// protocol failure: something answered.
pub(crate) fn is_unreachable_kind(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::TimedOut
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::NotFound
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
    )
}

/// Collapses a multi-line message into one line.
pub(crate) fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the HA checks need to know about a running server. Readable by any
/// role that may log in (no superuser needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// `server_version_num`, e.g. 150014.
    pub version_num: u32,
    /// `wal_level`: `minimal`, `replica` or `logical`.
    pub wal_level: String,
    /// `max_wal_senders`.
    pub max_wal_senders: u32,
    /// WAL sender processes running now.
    pub wal_senders_in_use: u32,
    /// Sum of `pg_database_size` over the databases the role may connect
    /// to (all of them for an ordinary role: CONNECT is granted to PUBLIC).
    pub database_bytes: u64,
    /// `pg_is_in_recovery()`: a replica (or a server being restored).
    pub in_recovery: bool,
    /// Rows of `pg_stat_replication`: standbys streaming from this server
    /// (visible to any role; their details need `pg_monitor`).
    pub standbys: u32,
    /// The timeline a primary writes (from its current WAL file's name, which
    /// any role may read); `None` on a replica.
    pub timeline: Option<u32>,
    /// The connected role's rights (REPLICATION, `pg_monitor`).
    pub rights: monitor::RoleRights,
    /// The server's replication slots (with the WAL each retains on a
    /// primary).
    pub slots: Vec<monitor::Slot>,
    /// The settings a hot standby may not have lower than its primary's
    /// ([`HOT_STANDBY_MINIMUMS`]), as this server runs with them.
    pub standby_minimums: Vec<StandbyMinimum>,
    /// WAL the server keeps for replicas beyond what its checkpoints need
    /// (`wal_keep_size`; `wal_keep_segments` before PostgreSQL 13), bytes.
    pub wal_keep_bytes: u64,
    /// Why `pg_rewind` could not rewind this server's data directory after
    /// a failover (neither `wal_log_hints` nor data checksums, or
    /// `full_page_writes` off), as it runs now; `None` when it could.
    pub not_rewindable: Option<String>,
}

/// What a hot standby cannot start without: PostgreSQL refuses to run
/// recovery with any of these lower than its primary's (it checks them
/// against the values the primary logs in its WAL).
pub const HOT_STANDBY_MINIMUMS: [&str; 5] = [
    "max_connections",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "max_wal_senders",
    "max_worker_processes",
];

/// One of [`HOT_STANDBY_MINIMUMS`] on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyMinimum {
    pub name: String,
    pub value: i64,
    /// Set explicitly (a configuration file, `ALTER SYSTEM`), not left at
    /// its default.
    pub set: bool,
    /// Set by `ALTER SYSTEM` (read from `postgresql.auto.conf`; known only
    /// to roles that may read every setting, such as `pg_monitor`).
    pub by_alter_system: bool,
}

impl ServerFacts {
    /// The major version (15 for 150014).
    pub fn major(&self) -> u32 {
        major_of_version_num(self.version_num)
    }
}

/// The major version of a `server_version_num` (10 and later: the first
/// two digits; 9.x: 90600 -> 906).
pub(crate) fn major_of_version_num(num: u32) -> u32 {
    if num >= 100_000 {
        num / 10_000
    } else {
        num / 100
    }
}

/// Reads the server's [`HOT_STANDBY_MINIMUMS`] (any role may).
pub fn standby_minimums(client: &mut Client, target: &str) -> Result<Vec<StandbyMinimum>, PgError> {
    Ok(client
        .query(
            "SELECT name, setting::bigint, source <> 'default', \
                    coalesce(sourcefile LIKE '%postgresql.auto.conf', false) \
             FROM pg_settings WHERE name = ANY($1) ORDER BY name",
            &[&&HOT_STANDBY_MINIMUMS[..]],
        )
        .map_err(|e| from_postgres(target, e))?
        .iter()
        .map(|r| StandbyMinimum {
            name: r.get(0),
            value: r.get(1),
            set: r.get(2),
            by_alter_system: r.get(3),
        })
        .collect())
}

/// Reads [`ServerFacts`] over an open SQL connection.
pub fn server_facts(client: &mut Client, target: &str) -> Result<ServerFacts, PgError> {
    let rights = monitor::rights(client, target)?;
    let slots = monitor::slots(client, target)?;
    let row = client
        .query_one(
            &format!(
                "SELECT current_setting('server_version_num')::int, \
                    current_setting('wal_level'), \
                    current_setting('max_wal_senders')::int, \
                    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int, \
                    (SELECT coalesce(sum(pg_database_size(oid)), 0) FROM pg_database \
                      WHERE has_database_privilege(oid, 'CONNECT'))::bigint, \
                    pg_is_in_recovery(), \
                    (SELECT count(*) FROM pg_stat_replication)::int, \
                    CASE WHEN pg_is_in_recovery() THEN NULL \
                         ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
                    {WAL_KEEP_BYTES}, \
                    current_setting('wal_log_hints') = 'on', \
                    current_setting('data_checksums') = 'on', \
                    current_setting('full_page_writes') = 'on'"
            ),
            &[],
        )
        .map_err(|e| from_postgres(target, e))?;
    let standby_minimums = standby_minimums(client, target)?;
    let non_negative = |v: i32| u32::try_from(v).unwrap_or(0);
    Ok(ServerFacts {
        version_num: non_negative(row.get(0)),
        wal_level: row.get(1),
        max_wal_senders: non_negative(row.get(2)),
        wal_senders_in_use: non_negative(row.get(3)),
        database_bytes: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
        in_recovery: row.get(5),
        standbys: non_negative(row.get(6)),
        timeline: row
            .get::<_, Option<String>>(7)
            .and_then(|wal| u32::from_str_radix(wal.get(..8)?, 16).ok()),
        rights,
        slots,
        standby_minimums,
        wal_keep_bytes: u64::try_from(row.get::<_, i64>(8)).unwrap_or(0),
        not_rewindable: not_rewindable(row.get(9), row.get(10), row.get(11)),
    })
}

/// What keeps `pg_rewind` from a cluster with these settings: it needs
/// every change of a data page after a checkpoint in the WAL (hint bits
/// too: `wal_log_hints` or data checksums), and full-page images.
pub(crate) fn not_rewindable(
    wal_log_hints: bool,
    data_checksums: bool,
    full_page_writes: bool,
) -> Option<String> {
    match (wal_log_hints || data_checksums, full_page_writes) {
        (true, true) => None,
        (false, true) => Some("neither wal_log_hints nor data checksums".into()),
        (true, false) => Some("full_page_writes = off".into()),
        (false, false) => {
            Some("neither wal_log_hints nor data checksums, and full_page_writes = off".into())
        }
    }
}

/// `wal_keep_size` in bytes (from PostgreSQL 13), else `wal_keep_segments`
/// times the default segment size; any role may read either.
const WAL_KEEP_BYTES: &str = "coalesce(pg_size_bytes(current_setting('wal_keep_size', true)), \
     current_setting('wal_keep_segments', true)::bigint * 16777216, 0)::bigint";

/// [`ServerFacts::wal_keep_bytes`] alone.
pub fn wal_keep_bytes(client: &mut Client, target: &str) -> Result<u64, PgError> {
    let row = client
        .query_one(&format!("SELECT {WAL_KEEP_BYTES}"), &[])
        .map_err(|e| from_postgres(target, e))?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// The `pg_hba.conf` the server reads (`SHOW hba_file`; superuser or
/// `pg_read_all_settings`).
pub(crate) fn hba_file(client: &mut Client, target: &str) -> Result<PathBuf, PgError> {
    let row = client
        .query_one("SELECT current_setting('hba_file')", &[])
        .map_err(|e| from_postgres(target, e))?;
    Ok(PathBuf::from(row.get::<_, String>(0)))
}

/// A line of `pg_hba.conf` that PostgreSQL cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HbaLineError {
    /// 1-based line number (`None` when the server gives none).
    pub line: Option<u32>,
    /// The server's message.
    pub error: String,
}

/// Parses the `pg_hba.conf` on disk now, with the server's own parser, and
/// returns its bad lines (`pg_hba_file_rules`; superuser by default).
pub(crate) fn hba_file_errors(
    client: &mut Client,
    target: &str,
) -> Result<Vec<HbaLineError>, PgError> {
    let rows = client
        .query(
            "SELECT line_number, error FROM pg_hba_file_rules \
             WHERE error IS NOT NULL ORDER BY line_number",
            &[],
        )
        .map_err(|e| from_postgres(target, e))?;
    Ok(rows
        .iter()
        .map(|row| HbaLineError {
            line: row
                .get::<_, Option<i32>>(0)
                .and_then(|n| u32::try_from(n).ok()),
            error: one_line(&row.get::<_, String>(1)),
        })
        .collect())
}

/// A rule PostgreSQL reads from the `pg_hba.conf` on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HbaRule {
    /// The database column, one entry per name or keyword.
    pub databases: Vec<String>,
    /// The user column.
    pub users: Vec<String>,
    /// The address, without its mask (`None` for `local` lines).
    pub address: Option<String>,
    /// The netmask (`255.255.255.255` for `/32`).
    pub netmask: Option<String>,
}

/// The rules of the `pg_hba.conf` on disk now, as PostgreSQL's own parser
/// reads them (`pg_hba_file_rules` without the lines in error; superuser
/// by default).
pub(crate) fn hba_file_rules(client: &mut Client, target: &str) -> Result<Vec<HbaRule>, PgError> {
    let rows = client
        .query(
            "SELECT database, user_name, address, netmask FROM pg_hba_file_rules \
             WHERE error IS NULL ORDER BY line_number",
            &[],
        )
        .map_err(|e| from_postgres(target, e))?;
    Ok(rows
        .iter()
        .map(|row| HbaRule {
            databases: row.get::<_, Option<Vec<String>>>(0).unwrap_or_default(),
            users: row.get::<_, Option<Vec<String>>>(1).unwrap_or_default(),
            address: row.get(2),
            netmask: row.get(3),
        })
        .collect())
}

/// `SELECT pg_reload_conf()`: the postmaster re-reads its configuration
/// files, `pg_hba.conf` among them.
pub(crate) fn reload_conf(client: &mut Client, target: &str) -> Result<(), PgError> {
    let row = client
        .query_one("SELECT pg_reload_conf()", &[])
        .map_err(|e| from_postgres(target, e))?;
    if row.get::<_, bool>(0) {
        Ok(())
    } else {
        Err(PgError::Protocol {
            target: target.to_owned(),
            message: "pg_reload_conf() returned false (the postmaster could not be signalled)"
                .into(),
        })
    }
}

/// `SELECT pg_is_in_recovery()`: true on a replica (a standby replaying
/// WAL), false on a primary.
pub(crate) fn in_recovery(client: &mut Client, target: &str) -> Result<bool, PgError> {
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .map_err(|e| from_postgres(target, e))?;
    Ok(row.get(0))
}

/// The path of one of PostgreSQL's programs in `pg_bin`.
pub(crate) fn program(pg_bin: &Path, name: &str) -> PathBuf {
    pg_bin.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A PostgreSQL program in `pg_bin`, in the `C` locale and without the
/// password variables; with `data_dir`, run as that directory's owner
/// (see [`platform::as_owner_of`]).
fn program_command(pg_bin: &Path, name: &str, data_dir: Option<&Path>) -> Command {
    let mut command = Command::new(program(pg_bin, name));
    prepare_program(&mut command, data_dir);
    command
}

/// The environment and account of [`program_command`], for a command made
/// elsewhere (a tied one, see [`child`]).
fn prepare_program(command: &mut Command, data_dir: Option<&Path>) {
    command
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .env("LC_MESSAGES", "C")
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE");
    if let Some(dir) = data_dir {
        platform::as_owner_of(command, dir);
    }
}

fn tool_error(pg_bin: &Path, name: &str, message: String) -> PgError {
    PgError::Tool {
        program: program(pg_bin, name).display().to_string(),
        message,
    }
}

/// Runs a PostgreSQL program and returns its standard output, or a
/// [`PgError::Tool`] with the first line of what it said on failure.
fn run_program(
    pg_bin: &Path,
    name: &str,
    args: &[&std::ffi::OsStr],
    data_dir: Option<&Path>,
) -> Result<String, PgError> {
    let output = program_command(pg_bin, name, data_dir)
        .args(args)
        .output()
        .map_err(|e| tool_error(pg_bin, name, e.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(tool_error(
            pg_bin,
            name,
            format!("{} ({})", one_line(&stderr), output.status),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether a server runs on a data directory of this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerStatus {
    /// `postmaster.pid` names a live process.
    Running,
    /// The directory is a data directory and no server runs on it.
    NotRunning,
}

/// `pg_ctl status` exit code: no server running on the data directory.
const PG_CTL_STATUS_NOT_RUNNING: i32 = 3;

/// `pg_ctl status -D <pg_data>`, run as the data directory's owner: exit 0
/// is [`ServerStatus::Running`], 3 [`ServerStatus::NotRunning`]; anything
/// else (4: no accessible data directory) is an error.
pub(crate) fn server_status(pg_bin: &Path, pg_data: &Path) -> Result<ServerStatus, PgError> {
    let name = "pg_ctl";
    let output = program_command(pg_bin, name, Some(pg_data))
        .arg("status")
        .arg("-D")
        .arg(pg_data)
        .output()
        .map_err(|e| tool_error(pg_bin, name, e.to_string()))?;
    match output.status.code() {
        Some(0) => Ok(ServerStatus::Running),
        Some(PG_CTL_STATUS_NOT_RUNNING) => Ok(ServerStatus::NotRunning),
        _ => {
            let said = one_line(&format!(
                "{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
            Err(tool_error(
                pg_bin,
                name,
                format!(
                    "status of {}: {said} ({})",
                    pg_data.display(),
                    output.status
                ),
            ))
        }
    }
}

/// The major version of the programs in `pg_bin` (from `pg_ctl --version`,
/// e.g. `pg_ctl (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)` -> 15).
pub(crate) fn binaries_major(pg_bin: &Path) -> Result<u32, PgError> {
    let out = run_program(pg_bin, "pg_ctl", &["--version".as_ref()], None)?;
    parse_version_major(&out).ok_or_else(|| {
        tool_error(
            pg_bin,
            "pg_ctl",
            format!("unexpected --version output {:?}", one_line(&out)),
        )
    })
}

fn parse_version_major(text: &str) -> Option<u32> {
    let after = text.split_once(')')?.1.trim_start();
    let number: String = after.chars().take_while(char::is_ascii_digit).collect();
    let major: u32 = number.parse().ok()?;
    if major < 10 {
        // 9.6 and older: major is "9.6".
        let minor: String = after[number.len()..]
            .strip_prefix('.')?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        return Some(major * 100 + minor.parse::<u32>().ok()?);
    }
    Some(major)
}

/// What `pg_controldata` says about a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ControlData {
    /// "Database cluster state", e.g. `in production`, `shut down`,
    /// `in archive recovery`, `shut down in recovery`.
    pub state: String,
    /// "Database system identifier".
    pub system_identifier: Option<String>,
    /// "Latest checkpoint's TimeLineID".
    pub timeline: Option<u32>,
    /// "Latest checkpoint's REDO WAL file": the oldest segment a restart
    /// (and so a replica catching up from the archive) still needs.
    pub redo_wal_file: Option<String>,
    /// "Latest checkpoint location": after a clean shutdown, the end of the
    /// cluster's WAL.
    pub checkpoint_lsn: Option<Lsn>,
    /// "wal_log_hints setting" is `on`.
    pub wal_log_hints: bool,
    /// "Data page checksum version" is not 0.
    pub checksums: bool,
}

/// A WAL position (`X/Y` in PostgreSQL's text form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Lsn(pub u64);

impl Lsn {
    pub(crate) fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.trim().split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        (hi <= u64::from(u32::MAX) && lo <= u64::from(u32::MAX)).then_some(Lsn(hi << 32 | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Runs `pg_controldata -D <pg_data>`.
pub(crate) fn controldata(pg_bin: &Path, pg_data: &Path) -> Result<ControlData, PgError> {
    let out = run_program(
        pg_bin,
        "pg_controldata",
        &["-D".as_ref(), pg_data.as_os_str()],
        Some(pg_data),
    )?;
    parse_controldata(&out).ok_or_else(|| {
        tool_error(
            pg_bin,
            "pg_controldata",
            "its output has no \"Database cluster state\" line".into(),
        )
    })
}

fn parse_controldata(text: &str) -> Option<ControlData> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    Some(ControlData {
        state: field("Database cluster state")?,
        system_identifier: field("Database system identifier"),
        timeline: field("Latest checkpoint's TimeLineID").and_then(|t| t.parse().ok()),
        redo_wal_file: field("Latest checkpoint's REDO WAL file"),
        checkpoint_lsn: field("Latest checkpoint location").and_then(|l| Lsn::parse(&l)),
        wal_log_hints: field("wal_log_hints setting").is_some_and(|v| v == "on"),
        checksums: field("Data page checksum version").is_some_and(|v| v != "0"),
    })
}

#[cfg(unix)]
mod platform {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::Command;

    use super::PgError;

    /// When keyferry runs as root, makes `command` run as the owner of
    /// `dir` (user, primary group, no supplementary groups) from `/`, which
    /// that user can read; PostgreSQL's programs refuse to run as root. A
    /// directory that cannot be read, or that root owns, changes nothing:
    /// the program then reports the problem itself.
    pub(crate) fn as_owner_of(command: &mut Command, dir: &Path) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        if let Ok(meta) = std::fs::metadata(dir) {
            if meta.uid() != 0 {
                command.uid(meta.uid()).gid(meta.gid()).current_dir("/");
            }
        }
    }

    pub(crate) fn socket_host(
        config: &mut postgres::Config,
        dir: &Path,
        _target: &str,
    ) -> Result<(), PgError> {
        config.host_path(dir);
        Ok(())
    }
}

#[cfg(windows)]
mod platform {
    use std::path::Path;
    use std::process::Command;

    use super::PgError;

    /// PostgreSQL's programs on Windows drop an administrator's privileges
    /// themselves (a restricted token), so they run as the caller.
    pub(crate) fn as_owner_of(_command: &mut Command, _dir: &Path) {}

    pub(crate) fn socket_host(
        _config: &mut postgres::Config,
        _dir: &Path,
        target: &str,
    ) -> Result<(), PgError> {
        Err(PgError::Protocol {
            target: target.to_owned(),
            message: "Unix-domain sockets are not available on Windows; use --pg-host".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_major_version_of_the_programs() {
        let cases = [
            (
                "pg_ctl (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n",
                Some(15),
            ),
            ("pg_ctl (PostgreSQL) 17.2\n", Some(17)),
            ("pg_ctl (PostgreSQL) 9.6.24\n", Some(906)),
            ("pg_ctl (PostgreSQL) 16devel\n", Some(16)),
            ("something else", None),
        ];
        for (text, major) in cases {
            assert_eq!(parse_version_major(text), major, "{text:?}");
        }
        assert_eq!(major_of_version_num(150014), 15);
        assert_eq!(major_of_version_num(90624), 906);
    }

    #[test]
    fn reads_pg_controldata_output() {
        let text = "pg_control version number:            1300\n\
                    Database system identifier:           7312345678901234567\n\
                    Database cluster state:               shut down in recovery\n\
                    Latest checkpoint location:           0/3000148\n\
                    Latest checkpoint's TimeLineID:       2\n\
                    wal_log_hints setting:                on\n\
                    Data page checksum version:           0\n";
        let data = parse_controldata(text).unwrap();
        assert_eq!(data.checkpoint_lsn, Some(Lsn(0x3000148)));
        assert!(data.wal_log_hints && !data.checksums);
        assert_eq!(Lsn(0x1_0300_0148).to_string(), "1/3000148");
        assert_eq!(Lsn::parse("1/3000148"), Some(Lsn(0x1_0300_0148)));
        assert_eq!(Lsn::parse("x/1"), None);
        assert_eq!(data.state, "shut down in recovery");
        assert_eq!(
            data.system_identifier.as_deref(),
            Some("7312345678901234567")
        );
        assert_eq!(data.timeline, Some(2));
        assert_eq!(parse_controldata("nothing"), None);
    }

    #[test]
    fn endpoints_name_host_and_port() {
        assert_eq!(
            Endpoint::ip("10.0.0.1".parse().unwrap(), 5432).to_string(),
            "10.0.0.1:5432"
        );
        assert_eq!(
            Endpoint::ip("2001:db8::1".parse().unwrap(), 5432).to_string(),
            "[2001:db8::1]:5432"
        );
        let socket = Endpoint::Socket {
            dir: PathBuf::from("/run/pg"),
            port: 5433,
        };
        assert_eq!(socket.to_string(), "socket /run/pg/.s.PGSQL.5433");
    }
}
