//! Key distribution without passwords (issue 22): approving a host's key on
//! a pair node (`keyferry nodes approve`), sealing the keyring to every
//! approved host and storing it in the node registry (`keyferry
//! distribute`), and taking it on a host (`keyferry nodes sync`).
//!
//! Invariants:
//! - a recipient is only a host key this pair node's keyring lists as
//!   approved; an approval is made only when the code the operator read
//!   off the host matches the key the registry holds, so neither a row
//!   written by someone else nor a swapped key is ever sealed to;
//! - nothing read from the registry is trusted on a host: a distribution
//!   is taken only when it is signed by the signing key the host pinned,
//!   sealed to this host's key, newer (by its signed serial) than the last
//!   one taken, and its keyring does not go back (no lower primary, no
//!   destroyed key returning) nor drop material other than keys the pair
//!   destroyed (unless `--replace-keys`); any refusal changes nothing;
//! - a sync installs through the node's journaled, audited change with the
//!   serial in the same keystore replacement, so a crash leaves the old or
//!   the new keyring, never a mix;
//! - a key the pair destroyed is scrubbed from this host's keystore
//!   backups in the same change, as `destroy` does on the pair node;
//! - a pair node gets the whole keyring (with the signing key), an Action
//!   or Scheduler host the keys-only view.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::nodes::{self, Access, Role};
use super::{details, now_unix, Home};
use crate::bundle::keys::{Code, HostPublic};
use crate::bundle::v2::{self, DistParams};
use crate::error::{Error, Result};
use crate::keyring::{ApprovedHost, KeyChange, KeyDiff, KeyStatus, Keyring};
use crate::payload::{self, DiscardConfig};

/// What `nodes approve` recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Approved {
    pub registry: String,
    pub name: String,
    pub role: Role,
    pub host_key: String,
}

fn signing_refusal(what: &str) -> Error {
    Error::Refused(format!(
        "{what} needs the pair signing key, which this node's keyring does not hold: run it on a node of the pair (a keyring made by `keyferry init`, or imported from the pair with --with-config)"
    ))
}

/// `keyferry nodes approve NAME --fingerprint CODE`: makes the host key the
/// registry holds for `name` a recipient of distributions, once `code` (as
/// read off that host's screen) matches it.
pub fn approve(home: &Home, access: Access, name: &str, code: &str) -> Result<Approved> {
    nodes::check_name(name)?;
    let dsn = nodes::dsn_for(home, access)?.ok_or_else(nodes::no_registry)?;
    let keyring = home.load_keystore()?.keyring;
    if !keyring.can_sign() {
        return Err(signing_refusal("approving a host"));
    }
    let mut reg = nodes::open(&dsn, access.password)?;
    let record = nodes::read_all(&mut reg)?
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| {
            Error::Usage(format!(
                "the node registry at {} has no node {name:?}: run `keyferry nodes connect` on that host first (`keyferry nodes` lists the nodes)",
                reg.target
            ))
        })?;
    let text = record.host_key.as_deref().ok_or_else(|| {
        Error::Refused(format!(
            "{name:?} has published no host key: run `keyferry nodes publish` on that host (with this keyferry), then approve it again"
        ))
    })?;
    let key = HostPublic::from_base64(text).ok_or_else(|| {
        Error::Refused(format!(
            "the host key the registry holds for {name:?} is not an X25519 key: the row was not written by keyferry; run `keyferry nodes publish` on that host"
        ))
    })?;
    let actual = key.code();
    if !actual.matches(code) {
        if !Code::well_formed(code) {
            return Err(Error::Usage(format!(
                "--fingerprint {code:?} is not a host key code (kfh1: and 20 characters in groups of four): read it from `keyferry keys fingerprint --host` on {name}"
            )));
        }
        return Err(Error::Refused(format!(
            "the host key the registry holds for {name:?} has code {actual}, not {}: the row was not written by that host, or the code was misread; nothing was approved. Read the code again on the host (`keyferry keys fingerprint --host`); if it differs, someone else wrote that row",
            code.trim()
        )));
    }
    let mut node = home.open(false)?;
    let mut keyring = node.require_keystore()?.keyring.clone();
    keyring.approve_host(ApprovedHost {
        name: name.to_owned(),
        role: record.role.as_str().to_owned(),
        host_key: key,
    });
    let mut change = node.begin(
        "nodes-approve",
        details([
            ("node", Value::from(name)),
            ("role", Value::from(record.role.as_str())),
            ("host_key", Value::from(actual.to_string())),
        ]),
    )?;
    change.set_keyring(keyring);
    change.finish()?;
    Ok(Approved {
        registry: reg.target,
        name: name.to_owned(),
        role: record.role,
        host_key: actual.to_string(),
    })
}

