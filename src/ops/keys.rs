//! `keyferry keys list` and `keyferry keys fingerprint`: read-only views of
//! the node's keyring. Key material is never shown.

use serde::Serialize;

use super::Home;
use crate::error::Result;
use crate::keyring::{Fingerprint, KeyStatus};

#[derive(Debug, Serialize)]
pub(crate) struct KeyInfo {
    pub id: u32,
    pub status: KeyStatus,
    pub created: String,
    pub algorithm: String,
    pub primary: bool,
    pub has_material: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct KeyList {
    pub fingerprint: Fingerprint,
    pub primary: u32,
    pub keys: Vec<KeyInfo>,
}

pub(crate) fn list(home: &Home) -> Result<KeyList> {
    let store = home.load_keystore()?;
    let k = &store.keyring;
    Ok(KeyList {
        fingerprint: k.fingerprint(),
        primary: k.primary(),
        keys: k
            .keys()
            .iter()
            .map(|key| KeyInfo {
                id: key.id,
                status: key.status,
                created: key.created.clone(),
                algorithm: key.algorithm.clone(),
                primary: key.id == k.primary(),
                has_material: key.material.is_some(),
            })
            .collect(),
    })
}

pub fn fingerprint(home: &Home) -> Result<Fingerprint> {
    Ok(home.load_keystore()?.keyring.fingerprint())
}

/// This node's host key and the pair signing key its keyring holds, as
/// `keyferry keys fingerprint --host` shows them (public halves only).
#[derive(Debug, Serialize)]
pub struct Identity {
    /// The short code an operator reads out for `nodes approve`.
    pub host_key: String,
    /// The host key's public half, base64.
    pub host_key_public: String,
    /// The pair signing key's code, when the keyring has one.
    pub signing_key: Option<String>,
    /// Whether this node holds the signing key's secret half (a pair
    /// node) or only pins its public half (a remote host).
    pub can_sign: bool,
}

/// This node's identity; a keystore written before host keys existed
/// gets its host key now (an audited change, `host-key`).
pub fn identity(home: &Home) -> Result<Identity> {
    let host = ensure_host_key(home)?;
    let keyring = home.load_keystore()?.keyring;
    Ok(Identity {
        host_key: host.code().to_string(),
        host_key_public: host.to_base64(),
        signing_key: keyring.signing().map(|s| s.public.code().to_string()),
        can_sign: keyring.can_sign(),
    })
}

/// The node's host key's public half, made first if the keystore has
/// none yet.
pub fn ensure_host_key(home: &Home) -> Result<crate::bundle::keys::HostPublic> {
    if let Some(k) = home.load_keystore()?.node.host_key {
        return Ok(k.public());
    }
    let mut node = home.open(false)?;
    node.require_keystore()?;
    let change = node.begin("host-key", Default::default())?;
    change.finish()?;
    let store = home.load_keystore()?;
    Ok(store
        .node
        .host_key
        .as_ref()
        .expect("every change leaves a host key")
        .public())
}

/// What `keyferry keys signing-key` did.
#[derive(Debug, Serialize)]
pub struct SigningReport {
    /// The code of the signing key replaced, if there was one.
    pub replaced: Option<String>,
    /// The new signing key's code.
    pub signing_key: String,
}

/// `keyferry keys signing-key [--replace]` on a pair node: gives a pair
/// whose keyring was made before format 2 its signing key, or replaces it
/// (a key that may have leaked). One audited change (`signing-key`, the
/// codes before and after). Refused on a remote host (its keyring pins the
/// pair's key and holds no secret half), and over an existing key without
/// `replace`: every host pins the key it first met, so a new one reaches
/// them only through a password bundle again.
pub fn new_signing_key(home: &Home, replace: bool) -> Result<SigningReport> {
    use crate::error::Error;
    use crate::keyring::PairSigning;
    let mut node = home.open(false)?;
    let store = node.require_keystore()?;
    let mut keyring = store.keyring.clone();
    let replaced = keyring.signing().map(|s| s.public.code().to_string());
    match (&replaced, keyring.can_sign(), replace) {
        (Some(code), false, _) => {
            return Err(Error::Refused(format!(
                "this keyring pins the pair signing key {code} and cannot sign: run `keyferry keys signing-key` on the pair's primary; nothing changed"
            )))
        }
        (Some(code), true, false) => {
            return Err(Error::Refused(format!(
                "this keyring has the pair signing key {code} already; `--replace` makes a new one, after which every host takes distributions again only once it imported a password bundle from the pair; nothing changed"
            )))
        }
        _ => {}
    }
    let signing = PairSigning::generate().map_err(|source| Error::Keyring {
        context: "cannot make the pair signing key".into(),
        source,
    })?;
    let signing_key = signing.public.code().to_string();
    keyring.set_signing(Some(signing));
    let record = super::details([
        ("replaced", serde_json::Value::from(replaced.clone())),
        ("signing_key", serde_json::Value::from(signing_key.clone())),
    ]);
    let mut change = node.begin("signing-key", record)?;
    change.set_keyring(keyring);
    change.finish()?;
    Ok(SigningReport {
        replaced,
        signing_key,
    })
}
