//! The node registry: which keys every node of the pair and every remote
//! Action and Scheduler host holds, so that agreement is shown, not
//! assumed (issue 15 item 4).
//!
//! This module owns the registry's table (`keyferry_nodes`, in a database
//! on the primary, created on first use), the home's registry connection
//! (`registry.json`: a DSN without a password, this node's name and role),
//! publishing this node, adding a remote host by its fingerprint, working
//! out which keys a fingerprint stands for, each node's state against this
//! node's keyring, and the registry guard of `promote`.
//!
//! Invariants:
//! - the registry holds no secret: names, roles, fingerprints, key ids,
//!   primary ids, versions and times; its DSN holds no password (libpq's
//!   password file, or a `--password-*` source, supplies it);
//! - only the home's `registry.json` goes through the node's journaled,
//!   audited change ([`crate::node::Change`]); the remote table is **not**
//!   journaled: a row is one upsert (or delete), atomic in PostgreSQL, and
//!   a publish that fails leaves the row as it was, to be published again
//!   (`keyferry nodes publish`);
//! - every key change (`import`, `rotate`, `promote`, `disable`,
//!   `enable`, `destroy`) publishes automatically when the home has a
//!   registry connection, so the registry follows the keyring; that
//!   publish never fails the change that already committed: its failure is
//!   reported for one warning line that says how to publish later;
//! - the registry is always reached on a server that accepts writes: a
//!   pair node's connection lists both nodes of `ha.toml`
//!   (`target_session_attrs=read-write`), so it follows the primary across
//!   a switchover or failover, and every message names the host that
//!   answered;
//! - a node added by fingerprint is given key ids only when they are known
//!   for certain: this node's keyring now, an audit record whose
//!   `fingerprint_after` is that fingerprint and that lists its
//!   `key_ids_after` (records written since the registry exists do), a
//!   keystore backup with that fingerprint, or a combination of key
//!   material this node holds or held whose fingerprint is exactly that
//!   one; otherwise the key ids are unknown (NULL), and the node counts as
//!   not holding a key for the `promote` guard.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::str::FromStr;

use postgres::Client;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::lifecycle::{Guard, GuardFinding};
use super::{details, now_unix, Home};
use crate::error::{Error, Result};
use crate::fsutil::Ownership;
use crate::ha::config::HaConfig;
use crate::ha::connstr;
use crate::keyring::{fingerprint_of, Fingerprint, KeyMaterial, Keyring};
use crate::node::{KEYRING_FILE, REGISTRY_FILE};
use crate::pg::dsn::{ConnectError, Connected, Dsn};

/// The registry's table, in the database the registry DSN names.
pub const TABLE: &str = "keyferry_nodes";
/// The distributions (format 2 bundles) waiting for each node, one row per
/// node: what `keyferry distribute` stores and `keyferry nodes sync` takes.
/// Nothing in it is trusted: every bundle is signed and sealed.
pub const DISTRIBUTIONS: &str = "keyferry_distributions";
/// How recently a node must have been seen for the `promote` guard to
/// wait for it (`--since`).
pub const DEFAULT_SINCE_SECS: u64 = 7 * 24 * 3600;
const SETTINGS_FORMAT: &str = "keyferry-registry";
/// Beyond this many key ids with known material, combinations are not
/// tried (2^n fingerprints).
const MAX_COMBINED_KEYS: usize = 12;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A node of the PostgreSQL pair (primary or secondary).
    #[default]
    Pair,
    /// A remote Action host.
    Action,
    /// A remote Scheduler host.
    Scheduler,
}

impl Role {
    /// As stored in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Pair => "pair",
            Role::Action => "action",
            Role::Scheduler => "scheduler",
        }
    }

    /// As shown to the operator.
    pub fn label(self) -> &'static str {
        match self {
            Role::Pair => "pair node",
            Role::Action => "Action",
            Role::Scheduler => "Scheduler",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "pair" => Ok(Role::Pair),
            "action" => Ok(Role::Action),
            "scheduler" => Ok(Role::Scheduler),
            other => Err(format!(
                "role {other:?} is not one of pair, action, scheduler"
            )),
        }
    }
}

