//! Connection strings given by the operator (`--dsn`) for the application's
//! database (rewrap targets) and the node registry.
//!
//! Owns parsing a DSN (libpq `key=value` form or a `postgresql://` URI, as
//! the `postgres` crate reads them) and connecting with it. Invariant: a
//! DSN never carries a password, so it can be stored in the home, printed
//! and audited as it is; one that does is refused with the fix (libpq's
//! password file, or a `--password-*` source). The password comes from the
//! caller (a source the operator named) or from libpq's password file
//! (`PGPASSFILE`, else `~/.pgpass` / `%APPDATA%\postgresql\pgpass.conf`),
//! looked up for this host, port, database and user.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use postgres::config::{Host, TargetSessionAttrs};
use postgres::{Client, NoTls};
use zeroize::Zeroizing;

use super::{from_postgres, passfile, PgError, APPLICATION_NAME};

/// Why a DSN was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DsnError {
    #[error("the connection string carries a password: a password on the command line ends up in shell history, process listings and keyferry's files; remove it and put it in libpq's password file (PGPASSFILE or ~/.pgpass, mode 0600), or give it with --password-file/--password-fd/--password-env")]
    Password,
    #[error("the connection string is not valid: {0}")]
    Invalid(String),
    #[error("the connection string names no user: add user=NAME")]
    NoUser,
}

/// A parsed DSN without a password.
#[derive(Clone)]
pub struct Dsn {
    text: String,
    config: postgres::Config,
}

impl std::fmt::Debug for Dsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dsn({})", self.text)
    }
}

impl Dsn {
    pub fn parse(text: &str) -> Result<Self, DsnError> {
        // Checked on the text too: a malformed string must not echo a
        // password back in the parser's message.
        let lower = text.to_ascii_lowercase();
        if lower.contains("password=") || lower.contains("password =") {
            return Err(DsnError::Password);
        }
        let config = postgres::Config::from_str(text)
            .map_err(|e| DsnError::Invalid(super::one_line(&e.to_string())))?;
        if config.get_password().is_some() {
            return Err(DsnError::Password);
        }
        if config.get_user().is_none() {
            return Err(DsnError::NoUser);
        }
        Ok(Self {
            text: text.trim().to_owned(),
            config,
        })
    }

