//! `keyferry export`: seal the node's keyring (and, on request, the pair's
//! configuration) into a password-protected bundle file.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::{details, now_unix, Home};
use crate::bundle::{self, SealParams};
use crate::error::{Error, Result};
use crate::fmt::fmt_time;
use crate::kdf::KdfParams;
use crate::keyring::Fingerprint;
use crate::payload;
use crate::secret::{Password, PasswordSource};

/// How long a bundle stays importable unless the operator says otherwise.
pub(crate) const DEFAULT_EXPIRY: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Never,
    After(Duration),
}

impl Expiry {
    /// Parses `never` or a duration such as `24h`, `7d`, `90m`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("never") {
            return Ok(Expiry::Never);
        }
        let d = humantime::parse_duration(s).map_err(|e| {
            format!("{s:?} is not a duration like 24h, 7d or 30m, nor `never`: {e}")
        })?;
        if d.as_secs() == 0 {
            return Err("an expiry of less than a second would expire at once: use e.g. 1h".into());
        }
        Ok(Expiry::After(d))
    }

    fn at(self, now: u64) -> Option<u64> {
        match self {
            Expiry::Never => None,
            Expiry::After(d) => Some(now.saturating_add(d.as_secs())),
        }
    }
}

pub struct ExportOptions {
    pub file: PathBuf,
    pub with_config: bool,
    pub armor: bool,
    pub expiry: Expiry,
    pub kdf: KdfParams,
    /// `None`: generate a password and report it.
    pub password: Option<PasswordSource>,
}

pub struct ExportReport {
    pub file: PathBuf,
    pub fingerprint: Fingerprint,
    pub expires: Option<u64>,
    pub kdf: KdfParams,
    /// The generated password, to be shown to the operator once.
    pub generated_password: Option<Password>,
    pub contents: Vec<payload::Content>,
}

fn check_target(file: &Path) -> Result<&Path> {
    if file.exists() {
        return Err(Error::Refused(format!(
            "{} already exists: delete it or choose another name (export never overwrites a file)",
            file.display()
        )));
    }
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "the folder {} does not exist: create it or choose another path",
            dir.display()
        )));
    }
    Ok(dir)
}

pub fn export(home: &Home, opts: &ExportOptions) -> Result<ExportReport> {
    opts.kdf.check_for_export()?;
    if !home.root().is_dir() {
        return Err(Error::NotInitialized(home.root().to_path_buf()));
    }
    let mut node = home.open(false)?;
    let store = node.require_keystore()?;
    tracing::debug!(home = %home.root().display(), "keystore loaded, audit log verified");
    let dir = check_target(&opts.file)?;
    let config = super::config::sources_for_export(home, opts.with_config)?;
    let (password, generated) = match &opts.password {
        Some(source) => (source.read_new("Bundle password: ")?, false),
        None => (Password::generate()?, true),
    };

    let now = now_unix();
    let params = SealParams {
        kdf: opts.kdf,
        created: now,
        expires: opts.expiry.at(now),
        armor: opts.armor,
    };
    // Only a full pair bundle (with the pair's configuration, for the
    // secondary) carries the signing key's secret half; a keys-only bundle
    // carries its public half, which a remote host pins.
    let keyring = if opts.with_config {
        store.keyring.clone()
    } else {
        store.keyring.keys_only_view()
    };
    let fingerprint = keyring.fingerprint();
    let mut contents = vec![payload::Content::Keyring];
    contents.extend(config.files.iter().map(|(f, _)| f.content()));

    let mut change = node.begin(
        "export",
        details([
            ("bundle", Value::from(opts.file.display().to_string())),
            ("fingerprint", Value::from(fingerprint.to_string())),
            (
                "expires",
                params
                    .expires
                    .map(fmt_time)
                    .map_or(Value::Null, Value::from),
            ),
            ("kdf", Value::from(opts.kdf.to_string())),
            ("armor", Value::from(opts.armor)),
            (
                "contents",
                serde_json::to_value(&contents).expect("contents serialize"),
            ),
        ]),
    )?;
    tracing::info!(
        file = %opts.file.display(),
        kdf = %opts.kdf,
        armor = opts.armor,
        generated_password = generated,
        "sealing the bundle"
    );
    let io_what = format!("cannot write the bundle in {}", dir.display());
    let mut staged = change.stage_in(dir)?;
    {
        let out = BufWriter::with_capacity(bundle::CHUNK_SIZE, &mut staged);
        let mut sealed = bundle::seal(&password, &params, out)?;
        let mut sources = config.open_all()?;
        payload::write(
            &mut sealed,
            &config.node_name,
            &keyring,
            sources.as_payload_sources(),
        )
        .map_err(Error::io(io_what.clone()))?;
        sealed
            .finish()?
            .flush()
            .map_err(Error::io(io_what.clone()))?;
    }
    tracing::debug!(
        ?contents,
        "payload sealed; committing with its audit record"
    );
    change.create_file(staged, &opts.file)?;
    change.finish()?;
    tracing::info!(file = %opts.file.display(), %fingerprint, "export done");
    Ok(ExportReport {
        file: opts.file.clone(),
        fingerprint,
        expires: params.expires,
        kdf: opts.kdf,
        generated_password: generated.then_some(password),
        contents,
    })
}
