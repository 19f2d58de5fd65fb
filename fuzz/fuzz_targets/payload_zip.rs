//! The payload zip reader, on arbitrary bytes, with a small cap on the
//! total uncompressed size.
//!
//! Invariants checked:
//! - no input panics, hangs or inflates past the cap (deflate bombs stop at
//!   the cap, checked while inflating: `read_archive` never hands its
//!   callback more than `cap` bytes in total, nor more than `MAX_ENTRIES`
//!   entries);
//! - `payload::read` (allowed names, manifest first, fingerprint, contents)
//!   never hands configuration past the cap to its sink;
//! - whatever `payload::read` accepts, keyferry's own writer writes again
//!   and the reader accepts that too, with the same keyring and manifest.
#![no_main]

use std::io::Read;

use keyferry::payload::{self, zip};
use keyferry_fuzz::{read_payload_capped, SMALL_CAP};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut total = 0u64;
    let mut entries = 0usize;
    let _ = zip::read_archive(data, SMALL_CAP, |_name, r| {
        entries += 1;
        // Read only part of some entries: the reader must drain the rest.
        let limit = if entries.is_multiple_of(2) {
            100
        } else {
            u64::MAX
        };
        let mut buf = Vec::new();
        r.take(limit)
            .read_to_end(&mut buf)
            .map_err(zip::ZipError::Io)?;
        total += buf.len() as u64;
        Ok(())
    });
    assert!(
        total <= SMALL_CAP,
        "callback saw {total} bytes, cap {SMALL_CAP}"
    );
    assert!(entries <= zip::MAX_ENTRIES);

    if let Ok((p, _rest)) = read_payload_capped(data, SMALL_CAP) {
        let rewritten = payload::write(Vec::new(), &p.manifest.source_node, &p.keyring, Vec::new())
            .expect("write to Vec");
        if p.config.is_empty() {
            let (again, _) =
                read_payload_capped(&rewritten[..], SMALL_CAP).expect("own payload reads");
            assert_eq!(again.keyring, p.keyring);
            assert_eq!(
                again.manifest.keyring_fingerprint,
                p.manifest.keyring_fingerprint
            );
            assert_eq!(again.manifest.source_node, p.manifest.source_node);
        }
    }
});
