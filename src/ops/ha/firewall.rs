//! `keyferry ha firewall [--dry-run] [--remove]`: opens this node's
//! PostgreSQL port (`pg_port`) and web-services port (`web_port`) to the
//! other node of `ha.toml`, and to it only, in the firewall that is in
//! charge; and the `firewall` fact of `ha check`.
//!
//! This module runs the firewall's programs; what they are given and how
//! their listings are read is [`crate::ha::firewall`]'s. Invariants:
//!
//! - the firewall is found by read-only probes (firewalld, ufw, nftables on
//!   Linux, in that order; Windows Firewall on Windows). When none is
//!   active, nothing is changed: the report gives the commands for each of
//!   the three and the command succeeds (exit 0), since there is no rule to
//!   add where nothing filters;
//! - a rule already present is not added again, a rule absent is not
//!   removed, and only keyferry's rules (found by their name or comment)
//!   are ever removed;
//! - `--dry-run` runs the read-only probes and listings, and nothing that
//!   changes the firewall;
//! - a real change is one audit record (`ha-firewall` or
//!   `ha-firewall-remove`) naming the backend, the peer and the rules,
//!   through the node's change type. A firewall's command is not undone by
//!   keyferry when a later one fails: the record says how far it went, and
//!   running the command again completes it (each step is idempotent).

use std::process::{Command, Output};

use serde::Serialize;
use serde_json::Value;

use super::require_config;
use super::roles::this_side;
use crate::error::{Error, Result};
use crate::ha::config::HaConfig;
use crate::ha::firewall::{self, Backend, Cmd, Rule, LINUX_ORDER};
use crate::ha::preflight::{Fact, Side};
use crate::ops::{details, Home};

/// What `ha firewall` was asked.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FirewallOptions {
    pub dry_run: bool,
    pub remove: bool,
}

/// One of keyferry's rules and what became of it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RuleState {
    pub name: String,
    pub port: u16,
    /// `pg` or `web`.
    pub service: &'static str,
    /// `present`, `added`, `would add`, `absent`, `removed`, `would remove`,
    /// or `not checked` (no firewall active).
    pub state: &'static str,
}

/// The commands for one firewall, when none is active.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ManualRules {
    pub backend: Backend,
    pub commands: Vec<String>,
}

/// What `ha firewall` did, or would do.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FirewallReport {
    pub peer: String,
    /// The active firewall; `None` when none was found.
    pub backend: Option<Backend>,
    pub dry_run: bool,
    pub remove: bool,
    pub rules: Vec<RuleState>,
    /// The commands run (or, with `--dry-run`, that would run).
    pub commands: Vec<String>,
    /// With no firewall active: the commands for each of them, none run.
    pub manual: Vec<ManualRules>,
    pub audited: bool,
}

/// The rules for this node: its two ports, from the peer.
fn rules_of(config: &HaConfig, side: Side) -> Vec<(Rule, &'static str)> {
    let peer = match side {
        Side::Primary => config.secondary,
        Side::Secondary => config.primary,
    };
    let mut rules = vec![(
        Rule {
            port: config.pg_port,
            peer,
        },
        "pg",
    )];
    if config.web_port != config.pg_port {
        rules.push((
            Rule {
                port: config.web_port,
                peer,
            },
            "web",
        ));
    }
    rules
}

#[cfg(windows)]
fn command(cmd: &Cmd) -> Command {
    use std::os::windows::process::CommandExt;
    // netsh reads `name="keyferry 5432 from …"` itself: the argument goes on
    // the command line as written, not re-quoted as a whole.
    let mut c = Command::new(cmd.program);
    for a in &cmd.args {
        c.raw_arg(a);
    }
    c
}

#[cfg(not(windows))]
fn command(cmd: &Cmd) -> Command {
    let mut c = Command::new(cmd.program);
    // The listings are read in English.
    c.args(&cmd.args).env("LC_ALL", "C");
    c
}

fn run(cmd: &Cmd) -> std::io::Result<Output> {
    tracing::debug!(command = %cmd, "ha firewall: running");
    command(cmd).output()
}

fn first_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let text = if err.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout)
    } else {
        err
    };
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_owned()
}

/// The active firewall, by the probes in order; `None` when none is.
fn detect() -> Option<Backend> {
    if cfg!(windows) {
        return Some(Backend::Netsh);
    }
    LINUX_ORDER.into_iter().find(|b| match run(&b.probe()) {
        Ok(out) => b.is_active(out.status.success(), &String::from_utf8_lossy(&out.stdout)),
        Err(_) => false,
    })
}

