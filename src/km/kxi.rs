//! The interworking reference points of a gateway node's KM (Y.3818 6.1):
//! - **Kxi-1** (KMA-KMA, across a Qx link): interworking key relay in the shape of ETSI GS QKD
//!   020, the API between key management systems of different providers: `POST
//!   /kmapi/v1/ext_keys` (answered `202`, then an acknowledgement callback `POST
//!   /kmapi/v1/ext_keys/ack` with `ack_status`), `POST /kmapi/v1/ext_keys/void` and `GET
//!   /kmapi/versions`. Keys travel one-time-padded with blocks of the Qx link and the request
//!   body is authenticated with a one-time MAC keyed by one more block (header
//!   `Kxi-Authentication: block=<n>, tag=<base64>`), on top of mutual TLS between the two
//!   domains' CAs.
//! - **Kxi-2** (KSA-KSA): key synchronization: a GWN asks its peer what became of an
//!   interworking relay (`GET /kxi2/v1/relays/{relay_id}`) when an acknowledgement does not
//!   come, so both domains agree on whether the keys exist before the master SAE gets them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use super::agent::Agent;
use super::config::LinkConfig;
use super::otp;
use super::relay::{self, b64, RelayAck, RelayBody, RelayEnvelope, RelayError, RelayedKey};
use super::store::Block;
use crate::tls::PeerIdentity;

/// The header carrying the one-time MAC of a Kxi-1 request body.
pub const AUTH_HEADER: &str = "kxi-authentication";
/// How long a GWN waits for the peer's acknowledgement before asking over Kxi-2 (with the
/// Kxi-2 query and the void, well within the 10 s the previous hop waits for this one).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of the Kxi-2 query and of a void.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most interworking relays whose outcome a GWN remembers for Kxi-2.
const REMEMBERED: usize = 10_000;

/// `POST /kmapi/v1/ext_keys`: keys pushed to the peer KMS for target SAEs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtKeysRequest {
    pub initiator_sae_id: String,
    pub target_sae_ids: Vec<String>,
    /// The keys, protected on the link.
    pub key_ids: Vec<ExtKey>,
    /// Key size in bits.
    pub key_size: u32,
    /// Where the peer reports the outcome (`POST`, an [`ExtKeysAck`]).
    pub ack_callback_url: String,
    pub extension: RelayExtension,
}

/// One key of an `ext_keys` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtKey {
    #[serde(rename = "key_ID")]
    pub key_id: Uuid,
    /// Numbers of the sender's Qx link blocks padding this key.
    pub pad_blocks: Vec<u64>,
    /// The key XOR the pad (Base64); absent when the pad blocks are the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What the relay across the peer domain needs beyond ETSI GS QKD 020's fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayExtension {
    pub relay_version: u32,
    pub relay_id: Uuid,
    /// The Qx link.
    pub link: String,
    pub origin_km: String,
    pub dest_km: String,
    pub hops_left: u8,
}

/// Outcome of an `ext_keys` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckStatus {
    #[serde(rename = "relayed")]
    Relayed,
    #[serde(rename = "voided")]
    Voided,
    #[serde(rename = "failed")]
    Failed,
    #[serde(rename = "key not present")]
    KeyNotPresent,
}

/// `POST /kmapi/v1/ext_keys/ack`: the callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtKeysAck {
    pub key_ids: Vec<Uuid>,
    pub ack_status: AckStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub extension: AckExtension,
}

/// The relay's side of an acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckExtension {
    pub relay_id: Uuid,
    pub link: String,
    pub delivered: usize,
    pub hops: u32,
}

/// `POST /kmapi/v1/ext_keys/void`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    #[serde(default)]
    pub key_ids: Vec<Uuid>,
    #[serde(default)]
    pub all_confirmation: bool,
}

/// Where an interworking relay received over Kxi-1 stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayStatus {
    InProgress,
    Relayed,
    Failed,
    Voided,
    Unknown,
}

struct Received {
    sender: String,
    key_ids: Vec<Uuid>,
    status: RelayStatus,
}

