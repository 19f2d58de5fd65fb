//! The 150-byte bundle header: encoding and parsing side by side, plus the
//! key commitment and the wrapped file key that authenticate it.
//!
//! Invariants:
//! - `encode(parse(b)) == b` for every header `parse` accepts;
//! - parsing checks only structure (magic, version, KDF id); whether the
//!   header is authentic is decided by [`Header::verify_commitment`], which
//!   compares in constant time, before anything is decrypted.

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::BundleError;
use crate::kdf::{KdfParams, KDF_ID_ARGON2ID};

pub const MAGIC: &[u8; 8] = b"KFBUNDLE";
pub(crate) const FORMAT_VERSION: u8 = 0x01;
pub(crate) const SALT_LEN: usize = 16;
pub(crate) const COMMITMENT_LEN: usize = 32;
pub const WRAPPED_KEY_LEN: usize = 48;
/// Bytes 0..70 are covered by the key commitment.
pub const COMMITTED_LEN: usize = 70;
/// Bytes 0..102 are the associated data of the wrapped file key.
pub const WRAP_AAD_LEN: usize = 102;
pub const HEADER_LEN: usize = 150;
const COMMIT_LABEL: &[u8] = b"keyferry bundle v1 commit";

// Field offsets, in the order of the format table.
const OFF_VERSION: usize = 8;
const OFF_KDF_ID: usize = 9;
const OFF_MEMORY: usize = 10;
const OFF_TIME: usize = 14;
const OFF_LANES: usize = 18;
const OFF_KDF_SALT: usize = 22;
const OFF_CREATED: usize = 38;
const OFF_EXPIRES: usize = 46;
const OFF_PAYLOAD_SALT: usize = 54;
const OFF_COMMITMENT: usize = 70;
const OFF_WRAPPED: usize = 102;

