//! `keyferry import`: open a bundle, verify all of it, then install its keys
//! (and, with the HA configuration, its configuration files) atomically.

use std::io::BufReader;
use std::path::PathBuf;

use serde_json::Value;

use super::config::{self, ConfigPolicy, StagingSink};
use super::{details, now_unix, open_bundle_file, Home};
use crate::bundle::{self, Ignored, OpenOptions};
use crate::error::{Error, Result};
use crate::ha::config::LocalPaths;
use crate::kdf::{self, KdfLimits};
use crate::keyring::{Fingerprint, KeyDiff};
use crate::payload::{self, ConfigFile, ConfigSink, DiscardConfig};
use crate::secret::PasswordSource;

pub struct ImportOptions {
    pub file: PathBuf,
    pub password: PasswordSource,
    pub keys_only: bool,
    pub allow_expired: bool,
    /// Raises the KDF memory limit (KiB).
    pub max_kdf_memory: Option<u32>,
    pub delete: bool,
    /// Create `ha.toml` from the bundle on a node that has none.
    pub accept_config: bool,
    /// This node's name, for an `ha.toml` created by `accept_config`.
    pub node_name: Option<String>,
    /// This node's paths, for an `ha.toml` created by `accept_config`
    /// (never taken from the bundle).
    pub paths: LocalPaths,
    /// Verify and show what would change, write nothing.
    pub dry_run: bool,
    /// Allow an import that removes key material this node holds, or
    /// gives one of its key ids different material.
    pub replace_keys: bool,
}

/// What an import did (or, in a dry run, would do) to one configuration file.
pub struct ConfigChange {
    pub file: ConfigFile,
    pub target: std::path::PathBuf,
    pub existed: bool,
    pub unchanged: bool,
    pub changes: Vec<crate::ha::config::FieldChange>,
    /// Node-local paths left unset, with the option that sets them; for
    /// appsettings.json, that it was not installed for want of a path.
    pub unset: Vec<(&'static str, &'static str)>,
    /// What this node kept of its own against the bundle, and why (a
    /// generation behind this node's is never taken).
    pub kept: Vec<String>,
}

pub struct ImportReport {
    pub before: Option<Fingerprint>,
    pub after: Fingerprint,
    pub source_node: String,
    pub created: u64,
    pub expires: Option<u64>,
    /// Configuration the bundle carried and that was left alone
    /// (`--keys-only`).
    pub config_skipped: Vec<ConfigFile>,
    /// Configuration installed (or that would be).
    pub config: Vec<ConfigChange>,
    pub dry_run: bool,
    /// Key by key, what the import does to the node's keys (`None` on a
    /// node without keys).
    pub keys: Option<KeyDiff>,
    /// Where the keystore's previous version was kept, when the keys
    /// changed.
    pub keystore_backup: Option<PathBuf>,
    /// Seconds by which the bundle's creation time is ahead of this
    /// host's clock, when more than [`CLOCK_SKEW_ALLOWED`].
    pub clock_behind: Option<u64>,
    /// With `--delete`: the files removed (the bundle; through a link, the
    /// file it points to and the link), or why they could not be.
    pub deleted: Option<std::result::Result<Vec<PathBuf>, String>>,
    /// Text around an armored bundle that was not part of it.
    pub armor_ignored: Ignored,
    /// The publish to the node registry that followed (when the home has
    /// a registry connection).
    pub published: Option<super::nodes::AutoPublish>,
}

/// A bundle made up to this many seconds "in the future" is normal clock
/// drift between two hosts; more is worth a warning.
pub(crate) const CLOCK_SKEW_ALLOWED: u64 = 5 * 60;

