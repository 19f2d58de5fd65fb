//! Versioned data-encryption keys: the `keyring.json` document, its
//! fingerprint, the lifecycle operations of a staged rotation
//! ([`Keyring::add`], [`Keyring::promote`], [`Keyring::disable`],
//! [`Keyring::enable`], [`Keyring::destroy`]) and, in [`envelope`], the
//! format that seals stored values under the primary key.
//!
//! Invariants (checked whenever a keyring is built or parsed, and kept by
//! every operation, so no other code has to):
//! - key ids are unique and ascending; a new key gets the highest id + 1, so
//!   an id is never reused, even after its key is destroyed;
//! - the primary key exists, is enabled and has material, so it can never
//!   be disabled or destroyed (promote another key first);
//! - a destroyed key has no material, every other key has 32 bytes of it;
//! - only an enabled key can be promoted or disabled, only a disabled key
//!   can be enabled or destroyed (disable first, so a key still in use is
//!   not destroyed by mistake), and a destroyed key stays destroyed;
//! - key material lives in zeroizing buffers and never appears in `Debug`;
//! - the pair's signing key ([`PairSigning`], format 2 distributions) rides
//!   along in the document as `signing`, outside the fingerprint (which
//!   names the data keys); its secret half is there only on pair nodes,
//!   and [`Keyring::keys_only_view`] is the document without it;
//! - so do the hosts the pair approved as recipients of distributions
//!   ([`ApprovedHost`], member `approved_hosts`): kept in the keyring so
//!   that only what a pair node holds, never a database row, makes a
//!   recipient, and the secondary gets them with the keys; a keys-only
//!   view has none.
//!
//! The operations change the keyring in memory only: writing it, backing it
//! up and auditing the change belong to the layers above.

mod diff;
pub mod envelope;

use std::fmt;

pub use diff::{KeyChange, KeyDiff};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::bundle::keys::{HostPublic, SigningPublic, SigningSecret};

pub const KEYRING_FORMAT: &str = "keyferry-keyring";
pub const KEYRING_VERSION: u32 = 1;
pub const ALGORITHM: &str = "aes-256-gcm";
pub const KEY_LEN: usize = 32;
const FINGERPRINT_LABEL: &[u8] = b"keyferry keyring v1";
/// Bytes of SHA-256 kept in a fingerprint: 160 bits, as the design says.
const FINGERPRINT_BYTES: usize = 20;
pub const FINGERPRINT_PREFIX: &str = "kf1:";

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
    #[error("no key with id {0} in this keyring: list the keys with `keyferry keys list`")]
    UnknownKey(u32),
    #[error("key {0} is already the primary: nothing to promote")]
    AlreadyPrimary(u32),
    #[error("key {id} is the primary and cannot be {action}: promote another key first")]
    PrimaryLocked { id: u32, action: &'static str },
    #[error("key {id} is {status}; only {wanted} key can be {action}: {fix}")]
    WrongStatus {
        id: u32,
        status: KeyStatus,
        /// "an enabled" or "a disabled".
        wanted: &'static str,
        action: &'static str,
        /// What to do instead.
        fix: &'static str,
    },
    #[error(
        "key ids are exhausted (the highest is {}): start a new keyring",
        u32::MAX
    )]
    IdsExhausted,
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
    #[error("the pair signing key is not valid: {0}")]
    Signing(&'static str),
}

/// The pair's Ed25519 signing key as a keyring holds it: the public half
/// (which a remote host pins) and, on a pair node, the secret half.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairSigning {
    pub public: SigningPublic,
    pub secret: Option<SigningSecret>,
}

impl PairSigning {
    pub fn generate() -> Result<Self, KeyringError> {
        let secret = SigningSecret::generate().map_err(KeyringError::Random)?;
        Ok(Self {
            public: secret.public(),
            secret: Some(secret),
        })
    }
}

const SIGNING_ALGORITHM: &str = "ed25519";

/// A host the pair approved (`keyferry nodes approve`): distributions are
/// sealed to its host key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovedHost {
    pub name: String,
    /// `pair`, `action` or `scheduler`: a pair node gets the whole keyring,
    /// the others the keys-only view.
    pub role: String,
    #[serde(serialize_with = "ser_host_key", deserialize_with = "de_host_key")]
    pub host_key: HostPublic,
}