/// The home's registry connection (`registry.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    format: String,
    version: u32,
    /// The registry's DSN, without a password.
    pub dsn: String,
    /// This node's name in the registry (default: `node` in `ha.toml`,
    /// else the host name).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Role,
}

/// Who a pair node's registry DSN, built from `ha.toml`, connects as.
#[derive(Debug, Clone, Copy, Default)]
pub struct PairDsn<'a> {
    pub user: Option<&'a str>,
    pub database: Option<&'a str>,
}

/// How one command reaches the registry: `--dsn` (else the home's
/// connection) and a password from a source the operator named (else
/// libpq's password file).
#[derive(Debug, Clone, Copy, Default)]
pub struct Access<'a> {
    pub dsn: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// One node as the registry holds it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    pub role: Role,
    pub fingerprint: String,
    /// The key ids it holds (with material); `None` when unknown.
    pub key_ids: Option<Vec<u32>>,
    pub primary_id: Option<u32>,
    /// keyferry's version there (`None` for a node added by fingerprint).
    pub version: Option<String>,
    /// Unix seconds.
    pub last_seen: u64,
    /// `published` (by the node itself) or `added` (by fingerprint).
    pub source: String,
    /// The node's host key (public half, base64) as published; a pair
    /// node seals distributions to it only once an operator approved it.
    pub host_key: Option<String>,
}

/// The home's registry connection, if any.
pub fn settings(home: &Home) -> Result<Option<Settings>> {
    let path = home.root().join(REGISTRY_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()))(e)),
    };
    let s: Settings = serde_json::from_slice(&text).map_err(|e| {
        Error::Refused(format!(
            "{} is damaged ({e}); restore it from {} or run `keyferry nodes connect --dsn DSN` again",
            path.display(),
            home.backup_dir().display()
        ))
    })?;
    if s.format != SETTINGS_FORMAT || s.version != 1 {
        return Err(Error::Refused(format!(
            "{} is not a keyferry registry connection of version 1",
            path.display()
        )));
    }
    Ok(Some(s))
}

fn parse_dsn(text: &str) -> Result<Dsn> {
    Dsn::parse(text).map_err(|e| Error::Usage(format!("--dsn: {e}")))
}

pub(super) fn no_registry() -> Error {
    Error::Usage(
        "this node has no node registry: run `keyferry nodes connect --dsn DSN` once, or give --dsn"
            .into(),
    )
}

/// The DSN to use: `--dsn`, else the home's; `None` when neither.
pub(super) fn dsn_for(home: &Home, access: Access) -> Result<Option<Dsn>> {
    match access.dsn {
        Some(d) => parse_dsn(d).map(Some),
        None => match settings(home)? {
            Some(s) => parse_dsn(&s.dsn).map(Some),
            None => Ok(None),
        },
    }
}

pub(super) fn pg(target: &str) -> impl Fn(postgres::Error) -> Error + '_ {
    move |e| Error::Pg(crate::pg::from_postgres(target, e))
}

/// A connection to the registry and the host that answered it.
pub(super) struct Reg {
    pub(super) client: Client,
    /// `host:port/dbname` of the server actually used (of a multi-host
    /// DSN, the writable one).
    pub(super) target: String,
}

/// Connects to a server that accepts writes (of a multi-host DSN, the
/// current primary) and creates the table when it is not there yet.
pub(super) fn open(dsn: &Dsn, password: Option<&[u8]>) -> Result<Reg> {
    let Connected { mut client, target } = dsn.connect_writable(password).map_err(|e| match e {
        ConnectError::Pg(e) => Error::Pg(e),
        // Says which password and where it is read from: the fix is
        // the operator's, as for any password source.
        e @ ConnectError::NoPassword { .. } => Error::Usage(format!("node registry: {e}")),
    })?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (\
               name text PRIMARY KEY, \
               role text NOT NULL CHECK (role IN ('pair', 'action', 'scheduler')), \
               fingerprint text NOT NULL, \
               key_ids int[], \
               primary_id int, \
               version text, \
               last_seen timestamptz NOT NULL DEFAULT now(), \
               source text NOT NULL DEFAULT 'published'); \
             ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS host_key text; \
             CREATE TABLE IF NOT EXISTS {DISTRIBUTIONS} (\
               name text PRIMARY KEY, \
               serial bigint NOT NULL, \
               stored timestamptz NOT NULL DEFAULT now(), \
               by_node text NOT NULL, \
               bundle bytea NOT NULL)"
        ))
        .map_err(pg(&target))?;
    Ok(Reg { client, target })
}

