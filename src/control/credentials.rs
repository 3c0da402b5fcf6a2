//! Who may use the controller's HTTP faces (REST API, dashboard): a configured bearer token
//! or client certificate name; everyone else gets 401 with a problem and `WWW-Authenticate`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::controller::Controller;
use crate::problem::{constant_eq, Problem, PROBLEM_JSON};
use crate::tls::PeerIdentity;

/// Missing or invalid credentials (no accepted bearer token or client certificate).
#[derive(utoipa::IntoResponses)]
#[response(
    status = 401,
    content_type = PROBLEM_JSON,
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
#[allow(dead_code)]
pub(in crate::control) struct Unauthorized(Problem);

/// Lets requests with accepted REST credentials through.
pub(in crate::control) async fn authenticate(
    State(controller): State<Arc<Controller>>,
    request: Request,
    next: Next,
) -> Response {
    if rest_credentials(&controller, &request).is_some() {
        next.run(request).await
    } else {
        unauthorized()
    }
}

/// Who the request's REST credentials name (`bearer token` or the certificate's name), if
/// they are accepted: a configured bearer token or client certificate name.
pub(in crate::control) fn rest_credentials(
    controller: &Controller,
    request: &Request,
) -> Option<String> {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let by_token = bearer.is_some_and(|t| {
        controller
            .config
            .bearer_tokens
            .iter()
            .any(|k| constant_eq(k, t))
    });
    if by_token {
        return Some("bearer token".to_owned());
    }
    request
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.0.as_deref())
        .filter(|name| controller.config.client_names.iter().any(|n| n == name))
        .map(str::to_owned)
}

/// The REST API's answer to missing or refused credentials: 401, a problem, `WWW-Authenticate`.
pub(in crate::control) fn unauthorized() -> Response {
    let mut response = Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid bearer token or client certificate is required",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}
