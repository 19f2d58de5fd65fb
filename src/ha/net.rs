//! Network probes for the preflight: whether a TCP port answers within a
//! timeout, and whether an address belongs to this machine.
//!
//! Both only open and close sockets; nothing is sent.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
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
/// namespace): binding a socket to it succeeds only then. Portable, and it
/// needs no privilege since port 0 lets the system choose.
pub(crate) fn is_local(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
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
    use std::net::{Ipv4Addr, TcpListener};

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
    // Wine (where CI runs the Windows build) lets a socket bind any
    // address; real Windows refuses a foreign one like Linux does.
    #[cfg_attr(windows, ignore = "Wine binds foreign addresses; run on real Windows")]
    fn knows_its_own_addresses() {
        assert!(is_local(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        // TEST-NET-3 (RFC 5737) is never assigned to a machine.
        assert!(!is_local("203.0.113.77".parse().unwrap()));
    }
}