pub(super) fn upsert(reg: &mut Reg, r: &NodeRecord) -> Result<()> {
    let ids: Option<Vec<i32>> = r
        .key_ids
        .as_ref()
        .map(|v| v.iter().map(|i| *i as i32).collect());
    let primary = r.primary_id.map(|p| p as i32);
    reg.client
        .execute(
            &format!(
                "INSERT INTO {TABLE} (name, role, fingerprint, key_ids, primary_id, version, last_seen, source, host_key) \
                 VALUES ($1, $2, $3, $4, $5, $6, now(), $7, $8) ON CONFLICT (name) DO UPDATE SET \
                 role = EXCLUDED.role, fingerprint = EXCLUDED.fingerprint, key_ids = EXCLUDED.key_ids, \
                 primary_id = EXCLUDED.primary_id, version = EXCLUDED.version, \
                 last_seen = now(), source = EXCLUDED.source, \
                 host_key = COALESCE(EXCLUDED.host_key, {TABLE}.host_key)"
            ),
            &[
                &r.name,
                &r.role.as_str(),
                &r.fingerprint,
                &ids,
                &primary,
                &r.version,
                &r.source,
                &r.host_key,
            ],
        )
        .map_err(pg(&reg.target))?;
    Ok(())
}

pub(super) fn read_all(reg: &mut Reg) -> Result<Vec<NodeRecord>> {
    let rows = reg
        .client
        .query(
            &format!(
                "SELECT name, role, fingerprint, key_ids, primary_id, version, \
                 extract(epoch FROM last_seen)::bigint, source, host_key FROM {TABLE} ORDER BY name"
            ),
            &[],
        )
        .map_err(pg(&reg.target))?;
    Ok(rows
        .iter()
        .map(|r| {
            let role: String = r.get(1);
            let ids: Option<Vec<i32>> = r.get(3);
            let primary: Option<i32> = r.get(4);
            let seen: i64 = r.get(6);
            NodeRecord {
                name: r.get(0),
                role: role.parse().unwrap_or_default(),
                fingerprint: r.get(2),
                key_ids: ids.map(|v| v.into_iter().map(|i| i as u32).collect()),
                primary_id: primary.map(|p| p as u32),
                version: r.get(5),
                last_seen: seen.max(0) as u64,
                source: r.get(7),
                host_key: r.get(8),
            }
        })
        .collect())
}

/// This node's name in the registry: the connection's, else `ha.toml`'s
/// `node`, else the host name.
pub(super) fn this_name(home: &Home, settings: Option<&Settings>) -> String {
    if let Some(n) = settings.and_then(|s| s.name.clone()) {
        return n;
    }
    if let Ok(Some(config)) = crate::ops::config::load_local(home) {
        return config.node;
    }
    gethostname::gethostname().to_string_lossy().into_owned()
}

pub(super) fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(Error::Usage(format!(
            "node name {name:?} is not valid: give 1 to 200 printable characters"
        )));
    }
    Ok(())
}

/// What publishing wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// `host:port/dbname` of the registry.
    pub registry: String,
    pub node: NodeRecord,
}

/// This node's record as it stands now, with its host key.
fn own_record(
    name: String,
    role: Role,
    keyring: &Keyring,
    host_key: Option<crate::bundle::keys::HostPublic>,
) -> NodeRecord {
    NodeRecord {
        name,
        role,
        fingerprint: keyring.fingerprint().to_string(),
        key_ids: Some(keyring.held_ids()),
        primary_id: Some(keyring.primary()),
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        last_seen: now_unix(),
        source: "published".into(),
        host_key: host_key.map(|k| k.to_base64()),
    }
}

