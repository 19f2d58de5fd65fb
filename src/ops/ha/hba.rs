//! `keyferry hba ensure|remove|show`: keyferry's block for a peer in the
//! server's `pg_hba.conf`.
//!
//! A change is made in this order, and undone on any failure:
//!
//! 1. the new text is computed ([`crate::ha::hba`]); no change means no
//!    backup, no audit record, no reload;
//! 2. when a server is running (it answers where its `postmaster.pid`
//!    says, or at the `--pg-host`/`--pg-socket-dir`/`--pg-port` given,
//!    which override it), keyferry connects first and makes sure
//!    the server reads this very file (`hba_file`), so the check below
//!    checks the right file;
//! 3. the audit record (on a node with a keyring), then: a backup of the
//!    file into the home's `backups/`, the new version written atomically
//!    with the old one's owner, group and mode, PostgreSQL's own parser run
//!    over it (`pg_hba_file_rules`), and only if it reports no error,
//!    `pg_reload_conf()`. On an error the original bytes are put back (with
//!    the same owner and mode) and nothing is reloaded.
//!
//! 4. for `ensure`, PostgreSQL's reading of the file after the write must
//!    show keyferry's lines for the peer (by database, user and address):
//!    otherwise the server does not read what was written, and the
//!    original is put back.
//!
//! The file edited is always the final target of the path given (or of
//! `<pg_data>/pg_hba.conf`): a symbolic link is followed, kept as a link,
//! and the report names both. The server's `hba_file` is compared with
//! that target, links resolved, before anything is written.
//!
//! With no server running the file is written unchecked and the report
//! says so; the server reads it at its next start. A server that seems to
//! run (its `postmaster.pid` exists) but does not answer is an error, not a
//! reason to skip the check; `--offline` skips the server on purpose.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::load_config;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::fsutil::Ownership;
use crate::ha::config::HaConfig;
use crate::ha::hba::{self, Coverage, HbaMethod};
use crate::ha::PeerAddr;
use crate::ops::{details, Home};
use crate::pg::pidfile::{self, PostmasterPid};
use crate::pg::{self, passfile, ConnSpec, Endpoint, PgError};

/// Default role for the administrative connection (a superuser is needed
/// for `pg_hba_file_rules`, `hba_file` and `pg_reload_conf()`).
pub(crate) const DEFAULT_ADMIN_USER: &str = "postgres";
/// Where the server's socket is on Debian/Ubuntu and Red Hat packages.
#[cfg(unix)]
pub(crate) const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// Which file, which role, which server.
#[derive(Debug, Clone, Default)]
pub struct HbaTarget {
    /// `pg_hba.conf`; default `<pg_data>/pg_hba.conf` from `ha.toml`.
    pub file: Option<PathBuf>,
    /// Default: `replication_user` from `ha.toml`, else `repuser`.
    pub replication_user: Option<String>,
    pub server: ServerAccess,
    /// Edit a file that does not look like a `pg_hba.conf` (by its
    /// content, or, with no server to ask, by its name).
    pub force: bool,
    /// Compute the change and report it (`added`); write nothing, contact
    /// no server.
    pub dry_run: bool,
}

/// How to reach the local server to check and reload.
#[derive(Debug, Clone, Default)]
pub struct ServerAccess {
    /// Do not contact a server at all.
    pub offline: bool,
    /// TCP host (name or address) instead of the Unix socket.
    pub host: Option<String>,
    /// Unix socket directory; default: the running server's, from its
    /// `postmaster.pid`, else `/var/run/postgresql`, then `/tmp`.
    pub socket_dir: Option<PathBuf>,
    /// Default: the running server's, from its `postmaster.pid`, else
    /// `pg_port` from `ha.toml`, else 5432.
    pub port: Option<u16>,
    /// Default `postgres`. Its password, if the server asks, comes from the
    /// libpq password file (`PGPASSFILE` or `~/.pgpass`).
    pub user: Option<String>,
    pub timeout: Duration,
}

