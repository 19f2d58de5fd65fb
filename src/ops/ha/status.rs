//! `keyferry ha status`: what the pair is doing now, from either node (or
//! a third host), as one [`StatusReport`] with a verdict scripts can act
//! on (`healthy`, `degraded`, `down`, `split_brain`, `unknown`).
//!
//! This module owns gathering the report and the verdict rule; `cli`
//! only prints it. How each server is reached:
//!
//! - this node's own server: first through its Unix socket (directory and
//!   port from the server's `postmaster.pid`, else `pg_socket_dir` and
//!   `pg_port` from `ha.toml`) as the OS account that owns the data
//!   directory, with no password (PostgreSQL's `peer` or `trust` for
//!   `local` lines); when that is refused (keyferry runs as root and
//!   `peer` wants the process to *be* that account) or impossible
//!   (Windows), as the replication user over loopback, then over the
//!   node's own address, and a note says so;
//! - the other node's server: as the replication user over TCP at its
//!   address, the password from the usual sources (as for `ha check`).
//!
//! The replication user needs `REPLICATION` and `pg_monitor` and nothing
//! more: `pg_monitor` shows the detail columns of `pg_stat_replication`.
//!
//! Invariants:
//! - nothing is changed anywhere: servers are only read, directories only
//!   listed;
//! - the two nodes are read at the same time, each connection's connect
//!   and authentication bounded by the timeout (`pg::connect`), each
//!   statement by `statement_timeout`, and the whole gathering by a
//!   deadline after which a node that has not answered is reported as
//!   such; the look at the peer that first brings `ha.toml` up to date is
//!   one bounded exchange too ([`crate::ha::evidence::look`]): a node that
//!   is down, frozen or a tarpit costs one or two timeouts, never a hang;
//! - a node that answers but will not say what it is has no role, and
//!   makes the verdict `unknown` (it may be a writable primary), never
//!   `down`;
//! - no password appears in the report, a note or an error;
//! - the verdict is computed by [`judge`] from the report's own fields
//!   alone, so what the report shows is what the verdict says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::check::credentials;
use super::require_config;
use crate::error::Result;
use crate::fmt::human_bytes;
use crate::ha::config::HaConfig;
use crate::ha::kept::{self, OldDataDir};
use crate::ha::preflight::{self, Side, Status};
use crate::ha::role::Role;
use crate::ha::{archive, net};
use crate::ops::Home;
use crate::pg::monitor::{self, RoleRights, Slot, Standby, WalPosition};
use crate::pg::pidfile;
use crate::pg::{self, ConnSpec, Credentials, Endpoint, PgError};
use crate::secret::PasswordSource;

/// Default `--slot-warn` (1 GiB): a slot retaining more WAL than this is a
/// warning (an abandoned slot keeps every WAL file from its `restart_lsn`
/// on, until the primary's disk is full).
pub(crate) const DEFAULT_SLOT_WARN: &str = "1GiB";
/// Default `--lag-warn`, in seconds.
pub(crate) const DEFAULT_LAG_WARN_SECONDS: u64 = 300;
/// Extra time after the timeout before a node that has not answered is
/// given up on (the connect is bounded, but a server may accept and then
/// stall).
const DEADLINE_MARGIN: Duration = Duration::from_secs(1);
/// `application_name` of a base backup's WAL stream: not a standby.
const BASEBACKUP_APPLICATION: &str = "pg_basebackup";

/// What `ha status` was given.
#[derive(Debug, Clone)]
pub(crate) struct StatusOptions {
    /// Bounds every connection attempt and every statement.
    pub timeout: Duration,
    /// A slot retaining more than this many bytes of WAL is a warning.
    pub slot_warn_bytes: u64,
    /// A replica further behind than this is a warning.
    pub lag_warn_seconds: u64,
}

impl StatusOptions {
    /// The command line's defaults, with `timeout`.
    pub(crate) fn defaults(timeout: Duration) -> Self {
        StatusOptions {
            timeout,
            slot_warn_bytes: 1 << 30,
            lag_warn_seconds: DEFAULT_LAG_WARN_SECONDS,
        }
    }
}

/// The verdict: `healthy`, `degraded`, `down`, `split_brain` or
/// `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    /// One running primary, one streaming replica, nothing over a limit.
    Healthy,
    /// A primary runs, but something needs attention (see the reasons).
    Degraded,
    /// No running primary could be seen, and every node was seen: nothing
    /// accepts writes.
    Down,
    /// Two writable primaries, or a primary on an older generation than
    /// the pair's record (an old primary came back).
    SplitBrain,
    /// A node answers but will not say what it is (authentication failed,
    /// no rights, too many clients, a silent socket): it may be a writable
    /// primary, so the pair's state cannot be told.
    Unknown,
}

impl Verdict {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Degraded => "degraded",
            Verdict::Down => "down",
            Verdict::SplitBrain => "split_brain",
            Verdict::Unknown => "unknown",
        }
    }
}

/// Everything `ha status` found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StatusReport {
    pub verdict: Verdict,
    /// The one-line verdict: `healthy`, `degraded: …`, `down: …`.
    pub summary: String,
    /// Why it is not healthy, one entry per cause.
    pub reasons: Vec<String>,
    /// This machine's side in `ha.toml`, when one of the addresses is its own.
    pub this_node: Option<Side>,
    /// The two nodes, `ha.toml`'s primary first.
    pub nodes: Vec<NodeStatus>,
    pub replication: Replication,
    /// The running primary's replication slots.
    pub slots: Vec<SlotStatus>,
    pub slot_warn_bytes: u64,
    pub lag_warn_seconds: u64,
    /// Old data directories kept beside this node's `pg_data`
    /// (information, never a degradation).
    pub old_data_dirs: Vec<OldDataDir>,
    /// This node's WAL archive directory, when `ha.toml` names one.
    pub archive: Option<ArchiveStatus>,
    /// Things worth knowing that do not change the verdict.
    pub notes: Vec<String>,
    /// The key agreement line from the node registry, when this home has
    /// one (`keyferry nodes connect`).
    pub keys: Option<String>,
}

