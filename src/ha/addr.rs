//! Peer and node addresses of the HA pair.
//!
//! Owns the rule for what an operator may give as a node address: an IPv4 or
//! IPv6 literal that names one other host. Invariant kept by [`PeerAddr`]:
//! its address can be written into `pg_hba.conf` as `IP/32` or `IP/128` and
//! means the same host on both nodes. That is why host names are refused (they
//! may resolve differently on each node, and PostgreSQL would have to resolve
//! them at every connection), and so are addresses that name no single remote
//! host (loopback, unspecified, multicast, broadcast) and the spellings that
//! `pg_hba.conf` cannot hold or would match differently (zone ids, prefixes,
//! IPv4-mapped IPv6).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::ha::error::{AddrRejection, Error};

/// Prefix length of a single-host IPv4 entry in `pg_hba.conf`.
const IPV4_HOST_PREFIX: u8 = 32;
/// Prefix length of a single-host IPv6 entry in `pg_hba.conf`.
const IPV6_HOST_PREFIX: u8 = 128;

/// A validated address of a node of the pair. See the module docs for what
/// is refused and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr(IpAddr);

impl PeerAddr {
    /// Parses an operator-supplied address. Surrounding whitespace is
    /// ignored (values are often pasted); anything else that is not a plain
    /// IP literal naming one remote host is refused with the reason.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let trimmed = input.trim();
        let refuse = |reason| Error::Address {
            input: input.to_owned(),
            reason,
        };
        if trimmed.is_empty() {
            return Err(refuse(AddrRejection::Empty));
        }
        let ip = match trimmed.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return Err(refuse(why_not_an_ip(trimmed))),
        };
        if let Some(reason) = unusable(ip) {
            return Err(refuse(reason));
        }
        Ok(Self(ip))
    }

    /// The address itself.
    pub fn ip(&self) -> IpAddr {
        self.0
    }

    /// The single-host entry for `pg_hba.conf`: `IP/32` or `IP/128`.
    pub(crate) fn hba_cidr(&self) -> String {
        let prefix = match self.0 {
            IpAddr::V4(_) => IPV4_HOST_PREFIX,
            IpAddr::V6(_) => IPV6_HOST_PREFIX,
        };
        format!("{}/{prefix}", self.0)
    }
}

impl fmt::Display for PeerAddr {
    /// The canonical text form (`10.0.0.2`, `2001:db8::2`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for PeerAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<IpAddr> for PeerAddr {
    type Error = Error;

    /// Applies the same checks as [`PeerAddr::parse`] to an address that is
    /// already parsed (for example one read from a socket).
    fn try_from(ip: IpAddr) -> Result<Self, Error> {
        match unusable(ip) {
            Some(reason) => Err(Error::Address {
                input: ip.to_string(),
                reason,
            }),
            None => Ok(Self(ip)),
        }
    }
}

/// Why a valid IP literal cannot be a peer, or `None` when it can.
fn unusable(ip: IpAddr) -> Option<AddrRejection> {
    match ip {
        IpAddr::V4(v4) => unusable_v4(v4),
        IpAddr::V6(v6) => {
            // Checked first: `::ffff:127.0.0.1` should be told to use the
            // IPv4 form, which then gets its own verdict.
            if v6.to_ipv4_mapped().is_some() {
                return Some(AddrRejection::Ipv4Mapped);
            }
            if v6.is_loopback() {
                Some(AddrRejection::Loopback)
            } else if v6.is_unspecified() {
                Some(AddrRejection::Unspecified)
            } else if v6.is_multicast() {
                Some(AddrRejection::Multicast)
            } else if v6.to_ipv4().is_some() {
                // The deprecated IPv4-compatible form `::a.b.c.d`: like the
                // mapped form, it would never match the peer's IPv4 packets.
                Some(AddrRejection::Ipv4Mapped)
            } else {
                None
            }
        }
    }
}

fn unusable_v4(v4: Ipv4Addr) -> Option<AddrRejection> {
    if v4.is_loopback() {
        Some(AddrRejection::Loopback)
    } else if v4.is_unspecified() {
        Some(AddrRejection::Unspecified)
    } else if v4.is_multicast() {
        Some(AddrRejection::Multicast)
    } else if v4.is_broadcast() {
        Some(AddrRejection::Broadcast)
    } else {
        None
    }
}

