//! `keyferry import`: open a bundle, verify all of it, then install its keys
//! (and, with the HA configuration, its configuration files) atomically.

use std::io::BufReader;
use std::path::PathBuf;

use serde_json::Value;

use super::config::{self, ConfigPolicy, Installed, StagingSink};
use super::{details, new_node_state, now_unix, open_bundle_file, record, Home};
use crate::bundle::{self, OpenOptions};
use crate::error::{Error, Result};
use crate::kdf::{self, KdfLimits};
use crate::keyring::store::Keystore;
use crate::keyring::Fingerprint;
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
    /// Verify and show what would change, write nothing.
    pub dry_run: bool,
}

/// What an import did (or, in a dry run, would do) to one configuration file.
pub struct ConfigChange {
    pub file: ConfigFile,
    pub target: std::path::PathBuf,
    pub existed: bool,
    pub unchanged: bool,
    pub changes: Vec<crate::ha::config::FieldChange>,
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
    /// Whether `--delete` removed the bundle; `Err` holds why it could not.
    pub deleted: Option<std::result::Result<(), String>>,
}

pub fn import(home: &Home, opts: &ImportOptions) -> Result<ImportReport> {
    let mut lock = if home.root().is_dir() {
        Some(home.lock()?)
    } else {
        None
    };
    let file = open_bundle_file(&opts.file)?;
    let limits = KdfLimits {
        max_memory_kib: opts.max_kdf_memory.unwrap_or(kdf::MAX_IMPORT_MEMORY_KIB),
        ..KdfLimits::default()
    };
    let locked = bundle::read_header(BufReader::new(file), &limits)?;

    let existing = if home.has_keystore() {
        let store = home.load_keystore()?;
        home.verify_audit(&store)?;
        Some(store)
    } else if home.audit_path().exists() {
        return Err(Error::Refused(format!(
            "{} exists without a keyring: move it away (it belongs to a keyring that is gone) and import again",
            home.audit_path().display()
        )));
    } else {
        None
    };

    let password = opts.password.read("Bundle password: ")?;
    let now = now_unix();
    let mut reader = locked.unlock(
        &password,
        &OpenOptions {
            now,
            allow_expired: opts.allow_expired,
        },
    )?;
    drop(password);
    let created = reader.header().created;
    let expires = reader.header().expires;

    let mut staging = StagingSink::new(home);
    let sink: &mut dyn ConfigSink = if opts.keys_only {
        &mut DiscardConfig
    } else {
        &mut staging
    };
    // The archive must end where the authenticated stream does.
    let payload = reader.parse_payload(|plain| {
        payload::read(plain, payload::DEFAULT_MAX_TOTAL, sink).map(|(payload, _)| payload)
    })?;

    let plans = if opts.keys_only {
        Vec::new()
    } else {
        config::plan_install(
            home,
            staging,
            &ConfigPolicy {
                accept_config: opts.accept_config,
                node_name: opts.node_name.as_deref(),
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
        })
        .collect();
    let config_skipped = if opts.keys_only {
        payload.config.clone()
    } else {
        Vec::new()
    };

    let before = existing.as_ref().map(|s| s.keyring.fingerprint());
    let after = payload.keyring.fingerprint();
    let node = match existing {
        Some(s) => s.node,
        None => new_node_state()?,
    };
    let mut store = Keystore {
        keyring: payload.keyring,
        node,
    };
    let line = record(
        &mut store,
        now,
        "import",
        details([
            ("bundle", Value::from(opts.file.display().to_string())),
            (
                "source_node",
                Value::from(payload.manifest.source_node.clone()),
            ),
            ("bundle_created", Value::from(bundle::fmt_time(created))),
            (
                "bundle_expires",
                expires
                    .map(bundle::fmt_time)
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
        ]),
    );
    let mut report = ImportReport {
        before,
        after,
        source_node: payload.manifest.source_node,
        created,
        expires,
        config_skipped,
        config,
        dry_run: opts.dry_run,
        deleted: None,
    };
    if opts.dry_run {
        return Ok(report);
    }
    if lock.is_none() {
        home.create()?;
        lock = Some(home.lock()?);
    }
    let stamp = super::file_stamp(now);
    home.commit(
        &store,
        &line,
        now,
        || config::install(home, plans, &stamp),
        Installed::undo,
    )?;
    drop(lock);

    report.deleted = opts.delete.then(|| {
        std::fs::remove_file(&opts.file).map_err(|e| format!("{}: {e}", opts.file.display()))
    });
    Ok(report)
}
