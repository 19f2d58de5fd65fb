//! What starts this node's PostgreSQL server when its machine boots, and
//! whether the start guard runs first: the `boot_start` fact of `ha check`.
//!
//! A server the machine starts without `keyferry ha guard` is the gap in a
//! two-node pair's only fence: an old primary that comes back after a
//! failover is writable before anything has asked its peer. What keyferry
//! can see, by `[service]` in `ha.toml`:
//!
//! - `windows_service`: the service's start type, from the service manager.
//!   Automatic (or boot, or system) starts it with no guard, since the service
//!   manager has no pre-start hook; on demand is what docs/windows.md asks
//!   for (started by `keyferry ha start`); disabled cannot be started by
//!   keyferry either.
//! - `systemd`: whether the unit runs the guard in an `ExecStartPre` (the
//!   README's drop-in): without it every `systemctl start` of the unit, the
//!   boot's included, skips the guard.
//! - `pg_ctl`: on Debian and Ubuntu the distribution's `postgresql` service
//!   starts at boot every cluster whose `start.conf` says `auto` (the
//!   default) through its `postgresql@VERSION-NAME` unit; the cluster is
//!   found under `/etc/postgresql` by its `data_directory`, and is guarded
//!   only when that unit runs the guard. Elsewhere nothing keyferry can see
//!   starts a server it runs with `pg_ctl`.
//!
//! Invariants: a start that skips the guard is `warn`, and `fail` on a
//! node marked demoted (the one that must not come back as primary);
//! "cannot tell" is a `warn` with the reason, never `ok`. Nothing is
//! changed: the fact only reads.

use std::path::{Path, PathBuf};

use super::config::{HaConfig, ServiceControl};
use super::preflight::Fact;

const NAME: &str = "boot_start";

/// What starts the server, as far as keyferry can see.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BootStart {
    /// Nothing starts it at boot: `keyferry ha start` (or an operator) does.
    NotAtBoot(String),
    /// Started by something that runs the guard first.
    Guarded(String),
    /// Started (at boot, or by anyone) with no guard.
    Unguarded { what: String, fix: String },
    /// Its service cannot be started at all (only a Windows service can
    /// say so).
    #[cfg_attr(not(windows), allow(dead_code))]
    Disabled { what: String, fix: String },
    /// keyferry cannot tell.
    Unknown(String),
}

/// The `boot_start` fact for this node.
pub(crate) fn fact(config: &HaConfig) -> Fact {
    judge(probe(config), config.demoted)
}

fn judge(found: BootStart, demoted: bool) -> Fact {
    match found {
        BootStart::NotAtBoot(m) | BootStart::Guarded(m) => Fact::ok(NAME, m),
        BootStart::Unguarded { what, fix } if demoted => Fact::fail(
            NAME,
            format!(
                "{what}, without the start guard; this node is marked demoted: after a reboot it would run as a second primary"
            ),
            fix,
        ),
        BootStart::Unguarded { what, fix } => Fact::warn(
            NAME,
            format!("{what}, without the start guard (should this node be demoted, a reboot would make it a second primary)"),
            fix,
        ),
        BootStart::Disabled { what, fix } => Fact::warn(NAME, what, fix),
        BootStart::Unknown(why) => Fact::warn(
            NAME,
            format!("cannot tell what starts the server at boot: {why}"),
            "make sure only `keyferry ha start` (or a unit that runs `keyferry ha guard` first) starts it; see README, \"Switchover, failover and the start guard\"",
        ),
    }
}

fn probe(config: &HaConfig) -> BootStart {
    match &config.service {
        ServiceControl::WindowsService { name } => windows_service(name),
        ServiceControl::Systemd { unit } => match systemd_guard(unit) {
            Ok(true) => BootStart::Guarded(format!(
                "systemd unit {unit} runs `keyferry ha guard` before it starts the server"
            )),
            Ok(false) => BootStart::Unguarded {
                what: format!("`systemctl start {unit}` (at boot, or by anyone) starts the server"),
                fix: guard_drop_in(unit),
            },
            Err(why) => BootStart::Unknown(why),
        },
        ServiceControl::PgCtl => pg_ctl(&config.pg_data),
    }
}

