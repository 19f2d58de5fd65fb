//! Real, throw-away PostgreSQL servers for tests.
//!
//! Follows `POSTGRES-TESTING.md` of the project: server binaries from
//! `KEYFERRY_PG_BIN` or the newest `/usr/lib/postgresql/*/bin`; when the test
//! runs as root (PostgreSQL refuses to), every server program runs as the
//! `postgres` OS user through `runuser`, from `/`, on directories chowned to
//! that user; each server has its own temporary directory, Unix socket
//! directory and free loopback port; `C.UTF-8` locale; `initdb --no-sync` and
//! `fsync = off` because the clusters are thrown away (never do this in
//! product code); `wal_level = replica` so replicas can be made from them.
//!
//! Without server binaries a test gets `None` and a printed reason, so a
//! developer machine without PostgreSQL still runs the rest of the suite;
//! with `KEYFERRY_REQUIRE_PG=1` (set by CI) the absence is a failure.
//!
//! A server can run inside a network namespace ([`PgOptions::netns`], see
//! `netns.rs`); its programs then run through `ip netns exec`, and the
//! test's own SQL connections use its Unix socket (path-based sockets are
//! shared across namespaces; local connections are trusted).
//!
//! Dropping a [`PgServer`] stops it (`pg_ctl stop -m immediate`) and deletes
//! its directory.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use postgres::{Client, NoTls};
use tempfile::TempDir;

/// Environment variable naming the directory with `initdb`, `pg_ctl`, ….
pub const PG_BIN_ENV: &str = "KEYFERRY_PG_BIN";
/// Environment variable that turns a missing server into a test failure.
pub const REQUIRE_PG_ENV: &str = "KEYFERRY_REQUIRE_PG";
/// Where Debian installs the server binaries, one directory per major.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";
/// The OS user that runs the servers when the tests run as root.
const PG_OS_USER: &str = "postgres";
/// The only UTF-8 locale present on the test machines.
const LOCALE: &str = "C.UTF-8";
/// Superuser of every test cluster.
pub const SUPERUSER: &str = "postgres";
/// Password of that superuser. A fixed value is fine: the clusters listen on
/// loopback only and live for one test.
const SUPERUSER_PASSWORD: &str = "keyferry-test-superuser";
/// Seconds `pg_ctl` waits for start or stop.
const PG_CTL_WAIT_SECS: &str = "30";
/// Attempts at finding a free port (another process may take the one we
/// picked between probing and the server's bind).
const PORT_ATTEMPTS: usize = 3;

/// What the replication user `repuser` needs besides `REPLICATION` and
/// `pg_monitor` for switchover (`pg_promote`) and rejoin (`pg_rewind`'s
/// functions), as README's "Connections and rights" says.
pub const HA_GRANTS: &str = "\
    GRANT EXECUTE ON FUNCTION pg_catalog.pg_promote(boolean, integer) TO repuser;\
    GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO repuser;\
    GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO repuser;\
    GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO repuser;\
    GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO repuser;\
    GRANT pg_checkpoint TO repuser";

/// Options for a test server.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Extra `postgresql.conf` lines, appended last (a later line wins).
    pub extra_conf: Vec<String>,
    /// Run the server inside this network namespace.
    pub netns: Option<String>,
}

/// The `pg_hba.conf` a new cluster starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `local … trust`, `host … scram-sha-256`: what most tests use, so
    /// their own SQL reaches a server in a namespace through its socket.
    Trust,
    /// Debian's default rules (`initdb --auth-local=peer
    /// --auth-host=scram-sha-256`): the socket admits only the OS account
    /// of the same name. The test's own SQL to a server in a namespace then
    /// goes through keyferry's connection as the data directory's owner.
    Debian,
}

/// How to run the server programs on this machine.
#[derive(Debug, Clone)]
struct PgInstall {
    bin: PathBuf,
    /// `Some((uid, gid))` of the `postgres` user when running as root.
    run_as: Option<(u32, u32)>,
    /// Network namespace the programs run in.
    netns: Option<String>,
    auth: Auth,
}

/// A running test server.
pub struct PgServer {
    install: PgInstall,
    dir: TempDir,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
}