/// One node as seen now.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeStatus {
    /// Its place in `ha.toml`: `primary` or `secondary`.
    pub name: &'static str,
    pub address: String,
    /// Whether it is this machine.
    pub this_node: bool,
    /// `None` when its server answered but could not be read (`error`).
    #[serde(skip)]
    pub role: Option<Role>,
    /// The role as shown (and in `--json`): `Running Primary`, `Running
    /// Replica`, `Stopped`, `Unreachable`, or `Unknown` when its server
    /// answered but could not be read.
    #[serde(rename = "role")]
    pub role_text: String,
    /// How its server was reached (endpoint and role), when it was.
    pub via: Option<String>,
    /// Why its role is not known.
    pub error: Option<String>,
    pub web_port: u16,
    /// Whether something accepted a TCP connection on the web-services
    /// port: with the role `Unreachable`, tells "PostgreSQL down" (true)
    /// from "host down or cut off" (false).
    pub web_port_open: bool,
    pub timeline: Option<u32>,
    /// Its position: the current LSN on a primary, the replay LSN on a
    /// replica.
    pub lsn: Option<String>,
    pub current_lsn: Option<String>,
    pub receive_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    /// Replica: its WAL receiver's status and where it streams from.
    pub receiver_status: Option<String>,
    pub upstream: Option<String>,
    /// Replica: seconds since the last replayed transaction (0 when
    /// everything received is replayed).
    pub replay_age_seconds: Option<f64>,
    /// The pair's generation as its server holds it (`keyferry_pair`;
    /// 0 when the table does not exist yet).
    pub generation: Option<u64>,
    /// This node only: the generation in its own `ha.toml`.
    pub ha_toml_generation: Option<u64>,
}

impl NodeStatus {
    fn new(side: Side, config: &HaConfig, this_node: bool) -> Self {
        Self {
            name: side.as_str(),
            address: side.address(config).to_string(),
            this_node,
            role: None,
            role_text: role_text(None),
            via: None,
            error: None,
            web_port: config.web_port,
            web_port_open: false,
            timeline: None,
            lsn: None,
            current_lsn: None,
            receive_lsn: None,
            replay_lsn: None,
            receiver_status: None,
            upstream: None,
            replay_age_seconds: None,
            generation: None,
            ha_toml_generation: this_node.then_some(config.generation),
        }
    }

    fn set_role(&mut self, role: Option<Role>) {
        self.role = role;
        self.role_text = role_text(role);
    }

    fn set_position(&mut self, p: &WalPosition) {
        self.set_role(Some(Role::from_recovery(p.in_recovery)));
        self.timeline = p.timeline;
        self.lsn = if p.in_recovery {
            p.replay_lsn.clone()
        } else {
            p.current_lsn.clone()
        };
        self.current_lsn = p.current_lsn.clone();
        self.receive_lsn = p.receive_lsn.clone();
        self.replay_lsn = p.replay_lsn.clone();
        self.receiver_status = p.receiver_status.clone();
        self.upstream = p.upstream.clone();
        self.replay_age_seconds = p.replay_age_seconds;
    }

    /// `primary 10.0.0.1`.
    fn label(&self) -> String {
        format!("{} {}", self.name, self.address)
    }
}

fn role_text(role: Option<Role>) -> String {
    role.map_or_else(|| "Unknown".to_owned(), |r| r.to_string())
}

/// The replication between the two nodes.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Replication {
    /// A replica streams from the primary now.
    pub active: bool,
    /// The standby's state as the primary sees it (`streaming`, `catchup`,
    /// …), else the replica's WAL receiver status.
    pub state: Option<String>,
    /// `async`, `sync`, `potential`, `quorum` (from the primary).
    pub sync_state: Option<String>,
    /// Where the replica streams from (its WAL receiver's sender).
    pub upstream: Option<String>,
    /// The standby's address as the primary sees it.
    pub standby_address: Option<String>,
    /// WAL the replica has not replayed: from the primary's view
    /// (`pg_current_wal_lsn() - replay_lsn`) when visible, else the
    /// replica's received-but-not-replayed WAL.
    pub lag_bytes: Option<u64>,
    /// Seconds behind: `replay_lag_seconds` when the primary reports one,
    /// else 0 when `lag_bytes` is 0, else `replica_replay_age_seconds`.
    pub lag_seconds: Option<f64>,
    /// `pg_stat_replication.replay_lag` on the primary.
    pub replay_lag_seconds: Option<f64>,
    /// `now() - pg_last_xact_replay_timestamp()` on the replica (0 when it
    /// has replayed all it received).
    pub replica_replay_age_seconds: Option<f64>,
}

/// A replication slot of the running primary.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SlotStatus {
    pub name: String,
    pub slot_type: String,
    pub active: bool,
    pub restart_lsn: Option<String>,
    /// WAL the primary keeps for it, in bytes.
    pub retained_bytes: Option<u64>,
    /// `retained_bytes` is above `--slot-warn`.
    pub over_threshold: bool,
}

/// The archive directory's WAL archive files.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ArchiveStatus {
    pub dir: PathBuf,
    pub wal_files: usize,
    pub bytes: u64,
}

/// What one node's server said.
#[derive(Debug, Default)]
struct Seen {
    position: Option<WalPosition>,
    standbys: Vec<Standby>,
    slots: Vec<Slot>,
    rights: Option<RoleRights>,
    generation: Option<u64>,
    via: Option<String>,
    error: Option<String>,
    /// Nothing answered: the role comes from `pg_ctl status` (this node)
    /// or is `Unreachable`.
    unanswered: Option<Role>,
    notes: Vec<String>,
}

