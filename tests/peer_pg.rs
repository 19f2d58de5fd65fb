//! Issue 20 item 2: root reaches its own server as the data directory's
//! owner on Debian's default rules (`local all all peer`), with no change
//! to `pg_hba.conf` or `pg_ident.conf`; an account that is neither root nor
//! the owner gets the one line that says what works.
//!
//! Needs root and PostgreSQL; skips otherwise (fails with
//! `KEYFERRY_REQUIRE_PG=1` when PostgreSQL is missing).
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::pg::{Auth, PgOptions, PgServer, SUPERUSER};
use keyferry::pg::peer::Owner;
use keyferry::pg::{self, ConnSpec, Endpoint, PgError};

/// The account a stranger runs as.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `work` on a new thread whose effective uid is `uid` (threads it
/// starts inherit it): a process of another account, as far as the
/// kernel's credentials of that thread go.
fn as_uid<T: Send>(uid: u32, work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: the raw call changes this thread's effective uid only.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, -1, uid, -1) };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            let out = work();
            // SAFETY: as above; the saved uid is still 0.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, -1, 0, -1) };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            out
        })
        .join()
        .unwrap()
    })
}

#[test]
fn root_connects_through_peer_as_the_owner_and_a_stranger_is_told_what_works() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let Some(server) = PgServer::start_primary_with_auth(PgOptions::default(), Auth::Debian) else {
        return;
    };
    let hba = String::from_utf8(server.read_hba()).unwrap();
    assert!(
        hba.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["local", "all", "all", "peer"]),
        "{hba}"
    );
    let endpoint = Endpoint::Socket {
        dir: server.socket_dir().to_owned(),
        port: server.port(),
    };
    let spec = ConnSpec {
        endpoint: &endpoint,
        user: SUPERUSER,
        dbname: pg::MAINTENANCE_DB,
        password: None,
        timeout: Duration::from_secs(30),
    };
    let owner = Owner::of(server.data_dir()).unwrap();
    assert_ne!(owner.uid, 0);

    // Root as itself: the rule this is about.
    let Err(refused) = pg::connect(&spec) else {
        panic!("root got in as {SUPERUSER} by itself: the test server is not on peer rules");
    };
    assert!(
        refused.to_string().contains("Peer authentication failed"),
        "{refused}"
    );

    // Root as the owner: in, as the owner's role, and root again after.
    let mut client = pg::connect_as_owner(&spec, owner).unwrap();
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(user, SUPERUSER);
    // SAFETY: geteuid/getegid have no preconditions.
    assert_eq!(unsafe { (libc::geteuid(), libc::getegid()) }, (0, 0));
    drop(client);

    // A stranger (neither root nor the owner) reaching the socket: one
    // line, naming the owner and the way out.
    let top = server.socket_dir().parent().unwrap();
    fs::set_permissions(top, fs::Permissions::from_mode(0o711)).unwrap();
    let Err(err) = as_uid(NOBODY, || pg::connect_as_owner(&spec, owner)) else {
        panic!("a stranger got in as {SUPERUSER}");
    };
    assert!(matches!(err, PgError::NotOwner { .. }), "{err:?}");
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains("Peer authentication failed"), "{text}");
    assert!(text.contains("run keyferry as root"), "{text}");
    assert!(
        text.contains("postgres, the data directory's owner"),
        "{text}"
    );
}
