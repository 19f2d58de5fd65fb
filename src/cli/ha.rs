//! `keyferry ha …` and `keyferry hba …`: the HA pair's commands. Each
//! handler calls one `ops::ha` function and prints its report.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{print_json, printable, PasswordArgs};
use crate::error::{Error, Result};
use crate::fmt::human_bytes;
use crate::ha::config::ServiceControl;
use crate::ha::hba::HbaMethod;
use crate::ha::PeerAddr;
use crate::keyring::Fingerprint;
use crate::ops::ha::check::{self, CheckOptions, Status};
use crate::ops::ha::firewall;
use crate::ops::ha::hba::{
    self, HbaChangeReport, HbaTarget, OtherRule, ServerAccess, ServerOutcome,
};
use crate::ops::ha::status::{self, StatusOptions, StatusReport, Verdict};
use crate::ops::ha::{self as ops_ha, InitOptions};
use crate::ops::Home;

/// What every command that reaches the pair takes: the connection timeout,
/// `--json`, and the replication user's password source.
#[derive(Args, Debug)]
pub(crate) struct PeerArgs {
    /// Timeout of every connection attempt, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TIMEOUT_MS)]
    timeout_ms: u64,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
    /// The replication user's password. Without a source: the libpq password
    /// file (PGPASSFILE or ~/.pgpass) if it has an entry, else a prompt.
    #[command(flatten)]
    pub password: PasswordArgs,
}