/// `keyferry ha status`. Errors only when `ha.toml` is missing or broken,
/// or a named password source cannot be read; everything the servers say
/// (or do not say) is part of the report.
pub(crate) fn status(
    home: &Home,
    password: Option<&PasswordSource>,
    opts: &StatusOptions,
) -> Result<StatusReport> {
    let config = require_config(home)?;
    let mut password_facts = Vec::new();
    let credentials = credentials(&config, password, &mut password_facts)?;
    let mut notes: Vec<String> = password_facts
        .into_iter()
        .filter(|f| f.status != Status::Ok)
        .map(|f| format!("{} ({})", f.message, f.fix.unwrap_or_default()))
        .collect();
    let (config, synced) = super::roles::sync(home, config, &credentials, opts.timeout)?;
    notes.extend(synced);
    Ok(status_with(home, &config, &credentials, opts, notes))
}

/// Prepares what `--watch` repeats: the configuration and the password,
/// read (or asked for) once.
pub(crate) struct Watch {
    config: HaConfig,
    credentials: Credentials,
    notes: Vec<String>,
}

impl Watch {
    pub(crate) fn new(home: &Home, password: Option<&PasswordSource>) -> Result<Self> {
        let config = require_config(home)?;
        let mut facts = Vec::new();
        let credentials = credentials(&config, password, &mut facts)?;
        let notes = facts
            .into_iter()
            .filter(|f| f.status != Status::Ok)
            .map(|f| format!("{} ({})", f.message, f.fix.unwrap_or_default()))
            .collect();
        Ok(Self {
            config,
            credentials,
            notes,
        })
    }

    /// One report.
    pub(crate) fn report(&self, home: &Home, opts: &StatusOptions) -> StatusReport {
        status_with(
            home,
            &self.config,
            &self.credentials,
            opts,
            self.notes.clone(),
        )
    }
}

pub(crate) fn status_with(
    home: &Home,
    config: &HaConfig,
    credentials: &Credentials,
    opts: &StatusOptions,
    mut notes: Vec<String>,
) -> StatusReport {
    let (this_node, _) = preflight::this_node(config);
    tracing::info!(timeout = ?opts.timeout, this_node = ?this_node, "ha status: reading both nodes");
    let seen = gather(config, this_node, credentials, opts.timeout);
    let mut nodes = Vec::new();
    let mut views: Vec<Seen> = Vec::new();
    for (side, (mut seen, web_open)) in Side::BOTH.into_iter().zip(seen) {
        let mut node = NodeStatus::new(side, config, this_node == Some(side));
        node.web_port_open = web_open;
        node.via = seen.via.clone();
        node.error = seen.error.clone();
        node.generation = seen.generation;
        if let Some(p) = &seen.position {
            node.set_position(p);
        } else {
            node.set_role(seen.unanswered);
        }
        notes.append(&mut seen.notes);
        nodes.push(node);
        views.push(seen);
    }
    let replication = replication(&nodes, &views, &mut notes);
    let slots = primary_slots(&nodes, &views, opts.slot_warn_bytes);
    rights_notes(config, &nodes, &views, &mut notes);
    if nodes[0].role == Some(Role::RunningReplica) && nodes[1].role == Some(Role::RunningPrimary) {
        notes.push(format!(
            "the roles are swapped against ha.toml: {} runs as primary (after a failover, describe the pair as it runs with `keyferry ha init … --force`)",
            nodes[1].address
        ));
    }
    let old_data_dirs = match kept::list(&config.pg_data) {
        Ok(dirs) => dirs,
        Err(e) => {
            notes.push(format!(
                "old data directories beside {} not listed: {e}",
                config.pg_data.display()
            ));
            Vec::new()
        }
    };
    let archive = config.archive_dir.as_ref().and_then(|dir| {
        archive::plan(dir)
            .map(|plan| ArchiveStatus {
                dir: dir.clone(),
                wal_files: plan.files.len(),
                bytes: plan.total_bytes(),
            })
            .map_err(|e| notes.push(format!("archive directory: {e}")))
            .ok()
    });
    notes.extend(home.held_change());
    let keys = key_agreement(home, opts.timeout);
    for node in &nodes {
        if let (Some(g), Some(mine)) = (
            node.generation,
            nodes.iter().find_map(|n| n.ha_toml_generation),
        ) {
            if g > mine {
                notes.push(format!(
                    "{} holds generation {g}, above this node's ha.toml ({mine}): this node's ha.toml is behind the pair's roles",
                    node.label()
                ));
            }
        }
    }
    if config.demoted {
        notes.push("this node is marked demoted in ha.toml: it will not start as primary until `keyferry ha rejoin`".into());
    }
    record_primary(home, &nodes);
    let (verdict, reasons) = judge(&nodes, &replication, &slots, opts.lag_warn_seconds);
    StatusReport {
        verdict,
        summary: summary(verdict, &reasons),
        reasons,
        this_node,
        nodes,
        replication,
        slots,
        slot_warn_bytes: opts.slot_warn_bytes,
        lag_warn_seconds: opts.lag_warn_seconds,
        old_data_dirs,
        archive,
        notes,
        keys,
    }
}

/// Records the running primary's position in `pair-history.json`, for a
/// later failover's estimate of what may be lost (best effort: a hint).
fn record_primary(home: &Home, nodes: &[NodeStatus]) {
    let primaries: Vec<&NodeStatus> = nodes
        .iter()
        .filter(|n| n.role == Some(Role::RunningPrimary))
        .collect();
    if let [p] = primaries.as_slice() {
        if let Some(lsn) = &p.current_lsn {
            let seen = crate::ha::history::Seen {
                at: crate::node::now_unix(),
                primary: p.address.clone(),
                lsn: lsn.clone(),
                timeline: p.timeline,
            };
            if let Err(e) = crate::ha::history::record(home.root(), seen) {
                tracing::warn!(error = %e, "cannot record the primary's position");
            }
        }
    }
}

