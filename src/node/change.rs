//! The one change type: every operation that changes a node goes through a
//! [`Change`] (`node.begin(action, details)` → steps with their undo →
//! irreversible steps → `finish`), and the audit record states how it
//! ended.
//!
//! Order of writes, and why a crash at any point is recoverable:
//!
//! 1. `begin` writes the journal (phase `steps`, no undo yet);
//! 2. each step journals its undo, then applies; a failure undoes every
//!    step so far, newest first, and removes the journal;
//! 3. the commit appends the audit record (synced) after journaling it as
//!    pending, then replaces the keystore carrying the new audit head; the
//!    keystore rename is the commit point. A crash before it leaves a
//!    journal that names the record, which recovery cuts off again before
//!    undoing the steps; a crash after it leaves a keystore whose head
//!    matches the journal, and recovery only removes the journal;
//! 4. an irreversible step is preceded by a commit whose record says it
//!    started (an operation whose record cannot be written does not
//!    happen), journals what it is about to remove, and is followed by a
//!    record of its outcome: done, or failed after how much. Recovery
//!    counts what an interrupted one got done and records that.
//!
//! A node without a keystore (a secondary described before its keys are
//! imported) has no audit log: its changes are journaled and undone in the
//! same way, and the receipt says they were not audited.
//!
//! Dropping an unfinished change undoes it (best effort; what cannot be
//! undone stays in the journal for the next run).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::effects::Effects;
use super::held::{HeldPhase, Machine};
use super::journal::{Held, Irreversible, Journal, Phase, Undo};
use super::keystore::{Keystore, NodeState};
use super::{file_stamp, now_unix, Node};
use crate::audit::{self, Actor, AuditHead};
use crate::error::{Error, Result};
use crate::fsutil::{self, Ownership, Replacement, Staged};
use crate::keyring::{KeyMaterial, Keyring};

/// How a change ended, for the caller's report.
#[derive(Debug, Clone, Default)]
pub(crate) struct Receipt {
    /// Whether the change was audited (the node has a keystore).
    pub audited: bool,
    /// The keystore's previous version, when the keys changed.
    pub keystore_backup: Option<PathBuf>,
    /// Old backups removed to keep the home's limit per file.
    pub pruned: usize,
}

/// What an irreversible step got done, for its outcome record.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    details: BTreeMap<String, Value>,
}

impl Progress {
    /// Records a fact about how far the step got (counts, not secrets).
    pub(crate) fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.details.insert(key.to_owned(), value.into());
    }
}

/// What a held change is taken up again for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reopen {
    /// To go on from where it stopped.
    Resume,
    /// To undo it (or finish an interrupted undo).
    Abort,
}

/// A change to a node under way. See the module documentation.
pub(crate) struct Change<'n> {
    node: &'n mut Node,
    /// Tags the change's staged files, so recovery can find them.
    tag: String,
    journal: Journal,
    action: String,
    details: BTreeMap<String, Value>,
    /// Replaces the keystore's keyring when the change commits.
    keyring: Option<Keyring>,
    /// Raises the serial of the last distribution taken, with the keyring.
    distribution_serial: Option<u64>,
    receipt: Receipt,
    /// The irreversible step that ran, whose outcome is not yet on record.
    ran: Option<Irreversible>,
    /// Backups kept per file, and the files this change backed up.
    keep: usize,
    backed_up: std::collections::BTreeSet<String>,
    open: bool,
    /// Past [`Change::point_of_no_return`]: a failure undoes the later
    /// steps but keeps the (held) journal, for the command that resumes it.
    no_return: bool,
}