pub fn import(home: &Home, opts: &ImportOptions) -> Result<ImportReport> {
    // A home that does not exist yet is created only once the bundle has
    // been verified: a failed import leaves no trace.
    let mut node = if home.root().is_dir() {
        Some(home.open(false)?)
    } else {
        None
    };
    let file = open_bundle_file(&opts.file)?;
    let limits = KdfLimits {
        max_memory_kib: opts.max_kdf_memory.unwrap_or(kdf::MAX_IMPORT_MEMORY_KIB),
        ..KdfLimits::default()
    };

    let existing_keyring = node
        .as_ref()
        .and_then(|n| n.keystore())
        .map(|s| s.keyring.clone());
    let existing = existing_keyring.as_ref().map(|k| k.fingerprint());
    if existing.is_none() && home.audit_path().exists() {
        return Err(Error::Refused(format!(
            "{} exists without a keyring: move it away (it belongs to a keyring that is gone) and import again",
            home.audit_path().display()
        )));
    }

    tracing::debug!(new_node = existing.is_none(), "node state checked");
    let now = now_unix();
    let mut staging = StagingSink::new(home);
    let mut header = None;
    let opened = (|| -> Result<(crate::payload::Payload, Ignored)> {
        let locked = bundle::read_header(BufReader::new(file), &limits)?;
        let h = locked.header();
        tracing::debug!(
            file = %opts.file.display(),
            kdf = %h.kdf,
            created = %crate::fmt::fmt_time(h.created),
            expires = %h.expires.map_or_else(|| "never".to_owned(), crate::fmt::fmt_time),
            "bundle header read, KDF within the import limits (not yet authenticated)"
        );
        header = Some(h.clone());
        let password = opts.password.read("Bundle password: ")?;
        tracing::info!(kdf = %locked.header().kdf, "deriving the key from the password");
        let mut reader = locked.unlock(
            &password,
            &OpenOptions {
                now,
                allow_expired: opts.allow_expired,
            },
        )?;
        drop(password);
        tracing::debug!("password and header authenticated (key commitment matched)");
        let sink: &mut dyn ConfigSink = if opts.keys_only {
            &mut DiscardConfig
        } else {
            &mut staging
        };
        // The archive must end where the authenticated stream does.
        let payload = reader.parse_payload(|plain| {
            payload::read(plain, payload::DEFAULT_MAX_TOTAL, sink).map(|(payload, _)| payload)
        })?;
        Ok((payload, reader.ignored()))
    })();
    let (payload, armor_ignored) = match opened {
        Ok(p) => p,
        Err(e) => {
            if let Some(local) = staging.local_failure() {
                return Err(local);
            }
            let about_the_bundle = matches!(e, Error::Bundle(_) | Error::Payload(_));
            // A dry run writes nothing, a record of its refusal included.
            if let Some(node) = node
                .as_mut()
                .filter(|n| about_the_bundle && !opts.dry_run && n.keystore().is_some())
            {
                audit_refused(node, &opts.file, header.as_ref(), &e);
            }
            return Err(e);
        }
    };
    tracing::debug!(
        source_node = %payload.manifest.source_node,
        config_entries = ?payload.config,
        "payload read and authenticated to its final chunk"
    );
    let header = header.expect("a bundle that opened has a header");
    let (created, expires) = (header.created, header.expires);

    let plans = if opts.keys_only {
        Vec::new()
    } else {
        config::plan_install(
            home,
            staging,
            &ConfigPolicy {
                accept_config: opts.accept_config,
                node_name: opts.node_name.as_deref(),
                paths: &opts.paths,
            },
        )?
    };
    let config: Vec<ConfigChange> = plans
        .iter()
        .map(|p| ConfigChange {
            file: p.file,
            target: p.target.clone(),
            existed: p.existed,
            unchanged: p.unchanged,
            changes: p.changes.clone(),
            unset: p.unset.clone(),
            kept: p.kept.clone(),
        })
        .collect();
    let config_skipped = if opts.keys_only {
        payload.config.clone()
    } else {
        Vec::new()
    };

    let before = existing;
    let after = payload.keyring.fingerprint();
    let record_details = details([
        ("bundle", Value::from(opts.file.display().to_string())),
        (
            "source_node",
            Value::from(payload.manifest.source_node.clone()),
        ),
        ("bundle_created", Value::from(crate::fmt::fmt_time(created))),
        (
            "bundle_expires",
            expires
                .map(crate::fmt::fmt_time)
                .map_or(Value::Null, Value::from),
        ),
        (
            "fingerprint_before",
            before.map_or(Value::Null, |f| Value::from(f.to_string())),
        ),
        ("fingerprint_after", Value::from(after.to_string())),
        ("keys_only", Value::from(opts.keys_only)),
        (
            "config_installed",
            Value::from(
                config
                    .iter()
                    .filter(|c| !c.unchanged)
                    .map(|c| c.target.display().to_string())
                    .collect::<Vec<_>>(),
            ),
        ),
    ]);
    let mut report = ImportReport {
        clock_behind: created
            .checked_sub(now)
            .filter(|ahead| *ahead > CLOCK_SKEW_ALLOWED),
        before,
        after,
        source_node: payload.manifest.source_node,
        created,
        expires,
        config_skipped,
        config,
        dry_run: opts.dry_run,
        keys: existing_keyring.map(|k| KeyDiff::between(&k, &payload.keyring)),
        keystore_backup: None,
        deleted: None,
        armor_ignored,
        published: None,
    };
    tracing::info!(
        before = ?report.before.map(|f| f.to_string()),
        after = %report.after,
        config_changes = report.config.iter().filter(|c| !c.unchanged).count(),
        dry_run = opts.dry_run,
        "bundle verified"
    );
    if opts.dry_run {
        return Ok(report);
    }
    // The state that counts is the one read under the lock.
    let node = match &mut node {
        Some(n) => n,
        None => node.insert(home.open(true)?),
    };
    report.keys = node
        .keystore()
        .map(|s| KeyDiff::between(&s.keyring, &payload.keyring));
    report.before = node.keystore().map(|s| s.keyring.fingerprint());
    if let Some(diff) = report.keys.as_ref().filter(|_| !opts.replace_keys) {
        refuse_lost_keys(home, diff)?;
    }
    // A keys-only import (a remote host) never keeps the signing key's
    // secret half, even from a full pair bundle: it pins the public half.
    let mut keyring = if opts.keys_only {
        payload.keyring.keys_only_view()
    } else {
        payload.keyring
    };
    if let Some(current) = node.keystore().map(|s| &s.keyring) {
        keyring.set_approved_hosts(current.merged_approvals(&keyring));
        keyring.set_signing(current.merged_signing(&keyring));
    }
    let mut change = node.begin("import", record_details)?;
    config::install(&mut change, plans)?;
    change.set_keyring(keyring);
    report.keystore_backup = change.finish()?.keystore_backup;
    tracing::info!("import committed with its audit record");

    report.deleted = opts.delete.then(|| {
        let removed = delete_bundle(&opts.file);
        tracing::debug!(file = %opts.file.display(), ok = removed.is_ok(), "--delete: bundle removal");
        removed
    });
    report.published = super::nodes::publish_after_change(home, None);
    Ok(report)
}

