//! Effects outside the home whose undo the journal carries without
//! understanding them: starting or stopping the local PostgreSQL server, a
//! row in a table on it. The pair code owns them (`ops::ha::effects`); the
//! node only stores what their undo needs (`kind` plus data, no secret) and
//! hands it back to the [`Effects`] the home was opened with.
//!
//! This keeps the layering one way: `node` knows that an effect exists and
//! must be undone in order with the others, never what a PostgreSQL server
//! is. A home opened without the pair's effects ([`NoEffects`]) refuses to
//! undo one, naming it, instead of skipping it.

use std::fmt;
use std::io;

use serde_json::Value;

/// Undoes and describes the effects of one upper layer.
pub(crate) trait Effects: Send + Sync {
    /// Takes back the effect `kind` described by `data`, if it happened.
    /// Idempotent: it may run for an effect that never happened (a crash
    /// between the journal write and the effect) and may run twice (an
    /// interrupted undo run again).
    fn undo(&self, kind: &str, data: &Value) -> io::Result<()>;
    /// What the undo restores, for messages.
    fn describe(&self, kind: &str, data: &Value) -> String;
    /// Files of the upper layer that live in the home and must pass the
    /// same ownership checks as the node's own.
    fn home_files(&self) -> &'static [&'static str] {
        &[]
    }
}

/// The effects of a home opened by code that has none to undo.
pub(crate) struct NoEffects;

impl Effects for NoEffects {
    fn undo(&self, kind: &str, _data: &Value) -> io::Result<()> {
        Err(io::Error::other(format!(
            "the journal names a `{kind}` effect that this program cannot undo; run the keyferry command that made it"
        )))
    }

    fn describe(&self, kind: &str, _data: &Value) -> String {
        format!("undo a `{kind}` effect")
    }
}

impl fmt::Debug for dyn Effects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Effects")
    }
}
