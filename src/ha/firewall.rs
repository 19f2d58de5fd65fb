//! The firewall rules that open this node's PostgreSQL and web-services
//! ports to the other node, as text: which firewall is in charge, the
//! commands that add, list and remove keyferry's rule in each, and the
//! reading of their listings. Nothing here runs a program
//! ([`crate::ops::ha::firewall`] does).
//!
//! Invariants:
//!
//! - a rule always names one TCP port and one peer address, and is found
//!   again by a name carrying both, `keyferry <port> from <peer>` (nftables'
//!   comment, Windows Firewall's rule name), by keyferry's `keyferry` comment
//!   (ufw), or by its exact text (firewalld's rich rules have no comment);
//! - a listing is read for keyferry's rule only: a rule written by someone
//!   else that happens to allow the same traffic is not keyferry's, is not
//!   counted as present and is never removed;
//! - the backends are tried in [`LINUX_ORDER`]: firewalld and ufw write
//!   their own rules into nftables (or iptables), so `nft list ruleset`
//!   shows tables whenever they run, and a rule put beside theirs would be
//!   dropped by their chains and lost at their next reload. Plain nftables
//!   is the firewall only when neither manager runs.

use std::fmt;
use std::net::IpAddr;

use super::PeerAddr;

/// A firewall keyferry can put its rule into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backend {
    Firewalld,
    Ufw,
    Nftables,
    /// Windows Firewall, through `netsh advfirewall`.
    Netsh,
}

/// The Linux backends, in the order they are detected (see the module
/// documentation for why the managers come before plain nftables).
pub(crate) const LINUX_ORDER: [Backend; 3] = [Backend::Firewalld, Backend::Ufw, Backend::Nftables];

/// nftables' table for keyferry's rules (family `inet`): everything in it is
/// keyferry's.
pub(crate) const NFT_TABLE: &str = "keyferry";

