//! Kxi-1 toward the peer GWN: a relay sent as an `ext_key_container`, its acknowledgement
//! awaited, and settled over Kxi-2 when none comes. The exchange itself (post, await the
//! `ack_container`, ask the status, void) also serves Kxi-1' ([`super::transfer`]).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::messages::{
    extension_of, member, AckContainer, AckExtension, AckStatus, ExtKey, ExtKeyContainer,
    RelayExtension, RelayStatus, VoidContainer, VoidExtension, AUTH_HEADER, EXT_ACK, EXT_PAD,
    EXT_RELAY, EXT_VOID,
};
use super::state::{Awaited, Awaiting};
use crate::km::agent::Agent;
use crate::km::config::LinkConfig;
use crate::km::kma::otp;
use crate::km::kma::relay::error::RelayError;
use crate::km::kma::relay::messages::{b64, RelayAck, RelayBody};
use crate::km::store::Block;

/// How long a KM waits for the peer's acknowledgement before asking over Kxi-2 (with the
/// Kxi-2 query and the void, well within the 10 s the previous hop waits for this one).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of the Kxi-2 query and of a void.
pub(super) const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// This KM's acknowledgement callback URL.
pub(super) fn callback_url(agent: &Agent) -> String {
    format!("https://{}/kmapi/v1/ext_keys/ack", agent.config.kma_listen)
}

/// The `ext_key_container` of one relay hop over a Qx link: `value` is the key XOR its pad
/// (all zero bytes when the pad is the key), the pad's block numbers in the key's extension.
pub(crate) fn qx_container(
    callback: String,
    link: &LinkConfig,
    body: &RelayBody,
) -> ExtKeyContainer {
    let zeros = b64().encode(vec![0u8; body.key_size as usize / 8]);
    ExtKeyContainer {
        keys: body
            .keys
            .iter()
            .map(|k| ExtKey {
                key_id: k.key_id,
                value: k.ciphertext.clone().unwrap_or_else(|| zeros.clone()),
                extension: Some(extension_of(EXT_PAD, &k.pad)),
            })
            .collect(),
        initiator_sae_id: body.master_sae.clone(),
        target_sae_ids: body.slave_saes.clone(),
        ack_callback_url: Some(callback),
        extension_mandatory: Some(extension_of(EXT_RELAY, relay_extension(link, body))),
        extension_optional: body.extension_optional.clone(),
    }
}

pub(super) fn relay_extension(link: &LinkConfig, body: &RelayBody) -> RelayExtension {
    RelayExtension {
        version: body.version,
        relay_id: body.relay_id,
        link: link.id.clone(),
        origin_km: body.origin_km.clone(),
        dest_km: body.dest_km.clone(),
        hops_left: body.hops_left,
        key_size: body.key_size,
    }
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
    let container = qx_container(callback_url(agent), link, body);
    let bytes = serde_json::to_vec(&container).map_err(|e| RelayError::Rejected(e.to_string()))?;
    let tag = b64().encode(otp::tag(mac_key, &bytes));
    let key_ids: Vec<Uuid> = body.keys.iter().map(|k| k.key_id).collect();
    let auth = format!("block={mac_seq}, tag={tag}");
    match exchange(agent, link, body.relay_id, &key_ids, bytes, Some(auth)).await? {
        Some(ack) => accepted(link, body.relay_id, &key_ids, ack),
        None => settle_without_ack(agent, link, body, &key_ids).await,
    }
}

/// Checks an acknowledgement of the keys `key_ids` of relay `relay_id`.
pub(super) fn accepted(
    link: &LinkConfig,
    relay_id: Uuid,
    key_ids: &[Uuid],
    ack: AckContainer,
) -> Result<RelayAck, RelayError> {
    let extension: Option<AckExtension> =
        member(ack.extension.as_ref(), EXT_ACK).unwrap_or_default();
    let mut acked: Vec<Uuid> = ack.key_id_container.iter().map(|k| k.key_id).collect();
    acked.sort_unstable();
    let mut ours = key_ids.to_vec();
    ours.sort_unstable();
    let complete = acked == ours
        && extension
            .as_ref()
            .is_none_or(|e| e.delivered == key_ids.len());
    match ack.ack_status {
        AckStatus::Relayed if complete => Ok(RelayAck {
            relay_id,
            delivered: key_ids.len(),
            hops: extension.map_or(1, |e| e.hops).saturating_add(1),
        }),
        status => Err(RelayError::Peer {
            node: link.peer_identity(),
            status: 200,
            message: format!(
                "ext_keys {status:?}{}: {}",
                if complete { "" } else { " (not every key)" },
                ack.message.unwrap_or_default()
            ),
        }),
    }
}

/// Posts an `ext_key_container` (`bytes`) over `link` and waits for its acknowledgement:
/// `None` when none came in time.
pub(super) async fn exchange(
    agent: &Arc<Agent>,
    link: &LinkConfig,
    relay_id: Uuid,
    key_ids: &[Uuid],
    bytes: Vec<u8>,
    auth: Option<String>,
) -> Result<Option<AckContainer>, RelayError> {
    let key = (relay_id, link.id.clone());
    let (tx, rx) = oneshot::channel();
    agent.kxi.awaiting.lock().expect("kxi").insert(
        key.clone(),
        Awaited {
            peer: link.peer_identity(),
            key_ids: key_ids.to_vec(),
            tx,
        },
    );
    // the entry goes however this function ends, also when the caller gives up on it
    let _awaiting = Awaiting {
        kxi: &agent.kxi,
        key,
    };
    let mut request = agent
        .client_for(link)
        .post(format!("{}/kmapi/v1/ext_keys", link.peer_kma))
        .header("content-type", "application/json; charset=UTF-8")
        .body(bytes);
    if let Some(auth) = auth {
        request = request.header(AUTH_HEADER, auth);
    }
    let response = request
        .send()
        .await
        .map_err(|source| RelayError::Unreachable {
            node: link.peer_identity(),
            source,
        })?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        let status = response.status().as_u16();
        return Err(RelayError::Peer {
            node: link.peer_identity(),
            status,
            message: response.text().await.unwrap_or_default(),
        });
    }
    tracing::info!(link = %link.id, "ext_keys accepted by the peer; awaiting its acknowledgement");
    Ok(tokio::time::timeout(ACK_TIMEOUT, rx)
        .await
        .ok()
        .and_then(Result::ok))
}

