//! The sealed bundle, format version 2: a **distribution**, sealed to one
//! or more X25519 host keys (one stanza per recipient wrapping the file
//! key) and signed by the pair's Ed25519 signing key. The payload STREAM
//! and the key commitment are those of format 1. `docs/format.md`
//! ("Format 2") specifies it byte for byte.
//!
//! Invariants:
//! - nothing is decrypted before the whole distribution's signature has
//!   verified under the key the reader pins; the signature is the last 64
//!   bytes and covers every byte before it, so a cut, an appended byte, a
//!   changed recipient or a payload re-sealed by another recipient (who
//!   knows the file key) all fail it;
//! - opening checks happen in the documented order (magic; version;
//!   recipient type and count; length; signer; signature; this host's
//!   stanza; unwrap; key commitment; expiry; payload), each with its own
//!   error;
//! - a distribution is read whole from memory, bounded by
//!   [`MAX_DISTRIBUTION_LEN`]: the signature must be checked before use;
//! - every stanza's wrapping key is unique (a fresh ephemeral X25519 key per
//!   stanza), so the fixed zero nonce is safe, as in format 1; a
//!   non-contributory (all-zero) shared secret is refused on both sides;
//! - secret keys (file key, wrapping keys, payload key, ephemeral secrets)
//!   live in zeroizing buffers.
//!
//! This module never touches the file system.

use std::io::Read;

use hkdf::Hkdf;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::keys::{
    HostPublic, HostSecret, SigningPublic, SigningSecret, PUBLIC_LEN, SIGNATURE_LEN,
};
use super::stream::{StreamOpener, StreamSealer};
use super::BundleError;
use crate::aead::Cipher;

pub const FORMAT_VERSION: u8 = 0x02;
/// Recipient type 1: X25519, HKDF-SHA256, AES-256-GCM.
pub const RECIPIENT_X25519: u8 = 0x01;
/// Bytes before the first stanza.
pub const FIXED_LEN: usize = 84;
/// recipient public key, ephemeral public key, wrapped file key.
pub const STANZA_LEN: usize = 32 + 32 + 48;
pub const COMMITMENT_LEN: usize = 32;
pub const MAX_RECIPIENTS: u16 = 1024;
/// Whole distributions larger than this are refused before anything else
/// is read: the payload cap (64 MiB) and room for its tags and stanzas.
pub const MAX_DISTRIBUTION_LEN: usize = 65 * 1024 * 1024;
const COMMIT_LABEL: &[u8] = b"keyferry bundle v2 commit";
const SIGNATURE_LABEL: &[u8] = b"keyferry bundle v2 signature";
const WRAP_INFO: &[u8] = b"keyferry bundle v2 x25519";
const PAYLOAD_INFO: &[u8] = b"keyferry bundle v2 payload";
const WRAP_NONCE: [u8; 12] = [0; 12];
/// The smallest STREAM: one empty final chunk (its tag).
const MIN_PAYLOAD: usize = super::stream::TAG_SIZE;

// Field offsets of the fixed part, in the order of the format table.
const OFF_VERSION: usize = 8;
const OFF_TYPE: usize = 9;
const OFF_COUNT: usize = 10;
const OFF_CREATED: usize = 12;
const OFF_EXPIRES: usize = 20;
const OFF_SERIAL: usize = 28;
const OFF_SIGNER: usize = 36;
const OFF_PAYLOAD_SALT: usize = 68;

/// One recipient's stanza.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stanza {
    pub recipient: HostPublic,
    pub ephemeral: [u8; PUBLIC_LEN],
    pub wrapped_key: [u8; 48],
}

/// A parsed format 2 header; nothing in it is trusted before the
/// signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistHeader {
    pub created: u64,
    pub expires: Option<u64>,
    /// Rises with every distribution of the pair: a host refuses one whose
    /// serial is not above the last it took.
    pub serial: u64,
    pub signer: SigningPublic,
    pub payload_salt: [u8; 16],
    pub stanzas: Vec<Stanza>,
    pub commitment: [u8; COMMITMENT_LEN],
}

