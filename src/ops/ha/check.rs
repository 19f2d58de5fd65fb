//! `keyferry ha check`: the preflight. Each check gives one line — `ok`,
//! `warn` or `fail` — and every `warn`/`fail` carries its fix. Nothing is
//! changed anywhere; servers are only connected to.
//!
//! The checks themselves are named functions in [`crate::ha::preflight`]
//! (see its table for names and order). This module adds what needs the
//! node or the operator: where the replication password comes from
//! (`password`, `passfile`: a given source, the libpq password file, or a
//! prompt, never what it is), `firewall`: whether keyferry's rules open
//! this node's ports to the peer (see [`super::firewall`]), `boot_start`:
//! whether what starts the server at boot runs the start guard first (see
//! [`crate::ha::boot`]), and, last, `keyring`: this node's keyring
//! fingerprint against the other node's (`--peer-fingerprint`). Only `fail`
//! makes the command exit non-zero.

use std::time::Duration;

use serde::Serialize;
use zeroize::Zeroizing;

use super::require_config;
use crate::error::Result;
use crate::ha::config::HaConfig;
use crate::ha::preflight;
pub(crate) use crate::ha::preflight::{Fact, Side, Status};
use crate::keyring::Fingerprint;
use crate::ops::Home;
use crate::pg::{passfile, Credentials};
use crate::secret::{self, PasswordSource};

/// The whole preflight.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CheckReport {
    /// This machine's side, when one of the two addresses is its own.
    pub this_node: Option<Side>,
    pub checks: Vec<Fact>,
}

impl CheckReport {
    pub(crate) fn failed(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count()
    }
}

/// What `ha check` was given.
#[derive(Debug, Clone)]
pub(crate) struct CheckOptions {
    /// Bounds every connection attempt.
    pub timeout: Duration,
    /// The replication user's password source; `None`: the libpq password
    /// file if it has an entry, else a prompt on a terminal, else none.
    pub password: Option<PasswordSource>,
    /// The other node's `keyferry keys fingerprint`, when the operator has
    /// it.
    pub peer_fingerprint: Option<Fingerprint>,
}

/// Runs the preflight. Errors only when `ha.toml` is missing or broken, or
/// a named password source cannot be read; everything else is a check.
pub(crate) fn check(home: &Home, opts: &CheckOptions) -> Result<CheckReport> {
    let config = require_config(home)?;
    tracing::info!(timeout = ?opts.timeout, "ha check: running the preflight checks");
    let mut password_facts = Vec::new();
    let credentials = credentials(&config, opts.password.as_ref(), &mut password_facts)?;
    let found = preflight::run(&config, opts.timeout, &credentials, password_facts);
    let mut checks = found.facts;
    checks.push(super::firewall::fact(&config, found.this_node));
    checks.push(crate::ha::boot::fact(&config));
    checks.push(keyring_check(home, opts.peer_fingerprint.as_ref()));
    for fact in &checks {
        // The same words the report prints; no password reaches a fact.
        tracing::debug!(check = %fact.name, status = fact.status.as_str(), message = %fact.message, "ha check step");
    }
    Ok(CheckReport {
        this_node: found.this_node,
        checks,
    })
}

/// The replication user's password: from `source` when the operator
/// named one, else the libpq password file when it has an entry, else a
/// prompt on a terminal, else none. Where it came from (never what it is)
/// goes into `c` as `password`/`passfile` facts. Shared with `ha status`.
pub(crate) fn credentials(
    config: &HaConfig,
    source: Option<&PasswordSource>,
    c: &mut Vec<Fact>,
) -> Result<Credentials> {
    let user = &config.replication_user;
    let prompt = format!("Password of the replication user {user}: ");
    if let Some(source) = source {
        let password = source.read(&prompt)?;
        let what = match source {
            PasswordSource::Prompt => "typed on the terminal".to_owned(),
            PasswordSource::File(p) => format!("from --password-file {}", p.display()),
            PasswordSource::Fd(fd) => format!("from --password-fd {fd}"),
            PasswordSource::Env(name) => format!("from --password-env {name}"),
        };
        c.push(Fact::ok("password", format!("replication password {what}")));
        return Ok(Credentials::Given(Zeroizing::new(
            password.as_bytes().to_vec(),
        )));
    }
    if let Some(path) = passfile::default_path() {
        let key = passfile::Key {
            host: &config.primary.to_string(),
            port: config.pg_port,
            database: "replication",
            user,
        };
        match passfile::lookup(&path, key) {
            Ok(Some(_)) => {
                c.push(Fact::ok(
                    "password",
                    format!(
                        "replication password from the libpq password file {}",
                        path.display()
                    ),
                ));
                return Ok(Credentials::Passfile(path));
            }
            Ok(None) => {}
            Err(passfile::Unused::TooOpen) => c.push(Fact::warn(
                "passfile",
                format!("{} is ignored: others may read it", path.display()),
                format!("chmod 0600 {}", path.display()),
            )),
            Err(passfile::Unused::Unreadable(e)) => c.push(Fact::warn(
                "passfile",
                format!("{} cannot be read: {e}", path.display()),
                "fix its permissions or point PGPASSFILE elsewhere",
            )),
        }
    }
    if secret::have_terminal() {
        let password = PasswordSource::Prompt.read(&prompt)?;
        c.push(Fact::ok(
            "password",
            "replication password typed on the terminal",
        ));
        return Ok(Credentials::Given(Zeroizing::new(
            password.as_bytes().to_vec(),
        )));
    }
    c.push(Fact::warn(
        "password",
        "no replication password: no source given, no terminal, no matching libpq password file entry",
        format!(
            "pass --password-file/--password-fd/--password-env, or add `{}:{}:replication:{user}:PASSWORD` to ~/.pgpass (mode 0600)",
            config.primary, config.pg_port
        ),
    ));
    Ok(Credentials::None)
}

fn keyring_check(home: &Home, peer: Option<&Fingerprint>) -> Fact {
    let mine = if home.has_keystore() {
        match home.load_keystore() {
            Ok(store) => store.keyring.fingerprint(),
            Err(e) => {
                return Fact::warn(
                    "keyring",
                    format!("this node's keyring cannot be read: {e}"),
                    "see the message",
                );
            }
        }
    } else {
        return Fact::warn(
            "keyring",
            format!("no keyring on this node ({})", home.root().display()),
            "on the secondary: `keyferry import -n keys.exp` with the primary's bundle; on the primary: `keyferry init`",
        );
    };
    match peer {
        Some(theirs) if *theirs == mine => Fact::ok("keyring", format!("this node's keyring {mine} matches the other node's")),
        Some(theirs) => Fact::fail(
            "keyring",
            format!("this node's keyring {mine} differs from the other node's {theirs}"),
            "export the primary's keys (`keyferry export -n keys.exp`) and import them on the secondary (`keyferry import -n keys.exp`)",
        ),
        None => Fact::warn(
            "keyring",
            format!("this node's keyring is {mine}; the other node's is not visible from here"),
            "run `keyferry keys fingerprint` on the other node and pass it with --peer-fingerprint",
        ),
    }
}
