//! The Kxi-1 and Kxi-2 routes a GWN serves to its peer GWNs.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use super::messages::{
    AckExtension, AckStatus, ExtKeysAck, ExtKeysRequest, RelayStatus, VoidRequest, AUTH_HEADER,
};
use crate::km::agent::Agent;
use crate::km::kma::relay::error::RelayError;
use crate::km::kma::relay::messages::RelayEnvelope;
use crate::km::kma::relay::receive::{act, verify};
use crate::tls::PeerIdentity;

/// The Kxi-1 and Kxi-2 routes of a GWN's KMA server.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/kmapi/versions", get(versions))
        .route("/kmapi/v1/ext_keys", post(ext_keys))
        .route("/kmapi/v1/ext_keys/ack", post(ext_keys_ack))
        .route("/kmapi/v1/ext_keys/void", post(ext_keys_void))
        .route("/kxi2/v1/relays/{relay_id}", get(relay_status))
        .with_state(agent)
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "message": message.into() }))).into_response()
}

/// The caller if it is the peer GWN of some Qx link of this node.
fn qx_peer(agent: &Agent, identity: &PeerIdentity) -> Result<String, Box<Response>> {
    let Some(caller) = identity.0.clone() else {
        return Err(Box::new(problem(
            StatusCode::UNAUTHORIZED,
            "a KM certificate is required",
        )));
    };
    if agent
        .links()
        .any(|l| l.config.peer_domain.is_some() && l.config.peer_identity() == caller)
    {
        Ok(caller)
    } else {
        tracing::warn!(%caller, "Kxi request from a party that is no peer GWN");
        Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            "not a peer gateway node",
        )))
    }
}

async fn versions() -> Json<serde_json::Value> {
    Json(json!({ "versions": [{ "version": "1", "url": "/kmapi/v1" }] }))
}

fn parse_auth(headers: &HeaderMap) -> Option<(u64, String)> {
    let value = headers.get(AUTH_HEADER)?.to_str().ok()?;
    let mut block = None;
    let mut tag = None;
    for part in value.split(',') {
        let (name, v) = part.trim().split_once('=')?;
        match name {
            "block" => block = v.parse().ok(),
            // the tag is Base64 and may end with '='
            "tag" => tag = Some(part.trim()["tag=".len()..].to_owned()),
            _ => return None,
        }
    }
    Some((block?, tag?))
}

async fn ext_keys(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sender = match qx_peer(&agent, &identity) {
        Ok(sender) => sender,
        Err(response) => return *response,
    };
    let Some((mac_seq, tag)) = parse_auth(&headers) else {
        tracing::warn!(%sender, "ext_keys without authentication");
        return problem(
            StatusCode::UNAUTHORIZED,
            "Kxi-Authentication header missing or malformed",
        );
    };
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return problem(StatusCode::BAD_REQUEST, "the body is not UTF-8");
    };
    let request: ExtKeysRequest = match serde_json::from_str(&text) {
        Ok(request) => request,
        Err(error) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("malformed ext_keys request: {error}"),
            )
        }
    };
    let relay_id = request.extension.relay_id;
    let span = tracing::info_span!("relay", %relay_id, origin = %request.extension.origin_km, dest = %request.extension.dest_km, from = %sender, via = "kxi-1");
    let relay_body = request.to_relay_body();
    let envelope = RelayEnvelope {
        body: text,
        mac_seq,
        tag,
    };
    let verified = match verify(&agent, &sender, &envelope, &relay_body, true)
        .instrument(span.clone())
        .await
    {
        Ok(verified) => verified,
        Err(RelayError::Rejected(message)) if message.contains("authentication") => {
            return problem(StatusCode::UNAUTHORIZED, message)
        }
        Err(RelayError::Rejected(message)) => return problem(StatusCode::BAD_REQUEST, message),
        Err(error) => return problem(StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
    };
    // the acknowledgement goes back to the peer GWN, over the link's own client
    let callback = agent.client_for(verified.link()).clone();
    if !request
        .ack_callback_url
        .starts_with(&format!("{}/", verified.link().peer_kma))
    {
        tracing::warn!(parent: &span, callback = %request.ack_callback_url, "ack callback outside the peer GWN");
        return problem(
            StatusCode::BAD_REQUEST,
            "ack_callback_url must be on the peer GWN's KMA",
        );
    }
    let key_ids: Vec<Uuid> = request.key_ids.iter().map(|k| k.key_id).collect();
    agent.kxi.remember(relay_id, &sender, key_ids.clone());
    let task_agent = agent.clone();
    tokio::spawn(
        async move {
            let agent = task_agent;
            let outcome = act(&agent, &sender, verified, relay_body).await;
            let (status, delivered, hops, message) = match &outcome {
                Ok(ack) => (RelayStatus::Relayed, ack.delivered, ack.hops, None),
                Err(error) => (RelayStatus::Failed, 0, 0, Some(error.to_string())),
            };
            let exhausted = outcome.as_ref().is_err_and(RelayError::is_exhaustion);
            if !agent.kxi.settle(relay_id, status) {
                tracing::warn!("relay voided while in progress");
            }
            if let Some(message) = &message {
                tracing::warn!(%message, "interworking relay failed");
                agent.emit(crate::km::events::Event::RelayFailure {
                    relay_id,
                    destination: request.extension.dest_km.clone(),
                    reason: message.clone(),
                    exhausted,
                });
            }
            let ack = ExtKeysAck {
                key_ids,
                ack_status: if status == RelayStatus::Relayed {
                    AckStatus::Relayed
                } else {
                    AckStatus::Failed
                },
                message,
                extension: AckExtension {
                    relay_id,
                    link: request.extension.link.clone(),
                    delivered,
                    hops,
                },
            };
            for attempt in 0..3u64 {
                match callback
                    .post(&request.ack_callback_url)
                    .json(&ack)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => tracing::warn!(status = %r.status(), "ack callback refused"),
                    Err(error) => tracing::warn!(%error, "ack callback failed"),
                }
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
        }
        .instrument(span),
    );
    (
        StatusCode::ACCEPTED,
        Json(json!({ "relay_id": relay_id, "status": "accepted" })),
    )
        .into_response()
}

