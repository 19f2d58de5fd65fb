//! `keyferry audit repair`: resolves, with a record of its own, an audit log
//! that does not verify against the keystore: cut off (records missing at
//! the end), ahead (the keystore was restored from an older backup),
//! replaced, or damaged in the middle.
//!
//! The rule is one for every case: keep the longest run of records from the
//! start that chain and verify under the node's audit key, copy the whole
//! log aside first when anything after that run is dropped (never deleted),
//! and append an `audit-repair` record that says what was found, what was
//! kept and where the copy is. The keystore's head then follows the log.
//! The change is journaled like every other: a crash leaves the log and the
//! keystore as they were before.

use serde_json::Value;

use super::{file_stamp, now_unix, Home, Node};
use crate::audit::{self, AuditError};
use crate::error::{Error, Result};
use crate::fsutil::{self, Ownership};

/// What repair found (and, when applied, did).
#[derive(Debug)]
pub(crate) struct RepairReport {
    /// Why the log does not verify; `None`: nothing to repair.
    pub problem: Option<AuditError>,
    /// Records kept from the start of the log.
    pub kept: usize,
    /// Sequence number the keystore recorded.
    pub keystore_seq: u64,
    /// Bytes dropped after the kept records.
    pub dropped_bytes: usize,
    /// Where the whole damaged log was copied (when bytes are dropped).
    pub damaged_copy: Option<std::path::PathBuf>,
    pub applied: bool,
}

impl Home {
    /// Looks at the audit log and, when `apply`, repairs it.
    pub(crate) fn repair_audit(&self, apply: bool) -> Result<RepairReport> {
        let lock = self.lock()?;
        super::recover::recover(self)?;
        let store = self.load_keystore()?;
        let log = self.read_audit_log()?;
        let head = store.node.audit_head;
        let problem = audit::verify(&log, store.node.audit_key.as_bytes(), &head).err();
        let prefix = audit::valid_prefix(&log, store.node.audit_key.as_bytes(), &head);
        let mut report = RepairReport {
            problem,
            kept: prefix.records.len(),
            keystore_seq: head.seq,
            dropped_bytes: log.len() - prefix.len,
            damaged_copy: None,
            applied: false,
        };
        let Some(problem) = &report.problem else {
            return Ok(report);
        };
        if !apply {
            return Ok(report);
        }
        let mut details = super::details([
            ("problem", Value::from(problem.to_string())),
            ("kept_records", Value::from(report.kept)),
            ("keystore_seq_before", Value::from(head.seq)),
            ("dropped_bytes", Value::from(report.dropped_bytes)),
        ]);
        if report.dropped_bytes > 0 {
            let copy = self.root().join(format!(
                "{}.damaged-{}",
                super::AUDIT_FILE,
                file_stamp(now_unix())
            ));
            let mut staged = fsutil::Staged::new_in(self.root()).map_err(Error::io(format!(
                "cannot copy the log to {}",
                copy.display()
            )))?;
            std::io::Write::write_all(&mut staged, &log)
                .and_then(|()| staged.persist_new(&copy))
                .map_err(Error::io(format!(
                    "cannot copy the log to {}",
                    copy.display()
                )))?;
            details.insert(
                "damaged_copy".into(),
                Value::from(copy.display().to_string()),
            );
            report.damaged_copy = Some(copy);
        }
        let mut node = Node::for_recovery(self.clone(), store);
        if let Some(s) = node.store.as_mut() {
            s.node.audit_head = prefix.head;
        }
        let mut change = node.begin("audit-repair", details)?;
        if report.dropped_bytes > 0 {
            change.replace_file(
                &self.audit_path(),
                &mut &log[..prefix.len],
                Ownership::OwnerOnly,
            )?;
        }
        change.finish()?;
        drop(lock);
        report.applied = true;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_with_records(n: usize) -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("home"));
        crate::node::tests_support::init(&home);
        for i in 1..n {
            let mut node = home.open(false).unwrap();
            let change = node
                .begin("test", crate::node::details([("i", Value::from(i))]))
                .unwrap();
            change.finish().unwrap();
        }
        (dir, home)
    }

    #[test]
    fn an_intact_log_needs_nothing() {
        let (_d, home) = node_with_records(3);
        let r = home.repair_audit(true).unwrap();
        assert!(r.problem.is_none() && !r.applied);
    }

    #[test]
    fn a_cut_off_log_is_accepted_with_a_record() {
        let (_d, home) = node_with_records(4);
        let log = std::fs::read(home.audit_path()).unwrap();
        let lines: Vec<&[u8]> = log.split_inclusive(|b| *b == b'\n').collect();
        std::fs::write(home.audit_path(), lines[..2].concat()).unwrap();
        assert!(home.open(false).is_err());
        let dry = home.repair_audit(false).unwrap();
        assert!(matches!(dry.problem, Some(AuditError::Truncated { .. })));
        assert!(!dry.applied);
        let r = home.repair_audit(true).unwrap();
        assert!(r.applied && r.damaged_copy.is_none());
        assert_eq!(home.load_keystore().unwrap().node.audit_head.seq, 3);
        home.open(false).unwrap();
    }

    #[test]
    fn an_edited_record_is_cut_off_and_the_log_kept_aside() {
        let (_d, home) = node_with_records(4);
        let log = std::fs::read_to_string(home.audit_path()).unwrap();
        let edited = log.replacen("\"i\":2", "\"i\":9", 1);
        assert_ne!(log, edited);
        std::fs::write(home.audit_path(), &edited).unwrap();
        let r = home.repair_audit(true).unwrap();
        assert!(matches!(r.problem, Some(AuditError::Mac(3))));
        assert_eq!(r.kept, 2);
        let copy = r.damaged_copy.unwrap();
        assert_eq!(std::fs::read_to_string(copy).unwrap(), edited);
        let records = home.open(false).map(|_| ()).and_then(|()| {
            let store = home.load_keystore()?;
            home.verify_audit(&store)
        });
        let records = records.unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].action, "audit-repair");
    }
}
