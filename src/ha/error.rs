//! The error type of the HA module.
//!
//! Every variant carries what a caller needs to act on it (the offending
//! input, line or path) and renders as one line that says what is wrong and
//! what to do. Nothing here ever holds a password or key: the inputs of this
//! module are addresses, role names, paths and `pg_hba.conf` / `ha.toml`
//! text, none of which are secret.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in [`crate::ha`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A peer or node address was not an IP literal usable in `pg_hba.conf`.
    #[error("address {input:?} refused: {reason}")]
    Address {
        /// What the operator typed (addresses are not secret).
        input: String,
        /// Why it was refused; its text says what to give instead.
        reason: AddrRejection,
    },

    /// keyferry's marker comments in `pg_hba.conf` do not form well-nested,
    /// unique blocks, so keyferry cannot tell which lines it owns.
    #[error(
        "pg_hba.conf line {line}: {problem}; fix or delete the keyferry marker lines by hand, then run the command again"
    )]
    HbaMarkers {
        /// 1-based physical line number of the offending marker.
        line: usize,
        /// What is wrong with the markers.
        problem: MarkerProblem,
    },

    /// A replication user name that cannot be written unquoted into
    /// `pg_hba.conf` or names no single role.
    #[error(
        "replication user {name:?} refused: {reason}; choose a plain role name such as \"repuser\""
    )]
    RoleName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The running server reads another `pg_hba.conf` than the one keyferry
    /// was about to edit (both paths with symbolic links resolved).
    #[error("the server at {endpoint} reads {}, not {}; nothing was changed: pass --file {}", served.display(), edited.display(), served.display())]
    HbaFileNotServed {
        /// Where the server answered.
        endpoint: String,
        /// Its `hba_file`.
        served: PathBuf,
        /// The file keyferry would have edited.
        edited: PathBuf,
    },

    /// After the write, PostgreSQL's own reading of the file (its
    /// `pg_hba_file_rules`) lacks lines of keyferry's block.
    #[error("the server at {endpoint} does not read what was written to {}: its pg_hba_file_rules has no line for {missing}; the original was put back and nothing was reloaded: find the file it reads with SHOW hba_file and pass it with --file", file.display())]
    HbaNotRead {
        /// Where the server answered.
        endpoint: String,
        /// The file written (and put back).
        file: PathBuf,
        /// The block's lines the server does not show, as `database user address`.
        missing: String,
    },

    /// A running server's `postmaster.pid` cannot be read.
    #[error("{}: {problem}; nothing was changed: if no server runs on that data directory remove the stale file, else give --pg-socket-dir and --pg-port, or pass --offline to write unchecked", path.display())]
    PostmasterPid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: crate::pg::pidfile::PidFileProblem,
    },

    /// `ha.toml` is not valid TOML or does not have the expected shape.
    #[error(
        "ha.toml line {line}: {message}; correct the file or recreate it with `keyferry ha init`"
    )]
    ConfigSyntax {
        /// 1-based line of the problem (1 when the parser gives no position).
        line: usize,
        /// The parser's one-line description.
        message: String,
    },

    /// `ha.toml` parses but a value is not acceptable.
    #[error("ha.toml: {field} {reason}")]
    ConfigValue {
        /// The TOML key at fault.
        field: &'static str,
        /// Why, including the fix.
        reason: String,
    },

    /// `ha.toml` was written by a newer keyferry.
    #[error("ha.toml has version {found}, this keyferry reads version {supported}; upgrade keyferry on this node")]
    ConfigVersion {
        /// Version in the file.
        found: u32,
        /// Version this build understands.
        supported: u32,
    },

    /// The configuration cannot be written as TOML (for example a path that
    /// is not valid Unicode).
    #[error("cannot write ha.toml: {message}; use paths made of valid Unicode")]
    ConfigSerialize {
        /// The serializer's description.
        message: String,
    },

    /// The WAL archive directory could not be listed.
    #[error("cannot list WAL archive directory {}: {source}; check the archive_dir in ha.toml and its permissions", path.display())]
    ArchiveList {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A WAL archive file could not be removed; files before it were removed.
    #[error("cannot remove WAL archive file {} ({removed} removed before it): {source}; check permissions and run the clean again", path.display())]
    ArchiveRemove {
        /// The file that could not be removed.
        path: PathBuf,
        /// How many files were removed before the failure.
        removed: usize,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The directory given as the WAL archive is (or resolves into) a
    /// server's own WAL.
    #[error("{} (really {}) is not a WAL archive: {why}; the server still needs those files. Give the archive directory (archive_command's target) instead", path.display(), real.display())]
    ArchiveIsWal {
        path: PathBuf,
        real: PathBuf,
        why: String,
    },
}

impl Error {
    /// Whether the error is about what the operator typed (an address, a
    /// role name, a method) rather than about the state of the node.
    pub(crate) fn is_usage(&self) -> bool {
        matches!(self, Error::Address { .. } | Error::RoleName { .. })
    }
}

/// Why an address was refused. Each message says what to give instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddrRejection {
    /// Nothing was given.
    Empty,
    /// A host name (including `localhost`): `pg_hba.conf` lines are written
    /// as IP/32 or IP/128, and a name may resolve differently on each node.
    HostName,
    /// Looks like an IP address but is not a valid one (e.g. `10.0.0.300`).
    Malformed,
    /// A loopback address: the peer is another machine.
    Loopback,
    /// `0.0.0.0` or `::`.
    Unspecified,
    /// A multicast address.
    Multicast,
    /// The IPv4 limited broadcast address.
    Broadcast,
    /// An IPv6 zone id such as `%eth0`.
    ZoneId,
    /// The user gave a `/prefix`; keyferry adds `/32` or `/128` itself.
    CidrSuffix,
    /// An IPv4 address written as IPv6: mapped (`::ffff:10.0.0.2`) or the
    /// deprecated compatible form (`::10.0.0.2`).
    Ipv4Mapped,
    /// An address in brackets, as in URLs (`[fe80::1]`).
    Brackets,
    /// An address with a `:port` suffix.
    PortSuffix,
}

