//! The node's audit log: JSON lines, one record per change, each carrying
//! an HMAC-SHA256 chained to the previous record's, keyed by the node's audit
//! key. The keystore records the head (last sequence number and MAC), so an
//! edited, deleted, reordered or cut-off record is detected.
//!
//! Invariants:
//! - a record holds no secret: callers pass only non-secret details
//!   (fingerprints, file names, times), and the types here hold no keys;
//! - sequence numbers start at 1 and grow by one; record n's `prev` is
//!   record n-1's `mac` (64 zeros for the first);
//! - the MAC covers the record's JSON without its `mac` member, so the
//!   verifier recomputes it from what it reads.
//!
//! This module builds and checks records; `ops` decides when they are
//! written, and `fsutil` writes them.

use std::collections::BTreeMap;

/// The node's audit key: 32 bytes (the keystore holds it as key
/// material; the log needs only the bytes).
pub(crate) type AuditKey = [u8; 32];

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use thiserror::Error;

const MAC_LABEL: &[u8] = b"keyferry audit v1";
const MAC_LEN: usize = 32;

/// The last record the log must end with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditHead {
    pub seq: u64,
    pub mac: [u8; MAC_LEN],
}

impl AuditHead {
    /// Before the first record.
    pub(crate) fn genesis() -> Self {
        Self {
            seq: 0,
            mac: [0; MAC_LEN],
        }
    }

    pub(crate) fn from_parts(seq: u64, mac_hex: &str) -> Option<Self> {
        Some(Self {
            seq,
            mac: from_hex(mac_hex)?,
        })
    }

    pub(crate) fn mac_hex(&self) -> String {
        hex::encode(self.mac)
    }
}

/// A MAC as written in the log: lowercase hex only, so that one MAC has
/// one spelling.
fn from_hex(s: &str) -> Option<[u8; MAC_LEN]> {
    let mut out = [0u8; MAC_LEN];
    hex::decode_to_slice(s, &mut out).ok()?;
    (!s.bytes().any(|c| c.is_ascii_uppercase())).then_some(out)
}

/// Who made a change: the account from the process's credentials, not
/// the environment (see `crate::actor`).
pub(crate) use crate::actor::Actor;

/// One audit record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    pub seq: u64,
    /// RFC 3339 UTC.
    pub time: String,
    pub host: String,
    pub user: String,
    pub action: String,
    pub details: BTreeMap<String, Value>,
    pub prev: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

fn compute_mac(key: &AuditKey, record: &Record) -> [u8; MAC_LEN] {
    let unsigned = Record {
        mac: None,
        ..record.clone()
    };
    let body = serde_json::to_vec(&unsigned).expect("records serialize");
    let mut mac =
        <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes 32-byte keys");
    mac.update(MAC_LABEL);
    mac.update(&[0]);
    mac.update(&body);
    mac.finalize().into_bytes().into()
}

/// Builds the record that follows `head`, and the new head.
pub(crate) fn next_record(
    key: &AuditKey,
    head: &AuditHead,
    actor: &Actor,
    time: &str,
    action: &str,
    details: BTreeMap<String, Value>,
) -> (Record, AuditHead) {
    let mut record = Record {
        seq: head.seq + 1,
        time: time.to_owned(),
        host: actor.host.clone(),
        user: actor.user.clone(),
        action: action.to_owned(),
        details,
        prev: head.mac_hex(),
        mac: None,
    };
    let mac = compute_mac(key, &record);
    record.mac = Some(hex::encode(mac));
    (
        record,
        AuditHead {
            seq: head.seq + 1,
            mac,
        },
    )
}

/// A record as one line of the log, newline included.
pub(crate) fn to_line(record: &Record) -> Vec<u8> {
    let mut line = serde_json::to_vec(record).expect("records serialize");
    line.push(b'\n');
    line
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuditError {
    #[error("audit log line {0} is not a valid record: the log was edited")]
    Malformed(usize),
    #[error("audit log line {line}: expected sequence {expected}, found {found}: a record was deleted, inserted or moved")]
    Sequence {
        line: usize,
        expected: u64,
        found: u64,
    },
    #[error("audit log line {0}: the chain to the previous record is broken: a record was deleted or moved")]
    Chain(usize),
    #[error("audit log line {0}: the MAC does not match: the record was edited")]
    Mac(usize),
    #[error("the audit log ends at sequence {log} but the keystore records {head}: records were cut off the end")]
    Truncated { log: u64, head: u64 },
    #[error("the audit log goes on to sequence {log} but the keystore records {head}: records were added, or the keystore was restored from an old backup")]
    Ahead { log: u64, head: u64 },
    #[error(
        "the audit log's last record is not the one the keystore records: the log was replaced"
    )]
    HeadMismatch,
}

/// The longest run of records at the start of a log that chain and verify.
#[derive(Debug)]
pub(crate) struct ValidPrefix {
    pub records: Vec<Record>,
    /// The head after the last valid record.
    pub head: AuditHead,
    /// Bytes of the log the valid records take up.
    pub len: usize,
    /// Why the prefix ends before the log does, if it does.
    pub error: Option<AuditError>,
}

/// Walks the log from its start and stops at the first record that does not
/// verify. `head` only names the error of a record past it.
pub(crate) fn valid_prefix(log: &[u8], key: &AuditKey, head: &AuditHead) -> ValidPrefix {
    let mut prefix = ValidPrefix {
        records: Vec::new(),
        head: AuditHead::genesis(),
        len: 0,
        error: None,
    };
    let mut offset = 0;
    for (i, line) in log.split_inclusive(|b| *b == b'\n').enumerate() {
        let line_no = i + 1;
        match check_line(line, line_no, key, &prefix.head, head) {
            Ok(None) => {}
            Ok(Some((record, next))) => {
                prefix.records.push(record);
                prefix.head = next;
                prefix.len = offset + line.len();
            }
            Err(e) => {
                prefix.error = Some(e);
                return prefix;
            }
        }
        offset += line.len();
    }
    prefix
}

