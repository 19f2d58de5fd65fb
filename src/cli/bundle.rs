use std::path::PathBuf;

use clap::Args;

use super::{print_json, PasswordArgs};
use crate::error::Result;
use crate::fmt::{fmt_time, printable, printable_path};
use crate::kdf::KdfParams;
use crate::ops::export::{self, Expiry, ExportOptions};
use crate::ops::import::{self, ImportOptions};
use crate::ops::{inspect, Home};
use crate::secret::PasswordSource;

#[derive(Args, Debug)]
pub(crate) struct ExportArgs {
    /// The bundle file to create (never overwritten).
    #[arg(value_parser = crate::cli::PathArg, short = 'n', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// Also carry this node's ha.toml and the appsettings.json it names.
    #[arg(long)]
    with_config: bool,
    /// Write the text (base64) form, for pasting through a clipboard.
    #[arg(long)]
    armor: bool,
    /// How long the bundle stays importable: a duration (24h, 7d, 30m) or `never`.
    #[arg(long, value_name = "DURATION|never", default_value = "24h", value_parser = Expiry::parse)]
    expires: Expiry,
    /// Argon2id memory in KiB (default 65536, at least 19456).
    #[arg(long, value_name = "KIB", default_value_t = KdfParams::DEFAULT.memory_kib)]
    kdf_memory: u32,
    /// Argon2id passes (default 3, at least 2).
    #[arg(long, value_name = "T", default_value_t = KdfParams::DEFAULT.time)]
    kdf_time: u32,
    /// Argon2id lanes (default 4).
    #[arg(long, value_name = "P", default_value_t = KdfParams::DEFAULT.lanes)]
    kdf_lanes: u32,
    #[command(flatten)]
    password: PasswordArgs,
}

#[derive(Args, Debug)]
pub(crate) struct ImportArgs {
    /// The bundle file to import.
    #[arg(value_parser = crate::cli::PathArg, short = 'n', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// Take only the keys, even if the bundle carries configuration (remote service hosts).
    #[arg(long)]
    keys_only: bool,
    /// Import a bundle whose expiry has passed.
    #[arg(long)]
    allow_expired: bool,
    /// Allow bundles whose KDF needs up to this much memory, in KiB (default 1048576).
    #[arg(long, value_name = "KIB")]
    max_kdf_memory: Option<u32>,
    /// Delete the bundle file after a successful import.
    #[arg(long, conflicts_with = "dry_run")]
    delete: bool,
    /// Create ha.toml from the bundle on a node that has none.
    #[arg(long)]
    accept_config: bool,
    /// This node's name in an ha.toml created with --accept-config (default: the host name).
    #[arg(long, value_name = "NAME", requires = "accept_config", value_parser = node_name)]
    node: Option<String>,
    /// This node's directory of pg_ctl, pg_basebackup, pg_controldata, for
    /// an ha.toml created with --accept-config (default: the platform's).
    #[arg(value_parser = crate::cli::PathArg, long, value_name = "DIR", requires = "accept_config")]
    pg_bin: Option<PathBuf>,
    /// This node's PostgreSQL data directory, for an ha.toml created with
    /// --accept-config (a bundle never chooses this node's paths).
    #[arg(value_parser = crate::cli::PathArg, long, value_name = "DIR", requires = "accept_config")]
    pg_data: Option<PathBuf>,
    /// This node's WAL archive directory, for an ha.toml created with --accept-config.
    #[arg(value_parser = crate::cli::PathArg, long, value_name = "DIR", requires = "accept_config")]
    archive_dir: Option<PathBuf>,
    /// Where this node's appsettings.json is, for an ha.toml created with --accept-config.
    #[arg(value_parser = crate::cli::PathArg, long, value_name = "PATH", requires = "accept_config")]
    appsettings: Option<PathBuf>,
    /// How this node starts its server, for an ha.toml created with
    /// --accept-config: pg_ctl, systemd:UNIT or windows_service:NAME
    /// [default: pg_ctl].
    #[arg(long, value_name = "METHOD", requires = "accept_config", value_parser = crate::ha::config::ServiceControl::parse)]
    service: Option<crate::ha::config::ServiceControl>,
    /// Verify the bundle and show what would change, without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// Allow the import to remove key material this node holds, or to give
    /// one of its key ids different material (refused otherwise).
    #[arg(long)]
    replace_keys: bool,
    #[command(flatten)]
    password: PasswordArgs,
}