fn ser_host_key<S: Serializer>(k: &HostPublic, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&k.to_base64())
}

fn de_host_key<'de, D: Deserializer<'de>>(d: D) -> Result<HostPublic, D::Error> {
    let text = String::deserialize(d)?;
    HostPublic::from_base64(&text)
        .ok_or_else(|| serde::de::Error::custom("host_key is not base64 of 32 bytes"))
}

#[derive(Serialize)]
struct SigningOut<'a> {
    algorithm: &'static str,
    public: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
}

#[derive(Deserialize)]
struct SigningWire {
    algorithm: String,
    public: String,
    #[serde(default)]
    secret: Option<SecretText>,
}

impl SigningWire {
    fn validate(self) -> Result<PairSigning, KeyringError> {
        if self.algorithm != SIGNING_ALGORITHM {
            return Err(KeyringError::Signing("its algorithm is not ed25519"));
        }
        let public = SigningPublic::from_base64(&self.public).ok_or(KeyringError::Signing(
            "its public half is not an Ed25519 key",
        ))?;
        let secret = match self.secret {
            None => None,
            Some(t) => {
                let s = SigningSecret::from_base64(&t.0).ok_or(KeyringError::Signing(
                    "its secret half is not base64 of 32 bytes",
                ))?;
                if s.public() != public {
                    return Err(KeyringError::Signing(
                        "its secret half does not belong to its public half",
                    ));
                }
                Some(s)
            }
        };
        Ok(PairSigning { public, secret })
    }
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

    pub fn from_base64(s: &str) -> Option<Self> {
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
pub struct SecretText(pub Zeroizing<String>);

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
    #[serde(default)]
    signing: Option<SigningWire>,
    #[serde(default)]
    approved_hosts: Vec<ApprovedHost>,
}

/// A validated keyring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    primary: u32,
    keys: Vec<Key>,
    signing: Option<PairSigning>,
    approved: Vec<ApprovedHost>,
}