/// What the server had to say about a change.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ServerOutcome {
    /// `--offline`: no server contacted.
    Offline,
    /// Nothing answered and no `postmaster.pid`: written unchecked.
    NotRunning { endpoint: String },
    /// PostgreSQL parsed the new file without error and reloaded.
    CheckedAndReloaded { endpoint: String },
    /// The file did not change; no server contacted.
    Unchanged,
}

/// What `hba ensure` / `hba remove` did.
#[derive(Debug, Clone, Serialize)]
pub struct HbaChangeReport {
    /// The file edited (links resolved).
    pub file: PathBuf,
    /// The path given, when it leads to `file` through a symbolic link
    /// (which is kept).
    pub link: Option<PathBuf>,
    pub peer: String,
    /// Whether the file changed (with `dry_run`: would change).
    pub changed: bool,
    /// The lines of the new text that the old one did not have.
    pub added: Vec<String>,
    pub backup: Option<PathBuf>,
    pub server: ServerOutcome,
    pub audited: bool,
    /// Lines outside keyferry's blocks that also match the peer.
    pub other_rules: Vec<OtherRule>,
    /// Hand-written lines equivalent to keyferry's two (line numbers of the
    /// file as it was): with `adopted` false they already allow the peer
    /// and nothing was changed; with `adopted` true they were moved into
    /// keyferry's block.
    pub equivalent_lines: Vec<EquivalentLine>,
    pub adopted: bool,
    /// Things the operator should fix that did not stop the change (a
    /// server port other than `ha.toml`'s).
    pub warnings: Vec<String>,
}

/// A hand-written line equivalent to one of keyferry's.
#[derive(Debug, Clone, Serialize)]
pub struct EquivalentLine {
    pub line: usize,
    pub text: String,
}

fn equivalent_views(text: &[u8], found: Option<hba::Equivalents>) -> Vec<EquivalentLine> {
    let Some(found) = found else {
        return Vec::new();
    };
    let mut lines = [found.replication, found.all];
    lines.sort_unstable();
    hba::tokenize(text)
        .into_iter()
        .filter(|r| lines.contains(&r.line))
        .map(|r| EquivalentLine {
            line: r.line,
            text: r.plain_words().join(" "),
        })
        .collect()
}

/// A line outside keyferry's blocks that matches the peer.
#[derive(Debug, Clone, Serialize)]
pub struct OtherRule {
    pub line: usize,
    pub text: String,
    /// `exact` (the peer alone) or `network` (a network around it).
    pub coverage: &'static str,
    /// Whether it comes before keyferry's block and so decides first.
    pub before_block: bool,
}

/// `keyferry hba ensure --peer IP [--method …] [--adopt]`. Hand-written
/// lines equivalent to keyferry's two leave the file as it is, unless
/// `adopt` moves them into keyferry's block.
pub fn ensure(
    home: &Home,
    peer: PeerAddr,
    method: HbaMethod,
    adopt: bool,
    target: &HbaTarget,
) -> Result<HbaChangeReport> {
    change(home, peer, target, Change::Ensure { method, adopt })
}

/// `keyferry hba remove --peer IP`.
pub fn remove(home: &Home, peer: PeerAddr, target: &HbaTarget) -> Result<HbaChangeReport> {
    change(home, peer, target, Change::Remove)
}

enum Change {
    Ensure { method: HbaMethod, adopt: bool },
    Remove,
}

struct Resolved {
    /// The file to edit: the path given with every symbolic link resolved.
    file: PathBuf,
    /// The path given, when it reaches `file` through a symbolic link.
    link: Option<PathBuf>,
    replication_user: String,
    /// Directories where the running server's `postmaster.pid` would be,
    /// best first: the file's own directory (links resolved), the
    /// directory of the path given, then `pg_data` from `ha.toml`.
    data_dirs: Vec<PathBuf>,
    /// `pg_port` from `ha.toml`.
    configured_port: Option<u16>,
    /// The pair's two addresses from `ha.toml`.
    pair: Option<[PeerAddr; 2]>,
}

