//! The pair's recent history as this node saw it: `pair-history.json` in
//! the home, the primary's WAL position each time an `ha` command read it
//! (`ha status`, a switchover), with the time.
//!
//! A failover reads the newest entry to say how much WAL may be lost: the
//! replica's last received position against the last primary position
//! this node knew. Invariants: bounded ([`KEEP`] entries, oldest dropped
//! first); no secret (addresses, LSNs, times); written atomically and
//! owner-only; a file that cannot be read counts as empty (it is a hint,
//! never a reason to refuse).

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil;

/// The file's name in the home.
pub(crate) const FILE: &str = "pair-history.json";
/// Entries kept.
pub(crate) const KEEP: usize = 64;
const FORMAT: &str = "keyferry-pair-history";

/// One sighting of the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Seen {
    /// Unix seconds.
    pub at: u64,
    /// The primary's address.
    pub primary: String,
    /// Its `pg_current_wal_lsn()` then.
    pub lsn: String,
    pub timeline: Option<u32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    format: String,
    entries: Vec<Seen>,
}

fn read(path: &Path) -> Vec<Seen> {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<File>(&b).ok())
        .filter(|f| f.format == FORMAT)
        .map(|f| f.entries)
        .unwrap_or_default()
}

/// The newest sighting, if any.
pub(crate) fn last(home: &Path) -> Option<Seen> {
    read(&home.join(FILE)).pop()
}

/// Appends a sighting (the same position as the newest one only moves its
/// time forward, so an idle pair does not fill the file).
pub(crate) fn record(home: &Path, seen: Seen) -> io::Result<()> {
    if !home.is_dir() {
        return Ok(());
    }
    let path = home.join(FILE);
    let mut entries = read(&path);
    match entries.last_mut() {
        Some(last) if last.primary == seen.primary && last.lsn == seen.lsn => *last = seen,
        _ => entries.push(seen),
    }
    let excess = entries.len().saturating_sub(KEEP);
    entries.drain(..excess);
    let file = File {
        format: FORMAT.to_owned(),
        entries,
    };
    let mut staged = fsutil::Staged::new_in(home)?;
    serde_json::to_writer_pretty(&mut staged, &file).map_err(io::Error::other)?;
    staged.write_all(b"\n")?;
    staged.persist_replace(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_entries_and_merges_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let seen = |at, lsn: &str| Seen {
            at,
            primary: "10.0.0.1".into(),
            lsn: lsn.into(),
            timeline: Some(1),
        };
        assert_eq!(last(dir.path()), None);
        record(dir.path(), seen(1, "0/10")).unwrap();
        record(dir.path(), seen(2, "0/10")).unwrap();
        assert_eq!(read(&dir.path().join(FILE)).len(), 1);
        for i in 0..(KEEP as u64 + 5) {
            record(dir.path(), seen(10 + i, &format!("0/{:X}", 100 + i))).unwrap();
        }
        let all = read(&dir.path().join(FILE));
        assert_eq!(all.len(), KEEP);
        assert_eq!(last(dir.path()).unwrap().at, 10 + KEEP as u64 + 4);
    }
}
