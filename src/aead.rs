//! AES-256-GCM, the one AEAD keyferry uses: bundle chunks, the wrapped file
//! key, keyring envelopes and the self-test's vectors all go through
//! [`Cipher`]. The implementation is the `aes-gcm` crate (RustCrypto) with
//! its `zeroize` feature; this module adds no `unsafe`.
//!
//! Invariants:
//! - the key is copied once, from the caller's buffer into a zeroizing heap
//!   allocation that lives as long as the [`Cipher`], and never moved;
//! - the AES key schedule and GHASH key are built for each call, used where
//!   they were built and wiped when they drop (`aes-gcm` zeroizes on drop),
//!   so no expanded key outlives the call or is left behind by a move;
//! - [`Cipher::open_in_place`] never leaves unauthenticated plaintext
//!   behind: the tag is checked before anything is decrypted, and on
//!   failure the buffer is zeroed, so a caller that wants to try the
//!   ciphertext again must open a copy.

use std::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use zeroize::{Zeroize, Zeroizing};

pub(crate) const KEY_LEN: usize = 32;
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;

/// The tag did not match: wrong key, or modified ciphertext, nonce or AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AuthFailed;

/// An AES-256-GCM key, ready to seal and open.
pub(crate) struct Cipher {
    key: Box<Zeroizing<[u8; KEY_LEN]>>,
}

impl Cipher {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        // Allocated zeroed, then filled where it lives: no stack copy.
        let mut own = Box::new(Zeroizing::new([0u8; KEY_LEN]));
        own.copy_from_slice(key);
        Self { key: own }
    }

    /// Runs `f` with the key expanded; the expansion is wiped when `f`
    /// returns. Expanding costs well under a microsecond, next to a 64 KiB
    /// chunk it is nothing.
    fn with_aes<T>(&self, f: impl FnOnce(&Aes256Gcm) -> T) -> T {
        let key: &[u8; KEY_LEN] = &self.key;
        let aes = Aes256Gcm::new(key.into());
        f(&aes)
    }

    /// Encrypts `data` in place and returns the tag.
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; TAG_LEN] {
        self.with_aes(|aes| {
            aes.encrypt_inout_detached(nonce.into(), aad, data.into())
                // Refused only over GCM's 64 GiB limit; keyferry seals at
                // most a 64 KiB chunk or a small envelope at a time.
                .expect("AES-GCM input within its length limit")
                .into()
        })
    }

    /// Checks the tag and decrypts `data` in place; on failure `data` is
    /// zeroed.
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthFailed> {
        let opened = self.with_aes(|aes| {
            aes.decrypt_inout_detached(nonce.into(), aad, (&mut *data).into(), tag.into())
        });
        opened.map_err(|_| {
            data.zeroize();
            AuthFailed
        })
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

    /// Known answers: McGrew and Viega's GCM specification, test case 14
    /// (zero key and nonce, one zero block), and NIST CAVS
    /// `gcmEncryptExtIV256.rsp` (13 bytes with 16 bytes of AAD: a partial
    /// block on both inputs).
    #[test]
    fn known_answers() {
        let cases = [
            (
                "0000000000000000000000000000000000000000000000000000000000000000",
                "000000000000000000000000",
                "",
                "00000000000000000000000000000000",
                "cea7403d4d606b6e074ec5d3baf39d18",
                "d0d1c8a799996bf0265b98b5d48ab919",
            ),
            (
                "dad89d9be9bba138cdcf8752c45b579d7e27c3dbb40f53e771dd8cfd500aa2d5",
                "cfb2aec82cfa6c7d89ee72ff",
                "6e43784a91851a77667a02198e28dc32",
                "b526ba1050177d05b0f72f8d67",
                "8b29e66e924ecae84f6d8f7d68",
                "1e365805c8f28b2ed8a5cadfd9079158",
            ),
        ];
        for (key, nonce, aad, plain, sealed, tag) in cases {
            let cipher = Cipher::new(&hex::decode(key).unwrap().try_into().unwrap());
            let nonce: [u8; NONCE_LEN] = hex::decode(nonce).unwrap().try_into().unwrap();
            let aad = hex::decode(aad).unwrap();
            let mut data = hex::decode(plain).unwrap();
            let got = cipher.seal_in_place(&nonce, &aad, &mut data);
            assert_eq!(hex::encode(&data), sealed);
            assert_eq!(hex::encode(got), tag);
            cipher.open_in_place(&nonce, &aad, &mut data, &got).unwrap();
            assert_eq!(hex::encode(&data), plain);
        }
    }

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