/// The registry DSN of a pair node: both nodes of `ha.toml` on their
/// PostgreSQL port, the writable one chosen, as `user` (default: the
/// replication user, which `ha prepare` gives a schema of its own) in
/// `database` (default: `postgres`).
pub fn pair_dsn(config: &HaConfig, user: Option<&str>, database: Option<&str>) -> String {
    connstr::render(
        config,
        connstr::Format::Libpq,
        &connstr::Target {
            database: Some(database.unwrap_or(crate::pg::MAINTENANCE_DB)),
            user: Some(user.unwrap_or(&config.replication_user)),
        },
    )
}

/// `keyferry nodes connect [--dsn DSN]`: checks that the registry can be
/// reached (creating its table on first use), keeps the connection in the
/// home (an audited change) and publishes this node. Without a DSN, a
/// pair node's is built from `ha.toml` ([`pair_dsn`]).
pub fn connect(
    home: &Home,
    dsn_text: Option<&str>,
    pair: PairDsn,
    name: Option<String>,
    role: Role,
    password: Option<&[u8]>,
) -> Result<Published> {
    let dsn = match dsn_text {
        Some(text) => parse_dsn(text)?,
        None => {
            let config = crate::ops::config::load_local(home)?.ok_or_else(|| {
                Error::Usage(
                    "nodes connect needs --dsn DSN (the registry's database on the primary, without a password), or ha.toml on a pair node (`keyferry ha init`) to build it from"
                        .into(),
                )
            })?;
            let text = pair_dsn(&config, pair.user, pair.database);
            Dsn::parse(&text)
                .map_err(|e| Error::Usage(format!("the registry DSN built from ha.toml: {e}")))?
        }
    };
    if let Some(n) = &name {
        check_name(n)?;
    }
    let mut node = home.open(false)?;
    let keyring = node.require_keystore()?.keyring.clone();
    // Reached before anything is kept: a registry that cannot be used is
    // refused with the home unchanged.
    let mut reg = open(&dsn, password)?;
    let settings = Settings {
        format: SETTINGS_FORMAT.into(),
        version: 1,
        dsn: dsn.as_str().to_owned(),
        name,
        role,
    };
    let mut text = serde_json::to_vec_pretty(&settings)
        .map_err(|e| Error::Refused(format!("cannot render the registry connection: {e}")))?;
    text.push(b'\n');
    let mut record = own_record(this_name(home, Some(&settings)), role, &keyring, None);
    let mut change = node.begin(
        "nodes-connect",
        details([
            ("dsn", Value::from(settings.dsn.clone())),
            ("node", Value::from(record.name.clone())),
            ("role", Value::from(role.as_str())),
        ]),
    )?;
    change.replace_file(
        &home.root().join(REGISTRY_FILE),
        &mut &text[..],
        Ownership::OwnerOnly,
    )?;
    change.finish()?;
    // The change gave a keystore from before host keys one.
    record.host_key = node
        .keystore()
        .and_then(|s| s.node.host_key.as_ref())
        .map(|k| k.public().to_base64());
    upsert(&mut reg, &record)?;
    Ok(Published {
        registry: reg.target,
        node: record,
    })
}

/// `keyferry nodes publish`: records this node (name, role, fingerprint,
/// key ids, primary, version, now) in the registry.
pub fn publish(
    home: &Home,
    access: Access,
    name: Option<String>,
    role: Option<Role>,
) -> Result<Published> {
    let settings = settings(home)?;
    let dsn = dsn_for(home, access)?.ok_or_else(no_registry)?;
    if let Some(n) = &name {
        check_name(n)?;
    }
    let keyring = home.load_keystore()?.keyring;
    let name = name.unwrap_or_else(|| this_name(home, settings.as_ref()));
    let role = role
        .or(settings.as_ref().map(|s| s.role))
        .unwrap_or_default();
    let host_key = super::keys::ensure_host_key(home)?;
    let record = own_record(name, role, &keyring, Some(host_key));
    let mut reg = open(&dsn, access.password)?;
    upsert(&mut reg, &record)?;
    Ok(Published {
        registry: reg.target,
        node: record,
    })
}

/// How the automatic publish after a key change went.
#[derive(Debug, Clone)]
pub enum AutoPublish {
    Published(Published),
    /// Why not, with how to publish later.
    Failed(String),
}

