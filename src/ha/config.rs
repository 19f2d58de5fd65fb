//! The pair description `ha.toml`.
//!
//! Owns the file's shape, its validation and its adjustment on import.
//! Invariants of a [`HaConfig`] value (checked by [`HaConfig::validate`],
//! which parsing always runs):
//!
//! - both addresses are [`PeerAddr`]s and differ;
//! - the PostgreSQL and web ports are non-zero and differ;
//! - the replication user can stand unquoted in `pg_hba.conf`;
//! - every path is absolute, so no command's meaning depends on the
//!   directory it was started from (the archive clean above all);
//! - the node name is non-empty, printable and short.
//!
//! Fields are of two kinds. Pair-wide fields (addresses, ports, replication
//! user) must be the same on both nodes. Node-local fields (node name,
//! PostgreSQL directories, the server's Unix socket directory, archive
//! directory, service control, appsettings path) describe one machine. [`HaConfig::for_receiving_node`] keeps that
//! split when a secondary takes the primary's `ha.toml` from a bundle.
//!
//! The file is versioned (`version = 1`) and unknown keys are refused, so a
//! typo (`pg-port`) is an error and not a silently ignored setting.
//!
//! Two fields follow the pair's roles and are written by keyferry, not by
//! hand: `generation` (pair-wide; raised by every switchover and failover,
//! see [`crate::ha::generation`]) and `demoted` (node-local; this node's
//! role was taken by the other, so it must not start as primary until `ha
//! rejoin` makes it a replica again). `[guard] require_peer` (node-local)
//! says whether `ha guard` refuses to start a primary whose peer cannot be
//! reached.
//!
//! ```toml
//! version = 1
//! node = "pam-a"
//! primary = "10.0.0.1"
//! secondary = "10.0.0.2"
//! pg_port = 5432
//! web_port = 6500
//! replication_user = "repuser"
//! pg_bin = "/usr/lib/postgresql/15/bin"
//! pg_data = "/var/lib/postgresql/15/main"
//! pg_socket_dir = "/var/run/postgresql"
//! archive_dir = "/var/lib/postgresql/wal-archive"
//! appsettings = "/opt/pam/appsettings.json"
//!
//! [service]
//! method = "pg_ctl"
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ha::addr::PeerAddr;
use crate::ha::error::Error;
use crate::ha::hba::validate_role_name;

/// The `ha.toml` format version this build reads and writes.
pub(crate) const CONFIG_VERSION: u32 = 1;
/// PostgreSQL's default port.
pub(crate) const DEFAULT_PG_PORT: u16 = 5432;
/// The web services' default port.
pub(crate) const DEFAULT_WEB_PORT: u16 = 6500;
/// Default role used by the replica to stream from the primary.
pub(crate) const DEFAULT_REPLICATION_USER: &str = "repuser";
/// Why `name` cannot be a node's name (it appears in audit records, status
/// and the registry), or `None` when it can.
pub(crate) fn node_name_problem(name: &str) -> Option<&'static str> {
    if name.trim().is_empty() {
        Some("is empty; give this node a name, e.g. its host name")
    } else if name.chars().count() > MAX_NODE_NAME_CHARS {
        Some("is longer than 64 characters; choose a shorter name")
    } else if name.chars().any(char::is_control) || name.trim() != name {
        Some("has control characters or surrounding blanks; remove them")
    } else {
        None
    }
}

/// Longest node name accepted (it appears in audit records and status).
pub(crate) const MAX_NODE_NAME_CHARS: usize = 64;

/// Where the PostgreSQL programs are on a default installation.
#[cfg(windows)]
pub(crate) const DEFAULT_PG_BIN: &str = r"C:\Program Files\PostgreSQL\15\bin";
/// Where the PostgreSQL data directory is on a default installation.
#[cfg(windows)]
pub(crate) const DEFAULT_PG_DATA: &str = r"C:\Program Files\PostgreSQL\15\data";
/// Where the PostgreSQL programs are on a default installation.
#[cfg(not(windows))]
pub(crate) const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Where the PostgreSQL data directory is on a default installation.
#[cfg(not(windows))]
pub(crate) const DEFAULT_PG_DATA: &str = "/var/lib/postgresql/15/main";