#[derive(Serialize)]
pub(crate) struct KeyringOut<'a> {
    format: &'static str,
    version: u32,
    primary: u32,
    keys: &'a [Key],
    #[serde(skip_serializing_if = "Option::is_none")]
    signing: Option<SigningOut<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    approved_hosts: &'a [ApprovedHost],
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
        check_invariants(primary, &keys)?;
        Ok(Self {
            primary,
            keys,
            signing: None,
            approved: Vec::new(),
        })
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
        let mut keyring = Self::new(wire.primary, keys)?;
        keyring.signing = wire.signing.map(SigningWire::validate).transpose()?;
        keyring.approved = wire.approved_hosts;
        Ok(keyring)
    }

    /// The document as exported in a bundle: the keys (and the pair's
    /// signing key, as this keyring holds it), pretty-printed, in a
    /// zeroizing buffer.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let secret = self
            .signing
            .as_ref()
            .and_then(|s| s.secret.as_ref())
            .map(SigningSecret::to_base64);
        to_json_zeroizing(
            &self.wire_out(secret.as_ref().map(|s| s.as_str())),
            self.keys.len(),
        )
    }

    /// The document's members, for this module and the keystore's.
    pub(crate) fn wire_out<'a>(&'a self, signing_secret: Option<&'a str>) -> KeyringOut<'a> {
        KeyringOut {
            format: KEYRING_FORMAT,
            version: KEYRING_VERSION,
            primary: self.primary,
            keys: &self.keys,
            signing: self.signing.as_ref().map(|s| SigningOut {
                algorithm: SIGNING_ALGORITHM,
                public: s.public.to_base64(),
                secret: signing_secret,
            }),
            approved_hosts: &self.approved,
        }
    }

    /// The pair's signing key, when this keyring has one.
    pub fn signing(&self) -> Option<&PairSigning> {
        self.signing.as_ref()
    }

    /// Whether this keyring holds the signing key's secret half (a pair
    /// node's), so that it can approve hosts and distribute.
    pub fn can_sign(&self) -> bool {
        self.signing.as_ref().is_some_and(|s| s.secret.is_some())
    }

    /// Sets (or, with `None`, drops) the pair's signing key.
    pub fn set_signing(&mut self, signing: Option<PairSigning>) {
        self.signing = signing;
    }

    /// The keyring as a remote Action or Scheduler host gets it: the same
    /// keys, and of the signing key only its public half (to pin).
    pub fn keys_only_view(&self) -> Keyring {
        let mut view = self.clone();
        if let Some(s) = &mut view.signing {
            s.secret = None;
        }
        view.approved.clear();
        view
    }

    /// The hosts distributions are sealed to.
    pub fn approved_hosts(&self) -> &[ApprovedHost] {
        &self.approved
    }

    /// Approves `host` (replacing an earlier approval of the same name).
    pub fn approve_host(&mut self, host: ApprovedHost) {
        self.approved.retain(|h| h.name != host.name);
        self.approved.push(host);
        self.approved.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Withdraws the approval of `name`; whether there was one.
    pub fn withdraw_host(&mut self, name: &str) -> bool {
        let before = self.approved.len();
        self.approved.retain(|h| h.name != name);
        self.approved.len() != before
    }

    /// Takes the approvals of `incoming` when it has the signing key's
    /// secret half (a pair keyring), else keeps this keyring's.
    pub fn merged_approvals(&self, incoming: &Keyring) -> Vec<ApprovedHost> {
        if incoming
            .signing
            .as_ref()
            .is_some_and(|s| s.secret.is_some())
        {
            incoming.approved.clone()
        } else {
            self.approved.clone()
        }
    }

    /// Sets the approvals (an import's merge).
    pub fn set_approved_hosts(&mut self, hosts: Vec<ApprovedHost>) {
        self.approved = hosts;
    }

    /// This keyring's signing key after taking `incoming`'s: the incoming
    /// one, except that a secret half this node holds for the same public
    /// key is kept when the incoming view lacks it (a pair node that
    /// imports a keys-only bundle stays able to sign), and that a keyring
    /// without one leaves the current one in place.
    pub fn merged_signing(&self, incoming: &Keyring) -> Option<PairSigning> {
        match (&self.signing, &incoming.signing) {
            (Some(mine), Some(theirs))
                if mine.public == theirs.public && theirs.secret.is_none() =>
            {
                Some(mine.clone())
            }
            (_, Some(theirs)) => Some(theirs.clone()),
            (mine, None) => mine.clone(),
        }
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

    /// The ids of the keys that hold material (what the fingerprint
    /// covers): the keys a node holding this keyring can use.
    pub fn held_ids(&self) -> Vec<u32> {
        self.keys
            .iter()
            .filter(|k| k.material.is_some())
            .map(|k| k.id)
            .collect()
    }

    /// `kf1:` + hex of the first 20 bytes of SHA-256 over the label, the
    /// primary id and every key that has material, in ascending id order.
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint_of(
            self.primary,
            self.keys
                .iter()
                .filter_map(|k| k.material.as_ref().map(|m| (k.id, m))),
        )
    }

    /// Adds a new enabled key with fresh random material and returns its
    /// id (the highest id + 1). The primary does not change: the new key
    /// is distributed first and promoted later.
    pub fn add(&mut self, created: &str) -> Result<u32, KeyringError> {
        self.add_material(KeyMaterial::generate()?, created)
    }

    /// [`add`](Self::add) with given material (an import, or a test).
    pub fn add_material(
        &mut self,
        material: KeyMaterial,
        created: &str,
    ) -> Result<u32, KeyringError> {
        let last = self.keys.last().map_or(0, |k| k.id);
        let id = last.checked_add(1).ok_or(KeyringError::IdsExhausted)?;
        if humantime::parse_rfc3339(created).is_err() {
            return Err(KeyringError::Created(id, created.to_owned()));
        }
        self.keys.push(Key {
            id,
            status: KeyStatus::Enabled,
            created: created.to_owned(),
            algorithm: ALGORITHM.to_owned(),
            material: Some(material),
        });
        self.debug_check();
        Ok(id)
    }

    /// Makes the enabled key `id` the primary: new values are sealed under
    /// it from now on. The old primary stays enabled.
    pub fn promote(&mut self, id: u32) -> Result<(), KeyringError> {
        if id == self.primary {
            return Err(KeyringError::AlreadyPrimary(id));
        }
        self.expect_status(id, KeyStatus::Enabled, "promoted")?;
        self.primary = id;
        self.debug_check();
        Ok(())
    }

    /// Disables the enabled, non-primary key `id`: values sealed under it
    /// no longer open, but its material is kept, so it can be enabled
    /// again.
    pub fn disable(&mut self, id: u32) -> Result<(), KeyringError> {
        self.refuse_primary(id, "disabled")?;
        self.expect_status(id, KeyStatus::Enabled, "disabled")?;
        self.set_status(id, KeyStatus::Disabled);
        Ok(())
    }

    /// Enables the disabled key `id` again.
    pub fn enable(&mut self, id: u32) -> Result<(), KeyringError> {
        self.expect_status(id, KeyStatus::Disabled, "enabled")?;
        self.set_status(id, KeyStatus::Enabled);
        Ok(())
    }

    /// Destroys the disabled key `id`: its material is wiped from this
    /// keyring for good (the id stays, so it is never reused). Values still
    /// sealed under it can never be opened again.
    pub fn destroy(&mut self, id: u32) -> Result<(), KeyringError> {
        self.refuse_primary(id, "destroyed")?;
        self.expect_status(id, KeyStatus::Disabled, "destroyed")?;
        let key = self.key_mut(id);
        key.status = KeyStatus::Destroyed;
        // `KeyMaterial` wipes itself when dropped.
        key.material = None;
        self.debug_check();
        Ok(())
    }

    fn refuse_primary(&self, id: u32, action: &'static str) -> Result<(), KeyringError> {
        if id == self.primary {
            return Err(KeyringError::PrimaryLocked { id, action });
        }
        Ok(())
    }

    /// Fails unless key `id` exists with status `wanted`.
    fn expect_status(
        &self,
        id: u32,
        wanted: KeyStatus,
        action: &'static str,
    ) -> Result<(), KeyringError> {
        let key = self.key(id).ok_or(KeyringError::UnknownKey(id))?;
        if key.status == wanted {
            return Ok(());
        }
        let fix = match (key.status, wanted) {
            (KeyStatus::Destroyed, _) => "a destroyed key stays destroyed; add a new key instead",
            (KeyStatus::Disabled, KeyStatus::Enabled) if action == "disabled" => {
                "it already is; nothing to do"
            }
            (KeyStatus::Disabled, _) => "enable it first",
            (KeyStatus::Enabled, KeyStatus::Disabled) if action == "enabled" => {
                "it already is; nothing to do"
            }
            (KeyStatus::Enabled, _) => "disable it first, once no stored value is sealed under it",
        };
        Err(KeyringError::WrongStatus {
            id,
            status: key.status,
            wanted: match wanted {
                KeyStatus::Enabled => "an enabled",
                KeyStatus::Disabled => "a disabled",
                KeyStatus::Destroyed => "a destroyed",
            },
            action,
            fix,
        })
    }

    fn set_status(&mut self, id: u32, status: KeyStatus) {
        self.key_mut(id).status = status;
        self.debug_check();
    }

    /// The key `id`, which the caller has checked exists.
    fn key_mut(&mut self, id: u32) -> &mut Key {
        self.keys
            .iter_mut()
            .find(|k| k.id == id)
            .expect("caller checked the key exists")
    }

    fn debug_check(&self) {
        debug_assert!(
            check_invariants(self.primary, &self.keys).is_ok(),
            "a keyring operation broke an invariant"
        );
    }
}