/// The publish that follows every key change on a home
/// with a registry connection; `None` without one. Never an error: the
/// change before it has committed.
pub fn publish_after_change(home: &Home, password: Option<&[u8]>) -> Option<AutoPublish> {
    match settings(home) {
        Ok(None) => None,
        Ok(Some(_)) => Some(
            match publish(
                home,
                Access {
                    dsn: None,
                    password,
                },
                None,
                None,
            ) {
                Ok(p) => AutoPublish::Published(p),
                Err(e) => AutoPublish::Failed(format!(
                    "this node's keys were not published to the node registry ({e}); the change itself is done: publish later with `keyferry nodes publish`"
                )),
            },
        ),
        Err(e) => Some(AutoPublish::Failed(format!(
            "this node's keys were not published to the node registry ({e}); the change itself is done: publish later with `keyferry nodes publish`"
        ))),
    }
}

/// Which keys a fingerprint stands for, and how that is known.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Derived {
    pub key_ids: Vec<u32>,
    pub primary_id: u32,
    /// Where it was found (this node's keyring, audit record N, a backup,
    /// the key material this node holds).
    pub how: String,
}

/// Works out the keys of the keyring state whose fingerprint is `fp`,
/// from what this node's keyring has had; `None` when it cannot be known.
pub fn derive_keys(home: &Home, fp: &Fingerprint) -> Result<Option<Derived>> {
    let store = home.load_keystore()?;
    let current = &store.keyring;
    if current.fingerprint() == *fp {
        return Ok(Some(Derived {
            key_ids: current.held_ids(),
            primary_id: current.primary(),
            how: "this node's keyring now".into(),
        }));
    }
    let wanted = fp.to_string();
    let records = home.verify_audit(&store)?;
    for r in records.iter().rev() {
        if r.details.get("fingerprint_after").and_then(Value::as_str) != Some(wanted.as_str()) {
            continue;
        }
        let ids = r
            .details
            .get("key_ids_after")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                    .collect::<Option<Vec<u32>>>()
            });
        let primary = r
            .details
            .get("primary_after")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok());
        if let (Some(key_ids), Some(primary_id)) = (ids, primary) {
            return Ok(Some(Derived {
                key_ids,
                primary_id,
                how: format!("audit record {} ({}, {})", r.seq, r.action, r.time),
            }));
        }
    }
    // Older records name the fingerprint only: try the keyring states this
    // node kept (its keystore backups), then every combination of the key
    // material it holds or held.
    let mut material: BTreeMap<u32, KeyMaterial> = BTreeMap::new();
    let mut remember = |k: &Keyring| {
        for key in k.keys() {
            if let Some(m) = &key.material {
                material.entry(key.id).or_insert_with(|| m.clone());
            }
        }
    };
    remember(current);
    for (path, k) in keystore_backups(home) {
        if k.fingerprint() == *fp {
            return Ok(Some(Derived {
                key_ids: k.held_ids(),
                primary_id: k.primary(),
                how: format!("keystore backup {}", path.display()),
            }));
        }
        remember(&k);
    }
    if material.len() <= MAX_COMBINED_KEYS {
        let ids: Vec<u32> = material.keys().copied().collect();
        for mask in 1u32..(1 << ids.len()) {
            let chosen: Vec<u32> = ids
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, id)| *id)
                .collect();
            for primary in &chosen {
                let f = fingerprint_of(*primary, chosen.iter().map(|id| (*id, &material[id])));
                if f == *fp {
                    return Ok(Some(Derived {
                        key_ids: chosen.clone(),
                        primary_id: *primary,
                        how: "the key material this node holds or held".into(),
                    }));
                }
            }
        }
    }
    Ok(None)
}

/// The keystore backups in the home that still parse as keyrings.
fn keystore_backups(home: &Home) -> Vec<(std::path::PathBuf, Keyring)> {
    let Ok(entries) = fs::read_dir(home.backup_dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{KEYRING_FILE}.")) || !name.ends_with(".bak") {
            continue;
        }
        let Ok(bytes) = fs::read(entry.path()) else {
            continue;
        };
        let bytes = zeroize::Zeroizing::new(bytes);
        if let Ok(k) = Keyring::from_json(&bytes) {
            out.push((entry.path(), k));
        }
    }
    out.sort_by(|a, b| b.0.cmp(&a.0));
    out
}

