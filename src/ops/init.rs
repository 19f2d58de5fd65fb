//! `keyferry init`: a new keyring with one primary key.

use serde_json::Value;

use super::{details, now_unix, Home};
use crate::error::{Error, Result};
use crate::fmt::fmt_time;
use crate::keyring::{Fingerprint, Keyring, PairSigning};

pub struct InitReport {
    pub fingerprint: Fingerprint,
}

pub fn init(home: &Home) -> Result<InitReport> {
    let mut node = home.open(true)?;
    if node.keystore().is_some() {
        return Err(Error::Refused(format!(
            "{} already holds a keyring: keyferry init never replaces one \
             (use `keyferry import` to take another node's keys)",
            home.root().display()
        )));
    }
    if home.audit_path().exists() {
        return Err(Error::Refused(format!(
            "{} exists without a keyring: move it away (it belongs to a keyring that is gone) and run init again",
            home.audit_path().display()
        )));
    }
    let keyring = Keyring::generate(&fmt_time(now_unix()))
        .and_then(|mut k| {
            // The pair's signing key is born with the pair's keyring: the
            // secondary gets it in the full bundle, remote hosts pin its
            // public half from their first password bundle.
            k.set_signing(Some(PairSigning::generate()?));
            Ok(k)
        })
        .map_err(|source| Error::Keyring {
            context: "cannot create the keyring".into(),
            source,
        })?;
    let fingerprint = keyring.fingerprint();
    let mut change = node.begin(
        "init",
        details([
            ("fingerprint_after", Value::from(fingerprint.to_string())),
            ("keys", Value::from(1)),
        ]),
    )?;
    change.set_keyring(keyring);
    change.finish()?;
    Ok(InitReport { fingerprint })
}