impl PgServer {
    /// Creates and starts a fresh cluster, or returns `None` (after saying
    /// why) when this machine has no PostgreSQL server binaries and
    /// `KEYFERRY_REQUIRE_PG` is not `1`. Any failure once the binaries are
    /// found panics with the server log: that is a broken test setup, not a
    /// missing optional dependency.
    pub fn start_primary(opts: PgOptions) -> Option<PgServer> {
        Self::start_primary_with_auth(opts, Auth::Trust)
    }

    /// [`PgServer::start_primary`] with the given `pg_hba.conf` defaults.
    pub fn start_primary_with_auth(opts: PgOptions, auth: Auth) -> Option<PgServer> {
        let mut install = match find_install() {
            Ok(install) => install,
            Err(Unusable::Broken(reason)) => panic!("PostgreSQL test setup is broken: {reason}"),
            Err(Unusable::Missing(reason)) => {
                if std::env::var(REQUIRE_PG_ENV).as_deref() == Ok("1") {
                    panic!("{REQUIRE_PG_ENV}=1 but no usable PostgreSQL: {reason}");
                }
                eprintln!("skipping PostgreSQL test: {reason} (set {REQUIRE_PG_ENV}=1 to make this a failure)");
                return None;
            }
        };
        install.netns = opts.netns.clone();
        install.auth = auth;
        let (dir, data, socket_dir) = install.server_dirs("keyferry-pg-");

        let pwfile = dir.path().join("pwfile");
        fs::write(&pwfile, SUPERUSER_PASSWORD).expect("write pwfile");
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600)).expect("chmod pwfile");
        install.give_to_server_user(&pwfile);

        let initdb = install
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["--no-sync", "-E", "UTF8", "-U", SUPERUSER])
            .arg(format!("--locale={LOCALE}"))
            .arg(match auth {
                Auth::Trust => "--auth-local=trust",
                Auth::Debian => "--auth-local=peer",
            })
            .arg("--auth-host=scram-sha-256")
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        check(&initdb, "initdb");
        fs::remove_file(&pwfile).expect("remove pwfile");

        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("unix_socket_directories = '{}'", socket_dir.display()),
            "fsync = off".to_owned(),
            "wal_level = replica".to_owned(),
            // A replica made without a slot needs the primary to keep WAL
            // (keyferry refuses to bootstrap one otherwise: `wal_retention`).
            "wal_keep_size = '128MB'".to_owned(),
        ];
        conf.extend(opts.extra_conf);
        append_lines(&data.join("postgresql.conf"), &conf);

        Some(PgServer::launch(install, dir, data, socket_dir))
    }

    /// A streaming replica of this server: `pg_basebackup -R -X stream`
    /// over the primary's Unix socket (local connections are trusted) into
    /// a new temporary directory, with its own socket directory and port.
    pub fn start_replica(&self) -> PgServer {
        self.start_replica_with(PgOptions {
            netns: self.install.netns.clone(),
            ..PgOptions::default()
        })
    }

    /// [`PgServer::start_replica`] with its own options: it runs in
    /// `opts.netns` (the base backup still goes through the primary's
    /// socket, which namespaces share), with `opts.extra_conf` appended to
    /// the `postgresql.conf` it copied from the primary.
    pub fn start_replica_with(&self, opts: PgOptions) -> PgServer {
        let install = self.install.clone();
        let (dir, data, socket_dir) = install.server_dirs("keyferry-pg-replica-");
        let port = self.port.to_string();
        let backup = install
            .command("pg_basebackup")
            .arg("-D")
            .arg(&data)
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &port, "-U", SUPERUSER, "-R", "-X", "stream"])
            .args(["-c", "fast", "--no-sync"])
            .output()
            .expect("run pg_basebackup");
        check(&backup, "pg_basebackup");
        let mut conf = vec![format!(
            "unix_socket_directories = '{}'",
            socket_dir.display()
        )];
        conf.extend(opts.extra_conf);
        append_lines(&data.join("postgresql.conf"), &conf);
        let mut install = install;
        install.netns = opts.netns;
        PgServer::launch(install, dir, data, socket_dir)
    }

    /// Starts the server of a prepared data directory on a free port.
    fn launch(install: PgInstall, dir: TempDir, data: PathBuf, socket_dir: PathBuf) -> PgServer {
        let mut server = PgServer {
            install,
            dir,
            data,
            socket_dir,
            port: 0,
        };
        server.start_on_free_port();
        server
    }

    /// `pg_ctl start`, waiting, logging to `server.log` beside the data.
    fn pg_ctl_start(&self) -> Output {
        self.install
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", PG_CTL_WAIT_SECS, "start"])
            .output()
            .expect("run pg_ctl start")
    }

    fn start_on_free_port(&mut self) {
        let log = self.dir.path().join("server.log");
        for attempt in 1..=PORT_ATTEMPTS {
            self.port = free_loopback_port();
            append_lines(
                &self.data.join("postgresql.conf"),
                &[format!("port = {}", self.port)],
            );
            let start = self.pg_ctl_start();
            if start.status.success() {
                return;
            }
            let log_text = fs::read_to_string(&log).unwrap_or_default();
            let port_taken =
                log_text.contains("could not bind") || log_text.contains("already in use");
            if !port_taken || attempt == PORT_ATTEMPTS {
                panic!(
                    "pg_ctl start failed: {}\n--- server log ---\n{log_text}",
                    String::from_utf8_lossy(&start.stderr)
                );
            }
        }
    }

    /// A clean (fast) shutdown, waiting for it.
    pub fn stop_clean(&mut self) {
        let stop = self
            .install
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", PG_CTL_WAIT_SECS, "stop"])
            .output()
            .expect("run pg_ctl stop");
        check(&stop, "pg_ctl stop");
    }

    /// Starts the stopped server again on its port.
    pub fn start(&mut self) {
        check(&self.pg_ctl_start(), "pg_ctl start");
    }

    /// Whether a server runs on the data directory (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        self.install
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("status")
            .output()
            .expect("run pg_ctl status")
            .status
            .success()
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The `postgres` OS user's (uid, gid) when the tests run as root.
    pub fn server_owner(&self) -> Option<(u32, u32)> {
        self.install.run_as
    }

    /// The directory of the server programs.
    pub fn bin_dir(&self) -> &Path {
        &self.install.bin
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's `pg_hba.conf`.
    pub fn hba_path(&self) -> PathBuf {
        self.data.join("pg_hba.conf")
    }

    /// Reads `pg_hba.conf`.
    pub fn read_hba(&self) -> Vec<u8> {
        fs::read(self.hba_path()).expect("read pg_hba.conf")
    }

    /// Overwrites `pg_hba.conf` in place, so it keeps the owner and mode
    /// the server needs to read it.
    pub fn write_hba(&self, text: &[u8]) {
        fs::write(self.hba_path(), text).expect("write pg_hba.conf");
    }

    /// A superuser connection over TCP with password authentication.
    pub fn connect(&self) -> Client {
        self.connect_as(SUPERUSER, SUPERUSER_PASSWORD)
    }

    /// A connection as `user` over TCP.
    pub fn connect_as(&self, user: &str, password: &str) -> Client {
        if self.install.netns.is_some() && self.install.auth == Auth::Debian {
            assert_eq!(
                user, SUPERUSER,
                "a Debian-auth server's socket admits only its owner"
            );
            return self.connect_as_owner();
        }
        let mut config = postgres::Config::new();
        if self.install.netns.is_some() {
            config.host_path(&self.socket_dir);
        } else {
            config.host(&Ipv4Addr::LOCALHOST.to_string());
        }
        config
            .port(self.port)
            .user(user)
            .password(password)
            .dbname("postgres")
            .connect(NoTls)
            .unwrap_or_else(|e| {
                panic!(
                    "connect to test server on port {} as {user}: {e}",
                    self.port
                )
            })
    }

    /// The superuser through the Unix socket as the data directory's owner
    /// (keyferry's own way: the `peer` rule admits it, also from root).
    pub fn connect_as_owner(&self) -> Client {
        let endpoint = keyferry::pg::Endpoint::Socket {
            dir: self.socket_dir.clone(),
            port: self.port,
        };
        let owner = keyferry::pg::peer::Owner::of(&self.data).expect("data directory's owner");
        keyferry::pg::connect_as_owner(
            &keyferry::pg::ConnSpec {
                endpoint: &endpoint,
                user: SUPERUSER,
                dbname: "postgres",
                password: None,
                timeout: std::time::Duration::from_secs(30),
            },
            owner,
        )
        .unwrap_or_else(|e| panic!("connect to test server as its owner: {e}"))
    }

    /// Creates a login role with the REPLICATION attribute. Name and
    /// password are quoted by the server (`format` with `%I` / `%L`).
    pub fn create_replication_user(&self, name: &str, password: &str) {
        let mut client = self.connect();
        let row = client
            .query_one(
                "SELECT format('CREATE ROLE %I WITH LOGIN REPLICATION PASSWORD %L', $1::text, $2::text)",
                &[&name, &password],
            )
            .expect("build CREATE ROLE");
        let statement: String = row.get(0);
        client
            .batch_execute(&statement)
            .expect("create replication user");
    }

    /// `(line_number, error)` of every line of the `pg_hba.conf` on disk
    /// that PostgreSQL cannot use.
    pub fn hba_file_errors(&self) -> Vec<(i32, String)> {
        self.connect()
            .query(
                "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL ORDER BY line_number",
                &[],
            )
            .expect("query pg_hba_file_rules")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    /// Runs one of the server's programs as the server's OS user.
    pub fn run_tool(&self, program: &str, args: &[&str]) -> Output {
        self.install
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"))
    }

    /// Stops the server now (immediate mode: the cluster is thrown away).
    /// Restarts the server on `port` (a clean stop, then a start): two
    /// servers in two network namespaces can then share the pair's one
    /// `pg_port`, as the two hosts of a real pair do.
    pub fn move_to_port(&mut self, port: u16) {
        self.stop_clean();
        append_lines(
            &self.data.join("postgresql.conf"),
            &[format!("port = {port}")],
        );
        check(&self.pg_ctl_start(), "pg_ctl start");
        self.port = port;
    }

    /// Also when the harness did not start it (keyferry may have): a
    /// stopped server makes `pg_ctl stop` fail, which is ignored.
    pub fn stop(&mut self) {
        let _ = self
            .install
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", PG_CTL_WAIT_SECS, "stop"])
            .output();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl PgInstall {
    /// A command for one of the server programs, run as the server's OS
    /// user when needed, from `/` (runuser keeps the caller's cwd, which the
    /// `postgres` user may not be able to read) and in the C.UTF-8 locale.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = match (&self.netns, self.run_as.is_some()) {
            (Some(ns), true) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "runuser", "-u", PG_OS_USER, "--"])
                    .arg(path);
                c
            }
            (Some(ns), false) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(path);
                c
            }
            (None, true) => {
                let mut c = Command::new("runuser");
                c.args(["-u", PG_OS_USER, "--"]).arg(path);
                c
            }
            (None, false) => Command::new(path),
        };
        command
            .current_dir("/")
            .env("LANG", LOCALE)
            .env("LC_ALL", LOCALE)
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE");
        command
    }

    /// A new temporary directory for one server, given to the server's
    /// user, with the (not yet created) data directory's path and a socket
    /// directory inside.
    fn server_dirs(&self, prefix: &str) -> (TempDir, PathBuf, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("create temp dir");
        self.give_to_server_user(dir.path());
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        fs::create_dir(&socket_dir).expect("create socket dir");
        self.give_to_server_user(&socket_dir);
        (dir, data, socket_dir)
    }

    fn give_to_server_user(&self, path: &Path) {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {} to {PG_OS_USER}: {e}", path.display()));
        }
    }
}

