//! The envelope: how a value stored for years (a password in the
//! application's database, say) is sealed under a keyring's primary key and
//! opened again under whichever key sealed it.
//!
//! This module owns the envelope's binary and text forms, specified byte for
//! byte in `docs/envelope.md` with test vectors in `tests/vectors/envelope/`:
//!
//! - binary: `0x01` (format) || key id (u32 big-endian) || 12-byte random
//!   nonce || AES-256-GCM ciphertext || 16-byte tag, where GCM's associated
//!   data is the 5-byte prefix (format and key id) followed by the caller's
//!   `aad`, so neither the format nor the key id can be changed unnoticed;
//! - text (for `text` columns): `kfe1:<key id in decimal>:<standard padded
//!   base64 of the binary form>`, so `split_part(v, ':', 2)` in SQL gives the
//!   key id of every stored value without decrypting it.
//!
//! Invariants: [`encrypt`] seals only under the primary key, with a fresh
//! random nonce; [`decrypt`] opens only under an enabled key and returns
//! plaintext only after the tag has been checked; the key id in a text
//! envelope must equal the one inside its binary form. Errors name the key
//! id and what to do, never the plaintext or the key.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use super::{KeyStatus, Keyring};
use crate::aead::{Cipher, NONCE_LEN, TAG_LEN};

/// The first byte of every envelope of this format.
pub const FORMAT_V1: u8 = 0x01;
/// Format byte and key id: the prefix that is also authenticated.
pub const PREFIX_LEN: usize = 1 + 4;
/// What an envelope adds to its plaintext.
pub const OVERHEAD: usize = PREFIX_LEN + NONCE_LEN + TAG_LEN;
/// The text form's tag, before the first `:`.
pub const TEXT_TAG: &str = "kfe1";

/// Why a value could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Shorter than any envelope, or empty.
    #[error("the value is {len} bytes, too short for a keyferry envelope ({OVERHEAD} at least): it was cut off or is not an envelope")]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// A format byte this build does not know.
    #[error("envelope format byte 0x{0:02x} is not supported by this keyferry: upgrade keyferry")]
    Format(u8),
    /// The keyring has no key with that id.
    #[error("the value is sealed under key {0}, which this keyring does not have: import the keyring that holds it")]
    UnknownKey(u32),
    /// The key is disabled.
    #[error("the value is sealed under key {0}, which is disabled: enable key {0} again, then rewrap the value under the primary")]
    KeyDisabled(u32),
    /// The key was destroyed.
    #[error("the value is sealed under key {0}, which was destroyed: it cannot be opened; restore a keyring backup from before the destroy or enter the value again")]
    KeyDestroyed(u32),
    /// The tag did not match.
    #[error("the value sealed under key {0} failed authentication: it was modified, or opened with other associated data than it was sealed with")]
    Modified(u32),
    /// Not `kfe1:<id>:<base64>`, or the two key ids differ.
    #[error("the text value is not a keyferry text envelope (kfe1:<key id>:<base64>): {0}")]
    Text(&'static str),
    /// The operating system's random generator failed.
    #[error("the operating system's random generator failed: {0}; retry, and check the system's entropy source")]
    Random(String),
}

/// Seals `plaintext` under the keyring's primary key with a fresh random
/// nonce. `aad` (a table and row id, say) must be given again to open it.
pub fn encrypt(keyring: &Keyring, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| EnvelopeError::Random(e.to_string()))?;
    Ok(seal_with_nonce(keyring, &nonce, plaintext, aad))
}

