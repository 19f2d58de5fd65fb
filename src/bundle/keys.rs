//! The two public-key pairs of format 2: a node's X25519 **host key**,
//! which distributions are sealed to, and the pair's Ed25519 **signing
//! key**, which signs them; with the short codes an operator reads off a
//! screen to approve a host key or check a pinned signing key.
//!
//! Invariants:
//! - secret halves live in zeroizing buffers (the dalek types wipe
//!   themselves on drop), never appear in `Debug` and are serialized only
//!   through [`HostSecret::to_base64`] / [`SigningSecret::to_base64`],
//!   into zeroizing strings;
//! - a code is the first 100 bits of a labelled SHA-256 of the public key
//!   in the password alphabet (5 groups of 4): a second key with the same
//!   code costs about 2^100 work, far beyond a database attacker;
//! - parsing a code accepts what an operator retypes (any case, spaces or
//!   dashes, with or without the prefix) and nothing else.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::secret::ALPHABET;

pub const PUBLIC_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;
/// Characters of a code, 5 bits each.
const CODE_CHARS: usize = 20;
const HOST_LABEL: &[u8] = b"keyferry host key v1";
const SIGNING_LABEL: &[u8] = b"keyferry signing key v1";
pub const HOST_CODE_PREFIX: &str = "kfh1:";
pub const SIGNING_CODE_PREFIX: &str = "kfs1:";

fn random32() -> Result<Zeroizing<[u8; 32]>, String> {
    let mut b = Zeroizing::new([0u8; 32]);
    getrandom::fill(b.as_mut()).map_err(|e| format!("OS random generator failed: {e}"))?;
    Ok(b)
}

fn decode32(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let mut buf = Zeroizing::new([0u8; 35]);
    match STANDARD.decode_slice(text.trim(), buf.as_mut()) {
        Ok(32) => {
            let mut out = Zeroizing::new([0u8; 32]);
            out.copy_from_slice(&buf[..32]);
            Some(out)
        }
        _ => None,
    }
}

fn encode32_secret(bytes: &[u8; 32]) -> Zeroizing<String> {
    let mut buf = Zeroizing::new([0u8; 44]);
    let n = STANDARD
        .encode_slice(bytes, buf.as_mut())
        .expect("32 bytes encode to 44 characters");
    Zeroizing::new(std::str::from_utf8(&buf[..n]).expect("base64").to_owned())
}

/// A short code for a public key: `prefix` + 20 characters of the password
/// alphabet in groups of four.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code {
    prefix: &'static str,
    chars: [u8; CODE_CHARS],
}

impl Code {
    fn of(prefix: &'static str, label: &[u8], public: &[u8; PUBLIC_LEN]) -> Self {
        let mut h = Sha256::new();
        h.update(label);
        h.update([0u8]);
        h.update(public);
        let digest = h.finalize();
        let mut chars = [0u8; CODE_CHARS];
        // Bits taken most significant first, 5 at a time.
        for (i, c) in chars.iter_mut().enumerate() {
            let bit = i * 5;
            let word = u16::from_be_bytes([digest[bit / 8], digest[bit / 8 + 1]]);
            let value = (word >> (11 - bit % 8)) & 0x1f;
            *c = ALPHABET[usize::from(value)];
        }
        Self { prefix, chars }
    }

    /// Whether `typed` is this code as an operator may retype it.
    pub fn matches(&self, typed: &str) -> bool {
        let t = typed.trim();
        let t = t
            .strip_prefix(self.prefix)
            .or_else(|| t.strip_prefix(&self.prefix.to_ascii_uppercase()))
            .unwrap_or(t);
        let cleaned: Vec<u8> = t
            .bytes()
            .filter(|b| *b != b'-' && *b != b' ')
            .map(|b| b.to_ascii_lowercase())
            .collect();
        cleaned == self.chars
    }

    /// Whether `typed` has the shape of a code (to tell a typing slip
    /// from a different key).
    pub fn well_formed(typed: &str) -> bool {
        let t = typed.trim();
        let t = t.split_once(':').map_or(t, |(_, rest)| rest);
        let cleaned: Vec<u8> = t.bytes().filter(|b| *b != b'-' && *b != b' ').collect();
        cleaned.len() == CODE_CHARS
            && cleaned
                .iter()
                .all(|b| ALPHABET.contains(&b.to_ascii_lowercase()))
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix)?;
        for (i, group) in self.chars.chunks(4).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(group).expect("alphabet is ASCII"))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The public half of a host key: safe to print and to store.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostPublic(pub [u8; PUBLIC_LEN]);

