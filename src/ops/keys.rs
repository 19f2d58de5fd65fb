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