/// The registry's key agreement line, bounded like every read of `ha
/// status`: a registry that does not answer in time is said so.
fn key_agreement(home: &Home, timeout: Duration) -> Option<String> {
    crate::ops::nodes::settings(home).ok()??;
    let (tx, rx) = std::sync::mpsc::channel();
    let home = home.clone();
    std::thread::spawn(move || {
        let _ = tx.send(crate::ops::nodes::agreement_line(&home));
    });
    match rx.recv_timeout(timeout * 2 + DEADLINE_MARGIN) {
        Ok(line) => line,
        Err(_) => Some(format!(
            "keys: the node registry did not answer within {} s",
            (timeout * 2 + DEADLINE_MARGIN).as_secs()
        )),
    }
}

/// The one-line verdict.
fn summary(verdict: Verdict, reasons: &[String]) -> String {
    if reasons.is_empty() {
        verdict.as_str().to_owned()
    } else {
        format!("{}: {}", verdict.as_str(), reasons.join("; "))
    }
}

/// Reads both nodes at once: each node's server and its web-services port
/// on their own threads. A thread that has not answered by the deadline is
/// left behind (the process does not wait for it) and its node reported
/// as not answering in time.
fn gather(
    config: &HaConfig,
    this_node: Option<Side>,
    credentials: &Credentials,
    timeout: Duration,
) -> Vec<(Seen, bool)> {
    enum Found {
        Server(usize, Box<Seen>),
        Web(usize, bool),
    }
    let config = Arc::new(config.clone());
    // The password is shared with the threads, not copied: Credentials
    // keeps it in zeroizing storage.
    let credentials = Arc::new(match credentials {
        Credentials::Given(p) => Credentials::Given(p.clone()),
        Credentials::Passfile(path) => Credentials::Passfile(path.clone()),
        Credentials::None => Credentials::None,
    });
    let (tx, rx) = mpsc::channel();
    for (i, side) in Side::BOTH.into_iter().enumerate() {
        let (config_s, credentials_s, tx_s) = (config.clone(), credentials.clone(), tx.clone());
        let local = this_node == Some(side);
        std::thread::spawn(move || {
            let seen = read_server(&config_s, side, local, &credentials_s, timeout);
            let _ = tx_s.send(Found::Server(i, Box::new(seen)));
        });
        let web = SocketAddr::new(side.address(&config).ip(), config.web_port);
        let tx_w = tx.clone();
        std::thread::spawn(move || {
            let _ = tx_w.send(Found::Web(i, net::tcp_probe(web, timeout).is_ok()));
        });
    }
    drop(tx);
    // A connection attempt list has up to three entries for this node,
    // but only a remote one can take the whole timeout.
    let deadline = Instant::now() + timeout * 2 + DEADLINE_MARGIN;
    let mut servers: [Option<Seen>; 2] = [None, None];
    let mut webs = [false, false];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Found::Server(i, seen)) => servers[i] = Some(*seen),
            Ok(Found::Web(i, open)) => webs[i] = open,
            Err(_) => break, // all reported (disconnected) or the deadline
        }
    }
    servers
        .into_iter()
        .zip(webs)
        .map(|(seen, web)| {
            let seen = seen.unwrap_or_else(|| Seen {
                error: Some(format!(
                    "its server did not answer within {} ms",
                    (timeout * 2 + DEADLINE_MARGIN).as_millis()
                )),
                ..Seen::default()
            });
            (seen, web)
        })
        .collect()
}

/// One way to reach a server.
struct Attempt {
    endpoint: Endpoint,
    user: String,
    /// Send the replication user's password.
    password: bool,
    /// Connect as the data directory's owner (the socket attempt): see
    /// `pg::peer`.
    owner: Option<pg::peer::Owner>,
}

impl Attempt {
    fn describe(&self) -> String {
        format!("{} as {}", self.endpoint, self.user)
    }
}

