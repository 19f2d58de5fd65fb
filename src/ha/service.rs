//! Starting and stopping this node's PostgreSQL server the way `ha.toml`'s
//! `[service]` says: `pg_ctl` (run as the data directory's owner when
//! keyferry runs as root), a systemd unit, or a Windows service through the
//! Service Control Manager.
//!
//! Every operation is first turned into a [`Plan`] (the program and
//! arguments, or the service and the request), so what keyferry would run is
//! testable on any platform; [`Server::run`] then carries a plan out.
//!
//! Invariants:
//! - whether the server runs is always read from the data directory
//!   (`pg_ctl status`, i.e. `postmaster.pid` and a live process), never from
//!   the service manager, so the answer is the same whatever the method;
//! - `start` and `stop` are idempotent: starting a running server or
//!   stopping a stopped one does nothing, so they can serve as undos that
//!   may run twice;
//! - a server started here does not die with keyferry: `pg_ctl` is run
//!   without the parent-death tie of [`crate::pg::child`];
//! - nothing `pg_ctl` starts can hold keyferry up: `pg_ctl`'s own standard
//!   output and error go to a file, never to a pipe. The server inherits
//!   them (on Windows always, whatever `-l` says; elsewhere any program that
//!   forks a daemon does the same) and keeps them open until it stops, so a
//!   pipe would not reach end-of-file while the server runs.
//!
//! That file is `<data>.pg_ctl.log` beside the data directory, the one
//! `pg_ctl start -l` already writes the server's log to (on Windows the
//! server writes it through the output it inherits, see
//! [`server_log_args`]): one file to name in
//! messages, outside the data directory so a base backup does not copy it,
//! and in a directory the data directory's owner can write. keyferry
//! appends to it, creates it owner-only and (as root) gives it to the data
//! directory's owner, since the server, running as that owner, appends to it
//! too. When `pg_ctl` fails, the error quotes the last lines this run added
//! to it and names it. `systemctl` and the Service Control Manager start the
//! server in their own context, so their output is not involved.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::{HaConfig, ServiceControl};
use crate::pg::{self, PgError, ServerStatus};

/// Start or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Op {
    Start,
    Stop,
}

/// What carrying out an [`Op`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// A program with its arguments; `as_data_owner`: run as the data
    /// directory's owner when keyferry runs as root.
    Program {
        program: PathBuf,
        args: Vec<OsString>,
        as_data_owner: bool,
    },
    /// A request to the Windows Service Control Manager.
    WindowsService { name: String, op: Op },
}

/// The local server as `ha.toml` describes it. Serializable so the journal
/// can name the undo "start the server again".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Server {
    pub control: ServiceControl,
    pub pg_bin: PathBuf,
    pub pg_data: PathBuf,
    /// Bounds each start and stop.
    pub timeout_secs: u64,
    /// Server settings for its start only (`name=value`, keyferry's own
    /// constants, no quoting), given as `pg_ctl start -o "-c name=value"`;
    /// a service manager starts the server its own way, without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_settings: Vec<String>,
}

impl Server {
    pub(crate) fn of(config: &HaConfig, timeout: Duration) -> Self {
        Server {
            control: config.service.clone(),
            pg_bin: config.pg_bin.clone(),
            pg_data: config.pg_data.clone(),
            timeout_secs: timeout.as_secs().max(1),
            start_settings: Vec::new(),
        }
    }

    /// This server, started by `pg_ctl` with
    /// `recovery_init_sync_method = syncfs` where [`pg::syncfs::usable`]
    /// says so. For a data directory that was not shut down cleanly (a
    /// rewound one is "in archive recovery"), whose start syncs the whole
    /// directory before recovery: one `syncfs` of the file systems of the
    /// data directory, `pg_wal` and the tablespaces instead of an `fsync`
    /// per file, covering the same files. The setting lasts for this
    /// server's run; `pg_ctl` keeps it in `postmaster.opts`, so an
    /// operator's plain `pg_ctl restart` repeats it.
    pub(crate) fn syncing_by_file_system(mut self) -> Self {
        if matches!(self.control, ServiceControl::PgCtl) && pg::syncfs::usable(&self.pg_data) {
            self.start_settings = vec!["recovery_init_sync_method=syncfs".into()];
        }
        self
    }

