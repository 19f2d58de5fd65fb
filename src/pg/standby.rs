//! The text of a standby's configuration: the `primary_conninfo` and
//! `primary_slot_name` lines of `postgresql.auto.conf`, and the libpq
//! password file line that holds the replication password.
//!
//! Invariants: the password is only ever in the password-file line (a
//! zeroizing string), never in `primary_conninfo`, which names the password
//! file instead; every value is quoted for the file it goes into (libpq's
//! conninfo quoting inside PostgreSQL's configuration quoting), so no
//! address, user or path can end a value early and add a setting.
//! Writing the files is the caller's (a journaled change).

use std::path::Path;

use zeroize::Zeroizing;

/// What the standby connects to.
#[derive(Debug, Clone)]
pub(crate) struct Upstream<'a> {
    pub host: String,
    pub port: u16,
    pub user: &'a str,
    /// `application_name` the primary sees (`pg_stat_replication`).
    pub application_name: &'a str,
    pub passfile: &'a Path,
    pub slot: Option<&'a str>,
}

/// Settings keyferry owns in `postgresql.auto.conf`.
const OWNED: [&str; 2] = ["primary_conninfo", "primary_slot_name"];

/// `value` quoted for a libpq connection string.
fn conninfo_quote(value: &str) -> String {
    let mut out = String::from("'");
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// `value` quoted for `postgresql.conf` syntax.
fn guc_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// The `primary_conninfo` value: no password, the password file instead.
pub(crate) fn primary_conninfo(up: &Upstream<'_>) -> String {
    [
        ("host", up.host.clone()),
        ("port", up.port.to_string()),
        ("user", up.user.to_owned()),
        ("passfile", up.passfile.display().to_string()),
        ("application_name", up.application_name.to_owned()),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", conninfo_quote(v)))
    .collect::<Vec<_>>()
    .join(" ")
}

/// `postgresql.auto.conf` with keyferry's standby settings in place of any
/// earlier ones; every other line is kept as it was.
pub(crate) fn auto_conf(existing: &str, up: &Upstream<'_>) -> String {
    let mut out: String = existing
        .lines()
        .filter(|line| {
            let key = line.split('=').next().unwrap_or("").trim();
            !OWNED.iter().any(|o| key.eq_ignore_ascii_case(o))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!(
        "primary_conninfo = {}\n",
        guc_quote(&primary_conninfo(up))
    ));
    if let Some(slot) = up.slot {
        out.push_str(&format!("primary_slot_name = {}\n", guc_quote(slot)));
    }
    out
}

/// The password file line for connections to the upstream as the
/// replication user: physical replication (database `replication`) and the
/// SQL connection `pg_rewind` reads through, so any database (`*`); `None`
/// when the password cannot be written in one (a line break in it).
pub(crate) fn passfile_line(up: &Upstream<'_>, password: &str) -> Option<Zeroizing<String>> {
    if password.contains(['\n', '\r']) {
        return None;
    }
    let escape = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    let mut line = Zeroizing::new(format!(
        "{}:{}:*:{}:",
        escape(&up.host),
        up.port,
        escape(up.user)
    ));
    line.push_str(&escape(password));
    line.push('\n');
    Some(line)
}

/// A `postgresql.conf` copied from the primary, made to listen on this
/// node's address instead of the primary's: in every active
/// `listen_addresses` line the address `from` becomes `to`; every other
/// byte is kept. `None` when no line names `from` (nothing to change).
pub(crate) fn rebind_listen(conf: &str, from: &str, to: &str) -> Option<String> {
    let mut changed = false;
    let out: String = conf
        .split_inclusive('\n')
        .map(|line| {
            let body = line.trim_start();
            let key = body.split(['=', ' ', '\t']).next().unwrap_or("");
            if !key.eq_ignore_ascii_case("listen_addresses") {
                return line.to_owned();
            }
            let Some((head, value)) = line.split_once('=') else {
                return line.to_owned();
            };
            let (value, comment) = match value.find('#') {
                Some(i) => value.split_at(i),
                None => (value, ""),
            };
            let replaced: Vec<String> = value
                .split(',')
                .map(|part| {
                    let token = part.trim().trim_matches('\'').trim();
                    if token == from {
                        changed = true;
                        part.replacen(from, to, 1)
                    } else {
                        part.to_owned()
                    }
                })
                .collect();
            format!("{head}={}{comment}", replaced.join(","))
        })
        .collect();
    changed.then_some(out)
}

/// Whether a physical replication slot name is one PostgreSQL accepts.
pub(crate) fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up<'a>(passfile: &'a Path, slot: Option<&'a str>) -> Upstream<'a> {
        Upstream {
            host: "10.0.0.1".into(),
            port: 5432,
            user: "repuser",
            application_name: "pam-b",
            passfile,
            slot,
        }
    }

    #[test]
    fn conninfo_names_the_passfile_and_quotes_everything() {
        let pf = Path::new("/var/lib/postgresql/15/it's.pgpass");
        assert_eq!(
            primary_conninfo(&up(pf, None)),
            "host='10.0.0.1' port='5432' user='repuser' \
             passfile='/var/lib/postgresql/15/it\\'s.pgpass' application_name='pam-b'"
        );
    }

    #[test]
    fn auto_conf_replaces_only_the_standby_settings() {
        let pf = Path::new("/p");
        let existing = "# Do not edit this file manually!\nwork_mem = '8MB'\n\
                        primary_conninfo = 'host=old password=secret'\nPRIMARY_SLOT_NAME = 'x'\n";
        let text = auto_conf(existing, &up(pf, Some("pam_b")));
        assert_eq!(
            text,
            "# Do not edit this file manually!\nwork_mem = '8MB'\n\
             primary_conninfo = 'host=''10.0.0.1'' port=''5432'' user=''repuser'' passfile=''/p'' application_name=''pam-b'''\n\
             primary_slot_name = 'pam_b'\n"
        );
        assert!(!text.contains("secret"));
    }

    #[test]
    fn the_password_is_escaped_and_only_in_the_passfile_line() {
        let pf = Path::new("/p");
        let line = passfile_line(&up(pf, None), r"pa:ss\word").unwrap();
        assert_eq!(&*line, "10.0.0.1:5432:*:repuser:pa\\:ss\\\\word\n");
        assert!(passfile_line(&up(pf, None), "two\nlines").is_none());
    }

    #[test]
    fn the_copy_listens_on_this_nodes_address() {
        let conf = "#listen_addresses = '10.0.0.1'\nport = 5432\n\
                    listen_addresses = '10.0.0.1,127.0.0.1'  # the pair\n";
        assert_eq!(
            rebind_listen(conf, "10.0.0.1", "10.0.0.2").unwrap(),
            "#listen_addresses = '10.0.0.1'\nport = 5432\n\
             listen_addresses = '10.0.0.2,127.0.0.1'  # the pair\n"
        );
        assert_eq!(
            rebind_listen("listen_addresses = '*'\n", "10.0.0.1", "10.0.0.2"),
            None
        );
        assert_eq!(
            rebind_listen("listen_addresses = '10.0.0.10'\n", "10.0.0.1", "10.0.0.2"),
            None,
            "only the whole address"
        );
    }

    #[test]
    fn slot_names_follow_postgresql() {
        assert!(valid_slot_name("pam_b_1"));
        for bad in ["", "Pam", "a-b", "a b", &"x".repeat(64)] {
            assert!(!valid_slot_name(bad), "{bad:?}");
        }
    }
}
