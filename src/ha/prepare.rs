//! What `ha prepare` makes of a node's server (issue 20 item 1): the
//! replication role with exactly the rights the pair's commands need, a
//! `keyferry` schema that role owns (the node registry and rewrap's
//! progress table), and the server settings replication needs.
//!
//! Owns observing those facts on a server (as a superuser), turning them
//! into the SQL statements that would make them right ([`plan`], pure), and
//! running those statements ([`apply`]). Invariants:
//! - idempotent: a plan made from a server that is already right is empty,
//!   and a setting already written by `ALTER SYSTEM` but waiting for a
//!   restart is reported as pending, not written again;
//! - the role's password never travels as text: the statement carries a
//!   SCRAM-SHA-256 verifier computed here, so neither the server's log nor
//!   a `--dry-run` listing holds it; a password already right (checked
//!   against the stored verifier) is not set again;
//! - rights are exactly the pair's: `LOGIN`, `REPLICATION`, `pg_monitor`,
//!   `pg_checkpoint` (PostgreSQL 15 and later), EXECUTE on `pg_promote` and
//!   on pg_rewind's four functions; nothing is revoked;
//! - server settings go through `ALTER SYSTEM` only; which of them need a
//!   restart is PostgreSQL's own answer (`pg_settings.context`).

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use postgres::Client;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::preflight::REWIND_FUNCTIONS;
use crate::pg::{from_postgres, PgError};

/// The schema the replication role owns.
pub const SCHEMA: &str = "keyferry";
/// `pg_promote`'s signature.
const PROMOTE: &str = "pg_promote(boolean, integer)";
/// SCRAM iterations: PostgreSQL's default (`scram_iterations`).
const SCRAM_ITERATIONS: u32 = 4096;
/// The replication settings and their least acceptable values.
const MIN_SENDERS: i64 = 10;
const MIN_SLOTS: i64 = 10;

/// A server setting as the server has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    /// The value in effect.
    pub current: String,
    /// The value the configuration files set, if it differs and waits for
    /// a restart (or a reload).
    pub pending: Option<String>,
    /// `pg_settings.context = 'postmaster'`: takes effect on restart only.
    pub needs_restart: bool,
}

/// What [`observe`] found.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub role_exists: bool,
    pub login: bool,
    pub replication: bool,
    pub monitor: bool,
    /// The server has `pg_checkpoint` (PostgreSQL 15 and later) and the
    /// role is not a member yet.
    pub missing_checkpoint: bool,
    /// Function signatures the role may not execute yet.
    pub missing_execute: Vec<String>,
    /// The stored password verifier, if any.
    pub verifier: Option<String>,
    /// Owner of the `keyferry` schema, if it exists.
    pub schema_owner: Option<String>,
    /// The role's own `search_path` setting, if any.
    pub search_path: Option<String>,
    pub settings: Vec<Setting>,
}

/// One statement of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The SQL as run. It holds no secret (a password is a SCRAM verifier).
    pub sql: String,
    /// Why.
    pub why: String,
}

impl Statement {
    /// The statement as printed and audited: a password verifier is
    /// replaced by what it stands for (a verifier still allows guessing
    /// the password offline, so it is kept out of files and terminals).
    pub fn shown(&self) -> String {
        match self.sql.find(" PASSWORD '") {
            Some(at) => format!(
                "{} PASSWORD '<SCRAM-SHA-256 verifier of the given password>'",
                &self.sql[..at]
            ),
            None => self.sql.clone(),
        }
    }
}

/// What `ha prepare` would do on one server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub statements: Vec<Statement>,
    /// Settings written (now or by an earlier run) that wait for a restart.
    pub restart_for: Vec<String>,
}

/// What the settings should be for this node.
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    pub user: &'a str,
    /// `archive_command`, when the pair archives WAL.
    pub archive_command: Option<String>,
}

/// `"name"` with `"` doubled: an identifier PostgreSQL reads verbatim.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with `'` doubled (standard_conforming_strings is on since 9.1).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn every_function() -> Vec<String> {
    let mut all = vec![PROMOTE.to_owned()];
    all.extend(REWIND_FUNCTIONS.iter().map(|f| (*f).to_owned()));
    all
}

fn settings_wanted(wanted: &Wanted) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("wal_level", "replica".to_owned()),
        ("max_wal_senders", MIN_SENDERS.to_string()),
        ("max_replication_slots", MIN_SLOTS.to_string()),
        ("wal_log_hints", "on".to_owned()),
        ("hot_standby", "on".to_owned()),
    ];
    if let Some(cmd) = &wanted.archive_command {
        v.push(("archive_mode", "on".to_owned()));
        v.push(("archive_command", cmd.clone()));
    }
    v
}