/// [`encrypt`] with a given nonce. A nonce must never repeat under one key:
/// only [`encrypt`] and the test vectors call this.
fn seal_with_nonce(
    keyring: &Keyring,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Vec<u8> {
    let id = keyring.primary();
    let material = keyring
        .key(id)
        .and_then(|k| k.material.as_ref())
        .expect("the primary key exists with material by the keyring's invariants");
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(plaintext);
    let gcm_aad = gcm_aad(&out[..PREFIX_LEN], aad);
    let tag = Cipher::new(material.as_bytes()).seal_in_place(
        nonce,
        &gcm_aad,
        &mut out[PREFIX_LEN + NONCE_LEN..],
    );
    out.extend_from_slice(&tag);
    out
}

/// The key id an envelope was sealed under, read without decrypting.
pub fn key_id(envelope: &[u8]) -> Result<u32, EnvelopeError> {
    if envelope.len() < OVERHEAD {
        return Err(EnvelopeError::Truncated {
            len: envelope.len(),
        });
    }
    if envelope[0] != FORMAT_V1 {
        return Err(EnvelopeError::Format(envelope[0]));
    }
    Ok(u32::from_be_bytes(
        envelope[1..PREFIX_LEN].try_into().expect("4 bytes"),
    ))
}

/// Opens an envelope with the key it names, which must be enabled in
/// `keyring`; `aad` must be what it was sealed with.
pub fn decrypt(
    keyring: &Keyring,
    envelope: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let id = key_id(envelope)?;
    let key = keyring.key(id).ok_or(EnvelopeError::UnknownKey(id))?;
    let material = match (key.status, &key.material) {
        (KeyStatus::Enabled, Some(m)) => m,
        (KeyStatus::Disabled, _) => return Err(EnvelopeError::KeyDisabled(id)),
        _ => return Err(EnvelopeError::KeyDestroyed(id)),
    };
    let (prefix, rest) = envelope.split_at(PREFIX_LEN);
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce: &[u8; NONCE_LEN] = nonce.try_into().expect("12 bytes");
    let tag: &[u8; TAG_LEN] = tag.try_into().expect("16 bytes");
    let mut plain = Zeroizing::new(body.to_vec());
    Cipher::new(material.as_bytes())
        .open_in_place(nonce, &gcm_aad(prefix, aad), &mut plain, tag)
        .map_err(|_| EnvelopeError::Modified(id))?;
    Ok(plain)
}

/// GCM's associated data: the envelope's prefix, then the caller's.
fn gcm_aad(prefix: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut all = Vec::with_capacity(prefix.len() + aad.len());
    all.extend_from_slice(prefix);
    all.extend_from_slice(aad);
    all
}

/// [`encrypt`] in the text form `kfe1:<key id>:<base64>`.
pub fn encrypt_text(
    keyring: &Keyring,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<String, EnvelopeError> {
    Ok(to_text(&encrypt(keyring, plaintext, aad)?))
}

/// The text form of a binary envelope.
fn to_text(envelope: &[u8]) -> String {
    let id = key_id(envelope).expect("an envelope made by this module");
    format!("{TEXT_TAG}:{id}:{}", STANDARD.encode(envelope))
}

/// The binary form inside a text envelope, after checking that its visible
/// key id is the one inside.
pub fn from_text(text: &str) -> Result<Vec<u8>, EnvelopeError> {
    let mut parts = text.trim().splitn(3, ':');
    let (Some(TEXT_TAG), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(EnvelopeError::Text("it does not start with kfe1:<key id>:"));
    };
    let id: u32 = id
        .parse()
        .map_err(|_| EnvelopeError::Text("the key id is not a decimal number"))?;
    let binary = STANDARD
        .decode(b64)
        .map_err(|_| EnvelopeError::Text("the part after the key id is not base64"))?;
    if key_id(&binary)? != id {
        return Err(EnvelopeError::Text(
            "the key id in the text differs from the one sealed inside",
        ));
    }
    Ok(binary)
}

/// [`decrypt`] of the text form.
pub fn decrypt_text(
    keyring: &Keyring,
    text: &str,
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    decrypt(keyring, &from_text(text)?, aad)
}

impl Keyring {
    /// Seals `plaintext` under the primary key: see [`encrypt`].
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        encrypt(self, plaintext, aad)
    }

    /// Opens a binary envelope under the key it names: see [`decrypt`].
    pub fn decrypt(
        &self,
        envelope: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        decrypt(self, envelope, aad)
    }

    /// [`Keyring::encrypt`] in the text form `kfe1:<key id>:<base64>`.
    pub fn encrypt_text(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, EnvelopeError> {
        encrypt_text(self, plaintext, aad)
    }

    /// [`Keyring::decrypt`] of the text form.
    pub fn decrypt_text(
        &self,
        text: &str,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        decrypt_text(self, text, aad)
    }
}

/// The key id of a text envelope, read without decrypting (and without
/// decoding the base64: the census reads it the same way in SQL).
pub fn text_key_id(text: &str) -> Result<u32, EnvelopeError> {
    let mut parts = text.trim().splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(TEXT_TAG), Some(id), Some(_)) => id
            .parse()
            .map_err(|_| EnvelopeError::Text("the key id is not a decimal number")),
        _ => Err(EnvelopeError::Text("it does not start with kfe1:<key id>:")),
    }
}