impl Node {
    /// Starts a change named `action` (the audit record's action), with the
    /// record's details so far.
    pub(crate) fn begin(
        &mut self,
        action: &str,
        details: BTreeMap<String, Value>,
    ) -> Result<Change<'_>> {
        self.begin_with(action, details, None)
    }

    /// Starts a held change: one that recovery never undoes on its own
    /// (see [`Held`]); its command resumes or aborts it.
    pub(crate) fn begin_held(
        &mut self,
        action: &str,
        details: BTreeMap<String, Value>,
        resume: &str,
        abort: &str,
    ) -> Result<Change<'_>> {
        let held = Held {
            resume: resume.to_owned(),
            abort: abort.to_owned(),
            state: Value::Null,
            state_version: 0,
            aborting: false,
            details: details.clone(),
        };
        self.begin_with(action, details, Some(held))
    }

    /// The held change `action` an interrupted run left, taken up again:
    /// its steps are those of the journal, so [`Change::abort`] undoes them
    /// and [`Change::finish`] commits them. An interrupted `--abort` can
    /// only be taken up by another `--abort`: what it undid is gone, and
    /// going forward would act on the old state.
    pub(crate) fn reopen_held(&mut self, action: &str, why: Reopen) -> Result<Option<Change<'_>>> {
        let path = self.home.journal_path();
        let journal = Journal::read(&path).map_err(|e| {
            Error::UnreadableState(format!(
                "the journal {} cannot be read ({e}): nothing was done; keep it for investigation, put the node back by hand as it lists, then move it aside",
                path.display()
            ))
        })?;
        let Some(journal) = journal.filter(|j| j.action == action && j.held.is_some()) else {
            return Ok(None);
        };
        let held = journal.held.as_ref().expect("filtered on held");
        if why == Reopen::Resume && held.aborting {
            return Err(Error::Held(format!(
                "an `{}` of the interrupted `{action}` did not finish: run `{}` again to finish undoing it",
                held.abort, held.abort
            )));
        }
        let details = held.details.clone();
        Ok(Some(self.new_change(journal, details)?))
    }

    fn begin_with(
        &mut self,
        action: &str,
        details: BTreeMap<String, Value>,
        held: Option<Held>,
    ) -> Result<Change<'_>> {
        self.home.backups_keep()?;
        let path = self.home.journal_path();
        if let Ok(Some(pending)) = Journal::read(&path) {
            return Err(match &pending.held {
                Some(h) => Error::Held(format!(
                    "an interrupted `{}` (started {}) is not finished: run `{}` to finish it or `{}` to put the node back as it was, then try again",
                    pending.action, pending.started, h.resume, h.abort
                )),
                None => Error::Refused(format!(
                    "the journal {} of an unfinished change is in the way; run keyferry again to recover it",
                    path.display()
                )),
            });
        }
        let mut journal = Journal::new(action, crate::fmt::fmt_time(now_unix()));
        journal.held = held;
        journal.write(&path).map_err(Error::io(format!(
            "cannot write the journal {}; nothing was changed",
            path.display()
        )))?;
        self.new_change(journal, details)
    }

    fn new_change(
        &mut self,
        journal: Journal,
        details: BTreeMap<String, Value>,
    ) -> Result<Change<'_>> {
        let keep = self.home.backups_keep()?;
        let action = journal.action.clone();
        let mut tag = [0u8; 6];
        getrandom::fill(&mut tag)
            .map_err(|e| Error::Refused(format!("the system's random source failed: {e}")))?;
        Ok(Change {
            node: self,
            tag: format!("{}-", hex::encode(tag)),
            journal,
            action,
            details,
            keyring: None,
            distribution_serial: None,
            receipt: Receipt::default(),
            ran: None,
            keep,
            backed_up: Default::default(),
            open: true,
            no_return: false,
        })
    }
}

