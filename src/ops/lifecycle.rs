//! The key lifecycle on a node: `rotate [--stage]`, `promote`, `disable`,
//! `enable` and `destroy`. Each is one change through the node's journaled
//! change type ([`crate::node::Change`]) with one audit record carrying the
//! key id and the keyring fingerprints before and after.
//!
//! This module owns the order of a lifecycle change: read the keystore
//! under the lock, apply the keyring's rule in memory
//! ([`crate::keyring::Keyring`] owns the rules), ask the guards (the
//! census of stored values for `disable`/`destroy`, the node registry for
//! `promote`), then commit. Invariants:
//! - a refusal (a keyring rule, a guard, an unconfirmed destroy) happens
//!   before the change begins: keystore, backups and audit log stay byte for
//!   byte as they were, and the error names the rule and the fix;
//! - `destroy` removes the key's material from the keystore (the commit
//!   point) and then, as an irreversible step audited before and after,
//!   from every keystore backup in the home's `backups/`: a backup in which
//!   the key is merely present is rewritten without the material (the key
//!   marked destroyed); one in which it was the primary (it could not be
//!   restored without it) is removed. An interrupted scrub is finished by
//!   running `destroy` again on the destroyed key.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{details, now_unix, Home};
use crate::error::{Error, Result};
use crate::fmt::fmt_time;
use crate::fsutil::Staged;
use crate::keyring::{Fingerprint, KeyStatus, Keyring, KeyringError};
use crate::node::KEYRING_FILE;

/// What a lifecycle change did, for the command's report.
#[derive(Debug, Clone)]
pub struct LifecycleReport {
    /// The audit action (`rotate`, `promote`, …).
    pub action: &'static str,
    /// The key acted on (the new key for `rotate`).
    pub key: u32,
    /// The primary before and after.
    pub primary_before: u32,
    pub primary_after: u32,
    pub fingerprint_before: Fingerprint,
    pub fingerprint_after: Fingerprint,
    /// The keystore's previous version, kept in `backups/`.
    pub keystore_backup: Option<PathBuf>,
    /// `destroy`: backups rewritten without the material, and removed.
    pub scrubbed: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    /// `--force` overrode a guard: what it said.
    pub forced: Option<String>,
    /// Steps that happened automatically afterwards, or why they did not.
    pub notes: Vec<String>,
    /// The publish to the node registry that followed `rotate` and
    /// `promote` (when the home has a registry connection).
    pub published: Option<super::nodes::AutoPublish>,
    /// The distribution to the approved hosts that followed (on a pair
    /// node with a registry connection and approved hosts).
    pub distributed: Option<super::distribution::AutoDistribute>,
}

/// Options of the guarded changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Guarded {
    /// Go on although a guard refuses; the report says what was overridden.
    pub force: bool,
}

/// A guard's finding: `None` when nothing depends on the key, else the
/// message (what depends on it, and how to resolve it).
pub type GuardFinding = Option<String>;

/// Asks whether a change may go ahead: the census of stored values for
/// `disable`/`destroy`, the node registry for `promote`. Implemented by
/// [`super::rewrap`] and [`super::nodes`]; a test passes its own.
pub trait Guard {
    fn check(&self, home: &Home, action: &str, key: u32) -> Result<GuardFinding>;
}

/// No guard: nothing outside the node is consulted.
pub struct NoGuard;

impl Guard for NoGuard {
    fn check(&self, _: &Home, _: &str, _: u32) -> Result<GuardFinding> {
        Ok(None)
    }
}

fn rule(action: &str, id: u32) -> impl FnOnce(KeyringError) -> Error + '_ {
    move |source| Error::Keyring {
        context: format!("cannot {action} key {id}; nothing was changed"),
        source,
    }
}

/// Runs the guard; a finding refuses unless forced, in which case it is
/// returned for the report and the audit record.
fn guarded(
    guard: &dyn Guard,
    home: &Home,
    action: &str,
    key: u32,
    opts: Guarded,
) -> Result<Option<String>> {
    match guard.check(home, action, key)? {
        None => Ok(None),
        Some(finding) if opts.force => Ok(Some(finding)),
        Some(finding) => Err(Error::InUse(format!(
            "{finding}; nothing was changed (--force {action}s anyway)"
        ))),
    }
}