fn resolve(home: &Home, target: &HbaTarget) -> Result<Resolved> {
    let config: Option<HaConfig> = load_config(home)?;
    let file = match (&target.file, &config) {
        (Some(f), _) => f.clone(),
        (None, Some(c)) => c.pg_data.join("pg_hba.conf"),
        (None, None) => {
            return Err(Error::Usage(format!(
                "no --file and no HA configuration at {}: give --file PATH, or describe the pair with `keyferry ha init`",
                home.ha_config_path().display()
            )))
        }
    };
    // Edit the link's final target and keep the link: replacing the link
    // itself would leave the server reading the unchanged target.
    let (file, link) = match fs::canonicalize(&file) {
        Ok(real) if std::path::absolute(&file).is_ok_and(|given| given != real) => {
            (real, Some(file))
        }
        Ok(real) => (real, None),
        Err(_) => (file, None),
    };
    let replication_user = target
        .replication_user
        .clone()
        .or_else(|| config.as_ref().map(|c| c.replication_user.clone()))
        .unwrap_or_else(|| crate::ha::config::DEFAULT_REPLICATION_USER.to_owned());
    hba::validate_role_name(&replication_user)?;
    let mut data_dirs: Vec<PathBuf> = [Some(&file), link.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    data_dirs.extend(config.as_ref().map(|c| c.pg_data.clone()));
    data_dirs.dedup();
    Ok(Resolved {
        file,
        link,
        replication_user,
        data_dirs,
        configured_port: config.as_ref().map(|c| c.pg_port),
        pair: config.as_ref().map(|c| [c.primary, c.secondary]),
    })
}

fn read_hba(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Usage(format!(
            "{} does not exist: give the server's pg_hba.conf with --file, or fix pg_data in ha.toml",
            path.display()
        )),
        _ => Error::io(format!("cannot read {}", path.display()))(e),
    })
}

