//! PostgreSQL programs that must die with keyferry (`pg_basebackup`,
//! `pg_rewind`): a killed keyferry must not leave one writing into the node
//! behind its back, where neither `--resume` nor `--abort` could see it.
//!
//! Linux: the program runs under a small `sh` that leads its own process
//! group and gets a parent-death signal (`PR_SET_PDEATHSIG`, set after the
//! switch to the data directory's owner, since changing credentials clears
//! it); the signal makes it kill the whole group. A plain parent-death
//! signal on the program is not enough: `pg_basebackup -X stream` forks a
//! WAL receiver that would outlive its parent, still writing. Windows: the
//! program goes into a job object that kills its processes when keyferry's
//! handle to it closes, which happens when keyferry exits in any way
//! (`pg_basebackup` streams WAL in a thread there). Other Unix systems have
//! no such tie: there the journal still names the partial copy, and
//! `--abort` removes it.
//!
//! Never use this for `pg_ctl start`: the server it launches must outlive
//! keyferry.

use std::io;
use std::process::{Child, Command};

/// A running child tied to this process.
pub(crate) struct TiedChild {
    child: Child,
    #[cfg(windows)]
    _job: windows::Job,
}

impl TiedChild {
    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for TiedChild {
    fn drop(&mut self) {
        // An early return (an error reading its output) must not leave it
        // running either.
        if let Ok(None) = self.child.try_wait() {
            #[cfg(target_os = "linux")]
            linux::kill_group(&self.child);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A command that runs `program` tied to keyferry once given to
/// [`spawn_tied`]; add its arguments and environment as usual.
pub(crate) fn tied_command(program: &std::path::Path) -> Command {
    #[cfg(target_os = "linux")]
    return linux::command(program);
    #[cfg(not(target_os = "linux"))]
    return Command::new(program);
}

/// Spawns a command made by [`tied_command`] so that the program is killed
/// when keyferry dies. Must be called from the thread that outlives the
/// child (Linux delivers the signal when the spawning thread exits).
pub(crate) fn spawn_tied(command: &mut Command) -> io::Result<TiedChild> {
    let child = command.spawn()?;
    #[cfg(windows)]
    let job = match windows::Job::holding(&child) {
        Ok(job) => job,
        Err(e) => {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    Ok(TiedChild {
        child,
        #[cfg(windows)]
        _job: job,
    })
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::{Child, Command};

    /// On the parent-death signal, kill the group (the program and what it
    /// forked); otherwise pass the program's exit status on.
    const WRAPPER: &str = r#"trap 'kill -KILL 0' TERM; "$0" "$@" & wait $!"#;

    pub(super) fn command(program: &Path) -> Command {
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(WRAPPER).arg(program).process_group(0);
        // SAFETY: getpid is async-signal-safe and cannot fail.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure calls only async-signal-safe functions
        // (prctl, getppid, _exit) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the tie was made.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        command
    }

    /// The wrapper leads its own group: kill all of it.
    pub(super) fn kill_group(child: &Child) {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: a negative pid names the child's own process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}

#[cfg(windows)]
mod windows {
    use std::io;
    use std::os::windows::io::AsRawHandle;
    use std::process::Child;

    use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
        SetInformationJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
        JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    };

    /// A job object that kills its processes when this handle closes.
    pub(super) struct Job(HANDLE);

    impl Job {
        pub(super) fn holding(child: &Child) -> io::Result<Job> {
            // SAFETY: no security attributes, no name: a new anonymous job.
            let handle = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
            if handle.is_null() {
                return Err(io::Error::last_os_error());
            }
            let job = Job(handle);
            // SAFETY: plain data; all zeroes is a valid "no limits" value.
            let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
            info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
            // SAFETY: `info` is the structure the information class names,
            // with its exact size.
            let ok = unsafe {
                SetInformationJobObject(
                    job.0,
                    JobObjectExtendedLimitInformation,
                    (&info as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                    std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
                )
            };
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: both handles are valid for the duration of the call.
            if unsafe { AssignProcessToJobObject(job.0, child.as_raw_handle() as HANDLE) } == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(job)
        }
    }

    impl Drop for Job {
        fn drop(&mut self) {
            // SAFETY: the handle is ours and closed once.
            unsafe { CloseHandle(self.0) };
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::fs;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    /// Dropping the handle (an early return) kills the child; the kill of
    /// keyferry itself is tested end to end in `tests/ha_bootstrap.rs`.
    #[test]
    fn dropping_a_tied_child_kills_it_and_what_it_forked() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let mut command = tied_command(std::path::Path::new("/bin/sh"));
        command
            .arg("-c")
            .arg(format!("sleep 30 & echo $! > {}; wait", pidfile.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut tied = spawn_tied(&mut command).unwrap();
        let pid = tied.child_mut().id();
        let alive = |p: &str| std::path::Path::new(&format!("/proc/{p}")).exists();
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_to_string(&pidfile).map_or(true, |t| t.trim().is_empty()) {
            assert!(Instant::now() < deadline, "the grandchild never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        let grandchild = fs::read_to_string(&pidfile).unwrap().trim().to_owned();
        assert!(alive(&pid.to_string()) && alive(&grandchild));
        drop(tied);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(&grandchild) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(&grandchild), "what the program forked died too");
    }
}
