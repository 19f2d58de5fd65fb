//! The steps several pair operations share (bootstrap, rejoin,
//! switchover, failover): the replication password file, the standby
//! configuration of a data directory, starting the local server as a
//! journaled step, the wait until a replica has caught up, the slot left on
//! a demoted node; and [`Pair`], the one context value every pair
//! operation's steps take (its observer is [`crate::ops::progress`]'s).
//!
//! Invariants: the password file is written owner-only and owned by the
//! server's account, never inside the data directory (a base backup would
//! carry it); files in a data directory go through `ha::datafile` (never
//! through a link); every wait is bounded by the caller's timeout.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::bootstrap::step_error;
use super::effects::PairSteps;
use super::roles::local_admin;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::ha::config::HaConfig;
use crate::ha::datafile;
use crate::ha::service::Server;
use crate::ha::PeerAddr;
use crate::node::Change;
use crate::node::Home;
use crate::pg::basebackup;
use crate::pg::standby::{self, Upstream};
use crate::pg::{self, ConnSpec, Endpoint, PgError};

/// One pair operation's context: the node's home, its pair configuration
/// (as last synced from the pair's generation record), its local server
/// and the operation's options. The steps that need most of these take
/// this one value (read-only) beside the observer they report to; the
/// small helpers take the pieces they read.
pub(crate) struct Pair<'a, O> {
    pub home: &'a Home,
    pub config: HaConfig,
    pub server: Server,
    pub opts: &'a O,
}

impl<'a, O> Pair<'a, O> {
    /// The context of an operation on the node at `home` whose server is
    /// waited for up to `timeout`.
    pub(crate) fn new(home: &'a Home, config: HaConfig, timeout: Duration, opts: &'a O) -> Self {
        let server = Server::of(&config, timeout);
        Self {
            home,
            config,
            server,
            opts,
        }
    }
}

/// The libpq password file the replica reads its password from: beside
/// the data directory (inside it, a base backup taken from this node after
/// a switchover would carry the password along).
pub(crate) fn passfile_path(config: &HaConfig) -> PathBuf {
    basebackup::sibling(&config.pg_data, "keyferry", "replication.pgpass")
}

/// The path whose owner the server's files belong to: the data directory,
/// or its parent when there is none yet.
pub(super) fn owner_reference(config: &HaConfig) -> PathBuf {
    if config.pg_data.exists() {
        config.pg_data.clone()
    } else {
        fsutil::parent_dir(&config.pg_data).to_path_buf()
    }
}

pub(super) fn write_passfile(
    change: &mut Change<'_>,
    config: &HaConfig,
    upstream_addr: PeerAddr,
    password: &Zeroizing<String>,
    owner_ref: &Path,
) -> Result<()> {
    let path = passfile_path(config);
    let up = upstream(config, upstream_addr, &path, None);
    let line = standby::passfile_line(&up, password).ok_or_else(|| {
        Error::Usage(
            "the replication password has a line break: libpq's password file cannot hold it"
                .into(),
        )
    })?;
    // The data directory's parent belongs to the server's account on most
    // systems: it is written through a held descriptor, never by path.
    let beside = open_data(fsutil::parent_dir(&path), None)?;
    let owner = open_data(owner_ref, None)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    change.put_file(&beside, &name, line.as_bytes(), &owner)
}

pub(super) fn upstream<'a>(
    config: &'a HaConfig,
    upstream_addr: PeerAddr,
    passfile: &'a Path,
    slot: Option<&'a str>,
) -> Upstream<'a> {
    Upstream {
        host: upstream_addr.to_string(),
        port: config.pg_port,
        user: &config.replication_user,
        application_name: &config.node,
        passfile,
        slot,
    }
}

/// Writes `name` in the data directory `dir` (through its descriptor),
/// owned like the directory.
pub(super) fn write_owned(dir: &datafile::Dir, name: &str, contents: &[u8]) -> Result<()> {
    dir.write(name, contents).map_err(Error::io(format!(
        "cannot write {}",
        dir.path().join(name).display()
    )))
}

/// Opens the data directory to write in (never through a link); `expected`
/// is the directory keyferry created, when it did.
pub(super) fn open_data(path: &Path, expected: Option<datafile::DirId>) -> Result<datafile::Dir> {
    datafile::Dir::open(path, expected)
        .map_err(Error::io(format!("cannot open {}", path.display())))
}