fn change(
    home: &Home,
    peer: PeerAddr,
    target: &HbaTarget,
    what: Change,
) -> Result<HbaChangeReport> {
    let r = resolve(home, target)?;
    let mut node = home.open(true)?;
    let original = read_hba(&r.file)?;
    if !target.force {
        if let Some(why) = hba::not_hba_reason(&original) {
            return Err(Error::Refused(format!(
                "{} does not read as a pg_hba.conf ({why}); nothing was changed: give the server's pg_hba.conf with --file, or --force if this is one",
                r.file.display()
            )));
        }
    }
    if let (Change::Ensure { .. }, Some(pair), false) = (&what, r.pair, target.force) {
        if !pair.contains(&peer) {
            return Err(Error::Refused(format!(
                "{peer} is neither node of the pair in ha.toml ({} and {}); nothing was changed: check the address, or give --force to let it in anyway",
                pair[0], pair[1]
            )));
        }
    }
    let (edit, action, equivalents) = match what {
        Change::Ensure {
            method,
            adopt: true,
        } => {
            let (edit, moved) = hba::adopt(&original, &peer, &r.replication_user, method)?;
            (edit, "hba-ensure", moved)
        }
        Change::Ensure { method, .. } => {
            match hba::equivalent_lines(&original, &peer, &r.replication_user, method)? {
                Some(found) => (
                    hba::Edit {
                        text: original.clone(),
                        changed: false,
                    },
                    "hba-ensure",
                    Some(found),
                ),
                None => (
                    hba::ensure(&original, &peer, &r.replication_user, method)?,
                    "hba-ensure",
                    None,
                ),
            }
        }
        Change::Remove => (hba::remove(&original, &peer)?, "hba-remove", None),
    };
    let equivalent_lines = equivalent_views(&original, equivalents);
    let mut other = other_rules(&edit.text, &peer, &r.replication_user)?;
    if !edit.changed {
        other.retain(|o| !equivalent_lines.iter().any(|e| e.line == o.line));
    }
    let mut report = HbaChangeReport {
        file: r.file.clone(),
        link: r.link.clone(),
        peer: peer.to_string(),
        changed: edit.changed,
        added: added_lines(&original, &edit.text),
        backup: None,
        server: ServerOutcome::Unchanged,
        audited: false,
        other_rules: other,
        adopted: edit.changed && !equivalent_lines.is_empty(),
        equivalent_lines,
        warnings: Vec::new(),
    };
    if !edit.changed || target.dry_run {
        return Ok(report);
    }

    let (server, tried) = if target.server.offline {
        (None, Vec::new())
    } else {
        let endpoints = reach(&target.server, &r, &mut report.warnings)?;
        (connect_admin(&target.server, &r, &endpoints)?, endpoints)
    };
    if let Some(name) = name_says_otherwise(&r).filter(|_| server.is_none() && !target.force) {
        // No server will compare the file with its hba_file: its name is
        // the last sign left of what it is.
        return Err(Error::Refused(format!(
            "{} is named like another file than a pg_hba.conf ({name:?}) and no server checks it (offline, or none running); nothing was changed: give the server's pg_hba.conf with --file, or --force if this is the right file",
            r.file.display()
        )));
    }
    report.server = match &server {
        None if target.server.offline => ServerOutcome::Offline,
        None => ServerOutcome::NotRunning {
            endpoint: tried
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        },
        Some((_, endpoint)) => ServerOutcome::CheckedAndReloaded {
            endpoint: endpoint.to_string(),
        },
    };
    let mut server = server;
    let file = &r.file;
    let mut record_details = details([
        ("peer", Value::from(peer.to_string())),
        ("file", Value::from(file.display().to_string())),
        ("replication_user", Value::from(r.replication_user.clone())),
        (
            "server_checked",
            Value::from(matches!(
                report.server,
                ServerOutcome::CheckedAndReloaded { .. }
            )),
        ),
    ]);
    if let Change::Ensure { method, .. } = what {
        record_details.insert("method".into(), Value::from(method.as_str()));
    }
    if report.adopted {
        let lines: Vec<usize> = report.equivalent_lines.iter().map(|e| e.line).collect();
        record_details.insert("adopted_lines".into(), Value::from(lines));
    }
    let mut change = node.begin(action, record_details)?;
    report.backup = change.replace_file(file, &mut &edit.text[..], Ownership::KeepExisting)?;
    if let Some((client, endpoint)) = server.as_mut() {
        let endpoint = endpoint.to_string();
        let checked = check_rules(client, &endpoint, file).and_then(|()| match what {
            Change::Ensure { .. } => server_reads_block(client, &endpoint, file, &edit.text, &peer),
            Change::Remove => Ok(()),
        });
        if let Err(e) = checked {
            change.abort()?;
            return Err(e);
        }
    }
    report.audited = change.finish()?.audited;
    if let Some((client, endpoint)) = server.as_mut() {
        pg::reload_conf(client, &endpoint.to_string()).map_err(|e| {
            Error::Refused(format!(
                "the new {} is in place and PostgreSQL accepts it, but pg_reload_conf() failed ({e}): \
                 run `SELECT pg_reload_conf()` as a superuser",
                file.display()
            ))
        })?;
    }
    Ok(report)
}

/// The lines of `new` that `old` does not have (as text, end of line
/// left off): what a dry run shows.
fn added_lines(old: &[u8], new: &[u8]) -> Vec<String> {
    let before: std::collections::HashSet<&[u8]> = old.split(|b| *b == b'\n').collect();
    new.split(|b| *b == b'\n')
        .filter(|l| !before.contains(l))
        .map(|l| String::from_utf8_lossy(l).trim_end_matches('\r').to_owned())
        .collect()
}

