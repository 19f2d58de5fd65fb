//! The connection string an application (or keyferry's own registry) uses
//! to reach whichever node of the pair is the writable primary, so that a
//! switchover or failover needs no address flip in the client.
//!
//! Owns rendering the pair's two addresses and port as one multi-host
//! string in the dialects clients speak: libpq keyword form, libpq URI,
//! Npgsql and JDBC. Invariants: both nodes are listed (the primary of
//! `ha.toml` first, which only orders the attempts: the client keeps the
//! first one that accepts writes); every dialect asks the client for a
//! writable server (libpq `target_session_attrs=read-write`, Npgsql
//! `Target Session Attributes=primary`, JDBC `targetServerType=primary`);
//! no password is ever part of the string (it lives in the client's own
//! secret store or libpq's password file); IPv6 addresses are bracketed
//! where the dialect puts a port next to the host.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::str::FromStr;

use super::config::HaConfig;

/// A client's connection-string dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// libpq `key=value` (psql, the `postgres` crate, most drivers on libpq).
    Libpq,
    /// libpq URI `postgresql://…`.
    Uri,
    /// Npgsql (.NET; the vendor's `appsettings.json`).
    Npgsql,
    /// pgJDBC.
    Jdbc,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "libpq" => Ok(Format::Libpq),
            "uri" => Ok(Format::Uri),
            "npgsql" => Ok(Format::Npgsql),
            "jdbc" => Ok(Format::Jdbc),
            other => Err(format!(
                "format {other:?} is not one of libpq, uri, npgsql, jdbc"
            )),
        }
    }
}

/// Who connects to what, besides the pair's addresses.
#[derive(Debug, Clone, Default)]
pub struct Target<'a> {
    pub database: Option<&'a str>,
    pub user: Option<&'a str>,
}

/// The pair's hosts in the order the client should try them.
fn hosts(config: &HaConfig) -> [IpAddr; 2] {
    [config.primary.ip(), config.secondary.ip()]
}

/// `host:port` with the host bracketed when it is IPv6.
fn host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
    }
}

