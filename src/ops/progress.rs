//! The one progress observer of keyferry's long operations: bootstrap,
//! rejoin, switchover, failover and rewrap report through it, and ask
//! through it.
//!
//! Invariants:
//! - an operation says what it does ([`Observer::step`]) before it does
//!   it, so the last line an operator sees names the step that failed or
//!   hung;
//! - measured work ([`Observer::work`], [`Observer::progress`]) is shown,
//!   never required: an observer may ignore it;
//! - an observer that cannot ask refuses ([`Observer::confirm`] is `false`
//!   by default), so nothing that needs an operator's yes runs unattended
//!   by accident.

use crate::error::Result;

/// What a measured piece of work counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A copy (`pg_basebackup`).
    Bytes,
    /// Stored values (rewrap).
    Rows,
}

/// Sees an operation's progress; answers its questions.
pub trait Observer {
    /// A step begins (one plain line without a terminal).
    fn step(&mut self, what: &str);
    /// A measured piece of work begins or changes its phase: `label` is
    /// short (a bar's message), `line` what to print without a bar.
    fn work(&mut self, _label: &str, _line: &str, _unit: Unit) {}
    /// How far the measured work is.
    fn progress(&mut self, _done: u64, _total: u64) {}
    /// Something the operator should see that does not stop the work (a
    /// value left untouched, a pause for the replica).
    fn note(&mut self, what: &str) {
        self.step(what);
    }
    /// The measured work is done.
    fn finished(&mut self) {}
    /// Asks the operator; `false` refuses. An observer that cannot ask
    /// refuses.
    fn confirm(&mut self, _question: &str) -> Result<bool> {
        Ok(false)
    }
}

/// An observer that prints each step as one line on standard error and
/// asks nothing.
pub struct StepLines;

impl Observer for StepLines {
    fn step(&mut self, what: &str) {
        eprintln!("{what}");
    }
}

/// An observer that shows nothing (a library caller that only wants the
/// report).
pub struct Quiet;

impl Observer for Quiet {
    fn step(&mut self, _what: &str) {}
    fn note(&mut self, _what: &str) {}
}