/// How keyferry starts and stops the local PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServiceControl {
    /// `pg_ctl -D <pg_data>`, run as the OS user that owns the data
    /// directory (PostgreSQL refuses to run as root or Administrator).
    #[default]
    PgCtl,
    /// `systemctl start|stop <unit>`.
    Systemd {
        /// The unit, e.g. `postgresql@15-main`.
        unit: String,
    },
    /// The Windows service manager (`sc start|stop <name>`).
    WindowsService {
        /// The service name, e.g. `postgresql-x64-15`.
        name: String,
    },
}

impl ServiceControl {
    /// Reads the command line's `--service`: `pg_ctl`, `systemd:UNIT` or
    /// `windows_service:NAME` (what [`Self::spec`] writes).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let named = |name: &str, what: &str| -> Result<String, String> {
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                return Err(format!("{spec:?} names no {what}; e.g. {}", Self::EXAMPLES));
            }
            Ok(name.to_owned())
        };
        match spec.split_once(':') {
            None if spec == "pg_ctl" => Ok(Self::PgCtl),
            Some(("systemd", unit)) => Ok(Self::Systemd {
                unit: named(unit, "systemd unit")?,
            }),
            Some(("windows_service", name)) => {
                let name = named(name, "Windows service")?;
                if name.contains(['/', '\\']) {
                    return Err(format!(
                        "{name:?} cannot be a Windows service name (no / or \\)"
                    ));
                }
                Ok(Self::WindowsService { name })
            }
            _ => Err(format!(
                "{spec:?} is not a way to start the server: use {}",
                Self::EXAMPLES
            )),
        }
    }

    /// The `--service` value that gives `self`.
    pub fn spec(&self) -> String {
        match self {
            Self::PgCtl => "pg_ctl".into(),
            Self::Systemd { unit } => format!("systemd:{unit}"),
            Self::WindowsService { name } => format!("windows_service:{name}"),
        }
    }

    const EXAMPLES: &'static str =
        "pg_ctl, systemd:postgresql@15-main or windows_service:postgresql-x64-15";
}

/// A validated `ha.toml`. See the module docs for the invariants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// This node's name (node-local).
    pub node: String,
    /// Address of the node meant to run as primary (pair-wide).
    pub primary: PeerAddr,
    /// Address of the node meant to run as replica (pair-wide).
    pub secondary: PeerAddr,
    /// PostgreSQL port on both nodes (pair-wide).
    pub pg_port: u16,
    /// Web services port on both nodes (pair-wide).
    pub web_port: u16,
    /// Role the replica streams as (pair-wide).
    pub replication_user: String,
    /// Directory of `pg_ctl`, `pg_basebackup`, … (node-local).
    pub pg_bin: PathBuf,
    /// PostgreSQL data directory (node-local).
    pub pg_data: PathBuf,
    /// The local server's Unix socket directory (node-local, optional):
    /// where `ha status` reaches its own server when the server's
    /// `postmaster.pid` cannot say (the server is starting, or the file
    /// cannot be read).
    pub pg_socket_dir: Option<PathBuf>,
    /// WAL archive directory, if the pair archives WAL (node-local).
    pub archive_dir: Option<PathBuf>,
    /// How the server is started and stopped (node-local).
    pub service: ServiceControl,
    /// Path of the application's `appsettings.json`, if any (node-local).
    pub appsettings: Option<PathBuf>,
    /// The pair's generation (pair-wide): raised by every switchover and
    /// failover; 0 when the file has none.
    pub generation: u64,
    /// This node's role was taken by the other (node-local): it must not
    /// start as primary; `ha rejoin` clears it.
    pub demoted: bool,
    /// What `ha guard` does when the peer cannot be reached (node-local).
    pub guard: GuardConfig,
    /// Which of `pg_bin` and `pg_data` the file leaves out and the Windows
    /// service's configuration gave (node-local): they stay out of the
    /// file when keyferry writes it again.
    pub from_service: FromService,
}

/// `pg_bin` and `pg_data` read from the Windows service's command line
/// rather than from `ha.toml` (see [`super::winsvc`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FromService {
    pub pg_bin: bool,
    pub pg_data: bool,
}

/// `[guard]` in `ha.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Refuse to start as primary when the peer cannot be reached (default
    /// false: a two-node pair cannot tell a dead peer from a cut network,
    /// and refusing would keep the pair down when the peer is really gone).
    #[serde(default)]
    pub require_peer: bool,
}

