//! The node's keystore: its keyring plus node-local state that is never
//! exported (the audit key and the audit log's head). It lives here, in the
//! node's module, and not in `keyring`: the keyring knows nothing of the
//! audit log, so the two modules do not depend on each other.
//!
//! The keystore is the `keyring.json` in the node's home. It is a keyring
//! document with one more member, `node`, which a keyring reader ignores; the
//! fingerprint covers the keys only, so a node and the bundle it exported
//! agree although the node's file holds more.
//!
//! The node-local part also holds the node's X25519 host key (the key
//! format 2 distributions are sealed to; never in any bundle) and the
//! serial of the last distribution this node took (so that an older one
//! is refused). Keystores written before host keys existed have neither;
//! the next change of the home makes the host key.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::audit::AuditHead;
use crate::bundle::keys::HostSecret;
use crate::keyring::{
    to_json_zeroizing, KeyMaterial, Keyring, KeyringError, KeyringOut, SecretText,
};

/// Node-local state kept next to the keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// Keys the audit log's MACs. Per node, never exported.
    pub audit_key: KeyMaterial,
    /// The last record the audit log must end with.
    pub audit_head: AuditHead,
    /// The node's host key; `None` in a keystore written before host keys
    /// existed, until its next change.
    pub host_key: Option<HostSecret>,
    /// The serial of the last distribution taken (`nodes sync`); 0 for
    /// none.
    pub distribution_serial: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keystore {
    pub keyring: Keyring,
    pub node: NodeState,
}

#[derive(Serialize)]
struct NodeOut<'a> {
    audit_key: &'a KeyMaterial,
    audit_seq: u64,
    audit_mac: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_key: Option<&'a str>,
    #[serde(skip_serializing_if = "is_zero")]
    distribution_serial: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct KeystoreOut<'a> {
    #[serde(flatten)]
    keyring: KeyringOut<'a>,
    node: NodeOut<'a>,
}

#[derive(Deserialize)]
struct NodeWire {
    audit_key: SecretText,
    audit_seq: u64,
    audit_mac: String,
    #[serde(default)]
    host_key: Option<SecretText>,
    #[serde(default)]
    distribution_serial: u64,
}

#[derive(Deserialize)]
struct KeystoreWire {
    node: NodeWire,
}

impl Keystore {
    pub fn from_json(bytes: &[u8]) -> Result<Self, KeyringError> {
        let keyring = Keyring::from_json(bytes)?;
        let wire: KeystoreWire = serde_json::from_slice(bytes)
            .map_err(|e| KeyringError::Json(format!("node state: {e}")))?;
        let audit_key = KeyMaterial::from_base64(&wire.node.audit_key.0)
            .ok_or_else(|| KeyringError::Json("node.audit_key is not base64 of 32 bytes".into()))?;
        let audit_head = AuditHead::from_parts(wire.node.audit_seq, &wire.node.audit_mac)
            .ok_or_else(|| KeyringError::Json("node.audit_mac is not 64 hex digits".into()))?;
        let host_key = match &wire.node.host_key {
            None => None,
            Some(t) => Some(HostSecret::from_base64(&t.0).ok_or_else(|| {
                KeyringError::Json("node.host_key is not base64 of 32 bytes".into())
            })?),
        };
        Ok(Self {
            keyring,
            node: NodeState {
                audit_key,
                audit_head,
                host_key,
                distribution_serial: wire.node.distribution_serial,
            },
        })
    }

    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let secret = self
            .keyring
            .signing()
            .and_then(|s| s.secret.as_ref())
            .map(|s| s.to_base64());
        let host_key = self.node.host_key.as_ref().map(HostSecret::to_base64);
        let out = KeystoreOut {
            keyring: self.keyring.wire_out(secret.as_ref().map(|s| s.as_str())),
            node: NodeOut {
                audit_key: &self.node.audit_key,
                audit_seq: self.node.audit_head.seq,
                audit_mac: self.node.audit_head.mac_hex(),
                host_key: host_key.as_ref().map(|s| s.as_str()),
                distribution_serial: self.node.distribution_serial,
            },
        };
        to_json_zeroizing(&out, self.keyring.keys().len() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystore_round_trips_and_reads_as_a_plain_keyring() {
        let store = Keystore {
            keyring: Keyring::generate("2026-11-25T00:00:00Z").unwrap(),
            node: NodeState {
                audit_key: KeyMaterial::generate().unwrap(),
                audit_head: AuditHead::genesis(),
                host_key: Some(HostSecret::generate().unwrap()),
                distribution_serial: 3,
            },
        };
        let json = store.to_json();
        assert_eq!(Keystore::from_json(&json).unwrap(), store);
        assert_eq!(Keyring::from_json(&json).unwrap(), store.keyring);
    }
}