/// `standby.signal`, and `primary_conninfo` (naming the password file) and
/// `primary_slot_name` in `postgresql.auto.conf`, every other line of which
/// is kept.
pub(super) fn write_standby(
    config: &HaConfig,
    data: &datafile::Dir,
    upstream_addr: PeerAddr,
    slot: Option<&str>,
) -> Result<()> {
    write_owned(data, "standby.signal", b"")?;
    let auto = "postgresql.auto.conf";
    let existing = data
        .read_text(auto)
        .map_err(Error::io(format!(
            "cannot read {}",
            data.path().join(auto).display()
        )))?
        .unwrap_or_default();
    let passfile = passfile_path(config);
    let up = upstream(config, upstream_addr, &passfile, slot);
    write_owned(data, auto, standby::auto_conf(&existing, &up).as_bytes())
}

/// Starts the local server as a step whose undo stops it again.
pub(super) fn start_step(change: &mut Change<'_>, server: &Server, fix: &str) -> Result<()> {
    change.start_server(server, &|e| step_error("starting the replica", e, fix))
}

/// Step 6: the primary sees this node streaming and replayed up to the
/// primary's WAL position when the wait began. Asked of the primary, whose
/// `pg_stat_replication` the replication user reads through `pg_monitor`.
pub(super) fn wait_caught_up(
    config: &HaConfig,
    password: &Zeroizing<String>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let me = config.secondary.to_string();
    let target_pos = config.primary.to_string();
    let mut last;
    let mut target: Option<String> = None;
    // One connection for all the polls (a new one costs an authentication
    // each time); opened again only after an error.
    let mut client: Option<postgres::Client> = None;
    loop {
        match poll_once(
            config,
            password,
            connect_timeout,
            &mut client,
            &me,
            &mut target,
        ) {
            Ok(Some(lsn)) => return Ok(lsn),
            Ok(None) => last = "the primary does not see this node streaming yet".into(),
            Err(e) => {
                client = None;
                last = e.to_string();
            }
        }
        if Instant::now() >= deadline {
            return Err(step_error(
                "waiting for the replica to catch up",
                format!("not caught up after {} s: {last}", timeout.as_secs()),
                &format!(
                    "read the replica's server log, check `keyferry ha check` (pg_hba.conf on {target_pos}, the replication user's pg_monitor membership), then run the bootstrap again, with a longer --timeout if the primary is busy"
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn poll_once(
    config: &HaConfig,
    password: &Zeroizing<String>,
    connect_timeout: Duration,
    client: &mut Option<postgres::Client>,
    me: &str,
    target: &mut Option<String>,
) -> Result<Option<String>, PgError> {
    let where_ = config.primary.to_string();
    if client.is_none() {
        *client = Some(primary_sql(config, password, connect_timeout)?);
    }
    let Some(client) = client.as_mut() else {
        return Ok(None);
    };
    let target = match target {
        Some(t) => t.clone(),
        None => {
            let row = client
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .map_err(|e| pg::from_postgres(&where_, e))?;
            let t: String = row.get(0);
            *target = Some(t.clone());
            t
        }
    };
    let row = client
        .query_opt(
            "SELECT bool_or(state = 'streaming' AND replay_lsn >= $2::text::pg_lsn) \
             FROM pg_stat_replication WHERE host(client_addr) = $1",
            &[&me, &target],
        )
        .map_err(|e| pg::from_postgres(&where_, e))?;
    let done: Option<bool> = row.and_then(|r| r.get(0));
    Ok(done.unwrap_or(false).then_some(target))
}

/// A SQL connection to the primary as the replication user.
pub(super) fn primary_sql(
    config: &HaConfig,
    password: &Zeroizing<String>,
    timeout: Duration,
) -> Result<postgres::Client, PgError> {
    let endpoint = Endpoint::ip(config.primary.ip(), config.pg_port);
    pg::connect(&ConnSpec {
        endpoint: &endpoint,
        user: &config.replication_user,
        dbname: pg::MAINTENANCE_DB,
        password: Some(password.as_bytes()),
        timeout,
    })
}

/// Drops the physical replication slot `slot` on this node's own server
/// when nothing uses it: a demoted node keeps the slot its replica used,
/// which would retain WAL for nobody. For switchover and `ha rejoin`.
pub(crate) fn drop_local_slot(
    config: &HaConfig,
    slot: &str,
    timeout: Duration,
) -> Result<bool, PgError> {
    let (mut client, target) = local_admin(config, timeout)?;
    let rows = client
        .query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND slot_type = 'physical' AND NOT active",
            &[&slot],
        )
        .map_err(|e| pg::from_postgres(&target, e))?;
    Ok(!rows.is_empty())
}