/// Whether `have` satisfies `want` for setting `name`: numbers are
/// minimums, `wal_level = logical` includes `replica`, `archive_mode =
/// always` includes `on`.
fn satisfies(name: &str, have: &str, want: &str) -> bool {
    match name {
        "max_wal_senders" | "max_replication_slots" => {
            have.parse::<i64>().ok() >= want.parse::<i64>().ok()
        }
        "wal_level" => have == "replica" || have == "logical",
        "archive_mode" => have == "on" || have == "always",
        _ => have == want,
    }
}

/// The statements that make `observed` right; empty when it is.
/// `password`: the role's password, when the operator gave one; `salt`:
/// 16 random bytes for a new verifier.
pub fn plan(observed: &Observed, wanted: &Wanted, password: Option<&[u8]>, salt: [u8; 16]) -> Plan {
    let user = ident(wanted.user);
    let mut statements = Vec::new();
    let mut restart_for = Vec::new();
    let mut push = |sql: String, why: &str| {
        statements.push(Statement {
            sql,
            why: why.to_owned(),
        })
    };
    let new_password = password
        .filter(|p| {
            !observed
                .verifier
                .as_deref()
                .is_some_and(|v| verifier_matches(v, p))
        })
        .map(|p| scram_verifier(p, &salt, SCRAM_ITERATIONS));
    if !observed.role_exists {
        let mut sql = format!("CREATE ROLE {user} WITH LOGIN REPLICATION");
        if let Some(v) = &new_password {
            sql.push_str(&format!(" PASSWORD {}", literal(v)));
        }
        push(sql, "the replication role does not exist");
    } else {
        if !observed.login || !observed.replication {
            push(
                format!("ALTER ROLE {user} WITH LOGIN REPLICATION"),
                "the role must log in and stream WAL",
            );
        }
        if let Some(v) = &new_password {
            push(
                format!("ALTER ROLE {user} WITH PASSWORD {}", literal(v)),
                "the role's password is not the one given",
            );
        }
    }
    if !observed.role_exists || !observed.monitor {
        push(
            format!("GRANT pg_monitor TO {user}"),
            "`ha status` on the other node reads the replication's state and lag",
        );
    }
    if observed.missing_checkpoint {
        push(
            format!("GRANT pg_checkpoint TO {user}"),
            "`ha rejoin` right after a failover asks the new primary for its first checkpoint instead of waiting minutes for it",
        );
    }
    let missing = if observed.role_exists {
        observed.missing_execute.clone()
    } else {
        every_function()
    };
    for f in missing {
        let why = if f == PROMOTE {
            "`ha switchover` promotes the replica"
        } else {
            "`ha rejoin` runs pg_rewind"
        };
        push(
            format!("GRANT EXECUTE ON FUNCTION pg_catalog.{f} TO {user}"),
            why,
        );
    }
    match &observed.schema_owner {
        None => push(
            format!("CREATE SCHEMA {} AUTHORIZATION {user}", ident(SCHEMA)),
            "the node registry and rewrap's progress table live there",
        ),
        Some(owner) if owner != wanted.user => push(
            format!("ALTER SCHEMA {} OWNER TO {user}", ident(SCHEMA)),
            "the role must own the schema its tables live in",
        ),
        Some(_) => {}
    }
    let path = format!("{SCHEMA}, public");
    if observed.search_path.as_deref() != Some(path.as_str()) {
        push(
            format!(
                "ALTER ROLE {user} SET search_path = {}, public",
                ident(SCHEMA)
            ),
            "the role's tables are created in its own schema",
        );
    }
    for (name, want) in settings_wanted(wanted) {
        let found = observed.settings.iter().find(|s| s.name == name);
        let (current_ok, pending_ok, restart) = match found {
            Some(s) => (
                satisfies(name, &s.current, &want),
                s.pending
                    .as_deref()
                    .is_some_and(|p| satisfies(name, p, &want)),
                s.needs_restart,
            ),
            None => (false, false, true),
        };
        if current_ok && found.is_none_or(|s| s.pending.is_none()) {
            continue;
        }
        if !pending_ok {
            push(
                format!("ALTER SYSTEM SET {name} = {}", literal(&want)),
                "replication needs it",
            );
        }
        if restart && !(current_ok && pending_ok) {
            restart_for.push(name.to_owned());
        }
    }
    let mut out = Plan {
        statements,
        restart_for,
    };
    if out
        .statements
        .iter()
        .any(|s| s.sql.starts_with("ALTER SYSTEM"))
    {
        out.statements.push(Statement {
            sql: "SELECT pg_reload_conf()".into(),
            why: "settings that need no restart take effect now".into(),
        });
    }
    out
}