/// A GWN's Kxi state: acknowledgements awaited and relays received.
#[derive(Default)]
pub struct KxiState {
    awaiting: Mutex<HashMap<(Uuid, String), oneshot::Sender<ExtKeysAck>>>,
    received: Mutex<(HashMap<Uuid, Received>, VecDeque<Uuid>)>,
}

impl KxiState {
    fn remember(&self, relay_id: Uuid, sender: &str, key_ids: Vec<Uuid>) {
        let mut guard = self.received.lock().expect("kxi");
        let (map, order) = &mut *guard;
        map.insert(
            relay_id,
            Received {
                sender: sender.to_owned(),
                key_ids,
                status: RelayStatus::InProgress,
            },
        );
        order.push_back(relay_id);
        while order.len() > REMEMBERED {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// Moves a relay from in-progress to `status`; returns false if it was voided meanwhile.
    fn settle(&self, relay_id: Uuid, status: RelayStatus) -> bool {
        let mut guard = self.received.lock().expect("kxi");
        match guard.0.get_mut(&relay_id) {
            Some(r) if r.status == RelayStatus::InProgress => {
                r.status = status;
                true
            }
            _ => false,
        }
    }

    fn status(&self, relay_id: Uuid, sender: &str) -> RelayStatus {
        let guard = self.received.lock().expect("kxi");
        match guard.0.get(&relay_id) {
            Some(r) if r.sender == sender => r.status,
            _ => RelayStatus::Unknown,
        }
    }
}

/// Removes an awaited acknowledgement's entry when dropped.
struct Awaiting<'a> {
    kxi: &'a KxiState,
    key: (Uuid, String),
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        self.kxi.awaiting.lock().expect("kxi").remove(&self.key);
    }
}

impl ExtKeysRequest {
    fn to_relay_body(&self) -> RelayBody {
        let e = &self.extension;
        RelayBody {
            version: e.relay_version,
            relay_id: e.relay_id,
            link: e.link.clone(),
            origin_km: e.origin_km.clone(),
            dest_km: e.dest_km.clone(),
            master_sae: self.initiator_sae_id.clone(),
            slave_saes: self.target_sae_ids.clone(),
            key_size: self.key_size,
            hops_left: e.hops_left,
            keys: self
                .key_ids
                .iter()
                .map(|k| RelayedKey {
                    key_id: k.key_id,
                    pad: k.pad_blocks.clone(),
                    ciphertext: k.key.clone(),
                })
                .collect(),
        }
    }
}

fn url_of(addr: std::net::SocketAddr) -> String {
    format!("https://{addr}")
}

/// Relays `body` over Qx link `link` to the peer GWN as an `ext_keys` request and waits
/// for its acknowledgement (asking over Kxi-2 when none comes).
pub async fn send_ext_keys(
    agent: &Arc<Agent>,
    link: &LinkConfig,
    body: &RelayBody,
    mac_seq: u64,
    mac_key: &Block,
) -> Result<RelayAck, RelayError> {
    let request = ExtKeysRequest {
        initiator_sae_id: body.master_sae.clone(),
        target_sae_ids: body.slave_saes.clone(),
        key_ids: body
            .keys
            .iter()
            .map(|k| ExtKey {
                key_id: k.key_id,
                pad_blocks: k.pad.clone(),
                key: k.ciphertext.clone(),
            })
            .collect(),
        key_size: body.key_size,
        ack_callback_url: format!("{}/kmapi/v1/ext_keys/ack", url_of(agent.config.kma_listen)),
        extension: RelayExtension {
            relay_version: body.version,
            relay_id: body.relay_id,
            link: link.id.clone(),
            origin_km: body.origin_km.clone(),
            dest_km: body.dest_km.clone(),
            hops_left: body.hops_left,
        },
    };
    let bytes = serde_json::to_vec(&request).map_err(|e| RelayError::Rejected(e.to_string()))?;
    let tag = b64().encode(otp::tag(mac_key, &bytes));
    let key = (body.relay_id, link.id.clone());
    let (tx, rx) = oneshot::channel();
    agent
        .kxi
        .awaiting
        .lock()
        .expect("kxi")
        .insert(key.clone(), tx);
    // the entry goes however this function ends, also when the caller gives up on it
    let _awaiting = Awaiting {
        kxi: &agent.kxi,
        key,
    };
    let peer = |status: u16, message: String| RelayError::Peer {
        node: link.peer_identity(),
        status,
        message,
    };
    let sent = agent
        .client_for(link)
        .post(format!("{}/kmapi/v1/ext_keys", link.peer_kma))
        .header(AUTH_HEADER, format!("block={mac_seq}, tag={tag}"))
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(source) => {
            return Err(RelayError::Unreachable {
                node: link.peer_identity(),
                source,
            });
        }
    };
    if response.status() != reqwest::StatusCode::ACCEPTED {
        let status = response.status().as_u16();
        return Err(peer(status, response.text().await.unwrap_or_default()));
    }
    tracing::info!(link = %link.id, "ext_keys accepted by the peer GWN; awaiting its acknowledgement");
    let ack = match tokio::time::timeout(ACK_TIMEOUT, rx).await {
        Ok(Ok(ack)) => ack,
        _ => {
            return settle_without_ack(agent, link, body).await;
        }
    };
    match ack.ack_status {
        AckStatus::Relayed if ack.extension.delivered == body.keys.len() => Ok(RelayAck {
            relay_id: body.relay_id,
            delivered: ack.extension.delivered,
            hops: ack.extension.hops.saturating_add(1),
        }),
        status => Err(peer(
            200,
            format!("ext_keys {status:?}: {}", ack.message.unwrap_or_default()),
        )),
    }
}