impl Backend {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Backend::Firewalld => "firewalld",
            Backend::Ufw => "ufw",
            Backend::Nftables => "nftables",
            Backend::Netsh => "netsh",
        }
    }

    /// The read-only command that tells whether this firewall is active.
    pub(crate) fn probe(self) -> Cmd {
        match self {
            Backend::Firewalld => Cmd::new("firewall-cmd", ["--state"]),
            Backend::Ufw => Cmd::new("ufw", ["status"]),
            Backend::Nftables => Cmd::new("nft", ["list", "ruleset"]),
            Backend::Netsh => Cmd::new("netsh", ["advfirewall", "show", "currentprofile"]),
        }
    }

    /// Whether the probe's outcome says this firewall is the active one.
    pub(crate) fn is_active(self, success: bool, stdout: &str) -> bool {
        if !success {
            return false;
        }
        match self {
            Backend::Firewalld => stdout.trim() == "running",
            Backend::Ufw => stdout
                .lines()
                .next()
                .is_some_and(|l| l.trim() == "Status: active"),
            Backend::Nftables => stdout.lines().any(|l| l.starts_with("table ")),
            // The Windows Firewall service is always there to take rules.
            Backend::Netsh => true,
        }
    }

    /// The read-only command whose output [`Backend::has_rule`] reads.
    pub(crate) fn listing(self, rule: &Rule) -> Cmd {
        match self {
            Backend::Firewalld => Cmd::new("firewall-cmd", ["--list-rich-rules"]),
            Backend::Ufw => Cmd::new("ufw", ["status"]),
            Backend::Nftables => Cmd::new("nft", ["list", "ruleset"]),
            Backend::Netsh => Cmd::new(
                "netsh",
                [
                    "advfirewall",
                    "firewall",
                    "show",
                    "rule",
                    &format!("name=\"{}\"", rule.name()),
                ],
            ),
        }
    }

    /// Whether the listing shows keyferry's `rule`. A failed listing is
    /// read as "absent" only for netsh, which fails when no rule has the
    /// name; for the others the caller cannot tell (it checks `success`).
    pub(crate) fn has_rule(self, rule: &Rule, stdout: &str) -> bool {
        match self {
            Backend::Firewalld => {
                let rich = rule.rich_rule();
                let want = words(&rich);
                stdout.lines().any(|l| words(l) == want)
            }
            Backend::Ufw => ufw_has(rule, stdout),
            Backend::Nftables => nft_has(rule, stdout),
            Backend::Netsh => stdout.lines().any(|l| {
                l.split_once(':')
                    .is_some_and(|(k, v)| k.trim() == "Rule Name" && v.trim() == rule.name())
            }),
        }
    }

    /// The commands that add `rule` (run in order).
    pub(crate) fn add(self, rule: &Rule) -> Vec<Cmd> {
        let port = rule.port.to_string();
        let peer = rule.peer.to_string();
        match self {
            Backend::Firewalld => {
                let rich = format!("--add-rich-rule={}", rule.rich_rule());
                // The running firewall and the saved one, so the rule holds
                // now and after a reload or reboot.
                vec![
                    Cmd::new("firewall-cmd", [rich.as_str()]),
                    Cmd::new("firewall-cmd", ["--permanent", rich.as_str()]),
                ]
            }
            Backend::Ufw => vec![Cmd::new(
                "ufw",
                [
                    "allow", "from", &peer, "to", "any", "port", &port, "proto", "tcp", "comment",
                    "keyferry",
                ],
            )],
            Backend::Nftables => {
                let family = match rule.peer.ip() {
                    IpAddr::V4(_) => "ip",
                    IpAddr::V6(_) => "ip6",
                };
                let comment = format!("\"{}\"", rule.name());
                vec![
                    Cmd::new("nft", ["add", "table", "inet", NFT_TABLE]),
                    Cmd::new(
                        "nft",
                        [
                            "add",
                            "chain",
                            "inet",
                            NFT_TABLE,
                            "input",
                            "{ type filter hook input priority 0 ; policy accept ; }",
                        ],
                    ),
                    Cmd::new(
                        "nft",
                        [
                            "add", "rule", "inet", NFT_TABLE, "input", family, "saddr", &peer,
                            "tcp", "dport", &port, "accept", "comment", &comment,
                        ],
                    ),
                ]
            }
            Backend::Netsh => vec![Cmd::new(
                "netsh",
                [
                    "advfirewall",
                    "firewall",
                    "add",
                    "rule",
                    &format!("name=\"{}\"", rule.name()),
                    "dir=in",
                    "action=allow",
                    "protocol=TCP",
                    &format!("localport={port}"),
                    &format!("remoteip={peer}"),
                ],
            )],
        }
    }

    /// The commands that remove keyferry's `rule` and nothing else. For
    /// nftables, `nft_handle` is the rule's handle from
    /// `nft -a list table inet keyferry` (see [`nft_handle`]).
    pub(crate) fn remove(self, rule: &Rule, nft_handle: Option<u64>) -> Vec<Cmd> {
        let port = rule.port.to_string();
        let peer = rule.peer.to_string();
        match self {
            Backend::Firewalld => {
                let rich = format!("--remove-rich-rule={}", rule.rich_rule());
                vec![
                    Cmd::new("firewall-cmd", [rich.as_str()]),
                    Cmd::new("firewall-cmd", ["--permanent", rich.as_str()]),
                ]
            }
            // ufw matches a rule to delete by what it allows; the caller
            // removes it only after the listing showed it with keyferry's
            // comment.
            Backend::Ufw => vec![Cmd::new(
                "ufw",
                [
                    "delete", "allow", "from", &peer, "to", "any", "port", &port, "proto", "tcp",
                ],
            )],
            Backend::Nftables => match nft_handle {
                Some(h) => vec![Cmd::new(
                    "nft",
                    [
                        "delete",
                        "rule",
                        "inet",
                        NFT_TABLE,
                        "input",
                        "handle",
                        &h.to_string(),
                    ],
                )],
                None => Vec::new(),
            },
            Backend::Netsh => vec![Cmd::new(
                "netsh",
                [
                    "advfirewall",
                    "firewall",
                    "delete",
                    "rule",
                    &format!("name=\"{}\"", rule.name()),
                ],
            )],
        }
    }
}

/// One port opened to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub port: u16,
    pub peer: PeerAddr,
}

impl Rule {
    /// `keyferry <port> from <peer>`: how keyferry finds its rule again.
    pub(crate) fn name(&self) -> String {
        format!("keyferry {} from {}", self.port, self.peer)
    }

    /// firewalld's rich rule, in the form `--list-rich-rules` prints back.
    pub(crate) fn rich_rule(&self) -> String {
        let family = match self.peer.ip() {
            IpAddr::V4(_) => "ipv4",
            IpAddr::V6(_) => "ipv6",
        };
        format!(
            "rule family=\"{family}\" source address=\"{}\" port port=\"{}\" protocol=\"tcp\" accept",
            self.peer, self.port
        )
    }
}

fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// ufw's `status` table: `5432/tcp  ALLOW  10.0.0.2  # keyferry` (the
/// action may read `ALLOW IN`; the `(v6)` forms are for IPv6 peers).
fn ufw_has(rule: &Rule, stdout: &str) -> bool {
    let to = format!("{}/tcp", rule.port);
    let peer = rule.peer.to_string();
    stdout.lines().any(|line| {
        let Some((rule_part, comment)) = line.split_once('#') else {
            return false;
        };
        if comment.trim() != "keyferry" {
            return false;
        }
        let w = words(rule_part);
        let Some((first, rest)) = w.split_first() else {
            return false;
        };
        let first_ok = *first == to;
        let rest: Vec<&str> = rest.iter().copied().filter(|x| *x != "(v6)").collect();
        first_ok
            && rest.first() == Some(&"ALLOW")
            && rest.last() == Some(&peer.as_str())
            && rest.len() <= 3
    })
}

/// The lines of `table inet keyferry { … }` in `nft list ruleset` (or
/// `nft -a list table inet keyferry`).
fn nft_table_lines(stdout: &str) -> impl Iterator<Item = &str> {
    let header = format!("table inet {NFT_TABLE} {{");
    stdout
        .lines()
        .skip_while(move |l| !l.trim().starts_with(&header))
        .skip(1)
        .take_while(|l| *l != "}")
}

fn nft_comment_is(line: &str, rule: &Rule) -> bool {
    line.trim_end()
        .strip_suffix(&format!("comment \"{}\"", rule.name()))
        .is_some()
        || line.contains(&format!("comment \"{}\" # handle ", rule.name()))
}

fn nft_has(rule: &Rule, stdout: &str) -> bool {
    nft_table_lines(stdout).any(|l| nft_comment_is(l, rule))
}

/// The listing [`nft_handle`] reads: keyferry's table with the rules'
/// handles.
pub(crate) fn nft_handles_listing() -> Cmd {
    Cmd::new("nft", ["-a", "list", "table", "inet", NFT_TABLE])
}

/// The handle of keyferry's `rule` in `nft -a list table inet keyferry`.
pub(crate) fn nft_handle(rule: &Rule, stdout: &str) -> Option<u64> {
    nft_table_lines(stdout)
        .filter(|l| nft_comment_is(l, rule))
        .find_map(|l| l.rsplit_once("# handle ")?.1.trim().parse().ok())
}

/// A program and its arguments, printable as one shell line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cmd {
    pub program: &'static str,
    pub args: Vec<String>,
}

impl Cmd {
    fn new<'a>(program: &'static str, args: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            program,
            args: args.into_iter().map(str::to_owned).collect(),
        }
    }
}

impl fmt::Display for Cmd {
    /// POSIX shell quoting, except netsh's arguments, which are written as
    /// netsh reads them (`name="…"`) on a Windows command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program)?;
        for a in &self.args {
            let plain = a
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
            if plain || self.program == "netsh" {
                write!(f, " {a}")?;
            } else {
                write!(f, " '{}'", a.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(port: u16, peer: &str) -> Rule {
        Rule {
            port,
            peer: PeerAddr::parse(peer).unwrap(),
        }
    }

    const NFT_RULESET: &str = "table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 5432 accept comment \"keyferry 5432 from 10.0.0.2\"
\t}
}
table inet keyferry {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tip saddr 10.0.0.2 tcp dport 5432 accept comment \"keyferry 5432 from 10.0.0.2\"
\t}
}
";

    #[test]
    fn nft_finds_its_rule_only_in_its_table() {
        assert!(nft_has(&rule(5432, "10.0.0.2"), NFT_RULESET));
        assert!(!nft_has(&rule(6500, "10.0.0.2"), NFT_RULESET));
        // The same comment in another table is someone else's.
        let other_only = NFT_RULESET.split("table inet keyferry").next().unwrap();
        assert!(!nft_has(&rule(5432, "10.0.0.2"), other_only));
        assert!(!nft_has(&rule(5432, "10.0.0.20"), NFT_RULESET));
    }

