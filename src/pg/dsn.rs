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

use std::str::FromStr;
use std::time::Duration;

use postgres::config::Host;
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

    /// `host:port/dbname`, for messages.
    pub fn target(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let db = self
            .config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("");
        format!("{host}:{port}/{db}")
    }

    /// Connects; the password is `password`, else the one libpq's password
    /// file holds for this connection, else none.
    pub fn connect(&self, password: Option<&[u8]>) -> Result<Client, PgError> {
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
            .connect(NoTls)
            .map_err(|e| from_postgres(&self.target(), e))
    }

    fn passfile_password(&self) -> Option<Zeroizing<String>> {
        let path = passfile::default_path()?;
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            _ => "localhost".to_owned(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user()?;
        let database = self.config.get_dbname().unwrap_or(user);
        passfile::lookup(
            &path,
            passfile::Key {
                host: &host,
                port,
                database,
                user,
            },
        )
        .ok()
        .flatten()
    }
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
    }
}