impl Change<'_> {
    /// A held change's typed state. A state that does not parse, or was
    /// written in another shape, is a refusal: never a default.
    pub(crate) fn load<P: HeldPhase, D: DeserializeOwned>(&self) -> Result<Machine<P, D>> {
        let path = self.node.home.journal_path();
        let unreadable = |why: String| {
            Error::UnreadableState(format!(
                "the state of the interrupted `{}` in {} cannot be read ({why}): nothing was done; keep the file for investigation and put the node back by hand",
                self.action,
                path.display()
            ))
        };
        let held = self
            .journal
            .held
            .as_ref()
            .ok_or_else(|| unreadable("it is not a held change".into()))?;
        if held.state_version != P::VERSION {
            return Err(unreadable(format!(
                "version {}, this keyferry reads version {}",
                held.state_version,
                P::VERSION
            )));
        }
        serde_json::from_value(held.state.clone()).map_err(|e| unreadable(e.to_string()))
    }

    /// Journals the held change's state as it is now (same phase).
    pub(crate) fn save<P: HeldPhase, D: Serialize>(&mut self, state: &Machine<P, D>) -> Result<()> {
        let value = serde_json::to_value(state).map_err(|e| {
            Error::Refused(format!("cannot record the state of `{}`: {e}", self.action))
        })?;
        if let Some(held) = &mut self.journal.held {
            held.state = value;
            held.state_version = P::VERSION;
        }
        self.write_journal()
    }

    /// Moves the held change to phase `to` (the table must allow it) and
    /// journals it before returning; entering a phase past the point of no
    /// return forgets the undos so far in that same write.
    pub(crate) fn advance<P: HeldPhase, D: Serialize>(
        &mut self,
        state: &mut Machine<P, D>,
        to: P,
    ) -> Result<()> {
        if !state.allows(to) {
            return Err(Error::Refused(format!(
                "internal error: `{}` cannot go from {} to {}; nothing more was done, the journal is kept",
                self.action,
                state.phase().name(),
                to.name()
            )));
        }
        state.enter(to);
        if to.no_return() && !self.no_return {
            self.journal.undo.clear();
            self.no_return = true;
        }
        self.save(state)?;
        crate::failpoint::failpoint!("{}:{}", self.action, to.name());
        Ok(())
    }

    /// Adds a fact to the change's audit record (kept in a held change's
    /// journal, for the run that resumes it).
    pub(crate) fn set_detail(&mut self, key: &str, value: impl Into<Value>) {
        self.details.insert(key.to_owned(), value.into());
        if let Some(held) = &mut self.journal.held {
            held.details = self.details.clone();
        }
    }

    /// The keyring the keystore will hold when the change commits. The
    /// audit record also gets the key ids it holds and its primary
    /// (`key_ids_after`, `primary_after`), so that a keyring state named
    /// by its fingerprint can later be told apart by its keys (the node
    /// registry works out which keys a remote host holds from them).
    pub(crate) fn set_keyring(&mut self, keyring: Keyring) {
        self.set_detail("key_ids_after", keyring.held_ids());
        self.set_detail("primary_after", keyring.primary());
        self.keyring = Some(keyring);
    }

    /// Records, when the change commits, that the distribution with this
    /// serial was taken (`nodes sync`): an older one is refused from then
    /// on. The serial is kept in the keystore with the keys, so both change
    /// in one atomic replacement.
    pub(crate) fn set_distribution_serial(&mut self, serial: u64) {
        self.set_detail("distribution_serial", serial);
        self.distribution_serial = Some(serial);
    }

    /// Journals `undo`, then runs `apply`. On failure every step so far is
    /// undone and the error returned.
    pub(crate) fn step<T>(&mut self, undo: Undo, apply: impl FnOnce() -> Result<T>) -> Result<T> {
        self.journal.undo.push(undo);
        if let Err(e) = self.write_journal() {
            self.journal.undo.pop();
            return Err(self.fail(e));
        }
        crate::failpoint::failpoint!("{}:step-{}", self.action, self.journal.undo.len());
        apply().map_err(|e| self.fail(e))
    }

    /// A step whose effect lies outside the home (see [`Effects`]): its
    /// undo is `kind` with `data`, undone by the home's effects.
    pub(crate) fn external_step<T>(
        &mut self,
        kind: &str,
        data: Value,
        apply: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.step(
            Undo::External {
                kind: kind.to_owned(),
                data,
            },
            apply,
        )
    }

    /// A staged file in `dir` for this change (to be persisted by a step);
    /// a crash before then leaves nothing behind that recovery does not
    /// remove.
    pub(crate) fn stage_in(&mut self, dir: &Path) -> Result<Staged> {
        let what = format!("cannot write in {}", dir.display());
        let known = self
            .journal
            .undo
            .iter()
            .any(|u| matches!(u, Undo::Sweep { dir: d, .. } if std::path::absolute(dir).is_ok_and(|a| a == *d)));
        if !known {
            let undo = Undo::sweep(dir, &self.tag)
                .map_err(Error::io(what.clone()))
                .map_err(|e| self.fail(e))?;
            self.step(undo, || Ok(()))?;
        }
        Staged::new_tagged_in(dir, &self.tag)
            .map_err(Error::io(what))
            .map_err(|e| self.fail(e))
    }

    /// Replaces (or creates) `target` with `data`, backing up the old
    /// version into the home's backups: a step whose undo puts the old
    /// version back (or removes the new file). Returns the backup's path.
    pub(crate) fn replace_file(
        &mut self,
        target: &Path,
        data: &mut dyn Read,
        ownership: Ownership,
    ) -> Result<Option<PathBuf>> {
        let what = format!("cannot write {}; nothing was changed", target.display());
        let staged = self.stage_in(fsutil::parent_dir(target))?;
        let replacement = Replacement::prepare(
            target,
            staged,
            data,
            &self.node.home.backup_dir(),
            &file_stamp(now_unix()),
            ownership,
        )
        .map_err(Error::io(what.clone()))
        .map_err(|e| self.fail(e))?;
        let undo = match replacement.backup() {
            Some(backup) => Undo::restore(target, backup),
            None => Undo::remove_copy_of(target, replacement.staged_path()),
        }
        .map_err(Error::io(what.clone()))
        .map_err(|e| self.fail(e))?;
        let backup = replacement.backup().map(Path::to_path_buf);
        self.step(undo, || replacement.commit().map_err(Error::io(what)))?;
        if backup.is_some() {
            if let Some(name) = target.file_name() {
                self.backed_up.insert(name.to_string_lossy().into_owned());
            }
        }
        Ok(backup)
    }

    /// Keeps `data` (a file outside the home that a step is about to
    /// replace, read by the caller without following links) among the
    /// home's backups, owner-only, bounded like the others; returns its
    /// path for the step's undo.
    pub(crate) fn back_up(&mut self, name: &str, data: &[u8]) -> Result<PathBuf> {
        let backup = fsutil::backup_from(
            &mut &data[..],
            name,
            &self.node.home.backup_dir(),
            &file_stamp(now_unix()),
        )
        .map_err(Error::io(format!(
            "cannot keep the previous {name} among the home's backups; nothing was changed"
        )))
        .map_err(|e| self.fail(e))?;
        self.backed_up.insert(name.to_owned());
        Ok(backup)
    }

    /// Moves the staged file to `target`, which must not exist: a step
    /// whose undo removes it again.
    pub(crate) fn create_file(&mut self, staged: Staged, target: &Path) -> Result<()> {
        let what = format!("cannot create {}", target.display());
        let undo = Undo::remove_copy_of(target, staged.path())
            .map_err(Error::io(what.clone()))
            .map_err(|e| self.fail(e))?;
        self.step(undo, || staged.persist_new(target).map_err(Error::io(what)))
    }

    /// Renames `from` to `to` (a directory or a file; `to` must not
    /// exist): a step whose undo moves it back.
    pub(crate) fn rename(&mut self, from: &Path, to: &Path) -> Result<()> {
        let what = format!("cannot move {} to {}", from.display(), to.display());
        let undo = Undo::move_back(from, to)
            .map_err(Error::io(what.clone()))
            .map_err(|e| self.fail(e))?;
        self.step(undo, || {
            fs::rename(from, to)
                .and_then(|()| fsutil::sync_parent(to))
                .map_err(Error::io(what))
        })
    }

    /// As [`Change::rename`], with the move done by `mv` (which checks,
    /// say, that `from` is still the directory it was): a step whose undo
    /// moves it back.
    pub(crate) fn rename_with(
        &mut self,
        from: &Path,
        to: &Path,
        mv: impl FnOnce() -> io::Result<()>,
    ) -> Result<()> {
        let what = format!("cannot move {} to {}", from.display(), to.display());
        let undo = Undo::move_back(from, to)
            .map_err(Error::io(what.clone()))
            .map_err(|e| self.fail(e))?;
        self.step(undo, || {
            mv().and_then(|()| fsutil::sync_parent(to))
                .map_err(Error::io(what))
        })
    }

    /// Runs an effect that cannot be undone. What was done so far is
    /// committed first, with a record that it started; `removes` lists the
    /// files it will remove, so that an interrupted run can be counted.
    /// Afterwards the change goes on; a failure is recorded (with what
    /// `apply` noted in its [`Progress`]) before it is returned.
    pub(crate) fn irreversible<T>(
        &mut self,
        what: &str,
        removes: Vec<PathBuf>,
        apply: impl FnOnce(&mut Progress) -> Result<T>,
    ) -> Result<T> {
        let plan = Irreversible {
            what: what.to_owned(),
            removes,
        };
        let mut started = self.details.clone();
        started.insert("step".into(), Value::from(what));
        self.commit("started", started, Some(plan.clone()))?;
        self.journal.phase = Phase::Irreversible(plan.clone());
        self.write_journal()?;
        self.ran = Some(plan);
        let mut progress = Progress::default();
        let result = apply(&mut progress);
        self.journal.phase = Phase::Steps;
        self.details.insert("step".into(), Value::from(what));
        self.details.extend(progress.details);
        if let Err(e) = result {
            let mut failed = self.details.clone();
            failed.insert("error".into(), Value::from(e.to_string()));
            // The step's own error is what the operator must see, whether or
            // not its outcome could be recorded now.
            return Err(match self.commit("failed", failed, None) {
                Ok(()) if self.journal.held.is_some() => {
                    // A held change is not over: its journal (and state)
                    // stays for the command that resumes it.
                    match self.write_journal() {
                        Ok(()) => e,
                        Err(unwritten) => Error::Refused(format!("{e}; and {unwritten}")),
                    }
                }
                Ok(()) => {
                    // Committed: a journal left behind is removed next run.
                    let _ = self.close_journal();
                    e
                }
                Err(unrecorded) => Error::Refused(format!("{e}; and {unrecorded}")),
            });
        }
        result
    }

    /// Commits the change with the outcome "done" and ends it.
    pub fn finish(mut self) -> Result<Receipt> {
        let details = self.details.clone();
        self.commit("done", details, None)?;
        self.close_journal()?;
        let backup_dir = self.node.home.backup_dir();
        self.receipt.pruned = self
            .backed_up
            .iter()
            .map(|name| super::backups::prune_file(&backup_dir, name, self.keep))
            .sum();
        Ok(std::mem::take(&mut self.receipt))
    }

    /// Ends this run of a held change without undoing or committing it:
    /// the journal stays, and the change's own command resumes it.
    pub(crate) fn suspend(mut self) {
        self.open = false;
    }

    /// Undoes every step so far and ends the change. The journal says an
    /// abort is under way first, and loses each undo once it is done, so
    /// an interrupted abort is finished by running it again.
    pub(crate) fn abort(mut self) -> Result<()> {
        if let Some(held) = &mut self.journal.held {
            held.aborting = true;
            self.write_journal()?;
        }
        self.rollback()
    }

    fn write_journal(&self) -> Result<()> {
        let path = self.node.home.journal_path();
        self.journal.write(&path).map_err(Error::io(format!(
            "cannot write the journal {}",
            path.display()
        )))
    }

    fn close_journal(&mut self) -> Result<()> {
        self.open = false;
        let path = self.node.home.journal_path();
        // The change is committed: a journal left behind is harmless (the
        // next run sees the keystore at its head and removes it).
        Journal::remove(&path).map_err(Error::io(format!(
            "the change is done, but the journal {} could not be removed; the next keyferry command removes it",
            path.display()
        )))
    }

    /// Undoes what was done after a failure and returns the error to report.
    fn fail(&mut self, e: Error) -> Error {
        match self.rollback() {
            Ok(()) => e,
            Err(undo) => Error::UndoFailed {
                error: Box::new(e),
                undo: Box::new(undo),
                journal: self.node.home.journal_path(),
            },
        }
    }

    fn rollback(&mut self) -> Result<()> {
        self.open = false;
        let path = self.node.home.journal_path();
        undo_journaled(&mut self.journal, &path, self.node.home.effects())?;
        if self.no_return && self.journal.held.is_some() {
            return self.write_journal();
        }
        Journal::remove(&path).map_err(Error::io(format!("cannot remove {}", path.display())))
    }

    /// Appends the record and replaces the keystore with the new head; on
    /// failure undoes everything. Without a keystore (and no keyring to
    /// install) there is nothing to audit: the steps so far simply stand.
    fn commit(
        &mut self,
        outcome: &str,
        mut details: BTreeMap<String, Value>,
        on_commit: Option<Irreversible>,
    ) -> Result<()> {
        details.insert("outcome".into(), Value::from(outcome));
        let serial = self.distribution_serial.take();
        let new_store = match (self.node.store.clone(), self.keyring.take()) {
            (Some(old), keyring) => Keystore {
                keyring: keyring.unwrap_or(old.keyring),
                node: with_host_key(old.node).map_err(|e| self.fail(e))?,
            },
            (None, Some(keyring)) => Keystore {
                keyring,
                node: new_node_state().map_err(|e| self.fail(e))?,
            },
            (None, None) => {
                self.journal.undo.clear();
                return Ok(());
            }
        };
        let mut new_store = new_store;
        if let Some(serial) = serial {
            new_store.node.distribution_serial = new_store.node.distribution_serial.max(serial);
        }
        let plans = Plans {
            on_commit,
            on_rollback: self.ran.take(),
            goes_on: outcome != "done",
        };
        let after_irreversible = plans.on_rollback.is_some();
        let backup = commit_audited(
            self.node,
            &mut self.journal,
            new_store,
            &self.action,
            details,
            plans,
        )
        .map_err(|e| {
            if after_irreversible {
                // What the irreversible step did is not on record yet: the
                // journal (which names the step) stays, and the next run
                // counts it and records it as interrupted.
                self.open = false;
                Error::Refused(format!(
                    "{e}; the removal that ran is recorded by the next keyferry command on this home"
                ))
            } else {
                self.fail(e)
            }
        })?;
        if backup.is_some() {
            self.receipt.keystore_backup = backup;
            self.backed_up.insert(super::KEYRING_FILE.to_owned());
        }
        self.receipt.audited = true;
        self.journal.undo.clear();
        self.journal.phase = Phase::Steps;
        Ok(())
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if self.open {
            // An error between begin and finish: undo; if that fails, the
            // journal stays for the next run.
            let _ = self.rollback();
        }
    }
}

