//! Kxi-1': key transfer over an interworking node's transfer link (Y.3818 6.2, 9.2
//! procedure 1). KM-A and KM-B of the same trusted node, of two QKDNs, with no QKD link
//! between them: KM-A sends the keys themselves (`value` Base64, no pads, no one-time MAC;
//! mutual TLS between the two domains' CAs) as an ETSI GS QKD 020 `ext_key_container`,
//! KM-B delivers or forwards them into its QKDN and acknowledges. Both record the transfer
//! durably ([`crate::km::store::TransferRecord`]) before anything leaves them, and settle it
//! over Kxi-2' ([`super::settle`]) when the acknowledgement does not come.

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine;
use tracing::Instrument;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

use super::ext_keys::{ack_for, relay_problem, Outcome};
use super::messages::{
    extension_of, AckExtension, AckStatus, ExtKey, ExtKeyContainer, RelayExtension, EXT_RELAY,
};
use super::problem::{Kind, Problem};
use super::send::{accepted, callback_url, exchange};
use super::settle::{emit_transfer, settle_sent};
use crate::km::agent::Agent;
use crate::km::config::LinkConfig;
use crate::km::events::TransferRole;
use crate::km::kma::relay::error::RelayError;
use crate::km::kma::relay::messages::{
    b64, RelayAck, RelayBody, RelayedKey, MAX_HOPS, MAX_RELAY_KEY_BITS, RELAY_VERSION,
};
use crate::km::kma::relay::receive::deliver_or_forward;
use crate::km::kma::reserve::plan::Hop;
use crate::km::store::{deliveries_now_ms, Phase, Side, TransferRecord};

pub use super::settle::{status, void};

/// The `ext_key_container` of a transfer: the keys as they are, the relay in the
/// mandatory extension, the optional extensions that came with the keys.
pub(crate) fn transfer_container(
    callback: String,
    link: &LinkConfig,
    hop: &Hop,
    key_ids: &[Uuid],
    keys: &[Zeroizing<Vec<u8>>],
) -> ExtKeyContainer {
    let relay = RelayExtension {
        version: RELAY_VERSION,
        relay_id: hop.relay_id,
        link: link.id.clone(),
        origin_km: hop.origin_km.clone(),
        dest_km: hop.dest_km.clone(),
        hops_left: hop.hops_left,
        key_size: hop.key_size,
    };
    ExtKeyContainer {
        keys: key_ids
            .iter()
            .zip(keys)
            .map(|(key_id, key)| ExtKey {
                key_id: *key_id,
                value: b64().encode(&key[..]),
                extension: None,
            })
            .collect(),
        initiator_sae_id: hop.master_sae.clone(),
        target_sae_ids: hop.slave_saes.clone(),
        ack_callback_url: Some(callback),
        extension_mandatory: Some(extension_of(EXT_RELAY, relay)),
        extension_optional: hop.extension_optional.clone(),
    }
}

/// Sends keys over transfer link `link` (KM-A): `keys`, or new keys when this KM
/// originates them (returned as made). The keys are released (`Ok`) only once KM-B
/// acknowledged `relayed`, or said so over Kxi-2'.
pub(crate) async fn send(
    agent: &Arc<Agent>,
    link: &LinkConfig,
    hop: Hop,
    key_ids: &[Uuid],
    keys: Option<&[Zeroizing<Vec<u8>>]>,
    consumed_in: Vec<(String, u8, Vec<u64>)>,
) -> Result<(Vec<Zeroizing<Vec<u8>>>, RelayAck), RelayError> {
    let span = tracing::info_span!("transfer", relay_id = %hop.relay_id, link = %link.id, dest = %hop.dest_km, role = "sender", keys = key_ids.len());
    send_keys(agent, link, hop, key_ids, keys, consumed_in)
        .instrument(span)
        .await
}

