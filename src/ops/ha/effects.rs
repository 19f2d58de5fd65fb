//! The pair's effects outside the home, as journaled steps that carry
//! their own undo: the local server stopped or started, the next
//! generation's row written on it, a file written through a held
//! directory (the replication password file beside the data directory).
//! Callers name the effect ([`PairSteps::stop_server`],
//! [`PairSteps::start_server`], [`PairSteps::record_generation`],
//! [`PairSteps::put_file`]); the undo is derived here, so a stop can never
//! be journaled with a stop as its undo.
//!
//! [`PairEffects`] is what the node's journal calls back to undo them
//! (`node` stores them as opaque `kind` + data and knows nothing of
//! PostgreSQL): every home the command line opens carries it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::ha::service::Server;
use crate::ha::{datafile, generation};
use crate::node::{Change, Effects};

const SERVER: &str = "server";
const FORGET_GENERATION: &str = "forget-generation";
const PUT_FILE: &str = "put-file";

/// The undo of a file written through a held directory: the previous
/// version (kept among the home's backups: it may hold a password, so never
/// in the journal) written back the same way, or the new file removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PutFileUndo {
    dir: PathBuf,
    dir_id: datafile::DirId,
    name: String,
    owner: PathBuf,
    backup: Option<PathBuf>,
}

impl PutFileUndo {
    fn undo(&self) -> io::Result<()> {
        let dir = datafile::Dir::open(&self.dir, Some(self.dir_id))?;
        match &self.backup {
            Some(backup) => {
                let bytes = zeroize::Zeroizing::new(std::fs::read(backup)?);
                // The owner's directory may be gone (an undone copy): then
                // the file is owned like the directory it is in.
                match datafile::Dir::open(&self.owner, None) {
                    Ok(owner) => dir.write_like(&self.name, &bytes, &owner),
                    Err(_) => dir.write(&self.name, &bytes),
                }
            }
            None => dir.remove(&self.name),
        }
    }
}

/// The undo of a start or stop: the server back to `running`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ServerUndo {
    server: Server,
    running: bool,
}

/// The undo of a generation row written on the local server: the server
/// is started if it is down, then the row deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ForgetGeneration {
    server: Server,
    socket_dir: Option<PathBuf>,
    port: u16,
    generation: u64,
}

/// Undoes the pair's journaled effects.
pub(crate) struct PairEffects;

/// What every home opened by the command line undoes its pair effects
/// with.
pub(crate) fn pair_effects() -> Arc<dyn Effects> {
    Arc::new(PairEffects)
}

fn parse<T: for<'de> Deserialize<'de>>(kind: &str, data: &Value) -> io::Result<T> {
    serde_json::from_value(data.clone()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the journal's `{kind}` step cannot be read: {e}"),
        )
    })
}

impl Effects for PairEffects {
    fn undo(&self, kind: &str, data: &Value) -> io::Result<()> {
        match kind {
            SERVER => {
                let u: ServerUndo = parse(kind, data)?;
                u.server.ensure(u.running).map_err(io::Error::other)
            }
            FORGET_GENERATION => {
                let u: ForgetGeneration = parse(kind, data)?;
                // The row can only be deleted on a running server. Before a
                // switchover's point of no return (the only time this undo
                // runs) the old primary running as primary is exactly the
                // state being restored; a server that crashed meanwhile is
                // started for it.
                u.server.ensure(true).map_err(io::Error::other)?;
                let timeout = Duration::from_secs(u.server.timeout_secs);
                let (mut client, target) = generation::local_admin(
                    &u.server.pg_data,
                    u.socket_dir.as_deref(),
                    u.port,
                    timeout,
                )
                .map_err(io::Error::other)?;
                generation::remove(&mut client, &target, u.generation).map_err(io::Error::other)
            }
            PUT_FILE => parse::<PutFileUndo>(kind, data)?.undo(),
            other => crate::node::effects::NoEffects.undo(other, data),
        }
    }

