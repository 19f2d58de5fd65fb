use clap::Subcommand;

use super::print_json;
use crate::audit::Record;
use crate::error::Result;
use crate::ops::{audit_log, Home};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List the audit records (a damaged log is listed too, with a warning).
    Show {
        /// Machine-readable output (one JSON array).
        #[arg(long)]
        json: bool,
    },
    /// Check the chain of MACs and that no record was cut off the end.
    Verify,
}

fn print_record(r: &Record) {
    let details = r
        .details
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "{:>5}  {}  {}@{}  {:<8} {details}",
        r.seq, r.time, r.user, r.host, r.action
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