    /// The DSN as given (it holds no password).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `host:port/dbname`, for messages; every host of a multi-host DSN
    /// (`a:p,b:p/dbname`), so a failure names all the hosts tried.
    pub fn target(&self) -> String {
        let hosts = self.host_ports();
        let list = if hosts.is_empty() {
            "localhost:5432".to_owned()
        } else {
            hosts
                .iter()
                .map(|(h, p)| host_port(h, *p))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!("{list}/{}", self.database())
    }

    fn database(&self) -> &str {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("")
    }

    /// Each host with its port (one port given applies to every host).
    fn host_ports(&self) -> Vec<(String, u16)> {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = match h {
                    Host::Tcp(h) => h.clone(),
                    #[cfg(unix)]
                    Host::Unix(p) => p.display().to_string(),
                };
                let port = match ports.len() {
                    0 => 5432,
                    1 => ports[0],
                    _ => ports.get(i).copied().unwrap_or(5432),
                };
                (host, port)
            })
            .collect()
    }

    /// More than one host: the DSN is meant to follow the primary.
    pub fn is_multi_host(&self) -> bool {
        self.config.get_hosts().len() > 1
    }

    fn prepared(&self, password: Option<&[u8]>) -> postgres::Config {
        let mut config = self.config.clone();
        config.application_name(APPLICATION_NAME);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        let from_file = match password {
            Some(_) => None,
            None => self.passfile_password(),
        };
        if let Some(p) = password.or(from_file.as_ref().map(|p| p.as_bytes())) {
            config.password(p);
        }
        config
    }

    /// Connects; the password is `password`, else the one libpq's password
    /// file holds for this connection, else none.
    pub fn connect(&self, password: Option<&[u8]>) -> Result<Client, PgError> {
        self.prepared(password)
            .connect(NoTls)
            .map_err(|e| from_postgres(&self.target(), e))
    }

    /// Connects to a server that accepts writes (libpq's
    /// `target_session_attrs=read-write`: of several hosts, the first
    /// writable one), and says which host answered. A server that asks
    /// for a password keyferry does not have is told apart, with where
    /// the password is read from.
    pub fn connect_writable(&self, password: Option<&[u8]>) -> Result<Connected, ConnectError> {
        let mut config = self.prepared(password);
        config.target_session_attrs(TargetSessionAttrs::ReadWrite);
        let had_password = config.get_password().is_some();
        let mut client = config.connect(NoTls).map_err(|e| {
            if !had_password && is_missing_password(&e) {
                self.no_password()
            } else {
                ConnectError::Pg(from_postgres(&self.target(), e))
            }
        })?;
        let target = self.answered(&mut client)?;
        Ok(Connected { client, target })
    }

    /// `host:port/dbname` of the server `client` reached: the configured
    /// host whose address and port the server reports, else the address
    /// the server reports, else (a Unix socket) the first host.
    fn answered(&self, client: &mut Client) -> Result<String, PgError> {
        let row = client
            .query_one("SELECT host(inet_server_addr()), inet_server_port()", &[])
            .map_err(|e| from_postgres(&self.target(), e))?;
        let addr: Option<String> = row.get(0);
        let port: Option<i32> = row.get(1);
        let hosts = self.host_ports();
        let db = self.database();
        let (Some(addr), Some(port)) = (addr, port) else {
            return Ok(match hosts.first() {
                Some((h, p)) => format!("{}/{db}", host_port(h, *p)),
                None => self.target(),
            });
        };
        let ip = addr.parse::<IpAddr>().ok();
        let configured = hosts.iter().find(|(h, p)| {
            i32::from(*p) == port
                && (h == &addr || (ip.is_some() && h.parse::<IpAddr>().ok() == ip))
        });
        Ok(match configured {
            Some((h, p)) => format!("{}/{db}", host_port(h, *p)),
            None => format!("{}/{db}", host_port(&addr, port as u16)),
        })
    }

    fn no_password(&self) -> ConnectError {
        let user = self.config.get_user().unwrap_or_default().to_owned();
        let hosts = self.host_ports();
        let first = hosts
            .first()
            .cloned()
            .unwrap_or_else(|| ("localhost".into(), 5432));
        let db = self.database().to_owned();
        let looked = match passfile::expected_path() {
            None => "libpq's password file cannot be found (PGPASSFILE is unset and so is HOME)"
                .to_owned(),
            Some((path, from_env)) => {
                let named = if from_env {
                    " (named by PGPASSFILE)"
                } else {
                    ""
                };
                if !path.is_file() {
                    format!(
                        "libpq's password file {}{named} does not exist",
                        path.display()
                    )
                } else {
                    let key = passfile::Key {
                        host: &first.0,
                        port: first.1,
                        database: &db,
                        user: &user,
                    };
                    match passfile::lookup(&path, key) {
                        Err(passfile::Unused::TooOpen) => format!(
                            "libpq's password file {}{named} is ignored because others may read it (chmod 600 it)",
                            path.display()
                        ),
                        Err(passfile::Unused::Unreadable(e)) => format!(
                            "libpq's password file {}{named} cannot be read ({e})",
                            path.display()
                        ),
                        Ok(_) => format!(
                            "libpq's password file {}{named} has no line for host {}, port {}, database {db}, user {user}",
                            path.display(),
                            first.0,
                            first.1
                        ),
                    }
                }
            }
        };
        ConnectError::NoPassword {
            target: self.target(),
            user,
            looked,
        }
    }

    /// The first password libpq's password file holds for one of the
    /// hosts, in the DSN's order (one role on a replicated pair has one
    /// password on both nodes).
    fn passfile_password(&self) -> Option<Zeroizing<String>> {
        let path = passfile::default_path()?;
        let user = self.config.get_user()?;
        let database = self.config.get_dbname().unwrap_or(user);
        let mut hosts: Vec<(String, u16)> = self
            .host_ports()
            .into_iter()
            .map(|(h, p)| {
                let is_tcp = !h.starts_with('/');
                (if is_tcp { h } else { "localhost".to_owned() }, p)
            })
            .collect();
        if hosts.is_empty() {
            hosts.push(("localhost".to_owned(), 5432));
        }
        hosts.iter().find_map(|(host, port)| {
            passfile::lookup(
                &path,
                passfile::Key {
                    host,
                    port: *port,
                    database,
                    user,
                },
            )
            .ok()
            .flatten()
        })
    }
}

/// A connection and the server that answered it.
pub struct Connected {
    pub client: Client,
    /// `host:port/dbname` of the server actually used.
    pub target: String,
}

/// Why [`Dsn::connect_writable`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The server wants a password and no source holds one.
    #[error("PostgreSQL at {target} asks for user {user}'s password and keyferry has none: {looked}; add a line `HOST:PORT:DATABASE:{user}:PASSWORD` for each host there (mode 0600), or give the password with --password-file, --password-fd or --password-env")]
    NoPassword {
        target: String,
        user: String,
        /// Where it was looked for, and why it was not found there.
        looked: String,
    },
}

/// `host:port`, bracketing an IPv6 address.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('/') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The `postgres` crate's "invalid configuration: password missing":
/// the server asked for a password and none was configured.
fn is_missing_password(e: &postgres::Error) -> bool {
    e.as_db_error().is_none()
        && std::error::Error::source(e).is_some_and(|s| s.to_string() == "password missing")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_refused_in_either_form() {
        for dsn in [
            "host=db user=app password=hunter2",
            "host=db user=app PASSWORD = 'x'",
            "postgresql://app:hunter2@db/app",
        ] {
            let err = Dsn::parse(dsn).unwrap_err();
            assert_eq!(err, DsnError::Password, "{dsn}");
            assert!(!err.to_string().contains("hunter2"));
        }
        assert_eq!(Dsn::parse("host=db").unwrap_err(), DsnError::NoUser);
        let d = Dsn::parse("host=10.0.0.1 port=5433 user=app dbname=crm").unwrap();
        assert_eq!(d.target(), "10.0.0.1:5433/crm");
        assert!(!d.is_multi_host());
    }

    #[test]
    fn a_multi_host_target_names_every_host() {
        let d = Dsn::parse("host=10.0.0.1,fd00::2 port=5432,5433 user=app dbname=crm").unwrap();
        assert!(d.is_multi_host());
        assert_eq!(d.target(), "10.0.0.1:5432,[fd00::2]:5433/crm");
        let d = Dsn::parse("host=10.0.0.1,10.0.0.2 port=6000 user=app").unwrap();
        assert_eq!(d.target(), "10.0.0.1:6000,10.0.0.2:6000/app");
    }
}
