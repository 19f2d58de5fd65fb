//! `keyferry encrypt` / `keyferry decrypt`: standard input to standard
//! output through [`crate::ops::seal`].

use std::io::{self, Read, Write};

use clap::Args;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::ops::seal::{self, Form};
use crate::ops::Home;

/// Plaintext and envelopes larger than this are refused (values in a
/// database column, not files).
const MAX_INPUT: u64 = 64 << 20;

#[derive(Args, Debug)]
pub(crate) struct SealArgs {
    /// Associated data binding the value to where it is stored (e.g.
    /// `app.credentials:42`); decrypt needs the same text.
    #[arg(long, value_name = "TEXT", default_value = "")]
    aad: String,
    /// The binary envelope (for bytea columns) instead of the text form
    /// `kfe1:<key id>:<base64>`.
    #[arg(long)]
    raw: bool,
}

impl SealArgs {
    fn form(&self) -> Form {
        if self.raw {
            Form::Raw
        } else {
            Form::Text
        }
    }
}

fn read_stdin() -> Result<Zeroizing<Vec<u8>>> {
    let mut input = Zeroizing::new(Vec::new());
    io::stdin()
        .take(MAX_INPUT + 1)
        .read_to_end(&mut input)
        .map_err(Error::io("cannot read standard input"))?;
    if input.len() as u64 > MAX_INPUT {
        return Err(Error::Usage(format!(
            "standard input is over {} MiB: encrypt and decrypt are for stored values, not files",
            MAX_INPUT >> 20
        )));
    }
    Ok(input)
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(Error::io("cannot write standard output"))
}

pub(crate) fn encrypt(home: &Home, args: SealArgs) -> Result<()> {
    let input = read_stdin()?;
    write_stdout(&seal::encrypt(
        home,
        &input,
        args.aad.as_bytes(),
        args.form(),
    )?)
}

pub(crate) fn decrypt(home: &Home, args: SealArgs) -> Result<()> {
    let input = read_stdin()?;
    write_stdout(&seal::decrypt(
        home,
        &input,
        args.aad.as_bytes(),
        args.form(),
    )?)
}