impl fmt::Display for AddrRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "no address given; give the node's IPv4 or IPv6 address",
            Self::HostName => {
                "host names are not accepted because pg_hba.conf lines are written as IP/32 or IP/128; give the node's IP address"
            }
            Self::Malformed => "not a valid IPv4 or IPv6 address; check the digits",
            Self::Loopback => {
                "loopback addresses only reach this machine; give the address the other node uses to reach it"
            }
            Self::Unspecified => {
                "the unspecified address names no host; give the node's own IP address"
            }
            Self::Multicast => "multicast addresses name no single host; give the node's own IP address",
            Self::Broadcast => "the broadcast address names no single host; give the node's own IP address",
            Self::ZoneId => {
                "IPv6 zone ids (%interface) cannot go into pg_hba.conf; give the address without the zone or use a global IPv6 address"
            }
            Self::CidrSuffix => {
                "give the bare IP address without a /prefix; keyferry writes /32 (IPv4) or /128 (IPv6) itself"
            }
            Self::Ipv4Mapped => {
                "IPv4 addresses written as IPv6 (IPv4-mapped ::ffff:a.b.c.d or ::a.b.c.d) are not accepted; give the plain IPv4 form (e.g. 10.0.0.2)"
            }
            Self::Brackets => "remove the square brackets; give the bare IPv6 address",
            Self::PortSuffix => "remove the :port suffix; ports are set with --pg-port and --web-port",
        })
    }
}

/// What is wrong with keyferry's markers in a `pg_hba.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MarkerProblem {
    /// A BEGIN marker with no END marker before the end of the file.
    BeginWithoutEnd {
        /// The peer named by the marker.
        peer: String,
    },
    /// An END marker with no open block.
    EndWithoutBegin {
        /// The peer named by the marker.
        peer: String,
    },
    /// A BEGIN marker inside another keyferry block.
    Nested {
        /// The peer of the block that is still open.
        open: String,
    },
    /// An END marker that names another peer than the open block.
    MismatchedEnd {
        /// The peer of the open block.
        open: String,
        /// The peer named by the END marker.
        end: String,
    },
    /// A second block for a peer that already has one.
    Duplicate {
        /// The peer.
        peer: String,
        /// 1-based line of the first block's BEGIN marker.
        first_line: usize,
    },
    /// A line that starts like a keyferry marker but cannot be read.
    Unreadable,
}

impl fmt::Display for MarkerProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BeginWithoutEnd { peer } => {
                write!(
                    f,
                    "keyferry block for {peer} is never closed by its END marker"
                )
            }
            Self::EndWithoutBegin { peer } => {
                write!(
                    f,
                    "keyferry END marker for {peer} has no BEGIN marker before it"
                )
            }
            Self::Nested { open } => {
                write!(
                    f,
                    "keyferry BEGIN marker inside the still open block for {open}"
                )
            }
            Self::MismatchedEnd { open, end } => {
                write!(
                    f,
                    "keyferry END marker names {end} but the open block is for {open}"
                )
            }
            Self::Duplicate { peer, first_line } => write!(
                f,
                "second keyferry block for {peer} (the first starts on line {first_line})"
            ),
            Self::Unreadable => f.write_str("keyferry marker line cannot be read"),
        }
    }
}