/// Names of files that are something else than a `pg_hba.conf` (parts
/// of a file name, lower case): keyferry's block must never be appended to
/// a password file, a key or another configuration file.
const OTHER_FILES: [&str; 16] = [
    "pgpass",
    "passwd",
    "shadow",
    "gshadow",
    "sudoers",
    "authorized_keys",
    "id_rsa",
    "id_ed25519",
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_ident",
    "ha.toml",
    "keyring",
    "appsettings",
    ".key",
    ".pem",
];

/// The name of the file edited, or of the path given for it, when it says
/// the file is another one than a `pg_hba.conf`.
fn name_says_otherwise(r: &Resolved) -> Option<String> {
    [Some(&r.file), r.link.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .find(|n| !n.contains("hba") && OTHER_FILES.iter().any(|o| n.contains(o)))
}

/// Runs PostgreSQL's parser over the file on disk.
fn check_rules(client: &mut postgres::Client, target: &str, file: &Path) -> Result<()> {
    let errors = pg::hba_file_errors(client, target).map_err(|e| {
        Error::Refused(format!(
            "cannot check {} with the server ({e}); the original was put back: connect as a superuser (--pg-user)",
            file.display()
        ))
    })?;
    if !errors.is_empty() {
        let lines = errors
            .iter()
            .map(|e| match e.line {
                Some(n) => format!("line {n}: {}", e.error),
                None => e.error.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::Refused(format!(
            "PostgreSQL cannot use the new {} ({lines}); the original was put back and nothing was reloaded: fix those lines by hand, then run the command again",
            file.display()
        )));
    }
    Ok(())
}

/// The endpoints for the administrative connection: `--pg-host` or
/// `--pg-socket-dir` when given, else what the running server's
/// `postmaster.pid` says (its socket directory, then its listen address),
/// else the usual socket directories. The port: `--pg-port`, else the
/// `postmaster.pid`'s, else `pg_port` from `ha.toml`, else 5432. A
/// `postmaster.pid` port other than `ha.toml`'s is added to `warnings`.
fn reach(access: &ServerAccess, r: &Resolved, warnings: &mut Vec<String>) -> Result<Vec<Endpoint>> {
    let fully_given =
        (access.host.is_some() || access.socket_dir.is_some()) && access.port.is_some();
    let running = if fully_given {
        None
    } else {
        running_server(r)?
    };
    if let (Some((path, pid)), Some(configured)) = (&running, r.configured_port) {
        if pid.port != configured {
            warnings.push(format!(
                "the server of {} listens on port {} ({}), but ha.toml's pg_port is {configured}: correct pg_port in ha.toml",
                fsutil::parent_dir(path).display(),
                pid.port,
                path.display()
            ));
        }
    }
    let port = access
        .port
        .or(running.as_ref().map(|(_, pid)| pid.port))
        .or(r.configured_port)
        .unwrap_or(crate::ha::config::DEFAULT_PG_PORT);
    Ok(if let Some(host) = &access.host {
        vec![Endpoint::Tcp {
            host: host.clone(),
            port,
        }]
    } else if let Some(dir) = &access.socket_dir {
        vec![Endpoint::Socket {
            dir: dir.clone(),
            port,
        }]
    } else {
        match running.map(|(_, pid)| pid.endpoints(port)) {
            Some(endpoints) if !endpoints.is_empty() => endpoints,
            _ => default_endpoints(port),
        }
    })
}

/// The first `postmaster.pid` in `r.data_dirs`, read: the running server
/// that owns the file (or the node's own server). A file that cannot be
/// read is an error, never skipped: it would hide the server.
fn running_server(r: &Resolved) -> Result<Option<(PathBuf, PostmasterPid)>> {
    for dir in &r.data_dirs {
        let path = dir.join(pidfile::FILE_NAME);
        let text = match fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()))(e)),
        };
        return match pidfile::parse(&text) {
            Ok(pid) => Ok(Some((path, pid))),
            Err(problem) => Err(crate::ha::Error::PostmasterPid { path, problem }.into()),
        };
    }
    Ok(None)
}