/// No acknowledgement came: ask the peer over Kxi-2 what became of the relay, and void it
/// unless it was relayed.
async fn settle_without_ack(
    agent: &Arc<Agent>,
    link: &LinkConfig,
    body: &RelayBody,
) -> Result<RelayAck, RelayError> {
    let status = async {
        let response = agent
            .client_for(link)
            .get(format!(
                "{}/kxi2/v1/relays/{}",
                link.peer_kma, body.relay_id
            ))
            .timeout(SETTLE_TIMEOUT)
            .send()
            .await
            .ok()?;
        let value: serde_json::Value = response.json().await.ok()?;
        serde_json::from_value::<RelayStatus>(value.get("status")?.clone()).ok()
    }
    .await;
    tracing::warn!(?status, "no ext_keys acknowledgement; Kxi-2 status asked");
    if status == Some(RelayStatus::Relayed) {
        return Ok(RelayAck {
            relay_id: body.relay_id,
            delivered: body.keys.len(),
            hops: 1,
        });
    }
    let void = VoidRequest {
        key_ids: body.keys.iter().map(|k| k.key_id).collect(),
        all_confirmation: false,
    };
    let _ = agent
        .client_for(link)
        .post(format!("{}/kmapi/v1/ext_keys/void", link.peer_kma))
        .timeout(SETTLE_TIMEOUT)
        .json(&void)
        .send()
        .await;
    Err(RelayError::Peer {
        node: link.peer_identity(),
        status: 504,
        message: format!(
            "no acknowledgement of the ext_keys request (peer status {status:?}); voided"
        ),
    })
}

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
    let verified = match relay::verify(&agent, &sender, &envelope, &relay_body, true)
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
            let outcome = relay::act(&agent, &sender, verified, relay_body).await;
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
                agent.emit(super::events::Event::RelayFailure {
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

    #[test]
    fn ack_status_uses_the_020_names() {
        assert_eq!(
            serde_json::to_string(&AckStatus::KeyNotPresent).unwrap(),
            "\"key not present\""
        );
        let ack: ExtKeysAck = serde_json::from_value(json!({
            "key_ids": [], "ack_status": "relayed",
            "extension": {"relay_id": Uuid::nil(), "link": "qx1", "delivered": 0, "hops": 1}
        }))
        .unwrap();
        assert_eq!(ack.ack_status, AckStatus::Relayed);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let bad = json!({"initiator_sae_id": "a", "target_sae_ids": [], "key_ids": [], "key_size": 256,
            "ack_callback_url": "x", "extension": {"relay_version": 1, "relay_id": Uuid::nil(), "link": "l",
            "origin_km": "o", "dest_km": "d", "hops_left": 3}, "surprise": true});
        assert!(serde_json::from_value::<ExtKeysRequest>(bad).is_err());
    }
}
