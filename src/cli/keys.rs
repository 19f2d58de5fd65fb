use clap::Subcommand;

use super::print_json;
use crate::error::Result;
use crate::ops::{keys, Home};

#[derive(Subcommand, Debug)]
pub(crate) enum KeysCommand {
    /// List the keys (never their material).
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the keyring fingerprint (kf1: + 40 hex digits).
    Fingerprint,
}

pub fn run(home: &Home, cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::List { json } => {
            let list = keys::list(home)?;
            if json {
                return print_json(&list);
            }
            println!("fingerprint {}", list.fingerprint);
            println!(
                "{:>4}  {:<9}  {:<20}  {:<11}",
                "id", "status", "created", "algorithm"
            );
            for k in &list.keys {
                println!(
                    "{:>4}  {:<9}  {:<20}  {:<11}{}",
                    k.id,
                    k.status.to_string(),
                    k.created,
                    k.algorithm,
                    if k.primary { "  primary" } else { "" }
                );
            }
            Ok(())
        }
        KeysCommand::Fingerprint => {
            println!("{}", keys::fingerprint(home)?);
            Ok(())
        }
    }
}
