//! The HA pair's operations: `ha init` / `ha show` (the pair description
//! `ha.toml`), `ha check` (preflight, in [`check`]), `hba ensure` /
//! `hba remove` / `hba show` (in [`hba`]), `ha firewall` (in [`firewall`])
//! and `ha archive clean`.
//!
//! Every change goes through the node's change type
//! ([`crate::node::Change`]): journaled, audited on a node with a keyring,
//! undone on failure.
//!
//! A node without a keyring yet (a secondary is usually described and its
//! `pg_hba.conf` prepared before the primary's keys are imported) may still
//! run these commands: the change is made without an audit record and the
//! report says so (`audited: false`). Creating a keyring just to audit would
//! be wrong there, since the node's keys must come from the primary.
//!
//! Nothing here prints; reports go back to `cli`. No password is ever part
//! of a report, an error or an audit record.

pub(crate) mod bootstrap;
pub(crate) mod check;
pub(crate) mod effects;
pub(crate) mod failover;
pub(crate) mod firewall;
pub(crate) mod guard;
pub mod hba;
pub(crate) mod prepare;
pub(crate) mod rejoin;
pub(crate) mod roles;
pub(crate) mod status;
pub(crate) mod steps;
pub(crate) mod switchover;

use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use super::{details, Home};
use crate::error::{Error, Result};
use crate::fsutil::Ownership;
use crate::ha::archive::{self, WalFileKind};
use crate::ha::config::{HaConfig, ServiceControl};
use crate::ha::PeerAddr;

/// Reads `ha.toml`; `Ok(None)` when the node has none.
pub use crate::ops::config::load_local as load_config;

/// Reads `ha.toml`, which must exist.
pub(crate) fn require_config(home: &Home) -> Result<HaConfig> {
    load_config(home)?.ok_or_else(|| {
        Error::Refused(format!(
            "no HA configuration at {}: describe the pair first with `keyferry ha init --node NAME --primary IP --secondary IP`",
            home.ha_config_path().display()
        ))
    })
}

/// What `ha init` was given.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub node: String,
    pub primary: PeerAddr,
    pub secondary: PeerAddr,
    pub pg_port: Option<u16>,
    pub web_port: Option<u16>,
    pub pg_bin: Option<PathBuf>,
    pub pg_data: Option<PathBuf>,
    pub archive_dir: Option<PathBuf>,
    pub pg_socket_dir: Option<PathBuf>,
    pub appsettings: Option<PathBuf>,
    pub replication_user: Option<String>,
    /// How the server is started (default `pg_ctl`).
    pub service: Option<ServiceControl>,
    /// Replace an existing `ha.toml` (its previous version goes to
    /// `backups/`).
    pub force: bool,
}

/// `ha.toml` as the options describe it, validated.
fn config_from_options(opts: &InitOptions) -> std::result::Result<HaConfig, crate::ha::Error> {
    let mut config = HaConfig::new(&opts.node, opts.primary, opts.secondary)?;
    if let Some(port) = opts.pg_port {
        config.pg_port = port;
    }
    if let Some(port) = opts.web_port {
        config.web_port = port;
    }
    if let Some(bin) = &opts.pg_bin {
        config.pg_bin = bin.clone();
    }
    if let Some(data) = &opts.pg_data {
        config.pg_data = data.clone();
    }
    config.archive_dir = opts.archive_dir.clone();
    config.pg_socket_dir = opts.pg_socket_dir.clone();
    config.appsettings = opts.appsettings.clone();
    if let Some(user) = &opts.replication_user {
        config.replication_user = user.clone();
    }
    if let Some(service) = &opts.service {
        config.use_service(
            service.clone(),
            opts.pg_bin.is_some(),
            opts.pg_data.is_some(),
        )?;
    }
    config.validate()?;
    Ok(config)
}

/// A value the operator typed on the command line that `ha.toml` cannot
/// hold is a usage error naming the option (exit code 2).
fn as_usage(e: crate::ha::Error) -> Error {
    match e {
        crate::ha::Error::ConfigValue { field, reason } => {
            Error::Usage(format!("--{}: {field} {reason}", field.replace('_', "-")))
        }
        other if other.is_usage() => Error::Ha(other),
        other => Error::Usage(other.to_string()),
    }
}

