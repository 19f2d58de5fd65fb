//! `keyferry ha rejoin`: the old primary, after a failover, becomes a
//! replica of the new one — by `pg_rewind` when its prerequisites hold, else
//! by a fresh bootstrap (which keeps the old data directory aside).
//!
//! The steps:
//!
//! 1. checks that change nothing: `ha.toml` names this node the secondary
//!    (a node that lost its role), the primary it names runs as primary,
//!    and `pg_rewind`'s prerequisites: `wal_log_hints` or data checksums on
//!    this node's cluster, `full_page_writes` on the new primary;
//! 2. stop the local server (not undone: a demoted node that stopped is in
//!    the safe state, and starting it again as a primary is what the start
//!    guard exists to prevent);
//! 3. `pg_rewind --dry-run`: where the histories diverged. When this node
//!    wrote WAL after that point, rewinding loses those transactions: only
//!    with `--force`, and the refusal says how many bytes;
//! 4. `pg_rewind` (an irreversible step, audited before and after), with
//!    `--restore-target-wal` when this node's configuration has a
//!    `restore_command`; the configuration files it would overwrite
//!    (`postgresql.conf`, `pg_hba.conf`, `pg_ident.conf`,
//!    `postgresql.auto.conf`) are put back as they were;
//! 5. the standby configuration (as in bootstrap), start, and wait until the
//!    new primary sees this node streaming.
//!
//! When a prerequisite is missing, or the dry run fails (the WAL it needs is
//! gone), the rejoin is a bootstrap: see [`super::bootstrap`]. Running the
//! command again after any failure goes on from where the node is: every
//! step is safe to repeat.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::bootstrap::{
    self, owner_reference, passfile_path, primary_sql, step_error, wait_caught_up, write_passfile,
    write_standby, BootstrapOptions, BootstrapReport, Mode, Observer,
};
use super::{require_config, roles};
use crate::error::{Error, Result};
use crate::fmt::human_bytes;
use crate::ha::autoconf;
use crate::ha::config::HaConfig;
use crate::ha::datafile::{self, Kept};
use crate::ha::preflight::{self, Side};
use crate::ha::service::Server;
use crate::node::{Change, Home};
use crate::pg::rewind::{self, Rewind};
use crate::pg::{self, Credentials, PgError};
use crate::secret::PasswordSource;

const ACTION: &str = "ha-rejoin";

/// Files `pg_rewind` copies from the source that belong to this node.
const OWN_FILES: [&str; 4] = [
    "postgresql.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "postgresql.auto.conf",
];

/// What `ha rejoin` was given.
#[derive(Debug, Clone)]
pub(crate) struct RejoinOptions {
    pub password: Option<PasswordSource>,
    /// Rewind even when this node wrote WAL after the histories diverged.
    pub force: bool,
    /// Print the plan; change nothing.
    pub dry_run: bool,
    pub slot: Option<String>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

/// How a rejoin went (or would go).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RejoinReport {
    pub dry_run: bool,
    /// What it does, in order.
    pub plan: Vec<String>,
    /// `rewind`, `follow` (no rewind needed) or `bootstrap`.
    pub method: &'static str,
    pub diverged_at: Option<String>,
    /// WAL this node wrote after the divergence, lost by the rewind.
    pub lost_wal_bytes: Option<u64>,
    pub bootstrap: Option<BootstrapReport>,
    pub audited: bool,
}

/// Why `pg_rewind` cannot be used, if it cannot.
fn rewind_impossible(control: Option<&pg::ControlData>, full_page_writes: bool) -> Option<String> {
    let Some(control) = control else {
        return Some("this node has no data directory to rewind".into());
    };
    if !control.wal_log_hints && !control.checksums {
        return Some(
            "this node's cluster has neither wal_log_hints = on nor data checksums".into(),
        );
    }
    if !full_page_writes {
        return Some("the new primary runs with full_page_writes = off".into());
    }
    None
}