/// The change itself: `apply` edits a copy of the keyring; the commit
/// carries one audit record.
fn commit(
    home: &Home,
    action: &'static str,
    key_of: impl FnOnce(&mut Keyring) -> Result<u32>,
    guard: Option<(&dyn Guard, Guarded)>,
    extra: Vec<(&str, Value)>,
) -> Result<LifecycleReport> {
    let mut node = home.open(false)?;
    let store = node.require_keystore()?;
    let before = store.keyring.clone();
    let mut keyring = before.clone();
    let key = key_of(&mut keyring)?;
    let forced = match guard {
        Some((g, opts)) => guarded(g, home, action, key, opts)?,
        None => None,
    };
    let mut record = details([
        ("key", Value::from(key)),
        ("primary_before", Value::from(before.primary())),
        ("primary_after", Value::from(keyring.primary())),
        (
            "fingerprint_before",
            Value::from(before.fingerprint().to_string()),
        ),
        (
            "fingerprint_after",
            Value::from(keyring.fingerprint().to_string()),
        ),
    ]);
    if let Some(f) = &forced {
        record.insert("forced".into(), Value::from(f.clone()));
    }
    for (k, v) in extra {
        record.insert(k.to_owned(), v);
    }
    let mut report = LifecycleReport {
        action,
        key,
        primary_before: before.primary(),
        primary_after: keyring.primary(),
        fingerprint_before: before.fingerprint(),
        fingerprint_after: keyring.fingerprint(),
        keystore_backup: None,
        scrubbed: Vec::new(),
        removed: Vec::new(),
        forced,
        notes: Vec::new(),
        published: None,
        distributed: None,
    };
    let mut change = node.begin(action, record)?;
    change.set_keyring(keyring);
    if action == "destroy" {
        let (scrubbed, removed) = scrub_in_change(&mut change, home, key)?;
        report.scrubbed = scrubbed;
        report.removed = removed;
    }
    report.keystore_backup = change.finish()?.keystore_backup;
    Ok(report)
}

/// `keyferry rotate [--stage]`: adds a key; makes it the primary at once
/// unless `stage` (then it is enabled but not primary, to be distributed
/// first and promoted later).
pub fn rotate(home: &Home, stage: bool) -> Result<LifecycleReport> {
    let mut report = commit(
        home,
        "rotate",
        |k| {
            let id = k
                .add(&fmt_time(now_unix()))
                .map_err(rule("add a key after", k.primary()))?;
            if !stage {
                k.promote(id).map_err(rule("promote", id))?;
            }
            Ok(id)
        },
        None,
        vec![("staged", Value::from(stage))],
    )?;
    report.published = super::nodes::publish_after_change(home, None);
    report.distributed = super::distribution::distribute_after_change(home, None);
    Ok(report)
}

/// `keyferry promote ID`: the enabled key `id` becomes the primary. The
/// guard (the node registry) refuses while a recently seen node lacks it.
/// Afterwards this node is published to the registry (with
/// `registry_password`, else libpq's password file), when it has one.
pub fn promote(
    home: &Home,
    id: u32,
    guard: &dyn Guard,
    opts: Guarded,
    registry_password: Option<&[u8]>,
) -> Result<LifecycleReport> {
    let mut report = commit(
        home,
        "promote",
        |k| {
            k.promote(id).map_err(rule("promote", id))?;
            Ok(id)
        },
        Some((guard, opts)),
        Vec::new(),
    )?;
    report.published = super::nodes::publish_after_change(home, registry_password);
    report.distributed = super::distribution::distribute_after_change(home, registry_password);
    if report.published.is_none() {
        report.notes.push(format!(
            "this node has no node registry (`keyferry nodes connect --dsn DSN`): it was not checked that every node holds key {id}"
        ));
    }
    Ok(report)
}

/// `keyferry disable ID`: values sealed under `id` stop opening until it is
/// enabled again. The guard (the census) refuses while values remain.
pub fn disable(home: &Home, id: u32, guard: &dyn Guard, opts: Guarded) -> Result<LifecycleReport> {
    let mut report = commit(
        home,
        "disable",
        |k| {
            k.disable(id).map_err(rule("disable", id))?;
            Ok(id)
        },
        Some((guard, opts)),
        Vec::new(),
    )?;
    report.published = super::nodes::publish_after_change(home, None);
    report.distributed = super::distribution::distribute_after_change(home, None);
    Ok(report)
}

/// `keyferry enable ID`.
pub fn enable(home: &Home, id: u32) -> Result<LifecycleReport> {
    let mut report = commit(
        home,
        "enable",
        |k| {
            k.enable(id).map_err(rule("enable", id))?;
            Ok(id)
        },
        None,
        Vec::new(),
    )?;
    report.published = super::nodes::publish_after_change(home, None);
    report.distributed = super::distribution::distribute_after_change(home, None);
    Ok(report)
}