/// The README's drop-in, for the fix.
fn guard_drop_in(unit: &str) -> String {
    format!(
        "add /etc/systemd/system/{unit}.service.d/keyferry-guard.conf with `[Service]` and `ExecStartPre=/usr/local/bin/keyferry --home /var/lib/keyferry ha guard --password-file …` (README), then `systemctl daemon-reload`"
    )
}

#[cfg(windows)]
fn windows_service(name: &str) -> BootStart {
    use windows_sys::Win32::System::Services::{
        SERVICE_AUTO_START, SERVICE_BOOT_START, SERVICE_DEMAND_START, SERVICE_DISABLED,
        SERVICE_SYSTEM_START,
    };
    let kind = match super::service::service_start_type(name) {
        Ok(t) => t,
        Err(why) => return BootStart::Unknown(why),
    };
    let demand = format!("sc config {name} start= demand");
    match kind {
        SERVICE_DEMAND_START => BootStart::NotAtBoot(format!(
            "service {name} starts on demand only (by `keyferry ha start`, which runs the guard first)"
        )),
        SERVICE_AUTO_START | SERVICE_BOOT_START | SERVICE_SYSTEM_START => BootStart::Unguarded {
            what: format!("service {name} starts automatically when Windows boots"),
            fix: format!(
                "{demand}, and start it with `keyferry ha start` (by hand, or a scheduled task at boot)"
            ),
        },
        SERVICE_DISABLED => BootStart::Disabled {
            what: format!("service {name} is disabled: `keyferry ha start` cannot start it"),
            fix: demand,
        },
        other => BootStart::Unknown(format!("service {name} has start type {other}")),
    }
}

#[cfg(not(windows))]
fn windows_service(name: &str) -> BootStart {
    BootStart::Unknown(format!(
        "[service] names the Windows service {name}, and this is not Windows"
    ))
}

