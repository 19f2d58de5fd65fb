//! The node's keystore: its keyring plus node-local state that is never
//! exported (the audit key and the audit log's head). It lives here, in the
//! node's module, and not in `keyring`: the keyring knows nothing of the
//! audit log, so the two modules do not depend on each other.
//!
//! The keystore is the `keyring.json` in the node's home. It is a keyring
//! document with one more member, `node`, which a keyring reader ignores; the
//! fingerprint covers the keys only, so a node and the bundle it exported
//! agree although the node's file holds more.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::audit::AuditHead;
use crate::keyring::{
    to_json_zeroizing, Key, KeyMaterial, Keyring, KeyringError, SecretText, KEYRING_FORMAT,
    KEYRING_VERSION,
};

/// Node-local state kept next to the keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// Keys the audit log's MACs. Per node, never exported.
    pub audit_key: KeyMaterial,
    /// The last record the audit log must end with.
    pub audit_head: AuditHead,
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
}

#[derive(Serialize)]
struct KeystoreOut<'a> {
    format: &'static str,
    version: u32,
    primary: u32,
    keys: &'a [Key],
    node: NodeOut<'a>,
}

#[derive(Deserialize)]
struct NodeWire {
    audit_key: SecretText,
    audit_seq: u64,
    audit_mac: String,
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
        Ok(Self {
            keyring,
            node: NodeState {
                audit_key,
                audit_head,
            },
        })
    }

    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let out = KeystoreOut {
            format: KEYRING_FORMAT,
            version: KEYRING_VERSION,
            primary: self.keyring.primary(),
            keys: self.keyring.keys(),
            node: NodeOut {
                audit_key: &self.node.audit_key,
                audit_seq: self.node.audit_head.seq,
                audit_mac: self.node.audit_head.mac_hex(),
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
            },
        };
        let json = store.to_json();
        assert_eq!(Keystore::from_json(&json).unwrap(), store);
        assert_eq!(Keyring::from_json(&json).unwrap(), store.keyring);
    }
}
