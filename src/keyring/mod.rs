//! Versioned data-encryption keys: the `keyring.json` document, its
//! fingerprint, and the envelope API that encrypts under the primary key.
//!
//! Invariants (checked whenever a keyring is built or parsed, so no other
//! code has to):
//! - key ids are unique and ascending;
//! - the primary key exists, is enabled and has material;
//! - a destroyed key has no material, every other key has 32 bytes of it;
//! - key material lives in zeroizing buffers and never appears in `Debug`.

mod diff;

use std::fmt;

pub use diff::{KeyChange, KeyDiff};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::aead::Cipher;

pub const KEYRING_FORMAT: &str = "keyferry-keyring";
pub const KEYRING_VERSION: u32 = 1;
pub const ALGORITHM: &str = "aes-256-gcm";
pub const KEY_LEN: usize = 32;
const FINGERPRINT_LABEL: &[u8] = b"keyferry keyring v1";
/// Bytes of SHA-256 kept in a fingerprint: 160 bits, as the design says.
const FINGERPRINT_BYTES: usize = 20;
pub const FINGERPRINT_PREFIX: &str = "kf1:";
const ENVELOPE_NONCE_LEN: usize = 12;
const ENVELOPE_TAG_LEN: usize = 16;
const ENVELOPE_ID_LEN: usize = 4;

#[derive(Debug, Error)]
pub enum KeyringError {
    #[error("keyring document is not valid JSON of the expected shape: {0}")]
    Json(String),
    #[error("keyring format is {0:?}, expected \"keyferry-keyring\"")]
    Format(String),
    #[error("keyring version {0} is not supported by this keyferry: upgrade keyferry")]
    Version(u32),
    #[error("keyring has no keys")]
    NoKeys,
    #[error("key ids must be unique and ascending (found {0} after {1})")]
    Order(u32, u32),
    #[error("the primary key {0} is not in the keyring")]
    PrimaryMissing(u32),
    #[error("the primary key {0} must be enabled with material")]
    PrimaryNotUsable(u32),
    #[error("key {0}: algorithm {1:?} is not supported (only aes-256-gcm)")]
    Algorithm(u32, String),
    #[error("key {0}: a destroyed key must have no material, any other key must have it")]
    Material(u32),
    #[error("key {0}: material is not base64 of 32 bytes")]
    MaterialEncoding(u32),
    #[error("key {0}: created time {1:?} is not an RFC 3339 UTC time")]
    Created(u32, String),
    #[error("no key with id {0} in this keyring")]
    UnknownKey(u32),
    #[error("key {0} is {1}: data sealed under it cannot be decrypted until it is enabled")]
    KeyNotUsable(u32, KeyStatus),
    #[error("the ciphertext is malformed or was modified")]
    Envelope,
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
}

/// 32 bytes of AES-256 key material. Zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMaterial(Zeroizing<[u8; KEY_LEN]>);

impl KeyMaterial {
    pub fn generate() -> Result<Self, KeyringError> {
        let mut m = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(m.as_mut()).map_err(|e| KeyringError::Random(e.to_string()))?;
        Ok(Self(m))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub(crate) fn from_base64(s: &str) -> Option<Self> {
        let mut m = Zeroizing::new([0u8; KEY_LEN + 3]);
        match STANDARD.decode_slice(s, m.as_mut()) {
            Ok(KEY_LEN) => {
                let mut key = Zeroizing::new([0u8; KEY_LEN]);
                key.copy_from_slice(&m[..KEY_LEN]);
                Some(Self(key))
            }
            _ => None,
        }
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

impl Serialize for KeyMaterial {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Encoded on the stack and wiped: no heap copy of the key is left.
        let mut buf = Zeroizing::new([0u8; 44]);
        let n = STANDARD
            .encode_slice(self.0.as_ref(), buf.as_mut())
            .expect("32 bytes encode to 44 characters");
        s.serialize_str(std::str::from_utf8(&buf[..n]).expect("base64 is ASCII"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Enabled,
    Disabled,
    Destroyed,
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyStatus::Enabled => "enabled",
            KeyStatus::Disabled => "disabled",
            KeyStatus::Destroyed => "destroyed",
        })
    }
}

/// One versioned key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Key {
    pub id: u32,
    pub status: KeyStatus,
    /// RFC 3339 UTC.
    pub created: String,
    pub algorithm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub material: Option<KeyMaterial>,
}

/// The wire form of a key, before validation.
#[derive(Deserialize)]
struct KeyWire {
    id: u32,
    status: KeyStatus,
    created: String,
    algorithm: String,
    #[serde(default)]
    material: Option<SecretText>,
}

/// A secret string read from JSON (base64 key material), wiped on drop.
/// serde hands over an owned `String`, which moves in without a copy.
pub(crate) struct SecretText(pub(crate) Zeroizing<String>);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| SecretText(Zeroizing::new(s)))
    }
}