/// Whether the systemd unit runs `keyferry … ha guard` before it starts.
fn systemd_guard(unit: &str) -> Result<bool, String> {
    let out = std::process::Command::new("systemctl")
        .args(["show", unit, "--property=ExecStartPre", "--no-pager"])
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("systemctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "systemctl show {unit}: {}",
            crate::pg::one_line(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    Ok(runs_guard(&String::from_utf8_lossy(&out.stdout)))
}

/// Reads `systemctl show --property=ExecStartPre`: one `{ path=… ; argv[]=…
/// ; ignore_errors=… }` group per command. A guard whose refusal the unit
/// ignores (`ExecStartPre=-…`) guards nothing.
fn runs_guard(show: &str) -> bool {
    show.lines()
        .filter_map(|l| l.strip_prefix("ExecStartPre="))
        .flat_map(|l| l.split('{'))
        .any(|group| {
            let fields: Vec<&str> = group
                .split(';')
                .map(|f| f.trim().trim_end_matches('}').trim_end())
                .collect();
            let guard = fields
                .iter()
                .find_map(|f| f.strip_prefix("argv[]="))
                .is_some_and(|argv| {
                    let words: Vec<&str> = argv.split_whitespace().collect();
                    words.first().is_some_and(|p| p.ends_with("keyferry"))
                        && words.windows(2).any(|w| w == ["ha", "guard"])
                });
            guard && !fields.contains(&"ignore_errors=yes")
        })
}

/// Where Debian and Ubuntu keep their clusters' configuration.
const DEBIAN_CLUSTERS: &str = "/etc/postgresql";

/// Where keyferry looked, for the `pg_ctl` method's `ok`.
#[cfg(unix)]
const LOOKED: &str = "no Debian cluster in /etc/postgresql has this data directory";
#[cfg(windows)]
const LOOKED: &str = "a Windows service of this data directory would be one: name it with `ha init --service windows_service:NAME`";

fn pg_ctl(pg_data: &Path) -> BootStart {
    let Some(cluster) = debian_cluster(Path::new(DEBIAN_CLUSTERS), pg_data) else {
        return BootStart::NotAtBoot(format!(
            "[service] method = \"pg_ctl\": nothing keyferry knows of starts this server at boot ({LOOKED})"
        ));
    };
    let unit = format!("postgresql@{}-{}", cluster.version, cluster.name);
    let start_conf = cluster.dir.join("start.conf");
    match cluster.start.as_str() {
        "auto" => match systemd_guard(&unit) {
            Ok(true) => BootStart::Guarded(format!(
                "Debian's postgresql service starts cluster {}/{} at boot ({} says auto) through {unit}, which runs `keyferry ha guard` first",
                cluster.version, cluster.name, start_conf.display()
            )),
            _ => BootStart::Unguarded {
                what: format!(
                    "Debian's postgresql service starts cluster {}/{} at boot ({} says auto)",
                    cluster.version,
                    cluster.name,
                    start_conf.display()
                ),
                fix: format!(
                    "write `manual` into {} (then only `keyferry ha start` starts it), or add the guard to {unit}: {}",
                    start_conf.display(),
                    guard_drop_in(&unit)
                ),
            },
        },
        other => BootStart::NotAtBoot(format!(
            "Debian's cluster {}/{} is not started at boot ({} says {other})",
            cluster.version,
            cluster.name,
            start_conf.display()
        )),
    }
}

/// A Debian cluster: `/etc/postgresql/VERSION/NAME`.
#[derive(Debug, PartialEq, Eq)]
struct DebianCluster {
    version: String,
    name: String,
    dir: PathBuf,
    /// `start.conf`'s word: `auto` (also when the file is missing, as
    /// Debian reads it), `manual` or `disabled`.
    start: String,
}

/// The cluster under `root` whose `postgresql.conf` names `pg_data` as its
/// `data_directory` (compared after resolving links on both sides).
fn debian_cluster(root: &Path, pg_data: &Path) -> Option<DebianCluster> {
    let want = std::fs::canonicalize(pg_data).unwrap_or_else(|_| pg_data.to_path_buf());
    for version in std::fs::read_dir(root).ok()?.flatten() {
        let Ok(clusters) = std::fs::read_dir(version.path()) else {
            continue;
        };
        for cluster in clusters.flatten() {
            let dir = cluster.path();
            let Ok(conf) = std::fs::read_to_string(dir.join("postgresql.conf")) else {
                continue;
            };
            let Some(data) = conf_value(&conf, "data_directory") else {
                continue;
            };
            let data = PathBuf::from(data);
            if std::fs::canonicalize(&data).unwrap_or(data) != want {
                continue;
            }
            let start = std::fs::read_to_string(dir.join("start.conf"))
                .ok()
                .and_then(|t| start_word(&t))
                .unwrap_or_else(|| "auto".into());
            return Some(DebianCluster {
                version: version.file_name().to_string_lossy().into_owned(),
                name: cluster.file_name().to_string_lossy().into_owned(),
                dir,
                start,
            });
        }
    }
    None
}

/// `start.conf`'s first word outside comments.
fn start_word(text: &str) -> Option<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// The last value of `key` in a `postgresql.conf` text (`key = 'value'`,
/// `key = value` or `key 'value'`; a later line wins, as in PostgreSQL).
fn conf_value(text: &str, key: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim_start();
        let Some(rest) = line.strip_prefix(key) else {
            continue;
        };
        if !rest.starts_with([' ', '\t', '=']) {
            continue;
        }
        let rest = rest.trim_start().trim_start_matches('=').trim_start();
        let value = if let Some(quoted) = rest.strip_prefix('\'') {
            let mut v = String::new();
            let mut chars = quoted.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\'' if chars.peek() == Some(&'\'') => {
                        chars.next();
                        v.push('\'');
                    }
                    '\'' => break,
                    c => v.push(c),
                }
            }
            v
        } else {
            rest.split(|c: char| c.is_whitespace() || c == '#')
                .next()
                .unwrap_or("")
                .to_owned()
        };
        found = Some(value);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::preflight::Status;

    fn unguarded() -> BootStart {
        BootStart::Unguarded {
            what: "service x starts automatically when Windows boots".into(),
            fix: "sc config x start= demand".into(),
        }
    }

    #[test]
    fn an_unguarded_start_warns_and_fails_on_a_demoted_node() {
        let f = judge(unguarded(), false);
        assert_eq!(f.status, Status::Warn);
        assert!(
            f.message.contains("without the start guard"),
            "{}",
            f.message
        );
        assert_eq!(f.fix.as_deref(), Some("sc config x start= demand"));
        let f = judge(unguarded(), true);
        assert_eq!(f.status, Status::Fail);
        assert!(f.message.contains("second primary"), "{}", f.message);
    }

    #[test]
    fn only_a_known_guarded_or_absent_boot_start_is_ok() {
        for (found, want) in [
            (BootStart::NotAtBoot("n".into()), Status::Ok),
            (BootStart::Guarded("g".into()), Status::Ok),
            (BootStart::Unknown("no systemd".into()), Status::Warn),
            (
                BootStart::Disabled {
                    what: "d".into(),
                    fix: "f".into(),
                },
                Status::Warn,
            ),
        ] {
            for demoted in [false, true] {
                assert_eq!(judge(found.clone(), demoted).status, want, "{found:?}");
            }
        }
        let f = judge(BootStart::Unknown("no systemd".into()), true);
        assert!(f.message.contains("cannot tell") && f.message.contains("no systemd"));
    }

    #[test]
    fn reads_the_guard_from_systemctl_show() {
        let guarded = "ExecStartPre={ path=/usr/local/bin/keyferry ; argv[]=/usr/local/bin/keyferry --home /var/lib/keyferry ha guard --password-file /etc/keyferry/repuser.pw ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }\n";
        assert!(runs_guard(guarded));
        let two = "ExecStartPre={ path=/usr/bin/pg_ctlcluster ; argv[]=/usr/bin/pg_ctlcluster --skip-systemctl-redirect 15-main start ; ignore_errors=no }\nExecStartPre={ path=/usr/bin/keyferry ; argv[]=/usr/bin/keyferry ha guard ; ignore_errors=no }\n";
        assert!(runs_guard(two));
        for not in [
            "ExecStartPre=\n",
            "",
            "ExecStartPre={ path=/usr/bin/pg_ctlcluster ; argv[]=/usr/bin/pg_ctlcluster 15-main start ; ignore_errors=no }\n",
            // Another program's words, or keyferry doing something else.
            "ExecStartPre={ path=/bin/echo ; argv[]=/bin/echo keyferry ha guard ; ignore_errors=no }\n",
            "ExecStartPre={ path=/usr/bin/keyferry ; argv[]=/usr/bin/keyferry ha status ; ignore_errors=no }\n",
            // `ExecStartPre=-…`: the unit starts whatever the guard says.
            "ExecStartPre={ path=/usr/bin/keyferry ; argv[]=/usr/bin/keyferry ha guard ; ignore_errors=yes }\n",
        ] {
            assert!(!runs_guard(not), "{not}");
        }
    }

    #[test]
    fn reads_postgresql_conf_values_as_postgresql_does() {
        let conf = "#data_directory = '/nope'\n\
                    data_directory = '/var/lib/postgresql/15/main'\t\t# use data in another directory\n\
                    data_directory_mode = 0700\n\
                    port = 5432\n";
        assert_eq!(
            conf_value(conf, "data_directory").as_deref(),
            Some("/var/lib/postgresql/15/main")
        );
        assert_eq!(conf_value(conf, "port").as_deref(), Some("5432"));
        assert_eq!(
            conf_value(
                "data_directory='/a'\ndata_directory '/b''s'\n",
                "data_directory"
            )
            .as_deref(),
            Some("/b's")
        );
        assert_eq!(conf_value("port = 1", "data_directory"), None);
    }

    #[test]
    fn finds_the_debian_cluster_of_a_data_directory() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("lib/15/main");
        std::fs::create_dir_all(&data).unwrap();
        let other = root.path().join("etc/14/old");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(
            other.join("postgresql.conf"),
            "data_directory = '/elsewhere'\n",
        )
        .unwrap();
        let etc = root.path().join("etc/15/main");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("postgresql.conf"),
            format!("data_directory = '{}'\n", data.display()),
        )
        .unwrap();
        let found = debian_cluster(&root.path().join("etc"), &data).unwrap();
        assert_eq!(
            (found.version.as_str(), found.name.as_str()),
            ("15", "main")
        );
        // No start.conf: Debian starts it.
        assert_eq!(found.start, "auto");
        std::fs::write(
            etc.join("start.conf"),
            "# Automatic startup configuration\n#   auto: ...\n\nmanual\n",
        )
        .unwrap();
        assert_eq!(
            debian_cluster(&root.path().join("etc"), &data)
                .unwrap()
                .start,
            "manual"
        );
        assert_eq!(
            debian_cluster(&root.path().join("etc"), &root.path().join("lib")),
            None
        );
        assert_eq!(debian_cluster(&root.path().join("missing"), &data), None);
    }
}
