//! Finishing or undoing a change that a killed process left in the journal.
//! The caller holds the home's lock.
//!
//! - Phase `steps`: nothing was committed; every journaled step is undone.
//! - Phase `committing`: committed exactly when the keystore's audit head is
//!   the journal's. If it is, only the journal is left to remove; if not,
//!   the pending record (or the torn start of it) is cut off the log and the
//!   steps are undone. Anything else at the log's end is not ours, and is
//!   left to `keyferry audit repair`.
//! - Phase `irreversible`: its start is on record; recovery counts what the
//!   step got done and records that it was interrupted.
//! - A held change is left to its own command (`--resume`/`--abort`): only
//!   a pending record is settled (cut off, or, when it was the change's
//!   last, the journal removed); a record in the middle of the change (an
//!   irreversible step's start or failure, `goes_on`) keeps the journal.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::change::{commit_audited, cut_log, read_all, undo_journaled, Plans};
use super::journal::{Irreversible, Journal, Phase};
use super::{Home, Node};
use crate::error::{Error, Result};

/// What recovery found and did, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// The interrupted change's action.
    pub action: String,
    /// When it started.
    pub started: String,
    pub outcome: RecoveryOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecoveryOutcome {
    /// It had not committed; its steps were undone.
    Undone { steps: usize },
    /// It had committed; only the journal was left.
    Finished,
    /// A held change (a bootstrap) waits for its own command to resume or
    /// abort it; nothing was touched.
    Held { resume: String, abort: String },
    /// It was interrupted in an irreversible step; how far it got is now on
    /// record.
    Interrupted {
        what: String,
        removed: usize,
        planned: usize,
    },
}

impl fmt::Display for Recovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (action, started) = (&self.action, &self.started);
        match &self.outcome {
            RecoveryOutcome::Undone { steps } => write!(
                f,
                "an interrupted `{action}` (started {started}) had not finished; \
                 its {steps} step(s) were undone and the node is as it was before it"
            ),
            RecoveryOutcome::Held { resume, abort } => write!(
                f,
                "an interrupted `{action}` (started {started}) is not finished: \
                 `{resume}` finishes it, `{abort}` puts the node back as it was"
            ),
            RecoveryOutcome::Finished => write!(
                f,
                "an interrupted `{action}` (started {started}) had completed; its journal was removed"
            ),
            RecoveryOutcome::Interrupted {
                what,
                removed,
                planned,
            } => write!(
                f,
                "an interrupted `{action}` (started {started}) stopped during {what}: \
                 {removed} of {planned} files had been removed; this is now in the audit log"
            ),
        }
    }
}

/// Recovers the home's journal, if there is one.
pub(super) fn recover(home: &Home) -> Result<Option<Recovered>> {
    let path = home.journal_path();
    let journal = Journal::read(&path).map_err(|e| {
        Error::Refused(format!(
            "the journal {} of an interrupted change cannot be read ({e}): \
             look at it, undo by hand what it lists, then move it aside",
            path.display()
        ))
    })?;
    let Some(mut journal) = journal else {
        return Ok(None);
    };
    if let Some(held) = &journal.held {
        if let Phase::Committing {
            log_len,
            log_existed,
            record,
            head_seq,
            head_mac,
            goes_on,
            ..
        } = &journal.phase
        {
            // A record in the middle of the change (an irreversible step's
            // start or failure) ends nothing: the held change waits on.
            let done = committed(home, *head_seq, head_mac)?;
            if done && !goes_on {
                Journal::remove(&path)
                    .map_err(Error::io(format!("cannot remove {}", path.display())))?;
                return Ok(Some(Recovered {
                    action: journal.action,
                    started: journal.started,
                    outcome: RecoveryOutcome::Finished,
                }));
            }
            // Not committed (or committed mid-change): the steps stand,
            // waiting for the operator.
            let mut waiting = journal.clone();
            if done {
                // What the record committed is no longer to be undone.
                waiting.undo.clear();
            } else {
                cut_pending(home, *log_len, *log_existed, record)?;
            }
            waiting.phase = Phase::Steps;
            waiting
                .write(&path)
                .map_err(Error::io(format!("cannot write {}", path.display())))?;
        }
        return Ok(Some(Recovered {
            action: journal.action.clone(),
            started: journal.started.clone(),
            outcome: RecoveryOutcome::Held {
                resume: held.resume.clone(),
                abort: held.abort.clone(),
            },
        }));
    }
    tracing_note(&journal);
    let steps = journal.undo.len();
    let phase = journal.phase.clone();
    let outcome = match &phase {
        Phase::Steps => {
            undo_journaled(&mut journal, &path, home.effects()).map_err(|e| stuck(&path, e))?;
            RecoveryOutcome::Undone { steps }
        }
        Phase::Committing {
            log_len,
            log_existed,
            record,
            head_seq,
            head_mac,
            on_commit,
            on_rollback,
            ..
        } => {
            if committed(home, *head_seq, head_mac)? {
                match on_commit {
                    Some(plan) => interrupted(home, &journal, plan)?,
                    None => RecoveryOutcome::Finished,
                }
            } else {
                cut_pending(home, *log_len, *log_existed, record)?;
                undo_journaled(&mut journal, &path, home.effects()).map_err(|e| stuck(&path, e))?;
                match on_rollback {
                    Some(plan) => interrupted(home, &journal, plan)?,
                    None => RecoveryOutcome::Undone { steps },
                }
            }
        }
        Phase::Irreversible(plan) => interrupted(home, &journal, plan)?,
    };
    Journal::remove(&path).map_err(Error::io(format!("cannot remove {}", path.display())))?;
    Ok(Some(Recovered {
        action: journal.action,
        started: journal.started,
        outcome,
    }))
}