/// What `nodes add` recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    pub registry: String,
    pub node: NodeRecord,
    /// How the key ids were worked out; `None` when they are unknown.
    pub derived: Option<Derived>,
}

/// `keyferry nodes add NAME --role ROLE --fingerprint kf1:…`: records a
/// host that cannot reach the database, by the fingerprint its operator
/// read there (`keyferry keys fingerprint`).
pub fn add(
    home: &Home,
    access: Access,
    name: &str,
    role: Role,
    fingerprint: &str,
) -> Result<Added> {
    check_name(name)?;
    let fp: Fingerprint = fingerprint.trim().parse().map_err(|e| {
        Error::Usage(format!(
            "--fingerprint {fingerprint:?}: {e}; copy it from `keyferry keys fingerprint` on that host"
        ))
    })?;
    let dsn = dsn_for(home, access)?.ok_or_else(no_registry)?;
    let derived = derive_keys(home, &fp)?;
    let record = NodeRecord {
        name: name.to_owned(),
        role,
        fingerprint: fp.to_string(),
        key_ids: derived.as_ref().map(|d| d.key_ids.clone()),
        primary_id: derived.as_ref().map(|d| d.primary_id),
        version: None,
        last_seen: now_unix(),
        source: "added".into(),
        host_key: None,
    };
    let mut reg = open(&dsn, access.password)?;
    upsert(&mut reg, &record)?;
    Ok(Added {
        registry: reg.target,
        node: record,
        derived,
    })
}

/// `keyferry nodes remove NAME`: a host that is gone.
pub fn remove(home: &Home, access: Access, name: &str) -> Result<String> {
    let dsn = dsn_for(home, access)?.ok_or_else(no_registry)?;
    let mut reg = open(&dsn, access.password)?;
    let n = reg
        .client
        .execute(&format!("DELETE FROM {TABLE} WHERE name = $1"), &[&name])
        .map_err(pg(&reg.target))?;
    if n == 0 {
        return Err(Error::Usage(format!(
            "the node registry at {} has no node {name:?}: `keyferry nodes` lists them",
            reg.target
        )));
    }
    Ok(reg.target)
}

/// A node against this node's keyring.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub record: NodeRecord,
    /// `agrees`, `lacks keys N…`, `has the keys, older primary`, …
    pub state: String,
    /// Key ids of this node's keyring that it lacks.
    pub lacks: Vec<u32>,
    /// The key ids were worked out now from this node's records (the
    /// registry holds NULL for them).
    pub key_ids_derived: bool,
    pub this_node: bool,
    /// This node's keyring approves the node's host key as a recipient of
    /// distributions (`approved`), approves another key than the row holds
    /// (`key changed`: the host was set up again), or not at all.
    pub distribution: &'static str,
}

/// `keyferry nodes`: every node, compared with this node's keyring.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub registry: String,
    /// This node's name, fingerprint, primary and key ids: what every
    /// node is compared with.
    pub this_node: String,
    pub fingerprint: String,
    pub primary_id: u32,
    pub key_ids: Vec<u32>,
    pub nodes: Vec<NodeView>,
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A node's one state against the reference keyring.
fn state_of(reference: &Keyring, r: &NodeRecord) -> (String, Vec<u32>) {
    let ref_fp = reference.fingerprint().to_string();
    let ref_ids = reference.held_ids();
    let Some(ids) = &r.key_ids else {
        if r.fingerprint == ref_fp {
            return ("agrees".into(), Vec::new());
        }
        return (
            "unknown keys (its fingerprint is not one this node's keyring has had)".into(),
            Vec::new(),
        );
    };
    let held: BTreeSet<u32> = ids.iter().copied().collect();
    let lacks: Vec<u32> = ref_ids
        .iter()
        .copied()
        .filter(|id| !held.contains(id))
        .collect();
    if !lacks.is_empty() {
        return (format!("lacks keys {}", join_ids(&lacks)), lacks);
    }
    if r.fingerprint == ref_fp {
        return ("agrees".into(), lacks);
    }
    match r.primary_id {
        Some(p) if p > reference.primary() => (format!("has the keys, newer primary {p}"), lacks),
        Some(p) if p != reference.primary() => ("has the keys, older primary".into(), lacks),
        _ if held.len() > ref_ids.len() => (
            format!(
                "has the keys and others ({})",
                join_ids(
                    &held
                        .iter()
                        .copied()
                        .filter(|id| !ref_ids.contains(id))
                        .collect::<Vec<_>>()
                )
            ),
            lacks,
        ),
        _ => (
            "different key material under the same ids (another pair's keys?)".into(),
            lacks,
        ),
    }
}