impl GuardConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The file as stored; turned into a [`HaConfig`] only through validation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: u32,
    node: String,
    primary: String,
    secondary: String,
    #[serde(default = "default_pg_port")]
    pg_port: u16,
    #[serde(default = "default_web_port")]
    web_port: u16,
    #[serde(default = "default_replication_user")]
    replication_user: String,
    // Both may be left out when `[service]` names a Windows service: they
    // are then read from the service's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pg_bin: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pg_data: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pg_socket_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    archive_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    appsettings: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "is_zero")]
    generation: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    demoted: bool,
    #[serde(default)]
    service: ServiceControl,
    #[serde(default, skip_serializing_if = "GuardConfig::is_default")]
    guard: GuardConfig,
}

fn default_pg_port() -> u16 {
    DEFAULT_PG_PORT
}

fn default_web_port() -> u16 {
    DEFAULT_WEB_PORT
}

fn default_replication_user() -> String {
    DEFAULT_REPLICATION_USER.to_owned()
}

/// The receiving node's own paths, from the import's command line, for a
/// node that has no `ha.toml` yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPaths {
    pub pg_bin: Option<PathBuf>,
    pub pg_data: Option<PathBuf>,
    pub archive_dir: Option<PathBuf>,
    pub appsettings: Option<PathBuf>,
    /// How this node starts its server (`--service`).
    pub service: Option<ServiceControl>,
}

impl LocalPaths {
    pub(crate) fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A field whose value differs between two configurations, for showing an
/// operator what an import would change. Values are display strings; none
/// of them is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    /// The `ha.toml` key.
    pub field: &'static str,
    /// The value before (`None`: absent).
    pub before: Option<String>,
    /// The value after (`None`: absent).
    pub after: Option<String>,
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not set)".to_owned());
        write!(
            f,
            "{}: {} -> {}",
            self.field,
            show(&self.before),
            show(&self.after)
        )
    }
}

impl HaConfig {
    /// A valid configuration on documentation addresses, for unit tests.
    #[cfg(test)]
    pub(crate) fn example() -> Self {
        HaConfig::new(
            "n1",
            "203.0.113.1".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
        )
        .unwrap()
    }

