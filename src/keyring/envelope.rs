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

/// The two parts of a text envelope, read exactly as `docs/envelope.md`
/// writes them and nothing more leniently: `kfe1:`, the key id in decimal
/// (ASCII digits, no sign, no leading zero, at most `u32::MAX`), `:`, then
/// the rest, with nothing before, around or after. This is the one reader
/// of the text form; `decrypt`, `rewrap` and the census (whose SQL mirror is
/// [`text_key_id_sql`]) all go through it, so a value one of them refuses
/// is refused by all: a lenient reader here would open values the census
/// does not count under their key, and a key could be disabled under them.
fn parse_text(text: &str) -> Result<(u32, &str), EnvelopeError> {
    let not_text = || EnvelopeError::Text("it does not start with kfe1:<key id>:");
    let rest = text
        .strip_prefix(TEXT_TAG)
        .and_then(|r| r.strip_prefix(':'))
        .ok_or_else(not_text)?;
    let (id, b64) = rest.split_once(':').ok_or_else(not_text)?;
    let canonical = !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && (id == "0" || !id.starts_with('0'));
    if !canonical {
        return Err(EnvelopeError::Text(
            "the key id is not a decimal number (digits only, no sign, no leading zero)",
        ));
    }
    let id = id
        .parse()
        .map_err(|_| EnvelopeError::Text("the key id is larger than any key id"))?;
    Ok((id, b64))
}

/// The binary form inside a text envelope, after checking that its visible
/// key id is the one inside.
pub fn from_text(text: &str) -> Result<Vec<u8>, EnvelopeError> {
    let (id, b64) = parse_text(text)?;
    // STANDARD decodes canonical padded base64 only: no whitespace, no
    // missing or extra padding, no stray bits.
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
/// decoding the base64), by the same reader as [`from_text`].
pub fn text_key_id(text: &str) -> Result<u32, EnvelopeError> {
    parse_text(text).map(|(id, _)| id)
}

/// SQL giving the key id of the text envelope in `column` (an already
/// quoted identifier) as `bigint`, or NULL when [`from_text`] would refuse
/// it: the census counts values per key in the database, without moving
/// them here, and must agree with the reader exactly. It checks what
/// [`from_text`] checks: the tag, a canonical decimal key id, canonical
/// padded base64 (decoded and encoded again to the same text, which also
/// refuses stray bits), the format byte, the length and the key id inside.
/// An id above `u32::MAX` comes back as such and the caller refuses it.
/// `tests/rewrap_pg.rs` holds the two to the same hostile values.
pub fn text_key_id_sql(column: &str) -> String {
    let form = format!(
        "{column} ~ '^{TEXT_TAG}:(0|[1-9][0-9]{{0,9}}):([A-Za-z0-9+/]{{4}})*([A-Za-z0-9+/]{{2}}==|[A-Za-z0-9+/]{{3}}=)?$'"
    );
    let b64 = format!("split_part({column}, ':', 3)");
    let bin = format!("decode({b64}, 'base64')");
    let kid = format!("split_part({column}, ':', 2)::bigint");
    // CASE evaluates its branches in order, so nothing is decoded or cast
    // before the pattern has matched.
    format!(
        "(CASE WHEN NOT ({form}) THEN NULL \
         WHEN translate(encode({bin}, 'base64'), E'\\n', '') <> {b64} THEN NULL \
         WHEN length({bin}) < {OVERHEAD} OR get_byte({bin}, 0) <> {FORMAT_V1} THEN NULL \
         WHEN ('x' || encode(substring({bin} from 2 for 4), 'hex'))::bit(32)::bigint <> {kid} THEN NULL \
         ELSE {kid} END)"
    )
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

    /// Issue 23, finding 3: `decrypt` read a value with leading whitespace
    /// or a key id written `+1` that the census did not count under its
    /// key. The text form is read exactly as documented, or not at all.
    #[test]
    fn the_text_form_is_read_exactly_as_documented_and_no_more_leniently() {
        let k = two_keys();
        let text = encrypt_text(&k, b"pw", b"a").unwrap();
        let b64 = text.strip_prefix("kfe1:2:").unwrap();
        assert_eq!(text_key_id(&text), Ok(2));
        for bad in [
            format!(" {text}"),
            format!("\t{text}"),
            format!("\n{text}"),
            format!("{text}\n"),
            format!("{text} "),
            format!("kfe1:+2:{b64}"),
            format!("kfe1:02:{b64}"),
            format!("kfe1: 2:{b64}"),
            format!("kfe1:2 :{b64}"),
            format!("KFE1:2:{b64}"),
            format!("kfe1:2:{}", b64.trim_end_matches('=')),
            format!("kfe1:2: {b64}"),
            format!("kfe1:4294967298:{b64}"),
        ] {
            assert!(
                matches!(decrypt_text(&k, &bad, b"a"), Err(EnvelopeError::Text(_))),
                "{bad:?} must not open"
            );
        }
        // The key id alone (what the census reads) refuses what the
        // reader refuses in it.
        for bad in [
            "kfe1:+2:x",
            "kfe1:02:x",
            " kfe1:2:x",
            "kfe1:-0:x",
            "kfe1::x",
        ] {
            assert!(text_key_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(text_key_id("kfe1:0:x"), Ok(0));
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
