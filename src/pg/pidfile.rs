//! `postmaster.pid`: the file a running PostgreSQL server keeps in its data
//! directory, read to learn how to reach that server.
//!
//! This module owns reading it; it never writes, removes or locks it. The
//! lines, as PostgreSQL's `miscadmin.h` numbers them (`LOCK_FILE_LINE_*`):
//! 1 the postmaster's PID, 2 the data directory, 3 the start time, 4 the
//! port, 5 the first Unix socket directory (empty when none), 6 the first
//! listen address (empty when none, `*` for every address), 7 the shared
//! memory key, 8 the status (`starting`, `ready`, `stopping`, `standby`).
//! Lines 5 to 8 appear as the server starts up, so they may be missing.
//!
//! Invariant: a file whose lines 1 to 4 are not there, or whose PID or port
//! is not a number, is malformed and reported as such, never guessed at.

use std::fmt;
use std::path::PathBuf;

use super::Endpoint;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "postmaster.pid";

/// What `postmaster.pid` says about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostmasterPid {
    /// Line 1: the postmaster's process id (negative for a single-user
    /// backend, which listens nowhere).
    pub pid: i64,
    /// Line 2: the data directory.
    pub data_dir: PathBuf,
    /// Line 4: the port (also part of the Unix socket's name).
    pub port: u16,
    /// Line 5: the first Unix socket directory, if any.
    pub socket_dir: Option<PathBuf>,
    /// Line 6: the first listen address, if any (`*`: every address).
    pub listen_address: Option<String>,
}

/// Why a `postmaster.pid` cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidFileProblem {
    /// Fewer than the four lines every server writes at once.
    TooShort {
        /// Lines found.
        lines: usize,
    },
    /// Line 1 is not a process id.
    BadPid(String),
    /// Line 4 is not a port (1 to 65535).
    BadPort(String),
}

impl fmt::Display for PidFileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { lines } => write!(
                f,
                "it has {lines} lines, fewer than the 4 a running server writes (PID, data directory, start time, port)"
            ),
            Self::BadPid(text) => write!(f, "line 1 should be a process id, not {text:?}"),
            Self::BadPort(text) => write!(f, "line 4 should be a port, not {text:?}"),
        }
    }
}

/// Parses the file's text (LF or CRLF).
pub fn parse(text: &str) -> Result<PostmasterPid, PidFileProblem> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    if lines.len() < 4 {
        return Err(PidFileProblem::TooShort { lines: lines.len() });
    }
    let pid = lines[0]
        .parse::<i64>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| PidFileProblem::BadPid(lines[0].to_owned()))?;
    let port = lines[3]
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| PidFileProblem::BadPort(lines[3].to_owned()))?;
    let nonempty = |i: usize| {
        lines
            .get(i)
            .filter(|l| !l.is_empty())
            .map(|l| l.to_string())
    };
    Ok(PostmasterPid {
        pid,
        data_dir: PathBuf::from(lines[1]),
        port,
        socket_dir: nonempty(4).map(PathBuf::from),
        listen_address: nonempty(5),
    })
}