    fn describe(&self, kind: &str, data: &Value) -> String {
        match kind {
            SERVER => match parse::<ServerUndo>(kind, data) {
                Ok(u) => format!(
                    "{} the PostgreSQL server of {}",
                    if u.running { "start" } else { "stop" },
                    u.server.pg_data.display()
                ),
                Err(e) => e.to_string(),
            },
            FORGET_GENERATION => match parse::<ForgetGeneration>(kind, data) {
                Ok(u) => format!(
                    "delete generation {} from the pair table of the server of {}",
                    u.generation,
                    u.server.pg_data.display()
                ),
                Err(e) => e.to_string(),
            },
            PUT_FILE => match parse::<PutFileUndo>(kind, data) {
                Ok(u) => match &u.backup {
                    Some(b) => format!(
                        "put back {} from {}",
                        u.dir.join(&u.name).display(),
                        b.display()
                    ),
                    None => format!("remove {}", u.dir.join(&u.name).display()),
                },
                Err(e) => e.to_string(),
            },
            other => crate::node::effects::NoEffects.describe(other, data),
        }
    }

    fn home_files(&self) -> &'static [&'static str] {
        &[crate::ha::history::FILE]
    }
}

fn data<T: Serialize>(undo: &T) -> Value {
    serde_json::to_value(undo).unwrap_or(Value::Null)
}

/// The pair's effects as steps of a change.
pub(crate) trait PairSteps {
    /// Stops the local server (undo: start it again). `fail` turns the
    /// service's error into the operation's.
    fn stop_server(&mut self, server: &Server, fail: &dyn Fn(String) -> Error) -> Result<()>;
    /// Starts the local server (undo: stop it again).
    fn start_server(&mut self, server: &Server, fail: &dyn Fn(String) -> Error) -> Result<()>;
    /// Moves the directory `from` (which must still be `id`, the one
    /// keyferry created: a directory or link put in its place by someone
    /// else is refused, not moved) to `to` (undo: move it back).
    fn rename_dir(&mut self, from: &Path, to: &Path, id: datafile::DirId) -> Result<()>;
    /// Writes `name` (owner-only, owned like the directory `owner`)
    /// through the held directory `dir`, never through a link or by path
    /// (undo: the previous version back, or the file removed). A link in
    /// its place is refused: it is not keyferry's to replace.
    fn put_file(
        &mut self,
        dir: &datafile::Dir,
        name: &str,
        contents: &[u8],
        owner: &datafile::Dir,
    ) -> Result<()>;
    /// Writes `record` into the pair table through the local socket (undo:
    /// delete it once the server runs).
    fn record_generation(
        &mut self,
        server: &Server,
        local: LocalServer<'_>,
        record: &generation::Record,
        reader: &str,
    ) -> Result<()>;
}

/// How to reach the local server as its owner.
#[derive(Clone, Copy)]
pub(crate) struct LocalServer<'a> {
    pub socket_dir: Option<&'a std::path::Path>,
    pub port: u16,
    pub connect_timeout: Duration,
}

