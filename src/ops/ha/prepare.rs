//! `keyferry ha prepare`: makes this node's own server ready for the pair
//! (the replication role, its rights and schema, the replication settings;
//! see [`crate::ha::prepare`] for what and why), reached as its
//! administrator the way the other commands reach it.
//!
//! Invariants: `--dry-run` runs nothing and writes nothing, and lists every
//! statement a real run would make; a real run that changes something is
//! one audited change whose record lists the statements (never a password
//! nor its verifier); a run with nothing to change changes nothing and
//! writes no record; the server is never restarted here (the report names
//! the settings that wait for a restart).

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::require_config;
use super::roles::local_admin;
use crate::error::{Error, Result};
use crate::ha::config::HaConfig;
use crate::ha::prepare::{self, Wanted};
use crate::ops::{details, Home};

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
    /// Settings that take effect only after a restart of the server.
    pub restart_for: Vec<String>,
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

/// `keyferry ha prepare [--dry-run]`; `password` is the replication
/// role's, when the operator gave one (without it a new role has no
/// password, and an existing one keeps its own).
pub fn prepare(
    home: &Home,
    password: Option<&[u8]>,
    dry_run: bool,
    timeout: Duration,
) -> Result<PrepareReport> {
    let config = require_config(home)?;
    let wanted = Wanted {
        user: &config.replication_user,
        archive_command: archive_command(&config)?,
    };
    let (mut client, server) = local_admin(&config, timeout)?;
    let observed = prepare::observe(&mut client, &server, &wanted)?;
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
        dry_run,
        audited: false,
    };
    if dry_run || plan.statements.is_empty() {
        return Ok(report);
    }
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
        ]),
    )?;
    prepare::apply(&mut client, &report.server, &plan)?;
    report.audited = change.finish()?.audited;
    Ok(report)
}