/// Reads what [`plan`] needs, as a superuser.
pub fn observe(client: &mut Client, target: &str, wanted: &Wanted) -> Result<Observed, PgError> {
    let pg = |e| from_postgres(target, e);
    let mut o = Observed::default();
    if let Some(r) = client
        .query_opt(
            "SELECT a.rolcanlogin, a.rolreplication, pg_has_role(a.oid, 'pg_monitor', 'USAGE'), \
                    a.rolpassword, array_to_string(r.rolconfig, E'\\n') \
             FROM pg_authid a JOIN pg_roles r ON r.oid = a.oid WHERE a.rolname = $1",
            &[&wanted.user],
        )
        .map_err(pg)?
    {
        o.role_exists = true;
        o.login = r.get(0);
        o.replication = r.get(1);
        o.monitor = r.get(2);
        o.verifier = r.get(3);
        let config: Option<String> = r.get(4);
        o.search_path = config.and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("search_path=").map(str::to_owned))
        });
        for f in every_function() {
            let ok: bool = client
                .query_one(
                    "SELECT has_function_privilege($1, $2, 'EXECUTE')",
                    &[&wanted.user, &format!("pg_catalog.{f}")],
                )
                .map_err(pg)?
                .get(0);
            if !ok {
                o.missing_execute.push(f);
            }
        }
    }
    // Evaluated in this order: pg_has_role fails for a role that does not
    // exist, as pg_checkpoint does not before PostgreSQL 15.
    o.missing_checkpoint = client
        .query_one(
            "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_checkpoint') \
                         THEN false \
                         ELSE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = $1 \
                                          AND pg_has_role(r.oid, 'pg_checkpoint', 'USAGE')) END",
            &[&wanted.user],
        )
        .map_err(pg)?
        .get(0);
    o.schema_owner = client
        .query_opt(
            "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1",
            &[&SCHEMA],
        )
        .map_err(pg)?
        .map(|r| r.get(0));
    let names: Vec<String> = settings_wanted(wanted)
        .into_iter()
        .map(|(n, _)| n.to_owned())
        .collect();
    // The last valid line of the configuration files wins, as the server
    // reads them; it differs from the setting in effect while it waits for
    // a restart (PostgreSQL marks such a line "could not be applied").
    for r in client
        .query(
            "SELECT s.name, s.setting, s.context = 'postmaster', \
                    (SELECT f.setting FROM pg_file_settings f \
                      WHERE f.name = s.name \
                        AND (f.error IS NULL OR f.error = 'setting could not be applied') \
                      ORDER BY f.seqno DESC LIMIT 1) \
             FROM pg_settings s WHERE s.name = ANY($1)",
            &[&names],
        )
        .map_err(pg)?
    {
        let current: String = r.get(1);
        let file: Option<String> = r.get(3);
        o.settings.push(Setting {
            name: r.get(0),
            pending: file.filter(|f| !same_value(f, &current)),
            current,
            needs_restart: r.get(2),
        });
    }
    Ok(o)
}

/// Booleans are written in many ways (`on`, `true`, `1`…).
fn same_value(a: &str, b: &str) -> bool {
    let norm = |s: &str| match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => "on".to_owned(),
        "off" | "false" | "no" | "0" => "off".to_owned(),
        other => other.to_owned(),
    };
    norm(a) == norm(b)
}

/// Runs the plan's statements in order. `ALTER SYSTEM` cannot run in a
/// transaction block, so each statement runs on its own; a failure stops
/// at that statement, the ones before it stand (each is idempotent, so
/// running `ha prepare` again finishes the work).
pub fn apply(client: &mut Client, target: &str, plan: &Plan) -> Result<(), PgError> {
    for s in &plan.statements {
        client
            .batch_execute(&s.sql)
            .map_err(|e| from_postgres(target, e))?;
    }
    Ok(())
}

type HmacSha256 = hmac::Hmac<Sha256>;

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// RFC 5802's Hi(): PBKDF2-HMAC-SHA-256 with one block.
fn salted(password: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<[u8; 32]> {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = Zeroizing::new(u);
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, b) in out.iter_mut().zip(u.iter()) {
            *o ^= b;
        }
    }
    out
}

fn keys(password: &[u8], salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    let salted = salted(password, salt, iterations);
    let client_key = hmac(&salted[..], b"Client Key");
    let stored: [u8; 32] = Sha256::digest(client_key).into();
    let server = hmac(&salted[..], b"Server Key");
    (stored, server)
}

/// PostgreSQL's stored form of a SCRAM-SHA-256 password:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`. The
/// password itself cannot be recovered from it. (PostgreSQL does not
/// normalise with SASLprep a password that is not valid UTF-8, nor one
/// that is plain ASCII, the cases the pair's passwords fall in.)
pub fn scram_verifier(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let (stored, server) = keys(password, salt, iterations);
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored),
        b64.encode(server)
    )
}

