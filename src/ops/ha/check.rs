//! `keyferry ha check`: the preflight. Each check gives one line — `ok`,
//! `warn` or `fail` — and every `warn`/`fail` carries its fix. Nothing is
//! changed anywhere; servers are only connected to.
//!
//! The checks, in order (names as in `--json`):
//!
//! | name | what |
//! | --- | --- |
//! | `node` | which of the two addresses is this machine's |
//! | `port.<role>.pg`, `port.<role>.web` | TCP connect to each node's PostgreSQL and web-services port, with the timeout |
//! | `password` | where the replication password comes from (never what it is) |
//! | `replication` | a physical replication connection to the primary as the replication user (`IDENTIFY_SYSTEM`); this is what `pg_hba.conf`'s `host replication` line allows |
//! | `sql.<role>` | a SQL connection as the replication user to database `postgres` (the `host all all` line), which the next checks read through |
//! | `wal_level` | the primary's `wal_level` is `replica` or `logical` |
//! | `wal_senders` | the primary's `max_wal_senders` and how many are free |
//! | `version` | the PostgreSQL major version of both servers and of this node's programs agree |
//! | `data_dir` | this node's data directory: missing, empty, or its `pg_controldata` state |
//! | `archive` | WAL files left in the archive directory |
//! | `disk` | free space beside this node's data directory against the primary's size |
//! | `keyring` | this node's keyring fingerprint against the other node's (`--peer-fingerprint`) |
//!
//! A check that needs something an earlier one could not get (the SQL
//! connection, the password) says so as a `warn` rather than failing twice
//! for one cause. Only `fail` makes the command exit non-zero.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use zeroize::Zeroizing;

use super::require_config;
use crate::error::Result;
use crate::fmt::human_bytes;
use crate::ha::archive;
use crate::ha::config::HaConfig;
use crate::ha::net;
use crate::ha::PeerAddr;
use crate::keyring::Fingerprint;
use crate::ops::Home;
use crate::pg::{self, passfile, replication, ConnSpec, Endpoint, PgError, ServerFacts};
use crate::secret::{self, PasswordSource};

/// Warn when the free space is below this multiple of the primary's size
/// (the base backup also needs room for the WAL written while it runs).
const DISK_MARGIN: f64 = 1.25;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the preflight.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Which node of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Secondary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

/// The whole preflight.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// This machine's role, when one of the two addresses is its own.
    pub this_node: Option<Role>,
    pub checks: Vec<Check>,
}

impl CheckReport {
    pub fn failed(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count()
    }
}

/// What `ha check` was given.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Bounds every connection attempt.
    pub timeout: Duration,
    /// The replication user's password source; `None`: the libpq password
    /// file if it has an entry, else a prompt on a terminal, else none.
    pub password: Option<PasswordSource>,
    /// The other node's `keyferry keys fingerprint`, when the operator has
    /// it.
    pub peer_fingerprint: Option<Fingerprint>,
}

struct Checks(Vec<Check>);

impl Checks {
    fn push(
        &mut self,
        name: impl Into<String>,
        status: Status,
        message: impl Into<String>,
        fix: Option<String>,
    ) {
        self.0.push(Check {
            name: name.into(),
            status,
            message: message.into(),
            fix,
        });
    }
    fn ok(&mut self, name: impl Into<String>, message: impl Into<String>) {
        self.push(name, Status::Ok, message, None);
    }
    fn warn(
        &mut self,
        name: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(name, Status::Warn, message, Some(fix.into()));
    }
    fn fail(
        &mut self,
        name: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(name, Status::Fail, message, Some(fix.into()));
    }
}

/// Where the replication password comes from. Holds it only in
/// zeroizing storage.
enum Credentials {
    Given(Zeroizing<Vec<u8>>),
    Passfile(PathBuf),
    None,
}

