//! The plaintext inside a bundle: a zip archive holding `manifest.json`
//! (first), `keyring.json`, and optionally the pair's configuration files.
//!
//! Invariants:
//! - only the four allowed names are accepted, each at most once, with
//!   `manifest.json` first and `keyring.json` present; nothing else, however
//!   harmless it looks, gets past [`read`];
//! - the total uncompressed size is capped while inflating;
//! - `keyring.json` must have the fingerprint the manifest announces, and
//!   the manifest's `contents` must list exactly what is there;
//! - configuration files are never interpreted here: they stream to a sink
//!   the caller provides (staging files, or nowhere for `--keys-only`).

pub mod zip;

use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::keyring::{Fingerprint, Keyring, KeyringError};
pub use zip::ZipError;

pub const MANIFEST: &str = "manifest.json";
/// The longest `source_node` a manifest may carry (a host name is at most
/// 253 characters); it is shown to operators and written to the audit log.
pub const MAX_SOURCE_NODE: usize = 255;
pub const KEYRING: &str = "keyring.json";
pub(crate) const APPSETTINGS: &str = "config/appsettings.json";
pub(crate) const HA_CONFIG: &str = "config/ha.toml";
pub(crate) const PAYLOAD_FORMAT: &str = "keyferry-payload";
pub const PAYLOAD_VERSION: u32 = 1;
/// Default cap on the payload's total uncompressed size.
pub const DEFAULT_MAX_TOTAL: u64 = 64 * 1024 * 1024;
/// A manifest is a few hundred bytes; more means something is wrong.
const MAX_MANIFEST_LEN: usize = 64 * 1024;
/// Room for thousands of keys.
const MAX_KEYRING_LEN: usize = 4 * 1024 * 1024;

/// What a payload can carry, as named in the manifest's `contents`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Content {
    Keyring,
    Appsettings,
    HaConfig,
}

impl Content {
    pub(crate) fn entry_name(self) -> &'static str {
        match self {
            Content::Keyring => KEYRING,
            Content::Appsettings => APPSETTINGS,
            Content::HaConfig => HA_CONFIG,
        }
    }

    fn from_entry_name(name: &str) -> Option<Self> {
        [Content::Keyring, Content::Appsettings, Content::HaConfig]
            .into_iter()
            .find(|c| c.entry_name() == name)
    }
}

/// A configuration file carried in the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigFile {
    Appsettings,
    HaConfig,
}

