//! The pair's preflight as named checks that return facts, so `ha check`,
//! the bootstrap's preflight and `ha status` can run all of them or only
//! the ones they need.
//!
//! Each check is a function that returns a [`Fact`]: a name (as in
//! `ha check --json`), a [`Status`] and a one-line message, with the fix
//! for every `warn` and `fail`. The checks, and the order [`run`] gives
//! them in:
//!
//! | name | function | what |
//! | --- | --- | --- |
//! | `node` | [`this_node`] | which of the two addresses is this machine's |
//! | `port.<side>.pg`, `port.<side>.web` | [`port_reachable`] | TCP connect to each node's PostgreSQL and web-services port, with the timeout |
//! | `password`, `passfile` | (the caller's) | where the replication password comes from (never what it is) |
//! | `replication` | [`replication_connection`] | a physical replication connection to the primary as the replication user (`IDENTIFY_SYSTEM`); this is what `pg_hba.conf`'s `host replication` line allows |
//! | `sql.<side>` | [`sql_connection`] | a SQL connection as the replication user to database `postgres` (the `host all all` line), which the next checks read through |
//! | `rights` | [`rights`] | the replication user has `REPLICATION` (fail without) and `pg_monitor` (warn without: `ha status` from the other node cannot see the replication's state and lag) |
//! | `roles` | [`roles`] | the servers' roles agree with `ha.toml`, no split brain, the secondary streams |
//! | `wal_level` | [`wal_level`] | the primary's `wal_level` is `replica` or `logical` |
//! | `wal_senders` | [`max_wal_senders`] | the primary's `max_wal_senders` and how many are free |
//! | `slots` | [`slots`] | the primary's replication slots: an inactive one is a leftover (warn) and the WAL it retains is named |
//! | `wal_retention` | [`wal_retention`] | the primary keeps WAL for its replica: a slot in use or `wal_keep_size` above 0 (warn without: a replica that falls behind, or one starting from a copy, can need WAL the primary already removed) |
//! | `rewind` | [`rewind`] | each node could be rewound by `pg_rewind` after a failover: `wal_log_hints` or data checksums, and `full_page_writes` (warn without: its rejoin would copy the whole cluster) |
//! | `pg_bin`, `version` | [`versions_match`] | the PostgreSQL major version of both servers and of this node's programs agree |
//! | `data_dir` | [`data_dir_state`] | this node's data directory: missing, empty, or its `pg_controldata` state |
//! | `old_data` | [`old_data_dirs`] | old data directories a bootstrap kept beside `pg_data`, with their sizes (information: `ok`) |
//! | `archive` | [`archive_contents`] | WAL files left in the archive directory |
//! | `disk` | [`free_disk`] | free space beside this node's data directory against the primary's size |
//!
//! A check that needs something an earlier one could not get (the SQL
//! connection, the port) says so as a `warn` rather than failing twice for
//! one cause; its inputs say what it needs. Only `fail` should stop a
//! caller. Nothing here changes anything: servers are only connected to,
//! directories only read. Passwords come in as [`Credentials`] (prompting
//! is the caller's) and appear in no fact.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::archive;
use super::config::HaConfig;
use super::net;
use super::PeerAddr;
use crate::fmt::human_bytes;
use crate::pg::{self, replication, ConnSpec, Credentials, Endpoint, PgError, ServerFacts};

/// The functions `pg_rewind` needs on its source for a role that is not a
/// superuser (PostgreSQL's documentation of `pg_rewind`).
pub(crate) const REWIND_FUNCTIONS: [&str; 4] = [
    "pg_ls_dir(text, boolean, boolean)",
    "pg_stat_file(text, boolean)",
    "pg_read_binary_file(text)",
    "pg_read_binary_file(text, bigint, bigint, boolean)",
];

/// Warn when the free space is below this multiple of the primary's size
/// (the base backup also needs room for the WAL written while it runs).
const DISK_MARGIN: f64 = 1.25;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Nothing to do.
    Ok,
    /// Worth fixing; does not stop a bootstrap.
    Warn,
    /// Must be fixed first.
    Fail,
}

impl Status {
    /// `ok`, `warn` or `fail`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Fact {
    /// The check's name, e.g. `port.primary.pg`.
    pub name: String,
    /// Its verdict.
    pub status: Status,
    /// What was found, on one line.
    pub message: String,
    /// What to do, for `warn` and `fail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Fact {
    /// An `ok` fact.
    pub(crate) fn ok(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(name, Status::Ok, message, None)
    }

    /// A `warn` fact with its fix.
    pub(crate) fn warn(
        name: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(name, Status::Warn, message, Some(fix.into()))
    }

    /// A `fail` fact with its fix.
    pub(crate) fn fail(
        name: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(name, Status::Fail, message, Some(fix.into()))
    }

    fn new(
        name: impl Into<String>,
        status: Status,
        message: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        Self {
            name: name.into(),
            status,
            message: message.into(),
            fix,
        }
    }
}

/// Which node of the pair (as `ha.toml` names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Side {
    /// `primary` in `ha.toml`.
    Primary,
    /// `secondary` in `ha.toml`.
    Secondary,
}

impl Side {
    /// Both, primary first.
    pub(crate) const BOTH: [Side; 2] = [Side::Primary, Side::Secondary];

    /// `primary` or `secondary`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Secondary => "secondary",
        }
    }

    /// This side's address in `config`.
    pub(crate) fn address(self, config: &HaConfig) -> PeerAddr {
        match self {
            Side::Primary => config.primary,
            Side::Secondary => config.secondary,
        }
    }
}

/// A port of a node that the preflight probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    /// PostgreSQL (`pg_port`).
    Pg,
    /// The web services (`web_port`).
    Web,
}

/// Everything [`run`] found.
#[derive(Debug, Clone)]
pub(crate) struct Preflight {
    /// This machine's side, when one of the two addresses is its own.
    pub this_node: Option<Side>,
    /// The facts, in the order of the module documentation.
    pub facts: Vec<Fact>,
    /// The primary's `wal_keep_size` in bytes, when it could be read.
    pub primary_wal_keep: Option<u64>,
}