    /// A configuration with the defaults for everything but the node name
    /// and the two addresses. Fails like [`HaConfig::validate`].
    pub fn new(node: &str, primary: PeerAddr, secondary: PeerAddr) -> Result<Self, Error> {
        let config = Self {
            node: node.to_owned(),
            primary,
            secondary,
            pg_port: DEFAULT_PG_PORT,
            web_port: DEFAULT_WEB_PORT,
            replication_user: DEFAULT_REPLICATION_USER.to_owned(),
            pg_bin: PathBuf::from(DEFAULT_PG_BIN),
            pg_data: PathBuf::from(DEFAULT_PG_DATA),
            pg_socket_dir: None,
            archive_dir: None,
            service: ServiceControl::default(),
            appsettings: None,
            generation: 0,
            demoted: false,
            guard: GuardConfig::default(),
            from_service: FromService::default(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates `ha.toml` text.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        // Read the version on its own first, so that a file from a newer
        // keyferry is reported as such and not as an unknown key.
        #[derive(Deserialize)]
        struct VersionOnly {
            version: Option<u32>,
        }
        let syntax = |e: toml::de::Error| Error::ConfigSyntax {
            line: e.span().map_or(1, |span| line_of(text, span.start)),
            message: e.message().trim().replace('\n', " "),
        };
        let version = toml::from_str::<VersionOnly>(text).map_err(syntax)?.version;
        match version {
            Some(CONFIG_VERSION) => {}
            Some(found) => {
                return Err(Error::ConfigVersion {
                    found,
                    supported: CONFIG_VERSION,
                })
            }
            None => {
                return Err(Error::ConfigValue {
                    field: "version",
                    reason: format!("is missing; add `version = {CONFIG_VERSION}` at the top"),
                })
            }
        }
        let raw: RawConfig = toml::from_str(text).map_err(syntax)?;
        let parse_addr = |field, value: &str| {
            PeerAddr::parse(value).map_err(|e| Error::ConfigValue {
                field,
                reason: e.to_string(),
            })
        };
        let from_service = FromService {
            pg_bin: raw.pg_bin.is_none(),
            pg_data: raw.pg_data.is_none(),
        };
        let (pg_bin, pg_data) = match (raw.pg_bin, raw.pg_data) {
            (Some(bin), Some(data)) => (bin, data),
            (bin, data) => {
                let ServiceControl::WindowsService { name } = &raw.service else {
                    let field = if bin.is_none() { "pg_bin" } else { "pg_data" };
                    return Err(Error::ConfigValue {
                        field,
                        reason: "is missing; give it (only a Windows service named in [service] can say it instead)".into(),
                    });
                };
                let found =
                    super::service::service_paths(name).map_err(|e| Error::ConfigValue {
                        field: "service",
                        reason: format!("{e}; give pg_bin and pg_data in ha.toml"),
                    })?;
                (bin.unwrap_or(found.pg_bin), data.unwrap_or(found.pg_data))
            }
        };
        let config = Self {
            node: raw.node,
            primary: parse_addr("primary", &raw.primary)?,
            secondary: parse_addr("secondary", &raw.secondary)?,
            pg_port: raw.pg_port,
            web_port: raw.web_port,
            replication_user: raw.replication_user,
            pg_bin,
            pg_data,
            pg_socket_dir: raw.pg_socket_dir,
            archive_dir: raw.archive_dir,
            service: raw.service,
            appsettings: raw.appsettings,
            generation: raw.generation,
            demoted: raw.demoted,
            guard: raw.guard,
            from_service,
        };
        config.validate()?;
        Ok(config)
    }

    /// Writes the configuration as `ha.toml` text.
    pub fn to_toml(&self) -> Result<String, Error> {
        self.validate()?;
        let raw = RawConfig {
            version: CONFIG_VERSION,
            node: self.node.clone(),
            primary: self.primary.to_string(),
            secondary: self.secondary.to_string(),
            pg_port: self.pg_port,
            web_port: self.web_port,
            replication_user: self.replication_user.clone(),
            pg_bin: (!self.from_service.pg_bin).then(|| self.pg_bin.clone()),
            pg_data: (!self.from_service.pg_data).then(|| self.pg_data.clone()),
            pg_socket_dir: self.pg_socket_dir.clone(),
            archive_dir: self.archive_dir.clone(),
            appsettings: self.appsettings.clone(),
            generation: self.generation,
            demoted: self.demoted,
            service: self.service.clone(),
            guard: self.guard,
        };
        toml::to_string(&raw).map_err(|e| Error::ConfigSerialize {
            message: e.to_string().trim().replace('\n', " "),
        })
    }

    /// Checks the invariants listed in the module docs.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason: &str| {
            Err(Error::ConfigValue {
                field,
                reason: reason.to_owned(),
            })
        };
        if let Some(problem) = node_name_problem(&self.node) {
            return invalid("node", problem);
        }
        if self.primary == self.secondary {
            return invalid("secondary", "equals primary; give the other node's address");
        }
        if self.pg_port == 0 {
            return invalid("pg_port", "is 0; give PostgreSQL's port (default 5432)");
        }
        if self.web_port == 0 {
            return invalid(
                "web_port",
                "is 0; give the web services' port (default 6500)",
            );
        }
        if self.pg_port == self.web_port {
            return invalid(
                "web_port",
                "equals pg_port; the two services need their own ports",
            );
        }
        validate_role_name(&self.replication_user).map_err(|e| Error::ConfigValue {
            field: "replication_user",
            reason: e.to_string(),
        })?;
        let paths: [(&'static str, Option<&Path>); 5] = [
            ("pg_bin", Some(&self.pg_bin)),
            ("pg_data", Some(&self.pg_data)),
            ("pg_socket_dir", self.pg_socket_dir.as_deref()),
            ("archive_dir", self.archive_dir.as_deref()),
            ("appsettings", self.appsettings.as_deref()),
        ];
        for (field, path) in paths {
            if let Some(path) = path {
                if !path.is_absolute() {
                    return Err(Error::ConfigValue {
                        field,
                        reason: format!(
                            "{:?} is not an absolute path; give the full path",
                            path.display().to_string()
                        ),
                    });
                }
            }
        }
        let service_name = match &self.service {
            ServiceControl::PgCtl => None,
            ServiceControl::Systemd { unit } => Some(unit),
            ServiceControl::WindowsService { name } => Some(name),
        };
        if service_name.is_some_and(|n| n.trim().is_empty()) {
            return invalid("service", "names no service; give the unit or service name");
        }
        Ok(())
    }

    /// Starts the server through `service` from now on. With a Windows
    /// service, `pg_bin` and `pg_data` that the operator did not give
    /// (`given_bin`, `given_data`) are read from the service's configuration
    /// and stay out of the file, as when `ha.toml` leaves them out.
    pub(crate) fn use_service(
        &mut self,
        service: ServiceControl,
        given_bin: bool,
        given_data: bool,
    ) -> Result<(), Error> {
        if let ServiceControl::WindowsService { name } = &service {
            if !(given_bin && given_data) {
                let found =
                    super::service::service_paths(name).map_err(|e| Error::ConfigValue {
                        field: "service",
                        reason: format!("{e}; give --pg-bin and --pg-data"),
                    })?;
                if !given_bin {
                    self.pg_bin = found.pg_bin;
                    self.from_service.pg_bin = true;
                }
                if !given_data {
                    self.pg_data = found.pg_data;
                    self.from_service.pg_data = true;
                }
            }
        }
        self.service = service;
        Ok(())
    }

    /// The configuration a node named `node` should install when it takes
    /// `self` (the sender's `ha.toml`) from a bundle.
    ///
    /// Pair-wide fields always come from `self`. Node-local fields (paths,
    /// how the server is started) never do: a bundle must not choose where
    /// anything is written on the receiving node. They come from `local`
    /// (the receiver's current `ha.toml`) when there is one, else from
    /// `given` (the import's command line) and the defaults; a path given
    /// nowhere stays unset. The node name is always `node`.
    pub(crate) fn for_receiving_node(
        &self,
        node: &str,
        local: Option<&HaConfig>,
        given: &LocalPaths,
    ) -> Result<HaConfig, Error> {
        let fresh;
        let base = match local {
            Some(l) => l,
            None => {
                let mut c = HaConfig::new(node, self.primary, self.secondary)?;
                if let Some(b) = &given.pg_bin {
                    c.pg_bin = b.clone();
                }
                if let Some(d) = &given.pg_data {
                    c.pg_data = d.clone();
                }
                c.archive_dir = given.archive_dir.clone();
                c.appsettings = given.appsettings.clone();
                if let Some(service) = &given.service {
                    c.use_service(
                        service.clone(),
                        given.pg_bin.is_some(),
                        given.pg_data.is_some(),
                    )?;
                }
                fresh = c;
                &fresh
            }
        };
        let adjusted = HaConfig {
            node: node.to_owned(),
            primary: self.primary,
            secondary: self.secondary,
            pg_port: self.pg_port,
            web_port: self.web_port,
            replication_user: self.replication_user.clone(),
            pg_bin: base.pg_bin.clone(),
            pg_data: base.pg_data.clone(),
            pg_socket_dir: base.pg_socket_dir.clone(),
            archive_dir: base.archive_dir.clone(),
            service: base.service.clone(),
            appsettings: base.appsettings.clone(),
            // Pair-wide: the sender's; node-local: the receiver's own.
            generation: self.generation,
            demoted: base.demoted,
            guard: base.guard,
            from_service: base.from_service,
        };
        adjusted.validate()?;
        Ok(adjusted)
    }

    /// The fields whose values differ from `self` to `other`, in file order.
    pub(crate) fn changes_to(&self, other: &HaConfig) -> Vec<FieldChange> {
        let a = self.display_fields();
        let b = other.display_fields();
        a.into_iter()
            .zip(b)
            .filter(|((_, before), (_, after))| before != after)
            .map(|((field, before), (_, after))| FieldChange {
                field,
                before,
                after,
            })
            .collect()
    }

    fn display_fields(&self) -> [(&'static str, Option<String>); 15] {
        let path = |p: &Path| Some(p.display().to_string());
        [
            ("node", Some(self.node.clone())),
            ("primary", Some(self.primary.to_string())),
            ("secondary", Some(self.secondary.to_string())),
            ("pg_port", Some(self.pg_port.to_string())),
            ("web_port", Some(self.web_port.to_string())),
            ("replication_user", Some(self.replication_user.clone())),
            ("pg_bin", path(&self.pg_bin)),
            ("pg_data", path(&self.pg_data)),
            (
                "pg_socket_dir",
                self.pg_socket_dir.as_deref().and_then(path),
            ),
            ("archive_dir", self.archive_dir.as_deref().and_then(path)),
            ("appsettings", self.appsettings.as_deref().and_then(path)),
            ("service", Some(self.service.to_string())),
            ("generation", Some(self.generation.to_string())),
            ("demoted", Some(self.demoted.to_string())),
            (
                "guard.require_peer",
                Some(self.guard.require_peer.to_string()),
            ),
        ]
    }
}

impl fmt::Display for ServiceControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PgCtl => f.write_str("pg_ctl (as the data directory's owner)"),
            Self::Systemd { unit } => write!(f, "systemd unit {unit}"),
            Self::WindowsService { name } => write!(f, "Windows service {name}"),
        }
    }
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(windows)]
    const ROOT: &str = r"C:\pam";
    #[cfg(not(windows))]
    const ROOT: &str = "/srv/pam";

    fn abs(rel: &str) -> PathBuf {
        Path::new(ROOT).join(rel)
    }

    fn addr(s: &str) -> PeerAddr {
        PeerAddr::parse(s).unwrap()
    }

    fn sample() -> HaConfig {
        HaConfig {
            node: "pam-a".into(),
            primary: addr("10.0.0.1"),
            secondary: addr("10.0.0.2"),
            pg_port: 5433,
            web_port: 6501,
            replication_user: "repuser".into(),
            pg_bin: abs("pg/bin"),
            pg_data: abs("pg/data"),
            pg_socket_dir: Some(abs("run/pg")),
            archive_dir: Some(abs("archive")),
            service: ServiceControl::Systemd {
                unit: "postgresql@15-main".into(),
            },
            appsettings: Some(abs("app/appsettings.json")),
            generation: 3,
            demoted: true,
            guard: GuardConfig { require_peer: true },
            from_service: FromService::default(),
        }
    }

    fn toml_str(s: &Path) -> String {
        // TOML basic strings escape backslashes (Windows paths).
        s.display().to_string().replace('\\', "\\\\")
    }

    /// `pg_bin` and `pg_data` may be left out only for a Windows service,
    /// whose configuration says them; written back, they stay out.
    #[test]
    fn paths_left_out_come_from_the_windows_service_only() {
        let head =
            "version = 1\nnode = \"pam-a\"\nprimary = \"10.0.0.1\"\nsecondary = \"10.0.0.2\"\n";
        let e = HaConfig::from_toml(head).unwrap_err().to_string();
        assert!(e.contains("pg_bin") && e.contains("Windows service"), "{e}");
        let with_bin = format!("{head}pg_bin = \"{}\"\n", toml_str(&abs("bin")));
        let e = HaConfig::from_toml(&with_bin).unwrap_err().to_string();
        assert!(e.contains("pg_data"), "{e}");
        let service = format!(
            "{head}[service]\nmethod = \"windows_service\"\nname = \"kf-no-such-service\"\n"
        );
        let e = HaConfig::from_toml(&service).unwrap_err().to_string();
        assert!(
            e.contains("kf-no-such-service") && e.contains("give pg_bin and pg_data"),
            "{e}"
        );
        let mut config = HaConfig::example();
        config.service = ServiceControl::WindowsService { name: "pg".into() };
        config.from_service = FromService {
            pg_bin: true,
            pg_data: true,
        };
        let text = config.to_toml().unwrap();
        assert!(
            !text.contains("pg_bin") && !text.contains("pg_data"),
            "{text}"
        );
        config.from_service.pg_data = false;
        let text = config.to_toml().unwrap();
        assert!(
            !text.contains("pg_bin") && text.contains("pg_data"),
            "{text}"
        );
    }

    fn minimal_toml() -> String {
        format!(
            "version = 1\nnode = \"pam-a\"\nprimary = \"10.0.0.1\"\nsecondary = \"10.0.0.2\"\npg_bin = \"{}\"\npg_data = \"{}\"\n",
            toml_str(&abs("bin")),
            toml_str(&abs("data"))
        )
    }

    #[test]
    fn round_trips_through_toml() {
        let config = sample();
        let text = config.to_toml().unwrap();
        assert_eq!(HaConfig::from_toml(&text).unwrap(), config, "{text}");
        assert!(text.starts_with("version = 1\n"), "{text}");
    }

    #[test]
    fn round_trips_ipv6_and_optional_fields_absent() {
        let mut config = sample();
        config.primary = addr("2001:db8::1");
        config.secondary = addr("2001:db8::2");
        config.archive_dir = None;
        config.appsettings = None;
        config.pg_socket_dir = None;
        config.service = ServiceControl::PgCtl;
        let text = config.to_toml().unwrap();
        assert!(
            !text.contains("archive_dir")
                && !text.contains("appsettings")
                && !text.contains("pg_socket_dir"),
            "{text}"
        );
        assert_eq!(HaConfig::from_toml(&text).unwrap(), config);
    }

    #[test]
    fn absent_keys_take_the_documented_defaults() {
        let config = HaConfig::from_toml(&minimal_toml()).unwrap();
        assert_eq!(config.pg_port, DEFAULT_PG_PORT);
        assert_eq!(config.web_port, DEFAULT_WEB_PORT);
        assert_eq!(config.replication_user, DEFAULT_REPLICATION_USER);
        assert_eq!(config.service, ServiceControl::PgCtl);
        assert_eq!(config.archive_dir, None);
        assert_eq!(config.pg_socket_dir, None);
    }

    #[test]
    fn new_uses_platform_defaults() {
        let config = HaConfig::new("pam-a", addr("10.0.0.1"), addr("10.0.0.2")).unwrap();
        assert_eq!(config.pg_bin, Path::new(DEFAULT_PG_BIN));
        assert_eq!(config.pg_data, Path::new(DEFAULT_PG_DATA));
        assert_eq!(
            HaConfig::from_toml(&config.to_toml().unwrap()).unwrap(),
            config
        );
    }

    fn value_error_field(result: Result<HaConfig, Error>) -> &'static str {
        match result {
            Err(Error::ConfigValue { field, .. }) => field,
            other => panic!("expected a value error, got {other:?}"),
        }
    }

    #[test]
    fn refuses_invalid_values_naming_the_field() {
        let base = minimal_toml();
        let cases = [
            (base.replace("10.0.0.2", "10.0.0.1"), "secondary"),
            (base.replace("\"10.0.0.2\"", "\"localhost\""), "secondary"),
            (base.replace("\"10.0.0.1\"", "\"127.0.0.1\""), "primary"),
            (base.replace("pam-a", ""), "node"),
            (
                base.replace("pam-a", &"n".repeat(MAX_NODE_NAME_CHARS + 1)),
                "node",
            ),
            (base.replace("pam-a", " pam-a"), "node"),
            (format!("{base}pg_port = 0\n"), "pg_port"),
            (format!("{base}pg_port = 6500\n"), "web_port"),
            (
                format!("{base}replication_user = \"all\"\n"),
                "replication_user",
            ),
            (format!("{base}archive_dir = \"archive\"\n"), "archive_dir"),
            (
                format!("{base}pg_socket_dir = \"run/pg\"\n"),
                "pg_socket_dir",
            ),
            (
                format!("{base}[service]\nmethod = \"systemd\"\nunit = \" \"\n"),
                "service",
            ),
            (base.replace("version = 1\n", ""), "version"),
        ];
        for (text, field) in cases {
            assert_eq!(
                value_error_field(HaConfig::from_toml(&text)),
                field,
                "{text}"
            );
        }
    }

    #[test]
    fn address_errors_keep_the_reason() {
        let text = minimal_toml().replace("\"10.0.0.2\"", "\"fe80::2%eth0\"");
        let message = HaConfig::from_toml(&text).unwrap_err().to_string();
        assert!(
            message.contains("secondary") && message.contains("zone ids"),
            "{message}"
        );
    }

    #[test]
    fn syntax_errors_and_unknown_keys_give_a_line() {
        let typo = format!("{}pg-port = 5432\n", minimal_toml());
        match HaConfig::from_toml(&typo) {
            Err(Error::ConfigSyntax { line, message }) => {
                assert_eq!(line, 7, "{message}");
                assert!(message.contains("pg-port"), "{message}");
            }
            other => panic!("unknown key must be refused: {other:?}"),
        }
        let broken = "version = 1\nnode = \"pam-a\n";
        match HaConfig::from_toml(broken) {
            Err(e @ Error::ConfigSyntax { line: 2, .. }) => assert!(!e.to_string().contains('\n')),
            other => panic!("unterminated string: {other:?}"),
        }
        assert!(matches!(
            HaConfig::from_toml("version = \"one\"\n"),
            Err(Error::ConfigSyntax { line: 1, .. })
        ));
    }

    #[test]
    fn a_newer_file_version_is_reported_as_such() {
        let text = minimal_toml().replace("version = 1", "version = 2") + "future_key = true\n";
        assert!(matches!(
            HaConfig::from_toml(&text),
            Err(Error::ConfigVersion {
                found: 2,
                supported: 1
            })
        ));
    }

    #[test]
    fn receiving_node_keeps_pair_facts_and_its_own_name() {
        let primary = sample();
        let received = primary
            .for_receiving_node("pam-b", None, &LocalPaths::default())
            .unwrap();
        assert_eq!(received.node, "pam-b");
        assert_eq!(
            (received.primary, received.secondary),
            (primary.primary, primary.secondary)
        );
        assert_eq!(
            (
                received.archive_dir.as_ref(),
                received.appsettings.as_ref(),
                received.pg_socket_dir.as_ref()
            ),
            (None, None, None),
            "the sender's paths are never taken"
        );
        assert_eq!(received.pg_data, PathBuf::from(DEFAULT_PG_DATA));
        assert_eq!(received.pg_bin, PathBuf::from(DEFAULT_PG_BIN));
        let given = LocalPaths {
            pg_bin: Some(abs("mine/bin")),
            pg_data: Some(abs("mine/data")),
            archive_dir: Some(abs("mine/archive")),
            appsettings: Some(abs("mine/appsettings.json")),
            service: Some(ServiceControl::Systemd {
                unit: "postgresql@15-main".into(),
            }),
        };
        let received = primary.for_receiving_node("pam-b", None, &given).unwrap();
        assert_eq!(received.pg_bin, abs("mine/bin"));
        assert_eq!(received.pg_data, abs("mine/data"));
        assert_eq!(received.archive_dir, Some(abs("mine/archive")));
        assert_eq!(received.appsettings, Some(abs("mine/appsettings.json")));
        assert_eq!(
            received.service,
            ServiceControl::Systemd {
                unit: "postgresql@15-main".into()
            }
        );
    }

    #[test]
    fn reads_and_writes_the_service_option() {
        for spec in [
            "pg_ctl",
            "systemd:postgresql@15-main",
            "windows_service:postgresql-x64-15",
        ] {
            assert_eq!(ServiceControl::parse(spec).unwrap().spec(), spec);
        }
        for (bad, says) in [
            ("", "is not a way to start the server"),
            ("pgctl", "is not a way to start the server"),
            ("systemd", "is not a way to start the server"),
            ("pg_ctl:x", "is not a way to start the server"),
            ("sysv:postgresql", "is not a way to start the server"),
            ("systemd:", "names no systemd unit"),
            ("windows_service: ", "names no Windows service"),
            ("windows_service:a\\b", "cannot be a Windows service name"),
        ] {
            let e = ServiceControl::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn receiving_node_keeps_its_local_paths_and_takes_the_pair_facts() {
        let incoming = sample();
        let mut local = HaConfig::new("pam-b", addr("10.9.9.1"), addr("10.9.9.2")).unwrap();
        local.pg_data = abs("other/data");
        local.pg_socket_dir = Some(abs("other/sock"));
        local.service = ServiceControl::PgCtl;
        let merged = incoming
            .for_receiving_node("pam-b", Some(&local), &LocalPaths::default())
            .unwrap();
        assert_eq!(merged.primary, incoming.primary);
        assert_eq!(merged.secondary, incoming.secondary);
        assert_eq!(
            (merged.pg_port, merged.web_port),
            (incoming.pg_port, incoming.web_port)
        );
        assert_eq!(merged.pg_data, local.pg_data);
        assert_eq!(merged.pg_socket_dir, Some(abs("other/sock")));
        assert_eq!(merged.service, ServiceControl::PgCtl);
        assert_eq!(
            merged.archive_dir, None,
            "the local node has no archive dir"
        );
        let changed: Vec<&str> = local.changes_to(&merged).iter().map(|c| c.field).collect();
        assert_eq!(
            changed,
            ["primary", "secondary", "pg_port", "web_port", "generation"]
        );
    }

    #[test]
    fn receiving_node_name_is_validated() {
        assert!(matches!(
            sample().for_receiving_node("", None, &LocalPaths::default()),
            Err(Error::ConfigValue { field: "node", .. })
        ));
    }
}
