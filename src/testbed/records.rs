//! What a running testbed records in its directory: its processes (`processes.json`) and
//! the network of a `--netns` testbed (`netns.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{io, TestbedError};
use super::netns;

/// Processes of a running testbed (`processes.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Processes {
    pub(super) nodes: BTreeMap<String, u32>,
}

impl Processes {
    fn path(dir: &Path) -> PathBuf {
        dir.join("processes.json")
    }

    pub(super) fn load(dir: &Path) -> Self {
        std::fs::read_to_string(Self::path(dir))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    pub(super) fn save(&self, dir: &Path) -> Result<(), TestbedError> {
        let text = serde_json::to_string_pretty(self).expect("serializable");
        std::fs::write(Self::path(dir), text).map_err(io("writing processes.json"))
    }
}

/// The process id of every node of the testbed in `dir`, by name.
pub fn process_ids(dir: &Path) -> BTreeMap<String, u32> {
    Processes::load(dir).nodes
}

/// `netns.json`: the network of a `--netns` testbed while it exists (endpoints.json keeps
/// describing it after `down`; the slot may then serve another testbed).
pub(super) fn network_path(dir: &Path) -> PathBuf {
    dir.join("netns.json")
}

pub(super) fn live_network(dir: &Path) -> Option<netns::Netns> {
    let text = std::fs::read_to_string(network_path(dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Deletes the namespaces and veths of the `--netns` testbed in `dir`, if it has any.
pub(super) fn remove_network(dir: &Path) -> Result<(), TestbedError> {
    if let Some(net) = live_network(dir) {
        netns::destroy(&net)?;
        std::fs::remove_file(network_path(dir)).map_err(io("removing netns.json"))?;
    }
    Ok(())
}