/// Runs (or, with `dry_run`, plans) a rejoin.
pub(crate) fn rejoin(
    home: &Home,
    opts: &RejoinOptions,
    obs: &mut dyn Observer,
) -> Result<RejoinReport> {
    let config = require_config(home)?;
    let password = bootstrap::password(&config, opts.password.as_ref())?;
    // After a failover elsewhere, this node's ha.toml learns the new roles
    // from the pair's generation record first.
    let creds = Credentials::Given(Zeroizing::new(password.as_bytes().to_vec()));
    let (config, note) = roles::sync(home, config, &creds, opts.connect_timeout)?;
    if let Some(note) = note {
        obs.step(&format!("note: {note}"));
    }
    match preflight::this_node(&config).0 {
        Some(Side::Secondary) => {}
        _ => {
            return Err(Error::Refused(format!(
                "ha.toml does not name this machine the secondary ({}): rejoin runs on the node that lost the primary role; after a failover run `keyferry ha status` here to bring ha.toml up to date, or fix it",
                config.secondary
            )))
        }
    }
    let full_page_writes = new_primary(&config, &password, opts.connect_timeout)?;
    let server = Server::of(&config, opts.timeout);
    let has_cluster = config.pg_data.join("PG_VERSION").exists();
    let control = if has_cluster {
        Some(
            pg::controldata(&config.pg_bin, &config.pg_data).map_err(|e| {
                step_error(
                    "reading this node's data directory",
                    e.to_string(),
                    "check pg_bin and pg_data in ha.toml",
                )
            })?,
        )
    } else {
        None
    };
    let running = server.is_running().map_err(|e| {
        step_error(
            "reading the local server's state",
            e.to_string(),
            "check pg_bin and pg_data in ha.toml",
        )
    })?;
    // A node that was a replica when it stopped (after a switchover) wrote
    // nothing of its own: it follows the new primary as it is.
    let was_replica = control
        .as_ref()
        .is_some_and(|c| c.state.contains("recovery"));
    let impossible = if was_replica {
        None
    } else {
        rewind_impossible(control.as_ref(), full_page_writes)
    };
    let mut report = RejoinReport {
        dry_run: opts.dry_run,
        plan: Vec::new(),
        method: if impossible.is_some() {
            "bootstrap"
        } else {
            "rewind"
        },
        diverged_at: None,
        lost_wal_bytes: None,
        bootstrap: None,
        audited: false,
    };
    if running {
        report.plan.push("stop the local server".into());
    }
    match &impossible {
        Some(why) => report.plan.push(format!(
            "pg_rewind cannot be used: {why}; instead a fresh bootstrap from {} (the data directory is kept beside it as .old-<time>)",
            config.primary
        )),
        None if was_replica => {
            report.method = "follow";
            report.plan.push(
                "this node was a replica when it stopped: it follows the new primary without pg_rewind".into(),
            );
            report.plan.push(standby_plan(&config));
        }
        None => {
            report.plan.push(format!(
                "pg_rewind --dry-run from {}: where the histories diverged; if this node wrote WAL after that, stop unless --force",
                config.primary
            ));
            report.plan.push(
                "pg_rewind, keeping this node's postgresql.conf, pg_hba.conf, pg_ident.conf and postgresql.auto.conf".into(),
            );
            report.plan.push(standby_plan(&config));
        }
    }
    if opts.dry_run {
        return Ok(report);
    }
    if running {
        obs.step("stopping the local server");
        server.stop().map_err(|e| {
            step_error(
                "stopping the local server",
                e.to_string(),
                "stop it by hand, then run `keyferry ha rejoin` again",
            )
        })?;
    }
    if let Some(why) = impossible {
        obs.step(&format!(
            "pg_rewind cannot be used ({why}): bootstrapping instead"
        ));
        report.bootstrap = Some(fallback(home, opts, &password, obs)?);
        return Ok(report);
    }
    rewind_and_follow(
        home,
        &config,
        &server,
        &password,
        control,
        was_replica,
        opts,
        obs,
        report,
    )
}

fn standby_plan(config: &HaConfig) -> String {
    format!(
        "standby configuration (standby.signal, primary_conninfo to {} with the password file {}), start, wait until it streams",
        config.primary,
        passfile_path(config).display()
    )
}

/// The new primary runs as one; returns its `full_page_writes`.
fn new_primary(config: &HaConfig, password: &Zeroizing<String>, timeout: Duration) -> Result<bool> {
    let target = config.primary.to_string();
    let fail = |e: PgError| {
        step_error(
            "reaching the new primary",
            e.to_string(),
            "check that the primary in ha.toml runs and `keyferry ha check`",
        )
    };
    let mut client = primary_sql(config, password, timeout).map_err(fail)?;
    if pg::in_recovery(&mut client, &target).map_err(fail)? {
        return Err(Error::Refused(format!(
            "{target} (the primary in ha.toml) runs as a replica: there is no primary to rejoin; fail over first (`keyferry ha failover` on that node)"
        )));
    }
    let row = client
        .query_one("SELECT current_setting('full_page_writes')", &[])
        .map_err(|e| fail(pg::from_postgres(&target, e)))?;
    Ok(row.get::<_, String>(0) == "on")
}

fn fallback(
    home: &Home,
    opts: &RejoinOptions,
    password: &Zeroizing<String>,
    obs: &mut dyn Observer,
) -> Result<BootstrapReport> {
    bootstrap::bootstrap(
        home,
        &BootstrapOptions {
            mode: Mode::Run,
            password: opts.password.clone(),
            known_password: Some(password.clone()),
            // The operator asked for this node's role to go: its data is
            // kept aside, never deleted.
            yes: true,
            slot: opts.slot.clone(),
            connect_timeout: opts.connect_timeout,
            timeout: opts.timeout,
        },
        obs,
    )
}