async fn send_keys(
    agent: &Arc<Agent>,
    link: &LinkConfig,
    hop: Hop,
    key_ids: &[Uuid],
    keys: Option<&[Zeroizing<Vec<u8>>]>,
    consumed_in: Vec<(String, u8, Vec<u64>)>,
) -> Result<(Vec<Zeroizing<Vec<u8>>>, RelayAck), RelayError> {
    let made: Vec<Zeroizing<Vec<u8>>> = match keys {
        Some(_) => Vec::new(),
        None => key_ids
            .iter()
            .map(|_| {
                let mut key = Zeroizing::new(vec![0u8; hop.key_size as usize / 8]);
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key[..]);
                key
            })
            .collect(),
    };
    let sending = keys.unwrap_or(&made);
    let record = TransferRecord {
        relay_id: hop.relay_id,
        link: link.id.clone(),
        peer: link.peer_identity(),
        key_ids: key_ids.to_vec(),
        key_size: hop.key_size,
        master_sae: hop.master_sae.clone(),
        slave_saes: hop.slave_saes.clone(),
        dest_km: hop.dest_km.clone(),
        phase: Phase::InFlight,
        at_ms: deliveries_now_ms(),
        next_links: Vec::new(),
    };
    // the incoming blocks go with the record of the transfer, before anything is sent
    let counted: Vec<(String, usize)> = consumed_in
        .iter()
        .map(|(l, _, seqs)| (l.clone(), seqs.len()))
        .collect();
    let stored = record.clone();
    agent
        .store
        .run(move |s| {
            s.write(|txn| {
                for (link, owner, seqs) in &consumed_in {
                    txn.remove_peer_blocks(link, *owner, seqs)?;
                }
                txn.put_transfer(Side::Sent, &stored)
            })
        })
        .await?;
    for (link, blocks) in counted {
        agent.count_consumed(&link, blocks);
    }
    let mut container = transfer_container(callback_url(agent), link, &hop, key_ids, sending);
    let bytes = Zeroizing::new(
        serde_json::to_vec(&container).map_err(|e| RelayError::Rejected(e.to_string()))?,
    );
    for key in &mut container.keys {
        key.value.zeroize();
    }
    let sent = exchange(agent, link, hop.relay_id, key_ids, bytes.to_vec(), None).await;
    let (phase, result) = match sent {
        Ok(Some(ack)) => match accepted(link, hop.relay_id, key_ids, ack) {
            Ok(ack) => (Phase::Relayed, Ok(ack)),
            Err(error) => (Phase::Failed, Err(error)),
        },
        // refused outright: KM-B keeps nothing of these keys (ETSI GS QKD 020)
        Err(
            error @ RelayError::Peer {
                status: 400 | 401, ..
            },
        ) => (Phase::Failed, Err(error)),
        // no acknowledgement, or an answer that leaves KM-B's state open: Kxi-2'
        other => {
            if let Err(error) = &other {
                tracing::warn!(%error, "transfer not acknowledged; settling over Kxi-2'");
            }
            let phase = settle_sent(agent, link, &record, true).await;
            let result = match phase {
                Phase::Relayed => Ok(RelayAck {
                    relay_id: hop.relay_id,
                    delivered: key_ids.len(),
                    hops: 1,
                }),
                _ => Err(RelayError::Peer {
                    node: link.peer_identity(),
                    status: 504,
                    message: format!("transfer not acknowledged; settled as {phase:?}"),
                }),
            };
            (phase, result)
        }
    };
    let relay_id = hop.relay_id;
    let now = deliveries_now_ms();
    let settled = agent
        .store
        .run(move |s| {
            s.write(|t| {
                t.set_transfer_phase(Side::Sent, relay_id, phase, now, |p| p == Phase::InFlight)
            })
        })
        .await;
    if let Err(error) = settled {
        tracing::error!(%error, "cannot record the transfer's outcome");
    }
    emit_transfer(agent, &record, TransferRole::Sender, phase);
    match &result {
        Ok(_) => tracing::info!("keys transferred"),
        Err(error) => tracing::warn!(%error, ?phase, "transfer failed"),
    }
    result.map(|ack| (made, ack))
}

