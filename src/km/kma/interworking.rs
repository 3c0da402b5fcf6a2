//! The KMA side of a distributed QKDN's interworking (see [`crate::control::gateway`]): a
//! node asks the domain's speaker for an interworking route (`POST
//! /ck/v1/interworking-routes`, the same call a centralized domain's KMs make to their
//! controller), and the speaker places or removes a session's border crossing on a gateway
//! node (`PUT`/`DELETE /kma/v1/interworking/crossings/{session}`). Callers are KMs of the
//! domain (their certificate, from the domain's CA, names them) that its link state knows.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use super::{parse, problem, Problem};
use crate::control::gateway::{Entry, GatewayError};
use crate::km::agent::Agent;
use crate::tls::PeerIdentity;

/// The routes.
pub fn router() -> Router<Arc<Agent>> {
    Router::new()
        .route("/ck/v1/interworking-routes", post(route_request))
        .route(
            "/kma/v1/interworking/crossings/{session}",
            put(place).delete(unplace),
        )
        .route("/api/v1/diagnoses", post(diagnosis))
}

/// A QCLM's diagnosis, as the controller's `POST /api/v1/diagnoses` takes it.
#[derive(Debug, Deserialize)]
struct Diagnosis {
    source: String,
    kind: String,
    #[serde(default)]
    relay_id: Option<Uuid>,
    #[serde(default)]
    destination: Option<String>,
    #[serde(default)]
    reported_by: Option<String>,
    #[serde(default)]
    reason: String,
}

/// The domain's manager (its QCLM, with a bearer token of the speaker's configuration) hands
/// the speaker a diagnosis, as it would hand a controller one (Y.3818 9.1 procedure 3).
async fn diagnosis(
    State(agent): State<Arc<Agent>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let Some(gateway) = agent.gateway().filter(|g| g.speaker.is_some()).cloned() else {
        return problem(
            StatusCode::NOT_FOUND,
            "this node is not the domain's speaker",
        );
    };
    let tokens = &gateway
        .speaker
        .as_ref()
        .expect("speaker")
        .config
        .bearer_tokens;
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let known = presented.is_some_and(|p| {
        tokens
            .iter()
            .any(|t| subtle::ConstantTimeEq::ct_eq(t.as_bytes(), p.as_bytes()).into())
    });
    if !known {
        return problem(
            StatusCode::UNAUTHORIZED,
            "a manager's bearer token is required",
        );
    }
    let d: Diagnosis = match parse(&body) {
        Ok(d) => d,
        Err(refusal) => return refusal.into_response(),
    };
    if d.kind != "interworking-relay-failure" {
        return problem(
            StatusCode::BAD_REQUEST,
            format!("unknown diagnosis kind {}", d.kind),
        );
    }
    let detail = format!("{} from {}", d.kind, d.source);
    tracing::info!(source = %d.source, relay_id = ?d.relay_id, destination = ?d.destination, reported_by = ?d.reported_by, reason = %d.reason, "QCLM diagnosis");
    // to completion even if the QCLM gives up waiting
    let destination = d.destination.clone();
    let decided =
        tokio::spawn(async move { gateway.diagnose(destination.as_deref(), &detail).await }).await;
    match decided {
        Ok(decision) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "decision": decision })),
        )
            .into_response(),
        Err(error) => problem(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

/// The calling KM of this domain, known to the link state.
fn domain_km(agent: &Agent, identity: &PeerIdentity) -> Result<String, Problem> {
    let control = agent.local_control().ok_or_else(|| {
        Problem(
            StatusCode::NOT_FOUND,
            "this node runs no local controller".into(),
        )
    })?;
    identity
        .0
        .clone()
        .filter(|name| control.database().iter().any(|e| &e.lsa.origin == name))
        .ok_or_else(|| {
            Problem(
                StatusCode::UNAUTHORIZED,
                "a KM certificate of this domain is required".into(),
            )
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteRequest {
    master_sae: String,
    slave_sae: String,
}

async fn route_request(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    body: Bytes,
) -> Response {
    let km = match domain_km(&agent, &identity) {
        Ok(km) => km,
        Err(refused) => return refused.into_response(),
    };
    let Some(gateway) = agent.gateway().filter(|g| g.speaker.is_some()).cloned() else {
        return problem(
            StatusCode::NOT_FOUND,
            "this node is not the domain's speaker",
        );
    };
    let request: RouteRequest = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    // to completion even if the KM gives up waiting: never half-agreed
    let agreed = tokio::spawn(async move {
        gateway
            .request_route(&km, &request.master_sae, &request.slave_sae)
            .await
    })
    .await;
    match agreed {
        Ok(Ok(())) => Json(serde_json::json!({ "status": "installed" })).into_response(),
        Ok(Err(GatewayError::UnknownSae(sae))) => {
            problem(StatusCode::NOT_FOUND, format!("unknown SAE {sae}"))
        }
        Ok(Err(error)) => problem(StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
        Err(error) => problem(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

/// The speaker of the domain.
fn speaker(agent: &Agent, identity: &PeerIdentity) -> Result<(), Problem> {
    let caller = domain_km(agent, identity)?;
    let control = agent.local_control().expect("checked");
    if !control.is_speaker(&caller) {
        return Err(Problem(
            StatusCode::FORBIDDEN,
            "only the domain's speaker places interworking crossings".into(),
        ));
    }
    Ok(())
}

async fn place(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    Path(session): Path<Uuid>,
    body: Bytes,
) -> Response {
    if let Err(refused) = speaker(&agent, &identity) {
        return refused.into_response();
    }
    let Some(gateway) = agent.gateway() else {
        return problem(StatusCode::NOT_FOUND, "this node is no gateway node");
    };
    let entry: Entry = match parse(&body) {
        Ok(entry) => entry,
        Err(refusal) => return refusal.into_response(),
    };
    let across = agent
        .config
        .links
        .iter()
        .any(|l| l.id == entry.link && l.peer == entry.across && l.peer_domain.is_some());
    if !across {
        return problem(
            StatusCode::BAD_REQUEST,
            format!(
                "{} is no Qx link of this node to {}",
                entry.link, entry.across
            ),
        );
    }
    gateway.place(session, entry);
    StatusCode::NO_CONTENT.into_response()
}

async fn unplace(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    Path(session): Path<Uuid>,
) -> Response {
    if let Err(refused) = speaker(&agent, &identity) {
        return refused.into_response();
    }
    match agent.gateway().map(|g| g.unplace(session)) {
        Some(true) => StatusCode::NO_CONTENT.into_response(),
        _ => problem(StatusCode::NOT_FOUND, "no such crossing"),
    }
}
