//! `keyferry audit show` and `keyferry audit verify`.

use super::Home;
use crate::audit::{self, Record};
use crate::error::Result;

/// Every record, verified against the keystore's head.
pub(crate) fn verify(home: &Home) -> Result<Vec<Record>> {
    let store = home.load_keystore()?;
    home.verify_audit(&store)
}

/// The records as they stand, and the verification result: `show` lists a
/// damaged log too, so that an operator can look at it.
pub(crate) fn show(home: &Home) -> Result<(Vec<Record>, Result<()>)> {
    let store = home.load_keystore()?;
    let log = home.read_audit_log()?;
    let records = log
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<Record>(l).ok())
        .collect();
    let verdict = audit::verify(
        &log,
        store.node.audit_key.as_bytes(),
        &store.node.audit_head,
    )
    .map(|_| ())
    .map_err(Into::into);
    Ok((records, verdict))
}