/// What the peer says of relay `relay_id` over Kxi-2 / Kxi-2' (`None`: no answer), with
/// the key ids it holds for it. The read is signed by this KM and the answer, which stands
/// for the acknowledgement that did not come, must be signed by the peer: both are kept as
/// evidence.
pub(super) async fn ask_status(
    agent: &Agent,
    link: &LinkConfig,
    relay_id: Uuid,
) -> Option<(RelayStatus, Vec<Uuid>)> {
    let client = agent.client_for(link);
    let request = client
        .get(format!("{}/kxi2/v1/relays/{relay_id}", link.peer_kma))
        .timeout(SETTLE_TIMEOUT)
        .build()
        .ok()?;
    let answer = match super::ext_keys::ack_signing(agent, link)
        .send(client, request, &format!("relay {relay_id}"))
        .await
    {
        Ok(answer) if answer.status == 200 => answer,
        Ok(answer) => {
            tracing::warn!(link = %link.id, status = answer.status, "relay status refused");
            return None;
        }
        Err(error) => {
            tracing::warn!(link = %link.id, %error, "relay status not answered");
            return None;
        }
    };
    let value: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    let status = serde_json::from_value(value.get("status")?.clone()).ok()?;
    let key_ids = value
        .get("key_ids")
        .and_then(|k| serde_json::from_value(k.clone()).ok())
        .unwrap_or_default();
    Some((status, key_ids))
}

/// The `void_container` of the keys of a relay.
pub(super) fn void_container(
    link: &LinkConfig,
    relay_id: Uuid,
    key_ids: &[Uuid],
    master: &str,
    slaves: &[String],
) -> VoidContainer {
    VoidContainer {
        key_ids: key_ids.to_vec(),
        initiator_sae_id: master.to_owned(),
        target_sae_ids: slaves.to_vec(),
        ack_callback_url: None,
        extension: Some(extension_of(
            EXT_VOID,
            VoidExtension {
                relay_id,
                link: link.id.clone(),
            },
        )),
        all_confirmation: None,
    }
}

/// Voids keys at the peer (synchronous mode); the status it answers, `None` if it did not.
/// The void is signed by this KM and its answer (the peer's acknowledgement, given inline)
/// must be signed by the peer: both are kept as evidence.
pub(super) async fn void(
    agent: &Agent,
    link: &LinkConfig,
    container: &VoidContainer,
) -> Option<AckStatus> {
    let client = agent.client_for(link);
    let request = client
        .post(format!("{}/kmapi/v1/ext_keys/void", link.peer_kma))
        .timeout(SETTLE_TIMEOUT)
        .json(container)
        .build()
        .ok()?;
    let agreement = super::ext_keys::void_agreement(request.body()?.as_bytes()?);
    let answer = match super::ext_keys::ack_signing(agent, link)
        .send(client, request, &agreement)
        .await
    {
        Ok(answer) => answer,
        Err(error) => {
            tracing::warn!(link = %link.id, %error, "void not answered");
            return None;
        }
    };
    if answer.status != 200 {
        return None;
    }
    let acks: Vec<AckContainer> = serde_json::from_slice(&answer.body).ok()?;
    // the worst answer stands for the whole void
    let statuses: Vec<AckStatus> = acks.iter().map(|a| a.ack_status).collect();
    if statuses.contains(&AckStatus::FailedToVoid) {
        Some(AckStatus::FailedToVoid)
    } else if statuses.is_empty() || statuses.iter().all(|s| *s == AckStatus::KeyNotPresent) {
        Some(AckStatus::KeyNotPresent)
    } else {
        Some(AckStatus::Voided)
    }
}

/// No acknowledgement came: ask the peer over Kxi-2 what became of the relay, and void it
/// unless it was relayed.
async fn settle_without_ack(
    agent: &Arc<Agent>,
    link: &LinkConfig,
    body: &RelayBody,
    key_ids: &[Uuid],
) -> Result<RelayAck, RelayError> {
    let status = ask_status(agent, link, body.relay_id).await;
    tracing::warn!(?status, "no ext_keys acknowledgement; Kxi-2 status asked");
    if matches!(&status, Some((RelayStatus::Relayed, _))) {
        return Ok(RelayAck {
            relay_id: body.relay_id,
            delivered: key_ids.len(),
            hops: 1,
        });
    }
    let container = void_container(
        link,
        body.relay_id,
        key_ids,
        &body.master_sae,
        &body.slave_saes,
    );
    let voided = void(agent, link, &container).await;
    Err(RelayError::Peer {
        node: link.peer_identity(),
        status: 504,
        message: format!(
            "no acknowledgement of the ext_keys request (peer status {:?}); void: {voided:?}",
            status.map(|s| s.0)
        ),
    })
}