impl PostmasterPid {
    /// Where the server answers on this machine, best first, on `port`
    /// (the file's own unless the caller overrides it): its Unix socket
    /// (Unix only), then its listen address over TCP (a wildcard address
    /// becomes loopback). On Windows, where there is no socket, loopback
    /// comes before a listen address of another kind: the file names only
    /// the first of `listen_addresses`, and initdb's `pg_hba.conf` admits
    /// the local administrator on loopback alone. Empty for a single-user
    /// backend.
    pub fn endpoints(&self, port: u16) -> Vec<Endpoint> {
        if self.pid < 0 {
            return Vec::new();
        }
        let mut endpoints = Vec::new();
        if cfg!(unix) {
            if let Some(dir) = &self.socket_dir {
                endpoints.push(Endpoint::Socket {
                    dir: dir.clone(),
                    port,
                });
            }
        }
        if let Some(address) = &self.listen_address {
            let host = match address.as_str() {
                "*" | "0.0.0.0" => "127.0.0.1",
                "::" => "::1",
                other => other,
            };
            if cfg!(windows) && !matches!(host, "127.0.0.1" | "::1" | "localhost") {
                endpoints.push(Endpoint::Tcp {
                    host: "127.0.0.1".to_owned(),
                    port,
                });
            }
            endpoints.push(Endpoint::Tcp {
                host: host.to_owned(),
                port,
            });
        }
        endpoints
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What PostgreSQL 15 wrote for a test server.
    const PG15: &str = "4242\n/tmp/keyferry-pg-x/data\n1764586000\n5433\n/tmp/keyferry-pg-x/sock\n127.0.0.1\n  5433001  32769\nready   \n";

    #[test]
    fn reads_what_postgres_writes() {
        let pid = parse(PG15).unwrap();
        assert_eq!(
            pid,
            PostmasterPid {
                pid: 4242,
                data_dir: PathBuf::from("/tmp/keyferry-pg-x/data"),
                port: 5433,
                socket_dir: Some(PathBuf::from("/tmp/keyferry-pg-x/sock")),
                listen_address: Some("127.0.0.1".into()),
            }
        );
        let endpoints = pid.endpoints(5433);
        let tcp = Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: 5433,
        };
        if cfg!(unix) {
            let socket = Endpoint::Socket {
                dir: PathBuf::from("/tmp/keyferry-pg-x/sock"),
                port: 5433,
            };
            assert_eq!(endpoints, [socket, tcp]);
        } else {
            assert_eq!(endpoints, [tcp]);
        }
        assert_eq!(parse(&PG15.replace('\n', "\r\n")).unwrap(), pid, "CRLF");
    }

    #[test]
    fn empty_and_missing_lines_mean_no_socket_or_address() {
        let starting = parse("17\n/srv/pg\n1764586000\n5432\n").unwrap();
        assert_eq!((starting.socket_dir, starting.listen_address), (None, None));
        let tcp_only = parse("17\nC:\\pg\\data\n1764586000\n5432\n\n*\n").unwrap();
        assert_eq!(tcp_only.socket_dir, None);
        assert_eq!(
            tcp_only.endpoints(6000),
            [Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 6000
            }],
            "a wildcard is reached on loopback, on the port asked for"
        );
        let v6 = parse("17\n/d\n1\n5432\n\n::\n").unwrap();
        assert_eq!(
            v6.endpoints(5432),
            [Endpoint::Tcp {
                host: "::1".into(),
                port: 5432
            }]
        );
        let node = parse("17\nC:\\pg\\data\n1764586000\n5432\n\n10.0.0.1\n").unwrap();
        let on = |host: &str| Endpoint::Tcp {
            host: host.into(),
            port: 5432,
        };
        if cfg!(windows) {
            assert_eq!(
                node.endpoints(5432),
                [on("127.0.0.1"), on("10.0.0.1")],
                "no socket: loopback, where initdb admits the administrator, first"
            );
        } else {
            assert_eq!(node.endpoints(5432), [on("10.0.0.1")]);
        }
        let single_user = parse("-17\n/d\n1\n5432\n/run/pg\n*\n").unwrap();
        assert!(single_user.endpoints(5432).is_empty());
    }

    #[test]
    fn malformed_files_are_refused_not_guessed() {
        let cases = [
            ("", PidFileProblem::TooShort { lines: 0 }),
            ("12345\n", PidFileProblem::TooShort { lines: 1 }),
            ("12345\n/d\n1\n", PidFileProblem::TooShort { lines: 3 }),
            ("pid\n/d\n1\n5432\n", PidFileProblem::BadPid("pid".into())),
            ("0\n/d\n1\n5432\n", PidFileProblem::BadPid("0".into())),
            ("1\n/d\n1\n\n", PidFileProblem::BadPort(String::new())),
            ("1\n/d\n1\n0\n", PidFileProblem::BadPort("0".into())),
            ("1\n/d\n1\n65536\n", PidFileProblem::BadPort("65536".into())),
            ("1\n/d\n1\n54x\n", PidFileProblem::BadPort("54x".into())),
        ];
        for (text, problem) in cases {
            assert_eq!(parse(text), Err(problem.clone()), "{text:?}");
            assert!(!problem.to_string().contains('\n'));
        }
    }
}
