//! The KMA server of a KM: key relay from peer KMs, the receiver side of emulated QKD links,
//! and a read-only admin view for operators (health, link pools); operators change the
//! agent through NETCONF.
//!
//! Peer KMs and operators are told apart by their certificate's common name.
//!
//! - [`relay`] — hop-by-hop key relay (sending and receiving);
//! - [`reserve`] — path reservation, so a relay that cannot arrive spends no link key;
//! - [`otp`] — the one-time pad and MAC of relayed keys;
//! - [`interworking`] — a distributed QKDN's interworking: route requests to the domain's
//!   speaker, border crossings placed on gateway nodes;
//! - [`withdraw`] — keys of a voided interworking transfer taken back from the slave SAEs.

pub mod interworking;
pub mod otp;
pub mod relay;
pub mod reserve;
pub mod withdraw;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::km::agent::Agent;
use crate::km::config::{LinkConfig, LinkEnd};
use crate::km::kma::relay::error::RelayError;
use crate::km::kma::relay::messages::RelayEnvelope;
use crate::quantum::emulated::{self, Frame, ReceiveError, SyncRequest, SyncResponse};
use crate::quantum::{LinkCondition, LinkState};
use crate::tls::PeerIdentity;
use reserve::ReserveRequest;
use tracing::Instrument;

/// The KMA routes of a KM.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/kma/v1/relay", post(relay_hop))
        .route("/kma/v1/reserve", post(reserve_path))
        .route("/kma/v1/withdraw", post(withdraw_keys))
        .route("/kma/v1/link-state", post(link_state_flood))
        .route("/qchannel/v1/links/{link}/sync", post(qchannel_sync))
        .route("/qchannel/v1/links/{link}/frames", post(qchannel_frame))
        .route(
            "/qchannel/v1/links/{link}/heartbeat",
            post(qchannel_heartbeat),
        )
        .merge(interworking::router())
        .merge(admin_router(&agent))
        .with_state(agent)
}

/// The operators' admin API (`/admin/v1/...`): every request that may change state is
/// recorded in the audit log with its caller's certificate identity and the answer's status
/// ([`crate::audit::hooks::rest_changes`]).
fn admin_router(agent: &Arc<Agent>) -> Router<Arc<Agent>> {
    Router::new()
        .route("/admin/v1/health", get(health))
        .route("/admin/v1/links", get(links))
        .route("/admin/v1/interworking", get(interworking_view))
        .merge(crate::km::accounting::rest::router())
        .layer(axum::middleware::from_fn_with_state(
            agent.audit.clone(),
            crate::audit::hooks::rest_changes,
        ))
}

/// An error answer of the KMA server: status and message (JSON `{"message": ...}`).
pub struct Problem(pub StatusCode, pub String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "message": self.1 }))).into_response()
    }
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    Problem(status, message.into()).into_response()
}

/// A JSON body, parsed only once the caller is known (400 when malformed).
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body)
        .map_err(|e| Problem(StatusCode::BAD_REQUEST, format!("malformed body: {e}")))
}

/// The link `id` if `identity` is its peer KM.
fn peer_link<'a>(
    agent: &'a Agent,
    identity: &PeerIdentity,
    id: &str,
) -> Result<&'a LinkConfig, Problem> {
    match agent.link_config(id) {
        Some(link) if identity.0.as_deref() == Some(link.peer_identity().as_str()) => Ok(link),
        Some(_) => {
            tracing::warn!(link = id, caller = ?identity.0, "quantum channel access by a KM that is not the link peer");
            Err(Problem(
                StatusCode::FORBIDDEN,
                "not the peer of this link".into(),
            ))
        }
        None => Err(Problem(StatusCode::NOT_FOUND, "unknown link".into())),
    }
}

pub(crate) fn operator(agent: &Agent, identity: &PeerIdentity) -> Result<(), Problem> {
    match identity.0.as_deref() {
        Some(name) if agent.config.operators.iter().any(|o| o == name) => Ok(()),
        _ => Err(Problem(
            StatusCode::FORBIDDEN,
            "operator certificate required".into(),
        )),
    }
}

/// A neighbour floods link-state advertisements (distributed control): only the KM at the
/// other end of one of this KM's QKD links inside the domain is heard.
async fn link_state_flood(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    body: Bytes,
) -> Response {
    let Some(control) = agent.local_control() else {
        return problem(StatusCode::NOT_FOUND, "this node runs no local controller");
    };
    let Some(sender) = identity.0.clone() else {
        return problem(StatusCode::UNAUTHORIZED, "a KM certificate is required");
    };
    let neighbour = agent
        .links()
        .map(|l| &l.config)
        .find(|c| c.peer_domain.is_none() && c.peer_identity() == sender)
        .map(|c| c.peer.clone());
    let Some(neighbour) = neighbour else {
        tracing::warn!(caller = %sender, "link-state flood from a KM that is no link peer");
        return problem(
            StatusCode::FORBIDDEN,
            "not the peer of any link of this node",
        );
    };
    let flood: crate::control::link_state::Flood = match parse(&body) {
        Ok(flood) => flood,
        Err(refusal) => return refusal.into_response(),
    };
    Json(control.receive(&neighbour, flood)).into_response()
}