    /// Where `pg_ctl start` sends the server's output: beside the data
    /// directory (inside it, a base backup would copy the log along).
    pub(crate) fn pg_ctl_log(&self) -> PathBuf {
        let mut name = self
            .pg_data
            .file_name()
            .map(OsString::from)
            .unwrap_or_default();
        name.push(".pg_ctl.log");
        crate::fsutil::parent_dir(&self.pg_data).join(name)
    }

    /// What `op` runs.
    pub(crate) fn plan(&self, op: Op) -> Plan {
        let timeout = self.timeout_secs.to_string();
        match &self.control {
            ServiceControl::PgCtl => {
                let mut args: Vec<OsString> =
                    vec![op_word(op).into(), "-D".into(), self.pg_data.clone().into()];
                args.extend(["-w".into(), "-t".into(), timeout.into()]);
                match op {
                    Op::Start => {
                        args.extend(server_log_args(self.pg_ctl_log()));
                        if !self.start_settings.is_empty() {
                            let options: Vec<String> = self
                                .start_settings
                                .iter()
                                .map(|s| format!("-c {s}"))
                                .collect();
                            args.extend(["-o".into(), options.join(" ").into()]);
                        }
                    }
                    Op::Stop => args.extend(["-m".into(), "fast".into()]),
                }
                Plan::Program {
                    program: pg::program(&self.pg_bin, "pg_ctl"),
                    args,
                    as_data_owner: true,
                }
            }
            ServiceControl::Systemd { unit } => Plan::Program {
                program: PathBuf::from("systemctl"),
                args: vec![op_word(op).into(), unit.into()],
                as_data_owner: false,
            },
            ServiceControl::WindowsService { name } => Plan::WindowsService {
                name: name.clone(),
                op,
            },
        }
    }

    /// Whether a server runs on the data directory (none can on a
    /// directory that holds no cluster, or none at all).
    pub(crate) fn is_running(&self) -> Result<bool, PgError> {
        if !self.pg_data.join("PG_VERSION").exists() {
            return Ok(false);
        }
        Ok(pg::server_status(&self.pg_bin, &self.pg_data)? == ServerStatus::Running)
    }

    /// Starts the server unless it runs already.
    pub(crate) fn start(&self) -> Result<(), ServiceError> {
        if self.is_running().map_err(ServiceError::Status)? {
            return Ok(());
        }
        if let Err(e) = self.run(Op::Start) {
            // A start already under way (a `pg_ctl` left by a killed run)
            // wins the data directory's lock and makes this one fail: the
            // server it starts is what was asked for.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if self.is_running().map_err(ServiceError::Status)? {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            return Err(e);
        }
        if !self.is_running().map_err(ServiceError::Status)? {
            return Err(self.failed(Op::Start, "the server is not running afterwards".into()));
        }
        Ok(())
    }

    /// Stops the server (fast shutdown: clients are disconnected, the final
    /// checkpoint is written) unless it is stopped already.
    pub(crate) fn stop(&self) -> Result<(), ServiceError> {
        if !self.is_running().map_err(ServiceError::Status)? {
            return Ok(());
        }
        self.run(Op::Stop)?;
        if self.is_running().map_err(ServiceError::Status)? {
            return Err(self.failed(Op::Stop, "the server still runs afterwards".into()));
        }
        Ok(())
    }

    /// Puts the server into the state `running`.
    pub(crate) fn ensure(&self, running: bool) -> Result<(), ServiceError> {
        if running {
            self.start()
        } else {
            self.stop()
        }
    }