impl DistHeader {
    /// Length of the header: fixed part, stanzas, commitment.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + STANZA_LEN * self.stanzas.len() + COMMITMENT_LEN
    }

    /// The header's bytes; the commitment last.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.encoded_len());
        b.extend_from_slice(super::header::MAGIC);
        b.push(FORMAT_VERSION);
        b.push(RECIPIENT_X25519);
        b.extend_from_slice(&(self.stanzas.len() as u16).to_be_bytes());
        b.extend_from_slice(&self.created.to_be_bytes());
        b.extend_from_slice(&self.expires.unwrap_or(0).to_be_bytes());
        b.extend_from_slice(&self.serial.to_be_bytes());
        b.extend_from_slice(&self.signer.0);
        b.extend_from_slice(&self.payload_salt);
        for s in &self.stanzas {
            b.extend_from_slice(&s.recipient.0);
            b.extend_from_slice(&s.ephemeral);
            b.extend_from_slice(&s.wrapped_key);
        }
        b.extend_from_slice(&self.commitment);
        b
    }

    /// Parses the header at the start of `bytes` (which may hold more).
    /// Checks structure only: magic, version, recipient type and count,
    /// length.
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        let magic = super::header::MAGIC;
        if bytes.len() < magic.len() || &bytes[..magic.len()] != magic {
            return Err(BundleError::NotABundle);
        }
        if bytes.len() < FIXED_LEN {
            return Err(BundleError::TruncatedDistribution);
        }
        if bytes[OFF_VERSION] != FORMAT_VERSION {
            return Err(BundleError::UnsupportedVersion(bytes[OFF_VERSION]));
        }
        if bytes[OFF_TYPE] != RECIPIENT_X25519 {
            return Err(BundleError::UnsupportedRecipientType(bytes[OFF_TYPE]));
        }
        let count = u16::from_be_bytes([bytes[OFF_COUNT], bytes[OFF_COUNT + 1]]);
        if count == 0 || count > MAX_RECIPIENTS {
            return Err(BundleError::RecipientCount(count));
        }
        let len = FIXED_LEN + STANZA_LEN * usize::from(count) + COMMITMENT_LEN;
        if bytes.len() < len {
            return Err(BundleError::TruncatedDistribution);
        }
        let expires = u64_at(bytes, OFF_EXPIRES);
        let stanzas = (0..usize::from(count))
            .map(|i| {
                let at = FIXED_LEN + STANZA_LEN * i;
                Stanza {
                    recipient: HostPublic(array_at(bytes, at)),
                    ephemeral: array_at(bytes, at + 32),
                    wrapped_key: array_at(bytes, at + 64),
                }
            })
            .collect();
        Ok(Self {
            created: u64_at(bytes, OFF_CREATED),
            expires: (expires != 0).then_some(expires),
            serial: u64_at(bytes, OFF_SERIAL),
            signer: SigningPublic(array_at(bytes, OFF_SIGNER)),
            payload_salt: array_at(bytes, OFF_PAYLOAD_SALT),
            stanzas,
            commitment: array_at(bytes, len - COMMITMENT_LEN),
        })
    }

    fn compute_commitment(&self, file_key: &[u8; 32]) -> [u8; COMMITMENT_LEN] {
        let encoded = self.encode();
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(file_key)
            .expect("HMAC takes keys of any length");
        mac.update(COMMIT_LABEL);
        mac.update(&encoded[..encoded.len() - COMMITMENT_LEN]);
        mac.finalize().into_bytes().into()
    }

    /// The recipients' public keys, in stanza order.
    pub fn recipients(&self) -> Vec<HostPublic> {
        self.stanzas.iter().map(|s| s.recipient).collect()
    }
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(array_at(b, off))
}

fn array_at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    b[off..off + N]
        .try_into()
        .expect("caller checked the length")
}

/// What a new distribution's header says besides its keys.
#[derive(Clone, Copy, Debug)]
pub struct DistParams {
    pub created: u64,
    pub expires: Option<u64>,
    pub serial: u64,
}

/// The random inputs of a seal, apart so that test vectors can fix them.
pub(crate) struct SealRandom {
    pub file_key: Zeroizing<[u8; 32]>,
    pub payload_salt: [u8; 16],
    /// One ephemeral X25519 secret per recipient.
    pub ephemerals: Vec<HostSecret>,
}

impl SealRandom {
    fn fresh(recipients: usize) -> Result<Self, BundleError> {
        let mut file_key = Zeroizing::new([0u8; 32]);
        let mut payload_salt = [0u8; 16];
        getrandom::fill(file_key.as_mut())
            .and_then(|()| getrandom::fill(&mut payload_salt))
            .map_err(|e| {
                BundleError::Io(std::io::Error::other(format!(
                    "OS random generator failed: {e}"
                )))
            })?;
        let ephemerals = (0..recipients)
            .map(|_| HostSecret::generate())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BundleError::Io(std::io::Error::other(e)))?;
        Ok(Self {
            file_key,
            payload_salt,
            ephemerals,
        })
    }
}

