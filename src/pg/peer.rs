//! The local server's Unix socket as the data directory's owner, from a
//! keyferry that runs as root, with no change to `pg_hba.conf` or
//! `pg_ident.conf`.
//!
//! PostgreSQL's `peer` authentication (the `local` lines of Debian's and
//! RHEL's default `pg_hba.conf`) admits a socket connection as role R only
//! when the connecting OS account is named R. The server reads the account
//! from the socket's peer credentials (`SO_PEERCRED`), which Linux records
//! at `connect()` from the *effective* uid and gid of the thread that
//! called it. keyferry runs as root (README), and root is not `postgres`:
//! so the thread that connects takes the identity of the data directory's
//! owner (the account the server runs as, admitted by `peer` as the role of
//! the same name) for the length of the connect, and gives it back.
//!
//! How, and why this way:
//! - The connection is opened on a worker thread of its own
//!   ([`super::bounded`]); that thread switches its own effective gid, then
//!   uid, with the raw `setresgid`/`setresuid` system calls, which on Linux
//!   change the calling thread only. glibc's `setuid`/`seteuid` wrappers
//!   would change every thread of the process (they signal each one to do
//!   the same), so every other thread of keyferry would run as the owner
//!   meanwhile. Real and saved uid stay 0, which is what lets the thread
//!   switch back.
//! - The switch spans the `postgres` crate's `Config::connect` as a whole:
//!   the crate has no way to take an already connected socket (its
//!   `Client` is only made by `Config::connect`; tokio-postgres's
//!   `connect_raw` is not reachable through it). `Config::connect` builds a
//!   current-thread runtime and runs the connect, the startup and the
//!   authentication on the calling thread; for a Unix socket it resolves no
//!   name and starts no thread (tokio-postgres 0.7 `connect.rs`: a
//!   `Host::Unix` goes straight to `UnixStream::connect`, nothing goes to
//!   tokio's blocking pool), so no thread is created with, or shares, the
//!   owner's identity. Nothing in that span opens a file.
//! - Not a child that connects as the owner and hands the descriptor back
//!   over `SCM_RIGHTS`: after a `fork` a multi-threaded process may only
//!   call async-signal-safe functions, so the child would have to be a new
//!   `exec` of keyferry speaking a protocol of its own; the thread switch
//!   gives the server the same peer credentials with two system calls.
//!
//! Invariants:
//! - only the connecting thread ever holds the owner's identity, and only
//!   inside [`as_owner`] (a connect that misses its deadline and is left
//!   behind by [`super::bounded`] keeps it on that thread, which runs
//!   nothing else, until the connect ends);
//! - the identity is given back by a guard's drop, also when the connect
//!   panics; if giving it back fails the process aborts, since continuing
//!   would leave a thread of keyferry acting under the wrong identity;
//! - the switch happens only when keyferry runs as root (effective uid 0)
//!   and the owner is not root. As the owner nothing changes; as any other
//!   account the connect is tried as it is, and a refused authentication
//!   becomes [`super::PgError::NotOwner`], which says the one thing that
//!   works.
//!
//! Windows has no Unix socket (see `super::platform::socket_host`), so there
//! is no peer authentication to satisfy: [`Owner::of`] is `None` there and
//! [`as_owner`] runs its work as it is. Other Unix systems than Linux have
//! no per-thread identity switch: there root connects as itself, and the
//! refusal says so.

use std::path::Path;

/// The account that owns a data directory: whom `peer` must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Its uid.
    pub uid: u32,
    /// Its primary gid (the data directory's group).
    pub gid: u32,
}

/// What the caller's identity means for a socket connection as the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Identity {
    /// keyferry runs as the owner: connect as it is. (Never on Windows,
    /// where no owner is read.)
    #[cfg_attr(windows, allow(dead_code))]
    Owner,
    /// keyferry runs as root and switches the connecting thread.
    Root,
    /// Any other account: `peer` will not see the owner.
    Other,
}

impl Owner {
    /// The owner of `data_dir`, or `None` when it cannot be read (or on
    /// Windows).
    pub fn of(data_dir: &Path) -> Option<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(data_dir).ok()?;
            Some(Owner {
                uid: meta.uid(),
                gid: meta.gid(),
            })
        }
        #[cfg(windows)]
        {
            let _ = data_dir;
            None
        }
    }

    /// What connecting as this owner means for the running process.
    pub(crate) fn identity(self) -> Identity {
        imp::identity(self)
    }
}

/// Runs `work` (one connect) with the calling thread's effective gid and
/// uid switched to `owner`'s when keyferry runs as root, and switches back
/// before returning (aborting the process if it cannot). Only for work
/// that starts no thread and opens no file: see the module documentation.
pub(crate) fn as_owner<T>(owner: Owner, work: impl FnOnce() -> T) -> Result<T, String> {
    if owner.identity() != Identity::Root {
        return Ok(work());
    }
    let _back = imp::Switched::to(owner)?;
    Ok(work())
}

