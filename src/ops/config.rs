//! The pair's configuration files as they travel in a bundle: which files
//! an export carries, and (on import) where they are installed.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;

use super::Home;
use crate::error::{Error, Result};
use crate::payload::{zip, ConfigFile, ConfigSource};

/// What an export puts into the payload besides the keys.
pub struct ConfigPlan {
    /// The `source_node` of the manifest.
    pub node_name: String,
    pub files: Vec<(ConfigFile, PathBuf)>,
}

/// Configuration files opened for export, with the CRC-32 and length of a
/// first read (the zip writer needs them before the data).
pub struct OpenSources {
    items: Vec<(ConfigFile, u32, u64, File)>,
}

impl OpenSources {
    pub fn as_payload_sources(&mut self) -> Vec<ConfigSource<'_>> {
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
    pub fn open_all(&self) -> Result<OpenSources> {
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

/// The configuration an export carries: nothing unless `with_config`, and
/// then the node's `ha.toml` and the `appsettings.json` it names.
pub fn sources_for_export(home: &Home, with_config: bool) -> Result<ConfigPlan> {
    let ha_path = home.ha_config_path();
    if !with_config {
        return Ok(ConfigPlan {
            node_name: host_name(),
            files: Vec::new(),
        });
    }
    if !ha_path.exists() {
        return Err(Error::Refused(format!(
            "--with-config needs this node's HA configuration, {}, which does not exist: \
             describe the pair first (`keyferry ha init`), or export without --with-config",
            ha_path.display()
        )));
    }
    Err(Error::Refused(
        "--with-config: reading ha.toml is not available in this build".into(),
    ))
}
