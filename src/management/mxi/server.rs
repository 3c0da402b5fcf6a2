//! The Mxi server: the configured peer manager only; every message checked before it is
//! handed to the XLMO.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;

use super::messages::{
    parse, FaultReport, MessageError, MxiMessage, ReportPack, Versions, SUPPORTED_VERSIONS,
};
use crate::management::events::{self, Refs, SecurityCounters};
use crate::management::{ManagementError, Manager};
use crate::problem::Problem;
use crate::tls::{foreign_identity, PeerIdentity};

/// The Mxi routes.
pub fn router(manager: Arc<Manager>) -> Router {
    Router::new()
        .route("/mxi/v1/faults", post(post_fault))
        .route("/mxi/v1/reports", post(post_reports))
        .route("/mxi/v1/usage-summaries", post(post_usage))
        .route("/mxi/v1/versions", get(versions))
        .route_layer(middleware::from_fn_with_state(
            signing(&manager),
            crate::nonrepudiation::http::verify_and_sign,
        ))
        // outside the signature step: refusals are recorded too, with the TLS peer
        .route_layer(middleware::from_fn_with_state(
            Arc::new(crate::audit::hooks::PointAudit {
                audit: manager.audit.clone(),
                point: "mxi",
                classify: agreement,
            }),
            crate::audit::hooks::reference_point,
        ))
        .route_layer(middleware::from_fn_with_state(
            manager.metrics.mxi.clone(),
            crate::metrics::count_requests,
        ))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "no such resource") })
        .layer(middleware::from_fn_with_state(manager.clone(), authorize))
        .with_state(manager)
}

/// Serves Mxi on `listener` until the task is dropped.
pub async fn serve(manager: Arc<Manager>, listener: TcpListener) -> Result<(), ManagementError> {
    let config = crate::tls::server_config(&manager.config.tls)?;
    let issuers = crate::tls::Issuers::load(&manager.config.tls)?;
    tracing::info!(mxi = %listener.local_addr()?, "Mxi server ready");
    let limits = manager.config.limits.peer_listener.clone();
    let watch = crate::https::Watch::of(
        manager.security.refusals.clone(),
        crate::refusals::Point::Mxi,
    );
    crate::https::serve_https_watched(
        listener,
        config,
        issuers,
        router(manager),
        limits,
        Some(watch),
    )
    .await;
    Ok(())
}

/// The agreement an Mxi message belongs to (its evidence index): `<kind> <id>` of the
/// message; `None` for reads.
pub fn agreement(method: &axum::http::Method, path: &str, body: &[u8]) -> Option<String> {
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        return None;
    }
    let value = serde_json::from_slice::<serde_json::Value>(body).ok();
    let field = |name: &str| {
        value
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    Some(match (field("kind"), field("id")) {
        (Some(kind), Some(id)) => format!("{kind} {id}"),
        _ => format!("request {path}"),
    })
}

/// The signature step of every Mxi message ([`crate::nonrepudiation::http`]): signed by
/// the peer manager itself, or refused (401, 403 for another signer) and counted.
fn signing(manager: &Arc<Manager>) -> Arc<crate::nonrepudiation::http::ServerPoint> {
    let notary = crate::nonrepudiation::for_tls(&manager.config.tls).unwrap_or_else(|error| {
        tracing::error!(%error, "Mxi: no signing key; every signed message is refused");
        Arc::new(crate::nonrepudiation::Notary::unusable())
    });
    let peer = manager.config.peer.clone();
    let refusals = manager.clone();
    Arc::new(crate::nonrepudiation::http::ServerPoint {
        notary,
        point: "mxi",
        classify: agreement,
        lenient: crate::nonrepudiation::http::never_lenient,
        peer_of: Arc::new(move |identity: &str| {
            (identity == foreign_identity(&peer.manager_name, &peer.domain))
                .then(|| peer.domain.clone())
        }),
        refuse: Arc::new(move |status, kind, detail| {
            reject(&refusals, status, kind, detail).into_response()
        }),
    })
}

/// Refuses a request: warns, counts it and logs an `mxi-rejected` event.
fn reject(manager: &Manager, status: StatusCode, kind: &str, detail: String) -> Problem {
    tracing::warn!(%status, "Mxi request refused: {detail}");
    let counter = if status == StatusCode::FORBIDDEN {
        &manager.security.mxi_rejected
    } else {
        &manager.security.mxi_malformed
    };
    SecurityCounters::bump(counter);
    manager
        .events
        .record(events::MXI_REJECTED, detail.clone(), Refs::default());
    Problem::new(status, kind, detail)
}

async fn authorize(State(manager): State<Arc<Manager>>, request: Request, next: Next) -> Response {
    let peer = &manager.config.peer;
    let expected = foreign_identity(&peer.manager_name, &peer.domain);
    let identity = request
        .extensions()
        .get::<PeerIdentity>()
        .and_then(|p| p.0.clone());
    if identity.as_deref() == Some(expected.as_str()) {
        return next.run(request).await;
    }
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "?".into());
    let who = identity.unwrap_or_else(|| "a client without certificate".into());
    reject(
        &manager,
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "{} {} from {who} at {remote}: only {expected} may use Mxi",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}

/// Reads a message of the peer's domain.
fn accept<T: MxiMessage>(manager: &Manager, body: &[u8]) -> Result<T, Problem> {
    let message = parse::<T>(body).map_err(|error| {
        let kind = match error {
            MessageError::UnsupportedVersion(_) => "unsupported-version",
            MessageError::WrongKind { .. } => "wrong-kind",
            MessageError::Malformed(_) => "malformed-message",
        };
        reject(manager, StatusCode::BAD_REQUEST, kind, error.to_string())
    })?;
    let peer = &manager.config.peer.domain;
    if message.domain() != peer {
        return Err(reject(
            manager,
            StatusCode::FORBIDDEN,
            "forged-domain",
            format!(
                "{} {} claims domain {:?}; the peer manager speaks for {peer}",
                T::KIND,
                message.id(),
                message.domain()
            ),
        ));
    }
    Ok(message)
}

/// The answer to an accepted message.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Accepted {
    /// The message id.
    pub id: uuid::Uuid,
}

async fn post_fault(
    State(manager): State<Arc<Manager>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let report: FaultReport = accept(&manager, &body)?;
    let id = report.id;
    manager.xlmo.peer_fault(&manager, report);
    Ok((StatusCode::ACCEPTED, Json(Accepted { id })))
}

async fn post_reports(
    State(manager): State<Arc<Manager>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let pack: ReportPack = accept(&manager, &body)?;
    let id = pack.id;
    manager.xlmo.peer_reports(&manager, pack);
    Ok((StatusCode::ACCEPTED, Json(Accepted { id })))
}

async fn post_usage(
    State(manager): State<Arc<Manager>>,
    body: Bytes,
) -> Result<Json<super::messages::UsageReply>, Problem> {
    let summary: super::messages::UsageSummary = accept(&manager, &body)?;
    crate::management::accounting::peer_summary(&manager, summary)
        .await
        .map(Json)
}

async fn versions() -> Json<Versions> {
    Json(Versions {
        versions: SUPPORTED_VERSIONS.to_vec(),
    })
}