/// Runs every check of the table in the module documentation, in order.
/// `password_facts` (where the password came from) go after the ports,
/// where the caller found them.
pub fn run(
    config: &HaConfig,
    timeout: Duration,
    credentials: &Credentials,
    password_facts: Vec<Fact>,
) -> Preflight {
    let (this_node, node) = this_node(config);
    let mut facts = vec![node];
    let mut pg_open = [false, false];
    for (i, side) in Side::BOTH.into_iter().enumerate() {
        for service in [Service::Pg, Service::Web] {
            let fact = port_reachable(config, side, service, timeout);
            if service == Service::Pg {
                pg_open[i] = fact.status == Status::Ok;
            }
            facts.push(fact);
        }
    }
    facts.extend(password_facts);
    facts.push(replication_connection(
        config,
        this_node,
        credentials,
        timeout,
        pg_open[0],
    ));
    let mut servers: [Option<ServerFacts>; 2] = [None, None];
    for (i, side) in Side::BOTH.into_iter().enumerate() {
        let (fact, server) =
            sql_connection(config, side, this_node, credentials, timeout, pg_open[i]);
        facts.push(fact);
        servers[i] = server;
    }
    let [primary, secondary] = servers;
    facts.push(rights(config, primary.as_ref().or(secondary.as_ref())));
    facts.push(roles(this_node, primary.as_ref(), secondary.as_ref()));
    facts.push(wal_level(primary.as_ref()));
    facts.push(max_wal_senders(primary.as_ref()));
    // The secondary's own server is read as its administrator when the
    // replication role cannot (a fresh secondary has no such role).
    let own_minimums = match (&secondary, this_node) {
        (Some(f), _) => Some(f.standby_minimums.clone()),
        (None, Some(Side::Secondary)) => crate::ha::generation::local_admin(
            &config.pg_data,
            config.pg_socket_dir.as_deref(),
            config.pg_port,
            timeout,
        )
        .and_then(|(mut c, t)| pg::standby_minimums(&mut c, &t))
        .ok(),
        (None, _) => None,
    };
    facts.push(standby_settings(
        this_node,
        primary.as_ref(),
        own_minimums.as_deref(),
    ));
    facts.push(slots(primary.as_ref()));
    facts.push(wal_retention(primary.as_ref()));
    facts.push(rewind(config, primary.as_ref(), secondary.as_ref()));
    facts.extend(versions_match(config, primary.as_ref(), secondary.as_ref()));
    facts.push(data_dir_state(config, this_node));
    facts.push(old_data_dirs(config));
    facts.push(archive_contents(config));
    facts.push(free_disk(config, primary.as_ref()));
    Preflight {
        this_node,
        facts,
        primary_wal_keep: primary.as_ref().map(|f| f.wal_keep_bytes),
    }
}

/// `rights`: the replication user's rights, as the server it connected to
/// (the primary's, else the secondary's; roles are cluster-wide) reports
/// them. It needs `REPLICATION` to stream, `pg_monitor` so that
/// `ha status` on the other node can see the replication's state and lag,
/// and EXECUTE on `pg_promote` so that `ha switchover` can promote the
/// replica without a superuser password; nothing more.
pub(crate) fn rights(config: &HaConfig, server: Option<&ServerFacts>) -> Fact {
    const NAME: &str = "rights";
    let user = &config.replication_user;
    let Some(f) = server else {
        return Fact::warn(
            NAME,
            format!("the rights of {user} are not known: no SQL connection"),
            "fix sql.primary above",
        );
    };
    let r = &f.rights;
    if !r.replication {
        return Fact::fail(
            NAME,
            format!("{user} lacks REPLICATION: no replica can stream as it"),
            format!("on the primary: ALTER ROLE {user} WITH REPLICATION;"),
        );
    }
    let mut missing = Vec::new();
    let mut fixes = Vec::new();
    if !r.monitor {
        missing.push("membership in pg_monitor (`ha status` on the other node cannot see the replication's state and lag)");
        fixes.push(format!("GRANT pg_monitor TO {user};"));
    }
    if !r.promote {
        missing.push("EXECUTE on pg_promote (`ha switchover` cannot promote the replica)");
        fixes.push(format!(
            "GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO {user};"
        ));
    }
    if !r.rewind {
        missing.push("EXECUTE on the functions pg_rewind reads through (`ha rejoin` falls back to a fresh bootstrap)");
        fixes.extend(
            REWIND_FUNCTIONS
                .iter()
                .map(|f| format!("GRANT EXECUTE ON FUNCTION pg_catalog.{f} TO {user};")),
        );
    }
    if !r.checkpoint {
        missing.push("membership in pg_checkpoint (`ha rejoin` right after a failover waits for the new primary's scheduled checkpoint, minutes under load)");
        fixes.push(format!("GRANT pg_checkpoint TO {user};"));
    }
    if missing.is_empty() {
        return Fact::ok(
            NAME,
            format!("{user} has REPLICATION, pg_monitor, pg_checkpoint, and EXECUTE on pg_promote and pg_rewind's functions"),
        );
    }
    Fact::warn(
        NAME,
        format!("{user} lacks {}", missing.join("; and ")),
        format!("on the primary: {}", fixes.join(" ")),
    )
}

/// `slots`: the primary's replication slots. An inactive slot is a
/// leftover (a replica removed or rebuilt without it): the primary keeps
/// every WAL file from its `restart_lsn` on until its disk is full.
pub(crate) fn slots(primary: Option<&ServerFacts>) -> Fact {
    const NAME: &str = "slots";
    let Some(f) = primary else {
        return Fact::warn(
            NAME,
            "the primary's replication slots not read: no SQL connection",
            "fix sql.primary above",
        );
    };
    let retained = |s: &pg::monitor::Slot| {
        s.retained_bytes.map_or("no WAL yet".to_owned(), |b| {
            format!("{} of WAL", human_bytes(b))
        })
    };
    let inactive: Vec<&pg::monitor::Slot> = f.slots.iter().filter(|s| !s.active).collect();
    if f.slots.is_empty() {
        return Fact::ok(NAME, "no replication slots on the primary");
    }
    if inactive.is_empty() {
        let list = f
            .slots
            .iter()
            .map(|s| format!("{} retains {}", s.name, retained(s)))
            .collect::<Vec<_>>()
            .join(", ");
        return Fact::ok(
            NAME,
            format!("replication slots on the primary, all active: {list}"),
        );
    }
    let list = inactive
        .iter()
        .map(|s| format!("{} ({}) retains {}", s.name, s.slot_type, retained(s)))
        .collect::<Vec<_>>()
        .join(", ");
    let drops = inactive
        .iter()
        .map(|s| format!("SELECT pg_drop_replication_slot('{}');", s.name))
        .collect::<Vec<_>>()
        .join(" ");
    Fact::warn(
        NAME,
        format!("inactive replication slots on the primary: {list}; the primary keeps that WAL until they are dropped"),
        format!("if no replica uses them any more, on the primary: {drops}"),
    )
}

/// `wal_retention`: whether the primary keeps WAL for its replica beyond
/// what its own checkpoints need. Without a slot in use and with
/// `wal_keep_size = 0`, the primary removes a WAL file at its next
/// checkpoint once nothing of its own needs it, even when the replica has
/// not received it: under load a replica that was stopped for a moment, or
/// one starting from a fresh copy, asks for a file that is gone and never
/// catches up ("requested WAL segment … has already been removed").
pub(crate) fn wal_retention(primary: Option<&ServerFacts>) -> Fact {
    const NAME: &str = "wal_retention";
    let Some(f) = primary else {
        return Fact::warn(
            NAME,
            "the primary's WAL retention not read: no SQL connection",
            "fix sql.primary above",
        );
    };
    let in_use: Vec<&str> = f
        .slots
        .iter()
        .filter(|s| s.active && s.slot_type == "physical")
        .map(|s| s.name.as_str())
        .collect();
    match (f.wal_keep_bytes, in_use.is_empty()) {
        (0, true) => Fact::warn(NAME, NO_WAL_KEPT, RETENTION_FIX),
        (0, false) => Fact::ok(
            NAME,
            format!("the replica streams through a slot ({})", in_use.join(", ")),
        ),
        (keep, _) => Fact::ok(
            NAME,
            format!(
                "the primary keeps {} of WAL (wal_keep_size)",
                human_bytes(keep)
            ),
        ),
    }
}

