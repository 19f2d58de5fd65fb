//! The armored (text) form of a bundle.
//!
//! Invariants checked:
//! - `ArmorReader` on arbitrary bytes never panics and, line-bounded, never
//!   yields more than 3 bytes per 4 input bytes;
//! - it never counts more ignored lines than the input has lines;
//! - round trip: whatever `ArmorWriter` writes decodes back to the exact
//!   input, also after the LF line ends become CRLF and whitespace is put
//!   around the block (what a remote-desktop clipboard does), and after
//!   every line is indented and text is put before BEGIN and after END
//!   (what a ticket or a mail does), which is counted, not decoded;
//! - binary/armored detection (`Source::detect`) agrees with the writer.
#![no_main]

use std::io::{Read, Write};

use keyferry::bundle::{ArmorReader, ArmorWriter, BundleError, Ignored, Source};
use libfuzzer_sys::fuzz_target;

fn dearmor_counting(text: &[u8]) -> Result<(Vec<u8>, Ignored), BundleError> {
    let mut out = Vec::new();
    let mut reader = ArmorReader::new(text);
    match reader.read_to_end(&mut out) {
        Ok(_) => Ok((out, reader.ignored())),
        Err(e) => Err(reader.take_error().unwrap_or(BundleError::Io(e))),
    }
}

fn dearmor(text: &[u8]) -> Result<Vec<u8>, BundleError> {
    dearmor_counting(text).map(|(out, _)| out)
}

fn armor(data: &[u8], write_size: usize) -> Vec<u8> {
    let mut w = ArmorWriter::new(Vec::new()).unwrap();
    for piece in data.chunks(write_size.max(1)) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap()
}

fuzz_target!(|data: &[u8]| {
    if let Ok((decoded, ignored)) = dearmor_counting(data) {
        assert!(decoded.len() <= data.len() / 4 * 3);
        let lines = data.iter().filter(|b| **b == b'\n').count() + 1;
        assert!(ignored.before + ignored.after <= lines);
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

    let mut mailed = b"Here are the keys:\n\n".to_vec();
    for line in text.split_inclusive(|b| *b == b'\n') {
        mailed.extend_from_slice(b"\t  ");
        mailed.extend_from_slice(&line[..line.len() - 1]);
        mailed.extend_from_slice(b" \n");
    }
    mailed.extend_from_slice(b"\nthanks");
    let (decoded, ignored) = dearmor_counting(&mailed).expect("mailed armor decodes");
    assert_eq!(decoded, data);
    assert_eq!(
        ignored,
        Ignored {
            before: 1,
            after: 1
        }
    );
});