/// The wrapping key of one stanza; `None` for a non-contributory shared
/// secret (a low-order recipient or ephemeral key).
fn wrap_key(
    shared: &x25519_dalek::SharedSecret,
    ephemeral: &[u8; PUBLIC_LEN],
    recipient: &[u8; PUBLIC_LEN],
) -> Option<Zeroizing<[u8; 32]>> {
    if !shared.was_contributory() {
        return None;
    }
    let mut salt = [0u8; 2 * PUBLIC_LEN];
    salt[..PUBLIC_LEN].copy_from_slice(ephemeral);
    salt[PUBLIC_LEN..].copy_from_slice(recipient);
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes())
        .expand(WRAP_INFO, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 length");
    Some(key)
}

fn payload_key(file_key: &[u8; 32], salt: &[u8; 16]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(salt), file_key)
        .expand(PAYLOAD_INFO, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 length");
    key
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_LABEL.len() + body.len());
    m.extend_from_slice(SIGNATURE_LABEL);
    m.extend_from_slice(body);
    m
}

/// Seals `payload` to every key in `recipients` and signs it with
/// `signer`; returns the whole distribution.
pub fn seal(
    signer: &SigningSecret,
    recipients: &[HostPublic],
    params: &DistParams,
    payload: &[u8],
) -> Result<Vec<u8>, BundleError> {
    let random = SealRandom::fresh(recipients.len())?;
    seal_with(signer, recipients, params, payload, random)
}

/// [`seal`] with its random inputs given.
pub(crate) fn seal_with(
    signer: &SigningSecret,
    recipients: &[HostPublic],
    params: &DistParams,
    payload: &[u8],
    random: SealRandom,
) -> Result<Vec<u8>, BundleError> {
    let count = u16::try_from(recipients.len())
        .ok()
        .filter(|n| (1..=MAX_RECIPIENTS).contains(n))
        .ok_or(BundleError::RecipientCount(
            recipients.len().min(usize::from(u16::MAX)) as u16,
        ))?;
    debug_assert_eq!(random.ephemerals.len(), usize::from(count));
    let mut header = DistHeader {
        created: params.created,
        expires: params.expires,
        serial: params.serial,
        signer: signer.public(),
        payload_salt: random.payload_salt,
        stanzas: Vec::with_capacity(recipients.len()),
        commitment: [0; COMMITMENT_LEN],
    };
    // The stanzas' associated data is the fixed part, which names the
    // recipient count before the stanzas exist.
    let mut aad = header.encode()[..FIXED_LEN].to_vec();
    aad[OFF_COUNT..OFF_COUNT + 2].copy_from_slice(&count.to_be_bytes());
    for (recipient, ephemeral) in recipients.iter().zip(&random.ephemerals) {
        let eph_public = ephemeral.public();
        let shared = ephemeral.diffie_hellman(&recipient.0);
        let key = wrap_key(&shared, &eph_public.0, &recipient.0)
            .ok_or(BundleError::LowOrderRecipient(recipient.code().to_string()))?;
        let mut wrapped = [0u8; 48];
        wrapped[..32].copy_from_slice(random.file_key.as_ref());
        let tag = Cipher::new(&key).seal_in_place(&WRAP_NONCE, &aad, &mut wrapped[..32]);
        wrapped[32..].copy_from_slice(&tag);
        header.stanzas.push(Stanza {
            recipient: *recipient,
            ephemeral: eph_public.0,
            wrapped_key: wrapped,
        });
    }
    header.commitment = header.compute_commitment(&random.file_key);
    let mut out = header.encode();
    let key = payload_key(&random.file_key, &header.payload_salt);
    let mut sealer = StreamSealer::new(&key, out);
    std::io::Write::write_all(&mut sealer, payload).map_err(BundleError::Io)?;
    out = sealer.finish().map_err(BundleError::Io)?;
    let signature = signer.sign(&signed_message(&out));
    out.extend_from_slice(&signature);
    Ok(out)
}

