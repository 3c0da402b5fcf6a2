//! Errors of Kxi-1 / Kxi-1' as ETSI GS QKD 020 gives them: RFC 9457 problem details
//! `{type, status, title, details}` (`details` an object of strings), content type
//! `application/problem+json`, with the standard's type URIs.

use std::collections::BTreeMap;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Where the standard's problem types live.
pub const TYPE_BASE: &str = "https://qkd.etsi.org/gs020-interop-kms/";
/// The content type of a problem.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The problem types of ETSI GS QKD 020.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    MissingParameters,
    KeyRoutingError,
    VoidRequestNotUnderstood,
    NoKeyIdsOrConfirmation,
    AckNotUnderstood,
    KeyNotPresent,
    Unauthorized,
    Timeout,
    ServerSideGeneralError,
    InsufficientKeyMaterial,
    UnsupportedMandatoryExtension,
}

impl Kind {
    /// The last segment of the type URI.
    pub fn name(self) -> &'static str {
        match self {
            Kind::MissingParameters => "missing-parameters",
            Kind::KeyRoutingError => "key-routing-error",
            Kind::VoidRequestNotUnderstood => "void-request-not-understood",
            Kind::NoKeyIdsOrConfirmation => "no-key-ids-or-confirmation",
            Kind::AckNotUnderstood => "ack-not-understood",
            Kind::KeyNotPresent => "key-not-present",
            Kind::Unauthorized => "unauthorized",
            Kind::Timeout => "timeout",
            Kind::ServerSideGeneralError => "server-side-general-error",
            Kind::InsufficientKeyMaterial => "insufficient-key-material",
            Kind::UnsupportedMandatoryExtension => "unsupported-mandatory-extension",
        }
    }

    /// The status the standard answers this problem with.
    pub fn status(self) -> StatusCode {
        match self {
            Kind::MissingParameters
            | Kind::KeyRoutingError
            | Kind::VoidRequestNotUnderstood
            | Kind::NoKeyIdsOrConfirmation
            | Kind::AckNotUnderstood
            | Kind::KeyNotPresent => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Timeout => StatusCode::REQUEST_TIMEOUT,
            Kind::ServerSideGeneralError
            | Kind::InsufficientKeyMaterial
            | Kind::UnsupportedMandatoryExtension => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::MissingParameters => "Missing or invalid parameters",
            Kind::KeyRoutingError => "The keys cannot be routed to the target SAEs",
            Kind::VoidRequestNotUnderstood => "The void request is not understood",
            Kind::NoKeyIdsOrConfirmation => "No key ids and no confirmation to void all keys",
            Kind::AckNotUnderstood => "The acknowledgement is not understood",
            Kind::KeyNotPresent => "Key not present",
            Kind::Unauthorized => "Unauthorized",
            Kind::Timeout => "Timeout",
            Kind::ServerSideGeneralError => "Server-side error",
            Kind::InsufficientKeyMaterial => "Insufficient key material",
            Kind::UnsupportedMandatoryExtension => "Unsupported mandatory extension",
        }
    }
}

/// An RFC 9457 problem as ETSI GS QKD 020 shapes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub status: u16,
    pub title: String,
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

impl Problem {
    /// A problem of `kind` with its standard status and title and one detail.
    pub fn new(kind: Kind, detail: &str, text: impl Into<String>) -> Self {
        Self::with_status(kind, kind.status()).detail(detail, text)
    }

    /// A problem of `kind` answered with `status`.
    pub fn with_status(kind: Kind, status: StatusCode) -> Self {
        Self {
            type_uri: format!("{TYPE_BASE}{}", kind.name()),
            status: status.as_u16(),
            title: kind.title().to_owned(),
            details: BTreeMap::new(),
        }
    }

    /// Adds a detail.
    pub fn detail(mut self, name: &str, text: impl Into<String>) -> Self {
        self.details.insert(name.to_owned(), text.into());
        self
    }

    /// Adds several details.
    pub fn details(mut self, details: BTreeMap<String, String>) -> Self {
        self.details.extend(details);
        self
    }

    /// The details as one line (logs, errors).
    pub fn summary(&self) -> String {
        let details: Vec<String> = self
            .details
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!("{} ({})", self.title, details.join("; "))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = serde_json::to_vec(&self).expect("a problem serializes");
        (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_problem_is_answered_as_problem_json_with_the_standards_type() {
        let problem = Problem::new(
            Kind::NoKeyIdsOrConfirmation,
            "no_all_confirmation",
            "key_ids is empty and all_confirmation is not true",
        );
        assert_eq!(
            problem.type_uri,
            "https://qkd.etsi.org/gs020-interop-kms/no-key-ids-or-confirmation"
        );
        let response = problem.clone().into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let back: Problem = serde_json::from_slice(&body).unwrap();
        assert_eq!(back, problem);
        assert_eq!(
            Kind::UnsupportedMandatoryExtension.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