/// Why no server can be started.
enum Unusable {
    /// No server installed: skip, unless CI requires PostgreSQL.
    Missing(String),
    /// Something is there but wrong (a bad `KEYFERRY_PG_BIN`, no `postgres`
    /// user when running as root): always a failure, since skipping would
    /// hide a misconfiguration.
    Broken(String),
}

/// Finds the server binaries and decides whom they run as, or says why not.
fn find_install() -> Result<PgInstall, Unusable> {
    let bin = match std::env::var_os(PG_BIN_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => newest_debian_bin().ok_or_else(|| {
            Unusable::Missing(format!(
                "no PostgreSQL server binaries in {DEBIAN_PG_ROOT}/*/bin and {PG_BIN_ENV} is not set"
            ))
        })?,
    };
    for program in ["initdb", "pg_ctl"] {
        if !bin.join(program).is_file() {
            return Err(Unusable::Broken(format!(
                "{} has no {program}",
                bin.display()
            )));
        }
    }
    let run_as = if id(&["-u"]).map_err(Unusable::Broken)? == 0 {
        let user_id = |flag| {
            id(&[flag, PG_OS_USER]).map_err(|e| {
                Unusable::Broken(format!(
                    "running as root needs the {PG_OS_USER} OS user: {e}"
                ))
            })
        };
        Some((user_id("-u")?, user_id("-g")?))
    } else {
        None
    };
    Ok(PgInstall {
        bin,
        run_as,
        netns: None,
        auth: Auth::Trust,
    })
}