/// Whether the keystore's audit head is the pending record's: the commit
/// point of a change.
fn committed(home: &Home, head_seq: u64, head_mac: &str) -> Result<bool> {
    if !home.has_keystore() {
        return Ok(false);
    }
    let head = home.load_keystore()?.node.audit_head;
    Ok(head.seq == head_seq && head.mac_hex() == head_mac)
}

/// Counts what an interrupted irreversible step got done and records it.
fn interrupted(home: &Home, journal: &Journal, plan: &Irreversible) -> Result<RecoveryOutcome> {
    let removed = plan
        .removes
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_err())
        .count();
    record_interrupted(home, journal, &plan.what, removed, plan.removes.len())?;
    Ok(RecoveryOutcome::Interrupted {
        what: plan.what.clone(),
        removed,
        planned: plan.removes.len(),
    })
}

fn tracing_note(journal: &Journal) {
    tracing::info!(
        action = %journal.action,
        started = %journal.started,
        steps = journal.undo.len(),
        "recovering an interrupted change"
    );
}

fn stuck(path: &std::path::Path, e: Error) -> Error {
    Error::Refused(format!(
        "an interrupted change cannot be undone: {e}; fix that, then run keyferry again \
         (the journal {} lists the steps)",
        path.display()
    ))
}

/// Cuts the uncommitted record off the log: only bytes that are the
/// record, or a torn start of it, are ever removed.
fn cut_pending(home: &Home, log_len: u64, log_existed: bool, record: &str) -> Result<()> {
    let log_path = home.audit_path();
    let log = match read_all(&log_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(format!("cannot read {}", log_path.display()))(e)),
    };
    let len = usize::try_from(log_len).unwrap_or(usize::MAX);
    let ours = log.len() >= len && record.as_bytes().starts_with(&log[len..]);
    if !ours {
        return Err(Error::Refused(format!(
            "the audit log {} does not end as the interrupted change left it: \
             run `keyferry audit repair` to see and resolve it",
            log_path.display()
        )));
    }
    if log.len() == len && (log_existed || len > 0) {
        return Ok(());
    }
    cut_log(&log_path, log_len, log_existed)
        .map_err(Error::io(format!("cannot cut back {}", log_path.display())))
}

fn record_interrupted(
    home: &Home,
    journal: &Journal,
    what: &str,
    removed: usize,
    planned: usize,
) -> Result<()> {
    if !home.has_keystore() {
        return Ok(());
    }
    let store = home.load_keystore()?;
    home.verify_audit(&store)?;
    let mut details = BTreeMap::new();
    details.insert("outcome".into(), Value::from("interrupted"));
    details.insert("step".into(), Value::from(what));
    details.insert("removed".into(), Value::from(removed));
    details.insert("planned".into(), Value::from(planned));
    details.insert("started".into(), Value::from(journal.started.clone()));
    let mut node = Node::for_recovery(home.clone(), store);
    let mut pending = Journal::new(&journal.action, journal.started.clone());
    let keystore = node
        .keystore()
        .cloned()
        .expect("for_recovery has a keystore");
    commit_audited(
        &mut node,
        &mut pending,
        keystore,
        &journal.action,
        details,
        Plans::default(),
    )?;
    Ok(())
}
