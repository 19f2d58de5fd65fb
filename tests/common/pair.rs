//! A pair of hosts for the tests of the replica's life (bootstrap,
//! rejoin): the primary in network namespace `a` (10.213.0.1) with pgbench
//! data, the secondary in `b` (10.213.0.2) running a standalone server of
//! its own, as a freshly installed secondary does, and a keyferry home for
//! the secondary. keyferry runs on the secondary's host, as root, and runs
//! the server's programs as `postgres`; plus the waits, kills and file
//! listings those tests judge by.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::netns::{NetnsPair, ADDR_A, ADDR_B};
use super::pg::{Auth, PgOptions, PgServer};

pub const PG_PORT: u16 = 5432;
pub const PASSWORD: &str = "bootstrap replication password";

pub fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("keyferry")
}

/// Two hosts, a primary with data and a secondary with a server of its own.
pub struct Pair {
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
    pub pw_file: PathBuf,
    pub secondary: PgServer,
    pub primary: PgServer,
    pub ns: NetnsPair,
}

pub fn server(ns: &str, addr: &str, extra: &[&str]) -> Option<PgServer> {
    server_with_auth(ns, addr, extra, Auth::Trust)
}

/// [`server`] with the given `pg_hba.conf` defaults.
pub fn server_with_auth(ns: &str, addr: &str, extra: &[&str], auth: Auth) -> Option<PgServer> {
    let mut extra_conf = vec![format!("listen_addresses = '{addr},127.0.0.1'")];
    extra_conf.extend(extra.iter().map(|l| (*l).to_owned()));
    let mut server = PgServer::start_primary_with_auth(
        PgOptions {
            extra_conf,
            netns: Some(ns.to_owned()),
        },
        auth,
    )?;
    server.move_to_port(PG_PORT);
    Some(server)
}

impl Pair {
    /// `scale`: pgbench scale of the primary's data (0: none).
    pub fn new(tag: &str, scale: u32) -> Option<Pair> {
        Self::with_conf(tag, scale, &[])
    }

    /// `conf`: extra `postgresql.conf` lines of both servers.
    pub fn with_conf(tag: &str, scale: u32, conf: &[&str]) -> Option<Pair> {
        let ns = NetnsPair::create(tag)?;
        let primary = server(&ns.a, ADDR_A, conf)?;
        let secondary = server(&ns.b, ADDR_B, conf)?;
        primary.create_replication_user("repuser", PASSWORD);
        primary
            .connect()
            .batch_execute("GRANT pg_monitor TO repuser")
            .unwrap();
        let mut hba = primary.read_hba();
        hba.extend_from_slice(
            format!(
                "host replication repuser {ADDR_B}/32 scram-sha-256\n\
                 host all repuser {ADDR_B}/32 scram-sha-256\n"
            )
            .as_bytes(),
        );
        primary.write_hba(&hba);
        primary
            .connect()
            .batch_execute("SELECT pg_reload_conf()")
            .unwrap();
        if scale > 0 {
            let sock = primary.socket_dir().to_str().unwrap().to_owned();
            let out = primary.run_tool(
                "pgbench",
                &[
                    "-i",
                    "-q",
                    "-s",
                    &scale.to_string(),
                    "-h",
                    &sock,
                    "-p",
                    "5432",
                    "-U",
                    "postgres",
                    "postgres",
                ],
            );
            assert!(
                out.status.success(),
                "pgbench -i: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home-b");
        let pw_file = tmp.path().join("repuser.pw");
        fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
        fs::set_permissions(&pw_file, fs::Permissions::from_mode(0o600)).unwrap();
        let pair = Pair {
            tmp,
            home,
            pw_file,
            secondary,
            primary,
            ns,
        };
        super::succeeded(&pair.keyferry(&["init"]));
        pair.ha_init(&pair.ns.b, &pair.home, "pam-b", pair.data());
        Some(pair)
    }

    /// `keyferry ha init` of node `node` in `home` on the host of `ns`:
    /// this pair's addresses, the servers' programs, `data` as `pg_data`.
    pub fn ha_init(&self, ns: &str, home: &Path, node: &str, data: &Path) {
        let pg_bin = self.secondary.bin_dir().to_str().unwrap();
        let args = [
            "ha",
            "init",
            "--node",
            node,
            "--primary",
            ADDR_A,
            "--secondary",
            ADDR_B,
            "--pg-bin",
            pg_bin,
            "--pg-data",
            data.to_str().unwrap(),
        ];
        super::succeeded(&Self::keyferry_cmd(ns, home, &args).output().unwrap());
    }

    pub fn data(&self) -> &Path {
        self.secondary.data_dir()
    }

    /// `keyferry --home HOME ARGS…` on the host of namespace `ns`, with no
    /// home or libpq password file from the environment.
    pub fn keyferry_cmd(ns: &str, home: &Path, args: &[&str]) -> Command {
        let mut c = NetnsPair::exec(ns, &bin());
        c.arg("--home")
            .arg(home)
            .args(args)
            .env_remove("KEYFERRY_HOME")
            .env_remove("PGPASSFILE")
            .stdin(Stdio::null());
        c
    }

    /// keyferry with the secondary's home, on its host.
    pub fn command(&self, args: &[&str]) -> Command {
        Self::keyferry_cmd(&self.ns.b, &self.home, args)
    }

    /// `keyferry --home HOME ARGS…` on the primary's host.
    pub fn keyferry_on_a(&self, home: &Path, args: &[&str]) -> Output {
        Self::keyferry_cmd(&self.ns.a, home, args).output().unwrap()
    }

    pub fn keyferry(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `ha bootstrap` with the replication password file, `--timeout 60`
    /// unless `extra` names one.
    fn bootstrap_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "ha",
            "bootstrap",
            "--password-file",
            self.pw_file.to_str().unwrap(),
        ];
        if !extra.contains(&"--timeout") {
            args.extend(["--timeout", "60"]);
        }
        args.extend(extra);
        args
    }