/// The status of a failed relay or reservation.
fn relay_status(error: &RelayError) -> StatusCode {
    // a further hop short of key is told as such (503), not as a broken next hop (502):
    // every KM before it, and the origin's manager, must see exhaustion, not a route fault
    if error.is_exhaustion() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match error {
        RelayError::Rejected(_) => StatusCode::FORBIDDEN,
        RelayError::Peer { .. } | RelayError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A previous hop asks this KM to reserve its part of a relay's path.
async fn reserve_path(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    body: Bytes,
) -> Response {
    let Some(sender) = identity.0.clone() else {
        return problem(StatusCode::UNAUTHORIZED, "a KM certificate is required");
    };
    let request: ReserveRequest = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let span = tracing::info_span!("relay", relay_id = %request.relay_id, origin = %request.origin_km, dest = %request.dest_km, from = %sender, step = "reserve");
    match reserve::receive(&agent, &sender, request)
        .instrument(span)
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => {
            tracing::info!(%error, "path reservation refused");
            problem(relay_status(&error), error.to_string())
        }
    }
}

async fn relay_hop(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    body: Bytes,
) -> Response {
    let Some(sender) = identity.0.clone() else {
        return problem(StatusCode::UNAUTHORIZED, "a KM certificate is required");
    };
    let envelope: RelayEnvelope = match parse(&body) {
        Ok(envelope) => envelope,
        Err(refusal) => return refusal.into_response(),
    };
    match relay::receive::receive(&agent, &sender, envelope).await {
        Ok(ack) => Json(ack).into_response(),
        Err(error) => {
            tracing::warn!(%error, "relay hop failed");
            problem(relay_status(&error), error.to_string())
        }
    }
}

/// The IWN KM of a voided transfer (through the hops after it) takes its keys back.
async fn withdraw_keys(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    body: Bytes,
) -> Response {
    let Some(sender) = identity.0.clone() else {
        return problem(StatusCode::UNAUTHORIZED, "a KM certificate is required");
    };
    let request: withdraw::WithdrawRequest = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let span = tracing::info_span!("transfer", relay_id = %request.relay_id, dest = %request.dest_km, from = %sender, step = "withdraw");
    match withdraw::receive(&agent, &sender, request)
        .instrument(span)
        .await
    {
        Ok(answer) => Json(answer).into_response(),
        Err((status, message)) => problem(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            message,
        ),
    }
}

/// The transmitter checks that this end hears it (whatever the link's admin state).
async fn qchannel_heartbeat(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    Path(link): Path<String>,
) -> Response {
    match peer_link(&agent, &identity, &link) {
        Ok(link) if link.end == LinkEnd::Rx => {
            agent.heard_peer(&link.id);
            Json(json!({ "status": "ok" })).into_response()
        }
        Ok(_) => problem(StatusCode::CONFLICT, "this end is the link's transmitter"),
        Err(problem) => problem.into_response(),
    }
}

async fn qchannel_sync(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    Path(link): Path<String>,
    body: Bytes,
) -> Response {
    let link = match peer_link(&agent, &identity, &link) {
        Ok(link) if link.end == LinkEnd::Rx => link.id.clone(),
        Ok(_) => return problem(StatusCode::CONFLICT, "this end is the link's transmitter"),
        Err(problem) => return problem.into_response(),
    };
    let request: SyncRequest = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    if agent.link(&link).map(|l| l.condition().state) == Some(LinkState::Down) {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "link is down");
    }
    // one session at a time, newest wins: the epoch is checked and held while the store
    // resyncs (on the store's blocking thread), so a late sync cannot undo a newer session
    let task_agent = agent.clone();
    let result = agent
        .store
        .run(move |s| {
            let runtime = task_agent.link(&link).expect("a configured link");
            let mut epoch = runtime.epoch.lock().expect("epoch");
            if request.epoch < *epoch {
                return Ok(None);
            }
            *epoch = request.epoch;
            Ok(Some(emulated::receive_sync(s, &link, &request)))
        })
        .await;
    let result = match result {
        Ok(None) => {
            tracing::warn!("stale quantum channel sync refused");
            return problem(StatusCode::CONFLICT, "a newer session exists");
        }
        Ok(Some(synced)) => synced.map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match result {
        Ok(agreed_next_seq) => Json(SyncResponse { agreed_next_seq }).into_response(),
        Err(error) => problem(StatusCode::INTERNAL_SERVER_ERROR, error),
    }
}

async fn qchannel_frame(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    Path(link): Path<String>,
    body: Bytes,
) -> Response {
    // the caller is checked before the body is parsed
    let link = match peer_link(&agent, &identity, &link) {
        Ok(link) if link.end == LinkEnd::Rx => link.id.clone(),
        Ok(_) => return problem(StatusCode::CONFLICT, "this end is the link's transmitter"),
        Err(problem) => return problem.into_response(),
    };
    let frame: Frame = match parse(&body) {
        Ok(frame) => frame,
        Err(refusal) => return refusal.into_response(),
    };
    let state = agent.link(&link).map(|l| l.condition().state);
    if state == Some(LinkState::Down) && frame.blocks.is_empty() {
        // confirmations of blocks generated before the fault still count
    } else if state != Some(LinkState::Up) && !frame.blocks.is_empty() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "link is not up at the receiver",
        );
    }
    let task_agent = agent.clone();
    match agent
        .store
        .run(move |s| {
            let runtime = task_agent.link(&link).expect("a configured link");
            let epoch = runtime.epoch.lock().expect("epoch");
            if frame.epoch != *epoch {
                return Ok(Err(ReceiveError::OldSession));
            }
            Ok(emulated::receive_frame(s, &link, &frame))
        })
        .await
    {
        Ok(Ok(next)) => Json(json!({ "next_seq": next })).into_response(),
        Ok(Err(ReceiveError::Malformed)) => problem(StatusCode::BAD_REQUEST, "malformed frame"),
        Ok(Err(ReceiveError::OldSession)) => {
            problem(StatusCode::CONFLICT, "frame of an old session")
        }
        Ok(Err(ReceiveError::Store(error))) => problem(StatusCode::CONFLICT, error.to_string()),
        Err(error) => problem(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

async fn health(State(agent): State<Arc<Agent>>) -> Json<serde_json::Value> {
    Json(json!({ "node": agent.config.node, "domain": agent.config.domain, "ready": true }))
}

/// State of one link as reported to operators.
#[derive(Debug, Serialize, Deserialize)]
pub struct LinkReport {
    pub id: String,
    pub peer: String,
    pub end: LinkEnd,
    #[serde(flatten)]
    pub condition: LinkCondition,
    /// Usable blocks this end may allocate.
    pub own_blocks: usize,
    /// Usable blocks the peer may allocate (held here for its references).
    pub peer_blocks: usize,
    /// Blocks received and not yet confirmed.
    pub pending_blocks: usize,
    /// Blocks of this link this end consumed (relay, key supply) since the agent started.
    #[serde(default)]
    pub consumed_blocks: u64,
}

/// A distributed QKDN's gateway node as operators see it: the crossings placed on it and,
/// on the domain's speaker, the interworking sessions it agreed.
async fn interworking_view(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
) -> Response {
    if let Err(problem) = operator(&agent, &identity) {
        return problem.into_response();
    }
    let Some(gateway) = agent.gateway() else {
        return problem(
            StatusCode::NOT_FOUND,
            "this node is no gateway node of a distributed QKDN",
        );
    };
    let crossings: Vec<serde_json::Value> = gateway
        .placed()
        .into_iter()
        .map(|(session, entry)| json!({ "session": session, "entry": entry }))
        .collect();
    Json(json!({
        "speaker": gateway.speaker.is_some(),
        "sessions": gateway.speaker.as_ref().map(|s| s.sessions()).unwrap_or_default(),
        "crossings": crossings,
    }))
    .into_response()
}

async fn links(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
) -> Response {
    if let Err(problem) = operator(&agent, &identity) {
        return problem.into_response();
    }
    let snapshot: Vec<(LinkConfig, LinkCondition, u64)> = agent
        .links()
        .map(|l| {
            let consumed = l.consumed_blocks.load(std::sync::atomic::Ordering::Relaxed);
            (l.config.clone(), l.condition(), consumed)
        })
        .collect();
    let result = agent
        .store
        .run(move |s| {
            let mut reports = Vec::new();
            for (config, condition, consumed_blocks) in snapshot {
                let own = config.end.owner();
                reports.push(LinkReport {
                    own_blocks: s.available(&config.id, own)?,
                    peer_blocks: s.available(&config.id, 1 - own)?,
                    pending_blocks: s.pending(&config.id)?,
                    consumed_blocks,
                    id: config.id,
                    peer: config.peer,
                    end: config.end,
                    condition,
                });
            }
            reports.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(reports)
        })
        .await;
    match result {
        Ok(reports) => Json(reports).into_response(),
        Err(error) => problem(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_further_on_is_told_as_exhaustion_not_as_a_broken_hop() {
        let short = RelayError::Peer {
            node: "ga1".into(),
            status: 503,
            message:
                r#"{"message":"not enough key material: link qx1: 61 blocks wanted, 26 available"}"#
                    .into(),
        };
        assert_eq!(relay_status(&short), StatusCode::SERVICE_UNAVAILABLE);
        // the KM before, reading this KM's answer, sees exhaustion too
        let relayed = RelayError::Peer {
            node: "a2".into(),
            status: relay_status(&short).as_u16(),
            message: format!("next hop ga1 refused the relay (HTTP 503): {short}"),
        };
        assert!(relayed.is_exhaustion());
        let broken = RelayError::Peer {
            node: "ga1".into(),
            status: 503,
            message: "shutting down".into(),
        };
        assert_eq!(relay_status(&broken), StatusCode::BAD_GATEWAY);
        assert_eq!(
            relay_status(&RelayError::Backlog("pair full".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
