//! The manager's REST API for operators and the testbed (HTTPS, bearer tokens):
//! - `GET /api/v1/health`: `{"ready":true}` (no credentials needed);
//! - `GET /api/v1/events`: the event log, oldest first;
//! - `GET /api/v1/reports/latest`: the last report packs sent and received;
//! - `GET /api/v1/accounting?since=&until=&format=json|csv`: the domain's usage per period;
//!   `GET /api/v1/accounting/reconciliation`: its reconciliation with the peer domain
//!   ([`super::accounting`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use super::events::{ManagerEvent, SecurityCounters};
use super::xlmo::LatestReports;
use super::{ManagementError, Manager};
use crate::problem::{constant_eq, Problem};

/// The REST routes.
pub fn router(manager: Arc<Manager>) -> Router {
    let api = Router::new()
        .route("/api/v1/events", get(events))
        .route("/api/v1/reports/latest", get(latest_reports))
        .merge(super::accounting::router())
        // inside authentication: only authenticated callers' changes are recorded
        .layer(middleware::from_fn_with_state(
            manager.audit.clone(),
            crate::audit::hooks::rest_changes,
        ))
        .layer(middleware::from_fn_with_state(
            manager.clone(),
            authenticate,
        ));
    Router::new()
        .route(
            "/api/v1/health",
            get(|| async { Json(serde_json::json!({"ready": true})) }),
        )
        .merge(api)
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "no such resource") })
        .with_state(manager)
}

/// Serves the REST API on `listener` until the task is dropped.
pub async fn serve(manager: Arc<Manager>, listener: TcpListener) -> Result<(), ManagementError> {
    let config = crate::tls::server_config(&manager.config.tls)?;
    tracing::info!(rest = %listener.local_addr()?, "manager REST API ready");
    let limits = manager.config.limits.rest_listener.clone();
    let watch = crate::https::Watch::of(
        manager.security.refusals.clone(),
        crate::refusals::Point::Rest,
    );
    // clients stay anonymous: the API is authenticated by bearer tokens
    crate::https::serve_https_watched(
        listener,
        config,
        crate::tls::Issuers::default(),
        router(manager),
        limits,
        Some(watch),
    )
    .await;
    Ok(())
}

async fn authenticate(
    State(manager): State<Arc<Manager>>,
    request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = token.is_some_and(|t| {
        manager
            .config
            .bearer_tokens
            .iter()
            .any(|k| !k.is_empty() && constant_eq(k, t))
    });
    if valid {
        return next.run(request).await;
    }
    SecurityCounters::bump(&manager.security.rest_authentication_failures);
    tracing::warn!(path = %request.uri().path(), "REST request without a valid bearer token");
    let mut response = Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid bearer token is required",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

async fn events(State(manager): State<Arc<Manager>>) -> Json<Vec<ManagerEvent>> {
    Json(manager.events.all())
}

async fn latest_reports(State(manager): State<Arc<Manager>>) -> Json<LatestReports> {
    Json(manager.xlmo.latest())
}