/// Runs every undo, newest first, dropping each from the journal (written
/// at once) when it is done; stops at the first that fails, which the
/// journal still lists with those before it. An undo run again after an
/// interruption therefore starts where the last one stopped.
pub(super) fn undo_journaled(
    journal: &mut Journal,
    path: &Path,
    effects: &dyn Effects,
) -> Result<()> {
    while let Some(u) = journal.undo.last() {
        u.apply(effects)
            .map_err(|e| Error::Refused(format!("cannot {}: {e}", u.describe(effects))))?;
        journal.undo.pop();
        crate::failpoint::failpoint!("{}:undo-{}", journal.action, journal.undo.len() + 1);
        if !journal.undo.is_empty() {
            journal.write(path).map_err(Error::io(format!(
                "cannot write the journal {}",
                path.display()
            )))?;
        }
    }
    Ok(())
}

/// Fresh node-local state for a node that has none yet.
fn new_node_state() -> Result<NodeState> {
    with_host_key(NodeState {
        audit_key: KeyMaterial::generate().map_err(|source| Error::Keyring {
            context: "cannot create the audit key".into(),
            source,
        })?,
        audit_head: AuditHead::genesis(),
        host_key: None,
        distribution_serial: 0,
    })
}

/// The node's state with a host key: a keystore written before host keys
/// existed gets one with its next change.
fn with_host_key(mut state: NodeState) -> Result<NodeState> {
    if state.host_key.is_none() {
        state.host_key = Some(
            crate::bundle::keys::HostSecret::generate()
                .map_err(|e| Error::Refused(format!("cannot create the host key: {e}")))?,
        );
    }
    Ok(state)
}

