//! The node registry's database for the registry tests: a real PostgreSQL
//! server with the role `kf` (password in a libpq password file beside the
//! test's homes), and keyferry run with that file.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use super::node::Node;
use super::pg::{PgOptions, PgServer};

pub const REG_PASSWORD: &str = "registry-pw";

pub struct Registry {
    pub server: PgServer,
    pub passfile: PathBuf,
    pub dsn: String,
    pub port: u16,
}

impl Registry {
    /// A new server and its `kf` role; `None` where PostgreSQL is absent
    /// (and not required).
    pub fn start(dir: &Path) -> Option<Registry> {
        let server = PgServer::start_primary(PgOptions::default())?;
        server
            .connect()
            .batch_execute(&format!(
                "CREATE ROLE kf LOGIN PASSWORD '{REG_PASSWORD}'; GRANT CREATE ON SCHEMA public TO kf;"
            ))
            .unwrap();
        let passfile = dir.join("pgpass");
        // Any port: a replica of this server holds the same role.
        fs::write(&passfile, format!("127.0.0.1:*:*:kf:{REG_PASSWORD}\n")).unwrap();
        fs::set_permissions(&passfile, fs::Permissions::from_mode(0o600)).unwrap();
        let port = server.port();
        Some(Registry {
            dsn: format!("host=127.0.0.1 port={port} user=kf dbname=postgres"),
            server,
            passfile,
            port,
        })
    }

    /// `keyferry ARGS…` on `node` with the registry's password file.
    pub fn kf(&self, node: &Node, args: &[&str]) -> Output {
        node.cmd()
            .env("PGPASSFILE", &self.passfile)
            .args(args)
            .output()
            .unwrap()
    }
}

/// [`Registry::start`], as the registry tests call it.
pub fn start(dir: &Path) -> Option<Registry> {
    Registry::start(dir)
}

/// [`Registry::kf`], as the registry tests call it.
pub fn kf(node: &Node, reg: &Registry, args: &[&str]) -> Output {
    reg.kf(node, args)
}