/// The pair's key agreement in one line (for `ha status`), when the home
/// has a registry connection: whether every registered node holds this
/// node's keys under its primary, else which do not and why.
pub fn agreement_line(home: &Home) -> Option<String> {
    settings(home).ok()??;
    let listing = match list(home, Access::default()) {
        Ok(l) => l,
        Err(e) => return Some(format!("keys: the node registry cannot be read: {e}")),
    };
    let others: Vec<String> = listing
        .nodes
        .iter()
        .filter(|n| n.state != "agrees")
        .map(|n| format!("{} {}", n.record.name, n.state))
        .collect();
    let total = listing.nodes.len();
    Some(if others.is_empty() {
        format!(
            "keys: all {total} registered nodes agree ({})",
            listing.fingerprint
        )
    } else {
        format!(
            "keys: {} of {total} registered nodes agree; {} (`keyferry nodes` lists them)",
            total - others.len(),
            others.join("; ")
        )
    })
}

/// `keyferry nodes [--json]`.
pub fn list(home: &Home, access: Access) -> Result<Listing> {
    let settings = settings(home)?;
    let dsn = dsn_for(home, access)?.ok_or_else(no_registry)?;
    let keyring = home.load_keystore()?.keyring;
    let me = this_name(home, settings.as_ref());
    let mut reg = open(&dsn, access.password)?;
    let records = read_all(&mut reg)?;
    let mut cache: BTreeMap<String, Option<Derived>> = BTreeMap::new();
    let mut nodes = Vec::with_capacity(records.len());
    for mut record in records {
        let mut derived_now = false;
        if record.key_ids.is_none() {
            if let Ok(fp) = record.fingerprint.parse::<Fingerprint>() {
                let d = match cache.get(&record.fingerprint) {
                    Some(d) => d.clone(),
                    None => {
                        let d = derive_keys(home, &fp)?;
                        cache.insert(record.fingerprint.clone(), d.clone());
                        d
                    }
                };
                if let Some(d) = d {
                    record.key_ids = Some(d.key_ids);
                    record.primary_id = Some(d.primary_id);
                    derived_now = true;
                }
            }
        }
        let (state, lacks) = state_of(&keyring, &record);
        let approval = keyring
            .approved_hosts()
            .iter()
            .find(|h| h.name == record.name);
        let distribution = match approval {
            None => "-",
            Some(h) if record.host_key.as_deref() == Some(h.host_key.to_base64().as_str()) => {
                "approved"
            }
            Some(_) => "key changed",
        };
        nodes.push(NodeView {
            distribution,
            this_node: record.name == me,
            record,
            state,
            lacks,
            key_ids_derived: derived_now,
        });
    }
    Ok(Listing {
        registry: reg.target,
        this_node: me,
        fingerprint: keyring.fingerprint().to_string(),
        primary_id: keyring.primary(),
        key_ids: keyring.held_ids(),
        nodes,
    })
}

/// The registry guard of `promote`: refuses while a node seen in the last
/// `since_secs` does not hold the key (or its keys are unknown). Without a
/// registry (no `--dsn`, no connection in the home) nothing is checked.
pub struct RegistryGuard<'a> {
    pub access: Access<'a>,
    pub since_secs: u64,
}

