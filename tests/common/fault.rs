//! Faults a test injects into a running server or its link, shared by the
//! single-shot fence tests (`ha_fence.rs`) and the randomized fault runs
//! (`ha_faults.rs`): a postmaster frozen with SIGSTOP (it accepts
//! connections and says nothing), a password file with a password the peer
//! no longer accepts, every connection slot taken, delay and loss on a link
//! (netem, where the kernel has it).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Sends `kill -NAME` to `pid`; panics when `kill` fails.
pub fn signal(name: &str, pid: u32) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

/// The postmaster's pid of the server of `data`, if it runs.
pub fn postmaster_pid(data: &Path) -> Option<u32> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// A process stopped with SIGSTOP; SIGCONT when dropped, so a failing
/// assertion does not leave a frozen postmaster behind.
pub struct Stopped(u32);

impl Stopped {
    pub fn stop(pid: u32) -> Stopped {
        signal("STOP", pid);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("CONT", self.0);
    }
}

/// A password file (mode 0600) holding `password`.
pub fn password_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("{password}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Connections as `user` through the server's Unix socket until the
/// server refuses one for want of a slot (SQLSTATE 53300), at most
/// `limit`: every slot a role without superuser rights may take. Dropping
/// them frees the slots.
pub fn take_all_slots(
    socket: &Path,
    port: u16,
    user: &str,
    password: &str,
    limit: usize,
) -> Vec<postgres::Client> {
    let mut taken = Vec::new();
    while taken.len() < limit {
        let mut c = postgres::Config::new();
        c.host_path(socket)
            .port(port)
            .user(user)
            .password(password)
            .dbname("postgres")
            .connect_timeout(std::time::Duration::from_secs(5));
        match c.connect(postgres::NoTls) {
            Ok(client) => taken.push(client),
            // 53300: "sorry, too many clients already", or "remaining
            // connection slots are reserved for … superuser connections".
            Err(e) if e.code() == Some(&postgres::error::SqlState::TOO_MANY_CONNECTIONS) => break,
            Err(e) => panic!(
                "{user} refused for another reason: {e}: {:?}",
                e.as_db_error().map(|d| d.message())
            ),
        }
    }
    taken
}

/// Delay and loss on the second host's end of a link (netem), removed on
/// drop. `None` when this kernel has no `sch_netem` (or no `tc`): the
/// reason, for the table.
pub struct Netem {
    ns: String,
    dev: String,
}

impl Netem {
    /// `tc qdisc add dev DEV root netem SPEC…` inside namespace `ns`.
    pub fn add(ns: &str, dev: &str, spec: &[&str]) -> Result<Netem, String> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem",
            ])
            .args(spec)
            .output()
            .map_err(|e| format!("cannot run tc: {e}"))?;
        if out.status.success() {
            Ok(Netem {
                ns: ns.to_owned(),
                dev: dev.to_owned(),
            })
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "tc", "qdisc", "del", "dev", &self.dev, "root",
            ])
            .status();
    }
}
