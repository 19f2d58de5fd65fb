//! `keyferry rotate`, `promote`, `disable`, `enable`, `destroy`: thin
//! handlers around [`crate::ops::lifecycle`]; they print the report and the
//! next steps, and ask `destroy`'s confirmation on a terminal.

use std::io::{self, BufRead, IsTerminal, Write};

use clap::Args;

use super::nodes::print_published;
use super::rewrap::DbPassword;
use crate::error::{Error, Result};
use crate::ops::lifecycle::{self, DestroyPlan, Guarded, LifecycleReport};
use crate::ops::nodes::{Access, RegistryGuard};
use crate::ops::rewrap::CensusGuard;
use crate::ops::Home;

#[derive(Args, Debug)]
pub(crate) struct RotateArgs {
    /// Add the new key enabled but not primary, so it can be distributed to
    /// every node before `keyferry promote` makes it the primary.
    #[arg(long)]
    stage: bool,
}

#[derive(Args, Debug)]
pub(crate) struct KeyIdArgs {
    /// The key's id (`keyferry keys list`).
    #[arg(value_name = "ID")]
    id: u32,
}

#[derive(Args, Debug)]
pub(crate) struct GuardedArgs {
    /// The key's id (`keyferry keys list`).
    #[arg(value_name = "ID")]
    id: u32,
    /// Go on although values or nodes still depend on the key (the audit
    /// record says what was overridden).
    #[arg(long)]
    force: bool,
    /// The database password for the census (disable, destroy) or the
    /// node registry (promote), when libpq's password file does not hold it.
    #[command(flatten)]
    password: DbPassword,
}

#[derive(Args, Debug)]
pub(crate) struct PromoteArgs {
    #[command(flatten)]
    key: GuardedArgs,
    /// Wait only for nodes the registry has seen within this time (e.g. 7d, 36h).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    since: std::time::Duration,
}

#[derive(Args, Debug)]
pub(crate) struct DestroyArgs {
    #[command(flatten)]
    key: GuardedArgs,
    /// Do not ask for confirmation (needed when not on a terminal).
    #[arg(long)]
    yes: bool,
}

fn print_common(r: &LifecycleReport) {
    println!(
        "fingerprint {} -> {}",
        r.fingerprint_before, r.fingerprint_after
    );
    if let Some(f) = &r.forced {
        eprintln!("warning: forced: {f}");
    }
    if let Some(b) = &r.keystore_backup {
        println!("previous keystore kept in {}", b.display());
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    print_published(&r.published);
    super::nodes::print_distributed_after(&r.distributed);
}

pub(crate) fn rotate(home: &Home, args: RotateArgs) -> Result<()> {
    let r = lifecycle::rotate(home, args.stage)?;
    let new = r.key;
    if args.stage {
        println!(
            "key {new} added, enabled, not primary (the primary is still key {})",
            r.primary_after
        );
        print_common(&r);
        println!("next steps:");
        println!("  1. on this node:        keyferry export -n keys.exp");
        println!("  2. on every other node: keyferry import -n keys.exp");
        println!(
            "  3. on this node, check that no node lacks key {new}: keyferry nodes (or `keyferry keys fingerprint` on each node)"
        );
        println!("  4. on this node:        keyferry promote {new}");
    } else {
        println!(
            "key {new} added and made the primary (was key {})",
            r.primary_before
        );
        print_common(&r);
        println!("next steps (values sealed from now on need key {new} on every node):");
        println!("  1. on this node:        keyferry export -n keys.exp");
        println!("  2. on every other node: keyferry import -n keys.exp");
        println!("  3. re-encrypt stored values: keyferry rewrap");
        println!(
            "  4. when `keyferry rewrap --check` shows nothing under key {}: keyferry disable {}",
            r.primary_before, r.primary_before
        );
    }
    Ok(())
}

pub(crate) fn promote(home: &Home, args: PromoteArgs) -> Result<()> {
    let pw = args.key.password.read()?;
    let pw = pw.as_deref().map(|p| &p[..]);
    let guard = RegistryGuard {
        access: Access {
            dsn: None,
            password: pw,
        },
        since_secs: args.since.as_secs(),
    };
    let r = lifecycle::promote(
        home,
        args.key.id,
        &guard,
        Guarded {
            force: args.key.force,
        },
        pw,
    )?;
    println!(
        "key {} is now the primary (was key {})",
        r.key, r.primary_before
    );
    print_common(&r);
    println!("next steps:");
    println!("  1. on this node:        keyferry export -n keys.exp");
    println!("  2. on every other node: keyferry import -n keys.exp (then `keyferry nodes` here: every node agrees)");
    println!("  3. re-encrypt stored values: keyferry rewrap");
    println!(
        "  4. when `keyferry rewrap --check` shows nothing under key {}: keyferry disable {}",
        r.primary_before, r.primary_before
    );
    Ok(())
}

pub(crate) fn disable(home: &Home, args: GuardedArgs) -> Result<()> {
    let pw = args.password.read()?;
    let guard = CensusGuard {
        password: pw.as_deref().map(|p| &p[..]),
    };
    let r = lifecycle::disable(home, args.id, &guard, Guarded { force: args.force })?;
    println!(
        "key {} disabled: values sealed under it no longer open (`keyferry enable {}` undoes this)",
        r.key, r.key
    );
    print_common(&r);
    Ok(())
}

pub(crate) fn enable(home: &Home, args: KeyIdArgs) -> Result<()> {
    let r = lifecycle::enable(home, args.id)?;
    println!("key {} enabled: values sealed under it open again", r.key);
    print_common(&r);
    Ok(())
}

pub(crate) fn destroy(home: &Home, args: DestroyArgs) -> Result<()> {
    let pw = args.key.password.read()?;
    let guard = CensusGuard {
        password: pw.as_deref().map(|p| &p[..]),
    };
    let guard = &guard;
    let yes = args.yes;
    let mut confirm = |plan: &DestroyPlan| -> Result<bool> {
        if yes {
            return Ok(true);
        }
        if !io::stdin().is_terminal() {
            return Err(Error::Usage(format!(
                "destroy asks for confirmation on a terminal and there is none: \
                 add --yes to destroy key {} for good; nothing was changed",
                plan.key
            )));
        }
        eprintln!(
            "Destroying key {} removes its material for good, from the keystore and from {} backup(s) \
             in the home: values sealed under it can never be opened again.",
            plan.key,
            plan.backups.len()
        );
        eprint!("Type the key id ({}) to destroy it: ", plan.key);
        io::stderr().flush().ok();
        let mut line = String::new();
        io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(Error::io("cannot read the confirmation"))?;
        Ok(line.trim() == plan.key.to_string())
    };
    let r = lifecycle::destroy(
        home,
        args.key.id,
        guard,
        Guarded {
            force: args.key.force,
        },
        &mut confirm,
    )?;
    println!(
        "key {} destroyed: its material is gone from the keystore; {} backup(s) rewritten without it, {} removed",
        r.key,
        r.scrubbed.len(),
        r.removed.len()
    );
    print_common(&r);
    Ok(())
}
