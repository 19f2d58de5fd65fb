//! `keyferry rewrap` and its target list: thin handlers around
//! [`crate::ops::rewrap`]; the progress display is [`super::progress`]'s.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use super::print_json;
use crate::error::{Error, Result};
use crate::ops::rewrap::{self, RewrapOptions, Target};
use crate::ops::Home;
use crate::secret::PasswordSource;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct RewrapArgs {
    #[command(subcommand)]
    cmd: Option<RewrapCommand>,
    #[command(flatten)]
    target: TargetArgs,
    /// Count the stored values per key version without decrypting (the key id is read in SQL).
    #[arg(long, conflicts_with = "verify")]
    check: bool,
    /// Like --check, and open every value too.
    #[arg(long)]
    verify: bool,
    /// Machine-readable output (--check / --verify, or the run's summary).
    #[arg(long)]
    json: bool,
    /// Rows per batch (each batch is one transaction).
    #[arg(long, value_name = "N", default_value_t = rewrap::DEFAULT_BATCH)]
    batch: usize,
    /// Pause while a replica's replay lag is above this many bytes.
    #[arg(long, value_name = "BYTES")]
    max_lag: Option<u64>,
    #[command(flatten)]
    password: DbPassword,
}

#[derive(Subcommand, Debug)]
enum RewrapCommand {
    /// Keep a target in the home, so `keyferry rewrap` does them all.
    AddTarget(TargetArgs),
    /// Remove a kept target.
    RemoveTarget(TargetArgs),
    /// List the kept targets.
    Targets {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Default)]
pub(crate) struct TargetArgs {
    /// Connection string (libpq key=value or postgresql:// URI) without a password.
    #[arg(long, value_name = "DSN")]
    dsn: Option<String>,
    /// The table (`table` or `schema.table`).
    #[arg(long, value_name = "TABLE", requires = "dsn")]
    table: Option<String>,
    /// The column of envelopes: text holds kfe1:… text, bytea the raw form.
    #[arg(long, value_name = "COLUMN", requires = "dsn")]
    column: Option<String>,
    /// The table's unique, ordered id column.
    #[arg(long, value_name = "COLUMN", default_value = "id")]
    id_column: String,
    /// The aad the values were sealed with; {id}, {table}, {column} are filled per row.
    #[arg(long, value_name = "TEMPLATE", default_value = "")]
    aad: String,
}

impl TargetArgs {
    fn target(&self) -> Result<Option<Target>> {
        match (&self.dsn, &self.table, &self.column) {
            (None, None, None) => Ok(None),
            (Some(dsn), Some(table), Some(column)) => Ok(Some(Target {
                dsn: dsn.clone(),
                table: table.clone(),
                column: column.clone(),
                id_column: self.id_column.clone(),
                aad: self.aad.clone(),
            })),
            _ => Err(Error::Usage(
                "a target needs --dsn, --table and --column together".into(),
            )),
        }
    }
}

/// The database password, when libpq's password file does not hold it
/// (used by `rewrap`, `nodes` and the guards of `promote`, `disable` and
/// `destroy`). Never on the command line itself.
#[derive(Args, Debug, Default)]
#[group(multiple = false)]
pub(crate) struct DbPassword {
    /// Read the database password from the first line of this file.
    #[arg(value_parser = crate::cli::PathArg, long, value_name = "PATH")]
    password_file: Option<PathBuf>,
    /// Read the database password from the first line of this inherited
    /// file descriptor (Unix; 0 for standard input).
    #[arg(long, value_name = "N")]
    password_fd: Option<i32>,
    /// Read the database password from this environment variable.
    #[arg(long, value_name = "NAME")]
    password_env: Option<String>,
}

impl DbPassword {
    pub(crate) fn read(&self) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let source = if let Some(path) = &self.password_file {
            PasswordSource::File(path.clone())
        } else if let Some(fd) = self.password_fd {
            PasswordSource::Fd(fd)
        } else if let Some(name) = &self.password_env {
            PasswordSource::Env(name.clone())
        } else {
            return Ok(None);
        };
        Ok(Some(crate::secret::read_db_password(&source)?))
    }
}

