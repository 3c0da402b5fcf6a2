//! Errors of testbed operations, and of reading `endpoints.json`.

use std::path::PathBuf;

use crate::pki::PkiError;
use crate::tls;

/// Errors of testbed operations.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Endpoints(#[from] EndpointsError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("node {node} did not become ready: {reason}")]
    NotReady { node: String, reason: String },
    #[error("unknown {kind} {name}")]
    Unknown { kind: &'static str, name: String },
    #[error("{0}")]
    Operation(String),
}

/// Maps an I/O error to a [`TestbedError`] that says what was being done.
pub(super) fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> TestbedError {
    move |e| TestbedError::Io(format!("{context}: {e}"))
}

/// Errors reading endpoints.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("unknown SAE {0}")]
    UnknownSae(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}
