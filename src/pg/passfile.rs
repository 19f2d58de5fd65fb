//! libpq's password file (`PGPASSFILE`, else `~/.pgpass`, else
//! `%APPDATA%\postgresql\pgpass.conf` on Windows), read the way libpq reads
//! it, so an operator who already keeps the replication password there is
//! not asked for it again.
//!
//! Format: one `hostname:port:database:username:password` per line; `*`
//! in any of the first four fields matches anything; `\:` and `\\` escape;
//! lines starting with `#` are comments; the first matching line wins. For a
//! physical replication connection libpq matches the database field against
//! `replication`. Like libpq, a file that others may read (any group or
//! other permission bit on Unix) is ignored.
//!
//! Passwords found here are returned in zeroizing storage and never shown.

use std::fs;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Environment variable naming the password file.
pub(crate) const PASSFILE_ENV: &str = "PGPASSFILE";

/// What a lookup matches against.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    /// Host as keyferry connects to it (IP text, or `localhost` for a
    /// Unix-domain socket).
    pub host: &'a str,
    /// Port.
    pub port: u16,
    /// Database (`replication` for a physical replication connection).
    pub database: &'a str,
    /// Role.
    pub user: &'a str,
}

/// The password file libpq would use, if it exists.
pub(crate) fn default_path() -> Option<PathBuf> {
    let path = match std::env::var_os(PASSFILE_ENV).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => platform::home_passfile()?,
    };
    path.is_file().then_some(path)
}

/// The password for `key` in the password file libpq would use, if there
/// is one and a line matches; an unreadable or too open file gives none.
pub(crate) fn find(key: Key<'_>) -> Option<Zeroizing<String>> {
    lookup(&default_path()?, key).ok().flatten()
}

/// The password file libpq would look at, whether or not it exists, and
/// whether `PGPASSFILE` named it: for messages that say where a missing
/// password is read from.
pub(crate) fn expected_path() -> Option<(PathBuf, bool)> {
    match std::env::var_os(PASSFILE_ENV).filter(|v| !v.is_empty()) {
        Some(p) => Some((PathBuf::from(p), true)),
        None => platform::home_passfile().map(|p| (p, false)),
    }
}

/// Why a password file was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unused {
    /// It could not be read.
    Unreadable(String),
    /// Others may read it, so libpq (and keyferry) ignore it.
    TooOpen,
}

/// Finds the password for `key` in the file at `path`; `Ok(None)` when no
/// line matches.
pub(crate) fn lookup(path: &Path, key: Key<'_>) -> Result<Option<Zeroizing<String>>, Unused> {
    if platform::too_open(path) {
        return Err(Unused::TooOpen);
    }
    let text = Zeroizing::new(fs::read(path).map_err(|e| Unused::Unreadable(e.to_string()))?);
    let text = String::from_utf8_lossy(&text);
    let port = key.port.to_string();
    let wanted = [key.host, port.as_str(), key.database, key.user];
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_fields(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = wanted
            .iter()
            .zip(&fields[..4])
            .all(|(want, field)| field.as_str() == "*" || field.as_str() == *want);
        if matches {
            // Everything after the fourth separator is the password, colons
            // included (libpq does the same).
            let mut password = Zeroizing::new(String::new());
            for (i, part) in fields[4..].iter().enumerate() {
                if i > 0 {
                    password.push(':');
                }
                password.push_str(part);
            }
            return Ok(Some(password));
        }
    }
    Ok(None)
}

/// Splits on unescaped `:` and removes the escapes.
fn split_fields(line: &str) -> Vec<Zeroizing<String>> {
    let mut fields = vec![Zeroizing::new(String::new())];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("non-empty").push(next);
                }
            }
            ':' => fields.push(Zeroizing::new(String::new())),
            c => fields.last_mut().expect("non-empty").push(c),
        }
    }
    fields
}

#[cfg(unix)]
mod platform {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    pub(crate) fn home_passfile() -> Option<PathBuf> {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass"))
    }

    pub(crate) fn too_open(path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }
}

#[cfg(windows)]
mod platform {
    use std::path::{Path, PathBuf};

    pub(crate) fn home_passfile() -> Option<PathBuf> {
        std::env::var_os("APPDATA").map(|a| PathBuf::from(a).join("postgresql").join("pgpass.conf"))
    }

    pub(crate) fn too_open(_path: &Path) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(host: &'a str, database: &'a str) -> Key<'a> {
        Key {
            host,
            port: 5432,
            database,
            user: "repuser",
        }
    }

    fn passfile(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn finds_the_first_matching_line_like_libpq() {
        let file = passfile(
            "# comment\n\
             10.0.0.9:5432:*:repuser:other\n\
             10.0.0.1:5432:replication:repuser:pa\\:ss:word\n\
             *:*:*:repuser:fallback\n",
        );
        let found = |k| lookup(file.path(), k).unwrap().map(|p| p.to_string());
        assert_eq!(
            found(key("10.0.0.1", "replication")).as_deref(),
            Some("pa:ss:word")
        );
        assert_eq!(
            found(key("10.0.0.1", "postgres")).as_deref(),
            Some("fallback")
        );
        assert_eq!(found(key("10.0.0.9", "postgres")).as_deref(), Some("other"));
        let other_user = Key {
            user: "postgres",
            ..key("10.0.0.1", "postgres")
        };
        assert_eq!(found(other_user), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_can_read_is_ignored() {
        let file = passfile("*:*:*:*:secret\n");
        fs::set_permissions(file.path(), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            lookup(file.path(), key("10.0.0.1", "x")),
            Err(Unused::TooOpen)
        );
    }

    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt;
}