/// The irreversible steps around a commit (see [`Phase::Committing`]).
#[derive(Default)]
pub(super) struct Plans {
    pub on_commit: Option<Irreversible>,
    pub on_rollback: Option<Irreversible>,
    /// The change goes on after the record (see [`Phase::Committing`]).
    pub goes_on: bool,
}

/// Appends the record for `store` (moving its head on) and replaces the
/// keystore: steps 3 of the module documentation. Returns the keystore
/// backup, if one was made. On failure the log is cut back; the caller
/// undoes its steps.
pub(super) fn commit_audited(
    node: &mut Node,
    journal: &mut Journal,
    mut store: Keystore,
    action: &str,
    details: BTreeMap<String, Value>,
    plans: Plans,
) -> Result<Option<PathBuf>> {
    let home = node.home.clone();
    let now = now_unix();
    let (record, head) = audit::next_record(
        store.node.audit_key.as_bytes(),
        &store.node.audit_head,
        &Actor::current(),
        &crate::fmt::fmt_time(now),
        action,
        details,
    );
    store.node.audit_head = head;
    let line = audit::to_line(&record);
    let log_path = home.audit_path();
    let (log_len, log_existed) = match fs::metadata(&log_path) {
        Ok(m) => (m.len(), true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (0, false),
        Err(e) => return Err(Error::io(format!("cannot read {}", log_path.display()))(e)),
    };
    journal.phase = Phase::Committing {
        log_len,
        log_existed,
        record: String::from_utf8_lossy(&line).into_owned(),
        head_seq: head.seq,
        head_mac: head.mac_hex(),
        on_commit: plans.on_commit,
        on_rollback: plans.on_rollback,
        goes_on: plans.goes_on,
    };
    let journal_path = home.journal_path();
    journal.write(&journal_path).map_err(Error::io(format!(
        "cannot write the journal {}; nothing was changed",
        journal_path.display()
    )))?;
    append_record(&log_path, &line).map_err(|e| {
        let _ = cut_log(&log_path, log_len, log_existed);
        Error::io(format!(
            "cannot write the audit record to {}; nothing was changed",
            log_path.display()
        ))(e)
    })?;
    let keys_changed = node
        .store
        .as_ref()
        .is_none_or(|o| o.keyring != store.keyring);
    let backup = write_keystore(&home, &store, keys_changed, now).inspect_err(|_| {
        let _ = cut_log(&log_path, log_len, log_existed);
    })?;
    node.store = Some(store);
    Ok(backup)
}

fn append_record(path: &Path, line: &[u8]) -> io::Result<()> {
    let mut file = fsutil::open_append_private(path)?;
    file.seek(io::SeekFrom::End(0))?;
    file.write_all(line)?;
    file.sync_all()
}

/// Cuts the log back to `len` bytes (removes it when it did not exist).
pub(super) fn cut_log(path: &Path, len: u64, existed: bool) -> io::Result<()> {
    if !existed && len == 0 {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => fsutil::sync_parent(path),
        };
    }
    let f = fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

/// Replaces the keystore atomically; backs up the old one first when the
/// keys change (a new audit head alone is not worth a copy of the keys).
fn write_keystore(
    home: &super::Home,
    store: &Keystore,
    keys_changed: bool,
    now: u64,
) -> Result<Option<PathBuf>> {
    let path = home.keyring_path();
    let what = format!("cannot write {}; nothing was changed", path.display());
    let backup = if keys_changed && path.exists() {
        Some(
            fsutil::backup_file(&path, &home.backup_dir(), &file_stamp(now))
                .map_err(Error::io(what.clone()))?,
        )
    } else {
        None
    };
    let written = Staged::new_in(home.root()).and_then(|mut staged| {
        staged.write_all(&store.to_json())?;
        staged.persist_replace(&path)
    });
    if let Err(e) = written {
        // Nothing was changed, so nothing was backed up: a backup of the
        // unchanged keystore would only be one more copy of the keys.
        if let Some(b) = &backup {
            let _ = fs::remove_file(b).and_then(|()| fsutil::sync_parent(b));
        }
        return Err(Error::io(what)(e));
    }
    Ok(backup)
}

/// Reads the whole file, for recovery's look at the log's tail.
pub(super) fn read_all(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::node::held::tests::Toy;
    use crate::node::{Home, Reopen};

    /// Effects of kind `count` that succeed and count their undos, and of
    /// kind `fail` that fail while `failing` is set.
    #[derive(Default)]
    struct Counting {
        undone: AtomicUsize,
        failing: std::sync::atomic::AtomicBool,
    }

    impl Effects for Counting {
        fn undo(&self, kind: &str, _data: &Value) -> io::Result<()> {
            if kind == "fail" && self.failing.load(Ordering::SeqCst) {
                return Err(io::Error::other("still failing"));
            }
            self.undone.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn describe(&self, kind: &str, _data: &Value) -> String {
            format!("undo {kind}")
        }
    }

    fn home(effects: Arc<Counting>) -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("home")).with_effects(effects);
        home.create().unwrap();
        (dir, home)
    }

    fn held(node: &mut Node) -> Change<'_> {
        node.begin_held("toy", BTreeMap::new(), "toy --resume", "toy --abort")
            .unwrap()
    }

    #[test]
    fn a_state_is_read_back_typed_and_an_unreadable_one_is_refused() {
        let (_d, home) = home(Arc::default());
        let mut node = home.open(false).unwrap();
        let mut change = held(&mut node);
        let mut state = Machine::new(Toy::Begun, 7u32);
        change.save(&state).unwrap();
        change.advance(&mut state, Toy::Done).unwrap();
        change.suspend();
        let change = node.reopen_held("toy", Reopen::Resume).unwrap().unwrap();
        let back: Machine<Toy, u32> = change.load().unwrap();
        assert_eq!((back.phase(), back.data), (Toy::Done, 7));
        // Another shape of data is a refusal, never a default.
        let wrong = change.load::<Toy, String>().unwrap_err();
        assert!(matches!(wrong, Error::UnreadableState(_)), "{wrong}");
        change.suspend();

        // So is a state written by another version.
        let path = home.journal_path();
        let text = fs::read_to_string(&path).unwrap();
        fs::write(
            &path,
            text.replace("\"state_version\": 1", "\"state_version\": 9"),
        )
        .unwrap();
        let change = node.reopen_held("toy", Reopen::Resume).unwrap().unwrap();
        let e = change.load::<Toy, u32>().unwrap_err();
        assert!(
            matches!(e, Error::UnreadableState(_)) && e.to_string().contains("version 9"),
            "{e}"
        );
        assert_eq!(e.exit_code(), crate::error::exit::UNREADABLE_STATE);
        change.suspend();
    }

    #[test]
    fn a_transition_outside_the_table_is_refused_and_no_return_forgets_the_undos() {
        let effects = Arc::new(Counting::default());
        let (_d, home) = home(effects.clone());
        let mut node = home.open(false).unwrap();
        let mut change = held(&mut node);
        let mut state = Machine::new(Toy::Begun, ());
        change.save(&state).unwrap();
        change
            .external_step("count", Value::Null, || Ok(()))
            .unwrap();
        assert!(change.advance(&mut state, Toy::Committed).is_err());
        assert_eq!(state.phase(), Toy::Begun);
        change.advance(&mut state, Toy::Done).unwrap();
        change.advance(&mut state, Toy::Committed).unwrap();
        // Past the point of no return an abort undoes nothing before it and
        // keeps the journal for --resume.
        change.abort().unwrap();
        assert_eq!(effects.undone.load(Ordering::SeqCst), 0);
        assert!(home.journal_path().exists());
    }

    /// A held change past its point of no return, on an audited home.
    fn held_past_no_return(node: &mut Node) -> Change<'_> {
        let mut change = held(node);
        let mut state = Machine::new(Toy::Begun, ());
        change.save(&state).unwrap();
        change.advance(&mut state, Toy::Done).unwrap();
        change.advance(&mut state, Toy::Committed).unwrap();
        change
    }

    fn phase_after_recovery(home: &Home) -> Toy {
        let mut node = home.open(false).unwrap();
        let change = node.reopen_held("toy", Reopen::Resume).unwrap().unwrap();
        let back: Machine<Toy, ()> = change.load().unwrap();
        change.suspend();
        back.phase()
    }

    #[test]
    fn a_failed_irreversible_step_keeps_a_held_change_s_journal() {
        let (_d, home) = home(Arc::default());
        crate::node::tests_support::init(&home);
        let mut node = home.open(false).unwrap();
        let mut change = held_past_no_return(&mut node);
        let e = change
            .irreversible("toy step", Vec::new(), |_| -> Result<()> {
                Err(Error::Refused("it failed".into()))
            })
            .unwrap_err();
        assert!(e.to_string().contains("it failed"), "{e}");
        change.suspend();
        drop(node);
        // Its start and its failure are on record; the journal and its
        // state wait for --resume, through a recovery.
        let log = fs::read_to_string(home.audit_path()).unwrap();
        assert!(
            log.contains("\"started\"") && log.contains("\"failed\""),
            "{log}"
        );
        assert_eq!(phase_after_recovery(&home), Toy::Committed);
    }

    #[test]
    fn a_mid_change_record_does_not_end_a_held_change_in_recovery() {
        let (_d, home) = home(Arc::default());
        crate::node::tests_support::init(&home);
        let journal_path = home.journal_path();
        let mut during = None;
        {
            let mut node = home.open(false).unwrap();
            let mut change = held_past_no_return(&mut node);
            change
                .irreversible("toy step", Vec::new(), |_| {
                    during = Some(Journal::read(&journal_path).unwrap().unwrap());
                    Ok(())
                })
                .unwrap();
            change.suspend();
        }
        // As a kill right after the step's start was committed (the
        // keystore at that record's head) and before the journal said
        // so: recovery must keep the held change, not finish it.
        let head = home.load_keystore().unwrap().node.audit_head;
        let mut journal = during.unwrap();
        journal.phase = Phase::Committing {
            log_len: 0,
            log_existed: true,
            record: String::new(),
            head_seq: head.seq,
            head_mac: head.mac_hex(),
            on_commit: None,
            on_rollback: None,
            goes_on: true,
        };
        journal.write(&journal_path).unwrap();
        assert_eq!(phase_after_recovery(&home), Toy::Committed);
        let kept = Journal::read(&journal_path).unwrap().unwrap();
        assert_eq!(kept.phase, Phase::Steps);
    }

    #[test]
    fn an_interrupted_abort_is_finished_by_another_abort_and_refuses_resume() {
        let effects = Arc::new(Counting::default());
        let (_d, home) = home(effects.clone());
        let mut node = home.open(false).unwrap();
        let mut change = held(&mut node);
        change.save(&Machine::new(Toy::Begun, ())).unwrap();
        change
            .external_step("fail", Value::Null, || Ok(()))
            .unwrap();
        change
            .external_step("count", Value::Null, || Ok(()))
            .unwrap();
        change
            .external_step("count", Value::Null, || Ok(()))
            .unwrap();
        change.suspend();

        effects.failing.store(true, Ordering::SeqCst);
        let change = node.reopen_held("toy", Reopen::Abort).unwrap().unwrap();
        let e = change.abort().unwrap_err();
        assert!(e.to_string().contains("undo fail"), "{e}");
        // The two undos that ran are gone from the journal: running the
        // abort again does not repeat them.
        assert_eq!(effects.undone.load(Ordering::SeqCst), 2);
        let journal = Journal::read(&home.journal_path()).unwrap().unwrap();
        assert_eq!(journal.undo.len(), 1);
        assert!(journal.held.as_ref().unwrap().aborting);
        let refused = node.reopen_held("toy", Reopen::Resume).err().unwrap();
        assert_eq!(refused.exit_code(), crate::error::exit::HELD);

        effects.failing.store(false, Ordering::SeqCst);
        let change = node.reopen_held("toy", Reopen::Abort).unwrap().unwrap();
        change.abort().unwrap();
        assert_eq!(effects.undone.load(Ordering::SeqCst), 3);
        assert!(!home.journal_path().exists());
    }

    #[test]
    fn recovery_undoes_an_unheld_change_once_each_and_a_failure_is_resumable() {
        let effects = Arc::new(Counting::default());
        let (_d, home) = home(effects.clone());
        {
            let mut node = home.open(false).unwrap();
            let mut change = node.begin("plain", BTreeMap::new()).unwrap();
            change
                .external_step("fail", Value::Null, || Ok(()))
                .unwrap();
            change
                .external_step("count", Value::Null, || Ok(()))
                .unwrap();
            // A crash: nothing runs the undo now.
            change.open = false;
        }
        effects.failing.store(true, Ordering::SeqCst);
        assert!(home.open(false).is_err());
        assert_eq!(effects.undone.load(Ordering::SeqCst), 1);
        effects.failing.store(false, Ordering::SeqCst);
        home.open(false).unwrap();
        assert_eq!(effects.undone.load(Ordering::SeqCst), 2);
        assert!(!home.journal_path().exists());
    }

    #[test]
    fn a_home_without_the_pair_s_effects_names_the_one_it_cannot_undo() {
        let dir = tempfile::tempdir().unwrap();
        let with = Home::new(dir.path().join("home")).with_effects(Arc::new(Counting::default()));
        with.create().unwrap();
        {
            let mut node = with.open(false).unwrap();
            let mut change = node.begin("plain", BTreeMap::new()).unwrap();
            change
                .external_step("server", Value::Null, || Ok(()))
                .unwrap();
            change.open = false;
        }
        let without = Home::new(dir.path().join("home"));
        let Err(e) = without.open(false) else {
            panic!("recovered without the pair's effects");
        };
        assert!(e.to_string().contains("`server` effect"), "{e}");
        assert!(without.journal_path().exists());
    }
}
