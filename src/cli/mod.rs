//! Command-line definitions and one handler per command group. Each handler
//! parses nothing itself and decides nothing: it calls one `ops` function and
//! prints its report. Secrets are printed only to stderr, and only the
//! password that export generated.

mod audit;
mod bootstrap;
mod bundle;
mod ha;
mod keys;
mod lifecycle;
mod logging;
mod nodes;
mod progress;
mod rewrap;
mod roles;
mod seal;

use std::path::PathBuf;

use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ops::Home;
use crate::secret::PasswordSource;

#[derive(Parser, Debug)]
#[command(
    name = "keyferry",
    version,
    about = "Move encryption keys between the hosts of a server pair in password-sealed bundles, with an audit trail",
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage, 3 wrong password or modified header, \
                  4 malformed/modified bundle, 5 expired bundle, 6 KDF over import limit, 7 audit log damaged, \
                  8 preflight (ha check) failed, 9 pair degraded (ha status), 10 pair down (ha status), \
                  11 a value could not be decrypted, 12 refused: values or nodes still depend on the key (--force), \
                  13 refused to protect the pair's roles (ha guard, ha start, ha failover), \
                  14 split brain (ha status), 15 the pair's state cannot be told (ha status)"
)]
pub(crate) struct Cli {
    /// The node's home (keyring.json, audit.log, backups/). Default: $KEYFERRY_HOME,
    /// else /var/lib/keyferry (Unix) or %ProgramData%\keyferry (Windows).
    #[arg(value_parser = crate::cli::PathArg, long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,

    /// Log what keyferry does to stderr: -v info, -vv debug, -vvv trace (never a
    /// secret). $KEYFERRY_LOG adds filter directives, e.g. KEYFERRY_LOG=keyferry=debug.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create this node's keyring with one primary key (refuses if one exists).
    Init,
    /// Show the keyring.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Add a key version: the primary at once, or with --stage enabled but not primary.
    Rotate(lifecycle::RotateArgs),
    /// Make an enabled key the primary (refused while a recently seen node lacks it).
    Promote(lifecycle::PromoteArgs),
    /// Disable a key: values sealed under it stop opening until it is enabled.
    Disable(lifecycle::GuardedArgs),
    /// Enable a disabled key again.
    Enable(lifecycle::KeyIdArgs),
    /// Destroy a disabled key's material for good (keystore and every backup).
    Destroy(lifecycle::DestroyArgs),
    /// Seal standard input under the primary key; the envelope goes to standard output.
    Encrypt(seal::SealArgs),
    /// Open an envelope from standard input; the value goes to standard output.
    Decrypt(seal::SealArgs),
    /// The node registry: which keys every node holds (list; connect, publish, add, remove).
    Nodes(nodes::NodesArgs),
    /// Seal the keyring to every approved host and store it in the node registry (on a pair node).
    Distribute(nodes::Conn),
    /// Re-encrypt values stored in PostgreSQL under the primary key; --check counts them per key.
    Rewrap(rewrap::RewrapArgs),
    /// Seal the keyring into a password-protected bundle file.
    Export(bundle::ExportArgs),
    /// Verify a bundle completely, then install its keys atomically.
    Import(bundle::ImportArgs),
    /// Show a bundle's header (no password needed; not authenticated).
    Inspect(bundle::InspectArgs),
    /// Show or verify the tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Check the cryptography, the format vectors and a real round trip on this machine.
    Selftest,
    /// The PostgreSQL HA pair: ha.toml, preflight, WAL archive.
    #[command(subcommand)]
    Ha(ha::HaCommand),
    /// keyferry's replication lines in pg_hba.conf.
    #[command(subcommand)]
    Hba(ha::HbaCommand),
    /// The home's backups/ (previous versions of replaced files).
    #[command(subcommand)]
    Backups(BackupsCommand),
}

#[derive(Subcommand, Debug)]
enum BackupsCommand {
    /// Remove all but the newest backups of each file (keystore backups hold keys).
    Prune {
        /// Versions to keep per file (default: `keep` under [backups] in the
        /// home's keyferry.toml, else 10).
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
    },
}

/// Where a password comes from. There is no option to pass one on the
/// command line: it would end up in shell history and process listings.
#[derive(Args, Debug, Default)]
#[group(multiple = false)]
pub(crate) struct PasswordArgs {
    /// Read the password from the first line of this file.
    #[arg(value_parser = crate::cli::PathArg, long, value_name = "PATH")]
    password_file: Option<PathBuf>,
    /// Read the password from the first line of this inherited file descriptor
    /// (Unix; 0 for standard input). The descriptor is left open.
    #[arg(long, value_name = "N")]
    password_fd: Option<i32>,
    /// Read the password from the environment variable of this name.
    #[arg(long, value_name = "NAME")]
    password_env: Option<String>,
}

impl PasswordArgs {
    /// The source the operator named, if any.
    fn source(&self) -> Option<PasswordSource> {
        if let Some(p) = &self.password_file {
            Some(PasswordSource::File(p.clone()))
        } else if let Some(fd) = self.password_fd {
            Some(PasswordSource::Fd(fd))
        } else {
            self.password_env.clone().map(PasswordSource::Env)
        }
    }
}