    fn run(&self, op: Op) -> Result<(), ServiceError> {
        tracing::info!(?op, method = ?self.control, "local server");
        match self.plan(op) {
            Plan::Program {
                program,
                args,
                as_data_owner,
            } => {
                let mut command = Command::new(&program);
                command
                    .args(&args)
                    .env("LC_ALL", "C")
                    .env("LANG", "C")
                    .stdin(Stdio::null());
                // pg_ctl: its output (and whatever the server inherits) to
                // the log file; systemctl: a pipe, as nothing it runs
                // inherits it.
                let log = match self.control {
                    ServiceControl::PgCtl => {
                        let (file, start) = self.open_pg_ctl_log()?;
                        let err = file.try_clone().map_err(|e| self.log_error(e))?;
                        command.stdout(file).stderr(err);
                        Some(start)
                    }
                    _ => {
                        command.stdout(Stdio::null()).stderr(Stdio::piped());
                        None
                    }
                };
                if as_data_owner {
                    pg::as_owner_of(&mut command, &self.pg_data);
                }
                let out = command
                    .output()
                    .map_err(|e| self.failed(op, format!("{}: {e}", program.display())))?;
                if !out.status.success() {
                    let said = match log {
                        Some(start) => tail_since(&self.pg_ctl_log(), start),
                        None => pg::one_line(&String::from_utf8_lossy(&out.stderr)),
                    };
                    return Err(self.failed(op, format!("{said} ({})", out.status)));
                }
                Ok(())
            }
            Plan::WindowsService { name, op } => {
                scm::control(&name, op, Duration::from_secs(self.timeout_secs))
                    .map_err(|e| self.failed(op, format!("service {name}: {e}")))
            }
        }
    }

    /// Opens [`Self::pg_ctl_log`] for appending `pg_ctl`'s output: created
    /// owner-only, owned like the data directory; with its length before
    /// this run, where this run's output starts.
    fn open_pg_ctl_log(&self) -> Result<(File, u64), ServiceError> {
        let path = self.pg_ctl_log();
        let file = crate::fsutil::open_append_private(&path).map_err(|e| self.log_error(e))?;
        own_like(&file, &self.pg_data).map_err(|e| self.log_error(e))?;
        let start = file.metadata().map_err(|e| self.log_error(e))?.len();
        Ok((file, start))
    }

    fn log_error(&self, source: io::Error) -> ServiceError {
        ServiceError::Log {
            path: self.pg_ctl_log(),
            source,
        }
    }

    fn failed(&self, op: Op, message: String) -> ServiceError {
        ServiceError::Failed {
            op: op_word(op),
            data: self.pg_data.clone(),
            message,
            log: matches!(self.control, ServiceControl::PgCtl).then(|| self.pg_ctl_log()),
        }
    }
}

/// `pg_ctl start`'s arguments that send the server's log to `log`, the
/// file keyferry already gives `pg_ctl` as its output.
#[cfg(unix)]
fn server_log_args(log: PathBuf) -> Vec<OsString> {
    vec!["-l".into(), log.into()]
}

/// None on Windows: there `pg_ctl -l` has the server started through
/// `cmd /C "… >> log"`, and cmd's opening of the file conflicts with the
/// handle keyferry holds on that same file for `pg_ctl`'s output (a sharing
/// violation, and the server does not start). Without `-l` the server
/// writes to the output it inherits from `pg_ctl`, which is that file.
#[cfg(windows)]
fn server_log_args(_log: PathBuf) -> Vec<OsString> {
    Vec::new()
}

/// As root, gives `file` to the owner (and group) of `data`, the account
/// `pg_ctl` and the server run as (see [`pg::as_owner_of`]); otherwise the
/// caller, who runs them, owns it already.
#[cfg(unix)]
fn own_like(file: &File, data: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let meta = std::fs::metadata(data)?;
    if meta.uid() == 0 {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()))
}

/// `pg_ctl` runs as the caller on Windows (see [`pg::as_owner_of`]), who
/// created the file owner-only.
#[cfg(windows)]
fn own_like(_file: &File, _data: &Path) -> io::Result<()> {
    Ok(())
}

