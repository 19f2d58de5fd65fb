//! The pair's configuration files as they travel in a bundle: which files
//! an export carries, and (on import) where they are installed.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::Home;
use crate::error::{Error, Result};
use crate::fsutil::{self, Staged};
use crate::ha::config::{FieldChange, HaConfig, LocalPaths};
use crate::ha::generation::Forward;
use crate::node::Change;
use crate::payload::{zip, ConfigFile, ConfigSink, ConfigSource};

/// What an export puts into the payload besides the keys.
pub(crate) struct ConfigPlan {
    /// The `source_node` of the manifest.
    pub node_name: String,
    pub files: Vec<(ConfigFile, PathBuf)>,
}

/// Configuration files opened for export, with the CRC-32 and length of a
/// first read (the zip writer needs them before the data).
pub(crate) struct OpenSources {
    items: Vec<(ConfigFile, u32, u64, File)>,
}

impl OpenSources {
    pub(crate) fn as_payload_sources(&mut self) -> Vec<ConfigSource<'_>> {
        self.items
            .iter_mut()
            .map(|(file, crc, len, f)| ConfigSource {
                file: *file,
                crc: *crc,
                len: *len,
                data: f,
            })
            .collect()
    }
}

impl ConfigPlan {
    pub(crate) fn open_all(&self) -> Result<OpenSources> {
        let mut items = Vec::with_capacity(self.files.len());
        for (file, path) in &self.files {
            let what = format!("cannot read {}", path.display());
            let mut f = File::open(path).map_err(Error::io(what.clone()))?;
            let (crc, len) = zip::crc_and_len(&mut f).map_err(Error::io(what.clone()))?;
            f.seek(SeekFrom::Start(0)).map_err(Error::io(what))?;
            items.push((*file, crc, len, f));
        }
        Ok(OpenSources { items })
    }
}

fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// This node's `ha.toml`, if it has one.
pub fn load_local(home: &Home) -> Result<Option<HaConfig>> {
    let path = home.ha_config_path();
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(HaConfig::from_toml(&text)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()))(e)),
    }
}

/// The configuration an export carries: nothing unless `with_config`, and
/// then the node's `ha.toml` and the `appsettings.json` it names.
pub(crate) fn sources_for_export(home: &Home, with_config: bool) -> Result<ConfigPlan> {
    let local = if with_config { load_local(home)? } else { None };
    if !with_config {
        return Ok(ConfigPlan {
            node_name: match load_local(home) {
                Ok(Some(c)) => c.node,
                _ => host_name(),
            },
            files: Vec::new(),
        });
    }
    let Some(ha) = local else {
        return Err(Error::Refused(format!(
            "--with-config needs this node's HA configuration, {}, which does not exist: \
             describe the pair first (`keyferry ha init`), or export without --with-config",
            home.ha_config_path().display()
        )));
    };
    let mut files = vec![(ConfigFile::HaConfig, home.ha_config_path())];
    if let Some(app) = &ha.appsettings {
        if !app.is_file() {
            return Err(Error::Refused(format!(
                "ha.toml names {} as appsettings.json, but there is no such file: \
                 fix the path with `keyferry ha init --appsettings PATH --force`",
                app.display()
            )));
        }
        files.push((ConfigFile::Appsettings, app.clone()));
    }
    Ok(ConfigPlan {
        node_name: ha.node,
        files,
    })
}

/// Receives configuration entries while a payload is read, into owner-only
/// staging files that vanish unless installed.
pub(crate) struct StagingSink {
    dir: PathBuf,
    pub staged: Vec<(ConfigFile, Staged)>,
    /// A failure of this node's own disk while staging (full, read-only),
    /// kept apart from the bundle's errors so it is not reported as a bad
    /// bundle.
    local_failure: Option<io::Error>,
}

impl StagingSink {
    /// Stages in the home when it exists (same file system as `ha.toml`),
    /// else in the system's temporary folder, so a failed import of a
    /// fresh node leaves no home behind.
    pub fn new(home: &Home) -> Self {
        let dir = if home.root().is_dir() {
            home.root().to_path_buf()
        } else {
            std::env::temp_dir()
        };
        Self {
            dir,
            staged: Vec::new(),
            local_failure: None,
        }
    }

    /// Why staging failed on this node, if it did: an error to report in
    /// place of whatever the payload reader made of it.
    pub(crate) fn local_failure(&mut self) -> Option<Error> {
        self.local_failure.take().map(|e| {
            Error::io(format!(
                "cannot stage the bundle's configuration in {}; nothing was changed \
                 (free space there, or import with --keys-only)",
                self.dir.display()
            ))(e)
        })
    }

