//! Diagnostic logging for operators and bug reports: `tracing` events
//! written to stderr, chosen by `-v` (repeatable) and the `KEYFERRY_LOG`
//! environment filter.
//!
//! Invariants:
//! - silent by default: with no `-v` and no `KEYFERRY_LOG`, no subscriber
//!   is installed and nothing is written;
//! - `-v` shows keyferry's `info` events, `-vv` `debug`, `-vvv` `trace`;
//!   `KEYFERRY_LOG` takes `tracing` filter directives
//!   (`keyferry=debug`, `keyferry::ops::import=trace`) and is applied on top
//!   of what `-v` selects, so the more specific directive wins;
//! - events go to stderr only: stdout stays the command's output for
//!   scripts;
//! - no event carries a secret (a password, key material, a connection
//!   string with a password): events name files, KDF parameters,
//!   fingerprints, phases and outcomes. `tests/cli_operator.rs` runs a
//!   round trip at the most verbose level and checks stderr for the
//!   password and the key material.

use tracing_subscriber::EnvFilter;

use crate::error::{Error, Result};

/// The environment variable holding extra filter directives.
pub(crate) const ENV_FILTER: &str = "KEYFERRY_LOG";

/// Installs the stderr logger for `verbosity` (the count of `-v`) and
/// `KEYFERRY_LOG`; installs nothing when both are absent.
pub fn init(verbosity: u8) -> Result<()> {
    let from_env = std::env::var(ENV_FILTER)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let Some(directives) = directives(verbosity, from_env.as_deref()) else {
        return Ok(());
    };
    let filter = EnvFilter::builder().parse(&directives).map_err(|e| {
        Error::Usage(format!(
            "{ENV_FILTER} is not a valid log filter ({e}): use directives such as \
             `keyferry=debug`, or unset it"
        ))
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init()
        .map_err(|e| Error::Refused(format!("cannot start logging: {e}")))
}

/// The filter for `verbosity` and the environment's directives; `None`
/// when logging stays off.
fn directives(verbosity: u8, from_env: Option<&str>) -> Option<String> {
    let base = match verbosity {
        0 => "off",
        1 => "keyferry=info",
        2 => "keyferry=debug",
        _ => "keyferry=trace",
    };
    match (verbosity, from_env) {
        (0, None) => None,
        (_, None) => Some(base.to_owned()),
        (_, Some(env)) => Some(format!("{base},{env}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_unless_asked() {
        assert_eq!(directives(0, None), None);
        assert_eq!(directives(1, None).as_deref(), Some("keyferry=info"));
        assert_eq!(directives(2, None).as_deref(), Some("keyferry=debug"));
        assert_eq!(directives(5, None).as_deref(), Some("keyferry=trace"));
        assert_eq!(
            directives(0, Some("keyferry=debug")).as_deref(),
            Some("off,keyferry=debug")
        );
        for v in 0..4 {
            let d = directives(v, Some("keyferry::ops=trace")).unwrap();
            EnvFilter::builder().parse(&d).unwrap();
        }
    }
}
