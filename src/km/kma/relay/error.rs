//! Why a relay fails, and whether the failure is only a shortage of key.

use crate::km::store::StoreError;

/// Why a relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("no relay route to node {0}")]
    NoRoute(String),
    #[error("not enough key material: {0}")]
    Exhausted(StoreError),
    #[error("relay message rejected: {0}")]
    Rejected(String),
    #[error("next hop {node} refused the relay (HTTP {status}): {message}")]
    Peer {
        node: String,
        status: u16,
        message: String,
    },
    #[error("next hop {node} unreachable: {source}")]
    Unreachable {
        node: String,
        source: reqwest::Error,
    },
    #[error(transparent)]
    Store(StoreError),
    /// Too many keys already wait for a slave SAE (see [`crate::km::ksa::expiry`]).
    #[error("{BACKLOG}: {0}")]
    Backlog(String),
    /// The request's QoS class may not have the key now (see [`crate::km::qos`]).
    #[error("{QOS}: {0}")]
    Qos(#[from] crate::km::qos::QosRefusal),
}

/// How a QoS refusal begins, also in a peer's problem body.
const QOS: &str = "refused by QoS policy";

/// How a backlog refusal begins, also in a peer's problem body.
const BACKLOG: &str = "too many undelivered keys";

impl RelayError {
    /// Whether the relay failed only because a link on its route (here or further on) holds
    /// too little key for now: not a route fault.
    pub fn is_exhaustion(&self) -> bool {
        match self {
            RelayError::Exhausted(_) | RelayError::Backlog(_) | RelayError::Qos(_) => true,
            // a further hop refused with this same error (its text leads the problem body)
            RelayError::Peer {
                status: 503,
                message,
                ..
            } => {
                message.contains("not enough key material")
                    || message.contains(BACKLOG)
                    || message.contains(QOS)
            }
            _ => false,
        }
    }
}

impl From<StoreError> for RelayError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exhausted { .. } => RelayError::Exhausted(e),
            StoreError::Backlog { .. } => RelayError::Backlog(e.to_string()),
            StoreError::MissingBlock { .. } | StoreError::WrongOwner { .. } => {
                RelayError::Rejected(e.to_string())
            }
            other => RelayError::Store(other),
        }
    }
}