/// The `source` connection string of `pg_rewind`: the new primary, as the
/// replication user, the password in the password file.
fn source_conninfo(config: &HaConfig) -> String {
    let passfile = passfile_path(config);
    let up = crate::pg::standby::Upstream {
        host: config.primary.to_string(),
        port: config.pg_port,
        user: &config.replication_user,
        application_name: "keyferry pg_rewind",
        passfile: &passfile,
        slot: None,
    };
    format!(
        "{} dbname='{}'",
        crate::pg::standby::primary_conninfo(&up),
        pg::MAINTENANCE_DB
    )
}

/// Whether this node's configuration sets a `restore_command`, so
/// `pg_rewind` can fetch WAL it lacks from the archive.
fn has_restore_command(data: &Path) -> bool {
    ["postgresql.conf", "postgresql.auto.conf"]
        .iter()
        .any(|name| {
            datafile::read_text(&data.join(name)).is_ok_and(|text| {
                let text = text.unwrap_or_default();
                text.lines().any(|l| {
                    let l = l.trim_start();
                    l.starts_with("restore_command")
                        && l.split_once('=').is_some_and(|(_, v)| {
                            let v = v.split('#').next().unwrap_or("").trim();
                            !v.is_empty() && v != "''"
                        })
                })
            })
        })
}

#[allow(clippy::too_many_arguments)]
fn rewind_and_follow(
    home: &Home,
    config: &HaConfig,
    server: &Server,
    password: &Zeroizing<String>,
    control: Option<pg::ControlData>,
    was_replica: bool,
    opts: &RejoinOptions,
    obs: &mut dyn Observer,
    mut report: RejoinReport,
) -> Result<RejoinReport> {
    let mut node = home.open(false)?;
    let details = crate::ops::details([
        ("primary", Value::from(config.primary.to_string())),
        ("node", Value::from(config.node.clone())),
    ]);
    let mut change = node.begin(ACTION, details)?;
    let owner_ref = owner_reference(config);
    write_passfile(&mut change, config, config.primary, password, &owner_ref)?;
    if !was_replica {
        rewind_if_needed(config, control, &mut change, &mut report, opts, obs)?;
    }
    if report.method == "bootstrap" {
        drop(change);
        drop(node);
        report.bootstrap = Some(fallback(home, opts, password, obs)?);
        return Ok(report);
    }
    follow(home, config, server, password, change, opts, obs, report)
}

/// Steps 3 and 4: the dry run, the divergence, the rewind. Sets the
/// report's method to `bootstrap` when `pg_rewind` cannot be used.
fn rewind_if_needed(
    config: &HaConfig,
    control: Option<pg::ControlData>,
    change: &mut Change<'_>,
    report: &mut RejoinReport,
    opts: &RejoinOptions,
    obs: &mut dyn Observer,
) -> Result<()> {
    let source = source_conninfo(config);
    let restore = has_restore_command(&config.pg_data);
    obs.step("pg_rewind --dry-run: where did the two histories diverge?");
    let dry = match rewind::run(&config.pg_bin, &config.pg_data, &source, true, restore) {
        Ok(d) => d,
        Err(e) => {
            obs.step(&format!(
                "pg_rewind cannot be used ({e}): bootstrapping instead"
            ));
            report.method = "bootstrap";
            return Ok(());
        }
    };
    if let Rewind::Diverged { at, timeline } = dry {
        report.diverged_at = Some(format!("{at} on timeline {timeline}"));
        // Read again now that the server is stopped: its shutdown
        // checkpoint is the end of what it wrote.
        let end = pg::controldata(&config.pg_bin, &config.pg_data)
            .ok()
            .or(control)
            .and_then(|c| c.checkpoint_lsn);
        let ahead = end.map(|e| e.0.saturating_sub(at.0)).unwrap_or(0);
        report.lost_wal_bytes = Some(ahead);
        if ahead > 0 && !opts.force {
            return Err(Error::Refused(format!(
                "this node wrote {} of WAL after the histories diverged at {at} (timeline {timeline}): a rewind loses those transactions. \
                 The server stays stopped. `keyferry ha rejoin --force` rewinds anyway; `keyferry ha bootstrap` instead keeps this data directory aside",
                human_bytes(ahead)
            )));
        }
        let own: Vec<(String, Option<Kept>)> = OWN_FILES
            .iter()
            .map(|n| {
                (
                    (*n).to_owned(),
                    datafile::read(&config.pg_data.join(n)).ok().flatten(),
                )
            })
            .collect();
        obs.step(&format!(
            "pg_rewind from {} (diverged at {at})",
            config.primary
        ));
        change.irreversible("pg_rewind", Vec::new(), |progress| {
            progress.set("diverged_at", at.to_string());
            progress.set("lost_wal_bytes", ahead);
            rewind::run(&config.pg_bin, &config.pg_data, &source, false, restore).map_err(|e| {
                step_error(
                    "pg_rewind",
                    e.to_string(),
                    "read the message; run `keyferry ha rejoin` again, or `keyferry ha bootstrap` (which keeps the data directory aside)",
                )
            })?;
            for (name, kept) in &own {
                let path = config.pg_data.join(name);
                if let Some(kept) = kept {
                    datafile::put(&path, kept, &config.pg_data)
                        .map_err(Error::io(format!("cannot put back {}", path.display())))?;
                } else if name == autoconf::FILE {
                    // None of its own: the one pg_rewind copied is the
                    // primary's, which must not configure this server.
                    autoconf::replace_copied(&config.pg_data, None)
                        .map_err(Error::io(format!("cannot write {}", path.display())))?;
                }
            }
            Ok(())
        })?;
    } else {
        report.method = "follow";
    }
    Ok(())
}