/// A parsed bundle header. Everything in it is public: it is safe to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub kdf: KdfParams,
    pub kdf_salt: [u8; SALT_LEN],
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; `None` is stored as 0 and means "never".
    pub expires: Option<u64>,
    pub payload_salt: [u8; SALT_LEN],
    pub commitment: [u8; COMMITMENT_LEN],
    pub wrapped_key: [u8; WRAPPED_KEY_LEN],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..OFF_VERSION].copy_from_slice(MAGIC);
        b[OFF_VERSION] = FORMAT_VERSION;
        b[OFF_KDF_ID] = KDF_ID_ARGON2ID;
        b[OFF_MEMORY..OFF_TIME].copy_from_slice(&self.kdf.memory_kib.to_be_bytes());
        b[OFF_TIME..OFF_LANES].copy_from_slice(&self.kdf.time.to_be_bytes());
        b[OFF_LANES..OFF_KDF_SALT].copy_from_slice(&self.kdf.lanes.to_be_bytes());
        b[OFF_KDF_SALT..OFF_CREATED].copy_from_slice(&self.kdf_salt);
        b[OFF_CREATED..OFF_EXPIRES].copy_from_slice(&self.created.to_be_bytes());
        b[OFF_EXPIRES..OFF_PAYLOAD_SALT].copy_from_slice(&self.expires.unwrap_or(0).to_be_bytes());
        b[OFF_PAYLOAD_SALT..OFF_COMMITMENT].copy_from_slice(&self.payload_salt);
        b[OFF_COMMITMENT..OFF_WRAPPED].copy_from_slice(&self.commitment);
        b[OFF_WRAPPED..].copy_from_slice(&self.wrapped_key);
        b
    }

    /// Parses the structure. `bytes` may be shorter than a header when the
    /// file is: then the error says whether it is a bundle at all.
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(BundleError::NotABundle);
        }
        if bytes.len() < HEADER_LEN {
            return Err(BundleError::TruncatedHeader(bytes.len()));
        }
        if bytes[OFF_VERSION] == super::v2::FORMAT_VERSION {
            return Err(BundleError::IsDistribution);
        }
        if bytes[OFF_VERSION] != FORMAT_VERSION {
            return Err(BundleError::UnsupportedVersion(bytes[OFF_VERSION]));
        }
        if bytes[OFF_KDF_ID] != KDF_ID_ARGON2ID {
            return Err(BundleError::UnsupportedKdf(bytes[OFF_KDF_ID]));
        }
        let expires = u64_at(bytes, OFF_EXPIRES);
        Ok(Self {
            kdf: KdfParams {
                memory_kib: u32_at(bytes, OFF_MEMORY),
                time: u32_at(bytes, OFF_TIME),
                lanes: u32_at(bytes, OFF_LANES),
            },
            kdf_salt: array_at(bytes, OFF_KDF_SALT),
            created: u64_at(bytes, OFF_CREATED),
            expires: (expires != 0).then_some(expires),
            payload_salt: array_at(bytes, OFF_PAYLOAD_SALT),
            commitment: array_at(bytes, OFF_COMMITMENT),
            wrapped_key: array_at(bytes, OFF_WRAPPED),
        })
    }

    /// `HMAC-SHA256(KEK, label || header[0..70])`.
    pub fn compute_commitment(&self, kek: &[u8]) -> [u8; COMMITMENT_LEN] {
        let encoded = self.encode();
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(kek)
            .expect("HMAC takes keys of any length");
        mac.update(COMMIT_LABEL);
        mac.update(&encoded[..COMMITTED_LEN]);
        mac.finalize().into_bytes().into()
    }

    /// Whether `kek` is the key this header was committed to.
    pub(crate) fn verify_commitment(&self, kek: &[u8]) -> bool {
        self.compute_commitment(kek).ct_eq(&self.commitment).into()
    }

    /// Associated data of the wrapped file key: header bytes 0..102.
    pub fn wrap_aad(&self) -> [u8; WRAP_AAD_LEN] {
        let mut aad = [0u8; WRAP_AAD_LEN];
        aad.copy_from_slice(&self.encode()[..WRAP_AAD_LEN]);
        aad
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(array_at(b, off))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(array_at(b, off))
}

fn array_at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    b[off..off + N]
        .try_into()
        .expect("offsets are within HEADER_LEN")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            kdf: KdfParams::DEFAULT,
            kdf_salt: [1; SALT_LEN],
            created: 1_764_000_000,
            expires: Some(1_764_086_400),
            payload_salt: [2; SALT_LEN],
            commitment: [3; COMMITMENT_LEN],
            wrapped_key: [4; WRAPPED_KEY_LEN],
        }
    }

    #[test]
    fn encode_parse_round_trip() {
        let h = sample();
        let bytes = h.encode();
        assert_eq!(&bytes[..8], b"KFBUNDLE");
        assert_eq!(bytes[8], 1);
        assert_eq!(&bytes[10..14], &65_536u32.to_be_bytes());
        assert_eq!(Header::parse(&bytes).unwrap(), h);
        let never = Header {
            expires: None,
            ..sample()
        };
        assert_eq!(&never.encode()[46..54], &[0u8; 8]);
        assert_eq!(Header::parse(&never.encode()).unwrap().expires, None);
    }

    #[test]
    fn structural_errors_come_in_the_documented_order() {
        let mut bytes = sample().encode();
        bytes[9] = 2;
        assert!(matches!(
            Header::parse(&bytes),
            Err(BundleError::UnsupportedKdf(2))
        ));
        bytes[8] = 9;
        assert!(matches!(
            Header::parse(&bytes),
            Err(BundleError::UnsupportedVersion(9))
        ));
        bytes[0] = b'X';
        assert!(matches!(
            Header::parse(&bytes),
            Err(BundleError::NotABundle)
        ));
        assert!(matches!(
            Header::parse(&sample().encode()[..100]),
            Err(BundleError::TruncatedHeader(100))
        ));
    }
}