impl Credentials {
    fn for_conn(
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

/// Runs the preflight. Errors only when `ha.toml` is missing or broken, or
/// a named password source cannot be read; everything else is a check.
pub fn check(home: &Home, opts: &CheckOptions) -> Result<CheckReport> {
    let config = require_config(home)?;
    let mut c = Checks(Vec::new());
    let timeout = opts.timeout;

    // Which node is this?
    let this_node = match (
        net::is_local(config.primary.ip()),
        net::is_local(config.secondary.ip()),
    ) {
        (true, false) => Some(Role::Primary),
        (false, true) => Some(Role::Secondary),
        (true, true) => {
            c.warn(
                "node",
                format!("both {} and {} are addresses of this machine", config.primary, config.secondary),
                "the two nodes must be different machines: correct --primary/--secondary with `keyferry ha init … --force`",
            );
            None
        }
        (false, false) => {
            c.warn(
                "node",
                format!(
                    "neither {} nor {} is an address of this machine; checking both as remote",
                    config.primary, config.secondary
                ),
                "run the check on one of the two nodes, or correct the addresses with `keyferry ha init … --force`",
            );
            None
        }
    };
    if let Some(role) = this_node {
        c.ok(
            "node",
            format!(
                "this is the {} ({}), node \"{}\"",
                role.as_str(),
                address_of(&config, role),
                config.node
            ),
        );
    }

    // Ports.
    let mut pg_port_open = [false, false];
    for (i, role) in [Role::Primary, Role::Secondary].into_iter().enumerate() {
        let ip = address_of(&config, role);
        for (kind, port, service) in [
            ("pg", config.pg_port, "PostgreSQL"),
            ("web", config.web_port, "web services"),
        ] {
            let name = format!("port.{}.{kind}", role.as_str());
            let addr = SocketAddr::new(ip.ip(), port);
            match net::tcp_probe(addr, timeout) {
                Ok(took) => {
                    if kind == "pg" {
                        pg_port_open[i] = true;
                    }
                    c.ok(
                        name,
                        format!("{} {service} port {port} on {ip} reachable ({} ms)", role.as_str(), took.as_millis()),
                    );
                }
                Err(e) => c.fail(
                    name,
                    format!(
                        "{} {service} port {port} on {ip}: {}",
                        role.as_str(),
                        net::describe_probe_error(&e)
                    ),
                    format!(
                        "start {service} on {ip}, make it listen on {ip} (PostgreSQL: listen_addresses), and open TCP {port} in the firewalls between the nodes"
                    ),
                ),
            }
        }
    }

    // The password.
    let user = config.replication_user.as_str();
    let credentials = credentials(&config, opts, &mut c)?;

    // The replication connection to the primary.
    let primary_addr = SocketAddr::new(config.primary.ip(), config.pg_port);
    if pg_port_open[0] {
        let host = config.primary.to_string();
        let password = credentials.for_conn(&host, config.pg_port, "replication", user);
        match replication::identify_system(primary_addr, user, password.as_ref().map(|p| p.as_slice()), timeout) {
            Ok(id) => c.ok(
                "replication",
                format!(
                    "replication connection to {primary_addr} as {user} works (system {}, timeline {})",
                    id.system_id, id.timeline
                ),
            ),
            Err(e) => {
                let fix = connection_fix(&e, &config, this_node, true);
                c.fail("replication", format!("replication connection to {primary_addr} as {user}: {e}"), fix);
            }
        }
    } else {
        c.fail(
            "replication",
            format!(
                "replication connection to {primary_addr} not tried: the port is not reachable"
            ),
            "make the primary's PostgreSQL port reachable first (see above)",
        );
    }

    // SQL facts from both servers.
    let mut facts: [Option<ServerFacts>; 2] = [None, None];
    for (i, role) in [Role::Primary, Role::Secondary].into_iter().enumerate() {
        let ip = address_of(&config, role);
        let name = format!("sql.{}", role.as_str());
        let endpoint = Endpoint::ip(ip.ip(), config.pg_port);
        if !pg_port_open[i] {
            c.warn(
                name,
                format!("SQL connection to {endpoint} not tried: the port is not reachable"),
                "make the port reachable first (see above)",
            );
            continue;
        }
        let password =
            credentials.for_conn(&ip.to_string(), config.pg_port, pg::MAINTENANCE_DB, user);
        let spec = ConnSpec {
            endpoint: &endpoint,
            user,
            dbname: pg::MAINTENANCE_DB,
            password: password.as_ref().map(|p| p.as_slice()),
            timeout,
        };
        let got = pg::connect(&spec)
            .and_then(|mut client| pg::server_facts(&mut client, &endpoint.to_string()));
        match got {
            Ok(f) => {
                c.ok(
                    name,
                    format!(
                        "SQL connection to {endpoint} as {user} works (PostgreSQL {})",
                        f.major()
                    ),
                );
                facts[i] = Some(f);
            }
            Err(e) => {
                let fix = connection_fix(&e, &config, this_node, false);
                let status_fail = role == Role::Primary;
                let message =
                    format!("SQL connection to {endpoint} as {user} (database postgres): {e}");
                if status_fail {
                    c.fail(name, message, fix);
                } else {
                    c.warn(name, message, fix);
                }
            }
        }
    }
    let [primary_facts, secondary_facts] = facts;

    // wal_level and senders.
    match &primary_facts {
        Some(f) if f.wal_level == "replica" || f.wal_level == "logical" => {
            c.ok("wal_level", format!("primary wal_level = {}", f.wal_level));
        }
        Some(f) => c.fail(
            "wal_level",
            format!("primary wal_level = {}: a replica cannot stream from it", f.wal_level),
            "set wal_level = replica (and max_wal_senders = 10) in the primary's postgresql.conf and restart it",
        ),
        None => c.warn("wal_level", "primary wal_level not read: no SQL connection", "fix sql.primary above"),
    }
    match &primary_facts {
        Some(f) if f.max_wal_senders == 0 => c.fail(
            "wal_senders",
            "primary max_wal_senders = 0: no replica can connect",
            "set max_wal_senders = 10 in the primary's postgresql.conf and restart it",
        ),
        Some(f) if f.wal_senders_in_use >= f.max_wal_senders => c.fail(
            "wal_senders",
            format!(
                "primary max_wal_senders = {}, all in use",
                f.max_wal_senders
            ),
            "raise max_wal_senders in the primary's postgresql.conf and restart it, or stop an unused replica or pg_basebackup",
        ),
        Some(f) => c.ok(
            "wal_senders",
            format!(
                "primary max_wal_senders = {}, {} in use, {} free",
                f.max_wal_senders,
                f.wal_senders_in_use,
                f.max_wal_senders - f.wal_senders_in_use
            ),
        ),
        None => c.warn("wal_senders", "primary max_wal_senders not read: no SQL connection", "fix sql.primary above"),
    }

    // Versions.
    let local_major = pg::binaries_major(&config.pg_bin);
    let mut majors: Vec<(String, u32)> = Vec::new();
    if let Some(f) = &primary_facts {
        majors.push(("primary server".into(), f.major()));
    }
    if let Some(f) = &secondary_facts {
        majors.push(("secondary server".into(), f.major()));
    }
    match &local_major {
        Ok(m) => majors.push((format!("programs in {}", config.pg_bin.display()), *m)),
        Err(e) => c.warn(
            "pg_bin",
            format!("cannot tell the version of this node's PostgreSQL programs: {e}"),
            "set pg_bin in ha.toml to the directory of pg_ctl and pg_basebackup (`keyferry ha init … --pg-bin DIR --force`)",
        ),
    }
    let described = majors
        .iter()
        .map(|(what, m)| format!("{what} {m}"))
        .collect::<Vec<_>>()
        .join(", ");
    let distinct = {
        let mut v: Vec<u32> = majors.iter().map(|(_, m)| *m).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    if distinct > 1 {
        c.fail(
            "version",
            format!("PostgreSQL major versions differ: {described}"),
            "install the same PostgreSQL major version on both nodes (a replica must run the primary's major version)",
        );
    } else if majors.len() < 2 {
        c.warn(
            "version",
            format!(
                "only {} known: {}",
                majors.len(),
                if described.is_empty() {
                    "nothing"
                } else {
                    &described
                }
            ),
            "make both servers reachable with SQL (see above) so their versions can be compared",
        );
    } else {
        c.ok(
            "version",
            format!("same PostgreSQL major version: {described}"),
        );
    }

    // This node's data directory.
    data_dir_check(&config, this_node, &mut c);

    // The archive directory.
    match &config.archive_dir {
        None => c.ok("archive", "no archive_dir in ha.toml: nothing to check"),
        Some(dir) => match archive::plan(dir) {
            Ok(plan) if plan.files.is_empty() => {
                c.ok("archive", format!("{}: no WAL archive files", dir.display()))
            }
            Ok(plan) => c.warn(
                "archive",
                format!(
                    "{}: {} WAL archive files ({}) left from an earlier setup",
                    dir.display(),
                    plan.files.len(),
                    human_bytes(plan.total_bytes())
                ),
                "run `keyferry ha archive clean --dry-run`, then `keyferry ha archive clean`",
            ),
            Err(e) => c.warn(
                "archive",
                e.to_string(),
                "create the archive directory or correct archive_dir (`keyferry ha init … --archive-dir DIR --force`)",
            ),
        },
    }

    // Free disk against the primary's size.
    disk_check(&config, primary_facts.as_ref(), &mut c);

    // Keyring fingerprints.
    keyring_check(home, opts.peer_fingerprint.as_ref(), &mut c);

    Ok(CheckReport {
        this_node,
        checks: c.0,
    })
}

fn address_of(config: &HaConfig, role: Role) -> PeerAddr {
    match role {
        Role::Primary => config.primary,
        Role::Secondary => config.secondary,
    }
}

fn credentials(config: &HaConfig, opts: &CheckOptions, c: &mut Checks) -> Result<Credentials> {
    let user = &config.replication_user;
    let prompt = format!("Password of the replication user {user}: ");
    if let Some(source) = &opts.password {
        let password = source.read(&prompt)?;
        let what = match source {
            PasswordSource::Prompt => "typed on the terminal".to_owned(),
            PasswordSource::File(p) => format!("from --password-file {}", p.display()),
            PasswordSource::Fd(fd) => format!("from --password-fd {fd}"),
            PasswordSource::Env(name) => format!("from --password-env {name}"),
        };
        c.ok("password", format!("replication password {what}"));
        return Ok(Credentials::Given(Zeroizing::new(
            password.as_bytes().to_vec(),
        )));
    }
    if let Some(path) = pg::passfile::default_path() {
        let key = passfile::Key {
            host: &config.primary.to_string(),
            port: config.pg_port,
            database: "replication",
            user,
        };
        match passfile::lookup(&path, key) {
            Ok(Some(_)) => {
                c.ok(
                    "password",
                    format!(
                        "replication password from the libpq password file {}",
                        path.display()
                    ),
                );
                return Ok(Credentials::Passfile(path));
            }
            Ok(None) => {}
            Err(passfile::Unused::TooOpen) => c.warn(
                "passfile",
                format!("{} is ignored: others may read it", path.display()),
                format!("chmod 0600 {}", path.display()),
            ),
            Err(passfile::Unused::Unreadable(e)) => c.warn(
                "passfile",
                format!("{} cannot be read: {e}", path.display()),
                "fix its permissions or point PGPASSFILE elsewhere",
            ),
        }
    }
    if secret::have_terminal() {
        let password = PasswordSource::Prompt.read(&prompt)?;
        c.ok("password", "replication password typed on the terminal");
        return Ok(Credentials::Given(Zeroizing::new(
            password.as_bytes().to_vec(),
        )));
    }
    c.warn(
        "password",
        "no replication password: no source given, no terminal, no matching libpq password file entry",
        format!(
            "pass --password-file/--password-fd/--password-env, or add `{}:{}:replication:{user}:PASSWORD` to ~/.pgpass (mode 0600)",
            config.primary, config.pg_port
        ),
    );
    Ok(Credentials::None)
}

/// The fix for a failed connection, from the server's SQLSTATE.
fn connection_fix(
    e: &PgError,
    config: &HaConfig,
    this_node: Option<Role>,
    replication: bool,
) -> String {
    let user = &config.replication_user;
    let here = match this_node {
        Some(Role::Primary) => config.primary.to_string(),
        Some(Role::Secondary) => config.secondary.to_string(),
        None => "THIS-NODE-IP".to_owned(),
    };
    match e.code() {
        Some(pg::SQLSTATE_INVALID_PASSWORD) => format!(
            "give the right password of {user}, or set it on the primary: ALTER ROLE {user} PASSWORD '…' (run \\password {user} in psql)"
        ),
        Some(pg::SQLSTATE_INVALID_AUTHORIZATION) => format!(
            "on the server, run `keyferry hba ensure --peer {here}` (it adds the replication and all lines for this node), or check that {user} may log in"
        ),
        Some(pg::SQLSTATE_INSUFFICIENT_PRIVILEGE) => format!(
            "on the primary: ALTER ROLE {user} WITH REPLICATION LOGIN"
        ),
        Some(pg::SQLSTATE_TOO_MANY_CONNECTIONS) if replication => {
            "raise max_wal_senders (at least 2 more than replicas) in the primary's postgresql.conf and restart it".into()
        }
        Some(_) => "read the server's message above and its log".into(),
        None if e.to_string().contains("password") => {
            "give the password with --password-file/--password-fd/--password-env or in ~/.pgpass".into()
        }
        None => "check that the server runs and listens on that address (listen_addresses) and that no firewall is in between".into(),
    }
}

fn data_dir_check(config: &HaConfig, this_node: Option<Role>, c: &mut Checks) {
    let dir = &config.pg_data;
    let listed = std::fs::read_dir(dir).map(|mut entries| entries.next().is_none());
    match listed {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => c.warn(
            "data_dir",
            format!("{} does not exist", dir.display()),
            "correct pg_data in ha.toml (`keyferry ha init … --pg-data DIR --force`), or create the directory's parent before the replica is bootstrapped",
        ),
        Err(e) => c.warn(
            "data_dir",
            format!("{} cannot be read: {e}", dir.display()),
            "run the check as root/Administrator or as the data directory's owner",
        ),
        Ok(true) => c.ok("data_dir", format!("{} is empty", dir.display())),
        Ok(false) => match pg::controldata(&config.pg_bin, dir) {
            Ok(control) => {
                let running_primary_state = control.state == "in production";
                let message = format!(
                    "{}: {} (system {}, timeline {})",
                    dir.display(),
                    control.state,
                    control.system_identifier.as_deref().unwrap_or("?"),
                    control.timeline.map_or("?".into(), |t| t.to_string())
                );
                if this_node == Some(Role::Primary) && !running_primary_state {
                    c.warn(
                        "data_dir",
                        message,
                        "this node is the primary but its cluster is not in production: start it, or check which node is primary",
                    );
                } else {
                    c.ok("data_dir", message);
                }
            }
            Err(e) => {
                if dir.join("PG_VERSION").is_file() {
                    c.warn(
                        "data_dir",
                        format!("{} looks like a data directory but pg_controldata failed: {e}", dir.display()),
                        "run the check as root or as the data directory's owner, and check pg_bin in ha.toml",
                    );
                } else {
                    c.fail(
                        "data_dir",
                        format!("{} is not empty and not a PostgreSQL data directory", dir.display()),
                        "correct pg_data in ha.toml (`keyferry ha init … --pg-data DIR --force`)",
                    );
                }
            }
        },
    }
}

/// The nearest existing directory at or above `path`.
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.is_dir())
}

fn disk_check(config: &HaConfig, primary: Option<&ServerFacts>, c: &mut Checks) {
    let Some(dir) = existing_ancestor(&config.pg_data) else {
        c.warn(
            "disk",
            format!(
                "no existing directory at or above {}",
                config.pg_data.display()
            ),
            "correct pg_data in ha.toml",
        );
        return;
    };
    let free = match crate::fsutil::available_space(dir) {
        Ok(f) => f,
        Err(e) => {
            c.warn(
                "disk",
                format!("cannot read the free space of {}: {e}", dir.display()),
                "check the file system by hand (df)",
            );
            return;
        }
    };
    let Some(primary) = primary else {
        c.warn(
            "disk",
            format!(
                "{} free at {}; the primary's size is unknown (no SQL connection)",
                human_bytes(free),
                dir.display()
            ),
            "fix sql.primary above to compare",
        );
        return;
    };
    let need = primary.database_bytes;
    let message = format!(
        "{} free at {}, primary databases {}",
        human_bytes(free),
        dir.display(),
        human_bytes(need)
    );
    if free < need {
        c.fail(
            "disk",
            message,
            format!(
                "free at least {} on the file system of {} before bootstrapping",
                human_bytes(need - free),
                dir.display()
            ),
        );
    } else if (free as f64) < (need as f64) * DISK_MARGIN {
        c.warn(
            "disk",
            message,
            "the base backup also needs room for the WAL written while it runs: free more space",
        );
    } else {
        c.ok("disk", message);
    }
}

fn keyring_check(home: &Home, peer: Option<&Fingerprint>, c: &mut Checks) {
    let mine = if home.has_keystore() {
        match home.load_keystore() {
            Ok(store) => store.keyring.fingerprint(),
            Err(e) => {
                c.warn(
                    "keyring",
                    format!("this node's keyring cannot be read: {e}"),
                    "see the message",
                );
                return;
            }
        }
    } else {
        c.warn(
            "keyring",
            format!("no keyring on this node ({})", home.root().display()),
            "on the secondary: `keyferry import -n keys.exp` with the primary's bundle; on the primary: `keyferry init`",
        );
        return;
    };
    match peer {
        Some(theirs) if *theirs == mine => c.ok("keyring", format!("this node's keyring {mine} matches the other node's")),
        Some(theirs) => c.fail(
            "keyring",
            format!("this node's keyring {mine} differs from the other node's {theirs}"),
            "export the primary's keys (`keyferry export -n keys.exp`) and import them on the secondary (`keyferry import -n keys.exp`)",
        ),
        None => c.warn(
            "keyring",
            format!("this node's keyring is {mine}; the other node's is not visible from here"),
            "run `keyferry keys fingerprint` on the other node and pass it with --peer-fingerprint",
        ),
    }
}