    fn take(&mut self, file: ConfigFile) -> Option<Staged> {
        let i = self.staged.iter().position(|(f, _)| *f == file)?;
        Some(self.staged.remove(i).1)
    }
}

impl ConfigSink for StagingSink {
    fn receive(&mut self, file: ConfigFile, data: &mut dyn Read) -> io::Result<()> {
        let local = |sink: &mut Self, e: io::Error| {
            let kind = e.kind();
            sink.local_failure = Some(e);
            io::Error::new(kind, "staging on this node failed")
        };
        let mut staged = Staged::new_in(&self.dir).map_err(|e| local(self, e))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // Errors reading `data` are the bundle's; errors writing are ours.
            let n = data.read(&mut buf)?;
            if n == 0 {
                break;
            }
            staged.write_all(&buf[..n]).map_err(|e| local(self, e))?;
        }
        staged.sync().map_err(|e| local(self, e))?;
        self.staged.push((file, staged));
        Ok(())
    }
}

/// What an import does to one configuration file.
pub(crate) struct FilePlan {
    pub file: ConfigFile,
    pub target: PathBuf,
    /// Whether the file exists on this node already (else it is created).
    pub existed: bool,
    pub unchanged: bool,
    /// For `ha.toml`: the fields that change.
    pub changes: Vec<FieldChange>,
    /// Node-local paths left unset (the field, and the import option that
    /// sets it); for appsettings.json: not installed, no path.
    pub unset: Vec<(&'static str, &'static str)>,
    /// What this node kept of its own against the bundle, and why.
    pub kept: Vec<String>,
    contents: Staged,
}

/// How an import may treat configuration.
pub(crate) struct ConfigPolicy<'a> {
    pub accept_config: bool,
    /// The receiving node's name when it has no `ha.toml` yet.
    pub node_name: Option<&'a str>,
    /// The receiving node's paths when it has no `ha.toml` yet.
    pub paths: &'a LocalPaths,
}