/// Every invariant of the module documentation that a document can break.
fn check_invariants(primary: u32, keys: &[Key]) -> Result<(), KeyringError> {
    if keys.is_empty() {
        return Err(KeyringError::NoKeys);
    }
    for pair in keys.windows(2) {
        if pair[1].id <= pair[0].id {
            return Err(KeyringError::Order(pair[1].id, pair[0].id));
        }
    }
    for k in keys {
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
    Ok(())
}

/// Serializes a document holding keys into a buffer sized up front, so that
/// no reallocation leaves a copy of the keys behind in freed memory.
pub fn to_json_zeroizing<T: Serialize>(value: &T, keys: usize) -> Zeroizing<Vec<u8>> {
    const BYTES_PER_KEY: usize = 256;
    const FIXED: usize = 1024;
    let mut buf = Zeroizing::new(Vec::with_capacity(FIXED + keys * BYTES_PER_KEY));
    serde_json::to_writer_pretty(&mut *buf, value).expect("keyring serializes");
    buf.push(b'\n');
    buf
}

/// A keyring fingerprint: safe to print, store and compare.
/// The fingerprint of a keyring whose primary is `primary` and whose keys
/// with material are `keys` (ascending ids): what [`Keyring::fingerprint`]
/// computes, for a keyring state that is known only by its parts.
pub fn fingerprint_of<'a>(
    primary: u32,
    keys: impl IntoIterator<Item = (u32, &'a KeyMaterial)>,
) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(FINGERPRINT_LABEL);
    h.update([0u8]);
    h.update(primary.to_be_bytes());
    for (id, m) in keys {
        h.update(id.to_be_bytes());
        h.update(m.as_bytes());
    }
    let digest = h.finalize();
    let mut fp = [0u8; FINGERPRINT_BYTES];
    fp.copy_from_slice(&digest[..FINGERPRINT_BYTES]);
    Fingerprint(fp)
}

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
    fn the_signing_key_and_approvals_ride_along_outside_the_fingerprint() {
        let mut pair = Keyring::from_json(VECTOR).unwrap();
        let fp = pair.fingerprint();
        pair.set_signing(Some(PairSigning::generate().unwrap()));
        pair.approve_host(ApprovedHost {
            name: "act-1".into(),
            role: "action".into(),
            host_key: crate::bundle::keys::HostSecret::from_bytes(&[2; 32]).public(),
        });
        assert_eq!(pair.fingerprint(), fp);
        assert!(pair.can_sign());
        let back = Keyring::from_json(&pair.to_json()).unwrap();
        assert_eq!(back, pair);
        // The keys-only view: the public half only, no approvals.
        let view = pair.keys_only_view();
        let json = String::from_utf8(view.to_json().to_vec()).unwrap();
        assert!(
            !json.contains("secret") && !json.contains("approved_hosts"),
            "{json}"
        );
        assert!(!view.can_sign());
        assert_eq!(
            view.signing().unwrap().public,
            pair.signing().unwrap().public
        );
        // A pair node taking the view keeps its secret half and approvals;
        // a host with another pinned key takes the new one (a password
        // bundle re-pins); a keyring without one leaves the pin.
        assert_eq!(pair.merged_signing(&view), pair.signing().cloned());
        assert_eq!(pair.merged_approvals(&view), pair.approved_hosts());
        let mut other = view.clone();
        other.set_signing(Some(PairSigning::generate().unwrap()));
        assert_eq!(view.merged_signing(&other), other.signing().cloned());
        let bare = Keyring::from_json(VECTOR).unwrap();
        assert_eq!(view.merged_signing(&bare), view.signing().cloned());
        // A secret half that does not belong to its public half is refused.
        let mut doc: serde_json::Value = serde_json::from_slice(&pair.to_json()).unwrap();
        doc["signing"]["public"] = other.signing().unwrap().public.to_base64().into();
        assert!(matches!(
            Keyring::from_json(doc.to_string().as_bytes()),
            Err(KeyringError::Signing(_))
        ));
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

    const LATER: &str = "2026-12-01T00:00:00Z";

    fn wrong(id: u32, status: KeyStatus, action: &str) -> impl Fn(&KeyringError) -> bool + '_ {
        move |e| {
            matches!(e, KeyringError::WrongStatus { id: i, status: s, action: a, .. }
                if *i == id && *s == status && *a == action)
        }
    }

    #[test]
    fn add_gives_the_next_id_enabled_and_keeps_the_primary() {
        let mut k = Keyring::generate(LATER).unwrap();
        assert_eq!(k.add(LATER).unwrap(), 2);
        assert_eq!(k.add(LATER).unwrap(), 3);
        assert_eq!(k.primary(), 1);
        let ids: Vec<u32> = k.keys().iter().map(|key| key.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(k.keys().iter().all(|key| key.status == KeyStatus::Enabled));
        assert_ne!(k.keys()[1].material, k.keys()[2].material);
        // A destroyed last key's id is not reused.
        k.disable(3).unwrap();
        k.destroy(3).unwrap();
        assert_eq!(k.add(LATER).unwrap(), 4);
        // The result parses back: every invariant of a document holds.
        assert_eq!(Keyring::from_json(&k.to_json()).unwrap(), k);
        assert!(matches!(
            k.add("yesterday"),
            Err(KeyringError::Created(5, _))
        ));
        assert_eq!(k.keys().len(), 4, "a refused add adds nothing");
    }

    #[test]
    fn add_refuses_when_ids_run_out() {
        let mut key = Keyring::generate(LATER).unwrap().keys()[0].clone();
        key.id = u32::MAX;
        let mut k = Keyring::new(u32::MAX, vec![key]).unwrap();
        assert!(matches!(k.add(LATER), Err(KeyringError::IdsExhausted)));
    }

    #[test]
    fn promote_only_an_enabled_key_that_is_not_yet_primary() {
        let mut k = Keyring::generate(LATER).unwrap();
        let two = k.add(LATER).unwrap();
        assert!(matches!(k.promote(1), Err(KeyringError::AlreadyPrimary(1))));
        assert!(matches!(k.promote(9), Err(KeyringError::UnknownKey(9))));
        k.promote(two).unwrap();
        assert_eq!(k.primary(), 2);
        assert_eq!(k.key(1).unwrap().status, KeyStatus::Enabled);
        k.disable(1).unwrap();
        let e = k.promote(1).unwrap_err();
        assert!(wrong(1, KeyStatus::Disabled, "promoted")(&e), "{e}");
        assert!(e.to_string().ends_with("enable it first"), "{e}");
        k.destroy(1).unwrap();
        let e = k.promote(1).unwrap_err();
        assert!(wrong(1, KeyStatus::Destroyed, "promoted")(&e), "{e}");
        assert_eq!(k.primary(), 2);
    }

    #[test]
    fn the_primary_cannot_be_disabled_or_destroyed() {
        let mut k = Keyring::generate(LATER).unwrap();
        let e = k.disable(1).unwrap_err();
        assert!(matches!(
            e,
            KeyringError::PrimaryLocked {
                id: 1,
                action: "disabled"
            }
        ));
        assert!(e.to_string().contains("promote another key first"), "{e}");
        assert!(matches!(
            k.destroy(1),
            Err(KeyringError::PrimaryLocked {
                id: 1,
                action: "destroyed"
            })
        ));
        assert_eq!(k.key(1).unwrap().status, KeyStatus::Enabled);
    }

    #[test]
    fn disable_enable_and_destroy_follow_the_lifecycle() {
        let mut k = Keyring::generate(LATER).unwrap();
        let two = k.add(LATER).unwrap();
        // Enable: only a disabled key.
        let e = k.enable(two).unwrap_err();
        assert!(wrong(2, KeyStatus::Enabled, "enabled")(&e), "{e}");
        // Destroy: only a disabled key (disable first).
        let e = k.destroy(two).unwrap_err();
        assert!(wrong(2, KeyStatus::Enabled, "destroyed")(&e), "{e}");
        assert_eq!(
            e.to_string(),
            "key 2 is enabled; only a disabled key can be destroyed: \
             disable it first, once no stored value is sealed under it"
        );
        k.disable(two).unwrap();
        let e = k.disable(two).unwrap_err();
        assert!(wrong(2, KeyStatus::Disabled, "disabled")(&e), "{e}");
        assert!(e.to_string().ends_with("nothing to do"), "{e}");
        let material = k.key(two).unwrap().material.clone();
        k.enable(two).unwrap();
        assert_eq!(k.key(two).unwrap().status, KeyStatus::Enabled);
        assert_eq!(
            k.key(two).unwrap().material,
            material,
            "enable keeps material"
        );
        k.disable(two).unwrap();
        k.destroy(two).unwrap();
        let key = k.key(two).unwrap();
        assert_eq!(key.status, KeyStatus::Destroyed);
        assert!(key.material.is_none(), "destroy removes the material");
        for (result, action) in [
            (k.enable(two), "enabled"),
            (k.disable(two), "disabled"),
            (k.destroy(two), "destroyed"),
        ] {
            let e = result.unwrap_err();
            assert!(wrong(2, KeyStatus::Destroyed, action)(&e), "{e}");
        }
        for result in [k.enable(7), k.disable(7), k.destroy(7)] {
            assert!(matches!(result, Err(KeyringError::UnknownKey(7))));
        }
        assert_eq!(Keyring::from_json(&k.to_json()).unwrap(), k);
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