/// Removes the bundle. Through a symbolic link the bundle is the file the
/// link points to (the one that was just opened): it is removed, then the
/// link. Returns what was removed.
fn delete_bundle(file: &std::path::Path) -> std::result::Result<Vec<PathBuf>, String> {
    let fail = |p: &std::path::Path, e: std::io::Error| format!("{}: {e}", p.display());
    let meta = std::fs::symlink_metadata(file).map_err(|e| fail(file, e))?;
    let mut removed = Vec::new();
    if meta.file_type().is_symlink() {
        let target = std::fs::canonicalize(file).map_err(|e| fail(file, e))?;
        if !std::fs::metadata(&target).is_ok_and(|m| m.is_file()) {
            return Err(format!(
                "{} is a link to {}, which is not a regular file",
                file.display(),
                target.display()
            ));
        }
        std::fs::remove_file(&target).map_err(|e| fail(&target, e))?;
        removed.push(target);
    }
    std::fs::remove_file(file).map_err(|e| fail(file, e))?;
    removed.push(file.to_path_buf());
    Ok(removed)
}

/// Refuses an import that would lose key material the node holds.
pub(super) fn refuse_lost_keys(home: &Home, diff: &KeyDiff) -> Result<()> {
    let lost = diff.lost();
    if lost.is_empty() {
        return Ok(());
    }
    let ids = lost
        .iter()
        .map(|id| format!("{id} ({})", diff.keys[id]))
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::Refused(format!(
        "this bundle would take away key material this node holds: key {ids}; data encrypted \
         under it would become unreadable. Check that the bundle comes from this pair's current \
         primary (`keyferry import --dry-run` lists every key); to replace the keys anyway, add \
         --replace-keys (the current keystore is then kept in {})",
        home.backup_dir().display()
    )))
}

/// Records a refused import (wrong password, damaged or expired bundle…):
/// the attempt is on record although nothing else changes. Best effort:
/// the refusal is what the operator must see, whatever happens here.
fn audit_refused(
    node: &mut crate::node::Node,
    file: &std::path::Path,
    header: Option<&bundle::Header>,
    error: &Error,
) {
    let mut record = details([
        ("bundle", Value::from(file.display().to_string())),
        ("error", Value::from(error.to_string())),
        ("exit_code", Value::from(error.exit_code())),
    ]);
    if let Some(h) = header {
        record.insert(
            "bundle_created".into(),
            Value::from(crate::fmt::fmt_time(h.created)),
        );
        record.insert(
            "bundle_expires".into(),
            h.expires
                .map(crate::fmt::fmt_time)
                .map_or(Value::Null, Value::from),
        );
        record.insert("kdf".into(), Value::from(h.kdf.to_string()));
    }
    let written = node
        .begin("import-refused", record)
        .and_then(|c| c.finish());
    if let Err(e) = written {
        tracing::warn!(error = %e, "the refused import could not be recorded");
    }
}
