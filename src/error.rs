//! The crate's error type and the one table that maps every kind of failure
//! to a process exit code (documented in README.md, "Exit codes").

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::audit::AuditError;
use crate::bundle::{BundleError, PayloadFailure};
use crate::kdf::KdfError;
use crate::keyring::envelope::EnvelopeError;
use crate::keyring::KeyringError;
use crate::payload::{PayloadError, ZipError};
use crate::secret::SecretError;

/// Exit codes. Scripts match on these; never renumber one.
pub mod exit {
    pub const OK: u8 = 0;
    /// Anything not listed below: I/O, node state, a refused operation.
    pub const FAILURE: u8 = 1;
    /// Bad arguments, a password source that cannot be used, parameters
    /// export refuses.
    pub const USAGE: u8 = 2;
    /// Wrong password or modified header (they cannot be told apart).
    pub const WRONG_PASSWORD: u8 = 3;
    /// Not a bundle, malformed, truncated or modified bundle, invalid payload.
    pub const BAD_BUNDLE: u8 = 4;
    /// The bundle has expired.
    pub const EXPIRED: u8 = 5;
    /// The bundle asks for more KDF resources than this host allows.
    pub const KDF_LIMIT: u8 = 6;
    /// The audit log failed verification.
    pub const AUDIT: u8 = 7;
    /// `keyferry ha check`: at least one preflight check failed (each
    /// failure is on its own line, with its fix).
    pub const PREFLIGHT: u8 = 8;
    /// `keyferry ha status`: a primary runs but the pair needs attention
    /// (replica stopped or not streaming, lag, a slot over the limit).
    pub const DEGRADED: u8 = 9;
    /// `keyferry ha status`: no running primary could be seen.
    pub const DOWN: u8 = 10;
    /// A value could not be opened: sealed under a disabled, destroyed or
    /// unknown key, modified, or not an envelope (the message names the
    /// key id and the fix); also `rewrap` when some values were left
    /// because they could not be opened.
    pub const UNDECRYPTABLE: u8 = 11;
    /// A key change refused because values or nodes still depend on the
    /// key (`disable`/`destroy` while the census shows values under it,
    /// `promote` while a node lacks the key); `--force` overrides.
    pub const IN_USE: u8 = 12;
    /// Refused to protect the pair's roles: `ha guard` (or `ha start`)
    /// will not start a demoted or outranked node as primary, or `ha
    /// failover` will not promote while the old primary may accept writes
    /// (`--force` overrides that one).
    pub const FENCED: u8 = 13;
    /// `keyferry ha status`: split brain: two writable primaries, or a
    /// primary on an older generation than the pair's record.
    pub const SPLIT_BRAIN: u8 = 14;
    /// `keyferry ha status`: the pair's state cannot be told (a node
    /// answers but refuses to say: authentication failed, no rights, too
    /// many clients); distinct from down.
    pub const UNKNOWN: u8 = 15;
    /// A held change (bootstrap, switchover, failover, rejoin) waits on
    /// this node for `--resume` or `--abort`; nothing else was done.
    pub const HELD: u8 = 16;
    /// The journal's record of a held change does not parse (damaged, or
    /// written by another version): nothing is done until it is looked at.
    pub const UNREADABLE_STATE: u8 = 17;
    /// Past the point of no return (the promotion was sent; in a rejoin,
    /// `pg_rewind` ran or may have) the outcome could not be confirmed or
    /// completed: the old primary is kept stopped (or a replica) and
    /// demoted, the journal kept; finish with `--resume`.
    pub const IN_DOUBT: u8 = 18;
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("the bundle's contents are invalid: {0}")]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{context}: {source}")]
    Keyring {
        context: String,
        #[source]
        source: KeyringError,
    },
    #[error("{0}; run `keyferry audit verify` and investigate before changing anything")]
    Audit(#[from] AuditError),
    #[error("no keyring in {0}: run `keyferry init` on the primary, or `keyferry import` on other nodes")]
    NotInitialized(PathBuf),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// Values still sealed under a key, or nodes that lack one: the
    /// message says which and how to proceed.
    #[error("{0}")]
    InUse(String),
    /// `rewrap` finished the values it could open and left these.
    #[error("{failed} value(s) could not be opened and were left untouched (listed above with their ids); fix their keys (`keyferry enable ID`, or import the keyring that holds them) and run `keyferry rewrap` again")]
    Undecryptable { failed: u64 },
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error(transparent)]
    Ha(#[from] crate::ha::Error),
    #[error("preflight failed: {failed} of {total} checks failed; fix them (each failed line says how) and run `keyferry ha check` again")]
    Preflight { failed: usize, total: usize },
    /// One preflight check that an operation cannot do without failed.
    #[error("preflight check `{name}` failed: {message}; fix: {fix}")]
    CheckFailed {
        name: String,
        message: String,
        fix: String,
    },
    /// `ha status` found the pair degraded; the report was printed.
    #[error("ha status: {summary}")]
    Degraded { summary: String },
    /// `ha status` found no running primary; the report was printed.
    #[error("ha status: {summary}")]
    Down { summary: String },
    /// Refused to protect the pair's roles (see [`exit::FENCED`]).
    #[error("{0}")]
    Fenced(String),
    /// `ha status` saw split brain; the report was printed.
    #[error("ha status: {summary}")]
    SplitBrain { summary: String },
    /// `ha status` could not tell the pair's state; the report was printed.
    #[error("ha status: {summary}")]
    Unknown { summary: String },
    /// A held change waits for `--resume`/`--abort` (see [`exit::HELD`]).
    #[error("{0}")]
    Held(String),
    /// A held change's state does not parse (see [`exit::UNREADABLE_STATE`]).
    #[error("{0}")]
    UnreadableState(String),
    /// Past the point of no return, outcome unconfirmed (see
    /// [`exit::IN_DOUBT`]).
    #[error("{0}")]
    InDoubt(String),
    /// A step of an operation failed (not a refusal: something went wrong
    /// while doing it); what it had done was undone.
    #[error("{op}: {step} failed: {cause}; {fix}")]
    Step {
        op: &'static str,
        step: String,
        cause: String,
        fix: String,
    },
    /// A step failed, and undoing what was done before it failed too: both
    /// errors, and where what is left is listed.
    #[error("{error}; undoing it failed too ({undo}): the journal {} lists what is left, and the next keyferry command on this home finishes the undo", journal.display())]
    UndoFailed {
        error: Box<Error>,
        undo: Box<Error>,
        journal: PathBuf,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl From<KdfError> for Error {
    fn from(e: KdfError) -> Self {
        Error::Bundle(BundleError::Kdf(e))
    }
}

impl Error {
    /// An I/O failure, saying what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Secret(SecretError::Random(_)) => exit::FAILURE,
            Error::Secret(SecretError::Read { .. }) => exit::FAILURE,
            Error::Secret(_) => exit::USAGE,
            Error::Bundle(b) => match b {
                BundleError::WrongPasswordOrModifiedHeader => exit::WRONG_PASSWORD,
                BundleError::Expired { .. } => exit::EXPIRED,
                BundleError::Kdf(KdfError::OverLimit { .. } | KdfError::OverFixedLimit { .. }) => {
                    exit::KDF_LIMIT
                }
                BundleError::Kdf(KdfError::Derive(_)) => exit::FAILURE,
                BundleError::Kdf(KdfError::Invalid(_)) => exit::BAD_BUNDLE,
                BundleError::Kdf(_) => exit::USAGE,
                BundleError::Io(_) => exit::FAILURE,
                _ => exit::BAD_BUNDLE,
            },
            Error::Payload(PayloadError::Zip(ZipError::Io(_))) => exit::FAILURE,
            Error::Payload(_) => exit::BAD_BUNDLE,
            Error::Audit(_) => exit::AUDIT,
            Error::Preflight { .. } | Error::CheckFailed { .. } => exit::PREFLIGHT,
            Error::Degraded { .. } => exit::DEGRADED,
            Error::Down { .. } => exit::DOWN,
            Error::Envelope(EnvelopeError::Random(_)) => exit::FAILURE,
            Error::Envelope(_) | Error::Undecryptable { .. } => exit::UNDECRYPTABLE,
            Error::InUse(_) => exit::IN_USE,
            Error::Fenced(_) => exit::FENCED,
            Error::SplitBrain { .. } => exit::SPLIT_BRAIN,
            Error::Unknown { .. } => exit::UNKNOWN,
            Error::Held(_) => exit::HELD,
            Error::UnreadableState(_) => exit::UNREADABLE_STATE,
            Error::InDoubt(_) => exit::IN_DOUBT,
            Error::Step { .. } => exit::FAILURE,
            Error::UndoFailed { .. } => exit::FAILURE,
            Error::Pg(_) => exit::FAILURE,
            Error::Ha(e) if e.is_usage() => exit::USAGE,
            Error::Ha(_) => exit::FAILURE,
            Error::Keyring { .. }
            | Error::NotInitialized(_)
            | Error::Refused(_)
            | Error::Io { .. } => exit::FAILURE,
        }
    }
}

/// A payload parsed from a bundle: the bundle's own failure, or what the
/// parser refused.
impl<E: Into<Error>> From<PayloadFailure<E>> for Error {
    fn from(e: PayloadFailure<E>) -> Self {
        match e {
            PayloadFailure::Bundle(b) => Error::Bundle(b),
            PayloadFailure::Parse(p) => p.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