#[cfg(unix)]
fn default_endpoints(port: u16) -> Vec<Endpoint> {
    DEFAULT_SOCKET_DIRS
        .iter()
        .map(|d| Endpoint::Socket {
            dir: PathBuf::from(d),
            port,
        })
        .collect()
}

#[cfg(windows)]
fn default_endpoints(port: u16) -> Vec<Endpoint> {
    vec![Endpoint::Tcp {
        host: "localhost".into(),
        port,
    }]
}

/// Connects to the local server as the administrative role, or returns
/// `None` when no server runs. Refuses when a server seems to run but
/// cannot be used, or reads another `pg_hba.conf`.
fn connect_admin(
    access: &ServerAccess,
    r: &Resolved,
    endpoints: &[Endpoint],
) -> Result<Option<(postgres::Client, Endpoint)>> {
    // Through a socket, the data directory's owner unless --pg-user names
    // another role: `peer` admits it, also from root (see `pg::peer`). Only
    // a real data directory's (PG_VERSION): the directory of a file given
    // elsewhere says nothing about the server's account.
    let owner = r
        .data_dirs
        .iter()
        .find(|d| d.join("PG_VERSION").is_file())
        .and_then(|d| crate::actor::owner_name(d).zip(pg::peer::Owner::of(d)))
        .filter(|(name, _)| access.user.as_deref().is_none_or(|u| u == name));
    let mut last_unreachable: Option<PgError> = None;
    for endpoint in endpoints {
        let as_owner = match endpoint {
            Endpoint::Socket { .. } => owner.as_ref(),
            Endpoint::Tcp { .. } => None,
        };
        let user = match as_owner {
            Some((name, _)) => name.as_str(),
            None => access.user.as_deref().unwrap_or(DEFAULT_ADMIN_USER),
        };
        let (host, port) = match endpoint {
            Endpoint::Tcp { host, port } => (host.clone(), *port),
            Endpoint::Socket { port, .. } => ("localhost".to_owned(), *port),
        };
        let password = passfile::find(passfile::Key {
            host: &host,
            port,
            database: pg::MAINTENANCE_DB,
            user,
        });
        let spec = ConnSpec {
            endpoint,
            user,
            dbname: pg::MAINTENANCE_DB,
            password: password.as_ref().map(|p| p.as_bytes()),
            timeout: access.timeout,
        };
        let connected = match as_owner {
            Some((_, account)) => pg::connect_as_owner(&spec, *account),
            None => pg::connect(&spec),
        };
        match connected {
            Ok(mut client) => {
                same_hba_file(&mut client, endpoint, &r.file)?;
                return Ok(Some((client, endpoint.clone())));
            }
            Err(e) if e.is_unreachable() => last_unreachable = Some(e),
            Err(e) => {
                return Err(Error::Refused(format!(
                    "a server answers but keyferry cannot use it to check the new pg_hba.conf ({e}); nothing was changed: \
                     connect as a superuser (--pg-user, password from PGPASSFILE or ~/.pgpass), or pass --offline to write unchecked and reload by hand"
                )))
            }
        }
    }
    if let Some(pid) = r
        .data_dirs
        .iter()
        .map(|d| d.join(pidfile::FILE_NAME))
        .find(|p| p.is_file())
    {
        let why = last_unreachable.map(|e| e.to_string()).unwrap_or_default();
        return Err(Error::Refused(format!(
            "{} says a server is running, but it does not answer ({why}); nothing was changed: \
             give --pg-socket-dir, or --pg-host and --pg-port, or pass --offline to write unchecked",
            pid.display()
        )));
    }
    Ok(None)
}

