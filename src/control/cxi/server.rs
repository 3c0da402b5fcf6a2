//! The Cxi server of a controller: answers the configured peer controllers only (their
//! certificate, issued by their domain's CA, names them), checks every message's version and
//! shape before anything changes, and logs what it refuses.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::control::controller::Controller;
use crate::control::cxi::{Outcome, PrepareRequest, StatusReport, VoteKind, CXI_VERSION};
use crate::problem::Problem;
use crate::tls::PeerIdentity;

/// The Cxi routes.
pub fn router(controller: Arc<Controller>) -> Router {
    Router::new()
        .route(
            "/cxi/versions",
            get(|| async { Json(serde_json::json!({ "versions": [CXI_VERSION] })) }),
        )
        .route(
            "/cxi/v1/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    crate::control::cxi::schemas_json(),
                )
            }),
        )
        .route("/cxi/v1/abstract-topology", get(abstract_topology))
        .route("/cxi/v1/transactions", post(prepare))
        .route("/cxi/v1/transactions/{id}/commit", post(commit))
        .route("/cxi/v1/transactions/{id}/abort", post(abort))
        .route("/cxi/v1/status", post(status))
        .route("/cxi/v1/sessions/{id}", delete(delete_session))
        .route_layer(axum::middleware::from_fn_with_state(
            controller.metrics.cxi.clone(),
            crate::metrics::count_requests,
        ))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "no such resource") })
        .with_state(controller)
}

/// The calling peer's domain, or a logged refusal.
fn peer(c: &Controller, identity: &PeerIdentity, what: &str) -> Result<String, Problem> {
    let found = identity
        .0
        .as_deref()
        .and_then(|name| c.peer_by_identity(name))
        .map(|p| p.peer.domain.clone());
    if let Some(domain) = &found {
        c.peer_contact(domain, true);
    }
    found.ok_or_else(|| {
        let who = identity
            .0
            .clone()
            .unwrap_or_else(|| "an anonymous client".into());
        tracing::warn!(caller = %who, what, "Cxi request refused: not a peer controller");
        c.event(
            "cxi-rejected",
            format!("{what} from {who}: not a configured peer controller"),
            None,
            None,
        );
        Problem::new(
            StatusCode::FORBIDDEN,
            "not-a-peer",
            "Cxi is open to the configured peer controllers only",
        )
    })
}

/// Parses a message body, refusing malformed ones and other versions.
fn message<T: DeserializeOwned>(
    c: &Controller,
    from: &str,
    body: &[u8],
    version: impl Fn(&T) -> u32,
) -> Result<T, Problem> {
    let refuse = |detail: String| {
        tracing::warn!(%from, %detail, "malformed Cxi message");
        c.event("cxi-rejected", format!("from {from}: {detail}"), None, None);
        Problem::new(StatusCode::BAD_REQUEST, "malformed-message", detail)
    };
    let parsed: T = serde_json::from_slice(body).map_err(|e| refuse(e.to_string()))?;
    if version(&parsed) != CXI_VERSION {
        return Err(refuse(format!(
            "message version {} is not {CXI_VERSION}",
            version(&parsed)
        )));
    }
    Ok(parsed)
}

async fn abstract_topology(
    State(c): State<Arc<Controller>>,
    Extension(identity): Extension<PeerIdentity>,
) -> Response {
    if let Err(refused) = peer(&c, &identity, "abstract topology") {
        return refused.into_response();
    }
    Json(c.abstract_topology()).into_response()
}

async fn prepare(
    State(c): State<Arc<Controller>>,
    Extension(identity): Extension<PeerIdentity>,
    body: Bytes,
) -> Response {
    let from = match peer(&c, &identity, "prepare") {
        Ok(from) => from,
        Err(refused) => return refused.into_response(),
    };
    let request: PrepareRequest = match message(&c, &from, &body, |r: &PrepareRequest| r.version) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let vote = match tokio::spawn(async move { c.cxi_prepare(&from, request).await }).await {
        Ok(vote) => vote,
        Err(error) => return internal(error),
    };
    let status = match vote.vote {
        VoteKind::Prepared => StatusCode::OK,
        VoteKind::Refused => StatusCode::CONFLICT,
    };
    (status, Json(vote)).into_response()
}