/// Checks one line after `expect`; `Ok(None)` for an empty final line.
fn check_line(
    line: &[u8],
    line_no: usize,
    key: &AuditKey,
    expect: &AuditHead,
    head: &AuditHead,
) -> Result<Option<(Record, AuditHead)>, AuditError> {
    let Some(body) = line.strip_suffix(b"\n") else {
        // A last line without its newline: a write that was cut short.
        return if line.is_empty() {
            Ok(None)
        } else {
            Err(AuditError::Malformed(line_no))
        };
    };
    if body.is_empty() {
        return Err(AuditError::Malformed(line_no));
    }
    let record: Record =
        serde_json::from_slice(body).map_err(|_| AuditError::Malformed(line_no))?;
    if record.seq != expect.seq + 1 {
        return Err(if record.seq > head.seq && expect.seq == head.seq {
            AuditError::Ahead {
                log: record.seq,
                head: head.seq,
            }
        } else {
            AuditError::Sequence {
                line: line_no,
                expected: expect.seq + 1,
                found: record.seq,
            }
        });
    }
    if from_hex(&record.prev) != Some(expect.mac) {
        return Err(AuditError::Chain(line_no));
    }
    let claimed = record
        .mac
        .as_deref()
        .and_then(from_hex)
        .ok_or(AuditError::Malformed(line_no))?;
    let computed = compute_mac(key, &record);
    if !bool::from(computed.ct_eq(&claimed)) {
        return Err(AuditError::Mac(line_no));
    }
    let next = AuditHead {
        seq: record.seq,
        mac: computed,
    };
    Ok(Some((record, next)))
}

/// Verifies a whole log against the keystore's head; returns the records.
pub(crate) fn verify(
    log: &[u8],
    key: &AuditKey,
    head: &AuditHead,
) -> Result<Vec<Record>, AuditError> {
    let prefix = valid_prefix(log, key, head);
    if let Some(e) = prefix.error {
        return Err(e);
    }
    let end = prefix.head;
    match end.seq.cmp(&head.seq) {
        std::cmp::Ordering::Less => Err(AuditError::Truncated {
            log: end.seq,
            head: head.seq,
        }),
        std::cmp::Ordering::Greater => Err(AuditError::Ahead {
            log: end.seq,
            head: head.seq,
        }),
        std::cmp::Ordering::Equal if !bool::from(end.mac.ct_eq(&head.mac)) => {
            Err(AuditError::HeadMismatch)
        }
        std::cmp::Ordering::Equal => Ok(prefix.records),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(n: usize) -> (AuditKey, Vec<Vec<u8>>, AuditHead) {
        let key = [9; 32];
        let actor = Actor {
            host: "db1".into(),
            user: "ops".into(),
        };
        let mut head = AuditHead::genesis();
        let mut lines = Vec::new();
        for i in 0..n {
            let mut details = BTreeMap::new();
            details.insert("n".to_owned(), Value::from(i));
            let (rec, h) = next_record(
                &key,
                &head,
                &actor,
                "2026-11-25T00:00:00Z",
                "export",
                details,
            );
            lines.push(to_line(&rec));
            head = h;
        }
        (key, lines, head)
    }

    #[test]
    fn an_intact_log_verifies() {
        let (key, lines, head) = log_of(3);
        let records = verify(&lines.concat(), &key, &head).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].seq, 3);
        assert!(verify(b"", &key, &AuditHead::genesis()).unwrap().is_empty());
    }

    #[test]
    fn tampering_is_detected_and_named() {
        let (key, lines, head) = log_of(4);
        let edited = String::from_utf8(lines[1].clone())
            .unwrap()
            .replace("\"n\":1", "\"n\":7");
        let mut l = lines.clone();
        l[1] = edited.into_bytes();
        assert_eq!(verify(&l.concat(), &key, &head), Err(AuditError::Mac(2)));

        let mut deleted = lines.clone();
        deleted.remove(1);
        assert!(matches!(
            verify(&deleted.concat(), &key, &head),
            Err(AuditError::Sequence {
                line: 2,
                expected: 2,
                found: 3
            })
        ));

        let mut reordered = lines.clone();
        reordered.swap(1, 2);
        assert!(verify(&reordered.concat(), &key, &head).is_err());

        assert_eq!(
            verify(&lines[..3].concat(), &key, &head),
            Err(AuditError::Truncated { log: 3, head: 4 })
        );

        // A forged line appended after the head: its MAC cannot be made
        // without the key, and the log goes past the keystore's head.
        let mut forged = lines.clone();
        let mut extra = String::from_utf8(lines[3].clone())
            .unwrap()
            .replace("\"seq\":4", "\"seq\":5");
        if !extra.ends_with('\n') {
            extra.push('\n');
        }
        forged.push(extra.into_bytes());
        assert!(verify(&forged.concat(), &key, &head).is_err());
        // Even one made with the key (a copy of the node's own writer) is
        // past the head the keystore records.
        let (rec, _) = next_record(
            &key,
            &head,
            &Actor::current(),
            "2026-11-25T00:00:00Z",
            "destroy",
            BTreeMap::new(),
        );
        let mut appended = lines.clone();
        appended.push(to_line(&rec));
        assert_eq!(
            verify(&appended.concat(), &key, &head),
            Err(AuditError::Ahead { log: 5, head: 4 })
        );

        let other_key = [8; 32];
        assert_eq!(
            verify(&lines.concat(), &other_key, &head),
            Err(AuditError::Mac(1))
        );
    }
}
