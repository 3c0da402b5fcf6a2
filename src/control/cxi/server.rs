//! The Cxi server: answers the configured peer controllers only (their certificate, issued
//! by their domain's CA, names them), checks every message's version and shape before
//! anything changes, and logs what it refuses. It serves any [`CxiEndpoint`]: a centralized
//! domain's controller, or the interworking function a distributed domain's gateway node
//! carries ([`crate::control::gateway`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use futures::future::BoxFuture;

use crate::control::controller::Controller;
use crate::control::cxi::{
    AbstractTopology, Outcome, PrepareRequest, StatusReport, TransactionResult, Vote, VoteKind,
    CXI_VERSION,
};
use crate::nonrepudiation::http::{verify_and_sign, ServerPoint};
use crate::nonrepudiation::{Notary, NrError};
use crate::problem::Problem;
use crate::tls::PeerIdentity;

/// What answers Cxi for a domain: the controller of a centralized QKDN, or a gateway node of
/// a distributed one. The server checks callers and messages; the endpoint decides.
pub trait CxiEndpoint: Send + Sync + 'static {
    /// The peer domain whose controller (or gateway) presents certificate name `identity`,
    /// noting the contact.
    fn peer_domain(&self, identity: &str) -> Option<String>;
    /// Records a refused request (event `cxi-rejected`).
    fn rejected(&self, detail: String);
    /// What the domain's exposure policy shares.
    fn abstract_topology(&self) -> AbstractTopology;
    /// What the exposure policy toward peer `domain` shares.
    fn abstract_topology_for(&self, domain: &str) -> AbstractTopology {
        let _ = domain;
        self.abstract_topology()
    }
    /// Phase 1 at the receiving domain.
    fn prepare(self: Arc<Self>, from: String, request: PrepareRequest) -> BoxFuture<'static, Vote>;
    /// Phase 2: install the prepared segment.
    fn commit(self: Arc<Self>, from: String, id: Uuid) -> BoxFuture<'static, TransactionResult>;
    /// Drop a prepared segment, or undo a committed one.
    fn abort(self: Arc<Self>, from: String, id: Uuid) -> BoxFuture<'static, TransactionResult>;
    /// Status shared by the peer.
    fn status(self: Arc<Self>, from: String, report: StatusReport) -> BoxFuture<'static, ()>;
    /// The peer ended a session: its segment goes. False when there is none.
    fn delete_session(self: Arc<Self>, from: String, id: Uuid) -> BoxFuture<'static, bool>;
    /// Who signs this endpoint's answers and checks the peers' signatures
    /// ([`crate::nonrepudiation`]).
    fn notary(&self) -> Result<Arc<Notary>, NrError>;
    /// The audit log every received message is recorded in, with its caller
    /// ([`crate::audit::hooks::reference_point`]).
    fn audit(&self) -> crate::audit::AuditLog {
        crate::audit::AuditLog::disabled()
    }
}

impl CxiEndpoint for Controller {
    fn peer_domain(&self, identity: &str) -> Option<String> {
        let found = self
            .peer_by_identity(identity)
            .map(|p| p.peer.domain.clone());
        if let Some(domain) = &found {
            self.peer_contact(domain, true);
        }
        found
    }

    fn rejected(&self, detail: String) {
        self.event("cxi-rejected", detail, None, None);
    }

    fn abstract_topology(&self) -> AbstractTopology {
        Controller::abstract_topology(self)
    }

    fn abstract_topology_for(&self, domain: &str) -> AbstractTopology {
        Controller::abstract_topology_for(self, domain)
    }

    fn prepare(self: Arc<Self>, from: String, request: PrepareRequest) -> BoxFuture<'static, Vote> {
        Box::pin(async move { self.cxi_prepare(&from, request).await })
    }

    fn commit(self: Arc<Self>, from: String, id: Uuid) -> BoxFuture<'static, TransactionResult> {
        Box::pin(async move { self.cxi_commit(&from, id).await })
    }

    fn abort(self: Arc<Self>, from: String, id: Uuid) -> BoxFuture<'static, TransactionResult> {
        Box::pin(async move { self.cxi_abort(&from, id).await })
    }

    fn status(self: Arc<Self>, from: String, report: StatusReport) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.cxi_status(&from, report).await })
    }

    fn delete_session(self: Arc<Self>, from: String, id: Uuid) -> BoxFuture<'static, bool> {
        Box::pin(async move { self.cxi_delete_session(&from, id).await })
    }

    fn notary(&self) -> Result<Arc<Notary>, NrError> {
        crate::nonrepudiation::for_tls(&self.config.tls)
    }

    fn audit(&self) -> crate::audit::AuditLog {
        self.audit.clone()
    }
}

type Endpoint = Arc<dyn CxiEndpoint>;

/// The Cxi routes of a controller.
pub fn router(controller: Arc<Controller>) -> Router {
    let counters = controller.metrics.cxi.clone();
    router_for(controller, Some(counters))
}

