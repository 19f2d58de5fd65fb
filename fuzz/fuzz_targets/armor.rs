//! The armored (text) form of a bundle.
//!
//! Invariants checked:
//! - `ArmorReader` on arbitrary bytes never panics and, line-bounded, never
//!   yields more than 3 bytes per 4 input bytes;
//! - round trip: whatever `ArmorWriter` writes decodes back to the exact
//!   input, also after the LF line ends become CRLF and whitespace is put
//!   around the block (what a remote-desktop clipboard does);
//! - binary/armored detection (`Source::detect`) agrees with the writer.
#![no_main]

use std::io::{Read, Write};

use keyferry::bundle::{ArmorReader, ArmorWriter, BundleError, Source};
use libfuzzer_sys::fuzz_target;

fn dearmor(text: &[u8]) -> Result<Vec<u8>, BundleError> {
    let mut out = Vec::new();
    let mut reader = ArmorReader::new(text);
    match reader.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) => Err(reader.take_error().unwrap_or(BundleError::Io(e))),
    }
}

fn armor(data: &[u8], write_size: usize) -> Vec<u8> {
    let mut w = ArmorWriter::new(Vec::new()).unwrap();
    for piece in data.chunks(write_size.max(1)) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = dearmor(data) {
        assert!(decoded.len() <= data.len() / 4 * 3);
    }

    // Write in pieces of a fuzz-chosen size to exercise the line buffering.
    let write_size = usize::from(data.first().copied().unwrap_or(1));
    let text = armor(data, write_size);
    assert!(matches!(Source::detect(&text[..]), Ok(Source::Armored(_))));
    assert_eq!(dearmor(&text).expect("own armor decodes"), data);

    let mut pasted = b" \r\n\t\r\n".to_vec();
    for line in text.split_inclusive(|b| *b == b'\n') {
        pasted.extend_from_slice(&line[..line.len() - 1]);
        pasted.extend_from_slice(b"\r\n");
    }
    pasted.extend_from_slice(b"\r\n  \n");
    assert_eq!(dearmor(&pasted).expect("CRLF armor decodes"), data);
});