/// `rewind`: whether each node could be rewound by `pg_rewind` after a
/// failover, as its server runs now. One that cannot comes back by a full
/// copy of the cluster (`ha rejoin` falls back to a bootstrap), which over
/// a slow link takes hours where a rewind takes seconds.
pub(crate) fn rewind(
    config: &HaConfig,
    primary: Option<&ServerFacts>,
    secondary: Option<&ServerFacts>,
) -> Fact {
    const NAME: &str = "rewind";
    let (mut cannot, mut unread) = (Vec::new(), Vec::new());
    for (side, addr, facts) in [
        ("primary", config.primary, primary),
        ("secondary", config.secondary, secondary),
    ] {
        match facts {
            None => unread.push(format!("the {side} ({addr})")),
            Some(f) => {
                if let Some(why) = &f.not_rewindable {
                    cannot.push(format!("the {side} ({addr}) runs with {why}"));
                }
            }
        }
    }
    if !cannot.is_empty() {
        return Fact::warn(
            NAME,
            format!(
                "{}: after a failover its rejoin cannot use pg_rewind and copies the whole cluster",
                cannot.join("; ")
            ),
            "on that node: keyferry ha prepare --restart (it sets wal_log_hints = on); full_page_writes = on in postgresql.conf if it is off",
        );
    }
    if !unread.is_empty() {
        return Fact::warn(
            NAME,
            format!(
                "whether {} could be rewound after a failover was not read: no SQL connection",
                unread.join(" and ")
            ),
            "fix the sql lines above",
        );
    }
    Fact::ok(
        NAME,
        "both nodes can be rewound after a failover (wal_log_hints or data checksums, full_page_writes)",
    )
}

const NO_WAL_KEPT: &str = "the primary keeps no WAL for a replica (no slot in use, wal_keep_size = 0): a replica that falls behind, or one starting from a copy, can need WAL it has already removed";

const RETENTION_FIX: &str = "bootstrap or rejoin with --slot NAME (a slot keeps the WAL the replica has not received), or on the primary: ALTER SYSTEM SET wal_keep_size = '1GB'; SELECT pg_reload_conf();";

/// The refusal of a bootstrap or rejoin that would stream without a slot
/// from a primary that keeps no WAL: its copy's start needs WAL the primary
/// may remove before the replica connects, under load the common case.
/// `None` when a slot is asked for or the primary keeps WAL.
pub(crate) fn unretained_wal(
    slot: Option<&str>,
    wal_keep_bytes: u64,
) -> Option<crate::error::Error> {
    (slot.is_none() && wal_keep_bytes == 0).then(|| crate::error::Error::CheckFailed {
        name: "wal_retention".into(),
        message: NO_WAL_KEPT.into(),
        fix: RETENTION_FIX.into(),
    })
}

