//! Faults a test injects into a running server or its link, shared by the
//! single-shot fence tests (`ha_fence.rs`) and the randomized fault runs
//! (`ha_faults.rs`): a postmaster frozen with SIGSTOP (it accepts
//! connections and says nothing), a password file with a password the peer
//! no longer accepts, every connection slot taken, delay and loss on a link
//! (netem, else nftables and tbf).

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
/// `limit`: every slot a role without superuser rights may take. Each is
/// named `hog` (`application_name`). Dropping them frees the slots.
pub fn take_all_slots(
    socket: &Path,
    port: u16,
    user: &str,
    password: &str,
    limit: usize,
) -> Vec<postgres::Client> {
    let mut taken = Vec::new();
    fill(socket, port, user, Some(password), limit, &mut taken);
    taken
}

/// [`take_all_slots`], then the slots reserved for superusers too (as
/// `postgres`, whom the harness's socket trusts), so that none is left at
/// all: where a prober connects as the superuser now and then, a slot its
/// connection held while `user` filled the rest, freed a moment later,
/// would let the next role in.
pub fn take_every_slot(
    socket: &Path,
    port: u16,
    user: &str,
    password: &str,
    limit: usize,
) -> Vec<postgres::Client> {
    let mut taken = take_all_slots(socket, port, user, password, limit);
    fill(socket, port, "postgres", None, limit, &mut taken);
    taken
}

fn fill(
    socket: &Path,
    port: u16,
    role: &str,
    password: Option<&str>,
    limit: usize,
    taken: &mut Vec<postgres::Client>,
) {
    while taken.len() < limit {
        let mut c = postgres::Config::new();
        c.host_path(socket)
            .port(port)
            .user(role)
            .dbname("postgres")
            .application_name("hog")
            .connect_timeout(std::time::Duration::from_secs(5));
        if let Some(password) = password {
            c.password(password);
        }
        match c.connect(postgres::NoTls) {
            Ok(client) => taken.push(client),
            // 53300: "sorry, too many clients already", or "remaining
            // connection slots are reserved for … superuser connections".
            Err(e) if e.code() == Some(&postgres::error::SqlState::TOO_MANY_CONNECTIONS) => return,
            Err(e) => panic!(
                "{role} refused for another reason: {e}: {:?}",
                e.as_db_error().map(|d| d.message())
            ),
        }
    }
}

/// Loss and delay on one host's end of a link, removed on drop: netem
/// (`delay 200ms 50ms loss 10%`) where the kernel has `sch_netem`; else
/// nftables dropping 10% of the packets at random both ways
/// (`numgen random`) and a token bucket (`tbf`, 1 Mbit/s, up to 200 ms
/// queued) that delays what exceeds its rate. `Err`: neither is here (no
/// `tc`, no `nft`, or the kernel lacks both), the reason for the table.
pub struct LossyLink {
    ns: String,
    dev: String,
    /// What was put on the link, for the table.
    pub how: &'static str,
    nft: bool,
}

const NFT_TABLE: &str = "kf_lossy";

impl LossyLink {
    pub fn add(ns: &str, dev: &str) -> Result<LossyLink, String> {
        let mut link = LossyLink {
            ns: ns.to_owned(),
            dev: dev.to_owned(),
            how: "netem delay 200±50 ms, loss 10%",
            nft: false,
        };
        let netem = link.tc(&[
            "add", "root", "netem", "delay", "200ms", "50ms", "loss", "10%",
        ]);
        let Err(no_netem) = netem else {
            return Ok(link);
        };
        link.how = "nftables: 10% of packets dropped at random; tbf: 1 Mbit/s, 200 ms queue";
        link.nft = true;
        let table = format!(
            "table inet {NFT_TABLE} {{ \
               chain in {{ type filter hook input priority 0; iifname \"{dev}\" numgen random mod 10 0 drop; }}; \
               chain out {{ type filter hook output priority 0; oifname \"{dev}\" numgen random mod 10 0 drop; }}; }}"
        );
        let nft = ip_netns(ns, &["nft", &table]);
        nft.and_then(|()| {
            link.tc(&[
                "add", "root", "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "200ms",
            ])
        })
        .map(|()| link)
        .map_err(|no_nft| format!("no netem ({no_netem}), and {no_nft}"))
    }

    fn tc(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["tc", "qdisc", args[0], "dev", &self.dev];
        all.extend(&args[1..]);
        ip_netns(&self.ns, &all)
    }
}

fn ip_netns(ns: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or_default()
        ))
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        let _ = self.tc(&["del", "root"]);
        if self.nft {
            let _ = ip_netns(&self.ns, &["nft", "delete", "table", "inet", NFT_TABLE]);
        }
    }
}
