//! The SSH host keys of a testbed's NETCONF servers (KM agents, controllers): created before
//! the processes start and recorded in `<dir>/known_hosts`, which the controllers, managers,
//! the CLI and the tests check servers against.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::error::TestbedError;
use crate::netconf::known_hosts;
use crate::netconf::ssh::load_or_create_host_key;

/// `<dir>/known_hosts`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("known_hosts")
}

/// Starts an empty known hosts file (entries of an earlier testbed in `dir` would name the
/// same ports with other keys).
pub fn reset(known_hosts: &Path) -> Result<(), TestbedError> {
    std::fs::write(known_hosts, "")
        .map_err(|e| TestbedError::Io(format!("writing {}: {e}", known_hosts.display())))
}

/// Loads or creates the host key of the NETCONF server at `server` (private key at
/// `key_path`) and records its public key in `known_hosts`.
pub fn provision(
    known_hosts: &Path,
    key_path: &Path,
    server: SocketAddr,
) -> Result<(), TestbedError> {
    let key = load_or_create_host_key(&key_path.to_path_buf())
        .map_err(|e| TestbedError::Operation(e.to_string()))?;
    known_hosts::record(known_hosts, server, key.public_key())
        .map_err(|e| TestbedError::Operation(e.to_string()))
}
