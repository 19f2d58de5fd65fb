//! Network probes for the preflight: whether a TCP port answers within a
//! timeout, and whether an address belongs to this machine.
//!
//! Both only open and close sockets; nothing is sent.
//!
//! "Is this address mine" is a TCP bind on every platform: a UDP bind is
//! not an answer, since Wine lets a UDP socket bind any address, and so can
//! Linux with `IP_FREEBIND` or `ip_nonlocal_bind` set; a plain TCP bind to
//! an address the machine does not hold is refused everywhere.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Connects to `addr` and closes again; returns how long the connect took.
pub(crate) fn tcp_probe(addr: SocketAddr, timeout: Duration) -> io::Result<Duration> {
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    let elapsed = start.elapsed();
    drop(stream);
    Ok(elapsed)
}

/// Whether `ip` is an address of this machine (in this network
/// namespace): binding a TCP socket to it succeeds only then. The same on
/// Linux, Windows and Wine, and it needs no privilege since port 0 lets the
/// system choose; the listener is closed at once.
pub(crate) fn is_local(ip: IpAddr) -> bool {
    TcpListener::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// A one-line description of a failed probe, with the usual cause.
pub(crate) fn describe_probe_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            "connection refused (nothing listens on that port)".to_owned()
        }
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            "no answer before the timeout (host down or a firewall drops the packets)".to_owned()
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn probes_an_open_and_a_closed_port() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let open = listener.local_addr().unwrap();
        assert!(tcp_probe(open, Duration::from_secs(2)).is_ok());
        drop(listener);
        let err = tcp_probe(open, Duration::from_secs(2)).unwrap_err();
        assert!(describe_probe_error(&err).contains("refused"), "{err}");
    }

    #[test]
    // Runs in the Windows unit tests under Wine too (.ci/windows.sh), where
    // a UDP bind would call every address local.
    fn knows_its_own_addresses() {
        assert!(is_local(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        // Documentation ranges (RFC 5737, RFC 3849): never assigned to a
        // machine.
        for foreign in ["192.0.2.1", "203.0.113.77", "2001:db8::1"] {
            assert!(!is_local(foreign.parse().unwrap()), "{foreign}");
        }
    }
}
