//! How a daemon tells whoever started it that it serves: once every listener is bound (and
//! what it needs to answer on them is loaded), it writes the addresses it listens on to the
//! file named by [`ENV`], atomically (a temporary file renamed into place). The testbed
//! starts KM agents, controllers and managers with it and returns only when the file names
//! every port of the process: readiness the daemon states, not a guess by sleeping. The
//! other end of a daemon's life, [`shutdown_signal`], is here too.
//!
//! File format: the daemon's process id on the first line, then one listening address
//! (`ip:port`) a line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The environment variable naming the readiness file.
pub const ENV: &str = "QKDNI_READY_FILE";

/// Errors of writing or reading a readiness file.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("readiness file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("readiness file {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{addr} does not accept connections: {source}")]
    NotListening {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What a readiness file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The process that wrote it.
    pub pid: u32,
    /// The addresses it serves.
    pub listening: Vec<SocketAddr>,
}

/// Tells the starter (if it asked, through [`ENV`]) that this process serves `listening`.
pub fn notify(listening: &[SocketAddr]) -> Result<(), ReadinessError> {
    let Some(path) = std::env::var_os(ENV) else {
        return Ok(());
    };
    let path = PathBuf::from(path);
    write(&path, std::process::id(), listening)?;
    tracing::info!(file = %path.display(), ?listening, "readiness notified");
    Ok(())
}

/// Waits until `addr` accepts TCP connections (for a listener bound by code that does not
/// hand it out), at most `timeout`.
pub async fn wait_accepting(
    addr: SocketAddr,
    timeout: std::time::Duration,
) -> Result<(), ReadinessError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(source) if tokio::time::Instant::now() >= deadline => {
                return Err(ReadinessError::NotListening { addr, source })
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// Writes a readiness file atomically.
pub fn write(path: &Path, pid: u32, listening: &[SocketAddr]) -> Result<(), ReadinessError> {
    let io = |source| ReadinessError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut text = format!("{pid}\n");
    for addr in listening {
        text.push_str(&format!("{addr}\n"));
    }
    let tmp = path.with_extension("ready-tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads a readiness file: `None` while there is none.
pub fn read(path: &Path) -> Result<Option<Ready>, ReadinessError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ReadinessError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let malformed = |reason: String| ReadinessError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let mut lines = text.lines();
    let pid = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| malformed("no process id on the first line".into()))?;
    let listening = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse()
                .map_err(|e| malformed(format!("address {l:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(Ready { pid, listening }))
}

/// Resolves on SIGINT or SIGTERM: every daemon stops on either.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_reads_back_and_a_bad_one_is_refused() {
        let path = std::env::temp_dir().join(format!("qkdni-ready-{}", uuid::Uuid::new_v4()));
        assert_eq!(read(&path).unwrap(), None);
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:10001".parse().unwrap(),
            "[::1]:10002".parse().unwrap(),
        ];
        write(&path, 42, &addrs).unwrap();
        assert_eq!(
            read(&path).unwrap(),
            Some(Ready {
                pid: 42,
                listening: addrs
            })
        );
        std::fs::write(&path, "42\nnot an address\n").unwrap();
        assert!(matches!(read(&path), Err(ReadinessError::Malformed { .. })));
        std::fs::remove_file(&path).unwrap();
    }
}
