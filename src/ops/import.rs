//! `keyferry import`: open a bundle, verify all of it, then install its keys
//! (and, with the HA configuration, its configuration files) atomically.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use serde_json::Value;

use super::{details, new_node_state, now_unix, open_bundle_file, payload_error, record, Home};
use crate::bundle::{self, BundleError, OpenOptions};
use crate::error::{Error, Result};
use crate::kdf::{self, KdfLimits};
use crate::keyring::store::Keystore;
use crate::keyring::Fingerprint;
use crate::payload::{self, ConfigFile, DiscardConfig};
use crate::secret::PasswordSource;

pub struct ImportOptions {
    pub file: PathBuf,
    pub password: PasswordSource,
    pub keys_only: bool,
    pub allow_expired: bool,
    /// Raises the KDF memory limit (KiB).
    pub max_kdf_memory: Option<u32>,
    pub delete: bool,
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
    let (header, source) = bundle::read_header(BufReader::new(file))?;
    let limits = KdfLimits {
        max_memory_kib: opts.max_kdf_memory.unwrap_or(kdf::MAX_IMPORT_MEMORY_KIB),
        ..KdfLimits::default()
    };
    limits.check(&header.kdf)?;

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
    let kek = kdf::derive_kek(password.as_bytes(), &header.kdf_salt, &header.kdf)?;
    drop(password);
    let now = now_unix();
    let created = header.created;
    let expires = header.expires;
    let mut reader = bundle::open_with_kek(
        &kek,
        header,
        source,
        &OpenOptions {
            limits,
            now,
            allow_expired: opts.allow_expired,
        },
    )?;
    drop(kek);

    let mut sink = DiscardConfig;
    let (payload, mut rest) = payload::read(
        BufReader::with_capacity(bundle::CHUNK_SIZE, &mut reader),
        payload::DEFAULT_MAX_TOTAL,
        &mut sink,
    )
    .map_err(payload_error)?;
    // The archive has ended; so must the authenticated stream (this reads
    // and checks the final chunk).
    let left = rest
        .fill_buf()
        .map_err(|e| Error::Bundle(BundleError::from_stream_io(e)))?;
    if !left.is_empty() {
        return Err(Error::Bundle(BundleError::ExtraPayload));
    }
    drop(rest);

    if !payload.config.is_empty() && !opts.keys_only {
        return Err(Error::Refused(format!(
            "this bundle also carries configuration ({}); installing configuration needs the HA \
             configuration support: re-run with --keys-only to take only the keys",
            payload
                .config
                .iter()
                .map(|c| c.content().entry_name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

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
        ]),
    );
    if lock.is_none() {
        home.create()?;
        lock = Some(home.lock()?);
    }
    home.commit(&store, &line, now, || Ok(()), || ())?;
    drop(lock);

    let deleted = opts.delete.then(|| {
        std::fs::remove_file(&opts.file).map_err(|e| format!("{}: {e}", opts.file.display()))
    });
    Ok(ImportReport {
        before,
        after,
        source_node: payload.manifest.source_node,
        created,
        expires,
        config_skipped: payload.config,
        deleted,
    })
}
