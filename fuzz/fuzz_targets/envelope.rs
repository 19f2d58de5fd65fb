//! Envelope opening, binary and text forms (issue 15).
//!
//! Invariants checked:
//! - `decrypt` and `decrypt_text` on arbitrary bytes never panic;
//! - a value opens only under an enabled key, and only when it is exactly
//!   what that key sealed (with a fixed keyring and arbitrary input,
//!   opening succeeds only on the round-trip values made here);
//! - the text form's visible key id equals the id sealed inside whenever
//!   it opens, and `text_key_id` (the census's reading) agrees;
//! - round trip: what `encrypt`/`encrypt_text` seal opens to the input
//!   with the same aad, and fails with any other aad.
#![no_main]

use keyferry::keyring::envelope::{self, EnvelopeError};
use keyferry::keyring::{Key, KeyMaterial, KeyStatus, Keyring, ALGORITHM};
use libfuzzer_sys::fuzz_target;

fn keyring() -> Keyring {
    let key = |id: u32, status: KeyStatus| Key {
        id,
        status,
        created: "2026-12-01T00:00:00Z".to_owned(),
        algorithm: ALGORITHM.to_owned(),
        material: match status {
            KeyStatus::Destroyed => None,
            _ => Some(KeyMaterial::from_bytes([id as u8; 32])),
        },
    };
    Keyring::new(
        2,
        vec![
            key(1, KeyStatus::Disabled),
            key(2, KeyStatus::Enabled),
            key(3, KeyStatus::Destroyed),
            key(4, KeyStatus::Enabled),
        ],
    )
    .expect("a valid keyring")
}

fuzz_target!(|data: &[u8]| {
    let k = keyring();
    // The first byte splits the input into aad and value.
    let split = usize::from(data.first().copied().unwrap_or(0)).min(data.len());
    let (aad, value) = data.split_at(split);

    match k.decrypt(value, aad) {
        Ok(_) => panic!("arbitrary bytes opened under a fixed key"),
        Err(EnvelopeError::KeyDisabled(id)) => assert_eq!(id, 1),
        Err(EnvelopeError::KeyDestroyed(id)) => assert_eq!(id, 3),
        Err(EnvelopeError::UnknownKey(id)) => assert!(id == 0 || id > 4),
        Err(_) => {}
    }
    if let Ok(text) = std::str::from_utf8(value) {
        if let Ok(binary) = envelope::from_text(text) {
            assert_eq!(envelope::key_id(&binary).ok(), envelope::text_key_id(text).ok());
        }
        assert!(k.decrypt_text(text, aad).is_err());
    }

    let sealed = k.encrypt(value, aad).expect("seal");
    assert_eq!(envelope::key_id(&sealed), Ok(2));
    assert_eq!(&*k.decrypt(&sealed, aad).expect("own envelope opens"), value);
    let mut other = aad.to_vec();
    other.push(0);
    assert_eq!(k.decrypt(&sealed, &other), Err(EnvelopeError::Modified(2)));
    let text = k.encrypt_text(value, aad).expect("seal text");
    assert_eq!(envelope::text_key_id(&text), Ok(2));
    assert_eq!(&*k.decrypt_text(&text, aad).expect("own text opens"), value);
});
