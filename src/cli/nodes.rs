//! `keyferry nodes`: thin handlers around [`crate::ops::nodes`] (the node
//! registry); they print what it reports, and the automatic publish that
//! follows a key change.

use clap::{Args, Subcommand};

use super::print_json;
use super::printable;
use super::rewrap::DbPassword;
use crate::error::Result;
use crate::fmt::fmt_time;
use crate::ops::distribution;
use crate::ops::nodes::{self, Access, AutoPublish, PairDsn, Role};
use crate::ops::Home;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct NodesArgs {
    #[command(subcommand)]
    cmd: Option<NodesCommand>,
    /// Machine-readable list.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

/// How to reach the registry: --dsn (else the home's connection) and the
/// password source (else libpq's password file).
#[derive(Args, Debug, Default)]
pub(crate) struct Conn {
    /// The registry's database on the primary (libpq key=value or
    /// postgresql:// URI, without a password). Default: the home's
    /// connection (`keyferry nodes connect`).
    #[arg(long, value_name = "DSN")]
    dsn: Option<String>,
    #[command(flatten)]
    password: DbPassword,
}

#[derive(Subcommand, Debug)]
enum NodesCommand {
    /// Keep the registry's connection in the home (no password) and publish this node.
    /// Without --dsn, a pair node's is built from ha.toml: both nodes, the writable one chosen.
    Connect {
        /// Without --dsn: the role to connect as [default: ha.toml's replication user].
        #[arg(long, value_name = "ROLE", conflicts_with = "dsn")]
        user: Option<String>,
        /// Without --dsn: the database [default: postgres].
        #[arg(long, value_name = "NAME", conflicts_with = "dsn")]
        database: Option<String>,
        /// This node's name in the registry (default: `node` in ha.toml, else the host name).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// What this node is: pair (primary or secondary), action or scheduler.
        #[arg(long, value_name = "ROLE", default_value = "pair")]
        role: Role,
        #[command(flatten)]
        conn: Conn,
    },
    /// Record this node (fingerprint, key ids, primary, version, now) in the registry.
    Publish {
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        #[arg(long, value_name = "ROLE")]
        role: Option<Role>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Record a host that cannot reach the database, by its `keyferry keys fingerprint`.
    Add {
        #[arg(value_name = "NAME")]
        name: String,
        /// action or scheduler (or pair).
        #[arg(long, value_name = "ROLE")]
        role: Role,
        /// The fingerprint `keyferry keys fingerprint` shows on that host (kf1:…).
        #[arg(long, value_name = "KF1")]
        fingerprint: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Approve a host's key for distributions, by the code `keyferry keys fingerprint --host` shows there.
    Approve {
        #[arg(value_name = "NAME")]
        name: String,
        /// The host key's code, read off that host's screen (kfh1:xxxx-xxxx-xxxx-xxxx-xxxx).
        #[arg(long, value_name = "CODE")]
        fingerprint: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Take this host's distribution from the registry (signed by the pinned pair key, newer than the last).
    Sync {
        /// Take it even if it drops key material this host holds (other than keys the pair destroyed).
        #[arg(long)]
        replace_keys: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a node that is gone from the registry (on a pair node: and stop distributing to it).
    Remove {
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

impl Conn {
    fn access<'a>(&'a self, pw: &'a Option<zeroize::Zeroizing<Vec<u8>>>) -> Access<'a> {
        Access {
            dsn: self.dsn.as_deref(),
            password: pw.as_deref().map(|p| &p[..]),
        }
    }
}

/// `keyferry distribute`.
pub(crate) fn distribute(home: &Home, conn: Conn) -> Result<()> {
    let pw = conn.password.read()?;
    let d = distribution::distribute(home, conn.access(&pw))?;
    print_distributed(&d);
    Ok(())
}

fn print_distributed(d: &distribution::Distributed) {
    println!(
        "distribution {} ({}) stored in the node registry at {} for {} host(s)",
        d.serial,
        d.fingerprint,
        printable(&d.registry),
        d.sent.len()
    );
    for s in &d.sent {
        println!(
            "  {} ({}, {}, host key {})",
            printable(&s.name),
            s.role,
            s.view,
            s.host_key
        );
        if s.key_changed {
            eprintln!(
                "warning: {} now publishes another host key than the one approved: it cannot open this distribution until it is approved again (`keyferry nodes approve {} --fingerprint CODE`)",
                printable(&s.name),
                printable(&s.name)
            );
        }
    }
    if d.sent.is_empty() {
        println!("(no approved hosts yet: `keyferry nodes approve NAME --fingerprint CODE`)");
    }
}

/// Prints how the distribution after a key change went.
pub(crate) fn print_distributed_after(d: &Option<distribution::AutoDistribute>) {
    match d {
        None => {}
        Some(distribution::AutoDistribute::Done(d)) => print_distributed(d),
        Some(distribution::AutoDistribute::Failed(why)) => eprintln!("warning: {why}"),
    }
}

/// Prints how the automatic publish after a key change went.
pub(crate) fn print_published(p: &Option<AutoPublish>) {
    match p {
        None => {}
        Some(AutoPublish::Published(p)) => println!(
            "published to the node registry at {} as {}",
            printable(&p.registry.to_string()),
            printable(&p.node.name)
        ),
        Some(AutoPublish::Failed(why)) => eprintln!("warning: {why}"),
    }
}

fn ids(ids: &Option<Vec<u32>>) -> String {
    match ids {
        Some(v) if v.is_empty() => "none".into(),
        Some(v) => v.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
        None => "unknown".into(),
    }
}

pub(crate) fn run(home: &Home, args: NodesArgs) -> Result<()> {
    match args.cmd {
        None => list(home, &args.conn, args.json),
        Some(NodesCommand::Connect {
            user,
            database,
            name,
            role,
            conn: Conn { dsn, password },
        }) => {
            let pw = password.read()?;
            let p = nodes::connect(
                home,
                dsn.as_deref(),
                PairDsn {
                    user: user.as_deref(),
                    database: database.as_deref(),
                },
                name,
                role,
                pw.as_deref().map(|p| &p[..]),
            )?;
            println!(
                "node registry at {} kept in the home; published this node as {} ({}, fingerprint {})",
                printable(&p.registry.to_string()),
                printable(&p.node.name),
                p.node.role.label(),
                p.node.fingerprint
            );
            Ok(())
        }
        Some(NodesCommand::Publish { name, role, conn }) => {
            let pw = conn.password.read()?;
            let access = Access {
                dsn: conn.dsn.as_deref(),
                password: pw.as_deref().map(|p| &p[..]),
            };
            let p = nodes::publish(home, access, name, role)?;
            println!(
                "published {} ({}, fingerprint {}, keys {}, primary {}) to the node registry at {}",
                printable(&p.node.name),
                p.node.role.label(),
                p.node.fingerprint,
                ids(&p.node.key_ids),
                p.node
                    .primary_id
                    .map_or("unknown".into(), |p| p.to_string()),
                printable(&p.registry.to_string())
            );
            Ok(())
        }
        Some(NodesCommand::Add {
            name,
            role,
            fingerprint,
            conn,
        }) => {
            let pw = conn.password.read()?;
            let access = Access {
                dsn: conn.dsn.as_deref(),
                password: pw.as_deref().map(|p| &p[..]),
            };
            let a = nodes::add(home, access, &name, role, &fingerprint)?;
            match &a.derived {
                Some(d) => println!(
                    "added {} ({}) to the node registry at {}: keys {}, primary {} (from {})",
                    printable(&a.node.name),
                    role.label(),
                    printable(&a.registry.to_string()),
                    ids(&a.node.key_ids),
                    d.primary_id,
                    d.how
                ),
                None => {
                    println!(
                        "added {} ({}) to the node registry at {}: keys unknown",
                        printable(&a.node.name),
                        role.label(),
                        printable(&a.registry.to_string())
                    );
                    eprintln!(
                        "warning: fingerprint {} is not one this node's keyring has had, so which keys {} holds is unknown (and `promote` waits for it): check the fingerprint, or carry this keyring there (`keyferry export` here, `keyferry import --keys-only` there) and add it again with its new fingerprint",
                        a.node.fingerprint,
                        printable(&a.node.name)
                    );
                }
            }
            Ok(())
        }
        Some(NodesCommand::Remove { name, conn }) => {
            let pw = conn.password.read()?;
            let r = distribution::remove(home, conn.access(&pw), &name)?;
            println!(
                "removed {} from the node registry at {}",
                printable(&name),
                printable(&r.registry)
            );
            if r.withdrawn {
                println!(
                    "no distribution will be sealed to {} again; the keys it already holds stay with it until the next rotation (for a lost or compromised host: rotate, promote, rewrap, then disable and destroy the old key)",
                    printable(&name)
                );
            }
            Ok(())
        }
        Some(NodesCommand::Approve {
            name,
            fingerprint,
            conn,
        }) => {
            let pw = conn.password.read()?;
            let a = distribution::approve(home, conn.access(&pw), &name, &fingerprint)?;
            println!(
                "approved {} ({}, host key {}): `keyferry distribute` seals the keys to it",
                printable(&a.name),
                a.role.label(),
                a.host_key
            );
            Ok(())
        }
        Some(NodesCommand::Sync { replace_keys, conn }) => {
            let pw = conn.password.read()?;
            let s = distribution::sync(home, conn.access(&pw), replace_keys)?;
            if s.up_to_date {
                println!(
                    "up to date: this host already took distribution {} from {} ({})",
                    s.serial,
                    printable(&s.by_node),
                    s.fingerprint_after
                );
            } else {
                println!(
                    "took distribution {} from {} at {}",
                    s.serial,
                    printable(&s.by_node),
                    printable(&s.registry)
                );
                println!("fingerprint before {}", s.fingerprint_before);
                println!("fingerprint after  {}", s.fingerprint_after);
            }
            print_published(&s.published);
            Ok(())
        }
    }
}

fn list(home: &Home, conn: &Conn, json: bool) -> Result<()> {
    let pw = conn.password.read()?;
    let access = Access {
        dsn: conn.dsn.as_deref(),
        password: pw.as_deref().map(|p| &p[..]),
    };
    let l = nodes::list(home, access)?;
    if json {
        return print_json(&l);
    }
    println!(
        "node registry at {}; compared with this node ({}): primary {}, keys {}, fingerprint {}",
        printable(&l.registry.to_string()),
        printable(&l.this_node),
        l.primary_id,
        ids(&Some(l.key_ids.clone())),
        l.fingerprint
    );
    println!(
        "{:<20} {:<10} {:<45} {:<10} {:<8} {:<9} {:<20} {:<12} state",
        "name", "role", "fingerprint", "keys", "primary", "version", "last seen", "distribution"
    );
    for n in &l.nodes {
        let r = &n.record;
        println!(
            "{:<20} {:<10} {:<45} {:<10} {:<8} {:<9} {:<20} {:<12} {}",
            printable(&r.name),
            r.role.label(),
            printable(&r.fingerprint),
            ids(&r.key_ids),
            r.primary_id.map_or("?".into(), |p| p.to_string()),
            r.version.as_deref().map_or("?".into(), printable),
            fmt_time(r.last_seen),
            n.distribution,
            printable(&n.state.to_string())
        );
    }
    if l.nodes.is_empty() {
        println!("(no nodes yet: `keyferry nodes publish` on each node, `keyferry nodes add` for hosts without database access)");
    }
    Ok(())
}