async fn ext_keys_ack(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    body: Bytes,
) -> Response {
    let sender = match qx_peer(&agent, &identity) {
        Ok(sender) => sender,
        Err(response) => return *response,
    };
    // parsed once the caller is known
    let ack: ExtKeysAck = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("malformed body: {e}")),
    };
    if agent
        .link_config(&ack.extension.link)
        .is_none_or(|l| l.peer_identity() != sender)
    {
        tracing::warn!(%sender, link = %ack.extension.link, "acknowledgement for a link the sender is not on");
        return problem(StatusCode::FORBIDDEN, "not the peer of that link");
    }
    let key = (ack.extension.relay_id, ack.extension.link.clone());
    let waiting = agent.kxi.awaiting.lock().expect("kxi").remove(&key);
    match waiting {
        Some(tx) => {
            let _ = tx.send(ack);
            Json(json!({ "status": "ok" })).into_response()
        }
        None => problem(
            StatusCode::NOT_FOUND,
            "no ext_keys request awaits this acknowledgement",
        ),
    }
}

async fn ext_keys_void(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    body: Bytes,
) -> Response {
    let sender = match qx_peer(&agent, &identity) {
        Ok(sender) => sender,
        Err(response) => return *response,
    };
    // parsed once the caller is known
    let request: VoidRequest = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("malformed body: {e}")),
    };
    if request.key_ids.is_empty() && !request.all_confirmation {
        return problem(
            StatusCode::BAD_REQUEST,
            "voiding every key needs all_confirmation=true",
        );
    }
    let mut voided = Vec::new();
    let mut already = Vec::new();
    {
        let mut guard = agent.kxi.received.lock().expect("kxi");
        for received in guard.0.values_mut().filter(|r| r.sender == sender) {
            let named = request.all_confirmation
                || received.key_ids.iter().any(|k| request.key_ids.contains(k));
            if !named {
                continue;
            }
            if received.status == RelayStatus::InProgress {
                received.status = RelayStatus::Voided;
                voided.extend(received.key_ids.iter().copied());
            } else {
                already.extend(received.key_ids.iter().copied());
            }
        }
    }
    tracing::info!(
        voided = voided.len(),
        settled = already.len(),
        "ext_keys void"
    );
    Json(json!({ "voided": voided, "already_settled": already })).into_response()
}

async fn relay_status(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    Path(relay_id): Path<Uuid>,
) -> Response {
    let sender = match qx_peer(&agent, &identity) {
        Ok(sender) => sender,
        Err(response) => return *response,
    };
    let status = agent.kxi.status(relay_id, &sender);
    Json(json!({ "relay_id": relay_id, "status": status })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_header_is_parsed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTH_HEADER,
            "block=42, tag=q83vEjRWeJASNFZ4kBI0Vg==".parse().unwrap(),
        );
        assert_eq!(
            parse_auth(&headers),
            Some((42, "q83vEjRWeJASNFZ4kBI0Vg==".to_owned()))
        );
        headers.insert(AUTH_HEADER, "block=x, tag=abc".parse().unwrap());
        assert_eq!(parse_auth(&headers), None);
        headers.insert(AUTH_HEADER, "tag=abc".parse().unwrap());
        assert_eq!(parse_auth(&headers), None);
    }
}