/// The calling peer's domain and the UUID in the path (a transaction or a session).
fn peer_and_id(
    c: &Controller,
    identity: &PeerIdentity,
    what: &str,
    id: &str,
) -> Result<(String, Uuid), Problem> {
    Ok((peer(c, identity, what)?, transaction_id(id)?))
}

fn transaction_id(id: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(id).map_err(|_| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "the transaction id is not a UUID",
        )
    })
}

async fn commit(
    State(c): State<Arc<Controller>>,
    Extension(identity): Extension<PeerIdentity>,
    Path(id): Path<String>,
) -> Response {
    let (from, id) = match peer_and_id(&c, &identity, "commit", &id) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    // to completion even if the peer gives up waiting: never half-installed
    let result = match tokio::spawn(async move { c.cxi_commit(&from, id).await }).await {
        Ok(result) => result,
        Err(error) => return internal(error),
    };
    let status = match result.outcome {
        Outcome::Committed => StatusCode::OK,
        Outcome::Aborted => StatusCode::CONFLICT,
    };
    (status, Json(result)).into_response()
}

async fn abort(
    State(c): State<Arc<Controller>>,
    Extension(identity): Extension<PeerIdentity>,
    Path(id): Path<String>,
) -> Response {
    let (from, id) = match peer_and_id(&c, &identity, "abort", &id) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    match tokio::spawn(async move { c.cxi_abort(&from, id).await }).await {
        Ok(result) => Json(result).into_response(),
        Err(error) => internal(error),
    }
}

async fn status(
    State(c): State<Arc<Controller>>,
    Extension(identity): Extension<PeerIdentity>,
    body: Bytes,
) -> Response {
    let from = match peer(&c, &identity, "status") {
        Ok(from) => from,
        Err(refused) => return refused.into_response(),
    };
    let report: StatusReport = match message(&c, &from, &body, |r: &StatusReport| r.version) {
        Ok(report) => report,
        Err(refused) => return refused.into_response(),
    };
    if report.domain != from {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-message",
            "the report names another domain than its sender's",
        )
        .into_response();
    }
    c.cxi_status(&from, report).await;
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "status": "accepted" })),
    )
        .into_response()
}

async fn delete_session(
    State(c): State<Arc<Controller>>,
    Extension(identity): Extension<PeerIdentity>,
    Path(id): Path<String>,
) -> Response {
    let (from, id) = match peer_and_id(&c, &identity, "delete session", &id) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let deleted = tokio::spawn(async move { c.cxi_delete_session(&from, id).await }).await;
    if deleted.unwrap_or(false) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        Problem::new(StatusCode::NOT_FOUND, "unknown-session", "no such segment").into_response()
    }
}

/// A task that died (it panicked): 500.
fn internal(error: tokio::task::JoinError) -> Response {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        error.to_string(),
    )
    .into_response()
}

/// Serves Cxi until the task is dropped.
pub async fn serve(controller: Arc<Controller>) -> Result<(), std::io::Error> {
    let Some(iw) = controller.config.interworking.clone() else {
        return Ok(());
    };
    let files = &controller.config.tls;
    let config = crate::tls::server_config(files).map_err(std::io::Error::other)?;
    let issuers = crate::tls::Issuers::load(files).map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(iw.cxi_listen).await?;
    tracing::info!(cxi = %iw.cxi_listen, "Cxi server ready");
    let limits = controller.config.limits.peer_listener.clone();
    crate::https::serve_https_with(listener, config, issuers, router(controller), limits).await;
    Ok(())
}