/// `nodes remove`'s part on a pair node: withdraws the approval of `name`
/// (an audited keyring change); whether there was one.
pub fn withdraw(home: &Home, name: &str) -> Result<bool> {
    let mut node = home.open(false)?;
    let mut keyring = node.require_keystore()?.keyring.clone();
    if !keyring.withdraw_host(name) {
        return Ok(false);
    }
    let mut change = node.begin("nodes-withdraw", details([("node", Value::from(name))]))?;
    change.set_keyring(keyring);
    change.finish()?;
    Ok(true)
}

/// One host a distribution was stored for.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub name: String,
    pub role: String,
    pub host_key: String,
    /// What it carries: `keyring` (a pair node) or `keys-only`.
    pub view: &'static str,
    /// The registry's row for the node names another host key than the
    /// one approved (the host was set up again): it cannot open this one
    /// until it is approved again.
    pub key_changed: bool,
}

/// What `keyferry distribute` did.
#[derive(Debug, Clone, Serialize)]
pub struct Distributed {
    pub registry: String,
    pub serial: u64,
    pub fingerprint: String,
    pub sent: Vec<Sent>,
}

/// `keyferry distribute`: seals this pair node's keyring (the keys-only view
/// for Action and Scheduler hosts) to each approved host, signs it and
/// stores it in the registry, replacing the host's previous one.
pub fn distribute(home: &Home, access: Access) -> Result<Distributed> {
    let settings = nodes::settings(home)?;
    let dsn = nodes::dsn_for(home, access)?.ok_or_else(nodes::no_registry)?;
    let keyring = home.load_keystore()?.keyring;
    let signer = keyring
        .signing()
        .and_then(|s| s.secret.clone())
        .ok_or_else(|| signing_refusal("distributing"))?;
    let me = nodes::this_name(home, settings.as_ref());
    let mut reg = nodes::open(&dsn, access.password)?;
    let rows = nodes::read_all(&mut reg)?;
    let highest: Option<i64> = reg
        .client
        .query_one(
            &format!("SELECT max(serial) FROM {}", nodes::DISTRIBUTIONS),
            &[],
        )
        .map_err(nodes::pg(&reg.target))?
        .get(0);
    // Milliseconds keep serials rising across the pair's two nodes without
    // a shared counter; the registry's highest (untrusted, it can only
    // raise the serial) covers a clock that went back.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let serial = now_ms.max(highest.map_or(0, |h| h.max(0) as u64 + 1));
    let params = DistParams {
        created: now_unix(),
        expires: None,
        serial,
    };
    let mut sent = Vec::new();
    for host in keyring.approved_hosts().iter().filter(|h| h.name != me) {
        let pair = host.role == Role::Pair.as_str();
        let view = if pair {
            keyring.clone()
        } else {
            keyring.keys_only_view()
        };
        let plain = Zeroizing::new(
            payload::write(Vec::new(), &me, &view, Vec::new())
                .map_err(Error::io("cannot write the distribution's payload"))?,
        );
        let bundle = v2::seal(&signer, &[host.host_key], &params, &plain)?;
        reg.client
            .execute(
                &format!(
                    "INSERT INTO {t} (name, serial, stored, by_node, bundle) VALUES ($1, $2, now(), $3, $4) \
                     ON CONFLICT (name) DO UPDATE SET serial = EXCLUDED.serial, stored = now(), \
                     by_node = EXCLUDED.by_node, bundle = EXCLUDED.bundle",
                    t = nodes::DISTRIBUTIONS
                ),
                &[&host.name, &(serial as i64), &me, &bundle],
            )
            .map_err(nodes::pg(&reg.target))?;
        let published = rows
            .iter()
            .find(|r| r.name == host.name)
            .and_then(|r| r.host_key.as_deref())
            .and_then(HostPublic::from_base64);
        sent.push(Sent {
            name: host.name.clone(),
            role: host.role.clone(),
            host_key: host.host_key.code().to_string(),
            view: if pair { "keyring" } else { "keys-only" },
            key_changed: published.is_some_and(|k| k != host.host_key),
        });
    }
    // On record: who was sent what, never the keys.
    let mut node = home.open(false)?;
    node.require_keystore()?;
    node.begin(
        "distribute",
        details([
            ("serial", Value::from(serial)),
            (
                "fingerprint",
                Value::from(keyring.fingerprint().to_string()),
            ),
            (
                "recipients",
                Value::from(sent.iter().map(|s| s.name.clone()).collect::<Vec<_>>()),
            ),
        ]),
    )?
    .finish()?;
    Ok(Distributed {
        registry: reg.target,
        serial,
        fingerprint: keyring.fingerprint().to_string(),
        sent,
    })
}