fn same_bytes(a: &mut dyn Read, path: &Path) -> io::Result<bool> {
    let mut b = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let (mut x, mut y) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A `config/ha.toml` that does not parse or validate is a bad bundle
/// (exit 4); a path this node gave on its command line that `ha.toml`
/// cannot hold is a usage error naming the option.
fn invalid_ha(e: crate::ha::Error) -> Error {
    match e {
        crate::ha::Error::ConfigValue {
            field: field @ ("pg_data" | "archive_dir" | "appsettings"),
            reason,
        } => Error::Usage(format!("--{}: {field} {reason}", field.replace('_', "-"))),
        other => Error::Payload(crate::payload::PayloadError::HaConfig(other.to_string())),
    }
}

/// Decides where each staged file goes and what changes; writes nothing.
pub(crate) fn plan_install(
    home: &Home,
    mut sink: StagingSink,
    policy: &ConfigPolicy<'_>,
) -> Result<Vec<FilePlan>> {
    let local = load_local(home)?;
    let mut plans = Vec::new();
    let mut effective = local.clone();
    if let Some(mut staged) = sink.take(ConfigFile::HaConfig) {
        let mut text = String::new();
        let f = staged.file_mut();
        f.seek(SeekFrom::Start(0))
            .map_err(Error::io("cannot read the staged ha.toml"))?;
        f.read_to_string(&mut text).map_err(|_| {
            invalid_ha(crate::ha::Error::ConfigSerialize {
                message: "not UTF-8".into(),
            })
        })?;
        let received = HaConfig::from_toml(&text).map_err(invalid_ha)?;
        if local.is_some() && !policy.paths.is_empty() {
            return Err(Error::Usage(format!(
                "this node already has {}, which keeps its own paths: drop --pg-bin, --pg-data, \
                 --archive-dir, --appsettings and --service, or change them with `keyferry ha init … --force`",
                home.ha_config_path().display()
            )));
        }
        if local.is_none() && !policy.accept_config {
            return Err(Error::Refused(format!(
                "the bundle carries the pair's configuration and this node has no {}: \
                 re-run with --accept-config to create it (add --node NAME to name this node), \
                 or with --keys-only to take only the keys",
                home.ha_config_path().display()
            )));
        }
        let name = match (&local, policy.node_name) {
            (Some(l), _) => l.node.clone(),
            (None, Some(n)) => n.to_owned(),
            (None, None) => host_name(),
        };
        let mut adjusted = received
            .for_receiving_node(&name, local.as_ref(), policy.paths)
            .map_err(invalid_ha)?;
        let mut kept = Vec::new();
        if let Some(l) = &local {
            if let Err(behind) = Forward::new(l.generation, adjusted.generation) {
                // A bundle from a node whose ha.toml is behind the pair's
                // roles: its roles are older than this node's too.
                adjusted.generation = l.generation;
                adjusted.primary = l.primary;
                adjusted.secondary = l.secondary;
                kept.push(format!(
                    "the bundle's {behind}; primary and secondary kept too"
                ));
            }
        }
        let rendered = adjusted.to_toml()?;
        let mut contents = Staged::new_in(&sink.dir).map_err(Error::io("cannot stage ha.toml"))?;
        contents
            .write_all(rendered.as_bytes())
            .and_then(|()| contents.sync())
            .map_err(Error::io("cannot stage ha.toml"))?;
        let changes = match &local {
            Some(l) => l.changes_to(&adjusted),
            None => Vec::new(),
        };
        let unset = [
            (
                "archive_dir",
                adjusted.archive_dir.is_none(),
                "--archive-dir",
            ),
            (
                "appsettings",
                adjusted.appsettings.is_none(),
                "--appsettings",
            ),
        ]
        .into_iter()
        .filter(|(_, unset, _)| *unset)
        .map(|(field, _, flag)| (field, flag))
        .collect();
        plans.push(FilePlan {
            file: ConfigFile::HaConfig,
            target: home.ha_config_path(),
            existed: local.is_some(),
            unchanged: local.is_some() && changes.is_empty(),
            changes,
            unset,
            kept,
            contents,
        });
        effective = Some(adjusted);
    }
    if let Some(mut staged) = sink.take(ConfigFile::Appsettings) {
        let Some(target) = effective.as_ref().and_then(|c| c.appsettings.clone()) else {
            // Where it goes is this node's decision, never the bundle's.
            plans.push(FilePlan {
                file: ConfigFile::Appsettings,
                target: PathBuf::new(),
                existed: false,
                unchanged: true,
                changes: Vec::new(),
                unset: vec![("appsettings", "--appsettings")],
                kept: Vec::new(),
                contents: staged,
            });
            return Ok(plans);
        };
        // A linked appsettings.json is written at the link's final target,
        // and the link stays (replacing it would leave the application
        // reading the unchanged target).
        let target = fs::canonicalize(&target).unwrap_or(target);
        refuse_inside_home(home, &target)?;
        match target.parent() {
            Some(dir) if dir.is_dir() => {}
            _ => {
                return Err(Error::Refused(format!(
                    "the folder of {} does not exist: create it, or fix the appsettings path in ha.toml",
                    target.display()
                )))
            }
        }
        let f = staged.file_mut();
        f.seek(SeekFrom::Start(0))
            .map_err(Error::io("cannot read the staged appsettings.json"))?;
        let unchanged = same_bytes(f, &target)
            .map_err(Error::io(format!("cannot read {}", target.display())))?;
        plans.push(FilePlan {
            file: ConfigFile::Appsettings,
            existed: target.exists(),
            target,
            unchanged,
            changes: Vec::new(),
            unset: Vec::new(),
            kept: Vec::new(),
            contents: staged,
        });
    }
    Ok(plans)
}

/// Nothing but keyferry's own files is ever installed inside the home.
fn refuse_inside_home(home: &Home, target: &Path) -> Result<()> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let dir = canonical(target.parent().unwrap_or(Path::new(".")));
    if dir.starts_with(canonical(home.root())) {
        return Err(Error::Refused(format!(
            "{} is inside keyferry's home {}, where only keyferry's own files go: \
             give the application's real appsettings.json path",
            target.display(),
            home.root().display()
        )));
    }
    Ok(())
}

/// Installs the planned files byte for byte, each a step of `change` (with
/// a backup, keeping each old file's owner and mode), so that a failure or a
/// crash puts every one back.
pub(crate) fn install(change: &mut Change<'_>, plans: Vec<FilePlan>) -> Result<()> {
    for mut plan in plans.into_iter().filter(|p| !p.unchanged) {
        let f = plan.contents.file_mut();
        f.seek(SeekFrom::Start(0)).map_err(Error::io(format!(
            "cannot read the staged {}",
            plan.target.display()
        )))?;
        change.replace_file(&plan.target, f, fsutil::Ownership::KeepExisting)?;
    }
    Ok(())
}