/// The relay a plain `ext_key_container` (a third party's, without qkdni's extension) stands
/// for: its target SAEs must all be served by one KM this KM routes to.
fn derive_relay(
    agent: &Agent,
    link: &LinkConfig,
    container: &ExtKeyContainer,
    key_bytes: usize,
) -> Result<RelayExtension, Problem> {
    let routing = |detail: &str, text: String| Problem::new(Kind::KeyRoutingError, detail, text);
    let mut nodes = BTreeSet::new();
    for target in &container.target_sae_ids {
        let node = agent
            .sae_node(target)
            .ok_or_else(|| routing("target_sae_id_not_recognized", target.clone()))?;
        nodes.insert(node);
    }
    if nodes.len() != 1 {
        return Err(routing(
            "no_route_multiple_targets",
            "the target SAEs are served by different KMs".into(),
        ));
    }
    let origin_km = agent.sae_node(&container.initiator_sae_id).ok_or_else(|| {
        routing(
            "invalid_routing",
            format!(
                "initiator SAE {} is not registered",
                container.initiator_sae_id
            ),
        )
    })?;
    Ok(RelayExtension {
        version: RELAY_VERSION,
        relay_id: Uuid::new_v4(),
        link: link.id.clone(),
        origin_km,
        dest_km: nodes.into_iter().next().expect("one node"),
        hops_left: MAX_HOPS,
        key_size: (key_bytes * 8) as u32,
    })
}

/// The keys of `container`, decoded; their Base64 text in it is wiped.
fn decode_keys(container: &mut ExtKeyContainer) -> Result<Vec<Zeroizing<Vec<u8>>>, Problem> {
    let mut keys = Vec::with_capacity(container.keys.len());
    let mut malformed = false;
    for key in &mut container.keys {
        match b64().decode(&key.value) {
            Ok(value) => keys.push(Zeroizing::new(value)),
            Err(_) => malformed = true,
        }
        key.value.zeroize();
    }
    if malformed || keys.is_empty() {
        return Err(Problem::new(
            Kind::MissingParameters,
            "invalid_value",
            "value is not Base64",
        ));
    }
    Ok(keys)
}

