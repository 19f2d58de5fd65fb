//! Reading settings from `postgresql.conf` and `postgresql.auto.conf`
//! without a running server: enough to tell how a data directory's server
//! archives WAL.
//!
//! The syntax is PostgreSQL's (`name = value` or `name value`, `#` comments,
//! values in single quotes with `''` or `\'` for a quote); names are case
//! insensitive and a later line wins, and `postgresql.auto.conf` is read
//! after `postgresql.conf`. `include` directives are not followed: a setting
//! kept in an included file is not seen (callers treat "not found" as
//! unknown, never as "off").

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

/// The settings of `data_dir`'s two configuration files, names in lower
/// case; `Ok(None)` when neither file exists there.
pub(crate) fn data_dir_settings(data_dir: &Path) -> io::Result<Option<BTreeMap<String, String>>> {
    let mut settings = BTreeMap::new();
    let mut found = false;
    for name in ["postgresql.conf", "postgresql.auto.conf"] {
        match fs::read_to_string(data_dir.join(name)) {
            Ok(text) => {
                found = true;
                settings.extend(parse(&text));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found.then_some(settings))
}

/// Every `name = value` line of `text`, in order.
fn parse(text: &str) -> Vec<(String, String)> {
    text.lines().filter_map(parse_line).collect()
}

pub(crate) fn parse_line(line: &str) -> Option<(String, String)> {
    let line = line.trim_start();
    let name_len = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(line.len());
    if name_len == 0 {
        return None;
    }
    let (name, rest) = line.split_at(name_len);
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    let value = if let Some(quoted) = rest.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = quoted.chars();
        loop {
            match chars.next()? {
                '\'' if chars.as_str().starts_with('\'') => {
                    chars.next();
                    value.push('\'');
                }
                '\'' => break,
                '\\' => value.push(chars.next()?),
                c => value.push(c),
            }
        }
        value
    } else {
        rest.split(|c: char| c == '#' || c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_owned()
    };
    Some((name.to_ascii_lowercase(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_settings_as_postgres_does() {
        let text = "# comment\n\
            archive_mode = on   # trailing\n\
            Archive_Command='test ! -f /srv/wal/%f && cp %p /srv/wal/%f'\n\
            wal_level replica\n\
            quoted = 'it''s \\'here\\''\n\
            \n\
            archive_mode = off\n\
            broken = 'no end\n";
        let s: BTreeMap<String, String> = parse(text).into_iter().collect();
        assert_eq!(s["archive_mode"], "off", "a later line wins");
        assert_eq!(
            s["archive_command"],
            "test ! -f /srv/wal/%f && cp %p /srv/wal/%f"
        );
        assert_eq!(s["wal_level"], "replica");
        assert_eq!(s["quoted"], "it's 'here'");
        assert!(
            !s.contains_key("broken"),
            "an unterminated quote is no setting"
        );
    }
}
