//! The bundle format as a public contract, checked at the library level:
//! vectors from independent implementations open exactly, every part that
//! keyferry seals matches an independent implementation byte for byte,
//! payload sizes around the chunk boundaries round-trip, and no single-bit
//! change anywhere in a header is accepted.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use hkdf::Hkdf;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use keyferry::bundle::{
    self, BundleError, Header, OpenOptions, SealParams, StreamSealer, HEADER_LEN,
};
use keyferry::kdf::{self, KdfLimits, KdfParams};
use keyferry::secret::Password;

const OWN: &str = "tests/vectors/own";
const INDEPENDENT: &str = "tests/vectors/independent";

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

fn options(now: u64) -> OpenOptions {
    OpenOptions {
        now,
        allow_expired: false,
    }
}

/// Reads the whole payload, with the stream's typed error on failure.
fn read_all(mut r: bundle::BundleReader<impl BufRead>) -> Result<Vec<u8>, BundleError> {
    let mut out = Vec::new();
    match r.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) => Err(r.take_error().unwrap_or(BundleError::Io(e))),
    }
}

fn open_all(bytes: &[u8], password: &str, now: u64) -> Result<Vec<u8>, BundleError> {
    let r = bundle::read_header(BufReader::new(bytes), &KdfLimits::default())?
        .unlock(&Password::from_typed(password), &options(now))?;
    read_all(r)
}

#[derive(Deserialize)]
struct IndependentVector {
    file: String,
    password: String,
    expires: Option<u64>,
    payload_sha256: String,
    payload_len: usize,
}

#[derive(Deserialize)]
struct List<T> {
    vectors: Vec<T>,
}

#[test]
fn independent_vectors_open_to_exactly_their_payload() {
    let list: List<IndependentVector> = serde_json::from_slice(
        &std::fs::read(Path::new(INDEPENDENT).join("vectors.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(list.vectors.len(), 8);
    for v in list.vectors {
        let bytes = std::fs::read(Path::new(INDEPENDENT).join(&v.file)).unwrap();
        // Before its expiry (all were created at 1764000000).
        let payload = open_all(&bytes, &v.password, 1_764_000_001)
            .unwrap_or_else(|e| panic!("{}: {e}", v.file));
        assert_eq!(payload.len(), v.payload_len, "{}", v.file);
        assert_eq!(
            hex(&Sha256::digest(&payload)),
            v.payload_sha256,
            "{}",
            v.file
        );
        if let Some(expires) = v.expires {
            assert!(matches!(
                open_all(&bytes, &v.password, expires),
                Err(BundleError::Expired { .. })
            ));
        }
    }
}

#[derive(Deserialize)]
struct OwnVector {
    file: String,
    password: String,
    kdf: [u32; 3],
    kdf_salt: String,
    created: u64,
    expires: u64,
    payload_salt: String,
    file_key: String,
    payload_len: usize,
    payload_sha256: String,
}

fn own_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + 3) % 256) as u8).collect()
}