/// What `destroy` is about to do, for the confirmation prompt.
#[derive(Debug, Clone)]
pub struct DestroyPlan {
    pub key: u32,
    /// The key is destroyed already; only backups still hold its material.
    pub backups_only: bool,
    /// Keystore backups that hold the material.
    pub backups: Vec<PathBuf>,
}

/// Checks that `destroy ID` may run (keyring rule; the key must be
/// disabled, or destroyed with material left in backups) and says what it
/// would touch. Changes nothing.
pub fn plan_destroy(home: &Home, id: u32) -> Result<DestroyPlan> {
    let store = home.load_keystore()?;
    let backups = backups_holding(home, id)?;
    let already = store
        .keyring
        .key(id)
        .is_some_and(|k| k.status == KeyStatus::Destroyed);
    if already {
        if backups.is_empty() {
            return Err(Error::Usage(format!(
                "key {id} is destroyed already and no backup in {} holds its material: nothing to do",
                home.backup_dir().display()
            )));
        }
    } else {
        store
            .keyring
            .clone()
            .destroy(id)
            .map_err(rule("destroy", id))?;
    }
    Ok(DestroyPlan {
        key: id,
        backups_only: already,
        backups,
    })
}

/// `keyferry destroy ID`: removes key `id`'s material for good, from the
/// keystore and from every backup in the home. `confirm` is asked once the
/// rules and the guard have passed; `false` changes nothing.
pub fn destroy(
    home: &Home,
    id: u32,
    guard: &dyn Guard,
    opts: Guarded,
    confirm: &mut dyn FnMut(&DestroyPlan) -> Result<bool>,
) -> Result<LifecycleReport> {
    let plan = plan_destroy(home, id)?;
    if plan.backups_only {
        if !confirm(&plan)? {
            return Err(not_confirmed(id));
        }
        return finish_scrub(home, id);
    }
    // The guard speaks before the operator is asked.
    let forced = guarded(guard, home, "destroy", id, opts)?;
    if !confirm(&plan)? {
        return Err(not_confirmed(id));
    }
    let mut report = commit(
        home,
        "destroy",
        |k| {
            k.destroy(id).map_err(rule("destroy", id))?;
            Ok(id)
        },
        Some((&Forced(forced.clone()), Guarded { force: true })),
        Vec::new(),
    )?;
    report.forced = forced;
    // The fingerprint changed (the material is gone): until the registry
    // hears of it, this node would show as disagreeing.
    report.published = super::nodes::publish_after_change(home, None);
    report.distributed = super::distribution::distribute_after_change(home, None);
    Ok(report)
}

/// The guard's finding, already accepted by `--force`, carried into the
/// change's audit record.
struct Forced(Option<String>);

impl Guard for Forced {
    fn check(&self, _: &Home, _: &str, _: u32) -> Result<GuardFinding> {
        Ok(self.0.clone())
    }
}

fn not_confirmed(id: u32) -> Error {
    Error::Usage(format!(
        "destroying key {id} was not confirmed; nothing was changed"
    ))
}

/// Finishes an interrupted destroy: the key is destroyed, backups still
/// hold its material.
fn finish_scrub(home: &Home, id: u32) -> Result<LifecycleReport> {
    let mut node = home.open(false)?;
    let keyring = node.require_keystore()?.keyring.clone();
    let fp = keyring.fingerprint();
    let mut change = node.begin(
        "destroy",
        details([
            ("key", Value::from(id)),
            ("backups_only", Value::from(true)),
            ("fingerprint_before", Value::from(fp.to_string())),
            ("fingerprint_after", Value::from(fp.to_string())),
        ]),
    )?;
    let (scrubbed, removed) = scrub_in_change(&mut change, home, id)?;
    let receipt = change.finish()?;
    Ok(LifecycleReport {
        action: "destroy",
        key: id,
        primary_before: keyring.primary(),
        primary_after: keyring.primary(),
        fingerprint_before: fp,
        fingerprint_after: fp,
        keystore_backup: receipt.keystore_backup,
        scrubbed,
        removed,
        forced: None,
        notes: vec![
            "the key was destroyed already; its material is now gone from the backups too".into(),
        ],
        published: None,
        distributed: None,
    })
}

