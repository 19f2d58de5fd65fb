//! keyferry: move encryption keys between the hosts of a privileged-access
//! server pair in password-sealed bundles, rotate them with an audit trail,
//! and operate the pair's PostgreSQL replication.
//!
//! Data flows one way: `cli` -> `ops` -> (`keyring`, `payload`, `audit`,
//! `ha`, `pg`) -> `bundle` -> `fsutil`; `ha` reaches PostgreSQL through
//! `pg`. Lower layers never call upper ones; cryptography never touches the
//! file system and the file system layer never touches cryptography.

pub mod actor;
pub mod aead;
pub mod audit;
pub mod bundle;
pub mod cli;
pub mod error;
mod failpoint;
pub mod fmt;
pub mod fsutil;
pub mod ha;
pub mod kdf;
pub mod keyring;
pub mod node;
pub mod ops;
pub mod payload;
pub mod pg;
pub mod secret;

pub use error::{Error, Result};