impl ConfigFile {
    pub(crate) fn content(self) -> Content {
        match self {
            ConfigFile::Appsettings => Content::Appsettings,
            ConfigFile::HaConfig => Content::HaConfig,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub source_node: String,
    pub created_by: String,
    pub keyring_fingerprint: Fingerprint,
    pub contents: Vec<Content>,
}

#[derive(Debug, Error)]
pub enum PayloadError {
    #[error(transparent)]
    Zip(#[from] ZipError),
    #[error("the payload holds {0:?}, which is not allowed ({1}); only manifest.json, keyring.json, config/appsettings.json and config/ha.toml may appear")]
    ForbiddenEntry(String, &'static str),
    #[error("the payload holds {0} twice")]
    DuplicateEntry(String),
    #[error("the payload's first entry must be manifest.json")]
    ManifestNotFirst,
    #[error("the payload has no {0}")]
    Missing(&'static str),
    #[error("{0} is larger than {1} bytes")]
    DocumentTooLarge(&'static str, usize),
    #[error("manifest.json is invalid: {0}")]
    Manifest(String),
    #[error(
        "config/ha.toml is not a valid pair description ({0}): export it again on the primary"
    )]
    HaConfig(String),
    #[error("keyring.json in the payload is invalid: {0}")]
    Keyring(#[from] KeyringError),
    #[error("keyring.json has fingerprint {found}, the manifest announces {announced}: the bundle was not made consistently")]
    FingerprintMismatch {
        found: Fingerprint,
        announced: Fingerprint,
    },
    #[error("the manifest lists {listed:?} but the payload holds {present:?}")]
    ContentsMismatch {
        listed: Vec<Content>,
        present: Vec<Content>,
    },
}

/// Where configuration entries go while a payload is read.
pub trait ConfigSink {
    /// Receives the whole of one configuration file.
    fn receive(&mut self, file: ConfigFile, data: &mut dyn Read) -> io::Result<()>;
}

/// Discards configuration entries (their CRC and size are still checked).
pub(crate) struct DiscardConfig;

impl ConfigSink for DiscardConfig {
    fn receive(&mut self, _file: ConfigFile, data: &mut dyn Read) -> io::Result<()> {
        io::copy(data, &mut io::sink()).map(|_| ())
    }
}

/// A payload read and checked.
#[derive(Debug)]
pub struct Payload {
    pub manifest: Manifest,
    pub keyring: Keyring,
    /// Configuration files that were present and handed to the sink.
    pub config: Vec<ConfigFile>,
}

fn read_document(
    data: &mut dyn Read,
    name: &'static str,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, ZipError> {
    let mut buf = Zeroizing::new(Vec::with_capacity(max.min(64 * 1024)));
    let n = data
        .take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(zip::io_err)?;
    if n > max {
        return Err(ZipError::Rejected(
            name.to_owned(),
            format!("larger than {max} bytes"),
        ));
    }
    Ok(buf)
}

fn why_forbidden(name: &str) -> &'static str {
    if name.ends_with('/') {
        "directories are not allowed"
    } else if name.starts_with('/') || name.starts_with('\\') || name.get(1..2) == Some(":") {
        "absolute paths are not allowed"
    } else if name.split(['/', '\\']).any(|part| part == "..") {
        "'..' paths are not allowed"
    } else {
        "unknown name"
    }
}

/// Reads a payload from `input`, streaming configuration files to `sink`.
/// Returns the payload and the input positioned after the archive.
pub fn read<R: BufRead>(
    input: R,
    max_total: u64,
    sink: &mut dyn ConfigSink,
) -> Result<(Payload, R), PayloadError> {
    let mut manifest_bytes: Option<Zeroizing<Vec<u8>>> = None;
    let mut keyring_bytes: Option<Zeroizing<Vec<u8>>> = None;
    let mut config = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut refusal: Option<PayloadError> = None;
    let result = zip::read_archive(input, max_total, |name, data| {
        let refuse = |e: PayloadError, r: &mut Option<PayloadError>| {
            let msg = e.to_string();
            *r = Some(e);
            Err(ZipError::Rejected(name.to_owned(), msg))
        };
        if seen.iter().any(|s| s == name) {
            return refuse(PayloadError::DuplicateEntry(name.to_owned()), &mut refusal);
        }
        if seen.is_empty() && name != MANIFEST {
            return refuse(PayloadError::ManifestNotFirst, &mut refusal);
        }
        seen.push(name.to_owned());
        if name == MANIFEST {
            manifest_bytes = Some(read_document(data, MANIFEST, MAX_MANIFEST_LEN)?);
            return Ok(());
        }
        match Content::from_entry_name(name) {
            Some(Content::Keyring) => {
                keyring_bytes = Some(read_document(data, KEYRING, MAX_KEYRING_LEN)?);
                Ok(())
            }
            Some(c @ (Content::Appsettings | Content::HaConfig)) => {
                let file = if c == Content::Appsettings {
                    ConfigFile::Appsettings
                } else {
                    ConfigFile::HaConfig
                };
                config.push(file);
                sink.receive(file, data).map_err(zip::io_err)
            }
            None => refuse(
                PayloadError::ForbiddenEntry(name.to_owned(), why_forbidden(name)),
                &mut refusal,
            ),
        }
    });
    let (_entries, rest) = match result {
        Ok(ok) => ok,
        Err(e) => return Err(refusal.unwrap_or(PayloadError::Zip(e))),
    };
    let manifest_bytes = manifest_bytes.ok_or(PayloadError::Missing(MANIFEST))?;
    let keyring_bytes = keyring_bytes.ok_or(PayloadError::Missing(KEYRING))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| PayloadError::Manifest(e.to_string()))?;
    if manifest.format != PAYLOAD_FORMAT {
        return Err(PayloadError::Manifest(format!(
            "format is {:?}, expected {PAYLOAD_FORMAT:?}",
            manifest.format
        )));
    }
    if manifest.version != PAYLOAD_VERSION {
        return Err(PayloadError::Manifest(format!(
            "version {} is not supported by this keyferry: upgrade keyferry",
            manifest.version
        )));
    }
    if manifest.source_node.chars().count() > MAX_SOURCE_NODE {
        return Err(PayloadError::Manifest(format!(
            "source_node is longer than {MAX_SOURCE_NODE} characters"
        )));
    }
    let keyring = Keyring::from_json(&keyring_bytes)?;
    let found = keyring.fingerprint();
    if found != manifest.keyring_fingerprint {
        return Err(PayloadError::FingerprintMismatch {
            found,
            announced: manifest.keyring_fingerprint,
        });
    }
    let mut present = vec![Content::Keyring];
    present.extend(config.iter().map(|c| c.content()));
    let mut listed = manifest.contents.clone();
    listed.sort_by_key(|c| *c as u8);
    present.sort_by_key(|c| *c as u8);
    if listed != present {
        return Err(PayloadError::ContentsMismatch { listed, present });
    }
    Ok((
        Payload {
            manifest,
            keyring,
            config,
        },
        rest,
    ))
}

/// A configuration file to put into a payload: its CRC-32 and length from a
/// first read, and a way to read it again.
pub struct ConfigSource<'a> {
    pub file: ConfigFile,
    pub crc: u32,
    pub len: u64,
    pub data: &'a mut dyn Read,
}

/// Writes a payload: manifest first, then the keyring, then configuration.
pub fn write<W: Write>(
    out: W,
    source_node: &str,
    keyring: &Keyring,
    config: Vec<ConfigSource<'_>>,
) -> io::Result<W> {
    let mut contents = vec![Content::Keyring];
    contents.extend(config.iter().map(|c| c.file.content()));
    let manifest = Manifest {
        format: PAYLOAD_FORMAT.to_owned(),
        version: PAYLOAD_VERSION,
        source_node: source_node.to_owned(),
        created_by: format!("keyferry {}", env!("CARGO_PKG_VERSION")),
        keyring_fingerprint: keyring.fingerprint(),
        contents,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    let mut zip = zip::ZipWriter::new(out);
    zip.add_bytes(MANIFEST, &manifest_json)?;
    zip.add_bytes(KEYRING, &keyring.to_json())?;
    for c in config {
        zip.add(c.file.content().entry_name(), c.len, c.crc, c.data)?;
    }
    zip.finish()
}