/// The irreversible step of `destroy`: after the keystore without the
/// material is committed (which also backs up the keystore with it), every
/// backup holding the material is rewritten or removed.
pub(super) fn scrub_in_change(
    change: &mut crate::node::Change<'_>,
    home: &Home,
    id: u32,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let what = format!("removing key {id}'s material from the backups");
    change.irreversible(&what, Vec::new(), |progress| {
        let holding = backups_holding(home, id)?;
        let mut scrubbed = Vec::new();
        let mut removed = Vec::new();
        for path in holding {
            let outcome = scrub_backup(&path, id);
            progress.set("scrubbed", scrubbed.len());
            progress.set("removed", removed.len());
            match outcome? {
                Scrub::Rewritten => scrubbed.push(path),
                Scrub::Removed => removed.push(path),
            }
        }
        progress.set("scrubbed", scrubbed.len());
        progress.set("removed", removed.len());
        Ok((scrubbed, removed))
    })
}

/// Keystore backups in the home's `backups/` that hold material for `id`,
/// oldest name first.
fn backups_holding(home: &Home, id: u32) -> Result<Vec<PathBuf>> {
    let dir = home.backup_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("cannot list {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("cannot list {}", dir.display())))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(&format!("{KEYRING_FILE}.")) || !name.ends_with(".bak") {
            continue;
        }
        let path = entry.path();
        let bytes = zeroize::Zeroizing::new(
            fs::read(&path).map_err(Error::io(format!("cannot read {}", path.display())))?,
        );
        if holds_material(&bytes, id) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a keyring document (valid or not) holds material for `id`.
fn holds_material(bytes: &[u8], id: u32) -> bool {
    let Ok(doc) = serde_json::from_slice::<Value>(bytes) else {
        // Not JSON: cannot be read as a keyring, so it cannot be parsed for
        // the key either; a conservative scan for the id is not possible.
        return false;
    };
    key_entry(&doc, id).is_some_and(|k| k.get("material").is_some())
}

fn key_entry(doc: &Value, id: u32) -> Option<&Value> {
    doc.get("keys")?
        .as_array()?
        .iter()
        .find(|k| k.get("id").and_then(Value::as_u64) == Some(u64::from(id)))
}

enum Scrub {
    Rewritten,
    Removed,
}

/// Rewrites one backup without key `id`'s material (atomically, in place),
/// or removes it when `id` was its primary.
fn scrub_backup(path: &Path, id: u32) -> Result<Scrub> {
    let what = || format!("cannot remove key {id}'s material from {}", path.display());
    let bytes = zeroize::Zeroizing::new(fs::read(path).map_err(Error::io(what()))?);
    let mut doc: Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::Refused(format!("{}: {e}", what())))?;
    if doc.get("primary").and_then(Value::as_u64) == Some(u64::from(id)) {
        fs::remove_file(path).map_err(Error::io(what()))?;
        crate::fsutil::sync_parent(path).map_err(Error::io(what()))?;
        return Ok(Scrub::Removed);
    }
    let keys = doc
        .get_mut("keys")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| Error::Refused(format!("{}: no keys", what())))?;
    for k in keys.iter_mut() {
        if k.get("id").and_then(Value::as_u64) == Some(u64::from(id)) {
            if let Some(obj) = k.as_object_mut() {
                if let Some(Value::String(mut m)) = obj.remove("material") {
                    zeroize::Zeroize::zeroize(&mut m);
                }
                obj.insert("status".into(), Value::from("destroyed"));
            }
        }
    }
    let text = zeroize::Zeroizing::new(
        serde_json::to_vec_pretty(&doc).map_err(|e| Error::Refused(format!("{}: {e}", what())))?,
    );
    // The document still holds other keys' material: wipe it from memory.
    wipe_values(&mut doc);
    let dir = crate::fsutil::parent_dir(path);
    let mut staged = Staged::new_in(dir).map_err(Error::io(what()))?;
    staged
        .write_all(&text)
        .and_then(|()| staged.persist_replace(path))
        .map_err(Error::io(what()))?;
    Ok(Scrub::Rewritten)
}

/// Overwrites every string in a JSON value (key material read from a
/// backup) before it is dropped.
fn wipe_values(v: &mut Value) {
    match v {
        Value::String(s) => zeroize::Zeroize::zeroize(s),
        Value::Array(a) => a.iter_mut().for_each(wipe_values),
        Value::Object(o) => o.values_mut().for_each(wipe_values),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_is_found_by_key_id_only() {
        let doc = br#"{"primary":2,"keys":[{"id":1,"status":"disabled","material":"AA=="},{"id":2,"status":"enabled","material":"AA=="},{"id":3,"status":"destroyed"}]}"#;
        assert!(holds_material(doc, 1));
        assert!(holds_material(doc, 2));
        assert!(!holds_material(doc, 3));
        assert!(!holds_material(doc, 4));
        assert!(!holds_material(b"not json", 1));
    }
}