/// How the distribution after a key change went.
#[derive(Debug, Clone)]
pub enum AutoDistribute {
    Done(Distributed),
    /// Why not, with how to distribute later.
    Failed(String),
}

/// The distribution that follows every key change on a pair node with a
/// registry connection and approved hosts; `None` otherwise. Never an
/// error: the change before it has committed.
pub fn distribute_after_change(home: &Home, password: Option<&[u8]>) -> Option<AutoDistribute> {
    nodes::settings(home).ok()??;
    let keyring = home.load_keystore().ok()?.keyring;
    if !keyring.can_sign() || keyring.approved_hosts().is_empty() {
        return None;
    }
    Some(
        match distribute(
            home,
            Access {
                dsn: None,
                password,
            },
        ) {
            Ok(d) => AutoDistribute::Done(d),
            Err(e) => AutoDistribute::Failed(format!(
                "the keys were not distributed to the approved hosts ({e}); the change itself is done: distribute later with `keyferry distribute`"
            )),
        },
    )
}

/// What `keyferry nodes sync` did.
#[derive(Debug, Clone, Serialize)]
pub struct Synced {
    pub registry: String,
    pub serial: u64,
    /// The distribution was the one this host already took.
    pub up_to_date: bool,
    pub fingerprint_before: String,
    pub fingerprint_after: String,
    pub by_node: String,
    pub keys: KeyDiff,
    #[serde(skip)]
    pub published: Option<nodes::AutoPublish>,
}

/// Refuses a keyring older than `current`: a lower primary, or a key this
/// node destroyed coming back.
fn refuse_rollback(current: &Keyring, incoming: &Keyring) -> Result<()> {
    if incoming.primary() < current.primary() {
        return Err(Error::Refused(format!(
            "the distribution's keyring has primary key {}, older than this host's {}: it is an old keyring (replayed or rolled back); nothing changed. Run `keyferry distribute` on the pair's primary",
            incoming.primary(),
            current.primary()
        )));
    }
    let destroyed: BTreeSet<u32> = current
        .keys()
        .iter()
        .filter(|k| k.status == KeyStatus::Destroyed)
        .map(|k| k.id)
        .collect();
    let back: Vec<String> = incoming
        .keys()
        .iter()
        .filter(|k| k.material.is_some() && destroyed.contains(&k.id))
        .map(|k| k.id.to_string())
        .collect();
    if !back.is_empty() {
        return Err(Error::Refused(format!(
            "the distribution's keyring holds key {} that this host destroyed: it is an old keyring (replayed or rolled back); nothing changed",
            back.join(", ")
        )));
    }
    Ok(())
}

