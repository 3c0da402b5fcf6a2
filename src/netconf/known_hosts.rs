//! Which SSH host key each NETCONF server may present: an OpenSSH `known_hosts` file
//! (`[host]:port key-type base64`, hashed host names accepted), read and written with
//! russh's own known_hosts support.
//!
//! A NETCONF client checks the server's key during the SSH key exchange, before it
//! authenticates: a server whose key is unknown or changed is refused before any password
//! or signature is sent (RFC 6242 section 6 leaves host key checking to SSH, RFC 4251
//! section 4.1 says why it must happen).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{HashAlg, PublicKey};

/// Why a server's host key was refused, or the file could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HostKeyError {
    #[error("host key {fingerprint} of {server} is not in {known_hosts}: refusing to connect (nothing was sent)")]
    Unknown {
        server: SocketAddr,
        fingerprint: String,
        known_hosts: PathBuf,
    },
    #[error("host key of {server} CHANGED: {fingerprint} does not match line {line} of {known_hosts}; refusing to connect (nothing was sent): an impostor, or a re-keyed agent whose new key must be recorded")]
    Changed {
        server: SocketAddr,
        fingerprint: String,
        known_hosts: PathBuf,
        line: usize,
    },
    #[error("host key {fingerprint} of {server} is not the expected one: refusing to connect (nothing was sent)")]
    NotExpected {
        server: SocketAddr,
        fingerprint: String,
    },
    #[error("known hosts file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// The SHA-256 fingerprint of `key`, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Checks that `known_hosts` records `key` for `server` (`[ip]:port`, or `ip` on port 22).
/// Blocking (reads the file): call it off the async workers.
pub fn check(known_hosts: &Path, server: SocketAddr, key: &PublicKey) -> Result<(), HostKeyError> {
    // russh treats an unreadable file as empty: say why instead
    std::fs::metadata(known_hosts).map_err(|e| HostKeyError::File {
        path: known_hosts.to_path_buf(),
        reason: e.to_string(),
    })?;
    let host = server.ip().to_string();
    match russh::keys::check_known_hosts_path(&host, server.port(), key, known_hosts) {
        Ok(true) => Ok(()),
        Ok(false) => Err(HostKeyError::Unknown {
            server,
            fingerprint: fingerprint(key),
            known_hosts: known_hosts.to_path_buf(),
        }),
        Err(russh::keys::Error::KeyChanged { line }) => Err(HostKeyError::Changed {
            server,
            fingerprint: fingerprint(key),
            known_hosts: known_hosts.to_path_buf(),
            line,
        }),
        Err(other) => Err(HostKeyError::File {
            path: known_hosts.to_path_buf(),
            reason: other.to_string(),
        }),
    }
}

/// Checks that `known_hosts` exists and that every entry's key parses, so that a daemon
/// refuses to start on a bad file rather than at its first connection.
pub fn validate(known_hosts: &Path) -> Result<(), HostKeyError> {
    let file = |reason: String| HostKeyError::File {
        path: known_hosts.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(known_hosts).map_err(|e| file(e.to_string()))?;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(_hosts), Some(kind), Some(key)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(file(format!(
                "line {}: expected `hosts key-type key`",
                number + 1
            )));
        };
        PublicKey::from_openssh(&format!("{kind} {key}"))
            .map_err(|e| file(format!("line {}: {e}", number + 1)))?;
    }
    Ok(())
}

/// Appends `key` for `server` to `known_hosts` (created if missing).
pub fn record(known_hosts: &Path, server: SocketAddr, key: &PublicKey) -> Result<(), HostKeyError> {
    russh::keys::known_hosts::learn_known_hosts_path(
        &server.ip().to_string(),
        server.port(),
        key,
        known_hosts,
    )
    .map_err(|e| HostKeyError::File {
        path: known_hosts.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::PrivateKey;

    fn key() -> PublicKey {
        PrivateKey::random(&mut rand::rngs::OsRng, russh::keys::Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    #[test]
    fn recorded_keys_pass_unknown_and_changed_ones_are_refused() {
        let path = std::env::temp_dir().join(format!("qkdni-kh-{}", uuid::Uuid::new_v4()));
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:10830".parse().unwrap(),
            "127.0.0.1:10831".parse().unwrap(),
        );
        let (ka, kb) = (key(), key());
        assert!(matches!(
            check(&path, a, &ka),
            Err(HostKeyError::File { .. })
        ));
        record(&path, a, &ka).unwrap();
        validate(&path).unwrap();
        check(&path, a, &ka).unwrap();
        assert!(matches!(
            check(&path, b, &kb),
            Err(HostKeyError::Unknown { .. })
        ));
        let changed = check(&path, a, &kb).unwrap_err();
        assert!(matches!(changed, HostKeyError::Changed { .. }));
        assert!(changed.to_string().contains("CHANGED"), "{changed}");
        std::fs::write(&path, "[127.0.0.1]:10830 ssh-ed25519 not-base64\n").unwrap();
        assert!(matches!(validate(&path), Err(HostKeyError::File { .. })));
        std::fs::remove_file(&path).unwrap();
    }
}
