//! `keyferry encrypt` and `keyferry decrypt`: the envelope
//! ([`crate::keyring::envelope`]) on the node's keyring, for scripts and
//! for checking stored values by hand.
//!
//! Reads the keystore only (no lock, no audit record: sealing a value
//! changes nothing on the node). Plaintext is held in zeroizing buffers;
//! errors name the key id and the fix, never the value.

use zeroize::Zeroizing;

use super::Home;
use crate::error::Result;
use crate::keyring::envelope::{self, EnvelopeError};

/// How an envelope is written and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `kfe1:<key id>:<base64>` (for `text` columns), one line.
    Text,
    /// The binary envelope (for `bytea` columns).
    Raw,
}

/// Seals `plaintext` under the node's primary key; returns what to write
/// (the text form ends with a newline).
pub fn encrypt(home: &Home, plaintext: &[u8], aad: &[u8], form: Form) -> Result<Vec<u8>> {
    let keyring = home.load_keystore()?.keyring;
    let sealed = keyring.encrypt(plaintext, aad)?;
    Ok(match form {
        Form::Raw => sealed,
        Form::Text => {
            let mut text = envelope::binary_to_text(&sealed)?.into_bytes();
            text.push(b'\n');
            text
        }
    })
}

/// Opens an envelope read from `input` with the node's keyring.
pub fn decrypt(home: &Home, input: &[u8], aad: &[u8], form: Form) -> Result<Zeroizing<Vec<u8>>> {
    let keyring = home.load_keystore()?.keyring;
    Ok(match form {
        Form::Raw => keyring.decrypt(input, aad)?,
        Form::Text => {
            let text = std::str::from_utf8(input).map_err(|_| {
                EnvelopeError::Text("the input is not text; give --raw for a binary envelope")
            })?;
            // One line end closes the line `encrypt` wrote; it is input
            // framing, not part of the value. Anything else around the
            // value (leading blanks, a second line) is the reader's to refuse.
            let line = text.strip_suffix('\n').unwrap_or(text);
            let line = line.strip_suffix('\r').unwrap_or(line);
            keyring.decrypt_text(line, aad)?
        }
    })
}
