//! The pair's effects outside the home, as journaled steps that carry
//! their own undo: the local server stopped or started, the next
//! generation's row written on it. Callers name the effect
//! ([`PairSteps::stop_server`], [`PairSteps::start_server`],
//! [`PairSteps::record_generation`]); the undo is derived here, so a stop
//! can never be journaled with a stop as its undo.
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