/// The wire form of the document; unknown fields (a node's local state, or
/// later additions) are ignored.
#[derive(Deserialize)]
struct KeyringWire {
    format: String,
    version: u32,
    primary: u32,
    keys: Vec<KeyWire>,
}

/// A validated keyring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    primary: u32,
    keys: Vec<Key>,
}

#[derive(Serialize)]
struct KeyringOut<'a> {
    format: &'static str,
    version: u32,
    primary: u32,
    keys: &'a [Key],
}

impl Keyring {
    /// A new keyring with one enabled primary key, id 1.
    pub fn generate(created: &str) -> Result<Self, KeyringError> {
        Self::new(
            1,
            vec![Key {
                id: 1,
                status: KeyStatus::Enabled,
                created: created.to_owned(),
                algorithm: ALGORITHM.to_owned(),
                material: Some(KeyMaterial::generate()?),
            }],
        )
    }

    /// Builds a keyring, checking every invariant.
    pub fn new(primary: u32, keys: Vec<Key>) -> Result<Self, KeyringError> {
        if keys.is_empty() {
            return Err(KeyringError::NoKeys);
        }
        for pair in keys.windows(2) {
            if pair[1].id <= pair[0].id {
                return Err(KeyringError::Order(pair[1].id, pair[0].id));
            }
        }
        for k in &keys {
            if k.algorithm != ALGORITHM {
                return Err(KeyringError::Algorithm(k.id, k.algorithm.clone()));
            }
            if (k.status == KeyStatus::Destroyed) != k.material.is_none() {
                return Err(KeyringError::Material(k.id));
            }
            if humantime::parse_rfc3339(&k.created).is_err() {
                return Err(KeyringError::Created(k.id, k.created.clone()));
            }
        }
        let p = keys
            .iter()
            .find(|k| k.id == primary)
            .ok_or(KeyringError::PrimaryMissing(primary))?;
        if p.status != KeyStatus::Enabled || p.material.is_none() {
            return Err(KeyringError::PrimaryNotUsable(primary));
        }
        Ok(Self { primary, keys })
    }