impl PairSteps for Change<'_> {
    fn put_file(
        &mut self,
        dir: &datafile::Dir,
        name: &str,
        contents: &[u8],
        owner: &datafile::Dir,
    ) -> Result<()> {
        let path = dir.path().join(name);
        let what = format!("cannot write {}", path.display());
        let backup = match dir.read(name).map_err(Error::io(what.clone()))? {
            None => None,
            Some(datafile::Kept::File(bytes)) => {
                Some(self.back_up(name, &zeroize::Zeroizing::new(bytes))?)
            }
            Some(datafile::Kept::Link(target)) => {
                return Err(Error::Refused(format!(
                    "{} is a symbolic link (to {}): keyferry does not write through a link beside the data directory; replace it by a file (or remove it), then try again",
                    path.display(),
                    target.display()
                )))
            }
        };
        let undo = data(&PutFileUndo {
            dir: dir.path().to_path_buf(),
            dir_id: dir.id(),
            name: name.to_owned(),
            owner: owner.path().to_path_buf(),
            backup,
        });
        self.external_step(PUT_FILE, undo, || {
            dir.write_like(name, contents, owner)
                .map_err(Error::io(what))
        })
    }

    fn rename_dir(&mut self, from: &Path, to: &Path, id: datafile::DirId) -> Result<()> {
        self.rename_with(from, to, || datafile::rename_dir(from, to, id))
    }

    fn stop_server(&mut self, server: &Server, fail: &dyn Fn(String) -> Error) -> Result<()> {
        let undo = data(&ServerUndo {
            server: server.clone(),
            running: true,
        });
        self.external_step(SERVER, undo, || {
            server.stop().map_err(|e| fail(e.to_string()))
        })
    }

    fn start_server(&mut self, server: &Server, fail: &dyn Fn(String) -> Error) -> Result<()> {
        let undo = data(&ServerUndo {
            server: server.clone(),
            running: false,
        });
        self.external_step(SERVER, undo, || {
            server.start().map_err(|e| fail(e.to_string()))
        })
    }

    fn record_generation(
        &mut self,
        server: &Server,
        local: LocalServer<'_>,
        record: &generation::Record,
        reader: &str,
    ) -> Result<()> {
        let undo = data(&ForgetGeneration {
            server: server.clone(),
            socket_dir: local.socket_dir.map(PathBuf::from),
            port: local.port,
            generation: record.generation,
        });
        self.external_step(FORGET_GENERATION, undo, || {
            let fail = |e: String| {
                Error::Refused(format!(
                    "recording generation {} on this node's server failed: {e}; nothing was promoted; see the server's log",
                    record.generation
                ))
            };
            let (mut client, target) = generation::local_admin(
                &server.pg_data,
                local.socket_dir,
                local.port,
                local.connect_timeout,
            )
            .map_err(|e| fail(e.to_string()))?;
            generation::insert(&mut client, &target, record, reader).map_err(|e| fail(e.to_string()))
        })
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use super::*;
    use crate::node::Home;

    fn home(dir: &Path) -> Home {
        let home = Home::new(dir.join("home")).with_effects(Arc::new(PairEffects));
        home.create().unwrap();
        home
    }

    /// The password file's write goes through the held directory, keeps the
    /// previous version among the home's backups (never in the journal:
    /// it holds a password), and its undo puts that version back.
    #[test]
    fn a_file_put_beside_the_data_directory_is_undone_from_the_homes_backup() {
        let tmp = tempfile::tempdir().unwrap();
        let home = home(tmp.path());
        let beside = tmp.path().join("pg");
        fs::create_dir(&beside).unwrap();
        fs::create_dir(beside.join("main")).unwrap();
        fs::write(beside.join("x.pgpass"), b"old-secret\n").unwrap();
        let dir = datafile::Dir::open(&beside, None).unwrap();
        let owner = datafile::Dir::open(&beside.join("main"), None).unwrap();
        let mut node = home.open(false).unwrap();
        let mut change = node.begin("test", Default::default()).unwrap();
        change
            .put_file(&dir, "x.pgpass", b"new-secret\n", &owner)
            .unwrap();
        let written = beside.join("x.pgpass");
        assert_eq!(fs::read(&written).unwrap(), b"new-secret\n");
        assert_eq!(
            fs::metadata(&written).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let journal = fs::read_to_string(home.journal_path()).unwrap();
        assert!(!journal.contains("secret"), "{journal}");
        change.abort().unwrap();
        assert_eq!(fs::read(&written).unwrap(), b"old-secret\n");

        // A new file's undo removes it.
        let mut change = node.begin("test", Default::default()).unwrap();
        change.put_file(&dir, "y.pgpass", b"s\n", &owner).unwrap();
        change.abort().unwrap();
        assert!(!beside.join("y.pgpass").exists());
    }

    /// The server's account owns the directory beside the data directory:
    /// it renames it and puts a link to another directory in its place.
    /// Nothing is written through the link, and the refusal names the path.
    #[test]
    fn a_directory_swapped_for_a_link_is_refused_and_nothing_is_written_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let home = home(tmp.path());
        let beside = tmp.path().join("pg");
        fs::create_dir(&beside).unwrap();
        let outside = tmp.path().join("etc");
        fs::create_dir(&outside).unwrap();
        let dir = datafile::Dir::open(&beside, None).unwrap();
        fs::rename(&beside, tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, &beside).unwrap();
        let mut node = home.open(false).unwrap();
        let mut change = node.begin("test", Default::default()).unwrap();
        let e = change
            .put_file(&dir, "x.pgpass", b"secret\n", &dir)
            .unwrap_err();
        assert!(
            e.to_string().contains("was replaced by someone else")
                && e.to_string().contains(beside.to_str().unwrap()),
            "{e}"
        );
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert!(!tmp.path().join("moved/x.pgpass").exists());
        drop(change);
        // A link planted as the file itself is refused too, not replaced.
        fs::remove_file(&beside).unwrap();
        fs::rename(tmp.path().join("moved"), &beside).unwrap();
        let victim = outside.join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, beside.join("x.pgpass")).unwrap();
        let dir = datafile::Dir::open(&beside, None).unwrap();
        let mut change = node.begin("test", Default::default()).unwrap();
        let e = change
            .put_file(&dir, "x.pgpass", b"secret\n", &dir)
            .unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }
}