    #[test]
    fn nft_handle_from_the_annotated_listing() {
        let listing = "table inet keyferry { # handle 7
\tchain input { # handle 1
\t\ttype filter hook input priority filter; policy accept;
\t\tip saddr 10.0.0.2 tcp dport 5432 accept comment \"keyferry 5432 from 10.0.0.2\" # handle 2
\t\tip saddr 10.0.0.2 tcp dport 6500 accept comment \"keyferry 6500 from 10.0.0.2\" # handle 3
\t}
}
";
        assert_eq!(nft_handle(&rule(6500, "10.0.0.2"), listing), Some(3));
        assert_eq!(nft_handle(&rule(5432, "10.0.0.2"), listing), Some(2));
        assert_eq!(nft_handle(&rule(5433, "10.0.0.2"), listing), None);
    }

    #[test]
    fn nft_is_active_only_with_a_table() {
        assert!(Backend::Nftables.is_active(true, NFT_RULESET));
        assert!(!Backend::Nftables.is_active(true, ""));
        assert!(!Backend::Nftables.is_active(false, NFT_RULESET));
    }

    #[test]
    fn nft_add_commands() {
        let shown: Vec<String> = Backend::Nftables
            .add(&rule(5432, "10.0.0.2"))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "nft add table inet keyferry",
                "nft add chain inet keyferry input '{ type filter hook input priority 0 ; policy accept ; }'",
                "nft add rule inet keyferry input ip saddr 10.0.0.2 tcp dport 5432 accept comment '\"keyferry 5432 from 10.0.0.2\"'",
            ]
        );
        let v6 = Backend::Nftables.add(&rule(5432, "2001:db8::2"));
        assert!(v6[2].args.contains(&"ip6".to_owned()));
    }

    #[test]
    fn firewalld_rich_rules() {
        let r = rule(5432, "10.0.0.2");
        assert!(Backend::Firewalld.is_active(true, "running\n"));
        assert!(!Backend::Firewalld.is_active(false, "not running\n"));
        let listing = "rule family=\"ipv4\" source address=\"10.0.0.2\" port port=\"5432\" protocol=\"tcp\" accept\n\
                       rule family=\"ipv4\" source address=\"10.0.0.9\" port port=\"6500\" protocol=\"tcp\" accept\n";
        assert!(Backend::Firewalld.has_rule(&r, listing));
        assert!(!Backend::Firewalld.has_rule(&rule(6500, "10.0.0.2"), listing));
        assert!(!Backend::Firewalld.has_rule(&r, ""));
        assert_eq!(
            Backend::Firewalld.add(&r)[1].to_string(),
            "firewall-cmd --permanent '--add-rich-rule=rule family=\"ipv4\" source address=\"10.0.0.2\" port port=\"5432\" protocol=\"tcp\" accept'"
        );
    }

    const UFW_STATUS: &str = "Status: active

To                         Action      From
--                         ------      ----
22/tcp                     ALLOW       Anywhere
5432/tcp                   ALLOW       10.0.0.2                   # keyferry
6500/tcp                   ALLOW       10.0.0.2
22/tcp (v6)                ALLOW       Anywhere (v6)
";

    #[test]
    fn ufw_status() {
        assert!(Backend::Ufw.is_active(true, UFW_STATUS));
        assert!(!Backend::Ufw.is_active(true, "Status: inactive\n"));
        assert!(Backend::Ufw.has_rule(&rule(5432, "10.0.0.2"), UFW_STATUS));
        // The same traffic allowed without keyferry's comment is not keyferry's.
        assert!(!Backend::Ufw.has_rule(&rule(6500, "10.0.0.2"), UFW_STATUS));
        assert!(!Backend::Ufw.has_rule(&rule(5432, "10.0.0.3"), UFW_STATUS));
        let v6 = "5432/tcp (v6)              ALLOW IN    2001:db8::2                # keyferry\n";
        assert!(Backend::Ufw.has_rule(&rule(5432, "2001:db8::2"), v6));
        assert_eq!(
            Backend::Ufw.add(&rule(5432, "10.0.0.2"))[0].to_string(),
            "ufw allow from 10.0.0.2 to any port 5432 proto tcp comment keyferry"
        );
    }

    #[test]
    fn netsh_show_rule() {
        let shown = "
Rule Name:                            keyferry 5432 from 10.0.0.2
----------------------------------------------------------------------
Enabled:                              Yes
Direction:                            In
Profiles:                             Domain,Private,Public
Grouping:
LocalIP:                              Any
RemoteIP:                             10.0.0.2/32
Protocol:                             TCP
LocalPort:                            5432
RemotePort:                           Any
Edge traversal:                       No
Action:                               Allow
Ok.
";
        let r = rule(5432, "10.0.0.2");
        assert!(Backend::Netsh.has_rule(&r, shown));
        assert!(!Backend::Netsh.has_rule(&r, "\nNo rules match the specified criteria.\n"));
        assert!(!Backend::Netsh.has_rule(&rule(5432, "10.0.0.20"), shown));
        assert_eq!(
            Backend::Netsh.add(&r)[0].to_string(),
            "netsh advfirewall firewall add rule name=\"keyferry 5432 from 10.0.0.2\" dir=in action=allow protocol=TCP localport=5432 remoteip=10.0.0.2"
        );
        assert_eq!(
            Backend::Netsh.listing(&r).to_string(),
            "netsh advfirewall firewall show rule name=\"keyferry 5432 from 10.0.0.2\""
        );
    }
}
