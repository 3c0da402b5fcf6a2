//! Kxi-1 toward the peer GWN: a relay sent as an `ext_keys` request, its acknowledgement
//! awaited, and settled over Kxi-2 when none comes.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::sync::oneshot;

use super::messages::{
    AckStatus, ExtKey, ExtKeysRequest, RelayExtension, RelayStatus, VoidRequest, AUTH_HEADER,
};
use super::state::Awaiting;
use crate::km::agent::Agent;
use crate::km::config::LinkConfig;
use crate::km::kma::otp;
use crate::km::kma::relay::error::RelayError;
use crate::km::kma::relay::messages::{b64, RelayAck, RelayBody};
use crate::km::store::Block;

/// How long a GWN waits for the peer's acknowledgement before asking over Kxi-2 (with the
/// Kxi-2 query and the void, well within the 10 s the previous hop waits for this one).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of the Kxi-2 query and of a void.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

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