/// Whether keyferry's `rule` is in `backend`; `Err` with why it cannot
/// tell.
fn present(backend: Backend, rule: &Rule) -> std::result::Result<bool, String> {
    let listing = backend.listing(rule);
    let out = run(&listing).map_err(|e| format!("`{listing}` cannot run: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // netsh fails when no rule has the name: that is "absent".
    if !out.status.success() && backend != Backend::Netsh {
        return Err(format!("`{listing}` failed: {}", first_line(&out)));
    }
    Ok(backend.has_rule(rule, &stdout))
}

/// `keyferry ha firewall`.
pub(crate) fn firewall(home: &Home, opts: FirewallOptions) -> Result<FirewallReport> {
    let config = require_config(home)?;
    let side = this_side(&config, "keyferry ha firewall")?;
    let rules = rules_of(&config, side);
    let peer = rules[0].0.peer;
    let mut report = FirewallReport {
        peer: peer.to_string(),
        backend: None,
        dry_run: opts.dry_run,
        remove: opts.remove,
        rules: Vec::new(),
        commands: Vec::new(),
        manual: Vec::new(),
        audited: false,
    };
    let state = |rule: &Rule, service, state| RuleState {
        name: rule.name(),
        port: rule.port,
        service,
        state,
    };
    let Some(backend) = detect() else {
        report.rules = rules
            .iter()
            .map(|(r, s)| state(r, s, "not checked"))
            .collect();
        report.manual = LINUX_ORDER
            .into_iter()
            .map(|b| ManualRules {
                backend: b,
                commands: unique(rules.iter().flat_map(|(r, _)| {
                    if opts.remove {
                        b.remove(r, None)
                    } else {
                        b.add(r)
                    }
                })),
            })
            .collect();
        return Ok(report);
    };
    report.backend = Some(backend);
    let nft_listing = if opts.remove && backend == Backend::Nftables {
        let listing = firewall::nft_handles_listing();
        let out = run(&listing).map_err(|e| cannot_read(backend, &listing, e.to_string()))?;
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::new()
    };
    let mut commands = Vec::new();
    for (rule, service) in &rules {
        let here = present(backend, rule)
            .map_err(|why| cannot_read(backend, &backend.listing(rule), why))?;
        let verb = match (opts.remove, here, opts.dry_run) {
            (false, true, _) => "present",
            (true, false, _) => "absent",
            (false, false, true) => "would add",
            (false, false, false) => "added",
            (true, true, true) => "would remove",
            (true, true, false) => "removed",
        };
        match (opts.remove, here) {
            (false, false) => commands.extend(backend.add(rule)),
            (true, true) => {
                commands.extend(backend.remove(rule, firewall::nft_handle(rule, &nft_listing)))
            }
            _ => {}
        }
        report.rules.push(state(rule, service, verb));
    }
    let commands = unique_cmds(commands);
    report.commands = commands.iter().map(ToString::to_string).collect();
    if opts.dry_run || commands.is_empty() {
        return Ok(report);
    }
    let changed: Vec<Value> = report
        .rules
        .iter()
        .filter(|r| r.state == "added" || r.state == "removed")
        .map(|r| Value::from(r.name.clone()))
        .collect();
    let mut node = home.open(true)?;
    let action = if opts.remove {
        "ha-firewall-remove"
    } else {
        "ha-firewall"
    };
    let mut change = node.begin(
        action,
        details([
            ("backend", Value::from(backend.as_str())),
            ("peer", Value::from(peer.to_string())),
            ("rules", Value::from(changed)),
        ]),
    )?;
    change.irreversible("changing the firewall", Vec::new(), |progress| {
        for (i, cmd) in commands.iter().enumerate() {
            let out = run(cmd).map_err(|e| {
                Error::Refused(format!(
                    "`{cmd}` cannot run ({e}); the commands before it ran: install or fix {}, then run `keyferry ha firewall` again",
                    backend.as_str()
                ))
            })?;
            if !out.status.success() {
                return Err(Error::Refused(format!(
                    "`{cmd}` failed ({}); the commands before it ran: fix that (as root?), then run `keyferry ha firewall` again",
                    first_line(&out)
                )));
            }
            progress.set("commands_run", i + 1);
        }
        Ok(())
    })?;
    report.audited = change.finish()?.audited;
    Ok(report)
}

fn cannot_read(backend: Backend, listing: &Cmd, why: String) -> Error {
    Error::Refused(format!(
        "cannot read {}'s rules ({why}); nothing was changed: run `{listing}` (as root) to see why, or run keyferry as root",
        backend.as_str()
    ))
}

fn unique_cmds(cmds: Vec<Cmd>) -> Vec<Cmd> {
    let mut seen = Vec::new();
    for c in cmds {
        if !seen.contains(&c) {
            seen.push(c);
        }
    }
    seen
}

fn unique(cmds: impl Iterator<Item = Cmd>) -> Vec<String> {
    unique_cmds(cmds.collect())
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// `ha check`'s `firewall` fact: whether keyferry's rules open this node's
/// ports to the peer. `warn` when one is missing or when it cannot tell.
pub(crate) fn fact(config: &HaConfig, side: Option<Side>) -> Fact {
    const NAME: &str = "firewall";
    const FIX: &str = "keyferry ha firewall";
    let Some(side) = side else {
        return Fact::warn(
            NAME,
            "cannot tell whether the firewall lets the peer in: this machine is neither node",
            "run `keyferry ha check` on one of the two nodes",
        );
    };
    let rules = rules_of(config, side);
    let Some(backend) = detect() else {
        return Fact::warn(
            NAME,
            "cannot tell whether the firewall lets the peer in: no active firewall found \
             (`firewall-cmd --state`, `ufw status`, `nft list ruleset`; ufw and nft answer root only)",
            format!("{FIX} (prints the rules to add when it finds no firewall)"),
        );
    };
    let mut missing = Vec::new();
    for (rule, _) in &rules {
        match present(backend, rule) {
            Ok(true) => {}
            Ok(false) => missing.push(rule.name()),
            Err(why) => {
                return Fact::warn(
                    NAME,
                    format!(
                        "cannot tell whether {} holds keyferry's rules: {why}",
                        backend.as_str()
                    ),
                    format!("run `keyferry ha check` as root, or {FIX}"),
                )
            }
        }
    }
    let ports: Vec<String> = rules.iter().map(|(r, _)| r.port.to_string()).collect();
    if missing.is_empty() {
        Fact::ok(
            NAME,
            format!(
                "{} opens port {} to {} (keyferry's rules)",
                backend.as_str(),
                ports.join(" and "),
                rules[0].0.peer
            ),
        )
    } else {
        Fact::warn(
            NAME,
            format!(
                "{} lacks keyferry's rule {}",
                backend.as_str(),
                missing.join(", ")
            ),
            FIX,
        )
    }
}
