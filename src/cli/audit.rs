use clap::Subcommand;

use super::print_json;
use crate::audit::Record;
use crate::error::Result;
use crate::ops::{audit_log, Home};

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// List the audit records (a damaged log is listed too, with a warning).
    Show {
        /// Machine-readable output (one JSON array).
        #[arg(long)]
        json: bool,
    },
    /// Check the chain of MACs and that no record was cut off the end.
    Verify,
    /// Show why the log does not verify and, with --apply, resolve it: keep
    /// the records that verify, copy the whole log aside, and add a record
    /// saying so.
    Repair {
        /// Make the repair (without it, only show what it would do).
        #[arg(long)]
        apply: bool,
    },
}

/// A record's text may come from a bundle's sender (its `source_node`) or
/// another host: control characters are shown escaped, so that no value can
/// forge a line of the listing or drive the terminal.
fn print_record(r: &Record) {
    let clean = super::printable;
    let details = r
        .details
        .iter()
        .map(|(k, v)| {
            let value = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            format!("{}={}", clean(k), clean(&value))
        })
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "{:>5}  {}  {}@{}  {:<8} {details}",
        r.seq,
        clean(&r.time),
        clean(&r.user),
        clean(&r.host),
        clean(&r.action)
    );
}

pub fn run(home: &Home, cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Show { json } => {
            let (records, verdict) = audit_log::show(home)?;
            if json {
                print_json(&records)?;
            } else {
                records.iter().for_each(print_record);
            }
            verdict
        }
        AuditCommand::Repair { apply } => {
            let r = home.repair_audit(apply)?;
            let Some(problem) = &r.problem else {
                println!("audit log intact: nothing to repair");
                return Ok(());
            };
            println!("problem: {problem}");
            println!(
                "{} records from the start verify; the keystore records sequence {}",
                r.kept, r.keystore_seq
            );
            if r.dropped_bytes > 0 {
                println!(
                    "{} bytes after them do not verify and {}",
                    r.dropped_bytes,
                    if r.applied {
                        "were removed from the log"
                    } else {
                        "would be removed from the log (the whole log is copied aside first)"
                    }
                );
            }
            if let Some(copy) = &r.damaged_copy {
                println!("the whole damaged log was copied to {}", copy.display());
            }
            if r.applied {
                println!("repaired: an audit-repair record says what was found; `keyferry audit verify` passes");
            } else {
                println!(
                    "run `keyferry audit repair --apply` to resolve it with an audit-repair record"
                );
            }
            Ok(())
        }
        AuditCommand::Verify => {
            let records = audit_log::verify(home)?;
            println!(
                "audit log intact: {} records, the last matches the keystore",
                records.len()
            );
            Ok(())
        }
    }
}
