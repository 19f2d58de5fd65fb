//! Deterministic crash points for the pair's fault suite, compiled only
//! with the `failpoints` feature (a release build has none: [`hit`] is an
//! no code there: [`failpoint!`] expands to nothing).
//!
//! Every journal write of a change names a point (`ACTION:PHASE` when a
//! held change enters a phase, `ACTION:step-N` after step N's undo is
//! journaled and before its effect, `ACTION:undo-N` after undo N ran);
//! a few name a moment between two programs instead (`ha-rejoin:rewind-done`:
//! `pg_rewind` finished, the put-back of the node's own files not begun).
//! A test selects points through `KEYFERRY_FAILPOINTS`, a comma-separated
//! list of `NAME=ACTION`, where ACTION is:
//! - `crash`: the process ends at once, as under kill -9: no unwinding, no
//!   `Drop`, no undo (SIGKILL to itself on Unix, `abort` elsewhere);
//! - `sleep(MS)`: the run pauses there, so a test can act on the pair in
//!   between (stop the peer, cut the link).
//!
//! Written here rather than with the `fail` crate: its actions unwind
//! (`panic`) or return from the enclosing function (`return`), and a crash
//! point must do neither — a change's `Drop` would undo what a real crash
//! leaves for recovery. What is left is parsing one variable.

/// Runs the action configured for the point `name`, if any.
#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str) {
    let Ok(spec) = std::env::var("KEYFERRY_FAILPOINTS") else {
        return;
    };
    for entry in spec.split(',') {
        let Some((point, action)) = entry.split_once('=') else {
            continue;
        };
        if point.trim() != name {
            continue;
        }
        let action = action.trim();
        eprintln!("failpoint {name}: {action}");
        if action == "crash" {
            crash();
        }
        if let Some(ms) = action
            .strip_prefix("sleep(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}

#[cfg(all(feature = "failpoints", unix))]
fn crash() -> ! {
    // SAFETY: kill(2) on our own pid with SIGKILL; it does not return.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

#[cfg(all(feature = "failpoints", not(unix)))]
fn crash() -> ! {
    std::process::abort()
}

/// `failpoint!("{}:{}", action, phase)`: the point of that name; nothing
/// at all (not even the name's formatting) without the feature.
macro_rules! failpoint {
    ($($arg:tt)*) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit(&format!($($arg)*));
    };
}
pub(crate) use failpoint;