    /// Parses and validates a `keyring.json` document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, KeyringError> {
        let wire: KeyringWire =
            serde_json::from_slice(bytes).map_err(|e| KeyringError::Json(e.to_string()))?;
        Self::from_wire(wire)
    }

    fn from_wire(wire: KeyringWire) -> Result<Self, KeyringError> {
        if wire.format != KEYRING_FORMAT {
            return Err(KeyringError::Format(wire.format));
        }
        if wire.version != KEYRING_VERSION {
            return Err(KeyringError::Version(wire.version));
        }
        let mut keys = Vec::with_capacity(wire.keys.len());
        for k in wire.keys {
            let material = match &k.material {
                Some(b64) => Some(
                    KeyMaterial::from_base64(&b64.0).ok_or(KeyringError::MaterialEncoding(k.id))?,
                ),
                None => None,
            };
            keys.push(Key {
                id: k.id,
                status: k.status,
                created: k.created,
                algorithm: k.algorithm,
                material,
            });
        }
        Self::new(wire.primary, keys)
    }

    /// The document as exported in a bundle: the keys only, pretty-printed,
    /// in a zeroizing buffer.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let out = KeyringOut {
            format: KEYRING_FORMAT,
            version: KEYRING_VERSION,
            primary: self.primary,
            keys: &self.keys,
        };
        to_json_zeroizing(&out, self.keys.len())
    }

    pub fn primary(&self) -> u32 {
        self.primary
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    pub fn key(&self, id: u32) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// `kf1:` + hex of the first 20 bytes of SHA-256 over the label, the
    /// primary id and every key that has material, in ascending id order.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(FINGERPRINT_LABEL);
        h.update([0u8]);
        h.update(self.primary.to_be_bytes());
        for k in &self.keys {
            if let Some(m) = &k.material {
                h.update(k.id.to_be_bytes());
                h.update(m.as_bytes());
            }
        }
        let digest = h.finalize();
        let mut fp = [0u8; FINGERPRINT_BYTES];
        fp.copy_from_slice(&digest[..FINGERPRINT_BYTES]);
        Fingerprint(fp)
    }

    /// Seals `plaintext` under the primary key: `key id (u32 BE) || nonce ||
    /// ciphertext || tag`.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyringError> {
        let key = self.key(self.primary).expect("primary exists by invariant");
        let material = key.material.as_ref().expect("primary has material");
        let mut nonce = [0u8; ENVELOPE_NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| KeyringError::Random(e.to_string()))?;
        let header = ENVELOPE_ID_LEN + ENVELOPE_NONCE_LEN;
        let mut out = Vec::with_capacity(header + plaintext.len() + ENVELOPE_TAG_LEN);
        out.extend_from_slice(&key.id.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = Cipher::new(material.as_bytes()).seal_in_place(&nonce, aad, &mut out[header..]);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens an envelope made by [`encrypt`](Self::encrypt) with any enabled
    /// key of this keyring.
    pub fn decrypt(&self, envelope: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
        let header = ENVELOPE_ID_LEN + ENVELOPE_NONCE_LEN;
        if envelope.len() < header + ENVELOPE_TAG_LEN {
            return Err(KeyringError::Envelope);
        }
        let id = u32::from_be_bytes(envelope[..ENVELOPE_ID_LEN].try_into().expect("4 bytes"));
        let key = self.key(id).ok_or(KeyringError::UnknownKey(id))?;
        let material = match (&key.status, &key.material) {
            (KeyStatus::Enabled, Some(m)) => m,
            _ => return Err(KeyringError::KeyNotUsable(id, key.status)),
        };
        let nonce: [u8; ENVELOPE_NONCE_LEN] = envelope[ENVELOPE_ID_LEN..header]
            .try_into()
            .expect("12 bytes");
        let (body, tag) = envelope[header..].split_at(envelope.len() - header - ENVELOPE_TAG_LEN);
        let mut plain = Zeroizing::new(body.to_vec());
        let tag = tag.try_into().expect("16-byte tag");
        Cipher::new(material.as_bytes())
            .open_in_place(&nonce, aad, &mut plain, &tag)
            .map_err(|_| KeyringError::Envelope)?;
        Ok(plain)
    }
}

/// Serializes a document holding keys into a buffer sized up front, so that
/// no reallocation leaves a copy of the keys behind in freed memory.
pub(crate) fn to_json_zeroizing<T: Serialize>(value: &T, keys: usize) -> Zeroizing<Vec<u8>> {
    const BYTES_PER_KEY: usize = 256;
    const FIXED: usize = 1024;
    let mut buf = Zeroizing::new(Vec::with_capacity(FIXED + keys * BYTES_PER_KEY));
    serde_json::to_writer_pretty(&mut *buf, value).expect("keyring serializes");
    buf.push(b'\n');
    buf
}

