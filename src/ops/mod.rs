//! One function per operation. This is the only layer that combines the
//! keyring, payload, bundle, HA configuration and the node: everything is
//! read and verified first (a bundle is opened to its last byte before
//! anything on the node changes), then the change goes through the node's
//! one change type ([`crate::node::Change`]), which journals, audits and
//! undoes.

pub mod audit_log;
pub mod config;
pub mod distribution;
pub mod export;
pub mod ha;
pub mod import;
pub mod init;
pub(crate) mod inspect;
pub(crate) mod keys;
pub mod lifecycle;
pub mod nodes;
pub mod progress;
pub mod rewrap;
pub mod seal;
pub(crate) mod selftest;

use std::fs::File;
use std::io;
use std::path::Path;

use crate::error::{Error, Result};
pub use crate::node::{now_unix, Home, HOME_ENV};

pub(crate) use crate::node::details;

/// Opens a bundle file for reading, with messages for the usual mistakes.
pub(crate) fn open_bundle_file(path: &Path) -> Result<File> {
    if path.is_dir() {
        return Err(Error::Usage(format!(
            "{} is a directory, not a bundle file: give the bundle's file name",
            path.display()
        )));
    }
    File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::Usage(format!(
            "{} does not exist: check the name, or copy the bundle here first",
            path.display()
        )),
        _ => Error::io(format!("cannot open {}", path.display()))(e),
    })
}