/// The text form of a binary envelope (after checking it is one).
pub fn binary_to_text(envelope: &[u8]) -> Result<String, EnvelopeError> {
    key_id(envelope)?;
    Ok(to_text(envelope))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::KeyMaterial;

    const CREATED: &str = "2026-12-01T00:00:00Z";

    /// Keys 1 (material 0x11…) and 2 (0x22…), 2 the primary.
    fn two_keys() -> Keyring {
        let mut k = Keyring::generate(CREATED).unwrap();
        k.keys[0].material = Some(KeyMaterial::from_bytes([0x11; 32]));
        let id = k
            .add_material(KeyMaterial::from_bytes([0x22; 32]), CREATED)
            .unwrap();
        k.promote(id).unwrap();
        k
    }

    #[test]
    fn seals_under_the_primary_and_opens_under_the_named_key() {
        let mut k = two_keys();
        let sealed = encrypt(&k, b"db password", b"users:7").unwrap();
        assert_eq!(sealed[0], FORMAT_V1);
        assert_eq!(key_id(&sealed), Ok(2));
        assert_eq!(sealed.len(), OVERHEAD + 11);
        assert_eq!(&*decrypt(&k, &sealed, b"users:7").unwrap(), b"db password");
        // Two seals of one value differ (random nonce).
        assert_ne!(encrypt(&k, b"db password", b"users:7").unwrap(), sealed);
        // After a new key is promoted, the old value still opens.
        let three = k.add(CREATED).unwrap();
        k.promote(three).unwrap();
        assert_eq!(&*decrypt(&k, &sealed, b"users:7").unwrap(), b"db password");
        assert_eq!(key_id(&encrypt(&k, b"x", b"").unwrap()), Ok(3));
    }

    #[test]
    fn refuses_disabled_destroyed_and_unknown_keys_by_id() {
        let mut k = two_keys();
        let under_2 = encrypt(&k, b"v", b"").unwrap();
        k.promote(1).unwrap();
        k.disable(2).unwrap();
        let err = decrypt(&k, &under_2, b"").unwrap_err();
        assert_eq!(err, EnvelopeError::KeyDisabled(2));
        assert!(err.to_string().contains("key 2") && err.to_string().contains("enable"));
        k.destroy(2).unwrap();
        let err = decrypt(&k, &under_2, b"").unwrap_err();
        assert_eq!(err, EnvelopeError::KeyDestroyed(2));
        assert!(err.to_string().contains("key 2"));
        let mut unknown = under_2.clone();
        unknown[1..5].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            decrypt(&k, &unknown, b""),
            Err(EnvelopeError::UnknownKey(9))
        );
    }

    #[test]
    fn every_byte_and_the_aad_are_authenticated() {
        let mut k = two_keys();
        let sealed = encrypt(&k, b"secret", b"row 1").unwrap();
        assert_eq!(
            decrypt(&k, &sealed, b"row 2"),
            Err(EnvelopeError::Modified(2))
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let err = decrypt(&k, &bad, b"row 1").unwrap_err();
            match i {
                0 => assert_eq!(err, EnvelopeError::Format(0x00)),
                // Key id 2 -> 3 (no such key): unknown; the other id bytes
                // name huge unknown ids too.
                1..=4 => assert!(matches!(err, EnvelopeError::UnknownKey(_)), "{i}: {err}"),
                _ => assert_eq!(err, EnvelopeError::Modified(2), "byte {i}"),
            }
        }
        // A key id changed to another key that exists fails the tag: the id
        // is part of GCM's associated data.
        let _ = k.add(CREATED).unwrap();
        let mut moved = sealed.clone();
        moved[1..5].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(
            decrypt(&k, &moved, b"row 1"),
            Err(EnvelopeError::Modified(1))
        );
        for len in [0, 1, OVERHEAD - 1] {
            assert_eq!(
                decrypt(&k, &sealed[..len], b"row 1"),
                Err(EnvelopeError::Truncated { len })
            );
        }
        assert_eq!(
            decrypt(&k, &sealed[..OVERHEAD], b"row 1"),
            Err(EnvelopeError::Modified(2))
        );
    }

    #[test]
    fn the_text_form_shows_the_key_id_and_checks_it() {
        let k = two_keys();
        let text = encrypt_text(&k, b"pw", b"a").unwrap();
        assert!(text.starts_with("kfe1:2:"), "{text}");
        assert_eq!(text.split(':').nth(1), Some("2"));
        assert_eq!(&*decrypt_text(&k, &text, b"a").unwrap(), b"pw");
        let lying = text.replacen("kfe1:2:", "kfe1:1:", 1);
        assert!(matches!(
            decrypt_text(&k, &lying, b"a"),
            Err(EnvelopeError::Text(_))
        ));
        for bad in [
            "",
            "kfe1",
            "kfe1:2",
            "kf1:2:AAAA",
            "kfe1:x:AAAA",
            "kfe1:2:!!",
        ] {
            assert!(
                matches!(from_text(bad), Err(EnvelopeError::Text(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            from_text("kfe1:2:AAAA"),
            Err(EnvelopeError::Truncated { len: 3 })
        ));
    }

    /// One vector of `tests/vectors/envelope/vectors.json` (byte strings
    /// in standard base64).
    #[derive(serde::Deserialize)]
    struct Vector {
        name: String,
        key_id: u32,
        key: String,
        nonce: String,
        plaintext: String,
        aad: String,
        envelope: String,
        text: String,
    }

    fn bytes(b64: &str) -> Vec<u8> {
        STANDARD.decode(b64).unwrap()
    }

    /// A keyring of one key, `id`, with `key`.
    fn keyring_with(id: u32, key: &[u8]) -> Keyring {
        let key = crate::keyring::Key {
            id,
            status: KeyStatus::Enabled,
            created: CREATED.to_owned(),
            algorithm: crate::keyring::ALGORITHM.to_owned(),
            material: Some(KeyMaterial::from_bytes(key.try_into().unwrap())),
        };
        Keyring::new(id, vec![key]).unwrap()
    }

    #[test]
    fn the_published_vectors_seal_and_open_exactly() {
        let text = include_str!("../../tests/vectors/envelope/vectors.json");
        let vectors: Vec<Vector> = serde_json::from_str(text).unwrap();
        assert!(vectors.len() >= 3);
        for v in vectors {
            let k = keyring_with(v.key_id, &bytes(&v.key));
            let nonce: [u8; NONCE_LEN] = bytes(&v.nonce).try_into().unwrap();
            let plaintext = bytes(&v.plaintext);
            let aad = bytes(&v.aad);
            let sealed = seal_with_nonce(&k, &nonce, &plaintext, &aad);
            assert_eq!(sealed, bytes(&v.envelope), "{}", v.name);
            assert_eq!(to_text(&sealed), v.text, "{}", v.name);
            assert_eq!(
                &*decrypt(&k, &sealed, &aad).unwrap(),
                &plaintext[..],
                "{}",
                v.name
            );
            assert_eq!(
                &*decrypt_text(&k, &v.text, &aad).unwrap(),
                &plaintext[..],
                "{}",
                v.name
            );
        }
    }
}