/// Step 5: the standby configuration, start, streaming, bookkeeping.
#[allow(clippy::too_many_arguments)]
fn follow(
    home: &Home,
    config: &HaConfig,
    server: &Server,
    password: &Zeroizing<String>,
    mut change: Change<'_>,
    opts: &RejoinOptions,
    obs: &mut dyn Observer,
    mut report: RejoinReport,
) -> Result<RejoinReport> {
    obs.step("configuring this node as a replica of the new primary");
    if let Some(slot) = &opts.slot {
        bootstrap::ensure_slot(config, password, slot, opts.connect_timeout)?;
    }
    write_standby(config, config.primary, opts.slot.as_deref())?;
    obs.step("starting the replica");
    bootstrap::start_step(
        &mut change,
        server,
        "read the server's log, fix the cause, then run `keyferry ha rejoin` again",
    )?;
    obs.step("waiting until the new primary sees this node streaming");
    let caught_up = wait_caught_up(config, password, opts.connect_timeout, opts.timeout)?;
    let dropped = drop_stale_slots(config, opts.connect_timeout);
    if !dropped.is_empty() {
        obs.step(&format!(
            "dropped the replication slots this node kept as primary (they would retain WAL for nobody): {}",
            dropped.join(", ")
        ));
    }
    roles::clear_demoted(&mut change, home, config)?;
    change.set_detail("method", report.method);
    change.set_detail("diverged_at", Value::from(report.diverged_at.clone()));
    change.set_detail("lost_wal_bytes", Value::from(report.lost_wal_bytes));
    change.set_detail("caught_up_to", caught_up);
    report.audited = change.finish()?.audited;
    Ok(report)
}

/// Drops the inactive physical slots this node kept from its time as
/// primary (best effort: `ha status` and `ha check` show any left).
fn drop_stale_slots(config: &HaConfig, timeout: Duration) -> Vec<String> {
    let Ok((mut client, _)) = roles::local_admin(config, timeout) else {
        return Vec::new();
    };
    let names: Vec<String> = client
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical' AND NOT active",
            &[],
        )
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    drop(client);
    names
        .into_iter()
        .filter(|n| roles::drop_local_slot(config, n, timeout).is_ok_and(|d| d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(hints: bool, checksums: bool) -> pg::ControlData {
        pg::ControlData {
            state: "shut down".into(),
            system_identifier: None,
            timeline: Some(1),
            redo_wal_file: None,
            checkpoint_lsn: None,
            wal_log_hints: hints,
            checksums,
        }
    }

    #[test]
    fn rewind_needs_hints_or_checksums_and_full_page_writes() {
        assert_eq!(rewind_impossible(Some(&control(true, false)), true), None);
        assert_eq!(rewind_impossible(Some(&control(false, true)), true), None);
        assert!(rewind_impossible(Some(&control(false, false)), true)
            .unwrap()
            .contains("wal_log_hints"));
        assert!(rewind_impossible(Some(&control(true, true)), false)
            .unwrap()
            .contains("full_page_writes"));
        assert!(rewind_impossible(None, true).is_some());
    }

    #[test]
    fn a_restore_command_is_seen_only_when_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("postgresql.conf"),
            "#restore_command = 'cp'\n",
        )
        .unwrap();
        assert!(!has_restore_command(dir.path()));
        std::fs::write(
            dir.path().join("postgresql.auto.conf"),
            "restore_command = 'cp /archive/%f %p'\n",
        )
        .unwrap();
        assert!(has_restore_command(dir.path()));
    }
}
