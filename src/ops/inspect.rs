//! `keyferry inspect`: what a bundle's header says, without the password.
//! None of it is authenticated until the password is given; the output says
//! so.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use serde::Serialize;

use super::open_bundle_file;
use crate::bundle::{self, Header, Ignored};
use crate::error::Result;
use crate::fmt::fmt_time;
use crate::kdf::KdfParams;

#[derive(Debug, Serialize)]
pub(crate) struct Inspection {
    pub format_version: u8,
    pub armored: bool,
    pub kdf: &'static str,
    pub kdf_memory_kib: u32,
    pub kdf_time: u32,
    pub kdf_lanes: u32,
    pub created: String,
    pub expires: Option<String>,
    pub file_size: u64,
    /// Text around an armored bundle that is not part of it (told on
    /// stderr, not in the JSON).
    #[serde(skip)]
    pub ignored: Ignored,
}

pub(crate) fn inspect(path: &Path) -> Result<Inspection> {
    let file: File = open_bundle_file(path)?;
    let file_size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bundle::Inspected {
        header,
        armored,
        ignored,
    } = bundle::inspect(BufReader::new(file))?;
    let Header {
        kdf: KdfParams {
            memory_kib,
            time,
            lanes,
        },
        created,
        expires,
        ..
    } = header;
    Ok(Inspection {
        format_version: bundle::header::FORMAT_VERSION,
        armored,
        kdf: "argon2id",
        kdf_memory_kib: memory_kib,
        kdf_time: time,
        kdf_lanes: lanes,
        created: fmt_time(created),
        expires: expires.map(fmt_time),
        file_size,
        ignored,
    })
}
