//! The PostgreSQL HA pair as a library: its description, addresses,
//! `pg_hba.conf` lines, WAL archive, preflight checks and node roles.
//!
//! This module owns
//!
//! - [`addr`]: what counts as a peer address (an IP literal that can stand in
//!   `pg_hba.conf` as `IP/32` or `IP/128`);
//! - [`hba`]: reading `pg_hba.conf` and editing keyferry's marked block per
//!   peer without touching any other byte of the file;
//! - [`config`]: the pair description `ha.toml`, its validation and its
//!   adjustment when a secondary imports the primary's copy;
//! - [`connstr`]: the multi-host connection string that follows the
//!   primary, in the dialects clients speak;
//! - [`archive`]: recognising WAL archive files and removing only those;
//! - [`autoconf`]: the replica's `postgresql.auto.conf` after a copy from
//!   the primary (the secondary's own, plus only what a standby needs) and
//!   the check that the replica listens where `ha.toml` says;
//! - [`kept`]: the old data directories a bootstrap keeps beside
//!   `pg_data`, found and measured, never touched;
//! - [`firewall`]: the firewall rules opening this node's ports to the
//!   peer, as commands and listings (nftables, firewalld, ufw, netsh);
//! - [`net`]: TCP reachability and "is this address mine";
//! - [`preflight`]: the named checks of the pair's preflight, each
//!   returning a [`preflight::Fact`];
//! - [`prepare`]: the replication role, its schema and the server settings
//!   `ha prepare` makes right, as SQL planned from what the server has;
//! - [`generation`]: the pair's generation table on the primary;
//! - [`evidence`]: what a bounded look at the peer showed, and the one
//!   fail-closed rule that decides whether this node may be primary;
//! - [`history`]: the primary's WAL positions this node last saw;
//! - [`role`]: a node's [`Role`] (`Running Primary`, `Running Replica`,
//!   `Stopped`, `Unreachable`) and the rule that finds it.
//!
//! It depends on nothing else in the crate but [`crate::pg`] (reaching
//! PostgreSQL), [`crate::fmt`] and [`crate::fsutil`]'s free-space probe, so
//! that the layers above (`ops`, `cli`) decide when files are written,
//! backed up and audited. [`addr`], [`hba`] and [`config`] are pure (text
//! in, text out); [`archive`] lists and removes files in the directory it is
//! given and nowhere else; [`kept`] only reads the directories beside
//! `pg_data`; [`net`], [`preflight`] and [`role`] connect to
//! servers and run PostgreSQL's programs but write nothing.
//!
//! Errors are one [`Error`] type for the whole module; its messages name the
//! problem and the way out on one line and never carry secrets.

pub(crate) mod addr;
pub mod archive;
pub(crate) mod autoconf;
pub(crate) mod boot;
pub mod config;
pub mod connstr;
pub(crate) mod datafile;
mod error;
pub(crate) mod evidence;
pub(crate) mod firewall;
pub(crate) mod generation;
pub mod hba;
pub(crate) mod history;
pub mod kept;
pub(crate) mod net;
pub(crate) mod preflight;
pub mod prepare;
pub mod role;
pub(crate) mod service;
pub(crate) mod winsvc;

pub use addr::PeerAddr;
pub use error::{AddrRejection, Error, MarkerProblem};
pub use role::Role;
