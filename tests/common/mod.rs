//! Helpers shared by integration tests. Each test binary uses only some of
//! them, so unused-item warnings are expected per binary and silenced here.
#![allow(dead_code)]

pub mod craft;
#[cfg(unix)]
pub mod netns;
pub mod node;
#[cfg(unix)]
pub mod pg;

/// The standard output of a keyferry run that must have succeeded; on
/// failure, panics with its exit status, stdout and stderr.
pub fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "keyferry failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