/// An opened distribution: its authenticated header and payload.
pub struct Opened {
    pub header: DistHeader,
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// Opens a distribution with this host's key, accepting only the signing
/// key `pinned`.
pub fn open(
    bytes: &[u8],
    host: &HostSecret,
    pinned: &SigningPublic,
    now: u64,
) -> Result<Opened, BundleError> {
    if bytes.len() > MAX_DISTRIBUTION_LEN {
        return Err(BundleError::DistributionTooLarge(bytes.len()));
    }
    let header = DistHeader::parse(bytes)?;
    let body_len = bytes
        .len()
        .checked_sub(SIGNATURE_LEN)
        .filter(|n| *n >= header.encoded_len() + MIN_PAYLOAD)
        .ok_or(BundleError::TruncatedDistribution)?;
    if header.signer != *pinned {
        return Err(BundleError::WrongSigner {
            found: header.signer.code().to_string(),
            pinned: pinned.code().to_string(),
        });
    }
    let signature: [u8; SIGNATURE_LEN] = bytes[body_len..].try_into().expect("64 bytes");
    if !pinned.verify(&signed_message(&bytes[..body_len]), &signature) {
        return Err(BundleError::BadSignature);
    }
    let me = host.public();
    let stanza = header
        .stanzas
        .iter()
        .find(|s| s.recipient == me)
        .ok_or_else(|| BundleError::NotForThisHost {
            this: me.code().to_string(),
            recipients: header
                .stanzas
                .iter()
                .map(|s| s.recipient.code().to_string())
                .collect(),
        })?;
    let shared = host.diffie_hellman(&stanza.ephemeral);
    let key = wrap_key(&shared, &stanza.ephemeral, &me.0).ok_or(BundleError::StanzaFailed)?;
    let mut file_key = Zeroizing::new([0u8; 32]);
    file_key.copy_from_slice(&stanza.wrapped_key[..32]);
    let tag: [u8; 16] = stanza.wrapped_key[32..].try_into().expect("16-byte tag");
    Cipher::new(&key)
        .open_in_place(&WRAP_NONCE, &bytes[..FIXED_LEN], file_key.as_mut(), &tag)
        .map_err(|_| BundleError::StanzaFailed)?;
    if !bool::from(
        header
            .compute_commitment(&file_key)
            .ct_eq(&header.commitment),
    ) {
        return Err(BundleError::StanzaFailed);
    }
    if let Some(expires) = header.expires {
        if now >= expires {
            return Err(BundleError::Expired { expires, now });
        }
    }
    let key = payload_key(&file_key, &header.payload_salt);
    let mut opener = StreamOpener::new(&key, &bytes[header.encoded_len()..body_len]);
    let mut plaintext = Zeroizing::new(Vec::with_capacity(body_len - header.encoded_len()));
    if let Err(e) = opener.read_to_end(&mut plaintext) {
        return Err(opener.take_error().unwrap_or(BundleError::Io(e)));
    }
    opener.expect_end()?;
    Ok(Opened { header, plaintext })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: DistParams = DistParams {
        created: 1_764_000_000,
        expires: None,
        serial: 7,
    };

    fn keys() -> (SigningSecret, HostSecret, HostSecret) {
        (
            SigningSecret::from_bytes(&[1; 32]),
            HostSecret::from_bytes(&[2; 32]),
            HostSecret::from_bytes(&[3; 32]),
        )
    }

    #[test]
    fn each_recipient_opens_the_same_payload() {
        let (signer, a, b) = keys();
        let payload = vec![9u8; 70_000];
        let d = seal(&signer, &[a.public(), b.public()], &PARAMS, &payload).unwrap();
        for host in [&a, &b] {
            let opened = open(&d, host, &signer.public(), 10).unwrap();
            assert_eq!(&opened.plaintext[..], &payload[..]);
            assert_eq!(opened.header.serial, 7);
            assert_eq!(opened.header.recipients(), vec![a.public(), b.public()]);
        }
        let h = DistHeader::parse(&d).unwrap();
        assert_eq!(&h.encode()[..], &d[..h.encoded_len()]);
    }

    #[test]
    fn refusals_come_in_the_documented_order() {
        let (signer, a, b) = keys();
        let other = SigningSecret::from_bytes(&[4; 32]);
        let d = seal(&signer, &[a.public()], &PARAMS, b"keys").unwrap();
        let pin = signer.public();
        assert!(matches!(
            open(&d, &a, &other.public(), 10),
            Err(BundleError::WrongSigner { .. })
        ));
        // Same signer key in the header, signature by another key.
        let mut forged = d.clone();
        let n = forged.len() - SIGNATURE_LEN;
        let sig = other.sign(&signed_message(&forged[..n]));
        forged[n..].copy_from_slice(&sig);
        assert!(matches!(
            open(&forged, &a, &pin, 10),
            Err(BundleError::BadSignature)
        ));
        assert!(matches!(
            open(&d, &b, &pin, 10),
            Err(BundleError::NotForThisHost { .. })
        ));
        for cut in [0, 5, 50, FIXED_LEN + 3, d.len() - 1] {
            assert!(open(&d[..cut], &a, &pin, 10).is_err(), "cut at {cut}");
        }
        let mut appended = d.clone();
        appended.push(0);
        assert!(matches!(
            open(&appended, &a, &pin, 10),
            Err(BundleError::BadSignature)
        ));
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x40;
            assert!(open(&t, &a, &pin, 10).is_err(), "flip at {i}");
        }
        let mut v1 = d.clone();
        v1[8] = 1;
        assert!(matches!(
            open(&v1, &a, &pin, 10),
            Err(BundleError::UnsupportedVersion(1))
        ));
        // The format 1 reader refuses format 2 by its version byte (an
        // older keyferry says the version is not supported).
        let mut head = [0u8; super::super::HEADER_LEN];
        head.copy_from_slice(&d[..super::super::HEADER_LEN]);
        assert!(matches!(
            super::super::Header::parse(&head),
            Err(BundleError::IsDistribution)
        ));
    }