/// Checks keys offered over transfer link `link` by its peer `sender` (KM-B) and where they
/// go, records the transfer, and returns what delivers or forwards them.
pub(super) async fn receive(
    agent: &Arc<Agent>,
    sender: &str,
    link: &LinkConfig,
    mut container: ExtKeyContainer,
    relay: Option<RelayExtension>,
) -> Result<(tracing::Span, Outcome), Problem> {
    let keys = decode_keys(&mut container)?;
    let missing = |detail: &str, text: String| Problem::new(Kind::MissingParameters, detail, text);
    let routing = |detail: &str, text: String| Problem::new(Kind::KeyRoutingError, detail, text);
    let key_bytes = keys[0].len();
    let relay = match relay {
        Some(relay) => relay,
        None => derive_relay(agent, link, &container, key_bytes)?,
    };
    if relay.version != RELAY_VERSION {
        return Err(missing("unsupported_version", relay.version.to_string()));
    }
    if relay.key_size as usize != key_bytes * 8 || relay.key_size > MAX_RELAY_KEY_BITS {
        return Err(missing("invalid_key_size", relay.key_size.to_string()));
    }
    let master = &container.initiator_sae_id;
    if agent.sae_domain(master) != link.peer_domain
        || agent.sae_node(master).as_deref() != Some(relay.origin_km.as_str())
    {
        tracing::warn!(%master, "keys over a transfer link for an SAE not of the peer QKDN");
        return Err(routing(
            "invalid_routing",
            "the initiator SAE is not an SAE of the peer QKDN served by the origin KM".into(),
        ));
    }
    if relay.dest_km == agent.config.node {
        if let Some(s) = container
            .target_sae_ids
            .iter()
            .find(|s| !agent.is_local_sae(s))
        {
            return Err(routing("target_sae_id_not_recognized", s.clone()));
        }
    } else if agent.next_hops(&relay.dest_km).is_empty() {
        return Err(routing("no_known_route", relay.dest_km.clone()));
    }
    let relay_id = relay.relay_id;
    let key_ids: Vec<Uuid> = container.keys.iter().map(|k| k.key_id).collect();
    let record = TransferRecord {
        relay_id,
        link: link.id.clone(),
        peer: sender.to_owned(),
        key_ids: key_ids.clone(),
        key_size: relay.key_size,
        master_sae: master.clone(),
        slave_saes: container.target_sae_ids.clone(),
        dest_km: relay.dest_km.clone(),
        phase: Phase::InFlight,
        at_ms: deliveries_now_ms(),
        next_links: Vec::new(),
    };
    let stored = record.clone();
    let fresh = agent
        .store
        .run(move |s| {
            s.write(|t| {
                if t.transfer_exists(Side::Received, stored.relay_id)?
                    || t.transfer_key_seen(Side::Received, &stored.key_ids)?
                {
                    return Ok(false);
                }
                t.put_transfer(Side::Received, &stored)?;
                Ok(true)
            })
        })
        .await
        .map_err(|e| relay_problem(&RelayError::from(e)))?;
    if !fresh {
        // the same keys never cross twice
        return Err(missing(
            "duplicate_key_id",
            format!("relay {relay_id} or one of its key ids came before"),
        ));
    }
    let body = RelayBody {
        version: relay.version,
        relay_id,
        link: link.id.clone(),
        origin_km: relay.origin_km.clone(),
        dest_km: relay.dest_km.clone(),
        master_sae: master.clone(),
        slave_saes: container.target_sae_ids.clone(),
        key_size: relay.key_size,
        hops_left: relay.hops_left,
        keys: key_ids
            .iter()
            .map(|&key_id| RelayedKey {
                key_id,
                pad: Vec::new(),
                ciphertext: None,
            })
            .collect(),
        extension_optional: container.extension_optional.clone(),
        iwn_km: Some(agent.config.node.clone()),
    };
    let span = tracing::info_span!("transfer", %relay_id, link = %link.id, from = %sender, dest = %relay.dest_km, role = "receiver", keys = key_ids.len());
    let (agent, sender, link) = (agent.clone(), sender.to_owned(), link.clone());
    let outcome = async move {
        let result = deliver_or_forward(&agent, &sender, &link, Vec::new(), body, keys).await;
        let mut record = record;
        let (status, message, extension) = match &result {
            Ok((ack, next_links)) => {
                record.phase = Phase::Relayed;
                record.next_links = next_links.clone();
                let extension = AckExtension {
                    relay_id,
                    link: link.id.clone(),
                    delivered: ack.delivered,
                    hops: ack.hops,
                };
                (AckStatus::Relayed, None, Some(extension))
            }
            Err(error) => {
                // a next hop that broke off (rather than refused) may have delivered: the
                // keys are withdrawn from the destination in the background
                record.phase = if forward_may_have_landed(error) {
                    Phase::VoidPending
                } else {
                    Phase::Failed
                };
                (AckStatus::Failed, Some(error.to_string()), None)
            }
        };
        record.at_ms = deliveries_now_ms();
        // durable before the acknowledgement leaves
        let stored = record.clone();
        if let Err(error) = agent
            .store
            .run(move |s| s.write(|t| t.put_transfer(Side::Received, &stored)))
            .await
        {
            tracing::error!(%error, "cannot record the transfer's outcome");
        }
        if let (Some(message), Err(error)) = (&message, &result) {
            tracing::warn!(%message, "transfer failed");
            agent.emit(crate::km::events::Event::RelayFailure {
                relay_id,
                destination: record.dest_km.clone(),
                reason: message.clone(),
                exhausted: error.is_exhaustion(),
            });
        } else {
            tracing::info!("keys transferred into this QKDN");
        }
        emit_transfer(&agent, &record, TransferRole::Receiver, record.phase);
        ack_for(
            &key_ids,
            &container.initiator_sae_id,
            &container.target_sae_ids,
            status,
            message,
            extension,
        )
    };
    Ok((span, Box::pin(outcome)))
}

/// Whether a forward that failed with `error` may still have left keys at the destination
/// (a next hop unreachable or failing mid-way, as opposed to refusing up front).
fn forward_may_have_landed(error: &RelayError) -> bool {
    match error {
        RelayError::Unreachable { .. } => true,
        RelayError::Peer { status, .. } => *status >= 500 && !error.is_exhaustion(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_forward_broken_off_mid_way_is_withdrawn() {
        let peer = |status: u16, message: &str| RelayError::Peer {
            node: "b2".into(),
            status,
            message: message.into(),
        };
        assert!(forward_may_have_landed(&peer(
            502,
            "next hop b1 unreachable"
        )));
        assert!(forward_may_have_landed(&peer(504, "timeout")));
        assert!(!forward_may_have_landed(&peer(
            503,
            "not enough key material: l"
        )));
        assert!(!forward_may_have_landed(&peer(403, "refused")));
        assert!(!forward_may_have_landed(&RelayError::Rejected("x".into())));
        assert!(!forward_may_have_landed(&RelayError::NoRoute("b1".into())));
    }
}