    pub fn bootstrap(&self, extra: &[&str]) -> Output {
        self.keyferry(&self.bootstrap_args(extra))
    }

    pub fn spawn_bootstrap(&self, extra: &[&str]) -> Child {
        let args = self.bootstrap_args(extra);
        self.command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The directory beside the data directory: names, without the
    /// harness's socket directory and server log, and without the log of
    /// the servers keyferry started (`data.pg_ctl.log`: what a failed start
    /// said is kept for the operator, it is not the node's state).
    pub fn beside(&self) -> Vec<String> {
        let parent = self.data().parent().unwrap();
        let mut names: Vec<String> = fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !["sock", "server.log", "data.pg_ctl.log"].contains(&n.as_str()))
            .collect();
        names.sort();
        names
    }

    pub fn primary_sql(&self, sql: &str) -> Vec<postgres::Row> {
        self.primary.connect().query(sql, &[]).unwrap()
    }

    /// Waits until the replica (connected as the harness's superuser over
    /// its socket) shows `pred`.
    pub fn replica_query(&self, sql: &str) -> Vec<postgres::Row> {
        self.secondary.connect().query(sql, &[]).unwrap()
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The data directory's files, as the node's state to compare.
pub type Snapshot = BTreeMap<PathBuf, Option<Vec<u8>>>;

pub fn old_dirs(pair: &Pair) -> Vec<PathBuf> {
    let parent = pair.data().parent().unwrap();
    let mut v: Vec<PathBuf> = fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("data.old-")
        })
        .collect();
    v.sort();
    v
}

pub fn wait_for(what: &str, limit: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `pred` while keyferry (`child`) runs; says what it printed
/// if it ended first.
pub fn wait_during(child: &mut Child, what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pred() {
        if child.try_wait().unwrap().is_some() {
            let mut out = String::new();
            use std::io::Read;
            let _ = child.stdout.take().unwrap().read_to_string(&mut out);
            let _ = child.stderr.take().unwrap().read_to_string(&mut out);
            panic!(
                "keyferry ended before {what}: {}\n{out}",
                child.wait().unwrap()
            );
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILL (std's `kill` sends exactly that), then reaps it: when this
/// returns, the process is gone and its files are closed.
pub fn kill9(child: &mut Child) {
    child.kill().expect("SIGKILL keyferry");
    let status = child.wait().expect("reap keyferry");
    assert!(
        status.code().is_none(),
        "killed by a signal, not exited: {status}"
    );
}

/// No process runs with `needle` in its command line.
pub fn no_process_with(needle: &str) -> bool {
    let out = Command::new("pgrep").args(["-f", needle]).output().unwrap();
    out.stdout.is_empty()
}

pub fn staging_of(pair: &Pair) -> Option<PathBuf> {
    let parent = pair.data().parent().unwrap();
    fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("data.keyferry-new-")
        })
}

pub fn assert_is_replica(pair: &Pair) {
    let rows = pair.replica_query("SELECT pg_is_in_recovery()");
    assert!(rows[0].get::<_, bool>(0), "the secondary runs as a replica");
    let query = format!(
        "SELECT state FROM pg_stat_replication WHERE host(client_addr) = '{ADDR_B}' AND state = 'streaming'"
    );
    wait_for(
        "the primary to see one streaming replica",
        Duration::from_secs(20),
        || pair.primary_sql(&query).len() == 1,
    );
}

/// Every file under `root` that holds `needle`.
pub fn files_holding(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let bytes = fs::read(&p).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(p);
                }
            }
        }
    }
    found
}