    #[test]
    fn a_signed_stanza_that_does_not_open_is_refused() {
        let (signer, a, _) = keys();
        let p = DistParams {
            expires: Some(100),
            ..PARAMS
        };
        let d = seal(&signer, &[a.public()], &p, b"keys").unwrap();
        assert!(matches!(
            open(&d, &a, &signer.public(), 100),
            Err(BundleError::Expired { expires: 100, .. })
        ));
        // The signer itself crafts a stanza with a wrong wrapped key.
        let mut bad = d[..d.len() - SIGNATURE_LEN].to_vec();
        bad[FIXED_LEN + 64] ^= 1;
        let sig = signer.sign(&signed_message(&bad));
        bad.extend_from_slice(&sig);
        assert!(matches!(
            open(&bad, &a, &signer.public(), 10),
            Err(BundleError::StanzaFailed)
        ));
    }

    fn hex32(v: &serde_json::Value) -> [u8; 32] {
        hex::decode(v.as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// The vectors of `tests/vectors/v2/`, written by an independent
    /// implementation of docs/format.md: keyferry seals the same bytes from
    /// the same inputs and opens them for every recipient.
    #[test]
    fn the_independent_vectors_seal_and_open_byte_for_byte() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/v2");
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("vectors.json")).unwrap()).unwrap();
        for case in spec["distributions"].as_array().unwrap() {
            let file = std::fs::read(dir.join(case["file"].as_str().unwrap())).unwrap();
            let signer = SigningSecret::from_bytes(&hex32(&case["signer_seed"]));
            let hosts: Vec<HostSecret> = case["recipient_seeds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| HostSecret::from_bytes(&hex32(s)))
                .collect();
            let n = case["payload_len"].as_u64().unwrap() as usize;
            let payload: Vec<u8> = (0..n).map(|i| ((i * 11 + 5) % 256) as u8).collect();
            let expires = case["expires"].as_u64().unwrap();
            let params = DistParams {
                created: case["created"].as_u64().unwrap(),
                expires: (expires != 0).then_some(expires),
                serial: case["serial"].as_u64().unwrap(),
            };
            let random = SealRandom {
                file_key: Zeroizing::new(hex32(&case["file_key"])),
                payload_salt: hex::decode(case["payload_salt"].as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap(),
                ephemerals: case["ephemeral_seeds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| HostSecret::from_bytes(&hex32(s)))
                    .collect(),
            };
            let publics: Vec<HostPublic> = hosts.iter().map(HostSecret::public).collect();
            let sealed = seal_with(&signer, &publics, &params, &payload, random).unwrap();
            assert!(sealed == file, "{} differs", case["file"]);
            for host in &hosts {
                let opened = open(&file, host, &signer.public(), params.created).unwrap();
                assert!(opened.plaintext[..] == payload[..]);
            }
        }
        let codes = &spec["codes"];
        assert_eq!(
            HostSecret::from_bytes(&[2; 32]).public().code().to_string(),
            codes["host_key_seed_02"].as_str().unwrap()
        );
        assert_eq!(
            HostSecret::from_bytes(&[3; 32]).public().code().to_string(),
            codes["host_key_seed_03"].as_str().unwrap()
        );
        assert_eq!(
            SigningSecret::from_bytes(&[1; 32])
                .public()
                .code()
                .to_string(),
            codes["signing_key_seed_01"].as_str().unwrap()
        );
    }
}
