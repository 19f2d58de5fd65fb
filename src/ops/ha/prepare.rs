//! `keyferry ha prepare`: makes this node's own server ready for the pair
//! (the replication role, its rights and schema, the replication settings;
//! see [`crate::ha::prepare`] for what and why), reached as its
//! administrator the way the other commands reach it, then keyferry's
//! `pg_hba.conf` blocks for both of `ha.toml`'s addresses through
//! `hba ensure`'s machinery ([`super::hba`]: checked by the server,
//! backed up, audited, reloaded), and with `--restart` restarts the server
//! for the settings that wait for one.
//!
//! The blocks: the peer's address replicates and reaches the server over
//! TCP (switchover's promotion, rejoin's `pg_rewind`, the peer's `ha
//! status`); the node's own address is there for the node registry and
//! rewrap, which reach the writable node by its address from this node
//! too. The file is the one the server reads (`hba_file`), which on Debian
//! is not inside the data directory.
//!
//! Invariants: `--dry-run` runs nothing and writes nothing, and lists every
//! statement and every `pg_hba.conf` line a real run would make; a real run
//! that changes something is audited (one record for the statements and
//! the restart, never a password nor its verifier; one per `pg_hba.conf`
//! block, as `hba ensure` writes it); a run with nothing to change changes
//! nothing and writes no record; the server is restarted only with
//! `--restart` and only when a setting waits for it (otherwise the report
//! names those settings). A restart keeps the server's role: it ran a
//! moment ago as what it is, so there is no start decision for the guard
//! to make.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::hba::{self as hba_ops, HbaChangeReport, HbaTarget, ServerAccess};
use super::require_config;
use super::roles::local_admin;
use crate::error::{Error, Result};
use crate::ha::config::HaConfig;
use crate::ha::hba::HbaMethod;
use crate::ha::prepare::{self, Wanted};
use crate::ha::service::Server;
use crate::ops::{details, Home};

/// Bounds the restart's stop and its start, each.
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);

/// How `ha prepare` runs.
#[derive(Debug, Clone, Copy)]
pub struct PrepareOptions {
    /// List every statement and line; change nothing.
    pub dry_run: bool,
    /// Restart the server when a setting waits for it.
    pub restart: bool,
    /// Of the connections to the local server.
    pub timeout: Duration,
}

/// One statement, as shown.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub sql: String,
    pub why: String,
}

/// What `ha prepare` did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PrepareReport {
    /// The server, as reached.
    pub server: String,
    pub statements: Vec<Shown>,
    /// Settings that take effect only after a restart of the server
    /// (after `restarted`: those that still wait, normally none).
    pub restart_for: Vec<String>,
    /// The server was restarted for them.
    pub restarted: bool,
    /// keyferry's `pg_hba.conf` block for each of `ha.toml`'s addresses.
    pub hba: Vec<HbaChangeReport>,
    pub dry_run: bool,
    /// The change is in the audit log (false without a keyring yet, or
    /// when nothing changed).
    pub audited: bool,
}

/// The `archive_command` that copies each WAL file into `archive_dir`
/// without overwriting one that is there.
fn archive_command(config: &HaConfig) -> Result<Option<String>> {
    let Some(dir) = &config.archive_dir else {
        return Ok(None);
    };
    let dir = dir.display().to_string();
    if dir.contains(['\'', '"', '%']) {
        return Err(Error::Usage(format!(
            "archive_dir {dir:?} holds a quote or %: archive_command cannot name it safely; choose a plain directory name in ha.toml"
        )));
    }
    Ok(Some(if cfg!(windows) {
        format!("if not exist \"{dir}\\%f\" copy \"%p\" \"{dir}\\%f\"")
    } else {
        format!("test ! -f '{dir}/%f' && cp '%p' '{dir}/%f'")
    }))
}

/// `keyferry ha prepare [--dry-run] [--restart]`; `password` is the
/// replication role's, when the operator gave one (without it a new role
/// has no password, and an existing one keeps its own).
pub fn prepare(
    home: &Home,
    password: Option<&[u8]>,
    opts: PrepareOptions,
) -> Result<PrepareReport> {
    let config = require_config(home)?;
    let wanted = Wanted {
        user: &config.replication_user,
        archive_command: archive_command(&config)?,
    };
    let (mut client, server) = local_admin(&config, opts.timeout)?;
    let observed = prepare::observe(&mut client, &server, &wanted)?;
    let hba_file = crate::pg::hba_file(&mut client, &server)?;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)
        .map_err(|e| Error::Refused(format!("no random bytes for the password's salt: {e}")))?;
    let plan = prepare::plan(&observed, &wanted, password, salt);
    let mut report = PrepareReport {
        server,
        statements: plan
            .statements
            .iter()
            .map(|s| Shown {
                sql: s.shown(),
                why: s.why.clone(),
            })
            .collect(),
        restart_for: plan.restart_for.clone(),
        restarted: false,
        hba: Vec::new(),
        dry_run: opts.dry_run,
        audited: false,
    };
    let restart = opts.restart && !report.restart_for.is_empty() && !opts.dry_run;
    if !opts.dry_run && (restart || !plan.statements.is_empty()) {
        let mut node = home.open(true)?;
        let change = node.begin(
            "ha-prepare",
            details([
                ("server", Value::from(report.server.clone())),
                (
                    "statements",
                    Value::from(
                        report
                            .statements
                            .iter()
                            .map(|s| s.sql.clone())
                            .collect::<Vec<_>>(),
                    ),
                ),
                ("restart_for", Value::from(report.restart_for.clone())),
                ("restart", Value::from(restart)),
            ]),
        )?;
        prepare::apply(&mut client, &report.server, &plan)?;
        report.audited = change.finish()?.audited;
    }
    drop(client);
    report.hba = hba_blocks(home, &config, hba_file, opts)?;
    if restart {
        let server = Server::of(&config, RESTART_TIMEOUT);
        server.stop().map_err(|e| {
            Error::Refused(format!(
                "ha prepare --restart could not stop the server ({e}); the statements are in place: restart it with `keyferry ha stop` and `keyferry ha start`"
            ))
        })?;
        server.start().map_err(|e| {
            Error::Refused(format!(
                "ha prepare --restart stopped the server and could not start it again ({e}): fix what the log says, then `keyferry ha start`"
            ))
        })?;
        report.restarted = true;
        let (mut client, target) = local_admin(&config, opts.timeout)?;
        let observed = prepare::observe(&mut client, &target, &wanted)?;
        report.restart_for = prepare::plan(&observed, &wanted, None, salt).restart_for;
    }
    Ok(report)
}

/// keyferry's block for each of `ha.toml`'s addresses in `file` (the
/// server's `hba_file`), through `hba ensure`.
fn hba_blocks(
    home: &Home,
    config: &HaConfig,
    file: std::path::PathBuf,
    opts: PrepareOptions,
) -> Result<Vec<HbaChangeReport>> {
    let target = HbaTarget {
        file: Some(file),
        replication_user: Some(config.replication_user.clone()),
        server: ServerAccess {
            timeout: opts.timeout,
            ..ServerAccess::default()
        },
        force: false,
        dry_run: opts.dry_run,
    };
    [config.secondary, config.primary]
        .into_iter()
        .map(|addr| hba_ops::ensure(home, addr, HbaMethod::default(), false, &target))
        .collect()
}