pub(crate) fn run(home: &Home, args: RewrapArgs) -> Result<()> {
    match args.cmd {
        Some(RewrapCommand::AddTarget(t)) | Some(RewrapCommand::RemoveTarget(t))
            if t.target()?.is_none() =>
        {
            Err(Error::Usage("give --dsn, --table and --column".into()))
        }
        Some(RewrapCommand::AddTarget(t)) => {
            let target = t.target()?.expect("checked");
            let list = rewrap::set_target(home, target.clone(), false)?;
            println!(
                "rewrap target {} on {} kept; {} target(s) in the home",
                target.name(),
                target.dsn,
                list.len()
            );
            Ok(())
        }
        Some(RewrapCommand::RemoveTarget(t)) => {
            let target = t.target()?.expect("checked");
            let list = rewrap::set_target(home, target.clone(), true)?;
            println!(
                "rewrap target {} on {} removed; {} target(s) left",
                target.name(),
                target.dsn,
                list.len()
            );
            Ok(())
        }
        Some(RewrapCommand::Targets { json }) => {
            let list = rewrap::targets(home)?;
            if json {
                return print_json(&list);
            }
            for t in &list {
                println!(
                    "{}  {}  id column {}  aad {:?}",
                    t.dsn,
                    t.name(),
                    t.id_column,
                    t.aad
                );
            }
            Ok(())
        }
        None => run_rewrap(home, &args),
    }
}

fn run_rewrap(home: &Home, args: &RewrapArgs) -> Result<()> {
    let targets = match args.target.target()? {
        Some(t) => vec![t],
        None => rewrap::targets(home)?,
    };
    let password = args.password.read()?;
    let password = password.as_deref().map(|p| &p[..]);
    if args.check || args.verify {
        if targets.is_empty() {
            return Err(Error::Usage(
                "no rewrap targets: give --dsn, --table and --column, or keep targets with `keyferry rewrap add-target`".into(),
            ));
        }
        let census = rewrap::census(home, &targets, args.verify, password)?;
        if args.json {
            let by_key: serde_json::Map<String, serde_json::Value> = census
                .by_key
                .iter()
                .map(|(k, n)| (k.to_string(), serde_json::Value::from(*n)))
                .collect();
            return print_json(&serde_json::json!({
                "by_key": by_key,
                "undecryptable": census.undecryptable,
                "targets": census.targets,
                "elapsed_ms": census.elapsed_ms,
            }));
        }
        for t in &census.targets {
            println!("{} on {}:", t.target, t.dsn);
            for (k, n) in &t.by_key {
                println!("  key {k}: {n} value(s)");
            }
            println!("  cannot be opened here: {}", t.undecryptable);
            for id in &t.failed_ids {
                println!("    id {}", super::printable(id));
            }
        }
        println!(
            "census of {} target(s) in {} ms",
            census.targets.len(),
            census.elapsed_ms
        );
        return Ok(());
    }
    let mut display = super::progress::display(false);
    let json = args.json;
    let mut on_report = |r: &rewrap::RewrapReport| {
        if json {
            let _ = print_json(r);
            return;
        }
        for t in &r.targets {
            println!(
                "{} on {}: {} rewrapped under key {}, {} changed by the application meanwhile (left as they are), {} could not be opened{}; {} batch(es) in {} ms{}",
                t.target,
                t.dsn,
                t.rewrapped,
                r.primary,
                t.changed_meanwhile,
                t.failed,
                if t.resumed { " (resumed an interrupted run)" } else { "" },
                t.batches,
                t.elapsed_ms,
                if t.paused_ms > 0 { format!(", {} ms paused for the replica", t.paused_ms) } else { String::new() }
            );
        }
    };
    let opts = RewrapOptions {
        batch: args.batch,
        max_lag: args.max_lag,
    };
    rewrap::rewrap(home, &targets, opts, password, &mut display, &mut on_report)?;
    if !json {
        println!("next: `keyferry rewrap --check` shows what is left under each key");
    }
    Ok(())
}
