//! Helpers shared by integration tests. Each test binary uses only some of
//! them, so unused-item warnings are expected per binary and silenced here.
#![allow(dead_code)]

pub mod craft;
#[cfg(unix)]
pub mod fault;
pub mod hazard;
#[cfg(unix)]
pub mod netns;
pub mod node;
#[cfg(unix)]
pub mod pair;
#[cfg(unix)]
pub mod pg;
#[cfg(unix)]
pub mod registry;
#[cfg(unix)]
pub mod switch;

/// `keyferry --home HOME ARGS…` in this namespace, with no home or libpq
/// password file inherited from the environment.
pub fn keyferry_in(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("keyferry"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("KEYFERRY_HOME")
        .env_remove("PGPASSFILE")
        .output()
        .unwrap()
}

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

/// The check named `name` in the report `ha check --json` printed on
/// `stdout`; panics, showing the output, when there is none.
pub fn check_fact(stdout: &[u8], name: &str) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_slice(stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(stdout)));
    report["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks in {report}"))
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
}