/// What `ha init` did.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    pub path: PathBuf,
    pub config: HaConfigView,
    /// The previous `ha.toml`, when `--force` replaced one.
    pub backup: Option<PathBuf>,
    pub audited: bool,
}

/// `ha.toml` as shown by `ha show --json` (the file's own keys).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct HaConfigView(Value);

impl HaConfigView {
    fn of(config: &HaConfig) -> Result<Self> {
        let text = config.to_toml()?;
        let value: toml::Value = toml::from_str(&text)
            .map_err(|e| Error::Refused(format!("cannot re-read the configuration: {e}")))?;
        let json = serde_json::to_value(value)
            .map_err(|e| Error::Refused(format!("cannot render the configuration: {e}")))?;
        Ok(Self(json))
    }
}

/// `keyferry ha init`: validates and writes `ha.toml` (owner-only,
/// atomically). Refuses to replace an existing one unless `force`.
pub fn init(home: &Home, opts: &InitOptions) -> Result<InitReport> {
    let mut config = config_from_options(opts).map_err(as_usage)?;
    let mut node = home.open(true)?;
    let path = home.ha_config_path();
    let exists = path.exists();
    if exists && !opts.force {
        return Err(Error::Refused(format!(
            "{} exists: show it with `keyferry ha show`, or replace it with `keyferry ha init … --force` (the old one is kept in {})",
            path.display(),
            home.backup_dir().display()
        )));
    }
    // What the file it replaces knows of the pair's history stays: the
    // generation never goes back, and a demoted node stays demoted until
    // `ha rejoin` (a file that cannot be read has nothing to keep).
    if let Ok(Some(old)) = load_config(home) {
        config.generation = config.generation.max(old.generation);
        config.demoted |= old.demoted;
    }
    let text = config.to_toml()?;
    let record_details = details([
        ("node", Value::from(config.node.clone())),
        ("primary", Value::from(config.primary.to_string())),
        ("secondary", Value::from(config.secondary.to_string())),
        ("pg_port", Value::from(config.pg_port)),
        ("web_port", Value::from(config.web_port)),
        (
            "replication_user",
            Value::from(config.replication_user.clone()),
        ),
        ("replaced", Value::from(exists)),
    ]);
    let mut change = node.begin("ha-init", record_details)?;
    let backup = change.replace_file(&path, &mut text.as_bytes(), Ownership::OwnerOnly)?;
    let audited = change.finish()?.audited;
    Ok(InitReport {
        path,
        config: HaConfigView::of(&config)?,
        backup,
        audited,
    })
}

/// What `ha show` shows.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ShowReport {
    pub path: PathBuf,
    /// The configuration in `ha.toml`'s canonical form.
    #[serde(skip)]
    pub toml: String,
    pub config: HaConfigView,
}

/// `keyferry ha show`.
pub(crate) fn show(home: &Home) -> Result<ShowReport> {
    let config = require_config(home)?;
    Ok(ShowReport {
        path: home.ha_config_path(),
        toml: config.to_toml()?,
        config: HaConfigView::of(&config)?,
    })
}

/// One file of an archive clean.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ArchiveEntry {
    pub path: PathBuf,
    pub kind: &'static str,
    pub bytes: u64,
}

/// What `ha archive clean` did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ArchiveCleanReport {
    pub dir: PathBuf,
    pub dry_run: bool,
    /// The WAL archive files listed (dry run) or removed.
    pub files: Vec<ArchiveEntry>,
    pub bytes: u64,
    /// Entries that are not WAL archive files and were left alone.
    pub kept: usize,
    /// Why the directory is a live archive, when it is.
    pub live: Option<String>,
    /// WAL archive files kept because the live archive still needs them.
    pub needed: usize,
    /// The oldest segment kept for the live archive.
    pub keep_from: Option<String>,
    /// Listed files that had changed when the clean reached them and were
    /// left alone.
    pub skipped: Vec<PathBuf>,
    pub audited: bool,
}

fn kind_name(kind: WalFileKind) -> &'static str {
    match kind {
        WalFileKind::Segment => "segment",
        WalFileKind::Partial => "partial",
        WalFileKind::History => "history",
        WalFileKind::Backup => "backup",
    }
}