#[test]
fn what_keyferry_seals_matches_an_independent_implementation_byte_for_byte() {
    let list: List<OwnVector> =
        serde_json::from_slice(&std::fs::read(Path::new(OWN).join("vectors.json")).unwrap())
            .unwrap();
    for v in list.vectors {
        let want = std::fs::read(Path::new(OWN).join(&v.file)).unwrap();
        let payload = own_payload(v.payload_len);
        assert_eq!(hex(&Sha256::digest(&payload)), v.payload_sha256);
        let kdf = KdfParams {
            memory_kib: v.kdf[0],
            time: v.kdf[1],
            lanes: v.kdf[2],
        };
        let kek = kdf::derive_kek(
            Password::from_typed(&v.password).as_bytes(),
            &unhex(&v.kdf_salt),
            &kdf,
        )
        .unwrap();
        let file_key = unhex(&v.file_key);

        // The header, field by field.
        let mut header = Header {
            kdf,
            kdf_salt: unhex(&v.kdf_salt).try_into().unwrap(),
            created: v.created,
            expires: Some(v.expires),
            payload_salt: unhex(&v.payload_salt).try_into().unwrap(),
            commitment: [0; 32],
            wrapped_key: [0; 48],
        };
        header.commitment = header.compute_commitment(&kek[..]);
        let mut wrapped = file_key.clone();
        let tag = Aes256Gcm::new_from_slice(&kek[..])
            .unwrap()
            .encrypt_inout_detached(
                &[0u8; 12].into(),
                &header.wrap_aad(),
                wrapped.as_mut_slice().into(),
            )
            .unwrap();
        header.wrapped_key[..32].copy_from_slice(&wrapped);
        header.wrapped_key[32..].copy_from_slice(&tag);
        assert_eq!(
            &header.encode()[..],
            &want[..HEADER_LEN],
            "{}: header",
            v.file
        );
        assert_eq!(Header::parse(&want).unwrap(), header);

        // The STREAM body.
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&header.payload_salt), &file_key)
            .expand(b"keyferry bundle v1 payload", &mut key)
            .unwrap();
        let mut sealer = StreamSealer::new(&key, Vec::new());
        sealer.write_all(&payload).unwrap();
        assert_eq!(
            sealer.finish().unwrap(),
            &want[HEADER_LEN..],
            "{}: payload",
            v.file
        );

        // And both forms open to the payload.
        let armored = std::fs::read(Path::new(OWN).join(v.file.replace(".kfb", ".asc"))).unwrap();
        for bytes in [&want, &armored] {
            assert_eq!(
                open_all(bytes, &v.password, v.created).unwrap(),
                payload,
                "{}",
                v.file
            );
        }
    }
}

/// Seals with a fixed KEK (the payload path without the KDF).
fn seal_fast(payload: &[u8], armor: bool) -> Vec<u8> {
    let params = SealParams {
        kdf: KdfParams::MINIMUM,
        created: 1,
        expires: None,
        armor,
    };
    let mut w = bundle::seal_with_kek(&[7; 32], [1; 16], &params, Vec::new()).unwrap();
    w.write_all(payload).unwrap();
    w.finish().unwrap()
}

fn open_fast(bytes: &[u8]) -> Result<Vec<u8>, BundleError> {
    let r = bundle::read_header(BufReader::new(bytes), &KdfLimits::default())?
        .unlock_with_kek(&[7; 32], &options(2))?;
    read_all(r)
}

#[test]
fn payloads_around_the_chunk_size_round_trip_in_both_forms() {
    for len in [0usize, 1, 65_535, 65_536, 65_537, 5 * 1024 * 1024 + 3] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 239) as u8).collect();
        for armor in [false, true] {
            let sealed = seal_fast(&payload, armor);
            assert_eq!(
                open_fast(&sealed).unwrap(),
                payload,
                "len {len} armor {armor}"
            );
        }
    }
    // And once through the real KDF with a password.
    let params = SealParams {
        kdf: KdfParams::MINIMUM,
        created: 1,
        expires: None,
        armor: false,
    };
    let mut w = bundle::seal(
        &Password::from_typed("a long test password"),
        &params,
        Vec::new(),
    )
    .unwrap();
    w.write_all(b"hello").unwrap();
    let sealed = w.finish().unwrap();
    assert_eq!(
        open_all(&sealed, "a long test password", 2).unwrap(),
        b"hello"
    );
    assert!(matches!(
        open_all(&sealed, "a long test passworD", 2),
        Err(BundleError::WrongPasswordOrModifiedHeader)
    ));
}

#[test]
fn every_single_bit_flip_in_the_header_is_refused() {
    let good = seal_fast(b"payload", false);
    assert_eq!(open_fast(&good).unwrap(), b"payload");
    // The opener here holds the true KEK, which is stronger than a real
    // importer (who derives a different KEK from a changed salt or cost):
    // the commitment alone must catch every flip.
    for bit in 0..HEADER_LEN * 8 {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let err = open_fast(&bad).expect_err(&format!("bit {bit} accepted"));
        let byte = bit / 8;
        let expected_kind = match byte {
            0..=7 => matches!(err, BundleError::NotABundle),
            8 => matches!(err, BundleError::UnsupportedVersion(_)),
            9 => matches!(err, BundleError::UnsupportedKdf(_)),
            10..=21 => matches!(
                err,
                BundleError::Kdf(_) | BundleError::WrongPasswordOrModifiedHeader
            ),
            _ => matches!(err, BundleError::WrongPasswordOrModifiedHeader),
        };
        assert!(expected_kind, "bit {bit}: {err:?}");
    }
}