/// A libpq keyword value: quoted when it holds anything but plain
/// characters, with `\` and `'` escaped as libpq reads them.
fn libpq_value(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| !c.is_whitespace() && c != '\'' && c != '\\' && c != '=')
    {
        return v.to_owned();
    }
    let mut out = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn pct(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// An ADO.NET connection-string value: double-quoted (with `"` doubled)
/// when it holds a separator, a quote or surrounding spaces.
fn ado_value(v: &str) -> String {
    if v.contains([';', '=', '"', '\'']) || v.trim() != v || v.is_empty() {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

/// The connection string for `format`.
pub fn render(config: &HaConfig, format: Format, target: &Target) -> String {
    let port = config.pg_port;
    let [a, b] = hosts(config);
    match format {
        Format::Libpq => {
            // libpq splits the host list on commas, so IPv6 needs no brackets.
            let mut s = format!("host={a},{b} port={port},{port}");
            if let Some(d) = target.database {
                let _ = write!(s, " dbname={}", libpq_value(d));
            }
            if let Some(u) = target.user {
                let _ = write!(s, " user={}", libpq_value(u));
            }
            s.push_str(" target_session_attrs=read-write");
            s
        }
        Format::Uri => {
            let user = target
                .user
                .map(|u| format!("{}@", pct(u)))
                .unwrap_or_default();
            format!(
                "postgresql://{user}{},{}/{}?target_session_attrs=read-write",
                host_port(a, port),
                host_port(b, port),
                target.database.map(pct).unwrap_or_default()
            )
        }
        Format::Npgsql => {
            // Npgsql reads a bare IPv6 address as a host without a port and
            // takes the port from Port=: no brackets needed.
            let mut s = format!("Host={a},{b};Port={port}");
            if let Some(d) = target.database {
                let _ = write!(s, ";Database={}", ado_value(d));
            }
            if let Some(u) = target.user {
                let _ = write!(s, ";Username={}", ado_value(u));
            }
            s.push_str(";Target Session Attributes=primary");
            s
        }
        Format::Jdbc => {
            let mut s = format!(
                "jdbc:postgresql://{},{}/{}?targetServerType=primary",
                host_port(a, port),
                host_port(b, port),
                target.database.map(pct).unwrap_or_default()
            );
            if let Some(u) = target.user {
                let _ = write!(s, "&user={}", pct(u));
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::PeerAddr;

    fn pair(a: &str, b: &str, port: u16) -> HaConfig {
        let mut c = HaConfig::new(
            "pam-a",
            PeerAddr::parse(a).unwrap(),
            PeerAddr::parse(b).unwrap(),
        )
        .unwrap();
        c.pg_port = port;
        c
    }

    const APP: Target = Target {
        database: Some("pam"),
        user: Some("pamapp"),
    };

    #[test]
    fn libpq_lists_both_hosts_and_asks_for_a_writable_one() {
        let c = pair("10.0.0.1", "10.0.0.2", 5433);
        assert_eq!(
            render(&c, Format::Libpq, &APP),
            "host=10.0.0.1,10.0.0.2 port=5433,5433 dbname=pam user=pamapp target_session_attrs=read-write"
        );
        assert_eq!(
            render(&c, Format::Libpq, &Target::default()),
            "host=10.0.0.1,10.0.0.2 port=5433,5433 target_session_attrs=read-write"
        );
        // A value libpq would split is quoted and escaped.
        let odd = Target {
            database: Some("my db"),
            user: Some("o'neil"),
        };
        assert_eq!(
            render(&c, Format::Libpq, &odd),
            "host=10.0.0.1,10.0.0.2 port=5433,5433 dbname='my db' user='o\\'neil' target_session_attrs=read-write"
        );
        // What keyferry renders, the postgres crate parses back to both hosts.
        let parsed: postgres::Config = render(&c, Format::Libpq, &odd).parse().unwrap();
        assert_eq!(parsed.get_hosts().len(), 2);
        assert_eq!(parsed.get_user(), Some("o'neil"));
        assert_eq!(parsed.get_dbname(), Some("my db"));
    }

    #[test]
    fn uri_brackets_ipv6_and_encodes_names() {
        let c = pair("fd00::1", "fd00::2", 5432);
        let s = render(&c, Format::Uri, &APP);
        assert_eq!(
            s,
            "postgresql://pamapp@[fd00::1]:5432,[fd00::2]:5432/pam?target_session_attrs=read-write"
        );
        let parsed: postgres::Config = s.parse().unwrap();
        assert_eq!(parsed.get_hosts().len(), 2);
        assert_eq!(parsed.get_ports(), &[5432, 5432]);
        let odd = Target {
            database: Some("a/b"),
            user: Some("x@y"),
        };
        assert_eq!(
            render(&pair("10.0.0.1", "10.0.0.2", 5432), Format::Uri, &odd),
            "postgresql://x%40y@10.0.0.1:5432,10.0.0.2:5432/a%2Fb?target_session_attrs=read-write"
        );
    }

    #[test]
    fn npgsql_asks_for_the_primary() {
        let c = pair("10.0.0.1", "10.0.0.2", 5432);
        assert_eq!(
            render(&c, Format::Npgsql, &APP),
            "Host=10.0.0.1,10.0.0.2;Port=5432;Database=pam;Username=pamapp;Target Session Attributes=primary"
        );
        let c6 = pair("fd00::1", "fd00::2", 5432);
        assert_eq!(
            render(&c6, Format::Npgsql, &Target::default()),
            "Host=fd00::1,fd00::2;Port=5432;Target Session Attributes=primary"
        );
        let odd = Target {
            database: Some("a;b"),
            user: Some("say \"hi\""),
        };
        assert_eq!(
            render(&c, Format::Npgsql, &odd),
            "Host=10.0.0.1,10.0.0.2;Port=5432;Database=\"a;b\";Username=\"say \"\"hi\"\"\";Target Session Attributes=primary"
        );
    }

    #[test]
    fn jdbc_brackets_ipv6_and_asks_for_the_primary() {
        let c = pair("fd00::1", "10.0.0.2", 5432);
        assert_eq!(
            render(&c, Format::Jdbc, &APP),
            "jdbc:postgresql://[fd00::1]:5432,10.0.0.2:5432/pam?targetServerType=primary&user=pamapp"
        );
        assert_eq!(
            render(&c, Format::Jdbc, &Target::default()),
            "jdbc:postgresql://[fd00::1]:5432,10.0.0.2:5432/?targetServerType=primary"
        );
    }

    #[test]
    fn formats_parse_case_insensitively() {
        assert_eq!("NpgSQL".parse::<Format>(), Ok(Format::Npgsql));
        assert!("odbc".parse::<Format>().is_err());
    }
}