/// A path given on the command line. A line break in it is a usage error:
/// keyferry writes paths into line-based files (`ha.toml`, libpq's
/// password file, `primary_conninfo`, audit records) where it would start a
/// line of the attacker's choosing, and no real data directory needs one.
/// The message shows the value escaped (clap's own would echo it raw).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PathArg;

impl clap::builder::TypedValueParser for PathArg {
    type Value = PathBuf;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<PathBuf, clap::Error> {
        let text = value.to_string_lossy();
        if text.contains(['\n', '\r']) {
            let name = arg.map_or_else(|| "a path".to_owned(), |a| a.to_string());
            let mut cmd = cmd.clone();
            return Err(cmd.error(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "{name} \"{}\" contains a line break: give the path without one",
                    crate::fmt::printable(&text)
                ),
            ));
        }
        Ok(PathBuf::from(value))
    }
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Refused(format!("cannot render JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

pub(crate) use crate::fmt::printable;

/// The password sources named anywhere on the command line (each command
/// group flattens its own password options into its matches).
fn named_sources(matches: &clap::ArgMatches, out: &mut Vec<PasswordSource>) {
    if let Ok(Some(fd)) = matches.try_get_one::<i32>("password_fd") {
        out.push(PasswordSource::Fd(*fd));
    }
    if let Ok(Some(name)) = matches.try_get_one::<String>("password_env") {
        out.push(PasswordSource::Env(name.clone()));
    }
    if let Some((_, sub)) = matches.subcommand() {
        named_sources(sub, out);
    }
}

/// Parses the command line and runs the command.
pub fn run() -> Result<()> {
    let matches = Cli::command().get_matches();
    // Before anything opens a file or starts a program: see
    // `secret::prepare_sources`.
    let mut sources = Vec::new();
    named_sources(&matches, &mut sources);
    crate::secret::prepare_sources(&sources)?;
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    logging::init(cli.verbose)?;
    tracing::debug!(version = env!("CARGO_PKG_VERSION"), "keyferry starting");
    let home = Home::resolve(cli.home).with_effects(crate::ops::ha::effects::pair_effects());
    if !matches!(cli.command, Command::Inspect(_) | Command::Selftest) {
        if let Some(warning) = home.sharing_warning() {
            eprintln!("warning: {warning}");
        }
        if let Some(recovered) = home.recover()? {
            eprintln!("note: {recovered}");
        }
    }
    match cli.command {
        Command::Init => {
            let report = crate::ops::init::init(&home)?;
            println!("initialised {}", home.root().display());
            println!("fingerprint {}", report.fingerprint);
            Ok(())
        }
        Command::Keys(cmd) => keys::run(&home, cmd),
        Command::Rotate(args) => lifecycle::rotate(&home, args),
        Command::Promote(args) => lifecycle::promote(&home, args),
        Command::Disable(args) => lifecycle::disable(&home, args),
        Command::Enable(args) => lifecycle::enable(&home, args),
        Command::Destroy(args) => lifecycle::destroy(&home, args),
        Command::Nodes(args) => nodes::run(&home, args),
        Command::Distribute(conn) => nodes::distribute(&home, conn),
        Command::Rewrap(args) => rewrap::run(&home, args),
        Command::Encrypt(args) => seal::encrypt(&home, args),
        Command::Decrypt(args) => seal::decrypt(&home, args),
        Command::Export(args) => bundle::export(&home, args),
        Command::Import(args) => bundle::import(&home, args),
        Command::Inspect(args) => bundle::inspect(args),
        Command::Audit(cmd) => audit::run(&home, cmd),
        Command::Selftest => selftest(),
        Command::Ha(cmd) => ha::run(&home, cmd),
        Command::Hba(cmd) => ha::run_hba(&home, cmd),
        Command::Backups(BackupsCommand::Prune { keep }) => {
            let report = home.prune_backups(keep)?;
            for f in &report.removed {
                println!("removed {}", f.display());
            }
            println!(
                "{} old backups removed; the newest {} of each file are kept",
                report.removed.len(),
                report.keep
            );
            Ok(())
        }
    }
}

fn selftest() -> Result<()> {
    let report = crate::ops::selftest::selftest()?;
    for c in &report.checks {
        let mark = if c.passed { "ok  " } else { "FAIL" };
        if c.detail.is_empty() {
            println!("{mark} {}", c.name);
        } else {
            println!("{mark} {} — {}", c.name, c.detail);
        }
    }
    println!(
        "KDF at the default parameters ({}): {} ms on this machine",
        crate::kdf::KdfParams::DEFAULT,
        report.kdf_default_time.as_millis()
    );
    if report.passed() {
        println!("selftest passed");
        Ok(())
    } else {
        Err(Error::Refused(
            "selftest FAILED: do not use this build; report the failing lines".into(),
        ))
    }
}