impl HostPublic {
    pub fn code(&self) -> Code {
        Code::of(HOST_CODE_PREFIX, HOST_LABEL, &self.0)
    }
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
    pub fn from_base64(text: &str) -> Option<Self> {
        decode32(text).map(|b| Self(*b))
    }
}

impl fmt::Debug for HostPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostPublic({})", self.code())
    }
}

/// A node's X25519 host key. Kept in the node's keystore only.
#[derive(Clone)]
pub struct HostSecret(x25519_dalek::StaticSecret);

impl HostSecret {
    pub fn generate() -> Result<Self, String> {
        Ok(Self::from_bytes(&*random32()?))
    }
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(x25519_dalek::StaticSecret::from(*bytes))
    }
    pub fn public(&self) -> HostPublic {
        HostPublic(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }
    pub(crate) fn diffie_hellman(&self, other: &[u8; PUBLIC_LEN]) -> x25519_dalek::SharedSecret {
        self.0
            .diffie_hellman(&x25519_dalek::PublicKey::from(*other))
    }
    pub fn to_base64(&self) -> Zeroizing<String> {
        encode32_secret(self.0.as_bytes())
    }
    pub fn from_base64(text: &str) -> Option<Self> {
        decode32(text).map(|b| Self::from_bytes(&b))
    }
}

impl PartialEq for HostSecret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}
impl Eq for HostSecret {}

impl fmt::Debug for HostSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostSecret(<redacted>, public {})", self.public().code())
    }
}

/// The public half of the pair's signing key, which hosts pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SigningPublic(pub [u8; PUBLIC_LEN]);

impl SigningPublic {
    pub fn code(&self) -> Code {
        Code::of(SIGNING_CODE_PREFIX, SIGNING_LABEL, &self.0)
    }
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
    /// Only a valid Ed25519 point is a key.
    pub fn from_base64(text: &str) -> Option<Self> {
        decode32(text)
            .filter(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_ok())
            .map(|b| Self(*b))
    }
    /// Strict Ed25519 verification (no small-order keys, canonical `S`).
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
            .is_ok()
    }
}

impl fmt::Debug for SigningPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningPublic({})", self.code())
    }
}

/// The pair's Ed25519 signing key.
#[derive(Clone)]
pub struct SigningSecret(ed25519_dalek::SigningKey);

impl SigningSecret {
    pub fn generate() -> Result<Self, String> {
        Ok(Self::from_bytes(&*random32()?))
    }
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(bytes))
    }
    pub fn public(&self) -> SigningPublic {
        SigningPublic(self.0.verifying_key().to_bytes())
    }
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        use ed25519_dalek::Signer;
        self.0.sign(message).to_bytes()
    }
    pub fn to_base64(&self) -> Zeroizing<String> {
        encode32_secret(self.0.as_bytes())
    }
    pub fn from_base64(text: &str) -> Option<Self> {
        decode32(text).map(|b| Self::from_bytes(&b))
    }
}

impl PartialEq for SigningSecret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}
impl Eq for SigningSecret {}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningSecret(<redacted>, public {})",
            self.public().code()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_readable_and_retypable() {
        let host = HostSecret::from_bytes(&[7; 32]).public();
        let code = host.code();
        let shown = code.to_string();
        assert!(shown.starts_with("kfh1:"), "{shown}");
        assert_eq!(shown.len(), 5 + 20 + 4);
        assert!(code.matches(&shown));
        assert!(code.matches(&shown[5..].to_uppercase().replace('-', " ")));
        assert!(!code.matches(&shown[..shown.len() - 1]));
        assert!(Code::well_formed(&shown));
        assert!(!Code::well_formed("kfh1:abc"));
        // A different key, a different code; the signing label differs too.
        assert_ne!(HostSecret::from_bytes(&[8; 32]).public().code(), code);
        assert_ne!(SigningPublic(host.0).code().to_string()[5..], shown[5..]);
    }

    #[test]
    fn secrets_round_trip_through_base64_and_never_print() {
        let h = HostSecret::generate().unwrap();
        assert_eq!(HostSecret::from_base64(&h.to_base64()).unwrap(), h);
        assert!(!format!("{h:?}").contains(h.to_base64().as_str()));
        let s = SigningSecret::generate().unwrap();
        assert_eq!(SigningSecret::from_base64(&s.to_base64()).unwrap(), s);
        let p = s.public();
        assert_eq!(SigningPublic::from_base64(&p.to_base64()), Some(p));
        let sig = s.sign(b"m");
        assert!(p.verify(b"m", &sig));
        assert!(!p.verify(b"n", &sig));
    }
}