#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// The bundle file.
    #[arg(value_parser = crate::cli::PathArg, short = 'n', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn expiry_text(expires: Option<u64>) -> String {
    expires.map_or_else(|| "never".to_owned(), fmt_time)
}

pub fn export(home: &Home, args: ExportArgs) -> Result<()> {
    let report = export::export(
        home,
        &ExportOptions {
            file: args.file,
            with_config: args.with_config,
            armor: args.armor,
            expiry: args.expires,
            kdf: KdfParams {
                memory_kib: args.kdf_memory,
                time: args.kdf_time,
                lanes: args.kdf_lanes,
            },
            password: args.password.source(),
        },
    )?;
    println!("wrote {}", printable_path(&report.file));
    println!("fingerprint {}", report.fingerprint);
    println!("expires {}", expiry_text(report.expires));
    println!(
        "contents {}",
        report
            .contents
            .iter()
            .map(|c| c.entry_name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(password) = &report.generated_password {
        // The one place a secret is shown: on the operator's terminal, not
        // on stdout, which may be captured into a log.
        eprintln!();
        eprintln!("One-time password for this bundle (shown once, never stored):");
        eprintln!();
        eprintln!("    {}", password.reveal());
        eprintln!();
        eprintln!(
            "Give it to the operator of the receiving host by a different channel than the file."
        );
    }
    Ok(())
}

pub fn import(home: &Home, args: ImportArgs) -> Result<()> {
    let report = import::import(
        home,
        &ImportOptions {
            file: args.file.clone(),
            password: args.password.source().unwrap_or(PasswordSource::Prompt),
            keys_only: args.keys_only,
            allow_expired: args.allow_expired,
            max_kdf_memory: args.max_kdf_memory,
            delete: args.delete,
            accept_config: args.accept_config,
            node_name: args.node,
            paths: crate::ha::config::LocalPaths {
                pg_bin: args.pg_bin,
                pg_data: args.pg_data,
                archive_dir: args.archive_dir,
                appsettings: args.appsettings,
                service: args.service,
            },
            dry_run: args.dry_run,
            replace_keys: args.replace_keys,
        },
    )?;
    let verb = if report.dry_run {
        "would import"
    } else {
        "imported"
    };
    note_ignored(&args.file, report.armor_ignored);
    super::nodes::print_published(&report.published);
    println!(
        "{verb} keys from {} (made by node \"{}\" at {}, expires {})",
        printable_path(&args.file),
        printable(&report.source_node),
        fmt_time(report.created),
        expiry_text(report.expires)
    );
    if let Some(ahead) = report.clock_behind {
        eprintln!(
            "warning: the bundle was made {} after this host's clock says it is now: \
             check both hosts' clocks (the bundle's expiry is judged by this one)",
            humantime::format_duration(std::time::Duration::from_secs(ahead))
        );
    }
    println!(
        "fingerprint before {}",
        report
            .before
            .map_or_else(|| "(none: new node)".to_owned(), |f| f.to_string())
    );
    println!("fingerprint after  {}", report.after);
    if report.before == Some(report.after) {
        println!("the keys were already the same");
    }
    if let Some(diff) = &report.keys {
        if report.dry_run || report.before != Some(report.after) {
            for (id, change) in &diff.keys {
                println!("key {id}: {change}");
            }
            if diff.primary_before != diff.primary_after {
                println!(
                    "primary key: {} -> {}",
                    diff.primary_before, diff.primary_after
                );
            }
        }
    }
    if let Some(backup) = &report.keystore_backup {
        println!("previous keystore kept as {}", printable_path(backup));
    }
    if !report.config_skipped.is_empty() {
        println!(
            "left alone (--keys-only): {}",
            report
                .config_skipped
                .iter()
                .map(|c| c.content().entry_name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for c in &report.config {
        if c.target.as_os_str().is_empty() {
            println!(
                "{}: not installed: this node names no path for it (give --appsettings PATH with --accept-config, or set it with `keyferry ha init … --appsettings PATH --force`)",
                c.file.content().entry_name()
            );
            continue;
        }
        for (field, flag) in &c.unset {
            println!(
                "{}: {field} left unset (the bundle never sets this node's paths; give {flag} with --accept-config, or use `keyferry ha init … --force`)",
                printable_path(&c.target)
            );
        }
        for why in &c.kept {
            println!("{}: kept: {why}", c.target.display());
        }
        let what = match (c.unchanged, c.existed) {
            (true, _) => "unchanged",
            (false, true) => {
                if report.dry_run {
                    "would replace"
                } else {
                    "replaced (backup in backups/)"
                }
            }
            (false, false) => {
                if report.dry_run {
                    "would create"
                } else {
                    "created"
                }
            }
        };
        println!(
            "{} -> {}: {what}",
            c.file.content().entry_name(),
            printable_path(&c.target)
        );
        for ch in &c.changes {
            println!(
                "    {}: {} -> {}",
                ch.field,
                printable(ch.before.as_deref().unwrap_or("(none)")),
                printable(ch.after.as_deref().unwrap_or("(none)"))
            );
        }
    }
    if report.dry_run {
        println!("dry run: nothing was changed");
        return Ok(());
    }
    match report.deleted {
        Some(Ok(removed)) => {
            for f in removed {
                println!("deleted {}", printable_path(&f));
            }
        }
        // The keys are installed and audited: a failure here must not look
        // like a failed import (exit 0), or a script would import again.
        Some(Err(why)) => eprintln!(
            "warning: the import succeeded, but --delete could not remove {} ({why}): \
             delete it by hand (and any copy): it holds the keys, protected only by its password",
            printable_path(&args.file)
        ),
        None => eprintln!(
            "Now delete {} (and any copy): it holds the keys, protected only by its password.",
            printable_path(&args.file)
        ),
    }
    Ok(())
}

/// Tells the operator about text around an armored bundle that was skipped.
fn note_ignored(file: &std::path::Path, ignored: crate::bundle::Ignored) {
    if !ignored.is_empty() {
        eprintln!(
            "note: {}: {}",
            printable_path(file),
            printable(&ignored.to_string())
        );
    }
}

pub(crate) fn inspect(args: InspectArgs) -> Result<()> {
    let i = inspect::inspect(&args.file)?;
    note_ignored(&args.file, i.ignored);
    if args.json {
        return print_json(&i);
    }
    println!(
        "keyferry bundle, format version {}{}",
        i.format_version,
        if i.armored { ", armored" } else { "" }
    );
    println!(
        "kdf      {} m={} KiB t={} p={}",
        i.kdf, i.kdf_memory_kib, i.kdf_time, i.kdf_lanes
    );
    println!("created  {}", i.created);
    println!("expires  {}", i.expires.as_deref().unwrap_or("never"));
    println!("size     {} bytes", i.file_size);
    println!("(header not yet authenticated: only import, with the password, proves it)");
    Ok(())
}

/// `--node`: refused as a usage error before anything is read (a dry run
/// too), for the reasons `ha.toml` would refuse it.
fn node_name(name: &str) -> std::result::Result<String, String> {
    match crate::ha::config::node_name_problem(name) {
        Some(problem) => Err(format!("the node name {problem}")),
        None => Ok(name.to_owned()),
    }
}
