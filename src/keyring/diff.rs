//! The key-by-key difference between two keyrings, which an import shows
//! and judges: adding keys or changing a key's status is safe; removing the
//! material of an id, or giving an id different material, makes data under
//! that key unreadable, so an import refuses it unless the operator insists.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::{Key, Keyring};

/// What happens to one key id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyChange {
    /// A new id with material.
    Added,
    /// Same id, same material (status or dates may differ).
    Kept,
    /// The id held material that the new keyring does not have (the id is
    /// missing, or destroyed there).
    Removed,
    /// The id holds different material.
    Replaced,
    /// Neither side holds material for the id (destroyed on both, or
    /// destroyed here and absent there).
    Empty,
}

impl fmt::Display for KeyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyChange::Added => "added",
            KeyChange::Kept => "kept",
            KeyChange::Removed => "REMOVED",
            KeyChange::Replaced => "REPLACED (different material, same id)",
            KeyChange::Empty => "no material on either side",
        })
    }
}

/// Every id of either keyring and what happens to it, ascending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyDiff {
    pub keys: BTreeMap<u32, KeyChange>,
    pub primary_before: u32,
    pub primary_after: u32,
}

impl KeyDiff {
    pub(crate) fn between(old: &Keyring, new: &Keyring) -> Self {
        let by_id = |k: &Keyring| -> BTreeMap<u32, Key> {
            k.keys().iter().map(|key| (key.id, key.clone())).collect()
        };
        let (old_keys, new_keys) = (by_id(old), by_id(new));
        let mut keys = BTreeMap::new();
        for id in old_keys.keys().chain(new_keys.keys()) {
            let before = old_keys.get(id).and_then(|k| k.material.as_ref());
            let after = new_keys.get(id).and_then(|k| k.material.as_ref());
            let change = match (before, after) {
                (None, None) => KeyChange::Empty,
                (None, Some(_)) => KeyChange::Added,
                (Some(_), None) => KeyChange::Removed,
                (Some(b), Some(a)) if b == a => KeyChange::Kept,
                (Some(_), Some(_)) => KeyChange::Replaced,
            };
            keys.insert(*id, change);
        }
        Self {
            keys,
            primary_before: old.primary(),
            primary_after: new.primary(),
        }
    }

    /// Ids whose material would be lost (removed or replaced).
    pub(crate) fn lost(&self) -> Vec<u32> {
        self.keys
            .iter()
            .filter(|(_, c)| matches!(c, KeyChange::Removed | KeyChange::Replaced))
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(json: &str) -> Keyring {
        Keyring::from_json(json.as_bytes()).unwrap()
    }

    fn key(id: u32, status: &str, material: Option<u8>) -> String {
        let material = material.map_or(String::new(), |b| {
            use base64::Engine;
            format!(
                r#","material":"{}""#,
                base64::engine::general_purpose::STANDARD.encode([b; 32])
            )
        });
        format!(
            r#"{{"id":{id},"status":"{status}","created":"2026-11-25T00:00:00Z","algorithm":"aes-256-gcm"{material}}}"#
        )
    }

    fn doc(primary: u32, keys: &[String]) -> Keyring {
        ring(&format!(
            r#"{{"format":"keyferry-keyring","version":1,"primary":{primary},"keys":[{}]}}"#,
            keys.join(",")
        ))
    }

    #[test]
    fn classifies_every_id() {
        let old = doc(
            2,
            &[
                key(1, "enabled", Some(1)),
                key(2, "enabled", Some(2)),
                key(3, "destroyed", None),
                key(4, "enabled", Some(4)),
            ],
        );
        let new = doc(
            5,
            &[
                key(1, "disabled", Some(1)),
                key(2, "enabled", Some(9)),
                key(3, "destroyed", None),
                key(5, "enabled", Some(5)),
            ],
        );
        let d = KeyDiff::between(&old, &new);
        assert_eq!(d.keys[&1], KeyChange::Kept);
        assert_eq!(d.keys[&2], KeyChange::Replaced);
        assert_eq!(d.keys[&3], KeyChange::Empty);
        assert_eq!(d.keys[&4], KeyChange::Removed);
        assert_eq!(d.keys[&5], KeyChange::Added);
        assert_eq!(d.lost(), [2, 4]);
        assert_eq!((d.primary_before, d.primary_after), (2, 5));
        assert!(KeyDiff::between(&old, &old).lost().is_empty());
    }
}
