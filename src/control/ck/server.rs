//! The KMs' requests to the controller over Ck: a KM of this domain (its certificate names
//! it) asks for the route of keys from its SAE to an SAE it has no route to (procedure 1
//! across domains, or an on-demand session inside the domain), answered once installed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use crate::control::controller::Controller;
use crate::control::error::ControlError;
use crate::control::sessions::Session;
use crate::problem::Problem;
use crate::tls::PeerIdentity;

/// The Ck routes (the controller's REST listener serves them; callers are KMs).
pub fn router() -> Router<Arc<Controller>> {
    Router::new().route("/ck/v1/interworking-routes", post(interworking_route))
}

/// A KM's request for an interworking route (Ck).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteRequest {
    master_sae: String,
    slave_sae: String,
}

/// Procedure 1: a KM of this domain (its certificate names it) asks for the route of keys
/// from its SAE to an SAE of another QKDN; answered once the route is installed.
async fn interworking_route(
    State(c): State<Arc<Controller>>,
    identity: Option<Extension<PeerIdentity>>,
    body: axum::body::Bytes,
) -> Result<Json<Session>, Problem> {
    let km = identity
        .and_then(|Extension(p)| p.0)
        .filter(|name| c.config.agents.iter().any(|a| &a.node == name))
        .ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a KM certificate of this domain is required",
            )
        })?;
    // parsed once the caller is known
    let request: RouteRequest = serde_json::from_slice(&body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("malformed route request: {e}"),
        )
    })?;
    // to completion even if the KM gives up waiting: routes are never left half-agreed
    let session = tokio::spawn(async move {
        c.interworking_route(&km, &request.master_sae, &request.slave_sae)
            .await
    })
    .await
    .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| match e {
        ControlError::UnknownSae(sae) => Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-sae",
            format!("no domain knows SAE {sae}"),
        ),
        other => Problem::from(other),
    })?;
    Ok(Json(session))
}