fn same_hba_file(client: &mut postgres::Client, endpoint: &Endpoint, file: &Path) -> Result<()> {
    let served = pg::hba_file(client, &endpoint.to_string()).map_err(|e| {
        Error::Refused(format!(
            "cannot ask the server which pg_hba.conf it reads ({e}); nothing was changed: connect as a superuser (--pg-user)"
        ))
    })?;
    let served = fs::canonicalize(&served).unwrap_or(served);
    if served != file {
        return Err(crate::ha::Error::HbaFileNotServed {
            endpoint: endpoint.to_string(),
            served,
            edited: file.to_path_buf(),
        }
        .into());
    }
    Ok(())
}

/// Compares PostgreSQL's reading of the file on disk with the block just
/// written for `peer`: each of the block's lines must be among the
/// server's rules, by database, user and address (an all-ones mask).
fn server_reads_block(
    client: &mut postgres::Client,
    endpoint: &str,
    file: &Path,
    written: &[u8],
    peer: &PeerAddr,
) -> Result<()> {
    let rules = pg::hba_file_rules(client, endpoint).map_err(|e| {
        Error::Refused(format!(
            "cannot read pg_hba_file_rules to compare it with {} ({e}); the original was put back: connect as a superuser (--pg-user)",
            file.display()
        ))
    })?;
    let missing = missing_block_rules(written, peer, &rules)?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(crate::ha::Error::HbaNotRead {
        endpoint: endpoint.to_owned(),
        file: file.to_path_buf(),
        missing: missing.join(", "),
    }
    .into())
}

/// The lines of keyferry's block for `peer` in `written` (as `database
/// user address`) that no rule in `rules` matches.
fn missing_block_rules(
    written: &[u8],
    peer: &PeerAddr,
    rules: &[pg::HbaRule],
) -> Result<Vec<String>> {
    let all_ones = |mask: &str| match mask.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => u32::from(v4) == u32::MAX,
        Ok(IpAddr::V6(v6)) => u128::from(v6) == u128::MAX,
        Err(_) => false,
    };
    let Some(block) = hba::managed_blocks(written)?
        .into_iter()
        .find(|b| b.peer == peer.ip())
    else {
        return Ok(Vec::new());
    };
    Ok(block
        .records
        .iter()
        .filter_map(|record| {
            let (database, user) = (record.word(1)?, record.word(2)?);
            let served = rules.iter().any(|rule| {
                rule.databases == [database]
                    && rule.users == [user]
                    && rule
                        .address
                        .as_deref()
                        .and_then(|a| a.parse::<IpAddr>().ok())
                        == Some(peer.ip())
                    && rule.netmask.as_deref().is_some_and(all_ones)
            });
            (!served).then(|| format!("{database} {user} {}", peer.hba_cidr()))
        })
        .collect())
}

/// The lines outside keyferry's blocks that match `peer` and could decide a
/// connection of the replication role `user` (the others, an
/// application's, cannot shadow keyferry's lines).
fn other_rules(text: &[u8], peer: &PeerAddr, user: &str) -> Result<Vec<OtherRule>> {
    let block_start = hba::managed_blocks(text)?
        .iter()
        .find(|b| b.peer == peer.ip())
        .map(|b| b.begin_line);
    Ok(hba::rules_mentioning(text, peer)?
        .into_iter()
        .filter(|m| m.record.may_decide_for(user))
        .map(|m| OtherRule {
            line: m.record.line,
            text: m.record.plain_words().join(" "),
            coverage: match m.coverage {
                Coverage::Exact => "exact",
                Coverage::Network => "network",
            },
            before_block: block_start.is_none_or(|start| m.record.line < start),
        })
        .collect())
}

/// One keyferry block as `hba show` lists it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BlockView {
    pub peer: String,
    pub begin_line: usize,
    pub end_line: usize,
    pub rules: Vec<String>,
    /// Whether it holds exactly what `ensure` writes for the configured
    /// replication user (with either method).
    pub current: bool,
}