#[cfg(target_os = "linux")]
mod imp {
    use super::{Identity, Owner};

    // The 32-bit-id calls; on these two architectures the plain numbers
    // are the old 16-bit ones.
    #[cfg(any(target_arch = "x86", target_arch = "arm"))]
    const SETRESUID: libc::c_long = libc::SYS_setresuid32;
    #[cfg(any(target_arch = "x86", target_arch = "arm"))]
    const SETRESGID: libc::c_long = libc::SYS_setresgid32;
    #[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
    const SETRESUID: libc::c_long = libc::SYS_setresuid;
    #[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
    const SETRESGID: libc::c_long = libc::SYS_setresgid;
    /// "Leave this id as it is."
    const KEEP: libc::c_long = -1;

    pub(super) fn identity(owner: Owner) -> Identity {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid == owner.uid {
            Identity::Owner
        } else if euid == 0 {
            Identity::Root
        } else {
            Identity::Other
        }
    }

    /// The calling thread's effective ids only (real and saved untouched).
    fn set_effective(call: libc::c_long, id: u32) -> std::io::Result<()> {
        // SAFETY: setresuid/setresgid take three integers; the raw call
        // changes the calling thread's credentials and nothing else.
        let rc = unsafe { libc::syscall(call, KEEP, libc::c_long::from(id), KEEP) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The calling thread runs as the owner while this lives.
    pub(super) struct Switched(());

    impl Switched {
        pub(super) fn to(owner: Owner) -> Result<Self, String> {
            // The gid first: once the uid is not 0 the thread may no
            // longer change it.
            set_effective(SETRESGID, owner.gid)
                .map_err(|e| format!("cannot take the group {}: {e}", owner.gid))?;
            if let Err(e) = set_effective(SETRESUID, owner.uid) {
                restore();
                return Err(format!("cannot take the account uid {}: {e}", owner.uid));
            }
            Ok(Switched(()))
        }
    }

    impl Drop for Switched {
        fn drop(&mut self) {
            restore();
        }
    }

    /// Back to root, uid first (the saved uid 0 allows it), then the gid
    /// (allowed again once the uid is 0). Aborts when either fails.
    fn restore() {
        for (call, what) in [(SETRESUID, "uid"), (SETRESGID, "gid")] {
            if let Err(e) = set_effective(call, 0) {
                eprintln!("keyferry: cannot switch the effective {what} back to 0 after connecting as the data directory's owner ({e}); stopping rather than go on under the wrong identity");
                std::process::abort();
            }
        }
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
mod imp {
    use super::{Identity, Owner};

    /// No per-thread switch here: root is just another account.
    pub(super) fn identity(owner: Owner) -> Identity {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == owner.uid {
            Identity::Owner
        } else {
            Identity::Other
        }
    }

    pub(super) struct Switched(());

    impl Switched {
        pub(super) fn to(_owner: Owner) -> Result<Self, String> {
            Err("this system cannot switch one thread's identity".into())
        }
    }
}

#[cfg(windows)]
mod imp {
    use super::{Identity, Owner};

    pub(super) fn identity(_owner: Owner) -> Identity {
        Identity::Other
    }

    pub(super) struct Switched(());

    impl Switched {
        pub(super) fn to(_owner: Owner) -> Result<Self, String> {
            Err("Windows has no Unix socket".into())
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn effective_uid(status: &str) -> String {
        let text = std::fs::read_to_string(status).unwrap();
        let line = text.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace().nth(2).unwrap().to_owned()
    }

    /// The switch is the calling thread's alone: the process's main thread
    /// keeps root's identity meanwhile, and the caller has it back after.
    #[test]
    fn only_the_calling_thread_changes_and_it_changes_back() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let nobody = Owner {
            uid: 65534,
            gid: 65534,
        };
        let (this_thread, main_thread) = as_owner(nobody, || {
            (
                effective_uid("/proc/thread-self/status"),
                // The thread group leader: the harness's main thread, not
                // this test's.
                effective_uid(&format!("/proc/{}/status", std::process::id())),
            )
        })
        .unwrap();
        assert_eq!(this_thread, "65534");
        // SAFETY: gettid has no preconditions.
        let on_main = u32::try_from(unsafe { libc::gettid() }) == Ok(std::process::id());
        if !on_main {
            assert_eq!(main_thread, "0");
        }
        // SAFETY: as above.
        assert_eq!(unsafe { (libc::geteuid(), libc::getegid()) }, (0, 0));
    }
}
