//! Opens arbitrary bytes as a format 2 distribution, as `keyferry nodes
//! sync` does (header, signer, signature, this host's stanza, commitment,
//! expiry, STREAM), with the keys of the format 2 test vectors
//! (`tests/vectors/v2/`, signer seed 01, recipient seed 02) so that the
//! committed seeds open.
//!
//! Invariants checked:
//! - no input panics or allocates without bound;
//! - a header that parses encodes back to the bytes it was read from;
//! - whatever opens carries the pinned signer and this host among its
//!   recipients, and its plaintext is shorter than the input;
//! - the input sealed as a payload to this host opens back to the same
//!   bytes, and the same distribution cut short (by a data-chosen amount)
//!   or with one data-chosen byte flipped never opens.
#![no_main]

use keyferry::bundle::keys::{HostSecret, SigningSecret};
use keyferry::bundle::v2::{self, DistHeader, DistParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let signer = SigningSecret::from_bytes(&[1; 32]);
    let host = HostSecret::from_bytes(&[2; 32]);
    if let Ok(h) = DistHeader::parse(data) {
        assert_eq!(&h.encode()[..], &data[..h.encoded_len()]);
    }
    if let Ok(opened) = v2::open(data, &host, &signer.public(), 1_764_000_000) {
        assert_eq!(opened.header.signer, signer.public());
        assert!(opened.header.recipients().contains(&host.public()));
        assert!(opened.plaintext.len() < data.len());
    }
    if data.len() <= 4096 {
        let params = DistParams {
            created: 0,
            expires: None,
            serial: 1,
        };
        let sealed = v2::seal(&signer, &[host.public()], &params, data).unwrap();
        let opened = v2::open(&sealed, &host, &signer.public(), 1).expect("own distribution opens");
        assert_eq!(&opened.plaintext[..], data);
        let pick = usize::from(data.first().copied().unwrap_or(0));
        let cut = &sealed[..sealed.len() - 1 - pick.min(sealed.len() - 1)];
        assert!(v2::open(cut, &host, &signer.public(), 1).is_err());
        let mut flipped = sealed.clone();
        let at = (pick * 7919) % flipped.len();
        flipped[at] ^= 1 << (pick % 8);
        assert!(v2::open(&flipped, &host, &signer.public(), 1).is_err());
    }
});