/// The ways to reach this node's own server, best first (see the module
/// documentation), and notes on what could not be used.
fn local_attempts(config: &HaConfig, side: Side, notes: &mut Vec<String>) -> Vec<Attempt> {
    let pid_path = config.pg_data.join(pidfile::FILE_NAME);
    let running = match std::fs::read(&pid_path) {
        Ok(bytes) => match pidfile::parse(&String::from_utf8_lossy(&bytes)) {
            Ok(pid) => Some(pid),
            Err(problem) => {
                notes.push(format!("{} is not usable: {problem}", pid_path.display()));
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            notes.push(format!("{} cannot be read: {e}", pid_path.display()));
            None
        }
    };
    let port = running.as_ref().map_or(config.pg_port, |p| p.port);
    let socket_dir = match &running {
        Some(pid) => pid.socket_dir.clone(),
        None => config.pg_socket_dir.clone(),
    };
    let replication_user = config.replication_user.clone();
    let mut attempts = Vec::new();
    if cfg!(unix) {
        let owner =
            crate::actor::owner_name(&config.pg_data).zip(pg::peer::Owner::of(&config.pg_data));
        if let (Some(dir), Some((user, account))) = (socket_dir, owner) {
            attempts.push(Attempt {
                endpoint: Endpoint::Socket { dir, port },
                user,
                password: false,
                owner: Some(account),
            });
        }
    }
    let ip = side.address(config).ip();
    let loopback: IpAddr = if ip.is_ipv4() {
        Ipv4Addr::LOCALHOST.into()
    } else {
        Ipv6Addr::LOCALHOST.into()
    };
    for host in [loopback, ip] {
        attempts.push(Attempt {
            endpoint: Endpoint::ip(host, port),
            user: replication_user.clone(),
            password: true,
            owner: None,
        });
    }
    attempts
}

/// Reads one node's server: connects by the first attempt that works and
/// runs the `pg::monitor` queries.
fn read_server(
    config: &HaConfig,
    side: Side,
    local: bool,
    credentials: &Credentials,
    timeout: Duration,
) -> Seen {
    let mut seen = Seen::default();
    let attempts = if local {
        local_attempts(config, side, &mut seen.notes)
    } else {
        vec![Attempt {
            endpoint: Endpoint::ip(side.address(config).ip(), config.pg_port),
            user: config.replication_user.clone(),
            password: true,
            owner: None,
        }]
    };
    let mut refused: Option<(String, PgError)> = None;
    let mut connected = None;
    for attempt in &attempts {
        let password = match (&attempt.endpoint, attempt.password) {
            (Endpoint::Tcp { host, port }, true) => {
                credentials.for_conn(host, *port, pg::MAINTENANCE_DB, &attempt.user)
            }
            _ => None,
        };
        let spec = ConnSpec {
            endpoint: &attempt.endpoint,
            user: &attempt.user,
            dbname: pg::MAINTENANCE_DB,
            password: password.as_ref().map(|p| p.as_slice()),
            timeout,
        };
        let connect = match attempt.owner {
            Some(owner) => pg::connect_as_owner(&spec, owner),
            None => pg::connect(&spec),
        };
        match connect {
            Ok(client) => {
                connected = Some((client, attempt));
                break;
            }
            Err(e) if e.is_unreachable() => {}
            Err(e) => {
                if refused.is_none() {
                    refused = Some((attempt.describe(), e));
                }
            }
        }
    }
    let Some((mut client, attempt)) = connected else {
        match refused {
            Some((how, e)) => {
                let fix = preflight::connection_fix(&e, config, local.then_some(side), false);
                seen.error = Some(format!("{how}: {e} (fix: {fix})"));
            }
            None if local => {
                seen.unanswered = Some(Role::when_unanswered(Some(pg::server_status(
                    &config.pg_bin,
                    &config.pg_data,
                ))));
            }
            None => seen.unanswered = Some(Role::Unreachable),
        }
        return seen;
    };
    let target = attempt.endpoint.to_string();
    seen.via = Some(attempt.describe());
    if let Some((how, e)) = &refused {
        seen.notes.push(format!(
            "this node's server was read over {} because {how} was refused ({}); \
             run keyferry as the data directory's owner to use the socket",
            attempt.describe(),
            e.code().unwrap_or("no SQLSTATE")
        ));
    }
    let read = (|| -> Result<(), PgError> {
        monitor::bound_statements(&mut client, &target, timeout)?;
        let position = monitor::position(&mut client, &target)?;
        seen.rights = Some(monitor::rights(&mut client, &target)?);
        seen.generation =
            Some(crate::ha::generation::current(&mut client, &target)?.map_or(0, |r| r.generation));
        if !position.in_recovery {
            seen.standbys = monitor::standbys(&mut client, &target)?;
            seen.slots = monitor::slots(&mut client, &target)?;
        }
        seen.position = Some(position);
        Ok(())
    })();
    if let Err(e) = read {
        seen.error = Some(format!("reading {}: {e}", attempt.describe()));
    }
    seen
}

/// The replication between the running primary and the running replica,
/// from what either could show.
fn replication(nodes: &[NodeStatus], views: &[Seen], notes: &mut Vec<String>) -> Replication {
    let primary = nodes
        .iter()
        .position(|n| n.role == Some(Role::RunningPrimary));
    let replica = nodes
        .iter()
        .position(|n| n.role == Some(Role::RunningReplica));
    let mut r = Replication::default();
    // The primary's row for the replica: by the replica's address, else
    // the first streaming WAL sender that is not a base backup.
    let row = primary.and_then(|p| {
        let standbys = &views[p].standbys;
        replica
            .and_then(|s| {
                standbys
                    .iter()
                    .find(|row| row.client_addr.as_deref() == Some(nodes[s].address.as_str()))
            })
            .or_else(|| {
                standbys.iter().find(|row| {
                    row.state.as_deref() == Some("streaming")
                        && row.application_name.as_deref() != Some(BASEBACKUP_APPLICATION)
                })
            })
            .or_else(|| {
                standbys
                    .iter()
                    .find(|row| row.application_name.as_deref() != Some(BASEBACKUP_APPLICATION))
            })
    });
    let receiver = replica.and_then(|s| views[s].position.as_ref());
    if let Some(row) = row {
        r.state = row.state.clone();
        r.sync_state = row.sync_state.clone();
        r.standby_address = row.client_addr.clone();
        r.lag_bytes = row.lag_bytes;
        r.replay_lag_seconds = row.replay_lag_seconds;
        if row.state.is_none() {
            notes.push(
                "the primary hides its standbys' state, lag and address from this connection: grant pg_monitor to the replication user".into(),
            );
        }
    }
    if let Some(p) = receiver {
        // The replica's own word counts when the primary cannot be read,
        // or hides its standbys' state; a primary that shows no WAL sender
        // for the replica is not streaming to it, whatever the replica says
        // (it may stream from somewhere else).
        if primary.is_none() || row.is_some_and(|row| row.state.is_none()) {
            r.state = p.receiver_status.clone();
        }
        r.upstream = p.upstream.clone();
        r.replica_replay_age_seconds = p.replay_age_seconds;
        if r.lag_bytes.is_none() {
            r.lag_bytes = p.replay_backlog_bytes;
        }
    }
    r.active = r.state.as_deref() == Some("streaming");
    r.lag_seconds = r.replay_lag_seconds.or(match r.lag_bytes {
        Some(0) => Some(0.0),
        _ => r.replica_replay_age_seconds,
    });
    r
}

/// The running primary's slots (`ha.toml`'s primary first when both run
/// as primary), each judged against `warn_bytes`.
fn primary_slots(nodes: &[NodeStatus], views: &[Seen], warn_bytes: u64) -> Vec<SlotStatus> {
    let Some(p) = nodes
        .iter()
        .position(|n| n.role == Some(Role::RunningPrimary))
    else {
        return Vec::new();
    };
    views[p]
        .slots
        .iter()
        .map(|s| SlotStatus {
            name: s.name.clone(),
            slot_type: s.slot_type.clone(),
            active: s.active,
            restart_lsn: s.restart_lsn.clone(),
            retained_bytes: s.retained_bytes,
            over_threshold: s.retained_bytes.is_some_and(|b| b > warn_bytes),
        })
        .collect()
}

/// A note when the replication user, seen on a node it connected to,
/// lacks a right `ha status` relies on.
fn rights_notes(config: &HaConfig, nodes: &[NodeStatus], views: &[Seen], notes: &mut Vec<String>) {
    let user = &config.replication_user;
    for (node, seen) in nodes.iter().zip(views) {
        let (Some(rights), Some(via)) = (seen.rights, &node.via) else {
            continue;
        };
        if !via.ends_with(&format!(" as {user}")) {
            continue; // read as another role (the socket's owner)
        }
        if !rights.monitor {
            notes.push(format!(
                "{user} is not a member of pg_monitor: the other node cannot see replication details (GRANT pg_monitor TO {user}; on the primary)"
            ));
        }
        if !rights.replication {
            notes.push(format!(
                "{user} lacks REPLICATION: no replica can stream as it (ALTER ROLE {user} WITH REPLICATION; on the primary)"
            ));
        }
        break;
    }
}

/// The verdict rule (README, "ha status"), in order:
///
/// - `split_brain`: both nodes run as primary, or a running primary holds
///   a generation below the pair's record (the highest generation any
///   server or this node's `ha.toml` holds);
/// - `unknown`: a node answered but could not be read (authentication
///   failed, no rights, too many clients, silent) and the running primary
///   does not show it streaming as its replica: it may be a writable
///   primary;
/// - `down`: neither node is seen running as primary (nothing accepts
///   writes, as far as this node can tell);
/// - `degraded`: a primary runs, and: the other node is not a running
///   replica (stopped, unreachable, unreadable but streaming); or
///   replication is not active; or the replica is more than
///   `lag_warn_seconds` behind; or a slot retains more WAL than the limit;
/// - `healthy` otherwise. Kept old data directories and the archive's
///   contents are information and never change the verdict.
pub(crate) fn judge(
    nodes: &[NodeStatus],
    replication: &Replication,
    slots: &[SlotStatus],
    lag_warn_seconds: u64,
) -> (Verdict, Vec<String>) {
    let describe = |n: &NodeStatus| match (n.role, &n.error) {
        (None, Some(e)) => format!("{} cannot be read: {e}", n.label()),
        (Some(Role::Unreachable), _) if n.web_port_open => format!(
            "{} Unreachable (its web-services port answers: PostgreSQL is down, the host is up)",
            n.label()
        ),
        (Some(Role::Unreachable), _) => format!(
            "{} Unreachable (its web-services port does not answer either: host down or cut off)",
            n.label()
        ),
        _ => format!("{} {}", n.label(), n.role_text),
    };
    let primaries: Vec<&NodeStatus> = nodes
        .iter()
        .filter(|n| n.role == Some(Role::RunningPrimary))
        .collect();
    let shown = |n: &NodeStatus, what: Option<u64>| {
        what.map_or("?".into(), |v| v.to_string()) + &format!(" on {}", n.address)
    };
    if primaries.len() > 1 {
        return (
            Verdict::SplitBrain,
            vec![format!(
                "both nodes run as primary and accept writes (generations {} and {}, timelines {} and {}): stop the one that must not be primary now (the older generation), then make it a replica with `keyferry ha rejoin`",
                shown(primaries[0], primaries[0].generation),
                shown(primaries[1], primaries[1].generation),
                shown(primaries[0], primaries[0].timeline.map(u64::from)),
                shown(primaries[1], primaries[1].timeline.map(u64::from)),
            )],
        );
    }
    let record = nodes
        .iter()
        .flat_map(|n| [n.generation, n.ha_toml_generation])
        .flatten()
        .max();
    if let (Some(p), Some(record)) = (primaries.first(), record) {
        if let Some(g) = p.generation.filter(|g| *g < record) {
            return (
                Verdict::SplitBrain,
                vec![format!(
                    "{} runs as primary at generation {g}, below the pair's generation {record}: an old primary came back after the roles changed; stop it now and make it a replica with `keyferry ha rejoin`",
                    p.label()
                )],
            );
        }
    }
    // A node that answered without saying what it is, unless the running
    // primary shows it streaming as its replica (then it is one).
    let streams = |n: &NodeStatus| {
        primaries.len() == 1
            && replication.active
            && replication.standby_address.as_deref() == Some(n.address.as_str())
    };
    let unreadable: Vec<&NodeStatus> = nodes
        .iter()
        .filter(|n| n.role.is_none() && !streams(n))
        .collect();
    if !unreadable.is_empty() {
        let mut reasons: Vec<String> = unreadable
            .iter()
            .map(|n| {
                let fed = nodes.iter().any(|r| {
                    r.role == Some(Role::RunningReplica)
                        && r.upstream
                            .as_deref()
                            .is_some_and(|u| u.split(':').next() == Some(n.address.as_str()))
                });
                format!(
                    "{}; it runs{} and may be a writable primary",
                    describe(n),
                    if fed {
                        " (a replica streams from it)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        reasons.extend(nodes.iter().filter(|n| n.role.is_some()).map(&describe));
        return (Verdict::Unknown, reasons);
    }
    if primaries.is_empty() {
        let mut reasons = vec!["no running primary".to_owned()];
        reasons.extend(nodes.iter().map(describe));
        return (Verdict::Down, reasons);
    }
    let mut reasons = Vec::new();
    for other in nodes
        .iter()
        .filter(|n| n.role != Some(Role::RunningPrimary))
    {
        if other.role != Some(Role::RunningReplica) {
            reasons.push(describe(other));
        } else if !replication.active {
            reasons.push(format!(
                "replication not active ({})",
                replication
                    .state
                    .as_deref()
                    .map_or("no WAL sender for the replica".to_owned(), |s| format!(
                        "state {s}"
                    ))
            ));
        } else if let Some(lag) = replication
            .lag_seconds
            .filter(|l| *l > lag_warn_seconds as f64)
        {
            reasons.push(format!(
                "the replica is {lag:.0} s behind (over {lag_warn_seconds} s)"
            ));
        }
    }
    for s in slots.iter().filter(|s| s.over_threshold) {
        reasons.push(format!(
            "replication slot {} ({}) retains {} of WAL on the primary",
            s.name,
            if s.active { "active" } else { "inactive" },
            human_bytes(s.retained_bytes.unwrap_or(0))
        ));
    }
    let verdict = if reasons.is_empty() {
        Verdict::Healthy
    } else {
        Verdict::Degraded
    };
    (verdict, reasons)
}

/// The path of this node's data directory's old copies, for messages.
pub(crate) fn describe_old_dir(d: &OldDataDir) -> String {
    format!(
        "{} (kept {}): {}{}",
        d.path.display(),
        d.kept_at,
        human_bytes(d.bytes),
        if d.complete {
            ""
        } else {
            " or more (part of it could not be read)"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HaConfig {
        HaConfig::example()
    }

    fn node(side: Side, role: Option<Role>) -> NodeStatus {
        let mut n = NodeStatus::new(side, &config(), side == Side::Primary);
        n.set_role(role);
        n.timeline = Some(1);
        n
    }

    fn pair(primary: Option<Role>, secondary: Option<Role>) -> Vec<NodeStatus> {
        vec![
            node(Side::Primary, primary),
            node(Side::Secondary, secondary),
        ]
    }

    fn streaming(lag_seconds: f64) -> Replication {
        Replication {
            active: true,
            state: Some("streaming".into()),
            lag_bytes: Some(0),
            lag_seconds: Some(lag_seconds),
            ..Replication::default()
        }
    }

    fn slot(retained: u64, over: bool) -> SlotStatus {
        SlotStatus {
            name: "s1".into(),
            slot_type: "physical".into(),
            active: false,
            restart_lsn: Some("0/1000000".into()),
            retained_bytes: Some(retained),
            over_threshold: over,
        }
    }

    const P: Option<Role> = Some(Role::RunningPrimary);
    const R: Option<Role> = Some(Role::RunningReplica);

    #[test]
    fn the_default_slot_limit_is_one_gib() {
        assert_eq!(crate::fmt::parse_bytes(DEFAULT_SLOT_WARN), Ok(1 << 30));
        assert_eq!(
            StatusOptions::defaults(Duration::from_secs(1)).slot_warn_bytes,
            1 << 30
        );
    }

    #[test]
    fn one_primary_and_a_streaming_replica_is_healthy() {
        let (v, reasons) = judge(&pair(P, R), &streaming(0.0), &[slot(10, false)], 300);
        assert_eq!((v, reasons.len()), (Verdict::Healthy, 0), "{reasons:?}");
        assert_eq!(summary(v, &reasons), "healthy");
        // Swapped roles (after a failover) are still a healthy pair.
        let (v, _) = judge(&pair(R, P), &streaming(0.0), &[], 300);
        assert_eq!(v, Verdict::Healthy);
    }

    #[test]
    fn no_running_primary_is_down_and_names_each_node() {
        for (p, s) in [
            (Some(Role::Stopped), R),
            (Some(Role::Unreachable), Some(Role::Unreachable)),
            (R, R),
        ] {
            let nodes = pair(p, s);
            let (v, reasons) = judge(&nodes, &Replication::default(), &[], 300);
            assert_eq!(v, Verdict::Down, "{p:?} {s:?}");
            let line = summary(v, &reasons);
            assert!(
                line.starts_with("down: no running primary; primary 203.0.113.1"),
                "{line}"
            );
        }
    }

    #[test]
    fn a_missing_replica_lag_or_a_big_slot_is_degraded() {
        let mut unreachable = pair(P, Some(Role::Unreachable));
        let cases: Vec<(Vec<NodeStatus>, Replication, Vec<SlotStatus>, &str)> = vec![
            (
                pair(P, Some(Role::Stopped)),
                Replication::default(),
                vec![],
                "secondary 203.0.113.2 Stopped",
            ),
            (
                unreachable.clone(),
                Replication::default(),
                vec![],
                "does not answer either",
            ),
            (
                pair(P, R),
                Replication::default(),
                vec![],
                "replication not active (no WAL sender",
            ),
            (
                pair(P, R),
                streaming(301.0),
                vec![],
                "301 s behind (over 300 s)",
            ),
            (
                pair(P, R),
                streaming(0.0),
                vec![slot(2 << 30, true)],
                "slot s1 (inactive) retains 2.0 GiB",
            ),
        ];
        unreachable[1].web_port_open = true;
        let mut all = cases;
        all.push((
            unreachable,
            Replication::default(),
            vec![],
            "PostgreSQL is down, the host is up",
        ));
        for (nodes, replication, slots, words) in all {
            let (v, reasons) = judge(&nodes, &replication, &slots, 300);
            assert_eq!(v, Verdict::Degraded, "{words}");
            let line = summary(v, &reasons);
            assert!(
                line.starts_with("degraded: ") && line.contains(words),
                "{words}: {line}"
            );
        }
    }

    #[test]
    fn two_primaries_or_an_outranked_primary_is_split_brain() {
        let mut both = pair(P, P);
        both[0].generation = Some(5);
        both[1].generation = Some(6);
        let (v, reasons) = judge(&both, &Replication::default(), &[], 300);
        assert_eq!(v, Verdict::SplitBrain);
        let line = summary(v, &reasons);
        assert!(
            line.starts_with("split_brain: both nodes run as primary")
                && line.contains("generations 5 on 203.0.113.1 and 6 on 203.0.113.2"),
            "{line}"
        );
        // One primary, below the generation this node's ha.toml holds: an
        // old primary that came back while the new one is away.
        let mut old = pair(P, Some(Role::Unreachable));
        old[0].generation = Some(5);
        old[0].ha_toml_generation = Some(6);
        let (v, reasons) = judge(&old, &Replication::default(), &[], 300);
        assert_eq!(v, Verdict::SplitBrain, "{reasons:?}");
        assert!(reasons[0].contains("at generation 5, below the pair's generation 6"));
        // At the record's generation it is not.
        old[0].generation = Some(6);
        let (v, _) = judge(&old, &Replication::default(), &[], 300);
        assert_eq!(v, Verdict::Degraded);
    }

    #[test]
    fn a_node_that_will_not_say_what_it_is_is_unknown_not_down() {
        // The replica streams, the primary refuses the password: not
        // "no running primary".
        let mut nodes = pair(None, R);
        nodes[0].error = Some("password authentication failed for user \"repuser\"".into());
        nodes[1].upstream = Some("203.0.113.1:5432".into());
        let (v, reasons) = judge(&nodes, &Replication::default(), &[], 300);
        assert_eq!(v, Verdict::Unknown);
        let line = summary(v, &reasons);
        assert!(
            line.starts_with(
                "unknown: primary 203.0.113.1 cannot be read: password authentication failed"
            ) && line.contains("(a replica streams from it)")
                && !line.contains("no running primary"),
            "{line}"
        );
        // A running primary and an unreadable other node: may be two.
        let mut nodes = pair(P, None);
        nodes[1].error = Some("no answer within 1000 ms".into());
        let (v, reasons) = judge(&nodes, &Replication::default(), &[], 300);
        assert_eq!(v, Verdict::Unknown, "{reasons:?}");
        // Unless the primary shows it streaming as its replica.
        let mut r = streaming(0.0);
        r.standby_address = Some("203.0.113.2".into());
        let (v, reasons) = judge(&nodes, &r, &[], 300);
        assert_eq!(v, Verdict::Degraded, "{reasons:?}");
        assert!(reasons[0].contains("secondary 203.0.113.2 cannot be read"));
        assert_eq!(
            serde_json::to_value(Verdict::SplitBrain).unwrap(),
            "split_brain"
        );
        assert_eq!(serde_json::to_value(Verdict::Unknown).unwrap(), "unknown");
    }

    #[test]
    fn replication_is_read_from_the_primary_and_else_from_the_replica() {
        let nodes = pair(P, R);
        let standby = |addr: &str, app: &str, state: &str| Standby {
            client_addr: Some(addr.into()),
            application_name: Some(app.into()),
            state: Some(state.into()),
            sync_state: Some("async".into()),
            replay_lsn: Some("0/3000000".into()),
            lag_bytes: Some(0),
            replay_lag_seconds: None,
        };
        let replica_view = Seen {
            position: Some(WalPosition {
                in_recovery: true,
                timeline: Some(1),
                current_lsn: None,
                receive_lsn: Some("0/3000000".into()),
                replay_lsn: Some("0/3000000".into()),
                replay_backlog_bytes: Some(0),
                replay_age_seconds: Some(0.0),
                receiver_status: Some("streaming".into()),
                upstream: Some("203.0.113.1:5432".into()),
            }),
            ..Seen::default()
        };
        let primary_view = Seen {
            standbys: vec![
                standby("198.51.100.9", BASEBACKUP_APPLICATION, "backup"),
                standby("203.0.113.2", "walreceiver", "streaming"),
            ],
            ..Seen::default()
        };
        let mut notes = Vec::new();
        let r = replication(&nodes, &[primary_view, replica_view], &mut notes);
        assert!(r.active);
        assert_eq!(r.standby_address.as_deref(), Some("203.0.113.2"));
        assert_eq!(r.upstream.as_deref(), Some("203.0.113.1:5432"));
        assert_eq!((r.lag_bytes, r.lag_seconds), (Some(0), Some(0.0)));
        assert!(notes.is_empty());
        // A primary with no WAL sender for it: not active, whatever the
        // replica says; its own lag figures are kept.
        let replica_view = || Seen {
            position: Some(WalPosition {
                receiver_status: Some("streaming".into()),
                in_recovery: true,
                timeline: None,
                current_lsn: None,
                receive_lsn: None,
                replay_lsn: None,
                replay_backlog_bytes: Some(4096),
                replay_age_seconds: Some(12.0),
                upstream: None,
            }),
            ..Seen::default()
        };
        let r = replication(&nodes, &[Seen::default(), replica_view()], &mut notes);
        assert!(!r.active);
        assert_eq!((r.lag_bytes, r.lag_seconds), (Some(4096), Some(12.0)));
        // A primary that hides its standbys' state: the replica's word.
        let hidden = Seen {
            standbys: vec![Standby {
                state: None,
                ..standby("203.0.113.2", "walreceiver", "x")
            }],
            ..Seen::default()
        };
        let r = replication(&nodes, &[hidden, replica_view()], &mut notes);
        assert!(r.active);
        assert!(notes[0].contains("grant pg_monitor"), "{notes:?}");
    }
}
