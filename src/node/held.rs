//! The typed state of a held change (bootstrap, switchover, failover,
//! rejoin): a phase enum with one transition table, plus the operation's
//! own data, kept versioned in the journal.
//!
//! Invariants:
//! - a phase changes only through [`crate::node::Change::advance`], which
//!   checks the pair against [`HeldPhase::TRANSITIONS`] and journals the new
//!   phase before returning, so the effect that belongs to a phase is never
//!   issued before the journal says the change is in it;
//! - entering a phase past the point of no return ([`HeldPhase::no_return`])
//!   forgets the undos journaled so far in the same journal write: from
//!   there the change only goes forward (`--resume`), never back;
//! - a state that does not parse, or was written with another version, is
//!   [`crate::error::Error::UnreadableState`], never a default.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The phases of one held operation.
pub(crate) trait HeldPhase:
    Copy + Eq + Debug + Serialize + DeserializeOwned + Send + 'static
{
    /// The state's version in the journal; raise it when the phases or the
    /// data change shape.
    const VERSION: u32;
    /// Every allowed (from, to): the one transition table.
    const TRANSITIONS: &'static [(Self, Self)];
    /// From this phase on the change can only be finished, never undone.
    fn no_return(self) -> bool;
    /// The phase as the operator reads it.
    fn name(self) -> &'static str;
}

/// A held change's phase and data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "P: Serialize, D: Serialize"))]
#[serde(bound(deserialize = "P: DeserializeOwned, D: DeserializeOwned"))]
pub(crate) struct Machine<P, D> {
    phase: P,
    /// The operation's own record of how far it got (no secret).
    pub data: D,
}

impl<P: HeldPhase, D> Machine<P, D> {
    pub(crate) fn new(initial: P, data: D) -> Self {
        Self {
            phase: initial,
            data,
        }
    }

    pub(crate) fn phase(&self) -> P {
        self.phase
    }

    /// Whether the table allows `to` from the current phase.
    pub(crate) fn allows(&self, to: P) -> bool {
        P::TRANSITIONS.contains(&(self.phase, to))
    }

    /// Moves to `to`; only [`crate::node::Change::advance`] calls this,
    /// after checking the table.
    pub(super) fn enter(&mut self, to: P) {
        self.phase = to;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A three-phase machine for the change type's tests.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub(crate) enum Toy {
        Begun,
        Done,
        Committed,
    }

    impl HeldPhase for Toy {
        const VERSION: u32 = 1;
        const TRANSITIONS: &'static [(Self, Self)] =
            &[(Toy::Begun, Toy::Done), (Toy::Done, Toy::Committed)];
        fn no_return(self) -> bool {
            self == Toy::Committed
        }
        fn name(self) -> &'static str {
            match self {
                Toy::Begun => "begun",
                Toy::Done => "done",
                Toy::Committed => "committed",
            }
        }
    }

    #[test]
    fn only_the_table_s_transitions_are_allowed() {
        let m = Machine::new(Toy::Begun, ());
        assert!(m.allows(Toy::Done));
        assert!(!m.allows(Toy::Committed));
        assert!(!m.allows(Toy::Begun));
    }
}