/// The Cxi routes of `endpoint`, counted in `counters` if given.
pub fn router_for(endpoint: Endpoint, counters: Option<crate::metrics::Counters>) -> Router {
    let routes = Router::new()
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
            signing(&endpoint),
            verify_and_sign,
        ))
        // outside the signature step: refusals are recorded too, with the TLS peer
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(crate::audit::hooks::PointAudit {
                audit: endpoint.audit(),
                point: "cxi",
                classify: crate::control::cxi::agreement,
            }),
            crate::audit::hooks::reference_point,
        ));
    let routes = match counters {
        Some(counters) => routes.route_layer(axum::middleware::from_fn_with_state(
            counters,
            crate::metrics::count_requests,
        )),
        None => routes,
    };
    routes
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "no such resource") })
        .with_state(endpoint)
}

/// The signature step of every Cxi message ([`crate::nonrepudiation::http`]): a peer's
/// message must be signed by the peer controller itself; its refusal is a logged
/// `cxi-rejected` event and a problem (401, 403 for a signer other than the TLS peer).
fn signing(endpoint: &Endpoint) -> Arc<ServerPoint> {
    let notary = endpoint.notary().unwrap_or_else(|error| {
        // the daemon checked its key at start; a part without one refuses every message
        tracing::error!(%error, "Cxi: no signing key; every signed message is refused");
        Arc::new(Notary::unusable())
    });
    let (peers, refusals) = (endpoint.clone(), endpoint.clone());
    Arc::new(ServerPoint {
        notary,
        point: "cxi",
        classify: crate::control::cxi::agreement,
        lenient: crate::nonrepudiation::http::never_lenient,
        peer_of: Arc::new(move |identity: &str| peers.peer_domain(identity)),
        refuse: Arc::new(move |status, kind, detail| {
            refusals.rejected(detail.clone());
            Problem::new(status, kind, detail).into_response()
        }),
    })
}

/// The calling peer's domain, or a logged refusal.
fn peer(c: &Endpoint, identity: &PeerIdentity, what: &str) -> Result<String, Problem> {
    let found = identity.0.as_deref().and_then(|name| c.peer_domain(name));
    found.ok_or_else(|| {
        let who = identity
            .0
            .clone()
            .unwrap_or_else(|| "an anonymous client".into());
        tracing::warn!(caller = %who, what, "Cxi request refused: not a peer controller");
        c.rejected(format!(
            "{what} from {who}: not a configured peer controller"
        ));
        Problem::new(
            StatusCode::FORBIDDEN,
            "not-a-peer",
            "Cxi is open to the configured peer controllers only",
        )
    })
}

/// Parses a message body, refusing malformed ones and other versions.
fn message<T: DeserializeOwned>(
    c: &Endpoint,
    from: &str,
    body: &[u8],
    version: impl Fn(&T) -> u32,
) -> Result<T, Problem> {
    let refuse = |detail: String| {
        tracing::warn!(%from, %detail, "malformed Cxi message");
        c.rejected(format!("from {from}: {detail}"));
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
    State(c): State<Endpoint>,
    Extension(identity): Extension<PeerIdentity>,
) -> Response {
    match peer(&c, &identity, "abstract topology") {
        Ok(domain) => Json(c.abstract_topology_for(&domain)).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn prepare(
    State(c): State<Endpoint>,
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
    let vote = match tokio::spawn(c.prepare(from, request)).await {
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
    c: &Endpoint,
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
    State(c): State<Endpoint>,
    Extension(identity): Extension<PeerIdentity>,
    Path(id): Path<String>,
) -> Response {
    let (from, id) = match peer_and_id(&c, &identity, "commit", &id) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    // to completion even if the peer gives up waiting: never half-installed
    let result = match tokio::spawn(c.commit(from, id)).await {
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
    State(c): State<Endpoint>,
    Extension(identity): Extension<PeerIdentity>,
    Path(id): Path<String>,
) -> Response {
    let (from, id) = match peer_and_id(&c, &identity, "abort", &id) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    match tokio::spawn(c.abort(from, id)).await {
        Ok(result) => Json(result).into_response(),
        Err(error) => internal(error),
    }
}

async fn status(
    State(c): State<Endpoint>,
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
    c.status(from, report).await;
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "status": "accepted" })),
    )
        .into_response()
}

async fn delete_session(
    State(c): State<Endpoint>,
    Extension(identity): Extension<PeerIdentity>,
    Path(id): Path<String>,
) -> Response {
    let (from, id) = match peer_and_id(&c, &identity, "delete session", &id) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let deleted = tokio::spawn(c.delete_session(from, id)).await;
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
    let watch = crate::https::Watch::of(controller.refusals.clone(), crate::refusals::Point::Cxi);
    crate::https::serve_https_watched(
        listener,
        config,
        issuers,
        router(controller),
        limits,
        Some(watch),
    )
    .await;
    Ok(())
}