impl Guard for RegistryGuard<'_> {
    fn check(&self, home: &Home, action: &str, key: u32) -> Result<GuardFinding> {
        let Some(dsn) = dsn_for(home, self.access)? else {
            return Ok(None);
        };
        let listing = match list(home, self.access) {
            Ok(l) => l,
            Err(e) => {
                return Ok(Some(format!(
                    "the node registry at {} could not be read ({e}), so it is unknown whether every node holds key {key}",
                    dsn.target()
                )))
            }
        };
        let cutoff = now_unix().saturating_sub(self.since_secs);
        let lacking: Vec<String> = listing
            .nodes
            .iter()
            .filter(|n| !n.this_node && n.record.last_seen >= cutoff)
            .filter_map(|n| {
                let why = match &n.record.key_ids {
                    Some(ids) if ids.contains(&key) => return None,
                    Some(_) => "lacks it".to_owned(),
                    None => format!(
                        "its keys are unknown (fingerprint {})",
                        n.record.fingerprint
                    ),
                };
                Some(format!(
                    "{} ({}, last seen {}: {why})",
                    crate::fmt::printable(&n.record.name),
                    n.record.role.label(),
                    crate::fmt::fmt_time(n.record.last_seen)
                ))
            })
            .collect();
        if lacking.is_empty() {
            return Ok(None);
        }
        let days = self.since_secs / 86400;
        Ok(Some(format!(
            "{} node(s) seen in the last {} lack key {key}: {}; carry the keyring there (`keyferry export -n keys.exp` here, `keyferry import -n keys.exp --keys-only` there), then `keyferry nodes publish` there, or here `keyferry nodes add NAME --role ROLE --fingerprint kf1:…` with the fingerprint `keyferry keys fingerprint` shows there; `keyferry nodes` shows every node; then {action} key {key} again (a node that is gone: `keyferry nodes remove NAME`)",
            lacking.len(),
            if days >= 1 && self.since_secs.is_multiple_of(86400) {
                format!("{days} day(s)")
            } else {
                humantime::format_duration(std::time::Duration::from_secs(self.since_secs)).to_string()
            },
            lacking.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fp: &str, ids: Option<Vec<u32>>, primary: Option<u32>) -> NodeRecord {
        NodeRecord {
            name: "n".into(),
            role: Role::Action,
            fingerprint: fp.into(),
            key_ids: ids,
            primary_id: primary,
            version: None,
            last_seen: 0,
            source: "added".into(),
            host_key: None,
        }
    }

    #[test]
    fn a_pair_nodes_registry_dsn_lists_both_nodes_and_wants_the_writable_one() {
        let config = HaConfig::new(
            "pam-a",
            crate::ha::PeerAddr::parse("10.0.0.1").unwrap(),
            crate::ha::PeerAddr::parse("fd00::2").unwrap(),
        )
        .unwrap();
        let text = pair_dsn(&config, None, None);
        assert_eq!(
            text,
            format!(
                "host=10.0.0.1,fd00::2 port=5432,5432 dbname=postgres user={} target_session_attrs=read-write",
                config.replication_user
            )
        );
        let dsn = Dsn::parse(&text).unwrap();
        assert!(dsn.is_multi_host());
        assert_eq!(dsn.target(), "10.0.0.1:5432,[fd00::2]:5432/postgres");
        let other = pair_dsn(&config, Some("kf"), Some("registry"));
        assert!(other.contains("dbname=registry user=kf "), "{other}");
    }

    #[test]
    fn states_against_the_reference() {
        let mut k = Keyring::generate("2026-01-01T00:00:00Z").unwrap();
        let two = k.add("2026-01-02T00:00:00Z").unwrap();
        let staged = k.clone();
        k.promote(two).unwrap();
        let fp = k.fingerprint().to_string();
        assert_eq!(
            state_of(&k, &record(&fp, Some(vec![1, 2]), Some(2))).0,
            "agrees"
        );
        let (s, lacks) = state_of(&k, &record("kf1:x", Some(vec![1]), Some(1)));
        assert_eq!((s.as_str(), lacks), ("lacks keys 2", vec![2]));
        let old = staged.fingerprint().to_string();
        assert_eq!(
            state_of(&k, &record(&old, Some(vec![1, 2]), Some(1))).0,
            "has the keys, older primary"
        );
        assert!(state_of(&k, &record("kf1:y", None, None))
            .0
            .starts_with("unknown"));
        assert!("Action".parse::<Role>().is_ok() && "proxy".parse::<Role>().is_err());
    }
}