/// Explains why `s` (trimmed, non-empty) is not an IP literal, most specific
/// reason first, so the operator learns the fix rather than just "invalid".
fn why_not_an_ip(s: &str) -> AddrRejection {
    if let Some((addr, _zone)) = s.split_once('%') {
        if addr.parse::<Ipv6Addr>().is_ok() {
            return AddrRejection::ZoneId;
        }
    }
    if let Some((addr, _prefix)) = s.split_once('/') {
        if addr.parse::<IpAddr>().is_ok() {
            return AddrRejection::CidrSuffix;
        }
    }
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.split_once(']').map_or(inner, |(addr, _port)| addr);
        if inner.parse::<Ipv6Addr>().is_ok() || inner.split_once('%').is_some() {
            return AddrRejection::Brackets;
        }
    }
    if let Some((addr, port)) = s.rsplit_once(':') {
        if addr.parse::<Ipv4Addr>().is_ok() && port.parse::<u16>().is_ok() {
            return AddrRejection::PortSuffix;
        }
    }
    // Only digits and dots, or hex digits and colons: an attempt at an
    // address, not a name (a host name cannot be all-numeric, RFC 1123).
    let ipv4_like = s.chars().all(|c| c.is_ascii_digit() || c == '.');
    let ipv6_like = s.contains(':')
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    if ipv4_like || ipv6_like {
        AddrRejection::Malformed
    } else {
        AddrRejection::HostName
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(input: &str) -> AddrRejection {
        match PeerAddr::parse(input) {
            Err(Error::Address { reason, .. }) => reason,
            other => panic!("{input:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn accepts_ip_literals_of_other_hosts() {
        let cases = [
            ("10.0.0.2", "10.0.0.2", "10.0.0.2/32"),
            ("192.168.1.20", "192.168.1.20", "192.168.1.20/32"),
            (" 10.0.0.2\n", "10.0.0.2", "10.0.0.2/32"),
            ("2001:db8::2", "2001:db8::2", "2001:db8::2/128"),
            ("2001:DB8:0:0::2", "2001:db8::2", "2001:db8::2/128"),
            ("fe80::1", "fe80::1", "fe80::1/128"),
            ("fd00::10", "fd00::10", "fd00::10/128"),
        ];
        for (input, display, cidr) in cases {
            let peer = PeerAddr::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(peer.to_string(), display, "display of {input:?}");
            assert_eq!(peer.hba_cidr(), cidr, "cidr of {input:?}");
        }
    }

    #[test]
    fn refuses_each_kind_of_unusable_address_with_its_reason() {
        use AddrRejection::*;
        let cases = [
            ("", Empty),
            ("   ", Empty),
            ("localhost", HostName),
            ("db-primary", HostName),
            ("db.example.com", HostName),
            ("127.0.0.1", Loopback),
            ("127.1.2.3", Loopback),
            ("::1", Loopback),
            ("0.0.0.0", Unspecified),
            ("::", Unspecified),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("ff02::1", Multicast),
            ("255.255.255.255", Broadcast),
            ("fe80::1%eth0", ZoneId),
            ("fe80::1%2", ZoneId),
            ("10.0.0.2/32", CidrSuffix),
            ("10.0.0.0/24", CidrSuffix),
            ("2001:db8::2/128", CidrSuffix),
            ("::ffff:10.0.0.2", Ipv4Mapped),
            ("::ffff:127.0.0.1", Ipv4Mapped),
            ("::10.0.0.2", Ipv4Mapped),
            ("[2001:db8::2]", Brackets),
            ("[2001:db8::2]:5432", Brackets),
            ("10.0.0.2:5432", PortSuffix),
            ("10.0.0.300", Malformed),
            ("10.0.0", Malformed),
            ("010.0.0.2", Malformed),
            ("2001:db8:::2", Malformed),
        ];
        for (input, expected) in cases {
            assert_eq!(rejection(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn messages_say_why_and_what_to_do() {
        let zone = PeerAddr::parse("fe80::1%eth0").unwrap_err().to_string();
        assert!(
            zone.contains("zone ids") && zone.contains("pg_hba.conf"),
            "{zone}"
        );
        let host = PeerAddr::parse("localhost").unwrap_err().to_string();
        assert!(
            host.contains("host names") && host.contains("IP address"),
            "{host}"
        );
        let mapped = PeerAddr::parse("::ffff:10.0.0.2").unwrap_err().to_string();
        assert!(mapped.contains("IPv4 form"), "{mapped}");
        for message in [zone, host, mapped] {
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[test]
    fn parsed_ip_addresses_go_through_the_same_checks() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(PeerAddr::try_from(loopback).is_err());
        let fine: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(PeerAddr::try_from(fine).unwrap().ip(), fine);
    }
}