/// The last lines written to `log` from byte `start` on, as one line (at
/// most the last 8 KiB); what could not be read is said instead.
fn tail_since(log: &Path, start: u64) -> String {
    const MAX: u64 = 8 * 1024;
    const LINES: usize = 5;
    let read = || -> io::Result<String> {
        let mut file = File::open(log)?;
        let len = file.metadata()?.len();
        let from = start.max(len.saturating_sub(MAX)).min(len);
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.take(MAX).read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let said = pg::one_line(&lines[lines.len().saturating_sub(LINES)..].join("\n"));
            if said.is_empty() {
                "pg_ctl said nothing".to_owned()
            } else {
                said
            }
        }
        Err(e) => format!("pg_ctl's output cannot be read: {e}"),
    }
}

fn op_word(op: Op) -> &'static str {
    match op {
        Op::Start => "start",
        Op::Stop => "stop",
    }
}

/// The data directory and the programs' directory of the Windows service
/// `name`, from its command line in the service manager (what `sc qc`
/// shows as BINARY_PATH_NAME; see [`super::winsvc`]).
#[cfg(windows)]
pub(crate) fn service_paths(name: &str) -> Result<super::winsvc::ServicePaths, String> {
    let line = scm::command_line(name)
        .map_err(|e| format!("the service manager cannot show service {name}: {e}"))?;
    super::winsvc::parse_command_line(&line).map_err(|e| format!("service {name}: {e}"))
}

/// The start type of the Windows service `name` (`SERVICE_AUTO_START`,
/// `SERVICE_DEMAND_START`, …), as the service manager has it.
#[cfg(windows)]
pub(crate) fn service_start_type(name: &str) -> Result<u32, String> {
    scm::start_type(name)
        .map_err(|e| format!("the service manager cannot show service {name}: {e}"))
}

/// Only Windows has a service manager to ask.
#[cfg(unix)]
pub(crate) fn service_paths(name: &str) -> Result<super::winsvc::ServicePaths, String> {
    Err(format!(
        "service {name}: the Windows service manager exists only on Windows"
    ))
}

/// Why the server could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    #[error("cannot {op} the PostgreSQL server of {data}: {message}{}", log_hint(.log))]
    Failed {
        op: &'static str,
        data: PathBuf,
        message: String,
        log: Option<PathBuf>,
    },
    #[error("cannot tell whether PostgreSQL runs: {0}")]
    Status(PgError),
    #[error("cannot open {} for pg_ctl's output: {source}; make its directory writable, or move the file away if something else owns it", .path.display())]
    Log { path: PathBuf, source: io::Error },
}

fn log_hint(log: &Option<PathBuf>) -> String {
    log.as_ref()
        .map(|l| {
            format!(
                "; pg_ctl's output and the server's log are in {}",
                l.display()
            )
        })
        .unwrap_or_default()
}

/// The Service Control Manager (Windows).
#[cfg(windows)]
mod scm {
    use std::io;
    use std::time::{Duration, Instant};

    use windows_sys::Win32::Foundation::{
        GetLastError, ERROR_SERVICE_ALREADY_RUNNING, ERROR_SERVICE_NOT_ACTIVE,
    };
    use windows_sys::Win32::System::Services::{
        CloseServiceHandle, ControlService, OpenSCManagerW, OpenServiceW, QueryServiceConfigW,
        QueryServiceStatus, StartServiceW, QUERY_SERVICE_CONFIGW, SC_HANDLE, SC_MANAGER_CONNECT,
        SERVICE_CONTROL_STOP, SERVICE_QUERY_CONFIG, SERVICE_QUERY_STATUS, SERVICE_RUNNING,
        SERVICE_START, SERVICE_STATUS, SERVICE_STOP, SERVICE_STOPPED,
    };

    use super::Op;

