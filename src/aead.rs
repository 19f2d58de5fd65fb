//! AES-256-GCM, the one AEAD keyferry uses: bundle chunks, the wrapped file
//! key, keyring envelopes and the self-test's vectors all go through
//! [`Cipher`].
//!
//! Backed by `ring`, which picks its VAES/VPCLMULQDQ code at run time: on
//! the 2-CPU benchmark machine it seals 64 KiB chunks at about 8.1 GB/s
//! against 2.0 GB/s for the `aes-gcm` crate (benches/NOTES.md). The
//! `aes-gcm` crate stays as a dev-dependency, an independent implementation
//! the format tests check against.
//!
//! Invariants:
//! - the key schedule lives in one heap allocation for the cipher's whole
//!   life and is wiped when it drops (`ring` keys do not zeroize);
//! - [`Cipher::open_in_place`] never leaves unauthenticated plaintext
//!   behind: on failure the buffer is zeroed (by `ring`), so a caller that
//!   wants to try the ciphertext again must open a copy.

use std::fmt;
use std::mem::MaybeUninit;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// The tag did not match: wrong key, or modified ciphertext, nonce or AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailed;

/// An AES-256-GCM key, ready to seal and open.
pub struct Cipher {
    /// Always initialised; `MaybeUninit` only so that the bytes can be
    /// wiped on drop without ever forming an invalid `LessSafeKey`.
    key: Box<MaybeUninit<LessSafeKey>>,
}

impl Cipher {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key");
        Self {
            key: Box::new(MaybeUninit::new(LessSafeKey::new(unbound))),
        }
    }

    fn key(&self) -> &LessSafeKey {
        // SAFETY: `key` is initialised in `new` and only uninitialised
        // (wiped) in `drop`, after which it is never read.
        unsafe { self.key.assume_init_ref() }
    }

    /// Encrypts `data` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let tag = self
            .key()
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), data)
            // ring refuses only inputs over GCM's 64 GiB limit; keyferry
            // seals at most a 64 KiB chunk or a small envelope at a time.
            .expect("AES-GCM input within its length limit");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Checks the tag and decrypts `data` in place; on failure `data` is
    /// zeroed.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthFailed> {
        self.key()
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                Tag::from(*tag),
                data,
                0..,
            )
            .map(|_| ())
            .map_err(|_| AuthFailed)
    }
}

impl Drop for Cipher {
    fn drop(&mut self) {
        // SAFETY: the box gives exclusive access to the whole value, and
        // every bit pattern, zero included, is valid for a `MaybeUninit`;
        // the key is never read again.
        unsafe { zeroize::zeroize_flat_type(&mut *self.key as *mut MaybeUninit<LessSafeKey>) };
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(AES-256-GCM, key withheld)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_what_it_seals_and_nothing_else() {
        let cipher = Cipher::new(&[9; KEY_LEN]);
        let nonce = [1; NONCE_LEN];
        let mut data = b"attack at dawn".to_vec();
        let tag = cipher.seal_in_place(&nonce, b"aad", &mut data);
        assert_ne!(data, b"attack at dawn");
        let sealed = data.clone();
        cipher
            .open_in_place(&nonce, b"aad", &mut data, &tag)
            .unwrap();
        assert_eq!(data, b"attack at dawn");

        for (nonce, aad, flip) in [
            ([2; NONCE_LEN], &b"aad"[..], false),
            (nonce, b"abd", false),
            (nonce, b"aad", true),
        ] {
            let mut data = sealed.clone();
            if flip {
                data[3] ^= 1;
            }
            assert_eq!(
                cipher.open_in_place(&nonce, aad, &mut data, &tag),
                Err(AuthFailed)
            );
            assert!(
                data.iter().all(|b| *b == 0),
                "failed open left bytes behind"
            );
        }
    }

    #[test]
    fn debug_withholds_the_key() {
        let shown = format!("{:?}", Cipher::new(&[0x41; KEY_LEN]));
        assert!(!shown.contains("41") && !shown.contains("65"), "{shown}");
    }
}