/// Lines outside the blocks that match one peer.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PeerRules {
    pub peer: String,
    pub rules: Vec<OtherRule>,
}

/// What `hba show` shows.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HbaShowReport {
    pub file: PathBuf,
    pub blocks: Vec<BlockView>,
    pub other_rules: Vec<PeerRules>,
}

/// `keyferry hba show [--peer IP]`: keyferry's blocks, and the other lines
/// that match the peers (the block peers, the pair's two addresses and
/// `peer`).
pub(crate) fn show(
    home: &Home,
    peer: Option<PeerAddr>,
    target: &HbaTarget,
) -> Result<HbaShowReport> {
    let r = resolve(home, target)?;
    let text = read_hba(&r.file)?;
    let blocks = hba::managed_blocks(&text)?;
    let mut peers: Vec<PeerAddr> = blocks
        .iter()
        .filter_map(|b| PeerAddr::try_from(b.peer).ok())
        .collect();
    if let Some(config) = load_config(home)? {
        peers.extend([config.primary, config.secondary]);
    }
    peers.extend(peer);
    peers.sort();
    peers.dedup();
    let mut other = Vec::new();
    for p in &peers {
        let rules = other_rules(&text, p, &r.replication_user)?;
        if !rules.is_empty() {
            other.push(PeerRules {
                peer: p.to_string(),
                rules,
            });
        }
    }
    Ok(HbaShowReport {
        file: r.file,
        blocks: blocks
            .iter()
            .map(|b| BlockView {
                peer: b.peer.to_string(),
                begin_line: b.begin_line,
                end_line: b.end_line,
                rules: b
                    .records
                    .iter()
                    .map(|rec| rec.plain_words().join(" "))
                    .collect(),
                current: [HbaMethod::ScramSha256, HbaMethod::Md5]
                    .iter()
                    .any(|m| b.is_current(&r.replication_user, *m)),
            })
            .collect(),
        other_rules: other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(database: &str, user: &str, address: &str, netmask: &str) -> pg::HbaRule {
        pg::HbaRule {
            databases: vec![database.to_owned()],
            users: vec![user.to_owned()],
            address: Some(address.to_owned()),
            netmask: Some(netmask.to_owned()),
        }
    }

    #[test]
    fn the_servers_rules_must_show_every_line_of_the_block() {
        let peer = PeerAddr::parse("10.0.0.2").unwrap();
        let written = hba::ensure(b"local all all peer\n", &peer, "repuser", HbaMethod::Md5)
            .unwrap()
            .text;
        let ones = "255.255.255.255";
        let both = [
            rule("replication", "repuser", "10.0.0.2", ones),
            rule("all", "all", "10.0.0.2", ones),
        ];
        assert_eq!(
            missing_block_rules(&written, &peer, &both).unwrap(),
            Vec::<String>::new()
        );
        // What the server reads when it reads another file: nothing of ours.
        let missing = missing_block_rules(&written, &peer, &[]).unwrap();
        assert_eq!(
            missing,
            ["replication repuser 10.0.0.2/32", "all all 10.0.0.2/32"]
        );
        // Another user, another address, a network: not the block's lines.
        let near = [
            rule("replication", "other", "10.0.0.2", ones),
            rule("all", "all", "10.0.0.3", ones),
            rule("all", "all", "10.0.0.2", "255.255.255.0"),
        ];
        assert_eq!(
            missing_block_rules(&written, &peer, &near).unwrap().len(),
            2
        );
        let v6 = PeerAddr::parse("2001:db8::2").unwrap();
        let written = hba::ensure(b"", &v6, "repuser", HbaMethod::Md5)
            .unwrap()
            .text;
        let mask = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let served = [
            rule("replication", "repuser", "2001:db8::2", mask),
            rule("all", "all", "2001:db8::2", mask),
        ];
        assert!(missing_block_rules(&written, &v6, &served)
            .unwrap()
            .is_empty());
    }
}