/// `keyferry nodes sync`: takes this host's distribution from the registry
/// (see the module's invariants).
pub fn sync(home: &Home, access: Access, replace_keys: bool) -> Result<Synced> {
    let settings = nodes::settings(home)?;
    let dsn = nodes::dsn_for(home, access)?.ok_or_else(nodes::no_registry)?;
    let me = nodes::this_name(home, settings.as_ref());
    let role = settings.as_ref().map(|s| s.role).unwrap_or_default();
    let mut node = home.open(false)?;
    let store = node.require_keystore()?.clone();
    let pinned = store.keyring.signing().map(|s| s.public).ok_or_else(|| {
        Error::Refused(
            "this host pins no pair signing key yet: import a password bundle from the pair once (`keyferry export -n keys.exp` there, `keyferry import -n keys.exp --keys-only` here), then sync".into(),
        )
    })?;
    let host = store.node.host_key.clone().ok_or_else(|| {
        Error::Refused(
            "this host has no host key yet: run `keyferry keys fingerprint --host` (which makes it), `keyferry nodes publish`, and have it approved on a pair node".into(),
        )
    })?;
    let mut reg = nodes::open(&dsn, access.password)?;
    let row = reg
        .client
        .query_opt(
            &format!(
                "SELECT bundle, by_node FROM {} WHERE name = $1",
                nodes::DISTRIBUTIONS
            ),
            &[&me],
        )
        .map_err(nodes::pg(&reg.target))?
        .ok_or_else(|| {
            Error::Refused(format!(
                "the node registry at {} holds no distribution for {me:?}: approve this host on a pair node (`keyferry nodes approve {me} --fingerprint {}`), then run `keyferry distribute` there",
                reg.target,
                host.public().code()
            ))
        })?;
    let bundle: Vec<u8> = row.get(0);
    let by_node: String = row.get(1);
    let opened = v2::open(&bundle, &host, &pinned, now_unix())?;
    let serial = opened.header.serial;
    let held = store.node.distribution_serial;
    let before = store.keyring.fingerprint().to_string();
    if serial < held {
        return Err(Error::Refused(format!(
            "the distribution in the registry has serial {serial}, older than the one this host took ({held}): the registry served an old distribution (replayed); nothing changed. Run `keyferry distribute` on the pair's primary"
        )));
    }
    let (payload, _) = payload::read(
        &opened.plaintext[..],
        payload::DEFAULT_MAX_TOTAL,
        &mut DiscardConfig,
    )?;
    let incoming = payload.keyring;
    if incoming.signing().map(|s| s.public) != Some(pinned) {
        return Err(Error::Refused(format!(
            "the distribution's keyring names another pair signing key than the one this host pins ({}): replacing it takes a password bundle from the pair; nothing changed",
            pinned.code()
        )));
    }
    let keys = KeyDiff::between(&store.keyring, &incoming);
    if serial == held {
        return Ok(Synced {
            registry: reg.target,
            serial,
            up_to_date: true,
            fingerprint_after: before.clone(),
            fingerprint_before: before,
            by_node,
            keys,
            published: None,
        });
    }
    refuse_rollback(&store.keyring, &incoming)?;
    // Material the pair destroyed is meant to go; anything else lost
    // (a key missing, or different material) is refused as on import.
    let destroyed_there: BTreeSet<u32> = incoming
        .keys()
        .iter()
        .filter(|k| k.status == KeyStatus::Destroyed)
        .map(|k| k.id)
        .collect();
    let mut judged = keys.clone();
    judged
        .keys
        .retain(|id, c| !(*c == KeyChange::Removed && destroyed_there.contains(id)));
    if !replace_keys {
        super::import::refuse_lost_keys(home, &judged)?;
    }
    let mut keyring = if role == Role::Pair {
        incoming
    } else {
        incoming.keys_only_view()
    };
    keyring.set_approved_hosts(store.keyring.merged_approvals(&keyring));
    keyring.set_signing(store.keyring.merged_signing(&keyring));
    let after = keyring.fingerprint().to_string();
    let mut change = node.begin(
        "nodes-sync",
        details([
            ("registry", Value::from(reg.target.clone())),
            ("source_node", Value::from(by_node.clone())),
            ("fingerprint_before", Value::from(before.clone())),
            ("fingerprint_after", Value::from(after.clone())),
        ]),
    )?;
    change.set_keyring(keyring);
    change.set_distribution_serial(serial);
    // A key the pair destroyed leaves this host's backups too, as on the
    // pair node that destroyed it.
    let destroyed_now: Vec<u32> = keys
        .keys
        .iter()
        .filter(|(id, c)| **c == KeyChange::Removed && destroyed_there.contains(id))
        .map(|(id, _)| *id)
        .collect();
    for id in destroyed_now {
        super::lifecycle::scrub_in_change(&mut change, home, id)?;
    }
    crate::failpoint::failpoint!("nodes-sync:before-commit");
    change.finish()?;
    drop(node);
    let published = nodes::publish_after_change(home, access.password);
    Ok(Synced {
        registry: reg.target,
        serial,
        up_to_date: false,
        fingerprint_before: before,
        fingerprint_after: after,
        by_node,
        keys,
        published,
    })
}

/// What `nodes remove` did.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub registry: String,
    /// This pair node had approved the host, and no longer does.
    pub withdrawn: bool,
}

/// `keyferry nodes remove NAME`: on a pair node, first withdraws the
/// host's approval (so no distribution is sealed to it again, whatever the
/// registry says), then removes its row and its waiting distribution.
pub fn remove(home: &Home, access: Access, name: &str) -> Result<Removed> {
    let can_sign = home
        .load_keystore()
        .ok()
        .is_some_and(|s| s.keyring.can_sign());
    let withdrawn = can_sign && withdraw(home, name)?;
    let registry = match nodes::remove(home, access, name) {
        Ok(r) => r,
        Err(Error::Usage(_)) if withdrawn => String::from("(no row)"),
        Err(e) => return Err(e),
    };
    if let Some(dsn) = nodes::dsn_for(home, access)? {
        let mut reg = nodes::open(&dsn, access.password)?;
        reg.client
            .execute(
                &format!("DELETE FROM {} WHERE name = $1", nodes::DISTRIBUTIONS),
                &[&name],
            )
            .map_err(nodes::pg(&reg.target))?;
    }
    Ok(Removed {
        registry,
        withdrawn,
    })
}