/// `/usr/lib/postgresql/<major>/bin` with the highest major that has initdb.
fn newest_debian_bin() -> Option<PathBuf> {
    fs::read_dir(DEBIAN_PG_ROOT)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

fn id(args: &[&str]) -> Result<u32, String> {
    let output = Command::new("id")
        .args(args)
        .output()
        .map_err(|e| format!("run id: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "id {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("id {}: {e}", args.join(" ")))
}

fn free_loopback_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("probe a free loopback port")
        .port()
}

fn append_lines(path: &Path, lines: &[String]) {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    for line in lines {
        writeln!(file, "{line}").expect("append config line");
    }
}

fn check(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// SIGKILL to the server of `data` and to every process it started, as a
/// power loss leaves them: no shutdown checkpoint, a stale
/// `postmaster.pid`. "Every process it started" is every `postgres`
/// process whose working directory is the data directory (each server
/// process runs there), found again after each round of kills until none
/// is left: a
/// backend the postmaster forked between the listing and its own death is
/// no child of it any more, and would hold the listening socket open.
pub fn kill9_server(data: &std::path::Path) {
    // A server that stopped meanwhile has no postmaster.pid; its processes
    // are looked for all the same.
    let pid = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok());
    let home = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    let in_data = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                let postgres = std::fs::read_link(format!("/proc/{p}/exe"))
                    .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "postgres"));
                postgres
                    && std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|cwd| cwd == home)
            })
            .collect()
    };
    let mut all: Vec<u32> = Vec::new();
    // The postmaster by its pid in the first round only: later, that pid
    // may be another program's.
    let mut first = pid;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let round: Vec<u32> = first
            .take()
            .into_iter()
            .chain(in_data())
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .collect();
        for p in &round {
            // SAFETY: kill(2) with a pid read from /proc and SIGKILL.
            unsafe { libc::kill(*p as libc::pid_t, libc::SIGKILL) };
        }
        all.extend(&round);
        // Reaped here (see `reap_orphans_here`): a zombie's pid still
        // answers `kill -0`, so `pg_ctl status` would call the server
        // running.
        super::pair::wait_for(
            "the killed server's processes to end",
            std::time::Duration::from_secs(20),
            || {
                all.iter().all(|p| {
                    let pid = *p as libc::pid_t;
                    let mut status = 0;
                    // SAFETY: waits only for the given pid, without blocking.
                    let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                    reaped == pid || !std::path::Path::new(&format!("/proc/{p}")).exists()
                })
            },
        );
        if in_data().is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processes of {} outlived SIGKILL",
            data.display()
        );
    }
}

/// Makes this test process the reaper of orphans started below it: the
/// server `pg_ctl` starts is an orphan, and where PID 1 does not reap (as
/// in some containers) a killed one would stay a zombie that `pg_ctl
/// status` calls running. On a host, init reaps it.
pub fn reap_orphans_here() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and changes only
    // this process's attributes.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
}