/// Whether `verifier` (as `pg_authid` stores it) is `password`'s.
pub fn verifier_matches(verifier: &str, password: &[u8]) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(rest) = verifier.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((params, key_part)) = rest.split_once('$') else {
        return false;
    };
    let Some((iter, salt)) = params.split_once(':') else {
        return false;
    };
    let (Ok(iter), Ok(salt)) = (iter.parse::<u32>(), b64.decode(salt)) else {
        return false;
    };
    if iter == 0 || iter > 1_000_000 {
        return false;
    }
    scram_verifier(password, &salt, iter).ends_with(key_part)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Wanted = Wanted {
        user: "repuser",
        archive_command: None,
    };

    fn right() -> Observed {
        Observed {
            role_exists: true,
            login: true,
            replication: true,
            monitor: true,
            missing_checkpoint: false,
            missing_execute: Vec::new(),
            verifier: Some(scram_verifier(b"pw", &[7; 16], 4096)),
            schema_owner: Some("repuser".into()),
            search_path: Some("keyferry, public".into()),
            settings: settings_wanted(&W)
                .into_iter()
                .map(|(n, v)| Setting {
                    name: n.into(),
                    current: v,
                    pending: None,
                    needs_restart: true,
                })
                .collect(),
        }
    }

    #[test]
    fn a_server_that_is_right_gets_an_empty_plan() {
        assert_eq!(plan(&right(), &W, Some(b"pw"), [1; 16]), Plan::default());
    }

    #[test]
    fn a_fresh_server_gets_the_role_its_rights_its_schema_and_the_settings() {
        let o = Observed {
            settings: vec![Setting {
                name: "max_wal_senders".into(),
                current: "20".into(),
                pending: None,
                needs_restart: true,
            }],
            ..Observed::default()
        };
        let p = plan(&o, &W, Some(b"secret pw"), [1; 16]);
        let sql: Vec<&str> = p.statements.iter().map(|s| s.sql.as_str()).collect();
        assert!(sql[0].starts_with(
            "CREATE ROLE \"repuser\" WITH LOGIN REPLICATION PASSWORD 'SCRAM-SHA-256$4096:"
        ));
        assert!(sql.iter().all(|s| !s.contains("secret pw")));
        assert!(sql.contains(&"GRANT pg_monitor TO \"repuser\""));
        assert!(!sql.iter().any(|s| s.contains("pg_checkpoint")));
        assert!(sql.contains(
            &"GRANT EXECUTE ON FUNCTION pg_catalog.pg_promote(boolean, integer) TO \"repuser\""
        ));
        let with_checkpoint = Observed {
            missing_checkpoint: true,
            ..o.clone()
        };
        let p2 = plan(&with_checkpoint, &W, Some(b"secret pw"), [1; 16]);
        assert!(p2
            .statements
            .iter()
            .any(|s| s.sql == "GRANT pg_checkpoint TO \"repuser\""));
        assert_eq!(
            sql.iter()
                .filter(|s| s.contains("pg_read_binary_file"))
                .count(),
            2
        );
        assert!(sql.contains(&"CREATE SCHEMA \"keyferry\" AUTHORIZATION \"repuser\""));
        // 20 senders are more than enough: left alone.
        assert!(!sql.iter().any(|s| s.contains("max_wal_senders")));
        assert!(sql.contains(&"ALTER SYSTEM SET wal_log_hints = 'on'"));
        assert_eq!(sql.last(), Some(&"SELECT pg_reload_conf()"));
        assert!(p.restart_for.contains(&"wal_log_hints".to_owned()));
    }

    #[test]
    fn a_setting_waiting_for_a_restart_is_not_written_again() {
        let mut o = right();
        let s = o
            .settings
            .iter_mut()
            .find(|s| s.name == "wal_log_hints")
            .unwrap();
        s.current = "off".into();
        s.pending = Some("on".into());
        let p = plan(&o, &W, None, [1; 16]);
        assert!(p.statements.is_empty(), "{p:?}");
        assert_eq!(p.restart_for, ["wal_log_hints"]);
    }

    #[test]
    fn only_a_different_password_is_set() {
        let o = right();
        let p = plan(&o, &W, Some(b"other"), [1; 16]);
        assert_eq!(p.statements.len(), 1);
        assert!(p.statements[0]
            .sql
            .starts_with("ALTER ROLE \"repuser\" WITH PASSWORD 'SCRAM-SHA-256$"));
        assert!(verifier_matches(&o.verifier.clone().unwrap(), b"pw"));
        assert!(!verifier_matches(&o.verifier.unwrap(), b"pW"));
        assert!(!verifier_matches("md5abc", b"pw"));
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