impl PeerArgs {
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Default timeout of every connection attempt, in milliseconds.
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 3000;

#[derive(Subcommand, Debug)]
pub(crate) enum HaCommand {
    /// Describe the pair in ha.toml (node name, addresses, ports, directories).
    Init(InitArgs),
    /// Print ha.toml.
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Preflight: ports, replication connection, WAL settings, versions, data dir, archive, disk, keys.
    Check(CheckArgs),
    /// Each node's role, replication, lag, slots, kept data dirs, archive; a verdict (exit 0 healthy, 9 degraded, 10 down, 14 split brain, 15 unknown).
    Status(StatusArgs),
    /// The WAL archive directory.
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Make this node (the secondary) a streaming replica of the primary from
    /// a base backup; the old data directory is kept beside the new one.
    Bootstrap(super::bootstrap::BootstrapArgs),
    /// On the old primary after a failover: become a replica of the new
    /// primary (pg_rewind when possible, else a bootstrap keeping the data).
    Rejoin(super::bootstrap::RejoinArgs),
    /// Planned change of roles, run on the primary: stop it cleanly, promote the
    /// replica once it replayed everything, make this node its replica.
    Switchover(super::roles::SwitchoverArgs),
    /// Promote this node (the replica) while the primary is down; refused while
    /// the primary accepts writes unless --force.
    Failover(super::roles::FailoverArgs),
    /// Before the local server starts (systemd ExecStartPre=): refuse to start
    /// a demoted or outranked node as primary (exit 13).
    Guard(super::roles::GuardArgs),
    /// Start the local server through ha.toml's [service], after the guard.
    Start(super::roles::GuardArgs),
    /// Stop the local server through ha.toml's [service] (fast shutdown).
    Stop(super::roles::GuardArgs),
    /// Print the connection string an application uses to follow the primary
    /// after a switchover or failover (both nodes, writable one chosen; no password).
    Connstr(ConnstrArgs),
    /// Open this node's PostgreSQL and web-services ports to the other node only
    /// (Windows Firewall; firewalld, ufw or nftables, whichever is active).
    Firewall(FirewallArgs),
    /// Make this node's server ready for the pair: the replication role with its
    /// rights and a `keyferry` schema, the replication settings (ALTER SYSTEM).
    Prepare(PrepareArgs),
}

#[derive(Args, Debug)]
pub(crate) struct FirewallArgs {
    /// Print the commands that would run; change nothing (the firewall is
    /// still probed and listed).
    #[arg(long)]
    dry_run: bool,
    /// Remove keyferry's rules (and nothing else) instead of adding them.
    #[arg(long)]
    remove: bool,
    /// Machine-readable report.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct PrepareArgs {
    /// List every statement and pg_hba.conf line; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Restart the server when a setting written waits for a restart.
    #[arg(long)]
    restart: bool,
    /// Timeout of the connection to the local server, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TIMEOUT_MS)]
    timeout_ms: u64,
    /// The replication role's password (without: a new role gets none, an
    /// existing one keeps its own).
    #[command(flatten)]
    password: super::rewrap::DbPassword,
}

#[derive(Args, Debug)]
pub(crate) struct ConnstrArgs {
    /// The client's dialect: libpq, uri, npgsql (appsettings.json) or jdbc.
    #[arg(long, value_name = "FORMAT", default_value = "libpq")]
    format: crate::ha::connstr::Format,
    /// The application's database.
    #[arg(long, value_name = "NAME")]
    database: Option<String>,
    /// The application's role.
    #[arg(long, value_name = "ROLE")]
    user: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct InitArgs {
    /// This node's name (shown in status and audit records).
    #[arg(long, value_name = "NAME")]
    node: String,
    /// IP address of the node that runs as primary (no host names).
    #[arg(long, value_name = "IP", value_parser = PeerAddr::parse)]
    primary: PeerAddr,
    /// IP address of the node that runs as replica (no host names).
    #[arg(long, value_name = "IP", value_parser = PeerAddr::parse)]
    secondary: PeerAddr,
    /// PostgreSQL port on both nodes [default: 5432].
    #[arg(long, value_name = "PORT")]
    pg_port: Option<u16>,
    /// Web services port on both nodes [default: 6500].
    #[arg(long, value_name = "PORT")]
    web_port: Option<u16>,
    /// Directory of pg_ctl, pg_basebackup, pg_controldata.
    #[arg(value_parser = crate::cli::PathArg, long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// PostgreSQL data directory.
    #[arg(value_parser = crate::cli::PathArg, long, value_name = "DIR")]
    pg_data: Option<PathBuf>,
    /// WAL archive directory (archive_command's target), if the pair archives WAL.
    #[arg(value_parser = crate::cli::PathArg, long, value_name = "DIR")]
    archive_dir: Option<PathBuf>,
    /// This node's PostgreSQL Unix socket directory, used by `ha status` when the server's postmaster.pid cannot say.
    #[arg(value_parser = crate::cli::PathArg, long, value_name = "DIR")]
    pg_socket_dir: Option<PathBuf>,
    /// The application's appsettings.json.
    #[arg(value_parser = crate::cli::PathArg, long, value_name = "PATH")]
    appsettings: Option<PathBuf>,
    /// Role the replica streams as [default: repuser].
    #[arg(long, value_name = "ROLE")]
    replication_user: Option<String>,
    /// How this node starts and stops its server: pg_ctl, systemd:UNIT or
    /// windows_service:NAME (then --pg-bin and --pg-data may be left out:
    /// read from the service) [default: pg_ctl].
    #[arg(long, value_name = "METHOD", value_parser = ServiceControl::parse)]
    service: Option<ServiceControl>,
    /// Replace an existing ha.toml (the old one is kept in backups/; its
    /// generation and this node's demoted mark carry over).
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Timeout of every connection attempt, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TIMEOUT_MS)]
    timeout_ms: u64,
    /// The other node's keyring fingerprint (`keyferry keys fingerprint` there).
    #[arg(long, value_name = "kf1:…")]
    peer_fingerprint: Option<Fingerprint>,
    /// The replication user's password. Without a source: the libpq password
    /// file (PGPASSFILE or ~/.pgpass) if it has an entry, else a prompt.
    #[command(flatten)]
    password: PasswordArgs,
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
    /// Refresh every SECONDS seconds (redrawn in place on a terminal) until Ctrl-C.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    watch: Option<u64>,
    /// Timeout of every connection attempt and statement, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TIMEOUT_MS)]
    timeout_ms: u64,
    /// Warn about a replication slot that retains more WAL than this (B, KiB, MiB, GiB, TiB).
    #[arg(long, value_name = "SIZE", default_value = status::DEFAULT_SLOT_WARN, value_parser = crate::fmt::parse_bytes)]
    slot_warn: u64,
    /// A replica further behind than this many seconds makes the pair degraded.
    #[arg(long, value_name = "SECONDS", default_value_t = status::DEFAULT_LAG_WARN_SECONDS)]
    lag_warn: u64,
    /// The replication user's password (for the other node). Without a source: the libpq
    /// password file if it has an entry, else a prompt on a terminal, else none.
    #[command(flatten)]
    password: PasswordArgs,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ArchiveCommand {
    /// Remove WAL archive files (segments, .history, .backup, .partial) and nothing else.
    Clean {
        /// List what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// The archive directory [default: archive_dir from ha.toml].
        #[arg(value_parser = crate::cli::PathArg, long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Also remove what a live archive still needs (the newest base
        /// backup and the WAL after it, what a replica may still fetch);
        /// needs --force.
        #[arg(long)]
        all: bool,
        /// Confirms --all.
        #[arg(long, requires = "all")]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum HbaCommand {
    /// Add (or update) keyferry's two lines for a peer, check them with PostgreSQL, reload.
    Ensure {
        /// The other node's IP address.
        #[arg(long, value_name = "IP", value_parser = PeerAddr::parse)]
        peer: PeerAddr,
        /// Authentication method of the two lines.
        #[arg(long, value_name = "METHOD", value_enum, default_value_t = HbaMethod::default())]
        method: HbaMethod,
        /// Move hand-written lines equivalent to keyferry's two into keyferry's block (without it they are left alone and nothing changes).
        #[arg(long)]
        adopt: bool,
        #[command(flatten)]
        target: TargetArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove keyferry's lines for a peer (nothing else), check, reload.
    Remove {
        /// The peer whose block goes.
        #[arg(long, value_name = "IP", value_parser = PeerAddr::parse)]
        peer: PeerAddr,
        #[command(flatten)]
        target: TargetArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List keyferry's blocks and warn about other lines that match the peers.
    Show {
        /// Also look for lines matching this address.
        #[arg(long, value_name = "IP", value_parser = PeerAddr::parse)]
        peer: Option<PeerAddr>,
        #[command(flatten)]
        target: TargetArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Which `pg_hba.conf`, which role, and how to reach the local server.
#[derive(Args, Debug)]
pub(crate) struct TargetArgs {
    /// The pg_hba.conf [default: <pg_data>/pg_hba.conf from ha.toml].
    #[arg(value_parser = crate::cli::PathArg, long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Role of the replication line [default: replication_user from ha.toml, else repuser].
    #[arg(long, value_name = "ROLE")]
    replication_user: Option<String>,
    /// Do not contact the local server: write unchecked, reload by hand.
    #[arg(long)]
    offline: bool,
    /// Reach the local server over TCP at this host instead of its Unix socket.
    #[arg(long, value_name = "HOST", conflicts_with = "pg_socket_dir")]
    pg_host: Option<String>,
    /// The local server's Unix socket directory [default: the running server's, from its postmaster.pid; else /var/run/postgresql, then /tmp].
    #[arg(value_parser = crate::cli::PathArg, long, value_name = "DIR")]
    pg_socket_dir: Option<PathBuf>,
    /// The local server's port [default: the running server's, from its postmaster.pid; else pg_port from ha.toml, else 5432].
    #[arg(long, value_name = "PORT")]
    pg_port: Option<u16>,
    /// Superuser to check and reload as (password, if asked, from PGPASSFILE or ~/.pgpass).
    #[arg(long, value_name = "ROLE")]
    pg_user: Option<String>,
    /// Timeout of the connection attempt, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TIMEOUT_MS)]
    timeout_ms: u64,
    /// Edit the file even though it does not read as a pg_hba.conf, or (with
    /// no server to check it) is not named like one; let in a peer address
    /// that is neither node of the pair in ha.toml.
    #[arg(long)]
    force: bool,
}

impl TargetArgs {
    fn target(self) -> HbaTarget {
        HbaTarget {
            file: self.file,
            replication_user: self.replication_user,
            server: ServerAccess {
                offline: self.offline,
                host: self.pg_host,
                socket_dir: self.pg_socket_dir,
                port: self.pg_port,
                user: self.pg_user,
                timeout: Duration::from_millis(self.timeout_ms),
            },
            force: self.force,
            dry_run: false,
        }
    }
}

pub(crate) fn not_audited_note(audited: bool) {
    if !audited {
        eprintln!("note: not audited: this node has no keyring yet (`keyferry import` on a secondary, `keyferry init` on the primary)");
    }
}

fn run_firewall(home: &Home, a: FirewallArgs) -> Result<()> {
    let report = firewall::firewall(
        home,
        firewall::FirewallOptions {
            dry_run: a.dry_run,
            remove: a.remove,
        },
    )?;
    if a.json {
        return print_json(&report);
    }
    let Some(backend) = report.backend else {
        println!(
            "no active firewall found (firewalld, ufw, nftables; ufw and nft answer only root): \
             nothing was changed; to open the ports to {} only, run the commands for your firewall:",
            report.peer
        );
        for m in &report.manual {
            println!("{}:", m.backend.as_str());
            for c in &m.commands {
                println!("  {c}");
            }
        }
        return Ok(());
    };
    for r in &report.rules {
        println!("{}: {} ({} port {})", r.name, r.state, r.service, r.port);
    }
    let verb = if report.dry_run { "would run" } else { "ran" };
    for c in &report.commands {
        println!("{verb}: {c}");
    }
    if report.commands.is_empty() {
        println!("{}: nothing to change", backend.as_str());
    } else if !report.dry_run {
        not_audited_note(report.audited);
    }
    Ok(())
}

pub fn run(home: &Home, cmd: HaCommand) -> Result<()> {
    match cmd {
        HaCommand::Init(a) => {
            let report = ops_ha::init(
                home,
                &InitOptions {
                    node: a.node,
                    primary: a.primary,
                    secondary: a.secondary,
                    pg_port: a.pg_port,
                    web_port: a.web_port,
                    pg_bin: a.pg_bin,
                    pg_data: a.pg_data,
                    archive_dir: a.archive_dir,
                    pg_socket_dir: a.pg_socket_dir,
                    appsettings: a.appsettings,
                    replication_user: a.replication_user,
                    service: a.service,
                    force: a.force,
                },
            )?;
            println!("wrote {}", report.path.display());
            if let Some(b) = &report.backup {
                println!("previous version kept as {}", b.display());
            }
            not_audited_note(report.audited);
            Ok(())
        }
        HaCommand::Bootstrap(a) => super::bootstrap::run(home, a),
        HaCommand::Rejoin(a) => super::bootstrap::run_rejoin(home, a),
        HaCommand::Switchover(a) => super::roles::run_switchover(home, a),
        HaCommand::Failover(a) => super::roles::run_failover(home, a),
        HaCommand::Guard(a) => super::roles::run_guard(home, a),
        HaCommand::Start(a) => super::roles::run_start(home, a),
        HaCommand::Stop(a) => super::roles::run_stop(home, a),
        HaCommand::Prepare(a) => {
            let pw = a.password.read()?;
            let r = crate::ops::ha::prepare::prepare(
                home,
                pw.as_deref().map(|p| &p[..]),
                crate::ops::ha::prepare::PrepareOptions {
                    dry_run: a.dry_run,
                    restart: a.restart,
                    timeout: Duration::from_millis(a.timeout_ms),
                },
            )?;
            let verb = if r.dry_run { "would run" } else { "ran" };
            if r.statements.is_empty() && r.hba.iter().all(|h| !h.changed) && !r.restarted {
                println!("{}: nothing to change", r.server);
            }
            for s in &r.statements {
                println!("{verb}: {};   -- {}", s.sql, s.why);
            }
            let add = if r.dry_run {
                "would add to"
            } else {
                "added to"
            };
            for h in &r.hba {
                for line in &h.added {
                    println!("{add} {}: {line}", h.file.display());
                }
                if let Some(b) = &h.backup {
                    println!("previous version kept as {}", b.display());
                }
            }
            if r.restarted {
                println!("restarted the server");
            }
            if !r.restart_for.is_empty() {
                println!(
                    "restart the server for {} to take effect (`keyferry ha prepare --restart`)",
                    r.restart_for.join(", ")
                );
            }
            if !r.dry_run && (!r.statements.is_empty() || r.restarted) {
                not_audited_note(r.audited);
            }
            Ok(())
        }
        HaCommand::Connstr(a) => {
            let config = ops_ha::require_config(home)?;
            println!(
                "{}",
                crate::ha::connstr::render(
                    &config,
                    a.format,
                    &crate::ha::connstr::Target {
                        database: a.database.as_deref(),
                        user: a.user.as_deref(),
                    },
                )
            );
            Ok(())
        }
        HaCommand::Show { json } => {
            let report = ops_ha::show(home)?;
            if json {
                return print_json(&report);
            }
            println!("# {}", report.path.display());
            print!("{}", report.toml);
            Ok(())
        }
        HaCommand::Check(a) => {
            let report = check::check(
                home,
                &CheckOptions {
                    timeout: Duration::from_millis(a.timeout_ms),
                    password: a.password.source(),
                    peer_fingerprint: a.peer_fingerprint,
                },
            )?;
            if a.json {
                print_json(&report)?;
            } else {
                for c in &report.checks {
                    // Messages quote servers (slot names, their errors).
                    let fix = c
                        .fix
                        .as_deref()
                        .map(|f| format!(" — fix: {}", printable(f)))
                        .unwrap_or_default();
                    println!(
                        "{:<4} {:<18} {}{fix}",
                        c.status.as_str(),
                        c.name,
                        printable(&c.message)
                    );
                }
            }
            let failed = report.failed();
            if failed > 0 {
                return Err(Error::Preflight {
                    failed,
                    total: report.checks.len(),
                });
            }
            if !a.json {
                let warned = report
                    .checks
                    .iter()
                    .filter(|c| c.status == Status::Warn)
                    .count();
                println!(
                    "preflight passed ({} checks, {warned} warnings)",
                    report.checks.len()
                );
            }
            Ok(())
        }
        HaCommand::Status(a) => run_status(home, a),
        HaCommand::Firewall(a) => run_firewall(home, a),
        HaCommand::Archive(ArchiveCommand::Clean {
            dry_run,
            dir,
            json,
            all,
            force,
        }) => {
            let scope = match (all, force) {
                (false, _) => ops_ha::CleanScope::Unneeded,
                (true, true) => ops_ha::CleanScope::Everything,
                (true, false) if dry_run => ops_ha::CleanScope::Everything,
                (true, false) => return Err(Error::Usage(
                    "--all also removes the newest base backup's WAL and what a replica may still \
                         need from the archive: add --force if that is what you want"
                        .into(),
                )),
            };
            let report = ops_ha::archive_clean(home, dir, dry_run, scope)?;
            if json {
                return print_json(&report);
            }
            if let Some(why) = &report.live {
                let kept = match &report.keep_from {
                    Some(from) => format!(
                        "{} files still needed are kept (from segment {from} on, the newest .backup, the history files)",
                        report.needed
                    ),
                    None => "--all --force: everything goes, including what it still needs".to_owned(),
                };
                println!("live archive: {why}; {kept}");
            }
            if all && !report.dry_run && !report.files.is_empty() {
                eprintln!(
                    "warning: the archive no longer holds the WAL to restore the last base backup \
                     or to let a replica catch up from it: take a new base backup"
                );
            }
            let count = report.files.len();
            if report.dry_run {
                for f in &report.files {
                    println!(
                        "would remove {} ({}, {})",
                        f.path.display(),
                        f.kind,
                        human_bytes(f.bytes)
                    );
                }
                println!(
                    "dry run: {count} WAL archive files ({}) would be removed from {}; {} other entries kept",
                    human_bytes(report.bytes),
                    report.dir.display(),
                    report.kept
                );
            } else {
                println!(
                    "removed {count} WAL archive files ({}) from {}; {} other entries kept",
                    human_bytes(report.bytes),
                    report.dir.display(),
                    report.kept
                );
                for s in &report.skipped {
                    println!("left alone (changed while cleaning): {}", s.display());
                }
                if count > 0 {
                    not_audited_note(report.audited);
                }
            }
            Ok(())
        }
    }
}

/// `ha status`: one report, or with `--watch` one every N seconds until
/// Ctrl-C (which ends the process the default way: nothing is held that
/// needs undoing, and the terminal is not put in any special mode).
fn run_status(home: &Home, a: StatusArgs) -> Result<()> {
    let opts = StatusOptions {
        timeout: Duration::from_millis(a.timeout_ms),
        slot_warn_bytes: a.slot_warn,
        lag_warn_seconds: a.lag_warn,
    };
    let source = a.password.source();
    let Some(every) = a.watch else {
        let report = status::status(home, source.as_ref(), &opts)?;
        print!("{}", render_status(&report, a.json)?);
        return match report.verdict {
            Verdict::Healthy => Ok(()),
            Verdict::Degraded => Err(Error::Degraded {
                summary: report.summary,
            }),
            Verdict::Down => Err(Error::Down {
                summary: report.summary,
            }),
            Verdict::SplitBrain => Err(Error::SplitBrain {
                summary: report.summary,
            }),
            Verdict::Unknown => Err(Error::Unknown {
                summary: report.summary,
            }),
        };
    };
    use std::io::{IsTerminal, Write};
    let watch = status::Watch::new(home, source.as_ref())?;
    let terminal = std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        let text = render_status(&watch.report(home, &opts), a.json)?;
        let mut out = std::io::stdout().lock();
        let written = if terminal {
            // Home the cursor and clear the screen, then draw: plain ANSI.
            write!(out, "\x1b[H\x1b[2J{text}")
        } else if first {
            write!(out, "{text}")
        } else {
            write!(out, "\n{text}")
        };
        written
            .and_then(|()| out.flush())
            .map_err(Error::io("cannot write the status report"))?;
        drop(out);
        first = false;
        std::thread::sleep(Duration::from_secs(every));
    }
}

/// The report as text (or JSON), ending in a newline. Everything a server
/// or the other host supplied goes through [`printable`].
pub(crate) fn render_status(r: &StatusReport, json: bool) -> Result<String> {
    use std::fmt::Write;
    if json {
        let text = serde_json::to_string_pretty(r)
            .map_err(|e| Error::Refused(format!("cannot render JSON: {e}")))?;
        return Ok(format!("{text}\n"));
    }
    let p = |s: &Option<String>| s.as_deref().map_or("-".to_owned(), printable);
    let mut o = String::new();
    for n in &r.nodes {
        let me = if n.this_node { " (this node)" } else { "" };
        let _ = write!(
            o,
            "{:<9} {:<15} {}",
            printable(n.name),
            n.address,
            n.role_text
        );
        match n.role {
            Some(crate::ha::Role::RunningPrimary) => {
                let _ = write!(
                    o,
                    ", timeline {}, lsn {}",
                    n.timeline.map_or("-".into(), |t| t.to_string()),
                    p(&n.current_lsn)
                );
            }
            Some(crate::ha::Role::RunningReplica) => {
                let _ = write!(
                    o,
                    ", timeline {}, receive {}, replay {}, upstream {}",
                    n.timeline.map_or("-".into(), |t| t.to_string()),
                    p(&n.receive_lsn),
                    p(&n.replay_lsn),
                    p(&n.upstream)
                );
            }
            Some(crate::ha::Role::Unreachable) => {
                let _ = write!(
                    o,
                    " (web-services port {} {})",
                    n.web_port,
                    if n.web_port_open {
                        "answers: PostgreSQL is down, the host is up"
                    } else {
                        "does not answer either: host down or cut off"
                    }
                );
            }
            _ => {}
        }
        let _ = write!(o, "{me}");
        if let Some(g) = n.generation {
            let _ = write!(o, "; generation {g}");
        }
        if let Some(g) = n.ha_toml_generation {
            let _ = write!(o, " (ha.toml: generation {g})");
        }
        let _ = writeln!(o);
        if let Some(e) = &n.error {
            let _ = writeln!(o, "          cannot be read: {}", printable(e));
        }
    }
    let rep = &r.replication;
    let secs = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.1} s"));
    let _ = writeln!(
        o,
        "replication {} (state {}, sync {}), lag {}, {} (primary's replay_lag {}, replica's last replay {})",
        if rep.active { "Active" } else { "not active" },
        p(&rep.state),
        p(&rep.sync_state),
        rep.lag_bytes.map_or("-".to_owned(), human_bytes),
        secs(rep.lag_seconds),
        secs(rep.replay_lag_seconds),
        secs(rep.replica_replay_age_seconds),
    );
    for s in &r.slots {
        let _ = writeln!(
            o,
            "slot {} ({}, {}): retains {}{}",
            printable(&s.name),
            printable(&s.slot_type),
            if s.active { "active" } else { "inactive" },
            s.retained_bytes.map_or("-".to_owned(), human_bytes),
            if s.over_threshold {
                format!(
                    " — warning: over {}; an abandoned slot fills the primary's disk: SELECT pg_drop_replication_slot('{}') on the primary if nothing uses it",
                    human_bytes(r.slot_warn_bytes),
                    printable(&s.name)
                )
            } else {
                String::new()
            }
        );
    }
    for d in &r.old_data_dirs {
        let _ = writeln!(
            o,
            "old data directory {}",
            printable(&status::describe_old_dir(d))
        );
    }
    if let Some(a) = &r.archive {
        let _ = writeln!(
            o,
            "archive {}: {} WAL files, {}",
            crate::fmt::printable_path(&a.dir),
            a.wal_files,
            human_bytes(a.bytes)
        );
    }
    if let Some(keys) = &r.keys {
        let _ = writeln!(o, "{}", printable(keys));
    }
    for n in &r.notes {
        let _ = writeln!(o, "note: {}", printable(n));
    }
    let _ = writeln!(o, "verdict: {}", printable(&r.summary));
    Ok(o)
}

fn print_other_rules(peer: &str, rules: &[OtherRule]) {
    for r in rules {
        let order = if r.before_block {
            "comes before keyferry's block, so PostgreSQL uses it first"
        } else {
            "comes after keyferry's block"
        };
        eprintln!(
            "warning: line {} also matches {peer} ({} match, {order}): {}",
            r.line, r.coverage, r.text
        );
    }
}

fn print_change(report: &HbaChangeReport, verb: &str) {
    let lines = report
        .equivalent_lines
        .iter()
        .map(|e| e.line.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if !report.changed && !report.equivalent_lines.is_empty() {
        println!(
            "{}: {} already allowed by lines {lines}; nothing changed (--adopt moves them into keyferry's block)",
            report.file.display(),
            report.peer
        );
        for e in &report.equivalent_lines {
            println!("    line {}: {}", e.line, e.text);
        }
    } else if !report.changed {
        println!(
            "{}: no change for {} (nothing written)",
            report.file.display(),
            report.peer
        );
    } else {
        println!(
            "{}: {verb} keyferry's block for {}",
            report.file.display(),
            report.peer
        );
        if let Some(link) = &report.link {
            println!(
                "{} leads there through a symbolic link, which was kept: the file edited is its target",
                link.display()
            );
        }
        if report.adopted {
            println!("moved hand-written lines {lines} into it");
        }
        if let Some(b) = &report.backup {
            println!("previous version kept as {}", b.display());
        }
        match &report.server {
            ServerOutcome::CheckedAndReloaded { endpoint } => {
                println!("PostgreSQL ({endpoint}) accepted the file and reloaded its configuration")
            }
            ServerOutcome::NotRunning { endpoint } => println!(
                "no server answered ({endpoint}): the file was not checked by PostgreSQL; it is read at the next start"
            ),
            ServerOutcome::Offline => println!(
                "--offline: not checked by PostgreSQL and not reloaded; run SELECT pg_reload_conf() (or pg_ctl reload) yourself"
            ),
            ServerOutcome::Unchanged => {}
        }
        not_audited_note(report.audited);
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    print_other_rules(&report.peer, &report.other_rules);
}

pub(crate) fn run_hba(home: &Home, cmd: HbaCommand) -> Result<()> {
    match cmd {
        HbaCommand::Ensure {
            peer,
            method,
            adopt,
            target,
            json,
        } => {
            let report = hba::ensure(home, peer, method, adopt, &target.target())?;
            if json {
                return print_json(&report);
            }
            print_change(&report, "wrote");
            Ok(())
        }
        HbaCommand::Remove { peer, target, json } => {
            let report = hba::remove(home, peer, &target.target())?;
            if json {
                return print_json(&report);
            }
            print_change(&report, "removed");
            Ok(())
        }
        HbaCommand::Show { peer, target, json } => {
            let report = hba::show(home, peer, &target.target())?;
            if json {
                return print_json(&report);
            }
            println!("# {}", report.file.display());
            if report.blocks.is_empty() {
                println!("no keyferry blocks");
            }
            for b in &report.blocks {
                let state = if b.current {
                    ""
                } else {
                    " (not what `hba ensure` writes: run it again)"
                };
                println!(
                    "keyferry block for {} (lines {}-{}){state}",
                    b.peer, b.begin_line, b.end_line
                );
                for rule in &b.rules {
                    println!("    {rule}");
                }
            }
            for p in &report.other_rules {
                print_other_rules(&p.peer, &p.rules);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::Role;
    use crate::ops::ha::status::{NodeStatus, Replication, SlotStatus};

    /// Every character that can forge a line or drive a terminal.
    const HAZARDS: [char; 14] = [
        '\n', '\r', '\x1b', '\x7f', '\u{9b}', '\u{202a}', '\u{202d}', '\u{202e}', '\u{2066}',
        '\u{2069}', '\u{200e}', '\u{200f}', '\u{61c}', '\u{2028}',
    ];

    fn node(role: Role, hostile: &str) -> NodeStatus {
        let h = Some(hostile.to_owned());
        NodeStatus {
            name: "primary",
            address: "10.0.0.1".into(),
            this_node: false,
            role: Some(role),
            role_text: role.to_string(),
            via: h.clone(),
            error: h.clone(),
            web_port: 443,
            web_port_open: false,
            timeline: Some(1),
            lsn: h.clone(),
            current_lsn: h.clone(),
            receive_lsn: h.clone(),
            replay_lsn: h.clone(),
            receiver_status: h.clone(),
            upstream: h,
            replay_age_seconds: None,
            generation: Some(1),
            ha_toml_generation: Some(1),
        }
    }

    /// Issue 23 item 5: what the servers and the other host said (their
    /// messages, slot names, positions, the upstream, the verdict's
    /// reasons) reaches the terminal escaped in `ha status`.
    #[test]
    fn every_string_a_server_supplied_is_escaped_in_ha_status() {
        let hostile: String = HAZARDS.iter().map(|c| format!("x{c}")).collect();
        let h = Some(hostile.clone());
        let report = StatusReport {
            verdict: Verdict::Degraded,
            summary: hostile.clone(),
            reasons: vec![hostile.clone()],
            this_node: None,
            nodes: vec![
                node(Role::RunningPrimary, &hostile),
                node(Role::RunningReplica, &hostile),
            ],
            replication: Replication {
                active: true,
                state: h.clone(),
                sync_state: h.clone(),
                upstream: h.clone(),
                standby_address: h,
                ..Default::default()
            },
            slots: vec![SlotStatus {
                name: hostile.clone(),
                slot_type: hostile.clone(),
                active: false,
                restart_lsn: Some(hostile.clone()),
                retained_bytes: Some(1 << 40),
                over_threshold: true,
            }],
            slot_warn_bytes: 1,
            lag_warn_seconds: 1,
            old_data_dirs: vec![crate::ha::kept::OldDataDir {
                path: PathBuf::from(format!("/var/lib/{hostile}")),
                kept_at: hostile.clone(),
                bytes: 1,
                complete: true,
            }],
            archive: Some(status::ArchiveStatus {
                dir: PathBuf::from(format!("/archive/{hostile}")),
                wal_files: 1,
                bytes: 1,
            }),
            notes: vec![hostile.clone()],
            keys: Some(format!("keys: {hostile}")),
        };
        let text = render_status(&report, false).unwrap();
        for c in HAZARDS.iter().filter(|c| **c != '\n') {
            assert!(!text.contains(*c), "raw {c:?} in {text:?}");
        }
        assert!(
            !text.lines().any(|l| l.starts_with('x')),
            "a forged line in {text:?}"
        );
        assert!(text.matches("x\\").count() > 10, "{text}");
    }
}
