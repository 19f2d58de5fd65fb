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
    /// Print the keyring fingerprint (kf1: + 40 hex digits); with --host,
    /// this node's host key (the code to read out for `nodes approve`)
    /// and the pair signing key it holds or pins.
    Fingerprint {
        /// This node's host key and the pair signing key instead.
        #[arg(long)]
        host: bool,
        /// Machine-readable output (with --host).
        #[arg(long, requires = "host")]
        json: bool,
    },
    /// On the pair's primary: make the pair signing key that format 2
    /// distributions are signed with (a keyring made before it has none),
    /// or with --replace a new one. Then export a bundle to the secondary
    /// and a --keys-only bundle to each host once, so they take it.
    SigningKey {
        /// Replace the signing key this keyring has.
        #[arg(long)]
        replace: bool,
    },
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
        KeysCommand::Fingerprint { host: false, .. } => {
            println!("{}", keys::fingerprint(home)?);
            Ok(())
        }
        KeysCommand::SigningKey { replace } => {
            let r = keys::new_signing_key(home, replace)?;
            match &r.replaced {
                Some(old) => println!("pair signing key {} (replaced {old})", r.signing_key),
                None => println!("pair signing key {}", r.signing_key),
            }
            println!("next: `keyferry export -n pair.exp --with-config` for the secondary, `keyferry export -n keys.exp` for the hosts (imported there with --keys-only), once: they take distributions signed by this key only after that import");
            Ok(())
        }
        KeysCommand::Fingerprint { host: true, json } => {
            let id = keys::identity(home)?;
            if json {
                return print_json(&id);
            }
            println!("host key {}", id.host_key);
            println!("host key public {}", id.host_key_public);
            match &id.signing_key {
                Some(code) if id.can_sign => {
                    println!("pair signing key {code} (held: this node signs distributions)")
                }
                Some(code) => {
                    println!("pair signing key {code} (pinned: distributions must be signed by it)")
                }
                None => {
                    println!("pair signing key none (a password bundle from the pair brings it)")
                }
            }
            Ok(())
        }
    }
}
