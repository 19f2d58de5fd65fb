//! A running pair for the tests of role changes (switchover, failover,
//! the guard, the fault suite): the primary in network namespace `a`
//! (10.213.0.1), a replica made by hand in `b` (10.213.0.2) streaming
//! through the slot `pam_b` as `repuser` (REPLICATION, pg_monitor and the
//! pair's grants, nothing more), a keyferry home on each host, and the
//! probes those tests judge by: who accepts writes, who streams from whom.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::netns::{NetnsPair, ADDR_A, ADDR_B};
use super::pg::{PgOptions, PgServer};

pub const PG_PORT: u16 = 5432;
pub const PASSWORD: &str = "role change replication password";

/// The pair; fields drop in order (servers before the namespaces).
pub struct SwitchPair {
    pub a: PgServer,
    pub b: PgServer,
    pub home_a: PathBuf,
    pub home_b: PathBuf,
    pub pw: PathBuf,
    _tmp: tempfile::TempDir,
    pub ns: NetnsPair,
}

/// A superuser connection through a server's Unix socket (trusted).
pub fn sql(socket: &Path) -> Option<postgres::Client> {
    postgres::Config::new()
        .host_path(socket)
        .port(PG_PORT)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2))
        .connect(postgres::NoTls)
        .ok()
}

/// The server behind `socket` runs and accepts writes.
pub fn accepts_writes(socket: &Path) -> bool {
    sql(socket).is_some_and(|mut c| {
        c.query_one("SELECT NOT pg_is_in_recovery()", &[])
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    })
}

pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One line on both nodes, for a failure message: running, writable,
/// standby.signal, a journal in the home.
pub fn describe(pair: &SwitchPair) -> String {
    [true, false]
        .iter()
        .map(|&a| {
            let (_, home, socket, addr) = pair.node(a);
            let data = if a {
                pair.a.data_dir()
            } else {
                pair.b.data_dir()
            };
            format!(
                "{addr}: up {} writable {} standby.signal {} journal {} ha.toml {:?}",
                sql(socket).is_some(),
                accepts_writes(socket),
                data.join("standby.signal").exists(),
                home.join("journal.json").exists(),
                roles_of(home)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `ha.toml`'s `primary`, `generation` and `demoted`.
pub fn roles_of(home: &Path) -> (String, u64, bool) {
    let t: toml::Value =
        toml::from_str(&fs::read_to_string(home.join("ha.toml")).unwrap()).unwrap();
    (
        t["primary"].as_str().unwrap().to_owned(),
        t.get("generation")
            .and_then(|g| g.as_integer())
            .unwrap_or(0) as u64,
        t.get("demoted").and_then(|d| d.as_bool()).unwrap_or(false),
    )
}

impl SwitchPair {
    /// Starts the pair, or says why it cannot and returns `None`.
    pub fn new(tag: &str) -> Option<SwitchPair> {
        Self::with_conf(tag, &[])
    }

    /// As [`SwitchPair::new`], with `conf` lines in both servers'
    /// `postgresql.conf` (`wal_log_hints = on` for `pg_rewind`).
    pub fn with_conf(tag: &str, conf: &[&str]) -> Option<SwitchPair> {
        let ns = NetnsPair::create(tag)?;
        let mut extra_a = vec![format!("listen_addresses = '{ADDR_A},127.0.0.1'")];
        extra_a.extend(conf.iter().map(|l| l.to_string()));
        let mut a = PgServer::start_primary(PgOptions {
            extra_conf: extra_a,
            netns: Some(ns.a.clone()),
        })?;
        a.move_to_port(PG_PORT);
        a.create_replication_user("repuser", PASSWORD);
        let mut hba = a.read_hba();
        hba.extend_from_slice(b"host all,replication repuser 10.213.0.0/24 scram-sha-256\n");
        a.write_hba(&hba);
        a.connect()
            .batch_execute(&format!(
                "GRANT pg_monitor TO repuser; {}; \
                 SELECT pg_reload_conf(); \
                 SELECT pg_create_physical_replication_slot('pam_b'); \
                 CREATE TABLE load (id bigint PRIMARY KEY);",
                super::pg::HA_GRANTS
            ))
            .unwrap();
        let mut extra_b = vec![format!("listen_addresses = '{ADDR_B},127.0.0.1'")];
        extra_b.extend(conf.iter().map(|l| l.to_string()));
        let mut b = a.start_replica_with(PgOptions {
            extra_conf: extra_b,
            netns: Some(ns.b.clone()),
        });
        b.move_to_port(PG_PORT);
        let mut admin_b = b.connect();
        for statement in [
            format!("ALTER SYSTEM SET primary_conninfo = 'host={ADDR_A} port={PG_PORT} user=repuser password=''{PASSWORD}'' application_name=pam-b'"),
            "ALTER SYSTEM SET primary_slot_name = 'pam_b'".to_owned(),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            admin_b.batch_execute(&statement).unwrap();
        }
        drop(admin_b);
        let tmp = tempfile::tempdir().unwrap();
        let (home_a, home_b) = (tmp.path().join("home-a"), tmp.path().join("home-b"));
        for (home, node, server) in [(&home_a, "pam-a", &a), (&home_b, "pam-b", &b)] {
            super::succeeded(&super::keyferry_in(
                home,
                &[
                    "ha",
                    "init",
                    "--node",
                    node,
                    "--primary",
                    ADDR_A,
                    "--secondary",
                    ADDR_B,
                    "--pg-port",
                    "5432",
                    "--pg-bin",
                    server.bin_dir().to_str().unwrap(),
                    "--pg-data",
                    server.data_dir().to_str().unwrap(),
                ],
            ));
        }
        let pw = tmp.path().join("repuser.pw");
        fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
        let pair = SwitchPair {
            a,
            b,
            home_a,
            home_b,
            pw,
            _tmp: tmp,
            ns,
        };
        wait_until("b streams from a", 30, || pair.streams(true));
        Some(pair)
    }

    /// (namespace, home, socket directory, address) of node `a` or `b`.
    pub fn node(&self, a: bool) -> (&str, &Path, &Path, &'static str) {
        if a {
            (&self.ns.a, &self.home_a, self.a.socket_dir(), ADDR_A)
        } else {
            (&self.ns.b, &self.home_b, self.b.socket_dir(), ADDR_B)
        }
    }

    /// Whether `a` is the writable one (panics unless exactly one is).
    pub fn primary_is_a(&self) -> bool {
        let (wa, wb) = (
            accepts_writes(self.a.socket_dir()),
            accepts_writes(self.b.socket_dir()),
        );
        assert!(wa != wb, "writable: a {wa}, b {wb}");
        wa
    }

    /// The node that is not primary streams from the one that is (`a`
    /// primary when `primary_a`).
    pub fn streams(&self, primary_a: bool) -> bool {
        let (_, _, socket, _) = self.node(primary_a);
        let (_, _, _, replica_addr) = self.node(!primary_a);
        sql(socket).is_some_and(|mut c| {
            c.query(
                "SELECT 1 FROM pg_stat_replication WHERE host(client_addr) = $1 AND state = 'streaming'",
                &[&replica_addr],
            )
            .is_ok_and(|rows| !rows.is_empty())
        })
    }

    /// `keyferry --home HOME ha ARGS… --password-file PW` on node `a` or
    /// `b`, with `failpoints` (KEYFERRY_FAILPOINTS) set.
    pub fn ha_cmd(&self, a: bool, args: &[&str], failpoints: &str) -> Command {
        self.ha_cmd_with(a, args, failpoints, &self.pw)
    }

    /// [`SwitchPair::ha_cmd`] with the password file `pw`.
    pub fn ha_cmd_with(&self, a: bool, args: &[&str], failpoints: &str, pw: &Path) -> Command {
        let (ns, home, _, _) = self.node(a);
        let mut c = NetnsPair::exec(ns, &assert_cmd::cargo::cargo_bin("keyferry"));
        c.arg("--home")
            .arg(home)
            .arg("ha")
            .args(args)
            .arg("--password-file")
            .arg(pw)
            .env_remove("KEYFERRY_HOME")
            .env("KEYFERRY_FAILPOINTS", failpoints)
            .env("PGPASSFILE", "/nonexistent")
            .stdin(Stdio::null());
        c
    }

    pub fn ha(&self, a: bool, args: &[&str]) -> Output {
        let out = self.ha_cmd(a, args, "").output().unwrap();
        assert!(!text(&out).contains(PASSWORD), "the password was printed");
        out
    }

    /// `ha ARGS…` on node `a` or `b` with the password file `pw`, and how
    /// long it took.
    pub fn ha_timed(&self, a: bool, args: &[&str], pw: &Path) -> (Output, Duration) {
        let began = Instant::now();
        let out = self.ha_cmd_with(a, args, "", pw).output().unwrap();
        let took = began.elapsed();
        assert!(!text(&out).contains(PASSWORD), "the password was printed");
        (out, took)
    }

    /// The server of node `a` or `b`.
    pub fn server(&self, a: bool) -> &PgServer {
        if a {
            &self.a
        } else {
            &self.b
        }
    }

    /// The pid of the startup (recovery) process of node `a` or `b`.
    pub fn startup_pid(&self, a: bool) -> u32 {
        self.try_startup_pid(a)
            .unwrap_or_else(|| panic!("no startup process: {}", describe(self)))
    }

    /// The pid of the startup process, if the node runs one (a replica).
    pub fn try_startup_pid(&self, a: bool) -> Option<u32> {
        let server = if a { &self.a } else { &self.b };
        let pid_file = fs::read_to_string(server.data_dir().join("postmaster.pid")).ok()?;
        let postmaster = pid_file.lines().next()?.trim().to_owned();
        let out = Command::new("pgrep")
            .args(["-P", &postmaster, "-f", "startup"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

/// Asks both nodes "do you accept writes?" every 50 ms until dropped, and
/// counts the moments both said yes.
pub struct Prober {
    stop: Arc<AtomicBool>,
    pub both: Arc<AtomicUsize>,
    pub probes: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    pub fn start(a: &Path, b: &Path) -> Prober {
        let (a, b) = (a.to_path_buf(), b.to_path_buf());
        let stop = Arc::new(AtomicBool::new(false));
        let both = Arc::new(AtomicUsize::new(0));
        let probes = Arc::new(AtomicUsize::new(0));
        let (s, bo, pr) = (stop.clone(), both.clone(), probes.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if accepts_writes(&a) && accepts_writes(&b) {
                    bo.fetch_add(1, Ordering::Relaxed);
                }
                pr.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Prober {
            stop,
            both,
            probes,
            thread: Some(thread),
        }
    }

    /// Moments both accepted writes so far.
    pub fn two_primaries(&self) -> usize {
        self.both.load(Ordering::Relaxed)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The write load: numbered rows inserted into whichever server accepts
/// them, each acknowledged commit recorded.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub acked: Arc<std::sync::Mutex<Vec<(i64, Instant)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(servers: Vec<PathBuf>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let mut clients: Vec<Option<postgres::Client>> = servers.iter().map(|_| None).collect();
            let mut next = 1_000_000i64;
            let mut which = 0;
            while !s.load(Ordering::Relaxed) {
                if clients[which].is_none() {
                    clients[which] = sql(&servers[which]);
                }
                let done = clients[which]
                    .as_mut()
                    .map(|c| c.execute("INSERT INTO load (id) VALUES ($1)", &[&next]));
                match done {
                    Some(Ok(_)) => {
                        a.lock().unwrap().push((next, Instant::now()));
                        next += 1;
                    }
                    Some(Err(e)) => {
                        // A replica refuses; a stopped server drops the
                        // connection: try the other. An unacknowledged row
                        // is never retried under the same number.
                        if e.code().is_none() || e.is_closed() {
                            clients[which] = None;
                        }
                        next += 1;
                        which = 1 - which;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    None => {
                        which = 1 - which;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
        Load {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// The longest time between two acknowledged writes within `from..to`.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let acked = self.acked.lock().unwrap();
        let times: Vec<Instant> = acked
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| *t >= from && *t <= to)
            .collect();
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    /// Stops the load and returns the acknowledged row ids.
    pub fn finish(mut self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let acked = self.acked.lock().unwrap();
        acked.iter().map(|(id, _)| *id).collect()
    }
}

/// The acknowledged ids missing from the server behind `socket`.
pub fn missing_rows(socket: &Path, acked: &[i64]) -> Vec<i64> {
    let mut c = sql(socket).expect("connect to the primary");
    let present: std::collections::HashSet<i64> = c
        .query("SELECT id FROM load", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    acked
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect()
}