    struct Handle(SC_HANDLE);

    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: the handle came from OpenSCManagerW/OpenServiceW and is
            // closed once.
            unsafe { CloseServiceHandle(self.0) };
        }
    }

    fn wide(s: &str) -> Vec<u16> {
        s.encode_utf16().chain(std::iter::once(0)).collect()
    }

    /// The local service manager and the service `name` opened with
    /// `access` (the manager's handle is returned so that it outlives the
    /// service's).
    fn open_service(name: &str, access: u32) -> io::Result<(Handle, Handle)> {
        // SAFETY: null machine and database names select the local SCM.
        let manager =
            unsafe { OpenSCManagerW(std::ptr::null(), std::ptr::null(), SC_MANAGER_CONNECT) };
        if manager.is_null() {
            return Err(io::Error::last_os_error());
        }
        let manager = Handle(manager);
        let wname = wide(name);
        // SAFETY: `wname` is NUL-terminated and outlives the call.
        let service = unsafe { OpenServiceW(manager.0, wname.as_ptr(), access) };
        if service.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok((manager, Handle(service)))
    }

    /// The service `name`'s configuration, as `read` takes it from the
    /// structure the service manager fills (valid only during the call).
    fn with_config<T>(name: &str, read: impl FnOnce(&QUERY_SERVICE_CONFIGW) -> T) -> io::Result<T> {
        let (_manager, service) = open_service(name, SERVICE_QUERY_CONFIG)?;
        let mut needed: u32 = 0;
        // SAFETY: a null buffer of size 0 asks for the size needed.
        unsafe { QueryServiceConfigW(service.0, std::ptr::null_mut(), 0, &mut needed) };
        // u64 elements keep the buffer aligned for QUERY_SERVICE_CONFIGW.
        let mut buffer = vec![0u64; (needed as usize).div_ceil(8).max(1)];
        let size = u32::try_from(buffer.len() * 8).unwrap_or(u32::MAX);
        let config = buffer.as_mut_ptr().cast::<QUERY_SERVICE_CONFIGW>();
        // SAFETY: `buffer` holds `size` writable, aligned bytes.
        if unsafe { QueryServiceConfigW(service.0, config, size, &mut needed) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: on success the structure is filled, its string pointers
        // into `buffer`, which outlives the call.
        Ok(read(unsafe { &*config }))
    }

    /// The command line the service `name` runs (`BINARY_PATH_NAME`).
    pub(crate) fn command_line(name: &str) -> io::Result<String> {
        with_config(name, |config| {
            let path = config.lpBinaryPathName;
            if path.is_null() {
                return String::new();
            }
            // SAFETY: `path` is a NUL-terminated UTF-16 string inside the
            // buffer `with_config` filled.
            let len = (0..).take_while(|&i| unsafe { *path.add(i) } != 0).count();
            // SAFETY: the `len` elements before the NUL are initialised.
            let wide = unsafe { std::slice::from_raw_parts(path, len) };
            String::from_utf16_lossy(wide)
        })
    }

    /// The service `name`'s start type (`START_TYPE` in `sc qc`).
    pub(crate) fn start_type(name: &str) -> io::Result<u32> {
        with_config(name, |config| config.dwStartType)
    }

    /// Asks the SCM to start or stop `name` and waits (bounded by
    /// `timeout`) until it reports running or stopped.
    pub(super) fn control(name: &str, op: Op, timeout: Duration) -> io::Result<()> {
        let access = SERVICE_START | SERVICE_STOP | SERVICE_QUERY_STATUS;
        let (_manager, service) = open_service(name, access)?;
        // SAFETY: SERVICE_STATUS is plain data; all zeroes is valid.
        let mut status: SERVICE_STATUS = unsafe { std::mem::zeroed() };
        let (ok, benign, want) = match op {
            // SAFETY: a valid service handle, no arguments.
            Op::Start => (
                unsafe { StartServiceW(service.0, 0, std::ptr::null()) },
                ERROR_SERVICE_ALREADY_RUNNING,
                SERVICE_RUNNING,
            ),
            // SAFETY: a valid service handle and a writable status.
            Op::Stop => (
                unsafe { ControlService(service.0, SERVICE_CONTROL_STOP, &mut status) },
                ERROR_SERVICE_NOT_ACTIVE,
                SERVICE_STOPPED,
            ),
        };
        // SAFETY: reads the calling thread's last error.
        if ok == 0 && unsafe { GetLastError() } != benign {
            return Err(io::Error::last_os_error());
        }
        let deadline = Instant::now() + timeout;
        loop {
            // SAFETY: a valid service handle and a writable status.
            if unsafe { QueryServiceStatus(service.0, &mut status) } == 0 {
                return Err(io::Error::last_os_error());
            }
            if status.dwCurrentState == want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("still in state {} after {timeout:?}", status.dwCurrentState),
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

#[cfg(not(windows))]
mod scm {
    use std::io;
    use std::time::Duration;

    use super::Op;

    pub(super) fn control(_name: &str, _op: Op, _timeout: Duration) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a Windows service can only be controlled on Windows: set [service] method in ha.toml to \"pg_ctl\" or \"systemd\"",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn server(control: ServiceControl) -> Server {
        Server {
            control,
            pg_bin: PathBuf::from("/usr/lib/postgresql/15/bin"),
            pg_data: PathBuf::from("/var/lib/postgresql/15/main"),
            timeout_secs: 60,
            start_settings: Vec::new(),
        }
    }

    fn args(plan: &Plan) -> Vec<String> {
        match plan {
            Plan::Program { args, .. } => args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            Plan::WindowsService { .. } => panic!("not a program"),
        }
    }

    #[test]
    fn pg_ctl_runs_as_the_data_owner_waits_and_logs_beside_the_data() {
        let s = server(ServiceControl::PgCtl);
        let start = s.plan(Op::Start);
        let Plan::Program {
            program,
            as_data_owner,
            ..
        } = &start
        else {
            panic!("{start:?}")
        };
        assert_eq!(program, &pg::program(&s.pg_bin, "pg_ctl"));
        assert!(as_data_owner);
        let log = Path::new("/var/lib/postgresql/15").join("main.pg_ctl.log");
        let mut expected: Vec<String> = ["start", "-D", "/var/lib/postgresql/15/main", "-w"]
            .into_iter()
            .chain(["-t", "60"])
            .map(String::from)
            .collect();
        if cfg!(unix) {
            // On Windows the server writes the same file through the
            // output it inherits (see `server_log_args`).
            expected.extend(["-l".to_owned(), log.display().to_string()]);
        }
        assert_eq!(args(&start), expected);
        assert_eq!(
            args(&s.plan(Op::Stop)),
            [
                "stop",
                "-D",
                "/var/lib/postgresql/15/main",
                "-w",
                "-t",
                "60",
                "-m",
                "fast"
            ]
        );
        let with = Server {
            start_settings: vec!["recovery_init_sync_method=syncfs".into()],
            ..s.clone()
        };
        let start = args(&with.plan(Op::Start));
        assert_eq!(
            start[start.len() - 2..],
            ["-o", "-c recovery_init_sync_method=syncfs"]
        );
        assert_eq!(args(&with.plan(Op::Stop)), args(&s.plan(Op::Stop)));
        // A journal written before the field existed still reads.
        let old = serde_json::json!({
            "control": serde_json::to_value(&s.control).unwrap(),
            "pg_bin": "/usr/lib/postgresql/15/bin",
            "pg_data": "/var/lib/postgresql/15/main",
            "timeout_secs": 60
        });
        assert_eq!(serde_json::from_value::<Server>(old).unwrap(), s);
    }

    #[test]
    fn systemd_runs_systemctl_on_the_unit() {
        let s = server(ServiceControl::Systemd {
            unit: "postgresql@15-main".into(),
        });
        for (op, word) in [(Op::Start, "start"), (Op::Stop, "stop")] {
            let plan = s.plan(op);
            let Plan::Program {
                program,
                as_data_owner,
                ..
            } = &plan
            else {
                panic!("{plan:?}")
            };
            assert_eq!(program, Path::new("systemctl"));
            assert!(!as_data_owner, "systemctl runs as root");
            assert_eq!(args(&plan), [word, "postgresql@15-main"]);
        }
    }

    #[test]
    fn a_windows_service_goes_to_the_service_manager() {
        let s = server(ServiceControl::WindowsService {
            name: "postgresql-x64-15".into(),
        });
        assert_eq!(
            s.plan(Op::Stop),
            Plan::WindowsService {
                name: "postgresql-x64-15".into(),
                op: Op::Stop
            }
        );
        assert_eq!(
            s.plan(Op::Start),
            Plan::WindowsService {
                name: "postgresql-x64-15".into(),
                op: Op::Start
            }
        );
    }

    /// A `pg_ctl` stand-in in a temporary directory, with a data
    /// directory beside it; `start` runs `start_body` (sh), `status` says
    /// running once `start` has succeeded.
    #[cfg(unix)]
    fn fake_pg_ctl(start_body: &str) -> (tempfile::TempDir, Server) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let data = dir.path().join("data");
        std::fs::create_dir(&bin).unwrap();
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in\n\
             start) {start_body} ;;\n\
             status) [ -f \"$3/running\" ] && exit 0; exit 3 ;;\n\
             *) exit 1 ;;\nesac\n"
        );
        let pg_ctl = pg::program(&bin, "pg_ctl");
        std::fs::write(&pg_ctl, script).unwrap();
        std::fs::set_permissions(&pg_ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let server = Server {
            control: ServiceControl::PgCtl,
            pg_bin: bin,
            pg_data: data,
            timeout_secs: 60,
            start_settings: Vec::new(),
        };
        (dir, server)
    }

    #[cfg(unix)]
    #[test]
    fn a_server_holding_pg_ctl_s_output_does_not_hold_up_start() {
        // Like postgres (and postgres.exe under pg_ctl on Windows): a
        // process that outlives pg_ctl with its stdout and stderr.
        let (_dir, s) = fake_pg_ctl(
            "sleep 30 & echo $! > \"$3/sleep.pid\"; echo started; touch \"$3/running\"; exit 0",
        );
        let began = std::time::Instant::now();
        let result = s.start();
        let took = began.elapsed();
        if let Ok(pid) = std::fs::read_to_string(s.pg_data.join("sleep.pid")) {
            // SAFETY: signals the one process this test started.
            unsafe { libc::kill(pid.trim().parse().unwrap(), libc::SIGKILL) };
        }
        result.unwrap();
        assert!(
            took < Duration::from_secs(25),
            "start waited {took:?} for the backgrounded process"
        );
        let log = std::fs::read_to_string(s.pg_ctl_log()).unwrap();
        assert!(log.contains("started"), "{log}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.pg_ctl_log())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "log mode {mode:o}");
    }

    #[cfg(unix)]
    #[test]
    fn a_failing_pg_ctl_is_quoted_from_its_log_and_the_log_named() {
        let (_dir, s) = fake_pg_ctl(
            "echo 'waiting for server to start.... stopped waiting'; \
             echo 'pg_ctl: could not start server: fake refusal' >&2; exit 1",
        );
        std::fs::write(s.pg_ctl_log(), "an earlier run's line\n").unwrap();
        let e = s.run(Op::Start).unwrap_err().to_string();
        assert!(
            e.contains("pg_ctl: could not start server: fake refusal"),
            "{e}"
        );
        assert!(e.contains(&s.pg_ctl_log().display().to_string()), "{e}");
        assert!(!e.contains("an earlier run"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[cfg(not(windows))]
    #[test]
    fn a_windows_service_elsewhere_is_a_clear_error() {
        let e = scm::control("x", Op::Start, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string().contains("only be controlled on Windows"),
            "{e}"
        );
    }
}