/// A keyring fingerprint: safe to print, store and compare.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; FINGERPRINT_BYTES]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FINGERPRINT_PREFIX)?;
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let not_one = || format!("{s:?} is not a kf1: fingerprint");
        let digits = s.strip_prefix(FINGERPRINT_PREFIX).ok_or_else(not_one)?;
        let mut fp = [0u8; FINGERPRINT_BYTES];
        hex::decode_to_slice(digits, &mut fp).map_err(|_| not_one())?;
        // The printed form is the only form: one fingerprint, one string.
        if digits.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "{s:?} is not a kf1: fingerprint (hex must be lowercase)"
            ));
        }
        Ok(Fingerprint(fp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &[u8] = include_bytes!("../../tests/vectors/independent/keyring.json");

    #[test]
    fn the_independent_vector_has_the_published_fingerprint() {
        let k = Keyring::from_json(VECTOR).unwrap();
        assert_eq!(
            k.fingerprint().to_string(),
            "kf1:4c0620564358b1c24928ebd0e738fa97a9810819"
        );
        // Our own serialization parses back to the same keyring.
        assert_eq!(Keyring::from_json(&k.to_json()).unwrap(), k);
    }

    #[test]
    fn destroyed_keys_do_not_count_in_the_fingerprint() {
        let mut k = Keyring::from_json(VECTOR).unwrap();
        let before = k.fingerprint();
        k.keys[0].status = KeyStatus::Disabled;
        assert_eq!(k.fingerprint(), before, "status is not part of it");
        k.keys[0].status = KeyStatus::Destroyed;
        k.keys[0].material = None;
        assert_ne!(k.fingerprint(), before);
    }

    #[test]
    fn invariants_are_enforced() {
        let good = Keyring::generate("2026-11-25T00:00:00Z").unwrap();
        let key = good.keys()[0].clone();
        let bad_primary = Keyring::new(2, vec![key.clone()]);
        assert!(matches!(bad_primary, Err(KeyringError::PrimaryMissing(2))));
        let disabled = Key {
            status: KeyStatus::Disabled,
            ..key.clone()
        };
        assert!(matches!(
            Keyring::new(1, vec![disabled]),
            Err(KeyringError::PrimaryNotUsable(1))
        ));
        assert!(matches!(
            Keyring::new(1, vec![key.clone(), key.clone()]),
            Err(KeyringError::Order(1, 1))
        ));
        let no_material = Key {
            material: None,
            ..key.clone()
        };
        assert!(matches!(
            Keyring::new(1, vec![no_material]),
            Err(KeyringError::Material(1))
        ));
    }

    #[test]
    fn envelope_round_trip_and_refusals() {
        let k = Keyring::from_json(VECTOR).unwrap();
        let sealed = k.encrypt(b"db password", b"row 7").unwrap();
        assert_eq!(
            &sealed[..4],
            &2u32.to_be_bytes(),
            "sealed under the primary"
        );
        assert_eq!(&*k.decrypt(&sealed, b"row 7").unwrap(), b"db password");
        assert!(matches!(
            k.decrypt(&sealed, b"row 8"),
            Err(KeyringError::Envelope)
        ));
        let mut disabled = k.clone();
        disabled.keys[1].status = KeyStatus::Disabled;
        assert!(matches!(
            disabled.decrypt(&sealed, b"row 7"),
            Err(KeyringError::KeyNotUsable(2, KeyStatus::Disabled))
        ));
    }

    #[test]
    fn fingerprints_parse_only_as_forty_lowercase_hex_digits() {
        let good = "kf1:4c0620564358b1c24928ebd0e738fa97a9810819";
        assert_eq!(good.parse::<Fingerprint>().unwrap().to_string(), good);
        // 40 bytes, but 'ɘ' is two of them: once a panic (slicing inside
        // the character), found by the `documents` fuzz target.
        let multibyte = "kf1:1dffb65\u{258}b90e9371c50bceb13f82b245f713703";
        assert_eq!(multibyte.len(), 4 + 40);
        assert!(multibyte.parse::<Fingerprint>().is_err());
        // A sign where a digit belongs.
        let signed = "kf1:+c0620564358b1c24928ebd0e738fa97a9810819";
        assert!(signed.parse::<Fingerprint>().is_err());
        let upper = "kf1:4C0620564358B1C24928EBD0E738FA97A9810819";
        let err = upper.parse::<Fingerprint>().unwrap_err();
        assert!(err.contains("lowercase"), "{err}");
        assert!("kf1:4c06".parse::<Fingerprint>().is_err());
        assert!("kf2:4c0620564358b1c24928ebd0e738fa97a9810819"
            .parse::<Fingerprint>()
            .is_err());
    }

    #[test]
    fn debug_output_never_shows_material() {
        let k = Keyring::from_json(VECTOR).unwrap();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("AAECAwQF"), "{dbg}");
        assert!(dbg.contains("redacted"));
    }
}