/// `old_data`: old data directories a bootstrap kept beside `pg_data`
/// (see [`super::kept`]). They are the operator's backups: `ok`, listed
/// with their sizes so the space they take is known.
pub(crate) fn old_data_dirs(config: &HaConfig) -> Fact {
    const NAME: &str = "old_data";
    match super::kept::list(&config.pg_data) {
        Ok(dirs) if dirs.is_empty() => Fact::ok(
            NAME,
            format!(
                "no old data directories beside {}",
                config.pg_data.display()
            ),
        ),
        Ok(dirs) => Fact::ok(
            NAME,
            format!(
                "old data directories kept beside {}: {}; remove them once no longer needed",
                config.pg_data.display(),
                dirs.iter()
                    .map(|d| format!(
                        "{} ({}, kept {})",
                        d.path.display(),
                        human_bytes(d.bytes),
                        d.kept_at
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(e) => Fact::warn(
            NAME,
            format!(
                "the directory of {} cannot be listed: {e}",
                config.pg_data.display()
            ),
            "run the check as root/Administrator or as the data directory's owner",
        ),
    }
}

/// `roles`: the servers' roles agree with `ha.toml`. Fails on a split brain
/// (both accept writes), on a node whose server runs in the other role than
/// `ha.toml` gives it, and on a secondary that runs as a replica without
/// streaming from the primary.
pub(crate) fn roles(
    this_node: Option<Side>,
    primary: Option<&ServerFacts>,
    secondary: Option<&ServerFacts>,
) -> Fact {
    const NAME: &str = "roles";
    let role = |f: &ServerFacts| {
        if f.in_recovery {
            "a replica"
        } else {
            "a primary"
        }
    };
    match (primary, secondary) {
        // Two primaries on timeline 1: no promotion ever happened, so the
        // secondary runs a cluster of its own (as before its bootstrap).
        (Some(p), Some(s))
            if !p.in_recovery && !s.in_recovery && p.timeline == Some(1) && s.timeline == Some(1) =>
        {
            Fact::warn(
                NAME,
                "the secondary runs a cluster of its own (both on timeline 1), not a replica of the primary",
                "bootstrap it as the primary's replica before relying on the pair",
            )
        }
        (Some(p), Some(s)) if !p.in_recovery && !s.in_recovery => Fact::fail(
            NAME,
            format!(
                "both nodes run as primaries and accept writes, on timelines {} and {} (split brain)",
                p.timeline.map_or("?".into(), |t| t.to_string()),
                s.timeline.map_or("?".into(), |t| t.to_string())
            ),
            "stop the node that must not be primary at once, then rebuild it as a replica of the other; \
             writes made to it since the split are not on the other node",
        ),
        (Some(p), Some(s)) if p.in_recovery && !s.in_recovery => Fact::fail(
            NAME,
            "the primary in ha.toml runs as a replica and the secondary as a primary: the roles were swapped",
            "describe the pair as it runs: `keyferry ha init … --primary <secondary's IP> --secondary <primary's IP> --force` on both nodes",
        ),
        (Some(p), _) if p.in_recovery => Fact::fail(
            NAME,
            "the primary in ha.toml runs as a replica",
            "promote it, or describe the pair as it runs with `keyferry ha init … --force`",
        ),
        (Some(p), Some(s)) if s.in_recovery && p.standbys == 0 => Fact::fail(
            NAME,
            "the secondary runs as a replica but nothing streams from the primary",
            "check the secondary's primary_conninfo and its server log; the primary must allow its replication connection",
        ),
        (Some(p), Some(s)) => Fact::ok(
            NAME,
            format!(
                "primary runs as {}, secondary as {}; {} standby(s) streaming from the primary",
                role(p),
                role(s),
                p.standbys
            ),
        ),
        (Some(p), None) => Fact::warn(
            NAME,
            format!(
                "primary runs as {}; the secondary's role is not known (no SQL connection){}",
                role(p),
                if this_node == Some(Side::Secondary) { " on this node" } else { "" }
            ),
            "fix sql.secondary above to compare the roles",
        ),
        (None, Some(s)) if !s.in_recovery => Fact::fail(
            NAME,
            "the secondary runs as a primary while the primary cannot be reached",
            "if this was a failover, describe the pair as it runs with `keyferry ha init … --force`; \
             never start the old primary as a primary again",
        ),
        _ => Fact::warn(
            NAME,
            "the roles are not known: no SQL connection to the primary",
            "fix sql.primary above",
        ),
    }
}

/// `node`: which of the two addresses belongs to this machine.
pub(crate) fn this_node(config: &HaConfig) -> (Option<Side>, Fact) {
    match (
        net::is_local(config.primary.ip()),
        net::is_local(config.secondary.ip()),
    ) {
        (true, false) => (Some(Side::Primary), this_node_ok(config, Side::Primary)),
        (false, true) => (Some(Side::Secondary), this_node_ok(config, Side::Secondary)),
        (true, true) => (None, Fact::warn(
            "node",
            format!("both {} and {} are addresses of this machine", config.primary, config.secondary),
            "the two nodes must be different machines: correct --primary/--secondary with `keyferry ha init … --force`",
        )),
        (false, false) => (None, Fact::warn(
            "node",
            format!(
                "neither {} nor {} is an address of this machine; checking both as remote",
                config.primary, config.secondary
            ),
            "run the check on one of the two nodes, or correct the addresses with `keyferry ha init … --force`",
        )),
    }
}

fn this_node_ok(config: &HaConfig, side: Side) -> Fact {
    Fact::ok(
        "node",
        format!(
            "this is the {} ({}), node \"{}\"",
            side.as_str(),
            side.address(config),
            config.node
        ),
    )
}

/// `port.<side>.pg` / `port.<side>.web`: a TCP connect within `timeout`.
pub(crate) fn port_reachable(
    config: &HaConfig,
    side: Side,
    service: Service,
    timeout: Duration,
) -> Fact {
    let ip = side.address(config);
    let (kind, port, what) = match service {
        Service::Pg => ("pg", config.pg_port, "PostgreSQL"),
        Service::Web => ("web", config.web_port, "web services"),
    };
    let name = format!("port.{}.{kind}", side.as_str());
    match net::tcp_probe(SocketAddr::new(ip.ip(), port), timeout) {
        Ok(took) => Fact::ok(
            name,
            format!(
                "{} {what} port {port} on {ip} reachable ({} ms)",
                side.as_str(),
                took.as_millis()
            ),
        ),
        Err(e) => Fact::fail(
            name,
            format!(
                "{} {what} port {port} on {ip}: {}",
                side.as_str(),
                net::describe_probe_error(&e)
            ),
            format!(
                "start {what} on {ip}, make it listen on {ip} (PostgreSQL: listen_addresses), and open TCP {port} in the firewalls between the nodes"
            ),
        ),
    }
}

/// `replication`: a physical replication connection to the primary as the
/// replication user. `reachable`: whether the primary's PostgreSQL port
/// answered ([`port_reachable`]); it is not tried otherwise.
pub(crate) fn replication_connection(
    config: &HaConfig,
    this_node: Option<Side>,
    credentials: &Credentials,
    timeout: Duration,
    reachable: bool,
) -> Fact {
    let user = config.replication_user.as_str();
    let primary_addr = SocketAddr::new(config.primary.ip(), config.pg_port);
    if this_node == Some(Side::Primary) {
        // The primary never replicates from itself, and its pg_hba.conf
        // rightly has no line for its own address: the secondary's
        // `ha check` is the one that tests this connection.
        return Fact::ok(
            "replication",
            format!(
                "this node is the primary: the replication connection to {primary_addr} is checked by `keyferry ha check` on the secondary"
            ),
        );
    }
    if !reachable {
        return Fact::fail(
            "replication",
            format!(
                "replication connection to {primary_addr} not tried: the port is not reachable"
            ),
            "make the primary's PostgreSQL port reachable first (see above)",
        );
    }
    let password = credentials.for_conn(
        &config.primary.to_string(),
        config.pg_port,
        "replication",
        user,
    );
    match replication::identify_system(
        primary_addr,
        user,
        password.as_ref().map(|p| p.as_slice()),
        timeout,
    ) {
        Ok(id) => Fact::ok(
            "replication",
            format!(
                "replication connection to {primary_addr} as {user} works (system {}, timeline {})",
                id.system_id, id.timeline
            ),
        ),
        Err(e) => Fact::fail(
            "replication",
            format!("replication connection to {primary_addr} as {user}: {e}"),
            connection_fix(&e, config, this_node, true),
        ),
    }
}

/// `sql.<side>`: a SQL connection as the replication user to database
/// `postgres`, and the [`ServerFacts`] read through it. A failure is a
/// `fail` for the primary and a `warn` for the secondary (which a
/// bootstrap replaces).
pub(crate) fn sql_connection(
    config: &HaConfig,
    side: Side,
    this_node: Option<Side>,
    credentials: &Credentials,
    timeout: Duration,
    reachable: bool,
) -> (Fact, Option<ServerFacts>) {
    let user = config.replication_user.as_str();
    let ip = side.address(config);
    let name = format!("sql.{}", side.as_str());
    let endpoint = Endpoint::ip(ip.ip(), config.pg_port);
    if !reachable {
        let fact = Fact::warn(
            name,
            format!("SQL connection to {endpoint} not tried: the port is not reachable"),
            "make the port reachable first (see above)",
        );
        return (fact, None);
    }
    let password = credentials.for_conn(&ip.to_string(), config.pg_port, pg::MAINTENANCE_DB, user);
    let facts_at = |endpoint: &Endpoint| {
        let spec = ConnSpec {
            endpoint,
            user,
            dbname: pg::MAINTENANCE_DB,
            password: password.as_ref().map(|p| p.as_slice()),
            timeout,
        };
        // Connect, authentication and the reads together within the
        // timeout: a server that accepts and stays silent cannot hang the
        // check.
        pg::exchange(&spec, pg::server_facts)
    };
    // This node's own server is read over loopback first: its pg_hba.conf
    // allows its peer's address, not its own (initdb's file allows
    // loopback), and the runbook gives it no line for itself.
    if this_node == Some(side) {
        let loopback: std::net::IpAddr = if ip.ip().is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        let local = Endpoint::ip(loopback, config.pg_port);
        if let Ok(f) = facts_at(&local) {
            let fact = Fact::ok(
                name,
                format!(
                    "SQL connection to this node's own server at {local} as {user} works (PostgreSQL {})",
                    f.major()
                ),
            );
            return (fact, Some(f));
        }
        // A server that listens on its own address only: read it the way
        // the other commands do (its socket, as its administrator), not
        // through a pg_hba.conf line for its own address.
        if let Ok(f) = own_server_as_admin(config, timeout) {
            let fact = Fact::ok(
                name,
                format!(
                    "this node's own server read through its socket as its administrator (PostgreSQL {}); {user}'s rights read there",
                    f.major()
                ),
            );
            return (fact, Some(f));
        }
    }
    match facts_at(&endpoint) {
        Ok(f) => {
            let fact = Fact::ok(
                name,
                format!(
                    "SQL connection to {endpoint} as {user} works (PostgreSQL {})",
                    f.major()
                ),
            );
            (fact, Some(f))
        }
        Err(e) => {
            let fix = connection_fix(&e, config, this_node, false);
            let message =
                format!("SQL connection to {endpoint} as {user} (database postgres): {e}");
            let fact = match side {
                Side::Primary => Fact::fail(name, message, fix),
                Side::Secondary => Fact::warn(name, message, fix),
            };
            (fact, None)
        }
    }
}

/// `standby_settings`: run on the secondary, the settings a hot standby
/// may not have lower than its primary's ([`pg::HOT_STANDBY_MINIMUMS`]),
/// as the secondary's server runs now, against the primary's. After a
/// copy the secondary keeps its own configuration; a setting it leaves at
/// its default takes the primary's value when the primary set it by
/// `ALTER SYSTEM` (carried over by [`crate::ha::autoconf`]). A lower one
/// would make the copy's first start fail after minutes of copying.
pub(crate) fn standby_settings(
    this_node: Option<Side>,
    primary: Option<&ServerFacts>,
    secondary: Option<&[pg::StandbyMinimum]>,
) -> Fact {
    const NAME: &str = "standby_settings";
    if this_node != Some(Side::Secondary) {
        return Fact::ok(NAME, "compared on the secondary only");
    }
    let (Some(p), Some(s)) = (primary, secondary) else {
        return Fact::warn(
            NAME,
            "the hot-standby settings were not compared: both servers must be read over SQL",
            "fix sql.primary above, and start this node's server so that it can be read",
        );
    };
    let low: Vec<(&str, String)> = p
        .standby_minimums
        .iter()
        .filter_map(|pm| {
            let sm = s.iter().find(|m| m.name == pm.name)?;
            let carried = pm.by_alter_system && !sm.set;
            (!carried && sm.value < pm.value).then(|| {
                (
                    pm.name.as_str(),
                    format!("{} = {} (the primary's is {})", pm.name, sm.value, pm.value),
                )
            })
        })
        .collect();
    if low.is_empty() {
        Fact::ok(
            NAME,
            "this node's hot-standby settings are at least the primary's",
        )
    } else {
        let said: Vec<&str> = low.iter().map(|(_, s)| s.as_str()).collect();
        let names: Vec<&str> = low.iter().map(|(n, _)| *n).collect();
        Fact::fail(
            NAME,
            format!(
                "this node runs with {}: a hot standby refuses to start with less than its primary",
                said.join(", ")
            ),
            format!(
                "raise {} to at least the primary's in this node's postgresql.conf (or ALTER SYSTEM here) and restart its server, then run this again",
                names.join(", ")
            ),
        )
    }
}

/// This node's server as its administrator (socket, data directory's
/// owner), with the replication role's rights rather than the
/// administrator's.
fn own_server_as_admin(config: &HaConfig, timeout: Duration) -> Result<ServerFacts, PgError> {
    let (mut client, target) = crate::ha::generation::local_admin(
        &config.pg_data,
        config.pg_socket_dir.as_deref(),
        config.pg_port,
        timeout,
    )?;
    let mut facts = pg::server_facts(&mut client, &target)?;
    facts.rights = pg::monitor::rights_of(&mut client, &target, Some(&config.replication_user))?;
    Ok(facts)
}

/// `wal_level`: the primary's is `replica` or `logical`.
pub(crate) fn wal_level(primary: Option<&ServerFacts>) -> Fact {
    match primary {
        Some(f) if f.wal_level == "replica" || f.wal_level == "logical" => {
            Fact::ok("wal_level", format!("primary wal_level = {}", f.wal_level))
        }
        Some(f) => Fact::fail(
            "wal_level",
            format!("primary wal_level = {}: a replica cannot stream from it", f.wal_level),
            "set wal_level = replica (and max_wal_senders = 10) in the primary's postgresql.conf and restart it",
        ),
        None => Fact::warn("wal_level", "primary wal_level not read: no SQL connection", "fix sql.primary above"),
    }
}

/// `wal_senders`: the primary has a WAL sender free for a replica.
pub(crate) fn max_wal_senders(primary: Option<&ServerFacts>) -> Fact {
    match primary {
        Some(f) if f.max_wal_senders == 0 => Fact::fail(
            "wal_senders",
            "primary max_wal_senders = 0: no replica can connect",
            "set max_wal_senders = 10 in the primary's postgresql.conf and restart it",
        ),
        Some(f) if f.wal_senders_in_use >= f.max_wal_senders => Fact::fail(
            "wal_senders",
            format!("primary max_wal_senders = {}, all in use", f.max_wal_senders),
            "raise max_wal_senders in the primary's postgresql.conf and restart it, or stop an unused replica or pg_basebackup",
        ),
        Some(f) => Fact::ok(
            "wal_senders",
            format!(
                "primary max_wal_senders = {}, {} in use, {} free",
                f.max_wal_senders,
                f.wal_senders_in_use,
                f.max_wal_senders - f.wal_senders_in_use
            ),
        ),
        None => Fact::warn("wal_senders", "primary max_wal_senders not read: no SQL connection", "fix sql.primary above"),
    }
}

/// `version` (and `pg_bin` when this node's programs cannot tell theirs):
/// the major versions of both servers and of the programs in `pg_bin`
/// agree.
pub(crate) fn versions_match(
    config: &HaConfig,
    primary: Option<&ServerFacts>,
    secondary: Option<&ServerFacts>,
) -> Vec<Fact> {
    let mut facts = Vec::new();
    let mut majors: Vec<(String, u32)> = Vec::new();
    if let Some(f) = primary {
        majors.push(("primary server".into(), f.major()));
    }
    if let Some(f) = secondary {
        majors.push(("secondary server".into(), f.major()));
    }
    match pg::binaries_major(&config.pg_bin) {
        Ok(m) => majors.push((format!("programs in {}", config.pg_bin.display()), m)),
        Err(e) => facts.push(Fact::warn(
            "pg_bin",
            format!("cannot tell the version of this node's PostgreSQL programs: {e}"),
            "set pg_bin in ha.toml to the directory of pg_ctl and pg_basebackup (`keyferry ha init … --pg-bin DIR --force`)",
        )),
    }
    facts.push(compare_majors(&majors));
    facts
}

/// The `version` fact for what is known: `(what, major)` pairs.
fn compare_majors(majors: &[(String, u32)]) -> Fact {
    let described = majors
        .iter()
        .map(|(what, m)| format!("{what} {m}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut distinct: Vec<u32> = majors.iter().map(|(_, m)| *m).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() > 1 {
        Fact::fail(
            "version",
            format!("PostgreSQL major versions differ: {described}"),
            "install the same PostgreSQL major version on both nodes (a replica must run the primary's major version)",
        )
    } else if majors.len() < 2 {
        let known = if described.is_empty() {
            "nothing"
        } else {
            &described
        };
        Fact::warn(
            "version",
            format!("only {} known: {known}", majors.len()),
            "make both servers reachable with SQL (see above) so their versions can be compared",
        )
    } else {
        Fact::ok(
            "version",
            format!("same PostgreSQL major version: {described}"),
        )
    }
}

/// `data_dir`: this node's data directory is missing, empty, or a cluster
/// in the state `pg_controldata` reports.
pub(crate) fn data_dir_state(config: &HaConfig, this_node: Option<Side>) -> Fact {
    let dir = &config.pg_data;
    let listed = std::fs::read_dir(dir).map(|mut entries| entries.next().is_none());
    match listed {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Fact::warn(
            "data_dir",
            format!("{} does not exist", dir.display()),
            "correct pg_data in ha.toml (`keyferry ha init … --pg-data DIR --force`), or create the directory's parent before the replica is bootstrapped",
        ),
        Err(e) => Fact::warn(
            "data_dir",
            format!("{} cannot be read: {e}", dir.display()),
            "run the check as root/Administrator or as the data directory's owner",
        ),
        Ok(true) => Fact::ok("data_dir", format!("{} is empty", dir.display())),
        Ok(false) => match pg::controldata(&config.pg_bin, dir) {
            Ok(control) => {
                let message = format!(
                    "{}: {} (system {}, timeline {})",
                    dir.display(),
                    control.state,
                    control.system_identifier.as_deref().unwrap_or("?"),
                    control.timeline.map_or("?".into(), |t| t.to_string())
                );
                if this_node == Some(Side::Primary) && control.state != "in production" {
                    Fact::warn(
                        "data_dir",
                        message,
                        "this node is the primary but its cluster is not in production: start it, or check which node is primary",
                    )
                } else {
                    Fact::ok("data_dir", message)
                }
            }
            Err(e) if dir.join("PG_VERSION").is_file() => Fact::warn(
                "data_dir",
                format!("{} looks like a data directory but pg_controldata failed: {e}", dir.display()),
                "run the check as root or as the data directory's owner, and check pg_bin in ha.toml",
            ),
            Err(_) => Fact::fail(
                "data_dir",
                format!("{} is not empty and not a PostgreSQL data directory", dir.display()),
                "correct pg_data in ha.toml (`keyferry ha init … --pg-data DIR --force`)",
            ),
        },
    }
}

/// `archive`: WAL archive files left in `archive_dir`.
pub(crate) fn archive_contents(config: &HaConfig) -> Fact {
    let Some(dir) = &config.archive_dir else {
        return Fact::ok("archive", "no archive_dir in ha.toml: nothing to check");
    };
    let real = match archive::real_dir(dir, Some(&config.pg_data)) {
        Ok(real) => real,
        Err(e @ crate::ha::Error::ArchiveIsWal { .. }) => return Fact::fail(
            "archive",
            e.to_string(),
            "set archive_dir to the WAL archive (`keyferry ha init … --archive-dir DIR --force`)",
        ),
        Err(_) => dir.clone(),
    };
    if let Some(why) = archive::live_archiving(config, dir, &real) {
        return Fact::ok(
            "archive",
            format!(
                "{}: live archive ({why}); `keyferry ha archive clean` removes only what the server no longer needs",
                dir.display()
            ),
        );
    }
    match archive::plan(dir) {
        Ok(plan) if plan.files.is_empty() => {
            Fact::ok("archive", format!("{}: no WAL archive files", dir.display()))
        }
        Ok(plan) => Fact::warn(
            "archive",
            format!(
                "{}: {} WAL archive files ({}) left from an earlier setup",
                dir.display(),
                plan.files.len(),
                human_bytes(plan.total_bytes())
            ),
            "run `keyferry ha archive clean --dry-run`, then `keyferry ha archive clean`",
        ),
        Err(e) => Fact::warn(
            "archive",
            e.to_string(),
            "create the archive directory or correct archive_dir (`keyferry ha init … --archive-dir DIR --force`)",
        ),
    }
}

/// `disk`: free space on the file system of this node's data directory
/// against the size of the primary's databases.
pub(crate) fn free_disk(config: &HaConfig, primary: Option<&ServerFacts>) -> Fact {
    let Some(dir) = existing_ancestor(&config.pg_data) else {
        return Fact::warn(
            "disk",
            format!(
                "no existing directory at or above {}",
                config.pg_data.display()
            ),
            "correct pg_data in ha.toml",
        );
    };
    let free = match crate::fsutil::available_space(dir) {
        Ok(f) => f,
        Err(e) => {
            return Fact::warn(
                "disk",
                format!("cannot read the free space of {}: {e}", dir.display()),
                "check the file system by hand (df)",
            )
        }
    };
    let Some(primary) = primary else {
        return Fact::warn(
            "disk",
            format!(
                "{} free at {}; the primary's size is unknown (no SQL connection)",
                human_bytes(free),
                dir.display()
            ),
            "fix sql.primary above to compare",
        );
    };
    disk_verdict(free, primary.database_bytes, dir)
}

/// The `disk` fact for `free` bytes at `dir` against `need`.
fn disk_verdict(free: u64, need: u64, dir: &Path) -> Fact {
    let message = format!(
        "{} free at {}, primary databases {}",
        human_bytes(free),
        dir.display(),
        human_bytes(need)
    );
    if free < need {
        Fact::fail(
            "disk",
            message,
            format!(
                "free at least {} on the file system of {} before bootstrapping",
                human_bytes(need - free),
                dir.display()
            ),
        )
    } else if (free as f64) < (need as f64) * DISK_MARGIN {
        Fact::warn(
            "disk",
            message,
            "the base backup also needs room for the WAL written while it runs: free more space",
        )
    } else {
        Fact::ok("disk", message)
    }
}

/// The nearest existing directory at or above `path`.
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.is_dir())
}

/// The fix for a failed connection, from the server's SQLSTATE.
pub(crate) fn connection_fix(
    e: &PgError,
    config: &HaConfig,
    this_node: Option<Side>,
    replication: bool,
) -> String {
    let user = &config.replication_user;
    let here = this_node.map_or("THIS-NODE-IP".to_owned(), |side| {
        side.address(config).to_string()
    });
    match e.code() {
        Some(pg::SQLSTATE_INVALID_PASSWORD) => format!(
            "give the right password of {user}, or set it on the primary: ALTER ROLE {user} PASSWORD '…' (run \\password {user} in psql)"
        ),
        Some(pg::SQLSTATE_INVALID_AUTHORIZATION) => match e.auth_refusal() {
            Some(pg::AuthRefusal::NoRole) => format!(
                "the role {user} does not exist on that server: run `keyferry ha prepare` there (it creates {user} with the rights the pair needs)"
            ),
            Some(pg::AuthRefusal::CannotLogin) => format!(
                "on that server: ALTER ROLE {user} WITH LOGIN (or run `keyferry ha prepare` there)"
            ),
            Some(pg::AuthRefusal::NoHbaLine) => format!(
                "on the server, run `keyferry hba ensure --peer {here}` (it adds the replication and all lines for this node)"
            ),
            _ => format!(
                "the server's pg_hba.conf method refused {user}: run `keyferry hba ensure --peer {here}` on the server (its lines use a password), or check that {user} may log in"
            ),
        },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::monitor::{RoleRights, Slot};
    use crate::pg::StandbyMinimum;

    #[test]
    fn rights_name_the_missing_one() {
        let config = config();
        let with = |replication, monitor| ServerFacts {
            rights: RoleRights {
                replication,
                monitor,
                promote: true,
                rewind: true,
                checkpoint: true,
            },
            ..server(150_000, "replica", 10, 0)
        };
        assert_eq!(rights(&config, Some(&with(true, true))).status, Status::Ok);
        let no_monitor = rights(&config, Some(&with(true, false)));
        assert_eq!(no_monitor.status, Status::Warn);
        assert!(no_monitor
            .fix
            .unwrap()
            .contains("GRANT pg_monitor TO repuser"));
        let no_promote = rights(
            &config,
            Some(&ServerFacts {
                rights: RoleRights {
                    replication: true,
                    monitor: true,
                    promote: false,
                    rewind: true,
                    checkpoint: true,
                },
                ..server(150_000, "replica", 10, 0)
            }),
        );
        assert_eq!(no_promote.status, Status::Warn);
        assert!(no_promote
            .fix
            .unwrap()
            .contains("GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO repuser"));
        let no_rewind = rights(
            &config,
            Some(&ServerFacts {
                rights: RoleRights {
                    replication: true,
                    monitor: true,
                    promote: true,
                    rewind: false,
                    checkpoint: true,
                },
                ..server(150_000, "replica", 10, 0)
            }),
        );
        assert_eq!(no_rewind.status, Status::Warn);
        assert!(no_rewind.message.contains("pg_rewind"), "{no_rewind:?}");
        let fix = no_rewind.fix.unwrap();
        for f in REWIND_FUNCTIONS {
            assert!(fix.contains(f), "{fix}");
        }
        let no_checkpoint = rights(
            &config,
            Some(&ServerFacts {
                rights: RoleRights {
                    checkpoint: false,
                    ..with(true, true).rights
                },
                ..server(150_000, "replica", 10, 0)
            }),
        );
        assert_eq!(no_checkpoint.status, Status::Warn);
        assert!(no_checkpoint
            .fix
            .unwrap()
            .contains("GRANT pg_checkpoint TO repuser"));
        let none = rights(&config, Some(&with(false, false)));
        assert_eq!(none.status, Status::Fail);
        assert!(none.message.contains("lacks REPLICATION"), "{none:?}");
        assert_eq!(rights(&config, None).status, Status::Warn);
    }

    #[test]
    fn inactive_slots_are_leftovers_with_their_wal() {
        let slot = |name: &str, active, retained| Slot {
            name: name.into(),
            slot_type: "physical".into(),
            active,
            restart_lsn: Some("0/1000000".into()),
            retained_bytes: retained,
        };
        let with = |slots| ServerFacts {
            slots,
            ..server(150_000, "replica", 10, 0)
        };
        assert_eq!(slots(Some(&with(vec![]))).status, Status::Ok);
        let active = slots(Some(&with(vec![slot("r1", true, Some(0))])));
        assert_eq!(active.status, Status::Ok);
        let left = slots(Some(&with(vec![
            slot("r1", true, Some(0)),
            slot("old", false, Some(3 << 20)),
        ])));
        assert_eq!(left.status, Status::Warn);
        assert!(
            left.message
                .contains("old (physical) retains 3.0 MiB of WAL"),
            "{left:?}"
        );
        assert!(!left.message.contains("r1"), "{left:?}");
        assert!(left
            .fix
            .unwrap()
            .contains("pg_drop_replication_slot('old')"));
        assert_eq!(slots(None).status, Status::Warn);
    }

    fn server(version_num: u32, wal_level: &str, max: u32, used: u32) -> ServerFacts {
        ServerFacts {
            version_num,
            wal_level: wal_level.into(),
            max_wal_senders: max,
            wal_senders_in_use: used,
            database_bytes: 1 << 20,
            in_recovery: false,
            standbys: 0,
            timeline: Some(2),
            rights: RoleRights {
                replication: true,
                monitor: true,
                promote: true,
                rewind: true,
                checkpoint: true,
            },
            slots: Vec::new(),
            standby_minimums: Vec::new(),
            wal_keep_bytes: 0,
            not_rewindable: None,
        }
    }

    #[test]
    fn rewind_needs_both_nodes_rewindable_and_read() {
        let config = HaConfig::new(
            "n",
            PeerAddr::parse("10.0.0.1").unwrap(),
            PeerAddr::parse("10.0.0.2").unwrap(),
        )
        .unwrap();
        let good = server(150000, "replica", 10, 1);
        let hintless = ServerFacts {
            not_rewindable: crate::pg::not_rewindable(false, false, true),
            ..server(150000, "replica", 10, 1)
        };
        assert_eq!(rewind(&config, Some(&good), Some(&good)).status, Status::Ok);
        let f = rewind(&config, Some(&good), Some(&hintless));
        assert_eq!(f.status, Status::Warn);
        assert!(
            f.message.contains(
                "the secondary (10.0.0.2) runs with neither wal_log_hints nor data checksums"
            ),
            "{}",
            f.message
        );
        assert!(f.fix.unwrap().contains("ha prepare --restart"));
        let f = rewind(&config, None, Some(&good));
        assert_eq!(f.status, Status::Warn);
        assert!(f.message.contains("the primary (10.0.0.1)") && f.message.contains("not read"));
        assert_eq!(crate::pg::not_rewindable(true, false, true), None);
        assert_eq!(crate::pg::not_rewindable(false, true, true), None);
        assert_eq!(
            crate::pg::not_rewindable(true, true, false).as_deref(),
            Some("full_page_writes = off")
        );
    }

    /// A replica streaming without a slot from a primary that keeps no WAL
    /// loses WAL it needs under load: warned in `ha check`, refused for a
    /// bootstrap or rejoin without `--slot`; a slot in use or
    /// `wal_keep_size` is enough.
    #[test]
    fn wal_is_kept_for_the_replica_by_a_slot_or_wal_keep_size() {
        let slot = |active, slot_type: &str| Slot {
            name: "pam_b".into(),
            slot_type: slot_type.into(),
            active,
            restart_lsn: None,
            retained_bytes: None,
        };
        let with = |slots, wal_keep_bytes| ServerFacts {
            slots,
            wal_keep_bytes,
            ..server(150_000, "replica", 10, 0)
        };
        let none = wal_retention(Some(&with(vec![], 0)));
        assert_eq!(none.status, Status::Warn);
        assert!(none.fix.unwrap().contains("--slot NAME"));
        for leftover in [slot(false, "physical"), slot(true, "logical")] {
            assert_eq!(
                wal_retention(Some(&with(vec![leftover], 0))).status,
                Status::Warn
            );
        }
        let streaming = wal_retention(Some(&with(vec![slot(true, "physical")], 0)));
        assert_eq!(streaming.status, Status::Ok);
        assert!(streaming.message.contains("pam_b"));
        let kept = wal_retention(Some(&with(vec![], 1 << 30)));
        assert_eq!(kept.status, Status::Ok);
        assert!(kept.message.contains("1.0 GiB"), "{kept:?}");
        assert_eq!(wal_retention(None).status, Status::Warn);

        let refused = unretained_wal(None, 0).expect("refused");
        assert!(refused.to_string().contains("wal_retention"), "{refused}");
        assert!(unretained_wal(Some("pam_b"), 0).is_none());
        assert!(unretained_wal(None, 16 << 20).is_none());
    }

    fn minimum(name: &str, value: i64, set: bool, by_alter_system: bool) -> StandbyMinimum {
        StandbyMinimum {
            name: name.into(),
            value,
            set,
            by_alter_system,
        }
    }

    /// Issue 20 item 1: a secondary that runs with less than the primary of
    /// a setting a hot standby needs at least equal is refused before the
    /// copy (it would be copied for minutes and then not start), naming the
    /// setting; one the copy carries over (the primary's `ALTER SYSTEM`,
    /// the secondary at its default) is not.
    #[test]
    fn standby_settings_below_the_primarys_are_refused_before_the_copy() {
        let with = |m: Vec<StandbyMinimum>| ServerFacts {
            standby_minimums: m,
            ..server(150_000, "replica", 10, 0)
        };
        let primary = with(vec![
            minimum("max_connections", 100, false, false),
            minimum("max_wal_senders", 10, true, false),
            minimum("max_worker_processes", 16, true, true),
        ]);
        let low = with(vec![
            minimum("max_connections", 100, false, false),
            minimum("max_wal_senders", 0, true, false),
            minimum("max_worker_processes", 8, false, false),
        ]);
        let f = standby_settings(
            Some(Side::Secondary),
            Some(&primary),
            Some(&low.standby_minimums),
        );
        assert_eq!(f.status, Status::Fail, "{f:?}");
        assert!(
            f.message.contains("max_wal_senders = 0") && f.message.contains("10"),
            "{f:?}"
        );
        assert!(!f.message.contains("max_worker_processes"), "{f:?}");
        assert!(f.fix.unwrap().contains("max_wal_senders"));
        let even = with(vec![minimum("max_wal_senders", 10, true, false)]);
        let ok = standby_settings(
            Some(Side::Secondary),
            Some(&primary),
            Some(&even.standby_minimums),
        );
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        // Set explicitly below an ALTER SYSTEM value: the secondary's own
        // setting wins over the carried one, so it is refused.
        let set_low = with(vec![minimum("max_worker_processes", 8, true, false)]);
        let f = standby_settings(
            Some(Side::Secondary),
            Some(&primary),
            Some(&set_low.standby_minimums),
        );
        assert_eq!(f.status, Status::Fail, "{f:?}");
        // Nothing to compare: not the secondary, or a server not read.
        assert_eq!(
            standby_settings(
                Some(Side::Primary),
                Some(&primary),
                Some(&low.standby_minimums)
            )
            .status,
            Status::Ok
        );
        assert_eq!(
            standby_settings(Some(Side::Secondary), Some(&primary), None).status,
            Status::Warn
        );
    }

    #[test]
    fn roles_fail_on_split_brain_swapped_roles_and_a_silent_standby() {
        let primary = |standbys| ServerFacts {
            standbys,
            ..server(150_000, "replica", 10, 0)
        };
        let replica = ServerFacts {
            in_recovery: true,
            timeline: None,
            ..server(150_000, "replica", 10, 0)
        };
        let standalone = ServerFacts {
            timeline: Some(1),
            ..server(150_000, "replica", 10, 0)
        };
        let cases = [
            (
                Some(primary(0)),
                Some(primary(0)),
                Status::Fail,
                "split brain",
            ),
            (
                Some(replica.clone()),
                Some(primary(1)),
                Status::Fail,
                "swapped",
            ),
            (
                Some(replica.clone()),
                None,
                Status::Fail,
                "runs as a replica",
            ),
            (
                Some(primary(0)),
                Some(replica.clone()),
                Status::Fail,
                "nothing streams",
            ),
            (
                Some(primary(1)),
                Some(replica.clone()),
                Status::Ok,
                "1 standby",
            ),
            (Some(primary(0)), None, Status::Warn, "not known"),
            (None, Some(primary(0)), Status::Fail, "cannot be reached"),
            (None, None, Status::Warn, "not known"),
            (
                Some(standalone.clone()),
                Some(standalone),
                Status::Warn,
                "cluster of its own",
            ),
        ];
        for (p, s, status, words) in cases {
            let fact = roles(Some(Side::Primary), p.as_ref(), s.as_ref());
            assert_eq!(fact.status, status, "{fact:?}");
            assert!(fact.message.contains(words), "{words}: {fact:?}");
        }
    }

    fn config() -> HaConfig {
        HaConfig::example()
    }

    #[test]
    fn wal_checks_read_the_primarys_settings() {
        type Check = fn(Option<&ServerFacts>) -> Fact;
        let cases: [(Check, &str, u32, u32, Status); 5] = [
            (wal_level, "replica", 10, 0, Status::Ok),
            (wal_level, "logical", 10, 0, Status::Ok),
            (wal_level, "minimal", 10, 0, Status::Fail),
            (max_wal_senders, "replica", 0, 0, Status::Fail),
            (max_wal_senders, "replica", 2, 2, Status::Fail),
        ];
        for (check, level, max, used, status) in cases {
            let fact = check(Some(&server(150000, level, max, used)));
            assert_eq!(fact.status, status, "{fact:?}");
            assert_eq!(fact.fix.is_some(), status != Status::Ok, "{fact:?}");
        }
        let minimal = wal_level(Some(&server(150000, "minimal", 10, 0)));
        assert!(minimal.fix.unwrap().contains("wal_level = replica"));
        let free = max_wal_senders(Some(&server(150000, "replica", 10, 3)));
        assert_eq!(
            (free.status, free.message.as_str()),
            (Status::Ok, "primary max_wal_senders = 10, 3 in use, 7 free")
        );
        assert_eq!(wal_level(None).status, Status::Warn);
        assert_eq!(max_wal_senders(None).status, Status::Warn);
    }

    #[test]
    fn versions_must_agree_and_be_known_twice() {
        let m = |what: &str, v| (what.to_owned(), v);
        assert_eq!(compare_majors(&[m("a", 15), m("b", 15)]).status, Status::Ok);
        let differ = compare_majors(&[m("a", 15), m("b", 16), m("c", 15)]);
        assert_eq!(differ.status, Status::Fail);
        assert!(
            differ.message.contains("a 15, b 16, c 15"),
            "{}",
            differ.message
        );
        assert_eq!(compare_majors(&[m("a", 15)]).status, Status::Warn);
        assert_eq!(compare_majors(&[]).message, "only 0 known: nothing");
    }

    #[test]
    fn disk_needs_the_primary_plus_a_margin() {
        let dir = Path::new("/data");
        assert_eq!(disk_verdict(100, 200, dir).status, Status::Fail);
        assert!(disk_verdict(100, 200, dir)
            .fix
            .unwrap()
            .contains("free at least 100 B"));
        assert_eq!(disk_verdict(240, 200, dir).status, Status::Warn);
        assert_eq!(disk_verdict(250, 200, dir).status, Status::Ok);
    }

    #[test]
    fn data_dir_and_archive_describe_local_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = config();
        config.pg_data = tmp.path().join("missing");
        assert_eq!(data_dir_state(&config, None).status, Status::Warn);
        config.pg_data = tmp.path().to_owned();
        assert_eq!(data_dir_state(&config, None).status, Status::Ok);
        std::fs::write(tmp.path().join("notes.txt"), "x").unwrap();
        config.pg_bin = tmp.path().join("no-bin");
        let junk = data_dir_state(&config, None);
        assert_eq!(junk.status, Status::Fail, "{junk:?}");
        assert_eq!(archive_contents(&config).status, Status::Ok);
        let archive = tempfile::tempdir().unwrap();
        config.archive_dir = Some(archive.path().to_owned());
        assert_eq!(archive_contents(&config).status, Status::Ok);
        std::fs::write(archive.path().join("000000010000000000000001"), [0u8; 16]).unwrap();
        let left = archive_contents(&config);
        assert_eq!(left.status, Status::Warn);
        assert!(
            left.message.contains("1 WAL archive files (16 B)"),
            "{}",
            left.message
        );
    }

    #[test]
    fn closed_ports_fail_and_skip_what_needs_them() {
        let config = config();
        let timeout = Duration::from_millis(1);
        let replication = replication_connection(&config, None, &Credentials::None, timeout, false);
        assert_eq!(replication.status, Status::Fail);
        assert!(replication.message.contains("not tried"));
        let (sql, facts) = sql_connection(
            &config,
            Side::Secondary,
            None,
            &Credentials::None,
            timeout,
            false,
        );
        assert_eq!(
            (sql.name.as_str(), sql.status),
            ("sql.secondary", Status::Warn)
        );
        assert!(facts.is_none());
        let (node, fact) = this_node(&config);
        assert_eq!((node, fact.status), (None, Status::Warn));
    }
}