/// What `ha archive clean` may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CleanScope {
    /// WAL archive files no server still needs (all of them when no server
    /// archives into the directory).
    Unneeded,
    /// Every WAL archive file, even those a live archive still needs
    /// (`--all --force`).
    Everything,
}

/// `keyferry ha archive clean [--dry-run] [--dir DIR] [--all --force]`:
/// removes only WAL archive files (see [`crate::ha::archive`]) from the
/// archive directory of `ha.toml` or `dir`, never a server's own WAL.
/// While this node's server archives into the directory, only what its last
/// checkpoint and newest base backup no longer need is removed, unless the
/// scope is [`CleanScope::Everything`].
pub(crate) fn archive_clean(
    home: &Home,
    dir: Option<PathBuf>,
    dry_run: bool,
    scope: CleanScope,
) -> Result<ArchiveCleanReport> {
    let config = load_config(home)?;
    let dir = match dir {
        Some(d) => d,
        None => require_config(home)?.archive_dir.ok_or_else(|| {
            Error::Usage(
                "ha.toml names no archive_dir: give the directory with --dir, or set it with `keyferry ha init … --archive-dir DIR --force`"
                    .into(),
            )
        })?,
    };
    let pg_data = config.as_ref().map(|c| c.pg_data.as_path());
    let real = archive::real_dir(&dir, pg_data)?;
    let mut plan = archive::plan(&real)?;
    let live = config
        .as_ref()
        .and_then(|c| archive::live_archiving(c, &dir, &real));
    let mut needed = None;
    if let (Some(_), CleanScope::Unneeded) = (&live, scope) {
        let config = config.as_ref().expect("live archiving needs ha.toml");
        let control = crate::pg::controldata(&config.pg_bin, &config.pg_data).map_err(|e| {
            Error::Refused(format!(
                "a server archives into {} but its last checkpoint cannot be read ({e}): \
                 nothing was removed; fix that, or remove everything with --all --force",
                dir.display()
            ))
        })?;
        let redo = control.redo_wal_file.ok_or_else(|| {
            Error::Refused(format!(
                "pg_controldata names no REDO WAL file for {}: nothing was removed",
                config.pg_data.display()
            ))
        })?;
        needed = Some(plan.keep_needed(&redo));
    }
    let entry = |f: &archive::ArchiveFile| ArchiveEntry {
        path: f.path.clone(),
        kind: kind_name(f.kind),
        bytes: f.size,
    };
    let mut report = ArchiveCleanReport {
        dir: dir.clone(),
        dry_run,
        files: plan.files.iter().map(entry).collect(),
        bytes: plan.total_bytes(),
        kept: plan.kept,
        live: live.clone(),
        needed: needed.as_ref().map_or(0, |n| n.files.len()),
        keep_from: needed.as_ref().map(|n| n.keep_from.clone()),
        skipped: Vec::new(),
        audited: false,
    };
    if dry_run || plan.files.is_empty() {
        return Ok(report);
    }
    let mut node = home.open(true)?;
    let mut record = details([
        ("dir", Value::from(dir.display().to_string())),
        ("files", Value::from(plan.files.len())),
        ("bytes", Value::from(plan.total_bytes())),
        ("everything", Value::from(scope == CleanScope::Everything)),
    ]);
    if let Some(why) = &live {
        record.insert("live_archive".into(), Value::from(why.clone()));
    }
    let mut change = node.begin("ha-archive-clean", record)?;
    let removes = plan.files.iter().map(|f| f.path.clone()).collect();
    let done = change.irreversible("removing WAL archive files", removes, |progress| {
        let result = archive::clean(&plan);
        match &result {
            Ok(done) => {
                progress.set("removed", done.removed);
                progress.set("removed_bytes", done.bytes);
                progress.set("skipped", done.skipped.len());
            }
            Err(crate::ha::Error::ArchiveRemove { removed, .. }) => {
                progress.set("removed", *removed);
            }
            Err(_) => {}
        }
        Ok(result?)
    })?;
    report.audited = change.finish()?.audited;
    report.skipped = done.skipped;
    let skipped: Vec<&PathBuf> = report.skipped.iter().collect();
    report.files.retain(|f| !skipped.contains(&&f.path));
    report.bytes = done.bytes;
    Ok(report)
}
