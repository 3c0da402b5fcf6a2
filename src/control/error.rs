//! The controller's errors, as its northbound reports them, and the way answers go back
//! to whoever asked the instance.

use tokio::sync::oneshot;
use uuid::Uuid;

use super::ck::southbound::SouthboundError;
use super::cxi::CxiError;

/// Where an answer of the instance goes.
pub type Reply<T> = oneshot::Sender<Result<T, ControlError>>;

/// Controller errors, as the northbound reports them.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("unknown SAE {0}")]
    UnknownSae(String),
    #[error("unknown session {0}")]
    UnknownSession(Uuid),
    #[error("no QKD link {0} in this domain")]
    UnknownLink(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no route: {0}")]
    NoRoute(String),
    #[error("route install failed: {0}")]
    Install(#[from] SouthboundError),
    #[error("store: {0}")]
    Store(#[from] super::sessions::StoreError),
    #[error("interworking: {0}")]
    Cxi(#[from] super::cxi::CxiError),
    #[error("the controller is stopping")]
    Stopped,
    #[error("{0}")]
    Admission(#[from] super::admission::AdmissionRefusal),
}

/// Sends every waiter the error (the first gets it as it is, the others a copy).
pub(super) fn answer_all<T>(replies: Vec<Reply<T>>, error: ControlError) {
    let mut replies = replies.into_iter();
    let first = replies.next();
    for reply in replies {
        let _ = reply.send(Err(copy(&error)));
    }
    if let Some(first) = first {
        let _ = first.send(Err(error));
    }
}

/// A copy of an error for a second waiter (its kind kept, its cause as text).
fn copy(error: &ControlError) -> ControlError {
    match error {
        ControlError::UnknownSae(s) => ControlError::UnknownSae(s.clone()),
        ControlError::UnknownSession(id) => ControlError::UnknownSession(*id),
        ControlError::UnknownLink(l) => ControlError::UnknownLink(l.clone()),
        ControlError::Invalid(s) => ControlError::Invalid(s.clone()),
        ControlError::Cxi(CxiError::Refused {
            domain,
            status,
            detail,
        }) => ControlError::Cxi(CxiError::Refused {
            domain: domain.clone(),
            status: *status,
            detail: detail.clone(),
        }),
        ControlError::Cxi(other) => ControlError::Cxi(CxiError::Unreachable {
            domain: String::new(),
            reason: other.to_string(),
        }),
        ControlError::Stopped => ControlError::Stopped,
        ControlError::Admission(refusal) => ControlError::Admission(refusal.clone()),
        other => ControlError::NoRoute(other.to_string()),
    }
}

/// The HTTP problem of a controller error (REST API, Ck).
impl From<ControlError> for crate::problem::Problem {
    fn from(error: ControlError) -> Self {
        let (status, kind) = match &error {
            ControlError::UnknownSae(_) => {
                (axum::http::StatusCode::UNPROCESSABLE_ENTITY, "unknown-sae")
            }
            ControlError::UnknownSession(_) => {
                (axum::http::StatusCode::NOT_FOUND, "unknown-session")
            }
            ControlError::UnknownLink(_) => (axum::http::StatusCode::NOT_FOUND, "unknown-link"),
            ControlError::Invalid(_) => (axum::http::StatusCode::BAD_REQUEST, "invalid-request"),
            ControlError::NoRoute(_) => (axum::http::StatusCode::CONFLICT, "no-route"),
            ControlError::Install(_) => (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "install-failed",
            ),
            ControlError::Store(_) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "store"),
            ControlError::Cxi(_) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "peer-domain"),
            ControlError::Stopped => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "stopping"),
            ControlError::Admission(_) => (axum::http::StatusCode::CONFLICT, "qos-admission"),
        };
        crate::problem::Problem::new(status, kind, error.to_string())
    }
}
